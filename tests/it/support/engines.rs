//! The engine matrix: every server version a fleet runs, for tests that need more than Debian's
//! Redis 7.0.
//!
//! `make servers` (`scripts/servers.sh`) builds Redis 4.0.14, 5.0.14, 6.0.20, 6.2.16, 7.2.6,
//! 7.4.1 and Valkey 7.2.7, 8.0.1 from the tarballs of `../shared/servers/` into
//! `${FERRY_SERVERS_CACHE:-~/.cache/ferry/servers}/<name>/`; Redis 7.0 is Debian's
//! `redis-server` (or `FERRY_REDIS_SERVER`), as everywhere else. Start one with
//! [`RedisServer::start_engine`](super::RedisServer::start_engine) or
//! `ServerOptions { engine: Some(…), .. }`: the config follows the version.
//!
//! Tests that need a built engine are `#[ignore = "needs make servers; run make test-engines"]`;
//! `make test-engines` runs them with `--include-ignored` and `FERRY_ENGINES=1`. A missing
//! server fails the test, naming the server and `make servers`: never a skip.
//!
//! What each version supports ([`Engine::supports`], [`Engine::rdb_version`]) is checked
//! against the real servers by `tests/it/engines.rs`, and written up in
//! docs/redis-behaviour.md §16.

use std::fmt;
use std::path::PathBuf;

use super::server::{ELASTICACHE_DISABLED_COMMANDS, redis_server_binary};

/// A server version of the matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Engine {
    Redis40,
    Redis50,
    Redis60,
    Redis62,
    /// Debian's `redis-server` (7.0.15), not built by `make servers`.
    Redis70,
    Redis72,
    Redis74,
    Valkey72,
    Valkey80,
}

/// Something a version has or lacks that ferry or its tests care about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Feature {
    /// `RESTORE … ABSTTL` (5.0).
    RestoreAbsTtl,
    /// Streams, `XADD` (5.0).
    Streams,
    /// The `replicaof` config directive and command (5.0); before, only `slaveof`.
    ReplicaOf,
    /// `ACL` and `HELLO` (6.0).
    Acl,
    /// `CLIENT PAUSE <ms> WRITE` (6.2); before, a pause holds every client.
    ClientPauseWrite,
    /// `CLIENT INFO` (6.2).
    ClientInfo,
    /// `SET … PXAT` / `EXAT` and `GETEX` (6.2): the absolute TTLs replay writes.
    SetPxAt,
    /// `LMOVE` / `BLMOVE` (6.2).
    Lmove,
    /// `LMPOP` / `ZMPOP` (7.0), which replay sends for served `BLPOP`/`BRPOP`/`BZPOP*`.
    Lmpop,
    /// `XSETID … ENTRIESADDED … MAXDELETEDID` and `XGROUP SETID … ENTRIESREAD` (7.0).
    StreamEntriesRead,
    /// `CLIENT NO-TOUCH` (7.2): reads that leave the LRU/LFU data alone.
    ClientNoTouch,
    /// `PEXPIRETIME` (7.0).
    PexpireTime,
    /// `COMMAND DOCS` (7.0).
    CommandDocs,
    /// Key specs in `COMMAND` replies (7.0): ten fields per command instead of six (7 with ACL
    /// categories, 6.0).
    KeySpecs,
    /// `FUNCTION LOAD/LIST/DUMP/RESTORE`, `FCALL` (7.0).
    Functions,
    /// The `enable-debug-command` config directive (7.0).
    EnableDebugCommand,
    /// The `cluster-port` config directive (7.0); before, the bus is `port + 10000`.
    ClusterPortConfig,
    /// Hash-field expiry, the `HEXPIRE` family (Redis 7.4; not Valkey 8.0).
    HashFieldExpiry,
    /// `MONITOR` writes a command's line once it has run, stamped with that time (6.2); before,
    /// when it starts, so a `SELECT` line still shows the previous db.
    MonitorAfterExecution,
    /// A primary propagates a script's effects in `MULTI … EXEC` (5.0); 4.0 sends the `EVAL`
    /// itself, which the replica runs (its `MONITOR` shows the script's `[db lua]` lines).
    ScriptEffectsReplication,
    /// `INCRBYFLOAT` propagates as `SET … KEEPTTL` (6.0); before, as a plain `SET`.
    KeepTtlPropagation,
    /// Relative TTLs propagate as absolute ones, `SET … PXAT`, `PEXPIREAT` (7.0); before, as
    /// sent (6.2 turns `SET … EX` into `SET … PX`, still relative).
    AbsoluteTtlPropagation,
}

impl Engine {
    /// Every engine, oldest first, Valkey last.
    pub const ALL: [Engine; 9] = [
        Engine::Redis40,
        Engine::Redis50,
        Engine::Redis60,
        Engine::Redis62,
        Engine::Redis70,
        Engine::Redis72,
        Engine::Redis74,
        Engine::Valkey72,
        Engine::Valkey80,
    ];

    /// The engines `make servers` builds: all but Debian's 7.0.
    pub const BUILT: [Engine; 8] = [
        Engine::Redis40,
        Engine::Redis50,
        Engine::Redis60,
        Engine::Redis62,
        Engine::Redis72,
        Engine::Redis74,
        Engine::Valkey72,
        Engine::Valkey80,
    ];

    /// The release's name, as its tarball and cache directory spell it (`redis-6.2.16`);
    /// `redis-7.0` for Debian's.
    pub fn name(self) -> &'static str {
        match self {
            Engine::Redis40 => "redis-4.0.14",
            Engine::Redis50 => "redis-5.0.14",
            Engine::Redis60 => "redis-6.0.20",
            Engine::Redis62 => "redis-6.2.16",
            Engine::Redis70 => "redis-7.0",
            Engine::Redis72 => "redis-7.2.6",
            Engine::Redis74 => "redis-7.4.1",
            Engine::Valkey72 => "valkey-7.2.7",
            Engine::Valkey80 => "valkey-8.0.1",
        }
    }

    pub fn is_valkey(self) -> bool {
        matches!(self, Engine::Valkey72 | Engine::Valkey80)
    }

    /// The engine's own version (Valkey's is `valkey_version` in `INFO server`); for Debian's
    /// 7.0 only `7.0`, whatever the patch release.
    pub fn version(self) -> &'static str {
        let name = self.name();
        &name[name.find('-').expect("engine names are <engine>-<version>") + 1..]
    }

    /// The `redis_version` its `INFO server` reports: Valkey reports `7.2.4` for
    /// compatibility, whatever its own version. A prefix for Debian's 7.0.
    pub fn redis_version(self) -> &'static str {
        if self.is_valkey() {
            "7.2.4"
        } else {
            self.version()
        }
    }

    /// The Redis version whose features it has: Valkey 7.2 and 8.0 are Redis 7.2's.
    fn level(self) -> (u8, u8) {
        match self {
            Engine::Redis40 => (4, 0),
            Engine::Redis50 => (5, 0),
            Engine::Redis60 => (6, 0),
            Engine::Redis62 => (6, 2),
            Engine::Redis70 => (7, 0),
            Engine::Redis72 | Engine::Valkey72 | Engine::Valkey80 => (7, 2),
            Engine::Redis74 => (7, 4),
        }
    }

    pub fn supports(self, feature: Feature) -> bool {
        let since = match feature {
            Feature::RestoreAbsTtl
            | Feature::Streams
            | Feature::ReplicaOf
            | Feature::ScriptEffectsReplication => (5, 0),
            Feature::Acl | Feature::KeepTtlPropagation => (6, 0),
            Feature::MonitorAfterExecution
            | Feature::ClientPauseWrite
            | Feature::ClientInfo
            | Feature::SetPxAt
            | Feature::Lmove => (6, 2),
            Feature::PexpireTime
            | Feature::Lmpop
            | Feature::StreamEntriesRead
            | Feature::CommandDocs
            | Feature::KeySpecs
            | Feature::Functions
            | Feature::EnableDebugCommand
            | Feature::ClusterPortConfig
            | Feature::AbsoluteTtlPropagation => (7, 0),
            Feature::ClientNoTouch => (7, 2),
            Feature::HashFieldExpiry => return self == Engine::Redis74,
        };
        self.level() >= since
    }

    /// The RDB version in its `DUMP` payloads (`RDB_VERSION` in `src/rdb.h`), which is also the
    /// newest it accepts in `RESTORE`.
    pub fn rdb_version(self) -> u16 {
        match self {
            Engine::Redis40 => 8,
            Engine::Redis50 | Engine::Redis60 | Engine::Redis62 => 9,
            Engine::Redis70 => 10,
            Engine::Redis72 | Engine::Valkey72 | Engine::Valkey80 => 11,
            Engine::Redis74 => 12,
        }
    }

    /// [`ELASTICACHE_DISABLED_COMMANDS`] that exist in this version (`REPLICAOF` is 5.0's), as
    /// renaming away a command the server lacks is a fatal config error.
    pub fn elasticache_disabled_commands(self) -> Vec<&'static str> {
        ELASTICACHE_DISABLED_COMMANDS
            .iter()
            .copied()
            .filter(|&name| name != "REPLICAOF" || self.supports(Feature::ReplicaOf))
            .collect()
    }

    /// The server binary: the one `make servers` built, or Debian's for 7.0. Panics, naming the
    /// server and how to build it, when it is missing.
    pub fn binary(self) -> PathBuf {
        if self == Engine::Redis70 {
            return redis_server_binary();
        }
        self.built(&format!("{}-server", self.program()))
    }

    /// The matching `redis-cli` / `valkey-cli`.
    pub fn cli(self) -> PathBuf {
        if self == Engine::Redis70 {
            return std::env::var_os("PATH")
                .iter()
                .flat_map(std::env::split_paths)
                .map(|dir| dir.join("redis-cli"))
                .find(|candidate| candidate.is_file())
                .unwrap_or_else(|| panic!("redis-cli not found on PATH; `make deps` installs it"));
        }
        self.built(&format!("{}-cli", self.program()))
    }

    fn program(self) -> &'static str {
        if self.is_valkey() { "valkey" } else { "redis" }
    }

    fn built(self, file: &str) -> PathBuf {
        let path = cache_dir().join(self.name()).join(file);
        assert!(
            path.is_file(),
            "{self} is not built: {} is missing. `make servers` builds it from {}.tar.gz of \
             ../shared/servers (FERRY_SERVERS_SRC) into {} (FERRY_SERVERS_CACHE); \
             `make test-engines` runs it first",
            path.display(),
            self.name(),
            cache_dir().display()
        );
        path
    }
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Engine::Redis70 => f.write_str("Redis 7.0 (Debian's redis-server)"),
            _ if self.is_valkey() => write!(f, "Valkey {}", self.version()),
            _ => write!(f, "Redis {}", self.version()),
        }
    }
}

/// Where `make servers` puts the engines; `scripts/servers.sh` has the same default.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("FERRY_SERVERS_CACHE") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").expect("HOME is set (or set FERRY_SERVERS_CACHE)");
    PathBuf::from(home).join(".cache/ferry/servers")
}

/// Whether the run asked for the engine matrix (`make test-engines` sets `FERRY_ENGINES=1`).
pub fn matrix_requested() -> bool {
    std::env::var_os("FERRY_ENGINES").is_some_and(|v| !v.is_empty() && v != "0")
}
