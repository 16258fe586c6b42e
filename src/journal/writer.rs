//! The append side: encodes entries into whole records, writes each append call with one
//! `write(2)`, rotates segments, fsyncs per policy, then publishes the new end to readers.

use std::fs::File;
use std::io::Write;
use std::ops::Range;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::codec::{self, MAX_PAYLOAD};
use super::segment::{self, io_err};
use super::{EntryKind, FsyncPolicy, JournalConfig, JournalError, Shared, sync_dir};

/// A large batch is written in pieces of about this size, so that its buffer stays bounded.
const WRITE_CHUNK: usize = 1 << 20;

pub(super) struct Writer {
    dir: PathBuf,
    segment_bytes: u64,
    fsync: FsyncPolicy,
    /// The segment being appended to.
    file: File,
    path: PathBuf,
    /// Its bytes, pending ones included.
    seg_len: u64,
    next_seq: u64,
    /// Encoded records not yet written; always empty between calls.
    pending: Vec<u8>,
    last_sync: Instant,
    unsynced: bool,
    failed: Option<String>,
}

impl Writer {
    pub(super) fn open(
        cfg: &JournalConfig,
        first: u64,
        seg_len: u64,
        next_seq: u64,
    ) -> Result<Writer, JournalError> {
        let path = segment::path(&cfg.dir, first);
        let file = File::options()
            .append(true)
            .open(&path)
            .map_err(io_err("opening", &path))?;
        Ok(Writer {
            dir: cfg.dir.clone(),
            segment_bytes: cfg.segment_bytes,
            fsync: cfg.fsync,
            file,
            path,
            seg_len,
            next_seq,
            pending: Vec::with_capacity(64 << 10),
            last_sync: Instant::now(),
            unsynced: false,
            failed: None,
        })
    }

    /// Appends `items` in order and publishes them; all or nothing from the caller's view.
    pub(super) fn append(
        &mut self,
        shared: &Shared,
        items: &[(u64, EntryKind)],
    ) -> Result<Range<u64>, JournalError> {
        if let Some(reason) = &self.failed {
            return Err(JournalError::Failed {
                reason: reason.clone(),
            });
        }
        for (_, kind) in items {
            let bytes = codec::payload_bound(kind);
            if bytes > MAX_PAYLOAD {
                return Err(JournalError::TooLarge { bytes });
            }
        }
        let start = self.next_seq;
        if let Err(e) = self.write_records(shared, items) {
            // Part of the batch may be on disk; only a reopen's validation can tell.
            self.failed = Some(e.to_string());
            self.pending.clear();
            return Err(e);
        }
        shared.publish(self.next_seq);
        Ok(start..self.next_seq)
    }

    fn write_records(
        &mut self,
        shared: &Shared,
        items: &[(u64, EntryKind)],
    ) -> Result<(), JournalError> {
        for (ts_us, kind) in items {
            if self.seg_len >= self.segment_bytes && self.seg_len > 0 {
                self.rotate(shared)?;
            }
            let before = self.pending.len();
            codec::put_record(&mut self.pending, self.next_seq, *ts_us, kind);
            self.seg_len += (self.pending.len() - before) as u64;
            self.next_seq += 1;
            if self.pending.len() >= WRITE_CHUNK {
                self.write_out(shared)?;
            }
        }
        self.write_out(shared)?;
        match self.fsync {
            FsyncPolicy::Always => self.sync_now(),
            FsyncPolicy::EveryMs(ms) if self.last_sync.elapsed() >= Duration::from_millis(ms) => {
                self.sync_now()
            }
            FsyncPolicy::EveryMs(_) | FsyncPolicy::Never => Ok(()),
        }
    }

    fn write_out(&mut self, shared: &Shared) -> Result<(), JournalError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.file
            .write_all(&self.pending)
            .map_err(io_err("writing", &self.path))?;
        shared.disk_bytes.fetch_add(
            self.pending.len() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        self.unsynced = true;
        self.pending.clear();
        if self.pending.capacity() > 4 * WRITE_CHUNK {
            // One huge entry should not pin its size for the journal's lifetime.
            self.pending.shrink_to(WRITE_CHUNK);
        }
        Ok(())
    }

    fn sync_now(&mut self) -> Result<(), JournalError> {
        self.file
            .sync_data()
            .map_err(io_err("fsyncing", &self.path))?;
        self.last_sync = Instant::now();
        self.unsynced = false;
        Ok(())
    }

    /// Seals the current segment and starts one at `next_seq`. The new segment is in the shared
    /// set before any of its entries is published, so a reader that reaches the end of the old
    /// one always finds it.
    fn rotate(&mut self, shared: &Shared) -> Result<(), JournalError> {
        self.write_out(shared)?;
        if self.fsync != FsyncPolicy::Never {
            // A sealed segment is never fsynced again; recovery treats damage in it as corruption.
            self.sync_now()?;
        }
        let path = segment::path(&self.dir, self.next_seq);
        let file = File::options()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(io_err("creating", &path))?;
        if self.fsync != FsyncPolicy::Never {
            sync_dir(&self.dir)?;
        }
        shared.segments().insert(self.next_seq);
        self.file = file;
        self.path = path;
        self.seg_len = 0;
        self.unsynced = false;
        Ok(())
    }

    pub(super) fn sync(&mut self) -> Result<(), JournalError> {
        if let Some(reason) = &self.failed {
            return Err(JournalError::Failed {
                reason: reason.clone(),
            });
        }
        if let Err(e) = self.sync_now() {
            self.failed = Some(e.to_string());
            return Err(e);
        }
        Ok(())
    }

    /// Best-effort fsync at close; there is no caller left to tell.
    pub(super) fn close(&mut self) {
        if self.failed.is_none()
            && self.unsynced
            && self.fsync != FsyncPolicy::Never
            && let Err(e) = self.sync_now()
        {
            tracing::warn!("journal: {e}");
        }
    }
}
