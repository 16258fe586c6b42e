//! The trailing window after a cutover's switch: applications move to the target one by one
//! (or a little late), and every acknowledged write still ends up on the target; late writes
//! are reported per client, keys written on both sides are conflicts, and `hold_source` keeps
//! the old source closed.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use redis::Commands;

use crate::cli::ferry;
use crate::cutover::{app, missing_writes, seeded_source};
use crate::migrate::FerryProcess;
use crate::support::RedisServer;

/// A plan whose cutover's switch hook creates `GO`, with the trailing window's settings.
fn plan(dir: &Path, window: &str) -> PathBuf {
    let plan = dir.join("window.lua");
    std::fs::write(
        &plan,
        format!(
            r#"local ferry = require "ferry"
return ferry.plan {{
  api_version = 1,
  source = {{ url = ferry.env "SRC", capture = "primary" }},
  target = {{ url = ferry.env "DST" }},
  journal = ferry.embedded {{ dir = ferry.env "STATE" }},
  phases = {{
    "snapshot",
    ferry.catch_up {{ max_lag_ms = 1000 }},
    ferry.cutover {{
      max_pause_ms = 3000,
      -- A loaded test machine (8,000 writes/s here, other tests beside) needs a loose gate.
      max_lag_ms = 1000,
      commands = {{ go = {{ "touch", ferry.env "GO" }} }},
      switch = function(ctx)
        local code = ctx.run("go")
        if code ~= 0 then error("go exited with " .. code) end
      end,
      {window}
    }},
  }},
}}
"#
        ),
    )
    .unwrap();
    plan
}

fn start(plan: &Path, source: &RedisServer, target: &RedisServer, dir: &Path) -> FerryProcess {
    let stderr_path = dir.join("ferry.stderr");
    let child = ferry()
        .arg("run")
        .arg(plan)
        .args(["--set", &format!("SRC={}", source.url())])
        .args(["--set", &format!("DST={}", target.url())])
        .args(["--set", &format!("STATE={}", dir.join("state").display())])
        .args(["--set", &format!("GO={}", dir.join("go").display())])
        .arg("--json")
        .arg(dir.join("report.json"))
        .env("FERRY_LOG", "ferry=info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    FerryProcess::new(child, stderr_path)
}

fn report(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("report.json")).unwrap()).unwrap()
}

#[test]
fn twenty_fast_switches_lose_no_acknowledged_write() {
    let mut late_total = 0;
    let mut pauses = Vec::new();
    for round in 0..20 {
        let (source, target) = (RedisServer::start(), RedisServer::start());
        let _: () = source.conn().set("seed", round).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let go = dir.path().join("go");
        let stop = Arc::new(AtomicBool::new(false));
        // One app checks the flag the switch hook sets before every write; a second one reads
        // it every 50 ms (a cached configuration), so it writes to the old source a little
        // after the switch.
        let writer = app(source.url(), target.url(), go.clone(), stop.clone());
        let cached = named_app(
            "cached".into(),
            source.url(),
            target.url(),
            go.clone(),
            Duration::from_millis(50),
            stop.clone(),
        );
        std::thread::sleep(Duration::from_millis(100));
        let plan = plan(dir.path(), "quiet_ms = 300,");
        let mut run = start(&plan, &source, &target, dir.path());
        let code = run.wait(Duration::from_secs(60));
        assert_eq!(code, Some(0), "round {round}: {}", run.stderr());
        std::thread::sleep(Duration::from_millis(50));
        stop.store(true, Ordering::Relaxed);
        let log = writer.join().unwrap();
        let (sets, incrs) = cached.join().unwrap();
        assert_eq!(log.failed, 0, "round {round}");
        assert!(log.on_target > 0, "round {round}: {log:?}");
        let missing = missing_writes(&target, &log);
        assert!(
            missing.is_empty(),
            "round {round}: acknowledged writes missing on the target: {missing:?}\n{}",
            run.stderr()
        );
        let mut con = target.conn();
        let counter: u64 = con.get("cached:counter").unwrap();
        assert_eq!(counter, incrs, "round {round}: the cached app's counter");
        let last: Option<u64> = con
            .get(format!("cached:w:{}", sets.last().unwrap()))
            .unwrap();
        assert_eq!(last, sets.last().copied(), "round {round}");
        let r = report(dir.path());
        late_total += r["window"]["late"]["writes"].as_u64().unwrap();
        pauses.push(r["pause_ms"].as_u64().unwrap());
    }
    pauses.sort();
    eprintln!(
        "20 cutovers: {late_total} late writes replayed in all; switch pause median {} ms, max {} ms",
        pauses[10], pauses[19]
    );
    // The window did work: writes reached the old source after the switch, and none was lost.
    assert!(late_total > 0);
}

/// One application instance: its own keys, its own counter and a shared one; it names its
/// connections and follows its own flag to the target, reading the flag at most every
/// `recheck` (a cached configuration picks up the switch a little late).
fn named_app(
    name: String,
    source: String,
    target: String,
    flag: PathBuf,
    recheck: Duration,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(Vec<u64>, u64)> {
    std::thread::spawn(move || {
        let connect = |url: &str| -> redis::RedisResult<redis::Connection> {
            let mut c = redis::Client::open(url)?.get_connection()?;
            redis::cmd("CLIENT")
                .arg("SETNAME")
                .arg(&name)
                .query::<()>(&mut c)?;
            Ok(c)
        };
        let mut on_target = flag.exists();
        let mut con = connect(if on_target { &target } else { &source }).unwrap();
        let (mut sets, mut incrs) = (Vec::new(), 0u64);
        let mut n = 0u64;
        let mut checked = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            if !on_target && checked.elapsed() >= recheck && flag.exists() {
                on_target = true;
                con = connect(&target).unwrap();
            }
            if checked.elapsed() >= recheck {
                checked = Instant::now();
            }
            n += 1;
            let mut ok = false;
            for _ in 0..50 {
                let r: redis::RedisResult<((), i64, i64)> = redis::pipe()
                    .atomic()
                    .set(format!("{name}:w:{n}"), n)
                    .incr(format!("{name}:counter"), 1)
                    .incr("shared:counter", 1)
                    .query(&mut con);
                if r.is_ok() {
                    ok = true;
                    break;
                }
                // Disconnected while held by a pause: reconnect to the configured primary,
                // which a cached configuration may still say is the old source.
                std::thread::sleep(Duration::from_millis(10));
                if recheck.is_zero() {
                    on_target = flag.exists();
                }
                if let Ok(c) = connect(if on_target { &target } else { &source }) {
                    con = c;
                }
            }
            assert!(ok, "{name}: write {n} failed for good");
            sets.push(n);
            incrs += 1;
            std::thread::sleep(Duration::from_millis(1));
        }
        (sets, incrs)
    })
}

#[test]
fn a_rolling_switch_over_three_seconds_loses_nothing_and_names_the_late_clients() {
    let (source, target) = (seeded_source(), RedisServer::start());
    let dir = tempfile::tempdir().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let names: Vec<String> = (1..=4).map(|i| format!("app-{i}")).collect();
    let flags: Vec<PathBuf> = names.iter().map(|n| dir.path().join(n)).collect();
    let apps: Vec<_> = names
        .iter()
        .zip(&flags)
        .map(|(n, f)| {
            named_app(
                n.clone(),
                source.url(),
                target.url(),
                f.clone(),
                Duration::ZERO,
                stop.clone(),
            )
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let plan = plan(dir.path(), "quiet_ms = 1000, max_trailing_ms = 60000,");
    let mut run = start(&plan, &source, &target, dir.path());
    // The switch hook says go; the app hosts pick up the new primary one by one over 3 s.
    let go = dir.path().join("go");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !go.exists() {
        assert!(Instant::now() < deadline, "{}", run.stderr());
        std::thread::sleep(Duration::from_millis(5));
    }
    for (i, f) in flags.iter().enumerate() {
        std::thread::sleep(Duration::from_millis(if i == 0 { 500 } else { 833 }));
        std::fs::write(f, "").unwrap();
    }
    let code = run.wait(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{}", run.stderr());
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::Relaxed);
    let results: Vec<(Vec<u64>, u64)> = apps.into_iter().map(|a| a.join().unwrap()).collect();

    let mut con = target.conn();
    let mut shared = 0;
    for (name, (sets, incrs)) in names.iter().zip(&results) {
        let counter: u64 = con.get(format!("{name}:counter")).unwrap();
        assert_eq!(counter, *incrs, "{name}");
        for chunk in sets.chunks(500) {
            let keys: Vec<String> = chunk.iter().map(|n| format!("{name}:w:{n}")).collect();
            let values: Vec<Option<u64>> = con.mget(&keys).unwrap();
            for (n, v) in chunk.iter().zip(values) {
                assert_eq!(v, Some(*n), "{name}:w:{n} missing on the target");
            }
        }
        shared += incrs;
    }
    let counter: u64 = con.get("shared:counter").unwrap();
    assert_eq!(counter, shared, "shared counter");

    let r = report(dir.path());
    let w = &r["window"];
    eprintln!("{w:#}");
    assert!(w["late"]["writes"].as_u64().unwrap() > 0, "{w:#}");
    let clients: Vec<&str> = w["late"]["clients"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    for name in &names {
        assert!(
            clients.contains(&name.as_str()),
            "{name} not in {clients:?}"
        );
    }
    assert!(
        w["late"]["clients"][0]["addr"]
            .as_str()
            .unwrap()
            .contains(':')
    );
    assert_eq!(w["ended"], "quiet");
    // The shared counter was written on both sides after the switch: a conflict, reported and
    // applied in arrival order (the counter above is exact).
    assert!(
        w["conflicts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["key"] == "\"shared:counter\""),
        "{w:#}"
    );
    eprintln!(
        "rolling switch: switch pause {} ms, window {} ms, {} late writes",
        r["pause_ms"], w["window_ms"], w["late"]["writes"]
    );
}

/// Runs a cutover with `on_conflict`, writes `conflict:k` on the target and then, late, on
/// the source; returns ferry's exit code, its stderr, and the key's value on the target.
fn conflict_run(on_conflict: &str) -> (Option<i32>, String, String, serde_json::Value) {
    let (source, target) = (seeded_source(), RedisServer::start());
    let dir = tempfile::tempdir().unwrap();
    let plan = plan(
        dir.path(),
        &format!("quiet_ms = 1500, on_conflict = \"{on_conflict}\","),
    );
    let mut run = start(&plan, &source, &target, dir.path());
    run.wait_log("Trailing window:", Duration::from_secs(60));
    let _: () = target.conn().set("conflict:k", "from-target").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let _: () = source.conn().set("conflict:k", "late-from-source").unwrap();
    let code = run.wait(Duration::from_secs(60));
    let value: String = target.conn().get("conflict:k").unwrap();
    let r = serde_json::from_slice(&std::fs::read(dir.path().join("report.json")).unwrap())
        .unwrap_or_default();
    (code, run.stderr(), value, r)
}

#[test]
fn a_conflict_is_reported_under_report_and_stops_the_run_under_fail() {
    let (code, stderr, value, r) = conflict_run("report");
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(value, "late-from-source", "applied in arrival order");
    let conflicts = r["window"]["conflicts"].as_array().unwrap();
    assert_eq!(conflicts.len(), 1, "{r:#}");
    assert_eq!(conflicts[0]["key"], "\"conflict:k\"");
    assert!(
        conflicts[0]["target"]["command"]
            .as_str()
            .unwrap()
            .contains("from-target")
    );
    assert!(
        conflicts[0]["source"]["command"]
            .as_str()
            .unwrap()
            .contains("late-from-source")
    );
    assert!(stderr.contains("1 conflicts"), "{stderr}");

    let (code, stderr, value, r) = conflict_run("fail");
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(value, "from-target", "the late write was refused");
    assert!(stderr.contains("on_conflict = \"fail\""), "{stderr}");
    assert_eq!(r["window"]["ended"], "conflict", "{r:#}");
    assert_eq!(
        stderr
            .lines()
            .filter(|l| l.starts_with("ferry: error"))
            .count(),
        1
    );
}

#[test]
fn hold_source_keeps_the_old_source_closed_through_the_window() {
    let (source, target) = (seeded_source(), RedisServer::start());
    let dir = tempfile::tempdir().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = app(
        source.url(),
        target.url(),
        dir.path().join("go"),
        stop.clone(),
    );
    std::thread::sleep(Duration::from_millis(200));
    let plan = plan(dir.path(), "quiet_ms = 1000, hold_source = true,");
    let mut run = start(&plan, &source, &target, dir.path());
    let code = run.wait(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{}", run.stderr());
    stop.store(true, Ordering::Relaxed);
    let log = writer.join().unwrap();
    assert_eq!(log.failed, 0);
    let missing = missing_writes(&target, &log);
    assert!(missing.is_empty(), "{missing:?}");
    let r = report(dir.path());
    let w = &r["window"];
    assert_eq!(w["hold_source"], true);
    assert_eq!(
        w["late"]["writes"], 0,
        "a write reached the held source: {w:#}"
    );
    assert!(r["pause_ms"].as_u64().unwrap() >= 1000, "{r:#}");
}

#[test]
fn hold_source_with_reverse_sync_is_refused_by_check() {
    let dir = tempfile::tempdir().unwrap();
    let plan = plan(dir.path(), "hold_source = true, reverse_sync = true,");
    let out = ferry()
        .arg("check")
        .arg(&plan)
        .args(["--set", "SRC=redis://127.0.0.1:1"])
        .args(["--set", "DST=redis://127.0.0.1:2"])
        .args(["--set", "STATE=/tmp/x", "--set", "GO=/tmp/y"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("hold_source") && err.contains("reverse_sync"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}
