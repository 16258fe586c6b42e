//! The command table against a real server: the built-in table is Redis 7.0.15's, key
//! extraction equals `COMMAND GETKEYSANDFLAGS` over the corpus, and write flags equal
//! `COMMAND INFO`.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;

use ferry::command::{CommandTable, TableOrigin, codegen};
use ferry::escape::{Quoted, unquote_args};
use redis::Value;

use crate::support::RedisServer;

pub(crate) fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

pub(crate) fn live_table(server: &RedisServer) -> CommandTable {
    rt().block_on(async {
        let ep = ferry::net::Endpoint::parse(&server.url()).unwrap();
        let mut con = ep.control().await.unwrap();
        CommandTable::load(&mut con).await.unwrap()
    })
}

pub(crate) fn corpus() -> Vec<(usize, Vec<Vec<u8>>)> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/keys-corpus.txt");
    let text = std::fs::read(&path).unwrap();
    text.split(|b| *b == b'\n')
        .enumerate()
        .filter(|(_, l)| !l.is_empty() && l[0] != b'#')
        .map(|(i, l)| {
            let args = unquote_args(l).unwrap_or_else(|e| panic!("corpus line {}: {e:?}", i + 1));
            (i + 1, args)
        })
        .collect()
}

type KeysAndFlags = Vec<(Vec<u8>, BTreeSet<String>)>;

/// The server's answer; errors mean "no keys" (the command has none, or the arguments give none).
fn server_keys(con: &mut redis::Connection, args: &[Vec<u8>]) -> KeysAndFlags {
    let mut cmd = redis::cmd("COMMAND");
    cmd.arg("GETKEYSANDFLAGS");
    for a in args {
        cmd.arg(a.as_slice());
    }
    match cmd.query::<Value>(con) {
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.contains("no key arguments")
                    || msg.contains("Invalid arguments")
                    || msg.contains("Invalid number of arguments")
                    || msg.contains("wrong number of arguments"),
                "unexpected GETKEYSANDFLAGS error for {:?}: {msg}",
                args.iter()
                    .map(|a| Quoted(a).to_string())
                    .collect::<Vec<_>>()
            );
            Vec::new()
        }
        Ok(Value::Array(items)) => items
            .into_iter()
            .map(|item| match item {
                Value::Array(mut pair) if pair.len() == 2 => {
                    let flags = match pair.pop().unwrap() {
                        Value::Array(f) | Value::Set(f) => f
                            .into_iter()
                            .map(|v| redis::from_redis_value::<String>(v).unwrap())
                            .collect(),
                        other => panic!("bad flags {other:?}"),
                    };
                    let key = redis::from_redis_value::<Vec<u8>>(pair.pop().unwrap()).unwrap();
                    (key, flags)
                }
                other => panic!("bad GETKEYSANDFLAGS item {other:?}"),
            })
            .collect(),
        Ok(other) => panic!("bad GETKEYSANDFLAGS reply {other:?}"),
    }
}

pub(crate) fn ferry_keys(table: &CommandTable, args: &[Vec<u8>]) -> KeysAndFlags {
    let argv = ferry::command::Argv::from_args(args);
    table
        .keys(&argv)
        .into_iter()
        .map(|k| {
            (
                argv.get(k.pos).unwrap().to_vec(),
                k.flags.names().map(String::from).collect(),
            )
        })
        .collect()
}

/// Every write command and subcommand of the server, by full name (`xgroup|create`).
fn server_write_commands(con: &mut redis::Connection) -> HashMap<String, bool> {
    let reply: Value = redis::cmd("COMMAND").query(con).unwrap();
    let mut out = HashMap::new();
    fn walk(v: &Value, out: &mut HashMap<String, bool>) {
        let Value::Array(f) = v else {
            panic!("bad COMMAND entry")
        };
        let name: String = redis::from_redis_value(f[0].clone()).unwrap();
        let flags: Vec<String> = redis::from_redis_value(f[2].clone()).unwrap();
        out.insert(name, flags.iter().any(|f| f == "write"));
        if let Value::Array(subs) = &f[9] {
            for s in subs {
                walk(s, out);
            }
        }
    }
    let Value::Array(cmds) = reply else {
        panic!("bad COMMAND reply")
    };
    for c in &cmds {
        walk(c, &mut out);
    }
    out
}

#[test]
fn builtin_table_is_current() {
    let server = RedisServer::start();
    let table = live_table(&server);
    let TableOrigin::Server { version } = table.origin().clone() else {
        unreachable!()
    };
    let mut specs: Vec<_> = table.iter().cloned().collect();
    specs.sort_by(|a, b| a.name.cmp(&b.name));
    let rendered = codegen::render(&specs, &version);
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/command/builtin.rs");
    if std::env::var_os("FERRY_REGENERATE").is_some() {
        std::fs::write(&path, &rendered).unwrap();
        eprintln!("wrote {} from redis-server {version}", path.display());
        return;
    }
    let checked_in = std::fs::read_to_string(&path).unwrap();
    assert!(
        checked_in.contains(&format!("@generated from redis-server {version}.")),
        "the built-in table was generated from another Redis version than this server ({version})"
    );
    assert!(
        checked_in == rendered,
        "src/command/builtin.rs differs from this server's COMMAND; regenerate with `{}`",
        codegen::REGENERATE
    );
    // And the built-in table reads back to the same specs.
    let builtin = CommandTable::builtin();
    assert_eq!(builtin.len(), table.len());
    for spec in table.iter() {
        assert_eq!(builtin.get(&spec.name), Some(spec), "{}", spec.name);
    }
}

#[test]
fn key_extraction_matches_getkeysandflags_over_the_corpus() {
    let server = RedisServer::start();
    let mut con = server.conn();
    let live = live_table(&server);
    let corpus = corpus();
    assert!(
        corpus.len() >= 200,
        "corpus has only {} commands",
        corpus.len()
    );
    let mut with_keys = 0;
    let mut mismatches = Vec::new();
    for (line, args) in &corpus {
        let expected = server_keys(&mut con, args);
        with_keys += usize::from(!expected.is_empty());
        for (name, table) in [("builtin", CommandTable::builtin()), ("live", &live)] {
            let got = ferry_keys(table, args);
            if got != expected {
                mismatches.push(format!(
                    "line {line} ({name} table): {}\n  server: {expected:?}\n  ferry:  {got:?}",
                    args.iter()
                        .map(|a| Quoted(a).to_string())
                        .collect::<Vec<_>>()
                        .join(" ")
                ));
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} mismatches:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    assert!(
        with_keys >= 150,
        "only {with_keys} corpus commands have keys"
    );
}

#[test]
fn write_flags_match_command_info_and_corpus_covers_every_write_command() {
    let server = RedisServer::start();
    let mut con = server.conn();
    let server_flags = server_write_commands(&mut con);
    let live = live_table(&server);
    let mut covered = BTreeSet::new();
    for (line, args) in corpus() {
        let argv = ferry::command::Argv::from_args(&args);
        for table in [CommandTable::builtin(), &live] {
            let spec = table
                .lookup(&argv)
                .unwrap_or_else(|| panic!("line {line}: unknown command"));
            assert_eq!(
                spec.is_write(),
                server_flags[&spec.name],
                "line {line}: write flag of {}",
                spec.name
            );
            covered.insert(spec.name.clone());
        }
    }
    let missing: Vec<_> = server_flags
        .iter()
        .filter(|(name, write)| **write && !covered.contains(*name))
        .map(|(n, _)| n.clone())
        .collect();
    assert!(
        missing.is_empty(),
        "write commands missing from the corpus: {missing:?}"
    );
    assert!(server_flags.values().filter(|w| **w).count() >= 100);
}

#[test]
fn elasticache_like_table_lacks_renamed_commands() {
    let server = RedisServer::elasticache_like();
    let table = live_table(&server);
    for gone in ["config", "sync", "psync", "debug", "migrate", "replicaof"] {
        assert!(table.get(gone).is_none(), "{gone} should be renamed away");
        assert!(CommandTable::builtin().get(gone).is_some());
    }
    let argv = ferry::command::Argv::from_args(["CONFIG", "GET", "x"]);
    assert_eq!(table.classify(&argv), ferry::command::Class::Unknown);
    assert!(table.get("set").unwrap().is_write());
}
