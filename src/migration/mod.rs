//! A migration, whole: [`Migration`] wires capture → journal → stitcher → replay with the live
//! snapshot and the re-copier, runs until asked to stop, then places a final fence and drains to
//! it; [`PlanRunner`] drives one through a plan's phases.
//!
//! ## Layout
//! - `config.rs`, `report.rs`: what a migration is told and what it tells.
//! - `mod.rs` ([`Migration::start`]): the stages and their channels.
//! - `coordinator.rs`: the background loop (snapshot, resyncs, trimming, evictions, status).
//! - `running.rs` ([`Running`]): waits, lag, fenced verification while it runs.
//! - `markers.rs`: positions placed in the source's stream.
//! - `functions.rs`: whether the source's function libraries are copied, or the run refused.
//! - `older.rs`: a target older than the source or before 6.2: streams toward 4.0 refused, and
//!   what replay writes instead (logged with the engines).
//! - `fence.rs`, `switch.rs` ([`Fenced`]): the final fence, the switch and the reverse sync.
//! - `evictions.rs`, `replica.rs`: what `MONITOR` does not show (evictions) or cannot carry
//!   (a replica's stream-group positions).
//! - `runner.rs`, `phases.rs`, `stop.rs`: a plan's phases over a running migration.
//! - `probe.rs` ([`Probe`]): the figures a status file, metrics and a run report read.
//!
//! ## Behavior
//! - Capture goes live first; only then does the snapshot read keys, so every read is a fence
//!   in the captured stream.
//! - The capture node is the source, or one of its replicas (`capture = replica`, or `auto`
//!   when a replica answers): a replica's stream carries effects, so nothing needs rewriting.
//!   Snapshot reads then go to the same replica, so that fences and writes share one order.
//! - A gap (capture or the target connection broke) triggers a fenced resync of every key.
//! - Function libraries go with every snapshot and resync: a fenced `FUNCTION DUMP` before the
//!   keys, restored at its position in the stream; the stream's `FUNCTION` and `SCRIPT LOAD`
//!   commands replay around it. A target that cannot take the source's libraries is refused
//!   at start (`functions.rs`).
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

pub mod acl;
mod cluster;
mod config;
mod coordinator;
mod evictions;
mod fence;
mod functions;
mod markers;
mod older;
mod phases;
mod preflight;
mod probe;
mod replica;
mod report;
mod runner;
mod running;
mod stop;
mod switch;
mod trailing;
mod window;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio::sync::mpsc;

use crate::capture::{Capture, CaptureSet, CaptureSink, PeerRegistry};
use crate::command::CommandTable;
use crate::journal::{EntryKind, Journal, JournalConfig};
use crate::net::cluster::Topology;
use crate::net::{Endpoint, Engine, NodesCell, SourceNodes};
use crate::replay::{
    Layout, Op, ReplayStats, StitchConfig, StitchShared, Stitcher, request_recopies, run_sharded,
};
use crate::snapshot::{DEFAULT_PAYLOAD_BUDGET, PayloadStore, Recopier, can_downgrade};

pub use config::{CaptureMode, MigrateConfig};
pub use preflight::{Finding, Level, Preflight, PreflightReport};
pub use probe::{FenceMark, Probe, Sample};
pub use report::{MigrateError, MigrationReport, RunError};
pub use runner::{Outcome, PlanRunner, RunReport, fatal, load_table, migrate_config};
pub use running::Running;
pub use stop::Stop;
pub use switch::{Fenced, Pause, PauseEnd, reverse_sync};
pub use trailing::{Conflict, ConflictPolicy, TargetKey, WindowEnd, WindowReport, WindowSpec};
pub use window::{TargetWrites, WindowMapper};

use cluster::{multi_db_refusal, source_dbs};
use coordinator::{Coordinator, spawn_coordinator};
use evictions::{Evictions, warn_if_target_evicts};
use markers::Markers;
use replica::find_replica;
use report::stage;

/// Capture's sink: the journal, which every shard's capture of a cluster source appends to.
struct JournalSink {
    journal: Journal,
    /// With a table: drop writes without keys (but flushes), which another shard's stream
    /// carries already.
    drop_keyless: Option<Arc<CommandTable>>,
    /// Scratch for the key lookup, so that filtering allocates nothing per write.
    keys: Vec<crate::command::KeyRef>,
}

impl CaptureSink for JournalSink {
    fn append(&mut self, mut batch: Vec<(u64, EntryKind)>) -> Result<(), String> {
        if let Some(table) = &self.drop_keyless {
            let keys = &mut self.keys;
            batch.retain(|(_, e)| match e {
                EntryKind::Write { argv, .. } => {
                    let name = argv.name();
                    keys.clear();
                    table.keys_into(argv, keys);
                    name.eq_ignore_ascii_case(b"FLUSHALL")
                        || name.eq_ignore_ascii_case(b"FLUSHDB")
                        || !keys.is_empty()
                }
                _ => true,
            });
        }
        self.journal
            .append_many(batch)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// The nodes a cluster source is read through: a healthy replica of each shard when `capture`
/// asks for replicas (`auto`: when every shard has one), else each shard's primary. Capture
/// modes do not mix, since the stitcher reads either commands or effects.
pub(super) async fn cluster_nodes(
    t: Topology,
    capture: CaptureMode,
) -> Result<SourceNodes, MigrateError> {
    if capture == CaptureMode::Primary {
        return Ok(SourceNodes::cluster(t));
    }
    let mut replicas = Vec::with_capacity(t.shards.len());
    for shard in &t.shards {
        match find_replica(&shard.primary).await {
            Some(r) => replicas.push(r),
            None if capture == CaptureMode::Replica => {
                return Err(stage(
                    "capture",
                    format!(
                        "capture = replica, but the shard of {} has no reachable, healthy replica (capture reads one replica per shard of a cluster)",
                        shard.primary
                    ),
                ));
            }
            None => return Ok(SourceNodes::cluster(t)),
        }
    }
    Ok(SourceNodes::cluster_on_replicas(t, replicas))
}

/// What starts the captures of a source's nodes: at the start, and again on a cluster
/// source's new primaries after a failover.
#[derive(Clone)]
pub(super) struct Captures {
    table: Arc<CommandTable>,
    peers: Arc<PeerRegistry>,
    settings: crate::capture::CaptureConfig,
    late: Arc<crate::capture::LateWrites>,
    journal: Journal,
}

impl Captures {
    /// One capture per node, all into the journal.
    pub(super) fn spawn(&self, nodes: &SourceNodes) -> CaptureSet {
        let mut handles = Vec::with_capacity(nodes.len());
        for (i, n) in nodes.all().iter().enumerate() {
            let sink = JournalSink {
                journal: self.journal.clone(),
                // Cluster clients send keyless writes (FUNCTION LOAD, SCRIPT LOAD) to every
                // primary: the first shard's stream carries them once.
                drop_keyless: (i > 0).then(|| self.table.clone()),
                keys: Vec::new(),
            };
            handles.push(
                Capture::new(
                    n.clone(),
                    self.table.clone(),
                    self.peers.clone(),
                    self.settings.clone(),
                )
                .with_late(self.late.clone())
                .spawn(sink),
            );
        }
        CaptureSet::new(handles)
    }
}

/// Why `source` (running `engines.0`) cannot be migrated live to `target` (`engines.1`), if it
/// cannot.
fn unsupported_pair(
    source: &Endpoint,
    target: &Endpoint,
    (se, te): (Engine, Engine),
) -> Option<String> {
    if se.too_old() {
        return Some(format!(
            "{} runs {se}; ferry migrates from Redis 4.0 or later",
            source.redacted()
        ));
    }
    if te.rdb_version() < se.rdb_version() && !can_downgrade(se.rdb_version(), te.rdb_version()) {
        return Some(format!(
            "{} runs {te}, whose RESTORE rejects the DUMP payloads of {} ({se}, RDB {} > {}); a live migration toward this older payload version is not supported (`ferry snapshot --type-aware` copies the keys once)",
            target.redacted(),
            source.redacted(),
            se.rdb_version(),
            te.rdb_version()
        ));
    }
    None
}

/// Says which mechanics the engines call for, once.
fn log_mechanics((se, te): (Engine, Engine)) {
    let expiry = if se.has_pexpiretime() {
        "PEXPIRETIME"
    } else {
        "PTTL with the server's TIME in the same transaction"
    };
    let pause = if se.has_pause_write() {
        "CLIENT PAUSE … WRITE"
    } else {
        "CLIENT PAUSE of every client, reads too, with the final marker (no CLIENT PAUSE … WRITE before Redis 6.2); it lasts max_pause, and no cutover"
    };
    let payloads = payload_mechanism((se, te));
    let replay = older::replay_forms((se, te));
    tracing::info!(source = %se, target = %te, expiry, pause, payloads, replay, "Engines.");
}

/// How key copies reach the target: as read, or rewritten for its older RDB version.
pub fn payload_mechanism((se, te): (Engine, Engine)) -> String {
    let (from, to) = (se.rdb_version(), te.rdb_version());
    if to >= from {
        return format!(
            "RESTORE of the source's DUMP payloads (RDB {from}; the target reads up to RDB {to})"
        );
    }
    // What each older version lacks, newest first (docs/redis-behaviour.md §20).
    let mut how = Vec::new();
    if from >= 12 {
        how.push("hashes with field TTLs as plain hashes (on_field_ttls = \"drop_field_ttls\"; refused otherwise)");
    }
    if from >= 11 && to < 11 {
        how.push("listpack sets as plain sets, streams without consumers' active times");
    }
    if from >= 10 && to < 10 {
        how.push("listpack hashes, sorted sets and lists as plain ones, streams without first and max-deleted IDs, entries-added and groups' entries-read");
    }
    format!(
        "DUMP payloads rewritten from RDB {from} to RDB {to} before RESTORE (the target rejects RDB {from}): {}",
        how.join("; ")
    )
}

/// A migration, before it starts.
pub struct Migration {
    source: Endpoint,
    target: Endpoint,
    cfg: MigrateConfig,
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

    /// A source with hash-field TTLs (Redis 7.4) toward a target without them: refused with
    /// the hashes named, unless the plan drops the TTLs (then said once, in the log).
    async fn check_field_ttls(&self, (se, te): (Engine, Engine)) -> Result<(), MigrateError> {
        if !se.has_hash_field_expiry() || te.has_hash_field_expiry() {
            return Ok(());
        }
        let found = crate::snapshot::field_ttl_hashes(&self.source).await?;
        if found.hashes == 0 {
            return Ok(());
        }
        if !self.cfg.drop_field_ttls {
            return Err(MigrateError::Unsupported(
                crate::snapshot::field_ttls_refusal(
                    &self.target,
                    te,
                    &found,
                    crate::snapshot::PLAN_REMEDY,
                ),
            ));
        }
        tracing::warn!(
            hashes = found.hashes,
            first = %found,
            "Field TTLs dropped: the target has no hash-field TTLs, and the plan's on_field_ttls = \"drop_field_ttls\" copies those fields without them."
        );
        Ok(())
    }

    /// Cluster mode of both sides, found from any node: a source with keys in dbs that a
    /// cluster target cannot hold (a cluster has db 0 only) is refused unless the plan moves
    /// them to db 0. Returns each side's topology, logged, when it is a cluster.
    async fn check_clusters(&self) -> Result<(Option<Topology>, Option<Topology>), MigrateError> {
        let source = Topology::discover(&self.source).await?;
        if let Some(t) = &source {
            tracing::info!(
                source = %self.source,
                primaries = t.shards.len(),
                shards = %t.describe(),
                "The source is a Redis Cluster; capturing one MONITOR stream per primary, each with its own fences."
            );
        }
        let Some(topology) = Topology::discover(&self.target).await? else {
            return Ok((source, None));
        };
        tracing::info!(
            target = %self.target,
            primaries = topology.shards.len(),
            shards = %topology.describe(),
            "The target is a Redis Cluster; replay routes by slot, one connection per primary."
        );
        let in_use = source_dbs(&self.source).await?;
        let stray: Vec<u32> = in_use
            .into_iter()
            .filter(|&db| {
                let mapped = match &self.cfg.mapper {
                    Some(m) => m.map_key(db, b"").map_or(db, |(d, _)| d),
                    None => db,
                };
                mapped != 0
            })
            .collect();
        if !stray.is_empty() {
            return Err(MigrateError::Unsupported(multi_db_refusal(
                &self.target,
                &stray,
            )));
        }
        Ok((source, Some(topology)))
    }

    /// Starts capture, then the snapshot, the stitcher and replay; returns at once.
    pub async fn start(mut self) -> Result<Running, MigrateError> {
        let started = Instant::now();
        let mut report = MigrationReport::default();
        let engines = (
            Engine::detect(&self.source).await?,
            Engine::detect(&self.target).await?,
        );
        // First, so that the refusal names the hashes even where the payloads would refuse
        // the pair too.
        self.check_field_ttls(engines).await?;
        // Before anything is copied: a target that cannot take the source's function
        // libraries is refused here, not found out when the application calls them; before the
        // pair's other checks, so that a target engine without functions is refused as such.
        self.cfg.snapshot.functions = self.cfg.functions
            && !self.cfg.skip_snapshot
            && functions::check(&self.source, &self.target).await?;
        if let Some(reason) = unsupported_pair(&self.source, &self.target, engines) {
            return Err(MigrateError::Unsupported(reason));
        }
        older::check_streams(&self.source, &self.target, engines).await?;
        #[cfg(feature = "sqs")]
        if self.cfg.publish.is_some() && !engines.1.has_restore_absttl() {
            return Err(MigrateError::Unsupported(format!(
                "{} runs {}: split replay's restores of big payloads need RESTORE … ABSTTL (Redis 5.0); replay in this process instead (no publish)",
                self.target.redacted(),
                engines.1
            )));
        }
        // Said now, not after an hour of copying when the switch is reached.
        if self.cfg.cutover_planned && !engines.0.has_pause_write() {
            return Err(MigrateError::Unsupported(format!(
                "{} runs {}: a cutover needs CLIENT PAUSE … WRITE (Redis 6.2) on the source, since an older source's pause holds every client, ferry's own reads too, and cannot be ended early; run without the cutover phase and switch clients yourself after the final fence",
                self.source.redacted(),
                engines.0
            )));
        }
        let (source_cluster, target_cluster) = self.check_clusters().await?;
        log_mechanics(engines);
        report.source_server = engines.0.to_string();
        report.target_server = engines.1.to_string();
        let table = match &self.cfg.table {
            Some(t) => t.clone(),
            None => runner::load_table(&self.source).await?,
        };

        let replica = match (self.cfg.capture, &source_cluster) {
            (_, Some(_)) | (CaptureMode::Primary, _) => None,
            (CaptureMode::Auto | CaptureMode::Replica, None) => find_replica(&self.source).await,
        };
        if self.cfg.capture == CaptureMode::Replica && replica.is_none() && source_cluster.is_none()
        {
            return Err(stage(
                "capture",
                format!(
                    "capture = replica, but {} has no reachable, healthy replica",
                    self.source
                ),
            ));
        }
        let node = replica.clone().unwrap_or_else(|| self.source.clone());
        let nodes = match source_cluster {
            Some(t) => cluster_nodes(t, self.cfg.capture).await?,
            None => SourceNodes::single(node.clone()),
        };
        let cell = NodesCell::new(nodes.clone());
        report.from_replica = replica.is_some() || nodes.on_replicas();
        report.capture_node = nodes.describe();
        let from_replica = report.from_replica;
        let why = match (self.cfg.capture, report.from_replica) {
            _ if nodes.on_replicas() => "a cluster source: a healthy replica of each shard",
            _ if nodes.is_cluster() => "a cluster source: each shard's primary",
            (CaptureMode::Auto, true) => "auto: chose the replica, a healthy one answers",
            (CaptureMode::Auto, false) => "auto: chose the primary, no healthy replica answers",
            (CaptureMode::Replica, _) => "capture = replica",
            (CaptureMode::Primary, _) => "capture = primary",
        };
        tracing::info!(
            node = %nodes.describe(),
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
        let mut store = PayloadStore::new(DEFAULT_PAYLOAD_BUDGET);
        if engines.1.rdb_version() < engines.0.rdb_version() {
            store = store
                .with_rdb_target(engines.1.rdb_version())
                .with_field_ttls_dropped(self.cfg.drop_field_ttls);
        }
        let store = Arc::new(store);
        let (recopier, recopy_rx) = Recopier::channel();
        let recopy_node = cell.clone();
        let recopy_peers = peers.clone();
        let recopy_store = store.clone();
        let recopy_task = tokio::spawn(async move {
            if let Err(e) = Recopier::run(recopy_node, recopy_peers, recopy_store, recopy_rx).await
            {
                tracing::error!(error = %e, "The re-copier stopped.");
            }
        });

        let late = self.cfg.late.clone().unwrap_or_default();
        let captures = Captures {
            table: table.clone(),
            peers: peers.clone(),
            settings: self.cfg.capture_settings.clone(),
            late: late.clone(),
            journal: journal.clone(),
        };
        let mut capture = captures.spawn(&nodes);
        if !capture.wait_live().await {
            let e = capture.stop().await.err().unwrap_or_default();
            return Err(stage("capture", e));
        }

        let stats = Arc::new(ReplayStats::default());
        stats.older_target.store(
            engines.1.redis_level() < engines.0.redis_level(),
            Ordering::Relaxed,
        );
        let (ops_tx, ops_rx) = mpsc::channel::<Op>(8192);
        let (replay_broken_tx, replay_broken) = mpsc::unbounded_channel::<String>();
        let (recopy_tx, recopy_rx) = mpsc::unbounded_channel();
        let recopy_requests =
            tokio::spawn(request_recopies(cell.clone(), recopy_rx, stats.clone()));
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
                match target_cluster.clone() {
                    Some(t) => Layout::Cluster(t),
                    None => Layout::Shards(self.cfg.replay_shards),
                },
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
            cluster_target: target_cluster.is_some(),
            streams: nodes.len(),
            target_level: Some(engines.1.redis_level()).filter(|l| *l < (7, 0)),
            drop_field_ttls: self.cfg.drop_field_ttls
                && engines.0.has_hash_field_expiry()
                && !engines.1.has_hash_field_expiry(),
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
            Markers::connect(&cell, &peers).await?,
        ));
        let evictions = Arc::new(Evictions::connect(&nodes, &peers, report.from_replica).await);
        warn_if_target_evicts(&self.target).await;
        let report = Arc::new(std::sync::Mutex::new(report));
        let probe = probe::Probe::new(
            journal.clone(),
            stats.clone(),
            shared.clone(),
            report.clone(),
            self.cfg.snapshot.counters.clone(),
            self.cfg.capture_settings.omem_seen.clone(),
            started,
        );
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let (failure_tx, failure) = tokio::sync::watch::channel(None);
        let coordinator = spawn_coordinator(
            Coordinator {
                nodes: cell.clone(),
                captures,
                target: self.target.clone(),
                snapshot_cfg: self.cfg.snapshot.clone(),
                mapper: self.cfg.mapper.clone(),
                store: store.clone(),
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
                window: false,
            },
            failure_tx,
        );
        Ok(Running {
            source: self.source,
            target: self.target,
            nodes: cell,
            from_replica,
            pause_all: !engines.0.has_pause_write(),
            cfg: self.cfg,
            started,
            journal,
            shared,
            stats,
            markers,
            peers,
            evictions,
            store,
            report,
            probe,
            late,
            in_window: false,
            stop_tx,
            coordinator,
            failure,
            tasks: vec![stitch_task, replay_task, recopy_task, recopy_requests],
            #[cfg(feature = "sqs")]
            split_queues,
        })
    }
}
