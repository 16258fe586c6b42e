//! A snapshot worker: fenced reads of a batch on the source, pipelined `RESTORE` on the target,
//! and the chunked path for big keys and rejected payloads.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis::Value;
use redis::aio::MultiplexedConnection;
use tokio::sync::{Mutex, mpsc};

use super::chunked::{ChunkedOptions, KeyType, copy_chunked, temp_key};
use super::cluster::ClusterWriter;
use super::expiry::ExpiryRead;
use super::tempkeys::TempKeys;
use super::{
    Batch, BatchStats, Event, Failure, Fence, KeyCopy, RateLimiter, SnapshotConfig, SnapshotError,
};
use crate::clock::now_ms;
use crate::net::Endpoint;
use crate::net::cluster::Topology;

/// Attempts per batch before a connection problem stops the snapshot.
const ATTEMPTS: u32 = 3;

/// What all workers share.
#[derive(Debug)]
pub(super) struct Shared {
    source: Endpoint,
    target: Endpoint,
    cfg: SnapshotConfig,
    limiter: Option<Arc<RateLimiter>>,
    /// Set once the target rejected a payload version; later keys skip `RESTORE`.
    version_rejected: AtomicBool,
    /// Cleared when the source refuses `MEMORY USAGE`; sizes are then unknown.
    memory_usage: AtomicBool,
    /// A cluster target's topology: writes go to each key's primary.
    pub(super) cluster: Option<Topology>,
    /// The source is a primary of a cluster, which refuses a transaction across slots: a
    /// fenced read is one `MULTI … EXEC` per slot.
    pub(super) by_slot: bool,
    /// The target has no `RESTORE … ABSTTL` (Redis 4.0): restores carry the TTL left.
    pub(super) relative_restores: bool,
}

impl Shared {
    pub(super) fn new(
        source: Endpoint,
        target: Endpoint,
        cfg: SnapshotConfig,
        limiter: Option<Arc<RateLimiter>>,
    ) -> Shared {
        Shared {
            source,
            target,
            cfg,
            limiter,
            version_rejected: AtomicBool::new(false),
            memory_usage: AtomicBool::new(true),
            cluster: None,
            by_slot: false,
            relative_restores: false,
        }
    }

    async fn limit(&self, ops: usize) {
        if let Some(l) = &self.limiter {
            l.acquire(ops as u64).await;
        }
    }
}

struct Worker {
    id: u32,
    shared: Arc<Shared>,
    src: MultiplexedConnection,
    dst: MultiplexedConnection,
    /// Toward a cluster: a connection per primary; `dst` then only answers `PING`s.
    cluster: Option<ClusterWriter>,
    addr: String,
    src_db: Option<u32>,
    dst_db: Option<u32>,
    ordinal: u64,
    /// Kept across reconnects: a temporary key outlives the connection that made it.
    temp: TempKeys,
    /// How this source gives expiries.
    expiry: ExpiryRead,
    /// What the chunked copy does with hash-field TTLs (Redis 7.4).
    field_ttls: super::chunked::FieldTtls,
}

/// A failure that may go away with a new connection.
struct Retry(String);

impl From<redis::RedisError> for Retry {
    fn from(e: redis::RedisError) -> Retry {
        Retry(crate::net::short_error(&e, |_| None))
    }
}

fn error_text(v: &Value) -> Option<String> {
    match v {
        Value::ServerError(e) => Some(format!("{} {}", e.code(), e.details().unwrap_or_default())),
        _ => None,
    }
}

/// The short reason under which a failure is counted: the error code.
fn reason_of(message: &str) -> String {
    message
        .split_whitespace()
        .next()
        .unwrap_or("ERR")
        .to_string()
}

impl Worker {
    async fn connect(
        id: u32,
        shared: Arc<Shared>,
        temp: TempKeys,
    ) -> Result<Worker, SnapshotError> {
        let mut src = shared.source.control().await?;
        let dst = shared.target.control().await?;
        let cluster = match &shared.cluster {
            Some(t) => Some(ClusterWriter::connect(&shared.target, t).await?),
            None => None,
        };
        let addr = crate::net::client_addr(&mut src)
            .await
            .map_err(|e| SnapshotError::Command {
                endpoint: shared.source.redacted().to_string(),
                command: "CLIENT INFO",
                message: e.to_string(),
            })?;
        let expiry = ExpiryRead::detect(&mut src).await;
        let field_ttls = match (
            crate::net::Engine::detect(&shared.source)
                .await?
                .has_hash_field_expiry(),
            crate::net::Engine::detect(&shared.target)
                .await?
                .has_hash_field_expiry(),
        ) {
            (false, _) => super::chunked::FieldTtls::None,
            (true, true) => super::chunked::FieldTtls::Copy,
            // The snapshot refused to start unless the caller drops them.
            (true, false) => super::chunked::FieldTtls::Drop,
        };
        Ok(Worker {
            id,
            shared,
            src,
            dst,
            cluster,
            addr,
            src_db: None,
            dst_db: None,
            ordinal: 0,
            temp,
            expiry,
            field_ttls,
        })
    }

    async fn select(&mut self, db: u32) -> Result<(), Retry> {
        if self.src_db != Some(db) {
            redis::cmd("SELECT")
                .arg(db)
                .query_async::<()>(&mut self.src)
                .await?;
            self.src_db = Some(db);
        }
        // A cluster has db 0 only (the snapshot refused other dbs at start).
        if self.dst_db != Some(db) && self.cluster.is_none() {
            redis::cmd("SELECT")
                .arg(db)
                .query_async::<()>(&mut self.dst)
                .await?;
            self.dst_db = Some(db);
        }
        Ok(())
    }

    /// Splits a batch into keys for `DUMP` and keys for the chunked path.
    async fn partition(&mut self, keys: &[Vec<u8>]) -> Result<(Vec<usize>, Vec<usize>), Retry> {
        let all: Vec<usize> = (0..keys.len()).collect();
        if self.shared.cfg.type_aware || self.shared.version_rejected.load(Ordering::Relaxed) {
            return Ok((Vec::new(), all));
        }
        if !self.shared.memory_usage.load(Ordering::Relaxed) {
            return Ok((all, Vec::new()));
        }
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for k in keys {
            pipe.cmd("MEMORY").arg("USAGE").arg(k.as_slice());
        }
        self.shared.limit(keys.len()).await;
        let sizes: Vec<Value> = pipe.query_async(&mut self.src).await?;
        let (mut small, mut big) = (Vec::new(), Vec::new());
        for (i, v) in sizes.iter().enumerate() {
            match v {
                Value::Int(n) if *n as u64 > self.shared.cfg.big_key_bytes => big.push(i),
                Value::ServerError(e) if e.code() == "ERR" => {
                    if self.shared.memory_usage.swap(false, Ordering::Relaxed) {
                        tracing::warn!(
                            error = %error_text(v).unwrap_or_default(),
                            "The source refuses MEMORY USAGE; big keys will be copied with DUMP."
                        );
                    }
                    small.push(i);
                }
                _ => small.push(i),
            }
        }
        Ok((small, big))
    }

    /// The fenced read of `keys` on a cluster's primary: one `MULTI … EXEC` per slot (a
    /// cluster refuses a transaction across slots), all pipelined in one round trip.
    async fn fenced_read_by_slot(
        &mut self,
        db: u32,
        keys: &[&[u8]],
        stats: &mut BatchStats,
    ) -> Result<Vec<KeyCopy>, Retry> {
        let groups = super::slotreads::by_slot(keys.iter().copied());
        if groups.len() < 2 {
            return self.fenced_read_one(db, keys, stats).await;
        }
        let pipe = super::slotreads::pipeline(&groups, self.expiry);
        self.shared.limit(2 * keys.len() + 3 * groups.len()).await;
        let replies: Vec<Value> = pipe.query_async(&mut self.src).await?;
        let execs =
            super::slotreads::exec_replies(replies, groups.iter().map(Vec::len), self.expiry)
                .map_err(Retry)?;
        let mut out = Vec::with_capacity(keys.len());
        for (group, exec) in groups.iter().zip(execs) {
            out.extend(self.copies(db, group, &exec, stats)?);
        }
        Ok(out)
    }

    /// The fenced read of `keys`: one `MULTI; DUMP; PEXPIRETIME; …; EXEC`.
    async fn fenced_read(
        &mut self,
        db: u32,
        keys: &[&[u8]],
        stats: &mut BatchStats,
    ) -> Result<Vec<KeyCopy>, Retry> {
        if self.shared.by_slot {
            return self.fenced_read_by_slot(db, keys, stats).await;
        }
        self.fenced_read_one(db, keys, stats).await
    }

    /// One `MULTI; DUMP; PEXPIRETIME; …; EXEC` over all of `keys`.
    async fn fenced_read_one(
        &mut self,
        db: u32,
        keys: &[&[u8]],
        stats: &mut BatchStats,
    ) -> Result<Vec<KeyCopy>, Retry> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for k in keys {
            pipe.cmd("DUMP").arg(*k);
            self.expiry.push(&mut pipe, k);
        }
        self.expiry.finish(&mut pipe);
        self.shared.limit(2 * keys.len() + 2).await;
        let replies: Vec<Value> = pipe.query_async(&mut self.src).await.map_err(|e| {
            Retry(crate::net::short_error(&e, |i| {
                keys.get(i / 2)
                    .map(|k| crate::escape::Quoted(k).to_string())
            }))
        })?;
        self.copies(db, keys, &replies, stats)
    }

    /// The copies one transaction's replies (`DUMP` and expiry per key, then what
    /// [`ExpiryRead::finish`] added) hold for `keys`.
    fn copies(
        &mut self,
        db: u32,
        keys: &[&[u8]],
        replies: &[Value],
        stats: &mut BatchStats,
    ) -> Result<Vec<KeyCopy>, Retry> {
        if replies.len() != 2 * keys.len() + self.expiry.extra_replies() {
            return Err(Retry(format!(
                "EXEC returned {} replies for {} reads",
                replies.len(),
                2 * keys.len()
            )));
        }
        let clock = self.expiry.clock(replies);
        let mut out = Vec::with_capacity(keys.len());
        for (k, pair) in keys.iter().zip(replies.chunks_exact(2)) {
            let ordinal = self.ordinal;
            self.ordinal += 1;
            let payload = match &pair[0] {
                Value::BulkString(p) => p.clone(),
                _ => {
                    stats.vanished += 1;
                    continue;
                }
            };
            let expire_at_ms = self.expiry.expire_at(&pair[1], clock);
            out.push(KeyCopy {
                db,
                key: k.to_vec(),
                payload,
                expire_at_ms,
                fence: Fence {
                    worker: self.id,
                    addr: self.addr.clone(),
                    db,
                    ordinal,
                },
            });
        }
        Ok(out)
    }

    /// Restores copies on the target; returns the keys whose payload the target rejected.
    async fn restore(
        &mut self,
        copies: Vec<KeyCopy>,
        stats: &mut BatchStats,
    ) -> Result<Vec<Vec<u8>>, Retry> {
        let now = now_ms();
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        let mut sent = Vec::with_capacity(copies.len());
        for c in copies {
            match c.expire_at_ms {
                Some(t) if t <= now => stats.skipped_expired += 1,
                // Redis 4.0: the TTL left now (it runs late by the pipeline's latency).
                Some(t) if self.shared.relative_restores => {
                    pipe.cmd("RESTORE")
                        .arg(c.key.as_slice())
                        .arg(t - now)
                        .arg(c.payload.as_slice())
                        .arg("REPLACE");
                    sent.push(c);
                }
                Some(t) => {
                    pipe.cmd("RESTORE")
                        .arg(c.key.as_slice())
                        .arg(t)
                        .arg(c.payload.as_slice())
                        .arg("REPLACE")
                        .arg("ABSTTL");
                    sent.push(c);
                }
                None => {
                    pipe.cmd("RESTORE")
                        .arg(c.key.as_slice())
                        .arg(0)
                        .arg(c.payload.as_slice())
                        .arg("REPLACE");
                    sent.push(c);
                }
            }
        }
        if sent.is_empty() {
            return Ok(Vec::new());
        }
        let replies: Vec<Value> = match self.cluster.as_mut() {
            None => pipe.query_async(&mut self.dst).await?,
            Some(c) => {
                let cmds: Vec<(&[u8], redis::Cmd)> = sent
                    .iter()
                    .map(|c| c.key.as_slice())
                    .zip(pipe.cmd_iter().cloned())
                    .collect();
                c.run(&cmds).await?
            }
        };
        let mut rejected = Vec::new();
        for (c, r) in sent.into_iter().zip(&replies) {
            match error_text(r) {
                None => {
                    stats.keys += 1;
                    stats.bytes += c.payload.len() as u64;
                }
                Some(msg) if msg.contains("payload version or checksum") => {
                    if !self.shared.version_rejected.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            "The target rejects the source's DUMP payloads (version); copying type-aware from now on."
                        );
                    }
                    rejected.push(c.key);
                }
                Some(msg) => stats.failed.push(Failure {
                    db: c.db,
                    key: c.key,
                    reason: format!("RESTORE {}", reason_of(&msg)),
                }),
            }
        }
        Ok(rejected)
    }

    /// Copies one key type-aware; the fence is `MULTI; TYPE k; PEXPIRETIME k; EXEC`.
    async fn chunked(&mut self, db: u32, key: &[u8], stats: &mut BatchStats) -> Result<(), Retry> {
        let mut pipe = redis::pipe();
        pipe.atomic().cmd("TYPE").arg(key);
        self.expiry.push(&mut pipe, key);
        self.expiry.finish(&mut pipe);
        self.shared.limit(4).await;
        let replies: Vec<Value> = pipe.query_async(&mut self.src).await?;
        let ty = match replies.first() {
            Some(Value::SimpleString(t)) => t.clone(),
            Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
            other => return Err(Retry(format!("TYPE returned {other:?}"))),
        };
        let exp = replies.get(1).cloned().unwrap_or(Value::Nil);
        self.ordinal += 1;
        let fail = |reason: String| Failure {
            db,
            key: key.to_vec(),
            reason,
        };
        if ty == "none" {
            stats.vanished += 1;
            return Ok(());
        }
        let Some(kt) = KeyType::parse(&ty) else {
            stats.failed.push(fail(format!("unsupported type {ty}")));
            return Ok(());
        };
        let expire_at_ms = self.expiry.expire_at(&exp, self.expiry.clock(&replies));
        if expire_at_ms.is_some_and(|t| t <= now_ms()) {
            stats.skipped_expired += 1;
            return Ok(());
        }
        // Recorded before it exists, so that a kill at any point leaves a name to delete.
        let tmp = temp_key(key);
        self.temp
            .begin(db, &tmp)
            .map_err(|e| Retry(e.to_string()))?;
        let opts = ChunkedOptions::new(self.shared.cfg.chunk)
            .with_limiter(self.shared.limiter.clone())
            .with_temp_key(tmp.clone())
            .with_field_ttls(self.field_ttls);
        let dst = match self.cluster.as_mut() {
            Some(c) => c.conn_for(key),
            None => &mut self.dst,
        };
        let result = copy_chunked(&mut self.src, dst, key, key, kt, expire_at_ms, &opts).await;
        // On success the temporary key was renamed or deleted; after a failure the copy's own
        // clean-up is best effort, so the record keeps the name unless this DEL confirms it.
        if result.is_ok()
            || redis::cmd("DEL")
                .arg(&tmp)
                .exec_async(match self.cluster.as_mut() {
                    Some(c) => c.conn_for(key),
                    None => &mut self.dst,
                })
                .await
                .is_ok()
        {
            self.temp.end(db, &tmp);
        }
        match result {
            // An empty stream is a real key with no entries; any other type with none vanished.
            Ok(s) if s.elements == 0 && kt != KeyType::Stream => stats.vanished += 1,
            Ok(s) => {
                stats.keys += 1;
                stats.chunked_keys += 1;
                stats.field_ttls += s.field_ttls;
                stats.field_ttls_dropped += s.field_ttls_dropped;
                stats.bytes += s.bytes;
            }
            Err(e) => stats.failed.push(fail(format!("chunked copy: {e}"))),
        }
        Ok(())
    }

    async fn process(&mut self, batch: &Batch) -> Result<BatchStats, Retry> {
        let mut stats = BatchStats::default();
        if batch.keys.is_empty() {
            return Ok(stats);
        }
        self.select(batch.db).await?;
        let (small, big) = self.partition(&batch.keys).await?;
        if !small.is_empty() {
            let keys: Vec<&[u8]> = small.iter().map(|i| batch.keys[*i].as_slice()).collect();
            let copies = self.fenced_read(batch.db, &keys, &mut stats).await?;
            for key in self.restore(copies, &mut stats).await? {
                self.chunked(batch.db, &key, &mut stats).await?;
            }
        }
        for i in big {
            self.chunked(batch.db, &batch.keys[i], &mut stats).await?;
        }
        Ok(stats)
    }
}

/// A worker task: takes batches until the scanner is done.
pub(super) async fn run(
    id: u32,
    shared: Arc<Shared>,
    batches: Arc<Mutex<mpsc::Receiver<Batch>>>,
    events: mpsc::UnboundedSender<Event>,
) {
    let temp = TempKeys::new(shared.cfg.state_dir.as_deref(), &shared.target, id);
    let mut worker = match Worker::connect(id, shared.clone(), temp).await {
        Ok(w) => w,
        Err(e) => {
            let _ = events.send(Event::Fatal(e));
            return;
        }
    };
    loop {
        let batch = batches.lock().await.recv().await;
        let Some(batch) = batch else { break };
        let mut attempt = 1;
        let stats = loop {
            match worker.process(&batch).await {
                Ok(stats) => break Ok(stats),
                Err(Retry(msg)) if attempt < ATTEMPTS => {
                    tracing::warn!(worker = id, attempt, error = %msg, "Retrying a snapshot batch on new connections.");
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
                    attempt += 1;
                    let temp = std::mem::take(&mut worker.temp);
                    match Worker::connect(id, shared.clone(), temp).await {
                        Ok(w) => worker = w,
                        Err(e) => break Err(e),
                    }
                }
                Err(Retry(msg)) => {
                    break Err(SnapshotError::Command {
                        endpoint: format!("{} → {}", shared.source, shared.target),
                        command: "snapshot batch",
                        message: msg,
                    });
                }
            }
        };
        match stats {
            Ok(stats) => {
                let _ = events.send(Event::Done {
                    db: batch.db,
                    sweep: batch.sweep,
                    retry: batch.retry,
                    seq: batch.seq,
                    stats,
                });
            }
            Err(e) => {
                let _ = events.send(Event::Fatal(e));
                return;
            }
        }
    }
}
