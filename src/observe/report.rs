//! The run report: [`Report`], written as `report.json` (and drawn as `report.html`) in the
//! state dir when a run ends: both servers' versions, every count, the pause, verification,
//! late writes, errors and the time series sampled every second.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::migration::{FenceMark, MigrationReport, RunReport, Sample};

/// The JSON report's name in the state dir.
pub const JSON_FILE: &str = "report.json";
/// The HTML report's name in the state dir.
pub const HTML_FILE: &str = "report.html";

/// The counts of a run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    /// Keys read by snapshots and resyncs.
    pub snapshot_keys: u64,
    /// Snapshot payload bytes read.
    pub snapshot_bytes: u64,
    /// Journal entries written.
    pub journal_entries: u64,
    /// Commands the target answered.
    pub commands: u64,
    /// Keys restored from payloads.
    pub restores: u64,
    /// Resyncs after gaps.
    pub resyncs: u64,
    /// Keys re-copied after expiring during replay lag.
    pub expiry_recopies: u64,
    /// Keys the source evicted during the run.
    pub evicted_keys: u64,
    /// Target keys re-copied after evictions.
    pub eviction_recopies: u64,
    /// Keys on the target when the run ended (`INFO keyspace`), when it could be read.
    pub target_keys: Option<u64>,
}

/// How long source writes were paused.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PauseFigures {
    /// The pause of the final fence (or a cutover's switch), in ms.
    pub pause_ms: u64,
    /// Of it, the drain to the fence, in ms.
    pub fence_ms: u64,
    /// After a cutover's trailing window: the pause of the fence that ended it, in ms.
    pub final_pause_ms: u64,
    /// The pause ran out before the release.
    pub pause_expired: bool,
    /// Fences reached, with when (unix ms) and their pause.
    pub fences: Vec<FenceMark>,
}

/// What a fenced verification found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Verification {
    /// Keys compared.
    pub keys_checked: u64,
    /// Keys that differ.
    pub differences: u64,
    /// Differences per kind.
    pub by_kind: BTreeMap<String, u64>,
    /// Key re-checks done.
    pub rechecked: u64,
    /// For a sample: source keys drawn, and those skipped as the plan does not migrate them.
    pub sample_drawn: u64,
    pub sample_skipped: u64,
}

/// Writes that reached the old source after a cutover's switch.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LateWrites {
    /// Late writes replayed to the target.
    pub writes: u64,
    /// Clients they came from.
    pub clients: u64,
    /// Keys they touched.
    pub keys: u64,
    /// Keys both sides changed after the switch.
    pub conflicts: u64,
}

/// Error replies of the run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Errors {
    /// By code, whatever their class.
    pub by_code: BTreeMap<String, u64>,
    /// Only the target gave them, by code.
    pub target_only: BTreeMap<String, u64>,
    /// The source gave them too (expected).
    pub source_too: u64,
    /// Why the run failed, when it did.
    pub run: Option<String>,
}

/// One second of the run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Point {
    /// Seconds since the run started.
    pub t_secs: f64,
    /// The phase then.
    pub phase: String,
    /// Replay lag, ms.
    pub lag_ms: u64,
    /// Entries waiting for replay.
    pub pending: u64,
    /// Commands applied per second since the previous point.
    pub commands_per_sec: f64,
    /// Keys the running snapshot had handled.
    pub snapshot_done: u64,
    /// That snapshot's total.
    pub snapshot_total: u64,
}

/// The run report.
#[derive(Debug, Clone, Default, Serialize)]
#[non_exhaustive]
pub struct Report {
    /// This ferry's version.
    pub ferry_version: String,
    /// The plan's name.
    pub plan: String,
    /// `finished`, `differences`, `failed` or `not started`.
    pub outcome: String,
    /// When the run started and ended, unix ms.
    pub started_ms: u64,
    /// When it ended.
    pub ended_ms: u64,
    /// The source's engine and version.
    pub source_server: String,
    /// The target's engine and version.
    pub target_server: String,
    /// Every count.
    pub counts: Counts,
    /// The pause.
    pub pause: PauseFigures,
    /// The last fenced verification, when one ran.
    pub verification: Option<Verification>,
    /// Late writes after a cutover's switch, when one ran.
    pub late_writes: Option<LateWrites>,
    /// Error replies and the run's own error.
    pub errors: Errors,
    /// The time series, one point a second.
    pub series: Vec<Point>,
}

/// What a report is made of.
pub(super) struct Parts<'a> {
    pub plan: &'a str,
    pub outcome: &'a str,
    pub error: Option<String>,
    pub started_ms: u64,
    pub run: Option<&'a RunReport>,
    /// The migration's report when the run stopped with one but no [`RunReport`].
    pub migration: Option<&'a MigrationReport>,
    pub last: Option<&'a Sample>,
    pub samples: &'a [Sample],
    pub fences: Vec<FenceMark>,
    pub target_keys: Option<u64>,
}

impl Report {
    pub(super) fn build(p: Parts<'_>) -> Report {
        let m = p.run.map(|r| &r.migration).or(p.migration);
        let last = p.last.cloned().unwrap_or_default();
        let counts = match m {
            Some(m) => Counts {
                snapshot_keys: m.snapshot_keys,
                snapshot_bytes: last.snapshot_bytes,
                journal_entries: m.journal_entries,
                commands: m.commands,
                restores: m.restores,
                resyncs: m.resyncs,
                expiry_recopies: m.expiry_recopies,
                evicted_keys: m.evicted_keys,
                eviction_recopies: m.eviction_recopies,
                target_keys: p.target_keys,
            },
            None => Counts {
                snapshot_keys: last.snapshot_keys_read,
                snapshot_bytes: last.snapshot_bytes,
                journal_entries: last.journal_entries,
                commands: last.applied_commands,
                restores: last.restores,
                resyncs: last.resyncs,
                expiry_recopies: last.expiry_recopies,
                eviction_recopies: last.eviction_recopies,
                target_keys: p.target_keys,
                ..Counts::default()
            },
        };
        let pause = PauseFigures {
            pause_ms: m.map_or(last.pause_ms, |m| m.pause_ms),
            fence_ms: m.map_or(0, |m| m.fence_ms),
            final_pause_ms: m.map_or(0, |m| m.final_pause_ms),
            pause_expired: m.is_some_and(|m| m.pause_expired),
            fences: p.fences,
        };
        let verification = p.run.and_then(|r| r.verify.as_ref()).map(|v| Verification {
            keys_checked: v.keys_checked,
            differences: v.differences.len() as u64,
            by_kind: v.by_kind.clone(),
            rechecked: v.rechecked,
            sample_drawn: v.sample_drawn,
            sample_skipped: v.sample_skipped,
        });
        let late_writes = m.and_then(|m| m.window.as_ref()).map(|w| LateWrites {
            writes: w.late.writes,
            clients: w.late.clients.len() as u64,
            keys: w.late.keys,
            conflicts: w.conflicts.len() as u64,
        });
        let errors = Errors {
            by_code: m.map_or_else(|| last.errors.clone(), |m| m.errors.clone()),
            target_only: m.map_or_else(|| last.target_errors.clone(), |m| m.target_errors.clone()),
            source_too: m.map_or(last.source_errors, |m| m.source_errors),
            run: p.error,
        };
        Report {
            ferry_version: env!("CARGO_PKG_VERSION").to_string(),
            plan: p.plan.to_string(),
            outcome: p.outcome.to_string(),
            started_ms: p.started_ms,
            ended_ms: crate::clock::now_ms().max(0) as u64,
            source_server: m.map(|m| m.source_server.clone()).unwrap_or_default(),
            target_server: m.map(|m| m.target_server.clone()).unwrap_or_default(),
            counts,
            pause,
            verification,
            late_writes,
            errors,
            series: points(p.samples, p.started_ms),
        }
    }
}

/// The samples as points: time since the start and the rate between neighbours.
fn points(samples: &[Sample], started_ms: u64) -> Vec<Point> {
    let mut out = Vec::with_capacity(samples.len());
    let mut prev: Option<&Sample> = None;
    for s in samples {
        let commands_per_sec = match prev {
            Some(p) if s.elapsed_secs > p.elapsed_secs => {
                s.applied_commands.saturating_sub(p.applied_commands) as f64
                    / (s.elapsed_secs - p.elapsed_secs)
            }
            _ => 0.0,
        };
        out.push(Point {
            t_secs: s.at_ms.saturating_sub(started_ms) as f64 / 1000.0,
            phase: s.phase.clone(),
            lag_ms: s.lag_ms,
            pending: s.pending,
            commands_per_sec: (commands_per_sec * 10.0).round() / 10.0,
            snapshot_done: s.snapshot_done,
            snapshot_total: s.snapshot_total,
        });
        prev = Some(s);
    }
    out
}
