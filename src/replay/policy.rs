//! Replay's error policy: which error replies the source gave too (expected), which mean the
//! target cannot apply anything for a while (back off, reconnect, resync), and which mean the
//! target now differs from the source (the key is re-copied, and the run fails while it still
//! differs).
//!
//! ## Behavior
//! - A write that failed on the source is in the stream all the same (`MONITOR` logs commands
//!   that fail *during* execution, docs/redis-behaviour.md §1) and fails the same way on the target:
//!   `WRONGTYPE`, `ERR value is not an integer`, syntax errors, `EXECABORT`, `NOSCRIPT`,
//!   `BUSYGROUP`… These are counted, not acted on.
//! - Commands the source rejects *before* execution (`OOM`, `NOPERM`, `READONLY`, `MOVED`…) never
//!   reach the stream (docs/redis-behaviour.md §1), so the same codes from the target are the target's alone.
//!   `LOADING`, `BUSY`, `TRYAGAIN`, `READONLY`, `MASTERDOWN`, `CLUSTERDOWN` and `NOREPLICAS` pass
//!   with time; every other code, known or not, is a divergence, because guessing "expected" for
//!   a code we do not know would let a difference through silently.
//! - A `RESTORE` (or `DEL`) of a fenced payload can only fail on the target: the source just
//!   produced that payload.

use std::collections::{BTreeMap, HashMap};

/// What an error reply means for the migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The command failed the same way on the source: nothing to do.
    AsOnSource,
    /// The target cannot apply anything right now; it will later.
    Transient,
    /// Only the target failed: the keys involved now differ from the source.
    TargetOnly,
}

/// Codes of errors that happen during execution, so the source logged the command and failed
/// it the same way.
const AS_ON_SOURCE: &[&str] = &[
    "WRONGTYPE",
    "EXECABORT",
    "NOSCRIPT",
    "BUSYGROUP",
    "NOGROUP",
    "BUSYKEY",
    "UNBLOCKED",
    "NOTBUSY",
    "UNKILLABLE",
];

/// Codes that mean "not now": a restarting, failing-over or resharding target, or a script
/// running too long there.
const TRANSIENT: &[&str] = &[
    "LOADING",
    "BUSY",
    "TRYAGAIN",
    "READONLY",
    "MASTERDOWN",
    "CLUSTERDOWN",
    "NOREPLICAS",
];

/// Generic `ERR` replies that come from the target's own state or configuration, never from the
/// command as the source ran it.
const TARGET_ONLY_ERR: &[&str] = &[
    "ERR unknown command",
    "ERR DB index is out of range",
    "ERR DUMP payload version or checksum are wrong",
    "ERR Bad data format",
    "ERR max number of clients reached",
    "ERR Protocol error",
];

/// The error code: the first word of the reply line.
pub fn error_code(line: &str) -> &str {
    line.split_whitespace().next().unwrap_or("ERR")
}

/// Classifies one error reply line (without the leading `-`).
pub fn classify(line: &str) -> ErrorClass {
    let code = error_code(line);
    if TRANSIENT.contains(&code) {
        ErrorClass::Transient
    } else if code == "ERR" {
        if TARGET_ONLY_ERR.iter().any(|p| line.starts_with(p)) {
            ErrorClass::TargetOnly
        } else {
            ErrorClass::AsOnSource
        }
    } else if AS_ON_SOURCE.contains(&code) {
        ErrorClass::AsOnSource
    } else {
        ErrorClass::TargetOnly
    }
}

/// The error counts for summaries: `3 as on the source, 12 target-only (OOM 12)`.
pub fn error_counts(as_on_source: u64, target_only: &BTreeMap<String, u64>) -> String {
    let total: u64 = target_only.values().sum();
    let mut out = format!("{as_on_source} as on the source, {total} target-only");
    if total > 0 {
        let codes: Vec<String> = target_only
            .iter()
            .map(|(c, n)| format!("{c} {n}"))
            .collect();
        out.push_str(&format!(" ({})", codes.join(", ")));
    }
    out
}

/// Keys the target holds differently from the source, because a write or a restore failed only
/// there. A key leaves the ledger when a later restore of it succeeds.
#[derive(Debug, Default)]
pub struct Diverged {
    /// Target db and key → the error that left it different.
    keys: HashMap<(u32, Vec<u8>), String>,
    /// Failures that name no key (`FLUSHDB` refused, a command the table has no keys for): no
    /// re-copy can repair them.
    keyless: Vec<String>,
    /// Keyless failures beyond the ones kept as examples.
    keyless_more: u64,
}

/// How many keyless failures are kept as examples.
const KEYLESS_EXAMPLES: usize = 5;

impl Diverged {
    /// Records that `key` differs; true when it did not already (a re-copy is worth asking for).
    pub fn mark(&mut self, db: u32, key: &[u8], error: &str) -> bool {
        if self.keys.contains_key(&(db, key.to_vec())) {
            return false;
        }
        self.keys.insert((db, key.to_vec()), error.to_string());
        true
    }

    /// Records a failure that names no key.
    pub fn mark_keyless(&mut self, what: String) {
        if self.keyless.len() < KEYLESS_EXAMPLES {
            self.keyless.push(what);
        } else {
            self.keyless_more += 1;
        }
    }

    /// A restore of `key` succeeded: the key equals the source again.
    pub fn settle(&mut self, db: u32, key: &[u8]) {
        self.keys.remove(&(db, key.to_vec()));
    }

    /// How many keys (and keyless failures) still differ.
    pub fn count(&self) -> u64 {
        self.keys.len() as u64 + self.keyless.len() as u64 + self.keyless_more
    }

    /// One difference, for messages: `db 0 key "k": OOM command not allowed …`.
    pub fn example(&self) -> Option<String> {
        if let Some(((db, key), err)) = self.keys.iter().next() {
            return Some(format!("db {db} key {}: {err}", crate::escape::quote(key)));
        }
        self.keyless.first().cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_by_code() {
        use ErrorClass::*;
        assert_eq!(
            classify("WRONGTYPE Operation against a key holding the wrong kind of value"),
            AsOnSource
        );
        assert_eq!(
            classify("ERR value is not an integer or out of range"),
            AsOnSource
        );
        assert_eq!(classify("ERR syntax error"), AsOnSource);
        assert_eq!(
            classify("EXECABORT Transaction discarded because of previous errors."),
            AsOnSource
        );
        assert_eq!(
            classify("OOM command not allowed when used memory > 'maxmemory'."),
            TargetOnly
        );
        assert_eq!(classify("NOPERM this user has no permissions"), TargetOnly);
        assert_eq!(
            classify("MISCONF Errors writing to the AOF file"),
            TargetOnly
        );
        assert_eq!(classify("MOVED 3999 127.0.0.1:6381"), TargetOnly);
        assert_eq!(classify("SOMENEWCODE who knows"), TargetOnly);
        assert_eq!(classify("ERR DB index is out of range"), TargetOnly);
        assert_eq!(
            classify("LOADING Redis is loading the dataset in memory"),
            Transient
        );
        assert_eq!(classify("BUSY Redis is busy running a script"), Transient);
        assert_eq!(
            classify("READONLY You can't write against a read only replica."),
            Transient
        );
    }

    #[test]
    fn ledger_marks_once_and_settles() {
        let mut d = Diverged::default();
        assert!(d.mark(0, b"k", "OOM x"));
        assert!(!d.mark(0, b"k", "OOM y"));
        assert_eq!(d.count(), 1);
        assert!(d.example().is_some_and(|e| e.contains("OOM x")));
        d.settle(0, b"k");
        assert_eq!(d.count(), 0);
        d.mark_keyless("FLUSHDB: NOPERM".into());
        assert_eq!(d.count(), 1);
    }
}
