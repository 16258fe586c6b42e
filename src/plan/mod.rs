//! Lua migration plans: a plan file is evaluated once, in a sandbox, into a plain [`Plan`];
//! the Lua functions it holds become opaque hooks. `mlua` never leaves this module.
//!
//! ## Behavior
//! - [`load`] reads the file, evaluates it (instruction budget, memory limit, no `io`/`os`
//!   escapes), checks `api_version` before anything else, then every field, with errors that
//!   name the file, line and field ([`PlanError`]).
//! - Declarative parts compile to native matchers: [`KeyFilter`] of [`Glob`]s, [`Rule`]s
//!   applied by [`apply_rules`].
//! - Hooks ([`CommandHook`], [`PhaseHook`], [`CompareHook`]) are `Send + Sync` handles; their
//!   errors are [`HookError`]s, never panics.
//! - [`check`] dry-runs filter, rules and `on_command` over sample commands, without network.
//!
//! Neighbours: the CLI calls [`load`]/[`check`]; the pipeline reads the plain fields and calls
//! [`Plan::map_command`] (or [`apply_rules`] and the hook) for each replayed command.
//! The Lua side is documented in `docs/plan-reference.md`; its library is `scripts/`.

mod check;
mod decode;
mod error;
mod filter;
mod glob;
mod hooks;
mod mapper;
mod rules;
mod runtime;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub use check::{CheckLine, CheckOutcome, CheckReport, builtin_samples, check};
pub use error::{HookError, HookErrorKind, Limit, Location, PlanError};
pub use filter::{KEY_TYPES, KeyFilter, type_of_group};
pub use glob::Glob;
pub use hooks::{
    CommandHook, CompareHook, CompareValue, HookOutcome, HookStats, MAX_EMITTED, MAX_EMITTED_BYTES,
    PhaseContext, PhaseHook, Reply,
};
pub use mapper::{HookReport, PlanMapper, PlanRules};
pub use rules::{Applied, Rule, apply_rules, dropped, map_db, rename_key};
pub use runtime::{
    DEFAULT_HOOK_INSTRUCTIONS, DEFAULT_LOAD_INSTRUCTIONS, DEFAULT_MEMORY_BYTES,
    DEFAULT_PHASE_INSTRUCTIONS, Limits,
};

use crate::command::{Argv, CommandTable};
use runtime::{Env, Runtime};

/// The plan API version this ferry writes about in its docs.
pub const API_VERSION: u32 = 1;
/// Every `api_version` this ferry loads.
pub const SUPPORTED_API_VERSIONS: &[u32] = &[1];
/// `catch_up`'s `max_lag_ms` when the plan gives none.
pub const DEFAULT_MAX_LAG_MS: u64 = 1000;
/// `cutover`'s `max_pause_ms` when the plan gives none.
pub const DEFAULT_MAX_PAUSE_MS: u64 = 2000;
/// `verify.ttl_tolerance_ms` when the plan gives none.
pub const DEFAULT_TTL_TOLERANCE_MS: i64 = 1000;
/// `cutover.quiet_ms` when the plan gives none.
pub const DEFAULT_QUIET_MS: u64 = 5000;
/// `cutover.max_trailing_ms` when the plan gives none.
pub const DEFAULT_MAX_TRAILING_MS: u64 = 300_000;
/// The embedded journal's folder (relative to the plan's folder) when the plan gives none.
pub const DEFAULT_JOURNAL_DIR: &str = "ferry-state";

/// A loaded plan: plain data plus opaque hooks.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Plan {
    /// `name`, or the file stem.
    pub name: String,
    /// The plan file as given to [`load`].
    pub path: PathBuf,
    /// The plan's `api_version`.
    pub api_version: u32,
    /// Where data comes from.
    pub source: Server,
    /// Where data goes (`capture` is not used).
    pub target: Server,
    /// Where captured writes are kept.
    pub journal: JournalSpec,
    /// Snapshot tuning.
    pub snapshot: SnapshotSpec,
    /// Replay tuning.
    pub replay: ReplaySpec,
    /// Which dbs, keys and types are migrated.
    pub keys: KeyFilter,
    /// Rewrite rules, first match wins.
    pub rewrite: Vec<Rule>,
    /// Per-command hook, run after the rules.
    pub on_command: Option<CommandHook>,
    /// What a failing `on_command` does.
    pub on_hook_error: HookErrorPolicy,
    /// Verification settings.
    pub verify: VerifySpec,
    /// The phases, in order.
    pub phases: Vec<Phase>,
    /// `check.samples`: commands `ferry check` dry-runs instead of the built-in ones.
    pub check_samples: Vec<(u32, Argv)>,
    /// The final fence of a stop without a cutover phase.
    pub final_fence: FinalFenceSpec,
    /// `on_field_ttls`: what to do when the source has hash-field TTLs (Redis 7.4) and the
    /// target cannot hold them.
    pub on_field_ttls: FieldTtlPolicy,
    /// `metrics_addr`: where a run serves its Prometheus metrics (`HOST:PORT`); `None` for no
    /// listener.
    pub metrics_addr: Option<std::net::SocketAddr>,
}

/// `final_fence`: the stop's final fence when no cutover phase sets its own bound.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FinalFenceSpec {
    /// Longest write pause on the source, in ms; `None` for ferry's default.
    pub max_pause_ms: Option<u64>,
}

/// A Redis server of the plan.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Server {
    /// redis-rs URL; may hold a password, so `Debug` redacts it.
    pub url: String,
    /// Which node captures writes (source only).
    pub capture: CaptureChoice,
    /// Bound on the source's output buffer for ferry's `MONITOR` connection, in bytes (source
    /// only); `None` for ferry's default.
    pub max_monitor_buffer: Option<u64>,
    /// `tls = { ca, cert, key, server_name }`: the TLS settings of a `rediss://` URL.
    pub tls: crate::net::TlsOptions,
}

impl Server {
    /// The endpoint this server is reached at, with its TLS settings (files read here).
    pub fn endpoint(&self) -> Result<crate::net::Endpoint, crate::net::NetError> {
        crate::net::Endpoint::parse_with_tls(&self.url, &self.tls)
    }

    /// Like [`Server::endpoint`], with a URL and TLS flags given on the command line taking
    /// precedence over the plan's.
    pub fn endpoint_with(
        &self,
        url: Option<&str>,
        tls: &crate::net::TlsOptions,
    ) -> Result<crate::net::Endpoint, crate::net::NetError> {
        crate::net::Endpoint::parse_with_tls(url.unwrap_or(&self.url), &self.tls.or(tls))
    }
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("url", &crate::net::redact_url(&self.url))
            .field("capture", &self.capture)
            .field("max_monitor_buffer", &self.max_monitor_buffer)
            .field("tls", &self.tls)
            .finish()
    }
}

/// `source.capture`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CaptureChoice {
    /// A healthy replica when one answers, else the source.
    #[default]
    Auto,
    /// The source itself.
    Primary,
    /// A replica of the source; an error when none answers.
    Replica,
}

/// `journal`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum JournalSpec {
    /// On local disk. `fsync_ms`: `None` for the journal's default, `Some(0)` for every
    /// append ("always"), `Some(n)` at most every `n` ms.
    Embedded { dir: PathBuf, fsync_ms: Option<u64> },
    /// In an SQS queue, for `ferry replay` processes; this process keeps its own journal and
    /// state in `dir`. `shards`: message groups (or queues, with `{shard}` in the URL), `None`
    /// for ferry's default; `create_queue`: create the queue(s) when missing.
    Sqs {
        queue_url: String,
        fifo: bool,
        shards: Option<usize>,
        create_queue: bool,
        dir: PathBuf,
    },
}

/// `snapshot`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SnapshotSpec {
    /// Parallel readers; `None` for ferry's default.
    pub workers: Option<usize>,
    /// Cap on snapshot commands per second on the source; `None` for no cap.
    pub max_source_ops: Option<u64>,
}

/// `replay`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplaySpec {
    /// Slot shards, each applied in order over its own pipelined connection to the target;
    /// `None` for ferry's default.
    pub shards: Option<usize>,
}

/// `verify`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct VerifySpec {
    /// Keys to sample; `None` (and `full` false) for the verifier's default.
    pub sample: Option<u64>,
    /// Compare every key.
    pub full: bool,
    /// TTL difference accepted, in milliseconds.
    pub ttl_tolerance_ms: i64,
    /// Per-pattern rules, first match wins.
    pub rules: Vec<VerifyRule>,
}

impl Default for VerifySpec {
    fn default() -> VerifySpec {
        VerifySpec {
            sample: None,
            full: false,
            ttl_tolerance_ms: DEFAULT_TTL_TOLERANCE_MS,
            rules: Vec::new(),
        }
    }
}

impl VerifySpec {
    /// The first rule whose pattern matches `key` (a source key).
    pub fn rule_for(&self, key: &[u8]) -> Option<&VerifyRule> {
        self.rules.iter().find(|r| r.pattern.matches(key))
    }

    /// The TTL tolerance for `key`: its rule's, else the plan's.
    pub fn ttl_tolerance_for(&self, key: &[u8]) -> i64 {
        self.rule_for(key)
            .and_then(|r| r.ttl_tolerance_ms)
            .unwrap_or(self.ttl_tolerance_ms)
    }
}

/// One `verify.rules` entry.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct VerifyRule {
    /// Source keys the rule covers.
    pub pattern: Glob,
    /// Skip these keys.
    pub ignore: bool,
    /// TTL tolerance for these keys instead of the plan's.
    pub ttl_tolerance_ms: Option<i64>,
    /// Decides equality instead of the byte comparison.
    pub compare: Option<CompareHook>,
}

/// `on_hook_error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HookErrorPolicy {
    /// Stop the migration.
    #[default]
    Fail,
    /// Drop the command and record the error.
    Skip,
}

/// `on_field_ttls`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FieldTtlPolicy {
    /// Stop before anything is copied, naming the hashes affected.
    #[default]
    Refuse,
    /// Copy the fields without their TTLs, counted and reported.
    DropFieldTtls,
}

/// One entry of `phases`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Phase {
    /// What the phase does.
    pub kind: PhaseKind,
    /// Runs before the phase.
    pub before: Option<PhaseHook>,
    /// Runs after the phase succeeded.
    pub after: Option<PhaseHook>,
}

impl Phase {
    /// `snapshot`, `catch_up`, `verify`, `cutover`, or the custom phase's name.
    pub fn name(&self) -> &str {
        match &self.kind {
            PhaseKind::Snapshot => "snapshot",
            PhaseKind::CatchUp { .. } => "catch_up",
            PhaseKind::Verify => "verify",
            PhaseKind::Cutover { .. } => "cutover",
            PhaseKind::Custom { name, .. } => name,
        }
    }
}

/// `cutover.on_conflict`: what a late source write to a key the target changed since the switch
/// does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnConflict {
    /// Apply it in arrival order and list the key.
    #[default]
    Report,
    /// Skip it: the target's write stands.
    TargetWins,
    /// Skip it, end the window at a fence and fail the run.
    Fail,
}

/// What a phase does.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum PhaseKind {
    /// Wait until the fenced copy of every key is complete. The copy itself starts with the
    /// migration, before the first built-in phase; custom phases listed before a leading
    /// `snapshot` phase run before that.
    Snapshot,
    /// Replay until the target trails by at most `max_lag_ms`.
    CatchUp { max_lag_ms: u64 },
    /// Compare source and target per `verify`.
    Verify,
    /// Wait for lag ≤ `max_lag_ms`, pause source writes (at most `max_pause_ms`), drain to a
    /// final fence, run `switch`; then disconnect the clients the pause held (they retry on
    /// the new server) and unpause.
    Cutover {
        max_pause_ms: u64,
        max_lag_ms: u64,
        switch: Option<PhaseHook>,
        /// Keep replaying target → source after the switch, so a rollback loses nothing.
        reverse_sync: bool,
        /// Operator commands `switch` may run with `ctx.run(name)`: name → argv (no shell).
        commands: std::collections::BTreeMap<String, Vec<String>>,
        /// The trailing window after the switch ends once the old source has had no write for
        /// this long (0: at once).
        quiet_ms: u64,
        /// … or after this long, whatever happens.
        max_trailing_ms: u64,
        /// A late source write to a key the target changed since the switch.
        on_conflict: OnConflict,
        /// Keep source writes paused through the window, disconnecting held clients.
        hold_source: bool,
    },
    /// The plan's own phase.
    Custom { name: String, run: PhaseHook },
}

/// How to load a plan.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct LoadOptions {
    /// `--set key=value` pairs, seen by `ferry.env` before the environment.
    pub overrides: Vec<(String, String)>,
    /// Resource limits of the Lua states.
    pub limits: Limits,
}

impl LoadOptions {
    /// Options with these overrides and default limits.
    pub fn with_overrides(overrides: &[(String, String)]) -> LoadOptions {
        LoadOptions {
            overrides: overrides.to_vec(),
            limits: Limits::default(),
        }
    }
}

/// Loads the plan at `path`; `overrides` come from `ferry run --set key=value`.
pub fn load(path: &Path, overrides: &[(String, String)]) -> Result<Plan, PlanError> {
    load_with(path, &LoadOptions::with_overrides(overrides))
}

/// [`load`] with options.
pub fn load_with(path: &Path, options: &LoadOptions) -> Result<Plan, PlanError> {
    let text = std::fs::read(path).map_err(|source| PlanError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let dir = path.parent().unwrap_or(Path::new("")).to_path_buf();
    load_source(path, &dir, &text, options)
}

/// The default plan (`scripts/ferry/default.lua`): what `ferry migrate` runs. Its journal
/// folder is relative to the current directory.
pub fn load_default(options: &LoadOptions) -> Result<Plan, PlanError> {
    load_source(
        Path::new("scripts/ferry/default.lua"),
        Path::new(""),
        runtime::DEFAULT_PLAN.as_bytes(),
        options,
    )
}

/// Loads a plan from `text` as if it were the file `path` in folder `dir` (`require` and the
/// journal folder are relative to `dir`).
pub fn load_source(
    path: &Path,
    dir: &Path,
    text: &[u8],
    options: &LoadOptions,
) -> Result<Plan, PlanError> {
    let chunk = path.display().to_string();
    let env = Arc::new(Env::new(&options.overrides));
    let limits = options.limits;
    let new_runtime = || {
        Runtime::new(dir, Arc::clone(&env), limits).map_err(|e| PlanError::Setup {
            file: chunk.clone(),
            message: e.to_string(),
        })
    };

    let main = new_runtime()?;
    let (value, at) = main.eval_plan(&chunk, text)?;
    let main = Arc::new(Mutex::new(main));
    let default_name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "plan".into());
    let decoder = decode::Decoder::new(at, dir, Arc::clone(&main), limits);
    let mut decoded = decoder.decode(&value, path, default_name)?;

    // on_command and compare run in states of their own (see `hooks`), so the plan is
    // evaluated again for each; a plan is expected to build the same table every time.
    if decoded.has_on_command {
        let rt = new_runtime()?;
        let (value, _) = rt.eval_plan(&chunk, text)?;
        let func = decode::dig_function(&value, &["on_command"])
            .ok_or_else(|| decode::nondeterministic(&chunk, "on_command"))?;
        decoded.plan.on_command = Some(CommandHook::new(
            Arc::new(Mutex::new(rt)),
            func,
            limits.hook_instructions,
        ));
    }
    if !decoded.compare_rules.is_empty() {
        let rt = new_runtime()?;
        let (value, _) = rt.eval_plan(&chunk, text)?;
        let rt = Arc::new(Mutex::new(rt));
        for i in decoded.compare_rules {
            let field = format!("verify.rules[{}].compare", i + 1);
            let func = decode::dig_function(
                &value,
                &["verify", "rules", &(i + 1).to_string(), "compare"],
            )
            .ok_or_else(|| decode::nondeterministic(&chunk, &field))?;
            if let Some(rule) = decoded.plan.verify.rules.get_mut(i) {
                rule.compare = Some(CompareHook::new(
                    Arc::clone(&rt),
                    func,
                    field,
                    limits.hook_instructions,
                ));
            }
        }
    }
    Ok(decoded.plan)
}

/// What [`Plan::map_command`] did with one command.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Mapped {
    /// Sent on (renamed and moved per the rules, unchanged by the hook).
    Kept,
    /// The key filter left it out.
    Excluded,
    /// A `drop_commands` rule dropped it.
    Dropped,
    /// `on_command` changed it or emitted more; this many commands were sent.
    Replaced(usize),
    /// `on_command` dropped it.
    HookDropped,
    /// `on_command` failed under `on_hook_error = "skip"`: dropped, error recorded here.
    Skipped(HookError),
}

impl Plan {
    /// Runs one source command through the filter, the rules and `on_command`, appending what
    /// to send to the target to `out`.
    ///
    /// ## Behavior
    /// Order: [`apply_rules`] (drop, filter, rename, move), then `on_command` on the result,
    /// whose output is final. A hook error is returned under `on_hook_error = "fail"` and
    /// becomes [`Mapped::Skipped`] under `"skip"`.
    pub fn map_command(
        &self,
        table: &CommandTable,
        db: u32,
        argv: Argv,
        out: &mut Vec<(u32, Argv)>,
    ) -> Result<Mapped, HookError> {
        let (db, argv) = match apply_rules(&self.rewrite, &self.keys, table, db, argv) {
            Applied::Excluded => return Ok(Mapped::Excluded),
            Applied::Dropped => return Ok(Mapped::Dropped),
            Applied::Keep { db, argv } => (db, argv),
        };
        let Some(hook) = &self.on_command else {
            out.push((db, argv));
            return Ok(Mapped::Kept);
        };
        let keys: Vec<usize> = table.keys(&argv).iter().map(|k| k.pos).collect();
        match hook.call(db, &argv, &keys) {
            Ok(HookOutcome::Keep) => {
                out.push((db, argv));
                Ok(Mapped::Kept)
            }
            Ok(HookOutcome::Replace(cmds)) => {
                let n = cmds.len();
                out.extend(cmds);
                Ok(Mapped::Replaced(n))
            }
            Ok(HookOutcome::Drop) => Ok(Mapped::HookDropped),
            Err(e) => match self.on_hook_error {
                HookErrorPolicy::Fail => Err(e),
                HookErrorPolicy::Skip => Ok(Mapped::Skipped(e)),
            },
        }
    }
}
