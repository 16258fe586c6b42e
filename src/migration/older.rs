//! A target older than the source, or without forms replay writes (Redis 4.0 to 6.2): the
//! refusal of a source with streams toward Redis 4.0, and what replay writes instead, said once
//! at start (docs/redis-behaviour.md §22).

use super::MigrateError;
use crate::escape::Quoted;
use crate::net::{Endpoint, Engine};

/// Keys read per `SCAN` while looking for streams.
const SCAN_COUNT: usize = 1000;

/// The streams a source has: how many, and the first found.
#[derive(Debug)]
pub(super) struct Streams {
    pub count: u64,
    pub first: (u32, Vec<u8>),
}

/// Refuses a source that has streams toward a target without them (Redis 4.0): one line naming
/// the first stream and the count.
pub(super) async fn check_streams(
    source: &Endpoint,
    target: &Endpoint,
    (se, te): (Engine, Engine),
) -> Result<(), MigrateError> {
    if !se.has_streams() || te.has_streams() {
        return Ok(());
    }
    let Some(found) = find_streams(source).await? else {
        return Ok(());
    };
    let (db, key) = &found.first;
    Err(MigrateError::Unsupported(format!(
        "{} has {} stream(s) (first: db{db} {}), and {} runs {te}, which has no streams (Redis 5.0); migrate toward Redis 5.0 or later, or delete the streams first",
        source.redacted(),
        found.count,
        Quoted(key),
        target.redacted(),
    )))
}

/// Every stream of every db of `source`, by `SCAN` and `TYPE` (`SCAN … TYPE` is Redis 6.0's).
async fn find_streams(source: &Endpoint) -> Result<Option<Streams>, MigrateError> {
    let mut con = source.control().await?;
    let fail = |e: redis::RedisError| MigrateError::from(source.classify(&e));
    let mut found: Option<Streams> = None;
    for db in super::cluster::source_dbs(source).await? {
        redis::cmd("SELECT")
            .arg(db)
            .query_async::<()>(&mut con)
            .await
            .map_err(fail)?;
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("COUNT")
                .arg(SCAN_COUNT)
                .query_async(&mut con)
                .await
                .map_err(fail)?;
            if !keys.is_empty() {
                let mut pipe = redis::pipe();
                for k in &keys {
                    pipe.cmd("TYPE").arg(k.as_slice());
                }
                let types: Vec<String> = pipe.query_async(&mut con).await.map_err(fail)?;
                for (k, t) in keys.iter().zip(types) {
                    if t == "stream" {
                        match &mut found {
                            Some(s) => s.count += 1,
                            None => {
                                found = Some(Streams {
                                    count: 1,
                                    first: (db, k.clone()),
                                })
                            }
                        }
                    }
                }
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    Ok(found)
}

/// What replay writes for the forms the target lacks, for the log line of the engines.
pub fn replay_forms((se, te): (Engine, Engine)) -> String {
    let t = te.redis_level();
    let mut how = Vec::new();
    if t < (6, 2) {
        how.push("SET … PXAT as one EVAL of SET and PEXPIREAT (no PXAT before Redis 6.2)");
    }
    if t < (5, 0) {
        how.push("RESTORE with the TTL left when sent (no ABSTTL before Redis 5.0)");
    }
    if t < (7, 0) {
        how.push("blocked pops served on the source re-copied, not replayed as LMPOP/ZMPOP/LMOVE");
    }
    if te.may_lack_commands_of(&se) {
        how.push("writes the target refuses with ERR (commands or options it may lack) re-copied from the source");
    }
    if how.is_empty() {
        "the source's writes, rewritten with absolute expiries".to_string()
    } else {
        how.join("; ")
    }
}
