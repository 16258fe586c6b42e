//! `ferry migrate` end to end: a live mixed workload runs through the whole migration, ferry is
//! stopped at a final fence, and the oracle finds 0 differences.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::cli::ferry;
use crate::support::workload::{self, WorkloadOptions};
use crate::support::{Dataset, OracleOptions, RedisServer, compare, fill};

/// A ferry process, killed on drop so a failing test leaves nothing running.
pub struct FerryProcess {
    pub child: Child,
    pub stderr_path: std::path::PathBuf,
}

impl Drop for FerryProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl FerryProcess {
    pub fn new(child: Child, stderr_path: std::path::PathBuf) -> FerryProcess {
        FerryProcess { child, stderr_path }
    }

    /// Waits for the exit code.
    pub fn wait(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Waits until the log contains `text` `count` times.
    pub fn wait_log_n(&self, text: &str, count: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.stderr().matches(text).count() < count {
            assert!(
                Instant::now() < deadline,
                "ferry never logged {text:?} {count} times:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the log contains `text`.
    pub fn wait_log(&self, text: &str, timeout: Duration) {
        self.wait_log_n(text, 1, timeout);
    }

    /// Sends SIGTERM and waits for the exit code.
    pub fn terminate(&mut self, timeout: Duration) -> Option<i32> {
        let pid = self.child.id().to_string();
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

pub fn start_migrate(
    source: &str,
    target: &str,
    state: &std::path::Path,
    extra: &[&str],
) -> FerryProcess {
    start_migrate_logging(
        source,
        target,
        &state.join("state"),
        &state.join("ferry.stderr"),
        extra,
    )
}

/// `ferry migrate --capture primary` (plus `extra`), returned once the snapshot's reads are
/// done, so that what the test writes next reaches the target through replay.
pub fn start_past_snapshot(
    source: &RedisServer,
    target: &RedisServer,
    state: &std::path::Path,
    extra: &[&str],
) -> FerryProcess {
    let args: Vec<&str> = ["--capture", "primary"]
        .iter()
        .chain(extra)
        .copied()
        .collect();
    let ferry = start_migrate(&source.url(), &target.url(), state, &args);
    ferry.wait_log("Snapshot reads done", Duration::from_secs(30));
    ferry
}

pub fn start_migrate_logging(
    source: &str,
    target: &str,
    state_dir: &std::path::Path,
    stderr_path: &std::path::Path,
    extra: &[&str],
) -> FerryProcess {
    let stderr = std::fs::File::create(stderr_path).unwrap();
    let child = ferry()
        .args([
            "migrate",
            "--source",
            source,
            "--target",
            target,
            "--state-dir",
        ])
        .arg(state_dir)
        .args(extra)
        .env("FERRY_LOG", "ferry=info")
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();
    FerryProcess {
        child,
        stderr_path: stderr_path.to_path_buf(),
    }
}

pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<_> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn dataset() -> Dataset {
    Dataset {
        dbs: vec![0, 1, 2],
        keys_per_db: 3000,
        big_list: 50_000,
        big_hash: 20_000,
        big_set: 5000,
        big_zset: 5000,
        stream_entries: 2000,
        ..Dataset::default()
    }
}

/// What a test does while the workload and ferry run.
pub struct Live<'a> {
    pub source: &'a RedisServer,
    pub target: &'a mut RedisServer,
    pub ferry: FerryProcess,
    pub state: &'a std::path::Path,
    pub extra: Vec<String>,
}

impl Live<'_> {
    /// Waits until ferry's log contains `text`.
    pub fn wait_log(&self, text: &str, timeout: Duration) {
        self.ferry.wait_log(text, timeout);
    }

    /// `kill -9` of ferry, then a restart with the same state dir.
    pub fn kill_and_restart(&mut self) {
        let _ = self.ferry.child.kill();
        let _ = self.ferry.child.wait();
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        let log = self.state.join("ferry-restarted.stderr");
        self.ferry = start_migrate_logging(
            &self.source.url(),
            &self.target.url(),
            &self.state.join("state"),
            &log,
            &extra,
        );
    }
}

/// Runs the workload for `secs` while ferry migrates (calling `during` meanwhile), stops the
/// workload, stops ferry at its final fence, and compares.
pub(crate) fn migrate_under_load(
    source: &RedisServer,
    target: &mut RedisServer,
    secs: u64,
    extra: &[&str],
    during: impl FnOnce(&mut Live),
) -> String {
    fill(source, &dataset());
    let state = tempfile::tempdir().unwrap();
    // Older engines lack `EXPIRE … GT|NX` (7.0).
    let version: String = redis::cmd("INFO")
        .arg("server")
        .query(&mut source.conn())
        .unwrap_or_default();
    let level = crate::support::server::info_field(&version, "redis_version").and_then(|v| {
        let mut parts = v.split('.').map(|p| p.parse::<u32>().ok());
        Some((parts.next()??, parts.next()??))
    });
    let load = workload::start(
        &source.url(),
        WorkloadOptions {
            expire_flags: level.is_none_or(|l| l >= (7, 0)),
            before_6_2: level.is_some_and(|l| l < (6, 2)),
            streams: level.is_none_or(|l| l >= (5, 0)),
            ..WorkloadOptions::default()
        },
    );
    let streams = level.is_none_or(|l| l >= (5, 0));
    std::thread::sleep(Duration::from_millis(500));
    let ferry = start_migrate(&source.url(), &target.url(), state.path(), extra);
    let started = Instant::now();
    let mut live = Live {
        source,
        target,
        ferry,
        state: state.path(),
        extra: extra.iter().map(|s| s.to_string()).collect(),
    };
    during(&mut live);
    if let Some(rest) = Duration::from_secs(secs).checked_sub(started.elapsed()) {
        std::thread::sleep(rest);
    }
    let report = load.stop();
    assert!(report.total() > secs * 1000, "workload too small: {report}");
    // The run really contained every behaviour it is meant to test, served blocked pops
    // included, and nothing failed that should not have.
    assert!(
        report.errors.is_empty(),
        "unexpected workload errors: {report}"
    );
    let missing: Vec<&str> = workload::KINDS
        .iter()
        .copied()
        .filter(|k| report.count(k) == 0)
        .filter(|k| streams || !k.starts_with('x'))
        .collect();
    assert!(
        missing.is_empty(),
        "kinds never produced: {missing:?}\n{report}"
    );
    let code = live.ferry.terminate(Duration::from_secs(60));
    let stderr = live.ferry.stderr();
    assert_eq!(code, Some(0), "ferry migrate failed:\n{stderr}");
    assert!(stderr.contains("final fence"), "{stderr}");
    let opts = OracleOptions {
        ttl_tolerance_ms: 1000,
        ..OracleOptions::default()
    };
    let oracle = compare(&source.url(), &live.target.url(), &opts);
    eprintln!(
        "{report}\n{oracle}\n--- ferry stderr (tail) ---\n{}",
        tail(&stderr, 15)
    );
    assert!(oracle.keys_compared > 9000, "{oracle}");
    if !oracle.is_identical() {
        // A rare difference is diagnosed from the whole log, not its tail.
        eprintln!("--- ferry stderr (whole) ---\n{stderr}");
    }
    oracle.assert_identical();
    stderr
}

fn flagship_secs() -> u64 {
    std::env::var("FERRY_FLAGSHIP_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30)
}

#[test]
fn flagship_live_migration_from_an_elasticache_like_source_is_exact() {
    let source = RedisServer::elasticache_like();
    let mut target = RedisServer::start();
    migrate_under_load(
        &source,
        &mut target,
        flagship_secs(),
        &["--capture", "primary"],
        |_| {},
    );
}

#[test]
fn live_migration_capturing_from_a_replica_is_exact() {
    let source = RedisServer::start();
    let _replica = RedisServer::replica_of(&source);
    let mut target = RedisServer::start();
    let stderr = migrate_under_load(&source, &mut target, 12, &["--capture", "replica"], |_| {});
    assert!(stderr.contains("replica (effects stream)"), "{stderr}");
}

#[test]
fn kill_9_mid_snapshot_then_restart_is_exact() {
    let source = RedisServer::start();
    let mut target = RedisServer::start();
    migrate_under_load(
        &source,
        &mut target,
        12,
        &["--capture", "primary", "--max-source-ops", "4000"],
        |live| {
            live.wait_log("Snapshot started", Duration::from_secs(20));
            std::thread::sleep(Duration::from_millis(700));
            assert!(
                !live.ferry.stderr().contains("Snapshot reads done"),
                "too late to kill mid-snapshot"
            );
            live.kill_and_restart();
        },
    );
}

#[test]
fn kill_9_mid_replay_then_restart_is_exact() {
    let source = RedisServer::start();
    let mut target = RedisServer::start();
    migrate_under_load(
        &source,
        &mut target,
        12,
        &["--capture", "primary"],
        |live| {
            live.wait_log("Snapshot reads done", Duration::from_secs(30));
            std::thread::sleep(Duration::from_secs(2));
            live.kill_and_restart();
        },
    );
}

#[test]
fn killed_monitor_connection_is_a_gap_that_resyncs() {
    let source = RedisServer::start();
    let mut target = RedisServer::start();
    let stderr = migrate_under_load(
        &source,
        &mut target,
        12,
        &["--capture", "primary"],
        |live| {
            live.wait_log("Snapshot reads done", Duration::from_secs(30));
            std::thread::sleep(Duration::from_secs(2));
            let mut con = live.source.conn();
            let list: String = redis::cmd("CLIENT").arg("LIST").query(&mut con).unwrap();
            let id = list
                .lines()
                .find(|l| l.contains("name=ferry-monitor"))
                .and_then(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
                .expect("ferry's MONITOR connection")
                .to_string();
            let _: () = redis::cmd("CLIENT")
                .arg("KILL")
                .arg("ID")
                .arg(&id)
                .query(&mut con)
                .unwrap();
            live.wait_log("resyncing every key", Duration::from_secs(20));
        },
    );
    assert!(stderr.contains("Capture lost the stream"), "{stderr}");
}

#[test]
fn target_restarted_mid_replay_is_resynced() {
    let source = RedisServer::start();
    let mut target = RedisServer::start();
    let stderr = migrate_under_load(
        &source,
        &mut target,
        12,
        &["--capture", "primary"],
        |live| {
            live.wait_log("Snapshot reads done", Duration::from_secs(30));
            std::thread::sleep(Duration::from_secs(2));
            live.target.restart();
            live.wait_log("resyncing every key", Duration::from_secs(30));
        },
    );
    assert!(stderr.contains("target connection broke"), "{stderr}");
}

/// Found by the replay benchmark (issue 4): a backlog of small commands on one connection filled
/// the window before the send buffer reached its flush size, and replay waited forever.
#[test]
fn issue4_small_command_backlog_does_not_stall_replay() {
    let source = RedisServer::start();
    let target = RedisServer::start();
    let state = tempfile::tempdir().unwrap();
    let mut ferry = start_past_snapshot(&source, &target, state.path(), &[]);
    // Stall the target while 50k tiny writes to one key pile up in the journal.
    let mut t = target.conn();
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(3000)
        .arg("WRITE")
        .query(&mut t)
        .unwrap();
    let mut s = source.conn();
    for chunk in 0..50 {
        let mut pipe = redis::pipe();
        for i in 0..1000 {
            pipe.cmd("LPUSH").arg("q").arg(chunk * 1000 + i).ignore();
        }
        let _: () = pipe.query(&mut s).unwrap();
    }
    std::thread::sleep(Duration::from_secs(4));
    let code = ferry.terminate(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{}", ferry.stderr());
    let len: u64 = redis::cmd("LLEN").arg("q").query(&mut t).unwrap();
    assert_eq!(len, 50_000);
    compare(&source.url(), &target.url(), &OracleOptions::default()).assert_identical();
}

mod live;
