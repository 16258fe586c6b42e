//! `ferry migrate` end to end: a live mixed workload runs through the whole migration, ferry is
//! stopped at a final fence, and the oracle finds 0 differences.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::cli::ferry;
use crate::support::workload::{self, WorkloadOptions};
use crate::support::{Dataset, OracleOptions, RedisServer, compare, fill};

/// A ferry process, killed on drop so a failing test leaves nothing running.
pub struct FerryProcess {
    pub child: Child,
    pub stderr_path: std::path::PathBuf,
}

impl Drop for FerryProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl FerryProcess {
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for the exit code.
    pub fn terminate(&mut self, timeout: Duration) -> Option<i32> {
        let pid = self.child.id().to_string();
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

pub fn start_migrate(
    source: &str,
    target: &str,
    state: &std::path::Path,
    extra: &[&str],
) -> FerryProcess {
    let stderr_path = state.join("ferry.stderr");
    let stderr = std::fs::File::create(&stderr_path).unwrap();
    let child = ferry()
        .args([
            "migrate",
            "--source",
            source,
            "--target",
            target,
            "--state-dir",
        ])
        .arg(state.join("state"))
        .args(extra)
        .env("FERRY_LOG", "ferry=info")
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();
    FerryProcess { child, stderr_path }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<_> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn dataset() -> Dataset {
    Dataset {
        dbs: vec![0, 1, 2],
        keys_per_db: 3000,
        big_list: 50_000,
        big_hash: 20_000,
        big_set: 5000,
        big_zset: 5000,
        stream_entries: 2000,
        ..Dataset::default()
    }
}

/// Runs the workload for `secs` while ferry migrates, stops the workload, stops ferry at its
/// final fence, and compares.
fn migrate_under_load(source: &RedisServer, target: &RedisServer, secs: u64, extra: &[&str]) {
    fill(source, &dataset());
    let state = tempfile::tempdir().unwrap();
    let load = workload::start(&source.url(), WorkloadOptions::default());
    std::thread::sleep(Duration::from_millis(500));
    let mut ferry = start_migrate(&source.url(), &target.url(), state.path(), extra);
    std::thread::sleep(Duration::from_secs(secs));
    let report = load.stop();
    assert!(report.total() > secs * 1000, "workload too small: {report}");
    let code = ferry.terminate(Duration::from_secs(60));
    let stderr = ferry.stderr();
    assert_eq!(code, Some(0), "ferry migrate failed:\n{stderr}");
    assert!(stderr.contains("final fence"), "{stderr}");
    let opts = OracleOptions {
        ttl_tolerance_ms: 1000,
        ..OracleOptions::default()
    };
    let oracle = compare(&source.url(), &target.url(), &opts);
    eprintln!(
        "{report}\n{oracle}\n--- ferry stderr (tail) ---\n{}",
        tail(&stderr, 15)
    );
    assert!(oracle.keys_compared > 9000, "{oracle}");
    oracle.assert_identical();
}

#[test]
fn flagship_live_migration_from_an_elasticache_like_source_is_exact() {
    let source = RedisServer::elasticache_like();
    let target = RedisServer::start();
    let secs = std::env::var("FERRY_FLAGSHIP_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    migrate_under_load(&source, &target, secs, &["--capture", "primary"]);
}
