//! Owns the live workload: a seeded, paced mix of writes (and a few reads) that runs against a
//! source from several threads for as long as a migration is in flight.
//!
//! The mix is chosen to hit what makes MONITOR capture hard (docs/redis-behaviour.md §2–§5): MULTI/EXEC,
//! also with SELECT inside and with a command failing inside; scripts, also calling SPOP and
//! SELECT; blocked pops that a later push serves; members and IDs the server picks (SPOP,
//! `XADD *`, XREADGROUP); relative and absolute TTLs; keys expiring mid-run; commands that fail
//! on purpose; binary key names and values. It uses no admin command, so an ElastiCache-like
//! source runs it too.
//!
//! Key families never share names across types, so nothing but the deliberate failures hits
//! WRONGTYPE, and RENAME only moves keys within one family.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use redis::{
    Cmd, Connection, ConnectionInfo, FromRedisValue, IntoConnectionInfo, Pipeline, RedisError,
    RedisResult, Value,
};

use super::fill::{Rng, now_ms};

/// Seconds a blocking pop waits: short, so consumers notice `stop` within about a second.
const BLOCK_TIMEOUT_S: u64 = 1;
/// A blocking pop that returns data only after this long found its queues empty and was then
/// served by someone's push, the case MONITOR on the primary cannot show (docs/redis-behaviour.md §4).
const SERVED_AFTER_BLOCK: Duration = Duration::from_millis(50);
/// Well above [`BLOCK_TIMEOUT_S`], so only a stuck server trips it and `stop` still returns.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// A thread this far behind schedule (a slow server, a busy CPU) starts a fresh schedule
/// rather than bursting to catch up.
const MAX_LAG: Duration = Duration::from_millis(100);
/// Bounds every sleep, so a stop request is seen quickly even at very low rates.
const SLEEP_SLICE: Duration = Duration::from_millis(20);
/// String counters per db; with `ctr:hash` and `leaderboard` in 3 dbs that is about 50 hot
/// keys, each changing many times a second.
const HOT_COUNTERS: u64 = 15;
const SIDEKIQ_QUEUES: [&str; 2] = ["default", "mailers"];

/// Share of `rate` each paced thread gets. The consumers are not paced: they run as fast as
/// the producer feeds them, adding roughly another tenth.
const COUNTERS_SHARE: f64 = 0.30;
const TTL_SHARE: f64 = 0.14;
const TX_SHARE: f64 = 0.08;
const SCRIPTS_SHARE: f64 = 0.10;
const COLLECTIONS_SHARE: f64 = 0.18;
const MISC_SHARE: f64 = 0.15;
const PRODUCER_SHARE: f64 = 0.05;

/// Kinds that a run of a few seconds at the default options always produces; a test can
/// demand that each is non-zero. Expected failures have kinds of their own: `rename_missing`
/// (RENAME/RENAMENX of a missing key), `wrongtype`, and `multi_exec_wrongtype` (a MULTI whose
/// middle command fails while the others apply).
pub const KINDS: &[&str] = &[
    // Hot counters.
    "incr",
    "incrby",
    "incrby_negative",
    "hincrby",
    "zincrby",
    // Sidekiq: producer, BRPOP consumers and a super-fetch (BLMOVE) consumer.
    "sadd_queues",
    "lpush_job",
    "brpop",
    "brpop_served_after_block",
    "incr_processed",
    "lpush_retry",
    "zadd_schedule",
    "blmove",
    "lrem_working",
    // TTLs.
    "set_ex",
    "set_px",
    "setex",
    "psetex",
    "expire",
    "expire_gt",
    "expire_nx",
    "pexpire",
    "persist",
    "getex_ex",
    "expireat",
    "pexpireat",
    "set_px_short",
    "get_short",
    // Transactions.
    "multi_exec",
    "multi_exec_select",
    "multi_exec_wrongtype",
    // Scripts.
    "script_load",
    "eval",
    "evalsha",
    "eval_spop",
    "eval_select",
    "sadd_pool",
    // Sets, zsets, lists, hashes, streams.
    "xgroup_create",
    "spop",
    "spop_count",
    "sadd",
    "sunionstore",
    "sinterstore",
    "zadd",
    "zrem",
    "zunionstore",
    "rpush",
    "lmove",
    "ltrim",
    "hset",
    "hdel",
    "xadd",
    "xadd_maxlen",
    "xadd_group",
    "xreadgroup",
    "xack",
    // Renames, deletes, binary strings, deliberate failures, reads.
    "set",
    "rename",
    "rename_missing",
    "renamenx",
    "del",
    "unlink",
    "set_binary",
    "setrange",
    "append",
    "wrongtype",
    "get",
    "hgetall",
    "lrange",
];

/// Kinds that depend on timing and may legitimately be zero in a short run.
pub const OCCASIONAL_KINDS: &[&str] = &[
    "brpop_timeout",
    "blmove_served_after_block",
    "blmove_timeout",
    "trim_sidekiq",
];

#[derive(Debug, Clone)]
pub struct WorkloadOptions {
    /// Dbs that get writes. Sidekiq keys live in the first; MULTI and scripts that SELECT
    /// pick another one from this list.
    pub dbs: Vec<u32>,
    /// Target operations per second over all paced threads. A transaction or a script counts
    /// as one operation; consumers add about a tenth on top.
    pub rate: u32,
    /// Every choice (which command, key, value, burst size) follows from it; only timing, and
    /// so which job which consumer gets, varies between runs.
    pub seed: u64,
    /// BRPOP consumer threads; when non-zero, one BLMOVE (super-fetch) consumer runs as well.
    pub blocking_consumers: usize,
    /// The server has `EXPIRE … GT|NX` (Redis 7.0); without, those kinds send plain `EXPIRE`.
    pub expire_flags: bool,
    /// The server is older than Redis 6.2: `BRPOPLPUSH`, `RPOPLPUSH` and `EXPIRE` stand in for
    /// `BLMOVE`, `LMOVE` and `GETEX` (under the same kind names).
    pub before_6_2: bool,
    /// The server has streams (Redis 5.0); without, the stream kinds are not sent and
    /// scripts that write after a random command ask for effects replication (4.0).
    pub streams: bool,
}

impl Default for WorkloadOptions {
    fn default() -> Self {
        WorkloadOptions {
            dbs: vec![0, 1, 2],
            rate: 2000,
            seed: 0xF0_4B_3E_11,
            blocking_consumers: 2,
            expire_flags: true,
            before_6_2: false,
            streams: true,
        }
    }
}

/// A running workload; [`Workload::stop`] ends it, and so does dropping it.
pub struct Workload {
    shared: Arc<Shared>,
    threads: Vec<(&'static str, JoinHandle<Tally>)>,
    started: Instant,
}

#[derive(Debug)]
pub struct WorkloadReport {
    /// Operations that got the reply they were meant to get, expected errors included.
    pub ops_by_kind: BTreeMap<&'static str, u64>,
    /// Unexpected failures, keyed `"<kind>: <error code> <detail>"`.
    pub errors: BTreeMap<String, u64>,
    /// From `start` until the stop request; threads finish in-flight calls after it.
    pub elapsed: Duration,
}

impl WorkloadReport {
    pub fn total(&self) -> u64 {
        self.ops_by_kind.values().sum()
    }

    pub fn count(&self, kind: &str) -> u64 {
        self.ops_by_kind.get(kind).copied().unwrap_or(0)
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Operations per second over [`Self::elapsed`].
    pub fn rate(&self) -> f64 {
        self.total() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl fmt::Display for WorkloadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "workload: {} ops in {:.2?} ({:.0}/s), {} unexpected errors",
            self.total(),
            self.elapsed,
            self.rate(),
            self.error_count()
        )?;
        for (kind, n) in &self.ops_by_kind {
            write!(f, "\n  {kind:<26} {n:>7}")?;
        }
        for (what, n) in &self.errors {
            write!(f, "\n  error {what}: {n}")?;
        }
        Ok(())
    }
}

/// Starts the workload's threads against `url` (any redis-rs URL; a db in it is ignored,
/// since each thread opens its own connection per db). Panics if the server is unreachable,
/// so a bad URL fails the test at once rather than as a pile of counted errors.
pub fn start(url: &str, opts: WorkloadOptions) -> Workload {
    assert!(!opts.dbs.is_empty(), "the workload needs at least one db");
    let info = url
        .into_connection_info()
        .unwrap_or_else(|e| panic!("invalid workload url {url}: {e}"));
    super::tls::client(info.clone())
        .and_then(|c| c.get_connection_with_timeout(IO_TIMEOUT))
        .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
        .unwrap_or_else(|e| panic!("workload cannot reach {url}: {e}"));

    let started = Instant::now();
    let shared = Arc::new(Shared::default());
    shared
        .expire_flags
        .store(opts.expire_flags, Ordering::Relaxed);
    shared.before_6_2.store(opts.before_6_2, Ordering::Relaxed);
    shared.streams.store(opts.streams, Ordering::Relaxed);
    let rate = f64::from(opts.rate.max(1));
    let mut seeds = Rng::new(opts.seed);
    let mut threads = Vec::new();
    let mut spawn = |name: &'static str, body: Box<dyn FnOnce(&mut Worker) + Send>| {
        let mut worker = Worker {
            shared: Arc::clone(&shared),
            rng: Rng::new(seeds.next()),
            info: info.clone(),
            dbs: opts.dbs.clone(),
            conns: BTreeMap::new(),
            tally: Tally::default(),
            seq: 0,
            script_sha: None,
        };
        let handle = thread::Builder::new()
            .name(format!("workload-{name}"))
            .spawn(move || {
                body(&mut worker);
                worker.tally
            })
            .expect("spawn workload thread");
        threads.push((name, handle));
    };

    type Step = fn(&mut Worker);
    let paced: [(&'static str, f64, Option<Step>, Step); 6] = [
        ("counters", COUNTERS_SHARE, None, counters_step),
        ("ttl", TTL_SHARE, None, ttl_step),
        ("tx", TX_SHARE, None, tx_step),
        ("scripts", SCRIPTS_SHARE, Some(scripts_setup), scripts_step),
        (
            "collections",
            COLLECTIONS_SHARE,
            Some(collections_setup),
            collections_step,
        ),
        ("misc", MISC_SHARE, None, misc_step),
    ];
    for (name, share, setup, step) in paced {
        spawn(
            name,
            Box::new(move |w| {
                if let Some(setup) = setup {
                    setup(w);
                }
                let mut pacer = Pacer::new(rate * share);
                while pacer.wait(&w.shared.stop) {
                    step(w);
                }
            }),
        );
    }
    spawn(
        "producer",
        Box::new(move |w| produce(w, rate * PRODUCER_SHARE)),
    );
    for _ in 0..opts.blocking_consumers {
        spawn("brpop", Box::new(consume_brpop));
    }
    if opts.blocking_consumers > 0 {
        spawn("blmove", Box::new(consume_blmove));
    }

    Workload {
        shared,
        threads,
        started,
    }
}

impl Workload {
    /// Stops every thread and waits for them. Consumers may sit in a blocking pop, so this
    /// takes up to about [`BLOCK_TIMEOUT_S`].
    pub fn stop(mut self) -> WorkloadReport {
        self.shutdown()
    }

    /// Operations completed so far, over all threads.
    pub fn ops(&self) -> u64 {
        self.shared.ops.load(Ordering::Relaxed)
    }

    fn shutdown(&mut self) -> WorkloadReport {
        self.shared.stop.store(true, Ordering::Relaxed);
        let elapsed = self.started.elapsed();
        let mut report = WorkloadReport {
            ops_by_kind: BTreeMap::new(),
            errors: BTreeMap::new(),
            elapsed,
        };
        for (name, handle) in self.threads.drain(..) {
            match handle.join() {
                Ok(tally) => {
                    for (kind, n) in tally.ops {
                        *report.ops_by_kind.entry(kind).or_default() += n;
                    }
                    for (what, n) in tally.errors {
                        *report.errors.entry(what).or_default() += n;
                    }
                }
                // A panic is a bug in this module; it is reported, not re-raised, so the other
                // threads' counts still reach the test.
                Err(_) => {
                    *report
                        .errors
                        .entry(format!("thread {name} panicked"))
                        .or_default() += 1
                }
            }
        }
        report
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.shutdown();
        }
    }
}

#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    ops: AtomicU64,
    expire_flags: AtomicBool,
    before_6_2: AtomicBool,
    streams: AtomicBool,
}

#[derive(Default)]
struct Tally {
    ops: BTreeMap<&'static str, u64>,
    errors: BTreeMap<String, u64>,
}

/// One thread's state: its own random stream and one lazily opened connection per db.
struct Worker {
    shared: Arc<Shared>,
    rng: Rng,
    info: ConnectionInfo,
    dbs: Vec<u32>,
    conns: BTreeMap<u32, Connection>,
    tally: Tally,
    /// Per-thread sequence for names that must be fresh (short-TTL keys, jids).
    seq: u64,
    /// Digest of [`SCRIPT_LOADED`] once loaded; cleared after a NOSCRIPT so it is reloaded.
    script_sha: Option<String>,
}

/// Lets [`Worker`] run plain commands and pipelines (MULTI blocks) the same way.
trait Query {
    fn run<T: FromRedisValue>(&self, con: &mut Connection) -> RedisResult<T>;
}

impl Query for Cmd {
    fn run<T: FromRedisValue>(&self, con: &mut Connection) -> RedisResult<T> {
        self.query(con)
    }
}

impl Query for Pipeline {
    fn run<T: FromRedisValue>(&self, con: &mut Connection) -> RedisResult<T> {
        self.query(con)
    }
}

impl Worker {
    fn stopped(&self) -> bool {
        self.shared.stop.load(Ordering::Relaxed)
    }

    fn pick_db(&mut self) -> u32 {
        self.dbs[self.rng.below(self.dbs.len() as u64) as usize]
    }

    /// A db other than `db` when there is one, for SELECT inside MULTI and scripts.
    fn other_db(&mut self, db: u32) -> u32 {
        let others: Vec<u32> = self.dbs.iter().copied().filter(|&d| d != db).collect();
        if others.is_empty() {
            db
        } else {
            others[self.rng.below(others.len() as u64) as usize]
        }
    }

    fn sidekiq_db(&self) -> u32 {
        self.dbs[0]
    }

    fn conn(&mut self, db: u32) -> RedisResult<&mut Connection> {
        if !self.conns.contains_key(&db) {
            let settings = self.info.redis_settings().clone().set_db(i64::from(db));
            let info = self.info.clone().set_redis_settings(settings);
            let con = super::tls::client(info)?.get_connection_with_timeout(IO_TIMEOUT)?;
            con.set_read_timeout(Some(IO_TIMEOUT))?;
            con.set_write_timeout(Some(IO_TIMEOUT))?;
            self.conns.insert(db, con);
        }
        Ok(self.conns.get_mut(&db).expect("connection was just opened"))
    }

    fn query<T: FromRedisValue, Q: Query + ?Sized>(&mut self, db: u32, q: &Q) -> RedisResult<T> {
        let result = q.run(self.conn(db)?);
        if let Err(e) = &result
            && (e.is_io_error() || e.is_timeout() || e.is_unrecoverable_error())
        {
            // The reply may still be in flight, so the connection's framing is unknown.
            self.conns.remove(&db);
        }
        result
    }

    /// Runs `q`; success counts as `kind`, any error as unexpected.
    fn op<T: FromRedisValue, Q: Query + ?Sized>(
        &mut self,
        db: u32,
        kind: &'static str,
        q: &Q,
    ) -> Option<T> {
        match self.query(db, q) {
            Ok(v) => {
                self.count(kind);
                Some(v)
            }
            Err(e) => {
                self.unexpected(kind, &e);
                None
            }
        }
    }

    fn count(&mut self, kind: &'static str) {
        *self.tally.ops.entry(kind).or_default() += 1;
        self.shared.ops.fetch_add(1, Ordering::Relaxed);
    }

    fn unexpected(&mut self, kind: &str, e: &RedisError) {
        let code = e
            .code()
            .map(str::to_owned)
            .unwrap_or_else(|| format!("{:?}", e.kind()));
        let detail: String = e.detail().unwrap_or("").chars().take(60).collect();
        *self
            .tally
            .errors
            .entry(format!("{kind}: {code} {detail}").trim_end().to_owned())
            .or_default() += 1;
        if e.is_io_error() {
            // Back off so a dead server costs a few errors a second, not a busy loop.
            sleep_until(
                Instant::now() + Duration::from_millis(100),
                &self.shared.stop,
            );
        }
    }

    fn value(&mut self) -> Vec<u8> {
        if self.rng.chance(0.2) {
            self.rng.bytes(0, 24)
        } else {
            format!("v{}", self.rng.below(1_000_000)).into_bytes()
        }
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }
}

/// Keeps one thread at its share of the rate by sleeping until the next slot.
struct Pacer {
    interval: Duration,
    next: Instant,
}

impl Pacer {
    fn new(per_second: f64) -> Self {
        Pacer {
            interval: Duration::from_secs_f64(1.0 / per_second.max(0.1)),
            next: Instant::now(),
        }
    }

    /// False once the workload is stopping.
    fn wait(&mut self, stop: &AtomicBool) -> bool {
        let now = Instant::now();
        if now > self.next + MAX_LAG {
            self.next = now;
        }
        if !sleep_until(self.next, stop) {
            return false;
        }
        self.next += self.interval;
        true
    }
}

/// False if the stop flag was raised before `deadline`.
fn sleep_until(deadline: Instant, stop: &AtomicBool) -> bool {
    loop {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        let now = Instant::now();
        if now >= deadline {
            return true;
        }
        thread::sleep((deadline - now).min(SLEEP_SLICE));
    }
}

fn cmd(name: &str) -> Cmd {
    redis::cmd(name)
}

fn now_s() -> u64 {
    now_ms() / 1000
}

/// Names full of bytes that break text protocols and MONITOR's escaping (docs/redis-behaviour.md §1).
fn binary_key(n: u64) -> Vec<u8> {
    let mut key = b"bin:\x00\xff\r\n\"q' sp\\:".to_vec();
    key.extend(n.to_string().as_bytes());
    key
}

fn counters_step(w: &mut Worker) {
    let db = w.pick_db();
    let key = format!("ctr:{}", w.rng.below(HOT_COUNTERS));
    match w.rng.below(10) {
        0..=2 => {
            w.op::<i64, _>(db, "incr", cmd("INCR").arg(&key));
        }
        3 | 4 => {
            let by = w.rng.range(1, 1000);
            w.op::<i64, _>(db, "incrby", cmd("INCRBY").arg(&key).arg(by));
        }
        5 => {
            let by = -(w.rng.range(1, 1000) as i64);
            w.op::<i64, _>(db, "incrby_negative", cmd("INCRBY").arg(&key).arg(by));
        }
        6 | 7 => {
            let field = format!("f{}", w.rng.below(10));
            let by = w.rng.range(0, 200) as i64 - 50;
            w.op::<i64, _>(
                db,
                "hincrby",
                cmd("HINCRBY").arg("ctr:hash").arg(field).arg(by),
            );
        }
        _ => {
            let member = format!("player:{}", w.rng.below(10));
            let by = w.rng.range(1, 100) as f64 / 4.0;
            w.op::<f64, _>(
                db,
                "zincrby",
                cmd("ZINCRBY").arg("leaderboard").arg(by).arg(member),
            );
        }
    }
}

/// A Sidekiq-like job payload. Most are JSON; one in ten carries raw bytes, as a queue's
/// elements are binary-safe strings whatever the app meant them to be.
fn job(w: &mut Worker, queue: &str) -> Vec<u8> {
    const CLASSES: [&str; 3] = ["HardWorker", "UserMailer", "ReportJob"];
    let class = CLASSES[w.rng.below(CLASSES.len() as u64) as usize];
    let jid = format!("{:016x}{:08x}", w.rng.next(), w.next_seq());
    let arg = if w.rng.chance(0.2) {
        r#""quote \" backslash \\ tab \t caf\u00e9""#.to_owned()
    } else {
        w.rng.below(100_000).to_string()
    };
    let t = now_ms() as f64 / 1000.0;
    let mut out = format!(
        r#"{{"retry":true,"queue":"{queue}","class":"{class}","args":[{arg}],"jid":"{jid}","created_at":{t:.3},"enqueued_at":{t:.3}"#
    )
    .into_bytes();
    if w.rng.chance(0.1) {
        out.extend(b",\"blob\":\"");
        out.extend(w.rng.bytes(1, 16));
        out.push(b'"');
    }
    out.push(b'}');
    out
}

/// Pushes jobs in bursts separated by pauses, so consumers alternate between finding data
/// and blocking on empty queues until the next burst serves them.
fn produce(w: &mut Worker, jobs_per_s: f64) {
    let db = w.sidekiq_db();
    while !w.stopped() {
        let burst = w.rng.range(1, 21);
        let mut pushed = 0;
        while pushed < burst && !w.stopped() {
            let queue = SIDEKIQ_QUEUES[w.rng.below(2) as usize];
            // Sidekiq's push_bulk sends several jobs in one LPUSH.
            let n = if w.rng.chance(0.2) { 3 } else { 1 };
            let mut push = cmd("LPUSH");
            push.arg(format!("queue:{queue}"));
            for _ in 0..n {
                push.arg(job(w, queue));
            }
            // Sidekiq's client pipelines these two, without MULTI.
            let mut pipe = redis::pipe();
            pipe.cmd("SADD").arg("queues").arg(queue).add_command(push);
            if w.op::<(), _>(db, "lpush_job", &pipe).is_some() {
                w.count("sadd_queues");
            }
            pushed += n;
        }
        let pause = Duration::from_secs_f64(pushed as f64 / jobs_per_s.max(0.5))
            .min(Duration::from_secs(2));
        if !sleep_until(Instant::now() + pause, &w.shared.stop) {
            break;
        }
    }
}

fn served_kind(
    started: Instant,
    immediate: &'static str,
    after_block: &'static str,
) -> &'static str {
    if started.elapsed() >= SERVED_AFTER_BLOCK {
        after_block
    } else {
        immediate
    }
}

fn consume_brpop(w: &mut Worker) {
    let db = w.sidekiq_db();
    while !w.stopped() {
        let started = Instant::now();
        let mut brpop = cmd("BRPOP");
        brpop
            .arg("queue:default")
            .arg("queue:mailers")
            .arg(BLOCK_TIMEOUT_S);
        match w.query::<Option<(Vec<u8>, Vec<u8>)>, _>(db, &brpop) {
            Ok(Some((_queue, job))) => {
                let kind = served_kind(started, "brpop", "brpop_served_after_block");
                w.count(kind);
                process(w, db, &job);
            }
            Ok(None) => w.count("brpop_timeout"),
            Err(e) => w.unexpected("brpop", &e),
        }
    }
}

/// Sidekiq Pro's super-fetch: the job is parked in a working list while it runs, so a crash
/// cannot lose it, and removed once done.
fn consume_blmove(w: &mut Worker) {
    let db = w.sidekiq_db();
    while !w.stopped() {
        let started = Instant::now();
        let mut blmove = if w.shared.before_6_2.load(Ordering::Relaxed) {
            cmd("BRPOPLPUSH")
        } else {
            cmd("BLMOVE")
        };
        blmove.arg("queue:default").arg("queue:working");
        if !w.shared.before_6_2.load(Ordering::Relaxed) {
            blmove.arg("RIGHT").arg("LEFT");
        }
        blmove.arg(BLOCK_TIMEOUT_S);
        match w.query::<Option<Vec<u8>>, _>(db, &blmove) {
            Ok(Some(job)) => {
                let kind = served_kind(started, "blmove", "blmove_served_after_block");
                w.count(kind);
                process(w, db, &job);
                w.op::<i64, _>(
                    db,
                    "lrem_working",
                    cmd("LREM").arg("queue:working").arg(1).arg(job),
                );
            }
            Ok(None) => w.count("blmove_timeout"),
            Err(e) => w.unexpected("blmove", &e),
        }
    }
}

fn process(w: &mut Worker, db: u32, job: &[u8]) {
    w.op::<i64, _>(db, "incr_processed", cmd("INCR").arg("stat:processed"));
    if w.rng.chance(0.15) {
        w.op::<i64, _>(db, "lpush_retry", cmd("LPUSH").arg("retry").arg(job));
        let at = now_ms() as f64 / 1000.0 + w.rng.range(5, 600) as f64;
        w.op::<i64, _>(
            db,
            "zadd_schedule",
            cmd("ZADD").arg("schedule").arg(at).arg(job),
        );
        if w.rng.chance(0.1) {
            // Keeps a long migration's retry data bounded.
            let mut pipe = redis::pipe();
            pipe.cmd("LTRIM").arg("retry").arg(0).arg(499);
            pipe.cmd("ZREMRANGEBYRANK").arg("schedule").arg(0).arg(-501);
            w.op::<(), _>(db, "trim_sidekiq", &pipe);
        }
    }
}

fn ttl_step(w: &mut Worker) {
    let db = w.pick_db();
    let key = format!("ttl:{}", w.rng.below(100));
    let secs = w.rng.range(30, 600);
    let ms = w.rng.range(30_000, 600_000);
    match w.rng.below(16) {
        0 | 1 => {
            let v = w.value();
            w.op::<(), _>(
                db,
                "set_ex",
                cmd("SET").arg(&key).arg(v).arg("EX").arg(secs),
            );
        }
        2 => {
            let v = w.value();
            w.op::<(), _>(db, "set_px", cmd("SET").arg(&key).arg(v).arg("PX").arg(ms));
        }
        3 => {
            let v = w.value();
            w.op::<(), _>(db, "setex", cmd("SETEX").arg(&key).arg(secs).arg(v));
        }
        4 => {
            let v = w.value();
            w.op::<(), _>(db, "psetex", cmd("PSETEX").arg(&key).arg(ms).arg(v));
        }
        5 => {
            w.op::<i64, _>(db, "expire", cmd("EXPIRE").arg(&key).arg(secs));
        }
        6 => {
            let mut c = cmd("EXPIRE");
            c.arg(&key).arg(secs);
            if w.shared.expire_flags.load(Ordering::Relaxed) {
                c.arg("GT");
            }
            w.op::<i64, _>(db, "expire_gt", &c);
        }
        7 => {
            let mut c = cmd("EXPIRE");
            c.arg(&key).arg(secs);
            if w.shared.expire_flags.load(Ordering::Relaxed) {
                c.arg("NX");
            }
            w.op::<i64, _>(db, "expire_nx", &c);
        }
        8 => {
            w.op::<i64, _>(db, "pexpire", cmd("PEXPIRE").arg(&key).arg(ms));
        }
        9 => {
            w.op::<i64, _>(db, "persist", cmd("PERSIST").arg(&key));
        }
        10 if w.shared.before_6_2.load(Ordering::Relaxed) => {
            w.op::<i64, _>(db, "getex_ex", cmd("EXPIRE").arg(&key).arg(secs));
        }
        10 => {
            w.op::<Option<Vec<u8>>, _>(db, "getex_ex", cmd("GETEX").arg(&key).arg("EX").arg(secs));
        }
        11 => {
            let at = now_s() + w.rng.range(60, 900);
            w.op::<i64, _>(db, "expireat", cmd("EXPIREAT").arg(&key).arg(at));
        }
        12 => {
            let at = now_ms() + w.rng.range(60_000, 900_000);
            w.op::<i64, _>(db, "pexpireat", cmd("PEXPIREAT").arg(&key).arg(at));
        }
        13 | 14 => {
            // Fresh names, so no later write extends them: each one does expire mid-run.
            let short = format!("short:{}", w.next_seq());
            let ms = w.rng.range(2000, 5000);
            let v = w.value();
            w.op::<(), _>(
                db,
                "set_px_short",
                cmd("SET").arg(short).arg(v).arg("PX").arg(ms),
            );
        }
        _ => {
            // Reading an old one makes the server expire it lazily, if active expiry has not.
            let short = format!("short:{}", w.rng.below(w.seq + 1));
            w.op::<Option<Vec<u8>>, _>(db, "get_short", cmd("GET").arg(short));
        }
    }
}

fn tx_step(w: &mut Worker) {
    let db = w.pick_db();
    let n = w.rng.below(20);
    let mut pipe = redis::pipe();
    pipe.atomic();
    match w.rng.below(10) {
        0..=6 => {
            let first = w.rng.below(4);
            let writes = w.rng.range(2, 5);
            for i in 0..writes {
                let v = w.value();
                match (first + i) % 4 {
                    0 => pipe.cmd("SET").arg(format!("tx:{n}:s")).arg(v),
                    1 => pipe.cmd("INCR").arg(format!("tx:{n}:c")),
                    2 => pipe
                        .cmd("HSET")
                        .arg(format!("tx:{n}:h"))
                        .arg(format!("f{}", w.rng.below(8)))
                        .arg(v),
                    _ => pipe
                        .cmd("LPUSH")
                        .arg(format!("tx:{n}:l"))
                        .arg(v)
                        .cmd("LTRIM")
                        .arg(format!("tx:{n}:l"))
                        .arg(0)
                        .arg(49),
                };
            }
            w.op::<(), _>(db, "multi_exec", &pipe);
        }
        7 | 8 => {
            // The SELECT back inside the same MULTI leaves the connection on its own db, so
            // redis-rs' idea of the current db stays true.
            let other = w.other_db(db);
            let v = w.value();
            pipe.cmd("SET").arg(format!("tx:sel:{n}")).arg(&v);
            pipe.cmd("SELECT").arg(other);
            pipe.cmd("INCR").arg(format!("tx:sel:{n}:c"));
            pipe.cmd("HSET")
                .arg(format!("tx:sel:{n}:h"))
                .arg(format!("from{db}"))
                .arg(&v);
            pipe.cmd("SELECT").arg(db);
            w.op::<(), _>(db, "multi_exec_select", &pipe);
        }
        _ => {
            // The middle command fails at EXEC while the others still apply: no rollback.
            let v = w.value();
            pipe.ignore_errors();
            pipe.cmd("SET").arg(format!("tx:wt:{n}")).arg(v);
            pipe.cmd("LPUSH").arg(format!("tx:wt:{n}")).arg("x");
            pipe.cmd("INCR").arg(format!("tx:wt:{n}:c"));
            match w.query::<Vec<Value>, _>(db, &pipe) {
                Ok(replies) => {
                    let shape: Vec<Option<&str>> = replies
                        .iter()
                        .map(|r| match r {
                            Value::ServerError(e) => Some(e.code()),
                            _ => None,
                        })
                        .collect();
                    if shape == [None, Some("WRONGTYPE"), None] {
                        w.count("multi_exec_wrongtype");
                    } else {
                        *w.tally
                            .errors
                            .entry(format!("multi_exec_wrongtype: replies {shape:?}"))
                            .or_default() += 1;
                    }
                }
                Err(e) => w.unexpected("multi_exec_wrongtype", &e),
            }
        }
    }
}

const SCRIPT_MULTI_WRITE: &str = "redis.call('INCR', KEYS[1]); \
    redis.call('LPUSH', KEYS[2], ARGV[1]); redis.call('LTRIM', KEYS[2], 0, 49); \
    redis.call('HSET', KEYS[3], 'f', ARGV[1]); return 1";
/// Run by EVALSHA after SCRIPT LOAD, so a replayer sees only the digest (docs/redis-behaviour.md §3).
const SCRIPT_LOADED: &str = "redis.call('SET', KEYS[1], ARGV[1]); \
    redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1]); \
    redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -101); \
    return redis.call('INCRBY', KEYS[3], ARGV[2])";
/// The member moved is the server's choice and never appears in MONITOR's arguments.
const SCRIPT_SPOP: &str = "local m = redis.call('SPOP', KEYS[1]); \
    if m then redis.call('SADD', KEYS[2], m) end; return m";
/// The same for Redis 4.0, which refuses a write after a random command in a script that does
/// not replicate its effects.
const SCRIPT_SPOP_EFFECTS: &str = "redis.replicate_commands(); \
    local m = redis.call('SPOP', KEYS[1]); \
    if m then redis.call('SADD', KEYS[2], m) end; return m";
/// Its writes land in another db than the caller's; MONITOR shows them as `[<db> lua]`.
const SCRIPT_SELECT: &str = "redis.call('SELECT', ARGV[1]); return redis.call('INCR', KEYS[1])";

/// The script cache is server-wide, so one load serves every db.
fn scripts_setup(w: &mut Worker) {
    let db = w.pick_db();
    w.script_digest(db);
}

fn scripts_step(w: &mut Worker) {
    let db = w.pick_db();
    let n = w.rng.below(20);
    match w.rng.below(10) {
        0..=3 => {
            let v = w.value();
            w.op::<i64, _>(
                db,
                "eval",
                cmd("EVAL")
                    .arg(SCRIPT_MULTI_WRITE)
                    .arg(3)
                    .arg(format!("lua:c:{n}"))
                    .arg(format!("lua:l:{n}"))
                    .arg(format!("lua:h:{n}"))
                    .arg(v),
            );
        }
        4..=6 => {
            let Some(sha) = w.script_digest(db) else {
                return;
            };
            let v = w.value();
            let score = w.rng.range(1, 100);
            let mut evalsha = cmd("EVALSHA");
            evalsha
                .arg(&sha)
                .arg(3)
                .arg(format!("lua:s:{n}"))
                .arg("lua:z")
                .arg(format!("lua:c:{n}"))
                .arg(v)
                .arg(score);
            match w.query::<i64, _>(db, &evalsha) {
                Ok(_) => w.count("evalsha"),
                Err(e) => {
                    w.unexpected("evalsha", &e);
                    if e.code() == Some("NOSCRIPT") {
                        // Someone flushed the script cache: reload rather than fail forever.
                        w.script_sha = None;
                    }
                }
            }
        }
        7 => {
            w.op::<Option<Vec<u8>>, _>(
                db,
                "eval_spop",
                cmd("EVAL")
                    .arg(if w.shared.streams.load(Ordering::Relaxed) {
                        SCRIPT_SPOP
                    } else {
                        SCRIPT_SPOP_EFFECTS
                    })
                    .arg(2)
                    .arg("lua:pool")
                    .arg("lua:drawn"),
            );
        }
        8 => {
            let mut sadd = cmd("SADD");
            sadd.arg("lua:pool");
            for _ in 0..5 {
                sadd.arg(format!("m{}", w.rng.below(50)));
            }
            w.op::<i64, _>(db, "sadd_pool", &sadd);
        }
        _ => {
            let other = w.other_db(db);
            w.op::<i64, _>(
                db,
                "eval_select",
                cmd("EVAL")
                    .arg(SCRIPT_SELECT)
                    .arg(1)
                    .arg(format!("lua:sel:{n}"))
                    .arg(other),
            );
        }
    }
}

impl Worker {
    /// The digest of [`SCRIPT_LOADED`], loading it first if needed.
    fn script_digest(&mut self, db: u32) -> Option<String> {
        if self.script_sha.is_none() {
            self.script_sha = self.op::<String, _>(
                db,
                "script_load",
                cmd("SCRIPT").arg("LOAD").arg(SCRIPT_LOADED),
            );
        }
        self.script_sha.clone()
    }
}

/// Pulls the entry IDs out of an XREADGROUP reply, RESP2 (array of pairs) or RESP3 (map).
fn stream_entry_ids(reply: &Value) -> Vec<Vec<u8>> {
    let entry_lists: Vec<&Value> = match reply {
        Value::Array(streams) => streams
            .iter()
            .filter_map(|s| match s {
                Value::Array(pair) if pair.len() == 2 => Some(&pair[1]),
                _ => None,
            })
            .collect(),
        Value::Map(pairs) => pairs.iter().map(|(_, entries)| entries).collect(),
        _ => Vec::new(),
    };
    let mut ids = Vec::new();
    for entries in entry_lists {
        if let Value::Array(entries) = entries {
            for entry in entries {
                if let Value::Array(parts) = entry
                    && let Some(Value::BulkString(id)) = parts.first()
                {
                    ids.push(id.clone());
                }
            }
        }
    }
    ids
}

/// Groups belong to one stream, and each db has its own `stream:jobs`; MKSTREAM creates it.
fn collections_setup(w: &mut Worker) {
    if !w.shared.streams.load(Ordering::Relaxed) {
        return;
    }
    for db in w.dbs.clone() {
        let mut create = cmd("XGROUP");
        create
            .arg("CREATE")
            .arg("stream:jobs")
            .arg("workers")
            .arg("$")
            .arg("MKSTREAM");
        match w.query::<(), _>(db, &create) {
            Ok(()) => w.count("xgroup_create"),
            // A second workload on the same server finds the group there already.
            Err(e) if e.code() == Some("BUSYGROUP") => w.count("xgroup_create"),
            Err(e) => w.unexpected("xgroup_create", &e),
        }
    }
}

fn collections_step(w: &mut Worker) {
    let db = w.pick_db();
    let set = format!("set:pop:{}", w.rng.below(2));
    let pick = w.rng.below(20);
    // Without streams (4.0) the stream kinds become more SADDs.
    let pick = if (4..=7).contains(&pick) && !w.shared.streams.load(Ordering::Relaxed) {
        2
    } else {
        pick
    };
    match pick {
        0 => {
            w.op::<Option<Vec<u8>>, _>(db, "spop", cmd("SPOP").arg(&set));
        }
        1 => {
            let count = w.rng.range(1, 4);
            w.op::<Vec<Vec<u8>>, _>(db, "spop_count", cmd("SPOP").arg(&set).arg(count));
        }
        2 | 3 => {
            let mut sadd = cmd("SADD");
            sadd.arg(&set);
            for _ in 0..4 {
                if w.rng.chance(0.1) {
                    sadd.arg(w.rng.bytes(1, 8));
                } else {
                    sadd.arg(format!("m{}", w.rng.below(40)));
                }
            }
            w.op::<i64, _>(db, "sadd", &sadd);
        }
        4 | 5 => {
            let maxlen = w.rng.chance(0.5);
            let mut xadd = cmd("XADD");
            xadd.arg("stream:events");
            if maxlen {
                xadd.arg("MAXLEN").arg("~").arg(1000);
            }
            let v = w.value();
            xadd.arg("*")
                .arg("event")
                .arg(format!("e{}", w.rng.below(1000)))
                .arg("data")
                .arg(v);
            let kind = if maxlen { "xadd_maxlen" } else { "xadd" };
            w.op::<String, _>(db, kind, &xadd);
        }
        6 => {
            let v = w.value();
            w.op::<String, _>(
                db,
                "xadd_group",
                cmd("XADD")
                    .arg("stream:jobs")
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(2000)
                    .arg("*")
                    .arg("job")
                    .arg(v),
            );
        }
        7 => {
            let consumer = format!("c{}", w.rng.below(3));
            let mut read = cmd("XREADGROUP");
            read.arg("GROUP")
                .arg("workers")
                .arg(&consumer)
                .arg("COUNT")
                .arg(5)
                .arg("STREAMS")
                .arg("stream:jobs")
                .arg(">");
            let Some(reply) = w.op::<Value, _>(db, "xreadgroup", &read) else {
                return;
            };
            // Leaves about a third pending, so the PEL differs per consumer.
            let acked: Vec<Vec<u8>> = stream_entry_ids(&reply)
                .into_iter()
                .filter(|_| w.rng.chance(0.67))
                .collect();
            if !acked.is_empty() {
                w.op::<i64, _>(
                    db,
                    "xack",
                    cmd("XACK").arg("stream:jobs").arg("workers").arg(acked),
                );
            }
        }
        8 => {
            w.op::<i64, _>(
                db,
                "sunionstore",
                cmd("SUNIONSTORE")
                    .arg("set:union")
                    .arg("set:pop:0")
                    .arg("set:pop:1"),
            );
        }
        9 => {
            w.op::<i64, _>(
                db,
                "sinterstore",
                cmd("SINTERSTORE")
                    .arg("set:inter")
                    .arg("set:pop:0")
                    .arg("set:pop:1"),
            );
        }
        10 => {
            w.op::<i64, _>(
                db,
                "zunionstore",
                cmd("ZUNIONSTORE")
                    .arg("z:union")
                    .arg(2)
                    .arg("leaderboard")
                    .arg("z:b")
                    .arg("WEIGHTS")
                    .arg(1)
                    .arg(2),
            );
        }
        11 | 12 => {
            let score = w.rng.below(1000) as f64 / 8.0;
            let member = format!("m{}", w.rng.below(30));
            w.op::<i64, _>(db, "zadd", cmd("ZADD").arg("z:b").arg(score).arg(member));
        }
        13 => {
            let member = format!("m{}", w.rng.below(30));
            w.op::<i64, _>(db, "zrem", cmd("ZREM").arg("z:b").arg(member));
        }
        14 | 15 => {
            let mut rpush = cmd("RPUSH");
            rpush.arg("list:a");
            for _ in 0..3 {
                rpush.arg(w.value());
            }
            w.op::<i64, _>(db, "rpush", &rpush);
        }
        16 if w.shared.before_6_2.load(Ordering::Relaxed) => {
            w.op::<Option<Vec<u8>>, _>(db, "lmove", cmd("RPOPLPUSH").arg("list:a").arg("list:b"));
        }
        16 => {
            w.op::<Option<Vec<u8>>, _>(
                db,
                "lmove",
                cmd("LMOVE")
                    .arg("list:a")
                    .arg("list:b")
                    .arg("LEFT")
                    .arg("RIGHT"),
            );
        }
        17 => {
            let list = if w.rng.chance(0.5) {
                "list:a"
            } else {
                "list:b"
            };
            w.op::<(), _>(db, "ltrim", cmd("LTRIM").arg(list).arg(-100).arg(-1));
        }
        18 => {
            let v = w.value();
            let field = format!("f{}", w.rng.below(20));
            let hash = format!("hash:{}", w.rng.below(3));
            w.op::<i64, _>(db, "hset", cmd("HSET").arg(hash).arg(field).arg(v));
        }
        _ => {
            let field = format!("f{}", w.rng.below(20));
            let hash = format!("hash:{}", w.rng.below(3));
            w.op::<i64, _>(db, "hdel", cmd("HDEL").arg(hash).arg(field));
        }
    }
}

/// RENAME/RENAMENX whose source may be gone: "no such key" is the expected failure.
fn rename(w: &mut Worker, db: u32, command: &str, kind: &'static str) {
    let from = w.rng.below(8);
    let to = (from + w.rng.range(1, 8)) % 8;
    let mut rename = cmd(command);
    rename.arg(format!("ren:{from}")).arg(format!("ren:{to}"));
    match w.query::<Value, _>(db, &rename) {
        Ok(_) => w.count(kind),
        Err(e) if e.detail().is_some_and(|d| d.contains("no such key")) => {
            w.count("rename_missing")
        }
        Err(e) => w.unexpected(kind, &e),
    }
}

fn misc_step(w: &mut Worker) {
    let db = w.pick_db();
    let k = w.rng.below(8);
    match w.rng.below(20) {
        0 | 1 => {
            let v = w.value();
            let mut set = cmd("SET");
            set.arg(format!("ren:{}", w.rng.below(8))).arg(v);
            if w.rng.chance(0.3) {
                // RENAME carries the TTL along to the new name.
                set.arg("EX").arg(w.rng.range(60, 600));
            }
            w.op::<(), _>(db, "set", &set);
        }
        2 | 3 => rename(w, db, "RENAME", "rename"),
        4 => rename(w, db, "RENAMENX", "renamenx"),
        5 => {
            if w.rng.chance(0.5) {
                let v = w.value();
                w.op::<(), _>(db, "set", cmd("SET").arg(format!("del:s:{k}")).arg(v));
            } else {
                let (a, b) = (w.value(), w.value());
                w.op::<i64, _>(
                    db,
                    "rpush",
                    cmd("RPUSH").arg(format!("del:l:{k}")).arg(a).arg(b),
                );
            }
        }
        6 => {
            w.op::<i64, _>(
                db,
                "del",
                cmd("DEL")
                    .arg(format!("del:s:{k}"))
                    .arg(format!("del:l:{k}")),
            );
        }
        7 => {
            w.op::<i64, _>(
                db,
                "unlink",
                cmd("UNLINK")
                    .arg(format!("del:l:{k}"))
                    .arg(format!("del:s:{k}")),
            );
        }
        8 | 9 => {
            let v = w.rng.bytes(0, 32);
            w.op::<(), _>(db, "set_binary", cmd("SET").arg(binary_key(k)).arg(v));
        }
        10 => {
            let offset = w.rng.below(40);
            let v = w.rng.bytes(1, 8);
            w.op::<i64, _>(
                db,
                "setrange",
                cmd("SETRANGE").arg(binary_key(k)).arg(offset).arg(v),
            );
        }
        11 => {
            let v = w.rng.bytes(1, 8);
            w.op::<i64, _>(db, "append", cmd("APPEND").arg(binary_key(k)).arg(v));
        }
        12 => {
            let key = format!("wt:{k}");
            w.op::<(), _>(db, "set", cmd("SET").arg(&key).arg("a string"));
            match w.query::<i64, _>(db, cmd("LPUSH").arg(&key).arg("x")) {
                Err(e) if e.code() == Some("WRONGTYPE") => w.count("wrongtype"),
                Ok(_) => {
                    *w.tally
                        .errors
                        .entry("wrongtype: LPUSH on a string succeeded".to_owned())
                        .or_default() += 1;
                }
                Err(e) => w.unexpected("wrongtype", &e),
            }
        }
        13..=15 => {
            let key = match w.rng.below(3) {
                0 => format!("ctr:{}", w.rng.below(HOT_COUNTERS)).into_bytes(),
                1 => format!("ren:{k}").into_bytes(),
                _ => binary_key(k),
            };
            w.op::<Option<Vec<u8>>, _>(db, "get", cmd("GET").arg(key));
        }
        16 | 17 => {
            let hash = if w.rng.chance(0.5) {
                "ctr:hash".to_owned()
            } else {
                format!("hash:{}", w.rng.below(3))
            };
            w.op::<Value, _>(db, "hgetall", cmd("HGETALL").arg(hash));
        }
        _ => {
            let (db, list) = if w.rng.chance(0.5) {
                (w.sidekiq_db(), "queue:default")
            } else {
                (db, "list:a")
            };
            w.op::<Vec<Vec<u8>>, _>(db, "lrange", cmd("LRANGE").arg(list).arg(0).arg(9));
        }
    }
}
