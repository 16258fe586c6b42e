//! The stitcher: reads the journal in order and turns it into target operations, placing each
//! snapshot payload at its fence and deciding which keys need a fenced re-copy.
//!
//! ## Behavior
//! - A key is *unsettled* while the snapshot has not read it yet (snapshot mode) or while it is
//!   dirty. A write that writes an unsettled key, reads one, or cannot be replayed exactly
//!   (see [`super::rewrite`]) makes its written keys dirty; each dirty key is re-read through
//!   the same fenced path, once, and its new fence settles it.
//! - A `dirty:` marker makes its source key dirty at that position: capture's blocked-client
//!   ledger places one after a push that may have served a blocked pop (which changed the key
//!   without a line of its own), the eviction sweep one for a target key the source evicted.
//! - Everything is applied in stream order, fences included, so a payload overwrites exactly the
//!   writes it already contains and nothing is applied twice.
//! - A write that reaches a key close to its expiry (see [`super::expiry`]) goes out as
//!   [`Op::Expiring`]: if replay applies it after that time, the key may be gone on the target
//!   although it was alive on the source, and replay asks for its written keys to be re-copied.
//! - A gap (lost lines) unsettles everything and asks the coordinator for a resync.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, mpsc, oneshot};

use super::expiry::Expiries;
use super::op::Op;
use super::rewrite::rewrite;
use crate::clock::now_ms;
use crate::command::{Argv, CommandTable, KeyFlags, KeyRef};
use crate::command::{Mapper, mixed_keys};
use crate::journal::{EntryKind, JournalReader, Marker, is_check_read};
use crate::snapshot::{PayloadStore, Recopier};

/// What a verification probe reads on the target for one key, at the key's fence.
#[derive(Debug)]
pub struct CheckSlot {
    /// Target db and key (after the plan's renames), for routing.
    pub db: u32,
    pub key: Vec<u8>,
    /// Read-only commands to run there.
    pub cmds: Vec<Argv>,
    /// Gets the replies. Dropped unanswered when the key is not settled at the fence (a
    /// re-copy is pending, or the snapshot has not read it) or replay broke: check again later.
    pub reply: oneshot::Sender<Vec<redis::Value>>,
}

/// Verification probes waiting for their fences, by read id; one slot per key of the read.
#[derive(Debug, Default)]
pub struct CheckRegistry(Mutex<HashMap<String, Vec<Option<CheckSlot>>>>);

impl CheckRegistry {
    /// Registers a probe before its fenced read is sent, so the fence always finds it.
    pub fn register(&self, read_id: String, slots: Vec<Option<CheckSlot>>) {
        if let Ok(mut m) = self.0.lock() {
            m.insert(read_id, slots);
        }
    }

    /// Forgets a probe (answered, or given up).
    pub fn remove(&self, read_id: &str) {
        if let Ok(mut m) = self.0.lock() {
            m.remove(read_id);
        }
    }

    fn take(&self, read_id: &str, ordinal: u64) -> Option<CheckSlot> {
        let mut m = self.0.lock().ok()?;
        m.get_mut(read_id)?.get_mut(ordinal as usize)?.take()
    }
}

/// How long a fence waits for its payload before the key is re-read instead.
pub const DEFAULT_PAYLOAD_TIMEOUT: Duration = Duration::from_secs(5);

/// State the coordinator reads.
#[derive(Debug, Default)]
pub struct StitchShared {
    reached: Mutex<HashSet<String>>,
    reached_notify: Notify,
    /// Keys waiting for a re-copy.
    pub dirty: AtomicUsize,
    /// True while a snapshot (or resync) is in progress.
    pub snapshot_mode: AtomicBool,
    /// Source timestamp (µs) of the last entry handed to replay.
    pub last_ts_us: AtomicU64,
    /// Journal position handed to replay (+1).
    pub forwarded: AtomicU64,
    /// Fences whose payload never arrived (re-read instead).
    pub missing_payloads: AtomicU64,
    /// Streams whose consumer groups were advanced by `XCLAIM … LASTID` in a replica's stream.
    /// Redis 7.0 does not propagate the group's entries-read counter with it, so the replica
    /// (and the target) end up with none; the final fence copies the groups from the primary.
    pub group_fixups: Mutex<HashSet<(u32, Vec<u8>)>>,
    /// Journal position of the last marker replay has passed: everything before it is applied
    /// on the target, so the journal may drop it.
    pub applied_through: AtomicU64,
    /// Verification probes waiting for their fences.
    pub checks: CheckRegistry,
}

impl StitchShared {
    /// Waits until replay applied everything up to marker `id`.
    pub async fn wait_marker(&self, id: &str, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.reached_notify.notified();
            if self.reached.lock().is_ok_and(|r| r.contains(id)) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return false;
            }
        }
    }

    fn reach(&self, id: String, seq: u64) {
        self.applied_through.fetch_max(seq, Ordering::Relaxed);
        if let Ok(mut r) = self.reached.lock() {
            r.insert(id);
        }
        self.reached_notify.notify_waiters();
    }
}

/// What the stitcher asks of the coordinator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StitchEvent {
    /// Lines were lost: run a fenced resync, tagging its done-marker with `epoch`.
    Resync { epoch: u64, reason: String },
}

/// Stitcher settings.
#[derive(Clone)]
pub struct StitchConfig {
    /// The stream holds effects (a replica's): nothing needs rewriting.
    pub exact_effects: bool,
    /// How long a fence waits for its payload.
    pub payload_timeout: Duration,
    /// The plan's keyspace rules, if any.
    pub mapper: Option<Arc<dyn Mapper>>,
    /// Replay runs as separate processes, one per group of `n` shards, with no barrier between
    /// them: a command whose keys span shards is not sent; its written keys are re-copied.
    pub split_shards: Option<usize>,
}

impl Default for StitchConfig {
    fn default() -> Self {
        StitchConfig {
            exact_effects: false,
            payload_timeout: DEFAULT_PAYLOAD_TIMEOUT,
            mapper: None,
            split_shards: None,
        }
    }
}

/// A key on the target: db and name.
type TargetKey = (u32, Vec<u8>);

fn key_hash(db: u32, key: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    db.hash(&mut h);
    key.hash(&mut h);
    h.finish()
}

/// The stitcher.
pub struct Stitcher {
    table: Arc<CommandTable>,
    store: Arc<PayloadStore>,
    recopier: Recopier,
    cfg: StitchConfig,
    shared: Arc<StitchShared>,
    epoch: u64,
    fenced: HashSet<u64>,
    dirty: HashMap<u64, (u32, Vec<u8>)>,
    keys: Vec<KeyRef>,
    expiries: Expiries,
    /// For the entry being stitched: the earliest expiry of a key it reaches while alive, and
    /// the target keys it writes.
    expiring: Option<(i64, Vec<TargetKey>)>,
}

impl Stitcher {
    /// A stitcher in snapshot mode (epoch 0).
    pub fn new(
        table: Arc<CommandTable>,
        store: Arc<PayloadStore>,
        recopier: Recopier,
        cfg: StitchConfig,
        shared: Arc<StitchShared>,
    ) -> Stitcher {
        shared.snapshot_mode.store(true, Ordering::Relaxed);
        Stitcher {
            table,
            store,
            recopier,
            cfg,
            shared,
            epoch: 0,
            fenced: HashSet::new(),
            dirty: HashMap::new(),
            keys: Vec::new(),
            expiries: Expiries::default(),
            expiring: None,
        }
    }

    fn unsettled(&self, h: u64) -> bool {
        (self.shared.snapshot_mode.load(Ordering::Relaxed) && !self.fenced.contains(&h))
            || self.dirty.contains_key(&h)
    }

    fn mark_dirty(&mut self, db: u32, key: &[u8]) {
        let h = key_hash(db, key);
        if self.dirty.contains_key(&h) {
            return;
        }
        self.dirty.insert(h, (db, key.to_vec()));
        self.shared.dirty.store(self.dirty.len(), Ordering::Relaxed);
        self.recopier.request(db, key.to_vec());
    }

    /// Decides dirtiness for one command and returns what to send.
    fn command(&mut self, db: u32, argv: Argv, ts_us: u64) -> Option<Argv> {
        let mut keys = std::mem::take(&mut self.keys);
        keys.clear();
        self.table.keys_into(&argv, &mut keys);
        let reads = |f: KeyFlags| f == KeyFlags::empty() || f.reads();
        let writes = |f: KeyFlags| f == KeyFlags::empty() || f.writes();
        let reads_unsettled = keys.iter().any(|k| {
            reads(k.flags) && self.unsettled(key_hash(db, argv.get(k.pos).unwrap_or_default()))
        });
        let (out, dirty) = if self.cfg.exact_effects {
            if argv.name().eq_ignore_ascii_case(b"XCLAIM")
                && argv.iter().any(|a| a.eq_ignore_ascii_case(b"LASTID"))
                && let (Some(key), Ok(mut fix)) = (argv.get(1), self.shared.group_fixups.lock())
            {
                fix.insert((db, key.to_vec()));
            }
            (Some(argv.clone()), false)
        } else {
            let r = rewrite(&self.table, argv.clone(), ts_us);
            (r.argv, r.dirty)
        };
        for k in &keys {
            let key = argv.get(k.pos).unwrap_or_default();
            // A command that cannot be repeated exactly may change keys its spec calls
            // read-only (XREADGROUP updates the group's pending list): re-copy them all.
            let dirty_here = dirty
                || (writes(k.flags) && (reads_unsettled || self.unsettled(key_hash(db, key))));
            if dirty_here {
                self.mark_dirty(db, key);
            }
        }
        if let Some(n) = self.cfg.split_shards
            && keys.len() > 1
        {
            let shard = |k: &KeyRef| {
                let key = argv.get(k.pos).unwrap_or_default();
                match &self.cfg.mapper {
                    Some(m) => m
                        .map_key(db, key)
                        .map(|(_, t)| super::shard::shard_of(&t, n)),
                    None => Some(super::shard::shard_of(key, n)),
                }
            };
            let first = shard(&keys[0]);
            if keys.iter().any(|k| shard(k) != first) {
                for k in &keys {
                    if writes(k.flags) {
                        self.mark_dirty(db, argv.get(k.pos).unwrap_or_default());
                    }
                }
                self.keys = keys;
                return None;
            }
        }
        // A command that mixes keys the plan migrates with keys it leaves out cannot run on
        // the target as it ran on the source (the left-out keys are missing there). Send
        // nothing, and re-copy the migrated keys it touched instead.
        // `ferry check` reports the same decision through `mixed_keys`.
        if keys.len() > 1
            && let Some(m) = self.cfg.mapper.clone()
            && let Some(inside) = mixed_keys(
                keys.iter().map(|k| argv.get(k.pos).unwrap_or_default()),
                |key| m.map_key(db, key).is_some(),
            )
        {
            for i in inside {
                self.mark_dirty(db, argv.get(keys[i].pos).unwrap_or_default());
            }
            self.keys = keys;
            return None;
        }
        // A replica's stream carries its own expiry DELs, and split replay cannot act on
        // Op::Expiring yet: only a primary's stream replayed here needs the table.
        if !self.cfg.exact_effects && self.cfg.split_shards.is_none() {
            let t_ms = (ts_us / 1000) as i64;
            if !self.expiries.is_empty() {
                self.check_expiring(db, &argv, &keys, t_ms);
            }
            if let Some(sent) = &out {
                self.expiries.record(db, sent, t_ms, key_hash);
            }
        }
        self.keys = keys;
        out
    }

    /// Notes in `self.expiring` when `argv`, run on the source at `t_ms`, reached a key alive
    /// there that expires soon enough for replay to apply it after the key is gone on the
    /// target.
    fn check_expiring(&mut self, db: u32, argv: &Argv, keys: &[KeyRef], t_ms: i64) {
        // Replay lags less than ten minutes plus twice the stitcher's own lag, or the write
        // would not matter: a lag that large ends in a gap and a resync.
        let lag = (now_ms() - t_ms).max(0);
        let horizon = 600_000 + 2 * lag;
        let mut soonest = None;
        for k in keys {
            let h = key_hash(db, argv.get(k.pos).unwrap_or_default());
            match self.expiries.get(h) {
                Some(at) if at <= t_ms => self.expiries.set(h, None),
                Some(at) if at - t_ms < horizon => {
                    soonest = Some(soonest.map_or(at, |s: i64| s.min(at)));
                }
                _ => {}
            }
        }
        let Some(at) = soonest else { return };
        let writes = |f: KeyFlags| f == KeyFlags::empty() || f.writes();
        let (e, targets) = self.expiring.get_or_insert_with(|| (at, Vec::new()));
        *e = (*e).min(at);
        for k in keys.iter().filter(|k| writes(k.flags)) {
            let key = argv.get(k.pos).unwrap_or_default();
            let mapped = match &self.cfg.mapper {
                None => Some((db, key.to_vec())),
                Some(m) => m.map_key(db, key),
            };
            if let Some(t) = mapped
                && !targets.contains(&t)
            {
                targets.push(t);
            }
        }
    }

    /// Wraps `op` as [`Op::Expiring`] when one of its commands reached a key close to expiry.
    fn wrap_expiring(&mut self, op: Option<Op>) -> Option<Op> {
        match (op, self.expiring.take()) {
            (Some(op), Some((expire_at_ms, keys))) if !keys.is_empty() => Some(Op::Expiring {
                op: Box::new(op),
                expire_at_ms,
                keys,
            }),
            (op, _) => op,
        }
    }

    /// Applies the plan's rules to one outgoing command.
    fn map(&self, db: u32, argv: Argv, out: &mut Vec<(u32, Argv)>) -> Result<(), String> {
        match &self.cfg.mapper {
            None => {
                out.push((db, argv));
                Ok(())
            }
            Some(m) => m.map_command(db, argv, out),
        }
    }

    /// Runs until the journal reader fails or `ops` closes.
    pub async fn run(
        mut self,
        mut reader: JournalReader,
        ops: mpsc::Sender<Op>,
        events: mpsc::UnboundedSender<StitchEvent>,
    ) -> Result<(), String> {
        loop {
            let entry = reader.next().await.map_err(|e| e.to_string())?;
            let seq = entry.seq;
            let op = match entry.kind {
                EntryKind::Write { db, argv } => {
                    if argv.name().eq_ignore_ascii_case(b"SWAPDB") {
                        self.gap("SWAPDB swapped dbs under the migration", &events);
                    }
                    if self.cfg.split_shards.is_some()
                        && (argv.name().eq_ignore_ascii_case(b"FLUSHDB")
                            || argv.name().eq_ignore_ascii_case(b"FLUSHALL"))
                    {
                        // Replay processes share no barrier to order a flush of every shard.
                        self.gap("a flush under a split replay", &events);
                        continue;
                    }
                    let mut out = Vec::new();
                    self.expiring = None;
                    if let Some(argv) = self.command(db, argv, entry.ts_us) {
                        self.map(db, argv, &mut out)?;
                    }
                    let op = match out.len() {
                        0 => None,
                        1 => out.pop().map(|(db, argv)| Op::Cmd { seq, db, argv }),
                        _ => Some(Op::Atomic { seq, cmds: out }),
                    };
                    self.wrap_expiring(op)
                }
                EntryKind::Atomic(cmds) => {
                    let mut out = Vec::new();
                    self.expiring = None;
                    for (db, argv) in cmds {
                        if let Some(argv) = self.command(db, argv, entry.ts_us) {
                            self.map(db, argv, &mut out)?;
                        }
                    }
                    let op = (!out.is_empty()).then_some(Op::Atomic { seq, cmds: out });
                    self.wrap_expiring(op)
                }
                EntryKind::KeyFence {
                    db,
                    key,
                    read_id,
                    ordinal,
                } if is_check_read(&read_id) => {
                    let h = key_hash(db, &key);
                    match self.shared.checks.take(&read_id, ordinal) {
                        Some(slot) if !self.unsettled(h) => Some(Op::Check {
                            seq,
                            db: slot.db,
                            key: slot.key,
                            cmds: slot.cmds,
                            reply: slot.reply,
                        }),
                        _ => None,
                    }
                }
                EntryKind::KeyFence {
                    db,
                    key,
                    read_id,
                    ordinal,
                } => {
                    let h = key_hash(db, &key);
                    match self
                        .store
                        .take(&read_id, ordinal, self.cfg.payload_timeout)
                        .await
                    {
                        Some(p) if p.db == db && p.key == key => {
                            self.fenced.insert(h);
                            self.expiries.set(h, p.payload.as_ref().and(p.expire_at_ms));
                            if self.dirty.remove(&h).is_some() {
                                self.shared.dirty.store(self.dirty.len(), Ordering::Relaxed);
                            }
                            let mapped = match &self.cfg.mapper {
                                None => Some((db, key)),
                                Some(m) => m.map_key(db, &key),
                            };
                            mapped.map(|(db, key)| Op::Restore {
                                seq,
                                db,
                                key,
                                payload: p.payload,
                                expire_at_ms: p.expire_at_ms,
                            })
                        }
                        other => {
                            // The read's reply was lost (its connection broke) or does not match:
                            // read the key again.
                            tracing::debug!(
                                found = other.is_some(),
                                "A fence has no payload; re-reading the key."
                            );
                            self.shared.missing_payloads.fetch_add(1, Ordering::Relaxed);
                            self.dirty.remove(&h);
                            self.mark_dirty(db, &key);
                            None
                        }
                    }
                }
                EntryKind::Payload { .. } => None,
                EntryKind::Marker(Marker::Dirty { db, key }) => {
                    // A change the stream does not show (a served blocked pop, an eviction):
                    // copy the key again from this position.
                    self.mark_dirty(db, &key);
                    None
                }
                EntryKind::Marker(Marker::RecopyAll) => {
                    // A replay worker lost entries it cannot name: everything is re-copied.
                    self.gap("a replay worker lost queue entries", &events);
                    None
                }
                EntryKind::Marker(Marker::Recopy { db, key }) => {
                    // A replay worker could not tell whether it applied writes to this target
                    // key (it took over a batch in doubt): copy its source key again from here.
                    let sources = match &self.cfg.mapper {
                        Some(m) => m.unmap_candidates(db, &key),
                        None => vec![(db, key)],
                    };
                    if sources.is_empty() {
                        tracing::warn!(db, "Ignoring a re-copy request for no migrated key.");
                    }
                    for (db, key) in sources {
                        self.mark_dirty(db, &key);
                    }
                    None
                }
                EntryKind::Marker(marker) => {
                    if marker == Marker::SnapshotDone(self.epoch) {
                        // Every key that existed throughout is fenced; every other key was
                        // touched by a write and is dirty. Plain replay is exact from here.
                        self.shared.snapshot_mode.store(false, Ordering::Relaxed);
                        self.fenced = HashSet::new();
                    }
                    let id = marker.id();
                    let (done, wait) = oneshot::channel();
                    let shared = self.shared.clone();
                    tokio::spawn(async move {
                        if wait.await.is_ok() {
                            shared.reach(id, seq);
                        }
                    });
                    Some(Op::Barrier { seq, done })
                }
                EntryKind::Gap { reason } => {
                    self.gap(&reason, &events);
                    None
                }
            };
            self.shared.last_ts_us.store(entry.ts_us, Ordering::Relaxed);
            self.shared.forwarded.store(seq + 1, Ordering::Relaxed);
            if let Some(op) = op
                && ops.send(op).await.is_err()
            {
                return Ok(());
            }
        }
    }

    fn gap(&mut self, reason: &str, events: &mpsc::UnboundedSender<StitchEvent>) {
        self.epoch += 1;
        self.shared.snapshot_mode.store(true, Ordering::Relaxed);
        self.fenced.clear();
        self.dirty.clear();
        self.shared.dirty.store(0, Ordering::Relaxed);
        let _ = events.send(StitchEvent::Resync {
            epoch: self.epoch,
            reason: reason.to_string(),
        });
    }
}
