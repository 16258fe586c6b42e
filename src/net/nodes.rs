//! [`SourceNodes`]: the nodes ferry reads a source through, one for a standalone server and one
//! per shard for a Redis Cluster, and which of them holds a key.
//!
//! ## Behavior
//! - Capture, fenced reads and markers of one shard all go to that shard's node, so a key's
//!   fences and writes share one stream (the node's `MONITOR`), in the node's own order.
//! - Keys of different shards never share a command on a cluster, so per-shard order is all
//!   the order a key needs: the shards' streams may interleave in the journal in any way.

use std::sync::Arc;

use super::Endpoint;
use super::cluster::Topology;

/// The source's nodes: the server itself, or each cluster shard's capture node.
#[derive(Debug, Clone)]
pub struct SourceNodes {
    nodes: Vec<Endpoint>,
    /// A cluster read through a replica of each shard (whose streams carry effects).
    on_replicas: bool,
    /// The cluster's slot map, whose shard `i` is read through `nodes[i]`.
    topology: Option<Arc<Topology>>,
}

impl SourceNodes {
    /// A standalone server (or one replica of it) read through `node`.
    pub fn single(node: Endpoint) -> SourceNodes {
        SourceNodes {
            nodes: vec![node],
            on_replicas: false,
            topology: None,
        }
    }

    /// A cluster, each shard read through its primary.
    pub fn cluster(topology: Topology) -> SourceNodes {
        SourceNodes {
            nodes: topology.shards.iter().map(|s| s.primary.clone()).collect(),
            on_replicas: false,
            topology: Some(Arc::new(topology)),
        }
    }

    /// A cluster, shard `i` read through `replicas[i]`, a replica of its primary.
    pub fn cluster_on_replicas(topology: Topology, replicas: Vec<Endpoint>) -> SourceNodes {
        SourceNodes {
            nodes: replicas,
            on_replicas: true,
            topology: Some(Arc::new(topology)),
        }
    }

    /// The same nodes under `topology`, a new slot map of the same primaries (slots moved
    /// between shards): each node stays with its primary's shard, wherever that now sorts.
    pub fn with_topology(&self, topology: Topology) -> Option<SourceNodes> {
        let old = self.primaries();
        let key = |e: &Endpoint| super::cluster::host_port(e);
        let mut nodes = Vec::with_capacity(topology.shards.len());
        for shard in &topology.shards {
            let at = old.iter().position(|p| key(p) == key(&shard.primary))?;
            nodes.push(self.nodes[at].clone());
        }
        Some(SourceNodes {
            nodes,
            on_replicas: self.on_replicas,
            topology: Some(Arc::new(topology)),
        })
    }

    /// True when a cluster is read through replicas.
    pub fn on_replicas(&self) -> bool {
        self.on_replicas
    }

    /// The primaries of a cluster, shard by shard (what a fence pauses); the node itself for
    /// a standalone server.
    pub fn primaries(&self) -> Vec<Endpoint> {
        match &self.topology {
            Some(t) => t.shards.iter().map(|s| s.primary.clone()).collect(),
            None => self.nodes.clone(),
        }
    }

    /// Every node, shard by shard.
    pub fn all(&self) -> &[Endpoint] {
        &self.nodes
    }

    /// How many nodes (streams) there are.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Never true: there is always a node.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The first node: where position-free requests go (re-copy requests name their key, so
    /// any stream carries them).
    pub fn first(&self) -> &Endpoint {
        &self.nodes[0]
    }

    /// True for a cluster source.
    pub fn is_cluster(&self) -> bool {
        self.topology.is_some()
    }

    /// The cluster's slot map, for a cluster source.
    pub fn topology(&self) -> Option<&Topology> {
        self.topology.as_deref()
    }

    /// The index of the node holding `key`.
    pub fn index_of(&self, key: &[u8]) -> usize {
        match &self.topology {
            None => 0,
            Some(t) => t.shard_of_key(key).min(self.nodes.len() - 1),
        }
    }

    /// The node holding `key`.
    pub fn for_key(&self, key: &[u8]) -> &Endpoint {
        &self.nodes[self.index_of(key)]
    }

    /// The nodes, for a log line.
    pub fn describe(&self) -> String {
        match &self.topology {
            Some(t) if self.on_replicas => {
                let replicas: Vec<String> = self
                    .nodes
                    .iter()
                    .map(|n| {
                        super::cluster::host_port(n)
                            .map_or_else(|| n.redacted().to_string(), |(h, p)| format!("{h}:{p}"))
                    })
                    .collect();
                format!(
                    "{} (read through replicas {})",
                    t.describe(),
                    replicas.join(", ")
                )
            }
            Some(t) => t.describe(),
            None => self.nodes[0].redacted().to_string(),
        }
    }
}

/// The source's nodes as they are now, shared by the stages that reach them: a cluster source
/// that fails over gets new nodes, and each stage picks them up at its next request.
#[derive(Debug, Clone)]
pub struct NodesCell(Arc<std::sync::RwLock<(u64, SourceNodes)>>);

impl NodesCell {
    /// A cell holding `nodes`, at version 0.
    pub fn new(nodes: SourceNodes) -> NodesCell {
        NodesCell(Arc::new(std::sync::RwLock::new((0, nodes))))
    }

    /// The nodes now, with their version (it grows at every change).
    pub fn get(&self) -> (u64, SourceNodes) {
        match self.0.read() {
            Ok(g) => (g.0, g.1.clone()),
            Err(p) => (p.get_ref().0, p.get_ref().1.clone()),
        }
    }

    /// The version now.
    pub fn version(&self) -> u64 {
        match self.0.read() {
            Ok(g) => g.0,
            Err(p) => p.get_ref().0,
        }
    }

    /// Replaces the nodes.
    pub fn set(&self, nodes: SourceNodes) {
        let mut g = match self.0.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        g.0 += 1;
        g.1 = nodes;
    }
}
