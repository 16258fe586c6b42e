//! `ferry preflight`: ready pairs pass, pairs that need a look warn, pairs that cannot be
//! migrated fail with the reason; the JSON report is machine-readable.

use crate::cli::ferry;
use crate::support::{Dataset, RedisServer, ServerOptions, fill};

fn preflight(
    source: &RedisServer,
    target: &RedisServer,
) -> (Option<i32>, String, serde_json::Value) {
    let out = ferry()
        .args([
            "preflight",
            "--source",
            &source.url(),
            "--target",
            &target.url(),
            "--json",
            "-",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let json = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        json,
    )
}

fn finding<'a>(report: &'a serde_json::Value, check: &str) -> &'a serde_json::Value {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["check"] == check)
        .unwrap_or_else(|| panic!("no {check} in {report:#}"))
}

#[test]
fn a_ready_pair_exits_0() {
    let (source, target) = (RedisServer::start(), RedisServer::start());
    fill(&source, &Dataset::tiny());
    let (code, stderr, r) = preflight(&source, &target);
    assert_eq!(code, Some(0), "{stderr}{r:#}");
    assert_eq!(r["source_engine"]["kind"], "Redis");
    assert_eq!(finding(&r, "MONITOR")["level"], "ok");
    assert_eq!(finding(&r, "payloads")["level"], "ok");
    assert!(
        r["findings"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["level"] == "ok"),
        "{r:#}"
    );
    // The text report says the same.
    let text = ferry()
        .args([
            "preflight",
            "--source",
            &source.url(),
            "--target",
            &target.url(),
        ])
        .output()
        .unwrap();
    assert_eq!(text.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&text.stdout).contains("verdict: ready"));
}

#[test]
fn a_small_evicting_target_warns_and_exits_1() {
    let source = RedisServer::start();
    fill(&source, &Dataset::tiny());
    let target = RedisServer::start_with(ServerOptions {
        maxmemory: Some(1 << 20),
        extra_config: vec!["maxmemory-policy allkeys-lru".into()],
        ..ServerOptions::default()
    });
    let (code, stderr, r) = preflight(&source, &target);
    assert_eq!(code, Some(1), "{stderr}{r:#}");
    assert_eq!(finding(&r, "memory")["level"], "warn", "{r:#}");
    let policy = finding(&r, "eviction policy");
    assert_eq!(policy["level"], "warn");
    assert!(policy["detail"].as_str().unwrap().contains("allkeys-lru"));
}

#[test]
fn a_source_without_monitor_cannot_be_migrated_and_exits_2() {
    let source = RedisServer::start_with(ServerOptions {
        extra_config: vec!["rename-command MONITOR \"\"".into()],
        ..ServerOptions::default()
    });
    let target = RedisServer::start();
    let (code, stderr, r) = preflight(&source, &target);
    assert_eq!(code, Some(2), "{stderr}{r:#}");
    let monitor = finding(&r, "MONITOR");
    assert_eq!(monitor["level"], "fail");
    assert!(
        monitor["detail"].as_str().unwrap().contains("MONITOR"),
        "{monitor:#}"
    );
}

#[test]
fn an_elasticache_like_source_warns_what_it_cannot_check() {
    let source = RedisServer::elasticache_like();
    let target = RedisServer::start();
    let (code, _, r) = preflight(&source, &target);
    assert_eq!(code, Some(1), "{r:#}");
    assert!(
        finding(&r, "evictions")["detail"]
            .as_str()
            .unwrap()
            .contains("CONFIG GET is not allowed")
    );
}
