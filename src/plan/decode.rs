//! Reads the table a plan returns into a [`Plan`], field by field, with errors that name the
//! field path (`keys.include[2]`), the expected and found types, and "did you mean".
//!
//! ## Behavior
//! Tables are read raw (metatables are not consulted, so no plan code runs here); lists must be
//! sequences `1..n`; numbers must be integers where counts are meant. Unknown fields are errors,
//! reported in sorted order so the same plan always gives the same message.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use mlua::{Function, Table, Value};

use super::error::{Location, PlanError, suggest};
use super::filter::KEY_TYPES;
use super::hooks::{PhaseHook, SharedRuntime};
use super::runtime::{Limits, lua_type};
use super::{
    API_VERSION, CaptureChoice, DEFAULT_JOURNAL_DIR, DEFAULT_MAX_LAG_MS, DEFAULT_MAX_PAUSE_MS,
    DEFAULT_MAX_TRAILING_MS, DEFAULT_QUIET_MS, DEFAULT_TTL_TOLERANCE_MS, FieldTtlPolicy,
    FinalFenceSpec, Glob, HookErrorPolicy, JournalSpec, KeyFilter, OnConflict, Phase, PhaseKind,
    Plan, ReplaySpec, Rule, SUPPORTED_API_VERSIONS, Server, SnapshotSpec, VerifyRule, VerifySpec,
};
use crate::command::Argv;

const TOP_FIELDS: &[&str] = &[
    "api_version",
    "name",
    "source",
    "target",
    "journal",
    "snapshot",
    "replay",
    "keys",
    "rewrite",
    "on_command",
    "on_hook_error",
    "verify",
    "phases",
    "check",
    "final_fence",
    "on_field_ttls",
    "metrics_addr",
];

const BUILTIN_PHASES: &[&str] = &["snapshot", "catch_up", "verify", "cutover"];

/// The plan without the hooks that live in other Lua states, and where those hooks are.
pub(crate) struct Decoded {
    pub(crate) plan: Plan,
    pub(crate) has_on_command: bool,
    /// Indices into `verify.rules` of rules with a `compare` function.
    pub(crate) compare_rules: Vec<usize>,
}

pub(crate) struct Decoder {
    /// Field errors point here: the `ferry.plan { … }` call, or the plan file.
    at: Location,
    dir: PathBuf,
    main: SharedRuntime,
    limits: Limits,
}

type R<T> = Result<T, PlanError>;

fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}.{name}")
    }
}

fn index(parent: &str, i: usize) -> String {
    format!("{parent}[{i}]")
}

/// `5`, `"two"`, or the type name, for messages about a bad value.
fn render(v: &Value) -> String {
    match v {
        Value::Integer(i) => i.to_string(),
        Value::Number(f) => f.to_string(),
        Value::String(s) => format!("{:?}", s.to_string_lossy()),
        Value::Boolean(b) => b.to_string(),
        other => lua_type(other).to_string(),
    }
}

fn integer(v: &Value) -> Option<i64> {
    match *v {
        Value::Integer(i) => Some(i),
        Value::Number(f) if f.fract() == 0.0 && f >= i64::MIN as f64 && f <= i64::MAX as f64 => {
            Some(f as i64)
        }
        _ => None,
    }
}

/// Follows string keys (or 1-based indices written as numbers) down to a function.
pub(crate) fn dig_function(v: &Value, path: &[&str]) -> Option<Function> {
    let mut cur = v.clone();
    for key in path {
        let Value::Table(t) = cur else { return None };
        cur = match key.parse::<i64>() {
            Ok(i) => t.raw_get(i).ok()?,
            Err(_) => t.raw_get(*key).ok()?,
        };
    }
    match cur {
        Value::Function(f) => Some(f),
        _ => None,
    }
}

pub(crate) fn nondeterministic(file: &str, field: &str) -> PlanError {
    PlanError::Invalid {
        location: Location::file(file),
        field: field.to_string(),
        message: "is a function on the first evaluation of the plan but not on the next; a plan \
                  must build the same table every time it is evaluated"
            .into(),
    }
}

/// `dir/rel` without `.` components (`./ferry-state` reads better as `ferry-state`).
fn under(dir: &Path, rel: &Path) -> PathBuf {
    dir.join(rel)
        .components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect()
}

/// `"100ms"`, `"2s"`, `"1m"`, `"always"` or a number of ms.
fn parse_duration_ms(s: &str) -> Option<u64> {
    let s = s.trim();
    if s == "always" {
        return Some(0);
    }
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let n: u64 = s[..digits].parse().ok()?;
    let unit = match s[digits..].trim() {
        "ms" | "" => 1,
        "s" => 1000,
        "m" => 60_000,
        _ => return None,
    };
    n.checked_mul(unit)
}

impl Decoder {
    pub(crate) fn new(at: Location, dir: &Path, main: SharedRuntime, limits: Limits) -> Decoder {
        Decoder {
            at,
            dir: dir.to_path_buf(),
            main,
            limits,
        }
    }

    // ---- errors -------------------------------------------------------------------------

    fn wrong(&self, field: &str, expected: &str, found: &Value) -> PlanError {
        PlanError::WrongType {
            location: self.at.clone(),
            field: field.to_string(),
            expected: expected.to_string(),
            found: lua_type(found).to_string(),
        }
    }

    fn invalid(&self, field: &str, message: impl Into<String>) -> PlanError {
        PlanError::Invalid {
            location: self.at.clone(),
            field: field.to_string(),
            message: message.into(),
        }
    }

    fn lua(&self, field: &str, e: mlua::Error) -> PlanError {
        self.invalid(field, format!("cannot be read: {e}"))
    }

    // ---- shapes -------------------------------------------------------------------------

    fn get(&self, t: &Table, parent: &str, name: &str) -> R<Value> {
        t.raw_get(name)
            .map_err(|e| self.lua(&join(parent, name), e))
    }

    /// Fails on the first (sorted) key of `t` that is not in `known`.
    fn check_keys(&self, t: &Table, field: &str, known: &[&str]) -> R<()> {
        let mut unknown: Vec<String> = Vec::new();
        let mut items = Vec::new();
        for pair in t.pairs::<Value, Value>() {
            let (k, _) = pair.map_err(|e| self.lua(field, e))?;
            match &k {
                Value::String(s) => {
                    let name = s.to_string_lossy();
                    if !known.contains(&name.as_str()) {
                        unknown.push(name);
                    }
                }
                Value::Integer(i) => items.push(*i),
                other => unknown.push(render(other)),
            }
        }
        unknown.sort();
        if let Some(name) = unknown.first() {
            return Err(PlanError::UnknownField {
                location: self.at.clone(),
                field: join(field, name),
                suggestion: suggest(name, known.iter().copied()).map(|s| join(field, s)),
            });
        }
        items.sort();
        if let Some(i) = items.first() {
            let what = if field.is_empty() { "the plan" } else { field };
            return Err(self.invalid(
                &format!("{}[{i}]", if field.is_empty() { "" } else { field }),
                format!(
                    "unexpected list item; {what} takes named fields ({})",
                    known.join(", ")
                ),
            ));
        }
        Ok(())
    }

    /// A record (table with named fields), or `None` for nil.
    fn record(&self, v: &Value, field: &str, known: &[&str]) -> R<Option<Table>> {
        match v {
            Value::Nil => Ok(None),
            Value::Table(t) => {
                self.check_keys(t, field, known)?;
                Ok(Some(t.clone()))
            }
            other => Err(self.wrong(field, "a table", other)),
        }
    }

    /// A list (sequence `1..n`), or `None` for nil.
    fn list(&self, v: &Value, field: &str, expected: &str) -> R<Option<Vec<Value>>> {
        let t = match v {
            Value::Nil => return Ok(None),
            Value::Table(t) => t,
            other => return Err(self.wrong(field, expected, other)),
        };
        let n = t.raw_len();
        for pair in t.pairs::<Value, Value>() {
            let (k, _) = pair.map_err(|e| self.lua(field, e))?;
            let in_range = matches!(k, Value::Integer(i) if i >= 1 && (i as usize) <= n);
            if !in_range {
                return Err(PlanError::WrongType {
                    location: self.at.clone(),
                    field: field.to_string(),
                    expected: expected.to_string(),
                    found: format!("a table with key {}", render(&k)),
                });
            }
        }
        (1..=n)
            .map(|i| {
                t.raw_get::<Value>(i)
                    .map_err(|e| self.lua(&index(field, i), e))
            })
            .collect::<R<Vec<_>>>()
            .map(Some)
    }

    fn string(&self, v: &Value, field: &str) -> R<Option<String>> {
        match v {
            Value::Nil => Ok(None),
            Value::String(s) => s
                .to_str()
                .map(|s| Some(s.to_string()))
                .map_err(|_| self.invalid(field, "is not valid UTF-8 text")),
            other => Err(self.wrong(field, "a string", other)),
        }
    }

    fn bytes(&self, v: &Value, field: &str) -> R<Option<Vec<u8>>> {
        match v {
            Value::Nil => Ok(None),
            Value::String(s) => Ok(Some(s.as_bytes().to_vec())),
            other => Err(self.wrong(field, "a string", other)),
        }
    }

    fn int(&self, v: &Value, field: &str, min: i64, max: i64) -> R<Option<i64>> {
        if v.is_nil() {
            return Ok(None);
        }
        let Some(i) = integer(v) else {
            return Err(self.wrong(field, "an integer", v));
        };
        if i < min || i > max {
            return Err(self.invalid(field, format!("must be between {min} and {max}, got {i}")));
        }
        Ok(Some(i))
    }

    fn uint(&self, v: &Value, field: &str, min: u64, max: u64) -> R<Option<u64>> {
        let max_i = i64::try_from(max).unwrap_or(i64::MAX);
        let min_i = i64::try_from(min).unwrap_or(i64::MAX);
        Ok(self.int(v, field, min_i, max_i)?.map(|i| i as u64))
    }

    fn db(&self, v: &Value, field: &str) -> R<Option<u32>> {
        Ok(self
            .int(v, field, 0, i64::from(i32::MAX))?
            .map(|i| i as u32))
    }

    fn boolean(&self, v: &Value, field: &str) -> R<Option<bool>> {
        match v {
            Value::Nil => Ok(None),
            Value::Boolean(b) => Ok(Some(*b)),
            other => Err(self.wrong(field, "a boolean", other)),
        }
    }

    fn function(&self, v: &Value, field: &str) -> R<Option<Function>> {
        match v {
            Value::Nil => Ok(None),
            Value::Function(f) => Ok(Some(f.clone())),
            other => Err(self.wrong(field, "a function", other)),
        }
    }

    /// One of `options`, with "did you mean" for near misses.
    fn choice(&self, v: &Value, field: &str, options: &[&'static str]) -> R<Option<&'static str>> {
        let Some(s) = self.string(v, field)? else {
            return Ok(None);
        };
        if let Some(o) = options.iter().find(|o| **o == s) {
            return Ok(Some(o));
        }
        let hint = suggest(&s, options.iter().copied())
            .map(|o| format!(" (did you mean `{o}`?)"))
            .unwrap_or_default();
        Err(self.invalid(
            field,
            format!(
                "unknown value {s:?}{hint}; expected one of {}",
                options.join(", ")
            ),
        ))
    }

    fn required<T>(&self, v: Option<T>, field: &str) -> R<T> {
        v.ok_or_else(|| self.invalid(field, "is required"))
    }

    // ---- the plan -----------------------------------------------------------------------

    pub(crate) fn decode(&self, value: &Value, path: &Path, default_name: String) -> R<Decoded> {
        let file = Location::file(self.at.file.clone());
        let t = match value {
            Value::Table(t) => t,
            other => {
                return Err(PlanError::NotAPlan {
                    location: file,
                    found: lua_type(other).to_string(),
                });
            }
        };
        self.api_version(t)?;
        self.check_keys(t, "", TOP_FIELDS)?;

        let name = match self.string(&self.get(t, "", "name")?, "name")? {
            Some(n) if n.trim().is_empty() => return Err(self.invalid("name", "is empty")),
            Some(n) => n,
            None => default_name,
        };
        let source = self.server(&self.get(t, "", "source")?, "source")?;
        let target = self.server(&self.get(t, "", "target")?, "target")?;
        let journal = self.journal(&self.get(t, "", "journal")?)?;
        let snapshot = self.snapshot(&self.get(t, "", "snapshot")?)?;
        let replay = self.replay(&self.get(t, "", "replay")?)?;
        let keys = self.keys(&self.get(t, "", "keys")?)?;
        let rewrite = self.rewrite(&self.get(t, "", "rewrite")?)?;
        let has_on_command = self
            .function(&self.get(t, "", "on_command")?, "on_command")?
            .is_some();
        let on_hook_error = match self.choice(
            &self.get(t, "", "on_hook_error")?,
            "on_hook_error",
            &["fail", "skip"],
        )? {
            Some("skip") => HookErrorPolicy::Skip,
            _ => HookErrorPolicy::Fail,
        };
        let (verify, compare_rules) = self.verify(&self.get(t, "", "verify")?)?;
        let phases = self.phases(&self.get(t, "", "phases")?, &name)?;
        let check_samples = self.check(&self.get(t, "", "check")?)?;
        let final_fence = self.final_fence(&self.get(t, "", "final_fence")?)?;
        let on_field_ttls = match self.choice(
            &self.get(t, "", "on_field_ttls")?,
            "on_field_ttls",
            &["refuse", "drop_field_ttls"],
        )? {
            Some("drop_field_ttls") => FieldTtlPolicy::DropFieldTtls,
            _ => FieldTtlPolicy::Refuse,
        };
        let metrics_addr = match self.string(&self.get(t, "", "metrics_addr")?, "metrics_addr")? {
            Some(a) if a.is_empty() => None,
            Some(a) => match a.parse::<std::net::SocketAddr>() {
                Ok(addr) => Some(addr),
                Err(_) => {
                    return Err(self.invalid(
                        "metrics_addr",
                        format!("must be HOST:PORT with an IP address, got {a:?}"),
                    ));
                }
            },
            None => None,
        };

        Ok(Decoded {
            plan: Plan {
                name,
                path: path.to_path_buf(),
                api_version: API_VERSION,
                source,
                target,
                journal,
                snapshot,
                replay,
                keys,
                rewrite,
                on_command: None,
                on_hook_error,
                verify,
                phases,
                check_samples,
                final_fence,
                on_field_ttls,
                metrics_addr,
            },
            has_on_command,
            compare_rules,
        })
    }

    fn api_version(&self, t: &Table) -> R<()> {
        let v = self.get(t, "", "api_version")?;
        let location = self.at.clone();
        match integer(&v) {
            Some(n) if SUPPORTED_API_VERSIONS.iter().any(|s| i64::from(*s) == n) => Ok(()),
            _ if v.is_nil() => Err(PlanError::ApiVersion {
                location,
                found: None,
            }),
            _ => Err(PlanError::ApiVersion {
                location,
                found: Some(render(&v)),
            }),
        }
    }

    fn server(&self, v: &Value, field: &str) -> R<Server> {
        // One shape for both sides (so one helper can build either); capture settings mean
        // something on the source only.
        let fields: &[&str] = &["url", "capture", "max_monitor_buffer", "tls"];
        let (url, capture, max_monitor_buffer, tls) = match v {
            Value::String(_) => (self.string(v, field)?, None, None, Default::default()),
            Value::Table(_) => {
                let t = self.record(v, field, fields)?;
                let t = self.required(t, field)?;
                let url = self.string(&self.get(&t, field, "url")?, &join(field, "url"))?;
                let capture = self.choice(
                    &self.get(&t, field, "capture")?,
                    &join(field, "capture"),
                    &["auto", "primary", "replica"],
                )?;
                let max_monitor_buffer = self.uint(
                    &self.get(&t, field, "max_monitor_buffer")?,
                    &join(field, "max_monitor_buffer"),
                    1,
                    u64::MAX,
                )?;
                let tls = self.tls(&self.get(&t, field, "tls")?, &join(field, "tls"))?;
                (url, capture, max_monitor_buffer, tls)
            }
            Value::Nil => return Err(self.invalid(field, "is required")),
            other => return Err(self.wrong(field, "a table { url = … } or a URL", other)),
        };
        let url_field = join(field, "url");
        let url = self.required(url, &url_field)?;
        crate::net::Endpoint::parse(&url).map_err(|e| self.invalid(&url_field, e.to_string()))?;
        if !tls.is_empty() && !url.to_ascii_lowercase().starts_with("rediss:") {
            return Err(self.invalid(
                &join(field, "tls"),
                "is set for a URL without TLS; use rediss://",
            ));
        }
        let capture = match capture {
            Some("primary") => CaptureChoice::Primary,
            Some("replica") => CaptureChoice::Replica,
            _ => CaptureChoice::Auto,
        };
        Ok(Server {
            url,
            capture,
            max_monitor_buffer,
            tls,
        })
    }

    /// `source.tls` / `target.tls`: file paths (relative to the plan's folder) and a name. The
    /// files are read when the run connects, so `ferry check` works without them.
    fn tls(&self, v: &Value, field: &str) -> R<crate::net::TlsOptions> {
        let Some(t) = self.record(v, field, &["ca", "cert", "key", "server_name"])? else {
            return Ok(Default::default());
        };
        let path = |name: &str| -> R<Option<PathBuf>> {
            let sub = join(field, name);
            Ok(self
                .string(&self.get(&t, field, name)?, &sub)?
                .filter(|s| !s.is_empty())
                .map(|s| under(&self.dir, Path::new(&s))))
        };
        let (ca, cert, key) = (path("ca")?, path("cert")?, path("key")?);
        match (&cert, &key) {
            (Some(_), None) => {
                return Err(self.invalid(&join(field, "key"), "is required with tls.cert"));
            }
            (None, Some(_)) => {
                return Err(self.invalid(&join(field, "cert"), "is required with tls.key"));
            }
            _ => {}
        }
        let name_field = join(field, "server_name");
        let server_name = self
            .string(&self.get(&t, field, "server_name")?, &name_field)?
            .filter(|s| !s.is_empty());
        Ok(crate::net::TlsOptions::new(ca, cert, key, server_name))
    }

    fn final_fence(&self, v: &Value) -> R<FinalFenceSpec> {
        let Some(t) = self.record(v, "final_fence", &["max_pause_ms"])? else {
            return Ok(FinalFenceSpec::default());
        };
        Ok(FinalFenceSpec {
            max_pause_ms: self.uint(
                &self.get(&t, "final_fence", "max_pause_ms")?,
                "final_fence.max_pause_ms",
                1,
                3_600_000,
            )?,
        })
    }

    fn journal(&self, v: &Value) -> R<JournalSpec> {
        let field = "journal";
        let t = match v {
            Value::Nil => {
                return Ok(JournalSpec::Embedded {
                    dir: under(&self.dir, Path::new(DEFAULT_JOURNAL_DIR)),
                    fsync_ms: None,
                });
            }
            Value::Table(t) => t,
            other => {
                return Err(self.wrong(field, "a journal (ferry.embedded or ferry.sqs)", other));
            }
        };
        let kind = self
            .choice(
                &self.get(t, field, "kind")?,
                "journal.kind",
                &["embedded", "sqs"],
            )?
            .unwrap_or("embedded");
        if kind == "sqs" {
            self.check_keys(
                t,
                field,
                &["kind", "queue_url", "fifo", "shards", "create_queue", "dir"],
            )?;
            let queue_url = self.string(&self.get(t, field, "queue_url")?, "journal.queue_url")?;
            let queue_url = self.required(queue_url, "journal.queue_url")?;
            if !(queue_url.starts_with("https://") || queue_url.starts_with("http://")) {
                return Err(self.invalid(
                    "journal.queue_url",
                    format!("{queue_url:?} is not a queue URL (https://sqs.<region>.amazonaws.com/<account>/<name>)"),
                ));
            }
            let fifo = self
                .boolean(&self.get(t, field, "fifo")?, "journal.fifo")?
                .unwrap_or_else(|| queue_url.ends_with(".fifo"));
            if fifo && !queue_url.ends_with(".fifo") {
                return Err(self.invalid(
                    "journal.fifo",
                    "is true but the queue URL does not end in .fifo (FIFO queue names do)",
                ));
            }
            let shards = self
                .uint(&self.get(t, field, "shards")?, "journal.shards", 1, 1 << 16)?
                .map(|n| n as usize);
            let create_queue = self
                .boolean(&self.get(t, field, "create_queue")?, "journal.create_queue")?
                .unwrap_or(false);
            let dir = self.journal_dir(t)?;
            return Ok(JournalSpec::Sqs {
                queue_url,
                fifo,
                shards,
                create_queue,
                dir,
            });
        }
        self.check_keys(t, field, &["kind", "dir", "fsync"])?;
        let dir = self.journal_dir(t)?;
        let fsync = self.get(t, field, "fsync")?;
        let fsync_ms = match &fsync {
            Value::Nil => None,
            Value::String(s) => Some(parse_duration_ms(&s.to_string_lossy()).ok_or_else(|| {
                self.invalid(
                    "journal.fsync",
                    format!(
                        "{} is not a duration; write \"100ms\", \"1s\", a number of ms, or \"always\"",
                        render(&fsync)
                    ),
                )
            })?),
            _ => self.uint(&fsync, "journal.fsync", 0, u64::MAX)?,
        };
        Ok(JournalSpec::Embedded { dir, fsync_ms })
    }

    /// `journal.dir`: the local journal and state folder, relative to the plan's folder.
    fn journal_dir(&self, t: &Table) -> R<PathBuf> {
        let dir = self
            .string(&self.get(t, "journal", "dir")?, "journal.dir")?
            .unwrap_or_else(|| DEFAULT_JOURNAL_DIR.to_string());
        if dir.is_empty() {
            return Err(self.invalid("journal.dir", "is empty"));
        }
        Ok(under(&self.dir, Path::new(&dir)))
    }

    fn replay(&self, v: &Value) -> R<ReplaySpec> {
        let Some(t) = self.record(v, "replay", &["shards"])? else {
            return Ok(ReplaySpec::default());
        };
        Ok(ReplaySpec {
            shards: self
                .uint(&self.get(&t, "replay", "shards")?, "replay.shards", 1, 64)?
                .map(|n| n as usize),
        })
    }

    fn snapshot(&self, v: &Value) -> R<SnapshotSpec> {
        let Some(t) = self.record(v, "snapshot", &["workers", "max_source_ops"])? else {
            return Ok(SnapshotSpec::default());
        };
        Ok(SnapshotSpec {
            workers: self
                .uint(
                    &self.get(&t, "snapshot", "workers")?,
                    "snapshot.workers",
                    1,
                    1024,
                )?
                .map(|n| n as usize),
            max_source_ops: self.uint(
                &self.get(&t, "snapshot", "max_source_ops")?,
                "snapshot.max_source_ops",
                1,
                u64::MAX,
            )?,
        })
    }

    fn globs(&self, v: &Value, field: &str) -> R<Vec<Glob>> {
        let Some(items) = self.list(v, field, "a list of key patterns")? else {
            return Ok(Vec::new());
        };
        items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let f = index(field, i + 1);
                Ok(Glob::new(&self.required(self.bytes(item, &f)?, &f)?))
            })
            .collect()
    }

    fn keys(&self, v: &Value) -> R<KeyFilter> {
        let field = "keys";
        let Some(t) = self.record(v, field, &["include", "exclude", "dbs", "types"])? else {
            return Ok(KeyFilter::everything());
        };
        let include = self.globs(&self.get(&t, field, "include")?, "keys.include")?;
        let exclude = self.globs(&self.get(&t, field, "exclude")?, "keys.exclude")?;
        let dbs = match self.list(
            &self.get(&t, field, "dbs")?,
            "keys.dbs",
            "a list of db numbers",
        )? {
            None => None,
            Some(items) if items.is_empty() => {
                return Err(self.invalid("keys.dbs", "is empty; leave it out to migrate every db"));
            }
            Some(items) => Some(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| {
                        let f = index("keys.dbs", i + 1);
                        self.required(self.db(item, &f)?, &f)
                    })
                    .collect::<R<Vec<u32>>>()?,
            ),
        };
        let types = match self.list(
            &self.get(&t, field, "types")?,
            "keys.types",
            "a list of type names",
        )? {
            None => None,
            Some(items) if items.is_empty() => {
                return Err(
                    self.invalid("keys.types", "is empty; leave it out to migrate every type")
                );
            }
            Some(items) => Some(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| {
                        let f = index("keys.types", i + 1);
                        Ok(self
                            .required(self.choice(item, &f, KEY_TYPES)?, &f)?
                            .to_string())
                    })
                    .collect::<R<Vec<String>>>()?,
            ),
        };
        Ok(KeyFilter::new(include, exclude, dbs, types))
    }

    fn rewrite(&self, v: &Value) -> R<Vec<Rule>> {
        let expected = "a list of rules (ferry.rename_prefix, ferry.move_db, ferry.drop_commands)";
        let Some(items) = self.list(v, "rewrite", expected)? else {
            return Ok(Vec::new());
        };
        items
            .iter()
            .enumerate()
            .map(|(i, item)| self.rule(item, &index("rewrite", i + 1)))
            .collect()
    }

    fn rule(&self, v: &Value, field: &str) -> R<Rule> {
        let Value::Table(t) = v else {
            return Err(self.wrong(
                field,
                "a rule (ferry.rename_prefix, ferry.move_db or ferry.drop_commands)",
                v,
            ));
        };
        let kind = self.choice(
            &self.get(t, field, "kind")?,
            &join(field, "kind"),
            &["rename_prefix", "move_db", "drop_commands"],
        )?;
        match self.required(kind, &join(field, "kind"))? {
            "rename_prefix" => {
                self.check_keys(t, field, &["kind", "from", "to"])?;
                let from = self.bytes(&self.get(t, field, "from")?, &join(field, "from"))?;
                let to = self.bytes(&self.get(t, field, "to")?, &join(field, "to"))?;
                Ok(Rule::RenamePrefix {
                    from: self.required(from, &join(field, "from"))?,
                    to: self.required(to, &join(field, "to"))?,
                })
            }
            "move_db" => {
                self.check_keys(t, field, &["kind", "from", "to"])?;
                let from = self.db(&self.get(t, field, "from")?, &join(field, "from"))?;
                let to = self.db(&self.get(t, field, "to")?, &join(field, "to"))?;
                Ok(Rule::MoveDb {
                    from: self.required(from, &join(field, "from"))?,
                    to: self.required(to, &join(field, "to"))?,
                })
            }
            _ => {
                self.check_keys(t, field, &["kind", "commands"])?;
                let f = join(field, "commands");
                let items = self.list(
                    &self.get(t, field, "commands")?,
                    &f,
                    "a list of command names",
                )?;
                let items = self.required(items, &f)?;
                if items.is_empty() {
                    return Err(self.invalid(&f, "is empty"));
                }
                let names = items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| {
                        let fi = index(&f, i + 1);
                        let name = self.required(self.string(item, &fi)?, &fi)?;
                        let parts: Vec<&str> = name
                            .split(|c: char| c == '|' || c.is_whitespace())
                            .filter(|p| !p.is_empty())
                            .collect();
                        if parts.is_empty() || parts.len() > 2 {
                            return Err(self.invalid(
                                &fi,
                                format!("{name:?} is not a command name (NAME or \"NAME SUB\")"),
                            ));
                        }
                        Ok(parts.join("|").to_ascii_uppercase())
                    })
                    .collect::<R<Vec<String>>>()?;
                Ok(Rule::DropCommands(names))
            }
        }
    }

    fn verify(&self, v: &Value) -> R<(VerifySpec, Vec<usize>)> {
        let field = "verify";
        let Some(t) = self.record(v, field, &["sample", "full", "ttl_tolerance_ms", "rules"])?
        else {
            return Ok((VerifySpec::default(), Vec::new()));
        };
        let sample = self.uint(
            &self.get(&t, field, "sample")?,
            "verify.sample",
            1,
            u64::MAX,
        )?;
        let full = self
            .boolean(&self.get(&t, field, "full")?, "verify.full")?
            .unwrap_or(false);
        if full && sample.is_some() {
            return Err(self.invalid(
                "verify.full",
                "and verify.sample exclude each other: compare every key or a sample",
            ));
        }
        let ttl_tolerance_ms = self
            .int(
                &self.get(&t, field, "ttl_tolerance_ms")?,
                "verify.ttl_tolerance_ms",
                0,
                i64::MAX,
            )?
            .unwrap_or(DEFAULT_TTL_TOLERANCE_MS);
        let mut rules = Vec::new();
        let mut compare_rules = Vec::new();
        let items = self.list(
            &self.get(&t, field, "rules")?,
            "verify.rules",
            "a list of rules",
        )?;
        for (i, item) in items.unwrap_or_default().iter().enumerate() {
            let f = index("verify.rules", i + 1);
            let rt = self.record(
                item,
                &f,
                &["pattern", "ignore", "ttl_tolerance_ms", "compare"],
            )?;
            let rt = self.required(rt, &f)?;
            let pattern = self.bytes(&self.get(&rt, &f, "pattern")?, &join(&f, "pattern"))?;
            let pattern = self.required(pattern, &join(&f, "pattern"))?;
            let ignore = self
                .boolean(&self.get(&rt, &f, "ignore")?, &join(&f, "ignore"))?
                .unwrap_or(false);
            let ttl = self.int(
                &self.get(&rt, &f, "ttl_tolerance_ms")?,
                &join(&f, "ttl_tolerance_ms"),
                0,
                i64::MAX,
            )?;
            let compare = self.function(&self.get(&rt, &f, "compare")?, &join(&f, "compare"))?;
            if ignore && (compare.is_some() || ttl.is_some()) {
                return Err(self.invalid(
                    &join(&f, "ignore"),
                    "is true, so compare and ttl_tolerance_ms would never be used",
                ));
            }
            if compare.is_some() {
                compare_rules.push(i);
            }
            rules.push(VerifyRule {
                pattern: Glob::new(&pattern),
                ignore,
                ttl_tolerance_ms: ttl,
                compare: None,
            });
        }
        Ok((
            VerifySpec {
                sample,
                full,
                ttl_tolerance_ms,
                rules,
            },
            compare_rules,
        ))
    }

    /// `commands = { name = { "program", "arg", … } }`: the operator's allow-list.
    fn commands(
        &self,
        v: &Value,
        field: &str,
    ) -> R<std::collections::BTreeMap<String, Vec<String>>> {
        let mut out = std::collections::BTreeMap::new();
        let t = match v {
            Value::Nil => return Ok(out),
            Value::Table(t) => t,
            other => return Err(self.wrong(field, "a table of name = { program, args… }", other)),
        };
        for pair in t.pairs::<Value, Value>() {
            let (k, v) = pair.map_err(|e| self.lua(field, e))?;
            let Value::String(name) = &k else {
                return Err(self.wrong(field, "names (strings) as keys", &k));
            };
            let name = name.to_string_lossy();
            let f = join(field, &name);
            let items = self
                .list(&v, &f, "a list of strings: { program, args… }")?
                .unwrap_or_default();
            let argv = items
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    self.required(self.string(item, &index(&f, i + 1))?, &index(&f, i + 1))
                })
                .collect::<R<Vec<String>>>()?;
            if argv.is_empty() || argv[0].trim().is_empty() {
                return Err(self.invalid(&f, "needs at least the program"));
            }
            out.insert(name, argv);
        }
        Ok(out)
    }

    fn phase_hook(&self, v: &Value, field: &str, phase: &str, plan: &str) -> R<Option<PhaseHook>> {
        Ok(self.function(v, field)?.map(|f| {
            PhaseHook::new(
                Arc::clone(&self.main),
                f,
                field.to_string(),
                phase.to_string(),
                plan.to_string(),
                self.limits.phase_instructions,
            )
        }))
    }

    fn phases(&self, v: &Value, plan: &str) -> R<Vec<Phase>> {
        let expected = "a list of phases (\"snapshot\", ferry.catch_up { … }, …)";
        let Some(items) = self.list(v, "phases", expected)? else {
            return Ok(vec![
                Phase {
                    kind: PhaseKind::Snapshot,
                    before: None,
                    after: None,
                },
                Phase {
                    kind: PhaseKind::CatchUp {
                        max_lag_ms: DEFAULT_MAX_LAG_MS,
                    },
                    before: None,
                    after: None,
                },
            ]);
        };
        if items.is_empty() {
            return Err(self.invalid("phases", "is empty; leave it out for snapshot + catch_up"));
        }
        let mut seen: Vec<String> = Vec::new();
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let f = index("phases", i + 1);
            let phase = self.phase(item, &f, plan)?;
            if let PhaseKind::Custom { name, .. } = &phase.kind {
                if seen.contains(name) {
                    return Err(self.invalid(
                        &join(&f, "name"),
                        format!("phase {name:?} appears twice; custom phase names must be unique"),
                    ));
                }
                seen.push(name.clone());
            }
            out.push(phase);
        }
        Ok(out)
    }

    fn phase(&self, v: &Value, field: &str, plan: &str) -> R<Phase> {
        let plain = |kind| Phase {
            kind,
            before: None,
            after: None,
        };
        let t = match v {
            Value::String(s) => {
                let s = s.to_string_lossy();
                return match s.as_str() {
                    "snapshot" => Ok(plain(PhaseKind::Snapshot)),
                    "catch_up" => Ok(plain(PhaseKind::CatchUp {
                        max_lag_ms: DEFAULT_MAX_LAG_MS,
                    })),
                    "verify" => Ok(plain(PhaseKind::Verify)),
                    "cutover" => Ok(plain(PhaseKind::Cutover {
                        max_pause_ms: DEFAULT_MAX_PAUSE_MS,
                        max_lag_ms: DEFAULT_MAX_LAG_MS,
                        switch: None,
                        reverse_sync: false,
                        commands: Default::default(),
                        quiet_ms: DEFAULT_QUIET_MS,
                        max_trailing_ms: DEFAULT_MAX_TRAILING_MS,
                        on_conflict: OnConflict::Report,
                        hold_source: false,
                    })),
                    other => {
                        let hint = suggest(other, BUILTIN_PHASES.iter().copied())
                            .map(|o| format!(" (did you mean `{o}`?)"))
                            .unwrap_or_default();
                        Err(self.invalid(
                            field,
                            format!(
                                "unknown phase {other:?}{hint}; built-in phases are {}, custom ones are ferry.phase(name, function(ctx) … end)",
                                BUILTIN_PHASES.join(", ")
                            ),
                        ))
                    }
                };
            }
            Value::Table(t) => t,
            other => {
                return Err(self.wrong(field, "a phase (a name or a ferry.* phase table)", other));
            }
        };
        let kind_field = join(field, "kind");
        let kind = self.choice(
            &self.get(t, field, "kind")?,
            &kind_field,
            &["snapshot", "catch_up", "verify", "cutover", "custom"],
        )?;
        let kind = self.required(kind, &kind_field)?;
        let known: &[&str] = match kind {
            "catch_up" => &["kind", "max_lag_ms", "before", "after"],
            "cutover" => &[
                "kind",
                "max_pause_ms",
                "max_lag_ms",
                "switch",
                "reverse_sync",
                "commands",
                "quiet_ms",
                "max_trailing_ms",
                "on_conflict",
                "hold_source",
                "before",
                "after",
            ],
            "custom" => &["kind", "name", "run", "before", "after"],
            _ => &["kind", "before", "after"],
        };
        self.check_keys(t, field, known)?;
        let phase_name = match kind {
            "custom" => {
                let f = join(field, "name");
                let name = self.required(self.string(&self.get(t, field, "name")?, &f)?, &f)?;
                if name.trim().is_empty() {
                    return Err(self.invalid(&f, "is empty"));
                }
                if BUILTIN_PHASES.contains(&name.as_str()) {
                    return Err(self.invalid(
                        &f,
                        format!("{name:?} is a built-in phase; use \"{name}\" (or ferry.{name} {{ … }} for hooks)"),
                    ));
                }
                name
            }
            k => k.to_string(),
        };
        let hook = |name: &str| -> R<Option<PhaseHook>> {
            let f = join(field, name);
            self.phase_hook(&self.get(t, field, name)?, &f, &phase_name, plan)
        };
        let before = hook("before")?;
        let after = hook("after")?;
        let ms = |name: &str, min: u64, max: u64| -> R<Option<u64>> {
            self.uint(&self.get(t, field, name)?, &join(field, name), min, max)
        };
        let kind = match kind {
            "snapshot" => PhaseKind::Snapshot,
            "verify" => PhaseKind::Verify,
            "catch_up" => PhaseKind::CatchUp {
                max_lag_ms: ms("max_lag_ms", 0, u64::MAX)?.unwrap_or(DEFAULT_MAX_LAG_MS),
            },
            "cutover" => PhaseKind::Cutover {
                max_pause_ms: ms("max_pause_ms", 1, 3_600_000)?.unwrap_or(DEFAULT_MAX_PAUSE_MS),
                max_lag_ms: ms("max_lag_ms", 0, u64::MAX)?.unwrap_or(DEFAULT_MAX_LAG_MS),
                switch: hook("switch")?,
                reverse_sync: self
                    .boolean(
                        &self.get(t, field, "reverse_sync")?,
                        &join(field, "reverse_sync"),
                    )?
                    .unwrap_or(false),
                commands: self
                    .commands(&self.get(t, field, "commands")?, &join(field, "commands"))?,
                quiet_ms: ms("quiet_ms", 0, 86_400_000)?.unwrap_or(DEFAULT_QUIET_MS),
                max_trailing_ms: ms("max_trailing_ms", 0, 86_400_000 * 7)?
                    .unwrap_or(DEFAULT_MAX_TRAILING_MS),
                on_conflict: match self.choice(
                    &self.get(t, field, "on_conflict")?,
                    &join(field, "on_conflict"),
                    &["report", "target_wins", "fail"],
                )? {
                    Some("target_wins") => OnConflict::TargetWins,
                    Some("fail") => OnConflict::Fail,
                    _ => OnConflict::Report,
                },
                hold_source: self
                    .boolean(
                        &self.get(t, field, "hold_source")?,
                        &join(field, "hold_source"),
                    )?
                    .unwrap_or(false),
            },
            _ => {
                let run = self.required(hook("run")?, &join(field, "run"))?;
                PhaseKind::Custom {
                    name: phase_name.clone(),
                    run,
                }
            }
        };
        if let PhaseKind::Cutover {
            hold_source: true,
            reverse_sync: true,
            ..
        } = &kind
        {
            return Err(self.invalid(
                &join(field, "hold_source"),
                "cannot be combined with reverse_sync: the held pause would block the reverse sync's writes to the old source during the trailing window",
            ));
        }
        Ok(Phase {
            kind,
            before,
            after,
        })
    }

    fn check(&self, v: &Value) -> R<Vec<(u32, Argv)>> {
        let Some(t) = self.record(v, "check", &["samples"])? else {
            return Ok(Vec::new());
        };
        let items = self.list(
            &self.get(&t, "check", "samples")?,
            "check.samples",
            "a list of commands",
        )?;
        let mut out = Vec::new();
        for (i, item) in items.unwrap_or_default().iter().enumerate() {
            let f = index("check.samples", i + 1);
            let Value::Table(st) = item else {
                return Err(self.wrong(
                    &f,
                    "a command such as { db = 0, \"SET\", \"k\", \"v\" }",
                    item,
                ));
            };
            let mut db = 0;
            let n = st.raw_len();
            for pair in st.pairs::<Value, Value>() {
                let (k, _) = pair.map_err(|e| self.lua(&f, e))?;
                match &k {
                    Value::Integer(i) if *i >= 1 && (*i as usize) <= n => {}
                    Value::String(s) if s.as_bytes().as_ref() == b"db" => {}
                    other => {
                        let name = match other {
                            Value::String(s) => s.to_string_lossy(),
                            o => render(o),
                        };
                        return Err(PlanError::UnknownField {
                            location: self.at.clone(),
                            field: join(&f, &name),
                            suggestion: suggest(&name, ["db"]).map(|s| join(&f, s)),
                        });
                    }
                }
            }
            if let Some(d) = self.db(&self.get(st, &f, "db")?, &join(&f, "db"))? {
                db = d;
            }
            let mut argv = Argv::new();
            for j in 1..=n {
                let fj = index(&f, j);
                let arg: Value = st.raw_get(j).map_err(|e| self.lua(&fj, e))?;
                match &arg {
                    Value::String(s) => argv.push(&s.as_bytes()),
                    Value::Integer(_) | Value::Number(_) => {
                        let s = arg.to_string().map_err(|e| self.lua(&fj, e))?;
                        argv.push(s.as_bytes());
                    }
                    other => return Err(self.wrong(&fj, "a string or number", other)),
                }
            }
            if argv.is_empty() {
                return Err(self.invalid(&f, "has no command"));
            }
            argv.uppercase_name();
            out.push((db, argv));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("100ms"), Some(100));
        assert_eq!(parse_duration_ms("2s"), Some(2000));
        assert_eq!(parse_duration_ms("1m"), Some(60_000));
        assert_eq!(parse_duration_ms("250"), Some(250));
        assert_eq!(parse_duration_ms("always"), Some(0));
        assert_eq!(parse_duration_ms("fast"), None);
        assert_eq!(parse_duration_ms("10h"), None);
        assert_eq!(parse_duration_ms(""), None);
    }

    #[test]
    fn journal_paths() {
        assert_eq!(
            under(Path::new("examples"), Path::new("./ferry-state")),
            PathBuf::from("examples/ferry-state")
        );
        assert_eq!(
            under(Path::new(""), Path::new("./state")),
            PathBuf::from("state")
        );
        assert_eq!(
            under(Path::new("examples"), Path::new("/var/lib/ferry")),
            PathBuf::from("/var/lib/ferry")
        );
    }
}
