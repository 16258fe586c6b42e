//! The background coordinator of a running migration: snapshot, resyncs after gaps, journal
//! trimming, eviction handling and status lines, until the stop.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::capture::PeerRegistry;
use crate::clock::now_us;
use crate::command::Mapper;
use crate::journal::{EntryKind, Journal, Marker};
use crate::net::cluster::{Topology, host_port};
use crate::net::{Endpoint, NodesCell, SourceNodes};
use crate::replay::{ReplayStats, StitchEvent, StitchShared};
use crate::snapshot::{LiveSink, PayloadStore, SnapshotConfig, Snapshotter};

use super::evictions::{Evictions, sweep};
use super::markers::Markers;
use super::report::{MigrateError, MigrationReport, stage};

/// What the background coordinator owns.
pub(super) struct Coordinator {
    /// The source's nodes now (a cluster source's change at a failover).
    pub(super) nodes: NodesCell,
    /// Starts captures on new nodes after a failover.
    pub(super) captures: super::Captures,
    pub(super) target: Endpoint,
    pub(super) snapshot_cfg: SnapshotConfig,
    pub(super) mapper: Option<Arc<dyn Mapper>>,
    pub(super) store: Arc<PayloadStore>,
    pub(super) peers: Arc<PeerRegistry>,
    pub(super) capture: crate::capture::CaptureSet,
    pub(super) journal: Journal,
    pub(super) stats: Arc<ReplayStats>,
    pub(super) shared: Arc<StitchShared>,
    pub(super) markers: Arc<tokio::sync::Mutex<Markers>>,
    pub(super) evictions: Arc<Evictions>,
    pub(super) report: Arc<std::sync::Mutex<MigrationReport>>,
    pub(super) status_every: Option<Duration>,
    pub(super) skip_snapshot: bool,
    pub(super) stitch_events: mpsc::UnboundedReceiver<StitchEvent>,
    pub(super) stitch_failed: mpsc::UnboundedReceiver<String>,
    pub(super) replay_broken: mpsc::UnboundedReceiver<String>,
    pub(super) stop: tokio::sync::watch::Receiver<bool>,
    /// After a cutover's switch: no snapshot, resync or eviction handling (the target is the
    /// primary now; any of them would undo its clients' writes), and a gap is an error.
    pub(super) window: bool,
}

/// Identical stream breaks in a row, each before a resync finished, that end a run.
const MAX_SAME_GAPS: u32 = 5;

/// Where the coordinator reports that it failed for good.
pub(super) type FailureTx = tokio::sync::watch::Sender<Option<Arc<MigrateError>>>;

/// The coordinator's task: hands the coordinator (and the failure channel) back when stopped.
pub(super) type CoordinatorTask =
    tokio::task::JoinHandle<Result<(Coordinator, FailureTx), MigrateError>>;

/// Runs `c` in the background; a failure is published on `failure_tx` for every waiter.
pub(super) fn spawn_coordinator(c: Coordinator, failure_tx: FailureTx) -> CoordinatorTask {
    tokio::spawn(async move {
        match coordinate(c).await {
            Ok(c) => Ok((c, failure_tx)),
            Err(e) => {
                let e = Arc::new(e);
                failure_tx.send_replace(Some(e.clone()));
                Err(MigrateError::Failed(e))
            }
        }
    })
}

type SnapshotTask = tokio::task::JoinHandle<(
    u64,
    Result<crate::snapshot::SnapshotReport, crate::snapshot::SnapshotError>,
)>;

fn spawn_snapshot(c: &Coordinator, epoch: u64) -> SnapshotTask {
    let nodes = c.nodes.get().1;
    let snap = Snapshotter::new(
        nodes.first().clone(),
        c.target.clone(),
        c.snapshot_cfg.clone(),
    );
    let sink = LiveSink {
        store: c.store.clone(),
        peers: c.peers.clone(),
        mapper: c.mapper.clone(),
        nodes,
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

type SweepTask =
    tokio::task::JoinHandle<(u64, Result<Vec<(u32, Vec<u8>)>, crate::verify::VerifyError>)>;

fn spawn_sweep(c: &Coordinator, from: u64) -> SweepTask {
    let (source, target, mapper) = (c.nodes.get().1, c.target.clone(), c.mapper.clone());
    tokio::spawn(async move { (from, sweep(&source, &target, mapper.as_ref()).await) })
}

/// Runs the snapshot, resyncs after gaps and prints status until told to stop; hands itself
/// back (with the capture) for the final fence.
async fn coordinate(mut c: Coordinator) -> Result<Coordinator, MigrateError> {
    let mut snap_task = if c.skip_snapshot {
        None
    } else {
        tracing::info!("Snapshot started.");
        Some(spawn_snapshot(&c, 0))
    };
    let mut snapshot_started = Instant::now();
    let (mut last_gap, mut same_gaps): (Option<String>, u32) = (None, 0);
    let mut status = c.status_every.map(tokio::time::interval);
    let mut trim = tokio::time::interval(Duration::from_secs(1));
    let mut sweep_task: Option<SweepTask> = None;
    let mut evicted_seen = c.evictions.baseline;
    let mut events = c.evictions.events.lock().await.take();
    // In the trailing window the old source's evictions no longer matter: the events are kept
    // aside unread.
    let mut held_events = None;
    if c.window {
        held_events = events.take();
    }
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
                    if c.window {
                        return Err(stage(
                            "trailing window",
                            format!("the old source's stream broke after the switch ({reason}): writes that reached it since may be missing on the target, which cannot be resynced while clients write to it; compare the keys the late-write report names"),
                        ));
                    }
                    // The same break again and again, with no snapshot finishing in between, is
                    // not transient: stop with it rather than resync for ever.
                    if snap_task.is_some() && last_gap.as_deref() == Some(reason.as_str()) {
                        same_gaps += 1;
                    } else {
                        same_gaps = 1;
                    }
                    last_gap = Some(reason.clone());
                    if same_gaps >= MAX_SAME_GAPS {
                        let why = if reason.is_empty() { "no reason given" } else { reason.as_str() };
                        return Err(stage(
                            "capture",
                            format!("the stream broke {same_gaps} times in a row, each before a resync could finish, for the same reason ({why}); stopping instead of resyncing for ever"),
                        ));
                    }
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
                    append_gap(&c.journal, format!("target: {reason}"))?;
                }
                done = async { snap_task.as_mut().expect("guarded").await }, if snap_task.is_some() => {
                    snap_task = None;
                    match done {
                        Ok((epoch, Ok(r))) => {
                            if let Ok(mut rep) = c.report.lock() {
                                rep.snapshot_keys += r.keys;
                            }
                            tracing::info!(keys = r.keys, secs = snapshot_started.elapsed().as_secs_f64(), "Snapshot reads done.");
                            c.markers.lock().await.place_marker(&Marker::SnapshotDone(epoch)).await?;
                            if stopping {
                                return Ok(());
                            }
                        }
                        // A primary that failed over refuses the reads: follow it instead.
                        Ok((_, Err(e))) => {
                            // A slot still moving refuses reads (ASK) until its move ends:
                            // give the topology time to settle before failing.
                            let mut followed = follow_failover(&mut c).await?;
                            let deadline = Instant::now() + Duration::from_secs(30);
                            while !followed && c.nodes.get().1.is_cluster() && Instant::now() < deadline {
                                tokio::time::sleep(Duration::from_millis(500)).await;
                                followed = follow_failover(&mut c).await?;
                            }
                            if !followed {
                                return Err(stage("snapshot", e));
                            }
                        }
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
                    if !c.window {
                        follow_failover(&mut c).await?;
                    }
                    c.markers.lock().await.place("tick-").await?;
                    if !c.window
                        && let Some(n) = c.evictions.count().await
                    {
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
    *c.evictions.events.lock().await = events.or(held_events);
    result.map(|()| c)
}

/// A shard as a failover or a slot move changes it: its primary's address and its slots.
type ShardLayout = (Option<(String, u16)>, Vec<(u16, u16)>);

/// Appends a gap to the journal: the stitcher resyncs every key when it reaches it.
fn append_gap(journal: &Journal, reason: String) -> Result<(), MigrateError> {
    journal
        .append(now_us(), EntryKind::Gap { reason })
        .map(|_| ())
        .map_err(|e| MigrateError::Journal(e.to_string()))
}

/// The primaries' addresses, in shard order, to tell a failover.
fn primaries(nodes: &SourceNodes) -> Vec<Option<(String, u16)>> {
    nodes.primaries().iter().map(host_port).collect()
}

/// For a cluster source: when a shard's primary changed (a failover), captures the new
/// primaries and marks a gap, whose resync re-reads every key from them. Returns whether it
/// did. A cluster that gained or lost shards ends the run: its streams no longer match the
/// stitcher's.
async fn follow_failover(c: &mut Coordinator) -> Result<bool, MigrateError> {
    let (_, now) = c.nodes.get();
    if !now.is_cluster() {
        return Ok(false);
    }
    let mut found = None;
    for node in now.all() {
        if let Ok(Some(t)) = Topology::discover(node).await {
            found = Some(t);
            break;
        }
    }
    let Some(t) = found else {
        return Ok(false);
    };
    let layout = |t: &Topology| -> Vec<ShardLayout> {
        t.shards
            .iter()
            .map(|s| (host_port(&s.primary), s.ranges.clone()))
            .collect()
    };
    if primaries(&SourceNodes::cluster(t.clone())) == primaries(&now) {
        if now.topology().is_none_or(|old| layout(old) == layout(&t)) {
            return Ok(false);
        }
        // The same primaries serving other slots: a slot moved between shards. Captures stay;
        // reads follow the new slot map, and a resync re-reads every key where it lives now.
        let Some(next) = now.with_topology(t) else {
            return Ok(false);
        };
        tracing::warn!(
            before = %now.describe(),
            now = %next.describe(),
            "The source cluster moved slots between shards: reading each key on its new shard and resyncing every key with fenced reads."
        );
        c.nodes.set(next);
        if let Ok(mut r) = c.report.lock() {
            r.source_slot_moves += 1;
        }
        append_gap(
            &c.journal,
            "slots moved between the source cluster's shards".into(),
        )?;
        return Ok(true);
    }
    // Read the same way as before: through replicas (their streams carry effects, and the
    // stitcher reads either kind, not both), the new primaries' once one answers healthy.
    let next = if now.on_replicas() {
        let mut found = None;
        for _ in 0..20 {
            let n = super::cluster_nodes(t.clone(), super::CaptureMode::Auto).await?;
            if n.on_replicas() {
                found = Some(n);
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        found.ok_or_else(|| {
            stage(
                "capture",
                "the source cluster failed over, and a shard's new primary has no healthy replica to capture within 10 s: run again (a new run resyncs every key)",
            )
        })?
    } else {
        SourceNodes::cluster(t)
    };
    if next.len() != now.len() {
        return Err(stage(
            "capture",
            format!(
                "the source cluster now has {} primaries instead of {} (a shard was added or removed): run again; a new run resyncs every key",
                next.len(),
                now.len()
            ),
        ));
    }
    tracing::warn!(
        before = %now.describe(),
        now = %next.describe(),
        "The source cluster failed over: capturing the new primaries and resyncing every key with fenced reads."
    );
    let old = std::mem::replace(&mut c.capture, c.captures.spawn(&next));
    let _ = old.stop().await;
    c.nodes.set(next);
    if !c.capture.wait_live().await {
        return Err(stage("capture", "the new primaries' MONITOR did not start"));
    }
    if let Ok(mut r) = c.report.lock() {
        r.source_failovers += 1;
    }
    append_gap(&c.journal, "the source cluster failed over".into())?;
    Ok(true)
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
