//! ACL users: a live migration whose user on each side has exactly the permissions
//! docs/security.md lists is exact, and one permission removed is named (by `ferry preflight`
//! and at the start of a run) before anything is copied.

use std::time::Duration;

use crate::cli::{assert_one_line_error, run_ferry};
use crate::migrate::{start_migrate, tail};
use crate::support::workload::{self, WorkloadOptions};
use crate::support::{Dataset, OracleOptions, RedisServer, compare, fill};

const PASSWORD: &str = "acl-s3cret-pw";

/// The source user's rules, as docs/security.md gives them (the test checks it does).
pub const SOURCE_ACL: &str = "on ~* resetchannels &__keyevent@*__:evicted -@all +@read +ping +info +select +echo +multi +exec +discard +time +client|id +client|info +client|list +client|setname +client|pause +client|unpause +client|kill +command +command|docs +command|info +command|count +monitor +psubscribe +function|dump +function|list +memory|usage +config|get";

/// The target user's rules, as docs/security.md gives them.
pub const TARGET_ACL: &str = "on ~* &* -@all +@read +@write +ping +info +select +echo +multi +exec +discard +time +client|id +client|info +client|list +client|setname +client|pause +client|unpause +client|kill +command +command|docs +command|info +command|count +monitor +function|list +function|restore +memory|usage +config|get";

/// Creates user `ferry` with `rules` and the password; returns its URL.
fn ferry_user(server: &RedisServer, rules: &str) -> String {
    let mut cmd = redis::cmd("ACL");
    cmd.arg("SETUSER").arg("ferry").arg("reset");
    for r in rules.split_whitespace() {
        cmd.arg(r);
    }
    cmd.arg(format!(">{PASSWORD}"));
    let () = cmd.query(&mut server.conn()).unwrap();
    format!("redis://ferry:{PASSWORD}@127.0.0.1:{}", server.port())
}

#[test]
fn least_privilege_users_migrate_exactly() {
    let source = RedisServer::start();
    let target = RedisServer::start();
    let (src, tgt) = (
        ferry_user(&source, SOURCE_ACL),
        ferry_user(&target, TARGET_ACL),
    );
    fill(
        &source,
        &Dataset {
            dbs: vec![0, 1],
            keys_per_db: 3000,
            ..Dataset::default()
        },
    );

    // Preflight finds every permission on both sides.
    let out = run_ferry(&["preflight", "--source", &src, "--target", &tgt]);
    let report = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.code() != Some(2), "{report}{stderr}");
    assert_eq!(report.matches("permissions").count(), 2, "{report}{stderr}");
    assert!(!report.contains("NOPERM"), "{report}");

    let load = workload::start(&source.url(), WorkloadOptions::default());
    std::thread::sleep(Duration::from_millis(300));
    let dir = tempfile::tempdir().unwrap();
    let mut ferry = start_migrate(
        &src,
        &tgt,
        dir.path(),
        &["--capture", "primary", "--verify"],
    );
    ferry.wait_log("Snapshot reads done", Duration::from_secs(60));
    ferry.wait_log("Fenced verification", Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(3));
    let report = load.stop();
    assert!(report.errors.is_empty(), "workload errors: {report}");
    let code = ferry.terminate(Duration::from_secs(60));
    let stderr = ferry.stderr();
    assert_eq!(code, Some(0), "ferry migrate failed:\n{stderr}");
    assert!(stderr.contains("final fence"), "{stderr}");
    assert!(!stderr.contains("NOPERM"), "{stderr}");
    let oracle = compare(
        &source.url(),
        &target.url(),
        &OracleOptions {
            ttl_tolerance_ms: 1000,
            ..OracleOptions::default()
        },
    );
    eprintln!("{report}\n{oracle}\n{}", tail(&stderr, 8));
    assert!(oracle.keys_compared > 6000, "{oracle}");
    oracle.assert_identical();
}

#[test]
fn one_missing_permission_is_named_before_anything_is_copied() {
    let source = RedisServer::start();
    let target = RedisServer::start();
    let src = ferry_user(&source, &format!("{SOURCE_ACL} -dump"));
    let tgt = ferry_user(&target, TARGET_ACL);
    fill(
        &source,
        &Dataset {
            dbs: vec![0],
            keys_per_db: 200,
            ..Dataset::default()
        },
    );
    let out = run_ferry(&["preflight", "--source", &src, "--target", &tgt]);
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{report}");
    let line = report
        .lines()
        .find(|l| l.contains("permissions") && l.starts_with("FAIL"))
        .unwrap_or_else(|| panic!("no failed permissions line:\n{report}"));
    assert!(
        line.contains("source") && line.contains("may not run DUMP"),
        "{line}"
    );
    assert!(line.contains("grant `+dump`"), "{line}");

    let dir = tempfile::tempdir().unwrap();
    let out = run_ferry(&[
        "migrate",
        "--source",
        &src,
        "--target",
        &tgt,
        "--capture",
        "primary",
        "--state-dir",
        &dir.path().join("state").display().to_string(),
    ]);
    let shown = format!("redis://ferry:***@127.0.0.1:{}", source.port());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or_default().to_string();
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        last.starts_with(&format!(
            "ferry: error: missing permissions on the source {shown}: the user may not run DUMP"
        )),
        "{stderr}"
    );
    assert!(!stderr.contains(PASSWORD), "{stderr}");
    let keys: u64 = redis::cmd("DBSIZE").query(&mut target.conn()).unwrap();
    assert_eq!(keys, 0, "something was copied");

    // The target side too: RESTORE denied.
    let tgt = ferry_user(&target, &format!("{TARGET_ACL} -restore"));
    let out = run_ferry(&[
        "preflight",
        "--source",
        &ferry_user(&source, SOURCE_ACL),
        "--target",
        &tgt,
    ]);
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{report}");
    assert!(report.contains("may not run RESTORE"), "{report}");
    let out = run_ferry(&[
        "migrate",
        "--source",
        &src,
        "--target",
        &tgt,
        "--capture",
        "primary",
    ]);
    assert_one_line_error(&out, "may not run RESTORE", Some(PASSWORD));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing permissions on the target"));
}

/// docs/security.md gives the very rules the live test migrates with.
#[test]
fn security_doc_gives_the_tested_rules() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("docs/security.md")).unwrap();
    for rules in [SOURCE_ACL, TARGET_ACL] {
        let rest = rules.strip_prefix("on ").unwrap();
        let line = format!("ACL SETUSER ferry on >PASSWORD {rest}");
        assert!(doc.contains(&line), "docs/security.md lacks:\n{line}");
    }
}
