//! Redis Cluster as a live source: `ferry migrate` from a 3-master cluster (one `MONITOR` per
//! primary) to a cluster and to a standalone server, under a cluster-valid workload (every
//! multi-key command within one hash tag), stopped with SIGTERM and compared key by key by the
//! cluster-aware oracle.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::migrate::{start_migrate, tail};
use crate::support::cluster::Cluster;
use crate::support::{OracleOptions, OracleReport, RedisServer, compare_any, fill_cluster};

/// Hash tags the workload writes under, each with the index of the master owning its slot.
fn tags(cluster: &Cluster) -> Vec<(String, usize)> {
    (0..24)
        .map(|i| {
            let tag = format!("{{w{i}}}");
            let node = Cluster::node_index_for_slot(cluster.slot_of(tag.as_bytes()));
            (tag, node)
        })
        .collect()
}

/// A connection to the node a `MOVED` (or, during a failover, an `UNBLOCKED` or a broken
/// connection) sends the workload to; any other error fails the test.
fn follow(e: &redis::RedisError) -> redis::Connection {
    let text = e.to_string();
    // A pipeline's error lists each command's: `Moved: <slot> <host:port>`.
    let in_text = ["Moved: ", "MOVED ", "Ask: ", "ASK "].iter().find_map(|p| {
        let rest = &text[text.find(p)? + p.len()..];
        rest.split_whitespace()
            .nth(1)
            .map(|a| a.trim_end_matches([')', ',']).to_string())
    });
    let to = match e.redirect_node().map(|(a, _)| a.to_string()).or(in_text) {
        Some(addr) => addr,
        None => {
            assert!(
                text.contains("UNBLOCKED") || text.contains("READONLY") || e.is_io_error(),
                "workload error: {text}"
            );
            // Asked again, the node answers MOVED with the new primary.
            std::thread::sleep(Duration::from_millis(50));
            return follow_retry();
        }
    };
    redis::Client::open(format!("redis://{to}"))
        .unwrap()
        .get_connection()
        .unwrap()
}

thread_local! {
    /// The URL the current workload thread writes to, for a retry after a failover.
    static HOME: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

fn follow_retry() -> redis::Connection {
    let url = HOME.with(|h| h.borrow().clone());
    redis::Client::open(url.as_str())
        .unwrap()
        .get_connection()
        .unwrap()
}

/// What the workload did.
struct Load {
    ops: Arc<AtomicU64>,
    popped: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        (
            self.ops.load(Ordering::Relaxed),
            self.popped.load(Ordering::Relaxed),
        )
    }
}

/// Writers (one per master, each writing the tags its master owns) and one blocking consumer
/// per master: counters, relative TTLs, lists with `RPOPLPUSH`, hashes, sets with `SPOP`,
/// sorted sets, streams with `XADD *`, `MULTI` groups and a script, all within a hash tag.
fn start_load(cluster: &Cluster) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let popped = Arc::new(AtomicU64::new(0));
    let tags = tags(cluster);
    let mut threads = Vec::new();
    for (n, node) in cluster.nodes().iter().enumerate() {
        let mine: Vec<String> = tags
            .iter()
            .filter(|(_, i)| *i == n)
            .map(|(t, _)| t.clone())
            .collect();
        assert!(!mine.is_empty(), "no tag on master {n}");
        let url = node.url();
        let (stop_w, ops_w) = (stop.clone(), ops.clone());
        let writer_tags = mine.clone();
        threads.push(std::thread::spawn(move || {
            HOME.with(|h| *h.borrow_mut() = url.clone());
            let mut con = redis::Client::open(url.as_str())
                .unwrap()
                .get_connection()
                .unwrap();
            let mut i = 0u64;
            while !stop_w.load(Ordering::Relaxed) {
                i += 1;
                let round = |con: &mut redis::Connection| -> redis::RedisResult<()> {
                let t = &writer_tags[(i as usize) % writer_tags.len()];
                let k = |name: &str| format!("{t}:{name}");
                let mut pipe = redis::pipe();
                pipe.cmd("INCR").arg(k("ctr")).ignore();
                pipe.cmd("INCRBYFLOAT").arg(k("f")).arg("0.5").ignore();
                pipe.cmd("SET")
                    .arg(k(&format!("s{}", i % 40)))
                    .arg(i)
                    .arg("EX")
                    .arg(60 + i % 100)
                    .ignore();
                pipe.cmd("PEXPIRE").arg(k("ctr")).arg(300_000).ignore();
                pipe.cmd("HINCRBY").arg(k("h")).arg(format!("f{}", i % 9)).arg(1).ignore();
                pipe.cmd("SADD").arg(k("set")).arg(i % 50).ignore();
                pipe.cmd("ZINCRBY").arg(k("z")).arg(1).arg(format!("m{}", i % 20)).ignore();
                pipe.cmd("RPUSH").arg(k("q")).arg(i).ignore();
                pipe.cmd("LPUSH").arg(k("jobs")).arg(i).ignore();
                pipe.cmd("XADD")
                    .arg(k("x"))
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(200)
                    .arg("*")
                    .arg("n")
                    .arg(i)
                    .ignore();
                let _: () = pipe.query(con)?;
                if i.is_multiple_of(3) {
                    let _: redis::Value = redis::cmd("RPOPLPUSH")
                        .arg(k("q"))
                        .arg(k("done"))
                        .query(con)?;
                    let _: redis::Value =
                        redis::cmd("SPOP").arg(k("set")).query(con)?;
                }
                if i.is_multiple_of(5) {
                    let _: () = redis::pipe()
                        .atomic()
                        .cmd("INCRBY")
                        .arg(k("ctr"))
                        .arg(10)
                        .cmd("LTRIM")
                        .arg(k("done"))
                        .arg(0)
                        .arg(99)
                        .cmd("EXPIRE")
                        .arg(k(&format!("s{}", (i + 7) % 40)))
                        .arg(5 + i % 30)
                        .query(con)?;
                    let _: redis::Value = redis::cmd("EVAL")
                        .arg("redis.call('INCR', KEYS[1]); return redis.call('HSET', KEYS[2], 'last', ARGV[1])")
                        .arg(2)
                        .arg(k("ctr"))
                        .arg(k("h"))
                        .arg(i)
                        .query(con)?;
                }
                if i.is_multiple_of(17) {
                    let _: i64 = redis::cmd("DEL")
                        .arg(k(&format!("s{}", i % 40)))
                        .arg(k("f"))
                        .query(con)?;
                }
                Ok(())
                };
                if let Err(e) = round(&mut con) {
                    // A failover moved the tags' slots: follow the redirect to the new primary.
                    con = follow(&e);
                    continue;
                }
                ops_w.fetch_add(1, Ordering::Relaxed);
                // Paced so that a debug build's replay keeps up and the verification's
                // catch-up phase ends while the load runs.
                std::thread::sleep(Duration::from_millis(2));
            }
        }));
        let (stop_c, popped_c) = (stop.clone(), popped.clone());
        let url = node.url();
        threads.push(std::thread::spawn(move || {
            HOME.with(|h| *h.borrow_mut() = url.clone());
            let mut con = redis::Client::open(url.as_str())
                .unwrap()
                .get_connection()
                .unwrap();
            // One key per BRPOP: the keys of one command share a slot on a cluster.
            let keys: Vec<String> = mine.iter().map(|t| format!("{t}:jobs")).collect();
            let mut n = 0;
            while !stop_c.load(Ordering::Relaxed) {
                n += 1;
                let got: Option<(String, String)> = match redis::cmd("BRPOP")
                    .arg(&keys[n % keys.len()])
                    .arg(0.05)
                    .query(&mut con)
                {
                    Ok(got) => got,
                    Err(e) => {
                        con = follow(&e);
                        continue;
                    }
                };
                if got.is_some() {
                    popped_c.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    Load {
        ops,
        popped,
        stop,
        threads,
    }
}

fn oracle(source: &str, target: &str) -> OracleReport {
    let opts = OracleOptions {
        ttl_tolerance_ms: 1000,
        ..OracleOptions::default()
    };
    compare_any(source, target, &opts)
}

/// Fills `source`, runs the workload while ferry migrates it to `target` for `secs`, stops
/// the workload, then ferry with SIGTERM, and compares; returns ferry's log.
fn migrate_from_cluster(source: &Cluster, target: &str, secs: u64) -> String {
    migrate_from_cluster_with(source, target, secs, &[], |_| {})
}

/// [`migrate_from_cluster`], calling `during` once the snapshot's reads are done.
fn migrate_from_cluster_with(
    source: &Cluster,
    target: &str,
    secs: u64,
    extra: &[&str],
    during: impl FnOnce(&crate::migrate::FerryProcess),
) -> String {
    fill_cluster(source, &crate::cluster::dataset());
    let load = start_load(source);
    std::thread::sleep(Duration::from_millis(300));
    let state = tempfile::tempdir().unwrap();
    let mut ferry = start_migrate(&source.urls()[1], target, state.path(), extra);
    let started = Instant::now();
    ferry.wait_log("Snapshot reads done", Duration::from_secs(120));
    during(&ferry);
    if let Some(rest) = Duration::from_secs(secs).checked_sub(started.elapsed()) {
        std::thread::sleep(rest);
    }
    let (ops, popped) = load.stop();
    let code = ferry.terminate(Duration::from_secs(90));
    let stderr = ferry.stderr();
    assert_eq!(
        code,
        Some(0),
        "ferry migrate failed:\n{}",
        tail(&stderr, 40)
    );
    let report = oracle(&source.urls()[0], target);
    eprintln!(
        "workload: {ops} rounds, {popped} served pops\n{report}\n--- ferry stderr (tail) ---\n{}",
        tail(&stderr, 15)
    );
    assert!(ops > 1000, "workload too slow: {ops}");
    assert!(
        popped > 100,
        "blocking consumers served too few pops: {popped}"
    );
    assert!(report.keys_compared > 3000, "{report}");
    if !report.is_identical() {
        eprintln!("--- ferry stderr (whole) ---\n{stderr}");
    }
    report.assert_identical();
    assert!(
        stderr.contains("The source is a Redis Cluster"),
        "the source's shards were not logged:\n{stderr}"
    );
    stderr
}

/// With the in-run fenced verification of every key: each key's source side read in a
/// transaction of its own slot on its shard's node, the target side at the same position.
#[test]
fn a_three_master_elasticache_like_cluster_migrates_live_to_a_cluster_exactly() {
    let source = Cluster::start_elasticache_like(false);
    let target = Cluster::start();
    let stderr = migrate_from_cluster_with(&source, &target.urls()[2], 12, &["--verify"], |f| {
        f.wait_log("Fenced verification:", Duration::from_secs(120));
    });
    let verified = stderr
        .lines()
        .find(|l| l.contains("Fenced verification:"))
        .unwrap_or_default();
    assert!(
        verified.contains("differences=0"),
        "{verified}\n{}",
        tail(&stderr, 20)
    );
    let keys: u64 = verified
        .split("keys=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    assert!(keys > 3000, "{verified}");
}

#[test]
fn a_cluster_migrates_live_to_a_standalone_server_exactly() {
    let source = Cluster::start();
    let target = RedisServer::start();
    migrate_from_cluster(&source, &target.url(), 10);
}

/// A manual failover of one source shard (`CLUSTER FAILOVER` on its replica) during replay,
/// captured on primaries: ferry captures the new primary and resyncs, and the target ends
/// equal to the source.
#[test]
fn a_failover_on_the_source_cluster_during_replay_is_followed_exactly() {
    failover_during_replay("primary");
}

/// The same failover with the cluster captured on its replicas (the default when every shard
/// has a healthy one): the promoted replica was a capture node; ferry captures a replica of
/// each primary again (the old primary, once it replicates) and resyncs.
#[test]
fn a_failover_while_capturing_replicas_is_followed_exactly() {
    let stderr = failover_during_replay("auto");
    assert!(
        stderr.contains("read through replicas"),
        "the replicas were not captured:\n{}",
        tail(&stderr, 30)
    );
}

fn failover_during_replay(capture: &str) -> String {
    let source = Cluster::start_with_replicas();
    let target = Cluster::start();
    let replica = source.replicas()[0].url();
    let extra = ["--capture", capture];
    let stderr = migrate_from_cluster_with(&source, &target.urls()[0], 14, &extra, |_| {
        std::thread::sleep(Duration::from_secs(2));
        let mut con = redis::Client::open(replica.as_str())
            .unwrap()
            .get_connection()
            .unwrap();
        let _: () = redis::cmd("CLUSTER")
            .arg("FAILOVER")
            .query(&mut con)
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query(&mut con)
                .unwrap();
            if info.contains("role:master") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the replica never became primary:\n{info}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    assert!(
        stderr.contains("The source cluster failed over"),
        "the failover was not followed:\n{}",
        tail(&stderr, 30)
    );
    stderr
}

/// A cluster whose every shard has a healthy replica is captured on the replicas (effects
/// streams) by default: reads through fences on the replicas (`READONLY`), the final fence
/// pausing the primaries and waiting for each replica; 0 differences.
#[test]
fn a_cluster_with_replicas_is_captured_on_its_replicas_exactly() {
    let source = Cluster::start_with_replicas();
    let target = Cluster::start();
    let stderr = migrate_from_cluster(&source, &target.urls()[1], 10);
    assert!(
        stderr.contains("read through replicas") && stderr.contains("replica (effects stream)"),
        "{}",
        tail(&stderr, 30)
    );
}

/// `ferry migrate --cutover` from a cluster: the switch fence pauses writes on every primary,
/// drains each shard's stream to its copy of the switch marker, and releases them all; the
/// target then equals the source.
#[test]
fn a_cutover_from_a_cluster_pauses_every_primary_and_ends_exact() {
    let source = Cluster::start();
    let target = Cluster::start();
    fill_cluster(&source, &crate::cluster::dataset());
    let load = start_load(&source);
    let state = tempfile::tempdir().unwrap();
    let mut ferry = start_migrate(
        &source.urls()[0],
        &target.urls()[0],
        state.path(),
        &["--cutover", "--max-pause-ms", "3000"],
    );
    ferry.wait_log("Snapshot reads done", Duration::from_secs(120));
    std::thread::sleep(Duration::from_secs(2));
    let (ops, popped) = load.stop();
    let code = ferry.wait(Duration::from_secs(120));
    let stderr = ferry.stderr();
    assert_eq!(
        code,
        Some(0),
        "ferry migrate --cutover failed:\n{}",
        tail(&stderr, 40)
    );
    assert!(
        stderr.contains("Switched; source writes resumed."),
        "{}",
        tail(&stderr, 30)
    );
    let report = oracle(&source.urls()[0], &target.urls()[0]);
    eprintln!("workload: {ops} rounds, {popped} served pops\n{report}");
    assert!(report.keys_compared > 3000, "{report}");
    report.assert_identical();
}

/// A slot moved between two source shards during replay (the way `redis-cli --cluster
/// reshard` does it, keys migrated while the workload writes them): ferry reads the new slot
/// map, resyncs, and the target ends equal to the source.
#[test]
fn a_slot_moved_between_source_shards_during_replay_is_followed_exactly() {
    let source = Cluster::start();
    let target = Cluster::start();
    let (tag, _) = tags(&source)
        .into_iter()
        .find(|(_, n)| *n == 0)
        .expect("a tag on master 0");
    let slot = source.slot_of(tag.as_bytes());
    let stderr = migrate_from_cluster_with(&source, &target.urls()[0], 12, &[], |_| {
        std::thread::sleep(Duration::from_secs(1));
        let moved = crate::cluster::migrate_slot(&source, slot, 0, 1);
        assert!(moved > 0, "slot {slot} had no key to move");
    });
    assert!(
        stderr.contains("The source cluster moved slots between shards"),
        "the slot move was not followed:\n{}",
        tail(&stderr, 30)
    );
}
