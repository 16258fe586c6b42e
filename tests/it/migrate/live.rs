//! `ferry migrate` under conditions the flagship tests do not reach: errors only the target
//! gives, a stop during the snapshot, flushes, the capture-node choice and the source-buffer
//! guard.

use std::time::{Duration, Instant};

use super::{FerryProcess, dataset, start_migrate, start_past_snapshot, tail};
use crate::support::workload::{self, WorkloadOptions};
use crate::support::{
    Dataset, OracleOptions, OracleReport, RedisServer, ServerOptions, compare, fill,
};

fn oracle(source: &RedisServer, target: &RedisServer) -> OracleReport {
    let opts = OracleOptions {
        ttl_tolerance_ms: 1000,
        ..OracleOptions::default()
    };
    compare(&source.url(), &target.url(), &opts)
}

/// Stops ferry at its final fence, expecting exit 0, and checks the target equals the source.
fn stop_and_compare(
    ferry: &mut FerryProcess,
    source: &RedisServer,
    target: &RedisServer,
) -> String {
    let code = ferry.terminate(Duration::from_secs(90));
    let stderr = ferry.stderr();
    assert_eq!(code, Some(0), "ferry migrate failed:\n{stderr}");
    assert!(stderr.contains("final fence"), "{stderr}");
    let report = oracle(source, target);
    eprintln!(
        "{report}\n--- ferry stderr (tail) ---\n{}",
        tail(&stderr, 12)
    );
    report.assert_identical();
    stderr
}

/// Writes `n` new keys of `size` bytes to `server`, pipelined; errors are ignored (the writer
/// only feeds the stream).
fn write_burst(server: &RedisServer, prefix: &str, n: usize, size: usize) {
    let mut con = server.conn();
    let value: Vec<u8> = (0..size).map(|i| (i * 131 % 251) as u8).collect();
    for chunk in 0..n.div_ceil(50) {
        let mut pipe = redis::pipe();
        for i in chunk * 50..((chunk + 1) * 50).min(n) {
            pipe.cmd("SET")
                .arg(format!("{prefix}:{i}"))
                .arg(&value)
                .ignore();
        }
        let _: redis::RedisResult<()> = pipe.query(&mut con);
    }
}

#[test]
fn target_oom_is_a_difference_and_the_run_does_not_exit_0() {
    let source = RedisServer::start();
    let target = RedisServer::start_with(ServerOptions {
        maxmemory: Some(6 << 20),
        extra_config: vec!["maxmemory-policy noeviction".into()],
        ..ServerOptions::default()
    });
    fill(&source, &Dataset::tiny());
    let state = tempfile::tempdir().unwrap();
    let mut ferry = start_past_snapshot(&source, &target, state.path(), &[]);
    // A live writer fills the target past its maxmemory: 20 MB of new keys.
    write_burst(&source, "fill", 5000, 4096);
    std::thread::sleep(Duration::from_secs(2));
    let code = ferry.terminate(Duration::from_secs(90));
    let stderr = ferry.stderr();
    eprintln!("--- ferry stderr (tail) ---\n{}", tail(&stderr, 12));
    assert_eq!(
        code,
        Some(2),
        "the target differs, so the run must fail:\n{stderr}"
    );
    assert!(stderr.contains("OOM"), "{stderr}");
    assert!(
        stderr.contains("keys failed only on the target (e.g. db 0 key"),
        "{stderr}"
    );
    assert!(stderr.contains("target-only (OOM"), "{stderr}");
}

#[test]
fn errors_the_source_gave_too_keep_exit_0_and_an_exact_target() {
    let source = RedisServer::start();
    let target = RedisServer::start();
    fill(&source, &Dataset::tiny());
    let state = tempfile::tempdir().unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let mut con = source.conn();
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                let _: () = redis::cmd("SET")
                    .arg("str")
                    .arg("abc")
                    .query(&mut con)
                    .unwrap();
                let incr: redis::RedisResult<i64> = redis::cmd("INCR").arg("str").query(&mut con);
                assert!(incr.is_err(), "INCR of a non-integer must fail");
                let push: redis::RedisResult<i64> =
                    redis::cmd("LPUSH").arg("str").arg(i).query(&mut con);
                assert_eq!(push.unwrap_err().code(), Some("WRONGTYPE"));
                // A transaction whose second command fails at run time; the others apply.
                let tx: redis::RedisResult<redis::Value> = redis::pipe()
                    .atomic()
                    .cmd("SET")
                    .arg(format!("ok:{}", i % 100))
                    .arg(i)
                    .cmd("HSET")
                    .arg("str")
                    .arg("f")
                    .arg(i)
                    .cmd("INCR")
                    .arg("counter")
                    .query(&mut con);
                let _ = tx;
                std::thread::sleep(Duration::from_millis(2));
            }
            i
        })
    };
    let mut ferry = start_past_snapshot(&source, &target, state.path(), &[]);
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let rounds = writer.join().unwrap();
    assert!(rounds > 100, "{rounds}");
    let stderr = stop_and_compare(&mut ferry, &source, &target);
    let line = stderr
        .lines()
        .find(|l| l.contains("Migration stopped at the final fence"))
        .unwrap_or_else(|| panic!("no summary line:\n{stderr}"));
    assert!(line.contains(", 0 target-only"), "{line}");
    let expected: u64 = line
        .split("errors: ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no error counts: {line}"));
    assert!(expected > 100, "{line}");
}

#[test]
fn sigterm_mid_snapshot_finishes_the_snapshot_and_exits_0_exact() {
    let source = RedisServer::start();
    let target = RedisServer::start();
    fill(&source, &dataset());
    let state = tempfile::tempdir().unwrap();
    let load = workload::start(&source.url(), WorkloadOptions::default());
    std::thread::sleep(Duration::from_millis(300));
    let mut ferry = start_migrate(
        &source.url(),
        &target.url(),
        state.path(),
        &["--capture", "primary", "--max-source-ops", "2000"],
    );
    ferry.wait_log("Snapshot started", Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !ferry.stderr().contains("Snapshot reads done"),
        "too late to stop mid-snapshot"
    );
    let pid = ferry.child.id().to_string();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status();
    ferry.wait_log("finishing its reads first", Duration::from_secs(10));
    // Writes go on for a while after the signal, then stop before the final fence.
    std::thread::sleep(Duration::from_millis(500));
    let report = load.stop();
    assert!(
        !ferry.stderr().contains("Snapshot reads done"),
        "the snapshot ended before the writes did; the test proves less than it should"
    );
    let code = ferry.wait(Duration::from_secs(120));
    let stderr = ferry.stderr();
    assert_eq!(code, Some(0), "ferry migrate failed:\n{stderr}");
    assert!(stderr.contains("Snapshot reads done"), "{stderr}");
    let oracle = oracle(&source, &target);
    eprintln!(
        "{report}\n{oracle}\n--- ferry stderr (tail) ---\n{}",
        tail(&stderr, 12)
    );
    assert!(oracle.keys_compared > 9000, "{oracle}");
    oracle.assert_identical();
}

/// Runs the workload while ferry migrates, calling `mid_snapshot` and `mid_replay` with a
/// connection to the source at those points, then stops both and compares.
fn flush_under_load(mid_snapshot: &str, mid_replay: &str) {
    let source = RedisServer::start();
    let target = RedisServer::start();
    fill(&source, &dataset());
    let state = tempfile::tempdir().unwrap();
    let load = workload::start(&source.url(), WorkloadOptions::default());
    std::thread::sleep(Duration::from_millis(300));
    let mut ferry = start_migrate(
        &source.url(),
        &target.url(),
        state.path(),
        &["--capture", "primary", "--max-source-ops", "4000"],
    );
    let flush = |cmd: &str| {
        let (name, db) = cmd.split_once(' ').unwrap_or((cmd, "0"));
        let mut con = source.conn_db(db.parse().unwrap());
        let _: () = redis::cmd(name).query(&mut con).unwrap();
    };
    ferry.wait_log("Snapshot started", Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(400));
    flush(mid_snapshot);
    assert!(
        !ferry.stderr().contains("Snapshot reads done"),
        "the flush was meant to land mid-snapshot"
    );
    ferry.wait_log("Snapshot reads done", Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(1));
    flush(mid_replay);
    std::thread::sleep(Duration::from_secs(2));
    let report = load.stop();
    eprintln!("{report}");
    stop_and_compare(&mut ferry, &source, &target);
}

#[test]
fn flushdb_mid_snapshot_and_mid_replay_is_exact() {
    flush_under_load("FLUSHDB 1", "FLUSHDB 2");
}

#[test]
fn flushall_mid_snapshot_and_mid_replay_is_exact() {
    flush_under_load("FLUSHALL 0", "FLUSHALL 0");
}

/// A short migration with writes after the snapshot, once `replicas` replicas have acknowledged
/// the fill; returns ferry's log.
fn short_migration(source: &RedisServer, replicas: usize, extra: &[&str]) -> String {
    let target = RedisServer::start();
    fill(source, &Dataset::tiny());
    if replicas > 0 {
        // A replica's link can be up before the primary counts it online (diskless sync waits
        // for its first ACK); auto rightly passes over a replica the primary does not.
        source.wait_for_replicas(replicas, Duration::from_secs(10));
    }
    let state = tempfile::tempdir().unwrap();
    let mut ferry = start_migrate(&source.url(), &target.url(), state.path(), extra);
    ferry.wait_log("Snapshot reads done", Duration::from_secs(30));
    write_burst(source, "after", 200, 100);
    stop_and_compare(&mut ferry, source, &target)
}

#[test]
fn capture_auto_chooses_a_healthy_replica() {
    let source = RedisServer::start();
    let _replica = RedisServer::replica_of(&source);
    let stderr = short_migration(&source, 1, &["--capture", "auto"]);
    assert!(stderr.contains("auto: chose the replica"), "{stderr}");
    assert!(stderr.contains("replica (effects stream)"), "{stderr}");
}

#[test]
fn capture_auto_without_a_replica_chooses_the_primary() {
    let source = RedisServer::start();
    let stderr = short_migration(&source, 0, &[]);
    assert!(stderr.contains("auto: chose the primary"), "{stderr}");
    assert!(stderr.contains("primary (command stream)"), "{stderr}");
}

#[test]
fn tiny_monitor_buffer_bound_disconnects_capture_and_resyncs() {
    let source = RedisServer::start();
    let target = RedisServer::start();
    fill(&source, &Dataset::tiny());
    let state = tempfile::tempdir().unwrap();
    let load = workload::start(
        &source.url(),
        WorkloadOptions {
            rate: 500,
            ..WorkloadOptions::default()
        },
    );
    let mut ferry = start_past_snapshot(
        &source,
        &target,
        state.path(),
        &["--max-monitor-buffer", "1048576"],
    );
    // Freeze ferry so the source has to buffer a burst for its MONITOR connection; binary
    // values take four times their size there (docs/redis-behaviour.md §1).
    let pid = ferry.child.id().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut round = 0;
    while !ferry
        .stderr()
        .contains("disconnected to protect the source")
    {
        assert!(Instant::now() < deadline, "{}", ferry.stderr());
        let _ = std::process::Command::new("kill")
            .args(["-STOP", &pid])
            .status();
        write_burst(&source, &format!("burst{round}"), 40, 256 * 1024);
        let _ = std::process::Command::new("kill")
            .args(["-CONT", &pid])
            .status();
        round += 1;
        std::thread::sleep(Duration::from_secs(1));
    }
    ferry.wait_log("resyncing every key", Duration::from_secs(20));
    ferry.wait_log_n("Snapshot reads done", 2, Duration::from_secs(60));
    let report = load.stop();
    eprintln!("{report}");
    let stderr = stop_and_compare(&mut ferry, &source, &target);
    assert!(stderr.contains("Capture lost the stream"), "{stderr}");
}

#[test]
fn target_turned_read_only_mid_replay_is_retried_resynced_and_exact() {
    let source = RedisServer::start();
    let target = RedisServer::start();
    // An empty primary the target follows for a while, so it answers READONLY.
    let other = RedisServer::start();
    fill(&source, &Dataset::tiny());
    let state = tempfile::tempdir().unwrap();
    let load = workload::start(
        &source.url(),
        WorkloadOptions {
            rate: 500,
            ..WorkloadOptions::default()
        },
    );
    let mut ferry = start_past_snapshot(&source, &target, state.path(), &[]);
    std::thread::sleep(Duration::from_secs(1));
    let mut t = target.conn();
    let _: () = redis::cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(other.port())
        .query(&mut t)
        .unwrap();
    ferry.wait_log("READONLY", Duration::from_secs(20));
    std::thread::sleep(Duration::from_secs(2));
    let _: () = redis::cmd("REPLICAOF")
        .arg("NO")
        .arg("ONE")
        .query(&mut t)
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let report = load.stop();
    eprintln!("{report}");
    let stderr = stop_and_compare(&mut ferry, &source, &target);
    let resyncs = stderr.matches("The target connection broke").count();
    // A growing backoff: a few attempts per shard while the target refuses, not a tight loop.
    assert!((1..=24).contains(&resyncs), "{resyncs} resyncs:\n{stderr}");
}

#[test]
fn a_second_stop_signal_exits_2_without_waiting_for_the_snapshot() {
    let source = RedisServer::start();
    let target = RedisServer::start();
    fill(&source, &Dataset::tiny());
    let state = tempfile::tempdir().unwrap();
    let mut ferry = start_migrate(
        &source.url(),
        &target.url(),
        state.path(),
        &["--capture", "primary", "--max-source-ops", "100"],
    );
    ferry.wait_log("Snapshot started", Duration::from_secs(20));
    let pid = ferry.child.id().to_string();
    let term = || {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status();
    };
    term();
    ferry.wait_log("finishing its reads first", Duration::from_secs(10));
    term();
    let code = ferry.wait(Duration::from_secs(10));
    let stderr = ferry.stderr();
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("second stop signal"), "{stderr}");
    assert!(!stderr.contains("Snapshot reads done"), "{stderr}");
}
