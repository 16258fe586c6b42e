//! Replay sharded by slot: one pipelined connection per shard, so that encoding and reply
//! handling run in parallel while every key's writes stay in order on one connection.
//!
//! ## Behavior
//! - An operation whose keys all hash to one shard goes to that shard.
//! - An operation without keys (`FLUSHALL`, `SCRIPT LOAD`, `FUNCTION LOAD`, the snapshot's
//!   copy of the function libraries) or with keys on several shards
//!   waits at a barrier: every shard drains, the operation runs alone, then replay goes on.
//! - A marker's barrier is answered once every shard has applied what came before it, without
//!   holding the other operations back.
//! - A connection that breaks (or meets a transient refusal such as `LOADING`) is reopened
//!   after a growing, capped backoff; a resync is asked for only when commands may have been
//!   lost, not for every failed attempt to reconnect.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use redis::cluster_routing::Slot;
use tokio::sync::{mpsc, oneshot};

use super::connection::spawn_shard;
use super::exec::{RecopySender, ReplayStats, Replayer};
use super::op::Op;
use crate::command::{Argv, CommandTable};
use crate::net::Endpoint;
use crate::net::cluster::Topology;

/// Default number of replay connections.
pub const DEFAULT_SHARDS: usize = 4;

/// How replay spreads operations over connections.
#[derive(Debug, Clone)]
pub enum Layout {
    /// A standalone target: this many connections, operations spread by slot.
    Shards(usize),
    /// A cluster target: one connection per primary, operations routed to their slot's owner.
    Cluster(Topology),
}

/// The shard a key's operations go to: by hash slot, so a cluster's hash tags keep related keys
/// together.
pub fn shard_of(key: &[u8], shards: usize) -> usize {
    let mut h = DefaultHasher::new();
    Slot::for_key(key).hash(&mut h);
    (h.finish() % shards as u64) as usize
}

/// Which shard an operation belongs to; `None` when it needs the barrier.
fn route(
    table: &CommandTable,
    op: &Op,
    shards: usize,
    keys: &mut Vec<crate::command::KeyRef>,
) -> Option<usize> {
    if let Op::Expiring { op, .. } = op {
        return route(table, op, shards, keys);
    }
    let mut shard = None;
    let mut add = |s: usize| match shard {
        None => {
            shard = Some(s);
            true
        }
        Some(t) => t == s,
    };
    let mut command = |argv: &Argv| -> bool {
        keys.clear();
        table.keys_into(argv, keys);
        if keys.is_empty() {
            return false;
        }
        keys.iter()
            .all(|k| add(shard_of(argv.get(k.pos).unwrap_or_default(), shards)))
    };
    let ok = match op {
        Op::Cmd { argv, .. } => command(argv),
        Op::Atomic { cmds, .. } => cmds.iter().all(|(_, a)| command(a)),
        Op::Restore { key, .. } | Op::Check { key, .. } => add(shard_of(key, shards)),
        Op::Functions { .. } | Op::Barrier { .. } | Op::Expiring { .. } | Op::Fenced { .. } => {
            false
        }
    };
    if ok { shard } else { None }
}

/// Runs the replay connections of `layout` fed from `ops` (toward a cluster, one per
/// primary: see [`super::cluster`]); reports connections that lost commands on
/// `broken`, and the keys of target-only failures on `recopy`.
pub async fn run_sharded(
    target: Endpoint,
    layout: Layout,
    table: Arc<CommandTable>,
    mut ops: mpsc::Receiver<Op>,
    stats: Arc<ReplayStats>,
    broken: mpsc::UnboundedSender<String>,
    recopy: RecopySender,
) {
    let shards = match layout {
        Layout::Shards(n) => n.max(1),
        Layout::Cluster(topology) => {
            return super::cluster::run_cluster(
                target, topology, table, ops, stats, broken, recopy,
            )
            .await;
        }
    };
    let senders: Vec<mpsc::Sender<Op>> = (0..shards)
        .map(|_| {
            let replayer = Replayer::new(target.clone()).with_recopy(table.clone(), recopy.clone());
            spawn_shard(replayer, stats.clone(), broken.clone())
        })
        .collect();
    let drain_all = |senders: &[mpsc::Sender<Op>], seq: u64| {
        let mut waits = Vec::with_capacity(senders.len());
        let sends: Vec<_> = senders
            .iter()
            .map(|s| {
                let (done, wait) = oneshot::channel();
                waits.push(wait);
                let s = s.clone();
                async move { s.send(Op::Barrier { seq, done }).await.is_ok() }
            })
            .collect();
        (sends, waits)
    };
    let mut keys = Vec::new();
    while let Some(op) = ops.recv().await {
        match route(&table, &op, shards, &mut keys) {
            Some(s) => {
                if senders[s].send(op).await.is_err() {
                    return;
                }
            }
            None => {
                if let Op::Barrier { seq, done } = op {
                    let (sends, waits) = drain_all(&senders, seq);
                    for s in sends {
                        if !s.await {
                            return;
                        }
                    }
                    tokio::spawn(async move {
                        for w in waits {
                            let _ = w.await;
                        }
                        let _ = done.send(());
                    });
                    continue;
                }
                // Everything before must be applied before this op, and this op before anything
                // after it.
                let seq = op.seq();
                let (sends, waits) = drain_all(&senders, seq);
                for s in sends {
                    if !s.await {
                        return;
                    }
                }
                for w in waits {
                    let _ = w.await;
                }
                if senders[0].send(op).await.is_err() {
                    return;
                }
                let (done, wait) = oneshot::channel();
                if senders[0].send(Op::Barrier { seq, done }).await.is_err() {
                    return;
                }
                let _ = wait.await;
            }
        }
    }
}
