//! `ferry run` and `ferry check`: Lua plans driving the migration pipeline.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clap::Args;
use ferry::command::{Argv, CommandTable};
use ferry::journal::FsyncPolicy;
use ferry::net::Endpoint;
use ferry::pipeline::{CaptureMode, MigrateConfig, Migration, Running};
use ferry::plan::{self, CaptureChoice, JournalSpec, Mapped, PhaseContext, PhaseKind, Plan, Rule};
use ferry::replay::Mapper;
use ferry::verify::{KeyView, VerifyConfig, VerifyReport, VerifyRules};

/// Run a migration plan: its phases in order (snapshot, catch_up, cutover, custom Lua phases).
/// The snapshot starts with the migration, before the first built-in phase; custom phases
/// listed before a leading "snapshot" run before anything is copied. Without a cutover phase,
/// replay goes on until Ctrl-C/SIGTERM, then stops at a final fence.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The plan file.
    plan: PathBuf,
    /// `key=value`, seen by `ferry.env(key)` before the environment; repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_set)]
    set: Vec<(String, String)>,
    /// Write the final report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

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
    report
        .lines
        .iter()
        .filter(|l| {
            matches!(
                l.outcome,
                plan::CheckOutcome::HookError { skipped: false, .. }
            )
        })
        .count()
}

/// Dry-runs the plan's rules and hook before anything touches a server, so that a hook that
/// fails on ordinary commands stops the run while the target is still untouched.
fn preflight(plan: &Plan) -> anyhow::Result<()> {
    let samples = if plan.check_samples.is_empty() {
        plan::builtin_samples()
    } else {
        plan.check_samples.clone()
    };
    let report = plan::check(plan, &samples);
    if fatal_hook_errors(&report) > 0 {
        let failed: Vec<String> = report
            .lines
            .iter()
            .filter(|l| {
                matches!(
                    l.outcome,
                    plan::CheckOutcome::HookError { skipped: false, .. }
                )
            })
            .take(3)
            .map(|l| l.to_string())
            .collect();
        anyhow::bail!(
            "{}: the plan fails its dry run (run `ferry check` for details): {}",
            plan.path.display(),
            failed.join("; ")
        );
    }
    Ok(())
}

/// The plan's rules behind replay's mapper seam.
struct PlanMapper {
    plan: Plan,
    table: &'static CommandTable,
    /// Commands `on_command` failed on and that were skipped (`on_hook_error = "skip"`).
    hook_errors: AtomicU64,
}

/// Warnings logged for skipped commands before ferry only counts them (the final report has
/// the total).
const LOGGED_HOOK_ERRORS: u64 = 10;

/// What `on_command` did during a run, for the final report.
#[derive(Debug, Clone, Copy, serde::Serialize)]
struct HookReport {
    /// Commands the hook was called on.
    calls: u64,
    /// Calls that failed.
    errors: u64,
    /// Commands dropped because the hook failed on them (`on_hook_error = "skip"`).
    skipped_commands: u64,
    /// Time spent in the hook.
    seconds: f64,
}

impl HookReport {
    /// The hook's counters since `baseline` (taken after the preflight dry run, so that only
    /// the run's own calls count), with `skipped` commands.
    fn since(hook: &plan::CommandHook, baseline: plan::HookStats, skipped: u64) -> HookReport {
        let now = hook.stats();
        HookReport {
            calls: now.calls.saturating_sub(baseline.calls),
            errors: now.errors.saturating_sub(baseline.errors),
            skipped_commands: skipped,
            seconds: now.nanos.saturating_sub(baseline.nanos) as f64 / 1e9,
        }
    }
}

impl std::fmt::Display for HookReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "on_command: {} calls, {} errors, {} commands skipped",
            self.calls, self.errors, self.skipped_commands
        )
    }
}

impl PlanMapper {
    fn map_key_inner(&self, db: u32, key: &[u8]) -> Option<(u32, Vec<u8>)> {
        if !self.plan.keys.allows(db, key) {
            return None;
        }
        let key = plan::rename_key(&self.plan.rewrite, key).unwrap_or_else(|| key.to_vec());
        Some((plan::map_db(&self.plan.rewrite, db), key))
    }
}

impl Mapper for PlanMapper {
    fn map_command(&self, db: u32, argv: Argv, out: &mut Vec<(u32, Argv)>) -> Result<(), String> {
        match self.plan.map_command(self.table, db, argv, out) {
            Ok(Mapped::Skipped(e)) => {
                let n = self.hook_errors.fetch_add(1, Ordering::Relaxed) + 1;
                if n <= LOGGED_HOOK_ERRORS {
                    tracing::warn!(error = %e, "on_command failed; the command was skipped (on_hook_error = \"skip\").");
                }
                if n == LOGGED_HOOK_ERRORS {
                    tracing::warn!(
                        "Further skipped commands are only counted; the final report has the total."
                    );
                }
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }

    fn map_key(&self, db: u32, key: &[u8]) -> Option<(u32, Vec<u8>)> {
        self.map_key_inner(db, key)
    }

    fn unmap_key(&self, db: u32, key: &[u8]) -> Option<(u32, Vec<u8>)> {
        self.unmap_candidates(db, key).into_iter().next()
    }

    fn unmap_candidates(&self, db: u32, key: &[u8]) -> Vec<(u32, Vec<u8>)> {
        // Candidates are every source name that could map here and does, exactly (first-match
        // rules, filter): renamed names first, the unchanged name last.
        let rules = &self.plan.rewrite;
        let mut keys = Vec::new();
        let mut dbs = vec![db];
        for r in rules {
            match r {
                Rule::RenamePrefix { from, to } if key.starts_with(to) => {
                    let mut k = from.clone();
                    k.extend_from_slice(&key[to.len()..]);
                    keys.push(k);
                }
                Rule::MoveDb { from, to } if *to == db => dbs.push(*from),
                _ => {}
            }
        }
        keys.push(key.to_vec());
        let mut out = Vec::new();
        for skey in &keys {
            for sdb in &dbs {
                if self
                    .map_key_inner(*sdb, skey)
                    .as_ref()
                    .is_some_and(|(d, k)| *d == db && k == key)
                    && !out.contains(&(*sdb, skey.clone()))
                {
                    out.push((*sdb, skey.clone()));
                }
            }
        }
        out
    }
}

/// The plan's `verify.rules` behind the verifier's seam.
pub(super) struct PlanRules(pub(super) plan::VerifySpec);

/// The plan's key filter, renames and db moves for a verifier; `None` when it has none.
pub(super) fn key_mapper(plan: &Plan) -> Option<Arc<dyn Mapper>> {
    (!plan.rewrite.is_empty() || !plan.keys.is_everything()).then(|| {
        Arc::new(PlanMapper {
            plan: plan.clone(),
            table: CommandTable::builtin(),
            hook_errors: AtomicU64::new(0),
        }) as Arc<dyn Mapper>
    })
}

impl VerifyRules for PlanRules {
    fn ignored(&self, _db: u32, key: &[u8]) -> bool {
        self.0.rule_for(key).is_some_and(|r| r.ignore)
    }

    fn ttl_tolerance_ms(&self, _db: u32, key: &[u8]) -> i64 {
        self.0.ttl_tolerance_for(key)
    }

    fn has_compare(&self, _db: u32, key: &[u8]) -> bool {
        self.0.rule_for(key).is_some_and(|r| r.compare.is_some())
    }

    fn compare(&self, _db: u32, source: &KeyView, target: &KeyView) -> Result<bool, String> {
        let Some(hook) = self
            .0
            .rule_for(&source.key)
            .and_then(|r| r.compare.as_ref())
        else {
            return Ok(source.value == target.value);
        };
        let view = |v: &KeyView| plan::CompareValue {
            key: v.key.clone(),
            type_name: v.type_name.clone(),
            value: v.value.clone(),
            ttl_ms: v.ttl_ms,
        };
        hook.call(&view(source), &view(target))
            .map_err(|e| e.to_string())
    }
}

/// The verifier settings a plan asks for.
fn verify_config(spec: &plan::VerifySpec) -> VerifyConfig {
    VerifyConfig {
        sample: if spec.full { None } else { spec.sample },
        ttl_tolerance_ms: spec.ttl_tolerance_ms,
        ..VerifyConfig::default()
    }
}

/// Runs the plan's fenced verification on the running migration and logs the result.
async fn verify_phase(plan: &Plan, running: &Running) -> anyhow::Result<VerifyReport> {
    let rules: Arc<dyn VerifyRules> = Arc::new(PlanRules(plan.verify.clone()));
    let report = tokio::select! {
        r = running.verify(verify_config(&plan.verify), Some(rules)) => r?,
        e = running.failure() => return Err(e.into()),
    };
    super::print_out(report.grouped(10))?;
    tracing::info!(
        keys = report.keys_checked,
        differences = report.differences.len(),
        secs = report.elapsed_secs,
        "Fenced verification: {}",
        report.summary()
    );
    Ok(report)
}

/// The switch hook's primitives: the migration has stopped at its final fence and source
/// writes are paused.
struct SwitchCtx {
    source: Endpoint,
    target: Endpoint,
    commands: std::collections::BTreeMap<String, Vec<String>>,
    handle: tokio::runtime::Handle,
    conns: std::collections::HashMap<&'static str, redis::aio::MultiplexedConnection>,
}

impl PhaseContext for SwitchCtx {
    fn log(&mut self, msg: &str) {
        tracing::info!(plan = true, "{msg}");
    }

    fn sleep_ms(&mut self, ms: u64) -> Result<(), String> {
        std::thread::sleep(Duration::from_millis(ms));
        Ok(())
    }

    fn snapshot(&mut self) -> Result<(), String> {
        Err("the migration has stopped at its final fence".into())
    }

    fn wait_lag(&mut self, _: u64) -> Result<(), String> {
        Ok(())
    }

    fn verify(&mut self) -> Result<u64, String> {
        Err("the migration has stopped; verify before the cutover".into())
    }

    fn lag_ms(&mut self) -> Result<u64, String> {
        Ok(0)
    }

    fn call(&mut self, server: &str, args: Vec<Vec<u8>>) -> Result<plan::Reply, String> {
        let (name, ep) = match server {
            "source" => ("source", self.source.clone()),
            "target" => ("target", self.target.clone()),
            other => {
                return Err(format!(
                    "unknown server {other:?}: use \"source\" or \"target\""
                ));
            }
        };
        let argv = Argv::from_args(args.iter().map(Vec::as_slice));
        if name == "source"
            && matches!(
                CommandTable::builtin().classify(&argv),
                ferry::command::Class::Write | ferry::command::Class::Script
            )
        {
            // It would wait for the pause to end, which ends only after this hook.
            return Err(format!(
                "{} would wait: source writes are paused until the switch is done",
                String::from_utf8_lossy(argv.name())
            ));
        }
        let handle = self.handle.clone();
        let con = match self.conns.get(name) {
            Some(c) => c.clone(),
            None => {
                let c = handle.block_on(ep.control()).map_err(|e| e.to_string())?;
                self.conns.insert(name, c.clone());
                c
            }
        };
        let mut con = con;
        let mut cmd = redis::Cmd::new();
        for a in &args {
            cmd.arg(a.as_slice());
        }
        let value: redis::Value = handle
            .block_on(cmd.query_async(&mut con))
            .map_err(|e| ep.classify(&e).to_string())?;
        to_reply(value)
    }

    fn run(&mut self, name: &str) -> Result<i64, String> {
        let Some(argv) = self.commands.get(name) else {
            let known: Vec<&str> = self.commands.keys().map(String::as_str).collect();
            return Err(format!(
                "{name:?} is not in the cutover's commands ({})",
                if known.is_empty() {
                    "none are configured".to_string()
                } else {
                    known.join(", ")
                }
            ));
        };
        let out = std::process::Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| format!("{}: {e}", argv[0]))?;
        let code = out.status.code().map_or(-1, i64::from);
        tracing::info!(
            command = name,
            code,
            stdout = %String::from_utf8_lossy(&out.stdout).trim(),
            stderr = %String::from_utf8_lossy(&out.stderr).trim(),
            "Operator command ran."
        );
        Ok(code)
    }
}

fn to_reply(v: redis::Value) -> Result<plan::Reply, String> {
    use redis::Value as V;
    Ok(match v {
        V::Nil => plan::Reply::Nil,
        V::Int(i) => plan::Reply::Int(i),
        V::BulkString(b) => plan::Reply::Bytes(b),
        V::SimpleString(s) => plan::Reply::Bytes(s.into_bytes()),
        V::Okay => plan::Reply::Bytes(b"OK".to_vec()),
        V::Array(items) | V::Set(items) => {
            plan::Reply::Array(items.into_iter().map(to_reply).collect::<Result<_, _>>()?)
        }
        V::ServerError(e) => return Err(e.to_string()),
        other => plan::Reply::Bytes(format!("{other:?}").into_bytes()),
    })
}

/// Phase primitives for Lua, over the running migration. A stop (Ctrl-C, SIGTERM) cuts their
/// waits short: the hook then fails with "stop requested", and the runner ends at a final fence.
struct Ctx<'a> {
    running: &'a Running,
    plan: &'a Plan,
    handle: tokio::runtime::Handle,
    stop: &'a super::migrate::Stop,
}

impl Ctx<'_> {
    /// Runs `fut` unless a stop comes first.
    fn until_stopped<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, String>>,
    ) -> Result<T, String> {
        self.handle.block_on(async {
            tokio::select! {
                r = fut => r,
                _ = self.stop.wait() => Err("stop requested".into()),
            }
        })
    }
}

impl PhaseContext for Ctx<'_> {
    fn log(&mut self, msg: &str) {
        tracing::info!(plan = true, "{msg}");
    }

    fn sleep_ms(&mut self, ms: u64) -> Result<(), String> {
        let running = self.running;
        self.until_stopped(async {
            running
                .sleep(Duration::from_millis(ms))
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn snapshot(&mut self) -> Result<(), String> {
        let running = self.running;
        self.until_stopped(async {
            running
                .wait_snapshot(Duration::from_secs(24 * 3600))
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn wait_lag(&mut self, max_ms: u64) -> Result<(), String> {
        let running = self.running;
        self.until_stopped(async {
            running
                .wait_lag(Duration::from_millis(max_ms), Duration::from_secs(3600))
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
    }

    fn verify(&mut self) -> Result<u64, String> {
        self.handle
            .block_on(verify_phase(self.plan, self.running))
            .map(|r| r.differences.len() as u64)
            .map_err(|e| e.to_string())
    }

    fn lag_ms(&mut self) -> Result<u64, String> {
        match self
            .handle
            .block_on(self.running.measure_lag(Duration::from_secs(60)))
        {
            Ok(d) => Ok(d.as_millis() as u64),
            Err(e) if self.running.failure_now().is_some() => Err(e.to_string()),
            // Slow, not broken: "very far behind" is the honest answer for a polling loop.
            Err(_) => Ok(u64::MAX),
        }
    }
}

/// How many leading phases run before the migration starts: the custom phases listed before a
/// `snapshot` phase that is the first built-in one (none otherwise, so a custom phase that waits
/// on lag still finds a running migration).
fn pre_start_phases(plan: &Plan) -> usize {
    let first = plan
        .phases
        .iter()
        .position(|p| !matches!(p.kind, PhaseKind::Custom { .. }));
    match first {
        Some(i) if matches!(plan.phases[i].kind, PhaseKind::Snapshot) => i,
        _ => 0,
    }
}

/// Phase primitives before the migration starts: nothing is connected, captured or copied yet,
/// so only `ctx.log` and `ctx.sleep` work.
struct PreCtx<'a> {
    stop: &'a super::migrate::Stop,
    handle: tokio::runtime::Handle,
}

/// What the primitives that need a running migration say before it starts.
const NOT_STARTED: &str =
    "the migration has not started: this phase is listed before the \"snapshot\" phase";

impl PhaseContext for PreCtx<'_> {
    fn log(&mut self, msg: &str) {
        tracing::info!(plan = true, "{msg}");
    }

    fn sleep_ms(&mut self, ms: u64) -> Result<(), String> {
        self.handle.block_on(async {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(ms)) => Ok(()),
                _ = self.stop.wait() => Err("stop requested".into()),
            }
        })
    }

    fn snapshot(&mut self) -> Result<(), String> {
        Err(NOT_STARTED.into())
    }

    fn wait_lag(&mut self, _: u64) -> Result<(), String> {
        Err(NOT_STARTED.into())
    }

    fn verify(&mut self) -> Result<u64, String> {
        Err(NOT_STARTED.into())
    }

    fn lag_ms(&mut self) -> Result<u64, String> {
        Err(NOT_STARTED.into())
    }
}

/// Runs a phase hook; `Ok(false)` when a stop cut it short (the runner then skips the remaining
/// phases and ends at a final fence).
fn run_hook(
    hook: &Option<plan::PhaseHook>,
    plan: &Plan,
    running: &Running,
    stop: &super::migrate::Stop,
) -> anyhow::Result<bool> {
    if let Some(h) = hook {
        let mut ctx = Ctx {
            running,
            plan,
            handle: tokio::runtime::Handle::current(),
            stop,
        };
        let result = tokio::task::block_in_place(|| h.call(&mut ctx));
        // A primitive cut short by a failed migration fails the hook too (or the hook caught
        // it): the migration's own error is the cause to report either way.
        if let Some(e) = running.failure_now() {
            return Err(e.into());
        }
        if stop.requested() {
            tracing::info!("Stop requested: skipping the remaining phases.");
            return Ok(false);
        }
        result?;
    }
    Ok(true)
}

pub async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let plan = plan::load(&args.plan, &args.set)?;
    run_plan(plan, args.json, |_| {}).await
}

/// Runs a loaded plan; `tweak` adjusts the pipeline settings the plan produced (the flags of
/// `ferry migrate`).
pub async fn run_plan(
    plan: Plan,
    json: Option<PathBuf>,
    tweak: impl FnOnce(&mut MigrateConfig),
) -> anyhow::Result<ExitCode> {
    preflight(&plan)?;
    let (state_dir, fsync) = match &plan.journal {
        JournalSpec::Embedded { dir, fsync_ms } => (
            dir.clone(),
            match fsync_ms {
                None => FsyncPolicy::EveryMs(100),
                Some(0) => FsyncPolicy::Always,
                Some(n) => FsyncPolicy::EveryMs(*n),
            },
        ),
        #[cfg(feature = "sqs")]
        JournalSpec::Sqs { .. } => (PathBuf::from("ferry-state"), FsyncPolicy::EveryMs(100)),
        #[cfg(not(feature = "sqs"))]
        JournalSpec::Sqs { .. } => anyhow::bail!(
            "{}: journal = ferry.sqs {{ … }} needs a ferry built with the `sqs` feature",
            plan.path.display()
        ),
        other => anyhow::bail!("{}: unsupported journal {other:?}", plan.path.display()),
    };
    let source = Endpoint::parse(&plan.source.url)?;
    let target = Endpoint::parse(&plan.target.url)?;
    let mut cfg = MigrateConfig::new(state_dir);
    cfg.fsync = fsync;
    cfg.capture = match plan.source.capture {
        CaptureChoice::Auto => CaptureMode::Auto,
        CaptureChoice::Primary => CaptureMode::Primary,
        CaptureChoice::Replica => CaptureMode::Replica,
    };
    #[cfg(feature = "sqs")]
    if let JournalSpec::Sqs { queue_url, fifo } = &plan.journal {
        // This process only publishes: it cannot read the target at a fence, and its final
        // fence means "in the queue", not "applied".
        if let Some(p) = plan
            .phases
            .iter()
            .find(|p| matches!(p.kind, PhaseKind::Verify))
        {
            anyhow::bail!(
                "{}: phase '{}' reads the target where replay runs, but journal = ferry.sqs {{ … }} replays in `ferry replay` processes; run `ferry verify` once they have drained the queue (or cut over: its final fence waits for them)",
                plan.path.display(),
                p.name()
            );
        }
        // This process captures and publishes; `ferry replay` processes write the target.
        let mut base = ferry::journal::sqs::SqsConfig::new(queue_url.clone());
        base.fifo = Some(*fifo);
        cfg.publish = Some((
            ferry::replay::remote::QueueSpec {
                url: queue_url.clone(),
                base,
                shards: ferry::replay::DEFAULT_SHARDS,
            },
            false,
        ));
    }
    if let Some(w) = plan.snapshot.workers {
        cfg.snapshot.workers = w;
    }
    cfg.snapshot.max_source_ops = plan.snapshot.max_source_ops;
    let cutover = plan.phases.iter().find_map(|p| match &p.kind {
        PhaseKind::Cutover { max_pause_ms, .. } => Some(*max_pause_ms),
        _ => None,
    });
    if let Some(ms) = cutover {
        cfg.max_pause = Duration::from_millis(ms);
    }
    let mapper = Arc::new(PlanMapper {
        plan: plan.clone(),
        table: CommandTable::builtin(),
        hook_errors: AtomicU64::new(0),
    });
    if !plan.rewrite.is_empty() || !plan.keys.is_everything() || plan.on_command.is_some() {
        cfg.mapper = Some(mapper.clone());
    }
    // The preflight called the hook too; the report counts the run's calls only.
    let hook_baseline = plan.on_command.as_ref().map(|h| h.stats());
    let hook_report = || {
        plan.on_command
            .as_ref()
            .zip(hook_baseline)
            .map(|(h, b)| HookReport::since(h, b, mapper.hook_errors.load(Ordering::Relaxed)))
    };
    tweak(&mut cfg);

    tracing::info!(plan = %plan.name, phases = plan.phases.len(), "Running the plan.");
    let stop = super::migrate::Stop::install();
    let pre = pre_start_phases(&plan);
    for phase in &plan.phases[..pre] {
        if stop.requested() {
            break;
        }
        tracing::info!(
            phase = phase.name(),
            "Phase started (before the migration starts)."
        );
        // `pre_start_phases` picks custom phases only, so `run` is always there.
        let run = match &phase.kind {
            PhaseKind::Custom { run, .. } => Some(run.clone()),
            _ => None,
        };
        let hooks = [&phase.before, &run, &phase.after];
        for hook in hooks.into_iter().flatten() {
            let mut ctx = PreCtx {
                stop: &stop,
                handle: tokio::runtime::Handle::current(),
            };
            let result = tokio::task::block_in_place(|| hook.call(&mut ctx));
            if stop.requested() {
                break;
            }
            result?;
        }
        tracing::info!(phase = phase.name(), "Phase done.");
    }
    if stop.requested() {
        say!(
            "Stopped before the migration started (plan {}): nothing was captured or copied.",
            plan.name
        );
        return Ok(ExitCode::SUCCESS);
    }
    let running = Migration::new(source, target, cfg).start().await?;
    // Ctrl-C/SIGTERM during a phase's wait skips the remaining phases and ends at a final fence;
    // a failed migration (a hook under `on_hook_error = "fail"`) ends the run with its error.
    macro_rules! interruptible {
        ($running:expr, $fut:expr) => {
            tokio::select! {
                r = $fut => r,
                e = $running.failure() => return Err(e.into()),
                _ = stop.wait() => {
                    tracing::info!("Stop requested: skipping the remaining phases.");
                    break;
                }
            }
        };
    }
    let mut finished = None;
    let mut reverse: Option<Running> = None;
    let mut verified: Option<VerifyReport> = None;
    let mut running = Some(running);
    for phase in &plan.phases[pre..] {
        let Some(r) = running.as_ref() else { break };
        if stop.requested() {
            break;
        }
        if let Some(e) = r.failure_now() {
            return Err(e.into());
        }
        tracing::info!(phase = phase.name(), "Phase started.");
        if !run_hook(&phase.before, &plan, r, &stop)? {
            break;
        }
        match &phase.kind {
            PhaseKind::Snapshot => {
                interruptible!(r, r.wait_snapshot(Duration::from_secs(24 * 3600)))?
            }
            PhaseKind::CatchUp { max_lag_ms } => {
                let lag = interruptible!(
                    r,
                    r.wait_lag(
                        Duration::from_millis(*max_lag_ms),
                        Duration::from_secs(24 * 3600),
                    )
                )?;
                tracing::info!(lag_ms = lag.as_millis() as u64, "Caught up.");
            }
            PhaseKind::Verify => {
                let report = interruptible!(r, verify_phase(&plan, r))?;
                if !report.is_identical() {
                    // Later phases (a cutover above all) must not run on a target that
                    // differs: stop cleanly at a final fence and say so.
                    let r = running.take().expect("checked above");
                    let migration = r.finish().await?;
                    write_json(
                        json.as_deref(),
                        &report_json(&migration, hook_report(), Some(&report))?,
                    )?;
                    say!(
                        "Verification found {} differences; stopped at the final fence without running later phases.",
                        report.differences.len()
                    );
                    return Ok(ExitCode::from(1));
                }
                verified = Some(report);
            }
            PhaseKind::Cutover {
                max_lag_ms,
                switch,
                reverse_sync,
                commands,
                ..
            } => {
                let lag = interruptible!(
                    r,
                    r.wait_lag(
                        Duration::from_millis(*max_lag_ms),
                        Duration::from_secs(24 * 3600),
                    )
                )?;
                if r.split() {
                    // The lag gate measured publishing; let the replay processes catch up
                    // before pausing, so the pause only covers the last few operations.
                    interruptible!(r, r.wait_applied(Duration::from_secs(24 * 3600)))?;
                }
                tracing::info!(
                    lag_ms = lag.as_millis() as u64,
                    "Lag is under the cutover's threshold; pausing source writes."
                );
                let r = running.take().expect("checked above");
                let state_dir = r.state_dir().to_path_buf();
                let fenced = r.fence().await?;
                tracing::info!(
                    paused = fenced.paused(),
                    fence_ms = fenced.paused_for().as_millis() as u64,
                    "Final fence reached: the target equals the source. Switching."
                );
                if *reverse_sync {
                    let mut rcfg = MigrateConfig::new(state_dir.join("reverse"));
                    rcfg.status_every = Some(Duration::from_secs(5));
                    match fenced.reverse(rcfg).await {
                        Ok(rev) => reverse = Some(rev),
                        Err(e) => {
                            fenced.release(false).await?;
                            return Err(anyhow::anyhow!(
                                "reverse sync could not start: {e}; the switch was not made"
                            ));
                        }
                    }
                }
                if let Some(h) = switch {
                    let mut ctx = SwitchCtx {
                        source: fenced.source().clone(),
                        target: fenced.target().clone(),
                        commands: commands.clone(),
                        handle: tokio::runtime::Handle::current(),
                        conns: Default::default(),
                    };
                    if let Err(e) = tokio::task::block_in_place(|| h.call(&mut ctx)) {
                        // The clients may not have switched: the source stays the primary and
                        // its held writes run there, as if the cutover had not started.
                        fenced.release(false).await?;
                        if let Some(rev) = reverse.take() {
                            let _ = rev.finish().await;
                        }
                        return Err(anyhow::anyhow!(
                            "{e}; the source was unpaused and stays the primary"
                        ));
                    }
                }
                let report = fenced.release(true).await?;
                tracing::info!(
                    pause_ms = report.pause_ms,
                    fence_ms = report.fence_ms,
                    held_clients_disconnected = report.held_clients_disconnected,
                    "Switched; source writes resumed."
                );
                finished = Some(report);
                continue;
            }
            PhaseKind::Custom { run, .. } => {
                if !run_hook(&Some(run.clone()), &plan, r, &stop)? {
                    break;
                }
            }
            other => anyhow::bail!("{}: unsupported phase {other:?}", plan.path.display()),
        }
        if !run_hook(&phase.after, &plan, r, &stop)? {
            break;
        }
        tracing::info!(phase = phase.name(), "Phase done.");
    }
    let report = match (finished, running) {
        (Some(report), _) => {
            if let Some(rev) = reverse.take() {
                tracing::info!("Reverse sync running (target → source) until Ctrl-C or SIGTERM.");
                tokio::select! {
                    _ = stop.wait() => {}
                    e = rev.failure() => return Err(anyhow::anyhow!("reverse sync: {e}")),
                }
                let back = rev.finish().await?;
                say!(
                    "Reverse sync stopped at a final fence: {} commands replayed to the old source, target writes paused {} ms",
                    back.commands,
                    back.pause_ms
                );
            }
            report
        }
        (None, Some(r)) => {
            if !stop.requested() {
                tracing::info!("Plan phases done; replaying until Ctrl-C or SIGTERM.");
            }
            tokio::select! {
                _ = stop.wait() => {}
                e = r.failure() => return Err(e.into()),
            }
            r.finish().await?
        }
        (None, None) => unreachable!("a cutover always leaves a report"),
    };
    let hooks = hook_report();
    say!(
        "Migration stopped at the final fence (plan {}): {} snapshot keys, {} commands replayed, {} restores, source writes paused {} ms; errors: {}{}{}",
        plan.name,
        report.snapshot_keys,
        report.commands,
        report.restores,
        report.pause_ms,
        report.error_counts(),
        report.invisible_changes(),
        hooks.map(|h| format!("; {h}")).unwrap_or_default()
    );
    write_json(
        json.as_deref(),
        &report_json(&report, hooks, verified.as_ref())?,
    )?;
    Ok(ExitCode::SUCCESS)
}

/// The `--json` report: the migration's fields plus `on_command` (when the plan has one); with
/// a verification, `{ "migration": …, "verify": … }`.
fn report_json(
    migration: &ferry::pipeline::MigrationReport,
    hooks: Option<HookReport>,
    verify: Option<&VerifyReport>,
) -> anyhow::Result<serde_json::Value> {
    let mut m = serde_json::to_value(migration)?;
    if let (Some(h), Some(obj)) = (hooks, m.as_object_mut()) {
        obj.insert("on_command".into(), serde_json::to_value(h)?);
    }
    Ok(match verify {
        Some(v) => serde_json::json!({ "migration": m, "verify": v }),
        None => m,
    })
}

fn write_json(path: Option<&std::path::Path>, value: &impl serde::Serialize) -> anyhow::Result<()> {
    if let Some(path) = path {
        std::fs::write(path, serde_json::to_vec_pretty(value)?)
            .map_err(|e| anyhow::anyhow!("cannot write report {}: {e}", path.display()))?;
    }
    Ok(())
}
