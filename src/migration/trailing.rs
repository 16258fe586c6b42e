//! What the trailing window after a cutover's switch is told and what it reports: its
//! settings, conflicts, why it ended. Plain data, shared by the window and the run report.

use std::time::Duration;

use serde::Serialize;

use crate::capture::{LateKey, LateSummary};

/// What happens to a late source write to a key the target has changed since the switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum ConflictPolicy {
    /// Apply it in arrival order and list the key.
    #[default]
    Report,
    /// Skip it: the target's write stands.
    TargetWins,
    /// Skip it and end the window at a fence with an error (exit 2).
    Fail,
}

impl ConflictPolicy {
    /// The plan's spelling (`cutover.on_conflict`).
    pub fn name(self) -> &'static str {
        match self {
            ConflictPolicy::Report => "report",
            ConflictPolicy::TargetWins => "target_wins",
            ConflictPolicy::Fail => "fail",
        }
    }
}

/// How the trailing window runs.
#[derive(Debug, Clone, Copy)]
pub struct WindowSpec {
    /// The window ends once the source has had no late write for this long.
    pub quiet: Duration,
    /// The window ends after this long whatever happens.
    pub max: Duration,
    /// What a conflict does.
    pub on_conflict: ConflictPolicy,
    /// Keep source writes paused through the window, disconnecting the clients it holds.
    pub hold_source: bool,
}

impl Default for WindowSpec {
    fn default() -> Self {
        WindowSpec {
            quiet: Duration::from_secs(5),
            max: Duration::from_secs(300),
            on_conflict: ConflictPolicy::Report,
            hold_source: false,
        }
    }
}

/// The first write to a key on the target since the switch.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TargetKey {
    /// Target time, in µs.
    pub ts_us: u64,
    /// The command, quoted, first 200 bytes.
    pub command: String,
    /// The client's address.
    pub addr: String,
}

/// One key written on both sides after the switch.
#[derive(Debug, Clone, Serialize)]
pub struct Conflict {
    /// The db on the target.
    pub db: u32,
    /// The key on the target, quoted.
    pub key: String,
    /// The late write on the old source.
    pub source: Option<LateKey>,
    /// The write on the target.
    pub target: TargetKey,
    /// What ferry did with the late source write.
    pub resolution: &'static str,
}

/// Why the window ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WindowEnd {
    /// The source had no late write for `quiet`.
    Quiet,
    /// The window reached `max`.
    MaxLength,
    /// A stop signal.
    Stopped,
    /// A conflict under `on_conflict = "fail"`.
    Conflict,
}

/// What the trailing window saw.
#[derive(Debug, Clone, Serialize)]
pub struct WindowReport {
    /// How long the window lasted, in ms.
    pub window_ms: u64,
    /// Why it ended.
    pub ended: WindowEnd,
    /// Late writes, per client.
    pub late: LateSummary,
    /// Keys written on both sides.
    pub conflicts: Vec<Conflict>,
    /// Source writes stayed paused through the window.
    pub hold_source: bool,
    /// Clients disconnected while the source was held.
    pub held_clients_disconnected: u64,
}
