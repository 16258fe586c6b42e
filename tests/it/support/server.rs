//! Owns the lifecycle of throwaway `redis-server` processes for integration tests.

use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::engines::{Engine, Feature};

const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
const REPLICA_SYNC_TIMEOUT: Duration = Duration::from_secs(10);
/// Another test (or any other process) may grab the port between our probe bind and
/// redis' own bind, so a few fresh ports are tried before giving up.
const START_ATTEMPTS: usize = 5;

/// Commands that ElastiCache does not let clients run. The first nine are what ferry must
/// cope with; BGREWRITEAOF and SHUTDOWN complete AWS's documented list (docs/redis-behaviour.md §10).
pub const ELASTICACHE_DISABLED_COMMANDS: &[&str] = &[
    "SYNC",
    "PSYNC",
    "REPLICAOF",
    "SLAVEOF",
    "CONFIG",
    "BGSAVE",
    "SAVE",
    "DEBUG",
    "MIGRATE",
    "BGREWRITEAOF",
    "SHUTDOWN",
];

/// The name a server started with [`ServerOptions::rdb`] loads its copy of the file under.
const RDB_FILE_NAME: &str = "restore.rdb";

/// How to configure a [`RedisServer`]; `Default` is a plain password-less server.
#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    /// Sets `requirepass`; the password then appears in [`RedisServer::url`].
    pub password: Option<String>,
    /// Disables [`ELASTICACHE_DISABLED_COMMANDS`] with `rename-command X ""`.
    /// Such a server cannot be a replication primary, since PSYNC is gone.
    pub elasticache_like: bool,
    /// Also listen on a unix socket inside the server's temp dir.
    pub unix_socket: bool,
    /// Raw config lines appended last, so they override everything above.
    pub extra_config: Vec<String>,
    /// `maxmemory` in bytes.
    pub maxmemory: Option<u64>,
    /// Enables cluster mode with a separately chosen free `cluster-port`; see [`super::cluster`].
    pub cluster: bool,
    /// An RDB file to load at startup: copied into the server's dir as its `dbfilename`.
    pub rdb: Option<PathBuf>,
    /// Which server to run, built by `make servers` (see [`super::engines`]); `None` is
    /// `FERRY_REDIS_SERVER` or the `redis-server` on `PATH` (Debian's 7.0). The config written
    /// follows the engine's version: `slaveof` before 5.0, no `cluster-port` before 7.0, only
    /// the ElastiCache commands that exist.
    pub engine: Option<Engine>,
    /// Speak TLS only (`port 0`, `tls-port`): [`RedisServer::url`] is then `rediss://` and the
    /// fixtures' own clients use [`super::tls::client`].
    pub tls: Option<super::tls::ServerTls>,
}

impl ServerOptions {
    pub fn elasticache_like() -> Self {
        Self {
            elasticache_like: true,
            ..Self::default()
        }
    }

    pub fn with_password(password: impl Into<String>) -> Self {
        Self {
            password: Some(password.into()),
            ..Self::default()
        }
    }
}

/// A running `redis-server`, killed (and its directory removed) on drop.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    cluster_port: Option<u16>,
    options: ServerOptions,
    // Dropped after the child is killed, because fields drop after `Drop::drop` runs.
    dir: TempDir,
}

impl RedisServer {
    pub fn start() -> Self {
        Self::start_with(ServerOptions::default())
    }

    pub fn elasticache_like() -> Self {
        Self::start_with(ServerOptions::elasticache_like())
    }

    pub fn start_with(options: ServerOptions) -> Self {
        Self::start_inner(options, &[])
    }

    /// A server of `engine` (see [`super::engines`]) with `options`; panics, naming the server
    /// and `make servers`, when the engine's binary is not built.
    pub fn start_engine(engine: Engine, options: ServerOptions) -> Self {
        Self::start_with(ServerOptions {
            engine: Some(engine),
            ..options
        })
    }

    /// A stock server that loaded `rdb` at startup, returned once loading has finished.
    pub fn start_with_rdb(rdb: &Path) -> Self {
        Self::start_engine_with_rdb(None, rdb)
    }

    /// A server of `engine` (`None`: the stock one) that loaded `rdb` at startup, returned once
    /// loading has finished: a file with a newer RDB version needs a newer engine.
    pub fn start_engine_with_rdb(engine: Option<Engine>, rdb: &Path) -> Self {
        let server = Self::start_with(ServerOptions {
            rdb: Some(rdb.to_path_buf()),
            engine,
            ..ServerOptions::default()
        });
        server.wait_for_loading();
        server
    }

    /// A replica of `primary` with the primary's password (so one set of credentials works
    /// for both) and engine, returned once the initial sync has completed.
    pub fn replica_of(primary: &RedisServer) -> Self {
        Self::replica_of_with(
            primary,
            ServerOptions {
                password: primary.options.password.clone(),
                engine: primary.options.engine,
                ..ServerOptions::default()
            },
        )
    }

    /// Like [`Self::replica_of`], but the replica's own options are up to the caller; an
    /// ElastiCache-like replica works, an ElastiCache-like primary cannot (no PSYNC).
    pub fn replica_of_with(primary: &RedisServer, options: ServerOptions) -> Self {
        assert!(
            !primary.options.elasticache_like,
            "an ElastiCache-like primary has PSYNC disabled, so nothing can replicate from it; \
             make the primary plain and the replica ElastiCache-like instead"
        );
        // `replicaof` is 5.0's name for `slaveof`, which every version still accepts.
        let directive = match options.engine {
            Some(engine) if !engine.supports(Feature::ReplicaOf) => "slaveof",
            _ => "replicaof",
        };
        let mut lines = vec![format!("{directive} 127.0.0.1 {}", primary.port)];
        if let Some(pw) = &primary.options.password {
            lines.push(format!("masterauth {}", quote_config(pw)));
        }
        let replica = Self::start_inner(options, &lines);
        replica.wait_for_master_link(primary);
        replica
    }

    fn start_inner(options: ServerOptions, role_lines: &[String]) -> Self {
        let binary = server_binary(&options);
        let mut last_failure = String::new();
        for _ in 0..START_ATTEMPTS {
            let dir = tempfile::Builder::new()
                .prefix("ferry-redis-")
                .tempdir()
                .expect("create temp dir for redis-server");
            let (port, cluster_port) = pick_ports(&options);
            if let Some(tls) = &options.tls {
                super::tls::register(port, tls);
            }
            let config = render_config(&options, dir.path(), port, cluster_port, role_lines);
            let conf_path = dir.path().join("redis.conf");
            fs::write(&conf_path, config).expect("write redis.conf");
            if let Some(rdb) = &options.rdb {
                fs::copy(rdb, dir.path().join(RDB_FILE_NAME))
                    .unwrap_or_else(|e| panic!("copy {} into the server dir: {e}", rdb.display()));
            }
            let stderr = fs::File::create(dir.path().join("stderr.log")).expect("stderr.log");
            let child = Command::new(&binary)
                .arg(&conf_path)
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(stderr)
                .spawn()
                .unwrap_or_else(|e| panic!("failed to spawn {}: {e}", binary.display()));
            let mut server = RedisServer {
                child: Some(child),
                port,
                cluster_port,
                options: options.clone(),
                dir,
            };
            match server.wait_until_ready() {
                Ok(()) => return server,
                Err(StartError::PortTaken) => {
                    last_failure = server.log_tail(20);
                    continue; // `server` drops here and cleans up.
                }
                Err(StartError::Fatal(why)) => {
                    panic!(
                        "redis-server on port {port} failed to start: {why}\n--- log tail ---\n{}",
                        server.log_tail(30)
                    );
                }
            }
        }
        panic!(
            "redis-server could not bind a free port after {START_ATTEMPTS} attempts\n\
             --- last log tail ---\n{last_failure}"
        );
    }

    /// Kills the server and starts it again on the same port and config. Nothing is persisted,
    /// so it comes back empty, as after a crash of a cache without persistence.
    pub fn restart(&mut self) {
        self.kill();
        let binary = server_binary(&self.options);
        let conf_path = self.dir.path().join("redis.conf");
        let stderr = fs::File::create(self.dir.path().join("stderr.log")).expect("stderr.log");
        let child = Command::new(&binary)
            .arg(&conf_path)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("failed to spawn {}: {e}", binary.display()));
        self.child = Some(child);
        if let Err(e) = self.wait_until_ready() {
            let why = match e {
                StartError::PortTaken => "port taken".to_string(),
                StartError::Fatal(why) => why,
            };
            panic!("redis-server on port {} did not restart: {why}", self.port);
        }
    }

    fn wait_until_ready(&mut self) -> Result<(), StartError> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let pid = self.pid();
        loop {
            let child = self.child.as_mut().expect("child present during startup");
            if let Some(status) = child.try_wait().expect("try_wait on redis-server") {
                let log = self.log_tail(50);
                return Err(if log.contains("already in use") {
                    StartError::PortTaken
                } else {
                    StartError::Fatal(format!("process exited early with {status}"))
                });
            }
            if let Ok(mut con) = self
                .client()
                .get_connection_with_timeout(Duration::from_secs(1))
            {
                // If our server died on a port clash, a PING could be answered by whoever
                // won the port, so the answer must come from our own process.
                let info: redis::RedisResult<String> =
                    redis::cmd("INFO").arg("server").query(&mut con);
                if let Ok(info) = info {
                    return if info_field(&info, "process_id") == Some(pid.to_string()) {
                        Ok(())
                    } else {
                        Err(StartError::PortTaken)
                    };
                }
            }
            if Instant::now() > deadline {
                return Err(StartError::Fatal(format!(
                    "PING not answered within {STARTUP_TIMEOUT:?}"
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `INFO` answers while an RDB is still loading; the data is complete at `loading:0`.
    fn wait_for_loading(&self) {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let mut con = self.conn();
        loop {
            let info = self.info_with(&mut con, "persistence");
            if info_field(&info, "loading").as_deref() == Some("0") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} still loading its RDB after {STARTUP_TIMEOUT:?}\n{}",
                self.port,
                self.log_tail(20)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_for_master_link(&self, primary: &RedisServer) {
        let deadline = Instant::now() + REPLICA_SYNC_TIMEOUT;
        let mut con = self.conn();
        loop {
            let info = self.info_with(&mut con, "replication");
            if info_field(&info, "master_link_status").as_deref() == Some("up")
                && info_field(&info, "master_sync_in_progress").as_deref() == Some("0")
            {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "replica on port {} did not sync with primary on port {} within \
                     {REPLICA_SYNC_TIMEOUT:?}\n--- replica INFO replication ---\n{info}\n\
                     --- replica log tail ---\n{}\n--- primary log tail ---\n{}",
                    self.port,
                    primary.port,
                    self.log_tail(20),
                    primary.log_tail(20)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The cluster bus port; only set for servers started with `cluster: true`.
    pub fn cluster_port(&self) -> Option<u16> {
        self.cluster_port
    }

    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .map(Child::id)
            .expect("server was killed")
    }

    pub fn options(&self) -> &ServerOptions {
        &self.options
    }

    /// The engine it runs; `None` for the default `redis-server`.
    pub fn engine(&self) -> Option<Engine> {
        self.options.engine
    }

    pub fn password(&self) -> Option<&str> {
        self.options.password.as_deref()
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn url(&self) -> String {
        let scheme = if self.options.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        match &self.options.password {
            Some(pw) => format!("{scheme}://:{}@127.0.0.1:{}", url_encode(pw), self.port),
            None => format!("{scheme}://127.0.0.1:{}", self.port),
        }
    }

    pub fn url_db(&self, db: u32) -> String {
        format!("{}/{db}", self.url())
    }

    /// `redis+unix://` URL of the socket, when started with `unix_socket: true`.
    pub fn unix_url(&self) -> Option<String> {
        let path = self.unix_socket_path()?;
        let mut url = format!("redis+unix://{}", path.display());
        if let Some(pw) = &self.options.password {
            let _ = write!(url, "?pass={}", url_encode(pw));
        }
        Some(url)
    }

    pub fn unix_socket_path(&self) -> Option<PathBuf> {
        self.options
            .unix_socket
            .then(|| self.dir.path().join("redis.sock"))
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    pub fn client(&self) -> redis::Client {
        super::tls::client(self.url()).expect("valid redis url")
    }

    pub fn conn(&self) -> redis::Connection {
        self.client()
            .get_connection_with_timeout(Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connect to redis-server at {}: {e}", self.addr()))
    }

    /// A connection with db `db` already selected.
    pub fn conn_db(&self, db: u32) -> redis::Connection {
        super::tls::client(self.url_db(db))
            .expect("valid redis url")
            .get_connection_with_timeout(Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connect to redis-server at {} db {db}: {e}", self.addr()))
    }

    /// `INFO <section>` as raw text; use [`info_field`] to pick a value out of it.
    pub fn info(&self, section: &str) -> String {
        self.info_with(&mut self.conn(), section)
    }

    fn info_with(&self, con: &mut redis::Connection, section: &str) -> String {
        redis::cmd("INFO")
            .arg(section)
            .query(con)
            .unwrap_or_else(|e| panic!("INFO {section} on {}: {e}", self.addr()))
    }

    /// Blocks until `replicas` replicas acknowledged every write made so far, via `WAIT`.
    pub fn wait_for_replicas(&self, replicas: usize, timeout: Duration) {
        // `WAIT` counts only this connection's writes (none, on a fresh connection), so the
        // replication offsets decide: every replica has acknowledged the master's offset.
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let info = self.info("replication");
            let offset: u64 = info_field(&info, "master_repl_offset")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let acked = info
                .lines()
                .filter(|l| l.starts_with("slave") && l.contains("state=online"))
                .filter(|l| {
                    l.split(',')
                        .find_map(|f| f.strip_prefix("offset="))
                        .and_then(|v| v.parse::<u64>().ok())
                        .is_some_and(|o| o >= offset)
                })
                .count();
            if acked >= replicas {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "only {acked} of {replicas} replicas acknowledged offset {offset} within {timeout:?}:\n{info}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The last `lines` lines of the server's log and anything it wrote to stderr.
    pub fn log_tail(&self, lines: usize) -> String {
        let mut out = String::new();
        for name in ["stderr.log", "redis.log"] {
            let text = read_tail(&self.dir.path().join(name), 64 * 1024);
            let tail: Vec<&str> = text.lines().collect();
            let start = tail.len().saturating_sub(lines);
            if start < tail.len() {
                let _ = writeln!(out, "[{name}]");
                for line in &tail[start..] {
                    let _ = writeln!(out, "{line}");
                }
            }
        }
        out
    }

    /// Kills the process now (e.g. to simulate a crashed server); drop does this anyway.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

impl std::fmt::Debug for RedisServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisServer")
            .field("port", &self.port)
            .field("pid", &self.child.as_ref().map(Child::id))
            .field("dir", &self.dir.path())
            .finish()
    }
}

enum StartError {
    PortTaken,
    Fatal(String),
}

/// The engine's binary, or [`redis_server_binary`] without one.
fn server_binary(options: &ServerOptions) -> PathBuf {
    options
        .engine
        .map_or_else(redis_server_binary, Engine::binary)
}

/// The server's port and, in cluster mode, its bus port: a free one where `cluster-port` exists
/// (7.0+), else the fixed `port + 10000`, so `port` must leave room for it.
fn pick_ports(options: &ServerOptions) -> (u16, Option<u16>) {
    if !options.cluster {
        return (free_port(), None);
    }
    match options.engine {
        Some(engine) if !engine.supports(Feature::ClusterPortConfig) => {
            let port = std::iter::repeat_with(free_port)
                .find(|&p| p <= u16::MAX - 10000)
                .expect("a free port below 55536");
            (port, Some(port + 10000))
        }
        _ => {
            let port = free_port();
            let cluster_port = std::iter::repeat_with(free_port).find(|&p| p != port);
            (port, cluster_port)
        }
    }
}

/// `redis-server` from `FERRY_REDIS_SERVER`, else from `PATH`.
pub fn redis_server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("FERRY_REDIS_SERVER") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "FERRY_REDIS_SERVER={} does not exist; unset it or run `make test`, \
             which installs redis-server",
            path.display()
        );
        return path;
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("redis-server"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "redis-server not found on PATH (or set FERRY_REDIS_SERVER); \
                 run `make test`, which installs it"
            )
        })
}

/// Picks a port nobody listens on right now; the caller must tolerate losing a race for it.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// The value of `field` in `INFO` output (`field:value` lines).
pub fn info_field(info: &str, field: &str) -> Option<String> {
    info.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        (name == field).then(|| value.trim().to_string())
    })
}

fn render_config(
    options: &ServerOptions,
    dir: &Path,
    port: u16,
    cluster_port: Option<u16>,
    role_lines: &[String],
) -> String {
    let dir_str = quote_config(&dir.display().to_string());
    let mut c = String::new();
    let mut line = |s: String| {
        c.push_str(&s);
        c.push('\n');
    };
    match &options.tls {
        None => line(format!("port {port}")),
        Some(tls) => {
            line("port 0".into());
            line(format!("tls-port {port}"));
            line(format!("tls-cert-file {}", tls.cert.display()));
            line(format!("tls-key-file {}", tls.key.display()));
            line(format!("tls-ca-cert-file {}", tls.ca.display()));
            let auth = if tls.auth_clients { "yes" } else { "no" };
            line(format!("tls-auth-clients {auth}"));
        }
    }
    line("bind 127.0.0.1".into());
    line("daemonize no".into());
    line("save \"\"".into());
    line("appendonly no".into());
    line(format!("dir {dir_str}"));
    line("logfile redis.log".into());
    if options.rdb.is_some() {
        line(format!("dbfilename {RDB_FILE_NAME}"));
    }
    line("repl-diskless-sync-delay 0".into());
    if options.unix_socket {
        line(format!(
            "unixsocket {}",
            quote_config(&dir.join("redis.sock").display().to_string())
        ));
        line("unixsocketperm 700".into());
    }
    if let Some(pw) = &options.password {
        line(format!("requirepass {}", quote_config(pw)));
    }
    if let Some(bytes) = options.maxmemory {
        line(format!("maxmemory {bytes}"));
    }
    if let Some(cport) = cluster_port {
        line("cluster-enabled yes".into());
        line("cluster-config-file nodes.conf".into());
        if options
            .engine
            .is_none_or(|e| e.supports(Feature::ClusterPortConfig))
        {
            line(format!("cluster-port {cport}"));
        }
    }
    if options.elasticache_like {
        // Renaming a command the version lacks is a fatal config error.
        let names = match options.engine {
            Some(engine) => engine.elasticache_disabled_commands(),
            None => ELASTICACHE_DISABLED_COMMANDS.to_vec(),
        };
        for name in names {
            line(format!("rename-command {name} \"\""));
        }
    }
    for l in role_lines {
        line(l.clone());
    }
    for l in &options.extra_config {
        line(l.clone());
    }
    c
}

/// Double-quoted config argument, so passwords and paths with spaces survive parsing.
fn quote_config(s: &str) -> String {
    let mut out = String::from("\"");
    for ch in s.chars() {
        match ch {
            '"' | '\\' => {
                out.push('\\');
                out.push(ch);
            }
            _ => out.push(ch),
        }
    }
    out.push('"');
    out
}

fn url_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn read_tail(path: &Path, max_bytes: u64) -> String {
    let Ok(mut file) = fs::File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(max_bytes)));
    let mut buf = Vec::new();
    let _ = file.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}
