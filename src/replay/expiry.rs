//! Known expiry times of source keys, for the stitcher: replay sets absolute TTLs, so a key
//! expires on the target at the same wall time as on the source, but replay lags. A write that
//! reached the key alive on the source can reach the target after that time, when the key is
//! gone there (an `INCR` then creates a new counter without a TTL). The stitcher asks this table
//! whether a write is close enough to a key's expiry for that to happen.
//!
//! ## Behavior
//! - Times come from snapshot and re-copy payloads and from the TTLs replay sends, read after
//!   the rewrite (so always absolute): `SET … PXAT|EXAT|KEEPTTL`, `PEXPIREAT`/`EXPIREAT`,
//!   `GETEX … PXAT|EXAT|PERSIST`, `PERSIST`, `RESTORE … ABSTTL`, `DEL`/`UNLINK`, and the moves
//!   `RENAME`, `RENAMENX`, `COPY`, `MOVE`.
//! - A time may be stale (a TTL removed by a command not listed, a conditional `PEXPIREAT` that
//!   did not apply): the cost is a needless re-copy. Conditions are judged by the table itself:
//!   `SET … NX` leaves a key it knows alive alone (a lock held by someone else keeps its TTL).
//! - Memory: one entry (about 30 bytes) per source key with a TTL that the snapshot or replay
//!   saw, until a minute after it expires.
//! - Times long past are purged as the stream advances.

use std::collections::HashMap;

use crate::command::Argv;

/// Entries this far behind the stream's clock are dropped.
const PURGE_AFTER_MS: i64 = 60_000;
/// Commands between purges.
const PURGE_EVERY: u64 = 1 << 16;

/// Source keys (by the stitcher's key hash) and when they expire, in ms since the epoch.
#[derive(Debug, Default)]
pub(super) struct Expiries {
    at: HashMap<u64, i64>,
    commands: u64,
}

fn int(arg: Option<&[u8]>) -> Option<i64> {
    std::str::from_utf8(arg?).ok()?.parse().ok()
}

impl Expiries {
    pub(super) fn is_empty(&self) -> bool {
        self.at.is_empty()
    }

    pub(super) fn get(&self, h: u64) -> Option<i64> {
        self.at.get(&h).copied()
    }

    /// Sets (or clears, with `None` or a non-positive time) the expiry of key hash `h`.
    pub(super) fn set(&mut self, h: u64, at_ms: Option<i64>) {
        self.set_with(|| h, at_ms);
    }

    /// [`Expiries::set`], hashing only when there is something to do.
    fn set_with(&mut self, h: impl Fn() -> u64, at_ms: Option<i64>) {
        if self.at.is_empty() && at_ms.is_none_or(|t| t <= 0) {
            return;
        }
        let h = h();
        match at_ms {
            Some(t) if t > 0 => {
                self.at.insert(h, t);
            }
            _ => {
                self.at.remove(&h);
            }
        }
    }

    /// Records what `argv` (as sent to the target, in source names) does to expiry times;
    /// `hash` names a key of db `db`.
    pub(super) fn record(
        &mut self,
        db: u32,
        argv: &Argv,
        now_stream_ms: i64,
        hash: impl Fn(u32, &[u8]) -> u64,
    ) {
        self.commands += 1;
        if self.commands.is_multiple_of(PURGE_EVERY) {
            self.at.retain(|_, t| *t > now_stream_ms - PURGE_AFTER_MS);
        }
        let name = argv.name();
        // Most commands touch no expiry: leave before hashing anything.
        if !matches!(
            name.first().map(u8::to_ascii_uppercase),
            Some(b'S' | b'G' | b'P' | b'E' | b'R' | b'D' | b'U' | b'C' | b'M')
        ) {
            return;
        }
        let is = |n: &[u8]| name.eq_ignore_ascii_case(n);
        let Some(key) = argv.get(1) else { return };
        let h = || hash(db, key);
        // Options from position `from`: `PXAT t` / `EXAT t` set, `keep` words keep, `clear`
        // words (and no option at all, for SET) clear.
        let options = |from: usize, clear_by_default: bool| -> Option<Option<i64>> {
            let mut i = from;
            let mut found = None;
            while let Some(opt) = argv.get(i) {
                if opt.eq_ignore_ascii_case(b"PXAT") {
                    found = Some(int(argv.get(i + 1)));
                    i += 1;
                } else if opt.eq_ignore_ascii_case(b"EXAT") {
                    found = Some(int(argv.get(i + 1)).map(|s| s.saturating_mul(1000)));
                    i += 1;
                } else if opt.eq_ignore_ascii_case(b"KEEPTTL") {
                    return None;
                } else if opt.eq_ignore_ascii_case(b"PERSIST") {
                    found = Some(None);
                }
                i += 1;
            }
            match found {
                Some(t) => Some(t),
                None if clear_by_default => Some(None),
                None => None,
            }
        };
        if is(b"SET") {
            // `NX` applies only to a missing key: one the table knows alive keeps its time.
            let nx = argv.iter().skip(3).any(|a| a.eq_ignore_ascii_case(b"NX"));
            let alive = || self.at.get(&h()).is_some_and(|t| *t > now_stream_ms);
            if nx && alive() {
                return;
            }
            if let Some(t) = options(3, true) {
                self.set_with(h, t);
            }
        } else if is(b"GETEX") {
            if let Some(t) = options(2, false) {
                self.set_with(h, t);
            }
        } else if is(b"PEXPIREAT") {
            self.set_with(h, int(argv.get(2)));
        } else if is(b"EXPIREAT") {
            self.set_with(h, int(argv.get(2)).map(|s| s.saturating_mul(1000)));
        } else if is(b"PERSIST") {
            self.set_with(h, None);
        } else if is(b"RESTORE") {
            let abs = argv.iter().any(|a| a.eq_ignore_ascii_case(b"ABSTTL"));
            self.set_with(h, int(argv.get(2)).filter(|_| abs));
        } else if self.at.is_empty() {
            // The rest only move or clear known times.
        } else if is(b"DEL") || is(b"UNLINK") {
            for k in argv.iter().skip(1) {
                self.at.remove(&hash(db, k));
            }
        } else if is(b"RENAME") || is(b"RENAMENX") || is(b"COPY") {
            let Some(dst) = argv.get(2) else { return };
            let to_db = if is(b"COPY") {
                argv.iter()
                    .position(|a| a.eq_ignore_ascii_case(b"DB"))
                    .and_then(|i| int(argv.get(i + 1)))
                    .and_then(|d| u32::try_from(d).ok())
                    .unwrap_or(db)
            } else {
                db
            };
            let t = if is(b"COPY") {
                self.get(h())
            } else {
                self.at.remove(&h())
            };
            self.set_with(|| hash(to_db, dst), t);
        } else if is(b"MOVE")
            && let Some(to) = int(argv.get(2)).and_then(|d| u32::try_from(d).ok())
        {
            let t = self.at.remove(&h());
            self.set_with(|| hash(to, key), t);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(db: u32, key: &[u8]) -> u64 {
        (u64::from(db) << 32)
            ^ key
                .iter()
                .fold(0u64, |a, b| a.wrapping_mul(31) ^ u64::from(*b))
    }

    fn rec(e: &mut Expiries, db: u32, args: &[&str]) {
        e.record(db, &Argv::from_args(args), 0, h);
    }

    #[test]
    fn records_how_commands_set_move_and_clear_expiry_times() {
        let mut e = Expiries::default();
        rec(&mut e, 0, &["SET", "a", "1", "PXAT", "5000"]);
        assert_eq!(e.get(h(0, b"a")), Some(5000));
        rec(&mut e, 0, &["SET", "a", "2", "KEEPTTL"]);
        assert_eq!(e.get(h(0, b"a")), Some(5000));
        rec(&mut e, 0, &["SET", "a", "3"]);
        assert_eq!(e.get(h(0, b"a")), None);
        rec(&mut e, 0, &["SET", "a", "1", "exat", "7"]);
        assert_eq!(e.get(h(0, b"a")), Some(7000));
        rec(&mut e, 0, &["RENAME", "a", "b"]);
        assert_eq!((e.get(h(0, b"a")), e.get(h(0, b"b"))), (None, Some(7000)));
        rec(&mut e, 0, &["COPY", "b", "c", "DB", "3"]);
        assert_eq!(e.get(h(3, b"c")), Some(7000));
        rec(&mut e, 3, &["MOVE", "c", "1"]);
        assert_eq!((e.get(h(3, b"c")), e.get(h(1, b"c"))), (None, Some(7000)));
        rec(&mut e, 1, &["PERSIST", "c"]);
        assert_eq!(e.get(h(1, b"c")), None);
        rec(&mut e, 0, &["PEXPIREAT", "d", "9000", "GT"]);
        rec(&mut e, 0, &["EXPIREAT", "f", "9"]);
        rec(&mut e, 0, &["GETEX", "g", "PXAT", "11"]);
        rec(
            &mut e,
            0,
            &["RESTORE", "r", "12", "payload", "REPLACE", "ABSTTL"],
        );
        rec(&mut e, 0, &["RESTORE", "s", "0", "payload", "REPLACE"]);
        assert_eq!(
            [b"d", b"f", b"g", b"r", b"s"].map(|k| e.get(h(0, k))),
            [Some(9000), Some(9000), Some(11), Some(12), None]
        );
        rec(&mut e, 0, &["GETEX", "g", "PERSIST"]);
        rec(&mut e, 0, &["DEL", "d", "f"]);
        assert_eq!(
            [b"d", b"f", b"g"].map(|k| e.get(h(0, k))),
            [None, None, None]
        );
        // A lock taken while held by someone else keeps the holder's time.
        rec(&mut e, 0, &["SET", "lock", "a", "NX", "PXAT", "100"]);
        rec(&mut e, 0, &["SET", "lock", "b", "NX", "PXAT", "200"]);
        assert_eq!(e.get(h(0, b"lock")), Some(100));
        // Commands that keep a TTL leave the time alone.
        rec(&mut e, 0, &["INCR", "r"]);
        assert_eq!(e.get(h(0, b"r")), Some(12));
    }
}
