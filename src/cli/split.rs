//! `ferry capture` and `ferry replay`: the two halves of a migration that replays on other
//! processes (or machines), joined by SQS.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use ferry::journal::sqs::SqsConfig;
use ferry::migration::CaptureMode;
use ferry::net::Endpoint;
use ferry::replay::DEFAULT_SHARDS;
use ferry::replay::remote::{QueueSpec, Worker, WorkerConfig};

/// Scale-out capture: capture and snapshot, publishing replay operations to SQS
///
/// Capture the source's writes, snapshot it with fenced reads, and publish the ordered replay
/// operations to SQS (one message group per shard) for `ferry replay` processes, until
/// Ctrl-C/SIGTERM; then pause source writes briefly and publish up to a final fence.
#[derive(Debug, Args)]
pub struct CaptureArgs {
    /// The server to migrate from.
    #[arg(long, env = "FERRY_SOURCE", value_name = "URL")]
    source: String,

    /// The server to migrate to: read only here (the snapshot's sweep of keys the source no
    /// longer has); the replay processes write it.
    #[arg(long, env = "FERRY_TARGET", value_name = "URL")]
    target: String,

    #[command(flatten)]
    source_tls: super::tls::SourceTls,

    #[command(flatten)]
    target_tls: super::tls::TargetTls,

    /// The SQS queue URL (`….fifo` for FIFO); `{shard}` in it means one queue per shard.
    #[arg(long, env = "FERRY_QUEUE", value_name = "URL")]
    queue: String,

    /// Shards: message groups (or queues) that replay processes apply independently.
    #[arg(long, default_value_t = DEFAULT_SHARDS)]
    shards: usize,

    /// Create the queue(s) when missing.
    #[arg(long)]
    create_queue: bool,

    /// Directory for the local journal and state.
    #[arg(long, default_value = "./ferry-state", value_name = "DIR")]
    state_dir: PathBuf,

    /// Where to capture writes.
    #[arg(long, value_enum, default_value_t = CaptureMode::Auto)]
    capture: CaptureMode,

    /// Longest write pause on the source for the final fence, in milliseconds.
    #[arg(long, default_value_t = 5000, value_name = "MS")]
    max_pause_ms: u64,

    /// Serve Prometheus metrics at http://HOST:PORT/metrics while the run goes on.
    #[arg(long, value_name = "HOST:PORT")]
    metrics_addr: Option<std::net::SocketAddr>,

    /// Write the final report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

pub async fn capture(args: CaptureArgs) -> anyhow::Result<ExitCode> {
    let tls = (args.source_tls.options(), args.target_tls.options());
    Endpoint::parse_with_tls(&args.source, &tls.0)?;
    Endpoint::parse_with_tls(&args.target, &tls.1)?;
    queue_spec(&args.queue, args.shards)?;
    // The default plan with an SQS journal: this process keeps its own journal in the state
    // dir and publishes; `ferry replay` processes apply.
    let mut inputs = super::migrate::default_plan_overrides(
        &args.source,
        &args.target,
        (&tls.0, &tls.1),
        args.capture,
        &args.state_dir,
    );
    inputs.extend([
        ("FERRY_QUEUE".to_string(), args.queue.clone()),
        ("FERRY_SHARDS".to_string(), args.shards.to_string()),
        (
            "FERRY_CREATE_QUEUE".to_string(),
            if args.create_queue { "1" } else { "" }.to_string(),
        ),
        (
            "FERRY_MAX_PAUSE_MS".to_string(),
            args.max_pause_ms.to_string(),
        ),
        (
            "FERRY_METRICS_ADDR".to_string(),
            args.metrics_addr.map(|a| a.to_string()).unwrap_or_default(),
        ),
    ]);
    let plan = ferry::plan::load_default(&ferry::plan::LoadOptions::with_overrides(&inputs))?;
    super::plan::run_plan(plan, args.json, false).await
}

/// Scale-out replay: apply what `ferry capture` publishes to the target
///
/// Apply the operations `ferry capture` publishes to the target, until Ctrl-C/SIGTERM. Several
/// processes may share the work: on one FIFO queue SQS hands each message group (shard) to one
/// of them at a time; with one queue per shard (`{shard}` in the URL), `--worker K/N` picks the
/// shards `s % N == K`.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The source: only for re-copy requests (`ECHO`) after a crashed worker's batch.
    #[arg(long, env = "FERRY_SOURCE", value_name = "URL")]
    source: String,

    /// The server to write.
    #[arg(long, env = "FERRY_TARGET", value_name = "URL")]
    target: String,

    #[command(flatten)]
    source_tls: super::tls::SourceTls,

    #[command(flatten)]
    target_tls: super::tls::TargetTls,

    /// The SQS queue URL, as given to `ferry capture`.
    #[arg(long, env = "FERRY_QUEUE", value_name = "URL")]
    queue: String,

    /// Shards, as given to `ferry capture`.
    #[arg(long, default_value_t = DEFAULT_SHARDS)]
    shards: usize,

    /// This process's part with one queue per shard: `K/N`.
    #[arg(long, default_value = "0/1", value_name = "K/N", value_parser = parse_worker)]
    worker: (usize, usize),

    /// Replay connections to the target.
    #[arg(long, default_value_t = DEFAULT_SHARDS)]
    workers: usize,

    /// How long a received message stays invisible to other processes, and how long a shard's
    /// lease outlives its last renewal: after a crash or a stall, another process takes the
    /// shard over after this long.
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    visibility_timeout_secs: u64,

    /// Directory for the queue checkpoints (standard queues).
    #[arg(long, default_value = "./ferry-replay-state", value_name = "DIR")]
    state_dir: PathBuf,

    /// Serve Prometheus metrics at http://HOST:PORT/metrics while the run goes on.
    #[arg(long, value_name = "HOST:PORT")]
    metrics_addr: Option<std::net::SocketAddr>,

    /// Write the final report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

fn parse_worker(s: &str) -> Result<(usize, usize), String> {
    let (k, n) = s
        .split_once('/')
        .ok_or_else(|| format!("expected K/N, got {s:?}"))?;
    let (k, n): (usize, usize) = (
        k.parse().map_err(|_| format!("bad K in {s:?}"))?,
        n.parse().map_err(|_| format!("bad N in {s:?}"))?,
    );
    if n == 0 || k >= n {
        return Err(format!("need 0 ≤ K < N, got {s:?}"));
    }
    Ok((k, n))
}

fn queue_spec(url: &str, shards: usize) -> anyhow::Result<QueueSpec> {
    anyhow::ensure!(
        url.starts_with("http://") || url.starts_with("https://"),
        "--queue must be an SQS queue URL (https://sqs.<region>.amazonaws.com/<account>/<name>), got {url:?}"
    );
    anyhow::ensure!(
        (1..=ferry::replay::remote::MAX_SHARDS).contains(&shards),
        "--shards must be 1..={}",
        ferry::replay::remote::MAX_SHARDS
    );
    Ok(QueueSpec {
        url: url.to_string(),
        base: SqsConfig::new(url),
        shards,
    })
}

pub async fn replay(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let source = Endpoint::parse_with_tls(&args.source, &args.source_tls.options())?;
    let target = Endpoint::parse_with_tls(&args.target, &args.target_tls.options())?;
    let mut spec = queue_spec(&args.queue, args.shards)?;
    if let Some(addr) = args.metrics_addr {
        ferry::observe::install_metrics(addr)?;
    }
    spec.base.visibility_timeout = Duration::from_secs(args.visibility_timeout_secs.max(1));
    let cfg = WorkerConfig {
        queue: spec,
        index: args.worker.0,
        count: args.worker.1,
        connections: args.workers.max(1),
        state_dir: args.state_dir,
    };
    tracing::info!(
        worker = format!("{}/{}", cfg.index, cfg.count),
        target = %target,
        "Replaying from SQS until Ctrl-C or SIGTERM."
    );
    let stop = super::stop_on_signals();
    let report = Worker::new(cfg, source, target)
        .run(async move { stop.wait().await })
        .await?;
    say!(
        "Replay stopped: {} entries in {} batches, {} redelivered, {} applied before, {} handed back, {} refused by the lease fence; leases: {} taken, {} lost; {} stale, {} gaps; {} commands, {} restores; errors: {}",
        report.entries,
        report.batches,
        report.redelivered_batches,
        report.applied_before,
        report.handed_back,
        report.fenced_batches,
        report.leases_taken,
        report.leases_lost,
        report.stale_batches,
        report.gaps,
        report.commands,
        report.restores,
        ferry::replay::policy::error_counts(report.source_errors, &report.target_errors)
    );
    if let Some(path) = args.json {
        std::fs::write(&path, serde_json::to_vec_pretty(&report)?)
            .map_err(|e| anyhow::anyhow!("cannot write report {}: {e}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}
