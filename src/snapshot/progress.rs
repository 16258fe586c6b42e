//! Snapshot progress: a bar with keys done, total and ETA on a terminal, log lines otherwise.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Progress display for one run.
pub(super) struct Progress {
    bar: Option<ProgressBar>,
    log: Option<Mutex<LogState>>,
    total: u64,
}

struct LogState {
    done: u64,
    last: Instant,
    started: Instant,
}

const LOG_EVERY: Duration = Duration::from_secs(5);

impl Progress {
    pub(super) fn new(enabled: bool, total: u64) -> Progress {
        if !enabled {
            return Progress {
                bar: None,
                log: None,
                total,
            };
        }
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} keys {per_sec} ETA {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            return Progress {
                bar: Some(bar),
                log: None,
                total,
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
        }
    }

    pub(super) fn advance(&self, keys: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(keys);
            // SCAN may return a key twice and keys appear during the run; keep the bar honest.
            if bar.position() > bar.length().unwrap_or(0) {
                bar.set_length(bar.position());
            }
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
