//! Opaque handles to a plan's Lua functions: `CommandHook` (`on_command`), `PhaseHook`
//! (`before`, `after`, `switch`, custom phases) and `CompareHook` (`verify.rules[i].compare`).
//!
//! ## Behavior
//! - Each handle is `Send + Sync` and cheap to clone; calls into one Lua state are serialized by
//!   a mutex and run with a fresh instruction budget.
//! - `on_command`, the `compare` functions and the phase hooks each live in their own Lua state
//!   (the plan is evaluated once per state), so a phase hook waiting in `ctx.wait_lag()` never
//!   blocks the replay that calls `on_command`. Module-level locals are therefore not shared
//!   between those three groups.
//! - The `cmd` and `ctx` values given to Lua exist only for the call (`Lua::scope`): a hook that
//!   keeps them gets an error when it uses them later.
//! - Lua errors come back as [`HookError`] with the hook's name, message, location and the first
//!   frame of the traceback. Nothing a hook does panics.
//! - Calls block the calling thread (a few microseconds for a small `on_command`; phase hooks as
//!   long as their `ctx` primitives): call them from a blocking context, not an async task.

use std::cell::RefCell;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use mlua::{Function, Lua, MetaMethod, UserData, UserDataFields, UserDataMethods, Value, Variadic};

use super::error::{HookError, HookErrorKind, Location};
use super::runtime::{Failure, FailureKind, Runtime, lua_type};
use crate::command::Argv;

/// Most commands one `on_command` call may emit, and their total size: a hook that loops on
/// `cmd:emit` fails instead of growing ferry's memory outside the Lua limit.
pub const MAX_EMITTED: usize = 10_000;
/// See [`MAX_EMITTED`].
pub const MAX_EMITTED_BYTES: usize = 64 << 20;

pub(crate) type SharedRuntime = Arc<Mutex<Runtime>>;

fn lock(rt: &SharedRuntime) -> MutexGuard<'_, Runtime> {
    // A panic elsewhere while holding the lock leaves the state usable: every call resets it.
    rt.lock().unwrap_or_else(|p| p.into_inner())
}

fn hook_error(hook: &str, f: Failure) -> HookError {
    HookError {
        hook: hook.to_string(),
        kind: match f.kind {
            FailureKind::Limit(l) => HookErrorKind::Limit(l),
            _ => HookErrorKind::Runtime,
        },
        message: f.message,
        location: f.location,
        frame: f.frame,
    }
}

/// Where a Lua function was defined.
fn defined_at(f: &Function) -> Option<Location> {
    let info = f.info();
    Some(Location {
        file: info.short_src?,
        line: info.line_defined.and_then(|l| u32::try_from(l).ok()),
    })
}

/// Calls and cost of one hook.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HookStats {
    /// Calls made.
    pub calls: u64,
    /// Calls that failed.
    pub errors: u64,
    /// Time spent in the calls, lock wait included.
    pub nanos: u64,
}

#[derive(Debug, Default)]
struct Counters {
    calls: AtomicU64,
    errors: AtomicU64,
    nanos: AtomicU64,
}

impl Counters {
    fn record(&self, started: Instant, ok: bool) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    fn snapshot(&self) -> HookStats {
        HookStats {
            calls: self.calls.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            nanos: self.nanos.load(Ordering::Relaxed),
        }
    }
}

struct Inner {
    // Declared before `rt` so the function's reference is released while its state is alive.
    func: Function,
    rt: SharedRuntime,
    /// The plan field, for errors: `on_command`, `phases[4].switch`.
    name: String,
    defined_at: Option<Location>,
    instructions: u64,
    counters: Counters,
}

impl Inner {
    fn new(rt: SharedRuntime, func: Function, name: String, instructions: u64) -> Arc<Inner> {
        let defined_at = defined_at(&func);
        Arc::new(Inner {
            rt,
            func,
            name,
            defined_at,
            instructions,
            counters: Counters::default(),
        })
    }

    fn fmt(&self, kind: &str, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.defined_at {
            Some(at) => write!(f, "{kind}({} defined at {at})", self.name),
            None => write!(f, "{kind}({})", self.name),
        }
    }
}

/// What `on_command` decided for one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookOutcome {
    /// Send the command unchanged.
    Keep,
    /// Send these commands instead, in order (the possibly changed command first, unless it
    /// was dropped, then whatever the hook emitted).
    Replace(Vec<(u32, Argv)>),
    /// Send nothing.
    Drop,
}

/// The plan's `on_command` function.
#[derive(Clone)]
pub struct CommandHook {
    inner: Arc<Inner>,
}

impl fmt::Debug for CommandHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt("CommandHook", f)
    }
}

impl CommandHook {
    pub(crate) fn new(rt: SharedRuntime, func: Function, instructions: u64) -> CommandHook {
        CommandHook {
            inner: Inner::new(rt, func, "on_command".into(), instructions),
        }
    }

    /// Runs the hook on one command. `key_positions` are argv indices of its keys (from
    /// [`CommandTable::keys`](crate::command::CommandTable::keys)); `cmd:keys()` and
    /// `cmd:set_key(i, …)` go through them.
    ///
    /// ## Behavior
    /// The hook's return value is ignored: what it did to `cmd` decides. Unchanged and nothing
    /// emitted → `Keep`; `cmd:drop()` and nothing emitted → `Drop`; otherwise `Replace`.
    pub fn call(
        &self,
        db: u32,
        argv: &Argv,
        key_positions: &[usize],
    ) -> Result<HookOutcome, HookError> {
        let started = Instant::now();
        let mut state = CmdState::new(db, argv, key_positions);
        let result = {
            let rt = lock(&self.inner.rt);
            rt.call(self.inner.instructions, |lua| {
                lua.scope(|scope| {
                    let ud = scope.create_userdata_ref_mut(&mut state)?;
                    self.inner.func.call::<()>(ud)
                })
            })
        };
        self.inner.counters.record(started, result.is_ok());
        result.map_err(|f| hook_error(&self.inner.name, f))?;
        Ok(state.outcome(db, argv))
    }

    /// Calls, errors and time spent so far.
    pub fn stats(&self) -> HookStats {
        self.inner.counters.snapshot()
    }

    /// Where the function was defined.
    pub fn defined_at(&self) -> Option<&Location> {
        self.inner.defined_at.as_ref()
    }
}

/// The `cmd` handle's data: the command as the hook changes it.
struct CmdState {
    db: u32,
    argv: Argv,
    keys: Vec<usize>,
    dropped: bool,
    emitted: Vec<(u32, Argv)>,
    emitted_bytes: usize,
}

impl CmdState {
    fn new(db: u32, argv: &Argv, keys: &[usize]) -> CmdState {
        CmdState {
            db,
            argv: argv.clone(),
            keys: keys
                .iter()
                .copied()
                .filter(|&p| p > 0 && p < argv.len())
                .collect(),
            dropped: false,
            emitted: Vec::new(),
            emitted_bytes: 0,
        }
    }

    fn outcome(self, db: u32, argv: &Argv) -> HookOutcome {
        let changed = self.db != db || self.argv != *argv;
        match (self.dropped, changed, self.emitted.is_empty()) {
            (true, _, true) => HookOutcome::Drop,
            (false, false, true) => HookOutcome::Keep,
            (dropped, _, _) => {
                let mut out = Vec::with_capacity(1 + self.emitted.len());
                if !dropped {
                    out.push((self.db, self.argv));
                }
                out.extend(self.emitted);
                HookOutcome::Replace(out)
            }
        }
    }

    /// argv index of argument `i` (1-based, after the name).
    fn arg_index(&self, i: i64, what: &str) -> mlua::Result<usize> {
        let n = self.argv.len().saturating_sub(1);
        usize::try_from(i)
            .ok()
            .filter(|&i| i >= 1 && i <= n)
            .ok_or_else(|| {
                mlua::Error::runtime(format!("{what}: no argument #{i} (this command has {n})"))
            })
    }

    /// argv index of key `i` (1-based).
    fn key_index(&self, i: i64, what: &str) -> mlua::Result<usize> {
        usize::try_from(i)
            .ok()
            .and_then(|i| i.checked_sub(1))
            .and_then(|i| self.keys.get(i).copied())
            .ok_or_else(|| {
                mlua::Error::runtime(format!(
                    "{what}: no key #{i} (this command has {} key{})",
                    self.keys.len(),
                    if self.keys.len() == 1 { "" } else { "s" }
                ))
            })
    }

    fn push_emitted(&mut self, db: u32, argv: Argv) -> mlua::Result<()> {
        self.emitted_bytes += argv.byte_len();
        if self.emitted.len() >= MAX_EMITTED || self.emitted_bytes > MAX_EMITTED_BYTES {
            return Err(mlua::Error::runtime(format!(
                "cmd:emit: more than {MAX_EMITTED} commands or {} MiB emitted by one call",
                MAX_EMITTED_BYTES >> 20
            )));
        }
        self.emitted.push((db, argv));
        Ok(())
    }
}

/// Bytes of a string or number argument, as Lua would turn it into a string.
fn arg_bytes(lua: &Lua, v: Value, what: &str) -> mlua::Result<Vec<u8>> {
    let ty = lua_type(&v);
    match lua.coerce_string(v)? {
        Some(s) if ty == "string" || ty == "number" => Ok(s.as_bytes().to_vec()),
        _ => Err(mlua::Error::runtime(format!(
            "{what}: expected a string or number, got {ty}"
        ))),
    }
}

fn db_arg(n: Value, what: &str) -> mlua::Result<u32> {
    let ty = lua_type(&n);
    match n {
        Value::Integer(i) => u32::try_from(i).ok(),
        Value::Number(f) if f.fract() == 0.0 && (0.0..=f64::from(u32::MAX)).contains(&f) => {
            Some(f as u32)
        }
        _ => None,
    }
    .ok_or_else(|| mlua::Error::runtime(format!("{what}: expected a db number ≥ 0, got {ty}")))
}

/// The `cmd` handle `on_command` receives. Arguments and keys are 1-based and binary-safe.
///
/// | Lua | does | example |
/// |---|---|---|
/// | `cmd.name` | upper-case command name | `if cmd.name == "PUBLISH" then cmd:drop() end` |
/// | `cmd.db` | db (after `move_db`) | `if cmd.db == 2 then … end` |
/// | `cmd.args` | new table of the arguments after the name | `for i, a in ipairs(cmd.args) do … end` |
/// | `cmd:arg(i)` | argument `i`, or nil | `local ttl = cmd:arg(3)` |
/// | `cmd:keys()` | new table of the key arguments | `for _, k in ipairs(cmd:keys()) do … end` |
/// | `cmd:key(i)` | key `i` (error if none) | `cmd:key(1):sub(1, 3) == "fs:"` |
/// | `cmd:set_key(i, v)` | renames key `i` | `cmd:set_key(1, "new:" .. cmd:key(1))` |
/// | `cmd:set_arg(i, v)` | replaces argument `i` | `cmd:set_arg(2, "0")` |
/// | `cmd:set_db(n)` | moves the command to db `n` | `cmd:set_db(0)` |
/// | `cmd:drop()` | sends nothing for this command | `cmd:drop()` |
/// | `cmd:emit(name, …)` | sends another command after it, same db | `cmd:emit("EXPIRE", cmd:key(1), 60)` |
/// | `cmd:emit_to(db, name, …)` | the same in another db | `cmd:emit_to(1, "DEL", "x")` |
/// | `tostring(cmd)` | `db0 "SET" "k" "v"` | `print(cmd)` |
impl UserData for CmdState {
    fn add_fields<F: UserDataFields<Self>>(fields: &mut F) {
        fields.add_field_method_get("name", |lua, this| {
            lua.create_string(this.argv.name().to_ascii_uppercase())
        });
        fields.add_field_method_get("db", |_, this| Ok(this.db));
        fields.add_field_method_get("args", |lua, this| {
            let args = this
                .argv
                .iter()
                .skip(1)
                .map(|a| lua.create_string(a))
                .collect::<mlua::Result<Vec<_>>>()?;
            lua.create_sequence_from(args)
        });
    }

    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method("arg", |lua, this, i: i64| {
            let n = this.argv.len().saturating_sub(1);
            match usize::try_from(i).ok().filter(|&i| i >= 1 && i <= n) {
                Some(i) => Ok(Some(
                    lua.create_string(this.argv.get(i).unwrap_or_default())?,
                )),
                None => Ok(None),
            }
        });
        methods.add_method("keys", |lua, this, ()| {
            let keys = this
                .keys
                .iter()
                .map(|&p| lua.create_string(this.argv.get(p).unwrap_or_default()))
                .collect::<mlua::Result<Vec<_>>>()?;
            lua.create_sequence_from(keys)
        });
        methods.add_method("key", |lua, this, i: i64| {
            let idx = this.key_index(i, "cmd:key")?;
            lua.create_string(this.argv.get(idx).unwrap_or_default())
        });
        methods.add_method_mut("set_key", |lua, this, (i, v): (i64, Value)| {
            let idx = this.key_index(i, "cmd:set_key")?;
            let bytes = arg_bytes(lua, v, "cmd:set_key")?;
            this.argv.set(idx, &bytes);
            Ok(())
        });
        methods.add_method_mut("set_arg", |lua, this, (i, v): (i64, Value)| {
            let idx = this.arg_index(i, "cmd:set_arg")?;
            let bytes = arg_bytes(lua, v, "cmd:set_arg")?;
            this.argv.set(idx, &bytes);
            Ok(())
        });
        methods.add_method_mut("set_db", |_, this, n: Value| {
            this.db = db_arg(n, "cmd:set_db")?;
            Ok(())
        });
        methods.add_method_mut("drop", |_, this, ()| {
            this.dropped = true;
            Ok(())
        });
        methods.add_method_mut("emit", |lua, this, args: Variadic<Value>| {
            let argv = emitted_argv(lua, args, "cmd:emit")?;
            let db = this.db;
            this.push_emitted(db, argv)
        });
        methods.add_method_mut(
            "emit_to",
            |lua, this, (db, args): (Value, Variadic<Value>)| {
                let db = db_arg(db, "cmd:emit_to")?;
                let argv = emitted_argv(lua, args, "cmd:emit_to")?;
                this.push_emitted(db, argv)
            },
        );
        methods.add_meta_method(MetaMethod::ToString, |_, this, ()| {
            Ok(format!("db{} {}", this.db, this.argv.quoted()))
        });
    }
}

fn emitted_argv(lua: &Lua, args: Variadic<Value>, what: &str) -> mlua::Result<Argv> {
    if args.is_empty() {
        return Err(mlua::Error::runtime(format!(
            "{what}: expected a command name and its arguments"
        )));
    }
    let mut argv = Argv::new();
    for v in args {
        argv.push(&arg_bytes(lua, v, what)?);
    }
    if argv.name().is_empty() {
        return Err(mlua::Error::runtime(format!("{what}: empty command name")));
    }
    argv.uppercase_name();
    Ok(argv)
}

/// What a phase hook may ask of the running migration; ferry's phase runner implements it.
pub trait PhaseContext {
    /// `ctx.log(…)`: writes a line to ferry's log.
    fn log(&mut self, msg: &str);
    /// `ctx.sleep(ms)`: waits. An `Err` (the migration failed meanwhile) ends the wait early
    /// and is raised in Lua, so a polling loop stops with the hook.
    fn sleep_ms(&mut self, ms: u64) -> Result<(), String>;
    /// `ctx.snapshot()`: waits until the snapshot is complete. It never starts one: the
    /// snapshot starts with the migration.
    fn snapshot(&mut self) -> Result<(), String>;
    /// `ctx.wait_lag(ms)`: waits until replay trails the source by at most `ms`.
    fn wait_lag(&mut self, max_ms: u64) -> Result<(), String>;
    /// `ctx.verify()`: compares source and target; returns the number of differences.
    fn verify(&mut self) -> Result<u64, String>;
    /// `ctx.lag_ms()`: how far replay trails the source now (`u64::MAX` when it cannot be
    /// measured in time); `Err` when the migration has failed.
    fn lag_ms(&mut self) -> Result<u64, String>;
    /// `ctx.call(server, command, args…)`: one command on `"source"` or `"target"`.
    fn call(&mut self, server: &str, args: Vec<Vec<u8>>) -> Result<Reply, String> {
        let _ = (server, args);
        Err("not available in this phase".into())
    }
    /// `ctx.run(name)`: runs the operator command `name` from the cutover's `commands`;
    /// returns its exit code.
    fn run(&mut self, name: &str) -> Result<i64, String> {
        let _ = name;
        Err("not available in this phase".into())
    }
}

/// A server's reply to `ctx.call`, as Lua receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `nil`.
    Nil,
    /// An integer.
    Int(i64),
    /// A string (bulk or status).
    Bytes(Vec<u8>),
    /// A list.
    Array(Vec<Reply>),
}

fn reply_to_lua(lua: &Lua, r: Reply) -> mlua::Result<Value> {
    Ok(match r {
        Reply::Nil => Value::Nil,
        Reply::Int(i) => Value::Integer(i),
        Reply::Bytes(b) => Value::String(lua.create_string(&b)?),
        Reply::Array(items) => {
            let t = lua.create_table()?;
            for (i, item) in items.into_iter().enumerate() {
                t.raw_set(i + 1, reply_to_lua(lua, item)?)?;
            }
            Value::Table(t)
        }
    })
}

/// A phase hook: `before`/`after` of any phase, a cutover's `switch`, a custom phase's `run`.
#[derive(Clone)]
pub struct PhaseHook {
    inner: Arc<Inner>,
    phase: String,
    plan: String,
}

impl fmt::Debug for PhaseHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt("PhaseHook", f)
    }
}

impl PhaseHook {
    pub(crate) fn new(
        rt: SharedRuntime,
        func: Function,
        name: String,
        phase: String,
        plan: String,
        instructions: u64,
    ) -> PhaseHook {
        PhaseHook {
            inner: Inner::new(rt, func, name, instructions),
            phase,
            plan,
        }
    }

    /// Runs the hook with `ctx` as its argument.
    ///
    /// ## Behavior
    /// `ctx.log`, `ctx.sleep`, `ctx.snapshot`, `ctx.wait_lag`, `ctx.verify`, `ctx.lag_ms` call
    /// into `ctx`; a primitive's `Err` is raised in Lua (`ctx.wait_lag: …`), where the hook may
    /// `pcall` it. `ctx.phase` and `ctx.plan` are the phase's and the plan's names.
    pub fn call(&self, ctx: &mut dyn PhaseContext) -> Result<(), HookError> {
        let started = Instant::now();
        let cell = RefCell::new(ctx);
        let result = {
            let rt = lock(&self.inner.rt);
            rt.call(self.inner.instructions, |lua| {
                lua.scope(|scope| {
                    let t = lua.create_table()?;
                    t.raw_set("phase", self.phase.as_str())?;
                    t.raw_set("plan", self.plan.as_str())?;
                    t.raw_set(
                        "log",
                        scope.create_function(|_, args: Variadic<Value>| {
                            let parts = args
                                .iter()
                                .map(Value::to_string)
                                .collect::<mlua::Result<Vec<_>>>()?;
                            cell.borrow_mut().log(&parts.join("\t"));
                            Ok(())
                        })?,
                    )?;
                    t.raw_set(
                        "sleep",
                        scope.create_function(|_, ms: Value| {
                            let ms = ms_arg(ms, "ctx.sleep")?;
                            cell.borrow_mut()
                                .sleep_ms(ms)
                                .map_err(|e| primitive("ctx.sleep", e))
                        })?,
                    )?;
                    t.raw_set(
                        "snapshot",
                        scope.create_function(|_, ()| {
                            cell.borrow_mut()
                                .snapshot()
                                .map_err(|e| primitive("ctx.snapshot", e))
                        })?,
                    )?;
                    t.raw_set(
                        "wait_lag",
                        scope.create_function(|_, ms: Value| {
                            let ms = ms_arg(ms, "ctx.wait_lag")?;
                            cell.borrow_mut()
                                .wait_lag(ms)
                                .map_err(|e| primitive("ctx.wait_lag", e))
                        })?,
                    )?;
                    t.raw_set(
                        "verify",
                        scope.create_function(|_, ()| {
                            cell.borrow_mut()
                                .verify()
                                .map_err(|e| primitive("ctx.verify", e))
                        })?,
                    )?;
                    t.raw_set(
                        "lag_ms",
                        scope.create_function(|_, ()| {
                            cell.borrow_mut()
                                .lag_ms()
                                .map_err(|e| primitive("ctx.lag_ms", e))
                        })?,
                    )?;
                    t.raw_set(
                        "call",
                        scope.create_function(|lua, args: Variadic<Value>| {
                            let mut it = args.into_iter();
                            let server = match it.next() {
                                Some(Value::String(s)) => s.to_string_lossy(),
                                _ => {
                                    return Err(primitive(
                                        "ctx.call",
                                        "the first argument is the server: \"source\" or \"target\"".into(),
                                    ));
                                }
                            };
                            let mut argv = Vec::new();
                            for v in it {
                                match v {
                                    Value::String(s) => argv.push(s.as_bytes().to_vec()),
                                    Value::Integer(i) => argv.push(i.to_string().into_bytes()),
                                    Value::Number(n) => argv.push(n.to_string().into_bytes()),
                                    other => {
                                        return Err(primitive(
                                            "ctx.call",
                                            format!("arguments must be strings or numbers, got {}", lua_type(&other)),
                                        ));
                                    }
                                }
                            }
                            if argv.is_empty() {
                                return Err(primitive("ctx.call", "no command given".into()));
                            }
                            let reply = cell
                                .borrow_mut()
                                .call(&server, argv)
                                .map_err(|e| primitive("ctx.call", e))?;
                            reply_to_lua(lua, reply)
                        })?,
                    )?;
                    t.raw_set(
                        "run",
                        scope.create_function(|_, name: Value| {
                            let Value::String(name) = name else {
                                return Err(primitive(
                                    "ctx.run",
                                    "expects the name of a command from the cutover's `commands`".into(),
                                ));
                            };
                            cell.borrow_mut()
                                .run(&name.to_string_lossy())
                                .map_err(|e| primitive("ctx.run", e))
                        })?,
                    )?;
                    self.inner.func.call::<()>(t)
                })
            })
        };
        self.inner.counters.record(started, result.is_ok());
        result.map_err(|f| hook_error(&self.inner.name, f))
    }

    /// The plan field this hook came from (`phases[4].switch`).
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Where the function was defined.
    pub fn defined_at(&self) -> Option<&Location> {
        self.inner.defined_at.as_ref()
    }
}

fn primitive(what: &str, e: String) -> mlua::Error {
    mlua::Error::runtime(format!("{what}: {e}"))
}

fn ms_arg(v: Value, what: &str) -> mlua::Result<u64> {
    let ty = lua_type(&v);
    match v {
        Value::Integer(i) => u64::try_from(i).ok(),
        Value::Number(f) if f.is_finite() && f >= 0.0 => Some(f as u64),
        _ => None,
    }
    .ok_or_else(|| {
        mlua::Error::runtime(format!(
            "{what}: expected milliseconds (a number ≥ 0), got {ty}"
        ))
    })
}

/// One side of a key under verification, for a `compare` function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompareValue {
    /// The key (on this side: the target's after renames).
    pub key: Vec<u8>,
    /// `TYPE` name (`string`, `hash`, …; `none` when missing).
    pub type_name: String,
    /// A canonical text form of the value (the verifier's choice, stable for equal values).
    pub value: String,
    /// `PTTL`: milliseconds left, `-1` without TTL, `-2` when missing.
    pub ttl_ms: i64,
}

/// A verification rule's `compare(a, b)` function.
#[derive(Clone)]
pub struct CompareHook {
    inner: Arc<Inner>,
}

impl fmt::Debug for CompareHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt("CompareHook", f)
    }
}

impl CompareHook {
    pub(crate) fn new(
        rt: SharedRuntime,
        func: Function,
        name: String,
        instructions: u64,
    ) -> CompareHook {
        CompareHook {
            inner: Inner::new(rt, func, name, instructions),
        }
    }

    /// Asks the plan whether source value `a` and target value `b` count as equal. Each is a
    /// table `{ key, type, value, ttl_ms }`; the function must return a boolean.
    pub fn call(&self, a: &CompareValue, b: &CompareValue) -> Result<bool, HookError> {
        let started = Instant::now();
        let result = {
            let rt = lock(&self.inner.rt);
            rt.call(self.inner.instructions, |lua| {
                let ta = compare_table(lua, a)?;
                let tb = compare_table(lua, b)?;
                self.inner.func.call::<Value>((ta, tb))
            })
        };
        let outcome = match result {
            Ok(Value::Boolean(b)) => Ok(b),
            Ok(other) => Err(HookError {
                hook: self.inner.name.clone(),
                kind: HookErrorKind::BadReturn,
                message: format!("must return a boolean, returned {}", lua_type(&other)),
                location: self.inner.defined_at.clone(),
                frame: None,
            }),
            Err(f) => Err(hook_error(&self.inner.name, f)),
        };
        self.inner.counters.record(started, outcome.is_ok());
        outcome
    }

    /// The plan field this hook came from (`verify.rules[2].compare`).
    pub fn name(&self) -> &str {
        &self.inner.name
    }
}

fn compare_table(lua: &Lua, v: &CompareValue) -> mlua::Result<mlua::Table> {
    let t = lua.create_table()?;
    t.raw_set("key", lua.create_string(&v.key)?)?;
    t.raw_set("type", v.type_name.as_str())?;
    t.raw_set("value", lua.create_string(&v.value)?)?;
    t.raw_set("ttl_ms", v.ttl_ms)?;
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(args: &[&str]) -> (Argv, CmdState) {
        let argv = Argv::from_args(args);
        let state = CmdState::new(0, &argv, &[1]);
        (argv, state)
    }

    #[test]
    fn outcome_follows_what_the_hook_did() {
        let (argv, s) = state(&["SET", "k", "v"]);
        assert_eq!(s.outcome(0, &argv), HookOutcome::Keep);

        let (argv, mut s) = state(&["SET", "k", "v"]);
        s.dropped = true;
        assert_eq!(s.outcome(0, &argv), HookOutcome::Drop);

        let (argv, mut s) = state(&["SET", "k", "v"]);
        s.db = 2;
        assert_eq!(
            s.outcome(0, &argv),
            HookOutcome::Replace(vec![(2, argv.clone())])
        );

        let (argv, mut s) = state(&["SET", "k", "v"]);
        s.dropped = true;
        s.push_emitted(1, Argv::from_args(["DEL", "x"])).unwrap();
        assert_eq!(
            s.outcome(0, &argv),
            HookOutcome::Replace(vec![(1, Argv::from_args(["DEL", "x"]))])
        );
    }

    #[test]
    fn indices_are_checked() {
        let (_, s) = state(&["SET", "k", "v"]);
        assert_eq!(s.arg_index(2, "t").unwrap(), 2);
        assert!(s.arg_index(0, "t").is_err());
        assert!(s.arg_index(3, "t").is_err());
        assert_eq!(s.key_index(1, "t").unwrap(), 1);
        assert!(s.key_index(2, "t").is_err());
        assert!(s.key_index(-1, "t").is_err());
        // Positions outside argv (a stale key list) are ignored rather than trusted.
        let s = CmdState::new(0, &Argv::from_args(["GET", "k"]), &[0, 1, 7]);
        assert_eq!(s.keys, [1]);
    }
}
