//! [`LateWrites`]: the writes that reach the old source after the switch's fence, counted per
//! client as capture sees them, so the operator sees which hosts have not moved yet and the
//! trailing window can tell source keys that changed late.
//!
//! ## Behavior
//! - Capture arms the ledger at the switch marker (`ECHO ferry:switch-<n>`) in stream order:
//!   every write after it, and none before, is late. ferry's own lines are never counted.
//! - A write is attributed to the client whose line emitted it (the `EXEC` line's client for
//!   a transaction; the caller of a script).
//! - Late keys are kept up to [`MAX_LATE_KEYS`]; past it the ledger says so, and conflict
//!   checks treat every key as possibly late.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use serde::Serialize;

use super::parse::Peer;
use crate::command::{Argv, CommandTable};
use crate::journal::EntryKind;

/// Late keys remembered for conflict checks.
pub const MAX_LATE_KEYS: usize = 100_000;

/// Late writes of one client.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ClientTally {
    /// The client's address as the source sees it (`ip:port`, `unix:…`).
    pub addr: String,
    /// Its name (`CLIENT SETNAME`), when known.
    pub name: Option<String>,
    /// Late writes (a transaction or a script counts once).
    pub writes: u64,
    /// Source time of its last late write, in µs.
    pub last_ts_us: u64,
    /// Its name was looked up (`CLIENT LIST`), found or not.
    #[serde(skip)]
    pub looked_up: bool,
}

/// The first late write to a key.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LateKey {
    /// Source time, in µs.
    pub ts_us: u64,
    /// The command, quoted, first 200 bytes.
    pub command: String,
    /// The client's address.
    pub addr: String,
}

#[derive(Debug, Default)]
struct Inner {
    total: u64,
    by_client: BTreeMap<String, ClientTally>,
    last_client: Option<String>,
    last_seen: Option<Instant>,
    keys: HashMap<(u32, Vec<u8>), LateKey>,
    keys_overflow: bool,
}

/// The late writes seen so far.
#[derive(Debug, Default)]
pub struct LateWrites {
    armed: AtomicBool,
    inner: Mutex<Inner>,
}

/// What [`LateWrites::summary`] reports.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LateSummary {
    /// Late writes in all.
    pub writes: u64,
    /// Per client, most writes first.
    pub clients: Vec<ClientTally>,
    /// The client of the last late write.
    pub last_client: Option<String>,
    /// Distinct late keys (at most [`MAX_LATE_KEYS`]).
    pub keys: u64,
    /// More keys were written late than the ledger keeps.
    pub keys_overflow: bool,
}

impl LateWrites {
    /// An unarmed ledger.
    pub fn new() -> LateWrites {
        LateWrites::default()
    }

    /// Starts counting: everything captured from here is late.
    pub fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    /// True once armed.
    pub fn armed(&self) -> bool {
        self.armed.load(Ordering::SeqCst)
    }

    /// When the last late write was captured (by ferry's clock).
    pub fn last_seen(&self) -> Option<Instant> {
        self.lock().last_seen
    }

    /// The first late write to `(db, key)`, if the ledger has one.
    pub fn key(&self, db: u32, key: &[u8]) -> Option<LateKey> {
        self.lock().keys.get(&(db, key.to_vec())).cloned()
    }

    /// True when the ledger could not keep every late key.
    pub fn keys_overflow(&self) -> bool {
        self.lock().keys_overflow
    }

    /// Gives names to the clients whose addresses `names` knows (from `CLIENT LIST`).
    pub fn name_clients(&self, names: &HashMap<String, String>) {
        let mut inner = self.lock();
        for (addr, tally) in inner.by_client.iter_mut() {
            if let Some(n) = names.get(addr) {
                tally.looked_up = true;
                if !n.is_empty() {
                    tally.name = Some(n.clone());
                }
            }
        }
    }

    /// True when a late client's name was never looked up: it should be while its connection
    /// is still open.
    pub fn unnamed(&self) -> bool {
        self.lock().by_client.values().any(|t| !t.looked_up)
    }

    /// The counts so far.
    pub fn summary(&self) -> LateSummary {
        let inner = self.lock();
        let mut clients: Vec<ClientTally> = inner.by_client.values().cloned().collect();
        clients.sort_by(|a, b| b.writes.cmp(&a.writes).then(a.addr.cmp(&b.addr)));
        LateSummary {
            writes: inner.total,
            clients,
            last_client: inner.last_client.clone(),
            keys: inner.keys.len() as u64,
            keys_overflow: inner.keys_overflow,
        }
    }

    /// Records the write units in `units` (emitted for `peer`'s line at `ts_us`), when armed.
    pub(crate) fn record(
        &self,
        table: &CommandTable,
        peer: &Peer,
        ts_us: u64,
        units: &[EntryKind],
    ) {
        if !self.armed()
            || !units
                .iter()
                .any(|u| matches!(u, EntryKind::Write { .. } | EntryKind::Atomic(_)))
        {
            return;
        }
        let addr = peer_addr(peer);
        let mut inner = self.lock();
        for unit in units {
            let group: Vec<(u32, &Argv)> = match unit {
                EntryKind::Write { db, argv } => vec![(*db, argv)],
                EntryKind::Atomic(items) => items.iter().map(|(d, a)| (*d, a)).collect(),
                _ => continue,
            };
            inner.total += 1;
            let tally = inner
                .by_client
                .entry(addr.clone())
                .or_insert_with(|| ClientTally {
                    addr: addr.clone(),
                    name: None,
                    writes: 0,
                    last_ts_us: 0,
                    looked_up: false,
                });
            tally.writes += 1;
            tally.last_ts_us = ts_us;
            for (db, argv) in group {
                for k in table.keys(argv) {
                    if !k.flags.writes() {
                        continue;
                    }
                    let key = argv.get(k.pos).unwrap_or_default().to_vec();
                    if inner.keys.contains_key(&(db, key.clone())) {
                        continue;
                    }
                    if inner.keys.len() >= MAX_LATE_KEYS {
                        inner.keys_overflow = true;
                        continue;
                    }
                    inner.keys.insert(
                        (db, key),
                        LateKey {
                            ts_us,
                            command: short_command(argv),
                            addr: addr.clone(),
                        },
                    );
                }
            }
        }
        inner.last_client = Some(addr);
        inner.last_seen = Some(Instant::now());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A command quoted for a report, cut at 200 bytes.
pub fn short_command(argv: &Argv) -> String {
    let mut s = argv.quoted();
    if s.len() > 200 {
        let mut end = 200;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// How a peer is named in reports.
pub fn peer_addr(peer: &Peer) -> String {
    match peer {
        Peer::Tcp(a) => a.to_string(),
        Peer::Lua => "lua".to_string(),
        Peer::Unix(path) => format!("unix:{}", String::from_utf8_lossy(path)),
        Peer::Other(p) => String::from_utf8_lossy(p).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(args: &[&str]) -> EntryKind {
        EntryKind::Write {
            db: 0,
            argv: Argv::from_args(args),
        }
    }

    #[test]
    fn only_writes_after_arming_count_per_client_with_their_keys() {
        let table = CommandTable::builtin();
        let late = LateWrites::new();
        let a = Peer::Tcp("10.0.0.1:5000".parse().unwrap());
        let b = Peer::Tcp("10.0.0.2:5000".parse().unwrap());
        late.record(table, &a, 1, &[write(&["SET", "early", "1"])]);
        assert_eq!(late.summary().writes, 0);
        late.arm();
        late.record(table, &a, 2, &[write(&["SET", "k", "1"])]);
        late.record(
            table,
            &b,
            3,
            &[EntryKind::Atomic(vec![
                (0, Argv::from_args(["INCR", "c"])),
                (1, Argv::from_args(["SET", "k", "2"])),
            ])],
        );
        late.record(table, &a, 4, &[write(&["DEL", "gone"])]);
        let s = late.summary();
        assert_eq!(s.writes, 3, "{s:?}");
        assert_eq!(s.clients[0].addr, "10.0.0.1:5000");
        assert_eq!(s.clients[0].writes, 2);
        assert_eq!(s.clients[1].writes, 1);
        assert_eq!(s.clients[0].last_ts_us, 4);
        assert_eq!(s.last_client.as_deref(), Some("10.0.0.1:5000"));
        assert_eq!(s.keys, 4);
        assert!(late.key(0, b"early").is_none());
        assert_eq!(late.key(0, b"k").unwrap().ts_us, 2);
        assert_eq!(late.key(1, b"k").unwrap().addr, "10.0.0.2:5000");
        assert!(late.key(0, b"c").is_some());
        let names = HashMap::from([("10.0.0.2:5000".to_string(), "app-b".to_string())]);
        late.name_clients(&names);
        assert_eq!(late.summary().clients[1].name.as_deref(), Some("app-b"));
    }
}
