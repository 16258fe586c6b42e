//! `Migration`: wires capture → journal → stitcher → replay with the live snapshot and the
//! re-copier, runs until asked to stop, then places a final fence and drains to it.
//!
//! ## Behavior
//! - Capture goes live first; only then does the snapshot read keys, so every read is a fence
//!   in the captured stream.
//! - The capture node is the source, or one of its replicas (`capture = replica`, or `auto`
//!   when a replica answers): a replica's stream carries effects, so nothing needs rewriting.
//!   Snapshot reads then go to the same replica, so that fences and writes share one order.
//! - A gap (capture or the target connection broke) triggers a fenced resync of every key.
//! - A stage that fails for good (the stitcher, when a plan hook fails under `fail`) ends the
//!   coordinator; [`Running::failure`] then resolves with its error, and every wait of
//!   [`Running`] ends with it at once rather than at its timeout.
//! - A write or restore that fails only on the target (`OOM`, `NOPERM`…) leaves its keys
//!   diverged: they are re-copied at once, and a stop that still finds keys diverged fails
//!   ([`MigrateError::TargetDiverged`]) instead of claiming the target equals the source.
//! - A stop during the snapshot (or a resync) lets it finish first: until every key is read,
//!   no fence can make the target equal to the source.
//! - Stop: catch up without pausing, then `CLIENT PAUSE … WRITE` on the source (bounded), drain
//!   the stream and the re-copies to a final marker, unpause. The target then equals the source
//!   at that marker.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::mpsc;

use crate::capture::{
    Capture, CaptureConfig, CaptureEvent, CaptureSink, Captured, DIRTY_PREFIX, PeerRegistry, Role,
};
use crate::clock::now_us;
use crate::command::CommandTable;
pub use crate::cutover::Fenced;
use crate::journal::{EntryKind, FsyncPolicy, Journal, JournalConfig};
use crate::net::{Endpoint, NetError};
use crate::replay::{
    Mapper, Op, ReplayStats, SNAPSHOT_DONE, StitchConfig, StitchEvent, StitchShared, Stitcher,
    policy, request_recopies, run_sharded,
};
use crate::snapshot::{
    DEFAULT_PAYLOAD_BUDGET, LiveSink, PayloadStore, Recopier, SnapshotConfig, Snapshotter,
};
use crate::verify::evictions::{EvictionEvents, EvictionWatch, sweep};

/// Where to capture from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize)]
pub enum CaptureMode {
    /// A replica when one answers, else the source.
    #[default]
    Auto,
    /// The source itself.
    Primary,
    /// A replica of the source (an error when none answers).
    Replica,
}

/// Migration settings.
#[derive(Clone)]
#[non_exhaustive]
pub struct MigrateConfig {
    /// Journal and state.
    pub state_dir: PathBuf,
    /// Capture node choice.
    pub capture: CaptureMode,
    /// Capture settings (the source output-buffer bound for `MONITOR` above all).
    pub capture_settings: CaptureConfig,
    /// Snapshot workers and batch sizes.
    pub snapshot: SnapshotConfig,
    /// Journal fsync policy.
    pub fsync: FsyncPolicy,
    /// Longest write pause on the source for the final fence.
    pub max_pause: Duration,
    /// Status line interval; `None` for no status lines.
    pub status_every: Option<Duration>,
    /// The plan's keyspace rules (filters, renames, db moves, hooks).
    pub mapper: Option<Arc<dyn Mapper>>,
    /// Replay connections; each key's writes stay on one.
    pub replay_shards: usize,
    /// The target already equals the source (a reverse sync started at a cutover's final
    /// fence): replay the stream from the start, with no snapshot.
    pub skip_snapshot: bool,
    /// Publish replay operations to SQS for `ferry replay` processes instead of applying them
    /// here (`ferry capture`); the flag creates the queues when missing.
    #[cfg(feature = "sqs")]
    pub publish: Option<(crate::replay::remote::QueueSpec, bool)>,
}

impl MigrateConfig {
    /// Defaults with the given state dir.
    pub fn new(state_dir: impl Into<PathBuf>) -> MigrateConfig {
        MigrateConfig {
            state_dir: state_dir.into(),
            capture: CaptureMode::Auto,
            capture_settings: CaptureConfig::default(),
            snapshot: SnapshotConfig::default(),
            fsync: FsyncPolicy::EveryMs(100),
            max_pause: Duration::from_secs(5),
            status_every: Some(Duration::from_secs(1)),
            mapper: None,
            replay_shards: crate::replay::DEFAULT_SHARDS,
            skip_snapshot: false,
            #[cfg(feature = "sqs")]
            publish: None,
        }
    }
}

/// What a migration did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MigrationReport {
    /// Where writes were captured.
    pub capture_node: String,
    /// True when the capture node was a replica.
    pub from_replica: bool,
    /// Keys read by snapshots and resyncs.
    pub snapshot_keys: u64,
    /// Resyncs after gaps.
    pub resyncs: u64,
    /// Journal entries written.
    pub journal_entries: u64,
    /// Commands answered by the target.
    pub commands: u64,
    /// Keys restored from payloads (snapshot and re-copies).
    pub restores: u64,
    /// Error replies by code, whatever their class.
    pub errors: std::collections::BTreeMap<String, u64>,
    /// Error replies the source gave too (expected: the command failed there the same way).
    pub source_errors: u64,
    /// Error replies only the target gave, by code.
    pub target_errors: std::collections::BTreeMap<String, u64>,
    /// How long source writes were paused (final fence and switch), in ms.
    pub pause_ms: u64,
    /// Of the pause, the time to drain to the final fence, in ms.
    pub fence_ms: u64,
    /// Clients held by the pause (or blocked) that were disconnected at the release.
    pub held_clients_disconnected: u64,
    /// The pause ran out before the release.
    pub pause_expired: bool,
    /// Keys the source evicted during the run (invisible in `MONITOR`; see
    /// [`crate::verify::evictions`]).
    pub evicted_keys: u64,
    /// Target keys the eviction sweeps found without a source key, re-copied through fences.
    pub eviction_recopies: u64,
    /// Keys the source evicted while the final fence was being drained, after its last sweep:
    /// the target may still hold them.
    pub evicted_during_fence: u64,
    /// Keys re-copied because replay reached them after their expiry on the target (a write
    /// the source applied while they were alive).
    pub expiry_recopies: u64,
    /// Wall time in seconds.
    pub elapsed_secs: f64,
}

impl MigrationReport {
    /// The error counts for the summary line.
    pub fn error_counts(&self) -> String {
        policy::error_counts(self.source_errors, &self.target_errors)
    }

    /// What the summary line says about keys the stream could not describe: evictions on the
    /// source and writes replayed after their key expired on the target.
    pub fn invisible_changes(&self) -> String {
        let expired = match self.expiry_recopies {
            0 => String::new(),
            n => format!("; {n} keys re-copied after expiring during replay lag"),
        };
        expired
            + &match self.evicted_keys {
                0 => String::new(),
                n => {
                    let mut s = format!(
                        "; source evicted {n} keys ({} re-copied)",
                        self.eviction_recopies
                    );
                    if self.evicted_during_fence > 0 {
                        s.push_str(&format!(
                            ", {} during the final fence may remain on the target",
                            self.evicted_during_fence
                        ));
                    }
                    s
                }
            }
    }
}

/// Why a migration could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MigrateError {
    /// A server could not be reached.
    #[error(transparent)]
    Net(#[from] NetError),
    /// The journal failed.
    #[error("journal: {0}")]
    Journal(String),
    /// A stage failed for good.
    #[error("{stage}: {message}")]
    Stage {
        stage: &'static str,
        message: String,
    },
    /// A background stage had already failed with this error (every wait that was cut short
    /// by it gets the same one).
    #[error(transparent)]
    Failed(Arc<MigrateError>),
    /// At the final fence, keys still differ because writes or restores failed only on the
    /// target (`OOM`, `NOPERM`…) and their re-copies failed too.
    #[error(
        "the target differs from the source: {keys} keys failed only on the target (e.g. {example}); errors: {errors}"
    )]
    TargetDiverged {
        keys: u64,
        example: String,
        errors: String,
    },
}

fn stage(stage: &'static str, message: impl std::fmt::Display) -> MigrateError {
    MigrateError::Stage {
        stage,
        message: message.to_string(),
    }
}

/// Capture's sink: the journal.
struct JournalSink(Journal);

impl CaptureSink for JournalSink {
    fn append(&mut self, batch: Vec<(u64, CaptureEvent)>) -> Result<(), String> {
        let items = batch
            .into_iter()
            .map(|(ts, ev)| {
                let kind = match ev {
                    CaptureEvent::Gap(reason) => EntryKind::Gap { reason },
                    CaptureEvent::Unit(Captured::Write { db, argv }) => {
                        EntryKind::Write { db, argv }
                    }
                    CaptureEvent::Unit(Captured::Atomic(cmds)) => EntryKind::Atomic(cmds),
                    CaptureEvent::Unit(Captured::KeyRead {
                        db,
                        key,
                        read_id,
                        ordinal,
                    }) => EntryKind::KeyFence {
                        db,
                        key,
                        read_id,
                        ordinal,
                    },
                    CaptureEvent::Unit(Captured::Marker { id }) => EntryKind::Marker { id },
                };
                (ts, kind)
            })
            .collect();
        self.0
            .append_many(items)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// A control connection on the capture node whose `ECHO ferry:<id>` lines are markers.
struct Markers {
    con: redis::aio::MultiplexedConnection,
    n: u64,
}

impl Markers {
    async fn connect(node: &Endpoint, peers: &PeerRegistry) -> Result<Markers, MigrateError> {
        let mut con = node.control().await?;
        let addr = crate::net::client_addr(&mut con)
            .await
            .map_err(|e| stage("markers", e))?;
        peers.register(&addr, Role::Control);
        Ok(Markers { con, n: 0 })
    }

    /// Places a marker and returns its id.
    async fn place(&mut self, what: &str) -> Result<String, MigrateError> {
        self.n += 1;
        let id = format!("{what}{}", self.n);
        self.place_id(&id).await?;
        Ok(id)
    }

    async fn place_id(&mut self, id: &str) -> Result<(), MigrateError> {
        redis::cmd("ECHO")
            .arg(format!("ferry:{id}"))
            .query_async::<()>(&mut self.con)
            .await
            .map_err(|e| stage("markers", e))
    }

    /// Asks for a fenced re-copy of each source key, from here in the stream.
    async fn place_dirty(&mut self, keys: &[(u32, Vec<u8>)]) -> Result<(), MigrateError> {
        for chunk in keys.chunks(1000) {
            let mut pipe = redis::pipe();
            for (db, key) in chunk {
                pipe.cmd("ECHO").arg(format!(
                    "ferry:{DIRTY_PREFIX}{}",
                    crate::capture::key_id(*db, key)
                ));
            }
            pipe.query_async::<()>(&mut self.con)
                .await
                .map_err(|e| stage("markers", e))?;
        }
        Ok(())
    }
}

/// Evicted keys named by the source's keyspace events, with their dbs.
type EvictedRx = mpsc::Receiver<(u32, Vec<u8>)>;

/// The source's evictions, which `MONITOR` does not show, and how far they are handled: by
/// keyspace events naming each evicted key (exact), or else by sweeps of the target.
struct Evictions {
    /// `None` when capture reads a replica (its stream shows evictions as `DEL`) or the source's
    /// counters cannot be read.
    watch: tokio::sync::Mutex<Option<EvictionWatch>>,
    /// `evicted_keys` when the migration started.
    baseline: u64,
    /// Evicted keys named by keyspace events, each re-copied through a `dirty:` marker.
    notified: AtomicU64,
    /// The events do not name every eviction (off, or the subscription broke): sweep instead.
    sweeping: AtomicBool,
    /// `evicted_keys` when the last finished sweep started: evictions up to there are handled.
    swept_from: AtomicU64,
    /// The events, while the coordinator is not holding them.
    events: tokio::sync::Mutex<Option<EvictedRx>>,
    subscriber: Option<tokio::task::JoinHandle<()>>,
}

impl Evictions {
    async fn connect(node: &Endpoint, peers: &PeerRegistry, from_replica: bool) -> Evictions {
        let mut ev = Evictions {
            watch: tokio::sync::Mutex::new(None),
            baseline: 0,
            notified: AtomicU64::new(0),
            sweeping: AtomicBool::new(false),
            swept_from: AtomicU64::new(0),
            events: tokio::sync::Mutex::new(None),
            subscriber: None,
        };
        if from_replica {
            return ev;
        }
        let Ok(mut con) = node.control().await else {
            return ev;
        };
        if let Ok(addr) = crate::net::client_addr(&mut con).await {
            peers.register(&addr, Role::Control);
        }
        let mut watch = EvictionWatch::new(node.clone(), con);
        // Subscribed before the baseline is read: every eviction it counts can have an event.
        let events = EvictionEvents::subscribe(node).await;
        let Some(baseline) = watch.evicted_keys().await else {
            return ev;
        };
        if let Some(policy) = watch.evicting_policy().await {
            tracing::warn!(
                %policy,
                "The source may evict keys, and evictions leave no trace in MONITOR: ferry \
                 re-copies the keys its keyspace events name (notify-keyspace-events with E and \
                 e), or else sweeps the target whenever the eviction counter grows."
            );
        }
        let (tx, rx) = mpsc::channel(1 << 16);
        match events {
            Ok(events) => {
                ev.subscriber = Some(tokio::spawn(async move {
                    if let Err(e) = events.run(tx).await {
                        tracing::debug!(error = %e, "The keyspace event subscription ended.");
                    }
                }));
            }
            // Without a subscription the channel closes at once: evictions are swept.
            Err(e) => tracing::debug!(error = %e, "No keyspace event subscription."),
        }
        ev.watch = tokio::sync::Mutex::new(Some(watch));
        ev.baseline = baseline;
        ev.swept_from = AtomicU64::new(baseline);
        ev.events = tokio::sync::Mutex::new(Some(rx));
        ev
    }

    /// The source's eviction counter now, when it is watched.
    async fn count(&self) -> Option<u64> {
        self.watch.lock().await.as_mut()?.evicted_keys().await
    }

    /// Stops relying on keyspace events, saying why once.
    fn start_sweeping(&self, why: &str) {
        if !self.sweeping.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "{why}: ferry sweeps the target for evicted keys instead. A key evicted and then \
                 written again can still differ; enable notify-keyspace-events with E and e on \
                 the source (an ElastiCache parameter group) to make evictions exact."
            );
        }
    }

    /// Places a `dirty:` marker for `first` and each event queued behind it.
    async fn place(
        &self,
        first: (u32, Vec<u8>),
        rx: &mut EvictedRx,
        markers: &mut Markers,
        report: &std::sync::Mutex<MigrationReport>,
    ) -> Result<(), MigrateError> {
        let mut batch = vec![first];
        while batch.len() < 4096
            && let Ok(next) = rx.try_recv()
        {
            batch.push(next);
        }
        markers.place_dirty(&batch).await?;
        self.notified
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        if let Ok(mut r) = report.lock() {
            r.eviction_recopies += batch.len() as u64;
        }
        Ok(())
    }
}

/// A target that evicts drops keys without an error reply, where no re-copy can see it: say so
/// before anything is copied.
async fn warn_if_target_evicts(target: &Endpoint) {
    let Ok(con) = target.control().await else {
        return;
    };
    if let Some(policy) = EvictionWatch::new(target.clone(), con)
        .evicting_policy()
        .await
    {
        tracing::warn!(
            %policy,
            "The target may evict keys when it reaches its memory limit, silently: it would then \
             differ from the source. Use maxmemory-policy noeviction on the target for the \
             migration (ferry then reports OOM replies instead)."
        );
    }
}

/// At the final fence: makes sure every eviction counted so far is handled before the fence
/// drains, by its keyspace event or else by one more sweep of the target. Called once before
/// the write pause (a whole sweep may take long) and once inside it, where a sweep that does not
/// finish within `limit` is abandoned: what it missed is reported.
async fn final_evictions(
    ev: &Evictions,
    (source, target): (&Endpoint, &Endpoint),
    mapper: Option<&Arc<dyn Mapper>>,
    report: &std::sync::Mutex<MigrationReport>,
    markers: &mut Markers,
    limit: Option<Duration>,
) -> Result<(), MigrateError> {
    let Some(now) = ev.count().await else {
        return Ok(());
    };
    if !ev.sweeping.load(Ordering::Relaxed) {
        // The events of evictions already counted are on their way.
        let mut events = ev.events.lock().await;
        let deadline = Instant::now() + Duration::from_secs(1);
        while ev.notified.load(Ordering::Relaxed) < now.saturating_sub(ev.baseline) {
            let Some(rx) = events.as_mut() else { break };
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, rx.recv()).await {
                Ok(Some(first)) => ev.place(first, rx, markers, report).await?,
                _ => break,
            }
        }
        if ev.notified.load(Ordering::Relaxed) >= now.saturating_sub(ev.baseline) {
            return Ok(());
        }
        ev.start_sweeping("Keyspace events did not name every eviction");
    }
    if now <= ev.swept_from.load(Ordering::Relaxed) {
        return Ok(());
    }
    let started = Instant::now();
    let swept = match limit {
        None => sweep(source, target, mapper).await,
        Some(limit) => match tokio::time::timeout(limit, sweep(source, target, mapper)).await {
            Ok(r) => r,
            Err(_) => {
                tracing::warn!(
                    limit_ms = limit.as_millis() as u64,
                    "The eviction sweep did not fit in the write pause; keys evicted since the last sweep may remain on the target."
                );
                return Ok(());
            }
        },
    };
    let keys = swept.map_err(|e| stage("eviction sweep", e))?;
    markers.place_dirty(&keys).await?;
    ev.swept_from.store(now, Ordering::Relaxed);
    if let Ok(mut r) = report.lock() {
        r.eviction_recopies += keys.len() as u64;
    }
    tracing::info!(
        keys = keys.len(),
        ms = started.elapsed().as_millis() as u64,
        paused = limit.is_some(),
        "Final eviction sweep: target keys without a source key are re-copied."
    );
    Ok(())
}

type SweepTask =
    tokio::task::JoinHandle<(u64, Result<Vec<(u32, Vec<u8>)>, crate::verify::VerifyError>)>;

fn spawn_sweep(c: &Coordinator, from: u64) -> SweepTask {
    let (source, target, mapper) = (c.node.clone(), c.target.clone(), c.mapper.clone());
    tokio::spawn(async move { (from, sweep(&source, &target, mapper.as_ref()).await) })
}

/// Finds a healthy replica of `source` from `INFO replication`.
async fn find_replica(source: &Endpoint) -> Option<Endpoint> {
    let mut con = source.control().await.ok()?;
    let info: String = redis::cmd("INFO")
        .arg("replication")
        .query_async(&mut con)
        .await
        .ok()?;
    for line in info.lines().filter(|l| l.starts_with("slave")) {
        // `slave0:ip=::1,port=6380,state=online,…`: only the first colon ends the name (an IPv6
        // address has more).
        let Some((_, fields)) = line.split_once(':') else {
            continue;
        };
        let field = |k: &str| {
            fields
                .split(',')
                .find_map(|f| f.strip_prefix(k))
                .map(str::to_string)
        };
        let (Some(ip), Some(port)) = (field("ip="), field("port=")) else {
            continue;
        };
        if field("state=").as_deref() != Some("online") {
            continue;
        }
        let Ok(port) = port.parse() else { continue };
        let ep = source.with_host_port(&ip, port);
        let Ok(mut rc) = ep.control().await else {
            continue;
        };
        let rinfo: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut rc)
            .await
            .unwrap_or_default();
        if rinfo.contains("master_link_status:up") {
            return Some(ep);
        }
    }
    None
}

/// A migration, before it starts.
pub struct Migration {
    source: Endpoint,
    target: Endpoint,
    cfg: MigrateConfig,
}

/// A started migration: capture, replay and the snapshot run in the background.
pub struct Running {
    source: Endpoint,
    target: Endpoint,
    node: Endpoint,
    from_replica: bool,
    cfg: MigrateConfig,
    started: Instant,
    journal: Journal,
    shared: Arc<StitchShared>,
    stats: Arc<ReplayStats>,
    markers: Arc<tokio::sync::Mutex<Markers>>,
    peers: Arc<PeerRegistry>,
    evictions: Arc<Evictions>,
    report: Arc<std::sync::Mutex<MigrationReport>>,
    stop_tx: tokio::sync::watch::Sender<bool>,
    coordinator: tokio::task::JoinHandle<Result<crate::capture::CaptureHandle, MigrateError>>,
    /// Set when the coordinator fails; closed (still `None`) when it ends any other way. Every
    /// wait selects on it, so a dead pipeline ends them at once instead of at their timeouts.
    failure: tokio::sync::watch::Receiver<Option<Arc<MigrateError>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// With a split replay: the queues whose emptiness means "applied".
    #[cfg(feature = "sqs")]
    split_queues: Option<Vec<crate::journal::sqs::SqsQueue>>,
}

impl Migration {
    /// A migration from `source` to `target`.
    pub fn new(source: Endpoint, target: Endpoint, cfg: MigrateConfig) -> Migration {
        Migration {
            source,
            target,
            cfg,
        }
    }

    /// Runs until `stop` completes (or a stage fails), then drains to a final fence.
    pub async fn run(
        self,
        stop: impl std::future::Future<Output = ()>,
    ) -> Result<MigrationReport, MigrateError> {
        let running = self.start().await?;
        tokio::select! {
            _ = stop => {}
            failed = running.failure() => return Err(failed),
        }
        running.finish().await
    }

    #[cfg(feature = "sqs")]
    async fn split_publisher(
        &self,
        table: &Arc<CommandTable>,
    ) -> Result<Option<crate::replay::remote::Publisher>, MigrateError> {
        let Some((spec, create)) = &self.cfg.publish else {
            return Ok(None);
        };
        crate::replay::remote::Publisher::connect(
            spec.clone(),
            table.clone(),
            &self.cfg.state_dir,
            *create,
        )
        .await
        .map(Some)
        .map_err(|e| stage("publish", e))
    }

    #[cfg(not(feature = "sqs"))]
    async fn split_publisher(&self, _: &Arc<CommandTable>) -> Result<Option<()>, MigrateError> {
        Ok(None)
    }

    /// Starts capture, then the snapshot, the stitcher and replay; returns at once.
    pub async fn start(self) -> Result<Running, MigrateError> {
        let started = Instant::now();
        let mut report = MigrationReport::default();
        let mut src = self.source.control().await?;
        self.target.control().await?;
        let table = Arc::new(match CommandTable::load(&mut src).await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "Using the built-in Redis 7.0 command table.");
                CommandTable::from_specs(
                    CommandTable::builtin().iter().cloned().collect(),
                    crate::command::TableOrigin::Builtin,
                )
            }
        });

        let replica = match self.cfg.capture {
            CaptureMode::Primary => None,
            CaptureMode::Auto | CaptureMode::Replica => find_replica(&self.source).await,
        };
        if self.cfg.capture == CaptureMode::Replica && replica.is_none() {
            return Err(stage(
                "capture",
                format!(
                    "capture = replica, but {} has no reachable, healthy replica",
                    self.source
                ),
            ));
        }
        let node = replica.clone().unwrap_or_else(|| self.source.clone());
        report.from_replica = replica.is_some();
        report.capture_node = node.redacted().to_string();
        let why = match (self.cfg.capture, report.from_replica) {
            (CaptureMode::Auto, true) => "auto: chose the replica, a healthy one answers",
            (CaptureMode::Auto, false) => "auto: chose the primary, no healthy replica answers",
            (CaptureMode::Replica, _) => "capture = replica",
            (CaptureMode::Primary, _) => "capture = primary",
        };
        tracing::info!(
            node = %node,
            mode = if report.from_replica { "replica (effects stream)" } else { "primary (command stream)" },
            why,
            "Capturing writes."
        );

        // A previous run's journal cannot be continued across the downtime; the resync below
        // reconciles the target instead.
        let journal_dir = self.cfg.state_dir.join("journal");
        if journal_dir.exists() {
            tracing::info!(
                "Found a previous run's journal; starting a fresh journal and a full fenced resync."
            );
            std::fs::remove_dir_all(&journal_dir)
                .map_err(|e| MigrateError::Journal(format!("{}: {e}", journal_dir.display())))?;
        }
        let mut jcfg = JournalConfig::new(&journal_dir);
        jcfg.fsync = self.cfg.fsync;
        let journal = Journal::open(jcfg).map_err(|e| MigrateError::Journal(e.to_string()))?;

        let peers = PeerRegistry::new();
        let store = Arc::new(PayloadStore::new(DEFAULT_PAYLOAD_BUDGET));
        let (recopier, recopy_rx) = Recopier::channel();
        let recopy_node = node.clone();
        let recopy_peers = peers.clone();
        let recopy_store = store.clone();
        let recopy_task = tokio::spawn(async move {
            if let Err(e) = Recopier::run(recopy_node, recopy_peers, recopy_store, recopy_rx).await
            {
                tracing::error!(error = %e, "The re-copier stopped.");
            }
        });

        let mut capture = Capture::new(
            node.clone(),
            table.clone(),
            peers.clone(),
            self.cfg.capture_settings.clone(),
        )
        .spawn(JournalSink(journal.clone()));
        if !capture.wait_live().await {
            let e = capture.stop().await.err().unwrap_or_default();
            return Err(stage("capture", e));
        }

        let stats = Arc::new(ReplayStats::default());
        let (ops_tx, ops_rx) = mpsc::channel::<Op>(8192);
        let (replay_broken_tx, replay_broken) = mpsc::unbounded_channel::<String>();
        let (recopy_tx, recopy_rx) = mpsc::unbounded_channel();
        let recopy_requests =
            tokio::spawn(request_recopies(node.clone(), recopy_rx, stats.clone()));
        #[cfg(feature = "sqs")]
        let split_shards = self.cfg.publish.as_ref().map(|(spec, _)| spec.shards);
        #[cfg(not(feature = "sqs"))]
        let split_shards = None;
        #[cfg(feature = "sqs")]
        let mut split_queues = None;
        let replay_task = match self.split_publisher(&table).await? {
            #[cfg(feature = "sqs")]
            Some(publisher) => {
                split_queues = Some(publisher.queues());
                tokio::spawn(publisher.run(ops_rx, stats.clone(), replay_broken_tx))
            }
            _ => tokio::spawn(run_sharded(
                self.target.clone(),
                self.cfg.replay_shards,
                table.clone(),
                ops_rx,
                stats.clone(),
                replay_broken_tx,
                recopy_tx,
            )),
        };

        let shared = Arc::new(StitchShared::default());
        let stitch_cfg = StitchConfig {
            exact_effects: report.from_replica,
            mapper: self.cfg.mapper.clone(),
            split_shards,
            ..StitchConfig::default()
        };
        let (stitch_tx, stitch_events) = mpsc::unbounded_channel();
        let stitcher = Stitcher::new(
            table.clone(),
            store.clone(),
            recopier.clone(),
            stitch_cfg,
            shared.clone(),
        );
        if self.cfg.skip_snapshot {
            shared.snapshot_mode.store(false, Ordering::Relaxed);
        }
        let reader = journal
            .reader(journal.next_seq())
            .map_err(|e| MigrateError::Journal(e.to_string()))?;
        let (stitch_failed_tx, stitch_failed) = mpsc::unbounded_channel::<String>();
        let stitch_task = tokio::spawn(async move {
            if let Err(e) = stitcher.run(reader, ops_tx, stitch_tx).await {
                let _ = stitch_failed_tx.send(e);
            }
        });

        let markers = Arc::new(tokio::sync::Mutex::new(
            Markers::connect(&node, &peers).await?,
        ));
        let evictions = Arc::new(Evictions::connect(&node, &peers, replica.is_some()).await);
        warn_if_target_evicts(&self.target).await;
        let report = Arc::new(std::sync::Mutex::new(report));
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let (failure_tx, failure) = tokio::sync::watch::channel(None);
        let coordinator = coordinate(Coordinator {
            node: node.clone(),
            target: self.target.clone(),
            snapshot_cfg: self.cfg.snapshot.clone(),
            mapper: self.cfg.mapper.clone(),
            store,
            peers: peers.clone(),
            capture,
            journal: journal.clone(),
            stats: stats.clone(),
            shared: shared.clone(),
            markers: markers.clone(),
            evictions: evictions.clone(),
            report: report.clone(),
            status_every: self.cfg.status_every,
            skip_snapshot: self.cfg.skip_snapshot,
            stitch_events,
            stitch_failed,
            replay_broken,
            stop: stop_rx,
        });
        let coordinator = tokio::spawn(async move {
            match coordinator.await {
                Ok(capture) => Ok(capture),
                Err(e) => {
                    let e = Arc::new(e);
                    failure_tx.send_replace(Some(e.clone()));
                    Err(MigrateError::Failed(e))
                }
            }
        });
        Ok(Running {
            source: self.source,
            target: self.target,
            node,
            from_replica: replica.is_some(),
            cfg: self.cfg,
            started,
            journal,
            shared,
            stats,
            markers,
            peers,
            evictions,
            report,
            stop_tx,
            coordinator,
            failure,
            tasks: vec![stitch_task, replay_task, recopy_task, recopy_requests],
            #[cfg(feature = "sqs")]
            split_queues,
        })
    }
}

/// What the background coordinator owns.
struct Coordinator {
    node: Endpoint,
    target: Endpoint,
    snapshot_cfg: SnapshotConfig,
    mapper: Option<Arc<dyn Mapper>>,
    store: Arc<PayloadStore>,
    peers: Arc<PeerRegistry>,
    capture: crate::capture::CaptureHandle,
    journal: Journal,
    stats: Arc<ReplayStats>,
    shared: Arc<StitchShared>,
    markers: Arc<tokio::sync::Mutex<Markers>>,
    evictions: Arc<Evictions>,
    report: Arc<std::sync::Mutex<MigrationReport>>,
    status_every: Option<Duration>,
    skip_snapshot: bool,
    stitch_events: mpsc::UnboundedReceiver<StitchEvent>,
    stitch_failed: mpsc::UnboundedReceiver<String>,
    replay_broken: mpsc::UnboundedReceiver<String>,
    stop: tokio::sync::watch::Receiver<bool>,
}

type SnapshotTask = tokio::task::JoinHandle<(
    u64,
    Result<crate::snapshot::SnapshotReport, crate::snapshot::SnapshotError>,
)>;

fn spawn_snapshot(c: &Coordinator, epoch: u64) -> SnapshotTask {
    let snap = Snapshotter::new(c.node.clone(), c.target.clone(), c.snapshot_cfg.clone());
    let sink = LiveSink {
        store: c.store.clone(),
        peers: c.peers.clone(),
        mapper: c.mapper.clone(),
    };
    tokio::spawn(async move {
        // After a gap the target may still be restarting: wait for it rather than fail.
        let mut attempt = 0;
        loop {
            match snap.run_live(sink.clone()).await {
                Err(crate::snapshot::SnapshotError::Net(e)) if attempt < 60 => {
                    attempt += 1;
                    tracing::warn!(error = %e, "Snapshot cannot start yet; retrying.");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                other => return (epoch, other),
            }
        }
    })
}

/// Runs the snapshot, resyncs after gaps and prints status until told to stop; hands the
/// capture back for the final fence.
async fn coordinate(mut c: Coordinator) -> Result<crate::capture::CaptureHandle, MigrateError> {
    let mut snap_task = if c.skip_snapshot {
        None
    } else {
        tracing::info!("Snapshot started.");
        Some(spawn_snapshot(&c, 0))
    };
    let mut snapshot_started = Instant::now();
    let mut status = c.status_every.map(tokio::time::interval);
    let mut trim = tokio::time::interval(Duration::from_secs(1));
    let mut sweep_task: Option<SweepTask> = None;
    let mut evicted_seen = c.evictions.baseline;
    let mut events = c.evictions.events.lock().await.take();
    // A stop asked for while keys are still being read: the final fence waits for the reads,
    // since only a complete snapshot makes the target equal to the source.
    let mut stopping = false;
    // Every way out passes the clean-up below: a sweep left running would go on detached.
    let result: Result<(), MigrateError> = async {
        loop {
            tokio::select! {
                _ = c.stop.changed(), if !stopping => {
                    if snap_task.is_none() {
                        return Ok(());
                    }
                    stopping = true;
                    tracing::info!("Stop requested during the snapshot: finishing its reads first, then placing the final fence.");
                }
                Some(e) = c.stitch_failed.recv() => return Err(stage("stitcher", e)),
                Some(StitchEvent::Resync { epoch, reason }) = c.stitch_events.recv() => {
                    tracing::warn!(%reason, epoch, "Gap in the stream: resyncing every key with fenced reads.");
                    if let Ok(mut r) = c.report.lock() {
                        r.resyncs += 1;
                    }
                    if let Some(t) = snap_task.take() {
                        t.abort();
                    }
                    c.capture.wait_live().await;
                    snap_task = Some(spawn_snapshot(&c, epoch));
                    snapshot_started = Instant::now();
                }
                Some(reason) = c.replay_broken.recv() => {
                    // Shards that broke together (a target restart or failover hits them all) need
                    // one resync, not one each.
                    let mut others = 0;
                    while c.replay_broken.try_recv().is_ok() {
                        others += 1;
                    }
                    tracing::warn!(%reason, others, "The target connection broke; a resync follows.");
                    c.journal
                        .append(now_us(), EntryKind::Gap { reason: format!("target: {reason}") })
                        .map_err(|e| MigrateError::Journal(e.to_string()))?;
                }
                done = async { snap_task.as_mut().expect("guarded").await }, if snap_task.is_some() => {
                    snap_task = None;
                    match done {
                        Ok((epoch, Ok(r))) => {
                            if let Ok(mut rep) = c.report.lock() {
                                rep.snapshot_keys += r.keys;
                            }
                            tracing::info!(keys = r.keys, secs = snapshot_started.elapsed().as_secs_f64(), "Snapshot reads done.");
                            c.markers.lock().await.place_id(&format!("{SNAPSHOT_DONE}{epoch}")).await?;
                            if stopping {
                                return Ok(());
                            }
                        }
                        Ok((_, Err(e))) => return Err(stage("snapshot", e)),
                        Err(e) if e.is_cancelled() => {}
                        Err(e) => return Err(stage("snapshot", e)),
                    }
                }
                _ = async { status.as_mut().expect("guarded").tick().await }, if status.is_some() => {
                    print_status(&c.journal, &c.stats, &c.shared);
                }
                _ = trim.tick() => {
                    // A marker per tick lets replay report how far it has applied; whole journal
                    // segments before that are deleted, so disk use follows the lag, not the run.
                    let through = c.shared.applied_through.load(Ordering::Relaxed);
                    if through > 0
                        && let Err(e) = c.journal.remove_before(through)
                    {
                        tracing::warn!(error = %e, "Could not trim the journal.");
                    }
                    c.markers.lock().await.place("tick-").await?;
                    if let Some(n) = c.evictions.count().await {
                        let ev = &c.evictions;
                        if n < evicted_seen {
                            // The counter went back (a restart, CONFIG RESETSTAT): what the
                            // events named can no longer be matched against it.
                            ev.start_sweeping("The source's eviction counter went back");
                            ev.swept_from.store(0, Ordering::Relaxed);
                            evicted_seen = n;
                        }
                        // A second is plenty for the events of the evictions counted a tick ago.
                        if !ev.sweeping.load(Ordering::Relaxed)
                            && ev.notified.load(Ordering::Relaxed) < evicted_seen.saturating_sub(ev.baseline)
                        {
                            ev.start_sweeping("The source evicts keys its keyspace events do not name");
                        }
                        evicted_seen = evicted_seen.max(n);
                        if ev.sweeping.load(Ordering::Relaxed)
                            && n > ev.swept_from.load(Ordering::Relaxed)
                            && sweep_task.is_none()
                        {
                            sweep_task = Some(spawn_sweep(&c, n));
                        }
                    }
                }
                msg = async { events.as_mut().expect("guarded").recv().await }, if events.is_some() => {
                    match (msg, events.as_mut()) {
                        (Some(first), Some(rx)) => {
                            let mut markers = c.markers.lock().await;
                            c.evictions.place(first, rx, &mut markers, &c.report).await?;
                        }
                        _ => events = None,
                    }
                }
                done = async { sweep_task.as_mut().expect("guarded").await }, if sweep_task.is_some() => {
                    sweep_task = None;
                    match done {
                        Ok((from, Ok(keys))) => {
                            tracing::info!(keys = keys.len(), "Eviction sweep: target keys without a source key are re-copied.");
                            c.markers.lock().await.place_dirty(&keys).await?;
                            c.evictions.swept_from.store(from, Ordering::Relaxed);
                            if let Ok(mut r) = c.report.lock() {
                                r.eviction_recopies += keys.len() as u64;
                            }
                        }
                        Ok((_, Err(e))) => tracing::warn!(error = %e, "Eviction sweep failed; the next one retries."),
                        Err(e) => tracing::warn!(error = %e, "Eviction sweep failed; the next one retries."),
                    }
                    // Evictions while it ran may be behind it: sweep again.
                    if c.evictions.sweeping.load(Ordering::Relaxed)
                        && evicted_seen > c.evictions.swept_from.load(Ordering::Relaxed)
                    {
                        sweep_task = Some(spawn_sweep(&c, evicted_seen));
                    }
                }
            }
        }
    }
    .await;
    if let Some(t) = snap_task.take() {
        t.abort();
    }
    if let Some(t) = sweep_task.take() {
        // The final fence sweeps whatever it had not finished.
        t.abort();
    }
    *c.evictions.events.lock().await = events;
    result.map(|()| c.capture)
}

impl Running {
    /// Resolves with the error once a background stage has failed for good (the stitcher, a
    /// hook under `on_hook_error = "fail"`, the snapshot, the journal); pending while the
    /// migration runs. Takes `&self`, so any wait can select on it.
    pub async fn failure(&self) -> MigrateError {
        let mut rx = self.failure.clone();
        match rx.wait_for(Option::is_some).await {
            Ok(e) => match e.as_ref() {
                Some(e) => MigrateError::Failed(e.clone()),
                None => stage("coordinator", "stopped unexpectedly"),
            },
            // The coordinator ended without an error while `self` is alive: it can only have
            // panicked, since a clean stop consumes `self`.
            Err(_) => stage("coordinator", "stopped unexpectedly"),
        }
    }

    /// The failure, if a background stage has failed by now.
    pub fn failure_now(&self) -> Option<MigrateError> {
        if let Some(e) = self.failure.borrow().as_ref() {
            return Some(MigrateError::Failed(e.clone()));
        }
        self.coordinator
            .is_finished()
            .then(|| stage("coordinator", "stopped unexpectedly"))
    }

    /// Runs `fut` unless a background stage fails first; its failure is then the result.
    pub async fn unless_failed<T, E: From<MigrateError>>(
        &self,
        fut: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        tokio::select! {
            r = fut => r,
            e = self.failure() => Err(e.into()),
        }
    }

    /// The state directory (journal and checkpoints).
    pub fn state_dir(&self) -> &std::path::Path {
        &self.cfg.state_dir
    }

    /// True while a snapshot or resync is still reading keys.
    pub fn in_snapshot(&self) -> bool {
        self.shared.snapshot_mode.load(Ordering::Relaxed)
    }

    /// Waits until the snapshot is complete in the stream (every later write replays exactly).
    pub async fn wait_snapshot(&self, timeout: Duration) -> Result<(), MigrateError> {
        let deadline = Instant::now() + timeout;
        while self.in_snapshot() {
            if let Some(e) = self.failure_now() {
                return Err(e);
            }
            if Instant::now() > deadline {
                return Err(stage("snapshot", "did not finish in time"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// How far replay is behind the source: the time a marker takes from the source's stream to
    /// the target.
    pub async fn measure_lag(&self, timeout: Duration) -> Result<Duration, MigrateError> {
        self.unless_failed(async {
            let placed = Instant::now();
            let id = self.markers.lock().await.place("lag-").await?;
            if self.shared.wait_marker(&id, timeout).await {
                Ok(placed.elapsed())
            } else {
                Err(stage("catch up", "replay did not reach the marker in time"))
            }
        })
        .await
    }

    /// Waits until the measured lag is at most `max`.
    pub async fn wait_lag(
        &self,
        max: Duration,
        timeout: Duration,
    ) -> Result<Duration, MigrateError> {
        let deadline = Instant::now() + timeout;
        loop {
            let lag = self.measure_lag(timeout).await?;
            if lag <= max && !self.in_snapshot() && self.shared.dirty.load(Ordering::Relaxed) == 0 {
                return Ok(lag);
            }
            if Instant::now() > deadline {
                return Err(stage(
                    "catch up",
                    format!("lag is still {} ms", lag.as_millis()),
                ));
            }
            self.sleep(Duration::from_millis(50)).await?;
        }
    }

    /// With a split replay, waits until the replay processes have applied and deleted
    /// everything published (every queue empty, three readings in a row); at once otherwise.
    pub async fn wait_applied(&self, timeout: Duration) -> Result<(), MigrateError> {
        #[cfg(feature = "sqs")]
        if let Some(queues) = &self.split_queues {
            return self.unless_failed(wait_drained(queues, timeout)).await;
        }
        let _ = timeout;
        Ok(())
    }

    /// Sleeps for `d`, or less when a background stage fails meanwhile (the failure is then
    /// the result).
    pub async fn sleep(&self, d: Duration) -> Result<(), MigrateError> {
        self.unless_failed(async {
            tokio::time::sleep(d).await;
            Ok(())
        })
        .await
    }

    /// True when `ferry replay` processes apply this migration's operations.
    pub fn split(&self) -> bool {
        #[cfg(feature = "sqs")]
        return self.split_queues.is_some();
        #[cfg(not(feature = "sqs"))]
        false
    }

    /// What a fenced verification of this migration needs: source reads go to the capture
    /// node, so that their fences are in the replayed stream.
    pub fn fence_link(&self) -> crate::verify::FenceLink {
        crate::verify::FenceLink {
            node: self.node.clone(),
            target: self.target.clone(),
            peers: self.peers.clone(),
            shared: self.shared.clone(),
            mapper: self.cfg.mapper.clone(),
        }
    }

    /// Compares source and target at shared stream positions while writes go on.
    pub async fn verify(
        &self,
        cfg: crate::verify::VerifyConfig,
        rules: Option<Arc<dyn crate::verify::VerifyRules>>,
    ) -> Result<crate::verify::VerifyReport, crate::verify::VerifyError> {
        let mut v = crate::verify::FencedVerifier::new(self.fence_link(), cfg);
        if let Some(r) = rules {
            v = v.with_rules(r);
        }
        v.run().await
    }

    /// Stops at a final fence: the target then equals the source at that fence.
    pub async fn finish(self) -> Result<MigrationReport, MigrateError> {
        self.fence().await?.release(false).await
    }

    /// Pauses source writes, drains to a final fence and stops capture and replay; returns
    /// with the source still paused, for a switch. The target then equals the source.
    pub async fn fence(self) -> Result<Fenced, MigrateError> {
        tracing::info!("Stopping: placing the final fence.");
        let _ = self.stop_tx.send(true);
        let capture = match self.coordinator.await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(e),
            Err(e) => return Err(stage("coordinator", e)),
        };
        let shared = &self.shared;
        let mut markers = self.markers.lock().await;
        let catchup = markers.place("catchup-").await?;
        if !shared
            .wait_marker(&catchup, Duration::from_secs(3600))
            .await
        {
            return Err(stage("final fence", "replay did not catch up"));
        }
        final_evictions(
            &self.evictions,
            (&self.node, &self.target),
            self.cfg.mapper.as_ref(),
            &self.report,
            &mut markers,
            None,
        )
        .await?;
        let mut src = self.source.control().await?;
        let pause_started = Instant::now();
        let paused = redis::cmd("CLIENT")
            .arg("PAUSE")
            .arg(self.cfg.max_pause.as_millis() as u64)
            .arg("WRITE")
            .query_async::<()>(&mut src)
            .await;
        if let Err(e) = &paused {
            tracing::warn!(error = %e, "The source refuses CLIENT PAUSE; the final fence is taken without pausing writes.");
        }
        if self.from_replica && paused.is_ok() {
            wait_replica_caught_up(&self.source, &self.node).await;
        }
        let result = async {
            final_evictions(
                &self.evictions,
                (&self.node, &self.target),
                self.cfg.mapper.as_ref(),
                &self.report,
                &mut markers,
                Some(self.cfg.max_pause / 2),
            )
            .await?;
            let drain = markers.place("drain-").await?;
            if !shared.wait_marker(&drain, self.cfg.max_pause * 4).await {
                return Err(stage(
                    "final fence",
                    "replay did not reach the drain marker",
                ));
            }
            let deadline = Instant::now() + self.cfg.max_pause * 4;
            // Re-copies replay asked for (a write applied after its key's expiry, a write the
            // target alone refused) travel through the source's stream: wait until each is in
            // it, then until the stitcher has read that far, so that the dirty set below
            // includes them.
            // (A request placed just before this check is in the stream already but maybe not
            // read yet: the marker is placed whatever the count says.)
            while self.stats.recopies_outstanding.load(Ordering::Relaxed) > 0 {
                if Instant::now() > deadline {
                    return Err(stage("final fence", "re-copy requests were not placed"));
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let requests = markers.place("requests-").await?;
            if !shared.wait_marker(&requests, self.cfg.max_pause * 4).await {
                return Err(stage(
                    "final fence",
                    "replay did not reach the re-copy requests",
                ));
            }
            while shared.dirty.load(Ordering::Relaxed) > 0
                || shared.snapshot_mode.load(Ordering::Relaxed)
            {
                if shared.snapshot_mode.load(Ordering::Relaxed) {
                    // The stream broke while stopping: some keys were never re-read. A new run
                    // starts a fresh journal and resyncs every key, so nothing is lost.
                    return Err(stage(
                        "final fence",
                        "the stream broke while stopping, so a resync was left unfinished; run again to resync every key",
                    ));
                }
                if Instant::now() > deadline {
                    return Err(stage("final fence", "re-copies did not finish"));
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            if self.from_replica && paused.is_ok() {
                fix_stream_groups(shared, &self.source, &self.target).await?;
            }
            let last = markers.place("final-").await?;
            if !shared.wait_marker(&last, self.cfg.max_pause * 4).await {
                return Err(stage(
                    "final fence",
                    "replay did not reach the final marker",
                ));
            }
            if let Some(n) = self.evictions.count().await {
                let ev = &self.evictions;
                let handled = if ev.sweeping.load(Ordering::Relaxed) {
                    ev.swept_from.load(Ordering::Relaxed)
                } else {
                    ev.baseline + ev.notified.load(Ordering::Relaxed)
                };
                if let Ok(mut r) = self.report.lock() {
                    r.evicted_keys = n.saturating_sub(self.evictions.baseline);
                    r.evicted_during_fence = n.saturating_sub(handled);
                }
                if n > handled {
                    tracing::warn!(
                        evicted = n - handled,
                        "The source evicted keys during the final fence; the target may still hold them (ferry verify lists them)."
                    );
                }
            }
            // Published is not applied: with a split replay, wait for the replay processes.
            #[cfg(feature = "sqs")]
            if let Some(queues) = &self.split_queues {
                wait_drained(queues, self.cfg.max_pause * 4).await?;
            }
            // Everything before the final marker is answered, re-copies included: a key still
            // in the ledger differs from the source at this fence.
            let (keys, example) = self.stats.diverged_summary();
            if keys > 0 {
                let target = self
                    .stats
                    .target_errors
                    .lock()
                    .map(|e| e.clone())
                    .unwrap_or_default();
                return Err(MigrateError::TargetDiverged {
                    keys,
                    example: example.unwrap_or_default(),
                    errors: policy::error_counts(
                        self.stats.source_errors.load(Ordering::Relaxed),
                        &target,
                    ),
                });
            }
            Ok(())
        }
        .await;
        let fenced_ms = pause_started.elapsed().as_millis() as u64;
        let mut report = self.report.lock().map(|r| r.clone()).unwrap_or_default();
        if let Err(e) = result {
            if paused.is_ok() {
                let _ = redis::cmd("CLIENT")
                    .arg("UNPAUSE")
                    .query_async::<()>(&mut src)
                    .await;
            }
            return Err(e);
        }

        let _ = capture.stop().await;
        for t in self.tasks.iter().chain(&self.evictions.subscriber) {
            t.abort();
        }
        let _ = self.journal.sync();
        report.journal_entries = self.journal.next_seq();
        report.commands = self.stats.commands.load(Ordering::Relaxed);
        report.restores = self.stats.restores.load(Ordering::Relaxed);
        report.expiry_recopies = self.stats.expiry_recopies.load(Ordering::Relaxed);
        report.errors = self
            .stats
            .errors
            .lock()
            .map(|e| e.clone())
            .unwrap_or_default();
        report.source_errors = self.stats.source_errors.load(Ordering::Relaxed);
        report.target_errors = self
            .stats
            .target_errors
            .lock()
            .map(|e| e.clone())
            .unwrap_or_default();
        report.fence_ms = fenced_ms;
        Ok(Fenced::new(
            self.source,
            self.target,
            paused.is_ok().then_some(src),
            pause_started,
            self.cfg.max_pause,
            self.started,
            report,
        ))
    }
}

#[cfg(feature = "sqs")]
async fn wait_drained(
    queues: &[crate::journal::sqs::SqsQueue],
    timeout: Duration,
) -> Result<(), MigrateError> {
    let deadline = Instant::now() + timeout;
    let mut quiet = 0;
    loop {
        let mut held = 0;
        for q in queues {
            let s = q.stats().await.map_err(|e| stage("split replay", e))?;
            held += s.visible + s.in_flight + s.delayed;
        }
        quiet = if held == 0 { quiet + 1 } else { 0 };
        if quiet >= 3 {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(stage(
                "split replay",
                format!(
                    "the queues still hold {held} messages: are `ferry replay` processes running?"
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Copies consumer-group positions (last-delivered id and entries-read) of the streams a
/// replica's stream could not carry exactly, from the paused primary to the target.
async fn fix_stream_groups(
    shared: &StitchShared,
    primary: &Endpoint,
    target: &Endpoint,
) -> Result<(), MigrateError> {
    let keys: Vec<(u32, Vec<u8>)> = shared
        .group_fixups
        .lock()
        .map(|f| f.iter().cloned().collect())
        .unwrap_or_default();
    if keys.is_empty() {
        return Ok(());
    }
    let mut p = primary.control().await?;
    let mut t = target.control().await?;
    for (db, key) in keys {
        let err = |e: redis::RedisError| stage("final fence", format!("stream groups: {e}"));
        redis::cmd("SELECT")
            .arg(db)
            .query_async::<()>(&mut p)
            .await
            .map_err(err)?;
        redis::cmd("SELECT")
            .arg(db)
            .query_async::<()>(&mut t)
            .await
            .map_err(err)?;
        let groups: Vec<std::collections::HashMap<String, redis::Value>> = match redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&key)
            .query_async(&mut p)
            .await
        {
            Ok(g) => g,
            // The stream is gone or not a stream any more: nothing to fix.
            Err(_) => continue,
        };
        for g in groups {
            let text = |k: &str| match g.get(k) {
                Some(redis::Value::BulkString(b)) => Some(String::from_utf8_lossy(b).into_owned()),
                Some(redis::Value::SimpleString(s)) => Some(s.clone()),
                Some(redis::Value::Int(i)) => Some(i.to_string()),
                _ => None,
            };
            let (Some(name), Some(last)) = (text("name"), text("last-delivered-id")) else {
                continue;
            };
            let mut cmd = redis::cmd("XGROUP");
            cmd.arg("SETID").arg(&key).arg(name).arg(last);
            if let Some(n) = text("entries-read") {
                cmd.arg("ENTRIESREAD").arg(n);
            }
            cmd.query_async::<()>(&mut t).await.map_err(err)?;
        }
    }
    Ok(())
}

/// After pausing the primary, waits until the replica has applied everything it was sent.
async fn wait_replica_caught_up(primary: &Endpoint, replica: &Endpoint) {
    let offset = |info: &str, key: &str| -> Option<i64> {
        info.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().parse().ok())
    };
    let (Ok(mut p), Ok(mut r)) = (primary.control().await, replica.control().await) else {
        return;
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let pi: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut p)
            .await
            .unwrap_or_default();
        let ri: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut r)
            .await
            .unwrap_or_default();
        if let (Some(a), Some(b)) = (
            offset(&pi, "master_repl_offset:"),
            offset(&ri, "slave_repl_offset:"),
        ) && b >= a
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn print_status(journal: &Journal, stats: &ReplayStats, shared: &StitchShared) {
    let applied = stats.applied.load(Ordering::Relaxed);
    let pending = journal.next_seq().saturating_sub(applied);
    let last = shared.last_ts_us.load(Ordering::Relaxed);
    let lag_ms = if pending == 0 || last == 0 {
        0
    } else {
        now_us().saturating_sub(last) / 1000
    };
    let phase = if shared.snapshot_mode.load(Ordering::Relaxed) {
        "snapshot"
    } else {
        "replay"
    };
    tracing::info!(
        phase,
        lag_ms,
        pending,
        applied,
        dirty = shared.dirty.load(Ordering::Relaxed),
        restores = stats.restores.load(Ordering::Relaxed),
        errors = stats.error_count(),
        target_errors = stats.target_error_count(),
        journal_mb = journal.disk_bytes() >> 20,
        "Status."
    );
}
