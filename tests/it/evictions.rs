//! Evictions on the source leave no line in `MONITOR` (docs/redis-behaviour.md §5): without help the target
//! keeps every key the source dropped, and a key evicted and then written again (a counter that
//! restarts from 0) differs. A cache at its memory limit with `allkeys-lru` evicts all the time;
//! ferry must still stop at a final fence with the target equal to the source.
//!
//! Once the writes stop, the test lifts the source's memory limit: at the limit, the oracle's
//! own reads would make it evict further (client buffers count toward `maxmemory`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::migrate::{start_migrate, start_past_snapshot};
use crate::support::server::info_field;
use crate::support::{OracleOptions, RedisServer, ServerOptions, compare};

fn evicted(server: &RedisServer) -> u64 {
    info_field(&server.info("stats"), "evicted_keys")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Migrates a source that evicts throughout; `counters` adds INCRs on a few keys, which LRU
/// sampling evicts now and then, so they restart from 1 on the source; `midway` runs on the
/// source halfway through. Returns ferry's stderr.
fn migrate_while_evicting(
    extra_config: &[&str],
    counters: bool,
    midway: impl FnOnce(&mut redis::Connection),
) -> String {
    let mut config = vec!["maxmemory-policy allkeys-lru".to_string()];
    config.extend(extra_config.iter().map(|s| s.to_string()));
    let source = RedisServer::start_with(ServerOptions {
        maxmemory: Some(8 << 20),
        extra_config: config,
        ..ServerOptions::default()
    });
    let target = RedisServer::start();
    let value = vec![b'v'; 1024];
    let mut con = source.conn();
    let mut pipe = redis::pipe();
    for i in 0..4000 {
        pipe.cmd("SET").arg(format!("old:{i}")).arg(&value).ignore();
    }
    let _: () = pipe.query(&mut con).unwrap();

    let state = tempfile::tempdir().unwrap();
    let mut ferry = start_migrate(
        &source.url(),
        &target.url(),
        state.path(),
        &["--capture", "primary"],
    );
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let mut con = source.conn();
        std::thread::spawn(move || {
            // New keys past the memory limit: every few writes the source evicts old ones.
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let mut pipe = redis::pipe();
                for _ in 0..50 {
                    pipe.cmd("SET").arg(format!("new:{i}")).arg(&value).ignore();
                    if counters {
                        pipe.cmd("INCR").arg(format!("counter:{}", i % 8)).ignore();
                    }
                    i += 1;
                }
                let _: () = pipe.query(&mut con).unwrap();
                std::thread::sleep(Duration::from_millis(5));
            }
            i
        })
    };
    std::thread::sleep(Duration::from_secs(3));
    midway(&mut con);
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    let written = writer.join().unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg(&["SET", "maxmemory", "0"])
        .query(&mut con)
        .unwrap();
    let evicted_keys = evicted(&source);
    assert!(
        evicted_keys > 1000,
        "the source evicted only {evicted_keys} keys of {written} written"
    );

    let code = ferry.terminate(Duration::from_secs(60));
    let stderr = ferry.stderr();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("may evict keys"), "{stderr}");
    let oracle = compare(&source.url(), &target.url(), &OracleOptions::default());
    eprintln!("written {written}, evicted {evicted_keys}\n{oracle}");
    assert!(oracle.keys_compared > 1000, "{oracle}");
    oracle.assert_identical();
    stderr
}

#[test]
fn evicted_keys_named_by_keyspace_events_are_exact_even_when_written_again() {
    let stderr = migrate_while_evicting(&["notify-keyspace-events Ee"], true, |_| {});
    assert!(!stderr.contains("not name"), "{stderr}");
}

#[test]
fn without_keyspace_events_sweeps_remove_what_the_source_evicted() {
    let stderr = migrate_while_evicting(&[], false, |_| {});
    assert!(stderr.contains("keyspace events do not name"), "{stderr}");
}

#[test]
fn an_eviction_counter_that_goes_back_switches_to_sweeps() {
    // CONFIG RESETSTAT (or a restart) sets evicted_keys back to 0: the events counted so far no
    // longer match it, so ferry stops trusting the count and sweeps.
    let stderr = migrate_while_evicting(&["notify-keyspace-events Ee"], false, |con| {
        let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query(con).unwrap();
    });
    assert!(stderr.contains("eviction counter went back"), "{stderr}");
}

#[test]
fn a_target_that_may_evict_is_named_before_anything_is_copied() {
    let source = RedisServer::start();
    let target = RedisServer::start_with(ServerOptions {
        maxmemory: Some(64 << 20),
        extra_config: vec!["maxmemory-policy allkeys-lru".into()],
        ..ServerOptions::default()
    });
    let _: () = redis::cmd("SET")
        .arg("k")
        .arg("v")
        .query(&mut source.conn())
        .unwrap();
    let state = tempfile::tempdir().unwrap();
    let mut ferry = start_past_snapshot(&source, &target, state.path(), &[]);
    let code = ferry.terminate(Duration::from_secs(60));
    let stderr = ferry.stderr();
    assert_eq!(code, Some(0), "{stderr}");
    let warned = stderr.find("The target may evict keys").expect(&stderr);
    let copied = stderr.find("Snapshot started").expect(&stderr);
    assert!(warned < copied, "{stderr}");
    assert!(stderr.contains("allkeys-lru"), "{stderr}");
}
