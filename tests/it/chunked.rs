//! Type-aware chunked copy (`snapshot::chunked`) against real servers, checked by the oracle.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry::snapshot::RateLimiter;
use ferry::snapshot::chunked::{ChunkedError, ChunkedOptions, ChunkedStats, KeyType, copy_chunked};
use redis::{Connection, FromRedisValue, Value};

use crate::support::fill::{Rng, now_ms};
use crate::support::server::info_field;
use crate::support::{OracleOptions, RedisServer, ServerOptions, compare};

const CHUNK: usize = 1000;
/// Commands per pipeline when loading test data.
const LOAD_BATCH: usize = 64;

fn q<T: FromRedisValue>(con: &mut Connection, cmd: &redis::Cmd) -> T {
    cmd.query(con)
        .unwrap_or_else(|e| panic!("{:?} failed: {e}", cmd.args_iter().next()))
}

fn cmd(name: &str) -> redis::Cmd {
    redis::cmd(name)
}

/// Sends `cmds` in pipelines of [`LOAD_BATCH`].
fn load(con: &mut Connection, cmds: impl IntoIterator<Item = redis::Cmd>) {
    let mut pipe = redis::pipe();
    for c in cmds {
        pipe.add_command(c).ignore();
        if pipe.len() >= LOAD_BATCH {
            pipe.exec(con).expect("load pipeline");
            pipe.clear();
        }
    }
    if !pipe.is_empty() {
        pipe.exec(con).expect("load pipeline");
    }
}

/// `n` elements as variadic `command key …` commands of 1000 elements each.
fn variadic(
    command: &str,
    key: &[u8],
    n: usize,
    mut element: impl FnMut(usize, &mut redis::Cmd),
) -> Vec<redis::Cmd> {
    (0..n)
        .step_by(1000)
        .map(|start| {
            let mut c = cmd(command);
            c.arg(key);
            for i in start..(start + 1000).min(n) {
                element(i, &mut c);
            }
            c
        })
        .collect()
}

/// Mostly text, sometimes binary, so protocol-unfriendly bytes show up throughout.
fn value(rng: &mut Rng, i: usize) -> Vec<u8> {
    if rng.chance(0.1) {
        rng.bytes(0, 24)
    } else {
        format!("v{i}:{}", rng.below(1 << 20)).into_bytes()
    }
}

fn run<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(f)
}

/// One chunked copy over fresh multiplexed connections (db 0 on both sides).
fn copy(
    src: &RedisServer,
    dst: &RedisServer,
    read_key: &[u8],
    key: &[u8],
    ty: KeyType,
    expire_at_ms: Option<i64>,
    chunk: usize,
) -> Result<ChunkedStats, ChunkedError> {
    copy_urls(
        &src.url(),
        &dst.url(),
        read_key,
        key,
        ty,
        expire_at_ms,
        chunk,
    )
}

fn copy_urls(
    src: &str,
    dst: &str,
    read_key: &[u8],
    key: &[u8],
    ty: KeyType,
    expire_at_ms: Option<i64>,
    chunk: usize,
) -> Result<ChunkedStats, ChunkedError> {
    run(async {
        let (mut s, mut d) = (connect(src).await, connect(dst).await);
        let opts = ChunkedOptions::new(chunk);
        copy_chunked(&mut s, &mut d, read_key, key, ty, expire_at_ms, &opts).await
    })
}

async fn connect(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .expect("valid url")
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"))
}

/// Copies `key` to the same name, with the source's expiry, and checks it came out whole.
#[track_caller]
fn copy_same(src: &RedisServer, dst: &RedisServer, key: &[u8], chunk: usize) -> ChunkedStats {
    let mut con = src.conn();
    let ty: String = q(&mut con, cmd("TYPE").arg(key));
    let ty = KeyType::parse(&ty).unwrap_or_else(|| panic!("unexpected type {ty}"));
    let expire_at: i64 = q(&mut con, cmd("PEXPIRETIME").arg(key));
    copy(
        src,
        dst,
        key,
        key,
        ty,
        (expire_at >= 0).then_some(expire_at),
        chunk,
    )
    .unwrap_or_else(|e| panic!("chunked copy failed: {e}"))
}

/// The oracle finds no difference and compared exactly `keys` keys.
#[track_caller]
fn assert_same(src: &RedisServer, dst: &RedisServer, keys: usize) {
    let report = compare(&src.url(), &dst.url(), &OracleOptions::default());
    report.assert_identical();
    assert_eq!(report.keys_compared, keys, "{report}");
    assert_eq!(report.target_keys, keys, "no temp key left over: {report}");
}

fn timed<T>(name: &str, f: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let out = f();
    eprintln!("{name}: {:.2?}", started.elapsed());
    out
}

#[test]
fn list_of_500k_elements() {
    let (src, dst) = (RedisServer::start(), RedisServer::start());
    let mut rng = Rng::new(1);
    load(
        &mut src.conn(),
        variadic("RPUSH", b"big:list", 500_000, |i, c| {
            c.arg(value(&mut rng, i));
        }),
    );
    let stats = timed("copy list", || copy_same(&src, &dst, b"big:list", CHUNK));
    assert_eq!(stats.elements, 500_000);
    assert!(stats.bytes > 500_000, "{stats:?}");
    assert_same(&src, &dst, 1);
}

/// Regression (snapshot audit): `--max-source-ops` was ignored by chunked copies, whose reads
/// went to the source unpaced.
#[test]
fn source_reads_are_paced_by_the_limiter() {
    let (src, dst) = (RedisServer::start(), RedisServer::start());
    let mut rng = Rng::new(11);
    load(
        &mut src.conn(),
        variadic("RPUSH", b"big:list", 20_000, |i, c| {
            c.arg(value(&mut rng, i));
        }),
    );
    let per_sec = 40;
    let limiter = Arc::new(RateLimiter::new(per_sec));
    let started = Instant::now();
    let stats = run(async {
        let (mut s, mut d) = (connect(&src.url()).await, connect(&dst.url()).await);
        let opts = ChunkedOptions::new(CHUNK).with_limiter(Some(limiter.clone()));
        copy_chunked(
            &mut s,
            &mut d,
            b"big:list",
            b"big:list",
            KeyType::List,
            None,
            &opts,
        )
        .await
    })
    .expect("chunked copy");
    let elapsed = started.elapsed();
    assert_eq!(stats.elements, 20_000);
    // 20 full LRANGE windows and the empty one that ends the list: one op each.
    assert_eq!(limiter.acquired(), 21);
    // The first op is free, each later one waits 1/per_sec s. Sleeps never end early, so half
    // the minimum cannot flake.
    let minimum = Duration::from_secs_f64(20.0 / per_sec as f64);
    assert!(elapsed >= minimum / 2, "{elapsed:?} < {minimum:?} / 2");
    assert_same(&src, &dst, 1);
}

#[test]
fn hash_of_200k_fields() {
    let (src, dst) = (RedisServer::start(), RedisServer::start());
    let mut rng = Rng::new(2);
    load(
        &mut src.conn(),
        variadic("HSET", b"big:hash", 200_000, |i, c| {
            let mut field = format!("field:{i}:").into_bytes();
            field.extend(rng.bytes(0, 4));
            c.arg(field).arg(value(&mut rng, i));
        }),
    );
    let stats = timed("copy hash", || copy_same(&src, &dst, b"big:hash", CHUNK));
    // HSCAN may repeat a field, never skip one.
    assert!(stats.elements >= 200_000, "{stats:?}");
    assert_same(&src, &dst, 1);
}

#[test]
fn set_of_100k_members_and_an_intset() {
    let (src, dst) = (RedisServer::start(), RedisServer::start());
    let mut rng = Rng::new(3);
    let mut con = src.conn();
    load(
        &mut con,
        variadic("SADD", b"big:set", 100_000, |i, c| {
            let mut member = format!("member:{i}:").into_bytes();
            member.extend(rng.bytes(0, 8));
            c.arg(member);
        }),
    );
    let _: () = q(
        &mut con,
        cmd("SADD").arg("intset").arg(&[-5i64, 0, 7, i64::MAX]),
    );
    let stats = copy_same(&src, &dst, b"big:set", CHUNK);
    assert!(stats.elements >= 100_000, "{stats:?}");
    copy_same(&src, &dst, b"intset", CHUNK);
    assert_same(&src, &dst, 2);
}

#[test]
fn zset_of_100k_members_with_fractional_negative_and_infinite_scores() {
    let (src, dst) = (RedisServer::start(), RedisServer::start());
    let mut rng = Rng::new(4);
    let mut con = src.conn();
    load(
        &mut con,
        variadic("ZADD", b"big:zset", 100_000, |i, c| {
            // Many equal scores, negatives, and doubles that need all 17 digits.
            let score = match i % 4 {
                0 => (rng.below(1000) as f64 - 500.0) / 4.0,
                1 => (rng.next() as i64 as f64) / 1e12,
                2 => -(i as f64) / 7.0,
                _ => 1.0 / (i as f64 + 3.0),
            };
            c.arg(score).arg(format!("m:{i}"));
        }),
    );
    let extremes = [
        ("inf", "plus-infinity"),
        ("-inf", "minus-infinity"),
        ("1e-300", "tiny"),
        ("-1.2345678901234567e-5", "small-negative"),
        ("12345678901234567", "huge"),
        ("0.1", "point-one"),
        ("-0", "negative-zero"),
    ];
    let mut add = cmd("ZADD");
    add.arg("big:zset");
    for (score, member) in extremes {
        add.arg(score).arg(member);
    }
    let _: () = q(&mut con, &add);
    let stats = copy_same(&src, &dst, b"big:zset", CHUNK);
    assert!(stats.elements >= 100_007, "{stats:?}");
    let mut tgt = dst.conn();
    for (_, member) in extremes {
        let a: String = q(&mut con, cmd("ZSCORE").arg("big:zset").arg(member));
        let b: String = q(&mut tgt, cmd("ZSCORE").arg("big:zset").arg(member));
        assert_eq!(a, b, "score text of {member}");
    }
    assert_same(&src, &dst, 1);
}

#[test]
fn strings_binary_5mb_empty_exact_multiple_and_integer() {
    let (src, dst) = (RedisServer::start(), RedisServer::start());
    let mut rng = Rng::new(5);
    let big: Vec<u8> = (0..5 * 1024 * 1024).map(|_| rng.byte()).collect();
    let mut con = src.conn();
    let _: () = q(&mut con, cmd("SET").arg("big:string").arg(&big));
    let _: () = q(&mut con, cmd("SET").arg("empty").arg(""));
    // Exactly two ranges of 10*64 bytes: the copy must stop at the empty third read.
    let _: () = q(&mut con, cmd("SET").arg("exact").arg(vec![0xffu8; 1280]));
    let _: () = q(
        &mut con,
        cmd("SET").arg("int").arg(-9_223_372_036_854_775_808i64),
    );
    let stats = timed("copy 5 MB string", || {
        copy_same(&src, &dst, b"big:string", CHUNK)
    });
    assert_eq!((stats.elements, stats.bytes), (1, big.len() as u64));
    let stats = copy_same(&src, &dst, b"empty", CHUNK);
    assert_eq!(
        (stats.elements, stats.bytes),
        (1, 0),
        "an empty string exists"
    );
    assert_eq!(copy_same(&src, &dst, b"exact", 10).bytes, 1280);
    copy_same(&src, &dst, b"int", 1);
    assert_same(&src, &dst, 4);
}

/// Stream IDs like the filler's: three entries per millisecond.
fn sid(i: u64) -> String {
    format!("{}-{}", 1_700_000_000_000 + i / 3, i % 3)
}

#[test]
fn stream_of_50k_entries_with_gaps_groups_and_pending_entries() {
    // An ElastiCache-like target: nothing here may need an admin command.
    let (src, dst) = (RedisServer::start(), RedisServer::elasticache_like());
    let mut con = src.conn();
    let key = b"big:stream";
    let n = 50_000u64;
    let mut rng = Rng::new(6);
    load(
        &mut con,
        (0..n).map(|i| {
            let mut c = cmd("XADD");
            c.arg(key).arg(sid(i)).arg("event").arg(format!("e{i}"));
            if i % 5 == 0 {
                // Repeated field names are kept as they are.
                c.arg(b"payload")
                    .arg(rng.bytes(0, 30))
                    .arg("event")
                    .arg("again");
            }
            c
        }),
    );
    // Read before any deletion, so its entries-read stays a number (reads across deleted
    // entries make the server forget it, as for g1 below).
    load(
        &mut con,
        [
            cmd("XGROUP")
                .arg("CREATE")
                .arg(key)
                .arg("g0")
                .arg("0")
                .clone(),
            cmd("XREADGROUP")
                .arg("GROUP")
                .arg("g0")
                .arg("early")
                .arg("COUNT")
                .arg(100)
                .arg("STREAMS")
                .arg(key)
                .arg(">")
                .clone(),
        ],
    );
    // Gaps: every 10th entry, and the last one so last-generated-id is past the last entry.
    load(
        &mut con,
        (0..n)
            .filter(|i| i % 10 == 7 || *i == n - 1)
            .map(|i| cmd("XDEL").arg(key).arg(sid(i)).clone()),
    );
    let xgroup = |args: &[&str]| {
        let mut c = cmd("XGROUP");
        c.arg(args[0]).arg(key).arg(&args[1..]);
        c
    };
    let read = |group: &str, consumer: &str, count: usize| {
        cmd("XREADGROUP")
            .arg("GROUP")
            .arg(group)
            .arg(consumer)
            .arg("COUNT")
            .arg(count)
            .arg("STREAMS")
            .arg(key)
            .arg(">")
            .clone()
    };
    let claim = |group: &str, consumer: &str, ids: &[String], extra: &[&str]| {
        cmd("XCLAIM")
            .arg(key)
            .arg(group)
            .arg(consumer)
            .arg(0)
            .arg(ids)
            .arg(extra)
            .arg("JUSTID")
            .clone()
    };
    load(
        &mut con,
        [
            xgroup(&["CREATE", "g1", "0"]),
            // A group created mid-stream: its entries-read is unknown (nil).
            xgroup(&["CREATE", "g2", &sid(20_000)]),
            xgroup(&["CREATE", "g3", "$"]),
            read("g1", "alice", 3000),
            read("g1", "bob", 2500),
            read("g2", "alice", 1200),
            xgroup(&["CREATECONSUMER", "g1", "carol"]),
            xgroup(&["CREATECONSUMER", "g3", "dave"]),
        ],
    );
    let ids = |range: std::ops::Range<u64>| -> Vec<String> {
        range.filter(|i| i % 10 != 7).map(sid).collect()
    };
    load(
        &mut con,
        [
            cmd("XACK").arg(key).arg("g1").arg(ids(0..500)).clone(),
            // Delivery counts above 1, an owner change, and an idle time to look for later.
            claim("g1", "bob", &ids(500..520), &["RETRYCOUNT", "7"]),
            claim("g1", "alice", &ids(3000..3010), &[]),
            claim("g1", "bob", &[sid(600)], &["IDLE", "600000"]),
            // Pending entries whose stream entries are gone: inside the stream, and past its
            // last live entry.
            cmd("XDEL").arg(key).arg(ids(1000..1100)).clone(),
            cmd("XDEL").arg(key).arg(ids(5400..5500)).clone(),
            read("g1", "alice", 100_000),
            cmd("XDEL").arg(key).arg(ids(n - 50..n - 1)).clone(),
        ],
    );
    let info = |con: &mut Connection, key: &[u8]| -> Value {
        q(
            con,
            cmd("XPENDING")
                .arg(key)
                .arg("g1")
                .arg("-")
                .arg("+")
                .arg(1_000_000),
        )
    };
    let before = info(&mut con, key);

    let stats = timed("copy stream", || copy_same(&src, &dst, key, CHUNK));
    let live: usize = q(&mut con, cmd("XLEN").arg(key));
    assert_eq!(stats.elements, live as u64);
    assert_same(&src, &dst, 1);
    assert_eq!(entries_read(&dst, key, "g0"), Value::Int(100));
    assert_eq!(entries_read(&dst, key, "g1"), Value::Nil);

    // The oracle leaves idle times out; they survive too (within the time the test took).
    let after = info(&mut dst.conn(), key);
    let idle_of = |pel: &Value, id: &str| -> i64 {
        let Value::Array(entries) = pel else {
            panic!("XPENDING reply {pel:?}")
        };
        entries
            .iter()
            .find_map(|e| match e {
                Value::Array(p) if p[0] == Value::BulkString(id.as_bytes().to_vec()) => {
                    i64::from_redis_value(p[2].clone()).ok()
                }
                _ => None,
            })
            .unwrap_or_else(|| panic!("{id} not pending"))
    };
    let (a, b) = (idle_of(&before, &sid(600)), idle_of(&after, &sid(600)));
    assert!(a >= 600_000 && b >= a, "idle {a} on source, {b} on target");
    assert!(b - a < 30_000, "idle {a} on source, {b} on target");
}

#[test]
fn small_chunks_split_pending_windows_of_a_stream() {
    // chunk 3 forces windows bounded by the pending lists rather than by the entries.
    let (src, dst) = (RedisServer::start(), RedisServer::start());
    let mut con = src.conn();
    let key = b"s";
    load(
        &mut con,
        (0..40u64).map(|i| cmd("XADD").arg(key).arg(sid(i)).arg("f").arg(i).clone()),
    );
    load(
        &mut con,
        [
            cmd("XGROUP")
                .arg("CREATE")
                .arg(key)
                .arg("a")
                .arg("0")
                .clone(),
            cmd("XGROUP")
                .arg("CREATE")
                .arg(key)
                .arg("b")
                .arg("0")
                .clone(),
            cmd("XREADGROUP")
                .arg("GROUP")
                .arg("a")
                .arg("x")
                .arg("STREAMS")
                .arg(key)
                .arg(">")
                .clone(),
            cmd("XREADGROUP")
                .arg("GROUP")
                .arg("b")
                .arg("y")
                .arg("COUNT")
                .arg(25)
                .arg("STREAMS")
                .arg(key)
                .arg(">")
                .clone(),
            // Dense deletions: stretches of pending IDs without entries.
            cmd("XDEL")
                .arg(key)
                .arg((5..30).map(sid).collect::<Vec<_>>())
                .clone(),
        ],
    );
    for chunk in [1, 2, 3, 7] {
        let stats = copy_same(&src, &dst, key, chunk);
        assert_eq!(stats.elements, 15, "chunk {chunk}");
        assert_same(&src, &dst, 1);
    }
}

#[test]
fn empty_streams_keep_their_ids_and_groups() {
    let (src, dst) = (RedisServer::start(), RedisServer::start());
    let mut con = src.conn();
    load(
        &mut con,
        [
            // Never had an entry: last-generated-id 0-0.
            cmd("XGROUP")
                .arg("CREATE")
                .arg("mk")
                .arg("g")
                .arg("$")
                .arg("MKSTREAM")
                .clone(),
            // Emptied by XDEL, no groups.
            cmd("XADD")
                .arg("emptied")
                .arg("5-1")
                .arg("f")
                .arg("v")
                .clone(),
            cmd("XDEL").arg("emptied").arg("5-1").clone(),
            // Emptied by XDEL while its entries were pending.
            cmd("XADD")
                .arg("pending")
                .arg("7-1")
                .arg("f")
                .arg("v")
                .clone(),
            cmd("XADD")
                .arg("pending")
                .arg("7-2")
                .arg("f")
                .arg("v")
                .clone(),
            cmd("XGROUP")
                .arg("CREATE")
                .arg("pending")
                .arg("g")
                .arg("0")
                .clone(),
            cmd("XREADGROUP")
                .arg("GROUP")
                .arg("g")
                .arg("c")
                .arg("STREAMS")
                .arg("pending")
                .arg(">")
                .clone(),
            cmd("XDEL").arg("pending").arg("7-1").arg("7-2").clone(),
        ],
    );
    for key in ["mk", "emptied", "pending"] {
        let stats = copy_same(&src, &dst, key.as_bytes(), CHUNK);
        assert_eq!(stats.elements, 0, "{key}");
    }
    let consumers: Value = q(
        &mut dst.conn(),
        cmd("XINFO").arg("CONSUMERS").arg("pending").arg("g"),
    );
    assert_eq!(first_pending(consumers), 2, "deleted entries stay pending");
    assert_same(&src, &dst, 3);
}

/// `entries-read` of `group` on the target, as `XINFO GROUPS` shows it.
fn entries_read(dst: &RedisServer, key: &[u8], group: &str) -> Value {
    let groups: Vec<Vec<Value>> = q(&mut dst.conn(), cmd("XINFO").arg("GROUPS").arg(key));
    let fields = groups
        .into_iter()
        .find(|g| g.get(1) == Some(&Value::BulkString(group.as_bytes().to_vec())))
        .unwrap_or_else(|| panic!("no group {group}"));
    let at = fields
        .iter()
        .position(|f| *f == Value::BulkString(b"entries-read".to_vec()))
        .expect("entries-read field");
    fields[at + 1].clone()
}

/// `pending` of the first consumer in an `XINFO CONSUMERS` reply.
fn first_pending(reply: Value) -> i64 {
    let Value::Array(consumers) = reply else {
        panic!("XINFO CONSUMERS reply {reply:?}")
    };
    let Some(Value::Array(fields)) = consumers.first() else {
        panic!("no consumer")
    };
    let at = fields
        .iter()
        .position(|f| *f == Value::BulkString(b"pending".to_vec()))
        .expect("pending field");
    i64::from_redis_value(fields[at + 1].clone()).expect("integer")
}

#[test]
fn binary_and_brace_key_names() {
    let (src, dst) = (RedisServer::start(), RedisServer::start());
    let all_bytes: Vec<u8> = (0..=255).collect();
    let names: Vec<Vec<u8>> = vec![
        all_bytes,
        b"\r\n\x00\xff".to_vec(),
        Vec::new(),
        b"a}b".to_vec(),
        b"{}x".to_vec(),
        b"open{only".to_vec(),
    ];
    let mut con = src.conn();
    for (i, name) in names.iter().enumerate() {
        let c = match i % 3 {
            0 => cmd("RPUSH").arg(name).arg(b"\x00").arg(b"x").clone(),
            1 => cmd("HSET").arg(name).arg(b"\xff").arg(b"\r\n").clone(),
            _ => cmd("SET").arg(name).arg(b"\x00\x01").clone(),
        };
        let _: () = q(&mut con, &c);
    }
    for name in &names {
        copy_same(&src, &dst, name, 2);
    }
    assert_same(&src, &dst, names.len());
}

#[test]
fn expiry_is_carried_and_replaced() {
    let (src, dst) = (RedisServer::start(), RedisServer::start());
    let (mut s, mut t) = (src.conn(), dst.conn());
    let at = now_ms() as i64 + 3_600_000;
    let _: () = q(&mut s, cmd("RPUSH").arg("with-ttl").arg(&["a", "b", "c"]));
    let _: () = q(&mut s, cmd("PEXPIREAT").arg("with-ttl").arg(at));
    let _: () = q(&mut s, cmd("SET").arg("persistent").arg("v"));
    // The target's old TTL must not survive a copy of a persistent key.
    let _: () = q(
        &mut t,
        cmd("SET")
            .arg("persistent")
            .arg("old")
            .arg("PX")
            .arg(60_000),
    );
    copy_same(&src, &dst, b"with-ttl", 2);
    copy_same(&src, &dst, b"persistent", CHUNK);
    let expiry = |con: &mut Connection, key: &str| -> i64 { q(con, cmd("PEXPIRETIME").arg(key)) };
    assert_eq!(expiry(&mut t, "with-ttl"), at);
    assert_eq!(expiry(&mut t, "persistent"), -1);
    assert_same(&src, &dst, 2);
}

#[test]
fn copy_replaces_a_different_key_on_the_target() {
    let (src, dst) = (RedisServer::start(), RedisServer::start());
    let (mut s, mut t) = (src.conn(), dst.conn());
    let _: () = q(&mut s, cmd("HSET").arg("h").arg(&["f1", "v1", "f2", "v2"]));
    let _: () = q(
        &mut t,
        cmd("HSET").arg("h").arg(&["f1", "old", "f3", "extra"]),
    );
    let _: () = q(&mut s, cmd("RPUSH").arg("l").arg(&["x", "y"]));
    let _: () = q(&mut t, cmd("SADD").arg("l").arg(&["not", "a", "list"]));
    copy_same(&src, &dst, b"h", CHUNK);
    copy_same(&src, &dst, b"l", CHUNK);
    assert_same(&src, &dst, 2);
}

#[test]
fn vanished_source_key_leaves_the_target_without_it() {
    let (src, dst) = (RedisServer::start(), RedisServer::start());
    let mut t = dst.conn();
    let types = [
        KeyType::String,
        KeyType::List,
        KeyType::Set,
        KeyType::ZSet,
        KeyType::Hash,
        KeyType::Stream,
    ];
    for ty in types {
        let _: () = q(&mut t, cmd("SET").arg("k").arg("stale"));
        let stats =
            copy(&src, &dst, b"k", b"k", ty, None, CHUNK).unwrap_or_else(|e| panic!("{ty:?}: {e}"));
        assert_eq!(stats.elements, 0, "{ty:?}");
        let size: i64 = q(&mut t, &cmd("DBSIZE"));
        assert_eq!(size, 0, "{ty:?}: target key and temp key are gone");
    }
}

#[test]
fn reads_from_a_frozen_copy_into_the_real_name() {
    let (src, dst) = (RedisServer::start(), RedisServer::start());
    let mut s = src.conn();
    let _: () = q(
        &mut s,
        cmd("ZADD").arg("frozen:z").arg(&["1.5", "a", "-2", "b"]),
    );
    let stats = copy(&src, &dst, b"frozen:z", b"z", KeyType::ZSet, None, CHUNK).expect("copy");
    assert_eq!(stats.elements, 2);
    let opts = OracleOptions::with_map(|db, key| (key == b"frozen:z").then(|| (db, b"z".to_vec())));
    compare(&src.url(), &dst.url(), &opts).assert_identical();
}

#[test]
fn wrong_type_fails_and_leaves_the_target_alone() {
    let (src, dst) = (RedisServer::start(), RedisServer::start());
    let _: () = q(&mut src.conn(), cmd("HSET").arg("k\n").arg(&["f", "v"]));
    let _: () = q(&mut dst.conn(), cmd("SET").arg("k\n").arg("before"));
    for ty in [KeyType::List, KeyType::Stream, KeyType::String] {
        let err = copy(&src, &dst, b"k\n", b"k\n", ty, None, CHUNK).expect_err("WRONGTYPE");
        assert!(matches!(err, ChunkedError::Source { .. }), "{ty:?}: {err}");
        let text = err.to_string();
        assert!(
            text.contains("\"k\\n\"") && text.contains("WRONGTYPE"),
            "{text}"
        );
        let mut t = dst.conn();
        let size: i64 = q(&mut t, &cmd("DBSIZE"));
        let old: String = q(&mut t, cmd("GET").arg("k\n"));
        assert_eq!((size, old.as_str()), (1, "before"), "{ty:?}");
    }
}

/// A one-node cluster owning every slot: RENAME across slots fails there with CROSSSLOT.
fn single_node_cluster() -> RedisServer {
    let node = RedisServer::start_with(ServerOptions {
        cluster: true,
        ..ServerOptions::default()
    });
    let mut con = node.conn();
    let _: () = q(
        &mut con,
        cmd("CLUSTER").arg("ADDSLOTSRANGE").arg(0).arg(16383),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let info: String = q(&mut con, cmd("CLUSTER").arg("INFO"));
        if info_field(&info, "cluster_state").as_deref() == Some("ok") {
            return node;
        }
        assert!(Instant::now() < deadline, "cluster not ok:\n{info}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn temp_key_shares_the_slot_on_a_cluster_target() {
    let (src, dst) = (RedisServer::start(), single_node_cluster());
    let names: [&[u8]; 4] = [b"{user:1}:events", b"plain", b"a}b", b""];
    let mut s = src.conn();
    for name in names {
        let _: () = q(&mut s, cmd("RPUSH").arg(name).arg(&["1", "2", "3"]));
        copy_same(&src, &dst, name, 2);
    }
    assert_same(&src, &dst, names.len());
}

#[test]
fn resp3_connections_copy_the_same() {
    let (src, dst) = (RedisServer::start(), RedisServer::start());
    let mut con = src.conn();
    load(
        &mut con,
        [
            cmd("RPUSH").arg("l").arg(&["a", "b", "c"]).clone(),
            cmd("HSET").arg("h").arg(&["f", "v", "g", "w"]).clone(),
            cmd("SADD").arg("s").arg(&["x", "y"]).clone(),
            cmd("ZADD").arg("z").arg(&["-inf", "a", "0.1", "b"]).clone(),
            cmd("SET").arg("str").arg("text").clone(),
            cmd("XADD").arg("x").arg("1-1").arg("f").arg("v").clone(),
            cmd("XADD").arg("x").arg("1-2").arg("f").arg("v").clone(),
            cmd("XGROUP")
                .arg("CREATE")
                .arg("x")
                .arg("g")
                .arg("0")
                .clone(),
            cmd("XREADGROUP")
                .arg("GROUP")
                .arg("g")
                .arg("c")
                .arg("COUNT")
                .arg(1)
                .arg("STREAMS")
                .arg("x")
                .arg(">")
                .clone(),
            cmd("XGROUP")
                .arg("CREATECONSUMER")
                .arg("x")
                .arg("g")
                .arg("idle")
                .clone(),
        ],
    );
    let resp3 = |s: &RedisServer| format!("{}?protocol=resp3", s.url());
    let keys = [
        ("l", KeyType::List),
        ("h", KeyType::Hash),
        ("s", KeyType::Set),
        ("z", KeyType::ZSet),
        ("str", KeyType::String),
        ("x", KeyType::Stream),
    ];
    for (key, ty) in keys {
        let key = key.as_bytes();
        copy_urls(&resp3(&src), &resp3(&dst), key, key, ty, None, 1)
            .unwrap_or_else(|e| panic!("{ty:?}: {e}"));
    }
    assert_same(&src, &dst, keys.len());
    assert_eq!(entries_read(&dst, b"x", "g"), Value::Int(1));
}
