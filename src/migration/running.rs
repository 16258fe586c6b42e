//! [`Running`]: a started migration, and what can be asked of it while it runs (lag, waits,
//! fenced verification).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::capture::{LateWrites, PeerRegistry};

use super::coordinator::CoordinatorTask;
use crate::journal::Journal;
use crate::net::{Endpoint, NodesCell};
use crate::replay::{ReplayStats, StitchShared};

use super::config::MigrateConfig;
use super::evictions::Evictions;
use super::markers::Markers;
use super::report::{MigrateError, MigrationReport, stage};

/// A started migration: capture, replay and the snapshot run in the background.
pub struct Running {
    pub(super) source: Endpoint,
    pub(super) target: Endpoint,
    pub(super) nodes: NodesCell,
    pub(super) from_replica: bool,
    /// The source has no `CLIENT PAUSE … WRITE` (before Redis 6.2): its final fence pauses
    /// every client, reads and ferry's own connections too, once the drain is done.
    pub(super) pause_all: bool,
    pub(super) cfg: MigrateConfig,
    pub(super) started: Instant,
    pub(super) journal: Journal,
    pub(super) shared: Arc<StitchShared>,
    pub(super) stats: Arc<ReplayStats>,
    pub(super) markers: Arc<tokio::sync::Mutex<Markers>>,
    pub(super) peers: Arc<PeerRegistry>,
    pub(super) evictions: Arc<Evictions>,
    /// Key copies waiting for their fence (and how many were rewritten for the target).
    pub(super) store: Arc<crate::snapshot::PayloadStore>,
    pub(super) report: Arc<std::sync::Mutex<MigrationReport>>,
    /// The figures read from outside while it runs.
    pub(super) probe: super::Probe,
    pub(super) stop_tx: tokio::sync::watch::Sender<bool>,
    pub(super) coordinator: CoordinatorTask,
    /// Writes reaching the source after a cutover's switch marker.
    pub(super) late: Arc<LateWrites>,
    /// True after a cutover's switch: the trailing window.
    pub(super) in_window: bool,
    /// Set when the coordinator fails; closed (still `None`) when it ends any other way. Every
    /// wait selects on it, so a dead pipeline ends them at once instead of at their timeouts.
    pub(super) failure: tokio::sync::watch::Receiver<Option<Arc<MigrateError>>>,
    pub(super) tasks: Vec<tokio::task::JoinHandle<()>>,
    /// With a split replay: the queues whose emptiness means "applied".
    #[cfg(feature = "sqs")]
    pub(super) split_queues: Option<Vec<crate::journal::sqs::SqsQueue>>,
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

    /// A handle on the run's figures (phase, lag, progress, errors, the last fence), for
    /// status files, metrics and reports; it stays valid after the run ends.
    pub fn probe(&self) -> super::Probe {
        self.probe.clone()
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
            nodes: self.nodes.get().1,
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
}

#[cfg(feature = "sqs")]
pub(super) async fn wait_drained(
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
