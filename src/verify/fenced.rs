//! Fenced verification inside a live migration: each key is read on the source inside a fenced
//! read, and on the target when replay reaches that fence, so both sides are compared at the
//! same position in the write stream and a hot key never raises a false alarm.
//!
//! ## Behavior
//! - Round one reads `DUMP` and `PEXPIRETIME` on both sides. Equal payloads mean equal values.
//! - Payloads that differ (encodings can differ for equal values; a stream's pending entries
//!   carry delivery times) get a second fenced round with type-aware reads (`HGETALL`,
//!   `ZRANGE … WITHSCORES`, `XRANGE` and the groups…), compared canonically. Keys above
//!   [`LOGICAL_MAX_BYTES`] are compared through windowed digests instead, unfenced, with
//!   re-checks: reading a huge value whole would stall both servers.
//! - Hashes with Redis 7.4 field TTLs: equal payloads carry equal field TTLs; when payloads
//!   differ and the values agree, each field's `HPEXPIRETIME` is compared (within the TTL
//!   tolerance), unfenced with re-checks like a digest, when both sides have field TTLs.
//! - A key whose fence finds it unsettled (a re-copy pending) is checked again at a later fence.
//! - Both directions, a `SCAN` page at a time: source keys (all, or a sample without
//!   duplicates), then target keys for which no source key (through the plan's renames) exists;
//!   for those the source side of the fence says whether that is still so.
//! - The plan's rules apply per source key: ignored keys are skipped, TTL tolerances differ
//!   per pattern, and a `compare` function decides equality from canonical values.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::Value;
use tokio::sync::oneshot;

use super::{Difference, VerifyConfig, VerifyError, VerifyReport, digest};
use crate::capture::PeerRegistry;
use crate::clock::now_ms;
use crate::command::Argv;
use crate::command::Mapper;
use crate::escape::quote;
use crate::journal::check_read_id;
use crate::net::cluster::Topology;
use crate::net::{Endpoint, SourceNodes};
use crate::replay::{CheckSlot, StitchShared};
use crate::snapshot::{FencedReader, next_read_id};
use redis::aio::MultiplexedConnection;

/// Payloads larger than this are compared through digests rather than read whole.
pub const LOGICAL_MAX_BYTES: usize = 8 << 20;
/// Keys per `SCAN` step.
const SCAN_COUNT: usize = 1000;
/// Keys gathered before they are checked: enough batches for every reader and the in-flight
/// window, few enough that memory stays bounded whatever the keyspace.
const CHECK_KEYS: usize = 16_384;
/// Fenced batches whose target side may be outstanding at once.
const IN_FLIGHT: usize = 8;
/// Source connections reading fenced batches at once.
const READERS: usize = 4;
/// Rounds for keys that were unsettled at their fence.
const UNSETTLED_ROUNDS: u32 = 20;

/// One side of a key, as a plan's `compare` function sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyView {
    /// The key on this side.
    pub key: Vec<u8>,
    /// `TYPE` name; `none` when missing.
    pub type_name: String,
    /// A canonical text form: equal values give equal text.
    pub value: String,
    /// Milliseconds left as `PTTL` reports them (`-1` no TTL, `-2` missing).
    pub ttl_ms: i64,
}

/// The plan's verification rules, by source key.
pub trait VerifyRules: Send + Sync {
    /// Skip this key.
    fn ignored(&self, db: u32, key: &[u8]) -> bool;
    /// TTL tolerance for this key.
    fn ttl_tolerance_ms(&self, db: u32, key: &[u8]) -> i64;
    /// True when a custom comparison decides this key.
    fn has_compare(&self, db: u32, key: &[u8]) -> bool;
    /// The custom comparison: `Ok(true)` when equal; `Err` when the function failed.
    fn compare(&self, db: u32, source: &KeyView, target: &KeyView) -> Result<bool, String>;
}

/// What a fenced verification needs from the running migration.
#[derive(Clone)]
pub struct FenceLink {
    /// The capture nodes (one per shard of a cluster source): a key's fenced reads must be in
    /// the stream of its node.
    pub nodes: SourceNodes,
    /// The target.
    pub target: Endpoint,
    /// ferry's connections, so capture sees the reads as fences.
    pub peers: Arc<PeerRegistry>,
    /// Where probes wait for their fences.
    pub shared: Arc<StitchShared>,
    /// The plan's keyspace rules.
    pub mapper: Option<Arc<dyn Mapper>>,
}

/// A fenced verification of a running migration.
pub struct FencedVerifier {
    link: FenceLink,
    cfg: VerifyConfig,
    rules: Option<Arc<dyn VerifyRules>>,
    fence_timeout: Duration,
    /// Both sides have hash-field TTLs (Redis 7.4), found at the start of a run.
    field_ttls: bool,
    /// A cluster target, found at the start of a run: unfenced reads go to each key's primary.
    target_cluster: Option<Topology>,
    /// A cluster source's primaries, asked whether a target key's source key exists.
    source_side: Option<super::ClusterSide>,
}

/// One key's reads on one side.
#[derive(Debug, Clone, Default)]
struct Side {
    payload: Option<Vec<u8>>,
    expire_at: i64,
    /// Type-aware reads (round two).
    logical: Vec<Value>,
}

/// A key under check.
#[derive(Debug, Clone)]
struct Probe {
    db: u32,
    key: Vec<u8>,
    tdb: u32,
    tkey: Vec<u8>,
    /// The source type (round two), or `None` in round one.
    logical_type: Option<&'static str>,
}

/// Registers a batch's target reads, then reads the source inside a fenced read; hands the
/// reader back with the outcome.
async fn send(
    (index, mut reader): (usize, FencedReader),
    shared: Arc<StitchShared>,
    node: String,
    batch: Vec<Probe>,
) -> ((usize, FencedReader), Result<Sent, VerifyError>) {
    let db = batch[0].db;
    let id = check_read_id(&next_read_id());
    let mut source_cmds = Vec::with_capacity(batch.len());
    let mut slots = Vec::with_capacity(batch.len());
    let mut waits = Vec::with_capacity(batch.len());
    for p in &batch {
        source_cmds.push(reads(&p.key, p.logical_type));
        let (reply, wait) = oneshot::channel();
        slots.push(Some(CheckSlot {
            db: p.tdb,
            key: p.tkey.clone(),
            cmds: reads(&p.tkey, p.logical_type),
            reply,
        }));
        waits.push(wait);
    }
    shared.checks.register(id.clone(), slots);
    let out = match reader.probe(db, &id, &source_cmds).await {
        Ok(source) => Ok(Sent {
            id,
            batch,
            source,
            waits,
        }),
        Err(e) => {
            shared.checks.remove(&id);
            Err(VerifyError::Config(format!("fenced read on {node}: {e}")))
        }
    };
    ((index, reader), out)
}

/// A batch whose source side is read and whose target side is on its way.
struct Sent {
    id: String,
    batch: Vec<Probe>,
    source: Vec<Vec<Value>>,
    waits: Vec<oneshot::Receiver<Vec<Value>>>,
}

enum Outcome {
    Same,
    Differs(&'static str, String),
    /// Round two wanted: payloads differ, or a compare function decides.
    Logical(&'static str),
    /// Too big to read whole: digests.
    Digest(&'static str),
    /// Equal hash values in different payloads: field TTLs still to compare.
    FieldTtls,
}

impl FencedVerifier {
    /// A verifier on a running migration.
    pub fn new(link: FenceLink, cfg: VerifyConfig) -> FencedVerifier {
        FencedVerifier {
            link,
            cfg,
            rules: None,
            fence_timeout: Duration::from_secs(120),
            field_ttls: false,
            target_cluster: None,
            source_side: None,
        }
    }

    /// Applies the plan's rules.
    pub fn with_rules(mut self, rules: Arc<dyn VerifyRules>) -> FencedVerifier {
        self.rules = Some(rules);
        self
    }

    fn tolerance(&self, db: u32, key: &[u8]) -> i64 {
        self.rules
            .as_ref()
            .map_or(self.cfg.ttl_tolerance_ms, |r| r.ttl_tolerance_ms(db, key))
    }

    fn map(&self, db: u32, key: &[u8]) -> Option<(u32, Vec<u8>)> {
        match &self.link.mapper {
            None => Some((db, key.to_vec())),
            Some(m) => m.map_key(db, key),
        }
    }

    /// Compares the selected keys in both directions.
    pub async fn run(mut self) -> Result<VerifyReport, VerifyError> {
        if self.cfg.batch == 0 {
            return Err(VerifyError::Config("batch must be at least 1".into()));
        }
        // Both sides answer the same reads at one stream position, expiry as an absolute time.
        self.field_ttls = true;
        for ep in [self.link.nodes.first(), &self.link.target] {
            let engine = crate::net::Engine::detect(ep).await?;
            self.field_ttls &= engine.has_hash_field_expiry();
            if !engine.has_pexpiretime() {
                return Err(VerifyError::Config(format!(
                    "fenced verification inside a run needs PEXPIRETIME (Redis 7.0 or later) on both sides, and {} runs {engine}; run `ferry verify` after the final fence instead",
                    ep.redacted()
                )));
            }
        }
        let started = Instant::now();
        // Readers per node: a key's fenced read goes to its shard's node.
        let mut reader = Vec::with_capacity(READERS * self.link.nodes.len());
        for (i, node) in self.link.nodes.all().iter().enumerate() {
            for _ in 0..READERS {
                reader.push((
                    i,
                    FencedReader::connect(node, &self.link.peers)
                        .await
                        .map_err(VerifyError::Config)?,
                ));
            }
        }
        self.source_side = self.link.nodes.topology().map(super::ClusterSide::new);
        self.target_cluster = Topology::discover(&self.link.target).await?;
        let target_nodes = Topology::nodes(self.target_cluster.as_ref(), &self.link.target);
        let mut node_ks = Vec::with_capacity(self.link.nodes.len());
        let mut src_ks: BTreeMap<u32, u64> = BTreeMap::new();
        for node in self.link.nodes.all() {
            let ks = keyspace(node).await?;
            for (db, n) in &ks {
                *src_ks.entry(*db).or_default() += n;
            }
            node_ks.push(ks);
        }
        let mut tgt_ks = BTreeMap::new();
        for node in &target_nodes {
            for (db, n) in keyspace(node).await? {
                *tgt_ks.entry(db).or_default() += n;
            }
        }
        let src_dbs: Vec<u32> = match &self.cfg.dbs {
            Some(d) => d.clone(),
            None => src_ks.keys().copied().collect(),
        };
        let mut run = Run::default();

        // Source → target, a SCAN page (or a sample) at a time, so memory follows the batch.
        let src_total: u64 = src_dbs.iter().filter_map(|d| src_ks.get(d)).sum();
        let sample = self.cfg.sample.filter(|n| *n < src_total);
        let nodes = self.link.nodes.clone();
        for (&db, (i, node)) in src_dbs
            .iter()
            .flat_map(|db| std::iter::repeat(db).zip(nodes.all().iter().enumerate()))
        {
            let mut con = node.with_db(i64::from(db)).control().await?;
            let net = |e: redis::RedisError| VerifyError::Net(node.classify(&e));
            if let Some(n) = sample {
                let share = share_of(n, node_ks[i].get(&db).copied().unwrap_or(0), src_total);
                let (keys, drawn) = super::sample_keys(&mut con, share, self.cfg.batch, |k| {
                    !self.rules.as_ref().is_some_and(|r| r.ignored(db, k))
                        && self.map(db, k).is_some()
                })
                .await
                .map_err(net)?;
                run.sample_drawn += drawn;
                run.sample_skipped += drawn - keys.len() as u64;
                self.check_keys(&mut reader, &mut run, db, keys).await?;
                continue;
            }
            // Several SCAN steps per check, so the readers' pipeline stays full between them.
            let (mut cursor, mut keys) = (0, Vec::new());
            loop {
                let (next, page) = super::scan_page(&mut con, cursor, SCAN_COUNT)
                    .await
                    .map_err(net)?;
                keys.extend(page);
                cursor = next;
                if cursor == 0 || keys.len() >= CHECK_KEYS {
                    let keys = std::mem::take(&mut keys);
                    self.check_keys(&mut reader, &mut run, db, keys).await?;
                }
                if cursor == 0 {
                    break;
                }
            }
        }

        // Target → source: target keys whose source key does not exist, checked at a fence
        // (the source side of the read then says whether it still does not).
        let tgt_total: u64 = tgt_ks.values().sum();
        let mut source_conns = HashMap::new();
        let per_node = tgt_ks
            .iter()
            .flat_map(|(&tdb, &size)| target_nodes.iter().map(move |n| (tdb, size, n.clone())));
        for (tdb, size, node) in per_node {
            // Each primary of a cluster holds its share; a sample asks each for the whole.
            let size = size.div_ceil(target_nodes.len() as u64);
            let mut con = node.with_db(i64::from(tdb)).control().await?;
            let net = |e: redis::RedisError| VerifyError::Net(self.link.target.classify(&e));
            let mut cursor = 0;
            loop {
                let keys = if let Some(n) = sample {
                    let share = share_of((n / 10).max(1), size, tgt_total);
                    super::random_keys(&mut con, share, self.cfg.batch)
                        .await
                        .map_err(net)?
                } else {
                    let mut keys = Vec::new();
                    while keys.len() < CHECK_KEYS {
                        let (next, page) = super::scan_page(&mut con, cursor, SCAN_COUNT)
                            .await
                            .map_err(net)?;
                        keys.extend(page);
                        cursor = next;
                        if cursor == 0 {
                            break;
                        }
                    }
                    keys
                };
                let absent = super::orphans_routed(
                    self.link.nodes.first(),
                    &mut source_conns,
                    self.source_side.as_mut(),
                    self.link.mapper.as_ref(),
                    tdb,
                    &keys,
                )
                .await?;
                for (db, keys) in absent {
                    if self.cfg.dbs.as_ref().is_none_or(|d| d.contains(&db)) {
                        self.check_keys(&mut reader, &mut run, db, keys).await?;
                    }
                }
                if sample.is_some() || cursor == 0 {
                    break;
                }
            }
        }

        // Unsettled keys: later fences.
        let mut round = 0;
        while !run.unsettled.is_empty() && round < UNSETTLED_ROUNDS {
            round += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
            let again = std::mem::take(&mut run.unsettled);
            run.rechecked += again.len() as u64;
            self.check_probes(&mut reader, &mut run, again).await?;
        }
        for p in std::mem::take(&mut run.unsettled) {
            run.diffs.push(diff(
                &p,
                "unsettled",
                "a re-copy was still pending at every fence".into(),
            ));
        }
        // Round two: type-aware reads at a new fence.
        let logical = std::mem::take(&mut run.logical);
        run.rechecked += logical.len() as u64;
        self.check_probes(&mut reader, &mut run, logical).await?;
        // Keys too big to read whole.
        for (p, ty) in std::mem::take(&mut run.digest) {
            run.rechecked += 1;
            if let Some(detail) = self.digest_compare(&p, ty).await? {
                run.diffs.push(diff(&p, "value", detail));
            }
        }
        for p in std::mem::take(&mut run.field_ttls) {
            if let Some(detail) = self.field_ttl_compare(&p).await? {
                run.diffs.push(diff(&p, "field ttl", detail));
            }
        }

        let mut report = VerifyReport {
            keys_checked: run.checked,
            rechecked: run.rechecked,
            sample_drawn: run.sample_drawn,
            sample_skipped: run.sample_skipped,
            ..VerifyReport::default()
        };
        run.diffs
            .sort_by(|a, b| (a.db, &a.key).cmp(&(b.db, &b.key)));
        run.diffs.dedup_by(|a, b| a.db == b.db && a.key == b.key);
        for d in run.diffs {
            *report.by_kind.entry(d.kind.clone()).or_default() += 1;
            report.differences.push(d);
        }
        report.elapsed_secs = started.elapsed().as_secs_f64();
        Ok(report)
    }

    /// Round one for source keys of `db`.
    async fn check_keys(
        &self,
        reader: &mut Vec<(usize, FencedReader)>,
        run: &mut Run,
        db: u32,
        keys: Vec<Vec<u8>>,
    ) -> Result<(), VerifyError> {
        let mut probes = Vec::with_capacity(keys.len());
        for key in keys {
            if self.rules.as_ref().is_some_and(|r| r.ignored(db, &key)) {
                run.ignored += 1;
                continue;
            }
            // A key the plan leaves out is not expected on the target.
            let Some((tdb, tkey)) = self.map(db, &key) else {
                continue;
            };
            run.checked += 1;
            probes.push(Probe {
                db,
                key,
                tdb,
                tkey,
                logical_type: None,
            });
        }
        self.check_probes(reader, run, probes).await
    }

    /// Checks probes in fenced batches (one db per batch): the source reads run on several
    /// connections at once, and several batches' target sides may be outstanding, since a
    /// batch's target reads wait for replay to reach its fence.
    async fn check_probes(
        &self,
        readers: &mut Vec<(usize, FencedReader)>,
        run: &mut Run,
        mut probes: Vec<Probe>,
    ) -> Result<(), VerifyError> {
        // One batch per db and node; on a cluster, per hash slot too (a cluster refuses a
        // transaction across slots), with more batches in flight since they are small.
        let nodes = &self.link.nodes;
        let slot = |p: &Probe| {
            nodes
                .is_cluster()
                .then(|| crate::net::cluster::slot_number(&p.key))
        };
        probes.sort_by_key(|p| (p.db, nodes.index_of(&p.key), slot(p)));
        let max_in_flight = if nodes.is_cluster() { 64 } else { IN_FLIGHT };
        let mut idle = std::mem::take(readers);
        let mut sending = tokio::task::JoinSet::new();
        let mut in_flight = std::collections::VecDeque::new();
        let mut failure = None;
        let batches: Vec<Vec<Probe>> = probes
            .chunk_by(|a, b| {
                (a.db, nodes.index_of(&a.key), slot(a)) == (b.db, nodes.index_of(&b.key), slot(b))
            })
            .flat_map(|g| g.chunks(self.cfg.batch).map(<[Probe]>::to_vec))
            .collect();
        for batch in batches {
            while in_flight.len() >= max_in_flight {
                let sent = in_flight.pop_front().expect("not empty");
                self.collect(run, sent).await?;
            }
            let node = nodes.index_of(&batch[0].key);
            let reader = loop {
                if let Some(at) = idle.iter().position(|(i, _)| *i == node) {
                    break idle.swap_remove(at).1;
                }
                match sending.join_next().await {
                    Some(Ok((r, sent))) => {
                        idle.push(r);
                        match sent {
                            Ok(sent) => in_flight.push_back(sent),
                            Err(e) => failure = Some(e),
                        }
                    }
                    Some(Err(e)) => return Err(VerifyError::Config(format!("fenced read: {e}"))),
                    None => return Err(VerifyError::Config("no fenced reader left".into())),
                }
            };
            if failure.is_some() {
                idle.push((node, reader));
                break;
            }
            sending.spawn(send(
                (node, reader),
                self.link.shared.clone(),
                nodes.all()[node].redacted().to_string(),
                batch,
            ));
        }
        while let Some(done) = sending.join_next().await {
            match done {
                Ok((r, sent)) => {
                    idle.push(r);
                    match sent {
                        Ok(sent) => in_flight.push_back(sent),
                        Err(e) => failure = Some(e),
                    }
                }
                Err(e) => failure = Some(VerifyError::Config(format!("fenced read: {e}"))),
            }
        }
        *readers = idle;
        if let Some(e) = failure {
            for sent in in_flight {
                self.link.shared.checks.remove(&sent.id);
            }
            return Err(e);
        }
        while let Some(sent) = in_flight.pop_front() {
            self.collect(run, sent).await?;
        }
        Ok(())
    }

    /// Waits for a batch's target reads and judges each key.
    async fn collect(&self, run: &mut Run, sent: Sent) -> Result<(), VerifyError> {
        let checks = &self.link.shared.checks;
        let deadline = tokio::time::Instant::now() + self.fence_timeout;
        let mut targets = Vec::with_capacity(sent.waits.len());
        for w in sent.waits {
            targets.push(match tokio::time::timeout_at(deadline, w).await {
                Ok(Ok(v)) => Some(v),
                Ok(Err(_)) => None,
                Err(_) => {
                    checks.remove(&sent.id);
                    return Err(VerifyError::Config(format!(
                        "replay did not reach the verification fences within {} s",
                        self.fence_timeout.as_secs()
                    )));
                }
            });
        }
        checks.remove(&sent.id);
        let now = now_ms();
        for ((p, s), t) in sent.batch.iter().zip(sent.source).zip(targets) {
            let Some(t) = t else {
                run.unsettled.push(p.clone());
                continue;
            };
            let (s, t) = (side(s), side(t));
            match self.judge(p, &s, &t, now) {
                Outcome::Same => {}
                Outcome::Differs(kind, detail) => run.diffs.push(diff(p, kind, detail)),
                Outcome::Logical(ty) => {
                    let mut q = p.clone();
                    q.logical_type = Some(ty);
                    run.logical.push(q);
                }
                Outcome::Digest(ty) => run.digest.push((p.clone(), ty)),
                Outcome::FieldTtls => run.field_ttls.push(p.clone()),
            }
        }
        Ok(())
    }

    fn judge(&self, p: &Probe, s: &Side, t: &Side, now: i64) -> Outcome {
        let tol = self.tolerance(p.db, &p.key);
        let expiring = |side: &Side| side.expire_at >= 0 && side.expire_at - now <= tol;
        let custom = self.rules.as_ref().filter(|r| r.has_compare(p.db, &p.key));
        let (sp, tp) = match (&s.payload, &t.payload) {
            (None, None) => return Outcome::Same,
            (Some(sp), Some(tp)) => (sp, tp),
            (Some(sp), None) => {
                return if expiring(s) {
                    Outcome::Same
                } else {
                    Outcome::Differs(
                        "missing on target",
                        format!("{} on the source", type_of(sp)),
                    )
                };
            }
            (None, Some(tp)) => {
                return if expiring(t) {
                    Outcome::Same
                } else {
                    Outcome::Differs("extra on target", format!("{} on the target", type_of(tp)))
                };
            }
        };
        let (sty, tty) = (type_of(sp), type_of(tp));
        if sty != tty {
            return Outcome::Differs("type", format!("{sty} on the source, {tty} on the target"));
        }
        match p.logical_type {
            None if custom.is_some() || sp != tp => {
                return if sp.len().max(tp.len()) > LOGICAL_MAX_BYTES && custom.is_none() {
                    Outcome::Digest(sty)
                } else {
                    Outcome::Logical(sty)
                };
            }
            None => {}
            Some(ty) => {
                let (a, b) = (canonical(ty, &s.logical), canonical(ty, &t.logical));
                if let Some(rules) = custom {
                    let view = |key: &[u8], side: &Side, value: String| KeyView {
                        key: key.to_vec(),
                        type_name: ty.to_string(),
                        value,
                        ttl_ms: if side.expire_at < 0 {
                            -1
                        } else {
                            (side.expire_at - now).max(0)
                        },
                    };
                    let sv = view(&p.key, s, a);
                    let tv = view(&p.tkey, t, b);
                    return match rules.compare(p.db, &sv, &tv) {
                        Ok(true) => Outcome::Same,
                        Ok(false) => Outcome::Differs("value", "the plan's compare said no".into()),
                        Err(e) => Outcome::Differs("value", format!("compare failed: {e}")),
                    };
                }
                if a != b {
                    return Outcome::Differs("value", format!("{ty} values differ"));
                }
            }
        }
        if let Some(detail) = super::ttl_difference(s.expire_at, t.expire_at, tol) {
            return Outcome::Differs("ttl", detail);
        }
        // Round two found equal values; payloads that differ may still hold other field TTLs.
        if self.field_ttls && p.logical_type == Some("hash") && sp != tp {
            return Outcome::FieldTtls;
        }
        Outcome::Same
    }

    /// An unfenced connection to the target node holding `p`'s key (its primary on a cluster).
    async fn target_conn(&self, p: &Probe) -> Result<MultiplexedConnection, VerifyError> {
        let node = match &self.target_cluster {
            Some(t) => t.primary_of(&p.tkey).clone(),
            None => self.link.target.with_db(i64::from(p.tdb)),
        };
        Ok(node.control().await?)
    }

    /// Compares a hash's field TTLs, re-checking a few times: unfenced, so a hash still
    /// changing may need a moment to agree.
    async fn field_ttl_compare(&self, p: &Probe) -> Result<Option<String>, VerifyError> {
        let tol = self.tolerance(p.db, &p.key);
        let source = self.link.nodes.for_key(&p.key);
        let mut s = source.with_db(i64::from(p.db)).control().await?;
        let mut t = self.target_conn(p).await?;
        let mut last = None;
        for attempt in 0..=self.cfg.rechecks {
            if attempt > 0 {
                tokio::time::sleep(self.cfg.recheck_delay).await;
            }
            let a = crate::snapshot::field_expiries(&mut s, &p.key)
                .await
                .map_err(|e| VerifyError::Net(source.classify(&e)))?;
            let b = crate::snapshot::field_expiries(&mut t, &p.tkey)
                .await
                .map_err(|e| VerifyError::Net(self.link.target.classify(&e)))?;
            last = digest::field_ttl_difference(&a, &b, tol);
            if last.is_none() {
                return Ok(None);
            }
        }
        Ok(last)
    }

    /// Compares a huge key through windowed digests, re-checking a few times: unfenced, so a
    /// key still changing may need a moment to agree.
    async fn digest_compare(&self, p: &Probe, ty: &str) -> Result<Option<String>, VerifyError> {
        let source = self.link.nodes.for_key(&p.key);
        let mut s = source.with_db(i64::from(p.db)).control().await?;
        let mut t = self.target_conn(p).await?;
        let mut last = None;
        for attempt in 0..=self.cfg.rechecks {
            if attempt > 0 {
                tokio::time::sleep(self.cfg.recheck_delay).await;
            }
            let a = digest::digest(&mut s, &p.key, ty)
                .await
                .map_err(|e| VerifyError::Net(source.classify(&e)))?;
            let b = digest::digest(&mut t, &p.tkey, ty)
                .await
                .map_err(|e| VerifyError::Net(self.link.target.classify(&e)))?;
            if a.is_some() && a == b {
                return Ok(None);
            }
            last = Some(format!("{ty} values differ (digests)"));
        }
        Ok(last)
    }
}

#[derive(Default)]
struct Run {
    checked: u64,
    sample_drawn: u64,
    sample_skipped: u64,
    ignored: u64,
    rechecked: u64,
    unsettled: Vec<Probe>,
    logical: Vec<Probe>,
    digest: Vec<(Probe, &'static str)>,
    field_ttls: Vec<Probe>,
    diffs: Vec<Difference>,
}

fn diff(p: &Probe, kind: &str, detail: String) -> Difference {
    Difference {
        db: p.db,
        key: quote(&p.key),
        kind: kind.to_string(),
        detail,
    }
}

/// The reads for one key: `DUMP` first (capture numbers it as the key's fence), then
/// `PEXPIRETIME`, then the type-aware reads in round two.
fn reads(key: &[u8], logical: Option<&str>) -> Vec<Argv> {
    let k = |name: &str| Argv::from_args([name.as_bytes(), key]);
    let mut out = vec![k("DUMP"), k("PEXPIRETIME")];
    match logical {
        None => {}
        Some("string") => out.push(k("GET")),
        Some("list") => out.push(Argv::from_args([&b"LRANGE"[..], key, b"0", b"-1"])),
        Some("set") => out.push(k("SMEMBERS")),
        Some("zset") => out.push(Argv::from_args([
            &b"ZRANGE"[..],
            key,
            b"0",
            b"-1",
            b"WITHSCORES",
        ])),
        Some("hash") => out.push(k("HGETALL")),
        Some("stream") => {
            out.push(Argv::from_args([&b"XRANGE"[..], key, b"-", b"+"]));
            out.push(Argv::from_args([&b"XINFO"[..], b"STREAM", key]));
            out.push(Argv::from_args([&b"XINFO"[..], b"GROUPS", key]));
        }
        // Module types: the payload comparison stands.
        Some(_) => {}
    }
    out
}

/// A key's canonical view read unfenced on one connection (the standalone verifier's input to a
/// plan's `compare`).
pub(super) async fn read_view(
    con: &mut redis::aio::MultiplexedConnection,
    key: &[u8],
    ty: &str,
) -> redis::RedisResult<KeyView> {
    let ty = match ty {
        "string" => "string",
        "list" => "list",
        "set" => "set",
        "zset" => "zset",
        "hash" => "hash",
        "stream" => "stream",
        "none" => "none",
        _ => "module",
    };
    let mut pipe = redis::pipe();
    for argv in reads(key, Some(ty)) {
        let mut cmd = redis::Cmd::new();
        for a in argv.iter() {
            cmd.arg(a);
        }
        pipe.add_command(cmd);
    }
    pipe.cmd("PTTL").arg(key);
    let mut values: Vec<Value> = pipe.query_async(con).await?;
    let ttl_ms = match values.pop() {
        Some(Value::Int(t)) => t,
        _ => -2,
    };
    let s = side(values);
    Ok(KeyView {
        key: key.to_vec(),
        type_name: ty.to_string(),
        value: if ty == "none" {
            String::new()
        } else {
            canonical(ty, &s.logical)
        },
        ttl_ms,
    })
}

fn side(values: Vec<Value>) -> Side {
    let mut it = values.into_iter();
    let payload = match it.next() {
        Some(Value::BulkString(b)) => Some(b),
        _ => None,
    };
    let expire_at = match it.next() {
        Some(Value::Int(t)) => t,
        _ => -2,
    };
    Side {
        payload,
        expire_at,
        logical: it.collect(),
    }
}

/// The type a `DUMP` payload holds, from its RDB object type byte.
pub(crate) fn type_of(payload: &[u8]) -> &'static str {
    match payload.first() {
        Some(0) => "string",
        Some(1 | 10 | 14 | 18) => "list",
        Some(2 | 11 | 20) => "set",
        Some(3 | 5 | 12 | 17) => "zset",
        // 22–25: Redis 7.4's hashes with field TTLs (hash table or listpack, pre-GA and GA).
        Some(4 | 9 | 13 | 16 | 22..=25) => "hash",
        Some(15 | 19 | 21) => "stream",
        Some(6 | 7) => "module",
        _ => "unknown",
    }
}

/// A canonical text form of type-aware reads: equal values give equal text whatever the
/// encoding or the order a server returns unordered members in.
fn canonical(ty: &str, values: &[Value]) -> String {
    let mut out = String::new();
    match ty {
        "set" => {
            let mut items: Vec<String> = flat(values.first()).iter().map(|b| quote(b)).collect();
            items.sort();
            out = items.join("\n");
        }
        "hash" => {
            let items = flat(values.first());
            let mut pairs: Vec<String> = items
                .chunks(2)
                .map(|c| {
                    format!(
                        "{} {}",
                        quote(&c[0]),
                        c.get(1).map_or(String::new(), |v| quote(v))
                    )
                })
                .collect();
            pairs.sort();
            out = pairs.join("\n");
        }
        "stream" => {
            out.push_str(&render(values.first()));
            if let Some(Value::Array(info)) = values.get(1) {
                // Fields that describe the stream's identity; lengths and entry copies are in
                // the XRANGE already, and radix-tree node counts depend on history.
                for pair in info.chunks(2) {
                    let name = String::from_utf8_lossy(&bytes_of(&pair[0])).into_owned();
                    if matches!(
                        name.as_str(),
                        "last-generated-id" | "max-deleted-entry-id" | "entries-added"
                    ) {
                        out.push_str(&format!("\n{name}={}", render(pair.get(1))));
                    }
                }
            }
            if let Some(Value::Array(groups)) = values.get(2) {
                let mut gs: Vec<String> = groups
                    .iter()
                    .map(|g| {
                        let Value::Array(fields) = g else {
                            return render(Some(g));
                        };
                        fields
                            .chunks(2)
                            .filter(|p| {
                                let n = bytes_of(&p[0]);
                                // Lag is derived and may be unknown on one side only.
                                n != b"lag"
                            })
                            .map(|p| {
                                format!(
                                    "{}={}",
                                    String::from_utf8_lossy(&bytes_of(&p[0])),
                                    render(p.get(1))
                                )
                            })
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .collect();
                gs.sort();
                out.push_str("\ngroups:");
                out.push_str(&gs.join(";"));
            }
        }
        _ => {
            for v in values {
                out.push_str(&render(Some(v)));
                out.push('\n');
            }
        }
    }
    out
}

fn flat(v: Option<&Value>) -> Vec<Vec<u8>> {
    match v {
        Some(Value::Array(items)) | Some(Value::Set(items)) => items.iter().map(bytes_of).collect(),
        Some(Value::Map(pairs)) => pairs
            .iter()
            .flat_map(|(a, b)| [bytes_of(a), bytes_of(b)])
            .collect(),
        _ => Vec::new(),
    }
}

fn bytes_of(v: &Value) -> Vec<u8> {
    match v {
        Value::BulkString(b) => b.clone(),
        Value::SimpleString(s) => s.clone().into_bytes(),
        Value::Int(i) => i.to_string().into_bytes(),
        Value::Double(d) => d.to_string().into_bytes(),
        Value::Nil => b"(nil)".to_vec(),
        other => format!("{other:?}").into_bytes(),
    }
}

fn render(v: Option<&Value>) -> String {
    match v {
        None => String::new(),
        Some(Value::Array(items)) => {
            let inner: Vec<String> = items.iter().map(|i| render(Some(i))).collect();
            format!("[{}]", inner.join(","))
        }
        Some(other) => quote(&bytes_of(other)),
    }
}

async fn keyspace(ep: &Endpoint) -> Result<BTreeMap<u32, u64>, VerifyError> {
    let mut con = ep.control().await?;
    let info: String = redis::cmd("INFO")
        .arg("keyspace")
        .query_async(&mut con)
        .await
        .map_err(|e| VerifyError::Net(ep.classify(&e)))?;
    Ok(super::parse_keyspace(&info))
}

fn share_of(n: u64, size: u64, total: u64) -> u64 {
    if total == 0 {
        return 0;
    }
    ((u128::from(n) * u128::from(size)).div_ceil(u128::from(total)) as u64).min(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_forms_ignore_member_order() {
        let set = |items: &[&str]| {
            vec![Value::Array(
                items
                    .iter()
                    .map(|s| Value::BulkString(s.as_bytes().to_vec()))
                    .collect(),
            )]
        };
        assert_eq!(
            canonical("set", &set(&["a", "b", "c"])),
            canonical("set", &set(&["c", "a", "b"]))
        );
        assert_eq!(
            canonical("hash", &set(&["f1", "v1", "f2", "v2"])),
            canonical("hash", &set(&["f2", "v2", "f1", "v1"]))
        );
        assert_ne!(
            canonical("hash", &set(&["f1", "v1", "f2", "v2"])),
            canonical("hash", &set(&["f1", "v2", "f2", "v1"]))
        );
        assert_ne!(
            canonical("list", &set(&["a", "b"])),
            canonical("list", &set(&["b", "a"]))
        );
    }

    #[test]
    fn payload_type_bytes_name_the_type() {
        assert_eq!(type_of(&[0, 1]), "string");
        assert_eq!(type_of(&[18]), "list");
        assert_eq!(type_of(&[11]), "set");
        assert_eq!(type_of(&[17]), "zset");
        assert_eq!(type_of(&[16]), "hash");
        assert_eq!(type_of(&[25]), "hash");
        assert_eq!(type_of(&[24]), "hash");
        assert_eq!(type_of(&[19]), "stream");
        assert_eq!(type_of(&[]), "unknown");
    }

    #[test]
    fn shares_round_up_within_size() {
        assert_eq!(share_of(10, 5, 10), 5);
        assert_eq!(share_of(3, 1, 3), 1);
        assert_eq!(share_of(10, 0, 10), 0);
        assert_eq!(share_of(1, 1, 1000), 1);
    }
}
