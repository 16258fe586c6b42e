//! Fenced verification inside a live migration: hot counters raise no false alarm while a
//! naive read-source-then-target comparison of the same run does; real differences injected
//! on the target are each reported in their category; and `ferry run`'s verify phase applies
//! the plan's rules (ignore, per-pattern TTL tolerance, a Lua comparator).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ferry::migration::{CaptureMode, MigrateConfig, Migration, Running};
use ferry::net::Endpoint;
use ferry::verify::{KeyView, VerifyConfig, VerifyReport, VerifyRules};
use redis::Commands;

use crate::cli::run_ferry;
use crate::support::{Dataset, OracleOptions, RedisServer, compare, fill};

const COUNTERS: usize = 40;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn start(source: &RedisServer, target: &RedisServer, state: &std::path::Path) -> Running {
    let mut cfg = MigrateConfig::new(state);
    cfg.capture = CaptureMode::Primary;
    cfg.status_every = None;
    Migration::new(
        Endpoint::parse(&source.url()).unwrap(),
        Endpoint::parse(&target.url()).unwrap(),
        cfg,
    )
    .start()
    .await
    .unwrap()
}

/// INCRs counters from two threads at about 7,000/s in all, pipelined, until stopped.
fn hammer(
    source: &RedisServer,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
) -> Vec<std::thread::JoinHandle<()>> {
    (0..2)
        .map(|t| {
            let mut con = source.conn();
            let stop = stop.clone();
            let sent = sent.clone();
            std::thread::spawn(move || {
                let mut i = t;
                let started = Instant::now();
                let mut batches = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    // 35 per 10 ms per thread; paced by the clock, so a slow moment catches up.
                    batches += 1;
                    let due = started + Duration::from_millis(10) * batches;
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let mut pipe = redis::pipe();
                    for _ in 0..35 {
                        pipe.incr(format!("counter:{}", i % COUNTERS), 1).ignore();
                        i += 1;
                    }
                    let () = pipe.query(&mut con).unwrap();
                    sent.fetch_add(35, Ordering::Relaxed);
                }
            })
        })
        .collect()
}

fn kinds(report: &VerifyReport) -> BTreeMap<String, String> {
    report
        .differences
        .iter()
        .map(|d| (d.key.clone(), d.kind.clone()))
        .collect()
}

#[test]
fn hot_counters_raise_no_false_alarm_under_fenced_verify() {
    let (source, target) = (RedisServer::start(), RedisServer::start());
    fill(
        &source,
        &Dataset {
            dbs: vec![0, 1],
            keys_per_db: 1000,
            ..Dataset::tiny()
        },
    );
    let state = tempfile::tempdir().unwrap();
    let rt = rt();
    let running = rt.block_on(start(&source, &target, state.path()));
    rt.block_on(running.wait_snapshot(Duration::from_secs(60)))
        .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let hammer_started = Instant::now();
    let threads = hammer(&source, stop.clone(), sent.clone());
    rt.block_on(running.wait_lag(Duration::from_millis(200), Duration::from_secs(60)))
        .unwrap();

    // Naive comparison, on the same run: read the source, then the target.
    let (mut s, mut t) = (source.conn(), target.conn());
    let mut naive = 0;
    for _ in 0..20 {
        for i in 0..COUNTERS {
            let k = format!("counter:{i}");
            let a: Option<i64> = s.get(&k).unwrap();
            let b: Option<i64> = t.get(&k).unwrap();
            if a != b {
                naive += 1;
            }
        }
    }

    // Fenced verification of every key, counters included, while they keep changing.
    let fenced = rt
        .block_on(running.verify(VerifyConfig::default(), None))
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    for th in threads {
        th.join().unwrap();
    }
    let rate = sent.load(Ordering::Relaxed) as f64 / hammer_started.elapsed().as_secs_f64();
    let report = rt.block_on(running.finish()).unwrap();
    eprintln!(
        "INCR rate: {rate:.0}/s; naive mismatches {naive} of {}; fenced: {}; migration pause {} ms",
        20 * COUNTERS,
        fenced.summary(),
        report.pause_ms
    );
    // The test is only meaningful under real load.
    assert!(
        rate >= 5000.0,
        "the counters were not hot enough: {rate:.0}/s"
    );
    assert!(
        naive > 0,
        "the naive comparison saw no difference: the test cannot tell the two apart"
    );
    assert!(fenced.keys_checked >= 2000, "{fenced:?}");
    assert!(
        fenced.is_identical(),
        "false alarms under fenced verification: {:?}",
        fenced.differences
    );
    compare(&source.url(), &target.url(), &OracleOptions::default()).assert_identical();
}

struct Rules;

impl VerifyRules for Rules {
    fn ignored(&self, _: u32, key: &[u8]) -> bool {
        key == b"inj:value"
    }
    fn ttl_tolerance_ms(&self, _: u32, key: &[u8]) -> i64 {
        if key == b"inj:ttl" { 3_600_000 } else { 1000 }
    }
    fn has_compare(&self, _: u32, key: &[u8]) -> bool {
        key == b"inj:hash"
    }
    fn compare(&self, _: u32, a: &KeyView, b: &KeyView) -> Result<bool, String> {
        assert_eq!(a.value, "\"f\" \"1\"");
        assert_eq!(b.value, "\"f\" \"2\"");
        Ok(a.type_name == b.type_name)
    }
}

#[test]
fn injected_differences_are_reported_by_category_during_a_live_run() {
    let (source, target) = (RedisServer::start(), RedisServer::start());
    fill(
        &source,
        &Dataset {
            dbs: vec![0],
            keys_per_db: 500,
            ..Dataset::tiny()
        },
    );
    {
        let mut s = source.conn();
        let _: () = s.set("inj:value", "v1").unwrap();
        let _: () = s.set("inj:missing", "m").unwrap();
        let _: () = s.set("inj:type", "t").unwrap();
        let _: () = s.set_ex("inj:ttl", "x", 3600).unwrap();
        let _: () = s.hset("inj:hash", "f", "1").unwrap();
    }
    let state = tempfile::tempdir().unwrap();
    let rt = rt();
    let running = rt.block_on(start(&source, &target, state.path()));
    rt.block_on(running.wait_snapshot(Duration::from_secs(60)))
        .unwrap();
    rt.block_on(running.wait_lag(Duration::from_millis(200), Duration::from_secs(60)))
        .unwrap();
    let clean = rt
        .block_on(running.verify(VerifyConfig::default(), None))
        .unwrap();
    assert!(clean.is_identical(), "{:?}", clean.differences);

    // Damage the target behind ferry's back.
    {
        let mut t = target.conn();
        let _: () = t.set("inj:value", "v2").unwrap();
        let _: () = t.del("inj:missing").unwrap();
        let _: () = t.set("inj:extra", "e").unwrap();
        let _: () = t.del("inj:type").unwrap();
        let _: () = t.sadd("inj:type", "t").unwrap();
        let _: () = t.expire("inj:ttl", 60).unwrap();
        let _: () = t.hset("inj:hash", "f", "2").unwrap();
    }
    let report = rt
        .block_on(running.verify(VerifyConfig::default(), None))
        .unwrap();
    // The same damage under rules: `inj:value` ignored, `inj:ttl` within its tolerance, and
    // `inj:hash` judged by a comparator that only looks at the type.
    let ruled = rt
        .block_on(running.verify(VerifyConfig::default(), Some(Arc::new(Rules))))
        .unwrap();
    rt.block_on(running.finish()).unwrap();
    assert_eq!(
        kinds(&ruled).into_keys().collect::<Vec<_>>(),
        ["\"inj:extra\"", "\"inj:missing\"", "\"inj:type\""],
        "{ruled:#?}"
    );
    let got = kinds(&report);
    let want: BTreeMap<String, String> = [
        ("\"inj:value\"", "value"),
        ("\"inj:missing\"", "missing on target"),
        ("\"inj:extra\"", "extra on target"),
        ("\"inj:type\"", "type"),
        ("\"inj:ttl\"", "ttl"),
        ("\"inj:hash\"", "value"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(got, want, "{report:#?}");
    assert_eq!(report.by_kind.values().sum::<u64>(), 6);
}

#[test]
fn run_verify_phase_applies_the_plans_rules() {
    let (source, target) = (RedisServer::start(), RedisServer::start());
    {
        let mut s = source.conn();
        for i in 0..200 {
            let _: () = s.set(format!("k:{i}"), i).unwrap();
        }
        let _: () = s.set("odd:1", "a").unwrap();
        let _: () = s.set("cmp:1", "Hello").unwrap();
        let _: () = s.set_ex("sess:1", "s", 3600).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("plan.lua");
    // `odd:*` never matches by its comparator; `cmp:*` compares case-insensitively.
    let write_plan = |rules: &str| {
        std::fs::write(
            &plan,
            format!(
                r#"local ferry = require "ferry"
return ferry.plan {{
  api_version = 1,
  source = {{ url = ferry.env "SRC", capture = "primary" }},
  target = {{ url = ferry.env "DST" }},
  journal = ferry.embedded {{ dir = ferry.env "STATE" }},
  verify = {{ full = true, rules = {{ {rules} }} }},
  phases = {{ "snapshot", "catch_up", "verify", ferry.cutover {{ max_pause_ms = 2000 }} }},
}}
"#
            ),
        )
        .unwrap();
    };
    let run = |name: &str| {
        let json = dir.path().join(format!("{name}.json"));
        let out = run_ferry(&[
            "run",
            plan.to_str().unwrap(),
            "--set",
            &format!("SRC={}", source.url()),
            "--set",
            &format!("DST={}", target.url()),
            "--set",
            &format!("STATE={}", dir.path().join(name).display()),
            "--json",
            json.to_str().unwrap(),
        ]);
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
        (out, report)
    };

    write_plan(
        r#"{ pattern = "odd:*", compare = function(a, b) return false end },
           { pattern = "cmp:*", compare = function(a, b) return a.value:lower() == b.value:lower() and a.type == "string" end }"#,
    );
    let (out, report) = run("first");
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let diffs = report["verify"]["differences"].as_array().unwrap();
    let keys: Vec<&str> = diffs.iter().map(|d| d["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["\"odd:1\""], "{report:#}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("without running later phases"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Ignoring `odd:*` lets the plan through to its cutover.
    write_plan(
        r#"{ pattern = "odd:*", ignore = true },
           { pattern = "sess:*", ttl_tolerance_ms = 60000 }"#,
    );
    let (out, report) = run("second");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(report["verify"]["differences"].as_array().unwrap().len(), 0);
    assert!(
        report["verify"]["keys_checked"].as_u64().unwrap() >= 202,
        "{report:#}"
    );
}
