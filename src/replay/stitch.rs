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
//! - The source's function libraries (a `FUNCTION DUMP` read at the start of every snapshot or
//!   resync) are restored at their position with `FUNCTION RESTORE … REPLACE`
//!   ([`Op::Functions`]); `FUNCTION LOAD/DELETE/FLUSH/RESTORE` and `SCRIPT LOAD/FLUSH` of the
//!   stream are keyless writes, replayed in order around it.
//! - A gap (lost lines) unsettles everything and asks the coordinator for a resync.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, mpsc, oneshot};

use super::expiry::Expiries;
use super::op::Op;
use super::rewrite::{FieldTtlDrop, Lowered, drop_field_ttl, for_older_target, rewrite};
use crate::clock::now_ms;
use crate::command::{Argv, CommandTable, KeyFlags, KeyRef};
use crate::command::{Mapper, mixed_keys};
use crate::journal::{EntryKind, JournalReader, Marker, is_check_read};
use crate::net::cluster::slot_of;
use crate::snapshot::{PayloadStore, Recopier, dump_holds_libraries};

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
    /// Field-TTL commands not sent to a target without field TTLs (`drop_field_ttls`).
    pub field_ttls_dropped: AtomicU64,
    /// Toward a cluster: commands across slots not sent (no split keeps their effect), their
    /// written keys re-copied.
    pub cross_slot_recopied: AtomicU64,
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
    /// The target has no hash-field TTLs and the plan drops them: field-TTL commands are not
    /// sent ([`super::rewrite::drop_field_ttl`]), and counted.
    pub drop_field_ttls: bool,
    /// The target is a cluster: a command whose keys span slots and that replay cannot split
    /// (see [`super::cluster`]) is not sent; its written keys are re-copied.
    pub cluster_target: bool,
    /// How many streams the journal interleaves (one per shard of a cluster source). Every
    /// position marker comes once per stream; it is reached at its last copy.
    pub streams: usize,
    /// The target's Redis level (major, minor), when it lacks forms that rewrites produce
    /// (before Redis 7.0): what it lacks is lowered or re-copied
    /// ([`super::rewrite::for_older_target`]).
    pub target_level: Option<(u32, u32)>,
}

impl Default for StitchConfig {
    fn default() -> Self {
        StitchConfig {
            exact_effects: false,
            payload_timeout: DEFAULT_PAYLOAD_TIMEOUT,
            mapper: None,
            split_shards: None,
            drop_field_ttls: false,
            cluster_target: false,
            streams: 1,
            target_level: None,
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
    /// Copies seen of position markers not yet seen in every stream.
    copies: HashMap<String, usize>,
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
            copies: HashMap::new(),
        }
    }

    /// True when this copy of marker `id` is the last of its streams': only then is every
    /// stream's part before it in the journal.
    fn last_copy(&mut self, id: &str) -> bool {
        if self.cfg.streams <= 1 {
            return true;
        }
        let seen = self.copies.entry(id.to_string()).or_insert(0);
        *seen += 1;
        if *seen < self.cfg.streams {
            return false;
        }
        self.copies.remove(id);
        true
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
        let (out, dirty) = match out {
            Some(sent) if self.cfg.drop_field_ttls => match drop_field_ttl(&sent, ts_us) {
                FieldTtlDrop::Keep => (Some(sent), dirty),
                FieldTtlDrop::Drop => {
                    self.shared
                        .field_ttls_dropped
                        .fetch_add(1, Ordering::Relaxed);
                    (None, dirty)
                }
                FieldTtlDrop::Recopy => (None, true),
            },
            out => (out, dirty),
        };
        let (out, dirty) = match (out, self.cfg.target_level) {
            (Some(sent), Some(level)) => match for_older_target(sent, level) {
                Lowered::Send(sent) => (Some(sent), dirty),
                Lowered::Recopy => (None, true),
            },
            (out, _) => (out, dirty),
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
        if self.cfg.cluster_target && keys.len() > 1 && !super::cluster::splits(&argv) {
            let slot = |k: &KeyRef| {
                let key = argv.get(k.pos).unwrap_or_default();
                match &self.cfg.mapper {
                    Some(m) => m.map_key(db, key).map(|(_, t)| slot_of(&t)),
                    None => Some(slot_of(key)),
                }
            };
            let first = slot(&keys[0]);
            if keys.iter().any(|k| slot(k) != first) {
                for k in &keys {
                    if writes(k.flags) {
                        self.mark_dirty(db, argv.get(k.pos).unwrap_or_default());
                    }
                }
                self.shared
                    .cross_slot_recopied
                    .fetch_add(1, Ordering::Relaxed);
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
                    if (self.cfg.split_shards.is_some() || self.cfg.streams > 1)
                        && (argv.name().eq_ignore_ascii_case(b"FLUSHDB")
                            || argv.name().eq_ignore_ascii_case(b"FLUSHALL"))
                    {
                        // Replay processes share no barrier to order a flush of every shard,
                        // and a cluster source's flush empties one shard only, at a position
                        // in its own stream that the others' streams do not share.
                        let why = if self.cfg.streams > 1 {
                            "a flush on a shard of the cluster source"
                        } else {
                            "a flush under a split replay"
                        };
                        self.gap(why, &events);
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
                EntryKind::Marker(Marker::Functions { read_id }) => {
                    // The source's function libraries as read here: `FUNCTION` writes before
                    // this point are in the payload, later ones follow it.
                    match self
                        .store
                        .take_functions(&read_id, self.cfg.payload_timeout)
                        .await
                    {
                        Some(payload) if dump_holds_libraries(&payload) => {
                            Some(Op::Functions { seq, payload })
                        }
                        // No library on the source here: nothing to restore.
                        Some(_) => None,
                        None => {
                            // The read's reply was lost (its connection broke): only a new
                            // snapshot reads the libraries again.
                            self.shared.missing_payloads.fetch_add(1, Ordering::Relaxed);
                            self.gap("the read of the function libraries lost its reply", &events);
                            None
                        }
                    }
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
                EntryKind::Marker(marker) if !self.last_copy(&marker.id()) => None,
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

#[cfg(test)]
mod tests {
    //! The stitcher on hand-made journal entries: each test appends entries to a real journal,
    //! runs the stitcher over them to the journal's end, and compares the ops it sent and the
    //! re-copies it asked for with what the module's rules say, exactly.

    use std::time::Duration;

    use super::*;
    use crate::clock::now_ms;
    use crate::command::TableOrigin;
    use crate::journal::{FsyncPolicy, Journal, JournalConfig, JournalError};
    use crate::snapshot::Payload;

    fn argv(args: &[&str]) -> Argv {
        Argv::from_args(args)
    }

    fn write(db: u32, args: &[&str]) -> EntryKind {
        EntryKind::Write {
            db,
            argv: argv(args),
        }
    }

    fn fence(db: u32, key: &str, read_id: &str, ordinal: u64) -> EntryKind {
        EntryKind::KeyFence {
            db,
            key: key.into(),
            read_id: read_id.into(),
            ordinal,
        }
    }

    fn marker(m: Marker) -> EntryKind {
        EntryKind::Marker(m)
    }

    fn key(db: u32, k: &str) -> (u32, Vec<u8>) {
        (db, k.as_bytes().to_vec())
    }

    /// An [`Op`] in a form that compares (a barrier's or a check's channel left out).
    #[derive(Debug, PartialEq)]
    enum Got {
        Cmd {
            seq: u64,
            db: u32,
            argv: Argv,
        },
        Atomic {
            seq: u64,
            cmds: Vec<(u32, Argv)>,
        },
        Restore {
            seq: u64,
            db: u32,
            key: Vec<u8>,
            payload: Option<Vec<u8>>,
            expire_at_ms: Option<i64>,
        },
        Functions {
            seq: u64,
            payload: Vec<u8>,
        },
        Barrier {
            seq: u64,
        },
        Check {
            seq: u64,
            db: u32,
            key: Vec<u8>,
            cmds: Vec<Argv>,
        },
        Expiring {
            op: Box<Got>,
            expire_at_ms: i64,
            keys: Vec<(u32, Vec<u8>)>,
        },
    }

    fn got(op: &Op) -> Got {
        match op {
            Op::Cmd { seq, db, argv } => Got::Cmd {
                seq: *seq,
                db: *db,
                argv: argv.clone(),
            },
            Op::Atomic { seq, cmds } => Got::Atomic {
                seq: *seq,
                cmds: cmds.clone(),
            },
            Op::Restore {
                seq,
                db,
                key,
                payload,
                expire_at_ms,
            } => Got::Restore {
                seq: *seq,
                db: *db,
                key: key.clone(),
                payload: payload.clone(),
                expire_at_ms: *expire_at_ms,
            },
            Op::Functions { seq, payload } => Got::Functions {
                seq: *seq,
                payload: payload.clone(),
            },
            Op::Barrier { seq, .. } => Got::Barrier { seq: *seq },
            Op::Check {
                seq, db, key, cmds, ..
            } => Got::Check {
                seq: *seq,
                db: *db,
                key: key.clone(),
                cmds: cmds.clone(),
            },
            Op::Expiring {
                op,
                expire_at_ms,
                keys,
            } => Got::Expiring {
                op: Box::new(got(op)),
                expire_at_ms: *expire_at_ms,
                keys: keys.clone(),
            },
            Op::Fenced { .. } => unreachable!("the stitcher never fences"),
        }
    }

    fn cmd(seq: u64, db: u32, args: &[&str]) -> Got {
        Got::Cmd {
            seq,
            db,
            argv: argv(args),
        }
    }

    fn restore(seq: u64, db: u32, k: &str, payload: &[u8], expire_at_ms: Option<i64>) -> Got {
        Got::Restore {
            seq,
            db,
            key: k.into(),
            payload: Some(payload.to_vec()),
            expire_at_ms,
        }
    }

    /// Source `db 0` keys `in:*` live on the target as `db 1` keys `out:*`; every other key is
    /// left out. Commands in these tests have their one key at argument 1.
    struct InToOut;

    impl Mapper for InToOut {
        fn map_command(
            &self,
            db: u32,
            mut argv: Argv,
            out: &mut Vec<(u32, Argv)>,
        ) -> Result<(), String> {
            if let Some((db, key)) = argv.get(1).and_then(|k| self.map_key(db, k)) {
                argv.set(1, &key);
                out.push((db, argv));
            }
            Ok(())
        }

        fn map_key(&self, db: u32, key: &[u8]) -> Option<(u32, Vec<u8>)> {
            let rest = key.strip_prefix(b"in:").filter(|_| db == 0)?;
            Some((1, [b"out:", rest].concat()))
        }

        fn unmap_key(&self, db: u32, key: &[u8]) -> Option<(u32, Vec<u8>)> {
            let rest = key.strip_prefix(b"out:").filter(|_| db == 1)?;
            Some((0, [b"in:", rest].concat()))
        }
    }

    /// A journal to fill, the payload store, and the stitcher's settings.
    struct Rig {
        _dir: tempfile::TempDir,
        journal: Journal,
        store: Arc<PayloadStore>,
        shared: Arc<StitchShared>,
        cfg: StitchConfig,
        /// The source clock of the entries: wall-clock now when the rig was made.
        t0_ms: i64,
    }

    /// What a finished stitcher produced.
    struct Stitched {
        ops: Vec<Op>,
        recopies: Vec<(u32, Vec<u8>)>,
        events: Vec<StitchEvent>,
        shared: Arc<StitchShared>,
    }

    impl Stitched {
        fn got(&self) -> Vec<Got> {
            self.ops.iter().map(got).collect()
        }
    }

    /// A stitcher running in its own task.
    struct Running {
        task: tokio::task::JoinHandle<Result<(), String>>,
        ops: mpsc::Receiver<Op>,
        recopies: mpsc::UnboundedReceiver<(u32, Vec<u8>)>,
        events: mpsc::UnboundedReceiver<StitchEvent>,
        shared: Arc<StitchShared>,
    }

    impl Running {
        /// Waits for the stitcher to reach the journal's end and collects what it sent.
        async fn finish(mut self) -> Stitched {
            let end = self.task.await.expect("the stitcher panicked");
            assert_eq!(end, Err(JournalError::Closed.to_string()));
            let mut out = Stitched {
                ops: Vec::new(),
                recopies: Vec::new(),
                events: Vec::new(),
                shared: self.shared,
            };
            while let Ok(op) = self.ops.try_recv() {
                out.ops.push(op);
            }
            while let Ok(r) = self.recopies.try_recv() {
                out.recopies.push(r);
            }
            while let Ok(e) = self.events.try_recv() {
                out.events.push(e);
            }
            out
        }
    }

    impl Rig {
        fn new() -> Rig {
            let dir = tempfile::tempdir().unwrap();
            let journal = Journal::open(JournalConfig {
                fsync: FsyncPolicy::Never,
                ..JournalConfig::new(dir.path())
            })
            .unwrap();
            Rig {
                _dir: dir,
                journal,
                store: Arc::new(PayloadStore::new(1 << 20)),
                shared: Arc::new(StitchShared::default()),
                cfg: StitchConfig::default(),
                t0_ms: now_ms(),
            }
        }

        fn with_mapper(mut self) -> Rig {
            self.cfg.mapper = Some(Arc::new(InToOut));
            self
        }

        /// Appends an entry the source logged at `t0_ms`; returns its seq.
        fn append(&self, kind: EntryKind) -> u64 {
            self.append_at(0, kind)
        }

        /// Appends an entry the source logged `after_ms` after `t0_ms`.
        fn append_at(&self, after_ms: i64, kind: EntryKind) -> u64 {
            let ts_us = (self.t0_ms + after_ms) as u64 * 1000;
            self.journal.append(ts_us, kind).unwrap()
        }

        /// What the fenced read `read_id` returned for its `ordinal`-th key.
        fn payload(
            &self,
            read_id: &str,
            ordinal: u64,
            db: u32,
            key: &str,
            payload: Option<&[u8]>,
            expire_at_ms: Option<i64>,
        ) {
            self.store.insert(
                read_id,
                ordinal,
                Payload {
                    db,
                    key: key.into(),
                    payload: payload.map(<[u8]>::to_vec),
                    expire_at_ms,
                },
            );
        }

        /// Closes the journal (the stitcher ends when it has read every entry) and starts the
        /// stitcher on it from seq 0.
        fn start(self) -> Running {
            let table = Arc::new(CommandTable::from_specs(
                CommandTable::builtin().iter().cloned().collect(),
                TableOrigin::Builtin,
            ));
            let reader = self.journal.reader(0).unwrap();
            drop(self.journal);
            let (recopier, recopies) = Recopier::channel();
            let stitcher =
                Stitcher::new(table, self.store, recopier, self.cfg, self.shared.clone());
            let (ops_tx, ops) = mpsc::channel(1024);
            let (events_tx, events) = mpsc::unbounded_channel();
            Running {
                task: tokio::spawn(stitcher.run(reader, ops_tx, events_tx)),
                ops,
                recopies,
                events,
                shared: self.shared,
            }
        }

        async fn run(self) -> Stitched {
            self.start().finish().await
        }
    }

    /// Snapshot mode: the write before the key's fence is sent (the payload, read later in the
    /// source's order, already contains it and overwrites it at the fence), and since the
    /// snapshot had not read the key yet it is dirty and re-read; the fence's payload becomes
    /// a restore at exactly the fence's position and settles the key; the write after the fence
    /// is sent plainly. The payload's own journal entry sends nothing.
    #[tokio::test(start_paused = true)]
    async fn a_payload_is_restored_at_its_fence_between_the_writes_around_it() {
        let rig = Rig::new();
        rig.append(write(0, &["SET", "k", "before"]));
        rig.append(fence(0, "k", "r1", 0));
        rig.append(EntryKind::Payload {
            read_id: "r1".into(),
            ordinal: 0,
            db: 0,
            key: b"k".to_vec(),
            payload: Some(b"dump".to_vec()),
            expire_at_ms: None,
        });
        rig.append(write(0, &["SET", "k", "after"]));
        rig.append(write(0, &["SET", "k", "later"]));
        rig.payload("r1", 0, 0, "k", Some(b"dump"), None);
        let out = rig.run().await;
        assert_eq!(
            out.got(),
            vec![
                cmd(0, 0, &["SET", "k", "before"]),
                restore(1, 0, "k", b"dump", None),
                cmd(3, 0, &["SET", "k", "after"]),
                cmd(4, 0, &["SET", "k", "later"]),
            ]
        );
        // Only the write before the fence asked for a re-read; the fence settled the key.
        assert_eq!(out.recopies, vec![key(0, "k")]);
        assert_eq!(out.shared.dirty.load(Ordering::Relaxed), 0);
        assert_eq!(out.shared.missing_payloads.load(Ordering::Relaxed), 0);
        assert!(out.shared.snapshot_mode.load(Ordering::Relaxed));
        assert_eq!(out.shared.forwarded.load(Ordering::Relaxed), 5);
        assert!(out.events.is_empty());
    }

    /// The function libraries' read becomes a restore at its position, between the stream's
    /// own `FUNCTION` writes around it; a dump without a library restores nothing; one whose
    /// payload never comes asks for a resync (only a snapshot reads the libraries again).
    #[tokio::test(start_paused = true)]
    async fn the_function_libraries_are_restored_at_their_read() {
        let rig = Rig::new();
        let libs = b"\xf5\xc3libA...\x0a\x00crc-64..".to_vec();
        let empty = b"\x0a\x00crc-64..".to_vec();
        let functions = |id: &str| marker(Marker::Functions { read_id: id.into() });
        rig.append(write(0, &["FUNCTION", "LOAD", "#!lua name=libA"]));
        rig.append(functions("f1"));
        rig.append(write(3, &["FUNCTION", "DELETE", "libA"]));
        rig.append(functions("f2"));
        rig.append(write(0, &["SCRIPT", "LOAD", "return 1"]));
        rig.append(functions("f3"));
        rig.store.insert_functions("f1", libs.clone());
        rig.store.insert_functions("f2", empty);
        let out = rig.run().await;
        assert_eq!(
            out.got(),
            vec![
                cmd(0, 0, &["FUNCTION", "LOAD", "#!lua name=libA"]),
                Got::Functions {
                    seq: 1,
                    payload: libs
                },
                cmd(2, 3, &["FUNCTION", "DELETE", "libA"]),
                cmd(4, 0, &["SCRIPT", "LOAD", "return 1"]),
            ]
        );
        assert_eq!(out.shared.missing_payloads.load(Ordering::Relaxed), 1);
        assert_eq!(
            out.events,
            vec![StitchEvent::Resync {
                epoch: 1,
                reason: "the read of the function libraries lost its reply".into()
            }]
        );
        assert!(out.recopies.is_empty());
    }

    /// A fence waits (paused time) for a payload that arrives late; one whose payload never
    /// comes is given up after exactly `payload_timeout`, counted, and its key re-read.
    #[tokio::test(start_paused = true)]
    async fn a_fence_waits_for_its_payload_and_re_reads_the_key_when_none_comes() {
        let rig = Rig::new();
        rig.append(fence(0, "a", "r1", 0));
        rig.append(fence(0, "b", "r1", 1));
        rig.append(write(0, &["SET", "a", "2"]));
        rig.append(write(0, &["SET", "b", "2"]));
        let store = rig.store.clone();
        let started = tokio::time::Instant::now();
        let mut running = rig.start();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(
            running.ops.try_recv().is_err(),
            "nothing may pass a fence whose payload has not arrived"
        );
        store.insert(
            "r1",
            0,
            Payload {
                db: 0,
                key: b"a".to_vec(),
                payload: Some(b"pa".to_vec()),
                expire_at_ms: None,
            },
        );
        let out = running.finish().await;
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(1) + DEFAULT_PAYLOAD_TIMEOUT
        );
        assert_eq!(
            out.got(),
            vec![
                restore(0, 0, "a", b"pa", None),
                cmd(2, 0, &["SET", "a", "2"]),
                cmd(3, 0, &["SET", "b", "2"]),
            ]
        );
        assert_eq!(out.recopies, vec![key(0, "b")]);
        assert_eq!(out.shared.missing_payloads.load(Ordering::Relaxed), 1);
        assert_eq!(out.shared.dirty.load(Ordering::Relaxed), 1);
    }

    /// A write that reads a key the snapshot has not read yet makes the keys it writes dirty
    /// (never the ones it only reads), asks for each re-read once, and the re-read's fence
    /// settles the key again.
    #[tokio::test(start_paused = true)]
    async fn a_write_reading_an_unsettled_key_makes_its_written_keys_dirty() {
        let rig = Rig::new();
        rig.append(fence(0, "dst", "r1", 0));
        // `src` was never fenced: unsettled while the snapshot runs.
        rig.append(write(0, &["SUNIONSTORE", "dst", "src"]));
        rig.append(write(0, &["SADD", "dst", "x"]));
        rig.append(fence(0, "dst", "r2", 0));
        rig.append(write(0, &["SADD", "dst", "y"]));
        rig.append(write(0, &["SUNIONSTORE", "dst", "src"]));
        rig.payload("r1", 0, 0, "dst", Some(b"p1"), None);
        rig.payload("r2", 0, 0, "dst", Some(b"p2"), None);
        let out = rig.run().await;
        assert_eq!(
            out.got(),
            vec![
                restore(0, 0, "dst", b"p1", None),
                cmd(1, 0, &["SUNIONSTORE", "dst", "src"]),
                cmd(2, 0, &["SADD", "dst", "x"]),
                restore(3, 0, "dst", b"p2", None),
                cmd(4, 0, &["SADD", "dst", "y"]),
                cmd(5, 0, &["SUNIONSTORE", "dst", "src"]),
            ]
        );
        // Once for the first SUNIONSTORE (the SADD finds it already dirty), once more for the
        // second, which comes after the re-read settled `dst`.
        assert_eq!(out.recopies, vec![key(0, "dst"), key(0, "dst")]);
        assert_eq!(out.shared.dirty.load(Ordering::Relaxed), 1);
    }

    /// `Marker::Dirty` makes its key dirty at its position (in its own db): writes before it ask
    /// for nothing, a write reading it afterwards dirties what it writes. The marker itself
    /// sends nothing.
    #[tokio::test(start_paused = true)]
    async fn a_dirty_marker_makes_its_key_dirty_at_that_position() {
        let rig = Rig::new();
        rig.append(marker(Marker::SnapshotDone(0)));
        rig.append(write(0, &["SET", "a", "1"]));
        rig.append(write(0, &["COPY", "a", "b"]));
        rig.append(marker(Marker::Dirty {
            db: 0,
            key: b"a".to_vec(),
        }));
        rig.append(write(0, &["SET", "a", "2"]));
        rig.append(write(0, &["COPY", "a", "c"]));
        rig.append(write(0, &["SET", "d", "1"]));
        rig.append(marker(Marker::Dirty {
            db: 3,
            key: b"a".to_vec(),
        }));
        let out = rig.run().await;
        assert_eq!(
            out.got(),
            vec![
                Got::Barrier { seq: 0 },
                cmd(1, 0, &["SET", "a", "1"]),
                cmd(2, 0, &["COPY", "a", "b"]),
                cmd(4, 0, &["SET", "a", "2"]),
                cmd(5, 0, &["COPY", "a", "c"]),
                cmd(6, 0, &["SET", "d", "1"]),
            ]
        );
        assert_eq!(out.recopies, vec![key(0, "a"), key(0, "c"), key(3, "a")]);
        assert_eq!(out.shared.dirty.load(Ordering::Relaxed), 3);
    }

    /// `Marker::Recopy` names a target key; without a plan it is the source key.
    #[tokio::test(start_paused = true)]
    async fn a_recopy_marker_without_a_mapper_re_reads_that_key() {
        let rig = Rig::new();
        rig.append(marker(Marker::SnapshotDone(0)));
        rig.append(marker(Marker::Recopy {
            db: 2,
            key: b"t".to_vec(),
        }));
        // Already dirty: not asked for twice.
        rig.append(marker(Marker::Recopy {
            db: 2,
            key: b"t".to_vec(),
        }));
        rig.append(write(2, &["INCR", "t"]));
        let out = rig.run().await;
        assert_eq!(
            out.got(),
            vec![Got::Barrier { seq: 0 }, cmd(3, 2, &["INCR", "t"])]
        );
        assert_eq!(out.recopies, vec![key(2, "t")]);
        assert_eq!(out.shared.dirty.load(Ordering::Relaxed), 1);
    }

    /// With a plan, `Marker::Recopy`'s target key is traced back to the source key(s) that map
    /// to it; one no source key maps to asks for nothing. Commands and restores go out in
    /// target names, and left-out keys send nothing.
    #[tokio::test(start_paused = true)]
    async fn a_recopy_marker_with_a_mapper_re_reads_the_source_key() {
        let rig = Rig::new().with_mapper();
        rig.append(fence(0, "in:k", "r1", 0));
        rig.append(fence(0, "other:k", "r1", 1));
        rig.append(marker(Marker::SnapshotDone(0)));
        rig.append(marker(Marker::Recopy {
            db: 1,
            key: b"out:x".to_vec(),
        }));
        rig.append(marker(Marker::Recopy {
            db: 1,
            key: b"elsewhere".to_vec(),
        }));
        rig.append(write(0, &["SET", "in:x", "1"]));
        rig.append(write(0, &["SET", "other:x", "1"]));
        rig.payload("r1", 0, 0, "in:k", Some(b"pk"), None);
        rig.payload("r1", 1, 0, "other:k", Some(b"po"), None);
        let out = rig.run().await;
        assert_eq!(
            out.got(),
            vec![
                restore(0, 1, "out:k", b"pk", None),
                Got::Barrier { seq: 2 },
                cmd(5, 1, &["SET", "out:x", "1"]),
            ]
        );
        assert_eq!(out.recopies, vec![key(0, "in:x")]);
    }

    /// Until `SnapshotDone` of the current epoch, a write to a key the snapshot never fenced is
    /// dirty; a done-marker of another epoch changes nothing; after the right one, such writes
    /// are plain. Keys already dirty stay dirty.
    #[tokio::test(start_paused = true)]
    async fn snapshot_done_of_the_current_epoch_ends_snapshot_mode() {
        let rig = Rig::new();
        rig.append(write(0, &["SET", "n1", "a"]));
        rig.append(marker(Marker::SnapshotDone(1)));
        rig.append(write(0, &["SET", "n2", "a"]));
        rig.append(marker(Marker::SnapshotDone(0)));
        rig.append(write(0, &["SET", "n3", "a"]));
        rig.append(write(0, &["SUNIONSTORE", "n4", "n5"]));
        rig.append(write(0, &["SET", "n1", "b"]));
        rig.append(write(0, &["COPY", "n1", "n6"]));
        let out = rig.run().await;
        assert_eq!(
            out.got(),
            vec![
                cmd(0, 0, &["SET", "n1", "a"]),
                Got::Barrier { seq: 1 },
                cmd(2, 0, &["SET", "n2", "a"]),
                Got::Barrier { seq: 3 },
                cmd(4, 0, &["SET", "n3", "a"]),
                cmd(5, 0, &["SUNIONSTORE", "n4", "n5"]),
                cmd(6, 0, &["SET", "n1", "b"]),
                cmd(7, 0, &["COPY", "n1", "n6"]),
            ]
        );
        assert_eq!(out.recopies, vec![key(0, "n1"), key(0, "n2"), key(0, "n6")]);
        assert!(!out.shared.snapshot_mode.load(Ordering::Relaxed));
        assert_eq!(out.shared.dirty.load(Ordering::Relaxed), 3);
    }

    /// A gap asks for a resync of a new epoch, forgets what was dirty (the resync reads
    /// everything) and puts the stitcher back in snapshot mode, which only the new epoch's
    /// done-marker ends.
    #[tokio::test(start_paused = true)]
    async fn a_gap_asks_for_a_resync_and_only_its_epoch_ends_it() {
        let rig = Rig::new();
        rig.append(marker(Marker::SnapshotDone(0)));
        rig.append(marker(Marker::Dirty {
            db: 0,
            key: b"a".to_vec(),
        }));
        rig.append(EntryKind::Gap {
            reason: "lost lines".into(),
        });
        rig.append(write(0, &["SET", "b", "1"]));
        rig.append(marker(Marker::SnapshotDone(0)));
        rig.append(write(0, &["SET", "c", "1"]));
        rig.append(marker(Marker::SnapshotDone(1)));
        rig.append(write(0, &["SET", "d", "1"]));
        let out = rig.run().await;
        assert_eq!(
            out.events,
            vec![StitchEvent::Resync {
                epoch: 1,
                reason: "lost lines".into()
            }]
        );
        assert_eq!(
            out.got(),
            vec![
                Got::Barrier { seq: 0 },
                cmd(3, 0, &["SET", "b", "1"]),
                Got::Barrier { seq: 4 },
                cmd(5, 0, &["SET", "c", "1"]),
                Got::Barrier { seq: 6 },
                cmd(7, 0, &["SET", "d", "1"]),
            ]
        );
        assert_eq!(out.recopies, vec![key(0, "a"), key(0, "b"), key(0, "c")]);
        assert!(!out.shared.snapshot_mode.load(Ordering::Relaxed));
        assert_eq!(out.shared.dirty.load(Ordering::Relaxed), 2);
    }

    /// A write that reaches a key alive on the source but close to its expiry goes out as
    /// `Op::Expiring` with the earliest such expiry and the target keys it writes; a key far
    /// from its expiry, or already expired at the write's source time, gives a plain command.
    ///
    /// The stitcher measures its own lag against the wall clock (`clock::now_ms`), which paused
    /// tokio time does not control: entries are stamped relative to the real now, and the
    /// margins (60 s and 30 s "close", 1 h "far", against a 10-minute horizon) are wide enough
    /// for any test run.
    #[tokio::test(start_paused = true)]
    async fn a_write_close_to_a_known_expiry_is_sent_as_expiring() {
        let rig = Rig::new();
        let t0 = rig.t0_ms;
        rig.append(fence(0, "soon", "r1", 0));
        rig.append(fence(0, "late", "r1", 1));
        // Snapshot over: `fresh` and `dst` below are settled, so nothing is re-read.
        rig.append(marker(Marker::SnapshotDone(0)));
        rig.append_at(1000, write(0, &["INCR", "soon"]));
        rig.append_at(1000, write(0, &["INCR", "late"]));
        rig.append_at(1000, write(0, &["SET", "fresh", "v", "PX", "30000"]));
        rig.append_at(2000, write(0, &["APPEND", "fresh", "x"]));
        rig.append_at(3000, write(0, &["COPY", "soon", "dst"]));
        // After `soon` expired on the source: the write found it gone there too.
        rig.append_at(61_000, write(0, &["INCR", "soon"]));
        rig.payload("r1", 0, 0, "soon", Some(b"ps"), Some(t0 + 60_000));
        rig.payload("r1", 1, 0, "late", Some(b"pl"), Some(t0 + 3_600_000));
        let out = rig.run().await;
        let fresh_at = t0 + 1000 + 30_000;
        let pxat = fresh_at.to_string();
        assert_eq!(
            out.got(),
            vec![
                restore(0, 0, "soon", b"ps", Some(t0 + 60_000)),
                restore(1, 0, "late", b"pl", Some(t0 + 3_600_000)),
                Got::Barrier { seq: 2 },
                Got::Expiring {
                    op: Box::new(cmd(3, 0, &["INCR", "soon"])),
                    expire_at_ms: t0 + 60_000,
                    keys: vec![key(0, "soon")],
                },
                cmd(4, 0, &["INCR", "late"]),
                cmd(5, 0, &["SET", "fresh", "v", "PXAT", &pxat]),
                Got::Expiring {
                    op: Box::new(cmd(6, 0, &["APPEND", "fresh", "x"])),
                    expire_at_ms: fresh_at,
                    keys: vec![key(0, "fresh")],
                },
                // Only the key it writes is re-copied, not the one it reads.
                Got::Expiring {
                    op: Box::new(cmd(7, 0, &["COPY", "soon", "dst"])),
                    expire_at_ms: t0 + 60_000,
                    keys: vec![key(0, "dst")],
                },
                cmd(8, 0, &["INCR", "soon"]),
            ]
        );
        assert!(out.recopies.is_empty());
    }

    /// With a plan, an expiring write names its target keys.
    #[tokio::test(start_paused = true)]
    async fn an_expiring_write_names_target_keys_under_a_mapper() {
        let rig = Rig::new().with_mapper();
        let t0 = rig.t0_ms;
        rig.append(marker(Marker::SnapshotDone(0)));
        rig.append(write(0, &["SET", "in:x", "1", "PX", "20000"]));
        rig.append_at(500, write(0, &["INCR", "in:x"]));
        let out = rig.run().await;
        let at = (t0 + 20_000).to_string();
        assert_eq!(
            out.got(),
            vec![
                Got::Barrier { seq: 0 },
                cmd(1, 1, &["SET", "out:x", "1", "PXAT", &at]),
                Got::Expiring {
                    op: Box::new(cmd(2, 1, &["INCR", "out:x"])),
                    expire_at_ms: t0 + 20_000,
                    keys: vec![key(1, "out:x")],
                },
            ]
        );
    }

    /// A position marker becomes a barrier; waiting for the marker ends when replay answers
    /// the barrier, and times out (paused time, exactly at the deadline) while it does not.
    #[tokio::test(start_paused = true)]
    async fn a_position_marker_is_reached_when_its_barrier_is_answered() {
        let rig = Rig::new();
        rig.append(write(0, &["SET", "a", "1"]));
        rig.append(marker(Marker::Position("tick-1".into())));
        rig.append(marker(Marker::Position("tick-2".into())));
        let out = rig.run().await;
        assert_eq!(
            out.got(),
            vec![
                cmd(0, 0, &["SET", "a", "1"]),
                Got::Barrier { seq: 1 },
                Got::Barrier { seq: 2 },
            ]
        );
        let mut dones = out.ops.into_iter().filter_map(|op| match op {
            Op::Barrier { done, .. } => Some(done),
            _ => None,
        });
        let (done1, done2) = (dones.next().unwrap(), dones.next().unwrap());
        let shared = out.shared;

        let start = tokio::time::Instant::now();
        let waiter = tokio::spawn({
            let shared = shared.clone();
            async move { shared.wait_marker("tick-1", Duration::from_secs(10)).await }
        });
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(
            !waiter.is_finished(),
            "reached before its barrier was answered"
        );
        assert_eq!(shared.applied_through.load(Ordering::Relaxed), 0);
        done1.send(()).unwrap();
        assert!(waiter.await.unwrap());
        assert_eq!(start.elapsed(), Duration::from_secs(3));
        assert_eq!(shared.applied_through.load(Ordering::Relaxed), 1);
        // Already reached: no wait at all.
        assert!(shared.wait_marker("tick-1", Duration::ZERO).await);

        // Never answered (the sender is alive, replay just has not got there).
        let start = tokio::time::Instant::now();
        assert!(!shared.wait_marker("tick-2", Duration::from_secs(30)).await);
        assert_eq!(start.elapsed(), Duration::from_secs(30));
        // A barrier dropped unanswered (replay broke) never reaches its marker either.
        drop(done2);
        assert!(!shared.wait_marker("tick-2", Duration::from_secs(1)).await);
        assert_eq!(shared.applied_through.load(Ordering::Relaxed), 1);
    }

    /// A verification fence becomes `Op::Check` (in the probe's target names) only for a
    /// settled key; for an unsettled one the probe's slot is dropped unanswered.
    #[tokio::test(start_paused = true)]
    async fn a_check_fence_probes_only_settled_keys() {
        let rig = Rig::new();
        let slot = |k: &str| {
            let (reply, rx) = oneshot::channel();
            let slot = CheckSlot {
                db: 5,
                key: format!("t:{k}").into_bytes(),
                cmds: vec![argv(&["GET", &format!("t:{k}")])],
                reply,
            };
            (slot, rx)
        };
        let (settled, _settled_rx) = slot("s");
        let (unsettled, mut unsettled_rx) = slot("u");
        rig.shared
            .checks
            .register("vc1".into(), vec![Some(settled), Some(unsettled)]);
        rig.append(fence(0, "s", "r1", 0));
        rig.append(fence(0, "s", "vc1", 0));
        rig.append(fence(0, "u", "vc1", 1));
        rig.payload("r1", 0, 0, "s", Some(b"p"), None);
        let out = rig.run().await;
        assert_eq!(
            out.got(),
            vec![
                restore(0, 0, "s", b"p", None),
                Got::Check {
                    seq: 1,
                    db: 5,
                    key: b"t:s".to_vec(),
                    cmds: vec![argv(&["GET", "t:s"])],
                },
            ]
        );
        assert!(matches!(
            unsettled_rx.try_recv(),
            Err(oneshot::error::TryRecvError::Closed)
        ));
        assert!(out.recopies.is_empty());
    }
}
