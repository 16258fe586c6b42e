//! [`PlanRunner`]: a loaded plan run end to end: its dry run, the migration it configures, its
//! phases in order (custom hooks, snapshot, catch-up, fenced verification, cutover with the
//! switch hook and the reverse sync), and the [`Outcome`] the binary turns into an exit code.
//!
//! ## Behavior
//! - The plan's dry run (`ferry check`'s) runs first: a hook that fails on ordinary commands
//!   stops the run while the target is untouched.
//! - Everything the migration needs comes from the plan, in one place ([`migrate_config`]):
//!   `ferry migrate`'s flags reach it as the default plan's inputs, never as a second path.
//! - The command table is loaded from the source before the mapper is built, so a plan's
//!   renames, filters and hook apply to every command the source knows.
//! - A stop (the [`Stop`]) during a phase's wait skips the remaining phases and ends at a final
//!   fence; a failed migration ends the run with its error. A verification that finds
//!   differences stops at a final fence before any later phase (a cutover above all).

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::command::{CommandTable, Mapper};
use crate::journal::FsyncPolicy;
use crate::net::{Endpoint, NetError};
use crate::plan::{
    self, CaptureChoice, HookReport, JournalSpec, OnConflict, PhaseKind, Plan, PlanMapper,
};
use crate::verify::VerifyReport;

use super::phases::{Ctx, PreCtx, SwitchCtx, pre_start_phases, verify_phase};
use super::report::RunError;
use super::stop::Stop;
use super::switch::{PauseEnd, reverse_sync as reverse_sync_from};
use super::trailing::{ConflictPolicy, WindowEnd, WindowSpec};
use super::window::{WindowMapper, register_ferry_clients_all, watch_target};
use super::{CaptureMode, MigrateConfig, Migration, MigrationReport, Running};
use crate::capture::LateWrites;

/// How long a phase may wait for the snapshot, the lag or the replay processes.
const PHASE_WAIT: Duration = Duration::from_secs(24 * 3600);

/// How a plan run ended.
#[derive(Debug)]
#[non_exhaustive]
pub enum Outcome {
    /// A stop came before the migration started: nothing was captured or copied.
    NotStarted,
    /// The run ended at a final fence (after a cutover, or on a stop).
    Finished(RunReport),
    /// A fenced verification found differences; the run stopped at a final fence without
    /// running later phases.
    Differences(RunReport),
}

/// What a plan run did: the evidence for a change ticket.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// The plan's name.
    pub plan: String,
    /// The migration's report.
    pub migration: MigrationReport,
    /// What `on_command` did, when the plan has one.
    pub on_command: Option<HookReport>,
    /// The last fenced verification, when a phase ran one.
    pub verify: Option<VerifyReport>,
    /// The reverse sync's report, when one ran after the switch.
    pub reverse: Option<MigrationReport>,
}

impl RunReport {
    /// The `--json` form: the migration's fields plus `on_command` (when the plan has one);
    /// with a verification, `{ "migration": …, "verify": … }`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut m = serde_json::to_value(&self.migration).unwrap_or_default();
        if let (Some(h), Some(obj)) = (self.on_command, m.as_object_mut()) {
            obj.insert(
                "on_command".into(),
                serde_json::to_value(h).unwrap_or_default(),
            );
        }
        match &self.verify {
            Some(v) => serde_json::json!({ "migration": m, "verify": v }),
            None => m,
        }
    }
}

/// The migration settings a plan asks for.
pub fn migrate_config(plan: &Plan) -> Result<MigrateConfig, RunError> {
    let unsupported = |message: String| RunError::Unsupported {
        path: plan.path.clone(),
        message,
    };
    let (state_dir, fsync) = match &plan.journal {
        JournalSpec::Embedded { dir, fsync_ms } => (
            dir.clone(),
            match fsync_ms {
                None => FsyncPolicy::EveryMs(100),
                Some(0) => FsyncPolicy::Always,
                Some(n) => FsyncPolicy::EveryMs(*n),
            },
        ),
        JournalSpec::Sqs { dir, .. } => (dir.clone(), FsyncPolicy::EveryMs(100)),
    };
    let mut cfg = MigrateConfig::new(state_dir);
    cfg.fsync = fsync;
    cfg.capture = match plan.source.capture {
        CaptureChoice::Auto => CaptureMode::Auto,
        CaptureChoice::Primary => CaptureMode::Primary,
        CaptureChoice::Replica => CaptureMode::Replica,
    };
    if let Some(bytes) = plan.source.max_monitor_buffer {
        cfg.capture_settings.omem_limit = bytes;
    }
    if let Some(w) = plan.snapshot.workers {
        cfg.snapshot.workers = w;
    }
    cfg.snapshot.max_source_ops = plan.snapshot.max_source_ops;
    if let Some(n) = plan.replay.shards {
        cfg.replay_shards = n;
    }
    // The snapshot's copy of the function libraries is a `FUNCTION RESTORE`.
    cfg.functions = !crate::plan::dropped(
        &plan.rewrite,
        &crate::command::Argv::from_args(["FUNCTION", "RESTORE"]),
    );
    cfg.drop_field_ttls = plan.on_field_ttls == crate::plan::FieldTtlPolicy::DropFieldTtls;
    if let Some(ms) = plan.final_fence.max_pause_ms {
        cfg.max_pause = Duration::from_millis(ms);
    }
    let cutover = plan.phases.iter().find_map(|p| match &p.kind {
        PhaseKind::Cutover { max_pause_ms, .. } => Some(*max_pause_ms),
        _ => None,
    });
    if let Some(ms) = cutover {
        cfg.max_pause = Duration::from_millis(ms);
    }
    cfg.cutover_planned = cutover.is_some();
    if let JournalSpec::Sqs {
        queue_url,
        fifo,
        shards,
        create_queue,
        ..
    } = &plan.journal
    {
        // This process only publishes: it cannot read the target at a fence, and its final
        // fence means "in the queue", not "applied".
        if let Some(p) = plan
            .phases
            .iter()
            .find(|p| matches!(p.kind, PhaseKind::Verify))
        {
            return Err(unsupported(format!(
                "phase '{}' reads the target where replay runs, but journal = ferry.sqs {{ … }} replays in `ferry replay` processes; run `ferry verify` once they have drained the queue (or cut over: its final fence waits for them)",
                p.name()
            )));
        }
        #[cfg(feature = "sqs")]
        {
            let mut base = crate::journal::sqs::SqsConfig::new(queue_url.clone());
            base.fifo = Some(*fifo);
            cfg.publish = Some((
                crate::replay::remote::QueueSpec {
                    url: queue_url.clone(),
                    base,
                    shards: shards.unwrap_or(crate::replay::DEFAULT_SHARDS),
                },
                *create_queue,
            ));
        }
        #[cfg(not(feature = "sqs"))]
        {
            let _ = (queue_url, fifo, shards, create_queue);
            return Err(unsupported(
                "journal = ferry.sqs { … } needs a ferry built with the `sqs` feature".into(),
            ));
        }
    }
    Ok(cfg)
}

/// The source's command table, or the built-in one when `COMMAND` is unavailable (renamed
/// away), said once in the log.
pub async fn load_table(source: &Endpoint) -> Result<Arc<CommandTable>, NetError> {
    let mut con = source.control().await?;
    Ok(Arc::new(match CommandTable::load(&mut con).await {
        Ok(t) => t,
        Err(e) => {
            let level = crate::net::Engine::detect(source)
                .await
                .map_or((7, 0), |e| e.redis_level());
            if level >= (7, 0) {
                tracing::warn!(error = %e, "Using the built-in Redis 7.0 command table.");
            } else {
                tracing::warn!(
                    error = %e,
                    version = format!("{}.{}", level.0, level.1),
                    "Using the built-in command table of the source's Redis version."
                );
            }
            CommandTable::builtin_for(level)
        }
    }))
}

/// Dry-runs the plan's rules and hook before anything touches a server.
fn dry_run(plan: &Plan) -> Result<(), RunError> {
    let samples = if plan.check_samples.is_empty() {
        plan::builtin_samples()
    } else {
        plan.check_samples.clone()
    };
    let report = plan::check(plan, &samples);
    let failed: Vec<String> = report
        .lines
        .iter()
        .filter(|l| fatal(&l.outcome))
        .take(3)
        .map(|l| l.to_string())
        .collect();
    if failed.is_empty() {
        return Ok(());
    }
    Err(RunError::DryRun {
        path: plan.path.clone(),
        failures: failed.join("; "),
    })
}

/// A dry-run result that would stop a run (`on_hook_error = "fail"`).
pub fn fatal(outcome: &plan::CheckOutcome) -> bool {
    matches!(
        outcome,
        plan::CheckOutcome::HookError { skipped: false, .. }
    )
}

/// A plan, ready to run.
pub struct PlanRunner {
    plan: Plan,
    stop: Stop,
    on_verify: Box<dyn Fn(&VerifyReport) + Send + Sync>,
    stop_after_phases: bool,
    on_start: Box<dyn Fn(super::Probe) + Send + Sync>,
}

impl PlanRunner {
    /// Runs `plan` until its phases end or `stop` is set.
    pub fn new(plan: Plan, stop: Stop) -> PlanRunner {
        PlanRunner {
            plan,
            stop,
            on_verify: Box::new(|_| {}),
            stop_after_phases: false,
            on_start: Box::new(|_| {}),
        }
    }

    /// Without a cutover phase, stop at a final fence once the phases are done instead of
    /// replaying until Ctrl-C/SIGTERM: a rehearsal on a quiet copy, or a scripted check, ends
    /// by itself.
    pub fn stop_after_phases(mut self, yes: bool) -> PlanRunner {
        self.stop_after_phases = yes;
        self
    }

    /// Called once the migration has started, with the handle on its figures (status file,
    /// metrics and report read it while the run goes on).
    pub fn on_start(mut self, f: impl Fn(super::Probe) + Send + Sync + 'static) -> PlanRunner {
        self.on_start = Box::new(f);
        self
    }

    /// Called with each fenced verification's report as soon as it is known (the binary prints
    /// it while the run goes on).
    pub fn on_verify(mut self, f: impl Fn(&VerifyReport) + Send + Sync + 'static) -> PlanRunner {
        self.on_verify = Box::new(f);
        self
    }

    /// Runs the plan.
    pub async fn run(self) -> Result<Outcome, RunError> {
        let PlanRunner {
            plan,
            stop,
            on_verify,
            stop_after_phases,
            on_start,
        } = self;
        let on_verify: &(dyn Fn(&VerifyReport) + Send + Sync) = &*on_verify;
        dry_run(&plan)?;
        let mut cfg = migrate_config(&plan)?;
        let source = plan.source.endpoint()?;
        let target = plan.target.endpoint()?;
        // A permission the ACL denies is named now, before anything is copied, rather than as
        // a failure in the middle of the snapshot or at the cutover.
        super::acl::check_both(&source, &target).await?;

        tracing::info!(plan = %plan.name, phases = plan.phases.len(), "Running the plan.");
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
            for hook in [&phase.before, &run, &phase.after].into_iter().flatten() {
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
            return Ok(Outcome::NotStarted);
        }

        let table = load_table(&source).await?;
        let (source_ep, target_ep) = (source.clone(), target.clone());
        let mapper = Arc::new(PlanMapper::new(plan.clone(), table.clone()));
        if PlanMapper::needed(&plan) {
            cfg.mapper = Some(mapper.clone() as Arc<dyn Mapper>);
        }
        // A cutover's trailing window checks every late write for conflicts in front of the
        // plan's own mapping.
        let window = cutover_policy(&plan).map(|policy| {
            let late = Arc::new(LateWrites::new());
            cfg.late = Some(late.clone());
            let w = Arc::new(WindowMapper::new(
                cfg.mapper.take(),
                table.clone(),
                policy,
                late,
            ));
            cfg.mapper = Some(w.clone() as Arc<dyn Mapper>);
            w
        });
        cfg.table = Some(table.clone());
        // The dry run called the hook too; the report counts the run's calls only.
        let hook_baseline = plan.on_command.as_ref().map(|h| h.stats());
        let hook_report = || {
            plan.on_command
                .as_ref()
                .zip(hook_baseline)
                .map(|(h, b)| HookReport::since(h, b, mapper.skipped()))
        };
        let report = |migration: MigrationReport,
                      verify: Option<VerifyReport>,
                      reverse: Option<MigrationReport>| RunReport {
            plan: plan.name.clone(),
            migration,
            on_command: hook_report(),
            verify,
            reverse,
        };

        let running = Migration::new(source, target, cfg).start().await?;
        let probe = running.probe();
        on_start(probe.clone());
        // A stop during a phase's wait skips the remaining phases and ends at a final fence;
        // a failed migration (a hook under `on_hook_error = "fail"`) ends the run with its
        // error.
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
            probe.set_phase(phase.name());
            if !run_hook(&phase.before, &plan, r, &stop, on_verify)? {
                break;
            }
            match &phase.kind {
                PhaseKind::Snapshot => interruptible!(r, r.wait_snapshot(PHASE_WAIT))?,
                PhaseKind::CatchUp { max_lag_ms } => {
                    let lag = interruptible!(
                        r,
                        r.wait_lag(Duration::from_millis(*max_lag_ms), PHASE_WAIT)
                    )?;
                    tracing::info!(lag_ms = lag.as_millis() as u64, "Caught up.");
                }
                PhaseKind::Verify => {
                    let v = interruptible!(r, verify_phase(&plan, r, on_verify))?;
                    if !v.is_identical() {
                        // Later phases (a cutover above all) must not run on a target that
                        // differs: stop cleanly at a final fence and say so.
                        let r = running.take().expect("checked above");
                        probe.set_phase("final fence");
                        let migration = r.finish().await?;
                        probe.fence_reached("final", migration.pause_ms);
                        return Ok(Outcome::Differences(report(migration, Some(v), None)));
                    }
                    verified = Some(v);
                }
                PhaseKind::Cutover {
                    max_lag_ms,
                    switch,
                    reverse_sync,
                    commands,
                    hold_source,
                    ..
                } => {
                    let lag = interruptible!(
                        r,
                        r.wait_lag(Duration::from_millis(*max_lag_ms), PHASE_WAIT)
                    )?;
                    if r.split() {
                        // The lag gate measured publishing; let the replay processes catch up
                        // before pausing, so the pause only covers the last few operations.
                        interruptible!(r, r.wait_applied(PHASE_WAIT))?;
                    }
                    tracing::info!(
                        lag_ms = lag.as_millis() as u64,
                        "Lag is under the cutover's threshold; pausing source writes."
                    );
                    let mut r = running.take().expect("checked above");
                    let state_dir = r.state_dir().to_path_buf();
                    let pause = r.switch_fence().await?;
                    probe.fence_reached("switch", pause.paused_for().as_millis() as u64);
                    // Everything before the switch marker is applied: from here, whatever
                    // replay applies reached the old source after the switch.
                    let window = window.as_ref().expect("a plan with a cutover has a window");
                    window.arm();
                    tracing::info!(
                        paused = pause.paused(),
                        fence_ms = pause.paused_for().as_millis() as u64,
                        "Switch fence reached: the target equals the source. Switching."
                    );
                    // Watched from before the switch hook: no switched client's write is missed.
                    let (watch_stop, watch_rx) = tokio::sync::watch::channel(false);
                    let watcher = match watch_target(
                        &target_ep,
                        table.clone(),
                        window.target_writes(),
                        watch_rx,
                    )
                    .await
                    {
                        Ok(w) => Some(w),
                        Err(e) => {
                            tracing::warn!(error = %e, "Cannot watch the target's writes: conflicts will not be detected.");
                            None
                        }
                    };
                    if *reverse_sync {
                        let mut rcfg = MigrateConfig::new(state_dir.join("reverse"));
                        rcfg.status_every = Some(Duration::from_secs(5));
                        match reverse_sync_from(&source_ep, &target_ep, rcfg).await {
                            Ok(rev) => {
                                // Neither direction may replay the other's writes back: each
                                // capture drops the other direction's replay connections.
                                let wait = Duration::from_secs(5);
                                register_ferry_clients_all(
                                    &target_ep,
                                    &rev.peers,
                                    r.cfg.replay_shards,
                                    wait,
                                )
                                .await;
                                register_ferry_clients_all(
                                    &source_ep,
                                    &r.peers,
                                    rev.cfg.replay_shards,
                                    wait,
                                )
                                .await;
                                reverse = Some(rev)
                            }
                            Err(e) => {
                                pause.release(false).await;
                                return Err(RunError::ReverseSync(e));
                            }
                        }
                    }
                    if let Some(h) = switch {
                        let mut ctx = SwitchCtx {
                            source: source_ep.clone(),
                            target: target_ep.clone(),
                            commands: commands.clone(),
                            handle: tokio::runtime::Handle::current(),
                            conns: Default::default(),
                        };
                        if let Err(e) = tokio::task::block_in_place(|| h.call(&mut ctx)) {
                            // The clients may not have switched: the source stays the primary
                            // and its held writes run there, as if the cutover had not started.
                            pause.release(false).await;
                            if let Some(rev) = reverse.take() {
                                let _ = rev.finish().await;
                            }
                            return Err(RunError::Switch(e));
                        }
                    }
                    let spec = window_spec(phase);
                    let hold = if *hold_source {
                        tracing::info!(
                            "Switched; source writes stay paused through the trailing window (hold_source)."
                        );
                        Some(pause)
                    } else {
                        let end = pause.release(true).await;
                        r.note_switch(end);
                        tracing::info!(
                            pause_ms = end.pause_ms,
                            held_clients_disconnected = end.held_clients_disconnected,
                            "Switched; source writes resumed."
                        );
                        None
                    };
                    let hold_started = std::time::Instant::now();
                    let wr = r
                        .trailing_window(&spec, window, hold, &stop, reverse.as_ref())
                        .await?;
                    if *hold_source {
                        r.note_switch(PauseEnd {
                            pause_ms: hold_started.elapsed().as_millis() as u64,
                            ..PauseEnd::default()
                        });
                    }
                    let _ = watch_stop.send(true);
                    if let Some(w) = watcher {
                        let _ = w.await;
                    }
                    probe.set_phase("final fence");
                    let done = r.fence().await?.release(true).await?;
                    probe.fence_reached("final", done.final_pause_ms);
                    tracing::info!(
                        switch_pause_ms = done.pause_ms,
                        final_pause_ms = done.final_pause_ms,
                        late_writes = wr.late.writes,
                        conflicts = wr.conflicts.len(),
                        "Cutover done: the trailing window ended at a final fence."
                    );
                    if wr.ended == WindowEnd::Conflict {
                        let first = wr.conflicts.first().map_or_else(String::new, |c| {
                            format!("db{} {} (target: {})", c.db, c.key, c.target.command)
                        });
                        return Err(RunError::Conflict {
                            first,
                            count: wr.conflicts.len(),
                            migration: Box::new(done),
                        });
                    }
                    finished = Some(done);
                    continue;
                }
                PhaseKind::Custom { run, .. } => {
                    if !run_hook(&Some(run.clone()), &plan, r, &stop, on_verify)? {
                        break;
                    }
                }
            }
            if !run_hook(&phase.after, &plan, r, &stop, on_verify)? {
                break;
            }
            tracing::info!(phase = phase.name(), "Phase done.");
        }
        let (migration, back) = match (finished, running) {
            (Some(migration), _) => {
                let mut back = None;
                if let Some(rev) = reverse.take() {
                    tracing::info!(
                        "Reverse sync running (target → source) until Ctrl-C or SIGTERM."
                    );
                    tokio::select! {
                        _ = stop.wait() => {}
                        e = rev.failure() => return Err(RunError::ReverseFailed(e)),
                    }
                    back = Some(rev.finish().await?);
                }
                (migration, back)
            }
            (None, Some(r)) => {
                if stop_after_phases {
                    tracing::info!("Plan phases done; stopping at a final fence.");
                } else {
                    if !stop.requested() {
                        tracing::info!("Plan phases done; replaying until Ctrl-C or SIGTERM.");
                    }
                    probe.set_phase("replay");
                    tokio::select! {
                        _ = stop.wait() => {}
                        e = r.failure() => return Err(e.into()),
                    }
                }
                probe.set_phase("final fence");
                let migration = r.finish().await?;
                probe.fence_reached("final", migration.pause_ms);
                (migration, None)
            }
            (None, None) => unreachable!("a cutover always leaves a report"),
        };
        Ok(Outcome::Finished(report(migration, verified, back)))
    }
}

/// The conflict policy of the plan's cutover phase, when it has one.
fn cutover_policy(plan: &Plan) -> Option<ConflictPolicy> {
    plan.phases.iter().find_map(|p| match &p.kind {
        PhaseKind::Cutover { on_conflict, .. } => Some(policy(*on_conflict)),
        _ => None,
    })
}

fn policy(on_conflict: OnConflict) -> ConflictPolicy {
    match on_conflict {
        OnConflict::Report => ConflictPolicy::Report,
        OnConflict::TargetWins => ConflictPolicy::TargetWins,
        OnConflict::Fail => ConflictPolicy::Fail,
    }
}

/// The trailing window a cutover phase asks for.
fn window_spec(phase: &plan::Phase) -> WindowSpec {
    match &phase.kind {
        PhaseKind::Cutover {
            quiet_ms,
            max_trailing_ms,
            on_conflict,
            hold_source,
            ..
        } => WindowSpec {
            quiet: Duration::from_millis(*quiet_ms),
            max: Duration::from_millis(*max_trailing_ms),
            on_conflict: policy(*on_conflict),
            hold_source: *hold_source,
        },
        _ => WindowSpec::default(),
    }
}

/// Runs a phase hook; `Ok(false)` when a stop cut it short (the runner then skips the remaining
/// phases and ends at a final fence).
fn run_hook(
    hook: &Option<plan::PhaseHook>,
    plan: &Plan,
    running: &Running,
    stop: &Stop,
    on_verify: &(dyn Fn(&VerifyReport) + Send + Sync),
) -> Result<bool, RunError> {
    if let Some(h) = hook {
        let mut ctx = Ctx {
            running,
            plan,
            handle: tokio::runtime::Handle::current(),
            stop,
            on_verify,
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
