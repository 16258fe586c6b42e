//! `ferry run` and `ferry check`: Lua plans driving the migration pipeline.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use ferry::migration::{Outcome, PlanRunner, RunError, RunReport, WindowReport, fatal};
use ferry::observe::{ObserveConfig, Observer};
use ferry::plan::{self, Plan};

/// Run a Lua migration plan: its phases, filters, renames, db moves and hooks
///
/// Run a migration plan: its phases in order (snapshot, catch_up, cutover, custom Lua phases).
/// The snapshot starts with the migration, before the first built-in phase; custom phases
/// listed before a leading "snapshot" run before anything is copied. Without a cutover phase,
/// replay goes on until Ctrl-C/SIGTERM (or, with --stop-after-phases, until the phases are
/// done), then stops at a final fence.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The plan file.
    plan: PathBuf,
    /// `key=value`, seen by `ferry.env(key)` before the environment; repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_set)]
    set: Vec<(String, String)>,
    /// Serve Prometheus metrics at http://HOST:PORT/metrics while the run goes on (overrides
    /// the plan's `metrics_addr`).
    #[arg(long, value_name = "HOST:PORT")]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Write the final report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Without a cutover phase, stop at a final fence once the phases are done instead of
    /// replaying until Ctrl-C/SIGTERM (a rehearsal on a quiet copy ends by itself).
    #[arg(long)]
    stop_after_phases: bool,
}

/// Validate a plan and dry-run its rules without touching a server
///
/// Validate a plan without touching any server: load it, then dry-run its filters, rewrites
/// and hook over sample commands. Exit 0 when the plan is valid, 2 otherwise.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The plan file.
    plan: PathBuf,
    /// `key=value`, seen by `ferry.env(key)` before the environment; repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_set)]
    set: Vec<(String, String)>,
}

pub(super) fn parse_set(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        // A URL typed without its `KEY=` may hold a password.
        .ok_or_else(|| format!("expected KEY=VALUE, got '{}'", ferry::net::redact_url(s)))
}

pub fn check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let plan = plan::load(&args.plan, &args.set)?;
    let samples = if plan.check_samples.is_empty() {
        plan::builtin_samples()
    } else {
        plan.check_samples.clone()
    };
    let report = plan::check(&plan, &samples);
    super::print_out(&report)?;
    Ok(if fatal_hook_errors(&report) == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(super::EXIT_ERROR)
    })
}

/// Hook failures that would stop a run (`on_hook_error = "fail"`).
fn fatal_hook_errors(report: &plan::CheckReport) -> usize {
    report.lines.iter().filter(|l| fatal(&l.outcome)).count()
}

pub async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let mut plan = plan::load(&args.plan, &args.set)?;
    if args.metrics_addr.is_some() {
        plan.metrics_addr = args.metrics_addr;
    }
    run_plan(plan, args.json, args.stop_after_phases).await
}

/// Runs a loaded plan until its phases end or a stop signal, prints what it did and maps the
/// outcome to the exit code: 0 done, 1 differences found, 2 (an error) otherwise.
pub(super) async fn run_plan(
    plan: Plan,
    json: Option<PathBuf>,
    stop_after_phases: bool,
) -> anyhow::Result<ExitCode> {
    let name = plan.name.clone();
    let stop = super::stop_on_signals();
    let observer = Observer::start(observe_config(&plan)?)?;
    let outcome = PlanRunner::new(plan, stop)
        .stop_after_phases(stop_after_phases)
        .on_verify(|report| {
            // A reader that went away is not the run's failure.
            let _ = super::print_out(report.grouped(10));
        })
        .on_start(observer.attach())
        .run()
        .await;
    observer.finish(&outcome).await;
    let outcome = match outcome {
        Err(RunError::Conflict {
            first,
            count,
            migration,
        }) => {
            // Stopped at a fence: the report still tells what happened.
            if let Some(w) = &migration.window {
                say_window(w);
            }
            if let Some(path) = &json {
                let _ = std::fs::write(path, serde_json::to_vec_pretty(&*migration)?);
            }
            return Err(RunError::Conflict {
                first,
                count,
                migration,
            }
            .into());
        }
        other => other?,
    };
    match outcome {
        Outcome::NotStarted => {
            say!(
                "Stopped before the migration started (plan {name}): nothing was captured or copied."
            );
            Ok(ExitCode::SUCCESS)
        }
        Outcome::Differences(report) => {
            write_json(json.as_deref(), &report)?;
            say!(
                "Verification found {} differences; stopped at the final fence without running later phases.",
                report.verify.as_ref().map_or(0, |v| v.differences.len())
            );
            Ok(ExitCode::from(1))
        }
        Outcome::Finished(report) => {
            if let Some(back) = &report.reverse {
                say!(
                    "Reverse sync stopped at a final fence: {} commands replayed to the old source, target writes paused {} ms",
                    back.commands,
                    back.pause_ms
                );
            }
            let m = &report.migration;
            if let Some(w) = &m.window {
                say_window(w);
            }
            say!(
                "Migration stopped at the final fence (plan {}): {} snapshot keys, {} commands replayed, {} restores, source writes paused {} ms; errors: {}{}{}",
                report.plan,
                m.snapshot_keys,
                m.commands,
                m.restores,
                m.pause_ms,
                m.error_counts(),
                m.invisible_changes(),
                report
                    .on_command
                    .map(|h| format!("; {h}"))
                    .unwrap_or_default()
            );
            write_json(json.as_deref(), &report)?;
            Ok(ExitCode::SUCCESS)
        }
        _ => anyhow::bail!("plan {name}: an outcome this ferry does not know"),
    }
}

/// Where the run's status file and report go (its state dir), and its metrics listener.
fn observe_config(plan: &Plan) -> anyhow::Result<ObserveConfig> {
    let mut cfg = ObserveConfig::new(
        ferry::migration::migrate_config(plan)?.state_dir,
        &plan.name,
    );
    cfg.metrics_addr = plan.metrics_addr;
    cfg.target = plan.target.endpoint().ok();
    Ok(cfg)
}

/// The trailing window's summary: late writes per client, conflicts (first and count).
fn say_window(w: &WindowReport) {
    let clients: Vec<String> = w
        .late
        .clients
        .iter()
        .take(5)
        .map(|c| match &c.name {
            Some(n) => format!("{} ({n}): {}", c.addr, c.writes),
            None => format!("{}: {}", c.addr, c.writes),
        })
        .collect();
    let more = w.late.clients.len().saturating_sub(clients.len());
    say!(
        "Trailing window: {} ms, ended {:?}; {} late writes replayed from {} clients{}{}; {} conflicts{}",
        w.window_ms,
        w.ended,
        w.late.writes,
        w.late.clients.len(),
        if clients.is_empty() {
            String::new()
        } else {
            format!(" ({})", clients.join(", "))
        },
        if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        },
        w.conflicts.len(),
        w.conflicts
            .first()
            .map(|c| format!(
                " (first: db{} {}: source {} / target {}, {})",
                c.db,
                c.key,
                c.source.as_ref().map_or("?", |s| s.command.as_str()),
                c.target.command,
                c.resolution
            ))
            .unwrap_or_default()
    );
}

/// Writes the `--json` report.
fn write_json(path: Option<&std::path::Path>, report: &RunReport) -> anyhow::Result<()> {
    if let Some(path) = path {
        std::fs::write(path, serde_json::to_vec_pretty(&report.to_json())?)
            .map_err(|e| anyhow::anyhow!("cannot write report {}: {e}", path.display()))?;
    }
    Ok(())
}
