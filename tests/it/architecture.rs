//! Architecture rules, checked on the source text under `src/` (no server, no network):
//!
//! - the library's top-level modules form layers ([`LAYERS`], lowest first): a module may use
//!   `crate::X` only for an `X` earlier in the list (or itself), and every top-level module
//!   must be placed in the list;
//! - inside any module directory (`src/replay/`, `src/cli/`, ...) the files do not use each
//!   other in a cycle.
//!
//! A reference is any `crate::…`, `super::…` or `self::…` path in code: `use` lines, grouped
//! `use crate::{a::X, b}` forms and inline paths alike. Comments, string literals and
//! everything from a `#[cfg(test)]` line to the end of a file are ignored. `lib.rs`, `main.rs`
//! and `src/cli/` (the binary, on top of everything) are exempt from the layer rule.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The library's top-level modules, lowest layer first.
const LAYERS: &[&str] = &[
    "clock",
    "escape",
    "command",
    "net",
    "journal",
    "capture",
    "snapshot",
    "backup",
    "replay",
    "verify",
    "plan",
    "migration",
    "observe",
];

/// Most cycles reported for one directory; beyond that the directory needs untangling anyway.
const MAX_CYCLES_PER_DIR: usize = 20;

/// A module path inside its crate: `src/replay/stitch.rs` is `[replay, stitch]`.
type Module = Vec<String>;
/// The files of one directory and the siblings each one uses.
type Graph = BTreeMap<Module, BTreeSet<Module>>;

#[test]
fn layers_hold_and_sibling_files_have_no_cycles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    read_sources(&src, "", &mut files);
    assert!(
        files.iter().any(|(path, _)| path == "lib.rs"),
        "no src/lib.rs under {}",
        src.display()
    );
    let violations = check(&files);
    assert!(
        violations.is_empty(),
        "{} architecture violation(s):\n{}\n",
        violations.len(),
        violations.join("\n")
    );
}

/// The checker itself, on made-up files: each rule catches what it should and nothing else.
#[test]
fn architecture_checker_catches_violations() {
    let files: Vec<(String, String)> = [
        (
            "lib.rs",
            "pub mod clock;\npub mod net;\npub mod journal;\npub mod extra;\n",
        ),
        ("main.rs", "mod cli;\nfn main() { cli::main() }\n"),
        // Lowest layer reaching up, inline and in a comment / string (only the code counts).
        (
            "clock.rs",
            "// crate::plan is only mentioned here\n\
             /* crate::verify /* nested */ crate::replay */\n\
             pub fn now() -> u64 { crate::net::TIMEOUT.as_millis() as u64 }\n\
             const S: &str = \"crate::snapshot::X\";\n\
             const R: &str = r#\"crate::backup \"quoted\" \"#;\n\
             fn f<'a>(x: &'a str) -> char { let _ = x; '\"' }\n",
        ),
        (
            "net/mod.rs",
            "mod a;\nmod b;\npub use a::A;\npub struct Shared;\n",
        ),
        // A grouped use reaching a layer above, plus a sibling edge through `super::`.
        (
            "net/a.rs",
            "use crate::{clock::now, journal::{Entry, self}};\n\
             use super::{Shared, b::B};\n\
             pub(super) struct A;\n",
        ),
        // The way back: a sibling edge through `crate::net::…`; the test module reaches anywhere.
        (
            "net/b.rs",
            "use crate::net::a::A as Alias;\n\
             pub(in crate::net) struct B;\n\
             #[cfg(test)]\nmod tests {\n    use crate::migration::Everything;\n}\n",
        ),
        (
            "journal/mod.rs",
            "pub mod sqs;\npub mod codec;\npub struct Entry;\nuse crate::extra::Thing;\n",
        ),
        // A sub-directory module is one node of its parent's graph: sqs → codec → sqs.
        (
            "journal/codec.rs",
            "pub fn f() { super::sqs::message::g() }\n",
        ),
        ("journal/sqs/mod.rs", "pub mod message;\n"),
        (
            "journal/sqs/message.rs",
            "use super::super::codec;\npub fn g() {}\n",
        ),
        ("extra.rs", "use crate::clock;\n"),
        // The binary: exempt from the layers, but its files must not form cycles either.
        ("cli/mod.rs", "mod migrate;\nmod plan;\npub fn main() {}\n"),
        (
            "cli/migrate.rs",
            "use crate::cli::plan::check;\nuse ferry::migration::Run;\n",
        ),
        ("cli/plan.rs", "pub fn check() { super::migrate::run() }\n"),
    ]
    .iter()
    .map(|(path, text)| (path.to_string(), text.to_string()))
    .collect();

    let violations = check(&files);
    let expected = [
        "src/extra.rs: top-level module extra is not in the layer order",
        "src/clock.rs: clock imports crate::net (a layer above it)",
        "src/net/a.rs: net imports crate::journal (a layer above it)",
        "src/journal/mod.rs: journal imports crate::extra (not in the layer order)",
        "cycle between sibling files: src/journal/codec.rs → src/journal/sqs/ → src/journal/codec.rs",
        "cycle between sibling files: src/net/a.rs → src/net/b.rs → src/net/a.rs",
        "cycle between sibling files: src/cli/migrate.rs → src/cli/plan.rs → src/cli/migrate.rs",
    ];
    assert_eq!(violations, expected, "\ngot:\n{}", violations.join("\n"));

    // Placing the module and removing the back-references leaves nothing to report.
    let fixed: Vec<(String, String)> = files
        .into_iter()
        .filter(|(path, _)| {
            !matches!(
                path.as_str(),
                "extra.rs" | "clock.rs" | "net/b.rs" | "journal/codec.rs" | "cli/plan.rs"
            )
        })
        .map(|(path, text)| {
            let text = text.replace("journal::{Entry, self}", "escape::{quote, self}");
            (path, text)
        })
        .collect();
    let violations = check(&fixed);
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

/// Reads every `.rs` file under `dir` as (path relative to `src/`, with `/`, text), sorted.
fn read_sources(dir: &Path, prefix: &str, out: &mut Vec<(String, String)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("UTF-8 file name");
        let rel = format!("{prefix}{name}");
        if path.is_dir() {
            read_sources(&path, &format!("{rel}/"), out);
        } else if name.ends_with(".rs") {
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
            out.push((rel, text));
        }
    }
}

/// One source file as the checker sees it.
struct SourceFile<'a> {
    /// Path relative to `src/`, e.g. `replay/stitch.rs`.
    path: &'a str,
    /// Whether it belongs to the binary (`main.rs`, `cli/**`) rather than the library.
    bin: bool,
    /// Its module path inside its crate: `replay/stitch.rs` → `[replay, stitch]`,
    /// `replay/mod.rs` → `[replay]`, `lib.rs` → `[]`.
    module: Module,
}

/// Every violation in `files` (paths relative to `src/`), one line each: unplaced modules,
/// layer violations, then cycles.
fn check(files: &[(String, String)]) -> Vec<String> {
    let sources: Vec<SourceFile> = files
        .iter()
        .map(|(path, _)| SourceFile {
            path,
            bin: path == "main.rs" || path.starts_with("cli/"),
            module: module_path(path),
        })
        .collect();
    // Module path → display label, per crate (false: library, true: binary).
    let mut modules: BTreeMap<(bool, Module), String> = BTreeMap::new();
    for file in &sources {
        let label = match file.path.strip_suffix("mod.rs") {
            Some(dir) => format!("src/{dir}"),
            None => format!("src/{}", file.path),
        };
        modules.insert((file.bin, file.module.clone()), label);
    }

    let mut violations = Vec::new();

    // Every top-level library module is placed in the layers.
    let mut unplaced: BTreeSet<String> = BTreeSet::new();
    for file in sources.iter().filter(|f| !f.bin) {
        if let Some(top) = file.module.first()
            && !LAYERS.contains(&top.as_str())
            && unplaced.insert(top.clone())
        {
            violations.push(format!(
                "{}: top-level module {top} is not in the layer order",
                label(&modules, false, std::slice::from_ref(top))
            ));
        }
    }

    // Layer order, and the edges between sibling files.
    let mut graphs: BTreeMap<(bool, Module), Graph> = BTreeMap::new();
    for (file, (_, text)) in sources.iter().zip(files) {
        let targets: Vec<Module> = references(text)
            .iter()
            .filter_map(|path| resolve(&file.module, path))
            .collect();

        if !file.bin
            && let Some(own) = file.module.first()
            && let Some(own_layer) = LAYERS.iter().position(|m| m == own)
        {
            let mut reported = BTreeSet::new();
            for target in &targets {
                let Some(other) = target.first() else {
                    continue;
                };
                if other == own || !reported.insert(other.clone()) {
                    continue;
                }
                match LAYERS.iter().position(|m| m == other) {
                    Some(layer) if layer > own_layer => violations.push(format!(
                        "src/{}: {own} imports crate::{other} (a layer above it)",
                        file.path
                    )),
                    Some(_) => {}
                    None if unplaced.contains(other) => violations.push(format!(
                        "src/{}: {own} imports crate::{other} (not in the layer order)",
                        file.path
                    )),
                    // An item at the crate root, not a module.
                    None => {}
                }
            }
        }

        // The file is a node in the graph of each module directory it sits in, below `src/`:
        // `journal/sqs/reader.rs` is `journal/sqs/reader.rs` inside `journal/sqs/`, and the
        // whole `journal/sqs/` inside `journal/`. A directory's own `mod.rs` is its parent, not
        // a sibling, and is no node there (it declares and re-exports its children).
        for depth in 1..file.module.len() {
            let dir = &file.module[..depth];
            let node = file.module[..=depth].to_vec();
            let graph = graphs.entry((file.bin, dir.to_vec())).or_default();
            graph.entry(node.clone()).or_default();
            for target in targets
                .iter()
                .filter(|t| t.len() > depth && t.starts_with(dir))
            {
                let sibling = target[..=depth].to_vec();
                if sibling != node && modules.contains_key(&(file.bin, sibling.clone())) {
                    graph.entry(node.clone()).or_default().insert(sibling);
                }
            }
        }
    }

    for ((bin, _), graph) in &graphs {
        let cycles = cycles(graph);
        for cycle in cycles.iter().take(MAX_CYCLES_PER_DIR) {
            let labels: Vec<String> = cycle
                .iter()
                .chain(cycle.first())
                .map(|node| label(&modules, *bin, node))
                .collect();
            violations.push(format!(
                "cycle between sibling files: {}",
                labels.join(" → ")
            ));
        }
        if cycles.len() > MAX_CYCLES_PER_DIR {
            violations.push(format!(
                "... and {} more cycles in the same directory",
                cycles.len() - MAX_CYCLES_PER_DIR
            ));
        }
    }
    violations
}

/// How a module shows in messages: its file (`src/net/raw.rs`) or directory (`src/journal/sqs/`).
fn label(modules: &BTreeMap<(bool, Module), String>, bin: bool, module: &[String]) -> String {
    modules
        .get(&(bin, module.to_vec()))
        .cloned()
        .unwrap_or_else(|| format!("src/{}/", module.join("/")))
}

/// Every elementary cycle of `graph`, each listed from its smallest node, in order.
fn cycles(graph: &Graph) -> Vec<Vec<&Module>> {
    fn walk<'g>(
        graph: &'g Graph,
        start: &'g Module,
        path: &mut Vec<&'g Module>,
        out: &mut Vec<Vec<&'g Module>>,
    ) {
        let last = *path.last().expect("the path starts at `start`");
        for next in graph.get(last).into_iter().flatten() {
            if next == start {
                out.push(path.clone());
            } else if next > start && !path.contains(&next) {
                path.push(next);
                walk(graph, start, path, out);
                path.pop();
            }
        }
    }
    let mut out = Vec::new();
    for start in graph.keys() {
        walk(graph, start, &mut vec![start], &mut out);
    }
    out
}

/// `replay/stitch.rs` → `[replay, stitch]`, `replay/mod.rs` → `[replay]`, `lib.rs` → `[]`.
fn module_path(path: &str) -> Module {
    let stem = path.strip_suffix(".rs").unwrap_or(path);
    let mut parts: Vec<String> = stem.split('/').map(str::to_string).collect();
    if matches!(parts.last().map(String::as_str), Some("mod"))
        || parts == ["lib"]
        || parts == ["main"]
    {
        parts.pop();
    }
    parts
}

/// The absolute module path a reference names, from the module that contains it;
/// `None` when `super` climbs above the crate root.
fn resolve(module: &[String], path: &[String]) -> Option<Module> {
    let (first, rest) = path.split_first()?;
    let mut abs = match first.as_str() {
        "crate" => Vec::new(),
        "self" => module.to_vec(),
        "super" => {
            let mut abs = module.to_vec();
            abs.pop()?;
            abs
        }
        _ => return None,
    };
    let mut rest = rest.iter().peekable();
    if first == "super" {
        while rest.next_if(|segment| *segment == "super").is_some() {
            abs.pop()?;
        }
    }
    abs.extend(rest.filter(|segment| *segment != "self").cloned());
    Some(abs)
}

/// Every `crate::…`, `super::…` and `self::…` path in the code of `text`, grouped `use`
/// braces expanded: `use crate::{a::X, b::{self, Y}}` gives `crate::a::X`, `crate::b`,
/// `crate::b::Y`. Test code (from a `#[cfg(test)]` line on), comments and literals are skipped.
fn references(text: &str) -> Vec<Vec<String>> {
    let code_end = text
        .split('\n')
        .scan(0, |offset, line| {
            let start = *offset;
            *offset += line.len() + 1;
            Some((start, line))
        })
        .find(|(_, line)| line.trim_start().starts_with("#[cfg(test)]"))
        .map_or(text.len(), |(start, _)| start);
    let tokens = tokens(&strip_comments_and_literals(&text[..code_end]));

    let mut paths = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        let starts_path = matches!(tokens[i].as_str(), "crate" | "super" | "self")
            && tokens.get(i + 1).is_some_and(|t| t == "::")
            && (i == 0 || tokens[i - 1] != "::")
            // A visibility, `pub(in crate::net)`, is no dependency.
            && !(i >= 2 && tokens[i - 1] == "in" && tokens[i - 2] == "(");
        if starts_path {
            i = parse_tree(&tokens, i, &[], &mut paths);
        } else {
            i += 1;
        }
    }
    paths
}

/// Parses one use tree / path at `tokens[i]` under `prefix`, pushing every full path; returns
/// the index after it.
fn parse_tree(
    tokens: &[String],
    mut i: usize,
    prefix: &[String],
    out: &mut Vec<Vec<String>>,
) -> usize {
    let mut segments = prefix.to_vec();
    loop {
        match tokens.get(i).map(String::as_str) {
            Some("{") => {
                i += 1;
                loop {
                    match tokens.get(i).map(String::as_str) {
                        None => return i,
                        Some("}") => return i + 1,
                        Some(",") => i += 1,
                        Some(t) if is_ident(t) || t == "*" || t == "{" => {
                            i = parse_tree(tokens, i, &segments, out);
                        }
                        Some(_) => i += 1,
                    }
                }
            }
            Some("*") => {
                out.push(segments);
                return i + 1;
            }
            Some(t) if is_ident(t) => {
                segments.push(t.to_string());
                i += 1;
                if tokens.get(i).is_some_and(|t| t == "::") {
                    i += 1;
                    continue;
                }
                if tokens.get(i).is_some_and(|t| t == "as") {
                    i += 2;
                }
                out.push(segments);
                return i;
            }
            // `crate::foo::<T>` and the like: the path so far is the reference.
            _ => {
                if segments.len() > prefix.len() {
                    out.push(segments);
                }
                return i;
            }
        }
    }
}

fn is_ident(token: &str) -> bool {
    token.starts_with(|c: char| c.is_alphabetic() || c == '_')
}

/// Identifiers, `::`, and every other non-space character as its own token.
fn tokens(code: &str) -> Vec<String> {
    let chars: Vec<char> = code.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            tokens.push(chars[start..i].iter().collect());
        } else if c == ':' && chars.get(i + 1) == Some(&':') {
            tokens.push("::".to_string());
            i += 2;
        } else {
            if !c.is_whitespace() {
                tokens.push(c.to_string());
            }
            i += 1;
        }
    }
    tokens
}

/// `code` with comments, string literals and char literals replaced by spaces.
fn strip_comments_and_literals(code: &str) -> String {
    let chars: Vec<char> = code.chars().collect();
    let mut out = String::with_capacity(code.len());
    let mut i = 0;
    let ident_before = |i: usize| i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_');
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else if let Some(end) = raw_string_end(&chars, i).filter(|_| !ident_before(i)) {
            i = end;
            out.push(' ');
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push(' ');
        } else if c == '\'' && next == Some('\\') {
            // An escaped char literal: '\n', '\'', '\u{1F600}'.
            i += 2;
            while i < chars.len() && chars[i] != '\'' {
                i += 1;
            }
            i += 1;
            out.push(' ');
        } else if c == '\'' && chars.get(i + 2) == Some(&'\'') {
            i += 3;
            out.push(' ');
        } else {
            // Lifetimes and labels ('a) fall through here as plain characters.
            out.push(c);
            i += 1;
        }
    }
    out
}

/// If a raw string literal (`r"…"`, `r#"…"#`, `br"…"`, `cr"…"`) starts at `i`, the index after it.
fn raw_string_end(chars: &[char], i: usize) -> Option<usize> {
    let mut j = i;
    if matches!(chars.get(j), Some('b' | 'c')) {
        j += 1;
    }
    if chars.get(j) != Some(&'r') {
        return None;
    }
    j += 1;
    let hashes = chars[j..].iter().take_while(|c| **c == '#').count();
    j += hashes;
    if chars.get(j) != Some(&'"') {
        return None;
    }
    j += 1;
    while j < chars.len() {
        if chars[j] == '"'
            && chars[j + 1..]
                .iter()
                .take(hashes)
                .filter(|c| **c == '#')
                .count()
                == hashes
        {
            return Some(j + 1 + hashes);
        }
        j += 1;
    }
    Some(chars.len())
}
