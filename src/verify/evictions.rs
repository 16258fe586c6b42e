//! Evictions: keys the source drops under `maxmemory` leave no line in `MONITOR`
//! (redis-facts §5), so the target would keep them. This module notices evictions from the
//! source's counters and finds the target keys whose source keys are gone.
//!
//! ## Behavior
//! - [`EvictionWatch`] reads `evicted_keys` from `INFO stats`; an increase means some keys
//!   vanished from the source without a trace in the stream.
//! - [`EvictionEvents`] names each evicted key from the source's keyspace events
//!   (`notify-keyspace-events` with `E` and `e`; on ElastiCache, a parameter group setting).
//!   The caller re-copies each named key through a fence placed after the event arrived, so
//!   after the eviction: exact even for a key evicted and then written again. Events are
//!   pub/sub and can be off or lost, so the caller checks them against the counter.
//! - [`sweep`] pages through every target db with `SCAN` and asks the source which keys still
//!   exist (`EXISTS`, through the plan's renames). The keys with no source key are returned;
//!   the caller has them re-copied through fences, which deletes them on the target at a
//!   position in the stream where the source lacks them (or copies them, if they were written
//!   again meanwhile). The `EXISTS` check only picks candidates; the fenced re-copy decides.
//! - A sweep misses a key evicted after the sweep passed it, so a sweep is repeated while the
//!   counter keeps growing, and once more inside the final fence's write pause.

use std::collections::HashMap;
use std::sync::Arc;

use redis::aio::MultiplexedConnection;
use tokio::sync::mpsc;

use super::{VerifyError, orphans, parse_keyspace, scan_page};
use crate::net::{Endpoint, NetError, RawConn, Reply, info_field};

/// Target keys read per `SCAN` step of a sweep.
const SWEEP_PAGE: usize = 1000;

/// Watches the source's eviction counter.
pub struct EvictionWatch {
    con: MultiplexedConnection,
    source: Endpoint,
}

impl EvictionWatch {
    /// A watch on `source`, through `con` (a connection ferry's capture ignores).
    pub fn new(source: Endpoint, con: MultiplexedConnection) -> EvictionWatch {
        EvictionWatch { con, source }
    }

    /// The source's `evicted_keys` counter, or `None` when `INFO` cannot say. A broken
    /// connection is opened again once, so a network blip does not end the watch.
    pub async fn evicted_keys(&mut self) -> Option<u64> {
        let mut info = redis::cmd("INFO")
            .arg("stats")
            .query_async::<String>(&mut self.con)
            .await;
        if info.is_err()
            && let Ok(con) = self.source.control().await
        {
            self.con = con;
            info = redis::cmd("INFO")
                .arg("stats")
                .query_async::<String>(&mut self.con)
                .await;
        }
        info_field(&info.ok()?, "evicted_keys")?.parse().ok()
    }

    /// The source's `maxmemory-policy` when it may evict keys (anything but `noeviction`).
    pub async fn evicting_policy(&mut self) -> Option<String> {
        let info: String = redis::cmd("INFO")
            .arg("memory")
            .query_async(&mut self.con)
            .await
            .ok()?;
        let policy = info_field(&info, "maxmemory_policy")?;
        let maxmemory: u64 = info_field(&info, "maxmemory")?.parse().ok()?;
        // With no memory limit nothing is evicted, whatever the policy says.
        (policy != "noeviction" && maxmemory > 0).then(|| policy.to_string())
    }

    /// The source this watch reads.
    pub fn source(&self) -> &Endpoint {
        &self.source
    }
}

/// A confirmed subscription to the source's eviction events.
pub struct EvictionEvents {
    con: RawConn,
}

impl EvictionEvents {
    /// Subscribes, and returns once the source confirmed: evictions counted after this are
    /// named by events (when the source sends them at all).
    pub async fn subscribe(source: &Endpoint) -> Result<EvictionEvents, NetError> {
        let mut con = source.raw().await?;
        con.send(&[b"PSUBSCRIBE", PATTERN]).await?;
        con.read_array("PSUBSCRIBE").await?;
        Ok(EvictionEvents { con })
    }

    /// Sends every key the events say was evicted, with its db, until the connection breaks
    /// (an error) or `tx` closes (`Ok`).
    pub async fn run(mut self, tx: mpsc::Sender<(u32, Vec<u8>)>) -> Result<(), NetError> {
        loop {
            let msg = self.con.read_array("PSUBSCRIBE").await?;
            if let [
                Reply::Bulk(Some(kind)),
                _,
                Reply::Bulk(Some(channel)),
                Reply::Bulk(Some(key)),
            ] = msg.as_slice()
                && kind.as_slice() == b"pmessage"
                && let Some(db) = event_db(channel)
                && tx.send((db, key.clone())).await.is_err()
            {
                return Ok(());
            }
        }
    }
}

/// Keyspace events for evictions, in every db.
const PATTERN: &[u8] = b"__keyevent@*__:evicted";

/// The db of a keyspace event channel `__keyevent@<db>__:<event>`.
fn event_db(channel: &[u8]) -> Option<u32> {
    let rest = channel.strip_prefix(b"__keyevent@")?;
    let end = rest.iter().position(|b| *b == b'_')?;
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

/// Every target key whose source key no longer exists, named by its source db and key.
pub async fn sweep(
    source: &Endpoint,
    target: &Endpoint,
    mapper: Option<&Arc<dyn crate::replay::Mapper>>,
) -> Result<Vec<(u32, Vec<u8>)>, VerifyError> {
    let mut tcon = target.control().await?;
    let info: String = redis::cmd("INFO")
        .arg("keyspace")
        .query_async(&mut tcon)
        .await
        .map_err(|e| VerifyError::Net(target.classify(&e)))?;
    let mut source_conns: HashMap<u32, MultiplexedConnection> = HashMap::new();
    let mut out = Vec::new();
    for tdb in parse_keyspace(&info).into_keys() {
        let mut con = target.with_db(i64::from(tdb)).control().await?;
        let mut cursor = 0;
        loop {
            let (next, keys) = scan_page(&mut con, cursor, SWEEP_PAGE)
                .await
                .map_err(|e| VerifyError::Net(target.classify(&e)))?;
            if !keys.is_empty() {
                let absent = orphans(source, &mut source_conns, mapper, tdb, &keys).await?;
                out.extend(
                    absent
                        .into_iter()
                        .flat_map(|(db, keys)| keys.into_iter().map(move |k| (db, k))),
                );
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::event_db;
    use crate::net::info_field;

    #[test]
    fn reads_the_db_of_an_event_channel() {
        assert_eq!(event_db(b"__keyevent@0__:evicted"), Some(0));
        assert_eq!(event_db(b"__keyevent@15__:evicted"), Some(15));
        assert_eq!(event_db(b"__keyspace@1__:k"), None);
        assert_eq!(event_db(b"__keyevent@x__:evicted"), None);
    }

    #[test]
    fn reads_info_fields_by_whole_name() {
        let info =
            "# Stats\r\nevicted_keys_x:9\r\nevicted_keys:42\r\nmaxmemory_policy:allkeys-lru\r\n";
        assert_eq!(info_field(info, "evicted_keys"), Some("42"));
        assert_eq!(info_field(info, "maxmemory_policy"), Some("allkeys-lru"));
        assert_eq!(info_field(info, "expired_keys"), None);
    }
}
