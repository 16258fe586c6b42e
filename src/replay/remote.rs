//! Replay across processes over SQS: [`Publisher`] sends the stitcher's operations to the queue,
//! one group per shard (`ferry capture`); [`Worker`] applies them to the target (`ferry replay`).
//!
//! ## Behavior
//! - The stitcher runs in the capture process with split shards: a command whose keys span
//!   shards is never sent; its written keys are re-copied through fences, and the `RESTORE`s land
//!   in each key's own group. So every operation belongs to one shard, and each group is an
//!   ordered stream that one worker at a time applies.
//! - Groups are numbered `run << 8 | shard`. Each capture start is a new run (its journal starts
//!   over with a full fenced resync), so gseqs never restart inside a group, and a worker drops
//!   the messages of a run older than the newest it has seen: the new run's resync supersedes
//!   them.
//! - Payloads too big for a message travel as consecutive parts in their group. Workers
//!   assemble them on the target (`SET`/`SETRANGE` of a scratch key at fixed offsets, then a
//!   script that restores from it and deletes it), since the parts may span messages that
//!   different processes apply, and a part applied twice must change nothing.
//! - A worker applies a shard only while it holds the shard's lease in the target
//!   ([`super::lease`], `docs/leases.md`). Each batch (one message) is one transaction, fenced
//!   by the lease's token and recording the group's applied position: a process that lost the
//!   lease (stalled, partitioned, replaced) has its batches refused, and a batch is applied
//!   wholly or not at all. So a batch received again (a worker crashed or stalled with it in
//!   flight) is not in doubt: the holder skips it when the recorded position is past it and
//!   applies it otherwise, in gseq order; a message ahead of that position, or of a shard
//!   another process holds, goes back to the queue.
//! - A gap (a standard queue lost messages past the reorder wait) asks for a full resync.
//! - Queue URLs may contain `{shard}`: one queue per shard, so worker processes can own shards
//!   (`--worker K/N`) on standard queues, where SQS keeps no order a shared queue could use.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::exec::{ReplayStats, Replayer, request_recopies};
use super::lease::{LeaseError, Leases};
use super::op::Op;
use super::shard::shard_of;
use crate::command::{Argv, CommandTable, KeyRef};
use crate::journal::sqs::{
    SqsBatch, SqsConfig, SqsError, SqsEvent, SqsQueue, SqsReader, SqsWriter,
};
use crate::journal::{Entry, EntryKind, Marker};
use crate::net::Endpoint;

/// Bits of a group id that hold the shard.
const SHARD_BITS: u32 = 8;
/// Most shards a split replay supports.
pub const MAX_SHARDS: usize = 1 << SHARD_BITS;
/// Payload bytes per part of a split `RESTORE`.
const PART_BYTES: usize = 192 * 1024;
/// Where the parts of a big payload are assembled on the target, before the key's name.
const PART_SCRATCH: &[u8] = b"ferry:parts:";
/// Restores `KEYS[1]` from the payload assembled in `KEYS[2]` (then deleted); a second run finds
/// no scratch key and does nothing, so a batch applied twice stays exact.
const RESTORE_PARTS_SCRIPT: &str = "local p = redis.call('GET', KEYS[2]) \
if not p then return 0 end \
redis.call('DEL', KEYS[2]) \
if ARGV[2] == '1' then redis.call('RESTORE', KEYS[1], ARGV[1], p, 'REPLACE', 'ABSTTL') \
else redis.call('RESTORE', KEYS[1], ARGV[1], p, 'REPLACE') end \
return 1";
/// Entries buffered per flush to the writer.
const PUBLISH_BATCH: usize = 20_000;

/// Where the operations go: one queue, or one per shard.
#[derive(Debug, Clone)]
pub struct QueueSpec {
    /// The queue URL; `{shard}` in it makes one queue per shard.
    pub url: String,
    /// Settings for every queue (its `queue_url` is replaced).
    pub base: SqsConfig,
    /// Shards (groups per run).
    pub shards: usize,
}

impl QueueSpec {
    fn per_shard(&self) -> bool {
        self.url.contains("{shard}")
    }

    fn url_of(&self, shard: usize) -> String {
        self.url.replace("{shard}", &shard.to_string())
    }

    /// The queues, by the shards they carry.
    fn queues(&self) -> Vec<(Vec<usize>, String)> {
        if self.per_shard() {
            (0..self.shards)
                .map(|s| (vec![s], self.url_of(s)))
                .collect()
        } else {
            vec![((0..self.shards).collect(), self.url.clone())]
        }
    }

    fn config(&self, url: String) -> SqsConfig {
        let mut c = self.base.clone();
        c.queue_url = url;
        c
    }

    fn check(&self) -> Result<(), RemoteError> {
        if self.shards == 0 || self.shards > MAX_SHARDS {
            return Err(RemoteError::Config(format!(
                "shards must be 1..={MAX_SHARDS}, got {}",
                self.shards
            )));
        }
        Ok(())
    }
}

/// Why a split replay stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RemoteError {
    #[error("invalid split replay setting: {0}")]
    Config(String),
    #[error(transparent)]
    Sqs(#[from] SqsError),
    #[error(transparent)]
    Net(#[from] crate::net::NetError),
    #[error("{0}")]
    Replay(String),
    #[error(transparent)]
    Lease(#[from] LeaseError),
    #[error("state file {path}: {message}")]
    State { path: PathBuf, message: String },
}

fn group_id(run: u32, shard: usize) -> u32 {
    (run << SHARD_BITS) | shard as u32
}

fn shard_of_group(group: u32) -> usize {
    (group & ((1 << SHARD_BITS) - 1)) as usize
}

fn run_of_group(group: u32) -> u32 {
    group >> SHARD_BITS
}

/// Sends operations to the queue(s); the capture side of a split replay.
pub struct Publisher {
    spec: QueueSpec,
    run: u32,
    queues: Vec<SqsQueue>,
    writers: Vec<SqsWriter>,
    /// Writer index by shard.
    writer_of: Vec<usize>,
    table: Arc<CommandTable>,
}

impl Publisher {
    /// Connects to the queues (creating them when `create`), empties them (a new run's resync
    /// supersedes whatever an earlier run left) and takes the next run number from `state_dir`.
    pub async fn connect(
        spec: QueueSpec,
        table: Arc<CommandTable>,
        state_dir: &std::path::Path,
        create: bool,
    ) -> Result<Publisher, RemoteError> {
        spec.check()?;
        let run = next_run(state_dir)?;
        let mut writers = Vec::new();
        let mut queues = Vec::new();
        let mut writer_of = vec![0; spec.shards];
        for (shards, url) in spec.queues() {
            let cfg = spec.config(url.clone());
            let queue = if create {
                let name = url.rsplit('/').next().unwrap_or_default().to_string();
                SqsQueue::create(cfg, &name).await?
            } else {
                SqsQueue::connect(cfg).await?
            };
            purge(&queue).await;
            for s in shards {
                writer_of[s] = writers.len();
            }
            writers.push(queue.writer());
            queues.push(queue);
        }
        tracing::info!(
            run,
            shards = spec.shards,
            queues = writers.len(),
            "Publishing replay operations to SQS."
        );
        Ok(Publisher {
            spec,
            run,
            queues,
            writers,
            writer_of,
            table,
        })
    }

    /// Publishes operations until `ops` closes. A marker's barrier is answered once SQS has
    /// acknowledged everything before it: "reached" means durable in the queue.
    pub async fn run(
        mut self,
        mut ops: mpsc::Receiver<Op>,
        stats: Arc<ReplayStats>,
        broken: mpsc::UnboundedSender<String>,
    ) {
        let mut pending: BTreeMap<usize, Vec<Entry>> = BTreeMap::new();
        let mut count = 0usize;
        let mut keys = Vec::new();
        while let Some(first) = ops.recv().await {
            let mut next = Some(first);
            while let Some(op) = next {
                match op {
                    Op::Barrier { seq, done } => {
                        if let Err(e) = self.flush(&mut pending, true).await {
                            let _ = broken.send(format!("SQS: {e}"));
                            return;
                        }
                        count = 0;
                        stats.applied.fetch_max(seq + 1, Ordering::Release);
                        let _ = done.send(());
                    }
                    Op::Check { .. } => {
                        // Fenced verification needs the target in this process; dropping the
                        // reply makes the verifier report the key unsettled.
                    }
                    op => {
                        count += self.route(op, &mut pending, &mut keys);
                        stats.commands.fetch_add(1, Ordering::Relaxed);
                    }
                }
                next = if count < PUBLISH_BATCH {
                    ops.try_recv().ok()
                } else {
                    None
                };
            }
            if let Err(e) = self.flush(&mut pending, false).await {
                let _ = broken.send(format!("SQS: {e}"));
                return;
            }
            count = 0;
        }
        let _ = self.flush(&mut pending, true).await;
    }

    /// Splits one operation into its shard's entries; returns how many.
    fn route(
        &self,
        op: Op,
        pending: &mut BTreeMap<usize, Vec<Entry>>,
        keys: &mut Vec<KeyRef>,
    ) -> usize {
        let shards = self.spec.shards;
        // The stitcher sends no command whose keys span shards, so a command's first key names
        // its shard; keyless ones (SCRIPT LOAD) may go anywhere.
        let mut shard_of_cmd = |argv: &Argv| {
            keys.clear();
            self.table.keys_into(argv, keys);
            keys.first()
                .map_or(0, |k| shard_of(argv.get(k.pos).unwrap_or_default(), shards))
        };
        match op {
            // A replay process applies it later, without the expiry check (not carried yet).
            Op::Expiring { op, .. } => self.route(*op, pending, keys),
            Op::Cmd { seq, db, argv } => {
                let s = shard_of_cmd(&argv);
                push(pending, s, seq, EntryKind::Write { db, argv });
                1
            }
            Op::Atomic { seq, cmds } => {
                // One group per shard: each shard applies its part atomically, in order.
                let mut by_shard: BTreeMap<usize, Vec<(u32, Argv)>> = BTreeMap::new();
                for (db, argv) in cmds {
                    by_shard
                        .entry(shard_of_cmd(&argv))
                        .or_default()
                        .push((db, argv));
                }
                let n = by_shard.len();
                for (s, mut part) in by_shard {
                    let kind = if part.len() == 1 {
                        let (db, argv) = part.pop().unwrap_or_default();
                        EntryKind::Write { db, argv }
                    } else {
                        EntryKind::Atomic(part)
                    };
                    push(pending, s, seq, kind);
                }
                n
            }
            Op::Restore {
                seq,
                db,
                key,
                payload,
                expire_at_ms,
            } => {
                let s = shard_of(&key, shards);
                let parts = payload
                    .as_ref()
                    .map_or(1, |p| p.len().div_ceil(PART_BYTES).max(1));
                if parts == 1 {
                    push(
                        pending,
                        s,
                        seq,
                        EntryKind::Payload {
                            read_id: String::new(),
                            ordinal: 0,
                            db,
                            key,
                            payload,
                            expire_at_ms,
                        },
                    );
                    return 1;
                }
                let payload = payload.unwrap_or_default();
                for (i, chunk) in payload.chunks(PART_BYTES).enumerate() {
                    push(
                        pending,
                        s,
                        seq,
                        EntryKind::Payload {
                            read_id: format!("part:{i}:{parts}"),
                            ordinal: i as u64,
                            db,
                            key: key.clone(),
                            payload: Some(chunk.to_vec()),
                            expire_at_ms,
                        },
                    );
                }
                parts
            }
            // Keyless, like the FUNCTION commands of the stream: shard 0 keeps them in order.
            Op::Functions { seq, payload } => {
                let argv = Argv::from_args([&b"FUNCTION"[..], b"RESTORE", &payload, b"REPLACE"]);
                push(pending, 0, seq, EntryKind::Write { db: 0, argv });
                1
            }
            Op::Barrier { .. } | Op::Check { .. } | Op::Fenced { .. } => 0,
        }
    }

    /// Hands buffered entries to the writers; with `wait`, also waits for SQS's acknowledgement.
    async fn flush(
        &mut self,
        pending: &mut BTreeMap<usize, Vec<Entry>>,
        wait: bool,
    ) -> Result<(), SqsError> {
        for (s, entries) in std::mem::take(pending) {
            let w = self.writer_of[s];
            self.writers[w]
                .send(group_id(self.run, s), &entries)
                .await?;
        }
        if wait {
            for w in &mut self.writers {
                w.flush().await?;
            }
        }
        Ok(())
    }

    /// The queues published to: empty means applied.
    pub fn queues(&self) -> Vec<SqsQueue> {
        self.queues.clone()
    }
}

fn push(pending: &mut BTreeMap<usize, Vec<Entry>>, shard: usize, seq: u64, kind: EntryKind) {
    pending.entry(shard).or_default().push(Entry {
        seq,
        ts_us: 0,
        kind,
    });
}

async fn purge(queue: &SqsQueue) {
    let url = queue.config().queue_url.clone();
    match queue.client().purge_queue().queue_url(&url).send().await {
        Ok(_) => tracing::info!(queue = %url, "Emptied the queue for this run."),
        // A purge within 60 s of another is refused; the run number keeps old groups apart.
        Err(e) => {
            tracing::debug!(queue = %url, error = %aws_sdk_sqs::error::DisplayErrorContext(&e), "Queue not purged.")
        }
    }
}

/// The next run number, persisted in `state_dir/sqs-run`.
fn next_run(state_dir: &std::path::Path) -> Result<u32, RemoteError> {
    let path = state_dir.join("sqs-run");
    let err = |e: std::io::Error| RemoteError::State {
        path: path.clone(),
        message: e.to_string(),
    };
    std::fs::create_dir_all(state_dir).map_err(err)?;
    let last: u32 = std::fs::read_to_string(&path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let run = (last + 1) & ((1 << (32 - SHARD_BITS)) - 1);
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, run.to_string()).map_err(err)?;
    std::fs::rename(&tmp, &path).map_err(err)?;
    Ok(run)
}

/// A replay process's settings.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub queue: QueueSpec,
    /// This process is worker `index` of `count`: with one queue per shard it reads the shards
    /// `s` with `s % count == index`; on one shared FIFO queue SQS spreads the groups.
    pub index: usize,
    pub count: usize,
    /// Replay connections to the target.
    pub connections: usize,
    /// Where a standard queue's checkpoint is kept.
    pub state_dir: PathBuf,
}

/// What a replay process did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct WorkerReport {
    pub entries: u64,
    pub batches: u64,
    /// Batches received again (their first receiver crashed, stalled or handed them back).
    pub redelivered_batches: u64,
    /// Batches skipped because the shard's recorded position showed them applied already.
    pub applied_before: u64,
    /// Messages handed back to the queue: their shard's lease is another process's, or they
    /// came ahead of the shard's position.
    pub handed_back: u64,
    /// Leases this process took.
    pub leases_taken: u64,
    /// Leases this process found taken by another one.
    pub leases_lost: u64,
    /// Batches the target refused because this process no longer held their shard's lease.
    pub fenced_batches: u64,
    pub stale_batches: u64,
    pub gaps: u64,
    pub commands: u64,
    pub restores: u64,
    pub errors: BTreeMap<String, u64>,
    /// Error replies the source gave too (expected).
    pub source_errors: u64,
    /// Error replies only the target gave, by code.
    pub target_errors: BTreeMap<String, u64>,
    /// Keys this process saw fail only on the target and not restored since (their re-copies
    /// were asked for; another process may have applied them).
    pub diverged_keys: u64,
}

/// `ferry replay`: applies a split replay's operations to the target.
pub struct Worker {
    cfg: WorkerConfig,
    source: Endpoint,
    target: Endpoint,
    table: Arc<CommandTable>,
}

/// Counters the reader tasks share.
#[derive(Default)]
struct Counters {
    entries: AtomicU64,
    batches: AtomicU64,
    redelivered: AtomicU64,
    applied_before: AtomicU64,
    handed_back: AtomicU64,
    leases_taken: AtomicU64,
    leases_lost: AtomicU64,
    stale: AtomicU64,
    gaps: AtomicU64,
}

impl Worker {
    pub fn new(cfg: WorkerConfig, source: Endpoint, target: Endpoint) -> Worker {
        Worker {
            cfg,
            source,
            target,
            table: Arc::new(CommandTable::from_specs(
                CommandTable::builtin().iter().cloned().collect(),
                crate::command::TableOrigin::Builtin,
            )),
        }
    }

    /// Applies until `stop` resolves, then finishes what it received and exits.
    pub async fn run(
        self,
        stop: impl std::future::Future<Output = ()>,
    ) -> Result<WorkerReport, RemoteError> {
        let spec = &self.cfg.queue;
        spec.check()?;
        if self.cfg.count == 0 || self.cfg.index >= self.cfg.count {
            return Err(RemoteError::Config(format!(
                "worker {}/{} does not exist",
                self.cfg.index, self.cfg.count
            )));
        }
        // Fail early, with the URL named, when a server is unreachable.
        self.source.control().await?;
        self.target.control().await?;
        let stats = Arc::new(ReplayStats::default());
        let (broken_tx, mut broken) = mpsc::unbounded_channel::<String>();
        let mut conns = Vec::new();
        let mut replayers = Vec::new();
        // Keys that fail only on the target are re-copied through the capture process, like the
        // keys of a batch in doubt.
        let (recopy_tx, recopy_rx) = mpsc::unbounded_channel();
        let recopies = tokio::spawn(request_recopies(
            crate::net::NodesCell::new(crate::net::SourceNodes::single(self.source.clone())),
            recopy_rx,
            stats.clone(),
        ));
        for _ in 0..self.cfg.connections.max(1) {
            let (tx, mut rx) = mpsc::channel::<Op>(4096);
            conns.push(tx);
            let replayer = Replayer::new(self.target.clone())
                .with_recopy(self.table.clone(), recopy_tx.clone());
            let stats = stats.clone();
            let broken = broken_tx.clone();
            replayers.push(tokio::spawn(async move {
                if let Err(e) = replayer.run(&mut rx, stats).await {
                    let _ = broken.send(e.to_string());
                }
            }));
        }
        let counters = Arc::new(Counters::default());
        let publish = {
            let (stats, counters) = (stats.clone(), counters.clone());
            move || publish_metrics(&stats, &counters)
        };
        let publisher = {
            let publish = publish.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tick.tick().await;
                    publish();
                }
            })
        };
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut readers = tokio::task::JoinSet::new();
        for (shards, url) in spec.queues() {
            if spec.per_shard() && shards[0] % self.cfg.count != self.cfg.index {
                continue;
            }
            let mut qcfg = spec.config(url.clone());
            qcfg.wait = qcfg.wait.min(Duration::from_secs(1));
            let queue = SqsQueue::connect(qcfg).await?;
            let state = self
                .cfg
                .state_dir
                .join(format!("checkpoint-{}.json", sanitize(&url)));
            let task = ReaderTask {
                fifo: queue.config().is_fifo(),
                queue,
                state,
                conns: conns.clone(),
                source: self.source.control().await?,
                counters: counters.clone(),
                leases: Leases::new(self.target.control().await?, spec.base.visibility_timeout),
                held: HashMap::new(),
                newest_run: 0,
                pause: None,
            };
            let stop = stop_rx.clone();
            readers.spawn(task.run(stop));
        }
        drop(conns);
        if readers.is_empty() {
            return Err(RemoteError::Config(format!(
                "worker {}/{} owns none of the {} shard queues",
                self.cfg.index, self.cfg.count, spec.shards
            )));
        }
        let mut failure = None;
        tokio::select! {
            _ = stop => {}
            Some(e) = broken.recv() => failure = Some(RemoteError::Replay(format!("target: {e}"))),
            Some(done) = readers.join_next() => {
                failure = Some(match done {
                    Ok(Err(e)) => e,
                    Ok(Ok(())) => RemoteError::Replay("a queue reader stopped".into()),
                    Err(e) => RemoteError::Replay(e.to_string()),
                });
            }
        }
        let _ = stop_tx.send(true);
        while let Some(done) = readers.join_next().await {
            if let Ok(Err(e)) = done
                && failure.is_none()
            {
                failure = Some(e);
            }
        }
        for r in replayers {
            let _ = r.await;
        }
        drop(recopy_tx);
        let _ = recopies.await;
        publisher.abort();
        publish();
        if let Some(e) = failure {
            return Err(e);
        }
        let (diverged_keys, example) = stats.diverged_summary();
        if let Some(example) = example {
            tracing::warn!(diverged_keys, %example, "Keys failed only on the target; their re-copies were asked for, and may be applied by another replay process.");
        }
        Ok(WorkerReport {
            entries: counters.entries.load(Ordering::Relaxed),
            batches: counters.batches.load(Ordering::Relaxed),
            redelivered_batches: counters.redelivered.load(Ordering::Relaxed),
            applied_before: counters.applied_before.load(Ordering::Relaxed),
            handed_back: counters.handed_back.load(Ordering::Relaxed),
            leases_taken: counters.leases_taken.load(Ordering::Relaxed),
            leases_lost: counters.leases_lost.load(Ordering::Relaxed),
            fenced_batches: stats.fenced_batches.load(Ordering::Relaxed),
            stale_batches: counters.stale.load(Ordering::Relaxed),
            gaps: counters.gaps.load(Ordering::Relaxed),
            commands: stats.commands.load(Ordering::Relaxed),
            restores: stats.restores.load(Ordering::Relaxed),
            errors: stats.errors_by_code(),
            source_errors: stats.source_errors.load(Ordering::Relaxed),
            target_errors: stats.target_errors_by_code(),
            diverged_keys,
        })
    }
}

/// The `ferry_*` series of a replay process (`docs/metrics.md`), set to its totals; without an
/// installed exporter the calls do nothing.
fn publish_metrics(stats: &ReplayStats, c: &Counters) {
    use metrics::counter;
    counter!("ferry_applied_commands_total").absolute(stats.commands.load(Ordering::Relaxed));
    counter!("ferry_restores_total").absolute(stats.restores.load(Ordering::Relaxed));
    counter!("ferry_source_errors_total").absolute(stats.source_errors.load(Ordering::Relaxed));
    for (code, n) in stats.errors_by_code() {
        counter!("ferry_errors_total", "code" => code).absolute(n);
    }
    for (code, n) in stats.target_errors_by_code() {
        counter!("ferry_target_errors_total", "code" => code).absolute(n);
    }
    counter!("ferry_replay_entries_total").absolute(c.entries.load(Ordering::Relaxed));
    counter!("ferry_replay_batches_total").absolute(c.batches.load(Ordering::Relaxed));
    counter!("ferry_replay_redelivered_batches_total")
        .absolute(c.redelivered.load(Ordering::Relaxed));
    counter!("ferry_replay_applied_before_batches_total")
        .absolute(c.applied_before.load(Ordering::Relaxed));
    counter!("ferry_replay_handed_back_total").absolute(c.handed_back.load(Ordering::Relaxed));
    counter!("ferry_replay_leases_taken_total").absolute(c.leases_taken.load(Ordering::Relaxed));
    counter!("ferry_replay_leases_lost_total").absolute(c.leases_lost.load(Ordering::Relaxed));
    counter!("ferry_replay_fenced_batches_total")
        .absolute(stats.fenced_batches.load(Ordering::Relaxed));
    counter!("ferry_replay_gaps_total").absolute(c.gaps.load(Ordering::Relaxed));
}

fn sanitize(url: &str) -> String {
    url.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect::<String>()
        .chars()
        .rev()
        .take(80)
        .collect::<String>()
        .chars()
        .rev()
        .collect()
}

/// One queue's reader and what it knows about its groups.
struct ReaderTask {
    fifo: bool,
    queue: SqsQueue,
    /// Checkpoint file (standard queues).
    state: PathBuf,
    conns: Vec<mpsc::Sender<Op>>,
    source: redis::aio::MultiplexedConnection,
    counters: Arc<Counters>,
    /// This process's leases in the target.
    leases: Leases,
    /// The shards whose lease this process holds.
    held: HashMap<usize, ShardLease>,
    newest_run: u32,
    /// Wait this long before the next receive (messages were handed back).
    pause: Option<Duration>,
}

/// A shard this process holds.
struct ShardLease {
    token: u64,
    /// Per group, the next gseq to apply.
    next: HashMap<u32, u64>,
}

/// What became of a batch handed to replay.
enum Done {
    /// Applied: acknowledge up to this gseq.
    Applied { group: u32, last: u64 },
    /// Refused by the fence: the lease under `token` was lost.
    Refused {
        group: u32,
        token: u64,
        message_id: String,
    },
}

/// Pause before the next receive after handing back a message of a shard another process
/// holds, so that this process does not keep taking (and hiding) the holder's messages.
const NOT_MINE_PAUSE: Duration = Duration::from_millis(250);
/// Pause before the next receive after handing back a message that came ahead of its shard's
/// position: the one before it is on its way back from another process.
const EARLY_PAUSE: Duration = Duration::from_millis(50);

impl ReaderTask {
    async fn run(
        mut self,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> Result<(), RemoteError> {
        let checkpoint = if self.fifo {
            BTreeMap::new()
        } else {
            load_checkpoint(&self.state)?
        };
        let mut reader = self.queue.reader(checkpoint);
        let (done_tx, mut dones) = mpsc::unbounded_channel::<Done>();
        let mut outstanding = 0usize;
        let tick = (self.queue.config().visibility_timeout / 4).max(Duration::from_millis(500));
        let mut keep_alive = tokio::time::interval(tick);
        keep_alive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut renewed = std::time::Instant::now();
        loop {
            while let Ok(d) = dones.try_recv() {
                self.done(&mut reader, d);
                outstanding -= 1;
            }
            if !self.fifo {
                save_checkpoint(&self.state, &reader.checkpoint())?;
            }
            // Not while received events wait: a process that wakes from a stall goes on with
            // them as if nothing happened, and the fence alone decides (docs/leases.md).
            if renewed.elapsed() >= tick && !reader.has_buffered() {
                self.renew().await?;
                renewed = std::time::Instant::now();
            }
            if *stop.borrow() {
                // Finish what was handed to replay, then delete it and give the leases up.
                while outstanding > 0 {
                    tokio::select! {
                        got = tokio::time::timeout(Duration::from_secs(30), dones.recv()) => match got {
                            Ok(Some(d)) => {
                                self.done(&mut reader, d);
                                outstanding -= 1;
                            }
                            _ => break,
                        },
                        _ = keep_alive.tick() => {
                            reader.keep_alive().await;
                            self.renew().await?;
                        }
                    }
                }
                if !self.fifo {
                    save_checkpoint(&self.state, &reader.checkpoint())?;
                }
                reader.commit().await?;
                for shard in std::mem::take(&mut self.held).into_keys() {
                    if let Err(e) = self.leases.release(shard).await {
                        tracing::warn!(shard, "Could not give the lease up: {e}");
                    }
                }
                return Ok(());
            }
            if !reader.has_buffered()
                && let Some(pause) = self.pause.take()
            {
                tokio::time::sleep(pause).await;
            }
            let event = tokio::select! {
                e = reader.next() => e?,
                _ = stop.changed() => continue,
            };
            match event {
                None => {}
                Some(SqsEvent::Batch(batch)) => {
                    let Some(ready) = self.prepare(&mut reader, batch).await? else {
                        continue;
                    };
                    let conn = self.conns[shard_of_group(ready.group) % self.conns.len()].clone();
                    // While replay pushes back, keep the received messages invisible to other
                    // processes and the lease alive.
                    let send = conn.send(ready.op);
                    tokio::pin!(send);
                    loop {
                        tokio::select! {
                            sent = &mut send => {
                                if sent.is_err() {
                                    return Err(RemoteError::Replay("replay connection closed".into()));
                                }
                                break;
                            }
                            _ = keep_alive.tick() => {
                                reader.keep_alive().await;
                                self.renew().await?;
                            }
                        }
                    }
                    outstanding += 1;
                    let tx = done_tx.clone();
                    let (group, last, token, message_id) =
                        (ready.group, ready.last, ready.token, ready.message_id);
                    let wait = ready.wait;
                    tokio::spawn(async move {
                        // Acknowledged only once the target answered the whole transaction.
                        let d = match wait.await {
                            Ok(true) => Done::Applied { group, last },
                            Ok(false) => Done::Refused {
                                group,
                                token,
                                message_id,
                            },
                            Err(_) => return,
                        };
                        let _ = tx.send(d);
                    });
                }
                Some(SqsEvent::Gap {
                    group,
                    expected_gseq,
                    got_gseq,
                }) => {
                    self.counters.gaps.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        group,
                        expected_gseq,
                        got_gseq,
                        "Entries never arrived; asking for a full resync."
                    );
                    if let Some(l) = self.held.get_mut(&shard_of_group(group)) {
                        l.next.insert(group, got_gseq);
                    }
                    self.echo(Marker::RecopyAll.echo()).await?;
                }
                Some(SqsEvent::Malformed { message_id, .. }) => {
                    tracing::warn!(%message_id, "Skipping a message that is not ferry's.");
                }
            }
        }
    }

    /// Decides what to do with one received batch: skip it (stale run, applied before), hand it
    /// back (another process holds its shard, or it is ahead of the shard's position), or
    /// return it as a fenced transaction for replay.
    async fn prepare(
        &mut self,
        reader: &mut SqsReader,
        batch: SqsBatch,
    ) -> Result<Option<Ready>, RemoteError> {
        let run = run_of_group(batch.group);
        self.newest_run = self.newest_run.max(run);
        let (group, first, end) = (batch.group, batch.first_gseq, batch.end_gseq());
        let last = end.saturating_sub(1);
        if run < self.newest_run {
            // Superseded by a newer run's full resync.
            self.counters.stale.fetch_add(1, Ordering::Relaxed);
            reader.ack(group, last);
            return Ok(None);
        }
        if batch.redelivered {
            self.counters.redelivered.fetch_add(1, Ordering::Relaxed);
        }
        let shard = shard_of_group(group);
        let Some((token, next)) = self.lease(reader, shard, group).await? else {
            self.hand_back(reader, &batch.message_id, NOT_MINE_PAUSE)
                .await;
            return Ok(None);
        };
        if end <= next {
            // Applied already, by this process or the shard's previous holder.
            self.counters.applied_before.fetch_add(1, Ordering::Relaxed);
            reader.ack(group, last);
            return Ok(None);
        }
        if first > next && self.fifo {
            // An earlier message of the group is elsewhere (in flight in a stalled process,
            // or handed back): applying this one first would reorder the shard.
            self.hand_back(reader, &batch.message_id, EARLY_PAUSE).await;
            return Ok(None);
        }
        // A standard queue's reader orders its groups itself and reports gaps.
        let skip = next.saturating_sub(first) as usize;
        if let Some(l) = self.held.get_mut(&shard) {
            l.next.insert(group, end);
        }
        self.counters.batches.fetch_add(1, Ordering::Relaxed);
        self.counters.entries.fetch_add(
            batch.entries.len().saturating_sub(skip) as u64,
            Ordering::Relaxed,
        );
        let mut ops = Vec::with_capacity(batch.entries.len());
        for entry in batch.entries.into_iter().skip(skip) {
            if let Some(op) = self.op(entry) {
                ops.push(op);
            }
        }
        let (done, wait) = oneshot::channel();
        let op = Op::Fenced {
            seq: 0,
            fence: Box::new(self.leases.fence(shard, token, group, end)),
            ops,
            done,
        };
        Ok(Some(Ready {
            op,
            group,
            last,
            token,
            message_id: batch.message_id,
            wait,
        }))
    }

    /// This process's token for `shard` and the next gseq of `group` to apply, taking the lease
    /// when it is free; `None` when another process holds it.
    async fn lease(
        &mut self,
        reader: &mut SqsReader,
        shard: usize,
        group: u32,
    ) -> Result<Option<(u64, u64)>, RemoteError> {
        if let Some(l) = self.held.get(&shard) {
            if let Some(&next) = l.next.get(&group) {
                return Ok(Some((l.token, next)));
            }
            // A group first seen under this lease (a new capture run).
            let token = l.token;
            let applied = self.leases.applied(shard, group).await?.unwrap_or(0);
            reader.applied(group, applied);
            if let Some(l) = self.held.get_mut(&shard) {
                l.next.insert(group, applied);
            }
            return Ok(Some((token, applied)));
        }
        let Some(held) = self.leases.acquire(shard, group).await? else {
            return Ok(None);
        };
        let applied = held.applied.unwrap_or(0);
        reader.applied(group, applied);
        self.counters.leases_taken.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            shard,
            token = held.token,
            group,
            applied,
            "Took the lease of a shard; applying it from its recorded position."
        );
        self.held.insert(
            shard,
            ShardLease {
                token: held.token,
                next: HashMap::from([(group, applied)]),
            },
        );
        Ok(Some((held.token, applied)))
    }

    /// Hands a message back to the queue at once, for the process whose turn it is, and
    /// pauses the next receive.
    async fn hand_back(&mut self, reader: &mut SqsReader, message_id: &str, pause: Duration) {
        self.counters.handed_back.fetch_add(1, Ordering::Relaxed);
        reader.release(message_id);
        reader.flush_released().await;
        self.pause = Some(self.pause.map_or(pause, |p| p.max(pause)));
    }

    /// Extends the held leases; a lease another process took is dropped (its batches still in
    /// flight are refused by the fence).
    async fn renew(&mut self) -> Result<(), RemoteError> {
        let shards: Vec<(usize, u64)> = self.held.iter().map(|(&s, l)| (s, l.token)).collect();
        for (shard, token) in shards {
            if !self.leases.renew(shard, token).await? {
                self.lost(shard, token);
            }
        }
        Ok(())
    }

    fn lost(&mut self, shard: usize, token: u64) {
        if self.held.get(&shard).is_some_and(|l| l.token == token) {
            self.held.remove(&shard);
            self.counters.leases_lost.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                shard,
                token,
                "Lost the lease of a shard to another process; this process stops applying it."
            );
        }
    }

    /// Records what became of a batch handed to replay.
    fn done(&mut self, reader: &mut SqsReader, d: Done) {
        match d {
            Done::Applied { group, last } => reader.ack(group, last),
            Done::Refused {
                group,
                token,
                message_id,
            } => {
                let shard = shard_of_group(group);
                let current = self.held.get(&shard).is_none_or(|l| l.token == token);
                tracing::warn!(
                    shard,
                    token,
                    %message_id,
                    "The target refused a batch: another process holds the shard's lease now."
                );
                self.lost(shard, token);
                reader.release(&message_id);
                if current {
                    reader.rewind(group);
                }
            }
        }
    }

    /// The operation for one entry, or `None` for entries replay has nothing to do with.
    fn op(&mut self, entry: Entry) -> Option<Op> {
        let seq = entry.seq;
        match entry.kind {
            EntryKind::Write { db, argv } => Some(Op::Cmd { seq, db, argv }),
            EntryKind::Atomic(cmds) => Some(Op::Atomic { seq, cmds }),
            EntryKind::Payload {
                read_id,
                db,
                key,
                payload,
                expire_at_ms,
                ..
            } => {
                if let Some(rest) = read_id.strip_prefix("part:") {
                    // The parts of a big payload may span messages (and a lease may move
                    // between them): they are assembled on the target, in a scratch key
                    // written at fixed offsets, so re-applying a part is harmless.
                    let (i, n) = rest.split_once(':').unwrap_or(("0", "1"));
                    let (i, n): (usize, usize) = (i.parse().unwrap_or(0), n.parse().unwrap_or(1));
                    let data = payload.unwrap_or_default();
                    let scratch = [PART_SCRATCH, key.as_slice()].concat();
                    let write = if i == 0 {
                        Argv::from_args([&b"SET"[..], &scratch, &data])
                    } else {
                        let offset = (i * PART_BYTES).to_string();
                        Argv::from_args([&b"SETRANGE"[..], &scratch, offset.as_bytes(), &data])
                    };
                    if i + 1 < n {
                        return Some(Op::Cmd {
                            seq,
                            db,
                            argv: write,
                        });
                    }
                    let (ttl, abs) = match expire_at_ms {
                        Some(t) => (t.to_string(), "1"),
                        None => ("0".to_string(), "0"),
                    };
                    let restore = Argv::from_args([
                        &b"EVAL"[..],
                        RESTORE_PARTS_SCRIPT.as_bytes(),
                        b"2",
                        &key,
                        &scratch,
                        ttl.as_bytes(),
                        abs.as_bytes(),
                    ]);
                    return Some(Op::Atomic {
                        seq,
                        cmds: vec![(db, write), (db, restore)],
                    });
                }
                Some(Op::Restore {
                    seq,
                    db,
                    key,
                    payload,
                    expire_at_ms,
                })
            }
            _ => None,
        }
    }

    async fn echo(&mut self, arg: Vec<u8>) -> Result<(), RemoteError> {
        redis::cmd("ECHO")
            .arg(arg)
            .query_async::<()>(&mut self.source)
            .await
            .map_err(|e| RemoteError::Replay(format!("re-copy request to the source: {e}")))
    }
}

/// A batch ready for replay, and what to record when the target answers it.
struct Ready {
    op: Op,
    group: u32,
    last: u64,
    token: u64,
    message_id: String,
    wait: oneshot::Receiver<bool>,
}

fn load_checkpoint(path: &std::path::Path) -> Result<BTreeMap<u32, u64>, RemoteError> {
    match std::fs::read(path) {
        Ok(data) => serde_json::from_slice(&data).map_err(|e| RemoteError::State {
            path: path.to_path_buf(),
            message: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(RemoteError::State {
            path: path.to_path_buf(),
            message: e.to_string(),
        }),
    }
}

fn save_checkpoint(path: &std::path::Path, cp: &BTreeMap<u32, u64>) -> Result<(), RemoteError> {
    let err = |e: std::io::Error| RemoteError::State {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let tmp = path.with_extension("tmp");
    let data = serde_json::to_vec(cp).map_err(|e| RemoteError::State {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    std::fs::write(&tmp, data).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_ids_carry_run_and_shard() {
        let g = group_id(7, 3);
        assert_eq!(run_of_group(g), 7);
        assert_eq!(shard_of_group(g), 3);
        assert!(group_id(8, 0) > group_id(7, 255));
    }

    #[test]
    fn runs_count_up_in_the_state_dir() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(next_run(dir.path()).unwrap(), 1);
        assert_eq!(next_run(dir.path()).unwrap(), 2);
    }

    #[test]
    fn per_shard_queue_urls() {
        let spec = QueueSpec {
            url: "http://q/ferry-{shard}.fifo".into(),
            base: SqsConfig::new(""),
            shards: 2,
        };
        assert_eq!(
            spec.queues(),
            vec![
                (vec![0], "http://q/ferry-0.fifo".to_string()),
                (vec![1], "http://q/ferry-1.fifo".to_string())
            ]
        );
    }
}
