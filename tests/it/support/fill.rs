//! Owns the deterministic test dataset: what goes into a server and how to load it fast.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::cluster::Cluster;
use super::server::RedisServer;

/// Commands per pipeline round trip.
const BATCH_COMMANDS: usize = 1000;
/// Elements per command when loading big collections, to keep single commands modest.
const ELEMENTS_PER_COMMAND: usize = 1000;
/// Stream IDs start here so they look like real millisecond timestamps.
const STREAM_ID_BASE_MS: u64 = 1_700_000_000_000;
const MIN_TTL_MS: u64 = 60_000;
const MAX_TTL_MS: u64 = 4 * 3600 * 1000;

/// Shape of the generated data. Equal `Dataset`s (including `ttl_base_ms`) produce equal data.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Every db gets `keys_per_db` mixed keys; the first also gets the special and big keys.
    pub dbs: Vec<u32>,
    pub keys_per_db: usize,
    pub big_list: usize,
    pub big_hash: usize,
    pub big_set: usize,
    pub big_zset: usize,
    /// Entries in `big:stream`, the stream that carries consumer groups.
    pub stream_entries: usize,
    /// Fraction of keys with a TTL (between 60 s and 4 h).
    pub ttl_fraction: f64,
    pub seed: u64,
    /// Unix ms that TTLs are counted from (keys get `PEXPIREAT base+ttl`); `None` = now.
    /// Set it explicitly to load identical data, TTLs included, into two servers.
    pub ttl_base_ms: Option<u64>,
}

impl Default for Dataset {
    fn default() -> Self {
        Dataset {
            dbs: vec![0, 1, 2],
            keys_per_db: 2000,
            big_list: 20_000,
            big_hash: 20_000,
            big_set: 20_000,
            big_zset: 20_000,
            stream_entries: 5_000,
            ttl_fraction: 0.2,
            seed: 0x5EED,
            ttl_base_ms: None,
        }
    }
}

impl Dataset {
    /// A few hundred keys and 1k-element big keys, for tests that only need variety.
    pub fn tiny() -> Self {
        Dataset {
            keys_per_db: 300,
            big_list: 1_000,
            big_hash: 1_000,
            big_set: 1_000,
            big_zset: 1_000,
            stream_entries: 500,
            ..Dataset::default()
        }
    }

    /// Pins `ttl_base_ms` to now, so that filling twice gives identical expiry times.
    pub fn with_fixed_ttl_base(mut self) -> Self {
        self.ttl_base_ms = Some(now_ms());
        self
    }
}

/// Names of keys the filler always creates in the first db, for tests to poke at.
pub mod keys {
    pub const BIG_LIST: &[u8] = b"big:list";
    pub const BIG_HASH: &[u8] = b"big:hash";
    pub const BIG_SET: &[u8] = b"big:set";
    pub const BIG_ZSET: &[u8] = b"big:zset";
    pub const BIG_STRING: &[u8] = b"big:string";
    /// Stream with groups `g1` (consumers alice, bob, carol; pending entries) and `g2`.
    pub const STREAM: &[u8] = b"big:stream";
    /// Stream whose only entry was deleted: length 0, but a last-generated-id.
    pub const EMPTY_STREAM: &[u8] = b"stream:emptied";
    pub const COUNTER: &[u8] = b"special:counter";
    pub const EMPTY_VALUE: &[u8] = b"special:empty-value";
    /// Small hash with fields `f0`..`f4`.
    pub const SMALL_HASH: &[u8] = b"special:hash";
    /// Key made of every byte 0..=255, in order.
    pub fn all_bytes() -> Vec<u8> {
        (0..=255u8).collect()
    }
}

/// What [`fill`] wrote; counts are of keys created, which is what DBSIZE shows afterwards
/// on a server that was empty.
#[derive(Debug, Clone, Default)]
pub struct FillReport {
    pub keys: BTreeMap<u32, usize>,
    pub keys_with_ttl: BTreeMap<u32, usize>,
    /// Keys per type name (as `TYPE` reports it), over all dbs.
    pub types: BTreeMap<&'static str, usize>,
    pub commands: usize,
    pub elapsed: Duration,
}

impl FillReport {
    pub fn total_keys(&self) -> usize {
        self.keys.values().sum()
    }
}

/// Anything that names a standalone server to fill.
pub trait FillTarget {
    fn redis_url(&self) -> String;
}

impl FillTarget for str {
    fn redis_url(&self) -> String {
        self.to_string()
    }
}

impl FillTarget for String {
    fn redis_url(&self) -> String {
        self.clone()
    }
}

impl FillTarget for RedisServer {
    fn redis_url(&self) -> String {
        self.url()
    }
}

/// Adds `dataset` to a standalone server (existing keys with the same names are overwritten
/// or appended to, so start from an empty server for exact counts).
pub fn fill<T: FillTarget + ?Sized>(target: &T, dataset: &Dataset) -> FillReport {
    let url = target.redis_url();
    let con = super::tls::client(url.as_str())
        .and_then(|c| c.get_connection())
        .unwrap_or_else(|e| panic!("fill: connect to {url}: {e}"));
    Filler::new(Sink::Single(con), dataset, None).run()
}

/// Adds `dataset` to a cluster; only db 0 exists there, so `dataset.dbs` must be `[0]`.
pub fn fill_cluster(cluster: &Cluster, dataset: &Dataset) -> FillReport {
    assert_eq!(dataset.dbs, [0], "a cluster has only db 0");
    // The nodes' engine decides which commands the filler may send.
    let info = cluster.nodes()[0].info("server");
    Filler::new(
        Sink::Cluster(Box::new(cluster.cluster_conn())),
        dataset,
        Some(info),
    )
    .run()
}

enum Sink {
    Single(redis::Connection),
    Cluster(Box<redis::cluster::ClusterConnection>),
}

impl Sink {
    fn run(&mut self, cmds: Vec<redis::Cmd>) -> Vec<redis::Value> {
        if cmds.is_empty() {
            return Vec::new();
        }
        let result = match self {
            Sink::Single(con) => {
                let mut pipe = redis::pipe();
                for cmd in cmds {
                    pipe.add_command(cmd);
                }
                pipe.query::<Vec<redis::Value>>(con)
            }
            Sink::Cluster(con) => {
                let mut pipe = redis::cluster::cluster_pipe();
                for cmd in cmds {
                    pipe.add_command(cmd);
                }
                pipe.query::<Vec<redis::Value>>(con)
            }
        };
        result.unwrap_or_else(|e| panic!("fill pipeline failed: {e}"))
    }

    fn one(&mut self, cmd: redis::Cmd) -> redis::Value {
        self.run(vec![cmd]).pop().expect("one reply")
    }
}

struct Filler<'a> {
    sink: Sink,
    ds: &'a Dataset,
    pending: Vec<redis::Cmd>,
    ttl_base_ms: u64,
    report: FillReport,
    db: u32,
    /// The server has `XGROUP CREATECONSUMER` (Redis 6.2).
    create_consumer: bool,
    /// The server has streams (Redis 5.0); without, stream commands are left out and the
    /// small keys that would be streams are hashes.
    streams: bool,
}

impl<'a> Filler<'a> {
    /// `info` is `INFO server` of a cluster's node; a single server is asked here.
    fn new(mut sink: Sink, ds: &'a Dataset, info: Option<String>) -> Self {
        let info = match (&sink, info) {
            (_, Some(info)) => info,
            (Sink::Single(_), None) => match sink.one(redis::cmd("INFO").arg("server").clone()) {
                redis::Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
                redis::Value::VerbatimString { text, .. } => text,
                _ => String::new(),
            },
            (Sink::Cluster(_), None) => String::new(),
        };
        let level = super::server::info_field(&info, "redis_version").and_then(|v| {
            let mut parts = v.split('.').map(|p| p.parse::<u32>().ok());
            Some((parts.next()??, parts.next()??))
        });
        Filler {
            create_consumer: level.is_none_or(|l| l >= (6, 2)),
            streams: level.is_none_or(|l| l >= (5, 0)),
            sink,
            ds,
            pending: Vec::with_capacity(BATCH_COMMANDS),
            ttl_base_ms: ds.ttl_base_ms.unwrap_or_else(now_ms),
            report: FillReport::default(),
            db: 0,
        }
    }

    fn run(mut self) -> FillReport {
        let started = Instant::now();
        let dbs = self.ds.dbs.clone();
        for (i, &db) in dbs.iter().enumerate() {
            self.select(db);
            // Seeded per db (not per position) so a db's contents do not depend on which
            // other dbs are filled.
            let mut rng = Rng::new(self.ds.seed ^ (u64::from(db) + 1).wrapping_mul(0x9E37_79B9));
            self.report.keys.insert(db, 0);
            self.report.keys_with_ttl.insert(db, 0);
            if i == 0 {
                self.specials(&mut rng);
                self.big_keys(&mut rng);
            }
            self.mixed_keys(&mut rng);
        }
        self.flush();
        self.report.elapsed = started.elapsed();
        self.report
    }

    fn select(&mut self, db: u32) {
        self.flush();
        self.db = db;
        if let Sink::Single(_) = self.sink {
            self.sink.one(redis::cmd("SELECT").arg(db).clone());
        }
    }

    fn push(&mut self, cmd: redis::Cmd) {
        if !self.streams
            && cmd.args_iter().next().is_some_and(|a| match a {
                redis::Arg::Simple(name) => {
                    name.first().is_some_and(|c| c.eq_ignore_ascii_case(&b'x'))
                }
                _ => false,
            })
        {
            return;
        }
        self.pending.push(cmd);
        self.report.commands += 1;
        if self.pending.len() >= BATCH_COMMANDS {
            self.flush();
        }
    }

    fn flush(&mut self) {
        let cmds = std::mem::take(&mut self.pending);
        self.sink.run(cmds);
    }

    fn created(&mut self, ty: &'static str) {
        *self.report.keys.get_mut(&self.db).expect("db registered") += 1;
        *self.report.types.entry(ty).or_default() += 1;
    }

    fn expire(&mut self, key: &[u8], ttl_ms: u64) {
        let mut cmd = redis::cmd("PEXPIREAT");
        cmd.arg(key).arg(self.ttl_base_ms + ttl_ms);
        self.push(cmd);
        *self.report.keys_with_ttl.get_mut(&self.db).expect("db") += 1;
    }

    fn maybe_expire(&mut self, rng: &mut Rng, key: &[u8]) {
        if rng.chance(self.ds.ttl_fraction) {
            let ttl = rng.range(MIN_TTL_MS, MAX_TTL_MS);
            self.expire(key, ttl);
        }
    }

    fn set(&mut self, key: &[u8], value: &[u8]) {
        let mut cmd = redis::cmd("SET");
        cmd.arg(key).arg(value);
        self.push(cmd);
        self.created("string");
    }

    /// Keys chosen to break naive quoting, parsing and UTF-8 assumptions.
    fn specials(&mut self, rng: &mut Rng) {
        let all: Vec<u8> = keys::all_bytes();
        let all_rev: Vec<u8> = all.iter().rev().copied().collect();
        self.set(&all, &all_rev);
        self.expire(&all, 3_600_000);
        self.set(b"\r\n", b"\r\n\r\n");
        self.set(b"*1\r\n$4\r\nPING\r\n", b"+OK\r\n");
        self.set(
            b"\"quoted\" 'single' `tick`",
            b"back\\slash \\\\ \\x41 \"q\"",
        );
        self.set(b"\xff\xfe\x00non-utf8\x80", b"\xc3\x28\xa0\xa1\xe2\x28\xa1");
        self.set(b"", b"value of the empty key");
        self.set(b"with space and\ttab", b" leading and trailing ");
        self.set("unicode:ключ:键:🔑".as_bytes(), "значение ✓ 値".as_bytes());
        self.set(keys::EMPTY_VALUE, b"");
        self.set(b"special:int", b"12345");
        self.set(b"special:negative-int", b"-9223372036854775808");
        self.set(b"special:leading-zero", b"007");
        self.set(b"special:float", b"3.14159");
        let big_string: Vec<u8> = (0..300 * 1024).map(|_| rng.byte()).collect();
        self.set(keys::BIG_STRING, &big_string);

        let mut cmd = redis::cmd("INCRBY");
        cmd.arg(keys::COUNTER).arg(42);
        self.push(cmd);
        self.created("string");
        let mut cmd = redis::cmd("INCRBYFLOAT");
        cmd.arg(b"special:incrbyfloat").arg("2.5");
        self.push(cmd);
        self.created("string");

        let mut cmd = redis::cmd("SADD");
        cmd.arg(b"special:intset")
            .arg(&[1i64, -5, 300, 70000, i64::MAX]);
        self.push(cmd);
        self.created("set");

        let mut cmd = redis::cmd("ZADD");
        cmd.arg(b"special:zset-extremes");
        for (score, member) in [
            ("-inf", "minus-infinity"),
            ("+inf", "plus-infinity"),
            ("0", "zero"),
            ("-0.5", "negative-half"),
            ("1e-300", "tiny"),
            ("0.1", "point-one"),
            ("12345678901234567", "huge"),
        ] {
            cmd.arg(score).arg(member);
        }
        self.push(cmd);
        self.created("zset");

        let mut cmd = redis::cmd("HSET");
        cmd.arg(keys::SMALL_HASH);
        for i in 0..5 {
            cmd.arg(format!("f{i}")).arg(format!("v{i}"));
        }
        cmd.arg(b"\x00\xff").arg(b"\r\n");
        self.push(cmd);
        self.created("hash");

        let mut cmd = redis::cmd("RPUSH");
        cmd.arg(b"special:list-of-empties").arg(&["", "", "x", ""]);
        self.push(cmd);
        self.created("list");

        // A stream emptied by XDEL still exists and remembers its last ID.
        let mut cmd = redis::cmd("XADD");
        cmd.arg(keys::EMPTY_STREAM)
            .arg(format!("{STREAM_ID_BASE_MS}-7"))
            .arg("f")
            .arg("v");
        self.push(cmd);
        let mut cmd = redis::cmd("XDEL");
        cmd.arg(keys::EMPTY_STREAM)
            .arg(format!("{STREAM_ID_BASE_MS}-7"));
        self.push(cmd);
        self.created("stream");
        let mut cmd = redis::cmd("XGROUP");
        cmd.arg("CREATE")
            .arg(b"stream:mkstream")
            .arg("only-group")
            .arg("$")
            .arg("MKSTREAM");
        self.push(cmd);
        self.created("stream");
    }

    fn big_keys(&mut self, rng: &mut Rng) {
        let ds = self.ds;
        self.big_collection("RPUSH", keys::BIG_LIST, ds.big_list, rng, |rng, i, cmd| {
            cmd.arg(rng.value_for(i));
        });
        self.created("list");
        self.big_collection("HSET", keys::BIG_HASH, ds.big_hash, rng, |rng, i, cmd| {
            cmd.arg(format!("field:{i}")).arg(rng.value_for(i));
        });
        self.created("hash");
        self.expire(keys::BIG_HASH, 2 * 3_600_000);
        self.big_collection("SADD", keys::BIG_SET, ds.big_set, rng, |rng, i, cmd| {
            let mut member = format!("member:{i}:").into_bytes();
            member.extend(rng.bytes(0, 8));
            cmd.arg(member);
        });
        self.created("set");
        self.big_collection("ZADD", keys::BIG_ZSET, ds.big_zset, rng, |rng, i, cmd| {
            // Duplicate scores are common, so members with equal scores are exercised too.
            let score = (rng.below(1000) as f64 - 500.0) / 4.0;
            cmd.arg(score).arg(format!("m:{i}"));
        });
        self.created("zset");
        self.big_stream(rng);
    }

    fn big_collection(
        &mut self,
        command: &str,
        key: &[u8],
        len: usize,
        rng: &mut Rng,
        mut element: impl FnMut(&mut Rng, usize, &mut redis::Cmd),
    ) {
        let mut i = 0;
        while i < len.max(1) {
            let mut cmd = redis::cmd(command);
            cmd.arg(key);
            let end = (i + ELEMENTS_PER_COMMAND).min(len.max(1));
            for j in i..end {
                element(rng, j, &mut cmd);
            }
            self.push(cmd);
            i = end;
        }
    }

    fn big_stream(&mut self, rng: &mut Rng) {
        let key = keys::STREAM;
        let n = self.ds.stream_entries.max(30) as u64;
        let id = |i: u64| format!("{}-{}", STREAM_ID_BASE_MS + i / 3, i % 3);
        for i in 0..n {
            let mut cmd = redis::cmd("XADD");
            cmd.arg(key)
                .arg(id(i))
                .arg("event")
                .arg(format!("e{i}"))
                .arg(b"payload")
                .arg(rng.value_for(i as usize));
            self.push(cmd);
        }
        self.created("stream");
        // Deletions make entries-added, max-deleted-entry-id and length all differ.
        let mut cmd = redis::cmd("XDEL");
        cmd.arg(key).arg(id(1)).arg(id(n / 2)).arg(id(n - 1));
        self.push(cmd);
        for (group, start) in [("g1", "0"), ("g2", "$")] {
            let mut cmd = redis::cmd("XGROUP");
            cmd.arg("CREATE").arg(key).arg(group).arg(start);
            self.push(cmd);
        }
        for (consumer, count) in [("alice", 10), ("bob", 5)] {
            let mut cmd = redis::cmd("XREADGROUP");
            cmd.arg("GROUP")
                .arg("g1")
                .arg(consumer)
                .arg("COUNT")
                .arg(count)
                .arg("STREAMS")
                .arg(key)
                .arg(">");
            self.push(cmd);
        }
        // An idle consumer without pending entries; before 6.2 there is no way to make one.
        if self.create_consumer {
            let mut cmd = redis::cmd("XGROUP");
            cmd.arg("CREATECONSUMER").arg(key).arg("g1").arg("carol");
            self.push(cmd);
        }
        // alice read entries 0,2,3.. (1 is deleted): ack two, hand one to bob (delivery count 2).
        let mut cmd = redis::cmd("XACK");
        cmd.arg(key).arg("g1").arg(id(0)).arg(id(2));
        self.push(cmd);
        let mut cmd = redis::cmd("XCLAIM");
        cmd.arg(key).arg("g1").arg("bob").arg(0).arg(id(3));
        self.push(cmd);
        self.expire(key, 3 * 3_600_000);
    }

    fn mixed_keys(&mut self, rng: &mut Rng) {
        for i in 0..self.ds.keys_per_db {
            let key = if rng.chance(0.05) {
                let mut k = format!("bin:{i}:").into_bytes();
                k.extend(rng.bytes(1, 16));
                k
            } else {
                format!("k:{i}").into_bytes()
            };
            let roll = rng.below(100);
            let ty = match roll {
                0..35 => {
                    let value = match rng.below(8) {
                        0 => Vec::new(),
                        1 => (rng.next() as i64 >> rng.below(60))
                            .to_string()
                            .into_bytes(),
                        2 => rng.below(1000).to_string().into_bytes(),
                        3 => format!("{:.3}", rng.below(1_000_000) as f64 / 7.0).into_bytes(),
                        4 => rng.bytes(100, 2000),
                        _ => rng.bytes(1, 40),
                    };
                    let mut cmd = redis::cmd("SET");
                    cmd.arg(&key).arg(value);
                    self.push(cmd);
                    "string"
                }
                35..50 => {
                    let mut cmd = redis::cmd("RPUSH");
                    cmd.arg(&key);
                    for _ in 0..rng.range(1, 9) {
                        cmd.arg(rng.bytes(0, 20));
                    }
                    self.push(cmd);
                    "list"
                }
                50..63 => {
                    let mut cmd = redis::cmd("SADD");
                    cmd.arg(&key);
                    let integers = rng.chance(0.5);
                    for _ in 0..rng.range(1, 9) {
                        if integers {
                            cmd.arg(rng.below(100_000));
                        } else {
                            cmd.arg(rng.bytes(0, 12));
                        }
                    }
                    self.push(cmd);
                    "set"
                }
                63..76 => {
                    let mut cmd = redis::cmd("ZADD");
                    cmd.arg(&key);
                    for j in 0..rng.range(1, 9) {
                        let score = if rng.chance(0.5) {
                            rng.below(100) as f64
                        } else {
                            (rng.next() as i64 as f64) / 1e12
                        };
                        let mut member = rng.bytes(0, 10);
                        member.push(j as u8);
                        cmd.arg(score).arg(member);
                    }
                    self.push(cmd);
                    "zset"
                }
                76..90 => {
                    let mut cmd = redis::cmd("HSET");
                    cmd.arg(&key);
                    for j in 0..rng.range(1, 9) {
                        cmd.arg(format!("f{j}")).arg(rng.bytes(0, 30));
                    }
                    self.push(cmd);
                    "hash"
                }
                // No streams before 5.0: a hash instead.
                _ if !self.streams => {
                    let mut cmd = redis::cmd("HSET");
                    cmd.arg(&key).arg("n").arg(rng.bytes(1, 8));
                    self.push(cmd);
                    "hash"
                }
                _ => {
                    for j in 0..rng.range(1, 6) {
                        let mut cmd = redis::cmd("XADD");
                        cmd.arg(&key)
                            .arg(format!("{}-{j}", STREAM_ID_BASE_MS + i as u64))
                            .arg("n")
                            .arg(j)
                            .arg(rng.bytes(1, 8))
                            .arg(rng.bytes(0, 20));
                        self.push(cmd);
                    }
                    "stream"
                }
            };
            self.created(ty);
            self.maybe_expire(rng, &key);
        }
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

/// SplitMix64: tiny, and its output is fixed forever, unlike a library RNG's across versions.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// Uniform in `lo..hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo)
    }

    pub fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p && p > 0.0
    }

    /// Skewed toward bytes that break text protocols and escaping.
    pub fn byte(&mut self) -> u8 {
        const NASTY: &[u8] = b"\r\n\0\"'\\ \t\x7f\x80\xff$*+-:";
        if self.chance(0.25) {
            NASTY[self.below(NASTY.len() as u64) as usize]
        } else {
            self.next() as u8
        }
    }

    /// Between `min` and `max` (exclusive) random bytes.
    pub fn bytes(&mut self, min: u64, max: u64) -> Vec<u8> {
        let len = self.range(min, max);
        (0..len).map(|_| self.byte()).collect()
    }

    /// A value for element `i` of a big collection: mostly short text, sometimes binary.
    fn value_for(&mut self, i: usize) -> Vec<u8> {
        if self.chance(0.1) {
            self.bytes(0, 24)
        } else {
            format!("v{i}:{}", self.below(1 << 20)).into_bytes()
        }
    }
}
