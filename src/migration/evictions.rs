//! Evictions: keys the source drops under `maxmemory` leave no line in `MONITOR`
//! (docs/redis-behaviour.md §5), so the target would keep them. This module notices evictions from the
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

use crate::capture::{PeerRegistry, Role};
use crate::command::Mapper;
use crate::net::{Endpoint, NetError, RawConn, Reply, SourceNodes, info_field};
use crate::verify::{VerifyError, orphans, parse_keyspace, scan_page};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::markers::Markers;
use super::report::{MigrateError, MigrationReport, stage};

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
    source: &SourceNodes,
    target: &Endpoint,
    mapper: Option<&Arc<dyn crate::command::Mapper>>,
) -> Result<Vec<(u32, Vec<u8>)>, VerifyError> {
    let mut tcon = target.control().await?;
    let info: String = redis::cmd("INFO")
        .arg("keyspace")
        .query_async(&mut tcon)
        .await
        .map_err(|e| VerifyError::Net(target.classify(&e)))?;
    // Per source node (one per shard of a cluster), per db.
    let mut source_conns: Vec<HashMap<u32, MultiplexedConnection>> =
        source.all().iter().map(|_| HashMap::new()).collect();
    let mut out = Vec::new();
    for tdb in parse_keyspace(&info).into_keys() {
        let mut con = target.with_db(i64::from(tdb)).control().await?;
        let mut cursor = 0;
        loop {
            let (next, keys) = scan_page(&mut con, cursor, SWEEP_PAGE)
                .await
                .map_err(|e| VerifyError::Net(target.classify(&e)))?;
            // Each target key is asked about on the node of the source key it maps from.
            let mut by_node: Vec<Vec<Vec<u8>>> = source.all().iter().map(|_| Vec::new()).collect();
            for k in keys {
                let i = match mapper {
                    Some(m) if source.is_cluster() => m
                        .unmap_candidates(tdb, &k)
                        .first()
                        .map_or(0, |(_, sk)| source.index_of(sk)),
                    _ => source.index_of(&k),
                };
                by_node[i].push(k);
            }
            for (i, keys) in by_node.iter().enumerate().filter(|(_, k)| !k.is_empty()) {
                let node = &source.all()[i];
                let absent = orphans(node, &mut source_conns[i], mapper, tdb, keys).await?;
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

/// Evicted keys named by the source's keyspace events, with their dbs.
pub(super) type EvictedRx = mpsc::Receiver<(u32, Vec<u8>)>;

/// The source's evictions, which `MONITOR` does not show, and how far they are handled: by
/// keyspace events naming each evicted key (exact), or else by sweeps of the target.
pub(super) struct Evictions {
    /// `None` when capture reads a replica (its stream shows evictions as `DEL`) or the source's
    /// counters cannot be read.
    pub(super) watch: tokio::sync::Mutex<Option<Vec<EvictionWatch>>>,
    /// `evicted_keys` when the migration started.
    pub(super) baseline: u64,
    /// Evicted keys named by keyspace events, each re-copied through a `dirty:` marker.
    pub(super) notified: AtomicU64,
    /// The events do not name every eviction (off, or the subscription broke): sweep instead.
    pub(super) sweeping: AtomicBool,
    /// `evicted_keys` when the last finished sweep started: evictions up to there are handled.
    pub(super) swept_from: AtomicU64,
    /// The events, while the coordinator is not holding them.
    pub(super) events: tokio::sync::Mutex<Option<EvictedRx>>,
    pub(super) subscriber: Option<tokio::task::JoinHandle<()>>,
}

impl Evictions {
    pub(super) async fn connect(
        nodes: &SourceNodes,
        peers: &PeerRegistry,
        from_replica: bool,
    ) -> Evictions {
        let mut ev = Evictions {
            watch: tokio::sync::Mutex::new(None),
            baseline: 0,
            notified: AtomicU64::new(0),
            sweeping: AtomicBool::new(false),
            swept_from: AtomicU64::new(0),
            events: tokio::sync::Mutex::new(None),
            subscriber: None,
        };
        if from_replica {
            return ev;
        }
        // One watch and one subscription per node (each shard of a cluster evicts on its own);
        // the counters add up, the events share one channel.
        let (tx, rx) = mpsc::channel(1 << 16);
        let mut watches = Vec::with_capacity(nodes.len());
        let mut subscribers = Vec::new();
        let mut baseline = 0;
        let mut policy = None;
        for node in nodes.all() {
            let Ok(mut con) = node.control().await else {
                return ev;
            };
            if let Ok(addr) = crate::net::client_addr(&mut con).await {
                peers.register(node, &addr, Role::Control);
            }
            let mut watch = EvictionWatch::new(node.clone(), con);
            // Subscribed before the baseline is read: every eviction it counts can have an event.
            let events = EvictionEvents::subscribe(node).await;
            let Some(n) = watch.evicted_keys().await else {
                return ev;
            };
            baseline += n;
            if policy.is_none() {
                policy = watch.evicting_policy().await;
            }
            match events {
                Ok(events) => {
                    let tx = tx.clone();
                    subscribers.push(async move {
                        if let Err(e) = events.run(tx).await {
                            tracing::debug!(error = %e, "The keyspace event subscription ended.");
                        }
                    });
                }
                // Without a subscription the events cannot name every eviction: swept.
                Err(e) => tracing::debug!(error = %e, "No keyspace event subscription."),
            }
            watches.push(watch);
        }
        drop(tx);
        if let Some(policy) = policy {
            tracing::warn!(
                %policy,
                "The source may evict keys, and evictions leave no trace in MONITOR: ferry \
                 re-copies the keys its keyspace events name (notify-keyspace-events with E and \
                 e), or else sweeps the target whenever the eviction counter grows."
            );
        }
        if !subscribers.is_empty() {
            // A join set: aborting the subscriber drops it, which aborts every subscription.
            ev.subscriber = Some(tokio::spawn(async move {
                let mut set = tokio::task::JoinSet::new();
                for s in subscribers {
                    set.spawn(s);
                }
                while set.join_next().await.is_some() {}
            }));
        }
        ev.watch = tokio::sync::Mutex::new(Some(watches));
        ev.baseline = baseline;
        ev.swept_from = AtomicU64::new(baseline);
        ev.events = tokio::sync::Mutex::new(Some(rx));
        ev
    }

    /// The source's eviction counter now (the sum over its nodes), when it is watched.
    pub(super) async fn count(&self) -> Option<u64> {
        let mut watches = self.watch.lock().await;
        let mut total = 0;
        for w in watches.as_mut()? {
            total += w.evicted_keys().await?;
        }
        Some(total)
    }

    /// Stops relying on keyspace events, saying why once.
    pub(super) fn start_sweeping(&self, why: &str) {
        if !self.sweeping.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "{why}: ferry sweeps the target for evicted keys instead. A key evicted and then \
                 written again can still differ; enable notify-keyspace-events with E and e on \
                 the source (an ElastiCache parameter group) to make evictions exact."
            );
        }
    }

    /// Places a `dirty:` marker for `first` and each event queued behind it.
    pub(super) async fn place(
        &self,
        first: (u32, Vec<u8>),
        rx: &mut EvictedRx,
        markers: &mut Markers,
        report: &std::sync::Mutex<MigrationReport>,
    ) -> Result<(), MigrateError> {
        let mut batch = vec![first];
        while batch.len() < 4096
            && let Ok(next) = rx.try_recv()
        {
            batch.push(next);
        }
        markers.place_dirty(&batch).await?;
        self.notified
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        if let Ok(mut r) = report.lock() {
            r.eviction_recopies += batch.len() as u64;
        }
        Ok(())
    }
}

/// A target that evicts drops keys without an error reply, where no re-copy can see it: say so
/// before anything is copied.
pub(super) async fn warn_if_target_evicts(target: &Endpoint) {
    let Ok(con) = target.control().await else {
        return;
    };
    if let Some(policy) = EvictionWatch::new(target.clone(), con)
        .evicting_policy()
        .await
    {
        tracing::warn!(
            %policy,
            "The target may evict keys when it reaches its memory limit, silently: it would then \
             differ from the source. Use maxmemory-policy noeviction on the target for the \
             migration (ferry then reports OOM replies instead)."
        );
    }
}

/// At the final fence: makes sure every eviction counted so far is handled before the fence
/// drains, by its keyspace event or else by one more sweep of the target. Called once before
/// the write pause (a whole sweep may take long) and once inside it, where a sweep that does not
/// finish within `limit` is abandoned: what it missed is reported.
pub(super) async fn final_evictions(
    ev: &Evictions,
    (source, target): (&SourceNodes, &Endpoint),
    mapper: Option<&Arc<dyn Mapper>>,
    report: &std::sync::Mutex<MigrationReport>,
    markers: &mut Markers,
    limit: Option<Duration>,
) -> Result<(), MigrateError> {
    let Some(now) = ev.count().await else {
        return Ok(());
    };
    if !ev.sweeping.load(Ordering::Relaxed) {
        // The events of evictions already counted are on their way.
        let mut events = ev.events.lock().await;
        let deadline = Instant::now() + Duration::from_secs(1);
        while ev.notified.load(Ordering::Relaxed) < now.saturating_sub(ev.baseline) {
            let Some(rx) = events.as_mut() else { break };
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, rx.recv()).await {
                Ok(Some(first)) => ev.place(first, rx, markers, report).await?,
                _ => break,
            }
        }
        if ev.notified.load(Ordering::Relaxed) >= now.saturating_sub(ev.baseline) {
            return Ok(());
        }
        ev.start_sweeping("Keyspace events did not name every eviction");
    }
    if now <= ev.swept_from.load(Ordering::Relaxed) {
        return Ok(());
    }
    let started = Instant::now();
    let swept = match limit {
        None => sweep(source, target, mapper).await,
        Some(limit) => match tokio::time::timeout(limit, sweep(source, target, mapper)).await {
            Ok(r) => r,
            Err(_) => {
                tracing::warn!(
                    limit_ms = limit.as_millis() as u64,
                    "The eviction sweep did not fit in the write pause; keys evicted since the last sweep may remain on the target."
                );
                return Ok(());
            }
        },
    };
    let keys = swept.map_err(|e| stage("eviction sweep", e))?;
    markers.place_dirty(&keys).await?;
    ev.swept_from.store(now, Ordering::Relaxed);
    if let Ok(mut r) = report.lock() {
        r.eviction_recopies += keys.len() as u64;
    }
    tracing::info!(
        keys = keys.len(),
        ms = started.elapsed().as_millis() as u64,
        paused = limit.is_some(),
        "Final eviction sweep: target keys without a source key are re-copied."
    );
    Ok(())
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
