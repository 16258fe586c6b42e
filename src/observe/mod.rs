//! Watching a run from outside: [`Observer`] samples a running migration every second (through
//! its [`Probe`]) into the status file `ferry status` reads, the Prometheus metrics, and the
//! time series of the run report (`report.json`, `report.html`) written when the run ends.
//!
//! ## Layout
//! - `mod.rs` ([`Observer`]): the sampling task and the end of a run.
//! - `status.rs`: the status file (atomic writes) and `ferry status`'s text.
//! - `metrics.rs`: the exporter's listener and the `ferry_*` series.
//! - `report.rs` ([`Report`]): `report.json`; `html.rs`: `report.html`, one self-contained
//!   file with inline SVG charts.
//!
//! ## Behavior
//! - Above `migration`: it reads a run's figures and never steers it. A status or report file
//!   that cannot be written is logged, not a failure of the migration.
//! - Nothing it writes holds a URL or a password: servers appear as their engine and version.

mod html;
mod metrics;
mod report;
mod status;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::clock::now_ms;
use crate::migration::{FenceMark, Outcome, Probe, RunError, Sample};
use crate::net::Endpoint;

pub use html::render as render_html;
pub use metrics::{REPLAY_SERIES, SERIES, install as install_metrics};
pub use report::{Point, Report};
pub use status::{STATUS_FILE, Status, alive, read as read_status, render as render_status};

/// How often the run is sampled.
pub const DEFAULT_EVERY: Duration = Duration::from_secs(1);

/// Most samples kept for the report; past it every other one is dropped (the series keeps its
/// whole span at half the resolution).
const MAX_SAMPLES: usize = 20_000;

/// Why observing failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ObserveError {
    /// The metrics listener could not start.
    #[error("cannot serve metrics on {addr}: {message}")]
    Metrics { addr: SocketAddr, message: String },
    /// A file could not be read or written.
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
    /// The state dir has no status file.
    #[error(
        "{dir}: no status file ({STATUS_FILE}): no run has used this state dir yet, or it is another directory"
    )]
    NoStatus { dir: PathBuf },
}

impl ObserveError {
    fn io(path: &Path, e: impl std::fmt::Display) -> ObserveError {
        ObserveError::Io {
            path: path.to_path_buf(),
            message: e.to_string(),
        }
    }
}

/// What an observer is told.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ObserveConfig {
    /// Where the status file and the reports go (the run's state dir).
    pub state_dir: PathBuf,
    /// The plan's name.
    pub plan: String,
    /// Where to serve Prometheus metrics; `None` for no listener.
    pub metrics_addr: Option<SocketAddr>,
    /// The target, whose keys are counted for the report when the run ends.
    pub target: Option<Endpoint>,
    /// How often the run is sampled.
    pub every: Duration,
}

impl ObserveConfig {
    /// Reports into `state_dir` for plan `plan`; no metrics listener.
    pub fn new(state_dir: impl Into<PathBuf>, plan: impl Into<String>) -> ObserveConfig {
        ObserveConfig {
            state_dir: state_dir.into(),
            plan: plan.into(),
            metrics_addr: None,
            target: None,
            every: DEFAULT_EVERY,
        }
    }
}

#[derive(Default)]
struct Series {
    samples: Vec<Sample>,
    publisher: metrics::Publisher,
}

struct Inner {
    cfg: ObserveConfig,
    started_ms: u64,
    probe: Mutex<Option<Probe>>,
    series: Mutex<Series>,
}

impl Inner {
    /// Takes one sample, publishes it and rewrites the status file with `state`; `None`
    /// before the migration started.
    fn tick(&self, state: &str, error: Option<String>) -> Option<Sample> {
        // Nothing is written before the migration starts: a plan refused at its dry run or a
        // server that cannot be reached leaves the state dir as it was.
        let sample = self.probe.lock().ok()?.as_ref()?.sample();
        let mut series = self.series.lock().ok()?;
        series.publisher.publish(&sample);
        let (per_sec, eta) = status::rates(series.samples.last(), &sample);
        series.samples.push(sample.clone());
        if series.samples.len() > MAX_SAMPLES {
            let mut i = 0;
            series.samples.retain(|_| {
                i += 1;
                i % 2 == 1
            });
        }
        drop(series);
        let st = Status {
            pid: std::process::id(),
            plan: self.cfg.plan.clone(),
            started_ms: self.started_ms,
            updated_ms: now_ms().max(0) as u64,
            state: state.to_string(),
            error,
            sample: Some(sample.clone()),
            commands_per_sec: per_sec,
            eta_secs: eta,
        };
        let written = std::fs::create_dir_all(&self.cfg.state_dir)
            .map_err(|e| ObserveError::io(&self.cfg.state_dir, e))
            .and_then(|()| status::write(&self.cfg.state_dir, &st));
        if let Err(e) = written {
            tracing::warn!(error = %e, "Cannot write the status file.");
        }
        Some(sample)
    }
}

/// Samples a run every second into its status file, metrics and report series.
pub struct Observer {
    inner: Arc<Inner>,
    task: tokio::task::JoinHandle<()>,
}

impl Observer {
    /// Serves metrics when asked (an address in use fails here) and starts sampling, which
    /// writes the status file from the migration's start on. Call inside a tokio runtime.
    pub fn start(cfg: ObserveConfig) -> Result<Observer, ObserveError> {
        if let Some(addr) = cfg.metrics_addr {
            metrics::install(addr)?;
            tracing::info!(%addr, "Serving Prometheus metrics at /metrics.");
        }
        let every = cfg.every;
        let inner = Arc::new(Inner {
            cfg,
            started_ms: now_ms().max(0) as u64,
            probe: Mutex::new(None),
            series: Mutex::new(Series::default()),
        });
        let bg = inner.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                bg.tick("running", None);
            }
        });
        Ok(Observer { inner, task })
    }

    /// The hook for [`crate::migration::PlanRunner::on_start`]: sampling follows the
    /// migration from then on.
    pub fn attach(&self) -> impl Fn(Probe) + Send + Sync + 'static {
        let inner = self.inner.clone();
        move |probe| {
            if let Ok(mut p) = inner.probe.lock() {
                *p = Some(probe);
            }
            // At once, not at the next tick: a short snapshot may be over by then.
            inner.tick("running", None);
        }
    }

    /// Ends sampling and writes the final status, `report.json` and `report.html` for the
    /// run's result; returns the report (also when its files could not be written: they are
    /// logged). A run that ended before its migration started (a plan refused at its dry run,
    /// an unreachable server: the error says why) writes nothing.
    pub async fn finish(self, result: &Result<Outcome, RunError>) -> Report {
        self.task.abort();
        let (state, error, run) = match result {
            Ok(Outcome::NotStarted) => ("not started", None, None),
            Ok(Outcome::Finished(r)) => ("finished", None, Some(r)),
            Ok(Outcome::Differences(r)) => ("differences", None, Some(r)),
            Err(e) => ("failed", Some(e.to_string()), None),
        };
        let conflict = match result {
            Err(RunError::Conflict { migration, .. }) => Some(&**migration),
            _ => None,
        };
        if let Ok(Some(p)) = self.inner.probe.lock().map(|p| p.clone()) {
            p.set_phase(if error.is_some() { "failed" } else { "done" });
        }
        let last = self.inner.tick(state, error.clone());
        let started = self.inner.probe.lock().is_ok_and(|p| p.is_some());
        let fences: Vec<FenceMark> = self
            .inner
            .probe
            .lock()
            .ok()
            .and_then(|p| p.as_ref().map(Probe::fences))
            .unwrap_or_default();
        let target_keys = match &self.inner.cfg.target {
            Some(t) if last.is_some() => count_keys(t).await,
            _ => None,
        };
        let samples = self
            .inner
            .series
            .lock()
            .map(|s| s.samples.clone())
            .unwrap_or_default();
        let report = Report::build(report::Parts {
            plan: &self.inner.cfg.plan,
            outcome: state,
            error,
            started_ms: self.inner.started_ms,
            run,
            migration: conflict,
            last: last.as_ref(),
            samples: &samples,
            fences,
            target_keys,
        });
        let dir = &self.inner.cfg.state_dir;
        if !started {
            return report;
        }
        if let Err(e) = write_report(dir, &report) {
            tracing::warn!(error = %e, "Cannot write the run report.");
        } else {
            tracing::info!(
                json = %dir.join(report::JSON_FILE).display(),
                html = %dir.join(report::HTML_FILE).display(),
                "Run report written."
            );
        }
        report
    }
}

/// Writes `report.json` and `report.html` into `dir`, each through a temporary file and a
/// rename.
pub fn write_report(dir: &Path, report: &Report) -> Result<(), ObserveError> {
    let json = serde_json::to_vec_pretty(report)
        .map_err(|e| ObserveError::io(&dir.join(report::JSON_FILE), e))?;
    write_atomic(dir, report::JSON_FILE, &json)?;
    write_atomic(dir, report::HTML_FILE, html::render(report).as_bytes())
}

fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), ObserveError> {
    let path = dir.join(name);
    let tmp = dir.join(format!("{name}.tmp"));
    std::fs::write(&tmp, bytes).map_err(|e| ObserveError::io(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| ObserveError::io(&path, e))
}

/// Keys on `target` (every db, `INFO keyspace`); `None` when it cannot be read.
async fn count_keys(target: &Endpoint) -> Option<u64> {
    let mut con = target.control().await.ok()?;
    let info: String = redis::cmd("INFO")
        .arg("keyspace")
        .query_async(&mut con)
        .await
        .ok()?;
    Some(
        info.lines()
            .filter(|l| l.starts_with("db"))
            .filter_map(|l| {
                l.split_once("keys=")?
                    .1
                    .split(',')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum(),
    )
}
