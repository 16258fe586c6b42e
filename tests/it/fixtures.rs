//! Tests of the test fixtures themselves: servers, replicas, clusters, the filler, the oracle.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use redis::{Connection, FromRedisValue};

use crate::support::fill::{self, keys, now_ms};
use crate::support::oracle::escape;
use crate::support::server::info_field;
use crate::support::{
    Cluster, Dataset, DiffKind, OracleOptions, OracleReport, RedisServer, RespProxy, ServerOptions,
    compare, compare_nodes,
};

fn q<T: FromRedisValue>(con: &mut Connection, cmd: &mut redis::Cmd) -> T {
    cmd.query(con)
        .unwrap_or_else(|e| panic!("{:?} failed: {e}", cmd.args_iter().next()))
}

fn cmd(name: &str) -> redis::Cmd {
    redis::cmd(name)
}

type Rename<'a> = &'a dyn Fn(u32, &[u8]) -> Option<(u32, Vec<u8>)>;

/// Copies every key of `dbs` from `src_url` to `dst_url` with DUMP/RESTORE ABSTTL, through
/// `rename` (None = skip the key). Independent of ferry, so it can seed oracle tests.
fn copy_keys(src_url: &str, dst_url: &str, dbs: &[u32], rename: Rename<'_>) -> usize {
    let mut src = redis::Client::open(src_url)
        .unwrap()
        .get_connection()
        .unwrap();
    let mut dst = redis::Client::open(dst_url)
        .unwrap()
        .get_connection()
        .unwrap();
    let mut copied = 0;
    // Connections start in db 0; SELECT only on change, since cluster nodes refuse it.
    let (mut src_db, mut dst_db) = (0, 0);
    for &db in dbs {
        if db != src_db {
            let _: () = q(&mut src, cmd("SELECT").arg(db));
            src_db = db;
        }
        let mut all: Vec<Vec<u8>> = Vec::new();
        let mut cursor = 0u64;
        loop {
            let (next, batch): (u64, Vec<Vec<u8>>) =
                q(&mut src, cmd("SCAN").arg(cursor).arg("COUNT").arg(1000));
            all.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        for chunk in all.chunks(500) {
            let mut read = redis::pipe();
            for key in chunk {
                read.cmd("DUMP").arg(key).cmd("PEXPIRETIME").arg(key);
            }
            let replies: Vec<redis::Value> = read.query(&mut src).unwrap();
            let mut write = redis::pipe();
            for (key, pair) in chunk.iter().zip(replies.chunks(2)) {
                let redis::Value::BulkString(payload) = &pair[0] else {
                    continue; // expired since SCAN
                };
                let expire_at = i64::from_redis_value(pair[1].clone()).unwrap();
                let Some((tdb, tkey)) = rename(db, key) else {
                    continue;
                };
                if tdb != dst_db {
                    write.cmd("SELECT").arg(tdb).ignore();
                    dst_db = tdb;
                }
                write
                    .cmd("RESTORE")
                    .arg(&tkey)
                    .arg(expire_at.max(0))
                    .arg(payload.as_slice())
                    .arg("ABSTTL")
                    .arg("REPLACE")
                    .ignore();
                copied += 1;
            }
            if !write.is_empty() {
                write.exec(&mut dst).unwrap();
            }
        }
    }
    copied
}

fn identity(db: u32, key: &[u8]) -> Option<(u32, Vec<u8>)> {
    Some((db, key.to_vec()))
}

/// Keys of `ty` in `db`, sorted, optionally only those with (or without) a TTL.
fn keys_of_type(con: &mut Connection, db: u32, ty: &str, with_ttl: Option<bool>) -> Vec<Vec<u8>> {
    let _: () = q(con, cmd("SELECT").arg(db));
    let mut found = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, batch): (u64, Vec<Vec<u8>>) = q(
            con,
            cmd("SCAN")
                .arg(cursor)
                .arg("COUNT")
                .arg(1000)
                .arg("TYPE")
                .arg(ty),
        );
        for key in batch {
            let pttl: i64 = q(con, cmd("PTTL").arg(&key));
            if with_ttl.is_none_or(|want| want == (pttl > 0)) {
                found.push(key);
            }
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    found.sort();
    let _: () = q(con, cmd("SELECT").arg(0));
    found
}

fn is_gone(pid: u32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn plain_server_answers_and_is_killed_on_drop() {
    let server = RedisServer::start();
    let mut con = server.conn();
    let pong: String = q(&mut con, &mut cmd("PING"));
    assert_eq!(pong, "PONG");
    let _: () = q(&mut con, cmd("SET").arg(b"k\r\n\x00").arg(b"\xff"));
    let got: Vec<u8> = q(&mut con, cmd("GET").arg(b"k\r\n\x00"));
    assert_eq!(got, b"\xff");

    let mut db3 = server.conn_db(3);
    let _: () = q(&mut db3, cmd("SET").arg("only-in-3").arg(1));
    let in_db0: bool = q(&mut con, cmd("EXISTS").arg("only-in-3"));
    assert!(!in_db0, "url_db(3) must select db 3");

    let info = server.info("server");
    assert_eq!(
        info_field(&info, "process_id"),
        Some(server.pid().to_string())
    );
    assert_eq!(
        info_field(&info, "tcp_port"),
        Some(server.port().to_string())
    );
    assert_eq!(server.addr(), format!("127.0.0.1:{}", server.port()));
    assert_eq!(server.url(), format!("redis://127.0.0.1:{}", server.port()));
    let save: Vec<String> = q(&mut con, cmd("CONFIG").arg("GET").arg("save"));
    assert_eq!(save, ["save", ""]);
    let dir: Vec<String> = q(&mut con, cmd("CONFIG").arg("GET").arg("dir"));
    assert_eq!(Path::new(&dir[1]), server.dir().canonicalize().unwrap());

    let (pid, dir) = (server.pid(), server.dir().to_path_buf());
    drop(con);
    drop(db3);
    drop(server);
    assert!(is_gone(pid), "redis-server {pid} still running after drop");
    assert!(!dir.exists(), "temp dir {} not removed", dir.display());
}

#[test]
fn server_options_password_unix_socket_maxmemory() {
    let server = RedisServer::start_with(ServerOptions {
        password: Some("s3cret: pw/@".into()),
        unix_socket: true,
        maxmemory: Some(64 << 20),
        extra_config: vec!["maxmemory-policy allkeys-lru".into()],
        ..ServerOptions::default()
    });
    let mut con = server.conn();
    let mm: Vec<String> = q(&mut con, cmd("CONFIG").arg("GET").arg("maxmemory"));
    assert_eq!(mm[1], (64u64 << 20).to_string());
    let policy: Vec<String> = q(&mut con, cmd("CONFIG").arg("GET").arg("maxmemory-policy"));
    assert_eq!(policy[1], "allkeys-lru");

    let mut anon = redis::Client::open(format!("redis://{}", server.addr()))
        .unwrap()
        .get_connection()
        .unwrap();
    let err = cmd("PING").query::<String>(&mut anon).unwrap_err();
    assert_eq!(err.code(), Some("NOAUTH"), "{err}");

    let unix_url = server.unix_url().expect("unix socket requested");
    assert!(server.unix_socket_path().unwrap().exists());
    let mut via_socket = redis::Client::open(unix_url)
        .unwrap()
        .get_connection()
        .unwrap();
    let pong: String = q(&mut via_socket, &mut cmd("PING"));
    assert_eq!(pong, "PONG");
}

#[test]
fn elasticache_like_rejects_admin_commands_but_allows_monitor_scan_dump() {
    let server = RedisServer::elasticache_like();
    let mut con = server.conn();
    let disabled: &[&[&str]] = &[
        &["CONFIG", "GET", "maxmemory"],
        &["SYNC"],
        &["PSYNC", "?", "-1"],
        &["REPLICAOF", "127.0.0.1", "1"],
        &["SLAVEOF", "NO", "ONE"],
        &["BGSAVE"],
        &["SAVE"],
        &["DEBUG", "SLEEP", "0"],
        &["MIGRATE", "127.0.0.1", "1", "k", "0", "1000"],
    ];
    for argv in disabled {
        let mut c = cmd(argv[0]);
        for a in &argv[1..] {
            c.arg(*a);
        }
        let err = c.query::<redis::Value>(&mut con).unwrap_err();
        assert!(
            err.to_string().contains("unknown command"),
            "{argv:?} should be unknown, got: {err}"
        );
    }
    let info: Vec<Option<redis::Value>> = q(&mut con, cmd("COMMAND").arg("INFO").arg("CONFIG"));
    assert_eq!(info, [None], "COMMAND INFO CONFIG should be nil");

    let _: () = q(&mut con, cmd("SET").arg("a").arg("1"));
    let (_, keys): (u64, Vec<String>) = q(&mut con, cmd("SCAN").arg(0));
    assert_eq!(keys, ["a"]);
    let dump: Vec<u8> = q(&mut con, cmd("DUMP").arg("a"));
    assert!(!dump.is_empty());
    let exp: i64 = q(&mut con, cmd("PEXPIRETIME").arg("a"));
    assert_eq!(exp, -1);

    let stream = TcpStream::connect(server.addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    (&stream).write_all(b"MONITOR\r\n").unwrap();
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line, "+OK\r\n");
    let _: () = q(&mut con, cmd("SET").arg("monitored").arg("x"));
    let seen = (0..20).any(|_| {
        line.clear();
        reader.read_line(&mut line).unwrap() > 0 && line.contains(r#""SET" "monitored" "x""#)
    });
    assert!(seen, "MONITOR did not show the SET; last line {line:?}");
}

#[test]
fn replica_of_password_protected_primary_replicates_writes() {
    let primary = RedisServer::start_with(ServerOptions::with_password("pw"));
    let mut p = primary.conn();
    let _: () = q(&mut p, cmd("SET").arg("before").arg("sync"));
    let replica = RedisServer::replica_of(&primary);
    assert!(replica.url().contains(":pw@"));
    let mut r = replica.conn();
    let before: String = q(&mut r, cmd("GET").arg("before"));
    assert_eq!(before, "sync");

    let _: () = q(&mut p, cmd("SET").arg("after").arg(b"\x00\xff"));
    primary.wait_for_replicas(1, Duration::from_secs(5));
    let after: Vec<u8> = q(&mut r, cmd("GET").arg("after"));
    assert_eq!(after, b"\x00\xff");

    let info = replica.info("replication");
    assert_eq!(info_field(&info, "role").as_deref(), Some("slave"));
    assert_eq!(
        info_field(&info, "master_port"),
        Some(primary.port().to_string())
    );
    let err = cmd("SET").arg("x").arg(1).exec(&mut r).unwrap_err();
    assert_eq!(err.code(), Some("READONLY"), "{err}");
}

#[test]
fn cluster_routes_writes_to_all_three_masters_by_slot() {
    let cluster = Cluster::start();
    let mut con = cluster.cluster_conn();
    let n = 300;
    for i in 0..n {
        let _: () = cmd("SET")
            .arg(format!("key:{i}"))
            .arg(i)
            .query(&mut con)
            .unwrap();
    }
    let mut total = 0;
    for (index, node) in cluster.nodes().iter().enumerate() {
        let mut c = node.conn();
        let (first, last) = crate::support::cluster::SLOT_RANGES[index];
        let (_, keys): (u64, Vec<Vec<u8>>) = q(&mut c, cmd("SCAN").arg(0).arg("COUNT").arg(10_000));
        assert!(!keys.is_empty(), "node {index} got no keys");
        for key in &keys {
            let slot: u16 = q(&mut c, cmd("CLUSTER").arg("KEYSLOT").arg(key));
            assert!(
                (first..=last).contains(&slot),
                "{} (slot {slot}) on node {index}",
                escape(key)
            );
            assert_eq!(cluster.node_for_key(key).port(), node.port());
        }
        total += keys.len();
    }
    assert_eq!(total, n);
    let got: i64 = cmd("GET").arg("key:7").query(&mut con).unwrap();
    assert_eq!(got, 7);
}

#[test]
fn filler_produces_all_types_ttls_and_binary_keys() {
    let server = RedisServer::start();
    let dataset = Dataset::default();
    let report = fill::fill(&server, &dataset);
    eprintln!(
        "filled {} keys ({} commands) in {:.2?}",
        report.total_keys(),
        report.commands,
        report.elapsed
    );
    let mut con = server.conn();
    for &db in &dataset.dbs {
        let _: () = q(&mut con, cmd("SELECT").arg(db));
        let size: usize = q(&mut con, &mut cmd("DBSIZE"));
        assert_eq!(size, report.keys[&db], "db {db}");
        let mut types: BTreeMap<String, usize> = BTreeMap::new();
        let (mut with_ttl, mut min_ttl, mut binary) = (0, i64::MAX, 0);
        let mut cursor = 0u64;
        loop {
            let (next, batch): (u64, Vec<Vec<u8>>) =
                q(&mut con, cmd("SCAN").arg(cursor).arg("COUNT").arg(1000));
            let mut pipe = redis::pipe();
            for key in &batch {
                pipe.cmd("TYPE").arg(key).cmd("PTTL").arg(key);
                binary += usize::from(std::str::from_utf8(key).is_err());
            }
            let replies: Vec<(String, i64)> = if batch.is_empty() {
                Vec::new()
            } else {
                let flat: Vec<redis::Value> = pipe.query(&mut con).unwrap();
                flat.chunks(2)
                    .map(|p| {
                        (
                            String::from_redis_value(p[0].clone()).unwrap(),
                            i64::from_redis_value(p[1].clone()).unwrap(),
                        )
                    })
                    .collect()
            };
            for (ty, pttl) in replies {
                *types.entry(ty).or_default() += 1;
                if pttl >= 0 {
                    with_ttl += 1;
                    min_ttl = min_ttl.min(pttl);
                }
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        for ty in ["string", "list", "set", "zset", "hash", "stream"] {
            assert!(
                types.get(ty).copied().unwrap_or(0) >= 10,
                "db {db}: too few {ty}: {types:?}"
            );
        }
        assert_eq!(with_ttl, report.keys_with_ttl[&db], "db {db}");
        assert!(with_ttl > size / 10, "db {db}: only {with_ttl} TTLs");
        assert!(
            min_ttl > 55_000,
            "db {db}: a TTL of {min_ttl} ms is too short"
        );
        assert!(binary > 10, "db {db}: only {binary} non-UTF-8 keys");
    }

    let _: () = q(&mut con, cmd("SELECT").arg(0));
    let all_bytes: Vec<u8> = q(&mut con, cmd("GET").arg(keys::all_bytes()));
    assert_eq!(all_bytes, (0..=255u8).rev().collect::<Vec<_>>());
    let empty_key: Vec<u8> = q(&mut con, cmd("GET").arg(b""));
    assert!(!empty_key.is_empty());
    let empty_value: Vec<u8> = q(&mut con, cmd("GET").arg(keys::EMPTY_VALUE));
    assert!(empty_value.is_empty());
    let counter: i64 = q(&mut con, cmd("GET").arg(keys::COUNTER));
    assert_eq!(counter, 42);
    let sizes: Vec<usize> = redis::pipe()
        .cmd("LLEN")
        .arg(keys::BIG_LIST)
        .cmd("HLEN")
        .arg(keys::BIG_HASH)
        .cmd("SCARD")
        .arg(keys::BIG_SET)
        .cmd("ZCARD")
        .arg(keys::BIG_ZSET)
        .cmd("XLEN")
        .arg(keys::STREAM)
        .query(&mut con)
        .unwrap();
    assert_eq!(
        sizes,
        [
            dataset.big_list,
            dataset.big_hash,
            dataset.big_set,
            dataset.big_zset,
            dataset.stream_entries - 3
        ]
    );
    let pending: (usize, String, String, Vec<(String, usize)>) =
        q(&mut con, cmd("XPENDING").arg(keys::STREAM).arg("g1"));
    assert_eq!(pending.0, 13);
    assert_eq!(pending.3, [("alice".into(), 7), ("bob".into(), 6)]);
    let consumers: Vec<redis::Value> = q(
        &mut con,
        cmd("XINFO").arg("CONSUMERS").arg(keys::STREAM).arg("g1"),
    );
    assert_eq!(consumers.len(), 3, "alice, bob and carol");
    let emptied: usize = q(&mut con, cmd("XLEN").arg(keys::EMPTY_STREAM));
    assert_eq!(emptied, 0);
}

#[test]
fn filler_is_deterministic_and_fills_an_elasticache_like_server() {
    let dataset = Dataset::tiny().with_fixed_ttl_base();
    let restricted = RedisServer::elasticache_like();
    let plain = RedisServer::start();
    let a = fill::fill(&restricted, &dataset);
    let b = fill::fill(plain.url().as_str(), &dataset);
    assert_eq!(a.keys, b.keys);

    let report = compare(&restricted.url(), &plain.url(), &OracleOptions::default());
    report.assert_identical();
    assert_eq!(report.keys_compared, a.total_keys());
    assert_eq!(report.dbs, dataset.dbs);

    let other = RedisServer::start();
    fill::fill(
        &other,
        &Dataset {
            seed: dataset.seed + 1,
            ..dataset.clone()
        },
    );
    let report = compare(&plain.url(), &other.url(), &OracleOptions::default());
    assert!(
        report.diffs.len() > a.total_keys() / 2,
        "another seed should differ almost everywhere: {report}"
    );
}

#[test]
fn oracle_finds_no_diffs_after_dump_restore_copy() {
    let source = RedisServer::start();
    let target = RedisServer::start();
    let filled = fill::fill(&source, &Dataset::default());
    let copied = copy_keys(&source.url(), &target.url(), &[0, 1, 2], &identity);
    assert_eq!(copied, filled.total_keys());

    let report = compare(&source.url(), &target.url(), &OracleOptions::default());
    eprintln!("{report}");
    report.assert_identical();
    assert_eq!(report.keys_compared, filled.total_keys());
    assert_eq!(report.target_keys, filled.total_keys());
    assert_eq!(report.dbs, [0, 1, 2]);

    // Changes deep inside big keys sit past the first chunk the oracle reads.
    let mut t = target.conn();
    let _: () = q(&mut t, cmd("LSET").arg(keys::BIG_LIST).arg(15_000).arg("x"));
    let _: () = q(
        &mut t,
        cmd("HSET").arg(keys::BIG_HASH).arg("field:19999").arg("x"),
    );
    let _: () = q(
        &mut t,
        cmd("ZADD").arg(keys::BIG_ZSET).arg(1e9).arg("m:18000"),
    );
    let last: Vec<(String, Vec<Vec<u8>>)> = q(
        &mut t,
        cmd("XREVRANGE")
            .arg(keys::STREAM)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1),
    );
    let _: () = q(&mut t, cmd("XDEL").arg(keys::STREAM).arg(&last[0].0));
    let report = compare(&source.url(), &target.url(), &OracleOptions::default());
    assert_eq!(report.diffs.len(), 4, "{report}");
    let detail = |key: &[u8]| format!("{:?}", report.diffs_for(0, key));
    assert!(detail(keys::BIG_LIST).contains("index 15000"));
    assert!(detail(keys::BIG_HASH).contains("field:19999"));
    assert!(detail(keys::BIG_ZSET).contains("m:18000"));
    assert!(detail(keys::STREAM).contains("length"));
}

#[test]
#[should_panic(expected = "failed to start")]
fn bad_config_fails_with_the_server_log() {
    RedisServer::start_with(ServerOptions {
        extra_config: vec!["no-such-directive yes".into()],
        ..ServerOptions::default()
    });
}

#[test]
fn oracle_detects_each_kind_of_difference() {
    let source = RedisServer::start();
    let target = RedisServer::start();
    fill::fill(&source, &Dataset::tiny());
    copy_keys(&source.url(), &target.url(), &[0, 1, 2], &identity);
    compare(&source.url(), &target.url(), &OracleOptions::default()).assert_identical();

    let mut s = source.conn();
    let plain_strings = keys_of_type(&mut s, 0, "string", Some(false));
    let ttl_strings = keys_of_type(&mut s, 0, "string", Some(true));
    let db1_hashes = keys_of_type(&mut s, 1, "hash", Some(false));
    let db2_strings = keys_of_type(&mut s, 2, "string", Some(false));
    let (missing, retyped) = (&plain_strings[0], &plain_strings[1]);
    let (ttl_moved, ttl_removed) = (&ttl_strings[0], &ttl_strings[1]);
    let moved_db = &db1_hashes[0];
    let db2_changed = &db2_strings[0];
    let expire_at: i64 = q(&mut s, cmd("PEXPIRETIME").arg(ttl_moved));
    let pending: Vec<(String, String, i64, i64)> = q(
        &mut s,
        cmd("XPENDING")
            .arg(keys::STREAM)
            .arg("g1")
            .arg("-")
            .arg("+")
            .arg(1),
    );
    let first_entry: Vec<(String, Vec<Vec<u8>>)> = q(
        &mut s,
        cmd("XRANGE")
            .arg(keys::STREAM)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1),
    );

    let mut t = target.conn();
    let mut mutate = |c: &mut redis::Cmd| {
        let _: redis::Value = q(&mut t, c);
    };
    mutate(cmd("DEL").arg(missing));
    mutate(cmd("SET").arg(b"extra:\xff").arg("x"));
    mutate(cmd("DEL").arg(retyped));
    mutate(cmd("SADD").arg(retyped).arg("now a set"));
    mutate(cmd("LSET").arg(keys::BIG_LIST).arg(567).arg("changed"));
    mutate(cmd("HSET").arg(keys::SMALL_HASH).arg("f2").arg("changed"));
    mutate(cmd("PEXPIREAT").arg(ttl_moved).arg(expire_at + 10_000));
    mutate(cmd("PERSIST").arg(ttl_removed));
    mutate(
        cmd("XGROUP")
            .arg("SETID")
            .arg(keys::STREAM)
            .arg("g2")
            .arg(&first_entry[0].0),
    );
    mutate(cmd("XACK").arg(keys::STREAM).arg("g1").arg(&pending[0].0));
    mutate(cmd("SPOP").arg(keys::BIG_SET));
    mutate(cmd("ZINCRBY").arg(keys::BIG_ZSET).arg(0.5).arg("m:7"));
    mutate(cmd("SELECT").arg(1));
    mutate(cmd("MOVE").arg(moved_db).arg(7));
    mutate(cmd("SELECT").arg(2));
    mutate(cmd("APPEND").arg(db2_changed).arg("!"));

    let report = compare(&source.url(), &target.url(), &OracleOptions::default());
    eprintln!("{report}");
    for d in &report.diffs {
        eprintln!("  {d}");
    }
    let value_detail = |db: u32, key: &[u8]| -> String {
        match report.diffs_for(db, key).as_slice() {
            [DiffKind::Value { detail }] => detail.clone(),
            other => panic!("expected one value diff for {}, got {other:?}", escape(key)),
        }
    };
    assert_eq!(report.diffs_for(0, missing), [&DiffKind::MissingOnTarget]);
    assert_eq!(
        report.diffs_for(0, b"extra:\xff"),
        [&DiffKind::ExtraOnTarget]
    );
    assert_eq!(
        report.diffs_for(0, retyped),
        [&DiffKind::Type {
            source: "string".into(),
            target: "set".into()
        }]
    );
    assert!(value_detail(0, keys::BIG_LIST).contains("index 567"));
    assert!(value_detail(0, keys::SMALL_HASH).contains("\"f2\""));
    assert_eq!(
        report.diffs_for(0, ttl_moved),
        [&DiffKind::Ttl {
            source_ms: expire_at,
            target_ms: expire_at + 10_000
        }]
    );
    assert!(matches!(
        report.diffs_for(0, ttl_removed).as_slice(),
        [DiffKind::Ttl { source_ms, target_ms: -1 }] if *source_ms > 0
    ));
    let stream = value_detail(0, keys::STREAM);
    assert!(
        stream.contains("group \"g2\" last-delivered-id"),
        "{stream}"
    );
    assert!(stream.contains("group \"g1\" pending 13 vs 12"), "{stream}");
    let set = value_detail(0, keys::BIG_SET);
    assert!(set.contains("members only on source"), "{set}");
    assert!(value_detail(0, keys::BIG_ZSET).contains("\"m:7\""));
    assert_eq!(report.diffs_for(1, moved_db), [&DiffKind::MissingOnTarget]);
    assert_eq!(report.diffs_for(7, moved_db), [&DiffKind::ExtraOnTarget]);
    assert!(value_detail(2, db2_changed).starts_with("string"));
    assert_eq!(report.diffs.len(), 13, "no false positives: {report}");
    assert!(report.dbs.contains(&7));

    let panic = std::panic::catch_unwind(|| report.assert_identical()).unwrap_err();
    let msg = panic.downcast_ref::<String>().expect("formatted panic");
    assert!(msg.contains("13 differences"), "{msg}");
    assert!(
        msg.contains(r#"db0 "extra:\xff": extra on target"#),
        "{msg}"
    );
}

#[test]
fn oracle_tolerates_keys_about_to_expire_but_not_real_ttl_gaps() {
    let source = RedisServer::start();
    let target = RedisServer::start();
    let (mut s, mut t) = (source.conn(), target.conn());
    let base = now_ms() as i64 + 600_000;
    for con in [&mut s, &mut t] {
        let _: () = q(con, cmd("SET").arg("same").arg("v"));
        let _: () = q(
            con,
            cmd("SET").arg("gone-on-both").arg("v").arg("PX").arg(1),
        );
    }
    let _: () = q(
        &mut s,
        cmd("SET")
            .arg("expiring-source-only")
            .arg("v")
            .arg("PX")
            .arg(60),
    );
    let _: () = q(
        &mut t,
        cmd("SET")
            .arg("expiring-target-only")
            .arg("v")
            .arg("PX")
            .arg(60),
    );
    let _: () = q(
        &mut s,
        cmd("SET").arg("close-ttl").arg("v").arg("PXAT").arg(base),
    );
    let _: () = q(
        &mut t,
        cmd("SET")
            .arg("close-ttl")
            .arg("v")
            .arg("PXAT")
            .arg(base + 80),
    );
    let _: () = q(
        &mut s,
        cmd("SET").arg("far-ttl").arg("v").arg("PXAT").arg(base),
    );
    let _: () = q(
        &mut t,
        cmd("SET")
            .arg("far-ttl")
            .arg("v")
            .arg("PXAT")
            .arg(base + 150),
    );
    let _: () = q(
        &mut s,
        cmd("SET")
            .arg("lasting-source-only")
            .arg("v")
            .arg("PX")
            .arg(60_000),
    );
    std::thread::sleep(Duration::from_millis(5));

    let report = compare(&source.url(), &target.url(), &OracleOptions::default());
    assert_eq!(report.diffs.len(), 2, "{report}: {:?}", report.diffs);
    assert_eq!(
        report.diffs_for(0, b"far-ttl"),
        [&DiffKind::Ttl {
            source_ms: base,
            target_ms: base + 150
        }]
    );
    assert_eq!(
        report.diffs_for(0, b"lasting-source-only"),
        [&DiffKind::MissingOnTarget]
    );

    let lenient = OracleOptions {
        ttl_tolerance_ms: 200,
        ..OracleOptions::default()
    };
    let report = compare(&source.url(), &target.url(), &lenient);
    assert_eq!(report.diffs.len(), 1, "{report}");
}

#[test]
fn oracle_map_option_follows_a_prefix_and_db_rename() {
    let source = RedisServer::start();
    let target = RedisServer::start();
    let filled = fill::fill(
        &source,
        &Dataset {
            dbs: vec![0],
            ..Dataset::tiny()
        },
    );
    let rename = |db: u32, key: &[u8]| -> Option<(u32, Vec<u8>)> {
        if key.starts_with(b"bin:") {
            return None;
        }
        Some((db + 4, [b"moved:".as_slice(), key].concat()))
    };
    let copied = copy_keys(&source.url(), &target.url(), &[0], &rename);
    assert!(copied < filled.total_keys() && copied > filled.total_keys() / 2);

    let opts = OracleOptions::with_map(rename);
    let report = compare(&source.url(), &target.url(), &opts);
    report.assert_identical();
    assert_eq!(report.keys_compared, copied);
    assert_eq!(report.dbs, [0, 4]);

    let unmapped = compare(&source.url(), &target.url(), &OracleOptions::default());
    let count = |r: &OracleReport, k: &DiffKind| r.diffs.iter().filter(|d| &d.kind == k).count();
    assert_eq!(
        count(&unmapped, &DiffKind::MissingOnTarget),
        filled.total_keys()
    );
    assert_eq!(count(&unmapped, &DiffKind::ExtraOnTarget), copied);

    // A key the map says is not migrated must not show up on the target.
    let mut s = source.conn();
    let skipped = keys_of_type(&mut s, 0, "string", None)
        .into_iter()
        .find(|k| k.starts_with(b"bin:"))
        .expect("filler makes bin: strings");
    copy_keys(&source.url(), &target.url(), &[0], &|db, key| {
        (key == skipped.as_slice()).then(|| (db, key.to_vec()))
    });
    let report = compare(&source.url(), &target.url(), &opts);
    assert_eq!(report.diffs.len(), 1, "{report}");
    assert_eq!(report.diffs_for(0, &skipped), [&DiffKind::ExtraOnTarget]);
}

#[test]
fn oracle_compares_a_cluster_with_a_standalone_copy() {
    let cluster = Cluster::start();
    let dataset = Dataset {
        dbs: vec![0],
        ..Dataset::tiny()
    };
    let filled = fill::fill_cluster(&cluster, &dataset);
    for node in cluster.nodes() {
        let mut c = node.conn();
        let size: usize = q(&mut c, &mut cmd("DBSIZE"));
        assert!(size > 0, "every master holds some keys");
    }
    let standalone = RedisServer::start();
    let copied: usize = cluster
        .urls()
        .iter()
        .map(|url| copy_keys(url, &standalone.url(), &[0], &identity))
        .sum();
    assert_eq!(copied, filled.total_keys());

    let started = Instant::now();
    let report = compare_nodes(
        &cluster.urls(),
        &[standalone.url()],
        &OracleOptions::default(),
    );
    report.assert_identical();
    assert_eq!(report.keys_compared, filled.total_keys());
    let back = compare_nodes(
        &[standalone.url()],
        &cluster.urls(),
        &OracleOptions::default(),
    );
    back.assert_identical();
    eprintln!("cluster comparisons took {:.2?}", started.elapsed());

    let mut con = cluster.cluster_conn();
    let _: () = cmd("HSET")
        .arg(keys::SMALL_HASH)
        .arg("f0")
        .arg("changed")
        .query(&mut con)
        .unwrap();
    let report = compare_nodes(
        &[standalone.url()],
        &cluster.urls(),
        &OracleOptions::default(),
    );
    assert_eq!(report.diffs.len(), 1, "{report}");
    assert!(matches!(
        report.diffs_for(0, keys::SMALL_HASH).as_slice(),
        [DiffKind::Value { .. }]
    ));
}

#[test]
fn resp_proxy_rejects_restore_and_keeps_pipelined_reply_order() {
    let server = RedisServer::start();
    let proxy = RespProxy::rejecting_restore(&server);
    let mut con = redis::Client::open(proxy.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let replies: Vec<redis::Value> = redis::pipe()
        .cmd("SET")
        .arg("a")
        .arg(vec![0u8, b'\r', b'\n', 255])
        .cmd("RESTORE")
        .arg("b")
        .arg(0)
        .arg("any payload")
        .cmd("GET")
        .arg("a")
        .cmd("HSET")
        .arg("h")
        .arg("f")
        .arg("v")
        .cmd("HGETALL")
        .arg("h")
        .cmd("restore")
        .arg("c")
        .arg(0)
        .arg("x")
        .cmd("EXISTS")
        .arg("b")
        .ignore_errors()
        .query(&mut con)
        .unwrap();
    let err = |v: &redis::Value| match v {
        redis::Value::ServerError(e) => e.details().unwrap_or_default().to_string(),
        other => panic!("expected an error, got {other:?}"),
    };
    assert_eq!(replies.len(), 7, "{replies:?}");
    assert_eq!(replies[0], redis::Value::Okay);
    assert_eq!(
        err(&replies[1]),
        "DUMP payload version or checksum are wrong"
    );
    assert_eq!(
        replies[2],
        redis::Value::BulkString(vec![0u8, b'\r', b'\n', 255])
    );
    assert_eq!(replies[3], redis::Value::Int(1));
    assert_eq!(
        err(&replies[5]),
        "DUMP payload version or checksum are wrong"
    );
    assert_eq!(replies[6], redis::Value::Int(0));
    assert_eq!(proxy.rejected(), 2);
    // The redis-rs handshake may add requests of its own; the pipeline's five are there.
    assert!(proxy.forwarded() >= 5);
}
