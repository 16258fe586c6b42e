//! What a migration is told: where to capture from and every setting of its stages.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::capture::{CaptureConfig, LateWrites};
use crate::command::{CommandTable, Mapper};
use crate::journal::FsyncPolicy;
use crate::snapshot::SnapshotConfig;

/// Where to capture from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize)]
pub enum CaptureMode {
    /// A replica when one answers, else the source.
    #[default]
    Auto,
    /// The source itself.
    Primary,
    /// A replica of the source (an error when none answers).
    Replica,
}

/// Migration settings.
#[derive(Clone)]
#[non_exhaustive]
pub struct MigrateConfig {
    /// Journal and state.
    pub state_dir: PathBuf,
    /// Capture node choice.
    pub capture: CaptureMode,
    /// Capture settings (the source output-buffer bound for `MONITOR` above all).
    pub capture_settings: CaptureConfig,
    /// Snapshot workers and batch sizes.
    pub snapshot: SnapshotConfig,
    /// Journal fsync policy.
    pub fsync: FsyncPolicy,
    /// Longest write pause on the source for the final fence.
    pub max_pause: Duration,
    /// Status line interval; `None` for no status lines.
    pub status_every: Option<Duration>,
    /// The plan's keyspace rules (filters, renames, db moves, hooks).
    pub mapper: Option<Arc<dyn Mapper>>,
    /// The ledger of writes after a cutover's switch (the caller's, to check conflicts against
    /// it); `None`: the migration makes its own.
    pub late: Option<Arc<LateWrites>>,
    /// The source's command table, when the caller loaded it already (to build `mapper` from
    /// it); `None`: the migration loads it.
    pub table: Option<Arc<CommandTable>>,
    /// Replay connections; each key's writes stay on one.
    pub replay_shards: usize,
    /// The plan ends with a cutover: a source that cannot pause writes alone (before Redis
    /// 6.2) is refused at start rather than when the switch is reached.
    pub cutover_planned: bool,
    /// The target already equals the source (a reverse sync started at a cutover's final
    /// fence): replay the stream from the start, with no snapshot.
    pub skip_snapshot: bool,
    /// Copy the source's function libraries with every snapshot (when the source has
    /// `FUNCTION`); off when the plan drops `FUNCTION` or `FUNCTION RESTORE`.
    pub functions: bool,
    /// Copy hash fields without their TTLs toward a target that has none (a plan's
    /// `on_field_ttls = "drop_field_ttls"`); otherwise such a run is refused at start.
    pub drop_field_ttls: bool,
    /// Publish replay operations to SQS for `ferry replay` processes instead of applying them
    /// here (`ferry capture`); the flag creates the queues when missing.
    #[cfg(feature = "sqs")]
    pub publish: Option<(crate::replay::remote::QueueSpec, bool)>,
}

impl MigrateConfig {
    /// Defaults with the given state dir.
    pub fn new(state_dir: impl Into<PathBuf>) -> MigrateConfig {
        MigrateConfig {
            state_dir: state_dir.into(),
            capture: CaptureMode::Auto,
            capture_settings: CaptureConfig::default(),
            snapshot: SnapshotConfig::default(),
            fsync: FsyncPolicy::EveryMs(100),
            max_pause: Duration::from_secs(5),
            status_every: Some(Duration::from_secs(1)),
            mapper: None,
            table: None,
            late: None,
            replay_shards: crate::replay::DEFAULT_SHARDS,
            cutover_planned: false,
            skip_snapshot: false,
            functions: true,
            drop_field_ttls: false,
            #[cfg(feature = "sqs")]
            publish: None,
        }
    }
}
