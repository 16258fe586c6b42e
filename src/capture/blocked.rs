//! The blocked-client ledger: which clients may be blocked on which keys, so that a push that
//! serves one (invisibly, docs/redis-behaviour.md §4) is followed by a re-copy of the keys the pop changed.
//!
//! ## Why
//! On a primary, `MONITOR` logs `BRPOP q 5` once, when the client blocks. When another client's
//! `LPUSH q j` later serves it, the stream shows only the `LPUSH`: the element is gone on the
//! source but replay would add it to the target. Re-copying `q` at the `BRPOP` line is too early
//! (the read lands before the push). So every blocking command is remembered here, and any write
//! to one of its keys while the client may still be blocked asks for a re-copy *after* that write.
//!
//! ## Behavior
//! - Every blocking command outside a transaction is entered (whether it blocked or was served
//!   at once cannot be told from the stream; a needless re-copy is harmless).
//! - A TCP client's entry ends with its next line: a blocked client sends nothing that runs.
//!   Unix-socket clients all show the same peer, so theirs end only at their timeout.
//! - A unix-socket entry also ends one second after its timeout (`0` = never), by the stream's
//!   clock; a TCP entry only a minute after it (its client disconnected): the server serves a
//!   blocked client until it handles the timeout, which a stalled server does late, so a push
//!   seconds past the timeout can still have served it.
//! - A disconnect is invisible: its entry stays until its timeout, costing re-copies, never
//!   exactness.

use std::collections::HashMap;
use std::net::SocketAddr;

use super::parse::Peer;
use crate::command::{Argv, CommandFlags, CommandTable, KeyRef};

/// Added to a blocking timeout before the entry of a client that cannot be told apart (a unix
/// socket) is dropped: a push racing the timeout may still have served the client.
const TIMEOUT_SLACK_US: u64 = 1_000_000;
/// Added to a TCP client's timeout before its entry is dropped without a line of its own (it
/// disconnected while blocked). A server serves a blocked client until it *handles* its timeout,
/// once per event-loop turn (`beforeSleep`): after a stall of the server (a loaded host, a slow
/// command), a push long past the timeout by the stream's clock still serves it, so a TCP entry
/// normally ends with its client's next line, and this only bounds the cost of disconnects.
const TCP_GONE_SLACK_US: u64 = 60_000_000;

#[derive(Debug)]
struct Entry {
    db: u32,
    keys: Vec<Vec<u8>>,
    /// The client, when it can be told apart from others.
    tcp: Option<SocketAddr>,
    /// Stream time after which the client is surely no longer blocked; `u64::MAX` = never.
    deadline_us: u64,
}

/// Clients that may be blocked, and the keys they wait on.
#[derive(Debug, Default)]
pub struct BlockedLedger {
    entries: HashMap<u64, Entry>,
    by_tcp: HashMap<SocketAddr, u64>,
    /// Entries of clients that cannot be told apart (unix sockets), by db and keys.
    by_keys: HashMap<(u32, Vec<Vec<u8>>), u64>,
    /// Entries by db, then key: looked up by `&[u8]`, without allocating, for every write.
    by_key: HashMap<u32, HashMap<Vec<u8>, Vec<u64>>>,
    next: u64,
    keys: Vec<KeyRef>,
}

impl BlockedLedger {
    /// True when no client may be blocked: writes need no checking.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// `peer` sent a line, so it is not blocked (any more).
    pub fn active(&mut self, peer: &Peer) {
        if let Peer::Tcp(addr) = peer
            && let Some(id) = self.by_tcp.remove(addr)
        {
            self.remove(id);
        }
    }

    /// Enters `argv`, run by `peer` outside a transaction, if it is a blocking command.
    pub fn block(&mut self, table: &CommandTable, peer: &Peer, db: u32, argv: &Argv, ts_us: u64) {
        let Some(spec) = table.lookup(argv) else {
            return;
        };
        if !spec.flags.contains(CommandFlags::BLOCKING) || !spec.is_write() {
            // XREAD and WAIT block without changing anything a push could serve.
            return;
        }
        let Some(timeout_us) = timeout_us(argv) else {
            return;
        };
        let mut refs = std::mem::take(&mut self.keys);
        refs.clear();
        table.keys_into(argv, &mut refs);
        let keys: Vec<Vec<u8>> = refs
            .iter()
            .filter_map(|k| argv.get(k.pos).map(<[u8]>::to_vec))
            .collect();
        self.keys = refs;
        if keys.is_empty() {
            return;
        }
        let slack = match peer {
            Peer::Tcp(_) => TCP_GONE_SLACK_US,
            _ => TIMEOUT_SLACK_US,
        };
        let deadline_us = match timeout_us {
            0 => u64::MAX,
            t => ts_us.saturating_add(t).saturating_add(slack),
        };
        match peer {
            Peer::Tcp(addr) => {
                let id = self.insert(db, keys, Some(*addr), deadline_us);
                if let Some(old) = self.by_tcp.insert(*addr, id) {
                    self.remove(old);
                }
            }
            _ => {
                let slot = (db, keys);
                if let Some(id) = self.by_keys.get(&slot)
                    && let Some(e) = self.entries.get_mut(id)
                {
                    e.deadline_us = e.deadline_us.max(deadline_us);
                    return;
                }
                let id = self.insert(slot.0, slot.1.clone(), None, deadline_us);
                self.by_keys.insert(slot, id);
            }
        }
    }

    /// A write on `db` ran at `ts_us`: adds to `out` the keys of every client it may have served
    /// (each client's keys, since a served `BLMOVE` also changes its destination).
    pub fn served(
        &mut self,
        table: &CommandTable,
        db: u32,
        argv: &Argv,
        ts_us: u64,
        out: &mut Vec<(u32, Vec<u8>)>,
    ) {
        let mut refs = std::mem::take(&mut self.keys);
        refs.clear();
        table.keys_into(argv, &mut refs);
        let mut expired = Vec::new();
        for k in &refs {
            let Some(key) = argv.get(k.pos) else { continue };
            let Some(ids) = self.by_key.get(&db).and_then(|m| m.get(key)) else {
                continue;
            };
            for id in ids {
                let Some(e) = self.entries.get(id) else {
                    continue;
                };
                if e.deadline_us < ts_us {
                    expired.push(*id);
                    continue;
                }
                for key in &e.keys {
                    if !out.iter().any(|(d, k)| *d == e.db && k == key) {
                        out.push((e.db, key.clone()));
                    }
                }
            }
        }
        self.keys = refs;
        for id in expired {
            self.remove(id);
        }
    }

    fn insert(
        &mut self,
        db: u32,
        keys: Vec<Vec<u8>>,
        tcp: Option<SocketAddr>,
        deadline_us: u64,
    ) -> u64 {
        let id = self.next;
        self.next += 1;
        let by_key = self.by_key.entry(db).or_default();
        for k in &keys {
            let ids = by_key.entry(k.clone()).or_default();
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        self.entries.insert(
            id,
            Entry {
                db,
                keys,
                tcp,
                deadline_us,
            },
        );
        id
    }

    fn remove(&mut self, id: u64) {
        let Some(e) = self.entries.remove(&id) else {
            return;
        };
        if let Some(by_key) = self.by_key.get_mut(&e.db) {
            for k in &e.keys {
                if let Some(ids) = by_key.get_mut(k.as_slice()) {
                    ids.retain(|i| *i != id);
                    if ids.is_empty() {
                        by_key.remove(k.as_slice());
                    }
                }
            }
            if by_key.is_empty() {
                self.by_key.remove(&e.db);
            }
        }
        if let Some(addr) = e.tcp
            && self.by_tcp.get(&addr) == Some(&id)
        {
            self.by_tcp.remove(&addr);
        }
        let slot = (e.db, e.keys);
        if self.by_keys.get(&slot) == Some(&id) {
            self.by_keys.remove(&slot);
        }
    }
}

/// How long a blocking command may block, in microseconds (0 = forever); `None` when it cannot
/// block (no `BLOCK` option) or its timeout is one the server rejects.
fn timeout_us(argv: &Argv) -> Option<u64> {
    let name = argv.name();
    let secs = |arg: Option<&[u8]>| -> Option<u64> {
        let s: f64 = std::str::from_utf8(arg?).ok()?.trim().parse().ok()?;
        (s.is_finite() && s >= 0.0).then_some((s * 1e6) as u64)
    };
    if name.eq_ignore_ascii_case(b"BLMPOP") || name.eq_ignore_ascii_case(b"BZMPOP") {
        return secs(argv.get(1));
    }
    if name.eq_ignore_ascii_case(b"XREADGROUP") {
        // GROUP g c [COUNT n] [BLOCK ms] [NOACK] STREAMS …
        let mut i = 4;
        while let Some(opt) = argv.get(i) {
            if opt.eq_ignore_ascii_case(b"STREAMS") {
                return None;
            }
            if opt.eq_ignore_ascii_case(b"BLOCK") {
                let ms: u64 = std::str::from_utf8(argv.get(i + 1)?).ok()?.parse().ok()?;
                return Some(ms.saturating_mul(1000));
            }
            i += if opt.eq_ignore_ascii_case(b"NOACK") {
                1
            } else {
                2
            };
        }
        return None;
    }
    let last = secs(argv.get(argv.len().saturating_sub(1)));
    let known = [
        &b"BLPOP"[..],
        b"BRPOP",
        b"BZPOPMIN",
        b"BZPOPMAX",
        b"BRPOPLPUSH",
        b"BLMOVE",
    ];
    if known.iter().any(|k| name.eq_ignore_ascii_case(k)) {
        return last;
    }
    // A module's blocking command: its last argument if that is a number, else until its
    // client's next line.
    Some(last.unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> &'static CommandTable {
        CommandTable::builtin()
    }

    fn tcp(port: u16) -> Peer {
        Peer::Tcp(SocketAddr::from(([127, 0, 0, 1], port)))
    }

    fn served(l: &mut BlockedLedger, db: u32, args: &[&str], ts: u64) -> Vec<(u32, String)> {
        let mut out = Vec::new();
        l.served(table(), db, &Argv::from_args(args), ts, &mut out);
        out.into_iter()
            .map(|(d, k)| (d, String::from_utf8(k).unwrap()))
            .collect()
    }

    #[test]
    fn a_push_to_a_blocked_key_serves_until_the_client_speaks_again() {
        let mut l = BlockedLedger::default();
        let a = tcp(1);
        l.block(
            table(),
            &a,
            0,
            &Argv::from_args(["BRPOP", "q1", "q2", "5"]),
            1_000_000,
        );
        assert_eq!(served(&mut l, 0, &["SET", "x", "1"], 1_100_000), vec![]);
        assert_eq!(served(&mut l, 1, &["LPUSH", "q1", "j"], 1_100_000), vec![]);
        assert_eq!(
            served(&mut l, 0, &["LPUSH", "q2", "j"], 1_200_000),
            vec![(0, "q1".into()), (0, "q2".into())]
        );
        l.active(&a);
        assert!(l.is_empty());
        assert_eq!(served(&mut l, 0, &["LPUSH", "q2", "j"], 1_300_000), vec![]);
    }

    #[test]
    fn blmove_marks_its_destination_and_timeouts_end_entries() {
        let mut l = BlockedLedger::default();
        let unix = Peer::Unix(b"/tmp/r.sock".to_vec().into());
        l.block(
            table(),
            &unix,
            2,
            &Argv::from_args(["BLMOVE", "src", "dst", "LEFT", "RIGHT", "0.5"]),
            10_000_000,
        );
        assert_eq!(
            served(&mut l, 2, &["RPUSH", "src", "j"], 11_000_000),
            vec![(2, "src".into()), (2, "dst".into())]
        );
        // 0.5 s timeout + 1 s slack.
        assert_eq!(
            served(&mut l, 2, &["RPUSH", "src", "j"], 11_600_000),
            vec![]
        );
        assert!(l.is_empty());
    }

    /// Regression (issue 14, a 6.0 → 7.0 run left `queue:mailers` on the target): a server that
    /// stalls between a blocked client's timeout and handling it serves the client with a push
    /// stamped seconds past the timeout. A TCP client's entry lasts until its next line.
    #[test]
    fn a_tcp_client_served_after_its_timeout_by_a_stalled_server_is_still_marked() {
        let mut l = BlockedLedger::default();
        let c = tcp(7);
        l.block(
            table(),
            &c,
            1,
            &Argv::from_args(["BRPOP", "queue:default", "queue:mailers", "1"]),
            10_000_000,
        );
        assert_eq!(
            served(&mut l, 1, &["LPUSH", "queue:mailers", "j"], 13_500_000),
            vec![(1, "queue:default".into()), (1, "queue:mailers".into())]
        );
        l.active(&c);
        assert!(l.is_empty());
        // A client that disconnected while blocked: gone a minute after its timeout.
        l.block(
            table(),
            &c,
            1,
            &Argv::from_args(["BRPOP", "q", "1"]),
            20_000_000,
        );
        assert_eq!(served(&mut l, 1, &["LPUSH", "q", "j"], 82_000_000), vec![]);
        assert!(l.is_empty());
    }

    #[test]
    fn zero_timeouts_last_and_unix_clients_share_entries() {
        let mut l = BlockedLedger::default();
        let unix = Peer::Unix(b"/tmp/r.sock".to_vec().into());
        for _ in 0..3 {
            l.block(table(), &unix, 0, &Argv::from_args(["BLPOP", "q", "0"]), 1);
        }
        assert_eq!(l.entries.len(), 1);
        l.active(&unix);
        assert_eq!(
            served(&mut l, 0, &["LPUSH", "q", "j"], u64::MAX - 1),
            vec![(0, "q".into())]
        );
    }

    #[test]
    fn only_commands_that_can_block_are_entered() {
        let mut l = BlockedLedger::default();
        let p = tcp(1);
        for args in [
            &["RPOP", "q"][..],
            &["BRPOP", "q", "-1"],
            &["BRPOP", "q", "nan"],
            &["XREADGROUP", "GROUP", "g", "c", "STREAMS", "s", ">"],
            &["XREAD", "BLOCK", "0", "STREAMS", "s", "$"],
        ] {
            l.block(table(), &p, 0, &Argv::from_args(args), 1);
            assert!(l.is_empty(), "{args:?}");
        }
        l.block(
            table(),
            &p,
            0,
            &Argv::from_args([
                "XREADGROUP",
                "GROUP",
                "g",
                "c",
                "COUNT",
                "1",
                "NOACK",
                "BLOCK",
                "100",
                "STREAMS",
                "s",
                ">",
            ]),
            1,
        );
        assert_eq!(
            served(&mut l, 0, &["XADD", "s", "*", "f", "v"], 2),
            vec![(0, "s".into())]
        );
        // 100 ms, then the minute a TCP entry waits for its client's next line.
        assert_eq!(
            served(&mut l, 0, &["XADD", "s", "*", "f", "v"], 60_100_002),
            vec![]
        );
    }
}
