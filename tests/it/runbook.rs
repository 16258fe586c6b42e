//! docs/runbook.md cannot rot: its shell blocks run here, in order, against local servers with an
//! application writing through the whole run, and the outcome is checked key by key.
//!
//! Each ```` ```sh ```` block of the runbook is either `norun` (it needs the operator's own
//! infrastructure; its `ferry` flags are still checked against `ferry CMD --help`) or a
//! `step=NAME` run by bash with `set -euo pipefail`. `mode=bg` starts a step and goes on,
//! `mode=during` retries a step until it succeeds while the background step runs, and
//! `mode=wait` waits for the background step to exit 0.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::cli::ferry;
use crate::cutover::{app, missing_writes};
use crate::support::server::free_port;
use crate::support::{Dataset, OracleOptions, RedisServer, compare, fill};

/// One ```` ```sh ```` block of the runbook.
#[derive(Debug)]
struct Block {
    line: usize,
    step: Option<String>,
    mode: Mode,
    script: String,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Fg,
    Bg,
    During,
    Wait,
}

fn runbook() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/runbook.md")).unwrap()
}

/// The shell blocks, with their tags; panics on an untagged block, so every command on the
/// page is either run or explicitly exempted.
fn blocks(doc: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut lines = doc.lines().enumerate();
    while let Some((n, line)) = lines.next() {
        let Some(info) = line.trim_start().strip_prefix("```sh") else {
            continue;
        };
        let mut script = String::new();
        for (_, body) in lines.by_ref() {
            if body.trim_start().starts_with("```") {
                break;
            }
            script.push_str(body);
            script.push('\n');
        }
        let tags: Vec<&str> = info.split_whitespace().collect();
        let step = tags
            .iter()
            .find_map(|t| t.strip_prefix("step="))
            .map(str::to_owned);
        assert!(
            step.is_some() || tags.contains(&"norun"),
            "docs/runbook.md:{}: a sh block needs `step=NAME` or `norun`",
            n + 1
        );
        let mode = match tags.iter().find_map(|t| t.strip_prefix("mode=")) {
            None => Mode::Fg,
            Some("bg") => Mode::Bg,
            Some("during") => Mode::During,
            Some("wait") => Mode::Wait,
            Some(other) => panic!("docs/runbook.md:{}: unknown mode {other}", n + 1),
        };
        out.push(Block {
            line: n + 1,
            step,
            mode,
            script,
        });
    }
    out
}

/// `ferry SUB … --flag` in a script: (SUB, flags), one per ferry command line (continuations
/// joined).
fn ferry_invocations(script: &str) -> Vec<(String, Vec<String>)> {
    let joined = script.replace("\\\n", " ");
    let mut out = Vec::new();
    for line in joined.lines() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some(at) = words.iter().position(|w| *w == "ferry") else {
            continue;
        };
        let Some(sub) = words.get(at + 1).filter(|s| !s.starts_with('-')) else {
            continue;
        };
        let flags = words[at + 2..]
            .iter()
            .filter(|w| w.starts_with("--"))
            .map(|w| w.split('=').next().unwrap().to_owned())
            .collect();
        out.push((sub.to_string(), flags));
    }
    out
}

#[test]
fn every_ferry_command_of_the_runbook_exists_with_its_flags() {
    let doc = runbook();
    let blocks = blocks(&doc);
    assert!(blocks.iter().filter(|b| b.step.is_some()).count() >= 8);
    let mut checked = 0;
    for block in &blocks {
        for (sub, flags) in ferry_invocations(&block.script) {
            let help = ferry().args([sub.as_str(), "--help"]).output().unwrap();
            assert!(
                help.status.success(),
                "docs/runbook.md:{}: `ferry {sub}` is not a command",
                block.line
            );
            let help = String::from_utf8_lossy(&help.stdout);
            for flag in flags {
                assert!(
                    help.contains(&flag),
                    "docs/runbook.md:{}: `ferry {sub}` has no flag {flag}",
                    block.line
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 10, "only {checked} flags checked");
}

/// Kills a daemonized redis-server of the rehearsal by its pid file.
struct PidFile(PathBuf);

impl Drop for PidFile {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(&self.0) {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
    }
}

/// The background step, killed on drop.
struct Background(Child);

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_runbook_runs_in_order() {
    let doc = runbook();
    let blocks = blocks(&doc);
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();

    // The production pair: a source with data and keyspace events for evictions (preflight's
    // advice), an empty target; an application writing to the source until the switch.
    let source = RedisServer::start();
    redis::cmd("CONFIG")
        .arg(&["SET", "notify-keyspace-events", "Ee"])
        .query::<()>(&mut source.conn())
        .unwrap();
    fill(
        &source,
        &Dataset {
            dbs: vec![0, 1],
            keys_per_db: 2000,
            ..Dataset::tiny()
        },
    );
    let target = RedisServer::start();
    let flag = work.join("switched");
    let switch = work.join("switch.sh");
    std::fs::write(&switch, format!("#!/bin/sh\ntouch '{}'\n", flag.display())).unwrap();
    std::fs::set_permissions(&switch, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = app(source.url(), target.url(), flag.clone(), stop.clone());

    let rehearsal = work.join("rehearsal");
    std::fs::create_dir_all(&rehearsal).unwrap();
    let _rehearsal_servers = [
        PidFile(rehearsal.join("source.pid")),
        PidFile(rehearsal.join("target.pid")),
    ];
    let bin = Path::new(env!("CARGO_BIN_EXE_ferry")).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let redis_bin = std::env::var("FERRY_REDIS_SERVER").ok();
    let path = match redis_bin.as_deref().and_then(|b| Path::new(b).parent()) {
        Some(dir) => format!("{}:{path}", dir.display()),
        None => path,
    };
    let env: Vec<(&str, String)> = vec![
        ("PATH", path),
        ("SOURCE_URL", source.url()),
        ("TARGET_URL", target.url()),
        ("FERRY_STATE", work.join("state").display().to_string()),
        ("SWITCH_COMMAND", switch.display().to_string()),
        // A loaded test machine needs a looser lag gate than production.
        ("MAX_LAG_MS", "1000".into()),
        ("MAX_PAUSE_MS", "3000".into()),
        ("METRICS_PORT", free_port().to_string()),
        ("REHEARSAL_DIR", rehearsal.display().to_string()),
        ("REHEARSAL_SOURCE_PORT", free_port().to_string()),
        ("REHEARSAL_TARGET_PORT", free_port().to_string()),
        ("FERRY_LOG", "ferry=info".into()),
    ];
    let bash = |script: &str, log: &Path| {
        let mut cmd = Command::new("bash");
        cmd.arg("-c")
            .arg(format!("set -euo pipefail\n{script}"))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(log.with_extension("out")).unwrap())
            .stderr(std::fs::File::create(log.with_extension("err")).unwrap());
        cmd
    };
    let output = |log: &Path| {
        format!(
            "stdout:\n{}\nstderr:\n{}",
            std::fs::read_to_string(log.with_extension("out")).unwrap_or_default(),
            std::fs::read_to_string(log.with_extension("err")).unwrap_or_default()
        )
    };

    let mut background: Option<(Background, PathBuf)> = None;
    let mut ran = Vec::new();
    for block in blocks.iter().filter(|b| b.step.is_some()) {
        let step = block.step.as_deref().unwrap();
        let log = work.join(format!("step-{step}"));
        let started = Instant::now();
        match block.mode {
            Mode::Fg => {
                let status = bash(&block.script, &log).status().unwrap();
                assert!(
                    status.success(),
                    "runbook step {step} (docs/runbook.md:{}) failed: {status}\n{}",
                    block.line,
                    output(&log)
                );
            }
            Mode::Bg => {
                let child = bash(&block.script, &log).spawn().unwrap();
                background = Some((Background(child), log.clone()));
            }
            Mode::During => {
                let (bg, bg_log) = background.as_mut().expect("a during step needs a bg step");
                loop {
                    if bash(&block.script, &log).status().unwrap().success() {
                        break;
                    }
                    if let Some(code) = bg.0.try_wait().unwrap() {
                        panic!(
                            "runbook step {step} never succeeded while the run went on; the run exited {code}\n{}\nrun:\n{}",
                            output(&log),
                            output(bg_log)
                        );
                    }
                    assert!(
                        started.elapsed() < Duration::from_secs(60),
                        "runbook step {step} failed for 60 s\n{}",
                        output(&log)
                    );
                    std::thread::sleep(Duration::from_millis(300));
                }
            }
            Mode::Wait => {
                let (mut bg, bg_log) = background.take().expect("a wait step needs a bg step");
                let deadline = Instant::now() + Duration::from_secs(180);
                let status = loop {
                    if let Some(status) = bg.0.try_wait().unwrap() {
                        break status;
                    }
                    assert!(
                        Instant::now() < deadline,
                        "the run did not end in 180 s\n{}",
                        output(&bg_log)
                    );
                    std::thread::sleep(Duration::from_millis(200));
                };
                assert!(
                    status.success(),
                    "the run exited {status}\n{}",
                    output(&bg_log)
                );
            }
        }
        eprintln!(
            "runbook step {step}: {:.1} s",
            started.elapsed().as_secs_f64()
        );
        ran.push(step.to_owned());
    }
    for expected in [
        "preflight",
        "check",
        "backup",
        "rehearsal",
        "run",
        "status",
        "metrics",
        "run-done",
        "outcome",
    ] {
        assert!(
            ran.iter().any(|s| s == expected),
            "the runbook has no step {expected}: {ran:?}"
        );
    }

    // The application moved during the run: every write it got acknowledged is on the target,
    // and every other key is identical on both sides.
    assert!(flag.exists(), "the switch command did not run");
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let log = writer.join().unwrap();
    assert_eq!(log.failed, 0, "writes failed for good: {log:?}");
    assert!(log.on_source > 0 && log.on_target > 0, "{log:?}");
    let missing = missing_writes(&target, &log);
    assert!(
        missing.is_empty(),
        "acknowledged writes missing: {missing:?}"
    );
    let report = compare(&source.url(), &target.url(), &OracleOptions::default());
    let unexpected: Vec<_> = report
        .diffs
        .iter()
        .filter(|d| !d.key.starts_with(b"app:"))
        .collect();
    assert!(
        unexpected.is_empty(),
        "{report}\nfirst: {:?} ({} in all)",
        unexpected.first(),
        unexpected.len()
    );
    assert!(report.keys_compared >= 4000, "{report}");

    // The rehearsal loaded the backup: its target holds the source's data keys.
    let rehearsal_target = format!(
        "redis://127.0.0.1:{}",
        env.iter()
            .find(|(k, _)| *k == "REHEARSAL_TARGET_PORT")
            .unwrap()
            .1
    );
    let mut con = redis::Client::open(rehearsal_target.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let keys: usize = redis::cmd("DBSIZE").query(&mut con).unwrap();
    assert!(keys >= 2000, "the rehearsal target has {keys} keys in db 0");
}
