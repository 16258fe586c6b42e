//! Markers: `ECHO ferry:<id>` lines placed on the capture nodes, so that a position in the
//! source's stream can be named and waited for on the target.
//!
//! ## Behavior
//! - A position (and a snapshot's end) is placed on every node, one copy per stream; the
//!   stitcher counts the copies and treats the position as reached at the last one, when every
//!   stream has delivered everything before its copy (a cluster source has one per shard).
//! - A `dirty:` marker names its key, so it goes to the node holding the key, once.

use crate::capture::{PeerRegistry, Role};
use crate::journal::Marker;
use crate::net::{NodesCell, SourceNodes};

use super::report::{MigrateError, stage};

/// One control connection per capture node, whose `ECHO ferry:<id>` lines are markers.
pub(super) struct Markers {
    cons: Vec<redis::aio::MultiplexedConnection>,
    nodes: SourceNodes,
    /// Where the nodes come from, and the version `cons` reach.
    cell: NodesCell,
    version: u64,
    peers: std::sync::Arc<PeerRegistry>,
    n: u64,
}

impl Markers {
    pub(super) async fn connect(
        cell: &NodesCell,
        peers: &std::sync::Arc<PeerRegistry>,
    ) -> Result<Markers, MigrateError> {
        let (version, nodes) = cell.get();
        Ok(Markers {
            cons: Self::open(&nodes, peers).await?,
            nodes,
            cell: cell.clone(),
            version,
            peers: peers.clone(),
            n: 0,
        })
    }

    async fn open(
        nodes: &SourceNodes,
        peers: &PeerRegistry,
    ) -> Result<Vec<redis::aio::MultiplexedConnection>, MigrateError> {
        let mut cons = Vec::with_capacity(nodes.len());
        for node in nodes.all() {
            let mut con = node.control().await?;
            let addr = crate::net::client_addr(&mut con)
                .await
                .map_err(|e| stage("markers", e))?;
            peers.register(node, &addr, Role::Control);
            cons.push(con);
        }
        Ok(cons)
    }

    /// After a failover of a cluster source, reconnects to the nodes capture now reads.
    async fn follow(&mut self) -> Result<(), MigrateError> {
        if self.cell.version() == self.version {
            return Ok(());
        }
        let (version, nodes) = self.cell.get();
        self.cons = Self::open(&nodes, &self.peers).await?;
        self.nodes = nodes;
        self.version = version;
        Ok(())
    }

    /// Places a position marker named `what` plus a number, and returns its id.
    pub(super) async fn place(&mut self, what: &str) -> Result<String, MigrateError> {
        self.n += 1;
        let id = format!("{what}{}", self.n);
        self.place_marker(&Marker::Position(id.clone())).await?;
        Ok(id)
    }

    /// Places `marker` in every node's stream.
    pub(super) async fn place_marker(&mut self, marker: &Marker) -> Result<(), MigrateError> {
        self.follow().await?;
        let echo = marker.echo();
        // One node after the other: each copy only orders its own stream.
        for con in &mut self.cons {
            redis::cmd("ECHO")
                .arg(echo.as_slice())
                .query_async::<()>(con)
                .await
                .map_err(|e| stage("markers", e))?;
        }
        Ok(())
    }

    /// Pauses every client of the source for `ms` and places a position marker named `what`
    /// plus a number in the same transaction, `MULTI; CLIENT PAUSE ms; ECHO …; EXEC`: every
    /// command that ran before is in the stream before the marker, and none can run after it
    /// until the pause ends. For sources before Redis 6.2, whose only pause holds every client.
    pub(super) async fn place_pausing_all(
        &mut self,
        what: &str,
        ms: u64,
    ) -> Result<String, MigrateError> {
        self.follow().await?;
        self.n += 1;
        let id = format!("{what}{}", self.n);
        let echo = Marker::Position(id.clone()).echo();
        for con in &mut self.cons {
            redis::pipe()
                .atomic()
                .cmd("CLIENT")
                .arg("PAUSE")
                .arg(ms)
                .ignore()
                .cmd("ECHO")
                .arg(echo.as_slice())
                .ignore()
                .query_async::<()>(con)
                .await
                .map_err(|e| stage("final fence", e))?;
        }
        Ok(id)
    }

    /// Asks for a fenced re-copy of each source key, from here in the stream of its node.
    pub(super) async fn place_dirty(
        &mut self,
        keys: &[(u32, Vec<u8>)],
    ) -> Result<(), MigrateError> {
        self.follow().await?;
        for chunk in keys.chunks(1000) {
            let mut pipes: Vec<Option<redis::Pipeline>> = vec![None; self.cons.len()];
            for (db, key) in chunk {
                let marker = Marker::Dirty {
                    db: *db,
                    key: key.clone(),
                };
                pipes[self.nodes.index_of(key)]
                    .get_or_insert_with(redis::pipe)
                    .cmd("ECHO")
                    .arg(marker.echo());
            }
            for (pipe, con) in pipes.iter().zip(&mut self.cons) {
                if let Some(pipe) = pipe {
                    pipe.query_async::<()>(con)
                        .await
                        .map_err(|e| stage("markers", e))?;
                }
            }
        }
        Ok(())
    }
}
