//! `ferry verify` end to end: identical servers pass (full and sampled), every kind of real
//! difference is reported with its kind, a target lagging behind live traffic is not reported,
//! and a bad URL is a one-line error without the password.

use std::collections::BTreeSet;
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::cli::run_ferry;
use crate::support::fill::keys;
use crate::support::{Dataset, RedisServer, fill};

/// Writes `plan.lua` in `dir`: a plan from `source` to `target` with `fields` (Lua table fields).
fn plan_file(
    dir: &std::path::Path,
    source: &RedisServer,
    target: &RedisServer,
    fields: &str,
) -> std::path::PathBuf {
    let plan = dir.join("plan.lua");
    let text = format!(
        "local ferry = require \"ferry\"\nreturn ferry.plan {{\n  api_version = 1,\n  source = {{ url = \"{}\" }},\n  target = {{ url = \"{}\" }},\n  {fields}\n}}\n",
        source.url(),
        target.url()
    );
    std::fs::write(&plan, text).unwrap();
    plan
}

/// Two servers holding the same data, TTLs included.
fn twins() -> (RedisServer, RedisServer) {
    let ds = Dataset {
        dbs: vec![0, 1],
        ..Dataset::tiny()
    }
    .with_fixed_ttl_base();
    let (a, b) = (RedisServer::start(), RedisServer::start());
    fill(&a, &ds);
    fill(&b, &ds);
    (a, b)
}

fn verify(
    source: &RedisServer,
    target: &RedisServer,
    extra: &[&str],
) -> (Output, serde_json::Value) {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("verify.json");
    let (s, t) = (source.url(), target.url());
    let mut args = vec!["verify", "--source", &s, "--target", &t, "--json"];
    args.push(json.to_str().unwrap());
    args.extend_from_slice(extra);
    let out = run_ferry(&args);
    let report = std::fs::read(&json)
        .map(|d| serde_json::from_slice(&d).unwrap())
        .unwrap_or(serde_json::Value::Null);
    (out, report)
}

/// `(db, quoted key, kind)` of every reported difference.
fn differences(report: &serde_json::Value) -> BTreeSet<(u64, String, String)> {
    report["differences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["db"].as_u64().unwrap(),
                d["key"].as_str().unwrap().to_string(),
                d["kind"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn identical_servers_verify_clean_full_and_sampled() {
    let (a, b) = twins();
    let (out, report) = verify(&a, &b, &["--full"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(report["keys_checked"].as_u64().unwrap() > 600, "{report}");
    assert!(differences(&report).is_empty(), "{report}");

    let (out, report) = verify(&a, &b, &["--sample", "500"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let checked = report["keys_checked"].as_u64().unwrap();
    assert!((450..=600).contains(&checked), "{report}");
}

#[test]
fn every_kind_of_real_difference_is_reported() {
    let (a, b) = twins();
    let mut t0 = b.conn_db(0);
    let mut t1 = b.conn_db(1);
    let mut s0 = a.conn_db(0);
    let q = |k: &[u8]| ferry::escape::quote(k);
    // Missing on the target.
    let _: () = redis::cmd("DEL")
        .arg(keys::SMALL_HASH)
        .query(&mut t0)
        .unwrap();
    // Extra on the target, in the second db.
    let _: () = redis::cmd("SET")
        .arg("extra:only-on-target")
        .arg("x")
        .query(&mut t1)
        .unwrap();
    // One field of a big hash.
    let field: Vec<u8> = redis::cmd("HRANDFIELD")
        .arg(keys::BIG_HASH)
        .query(&mut t0)
        .unwrap();
    let _: () = redis::cmd("HSET")
        .arg(keys::BIG_HASH)
        .arg(&field)
        .arg("changed")
        .query(&mut t0)
        .unwrap();
    // One list element.
    let _: () = redis::cmd("LSET")
        .arg(keys::BIG_LIST)
        .arg(7)
        .arg("changed")
        .query(&mut t0)
        .unwrap();
    // Wrong type.
    let _: () = redis::cmd("DEL").arg("special:int").query(&mut t0).unwrap();
    let _: () = redis::cmd("RPUSH")
        .arg("special:int")
        .arg("12345")
        .query(&mut t0)
        .unwrap();
    // TTL off by 60 s.
    let at = crate::support::fill::now_ms() + 3_600_000;
    let _: () = redis::cmd("PEXPIREAT")
        .arg("special:float")
        .arg(at)
        .query(&mut s0)
        .unwrap();
    let _: () = redis::cmd("PEXPIREAT")
        .arg("special:float")
        .arg(at + 60_000)
        .query(&mut t0)
        .unwrap();
    // A stream group's last-delivered-id.
    let _: () = redis::cmd("XGROUP")
        .arg("SETID")
        .arg(keys::STREAM)
        .arg("g2")
        .arg("0")
        .query(&mut t0)
        .unwrap();

    let (out, report) = verify(&a, &b, &["--full"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let expected: BTreeSet<(u64, String, String)> = [
        (0, q(keys::SMALL_HASH), "missing on target"),
        (1, q(b"extra:only-on-target"), "extra on target"),
        (0, q(keys::BIG_HASH), "value"),
        (0, q(keys::BIG_LIST), "value"),
        (0, q(b"special:int"), "type"),
        (0, q(b"special:float"), "ttl"),
        (0, q(keys::STREAM), "value"),
    ]
    .into_iter()
    .map(|(db, k, kind)| (db, k, kind.to_string()))
    .collect();
    assert_eq!(differences(&report), expected, "{report}");
    assert_eq!(report["by_kind"]["value"], 3, "{report}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("special:float"), "{stdout}");
}

/// Increments the same counters on both servers, the target ~50 ms behind, until stopped.
fn lagging_traffic(
    source: &RedisServer,
    target: &RedisServer,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    let (mut s, mut t) = (source.conn_db(0), target.conn_db(0));
    std::thread::spawn(move || {
        let mut rounds = 0;
        while !stop.load(Ordering::Relaxed) {
            let mut pipe = redis::pipe();
            for i in 0..10 {
                pipe.cmd("INCR").arg(format!("hot:{i}")).ignore();
            }
            let _: () = pipe.query(&mut s).unwrap();
            std::thread::sleep(Duration::from_millis(50));
            let _: () = pipe.query(&mut t).unwrap();
            std::thread::sleep(Duration::from_millis(5));
            rounds += 1;
        }
        rounds
    })
}

#[test]
fn lagging_target_under_traffic_is_no_false_alarm() {
    let (a, b) = twins();
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = lagging_traffic(&a, &b, stop.clone());
    std::thread::sleep(Duration::from_millis(300));

    // Several runs, each comparing the counters at a random point of the lag.
    let mut rechecked = 0;
    for _ in 0..3 {
        let (out, report) = verify(&a, &b, &["--full"]);
        assert_eq!(out.status.code(), Some(0), "{}\n{report}", stderr(&out));
        rechecked += report["rechecked"].as_u64().unwrap();
    }
    // The lag was seen (and absorbed), not missed.
    assert!(rechecked > 0);

    // A real difference on one counter: the target got 1000 more, and keeps counting.
    let _: () = redis::cmd("INCRBY")
        .arg("hot:3")
        .arg(1000)
        .query(&mut b.conn_db(0))
        .unwrap();
    let (out2, report2) = verify(&a, &b, &["--full"]);
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let rounds = traffic.join().unwrap();
    assert!(rounds > 10, "traffic ran {rounds} rounds");

    assert_eq!(out2.status.code(), Some(1), "{}", stderr(&out2));
    let expected: BTreeSet<_> = [(0, "\"hot:3\"".to_string(), "value".to_string())].into();
    assert_eq!(differences(&report2), expected, "{report2}");
}

#[test]
fn bad_url_is_a_one_line_error_without_the_password() {
    let server = RedisServer::start();
    let out = run_ferry(&[
        "verify",
        "--source",
        "http://user:hunter2@example",
        "--target",
        &server.url(),
    ]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("ferry: error: "), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
}

#[test]
fn plan_renames_filters_and_rules_apply_to_a_standalone_verify() {
    let (source, target) = (RedisServer::start(), RedisServer::start());
    {
        let (mut s, mut t) = (source.conn(), target.conn());
        for i in 0..50 {
            let _: () = redis::cmd("SET")
                .arg(format!("a:{i}"))
                .arg(i)
                .query(&mut s)
                .unwrap();
            let _: () = redis::cmd("SET")
                .arg(format!("b:{i}"))
                .arg(i)
                .query(&mut t)
                .unwrap();
        }
        // Left out by the plan: absent on the target is right.
        let _: () = redis::cmd("SET")
            .arg("skip:1")
            .arg("x")
            .query(&mut s)
            .unwrap();
        // Ignored by a verify rule: differs, not reported.
        let _: () = redis::cmd("SET")
            .arg("noisy:1")
            .arg("x")
            .query(&mut s)
            .unwrap();
        let _: () = redis::cmd("SET")
            .arg("noisy:1")
            .arg("y")
            .query(&mut t)
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let plan = plan_file(
        dir.path(),
        &source,
        &target,
        r#"keys = { exclude = { "skip:*" } },
  rewrite = { ferry.rename_prefix("a:", "b:") },
  verify = { rules = { { pattern = "noisy:*", ignore = true } } },"#,
    );
    let run = || {
        let json = dir.path().join("v.json");
        let out = run_ferry(&[
            "verify",
            "--plan",
            plan.to_str().unwrap(),
            "--full",
            "--json",
            json.to_str().unwrap(),
        ]);
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
        (out, report)
    };
    let (out, report) = run();
    assert_eq!(out.status.code(), Some(0), "{report:#}");
    assert!(report["keys_checked"].as_u64().unwrap() >= 50, "{report:#}");

    // Without the plan, the renamed keys would all differ.
    let (bare, _) = verify(&source, &target, &["--full"]);
    assert_eq!(bare.status.code(), Some(1));

    let _: () = redis::cmd("SET")
        .arg("b:7")
        .arg("wrong")
        .query(&mut target.conn())
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg("b:99")
        .arg("extra")
        .query(&mut target.conn())
        .unwrap();
    let (out, report) = run();
    assert_eq!(out.status.code(), Some(1), "{report:#}");
    let got = differences(&report);
    let want: BTreeSet<(u64, String, String)> = [
        (0, "\"a:7\"".to_string(), "value".to_string()),
        (0, "\"a:99\"".to_string(), "extra on target".to_string()),
    ]
    .into_iter()
    .collect();
    assert_eq!(got, want, "{report:#}");
    let details: Vec<&str> = report["differences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["detail"].as_str().unwrap())
        .collect();
    assert!(
        details.iter().any(|d| d.contains("target db0 \"b:7\"")),
        "{details:?}"
    );
}

/// A sample of N under a plan that leaves about half the keys out compares N keys the plan
/// migrates, and says how many it drew and skipped (it once drew N and checked about N/2).
#[test]
fn a_sample_counts_only_keys_the_plan_migrates_and_says_what_it_skipped() {
    let (source, target) = (RedisServer::start(), RedisServer::start());
    {
        let (mut s, mut t) = (source.conn(), target.conn());
        let mut ps = redis::pipe();
        let mut pt = redis::pipe();
        for i in 0..2000 {
            ps.cmd("SET").arg(format!("keep:{i}")).arg(i).ignore();
            pt.cmd("SET").arg(format!("keep:{i}")).arg(i).ignore();
            ps.cmd("SET").arg(format!("skip:{i}")).arg(i).ignore();
        }
        let _: () = ps.query(&mut s).unwrap();
        let _: () = pt.query(&mut t).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let plan = plan_file(
        dir.path(),
        &source,
        &target,
        r#"keys = { exclude = { "skip:*" } },
  verify = { sample = 500 },"#,
    );
    let json = dir.path().join("v.json");
    let out = run_ferry(&[
        "verify",
        "--plan",
        plan.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ]);
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(out.status.code(), Some(0), "{report:#}\n{}", stderr(&out));
    // 500 source keys the plan migrates, plus the target-side sample (a tenth) looking for
    // keys the source lacks.
    let checked = report["keys_checked"].as_u64().unwrap();
    assert!((500..=560).contains(&checked), "{report:#}");
    let (drawn, skipped) = (
        report["sample_drawn"].as_u64().unwrap(),
        report["sample_skipped"].as_u64().unwrap(),
    );
    assert!(skipped > 100, "the filter's path never ran: {report:#}");
    assert_eq!(drawn - skipped, 500, "{report:#}");
    let text = stderr(&out);
    assert!(text.contains("source keys drawn"), "{text}");
}
