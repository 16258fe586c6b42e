//! Redis 7.4's hash-field TTLs seen from the source: each field's absolute expiry, and which of
//! the source's hashes have any (to name them when a target cannot hold field TTLs).

use std::collections::BTreeMap;

use redis::aio::MultiplexedConnection;

use crate::net::{Endpoint, Engine, NetError};

/// Fields read per `HSCAN` window.
const WINDOW: usize = 512;

/// The absolute expiry (ms) of every field of hash `key` that has one, read in windows: `HSCAN`
/// then `HPEXPIRETIME` on that window's fields (Redis 7.4). Only fields with a TTL are held, so
/// a big hash without field TTLs costs its scan and nothing more.
pub async fn field_expiries(
    con: &mut MultiplexedConnection,
    key: &[u8],
) -> redis::RedisResult<BTreeMap<Vec<u8>, i64>> {
    let mut out = BTreeMap::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, items): (u64, Vec<Vec<u8>>) = redis::cmd("HSCAN")
            .arg(key)
            .arg(cursor)
            .arg("COUNT")
            .arg(WINDOW)
            .query_async(con)
            .await?;
        let fields: Vec<&Vec<u8>> = items.iter().step_by(2).collect();
        if !fields.is_empty() {
            let times: Vec<i64> = redis::cmd("HPEXPIRETIME")
                .arg(key)
                .arg("FIELDS")
                .arg(fields.len())
                .arg(&fields)
                .query_async(con)
                .await?;
            for (f, t) in fields.into_iter().zip(times) {
                if t >= 0 {
                    out.insert(f.clone(), t);
                }
            }
        }
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    Ok(out)
}

/// The source's hashes with field TTLs (Redis 7.4): how many, from `INFO keyspace`'s
/// `subexpiry` per db, and the first one a scan finds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldTtlHashes {
    /// Hashes with at least one field TTL, over every db.
    pub hashes: u64,
    /// The first such hash found: db and key.
    pub first: Option<(u32, Vec<u8>)>,
}

impl std::fmt::Display for FieldTtlHashes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} hash(es) with field TTLs", self.hashes)?;
        if let Some((db, key)) = &self.first {
            write!(f, " (first: db{db} {})", crate::escape::quote(key))?;
        }
        Ok(())
    }
}

/// Hashes scanned for the first one with field TTLs before giving up on naming it.
const FIELD_TTL_SCAN_LIMIT: usize = 100_000;

/// Finds the source's hashes with field TTLs: the count from `INFO keyspace` (`subexpiry`), and
/// the first one from a `SCAN … TYPE hash` of the dbs that have some, reading each hash's
/// `HPEXPIRETIME` a window at a time. Read-only; stops at the first hash found.
pub async fn field_ttl_hashes(source: &Endpoint) -> Result<FieldTtlHashes, NetError> {
    let mut con = source.control().await?;
    let keyspace: String = redis::cmd("INFO")
        .arg("keyspace")
        .query_async(&mut con)
        .await
        .map_err(|e| source.classify(&e))?;
    let per_db = subexpiry(&keyspace);
    let mut out = FieldTtlHashes {
        hashes: per_db.iter().map(|(_, n)| n).sum(),
        first: None,
    };
    let mut scanned = 0;
    for (db, _) in per_db.into_iter().filter(|(_, n)| *n > 0) {
        let ep = source.with_db(i64::from(db));
        let mut con = ep.control().await?;
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("COUNT")
                .arg(1000)
                .arg("TYPE")
                .arg("hash")
                .query_async(&mut con)
                .await
                .map_err(|e| ep.classify(&e))?;
            for key in keys {
                let fields = field_expiries(&mut con, &key)
                    .await
                    .map_err(|e| ep.classify(&e))?;
                if !fields.is_empty() {
                    out.first = Some((db, key));
                    return Ok(out);
                }
                scanned += 1;
                if scanned >= FIELD_TTL_SCAN_LIMIT {
                    return Ok(out);
                }
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
    }
    Ok(out)
}

/// `(db, subexpiry)` of each `dbN:…,subexpiry=M` line of `INFO keyspace` (Redis 7.4).
fn subexpiry(keyspace: &str) -> Vec<(u32, u64)> {
    keyspace
        .lines()
        .filter_map(|l| {
            let (db, fields) = l.strip_prefix("db")?.split_once(':')?;
            let n = fields
                .trim()
                .split(',')
                .find_map(|f| f.strip_prefix("subexpiry="))?;
            Some((db.parse().ok()?, n.parse().ok()?))
        })
        .collect()
}

/// How a plan drops field TTLs, for [`field_ttls_refusal`].
pub const PLAN_REMEDY: &str = "set on_field_ttls = \"drop_field_ttls\" in a plan";

/// The one line that refuses a copy toward a target without field TTLs; `remedy` says how to
/// drop them instead (a plan field, a flag).
pub fn field_ttls_refusal(
    target: &Endpoint,
    te: Engine,
    found: &FieldTtlHashes,
    remedy: &str,
) -> String {
    format!(
        "{} runs {te}, which has no hash-field TTLs, and the source has {found}; {remedy} to copy those fields without their TTLs, or migrate to Redis 7.4 or later",
        target.redacted()
    )
}
