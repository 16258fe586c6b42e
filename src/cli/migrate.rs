//! `ferry migrate`: the default plan without a file: capture, snapshot and replay until
//! stopped, then a final fence.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use ferry::migration::CaptureMode;
use ferry::net::{Endpoint, TlsOptions};
use ferry::snapshot;

/// Migrate a live source to a target until stopped, then stop at a final fence
///
/// Migrate a live source to a target: capture writes from MONITOR into the on-disk journal,
/// copy every key with fenced reads, and replay in order until stopped (Ctrl-C or SIGTERM).
/// On stop, ferry pauses source writes briefly, drains to a final fence and exits 0: the target
/// then equals the source at that fence. A stop during the snapshot lets it finish first (a
/// second signal exits 2 at once; the next run resyncs). Exit 2 also when keys failed only on
/// the target (`OOM`, `NOPERM`…) and still differ at the final fence.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// The server to migrate from, `redis://[user:pass@]host:port` (or `rediss://`).
    #[arg(long, env = "FERRY_SOURCE", value_name = "URL")]
    source: String,

    /// The server to migrate to.
    #[arg(long, env = "FERRY_TARGET", value_name = "URL")]
    target: String,

    #[command(flatten)]
    source_tls: super::tls::SourceTls,

    #[command(flatten)]
    target_tls: super::tls::TargetTls,

    /// Directory for the journal and state.
    #[arg(long, default_value = "./ferry-state", value_name = "DIR")]
    state_dir: PathBuf,

    /// Where to capture writes: a replica when one answers (auto), the source, or a replica.
    #[arg(long, value_enum, default_value_t = CaptureMode::Auto)]
    capture: CaptureMode,

    /// Parallel snapshot workers.
    #[arg(long, default_value_t = snapshot::DEFAULT_WORKERS)]
    workers: usize,

    /// Replay connections to the target: keys are sharded by slot, each shard applied in order
    /// over its own pipelined connection (default 4).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=64))]
    replay_shards: Option<u16>,
    /// Cap on commands per second that the snapshot sends to the source.
    #[arg(long, value_name = "OPS")]
    max_source_ops: Option<u64>,

    /// Bound on the source's output buffer for ferry's MONITOR connection, in bytes: past it,
    /// capture disconnects itself (so the source never evicts keys or refuses writes because
    /// ferry reads too slowly) and a fenced resync follows.
    #[arg(long, default_value_t = ferry::capture::DEFAULT_OMEM_LIMIT, value_name = "BYTES")]
    max_monitor_buffer: u64,

    /// Longest write pause on the source for the final fence, in milliseconds.
    #[arg(long, default_value_t = 5000, value_name = "MS")]
    max_pause_ms: u64,

    /// After catching up, compare every key with fenced reads (`full`) or a sample of N keys,
    /// while replay goes on; differences stop the run with exit code 1.
    #[arg(long, value_name = "full|N", num_args = 0..=1, default_missing_value = "full", value_parser = parse_verify)]
    verify: Option<String>,

    /// Cut over once caught up: pause source writes (at most --max-pause-ms), drain to a final
    /// fence, disconnect the clients the pause held (they reconnect and retry), unpause, exit.
    #[arg(long)]
    cutover: bool,

    /// With --cutover: keep replaying target → source after the switch until stopped, so a
    /// rollback to the source loses nothing.
    #[arg(long, requires = "cutover")]
    reverse_sync: bool,

    /// With --cutover: the trailing window after the switch ends once the old source has had
    /// no write for this long (writes that still reach it are replayed to the target).
    #[arg(long, requires = "cutover", value_name = "MS")]
    quiet_ms: Option<u64>,

    /// With --cutover: the trailing window ends after this long at the latest.
    #[arg(long, requires = "cutover", value_name = "MS")]
    max_trailing_ms: Option<u64>,

    /// With --cutover: what a late source write to a key the target changed since the switch
    /// does: apply it and report the key, skip it, or stop at a fence with exit code 2.
    #[arg(long, requires = "cutover", value_enum)]
    on_conflict: Option<ferry::migration::ConflictPolicy>,

    /// With --cutover: keep source writes paused through the trailing window and disconnect
    /// the clients it holds, so late writers reconnect to the new primary.
    #[arg(long, requires = "cutover", conflicts_with = "reverse_sync")]
    hold_source: bool,

    /// Serve Prometheus metrics at http://HOST:PORT/metrics while the run goes on.
    #[arg(long, value_name = "HOST:PORT")]
    metrics_addr: Option<std::net::SocketAddr>,

    /// Write the final report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

fn parse_verify(s: &str) -> Result<String, String> {
    match s {
        "full" => Ok(s.to_string()),
        n => match n.parse::<u64>() {
            Ok(v) if v > 0 => Ok(n.to_string()),
            _ => Err(format!("expected `full` or a sample size ≥ 1, got {n:?}")),
        },
    }
}

/// The default plan's inputs from command-line flags (`ferry.env` overrides).
pub(super) fn default_plan_overrides(
    source: &str,
    target: &str,
    tls: (&TlsOptions, &TlsOptions),
    capture: CaptureMode,
    state_dir: &std::path::Path,
) -> Vec<(String, String)> {
    let capture = match capture {
        CaptureMode::Auto => "auto",
        CaptureMode::Primary => "primary",
        CaptureMode::Replica => "replica",
    };
    let mut inputs = super::tls::plan_inputs("SOURCE", tls.0);
    inputs.extend(super::tls::plan_inputs("TARGET", tls.1));
    inputs.extend([
        ("SOURCE_URL".to_string(), source.to_string()),
        ("TARGET_URL".to_string(), target.to_string()),
        ("FERRY_CAPTURE".to_string(), capture.to_string()),
        (
            "FERRY_STATE_DIR".to_string(),
            state_dir.display().to_string(),
        ),
    ]);
    inputs
}

pub async fn run(args: MigrateArgs) -> anyhow::Result<ExitCode> {
    // Bad URLs fail here with the URL named (redacted), before any Lua runs.
    let tls = (args.source_tls.options(), args.target_tls.options());
    Endpoint::parse_with_tls(&args.source, &tls.0)?;
    Endpoint::parse_with_tls(&args.target, &tls.1)?;
    anyhow::ensure!(args.workers > 0, "--workers must be at least 1");
    anyhow::ensure!(
        args.max_monitor_buffer > 0,
        "--max-monitor-buffer must be at least 1 byte"
    );
    // Every flag reaches the migration one way: as an input of the default plan, which turns
    // it into a plan field like any plan file would.
    let mut inputs = default_plan_overrides(
        &args.source,
        &args.target,
        (&tls.0, &tls.1),
        args.capture,
        &args.state_dir,
    );
    let flag = |on: bool| if on { "1" } else { "" }.to_string();
    inputs.extend([
        ("FERRY_VERIFY".to_string(), args.verify.unwrap_or_default()),
        ("FERRY_CUTOVER".to_string(), flag(args.cutover)),
        ("FERRY_REVERSE_SYNC".to_string(), flag(args.reverse_sync)),
        ("FERRY_HOLD_SOURCE".to_string(), flag(args.hold_source)),
        (
            "FERRY_QUIET_MS".to_string(),
            args.quiet_ms.map(|n| n.to_string()).unwrap_or_default(),
        ),
        (
            "FERRY_MAX_TRAILING_MS".to_string(),
            args.max_trailing_ms
                .map(|n| n.to_string())
                .unwrap_or_default(),
        ),
        (
            "FERRY_ON_CONFLICT".to_string(),
            args.on_conflict
                .map(|p| p.name().to_string())
                .unwrap_or_default(),
        ),
        ("FERRY_WORKERS".to_string(), args.workers.to_string()),
        (
            "FERRY_REPLAY_SHARDS".to_string(),
            args.replay_shards
                .map(|n| n.to_string())
                .unwrap_or_default(),
        ),
        (
            "FERRY_MAX_SOURCE_OPS".to_string(),
            args.max_source_ops
                .map(|n| n.to_string())
                .unwrap_or_default(),
        ),
        (
            "FERRY_MAX_PAUSE_MS".to_string(),
            args.max_pause_ms.to_string(),
        ),
        (
            "FERRY_MAX_MONITOR_BUFFER".to_string(),
            args.max_monitor_buffer.to_string(),
        ),
        (
            "FERRY_METRICS_ADDR".to_string(),
            args.metrics_addr.map(|a| a.to_string()).unwrap_or_default(),
        ),
    ]);
    let plan = ferry::plan::load_default(&ferry::plan::LoadOptions::with_overrides(&inputs))?;
    super::plan::run_plan(plan, args.json, false).await
}
