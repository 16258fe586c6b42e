//! What a migration tells: its report and its typed errors.

use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;

use super::trailing::WindowReport;
use crate::net::NetError;
use crate::plan::HookError;
use crate::replay::policy;
use crate::verify::VerifyError;

/// What a migration did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MigrationReport {
    /// The source's engine and version (`Redis 7.0.15`).
    pub source_server: String,
    /// The target's engine and version.
    pub target_server: String,
    /// Where writes were captured.
    pub capture_node: String,
    /// True when the capture node was a replica.
    pub from_replica: bool,
    /// Keys read by snapshots and resyncs.
    pub snapshot_keys: u64,
    /// Resyncs after gaps.
    pub resyncs: u64,
    /// Failovers of a cluster source's primaries followed during the run (each with a resync).
    pub source_failovers: u64,
    /// Slot moves between a cluster source's shards followed during the run (each with a
    /// resync).
    pub source_slot_moves: u64,
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
    /// After a cutover's trailing window: the pause of the fence that ended it, in ms (the
    /// switch's own pause is `pause_ms`).
    pub final_pause_ms: u64,
    /// The trailing window after a cutover's switch: late writes per client, conflicts.
    pub window: Option<WindowReport>,
    /// Keys the source evicted during the run (invisible in `MONITOR`; see
    /// [`evictions`]).
    pub evicted_keys: u64,
    /// Target keys the eviction sweeps found without a source key, re-copied through fences.
    pub eviction_recopies: u64,
    /// Keys the source evicted while the final fence was being drained, after its last sweep:
    /// the target may still hold them.
    pub evicted_during_fence: u64,
    /// Keys re-copied because replay reached them after their expiry on the target (a write
    /// the source applied while they were alive).
    pub expiry_recopies: u64,
    /// Field-TTL commands (`HEXPIRE` family, `HPERSIST`) not replayed to a target without
    /// hash-field TTLs, under a plan's `on_field_ttls = "drop_field_ttls"`.
    pub field_ttls_dropped: u64,
    /// `DUMP` payloads rewritten for a target with an older RDB version (Valkey 8 → Redis 7.0).
    pub payloads_rewritten: u64,
    /// Payloads that could not be rewritten: the target refused them and their keys are
    /// reported as diverged.
    pub payloads_not_rewritten: u64,
    /// Toward a cluster: `MOVED` and `ASK` replies replay followed.
    pub cluster_redirects: u64,
    /// Toward a cluster: commands across slots split into one per slot.
    pub cross_slot_split: u64,
    /// Toward a cluster: keys of commands across slots re-copied instead of replayed.
    pub cross_slot_recopies: u64,
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
            + &match (
                self.cluster_redirects,
                self.cross_slot_split,
                self.cross_slot_recopies,
            ) {
                (0, 0, 0) => String::new(),
                (r, s, c) => format!(
                    "; cluster target: {r} redirects followed, {s} commands split by slot, {c} keys of commands across slots re-copied"
                ),
            }
            + &match self.field_ttls_dropped {
                0 => String::new(),
                n => format!(
                    "; {n} hash-field TTL commands dropped (on_field_ttls = \"drop_field_ttls\")"
                ),
            }
            + &match (self.payloads_rewritten, self.payloads_not_rewritten) {
                (0, 0) => String::new(),
                (n, 0) => format!("; {n} DUMP payloads rewritten for the target's RDB version"),
                (n, f) => format!(
                    "; {n} DUMP payloads rewritten for the target's RDB version, {f} could not be"
                ),
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
    /// The pair of servers is one this ferry cannot migrate live.
    #[error("unsupported: {0}")]
    Unsupported(String),
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

pub(super) fn stage(stage: &'static str, message: impl std::fmt::Display) -> MigrateError {
    MigrateError::Stage {
        stage,
        message: message.to_string(),
    }
}

/// Why a plan could not run to its end.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The plan's dry run failed: the first few failures, joined.
    #[error("{path}: the plan fails its dry run (run `ferry check` for details): {failures}")]
    DryRun { path: PathBuf, failures: String },
    /// The plan asks for something this ferry cannot do.
    #[error("{path}: {message}")]
    Unsupported { path: PathBuf, message: String },
    /// A server could not be reached.
    #[error(transparent)]
    Net(#[from] NetError),
    /// The migration failed.
    #[error(transparent)]
    Migrate(#[from] MigrateError),
    /// A fenced verification failed (not: found differences).
    #[error(transparent)]
    Verify(#[from] VerifyError),
    /// A phase hook failed.
    #[error(transparent)]
    Hook(#[from] HookError),
    /// The reverse sync could not start at the final fence; the source was released.
    #[error("reverse sync could not start: {0}; the switch was not made")]
    ReverseSync(MigrateError),
    /// The switch hook failed; the source was released and stays the primary.
    #[error("{0}; the source was unpaused and stays the primary")]
    Switch(HookError),
    /// The trailing window met a conflict under `on_conflict = "fail"` and stopped at a fence.
    #[error(
        "the trailing window stopped at a final fence on {count} conflict(s) (on_conflict = \"fail\"); first: {first}"
    )]
    Conflict {
        first: String,
        count: usize,
        /// The migration's report at that fence.
        migration: Box<MigrationReport>,
    },
    /// The reverse sync failed after the switch.
    #[error("reverse sync: {0}")]
    ReverseFailed(MigrateError),
}
