//! The embedded journal: capture's entries made durable on local disk before replay reads them.
//!
//! ## Behavior
//! - Entries get dense, increasing seqs on append. They go to append-only segment files named
//!   by their first seq (`00000000000000000042.seg`) as records `[u32 len][u32 crc32][payload]`
//!   (little-endian; the payload format is in `codec.rs`). A segment is sealed, and a new one
//!   started, by the first append after it has reached [`JournalConfig::segment_bytes`].
//! - Every [`Journal::append`] / [`Journal::append_many`] writes its whole records with one
//!   `write(2)` (per MiB of a large batch), fsyncs per [`FsyncPolicy`], and is visible to readers
//!   when it returns. The syscall per call dominates single appends (about 1 µs); batching with
//!   `append_many` amortises it. Readers never hold a lock an append needs (they only meet at
//!   segment switches), so capture never waits on replay.
//! - Readers read the files through their own buffer, not an in-memory copy: when replay lags,
//!   the backlog waits on disk, not in RAM. They see only whole records of finished appends.
//! - [`Journal::open`] validates every record. A bad tail of the last segment (a crash in the
//!   middle of a write) is cut off with a warning; a bad record anywhere else is
//!   [`JournalError::Corrupt`] with the file and offset, since cutting there would lose entries
//!   that were acknowledged.
//! - A `LOCK` file (`flock`) keeps a second process, or a second `Journal` in this one, from
//!   appending to the same directory.
//! - After a failed write or fsync the journal refuses further appends
//!   ([`JournalError::Failed`]): what reached the disk is unknown, and reopening recovers.

mod codec;
mod marker;
mod reader;
mod segment;
#[cfg(feature = "sqs")]
pub mod sqs;
mod writer;

use std::collections::BTreeSet;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

use crate::command::Argv;
pub use marker::{
    Marker, check_read_id, is_check_read, key_id, parse_key_id, parse_read_echo, read_echo,
};
pub use reader::JournalReader;
use segment::io_err;
use writer::Writer;

/// One journal entry: what capture produced from the source's stream, in the source's order
/// (the stream's one vocabulary, from capture through the journal and SQS to the stitcher).
/// `seq` is assigned by the journal on append, dense and increasing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    pub ts_us: u64,
    pub kind: EntryKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// One write command in `db`.
    Write { db: u32, argv: Argv },
    /// Writes applied atomically (a MULTI/EXEC block, or a script's effects), each with its db.
    Atomic(Vec<(u32, Argv)>),
    /// A snapshot read of `key` happened here in the source's order: the `ordinal`-th key of the
    /// fenced read `read_id`.
    KeyFence {
        db: u32,
        key: Vec<u8>,
        read_id: String,
        ordinal: u64,
    },
    /// What that read returned (may be journaled before or after its KeyFence). `payload` None = key absent.
    Payload {
        read_id: String,
        ordinal: u64,
        db: u32,
        key: Vec<u8>,
        payload: Option<Vec<u8>>,
        expire_at_ms: Option<i64>,
    },
    /// A marker ferry placed in the source's stream (final fence, dirty key, re-copy request…).
    Marker(Marker),
    /// Capture lost lines here; everything after must be resynced.
    Gap { reason: String },
}

/// When appended entries are fsynced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Before every append call returns: nothing acknowledged is lost in a power failure.
    Always,
    /// On an append when at least this many milliseconds have passed since the last fsync, and on
    /// [`Journal::sync`]. An idle journal is not fsynced until its next append or `sync`, so the
    /// owner should call `sync` on a timer if the tail matters.
    EveryMs(u64),
    /// Leave it to the OS. A process crash loses nothing; a power failure may.
    Never,
}

impl Default for FsyncPolicy {
    fn default() -> Self {
        FsyncPolicy::EveryMs(100)
    }
}

/// Where and how the journal is kept.
#[derive(Debug, Clone)]
pub struct JournalConfig {
    /// Directory of the segment files; created if missing.
    pub dir: PathBuf,
    /// A segment is sealed once it reaches this size (the record that crosses it stays whole).
    pub segment_bytes: u64,
    pub fsync: FsyncPolicy,
}

/// Segment size by default: few files for a long migration, small enough to free space soon.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;

impl JournalConfig {
    /// Defaults: 64 MiB segments, fsync every 100 ms.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        JournalConfig {
            dir: dir.into(),
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            fsync: FsyncPolicy::default(),
        }
    }
}

/// Why a journal operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    /// A file operation failed.
    #[error("journal: {op} {}: {source}", .path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// A segment holds bytes that are not a valid record where one must be.
    #[error("journal segment {} is corrupt at byte {offset}: {reason}", .path.display())]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    /// A reader asked for entries that retention already deleted.
    #[error("journal entry {seq} was already removed (the oldest kept is {oldest})")]
    Removed { seq: u64, oldest: u64 },
    /// A reader asked to start after the end of the journal.
    #[error("journal entry {seq} does not exist yet (the next append gets {next})")]
    PastEnd { seq: u64, next: u64 },
    /// An entry's encoding would not fit a record's `u32` length.
    #[error("a journal entry of up to {bytes} bytes exceeds the 4 GiB record limit")]
    TooLarge { bytes: u64 },
    /// Another `Journal` holds the directory's lock.
    #[error("journal {} is in use by another process or handle", .dir.display())]
    Locked { dir: PathBuf },
    /// An earlier write or fsync failed; nothing more is accepted until the journal is reopened.
    #[error("the journal stopped accepting writes after an earlier failure: {reason}")]
    Failed { reason: String },
    /// The journal was dropped and the reader has read everything it wrote.
    #[error("the journal was closed")]
    Closed,
}

/// What readers share with the writer.
struct Shared {
    dir: PathBuf,
    /// Seq of the next append to complete; every entry below it is whole in the files.
    committed: AtomicU64,
    /// First seqs of the segments on disk. The writer adds to it on rotation, retention removes.
    segments: Mutex<BTreeSet<u64>>,
    disk_bytes: AtomicU64,
    notify: Notify,
    closed: AtomicBool,
}

impl Shared {
    fn segments(&self) -> MutexGuard<'_, BTreeSet<u64>> {
        // Every update of the set is a single insert or remove, so it is consistent even if a
        // holder panicked.
        self.segments.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn publish(&self, next_seq: u64) {
        self.committed.store(next_seq, Ordering::Release);
        self.notify.notify_waiters();
    }
}

struct Inner {
    shared: Arc<Shared>,
    writer: Mutex<Writer>,
    /// Holds the directory's `flock` for as long as the journal is open.
    _lock: File,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Ok(w) = self.writer.get_mut() {
            w.close();
        }
        self.shared.closed.store(true, Ordering::Release);
        self.shared.notify.notify_waiters();
    }
}

/// The journal: cheap to clone, shared by every appending task.
#[derive(Clone)]
pub struct Journal {
    inner: Arc<Inner>,
}

const LOCK_FILE: &str = "LOCK";

impl Journal {
    /// Opens or creates the journal in `cfg.dir`, recovering what a crash left (see the module
    /// docs). The next seq continues after the last valid entry; a new journal starts at 0.
    pub fn open(cfg: JournalConfig) -> Result<Journal, JournalError> {
        let dir = cfg.dir.clone();
        std::fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err("opening", &lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(JournalError::Locked { dir }),
            Err(std::fs::TryLockError::Error(e)) => return Err(io_err("locking", &lock_path)(e)),
        }

        let firsts = segment::list(&dir)?;
        let mut disk_bytes = 0;
        let mut tail = None;
        for (i, &first) in firsts.iter().enumerate() {
            let path = segment::path(&dir, first);
            if let Some((_, _, expected)) = tail
                && first != expected
            {
                return Err(JournalError::Corrupt {
                    path,
                    offset: 0,
                    reason: format!(
                        "segment starts at seq {first} but the one before ends before seq {expected}"
                    ),
                });
            }
            let scanned = segment::scan(&path, first)?;
            if let Some((offset, reason)) = scanned.problem {
                if i + 1 < firsts.len() {
                    return Err(JournalError::Corrupt {
                        path,
                        offset,
                        reason,
                    });
                }
                truncate_tail(&path, offset, &reason)?;
            }
            disk_bytes += scanned.valid_len;
            tail = Some((first, scanned.valid_len, scanned.next_seq));
        }
        let (first, len, next_seq) = match tail {
            Some(t) => t,
            None => {
                let path = segment::path(&dir, 0);
                File::options()
                    .create_new(true)
                    .append(true)
                    .open(&path)
                    .map_err(io_err("creating", &path))?;
                sync_dir(&dir)?;
                (0, 0, 0)
            }
        };
        let writer = Writer::open(&cfg, first, len, next_seq)?;
        let shared = Arc::new(Shared {
            dir,
            committed: AtomicU64::new(next_seq),
            segments: Mutex::new(firsts.into_iter().chain([first]).collect()),
            disk_bytes: AtomicU64::new(disk_bytes),
            notify: Notify::new(),
            closed: AtomicBool::new(false),
        });
        Ok(Journal {
            inner: Arc::new(Inner {
                shared,
                writer: Mutex::new(writer),
                _lock: lock,
            }),
        })
    }

    fn writer(&self) -> Result<MutexGuard<'_, Writer>, JournalError> {
        self.inner.writer.lock().map_err(|_| JournalError::Failed {
            reason: "a thread panicked while appending".into(),
        })
    }

    /// Appends one entry and returns its seq.
    pub fn append(&self, ts_us: u64, kind: EntryKind) -> Result<u64, JournalError> {
        let items = [(ts_us, kind)];
        let seqs = self.writer()?.append(&self.inner.shared, &items)?;
        Ok(seqs.start)
    }

    /// Appends entries in order with one lock, one write and at most one fsync; returns their
    /// seqs. Either every entry is appended or the call fails.
    pub fn append_many(&self, items: Vec<(u64, EntryKind)>) -> Result<Range<u64>, JournalError> {
        self.writer()?.append(&self.inner.shared, &items)
    }

    /// Fsyncs everything appended so far.
    pub fn sync(&self) -> Result<(), JournalError> {
        self.writer()?.sync()
    }

    /// The seq the next append will get.
    pub fn next_seq(&self) -> u64 {
        self.inner.shared.committed.load(Ordering::Acquire)
    }

    /// The oldest seq still on disk (retention removes whole segments below it).
    pub fn first_seq(&self) -> u64 {
        let shared = &self.inner.shared;
        shared
            .segments()
            .first()
            .copied()
            .unwrap_or_else(|| shared.committed.load(Ordering::Acquire))
    }

    /// A reader whose first entry is `from_seq`. `from_seq` may equal [`Journal::next_seq`] (the
    /// reader then waits for new entries), not exceed it.
    pub fn reader(&self, from_seq: u64) -> Result<JournalReader, JournalError> {
        JournalReader::open(Arc::clone(&self.inner.shared), from_seq)
    }

    /// Deletes the segments whose entries are all below `seq` (already applied), oldest first,
    /// and returns how many. The segment being appended to is never deleted. Readers already
    /// inside a deleted segment finish it (the file stays open); they fail with
    /// [`JournalError::Removed`] if they need the next deleted one.
    pub fn remove_before(&self, seq: u64) -> Result<usize, JournalError> {
        let shared = &self.inner.shared;
        // Held across the unlinks so that no reader opens a segment while it goes away.
        let mut segments = shared.segments();
        let doomed: Vec<u64> = segments
            .iter()
            .zip(segments.iter().skip(1))
            .take_while(|&(_, &next_first)| next_first <= seq)
            .map(|(&first, _)| first)
            .collect();
        let mut removed = 0;
        for first in doomed {
            let path = segment::path(&shared.dir, first);
            let len = std::fs::metadata(&path).map_or(0, |m| m.len());
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("removing", &path)(e)),
            }
            segments.remove(&first);
            let _ = shared
                .disk_bytes
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                    Some(b.saturating_sub(len))
                });
            removed += 1;
        }
        Ok(removed)
    }

    /// Bytes of all segment files.
    pub fn disk_bytes(&self) -> u64 {
        self.inner.shared.disk_bytes.load(Ordering::Relaxed)
    }

    /// The journal's directory.
    pub fn dir(&self) -> &Path {
        &self.inner.shared.dir
    }
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("dir", &self.inner.shared.dir)
            .field("next_seq", &self.next_seq())
            .finish_non_exhaustive()
    }
}

/// Cuts a torn tail off the last segment.
fn truncate_tail(path: &Path, offset: u64, reason: &str) -> Result<(), JournalError> {
    let file = File::options()
        .write(true)
        .open(path)
        .map_err(io_err("opening", path))?;
    let len = file.metadata().map_err(io_err("reading", path))?.len();
    tracing::warn!(
        segment = %path.display(),
        offset,
        dropped_bytes = len.saturating_sub(offset),
        "journal: cutting a torn tail off the last segment ({reason})"
    );
    file.set_len(offset).map_err(io_err("truncating", path))?;
    file.sync_all().map_err(io_err("fsyncing", path))
}

/// Makes a created file's name durable.
fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsyncing", dir))
}
