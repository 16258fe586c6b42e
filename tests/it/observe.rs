//! A run seen from outside: during a live `ferry migrate` under writes, `/metrics` serves every
//! documented series and `ferry status` answers; after it, `report.json` agrees with the oracle
//! and `report.html` renders in headless Chromium with its charts drawn and the JSON's figures.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::cli::run_ferry;
use crate::migrate::start_migrate;
use crate::support::server::free_port;
use crate::support::{Dataset, OracleOptions, RedisServer, compare, fill};

/// `GET /metrics` over plain HTTP/1.0; the body.
pub(crate) fn scrape(addr: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).expect("metrics listener");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(
        head.starts_with("HTTP/1.") && head.contains(" 200"),
        "{head}"
    );
    body.to_string()
}

/// The exposition's samples: `name{labels}` → value.
pub(crate) fn parse(body: &str) -> BTreeMap<String, f64> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// The value of the series named `name` (without labels).
fn value(samples: &BTreeMap<String, f64>, name: &str) -> f64 {
    *samples
        .get(name)
        .unwrap_or_else(|| panic!("no {name} in {samples:?}"))
}

/// `name` appears with or without labels.
fn has(samples: &BTreeMap<String, f64>, name: &str) -> bool {
    samples
        .keys()
        .any(|k| k == name || k.starts_with(&format!("{name}{{")))
}

fn status_json(state: &Path) -> serde_json::Value {
    let out = run_ferry(&["status", "--json", "--state-dir", state.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    serde_json::from_slice(&out.stdout).expect("ferry status --json prints JSON")
}

/// `data-field="…"` cells of a rendered page: field → text.
fn fields(dom: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for part in dom.split("data-field=\"").skip(1) {
        let Some((field, rest)) = part.split_once('"') else {
            continue;
        };
        let Some(text) = rest.split_once('>').and_then(|(_, t)| t.split_once('<')) else {
            continue;
        };
        out.insert(field.to_string(), text.0.to_string());
    }
    out
}

fn chromium() -> &'static str {
    for bin in ["chromium", "chromium-browser"] {
        if Command::new(bin).arg("--version").output().is_ok() {
            return bin;
        }
    }
    panic!("the HTML report test needs Debian's chromium package: run `make deps`");
}

/// Headless Chromium's DOM of `page` after it rendered it, and a screenshot beside it.
fn render(page: &Path, shot: &Path) -> String {
    let url = format!("file://{}", page.display());
    let base = [
        "--headless",
        "--disable-gpu",
        "--no-sandbox",
        "--hide-scrollbars",
    ];
    let dom = Command::new(chromium())
        .args(base)
        .args(["--dump-dom", &url])
        .output()
        .unwrap();
    assert!(dom.status.success(), "chromium --dump-dom: {dom:?}");
    let out = Command::new(chromium())
        .args(base)
        .arg(format!("--screenshot={}", shot.display()))
        .args(["--window-size=900,2300", &url])
        .output()
        .unwrap();
    assert!(out.status.success(), "chromium --screenshot: {out:?}");
    String::from_utf8(dom.stdout).unwrap()
}

/// Writes without expiries (so the key count at the report and at the oracle agree) until
/// stopped: strings, hashes, lists, sets, deletes and transactions over a few hundred keys.
struct Writer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

impl Writer {
    fn start(url: &str) -> Writer {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut con = redis::Client::open(url).unwrap().get_connection().unwrap();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut i: u64 = 0;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                let mut p = redis::pipe();
                p.cmd("SET").arg(format!("w:{}", i % 500)).arg(i).ignore();
                p.cmd("HINCRBY")
                    .arg(format!("wh:{}", i % 50))
                    .arg(format!("f{}", i % 10))
                    .arg(1)
                    .ignore();
                p.cmd("LPUSH").arg(format!("wl:{}", i % 20)).arg(i).ignore();
                p.cmd("LTRIM")
                    .arg(format!("wl:{}", i % 20))
                    .arg(0)
                    .arg(99)
                    .ignore();
                p.cmd("SADD")
                    .arg(format!("ws:{}", i % 30))
                    .arg(i % 300)
                    .ignore();
                if i.is_multiple_of(7) {
                    p.cmd("DEL").arg(format!("w:{}", (i * 7) % 500)).ignore();
                }
                p.atomic();
                let _: () = p.query(&mut con).unwrap();
                std::thread::sleep(Duration::from_millis(2));
            }
            i
        });
        Writer { stop, thread }
    }

    fn stop(self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

#[test]
fn a_live_migration_serves_metrics_answers_status_and_reports_in_json_and_html() {
    let source = RedisServer::start();
    let target = RedisServer::start();
    fill(
        &source,
        &Dataset {
            dbs: vec![0, 1],
            keys_per_db: 4000,
            ..Dataset::default()
        },
    );
    let load = Writer::start(&source.url());
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let addr = format!("127.0.0.1:{}", free_port());
    let mut ferry = start_migrate(
        &source.url(),
        &target.url(),
        dir.path(),
        &["--capture", "primary", "--verify", "--metrics-addr", &addr],
    );
    ferry.wait_log("Snapshot reads done", Duration::from_secs(60));
    // Past the plan's phases (snapshot, catch-up, a fenced verification of every key): replay.
    let deadline = Instant::now() + Duration::from_secs(120);
    while status_json(&state)["sample"]["phase"] != "replay" {
        assert!(
            Instant::now() < deadline,
            "never reached replay:\n{}",
            ferry.stderr()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // /metrics: every documented series, and counters that rise while writes go on.
    let first = parse(&scrape(&addr));
    std::thread::sleep(Duration::from_millis(2500));
    let second = parse(&scrape(&addr));
    let status = status_json(&state);
    let sample = &status["sample"];
    let codes = |field: &str| sample[field].as_object().map_or(0, |e| e.len());
    for (name, _) in ferry::observe::SERIES {
        // Error series have one sample per code: none before the first error reply of a kind.
        let by_code = match *name {
            "ferry_errors_total" => codes("errors"),
            "ferry_target_errors_total" => codes("target_errors"),
            _ => 1,
        };
        if by_code == 0 {
            continue;
        }
        assert!(
            has(&second, name),
            "{name} missing from /metrics: {second:?}"
        );
    }
    for counter in [
        "ferry_applied_commands_total",
        "ferry_journal_entries_total",
    ] {
        assert!(
            value(&second, counter) > value(&first, counter),
            "{counter} did not rise: {} then {}",
            value(&first, counter),
            value(&second, counter)
        );
    }
    assert!(value(&second, "ferry_snapshot_keys_read_total") >= 8000.0);
    assert!(value(&second, "ferry_snapshot_bytes_total") > 0.0);
    assert_eq!(
        second.get("ferry_phase{phase=\"replay\"}"),
        Some(&1.0),
        "{second:?}"
    );

    // ferry status, during the run.
    assert_eq!(status["state"], "running", "{status}");
    assert_eq!(status["alive"], true, "{status}");
    assert_eq!(sample["phase"], "replay", "{status}");
    assert!(sample["applied_commands"].as_u64().unwrap() > 0, "{status}");
    assert!(
        sample["journal_entries"].as_u64().unwrap() >= sample["pending"].as_u64().unwrap(),
        "{status}"
    );
    assert!(
        sample["snapshot_keys_read"].as_u64().unwrap() >= 8000,
        "{status}"
    );
    let text = run_ferry(&["status", "--state-dir", state.to_str().unwrap()]);
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(
        text.contains("Phase: replay") && text.contains("is running"),
        "{text}"
    );

    std::thread::sleep(Duration::from_secs(2));
    let writes = load.stop();
    let code = ferry.terminate(Duration::from_secs(60));
    let stderr = ferry.stderr();
    assert_eq!(code, Some(0), "ferry migrate failed:\n{stderr}");
    let oracle = compare(
        &source.url(),
        &target.url(),
        &OracleOptions {
            ttl_tolerance_ms: 1000,
            ..OracleOptions::default()
        },
    );
    eprintln!("{writes} transactions of writes\n{oracle}");
    assert!(writes > 500, "too few writes: {writes}");
    oracle.assert_identical();

    // After the run: the status says so, the process is gone.
    let after = status_json(&state);
    assert_eq!(after["state"], "finished", "{after}");
    assert_eq!(after["alive"], false, "{after}");
    assert_eq!(after["sample"]["last_fence"]["name"], "final", "{after}");

    // report.json: counts that match the oracle and the run.
    let json = std::fs::read_to_string(state.join("report.json")).unwrap();
    assert!(!json.contains("redis://"), "no URL in the report");
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(report["outcome"], "finished");
    assert_eq!(
        report["counts"]["target_keys"].as_u64(),
        Some(oracle.target_keys as u64),
        "{report}"
    );
    assert_eq!(oracle.source_keys, oracle.target_keys);
    assert!(report["counts"]["snapshot_keys"].as_u64().unwrap() >= 8000);
    assert!(report["counts"]["commands"].as_u64().unwrap() > 0);
    assert!(
        report["source_server"]
            .as_str()
            .unwrap()
            .starts_with("Redis ")
    );
    assert!(
        report["verification"]["keys_checked"].as_u64().unwrap() >= 8000,
        "{report}"
    );
    assert_eq!(report["verification"]["differences"], 0, "{report}");
    let fences = report["pause"]["fences"].as_array().unwrap();
    assert_eq!(fences.last().unwrap()["name"], "final", "{report}");
    let series = report["series"].as_array().unwrap();
    assert!(series.len() >= 4, "{} points", series.len());
    assert!(
        series
            .iter()
            .any(|p| p["commands_per_sec"].as_f64().unwrap() > 0.0),
        "throughput recorded"
    );

    // report.html in headless Chromium: it renders, the charts are drawn, the figures match.
    let shot = dir.path().join("report.png");
    let started = Instant::now();
    let dom = render(&state.join("report.html"), &shot);
    eprintln!("chromium: {:.1?}", started.elapsed());
    let shown = fields(&dom);
    for (field, expected) in [
        ("plan", report["plan"].to_string()),
        ("outcome", report["outcome"].to_string()),
        ("source_server", report["source_server"].to_string()),
        (
            "counts.snapshot_keys",
            report["counts"]["snapshot_keys"].to_string(),
        ),
        ("counts.commands", report["counts"]["commands"].to_string()),
        ("counts.restores", report["counts"]["restores"].to_string()),
        (
            "counts.target_keys",
            report["counts"]["target_keys"].to_string(),
        ),
        ("pause.pause_ms", report["pause"]["pause_ms"].to_string()),
        ("series.length", series.len().to_string()),
        (
            "verification.keys_checked",
            report["verification"]["keys_checked"].to_string(),
        ),
        (
            "verification.differences",
            report["verification"]["differences"].to_string(),
        ),
    ] {
        let expected = expected.trim_matches('"');
        assert_eq!(
            shown.get(field).map(String::as_str),
            Some(expected),
            "{field} in report.html"
        );
    }
    for chart in ["lag", "throughput", "snapshot"] {
        let tag = format!("<svg id=\"chart-{chart}\"");
        let svg = dom
            .split(&tag)
            .nth(1)
            .unwrap_or_else(|| panic!("chart {chart} not in the page"));
        let svg = svg.split("</svg>").next().unwrap();
        assert!(svg.contains("<polyline points=\""), "{chart}: no line");
        let line = svg.split("<polyline points=\"").nth(1).unwrap();
        let vertices = line.split('"').next().unwrap().split_whitespace().count();
        assert_eq!(
            vertices,
            series.len().min(400),
            "{chart}: a vertex per point"
        );
        assert_eq!(
            svg.matches("<circle class=\"pt\"").count(),
            series.len().min(400),
            "{chart}: one point per second"
        );
        assert!(
            svg.contains("class=\"pause\""),
            "{chart}: the pause is marked"
        );
    }
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "a screenshot"
    );
    // `make report-screenshot` refreshes the README's picture from this run.
    if let Ok(to) = std::env::var("FERRY_REPORT_SCREENSHOT") {
        std::fs::copy(&shot, to).unwrap();
    }
}

/// docs/metrics.md documents every series ferry publishes, with its type.
#[test]
fn every_series_is_documented() {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/metrics.md")).unwrap();
    for (name, _) in ferry::observe::SERIES
        .iter()
        .chain(ferry::observe::REPLAY_SERIES)
    {
        let row = doc
            .lines()
            .find(|l| l.starts_with(&format!("| `{name}` |")))
            .unwrap_or_else(|| panic!("{name} has no row in docs/metrics.md"));
        let kind = if name.ends_with("_total") {
            "counter"
        } else {
            "gauge"
        };
        assert!(
            row.contains(&format!("| {kind} |")),
            "{name} is a {kind}: {row}"
        );
    }
    let rows = doc.lines().filter(|l| l.starts_with("| `ferry_")).count();
    assert_eq!(
        rows,
        ferry::observe::SERIES.len() + ferry::observe::REPLAY_SERIES.len(),
        "a documented series ferry does not publish"
    );
}

#[test]
fn status_without_a_run_says_so_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_ferry(&["status", "--state-dir", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("no status file"), "{err}");
}

#[test]
fn a_metrics_address_in_use_is_refused_with_exit_2() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let source = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let out = run_ferry(&[
        "migrate",
        "--source",
        &source.url(),
        "--target",
        &source.url(),
        "--state-dir",
        dir.path().to_str().unwrap(),
        "--metrics-addr",
        &addr,
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains(&format!("cannot serve metrics on {addr}")),
        "{err}"
    );
}

/// `ferry …` under a pseudo-terminal (`script`): what a user at a terminal sees on stderr.
fn on_a_terminal(args: &[&str]) -> String {
    let ferry = env!("CARGO_BIN_EXE_ferry");
    let line = std::iter::once(ferry)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ");
    let out = Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .output()
        .expect("script (util-linux)");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn backup_and_verify_show_a_bar_on_a_terminal_and_none_on_a_pipe() {
    let source = RedisServer::start();
    fill(&source, &Dataset::tiny());
    let dir = tempfile::tempdir().unwrap();
    let rdb = dir.path().join("b.rdb");
    let rdb = rdb.to_str().unwrap();
    let src = source.url();
    let backup = ["backup", "--source", &src, "--out", rdb];
    let verify = ["verify", "--source", &src, "--target", &src];
    for args in [&backup[..], &verify[..]] {
        let seen = on_a_terminal(args);
        assert!(
            seen.contains(" keys") && seen.contains("ETA") && seen.contains('░'),
            "{} shows no bar on a terminal: {seen}",
            args[0]
        );
        let piped = run_ferry(args);
        assert_eq!(piped.status.code(), Some(0), "{piped:?}");
        let err = String::from_utf8_lossy(&piped.stderr);
        assert!(!err.contains("ETA") && !err.contains('░'), "{err}");
    }
}
