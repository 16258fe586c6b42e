//! Cutover end to end: an application writes continuously, logs every acknowledged write and
//! follows the plan's switch hook to the target. Every acknowledged write must end up on the
//! target, the pause must be applied (a write is held, then released by disconnection and
//! retried on the target) and measured; with reverse sync, writes made on the target after the
//! switch reach the old source, so a rollback loses nothing.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use redis::Commands;

use crate::cli::ferry;
use crate::migrate::FerryProcess;
use crate::support::{Dataset, OracleOptions, RedisServer, compare, fill};

/// What the application did.
#[derive(Debug, Default)]
pub(crate) struct AppLog {
    /// Acknowledged `SET app:w:<n> <n>`.
    pub(crate) sets: Vec<u64>,
    /// Acknowledged `INCR app:counter`.
    pub(crate) incrs: u64,
    /// Writes that failed on the source and succeeded on a retry.
    pub(crate) retried: u64,
    /// Writes that failed for good.
    pub(crate) failed: u64,
    /// Slowest acknowledged write.
    pub(crate) max_latency: Duration,
    /// Writes acknowledged by each server.
    pub(crate) on_source: u64,
    pub(crate) on_target: u64,
}

/// Writes SET + INCR pairs every millisecond to the server `switched` points at; a write that fails
/// (its connection was closed while the pause held it) is retried after reconnecting.
pub(crate) fn app(
    source: String,
    target: String,
    flag: PathBuf,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<AppLog> {
    std::thread::spawn(move || {
        let mut log = AppLog::default();
        let current = |flag: &Path| {
            if flag.exists() {
                (target.clone(), true)
            } else {
                (source.clone(), false)
            }
        };
        let connect = |url: &str| redis::Client::open(url).unwrap().get_connection().unwrap();
        let (mut url, mut on_target) = current(&flag);
        let mut con = connect(&url);
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            for op in 0..2 {
                let started = Instant::now();
                let mut attempts = 0;
                loop {
                    let (u, t) = current(&flag);
                    if u != url {
                        url = u;
                        on_target = t;
                        con = connect(&url);
                    }
                    let r: redis::RedisResult<()> = if op == 0 {
                        con.set(format!("app:w:{n}"), n)
                    } else {
                        con.incr("app:counter", 1)
                    };
                    match r {
                        Ok(()) => {
                            if attempts > 0 {
                                log.retried += 1;
                            }
                            break;
                        }
                        Err(_) if attempts < 50 => {
                            attempts += 1;
                            std::thread::sleep(Duration::from_millis(10));
                            con = match redis::Client::open(url.as_str()).unwrap().get_connection()
                            {
                                Ok(c) => c,
                                Err(_) => continue,
                            };
                        }
                        Err(e) => {
                            log.failed += 1;
                            eprintln!("app: write {n}/{op} failed for good: {e}");
                            break;
                        }
                    }
                }
                log.max_latency = log.max_latency.max(started.elapsed());
                if on_target {
                    log.on_target += 1;
                } else {
                    log.on_source += 1;
                }
                if op == 0 {
                    log.sets.push(n);
                } else {
                    log.incrs += 1;
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        log
    })
}

/// Acknowledged writes missing on `server`, described.
pub(crate) fn missing_writes(server: &RedisServer, log: &AppLog) -> Vec<String> {
    let mut con = server.conn();
    let mut out = Vec::new();
    let counter: i64 = con.get("app:counter").unwrap_or(0);
    if counter != log.incrs as i64 {
        out.push(format!(
            "app:counter is {counter}, {} INCRs were acknowledged",
            log.incrs
        ));
    }
    for chunk in log.sets.chunks(500) {
        let keys: Vec<String> = chunk.iter().map(|n| format!("app:w:{n}")).collect();
        let values: Vec<Option<u64>> = con.mget(&keys).unwrap();
        for (n, v) in chunk.iter().zip(values) {
            if v != Some(*n) {
                out.push(format!("app:w:{n} is {v:?}"));
            }
        }
    }
    out
}

fn write_plan(dir: &Path, reverse: bool) -> PathBuf {
    let plan = dir.join("cutover.lua");
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
    ferry.catch_up {{ max_lag_ms = 200 }},
    ferry.cutover {{
      max_pause_ms = 3000,
      max_lag_ms = 100,
      reverse_sync = {reverse},
      commands = {{ notify = {{ "touch", ferry.env "FLAG" }} }},
      switch = function(ctx)
        -- Reads on the paused source work; the flag goes to the target.
        local keys = ctx.call("source", "DBSIZE")
        ctx.log("switching " .. keys .. " keys")
        ctx.call("target", "SET", "app:config:primary", "target")
        local code = ctx.run("notify")
        if code ~= 0 then error("notify exited with " .. code) end
        -- A real switch takes a moment (a config push); the app's writes meanwhile are held.
        ctx.sleep(50)
      end,
    }},
  }},
}}
"#
        ),
    )
    .unwrap();
    plan
}

fn start_run(
    plan: &Path,
    source: &RedisServer,
    target: &RedisServer,
    dir: &Path,
    flag: &Path,
) -> FerryProcess {
    let stderr_path = dir.join("ferry.stderr");
    let child = ferry()
        .arg("run")
        .arg(plan)
        .args(["--set", &format!("SRC={}", source.url())])
        .args(["--set", &format!("DST={}", target.url())])
        .args(["--set", &format!("STATE={}", dir.join("state").display())])
        .args(["--set", &format!("FLAG={}", flag.display())])
        .arg("--json")
        .arg(dir.join("report.json"))
        .env("FERRY_LOG", "ferry=info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    FerryProcess::new(child, stderr_path)
}

pub(crate) fn seeded_source() -> RedisServer {
    let source = RedisServer::start();
    fill(
        &source,
        &Dataset {
            dbs: vec![0, 1],
            keys_per_db: 1000,
            ..Dataset::tiny()
        },
    );
    source
}

#[test]
fn cutover_under_live_writes_loses_nothing_and_measures_the_pause() {
    let (source, target) = (seeded_source(), RedisServer::start());
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("switched");
    let stop = Arc::new(AtomicBool::new(false));
    let writer = app(source.url(), target.url(), flag.clone(), stop.clone());
    std::thread::sleep(Duration::from_millis(300));

    let plan = write_plan(dir.path(), false);
    let mut run = start_run(&plan, &source, &target, dir.path(), &flag);
    let code = run.wait(Duration::from_secs(120));
    assert_eq!(code, Some(0), "{}", run.stderr());
    assert!(
        flag.exists(),
        "the switch hook did not run: {}",
        run.stderr()
    );
    // Keep writing on the target for a moment, then stop.
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let log = writer.join().unwrap();
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("report.json")).unwrap()).unwrap();
    eprintln!(
        "app: {} SETs, {} INCRs ({} on the source, {} on the target), {} retried, {} failed, slowest {:?}; ferry: pause {} ms (fence {} ms), {} held clients disconnected",
        log.sets.len(),
        log.incrs,
        log.on_source,
        log.on_target,
        log.retried,
        log.failed,
        log.max_latency,
        report["pause_ms"],
        report["fence_ms"],
        report["held_clients_disconnected"]
    );

    assert_eq!(log.failed, 0, "writes failed for good");
    assert!(log.on_source > 50 && log.on_target > 50, "{log:?}");
    let missing = missing_writes(&target, &log);
    assert!(
        missing.is_empty(),
        "acknowledged writes missing on the target: {missing:?}"
    );
    // The pause was applied: the app's write in flight was held, then its connection was
    // closed and the write retried on the target.
    assert!(
        report["held_clients_disconnected"].as_u64().unwrap() >= 1,
        "{report:#}"
    );
    assert!(log.retried >= 1, "no write was held by the pause: {log:?}");
    let pause = report["pause_ms"].as_u64().unwrap();
    assert!(pause < 1000, "pause {pause} ms");
    assert!(!report["pause_expired"].as_bool().unwrap());
    // Bounded latency: nothing waited beyond the pause plus a retry.
    assert!(
        log.max_latency < Duration::from_millis(pause + 1500),
        "{log:?}"
    );
    assert!(
        run.stderr().contains("Operator command ran.") && run.stderr().contains("switching"),
        "{}",
        run.stderr()
    );

    // The check can fail: a lost write is caught.
    let _: () = target
        .conn()
        .del(format!("app:w:{}", log.sets[log.sets.len() / 2]))
        .unwrap();
    let _: () = target.conn().decr("app:counter", 1).unwrap();
    assert_eq!(missing_writes(&target, &log).len(), 2);
}

#[test]
fn reverse_sync_carries_post_switch_writes_back_for_a_rollback() {
    let (source, target) = (seeded_source(), RedisServer::start());
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("switched");
    let stop = Arc::new(AtomicBool::new(false));
    let writer = app(source.url(), target.url(), flag.clone(), stop.clone());

    let plan = write_plan(dir.path(), true);
    let mut run = start_run(&plan, &source, &target, dir.path(), &flag);
    let deadline = Instant::now() + Duration::from_secs(120);
    while !run.stderr().contains("Reverse sync running") {
        assert!(Instant::now() < deadline, "{}", run.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
    // The application now writes to the target only; reverse sync replays it to the source.
    std::thread::sleep(Duration::from_millis(1000));
    stop.store(true, Ordering::Relaxed);
    let log = writer.join().unwrap();
    assert_eq!(log.failed, 0);
    assert!(log.on_target > 100, "{log:?}");
    let code = run.terminate(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{}", run.stderr());
    assert!(
        run.stderr()
            .contains("Reverse sync stopped at a final fence"),
        "{}",
        run.stderr()
    );

    // Rolling back to the source loses nothing.
    let missing = missing_writes(&source, &log);
    assert!(
        missing.is_empty(),
        "acknowledged writes missing on the old source: {missing:?}"
    );
    compare(&target.url(), &source.url(), &OracleOptions::default()).assert_identical();
}

#[test]
fn migrate_cutover_flag_switches_and_exits() {
    let (source, target) = (seeded_source(), RedisServer::start());
    let dir = tempfile::tempdir().unwrap();
    let stderr_path = dir.path().join("ferry.stderr");
    let child = ferry()
        .args([
            "migrate",
            "--source",
            &source.url(),
            "--target",
            &target.url(),
        ])
        .args([
            "--capture",
            "primary",
            "--cutover",
            "--max-pause-ms",
            "2000",
        ])
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--json")
        .arg(dir.path().join("report.json"))
        .env("FERRY_LOG", "ferry=info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    let mut run = FerryProcess::new(child, stderr_path);
    assert_eq!(
        run.wait(Duration::from_secs(120)),
        Some(0),
        "{}",
        run.stderr()
    );
    assert!(
        run.stderr().contains("Switched; source writes resumed."),
        "{}",
        run.stderr()
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("report.json")).unwrap()).unwrap();
    assert!(report["pause_ms"].as_u64().unwrap() < 2000, "{report:#}");
    compare(&source.url(), &target.url(), &OracleOptions::default()).assert_identical();
}
