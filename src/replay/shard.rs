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
use std::time::Duration;

use redis::cluster_routing::Slot;
use tokio::sync::{mpsc, oneshot};

use super::exec::{RecopySender, ReplayError, ReplayStats, Replayer};
use super::op::Op;
use super::policy::{ErrorClass, classify};
use crate::command::{Argv, CommandTable};
use crate::net::Endpoint;

/// Default number of replay connections.
pub const DEFAULT_SHARDS: usize = 4;

/// First wait before a replay connection is reopened; it doubles up to [`MAX_RECONNECT_DELAY`].
const FIRST_RECONNECT_DELAY: Duration = Duration::from_millis(100);
/// Longest wait between attempts: a target back from a restart is found within this.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(5);
/// A connection that lived this long was healthy: the next failure starts the backoff over.
const HEALTHY_FOR: Duration = Duration::from_secs(30);

/// The shard a key's operations go to: by hash slot, so a cluster's hash tags keep related keys
/// together.
pub fn shard_of(key: &[u8], shards: usize) -> usize {
    let mut h = DefaultHasher::new();
    Slot::for_key(key).hash(&mut h);
    (h.finish() % shards as u64) as usize
}

/// After a transient refusal, waits (backing off) until `PING` is no longer refused the same
/// way, so that a loading target costs one resync, not one per attempt.
async fn wait_ready(target: &Endpoint, delay: &mut Duration) {
    loop {
        let refused = match target.control().await {
            Ok(mut con) => match redis::cmd("PING").query_async::<()>(&mut con).await {
                Err(e)
                    if e.code()
                        .is_some_and(|c| classify(c) == ErrorClass::Transient) =>
                {
                    Some(e.to_string())
                }
                _ => None,
            },
            // Unreachable: the reconnect itself will back off.
            Err(_) => None,
        };
        let Some(why) = refused else { return };
        tracing::warn!(error = %why, delay_ms = delay.as_millis() as u64, "The target is not ready; waiting.");
        tokio::time::sleep(*delay).await;
        *delay = (*delay * 2).min(MAX_RECONNECT_DELAY);
    }
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

/// Runs `shards` replay connections fed from `ops`; reports connections that lost commands on
/// `broken`, and the keys of target-only failures on `recopy`.
pub async fn run_sharded(
    target: Endpoint,
    shards: usize,
    table: Arc<CommandTable>,
    mut ops: mpsc::Receiver<Op>,
    stats: Arc<ReplayStats>,
    broken: mpsc::UnboundedSender<String>,
    recopy: RecopySender,
) {
    let shards = shards.max(1);
    let mut senders = Vec::with_capacity(shards);
    for _ in 0..shards {
        let (tx, mut rx) = mpsc::channel::<Op>(4096);
        senders.push(tx);
        let target = target.clone();
        let stats = stats.clone();
        let broken = broken.clone();
        let replayer = Replayer::new(target).with_recopy(table.clone(), recopy.clone());
        tokio::spawn(async move {
            let mut delay = FIRST_RECONNECT_DELAY;
            loop {
                let started = std::time::Instant::now();
                match replayer.run(&mut rx, stats.clone()).await {
                    Ok(()) => return,
                    Err(e) => {
                        if started.elapsed() >= HEALTHY_FOR {
                            delay = FIRST_RECONNECT_DELAY;
                        }
                        if e.lost_writes() {
                            let _ = broken.send(e.to_string());
                        } else {
                            tracing::warn!(error = %e, delay_ms = delay.as_millis() as u64, "Replay cannot reach the target; retrying.");
                        }
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(MAX_RECONNECT_DELAY);
                        if matches!(e, ReplayError::Transient { .. }) {
                            wait_ready(replayer.target(), &mut delay).await;
                        }
                    }
                }
            }
        });
    }
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
