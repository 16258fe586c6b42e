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

pub(crate) fn assert_one_line_error(out: &Output, contains: &str, secret: Option<&str>) {
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
fn a_closed_stderr_keeps_the_exit_code_and_never_panics() {
    // stderr is a pipe whose reader has gone (`ferry … 2>&1 | head -0`): writing the error
    // message fails with EPIPE. The exit code must still say "error" (it was a panic, 101).
    let port = free_port();
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "\"$0\" snapshot --source redis://127.0.0.1:{port} --target redis://127.0.0.1:{port} \
             2>&1 >/dev/null | (exec 0<&-; sleep 0.2); echo \"${{PIPESTATUS[0]}}\""
        ))
        .arg(env!("CARGO_BIN_EXE_ferry"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "2", "{out:?}");
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

/// A running `ferry monitor`: its stdout lines arrive on `lines`, its stderr is collected
/// until it exits.
struct Monitor {
    child: Running,
    lines: mpsc::Receiver<String>,
    stderr: std::thread::JoinHandle<String>,
}

impl Monitor {
    fn start(url: &str) -> Monitor {
        let mut child = Running(
            ferry()
                .args(["monitor", "--source", url])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let (tx, lines) = mpsc::channel();
        let stdout = child.0.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                if tx.send(line.unwrap()).is_err() {
                    break;
                }
            }
        });
        let mut err = child.0.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut err, &mut text);
            text
        });
        Monitor {
            child,
            lines,
            stderr,
        }
    }

    /// Writes before ferry's MONITOR starts are not shown; repeats a marker until one is, then
    /// drains what is left of the marker writes.
    fn wait_until_shown(&self, con: &mut redis::Connection) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            assert!(Instant::now() < deadline, "ferry monitor showed nothing");
            let _: () = redis::cmd("SET").arg("ready").arg("1").query(con).unwrap();
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
                assert!(line.contains("\"SET\" \"ready\""), "{line}");
                break;
            }
        }
        while self.lines.recv_timeout(Duration::from_millis(300)).is_ok() {}
    }

    /// The lines shown up to and including the first that contains `last`.
    fn lines_until(&self, last: &str) -> Vec<String> {
        let mut lines = Vec::new();
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(10)) {
            let done = line.contains(last);
            lines.push(line);
            if done {
                break;
            }
        }
        lines
    }

    /// Stops ferry and returns everything it wrote to stderr.
    fn stop(mut self) -> String {
        let _ = self.child.0.kill();
        let _ = self.child.0.wait();
        self.stderr.join().unwrap()
    }
}

#[test]
fn monitor_shows_writes_and_not_reads_on_an_elasticache_like_source() {
    let server = RedisServer::elasticache_like();
    let monitor = Monitor::start(&server.url());
    let mut con = server.conn();
    monitor.wait_until_shown(&mut con);

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

    let lines = monitor.lines_until("\"SET\" \"done\"");
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

/// A source whose COMMAND is renamed away (as managed services may do): ferry says it fell back
/// to the built-in Redis 7.0 table and still finds the keys of a command whose second key comes
/// from a keyword (`SORT … STORE`).
#[test]
fn monitor_falls_back_to_the_builtin_table_without_command() {
    let server = RedisServer::start_with(ServerOptions {
        extra_config: vec!["rename-command COMMAND \"\"".into()],
        ..ServerOptions::default()
    });
    let mut con = server.conn();
    assert!(
        redis::cmd("COMMAND")
            .arg("COUNT")
            .query::<i64>(&mut con)
            .is_err(),
        "COMMAND should be renamed away"
    );
    let monitor = Monitor::start(&server.url());
    monitor.wait_until_shown(&mut con);

    let _: i64 = redis::cmd("RPUSH")
        .arg("a")
        .arg(&[3, 1, 2])
        .query(&mut con)
        .unwrap();
    let _: i64 = redis::cmd("SORT")
        .arg("a")
        .arg("STORE")
        .arg("b")
        .query(&mut con)
        .unwrap();
    let _: Vec<String> = redis::cmd("LRANGE")
        .arg("b")
        .arg(0)
        .arg(-1)
        .query(&mut con)
        .unwrap();
    let _: Option<String> = redis::cmd("GET").arg("a-get").query(&mut con).unwrap();
    let _: () = redis::cmd("SET")
        .arg("done")
        .arg("1")
        .query(&mut con)
        .unwrap();
    let lines = monitor.lines_until("\"SET\" \"done\"");
    let stderr = monitor.stop();

    let text = lines.join("\n");
    let has = |s: &str| lines.iter().any(|l| l.contains(s));
    assert!(has(r#"Write keys="a" | "RPUSH" "a" "3" "1" "2""#), "{text}");
    assert!(
        has(r#"Write keys="a","b" | "SORT" "a" "STORE" "b""#),
        "{text}"
    );
    assert!(has(r#"Write keys="done" | "SET" "done" "1""#), "{text}");
    for read in ["\"GET\"", "\"LRANGE\""] {
        assert!(!has(read), "a read ({read}) was shown:\n{text}");
    }
    assert!(
        stderr.contains("falling back to the built-in Redis 7.0 command table"),
        "{stderr}"
    );
    assert!(stderr.contains("refused COMMAND"), "{stderr}");
    assert!(
        !stderr.contains("Loaded the source's command table"),
        "{stderr}"
    );
}

/// The commands `ferry --help` lists, in order.
fn commands() -> Vec<&'static str> {
    let mut commands = vec![
        "run",
        "check",
        "migrate",
        "preflight",
        "monitor",
        "snapshot",
        "verify",
        "backup",
        "status",
    ];
    if cfg!(feature = "sqs") {
        commands.extend(["capture", "replay"]);
    }
    commands.extend(["completions", "help"]);
    commands
}

/// `ferry --help` reads like `git`'s or `rg`'s: one line per command, the whole screen at most;
/// the long text is under `ferry help CMD`.
#[test]
fn help_lists_one_line_per_command_and_fits_a_screen() {
    for flag in ["--help", "-h"] {
        let out = run_ferry(&[flag]);
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        let help = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<&str> = help.lines().collect();
        assert!(
            lines.len() <= 30,
            "ferry {flag} has {} lines, more than 30:\n{help}",
            lines.len()
        );
        let start = lines
            .iter()
            .position(|l| *l == "Commands:")
            .unwrap_or_else(|| panic!("no Commands: section in\n{help}"));
        let listed: Vec<&str> = lines[start + 1..]
            .iter()
            .take_while(|l| !l.is_empty())
            .copied()
            .collect();
        let mut names = Vec::new();
        for line in &listed {
            // `  name   about`: a line that starts deeper is a wrapped about, i.e. a second line.
            let rest = line
                .strip_prefix("  ")
                .filter(|r| !r.starts_with(' '))
                .unwrap_or_else(|| panic!("not a command line: {line:?} in\n{help}"));
            let (name, about) = rest
                .split_once("  ")
                .unwrap_or_else(|| panic!("a command without its one-line summary: {line:?}"));
            assert!(
                !about.trim().is_empty() && !about.trim().ends_with('.'),
                "summary of {name}: {about:?}"
            );
            names.push(name);
        }
        assert_eq!(names, commands(), "ferry {flag}:\n{help}");
    }
}

#[test]
fn help_cmd_shows_the_long_text() {
    let out = run_ferry(&["help", "migrate"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let help = String::from_utf8(out.stdout).unwrap();
    assert!(
        help.starts_with("Migrate a live source to a target until stopped"),
        "{help}"
    );
    for long in [
        "drains to a final fence",
        "--max-monitor-buffer",
        "--cutover",
    ] {
        assert!(
            help.contains(long),
            "{long:?} missing from ferry help migrate:\n{help}"
        );
    }
    let out = run_ferry(&["check", "--help"]);
    let help = String::from_utf8(out.stdout).unwrap();
    assert!(help.contains("Exit 0 when the plan is valid"), "{help}");
}

/// `ferry --version`: `ferry <crate version> (commit <short HEAD>, features: <enabled>)`; the
/// commit is `unknown` outside a git checkout.
#[test]
fn version_names_the_commit_and_the_features() {
    let out = run_ferry(&["--version"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let line = String::from_utf8(out.stdout).unwrap();
    let line = line.trim_end();
    let rest = line
        .strip_prefix(&format!("ferry {} (commit ", env!("CARGO_PKG_VERSION")))
        .unwrap_or_else(|| panic!("{line:?}"));
    let (commit, features) = rest
        .strip_suffix(')')
        .and_then(|r| r.split_once(", features: "))
        .unwrap_or_else(|| panic!("{line:?}"));
    let features: Vec<&str> = features.split(", ").collect();
    assert_eq!(features.contains(&"sqs"), cfg!(feature = "sqs"), "{line:?}");
    let dir = env!("CARGO_MANIFEST_DIR");
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(dir)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let in_checkout = git(&["rev-parse", "--show-toplevel"])
        .is_some_and(|top| std::fs::canonicalize(top).ok() == std::fs::canonicalize(dir).ok());
    if in_checkout && std::env::var_os("FERRY_COMMIT").is_none() {
        assert_eq!(
            Some(commit.to_string()),
            git(&["rev-parse", "--short", "HEAD"]),
            "{line:?}"
        );
    } else {
        assert!(
            commit == "unknown" || commit.bytes().all(|b| b.is_ascii_hexdigit()),
            "{line:?}"
        );
    }
}

#[test]
fn completions_for_bash_zsh_and_fish() {
    for (shell, marker) in [
        ("bash", "complete -F _ferry"),
        ("zsh", "#compdef ferry"),
        ("fish", "complete -c ferry"),
    ] {
        let out = run_ferry(&["completions", shell]);
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        let script = String::from_utf8(out.stdout).unwrap();
        assert!(script.contains(marker), "{shell}: {marker:?} missing");
        for word in ["migrate", "max-monitor-buffer", "completions"] {
            assert!(script.contains(word), "{shell}: {word:?} missing");
        }
    }
    let out = run_ferry(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

/// The hidden `ferry man DIR`: a page for ferry and one per command, from the clap definitions.
#[test]
fn man_writes_a_page_per_command() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("man1");
    let out = run_ferry(&["man", out_dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let mut pages: Vec<String> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    pages.sort();
    let mut expected: Vec<String> = commands()
        .iter()
        .filter(|c| **c != "help")
        .map(|c| format!("ferry-{c}.1"))
        .chain(["ferry.1".to_string()])
        .collect();
    expected.sort();
    assert_eq!(pages, expected);
    let printed = String::from_utf8(out.stdout).unwrap();
    assert_eq!(printed.lines().count(), expected.len(), "{printed}");

    // roff: `\-` is a hyphen.
    let root = std::fs::read_to_string(out_dir.join("ferry.1")).unwrap();
    assert!(root.contains(".TH ferry 1"), "{root}");
    assert!(root.contains("ferry\\-migrate(1)"), "{root}");
    assert!(root.contains("Exit status: 0 on success"), "{root}");
    assert!(
        !root.contains("ferry\\-man"),
        "the hidden command is listed:\n{root}"
    );
    let migrate = std::fs::read_to_string(out_dir.join("ferry-migrate.1")).unwrap();
    assert!(migrate.contains(".TH ferry-migrate 1"), "{migrate}");
    assert!(migrate.contains("max\\-monitor\\-buffer"), "{migrate}");
}

/// Whether `stderr` holds the warning every run with `#insecure` prints (once per endpoint).
fn warns_insecure(stderr: &str) -> bool {
    stderr.contains("WARN") && stderr.contains("#insecure: the server's certificate is NOT checked")
}

/// `rediss://…#insecure` reaches a server whose certificate no public CA signed (a private CA,
/// a self-signed test server), as README and docs/troubleshooting.md promise; without the
/// fragment, the certificate check refuses it with a one-line TLS error.
#[test]
fn insecure_tls_reaches_a_self_signed_server() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let made = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=localhost", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl (make deps installs it) makes the test server's certificate");
    assert!(made.status.success(), "{made:?}");
    let tls_port = free_port();
    let (cert, key) = (cert.display(), key.display());
    let _server = RedisServer::start_with(ServerOptions {
        extra_config: vec![
            format!("tls-port {tls_port}"),
            format!("tls-cert-file {cert}"),
            format!("tls-key-file {key}"),
            format!("tls-ca-cert-file {cert}"),
            "tls-auth-clients no".into(),
        ],
        ..ServerOptions::default()
    });
    let url = format!("rediss://:hunter2@127.0.0.1:{tls_port}");

    let out = run_ferry(&["verify", "--source", &url, "--target", &url]);
    assert_one_line_error(
        &out,
        &format!("TLS with rediss://:***@127.0.0.1:{tls_port} failed: invalid server certificate"),
        Some("hunter2"),
    );

    // The server has no password: AUTH fails, after the handshake that `#insecure` lets through
    // (with the warning that every run with `#insecure` gives, docs/security.md).
    let out = run_ferry(&[
        "verify",
        "--source",
        &format!("{url}#insecure"),
        "--target",
        &url,
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("ferry: error: authentication failed"),
        "{stderr}"
    );
    assert!(warns_insecure(&stderr), "{stderr}");
    let url = format!("rediss://127.0.0.1:{tls_port}#insecure");
    let out = run_ferry(&["verify", "--source", &url, "--target", &url]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("0 differences"), "{stderr}");
    assert!(warns_insecure(&stderr), "{stderr}");
}
