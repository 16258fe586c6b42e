//! `ferry verify`: compares the source and the target key by key, in both directions, and
//! reports only differences that persist.
//!
//! Every key gets `TYPE`, `DUMP`, `PEXPIRETIME` and `PTTL` on both sides, pipelined per batch.
//! Equal DUMP payloads mean equal values (the common case); when they differ (encodings can
//! differ for equal values) the values are compared type-aware through digests read in windows
//! ([`digest`]). A key that differs is re-checked up to [`VerifyConfig::rechecks`] times: each
//! re-check reads the source again and then polls the target for up to
//! [`VerifyConfig::recheck_delay`], so a target that lags behind a busy source (replay catching
//! up) is not reported. A key missing on one side whose TTL on the other is within the
//! tolerance is about to expire and is not a difference.
//!
//! Either side may be a Redis Cluster (found from any node's URL): its keys are counted with
//! `INFO keyspace` on every primary, every primary is scanned, and each key is read on the
//! primary serving its slot (docs/cluster.md).

mod digest;

mod fenced;

pub use fenced::{FenceLink, FencedVerifier, KeyView, LOGICAL_MAX_BYTES, VerifyRules};

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use redis::Value;
use redis::aio::MultiplexedConnection;
use serde::Serialize;

use crate::escape::quote;
use crate::net::cluster::Topology;
use crate::net::{Endpoint, NetError};
use crate::snapshot::expiry::ExpiryRead;

/// Default re-checks of a key that differs.
pub const DEFAULT_RECHECKS: u32 = 3;
/// Default time a re-check waits for the target to converge.
pub const DEFAULT_RECHECK_DELAY: Duration = Duration::from_millis(200);
/// Default keys per pipelined batch.
pub const DEFAULT_BATCH: usize = 256;
/// Default TTL tolerance in milliseconds.
pub const DEFAULT_TTL_TOLERANCE_MS: i64 = 1000;
/// How often a re-check polls the target.
const POLL: Duration = Duration::from_millis(15);

/// What to compare and how tolerant to be.
#[derive(Debug, Clone)]
pub struct VerifyConfig {
    /// Dbs to compare; `None` for every db that has keys on either side.
    pub dbs: Option<Vec<u32>>,
    /// Keys to sample; `None` compares every key.
    pub sample: Option<u64>,
    /// Accepted difference between expiry times, in milliseconds.
    pub ttl_tolerance_ms: i64,
    /// Re-checks of a key that differs before it is reported.
    pub rechecks: u32,
    /// How long each re-check waits for the target to converge.
    pub recheck_delay: Duration,
    /// Keys per pipelined batch.
    pub batch: usize,
    /// Show a progress bar of keys checked (only when stderr is a terminal).
    pub progress: bool,
}

impl Default for VerifyConfig {
    fn default() -> VerifyConfig {
        VerifyConfig {
            dbs: None,
            sample: None,
            ttl_tolerance_ms: DEFAULT_TTL_TOLERANCE_MS,
            rechecks: DEFAULT_RECHECKS,
            recheck_delay: DEFAULT_RECHECK_DELAY,
            batch: DEFAULT_BATCH,
            progress: false,
        }
    }
}

/// Why a verification could not finish.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// A server could not be reached or rejected a command.
    #[error(transparent)]
    Net(#[from] NetError),
    /// The configuration is unusable.
    #[error("invalid verify configuration: {0}")]
    Config(String),
}

/// One difference that persisted through every re-check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Difference {
    pub db: u32,
    /// The key quoted as Redis shows it ([`crate::escape::quote`]).
    pub key: String,
    /// `missing on target`, `extra on target`, `type`, `value`, `ttl` or `field ttl`.
    pub kind: String,
    pub detail: String,
}

/// The outcome of a verification.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    pub keys_checked: u64,
    pub differences: Vec<Difference>,
    /// Differences per kind.
    pub by_kind: BTreeMap<String, u64>,
    /// Key re-checks done (one per key per round).
    pub rechecked: u64,
    pub elapsed_secs: f64,
    /// A sample's source keys: how many were drawn, and how many of those were skipped because
    /// the plan does not migrate them (filtered out or ignored by a rule). A sample of N
    /// compares N keys the plan migrates whenever that many exist.
    pub sample_drawn: u64,
    pub sample_skipped: u64,
}

impl VerifyReport {
    /// True when nothing differs.
    pub fn is_identical(&self) -> bool {
        self.differences.is_empty()
    }

    /// The differences grouped by kind, each kind with its count and up to `examples` keys
    /// with their details; empty when nothing differs.
    pub fn grouped(&self, examples: usize) -> String {
        let mut out = String::new();
        for (kind, n) in &self.by_kind {
            out.push_str(&format!("{kind}: {n}\n"));
            for (shown, d) in self
                .differences
                .iter()
                .filter(|d| &d.kind == kind)
                .enumerate()
            {
                if shown == examples {
                    out.push_str(&format!("  … and {} more\n", n - examples as u64));
                    break;
                }
                out.push_str(&format!("  db{} {}: {}\n", d.db, d.key, d.detail));
            }
        }
        out
    }

    /// One line for the log.
    pub fn summary(&self) -> String {
        let kinds: Vec<String> = self
            .by_kind
            .iter()
            .map(|(k, n)| format!("{k}: {n}"))
            .collect();
        let kinds = if kinds.is_empty() {
            String::new()
        } else {
            format!(" ({})", kinds.join(", "))
        };
        let sample = if self.sample_drawn > 0 {
            format!(
                " (a sample: {} source keys drawn, {} of them skipped as the plan does not migrate them)",
                self.sample_drawn, self.sample_skipped
            )
        } else {
            String::new()
        };
        format!(
            "verify: {} keys checked{sample}, {} differences{kinds}, {} re-checks, {:.1}s",
            self.keys_checked,
            self.differences.len(),
            self.rechecked,
            self.elapsed_secs
        )
    }
}

/// Which server a read goes to.
#[derive(Clone, Copy)]
enum Side {
    Source,
    Target,
}

/// What one side holds for one key.
#[derive(Debug, Clone)]
struct Fp {
    /// `TYPE`; "none" when the key does not exist.
    ty: String,
    /// A 64-bit hash and the length of the `DUMP` payload, so a batch of big keys is not held.
    dump: Option<(u64, usize)>,
    /// `PEXPIRETIME`: -1 no TTL, -2 missing.
    expire_at: i64,
    /// `PTTL`.
    pttl: i64,
    /// Type-aware digest, computed on demand.
    digest: Option<Option<u64>>,
}

impl Fp {
    fn exists(&self) -> bool {
        self.ty != "none"
    }

    fn missing() -> Fp {
        Fp {
            ty: "none".into(),
            dump: None,
            expire_at: -2,
            pttl: -2,
            digest: None,
        }
    }
}

/// A key that differed, with the latest reason.
#[derive(Clone)]
struct Suspect {
    db: u32,
    key: Vec<u8>,
    /// Where the key lives on the target (the plan's renames and db moves applied).
    tdb: u32,
    tkey: Vec<u8>,
    kind: &'static str,
    detail: String,
}

/// Compares a source and a target.
pub struct Verifier {
    source: Endpoint,
    target: Endpoint,
    cfg: VerifyConfig,
    conns: HashMap<u32, (MultiplexedConnection, MultiplexedConnection)>,
    rechecked: u64,
    mapper: Option<std::sync::Arc<dyn crate::command::Mapper>>,
    rules: Option<std::sync::Arc<dyn VerifyRules>>,
    /// Source connections by db for [`orphans`].
    orphan_conns: HashMap<u32, MultiplexedConnection>,
    /// How each side reads expiries (source, target), found once per run.
    expiry: (ExpiryRead, ExpiryRead),
    /// Both sides have hash-field expiry (Redis 7.4), so field TTLs are compared too.
    field_ttls: bool,
    /// Keys compared so far, on a terminal ([`VerifyConfig::progress`]).
    bar: Option<indicatif::ProgressBar>,
    /// A cluster target: its primaries, read and scanned each for its own slots.
    cluster: Option<ClusterSide>,
    /// A cluster source, read the same way.
    source_cluster: Option<ClusterSide>,
}

/// The primaries of a cluster (source or target), the slot each serves, and a connection to
/// each.
pub(crate) struct ClusterSide {
    nodes: Vec<Endpoint>,
    owner: HashMap<redis::cluster_routing::Slot, usize>,
    conns: HashMap<usize, MultiplexedConnection>,
}

impl ClusterSide {
    pub(crate) fn new(t: &Topology) -> ClusterSide {
        ClusterSide {
            nodes: t.shards.iter().map(|s| s.primary.clone()).collect(),
            owner: crate::net::cluster::all_slots()
                .map(|(n, slot)| (slot, t.shard_of_slot(n).unwrap_or(0)))
                .collect(),
            conns: HashMap::new(),
        }
    }

    fn node_of(&self, key: &[u8]) -> usize {
        self.owner
            .get(&crate::net::cluster::slot_of(key))
            .copied()
            .unwrap_or(0)
    }

    async fn conn(&mut self, node: usize) -> Result<MultiplexedConnection, VerifyError> {
        if let Some(c) = self.conns.get(&node) {
            return Ok(c.clone());
        }
        let c = self.nodes[node].control().await?;
        self.conns.insert(node, c.clone());
        Ok(c)
    }
}

impl Verifier {
    pub fn new(source: Endpoint, target: Endpoint, cfg: VerifyConfig) -> Verifier {
        Verifier {
            source,
            target,
            cfg,
            conns: HashMap::new(),
            rechecked: 0,
            mapper: None,
            rules: None,
            orphan_conns: HashMap::new(),
            expiry: (ExpiryRead::Pexpiretime, ExpiryRead::Pexpiretime),
            field_ttls: false,
            bar: None,
            cluster: None,
            source_cluster: None,
        }
    }

    /// Compares through a plan's keyspace rules: keys it leaves out are not expected on the
    /// target, renamed and moved keys are compared with their target names.
    pub fn with_mapper(mut self, mapper: std::sync::Arc<dyn crate::command::Mapper>) -> Verifier {
        self.mapper = Some(mapper);
        self
    }

    /// Applies a plan's verification rules (ignore, TTL tolerance, compare).
    pub fn with_rules(mut self, rules: std::sync::Arc<dyn VerifyRules>) -> Verifier {
        self.rules = Some(rules);
        self
    }

    fn target_of(&self, db: u32, key: &[u8]) -> Option<(u32, Vec<u8>)> {
        match &self.mapper {
            None => Some((db, key.to_vec())),
            Some(m) => m.map_key(db, key),
        }
    }

    fn tolerance(&self, db: u32, key: &[u8]) -> i64 {
        self.rules
            .as_ref()
            .map_or(self.cfg.ttl_tolerance_ms, |r| r.ttl_tolerance_ms(db, key))
    }

    /// Compares the selected keys in both directions and re-checks what differs.
    pub async fn run(mut self) -> Result<VerifyReport, VerifyError> {
        if self.cfg.batch == 0 {
            return Err(VerifyError::Config("batch must be at least 1".into()));
        }
        let started = Instant::now();
        let engines = (
            crate::net::Engine::detect(&self.source).await?,
            crate::net::Engine::detect(&self.target).await?,
        );
        self.expiry = (
            ExpiryRead::for_engine(&engines.0),
            ExpiryRead::for_engine(&engines.1),
        );
        // Toward a target without field TTLs (a plan's drop_field_ttls) there is nothing to
        // compare them with: values are compared, field TTLs are not.
        self.field_ttls = engines.0.has_hash_field_expiry() && engines.1.has_hash_field_expiry();
        if let Some(t) = Topology::discover(&self.target).await? {
            tracing::info!(
                target = %self.target,
                primaries = t.shards.len(),
                shards = %t.describe(),
                "The target is a Redis Cluster; each key is read on its primary."
            );
            self.cluster = Some(ClusterSide::new(&t));
        }
        if let Some(t) = Topology::discover(&self.source).await? {
            tracing::info!(
                source = %self.source,
                primaries = t.shards.len(),
                shards = %t.describe(),
                "The source is a Redis Cluster; each key is read on its primary."
            );
            self.source_cluster = Some(ClusterSide::new(&t));
        }
        let src_ks = self.keyspace(Side::Source).await?;
        let tgt_ks = self.keyspace(Side::Target).await?;
        let dbs: Vec<u32> = match &self.cfg.dbs {
            Some(d) => d.clone(),
            None => src_ks
                .keys()
                .chain(tgt_ks.keys())
                .copied()
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect(),
        };
        let src_total: u64 = dbs.iter().filter_map(|d| src_ks.get(d)).sum();
        if self.cfg.progress {
            let tgt_total: u64 = dbs.iter().filter_map(|d| tgt_ks.get(d)).sum();
            let total = match self.cfg.sample {
                Some(n) if n < src_total => n + (n / 10).max(1),
                _ => src_total + tgt_total,
            };
            self.bar = crate::snapshot::key_bar(total, "keys checked");
        }
        let mut suspects = Vec::new();
        let mut checked = 0u64;
        let (mut sample_drawn, mut sample_skipped) = (0u64, 0u64);
        match self.cfg.sample {
            Some(n) if n < src_total => {
                let tgt_total: u64 = dbs.iter().filter_map(|d| tgt_ks.get(d)).sum();
                for (db, share) in shares(&dbs, &src_ks, src_total, n) {
                    // On a cluster, a share from each primary, so every slot range is sampled.
                    let cons = self.conns_of(Side::Source, db).await?;
                    let per = share.div_ceil(cons.len() as u64);
                    for mut con in cons {
                        let (keys, drawn) = sample_keys(&mut con, per, self.cfg.batch, |k| {
                            !self.rules.as_ref().is_some_and(|r| r.ignored(db, k))
                                && self.target_of(db, k).is_some()
                        })
                        .await
                        .map_err(|e| self.net(Side::Source, &e))?;
                        sample_drawn += drawn;
                        sample_skipped += drawn - keys.len() as u64;
                        for chunk in keys.chunks(self.cfg.batch) {
                            checked += chunk.len() as u64;
                            suspects.extend(self.compare_batch(db, chunk).await?);
                            self.advance(chunk.len() as u64);
                        }
                    }
                }
                let extra_n = (n / 10).max(1);
                for (db, share) in shares(&dbs, &tgt_ks, tgt_total, extra_n) {
                    let keys = self.random_keys(Side::Target, db, share).await?;
                    for chunk in keys.chunks(self.cfg.batch) {
                        let (c, s) = self.extras(db, chunk).await?;
                        checked += c;
                        suspects.extend(s);
                        self.advance(chunk.len() as u64);
                    }
                }
            }
            _ => {
                for &db in &dbs {
                    checked += self.scan_source(db, &mut suspects).await?;
                    checked += self.scan_target(db, &mut suspects).await?;
                }
            }
        }
        // The same key can come twice from SCAN; keep one suspect per key.
        let mut seen = HashSet::new();
        suspects.retain(|s| seen.insert((s.db, s.key.clone())));
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
        let persisting = self.recheck(suspects).await?;
        let mut report = VerifyReport {
            keys_checked: checked,
            rechecked: self.rechecked,
            sample_drawn,
            sample_skipped,
            ..VerifyReport::default()
        };
        for s in persisting {
            *report.by_kind.entry(s.kind.to_string()).or_default() += 1;
            let detail = if (s.tdb, &s.tkey) == (s.db, &s.key) {
                s.detail
            } else {
                format!("{} (target db{} {})", s.detail, s.tdb, quote(&s.tkey))
            };
            report.differences.push(Difference {
                db: s.db,
                key: quote(&s.key),
                kind: s.kind.to_string(),
                detail,
            });
        }
        report
            .differences
            .sort_by(|a, b| (a.db, &a.key).cmp(&(b.db, &b.key)));
        report.elapsed_secs = started.elapsed().as_secs_f64();
        Ok(report)
    }

    fn advance(&self, n: u64) {
        if let Some(b) = &self.bar {
            crate::snapshot::advance_bar(b, n);
        }
    }

    fn endpoint(&self, side: Side) -> &Endpoint {
        match side {
            Side::Source => &self.source,
            Side::Target => &self.target,
        }
    }

    fn net(&self, side: Side, e: &redis::RedisError) -> VerifyError {
        VerifyError::Net(self.endpoint(side).classify(e))
    }

    /// The connection pair for a db, opened on first use.
    async fn conns(
        &mut self,
        db: u32,
    ) -> Result<(MultiplexedConnection, MultiplexedConnection), VerifyError> {
        if let Some(c) = self.conns.get(&db) {
            return Ok(c.clone());
        }
        let s = self.source.with_db(i64::from(db)).control().await?;
        let t = self.target.with_db(i64::from(db)).control().await?;
        self.conns.insert(db, (s.clone(), t.clone()));
        Ok((s, t))
    }

    /// A side's cluster, if it is one.
    fn cluster_of(&mut self, side: Side) -> Option<&mut ClusterSide> {
        match side {
            Side::Source => self.source_cluster.as_mut(),
            Side::Target => self.cluster.as_mut(),
        }
    }

    /// The connection of `side` that serves `key` (its primary on a cluster).
    async fn conn_for(
        &mut self,
        side: Side,
        db: u32,
        key: &[u8],
    ) -> Result<MultiplexedConnection, VerifyError> {
        match self.cluster_of(side) {
            Some(c) => {
                let node = c.node_of(key);
                c.conn(node).await
            }
            None => self.conn(side, db).await,
        }
    }

    /// A connection to every node of `side` holding keys of `db`: each primary of a cluster.
    async fn conns_of(
        &mut self,
        side: Side,
        db: u32,
    ) -> Result<Vec<MultiplexedConnection>, VerifyError> {
        match self.cluster_of(side) {
            Some(c) => {
                let mut cons = Vec::with_capacity(c.nodes.len());
                for node in 0..c.nodes.len() {
                    cons.push(c.conn(node).await?);
                }
                Ok(cons)
            }
            None => Ok(vec![self.conn(side, db).await?]),
        }
    }

    async fn conn(&mut self, side: Side, db: u32) -> Result<MultiplexedConnection, VerifyError> {
        let (s, t) = self.conns(db).await?;
        Ok(match side {
            Side::Source => s,
            Side::Target => t,
        })
    }

    /// Keys per db from `INFO keyspace`.
    async fn keyspace(&mut self, side: Side) -> Result<BTreeMap<u32, u64>, VerifyError> {
        let cluster = match side {
            Side::Source => &self.source_cluster,
            Side::Target => &self.cluster,
        };
        let nodes = match cluster {
            Some(c) => c.nodes.clone(),
            None => vec![self.endpoint(side).clone()],
        };
        let mut out = BTreeMap::new();
        for node in nodes {
            let mut con = node.control().await?;
            let info: String = redis::cmd("INFO")
                .arg("keyspace")
                .query_async(&mut con)
                .await
                .map_err(|e| self.net(side, &e))?;
            for (db, n) in parse_keyspace(&info) {
                *out.entry(db).or_default() += n;
            }
        }
        Ok(out)
    }

    /// `n` distinct keys from `RANDOMKEY`, with bounded attempts.
    async fn random_keys(
        &mut self,
        side: Side,
        db: u32,
        n: u64,
    ) -> Result<Vec<Vec<u8>>, VerifyError> {
        if let (Side::Target, Some(c)) = (side, self.cluster.as_mut()) {
            // A share from each primary, so every slot range is sampled.
            let per = n.div_ceil(c.nodes.len() as u64);
            let mut out = Vec::new();
            for node in 0..c.nodes.len() {
                let mut con = c.conn(node).await?;
                let keys = random_keys(&mut con, per, self.cfg.batch)
                    .await
                    .map_err(|e| VerifyError::Net(c.nodes[node].classify(&e)))?;
                out.extend(keys);
            }
            return Ok(out);
        }
        let mut con = self.conn(side, db).await?;
        random_keys(&mut con, n, self.cfg.batch)
            .await
            .map_err(|e| self.net(side, &e))
    }

    /// SCANs the source db (every primary of a cluster) and compares every key; returns keys
    /// compared.
    async fn scan_source(
        &mut self,
        db: u32,
        suspects: &mut Vec<Suspect>,
    ) -> Result<u64, VerifyError> {
        let mut checked = 0;
        for mut con in self.conns_of(Side::Source, db).await? {
            let mut cursor = 0;
            loop {
                let (next, keys) = scan_page(&mut con, cursor, self.cfg.batch)
                    .await
                    .map_err(|e| self.net(Side::Source, &e))?;
                checked += keys.len() as u64;
                suspects.extend(self.compare_batch(db, &keys).await?);
                self.advance(keys.len() as u64);
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
        }
        Ok(checked)
    }

    /// SCANs the target db for keys the source lacks; returns keys compared.
    async fn scan_target(
        &mut self,
        db: u32,
        suspects: &mut Vec<Suspect>,
    ) -> Result<u64, VerifyError> {
        let mut checked = 0;
        for mut con in self.conns_of(Side::Target, db).await? {
            let mut cursor = 0;
            loop {
                let (next, keys) = scan_page(&mut con, cursor, self.cfg.batch)
                    .await
                    .map_err(|e| self.net(Side::Target, &e))?;
                let (c, s) = self.extras(db, &keys).await?;
                checked += c;
                suspects.extend(s);
                self.advance(keys.len() as u64);
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
        }
        Ok(checked)
    }

    /// Of these target keys, compares those the source does not have.
    async fn extras(
        &mut self,
        tdb: u32,
        keys: &[Vec<u8>],
    ) -> Result<(u64, Vec<Suspect>), VerifyError> {
        let mapper = self.mapper.clone();
        let absent = orphans_routed(
            &self.source,
            &mut self.orphan_conns,
            self.source_cluster.as_mut(),
            mapper.as_ref(),
            tdb,
            keys,
        )
        .await?;
        let mut n = 0;
        let mut out = Vec::new();
        for (db, keys) in absent {
            n += keys.len() as u64;
            out.extend(self.compare_batch(db, &keys).await?);
        }
        Ok((n, out))
    }

    /// Compares one batch of source keys; returns the keys that differ.
    async fn compare_batch(
        &mut self,
        db: u32,
        keys: &[Vec<u8>],
    ) -> Result<Vec<Suspect>, VerifyError> {
        let mut probes = Vec::with_capacity(keys.len());
        for key in keys {
            if self.rules.as_ref().is_some_and(|r| r.ignored(db, key)) {
                continue;
            }
            // A key the plan leaves out is not expected on the target.
            if let Some((tdb, tkey)) = self.target_of(db, key) {
                probes.push(Suspect {
                    db,
                    key: key.clone(),
                    tdb,
                    tkey,
                    kind: "",
                    detail: String::new(),
                });
            }
        }
        if probes.is_empty() {
            return Ok(Vec::new());
        }
        let (mut src, mut tgt) = self.read_pairs(&probes).await?;
        let mut out = Vec::new();
        for (i, mut p) in probes.into_iter().enumerate() {
            if let Some((kind, detail)) = self.compare(&p, &mut src[i], &mut tgt[i]).await? {
                p.kind = kind;
                p.detail = detail;
                out.push(p);
            }
        }
        Ok(out)
    }

    /// Fingerprints of the probes' source keys and target keys (all of one source db), both
    /// sides read concurrently.
    async fn read_pairs(&mut self, probes: &[Suspect]) -> Result<(Vec<Fp>, Vec<Fp>), VerifyError> {
        let db = probes[0].db;
        // On a cluster source, by the primary serving each key.
        let mut by_snode: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (i, p) in probes.iter().enumerate() {
            let node = self
                .source_cluster
                .as_ref()
                .map_or(0, |c| c.node_of(&p.key));
            by_snode.entry(node).or_default().push(i);
        }
        let mut sgroups = Vec::with_capacity(by_snode.len());
        for idx in by_snode.into_values() {
            let skeys: Vec<Vec<u8>> = idx.iter().map(|&i| probes[i].key.clone()).collect();
            sgroups.push((
                self.conn_for(Side::Source, db, &skeys[0]).await?,
                idx,
                skeys,
            ));
        }
        // By target db, or on a cluster by the primary serving each key.
        let mut by_tdb: BTreeMap<(u32, usize), Vec<usize>> = BTreeMap::new();
        for (i, p) in probes.iter().enumerate() {
            let node = self.cluster.as_ref().map_or(0, |c| c.node_of(&p.tkey));
            by_tdb.entry((p.tdb, node)).or_default().push(i);
        }
        let mut groups = Vec::with_capacity(by_tdb.len());
        for ((tdb, _), idx) in by_tdb {
            let tkeys: Vec<Vec<u8>> = idx.iter().map(|&i| probes[i].tkey.clone()).collect();
            groups.push((
                self.conn_for(Side::Target, tdb, &tkeys[0]).await?,
                idx,
                tkeys,
            ));
        }
        let (s_expiry, t_expiry) = self.expiry;
        let read = |groups: Vec<(MultiplexedConnection, Vec<usize>, Vec<Vec<u8>>)>, expiry| async move {
            let mut out = Vec::with_capacity(groups.len());
            for (mut con, idx, keys) in groups {
                out.push((idx, fingerprints(&mut con, &keys, expiry).await));
            }
            out
        };
        let (src_groups, tgt_groups) =
            tokio::join!(read(sgroups, s_expiry), read(groups, t_expiry));
        let mut src: Vec<Fp> = vec![Fp::missing(); probes.len()];
        for (idx, fps) in src_groups {
            let fps = fps.map_err(|e| self.net(Side::Source, &e))?;
            for (i, fp) in idx.into_iter().zip(fps) {
                src[i] = fp;
            }
        }
        let mut tgt: Vec<Option<Fp>> = vec![None; probes.len()];
        for (idx, fps) in tgt_groups {
            let fps = fps.map_err(|e| self.net(Side::Target, &e))?;
            for (i, fp) in idx.into_iter().zip(fps) {
                tgt[i] = Some(fp);
            }
        }
        Ok((
            src,
            tgt.into_iter()
                .map(|f| f.unwrap_or_else(Fp::missing))
                .collect(),
        ))
    }

    /// Re-checks suspects: each round reads the source again, then polls the target until it
    /// matches or the delay runs out. Returns what never matched.
    async fn recheck(&mut self, mut remaining: Vec<Suspect>) -> Result<Vec<Suspect>, VerifyError> {
        for _ in 0..self.cfg.rechecks {
            if remaining.is_empty() {
                break;
            }
            let mut by_db: BTreeMap<u32, Vec<Suspect>> = BTreeMap::new();
            for s in remaining.drain(..) {
                by_db.entry(s.db).or_default().push(s);
            }
            for (_, mut group) in by_db {
                self.rechecked += group.len() as u64;
                let (mut src, _) = self.read_pairs(&group).await?;
                let mut pending: Vec<usize> = (0..group.len()).collect();
                let deadline = Instant::now() + self.cfg.recheck_delay;
                loop {
                    tokio::time::sleep(POLL.min(self.cfg.recheck_delay)).await;
                    let ask: Vec<Suspect> = pending.iter().map(|&i| group[i].clone()).collect();
                    let (_, mut tgt) = self.read_pairs(&ask).await?;
                    let mut still = Vec::new();
                    for (j, &i) in pending.iter().enumerate() {
                        let probe = group[i].clone();
                        if let Some((kind, detail)) =
                            self.compare(&probe, &mut src[i], &mut tgt[j]).await?
                        {
                            group[i].kind = kind;
                            group[i].detail = detail;
                            still.push(i);
                        }
                    }
                    pending = still;
                    if pending.is_empty() || Instant::now() >= deadline {
                        break;
                    }
                }
                let keep: HashSet<usize> = pending.into_iter().collect();
                remaining.extend(
                    group
                        .into_iter()
                        .enumerate()
                        .filter(|(i, _)| keep.contains(i))
                        .map(|(_, s)| s),
                );
            }
        }
        Ok(remaining)
    }

    /// Compares one key's two sides; `None` when they agree.
    async fn compare(
        &mut self,
        p: &Suspect,
        src: &mut Fp,
        tgt: &mut Fp,
    ) -> Result<Option<(&'static str, String)>, VerifyError> {
        let (db, key) = (p.db, p.key.as_slice());
        let tol = self.tolerance(db, key);
        let expiring = |fp: &Fp| fp.pttl >= 0 && fp.pttl <= tol;
        match (src.exists(), tgt.exists()) {
            (false, false) => return Ok(None),
            (true, false) => {
                return Ok((!expiring(src))
                    .then(|| ("missing on target", format!("{} on the source", src.ty))));
            }
            (false, true) => {
                return Ok((!expiring(tgt))
                    .then(|| ("extra on target", format!("{} on the target", tgt.ty))));
            }
            (true, true) => {}
        }
        if src.ty != tgt.ty {
            return Ok(Some((
                "type",
                format!("{} on the source, {} on the target", src.ty, tgt.ty),
            )));
        }
        if let Some(rules) = self.rules.clone().filter(|r| r.has_compare(db, key)) {
            // The plan decides, from canonical values read on both sides.
            let mut s = self.conn_for(Side::Source, db, key).await?;
            let mut t = self.conn_for(Side::Target, p.tdb, &p.tkey).await?;
            let a = fenced::read_view(&mut s, key, &src.ty)
                .await
                .map_err(|e| self.net(Side::Source, &e))?;
            let b = fenced::read_view(&mut t, &p.tkey, &tgt.ty)
                .await
                .map_err(|e| self.net(Side::Target, &e))?;
            return Ok(match rules.compare(db, &a, &b) {
                Ok(true) => None,
                Ok(false) => Some(("value", "the plan's compare said no".to_string())),
                Err(e) => Some(("value", format!("compare failed: {e}"))),
            });
        }
        if src.dump != tgt.dump {
            let mut s = self.conn_for(Side::Source, db, key).await?;
            let mut t = self.conn_for(Side::Target, p.tdb, &p.tkey).await?;
            if src.digest.is_none() {
                let d = digest::digest(&mut s, key, &src.ty)
                    .await
                    .map_err(|e| self.net(Side::Source, &e))?;
                src.digest = Some(d);
            }
            if tgt.digest.is_none() {
                let d = digest::digest(&mut t, &p.tkey, &tgt.ty)
                    .await
                    .map_err(|e| self.net(Side::Target, &e))?;
                tgt.digest = Some(d);
            }
            let same = matches!((src.digest, tgt.digest), (Some(Some(a)), Some(Some(b))) if a == b);
            if !same {
                return Ok(Some(("value", format!("{} values differ", src.ty))));
            }
            // Equal payloads carry equal field TTLs (RDB 12 holds them); equal values in
            // different payloads may still differ in them.
            if self.field_ttls && src.ty == "hash" {
                let a = crate::snapshot::field_expiries(&mut s, key)
                    .await
                    .map_err(|e| self.net(Side::Source, &e))?;
                let b = crate::snapshot::field_expiries(&mut t, &p.tkey)
                    .await
                    .map_err(|e| self.net(Side::Target, &e))?;
                if let Some(d) = digest::field_ttl_difference(&a, &b, tol) {
                    return Ok(Some(("field ttl", d)));
                }
            }
        }
        Ok(ttl_difference(src.expire_at, tgt.expire_at, tol).map(|d| ("ttl", d)))
    }
}

/// How two absolute expiry times (`PEXPIRETIME`; negative for none) differ beyond `tol`
/// milliseconds, described; `None` when they agree.
pub(crate) fn ttl_difference(source: i64, target: i64, tol: i64) -> Option<String> {
    let differs = match (source, target) {
        (a, b) if a < 0 && b < 0 => false,
        (a, b) if a < 0 || b < 0 => true,
        (a, b) => (a - b).abs() > tol,
    };
    let show = |t: i64| {
        if t < 0 {
            "no TTL".to_string()
        } else {
            format!("expires at {t} ms")
        }
    };
    differs.then(|| format!("source {}, target {}", show(source), show(target)))
}

/// `n` distinct keys of the connection's db from `RANDOMKEY`, `batch` per round trip, with
/// bounded attempts (a small db may not have `n`).
/// Draws distinct random keys until `n` of them pass `keep` (or the db runs out of new ones):
/// returns the kept keys and how many were drawn in all. A plan that migrates half the keys
/// therefore still gets a sample of `n` keys it migrates.
pub(crate) async fn sample_keys(
    con: &mut MultiplexedConnection,
    n: u64,
    batch: usize,
    keep: impl Fn(&[u8]) -> bool,
) -> redis::RedisResult<(Vec<Vec<u8>>, u64)> {
    let mut seen = HashSet::new();
    let mut kept = Vec::new();
    // Each round asks for what is missing, scaled by the share kept so far; a round that
    // brings no new key means the db has no more (RANDOMKEY repeats itself on small dbs).
    for _ in 0..32 {
        let missing = n - kept.len() as u64;
        if missing == 0 {
            break;
        }
        let ratio = if kept.is_empty() {
            if seen.is_empty() { 1 } else { 4 }
        } else {
            (seen.len() as u64).div_ceil(kept.len() as u64).clamp(1, 64)
        };
        let mut fresh = 0;
        for key in random_keys(con, missing.saturating_mul(ratio), batch).await? {
            if !seen.insert(key.clone()) {
                continue;
            }
            fresh += 1;
            if (kept.len() as u64) < n && keep(&key) {
                kept.push(key);
            }
        }
        if fresh == 0 {
            break;
        }
    }
    Ok((kept, seen.len() as u64))
}

pub(crate) async fn random_keys(
    con: &mut MultiplexedConnection,
    n: u64,
    batch: usize,
) -> redis::RedisResult<Vec<Vec<u8>>> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let mut attempts = n.saturating_mul(3) + 16;
    while (out.len() as u64) < n && attempts > 0 {
        let k = ((n - out.len() as u64).min(batch as u64)).min(attempts);
        attempts -= k;
        let mut pipe = redis::pipe();
        for _ in 0..k {
            pipe.cmd("RANDOMKEY");
        }
        let keys: Vec<Option<Vec<u8>>> = pipe.query_async(con).await?;
        if keys.iter().all(Option::is_none) {
            break;
        }
        for key in keys.into_iter().flatten() {
            if (out.len() as u64) < n && seen.insert(key.clone()) {
                out.push(key);
            }
        }
    }
    Ok(out)
}

/// One `SCAN` step: the next cursor (0 at the end) and the keys.
pub(crate) async fn scan_page(
    con: &mut MultiplexedConnection,
    cursor: u64,
    count: usize,
) -> redis::RedisResult<(u64, Vec<Vec<u8>>)> {
    redis::cmd("SCAN")
        .arg(cursor)
        .arg("COUNT")
        .arg(count)
        .query_async(con)
        .await
}

/// Of these target keys in `tdb`, those no source key exists for, each named by the first
/// source key it can come from (the plan's renames may give several), grouped by source db.
/// Target keys no source key maps to are not the migration's and are left out, and so are the
/// shard leases of split replay processes (`ferry:lease:*`, `docs/leases.md`). A comparison
/// from the source side cannot have seen these: they are the extras to check.
pub(crate) async fn orphans(
    source: &Endpoint,
    conns: &mut HashMap<u32, MultiplexedConnection>,
    mapper: Option<&std::sync::Arc<dyn crate::command::Mapper>>,
    tdb: u32,
    keys: &[Vec<u8>],
) -> Result<BTreeMap<u32, Vec<Vec<u8>>>, VerifyError> {
    orphans_routed(source, conns, None, mapper, tdb, keys).await
}

/// [`orphans`], asking a cluster source each key on the primary serving its slot.
pub(crate) async fn orphans_routed(
    source: &Endpoint,
    conns: &mut HashMap<u32, MultiplexedConnection>,
    mut cluster: Option<&mut ClusterSide>,
    mapper: Option<&std::sync::Arc<dyn crate::command::Mapper>>,
    tdb: u32,
    keys: &[Vec<u8>],
) -> Result<BTreeMap<u32, Vec<Vec<u8>>>, VerifyError> {
    let candidates: Vec<Vec<(u32, Vec<u8>)>> = keys
        .iter()
        .map(|k| match mapper {
            _ if crate::replay::lease::is_lease_key(k) => Vec::new(),
            None => vec![(tdb, k.clone())],
            Some(m) => m.unmap_candidates(tdb, k),
        })
        .collect();
    // By source db, or on a cluster (db 0 only) by the primary serving each key:
    // (source db, node) → (index into `keys`, source key) pairs to ask about.
    type Asks<'a> = BTreeMap<(u32, usize), Vec<(usize, &'a [u8])>>;
    let mut by_db: Asks<'_> = BTreeMap::new();
    for (i, cands) in candidates.iter().enumerate() {
        for (db, key) in cands {
            let node = cluster.as_ref().map_or(0, |c| c.node_of(key));
            by_db.entry((*db, node)).or_default().push((i, key));
        }
    }
    let mut exists = vec![false; keys.len()];
    for ((db, node), asks) in by_db {
        let mut routed;
        let con = match cluster.as_mut() {
            Some(c) => {
                routed = c.conn(node).await?;
                &mut routed
            }
            None => match conns.entry(db) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(source.with_db(i64::from(db)).control().await?)
                }
            },
        };
        let mut pipe = redis::pipe();
        for (_, k) in &asks {
            pipe.cmd("EXISTS").arg(*k);
        }
        let found: Vec<i64> = pipe
            .query_async(con)
            .await
            .map_err(|e| VerifyError::Net(source.classify(&e)))?;
        for ((i, _), f) in asks.iter().zip(found) {
            exists[*i] |= f > 0;
        }
    }
    let mut absent: BTreeMap<u32, Vec<Vec<u8>>> = BTreeMap::new();
    for (cands, found) in candidates.into_iter().zip(exists) {
        if let (false, Some((db, key))) = (found, cands.into_iter().next()) {
            absent.entry(db).or_default().push(key);
        }
    }
    Ok(absent)
}

async fn fingerprints(
    con: &mut MultiplexedConnection,
    keys: &[Vec<u8>],
    expiry: ExpiryRead,
) -> redis::RedisResult<Vec<Fp>> {
    // Before Redis 7.0 there is no PEXPIRETIME: the key's PTTL stands for it (the verifier
    // compares expiries with a tolerance), read twice so that the reply shape stays one.
    let mut pipe = redis::pipe();
    for k in keys {
        pipe.cmd("TYPE").arg(k);
        pipe.cmd("DUMP").arg(k);
        pipe.cmd(expiry.command()).arg(k);
        pipe.cmd("PTTL").arg(k);
    }
    let replies: Vec<Value> = pipe.query_async(con).await?;
    let mut out = Vec::with_capacity(keys.len());
    let now = crate::clock::now_ms();
    for r in replies.chunks(4) {
        let int = |v: &Value| match v {
            Value::Int(i) => *i,
            _ => -2,
        };
        out.push(Fp {
            ty: String::from_utf8_lossy(&digest::bytes(&r[0])).into_owned(),
            dump: match &r[1] {
                Value::Nil => None,
                Value::BulkString(b) => Some((digest::hash_parts(&[b]), b.len())),
                v => Some((digest::hash_parts(&[&digest::bytes(v)]), 0)),
            },
            expire_at: match (expiry, int(&r[2])) {
                // ferry's clock stands in for the server's: within the TTL tolerance.
                (ExpiryRead::PttlAndTime, t) if t >= 0 => now + t,
                (_, t) => t,
            },
            pttl: int(&r[3]),
            digest: None,
        });
    }
    Ok(out)
}

/// `db3:keys=10,expires=…` lines of `INFO keyspace` as db → keys.
pub(crate) fn parse_keyspace(info: &str) -> BTreeMap<u32, u64> {
    let mut out = BTreeMap::new();
    for line in info.lines() {
        let Some(rest) = line.strip_prefix("db") else {
            continue;
        };
        let Some((db, fields)) = rest.split_once(':') else {
            continue;
        };
        let Ok(db) = db.parse::<u32>() else { continue };
        let keys = fields
            .split(',')
            .find_map(|f| f.strip_prefix("keys="))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .unwrap_or(0);
        if keys > 0 {
            out.insert(db, keys);
        }
    }
    out
}

/// Splits `n` samples across dbs in proportion to their sizes.
fn shares(dbs: &[u32], sizes: &BTreeMap<u32, u64>, total: u64, n: u64) -> Vec<(u32, u64)> {
    if total == 0 || n == 0 {
        return Vec::new();
    }
    let mut out: Vec<(u32, u64)> = dbs
        .iter()
        .map(|d| {
            let size = sizes.get(d).copied().unwrap_or(0);
            (
                *d,
                (u128::from(n) * u128::from(size) / u128::from(total)) as u64,
            )
        })
        .collect();
    let mut left = n.saturating_sub(out.iter().map(|(_, s)| s).sum());
    for (d, s) in out.iter_mut() {
        let room = sizes.get(d).copied().unwrap_or(0).saturating_sub(*s);
        let add = room.min(left);
        *s += add;
        left -= add;
    }
    out.retain(|(_, s)| *s > 0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyspace_lines_parse() {
        let ks = parse_keyspace("# Keyspace\r\ndb0:keys=10,expires=2,avg_ttl=0\r\ndb3:keys=1\r\n");
        assert_eq!(ks, BTreeMap::from([(0, 10), (3, 1)]));
    }

    #[test]
    fn shares_add_up() {
        let sizes = BTreeMap::from([(0, 100), (1, 50), (2, 1)]);
        let s = shares(&[0, 1, 2], &sizes, 151, 10);
        assert_eq!(s.iter().map(|(_, n)| n).sum::<u64>(), 10);
    }

    #[test]
    fn grouped_report_lists_each_kind_with_examples() {
        let d = |key: &str, kind: &str| Difference {
            db: 0,
            key: format!("{key:?}"),
            kind: kind.into(),
            detail: format!("detail of {key}"),
        };
        let report = VerifyReport {
            differences: vec![
                d("a", "value"),
                d("b", "value"),
                d("c", "value"),
                d("m", "ttl"),
            ],
            by_kind: BTreeMap::from([("value".into(), 3), ("ttl".into(), 1)]),
            ..VerifyReport::default()
        };
        assert_eq!(
            report.grouped(2),
            "ttl: 1\n  db0 \"m\": detail of m\nvalue: 3\n  db0 \"a\": detail of a\n  db0 \"b\": detail of b\n  … and 1 more\n"
        );
        assert_eq!(VerifyReport::default().grouped(2), "");
    }
}
