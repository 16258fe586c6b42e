//! Lua plans: every example loads, broken plans fail with precise errors, the sandbox holds,
//! hooks fail as `HookError`s, `Glob` agrees with a real server's `KEYS`, and the rename rules
//! reach every key position.

use std::path::{Path, PathBuf};

use ferry::command::{Argv, CommandTable};
use ferry::plan::{
    self, Applied, CaptureChoice, CheckOutcome, CompareValue, Glob, HookErrorKind, HookOutcome,
    JournalSpec, KeyFilter, Limit, Limits, LoadOptions, Mapped, PhaseContext, PhaseKind, Plan,
    PlanError, Rule,
};
use tempfile::TempDir;

use crate::support::RedisServer;

const HEAD: &str = "local ferry = require \"ferry\"\n";

fn env() -> Vec<(String, String)> {
    vec![
        ("SOURCE_URL".into(), "redis://127.0.0.1:6379".into()),
        ("TARGET_URL".into(), "redis://127.0.0.1:6380".into()),
        // examples/runbook.lua's switch runs the operator's own program, named here.
        ("SWITCH_COMMAND".into(), "/bin/true".into()),
        ("FERRY_STATE".into(), "/tmp/ferry-state".into()),
    ]
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&path, text).unwrap();
    path
}

/// A plan file `plan.lua` in a fresh folder.
struct PlanDir {
    dir: TempDir,
}

impl PlanDir {
    fn new() -> PlanDir {
        PlanDir {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        write(self.dir.path(), name, text)
    }

    fn load(&self, text: &str) -> Result<Plan, PlanError> {
        let path = self.file("plan.lua", text);
        plan::load(&path, &env())
    }

    fn load_with(&self, text: &str, limits: Limits) -> Result<Plan, PlanError> {
        let path = self.file("plan.lua", text);
        let mut options = LoadOptions::with_overrides(&env());
        options.limits = limits;
        plan::load_with(&path, &options)
    }
}

fn load(text: &str) -> Result<Plan, PlanError> {
    PlanDir::new().load(text)
}

/// A minimal valid plan with `extra` fields added.
fn plan_with(extra: &str) -> String {
    format!(
        "{HEAD}return ferry.plan {{\n  api_version = 1,\n  source = {{ url = ferry.env \"SOURCE_URL\" }},\n  target = {{ url = ferry.env \"TARGET_URL\" }},\n{extra}\n}}\n"
    )
}

fn err(text: &str) -> PlanError {
    match load(text) {
        Ok(p) => panic!("expected an error, loaded {p:?}"),
        Err(e) => e,
    }
}

fn argv(args: &[&str]) -> Argv {
    Argv::from_args(args)
}

fn key_positions(a: &Argv) -> Vec<usize> {
    CommandTable::builtin()
        .keys(a)
        .iter()
        .map(|k| k.pos)
        .collect()
}

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

// ---- examples -------------------------------------------------------------------------------

/// Every ```lua block of `docs/plan-reference.md`, made into a whole plan: a complete plan as
/// it stands; `field = …` lines inside a minimal plan (the `local` lines before it); `ferry.…`
/// rewrite and phase expressions in their lists. Each must load and pass the dry run, so the
/// reference cannot drift from what ferry accepts.
#[test]
fn every_lua_block_of_the_plan_reference_loads() {
    let doc = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/plan-reference.md"),
    )
    .unwrap();
    let mut blocks = Vec::new();
    let mut current: Option<Vec<&str>> = None;
    for line in doc.lines() {
        match (&mut current, line.trim_start()) {
            (None, "```lua") => current = Some(Vec::new()),
            (Some(b), l) if l.starts_with("```") => {
                blocks.push(b.join("\n"));
                current = None;
            }
            (Some(b), _) => b.push(line),
            (None, _) => {}
        }
    }
    assert!(blocks.len() >= 15, "only {} lua blocks", blocks.len());
    let dir = TempDir::new().unwrap();
    let mut env = env();
    env.push(("EC_TOKEN".into(), "token".into()));
    for (i, block) in blocks.iter().enumerate() {
        let text = if block.contains("return ferry.plan") {
            block.clone()
        } else {
            let (locals, fields): (Vec<&str>, Vec<&str>) =
                block.lines().partition(|l| l.starts_with("local "));
            let fields = fields.join("\n");
            let body = match fields.trim_start() {
                f if f.starts_with("ferry.rename_prefix")
                    || f.starts_with("ferry.move_db")
                    || f.starts_with("ferry.drop_commands") =>
                {
                    format!("rewrite = {{ {f} }},")
                }
                f if f.starts_with("ferry.") => format!("phases = {{ \"snapshot\", {f} }},"),
                _ => fields.clone(),
            };
            format!(
                "{HEAD}local url = \"redis://127.0.0.1:6379\"\n{}\nreturn ferry.plan {{\n  api_version = 1,\n  source = ferry.env \"SOURCE_URL\",\n  target = ferry.env \"TARGET_URL\",\n{body}\n}}\n",
                locals.join("\n")
            )
        };
        let path = write(dir.path(), &format!("block{i}.lua"), &text);
        let plan = plan::load(&path, &env)
            .unwrap_or_else(|e| panic!("docs block {}:\n{block}\n--- as\n{text}\n--- {e}", i + 1));
        let report = plan::check(&plan, &[]);
        assert!(report.is_ok(), "docs block {}: {report}\n{text}", i + 1);
    }
}

/// Every field name the plan decoder accepts appears in `docs/plan-reference.md`.
#[test]
fn every_plan_field_is_documented() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("docs/plan-reference.md")).unwrap();
    let decoder = std::fs::read_to_string(root.join("src/plan/decode.rs")).unwrap();
    // The names in `TOP_FIELDS` and in the `&["…", …]` lists given to `record`/`check_keys`.
    let mut fields = Vec::new();
    for (i, _) in decoder.match_indices("&[\"") {
        let list = &decoder[i..i + decoder[i..].find(']').unwrap()];
        fields.extend(list.split('"').skip(1).step_by(2).map(str::to_string));
    }
    let top = &decoder[decoder.find("const TOP_FIELDS").unwrap()..];
    let top = &top[..top.find("];").unwrap()];
    fields.extend(top.split('"').skip(1).step_by(2).map(str::to_string));
    assert!(fields.len() >= 30, "found only {fields:?}");
    let missing: Vec<&String> = fields
        .iter()
        .filter(|f| {
            // As a field (`name`, `name =`), a value (`"name"`) or a constructor (`ferry.name`,
            // `name(`).
            ![
                format!("`{f}`"),
                format!("{f} ="),
                format!("\"{f}\""),
                format!("ferry.{f}"),
                format!("{f}("),
            ]
            .iter()
            .any(|p| doc.contains(p.as_str()))
        })
        .collect();
    assert!(missing.is_empty(), "undocumented plan fields: {missing:?}");
}

#[test]
fn every_example_loads() {
    let mut loaded = 0;
    for entry in std::fs::read_dir(examples_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "lua") || path.ends_with("common.lua") {
            continue;
        }
        let plan = plan::load(&path, &env()).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(
            plan.source.url,
            "redis://127.0.0.1:6379",
            "{}",
            path.display()
        );
        assert_eq!(plan.api_version, 1);
        let report = plan::check(&plan, &[]);
        assert!(report.is_ok(), "{}: {report}", path.display());
        loaded += 1;
    }
    assert!(
        loaded >= 5,
        "staging, production, rename, filtered, sqs: {loaded}"
    );
}

#[test]
fn examples_have_the_documented_shape() {
    let dir = examples_dir();
    let staging = plan::load(&dir.join("staging.lua"), &env()).unwrap();
    assert_eq!(staging.name, "staging");
    assert_eq!(staging.verify.sample, Some(100000));
    assert_eq!(staging.verify.ttl_tolerance_ms, 2000, "merged from common");
    assert_eq!(
        staging.journal,
        JournalSpec::Embedded {
            dir: dir.join("ferry-state/staging"),
            fsync_ms: Some(1000)
        }
    );
    assert!(staging.keys.allows(0, b"fs:1"));
    assert!(staging.keys.allows(1, b"sidekiq:queue:default"));
    assert!(!staging.keys.allows(0, b"fs:cache:1"));
    assert!(!staging.keys.allows(2, b"fs:1"));

    let production = plan::load(&dir.join("production.lua"), &env()).unwrap();
    assert_eq!(production.source.capture, CaptureChoice::Primary);
    assert_eq!(production.snapshot.max_source_ops, Some(50000));
    let names: Vec<&str> = production.phases.iter().map(|p| p.name()).collect();
    assert_eq!(
        names,
        ["snapshot", "catch_up", "verify", "cutover", "settle"]
    );
    assert!(matches!(
        production.phases[3].kind,
        PhaseKind::Cutover {
            max_pause_ms: 2000,
            switch: Some(_),
            ..
        }
    ));
    let mut overrides = env();
    overrides.push(("CUTOVER_MAX_PAUSE_MS".into(), "500".into()));
    let production = plan::load(&dir.join("production.lua"), &overrides).unwrap();
    assert!(matches!(
        production.phases[3].kind,
        PhaseKind::Cutover {
            max_pause_ms: 500,
            ..
        }
    ));

    let sqs = plan::load(&dir.join("sqs.lua"), &env()).unwrap();
    assert!(matches!(sqs.journal, JournalSpec::Sqs { fifo: true, .. }));
    assert_eq!(sqs.source.capture, CaptureChoice::Replica);
}

#[test]
fn rename_example_checks_as_documented() {
    let plan = plan::load(&examples_dir().join("rename.lua"), &env()).unwrap();
    let report = plan::check(&plan, &[]);
    let lines: Vec<String> = report.lines.iter().map(|l| l.to_string()).collect();
    assert_eq!(lines.len(), 4, "{report}");
    assert!(
        lines[0].contains(r#"kept as db0 "SET" "freshservice:1" "v""#),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].contains(r#""SET" "scratch:1" "v""#),
        "longest prefix wins: {}",
        lines[1]
    );
    assert!(
        lines[2].contains(r#"kept as db0 "RENAME" "freshservice:a" "freshservice:b""#)
            && lines[2].contains("moved db1 → db0"),
        "{}",
        lines[2]
    );
    assert!(
        lines[3].contains(r#"on_command sends db0 "HINCRBY" "stats" "logins" "1""#),
        "{}",
        lines[3]
    );
}

#[test]
fn default_plan_takes_the_cli_overrides() {
    let mut o = env();
    o.push(("FERRY_CAPTURE".into(), "replica".into()));
    let plan = plan::load_default(&LoadOptions::with_overrides(&o)).unwrap();
    assert_eq!(plan.name, "default");
    assert_eq!(plan.source.capture, CaptureChoice::Replica);
    let names: Vec<&str> = plan.phases.iter().map(|p| p.name()).collect();
    assert_eq!(names, ["snapshot", "catch_up"]);
    assert_eq!(
        plan.journal,
        JournalSpec::Embedded {
            dir: PathBuf::from("ferry-state"),
            fsync_ms: None
        }
    );
    let e = plan::load_default(&LoadOptions::default()).unwrap_err();
    assert!(
        matches!(&e, PlanError::MissingEnv { name, .. } if name == "SOURCE_URL"),
        "{e}"
    );
}

// ---- errors ---------------------------------------------------------------------------------

#[test]
fn syntax_error_names_file_and_line() {
    let d = PlanDir::new();
    let e = d
        .load(&format!(
            "{HEAD}\nreturn ferry.plan {{\n  api_version = 1\n  name = 'x'\n}}\n"
        ))
        .unwrap_err();
    let PlanError::Syntax { location, message } = &e else {
        panic!("{e:?}")
    };
    assert!(location.file.ends_with("plan.lua"), "{e}");
    assert_eq!(location.line, Some(5), "{e}");
    assert!(message.contains("expected"), "{e}");
    assert!(e.to_string().contains("plan.lua:5: syntax error"), "{e}");
}

#[test]
fn syntax_error_in_a_required_module_names_the_module() {
    let d = PlanDir::new();
    d.file("common.lua", "local x = = 1\n");
    let e = d
        .load(&format!("{HEAD}local common = require 'common'\n"))
        .unwrap_err();
    let PlanError::Syntax { location, .. } = &e else {
        panic!("{e:?}")
    };
    assert!(location.file.ends_with("common.lua"), "{e}");
    assert_eq!(location.line, Some(1));
}

#[test]
fn unknown_fields_get_did_you_mean() {
    let e = err(&plan_with("  keys = { inclde = { 'a:*' } },"));
    assert!(
        matches!(&e, PlanError::UnknownField { field, suggestion: Some(s), .. }
            if field == "keys.inclde" && s == "keys.include"),
        "{e:?}"
    );
    assert!(
        e.to_string().contains("did you mean `keys.include`?"),
        "{e}"
    );
    // The line is the `ferry.plan {` call.
    assert!(e.to_string().contains("plan.lua:2: keys.inclde"), "{e}");

    let e = err(&plan_with("  phasse = { 'snapshot' },"));
    assert!(
        e.to_string()
            .contains("phasse: unknown field (did you mean `phases`?)"),
        "{e}"
    );

    let e = err(&plan_with(
        "  journal = ferry.embedded { dir = 'x', fsnyc = '1s' },",
    ));
    assert!(
        e.to_string()
            .contains("journal.fsnyc: unknown field (did you mean `journal.fsync`?)"),
        "{e}"
    );

    let e = err(&plan_with(
        "  phases = { 'snapshot', ferry.catch_up { max_lag = 5 } },",
    ));
    assert!(
        e.to_string()
            .contains("phases[2].max_lag: unknown field (did you mean `phases[2].max_lag_ms`?)"),
        "{e}"
    );

    let e = err(&plan_with("  frobnicate = true,"));
    assert!(
        matches!(
            &e,
            PlanError::UnknownField {
                suggestion: None,
                ..
            }
        ),
        "{e:?}"
    );
}

/// Misspelled fields of the `ferry` module and the embedded library are errors at the reader's
/// line, not silent nils (`include = sk.keyz` would otherwise migrate every key).
#[test]
fn library_fields_are_strict_with_did_you_mean() {
    // plan_with puts `extra` on line 6, or 7 after one line of ours.
    let sk = "local sk = require \"ferry.sidekiq\"\n";
    let e = err(&format!(
        "{sk}{}",
        plan_with("  keys = { include = sk.keyz },")
    ));
    assert!(matches!(e, PlanError::Runtime { .. }), "{e:?}");
    assert!(
        e.to_string()
            .ends_with("plan.lua:7: ferry.sidekiq has no field `keyz` (did you mean `keys`?)"),
        "{e}"
    );
    let ns = "local sk = require(\"ferry.sidekiq\").namespaced \"sidekiq\"\n";
    let e = err(&format!(
        "{ns}{}",
        plan_with("  keys = { include = sk.keyz },")
    ));
    assert!(
        e.to_string().ends_with(
            "plan.lua:7: sidekiq.namespaced(\"sidekiq\") has no field `keyz` (did you mean `keys`?)"
        ),
        "{e}"
    );
    let e = err(&plan_with(
        "  rewrite = { ferry.rename_prefx(\"a:\", \"b:\") },",
    ));
    assert!(
        e.to_string().ends_with(
            "plan.lua:6: ferry has no field `rename_prefx` (did you mean `rename_prefix`?)"
        ),
        "{e}"
    );
    let ec = "local ec = require \"ferry.elasticache\"\n";
    let e = err(&format!(
        "{ec}{}",
        plan_with("  source = ec.sourc(\"redis://x\"),")
    ));
    assert!(
        e.to_string().contains(
            "plan.lua:7: ferry.elasticache has no field `sourc` (did you mean `source`?)"
        ),
        "{e}"
    );
    // Nothing close: no suggestion, still an error.
    let e = err(&plan_with("  name = ferry.zzzzzzzz,"));
    assert!(
        e.to_string()
            .ends_with("plan.lua:6: ferry has no field `zzzzzzzz`"),
        "{e}"
    );
    // Existing fields, integer keys, rawget and ferry.strict on the plan's own tables.
    let plan = load(&format!(
        "{sk}{}",
        plan_with(
            r#"  keys = { include = sk.keys },
  name = (rawget(ferry, "nope") == nil and ferry.api_version == 1 and sk[1] == nil) and "ok" or "bad","#
        )
    ))
    .unwrap();
    assert_eq!(plan.name, "ok");
    let e = err(&plan_with(
        "  name = ferry.strict({ production = \"p\" }, \"common\").prodution,",
    ));
    assert!(
        e.to_string()
            .ends_with("plan.lua:6: common has no field `prodution` (did you mean `production`?)"),
        "{e}"
    );
}

#[test]
fn wrong_types_name_field_expected_and_found() {
    let e = err(&plan_with("  keys = { include = { 'a:*', 5 } },"));
    assert!(
        matches!(&e, PlanError::WrongType { field, expected, found, .. }
            if field == "keys.include[2]" && expected == "a string" && found == "number"),
        "{e:?}"
    );
    assert!(
        e.to_string()
            .contains("keys.include[2]: expected a string, found number"),
        "{e}"
    );

    let e = err(&plan_with("  keys = { include = 'a:*' },"));
    assert!(
        e.to_string()
            .contains("keys.include: expected a list of key patterns, found string"),
        "{e}"
    );

    let e = err(&plan_with("  on_command = 'drop everything',"));
    assert!(
        e.to_string()
            .contains("on_command: expected a function, found string"),
        "{e}"
    );

    let e = err(&plan_with("  snapshot = { workers = 2.5 },"));
    assert!(
        e.to_string()
            .contains("snapshot.workers: expected an integer, found number"),
        "{e}"
    );

    let e = err(&plan_with("  rewrite = { ferry.rename_prefix('a:', 7) },"));
    assert!(
        e.to_string()
            .contains("rewrite[1].to: expected a string, found number"),
        "{e}"
    );
}

#[test]
fn invalid_values_name_the_field() {
    let e = err(&plan_with(
        "  phases = { 'snapshot', 'verify', ferry.catch_up { max_lag_ms = -1 } },",
    ));
    assert!(
        matches!(&e, PlanError::Invalid { field, .. } if field == "phases[3].max_lag_ms"),
        "{e:?}"
    );
    let e = err(&format!(
        "{HEAD}return ferry.plan {{ api_version = 1, source = {{ url = 'redis://h:1', capture = 'primay' }}, target = 'redis://h:2' }}"
    ));
    assert!(
        e.to_string()
            .contains("source.capture: unknown value \"primay\" (did you mean `primary`?)"),
        "{e}"
    );
    let e = err(&plan_with("  phases = { 'snapshto' },"));
    assert!(
        e.to_string()
            .contains("phases[1]: unknown phase \"snapshto\" (did you mean `snapshot`?)"),
        "{e}"
    );
    let e = err(&format!(
        "{HEAD}return ferry.plan {{ api_version = 1, source = {{ url = 'http://x' }}, target = 'redis://h:2' }}"
    ));
    assert!(
        e.to_string().contains("source.url: invalid Redis URL"),
        "{e}"
    );
    let e = err(&format!(
        "{HEAD}return ferry.plan {{ api_version = 1, target = 'redis://h:2' }}"
    ));
    assert!(e.to_string().contains("source: is required"), "{e}");
    let e = err(&plan_with("  verify = { full = true, sample = 10 },"));
    assert!(e.to_string().contains("verify.full"), "{e}");
    let e = err(&plan_with("  journal = ferry.embedded { fsync = 'soon' },"));
    assert!(
        e.to_string()
            .contains("journal.fsync: \"soon\" is not a duration"),
        "{e}"
    );
    let e = err(&plan_with(
        "  phases = { ferry.phase('warm', function() end), ferry.phase('warm', function() end) },",
    ));
    assert!(e.to_string().contains("phases[2].name"), "{e}");
    let e = err(&plan_with("  keys = { types = { 'hash', 'sett' } },"));
    assert!(
        e.to_string()
            .contains("keys.types[2]: unknown value \"sett\" (did you mean `set`?)"),
        "{e}"
    );
}

#[test]
fn api_version_is_checked_first() {
    let e = err(&format!(
        "{HEAD}return ferry.plan {{ source = 'redis://h:1' }}"
    ));
    assert!(
        matches!(&e, PlanError::ApiVersion { found: None, .. }),
        "{e:?}"
    );
    assert!(
        e.to_string()
            .contains("api_version is missing; this ferry supports api_version = 1"),
        "{e}"
    );
    // Checked before the unknown field and the missing target.
    let e = err(&format!(
        "{HEAD}return ferry.plan {{ api_version = 2, bogus = 1 }}"
    ));
    assert!(
        matches!(&e, PlanError::ApiVersion { found: Some(v), location } if v == "2" && location.file.ends_with("plan.lua")),
        "{e:?}"
    );
    assert!(
        e.to_string()
            .contains("plan.lua:2: api_version = 2 is not supported"),
        "{e}"
    );
    let e = err(&format!("{HEAD}return {{ api_version = '1' }}"));
    assert!(
        e.to_string()
            .contains("api_version = \"1\" is not supported"),
        "{e}"
    );
}

#[test]
fn env_overrides_defaults_and_missing_variables() {
    let e = err(&format!(
        "{HEAD}\nreturn ferry.plan {{ api_version = 1, source = ferry.env 'FERRY_TEST_SURELY_UNSET', target = 'redis://h:2' }}"
    ));
    let PlanError::MissingEnv { name, location } = &e else {
        panic!("{e:?}")
    };
    assert_eq!(name, "FERRY_TEST_SURELY_UNSET");
    assert_eq!(location.as_ref().and_then(|l| l.line), Some(3), "{e}");
    assert!(
        e.to_string()
            .contains("`FERRY_TEST_SURELY_UNSET` is not set"),
        "{e}"
    );

    // Overrides come before the environment; defaults apply only when both are missing.
    let plan = load(&format!(
        "{HEAD}return ferry.plan {{ api_version = 1, name = ferry.env('PATH', 'x'), source = ferry.env('FERRY_TEST_UNSET_TOO', 'redis://d:1'), target = ferry.env 'TARGET_URL' }}"
    ))
    .unwrap();
    assert_eq!(plan.source.url, "redis://d:1");
    assert_eq!(plan.name, std::env::var("PATH").unwrap());
    let d = PlanDir::new();
    let path = d.file("p.lua", &format!("{HEAD}return ferry.plan {{ api_version = 1, name = ferry.env 'PATH', source = 'redis://h:1', target = 'redis://h:2' }}"));
    let plan = plan::load(&path, &[("PATH".into(), "overridden".into())]).unwrap();
    assert_eq!(plan.name, "overridden");
}

#[test]
fn runtime_errors_and_non_plans_are_located() {
    let e = err(&format!("{HEAD}local t = nil\nlocal x = t.field\n"));
    let PlanError::Runtime {
        location, message, ..
    } = &e
    else {
        panic!("{e:?}")
    };
    assert_eq!(location.as_ref().and_then(|l| l.line), Some(3));
    assert!(message.contains("attempt to index a nil value"), "{e}");

    let e = err(&format!("{HEAD}error('no plan for you')\n"));
    assert!(e.to_string().contains("plan.lua:2: no plan for you"), "{e}");

    let e = err(&format!("{HEAD}return 42\n"));
    assert!(
        matches!(&e, PlanError::NotAPlan { found, .. } if found == "number"),
        "{e:?}"
    );

    // A helper misused: the error points at the caller's line, not into scripts/ferry.lua.
    let e = err(&format!("{HEAD}\nlocal j = ferry.embedded 'x'\n"));
    assert!(
        e.to_string()
            .contains("plan.lua:3: ferry.embedded expects a table, got string"),
        "{e}"
    );
}

// ---- hooks ----------------------------------------------------------------------------------

#[test]
fn hook_runtime_errors_become_hook_errors() {
    let d = PlanDir::new();
    let plan = d
        .load(&plan_with(
            "  on_command = function(cmd)\n    if cmd.name == 'DEL' then error('no deletes') end\n    local t = nil\n    if cmd.name == 'SET' then return t.x end\n  end,",
        ))
        .unwrap();
    let hook = plan.on_command.as_ref().unwrap();
    let a = argv(&["SET", "k", "v"]);
    let e = hook.call(0, &a, &key_positions(&a)).unwrap_err();
    assert_eq!(e.hook, "on_command");
    assert_eq!(e.kind, HookErrorKind::Runtime);
    assert_eq!(e.location.as_ref().and_then(|l| l.line), Some(9), "{e}");
    assert!(e.message.contains("attempt to index a nil value"), "{e}");
    assert!(e.to_string().starts_with("on_command failed at "), "{e}");

    let a = argv(&["DEL", "k"]);
    let e = hook.call(0, &a, &key_positions(&a)).unwrap_err();
    assert!(e.message.contains("no deletes"), "{e}");
    assert_eq!(e.location.as_ref().and_then(|l| l.line), Some(7), "{e}");
    let a = argv(&["INCR", "k"]);
    assert_eq!(
        hook.call(0, &a, &key_positions(&a)).unwrap(),
        HookOutcome::Keep
    );
    assert_eq!(hook.stats().calls, 3);
    assert_eq!(hook.stats().errors, 2);

    // Fail policy: map_command returns the error; Skip: dropped, error recorded.
    let mut out = Vec::new();
    let table = CommandTable::builtin();
    assert!(
        plan.map_command(table, 0, argv(&["SET", "k", "v"]), &mut out)
            .is_err()
    );
    let plan = d
        .load(&plan_with(
            "  on_hook_error = 'skip',\n  on_command = function(cmd) if cmd.name == 'SET' then error('boom') end end,",
        ))
        .unwrap();
    let mapped = plan
        .map_command(table, 0, argv(&["SET", "k", "v"]), &mut out)
        .unwrap();
    assert!(
        matches!(&mapped, Mapped::Skipped(e) if e.message.contains("boom")),
        "{mapped:?}"
    );
    assert!(out.is_empty());
    assert!(matches!(
        plan.map_command(table, 0, argv(&["INCR", "k"]), &mut out)
            .unwrap(),
        Mapped::Kept
    ));
    assert_eq!(out.len(), 1);
    let report = plan::check(&plan, &[(0, argv(&["SET", "k", "v"]))]);
    assert!(matches!(
        &report.lines[0].outcome,
        CheckOutcome::HookError { skipped: true, .. }
    ));
    assert!(
        report.to_string().contains("the command would be dropped"),
        "{report}"
    );
}

#[test]
fn command_handle_reads_and_rewrites() {
    let plan = load(&plan_with(
        r#"  on_command = function(cmd)
    assert(cmd.name == "LMOVE" or cmd.name == "SET" or cmd.name == "DEL" or cmd.name == "MSET", cmd.name)
    if cmd.name == "LMOVE" then
      assert(#cmd.args == 4 and cmd.args[1] == "src" and cmd:arg(4) == "RIGHT" and cmd:arg(5) == nil)
      local keys = cmd:keys()
      assert(#keys == 2 and keys[2] == "dst" and cmd:key(1) == "src")
      assert(tostring(cmd) == 'db3 "LMOVE" "src" "dst" "LEFT" "RIGHT"', tostring(cmd))
      cmd:set_key(2, "new:" .. cmd:key(2))
      cmd:set_arg(3, "RIGHT")
      cmd:set_db(cmd.db + 1)
      cmd:emit("expire", cmd:key(2), 60)
      cmd:emit_to(9, "DEL", "elsewhere")
    elseif cmd.name == "SET" then
      if cmd:key(1) == "bad" then cmd:set_key(2, "x") end
      if cmd:key(1) == "\0bin\255" then cmd:set_key(1, cmd:key(1) .. "\1") end
    elseif cmd.name == "DEL" then
      cmd:drop()
    elseif cmd.name == "MSET" then
      cmd:drop()
      for i = 1, #cmd.args, 2 do cmd:emit("SET", cmd.args[i], cmd.args[i + 1]) end
    end
  end,"#,
    ))
    .unwrap();
    let hook = plan.on_command.unwrap();
    let call = |db: u32, args: &[&[u8]]| {
        let a = Argv::from_args(args);
        hook.call(db, &a, &key_positions(&a))
    };
    let out = call(3, &[b"LMOVE", b"src", b"dst", b"LEFT", b"RIGHT"]).unwrap();
    assert_eq!(
        out,
        HookOutcome::Replace(vec![
            (4, argv(&["LMOVE", "src", "new:dst", "RIGHT", "RIGHT"])),
            (4, argv(&["EXPIRE", "new:dst", "60"])),
            (9, argv(&["DEL", "elsewhere"])),
        ])
    );
    assert_eq!(call(0, &[b"DEL", b"k"]).unwrap(), HookOutcome::Drop);
    assert_eq!(
        call(0, &[b"MSET", b"a", b"1", b"b", b"2"]).unwrap(),
        HookOutcome::Replace(vec![
            (0, argv(&["SET", "a", "1"])),
            (0, argv(&["SET", "b", "2"]))
        ])
    );
    // Binary keys survive the round trip through Lua.
    assert_eq!(
        call(0, &[b"SET", b"\0bin\xff", b"v"]).unwrap(),
        HookOutcome::Replace(vec![(
            0,
            Argv::from_args([&b"SET"[..], b"\0bin\xff\x01", b"v"])
        )])
    );
    let e = call(0, &[b"SET", b"bad", b"v"]).unwrap_err();
    assert!(
        e.message
            .contains("cmd:set_key: no key #2 (this command has 1 key)"),
        "{e}"
    );
    assert_eq!(e.location.as_ref().and_then(|l| l.line), Some(19), "{e}");
}

#[test]
fn command_handle_does_not_outlive_the_call() {
    let plan = load(&plan_with(
        "  on_command = function(cmd)\n    if saved then return saved:arg(1) end\n    saved = cmd\n  end,",
    ))
    .unwrap();
    let hook = plan.on_command.unwrap();
    let a = argv(&["SET", "k", "v"]);
    assert_eq!(hook.call(0, &a, &[1]).unwrap(), HookOutcome::Keep);
    let e = hook.call(0, &a, &[1]).unwrap_err();
    assert_eq!(e.kind, HookErrorKind::Runtime);
}

#[derive(Default)]
struct Ctx {
    log: Vec<String>,
    slept: u64,
    verify_fails: bool,
}

impl PhaseContext for Ctx {
    fn log(&mut self, msg: &str) {
        self.log.push(msg.to_string());
    }
    fn sleep_ms(&mut self, ms: u64) -> Result<(), String> {
        self.slept += ms;
        Ok(())
    }
    fn snapshot(&mut self) -> Result<(), String> {
        self.log.push("<snapshot>".into());
        Ok(())
    }
    fn wait_lag(&mut self, max_ms: u64) -> Result<(), String> {
        self.log.push(format!("<wait_lag {max_ms}>"));
        Ok(())
    }
    fn verify(&mut self) -> Result<u64, String> {
        if self.verify_fails {
            Err("target unreachable".into())
        } else {
            Ok(3)
        }
    }
    fn lag_ms(&mut self) -> Result<u64, String> {
        Ok(42)
    }
}

#[test]
fn phase_hooks_use_the_context() {
    let plan = load(&plan_with(
        r#"  phases = {
    ferry.snapshot { before = function(ctx) ctx.log("before", ctx.phase, ctx.plan) end },
    ferry.cutover { max_pause_ms = 100, switch = function(ctx)
      ctx.snapshot()
      ctx.wait_lag(10)
      ctx.sleep(25)
      ctx.log("diffs=" .. ctx.verify() .. " lag=" .. ctx.lag_ms())
    end },
    ferry.phase("careful", function(ctx)
      local ok, e = pcall(ctx.verify)
      ctx.log(ok and "verified" or ("caught: " .. tostring(e)))
      ctx.verify()
    end, { after = function(ctx) ctx.log("after") end }),
  },"#,
    ))
    .unwrap();
    let mut ctx = Ctx::default();
    plan.phases[0]
        .before
        .as_ref()
        .unwrap()
        .call(&mut ctx)
        .unwrap();
    assert_eq!(ctx.log, ["before\tsnapshot\tplan"]);
    let PhaseKind::Cutover {
        switch: Some(switch),
        max_pause_ms: 100,
        ..
    } = &plan.phases[1].kind
    else {
        panic!()
    };
    let mut ctx = Ctx::default();
    switch.call(&mut ctx).unwrap();
    assert_eq!(ctx.log, ["<snapshot>", "<wait_lag 10>", "diffs=3 lag=42"]);
    assert_eq!(ctx.slept, 25);

    let PhaseKind::Custom { name, run } = &plan.phases[2].kind else {
        panic!()
    };
    assert_eq!(name, "careful");
    assert_eq!(run.name(), "phases[3].run");
    let mut ctx = Ctx {
        verify_fails: true,
        ..Ctx::default()
    };
    let e = run.call(&mut ctx).unwrap_err();
    assert!(
        ctx.log[0].starts_with("caught: ") && ctx.log[0].contains("ctx.verify: target unreachable"),
        "{:?}",
        ctx.log
    );
    assert_eq!(e.hook, "phases[3].run");
    assert!(e.message.contains("ctx.verify: target unreachable"), "{e}");
    assert_eq!(e.location.as_ref().and_then(|l| l.line), Some(17), "{e}");
    plan.phases[2]
        .after
        .as_ref()
        .unwrap()
        .call(&mut ctx)
        .unwrap();
}

#[test]
fn compare_hooks_decide_equality() {
    let plan = load(&plan_with(
        r#"  verify = { rules = {
    { pattern = "skip:*", ignore = true },
    { pattern = "json:*", compare = function(a, b) return a.value:lower() == b.value:lower() and a.ttl_ms == b.ttl_ms end },
    { pattern = "bad:*", compare = function(a, b) end },
  } },"#,
    ))
    .unwrap();
    let v = |value: &str| CompareValue {
        key: b"json:1".to_vec(),
        type_name: "string".into(),
        value: value.into(),
        ttl_ms: -1,
    };
    let rule = plan.verify.rule_for(b"json:1").unwrap();
    let cmp = rule.compare.as_ref().unwrap();
    assert!(cmp.call(&v("ABC"), &v("abc")).unwrap());
    assert!(!cmp.call(&v("ABC"), &v("abd")).unwrap());
    assert!(plan.verify.rule_for(b"skip:1").unwrap().ignore);
    assert!(plan.verify.rule_for(b"other").is_none());
    let bad = plan
        .verify
        .rule_for(b"bad:1")
        .unwrap()
        .compare
        .as_ref()
        .unwrap();
    let e = bad.call(&v("a"), &v("a")).unwrap_err();
    assert_eq!(e.kind, HookErrorKind::BadReturn);
    assert_eq!(e.hook, "verify.rules[3].compare");
}

#[test]
fn hooks_are_send_and_sync_and_serialize_calls() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Plan>();
    assert_send_sync::<plan::CommandHook>();
    assert_send_sync::<plan::PhaseHook>();
    assert_send_sync::<plan::CompareHook>();
    let plan = load(&plan_with(
        "  on_command = function(cmd) count = (count or 0) + 1; cmd:set_arg(2, tostring(count)) end,",
    ))
    .unwrap();
    let hook = plan.on_command.unwrap();
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let hook = hook.clone();
            std::thread::spawn(move || {
                let a = argv(&["SET", "k", "v"]);
                for _ in 0..250 {
                    hook.call(0, &a, &[1]).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let a = argv(&["SET", "k", "v"]);
    assert_eq!(
        hook.call(0, &a, &[1]).unwrap(),
        HookOutcome::Replace(vec![(0, argv(&["SET", "k", "1001"]))])
    );
}

// ---- sandbox --------------------------------------------------------------------------------

#[test]
fn sandbox_escapes_fail_cleanly() {
    let escapes = [
        ("io.open('/etc/passwd')", "global 'io'"),
        ("os.execute('true')", "field 'execute'"),
        ("os.getenv('HOME')", "field 'getenv'"),
        ("os.exit(1)", "field 'exit'"),
        ("os.remove('/tmp/x')", "field 'remove'"),
        ("require 'os'", "module 'os' not found"),
        ("require 'io'", "module 'io' not found"),
        ("require '../../etc/passwd'", "invalid module name"),
        ("package.loadlib('libc.so.6', 'system')", "global 'package'"),
        ("debug.getinfo(1)", "global 'debug'"),
        ("dofile('/etc/passwd')", "global 'dofile'"),
        ("loadfile('/etc/passwd')", "global 'loadfile'"),
        ("string.dump(print)", "field 'dump'"),
        ("local _ = (''):dump()", "method 'dump'"),
        (
            "assert(load('\\27Lua\\84\\0\\25\\147\\13\\10\\26\\10'))",
            "attempt to load a binary chunk",
        ),
        (
            "assert(load('\\27Lua', 'x', 'b'))",
            "attempt to load a binary chunk",
        ),
        ("collectgarbage('stop')", "only collectgarbage(\"count\")"),
        ("coroutine.wrap(print)", "global 'coroutine'"),
    ];
    for (code, expect) in escapes {
        let e = err(&format!("{HEAD}{code}\n"));
        let PlanError::Runtime {
            message, location, ..
        } = &e
        else {
            panic!("{code}: {e:?}")
        };
        assert!(message.contains(expect), "{code}: {e}");
        assert_eq!(
            location.as_ref().and_then(|l| l.line),
            Some(2),
            "{code}: {e}"
        );
    }
    // What is allowed still works.
    let plan = load(&plan_with(
        "  name = string.format('%s-%d-%s', os.date('!%Y', 0), math.floor(os.clock() * 0), utf8.char(72)) .. (load('return \"t\"')()) .. collectgarbage('count') * 0,",
    ))
    .unwrap();
    assert_eq!(plan.name, "1970-0-Ht0.0");
}

#[test]
fn instruction_budget_stops_infinite_loops() {
    let mut limits = Limits::default();
    limits.load_instructions = 2_000_000;
    limits.hook_instructions = 100_000;
    let d = PlanDir::new();
    let e = d
        .load_with(&format!("{HEAD}while true do end\n"), limits)
        .unwrap_err();
    assert!(
        matches!(
            e,
            PlanError::Limit {
                limit: Limit::Instructions(2_000_000),
                ..
            }
        ),
        "{e:?}"
    );
    // The plan's own pcall cannot swallow it.
    let e = d
        .load_with(
            &format!("{HEAD}while true do pcall(function() while true do end end) end\n"),
            limits,
        )
        .unwrap_err();
    assert!(matches!(e, PlanError::Limit { .. }), "{e:?}");
    let e = d
        .load_with(
            &format!("{HEAD}local function f() return f() end\nxpcall(f, function(m) return m end)\nwhile true do end"),
            limits,
        )
        .unwrap_err();
    assert!(matches!(e, PlanError::Limit { .. }), "{e:?}");

    let plan = d
        .load_with(
            &plan_with(
                "  on_command = function(cmd) if cmd.name == 'SET' then while true do end end end,",
            ),
            limits,
        )
        .unwrap();
    let hook = plan.on_command.unwrap();
    let a = argv(&["SET", "k", "v"]);
    let e = hook.call(0, &a, &[1]).unwrap_err();
    assert_eq!(
        e.kind,
        HookErrorKind::Limit(Limit::Instructions(100_000)),
        "{e}"
    );
    assert!(
        e.to_string()
            .contains("instruction budget of 100000 exceeded"),
        "{e}"
    );
    // The next call has a fresh budget.
    let a = argv(&["DEL", "k"]);
    assert_eq!(hook.call(0, &a, &[1]).unwrap(), HookOutcome::Keep);
}

#[test]
fn memory_limit_stops_memory_bombs() {
    let mut limits = Limits::default();
    limits.memory_bytes = 16 << 20;
    let mut unbudgeted = limits;
    unbudgeted.hook_instructions = u64::MAX;
    let d = PlanDir::new();
    let bombs = [
        "local s = string.rep('x', 1 << 30)",
        "local t = {} for i = 1, 1e9 do t[i] = i end",
        "local s = 'x' while true do s = s .. s end",
    ];
    for bomb in bombs {
        let e = d.load_with(&format!("{HEAD}{bomb}\n"), limits).unwrap_err();
        assert!(
            matches!(
                e,
                PlanError::Limit {
                    limit: Limit::Memory(_),
                    ..
                }
            ),
            "{bomb}: {e:?}"
        );
    }
    let plan = d
        .load_with(
            &plan_with("  on_command = function(cmd) local t = {} for i = 1, 1e9 do t[i] = cmd.args end end,"),
            unbudgeted,
        )
        .unwrap();
    let hook = plan.on_command.unwrap();
    let a = argv(&["SET", "k", "v"]);
    let e = hook.call(0, &a, &[1]).unwrap_err();
    assert!(
        matches!(e.kind, HookErrorKind::Limit(Limit::Memory(_))),
        "{e:?}"
    );
    // Emitting without end is capped too.
    let plan = d
        .load_with(
            &plan_with("  on_command = function(cmd) while true do cmd:emit('PING') end end,"),
            limits,
        )
        .unwrap();
    let e = plan.on_command.unwrap().call(0, &a, &[1]).unwrap_err();
    assert!(e.message.contains("more than 10000 commands"), "{e}");
}

#[test]
fn require_prefers_the_plan_folder_then_the_embedded_library() {
    let d = PlanDir::new();
    d.file("helpers/util.lua", "return { answer = 42, name = ... }\n");
    d.file("ferry/sidekiq.lua", "return { keys = { 'mine:*' } }\n");
    let plan = d
        .load(&plan_with(
            "  name = require('helpers.util').name .. require('helpers.util').answer,\n  keys = { include = require('ferry.sidekiq').keys },\n  verify = { rules = require('ferry.elasticache') and {} },",
        ))
        .unwrap();
    assert_eq!(plan.name, "helpers.util42");
    assert!(
        plan.keys.allows(0, b"mine:1"),
        "the plan folder's ferry/sidekiq.lua shadows the embedded one"
    );
    assert!(!plan.keys.allows(0, b"queue:default"));

    let d = PlanDir::new();
    let plan = d
        .load(&plan_with(
            "  keys = { include = require('ferry.sidekiq').keys },",
        ))
        .unwrap();
    assert!(
        plan.keys.allows(0, b"queue:default"),
        "embedded sidekiq preset"
    );

    let e = d
        .load(&format!("{HEAD}require 'nowhere.to_be_found'\n"))
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("module 'nowhere.to_be_found' not found"),
        "{e}"
    );
    assert!(e.to_string().contains("nowhere/to_be_found.lua"), "{e}");

    d.file("a.lua", "return require 'b'\n");
    d.file("b.lua", "return require 'a'\n");
    let e = d.load(&format!("{HEAD}require 'a'\n")).unwrap_err();
    assert!(e.to_string().contains("circular require"), "{e}");

    d.file("oops.lua", "local x = nil\nreturn x.y\n");
    let e = d.load(&format!("{HEAD}require 'oops'\n")).unwrap_err();
    let PlanError::Runtime { location, .. } = &e else {
        panic!("{e:?}")
    };
    let location = location.as_ref().unwrap();
    assert!(
        location.file.ends_with("oops.lua") && location.line == Some(2),
        "{e}"
    );
}

#[test]
fn lua_library_behaves_as_documented() {
    // Lua API tests are Lua assertions: the plan fails to load if one does not hold.
    let plan = load(&plan_with(
        r#"  name = (function()
    local rename = require "ferry.rename"
    local sidekiq = require "ferry.sidekiq"
    local ec = require "ferry.elasticache"
    local m = ferry.merge({ a = { b = 1, c = 2 }, l = { 1, 2 }, j = ferry.embedded { dir = "d" } },
                          { a = { c = 3 }, l = { 9 }, j = ferry.sqs { queue_url = "q" } })
    assert(m.a.b == 1 and m.a.c == 3 and #m.l == 1 and m.l[1] == 9)
    assert(m.j.kind == "sqs" and m.j.dir == nil, "records of another kind replace")
    local rules = rename.prefixes { ["a:"] = "x:", ["a:b:"] = "y:" }
    assert(rules[1].from == "a:b:" and rules[2].from == "a:", "longest first")
    local all = rename.concat(rename.swap("p:", "q:"), ferry.move_db(1, 0), rename.dbs { [3] = 2 })
    assert(#all == 4 and all[3].kind == "move_db" and all[4].from == 3)
    assert(rename.namespace("ns:").from == "" and rename.strip("old:").to == "")
    local sk = sidekiq.namespaced "sk"
    assert(sk.keys[2] == "sk:queue:*" and sk.verify_rules[1].pattern == "sk:processes")
    assert(ec.source("rediss://h:6379").capture == "primary")
    assert(ec.url { host = "h", token = "p@ss#word" } == "rediss://:p%40ss%23word@h:6379")
    assert(ferry.drop_commands("A", "B").commands[2] == "B")
    assert(ferry.api_version == 1)
    return "lua-ok"
  end)(),
  rewrite = { require("ferry.rename").namespace "ns:", ferry.drop_commands { "publish", "script flush" } },"#,
    ))
    .unwrap();
    assert_eq!(plan.name, "lua-ok");
    assert_eq!(
        plan.rewrite,
        [
            Rule::RenamePrefix {
                from: vec![],
                to: b"ns:".to_vec()
            },
            Rule::DropCommands(vec!["PUBLISH".into(), "SCRIPT|FLUSH".into()])
        ]
    );
}

#[test]
fn check_uses_plan_samples_and_warns() {
    let plan = load(&plan_with(
        r#"  keys = { include = { "fs:*" }, dbs = { 0 } },
  rewrite = { ferry.rename_prefix("fs:", "n:"), ferry.move_db(3, 0), ferry.drop_commands { "PUBLSH" } },
  check = { samples = { { "set", "fs:1", 5 }, { db = 1, "SET", "fs:1", "v" }, { "FLUSHDB" } } },"#,
    ))
    .unwrap();
    assert_eq!(plan.check_samples.len(), 3);
    let report = plan::check(&plan, &[]);
    let text = report.to_string();
    assert!(
        text.contains(
            r#"db0 "SET" "fs:1" "5": kept as db0 "SET" "n:1" "5" (renamed "fs:1" → "n:1")"#
        ),
        "{text}"
    );
    assert!(
        text.contains(r#"db1 "SET" "fs:1" "v": excluded by keys"#),
        "{text}"
    );
    assert!(
        text.contains("no keys, so keys.include/exclude do not apply"),
        "{text}"
    );
    assert!(
        text.contains("`PUBLSH` is not a Redis 7.0 command (did you mean `PUBLISH`?)"),
        "{text}"
    );
    assert!(text.contains("move_db(3, 0) never applies"), "{text}");
    // Built-in samples when neither the caller nor the plan gives any.
    let plain = load(&plan_with("")).unwrap();
    let report = plan::check(&plain, &[]);
    assert_eq!(report.lines.len(), plan::builtin_samples().len());
    assert!(
        report
            .lines
            .iter()
            .all(|l| l.to_string().ends_with(": kept")),
        "{report}"
    );
}

/// `ferry check` says what replay does with a command mixing migrated and left-out keys: the
/// stitcher sends nothing and re-copies the migrated keys (it does not replay it whole).
#[test]
fn check_reports_mixed_key_commands_as_replay_handles_them() {
    let plan = load(&plan_with(
        r#"  keys = { exclude = { "cache:*" } },
  rewrite = { ferry.rename_prefix("fs:", "n:") },
  check = { samples = {
    { "MSET", "fs:a", "1", "cache:b", "1" },
    { "RENAME", "fs:a", "cache:b" },
    { "SUNIONSTORE", "fs:u", "cache:s1", "fs:s2" },
    { "MSET", "fs:a", "1", "fs:b", "2" },
    { "DEL", "cache:x", "cache:y" },
  } },"#,
    ))
    .unwrap();
    let report = plan::check(&plan, &[]);
    let lines: Vec<String> = report.lines.iter().map(|l| l.to_string()).collect();
    let recopied = |i: usize| match &report.lines[i].outcome {
        CheckOutcome::Recopied(keys) => keys
            .iter()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect::<Vec<_>>(),
        other => panic!("line {i}: expected Recopied, got {other:?}"),
    };
    assert_eq!(recopied(0), ["fs:a"]);
    assert_eq!(
        lines[0],
        r#"db0 "MSET" "fs:a" "1" "cache:b" "1": not sent (it mixes keys the plan migrates with keys it leaves out); re-copies "fs:a""#
    );
    assert_eq!(recopied(1), ["fs:a"]);
    assert!(lines[1].contains(r#"not sent"#), "{}", lines[1]);
    assert!(!lines[1].contains("kept"), "{}", lines[1]);
    assert_eq!(recopied(2), ["fs:u", "fs:s2"]);
    assert!(
        lines[2].ends_with(r#"re-copies "fs:u", "fs:s2""#),
        "{}",
        lines[2]
    );
    assert!(
        lines[3].contains(r#"kept as db0 "MSET" "n:a" "1" "n:b" "2""#),
        "{}",
        lines[3]
    );
    assert!(lines[4].ends_with("excluded by keys"), "{}", lines[4]);
    // The same decision the stitcher makes, through the same function.
    let keys: [&[u8]; 2] = [b"fs:a", b"cache:b"];
    assert_eq!(
        ferry::command::mixed_keys(keys, |k| plan.keys.allows(0, k)),
        Some(vec![0])
    );
}

// ---- rules and globs ------------------------------------------------------------------------

#[test]
fn apply_rules_renames_every_key_of_multi_key_commands() {
    let rules = [
        Rule::RenamePrefix {
            from: b"fs:".to_vec(),
            to: b"freshservice:".to_vec(),
        },
        Rule::MoveDb { from: 1, to: 0 },
    ];
    let all = KeyFilter::everything();
    let table = CommandTable::builtin();
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["RENAME", "fs:a", "fs:b"],
            &["RENAME", "freshservice:a", "freshservice:b"],
        ),
        (
            &["SUNIONSTORE", "fs:d", "fs:a", "x:b", "fs:c"],
            &[
                "SUNIONSTORE",
                "freshservice:d",
                "freshservice:a",
                "x:b",
                "freshservice:c",
            ],
        ),
        (
            &["LMOVE", "fs:a", "fs:b", "LEFT", "RIGHT"],
            &["LMOVE", "freshservice:a", "freshservice:b", "LEFT", "RIGHT"],
        ),
        (
            &["MSET", "fs:a", "fs:value", "fs:b", "2"],
            &["MSET", "freshservice:a", "fs:value", "freshservice:b", "2"],
        ),
        (
            &["EVAL", "return 1", "2", "fs:k1", "fs:k2", "fs:arg"],
            &[
                "EVAL",
                "return 1",
                "2",
                "freshservice:k1",
                "freshservice:k2",
                "fs:arg",
            ],
        ),
        (
            &[
                "ZUNIONSTORE",
                "fs:out",
                "2",
                "fs:a",
                "fs:b",
                "WEIGHTS",
                "1",
                "2",
            ],
            &[
                "ZUNIONSTORE",
                "freshservice:out",
                "2",
                "freshservice:a",
                "freshservice:b",
                "WEIGHTS",
                "1",
                "2",
            ],
        ),
        (
            &["SORT", "fs:list", "STORE", "fs:sorted"],
            &["SORT", "freshservice:list", "STORE", "freshservice:sorted"],
        ),
        (
            &["XREAD", "COUNT", "1", "STREAMS", "fs:s1", "fs:s2", "0", "0"],
            &[
                "XREAD",
                "COUNT",
                "1",
                "STREAMS",
                "freshservice:s1",
                "freshservice:s2",
                "0",
                "0",
            ],
        ),
        (
            &["SET", "fs:k", "fs:v", "GET"],
            &["SET", "freshservice:k", "fs:v", "GET"],
        ),
    ];
    for (input, expected) in cases {
        match plan::apply_rules(&rules, &all, table, 1, argv(input)) {
            Applied::Keep { db, argv: out } => {
                assert_eq!(db, 0);
                assert_eq!(out, argv(expected), "{input:?}");
            }
            other => panic!("{input:?}: {other:?}"),
        }
    }
}

#[test]
fn map_command_runs_rules_then_the_hook() {
    let plan = load(&plan_with(
        r#"  keys = { exclude = { "tmp:*" } },
  rewrite = { ferry.rename_prefix("a:", "b:"), ferry.drop_commands { "PUBLISH" } },
  on_command = function(cmd)
    -- The hook sees the renamed key.
    if cmd:key(1) == "b:drop" then cmd:drop() end
  end,"#,
    ))
    .unwrap();
    let table = CommandTable::builtin();
    let mut out = Vec::new();
    let r = |args: &[&str], out: &mut Vec<(u32, Argv)>| {
        plan.map_command(table, 0, argv(args), out).unwrap()
    };
    assert!(matches!(r(&["SET", "a:1", "v"], &mut out), Mapped::Kept));
    assert!(matches!(
        r(&["SET", "a:drop", "v"], &mut out),
        Mapped::HookDropped
    ));
    assert!(matches!(
        r(&["SET", "tmp:1", "v"], &mut out),
        Mapped::Excluded
    ));
    assert!(matches!(
        r(&["PUBLISH", "c", "m"], &mut out),
        Mapped::Dropped
    ));
    assert_eq!(out, [(0, argv(&["SET", "b:1", "v"]))]);
}

/// Patterns chosen for their corners: classes, ranges (reversed, open, with `]`), escapes,
/// negation, unterminated classes, stars in odd places, high bytes.
const PATTERNS: &[&[u8]] = &[
    b"*",
    b"**",
    b"a*",
    b"*a",
    b"*a*",
    b"a*b*c",
    b"?",
    b"??",
    b"a?c",
    b"[abc]",
    b"[^abc]",
    b"[a-c]",
    b"[c-a]",
    b"[a-]",
    b"[]a]",
    b"[]",
    b"[^]",
    b"[",
    b"[^",
    b"[abc",
    b"[a-c",
    b"\\*",
    b"a\\",
    b"\\[a]",
    b"[\\]]",
    b"[\\-]",
    b"[*]",
    b"[?]",
    b"*[",
    b"a[b-]*",
    b"[a-\xff]",
    b"[\x80-\xff]*",
    b"\xff*",
    b"*\x00*",
    b"k:[0-9][0-9]",
    b"k:*:x",
    b"*:*:*",
    b"[a-c-e]",
    b"[^a-c]*",
    b"a**b",
    b"*?*?",
    b"",
];

const KEYS: &[&[u8]] = &[
    b"a", b"b", b"c", b"d", b"e", b"-", b"]", b"[", b"\\", b"*", b"?", b"^", b"ab", b"abc",
    b"axbxc", b"aXbYcZ", b"ba", b"k:12", b"k:1x", b"k:a:x", b"k::x", b"a:b:c", b"\xff", b"\xfe",
    b"\x80", b"\x00", b"x\x00y", b"a\\", b"a*", b"[a]", b"ab-", b"abb", b"a-", b"aab",
];

#[test]
fn glob_matches_like_redis_keys() {
    let server = RedisServer::start();
    let mut con = server.conn();
    for key in KEYS {
        let _: () = redis::cmd("SET").arg(*key).arg(1).query(&mut con).unwrap();
    }
    for pattern in PATTERNS {
        let mut want: Vec<Vec<u8>> = redis::cmd("KEYS").arg(*pattern).query(&mut con).unwrap();
        want.sort();
        let glob = Glob::new(pattern);
        let mut got: Vec<Vec<u8>> = KEYS
            .iter()
            .filter(|k| glob.matches(k))
            .map(|k| k.to_vec())
            .collect();
        got.sort();
        assert_eq!(got, want, "pattern {glob}");
    }
}

#[test]
fn glob_agrees_with_scan_match_on_random_patterns() {
    // A small xorshift keeps the test reproducible without a seed file.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let alphabet: &[u8] = b"ab*?[]^-\\";
    let key_alphabet: &[u8] = b"ab-]^\\*";
    let server = RedisServer::start();
    let mut con = server.conn();
    let mut keys: Vec<Vec<u8>> = (0..300)
        .map(|_| {
            let len = 1 + (next() % 5) as usize;
            (0..len)
                .map(|_| key_alphabet[(next() % key_alphabet.len() as u64) as usize])
                .collect()
        })
        .collect();
    keys.sort();
    keys.dedup();
    let mut pipe = redis::pipe();
    for k in &keys {
        pipe.cmd("SET").arg(k).arg(1).ignore();
    }
    let _: () = pipe.query(&mut con).unwrap();
    for _ in 0..400 {
        let len = 1 + (next() % 6) as usize;
        let pattern: Vec<u8> = (0..len)
            .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
            .collect();
        let (_, mut want): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(0)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(10_000)
            .query(&mut con)
            .unwrap();
        want.sort();
        let glob = Glob::new(&pattern);
        let got: Vec<Vec<u8>> = keys.iter().filter(|k| glob.matches(k)).cloned().collect();
        assert_eq!(got, want, "pattern {glob}");
    }
}

#[test]
fn odd_error_values_and_finalizers_fail_cleanly() {
    let mut limits = Limits::default();
    limits.load_instructions = 1_000_000;
    let cases = [
        ("error({})", "table: "),
        ("error(nil)", "nil"),
        (
            "error(setmetatable({}, {__tostring = function() return 'custom' end}))",
            "custom",
        ),
        (
            "error(setmetatable({}, {__tostring = function() while true do end end}))",
            "instruction budget",
        ),
        (
            "local function f() return 1 + f() end f()",
            "instruction budget",
        ),
        // An endless finalizer would run at close, outside any budget: refused up front.
        (
            "setmetatable({}, {__gc = function() while true do end end})",
            "__gc metamethods are not available",
        ),
        // Lua 5.4 ignores a __gc added after setmetatable, so this one never runs.
        (
            "local mt = {} setmetatable({}, mt) mt.__gc = function() while true do end end error('late')",
            "late",
        ),
    ];
    for (code, expect) in cases {
        let e = PlanDir::new()
            .load_with(&format!("{HEAD}{code}\n"), limits)
            .unwrap_err();
        assert!(e.to_string().contains(expect), "{code}: {e}");
        let plan = PlanDir::new()
            .load_with(
                &plan_with(&format!("  on_command = function(cmd) {code} end,")),
                limits,
            )
            .unwrap();
        let e = plan
            .on_command
            .unwrap()
            .call(0, &argv(&["SET", "k", "v"]), &[1])
            .unwrap_err();
        assert!(e.to_string().contains(expect), "{code}: {e}");
    }
}

#[test]
fn shebang_lines_and_bytecode_plan_files() {
    // A `#!` line is a comment, and line numbers still count it.
    let e = err(&format!("#!/usr/bin/env ferry run\n{HEAD}error('here')\n"));
    assert!(e.to_string().contains("plan.lua:3: here"), "{e}");
    // A precompiled plan is refused before anything runs.
    let d = PlanDir::new();
    let path = d.dir.path().join("plan.lua");
    std::fs::write(&path, b"\x1bLua\x54\x00\x19\x93\r\n\x1a\n\x04\x08\x08").unwrap();
    let e = plan::load(&path, &env()).unwrap_err();
    assert!(
        matches!(&e, PlanError::Syntax { message, .. } if message.contains("binary chunk")),
        "{e:?}"
    );
}

// ---- ferry check, the binary ----------------------------------------------------------------

/// `ferry check plan.lua | head -1`: a reader that stops early is not an error. ferry stops
/// writing quietly and exits with the plan's verdict (0 here: the plan is valid).
#[test]
fn check_output_into_a_closed_pipe_exits_quietly() {
    use std::io::{BufRead, BufReader, Read};
    let dir = PlanDir::new();
    // Far more output than a pipe buffers, so ferry is still writing when the pipe closes.
    let path = dir.file(
        "plan.lua",
        &plan_with(
            r#"  check = { samples = (function()
    local t = {}
    for i = 1, 20000 do t[i] = { "SET", "fs:" .. i, "value" } end
    return t
  end)() },"#,
        ),
    );
    let mut child = crate::cli::ferry()
        .args(["check", path.to_str().unwrap()])
        .args(["--set", "SOURCE_URL=redis://127.0.0.1:1"])
        .args(["--set", "TARGET_URL=redis://127.0.0.1:2"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.contains("20000 sample commands"), "{first}");
    // The reader (and with it the pipe) is gone here, like `head -1` exiting.
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status = child.wait().unwrap();
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert_eq!(stderr, "", "a closed pipe is not worth a message");
}

#[test]
fn metrics_addr_is_read_and_a_bad_one_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plan.lua");
    let write = |line: &str| {
        std::fs::write(
            &path,
            format!(
                "local ferry = require 'ferry'\nreturn ferry.plan {{\n  api_version = 1,\n  source = {{ url = 'redis://127.0.0.1:1' }},\n  target = {{ url = 'redis://127.0.0.1:2' }},\n{line}\n}}\n"
            ),
        )
        .unwrap();
    };
    write("  metrics_addr = '127.0.0.1:9187',");
    let plan = ferry::plan::load(&path, &[]).unwrap();
    assert_eq!(plan.metrics_addr, Some("127.0.0.1:9187".parse().unwrap()));
    write("  metrics_addr = 'localhost:metrics',");
    let e = ferry::plan::load(&path, &[]).unwrap_err().to_string();
    assert!(
        e.contains("metrics_addr") && e.contains("must be HOST:PORT") && e.contains("plan.lua:2"),
        "{e}"
    );
}
