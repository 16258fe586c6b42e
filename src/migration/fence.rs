//! The final fence: catch up, pause source writes, drain the stream and the re-copies to a
//! final marker, and hand the paused source to the switch.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::replay::policy;

use super::evictions::final_evictions;
use super::replica::{fix_stream_groups, wait_replica_caught_up};
use super::report::{MigrateError, stage};

use super::coordinator::{Coordinator, FailureTx, spawn_coordinator};
use super::markers::Markers;
use super::running::Running;
#[cfg(feature = "sqs")]
use super::running::wait_drained;
use super::switch::{Fenced, Pause};
use redis::aio::MultiplexedConnection;

impl Running {
    /// Pauses source writes, drains to a final fence and stops capture and replay; returns
    /// with the source still paused, for a switch. The target then equals the source (before a
    /// cutover's trailing window; after one, the target holds the source's late writes too).
    pub async fn fence(mut self) -> Result<Fenced, MigrateError> {
        tracing::info!("Stopping: placing the final fence.");
        let (c, _) = self.stop_coordinator().await?;
        let capture = c.capture;
        // After a switch the target is the primary: the source's evictions no longer matter,
        // and a sweep would delete keys the switched clients wrote.
        let evictions = !self.in_window;
        let mut markers = self.markers.lock().await;
        let (mut src, pause_started, paused) = self.pause(&mut markers, evictions).await?;
        let result = self
            .drain_paused(&mut markers, "final-", paused, evictions)
            .await;
        let fenced_ms = pause_started.elapsed().as_millis() as u64;
        let mut report = self.report.lock().map(|r| r.clone()).unwrap_or_default();
        if let Err(e) = result {
            if paused {
                unpause(&mut src).await;
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
        report.cluster_redirects = self.stats.redirects.load(Ordering::Relaxed);
        report.cross_slot_split = self.stats.cross_slot_split.load(Ordering::Relaxed);
        report.cross_slot_recopies = self.stats.cross_slot_recopies.load(Ordering::Relaxed)
            + self.shared.cross_slot_recopied.load(Ordering::Relaxed);
        report.errors = self.stats.errors_by_code();
        report.source_errors = self.stats.source_errors.load(Ordering::Relaxed);
        report.target_errors = self.stats.target_errors_by_code();
        report.fence_ms = fenced_ms;
        report.field_ttls_dropped = self.shared.field_ttls_dropped.load(Ordering::Relaxed);
        (report.payloads_rewritten, report.payloads_not_rewritten) = self.store.downgrades();
        let pause = if self.pause_all {
            // Begun with the final marker, a moment ago.
            Pause::all_clients(Instant::now(), self.cfg.max_pause)
        } else {
            Pause::new(
                if paused { src } else { Vec::new() },
                pause_started,
                self.cfg.max_pause,
            )
        };
        Ok(Fenced::new(
            self.source,
            self.target,
            pause,
            self.started,
            report,
        ))
    }

    /// The switch fence of a cutover: pauses source writes and drains to a `switch-` marker
    /// exactly like the final fence, but capture and replay go on, so that writes reaching the
    /// old source after the switch (the trailing window) still reach the target. Returns with
    /// the source paused; the coordinator goes on in window mode.
    pub async fn switch_fence(&mut self) -> Result<Pause, MigrateError> {
        tracing::info!("Cutover: placing the switch fence.");
        if self.pause_all {
            return Err(stage(
                "cutover",
                "a cutover needs CLIENT PAUSE … WRITE (Redis 6.2) on the source: an older source's pause holds every client, ferry's own reads too, and cannot be ended early; stop with `ferry migrate` and switch clients yourself",
            ));
        }
        let (mut c, failure_tx) = self.stop_coordinator().await?;
        let mut markers = self.markers.lock().await;
        let (mut src, pause_started, paused) = self.pause(&mut markers, true).await?;
        if let Err(e) = self
            .drain_paused(&mut markers, "switch-", paused, true)
            .await
        {
            if paused {
                unpause(&mut src).await;
            }
            return Err(e);
        }
        drop(markers);
        if let Ok(mut r) = self.report.lock() {
            r.fence_ms = pause_started.elapsed().as_millis() as u64;
        }
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        c.stop = stop_rx;
        c.window = true;
        c.skip_snapshot = true;
        self.stop_tx = stop_tx;
        self.coordinator = spawn_coordinator(c, failure_tx);
        self.in_window = true;
        Ok(Pause::new(
            if paused { src } else { Vec::new() },
            pause_started,
            self.cfg.max_pause,
        ))
    }

    /// Stops the coordinator and takes it back.
    async fn stop_coordinator(&mut self) -> Result<(Coordinator, FailureTx), MigrateError> {
        let _ = self.stop_tx.send(true);
        match (&mut self.coordinator).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(stage("coordinator", e)),
        }
    }

    /// Catches up without pausing, handles evictions counted so far (when asked), then pauses
    /// source writes (`CLIENT PAUSE … WRITE`, bounded by `max_pause`); with a replica capture,
    /// waits until the replica has everything. Returns the pausing connection, when the pause
    /// started, and whether the source accepted it.
    async fn pause(
        &self,
        markers: &mut Markers,
        evictions: bool,
    ) -> Result<(Vec<MultiplexedConnection>, Instant, bool), MigrateError> {
        let catchup = markers.place("catchup-").await?;
        if !self
            .shared
            .wait_marker(&catchup, Duration::from_secs(3600))
            .await
        {
            return Err(stage("final fence", "replay did not catch up"));
        }
        if evictions {
            self.final_evictions(markers, None).await?;
        }
        // Every primary of a cluster source; the primary (not a capture replica) otherwise.
        let nodes = self.nodes.get().1;
        let pause_nodes = if nodes.is_cluster() {
            nodes.primaries()
        } else {
            vec![self.source.clone()]
        };
        let mut srcs = Vec::with_capacity(pause_nodes.len());
        for node in &pause_nodes {
            srcs.push(node.control().await?);
        }
        let pause_started = Instant::now();
        if self.pause_all {
            // Paused with the final marker, once the drain no longer reads the source.
            return Ok((srcs, pause_started, false));
        }
        let mut refused = None;
        for src in &mut srcs {
            let paused = redis::cmd("CLIENT")
                .arg("PAUSE")
                .arg(self.cfg.max_pause.as_millis() as u64)
                .arg("WRITE")
                .query_async::<()>(src)
                .await;
            if let Err(e) = paused {
                refused = Some(e);
                break;
            }
        }
        if let Some(e) = &refused {
            tracing::warn!(error = %e, "The source refuses CLIENT PAUSE; the final fence is taken without pausing writes.");
            unpause(&mut srcs).await;
        }
        if self.from_replica && refused.is_none() {
            // Each capture replica has everything its paused primary ran.
            for (primary, replica) in pause_nodes.iter().zip(nodes.all()) {
                wait_replica_caught_up(primary, replica).await;
            }
        }
        Ok((srcs, pause_started, refused.is_none()))
    }

    /// Handles every eviction counted so far (see [`final_evictions`]), within `limit`.
    async fn final_evictions(
        &self,
        markers: &mut Markers,
        limit: Option<Duration>,
    ) -> Result<(), MigrateError> {
        final_evictions(
            &self.evictions,
            (&self.nodes.get().1, &self.target),
            self.cfg.mapper.as_ref(),
            &self.report,
            markers,
            limit,
        )
        .await
    }

    /// Under the write pause: the last evictions (when asked), a drain marker, the re-copies
    /// replay asked for, the dirty set, a replica's stream-group positions, then the `last`
    /// marker, applied; fails when keys still differ on the target.
    async fn drain_paused(
        &self,
        markers: &mut Markers,
        last: &str,
        paused: bool,
        evictions: bool,
    ) -> Result<(), MigrateError> {
        let shared = &self.shared;
        if evictions {
            self.final_evictions(markers, Some(self.cfg.max_pause / 2))
                .await?;
        }
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
            if Instant::now() > deadline {
                if shared.snapshot_mode.load(Ordering::Relaxed) {
                    // A resync whose reads are done is finished once replay reaches its
                    // marker (replay may still be backing off from the break that caused it),
                    // so it gets the same wait as re-copies. One still unfinished now means the
                    // stream broke while stopping: some keys were never re-read. A new run
                    // starts a fresh journal and resyncs every key, so nothing is lost.
                    return Err(stage(
                        "final fence",
                        "the stream broke while stopping, so a resync was left unfinished; run again to resync every key",
                    ));
                }
                return Err(stage("final fence", "re-copies did not finish"));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if self.from_replica && paused {
            let nodes = self.nodes.get().1;
            let primaries = if nodes.is_cluster() {
                nodes.primaries()
            } else {
                vec![self.source.clone()]
            };
            fix_stream_groups(shared, &primaries, |k| nodes.index_of(k), &self.target).await?;
        }
        let last = if self.pause_all {
            let ms = self.cfg.max_pause.as_millis() as u64;
            tracing::info!(
                pause_ms = ms,
                "Pausing every client of the source, reads too (CLIENT PAUSE without WRITE: the source predates Redis 6.2), with the final marker; the pause ends by itself after pause_ms (no CLIENT UNPAUSE before 6.2)."
            );
            markers.place_pausing_all(last, ms).await?
        } else {
            markers.place(last).await?
        };
        if !shared.wait_marker(&last, self.cfg.max_pause * 4).await {
            return Err(stage(
                "final fence",
                "replay did not reach the final marker",
            ));
        }
        if self.pause_all && shared.dirty.load(Ordering::Relaxed) > 0 {
            // Their re-reads would wait behind the pause, and run after writes resume.
            return Err(stage(
                "final fence",
                format!(
                    "{} keys changed invisibly (a served blocking pop, an eviction) between the drain and the final marker, and a source before Redis 6.2 pauses ferry's own reads too; stop again when the source is quieter",
                    shared.dirty.load(Ordering::Relaxed)
                ),
            ));
        }
        if evictions && let Some(n) = self.evictions.count().await {
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
}

/// Ends a pause on every node, ignoring one that went away (its pause ends on its own).
async fn unpause(srcs: &mut [MultiplexedConnection]) {
    for src in srcs {
        let _ = redis::cmd("CLIENT")
            .arg("UNPAUSE")
            .query_async::<()>(src)
            .await;
    }
}
