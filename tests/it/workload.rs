//! The live-workload generator itself: it must really produce every behaviour the migration
//! tests rely on (served blocked pops, mid-run expiry, all 3 dbs), stop promptly, and need no
//! admin command.

use std::thread;
use std::time::{Duration, Instant};

use crate::support::server::info_field;
use crate::support::workload::{self, KINDS, OCCASIONAL_KINDS};
use crate::support::{RedisServer, ServerOptions, WorkloadOptions, WorkloadReport};

/// Runs a workload for `run`, then stops it, asserting that stopping was prompt.
fn run_for(server: &RedisServer, opts: WorkloadOptions, run: Duration) -> WorkloadReport {
    let wl = workload::start(&server.url(), opts);
    thread::sleep(run);
    let running = wl.ops();
    let stopping = Instant::now();
    let report = wl.stop();
    let stop_took = stopping.elapsed();
    eprintln!("{report}\nstop() took {stop_took:.2?}");
    assert!(
        stop_took < Duration::from_secs(2),
        "stop() took {stop_took:?}"
    );
    assert!(report.total() >= running, "ops() ran ahead of the report");
    assert!(
        report.errors.is_empty(),
        "unexpected errors: {:#?}",
        report.errors
    );
    let unknown: Vec<&str> = report
        .ops_by_kind
        .keys()
        .copied()
        .filter(|k| !KINDS.contains(k) && !OCCASIONAL_KINDS.contains(k))
        .collect();
    assert!(unknown.is_empty(), "kinds missing from KINDS: {unknown:?}");
    report
}

#[test]
fn workload_exercises_every_kind_and_stops_promptly() {
    let server = RedisServer::start();
    let report = run_for(&server, WorkloadOptions::default(), Duration::from_secs(3));

    assert!(report.total() >= 3000, "only {} ops", report.total());
    let missing: Vec<&str> = KINDS
        .iter()
        .copied()
        .filter(|k| report.count(k) == 0)
        .collect();
    assert!(missing.is_empty(), "kinds never produced: {missing:?}");
    assert!(
        report.count("brpop_served_after_block") > 0,
        "no BRPOP blocked on empty queues and was then served by a push"
    );

    for db in [0, 1, 2] {
        let keys: u64 = redis::cmd("DBSIZE").query(&mut server.conn_db(db)).unwrap();
        assert!(keys > 0, "db {db} is empty");
    }
    let processed: u64 = redis::cmd("GET")
        .arg("stat:processed")
        .query(&mut server.conn())
        .unwrap();
    assert!(processed > 0);
    let stats = server.info("stats");
    let expired: u64 = info_field(&stats, "expired_keys").unwrap().parse().unwrap();
    eprintln!("expired_keys {expired}, stat:processed {processed}");
    assert!(expired > 0, "no short-TTL key expired during the run");
}

#[test]
fn workload_needs_no_admin_commands() {
    let server = RedisServer::start_with(ServerOptions {
        password: Some("s3cret pass\"word".into()),
        ..ServerOptions::elasticache_like()
    });
    let report = run_for(
        &server,
        WorkloadOptions {
            seed: 42,
            ..WorkloadOptions::default()
        },
        Duration::from_secs(1),
    );
    assert!(report.total() >= 500, "only {} ops", report.total());
    for kind in ["multi_exec", "evalsha", "eval_spop", "xreadgroup", "set_ex"] {
        assert!(report.count(kind) > 0, "{kind} never ran");
    }
}
