//! `ferry run` end to end: plans that filter, rename, move dbs and hook commands, applied to the
//! snapshot and to live writes alike and checked with the oracle; and broken plans that stop
//! with exit code 2 before the target is touched.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cli::run_ferry;
use crate::support::{OracleOptions, RedisServer, compare};

/// Plan phases used by these tests: the snapshot, catch-up, a soak while the test writes, and a
/// cutover that ends the run at a final fence.
const PHASES: &str = r#"phases = { "snapshot", ferry.catch_up { max_lag_ms = 500 },
    ferry.phase("soak", function(ctx) ctx.sleep(3500) end),
    ferry.cutover { max_pause_ms = 2000 } },"#;

/// Lines of the plan before `body`: the body's first line is line 7 of `plan.lua`.
const BODY_LINE: usize = 7;

fn write_plan(dir: &std::path::Path, body: &str) -> std::path::PathBuf {
    write_plan_phases(dir, body, PHASES)
}

fn write_plan_phases(dir: &std::path::Path, body: &str, phases: &str) -> std::path::PathBuf {
    let path = dir.join("plan.lua");
    let text = format!(
        "local ferry = require \"ferry\"\nreturn ferry.plan {{\n  api_version = 1,\n  source = {{ url = ferry.env \"SOURCE_URL\", capture = \"primary\" }},\n  target = {{ url = ferry.env \"TARGET_URL\" }},\n  journal = ferry.embedded {{ dir = \"state\" }},\n{body}\n  {phases}\n}}\n"
    );
    if let Some(first) = body.lines().next() {
        assert_eq!(text.lines().nth(BODY_LINE - 1), Some(first));
    }
    std::fs::write(&path, text).unwrap();
    path
}

fn cmd(con: &mut redis::Connection, args: &[&str]) {
    let mut c = redis::cmd(args[0]);
    for a in &args[1..] {
        c.arg(*a);
    }
    let _: redis::Value = c.query(con).unwrap();
}

/// Runs `plan` while `live` writes to the source during the soak phase.
fn run_plan(
    source: &RedisServer,
    target: &RedisServer,
    plan: &std::path::Path,
    live: impl FnOnce(&mut redis::Connection, &mut redis::Connection) + Send,
) {
    let (out, _) = run_plan_output(source, target, plan, &[], live);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "ferry run failed:\n{stderr}");
    assert!(stderr.contains("stopped at the final fence"), "{stderr}");
}

/// Runs `plan` (with `extra` arguments) while `live` writes to the source 1.5 s in; returns
/// ferry's output and how long it ran after `live` returned.
fn run_plan_output(
    source: &RedisServer,
    target: &RedisServer,
    plan: &std::path::Path,
    extra: &[&str],
    live: impl FnOnce(&mut redis::Connection, &mut redis::Connection) + Send,
) -> (std::process::Output, Duration) {
    std::thread::scope(|s| {
        let ferry = s.spawn(|| {
            let (src, tgt) = (
                format!("SOURCE_URL={}", source.url()),
                format!("TARGET_URL={}", target.url()),
            );
            let mut args = vec!["run", plan.to_str().unwrap(), "--set", &src, "--set", &tgt];
            args.extend_from_slice(extra);
            let out = run_ferry(&args);
            (out, Instant::now())
        });
        // Writes land after the snapshot and before the cutover (the soak lasts 3.5 s).
        std::thread::sleep(Duration::from_millis(1500));
        let (mut c0, mut c1) = (source.conn_db(0), source.conn_db(1));
        live(&mut c0, &mut c1);
        let written = Instant::now();
        let (out, ended) = ferry.join().unwrap();
        (out, ended.saturating_duration_since(written))
    })
}

fn seed(source: &RedisServer) {
    for db in [0u32, 1] {
        let mut c = source.conn_db(db);
        for i in 0..200 {
            cmd(&mut c, &["SET", &format!("fs:k{i}"), &format!("v{i}")]);
            cmd(&mut c, &["SET", &format!("cache:k{i}"), "c"]);
            cmd(&mut c, &["SET", &format!("other:k{i}"), "o", "EX", "3600"]);
        }
        cmd(&mut c, &["SADD", "fs:s1", "a", "b"]);
        cmd(&mut c, &["SADD", "fs:s2", "b", "c"]);
        cmd(&mut c, &["RPUSH", "fs:l1", "x", "y", "z"]);
        cmd(&mut c, &["SET", "fs:a", "alpha"]);
    }
}

fn live_writes(c0: &mut redis::Connection, c1: &mut redis::Connection) {
    for c in [c0, c1] {
        for i in 0..50 {
            cmd(c, &["INCR", &format!("fs:ctr{}", i % 5)]);
            cmd(c, &["SET", &format!("cache:new{i}"), "c"]);
            cmd(c, &["SET", &format!("fs:new{i}"), "n", "EX", "600"]);
        }
        cmd(c, &["RENAME", "fs:a", "fs:b"]);
        cmd(c, &["SUNIONSTORE", "fs:u", "fs:s1", "fs:s2"]);
        cmd(c, &["LMOVE", "fs:l1", "fs:l2", "LEFT", "RIGHT"]);
        cmd(c, &["DEL", "fs:k7", "cache:k7"]);
        cmd(c, &["MSET", "fs:m1", "1", "cache:m1", "1"]);
    }
}

#[test]
fn exclude_filter_keeps_excluded_keys_off_the_target() {
    let (source, target) = (RedisServer::start(), RedisServer::start());
    seed(&source);
    let dir = tempfile::tempdir().unwrap();
    let plan = write_plan(dir.path(), r#"  keys = { exclude = { "cache:*" } },"#);
    run_plan(&source, &target, &plan, live_writes);
    let opts = OracleOptions {
        map: Some(Arc::new(|db, key: &[u8]| {
            (!key.starts_with(b"cache:")).then(|| (db, key.to_vec()))
        })),
        ttl_tolerance_ms: 1000,
        ..OracleOptions::default()
    };
    let report = compare(&source.url(), &target.url(), &opts);
    report.assert_identical();
    assert!(report.keys_compared > 800, "{report}");
}

#[test]
fn prefix_rename_and_db_move_apply_to_snapshot_and_live_multi_key_writes() {
    let (source, target) = (RedisServer::start(), RedisServer::start());
    seed(&source);
    let dir = tempfile::tempdir().unwrap();
    let plan = write_plan(
        dir.path(),
        r#"  rewrite = { ferry.rename_prefix("fs:", "freshservice:"), ferry.move_db(1, 3) },"#,
    );
    // The target holds an earlier run's copy (renamed keys with old values) and a stale key:
    // the target sweep must delete only the stale one, although `freshservice:k1` is also a
    // name a source key of its own would keep.
    {
        let mut t0 = target.conn_db(0);
        for i in 0..200 {
            cmd(&mut t0, &["SET", &format!("freshservice:k{i}"), "old"]);
        }
        cmd(
            &mut t0,
            &["SET", "freshservice:stale", "gone on the source"],
        );
    }
    run_plan(&source, &target, &plan, live_writes);
    let opts = OracleOptions {
        map: Some(Arc::new(|db, key: &[u8]| {
            let key = match key.strip_prefix(b"fs:") {
                Some(rest) => [b"freshservice:".as_slice(), rest].concat(),
                None => key.to_vec(),
            };
            Some((if db == 1 { 3 } else { db }, key))
        })),
        ttl_tolerance_ms: 1000,
        ..OracleOptions::default()
    };
    let report = compare(&source.url(), &target.url(), &opts);
    report.assert_identical();
    let mut t3 = target.conn_db(3);
    let members: Vec<String> = redis::cmd("SMEMBERS")
        .arg("freshservice:u")
        .query(&mut t3)
        .unwrap();
    assert_eq!(
        members.len(),
        3,
        "SUNIONSTORE was renamed in every key position"
    );
    let moved: Vec<String> = redis::cmd("LRANGE")
        .arg("freshservice:l2")
        .arg(0)
        .arg(-1)
        .query(&mut t3)
        .unwrap();
    assert_eq!(moved, vec!["x".to_string()]);
}

#[test]
fn lua_hook_drops_renames_and_splits_commands_on_top_of_the_snapshot() {
    let (source, target) = (RedisServer::start(), RedisServer::start());
    // Copied by the snapshot (which restores payloads without calling the hook), then written
    // live through it.
    seed(&source);
    let dir = tempfile::tempdir().unwrap();
    let plan = write_plan(
        dir.path(),
        r#"  on_command = function(cmd)
    -- raw:<id> keys live on as ev:<id>; tmp: keys stay behind.
    local function image(k) if k:sub(1, 4) == "raw:" then return "ev:" .. k:sub(5) end return k end
    if cmd.name == "SET" and cmd:key(1):sub(1, 4) == "tmp:" then cmd:drop() return end
    if cmd.name == "MSET" then
      -- One SET per pair (as a target that refuses multi-key writes would need).
      cmd:drop()
      local args = cmd.args
      for i = 1, #args, 2 do cmd:emit("SET", image(args[i]), args[i + 1]) end
      return
    end
    for i, k in ipairs(cmd:keys()) do
      if image(k) ~= k then cmd:set_key(i, image(k)) end
    end
  end,"#,
    );
    run_plan(&source, &target, &plan, |c0, c1| {
        live_writes(c0, c1);
        for i in 0..20 {
            cmd(c0, &["SET", &format!("tmp:{i}"), "x"]);
            cmd(c0, &["SET", &format!("raw:{i}"), &format!("r{i}")]);
            cmd(c0, &["APPEND", &format!("raw:{i}"), "+"]);
            cmd(
                c0,
                &["MSET", &format!("pair:{i}"), "1", &format!("raw:p{i}"), "2"],
            );
        }
    });
    let opts = OracleOptions {
        map: Some(Arc::new(|db, key: &[u8]| {
            if key.starts_with(b"tmp:") {
                return None;
            }
            Some(match key.strip_prefix(b"raw:") {
                Some(id) => (db, [b"ev:".as_slice(), id].concat()),
                None => (db, key.to_vec()),
            })
        })),
        ttl_tolerance_ms: 1000,
        ..OracleOptions::default()
    };
    let report = compare(&source.url(), &target.url(), &opts);
    report.assert_identical();
    assert!(report.keys_compared > 800, "{report}");
    let mut t = target.conn();
    let ev: Option<String> = redis::cmd("GET").arg("ev:3").query(&mut t).unwrap();
    assert_eq!(
        ev.as_deref(),
        Some("r3+"),
        "set_key renamed SET and APPEND alike"
    );
    let pair: Option<String> = redis::cmd("GET").arg("ev:p3").query(&mut t).unwrap();
    assert_eq!(pair.as_deref(), Some("2"), "emitted SETs are final");
    for absent in ["tmp:3", "raw:3", "raw:p3"] {
        let n: u64 = redis::cmd("EXISTS").arg(absent).query(&mut t).unwrap();
        assert_eq!(n, 0, "{absent} reached the target");
    }
}

/// A broken plan: exit code 2, the exact error naming the plan's file and line, and nothing
/// written. Returns the plan's path and, for `ferry check` then `ferry run`, stdout and stderr.
fn run_broken(body: &str) -> (String, Vec<(String, String)>) {
    let (source, target) = (RedisServer::start(), RedisServer::start());
    let mut s = source.conn();
    cmd(&mut s, &["SET", "k", "v"]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plan.lua");
    std::fs::write(&path, body).unwrap();
    let mut outputs = Vec::new();
    for sub in ["check", "run"] {
        let out = run_ferry(&[
            sub,
            path.to_str().unwrap(),
            "--set",
            &format!("SOURCE_URL={}", source.url()),
            "--set",
            &format!("TARGET_URL={}", target.url()),
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(2), "ferry {sub}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        outputs.push((String::from_utf8_lossy(&out.stdout).into_owned(), stderr));
    }
    let mut t = target.conn();
    let size: u64 = redis::cmd("DBSIZE").query(&mut t).unwrap();
    assert_eq!(size, 0, "the target was touched");
    (path.display().to_string(), outputs)
}

/// `ferry check` and `ferry run` both print exactly `ferry: error: {expected}`, where `{plan}`
/// in `expected` stands for the plan file's path.
fn assert_broken(body: &str, expected: &str) {
    let (path, outputs) = run_broken(body);
    let expected = format!("ferry: error: {}\n", expected.replace("{plan}", &path));
    for ((stdout, stderr), sub) in outputs.iter().zip(["check", "run"]) {
        assert_eq!(*stderr, expected, "ferry {sub}");
        assert_eq!(*stdout, "", "ferry {sub}");
    }
}

const HEAD: &str = "local ferry = require \"ferry\"\nreturn ferry.plan {\n  api_version = 1,\n  source = { url = ferry.env \"SOURCE_URL\" },\n  target = { url = ferry.env \"TARGET_URL\" },\n";

#[test]
fn broken_plans_fail_with_exit_code_2_and_an_untouched_target() {
    // HEAD is lines 1-5; what follows it starts on line 6.
    assert_broken(
        &format!("{HEAD}  keys = {{ include = {{ \"a:*\" }}\n}}\n"),
        "{plan}:8: syntax error: '}' expected (to close '{' at line 2) near <eof>",
    );
    assert_broken(
        &format!("{HEAD}  keyz = {{}},\n}}\n"),
        "{plan}:2: keyz: unknown field (did you mean `keys`?)",
    );
    assert_broken(
        &format!(
            "local sk = require \"ferry.sidekiq\"\n{HEAD}  keys = {{ include = sk.keyz }},\n}}\n"
        ),
        "{plan}:7: ferry.sidekiq has no field `keyz` (did you mean `keys`?)",
    );
    assert_broken(
        &format!("{HEAD}  snapshot = {{ workers = \"many\" }},\n}}\n"),
        "{plan}:2: snapshot.workers: expected an integer, found string",
    );
    assert_broken(
        "local ferry = require \"ferry\"\nreturn ferry.plan { api_version = 7, source = { url = \"redis://x\" }, target = { url = \"redis://y\" } }\n",
        "{plan}:2: api_version = 7 is not supported; this ferry supports api_version = 1",
    );
    assert_broken(
        &format!("local f = io.open(\"/etc/passwd\")\n{HEAD}}}\n"),
        "{plan}:1: attempt to index a nil value (global 'io')",
    );
    assert_broken(
        &format!("os.execute(\"touch /tmp/ferry-pwned\")\n{HEAD}}}\n"),
        "{plan}:1: attempt to call a nil value (field 'execute')",
    );
    assert!(!std::path::Path::new("/tmp/ferry-pwned").exists());

    // A hook that fails at run time: `check` lists each sample it fails on (stdout), `run`
    // refuses to start with the first ones.
    let (path, outputs) = run_broken(&format!(
        "{HEAD}  on_command = function(cmd) error(\"boom\") end,\n}}\n"
    ));
    let failure = format!(
        "db0 \"SET\" \"fs:1\" \"v\": hook error: on_command failed at {path}:6: boom (on_hook_error = \"fail\": the migration would stop)"
    );
    let (check_out, check_err) = &outputs[0];
    assert_eq!(check_err, "");
    assert_eq!(
        check_out.lines().nth(1),
        Some(format!("  {failure}").as_str()),
        "{check_out}"
    );
    let (run_out, run_err) = &outputs[1];
    assert_eq!(run_out, "");
    assert!(
        run_err.starts_with(&format!(
            "ferry: error: {path}: the plan fails its dry run (run `ferry check` for details): {failure}; "
        )),
        "{run_err}"
    );
    assert_eq!(run_err.lines().count(), 1, "{run_err}");
}

/// `on_command` that raises on the key `boom`, on the body's second line.
const BOOM_HOOK: &str = r#"  on_command = function(cmd)
    if cmd.name == "SET" and cmd:key(1) == "boom" then error("refusing key " .. cmd:key(1)) end
  end,"#;

/// A long soak (so only a failure ends the run early) and a phase after it that must not run.
const LONG_PHASES: &str = r#"phases = { "snapshot", ferry.catch_up { max_lag_ms = 500 },
    ferry.phase("soak", function(ctx) ctx.sleep(25000) end),
    ferry.phase("later", function(ctx) ctx.log("LATER PHASE RAN") end),
    ferry.cutover { max_pause_ms = 2000 } },"#;

/// A catch-up that never passes (no lag is 0 ms), so only a failure ends it.
const ENDLESS_CATCH_UP: &str = r#"phases = { "snapshot", ferry.catch_up { max_lag_ms = 0 },
    ferry.phase("later", function(ctx) ctx.log("LATER PHASE RAN") end),
    ferry.cutover { max_pause_ms = 2000 } },"#;

#[test]
fn failing_hook_on_live_data_stops_the_run_with_its_error() {
    // The failure arrives while a Lua phase sleeps, then while catch_up waits on lag.
    for phases in [LONG_PHASES, ENDLESS_CATCH_UP] {
        let (source, target) = (RedisServer::start(), RedisServer::start());
        seed(&source);
        let dir = tempfile::tempdir().unwrap();
        let plan = write_plan_phases(dir.path(), BOOM_HOOK, phases);
        let (out, after) = run_plan_output(&source, &target, &plan, &[], |c0, _| {
            cmd(c0, &["SET", "fs:before", "1"]);
            cmd(c0, &["SET", "boom", "x"]);
        });
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(after < Duration::from_secs(10), "took {after:?}:\n{stderr}");
        let last = stderr.lines().last().unwrap_or_default();
        let line = BODY_LINE + 1;
        assert!(
            last.starts_with("ferry: error: ")
                && last.contains("on_command failed at")
                && last.ends_with(&format!("plan.lua:{line}: refusing key boom")),
            "{stderr}"
        );
        assert!(!stderr.contains("LATER PHASE RAN"), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn skipped_hook_errors_reach_the_summary_and_the_json_report() {
    let (source, target) = (RedisServer::start(), RedisServer::start());
    seed(&source);
    let dir = tempfile::tempdir().unwrap();
    let plan = write_plan(
        dir.path(),
        &format!("{BOOM_HOOK}\n  on_hook_error = \"skip\","),
    );
    let json = dir.path().join("report.json");
    let (out, _) = run_plan_output(
        &source,
        &target,
        &plan,
        &["--json", json.to_str().unwrap()],
        |c0, _| {
            cmd(c0, &["SET", "fs:before", "1"]);
            cmd(c0, &["SET", "boom", "x"]);
            cmd(c0, &["SET", "fs:after", "2"]);
        },
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let summary = stderr
        .lines()
        .find(|l| l.contains("stopped at the final fence"))
        .unwrap_or_else(|| panic!("no summary line:\n{stderr}"));
    assert!(
        summary.contains("on_command: ") && summary.contains("1 errors, 1 commands skipped"),
        "{summary}"
    );
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let hooks = &report["on_command"];
    assert_eq!(hooks["errors"], 1, "{report:#}");
    assert_eq!(hooks["skipped_commands"], 1, "{report:#}");
    // Live writes only: the snapshot restores payloads without calling the hook.
    assert!(hooks["calls"].as_u64().unwrap() >= 3, "{report:#}");
    let mut t = target.conn();
    let boom: Option<String> = redis::cmd("GET").arg("boom").query(&mut t).unwrap();
    assert_eq!(boom, None, "the skipped command reached the target");
    for (k, v) in [("fs:before", "1"), ("fs:after", "2")] {
        let got: Option<String> = redis::cmd("GET").arg(k).query(&mut t).unwrap();
        assert_eq!(got.as_deref(), Some(v), "{k}");
    }
}

/// A custom phase listed before "snapshot" runs before the migration starts: nothing is
/// captured or copied yet, and the primitives that need a migration say so.
#[test]
fn custom_phase_before_the_snapshot_runs_before_the_migration_starts() {
    let (source, target) = (RedisServer::start(), RedisServer::start());
    seed(&source);
    let dir = tempfile::tempdir().unwrap();
    let plan = write_plan_phases(
        dir.path(),
        "",
        r#"phases = {
    ferry.phase("preflight", function(ctx)
      local ok, e = pcall(ctx.lag_ms)
      ctx.log("PRE lag_ms: " .. tostring(e))
      ctx.sleep(2500)
      ctx.log("PRE DONE")
    end),
    "snapshot", ferry.catch_up { max_lag_ms = 500 },
    ferry.cutover { max_pause_ms = 2000 } },"#,
    );
    let (out, _) = run_plan_output(&source, &target, &plan, &[], |_, _| {
        // 1.5 s in, the preflight phase still sleeps: ferry has not touched the target.
        let mut t = target.conn();
        let size: u64 = redis::cmd("DBSIZE").query(&mut t).unwrap();
        assert_eq!(size, 0, "the target was written before the snapshot phase");
    });
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let at = |needle: &str| {
        stderr
            .find(needle)
            .unwrap_or_else(|| panic!("{needle:?} missing:\n{stderr}"))
    };
    assert!(
        stderr.contains("ctx.lag_ms: the migration has not started"),
        "{stderr}"
    );
    assert!(at("PRE DONE") < at("Capturing writes."), "{stderr}");
    assert!(at("PRE DONE") < at("Snapshot started."), "{stderr}");
    let report = compare(&source.url(), &target.url(), &OracleOptions::default());
    report.assert_identical();
}

#[test]
fn a_stop_during_a_custom_phase_wait_ends_at_the_final_fence_at_once() {
    let (source, target) = (RedisServer::start(), RedisServer::start());
    seed(&source);
    let dir = tempfile::tempdir().unwrap();
    let plan = write_plan_phases(
        dir.path(),
        "",
        r#"phases = {
    "snapshot",
    ferry.phase("soak", function(ctx)
      ctx.log("SOAKING")
      ctx.sleep(60000)
      ctx.log("SLEPT THROUGH")
    end),
    ferry.phase("later", function(ctx) ctx.log("LATER RAN") end) },"#,
    );
    let log = dir.path().join("ferry.stderr");
    let child = crate::cli::ferry()
        .current_dir(dir.path())
        .args(["run", plan.to_str().unwrap()])
        .arg("--set")
        .arg(format!("SOURCE_URL={}", source.url()))
        .arg("--set")
        .arg(format!("TARGET_URL={}", target.url()))
        .env("FERRY_LOG", "ferry=info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut ferry = crate::migrate::FerryProcess::new(child, log);
    ferry.wait_log("SOAKING", Duration::from_secs(30));
    cmd(
        &mut source.conn(),
        &["SET", "fs:written-while-soaking", "1"],
    );
    let stopping = Instant::now();
    let code = ferry.terminate(Duration::from_secs(30));
    let took = stopping.elapsed();
    let stderr = ferry.stderr();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(took < Duration::from_secs(10), "the stop took {took:?}");
    assert!(stderr.contains("stopped at the final fence"), "{stderr}");
    assert!(!stderr.contains("SLEPT THROUGH"), "{stderr}");
    assert!(!stderr.contains("LATER RAN"), "{stderr}");
    compare(&source.url(), &target.url(), &OracleOptions::default()).assert_identical();
}
