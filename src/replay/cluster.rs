//! Replay toward a Redis Cluster target: one pipelined connection per primary, each operation
//! routed to the primary serving its keys' slot; operations across slots are split where the
//! effect stays the same, and otherwise their keys are re-copied through fences.
//!
//! ## Behavior
//! - A slot's operations all go to one connection, in stream order, so a key's writes keep
//!   their order; `MOVED` and `ASK` are followed by the connection that got them
//!   ([`super::redirect`]). After a `MOVED`, the slot's later operations go to its new owner
//!   once the old connection has drained (a barrier), so nothing overtakes the redirected ones.
//! - Across slots: `MSET` becomes one `SET` per pair; `DEL`, `UNLINK` and `TOUCH` of several
//!   keys one command per key; a `MULTI` group (or a script's effects) one group per slot when
//!   each command has its keys in one slot. Anything else (`RENAME` across slots, `MSETNX`,
//!   `SMOVE`…) never reaches replay: the stitcher (`StitchConfig::cluster_target`) drops it
//!   and makes its written keys dirty, so they are re-copied through fences. What still comes
//!   across unsplittable (a group mixing keyless commands with keys of several slots) is not
//!   sent either: its keys are re-copied through the replay's re-copy requests.
//! - Operations without keys (`FLUSHALL`, `SCRIPT LOAD`, the function libraries) go to every
//!   primary, alone, between barriers.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::{mpsc, oneshot};

use super::connection::spawn_shard;
use super::exec::{RecopySender, ReplayStats, Replayer};
use super::op::Op;
use super::redirect::{Moved, Redirects};
use crate::command::{Argv, CommandTable, KeyRef};
use crate::net::Endpoint;
use redis::cluster_routing::Slot;

use crate::net::cluster::{Topology, all_slots, host_port, slot_of};

/// The connections and the slot map replay follows.
struct Router {
    redirects: Redirects,
    table: Arc<CommandTable>,
    stats: Arc<ReplayStats>,
    broken: mpsc::UnboundedSender<String>,
    recopy: RecopySender,
    senders: Vec<mpsc::Sender<Op>>,
    addrs: Vec<Option<(String, u16)>>,
    /// Slot → index into `senders`.
    owner: HashMap<Slot, usize>,
    keys: Vec<KeyRef>,
}

/// Where an operation goes.
enum Route {
    /// Every key in this slot.
    Slot(Slot),
    /// No keys: every primary.
    Everywhere,
    /// Keys in several slots.
    Across,
}

/// Runs one replay connection per primary of `topology` fed from `ops`; reports connections
/// that lost commands on `broken`, and keys to re-copy on `recopy`.
pub async fn run_cluster(
    target: Endpoint,
    topology: Topology,
    table: Arc<CommandTable>,
    mut ops: mpsc::Receiver<Op>,
    stats: Arc<ReplayStats>,
    broken: mpsc::UnboundedSender<String>,
    recopy: RecopySender,
) {
    let (moved_tx, mut moved) = mpsc::unbounded_channel();
    let mut router = Router {
        redirects: Redirects {
            base: target,
            moved: moved_tx,
            followed: stats.redirects.clone(),
        },
        table,
        stats,
        broken,
        recopy,
        senders: Vec::new(),
        addrs: Vec::new(),
        owner: HashMap::new(),
        keys: Vec::new(),
    };
    for s in &topology.shards {
        router.start(&s.primary);
    }
    // A slot no primary serves goes to the first: its `CLUSTERDOWN` or redirect says more.
    router.owner = all_slots()
        .map(|(n, slot)| (slot, topology.shard_of_slot(n).unwrap_or(0)))
        .collect();
    while let Some(op) = ops.recv().await {
        while let Ok(m) = moved.try_recv() {
            if !router.follow(m).await {
                return;
            }
        }
        if !router.route(op).await {
            return;
        }
    }
}

impl Router {
    fn start(&mut self, primary: &Endpoint) -> usize {
        let replayer = Replayer::new(primary.clone())
            .with_recopy(self.table.clone(), self.recopy.clone())
            .with_redirects(self.redirects.clone());
        self.senders.push(spawn_shard(
            replayer,
            self.stats.clone(),
            self.broken.clone(),
        ));
        self.addrs.push(host_port(primary));
        self.senders.len() - 1
    }

    /// A slot moved: later operations of it go to the new owner once the old connection has
    /// applied (or redirected) everything it was given. False when replay is shutting down.
    async fn follow(&mut self, m: Moved) -> bool {
        let to = Some((m.host.clone(), m.port));
        let idx = match self.addrs.iter().position(|a| *a == to) {
            Some(i) => i,
            None => {
                let ep = self.redirects.base.with_host_port(&m.host, m.port);
                tracing::info!(node = %ep, "A new primary of the target serves slots; replay opens a connection to it.");
                self.start(&ep)
            }
        };
        let Some(slot) = Slot::new(m.slot) else {
            return true;
        };
        let old = self.owner.get(&slot).copied().unwrap_or(0);
        if old == idx {
            return true;
        }
        tracing::info!(slot = m.slot, to = %format!("{}:{}", m.host, m.port), "The target moved a slot; replay follows it.");
        self.owner.insert(slot, idx);
        let (done, wait) = oneshot::channel();
        if self.senders[old]
            .send(Op::Barrier { seq: 0, done })
            .await
            .is_err()
        {
            return false;
        }
        let _ = wait.await;
        true
    }

    fn command_slot(&mut self, argv: &Argv) -> Route {
        self.keys.clear();
        self.table.keys_into(argv, &mut self.keys);
        let mut slot = None;
        for k in &self.keys {
            let s = slot_of(argv.get(k.pos).unwrap_or_default());
            match slot {
                None => slot = Some(s),
                Some(t) if t != s => return Route::Across,
                _ => {}
            }
        }
        slot.map_or(Route::Everywhere, Route::Slot)
    }

    fn route_of(&mut self, op: &Op) -> Route {
        match op {
            Op::Cmd { argv, .. } => self.command_slot(argv),
            Op::Atomic { cmds, .. } => {
                let mut slot = None;
                for (_, argv) in cmds {
                    match (self.command_slot(argv), slot) {
                        (Route::Across, _) => return Route::Across,
                        (Route::Slot(s), None) => slot = Some(s),
                        (Route::Slot(s), Some(t)) if s != t => return Route::Across,
                        _ => {}
                    }
                }
                slot.map_or(Route::Everywhere, Route::Slot)
            }
            Op::Restore { key, .. } | Op::Check { key, .. } => Route::Slot(slot_of(key)),
            Op::Expiring { op, .. } => self.route_of(op),
            Op::Functions { .. } | Op::Barrier { .. } => Route::Everywhere,
            // Fenced batches are built by split replay's lease holders (`replay::remote`),
            // which apply them on their own connection, never through this router.
            Op::Fenced { .. } => unreachable!("split replay never routes fenced batches here"),
        }
    }

    /// False when replay is shutting down.
    async fn route(&mut self, op: Op) -> bool {
        match self.route_of(&op) {
            Route::Slot(s) => self.senders[self.owner.get(&s).copied().unwrap_or(0)]
                .send(op)
                .await
                .is_ok(),
            Route::Everywhere => self.everywhere(op).await,
            Route::Across => match self.split(op) {
                Ok(parts) => {
                    self.stats.cross_slot_split.fetch_add(1, Ordering::Relaxed);
                    for part in parts {
                        let Route::Slot(s) = self.route_of(&part) else {
                            continue;
                        };
                        if self.senders[self.owner.get(&s).copied().unwrap_or(0)]
                            .send(part)
                            .await
                            .is_err()
                        {
                            return false;
                        }
                    }
                    true
                }
                Err(op) => {
                    self.recopy_keys(&op);
                    true
                }
            },
        }
    }

    /// Drains every connection, then runs `op` on each primary, alone.
    async fn everywhere(&mut self, op: Op) -> bool {
        let seq = op.seq();
        let mut waits = Vec::with_capacity(self.senders.len());
        for s in &self.senders {
            let (done, wait) = oneshot::channel();
            if s.send(Op::Barrier { seq, done }).await.is_err() {
                return false;
            }
            waits.push(wait);
        }
        if let Op::Barrier { done, .. } = op {
            // A marker's barrier: answered once every connection applied what came before.
            tokio::spawn(async move {
                for w in waits {
                    let _ = w.await;
                }
                let _ = done.send(());
            });
            return true;
        }
        for w in waits {
            let _ = w.await;
        }
        let copies = self.senders.len();
        let mut op = Some(op);
        for i in 0..copies {
            let this = if i + 1 == copies {
                op.take()
            } else {
                op.as_ref().and_then(duplicate)
            };
            let Some(this) = this else { continue };
            let (done, wait) = oneshot::channel();
            if self.senders[i].send(this).await.is_err()
                || self.senders[i]
                    .send(Op::Barrier { seq, done })
                    .await
                    .is_err()
            {
                return false;
            }
            let _ = wait.await;
        }
        true
    }

    /// One operation per slot with the same effect, or the operation back when there is none.
    fn split(&mut self, op: Op) -> Result<Vec<Op>, Op> {
        match op {
            Op::Cmd { seq, db, argv } => {
                let name = argv.name().to_ascii_uppercase();
                let args: Vec<&[u8]> = argv.iter().skip(1).collect();
                let parts: Vec<Argv> = match name.as_slice() {
                    b"MSET" if args.len().is_multiple_of(2) => args
                        .chunks(2)
                        .map(|kv| Argv::from_args([b"SET".as_slice(), kv[0], kv[1]]))
                        .collect(),
                    b"DEL" | b"UNLINK" | b"TOUCH" => args
                        .iter()
                        .map(|k| Argv::from_args([name.as_slice(), *k]))
                        .collect(),
                    _ => return Err(Op::Cmd { seq, db, argv }),
                };
                Ok(parts
                    .into_iter()
                    .map(|argv| Op::Cmd { seq, db, argv })
                    .collect())
            }
            Op::Atomic { seq, cmds } => {
                let mut groups: Vec<(Slot, Vec<(u32, Argv)>)> = Vec::new();
                for (i, (_, argv)) in cmds.iter().enumerate() {
                    match self.command_slot(argv) {
                        Route::Slot(s) => match groups.iter_mut().find(|(g, _)| *g == s) {
                            Some((_, g)) => g.push(cmds[i].clone()),
                            None => groups.push((s, vec![cmds[i].clone()])),
                        },
                        // A keyless or cross-slot command inside the group: no split keeps it.
                        _ => return Err(Op::Atomic { seq, cmds }),
                    }
                }
                Ok(groups
                    .into_iter()
                    .map(|(_, cmds)| Op::Atomic { seq, cmds })
                    .collect())
            }
            Op::Expiring {
                op,
                expire_at_ms,
                keys,
            } => match self.split(*op) {
                Ok(parts) => Ok(parts
                    .into_iter()
                    .map(|p| Op::Expiring {
                        op: Box::new(p),
                        expire_at_ms,
                        keys: keys.clone(),
                    })
                    .collect()),
                Err(op) => Err(Op::Expiring {
                    op: Box::new(op),
                    expire_at_ms,
                    keys,
                }),
            },
            other => Err(other),
        }
    }

    /// Asks for re-copies of every key of `op`, which cannot run on a cluster as it is.
    fn recopy_keys(&mut self, op: &Op) {
        let mut cmds: Vec<(u32, &Argv)> = Vec::new();
        let mut inner = op;
        while let Op::Expiring { op, .. } = inner {
            inner = op;
        }
        match inner {
            Op::Cmd { db, argv, .. } => cmds.push((*db, argv)),
            Op::Atomic { cmds: c, .. } => cmds.extend(c.iter().map(|(d, a)| (*d, a))),
            _ => {}
        }
        let mut first = None;
        for (db, argv) in cmds {
            self.keys.clear();
            self.table.keys_into(argv, &mut self.keys);
            first.get_or_insert_with(|| String::from_utf8_lossy(argv.name()).into_owned());
            for k in &self.keys {
                let key = argv.get(k.pos).unwrap_or_default().to_vec();
                self.stats
                    .recopies_outstanding
                    .fetch_add(1, Ordering::Relaxed);
                if self.recopy.send((db, key)).is_ok() {
                    self.stats
                        .cross_slot_recopies
                        .fetch_add(1, Ordering::Relaxed);
                } else {
                    self.stats
                        .recopies_outstanding
                        .fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
        tracing::debug!(
            command = first.unwrap_or_default(),
            "A command across slots of the target cluster: its keys are re-copied."
        );
    }
}

/// Whether replay splits `argv` into one command per slot when its keys span slots (`MSET`,
/// `DEL`, `UNLINK`, `TOUCH`); the stitcher re-copies the keys of any other such command.
pub fn splits(argv: &Argv) -> bool {
    let name = argv.name();
    ["MSET", "DEL", "UNLINK", "TOUCH"]
        .iter()
        .any(|n| name.eq_ignore_ascii_case(n.as_bytes()))
        && (!name.eq_ignore_ascii_case(b"MSET") || (argv.len() - 1).is_multiple_of(2))
}

/// A copy of a keyless operation for another primary (`FLUSHALL`, `SCRIPT LOAD`, libraries).
fn duplicate(op: &Op) -> Option<Op> {
    match op {
        Op::Cmd { seq, db, argv } => Some(Op::Cmd {
            seq: *seq,
            db: *db,
            argv: argv.clone(),
        }),
        Op::Atomic { seq, cmds } => Some(Op::Atomic {
            seq: *seq,
            cmds: cmds.clone(),
        }),
        Op::Functions { seq, payload } => Some(Op::Functions {
            seq: *seq,
            payload: payload.clone(),
        }),
        _ => None,
    }
}
