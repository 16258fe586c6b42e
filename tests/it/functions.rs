//! Function libraries and scripts, the state an application needs besides its keys: copied with
//! every snapshot and resync (`FUNCTION DUMP` → `FUNCTION RESTORE … REPLACE` at the read's
//! position in the stream), `FUNCTION LOAD/DELETE` and `SCRIPT LOAD` of the stream replayed in
//! order, and a target that cannot take them refused at start.

use std::time::Duration;

use crate::cli::run_ferry;
use crate::migrate::start_migrate;
use crate::support::workload::{self, WorkloadOptions};
use crate::support::{Dataset, OracleOptions, RedisServer, ServerOptions, compare, fill};

/// `libA`, version `v`: `a_set(k, v)` writes, `a_version()` says which version answers.
pub(crate) fn lib_a(v: u32) -> String {
    format!(
        "#!lua name=libA\n\
         redis.register_function('a_set', function(keys, args) return redis.call('SET', keys[1], args[1]) end)\n\
         redis.register_function{{function_name='a_version', callback=function() return 'A{v}' end, flags={{'no-writes'}}}}"
    )
}

/// `libB`: `b_incr(k)` increments a counter and stamps the time the script saw.
pub(crate) const LIB_B: &str = "#!lua name=libB\n\
    redis.register_function('b_incr', function(keys, args)\n\
      local n = redis.call('INCR', keys[1])\n\
      redis.call('HSET', keys[1] .. ':meta', 'n', n, 'at', redis.call('TIME')[1])\n\
      return n\n\
    end)";

/// `libC`: loaded and deleted again during the run.
const LIB_C: &str = "#!lua name=libC\n\
    redis.register_function('c_gone', function() return 'C' end)";

pub(crate) fn function_load(con: &mut redis::Connection, code: &str, replace: bool) {
    let mut cmd = redis::cmd("FUNCTION");
    cmd.arg("LOAD");
    if replace {
        cmd.arg("REPLACE");
    }
    let _: String = cmd.arg(code).query(con).unwrap();
}

pub(crate) fn fcall<T: redis::FromRedisValue>(
    con: &mut redis::Connection,
    f: &str,
    keys: &[&str],
    args: &[&str],
) -> redis::RedisResult<T> {
    redis::cmd("FCALL")
        .arg(f)
        .arg(keys.len())
        .arg(keys)
        .arg(args)
        .query(con)
}

/// `FUNCTION LIST WITHCODE` in a comparable form: per library (in name order) its name, code
/// and functions (in name order, with flags); the server lists both in hash order.
pub(crate) fn libraries(con: &mut redis::Connection) -> Vec<(String, String, Vec<String>)> {
    fn text(v: &redis::Value) -> String {
        match v {
            redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
            other => format!("{other:?}"),
        }
    }
    fn field<'a>(v: &'a redis::Value, name: &str) -> &'a redis::Value {
        let redis::Value::Array(items) = v else {
            panic!("not a FUNCTION LIST entry: {v:?}")
        };
        items
            .chunks_exact(2)
            .find(|p| text(&p[0]) == name)
            .map(|p| &p[1])
            .unwrap_or_else(|| panic!("no {name} in {v:?}"))
    }
    let libs: Vec<redis::Value> = redis::cmd("FUNCTION")
        .arg("LIST")
        .arg("WITHCODE")
        .query(con)
        .unwrap();
    let mut out: Vec<(String, String, Vec<String>)> = libs
        .iter()
        .map(|lib| {
            let redis::Value::Array(fs) = field(lib, "functions") else {
                panic!("functions: {lib:?}")
            };
            let mut functions: Vec<String> = fs
                .iter()
                .map(|f| format!("{} {:?}", text(field(f, "name")), field(f, "flags")))
                .collect();
            functions.sort();
            (
                text(field(lib, "library_name")),
                text(field(lib, "library_code")),
                functions,
            )
        })
        .collect();
    out.sort();
    out
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<_> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A library loaded before the migration and others loaded, replaced and deleted during it
/// (while the workload writes and a client calls functions that write) reach the target in
/// order, through the first snapshot and through the resync after the target restarted empty;
/// a script loaded during the run is in the target's script cache. The final fence leaves the
/// target with the source's libraries, code included, and the oracle finds no difference.
#[test]
fn libraries_loaded_before_and_during_a_live_migration_answer_fcall_on_the_target() {
    let source = RedisServer::elasticache_like();
    let mut target = RedisServer::start();
    fill(
        &source,
        &Dataset {
            dbs: vec![0, 1],
            keys_per_db: 1500,
            ..Dataset::tiny()
        },
    );
    let mut src = source.conn();
    function_load(&mut src, &lib_a(1), false);
    let state = tempfile::tempdir().unwrap();
    let load = workload::start(
        &source.url(),
        WorkloadOptions {
            dbs: vec![0, 1],
            rate: 1000,
            ..WorkloadOptions::default()
        },
    );
    // A client calls functions that write throughout the run; their effects replay as writes.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let caller = {
        let stop = stop.clone();
        let mut con = source.conn();
        std::thread::spawn(move || {
            let mut calls = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _: String = fcall(&mut con, "a_set", &["fn:a"], &[&calls.to_string()]).unwrap();
                // libB exists once the test loaded it.
                let _: redis::RedisResult<i64> = fcall(&mut con, "b_incr", &["fn:b"], &[]);
                calls += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            calls
        })
    };
    let mut ferry = start_migrate(
        &source.url(),
        &target.url(),
        state.path(),
        &["--capture", "primary"],
    );

    // Loaded after the snapshot read the libraries: only the stream brings them.
    ferry.wait_log("Function libraries read", Duration::from_secs(30));
    function_load(&mut src, LIB_B, false);
    function_load(&mut src, LIB_C, false);
    ferry.wait_log("Snapshot reads done", Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(1));
    let mut tgt = target.conn();
    let b: i64 = fcall(&mut tgt, "b_incr", &["probe:b"], &[]).unwrap();
    assert_eq!(b, 1, "libB reached the target through replay");
    let version: String = fcall(&mut tgt, "a_version", &[], &[]).unwrap();
    assert_eq!(version, "A1", "libA reached the target with the snapshot");
    let _: () = redis::cmd("DEL")
        .arg("probe:b")
        .arg("probe:b:meta")
        .query(&mut tgt)
        .unwrap();

    // The target comes back empty, libraries included: the resync copies them again.
    target.restart();
    ferry.wait_log("resyncing every key", Duration::from_secs(30));
    ferry.wait_log_n("Function libraries read", 2, Duration::from_secs(30));
    ferry.wait_log_n("Snapshot reads done", 2, Duration::from_secs(60));

    function_load(&mut src, &lib_a(2), true);
    let _: String = redis::cmd("FUNCTION")
        .arg("DELETE")
        .arg("libC")
        .query(&mut src)
        .unwrap();
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg("return redis.call('INCR', KEYS[1])")
        .query(&mut src)
        .unwrap();
    let _: i64 = redis::cmd("EVALSHA")
        .arg(&sha)
        .arg(1)
        .arg("script:ctr")
        .query(&mut src)
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let calls = caller.join().unwrap();
    let report = load.stop();
    assert!(
        report.errors.is_empty(),
        "unexpected workload errors: {report}"
    );
    assert!(calls > 100, "only {calls} function calls");
    let code = ferry.terminate(Duration::from_secs(60));
    let stderr = ferry.stderr();
    assert_eq!(code, Some(0), "ferry migrate failed:\n{stderr}");
    assert!(stderr.contains("final fence"), "{stderr}");

    let mut tgt = target.conn();
    let version: String = fcall(&mut tgt, "a_version", &[], &[]).unwrap();
    assert_eq!(version, "A2", "the FUNCTION LOAD REPLACE of the stream");
    let gone = fcall::<String>(&mut tgt, "c_gone", &[], &[]).unwrap_err();
    assert!(
        gone.to_string().contains("Function not found"),
        "the FUNCTION DELETE of the stream: {gone}"
    );
    let on_source = libraries(&mut src);
    assert_eq!(
        on_source.iter().map(|l| l.0.as_str()).collect::<Vec<_>>(),
        ["libA", "libB"]
    );
    assert_eq!(libraries(&mut tgt), on_source);
    let cached: Vec<bool> = redis::cmd("SCRIPT")
        .arg("EXISTS")
        .arg(&sha)
        .query(&mut tgt)
        .unwrap();
    assert_eq!(cached, vec![true], "the SCRIPT LOAD of the stream");
    let oracle = compare(
        &source.url(),
        &target.url(),
        &OracleOptions {
            ttl_tolerance_ms: 1000,
            ..OracleOptions::default()
        },
    );
    eprintln!(
        "{report}\nfunction calls: {calls}\n{oracle}\n--- ferry stderr (tail) ---\n{}",
        tail(&stderr, 12)
    );
    assert!(oracle.keys_compared > 3000, "{oracle}");
    oracle.assert_identical();
    // Both after the fence: the application's calls work on the target.
    let a: String = fcall(&mut tgt, "a_set", &["after:a"], &["x"]).unwrap();
    assert_eq!(a, "OK");
    let b: i64 = fcall(&mut tgt, "b_incr", &["fn:b"], &[]).unwrap();
    let on_source: i64 = redis::cmd("GET").arg("fn:b").query(&mut src).unwrap();
    assert_eq!(b, on_source + 1);
}

/// A target that refuses `FUNCTION` (an engine before 7.0, or the command renamed away as
/// here).
fn target_without_functions() -> RedisServer {
    RedisServer::start_with(ServerOptions {
        extra_config: vec!["rename-command FUNCTION \"\"".into()],
        ..ServerOptions::default()
    })
}

/// The source has a library and the target cannot take it: one line, exit 2, before anything
/// is copied (the target stays empty). A plan that drops `FUNCTION` migrates the keys anyway.
#[test]
fn a_target_without_functions_is_refused_at_start_unless_the_plan_drops_them() {
    let source = RedisServer::start();
    let target = target_without_functions();
    let mut src = source.conn();
    for i in 0..100 {
        let _: () = redis::cmd("SET")
            .arg(format!("k{i}"))
            .arg(i)
            .query(&mut src)
            .unwrap();
    }
    function_load(&mut src, &lib_a(1), false);
    let state = tempfile::tempdir().unwrap();
    let mut ferry = start_migrate(
        &source.url(),
        &target.url(),
        state.path(),
        &["--capture", "primary"],
    );
    let code = ferry.wait(Duration::from_secs(30));
    let stderr = ferry.stderr();
    eprintln!("--- ferry stderr ---\n{stderr}");
    assert_eq!(code, Some(2), "{stderr}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("ferry: error"))
        .collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    let line = errors[0];
    for part in [
        "functions: the source has 1 function library ('libA')",
        "the target refuses FUNCTION (ERR unknown command 'FUNCTION'",
        "ferry.drop_commands { \"FUNCTION\" }",
    ] {
        assert!(line.contains(part), "{part:?} missing from: {line}");
    }
    assert!(!stderr.contains("Snapshot started"), "{stderr}");
    let size: u64 = redis::cmd("DBSIZE").query(&mut target.conn()).unwrap();
    assert_eq!(size, 0, "nothing may be copied before the refusal");

    // The way out the line names.
    let plan = state.path().join("plan.lua");
    std::fs::write(
        &plan,
        "local ferry = require \"ferry\"\n\
         return ferry.plan {\n\
           api_version = 1,\n\
           source = { url = ferry.env \"SOURCE_URL\", capture = \"primary\" },\n\
           target = { url = ferry.env \"TARGET_URL\" },\n\
           journal = ferry.embedded { dir = \"state\" },\n\
           rewrite = { ferry.drop_commands { \"FUNCTION\" } },\n\
           phases = { \"snapshot\", ferry.cutover { max_pause_ms = 2000 } },\n\
         }\n",
    )
    .unwrap();
    let (s, t) = (
        format!("SOURCE_URL={}", source.url()),
        format!("TARGET_URL={}", target.url()),
    );
    let out = run_ferry(&["run", plan.to_str().unwrap(), "--set", &s, "--set", &t]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("Snapshot reads done"), "{stderr}");
    assert!(!stderr.contains("Function libraries read"), "{stderr}");
    compare(&source.url(), &target.url(), &OracleOptions::default()).assert_identical();
}

/// With no library on the source at the start, a target without `FUNCTION` is accepted (with
/// a warning); a library loaded during the run then fails on the target, and the final fence
/// fails the run (exit 2) rather than claim the target equals the source.
#[test]
fn a_library_loaded_during_the_run_fails_the_run_on_a_target_without_functions() {
    let source = RedisServer::start();
    let target = target_without_functions();
    let mut src = source.conn();
    let _: () = redis::cmd("SET").arg("k").arg("v").query(&mut src).unwrap();
    let state = tempfile::tempdir().unwrap();
    let mut ferry = start_migrate(
        &source.url(),
        &target.url(),
        state.path(),
        &["--capture", "primary"],
    );
    ferry.wait_log("Snapshot reads done", Duration::from_secs(30));
    assert!(
        ferry.stderr().contains("The target refuses FUNCTION"),
        "{}",
        ferry.stderr()
    );
    function_load(&mut src, LIB_C, false);
    std::thread::sleep(Duration::from_millis(500));
    let code = ferry.terminate(Duration::from_secs(60));
    let stderr = ferry.stderr();
    eprintln!("--- ferry stderr (tail) ---\n{}", tail(&stderr, 8));
    assert_eq!(code, Some(2), "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.starts_with("ferry: error"))
        .unwrap_or_else(|| panic!("no error line:\n{stderr}"));
    assert!(
        line.contains("the target differs from the source")
            && line.contains("FUNCTION (db 0): ERR unknown command"),
        "{line}"
    );
}

/// A target library that defines one of the source's functions under another library name
/// would make `FUNCTION RESTORE … REPLACE` refuse the whole copy: refused at start instead.
#[test]
fn a_clashing_target_library_is_refused_at_start() {
    let (source, target) = (RedisServer::start(), RedisServer::start());
    function_load(&mut source.conn(), &lib_a(1), false);
    function_load(
        &mut target.conn(),
        "#!lua name=mine\nredis.register_function('a_set', function() return 0 end)",
        false,
    );
    let state = tempfile::tempdir().unwrap();
    let mut ferry = start_migrate(
        &source.url(),
        &target.url(),
        state.path(),
        &["--capture", "primary"],
    );
    let code = ferry.wait(Duration::from_secs(30));
    let stderr = ferry.stderr();
    assert_eq!(code, Some(2), "{stderr}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("ferry: error"))
        .collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        errors[0].contains(
            "functions: the target's function library 'mine' defines 'a_set', which the source's library 'libA' defines too"
        ),
        "{}",
        errors[0]
    );
    assert!(!stderr.contains("Snapshot started"), "{stderr}");
}

/// The target lets ferry list functions but not restore them (an ACL): the copy at the
/// snapshot's read fails only on the target, the error says so, and the final fence fails the
/// run (exit 2) although every key arrived.
#[test]
fn a_refused_copy_of_the_libraries_fails_the_run_at_the_final_fence() {
    let (source, target) = (RedisServer::start(), RedisServer::start());
    let mut src = source.conn();
    let _: () = redis::cmd("SET").arg("k").arg("v").query(&mut src).unwrap();
    function_load(&mut src, &lib_a(1), false);
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("ferry")
        .arg("on")
        .arg(">pw")
        .arg("~*")
        .arg("&*")
        .arg("+@all")
        .arg("-function|restore")
        .query(&mut target.conn())
        .unwrap();
    let target_url = format!("redis://ferry:pw@{}", target.addr());
    let state = tempfile::tempdir().unwrap();
    let mut ferry = start_migrate(
        &source.url(),
        &target_url,
        state.path(),
        &["--capture", "primary"],
    );
    ferry.wait_log("Snapshot reads done", Duration::from_secs(30));
    ferry.wait_log(
        "The target refused the copy of the source's function libraries",
        Duration::from_secs(10),
    );
    let code = ferry.terminate(Duration::from_secs(60));
    let stderr = ferry.stderr();
    eprintln!("--- ferry stderr (tail) ---\n{}", tail(&stderr, 6));
    assert_eq!(code, Some(2), "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.starts_with("ferry: error"))
        .unwrap_or_else(|| panic!("no error line:\n{stderr}"));
    assert!(
        line.contains("the target differs from the source")
            && line.contains("FUNCTION RESTORE (the function libraries): NOPERM"),
        "{line}"
    );
    let value: String = redis::cmd("GET")
        .arg("k")
        .query(&mut target.conn())
        .unwrap();
    assert_eq!(value, "v", "the keys arrived");
}
