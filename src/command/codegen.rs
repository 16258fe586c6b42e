//! Writes a command table as Rust source (the checked-in built-in table) and provides the small
//! constructors that source calls.
//!
//! The flags are kept as Redis's own words so that the built-in table goes through the same
//! parsing as a table loaded from a server.

use std::fmt::Write;

use super::spec::{BeginSearch, CommandFlags, CommandSpec, FindKeys, KeyFlags, KeySpec};

/// How to regenerate the built-in table; printed in its header.
pub const REGENERATE: &str =
    "FERRY_REGENERATE=1 cargo test --test it command_table::builtin_table_is_current";

/// How to regenerate the built-in tables of engines before Redis 7.0; printed in their headers.
pub const REGENERATE_PRE_7: &str = "FERRY_REGENERATE=1 FERRY_ENGINES=1 cargo test --test it engines::built_in_tables_before_7_0_are_current -- --include-ignored";

/// Renders `specs` (sorted by name) as the body of `src/command/builtin.rs`.
pub fn render(specs: &[CommandSpec], server_version: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "//! The built-in command table: Redis {server_version}'s `COMMAND` and `COMMAND DOCS`, used when the\n\
         //! source refuses `COMMAND`.\n\
         //!\n\
         //! @generated from redis-server {server_version}. Do not edit; regenerate with\n\
         //! `{REGENERATE}`."
    );
    out.push_str("\nuse super::codegen::{c, idx, keynum, kw, range, spec, unknown_begin, unknown_find};\nuse super::spec::CommandSpec;\n\n");
    render_body(&mut out, specs);
    out
}

/// Renders `specs` (sorted by name) of a server before Redis 7.0 as the body of
/// `src/command/builtin_pre7/<major>.rs`: its `COMMAND` as ferry reads it (no key specs but
/// first/last/step, see `load.rs`).
pub fn render_pre7(specs: &[CommandSpec], server_version: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "//! The built-in command table of Redis {server_version}: its `COMMAND` as ferry reads it, used when\n\
         //! a source of that version refuses `COMMAND`.\n\
         //!\n\
         //! @generated from redis-server {server_version}. Do not edit; regenerate with\n\
         //! `{REGENERATE_PRE_7}`.\n\
         #![allow(unused_imports)]"
    );
    out.push_str("\nuse super::super::codegen::{c, idx, keynum, kw, range, spec, unknown_begin, unknown_find};\nuse super::super::spec::CommandSpec;\n\n");
    render_body(&mut out, specs);
    out
}

fn render_body(out: &mut String, specs: &[CommandSpec]) {
    out.push_str("#[rustfmt::skip]\npub(super) fn specs() -> Vec<CommandSpec> {\n    vec![\n");
    for s in specs {
        render_spec(out, s, 2);
    }
    out.push_str("    ]\n}\n");
}

fn render_spec(out: &mut String, s: &CommandSpec, depth: usize) {
    let pad = "    ".repeat(depth);
    let flags: Vec<_> = s.flags.names().collect();
    let _ = write!(
        out,
        "{pad}c({:?}, {}, {:?}, {:?}, {:?}, {:?}, vec![",
        s.name,
        s.arity,
        flags.join(" "),
        s.acl_categories.join(" "),
        s.tips.join(" "),
        s.group,
    );
    for (i, k) in s.key_specs.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        render_key_spec(out, k);
    }
    out.push_str("], vec![");
    if s.subcommands.is_empty() {
        out.push_str("]),\n");
        return;
    }
    out.push('\n');
    for sub in &s.subcommands {
        render_spec(out, sub, depth + 1);
    }
    let _ = writeln!(out, "{pad}]),");
}

fn render_key_spec(out: &mut String, k: &KeySpec) {
    let begin = match &k.begin {
        BeginSearch::Index(i) => format!("idx({i})"),
        BeginSearch::Keyword { keyword, startfrom } => format!("kw({keyword:?}, {startfrom})"),
        BeginSearch::Unknown => "unknown_begin()".into(),
    };
    let find = match &k.find {
        FindKeys::Range {
            lastkey,
            keystep,
            limit,
        } => format!("range({lastkey}, {keystep}, {limit})"),
        FindKeys::Keynum {
            keynumidx,
            firstkey,
            keystep,
        } => format!("keynum({keynumidx}, {firstkey}, {keystep})"),
        FindKeys::Unknown => "unknown_find()".into(),
    };
    let _ = write!(out, "spec({:?}, {begin}, {find})", k.flags.to_string());
}

/// A command. Flags, categories and tips are space-separated Redis words.
#[allow(clippy::too_many_arguments)]
pub(crate) fn c(
    name: &str,
    arity: i32,
    flags: &str,
    acl: &str,
    tips: &str,
    group: &str,
    key_specs: Vec<KeySpec>,
    subcommands: Vec<CommandSpec>,
) -> CommandSpec {
    let words = |s: &str| s.split_ascii_whitespace().map(String::from).collect();
    CommandSpec {
        name: name.to_string(),
        arity,
        flags: CommandFlags::parse(flags),
        acl_categories: words(acl),
        tips: words(tips),
        key_specs,
        subcommands,
        group: group.to_string(),
    }
}

/// A key spec with Redis's flag words.
pub(crate) fn spec(flags: &str, begin: BeginSearch, find: FindKeys) -> KeySpec {
    KeySpec {
        flags: KeyFlags::parse(flags),
        begin,
        find,
    }
}

pub(crate) fn idx(i: i32) -> BeginSearch {
    BeginSearch::Index(i)
}

pub(crate) fn kw(keyword: &str, startfrom: i32) -> BeginSearch {
    BeginSearch::Keyword {
        keyword: keyword.to_string(),
        startfrom,
    }
}

pub(crate) fn unknown_begin() -> BeginSearch {
    BeginSearch::Unknown
}

pub(crate) fn range(lastkey: i32, keystep: i32, limit: i32) -> FindKeys {
    FindKeys::Range {
        lastkey,
        keystep,
        limit,
    }
}

pub(crate) fn keynum(keynumidx: i32, firstkey: i32, keystep: i32) -> FindKeys {
    FindKeys::Keynum {
        keynumidx,
        firstkey,
        keystep,
    }
}

pub(crate) fn unknown_find() -> FindKeys {
    FindKeys::Unknown
}
