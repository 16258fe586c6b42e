//! Capture from a replica: finding a healthy one, waiting for it to catch up at the final
//! fence, and copying the stream-group positions a replica's stream cannot carry.

use std::time::{Duration, Instant};

use crate::net::Endpoint;
use crate::replay::StitchShared;

use super::report::{MigrateError, stage};

/// Finds a healthy replica of `source` from `INFO replication`.
pub(super) async fn find_replica(source: &Endpoint) -> Option<Endpoint> {
    let mut con = source.control().await.ok()?;
    let info: String = redis::cmd("INFO")
        .arg("replication")
        .query_async(&mut con)
        .await
        .ok()?;
    for line in info.lines().filter(|l| l.starts_with("slave")) {
        // `slave0:ip=::1,port=6380,state=online,…`: only the first colon ends the name (an IPv6
        // address has more).
        let Some((_, fields)) = line.split_once(':') else {
            continue;
        };
        let field = |k: &str| {
            fields
                .split(',')
                .find_map(|f| f.strip_prefix(k))
                .map(str::to_string)
        };
        let (Some(ip), Some(port)) = (field("ip="), field("port=")) else {
            continue;
        };
        if field("state=").as_deref() != Some("online") {
            continue;
        }
        let Ok(port) = port.parse() else { continue };
        let ep = source.with_host_port(&ip, port);
        let Ok(mut rc) = ep.control().await else {
            continue;
        };
        let rinfo: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut rc)
            .await
            .unwrap_or_default();
        if rinfo.contains("master_link_status:up") {
            return Some(ep);
        }
    }
    None
}

/// Copies consumer-group positions (last-delivered id and entries-read) of the streams a
/// replica's stream could not carry exactly, from the paused primary to the target.
pub(super) async fn fix_stream_groups(
    shared: &StitchShared,
    primaries: &[Endpoint],
    shard_of: impl Fn(&[u8]) -> usize,
    target: &Endpoint,
) -> Result<(), MigrateError> {
    let keys: Vec<(u32, Vec<u8>)> = shared
        .group_fixups
        .lock()
        .map(|f| f.iter().cloned().collect())
        .unwrap_or_default();
    if keys.is_empty() {
        return Ok(());
    }
    let mut conns = Vec::with_capacity(primaries.len());
    for primary in primaries {
        conns.push(primary.control().await?);
    }
    // A cluster target: each key's groups are set on the primary serving its slot.
    let target_cluster = crate::net::cluster::Topology::discover(target).await?;
    let mut targets: std::collections::HashMap<String, redis::aio::MultiplexedConnection> =
        std::collections::HashMap::new();
    for (db, key) in keys {
        // The key's primary on the source (its shard's, for a cluster source).
        let p = &mut conns[shard_of(&key).min(primaries.len() - 1)];
        let tnode = target_cluster
            .as_ref()
            .map_or(target, |t| t.primary_of(&key));
        let t = match targets.entry(tnode.redacted().to_string()) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(tnode.control().await?),
        };
        let err = |e: redis::RedisError| stage("final fence", format!("stream groups: {e}"));
        redis::cmd("SELECT")
            .arg(db)
            .query_async::<()>(p)
            .await
            .map_err(err)?;
        redis::cmd("SELECT")
            .arg(db)
            .query_async::<()>(t)
            .await
            .map_err(err)?;
        let groups: Vec<std::collections::HashMap<String, redis::Value>> = match redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&key)
            .query_async(p)
            .await
        {
            Ok(g) => g,
            // The stream is gone or not a stream any more: nothing to fix.
            Err(_) => continue,
        };
        for g in groups {
            let text = |k: &str| match g.get(k) {
                Some(redis::Value::BulkString(b)) => Some(String::from_utf8_lossy(b).into_owned()),
                Some(redis::Value::SimpleString(s)) => Some(s.clone()),
                Some(redis::Value::Int(i)) => Some(i.to_string()),
                _ => None,
            };
            let (Some(name), Some(last)) = (text("name"), text("last-delivered-id")) else {
                continue;
            };
            let mut cmd = redis::cmd("XGROUP");
            cmd.arg("SETID").arg(&key).arg(name).arg(last);
            if let Some(n) = text("entries-read") {
                cmd.arg("ENTRIESREAD").arg(n);
            }
            cmd.query_async::<()>(t).await.map_err(err)?;
        }
    }
    Ok(())
}

/// After pausing the primary, waits until the replica has applied everything it was sent.
pub(super) async fn wait_replica_caught_up(primary: &Endpoint, replica: &Endpoint) {
    let offset = |info: &str, key: &str| -> Option<i64> {
        info.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().parse().ok())
    };
    let (Ok(mut p), Ok(mut r)) = (primary.control().await, replica.control().await) else {
        return;
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let pi: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut p)
            .await
            .unwrap_or_default();
        let ri: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut r)
            .await
            .unwrap_or_default();
        if let (Some(a), Some(b)) = (
            offset(&pi, "master_repl_offset:"),
            offset(&ri, "slave_repl_offset:"),
        ) && b >= a
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
