//! Markers: `ECHO ferry:<id>` lines placed on the capture node, so that a position in the
//! source's stream can be named and waited for on the target.

use crate::capture::{PeerRegistry, Role};
use crate::journal::Marker;
use crate::net::Endpoint;

use super::report::{MigrateError, stage};

/// A control connection on the capture node whose `ECHO ferry:<id>` lines are markers.
pub(super) struct Markers {
    con: redis::aio::MultiplexedConnection,
    n: u64,
}

impl Markers {
    pub(super) async fn connect(
        node: &Endpoint,
        peers: &PeerRegistry,
    ) -> Result<Markers, MigrateError> {
        let mut con = node.control().await?;
        let addr = crate::net::client_addr(&mut con)
            .await
            .map_err(|e| stage("markers", e))?;
        peers.register(&addr, Role::Control);
        Ok(Markers { con, n: 0 })
    }

    /// Places a position marker named `what` plus a number, and returns its id.
    pub(super) async fn place(&mut self, what: &str) -> Result<String, MigrateError> {
        self.n += 1;
        let id = format!("{what}{}", self.n);
        self.place_marker(&Marker::Position(id.clone())).await?;
        Ok(id)
    }

    /// Places `marker` in the source's stream.
    pub(super) async fn place_marker(&mut self, marker: &Marker) -> Result<(), MigrateError> {
        redis::cmd("ECHO")
            .arg(marker.echo())
            .query_async::<()>(&mut self.con)
            .await
            .map_err(|e| stage("markers", e))
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
        self.n += 1;
        let id = format!("{what}{}", self.n);
        redis::pipe()
            .atomic()
            .cmd("CLIENT")
            .arg("PAUSE")
            .arg(ms)
            .ignore()
            .cmd("ECHO")
            .arg(Marker::Position(id.clone()).echo())
            .ignore()
            .query_async::<()>(&mut self.con)
            .await
            .map_err(|e| stage("final fence", e))?;
        Ok(id)
    }

    /// Asks for a fenced re-copy of each source key, from here in the stream.
    pub(super) async fn place_dirty(
        &mut self,
        keys: &[(u32, Vec<u8>)],
    ) -> Result<(), MigrateError> {
        for chunk in keys.chunks(1000) {
            let mut pipe = redis::pipe();
            for (db, key) in chunk {
                let marker = Marker::Dirty {
                    db: *db,
                    key: key.clone(),
                };
                pipe.cmd("ECHO").arg(marker.echo());
            }
            pipe.query_async::<()>(&mut self.con)
                .await
                .map_err(|e| stage("markers", e))?;
        }
        Ok(())
    }
}
