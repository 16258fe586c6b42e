//! The command table: which commands write, which arguments are keys, loaded from the server's
//! own `COMMAND` / `COMMAND DOCS`, with a built-in Redis 7.0 table as the fallback.
//!
//! ## Behavior
//! - [`CommandTable::load`] asks the source. A server whose `COMMAND` is renamed or refused gets
//!   [`CommandTable::builtin`], and the caller is told which one is in use.
//! - Lookups are case-insensitive and resolve subcommands (`XGROUP CREATE` → `xgroup|create`).
//! - [`CommandTable::classify`] sorts a call into [`Class`]es; [`CommandTable::keys`] returns
//!   its keys exactly as `COMMAND GETKEYSANDFLAGS` would.

mod argv;
mod builtin;
mod builtin_pre7;
pub mod codegen;
mod keys;
mod load;
mod mapping;
mod spec;

use std::collections::HashMap;
use std::sync::LazyLock;

pub use argv::Argv;
pub use keys::KeyRef;
pub use load::TableError;
pub use mapping::{Mapper, mixed_keys};
pub use spec::{BeginSearch, CommandFlags, CommandSpec, FindKeys, KeyFlags, KeySpec};

use keys::KeyProc;

/// What a call is, for capture and replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// Changes data (`write` flag): replayed.
    Write,
    /// Reads only.
    Read,
    /// Administrative; `MONITOR` never shows these.
    Admin,
    /// `EVAL`, `EVALSHA`, `FCALL` and their `_RO` forms: their writes arrive as `[db lua]` lines.
    Script,
    /// `SCRIPT LOAD` / `SCRIPT FLUSH`: the script cache, not data.
    ScriptCache,
    /// `MULTI`, `EXEC`, `DISCARD`: transaction framing.
    Transaction,
    /// `PUBLISH` and friends: messages, not data.
    PubSub,
    /// Connection and server commands without effect on data (`PING`, `SELECT`, `CLIENT INFO`).
    Other,
    /// Not in the table (a module command, or renamed on this server).
    Unknown,
}

/// Where a table came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableOrigin {
    /// The built-in Redis 7.0 table.
    Builtin,
    /// Loaded from a server, with the version it reported.
    Server { version: String },
}

#[derive(Debug)]
struct Entry {
    spec: CommandSpec,
    proc_: KeyProc,
    class: Class,
    subcommands: Vec<Entry>,
}

impl Entry {
    fn new(spec: CommandSpec, top: &str) -> Entry {
        let subcommands = spec
            .subcommands
            .iter()
            .map(|s| Entry::new(s.clone(), top))
            .collect();
        let proc_ = if spec.name == top {
            match KeyProc::for_command(top) {
                // `MEMORY USAGE` names a key only where the server says `MEMORY` has movable
                // keys (5.0 and 6.x; 4.0's `COMMAND GETKEYS` gives none, 7.0 has subcommands).
                KeyProc::Memory if !spec.flags.contains(CommandFlags::MOVABLEKEYS) => KeyProc::None,
                p => p,
            }
        } else {
            KeyProc::None
        };
        let class = classify_spec(&spec);
        Entry {
            spec,
            proc_,
            class,
            subcommands,
        }
    }
}

fn classify_spec(spec: &CommandSpec) -> Class {
    match spec.name.as_str() {
        "eval" | "evalsha" | "eval_ro" | "evalsha_ro" | "fcall" | "fcall_ro" => Class::Script,
        "script|load" | "script|flush" => Class::ScriptCache,
        "multi" | "exec" | "discard" => Class::Transaction,
        _ if spec.flags.contains(CommandFlags::ADMIN) => Class::Admin,
        _ if spec.flags.contains(CommandFlags::WRITE) => Class::Write,
        _ if spec.flags.contains(CommandFlags::PUBSUB) => Class::PubSub,
        _ if spec.flags.contains(CommandFlags::READONLY) => Class::Read,
        _ => Class::Other,
    }
}

/// The command table of one server (or the built-in one).
#[derive(Debug)]
pub struct CommandTable {
    by_name: HashMap<Box<[u8]>, Entry>,
    origin: TableOrigin,
}

/// Longest command name looked up without allocating; longer names cannot be Redis commands.
const MAX_NAME: usize = 64;

impl CommandTable {
    /// Builds a table from specs (top-level commands with their subcommands).
    pub fn from_specs(specs: Vec<CommandSpec>, origin: TableOrigin) -> CommandTable {
        let by_name = specs
            .into_iter()
            .map(|s| {
                let key = s.name.to_ascii_uppercase().into_bytes().into_boxed_slice();
                let top = s.name.clone();
                (key, Entry::new(s, &top))
            })
            .collect();
        CommandTable { by_name, origin }
    }

    /// The built-in table, generated from Redis 7.0.15.
    pub fn builtin() -> &'static CommandTable {
        static TABLE: LazyLock<CommandTable> =
            LazyLock::new(|| CommandTable::from_specs(builtin::specs(), TableOrigin::Builtin));
        &TABLE
    }

    /// The built-in table for a source of Redis level `(major, minor)`: generated from that
    /// major's server before 7.0 (`builtin_pre7`), the 7.0 table from 7.0 on.
    pub fn builtin_for(level: (u32, u32)) -> CommandTable {
        match builtin_pre7::specs(level) {
            Some(specs) => CommandTable::from_specs(specs, TableOrigin::Builtin),
            None => CommandTable::from_specs(
                CommandTable::builtin().iter().cloned().collect(),
                TableOrigin::Builtin,
            ),
        }
    }

    /// Where this table came from.
    pub fn origin(&self) -> &TableOrigin {
        &self.origin
    }

    /// Number of top-level commands.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// True for an empty table.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Top-level commands, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &CommandSpec> {
        self.by_name.values().map(|e| &e.spec)
    }

    /// A command by name, `set` or `xgroup|create`, in any case.
    pub fn get(&self, name: &str) -> Option<&CommandSpec> {
        let mut parts = name.splitn(2, '|');
        let top = self.entry(parts.next()?.as_bytes())?;
        match parts.next() {
            None => Some(&top.spec),
            Some(sub) => sub_entry(top, sub.as_bytes()).map(|e| &e.spec),
        }
    }

    fn entry(&self, name: &[u8]) -> Option<&Entry> {
        if name.len() > MAX_NAME {
            return None;
        }
        if name.iter().all(|b| !b.is_ascii_lowercase()) {
            return self.by_name.get(name);
        }
        let mut buf = [0u8; MAX_NAME];
        let upper = &mut buf[..name.len()];
        upper.copy_from_slice(name);
        upper.make_ascii_uppercase();
        self.by_name.get(&*upper)
    }

    fn resolve(&self, argv: &Argv) -> Option<&Entry> {
        let top = self.entry(argv.name())?;
        if top.subcommands.is_empty() {
            return Some(top);
        }
        // A container called without or with an unknown subcommand resolves to itself; the
        // server rejects such calls, so they never show up in MONITOR anyway.
        Some(
            argv.get(1)
                .and_then(|sub| sub_entry(top, sub))
                .unwrap_or(top),
        )
    }

    /// The spec that governs this call, subcommand resolved.
    pub fn lookup(&self, argv: &Argv) -> Option<&CommandSpec> {
        self.resolve(argv).map(|e| &e.spec)
    }

    /// What kind of call this is.
    pub fn classify(&self, argv: &Argv) -> Class {
        self.resolve(argv).map_or(Class::Unknown, |e| e.class)
    }

    /// Appends the keys of this call to `out`; nothing for unknown commands.
    pub fn keys_into(&self, argv: &Argv, out: &mut Vec<KeyRef>) {
        if let Some(e) = self.resolve(argv) {
            keys::extract(&e.spec, e.proc_, argv, out);
        }
    }

    /// The keys of this call.
    pub fn keys(&self, argv: &Argv) -> Vec<KeyRef> {
        let mut out = Vec::new();
        self.keys_into(argv, &mut out);
        out
    }
}

fn sub_entry<'a>(top: &'a Entry, sub: &[u8]) -> Option<&'a Entry> {
    top.subcommands
        .iter()
        .find(|e| e.spec.short_name().as_bytes().eq_ignore_ascii_case(sub))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(t: &CommandTable, args: &[&str]) -> Vec<(String, String)> {
        let argv = Argv::from_args(args);
        t.keys(&argv)
            .into_iter()
            .map(|k| {
                (
                    String::from_utf8_lossy(argv.get(k.pos).unwrap()).into_owned(),
                    k.flags.to_string(),
                )
            })
            .collect()
    }

    #[test]
    fn builtin_matches_known_getkeys_answers() {
        // Answers of COMMAND GETKEYSANDFLAGS on Redis 7.0.15 (docs/redis-behaviour.md §12).
        let t = CommandTable::builtin();
        let kf = |k: &str, f: &str| (k.to_string(), f.to_string());
        assert_eq!(keys(t, &["SET", "k", "v"]), vec![kf("k", "OW update")]);
        assert_eq!(
            keys(t, &["set", "k", "v", "get"]),
            vec![kf("k", "RW access update")]
        );
        assert_eq!(
            keys(
                t,
                &["ZUNIONSTORE", "dst", "2", "a", "b", "WEIGHTS", "1", "2"]
            ),
            vec![
                kf("dst", "OW update"),
                kf("a", "RO access"),
                kf("b", "RO access")
            ]
        );
        assert_eq!(
            keys(t, &["EVAL", "return 1", "2", "k1", "k2", "arg"]),
            vec![kf("k1", "RW access update"), kf("k2", "RW access update")]
        );
        assert_eq!(
            keys(
                t,
                &[
                    "XREADGROUP",
                    "GROUP",
                    "g",
                    "c",
                    "COUNT",
                    "1",
                    "STREAMS",
                    "s1",
                    "s2",
                    ">",
                    ">"
                ]
            ),
            vec![kf("s1", "RO access"), kf("s2", "RO access")]
        );
        assert_eq!(
            keys(
                t,
                &["MIGRATE", "h", "6379", "", "0", "1000", "KEYS", "a", "b"]
            ),
            vec![kf("a", "RW access delete"), kf("b", "RW access delete")]
        );
        assert_eq!(
            keys(
                t,
                &["SORT", "src", "BY", "w_*", "GET", "o_*", "STORE", "dst"]
            ),
            vec![kf("src", "RO access"), kf("dst", "OW update")]
        );
        assert_eq!(
            keys(t, &["BLMOVE", "src", "dst", "LEFT", "RIGHT", "0"]),
            vec![kf("src", "RW access delete"), kf("dst", "RW insert")]
        );
        assert_eq!(
            keys(t, &["GEORADIUS", "g", "0", "0", "1", "km", "STORE", "dst"]),
            vec![kf("g", "RO access"), kf("dst", "OW update")]
        );
        assert_eq!(keys(t, &["FLUSHALL"]), vec![]);
        assert_eq!(
            keys(t, &["xgroup", "create", "s", "g", "$"]),
            vec![kf("s", "RW insert")]
        );
    }

    #[test]
    fn classifies() {
        let t = CommandTable::builtin();
        let c = |args: &[&str]| t.classify(&Argv::from_args(args));
        assert_eq!(c(&["SET", "k", "v"]), Class::Write);
        assert_eq!(c(&["get", "k"]), Class::Read);
        assert_eq!(c(&["CONFIG", "SET", "x", "y"]), Class::Admin);
        assert_eq!(c(&["EVAL", "return 1", "0"]), Class::Script);
        assert_eq!(c(&["SCRIPT", "LOAD", "return 1"]), Class::ScriptCache);
        assert_eq!(c(&["MULTI"]), Class::Transaction);
        assert_eq!(c(&["PUBLISH", "ch", "m"]), Class::PubSub);
        assert_eq!(c(&["PING"]), Class::Other);
        assert_eq!(c(&["XGROUP", "CREATE", "s", "g", "$"]), Class::Write);
        assert_eq!(c(&["NOSUCH"]), Class::Unknown);
    }
}
