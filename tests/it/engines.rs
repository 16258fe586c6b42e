//! The engine matrix against real servers: what each Redis / Valkey version does that ferry
//! relies on (docs/redis-behaviour.md §16, and the "Other engines" notes of §1–§4, §9–§12 and
//! §14). Each test runs every engine and asserts what was observed, so it documents the
//! behaviour and guards it; a failure lists every engine that differs.
//!
//! The servers come from `make servers` (tests/it/support/engines.rs); these tests are ignored
//! by a plain `cargo test` and run by `make test-engines`, which fails, naming the server,
//! when one is missing. Run with `--nocapture` to see the observations.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ferry::capture::{Peer, parse_line};

use crate::support::server::info_field;
use crate::support::workload::{self, WorkloadOptions};
use crate::support::{
    Dataset, Engine, Feature, OracleOptions, RedisServer, ServerOptions, compare, fill,
};

/// A RESP2 reply, read off the socket as is.
#[derive(Debug, Clone, PartialEq)]
enum Reply {
    Status(Vec<u8>),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

impl Reply {
    fn is_error(&self) -> bool {
        matches!(self, Reply::Error(_))
    }

    fn bulk(&self) -> &[u8] {
        match self {
            Reply::Bulk(Some(b)) => b,
            other => panic!("expected a bulk string, got {}", other.brief()),
        }
    }

    fn text(&self) -> String {
        match self {
            Reply::Status(s) => String::from_utf8_lossy(s).into_owned(),
            Reply::Bulk(Some(b)) => String::from_utf8_lossy(b).into_owned(),
            other => panic!("expected text, got {}", other.brief()),
        }
    }

    /// One line for tables and messages: `OK`, `(error) …`, `(array of 3)`.
    fn brief(&self) -> String {
        match self {
            Reply::Status(s) => String::from_utf8_lossy(s).into_owned(),
            Reply::Error(e) => format!("(error) {e}"),
            Reply::Int(i) => format!("(integer) {i}"),
            Reply::Bulk(None) | Reply::Array(None) => "(nil)".into(),
            Reply::Bulk(Some(b)) => {
                let shown: String = b.escape_ascii().to_string().chars().take(100).collect();
                format!("\"{shown}\"")
            }
            Reply::Array(Some(items)) => format!("(array of {})", items.len()),
        }
    }
}

/// A bare RESP2 connection: exactly the commands a test sends reach the server (the redis crate
/// would add its own `CLIENT SETINFO`), and replies come back raw.
struct Raw<S: Read + Write> {
    writer: S,
    reader: BufReader<S>,
}

impl Raw<TcpStream> {
    fn tcp(server: &RedisServer) -> Self {
        let stream = TcpStream::connect(server.addr()).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Raw {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        }
    }

    fn local_port(&self) -> u16 {
        self.writer.local_addr().unwrap().port()
    }
}

impl Raw<UnixStream> {
    fn unix(server: &RedisServer) -> Self {
        let path = server.unix_socket_path().expect("started with unix_socket");
        let stream = UnixStream::connect(path).expect("connect unix socket");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Raw {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        }
    }
}

impl<S: Read + Write> Raw<S> {
    fn send(&mut self, args: &[&[u8]]) {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
        self.writer.write_all(&out).expect("send");
    }

    fn cmd(&mut self, args: &[&[u8]]) -> Reply {
        self.send(args);
        self.read()
    }

    /// A command given as words (no spaces inside arguments).
    fn words(&mut self, line: &str) -> Reply {
        let args: Vec<&[u8]> = line.split_whitespace().map(str::as_bytes).collect();
        self.cmd(&args)
    }

    fn read_line(&mut self) -> Vec<u8> {
        let mut line = Vec::new();
        self.reader.read_until(b'\n', &mut line).expect("read");
        assert!(line.ends_with(b"\r\n"), "truncated reply: {line:?}");
        line.truncate(line.len() - 2);
        line
    }

    fn read(&mut self) -> Reply {
        let line = self.read_line();
        let rest = || String::from_utf8_lossy(&line[1..]).into_owned();
        match line.first() {
            Some(b'+') => Reply::Status(line[1..].to_vec()),
            Some(b'-') => Reply::Error(rest()),
            Some(b':') => Reply::Int(rest().parse().expect("integer reply")),
            Some(b'$') => {
                let len: i64 = rest().parse().expect("bulk length");
                if len < 0 {
                    return Reply::Bulk(None);
                }
                let mut buf = vec![0; len as usize + 2];
                self.reader.read_exact(&mut buf).expect("read bulk");
                buf.truncate(len as usize);
                Reply::Bulk(Some(buf))
            }
            Some(b'*') => {
                let len: i64 = rest().parse().expect("array length");
                if len < 0 {
                    return Reply::Array(None);
                }
                Reply::Array(Some((0..len).map(|_| self.read()).collect()))
            }
            _ => panic!("not a RESP2 reply: {:?}", String::from_utf8_lossy(&line)),
        }
    }
}

fn start(engine: Engine) -> RedisServer {
    RedisServer::start_engine(engine, ServerOptions::default())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// CRC-64 as Redis computes it for `DUMP` trailers (Jones, reflected, init 0, no final xor).
fn crc64(data: &[u8]) -> u64 {
    const POLY: u64 = 0x95AC_9329_AC4B_C9B5;
    let mut crc = 0u64;
    for &b in data {
        crc ^= u64::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ POLY
            } else {
                crc >> 1
            };
        }
    }
    crc
}

/// The RDB version of a `DUMP` payload: `[type][value…][version u16 LE][CRC-64 8 B]`.
fn payload_rdb_version(payload: &[u8]) -> u16 {
    assert!(payload.len() >= 10, "payload too short: {payload:?}");
    let at = payload.len() - 10;
    u16::from_le_bytes([payload[at], payload[at + 1]])
}

/// `payload` claiming RDB version `version`, with a CRC that matches.
fn restamp(payload: &[u8], version: u16) -> Vec<u8> {
    let mut out = payload[..payload.len() - 10].to_vec();
    out.extend_from_slice(&version.to_le_bytes());
    let crc = crc64(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Runs `observe` on every engine, each in its own thread with its own servers, prints each
/// observation (`show`, seen with `--nocapture`), then `check`s them all and fails once with
/// every engine's complaint.
fn each_engine<T: Send + 'static>(
    what: &str,
    observe: fn(Engine) -> Result<T, String>,
    show: fn(&T) -> String,
    check: fn(Engine, &T) -> Result<(), String>,
) {
    let handles: Vec<_> = Engine::ALL
        .into_iter()
        .map(|engine| (engine, std::thread::spawn(move || observe(engine))))
        .collect();
    let mut failures = Vec::new();
    for (engine, handle) in handles {
        match handle.join() {
            Ok(Ok(value)) => {
                eprintln!("== {what}: {engine}\n{}", show(&value));
                if let Err(why) = check(engine, &value) {
                    failures.push(format!("{engine}: {why}"));
                }
            }
            Ok(Err(why)) => failures.push(format!("{engine}: {why}")),
            Err(panic) => {
                let why = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "panicked".into());
                failures.push(format!("{engine}: {why}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{what}: {} of {} engines differ from what is expected:\n{}",
        failures.len(),
        Engine::ALL.len(),
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// Versions

/// `INFO server`: the version fields, as they were read.
struct Version {
    redis_version: String,
    valkey_version: Option<String>,
    server_name: Option<String>,
}

#[test]
#[ignore = "needs make servers; run make test-engines"]
fn each_engine_starts_and_reports_its_version() {
    each_engine(
        "INFO server",
        |engine| {
            let info = start(engine).info("server");
            Ok(Version {
                redis_version: info_field(&info, "redis_version").unwrap_or_default(),
                valkey_version: info_field(&info, "valkey_version"),
                server_name: info_field(&info, "server_name"),
            })
        },
        |v| {
            format!(
                "redis_version:{} valkey_version:{} server_name:{}",
                v.redis_version,
                v.valkey_version.as_deref().unwrap_or("-"),
                v.server_name.as_deref().unwrap_or("-")
            )
        },
        |engine, v| {
            let redis_ok = if engine == Engine::Redis70 {
                v.redis_version.starts_with("7.0.")
            } else {
                v.redis_version == engine.redis_version()
            };
            if !redis_ok {
                return Err(format!(
                    "redis_version:{}, expected {}",
                    v.redis_version,
                    engine.redis_version()
                ));
            }
            // Valkey says so twice: its own version, and `server_name:valkey`.
            let valkey = engine.is_valkey().then(|| engine.version().to_string());
            if v.valkey_version != valkey {
                return Err(format!(
                    "valkey_version {:?}, expected {valkey:?}",
                    v.valkey_version
                ));
            }
            Ok(())
        },
    );
}

/// The fixtures' variants on every engine: ElastiCache-like (only the commands the version has
/// are renamed away), cluster mode (the bus on `port + 10000` before 7.0), a password.
#[test]
#[ignore = "needs make servers; run make test-engines"]
fn every_engine_runs_the_fixture_variants() {
    each_engine(
        "ElastiCache-like, cluster and password variants",
        |engine| {
            let mut seen = Vec::new();
            let ec = RedisServer::start_engine(engine, ServerOptions::elasticache_like());
            let mut c = Raw::tcp(&ec);
            for line in ["CONFIG GET maxmemory", "SYNC", "SET k v", "DUMP k"] {
                seen.push((line, c.words(line)));
            }
            let mut mon = Raw::tcp(&ec);
            seen.push(("MONITOR (ElastiCache-like)", mon.words("MONITOR")));

            let node = RedisServer::start_engine(
                engine,
                ServerOptions {
                    cluster: true,
                    ..ServerOptions::default()
                },
            );
            let info = Raw::tcp(&node).words("CLUSTER INFO");
            let enabled = info_field(&node.info("cluster"), "cluster_enabled");
            seen.push((
                "cluster_enabled",
                Reply::Status(enabled.unwrap_or_default().into_bytes()),
            ));
            seen.push(("CLUSTER INFO", info));

            let pw = RedisServer::start_engine(engine, ServerOptions::with_password("p w\"d"));
            let mut c = Raw::tcp(&pw);
            seen.push(("GET k (no AUTH)", c.words("GET k")));
            seen.push(("AUTH", c.cmd(&[b"AUTH", b"p w\"d"])));
            Ok(seen)
        },
        |seen| {
            let lines: Vec<String> = seen
                .iter()
                .map(|(what, reply)| format!("    {what:<28} {}", reply.brief()))
                .collect();
            lines.join("\n")
        },
        |_, seen| {
            let get = |what: &str| &seen.iter().find(|(w, _)| *w == what).unwrap().1;
            for renamed in ["CONFIG GET maxmemory", "SYNC"] {
                match get(renamed) {
                    Reply::Error(e) if e.starts_with("ERR unknown command") => {}
                    other => return Err(format!("{renamed}: {}", other.brief())),
                }
            }
            let expect_ok = ["SET k v", "MONITOR (ElastiCache-like)", "AUTH"];
            if let Some(what) = expect_ok
                .iter()
                .find(|w| *get(w) != Reply::Status(b"OK".to_vec()))
            {
                return Err(format!("{what}: {}", get(what).brief()));
            }
            if get("cluster_enabled").text() != "1" || get("CLUSTER INFO").is_error() {
                return Err(format!("cluster mode: {}", get("CLUSTER INFO").brief()));
            }
            match get("GET k (no AUTH)") {
                Reply::Error(e) if e.starts_with("NOAUTH") => Ok(()),
                other => Err(format!("GET without AUTH: {}", other.brief())),
            }
        },
    );
}

/// `make test-engines` sets `FERRY_ENGINES=1`: then every engine must be built, even if the
/// ignored tests were filtered out by mistake. Without it the matrix was not asked for.
#[test]
fn requested_engines_are_built() {
    if !crate::support::engines::matrix_requested() {
        return;
    }
    for engine in Engine::ALL {
        assert!(engine.binary().is_file());
        assert!(engine.cli().is_file());
    }
}

// ---------------------------------------------------------------------------------------------
// Commands each version accepts

/// One probe: what it tries, the feature it needs (`None`: every engine must accept it), and
/// the reply (of the last command, for several).
struct Probe {
    what: &'static str,
    feature: Option<Feature>,
    reply: Reply,
}

impl Probe {
    fn expected(&self, engine: Engine) -> bool {
        self.feature.is_none_or(|f| engine.supports(f))
    }
}

fn probe_commands(engine: Engine) -> Result<Vec<Probe>, String> {
    let server = start(engine);
    let mut c = Raw::tcp(&server);
    c.words("SET k v");
    c.words("PEXPIRE k 100000");
    c.words("HSET h f v");
    c.words("RPUSH l a b");
    let payload = c.words("DUMP k").bulk().to_vec();
    let abs = (now_ms() + 60_000).to_string();
    let mut probes = Vec::new();
    let mut probe = |what, feature, reply| {
        probes.push(Probe {
            what,
            feature,
            reply,
        })
    };
    probe(
        "RESTORE k2 <abs> p ABSTTL",
        Some(Feature::RestoreAbsTtl),
        c.cmd(&[b"RESTORE", b"k2", abs.as_bytes(), &payload, b"ABSTTL"]),
    );
    let xadd = c.words("XADD s * f v");
    probe("XADD s * f v", Some(Feature::Streams), xadd.clone());
    let entries_read = match &xadd {
        Reply::Bulk(Some(id)) => {
            let id = String::from_utf8_lossy(id).into_owned();
            c.words(&format!("XSETID s {id} ENTRIESADDED 1 MAXDELETEDID 0-0"))
        }
        other => other.clone(),
    };
    probe(
        "XSETID … ENTRIESADDED",
        Some(Feature::StreamEntriesRead),
        entries_read,
    );
    probe("ACL WHOAMI", Some(Feature::Acl), c.words("ACL WHOAMI"));
    // A pause of everything exists everywhere; the WRITE mode from 6.2.
    probe("CLIENT PAUSE 10", None, c.words("CLIENT PAUSE 10"));
    std::thread::sleep(Duration::from_millis(20));
    probe(
        "CLIENT PAUSE 10 WRITE",
        Some(Feature::ClientPauseWrite),
        c.words("CLIENT PAUSE 10 WRITE"),
    );
    std::thread::sleep(Duration::from_millis(20));
    probe(
        "CLIENT INFO",
        Some(Feature::ClientInfo),
        c.words("CLIENT INFO"),
    );
    probe(
        "CLIENT NO-TOUCH on",
        Some(Feature::ClientNoTouch),
        c.words("CLIENT NO-TOUCH on"),
    );
    probe(
        "PEXPIRETIME k",
        Some(Feature::PexpireTime),
        c.words("PEXPIRETIME k"),
    );
    // The fenced read without PEXPIRETIME: PTTL and the server's clock in one transaction.
    c.words("MULTI");
    for line in ["ECHO ferry-read:r1", "DUMP k", "PTTL k", "TIME"] {
        c.words(line);
    }
    let exec = c.words("EXEC");
    let fenced = match &exec {
        Reply::Array(Some(items)) if items.len() == 4 => match (&items[2], &items[3]) {
            (Reply::Int(pttl), Reply::Array(Some(time))) if *pttl > 0 && time.len() == 2 => {
                Reply::Status(format!("PTTL {pttl}, TIME {}", time[0].text()).into_bytes())
            }
            _ => Reply::Error(format!("EXEC answered {exec:?}")),
        },
        _ => Reply::Error(format!("EXEC answered {}", exec.brief())),
    };
    probe("MULTI ECHO DUMP PTTL TIME EXEC", None, fenced);
    probe(
        "SET k v PXAT <abs>",
        Some(Feature::SetPxAt),
        c.words(&format!("SET k3 v PXAT {abs}")),
    );
    probe(
        "LMOVE l l2 RIGHT LEFT",
        Some(Feature::Lmove),
        c.words("LMOVE l l2 RIGHT LEFT"),
    );
    probe(
        "LMPOP 1 l RIGHT",
        Some(Feature::Lmpop),
        c.words("LMPOP 1 l RIGHT"),
    );
    probe(
        "COMMAND DOCS get",
        Some(Feature::CommandDocs),
        c.words("COMMAND DOCS get"),
    );
    // `COMMAND INFO get` has 6 fields (name, arity, flags, first, last, step), 7 with ACL
    // categories (6.0), 10 with tips, key specs and subcommands (7.0).
    let info = c.words("COMMAND INFO get");
    let fields = match &info {
        Reply::Array(Some(items)) => match items.first() {
            Some(Reply::Array(Some(entry))) => entry.len(),
            _ => return Err(format!("COMMAND INFO get: {info:?}")),
        },
        _ => return Err(format!("COMMAND INFO get: {info:?}")),
    };
    let expected_fields = if engine.supports(Feature::KeySpecs) {
        10
    } else if engine.supports(Feature::Acl) {
        7
    } else {
        6
    };
    if fields != expected_fields {
        return Err(format!(
            "COMMAND INFO get has {fields} fields, expected {expected_fields}"
        ));
    }
    probe(
        "key specs in COMMAND INFO",
        Some(Feature::KeySpecs),
        if fields >= 10 {
            Reply::Status(format!("{fields} fields").into_bytes())
        } else {
            Reply::Error(format!("{fields} fields"))
        },
    );
    probe("COMMAND COUNT", None, c.words("COMMAND COUNT"));
    probe(
        "FUNCTION LIST",
        Some(Feature::Functions),
        c.words("FUNCTION LIST"),
    );
    probe(
        "HEXPIRE h 100 FIELDS 1 f",
        Some(Feature::HashFieldExpiry),
        c.words("HEXPIRE h 100 FIELDS 1 f"),
    );
    Ok(probes)
}

#[test]
#[ignore = "needs make servers; run make test-engines"]
fn each_engine_accepts_the_commands_of_its_version() {
    each_engine(
        "commands per version",
        probe_commands,
        |probes| {
            let lines: Vec<String> = probes
                .iter()
                .map(|p| format!("    {:<32} {}", p.what, p.reply.brief()))
                .collect();
            lines.join("\n")
        },
        |engine, probes| {
            let wrong: Vec<String> = probes
                .iter()
                .filter(|p| p.reply.is_error() == p.expected(engine))
                .map(|p| {
                    let expected = if p.expected(engine) {
                        "success"
                    } else {
                        "an error"
                    };
                    format!("{}: expected {expected}, got {}", p.what, p.reply.brief())
                })
                .collect();
            if wrong.is_empty() {
                Ok(())
            } else {
                Err(wrong.join("; "))
            }
        },
    );
}

// ---------------------------------------------------------------------------------------------
// DUMP payload versions

#[test]
#[ignore = "needs make servers; run make test-engines"]
fn dump_payloads_carry_each_engines_rdb_version() {
    // (key, type byte, RDB version) for one key of each basic type.
    each_engine(
        "DUMP payload RDB version",
        |engine| {
            let server = start(engine);
            let mut c = Raw::tcp(&server);
            c.words("SET str hello");
            c.words("RPUSH list a b c");
            c.words("SADD set 1 2 3");
            c.words("HSET hash f v");
            c.words("ZADD zset 1 m");
            let mut versions = Vec::new();
            for key in ["str", "list", "set", "hash", "zset"] {
                let payload = c.words(&format!("DUMP {key}")).bulk().to_vec();
                let (body, trailer) = payload.split_at(payload.len() - 8);
                if crc64(body).to_le_bytes() != trailer {
                    return Err(format!(
                        "DUMP {key}: the trailer is not the CRC-64 of the rest"
                    ));
                }
                versions.push((key, payload[0], payload_rdb_version(&payload)));
            }
            Ok(versions)
        },
        |versions| {
            let each: Vec<String> = versions
                .iter()
                .map(|(key, ty, v)| format!("{key}: type {ty}, RDB {v}"))
                .collect();
            format!("    {}", each.join("; "))
        },
        |engine, versions| {
            let expected = engine.rdb_version();
            match versions.iter().find(|(_, _, v)| *v != expected) {
                Some((key, _, v)) => {
                    Err(format!("DUMP {key}: RDB version {v}, expected {expected}"))
                }
                None => Ok(()),
            }
        },
    );
}

/// `RESTORE` checks the payload's version against its own: every version up to its own passes,
/// the next one is refused with the text ferry's type-aware fallback looks for (§9).
/// `RESTORE` answers for one engine: a string payload restamped to each version 6…13, and
/// Redis 7.0's payload of a small hash (a listpack, type 16) restamped to the engine's own
/// version.
struct RestoreAnswers {
    by_version: Vec<(u16, Reply)>,
    listpack_hash: Reply,
}

#[test]
#[ignore = "needs make servers; run make test-engines"]
fn restore_accepts_payload_versions_up_to_the_engines_own() {
    each_engine(
        "RESTORE by payload version",
        |engine| {
            let listpack = {
                let redis70 = start(Engine::Redis70);
                let mut c = Raw::tcp(&redis70);
                c.words("HSET h f v");
                c.words("DUMP h").bulk().to_vec()
            };
            let server = start(engine);
            let mut c = Raw::tcp(&server);
            c.words("SET str hello");
            let payload = c.words("DUMP str").bulk().to_vec();
            let by_version = (6..=13u16)
                .map(|version| {
                    let key = format!("v{version}");
                    let payload = restamp(&payload, version);
                    let reply = c.cmd(&[b"RESTORE", key.as_bytes(), b"0", &payload]);
                    (version, reply)
                })
                .collect();
            let listpack = restamp(&listpack, engine.rdb_version());
            let listpack_hash = c.cmd(&[b"RESTORE", b"h", b"0", &listpack]);
            Ok(RestoreAnswers {
                by_version,
                listpack_hash,
            })
        },
        |answers| {
            let mut lines: Vec<String> = answers
                .by_version
                .iter()
                .map(|(v, reply)| format!("    version {v}: {}", reply.brief()))
                .collect();
            lines.push(format!(
                "    7.0's listpack hash at this version: {}",
                answers.listpack_hash.brief()
            ));
            lines.join("\n")
        },
        |engine, answers| {
            let own = engine.rdb_version();
            for (version, reply) in &answers.by_version {
                if reply.is_error() == (*version <= own) {
                    return Err(format!("RESTORE of version {version}: {}", reply.brief()));
                }
                if let Reply::Error(e) = reply
                    && e != "ERR DUMP payload version or checksum are wrong"
                {
                    return Err(format!("RESTORE of version {version}: {e}"));
                }
            }
            // Listpack encodings are 7.0's: an older engine does not know the type byte.
            let expected = if own >= 10 {
                Reply::Status(b"OK".to_vec())
            } else {
                Reply::Error("ERR Bad data format".into())
            };
            if answers.listpack_hash != expected {
                return Err(format!(
                    "RESTORE of 7.0's listpack hash: {}",
                    answers.listpack_hash.brief()
                ));
            }
            Ok(())
        },
    );
}

// ---------------------------------------------------------------------------------------------
// MONITOR

/// What a `MONITOR` connection saw: the raw lines (without `+` and `\r\n`), and the same lines
/// normalized for comparison across runs: timestamps dropped, peers named by role (`A`, `B`,
/// `unix`, `M` for a master link; `lua` stays).
struct Stream {
    raw: Vec<String>,
    normalized: Vec<String>,
}

/// Reads `mon`'s stream until a line contains `end`, checking each line against the format of
/// §1 and ferry's parser; `peers` maps a peer as printed to its role name, lines from peers
/// named `""` are dropped.
fn read_stream<S: Read + Write>(
    mon: &mut Raw<S>,
    peers: &[(String, &str)],
    end: &str,
    skip: impl Fn(&str) -> bool,
) -> Result<Stream, String> {
    let mut stream = Stream {
        raw: Vec::new(),
        normalized: Vec::new(),
    };
    let mut last_ts = 0u64;
    loop {
        let line = match mon.read() {
            Reply::Status(line) => line,
            other => return Err(format!("MONITOR sent {}", other.brief())),
        };
        let text = String::from_utf8(line.clone()).map_err(|_| "a non-ASCII line")?;
        // `<sec>.<usec> [<db> <peer>] "<arg>" …`, six digits of µs (§1).
        let (ts, rest) = text.split_once(' ').ok_or(format!("no header: {text}"))?;
        let (sec, usec) = ts.split_once('.').ok_or(format!("bad timestamp: {text}"))?;
        if sec.is_empty()
            || usec.len() != 6
            || !sec.bytes().chain(usec.bytes()).all(|b| b.is_ascii_digit())
        {
            return Err(format!("bad timestamp: {text}"));
        }
        let header_end = rest.find("] \"").ok_or(format!("no header: {text}"))?;
        let (db, peer) = rest[1..header_end]
            .split_once(' ')
            .ok_or(format!("bad header: {text}"))?;
        let args = &rest[header_end + 2..];
        let parsed = parse_line(&line).map_err(|e| format!("ferry's parser: {e}: {text}"))?;
        if parsed.db.to_string() != db {
            return Err(format!("ferry's parser read db {}: {text}", parsed.db));
        }
        match (&parsed.peer, peer) {
            (Peer::Lua, "lua") => {}
            (Peer::Tcp(addr), _) if addr.to_string() == peer => {}
            (Peer::Unix(path), _) if format!("unix:{}", String::from_utf8_lossy(path)) == peer => {}
            (other, _) => return Err(format!("ferry's parser read peer {other:?}: {text}")),
        }
        if parsed.ts_us < last_ts {
            return Err(format!("timestamp goes back: {text}"));
        }
        last_ts = parsed.ts_us;
        let role = peers
            .iter()
            .find(|(p, _)| p == peer)
            .map_or(peer, |(_, role)| role);
        let done = text.contains(end);
        if !role.is_empty() && !skip(args) {
            stream.normalized.push(format!("[{db} {role}] {args}"));
            stream.raw.push(text);
        }
        if done {
            return Ok(stream);
        }
    }
}

/// Waits until `blocked` clients are blocked, asking through `poll`.
fn wait_blocked<S: Read + Write>(poll: &mut Raw<S>, blocked: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let info = poll.words("INFO clients").text();
        if info_field(&info, "blocked_clients").as_deref() == Some(&blocked.to_string()) {
            return;
        }
        assert!(Instant::now() < deadline, "no client blocked: {info}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The primary's stream for the brief's sequence, run by clients A and B (TCP) and one unix
/// client, with a poller whose lines are dropped.
fn primary_stream(engine: Engine) -> Result<Stream, String> {
    let server = RedisServer::start_engine(
        engine,
        ServerOptions {
            unix_socket: true,
            ..ServerOptions::default()
        },
    );
    let mut mon = Raw::tcp(&server);
    if mon.words("MONITOR") != Reply::Status(b"OK".to_vec()) {
        return Err("MONITOR did not answer +OK".into());
    }
    let mut a = Raw::tcp(&server);
    let mut b = Raw::tcp(&server);
    let mut poll = Raw::tcp(&server);
    let mut u = Raw::unix(&server);
    let socket = server.unix_socket_path().unwrap();
    let peers = [
        (format!("127.0.0.1:{}", a.local_port()), "A"),
        (format!("127.0.0.1:{}", b.local_port()), "B"),
        (format!("127.0.0.1:{}", poll.local_port()), ""),
        (format!("unix:{}", socket.display()), "unix"),
    ];

    a.words("SET a 1");
    a.words("MULTI");
    a.words("SET b 2");
    a.words("INCR c");
    a.words("EXEC");
    a.cmd(&[b"EVAL", b"redis.call('set','d','4')", b"0"]);
    // A script queued in a transaction, and a transaction that changes db.
    a.words("MULTI");
    a.cmd(&[b"EVAL", b"redis.call('set','e','5')", b"0"]);
    a.words("SET f 6");
    a.words("EXEC");
    a.words("SELECT 2");
    a.words("MULTI");
    a.words("SET g 7");
    a.words("SELECT 3");
    a.words("SET h 8");
    a.words("EXEC");
    a.words("SELECT 0");
    // A BRPOP that blocks, served by an LPUSH.
    b.send(&[b"BRPOP", b"q", b"5"]);
    wait_blocked(&mut poll, 1);
    a.words("LPUSH q job");
    let served = b.read();
    if served
        != Reply::Array(Some(vec![
            Reply::Bulk(Some(b"q".to_vec())),
            Reply::Bulk(Some(b"job".to_vec())),
        ]))
    {
        return Err(format!("BRPOP answered {}", served.brief()));
    }
    u.words("SET u 1");
    // A cached script, and (7.0+) a function.
    let sha = a.cmd(&[b"SCRIPT", b"LOAD", b"return redis.call('set','i','9')"]);
    a.cmd(&[b"EVALSHA", sha.bulk(), b"0"]);
    if engine.supports(Feature::Functions) {
        let library = "#!lua name=lib\nredis.register_function('fset', \
                       function(keys, args) return redis.call('set', keys[1], args[1]) end)";
        let loaded = a.cmd(&[b"FUNCTION", b"LOAD", library.as_bytes()]);
        if loaded.is_error() {
            return Err(format!("FUNCTION LOAD: {}", loaded.brief()));
        }
        a.words("FCALL fset 1 fk fv");
    }
    // Failing while running (logged), refused before running (not logged), an aborted
    // transaction.
    a.words("LPUSH a x");
    a.words("NOSUCHCMD x");
    a.words("MULTI");
    a.words("NOSUCHCMD");
    a.words("EXEC");
    a.words("ECHO end");
    read_stream(&mut mon, &peers, "\"ECHO\" \"end\"", |_| false)
}

/// What a replica saw: its `MONITOR` stream, and the TTL of `f` (which had one before an
/// `INCRBYFLOAT`) on the primary and on the replica afterwards.
struct ReplicaRun {
    stream: Stream,
    ttl_f: (i64, i64),
}

/// The stream of a replica's `MONITOR` while a client of its primary writes (§14): what the
/// primary propagates.
fn replica_stream(engine: Engine) -> Result<ReplicaRun, String> {
    let primary = start(engine);
    let replica = RedisServer::replica_of(&primary);
    let mut mon = Raw::tcp(&replica);
    if mon.words("MONITOR") != Reply::Status(b"OK".to_vec()) {
        return Err("MONITOR did not answer +OK".into());
    }
    let mut a = Raw::tcp(&primary);
    let mut b = Raw::tcp(&primary);
    let mut poll = Raw::tcp(&primary);
    let peers = [(format!("127.0.0.1:{}", primary.port()), "M")];

    a.words("SET t v EX 100");
    a.words("EXPIRE t 50");
    a.words("SET p v PX 100000");
    a.words("SADD s x");
    a.words("SPOP s");
    a.words("SET f 0");
    a.words(&format!("PEXPIREAT f {}", now_ms() + 100_000));
    a.words("INCRBYFLOAT f 1.5");
    a.cmd(&[
        b"EVAL",
        b"redis.call('set','d','4'); return redis.call('incr','n')",
        b"0",
    ]);
    a.words("MULTI");
    a.words("SET b 2");
    a.words("INCR c");
    a.words("EXEC");
    b.send(&[b"BRPOP", b"q", b"5"]);
    wait_blocked(&mut poll, 1);
    a.words("LPUSH q job");
    b.read();
    a.words("SET end 1");
    // The master's periodic PINGs come when they come.
    let mut stream = read_stream(&mut mon, &peers, "\"SET\" \"end\"", |args| {
        args.eq_ignore_ascii_case("\"ping\"")
    })?;
    let now = now_ms();
    for line in &mut stream.normalized {
        *line = relative_times(line, now);
    }
    let ttl = |server: &RedisServer| match Raw::tcp(server).words("TTL f") {
        Reply::Int(ttl) => Ok(ttl),
        other => Err(format!("TTL f: {}", other.brief())),
    };
    Ok(ReplicaRun {
        stream,
        ttl_f: (ttl(&primary)?, ttl(&replica)?),
    })
}

/// Replaces each argument that is a time in ms near `now_ms` (an absolute TTL) by
/// `<now+Ns>`.
fn relative_times(line: &str, now_ms: u64) -> String {
    let parts: Vec<String> = line
        .split(' ')
        .map(|part| {
            let digits = part.trim_matches('"');
            match digits.parse::<u64>() {
                Ok(t) if digits.len() == 13 && t.abs_diff(now_ms) < 86_400_000 => {
                    // To the nearest 10 s: a slow run must not change the text.
                    let tens = (t as i64 - now_ms as i64) as f64 / 10_000.0;
                    format!("\"<now+{}s>\"", tens.round() as i64 * 10)
                }
                _ => part.to_string(),
            }
        })
        .collect();
    parts.join(" ")
}

fn show_stream(stream: &Stream) -> String {
    let lines: Vec<String> = stream
        .raw
        .iter()
        .zip(&stream.normalized)
        .map(|(raw, norm)| format!("    {norm:<56} | {raw}"))
        .collect();
    lines.join("\n")
}

/// What [`primary_stream`] must see, normalized: the same on every engine but for the db of a
/// `SELECT` line (the new one from 6.2, the previous one before) and functions (7.0).
fn expected_primary_stream(engine: Engine) -> Vec<String> {
    let after = engine.supports(Feature::MonitorAfterExecution);
    let select = |from: u32, to: u32| {
        let db = if after { to } else { from };
        format!("[{db} A] \"SELECT\" \"{to}\"")
    };
    let mut lines: Vec<String> = [
        "[0 A] \"SET\" \"a\" \"1\"",
        // The queued commands come at EXEC time, just before the EXEC line (§2).
        "[0 A] \"MULTI\"",
        "[0 A] \"SET\" \"b\" \"2\"",
        "[0 A] \"INCR\" \"c\"",
        "[0 A] \"EXEC\"",
        // A script's line, then its effects with the `lua` peer (§3).
        "[0 A] \"EVAL\" \"redis.call('set','d','4')\" \"0\"",
        "[0 lua] \"set\" \"d\" \"4\"",
        // A script in a transaction: its line and effects in place, then the rest.
        "[0 A] \"MULTI\"",
        "[0 A] \"EVAL\" \"redis.call('set','e','5')\" \"0\"",
        "[0 lua] \"set\" \"e\" \"5\"",
        "[0 A] \"SET\" \"f\" \"6\"",
        "[0 A] \"EXEC\"",
    ]
    .map(String::from)
    .to_vec();
    lines.extend([
        select(0, 2),
        "[2 A] \"MULTI\"".into(),
        "[2 A] \"SET\" \"g\" \"7\"".into(),
        select(2, 3),
        "[3 A] \"SET\" \"h\" \"8\"".into(),
        "[3 A] \"EXEC\"".into(),
        select(3, 0),
    ]);
    lines.extend(
        [
            // Logged once, when it blocked; the pop that served it leaves no line (§4).
            "[0 B] \"BRPOP\" \"q\" \"5\"",
            "[0 A] \"LPUSH\" \"q\" \"job\"",
            "[0 unix] \"SET\" \"u\" \"1\"",
            "[0 A] \"SCRIPT\" \"LOAD\" \"return redis.call('set','i','9')\"",
            "[0 A] \"EVALSHA\" \"c4d54191a32abe86805057ac0bf7821f26dd586d\" \"0\"",
            "[0 lua] \"set\" \"i\" \"9\"",
        ]
        .map(String::from),
    );
    if engine.supports(Feature::Functions) {
        lines.extend(
            [
                "[0 A] \"FUNCTION\" \"LOAD\" \"#!lua name=lib\\nredis.register_function('fset', \
                 function(keys, args) return redis.call('set', keys[1], args[1]) end)\"",
                "[0 A] \"FCALL\" \"fset\" \"1\" \"fk\" \"fv\"",
                "[0 lua] \"set\" \"fk\" \"fv\"",
            ]
            .map(String::from),
        );
    }
    lines.extend(
        [
            // WRONGTYPE while running: logged. An unknown command: not. An aborted
            // transaction: MULTI and EXEC only.
            "[0 A] \"LPUSH\" \"a\" \"x\"",
            "[0 A] \"MULTI\"",
            "[0 A] \"EXEC\"",
            "[0 A] \"ECHO\" \"end\"",
        ]
        .map(String::from),
    );
    lines
}

/// What [`replica_stream`] must see: what each version propagates (§14).
fn expected_replica_stream(engine: Engine) -> Vec<String> {
    let absolute = engine.supports(Feature::AbsoluteTtlPropagation);
    let mut lines: Vec<String> = vec!["[0 M] \"SELECT\" \"0\"".into()];
    lines.extend(
        if absolute {
            [
                "[0 M] \"SET\" \"t\" \"v\" \"PXAT\" \"<now+100s>\"",
                "[0 M] \"PEXPIREAT\" \"t\" \"<now+50s>\"",
                "[0 M] \"SET\" \"p\" \"v\" \"PXAT\" \"<now+100s>\"",
            ]
        } else if engine.supports(Feature::SetPxAt) {
            // 6.2 turns EX into PX, but leaves both relative.
            [
                "[0 M] \"SET\" \"t\" \"v\" \"PX\" \"100000\"",
                "[0 M] \"EXPIRE\" \"t\" \"50\"",
                "[0 M] \"SET\" \"p\" \"v\" \"PX\" \"100000\"",
            ]
        } else {
            [
                "[0 M] \"SET\" \"t\" \"v\" \"EX\" \"100\"",
                "[0 M] \"EXPIRE\" \"t\" \"50\"",
                "[0 M] \"SET\" \"p\" \"v\" \"PX\" \"100000\"",
            ]
        }
        .map(String::from),
    );
    lines.extend(
        [
            "[0 M] \"SADD\" \"s\" \"x\"",
            "[0 M] \"SREM\" \"s\" \"x\"",
            "[0 M] \"SET\" \"f\" \"0\"",
            "[0 M] \"PEXPIREAT\" \"f\" \"<now+100s>\"",
        ]
        .map(String::from),
    );
    lines.push(if engine.supports(Feature::KeepTtlPropagation) {
        "[0 M] \"SET\" \"f\" \"1.5\" \"KEEPTTL\"".into()
    } else {
        "[0 M] \"SET\" \"f\" \"1.5\"".into()
    });
    if engine.supports(Feature::ScriptEffectsReplication) {
        lines.extend(
            [
                "[0 M] \"MULTI\"",
                "[0 M] \"set\" \"d\" \"4\"",
                "[0 M] \"incr\" \"n\"",
                "[0 M] \"EXEC\"",
            ]
            .map(String::from),
        );
    } else {
        lines.extend(
            [
                "[0 M] \"EVAL\" \"redis.call('set','d','4'); return redis.call('incr','n')\" \"0\"",
                "[0 lua] \"set\" \"d\" \"4\"",
                "[0 lua] \"incr\" \"n\"",
            ]
            .map(String::from),
        );
    }
    lines.extend(
        [
            "[0 M] \"MULTI\"",
            "[0 M] \"SET\" \"b\" \"2\"",
            "[0 M] \"INCR\" \"c\"",
            "[0 M] \"EXEC\"",
            "[0 M] \"LPUSH\" \"q\" \"job\"",
            // The served BRPOP, as the pop it did.
            "[0 M] \"RPOP\" \"q\"",
            "[0 M] \"SET\" \"end\" \"1\"",
        ]
        .map(String::from),
    );
    lines
}

/// The first difference between a stream and what was expected, with both in full.
fn compare_stream(stream: &Stream, expected: &[String]) -> Result<(), String> {
    if stream.normalized == expected {
        return Ok(());
    }
    let at = stream
        .normalized
        .iter()
        .zip(expected)
        .position(|(a, b)| a != b)
        .unwrap_or(stream.normalized.len().min(expected.len()));
    Err(format!(
        "line {at} differs: got {:?}, expected {:?}\n--- got\n{}\n--- expected\n{}",
        stream.normalized.get(at),
        expected.get(at),
        stream.normalized.join("\n"),
        expected.join("\n")
    ))
}

#[test]
#[ignore = "needs make servers; run make test-engines"]
fn monitor_streams_of_each_engine() {
    each_engine(
        "MONITOR on a primary",
        primary_stream,
        show_stream,
        |engine, stream| compare_stream(stream, &expected_primary_stream(engine)),
    );
}

#[test]
#[ignore = "needs make servers; run make test-engines"]
fn replica_monitor_streams_of_each_engine() {
    each_engine(
        "MONITOR on a replica",
        replica_stream,
        |run| {
            format!(
                "{}\n    TTL f after INCRBYFLOAT: primary {}, replica {}",
                show_stream(&run.stream),
                run.ttl_f.0,
                run.ttl_f.1
            )
        },
        |engine, run| {
            compare_stream(&run.stream, &expected_replica_stream(engine))?;
            // Before 6.0 the replica's plain `SET` drops the key's TTL: the replica diverges.
            let (primary, replica) = run.ttl_f;
            let kept = replica > 0 && replica.abs_diff(primary) <= 1;
            if primary <= 0 || kept != engine.supports(Feature::KeepTtlPropagation) {
                return Err(format!("TTL f: primary {primary}, replica {replica}"));
            }
            Ok(())
        },
    );
}

/// Where a line's timestamp falls: when the command was received (`before` it ran) or when it
/// returned (`after`), for a slow write and a slow script. The client's clock is the server's
/// (same host).
#[derive(Debug)]
struct Timing {
    /// (sent, line timestamp, answered), in µs since the epoch.
    write: (u64, u64, u64),
    script: (u64, u64, u64),
}

fn position((sent, ts, answered): (u64, u64, u64)) -> &'static str {
    if ts.abs_diff(sent) < ts.abs_diff(answered) {
        "before"
    } else {
        "after"
    }
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

fn monitor_timing(engine: Engine) -> Result<Timing, String> {
    let server = start(engine);
    let mut a = Raw::tcp(&server);
    // 100,000 members, so that `SORT … STORE` takes a while (0.3 to 1 s).
    let members: Vec<Vec<u8>> = (0..100_000u32)
        .map(|i| {
            (i.wrapping_mul(2_654_435_761) % 1_000_000)
                .to_string()
                .into_bytes()
        })
        .collect();
    let mut args: Vec<&[u8]> = vec![b"RPUSH", b"big"];
    args.extend(members.iter().map(Vec::as_slice));
    a.cmd(&args);
    let mut mon = Raw::tcp(&server);
    mon.words("MONITOR");
    let timed = |a: &mut Raw<TcpStream>, args: &[&[u8]]| {
        let sent = now_us();
        let reply = a.cmd(args);
        (sent, now_us(), reply)
    };
    let (w_sent, w_answered, sorted) = timed(&mut a, &[b"SORT", b"big", b"STORE", b"sorted"]);
    if sorted != Reply::Int(100_000) {
        return Err(format!("SORT answered {}", sorted.brief()));
    }
    let script =
        b"local n = 0 for i = 1, 3000000 do n = n + 1 end return redis.call('set', 'x', n)";
    let (s_sent, s_answered, _) = timed(&mut a, &[b"EVAL", script, b"0"]);
    a.words("ECHO end");
    let stream = read_stream(&mut mon, &[], "\"ECHO\" \"end\"", |_| false)?;
    let ts_of = |prefix: &str| -> Result<u64, String> {
        let line = stream
            .raw
            .iter()
            .find(|l| l.contains(prefix))
            .ok_or(format!("no {prefix} line"))?;
        parse_line(line.as_bytes())
            .map(|l| l.ts_us)
            .map_err(|e| e.to_string())
    };
    Ok(Timing {
        write: (w_sent, ts_of("\"SORT\"")?, w_answered),
        script: (s_sent, ts_of("\"EVAL\"")?, s_answered),
    })
}

#[test]
#[ignore = "needs make servers; run make test-engines"]
fn monitor_timestamps_before_or_after_execution() {
    each_engine(
        "MONITOR timestamp of a slow write and a slow script",
        monitor_timing,
        |t| {
            let show = |(sent, ts, answered): (u64, u64, u64)| {
                format!(
                    "{} (line {} µs after sending, answer after {} µs)",
                    position((sent, ts, answered)),
                    ts as i64 - sent as i64,
                    answered - sent
                )
            };
            format!(
                "    SORT … STORE: {}\n    EVAL: {}",
                show(t.write),
                show(t.script)
            )
        },
        |engine, t| {
            // A script's line is always written before it runs (§3); other commands' after
            // they ran from 6.2, before until then.
            let write = if engine.supports(Feature::MonitorAfterExecution) {
                "after"
            } else {
                "before"
            };
            match (position(t.write), position(t.script)) {
                (w, "before") if w == write => Ok(()),
                (w, s) => Err(format!(
                    "SORT's line {w} it ran, expected {write}; EVAL's {s}, expected before"
                )),
            }
        },
    );
}

/// A live migration from `source` to `target` under the full workload for `secs`, capturing
/// from the primary, stopped with SIGTERM, compared by the oracle; ferry's stderr.
fn live(source: &RedisServer, target: &mut RedisServer, secs: u64) -> String {
    crate::migrate::migrate_under_load(source, target, secs, &["--capture", "primary"], |_| {})
}

/// A live migration from Redis 6.2 (ElastiCache-like, no `PEXPIRETIME`: ferry reads `PTTL`
/// with the server's `TIME`) to Debian's 7.0 under the full workload, stopped with SIGTERM:
/// the oracle finds 0 differences.
#[test]
#[ignore = "needs make servers; run make test-engines"]
fn live_migration_from_redis_6_2_to_7_0_is_exact() {
    let source = RedisServer::start_engine(Engine::Redis62, ServerOptions::elasticache_like());
    let mut target = RedisServer::start();
    let stderr = live(&source, &mut target, 12);
    assert!(
        stderr.contains("PTTL with the server's TIME in the same transaction"),
        "{stderr}"
    );
}

/// Runs `ferry migrate` from `source` to `target`, which must refuse at start: exit 2 within
/// 30 s, one `ferry: error` line (returned), nothing copied to the target.
fn refused_at_start(source: &RedisServer, target: &RedisServer) -> String {
    refused_at_start_with(source, target, &[])
}

/// [`refused_at_start`] with more `ferry migrate` arguments.
fn refused_at_start_with(source: &RedisServer, target: &RedisServer, extra: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let out = crate::cli::ferry()
        .args([
            "migrate",
            "--source",
            &source.url(),
            "--target",
            &target.url(),
        ])
        .arg("--state-dir")
        .arg(dir.path())
        .args(extra)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("ferry: error"))
        .collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    let keys: u64 = redis::cmd("DBSIZE").query(&mut target.conn()).unwrap();
    assert_eq!(keys, 0, "nothing may be copied");
    errors[0].to_string()
}

/// Pairs ferry cannot migrate live are refused at start with one line naming the reason, never
/// a loop: a source with streams toward Redis 4.0 (which has none), and a cutover from a source before 6.2 (no
/// `CLIENT PAUSE … WRITE`). A Redis 3.x source is refused the same way (`Engine::too_old`).
#[test]
#[ignore = "needs make servers; run make test-engines"]
fn unsupported_pairs_are_refused_at_start_with_one_line() {
    // Streams toward Redis 4.0, which has none: the first stream and the count.
    let source = start(Engine::Redis50);
    let mut con = source.conn();
    for (db, key) in [(0, "plain"), (2, "events"), (2, "more")] {
        let _: () = redis::cmd("SELECT").arg(db).query(&mut con).unwrap();
        if key == "plain" {
            let _: () = redis::cmd("SET").arg(key).arg(1).query(&mut con).unwrap();
        } else {
            let _: String = redis::cmd("XADD")
                .arg(key)
                .arg("*")
                .arg("f")
                .arg(1)
                .query(&mut con)
                .unwrap();
        }
    }
    let line = refused_at_start(&source, &start(Engine::Redis40));
    assert!(
        line.contains("has 2 stream(s) (first: db2 ")
            && line.contains("runs Redis 4.0.14, which has no streams (Redis 5.0)"),
        "{line}"
    );
    // A cutover from a source without CLIENT PAUSE … WRITE: said at start, not at the switch.
    let line = refused_at_start_with(
        &start(Engine::Redis60),
        &RedisServer::start(),
        &["--cutover"],
    );
    assert!(
        line.contains(
            "runs Redis 6.0.20: a cutover needs CLIENT PAUSE … WRITE (Redis 6.2) on the source"
        ),
        "{line}"
    );
}

/// Redis 7.0 (ElastiCache-like) → Valkey 8.0 under the full workload, stopped with SIGTERM:
/// Valkey reads the source's RDB 10 payloads as they are; the oracle finds 0 differences.
#[test]
#[ignore = "needs make servers; run make test-engines"]
fn live_migration_from_redis_7_0_to_valkey_8_0_is_exact() {
    let source = RedisServer::elasticache_like();
    let mut target = RedisServer::start_engine(Engine::Valkey80, ServerOptions::default());
    let stderr = live(&source, &mut target, 12);
    assert!(
        stderr.contains(
            "RESTORE of the source's DUMP payloads (RDB 10; the target reads up to RDB 11)"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("payloads rewritten"), "{stderr}");
}

/// The payloads rewritten for the target, from the summary line (`; N DUMP payloads rewritten
/// for the target's RDB version`), after checking that none failed.
fn payloads_rewritten(stderr: &str) -> u64 {
    assert!(!stderr.contains("could not be"), "{stderr}");
    let at = stderr
        .find(" DUMP payloads rewritten for the target's RDB version")
        .unwrap_or_else(|| panic!("no rewritten payloads in the summary:\n{stderr}"));
    stderr[..at]
        .rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count before the rewritten payloads:\n{stderr}"))
}

/// Valkey 8.0 (ElastiCache-like) → Redis 7.0 under the full workload, stopped with SIGTERM:
/// Redis 7.0 rejects Valkey's RDB 11 payloads, so ferry says at start that it rewrites them to
/// RDB 10 and counts them at the end (listpack sets and streams with consumer groups among
/// them); the oracle finds 0 differences.
#[test]
#[ignore = "needs make servers; run make test-engines"]
fn live_migration_from_valkey_8_0_to_redis_7_0_is_exact() {
    let source = RedisServer::start_engine(Engine::Valkey80, ServerOptions::elasticache_like());
    let mut target = RedisServer::start();
    let stderr = live(&source, &mut target, 12);
    assert!(
        stderr.contains("DUMP payloads rewritten from RDB 11 to RDB 10 before RESTORE"),
        "{stderr}"
    );
    assert!(payloads_rewritten(&stderr) > 9000, "{stderr}");
}

/// Redis 7.4 → Redis 7.0, a short live run under the workload, stopped with SIGTERM: Redis
/// 7.0 rejects RDB 12 payloads, so ferry rewrites them to RDB 10 (the RDB 11 → 10 rewrite
/// included: listpack sets, streams with consumer groups); 0 differences.
#[test]
#[ignore = "needs make servers; run make test-engines"]
fn live_migration_from_redis_7_4_to_7_0_is_exact() {
    let source = start(Engine::Redis74);
    let mut target = RedisServer::start();
    let stderr = live(&source, &mut target, 6);
    assert!(
        stderr.contains("DUMP payloads rewritten from RDB 12 to RDB 10 before RESTORE"),
        "{stderr}"
    );
    assert!(payloads_rewritten(&stderr) > 9000, "{stderr}");
}

/// Redis 7.4 → Valkey 8.0, a short live run: RDB 12 payloads rewritten to RDB 11 (every type
/// but hashes with field TTLs has the same bytes); 0 differences.
#[test]
#[ignore = "needs make servers; run make test-engines"]
fn live_migration_from_redis_7_4_to_valkey_8_0_is_exact() {
    let source = start(Engine::Redis74);
    let mut target = RedisServer::start_engine(Engine::Valkey80, ServerOptions::default());
    let stderr = live(&source, &mut target, 6);
    assert!(
        stderr.contains("DUMP payloads rewritten from RDB 12 to RDB 11 before RESTORE"),
        "{stderr}"
    );
    assert!(payloads_rewritten(&stderr) > 9000, "{stderr}");
}

/// Valkey 7.2 → Redis 7.0, a shorter live run: the same rewrite, 0 differences.
#[test]
#[ignore = "needs make servers; run make test-engines"]
fn live_migration_from_valkey_7_2_to_redis_7_0_is_exact() {
    let source = RedisServer::start_engine(Engine::Valkey72, ServerOptions::default());
    let mut target = RedisServer::start();
    let stderr = live(&source, &mut target, 6);
    assert!(payloads_rewritten(&stderr) > 9000, "{stderr}");
}

/// Redis 7.2 → Redis 7.0: payloads rewritten RDB 11 → 10 under the workload, SIGTERM, 0
/// differences.
#[test]
#[ignore = "needs make servers; run make test-engines"]
fn live_migration_from_redis_7_2_to_7_0_is_exact() {
    let source = RedisServer::start_engine(Engine::Redis72, ServerOptions::elasticache_like());
    let mut target = RedisServer::start();
    let stderr = live(&source, &mut target, 6);
    assert!(payloads_rewritten(&stderr) > 9000, "{stderr}");
}

/// Redis 5.0 → Redis 7.0 (the flagship test takes 5.0 to 7.4): PTTL + TIME reads, the
/// all-client final pause, under the workload, SIGTERM, 0 differences.
#[test]
#[ignore = "needs make servers; run make test-engines"]
fn live_migration_from_redis_5_0_to_7_0_is_exact() {
    let source = RedisServer::start_engine(Engine::Redis50, ServerOptions::elasticache_like());
    let mut target = RedisServer::start();
    let stderr = live(&source, &mut target, 6);
    assert!(
        stderr.contains("Pausing every client of the source, reads too"),
        "{stderr}"
    );
}

/// One engine pair's function libraries: `libA` loaded on the source before the migration and
/// `libB` loaded during it (after the snapshot read the libraries, so only the stream brings
/// it) both answer `FCALL` on the target after the final fence, under a short workload, and
/// the oracle finds 0 differences.
fn libraries_reach_the_target(source: &RedisServer, target: &RedisServer) -> String {
    use crate::functions::{LIB_B, fcall, function_load, lib_a, libraries};
    fill(
        source,
        &Dataset {
            dbs: vec![0, 1],
            keys_per_db: 1000,
            ..Dataset::tiny()
        },
    );
    let mut src = source.conn();
    function_load(&mut src, &lib_a(1), false);
    let load = workload::start(
        &source.url(),
        WorkloadOptions {
            dbs: vec![0, 1],
            rate: 500,
            ..WorkloadOptions::default()
        },
    );
    let state = tempfile::tempdir().unwrap();
    let mut ferry = crate::migrate::start_migrate(
        &source.url(),
        &target.url(),
        state.path(),
        &["--capture", "primary"],
    );
    ferry.wait_log("Function libraries read", Duration::from_secs(30));
    function_load(&mut src, LIB_B, false);
    let n: i64 = fcall(&mut src, "b_incr", &["fn:b"], &[]).unwrap();
    assert_eq!(n, 1);
    ferry.wait_log("Snapshot reads done", Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(2));
    let report = load.stop();
    assert!(report.errors.is_empty(), "{report}");
    let code = ferry.terminate(Duration::from_secs(60));
    let stderr = ferry.stderr();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("final fence"), "{stderr}");
    let mut tgt = target.conn();
    assert_eq!(libraries(&mut tgt), libraries(&mut src));
    let version: String = fcall(&mut tgt, "a_version", &[], &[]).unwrap();
    assert_eq!(version, "A1", "libA, copied with the snapshot");
    let b: i64 = fcall(&mut tgt, "b_incr", &["fn:b"], &[]).unwrap();
    assert_eq!(b, 2, "libB, loaded during the run, and its call replayed");
    let _: () = redis::cmd("DEL")
        .arg("fn:b")
        .arg("fn:b:meta")
        .query(&mut tgt)
        .unwrap();
    let _: () = redis::cmd("DEL")
        .arg("fn:b")
        .arg("fn:b:meta")
        .query(&mut src)
        .unwrap();
    let oracle = compare(
        &source.url(),
        &target.url(),
        &OracleOptions {
            ttl_tolerance_ms: 1000,
            ..OracleOptions::default()
        },
    );
    eprintln!("{report}\n{oracle}");
    assert!(oracle.keys_compared > 1500, "{oracle}");
    oracle.assert_identical();
    stderr
}

/// Redis 7.0 → Valkey 8.0: libraries before and during the run answer `FCALL` on Valkey.
#[test]
#[ignore = "needs make servers; run make test-engines"]
fn function_libraries_reach_valkey_8_0_from_redis_7_0() {
    let source = RedisServer::elasticache_like();
    let target = RedisServer::start_engine(Engine::Valkey80, ServerOptions::default());
    libraries_reach_the_target(&source, &target);
}

/// Valkey 8.0 → Redis 7.0: the `FUNCTION DUMP` payload (RDB 11) is rewritten for RDB 10 like
/// the keys' payloads, and both libraries answer `FCALL` on Redis 7.0.
#[test]
#[ignore = "needs make servers; run make test-engines"]
fn function_libraries_reach_redis_7_0_from_valkey_8_0() {
    let source = RedisServer::start_engine(Engine::Valkey80, ServerOptions::elasticache_like());
    let target = RedisServer::start();
    let stderr = libraries_reach_the_target(&source, &target);
    assert!(payloads_rewritten(&stderr) > 1500, "{stderr}");
}

/// A source with a function library toward Redis 6.2, an engine without functions: refused at
/// start with one line naming the libraries and what to do, exit 2, nothing copied.
#[test]
#[ignore = "needs make servers; run make test-engines"]
fn a_target_engine_without_functions_is_refused_when_the_source_has_libraries() {
    let source = RedisServer::start();
    let target = RedisServer::start_engine(Engine::Redis62, ServerOptions::default());
    let mut src = source.conn();
    crate::functions::function_load(&mut src, &crate::functions::lib_a(1), false);
    let _: () = redis::cmd("SET").arg("k").arg("v").query(&mut src).unwrap();
    let line = refused_at_start(&source, &target);
    for part in [
        "the source has 1 function library ('libA'), but the target refuses FUNCTION",
        "migrate to a target with functions (Redis 7.0 or newer)",
    ] {
        assert!(line.contains(part), "{part:?} missing from: {line}");
    }
}

/// `ferry preflight --json` on engine pairs, parsed: Valkey 8.0 → Redis 7.0 and Redis 7.4 →
/// Valkey 8.0 are ready and name the payload rewrite (exit 0); a 4.0 target names replay's forms and fails on a source's
/// stream (exit 2); a 6.0 source warns
/// that its final fence pauses every client (exit 1).
#[test]
#[ignore = "needs make servers; run make test-engines"]
fn preflight_judges_engine_pairs() {
    use crate::preflight::{finding, preflight};
    let v80 = RedisServer::start_engine(Engine::Valkey80, ServerOptions::default());
    let r70 = RedisServer::start();
    fill(&v80, &Dataset::tiny());
    let (code, stderr, r) = preflight(&v80, &r70);
    assert_eq!(code, Some(0), "{stderr}{r:#}");
    assert_eq!(r["source_engine"]["kind"], "Valkey");
    let payloads = finding(&r, "payloads");
    assert_eq!(payloads["level"], "ok", "{r:#}");
    assert!(
        payloads["detail"]
            .as_str()
            .unwrap()
            .contains("DUMP payloads rewritten from RDB 11 to RDB 10"),
        "{payloads:#}"
    );

    let r74 = start(Engine::Redis74);
    let (code, stderr, r) = preflight(&r74, &v80);
    assert_eq!(code, Some(0), "{stderr}{r:#}");
    let payloads = finding(&r, "payloads");
    assert_eq!(payloads["level"], "ok", "{r:#}");
    assert!(
        payloads["detail"]
            .as_str()
            .unwrap()
            .contains("DUMP payloads rewritten from RDB 12 to RDB 11 before RESTORE"),
        "{payloads:#}"
    );

    // Toward Redis 4.0: the target engine is fine (replay's forms named), a source with a
    // stream is not.
    let r40 = start(Engine::Redis40);
    let (_, stderr, r) = preflight(&r70, &r40);
    let engine = r["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["side"] == "target" && f["check"] == "engine")
        .cloned()
        .unwrap_or_default();
    assert_eq!(engine["level"], "ok", "{stderr}{r:#}");
    assert!(
        engine["detail"]
            .as_str()
            .unwrap()
            .contains("SET … PXAT as one EVAL of SET and PEXPIREAT"),
        "{engine:#}"
    );
    let _: String = redis::cmd("XADD")
        .arg("s")
        .arg("*")
        .arg("f")
        .arg(1)
        .query(&mut r70.conn())
        .unwrap();
    let (code, stderr, r) = preflight(&r70, &r40);
    assert_eq!(code, Some(2), "{stderr}{r:#}");
    let streams = finding(&r, "streams");
    assert_eq!(streams["level"], "fail", "{r:#}");
    assert!(
        streams["detail"]
            .as_str()
            .unwrap()
            .contains("has 1 stream(s) (first: db0 \"s\")"),
        "{streams:#}"
    );
    let r60 = start(Engine::Redis60);
    let (code, stderr, r) = preflight(&r60, &r70);
    assert_eq!(code, Some(1), "{stderr}{r:#}");
    let pause = finding(&r, "write pause");
    assert_eq!(pause["level"], "warn", "{r:#}");
    assert!(
        pause["detail"]
            .as_str()
            .unwrap()
            .contains("pauses every client, reads too"),
        "{pause:#}"
    );
}

/// Engines before 7.0 answer `COMMAND` without key specs: ferry loads their tables from
/// first/last/step and movable-key rules, and extracts the same keys as the server's own
/// `COMMAND GETKEYS` for every corpus line the engine knows (key names, in order; these
/// engines have no key flags).
#[test]
#[ignore = "needs make servers; run make test-engines"]
fn tables_of_engines_before_7_0_extract_the_servers_keys() {
    use crate::command_table::{corpus, ferry_keys, live_table};
    let corpus = corpus();
    for engine in [
        Engine::Redis40,
        Engine::Redis50,
        Engine::Redis60,
        Engine::Redis62,
    ] {
        let server = start(engine);
        let table = live_table(&server);
        assert!(
            matches!(table.origin(), ferry::command::TableOrigin::Server { .. }),
            "{engine:?}"
        );
        assert!(table.len() > 150, "{engine:?}: {} commands", table.len());
        let mut con = server.conn();
        let (mut compared, mut differ) = (0, Vec::new());
        for (line, args) in &corpus {
            // Before 7.0, migrateGetKeys reads an AUTH password as an option and takes the
            // plain form when the key argument is not empty, even with KEYS (which MIGRATE
            // itself then refuses); ferry follows 7.0, whose MIGRATE runs the same way.
            let arg = |i: usize| args.get(i).map(Vec::as_slice).unwrap_or_default();
            if arg(0).eq_ignore_ascii_case(b"MIGRATE")
                && (args
                    .iter()
                    .any(|a| a.to_ascii_uppercase().starts_with(b"AUTH"))
                    || !arg(3).is_empty())
            {
                continue;
            }
            let mut cmd = redis::cmd("COMMAND");
            cmd.arg("GETKEYS");
            for a in args {
                cmd.arg(a.as_slice());
            }
            // An error: the engine lacks the command, or the arguments name no key.
            let Ok(server_keys) = cmd.query::<Vec<Vec<u8>>>(&mut con) else {
                continue;
            };
            let ours: Vec<Vec<u8>> = ferry_keys(&table, args).into_iter().map(|k| k.0).collect();
            compared += 1;
            if ours != server_keys {
                differ.push(format!(
                    "line {line}: server {:?}, ferry {:?}",
                    server_keys
                        .iter()
                        .map(|k| String::from_utf8_lossy(k))
                        .collect::<Vec<_>>(),
                    ours.iter()
                        .map(|k| String::from_utf8_lossy(k))
                        .collect::<Vec<_>>()
                ));
            }
        }
        eprintln!(
            "{engine:?}: {} commands, {compared} corpus lines compared",
            table.len()
        );
        assert!(compared > 200, "{engine:?}: only {compared} lines compared");
        assert!(
            differ.is_empty(),
            "{engine:?}: {} of {compared} lines differ:\n{}",
            differ.len(),
            differ.join("\n")
        );
    }
}

/// A live migration from Redis 6.0 (no `CLIENT PAUSE … WRITE`, no `PEXPIRETIME`, and here
/// `COMMAND` renamed away, so ferry uses its built-in 6.0 table) to Debian's 7.0 under the
/// workload, stopped with SIGTERM: 0 differences.
#[test]
#[ignore = "needs make servers; run make test-engines"]
fn live_migration_from_redis_6_0_to_7_0_is_exact() {
    let source = RedisServer::start_engine(
        Engine::Redis60,
        ServerOptions {
            extra_config: vec!["rename-command COMMAND \"\"".into()],
            ..ServerOptions::elasticache_like()
        },
    );
    let mut target = RedisServer::start();
    let stderr = live(&source, &mut target, 8);
    assert!(
        stderr.contains("Pausing every client of the source, reads too"),
        "{stderr}"
    );
    assert!(
        stderr.contains("Using the built-in command table of the source's Redis version.")
            && stderr.contains("version=\"6.0\""),
        "{stderr}"
    );
}

/// The flagship pair for old managed sources: Redis 5.0 (ElastiCache-like) → Redis 7.4 under
/// the full workload (BRPOP and BRPOPLPUSH consumers included), stopped with SIGTERM: ferry
/// reads the 5.0 table from its `COMMAND`, expiries with `PTTL` + `TIME`, pauses every client
/// with the final marker, and the oracle finds 0 differences.
#[test]
#[ignore = "needs make servers; run make test-engines"]
fn live_migration_from_redis_5_0_to_7_4_is_exact() {
    let source = RedisServer::start_engine(Engine::Redis50, ServerOptions::elasticache_like());
    let mut target = RedisServer::start_engine(Engine::Redis74, ServerOptions::default());
    let stderr = live(&source, &mut target, 15);
    for part in [
        "PTTL with the server's TIME in the same transaction",
        "Pausing every client of the source, reads too",
    ] {
        assert!(stderr.contains(part), "{part:?} missing:\n{stderr}");
    }
    assert!(
        !stderr.contains("Using the built-in Redis 7.0 command table"),
        "{stderr}"
    );
}

/// Redis 4.0 → Redis 7.0 under the workload (no stream kinds: 4.0 has none), stopped with
/// SIGTERM: 0 differences.
#[test]
#[ignore = "needs make servers; run make test-engines"]
fn live_migration_from_redis_4_0_to_7_0_is_exact() {
    let source = RedisServer::start_engine(Engine::Redis40, ServerOptions::elasticache_like());
    let mut target = RedisServer::start();
    let stderr = live(&source, &mut target, 8);
    assert!(
        stderr.contains("Pausing every client of the source, reads too"),
        "{stderr}"
    );
}

/// `ferry verify` from `source` to `target` after a run: exit 0, 0 differences (PTTL with
/// ferry's clock where a side has no PEXPIRETIME).
fn verify_after(source: &RedisServer, target: &RedisServer) {
    let out = crate::cli::run_ferry(&[
        "verify",
        "--source",
        &source.url(),
        "--target",
        &target.url(),
    ]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{text}");
}

/// Redis 6.0 → Redis 6.0, the upgrade path of old fleets moving hosts, under the workload,
/// stopped with SIGTERM: the target has no `SET … PXAT` (ferry sends `SET` and `PEXPIREAT`
/// in one `EVAL`) and no `LMPOP` (served blocked pops are re-copied); 0 differences, and
/// `ferry verify` agrees.
#[test]
#[ignore = "needs make servers; run make test-engines"]
fn live_migration_from_redis_6_0_to_6_0_is_exact() {
    let source = RedisServer::start_engine(Engine::Redis60, ServerOptions::elasticache_like());
    let mut target = start(Engine::Redis60);
    let stderr = live(&source, &mut target, 6);
    assert!(
        stderr.contains("SET … PXAT as one EVAL of SET and PEXPIREAT"),
        "{stderr}"
    );
    assert!(!stderr.contains("target-only ("), "{stderr}");
    verify_after(&source, &target);
}

/// Redis 4.0 → Redis 4.0 under the workload (no streams), stopped with SIGTERM: restores
/// carry the TTL left (no `RESTORE … ABSTTL`); 0 differences, and `ferry verify` agrees.
#[test]
#[ignore = "needs make servers; run make test-engines"]
fn live_migration_from_redis_4_0_to_4_0_is_exact() {
    let source = RedisServer::start_engine(Engine::Redis40, ServerOptions::elasticache_like());
    let mut target = start(Engine::Redis40);
    let stderr = live(&source, &mut target, 6);
    assert!(
        stderr.contains("RESTORE with the TTL left when sent (no ABSTTL before Redis 5.0)"),
        "{stderr}"
    );
    verify_after(&source, &target);
}

/// Redis 7.0 → Redis 6.2, toward an older engine, under the workload (with 7.0's `EXPIRE …
/// GT|NX`), stopped with SIGTERM: RDB 10 payloads rewritten to RDB 9, the writes 6.2 refuses
/// with `ERR` re-copied (counted as target-only errors); 0 differences, `ferry verify` agrees.
#[test]
#[ignore = "needs make servers; run make test-engines"]
fn live_migration_from_redis_7_0_to_6_2_is_exact() {
    let source = RedisServer::elasticache_like();
    let mut target = start(Engine::Redis62);
    let stderr = live(&source, &mut target, 6);
    assert!(
        stderr.contains("DUMP payloads rewritten from RDB 10 to RDB 9 before RESTORE"),
        "{stderr}"
    );
    assert!(payloads_rewritten(&stderr) > 9000, "{stderr}");
    // The writes 6.2 refused (7.0's EXPIRE … GT|NX among them) were re-copied, not dropped.
    assert!(
        stderr.contains("target-only (ERR "),
        "no write was refused, so the path did not run:\n{stderr}"
    );
    verify_after(&source, &target);
}

/// The built-in tables of engines before 7.0 (`src/command/builtin_pre7/`, used when such a
/// source refuses `COMMAND`) are each major's `COMMAND` as ferry reads it, rendered by the same
/// generator as the 7.0 table, and read back to the same specs. With `FERRY_REGENERATE=1` the
/// files are written instead.
#[test]
#[ignore = "needs make servers; run make test-engines"]
fn built_in_tables_before_7_0_are_current() {
    use crate::command_table::live_table;
    use ferry::command::{CommandTable, TableOrigin, codegen};
    for (engine, file, level) in [
        (Engine::Redis40, "r40", (4, 0)),
        (Engine::Redis50, "r50", (5, 0)),
        (Engine::Redis60, "r60", (6, 0)),
        (Engine::Redis62, "r62", (6, 2)),
    ] {
        let table = live_table(&start(engine));
        let TableOrigin::Server { version } = table.origin().clone() else {
            unreachable!()
        };
        let mut specs: Vec<_> = table.iter().cloned().collect();
        specs.sort_by(|a, b| a.name.cmp(&b.name));
        let rendered = codegen::render_pre7(&specs, &version);
        let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join(format!("src/command/builtin_pre7/{file}.rs"));
        if std::env::var_os("FERRY_REGENERATE").is_some() {
            std::fs::write(&path, &rendered).unwrap();
            eprintln!("wrote {} from redis-server {version}", path.display());
            continue;
        }
        let checked_in = std::fs::read_to_string(&path).unwrap();
        assert!(
            checked_in == rendered,
            "{} differs from redis-server {version}'s COMMAND; regenerate with `{}`",
            path.display(),
            codegen::REGENERATE_PRE_7
        );
        let builtin = CommandTable::builtin_for(level);
        assert_eq!(builtin.len(), table.len(), "{engine:?}");
        for spec in table.iter() {
            assert_eq!(
                builtin.get(&spec.name),
                Some(spec),
                "{engine:?} {}",
                spec.name
            );
        }
    }
}
