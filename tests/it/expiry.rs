//! Keys that expire while replay lags: a write that reached a live key on the source must not
//! reach an expired one on the target (where it would create a new key, without a TTL).
//! The classic case is a rate limiter: `INCR` on a counter with a short TTL.

use std::time::Duration;

use crate::migrate::start_past_snapshot;
use crate::support::{OracleOptions, RedisServer, compare};

#[test]
fn writes_to_keys_that_expire_during_replay_lag_stay_exact() {
    let source = RedisServer::start();
    let target = RedisServer::start();
    let mut con = source.conn();
    for i in 0..100 {
        let _: () = redis::cmd("SET")
            .arg(format!("k{i}"))
            .arg(i)
            .query(&mut con)
            .unwrap();
    }
    let state = tempfile::tempdir().unwrap();
    let mut ferry = start_past_snapshot(&source, &target, state.path(), &[]);
    std::thread::sleep(Duration::from_millis(500));

    // The target stalls, so replay lags by about two seconds.
    let _: () = redis::cmd("CLIENT")
        .arg(&["PAUSE", "2000", "WRITE"])
        .query(&mut target.conn())
        .unwrap();
    // Rate limiters: a window opens with a TTL, later hits increment it, and the window ends
    // (on the source) before replay gets there.
    for i in 0..20 {
        let _: () = redis::cmd("SET")
            .arg(format!("rl:{i}"))
            .arg(1)
            .arg("PX")
            .arg(600 + 20 * i)
            .query(&mut con)
            .unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    for i in 0..20 {
        let n: i64 = redis::cmd("INCR")
            .arg(format!("rl:{i}"))
            .query(&mut con)
            .unwrap();
        assert_eq!(n, 2);
    }
    let _: () = redis::cmd("SET")
        .arg("list-window")
        .arg("x")
        .arg("PX")
        .arg(500)
        .query(&mut con)
        .unwrap();
    let _: () = redis::cmd("APPEND")
        .arg("list-window")
        .arg("y")
        .query(&mut con)
        .unwrap();
    // Every window has ended on the source.
    std::thread::sleep(Duration::from_millis(2500));
    let left: i64 = redis::cmd("EXISTS").arg("rl:0").query(&mut con).unwrap();
    assert_eq!(left, 0);

    let code = ferry.terminate(Duration::from_secs(60));
    let stderr = ferry.stderr();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("keys re-copied after expiring during replay lag"),
        "{stderr}"
    );
    let oracle = compare(&source.url(), &target.url(), &OracleOptions::default());
    eprintln!("{oracle}");
    assert!(oracle.keys_compared >= 100, "{oracle}");
    oracle.assert_identical();
}
