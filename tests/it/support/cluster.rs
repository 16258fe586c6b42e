//! Owns throwaway three-master Redis Clusters built from [`RedisServer`]s, with or without one
//! replica per master.

use std::time::{Duration, Instant};

use super::server::{RedisServer, ServerOptions, info_field};

const CLUSTER_OK_TIMEOUT: Duration = Duration::from_secs(20);

/// The slot ranges of the three masters, in node order (same split as `redis-cli --cluster create`).
pub const SLOT_RANGES: [(u16, u16); 3] = [(0, 5460), (5461, 10922), (10923, 16383)];

/// What ElastiCache renames away that a cluster's own replicas can live without: the
/// replication commands (`SYNC`, `PSYNC`, `REPLICAOF`) must stay for them.
pub const ELASTICACHE_CLUSTER_DISABLED_COMMANDS: &[&str] = &[
    "CONFIG",
    "DEBUG",
    "SAVE",
    "BGSAVE",
    "BGREWRITEAOF",
    "SHUTDOWN",
];

/// Three cluster-enabled masters, each with zero or one replica; every node is killed on drop.
pub struct Cluster {
    /// The masters, in [`SLOT_RANGES`] order.
    nodes: Vec<RedisServer>,
    /// `replicas[i]` replicates `nodes[i]`; empty for a cluster without replicas.
    replicas: Vec<RedisServer>,
}

impl Cluster {
    pub fn start() -> Self {
        Self::start_with(ServerOptions::default())
    }

    /// Three masters each with one replica, returned once every replica has synced and every
    /// node sees the cluster ok.
    pub fn start_with_replicas() -> Self {
        Self::start_full(ServerOptions::default(), true)
    }

    /// Like ElastiCache in cluster mode: [`ELASTICACHE_CLUSTER_DISABLED_COMMANDS`] renamed away
    /// on every node, replication kept so that `replicas` can sync.
    pub fn start_elasticache_like(replicas: bool) -> Self {
        let rename = ELASTICACHE_CLUSTER_DISABLED_COMMANDS
            .iter()
            .map(|name| format!("rename-command {name} \"\""))
            .collect();
        Self::start_full(
            ServerOptions {
                extra_config: rename,
                ..ServerOptions::default()
            },
            replicas,
        )
    }

    /// Every node gets `options` (with `cluster` forced on). No replicas.
    pub fn start_with(options: ServerOptions) -> Self {
        Self::start_full(options, false)
    }

    /// Every node gets `options` (with `cluster` forced on); `replicas` adds one replica per
    /// master. `options.elasticache_like` cannot have replicas (no PSYNC): use
    /// [`Self::start_elasticache_like`].
    pub fn start_full(options: ServerOptions, replicas: bool) -> Self {
        assert!(
            !(replicas && options.elasticache_like),
            "elasticache_like renames PSYNC away, so no replica could sync: \
             use Cluster::start_elasticache_like(true)"
        );
        let options = ServerOptions {
            cluster: true,
            ..options
        };
        let nodes: Vec<RedisServer> = (0..SLOT_RANGES.len())
            .map(|_| RedisServer::start_with(options.clone()))
            .collect();
        for (i, (node, (first, last))) in nodes.iter().zip(SLOT_RANGES).enumerate() {
            let mut con = node.conn();
            let ranged = redis::cmd("CLUSTER")
                .arg("ADDSLOTSRANGE")
                .arg(first)
                .arg(last)
                .exec(&mut con);
            if ranged.is_err() {
                // ADDSLOTSRANGE is Redis 7.0's; before it every slot is named.
                redis::cmd("CLUSTER")
                    .arg("ADDSLOTS")
                    .arg((first..=last).collect::<Vec<u16>>())
                    .exec(&mut con)
                    .expect("CLUSTER ADDSLOTS");
            }
            // Distinct epochs up front, as `redis-cli --cluster create` does, so the nodes do
            // not have to resolve an epoch collision before agreeing on the slot map.
            redis::cmd("CLUSTER")
                .arg("SET-CONFIG-EPOCH")
                .arg(i + 1)
                .exec(&mut con)
                .expect("CLUSTER SET-CONFIG-EPOCH");
        }
        let mut first = nodes[0].conn();
        for other in &nodes[1..] {
            redis::cmd("CLUSTER")
                .arg("MEET")
                .arg("127.0.0.1")
                .arg(other.port())
                .arg(other.cluster_port().expect("cluster node has a bus port"))
                .exec(&mut first)
                .expect("CLUSTER MEET");
        }
        let replicas: Vec<RedisServer> = if replicas {
            nodes
                .iter()
                .map(|_| RedisServer::start_with(options.clone()))
                .collect()
        } else {
            Vec::new()
        };
        for replica in &replicas {
            redis::cmd("CLUSTER")
                .arg("MEET")
                .arg("127.0.0.1")
                .arg(replica.port())
                .arg(replica.cluster_port().expect("cluster node has a bus port"))
                .exec(&mut first)
                .expect("CLUSTER MEET");
        }
        let cluster = Cluster { nodes, replicas };
        if !cluster.replicas.is_empty() {
            cluster.attach_replicas();
        }
        cluster.wait_until_ok();
        cluster
    }

    /// `CLUSTER REPLICATE` on each replica once it has heard of its master through gossip.
    fn attach_replicas(&self) {
        let deadline = Instant::now() + CLUSTER_OK_TIMEOUT;
        for (master, replica) in self.nodes.iter().zip(&self.replicas) {
            let id: String = redis::cmd("CLUSTER")
                .arg("MYID")
                .query(&mut master.conn())
                .expect("CLUSTER MYID");
            let mut con = replica.conn();
            loop {
                match redis::cmd("CLUSTER")
                    .arg("REPLICATE")
                    .arg(&id)
                    .exec(&mut con)
                {
                    Ok(()) => break,
                    // "Unknown node": the MEET has not reached it yet.
                    Err(_) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    Err(e) => panic!(
                        "CLUSTER REPLICATE {id} on {}: {e}\n{}",
                        replica.addr(),
                        replica.log_tail(10)
                    ),
                }
            }
        }
    }

    fn wait_until_ok(&self) {
        let deadline = Instant::now() + CLUSTER_OK_TIMEOUT;
        let all: Vec<&RedisServer> = self.nodes.iter().chain(&self.replicas).collect();
        let known = all.len().to_string();
        let mut cons: Vec<redis::Connection> = all.iter().map(|n| n.conn()).collect();
        loop {
            let infos: Vec<String> = cons
                .iter_mut()
                .map(|con| {
                    redis::cmd("CLUSTER")
                        .arg("INFO")
                        .query(con)
                        .expect("CLUSTER INFO")
                })
                .collect();
            let ready = infos.iter().all(|info| {
                info_field(info, "cluster_state").as_deref() == Some("ok")
                    && info_field(info, "cluster_known_nodes").as_deref() == Some(known.as_str())
                    && info_field(info, "cluster_slots_ok").as_deref() == Some("16384")
            });
            // A replica counts once its initial sync is over and every master has seen it.
            let synced = self.replicas.iter().all(|replica| {
                let info = replica.info("replication");
                info_field(&info, "master_link_status").as_deref() == Some("up")
                    && info_field(&info, "master_sync_in_progress").as_deref() == Some("0")
            }) && self.nodes.iter().all(|master| {
                let want = if self.replicas.is_empty() { "0" } else { "1" };
                info_field(&master.info("replication"), "connected_slaves").as_deref() == Some(want)
            });
            // Every node has heard of every replica (gossip), so any node's CLUSTER NODES
            // lists each master's replica.
            let gossiped = self.replicas.is_empty()
                || cons.iter_mut().all(|con| {
                    let nodes: String = redis::cmd("CLUSTER")
                        .arg("NODES")
                        .query(con)
                        .expect("CLUSTER NODES");
                    nodes
                        .lines()
                        .filter(|l| {
                            l.split_whitespace()
                                .nth(2)
                                .is_some_and(|f| f.contains("slave") && !f.contains("fail"))
                        })
                        .count()
                        == self.replicas.len()
                });
            if ready && synced && gossiped {
                return;
            }
            if Instant::now() > deadline {
                let mut msg = format!("cluster not ok within {CLUSTER_OK_TIMEOUT:?}\n");
                for (node, info) in all.iter().zip(&infos) {
                    msg += &format!(
                        "--- node {} ---\n{info}\n{}\n",
                        node.addr(),
                        node.log_tail(10)
                    );
                }
                panic!("{msg}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The masters, in [`SLOT_RANGES`] order.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// `replicas()[i]` replicates `nodes()[i]`; empty without replicas.
    pub fn replicas(&self) -> &[RedisServer] {
        &self.replicas
    }

    /// Blocks until every replica acknowledged every write made so far on its master.
    pub fn wait_for_replicas(&self) {
        if self.replicas.is_empty() {
            return;
        }
        for master in &self.nodes {
            master.wait_for_replicas(1, Duration::from_secs(10));
        }
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    pub fn cluster_client(&self) -> redis::cluster::ClusterClient {
        let mut builder = redis::cluster::ClusterClient::builder(self.urls());
        if let Some(pw) = self.nodes[0].password() {
            builder = builder.password(pw);
        }
        builder.build().expect("build ClusterClient")
    }

    pub fn cluster_conn(&self) -> redis::cluster::ClusterConnection {
        self.cluster_client()
            .get_connection()
            .expect("connect ClusterClient")
    }

    /// Hash slot of `key`, computed by the server rather than by us.
    pub fn slot_of(&self, key: &[u8]) -> u16 {
        redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut self.nodes[0].conn())
            .expect("CLUSTER KEYSLOT")
    }

    /// Index into [`Self::nodes`] of the master owning `slot`.
    pub fn node_index_for_slot(slot: u16) -> usize {
        SLOT_RANGES
            .iter()
            .position(|&(first, last)| (first..=last).contains(&slot))
            .expect("slot below 16384")
    }

    pub fn node_for_key(&self, key: &[u8]) -> &RedisServer {
        &self.nodes[Self::node_index_for_slot(self.slot_of(key))]
    }
}
