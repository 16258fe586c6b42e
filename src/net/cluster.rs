//! Redis Cluster topology: whether a node belongs to a cluster (`INFO cluster`), and which
//! primary serves which hash slots (`CLUSTER SHARDS`, or `CLUSTER SLOTS` before Redis 7.0).
//!
//! ## Behavior
//! - Cluster mode is found, never configured: any node's URL names its cluster.
//! - Primaries are reached with the URL's credentials and TLS settings at the address the
//!   cluster announces for them; an empty announced host means "the host you asked".
//! - Both commands answer where `CONFIG` is renamed away (ElastiCache), so neither is needed.

use redis::Value;
use redis::cluster_routing::Slot;

use super::{Endpoint, NetError, info_field};

/// Hash slots in a Redis Cluster.
pub const SLOTS: usize = 16_384;

/// One primary and the slot ranges it serves.
#[derive(Debug, Clone)]
pub struct ClusterShard {
    /// The primary, with the credentials of the URL ferry was given.
    pub primary: Endpoint,
    /// Inclusive slot ranges, in order.
    pub ranges: Vec<(u16, u16)>,
}

/// The primaries of a cluster and the slot each serves.
#[derive(Debug, Clone)]
pub struct Topology {
    /// In the order the cluster listed them, by first slot.
    pub shards: Vec<ClusterShard>,
    /// Slot → index into `shards`; `u16::MAX` for a slot no primary serves.
    owner: Vec<u16>,
    /// The same by redis-rs's [`Slot`], which is what a key's slot comes as.
    by_slot: std::collections::HashMap<Slot, u16>,
}

/// Dbs a cluster cannot hold, for a message: `db 1`, `db 1 and 1 other db`, `db 1 and 4
/// other dbs` (the first named, the others counted). `dbs` is not empty.
pub fn stray_dbs(dbs: &[u32]) -> String {
    let first = dbs.first().copied().unwrap_or_default();
    match dbs.len().saturating_sub(1) {
        0 => format!("db {first}"),
        1 => format!("db {first} and 1 other db"),
        n => format!("db {first} and {n} other dbs"),
    }
}

/// `host:port` of an endpoint, as the cluster names nodes in `MOVED` and `ASK`.
pub fn host_port(ep: &Endpoint) -> Option<(String, u16)> {
    match ep.addr() {
        redis::ConnectionAddr::Tcp(h, p)
        | redis::ConnectionAddr::TcpTls {
            host: h, port: p, ..
        } => Some((h.clone(), *p)),
        _ => None,
    }
}

/// The hash slot of `key`, as the cluster computes it (hash tags included).
pub fn slot_of(key: &[u8]) -> Slot {
    Slot::for_key(key)
}

/// The hash slot number of `key` (CRC16 of the key, or of its `{hash tag}`, modulo 16384),
/// for grouping keys by slot where redis-rs's [`Slot`] does not give the number.
pub fn slot_number(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(key);
    crc16(tagged) % SLOTS as u16
}

/// CRC16-CCITT (XMODEM), the checksum Redis Cluster hashes keys with.
fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in bytes {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// Every slot with its number: redis-rs computes a key's [`Slot`] but keeps its number
/// private, so maps from slots are built from this list.
pub fn all_slots() -> impl Iterator<Item = (u16, Slot)> {
    (0..SLOTS as u16).filter_map(|n| Slot::new(n).map(|s| (n, s)))
}

/// A slot a primary no longer serves, from a `MOVED` reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Moved {
    pub slot: u16,
    pub host: String,
    pub port: u16,
}

/// One `MOVED` or `ASK` reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    /// `ASK`: this once, during a slot migration; `MOVED`: for good.
    pub ask: bool,
    pub to: Moved,
}

/// Parses `MOVED 3999 127.0.0.1:6381` or `ASK 3999 127.0.0.1:6381`.
pub fn parse_redirect(line: &str) -> Option<Redirect> {
    let mut words = line.split_whitespace();
    let ask = match words.next()? {
        "MOVED" => false,
        "ASK" => true,
        _ => return None,
    };
    let slot = words.next()?.parse().ok()?;
    let (host, port) = words.next()?.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some(Redirect {
        ask,
        to: Moved {
            slot,
            host: host.to_string(),
            port: port.parse().ok()?,
        },
    })
}

impl Topology {
    /// The cluster `ep` belongs to, or `None` for a standalone server.
    pub async fn discover(ep: &Endpoint) -> Result<Option<Topology>, NetError> {
        let mut con = ep.control().await?;
        let info: String = redis::cmd("INFO")
            .arg("cluster")
            .query_async(&mut con)
            .await
            .map_err(|e| ep.classify(&e))?;
        if info_field(&info, "cluster_enabled") != Some("1") {
            return Ok(None);
        }
        Self::read(ep, &mut con).await.map(Some)
    }

    /// Reads the slot map through `con`, a connection to `ep`.
    pub async fn read(
        ep: &Endpoint,
        con: &mut redis::aio::MultiplexedConnection,
    ) -> Result<Topology, NetError> {
        let shards = match redis::cmd("CLUSTER")
            .arg("SHARDS")
            .query_async::<Value>(con)
            .await
        {
            Ok(v) => from_shards(ep, &v),
            // Before 7.0: the older command says the same for serving primaries.
            Err(e) if e.kind() != redis::ErrorKind::Io => {
                let v: Value = redis::cmd("CLUSTER")
                    .arg("SLOTS")
                    .query_async(con)
                    .await
                    .map_err(|e| server_error(ep, "CLUSTER SLOTS", &e))?;
                from_slots(ep, &v)
            }
            Err(e) => return Err(ep.classify(&e)),
        };
        let mut shards: Vec<ClusterShard> = shards
            .into_iter()
            .filter(|s| !s.ranges.is_empty())
            .collect();
        if shards.is_empty() {
            return Err(NetError::Server {
                endpoint: ep.redacted().to_string(),
                command: "CLUSTER SHARDS".into(),
                message: "the cluster has no primary serving slots".into(),
            });
        }
        for s in &mut shards {
            s.ranges.sort_unstable();
        }
        shards.sort_by_key(|s| s.ranges[0]);
        let mut owner = vec![u16::MAX; SLOTS];
        for (i, s) in shards.iter().enumerate() {
            for &(a, b) in &s.ranges {
                for slot in a..=b.min(SLOTS as u16 - 1) {
                    owner[usize::from(slot)] = i as u16;
                }
            }
        }
        let by_slot = all_slots()
            .map(|(n, slot)| (slot, owner[usize::from(n)]))
            .collect();
        Ok(Topology {
            shards,
            owner,
            by_slot,
        })
    }

    /// The index into [`Self::shards`] of the primary serving `slot`.
    pub fn shard_of_slot(&self, slot: u16) -> Option<usize> {
        match self.owner.get(usize::from(slot)) {
            Some(&i) if i != u16::MAX => Some(usize::from(i)),
            _ => None,
        }
    }

    /// The primary serving `key` (the first when no primary serves its slot: that node's
    /// `CLUSTERDOWN` or redirect then says more).
    pub fn primary_of(&self, key: &[u8]) -> &Endpoint {
        &self.shards[self.shard_of_key(key)].primary
    }

    /// The index into [`Self::shards`] of the primary serving `key` (the first when no
    /// primary serves its slot).
    pub fn shard_of_key(&self, key: &[u8]) -> usize {
        let i = self.by_slot.get(&slot_of(key)).copied().unwrap_or(0);
        if i == u16::MAX { 0 } else { usize::from(i) }
    }

    /// The primaries, or `ep` alone for a standalone server.
    pub fn nodes(topology: Option<&Topology>, ep: &Endpoint) -> Vec<Endpoint> {
        match topology {
            Some(t) => t.shards.iter().map(|s| s.primary.clone()).collect(),
            None => vec![ep.clone()],
        }
    }

    /// The index of the primary at `host:port`, as `MOVED` names it.
    pub fn shard_at(&self, host: &str, port: u16) -> Option<usize> {
        self.shards
            .iter()
            .position(|s| host_port(&s.primary).is_some_and(|(h, p)| h == host && p == port))
    }

    /// Slot count of each shard, for logs.
    pub fn slot_count(&self, shard: usize) -> usize {
        self.shards[shard]
            .ranges
            .iter()
            .map(|&(a, b)| usize::from(b - a) + 1)
            .sum()
    }

    /// The shards as one log line: `127.0.0.1:7000 0-5460; 127.0.0.1:7001 5461-10922; …`.
    pub fn describe(&self) -> String {
        self.shards
            .iter()
            .map(|s| {
                let ranges: Vec<String> = s
                    .ranges
                    .iter()
                    .map(|(a, b)| {
                        if a == b {
                            a.to_string()
                        } else {
                            format!("{a}-{b}")
                        }
                    })
                    .collect();
                let addr = host_port(&s.primary).map_or_else(
                    || s.primary.redacted().to_string(),
                    |(h, p)| format!("{h}:{p}"),
                );
                format!("{addr} {}", ranges.join(","))
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// A shard's slot ranges as `0-5460` or `0-99,200,300-399`, for logs and file names.
    pub fn ranges_label(&self, shard: usize) -> String {
        self.shards[shard]
            .ranges
            .iter()
            .map(|(a, b)| {
                if a == b {
                    a.to_string()
                } else {
                    format!("{a}-{b}")
                }
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A shard primary's `host:port` (its redacted URL when it has none, e.g. a socket).
    pub fn address(&self, shard: usize) -> String {
        let primary = &self.shards[shard].primary;
        host_port(primary).map_or_else(
            || primary.redacted().to_string(),
            |(h, p)| format!("{h}:{p}"),
        )
    }
}

/// The replicas of each primary of the cluster `ep` belongs to, as `host:port` lists keyed by
/// their primary's `host:port`, from `CLUSTER NODES` (every version has it, ElastiCache too).
/// Replicas flagged as failing are left out.
pub async fn replicas(
    ep: &Endpoint,
) -> Result<std::collections::BTreeMap<String, Vec<String>>, NetError> {
    let mut con = ep.control().await?;
    let nodes: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query_async(&mut con)
        .await
        .map_err(|e| server_error(ep, "CLUSTER NODES", &e))?;
    Ok(parse_replicas(
        &nodes,
        host_port(ep).map(|(h, _)| h).as_deref(),
    ))
}

/// [`replicas`] from `CLUSTER NODES` text; `own_host` stands in for an empty announced host.
fn parse_replicas(
    nodes: &str,
    own_host: Option<&str>,
) -> std::collections::BTreeMap<String, Vec<String>> {
    // id, ip:port@cport[,hostname], flags, master id, …
    let rows: Vec<Vec<&str>> = nodes
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.len() >= 4)
        .collect();
    let addr = |f: &[&str]| -> String {
        let a = f[1].split(['@', ',']).next().unwrap_or_default();
        match a.strip_prefix(':') {
            Some(port) => format!("{}:{port}", own_host.unwrap_or("127.0.0.1")),
            None => a.to_string(),
        }
    };
    let by_id: std::collections::HashMap<&str, String> =
        rows.iter().map(|f| (f[0], addr(f))).collect();
    let mut out: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for f in &rows {
        let flags: Vec<&str> = f[2].split(',').collect();
        let replica = flags.iter().any(|&x| x == "slave" || x == "replica");
        let failing = flags.iter().any(|&x| x == "fail" || x == "fail?");
        if replica
            && !failing
            && let Some(primary) = by_id.get(f[3])
        {
            out.entry(primary.clone()).or_default().push(addr(f));
        }
    }
    for list in out.values_mut() {
        list.sort();
    }
    out
}

fn server_error(ep: &Endpoint, command: &str, e: &redis::RedisError) -> NetError {
    NetError::Server {
        endpoint: ep.redacted().to_string(),
        command: command.into(),
        message: super::redis_reason(e),
    }
}

/// A RESP2 flat map or a RESP3 map as pairs.
fn pairs(v: &Value) -> Vec<(String, &Value)> {
    match v {
        Value::Map(m) => m
            .iter()
            .filter_map(|(k, v)| text(k).map(|k| (k, v)))
            .collect(),
        Value::Array(a) => a
            .chunks(2)
            .filter_map(|c| match c {
                [k, v] => text(k).map(|k| (k, v)),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) | Value::VerbatimString { text: s, .. } => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        other => text(other)?.parse().ok(),
    }
}

fn items(v: &Value) -> &[Value] {
    match v {
        Value::Array(a) | Value::Set(a) => a,
        _ => &[],
    }
}

/// The endpoint of an announced node: `ep`'s credentials at `host:port`, `ep`'s own host when
/// the cluster announces none.
fn node(ep: &Endpoint, host: &str, port: u16) -> Endpoint {
    let own = host_port(ep).map(|(h, _)| h).unwrap_or_default();
    let host = if host.is_empty() || host == "?" {
        own.as_str()
    } else {
        host
    };
    ep.with_host_port(host, port)
}

fn tls(ep: &Endpoint) -> bool {
    matches!(ep.addr(), redis::ConnectionAddr::TcpTls { .. })
}

/// `CLUSTER SHARDS`: `[{slots: [a, b, …], nodes: [{ip, endpoint, port, tls-port, role, …}]}]`.
fn from_shards(ep: &Endpoint, v: &Value) -> Vec<ClusterShard> {
    let mut out = Vec::new();
    for shard in items(v) {
        let fields = pairs(shard);
        let get = |k: &str| fields.iter().find(|(n, _)| n == k).map(|(_, v)| *v);
        let ranges: Vec<(u16, u16)> = get("slots")
            .map(items)
            .unwrap_or_default()
            .chunks(2)
            .filter_map(|c| match c {
                [a, b] => Some((int(a)? as u16, int(b)? as u16)),
                _ => None,
            })
            .collect();
        let primary = get("nodes")
            .map(items)
            .unwrap_or_default()
            .iter()
            .find_map(|n| {
                let f = pairs(n);
                let field = |k: &str| f.iter().find(|(n, _)| n == k).map(|(_, v)| *v);
                if field("role").and_then(text).as_deref() != Some("master") {
                    return None;
                }
                let port_field = if tls(ep) { "tls-port" } else { "port" };
                let port = field(port_field).or_else(|| field("port")).and_then(int)?;
                let host = field("endpoint")
                    .and_then(text)
                    .filter(|h| !h.is_empty() && h != "?")
                    .or_else(|| field("ip").and_then(text))
                    .unwrap_or_default();
                Some(node(ep, &host, port as u16))
            });
        if let Some(primary) = primary {
            out.push(ClusterShard { primary, ranges });
        }
    }
    out
}

/// `CLUSTER SLOTS`: `[[first, last, [host, port, id, …], replica…], …]`, one entry per range.
fn from_slots(ep: &Endpoint, v: &Value) -> Vec<ClusterShard> {
    let mut out: Vec<ClusterShard> = Vec::new();
    for range in items(v) {
        let r = items(range);
        let (Some(a), Some(b), Some(p)) = (
            r.first().and_then(int),
            r.get(1).and_then(int),
            r.get(2).map(items),
        ) else {
            continue;
        };
        let host = p.first().and_then(text).unwrap_or_default();
        let Some(port) = p.get(1).and_then(int) else {
            continue;
        };
        let primary = node(ep, &host, port as u16);
        let range = (a as u16, b as u16);
        match out
            .iter_mut()
            .find(|s| host_port(&s.primary) == host_port(&primary))
        {
            Some(s) => s.ranges.push(range),
            None => out.push(ClusterShard {
                primary,
                ranges: vec![range],
            }),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn replicas_are_read_from_cluster_nodes_by_their_primary() {
        let nodes = "\
a1 10.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460
b2 10.0.0.2:7001@17001,host-b master - 0 0 2 connected 5461-16383
c3 10.0.0.3:7002@17002 slave a1 0 0 1 connected
d4 :7003@17003 slave b2 0 0 2 connected
e5 10.0.0.5:7004@17004 slave,fail b2 0 0 2 connected
";
        let r = parse_replicas(nodes, Some("h"));
        assert_eq!(r["10.0.0.1:7000"], ["10.0.0.3:7002"]);
        assert_eq!(r["10.0.0.2:7001"], ["h:7003"]);
        assert_eq!(r.len(), 2);
    }

    #[test]
    fn slot_numbers_match_the_clusters_and_redis_rs() {
        // `CLUSTER KEYSLOT` answers these.
        assert_eq!(slot_number(b"foo"), 12182);
        assert_eq!(slot_number(b"hello"), 866);
        assert_eq!(
            slot_number(b"{user1000}.following"),
            slot_number(b"user1000")
        );
        // An empty tag hashes the whole key.
        assert_eq!(slot_number(b"{}x"), crc16(b"{}x") % 16384);
        let numbers: std::collections::HashMap<Slot, u16> =
            all_slots().map(|(n, s)| (s, n)).collect();
        for i in 0..2000 {
            let key = format!("k:{i}:{{t{}}}", i % 17);
            assert_eq!(
                numbers[&slot_of(key.as_bytes())],
                slot_number(key.as_bytes()),
                "{key}"
            );
        }
    }

    #[test]
    fn reads_the_primaries_of_cluster_shards() {
        let ep = Endpoint::parse("redis://:pw@10.0.0.1:7000").unwrap();
        let node = |ip: &str, port: i64, role: &str| {
            Value::Array(vec![
                bulk("id"),
                bulk("abc"),
                bulk("port"),
                Value::Int(port),
                bulk("ip"),
                bulk(ip),
                bulk("endpoint"),
                bulk(ip),
                bulk("role"),
                bulk(role),
            ])
        };
        let shard = |slots: Vec<i64>, nodes: Vec<Value>| {
            Value::Array(vec![
                bulk("slots"),
                Value::Array(slots.into_iter().map(Value::Int).collect()),
                bulk("nodes"),
                Value::Array(nodes),
            ])
        };
        let v = Value::Array(vec![
            shard(
                vec![5461, 10922],
                vec![
                    node("10.0.0.3", 7002, "replica"),
                    node("10.0.0.2", 7001, "master"),
                ],
            ),
            shard(vec![0, 100, 200, 5460], vec![node("", 7000, "master")]),
        ]);
        let shards = from_shards(&ep, &v);
        assert_eq!(shards.len(), 2);
        assert_eq!(shards[0].ranges, vec![(5461, 10922)]);
        assert_eq!(
            host_port(&shards[0].primary),
            Some(("10.0.0.2".into(), 7001))
        );
        // No announced address: the host of the URL, with its credentials.
        assert_eq!(
            host_port(&shards[1].primary),
            Some(("10.0.0.1".into(), 7000))
        );
        assert_eq!(shards[1].ranges, vec![(0, 100), (200, 5460)]);
        assert!(!shards[1].primary.redacted().contains("pw"));
    }

    #[test]
    fn reads_the_primaries_of_cluster_slots_and_merges_their_ranges() {
        let ep = Endpoint::parse("redis://10.0.0.1:7000").unwrap();
        let range = |a: i64, b: i64, host: &str, port: i64| {
            Value::Array(vec![
                Value::Int(a),
                Value::Int(b),
                Value::Array(vec![bulk(host), Value::Int(port), bulk("id")]),
                Value::Array(vec![bulk("10.0.0.9"), Value::Int(7009), bulk("replica")]),
            ])
        };
        let v = Value::Array(vec![
            range(0, 99, "10.0.0.1", 7000),
            range(100, 16383, "10.0.0.2", 7001),
            range(5000, 5000, "10.0.0.1", 7000),
        ]);
        let shards = from_slots(&ep, &v);
        assert_eq!(shards.len(), 2);
        assert_eq!(shards[0].ranges, vec![(0, 99), (5000, 5000)]);
        assert_eq!(
            host_port(&shards[1].primary),
            Some(("10.0.0.2".into(), 7001))
        );
    }

    #[test]
    fn stray_dbs_name_the_first_and_count_the_others() {
        assert_eq!(stray_dbs(&[2]), "db 2");
        assert_eq!(stray_dbs(&[2, 5]), "db 2 and 1 other db");
        assert_eq!(stray_dbs(&[1, 2, 3]), "db 1 and 2 other dbs");
    }

    #[test]
    fn parses_moved_and_ask() {
        assert_eq!(
            parse_redirect("MOVED 3999 127.0.0.1:6381"),
            Some(Redirect {
                ask: false,
                to: Moved {
                    slot: 3999,
                    host: "127.0.0.1".into(),
                    port: 6381
                }
            })
        );
        assert!(parse_redirect("ASK 1 ::1:7000").is_some_and(|r| r.ask && r.to.host == "::1"));
        assert_eq!(parse_redirect("ERR MOVED"), None);
        assert_eq!(parse_redirect("MOVED x 1:2"), None);
    }
}
