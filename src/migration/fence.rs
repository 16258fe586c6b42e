//! The final fence: catch up, pause source writes, drain the stream and the re-copies to a
//! final marker, and hand the paused source to the switch.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::replay::policy;

use super::evictions::final_evictions;
use super::replica::{fix_stream_groups, wait_replica_caught_up};
use super::report::{MigrateError, stage};

use super::running::Running;
#[cfg(feature = "sqs")]
use super::running::wait_drained;
use super::switch::Fenced;

impl Running {
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
                let target = self.stats.target_errors_by_code();
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
        report.errors = self.stats.errors_by_code();
        report.source_errors = self.stats.source_errors.load(Ordering::Relaxed);
        report.target_errors = self.stats.target_errors_by_code();
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
