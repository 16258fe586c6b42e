//! [`Probe`]: a running migration's figures, read from outside while it runs (phase, lag,
//! progress, errors, the last fence), for the status file, the metrics and the run report.
//!
//! ## Behavior
//! - Reading never blocks a stage: counters are atomics, the maps are copied under their
//!   short locks.
//! - The phase and the last fence are told by whoever drives the migration (the plan runner);
//!   the rest is read from the stages' own counters.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::clock::{now_ms, now_us};
use crate::journal::Journal;
use crate::replay::{ReplayStats, StitchShared};
use crate::snapshot::SnapshotCounters;

use super::report::MigrationReport;

/// A fence the run reached: the switch fence of a cutover or a stop's final fence.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FenceMark {
    /// `switch` or `final`.
    pub name: String,
    /// When replay reached it, unix ms.
    pub at_ms: u64,
    /// How long source writes were paused for it, in ms.
    pub pause_ms: u64,
}

/// One reading of a running migration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Sample {
    /// When it was read, unix ms.
    pub at_ms: u64,
    /// Seconds since the migration started.
    pub elapsed_secs: f64,
    /// The plan phase running (`snapshot`, `catch_up`, `verify`, `cutover`, a custom name,
    /// `final fence`, `done`).
    pub phase: String,
    /// True while a snapshot or resync is reading keys.
    pub snapshot_running: bool,
    /// How far replay is behind the source's stream: the age of the last entry handed to
    /// replay while entries are pending, in ms.
    pub lag_ms: u64,
    /// Journal entries captured but not yet applied on the target.
    pub pending: u64,
    /// Journal entries written.
    pub journal_entries: u64,
    /// Commands the target answered.
    pub applied_commands: u64,
    /// Keys restored from payloads (snapshot and re-copies).
    pub restores: u64,
    /// Keys waiting for a re-copy.
    pub dirty_keys: u64,
    /// Keys handled by the snapshot running now (or the last one).
    pub snapshot_done: u64,
    /// Keys on the source when that snapshot started.
    pub snapshot_total: u64,
    /// Keys read by every snapshot and resync of the run.
    pub snapshot_keys_read: u64,
    /// Payload bytes read by every snapshot and resync.
    pub snapshot_bytes: u64,
    /// Resyncs after gaps.
    pub resyncs: u64,
    /// Keys re-copied because replay reached them expired on the target.
    pub expiry_recopies: u64,
    /// Target keys re-copied after source evictions.
    pub eviction_recopies: u64,
    /// Error replies by code, whatever their class.
    pub errors: BTreeMap<String, u64>,
    /// Error replies only the target gave, by code.
    pub target_errors: BTreeMap<String, u64>,
    /// Error replies the source gave too.
    pub source_errors: u64,
    /// Journal bytes on disk.
    pub journal_bytes: u64,
    /// The source's output buffer for ferry's `MONITOR` connection at the guard's last look.
    pub monitor_buffer_bytes: u64,
    /// Source writes paused so far for fences, in ms.
    pub pause_ms: u64,
    /// The last fence reached.
    pub last_fence: Option<FenceMark>,
}

impl Sample {
    /// Error replies of every code.
    pub fn error_total(&self) -> u64 {
        self.errors.values().sum()
    }
}

#[derive(Debug, Default)]
struct Marks {
    phase: String,
    fences: Vec<FenceMark>,
}

/// A handle on a running migration's figures; cheap to clone, valid after the run ends (it
/// then reads the final counts).
#[derive(Clone)]
pub struct Probe {
    pub(super) journal: Journal,
    pub(super) stats: Arc<ReplayStats>,
    pub(super) shared: Arc<StitchShared>,
    pub(super) report: Arc<Mutex<MigrationReport>>,
    pub(super) snapshot: Arc<SnapshotCounters>,
    pub(super) omem: Arc<AtomicU64>,
    pub(super) started: Instant,
    marks: Arc<Mutex<Marks>>,
}

impl Probe {
    pub(super) fn new(
        journal: Journal,
        stats: Arc<ReplayStats>,
        shared: Arc<StitchShared>,
        report: Arc<Mutex<MigrationReport>>,
        snapshot: Arc<SnapshotCounters>,
        omem: Arc<AtomicU64>,
        started: Instant,
    ) -> Probe {
        Probe {
            journal,
            stats,
            shared,
            report,
            snapshot,
            omem,
            started,
            marks: Arc::new(Mutex::new(Marks {
                phase: "snapshot".into(),
                fences: Vec::new(),
            })),
        }
    }

    /// Says which phase runs now.
    pub fn set_phase(&self, phase: &str) {
        if let Ok(mut m) = self.marks.lock() {
            m.phase = phase.to_string();
        }
    }

    /// Records a fence replay reached (`switch` or `final`) and its pause.
    pub fn fence_reached(&self, name: &str, pause_ms: u64) {
        if let Ok(mut m) = self.marks.lock() {
            m.fences.push(FenceMark {
                name: name.to_string(),
                at_ms: now_ms().max(0) as u64,
                pause_ms,
            });
        }
    }

    /// Every fence reached so far, in order.
    pub fn fences(&self) -> Vec<FenceMark> {
        self.marks
            .lock()
            .map(|m| m.fences.clone())
            .unwrap_or_default()
    }

    /// Reads every figure now.
    pub fn sample(&self) -> Sample {
        let applied = self.stats.applied.load(Ordering::Relaxed);
        let journal_entries = self.journal.next_seq();
        let pending = journal_entries.saturating_sub(applied);
        let last = self.shared.last_ts_us.load(Ordering::Relaxed);
        let lag_ms = if pending == 0 || last == 0 {
            0
        } else {
            now_us().saturating_sub(last) / 1000
        };
        let (phase, last_fence) = self
            .marks
            .lock()
            .map(|m| (m.phase.clone(), m.fences.last().cloned()))
            .unwrap_or_default();
        let (resyncs, eviction_recopies, pause_ms) = self
            .report
            .lock()
            .map(|r| (r.resyncs, r.eviction_recopies, r.pause_ms))
            .unwrap_or_default();
        Sample {
            at_ms: now_ms().max(0) as u64,
            elapsed_secs: self.started.elapsed().as_secs_f64(),
            phase,
            snapshot_running: self.shared.snapshot_mode.load(Ordering::Relaxed),
            lag_ms,
            pending,
            journal_entries,
            applied_commands: self.stats.commands.load(Ordering::Relaxed),
            restores: self.stats.restores.load(Ordering::Relaxed),
            dirty_keys: self.shared.dirty.load(Ordering::Relaxed) as u64,
            snapshot_done: self.snapshot.done.load(Ordering::Relaxed),
            snapshot_total: self.snapshot.total.load(Ordering::Relaxed),
            snapshot_keys_read: self.snapshot.done_all.load(Ordering::Relaxed),
            snapshot_bytes: self.snapshot.bytes.load(Ordering::Relaxed),
            resyncs,
            expiry_recopies: self.stats.expiry_recopies.load(Ordering::Relaxed),
            eviction_recopies,
            errors: self.stats.errors_by_code(),
            target_errors: self.stats.target_errors_by_code(),
            source_errors: self.stats.source_errors.load(Ordering::Relaxed),
            journal_bytes: self.journal.disk_bytes(),
            monitor_buffer_bytes: self.omem.load(Ordering::Relaxed),
            pause_ms,
            last_fence,
        }
    }
}
