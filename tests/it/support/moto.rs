//! Owns throwaway `moto_server` processes: a local SQS for the SQS journal tests.

use std::fs;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::server::free_port;

const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);
/// The port may be taken between our probe and moto's bind, so a few are tried.
const START_ATTEMPTS: usize = 5;
/// moto accepts any credentials; these are passed explicitly so the SDK never looks at the
/// environment, profile files or instance metadata (no slow fallback when one is missing).
pub const TEST_ACCESS_KEY: &str = "test";
pub const TEST_SECRET_KEY: &str = "test";
pub const TEST_REGION: &str = "us-east-1";

/// A running `moto_server` on a free loopback port, killed by PID on drop.
pub struct Moto {
    child: Option<Child>,
    port: u16,
    // Dropped after the child is killed.
    dir: TempDir,
}

impl Moto {
    pub fn start() -> Self {
        let binary = moto_binary();
        let mut last = String::new();
        for _ in 0..START_ATTEMPTS {
            let dir = tempfile::Builder::new()
                .prefix("ferry-moto-")
                .tempdir()
                .expect("create temp dir for moto");
            let port = free_port();
            let log = fs::File::create(dir.path().join("moto.log")).expect("moto.log");
            let child = Command::new(&binary)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("clone log handle"))
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("failed to spawn {}: {e}", binary.display()));
            let mut moto = Moto {
                child: Some(child),
                port,
                dir,
            };
            if moto.wait_until_ready() {
                return moto;
            }
            last = moto.log();
        }
        panic!("moto_server did not start after {START_ATTEMPTS} attempts\n--- log ---\n{last}");
    }

    /// Ready when our own process is alive and its port answers HTTP.
    fn wait_until_ready(&mut self) -> bool {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        while Instant::now() < deadline {
            let child = self.child.as_mut().expect("child present during startup");
            if let Ok(Some(_)) = child.try_wait() {
                return false;
            }
            if self.http_get("/moto-api/").is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// A minimal HTTP/1.0 GET, enough for a readiness probe without an HTTP client crate.
    fn http_get(&self, path: &str) -> Option<String> {
        use std::io::{Read, Write};
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        out.starts_with("HTTP/").then_some(out)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("moto was killed")
    }

    /// An SQS config for `queue_url` on this server: explicit endpoint, region and test
    /// credentials, and waits short enough for tests.
    pub fn config(&self, queue_url: &str) -> ferry::journal::sqs::SqsConfig {
        test_config(queue_url, &self.endpoint())
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("moto.log")).unwrap_or_default()
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The test config for any endpoint (a dead one too).
pub fn test_config(queue_url: &str, endpoint: &str) -> ferry::journal::sqs::SqsConfig {
    use ferry::journal::sqs::{SqsConfig, StaticCredentials};
    let mut cfg = SqsConfig::new(queue_url);
    cfg.endpoint_url = Some(endpoint.to_string());
    cfg.region = Some(TEST_REGION.to_string());
    cfg.credentials = Some(StaticCredentials {
        access_key_id: TEST_ACCESS_KEY.into(),
        secret_access_key: TEST_SECRET_KEY.into(),
        session_token: None,
    });
    cfg.wait = Duration::ZERO;
    cfg.gap_wait = Duration::from_secs(1);
    cfg.call_timeout = Duration::from_secs(5);
    cfg
}

/// `moto_server` from `FERRY_MOTO_SERVER`, `PATH`, or pip's user scripts directory.
pub fn moto_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("FERRY_MOTO_SERVER") {
        return PathBuf::from(path);
    }
    let on_path = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("moto_server"))
        .find(|c| c.is_file());
    if let Some(p) = on_path {
        return p;
    }
    let user_base = Command::new("python3")
        .args(["-m", "site", "--user-base"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if let Some(base) = user_base {
        let p = PathBuf::from(base).join("bin").join("moto_server");
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "moto_server not found on PATH or in python3's user base (or set FERRY_MOTO_SERVER); \
         run `make deps`, which installs it"
    )
}
