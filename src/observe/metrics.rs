//! Prometheus metrics: the exporter's HTTP listener (`metrics-exporter-prometheus`) and the
//! `ferry_*` series a run publishes from its [`Sample`]s. Stages emit their own series through
//! the `metrics` facade (`ferry_snapshot_*` in `snapshot`, `ferry_monitor_output_buffer_bytes`
//! in `capture`); they never see the exporter. Every series is listed in `docs/metrics.md`.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use metrics::{Unit, counter, describe_counter, describe_gauge, gauge};
use metrics_exporter_prometheus::PrometheusBuilder;

use crate::migration::Sample;

use super::ObserveError;

/// Every series ferry publishes, with its help text (also the list `docs/metrics.md` holds).
pub const SERIES: &[(&str, &str)] = &[
    (
        "ferry_phase",
        "1 for the phase the run is in (label phase), 0 for the others",
    ),
    (
        "ferry_lag_seconds",
        "how far replay is behind the source's stream",
    ),
    (
        "ferry_pending_commands",
        "journal entries captured but not yet applied on the target",
    ),
    ("ferry_journal_entries_total", "journal entries written"),
    (
        "ferry_applied_commands_total",
        "commands the target answered",
    ),
    (
        "ferry_restores_total",
        "keys restored from snapshot payloads and re-copies",
    ),
    ("ferry_dirty_keys", "keys waiting for a re-copy"),
    (
        "ferry_recopies_total",
        "keys re-copied outside the snapshot (label reason: expiry, eviction)",
    ),
    (
        "ferry_resyncs_total",
        "fenced resyncs after gaps in the stream",
    ),
    (
        "ferry_errors_total",
        "error replies of the target by code (label code)",
    ),
    (
        "ferry_target_errors_total",
        "error replies only the target gave, by code (label code)",
    ),
    (
        "ferry_source_errors_total",
        "error replies the source gave too",
    ),
    ("ferry_journal_bytes", "journal bytes on disk"),
    (
        "ferry_pause_seconds",
        "source writes paused for fences so far",
    ),
    (
        "ferry_snapshot_keys",
        "keys on the source when the running snapshot started",
    ),
    (
        "ferry_snapshot_keys_done",
        "keys the running snapshot has handled",
    ),
    (
        "ferry_snapshot_keys_read_total",
        "keys read by every snapshot and resync",
    ),
    (
        "ferry_snapshot_bytes_total",
        "payload bytes read by every snapshot and resync",
    ),
    (
        "ferry_monitor_output_buffer_bytes",
        "the source's output buffer for ferry's MONITOR connection",
    ),
];

/// The series only `ferry replay` publishes (from `replay::remote`), beside its replay
/// counters of [`SERIES`] (`ferry_applied_commands_total`, `ferry_restores_total`, the error
/// series).
pub const REPLAY_SERIES: &[(&str, &str)] = &[
    (
        "ferry_replay_entries_total",
        "journal entries applied from the queues",
    ),
    (
        "ferry_replay_batches_total",
        "queue messages (batches of entries) applied",
    ),
    (
        "ferry_replay_redelivered_batches_total",
        "queue messages received again (their first receiver crashed, stalled or handed them back)",
    ),
    (
        "ferry_replay_applied_before_batches_total",
        "batches skipped because their shard's recorded position showed them applied",
    ),
    (
        "ferry_replay_handed_back_total",
        "messages handed back to the queue: another process holds their shard, or they came early",
    ),
    (
        "ferry_replay_leases_taken_total",
        "shard leases this process took",
    ),
    (
        "ferry_replay_leases_lost_total",
        "shard leases this process found taken over by another process",
    ),
    (
        "ferry_replay_fenced_batches_total",
        "batches the target refused because this process no longer held their shard's lease",
    ),
    ("ferry_replay_gaps_total", "gaps the queues carried"),
];

/// Installs the Prometheus exporter, serving `/metrics` on `addr`, and describes the series.
///
/// ## Behavior
/// - Binds at once: an address in use fails here, with the address named.
/// - One exporter per process: a second call fails.
pub fn install(addr: SocketAddr) -> Result<(), ObserveError> {
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .map_err(|e| ObserveError::Metrics {
            addr,
            message: e.to_string(),
        })?;
    for (name, help) in SERIES.iter().chain(REPLAY_SERIES) {
        if name.ends_with("_total") {
            describe_counter!(*name, *help);
        } else if name.ends_with("_bytes") {
            describe_gauge!(*name, Unit::Bytes, *help);
        } else if name.ends_with("_seconds") {
            describe_gauge!(*name, Unit::Seconds, *help);
        } else {
            describe_gauge!(*name, *help);
        }
    }
    Ok(())
}

/// What the publisher remembers between samples: the phase it last set and the error codes
/// it has seen, so an old phase goes back to 0.
#[derive(Default)]
pub(super) struct Publisher {
    phase: Option<String>,
}

impl Publisher {
    /// Sets every series that a sample carries. Counters are set to the run's totals
    /// (`absolute`), since the sample holds totals.
    pub(super) fn publish(&mut self, s: &Sample) {
        if self.phase.as_deref() != Some(s.phase.as_str()) {
            if let Some(old) = self.phase.take() {
                gauge!("ferry_phase", "phase" => old).set(0.0);
            }
            gauge!("ferry_phase", "phase" => s.phase.clone()).set(1.0);
            self.phase = Some(s.phase.clone());
        }
        gauge!("ferry_lag_seconds").set(s.lag_ms as f64 / 1000.0);
        gauge!("ferry_pending_commands").set(s.pending as f64);
        counter!("ferry_journal_entries_total").absolute(s.journal_entries);
        counter!("ferry_applied_commands_total").absolute(s.applied_commands);
        counter!("ferry_restores_total").absolute(s.restores);
        gauge!("ferry_dirty_keys").set(s.dirty_keys as f64);
        counter!("ferry_recopies_total", "reason" => "expiry").absolute(s.expiry_recopies);
        counter!("ferry_recopies_total", "reason" => "eviction").absolute(s.eviction_recopies);
        counter!("ferry_resyncs_total").absolute(s.resyncs);
        by_code("ferry_errors_total", &s.errors);
        by_code("ferry_target_errors_total", &s.target_errors);
        counter!("ferry_source_errors_total").absolute(s.source_errors);
        gauge!("ferry_journal_bytes").set(s.journal_bytes as f64);
        gauge!("ferry_pause_seconds").set(s.pause_ms as f64 / 1000.0);
    }
}

fn by_code(name: &'static str, counts: &BTreeMap<String, u64>) {
    for (code, n) in counts {
        counter!(name, "code" => code.clone()).absolute(*n);
    }
}
