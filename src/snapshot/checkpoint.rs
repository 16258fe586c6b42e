//! The snapshot checkpoint: per db, the `SCAN` cursor below which every batch is on the target,
//! and the keys below it that failed, written atomically to the state dir so that a killed or
//! failed run resumes instead of starting over, and retries what failed.
//!
//! ## Behavior
//! - A failed key is recorded in the same file, and so in the same atomic write, as the cursor
//!   that passes it: no saved cursor ever skips a key that is neither copied nor recorded.
//! - The record is bounded ([`MAX_FAILED_KEYS`], [`MAX_FAILED_BYTES`]). Past the bound a db is
//!   *pinned*: its saved cursor stops where it is, so the next run scans the rest of the db
//!   again instead of trusting a record that is missing keys.
//! - A checkpoint with failed keys or a pinned db is never marked complete.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::SnapshotError;
use crate::escape::{quote, unquote};
use crate::net::Endpoint;

const FILE: &str = "snapshot.json";
/// 2: failed keys are recorded. A format-1 checkpoint lacks them, so it cannot be resumed safely.
const FORMAT: u32 = 2;
/// Failed keys kept for the next run; past this the db is pinned.
pub(super) const MAX_FAILED_KEYS: usize = 10_000;
/// Bytes of failed key names kept for the next run (the file is rewritten every second, so it
/// must stay small); past this the db is pinned.
pub(super) const MAX_FAILED_BYTES: usize = 1 << 20;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct DbState {
    cursor: u64,
    done: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    format: u32,
    source: String,
    target: String,
    dbs: BTreeMap<u32, DbState>,
    keys_done: u64,
    complete: bool,
    /// Keys that failed, as db and quoted key; the next run retries them.
    #[serde(default)]
    failed: BTreeSet<(u32, String)>,
}

/// The checkpoint of one snapshot run.
#[derive(Debug)]
pub(super) struct Checkpoint {
    path: Option<PathBuf>,
    state: State,
    resumed: bool,
    /// Key bytes in `state.failed`.
    failed_bytes: usize,
    /// Dbs whose cursor no longer moves because a failed key could not be recorded.
    pinned: BTreeSet<u32>,
    max_failed_keys: usize,
    max_failed_bytes: usize,
}

fn state_err(path: &Path, message: impl std::fmt::Display) -> SnapshotError {
    SnapshotError::State {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

impl Checkpoint {
    fn fresh(source: &str, target: &str, dbs: &[u32]) -> State {
        State {
            format: FORMAT,
            source: source.to_string(),
            target: target.to_string(),
            dbs: dbs.iter().map(|db| (*db, DbState::default())).collect(),
            keys_done: 0,
            complete: false,
            failed: BTreeSet::new(),
        }
    }

    fn new(path: Option<PathBuf>, state: State, resumed: bool) -> Checkpoint {
        Checkpoint {
            path,
            failed_bytes: state.failed.iter().map(|(_, k)| k.len()).sum(),
            state,
            resumed,
            pinned: BTreeSet::new(),
            max_failed_keys: MAX_FAILED_KEYS,
            max_failed_bytes: MAX_FAILED_BYTES,
        }
    }

    /// A checkpoint that is never written.
    pub(super) fn in_memory(dbs: &[u32]) -> Checkpoint {
        Self::new(None, Self::fresh("", "", dbs), false)
    }

    /// Opens the state dir: resumes an unfinished snapshot of the same source and target, or
    /// starts a new one. A state dir of another migration is refused, so that a typo in a URL
    /// cannot mix two copies.
    pub(super) fn open(
        dir: &Path,
        source: &Endpoint,
        target: &Endpoint,
        dbs: &[u32],
    ) -> Result<Checkpoint, SnapshotError> {
        std::fs::create_dir_all(dir).map_err(|e| state_err(dir, e))?;
        let path = dir.join(FILE);
        let fresh = Self::fresh(source.redacted(), target.redacted(), dbs);
        let existing = match std::fs::read(&path) {
            Ok(bytes) => Some(
                serde_json::from_slice::<State>(&bytes)
                    .map_err(|e| state_err(&path, format!("unreadable checkpoint: {e}")))?,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(state_err(&path, e)),
        };
        let (state, resumed) = match existing {
            Some(s) if s.complete => {
                tracing::info!(
                    path = %path.display(),
                    "The previous snapshot in this state dir completed; starting a new one."
                );
                (fresh, false)
            }
            Some(s) => {
                if s.format != FORMAT {
                    return Err(state_err(
                        &path,
                        format!(
                            "checkpoint format {} is not {FORMAT} (written by another ferry \
                             version); remove it to start the snapshot over",
                            s.format
                        ),
                    ));
                }
                if s.source != fresh.source || s.target != fresh.target {
                    return Err(state_err(
                        &path,
                        format!(
                            "holds a snapshot from {} to {}, not from {} to {}; use another state dir",
                            s.source, s.target, fresh.source, fresh.target
                        ),
                    ));
                }
                let mut s = s;
                for db in dbs {
                    s.dbs.entry(*db).or_default();
                }
                s.dbs.retain(|db, _| dbs.contains(db));
                s.failed.retain(|(db, _)| dbs.contains(db));
                if let Some((db, k)) = s
                    .failed
                    .iter()
                    .find(|(_, k)| unquote(k.as_bytes()).is_err())
                {
                    return Err(state_err(
                        &path,
                        format!("unreadable failed key in db {db}: {k}"),
                    ));
                }
                (s, true)
            }
            None => (fresh, false),
        };
        let cp = Self::new(Some(path), state, resumed);
        cp.save()?;
        Ok(cp)
    }

    pub(super) fn is_resumed(&self) -> bool {
        self.resumed
    }

    pub(super) fn keys_done(&self) -> u64 {
        self.state.keys_done
    }

    pub(super) fn db_done(&self, db: u32) -> bool {
        self.state.dbs.get(&db).is_some_and(|d| d.done)
    }

    pub(super) fn cursor(&self, db: u32) -> u64 {
        self.state.dbs.get(&db).map_or(0, |d| d.cursor)
    }

    pub(super) fn add_keys(&mut self, n: u64) {
        self.state.keys_done += n;
    }

    /// Moves `db`'s cursor and done flag, unless the db is pinned.
    pub(super) fn set_db(&mut self, db: u32, cursor: Option<u64>, done: bool) {
        if self.pinned.contains(&db) {
            return;
        }
        let d = self.state.dbs.entry(db).or_default();
        if let Some(c) = cursor {
            d.cursor = c;
        }
        d.done |= done;
    }

    /// Remembers a failed key for the next run. Returns false, recording nothing, when the
    /// record is full; the caller must then [`Checkpoint::pin`] the db. Without a state dir
    /// there is no next run, and nothing is kept.
    pub(super) fn record_failed(&mut self, db: u32, key: &[u8]) -> bool {
        if self.path.is_none() {
            return true;
        }
        let k = quote(key);
        if self.state.failed.contains(&(db, k.clone())) {
            return true;
        }
        if self.state.failed.len() >= self.max_failed_keys
            || self.failed_bytes + k.len() > self.max_failed_bytes
        {
            return false;
        }
        self.failed_bytes += k.len();
        self.state.failed.insert((db, k));
        true
    }

    /// Forgets a failed key (it was retried; if it failed again it is recorded again).
    pub(super) fn clear_failed(&mut self, db: u32, key: &[u8]) {
        let k = quote(key);
        if self.state.failed.remove(&(db, k.clone())) {
            self.failed_bytes -= k.len();
        }
    }

    /// The failed keys an earlier run recorded, by db.
    pub(super) fn failed_keys(&self) -> BTreeMap<u32, Vec<Vec<u8>>> {
        let mut out: BTreeMap<u32, Vec<Vec<u8>>> = BTreeMap::new();
        for (db, k) in &self.state.failed {
            // Checked when the file was opened.
            if let Ok(key) = unquote(k.as_bytes()) {
                out.entry(*db).or_default().push(key);
            }
        }
        out
    }

    /// Keeps `db`'s saved cursor where it is for the rest of the run: a failed key past it
    /// could not be recorded, so the next run must scan from there again.
    pub(super) fn pin(&mut self, db: u32) {
        if self.path.is_some() && self.pinned.insert(db) {
            tracing::warn!(
                db,
                max_keys = self.max_failed_keys,
                "Too many failed keys to record; a rerun will scan this db again from the last \
                 saved cursor."
            );
        }
    }

    /// True when a rerun has work left: failed keys to retry or a pinned db to scan again.
    pub(super) fn unfinished(&self) -> bool {
        !self.state.failed.is_empty() || !self.pinned.is_empty()
    }

    /// Writes the checkpoint: temp file, fsync, rename, so a crash leaves the old or the new one.
    pub(super) fn save(&self) -> Result<(), SnapshotError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let tmp = path.with_extension("json.tmp");
        let data = serde_json::to_vec_pretty(&self.state).map_err(|e| state_err(path, e))?;
        let mut f = std::fs::File::create(&tmp).map_err(|e| state_err(&tmp, e))?;
        f.write_all(&data).map_err(|e| state_err(&tmp, e))?;
        f.sync_all().map_err(|e| state_err(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| state_err(path, e))?;
        Ok(())
    }

    /// Marks the snapshot complete and saves; when a rerun has work left
    /// ([`Checkpoint::unfinished`]) it only saves, so that the rerun resumes.
    pub(super) fn finish(&mut self) -> Result<(), SnapshotError> {
        if self.unfinished() {
            return self.save();
        }
        for d in self.state.dbs.values_mut() {
            d.done = true;
        }
        self.state.complete = true;
        self.save()
    }
}

/// Tracks which batches of one db are done, to find the cursor that is safe to resume from.
#[derive(Debug, Default)]
pub(super) struct Watermark {
    cursors: BTreeMap<u64, u64>,
    done: BTreeSet<u64>,
    next: u64,
    safe: Option<u64>,
    total: Option<u64>,
}

impl Watermark {
    /// Batch `seq` was handed out; resuming after it means scanning from `cursor`.
    pub(super) fn scanned(&mut self, seq: u64, cursor: u64) {
        self.cursors.insert(seq, cursor);
        self.advance();
    }

    /// The scanner produced `batches` batches for this db and stopped.
    pub(super) fn finished_scan(&mut self, batches: u64) {
        self.total = Some(batches);
    }

    /// Batch `seq` is on the target.
    pub(super) fn done(&mut self, seq: u64) {
        self.done.insert(seq);
        self.advance();
    }

    fn advance(&mut self) {
        while self.done.contains(&self.next) {
            let Some(c) = self.cursors.get(&self.next) else {
                break;
            };
            self.safe = Some(*c);
            self.done.remove(&self.next);
            self.cursors.remove(&self.next);
            self.next += 1;
        }
    }

    /// The cursor to resume from, once at least the first batch is done.
    pub(super) fn safe_cursor(&self) -> Option<u64> {
        self.safe
    }

    /// True when every batch of the db is done.
    pub(super) fn complete(&self) -> bool {
        self.total == Some(self.next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on_disk(dir: &Path) -> Checkpoint {
        let ep = |port| Endpoint::parse(&format!("redis://127.0.0.1:{port}")).expect("url");
        Checkpoint::open(dir, &ep(1), &ep(2), &[0, 1]).expect("open")
    }

    #[test]
    fn failed_keys_survive_a_rerun_and_a_pinned_db_keeps_its_cursor() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cp = on_disk(dir.path());
        cp.max_failed_keys = 2;
        cp.set_db(0, Some(10), false);
        assert!(cp.record_failed(0, b"a\x00"));
        assert!(cp.record_failed(0, b"a\x00"), "recording twice is fine");
        assert!(cp.record_failed(1, b"b"));
        assert!(!cp.record_failed(0, b"c"), "the record is full");
        cp.pin(0);
        cp.set_db(0, Some(20), true);
        cp.set_db(1, Some(30), true);
        cp.finish().expect("save");

        let mut cp = on_disk(dir.path());
        assert!(cp.is_resumed(), "failed keys keep the checkpoint open");
        assert_eq!(cp.cursor(0), 10, "pinned");
        assert!(!cp.db_done(0));
        assert!(cp.db_done(1));
        let failed = cp.failed_keys();
        assert_eq!(failed[&0], vec![b"a\x00".to_vec()]);
        assert_eq!(failed[&1], vec![b"b".to_vec()]);
        cp.clear_failed(0, b"a\x00");
        cp.clear_failed(1, b"b");
        assert!(!cp.unfinished());
        cp.finish().expect("save");
        assert!(!on_disk(dir.path()).is_resumed(), "complete");
    }

    #[test]
    fn watermark_only_moves_over_contiguous_done_batches() {
        let mut w = Watermark::default();
        w.scanned(0, 10);
        w.scanned(1, 20);
        w.scanned(2, 0);
        w.done(1);
        assert_eq!(w.safe_cursor(), None);
        w.done(0);
        assert_eq!(w.safe_cursor(), Some(20));
        w.finished_scan(3);
        assert!(!w.complete());
        w.done(2);
        assert_eq!(w.safe_cursor(), Some(0));
        assert!(w.complete());
    }
}
