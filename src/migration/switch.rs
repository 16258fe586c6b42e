//! The switch: a migration stopped at its final fence with source writes paused, the reverse
//! sync that can start from there, and the release that never lets held writes run on the old
//! source.

use std::time::{Duration, Instant};

use super::{CaptureMode, MigrateConfig, MigrateError, Migration, MigrationReport, Running};
use crate::net::Endpoint;

/// A migration stopped at its final fence, with source writes (normally) still paused: the
/// moment to switch clients to the target.
pub struct Fenced {
    source: Endpoint,
    target: Endpoint,
    pauser: Option<redis::aio::MultiplexedConnection>,
    pause_started: Instant,
    max_pause: Duration,
    started: Instant,
    report: MigrationReport,
}

impl Fenced {
    pub(crate) fn new(
        source: Endpoint,
        target: Endpoint,
        pauser: Option<redis::aio::MultiplexedConnection>,
        pause_started: Instant,
        max_pause: Duration,
        started: Instant,
        report: MigrationReport,
    ) -> Fenced {
        Fenced {
            source,
            target,
            pauser,
            pause_started,
            max_pause,
            started,
            report,
        }
    }

    /// True when source writes are paused.
    pub fn paused(&self) -> bool {
        self.pauser.is_some()
    }

    /// How long source writes have been paused.
    pub fn paused_for(&self) -> Duration {
        self.pause_started.elapsed()
    }

    /// The source.
    pub fn source(&self) -> &Endpoint {
        &self.source
    }

    /// The target.
    pub fn target(&self) -> &Endpoint {
        &self.target
    }

    /// Starts a reverse sync, target → source, from this fence: the two are equal here, so it
    /// needs no snapshot. Capture on the target is live before this returns, so every write
    /// the switched clients make is in its stream; replay to the source waits for the unpause.
    pub async fn reverse(&self, mut cfg: MigrateConfig) -> Result<Running, MigrateError> {
        cfg.capture = CaptureMode::Primary;
        cfg.skip_snapshot = true;
        cfg.mapper = None;
        Migration::new(self.target.clone(), self.source.clone(), cfg)
            .start()
            .await
    }

    /// Ends the pause. With `disconnect_held`, first disconnects every client the pause holds
    /// (and any other blocked client but ferry's own), so no held write runs on the old
    /// source after the switch: their clients get an error and retry on the new server.
    pub async fn release(mut self, disconnect_held: bool) -> Result<MigrationReport, MigrateError> {
        if let Some(mut src) = self.pauser.take() {
            if disconnect_held {
                match disconnect_blocked(&mut src).await {
                    Ok(n) => self.report.held_clients_disconnected = n,
                    Err(e) => tracing::warn!(error = %e, "Could not disconnect held clients."),
                }
            }
            let elapsed = self.pause_started.elapsed();
            if elapsed > self.max_pause {
                tracing::warn!(
                    paused_ms = elapsed.as_millis() as u64,
                    max_pause_ms = self.max_pause.as_millis() as u64,
                    "The pause ran out before the release: writes held on the source may have run there after the final fence."
                );
                self.report.pause_expired = true;
            }
            let _ = redis::cmd("CLIENT")
                .arg("UNPAUSE")
                .query_async::<()>(&mut src)
                .await;
            self.report.pause_ms = elapsed.min(self.max_pause).as_millis() as u64;
        }
        self.report.elapsed_secs = self.started.elapsed().as_secs_f64();
        Ok(self.report)
    }
}

/// Disconnects every blocked client except ferry's (named `ferry-…`) and this connection.
async fn disconnect_blocked(
    con: &mut redis::aio::MultiplexedConnection,
) -> Result<u64, redis::RedisError> {
    let list: String = redis::cmd("CLIENT").arg("LIST").query_async(con).await?;
    let mut pipe = redis::pipe();
    let mut n = 0;
    for line in list.lines() {
        let field = |k: &str| {
            line.split(' ')
                .find_map(|f| f.strip_prefix(k))
                .unwrap_or_default()
        };
        if field("flags=").contains('b') && !field("name=").starts_with("ferry") {
            pipe.cmd("CLIENT")
                .arg("KILL")
                .arg("ID")
                .arg(field("id="))
                .ignore();
            n += 1;
        }
    }
    if n > 0 {
        pipe.query_async::<()>(con).await?;
    }
    Ok(n)
}
