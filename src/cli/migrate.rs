//! `ferry migrate`: the default plan without a file: capture, snapshot and replay until
//! stopped, then a final fence.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use ferry::net::Endpoint;
use ferry::pipeline::{CaptureMode, MigrateConfig};
use ferry::snapshot;

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

    /// Directory for the journal and state.
    #[arg(long, default_value = "./ferry-state", value_name = "DIR")]
    state_dir: PathBuf,

    /// Where to capture writes: a replica when one answers (auto), the source, or a replica.
    #[arg(long, value_enum, default_value_t = CaptureMode::Auto)]
    capture: CaptureMode,

    /// Parallel snapshot workers.
    #[arg(long, default_value_t = snapshot::DEFAULT_WORKERS)]
    workers: usize,

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

/// SIGINT/SIGTERM, listened for from the moment it is made: a signal that arrives while a
/// plan's phases run is not lost (a background job's inherited SIGINT disposition is "ignore",
/// so an unhandled one would vanish), and stops the run at a final fence.
#[derive(Clone)]
pub struct Stop {
    flag: std::sync::Arc<std::sync::atomic::AtomicBool>,
    notify: std::sync::Arc<tokio::sync::Notify>,
}

impl Stop {
    /// Installs the handlers now.
    pub fn install() -> Stop {
        let stop = Stop {
            flag: Default::default(),
            notify: Default::default(),
        };
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let signals = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            );
            let s = stop.clone();
            tokio::spawn(async move {
                match signals {
                    (Ok(mut int), Ok(mut term)) => {
                        tokio::select! {
                            _ = int.recv() => {}
                            _ = term.recv() => {}
                        }
                        s.set();
                        // A stop during a long snapshot waits for it; a second signal is the
                        // operator's way out, as a kill would be: the next run resyncs.
                        tokio::select! {
                            _ = int.recv() => {}
                            _ = term.recv() => {}
                        }
                        say!(
                            "ferry: error: a second stop signal: exiting without a final fence; the target may differ, and the next run resyncs every key"
                        );
                        std::process::exit(i32::from(super::EXIT_ERROR));
                    }
                    _ => {
                        let _ = tokio::signal::ctrl_c().await;
                        s.set();
                    }
                }
            });
        }
        #[cfg(not(unix))]
        {
            let s = stop.clone();
            tokio::spawn(async move {
                let _ = tokio::signal::ctrl_c().await;
                s.set();
            });
        }
        stop
    }

    fn set(&self) {
        self.flag.store(true, std::sync::atomic::Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    /// True once a signal came.
    pub fn requested(&self) -> bool {
        self.flag.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Resolves once a signal came (at once if one already did).
    pub async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.requested() {
                return;
            }
            notified.await;
        }
    }
}

/// The default plan's inputs from command-line flags (`ferry.env` overrides).
pub(super) fn default_plan_overrides(
    source: &str,
    target: &str,
    capture: CaptureMode,
    state_dir: &std::path::Path,
) -> Vec<(String, String)> {
    let capture = match capture {
        CaptureMode::Auto => "auto",
        CaptureMode::Primary => "primary",
        CaptureMode::Replica => "replica",
    };
    vec![
        ("SOURCE_URL".to_string(), source.to_string()),
        ("TARGET_URL".to_string(), target.to_string()),
        ("FERRY_CAPTURE".to_string(), capture.to_string()),
        (
            "FERRY_STATE_DIR".to_string(),
            state_dir.display().to_string(),
        ),
    ]
}

pub async fn run(args: MigrateArgs) -> anyhow::Result<ExitCode> {
    // Bad URLs fail here with the URL named (redacted), before any Lua runs.
    Endpoint::parse(&args.source)?;
    Endpoint::parse(&args.target)?;
    anyhow::ensure!(args.workers > 0, "--workers must be at least 1");
    anyhow::ensure!(
        args.max_monitor_buffer > 0,
        "--max-monitor-buffer must be at least 1 byte"
    );
    let mut overrides =
        default_plan_overrides(&args.source, &args.target, args.capture, &args.state_dir);
    overrides.extend([
        ("FERRY_VERIFY".to_string(), args.verify.unwrap_or_default()),
        (
            "FERRY_CUTOVER".to_string(),
            if args.cutover { "1" } else { "" }.to_string(),
        ),
        (
            "FERRY_REVERSE_SYNC".to_string(),
            if args.reverse_sync { "1" } else { "" }.to_string(),
        ),
    ]);
    // `ferry migrate` is the default plan of the embedded library, with the flags applied.
    let plan = ferry::plan::load_default(&ferry::plan::LoadOptions::with_overrides(&overrides))?;
    let workers = args.workers;
    let max_source_ops = args.max_source_ops;
    let max_pause = std::time::Duration::from_millis(args.max_pause_ms);
    let max_monitor_buffer = args.max_monitor_buffer;
    super::plan::run_plan(plan, args.json, move |cfg: &mut MigrateConfig| {
        cfg.capture_settings.omem_limit = max_monitor_buffer;
        cfg.snapshot.workers = workers;
        cfg.snapshot.max_source_ops = max_source_ops;
        cfg.max_pause = max_pause;
    })
    .await
}
