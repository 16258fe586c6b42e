//! Redis Cluster as a source: the cluster fixtures (replicas, ElastiCache-like), the
//! cluster-aware oracle, and every command that does not capture a live stream (`ferry
//! verify`, `ferry snapshot`, `ferry backup`, `ferry preflight`) reading a cluster source.

use crate::support::cluster::Cluster;
use crate::support::server::info_field;
use crate::support::{
    Dataset, DiffKind, OracleOptions, OracleReport, RedisServer, compare_any, compare_clusters,
    compare_from_cluster, fill, fill_cluster, keyspace_nodes,
};

fn opts() -> OracleOptions {
    OracleOptions {
        ttl_tolerance_ms: 1000,
        ..OracleOptions::default()
    }
}

/// Compares the keyspaces `source` and `target` name (either may be a cluster node).
fn oracle(source: &str, target: &str) -> OracleReport {
    let report = compare_any(source, target, &opts());
    eprintln!("{report}");
    report
}

/// One db (a cluster has db 0 only), every type, TTLs, and big keys.
fn dataset() -> Dataset {
    Dataset {
        dbs: vec![0],
        ..Dataset::tiny()
    }
}

#[test]
fn a_cluster_with_replicas_starts_synced_and_elasticache_like_keeps_replication() {
    let cluster = Cluster::start_elasticache_like(true);
    assert_eq!(cluster.nodes().len(), 3);
    assert_eq!(cluster.replicas().len(), 3);
    for (master, replica) in cluster.nodes().iter().zip(cluster.replicas()) {
        let info = replica.info("replication");
        assert_eq!(
            info_field(&info, "role").as_deref(),
            Some("slave"),
            "{info}"
        );
        assert_eq!(
            info_field(&info, "master_port"),
            Some(master.port().to_string()),
            "{info}"
        );
        for command in ["CONFIG", "DEBUG", "SAVE", "BGSAVE"] {
            let err = redis::cmd(command)
                .arg("GET")
                .query::<redis::Value>(&mut master.conn())
                .unwrap_err();
            assert!(
                err.to_string().contains("unknown command"),
                "{command}: {err}"
            );
        }
    }
    let filled = fill_cluster(&cluster, &dataset());
    cluster.wait_for_replicas();
    // Only the masters hold the keyspace, whichever node names the cluster.
    let via_replica = keyspace_nodes(&cluster.replicas()[1].url());
    assert_eq!(via_replica, keyspace_nodes(&cluster.urls()[0]));
    assert_eq!(via_replica.len(), 3, "{via_replica:?}");
    let keys: usize = cluster
        .replicas()
        .iter()
        .map(|r| redis::cmd("DBSIZE").query::<usize>(&mut r.conn()).unwrap())
        .sum();
    assert_eq!(keys, filled.total_keys(), "the replicas hold every key");
}

/// The oracle against clusters on either side: identical copies (filled the same way, same
/// expiry times) compare equal in every direction, and each kind of difference is found on
/// whichever master holds the key.
#[test]
fn the_oracle_compares_clusters_on_either_side_and_finds_each_difference() {
    let ds = dataset().with_fixed_ttl_base();
    let a = Cluster::start();
    let b = Cluster::start();
    let single = RedisServer::start();
    let filled = fill_cluster(&a, &ds);
    fill_cluster(&b, &ds);
    fill(&single, &ds);
    assert!(filled.keys_with_ttl[&0] > 10, "{filled:?}");
    let (a0, b1, s) = (a.urls()[0].clone(), b.urls()[1].clone(), single.url());
    for (from, to) in [(&a0, &b1), (&b1, &a0), (&a0, &s), (&s, &b1)] {
        let report = oracle(from, to);
        assert_eq!(report.keys_compared, filled.total_keys(), "{report}");
        report.assert_identical();
    }
    assert_eq!(
        compare_clusters(&a0, &b1, &opts()).keys_compared,
        filled.total_keys()
    );
    assert!(compare_from_cluster(&a0, &s, &opts()).is_identical());

    // One difference of each kind, spread over the masters of b.
    let set = |key: &str, value: &str| {
        redis::cmd("SET")
            .arg(key)
            .arg(value)
            .exec(&mut b.node_for_key(key.as_bytes()).conn())
            .unwrap();
    };
    for (key, value) in [("cs:changed", "a"), ("cs:missing", "x"), ("cs:ttl", "t")] {
        redis::cmd("SET")
            .arg(key)
            .arg(value)
            .exec(&mut a.node_for_key(key.as_bytes()).conn())
            .unwrap();
    }
    set("cs:changed", "b");
    set("cs:ttl", "t");
    set("cs:extra", "e");
    redis::cmd("EXPIRE")
        .arg("cs:ttl")
        .arg(3600)
        .exec(&mut b.node_for_key(b"cs:ttl").conn())
        .unwrap();
    let nodes: std::collections::BTreeSet<String> = ["cs:changed", "cs:missing", "cs:ttl"]
        .iter()
        .map(|k| a.node_for_key(k.as_bytes()).addr())
        .collect();
    assert!(nodes.len() > 1, "the keys should sit on several masters");
    let report = oracle(&a0, &b1);
    assert_eq!(report.diffs.len(), 4, "{report}");
    assert!(matches!(
        report.diffs_for(0, b"cs:changed")[..],
        [DiffKind::Value { .. }]
    ));
    assert_eq!(
        report.diffs_for(0, b"cs:missing"),
        [&DiffKind::MissingOnTarget]
    );
    assert!(matches!(
        report.diffs_for(0, b"cs:ttl")[..],
        [DiffKind::Ttl { source_ms: -1, .. }]
    ));
    assert_eq!(report.diffs_for(0, b"cs:extra"), [&DiffKind::ExtraOnTarget]);
    // The other direction sees the mirror image.
    let back = oracle(&b1, &a0);
    assert_eq!(back.diffs_for(0, b"cs:missing"), [&DiffKind::ExtraOnTarget]);
    assert_eq!(back.diffs_for(0, b"cs:extra"), [&DiffKind::MissingOnTarget]);
}

/// Runs `ferry <args…>`: exit code and stdout + stderr.
fn run_ferry(args: &[&str]) -> (Option<i32>, String) {
    let out = crate::cli::ferry().args(args).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// A cluster source (ElastiCache-like, a replica per master) with every type, TTLs and big
/// keys, copied by `ferry snapshot` (named through a replica: any node names the cluster) to a
/// cluster and to a standalone server; the oracle finds 0 differences both ways, and `ferry
/// verify` agrees, then finds what was changed on the target.
#[test]
fn ferry_snapshot_and_verify_from_a_cluster_source_to_a_cluster_and_a_standalone_server() {
    let source = Cluster::start_elasticache_like(true);
    let to_cluster = Cluster::start();
    let to_single = RedisServer::start();
    let filled = fill_cluster(&source, &dataset());
    assert!(filled.types.len() >= 6, "{filled:?}");
    assert!(filled.keys_with_ttl[&0] > 10, "{filled:?}");
    let from = source.replicas()[1].url();
    for target in [to_cluster.urls()[2].clone(), to_single.url()] {
        let (code, out) = run_ferry(&[
            "snapshot",
            "--source",
            &from,
            "--target",
            &target,
            // Big keys through the type-aware chunked copy.
            "--big-key-bytes",
            "20000",
        ]);
        assert_eq!(code, Some(0), "{out}");
        assert!(out.contains("The source is a Redis Cluster"), "{out}");
        assert_eq!(out.matches("Shard copied.").count(), 3, "{out}");
        assert!(
            out.contains("chunked") && !out.contains("chunked 0"),
            "{out}"
        );
        let report = oracle(&from, &target);
        assert_eq!(report.keys_compared, filled.total_keys(), "{report}");
        report.assert_identical();
        oracle(&target, &from).assert_identical();
    }
    for node in to_cluster.nodes() {
        let n: u64 = redis::cmd("DBSIZE").query(&mut node.conn()).unwrap();
        assert!(n > 50, "{} holds {n} keys", node.addr());
    }

    let verify = |target: &str, extra: &[&str]| {
        let mut args = vec!["verify", "--source", &from, "--target", target];
        args.extend_from_slice(extra);
        run_ferry(&args)
    };
    let (tc, ts) = (to_cluster.urls()[0].clone(), to_single.url());
    for target in [&tc, &ts] {
        let (code, out) = verify(target, &[]);
        assert_eq!(code, Some(0), "{out}");
        assert!(out.contains("The source is a Redis Cluster"), "{out}");
        let (code, out) = verify(target, &["--sample", "200"]);
        assert_eq!(code, Some(0), "{out}");
    }
    // Cluster → cluster in the other direction: the standalone copy as the source.
    let (code, out) = run_ferry(&["verify", "--source", &ts, "--target", &tc]);
    assert_eq!(code, Some(0), "{out}");

    // A changed value, a key gone and an extra key on the target cluster.
    let (changed, gone) = (
        b"cs:verify:changed".as_slice(),
        b"cs:verify:gone".as_slice(),
    );
    let mut src = source.cluster_conn();
    for key in [changed, gone] {
        redis::cmd("SET")
            .arg(key)
            .arg("source")
            .exec(&mut src)
            .unwrap();
    }
    source.wait_for_replicas();
    redis::cmd("SET")
        .arg(changed)
        .arg("target")
        .exec(&mut to_cluster.node_for_key(changed).conn())
        .unwrap();
    redis::cmd("SET")
        .arg("cs:verify:extra")
        .arg(1)
        .exec(&mut to_cluster.node_for_key(b"cs:verify:extra").conn())
        .unwrap();
    let (code, out) = verify(&tc, &[]);
    assert_eq!(code, Some(1), "{out}");
    for key in ["cs:verify:changed", "cs:verify:gone", "cs:verify:extra"] {
        assert!(out.contains(key), "{key} not reported:\n{out}");
    }
    assert!(
        !out.contains("MOVED") && !out.contains("CROSSSLOT"),
        "{out}"
    );
    let report = oracle(&from, &tc);
    assert_eq!(report.diffs.len(), 3, "{report}");
}

/// `ferry backup` of a cluster source: one RDB file per shard, named with its index and slot
/// ranges; each loads into a fresh stock server, and together they hold every key with its
/// TTL (the oracle, with the loaded servers as one keyspace).
#[test]
fn ferry_backup_of_a_cluster_source_writes_one_loadable_file_per_shard() {
    let source = Cluster::start_elasticache_like(true);
    let filled = fill_cluster(&source, &dataset());
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("final.rdb");
    let (code, text) = run_ferry(&[
        "backup",
        "--source",
        &source.urls()[1],
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("one RDB file per shard"), "{text}");
    assert!(
        !out.exists(),
        "a cluster backup writes per-shard files only"
    );
    let mut files: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "final.shard0.0-5460.rdb",
            "final.shard1.5461-10922.rdb",
            "final.shard2.10923-16383.rdb"
        ],
        "{text}"
    );
    let mut keys = 0;
    let restored: Vec<RedisServer> = files
        .iter()
        .map(|f| RedisServer::start_with_rdb(&dir.path().join(f)))
        .collect();
    for (server, (master, f)) in restored.iter().zip(source.nodes().iter().zip(&files)) {
        let n: usize = redis::cmd("DBSIZE").query(&mut server.conn()).unwrap();
        let m: usize = redis::cmd("DBSIZE").query(&mut master.conn()).unwrap();
        assert_eq!(n, m, "{f} holds {n} keys, its shard {m}");
        assert!(text.contains(&format!("Backup done: {n} keys")), "{text}");
        keys += n;
    }
    assert_eq!(keys, filled.total_keys());
    let urls: Vec<String> = restored.iter().map(RedisServer::url).collect();
    let report = crate::support::compare_nodes(&keyspace_nodes(&source.urls()[0]), &urls, &opts());
    eprintln!("{report}");
    assert_eq!(report.keys_compared, filled.total_keys(), "{report}");
    report.assert_identical();
}

/// `ferry preflight` with a cluster source (ElastiCache-like, a replica per master) names each
/// shard with its slots and replica, ok rather than a failure; toward a cluster target too.
#[test]
fn preflight_lists_a_cluster_sources_shards_and_replicas() {
    let source = Cluster::start_elasticache_like(true);
    let to_cluster = Cluster::start();
    let to_single = RedisServer::start();
    fill_cluster(&source, &dataset());
    for target in [to_single.url(), to_cluster.urls()[0].clone()] {
        let (code, out) = run_ferry(&[
            "preflight",
            "--source",
            &source.replicas()[2].url(),
            "--target",
            &target,
        ]);
        eprintln!("{out}");
        assert_ne!(code, Some(2), "{out}");
        let line = out
            .lines()
            .find(|l| l.contains("cluster mode") && l.contains("shards"))
            .unwrap_or_else(|| panic!("no source cluster line:\n{out}"));
        assert!(line.contains("3 shards, 3 replicas: "), "{line}");
        for (master, replica) in source.nodes().iter().zip(source.replicas()) {
            assert!(
                line.contains(&format!("{} ", master.addr()))
                    && line.contains(&format!("(replica {})", replica.addr())),
                "{line}"
            );
        }
        assert!(line.contains("0-5460"), "{line}");
        // The data of every primary counts, and no line says the cluster has no replica.
        assert!(!out.contains("none online"), "{out}");
        assert!(out.contains("the source uses"), "{out}");
    }
}

/// `--db` other than 0 on a cluster source: one line naming it, exit 2, nothing copied or
/// written.
#[test]
fn a_db_other_than_0_on_a_cluster_source_is_refused_with_one_line() {
    let source = Cluster::start();
    let target = RedisServer::start();
    fill_cluster(&source, &dataset());
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("b.rdb");
    let from = source.urls()[0].clone();
    for args in [
        vec![
            "snapshot",
            "--source",
            &from,
            "--target",
            &target.url(),
            "--db",
            "3",
        ],
        vec![
            "backup",
            "--source",
            &from,
            "--out",
            out.to_str().unwrap(),
            "--db",
            "3",
        ],
    ] {
        let (code, text) = run_ferry(&args);
        assert_eq!(code, Some(2), "{text}");
        let lines: Vec<&str> = text.lines().filter(|l| l.contains("error")).collect();
        assert_eq!(lines.len(), 1, "{text}");
        assert!(
            lines[0]
                .contains("is a Redis Cluster, which has db 0 only: --db 3 names none of its keys"),
            "{text}"
        );
    }
    let n: u64 = redis::cmd("DBSIZE").query(&mut target.conn()).unwrap();
    assert_eq!(n, 0);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

/// Older clusters as a source: Redis 5.0 and 6.2 have no `CLUSTER SHARDS` (the topology comes
/// from `CLUSTER SLOTS`) and no `PEXPIRETIME` (each per-slot transaction carries its own
/// `TIME`); Valkey 8.0 has both. Snapshot to a standalone server of the same engine, verify,
/// and back up: 0 differences each.
#[test]
#[ignore = "needs the engines of `make servers` (FERRY_ENGINES=1)"]
fn older_cluster_sources_are_snapshotted_verified_and_backed_up() {
    use crate::support::ServerOptions;
    use crate::support::engines::Engine;
    for engine in [Engine::Redis50, Engine::Redis62, Engine::Valkey80] {
        let options = ServerOptions {
            engine: Some(engine),
            ..ServerOptions::default()
        };
        let source = Cluster::start_full(options.clone(), true);
        let target = RedisServer::start_with(options);
        let filled = fill_cluster(&source, &dataset());
        let from = source.replicas()[0].url();
        // The chunked copy of a stream needs Redis 7.0's stream metadata (XSETID
        // ENTRIESADDED), so older engines copy big keys with DUMP.
        let big = if engine == Engine::Valkey80 {
            "20000"
        } else {
            "100000000"
        };
        let (code, out) = run_ferry(&[
            "snapshot",
            "--source",
            &from,
            "--target",
            &target.url(),
            "--big-key-bytes",
            big,
        ]);
        assert_eq!(code, Some(0), "{engine:?}: {out}");
        let report = oracle(&from, &target.url());
        assert_eq!(
            report.keys_compared,
            filled.total_keys(),
            "{engine:?}: {report}"
        );
        report.assert_identical();
        let (code, out) = run_ferry(&["verify", "--source", &from, "--target", &target.url()]);
        assert_eq!(code, Some(0), "{engine:?}: {out}");

        let dir = tempfile::tempdir().unwrap();
        let out_file = dir.path().join("b.rdb");
        let (code, out) = run_ferry(&[
            "backup",
            "--source",
            &from,
            "--out",
            out_file.to_str().unwrap(),
        ]);
        assert_eq!(code, Some(0), "{engine:?}: {out}");
        let restored: Vec<RedisServer> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| RedisServer::start_engine_with_rdb(Some(engine), &e.unwrap().path()))
            .collect();
        assert_eq!(restored.len(), 3, "{engine:?}: {out}");
        let urls: Vec<String> = restored.iter().map(RedisServer::url).collect();
        let report = crate::support::compare_nodes(&keyspace_nodes(&from), &urls, &opts());
        assert_eq!(
            report.keys_compared,
            filled.total_keys(),
            "{engine:?}: {report}"
        );
        report.assert_identical();
    }
}

/// `ferry snapshot --state-dir` from a cluster source, killed mid-run: each shard kept its
/// checkpoint under the state dir, and the rerun resumes them all (copying fewer keys than the
/// total), ending with 0 differences.
#[test]
fn a_killed_snapshot_of_a_cluster_source_resumes_every_shard() {
    use std::process::Stdio;
    use std::time::{Duration, Instant};
    let source = Cluster::start();
    let target = Cluster::start();
    let filled = fill_cluster(
        &source,
        &Dataset {
            keys_per_db: 20_000,
            ..dataset()
        },
    );
    let total = filled.total_keys() as u64;
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path().to_str().unwrap().to_string();
    let from = source.urls()[0].clone();
    let to = target.urls()[0].clone();
    let common = [
        "snapshot",
        "--source",
        &from,
        "--target",
        &to,
        "--quiet",
        "--state-dir",
        &state_dir,
    ];
    // Throttled (per shard) so that the kill lands mid-snapshot.
    let mut child = crate::cli::ferry()
        .args(common)
        .args(["--max-source-ops", "20000", "--batch", "32"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let shards = ["shard-0", "shard-5461", "shard-10923"];
    let keys_done = |shard: &str| -> u64 {
        std::fs::read(state.path().join(shard).join("snapshot.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v["keys_done"].as_u64())
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !shards.iter().all(|s| keys_done(s) > 500) {
        assert!(Instant::now() < deadline, "the snapshot made no progress");
        std::thread::sleep(Duration::from_millis(100));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let partial: u64 = target
        .nodes()
        .iter()
        .map(|n| redis::cmd("DBSIZE").query::<u64>(&mut n.conn()).unwrap())
        .sum();
    assert!(
        partial > 0 && partial < total,
        "killed too late: {partial} of {total}"
    );

    let json = state.path().join("report.json");
    let (code, out) = run_ferry(&[&common[..], &["--json", json.to_str().unwrap()]].concat());
    assert_eq!(code, Some(0), "{out}");
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(r["resumed"], true, "{r}");
    let second = r["keys"].as_u64().unwrap();
    assert!(
        second < total,
        "the rerun copied {second} of {total} keys: it did not resume"
    );
    let report = oracle(&from, &to);
    assert_eq!(report.keys_compared as u64, total, "{report}");
    report.assert_identical();
}
