//! `ferry snapshot` end to end against real servers, each run checked with the oracle:
//! plain and ElastiCache-like sources, type-aware mode, failures reported, and resume after
//! `kill -9`.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::cli::{ferry, run_ferry};
use crate::support::{
    Dataset, OracleOptions, RedisServer, RespProxy, ServerOptions, compare, fill,
};

/// The acceptance dataset: all six types, TTLs, binary keys and values, 3 dbs, a 500k-element
/// list, a 200k-field hash, and a stream with consumer groups.
fn dataset() -> Dataset {
    Dataset {
        dbs: vec![0, 1, 2],
        keys_per_db: 3000,
        big_list: 500_000,
        big_hash: 200_000,
        big_set: 50_000,
        big_zset: 50_000,
        stream_entries: 5000,
        ..Dataset::default()
    }
}

fn report(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn snapshot(source: &RedisServer, target: &RedisServer, extra: &[&str]) -> serde_json::Value {
    snapshot_urls(&source.url(), &target.url(), extra).0
}

/// Runs `ferry snapshot`, asserts exit 0, and returns the JSON report and the summary line.
fn snapshot_urls(source: &str, target: &str, extra: &[&str]) -> (serde_json::Value, Summary) {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let mut args = vec![
        "snapshot",
        "--source",
        source,
        "--target",
        target,
        "--quiet",
        "--json",
        json.to_str().unwrap(),
    ];
    args.extend(extra);
    let out = run_ferry(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "ferry snapshot failed: {stderr}");
    assert!(stderr.contains("Snapshot done"), "{stderr}");
    (report(&json), Summary::parse(&stderr))
}

/// The fields of the summary line `ferry snapshot` prints last.
#[derive(Debug, PartialEq, Eq)]
struct Summary {
    keys: u64,
    chunked: u64,
    expired: u64,
    vanished: u64,
    failed: u64,
}

impl Summary {
    /// Parses `Snapshot …: N keys, … MB in … s (… keys/s); chunked N; skipped N expired,
    /// N vanished; failed N[ (…)]`.
    #[track_caller]
    fn parse(stderr: &str) -> Summary {
        let line = stderr
            .lines()
            .find(|l| l.starts_with("Snapshot "))
            .unwrap_or_else(|| panic!("no summary line in {stderr}"));
        let num = |text: &str, before: &str| -> u64 {
            let at = text
                .find(before)
                .unwrap_or_else(|| panic!("no {before:?} in {line}"));
            let digits: String = text[at + before.len()..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            digits
                .parse()
                .unwrap_or_else(|_| panic!("no number after {before:?} in {line}"))
        };
        let keys = line.split(": ").nth(1).unwrap_or_default();
        Summary {
            keys: num(keys, ""),
            chunked: num(line, "; chunked "),
            expired: num(line, "; skipped "),
            vanished: num(line, " expired, "),
            failed: num(line, "; failed "),
        }
    }
}

#[test]
fn snapshot_from_a_plain_source_is_exact() {
    let source = RedisServer::start();
    let target = RedisServer::start();
    let filled = fill(&source, &dataset());
    let (r, summary) = snapshot_urls(&source.url(), &target.url(), &[]);
    let total = filled.total_keys() as u64;
    assert_eq!(r["keys"].as_u64().unwrap(), total);
    assert_eq!(r["failed_keys"].as_array().unwrap().len(), 0);
    assert_eq!(
        summary,
        Summary {
            keys: total,
            chunked: 0,
            expired: 0,
            vanished: 0,
            failed: 0
        }
    );
    compare(&source.url(), &target.url(), &OracleOptions::default()).assert_identical();
}

#[test]
fn snapshot_from_an_elasticache_like_source_is_exact() {
    let source = RedisServer::elasticache_like();
    let target = RedisServer::start();
    fill(&source, &dataset());
    // Small keys per fenced read and a low big-key bound exercise both paths.
    snapshot(
        &source,
        &target,
        &["--batch", "16", "--big-key-bytes", "1000000"],
    );
    compare(&source.url(), &target.url(), &OracleOptions::default()).assert_identical();
}

#[test]
fn type_aware_snapshot_is_exact() {
    let source = RedisServer::start();
    let target = RedisServer::start();
    let filled = fill(&source, &dataset());
    let r = snapshot(&source, &target, &["--type-aware"]);
    assert_eq!(
        r["chunked_keys"].as_u64().unwrap() as usize,
        filled.total_keys()
    );
    compare(&source.url(), &target.url(), &OracleOptions::default()).assert_identical();
}

#[test]
fn failed_keys_are_reported_with_exit_code_2() {
    let source = RedisServer::start();
    // A target that runs out of memory part-way: RESTORE fails with OOM for the rest.
    let target = RedisServer::start_with(ServerOptions {
        maxmemory: Some(4 << 20),
        extra_config: vec!["maxmemory-policy noeviction".into()],
        ..ServerOptions::default()
    });
    let mut con = source.conn();
    for i in 0..400 {
        let _: () = redis::cmd("SET")
            .arg(format!("k{i}"))
            .arg(vec![b'x'; 64 * 1024])
            .query(&mut con)
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("r.json");
    let out = run_ferry(&[
        "snapshot",
        "--source",
        &source.url(),
        "--target",
        &target.url(),
        "--quiet",
        "--json",
        json.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains("failed key db0"), "{stderr}");
    let r = report(&json);
    let failed = r["failed"]["RESTORE OOM"].as_u64().unwrap();
    let copied = r["keys"].as_u64().unwrap();
    assert!(failed > 0 && copied > 0, "{r}");
    assert_eq!(failed + copied, 400, "{r}");
    let summary = Summary::parse(&stderr);
    assert_eq!((summary.keys, summary.failed), (copied, failed), "{stderr}");
    assert_eq!((summary.expired, summary.vanished), (0, 0), "{stderr}");
    assert!(
        stderr.contains(&format!("failed {failed} ({failed} RESTORE OOM)")),
        "{stderr}"
    );
}

#[test]
fn snapshot_resumes_after_kill_9() {
    let source = RedisServer::start();
    let target = RedisServer::start();
    let ds = Dataset {
        dbs: vec![0, 1, 2],
        keys_per_db: 20_000,
        big_list: 20_000,
        big_hash: 20_000,
        big_set: 1000,
        big_zset: 1000,
        stream_entries: 1000,
        ..Dataset::default()
    };
    let total = fill(&source, &ds).total_keys() as u64;
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path().to_str().unwrap().to_string();
    // Throttled so that the kill lands mid-snapshot.
    let common = [
        "snapshot".to_string(),
        "--source".into(),
        source.url(),
        "--target".into(),
        target.url(),
        "--quiet".into(),
        "--state-dir".into(),
        state_dir.clone(),
    ];
    let mut child = ferry()
        .args(&common)
        .args(["--max-source-ops", "40000", "--batch", "32"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let checkpoint = state.path().join("snapshot.json");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut target_con = target.conn();
    loop {
        assert!(Instant::now() < deadline, "the snapshot made no progress");
        std::thread::sleep(Duration::from_millis(100));
        let done =
            checkpoint.exists() && report(&checkpoint)["keys_done"].as_u64().unwrap_or(0) > 2000;
        if done {
            break;
        }
    }
    // SIGKILL: no chance to clean up or save anything more.
    child.kill().unwrap();
    child.wait().unwrap();
    let partial: u64 = (0..3)
        .map(|db| {
            let _: () = redis::cmd("SELECT").arg(db).query(&mut target_con).unwrap();
            redis::cmd("DBSIZE").query::<u64>(&mut target_con).unwrap()
        })
        .sum();
    assert!(
        partial > 0 && partial < total,
        "killed too late: {partial} of {total}"
    );

    let json = state.path().join("report.json");
    let out = ferry()
        .args(&common)
        .args(["--json", json.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = report(&json);
    assert_eq!(r["resumed"], true, "{r}");
    let second = r["keys"].as_u64().unwrap();
    assert!(
        second < total,
        "the rerun copied {second} of {total} keys: it did not resume"
    );
    compare(&source.url(), &target.url(), &OracleOptions::default()).assert_identical();
}

/// Regression (snapshot audit): `--max-source-ops` did not pace chunked copies.
#[test]
fn max_source_ops_paces_chunked_copies() {
    let source = RedisServer::start();
    let target = RedisServer::start();
    let mut con = source.conn();
    for start in (0..100_000).step_by(1000) {
        let mut cmd = redis::cmd("RPUSH");
        cmd.arg("big:list");
        for i in start..start + 1000 {
            cmd.arg(format!("item:{i}"));
        }
        let _: () = cmd.query(&mut con).unwrap();
    }
    let per_sec = 50;
    let started = Instant::now();
    let r = snapshot(
        &source,
        &target,
        &[
            "--type-aware",
            "--workers",
            "1",
            "--max-source-ops",
            &per_sec.to_string(),
        ],
    );
    let elapsed = started.elapsed();
    assert_eq!(r["chunked_keys"], 1, "{r}");
    // At least 101 LRANGE windows (the last one empty) besides SCAN and the TYPE fence; the
    // first op is free. Sleeps never end early, so half the minimum cannot flake, and an
    // unpaced copy of 100k short items takes well under it.
    let minimum = Duration::from_secs_f64(100.0 / per_sec as f64);
    assert!(elapsed >= minimum / 2, "{elapsed:?} < {minimum:?} / 2");
    compare(&source.url(), &target.url(), &OracleOptions::default()).assert_identical();
}

/// Regression (snapshot audit): keys that failed sat below the saved `SCAN` cursor and were
/// never recorded, so a resumed run exited 0 with "failed 0" while the target missed them.
#[test]
fn failed_keys_are_retried_by_the_resumed_run() {
    let source = RedisServer::start();
    let target = RedisServer::start_with(ServerOptions {
        maxmemory: Some(8 << 20),
        extra_config: vec!["maxmemory-policy noeviction".into()],
        ..ServerOptions::default()
    });
    let mut con = source.conn();
    let total = 2000u64;
    let mut pipe = redis::pipe();
    for i in 0..total {
        pipe.cmd("SET")
            .arg(format!("k{i}"))
            .arg(vec![b'x'; 16 * 1024])
            .ignore();
    }
    pipe.exec(&mut con).unwrap();
    let state = tempfile::tempdir().unwrap();
    let common = [
        "snapshot".to_string(),
        "--source".into(),
        source.url(),
        "--target".into(),
        target.url(),
        "--quiet".into(),
        "--state-dir".into(),
        state.path().to_str().unwrap().to_string(),
    ];
    // Throttled so that the kill usually lands mid-run; if the run ends first (exit 2), the
    // checkpoint must hold the failures all the same.
    let mut child = ferry()
        .args(&common)
        .args(["--max-source-ops", "3000", "--batch", "16"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let checkpoint = state.path().join("snapshot.json");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "no failed key was checkpointed");
        std::thread::sleep(Duration::from_millis(50));
        let failed = checkpoint.exists()
            && report(&checkpoint)["failed"]
                .as_array()
                .is_some_and(|f| !f.is_empty());
        if failed {
            break;
        }
    }
    let _ = child.kill();
    let status = child.wait().unwrap();
    eprintln!("first run: {status}");
    let mut tcon = target.conn();
    let copied: u64 = redis::cmd("DBSIZE").query(&mut tcon).unwrap();
    assert!(copied < total, "the target is not short of keys: {copied}");

    // Still out of memory: the retried keys fail again, are reported, and the exit code says so.
    let json = state.path().join("report.json");
    let out = ferry()
        .args(&common)
        .args(["--json", json.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let r = report(&json);
    assert!(r["retried"].as_u64().unwrap() > 0, "{r}");
    assert!(r["failed"]["RESTORE OOM"].as_u64().unwrap() > 0, "{r}");

    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg("0")
        .query(&mut tcon)
        .unwrap();
    let out = ferry()
        .args(&common)
        .args(["--json", json.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("failed 0"), "{stderr}");
    let r = report(&json);
    assert_eq!(r["resumed"], true, "{r}");
    assert!(r["retried"].as_u64().unwrap() > 0, "{r}");
    compare(&source.url(), &target.url(), &OracleOptions::default()).assert_identical();
    assert_eq!(report(&checkpoint)["complete"], true);
}

/// Regression (snapshot audit): `kill -9` during a chunked copy left its temporary key
/// (`{key}ferry-tmp:…`) on the target for good; the resumed run must delete it.
#[test]
fn resume_deletes_the_temp_key_of_a_killed_chunked_copy() {
    let source = RedisServer::start();
    let target = RedisServer::start();
    let mut con = source.conn();
    for start in (0..300_000).step_by(1000) {
        let mut cmd = redis::cmd("RPUSH");
        cmd.arg("big:list");
        for i in start..start + 1000 {
            cmd.arg(format!("item:{i}"));
        }
        let _: () = cmd.query(&mut con).unwrap();
    }
    for i in 0..50 {
        let _: () = redis::cmd("SET")
            .arg(format!("small:{i}"))
            .arg(i)
            .query(&mut con)
            .unwrap();
    }
    let state = tempfile::tempdir().unwrap();
    let common = [
        "snapshot".to_string(),
        "--source".into(),
        source.url(),
        "--target".into(),
        target.url(),
        "--quiet".into(),
        "--type-aware".into(),
        "--state-dir".into(),
        state.path().to_str().unwrap().to_string(),
    ];
    // 300 windows at 100 reads/s: the copy takes about 3 s, and the kill waits for its temp key.
    let mut child = ferry()
        .args(&common)
        .args(["--max-source-ops", "100"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut tcon = target.conn();
    let deadline = Instant::now() + Duration::from_secs(20);
    // Small keys get temporary keys too (every key is type-aware here); wait for the list's.
    let temp_keys = |tcon: &mut redis::Connection, pattern: &str| -> Vec<Vec<u8>> {
        redis::cmd("KEYS").arg(pattern).query(tcon).unwrap()
    };
    while temp_keys(&mut tcon, "{big:list}ferry-tmp:*").is_empty() {
        assert!(
            Instant::now() < deadline,
            "no temp key appeared on the target"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "ferry ended before the kill"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let left = temp_keys(&mut tcon, "*ferry-tmp:*");
    assert!(
        left.iter().any(|k| k.starts_with(b"{big:list}ferry-tmp:")),
        "{left:?}"
    );

    let json = state.path().join("report.json");
    let out = ferry()
        .args(&common)
        .args(["--json", json.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let r = report(&json);
    // A write already sent when ferry died may still create a temp key after the KEYS above.
    let swept = r["leftover_temp_keys"].as_u64().unwrap();
    assert!(swept >= left.len() as u64, "{r}");
    assert!(temp_keys(&mut tcon, "*ferry-tmp:*").is_empty());
    // The oracle reports extra keys on the target too.
    compare(&source.url(), &target.url(), &OracleOptions::default()).assert_identical();
}

/// A target that rejects every `RESTORE` as a newer payload version (a proxy in front of a real
/// server) gets every key type-aware, and the rejected `RESTORE`s are not failures.
#[test]
fn a_target_rejecting_the_payload_version_gets_every_key_type_aware() {
    let source = RedisServer::start();
    let target = RedisServer::start();
    let proxy = RespProxy::rejecting_restore(&target);
    let filled = fill(&source, &Dataset::tiny());
    let total = filled.total_keys() as u64;
    for ty in ["string", "list", "set", "zset", "hash", "stream"] {
        assert!(filled.types.get(ty).is_some_and(|n| *n > 0), "no {ty} key");
    }
    let (r, summary) = snapshot_urls(&source.url(), &proxy.url(), &[]);
    assert!(proxy.rejected() > 0, "no RESTORE reached the proxy");
    assert_eq!(
        summary,
        Summary {
            keys: total,
            chunked: total,
            expired: 0,
            vanished: 0,
            failed: 0
        }
    );
    assert_eq!(r["chunked_keys"].as_u64().unwrap(), total, "{r}");
    assert_eq!(r["failed"], serde_json::json!({}), "{r}");
    // Behind the proxy, the real target holds every key, streams with their groups and
    // pending entries included.
    compare(&source.url(), &target.url(), &OracleOptions::default()).assert_identical();
}

#[test]
fn db_flags_copy_only_the_chosen_dbs() {
    let source = RedisServer::start();
    let target = RedisServer::start();
    let filled = fill(&source, &Dataset::tiny());
    let chosen = filled.keys[&0] as u64 + filled.keys[&2] as u64;
    let (r, summary) = snapshot_urls(&source.url(), &target.url(), &["--db", "0", "--db", "2"]);
    assert_eq!(r["keys"].as_u64().unwrap(), chosen, "{r}");
    assert_eq!(summary.keys, chosen);
    assert_eq!(summary.failed, 0);
    let keyspace: String = redis::cmd("INFO")
        .arg("keyspace")
        .query(&mut target.conn())
        .unwrap();
    assert!(!keyspace.contains("db1:"), "db 1 was copied: {keyspace}");
    compare(
        &source.url(),
        &target.url(),
        &OracleOptions::with_dbs([0, 2]),
    )
    .assert_identical();
}
