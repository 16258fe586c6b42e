//! The switch: a migration stopped at its final fence with source writes paused, the reverse
//! sync that can start from there, and the release that never lets held writes run on the old
//! source.

use std::time::{Duration, Instant};

use super::{CaptureMode, MigrateConfig, MigrateError, Migration, MigrationReport, Running};
use redis::aio::MultiplexedConnection;

use crate::net::Endpoint;

/// Source writes paused by a fence (`CLIENT PAUSE … WRITE`), and how to end the pause without
/// letting held writes run on the old source.
pub struct Pause {
    /// One connection per paused node (every primary of a cluster source); empty when
    /// nothing is paused through a connection.
    cons: Vec<MultiplexedConnection>,
    started: Instant,
    max: Duration,
    /// Every client is paused (a source before Redis 6.2) until the pause runs out by itself.
    all_clients: bool,
}

/// How a pause ended.
#[derive(Debug, Clone, Copy, Default)]
pub struct PauseEnd {
    /// How long writes were paused, in ms (at most the bound).
    pub pause_ms: u64,
    /// Clients held by the pause (or blocked) that were disconnected at the release.
    pub held_clients_disconnected: u64,
    /// The pause ran out before the release.
    pub expired: bool,
}

impl Pause {
    pub(crate) fn new(cons: Vec<MultiplexedConnection>, started: Instant, max: Duration) -> Pause {
        Pause {
            cons,
            started,
            max,
            all_clients: false,
        }
    }

    /// A pause of every client, begun at `started` for `max`, that nothing can end early
    /// (`CLIENT PAUSE` before Redis 6.2 has no `WRITE` and no `CLIENT UNPAUSE`).
    pub(crate) fn all_clients(started: Instant, max: Duration) -> Pause {
        Pause {
            cons: Vec::new(),
            started,
            max,
            all_clients: true,
        }
    }

    /// True when source writes are paused.
    pub fn paused(&self) -> bool {
        !self.cons.is_empty() || (self.all_clients && self.started.elapsed() < self.max)
    }

    /// How long source writes have been paused.
    pub fn paused_for(&self) -> Duration {
        self.started.elapsed()
    }

    /// Renews the pause for another `max` and disconnects the clients it holds, so that they
    /// reconnect (and find the new primary); returns how many were disconnected. For a source
    /// kept closed through a cutover's trailing window.
    pub async fn hold(&mut self) -> u64 {
        let mut disconnected = 0;
        for con in &mut self.cons {
            let renewed = redis::cmd("CLIENT")
                .arg("PAUSE")
                .arg(self.max.as_millis() as u64)
                .arg("WRITE")
                .query_async::<()>(con)
                .await;
            if let Err(e) = renewed {
                tracing::warn!(error = %e, "Could not renew the source's write pause.");
            }
            match disconnect_blocked(con).await {
                Ok(n) => disconnected += n,
                Err(e) => tracing::warn!(error = %e, "Could not disconnect held clients."),
            }
        }
        disconnected
    }

    /// Ends the pause. With `disconnect_held`, first disconnects every client the pause holds
    /// (and any other blocked client but ferry's own), so no held write runs on the old
    /// source after the switch: their clients get an error and retry on the new server.
    pub async fn release(mut self, disconnect_held: bool) -> PauseEnd {
        let mut end = PauseEnd::default();
        if self.all_clients {
            // Nothing ends it early: it lasts its whole time.
            end.pause_ms = self.max.as_millis() as u64;
            return end;
        }
        if self.cons.is_empty() {
            return end;
        }
        if disconnect_held {
            for src in &mut self.cons {
                match disconnect_blocked(src).await {
                    Ok(n) => end.held_clients_disconnected += n,
                    Err(e) => tracing::warn!(error = %e, "Could not disconnect held clients."),
                }
            }
        }
        let elapsed = self.started.elapsed();
        if elapsed > self.max {
            tracing::warn!(
                paused_ms = elapsed.as_millis() as u64,
                max_pause_ms = self.max.as_millis() as u64,
                "The pause ran out before the release: writes held on the source may have run there after the final fence."
            );
            end.expired = true;
        }
        for src in &mut self.cons {
            let _ = redis::cmd("CLIENT")
                .arg("UNPAUSE")
                .query_async::<()>(src)
                .await;
        }
        end.pause_ms = elapsed.min(self.max).as_millis() as u64;
        end
    }
}

/// A migration stopped at its final fence, with source writes (normally) still paused: the
/// moment to switch clients to the target.
pub struct Fenced {
    source: Endpoint,
    target: Endpoint,
    pause: Pause,
    started: Instant,
    report: MigrationReport,
}

impl Fenced {
    pub(crate) fn new(
        source: Endpoint,
        target: Endpoint,
        pause: Pause,
        started: Instant,
        report: MigrationReport,
    ) -> Fenced {
        Fenced {
            source,
            target,
            pause,
            started,
            report,
        }
    }

    /// True when source writes are paused.
    pub fn paused(&self) -> bool {
        self.pause.paused()
    }

    /// How long source writes have been paused.
    pub fn paused_for(&self) -> Duration {
        self.pause.paused_for()
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
    pub async fn reverse(&self, cfg: MigrateConfig) -> Result<Running, MigrateError> {
        reverse_sync(&self.source, &self.target, cfg).await
    }

    /// Ends the pause (see [`Pause::release`]) and completes the report.
    pub async fn release(self, disconnect_held: bool) -> Result<MigrationReport, MigrateError> {
        let end = self.pause.release(disconnect_held).await;
        let mut report = self.report;
        if report.window.is_none() {
            // Without a trailing window this fence was the switch: its pause is the one the
            // clients felt.
            report.pause_ms = end.pause_ms;
            report.held_clients_disconnected = end.held_clients_disconnected;
            report.pause_expired = end.expired;
        } else {
            report.final_pause_ms = end.pause_ms;
            report.held_clients_disconnected += end.held_clients_disconnected;
            report.pause_expired |= end.expired;
        }
        report.elapsed_secs = self.started.elapsed().as_secs_f64();
        Ok(report)
    }
}

/// Starts a reverse sync, target → source, at a fence where the two are equal (no snapshot).
pub async fn reverse_sync(
    source: &Endpoint,
    target: &Endpoint,
    mut cfg: MigrateConfig,
) -> Result<Running, MigrateError> {
    cfg.capture = CaptureMode::Primary;
    cfg.skip_snapshot = true;
    cfg.mapper = None;
    Migration::new(target.clone(), source.clone(), cfg)
        .start()
        .await
}

/// Disconnects every blocked client except ferry's (named `ferry-…`) and this connection, until
/// a fresh `CLIENT LIST` shows none: a client whose command arrived after a list was taken is
/// caught by the next one, so nobody held is released onto the old source by the unpause.
async fn disconnect_blocked(
    con: &mut redis::aio::MultiplexedConnection,
) -> Result<u64, redis::RedisError> {
    // Each round can only find clients that blocked since the last one: a few rounds settle it
    // even under a write storm, and the bound keeps a pathological source from holding us.
    const MAX_ROUNDS: usize = 50;
    let mut total = 0;
    for _ in 0..MAX_ROUNDS {
        let list: String = redis::cmd("CLIENT").arg("LIST").query_async(con).await?;
        let held = held_clients(&list);
        if held.is_empty() {
            return Ok(total);
        }
        let mut pipe = redis::pipe();
        for id in &held {
            pipe.cmd("CLIENT").arg("KILL").arg("ID").arg(*id).ignore();
        }
        pipe.query_async::<()>(con).await?;
        total += held.len() as u64;
    }
    tracing::warn!(
        rounds = MAX_ROUNDS,
        "Clients kept blocking on the paused source while ferry disconnected them; the last ones may run there after the unpause."
    );
    Ok(total)
}

/// The ids of blocked clients in a `CLIENT LIST` reply, except ferry's own.
fn held_clients(list: &str) -> Vec<&str> {
    list.lines()
        .filter_map(|line| {
            let field = |k: &str| {
                line.split(' ')
                    .find_map(|f| f.strip_prefix(k))
                    .unwrap_or_default()
            };
            (field("flags=").contains('b') && !field("name=").starts_with("ferry"))
                .then(|| field("id="))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_clients_are_the_blocked_ones_but_ferrys() {
        let list = "id=3 addr=127.0.0.1:1 name= flags=b cmd=set\n\
                    id=4 addr=127.0.0.1:2 name=ferry-replay flags=b cmd=set\n\
                    id=5 addr=127.0.0.1:3 name=app flags=N cmd=get\n\
                    id=6 addr=127.0.0.1:4 name=app flags=b cmd=incr";
        assert_eq!(held_clients(list), vec!["3", "6"]);
    }
}
