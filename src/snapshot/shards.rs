//! `ferry snapshot` from a Redis Cluster source: one snapshot per source shard, run in
//! parallel, each reading its keys on the shard's primary (never a replica) and writing as any
//! snapshot does (routed by slot toward a cluster target).
//!
//! ## Behavior
//! - The shards come from the source's topology; each gets [`SnapshotConfig::workers`]
//!   workers of its own, reading only the slots its primary serves (its `SCAN` returns those).
//! - A fenced read holds keys of one slot only: a cluster refuses a transaction across slots
//!   (`CROSSSLOT`), so a batch is read as one `MULTI … EXEC` per slot, pipelined.
//! - With a state dir, each shard keeps its checkpoint in `shard-<first slot>` under it, so a
//!   rerun resumes every shard where it stopped.
//! - The reports add up into one; progress counts every shard's keys together.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{SnapshotError, SnapshotReport, Snapshotter, key_bar};
use crate::net::cluster::Topology;

/// How often the combined progress is shown.
const TICK: Duration = Duration::from_millis(500);
/// How often progress is logged when stderr is not a terminal.
const LOG_EVERY: Duration = Duration::from_secs(5);

impl Snapshotter {
    /// Copies every shard of the cluster source `t` in parallel and adds up the reports.
    pub(super) async fn run_shards(&self, t: Topology) -> Result<SnapshotReport, SnapshotError> {
        let started = Instant::now();
        if let Some(db) = self.cfg.dbs.iter().flatten().find(|&&db| db != 0) {
            return Err(SnapshotError::Unsupported(format!(
                "the source {} is a Redis Cluster, which has db 0 only: --db {db} names none of its keys",
                self.source
            )));
        }
        tracing::info!(
            source = %self.source,
            primaries = t.shards.len(),
            shards = %t.describe(),
            "The source is a Redis Cluster; each shard is read on its primary, in parallel."
        );
        let counters = self.cfg.counters.clone();
        let before = counters.done_all.load(std::sync::atomic::Ordering::Relaxed);
        let mut tasks = tokio::task::JoinSet::new();
        for (i, shard) in t.shards.iter().enumerate() {
            let mut cfg = self.cfg.clone();
            cfg.dbs = Some(vec![0]);
            cfg.progress = false;
            cfg.state_dir = self
                .cfg
                .state_dir
                .as_ref()
                .map(|d| d.join(format!("shard-{}", shard.ranges.first().map_or(0, |r| r.0))));
            if let Some(dir) = &cfg.state_dir {
                std::fs::create_dir_all(dir).map_err(|e| SnapshotError::State {
                    path: dir.display().to_string(),
                    message: e.to_string(),
                })?;
            }
            let sub = Snapshotter {
                source: shard.primary.clone(),
                target: self.target.clone(),
                cfg,
                shard_of_cluster: true,
            };
            let label = format!("{} {}", t.address(i), t.ranges_label(i));
            tasks.spawn(async move {
                let r = Box::pin(sub.run_inner(None)).await;
                (label, r)
            });
        }
        let ticker = self
            .cfg
            .progress
            .then(|| tokio::spawn(show_progress(counters, before)));
        let mut report = SnapshotReport::default();
        let mut first_error = None;
        while let Some(joined) = tasks.join_next().await {
            let (label, result) = match joined {
                Ok(done) => done,
                Err(e) => {
                    first_error.get_or_insert(SnapshotError::Command {
                        endpoint: self.source.redacted().to_string(),
                        command: "snapshot of a shard",
                        message: e.to_string(),
                    });
                    continue;
                }
            };
            match result {
                Ok(r) => {
                    tracing::info!(shard = %label, keys = r.keys, failed = r.failed_count(), "Shard copied.");
                    report.merge(r);
                }
                Err(e) => {
                    // The other shards finish: their checkpoints then hold their progress.
                    tracing::warn!(shard = %label, error = %e, "Shard snapshot stopped.");
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(t) = ticker {
            t.abort();
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        report.elapsed_secs = started.elapsed().as_secs_f64();
        Ok(report)
    }
}

/// One bar (or a log line every few seconds) for all shards, from the shared counters.
async fn show_progress(counters: Arc<super::SnapshotCounters>, before: u64) {
    let done = || counters.done_all.load(std::sync::atomic::Ordering::Relaxed) - before;
    // Each shard's run sets `total` to its own share when it starts; wait for them to count.
    tokio::time::sleep(TICK).await;
    let bar = key_bar(0, "keys");
    let started = Instant::now();
    let mut last_log = Instant::now();
    loop {
        let n = done();
        match &bar {
            Some(b) => {
                b.set_length(b.length().unwrap_or(0).max(n));
                b.set_position(n);
            }
            None if last_log.elapsed() >= LOG_EVERY => {
                last_log = Instant::now();
                let rate = n as f64 / started.elapsed().as_secs_f64().max(1e-9);
                tracing::info!(done = n, keys_per_sec = rate as u64, "Snapshot progress.");
            }
            None => {}
        }
        tokio::time::sleep(TICK).await;
    }
}

impl SnapshotReport {
    /// Adds a shard's report to this one.
    fn merge(&mut self, o: SnapshotReport) {
        self.keys += o.keys;
        self.bytes += o.bytes;
        self.chunked_keys += o.chunked_keys;
        self.field_ttls += o.field_ttls;
        self.field_ttls_dropped += o.field_ttls_dropped;
        self.skipped_expired += o.skipped_expired;
        self.leftover_temp_keys += o.leftover_temp_keys;
        self.retried += o.retried;
        self.vanished += o.vanished;
        for (reason, n) in o.failed {
            *self.failed.entry(reason).or_default() += n;
        }
        let room = 100usize.saturating_sub(self.failed_keys.len());
        self.failed_keys
            .extend(o.failed_keys.into_iter().take(room));
        self.total_estimate += o.total_estimate;
        self.resumed |= o.resumed;
    }
}
