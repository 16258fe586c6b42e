//! Owns the oracle: a complete, type-aware, key-by-key comparison of two Redis datasets.
//!
//! It deliberately shares no code with ferry (only the `redis` crate), and compares logical
//! contents rather than DUMP payloads, which differ across encodings and server versions.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::{self, Write as _};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::Value;

/// Keys whose metadata and small values are fetched in one pipeline per phase. Larger
/// batches measured slower: redis-rs's sync reader shifts its buffer after every reply.
const KEY_BATCH: usize = 100;
/// Elements per read; collections longer than this are read in several round trips.
const CHUNK: usize = 1000;
const SCAN_COUNT: usize = 1000;
/// Value-diff details list at most this many example elements.
const EXAMPLES: usize = 3;
const VANISHED: &str = "key vanished while being read";

/// Source `(db, key)` to the `(db, key)` it should have on the target; `None` means the key
/// is not migrated, so nothing on the target may claim to be its image.
pub type KeyMap = Arc<dyn Fn(u32, &[u8]) -> Option<(u32, Vec<u8>)> + Send + Sync>;

#[derive(Clone)]
pub struct OracleOptions {
    /// Dbs to compare; `None` = every db non-empty on either side (per `INFO keyspace`).
    /// Target dbs that mapped keys land in are always scanned too.
    pub dbs: Option<Vec<u32>>,
    /// Allowed gap between absolute expiry times, and the window in which a key about to
    /// expire may be present on one side only.
    pub ttl_tolerance_ms: i64,
    pub map: Option<KeyMap>,
    /// Hash-field TTLs (Redis 7.4) are compared when both sides have them, and a source field
    /// TTL toward a target without them is a difference, unless this is set (a migration told
    /// to drop them).
    pub ignore_field_ttls: bool,
    /// Target keys under this prefix that no source key has are not differences: the shard
    /// leases split replay processes keep in the target (`ferry:lease:`, docs/leases.md).
    pub ignore_target_prefix: Option<Vec<u8>>,
}

impl Default for OracleOptions {
    fn default() -> Self {
        OracleOptions {
            dbs: None,
            ttl_tolerance_ms: 100,
            map: None,
            ignore_field_ttls: false,
            ignore_target_prefix: None,
        }
    }
}

impl OracleOptions {
    pub fn with_map(
        map: impl Fn(u32, &[u8]) -> Option<(u32, Vec<u8>)> + Send + Sync + 'static,
    ) -> Self {
        OracleOptions {
            map: Some(Arc::new(map)),
            ..Self::default()
        }
    }

    pub fn with_dbs(dbs: impl IntoIterator<Item = u32>) -> Self {
        OracleOptions {
            dbs: Some(dbs.into_iter().collect()),
            ..Self::default()
        }
    }
}

impl fmt::Debug for OracleOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OracleOptions")
            .field("dbs", &self.dbs)
            .field("ttl_tolerance_ms", &self.ttl_tolerance_ms)
            .field("map", &self.map.as_ref().map(|_| "<fn>"))
            .field("ignore_field_ttls", &self.ignore_field_ttls)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiffKind {
    MissingOnTarget,
    ExtraOnTarget,
    Type {
        source: String,
        target: String,
    },
    Value {
        detail: String,
    },
    /// Absolute expiry (`PEXPIRETIME`), -1 for no TTL.
    Ttl {
        source_ms: i64,
        target_ms: i64,
    },
    /// A hash field's absolute expiry (`HPEXPIRETIME`), -1 for no TTL, -3 where the target
    /// cannot hold field TTLs: the first field that differs, and how many differ.
    FieldTtl {
        field: Vec<u8>,
        source_ms: i64,
        target_ms: i64,
        fields: usize,
    },
}

/// One difference. `db`/`key` name the source key, except for [`DiffKind::ExtraOnTarget`],
/// where they name the target key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diff {
    pub db: u32,
    pub key: Vec<u8>,
    pub kind: DiffKind,
}

impl fmt::Display for DiffKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DiffKind::MissingOnTarget => write!(f, "missing on target"),
            DiffKind::ExtraOnTarget => write!(f, "extra on target"),
            DiffKind::Type { source, target } => {
                write!(f, "type differs: source {source}, target {target}")
            }
            DiffKind::Value { detail } => write!(f, "value differs: {detail}"),
            DiffKind::Ttl {
                source_ms,
                target_ms,
            } => {
                write!(f, "expiry differs: source {source_ms}, target {target_ms}")?;
                if *source_ms >= 0 && *target_ms >= 0 {
                    write!(f, " (target {:+} ms)", target_ms - source_ms)?;
                }
                Ok(())
            }
            DiffKind::FieldTtl {
                field,
                source_ms,
                target_ms,
                fields,
            } => write!(
                f,
                "field {} expiry differs: source {source_ms}, target {target_ms} ({fields} field(s) differ)",
                escape(field)
            ),
        }
    }
}

impl fmt::Display for Diff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "db{} {}: {}", self.db, escape(&self.key), self.kind)
    }
}

#[derive(Debug, Clone, Default)]
pub struct OracleReport {
    /// Source keys that were live when read and compared against their target image.
    pub keys_compared: usize,
    pub diffs: Vec<Diff>,
    pub dbs: Vec<u32>,
    pub source_keys: usize,
    pub target_keys: usize,
    pub elapsed: Duration,
}

impl OracleReport {
    pub fn is_identical(&self) -> bool {
        self.diffs.is_empty()
    }

    #[track_caller]
    pub fn assert_identical(&self) {
        if !self.diffs.is_empty() {
            let mut msg = format!("{self}\nfirst differences:\n");
            for diff in self.diffs.iter().take(20) {
                let _ = writeln!(msg, "  {diff}");
            }
            if self.diffs.len() > 20 {
                let _ = writeln!(msg, "  ... and {} more", self.diffs.len() - 20);
            }
            panic!("{msg}");
        }
    }

    /// The kinds of difference recorded for `(db, key)`.
    pub fn diffs_for(&self, db: u32, key: &[u8]) -> Vec<&DiffKind> {
        self.diffs
            .iter()
            .filter(|d| d.db == db && d.key == key)
            .map(|d| &d.kind)
            .collect()
    }
}

impl fmt::Display for OracleReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "oracle: {} keys compared in dbs {:?} (source {} keys, target {} keys) in {:.2?}: ",
            self.keys_compared, self.dbs, self.source_keys, self.target_keys, self.elapsed
        )?;
        if self.diffs.is_empty() {
            return write!(f, "identical");
        }
        let mut by_kind: BTreeMap<&str, usize> = BTreeMap::new();
        for d in &self.diffs {
            let name = match d.kind {
                DiffKind::MissingOnTarget => "missing",
                DiffKind::ExtraOnTarget => "extra",
                DiffKind::Type { .. } => "type",
                DiffKind::Value { .. } => "value",
                DiffKind::Ttl { .. } => "ttl",
                DiffKind::FieldTtl { .. } => "field ttl",
            };
            *by_kind.entry(name).or_default() += 1;
        }
        write!(f, "{} differences {by_kind:?}", self.diffs.len())
    }
}

/// Compares two standalone servers.
pub fn compare(source_url: &str, target_url: &str, opts: &OracleOptions) -> OracleReport {
    compare_nodes(&[source_url], &[target_url], opts)
}

/// The primaries serving slots in the cluster `url` belongs to, as URLs with `url`'s scheme and
/// credentials. Read from the node's own `CLUSTER NODES`, so the oracle follows the cluster as
/// it is now (after a slot moved, say) without any of ferry's topology code.
pub fn cluster_primaries(url: &str) -> Vec<String> {
    let mut con = super::tls::client(url)
        .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(5)))
        .unwrap_or_else(|e| panic!("oracle: cannot connect to {url}: {e}"));
    let nodes: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query(&mut con)
        .expect("oracle: CLUSTER NODES");
    let (scheme_auth, rest) = match url.rfind('@') {
        Some(at) => url.split_at(at + 1),
        None => {
            let at = url.find("://").map_or(0, |i| i + 3);
            url.split_at(at)
        }
    };
    let path = rest.find('/').map_or("", |i| &rest[i..]);
    let mut out: Vec<String> = nodes
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // id, ip:port@bus, flags, master, ping, pong, epoch, link-state, slots…
            let serves = f.len() > 8 && f[2].split(',').any(|x| x == "master");
            let addr = f.get(1)?.split('@').next()?;
            serves.then(|| format!("{scheme_auth}{addr}{path}"))
        })
        .collect();
    out.sort();
    out
}

/// The nodes holding the keyspace `url` names: every primary of its cluster when the node says
/// `cluster_enabled:1` in `INFO cluster`, else the node itself.
pub fn keyspace_nodes(url: &str) -> Vec<String> {
    let mut con = super::tls::client(url)
        .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(5)))
        .unwrap_or_else(|e| panic!("oracle: cannot connect to {url}: {e}"));
    let info: String = redis::cmd("INFO")
        .arg("cluster")
        .query(&mut con)
        .expect("oracle: INFO cluster");
    if info.lines().any(|l| l.trim() == "cluster_enabled:1") {
        cluster_primaries(url)
    } else {
        vec![url.to_string()]
    }
}

/// Compares two keyspaces each named by one node's URL, either or both of which may be a
/// node of a cluster (then every primary of that cluster is scanned and each key read on the
/// primary serving its slot): every key of either side, type, value and TTL, both directions.
pub fn compare_any(source_url: &str, target_url: &str, opts: &OracleOptions) -> OracleReport {
    compare_nodes(
        &keyspace_nodes(source_url),
        &keyspace_nodes(target_url),
        opts,
    )
}

/// Compares a cluster source with a cluster target, every primary of each scanned.
pub fn compare_clusters(
    any_source_node: &str,
    any_target_node: &str,
    opts: &OracleOptions,
) -> OracleReport {
    compare_nodes(
        &cluster_primaries(any_source_node),
        &cluster_primaries(any_target_node),
        opts,
    )
}

/// Compares a cluster source, every primary of it scanned, with a target of one node.
pub fn compare_from_cluster(
    any_source_node: &str,
    target_url: &str,
    opts: &OracleOptions,
) -> OracleReport {
    compare_nodes(&cluster_primaries(any_source_node), &[target_url], opts)
}

/// Compares a source (one node) with a cluster target, every primary of it scanned.
pub fn compare_to_cluster(
    source_url: &str,
    any_target_node: &str,
    opts: &OracleOptions,
) -> OracleReport {
    compare_nodes(&[source_url], &cluster_primaries(any_target_node), opts)
}

/// Compares two keyspaces that may each be spread over several nodes (e.g. cluster masters):
/// every key is read from the node where SCAN found it.
pub fn compare_nodes<S: AsRef<str>, T: AsRef<str>>(
    source_urls: &[S],
    target_urls: &[T],
    opts: &OracleOptions,
) -> OracleReport {
    let started = Instant::now();
    let mut src = Side::connect("source", source_urls);
    let mut tgt = Side::connect("target", target_urls);
    // Stream metadata that only Redis 7.0 reports is compared only when both sides report it.
    let legacy = src.nodes.iter().chain(&tgt.nodes).any(|n| n.pttl_only);
    for n in src.nodes.iter_mut().chain(tgt.nodes.iter_mut()) {
        n.legacy_streams = legacy;
    }
    let tolerance = opts.ttl_tolerance_ms;

    let dbs: BTreeSet<u32> = match &opts.dbs {
        Some(dbs) => dbs.iter().copied().collect(),
        None => src
            .nonempty_dbs()
            .union(&tgt.nonempty_dbs())
            .copied()
            .collect(),
    };

    let source_scans: BTreeMap<u32, HashMap<Vec<u8>, usize>> =
        dbs.iter().map(|&db| (db, src.scan(db))).collect();
    let source_keys = source_scans.values().map(HashMap::len).sum();
    let mut work = Vec::with_capacity(source_keys);
    // Only a real map needs the set of images; without one a key's image is itself.
    let mut images: HashSet<(u32, Vec<u8>)> = HashSet::new();
    for (&db, keys) in &source_scans {
        for (key, &node) in keys {
            let (tdb, tkey) = match &opts.map {
                None => (db, Cow::Borrowed(key.as_slice())),
                Some(map) => match map(db, key) {
                    Some((tdb, tkey)) => {
                        images.insert((tdb, tkey.clone()));
                        (tdb, Cow::Owned(tkey))
                    }
                    None => continue,
                },
            };
            work.push(Work {
                sdb: db,
                skey: key,
                snode: node,
                tdb,
                tkey,
            });
        }
    }
    let is_image = |db: u32, key: &Vec<u8>| match &opts.map {
        None => source_scans
            .get(&db)
            .is_some_and(|keys| keys.contains_key(key)),
        Some(_) => images.contains(&(db, key.clone())),
    };

    let target_dbs: BTreeSet<u32> = dbs
        .iter()
        .copied()
        .chain(work.iter().map(|w| w.tdb))
        .collect();
    let target_keys: BTreeMap<u32, HashMap<Vec<u8>, usize>> =
        target_dbs.iter().map(|&db| (db, tgt.scan(db))).collect();

    let mut report = OracleReport {
        dbs: target_dbs.iter().copied().collect(),
        source_keys,
        target_keys: target_keys.values().map(HashMap::len).sum(),
        ..OracleReport::default()
    };

    // Sorted so that consecutive batches stay in one db and SELECTs are rare.
    work.sort_by(|a, b| (a.sdb, a.tdb, &a.skey).cmp(&(b.sdb, b.tdb, &b.skey)));
    for batch in work.chunks(KEY_BATCH) {
        compare_batch(
            batch,
            &mut src,
            &mut tgt,
            &target_keys,
            tolerance,
            opts.ignore_field_ttls,
            &mut report,
        );
    }

    for (&db, keys) in &target_keys {
        let mut orphans: BTreeMap<usize, Vec<&[u8]>> = BTreeMap::new();
        for (key, &node) in keys {
            let ignored = opts
                .ignore_target_prefix
                .as_deref()
                .is_some_and(|p| key.starts_with(p));
            if !is_image(db, key) && !ignored {
                orphans.entry(node).or_default().push(key);
            }
        }
        for (node, keys) in orphans {
            for chunk in keys.chunks(KEY_BATCH) {
                let expiries = tgt.nodes[node].expiries(db, chunk);
                let now = tgt.now_ms();
                for (key, expire_at) in chunk.iter().zip(expiries) {
                    // -2: gone since SCAN, so nothing extra any more.
                    if expire_at != -2 && !about_to_expire(expire_at, now, tolerance) {
                        report.diffs.push(Diff {
                            db,
                            key: key.to_vec(),
                            kind: DiffKind::ExtraOnTarget,
                        });
                    }
                }
            }
        }
    }

    report
        .diffs
        .sort_by(|a, b| (a.db, &a.key).cmp(&(b.db, &b.key)));
    report.elapsed = started.elapsed();
    report
}

struct Work<'a> {
    sdb: u32,
    skey: &'a [u8],
    snode: usize,
    tdb: u32,
    tkey: Cow<'a, [u8]>,
}

fn compare_batch(
    batch: &[Work<'_>],
    src: &mut Side,
    tgt: &mut Side,
    target_keys: &BTreeMap<u32, HashMap<Vec<u8>, usize>>,
    tolerance: i64,
    ignore_field_ttls: bool,
    report: &mut OracleReport,
) {
    let mut src_groups: BTreeMap<(usize, u32), Vec<usize>> = BTreeMap::new();
    let mut tgt_groups: BTreeMap<(usize, u32), Vec<usize>> = BTreeMap::new();
    for (i, w) in batch.iter().enumerate() {
        src_groups.entry((w.snode, w.sdb)).or_default().push(i);
        if let Some(&node) = target_keys
            .get(&w.tdb)
            .and_then(|keys| keys.get(w.tkey.as_ref()))
        {
            tgt_groups.entry((node, w.tdb)).or_default().push(i);
        }
    }
    // The two sides are independent, so read them concurrently.
    let (mut src_states, mut tgt_states) = std::thread::scope(|scope| {
        let source = scope.spawn(|| fetch_groups(src, src_groups, batch, |w| w.skey));
        let target = fetch_groups(tgt, tgt_groups, batch, |w| &w.tkey);
        let source = source
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (source, target)
    });
    let (src_now, tgt_now) = (src.now_ms(), tgt.now_ms());
    // A key with a TTL can expire between its TYPE and its value read; it is then gone,
    // exactly as if SCAN had missed it, not a value that differs.
    for (states, now) in [(&mut src_states, src_now), (&mut tgt_states, tgt_now)] {
        for st in states.iter_mut().flatten() {
            if st.value.as_ref().is_err_and(|e| e == VANISHED)
                && about_to_expire(st.expire_at, now, tolerance)
            {
                st.ty = "none".into();
            }
        }
    }

    for (i, w) in batch.iter().enumerate() {
        let s = src_states[i].take().expect("every source key was fetched");
        let t = tgt_states[i].take().filter(|t| t.ty != "none");
        let source_diff = |kind| Diff {
            db: w.sdb,
            key: w.skey.to_vec(),
            kind,
        };
        match (s.ty != "none", t) {
            // Expired (or deleted) on both sides after SCAN.
            (false, None) => {}
            (false, Some(t)) => {
                if !about_to_expire(t.expire_at, tgt_now, tolerance) {
                    report.diffs.push(Diff {
                        db: w.tdb,
                        key: w.tkey.to_vec(),
                        kind: DiffKind::ExtraOnTarget,
                    });
                }
            }
            (true, None) => {
                report.keys_compared += 1;
                if !about_to_expire(s.expire_at, src_now, tolerance) {
                    report.diffs.push(source_diff(DiffKind::MissingOnTarget));
                }
            }
            (true, Some(t)) => {
                report.keys_compared += 1;
                if s.ty != t.ty {
                    report.diffs.push(source_diff(DiffKind::Type {
                        source: s.ty,
                        target: t.ty,
                    }));
                    continue;
                }
                let (mut s, mut t) = (s, t);
                let field_ttl = settle_fields(&mut s, &mut t, (src_now, tgt_now), tolerance);
                let detail = match (&s.value, &t.value) {
                    (Ok(a), Ok(b)) => diff_values(a, b),
                    (Err(e), _) => Some(format!("reading source failed: {e}")),
                    (_, Err(e)) => Some(format!("reading target failed: {e}")),
                };
                if let Some(detail) = detail {
                    report.diffs.push(source_diff(DiffKind::Value { detail }));
                }
                if !same_expiry(s.expire_at, t.expire_at, tolerance) {
                    report.diffs.push(source_diff(DiffKind::Ttl {
                        source_ms: s.expire_at,
                        target_ms: t.expire_at,
                    }));
                }
                if let Some(kind) = field_ttl.filter(|_| !ignore_field_ttls) {
                    report.diffs.push(source_diff(kind));
                }
            }
        }
    }
}

/// States of the batch's keys on one side, in batch order; `None` where not fetched.
fn fetch_groups<'a>(
    side: &mut Side,
    groups: BTreeMap<(usize, u32), Vec<usize>>,
    batch: &'a [Work<'a>],
    key: impl Fn(&'a Work<'a>) -> &'a [u8],
) -> Vec<Option<KeyState>> {
    let mut states: Vec<Option<KeyState>> = (0..batch.len()).map(|_| None).collect();
    for ((node, db), idx) in groups {
        let keys: Vec<&[u8]> = idx.iter().map(|&i| key(&batch[i])).collect();
        let fetched = side.nodes[node].fetch_states(db, &keys);
        for (i, st) in idx.into_iter().zip(fetched) {
            states[i] = Some(st);
        }
    }
    states
}

/// For a hash: leaves out of both values the fields that are gone or about to expire on either
/// side (a field can expire between the two reads, as a key can), then compares the other
/// fields' expiries. The difference, if any, as a [`DiffKind::FieldTtl`].
fn settle_fields(
    s: &mut KeyState,
    t: &mut KeyState,
    (src_now, tgt_now): (i64, i64),
    tolerance: i64,
) -> Option<DiffKind> {
    let unsettled = |st: &KeyState, f: &[u8], now: i64| {
        st.field_expiries
            .as_ref()
            .and_then(|m| m.get(f))
            .is_some_and(|&at| at == -2 || about_to_expire(at, now, tolerance))
    };
    let drop: BTreeSet<Vec<u8>> = [(&*s, src_now), (&*t, tgt_now)]
        .iter()
        .flat_map(|(st, now)| {
            st.field_expiries
                .iter()
                .flat_map(|m| m.keys())
                .filter(|f| unsettled(st, f, *now))
                .cloned()
                .collect::<Vec<_>>()
        })
        .collect();
    for st in [&mut *s, &mut *t] {
        if let Ok(Val::Hash(pairs)) = &mut st.value {
            pairs.retain(|(f, _)| !drop.contains(f));
        }
        if let Some(m) = &mut st.field_expiries {
            m.retain(|f, _| !drop.contains(f));
        }
    }
    let src = s.field_expiries.as_ref()?;
    let Some(tgt) = t.field_expiries.as_ref() else {
        // The target cannot hold field TTLs: every source field TTL is lost there.
        let (field, at) = src.iter().next()?;
        return Some(DiffKind::FieldTtl {
            field: field.clone(),
            source_ms: *at,
            target_ms: -3,
            fields: src.len(),
        });
    };
    let fields: BTreeSet<&Vec<u8>> = src.keys().chain(tgt.keys()).collect();
    let at = |m: &BTreeMap<Vec<u8>, i64>, f: &Vec<u8>| m.get(f).copied().unwrap_or(-1);
    let differing: Vec<&Vec<u8>> = fields
        .into_iter()
        .filter(|f| !same_expiry(at(src, f), at(tgt, f), tolerance))
        .collect();
    let first = differing.first()?;
    Some(DiffKind::FieldTtl {
        field: (*first).clone(),
        source_ms: at(src, first),
        target_ms: at(tgt, first),
        fields: differing.len(),
    })
}

fn about_to_expire(expire_at: i64, now_ms: i64, tolerance: i64) -> bool {
    expire_at >= 0 && expire_at - now_ms <= tolerance
}

fn same_expiry(a: i64, b: i64, tolerance: i64) -> bool {
    match (a < 0, b < 0) {
        (true, true) => true,
        (false, false) => (a - b).abs() <= tolerance,
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------
// Connections

struct Side {
    nodes: Vec<Node>,
    /// Server clock minus local clock, so expiry checks use the server's idea of "now".
    clock_offset_ms: i64,
}

impl Side {
    fn connect<S: AsRef<str>>(label: &str, urls: &[S]) -> Side {
        assert!(!urls.is_empty(), "oracle: no {label} urls");
        let mut nodes: Vec<Node> = urls
            .iter()
            .map(|u| Node::connect(label, u.as_ref()))
            .collect();
        let (secs, micros): (i64, i64) = nodes[0].query(redis::cmd("TIME"));
        let clock_offset_ms = secs * 1000 + micros / 1000 - local_now_ms();
        Side {
            nodes,
            clock_offset_ms,
        }
    }

    fn now_ms(&self) -> i64 {
        local_now_ms() + self.clock_offset_ms
    }

    fn nonempty_dbs(&mut self) -> BTreeSet<u32> {
        let mut dbs = BTreeSet::new();
        for node in &mut self.nodes {
            let info: String = node.query(redis::cmd("INFO").arg("keyspace").clone());
            for line in info.lines() {
                let Some((name, stats)) = line.split_once(':') else {
                    continue;
                };
                let Some(Ok(db)) = name.strip_prefix("db").map(str::parse::<u32>) else {
                    continue;
                };
                if !stats.starts_with("keys=0,") {
                    dbs.insert(db);
                }
            }
        }
        dbs
    }

    /// Every key of `db` on every node, with the index of the node that holds it.
    fn scan(&mut self, db: u32) -> HashMap<Vec<u8>, usize> {
        let mut keys = HashMap::new();
        for (i, node) in self.nodes.iter_mut().enumerate() {
            node.select(db);
            let mut cursor = 0u64;
            loop {
                let (next, batch): (u64, Vec<Vec<u8>>) = node.query(
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("COUNT")
                        .arg(SCAN_COUNT)
                        .clone(),
                );
                for key in batch {
                    keys.insert(key, i);
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        keys
    }
}

struct Node {
    label: String,
    con: redis::Connection,
    /// `None` until we SELECT, since the URL may have picked a db.
    db: Option<u32>,
    /// The server predates `PEXPIRETIME` (Redis 7.0): expiries come from `PTTL` and this
    /// machine's clock, within the comparison's TTL tolerance.
    pttl_only: bool,
    /// One side predates Redis 7.0's stream metadata (`max-deleted-entry-id`,
    /// `entries-added`, a group's `entries-read`): neither side's is compared.
    legacy_streams: bool,
    /// Redis 7.4 or later (not Valkey): hashes may carry field TTLs (`HPEXPIRETIME`).
    field_ttls: bool,
}

impl Node {
    fn connect(label: &str, url: &str) -> Node {
        let con = super::tls::client(url)
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(5)))
            .unwrap_or_else(|e| panic!("oracle: connect to {label} {url}: {e}"));
        let mut node = Node {
            label: format!("{label} {url}"),
            con,
            db: None,
            pttl_only: false,
            legacy_streams: false,
            field_ttls: false,
        };
        let info: String = node.query(redis::cmd("INFO").arg("server").clone());
        let version = info
            .lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .and_then(|v| v.trim().split('.').next()?.parse::<u32>().ok())
            .unwrap_or(7);
        node.pttl_only = version < 7;
        let minor = info
            .lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .and_then(|v| v.trim().split('.').nth(1)?.parse::<u32>().ok())
            .unwrap_or(0);
        node.field_ttls =
            (version, minor) >= (7, 4) && !info.lines().any(|l| l.starts_with("valkey_version:"));
        node
    }

    /// The command that reads `k`'s expiry here.
    fn expiry_cmd(&self, k: &[u8]) -> redis::Cmd {
        key_cmd(
            if self.pttl_only {
                "PTTL"
            } else {
                "PEXPIRETIME"
            },
            k,
        )
    }

    /// An absolute expiry from the reply of [`Node::expiry_cmd`].
    fn expire_at(&self, reply: &Value) -> i64 {
        let v = as_int(reply).unwrap_or_else(|e| panic!("oracle: expiry on {}: {e}", self.label));
        if self.pttl_only && v >= 0 {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            now + v
        } else {
            v
        }
    }

    fn select(&mut self, db: u32) {
        if self.db != Some(db) {
            let _: () = self.query(redis::cmd("SELECT").arg(db).clone());
            self.db = Some(db);
        }
    }

    fn query<T: redis::FromRedisValue>(&mut self, cmd: redis::Cmd) -> T {
        cmd.query(&mut self.con)
            .unwrap_or_else(|e| panic!("oracle: {} on {}: {e}", describe(&cmd), self.label))
    }

    /// Runs `cmds` in one round trip; per-command errors come back as `Value::ServerError`.
    fn pipe(&mut self, cmds: Vec<redis::Cmd>) -> Vec<Value> {
        if cmds.is_empty() {
            return Vec::new();
        }
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for cmd in cmds {
            pipe.add_command(cmd);
        }
        pipe.query(&mut self.con)
            .unwrap_or_else(|e| panic!("oracle: pipeline on {}: {e}", self.label))
    }

    fn expiries(&mut self, db: u32, keys: &[&[u8]]) -> Vec<i64> {
        self.select(db);
        let cmds = keys.iter().map(|k| self.expiry_cmd(k)).collect();
        let replies = self.pipe(cmds);
        replies.iter().map(|r| self.expire_at(r)).collect()
    }

    /// Type, expiry and full value of each key: one pipeline for metadata, one for the first
    /// chunk of every value, then extra round trips only for values longer than a chunk.
    fn fetch_states(&mut self, db: u32, keys: &[&[u8]]) -> Vec<KeyState> {
        self.select(db);

        let mut cmds = Vec::with_capacity(2 * keys.len());
        for k in keys {
            cmds.push(key_cmd("TYPE", k));
            cmds.push(self.expiry_cmd(k));
        }
        let replies = self.pipe(cmds);
        let mut states: Vec<KeyState> = replies
            .chunks(2)
            .map(|r| {
                let ty = as_bytes(&r[0])
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_else(|e| panic!("oracle: TYPE on {}: {e}", self.label));
                let expire_at = self.expire_at(&r[1]);
                KeyState {
                    ty,
                    expire_at,
                    value: Err("not read".into()),
                    field_expiries: None,
                }
            })
            .collect();

        let mut cmds = Vec::new();
        let mut owners: Vec<(usize, Part)> = Vec::new();
        let mut streams: BTreeMap<usize, StreamParts> = BTreeMap::new();
        let last = CHUNK as i64 - 1;
        for (i, st) in states.iter().enumerate() {
            let key = keys[i];
            let mut add = |cmd: &mut redis::Cmd, part: Part| {
                cmds.push(cmd.clone());
                owners.push((i, part));
            };
            match st.ty.as_str() {
                "none" => {}
                "string" => add(&mut key_cmd("GET", key), Part::Value),
                "list" => add(key_cmd("LRANGE", key).arg(0).arg(last), Part::Value),
                "zset" => add(
                    key_cmd("ZRANGE", key).arg(0).arg(last).arg("WITHSCORES"),
                    Part::Value,
                ),
                "set" => add(
                    key_cmd("SSCAN", key).arg(0).arg("COUNT").arg(CHUNK),
                    Part::Value,
                ),
                "hash" => add(
                    key_cmd("HSCAN", key).arg(0).arg("COUNT").arg(CHUNK),
                    Part::Value,
                ),
                "stream" => {
                    streams.insert(i, StreamParts::default());
                    add(redis::cmd("XINFO").arg("STREAM").arg(key), Part::StreamInfo);
                    add(
                        redis::cmd("XINFO").arg("GROUPS").arg(key),
                        Part::StreamGroups,
                    );
                    add(
                        key_cmd("XRANGE", key)
                            .arg("-")
                            .arg("+")
                            .arg("COUNT")
                            .arg(CHUNK),
                        Part::StreamEntries,
                    );
                }
                // Types we do not model (modules): fall back to comparing the serialization.
                _ => add(&mut key_cmd("DUMP", key), Part::Value),
            }
        }
        let replies = self.pipe(cmds);
        for ((i, part), reply) in owners.into_iter().zip(replies) {
            let key = keys[i];
            match part {
                Part::Value => {
                    let ty = std::mem::take(&mut states[i].ty);
                    states[i].value = self.complete_value(&ty, key, reply);
                    states[i].ty = ty;
                }
                Part::StreamInfo => streams.get_mut(&i).expect("stream").info = Some(reply),
                Part::StreamGroups => streams.get_mut(&i).expect("stream").groups = Some(reply),
                Part::StreamEntries => {
                    let entries = self.complete_entries(key, reply);
                    streams.get_mut(&i).expect("stream").entries = Some(entries);
                }
            }
        }
        for (i, parts) in streams {
            states[i].value = self.finish_stream(keys[i], parts);
        }
        if self.field_ttls {
            for (i, st) in states.iter_mut().enumerate() {
                if let Ok(Val::Hash(pairs)) = &st.value {
                    let fields: Vec<&[u8]> = pairs.iter().map(|(f, _)| f.as_slice()).collect();
                    st.field_expiries = Some(self.field_expiries(keys[i], &fields));
                }
            }
        }
        states
    }

    /// `HPEXPIRETIME` of `fields`, a window at a time: the fields with a TTL (absolute ms) and
    /// those gone since the value was read (-2).
    fn field_expiries(&mut self, key: &[u8], fields: &[&[u8]]) -> BTreeMap<Vec<u8>, i64> {
        let mut out = BTreeMap::new();
        for window in fields.chunks(CHUNK) {
            let times: Vec<i64> = self.query(
                key_cmd("HPEXPIRETIME", key)
                    .arg("FIELDS")
                    .arg(window.len())
                    .arg(window)
                    .clone(),
            );
            for (f, t) in window.iter().zip(times) {
                if t >= 0 || t == -2 {
                    out.insert(f.to_vec(), t);
                }
            }
        }
        out
    }

    /// Parses the first chunk of a value and reads the rest if there is more.
    fn complete_value(&mut self, ty: &str, key: &[u8], first: Value) -> Result<Val, String> {
        match ty {
            "list" | "zset" => {
                let mut items = into_array(first)?;
                // RESP2 flattens WITHSCORES pairs, RESP3 nests them.
                let per = |items: &[Value]| {
                    if ty == "zset" && !matches!(items.first(), Some(Value::Array(_))) {
                        2
                    } else {
                        1
                    }
                };
                let mut got = items.len() / per(&items);
                let mut start = 0;
                while got == CHUNK {
                    start += CHUNK;
                    let mut cmd = key_cmd(if ty == "list" { "LRANGE" } else { "ZRANGE" }, key);
                    cmd.arg(start).arg(start + CHUNK - 1);
                    if ty == "zset" {
                        cmd.arg("WITHSCORES");
                    }
                    let more = into_array(self.query(cmd))?;
                    got = more.len() / per(&more);
                    items.extend(more);
                }
                parse_value(ty, Value::Array(items))
            }
            "set" | "hash" => {
                let command = if ty == "set" { "SSCAN" } else { "HSCAN" };
                let (mut cursor, mut items) = scan_reply(first)?;
                while cursor != b"0" {
                    let reply: Value = self.query(
                        key_cmd(command, key)
                            .arg(&cursor)
                            .arg("COUNT")
                            .arg(CHUNK)
                            .clone(),
                    );
                    let (next, more) = scan_reply(reply)?;
                    items.extend(more);
                    cursor = next;
                }
                // SCAN-family commands may return an element twice; parse_value dedups.
                parse_value(ty, Value::Array(items))
            }
            _ => parse_value(ty, first),
        }
    }

    fn complete_entries(&mut self, key: &[u8], first: Value) -> Result<Vec<Entry>, String> {
        let mut all = parse_entries(first)?;
        let mut got = all.len();
        while got == CHUNK {
            // Inclusive of the last ID, without it: exclusive ranges (`(id`) are Redis 6.2's.
            let last = all.last().expect("full chunk").0.clone();
            let reply: Value = self.query(
                key_cmd("XRANGE", key)
                    .arg(&last)
                    .arg("+")
                    .arg("COUNT")
                    .arg(CHUNK + 1)
                    .clone(),
            );
            let more: Vec<Entry> = parse_entries(reply)?
                .into_iter()
                .filter(|e| e.0 != last)
                .collect();
            got = more.len();
            all.extend(more);
        }
        Ok(all)
    }

    fn finish_stream(&mut self, key: &[u8], parts: StreamParts) -> Result<Val, String> {
        let info = as_pairs(parts.info.as_ref().ok_or("XINFO STREAM missing")?)?;
        let field = |name: &str| -> Result<String, String> {
            info.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| display_value(v))
                .ok_or_else(|| format!("XINFO STREAM has no {name}"))
        };
        let mut stream = StreamVal {
            entries: parts.entries.ok_or("XRANGE missing")??,
            meta: vec![
                ("length", field("length")?),
                ("last-generated-id", field("last-generated-id")?),
            ],
            groups: Vec::new(),
        };
        if !self.legacy_streams {
            stream
                .meta
                .push(("max-deleted-entry-id", field("max-deleted-entry-id")?));
            stream.meta.push(("entries-added", field("entries-added")?));
        }

        let groups = as_array(parts.groups.as_ref().ok_or("XINFO GROUPS missing")?)?;
        let mut cmds = Vec::new();
        for g in groups {
            let g = as_pairs(g)?;
            let get = |name: &str| {
                g.iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.clone())
                    .unwrap_or(Value::Nil)
            };
            let name = as_bytes(&get("name"))?;
            cmds.push(
                redis::cmd("XINFO")
                    .arg("CONSUMERS")
                    .arg(key)
                    .arg(&name)
                    .clone(),
            );
            cmds.push(
                key_cmd("XPENDING", key)
                    .arg(&name)
                    .arg("-")
                    .arg("+")
                    .arg(CHUNK)
                    .clone(),
            );
            let mut meta = vec![
                (
                    "last-delivered-id",
                    display_value(&get("last-delivered-id")),
                ),
                ("pending", display_value(&get("pending"))),
            ];
            if !self.legacy_streams {
                meta.push(("entries-read", display_value(&get("entries-read"))));
            }
            stream.groups.push(GroupVal {
                name,
                meta,
                consumers: Vec::new(),
                pel: Vec::new(),
            });
        }
        let replies = self.pipe(cmds);
        for (group, replies) in stream.groups.iter_mut().zip(replies.chunks(2)) {
            for c in as_array(&replies[0])? {
                let c = as_pairs(c)?;
                let get = |name: &str| c.iter().find(|(k, _)| k == name).map(|(_, v)| v);
                let name = as_bytes(get("name").ok_or("consumer without name")?)?;
                let pending = as_int(get("pending").ok_or("consumer without pending")?)?;
                group.consumers.push((name, pending));
            }
            group.consumers.sort();
            let mut pel = parse_pel(&replies[1])?;
            while pel.len() % CHUNK == 0 && !pel.is_empty() {
                let last = pel.last().expect("non-empty").0.clone();
                // Inclusive of the last ID, without it (see complete_entries).
                let reply: Value = self.query(
                    key_cmd("XPENDING", key)
                        .arg(&group.name)
                        .arg(&last)
                        .arg("+")
                        .arg(CHUNK + 1)
                        .clone(),
                );
                let more: Vec<_> = parse_pel(&reply)?
                    .into_iter()
                    .filter(|p| p.0 != last)
                    .collect();
                if more.is_empty() {
                    break;
                }
                pel.extend(more);
            }
            group.pel = pel;
        }
        stream.groups.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Val::Stream(Box::new(stream)))
    }
}

fn key_cmd(name: &str, key: &[u8]) -> redis::Cmd {
    let mut cmd = redis::cmd(name);
    cmd.arg(key);
    cmd
}

fn describe(cmd: &redis::Cmd) -> String {
    cmd.args_iter()
        .take(3)
        .map(|a| match a {
            redis::Arg::Simple(bytes) => escape(bytes),
            _ => "<cursor>".to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn local_now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

// ---------------------------------------------------------------------------------------
// Values

struct KeyState {
    /// As `TYPE` says; "none" if the key is gone.
    ty: String,
    /// `PEXPIRETIME`: absolute ms, -1 without TTL, -2 gone.
    expire_at: i64,
    value: Result<Val, String>,
    /// A hash's fields with a TTL (`HPEXPIRETIME`, absolute ms; -2 gone since read); `None`
    /// where the server has no field TTLs or the key is not a hash.
    field_expiries: Option<BTreeMap<Vec<u8>, i64>>,
}

enum Part {
    Value,
    StreamInfo,
    StreamGroups,
    StreamEntries,
}

#[derive(Default)]
struct StreamParts {
    info: Option<Value>,
    groups: Option<Value>,
    entries: Option<Result<Vec<Entry>, String>>,
}

type Entry = (String, Vec<(Vec<u8>, Vec<u8>)>);

#[derive(Debug, PartialEq)]
enum Val {
    Str(Vec<u8>),
    List(Vec<Vec<u8>>),
    /// Sorted, deduplicated.
    Set(Vec<Vec<u8>>),
    /// Sorted by member.
    ZSet(Vec<(Vec<u8>, f64)>),
    /// Sorted by field.
    Hash(Vec<(Vec<u8>, Vec<u8>)>),
    Stream(Box<StreamVal>),
    /// DUMP payload of a type we do not model.
    Dump(Vec<u8>),
}

#[derive(Debug, PartialEq)]
struct StreamVal {
    entries: Vec<Entry>,
    meta: Vec<(&'static str, String)>,
    /// Sorted by name.
    groups: Vec<GroupVal>,
}

#[derive(Debug, PartialEq)]
struct GroupVal {
    name: Vec<u8>,
    meta: Vec<(&'static str, String)>,
    /// (name, pending count), sorted; idle times are deliberately not compared.
    consumers: Vec<(Vec<u8>, i64)>,
    /// (id, consumer, delivery count) in ID order.
    pel: Vec<(String, Vec<u8>, i64)>,
}

fn parse_value(ty: &str, reply: Value) -> Result<Val, String> {
    match ty {
        "string" => match reply {
            // Gone between TYPE and GET; compare_batch decides whether that was an expiry.
            Value::Nil => Err(VANISHED.into()),
            _ => Ok(Val::Str(into_bytes(reply)?)),
        },
        "list" => Ok(Val::List(bytes_list(reply)?)),
        "set" => {
            let mut members = bytes_list(reply)?;
            members.sort_unstable();
            members.dedup();
            Ok(Val::Set(members))
        }
        "zset" => {
            let mut pairs = Vec::new();
            let mut items = bytes_list(reply)?.into_iter();
            while let Some(member) = items.next() {
                let score = items.next().ok_or("odd ZRANGE WITHSCORES reply")?;
                pairs.push((member, parse_score(&score)?));
            }
            pairs.sort_by(|a, b| a.0.cmp(&b.0));
            pairs.dedup_by(|a, b| a.0 == b.0);
            Ok(Val::ZSet(pairs))
        }
        "hash" => {
            let mut pairs = Vec::new();
            let mut items = bytes_list(reply)?.into_iter();
            while let Some(field) = items.next() {
                pairs.push((field, items.next().unwrap_or_default()));
            }
            pairs.sort_by(|a, b| a.0.cmp(&b.0));
            pairs.dedup_by(|a, b| a.0 == b.0);
            Ok(Val::Hash(pairs))
        }
        _ => Ok(Val::Dump(into_bytes(reply)?)),
    }
}

/// `[cursor, [items...]]` from SSCAN/HSCAN.
fn scan_reply(reply: Value) -> Result<(Vec<u8>, Vec<Value>), String> {
    let mut parts = into_array(reply)?.into_iter();
    let (Some(cursor), Some(items), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err("bad SCAN reply".into());
    };
    Ok((into_bytes(cursor)?, into_array(items)?))
}

/// Scores are compared as numbers, since servers may print the same double differently.
fn parse_score(raw: &[u8]) -> Result<f64, String> {
    let s = std::str::from_utf8(raw).map_err(|_| format!("score {}", escape(raw)))?;
    s.parse::<f64>()
        .map_err(|_| format!("unparsable score {}", escape(raw)))
}

fn parse_entries(reply: Value) -> Result<Vec<Entry>, String> {
    into_array(reply)?
        .into_iter()
        .map(|e| {
            let mut parts = into_array(e)?.into_iter();
            let (Some(id), Some(fields), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err("bad stream entry".into());
            };
            let id = String::from_utf8_lossy(&into_bytes(id)?).into_owned();
            let mut pairs = Vec::new();
            let mut items = bytes_list(fields)?.into_iter();
            while let Some(field) = items.next() {
                pairs.push((field, items.next().unwrap_or_default()));
            }
            Ok((id, pairs))
        })
        .collect()
}

fn parse_pel(reply: &Value) -> Result<Vec<(String, Vec<u8>, i64)>, String> {
    as_array(reply)?
        .iter()
        .map(|p| {
            let parts = as_array(p)?;
            let [id, consumer, _idle, deliveries] = parts else {
                return Err(format!("bad XPENDING entry {p:?}"));
            };
            Ok((
                String::from_utf8_lossy(&as_bytes(id)?).into_owned(),
                as_bytes(consumer)?,
                as_int(deliveries)?,
            ))
        })
        .collect()
}

fn as_bytes(v: &Value) -> Result<Vec<u8>, String> {
    match v {
        Value::BulkString(b) => Ok(b.clone()),
        Value::SimpleString(s) => Ok(s.clone().into_bytes()),
        Value::Okay => Ok(b"OK".to_vec()),
        Value::Int(i) => Ok(i.to_string().into_bytes()),
        Value::Double(d) => Ok(d.to_string().into_bytes()),
        Value::VerbatimString { text, .. } => Ok(text.clone().into_bytes()),
        Value::ServerError(e) => Err(e.to_string()),
        other => Err(format!("expected a string, got {other:?}")),
    }
}

fn as_int(v: &Value) -> Result<i64, String> {
    match v {
        Value::Int(i) => Ok(*i),
        Value::ServerError(e) => Err(e.to_string()),
        other => {
            let b = as_bytes(other)?;
            std::str::from_utf8(&b)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("expected an integer, got {other:?}"))
        }
    }
}

fn as_array(v: &Value) -> Result<&[Value], String> {
    match v {
        Value::Array(a) | Value::Set(a) => Ok(a),
        Value::Nil => Ok(&[]),
        Value::ServerError(e) => Err(e.to_string()),
        other => Err(format!("expected an array, got {other:?}")),
    }
}

fn into_bytes(v: Value) -> Result<Vec<u8>, String> {
    match v {
        Value::BulkString(b) => Ok(b),
        other => as_bytes(&other),
    }
}

fn into_array(v: Value) -> Result<Vec<Value>, String> {
    match v {
        Value::Array(a) | Value::Set(a) => Ok(a),
        other => as_array(&other).map(<[Value]>::to_vec),
    }
}

fn bytes_list(v: Value) -> Result<Vec<Vec<u8>>, String> {
    match v {
        // RESP3 maps (HGETALL) flatten to field, value, ...
        Value::Map(m) => m
            .into_iter()
            .flat_map(|(k, v)| [into_bytes(k), into_bytes(v)])
            .collect(),
        other => {
            let mut out = Vec::new();
            for item in into_array(other)? {
                match item {
                    // RESP3 nests ZRANGE WITHSCORES pairs.
                    Value::Array(inner) => {
                        for x in inner {
                            out.push(into_bytes(x)?);
                        }
                    }
                    item => out.push(into_bytes(item)?),
                }
            }
            Ok(out)
        }
    }
}

/// `XINFO`-style replies: a flat `[name, value, ...]` array (RESP2) or a map (RESP3).
fn as_pairs(v: &Value) -> Result<Vec<(String, Value)>, String> {
    let pairs: Vec<(&Value, &Value)> = match v {
        Value::Map(m) => m.iter().map(|(k, v)| (k, v)).collect(),
        _ => as_array(v)?
            .chunks(2)
            .filter_map(|p| Some((p.first()?, p.get(1)?)))
            .collect(),
    };
    pairs
        .into_iter()
        .map(|(k, v)| {
            Ok((
                String::from_utf8_lossy(&as_bytes(k)?).into_owned(),
                v.clone(),
            ))
        })
        .collect()
}

fn display_value(v: &Value) -> String {
    match v {
        Value::Nil => "(nil)".into(),
        // IDs and counters read better bare; anything unusual is quoted.
        other => match as_bytes(other) {
            Ok(b) if !b.is_empty() && b.iter().all(u8::is_ascii_graphic) => {
                String::from_utf8_lossy(&b).into_owned()
            }
            Ok(b) => escape(&b),
            Err(_) => format!("{other:?}"),
        },
    }
}

// ---------------------------------------------------------------------------------------
// Diff details

fn diff_values(a: &Val, b: &Val) -> Option<String> {
    if a == b {
        return None;
    }
    Some(match (a, b) {
        (Val::Str(a), Val::Str(b)) => format!("string {} vs {}", preview(a), preview(b)),
        (Val::List(a), Val::List(b)) => diff_sequences("list", a, b, |v| preview(v)),
        (Val::Set(a), Val::Set(b)) => {
            let a: Vec<_> = a.iter().map(|m| (m.clone(), ())).collect();
            let b: Vec<_> = b.iter().map(|m| (m.clone(), ())).collect();
            diff_keyed("set", "member", &a, &b, |_| String::new())
        }
        (Val::ZSet(a), Val::ZSet(b)) => diff_keyed("zset", "member", a, b, |s| format!("{s}")),
        (Val::Hash(a), Val::Hash(b)) => diff_keyed("hash", "field", a, b, |v| preview(v)),
        (Val::Stream(a), Val::Stream(b)) => diff_streams(a, b),
        (Val::Dump(_), Val::Dump(_)) => "DUMP payloads differ".into(),
        _ => "values of different shapes".into(),
    })
}

fn diff_sequences<T: PartialEq>(
    what: &str,
    a: &[T],
    b: &[T],
    show: impl Fn(&T) -> String,
) -> String {
    let mut out = format!("{what} length {} vs {}", a.len(), b.len());
    if let Some(i) = a.iter().zip(b).position(|(x, y)| x != y) {
        let _ = write!(
            out,
            "; first difference at index {i}: {} vs {}",
            show(&a[i]),
            show(&b[i])
        );
    }
    out
}

/// Merge-compares two lists sorted by key.
fn diff_keyed<V: PartialEq>(
    what: &str,
    noun: &str,
    a: &[(Vec<u8>, V)],
    b: &[(Vec<u8>, V)],
    show: impl Fn(&V) -> String,
) -> String {
    let (mut only_a, mut only_b, mut changed) = (Vec::new(), Vec::new(), Vec::new());
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        match (a.get(i), b.get(j)) {
            (Some(x), Some(y)) if x.0 == y.0 => {
                if x.1 != y.1 {
                    changed.push(format!("{} {} vs {}", escape(&x.0), show(&x.1), show(&y.1)));
                }
                i += 1;
                j += 1;
            }
            (Some(x), Some(y)) if x.0 < y.0 => {
                only_a.push(escape(&x.0));
                i += 1;
            }
            (Some(x), None) => {
                only_a.push(escape(&x.0));
                i += 1;
            }
            (_, Some(y)) => {
                only_b.push(escape(&y.0));
                j += 1;
            }
            (None, None) => unreachable!(),
        }
    }
    let mut parts = vec![format!("{what} size {} vs {}", a.len(), b.len())];
    for (label, list) in [
        (format!("{noun}s only on source"), &only_a),
        (format!("{noun}s only on target"), &only_b),
        (format!("{noun}s changed"), &changed),
    ] {
        if !list.is_empty() {
            let shown: Vec<_> = list.iter().take(EXAMPLES).cloned().collect();
            parts.push(format!(
                "{} {label} (e.g. {})",
                list.len(),
                shown.join(", ")
            ));
        }
    }
    parts.join("; ")
}

fn diff_streams(a: &StreamVal, b: &StreamVal) -> String {
    let mut parts = Vec::new();
    for ((name, x), (_, y)) in a.meta.iter().zip(&b.meta) {
        if x != y {
            parts.push(format!("{name} {x} vs {y}"));
        }
    }
    if a.entries != b.entries {
        parts.push(diff_sequences("entries", &a.entries, &b.entries, |e| {
            format!("{} {}", e.0, e.1.len())
        }));
    }
    let names = |s: &StreamVal| s.groups.iter().map(|g| escape(&g.name)).collect::<Vec<_>>();
    if names(a) != names(b) {
        parts.push(format!("groups {:?} vs {:?}", names(a), names(b)));
    }
    for (ga, gb) in a.groups.iter().zip(&b.groups) {
        if ga.name != gb.name {
            continue;
        }
        let g = escape(&ga.name);
        for ((name, x), (_, y)) in ga.meta.iter().zip(&gb.meta) {
            if x != y {
                parts.push(format!("group {g} {name} {x} vs {y}"));
            }
        }
        if ga.consumers != gb.consumers {
            let show = |c: &[(Vec<u8>, i64)]| {
                c.iter()
                    .map(|(n, p)| format!("{}={p}", escape(n)))
                    .collect::<Vec<_>>()
                    .join(",")
            };
            parts.push(format!(
                "group {g} consumers(pending) [{}] vs [{}]",
                show(&ga.consumers),
                show(&gb.consumers)
            ));
        }
        if ga.pel != gb.pel {
            parts.push(diff_sequences(
                &format!("group {g} PEL"),
                &ga.pel,
                &gb.pel,
                |p| format!("{} {} x{}", p.0, escape(&p.1), p.2),
            ));
        }
    }
    if parts.is_empty() {
        "stream differs".into()
    } else {
        format!("stream {}", parts.join("; "))
    }
}

fn preview(bytes: &[u8]) -> String {
    const MAX: usize = 48;
    if bytes.len() <= MAX {
        escape(bytes)
    } else {
        format!("{}... ({} bytes)", escape(&bytes[..MAX]), bytes.len())
    }
}

/// Quoted, redis-cli style: printable ASCII as is, everything else escaped.
pub fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() + 2);
    out.push('"');
    for &b in bytes {
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            0x20..=0x7e => out.push(b as char),
            _ => {
                let _ = write!(out, "\\x{b:02x}");
            }
        }
    }
    out.push('"');
    out
}
