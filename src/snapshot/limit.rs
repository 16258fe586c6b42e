//! The source's command budget (`--max-source-ops`): one pacer shared by the scanner, every
//! worker's fenced reads and every chunked copy's window reads.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

/// Limits the command rate on the source across all tasks that hold it.
///
/// ## Behavior
/// - [`RateLimiter::acquire`] reserves `ops` commands and sleeps until the reservation is due:
///   reservations are handed out back to back at `per_sec`, so over any run the source sees at
///   most `per_sec` commands per second plus one reservation.
/// - The first reservation is due at once; a limiter never sleeps before the first command.
/// - Every acquired op is counted ([`RateLimiter::acquired`]), so callers and tests can check
///   that a path is paced at all without measuring time.
#[derive(Debug)]
pub struct RateLimiter {
    per_sec: u64,
    next: Mutex<Instant>,
    acquired: AtomicU64,
}

impl RateLimiter {
    /// A limiter of `per_sec` commands per second (at least 1).
    pub fn new(per_sec: u64) -> RateLimiter {
        RateLimiter {
            per_sec: per_sec.max(1),
            next: Mutex::new(Instant::now()),
            acquired: AtomicU64::new(0),
        }
    }

    /// Waits until `ops` more commands may be sent.
    pub async fn acquire(&self, ops: u64) {
        self.acquired.fetch_add(ops, Ordering::Relaxed);
        let wait = {
            let mut next = self.next.lock().await;
            let now = Instant::now();
            let start = (*next).max(now);
            *next = start + Duration::from_secs_f64(ops as f64 / self.per_sec as f64);
            start - now
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// Commands acquired so far.
    pub fn acquired(&self) -> u64 {
        self.acquired.load(Ordering::Relaxed)
    }

    /// Commands a pipeline sends: its commands, plus `MULTI` and `EXEC` when it is atomic.
    pub fn ops_of(pipe: &redis::Pipeline) -> u64 {
        pipe.len() as u64 + if pipe.is_transaction() { 2 } else { 0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reservations_follow_each_other_at_the_rate() {
        let l = RateLimiter::new(1000);
        let t0 = Instant::now();
        l.acquire(100).await; // due at once
        l.acquire(100).await; // due after the first 100 ops: 0.1 s
        l.acquire(1).await; // due after 200 ops: 0.2 s
        // A sleep never ends early, so this lower bound cannot flake.
        assert!(
            t0.elapsed() >= Duration::from_millis(190),
            "{:?}",
            t0.elapsed()
        );
        assert_eq!(l.acquired(), 201);
    }
}
