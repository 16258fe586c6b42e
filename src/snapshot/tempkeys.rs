//! Records of the temporary keys that chunked copies build on the target, one small file per
//! worker in the state dir, so that the next run deletes what a killed run left behind.
//!
//! ## Behavior
//! - Before a worker's chunked copy creates its temporary key, the worker rewrites its record
//!   (`snapshot-tmp.<worker>.json`: the target, and db and name of each of its temporary keys
//!   not known to be gone). A worker runs one copy at a time, so a record holds one name, plus
//!   any whose cleanup after a failed copy could not be confirmed.
//! - A record is overwritten in place by one write at offset 0, padded with spaces (which JSON
//!   ignores) to cover the previous one, on a file kept open: a rename per key tripled the time
//!   of a type-aware copy of small keys. It is not fsynced: it survives a killed process, which
//!   is what leaves temporary keys behind. After a crash of the whole host the last name may be
//!   lost and that key (`…ferry-tmp:…`) stays on the target.
//! - [`sweep_leftovers`] runs when a snapshot opens its state dir: every recorded name is
//!   deleted on the target (a name that is already gone is fine: its copy finished) and the
//!   records are removed. Records of another target are left alone, with a warning. A worker
//!   that ends normally with no temporary key left removes its own record.
//! - No target `SCAN` is needed: the records name every temporary key that can exist.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::SnapshotError;
use crate::escape::{quote, unquote};
use crate::net::Endpoint;

const PREFIX: &str = "snapshot-tmp.";
const SUFFIX: &str = ".json";

#[derive(Debug, Serialize, Deserialize)]
struct Record {
    /// The target, redacted, as the checkpoint names it.
    target: String,
    /// Db and quoted name of each temporary key that may exist.
    keys: Vec<(u32, String)>,
}

fn state_err(path: &Path, message: impl std::fmt::Display) -> SnapshotError {
    SnapshotError::State {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

/// One worker's record of its temporary keys; a no-op without a state dir.
#[derive(Debug, Default)]
pub(super) struct TempKeys {
    path: Option<PathBuf>,
    target: String,
    live: Vec<(u32, Vec<u8>)>,
    /// The record file, once opened, and the length of the longest record written to it.
    file: Option<(File, usize)>,
}

impl TempKeys {
    /// The record of worker `worker` in `dir`.
    pub(super) fn new(dir: Option<&Path>, target: &Endpoint, worker: u32) -> TempKeys {
        TempKeys {
            path: dir.map(|d| d.join(format!("{PREFIX}{worker}{SUFFIX}"))),
            target: target.redacted().to_string(),
            live: Vec::new(),
            file: None,
        }
    }

    /// Records that `name` is about to be created in `db`; returns once the record is written.
    pub(super) fn begin(&mut self, db: u32, name: &[u8]) -> Result<(), SnapshotError> {
        self.live.push((db, name.to_vec()));
        self.write()
    }

    /// `name` is gone from the target (renamed over its key, or deleted). The record on disk
    /// keeps it until the next [`TempKeys::begin`]; deleting a missing key later is harmless.
    pub(super) fn end(&mut self, db: u32, name: &[u8]) {
        self.live.retain(|(d, n)| !(*d == db && n == name));
    }

    fn write(&mut self) -> Result<(), SnapshotError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let record = Record {
            target: self.target.clone(),
            keys: self.live.iter().map(|(db, n)| (*db, quote(n))).collect(),
        };
        let mut data = serde_json::to_vec(&record).map_err(|e| state_err(path, e))?;
        if self.file.is_none() {
            let f = File::create(path).map_err(|e| state_err(path, e))?;
            self.file = Some((f, 0));
        }
        let Some((file, longest)) = &mut self.file else {
            return Ok(());
        };
        // One write over the whole old record: never a moment with no name recorded.
        data.resize(data.len().max(*longest), b' ');
        *longest = data.len();
        file.seek(SeekFrom::Start(0))
            .and_then(|_| file.write_all(&data))
            .map_err(|e| state_err(path, e))
    }
}

impl Drop for TempKeys {
    /// A worker that ends with every temporary key gone leaves no record; a killed one never
    /// gets here.
    fn drop(&mut self) {
        if let (Some(path), true, Some(_)) = (&self.path, self.live.is_empty(), &self.file) {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Deletes on `target` every temporary key recorded in `dir`, then the records; returns how
/// many keys existed and were deleted.
pub(super) async fn sweep_leftovers(dir: &Path, target: &Endpoint) -> Result<u64, SnapshotError> {
    let mut records = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(state_err(dir, e)),
    };
    for entry in entries {
        let path = entry.map_err(|e| state_err(dir, e))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with(PREFIX) && name.ends_with(SUFFIX) {
            let bytes = std::fs::read(&path).map_err(|e| state_err(&path, e))?;
            let record: Record = serde_json::from_slice(&bytes).map_err(|e| {
                state_err(
                    &path,
                    format!(
                        "unreadable temp-key record ({e}); remove it to go on (a temporary \
                         key named …ferry-tmp:… may then stay on the target)"
                    ),
                )
            })?;
            records.push((path, record));
        }
    }
    if records.is_empty() {
        return Ok(0);
    }
    let mut con = target.control().await?;
    let mut deleted = 0;
    for (path, record) in records {
        if record.target != target.redacted() {
            tracing::warn!(
                path = %path.display(),
                recorded = %record.target,
                "A temp-key record names another target; leaving it."
            );
            continue;
        }
        for (db, quoted) in &record.keys {
            let name = unquote(quoted.as_bytes())
                .map_err(|e| state_err(&path, format!("bad key {quoted}: {e}")))?;
            let (_, n): ((), u64) = redis::pipe()
                .cmd("SELECT")
                .arg(*db)
                .cmd("DEL")
                .arg(name)
                .query_async(&mut con)
                .await
                .map_err(|e| SnapshotError::Command {
                    endpoint: target.redacted().to_string(),
                    command: "DEL",
                    message: e.to_string(),
                })?;
            deleted += n;
        }
        std::fs::remove_file(&path).map_err(|e| state_err(&path, e))?;
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorded(path: &Path) -> Vec<(u32, String)> {
        let bytes = std::fs::read(path).expect("record");
        serde_json::from_slice::<Record>(&bytes)
            .expect("a padded record parses")
            .keys
    }

    #[test]
    fn a_shorter_record_overwrites_a_longer_one_in_place() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = Endpoint::parse("redis://127.0.0.1:1").expect("url");
        let mut t = TempKeys::new(Some(dir.path()), &target, 7);
        let path = dir.path().join("snapshot-tmp.7.json");
        t.begin(3, &[b'x'; 300]).expect("write");
        t.end(3, &[b'x'; 300]);
        t.begin(0, b"{k}ferry-tmp:1\xff").expect("write");
        assert_eq!(recorded(&path), vec![(0, quote(b"{k}ferry-tmp:1\xff"))]);
        // A copy whose clean-up was not confirmed stays recorded beside the next one.
        t.begin(1, b"b").expect("write");
        assert_eq!(recorded(&path).len(), 2);
        t.end(0, b"{k}ferry-tmp:1\xff");
        t.end(1, b"b");
        drop(t);
        assert!(
            !path.exists(),
            "a worker that ends clean removes its record"
        );
    }
}
