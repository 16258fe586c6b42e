//! One replay connection kept alive: reopened after a growing, capped backoff, with a resync
//! asked for only when commands may have been lost (the standalone shards and the cluster's
//! per-primary connections both run this way).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::exec::{ReplayError, ReplayStats, Replayer};
use super::op::Op;
use super::policy::{ErrorClass, classify};
use crate::net::Endpoint;

/// First wait before a replay connection is reopened; it doubles up to [`MAX_RECONNECT_DELAY`].
const FIRST_RECONNECT_DELAY: Duration = Duration::from_millis(100);
/// Longest wait between attempts: a target back from a restart is found within this.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(5);
/// A connection that lived this long was healthy: the next failure starts the backoff over.
const HEALTHY_FOR: Duration = Duration::from_secs(30);

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

/// Starts one replay connection fed by the returned channel: it reconnects after a growing,
/// capped backoff and reports on `broken` when commands may have been lost.
pub(super) fn spawn_shard(
    replayer: Replayer,
    stats: Arc<ReplayStats>,
    broken: mpsc::UnboundedSender<String>,
) -> mpsc::Sender<Op> {
    let (tx, mut rx) = mpsc::channel::<Op>(4096);
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
    tx
}
