//! The `ferry` binary as a user runs it: `ferry monitor` output, and one-line errors with exit
//! code 2 for bad URLs, unreachable servers and wrong passwords.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::support::server::free_port;
use crate::support::{RedisServer, ServerOptions};

pub fn ferry() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ferry"))
}

/// A child process killed on drop, so a failing test leaves nothing running.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs ferry to completion with a time limit.
pub fn run_ferry(args: &[&str]) -> Output {
    let child = ferry()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    rx.recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("ferry {args:?} (pid {pid}) did not finish in 30 s"))
        .unwrap()
}

fn assert_one_line_error(out: &Output, contains: &str, secret: Option<&str>) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let lines: Vec<_> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {stderr}");
    assert!(lines[0].starts_with("ferry: error: "), "{stderr}");
    assert!(
        lines[0].contains(contains),
        "expected {contains:?} in: {stderr}"
    );
    if let Some(secret) = secret {
        assert!(!stderr.contains(secret), "password leaked: {stderr}");
    }
}

#[test]
fn bad_url_is_a_one_line_error() {
    let out = run_ferry(&["monitor", "--source", "http://user:hunter2@example"]);
    assert_one_line_error(
        &out,
        "invalid Redis URL 'http://user:***@example'",
        Some("hunter2"),
    );
    let out = run_ferry(&["monitor", "--source", "redis://:hunter2@127.0.0.1:notaport"]);
    assert_one_line_error(&out, "invalid Redis URL", Some("hunter2"));

    // Malformed URLs that used to be echoed in clear, and odd but valid ones that fail later
    // (nothing listens on port 1; `h.invalid` never resolves). `ter2` also catches a password
    // that was cut at an `@`, `/`, `?` or `#` and shown in part.
    for (url, contains) in [
        ("redis//:hunter2@127.0.0.1:7400", "invalid Redis URL"),
        ("redis:/:hunter2@x", "invalid Redis URL"),
        ("hunter2@127.0.0.1:7400", "invalid Redis URL"),
        (":hunter2@127.0.0.1:7400", "invalid Redis URL"),
        ("rediss:hunter2@h", "invalid Redis URL"),
        ("redis://:hunter2@[::1", "invalid Redis URL"),
        ("redis://:hun/ter2@127.0.0.1:1", "invalid Redis URL"),
        ("redis://:hun?ter2@127.0.0.1:1", "invalid Redis URL"),
        (
            "redis+unix:///nonexistent/s?db=x&pass=hunter2",
            "invalid Redis URL",
        ),
        ("redis://user:hun@ter2@h.invalid", "cannot connect to"),
        ("redis://:hunter2@[::1]:1", "cannot connect to"),
        ("redis://:hunter2@127.0.0.1:1", "cannot connect to"),
    ] {
        let out = run_ferry(&["monitor", "--source", url]);
        assert_one_line_error(&out, contains, Some("ter2"));
        let out = ferry()
            .args(["monitor"])
            .env("FERRY_SOURCE", url)
            .output()
            .unwrap();
        assert_one_line_error(&out, contains, Some("ter2"));
    }
}

/// clap's own errors quote what was typed; a URL in the wrong place must not come back in clear.
#[test]
fn usage_errors_do_not_echo_passwords() {
    for args in [
        &["monitor", "redis://:hunter2@127.0.0.1:7400"][..],
        &[
            "monitor",
            "--source",
            "redis://h",
            "--count",
            "redis://:hunter2@h",
        ],
        &["monitor", "--source", "redis://h", "--count=u:hunter2@h"],
        &["run", "--set", "redis://:hunter2@h", "plan.lua"],
    ] {
        let out = run_ferry(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.starts_with("error: "), "{args:?}: {stderr}");
        assert!(stderr.contains("***@"), "{args:?}: {stderr}");
        assert!(!stderr.contains("hunter2"), "password leaked: {stderr}");
    }
}

#[test]
fn unreachable_server_is_a_one_line_error() {
    let port = free_port();
    let url = format!("redis://:hunter2@127.0.0.1:{port}");
    let out = run_ferry(&["monitor", "--source", &url]);
    assert_one_line_error(
        &out,
        "cannot connect to redis://:***@127.0.0.1",
        Some("hunter2"),
    );
}

#[test]
fn wrong_password_is_a_one_line_error() {
    let server = RedisServer::start_with(ServerOptions::with_password("right-pw"));
    let url = format!("redis://:hunter2@127.0.0.1:{}", server.port());
    let out = run_ferry(&["monitor", "--source", &url]);
    assert_one_line_error(&out, "authentication failed", Some("hunter2"));
    let url = format!("redis://127.0.0.1:{}", server.port());
    let out = run_ferry(&["monitor", "--source", &url]);
    assert_one_line_error(&out, "authentication failed", None);
}

#[test]
fn monitor_shows_writes_and_not_reads_on_an_elasticache_like_source() {
    let server = RedisServer::elasticache_like();
    let mut child = Running(
        ferry()
            .args(["monitor", "--source", &server.url()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let (tx, rx) = mpsc::channel();
    let stdout = child.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let mut con = server.conn();
    // Writes before ferry's MONITOR starts are not shown; repeat a marker until one is.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(Instant::now() < deadline, "ferry monitor showed nothing");
        let _: () = redis::cmd("SET")
            .arg("ready")
            .arg("1")
            .query(&mut con)
            .unwrap();
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            assert!(line.contains("\"SET\" \"ready\""), "{line}");
            break;
        }
    }
    while rx.recv_timeout(Duration::from_millis(300)).is_ok() {}

    let _: () = redis::cmd("SET")
        .arg(b"bin\x00key\xff")
        .arg("v")
        .query(&mut con)
        .unwrap();
    let _: Option<String> = redis::cmd("GET").arg("ready").query(&mut con).unwrap();
    let _: i64 = redis::cmd("HSET")
        .arg("h")
        .arg("f")
        .arg("1")
        .query(&mut con)
        .unwrap();
    let _: Vec<String> = redis::cmd("HGETALL").arg("h").query(&mut con).unwrap();
    let _: () = redis::cmd("EVAL")
        .arg("redis.call('INCR', KEYS[1]) return redis.call('GET', KEYS[1])")
        .arg(1)
        .arg("ctr")
        .query(&mut con)
        .unwrap();
    let _: () = redis::pipe()
        .atomic()
        .cmd("LPUSH")
        .arg("q")
        .arg("job")
        .ignore()
        .cmd("LLEN")
        .arg("q")
        .ignore()
        .query(&mut con)
        .unwrap();
    let mut db2 = server.conn_db(2);
    let _: () = redis::cmd("SET")
        .arg("in-db2")
        .arg("x")
        .query(&mut db2)
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg("done")
        .arg("1")
        .query(&mut con)
        .unwrap();

    let mut lines = Vec::new();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(10)) {
        let done = line.contains("\"SET\" \"done\"");
        lines.push(line);
        if done {
            break;
        }
    }
    let text = lines.join("\n");
    let has = |s: &str| lines.iter().any(|l| l.contains(s));
    assert!(
        has(r#"Write keys="bin\x00key\xff" | "SET" "bin\x00key\xff" "v""#),
        "{text}"
    );
    assert!(has(r#"Write keys="h" | "HSET" "h" "f" "1""#), "{text}");
    assert!(has(r#"Script keys="ctr" | "EVAL""#), "{text}");
    assert!(has(r#" lua Write keys="ctr" | "INCR" "ctr""#), "{text}");
    assert!(
        has(r#"Transaction | "MULTI""#) && has(r#"Transaction | "EXEC""#),
        "{text}"
    );
    assert!(has(r#"Write keys="q" | "LPUSH" "q" "job""#), "{text}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains(" db2 ") && l.contains(r#""SET" "in-db2""#)),
        "{text}"
    );
    for read in [
        "\"GET\"",
        "\"HGETALL\"",
        "\"LLEN\"",
        "\"SELECT\"",
        "\"CLIENT\"",
    ] {
        assert!(!has(read), "a read ({read}) was shown:\n{text}");
    }
}
