//! The sandboxed Lua state a plan runs in: standard library subset, instruction budget, memory
//! limit, `require` (plan folder, then the embedded `scripts/` library) and the `ferry` module.
//!
//! ## Behavior
//! - Libraries: base (without `dofile`, `loadfile`; `load` reads text only; `collectgarbage`
//!   only counts; `print`/`warn` go to the log), `string` (without `dump`), `table`, `math`,
//!   `utf8`, and `os.time`, `os.clock`, `os.date`. No `io`, `debug`, `package`, `coroutine`.
//! - Every entry into Lua goes through [`Runtime::call`] with an instruction budget, checked
//!   every [`HOOK_EVERY`] instructions; a spent budget cannot be caught by the plan's `pcall`.
//!   The state's allocations are capped at [`Limits::memory_bytes`].
//! - Chunks are named `@<path>` (embedded ones `@scripts/<name>.lua`), so messages read
//!   `plan.lua:12: …`.
//! - The `ferry` module and the embedded library modules are *strict*: reading a field they do
//!   not have is an error at the reader's line with a "did you mean" (`plan.lua:9: ferry.sidekiq
//!   has no field `keyz` (did you mean `keys`?)`), never a silent `nil` that would, say, turn
//!   `keys.include` into "every key". `ferry.strict(t, name)` does the same for any table.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use mlua::chunk::ChunkMode;
use mlua::{Function, HookTriggers, Lua, LuaOptions, StdLib, Table, Value, VmState};

use super::error::{Limit, Location, PlanError, suggest};

/// How often the budget hook runs; the budget is counted in steps of this size.
pub(crate) const HOOK_EVERY: u32 = 1000;

/// Default memory cap of one Lua state.
pub const DEFAULT_MEMORY_BYTES: usize = 64 << 20;
/// Default instruction budget for evaluating a plan file (with the modules it requires).
pub const DEFAULT_LOAD_INSTRUCTIONS: u64 = 100_000_000;
/// Default instruction budget of one `on_command` or `compare` call.
pub const DEFAULT_HOOK_INSTRUCTIONS: u64 = 1_000_000;
/// Default instruction budget of one phase hook call (time spent in `ctx` primitives is free).
pub const DEFAULT_PHASE_INSTRUCTIONS: u64 = 100_000_000;

/// Resource limits of the Lua states behind a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Memory cap of each Lua state, in bytes.
    pub memory_bytes: usize,
    /// Instruction budget for evaluating the plan file.
    pub load_instructions: u64,
    /// Instruction budget of one `on_command` or `compare` call.
    pub hook_instructions: u64,
    /// Instruction budget of one phase hook call.
    pub phase_instructions: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            memory_bytes: DEFAULT_MEMORY_BYTES,
            load_instructions: DEFAULT_LOAD_INSTRUCTIONS,
            hook_instructions: DEFAULT_HOOK_INSTRUCTIONS,
            phase_instructions: DEFAULT_PHASE_INSTRUCTIONS,
        }
    }
}

/// The Lua half of `require "ferry"`.
const FERRY_LUA: &str = include_str!("../../scripts/ferry.lua");

/// The embedded library, by module name.
const EMBEDDED: &[(&str, &str)] = &[
    (
        "ferry.elasticache",
        include_str!("../../scripts/ferry/elasticache.lua"),
    ),
    (
        "ferry.sidekiq",
        include_str!("../../scripts/ferry/sidekiq.lua"),
    ),
    (
        "ferry.rename",
        include_str!("../../scripts/ferry/rename.lua"),
    ),
    (
        "ferry.default",
        include_str!("../../scripts/ferry/default.lua"),
    ),
];

/// The embedded default plan (`ferry migrate` without a file).
pub(crate) const DEFAULT_PLAN: &str = include_str!("../../scripts/ferry/default.lua");

const PRELUDE: &str = include_str!("prelude.lua");

/// Embedded modules that are plans, not libraries: a plan's optional fields may be read when
/// absent (`if base.verify then`), so they stay plain tables.
const NOT_STRICT: &[&str] = &["ferry.default"];

/// Field of a strict table's metatable that holds the table's name, for messages.
const STRICT_NAME: &str = "ferry.strict";

/// Registry names of the module cache and the set of modules being loaded.
const LOADED: &str = "ferry.loaded";
const LOADING: &str = "ferry.loading";

/// Values `--set key=value` gives to `ferry.env`, ahead of the process environment.
#[derive(Debug, Clone, Default)]
pub(crate) struct Env {
    overrides: Vec<(String, String)>,
}

impl Env {
    pub(crate) fn new(overrides: &[(String, String)]) -> Env {
        Env {
            overrides: overrides.to_vec(),
        }
    }

    /// The last override for `name`, else the environment; non-UTF-8 values count as unset.
    fn get(&self, name: &str) -> Option<String> {
        self.overrides
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .or_else(|| std::env::var(name).ok())
    }
}

/// The instruction budget of the current call, shared with the VM hook.
#[derive(Debug, Default)]
struct Budget {
    left: AtomicI64,
    tripped: AtomicBool,
}

impl Budget {
    fn reset(&self, instructions: u64) {
        self.left.store(
            i64::try_from(instructions).unwrap_or(i64::MAX),
            Ordering::Relaxed,
        );
        self.tripped.store(false, Ordering::Relaxed);
    }

    /// Takes one hook step; false once the budget is spent (and from then on).
    fn spend(&self) -> bool {
        let step = i64::from(HOOK_EVERY);
        if self.left.fetch_sub(step, Ordering::Relaxed) < step {
            self.tripped.store(true, Ordering::Relaxed);
            return false;
        }
        true
    }

    fn tripped(&self) -> bool {
        self.tripped.load(Ordering::Relaxed)
    }
}

/// Raised by the VM hook when the budget is spent.
#[derive(Debug, thiserror::Error)]
#[error("instruction budget exceeded")]
struct OutOfInstructions;

/// Raised by `ferry.env` for a variable with no value and no default.
#[derive(Debug, thiserror::Error)]
#[error("environment variable `{name}` is not set")]
struct EnvMissing {
    name: String,
    location: Option<Location>,
}

/// Where the last `ferry.plan { … }` call was, for field errors.
struct PlanCall(Location);

/// What kind of failure a Lua error was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FailureKind {
    Syntax,
    Runtime,
    Limit(Limit),
    MissingEnv(String),
}

/// A Lua error taken apart: message, where, and the first Lua frame of the traceback.
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    pub(crate) kind: FailureKind,
    pub(crate) message: String,
    pub(crate) location: Option<Location>,
    pub(crate) frame: Option<String>,
}

impl Failure {
    fn from_lua(err: &mlua::Error, tripped: bool, limits: &Limits) -> Failure {
        // Rust callbacks wrap their errors with the traceback of the call; the innermost Lua
        // frame of the innermost wrapper is where a Rust-raised error happened.
        let mut frame = None;
        let mut e = err;
        loop {
            match e {
                mlua::Error::CallbackError { traceback, cause } => {
                    if let Some(f) = first_lua_frame(traceback) {
                        frame = Some(f);
                    }
                    e = cause;
                }
                mlua::Error::WithContext { cause, .. } => e = cause,
                _ => break,
            }
        }
        let mut failure = match e {
            mlua::Error::SyntaxError { message, .. } => {
                let (location, message) = split_location(message);
                Failure {
                    kind: FailureKind::Syntax,
                    message,
                    location,
                    frame: None,
                }
            }
            mlua::Error::RuntimeError(msg) => {
                let (head, traceback) = match msg.split_once("\nstack traceback:") {
                    Some((h, t)) => (h, Some(t)),
                    None => (msg.as_str(), None),
                };
                let (location, message) = split_location(head);
                Failure {
                    kind: FailureKind::Runtime,
                    message,
                    location,
                    frame: traceback.and_then(first_lua_frame).or(frame.clone()),
                }
            }
            mlua::Error::MemoryError(_) => Failure {
                kind: FailureKind::Limit(Limit::Memory(limits.memory_bytes)),
                message: Limit::Memory(limits.memory_bytes).to_string(),
                location: None,
                frame: frame.clone(),
            },
            other => {
                let kind = if other.downcast_ref::<OutOfInstructions>().is_some() {
                    FailureKind::Limit(Limit::Instructions(0))
                } else if let Some(env) = other.downcast_ref::<EnvMissing>() {
                    return Failure {
                        kind: FailureKind::MissingEnv(env.name.clone()),
                        message: env.to_string(),
                        location: env.location.clone(),
                        frame,
                    };
                } else {
                    FailureKind::Runtime
                };
                let (location, message) = split_location(&other.to_string());
                Failure {
                    kind,
                    message,
                    location,
                    frame: frame.clone(),
                }
            }
        };
        if tripped || matches!(failure.kind, FailureKind::Limit(Limit::Instructions(_))) {
            failure.kind = FailureKind::Limit(Limit::Instructions(0));
        }
        if failure.location.is_none() {
            failure.location = failure.frame.as_deref().and_then(frame_location);
        }
        failure
    }

    /// The failure as a load error of the plan `file`.
    pub(crate) fn into_plan_error(self, file: &str, limits: &Limits) -> PlanError {
        match self.kind {
            FailureKind::Syntax => PlanError::Syntax {
                location: self.location.unwrap_or_else(|| Location::file(file)),
                message: self.message,
            },
            FailureKind::Runtime => PlanError::Runtime {
                location: self.location,
                message: self.message,
                frame: self.frame,
            },
            FailureKind::Limit(limit) => PlanError::Limit {
                location: self.location,
                limit: match limit {
                    Limit::Instructions(_) => Limit::Instructions(limits.load_instructions),
                    m => m,
                },
            },
            FailureKind::MissingEnv(name) => PlanError::MissingEnv {
                name,
                location: self.location,
            },
        }
    }
}

/// Splits `file:line: message` into its location and message (Lua's own format).
pub(crate) fn split_location(msg: &str) -> (Option<Location>, String) {
    let bytes = msg.as_bytes();
    let mut from = 0;
    while let Some(off) = msg[from..].find(':') {
        let colon = from + off;
        let digits = bytes[colon + 1..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        let after = colon + 1 + digits;
        if digits > 0 && msg[after..].starts_with(": ") && colon > 0 {
            let line = msg[colon + 1..after].parse().ok();
            let file = msg[..colon].to_string();
            if !file.contains('\n') {
                return (Some(Location { file, line }), msg[after + 2..].to_string());
            }
        }
        from = colon + 1;
    }
    (None, msg.to_string())
}

/// The first traceback line that is Lua code of the plan (not C, not the prelude).
fn first_lua_frame(traceback: &str) -> Option<String> {
    traceback
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && *l != "stack traceback:")
        .find(|l| !l.starts_with("[C]") && !l.starts_with("prelude:") && !l.starts_with("[string"))
        .map(str::to_string)
}

/// `plan.lua:12` out of `plan.lua:12: in function <…>`.
fn frame_location(frame: &str) -> Option<Location> {
    let (loc, _) = split_location(frame);
    loc
}

/// One sandboxed Lua state with its budget.
pub(crate) struct Runtime {
    lua: Lua,
    budget: Arc<Budget>,
    limits: Limits,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Runtime {
    /// A fresh sandboxed state whose `require` looks in `dir` first.
    pub(crate) fn new(dir: &Path, env: Arc<Env>, limits: Limits) -> mlua::Result<Runtime> {
        let lua = Lua::new_with(
            StdLib::STRING | StdLib::TABLE | StdLib::MATH | StdLib::UTF8 | StdLib::OS,
            LuaOptions::new(),
        )?;
        lua.set_memory_limit(limits.memory_bytes)?;
        let budget = Arc::new(Budget::default());
        budget.reset(limits.load_instructions);
        let hook_budget = Arc::clone(&budget);
        lua.set_global_hook(
            HookTriggers::new().every_nth_instruction(HOOK_EVERY),
            move |_, _| {
                if hook_budget.spend() {
                    Ok(VmState::Continue)
                } else {
                    Err(mlua::Error::external(OutOfInstructions))
                }
            },
        )?;
        let rt = Runtime {
            lua,
            budget,
            limits,
        };
        rt.sandbox()?;
        rt.install_require(dir.to_path_buf(), env)?;
        Ok(rt)
    }

    fn sandbox(&self) -> mlua::Result<()> {
        let lua = &self.lua;
        let g = lua.globals();
        for name in ["dofile", "loadfile", "require", "package", "debug", "io"] {
            g.raw_remove(name)?;
        }
        let os: Table = g.raw_get("os")?;
        let safe_os = lua.create_table()?;
        for name in ["time", "clock", "date"] {
            safe_os.raw_set(name, os.raw_get::<Value>(name)?)?;
        }
        g.raw_set("os", safe_os)?;
        let string: Table = g.raw_get("string")?;
        string.raw_remove("dump")?;

        let budget = Arc::clone(&self.budget);
        let tripped = lua.create_function(move |_, ()| Ok(budget.tripped()))?;
        let log = lua.create_function(|_, msg: String| {
            tracing::info!(target: "ferry::plan", "{msg}");
            Ok(())
        })?;
        let warn = lua.create_function(|_, msg: String| {
            tracing::warn!(target: "ferry::plan", "{msg}");
            Ok(())
        })?;
        lua.load(PRELUDE)
            .set_name("=prelude")
            .set_mode(ChunkMode::Text)
            .call::<()>((tripped, log, warn))
    }

    fn install_require(&self, dir: PathBuf, env: Arc<Env>) -> mlua::Result<()> {
        let lua = &self.lua;
        lua.set_named_registry_value(LOADED, lua.create_table()?)?;
        lua.set_named_registry_value(LOADING, lua.create_table()?)?;
        let require = lua.create_function(move |lua, name: Value| {
            let name = match &name {
                Value::String(s) => s.to_str()?.to_string(),
                other => {
                    return Err(mlua::Error::runtime(format!(
                        "require expects a module name (string), got {}",
                        lua_type(other)
                    )));
                }
            };
            require(lua, &dir, &env, &name)
        })?;
        lua.globals().raw_set("require", require)
    }

    /// Evaluates a plan chunk; returns its value and where `ferry.plan` was called (when in
    /// this chunk).
    pub(crate) fn eval_plan(
        &self,
        chunk: &str,
        text: &[u8],
    ) -> Result<(Value, Location), PlanError> {
        let text = strip_shebang(text);
        let f = self
            .lua
            .load(&*text)
            .set_name(format!("@{chunk}"))
            .set_mode(ChunkMode::Text)
            .into_function()
            .map_err(|e| {
                Failure::from_lua(&e, false, &self.limits).into_plan_error(chunk, &self.limits)
            })?;
        let value = self
            .call(self.limits.load_instructions, |_| f.call::<Value>(()))
            .map_err(|e| e.into_plan_error(chunk, &self.limits))?;
        let at = self
            .lua
            .app_data_ref::<PlanCall>()
            .map(|p| p.0.clone())
            .filter(|l| l.file == chunk)
            .unwrap_or_else(|| Location::file(chunk));
        Ok((value, at))
    }

    /// Runs `f` with a fresh budget of `instructions`; Lua errors come back taken apart.
    pub(crate) fn call<R>(
        &self,
        instructions: u64,
        f: impl FnOnce(&Lua) -> mlua::Result<R>,
    ) -> Result<R, Failure> {
        self.budget.reset(instructions);
        let result = f(&self.lua);
        let tripped = self.budget.tripped();
        result.map_err(|e| {
            let mut failure = Failure::from_lua(&e, tripped, &self.limits);
            if let FailureKind::Limit(Limit::Instructions(_)) = failure.kind {
                failure.kind = FailureKind::Limit(Limit::Instructions(instructions));
                failure.message = Limit::Instructions(instructions).to_string();
            }
            failure
        })
    }
}

/// A `#!` first line is a comment to Lua's own loader; keep the newline so lines still count.
fn strip_shebang(text: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    if text.starts_with(b"#") {
        let end = text.iter().position(|&b| b == b'\n').unwrap_or(text.len());
        let mut out = Vec::with_capacity(text.len());
        out.extend_from_slice(b"--");
        out.extend_from_slice(&text[end..]);
        std::borrow::Cow::Owned(out)
    } else {
        std::borrow::Cow::Borrowed(text)
    }
}

/// Lua's `type()` of a value (`number` for integers too).
pub(crate) fn lua_type(v: &Value) -> &'static str {
    match v {
        Value::Integer(_) | Value::Number(_) => "number",
        Value::Error(_) => "error",
        other => other.type_name(),
    }
}

fn valid_module_name(name: &str) -> bool {
    !name.is_empty()
        && name.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        })
}

/// `require`: the cache, then `ferry`, then `<dir>/<a/b>.lua`, then the embedded library.
fn require(lua: &Lua, dir: &Path, env: &Arc<Env>, name: &str) -> mlua::Result<Value> {
    let loaded: Table = lua.named_registry_value(LOADED)?;
    let cached: Value = loaded.raw_get(name)?;
    if !cached.is_nil() {
        return Ok(cached);
    }
    let loading: Table = lua.named_registry_value(LOADING)?;
    if loading.raw_get::<bool>(name).unwrap_or(false) {
        return Err(mlua::Error::runtime(format!(
            "module '{name}' requires itself (circular require)"
        )));
    }
    if !valid_module_name(name) {
        return Err(mlua::Error::runtime(format!(
            "invalid module name '{name}': use dotted names such as 'common' or 'ferry.sidekiq'"
        )));
    }
    let value = if name == "ferry" {
        ferry_module(lua, Arc::clone(env))?
    } else {
        let file = dir.join(format!("{}.lua", name.replace('.', "/")));
        let (chunk, text) = if file.is_file() {
            let text = std::fs::read(&file).map_err(|e| {
                mlua::Error::runtime(format!("cannot read module {}: {e}", file.display()))
            })?;
            (file.display().to_string(), text)
        } else if let Some((_, src)) = EMBEDDED.iter().find(|(n, _)| *n == name) {
            (
                format!("scripts/{}.lua", name.replace('.', "/")),
                src.as_bytes().to_vec(),
            )
        } else {
            return Err(mlua::Error::runtime(format!(
                "module '{name}' not found: no file {} and no embedded module '{name}'",
                file.display()
            )));
        };
        loading.raw_set(name, true)?;
        let result = lua
            .load(&*strip_shebang(&text))
            .set_name(format!("@{chunk}"))
            .set_mode(ChunkMode::Text)
            .into_function()
            .and_then(|f| f.call::<Value>(name));
        loading.raw_remove(name)?;
        let value = match result? {
            Value::Nil => Value::Boolean(true),
            v => v,
        };
        // The embedded library only; a plan folder's own modules are the plan author's.
        if chunk.starts_with("scripts/")
            && !NOT_STRICT.contains(&name)
            && let Value::Table(t) = &value
            && t.metatable().is_none()
        {
            make_strict(lua, t, name)?;
        }
        value
    };
    loaded.raw_set(name, value.clone())?;
    Ok(value)
}

/// Where the Lua code that called the running Rust function is.
fn caller(lua: &Lua) -> Option<Location> {
    lua.inspect_stack(1, |d| {
        let file = d.source().short_src?.to_string();
        Some(Location {
            file,
            line: d.current_line().and_then(|l| u32::try_from(l).ok()),
        })
    })
    .flatten()
}

/// `require "ferry"`: Rust functions, then `scripts/ferry.lua` adding the helpers.
fn ferry_module(lua: &Lua, env: Arc<Env>) -> mlua::Result<Value> {
    let m = lua.create_table()?;
    m.raw_set("api_version", super::API_VERSION)?;
    m.raw_set("version", env!("CARGO_PKG_VERSION"))?;
    m.raw_set("env", env_function(lua, env)?)?;
    m.raw_set("plan", plan_function(lua)?)?;
    m.raw_set("strict", strict_function(lua)?)?;
    let f: Function = lua
        .load(FERRY_LUA)
        .set_name("@scripts/ferry.lua")
        .set_mode(ChunkMode::Text)
        .into_function()?;
    let value = match f.call::<Value>(m.clone())? {
        Value::Nil => Value::Table(m),
        v => v,
    };
    if let Value::Table(t) = &value
        && t.metatable().is_none()
    {
        make_strict(lua, t, "ferry")?;
    }
    Ok(value)
}

/// Gives `t` a metatable whose `__index` raises for string keys `t` does not have: the message
/// names `name`, the reader's file and line, and the closest field `t` has. Other keys (`t[1]`
/// from `ipairs`) read as `nil`, as usual.
fn make_strict(lua: &Lua, t: &Table, name: &str) -> mlua::Result<()> {
    let mt = lua.create_table()?;
    mt.raw_set(STRICT_NAME, name)?;
    mt.raw_set(
        "__index",
        lua.create_function(|lua, (t, key): (Table, Value)| {
            let Value::String(key) = key else {
                return Ok(Value::Nil);
            };
            let key = key.to_string_lossy();
            let name = t
                .metatable()
                .and_then(|mt| mt.raw_get::<String>(STRICT_NAME).ok())
                .unwrap_or_else(|| "the table".into());
            let mut fields = Vec::new();
            t.for_each(|k: Value, _: Value| {
                if let Value::String(k) = k {
                    fields.push(k.to_string_lossy());
                }
                Ok(())
            })?;
            let hint = suggest(&key, fields.iter().map(String::as_str))
                .map(|s| format!(" (did you mean `{s}`?)"))
                .unwrap_or_default();
            let at = caller(lua).map(|l| format!("{l}: ")).unwrap_or_default();
            Err(mlua::Error::runtime(format!(
                "{at}{name} has no field `{key}`{hint}"
            )))
        })?,
    )?;
    t.set_metatable(Some(mt))
}

/// `ferry.strict(t [, name])`: makes reading a field `t` does not have an error (at the
/// reader's line, with "did you mean") instead of `nil`, as for the `ferry` module and the
/// embedded library; returns `t`. `name` (default `"table"`) names `t` in messages. Fields may
/// still be added; `rawget(t, k)` still reads `nil` for a missing field.
///
/// Example: `local common = ferry.strict({ base = base }, "common")`
fn strict_function(lua: &Lua) -> mlua::Result<Function> {
    lua.create_function(|lua, (t, name): (Value, Option<String>)| {
        let Value::Table(t) = t else {
            return Err(mlua::Error::runtime(format!(
                "ferry.strict expects a table, got {}",
                lua_type(&t)
            )));
        };
        if t.metatable().is_some() {
            return Err(mlua::Error::runtime(
                "ferry.strict: the table already has a metatable",
            ));
        }
        make_strict(lua, &t, name.as_deref().unwrap_or("table"))?;
        Ok(t)
    })
}

/// `ferry.env(name [, default])`: the value of `--set name=…` if given, else the environment
/// variable `name`, else `default`. Without a default (or with `nil`), a missing variable stops
/// loading with an error naming the variable and the line. Values are strings; a default is
/// returned as given.
///
/// Example: `target = { url = ferry.env("TARGET_URL", "redis://127.0.0.1:6380") }`
fn env_function(lua: &Lua, env: Arc<Env>) -> mlua::Result<Function> {
    lua.create_function(move |lua, (name, default): (Value, Value)| {
        let name = match &name {
            Value::String(s) => s.to_str()?.to_string(),
            other => {
                return Err(mlua::Error::runtime(format!(
                    "ferry.env expects a variable name (string), got {}",
                    lua_type(other)
                )));
            }
        };
        match env.get(&name) {
            Some(v) => Ok(Value::String(lua.create_string(v)?)),
            None if !default.is_nil() => Ok(default),
            None => Err(mlua::Error::external(EnvMissing {
                name,
                location: caller(lua),
            })),
        }
    })
}

/// `ferry.plan(t)`: marks `t` as the plan and returns it. It remembers its line, so errors about
/// fields read `plan.lua:3: keys.include[2]: …`.
///
/// Example: `return ferry.plan { api_version = 1, source = …, target = … }`
fn plan_function(lua: &Lua) -> mlua::Result<Function> {
    lua.create_function(|lua, t: Value| {
        if !matches!(t, Value::Table(_)) {
            return Err(mlua::Error::runtime(format!(
                "ferry.plan expects a table (ferry.plan {{ … }}), got {}",
                lua_type(&t)
            )));
        }
        if let Some(at) = caller(lua) {
            lua.set_app_data(PlanCall(at));
        }
        Ok(t)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_location_forms() {
        let (l, m) = split_location("plan.lua:12: boom");
        assert_eq!(l.unwrap().to_string(), "plan.lua:12");
        assert_eq!(m, "boom");
        let (l, m) = split_location("/tmp/a:b/plan.lua:3: x: y");
        assert_eq!(l.unwrap().file, "/tmp/a:b/plan.lua");
        assert_eq!(m, "x: y");
        let (l, m) = split_location("no location here: at all");
        assert!(l.is_none());
        assert_eq!(m, "no location here: at all");
    }

    #[test]
    fn module_names() {
        assert!(valid_module_name("ferry.sidekiq"));
        assert!(valid_module_name("common"));
        assert!(!valid_module_name("../etc/passwd"));
        assert!(!valid_module_name("a..b"));
        assert!(!valid_module_name("a/b"));
        assert!(!valid_module_name(""));
    }
}
