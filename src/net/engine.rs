//! [`Engine`]: which server ferry talks to (Redis or Valkey, and its version) and what that
//! version can do, read once from `INFO server`. Every mechanism that differs between versions
//! asks this, never the version string itself.

use std::fmt;

use super::{Endpoint, NetError, info_field};

/// The server's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum EngineKind {
    Redis,
    Valkey,
}

/// A server and its capabilities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Engine {
    pub kind: EngineKind,
    /// (major, minor, patch) of the engine's own version (Valkey's, not its Redis-compatible
    /// `redis_version`).
    pub version: (u32, u32, u32),
}

/// The oldest version ferry migrates from or to.
pub const OLDEST: (u32, u32, u32) = (4, 0, 0);

impl Engine {
    /// Reads `INFO server` on `ep`.
    pub async fn detect(ep: &Endpoint) -> Result<Engine, NetError> {
        let mut con = ep.control().await?;
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut con)
            .await
            .map_err(|e| ep.classify(&e))?;
        Engine::from_info(&info).ok_or_else(|| NetError::Server {
            endpoint: ep.redacted().to_string(),
            command: "INFO server".into(),
            message: "the reply names no redis_version".into(),
        })
    }

    /// The engine an `INFO server` reply describes.
    pub fn from_info(info: &str) -> Option<Engine> {
        let (kind, v) = match info_field(info, "valkey_version") {
            Some(v) => (EngineKind::Valkey, v),
            None => (EngineKind::Redis, info_field(info, "redis_version")?),
        };
        let mut parts = v.trim().split('.').map(|p| p.parse::<u32>().unwrap_or(0));
        let version = (
            parts.next()?,
            parts.next().unwrap_or(0),
            parts.next().unwrap_or(0),
        );
        Some(Engine { kind, version })
    }

    /// The Redis version whose commands and formats this engine has (Valkey 7.2 and 8.x forked
    /// from Redis 7.2).
    pub fn redis_level(&self) -> (u32, u32) {
        match self.kind {
            EngineKind::Redis => (self.version.0, self.version.1),
            EngineKind::Valkey => (7, 2),
        }
    }

    /// `PEXPIRETIME` exists (Redis 7.0).
    pub fn has_pexpiretime(&self) -> bool {
        self.redis_level() >= (7, 0)
    }

    /// `RESTORE … ABSTTL` exists (Redis 5.0).
    pub fn has_restore_absttl(&self) -> bool {
        self.redis_level() >= (5, 0)
    }

    /// `CLIENT PAUSE … WRITE` exists (Redis 6.2).
    pub fn has_pause_write(&self) -> bool {
        self.redis_level() >= (6, 2)
    }

    /// Functions (`FUNCTION`, `FCALL`) exist (Redis 7.0).
    pub fn has_functions(&self) -> bool {
        self.redis_level() >= (7, 0)
    }

    /// Streams exist (Redis 5.0).
    pub fn has_streams(&self) -> bool {
        self.redis_level() >= (5, 0)
    }

    /// `SET … PXAT` and `GETEX` exist (Redis 6.2): replay's absolute-expiry rewrites need them.
    pub fn has_set_pxat(&self) -> bool {
        self.redis_level() >= (6, 2)
    }

    /// Hash-field expiry, the `HEXPIRE` family (Redis 7.4; no Valkey release up to 8.0).
    pub fn has_hash_field_expiry(&self) -> bool {
        self.kind == EngineKind::Redis && self.redis_level() >= (7, 4)
    }

    /// The RDB version of this engine's `DUMP` payloads.
    pub fn rdb_version(&self) -> u16 {
        match self.kind {
            EngineKind::Valkey => 11,
            EngineKind::Redis => match (self.version.0, self.version.1) {
                (0..=3, _) => 7,
                (4, _) => 8,
                (5 | 6, _) => 9,
                (7, 0) => 10,
                (7, 1..=3) => 11,
                _ => 12,
            },
        }
    }

    /// True when this engine may lack commands or options `other` has: an older version of the
    /// same kind, or another kind not at a newer Redis level (Valkey and Redis each have
    /// commands the other lacks).
    pub fn may_lack_commands_of(&self, other: &Engine) -> bool {
        let (mine, theirs) = (
            (self.version.0, self.version.1),
            (other.version.0, other.version.1),
        );
        if self.kind == other.kind {
            mine < theirs
        } else {
            self.redis_level() <= other.redis_level()
        }
    }

    /// True when this engine is too old for ferry at all.
    pub fn too_old(&self) -> bool {
        self.version < OLDEST && self.kind == EngineKind::Redis
    }
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (a, b, c) = self.version;
        match self.kind {
            EngineKind::Redis => write!(f, "Redis {a}.{b}.{c}"),
            EngineKind::Valkey => write!(f, "Valkey {a}.{b}.{c}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine(info: &str) -> Engine {
        Engine::from_info(info).unwrap()
    }

    #[test]
    fn versions_and_capabilities_come_from_info() {
        let r62 = engine("# Server\r\nredis_version:6.2.16\r\nredis_mode:standalone\r\n");
        assert_eq!(r62.to_string(), "Redis 6.2.16");
        assert!(!r62.has_pexpiretime() && r62.has_pause_write() && r62.has_restore_absttl());
        assert_eq!(r62.rdb_version(), 9);
        let r40 = engine("redis_version:4.0.14\r\n");
        assert!(!r40.has_restore_absttl() && !r40.has_pause_write() && !r40.has_streams());
        assert_eq!(r40.rdb_version(), 8);
        let v80 = engine("redis_version:7.2.4\r\nvalkey_version:8.0.1\r\n");
        assert_eq!(v80.to_string(), "Valkey 8.0.1");
        assert!(v80.has_pexpiretime() && v80.has_functions());
        assert_eq!(v80.rdb_version(), 11);
        assert_eq!(engine("redis_version:7.4.1\r\n").rdb_version(), 12);
        assert!(engine("redis_version:7.4.1\r\n").has_hash_field_expiry());
        assert!(!v80.has_hash_field_expiry() && !r62.has_hash_field_expiry());
        assert!(!engine("redis_version:7.2.6\r\n").has_hash_field_expiry());
        assert_eq!(engine("redis_version:7.0.15\r\n").rdb_version(), 10);
        assert!(engine("redis_version:3.2.12\r\n").too_old());
        assert!(Engine::from_info("nothing here").is_none());
        let r70 = engine("redis_version:7.0.15\r\n");
        let r74 = engine("redis_version:7.4.1\r\n");
        assert!(r62.may_lack_commands_of(&r70) && !r70.may_lack_commands_of(&r62));
        assert!(!r70.may_lack_commands_of(&r70));
        assert!(v80.may_lack_commands_of(&r74) && !r74.may_lack_commands_of(&v80));
        assert!(
            r70.may_lack_commands_of(&v80)
                && v80.may_lack_commands_of(&engine("redis_version:7.2.6\r\n"))
        );
    }
}
