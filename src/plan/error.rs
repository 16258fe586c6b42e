//! Plan errors: what went wrong while loading a plan (`PlanError`) or running one of its hooks
//! (`HookError`), each with the file, line and plan field it concerns.
//!
//! ## Behavior
//! - Lua reports `file:line` for syntax and runtime errors; field errors found while reading the
//!   returned table carry the line of the `ferry.plan { … }` call and the field path
//!   (`keys.include[2]`, `phases[3].max_lag_ms`), since Lua keeps no lines for table fields.
//! - Unknown fields and unknown enum values get a "did you mean" from edit distance.

use std::fmt;
use std::path::PathBuf;

/// A place in a Lua file, as Lua names it (the chunk name without its `@`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The file, as given to [`load`](super::load) or as resolved by `require`.
    pub file: String,
    /// The line, when Lua knows it.
    pub line: Option<u32>,
}

impl Location {
    pub(crate) fn file(file: impl Into<String>) -> Location {
        Location {
            file: file.into(),
            line: None,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}", self.file),
            None => f.write_str(&self.file),
        }
    }
}

/// Which resource limit stopped Lua code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// The instruction budget of one evaluation or hook call.
    Instructions(u64),
    /// The memory limit of the Lua state, in bytes.
    Memory(usize),
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Limit::Instructions(n) => write!(f, "instruction budget of {n} exceeded"),
            Limit::Memory(n) => write!(f, "memory limit of {} MiB exceeded", n >> 20),
        }
    }
}

/// Why a plan could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    /// The plan file could not be read.
    #[error("cannot read plan {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Lua could not parse a file (the plan or a module it requires).
    #[error("{location}: syntax error: {message}")]
    Syntax { location: Location, message: String },
    /// Evaluating the plan raised an error.
    #[error("{}: {message}{}", at(location), hook_frame(location, frame))]
    Runtime {
        location: Option<Location>,
        message: String,
        /// The innermost Lua frame of the traceback, when the error came from Rust.
        frame: Option<String>,
    },
    /// Evaluating the plan ran out of instructions or memory.
    #[error("{}: {limit} while evaluating the plan", at(location))]
    Limit {
        location: Option<Location>,
        limit: Limit,
    },
    /// `ferry.env(NAME)` without a default, and `NAME` is neither set with `--set` nor in the
    /// environment.
    #[error(
        "{}: environment variable `{name}` is not set (set it, pass `--set {name}=…`, or give ferry.env a default)",
        at(location)
    )]
    MissingEnv {
        name: String,
        location: Option<Location>,
    },
    /// `api_version` missing or not one this ferry supports.
    #[error("{location}: {}; this ferry supports api_version = {}", found.as_ref().map_or_else(|| "api_version is missing".to_string(), |v| format!("api_version = {v} is not supported")), supported())]
    ApiVersion {
        location: Location,
        found: Option<String>,
    },
    /// The plan file did not return a table.
    #[error("{location}: a plan must return a table (`return ferry.plan {{ … }}`), got {found}")]
    NotAPlan { location: Location, found: String },
    /// A field the plan API does not have.
    #[error("{location}: {field}: unknown field{}", did_you_mean(suggestion))]
    UnknownField {
        location: Location,
        field: String,
        suggestion: Option<String>,
    },
    /// A field of the wrong Lua type.
    #[error("{location}: {field}: expected {expected}, found {found}")]
    WrongType {
        location: Location,
        field: String,
        expected: String,
        found: String,
    },
    /// A field with the right type but a value the plan API does not accept.
    #[error("{location}: {field}: {message}")]
    Invalid {
        location: Location,
        field: String,
        message: String,
    },
    /// The Lua state could not be set up (out of memory at start, for instance).
    #[error("cannot set up the Lua state for {file}: {message}")]
    Setup { file: String, message: String },
}

impl PlanError {
    /// The plan field this error is about, if it is about one.
    pub fn field(&self) -> Option<&str> {
        match self {
            PlanError::UnknownField { field, .. }
            | PlanError::WrongType { field, .. }
            | PlanError::Invalid { field, .. } => Some(field),
            _ => None,
        }
    }

    /// Where in which file, when known.
    pub fn location(&self) -> Option<&Location> {
        match self {
            PlanError::Syntax { location, .. }
            | PlanError::ApiVersion { location, .. }
            | PlanError::NotAPlan { location, .. }
            | PlanError::UnknownField { location, .. }
            | PlanError::WrongType { location, .. }
            | PlanError::Invalid { location, .. } => Some(location),
            PlanError::Runtime { location, .. }
            | PlanError::Limit { location, .. }
            | PlanError::MissingEnv { location, .. } => location.as_ref(),
            PlanError::Read { .. } | PlanError::Setup { .. } => None,
        }
    }
}

/// What kind of failure a hook had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HookErrorKind {
    /// A Lua error: `error(…)`, a type error, a failed `ctx` primitive, a bad argument to a
    /// `cmd` method.
    Runtime,
    /// The hook used up its instruction budget or the state's memory.
    Limit(Limit),
    /// The hook returned something its caller cannot use (a `compare` that returned no boolean).
    BadReturn,
}

/// A hook (`on_command`, a phase hook, a `compare`) failed at run time.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{hook} failed{}: {message}{}", location.as_ref().map(|l| format!(" at {l}")).unwrap_or_default(), hook_frame(location, frame))]
pub struct HookError {
    /// Which hook: `on_command`, `phases[4].switch`, `verify.rules[2].compare`.
    pub hook: String,
    /// What kind of failure.
    pub kind: HookErrorKind,
    /// Lua's message without its location prefix.
    pub message: String,
    /// Where the error was raised, when Lua knows.
    pub location: Option<Location>,
    /// The first Lua frame of the traceback (`plan.lua:12: in function <plan.lua:10>`).
    pub frame: Option<String>,
}

fn at(location: &Option<Location>) -> String {
    location
        .as_ref()
        .map_or_else(|| "plan".to_string(), Location::to_string)
}

fn paren(frame: &Option<String>) -> String {
    frame
        .as_ref()
        .map(|f| format!(" ({f})"))
        .unwrap_or_default()
}

fn did_you_mean(suggestion: &Option<String>) -> String {
    suggestion
        .as_ref()
        .map(|s| format!(" (did you mean `{s}`?)"))
        .unwrap_or_default()
}

fn supported() -> String {
    let v: Vec<String> = super::SUPPORTED_API_VERSIONS
        .iter()
        .map(u32::to_string)
        .collect();
    v.join(", ")
}

/// The traceback frame, shown only when there is no location: a Lua error raised with a level
/// already names the caller's line, and the frame would point into a helper instead.
fn hook_frame(location: &Option<Location>, frame: &Option<String>) -> String {
    match location {
        Some(_) => String::new(),
        None => paren(frame),
    }
}

/// The candidate closest to `name` by edit distance, if it is close enough to be a typo.
pub(crate) fn suggest<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (osa_distance(name, c), c))
        .filter(|(d, c)| *d <= (name.chars().count().max(c.chars().count()) / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Optimal string alignment distance: Levenshtein plus adjacent transpositions, so `fsnyc` is one
/// edit from `fsync`.
fn osa_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().flat_map(char::to_lowercase).collect();
    let b: Vec<char> = b.chars().flat_map(char::to_lowercase).collect();
    let w = b.len() + 1;
    let mut d = vec![0usize; (a.len() + 1) * w];
    for i in 0..=a.len() {
        d[i * w] = i;
    }
    for (j, cell) in d.iter_mut().enumerate().take(w) {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[(i - 1) * w + j] + 1)
                .min(d[i * w + j - 1] + 1)
                .min(d[(i - 1) * w + j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[(i - 2) * w + j - 2] + 1);
            }
            d[i * w + j] = v;
        }
    }
    d[a.len() * w + b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        let fields = ["include", "exclude", "dbs", "types"];
        assert_eq!(suggest("inclde", fields), Some("include"));
        assert_eq!(suggest("type", fields), Some("types"));
        assert_eq!(suggest("db", fields), Some("dbs"));
        assert_eq!(suggest("zzzzzz", fields), None);
        assert_eq!(suggest("fsnyc", ["dir", "fsync"]), Some("fsync"));
        assert_eq!(
            suggest("max_lag", ["max_lag_ms", "before", "after"]),
            Some("max_lag_ms")
        );
    }
}
