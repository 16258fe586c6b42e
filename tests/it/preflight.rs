//! `ferry preflight`: ready pairs pass, pairs that need a look warn, pairs that cannot be
//! migrated fail with the reason; the JSON report is machine-readable.

use crate::cli::ferry;
use crate::support::{Dataset, RedisServer, ServerOptions, fill};

pub(crate) fn preflight(
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

pub(crate) fn finding<'a>(report: &'a serde_json::Value, check: &str) -> &'a serde_json::Value {
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

/// A plan file whose servers come from `SOURCE_URL` / `TARGET_URL`, with `extra` fields.
fn plan_file(dir: &std::path::Path, extra: &str) -> std::path::PathBuf {
    let path = dir.join("plan.lua");
    std::fs::write(
        &path,
        format!(
            "local ferry = require \"ferry\"\nreturn ferry.plan {{\n  api_version = 1,\n  source = {{ url = ferry.env \"SOURCE_URL\" }},\n  target = {{ url = ferry.env \"TARGET_URL\" }},\n{extra}}}\n"
        ),
    )
    .unwrap();
    path
}

fn preflight_args(args: &[&str]) -> (Option<i32>, String, String) {
    let out = ferry().arg("preflight").args(args).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn preflight_reads_the_servers_and_options_from_a_plan() {
    let source = RedisServer::start();
    fill(&source, &Dataset::tiny());
    let ready = RedisServer::start();
    let small = RedisServer::start_with(ServerOptions {
        maxmemory: Some(1 << 20),
        extra_config: vec!["maxmemory-policy allkeys-lru".into()],
        ..ServerOptions::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let plan = plan_file(dir.path(), "  on_field_ttls = \"drop_field_ttls\",\n");
    let plan = plan.to_str().unwrap();
    let set_source = format!("SOURCE_URL={}", source.url());
    // The plan's target is the small one: its warnings show the plan's servers were read.
    let (code, stdout, stderr) = preflight_args(&[
        "--plan",
        plan,
        "--set",
        &set_source,
        "--set",
        &format!("TARGET_URL={}", small.url()),
        "--json",
        "-",
    ]);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    let r: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(finding(&r, "eviction policy")["level"], "warn", "{r:#}");
    // --target overrides the plan's target.
    let (code, stdout, stderr) = preflight_args(&[
        "--plan",
        plan,
        "--set",
        &set_source,
        "--set",
        &format!("TARGET_URL={}", small.url()),
        "--target",
        &ready.url(),
    ]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("verdict: ready"), "{stdout}");
}

#[test]
fn preflight_with_a_bad_plan_or_no_servers_exits_2_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let plan = plan_file(dir.path(), "  on_field_ttls = \"keep\",\n");
    let (code, stdout, stderr) = preflight_args(&[
        "--plan",
        plan.to_str().unwrap(),
        "--set",
        "SOURCE_URL=redis://127.0.0.1:1",
        "--set",
        "TARGET_URL=redis://127.0.0.1:2",
    ]);
    assert_eq!(code, Some(2), "{stdout}{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("on_field_ttls") && stderr.contains("plan.lua:"),
        "{stderr}"
    );
    // Neither a plan nor URLs: clap names what is missing.
    let (code, _, stderr) = preflight_args(&[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--source"), "{stderr}");
}
