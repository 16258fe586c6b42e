//! TLS against real `redis-server` processes with certificates made by `openssl`: a live
//! migration from a password-protected source with a private CA to a target that requires
//! client certificates, every certificate problem refused with exit 2 and one line naming it,
//! and no secret (password, key material) in any artifact of a run.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::cli::{assert_one_line_error, run_ferry};
use crate::migrate::{start_migrate, tail};
use crate::observe::scrape;
use crate::support::server::free_port;
use crate::support::tls::{Pki, ServerTls};
use crate::support::workload::{self, WorkloadOptions};
use crate::support::{Dataset, OracleOptions, RedisServer, ServerOptions, compare, fill};

const PASSWORD: &str = "tls-s3cret-pw";

fn tls_server(pki: &Pki, mutual: bool, password: Option<&str>) -> RedisServer {
    RedisServer::start_with(ServerOptions {
        password: password.map(str::to_string),
        tls: Some(ServerTls::from_pki(pki, mutual)),
        ..ServerOptions::default()
    })
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// Every base64 line of a PEM file's body: what a leak of the key would contain.
fn key_material(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 16)
        .map(str::to_string)
        .collect()
}

/// Every file under `dir`, recursively, with its bytes.
fn files(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files(&path));
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.push((path, bytes));
        }
    }
    out
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[test]
fn live_migration_from_a_private_ca_source_to_a_mutual_tls_target_is_exact_and_leaks_nothing() {
    let pki = Pki::new();
    let source = tls_server(&pki, false, Some(PASSWORD));
    let target = tls_server(&pki, true, None);
    fill(
        &source,
        &Dataset {
            dbs: vec![0, 1],
            keys_per_db: 3000,
            ..Dataset::default()
        },
    );
    let load = workload::start(&source.url(), WorkloadOptions::default());
    std::thread::sleep(Duration::from_millis(300));
    let dir = tempfile::tempdir().unwrap();
    let metrics = format!("127.0.0.1:{}", free_port());
    let (ca, (cert, key)) = (s(&pki.ca_pem()), pki.pair("client"));
    let (cert, key) = (s(&cert), s(&key));
    let mut ferry = start_migrate(
        &source.url(),
        &target.url(),
        dir.path(),
        &[
            "--capture",
            "primary",
            "--source-ca",
            &ca,
            "--target-ca",
            &ca,
            "--target-cert",
            &cert,
            "--target-key",
            &key,
            "--metrics-addr",
            &metrics,
        ],
    );
    ferry.wait_log("Snapshot reads done", Duration::from_secs(60));
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(4));
    let scraped = scrape(&metrics);
    assert!(scraped.contains("ferry_"), "{scraped}");
    let report = load.stop();
    assert!(report.errors.is_empty(), "workload errors: {report}");
    assert!(report.total() > 1000, "workload too small: {report}");
    let code = ferry.terminate(Duration::from_secs(60));
    let stderr = ferry.stderr();
    assert_eq!(code, Some(0), "ferry migrate failed:\n{stderr}");
    assert!(stderr.contains("final fence"), "{stderr}");
    let oracle = compare(
        &source.url(),
        &target.url(),
        &OracleOptions {
            ttl_tolerance_ms: 1000,
            ..OracleOptions::default()
        },
    );
    eprintln!(
        "{report}\n{oracle}\nreplayed for {:?}\n--- ferry stderr (tail) ---\n{}",
        started.elapsed(),
        tail(&stderr, 10)
    );
    assert!(oracle.keys_compared > 6000, "{oracle}");
    oracle.assert_identical();

    // Secrets: the password and the client key's material appear in no artifact of the run
    // (the log, every file of the state dir with report.json and report.html, the metrics).
    let mut secrets = vec![PASSWORD.to_string()];
    secrets.extend(key_material(&pki.pair("client").1));
    let mut artifacts = files(dir.path());
    artifacts.push(("metrics".into(), scraped.into_bytes()));
    let names: Vec<String> = artifacts.iter().map(|(p, _)| s(p)).collect();
    assert!(
        names.iter().any(|n| n.ends_with("report.json"))
            && names.iter().any(|n| n.ends_with("report.html")),
        "no report among {names:?}"
    );
    assert!(artifacts.len() >= 5, "{names:?}");
    for (path, bytes) in &artifacts {
        for secret in &secrets {
            assert!(
                !contains(bytes, secret),
                "{} holds a secret",
                path.display()
            );
        }
    }
}

/// Each certificate problem: exit 2 and one line naming the problem and the endpoint.
#[test]
fn certificate_problems_are_refused_with_exit_2_naming_the_problem_and_the_endpoint() {
    let pki = Pki::new();
    let source = tls_server(&pki, false, Some(PASSWORD));
    let target = tls_server(&pki, true, None);
    let (src, tgt) = (source.url(), target.url());
    let src_shown = format!("rediss://:***@127.0.0.1:{}", source.port());
    let tgt_shown = format!("rediss://127.0.0.1:{}", target.port());
    let ca = s(&pki.ca_pem());
    let other_ca = s(&pki.path("other-ca.pem"));
    let (cert, key) = pki.pair("client");
    let (cert, key) = (s(&cert), s(&key));
    let (other_cert, other_key) = pki.pair("other-client");
    let (other_cert, other_key) = (s(&other_cert), s(&other_key));
    let verify = |extra: &[&str]| {
        let mut args = vec!["verify", "--source", &src, "--target", &tgt];
        args.extend_from_slice(extra);
        run_ferry(&args)
    };
    let good_target = [
        "--target-ca",
        &ca,
        "--target-cert",
        &cert,
        "--target-key",
        &key,
    ];

    // Everything right: 0 differences (and the server name override accepted).
    let mut args = vec!["--source-ca", &ca, "--source-tls-server-name", "localhost"];
    args.extend_from_slice(&good_target);
    let out = verify(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");

    // The default roots do not hold the private CA; a CA from elsewhere does not either.
    let out = verify(&good_target);
    assert_one_line_error(
        &out,
        &format!("TLS with {src_shown} failed: unknown issuer"),
        Some(PASSWORD),
    );
    let mut args = vec!["--source-ca", &other_ca];
    args.extend_from_slice(&good_target);
    let out = verify(&args);
    assert_one_line_error(
        &out,
        &format!("TLS with {src_shown} failed: unknown issuer"),
        Some(PASSWORD),
    );

    // A name the certificate does not hold.
    let mut args = vec![
        "--source-ca",
        &ca,
        "--source-tls-server-name",
        "redis.example.com",
    ];
    args.extend_from_slice(&good_target);
    let out = verify(&args);
    assert_one_line_error(
        &out,
        &format!("TLS with {src_shown} failed: name mismatch"),
        Some(PASSWORD),
    );

    // The target requires a client certificate: none, or one from another CA.
    let out = verify(&["--source-ca", &ca, "--target-ca", &ca]);
    assert_one_line_error(
        &out,
        &format!("TLS with {tgt_shown} failed: client certificate required"),
        Some(PASSWORD),
    );
    let out = verify(&[
        "--source-ca",
        &ca,
        "--target-ca",
        &ca,
        "--target-cert",
        &other_cert,
        "--target-key",
        &other_key,
    ]);
    assert_one_line_error(
        &out,
        &format!("TLS with {tgt_shown} failed: the server refused ferry's client certificate"),
        Some(PASSWORD),
    );

    // An expired server certificate (the plain port only tells the fixture it is up).
    let (exp_cert, exp_key) = pki.pair("expired");
    let tls_port = free_port();
    let _expired = RedisServer::start_with(ServerOptions {
        extra_config: vec![
            format!("tls-port {tls_port}"),
            format!("tls-cert-file {}", exp_cert.display()),
            format!("tls-key-file {}", exp_key.display()),
            format!("tls-ca-cert-file {ca}"),
            "tls-auth-clients no".into(),
        ],
        ..ServerOptions::default()
    });
    let expired = format!("rediss://:{PASSWORD}@127.0.0.1:{tls_port}");
    let out = run_ferry(&[
        "backup",
        "--source",
        &expired,
        "--source-ca",
        &ca,
        "--out",
        "/nonexistent/x.rdb",
    ]);
    assert_one_line_error(
        &out,
        &format!("TLS with rediss://:***@127.0.0.1:{tls_port} failed: certificate expired"),
        Some(PASSWORD),
    );

    // Settings that cannot work are refused before connecting, naming the file or the URL.
    let out = verify(&["--source-ca", "/nonexistent/ca.pem"]);
    assert_one_line_error(
        &out,
        &format!("TLS settings for {src_shown}: cannot read the CA bundle /nonexistent/ca.pem"),
        Some(PASSWORD),
    );
    let plain = RedisServer::start_with(ServerOptions::with_password(PASSWORD));
    let out = run_ferry(&["monitor", "--source", &plain.url(), "--source-ca", &ca]);
    assert_one_line_error(
        &out,
        "were given for a URL without TLS; use rediss://",
        Some(PASSWORD),
    );
    let out = verify(&["--source-ca", &key]);
    assert_one_line_error(&out, "no PEM certificate", Some(PASSWORD));
    for line in key_material(&pki.pair("client").1) {
        assert!(!String::from_utf8_lossy(&out.stderr).contains(&line));
    }
}

/// A plan's `tls = { … }` fields reach every connection as the flags do.
#[test]
fn plan_tls_fields_reach_the_servers() {
    let pki = Pki::new();
    let source = tls_server(&pki, false, Some(PASSWORD));
    let target = tls_server(&pki, true, None);
    fill(
        &source,
        &Dataset {
            dbs: vec![0],
            keys_per_db: 500,
            ..Dataset::default()
        },
    );
    fill(
        &target,
        &Dataset {
            dbs: vec![0],
            keys_per_db: 500,
            ..Dataset::default()
        },
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(pki.ca_pem(), dir.path().join("ca.pem")).unwrap();
    std::fs::copy(pki.pair("client").0, dir.path().join("client.pem")).unwrap();
    std::fs::copy(pki.pair("client").1, dir.path().join("client.key")).unwrap();
    let plan = dir.path().join("plan.lua");
    std::fs::write(
        &plan,
        format!(
            r#"local ferry = require "ferry"
return ferry.plan {{
  api_version = 1,
  name = "tls",
  source = {{ url = ferry.env "SOURCE_URL", tls = {{ ca = "ca.pem", server_name = "localhost" }} }},
  target = {{ url = "{}", tls = {{ ca = "ca.pem", cert = "client.pem", key = "client.key" }} }},
}}
"#,
            target.url()
        ),
    )
    .unwrap();
    let set = format!("SOURCE_URL={}", source.url());
    let out = run_ferry(&["verify", "--plan", &s(&plan), "--set", &set]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("0 differences"), "{stderr}");
    assert!(!stderr.contains(PASSWORD), "{stderr}");
    // `tls` on a URL without TLS is a plan error naming the field.
    std::fs::write(
        &plan,
        r#"local ferry = require "ferry" return ferry.plan { api_version = 1, source = { url = "redis://127.0.0.1:1", tls = { ca = "ca.pem" } }, target = "redis://127.0.0.1:2" }"#,
    )
    .unwrap();
    let out = run_ferry(&["check", &s(&plan)]);
    assert_one_line_error(&out, "source.tls", None);
}
