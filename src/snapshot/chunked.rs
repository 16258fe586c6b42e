//! Type-aware chunked copy of one key (big keys, and keys whose `DUMP` the target rejects), with
//! memory bounded by about two windows.
//!
//! ## Behavior
//! - The value is read in windows (`GETRANGE`, `LRANGE`, `HSCAN`, `SSCAN`, `ZSCAN`, `XRANGE`)
//!   and written with one variadic command per window (`SET`/`APPEND`, `RPUSH`, `HSET`, `SADD`,
//!   `ZADD`, pipelined `XADD`s) to a temporary key in the same hash slot as the key. Reading
//!   window N+1 overlaps writing window N; nothing else is in flight.
//! - A window is `chunk` elements (`chunk*64` bytes of a string). A stream window is up to
//!   `chunk` entries plus up to `chunk` pending entries per consumer group; group and consumer
//!   lists are held whole (they are small in practice).
//! - At the end `MULTI; RENAME tmp key; PEXPIREAT key ms; EXEC` swaps the value in, so the target
//!   never shows a half-copied key.
//! - Hash-field TTLs (Redis 7.4), with [`ChunkedOptions::field_ttls`]: after each `HSCAN` window,
//!   `HPEXPIRETIME` of its fields, then `HPEXPIREAT` of those that have one on the temporary key
//!   (absolute times, so the copy's duration does not stretch them), and `HDEL` of a field that
//!   expired between the two reads.
//! - Streams keep their IDs, `last-generated-id`, `entries-added`, `max-deleted-entry-id`, and
//!   every consumer group's `last-delivered-id`, `entries-read`, consumers and pending entries
//!   (owner, delivery count, idle time up to the copy's duration), including pending entries
//!   whose stream entry was deleted. Consumers' own idle (seen) times are not kept.
//! - A key that is gone when the first read arrives is deleted on the target too.
//! - Each window's read acquires its commands from the source's [`RateLimiter`], when one is
//!   given, so `--max-source-ops` holds for big keys too.
//! - On any failure the temporary key is deleted (best effort) and the target key is untouched.
//!   If the future is dropped midway (or the process killed), the temporary key
//!   (`…ferry-tmp:<hex>`) stays behind; callers that must clean up pick its name with
//!   [`temp_key`], record it, and pass it in [`ChunkedOptions::temp_key`].

use std::collections::BTreeSet;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use redis::aio::MultiplexedConnection;
use redis::cluster_routing::Slot;
use redis::{Pipeline, RedisError, Value};

use super::RateLimiter;
use crate::escape::Quoted;

/// Redis value types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    String,
    List,
    Set,
    ZSet,
    Hash,
    Stream,
}

impl KeyType {
    /// The type named by a `TYPE` reply; `None` for `none` and module types.
    pub fn parse(type_reply: &str) -> Option<KeyType> {
        match type_reply {
            "string" => Some(KeyType::String),
            "list" => Some(KeyType::List),
            "set" => Some(KeyType::Set),
            "zset" => Some(KeyType::ZSet),
            "hash" => Some(KeyType::Hash),
            "stream" => Some(KeyType::Stream),
            _ => None,
        }
    }
}

/// What one chunked copy moved.
#[derive(Debug, Clone, Default)]
pub struct ChunkedStats {
    /// List items, hash fields, set or zset members, stream entries; 1 for a string; 0 when the
    /// key had vanished from the source.
    pub elements: u64,
    /// Bytes of element data read (members, fields, values, scores as text), without protocol
    /// overhead.
    pub bytes: u64,
    /// Hash fields copied with their TTL.
    pub field_ttls: u64,
    /// Hash fields copied without the TTL they have on the source ([`FieldTtls::Drop`]).
    pub field_ttls_dropped: u64,
}

/// Why a chunked copy failed. The target key is left as it was.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChunkedError {
    /// A read on the source failed (connection, or a server error such as `WRONGTYPE` when the
    /// key changed type under us).
    #[error("reading {} on the source: {}", Quoted(.key), crate::net::short_error(.source, |_| None))]
    Source { key: Vec<u8>, source: RedisError },
    /// A write on the target failed.
    #[error("writing {} on the target: {}", Quoted(.key), crate::net::short_error(.source, |_| None))]
    Target { key: Vec<u8>, source: RedisError },
    /// The source answered with something this module does not understand.
    #[error("unexpected reply while copying {}: {detail}", Quoted(.key))]
    Reply { key: Vec<u8>, detail: String },
}

/// How one chunked copy runs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ChunkedOptions {
    /// Elements per window; a string window is `chunk*64` bytes.
    pub chunk: usize,
    /// Paces the reads on the source: each window's read acquires as many ops as it sends
    /// commands (`MULTI`/`EXEC` included). `None` reads as fast as the source answers.
    pub limiter: Option<Arc<RateLimiter>>,
    /// The temporary key on the target; `None` picks a fresh one with [`temp_key`]. It must be
    /// in the hash slot of the key (as [`temp_key`] makes it) and must not exist.
    pub temp_key: Option<Vec<u8>>,
    /// What becomes of hash-field TTLs (Redis 7.4).
    pub field_ttls: FieldTtls,
}

/// What a chunked copy does with hash-field TTLs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FieldTtls {
    /// The source has none (before Redis 7.4, Valkey): nothing is read.
    #[default]
    None,
    /// Both sides have them: `HPEXPIRETIME` → `HPEXPIREAT`.
    Copy,
    /// The target has none and the caller drops them: read and counted
    /// ([`ChunkedStats::field_ttls_dropped`]), the fields copied without them.
    Drop,
}

impl ChunkedOptions {
    /// Windows of `chunk` elements, no pacing, a fresh temporary key.
    pub fn new(chunk: usize) -> ChunkedOptions {
        ChunkedOptions {
            chunk,
            limiter: None,
            temp_key: None,
            field_ttls: FieldTtls::None,
        }
    }

    /// What to do with hash-field TTLs.
    pub fn with_field_ttls(mut self, mode: FieldTtls) -> ChunkedOptions {
        self.field_ttls = mode;
        self
    }

    /// Paces the source reads with `limiter`.
    pub fn with_limiter(mut self, limiter: Option<Arc<RateLimiter>>) -> ChunkedOptions {
        self.limiter = limiter;
        self
    }

    /// Builds the value under `tmp` (from [`temp_key`]).
    pub fn with_temp_key(mut self, tmp: Vec<u8>) -> ChunkedOptions {
        self.temp_key = Some(tmp);
        self
    }
}

/// Copies `read_key` on the source (db already selected on `src`) into `key` on the target
/// (db already selected on `dst`), `opts.chunk` elements (or `chunk*64` bytes of a string) at
/// a time. The value is built under a temporary key on the target and renamed over `key` at
/// the end, so the target never shows a half-copied key; the expiry `expire_at_ms` (absolute
/// unix ms, None = persistent) is applied in the same MULTI as the rename.
/// `read_key` may differ from `key` (ferry may read from a frozen copy on the source).
pub async fn copy_chunked(
    src: &mut MultiplexedConnection,
    dst: &mut MultiplexedConnection,
    read_key: &[u8],
    key: &[u8],
    ty: KeyType,
    expire_at_ms: Option<i64>,
    opts: &ChunkedOptions,
) -> Result<ChunkedStats, ChunkedError> {
    let tmp = opts.temp_key.clone().unwrap_or_else(|| temp_key(key));
    let chunk = opts.chunk.max(1);
    let mut copier: Box<dyn Copier + Send> = match ty {
        KeyType::String => Box::new(StringCopier::new(read_key, &tmp, chunk.saturating_mul(64))),
        KeyType::List => Box::new(ListCopier::new(read_key, &tmp, chunk)),
        KeyType::Set => Box::new(ScanCopier::new(Scan::Set, read_key, &tmp, chunk)),
        KeyType::ZSet => Box::new(ScanCopier::new(Scan::ZSet, read_key, &tmp, chunk)),
        KeyType::Hash => {
            let mut c = ScanCopier::new(Scan::Hash, read_key, &tmp, chunk);
            c.field_ttls = (opts.field_ttls != FieldTtls::None).then(Vec::new);
            c.drop_ttls = opts.field_ttls == FieldTtls::Drop;
            Box::new(c)
        }
        KeyType::Stream => Box::new(StreamCopier::new(read_key, &tmp, chunk)),
    };
    let mut stats = ChunkedStats::default();
    let limiter = opts.limiter.as_deref();
    let result = match drive(
        src,
        dst,
        copier.as_mut(),
        &mut stats,
        limiter,
        read_key,
        key,
    )
    .await
    {
        Ok(()) if copier.found() => finish(dst, &tmp, key, expire_at_ms).await,
        Ok(()) => {
            // The source no longer has the key, so neither may the target.
            stats = ChunkedStats::default();
            redis::pipe()
                .cmd("DEL")
                .arg(&tmp)
                .arg(key)
                .exec_async(dst)
                .await
                .map_err(|source| target_error(key, source))
        }
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => Ok(stats),
        Err(e) => {
            // Best effort: the connection that just failed may well fail this too.
            let _ = redis::cmd("DEL").arg(&tmp).exec_async(dst).await;
            Err(e)
        }
    }
}

/// Reads window after window and writes each, with the read of the next window in flight while
/// the previous one is written.
async fn drive(
    src: &mut MultiplexedConnection,
    dst: &mut MultiplexedConnection,
    copier: &mut (dyn Copier + Send),
    stats: &mut ChunkedStats,
    limiter: Option<&RateLimiter>,
    read_key: &[u8],
    key: &[u8],
) -> Result<(), ChunkedError> {
    let mut write: Option<Pipeline> = None;
    loop {
        let read = copier.next_read();
        if read.is_none() && write.is_none() {
            return Ok(());
        }
        let write_fut = async {
            match write.take() {
                Some(pipe) => pipe.exec_async(dst).await,
                None => Ok(()),
            }
        };
        let read_fut = async {
            match read {
                Some(pipe) => {
                    // Paced inside the read so that the previous window's write goes on meanwhile.
                    if let Some(l) = limiter {
                        l.acquire(RateLimiter::ops_of(&pipe)).await;
                    }
                    pipe.query_async::<Vec<Value>>(src).await.map(Some)
                }
                None => Ok(None),
            }
        };
        let (written, replies) = tokio::join!(write_fut, read_fut);
        written.map_err(|source| target_error(key, source))?;
        let replies = replies.map_err(|source| ChunkedError::Source {
            key: read_key.to_vec(),
            source,
        })?;
        if let Some(replies) = replies {
            let pipe = copier
                .absorb(replies, stats)
                .map_err(|e| e.into_error(read_key))?;
            write = (!pipe.is_empty()).then_some(pipe);
        }
    }
}

async fn finish(
    dst: &mut MultiplexedConnection,
    tmp: &[u8],
    key: &[u8],
    expire_at_ms: Option<i64>,
) -> Result<(), ChunkedError> {
    let mut pipe = redis::pipe();
    // tmp never had a TTL, so RENAME brings none; the source's expiry is set here or not at all.
    pipe.atomic().cmd("RENAME").arg(tmp).arg(key).ignore();
    if let Some(ms) = expire_at_ms {
        pipe.cmd("PEXPIREAT").arg(key).arg(ms).ignore();
    }
    pipe.exec_async(dst)
        .await
        .map_err(|source| target_error(key, source))
}

fn target_error(key: &[u8], source: RedisError) -> ChunkedError {
    ChunkedError::Target {
        key: key.to_vec(),
        source,
    }
}

/// A problem with a source reply, before the key is attached.
enum ReadError {
    Server(RedisError),
    Shape(String),
}

impl ReadError {
    fn into_error(self, read_key: &[u8]) -> ChunkedError {
        let key = read_key.to_vec();
        match self {
            ReadError::Server(source) => ChunkedError::Source { key, source },
            ReadError::Shape(detail) => ChunkedError::Reply { key, detail },
        }
    }
}

fn shape(detail: impl Into<String>) -> ReadError {
    ReadError::Shape(detail.into())
}

/// One type's copy: which windows to read, and what to write for each.
trait Copier {
    /// The next read for the source; `None` once the whole value has been read.
    fn next_read(&mut self) -> Option<Pipeline>;
    /// Turns the replies to the last read into writes to the temporary key.
    fn absorb(
        &mut self,
        replies: Vec<Value>,
        stats: &mut ChunkedStats,
    ) -> Result<Pipeline, ReadError>;
    /// Whether the source had the key; collections vanish when emptied, so a collection that
    /// gave no element did not exist.
    fn found(&self) -> bool;
}

// ---------------------------------------------------------------------------------------
// Strings

struct StringCopier {
    read_key: Vec<u8>,
    tmp: Vec<u8>,
    range: usize,
    offset: usize,
    /// `None` until the first read says whether the key exists.
    exists: Option<bool>,
    done: bool,
}

impl StringCopier {
    fn new(read_key: &[u8], tmp: &[u8], range: usize) -> Self {
        StringCopier {
            read_key: read_key.to_vec(),
            tmp: tmp.to_vec(),
            range,
            offset: 0,
            exists: None,
            done: false,
        }
    }
}

impl Copier for StringCopier {
    fn next_read(&mut self) -> Option<Pipeline> {
        if self.done {
            return None;
        }
        let mut pipe = redis::pipe();
        if self.exists.is_none() {
            // GETRANGE answers "" both for a missing key and an empty string.
            pipe.atomic().cmd("EXISTS").arg(&self.read_key);
        }
        pipe.cmd("GETRANGE")
            .arg(&self.read_key)
            .arg(self.offset)
            .arg(self.offset + self.range - 1);
        Some(pipe)
    }

    fn absorb(
        &mut self,
        replies: Vec<Value>,
        stats: &mut ChunkedStats,
    ) -> Result<Pipeline, ReadError> {
        let mut replies = replies.into_iter();
        let mut pipe = redis::pipe();
        let first = self.exists.is_none();
        if first {
            let exists = int(&next(&mut replies)?)? > 0;
            self.exists = Some(exists);
            if !exists {
                self.done = true;
                return Ok(pipe);
            }
            stats.elements = 1;
        }
        let bytes = into_bytes(next(&mut replies)?)?;
        self.done = bytes.len() < self.range;
        self.offset += bytes.len();
        stats.bytes += bytes.len() as u64;
        if first {
            // SET even when empty: an empty string is a value too.
            pipe.cmd("SET").arg(&self.tmp).arg(bytes).ignore();
        } else if !bytes.is_empty() {
            pipe.cmd("APPEND").arg(&self.tmp).arg(bytes).ignore();
        }
        Ok(pipe)
    }

    fn found(&self) -> bool {
        self.exists == Some(true)
    }
}

// ---------------------------------------------------------------------------------------
// Lists

struct ListCopier {
    read_key: Vec<u8>,
    tmp: Vec<u8>,
    chunk: usize,
    offset: usize,
    done: bool,
}

impl ListCopier {
    fn new(read_key: &[u8], tmp: &[u8], chunk: usize) -> Self {
        ListCopier {
            read_key: read_key.to_vec(),
            tmp: tmp.to_vec(),
            chunk,
            offset: 0,
            done: false,
        }
    }
}

impl Copier for ListCopier {
    fn next_read(&mut self) -> Option<Pipeline> {
        if self.done {
            return None;
        }
        let mut pipe = redis::pipe();
        pipe.cmd("LRANGE")
            .arg(&self.read_key)
            .arg(self.offset)
            .arg(self.offset + self.chunk - 1);
        Some(pipe)
    }

    fn absorb(
        &mut self,
        replies: Vec<Value>,
        stats: &mut ChunkedStats,
    ) -> Result<Pipeline, ReadError> {
        let items = array(next(&mut replies.into_iter())?)?;
        self.done = items.len() < self.chunk;
        self.offset += items.len();
        let mut pipe = redis::pipe();
        if items.is_empty() {
            return Ok(pipe);
        }
        stats.elements += items.len() as u64;
        let mut cmd = redis::cmd("RPUSH");
        cmd.arg(&self.tmp);
        for item in items {
            let item = into_bytes(item)?;
            stats.bytes += item.len() as u64;
            cmd.arg(item);
        }
        pipe.add_command(cmd).ignore();
        Ok(pipe)
    }

    fn found(&self) -> bool {
        self.offset > 0
    }
}

// ---------------------------------------------------------------------------------------
// Sets, sorted sets, hashes

#[derive(Clone, Copy)]
enum Scan {
    Set,
    ZSet,
    Hash,
}

impl Scan {
    fn read_command(self) -> &'static str {
        match self {
            Scan::Set => "SSCAN",
            Scan::ZSet => "ZSCAN",
            Scan::Hash => "HSCAN",
        }
    }

    fn write_command(self) -> &'static str {
        match self {
            Scan::Set => "SADD",
            Scan::ZSet => "ZADD",
            Scan::Hash => "HSET",
        }
    }
}

struct ScanCopier {
    kind: Scan,
    read_key: Vec<u8>,
    tmp: Vec<u8>,
    chunk: usize,
    /// The server's cursor, passed back as given.
    cursor: Vec<u8>,
    done: bool,
    seen: u64,
    /// Hashes with field TTLs: the fields of the last window, whose `HPEXPIRETIME` is read
    /// next (`Some(empty)` when none is pending); `None` copies no field TTLs.
    field_ttls: Option<Vec<Vec<u8>>>,
    /// The read in flight is the `HPEXPIRETIME` of `field_ttls`.
    reading_ttls: bool,
    /// Field TTLs are counted, not written ([`FieldTtls::Drop`]).
    drop_ttls: bool,
}

impl ScanCopier {
    fn new(kind: Scan, read_key: &[u8], tmp: &[u8], chunk: usize) -> Self {
        ScanCopier {
            kind,
            read_key: read_key.to_vec(),
            tmp: tmp.to_vec(),
            chunk,
            cursor: b"0".to_vec(),
            done: false,
            seen: 0,
            field_ttls: None,
            reading_ttls: false,
            drop_ttls: false,
        }
    }

    /// `HPEXPIRETIME`'s replies for the pending fields → `HPEXPIREAT` (one per distinct time,
    /// usually one) and `HDEL` of fields gone since the `HSCAN`, on the temporary key.
    fn absorb_ttls(
        &mut self,
        replies: Vec<Value>,
        stats: &mut ChunkedStats,
    ) -> Result<Pipeline, ReadError> {
        let fields = self
            .field_ttls
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default();
        let times = array(next(&mut replies.into_iter())?)?;
        if times.len() != fields.len() {
            return Err(shape("an HPEXPIRETIME reply does not match its fields"));
        }
        let mut by_time: std::collections::BTreeMap<i64, Vec<Vec<u8>>> = Default::default();
        let mut gone = Vec::new();
        for (f, t) in fields.into_iter().zip(times) {
            match int(&t)? {
                -2 => gone.push(f),
                t if t >= 0 => by_time.entry(t).or_default().push(f),
                _ => {}
            }
        }
        let mut pipe = redis::pipe();
        if !gone.is_empty() {
            pipe.cmd("HDEL").arg(&self.tmp).arg(gone).ignore();
        }
        if self.drop_ttls {
            stats.field_ttls_dropped += by_time.values().map(|fs| fs.len() as u64).sum::<u64>();
            return Ok(pipe);
        }
        for (t, fs) in by_time {
            stats.field_ttls += fs.len() as u64;
            pipe.cmd("HPEXPIREAT")
                .arg(&self.tmp)
                .arg(t)
                .arg("FIELDS")
                .arg(fs.len())
                .arg(fs)
                .ignore();
        }
        Ok(pipe)
    }
}

impl Copier for ScanCopier {
    fn next_read(&mut self) -> Option<Pipeline> {
        self.reading_ttls = self.field_ttls.as_ref().is_some_and(|f| !f.is_empty());
        if self.reading_ttls {
            let fields = self.field_ttls.as_deref().unwrap_or_default();
            let mut pipe = redis::pipe();
            pipe.cmd("HPEXPIRETIME")
                .arg(&self.read_key)
                .arg("FIELDS")
                .arg(fields.len())
                .arg(fields);
            return Some(pipe);
        }
        if self.done {
            return None;
        }
        let mut pipe = redis::pipe();
        pipe.cmd(self.kind.read_command())
            .arg(&self.read_key)
            .arg(&self.cursor)
            .arg("COUNT")
            .arg(self.chunk);
        Some(pipe)
    }

    fn absorb(
        &mut self,
        replies: Vec<Value>,
        stats: &mut ChunkedStats,
    ) -> Result<Pipeline, ReadError> {
        if self.reading_ttls {
            return self.absorb_ttls(replies, stats);
        }
        let mut parts = array(next(&mut replies.into_iter())?)?.into_iter();
        let (Some(cursor), Some(items), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(shape("a SCAN reply is not [cursor, items]"));
        };
        self.cursor = into_bytes(cursor)?;
        self.done = self.cursor == b"0";
        let items = array(items)?;
        let mut pipe = redis::pipe();
        if items.is_empty() {
            return Ok(pipe);
        }
        let per_element = match self.kind {
            Scan::Set => 1,
            Scan::ZSet | Scan::Hash => 2,
        };
        if items.len() % per_element != 0 {
            return Err(shape("a ZSCAN/HSCAN reply has an odd number of items"));
        }
        // SCAN may return an element twice; SADD/ZADD/HSET make that harmless, so only the count
        // in the stats can be a little high.
        let elements = (items.len() / per_element) as u64;
        stats.elements += elements;
        self.seen += elements;
        let mut cmd = redis::cmd(self.kind.write_command());
        cmd.arg(&self.tmp);
        let mut items = items.into_iter();
        while let Some(first) = items.next() {
            let first = into_bytes(first)?;
            stats.bytes += first.len() as u64;
            match self.kind {
                Scan::Set => {
                    cmd.arg(first);
                }
                Scan::Hash => {
                    let value = into_bytes(next(&mut items)?)?;
                    stats.bytes += value.len() as u64;
                    if let Some(pending) = &mut self.field_ttls {
                        pending.push(first.clone());
                    }
                    cmd.arg(first).arg(value);
                }
                Scan::ZSet => {
                    // The score text is the server's own `%.17g`, which reads back exactly.
                    let score = into_bytes(next(&mut items)?)?;
                    stats.bytes += score.len() as u64;
                    cmd.arg(score).arg(first);
                }
            }
        }
        pipe.add_command(cmd).ignore();
        Ok(pipe)
    }

    fn found(&self) -> bool {
        self.seen > 0
    }
}

// ---------------------------------------------------------------------------------------
// Streams

/// A stream entry ID, ordered as Redis orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct StreamId {
    ms: u64,
    seq: u64,
}

impl StreamId {
    fn parse(raw: &[u8]) -> Option<StreamId> {
        let text = std::str::from_utf8(raw).ok()?;
        let (ms, seq) = text.split_once('-')?;
        Some(StreamId {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }

    fn from_value(v: &Value) -> Result<StreamId, ReadError> {
        let raw = bytes(v)?;
        StreamId::parse(&raw).ok_or_else(|| shape(format!("bad stream ID {}", Quoted(&raw))))
    }

    fn arg(self) -> String {
        format!("{}-{}", self.ms, self.seq)
    }

    fn exclusive(self) -> String {
        format!("({}-{}", self.ms, self.seq)
    }
}

struct Group {
    name: Vec<u8>,
    last_delivered: Vec<u8>,
    /// `None` where the source shows nil (the group's read counter is unknown to the server).
    entries_read: Option<i64>,
}

struct Pending {
    id: StreamId,
    consumer: Vec<u8>,
    idle_ms: i64,
    deliveries: i64,
}

enum Phase {
    /// `EXISTS` and `XINFO GROUPS`, in one `MULTI`.
    Start,
    /// `XINFO CONSUMERS` of every group.
    Consumers,
    /// Entries and pending entries after `after` (from the start when `None`).
    Entries {
        after: Option<StreamId>,
    },
    /// `XINFO STREAM`, read after the entries so its last ID covers every entry copied.
    Meta,
    Done,
}

struct StreamCopier {
    read_key: Vec<u8>,
    tmp: Vec<u8>,
    chunk: usize,
    phase: Phase,
    exists: bool,
    groups: Vec<Group>,
}

/// Group name used only to create an empty stream; destroyed right away.
const SCRATCH_GROUP: &str = "ferry-scratch";
/// Field of the placeholder entries that carry deleted-but-pending IDs.
const PLACEHOLDER_FIELD: &str = "ferry-placeholder";

impl StreamCopier {
    fn new(read_key: &[u8], tmp: &[u8], chunk: usize) -> Self {
        StreamCopier {
            read_key: read_key.to_vec(),
            tmp: tmp.to_vec(),
            chunk,
            phase: Phase::Start,
            exists: false,
            groups: Vec::new(),
        }
    }

    fn absorb_start(&mut self, replies: Vec<Value>) -> Result<Pipeline, ReadError> {
        let mut replies = replies.into_iter();
        let mut pipe = redis::pipe();
        self.exists = int(&next(&mut replies)?)? > 0;
        if !self.exists {
            self.phase = Phase::Done;
            return Ok(pipe);
        }
        for info in array(next(&mut replies)?)? {
            let fields = pairs(info)?;
            let name = bytes(field(&fields, "name")?)?;
            let last_delivered = bytes(field(&fields, "last-delivered-id")?)?;
            let entries_read = match field(&fields, "entries-read")? {
                Value::Nil => None,
                v => Some(int(v)?),
            };
            self.groups.push(Group {
                name,
                last_delivered,
                entries_read,
            });
        }
        // XADD cannot create an empty stream and MKSTREAM needs a group, so a scratch group
        // creates it whatever the stream holds; the real groups start at 0 and get their
        // positions with XGROUP SETID at the end, after XSETID.
        pipe.cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.tmp)
            .arg(SCRATCH_GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .ignore();
        pipe.cmd("XGROUP")
            .arg("DESTROY")
            .arg(&self.tmp)
            .arg(SCRATCH_GROUP)
            .ignore();
        for g in &self.groups {
            pipe.cmd("XGROUP")
                .arg("CREATE")
                .arg(&self.tmp)
                .arg(&g.name)
                .arg("0")
                .ignore();
        }
        self.phase = if self.groups.is_empty() {
            Phase::Entries { after: None }
        } else {
            Phase::Consumers
        };
        Ok(pipe)
    }

    fn absorb_consumers(&mut self, replies: Vec<Value>) -> Result<Pipeline, ReadError> {
        if replies.len() != self.groups.len() {
            return Err(shape("missing XINFO CONSUMERS reply"));
        }
        let mut pipe = redis::pipe();
        for (g, reply) in self.groups.iter().zip(replies) {
            // Consumers without pending entries exist only through this.
            for info in array(reply)? {
                let fields = pairs(info)?;
                pipe.cmd("XGROUP")
                    .arg("CREATECONSUMER")
                    .arg(&self.tmp)
                    .arg(&g.name)
                    .arg(bytes(field(&fields, "name")?)?)
                    .ignore();
            }
        }
        self.phase = Phase::Entries { after: None };
        Ok(pipe)
    }

    /// One window: entries up to `hi` and every group's pending entries up to `hi`, where `hi`
    /// is the lowest point any of the (capped) replies is known to be complete to.
    fn absorb_entries(
        &mut self,
        replies: Vec<Value>,
        stats: &mut ChunkedStats,
    ) -> Result<Pipeline, ReadError> {
        let mut replies = replies.into_iter();
        let mut entries: Vec<(StreamId, Vec<Value>)> = Vec::new();
        for entry in array(next(&mut replies)?)? {
            let mut parts = array(entry)?.into_iter();
            let (Some(id), Some(fields), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(shape("a stream entry is not [id, fields]"));
            };
            entries.push((StreamId::from_value(&id)?, array(fields)?));
        }
        let mut hi: Option<StreamId> = None;
        let mut lower = |full: bool, last: Option<StreamId>| {
            if let (true, Some(last)) = (full, last) {
                hi = Some(hi.map_or(last, |h| h.min(last)));
            }
        };
        lower(entries.len() >= self.chunk, entries.last().map(|e| e.0));
        let mut pels: Vec<Vec<Pending>> = Vec::with_capacity(self.groups.len());
        for reply in replies.by_ref().take(self.groups.len()) {
            let pel = parse_pending(reply)?;
            lower(pel.len() >= self.chunk, pel.last().map(|p| p.id));
            pels.push(pel);
        }
        if pels.len() != self.groups.len() {
            return Err(shape("missing XPENDING reply"));
        }
        if let Some(hi) = hi {
            entries.retain(|e| e.0 <= hi);
            for pel in &mut pels {
                pel.retain(|p| p.id <= hi);
            }
        }

        // XCLAIM … FORCE only creates a pending entry whose ID exists in the stream (Redis 7.0
        // checks), so IDs that are pending but deleted on the source are added as placeholders
        // in ID order, claimed, then deleted again.
        let live: BTreeSet<StreamId> = entries.iter().map(|e| e.0).collect();
        let placeholders: BTreeSet<StreamId> = pels
            .iter()
            .flatten()
            .map(|p| p.id)
            .filter(|id| !live.contains(id))
            .collect();

        let mut pipe = redis::pipe();
        let mut holes = placeholders.iter().peekable();
        for (id, fields) in entries {
            while let Some(&hole) = holes.next_if(|h| **h < id) {
                self.xadd_placeholder(&mut pipe, hole);
            }
            let mut cmd = redis::cmd("XADD");
            cmd.arg(&self.tmp).arg(id.arg());
            for v in fields {
                let v = into_bytes(v)?;
                stats.bytes += v.len() as u64;
                cmd.arg(v);
            }
            stats.elements += 1;
            pipe.add_command(cmd).ignore();
        }
        for &hole in holes {
            self.xadd_placeholder(&mut pipe, hole);
        }
        for (g, pel) in self.groups.iter().zip(&pels) {
            for p in pel {
                pipe.cmd("XCLAIM")
                    .arg(&self.tmp)
                    .arg(&g.name)
                    .arg(&p.consumer)
                    .arg(0)
                    .arg(p.id.arg())
                    .arg("IDLE")
                    .arg(p.idle_ms.max(0))
                    .arg("RETRYCOUNT")
                    .arg(p.deliveries.max(0))
                    .arg("FORCE")
                    .arg("JUSTID")
                    .ignore();
            }
        }
        if !placeholders.is_empty() {
            let mut cmd = redis::cmd("XDEL");
            cmd.arg(&self.tmp);
            for id in &placeholders {
                cmd.arg(id.arg());
            }
            pipe.add_command(cmd).ignore();
        }

        self.phase = match hi {
            Some(hi) => Phase::Entries { after: Some(hi) },
            None => Phase::Meta,
        };
        Ok(pipe)
    }

    fn xadd_placeholder(&self, pipe: &mut Pipeline, id: StreamId) {
        pipe.cmd("XADD")
            .arg(&self.tmp)
            .arg(id.arg())
            .arg(PLACEHOLDER_FIELD)
            .arg("")
            .ignore();
    }

    fn absorb_meta(&mut self, replies: Vec<Value>) -> Result<Pipeline, ReadError> {
        let fields = pairs(next(&mut replies.into_iter())?)?;
        let mut pipe = redis::pipe();
        // Placeholders and XADDs left their own counters; these are the source's.
        pipe.cmd("XSETID")
            .arg(&self.tmp)
            .arg(bytes(field(&fields, "last-generated-id")?)?)
            .arg("ENTRIESADDED")
            .arg(int(field(&fields, "entries-added")?)?)
            .arg("MAXDELETEDID")
            .arg(bytes(field(&fields, "max-deleted-entry-id")?)?)
            .ignore();
        for g in &self.groups {
            let cmd = pipe
                .cmd("XGROUP")
                .arg("SETID")
                .arg(&self.tmp)
                .arg(&g.name)
                .arg(&g.last_delivered);
            // Without ENTRIESREAD, SETID leaves the counter unknown, as the source has it.
            if let Some(n) = g.entries_read {
                cmd.arg("ENTRIESREAD").arg(n);
            }
            cmd.ignore();
        }
        self.phase = Phase::Done;
        Ok(pipe)
    }
}

impl Copier for StreamCopier {
    fn next_read(&mut self) -> Option<Pipeline> {
        let mut pipe = redis::pipe();
        match self.phase {
            Phase::Start => {
                // ignore_errors: for a missing key XINFO fails, and EXISTS = 0 says why.
                pipe.atomic()
                    .ignore_errors()
                    .cmd("EXISTS")
                    .arg(&self.read_key)
                    .cmd("XINFO")
                    .arg("GROUPS")
                    .arg(&self.read_key);
            }
            Phase::Consumers => {
                for g in &self.groups {
                    pipe.cmd("XINFO")
                        .arg("CONSUMERS")
                        .arg(&self.read_key)
                        .arg(&g.name);
                }
            }
            Phase::Entries { after } => {
                let start = after.map_or_else(|| "-".to_string(), StreamId::exclusive);
                pipe.cmd("XRANGE")
                    .arg(&self.read_key)
                    .arg(&start)
                    .arg("+")
                    .arg("COUNT")
                    .arg(self.chunk);
                for g in &self.groups {
                    pipe.cmd("XPENDING")
                        .arg(&self.read_key)
                        .arg(&g.name)
                        .arg(&start)
                        .arg("+")
                        .arg(self.chunk);
                }
            }
            Phase::Meta => {
                pipe.cmd("XINFO").arg("STREAM").arg(&self.read_key);
            }
            Phase::Done => return None,
        }
        Some(pipe)
    }

    fn absorb(
        &mut self,
        replies: Vec<Value>,
        stats: &mut ChunkedStats,
    ) -> Result<Pipeline, ReadError> {
        match self.phase {
            Phase::Start => self.absorb_start(replies),
            Phase::Consumers => self.absorb_consumers(replies),
            Phase::Entries { .. } => self.absorb_entries(replies, stats),
            Phase::Meta => self.absorb_meta(replies),
            Phase::Done => Ok(redis::pipe()),
        }
    }

    fn found(&self) -> bool {
        self.exists
    }
}

fn parse_pending(reply: Value) -> Result<Vec<Pending>, ReadError> {
    array(reply)?
        .into_iter()
        .map(|p| {
            let parts = array(p)?;
            let [id, consumer, idle, deliveries] = parts.as_slice() else {
                return Err(shape(
                    "an XPENDING entry is not [id, consumer, idle, count]",
                ));
            };
            Ok(Pending {
                id: StreamId::from_value(id)?,
                consumer: bytes(consumer)?,
                idle_ms: int(idle)?,
                deliveries: int(deliveries)?,
            })
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Temporary key

/// A fresh key name in the same cluster hash slot as `key`, so that `RENAME` works on cluster
/// targets too: `{tag}ferry-tmp:<16 hex digits>`.
pub fn temp_key(key: &[u8]) -> Vec<u8> {
    let suffix = format!("ferry-tmp:{:016x}", random_u64());
    let tag: Option<Vec<u8>> = match hash_tag(key) {
        Some(tag) => Some(tag.to_vec()),
        // `{key}` hashes like `key` only if the first `}` is the one we add; an empty key
        // would make an empty, ignored tag.
        None if !key.is_empty() && !key.contains(&b'}') => Some(key.to_vec()),
        None => slot_twin(key),
    };
    let mut tmp = Vec::with_capacity(suffix.len() + tag.as_ref().map_or(0, |t| t.len() + 2));
    if let Some(tag) = tag {
        tmp.push(b'{');
        tmp.extend_from_slice(&tag);
        tmp.push(b'}');
    }
    tmp.extend_from_slice(suffix.as_bytes());
    tmp
}

/// Redis's hash tag: the bytes between the first `{` and the next `}`, when not empty.
fn hash_tag(key: &[u8]) -> Option<&[u8]> {
    let open = key.iter().position(|&b| b == b'{')?;
    let close = key[open + 1..].iter().position(|&b| b == b'}')?;
    let tag = &key[open + 1..open + 1 + close];
    (!tag.is_empty()).then_some(tag)
}

/// A short tag that hashes to the same slot as `key`, for keys that have no tag and cannot be
/// wrapped in one (they contain `}` or are empty). About 16k tries on average; such keys are
/// rare and big ones rarer.
fn slot_twin(key: &[u8]) -> Option<Vec<u8>> {
    const TRIES: u32 = 1 << 20;
    let want = Slot::for_key(key);
    // Beyond TRIES (never seen: CRC16 covers every slot far sooner) the temp key falls back to
    // an untagged name, which still works on a standalone target and fails RENAME with
    // CROSSSLOT on a cluster.
    (0..TRIES)
        .map(|n| format!("ferry-{n}").into_bytes())
        .find(|tag| Slot::for_key(tag) == want)
}

fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    // RandomState is seeded from the OS once per thread and perturbed per instance; the counter
    // and clock make names unique even if two hashers started from the same keys.
    let mut h = RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    h.finish()
}

// ---------------------------------------------------------------------------------------
// Replies (RESP2 and RESP3)

fn next(it: &mut impl Iterator<Item = Value>) -> Result<Value, ReadError> {
    it.next()
        .ok_or_else(|| shape("fewer replies than commands"))
}

fn server_error(v: &Value) -> Option<ReadError> {
    match v {
        Value::ServerError(e) => Some(ReadError::Server(RedisError::from(e.clone()))),
        _ => None,
    }
}

fn int(v: &Value) -> Result<i64, ReadError> {
    match v {
        Value::Int(i) => Ok(*i),
        Value::BulkString(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| shape(format!("expected an integer, got {}", Quoted(b)))),
        Value::SimpleString(s) => s
            .parse()
            .map_err(|_| shape(format!("expected an integer, got {s:?}"))),
        other => Err(server_error(other)
            .unwrap_or_else(|| shape(format!("expected an integer, got {other:?}")))),
    }
}

fn bytes(v: &Value) -> Result<Vec<u8>, ReadError> {
    match v {
        Value::BulkString(b) => Ok(b.clone()),
        Value::SimpleString(s) => Ok(s.clone().into_bytes()),
        Value::VerbatimString { text, .. } => Ok(text.clone().into_bytes()),
        Value::Int(i) => Ok(i.to_string().into_bytes()),
        other => Err(server_error(other)
            .unwrap_or_else(|| shape(format!("expected a string, got {other:?}")))),
    }
}

fn into_bytes(v: Value) -> Result<Vec<u8>, ReadError> {
    match v {
        Value::BulkString(b) => Ok(b),
        other => bytes(&other),
    }
}

fn array(v: Value) -> Result<Vec<Value>, ReadError> {
    match v {
        Value::Array(items) | Value::Set(items) => Ok(items),
        Value::Nil => Ok(Vec::new()),
        // RESP3 maps where RESP2 has flat arrays (HSCAN never, but be lenient).
        Value::Map(m) => Ok(m.into_iter().flat_map(|(k, v)| [k, v]).collect()),
        other => Err(server_error(&other)
            .unwrap_or_else(|| shape(format!("expected an array, got {other:?}")))),
    }
}

/// An `XINFO` record: a flat `[name, value, …]` array (RESP2) or a map (RESP3).
fn pairs(v: Value) -> Result<Vec<(Vec<u8>, Value)>, ReadError> {
    let flat = array(v)?;
    if flat.len() % 2 != 0 {
        return Err(shape("an XINFO record has an odd number of items"));
    }
    let mut out = Vec::with_capacity(flat.len() / 2);
    let mut items = flat.into_iter();
    while let (Some(k), Some(v)) = (items.next(), items.next()) {
        out.push((into_bytes(k)?, v));
    }
    Ok(out)
}

fn field<'a>(fields: &'a [(Vec<u8>, Value)], name: &str) -> Result<&'a Value, ReadError> {
    fields
        .iter()
        .find(|(k, _)| k == name.as_bytes())
        .map(|(_, v)| v)
        .ok_or_else(|| shape(format!("XINFO reply has no {name}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(key: &[u8]) -> Slot {
        Slot::for_key(key)
    }

    #[test]
    fn temp_key_shares_the_slot_of_the_key() {
        let all_bytes: Vec<u8> = (0..=255).collect();
        let keys: &[&[u8]] = &[
            b"plain",
            b"{user:1}:profile",
            b"a{b",
            b"a}b",
            b"{}x",
            b"x{}{y}",
            b"",
            b"}",
            &all_bytes,
        ];
        for key in keys {
            let tmp = temp_key(key);
            assert_eq!(slot(&tmp), slot(key), "{}", Quoted(&tmp));
            assert_ne!(temp_key(key), tmp, "names are fresh");
        }
    }

    #[test]
    fn temp_key_uses_the_key_tag_or_wraps_the_key() {
        let tmp = temp_key(b"{user:1}:profile");
        assert!(tmp.starts_with(b"{user:1}ferry-tmp:"), "{}", Quoted(&tmp));
        let tmp = temp_key(b"plain");
        assert!(tmp.starts_with(b"{plain}ferry-tmp:"), "{}", Quoted(&tmp));
        let tmp = temp_key(b"a}b");
        assert!(tmp.starts_with(b"{ferry-"), "{}", Quoted(&tmp));
    }

    #[test]
    fn hash_tag_follows_redis() {
        assert_eq!(hash_tag(b"{a}b"), Some(&b"a"[..]));
        assert_eq!(hash_tag(b"x{}{y}"), None);
        assert_eq!(hash_tag(b"x{y"), None);
        assert_eq!(hash_tag(b"}{z}"), Some(&b"z"[..]));
        assert_eq!(hash_tag(b"{{z}}"), Some(&b"{z"[..]));
    }

    #[test]
    fn stream_ids_order_numerically() {
        let a = StreamId::parse(b"9-10").expect("valid");
        let b = StreamId::parse(b"10-2").expect("valid");
        assert!(a < b);
        assert_eq!(a.arg(), "9-10");
        assert_eq!(b.exclusive(), "(10-2");
        assert_eq!(StreamId::parse(b"10"), None);
        assert_eq!(StreamId::parse(b"a-1"), None);
    }

    /// Compiles only if the copy can run in a spawned task.
    #[allow(dead_code)]
    fn copy_chunked_is_send(src: &mut MultiplexedConnection, dst: &mut MultiplexedConnection) {
        fn send<T: Send>(_: &T) {}
        send(&copy_chunked(
            src,
            dst,
            b"k",
            b"k",
            KeyType::Stream,
            None,
            &ChunkedOptions::new(1),
        ));
    }

    #[test]
    fn key_type_parses_type_replies() {
        assert_eq!(KeyType::parse("zset"), Some(KeyType::ZSet));
        assert_eq!(KeyType::parse("stream"), Some(KeyType::Stream));
        assert_eq!(KeyType::parse("none"), None);
        assert_eq!(KeyType::parse("ReJSON-RL"), None);
    }
}
