//! [`Preflight`]: a readiness report on a source and a target before anything is copied:
//! engines and the mechanics they call for, capture, pausing, payload compatibility, memory,
//! eviction, dbs. Each finding is ok, warn or fail with what to do.
//!
//! ## Behavior
//! - Only reads: `INFO`, `CONFIG GET` (when allowed), `COMMAND INFO`, a `MONITOR` opened and
//!   closed at once, `SCAN` and `MEMORY USAGE` on a sample, and the harmless permission probes
//!   of [`super::acl`]. Nothing is written anywhere.
//! - A check that cannot be made (`CONFIG` renamed away, as on ElastiCache) is a warning that
//!   says so, never a silent pass.
//! - The verdict: fail when something blocks a migration, warn when something needs a look,
//!   ok otherwise ([`PreflightReport::exit_code`]: 2, 1, 0).

use serde::Serialize;

use crate::capture::MonitorStream;
use crate::net::{Endpoint, Engine, NetError, info_field};
use crate::snapshot::{PLAN_REMEDY, field_ttl_hashes, field_ttls_refusal};

/// How a finding weighs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

/// One finding.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// `source`, `target` or `pair`.
    pub side: &'static str,
    /// What was checked.
    pub check: &'static str,
    pub level: Level,
    /// What was found, and for warn/fail what to do.
    pub detail: String,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct PreflightReport {
    pub source_engine: Option<Engine>,
    pub target_engine: Option<Engine>,
    pub findings: Vec<Finding>,
}

impl PreflightReport {
    /// The worst level found.
    pub fn verdict(&self) -> Level {
        self.findings
            .iter()
            .map(|f| f.level)
            .max()
            .unwrap_or(Level::Ok)
    }

    /// 0 ready, 1 warnings only, 2 something blocks.
    pub fn exit_code(&self) -> u8 {
        match self.verdict() {
            Level::Ok => 0,
            Level::Warn => 1,
            Level::Fail => 2,
        }
    }
}

impl std::fmt::Display for PreflightReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for x in &self.findings {
            let level = match x.level {
                Level::Ok => "ok  ",
                Level::Warn => "warn",
                Level::Fail => "FAIL",
            };
            writeln!(f, "{level} {:<6} {:<18} {}", x.side, x.check, x.detail)?;
        }
        let verdict = match self.verdict() {
            Level::Ok => "ready",
            Level::Warn => "ready, with warnings to look at",
            Level::Fail => "not ready",
        };
        writeln!(f, "verdict: {verdict}")
    }
}

/// A preflight of one pair.
pub struct Preflight {
    source: Endpoint,
    target: Endpoint,
    findings: Vec<Finding>,
    /// A plan's `on_field_ttls = "drop_field_ttls"`: field TTLs a target cannot hold are a
    /// warning, not a failure.
    drop_field_ttls: bool,
    /// A plan's db moves (`ferry.move_db`), as source db → target db.
    db_moves: Vec<crate::plan::Rule>,
}

/// Keys sampled for the biggest-key check.
const SAMPLE_KEYS: usize = 200;

impl Preflight {
    /// A preflight of `source` → `target`.
    pub fn new(source: Endpoint, target: Endpoint) -> Preflight {
        Preflight {
            source,
            target,
            findings: Vec::new(),
            drop_field_ttls: false,
            db_moves: Vec::new(),
        }
    }

    /// Field TTLs toward a target without them are dropped (a plan's `on_field_ttls`), so they
    /// warn instead of failing.
    pub fn drop_field_ttls(mut self, drop: bool) -> Preflight {
        self.drop_field_ttls = drop;
        self
    }

    /// A plan's rewrite rules: its db moves decide which dbs a cluster target must hold.
    pub fn rewrite(mut self, rules: Vec<crate::plan::Rule>) -> Preflight {
        self.db_moves = rules;
        self
    }

    fn add(&mut self, side: &'static str, check: &'static str, level: Level, detail: String) {
        self.findings.push(Finding {
            side,
            check,
            level,
            detail,
        });
    }

    /// Runs every check. Only a server that cannot be reached at all is an error.
    pub async fn run(mut self) -> Result<PreflightReport, NetError> {
        let (source, target) = (self.source.clone(), self.target.clone());
        let mut src = source.control().await?;
        let mut dst = target.control().await?;
        let se = Engine::detect(&source).await?;
        let te = Engine::detect(&target).await?;
        self.engines(se, te);
        for (ep, side, engine, name) in [
            (&source, super::acl::Side::Source, se, "source"),
            (&target, super::acl::Side::Target, te, "target"),
        ] {
            let missing = super::acl::missing_permissions(ep, side, engine).await?;
            if missing.is_empty() {
                self.add(
                    name,
                    "permissions",
                    Level::Ok,
                    "every command ferry sends on this side is allowed".into(),
                );
            } else {
                self.add(
                    name,
                    "permissions",
                    Level::Fail,
                    super::acl::describe_missing(&missing),
                );
            }
        }
        self.field_ttls(se, te).await?;
        if se.has_streams() && !te.has_streams() {
            let (level, detail) =
                match super::older::check_streams(&self.source, &self.target, (se, te)).await {
                    Ok(()) => (
                        Level::Ok,
                        format!("none on the source ({te} has no streams)"),
                    ),
                    Err(super::MigrateError::Unsupported(reason)) => (Level::Fail, reason),
                    Err(e) => (Level::Warn, format!("could not look for streams: {e}")),
                };
            self.add("pair", "streams", level, detail);
        }
        let s_info = info(&mut src).await;
        let t_info = info(&mut dst).await;
        let source_cluster = info_field(&s_info, "cluster_enabled") == Some("1");
        // A cluster source's data is its primaries' together.
        let mut s_memory = s_info.clone();
        if source_cluster && let Some(used) = self.cluster_source().await {
            s_memory = format!("used_memory:{used}\r\n");
        }
        let target_cluster = info_field(&t_info, "cluster_enabled") == Some("1");
        if target_cluster {
            self.cluster_target(&s_info).await;
        }
        self.monitor(&source).await;
        // A cluster source's replicas are listed with its shards.
        if !source_cluster {
            self.replica(&s_info);
        }
        self.keyspace_events(&mut src).await;
        self.memory(&s_memory, &t_info, &mut dst).await;
        if !target_cluster {
            self.dbs(&s_info, &mut dst).await;
        }
        self.biggest(&mut src).await;
        Ok(PreflightReport {
            source_engine: Some(se),
            target_engine: Some(te),
            findings: self.findings,
        })
    }

    fn engines(&mut self, se: Engine, te: Engine) {
        let src = if se.too_old() {
            (
                Level::Fail,
                format!(
                    "{se}: live migration needs Redis 4.0 or later on the source (`ferry snapshot` copies it once)"
                ),
            )
        } else {
            (Level::Ok, se.to_string())
        };
        self.add("source", "engine", src.0, src.1);
        let tgt = if te.has_set_pxat() && !te.may_lack_commands_of(&se) {
            (Level::Ok, te.to_string())
        } else {
            (
                Level::Ok,
                format!("{te}: {}", super::older::replay_forms((se, te))),
            )
        };
        self.add("target", "engine", tgt.0, tgt.1);
        let expiry = if se.has_pexpiretime() {
            (Level::Ok, "PEXPIRETIME".to_string())
        } else {
            (
                Level::Ok,
                "PTTL with the server's TIME in the same transaction (no PEXPIRETIME before Redis 7.0); fenced verification inside a run needs 7.0, run `ferry verify` after the final fence".to_string(),
            )
        };
        self.add("source", "expiry reads", expiry.0, expiry.1);
        let pause = if se.has_pause_write() {
            (Level::Ok, "CLIENT PAUSE … WRITE".to_string())
        } else {
            (
                Level::Warn,
                "no CLIENT PAUSE … WRITE before Redis 6.2: the final fence pauses every client, reads too, for max_pause (nothing ends it early), and a cutover is refused; stop with `ferry migrate` and switch clients yourself".to_string(),
            )
        };
        self.add("source", "write pause", pause.0, pause.1);
        let (from, to) = (se.rdb_version(), te.rdb_version());
        let payload = if to >= from || crate::snapshot::can_downgrade(from, to) {
            (Level::Ok, super::payload_mechanism((se, te)))
        } else {
            (
                Level::Fail,
                format!(
                    "the target's RESTORE rejects RDB {from} payloads (it reads up to RDB {to}); a live migration toward this older payload version is not supported"
                ),
            )
        };
        self.add("pair", "payloads", payload.0, payload.1);
    }

    /// Hash-field TTLs (Redis 7.4): kept when both sides have them; toward a target without
    /// them, the hashes affected are named and the plan's policy decides.
    async fn field_ttls(&mut self, se: Engine, te: Engine) -> Result<(), NetError> {
        if !se.has_hash_field_expiry() {
            return Ok(());
        }
        if te.has_hash_field_expiry() {
            self.add(
                "pair",
                "field TTLs",
                Level::Ok,
                "kept: copied as absolute times, HEXPIRE/HPEXPIRE replayed as HPEXPIREAT".into(),
            );
            return Ok(());
        }
        let found = field_ttl_hashes(&self.source).await?;
        let (level, detail) = match (found.hashes, self.drop_field_ttls) {
            (0, _) => (
                Level::Ok,
                format!("none on the source ({te} has no field TTLs)"),
            ),
            (_, true) => (
                Level::Warn,
                format!(
                    "{found}: {te} has no field TTLs, and the plan's on_field_ttls = \"drop_field_ttls\" copies those fields without them"
                ),
            ),
            (_, false) => (
                Level::Fail,
                field_ttls_refusal(&self.target, te, &found, PLAN_REMEDY),
            ),
        };
        self.add("pair", "field TTLs", level, detail);
        Ok(())
    }

    async fn monitor(&mut self, source: &Endpoint) {
        match MonitorStream::start(source).await {
            Ok(stream) => {
                drop(stream);
                self.add("source", "MONITOR", Level::Ok, "allowed".into());
            }
            Err(e) => self.add(
                "source",
                "MONITOR",
                Level::Fail,
                format!("{e}: ferry captures writes with MONITOR; allow it for ferry's user (ACL +monitor) or use an endpoint that has it"),
            ),
        }
    }

    fn replica(&mut self, s_info: &str) {
        let online = s_info
            .lines()
            .filter(|l| l.starts_with("slave") && l.contains("state=online"))
            .count();
        if online > 0 {
            self.add(
                "source",
                "replica",
                Level::Ok,
                format!(
                    "{online} online: capture reads a replica's effect stream (`capture = auto`)"
                ),
            );
        } else {
            self.add(
                "source",
                "replica",
                Level::Ok,
                "none online: capture reads the primary's command stream (writes are rewritten for exact replay)".into(),
            );
        }
    }

    async fn keyspace_events(&mut self, src: &mut redis::aio::MultiplexedConnection) {
        let policy = config_get(src, "maxmemory-policy").await;
        let events = config_get(src, "notify-keyspace-events").await;
        match (policy.as_deref(), events) {
            (Some("noeviction"), _) => {
                self.add("source", "evictions", Level::Ok, "maxmemory-policy noeviction".into())
            }
            (Some(p), Some(ev)) if ev.contains('E') && (ev.contains('e') || ev.contains('A')) => {
                self.add(
                    "source",
                    "evictions",
                    Level::Ok,
                    format!("{p}, with keyspace events naming evicted keys: exact"),
                )
            }
            (Some(p), _) => self.add(
                "source",
                "evictions",
                Level::Warn,
                format!("{p} may evict keys, and without notify-keyspace-events E+e ferry can only sweep for them; enable the events (an ElastiCache parameter group) or use noeviction during the migration"),
            ),
            (None, _) => self.add(
                "source",
                "evictions",
                Level::Warn,
                "CONFIG GET is not allowed here: cannot tell the eviction policy or keyspace events; check them in the provider's settings".into(),
            ),
        }
    }

    async fn memory(
        &mut self,
        s_info: &str,
        t_info: &str,
        dst: &mut redis::aio::MultiplexedConnection,
    ) {
        let num = |inf: &str, f: &str| info_field(inf, f).and_then(|v| v.parse::<u64>().ok());
        let used = num(s_info, "used_memory").unwrap_or(0);
        let t_used = num(t_info, "used_memory").unwrap_or(0);
        let t_max = num(t_info, "maxmemory").unwrap_or(0);
        let mb = |b: u64| b as f64 / 1048576.0;
        if t_max == 0 {
            self.add(
                "target",
                "memory",
                Level::Ok,
                format!("no maxmemory; the source uses {:.1} MB", mb(used)),
            );
        } else if t_max < t_used + used + used / 10 {
            self.add(
                "target",
                "memory",
                Level::Warn,
                format!("maxmemory {:.1} MB, {:.1} MB used, and the source uses {:.1} MB: less than 10 % headroom; raise maxmemory or expect OOM replies (ferry reports them)", mb(t_max), mb(t_used), mb(used)),
            );
        } else {
            self.add(
                "target",
                "memory",
                Level::Ok,
                format!(
                    "maxmemory {:.1} MB for {:.1} MB of source data",
                    mb(t_max),
                    mb(used)
                ),
            );
        }
        match config_get(dst, "maxmemory-policy").await.as_deref() {
            Some("noeviction") | None => {}
            Some(p) if t_max > 0 => self.add(
                "target",
                "eviction policy",
                Level::Warn,
                format!("{p}: the target may evict keys silently when full; use noeviction for the migration"),
            ),
            Some(_) => {}
        }
    }

    /// A cluster source: its shards (each primary with its slots) and their replicas; returns
    /// the memory its primaries use together, when each answered.
    async fn cluster_source(&mut self) -> Option<u64> {
        let t = match crate::net::cluster::Topology::discover(&self.source).await {
            Ok(Some(t)) => t,
            Ok(None) => return None,
            Err(e) => {
                self.add("source", "cluster mode", Level::Fail, e.to_string());
                return None;
            }
        };
        // Replicas only inform: a shard without one is read on its primary all the same.
        let replicas = crate::net::cluster::replicas(&self.source)
            .await
            .unwrap_or_default();
        let total: usize = replicas.values().map(Vec::len).sum();
        let shards: Vec<String> = (0..t.shards.len())
            .map(|i| {
                let addr = t.address(i);
                let of = replicas.get(&addr).map(Vec::as_slice).unwrap_or_default();
                let with = match of {
                    [] => "no replica".to_string(),
                    [one] => format!("replica {one}"),
                    [first, rest @ ..] => format!("replicas {first} and {} more", rest.len()),
                };
                format!("{addr} {} ({with})", t.ranges_label(i))
            })
            .collect();
        self.add(
            "source",
            "cluster mode",
            Level::Ok,
            format!(
                "{} shards, {total} replicas: {}",
                t.shards.len(),
                shards.join("; ")
            ),
        );
        let mut used = 0;
        for shard in &t.shards {
            let mut con = shard.primary.control().await.ok()?;
            let memory: String = redis::cmd("INFO")
                .arg("memory")
                .query_async(&mut con)
                .await
                .ok()?;
            used += info_field(&memory, "used_memory")?.parse::<u64>().ok()?;
        }
        Some(used)
    }

    /// A cluster target: its primaries, and the source's dbs it can hold (db 0 only, after
    /// the plan's db moves).
    async fn cluster_target(&mut self, s_info: &str) {
        match crate::net::cluster::Topology::discover(&self.target).await {
            Ok(Some(t)) => self.add(
                "target",
                "cluster mode",
                Level::Ok,
                format!("{} primaries: {}", t.shards.len(), t.describe()),
            ),
            Ok(None) => {}
            Err(e) => self.add("target", "cluster mode", Level::Fail, e.to_string()),
        }
        let stray: Vec<u32> = s_info
            .lines()
            .filter_map(|l| l.strip_prefix("db")?.split_once(':')?.0.parse().ok())
            .filter(|&db| crate::plan::map_db(&self.db_moves, db) != 0)
            .collect();
        if stray.is_empty() {
            self.add(
                "pair",
                "dbs",
                Level::Ok,
                "the source's keys go to db 0, the only db of a cluster".into(),
            );
        } else {
            self.add(
                "pair",
                "dbs",
                Level::Fail,
                format!("a cluster has db 0 only, but the source has keys in {}; move them with the plan's rewrite, e.g. ferry.move_db({}, 0)", crate::net::cluster::stray_dbs(&stray), stray[0]),
            );
        }
    }

    async fn dbs(&mut self, s_info: &str, dst: &mut redis::aio::MultiplexedConnection) {
        let used: Vec<u32> = s_info
            .lines()
            .filter_map(|l| l.strip_prefix("db")?.split_once(':')?.0.parse().ok())
            .collect();
        let Some(&max) = used.iter().max() else {
            self.add("source", "dbs", Level::Ok, "empty".into());
            return;
        };
        match config_get(dst, "databases")
            .await
            .and_then(|d| d.parse::<u32>().ok())
        {
            Some(n) if max >= n => self.add(
                "pair",
                "dbs",
                Level::Fail,
                format!("the source uses db {max}, the target has {n} databases; raise `databases` on the target or move the db with the plan's move_db"),
            ),
            Some(_) => self.add("pair", "dbs", Level::Ok, format!("the source uses {} db(s), up to db {max}", used.len())),
            None => self.add(
                "pair",
                "dbs",
                Level::Warn,
                format!("the source uses up to db {max}; CONFIG GET databases is not allowed on the target, check it has that many"),
            ),
        }
    }

    async fn biggest(&mut self, src: &mut redis::aio::MultiplexedConnection) {
        let scan: redis::RedisResult<(String, Vec<Vec<u8>>)> = redis::cmd("SCAN")
            .arg(0)
            .arg("COUNT")
            .arg(SAMPLE_KEYS)
            .query_async(src)
            .await;
        let Ok((_, keys)) = scan else { return };
        let mut pipe = redis::pipe();
        for k in &keys {
            pipe.cmd("MEMORY").arg("USAGE").arg(k);
        }
        let sizes: Vec<Option<u64>> = pipe.query_async(src).await.unwrap_or_default();
        if let Some((k, b)) = keys
            .iter()
            .zip(sizes)
            .filter_map(|(k, s)| Some((k, s?)))
            .max_by_key(|(_, b)| *b)
        {
            let level = if b > crate::snapshot::DEFAULT_BIG_KEY_BYTES {
                Level::Warn
            } else {
                Level::Ok
            };
            self.add(
                "source",
                "biggest key",
                level,
                format!(
                    "{} is {:.1} MB in a sample of {} keys of db 0 (keys above 32 MB are copied type-aware, in chunks, which takes longer)",
                    crate::escape::quote(k),
                    b as f64 / 1048576.0,
                    keys.len()
                ),
            );
        }
    }
}

async fn info(con: &mut redis::aio::MultiplexedConnection) -> String {
    redis::cmd("INFO")
        .query_async(con)
        .await
        .unwrap_or_default()
}

/// `CONFIG GET name`'s value, `None` when `CONFIG` is not allowed.
async fn config_get(con: &mut redis::aio::MultiplexedConnection, name: &str) -> Option<String> {
    let pair: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg(name)
        .query_async(con)
        .await
        .ok()?;
    pair.into_iter().nth(1)
}
