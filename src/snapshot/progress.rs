//! Snapshot progress: a bar with keys done, total and ETA on a terminal, log lines otherwise;
//! the [`SnapshotCounters`] and `ferry_snapshot_*` metrics a run's status and report read.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A progress bar of keys on stderr (done/total, rate, ETA) when stderr is a terminal; `None`
/// otherwise, so that logs and pipes get no bar. Shared by the long commands: snapshot, verify,
/// backup.
pub fn key_bar(total: u64, what: &str) -> Option<ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    let template = format!(
        "{{spinner}} [{{elapsed_precise}}] {{wide_bar}} {{human_pos}}/{{human_len}} {what} {{per_sec}} ETA {{eta}}"
    );
    bar.set_style(
        ProgressStyle::with_template(&template).unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    Some(bar)
}

/// Advances `bar` by `n`, growing its length when keys appear during the run (SCAN may return
/// a key twice, and keys are created while it runs).
pub fn advance_bar(bar: &ProgressBar, n: u64) {
    bar.inc(n);
    if bar.position() > bar.length().unwrap_or(0) {
        bar.set_length(bar.position());
    }
}

/// How far the current snapshot (or resync) is, shared with whoever reports on the run.
#[derive(Debug, Default)]
pub struct SnapshotCounters {
    /// Keys handled by the snapshot running now (read, expired or vanished); reset when a
    /// snapshot or resync starts.
    pub done: AtomicU64,
    /// Keys on the source when the snapshot running now started (`DBSIZE`), the progress total.
    pub total: AtomicU64,
    /// Keys handled by every snapshot and resync of the run.
    pub done_all: AtomicU64,
    /// Payload bytes read by every snapshot and resync of the run.
    pub bytes: AtomicU64,
}

impl SnapshotCounters {
    fn start(&self, total: u64) {
        self.done.store(0, Ordering::Relaxed);
        self.total.store(total, Ordering::Relaxed);
        metrics::gauge!("ferry_snapshot_keys").set(total as f64);
        metrics::gauge!("ferry_snapshot_keys_done").set(0.0);
    }

    fn add(&self, keys: u64, bytes: u64) {
        let done = self.done.fetch_add(keys, Ordering::Relaxed) + keys;
        self.done_all.fetch_add(keys, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        metrics::gauge!("ferry_snapshot_keys_done").set(done as f64);
        metrics::counter!("ferry_snapshot_keys_read_total").increment(keys);
        metrics::counter!("ferry_snapshot_bytes_total").increment(bytes);
    }
}

/// Progress display for one run.
pub(super) struct Progress {
    bar: Option<ProgressBar>,
    log: Option<Mutex<LogState>>,
    total: u64,
    counters: std::sync::Arc<SnapshotCounters>,
}

struct LogState {
    done: u64,
    last: Instant,
    started: Instant,
}

const LOG_EVERY: Duration = Duration::from_secs(5);

impl Progress {
    pub(super) fn new(
        enabled: bool,
        total: u64,
        counters: std::sync::Arc<SnapshotCounters>,
    ) -> Progress {
        counters.start(total);
        if !enabled {
            return Progress {
                bar: None,
                log: None,
                total,
                counters,
            };
        }
        if let Some(bar) = key_bar(total, "keys") {
            return Progress {
                bar: Some(bar),
                log: None,
                total,
                counters,
            };
        }
        let now = Instant::now();
        Progress {
            bar: None,
            log: Some(Mutex::new(LogState {
                done: 0,
                last: now,
                started: now,
            })),
            total,
            counters,
        }
    }

    pub(super) fn advance(&self, keys: u64, bytes: u64) {
        self.counters.add(keys, bytes);
        if let Some(bar) = &self.bar {
            advance_bar(bar, keys);
        }
        if let Some(log) = &self.log
            && let Ok(mut s) = log.lock()
        {
            s.done += keys;
            if s.last.elapsed() >= LOG_EVERY {
                s.last = Instant::now();
                let secs = s.started.elapsed().as_secs_f64();
                let rate = s.done as f64 / secs.max(1e-9);
                let eta = self.total.saturating_sub(s.done) as f64 / rate.max(1e-9);
                tracing::info!(
                    done = s.done,
                    total = self.total,
                    keys_per_sec = rate as u64,
                    eta_secs = eta as u64,
                    "Snapshot progress."
                );
            }
        }
    }

    pub(super) fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
