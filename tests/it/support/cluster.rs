//! Owns throwaway three-master Redis Clusters built from [`RedisServer`]s.

use std::time::{Duration, Instant};

use super::server::{RedisServer, ServerOptions, info_field};

const CLUSTER_OK_TIMEOUT: Duration = Duration::from_secs(20);

/// The slot ranges of the three masters, in node order (same split as `redis-cli --cluster create`).
pub const SLOT_RANGES: [(u16, u16); 3] = [(0, 5460), (5461, 10922), (10923, 16383)];

/// Three cluster-enabled masters with no replicas; every node is killed on drop.
pub struct Cluster {
    nodes: Vec<RedisServer>,
}

impl Cluster {
    pub fn start() -> Self {
        Self::start_with(ServerOptions::default())
    }

    /// Every node gets `options` (with `cluster` forced on).
    pub fn start_with(options: ServerOptions) -> Self {
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
        let cluster = Cluster { nodes };
        cluster.wait_until_ok();
        cluster
    }

    fn wait_until_ok(&self) {
        let deadline = Instant::now() + CLUSTER_OK_TIMEOUT;
        let mut cons: Vec<redis::Connection> = self.nodes.iter().map(RedisServer::conn).collect();
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
                    && info_field(info, "cluster_known_nodes").as_deref() == Some("3")
                    && info_field(info, "cluster_slots_ok").as_deref() == Some("16384")
            });
            if ready {
                return;
            }
            if Instant::now() > deadline {
                let mut msg = format!("cluster not ok within {CLUSTER_OK_TIMEOUT:?}\n");
                for (node, info) in self.nodes.iter().zip(&infos) {
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

    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
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
