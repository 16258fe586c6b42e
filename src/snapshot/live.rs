//! The live side of the snapshot: payloads waiting for their fence in the stream, and the
//! re-copier that reads dirty keys again through the same fenced path.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};

use super::expiry::ExpiryRead;
use crate::capture::{PeerRegistry, Role};
use crate::journal::read_echo;
use crate::net::{Endpoint, NodesCell, SourceNodes};

/// What one fenced read returned for one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload {
    /// The db.
    pub db: u32,
    /// The key.
    pub key: Vec<u8>,
    /// The `DUMP` payload; `None` when the key did not exist at the fence.
    pub payload: Option<Vec<u8>>,
    /// Absolute expiry in unix ms.
    pub expire_at_ms: Option<i64>,
}

/// Default bound on payload bytes held in memory; readers wait when it is reached.
pub const DEFAULT_PAYLOAD_BUDGET: u64 = 64 << 20;

/// Payloads by fence identity (read id, index in the read), until replay reaches the fence.
///
/// Readers insert without waiting (the fence is already in the stream, so the payload must be
/// available); they wait for budget only before starting a new read. That keeps memory bounded
/// when the target is slow without any chance of deadlock.
#[derive(Debug)]
pub struct PayloadStore {
    map: Mutex<HashMap<(String, u64), Payload>>,
    /// `FUNCTION DUMP` payloads by read id (see [`FencedReader::read_functions`]).
    functions: Mutex<HashMap<String, Vec<u8>>>,
    arrived: Notify,
    freed: Notify,
    bytes: AtomicU64,
    budget: u64,
    /// The RDB version the target reads up to, when it is older than the source's payloads:
    /// payloads are rewritten for it as they arrive ([`super::downgrade`]).
    rdb_target: Option<u16>,
    /// Hashes with field TTLs toward a target without them: their fields without the TTLs
    /// (a plan's `drop_field_ttls`), or not rewritten.
    drop_field_ttls: bool,
    /// Payloads rewritten for the target.
    downgraded: AtomicU64,
    /// Payloads that could not be rewritten (passed on as read: the target refuses them and
    /// replay reports the key as diverged).
    not_downgraded: AtomicU64,
}

impl PayloadStore {
    /// An empty store holding at most about `budget` payload bytes.
    pub fn new(budget: u64) -> PayloadStore {
        PayloadStore {
            map: Mutex::new(HashMap::new()),
            functions: Mutex::new(HashMap::new()),
            arrived: Notify::new(),
            freed: Notify::new(),
            bytes: AtomicU64::new(0),
            budget,
            rdb_target: None,
            drop_field_ttls: false,
            downgraded: AtomicU64::new(0),
            not_downgraded: AtomicU64::new(0),
        }
    }

    /// Payloads newer than RDB `version` are rewritten for a target that reads up to it.
    pub fn with_rdb_target(mut self, version: u16) -> PayloadStore {
        self.rdb_target = Some(version);
        self
    }

    /// Hashes with field TTLs are rewritten as plain hashes without them (a plan's
    /// `drop_field_ttls`); otherwise such a payload is passed on as read and refused.
    pub fn with_field_ttls_dropped(mut self, drop: bool) -> PayloadStore {
        self.drop_field_ttls = drop;
        self
    }

    /// (payloads rewritten for the target, payloads that could not be).
    pub fn downgrades(&self) -> (u64, u64) {
        (
            self.downgraded.load(Ordering::Relaxed),
            self.not_downgraded.load(Ordering::Relaxed),
        )
    }

    /// `p` in the form the target reads.
    fn for_target(&self, mut p: Payload) -> Payload {
        let (Some(to), Some(bytes)) = (self.rdb_target, p.payload.as_deref()) else {
            return p;
        };
        if super::downgrade::payload_version(bytes).is_none_or(|v| v <= to) {
            return p;
        }
        let field_ttls = if self.drop_field_ttls {
            super::downgrade::FieldTtls::Drop {
                now_ms: crate::clock::now_ms(),
            }
        } else {
            super::downgrade::FieldTtls::Refuse
        };
        match super::downgrade::downgrade_with(bytes, to, field_ttls) {
            Ok(older) => {
                self.downgraded.fetch_add(1, Ordering::Relaxed);
                p.payload = Some(older);
            }
            Err(e) => {
                // The first one is named; the rest are counted (the report and the diverged
                // keys of the final fence list them).
                if self.not_downgraded.fetch_add(1, Ordering::Relaxed) == 0 {
                    tracing::error!(
                        db = p.db,
                        key = %crate::escape::Quoted(&p.key),
                        error = %e,
                        "A DUMP payload cannot be rewritten for the target's RDB version; the target will refuse it and the key is reported as diverged."
                    );
                }
            }
        }
        p
    }

    /// Stores the payload of the `ordinal`-th read of connection `addr`.
    pub fn insert(&self, addr: &str, ordinal: u64, p: Payload) {
        let p = self.for_target(p);
        let size = p.payload.as_ref().map_or(0, Vec::len) as u64;
        if let Ok(mut m) = self.map.lock() {
            m.insert((addr.to_string(), ordinal), p);
        }
        self.bytes.fetch_add(size, Ordering::Relaxed);
        self.arrived.notify_waiters();
    }

    /// Takes the payload for a fence, waiting up to `timeout` for the reader to deliver it.
    pub async fn take(&self, addr: &str, ordinal: u64, timeout: Duration) -> Option<Payload> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.arrived.notified();
            let found = self
                .map
                .lock()
                .ok()
                .and_then(|mut m| m.remove(&(addr.to_string(), ordinal)));
            if let Some(p) = found {
                let size = p.payload.as_ref().map_or(0, Vec::len) as u64;
                self.bytes.fetch_sub(size, Ordering::Relaxed);
                self.freed.notify_waiters();
                return Some(p);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }

    /// Stores the `FUNCTION DUMP` payload of fenced read `read_id`. Not counted in the budget:
    /// one per snapshot.
    pub fn insert_functions(&self, read_id: &str, payload: Vec<u8>) {
        // Rewritten for an older target like key payloads (named as the libraries if it fails).
        let p = self.for_target(Payload {
            db: 0,
            key: b"(the function libraries)".to_vec(),
            payload: Some(payload),
            expire_at_ms: None,
        });
        let payload = p.payload.unwrap_or_default();
        if let Ok(mut m) = self.functions.lock() {
            m.insert(read_id.to_string(), payload);
        }
        self.arrived.notify_waiters();
    }

    /// Takes the `FUNCTION DUMP` payload of fenced read `read_id`, waiting up to `timeout`.
    pub async fn take_functions(&self, read_id: &str, timeout: Duration) -> Option<Vec<u8>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.arrived.notified();
            let found = self
                .functions
                .lock()
                .ok()
                .and_then(|mut m| m.remove(read_id));
            if found.is_some() {
                return found;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }

    /// Waits until the store is under its budget.
    pub async fn wait_for_space(&self) {
        loop {
            let freed = self.freed.notified();
            if self.bytes.load(Ordering::Relaxed) < self.budget {
                return;
            }
            // A periodic re-check covers a free that raced with this wait.
            let _ = tokio::time::timeout(Duration::from_millis(50), freed).await;
        }
    }

    /// Payload bytes held.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

/// Length of a `FUNCTION DUMP` payload with no library in it: the RDB version (2 bytes) and the
/// CRC-64 (8 bytes) only (docs/redis-behaviour.md §9).
const EMPTY_FUNCTION_DUMP: usize = 10;

/// True when a `FUNCTION DUMP` payload holds at least one library.
pub fn dump_holds_libraries(payload: &[u8]) -> bool {
    payload.len() > EMPTY_FUNCTION_DUMP
}

/// Requests for fenced re-reads of keys, served by [`Recopier::run`].
#[derive(Debug, Clone)]
pub struct Recopier {
    tx: mpsc::UnboundedSender<(u32, Vec<u8>)>,
}

impl Recopier {
    /// A re-copier and the receiving end its task consumes.
    pub fn channel() -> (Recopier, mpsc::UnboundedReceiver<(u32, Vec<u8>)>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Recopier { tx }, rx)
    }

    /// Asks for a fenced re-read of `key` in `db`. The caller de-duplicates.
    pub fn request(&self, db: u32, key: Vec<u8>) {
        let _ = self.tx.send((db, key));
    }

    /// Serves requests until the channel closes: batches of keys per db, one
    /// `MULTI; DUMP; PEXPIRETIME; …; EXEC` each, payloads into `store`. On a cluster source each
    /// key is read on its shard's node, whose stream carries its fence.
    pub async fn run(
        cell: NodesCell,
        peers: std::sync::Arc<PeerRegistry>,
        store: std::sync::Arc<PayloadStore>,
        mut rx: mpsc::UnboundedReceiver<(u32, Vec<u8>)>,
    ) -> Result<(), String> {
        let (mut version, mut source) = cell.get();
        let mut readers: Vec<Option<FencedReader>> = (0..source.len()).map(|_| None).collect();
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            while batch.len() < 256 {
                match rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            if cell.version() != version {
                // The source failed over: read through its new nodes.
                (version, source) = cell.get();
                readers = (0..source.len()).map(|_| None).collect();
            }
            batch.sort_by(|a, b| {
                (source.index_of(&a.1), a.0, &a.1).cmp(&(source.index_of(&b.1), b.0, &b.1))
            });
            store.wait_for_space().await;
            'parts: for part in
                batch.chunk_by(|a, b| source.index_of(&a.1) == source.index_of(&b.1))
            {
                let i = source.index_of(&part[0].1);
                let mut attempt = 0;
                loop {
                    if readers[i].is_none() {
                        readers[i] = Some(FencedReader::connect(&source.all()[i], &peers).await?);
                    }
                    let r = readers[i].as_mut().ok_or("no reader")?;
                    match r.read_groups(part, &store).await {
                        Ok(_) => break,
                        Err(e) if attempt < 3 => {
                            tracing::warn!(error = %e, "Re-copy failed; reconnecting.");
                            readers[i] = None;
                            attempt += 1;
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        Err(e) if source.is_cluster() => {
                            // A primary that failed over refuses the reads (MOVED): the
                            // coordinator notices within a second, and its resync re-reads
                            // every key, these included.
                            // (Or a slot moving between shards answers ASK until it ends.)
                            for _ in 0..300 {
                                if cell.version() != version {
                                    break 'parts;
                                }
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                            return Err(e);
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        Ok(())
    }
}

/// A source connection registered as a fence peer, reading keys with fenced reads.
pub(crate) struct FencedReader {
    con: redis::aio::MultiplexedConnection,
    db: Option<u32>,
    expiry: ExpiryRead,
    /// The node belongs to a cluster, where a transaction may touch one hash slot only: a
    /// read of several slots is one transaction per slot, pipelined.
    cluster: bool,
}

/// Ids of fenced reads: unique per process and run, so a restarted ferry never mistakes an old
/// read's lines for a new one's.
pub(crate) fn next_read_id() -> String {
    static RUN: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let run = RUN.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id())
    });
    format!("{run:x}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

impl FencedReader {
    pub(crate) async fn connect(
        source: &Endpoint,
        peers: &PeerRegistry,
    ) -> Result<FencedReader, String> {
        let mut con = source.control().await.map_err(|e| e.to_string())?;
        let addr = crate::net::client_addr(&mut con)
            .await
            .map_err(|e| e.to_string())?;
        peers.register(source, &addr, Role::Fence);
        let expiry = ExpiryRead::detect(&mut con).await;
        let cluster = redis::cmd("INFO")
            .arg("cluster")
            .query_async::<String>(&mut con)
            .await
            .is_ok_and(|i| crate::net::info_field(&i, "cluster_enabled") == Some("1"));
        if cluster {
            // A cluster replica (a capture node) answers key reads only in READONLY mode;
            // elsewhere READONLY is harmless.
            let role: String = redis::cmd("INFO")
                .arg("replication")
                .query_async(&mut con)
                .await
                .unwrap_or_default();
            if crate::net::info_field(&role, "role") == Some("slave") {
                redis::cmd("READONLY")
                    .query_async::<()>(&mut con)
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }
        Ok(FencedReader {
            con,
            db: None,
            expiry,
            cluster,
        })
    }

    /// Reads `keys` (sorted by db) with one fenced read per db, storing every payload.
    pub(crate) async fn read_groups(
        &mut self,
        keys: &[(u32, Vec<u8>)],
        store: &PayloadStore,
    ) -> Result<u64, String> {
        let mut bytes = 0;
        for group in keys.chunk_by(|a, b| a.0 == b.0) {
            let db = group[0].0;
            let refs: Vec<&[u8]> = group.iter().map(|(_, k)| k.as_slice()).collect();
            bytes += if self.cluster {
                self.read_by_slot(db, &refs, store).await?
            } else {
                self.read(db, &refs, store).await?
            };
        }
        Ok(bytes)
    }

    /// One fenced read with id `id` in `db`: `per_key[i]` are the reads of the `i`-th key, the
    /// first of them its `DUMP` (the line capture numbers as the key's fence). Returns every
    /// key's replies, in order.
    pub(crate) async fn probe(
        &mut self,
        db: u32,
        id: &str,
        per_key: &[Vec<crate::command::Argv>],
    ) -> Result<Vec<Vec<redis::Value>>, String> {
        self.select(db).await?;
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.cmd("ECHO").arg(read_echo(id));
        for cmds in per_key {
            for argv in cmds {
                let mut cmd = redis::Cmd::new();
                for a in argv.iter() {
                    cmd.arg(a);
                }
                pipe.add_command(cmd);
            }
        }
        let replies: Vec<redis::Value> = pipe
            .query_async(&mut self.con)
            .await
            .map_err(|e| e.to_string())?;
        let want: usize = per_key.iter().map(Vec::len).sum();
        if replies.len() != want + 1 {
            return Err(format!(
                "EXEC returned {} replies for {want} reads",
                replies.len()
            ));
        }
        let mut it = replies.into_iter().skip(1);
        Ok(per_key
            .iter()
            .map(|cmds| it.by_ref().take(cmds.len()).collect())
            .collect())
    }

    /// Reads the source's function libraries with one fenced read, `MULTI; ECHO
    /// ferry-read:<id>; FUNCTION DUMP; EXEC`: capture turns its `FUNCTION DUMP` line into a
    /// [`crate::journal::Marker::Functions`], and the payload waits in `store` under `<id>`.
    /// Returns whether the payload holds a library.
    pub(crate) async fn read_functions(&mut self, store: &PayloadStore) -> Result<bool, String> {
        let id = next_read_id();
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.cmd("ECHO").arg(read_echo(&id));
        pipe.cmd("FUNCTION").arg("DUMP");
        let (_, payload): (redis::Value, Vec<u8>) = pipe
            .query_async(&mut self.con)
            .await
            .map_err(|e| e.to_string())?;
        let libraries = dump_holds_libraries(&payload);
        store.insert_functions(&id, payload);
        Ok(libraries)
    }

    async fn select(&mut self, db: u32) -> Result<(), String> {
        if self.db != Some(db) {
            redis::cmd("SELECT")
                .arg(db)
                .query_async::<()>(&mut self.con)
                .await
                .map_err(|e| e.to_string())?;
            self.db = Some(db);
        }
        Ok(())
    }

    /// One fenced read of `keys` in `db`; every key gets a payload (None when absent).
    pub(crate) async fn read(
        &mut self,
        db: u32,
        keys: &[&[u8]],
        store: &PayloadStore,
    ) -> Result<u64, String> {
        self.select(db).await?;
        let id = next_read_id();
        let mut pipe = redis::pipe();
        pipe.atomic();
        self.queue_read(&mut pipe, &id, keys, false);
        let replies: Vec<redis::Value> = pipe.query_async(&mut self.con).await.map_err(|e| {
            // Command 0 is the ECHO of the read id; then a DUMP and an expiry read per key.
            crate::net::short_error(&e, |i| {
                let k = keys.get(i.checked_sub(1)? / 2)?;
                Some(crate::escape::Quoted(k).to_string())
            })
        })?;
        self.store_read(&id, db, keys, &replies, store)
    }

    /// Fenced reads of `keys` in `db` on a cluster node: one transaction per hash slot (a
    /// cluster refuses a transaction across slots), all sent in one round trip.
    async fn read_by_slot(
        &mut self,
        db: u32,
        keys: &[&[u8]],
        store: &PayloadStore,
    ) -> Result<u64, String> {
        self.select(db).await?;
        let groups = super::slotreads::by_slot(keys.iter().copied());
        let mut pipe = redis::pipe();
        let mut reads = Vec::with_capacity(groups.len());
        for group in &groups {
            let id = next_read_id();
            pipe.cmd("MULTI").ignore();
            // The read id is what makes these reads fences (the non-live reads of
            // `slotreads::pipeline` need none).
            self.queue_read(&mut pipe, &id, group, true);
            pipe.cmd("EXEC");
            reads.push((id, group));
        }
        // Every transaction that ran is a fence in the stream, whatever the others did (a
        // slot moving answers ASK): each one's payloads must reach the store, or the stitcher
        // waits for them in vain. So a refused transaction is an error reply, not the query's.
        pipe.ignore_errors();
        let execs: Vec<redis::Value> = pipe
            .query_async(&mut self.con)
            .await
            .map_err(|e| e.to_string())?;
        if execs.len() != reads.len() {
            return Err(format!(
                "{} transactions answered for {} hash slots",
                execs.len(),
                reads.len()
            ));
        }
        let (mut bytes, mut failed) = (0, None);
        for ((id, group), exec) in reads.iter().zip(&execs) {
            match exec {
                redis::Value::Array(replies) => {
                    bytes += self.store_read(id, db, group, replies, store)?;
                }
                other => {
                    let first = group.first().map(|k| crate::escape::Quoted(k).to_string());
                    failed.get_or_insert(format!(
                        "the fenced read of {} and {} other keys got {other:?}",
                        first.unwrap_or_default(),
                        group.len().saturating_sub(1)
                    ));
                }
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(bytes),
        }
    }

    /// Queues a read's commands: the `ECHO` of its id, then a `DUMP` and an expiry read per key
    /// (and the clock, where expiries are relative); `ignore` when only `EXEC`'s reply counts.
    fn queue_read(&self, pipe: &mut redis::Pipeline, id: &str, keys: &[&[u8]], ignore: bool) {
        pipe.cmd("ECHO").arg(read_echo(id));
        if ignore {
            pipe.ignore();
        }
        for k in keys {
            pipe.cmd("DUMP").arg(*k);
            if ignore {
                pipe.ignore();
            }
            self.expiry.push(pipe, k);
            if ignore {
                pipe.ignore();
            }
        }
        let before = pipe.len();
        self.expiry.finish(pipe);
        if ignore && pipe.len() > before {
            pipe.ignore();
        }
    }

    /// Stores the payloads of read `id` from its transaction's `replies`.
    fn store_read(
        &self,
        id: &str,
        db: u32,
        keys: &[&[u8]],
        replies: &[redis::Value],
        store: &PayloadStore,
    ) -> Result<u64, String> {
        if replies.len() != 2 * keys.len() + 1 + self.expiry.extra_replies() {
            return Err(format!(
                "EXEC returned {} replies for {} reads",
                replies.len(),
                keys.len()
            ));
        }
        let clock = self.expiry.clock(replies);
        let mut bytes = 0;
        for (ordinal, (k, pair)) in keys.iter().zip(replies[1..].chunks_exact(2)).enumerate() {
            let payload = match &pair[0] {
                redis::Value::BulkString(p) => Some(p.clone()),
                _ => None,
            };
            bytes += payload.as_ref().map_or(0, Vec::len) as u64;
            let expire_at_ms = self.expiry.expire_at(&pair[1], clock);
            store.insert(
                id,
                ordinal as u64,
                Payload {
                    db,
                    key: k.to_vec(),
                    payload,
                    expire_at_ms,
                },
            );
        }
        Ok(bytes)
    }
}

/// Where a live snapshot's reads go.
#[derive(Clone)]
pub struct LiveSink {
    /// Payloads for the stitcher.
    pub store: std::sync::Arc<PayloadStore>,
    /// ferry's connections, so capture turns their reads into fences.
    pub peers: std::sync::Arc<PeerRegistry>,
    /// The plan's keyspace rules: the target sweep reads the source key a target key maps from.
    pub mapper: Option<std::sync::Arc<dyn crate::command::Mapper>>,
    /// The capture nodes: each key is scanned on, and read through, its shard's node, whose
    /// stream carries the read's fence.
    pub nodes: SourceNodes,
}

/// Hashes of the keys a live snapshot has read, so the target sweep reads only the others.
#[derive(Debug, Default)]
pub(super) struct Seen(Mutex<std::collections::HashSet<u64>>);

impl Seen {
    fn hash(db: u32, key: &[u8]) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        db.hash(&mut h);
        key.hash(&mut h);
        h.finish()
    }

    pub(super) fn insert(&self, db: u32, key: &[u8]) {
        if let Ok(mut s) = self.0.lock() {
            s.insert(Self::hash(db, key));
        }
    }

    pub(super) fn contains(&self, db: u32, key: &[u8]) -> bool {
        self.0
            .lock()
            .is_ok_and(|s| s.contains(&Self::hash(db, key)))
    }
}

/// A live snapshot worker: fenced reads into the payload store, no writes to the target.
pub(super) async fn run_worker(
    sink: LiveSink,
    limiter: Option<std::sync::Arc<super::RateLimiter>>,
    seen: std::sync::Arc<Seen>,
    batches: std::sync::Arc<tokio::sync::Mutex<mpsc::Receiver<super::Batch>>>,
    events: mpsc::UnboundedSender<super::Event>,
) {
    let nodes = sink.nodes.clone();
    let fatal = |node: &Endpoint, command: &'static str, message: String| {
        let _ = events.send(super::Event::Fatal(super::SnapshotError::Command {
            endpoint: node.redacted().to_string(),
            command,
            message,
        }));
    };
    let mut readers: Vec<Option<FencedReader>> = (0..nodes.len()).map(|_| None).collect();
    loop {
        let batch = batches.lock().await.recv().await;
        let Some(batch) = batch else { break };
        let mut stats = super::BatchStats::default();
        let mut keys: Vec<(u32, Vec<u8>)> = Vec::with_capacity(batch.keys.len());
        for k in &batch.keys {
            let candidates = match (&sink.mapper, batch.sweep) {
                (Some(m), true) => m.unmap_candidates(batch.db, k),
                _ => vec![(batch.db, k.clone())],
            };
            // A target key that no source key maps to is not the migration's: leave it. One
            // whose source key (any of them) was read is already in place.
            if batch.sweep && candidates.iter().any(|(db, k)| seen.contains(*db, k)) {
                continue;
            }
            keys.extend(candidates);
        }
        // Sorted by node, then db: one fenced read per node and db.
        keys.sort_by(|a, b| {
            (nodes.index_of(&a.1), a.0, &a.1).cmp(&(nodes.index_of(&b.1), b.0, &b.1))
        });
        if !keys.is_empty() {
            sink.store.wait_for_space().await;
            if let Some(l) = &limiter {
                l.acquire(2 * keys.len() as u64 + 3).await;
            }
        }
        for part in keys.chunk_by(|a, b| nodes.index_of(&a.1) == nodes.index_of(&b.1)) {
            let i = nodes.index_of(&part[0].1);
            let node = &nodes.all()[i];
            let mut attempt = 0;
            loop {
                if readers[i].is_none() {
                    match FencedReader::connect(node, &sink.peers).await {
                        Ok(r) => readers[i] = Some(r),
                        Err(message) if attempt >= 3 => return fatal(node, "connect", message),
                        Err(e) => {
                            attempt += 1;
                            tracing::warn!(error = %e, "Reconnect failed.");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            continue;
                        }
                    }
                }
                let Some(reader) = readers[i].as_mut() else {
                    continue;
                };
                match reader.read_groups(part, &sink.store).await {
                    Ok(bytes) => {
                        stats.keys += part.len() as u64;
                        stats.bytes += bytes;
                        break;
                    }
                    Err(e) if attempt < 3 => {
                        attempt += 1;
                        tracing::warn!(error = %e, "Snapshot read failed; reconnecting.");
                        readers[i] = None;
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Err(message) => return fatal(node, "fenced read", message),
                }
            }
        }
        for (db, k) in &keys {
            seen.insert(*db, k);
        }
        let _ = events.send(super::Event::Done {
            db: batch.db,
            sweep: batch.sweep,
            retry: batch.retry,
            seq: batch.seq,
            stats,
        });
    }
}
