//! The snapshot checkpoint: per db, the `SCAN` cursor below which every batch is on the target,
//! written atomically to the state dir so that a killed run resumes instead of starting over.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::SnapshotError;
use crate::net::Endpoint;

const FILE: &str = "snapshot.json";
const FORMAT: u32 = 1;

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
}

/// The checkpoint of one snapshot run.
#[derive(Debug)]
pub(super) struct Checkpoint {
    path: Option<PathBuf>,
    state: State,
    resumed: bool,
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
        }
    }

    /// A checkpoint that is never written.
    pub(super) fn in_memory(dbs: &[u32]) -> Checkpoint {
        Checkpoint {
            path: None,
            state: Self::fresh("", "", dbs),
            resumed: false,
        }
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
                        format!("checkpoint format {} is not {FORMAT}", s.format),
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
                (s, true)
            }
            None => (fresh, false),
        };
        let cp = Checkpoint {
            path: Some(path),
            state,
            resumed,
        };
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

    pub(super) fn set_db(&mut self, db: u32, cursor: Option<u64>, done: bool) {
        let d = self.state.dbs.entry(db).or_default();
        if let Some(c) = cursor {
            d.cursor = c;
        }
        d.done |= done;
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

    /// Marks the snapshot complete and saves.
    pub(super) fn finish(&mut self) -> Result<(), SnapshotError> {
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
