//! Snapshot: a fenced, parallel, pipelined copy of every key from the source to the target.
//!
//! ## Behavior
//! - One scanner walks each selected db with `SCAN`; batches of keys go through a bounded
//!   channel to `workers` tasks, each with its own source and target connection.
//! - A worker reads its batch as **one fenced read**: `MULTI; DUMP k; PEXPIRETIME k; …; EXEC` on
//!   a connection whose address it learned from `CLIENT INFO`. Those lines appear in the source's
//!   `MONITOR` stream at one point, so the live pipeline can place every copy exactly
//!   ([`KeyCopy::fence`]).
//! - Expiry travels as an absolute time and lands with `RESTORE … REPLACE ABSTTL`. A key that
//!   expires before it is restored is skipped and counted.
//! - Keys past [`SnapshotConfig::big_key_bytes`] (by `MEMORY USAGE`), keys whose payload the
//!   target rejects (a newer RDB version), and every key in type-aware mode go through
//!   [`chunked::copy_chunked`] with bounded memory.
//! - A live snapshot with [`SnapshotConfig::functions`] first reads the source's function
//!   libraries with a fenced `FUNCTION DUMP` ([`FencedReader::read_functions`]); replay
//!   restores them at that point of the stream.
//! - A failed key is recorded with its reason and the run goes on; the report says what failed.
//! - With a state dir, progress is checkpointed (per-db `SCAN` cursor below which every batch is
//!   done, and the failed keys below it); a rerun resumes there instead of starting over, and
//!   first retries the keys that failed. A run that ends with failures leaves the checkpoint
//!   open, so the rerun resumes rather than starting over.

mod checkpoint;
pub mod chunked;
mod cluster;
pub mod downgrade;
pub mod expiry;
mod fieldttl;
mod limit;
mod live;
mod progress;
pub mod rdb;
mod shards;
pub mod slotreads;
mod tempkeys;
mod worker;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{Mutex, mpsc};

use crate::escape::Quoted;
use crate::net::cluster::Topology;
use crate::net::{Endpoint, NetError};
use checkpoint::{Checkpoint, Watermark};
use progress::Progress;

pub use downgrade::can_downgrade;
pub use fieldttl::{
    FieldTtlHashes, PLAN_REMEDY, field_expiries, field_ttl_hashes, field_ttls_refusal,
};
pub use limit::RateLimiter;
pub use live::{
    DEFAULT_PAYLOAD_BUDGET, LiveSink, Payload, PayloadStore, Recopier, dump_holds_libraries,
};
pub(crate) use live::{FencedReader, next_read_id};
pub use progress::{SnapshotCounters, advance_bar, key_bar};

/// Parallel workers, each with one source and one target connection.
pub const DEFAULT_WORKERS: usize = 4;
/// `SCAN … COUNT`.
pub const DEFAULT_SCAN_COUNT: usize = 1000;
/// Keys per fenced read (one `MULTI … EXEC`). Large enough to amortise round trips, small enough
/// that the source spends well under a millisecond per transaction on ordinary keys.
pub const DEFAULT_BATCH_KEYS: usize = 128;
/// Keys above this `MEMORY USAGE` are copied in chunks rather than with one `DUMP`.
pub const DEFAULT_BIG_KEY_BYTES: u64 = 32 << 20;
/// Elements per chunk in type-aware copies.
pub const DEFAULT_CHUNK: usize = 1000;
/// How often the checkpoint is written.
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// Snapshot settings.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SnapshotConfig {
    /// Dbs to copy; `None` means every db that has keys on the source.
    pub dbs: Option<Vec<u32>>,
    /// Parallel workers.
    pub workers: usize,
    /// `SCAN … COUNT`.
    pub scan_count: usize,
    /// Keys per fenced read.
    pub batch_keys: usize,
    /// Cap on commands per second sent to the source; `None` for no cap.
    pub max_source_ops: Option<u64>,
    /// Keys above this `MEMORY USAGE` go through the chunked copy.
    pub big_key_bytes: u64,
    /// Elements per chunk in the chunked copy.
    pub chunk: usize,
    /// Copy every key type-aware (no `DUMP`/`RESTORE`), e.g. for a target of another engine.
    pub type_aware: bool,
    /// Where the checkpoint lives; `None` disables resume.
    pub state_dir: Option<PathBuf>,
    /// Show a progress bar (when stderr is a terminal) or periodic log lines.
    pub progress: bool,
    /// Live snapshots only: read the source's function libraries first (`FUNCTION DUMP` in a
    /// fenced read), for replay to restore at that position. Off for a source without
    /// `FUNCTION`; a standalone snapshot copies keys only.
    pub functions: bool,
    /// Toward a target without hash-field TTLs, copy the fields of hashes that have them
    /// without their TTLs (counted); otherwise a standalone snapshot of such a source is
    /// refused at start, naming the hashes.
    pub drop_field_ttls: bool,
    /// How far the snapshot is, for a run's status and report (shared by clones: every
    /// resync of a migration counts into the same one).
    pub counters: Arc<SnapshotCounters>,
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        SnapshotConfig {
            dbs: None,
            workers: DEFAULT_WORKERS,
            scan_count: DEFAULT_SCAN_COUNT,
            batch_keys: DEFAULT_BATCH_KEYS,
            max_source_ops: None,
            big_key_bytes: DEFAULT_BIG_KEY_BYTES,
            chunk: DEFAULT_CHUNK,
            type_aware: false,
            state_dir: None,
            progress: false,
            functions: false,
            drop_field_ttls: false,
            counters: Arc::default(),
        }
    }
}

/// Where one key's copy sits in the source's `MONITOR` stream: the `DUMP` line that `worker`
/// (connected from `addr`) sent as its `ordinal`-th fenced read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fence {
    /// Worker number.
    pub worker: u32,
    /// The worker's source connection as `CLIENT INFO` shows it (and `MONITOR` prints it).
    pub addr: String,
    /// The db the key was read from.
    pub db: u32,
    /// Count of `DUMP`s this worker connection sent before this one.
    pub ordinal: u64,
}

/// One key as read by a fenced read.
#[derive(Debug, Clone)]
pub struct KeyCopy {
    /// The db.
    pub db: u32,
    /// The key.
    pub key: Vec<u8>,
    /// The `DUMP` payload.
    pub payload: Vec<u8>,
    /// Absolute expiry in unix ms; `None` for a persistent key.
    pub expire_at_ms: Option<i64>,
    /// Where the read sits in the source's stream.
    pub fence: Fence,
}

/// One failed key, for the report.
#[derive(Debug, Clone, Serialize)]
pub struct FailedKey {
    /// The db.
    pub db: u32,
    /// The key, quoted as Redis shows it.
    pub key: String,
    /// Why it failed.
    pub reason: String,
}

/// What a snapshot did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SnapshotReport {
    /// Keys written to the target.
    pub keys: u64,
    /// Payload bytes written (DUMP payloads, or chunk bytes).
    pub bytes: u64,
    /// Keys copied with the chunked, type-aware path.
    pub chunked_keys: u64,
    /// Hash fields the chunked path copied with their TTL (Redis 7.4 on both sides).
    pub field_ttls: u64,
    /// Hash fields copied without their TTL toward a target that has none
    /// ([`SnapshotConfig::drop_field_ttls`]).
    pub field_ttls_dropped: u64,
    /// Keys that expired before they could be restored.
    pub skipped_expired: u64,
    /// Temporary keys of chunked copies that a killed run left on the target, deleted at start.
    pub leftover_temp_keys: u64,
    /// Keys that an earlier run in the same state dir failed and this run tried again (they
    /// count in `keys` once copied, in `failed` if they failed again).
    pub retried: u64,
    /// Keys deleted on the source between `SCAN` and the read.
    pub vanished: u64,
    /// Failed keys, counted by reason.
    pub failed: BTreeMap<String, u64>,
    /// The first failed keys, with reasons.
    pub failed_keys: Vec<FailedKey>,
    /// Keys on the source when the run started (`DBSIZE`), the progress total.
    pub total_estimate: u64,
    /// True when the run continued from a checkpoint.
    pub resumed: bool,
    /// Wall time.
    pub elapsed_secs: f64,
}

/// Failure reasons the summary line names before it counts the rest.
const SUMMARY_REASONS: usize = 3;

impl SnapshotReport {
    /// Number of failed keys.
    pub fn failed_count(&self) -> u64 {
        self.failed.values().sum()
    }

    /// The one-line summary printed at the end of a run.
    pub fn summary(&self) -> String {
        let rate = self.keys as f64 / self.elapsed_secs.max(1e-9);
        let failed = if self.failed.is_empty() {
            "0".to_string()
        } else {
            // Reasons may name their key (a chunked copy's do): the first few, then a count.
            let mut parts: Vec<_> = self
                .failed
                .iter()
                .take(SUMMARY_REASONS)
                .map(|(r, n)| format!("{n} {r}"))
                .collect();
            if self.failed.len() > SUMMARY_REASONS {
                parts.push(format!(
                    "and {} other reasons",
                    self.failed.len() - SUMMARY_REASONS
                ));
            }
            format!("{} ({})", self.failed_count(), parts.join(", "))
        };
        let field_ttls = match (self.field_ttls, self.field_ttls_dropped) {
            (0, 0) => String::new(),
            (n, 0) => format!(" ({n} field TTLs)"),
            (0, d) => format!(" ({d} field TTLs dropped)"),
            (n, d) => format!(" ({n} field TTLs, {d} dropped)"),
        };
        format!(
            "Snapshot {}: {} keys, {:.1} MB in {:.1} s ({:.0} keys/s); chunked {}{field_ttls}; skipped {} expired, {} vanished; failed {}",
            if self.resumed {
                "resumed and done"
            } else {
                "done"
            },
            self.keys,
            self.bytes as f64 / 1e6,
            self.elapsed_secs,
            rate,
            self.chunked_keys,
            self.skipped_expired,
            self.vanished,
            failed
        )
    }

    fn absorb(&mut self, o: BatchStats) {
        self.keys += o.keys;
        self.bytes += o.bytes;
        self.chunked_keys += o.chunked_keys;
        self.field_ttls += o.field_ttls;
        self.field_ttls_dropped += o.field_ttls_dropped;
        self.skipped_expired += o.skipped_expired;
        self.vanished += o.vanished;
        for f in o.failed {
            *self.failed.entry(f.reason.clone()).or_default() += 1;
            if self.failed_keys.len() < 100 {
                self.failed_keys.push(FailedKey {
                    db: f.db,
                    key: Quoted(&f.key).to_string(),
                    reason: f.reason,
                });
            }
        }
    }
}

/// Why a snapshot could not run at all. Per-key problems are in the report instead.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// A server could not be reached or refused us.
    #[error(transparent)]
    Net(#[from] NetError),
    /// A command the snapshot needs failed on a server.
    #[error("{endpoint}: {command} failed: {message}")]
    Command {
        endpoint: String,
        command: &'static str,
        message: String,
    },
    /// The state dir cannot be used.
    #[error("state dir {path}: {message}")]
    State { path: String, message: String },
    /// The pair cannot be copied as asked (field TTLs toward a target without them).
    #[error("{0}")]
    Unsupported(String),
}

/// A batch of keys from one `SCAN` step.
#[derive(Debug)]
struct Batch {
    db: u32,
    seq: u64,
    keys: Vec<Vec<u8>>,
    /// Keys from the target sweep: read only those the source scan did not.
    sweep: bool,
    /// Keys an earlier run failed, from the checkpoint rather than a `SCAN`; `seq` counts
    /// these batches on their own.
    retry: bool,
}

/// One pass of the scanner: a db on the source, or on the target for the sweep.
#[derive(Debug, Clone)]
struct ScanPass {
    endpoint: Endpoint,
    db: u32,
    cursor: u64,
    sweep: bool,
}

/// What a worker did with one batch.
#[derive(Debug, Default)]
struct BatchStats {
    keys: u64,
    bytes: u64,
    chunked_keys: u64,
    field_ttls: u64,
    field_ttls_dropped: u64,
    skipped_expired: u64,
    vanished: u64,
    failed: Vec<Failure>,
}

/// One failed key as a worker reports it: the raw key, so the checkpoint can retry it.
#[derive(Debug)]
struct Failure {
    db: u32,
    key: Vec<u8>,
    reason: String,
}

/// Messages to the coordinator.
#[derive(Debug)]
enum Event {
    /// The scanner produced batch `seq` of `db`; after it the cursor is `cursor`.
    Scanned {
        db: u32,
        sweep: bool,
        seq: u64,
        cursor: u64,
    },
    /// The scanner finished `db` after `batches` batches.
    DbScanned { db: u32, sweep: bool, batches: u64 },
    /// A worker finished a batch.
    Done {
        db: u32,
        sweep: bool,
        retry: bool,
        seq: u64,
        stats: BatchStats,
    },
    /// A worker or the scanner hit an error it cannot go on after.
    Fatal(SnapshotError),
}

/// Runs snapshots.
#[derive(Debug)]
pub struct Snapshotter {
    source: Endpoint,
    target: Endpoint,
    cfg: SnapshotConfig,
    /// The source is one primary of a cluster ([`shards`]): fenced reads go slot by slot.
    shard_of_cluster: bool,
}

fn cmd_err(ep: &Endpoint, command: &'static str, e: redis::RedisError) -> SnapshotError {
    SnapshotError::Command {
        endpoint: ep.redacted().to_string(),
        command,
        message: e.to_string(),
    }
}

/// The dbs with keys, from `INFO keyspace`, and their sizes.
async fn keyspace(
    ep: &Endpoint,
    con: &mut redis::aio::MultiplexedConnection,
) -> Result<BTreeMap<u32, u64>, SnapshotError> {
    let info: String = redis::cmd("INFO")
        .arg("keyspace")
        .query_async(con)
        .await
        .map_err(|e| cmd_err(ep, "INFO keyspace", e))?;
    Ok(info
        .lines()
        .filter_map(|l| {
            let (db, rest) = l.strip_prefix("db")?.split_once(':')?;
            let keys = rest.split(',').find_map(|f| f.strip_prefix("keys="))?;
            Some((db.parse().ok()?, keys.parse().ok()?))
        })
        .collect())
}

impl Snapshotter {
    /// A snapshotter from `source` to `target`.
    pub fn new(source: Endpoint, target: Endpoint, cfg: SnapshotConfig) -> Snapshotter {
        Snapshotter {
            source,
            target,
            cfg,
            shard_of_cluster: false,
        }
    }

    /// Copies every key of the selected dbs; returns the report even when some keys failed.
    /// A cluster source is copied shard by shard in parallel, each on its primary.
    pub async fn run(&self) -> Result<SnapshotReport, SnapshotError> {
        match Topology::discover(&self.source).await? {
            Some(t) => self.run_shards(t).await,
            None => self.run_inner(None).await,
        }
    }

    /// The live form: fenced reads of every source key, then of every target key the source
    /// scan did not return (so that keys gone from the source are deleted at their fence). The
    /// payloads go to `sink` for the stitcher; nothing is written to the target here.
    pub async fn run_live(&self, sink: LiveSink) -> Result<SnapshotReport, SnapshotError> {
        self.run_inner(Some(sink)).await
    }

    /// A source with hash-field TTLs toward a target without them: refused, naming the
    /// hashes, unless [`SnapshotConfig::drop_field_ttls`] (then said once, in the log). A live
    /// migration decides this itself before its snapshot starts.
    async fn check_field_ttls(&self) -> Result<(), SnapshotError> {
        let se = crate::net::Engine::detect(&self.source).await?;
        let te = crate::net::Engine::detect(&self.target).await?;
        if !se.has_hash_field_expiry() || te.has_hash_field_expiry() {
            return Ok(());
        }
        let found = field_ttl_hashes(&self.source).await?;
        if found.hashes == 0 {
            return Ok(());
        }
        if !self.cfg.drop_field_ttls {
            return Err(SnapshotError::Unsupported(field_ttls_refusal(
                &self.target,
                te,
                &found,
                "pass --drop-field-ttls",
            )));
        }
        tracing::warn!(
            first = %found,
            "Field TTLs dropped: the target has no hash-field TTLs; those fields are copied without them."
        );
        Ok(())
    }

    async fn run_inner(&self, live: Option<LiveSink>) -> Result<SnapshotReport, SnapshotError> {
        let started = Instant::now();
        // A live run reads a cluster source through every shard's node.
        let source_nodes: Vec<Endpoint> = match &live {
            Some(sink) => sink.nodes.all().to_vec(),
            None => vec![self.source.clone()],
        };
        let mut dst = self.target.control().await?;
        redis::cmd("PING")
            .query_async::<()>(&mut dst)
            .await
            .map_err(|e| cmd_err(&self.target, "PING", e))?;
        if live.is_none() {
            self.check_field_ttls().await?;
        }
        let mut sizes: BTreeMap<u32, u64> = BTreeMap::new();
        for node in &source_nodes {
            let mut con = node.control().await?;
            for (db, n) in keyspace(node, &mut con).await? {
                *sizes.entry(db).or_default() += n;
            }
        }
        let dbs: Vec<u32> = match &self.cfg.dbs {
            Some(d) => d.clone(),
            None => sizes.keys().copied().collect(),
        };
        let target_cluster = Topology::discover(&self.target).await?;
        // Toward a cluster, the sweep scans every primary; a live run checked the dbs already
        // (and maps them through the plan), a plain snapshot copies dbs as they are.
        let target_nodes: Vec<Endpoint> = match &target_cluster {
            Some(t) => {
                let stray: Vec<u32> = dbs.iter().copied().filter(|&db| db != 0).collect();
                if live.is_none() && !stray.is_empty() {
                    return Err(SnapshotError::Unsupported(format!(
                        "the target {} is a Redis Cluster, which has db 0 only, but the source has keys in {}: copy db 0 alone (--db 0) or migrate with a plan that moves the others (ferry.move_db)",
                        self.target,
                        crate::net::cluster::stray_dbs(&stray),
                    )));
                }
                if live.is_none() && !self.shard_of_cluster {
                    tracing::info!(
                        target = %self.target,
                        primaries = t.shards.len(),
                        shards = %t.describe(),
                        "The target is a Redis Cluster; restores go to each key's primary."
                    );
                }
                t.shards.iter().map(|s| s.primary.clone()).collect()
            }
            None => vec![self.target.clone()],
        };
        let target_dbs: Vec<u32> = if live.is_some() {
            let mut t = BTreeMap::new();
            for node in &target_nodes {
                let mut con = node.control().await?;
                t.extend(keyspace(node, &mut con).await?);
            }
            t.keys()
                .copied()
                .filter(|db| self.cfg.dbs.as_ref().is_none_or(|d| d.contains(db)))
                .collect()
        } else {
            Vec::new()
        };

        if let Some(sink) = live.as_ref().filter(|_| self.cfg.functions) {
            self.read_functions(sink).await?;
        }

        let mut checkpoint = match (&self.cfg.state_dir, &live) {
            (Some(dir), None) => Checkpoint::open(dir, &self.source, &self.target, &dbs)?,
            _ => Checkpoint::in_memory(&dbs),
        };
        let mut report = SnapshotReport {
            resumed: checkpoint.is_resumed(),
            ..SnapshotReport::default()
        };
        if let (Some(dir), None) = (&self.cfg.state_dir, &live) {
            // After the checkpoint accepted the state dir, so it is this target's.
            report.leftover_temp_keys = tempkeys::sweep_leftovers(dir, &self.target).await?;
            if report.leftover_temp_keys > 0 {
                tracing::info!(
                    keys = report.leftover_temp_keys,
                    "Deleted temporary keys that an interrupted run left on the target."
                );
            }
        }
        if report.resumed {
            tracing::info!(
                keys_done = checkpoint.keys_done(),
                "Resuming the snapshot from its checkpoint."
            );
        }
        report.total_estimate = dbs
            .iter()
            .filter(|db| !checkpoint.db_done(**db))
            .map(|db| sizes.get(db).copied().unwrap_or(0))
            .sum();
        let progress = Progress::new(
            self.cfg.progress,
            report.total_estimate,
            self.cfg.counters.clone(),
        );

        let (batch_tx, batch_rx) = mpsc::channel::<Batch>(self.cfg.workers * 2);
        let (event_tx, mut event_rx) = mpsc::unbounded_channel::<Event>();
        let batch_rx = Arc::new(Mutex::new(batch_rx));
        let limiter = self
            .cfg
            .max_source_ops
            .map(|per_sec| Arc::new(RateLimiter::new(per_sec)));
        let mut shared = worker::Shared::new(
            self.source.clone(),
            self.target.clone(),
            self.cfg.clone(),
            limiter.clone(),
        );
        if live.is_none() {
            shared.cluster = target_cluster.clone();
            shared.relative_restores = !crate::net::Engine::detect(&self.target)
                .await?
                .has_restore_absttl();
        }
        shared.by_slot = self.shard_of_cluster;
        let shared = Arc::new(shared);

        let mut scan_plan: Vec<ScanPass> = source_nodes
            .iter()
            .flat_map(|node| {
                dbs.iter()
                    .filter(|db| !checkpoint.db_done(**db))
                    .map(|db| ScanPass {
                        endpoint: node.clone(),
                        db: *db,
                        cursor: checkpoint.cursor(*db),
                        sweep: false,
                    })
            })
            .collect();
        for node in &target_nodes {
            scan_plan.extend(target_dbs.iter().map(|db| ScanPass {
                endpoint: node.clone(),
                db: *db,
                cursor: 0,
                sweep: true,
            }));
        }
        // Keys an earlier run failed go first, before the scan passes them again or not.
        let mut retries: BTreeMap<u64, (u32, Vec<Vec<u8>>)> = BTreeMap::new();
        for (db, keys) in checkpoint.failed_keys() {
            for part in keys.chunks(self.cfg.batch_keys.max(1)) {
                retries.insert(retries.len() as u64, (db, part.to_vec()));
            }
        }
        if !retries.is_empty() {
            report.retried = retries.values().map(|(_, k)| k.len() as u64).sum();
            tracing::info!(
                keys = report.retried,
                "Retrying the keys that failed in the previous run."
            );
        }
        let retry_batches: Vec<Batch> = retries
            .iter()
            .map(|(seq, (db, keys))| Batch {
                db: *db,
                seq: *seq,
                keys: keys.clone(),
                sweep: false,
                retry: true,
            })
            .collect();
        let scanner = tokio::spawn(scan_all(
            retry_batches,
            scan_plan,
            self.cfg.scan_count,
            self.cfg.batch_keys,
            limiter.clone(),
            batch_tx,
            event_tx.clone(),
        ));
        let mut workers = Vec::new();
        let seen = Arc::new(live::Seen::default());
        for id in 0..self.cfg.workers.max(1) {
            workers.push(match &live {
                None => tokio::spawn(worker::run(
                    id as u32,
                    shared.clone(),
                    batch_rx.clone(),
                    event_tx.clone(),
                )),
                Some(sink) => tokio::spawn(live::run_worker(
                    sink.clone(),
                    limiter.clone(),
                    seen.clone(),
                    batch_rx.clone(),
                    event_tx.clone(),
                )),
            });
        }
        drop(event_tx);

        let mut watermarks: BTreeMap<(bool, u32), Watermark> = BTreeMap::new();
        let mut fatal = None;
        let mut last_save = Instant::now();
        while let Some(event) = event_rx.recv().await {
            match event {
                Event::Scanned {
                    db,
                    sweep,
                    seq,
                    cursor,
                } => watermarks
                    .entry((sweep, db))
                    .or_default()
                    .scanned(seq, cursor),
                Event::DbScanned { db, sweep, batches } => watermarks
                    .entry((sweep, db))
                    .or_default()
                    .finished_scan(batches),
                Event::Done {
                    db,
                    sweep,
                    retry,
                    seq,
                    stats,
                } => {
                    progress.advance(
                        stats.keys + stats.skipped_expired + stats.vanished,
                        stats.bytes,
                    );
                    checkpoint.add_keys(stats.keys);
                    if retry {
                        // Forget the batch, then record what failed again; that always fits.
                        for key in retries.remove(&seq).map(|(_, k)| k).unwrap_or_default() {
                            checkpoint.clear_failed(db, &key);
                        }
                        for f in &stats.failed {
                            checkpoint.record_failed(f.db, &f.key);
                        }
                    } else {
                        // Record before the cursor moves past the batch: both land in the
                        // same write of the checkpoint.
                        let mut recorded = true;
                        for f in &stats.failed {
                            recorded &= checkpoint.record_failed(f.db, &f.key);
                        }
                        if !recorded {
                            checkpoint.pin(db);
                        }
                        let wm = watermarks.entry((sweep, db)).or_default();
                        wm.done(seq);
                        if !sweep {
                            checkpoint.set_db(db, wm.safe_cursor(), wm.complete());
                        }
                    }
                    report.absorb(stats);
                }
                Event::Fatal(e) => {
                    // Stop handing out work; workers finish what they hold.
                    fatal.get_or_insert(e);
                    scanner.abort();
                }
            }
            if last_save.elapsed() >= CHECKPOINT_EVERY {
                checkpoint.save()?;
                last_save = Instant::now();
            }
        }
        for w in workers {
            let _ = w.await;
        }
        if let Some(e) = fatal {
            checkpoint.save()?;
            progress.finish();
            return Err(e);
        }
        checkpoint.finish()?;
        progress.finish();
        report.elapsed_secs = started.elapsed().as_secs_f64();
        Ok(report)
    }

    /// The fenced read of the source's function libraries, before any key is read. Retried
    /// on a new connection like a worker's reads; a source that keeps refusing it stops the
    /// snapshot (a silent loss of the libraries would surface only when a client calls them).
    async fn read_functions(&self, sink: &LiveSink) -> Result<(), SnapshotError> {
        let mut attempt = 0;
        loop {
            let result = async {
                let mut reader = FencedReader::connect(&self.source, &sink.peers).await?;
                reader.read_functions(&sink.store).await
            }
            .await;
            match result {
                Ok(true) => {
                    tracing::info!(
                        "Function libraries read; replay restores them at this point of the stream."
                    );
                    return Ok(());
                }
                Ok(false) => {
                    tracing::info!("The source has no function libraries at this point.");
                    return Ok(());
                }
                Err(e) if attempt < 3 => {
                    attempt += 1;
                    tracing::warn!(error = %e, "Reading the function libraries failed; retrying.");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(message) => {
                    return Err(SnapshotError::Command {
                        endpoint: self.source.redacted().to_string(),
                        command: "FUNCTION DUMP",
                        message,
                    });
                }
            }
        }
    }
}

/// Feeds the retry batches to the workers, then walks every pass of the plan with `SCAN` from
/// its cursor and feeds those batches.
async fn scan_all(
    retries: Vec<Batch>,
    plan: Vec<ScanPass>,
    scan_count: usize,
    batch_keys: usize,
    limiter: Option<Arc<RateLimiter>>,
    batches: mpsc::Sender<Batch>,
    events: mpsc::UnboundedSender<Event>,
) {
    let result = async {
        for batch in retries {
            if batches.send(batch).await.is_err() {
                return Ok(());
            }
        }
        for pass in plan {
            let ScanPass {
                endpoint,
                db,
                cursor: start,
                sweep,
            } = pass;
            let mut con = endpoint.control().await?;
            redis::cmd("SELECT")
                .arg(db)
                .query_async::<()>(&mut con)
                .await
                .map_err(|e| cmd_err(&endpoint, "SELECT", e))?;
            let mut cursor = start;
            let mut seq = 0u64;
            loop {
                if let Some(l) = limiter.as_ref().filter(|_| !sweep) {
                    l.acquire(1).await;
                }
                let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("COUNT")
                    .arg(scan_count)
                    .query_async(&mut con)
                    .await
                    .map_err(|e| cmd_err(&endpoint, "SCAN", e))?;
                // One SCAN step may yield more keys than a fenced read should hold; every part
                // gets its own seq, and only the last part carries the step's cursor.
                let parts: Vec<Vec<Vec<u8>>> = if keys.is_empty() {
                    vec![Vec::new()]
                } else {
                    keys.chunks(batch_keys.max(1)).map(<[_]>::to_vec).collect()
                };
                let n = parts.len();
                for (i, part) in parts.into_iter().enumerate() {
                    let cursor_after = if i + 1 == n { next } else { cursor };
                    let _ = events.send(Event::Scanned {
                        db,
                        sweep,
                        seq,
                        cursor: cursor_after,
                    });
                    let batch = Batch {
                        db,
                        seq,
                        keys: part,
                        sweep,
                        retry: false,
                    };
                    if batches.send(batch).await.is_err() {
                        return Ok(());
                    }
                    seq += 1;
                }
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
            let _ = events.send(Event::DbScanned {
                db,
                sweep,
                batches: seq,
            });
        }
        Ok::<_, SnapshotError>(())
    }
    .await;
    if let Err(e) = result {
        let _ = events.send(Event::Fatal(e));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_names_a_few_failure_reasons_and_counts_the_rest() {
        let mut report = SnapshotReport::default();
        for i in 0..40 {
            report
                .failed
                .insert(format!("chunked copy: writing \"k:{i}\" on the target"), 1);
        }
        let line = report.summary();
        assert!(line.contains("failed 40 ("), "{line}");
        assert!(line.contains("and 37 other reasons)"), "{line}");
        assert!(line.len() < 400, "{line}");
    }
}
