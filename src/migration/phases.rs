//! What a plan's phase hooks can do, by moment: [`PreCtx`] before the migration starts, [`Ctx`]
//! while it runs, [`SwitchCtx`] at the final fence with source writes paused. Each implements
//! the plan's [`PhaseContext`] over the running migration.

use std::time::Duration;

use crate::command::{Argv, CommandTable};
use crate::net::Endpoint;
use crate::plan::{self, PhaseContext, PhaseKind, Plan};
use std::sync::Arc;

use crate::plan::PlanRules;
use crate::verify::{VerifyConfig, VerifyReport, VerifyRules};

use super::Running;
use super::report::RunError;
use super::stop::Stop;

/// The switch hook's primitives: the migration has stopped at its final fence and source
/// writes are paused.
pub(super) struct SwitchCtx {
    pub(super) source: Endpoint,
    pub(super) target: Endpoint,
    pub(super) commands: std::collections::BTreeMap<String, Vec<String>>,
    pub(super) handle: tokio::runtime::Handle,
    pub(super) conns: std::collections::HashMap<&'static str, redis::aio::MultiplexedConnection>,
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
                crate::command::Class::Write | crate::command::Class::Script
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
pub(super) struct Ctx<'a> {
    pub(super) running: &'a Running,
    pub(super) plan: &'a Plan,
    pub(super) handle: tokio::runtime::Handle,
    pub(super) stop: &'a Stop,
    pub(super) on_verify: &'a (dyn Fn(&VerifyReport) + Send + Sync),
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
            .block_on(verify_phase(self.plan, self.running, self.on_verify))
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
pub(super) fn pre_start_phases(plan: &Plan) -> usize {
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
pub(super) struct PreCtx<'a> {
    pub(super) stop: &'a Stop,
    pub(super) handle: tokio::runtime::Handle,
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

/// The verifier settings a plan asks for.
fn verify_config(spec: &plan::VerifySpec) -> VerifyConfig {
    VerifyConfig {
        sample: if spec.full { None } else { spec.sample },
        ttl_tolerance_ms: spec.ttl_tolerance_ms,
        ..VerifyConfig::default()
    }
}

/// Runs the plan's fenced verification on the running migration, hands the report to
/// `on_verify` and logs the result.
pub(super) async fn verify_phase(
    plan: &Plan,
    running: &Running,
    on_verify: &(dyn Fn(&VerifyReport) + Send + Sync),
) -> Result<VerifyReport, RunError> {
    let rules: Arc<dyn VerifyRules> = Arc::new(PlanRules(plan.verify.clone()));
    let report = tokio::select! {
        r = running.verify(verify_config(&plan.verify), Some(rules)) => r?,
        e = running.failure() => return Err(e.into()),
    };
    on_verify(&report);
    tracing::info!(
        keys = report.keys_checked,
        differences = report.differences.len(),
        secs = report.elapsed_secs,
        "Fenced verification: {}",
        report.summary()
    );
    Ok(report)
}
