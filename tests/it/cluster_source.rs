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
