//! Redis Cluster as a target: a standalone source migrated live to a 3-master cluster (the
//! oracle scanning every master), a slot migrated on the target during replay, and the
//! refusals of what is not supported yet (a live migration from a cluster source, dbs a
//! cluster cannot hold). A cluster source for the other commands: tests/it/cluster_source.rs.

use std::time::{Duration, Instant};

use crate::cli::ferry;
use crate::migrate::{start_migrate, tail};
use crate::support::cluster::{Cluster, SLOT_RANGES};
use crate::support::workload::{self, WorkloadOptions};
use crate::support::{
    Dataset, OracleOptions, OracleReport, RedisServer, cluster_primaries, compare_to_cluster, fill,
};

fn oracle(source: &RedisServer, target: &Cluster) -> OracleReport {
    let opts = OracleOptions {
        ttl_tolerance_ms: 1000,
        ..OracleOptions::default()
    };
    let primaries = cluster_primaries(&target.urls()[0]);
    assert_eq!(primaries.len(), 3, "{primaries:?}");
    compare_to_cluster(&source.url(), &target.urls()[0], &opts)
}

/// One db: a cluster has db 0 only.
pub(crate) fn dataset() -> Dataset {
    Dataset {
        dbs: vec![0],
        keys_per_db: 3000,
        big_list: 20_000,
        big_hash: 10_000,
        big_set: 5000,
        big_zset: 5000,
        stream_entries: 2000,
        ..Dataset::default()
    }
}

/// Writes across slots that a cluster cannot take as they are, in a loop until `stop`:
/// `MSET` and `DEL` of keys in several slots (split), `MULTI` over several slots (split by
/// slot), `RENAME` and `SUNIONSTORE` across slots (re-copied), `RPOPLPUSH` within a hash tag.
fn cross_slot_writer(
    url: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut con = redis::Client::open(url.as_str())
            .unwrap()
            .get_connection()
            .unwrap();
        let mut i = 0u64;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            i += 1;
            let n = i % 50;
            let _: () = redis::cmd("MSET")
                .arg(format!("xs:a:{n}"))
                .arg(i)
                .arg(format!("xs:b:{n}"))
                .arg(i * 2)
                .arg(format!("xs:c:{n}"))
                .arg(i * 3)
                .query(&mut con)
                .unwrap();
            let _: () = redis::pipe()
                .atomic()
                .cmd("INCR")
                .arg(format!("xs:ctr:{}", i % 7))
                .cmd("HSET")
                .arg(format!("xs:h:{}", i % 11))
                .arg("f")
                .arg(i)
                .cmd("SADD")
                .arg(format!("xs:s:{}", i % 5))
                .arg(i % 100)
                .cmd("EXPIRE")
                .arg(format!("xs:b:{n}"))
                .arg(300)
                .query(&mut con)
                .unwrap();
            // Many keys in one slot, so that moving it takes a while (ASK meanwhile).
            let _: i64 = redis::cmd("INCR")
                .arg(format!("{{xs}}:n:{}", i % 200))
                .query(&mut con)
                .unwrap();
            let _: () = redis::cmd("RPUSH")
                .arg("{xs}:q")
                .arg(i)
                .query(&mut con)
                .unwrap();
            if i.is_multiple_of(3) {
                let _: redis::Value = redis::cmd("RPOPLPUSH")
                    .arg("{xs}:q")
                    .arg("{xs}:done")
                    .query(&mut con)
                    .unwrap();
            }
            if i.is_multiple_of(5) {
                let _: i64 = redis::cmd("DEL")
                    .arg(format!("xs:a:{}", (i + 25) % 50))
                    .arg(format!("xs:c:{}", (i + 25) % 50))
                    .query(&mut con)
                    .unwrap();
                let _: i64 = redis::cmd("SUNIONSTORE")
                    .arg(format!("xs:u:{}", i % 3))
                    .arg(format!("xs:s:{}", i % 5))
                    .arg(format!("xs:s:{}", (i + 1) % 5))
                    .query(&mut con)
                    .unwrap();
                let _: redis::RedisResult<()> = redis::cmd("RENAME")
                    .arg(format!("xs:c:{}", (i + 10) % 50))
                    .arg(format!("xs:r:{}", i % 13))
                    .query(&mut con);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        i
    })
}

/// Runs the standard workload (db 0) and the cross-slot writer against `source` while ferry
/// migrates it to `target`, calling `during` meanwhile; stops everything and compares.
fn migrate_to_cluster(
    source: &RedisServer,
    target: &Cluster,
    secs: u64,
    extra: &[&str],
    during: impl FnOnce(&crate::migrate::FerryProcess),
) -> String {
    fill(source, &dataset());
    let state = tempfile::tempdir().unwrap();
    let load = workload::start(
        &source.url(),
        WorkloadOptions {
            dbs: vec![0],
            ..WorkloadOptions::default()
        },
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let cross = cross_slot_writer(source.url(), stop.clone());
    std::thread::sleep(Duration::from_millis(500));
    let mut ferry = start_migrate(
        &source.url(),
        &target.urls()[1],
        state.path(),
        &[&["--capture", "primary"], extra].concat(),
    );
    let started = Instant::now();
    during(&ferry);
    if let Some(rest) = Duration::from_secs(secs).checked_sub(started.elapsed()) {
        std::thread::sleep(rest);
    }
    let report = load.stop();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let cross_rounds = cross.join().unwrap();
    assert!(
        cross_rounds > 100,
        "cross-slot writer too slow: {cross_rounds}"
    );
    assert!(
        report.errors.is_empty(),
        "unexpected workload errors: {report}"
    );
    let code = ferry.terminate(Duration::from_secs(90));
    let stderr = ferry.stderr();
    assert_eq!(code, Some(0), "ferry migrate failed:\n{stderr}");
    let oracle = oracle(source, target);
    eprintln!(
        "{report}\n{oracle}\n--- ferry stderr (tail) ---\n{}",
        tail(&stderr, 15)
    );
    assert!(oracle.keys_compared > 3000, "{oracle}");
    oracle.assert_identical();
    assert!(
        stderr.contains("The target is a Redis Cluster"),
        "the shards were not logged:\n{stderr}"
    );
    stderr
}

/// The figure after `label` in the summary line, e.g. `12 redirects followed`.
fn count_before(stderr: &str, label: &str) -> u64 {
    stderr
        .lines()
        .rev()
        .find_map(|l| {
            let at = l.find(label)?;
            l[..at].split_whitespace().last()?.parse().ok()
        })
        .unwrap_or(0)
}

#[test]
fn standalone_elasticache_like_source_to_a_three_master_cluster_is_exact() {
    let source = RedisServer::elasticache_like();
    let target = Cluster::start();
    // With the in-run fenced verification of every key, read on each key's primary.
    let stderr = migrate_to_cluster(&source, &target, 20, &["--verify"], |ferry| {
        ferry.wait_log("Fenced verification:", Duration::from_secs(90));
    });
    let verified = stderr
        .lines()
        .find(|l| l.contains("Fenced verification:"))
        .unwrap_or_default();
    assert!(verified.contains("differences=0"), "{verified}");
    let keys: u64 = verified
        .split("keys=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    assert!(keys > 3000, "{verified}");
    assert!(
        count_before(&stderr, "commands split by slot") > 0,
        "no command was split by slot:\n{}",
        tail(&stderr, 5)
    );
    assert!(
        count_before(&stderr, "keys of commands across slots re-copied") > 0,
        "no cross-slot command was re-copied:\n{}",
        tail(&stderr, 5)
    );
    // Every master got keys: replay and the snapshot routed by slot.
    for node in target.nodes() {
        let n: u64 = redis::cmd("DBSIZE").query(&mut node.conn()).unwrap();
        assert!(n > 500, "{} holds {n} keys", node.addr());
    }
}

/// Moves `slot` from master `from` to master `to` the way `redis-cli --cluster reshard` does:
/// IMPORTING, MIGRATING, MIGRATE of its keys in batches, then SETSLOT NODE on both.
pub(crate) fn migrate_slot(cluster: &Cluster, slot: u16, from: usize, to: usize) -> u64 {
    let nodes = cluster.nodes();
    let id = |i: usize| -> String {
        redis::cmd("CLUSTER")
            .arg("MYID")
            .query(&mut nodes[i].conn())
            .unwrap()
    };
    let (from_id, to_id) = (id(from), id(to));
    let mut src = nodes[from].conn();
    let mut dst = nodes[to].conn();
    let _: () = redis::cmd("CLUSTER")
        .arg("SETSLOT")
        .arg(slot)
        .arg("IMPORTING")
        .arg(&from_id)
        .query(&mut dst)
        .unwrap();
    let _: () = redis::cmd("CLUSTER")
        .arg("SETSLOT")
        .arg(slot)
        .arg("MIGRATING")
        .arg(&to_id)
        .query(&mut src)
        .unwrap();
    let mut moved = 0u64;
    loop {
        let keys: Vec<Vec<u8>> = redis::cmd("CLUSTER")
            .arg("GETKEYSINSLOT")
            .arg(slot)
            .arg(20)
            .query(&mut src)
            .unwrap();
        if keys.is_empty() {
            break;
        }
        moved += keys.len() as u64;
        let mut cmd = redis::cmd("MIGRATE");
        cmd.arg("127.0.0.1")
            .arg(nodes[to].port())
            .arg("")
            .arg(0)
            .arg(5000)
            .arg("REPLACE")
            .arg("KEYS");
        for k in &keys {
            cmd.arg(k.as_slice());
        }
        let _: () = cmd.query(&mut src).unwrap();
        // Slowly, so that replay meets the slot half-moved (ASK) for a while.
        std::thread::sleep(Duration::from_millis(100));
    }
    for con in [&mut dst, &mut src] {
        let _: () = redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg("NODE")
            .arg(&to_id)
            .query(con)
            .unwrap();
    }
    moved
}

#[test]
fn a_slot_migrated_on_the_target_during_replay_is_followed_exactly() {
    let source = RedisServer::start();
    let target = Cluster::start();
    // The slot of the writer's hash tag: written every few ms during the move.
    let slot = target.slot_of(b"{xs}:q");
    let from = Cluster::node_index_for_slot(slot);
    let to = (from + 1) % SLOT_RANGES.len();
    let stderr = migrate_to_cluster(&source, &target, 20, &[], |ferry| {
        ferry.wait_log("Snapshot reads done", Duration::from_secs(60));
        std::thread::sleep(Duration::from_secs(2));
        let moved = migrate_slot(&target, slot, from, to);
        assert!(moved > 0, "slot {slot} had no keys to move");
        eprintln!("moved {moved} keys of slot {slot} from node {from} to node {to}");
    });
    assert!(
        stderr.contains("The target moved a slot; replay follows it."),
        "replay never followed the move:\n{}",
        tail(&stderr, 10)
    );
    assert!(
        count_before(&stderr, "redirects followed") > 0,
        "no redirect was followed:\n{}",
        tail(&stderr, 5)
    );
    let mut con = target.nodes()[to].conn();
    let n: u64 = redis::cmd("CLUSTER")
        .arg("COUNTKEYSINSLOT")
        .arg(slot)
        .query(&mut con)
        .unwrap();
    assert!(n > 0, "the new owner holds no key of slot {slot}");
}

/// `--capture replica` on a cluster source whose shards have no replica is refused at start,
/// in one line, and nothing reaches the target.
#[test]
fn a_cluster_source_without_replicas_and_capture_replica_is_refused_at_start_with_one_line() {
    let source = Cluster::start();
    let target = RedisServer::start();
    let state = tempfile::tempdir().unwrap();
    let out = ferry()
        .args([
            "migrate",
            "--source",
            &source.urls()[0],
            "--target",
            &target.url(),
            "--capture",
            "replica",
        ])
        .arg("--state-dir")
        .arg(state.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].contains(
            "has no reachable, healthy replica (capture reads one replica per shard of a cluster)"
        ),
        "{stderr}"
    );
    let n: u64 = redis::cmd("DBSIZE").query(&mut target.conn()).unwrap();
    assert_eq!(n, 0, "the refused run wrote to the target");
}

#[test]
fn a_multi_db_source_toward_a_cluster_is_refused_naming_the_dbs() {
    let source = RedisServer::start();
    let target = Cluster::start();
    let mut con = source.conn();
    for db in [0, 2, 5] {
        let _: () = redis::cmd("SELECT").arg(db).query(&mut con).unwrap();
        let _: () = redis::cmd("SET").arg("k").arg(db).query(&mut con).unwrap();
    }
    let state = tempfile::tempdir().unwrap();
    let out = ferry()
        .args([
            "migrate",
            "--source",
            &source.url(),
            "--target",
            &target.urls()[0],
        ])
        .arg("--state-dir")
        .arg(state.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("has db 0 only, but the source has keys in db 2 and 1 other db"),
        "{stderr}"
    );
    assert!(stderr.contains("ferry.move_db(2, 0)"), "{stderr}");
    for node in target.nodes() {
        let n: u64 = redis::cmd("DBSIZE").query(&mut node.conn()).unwrap();
        assert_eq!(n, 0, "nothing may be copied before the refusal");
    }
}

#[test]
fn a_batch_refused_key_by_key_is_one_short_line_naming_the_first_key() {
    let cluster = Cluster::start();
    let node = &cluster.nodes()[0];
    // Keys served by the other masters: every command of the transaction gets MOVED.
    let keys: Vec<String> = (0..2000)
        .map(|i| format!("user:{i}"))
        .filter(|k| Cluster::node_index_for_slot(cluster.slot_of(k.as_bytes())) != 0)
        .take(500)
        .collect();
    let mut pipe = redis::pipe();
    pipe.atomic();
    for k in &keys {
        pipe.cmd("DUMP").arg(k);
    }
    let err = pipe
        .query::<Vec<redis::Value>>(&mut node.conn())
        .unwrap_err();
    assert!(err.to_string().len() > 10_000, "redis-rs lists every error");
    let line = ferry::net::short_error(&err, |i| keys.get(i).cloned());
    assert!(line.len() < 200, "{line}");
    assert!(line.contains("MOVED"), "{line}");
    assert!(line.contains(&format!("(key {})", keys[0])), "{line}");
    assert!(line.ends_with("and 499 other errors"), "{line}");
}

#[test]
fn ferry_snapshot_toward_a_cluster_restores_each_key_on_its_primary() {
    let source = RedisServer::elasticache_like();
    let target = Cluster::start();
    fill(
        &source,
        &Dataset {
            dbs: vec![0],
            ..Dataset::tiny()
        },
    );
    let out = ferry()
        .args(["snapshot", "--source", &source.url(), "--target"])
        .arg(&target.urls()[2])
        // Big keys go through the chunked copy, whose temporary key shares the key's slot.
        .args(["--big-key-bytes", "20000"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "ferry snapshot failed: {stderr}");
    assert!(
        stderr.contains("chunked") && !stderr.contains("chunked 0"),
        "{stderr}"
    );
    let report = oracle(&source, &target);
    eprintln!("{report}\n{stderr}");
    assert!(report.keys_compared > 300, "{report}");
    report.assert_identical();
    for node in target.nodes() {
        let n: u64 = redis::cmd("DBSIZE").query(&mut node.conn()).unwrap();
        assert!(n > 50, "{} holds {n} keys", node.addr());
    }
}

#[test]
fn ferry_snapshot_of_several_dbs_toward_a_cluster_is_refused() {
    let source = RedisServer::start();
    let target = Cluster::start();
    fill(&source, &Dataset::tiny());
    let out = ferry()
        .args(["snapshot", "--source", &source.url(), "--target"])
        .arg(&target.urls()[0])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("has db 0 only, but the source has keys in db 1 and 1 other db"),
        "{stderr}"
    );
}

#[test]
fn ferry_verify_reads_a_cluster_target_on_each_keys_primary() {
    let source = RedisServer::start();
    let target = Cluster::start();
    fill(
        &source,
        &Dataset {
            dbs: vec![0],
            ..Dataset::tiny()
        },
    );
    let copy = ferry()
        .args(["snapshot", "--source", &source.url(), "--target"])
        .arg(&target.urls()[0])
        .output()
        .unwrap();
    assert!(
        copy.status.success(),
        "{}",
        String::from_utf8_lossy(&copy.stderr)
    );
    let verify = |args: &[&str]| {
        let out = ferry()
            .args(["verify", "--source", &source.url(), "--target"])
            .arg(&target.urls()[1])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (code, out) = verify(&[]);
    assert_eq!(code, Some(0), "{out}");
    // A changed key and an extra key, each on some master: both found.
    let changed = b"verify:changed".as_slice();
    let _: () = redis::cmd("SET")
        .arg(changed)
        .arg("source")
        .query(&mut source.conn())
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg(changed)
        .arg("target")
        .query(&mut target.node_for_key(changed).conn())
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg("verify:extra")
        .arg(1)
        .query(&mut target.node_for_key(b"verify:extra").conn())
        .unwrap();
    let (code, out) = verify(&[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("verify:changed"), "{out}");
    assert!(out.contains("verify:extra"), "{out}");
    let (code, out) = verify(&["--sample", "200"]);
    assert!(code.is_some(), "{out}");
    assert!(
        !out.contains("CROSSSLOT") && !out.contains("MOVED"),
        "{out}"
    );
}

#[test]
fn preflight_accepts_a_cluster_target_and_a_cluster_source_and_fails_stray_dbs() {
    let cluster = Cluster::start();
    let source = RedisServer::start();
    let _: () = redis::cmd("SET")
        .arg("k")
        .arg(1)
        .query(&mut source.conn())
        .unwrap();
    let preflight = |from: &str, to: &str| {
        let out = ferry()
            .args(["preflight", "--source", from, "--target", to])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (_, out) = preflight(&source.url(), &cluster.urls()[0]);
    assert!(out.contains("3 primaries: 127.0.0.1:"), "{out}");
    assert!(!out.contains("FAIL"), "{out}");
    // A cluster source: its shards listed, ok (tests/it/cluster_source.rs has replicas).
    let (_, out) = preflight(&cluster.urls()[1], &source.url());
    assert!(out.contains("3 shards, 0 replicas: 127.0.0.1:"), "{out}");
    assert!(!out.contains("cluster mode is on"), "{out}");
    let mut con = source.conn();
    let _: () = redis::cmd("SELECT").arg(3).query(&mut con).unwrap();
    let _: () = redis::cmd("SET").arg("k").arg(3).query(&mut con).unwrap();
    let (code, out) = preflight(&source.url(), &cluster.urls()[2]);
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("but the source has keys in db 3; move them"),
        "{out}"
    );
}

/// `ferry snapshot` then `ferry verify` toward a cluster of `options`' servers: 0 differences.
fn snapshot_and_verify_toward(options: crate::support::ServerOptions) {
    // The same engine on both sides: a cluster is what is under test, not a downgrade.
    let source = RedisServer::start_with(options.clone());
    let target = Cluster::start_with(options);
    fill(
        &source,
        &Dataset {
            dbs: vec![0],
            ..Dataset::tiny()
        },
    );
    for command in ["snapshot", "verify"] {
        let out = ferry()
            .args([command, "--source", &source.url(), "--target"])
            .arg(&target.urls()[1])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "ferry {command}: {text}");
        assert!(text.contains("The target is a Redis Cluster"), "{text}");
        assert!(!text.contains("s3cret"), "a password leaked: {text}");
    }
    let report = oracle(&source, &target);
    assert!(report.keys_compared > 300, "{report}");
    report.assert_identical();
}

#[test]
fn an_elasticache_like_cluster_with_a_password_is_found_and_written_through_its_url() {
    snapshot_and_verify_toward(crate::support::ServerOptions {
        elasticache_like: true,
        password: Some("s3cret".into()),
        ..Default::default()
    });
}

#[test]
#[ignore = "needs the engines of `make servers` (FERRY_ENGINES=1)"]
fn clusters_before_cluster_shards_are_read_with_cluster_slots() {
    use crate::support::engines::Engine;
    // Redis 6.2 has no CLUSTER SHARDS (7.0); Valkey 8.0 has both.
    for engine in [Engine::Redis62, Engine::Valkey80] {
        snapshot_and_verify_toward(crate::support::ServerOptions {
            engine: Some(engine),
            ..Default::default()
        });
    }
}
