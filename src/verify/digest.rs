//! Type-aware digests of one key's value, read in windows so a big collection is never held in
//! memory: ordered types (list, zset, stream) feed a running hash, unordered ones (hash, set)
//! an order-independent sum and xor of per-element hashes.

use std::collections::hash_map::DefaultHasher;
use std::hash::Hasher;

use redis::Value;
use redis::aio::MultiplexedConnection;

/// Elements read per command.
pub(crate) const WINDOW: usize = 512;

/// A 64-bit hash of a sequence of byte strings (length-prefixed, so boundaries count).
/// `DefaultHasher::new()` has fixed keys, so both sides hash alike within one process.
pub(crate) fn hash_parts(parts: &[&[u8]]) -> u64 {
    let mut h = DefaultHasher::new();
    for p in parts {
        h.write_usize(p.len());
        h.write(p);
    }
    h.finish()
}

/// Order-independent accumulator of element hashes.
#[derive(Default)]
struct Unordered {
    sum: u64,
    xor: u64,
}

impl Unordered {
    fn add(&mut self, h: u64) {
        self.sum = self.sum.wrapping_add(h);
        self.xor ^= h.rotate_left(17).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// Reads the value of `key` (of type `ty`) and returns its digest; `None` for a type ferry cannot
/// read element by element (module types), whose DUMP payloads are then the only comparison.
pub(crate) async fn digest(
    con: &mut MultiplexedConnection,
    key: &[u8],
    ty: &str,
) -> redis::RedisResult<Option<u64>> {
    let d = match ty {
        "string" => {
            let v: Value = redis::cmd("GET").arg(key).query_async(con).await?;
            hash_parts(&[b"string", &bytes(&v)])
        }
        "list" => list(con, key).await?,
        "hash" => scan_unordered(con, key, "HSCAN", "HLEN", 2).await?,
        "set" => scan_unordered(con, key, "SSCAN", "SCARD", 1).await?,
        "zset" => zset(con, key).await?,
        "stream" => stream(con, key).await?,
        _ => return Ok(None),
    };
    Ok(Some(d))
}

async fn list(con: &mut MultiplexedConnection, key: &[u8]) -> redis::RedisResult<u64> {
    let mut h = DefaultHasher::new();
    h.write(b"list");
    let mut start = 0usize;
    loop {
        let items: Vec<Vec<u8>> = redis::cmd("LRANGE")
            .arg(key)
            .arg(start)
            .arg(start + WINDOW - 1)
            .query_async(con)
            .await?;
        for item in &items {
            h.write_usize(item.len());
            h.write(item);
        }
        if items.len() < WINDOW {
            h.write_usize(start + items.len());
            return Ok(h.finish());
        }
        start += WINDOW;
    }
}

/// How two hashes' field expiries (from `snapshot::field_expiries`) differ beyond `tol` ms, described
/// by the first field that differs and a count; `None` when they agree.
pub(crate) fn field_ttl_difference(
    source: &std::collections::BTreeMap<Vec<u8>, i64>,
    target: &std::collections::BTreeMap<Vec<u8>, i64>,
    tol: i64,
) -> Option<String> {
    let fields: std::collections::BTreeSet<&Vec<u8>> = source.keys().chain(target.keys()).collect();
    let mut differing = fields
        .into_iter()
        .filter(|f| match (source.get(*f), target.get(*f)) {
            (Some(a), Some(b)) => (a - b).abs() > tol,
            _ => true,
        });
    let first = differing.next()?;
    let show = |t: Option<&i64>| t.map_or("no TTL".to_string(), |t| format!("expires at {t} ms"));
    let more = differing.count();
    Some(format!(
        "field {}: source {}, target {}{}",
        crate::escape::quote(first),
        show(source.get(first)),
        show(target.get(first)),
        if more > 0 {
            format!(" (and {more} more fields)")
        } else {
            String::new()
        }
    ))
}

/// HSCAN / SSCAN into an order-independent digest plus the cardinality.
async fn scan_unordered(
    con: &mut MultiplexedConnection,
    key: &[u8],
    scan: &str,
    card: &str,
    per_element: usize,
) -> redis::RedisResult<u64> {
    let mut acc = Unordered::default();
    let mut cursor: u64 = 0;
    loop {
        let (next, items): (u64, Vec<Vec<u8>>) = redis::cmd(scan)
            .arg(key)
            .arg(cursor)
            .arg("COUNT")
            .arg(WINDOW)
            .query_async(con)
            .await?;
        for chunk in items.chunks(per_element) {
            let parts: Vec<&[u8]> = chunk.iter().map(Vec::as_slice).collect();
            acc.add(hash_parts(&parts));
        }
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    let n: u64 = redis::cmd(card).arg(key).query_async(con).await?;
    let mut h = DefaultHasher::new();
    h.write(scan.as_bytes());
    h.write_u64(acc.sum);
    h.write_u64(acc.xor);
    h.write_u64(n);
    Ok(h.finish())
}

async fn zset(con: &mut MultiplexedConnection, key: &[u8]) -> redis::RedisResult<u64> {
    let mut h = DefaultHasher::new();
    h.write(b"zset");
    let mut start = 0usize;
    loop {
        let v: Value = redis::cmd("ZRANGE")
            .arg(key)
            .arg(start)
            .arg(start + WINDOW - 1)
            .arg("WITHSCORES")
            .query_async(con)
            .await?;
        let flat = flatten(v);
        let mut n = 0;
        for pair in flat.chunks(2) {
            let member = bytes(&pair[0]);
            let score = pair.get(1).map(score).unwrap_or(f64::NAN);
            // Scores compare as numbers: "1" and "1.0" are the same score.
            let score = if score == 0.0 { 0.0 } else { score };
            h.write_usize(member.len());
            h.write(&member);
            h.write_u64(score.to_bits());
            n += 1;
        }
        if n < WINDOW {
            h.write_usize(start + n);
            return Ok(h.finish());
        }
        start += WINDOW;
    }
}

async fn stream(con: &mut MultiplexedConnection, key: &[u8]) -> redis::RedisResult<u64> {
    let mut h = DefaultHasher::new();
    h.write(b"stream");
    let mut start: Vec<u8> = b"-".to_vec();
    let mut total = 0usize;
    loop {
        let v: Value = redis::cmd("XRANGE")
            .arg(key)
            .arg(&start)
            .arg("+")
            .arg("COUNT")
            .arg(WINDOW)
            .query_async(con)
            .await?;
        let entries = array(v);
        let n = entries.len();
        let mut last_id = Vec::new();
        for entry in entries {
            let mut parts = array(entry).into_iter();
            let id = parts.next().map(|v| bytes(&v)).unwrap_or_default();
            h.write_usize(id.len());
            h.write(&id);
            for f in parts.next().map(flatten).unwrap_or_default() {
                let b = bytes(&f);
                h.write_usize(b.len());
                h.write(&b);
            }
            last_id = id;
        }
        total += n;
        if n < WINDOW {
            break;
        }
        start = [b"(".as_slice(), &last_id].concat();
    }
    h.write_usize(total);
    // Stream metadata: the last generated ID (an emptied stream still has one) and the length.
    let info: Value = redis::cmd("XINFO")
        .arg("STREAM")
        .arg(key)
        .query_async(con)
        .await?;
    let info = record(info);
    for name in ["length", "last-generated-id"] {
        let v = lookup(&info, name);
        h.write(name.as_bytes());
        h.write(&v);
    }
    // Consumer groups: name, last-delivered-id and pending count, in name order.
    let groups: Value = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(key)
        .query_async(con)
        .await?;
    let mut groups: Vec<[Vec<u8>; 3]> = array(groups)
        .into_iter()
        .map(|g| {
            let r = record(g);
            [
                lookup(&r, "name"),
                lookup(&r, "last-delivered-id"),
                lookup(&r, "pending"),
            ]
        })
        .collect();
    groups.sort();
    for g in &groups {
        for part in g {
            h.write_usize(part.len());
            h.write(part);
        }
    }
    Ok(h.finish())
}

fn score(v: &Value) -> f64 {
    match v {
        Value::Double(d) => *d,
        other => String::from_utf8_lossy(&bytes(other))
            .parse::<f64>()
            .unwrap_or(f64::NAN),
    }
}

pub(crate) fn bytes(v: &Value) -> Vec<u8> {
    match v {
        Value::BulkString(b) => b.clone(),
        Value::SimpleString(s) => s.clone().into_bytes(),
        Value::VerbatimString { text, .. } => text.clone().into_bytes(),
        Value::Int(i) => i.to_string().into_bytes(),
        Value::Double(d) => d.to_string().into_bytes(),
        Value::Okay => b"OK".to_vec(),
        _ => Vec::new(),
    }
}

fn array(v: Value) -> Vec<Value> {
    match v {
        Value::Array(items) | Value::Set(items) => items,
        Value::Map(pairs) => pairs.into_iter().flat_map(|(k, v)| [k, v]).collect(),
        _ => Vec::new(),
    }
}

/// Flattens nested arrays one level deep (RESP3 returns `[[member, score], …]`).
fn flatten(v: Value) -> Vec<Value> {
    let mut out = Vec::new();
    for item in array(v) {
        match item {
            Value::Array(inner) => out.extend(inner),
            other => out.push(other),
        }
    }
    out
}

/// An `XINFO` record as (name, value) pairs.
fn record(v: Value) -> Vec<(Vec<u8>, Value)> {
    let flat = array(v);
    let mut out = Vec::with_capacity(flat.len() / 2);
    let mut it = flat.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((bytes(&k), v));
    }
    out
}

fn lookup(r: &[(Vec<u8>, Value)], name: &str) -> Vec<u8> {
    r.iter()
        .find(|(k, _)| k == name.as_bytes())
        .map(|(_, v)| bytes(v))
        .unwrap_or_default()
}
