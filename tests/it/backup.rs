//! `ferry backup` end to end: an ElastiCache-like source written to an RDB file that a stock
//! `redis-server` loads equal to the source (by the oracle); failures leave no file behind; the
//! CRC-64 matches what the server puts in its `DUMP` trailers.

use std::path::Path;
use std::process::Output;

use ferry::backup::rdb::{Payload, crc64};

use crate::cli::run_ferry;
use crate::support::server::free_port;
use crate::support::{Dataset, OracleOptions, RedisServer, ServerOptions, compare, fill};

/// All six types, TTLs, binary keys and values, 3 dbs, and big collections (a list and a hash
/// far past any listpack limit, so their payloads are quicklists and hashtables).
fn dataset() -> Dataset {
    Dataset {
        dbs: vec![0, 1, 2],
        keys_per_db: 3000,
        big_list: 200_000,
        big_hash: 100_000,
        big_set: 20_000,
        big_zset: 20_000,
        stream_entries: 5000,
        ..Dataset::default()
    }
}

const LIBRARY: &str =
    "#!lua name=ferrylib\nredis.register_function('ferry_ping', function() return 'pong' end)";

fn backup(source_url: &str, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "backup",
        "--source",
        source_url,
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    run_ferry(&args)
}

fn tmp_of(out: &Path) -> std::path::PathBuf {
    let mut name = out.file_name().unwrap().to_os_string();
    name.push(".tmp");
    out.with_file_name(name)
}

#[test]
fn backup_of_an_elasticache_like_source_loads_equal_in_a_stock_server() {
    let source = RedisServer::elasticache_like();
    let filled = fill(&source, &dataset());
    let _: String = redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg(LIBRARY)
        .query(&mut source.conn())
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("final.rdb");
    let run = backup(&source.url(), &out, &["--batch", "32"]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "ferry backup failed: {stderr}");
    let summary = format!("Backup done: {} keys", filled.total_keys());
    assert!(stderr.contains(&summary), "{stderr}");
    assert!(stderr.contains("final.rdb"), "{stderr}");
    assert!(!tmp_of(&out).exists());
    let head = std::fs::read(&out).unwrap();
    assert!(head.starts_with(b"REDIS0010"), "{:?}", &head[..9]);

    let restored = RedisServer::start_with_rdb(&out);
    compare(&source.url(), &restored.url(), &OracleOptions::default()).assert_identical();
    let pong: String = redis::cmd("FCALL")
        .arg("ferry_ping")
        .arg(0)
        .query(&mut restored.conn())
        .unwrap();
    assert_eq!(pong, "pong");
}

#[test]
fn backup_of_selected_dbs_holds_only_those() {
    let source = RedisServer::start();
    fill(&source, &Dataset::tiny());
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("db1.rdb");
    let run = backup(&source.url(), &out, &["--db", "1", "--workers", "2"]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let restored = RedisServer::start_with_rdb(&out);
    let keyspace = restored.info("keyspace");
    assert!(keyspace.contains("db1:"), "{keyspace}");
    assert!(
        !keyspace.contains("db0:") && !keyspace.contains("db2:"),
        "{keyspace}"
    );
    compare(
        &source.url(),
        &restored.url(),
        &OracleOptions::with_dbs([1]),
    )
    .assert_identical();
}

fn assert_failed_cleanly(run: &Output, out: &Path, contains: &str, secret: Option<&str>) {
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(2), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let lines: Vec<_> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {stderr}");
    assert!(lines[0].starts_with("ferry: error: "), "{stderr}");
    assert!(
        lines[0].contains(contains),
        "expected {contains:?} in: {stderr}"
    );
    if let Some(secret) = secret {
        assert!(!stderr.contains(secret), "password leaked: {stderr}");
    }
    assert!(!out.exists(), "{} exists after a failure", out.display());
    assert!(!tmp_of(out).exists(), "a .tmp was left after a failure");
}

#[test]
fn backup_failures_are_one_line_and_leave_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("never.rdb");

    let url = format!("redis://:hunter2@127.0.0.1:{}", free_port());
    let run = backup(&url, &out, &[]);
    assert_failed_cleanly(
        &run,
        &out,
        "cannot connect to redis://:***@127.0.0.1",
        Some("hunter2"),
    );

    let server = RedisServer::start_with(ServerOptions {
        password: Some("right-pw".into()),
        elasticache_like: true,
        ..ServerOptions::default()
    });
    fill(&server, &Dataset::tiny());
    let url = format!("redis://:hunter2@127.0.0.1:{}", server.port());
    let run = backup(&url, &out, &[]);
    assert_failed_cleanly(&run, &out, "authentication failed", Some("hunter2"));

    // This one fails after the file was started: the .tmp must go too.
    let run = backup(&server.url(), &out, &["--db", "0", "--db", "99"]);
    assert_failed_cleanly(&run, &out, "SELECT", Some("right-pw"));

    let missing_dir = dir.path().join("no-such-dir").join("x.rdb");
    let run = backup(&server.url(), &missing_dir, &[]);
    assert_failed_cleanly(&run, &missing_dir, "cannot write", Some("right-pw"));
}

#[test]
fn crc64_matches_the_servers_dump_trailers() {
    let server = RedisServer::start();
    let mut con = server.conn();
    let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    redis::pipe()
        .cmd("SET")
        .arg("s")
        .arg("hello")
        .cmd("SET")
        .arg("big")
        .arg(big.as_slice())
        .cmd("RPUSH")
        .arg("l")
        .arg(&["a", "b", "c"])
        .cmd("HSET")
        .arg("h")
        .arg("f")
        .arg("v")
        .cmd("SADD")
        .arg("set")
        .arg(&[1, 2, 3])
        .cmd("ZADD")
        .arg("z")
        .arg(1.5)
        .arg("m")
        .cmd("XADD")
        .arg("st")
        .arg("*")
        .arg("f")
        .arg("v")
        .query::<()>(&mut con)
        .unwrap();
    for key in ["s", "big", "l", "h", "set", "z", "st"] {
        let p: Vec<u8> = redis::cmd("DUMP").arg(key).query(&mut con).unwrap();
        let payload = Payload::parse(&p).unwrap();
        assert_eq!(payload.version, 10, "{key}");
        let trailer = u64::from_le_bytes(p[p.len() - 8..].try_into().unwrap());
        assert_eq!(crc64(0, &p[..p.len() - 8]), trailer, "{key}");
        payload.verify().unwrap();
    }
}
