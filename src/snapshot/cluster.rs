//! A snapshot worker's writes toward a Redis Cluster target: one connection per primary, each
//! batch's `RESTORE`s pipelined per primary by slot, `MOVED` and `ASK` followed.
//!
//! ## Behavior
//! - A batch's restores are grouped by the primary serving each key's slot and sent as one
//!   pipeline per primary; replies come back in the batch's order.
//! - A `MOVED` reply re-reads the topology and sends that restore again to the new owner; an
//!   `ASK` sends it after `ASKING` to the node named, once. A restore that is still redirected
//!   after [`MAX_HOPS`] keeps its last reply, and the key is reported failed (never dropped).

use std::collections::HashMap;

use redis::aio::MultiplexedConnection;
use redis::cluster_routing::Slot;
use redis::{Cmd, Value};

use crate::net::cluster::{Topology, all_slots, host_port, parse_redirect, slot_of};
use crate::net::{Endpoint, NetError};

/// Redirects followed for one restore before its reply stands as a failure.
const MAX_HOPS: usize = 5;

/// Connections to every primary of the target and the slot map they follow.
pub(super) struct ClusterWriter {
    base: Endpoint,
    conns: Vec<(Option<(String, u16)>, MultiplexedConnection)>,
    owner: HashMap<Slot, usize>,
    /// `MOVED` and `ASK` replies followed.
    pub(super) redirects: u64,
}

/// The text of an error reply as the server sent it: `MOVED 3999 10.0.0.2:6379`.
fn error_line(v: &Value) -> Option<String> {
    match v {
        Value::ServerError(e) => Some(match e.details() {
            Some(d) => format!("{} {d}", e.code()),
            None => e.code().to_string(),
        }),
        _ => None,
    }
}

impl ClusterWriter {
    /// Connects to every primary of `topology`, with `base`'s credentials.
    pub(super) async fn connect(base: &Endpoint, topology: &Topology) -> Result<Self, NetError> {
        let mut w = ClusterWriter {
            base: base.clone(),
            conns: Vec::new(),
            owner: HashMap::new(),
            redirects: 0,
        };
        w.follow(topology).await?;
        Ok(w)
    }

    /// Opens connections to new primaries and points every slot at its owner.
    async fn follow(&mut self, topology: &Topology) -> Result<(), NetError> {
        let mut index = Vec::with_capacity(topology.shards.len());
        for s in &topology.shards {
            let addr = host_port(&s.primary);
            let i = match self.conns.iter().position(|(a, _)| *a == addr) {
                Some(i) => i,
                None => {
                    self.conns.push((addr, s.primary.control().await?));
                    self.conns.len() - 1
                }
            };
            index.push(i);
        }
        self.owner = all_slots()
            .map(|(n, slot)| (slot, topology.shard_of_slot(n).map_or(0, |s| index[s])))
            .collect();
        Ok(())
    }

    /// The connection to the primary serving `key`.
    pub(super) fn conn_for(&mut self, key: &[u8]) -> &mut MultiplexedConnection {
        let i = self.owner.get(&slot_of(key)).copied().unwrap_or(0);
        &mut self.conns[i].1
    }

    /// Runs `cmds` (each with the key it writes), one pipeline per primary; the replies in the
    /// order of `cmds`, redirects followed.
    pub(super) async fn run(&mut self, cmds: &[(&[u8], Cmd)]) -> redis::RedisResult<Vec<Value>> {
        let mut groups: HashMap<usize, Vec<usize>> = HashMap::new();
        for (i, (key, _)) in cmds.iter().enumerate() {
            let owner = self.owner.get(&slot_of(key)).copied().unwrap_or(0);
            groups.entry(owner).or_default().push(i);
        }
        let mut out = vec![Value::Nil; cmds.len()];
        for (owner, members) in groups {
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            for &i in &members {
                pipe.add_command(cmds[i].1.clone());
            }
            let replies: Vec<Value> = pipe.query_async(&mut self.conns[owner].1).await?;
            for (i, r) in members.into_iter().zip(replies) {
                out[i] = r;
            }
        }
        for (i, (key, cmd)) in cmds.iter().enumerate() {
            let mut hops = 0;
            while hops < MAX_HOPS
                && let Some(r) = error_line(&out[i]).and_then(|l| parse_redirect(&l))
            {
                hops += 1;
                self.redirects += 1;
                out[i] = if r.ask {
                    let ep = self.base.with_host_port(&r.to.host, r.to.port);
                    let mut con = ep.control().await.map_err(|e| {
                        redis::RedisError::from((
                            redis::ErrorKind::Io,
                            "ASK redirect",
                            e.to_string(),
                        ))
                    })?;
                    let mut pipe = redis::pipe();
                    pipe.ignore_errors();
                    pipe.cmd("ASKING").ignore().add_command(cmd.clone());
                    let mut v: Vec<Value> = pipe.query_async(&mut con).await?;
                    v.pop().unwrap_or(Value::Nil)
                } else {
                    tracing::info!(slot = r.to.slot, to = %format!("{}:{}", r.to.host, r.to.port), "The target moved a slot; the snapshot follows it.");
                    let topology = Topology::read(&self.base, &mut self.conns[0].1)
                        .await
                        .map_err(|e| {
                            redis::RedisError::from((
                                redis::ErrorKind::Io,
                                "topology refresh",
                                e.to_string(),
                            ))
                        })?;
                    self.follow(&topology).await.map_err(|e| {
                        redis::RedisError::from((
                            redis::ErrorKind::Io,
                            "topology refresh",
                            e.to_string(),
                        ))
                    })?;
                    // The node that answered knows before gossip reaches the others.
                    let named = Some((r.to.host.clone(), r.to.port));
                    if let (Some(slot), Some(i)) = (
                        Slot::new(r.to.slot),
                        self.conns.iter().position(|(a, _)| *a == named),
                    ) {
                        self.owner.insert(slot, i);
                    }
                    let mut pipe = redis::pipe();
                    pipe.ignore_errors().add_command(cmd.clone());
                    let mut v: Vec<Value> = pipe.query_async(self.conn_for(key)).await?;
                    v.pop().unwrap_or(Value::Nil)
                };
            }
        }
        Ok(out)
    }
}
