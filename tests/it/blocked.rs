//! Blocked clients served by a later push (docs/redis-behaviour.md §4): the source's MONITOR shows the
//! blocking command when the client blocks and nothing when a push serves it, so the pop is
//! invisible. Each consumer here blocks, is served by a push (plain, in MULTI, from a script),
//! and disconnects without another command; the target must still equal the source.

use std::time::{Duration, Instant};

use crate::migrate::start_past_snapshot;
use crate::support::{OracleOptions, RedisServer, compare};

fn blocked_clients(con: &mut redis::Connection) -> usize {
    let info: String = redis::cmd("INFO").arg("clients").query(con).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("blocked_clients:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn pops_served_after_blocking_are_replayed_exactly() {
    let source = RedisServer::start();
    let target = RedisServer::start();
    let mut con = source.conn();
    // Keys the snapshot copies, so replay starts from a settled target.
    for i in 0..200 {
        let _: () = redis::cmd("SET")
            .arg(format!("k{i}"))
            .arg(i)
            .query(&mut con)
            .unwrap();
    }
    let _: () = redis::cmd("XGROUP")
        .arg(&["CREATE", "s", "g", "$", "MKSTREAM"])
        .query(&mut con)
        .unwrap();

    let state = tempfile::tempdir().unwrap();
    let mut ferry = start_past_snapshot(&source, &target, state.path(), &[]);

    // Each consumer blocks on an empty key, is served, and disconnects (its thread ends and
    // drops the connection) without sending anything else.
    let consumers: Vec<(u32, Vec<&str>)> = vec![
        (0, vec!["BRPOP", "q1", "0"]),
        (0, vec!["BLMOVE", "src", "dst", "RIGHT", "LEFT", "0"]),
        (0, vec!["BZPOPMIN", "z", "0"]),
        (0, vec!["BLMPOP", "0", "1", "q4", "LEFT", "COUNT", "2"]),
        (
            0,
            vec![
                "XREADGROUP",
                "GROUP",
                "g",
                "c1",
                "BLOCK",
                "0",
                "STREAMS",
                "s",
                ">",
            ],
        ),
        (2, vec!["BRPOPLPUSH", "q6", "q6dst", "30"]),
    ];
    let threads: Vec<_> = consumers
        .iter()
        .map(|(db, args)| {
            let mut c = source.conn();
            let db = *db;
            let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
            std::thread::spawn(move || {
                let _: () = redis::cmd("SELECT").arg(db).query(&mut c).unwrap();
                let reply: redis::Value =
                    redis::cmd(&args[0]).arg(&args[1..]).query(&mut c).unwrap();
                assert_ne!(reply, redis::Value::Nil, "{args:?} timed out");
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while blocked_clients(&mut con) < consumers.len() {
        assert!(Instant::now() < deadline, "consumers never blocked");
        std::thread::sleep(Duration::from_millis(10));
    }

    let _: () = redis::cmd("LPUSH")
        .arg(&["q1", "j1"])
        .query(&mut con)
        .unwrap();
    let _: () = redis::pipe()
        .atomic()
        .cmd("RPUSH")
        .arg(&["src", "j2", "j2b"])
        .query(&mut con)
        .unwrap();
    let _: () = redis::cmd("EVAL")
        .arg("redis.call('ZADD', KEYS[1], 1, 'a', 2, 'b'); return 0")
        .arg(1)
        .arg("z")
        .query(&mut con)
        .unwrap();
    let _: () = redis::cmd("RPUSH")
        .arg(&["q4", "a", "b", "c"])
        .query(&mut con)
        .unwrap();
    let _: String = redis::cmd("XADD")
        .arg(&["s", "*", "f", "v"])
        .query(&mut con)
        .unwrap();
    let _: () = redis::cmd("SELECT").arg(2).query(&mut con).unwrap();
    let _: () = redis::cmd("LPUSH")
        .arg(&["q6", "j6"])
        .query(&mut con)
        .unwrap();
    for t in threads {
        t.join().unwrap();
    }
    // What the invisible pops left on the source.
    let _: () = redis::cmd("SELECT").arg(0).query(&mut con).unwrap();
    let q4: Vec<String> = redis::cmd("LRANGE")
        .arg(&["q4", "0", "-1"])
        .query(&mut con)
        .unwrap();
    assert_eq!(q4, ["c"]);
    let dst: Vec<String> = redis::cmd("LRANGE")
        .arg(&["dst", "0", "-1"])
        .query(&mut con)
        .unwrap();
    assert_eq!(dst, ["j2b"]);

    std::thread::sleep(Duration::from_millis(300));
    let code = ferry.terminate(Duration::from_secs(60));
    let stderr = ferry.stderr();
    assert_eq!(code, Some(0), "{stderr}");
    let oracle = compare(&source.url(), &target.url(), &OracleOptions::default());
    eprintln!("{oracle}");
    assert!(oracle.keys_compared >= 200, "{oracle}");
    oracle.assert_identical();
}

/// Regression (issue 14: a 6.0 → 7.0 engine run once left `queue:mailers`, emptied on the source
/// by a served `BRPOP`, on the target). A server serves a blocked client until it *handles* its
/// timeout, once per event-loop turn: a push that runs after a stall (here `DEBUG SLEEP`,
/// pipelined with the push so both run in one turn) serves a client whose timeout passed
/// seconds ago by the stream's clock. The ledger must still count that client as blocked.
#[test]
fn a_pop_served_after_a_stall_past_its_timeout_is_replayed_exactly() {
    let opts = crate::support::ServerOptions {
        extra_config: vec!["enable-debug-command yes".into()],
        ..crate::support::ServerOptions::default()
    };
    let source = RedisServer::start_with(opts);
    let target = RedisServer::start();
    let mut con = source.conn();
    let _: () = redis::cmd("SET").arg("k").arg(1).query(&mut con).unwrap();
    let state = tempfile::tempdir().unwrap();
    let mut ferry = start_past_snapshot(&source, &target, state.path(), &[]);

    let consumer = {
        let mut c = source.conn();
        std::thread::spawn(move || {
            redis::cmd("BRPOP")
                .arg("q")
                .arg(1)
                .query::<Option<(String, String)>>(&mut c)
                .unwrap()
        })
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while blocked_clients(&mut con) == 0 {
        assert!(Instant::now() < deadline, "the consumer never blocked");
        std::thread::sleep(Duration::from_millis(10));
    }
    // ferry re-copies `q` for the BRPOP line itself (its pop may have been served at once):
    // let that read land first, so only the ledger can account for what follows.
    std::thread::sleep(Duration::from_millis(500));
    // The server stalls 2.5 s, past the 1 s timeout, then runs the push before it handles the
    // timeout: the consumer gets the job.
    let _: () = redis::pipe()
        .cmd("DEBUG")
        .arg("SLEEP")
        .arg(2.5)
        .ignore()
        .cmd("LPUSH")
        .arg("q")
        .arg("job")
        .ignore()
        .query(&mut con)
        .unwrap();
    let got = consumer.join().unwrap();
    assert_eq!(got, Some(("q".into(), "job".into())), "not served late");
    let _: () = redis::cmd("SET")
        .arg("after")
        .arg(1)
        .query(&mut con)
        .unwrap();
    ferry.wait_log("Status.", Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(2));
    let code = ferry.terminate(Duration::from_secs(60));
    let stderr = ferry.stderr();
    assert_eq!(code, Some(0), "{stderr}");
    let exists: i64 = redis::cmd("EXISTS")
        .arg("q")
        .query(&mut target.conn())
        .unwrap();
    assert_eq!(
        exists, 0,
        "the served pop is missing on the target:\n{stderr}"
    );
    compare(&source.url(), &target.url(), &OracleOptions::default()).assert_identical();
}
