//! [`Backup`]: the source's keys as an RDB file that a stock `redis-server` loads, built from
//! `DUMP` and `PEXPIRETIME` alone, so it works where `SAVE`, `BGSAVE`, `CONFIG`, `DEBUG` and
//! replication are unavailable (ElastiCache). The final snapshot before a source is deleted.
//!
//! One scanner per db feeds batches of keys to pipelined readers (`MULTI; DUMP k; PEXPIRETIME
//! k; …; EXEC`), whose payloads go to one writer thread that appends them to `FILE.tmp`; the
//! file is fsynced and renamed only once complete.
//!
//! A Redis Cluster source is written as one file per shard ([`Backup::run_all`]), read on
//! each shard's primary in parallel: `FILE.rdb` becomes `FILE.shard0.0-5460.rdb`, … (the
//! shard's index and slot ranges). Each loads into a stock server on its own; together they
//! hold every key (docs/cluster.md).

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::hash::{BuildHasher, Hasher, RandomState};
use std::io::{self, BufWriter};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::Value;
use redis::aio::MultiplexedConnection;
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinSet;

use super::rdb::{self, Payload, PayloadError, RdbWriter};
use crate::clock::now_ms;
use crate::escape::Quoted;
use crate::net::{Endpoint, NetError, info_field};
use crate::snapshot::expiry::ExpiryRead;
use crate::snapshot::slotreads;

/// Parallel readers, each with its own source connection.
pub const DEFAULT_WORKERS: usize = 4;
/// Keys per pipelined read (one `MULTI … EXEC`); with the queues below this bounds the keys
/// in memory to `batch × (2·workers + 2)`.
pub const DEFAULT_BATCH_KEYS: usize = 64;
/// `SCAN … COUNT`.
pub const DEFAULT_SCAN_COUNT: usize = 1000;
/// The writer's buffer: large enough that small keys do not cost a syscall each.
const WRITE_BUFFER: usize = 1 << 20;

/// What to back up and how hard to read.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct BackupConfig {
    /// Dbs to back up; `None` = every db with keys per `INFO keyspace`.
    pub dbs: Option<Vec<u32>>,
    /// Parallel readers.
    pub workers: usize,
    /// Keys per pipelined read.
    pub batch_keys: usize,
    /// `SCAN … COUNT`.
    pub scan_count: usize,
    /// Show a progress bar of keys written (only when stderr is a terminal).
    pub progress: bool,
}

impl Default for BackupConfig {
    fn default() -> Self {
        BackupConfig {
            dbs: None,
            workers: DEFAULT_WORKERS,
            batch_keys: DEFAULT_BATCH_KEYS,
            scan_count: DEFAULT_SCAN_COUNT,
            progress: false,
        }
    }
}

/// What a finished backup wrote.
#[derive(Debug, Clone, Default, serde::Serialize)]
#[non_exhaustive]
pub struct BackupStats {
    /// The file, under its final name.
    pub path: PathBuf,
    /// The dbs backed up.
    pub dbs: Vec<u32>,
    /// Keys written.
    pub keys: u64,
    /// The file's length.
    pub bytes: u64,
    /// The RDB version in the header (the source's `DUMP` version).
    pub rdb_version: u16,
    /// Whether the source's function library went into the file.
    pub functions: bool,
    /// Keys whose expiry had passed when read; a loader would drop them anyway.
    pub skipped_expired: u64,
    /// Keys deleted between `SCAN` and the read.
    pub vanished: u64,
    /// Keys `SCAN` returned more than once (written once).
    pub duplicates: u64,
    pub elapsed: Duration,
}

impl BackupStats {
    /// The one-line summary the CLI prints.
    pub fn summary(&self) -> String {
        let secs = self.elapsed.as_secs_f64().max(1e-6);
        format!(
            "Backup done: {} keys, {:.1} MB in {:.1} s ({:.0} keys/s, {:.1} MB/s); skipped {} expired, {} vanished; {}",
            self.keys,
            self.bytes as f64 / 1e6,
            secs,
            self.keys as f64 / secs,
            self.bytes as f64 / 1e6 / secs,
            self.skipped_expired,
            self.vanished,
            self.path.display()
        )
    }
}

/// Why a backup failed. No file is left under the final name, nor a `.tmp` beside it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    /// The source could not be reached or refused us.
    #[error(transparent)]
    Net(#[from] NetError),
    /// A command the backup needs failed on the source.
    #[error("{endpoint}: {command} failed: {message}")]
    Command {
        endpoint: String,
        command: &'static str,
        message: String,
    },
    /// The output file could not be written.
    #[error("cannot write {path}: {source}")]
    Io { path: String, source: io::Error },
    /// A key was dumped with a newer RDB version than the header promised (the source was
    /// upgraded mid-backup, or its nodes differ).
    #[error(
        "db{db} key {key}: DUMP payload has RDB version {found}, newer than the file's {header}"
    )]
    VersionIncrease {
        db: u32,
        key: String,
        found: u16,
        header: u16,
    },
    /// A payload is malformed or its checksum is wrong.
    #[error("db{db} key {key}: bad DUMP payload: {source}")]
    BadPayload {
        db: u32,
        key: String,
        source: PayloadError,
    },
}

/// One key read from the source.
#[derive(Debug)]
struct Entry {
    key: Vec<u8>,
    payload: Vec<u8>,
    expire_at_ms: Option<i64>,
}

/// What the writer thread is told, in file order.
#[derive(Debug)]
enum ToWriter {
    Db { db: u32, sizes: Option<(u64, u64)> },
    Keys(Vec<Entry>),
    Finish,
}

/// What the readers count besides keys.
#[derive(Debug, Default, Clone, Copy)]
struct Skips {
    expired: u64,
    vanished: u64,
}

/// Builds an RDB file of the source.
///
/// ## Behavior
///
/// - Every selected db is walked with `SCAN`; each key is read with `DUMP` and `PEXPIRETIME`
///   in one transaction, so payload and expiry belong together.
/// - The header carries the source's RDB version (from `FUNCTION DUMP`, or a probe `DUMP`);
///   a later payload with a newer version fails the backup rather than write a file the
///   loader would misread.
/// - Keys whose expiry has passed, or that vanish before their read, are skipped and counted.
///   Keys `SCAN` returns twice are written once (a loader refuses duplicate keys).
/// - Memory: at most `batch × (2·workers + 2)` keys with their values are held at once, plus
///   16 bytes per key for the duplicate filter. A single huge key is necessarily whole in
///   memory, since `DUMP` returns it in one reply.
/// - The file is written as `FILE.tmp` beside the target name, fsynced and renamed, so the
///   final name only ever holds a complete file; on failure the `.tmp` is removed.
#[derive(Debug)]
pub struct Backup {
    source: Endpoint,
    out: PathBuf,
    cfg: BackupConfig,
    /// The source is one primary of a cluster: a transaction holds keys of one slot only.
    by_slot: bool,
}

fn cmd_err(ep: &Endpoint, command: &'static str, e: &redis::RedisError) -> BackupError {
    match ep.classify(e) {
        NetError::Io { message, .. } | NetError::Server { message, .. } => BackupError::Command {
            endpoint: ep.redacted().to_string(),
            command,
            message,
        },
        other => BackupError::Net(other),
    }
}

/// `(keys, keys with a TTL)` per db with keys, from `INFO keyspace`.
fn parse_keyspace(info: &str) -> BTreeMap<u32, (u64, u64)> {
    info.lines()
        .filter_map(|l| {
            let (db, rest) = l.strip_prefix("db")?.split_once(':')?;
            let field = |name: &str| {
                rest.split(',')
                    .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))?
                    .trim()
                    .parse::<u64>()
                    .ok()
            };
            Some((
                db.parse().ok()?,
                (field("keys")?, field("expires").unwrap_or(0)),
            ))
        })
        .collect()
}

/// The value of `field` in `INFO` text.
/// Removes the temporary file unless the backup was committed.
struct TmpFile {
    path: PathBuf,
    committed: bool,
}

impl Drop for TmpFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A 128-bit fingerprint per key seen in a db, so that a duplicate from `SCAN` is dropped
/// without keeping the keys themselves; two keys collide with probability ~n²/2¹²⁹.
struct Seen {
    hashers: (RandomState, RandomState),
    set: HashSet<u128>,
}

impl Seen {
    fn new() -> Seen {
        Seen {
            hashers: (RandomState::new(), RandomState::new()),
            set: HashSet::new(),
        }
    }

    /// True the first time `key` is offered.
    fn first(&mut self, key: &[u8]) -> bool {
        let mut a = self.hashers.0.build_hasher();
        a.write(key);
        let mut b = self.hashers.1.build_hasher();
        b.write(key);
        self.set
            .insert((u128::from(a.finish()) << 64) | u128::from(b.finish()))
    }
}

impl Backup {
    /// A backup of `source` into the file `out`.
    pub fn new(source: Endpoint, out: PathBuf, cfg: BackupConfig) -> Backup {
        Backup {
            source,
            out,
            cfg,
            by_slot: false,
        }
    }

    /// Writes the file, or for a Redis Cluster source one file per shard (named by
    /// [`shard_file`]), the shards read in parallel on their primaries. When a shard fails,
    /// the files of the others are removed too, so a failed run leaves no partial set.
    pub async fn run_all(&self) -> Result<Vec<BackupStats>, BackupError> {
        let Some(t) = crate::net::cluster::Topology::discover(&self.source).await? else {
            return Ok(vec![self.run().await?]);
        };
        if let Some(db) = self.cfg.dbs.iter().flatten().find(|&&db| db != 0) {
            return Err(BackupError::Command {
                endpoint: self.source.redacted().to_string(),
                command: "backup",
                message: format!(
                    "the source is a Redis Cluster, which has db 0 only: --db {db} names none of its keys"
                ),
            });
        }
        tracing::info!(
            source = %self.source,
            primaries = t.shards.len(),
            shards = %t.describe(),
            "The source is a Redis Cluster; one RDB file per shard, each read on its primary."
        );
        let mut tasks = JoinSet::new();
        for (i, shard) in t.shards.iter().enumerate() {
            let sub = Backup {
                source: shard.primary.clone(),
                out: shard_file(&self.out, i, &t.ranges_label(i)),
                cfg: BackupConfig {
                    dbs: Some(vec![0]),
                    progress: false,
                    ..self.cfg.clone()
                },
                by_slot: true,
            };
            tasks.spawn(async move {
                let r = sub.run().await;
                (i, sub.out, r)
            });
        }
        let mut done = Vec::new();
        // Removed on drop unless kept: a failure, or the run dropped on Ctrl-C, leaves no set.
        let mut written = ShardFiles::default();
        let mut first_err = None;
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok((i, out, Ok(stats))) => {
                    written.paths.push(out);
                    done.push((i, stats));
                }
                Ok((_, _, Err(e))) => {
                    first_err.get_or_insert(e);
                }
                Err(e) => {
                    first_err.get_or_insert(BackupError::Command {
                        endpoint: self.source.redacted().to_string(),
                        command: "backup of a shard",
                        message: e.to_string(),
                    });
                }
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        written.kept = true;
        done.sort_by_key(|(i, _)| *i);
        Ok(done.into_iter().map(|(_, s)| s).collect())
    }

    /// Writes the file; see [`Backup`] for what goes in.
    pub async fn run(&self) -> Result<BackupStats, BackupError> {
        let started = Instant::now();
        let workers = self.cfg.workers.max(1);
        let batch_keys = self.cfg.batch_keys.max(1);
        let mut con = self.source.control().await?;
        let keyspace: String = redis::cmd("INFO")
            .arg("keyspace")
            .query_async(&mut con)
            .await
            .map_err(|e| cmd_err(&self.source, "INFO keyspace", &e))?;
        let sizes = parse_keyspace(&keyspace);
        let server: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut con)
            .await
            .map_err(|e| cmd_err(&self.source, "INFO server", &e))?;
        let redis_ver = info_field(&server, "redis_version")
            .unwrap_or("unknown")
            .to_string();
        let dbs: Vec<u32> = match &self.cfg.dbs {
            Some(d) => d.clone(),
            None => sizes.keys().copied().collect(),
        };
        let (version, functions) = self.probe_version(&mut con, &dbs).await?;

        // Every reader connects before the file exists, so bad credentials leave nothing.
        let mut readers = Vec::with_capacity(workers);
        for _ in 0..workers {
            readers.push(self.source.control().await?);
        }

        let (tmp_path, out_path) = self.paths()?;
        let file = File::create(&tmp_path).map_err(|e| io_err(&tmp_path, e))?;
        let mut tmp = TmpFile {
            path: tmp_path.clone(),
            committed: false,
        };
        let mut w = RdbWriter::new(BufWriter::with_capacity(WRITE_BUFFER, file), version)
            .map_err(|e| io_err(&tmp_path, e))?;
        let ctime = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let tool = format!("ferry {}", env!("CARGO_PKG_VERSION"));
        let preamble = (|| {
            w.aux(b"redis-ver", redis_ver.as_bytes())?;
            w.aux(b"redis-bits", b"64")?;
            w.aux(b"ctime", ctime.to_string().as_bytes())?;
            w.aux(b"ferry-backup", tool.as_bytes())?;
            if let Some(f) = &functions {
                w.raw(f)?;
            }
            Ok::<_, io::Error>(())
        })();
        preamble.map_err(|e| io_err(&tmp_path, e))?;

        let (to_writer, from_readers) = mpsc::channel::<ToWriter>(workers + 1);
        let writer_path = tmp_path.clone();
        let total: u64 = dbs.iter().filter_map(|d| sizes.get(d)).map(|s| s.0).sum();
        let bar = if self.cfg.progress {
            crate::snapshot::key_bar(total, "keys")
        } else {
            None
        };
        let writer_bar = bar.clone();
        let writer = tokio::task::spawn_blocking(move || {
            write_all(w, from_readers, &writer_path, writer_bar.as_ref())
        });

        let mut stats = BackupStats {
            path: out_path.clone(),
            dbs: dbs.clone(),
            rdb_version: version,
            functions: functions.as_ref().is_some_and(|f| !f.is_empty()),
            ..BackupStats::default()
        };
        let read = self
            .read_dbs(
                &mut con, readers, &dbs, &sizes, version, &to_writer, &mut stats, batch_keys,
            )
            .await;
        let finished = match read {
            Ok(()) => to_writer.send(ToWriter::Finish).await.is_ok(),
            Err(_) => false,
        };
        drop(to_writer);
        let written = writer.await.map_err(|e| BackupError::Io {
            path: tmp_path.display().to_string(),
            source: io::Error::other(e.to_string()),
        });
        if let Some(b) = &bar {
            b.finish_and_clear();
        }
        // A reader error explains a writer that was cut off, so it comes first.
        read?;
        let (file, keys, bytes) = written??;
        if !finished {
            return Err(io_err(&tmp_path, io::Error::other("writer stopped early")));
        }
        file.sync_all().map_err(|e| io_err(&tmp_path, e))?;
        drop(file);
        std::fs::rename(&tmp_path, &out_path).map_err(|e| io_err(&out_path, e))?;
        tmp.committed = true;
        // The rename is durable only once the directory is; not every platform allows it.
        if let Some(dir) = out_path.parent().filter(|d| !d.as_os_str().is_empty())
            && let Ok(d) = File::open(dir)
        {
            let _ = d.sync_all();
        }
        stats.keys = keys;
        stats.bytes = bytes;
        stats.elapsed = started.elapsed();
        Ok(stats)
    }

    /// `FILE.tmp` and `FILE`, with the directory checked up front.
    fn paths(&self) -> Result<(PathBuf, PathBuf), BackupError> {
        let name = self
            .out
            .file_name()
            .ok_or_else(|| io_err(&self.out, io::Error::other("not a file name")))?;
        let mut tmp_name = name.to_os_string();
        tmp_name.push(".tmp");
        Ok((self.out.with_file_name(tmp_name), self.out.clone()))
    }

    /// The RDB version to write and the function library's opcodes, if the source has
    /// `FUNCTION DUMP` (Redis 7.0+). Older sources are probed with a `DUMP` of a random key.
    async fn probe_version(
        &self,
        con: &mut MultiplexedConnection,
        dbs: &[u32],
    ) -> Result<(u16, Option<Vec<u8>>), BackupError> {
        let reply: redis::RedisResult<Vec<u8>> =
            redis::cmd("FUNCTION").arg("DUMP").query_async(con).await;
        match reply {
            Ok(p) => {
                let (body, version) = rdb::split_trailer(&p).map_err(|e| BackupError::Command {
                    endpoint: self.source.redacted().to_string(),
                    command: "FUNCTION DUMP",
                    message: e.to_string(),
                })?;
                return Ok((version, Some(body.to_vec())));
            }
            Err(e) if e.is_io_error() => {
                return Err(cmd_err(&self.source, "FUNCTION DUMP", &e));
            }
            Err(_) => {}
        }
        for &db in dbs {
            self.select(con, db).await?;
            let key: Option<Vec<u8>> = redis::cmd("RANDOMKEY")
                .query_async(con)
                .await
                .map_err(|e| cmd_err(&self.source, "RANDOMKEY", &e))?;
            let Some(key) = key else { continue };
            let p: Option<Vec<u8>> = redis::cmd("DUMP")
                .arg(key.as_slice())
                .query_async(con)
                .await
                .map_err(|e| cmd_err(&self.source, "DUMP", &e))?;
            if let Some(Ok(pl)) = p.as_deref().map(Payload::parse) {
                return Ok((pl.version, None));
            }
        }
        Ok((rdb::FALLBACK_RDB_VERSION, None))
    }

    /// Switches `con` to `db`.
    async fn select(&self, con: &mut MultiplexedConnection, db: u32) -> Result<(), BackupError> {
        redis::cmd("SELECT")
            .arg(db)
            .query_async::<()>(con)
            .await
            .map_err(|e| cmd_err(&self.source, "SELECT", &e))
    }

    /// Scans each db in turn and has the readers send its keys to the writer.
    #[allow(clippy::too_many_arguments)]
    async fn read_dbs(
        &self,
        con: &mut MultiplexedConnection,
        mut readers: Vec<MultiplexedConnection>,
        dbs: &[u32],
        sizes: &BTreeMap<u32, (u64, u64)>,
        version: u16,
        to_writer: &mpsc::Sender<ToWriter>,
        stats: &mut BackupStats,
        batch_keys: usize,
    ) -> Result<(), BackupError> {
        for &db in dbs {
            self.select(con, db).await?;
            if to_writer
                .send(ToWriter::Db {
                    db,
                    sizes: sizes.get(&db).copied(),
                })
                .await
                .is_err()
            {
                return Ok(()); // The writer failed; its error is reported.
            }
            let (batches_tx, batches_rx) = mpsc::channel::<Vec<Vec<u8>>>(readers.len());
            let batches_rx = Arc::new(Mutex::new(batches_rx));
            let mut tasks = JoinSet::new();
            for mut reader in readers.drain(..) {
                let rx = batches_rx.clone();
                let tx = to_writer.clone();
                let source = self.source.clone();
                let by_slot = self.by_slot;
                tasks.spawn(async move {
                    let skips =
                        read_db(&source, &mut reader, (db, version, by_slot), &rx, &tx).await;
                    (reader, skips)
                });
            }
            let scanned = self.scan_db(con, db, batch_keys, &batches_tx, stats).await;
            drop(batches_tx);
            let mut first_err = scanned.err();
            while let Some(joined) = tasks.join_next().await {
                match joined {
                    Ok((reader, Ok(skips))) => {
                        readers.push(reader);
                        stats.skipped_expired += skips.expired;
                        stats.vanished += skips.vanished;
                    }
                    Ok((_, Err(e))) => {
                        first_err.get_or_insert(e);
                    }
                    Err(e) => {
                        first_err.get_or_insert(BackupError::Command {
                            endpoint: self.source.redacted().to_string(),
                            command: "DUMP",
                            message: format!("reader task failed: {e}"),
                        });
                    }
                }
            }
            if let Some(e) = first_err {
                return Err(e);
            }
        }
        Ok(())
    }

    /// `SCAN`s one db and hands out its keys in batches, each key once.
    async fn scan_db(
        &self,
        con: &mut MultiplexedConnection,
        db: u32,
        batch_keys: usize,
        batches: &mpsc::Sender<Vec<Vec<u8>>>,
        stats: &mut BackupStats,
    ) -> Result<(), BackupError> {
        let mut seen = Seen::new();
        let mut cursor = 0u64;
        let mut pending: Vec<Vec<u8>> = Vec::with_capacity(batch_keys);
        loop {
            let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("COUNT")
                .arg(self.cfg.scan_count)
                .query_async(con)
                .await
                .map_err(|e| cmd_err(&self.source, "SCAN", &e))?;
            for k in keys {
                if !seen.first(&k) {
                    stats.duplicates += 1;
                    continue;
                }
                pending.push(k);
                if pending.len() == batch_keys {
                    let full = std::mem::replace(&mut pending, Vec::with_capacity(batch_keys));
                    if batches.send(full).await.is_err() {
                        return Ok(()); // Every reader stopped; their error is reported.
                    }
                }
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        if !pending.is_empty() {
            let _ = batches.send(pending).await;
        }
        tracing::debug!(db, "Scanned a db for the backup.");
        Ok(())
    }
}

/// The files of a cluster backup's shards, removed on drop unless `kept`.
#[derive(Default)]
struct ShardFiles {
    paths: Vec<PathBuf>,
    kept: bool,
}

impl Drop for ShardFiles {
    fn drop(&mut self) {
        if !self.kept {
            for path in &self.paths {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

/// The file of shard `index` (slot ranges `ranges`, as `0-5460` or `0-99,200`) of a cluster
/// backup to `out`: `dir/name.rdb` becomes `dir/name.shard0.0-5460.rdb` (commas as `+`).
pub fn shard_file(out: &Path, index: usize, ranges: &str) -> PathBuf {
    let stem = out
        .file_stem()
        .map_or_else(|| "backup".into(), |s| s.to_string_lossy().into_owned());
    let ext = out
        .extension()
        .map_or_else(|| "rdb".into(), |e| e.to_string_lossy().into_owned());
    out.with_file_name(format!(
        "{stem}.shard{index}.{}.{ext}",
        ranges.replace(',', "+")
    ))
}

fn io_err(path: &Path, e: io::Error) -> BackupError {
    BackupError::Io {
        path: path.display().to_string(),
        source: e,
    }
}

/// A reader: takes batches of one db until the scanner is done, sends what it read on.
async fn read_db(
    source: &Endpoint,
    con: &mut MultiplexedConnection,
    (db, version, by_slot): (u32, u16, bool),
    batches: &Mutex<mpsc::Receiver<Vec<Vec<u8>>>>,
    to_writer: &mpsc::Sender<ToWriter>,
) -> Result<Skips, BackupError> {
    redis::cmd("SELECT")
        .arg(db)
        .query_async::<()>(con)
        .await
        .map_err(|e| cmd_err(source, "SELECT", &e))?;
    let mut skips = Skips::default();
    let expiry = ExpiryRead::detect(con).await;
    loop {
        let batch = batches.lock().await.recv().await;
        let Some(keys) = batch else { break };
        let entries = if by_slot {
            read_batch_by_slot(source, con, (db, version, expiry), keys, &mut skips).await?
        } else {
            read_batch(source, con, (db, version, expiry), keys, &mut skips).await?
        };
        if !entries.is_empty() && to_writer.send(ToWriter::Keys(entries)).await.is_err() {
            break; // The writer failed; its error is reported.
        }
    }
    Ok(skips)
}

/// One pipelined transaction of `DUMP` and the expiry read per key; checks each payload.
async fn read_batch(
    source: &Endpoint,
    con: &mut MultiplexedConnection,
    (db, version, expiry): (u32, u16, ExpiryRead),
    keys: Vec<Vec<u8>>,
    skips: &mut Skips,
) -> Result<Vec<Entry>, BackupError> {
    let mut pipe = redis::pipe();
    pipe.atomic();
    for k in &keys {
        pipe.cmd("DUMP").arg(k.as_slice());
        expiry.push(&mut pipe, k);
    }
    expiry.finish(&mut pipe);
    let replies: Vec<Value> = pipe
        .query_async(con)
        .await
        .map_err(|e| cmd_err(source, "DUMP", &e))?;
    entries_of(source, (db, version, expiry), keys, replies, skips)
}

/// [`read_batch`] on a primary of a cluster, which refuses a transaction across slots: one
/// `MULTI … EXEC` per slot, all pipelined in one round trip.
async fn read_batch_by_slot(
    source: &Endpoint,
    con: &mut MultiplexedConnection,
    (db, version, expiry): (u32, u16, ExpiryRead),
    keys: Vec<Vec<u8>>,
    skips: &mut Skips,
) -> Result<Vec<Entry>, BackupError> {
    let groups = slotreads::by_slot(keys);
    let replies: Vec<Value> = slotreads::pipeline(&groups, expiry)
        .query_async(con)
        .await
        .map_err(|e| cmd_err(source, "DUMP", &e))?;
    let sizes: Vec<usize> = groups.iter().map(Vec::len).collect();
    let execs = slotreads::exec_replies(replies, sizes, expiry).map_err(|message| {
        BackupError::Command {
            endpoint: source.redacted().to_string(),
            command: "DUMP",
            message,
        }
    })?;
    let mut out = Vec::new();
    for (group, exec) in groups.into_iter().zip(execs) {
        out.extend(entries_of(
            source,
            (db, version, expiry),
            group,
            exec,
            skips,
        )?);
    }
    Ok(out)
}

/// The entries one transaction's replies (`DUMP` and expiry per key, then what
/// [`ExpiryRead::finish`] added) hold for `keys`; checks each payload.
fn entries_of(
    source: &Endpoint,
    (db, version, expiry): (u32, u16, ExpiryRead),
    keys: Vec<Vec<u8>>,
    replies: Vec<Value>,
    skips: &mut Skips,
) -> Result<Vec<Entry>, BackupError> {
    let clock = expiry.clock(&replies);
    if replies.len() != 2 * keys.len() + expiry.extra_replies() {
        return Err(BackupError::Command {
            endpoint: source.redacted().to_string(),
            command: "DUMP",
            message: format!(
                "EXEC returned {} replies for {} reads",
                replies.len(),
                2 * keys.len()
            ),
        });
    }
    let now = now_ms();
    let mut out = Vec::with_capacity(keys.len());
    let mut replies = replies.into_iter();
    for key in keys {
        let (dump, ttl) = (replies.next(), replies.next());
        let payload = match dump {
            Some(Value::BulkString(p)) => p,
            Some(Value::ServerError(e)) => {
                return Err(BackupError::Command {
                    endpoint: source.redacted().to_string(),
                    command: "DUMP",
                    message: format!("{} {}", e.code(), e.details().unwrap_or_default()),
                });
            }
            _ => {
                skips.vanished += 1;
                continue;
            }
        };
        let expire_at_ms = ttl.and_then(|t| expiry.expire_at(&t, clock));
        if expire_at_ms.is_some_and(|t| t <= now) {
            skips.expired += 1;
            continue;
        }
        let bad = |source| BackupError::BadPayload {
            db,
            key: Quoted(&key).to_string(),
            source,
        };
        let parsed = Payload::parse(&payload).map_err(bad)?;
        parsed.verify().map_err(bad)?;
        if parsed.version > version {
            return Err(BackupError::VersionIncrease {
                db,
                key: Quoted(&key).to_string(),
                found: parsed.version,
                header: version,
            });
        }
        out.push(Entry {
            key,
            payload,
            expire_at_ms,
        });
    }
    Ok(out)
}

/// The writer thread: appends what the readers send, in order, until `Finish`.
/// Returns the file (flushed, not yet fsynced), the keys written and the file's length.
fn write_all(
    mut w: RdbWriter<BufWriter<File>>,
    mut rx: mpsc::Receiver<ToWriter>,
    path: &Path,
    bar: Option<&indicatif::ProgressBar>,
) -> Result<(File, u64, u64), BackupError> {
    let mut keys = 0u64;
    let err = |e: io::Error| io_err(path, e);
    while let Some(msg) = rx.blocking_recv() {
        match msg {
            ToWriter::Db { db, sizes } => w.select_db(db, sizes).map_err(err)?,
            ToWriter::Keys(entries) => {
                if let Some(b) = bar {
                    crate::snapshot::advance_bar(b, entries.len() as u64);
                }
                for e in entries {
                    // The reader checked the layout already.
                    let Ok(p) = Payload::parse(&e.payload) else {
                        continue;
                    };
                    w.key(&e.key, e.expire_at_ms, &p).map_err(err)?;
                    keys += 1;
                }
            }
            ToWriter::Finish => {
                let (buf, bytes) = w.finish().map_err(err)?;
                let file = buf.into_inner().map_err(|e| err(e.into_error()))?;
                return Ok((file, keys, bytes));
            }
        }
    }
    Err(err(io::Error::other("the backup stopped before the end")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyspace_sizes() {
        let info =
            "# Keyspace\r\ndb0:keys=10,expires=2,avg_ttl=0\r\ndb3:keys=1,expires=0,avg_ttl=0\r\n";
        let m = parse_keyspace(info);
        assert_eq!(m.get(&0), Some(&(10, 2)));
        assert_eq!(m.get(&3), Some(&(1, 0)));
        assert_eq!(m.len(), 2);
        assert_eq!(
            info_field("# Server\r\nredis_version:7.0.15\r\n", "redis_version"),
            Some("7.0.15")
        );
    }

    #[test]
    fn shard_files_carry_the_index_and_slot_ranges() {
        let f = shard_file(Path::new("/b/final.rdb"), 1, "5461-10922");
        assert_eq!(f, Path::new("/b/final.shard1.5461-10922.rdb"));
        let f = shard_file(Path::new("out"), 0, "0-99,200");
        assert_eq!(f, Path::new("out.shard0.0-99+200.rdb"));
    }

    #[test]
    fn seen_drops_only_repeats() {
        let mut s = Seen::new();
        assert!(s.first(b"a"));
        assert!(s.first(b"b"));
        assert!(!s.first(b"a"));
        assert!(s.first(b""));
        assert!(!s.first(b""));
    }
}
