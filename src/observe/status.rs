//! The status file: `status.json` in a run's state dir, rewritten about every second (temp
//! file, then rename, so a reader never sees half of it), and what `ferry status` makes of it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::migration::Sample;

use super::ObserveError;

/// The status file's name in the state dir.
pub const STATUS_FILE: &str = "status.json";

/// What the status file holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Status {
    /// The process writing it.
    pub pid: u32,
    /// The plan's name.
    pub plan: String,
    /// When the run started, unix ms.
    pub started_ms: u64,
    /// When the file was written, unix ms.
    pub updated_ms: u64,
    /// `running`, then how the run ended: `finished`, `differences`, `failed`, `not started`.
    pub state: String,
    /// Why the run failed, when it did (one line, credentials redacted by the errors).
    pub error: Option<String>,
    /// The last reading of the run; `None` before the migration started.
    pub sample: Option<Sample>,
    /// Commands applied per second over the last interval.
    pub commands_per_sec: f64,
    /// Estimated seconds to the end of the snapshot (while one runs) or to catch up (when
    /// replay gains on the stream); `None` when no estimate holds.
    pub eta_secs: Option<u64>,
}

/// The status file of `state_dir`.
pub fn status_path(state_dir: &Path) -> PathBuf {
    state_dir.join(STATUS_FILE)
}

/// Writes `status` to the state dir atomically: a temporary file beside it, then a rename.
pub fn write(state_dir: &Path, status: &Status) -> Result<(), ObserveError> {
    let path = status_path(state_dir);
    let tmp = state_dir.join(format!("{STATUS_FILE}.tmp"));
    let bytes = serde_json::to_vec_pretty(status).map_err(|e| ObserveError::io(&path, e))?;
    std::fs::write(&tmp, bytes).map_err(|e| ObserveError::io(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| ObserveError::io(&path, e))
}

/// Reads the status file of `state_dir`.
pub fn read(state_dir: &Path) -> Result<Status, ObserveError> {
    let path = status_path(state_dir);
    let bytes = std::fs::read(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ObserveError::NoStatus {
            dir: state_dir.to_path_buf(),
        },
        _ => ObserveError::io(&path, e),
    })?;
    serde_json::from_slice(&bytes).map_err(|e| ObserveError::io(&path, e))
}

/// True while process `pid` exists (Linux: `/proc/<pid>`).
pub fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The rate and ETA between two readings.
pub(super) fn rates(prev: Option<&Sample>, now: &Sample) -> (f64, Option<u64>) {
    let Some(prev) = prev else {
        return (0.0, None);
    };
    let secs = (now.elapsed_secs - prev.elapsed_secs).max(1e-3);
    let per_sec = now.applied_commands.saturating_sub(prev.applied_commands) as f64 / secs;
    let eta = if now.snapshot_running {
        let done = now.snapshot_done.saturating_sub(prev.snapshot_done) as f64 / secs;
        let left = now.snapshot_total.saturating_sub(now.snapshot_done) as f64;
        (done > 0.0).then(|| (left / done).ceil() as u64)
    } else if now.pending > 0 && now.pending < prev.pending {
        let gain = (prev.pending - now.pending) as f64 / secs;
        Some((now.pending as f64 / gain).ceil() as u64)
    } else if now.pending == 0 {
        Some(0)
    } else {
        None
    };
    (per_sec, eta)
}

/// `ferry status`'s text: a few lines for an operator.
pub fn render(status: &Status, alive: bool) -> String {
    let mut out = String::new();
    let who = if alive {
        format!("process {} is running", status.pid)
    } else {
        format!("process {} is gone", status.pid)
    };
    let age = crate::clock::now_ms().max(0) as u64;
    let age = age.saturating_sub(status.updated_ms) / 1000;
    out.push_str(&format!(
        "Plan {}: {} ({who}; updated {age} s ago)\n",
        status.plan, status.state
    ));
    if let Some(e) = &status.error {
        out.push_str(&format!("Error: {e}\n"));
    }
    let Some(s) = &status.sample else {
        out.push_str("The migration has not started yet.\n");
        return out;
    };
    let eta = status
        .eta_secs
        .map_or_else(|| "unknown".to_string(), |e| format!("{e} s"));
    out.push_str(&format!(
        "Phase: {}{}; lag {} ms, {} pending; {:.0} commands/s; ETA {eta}\n",
        s.phase,
        if s.snapshot_running {
            " (snapshot reading keys)"
        } else {
            ""
        },
        s.lag_ms,
        s.pending,
        status.commands_per_sec
    ));
    out.push_str(&format!(
        "Snapshot: {}/{} keys; {} keys read in all, {} bytes; {} resyncs\n",
        s.snapshot_done, s.snapshot_total, s.snapshot_keys_read, s.snapshot_bytes, s.resyncs
    ));
    out.push_str(&format!(
        "Replay: {} commands applied, {} restores, {} dirty keys; journal {} entries, {} bytes\n",
        s.applied_commands, s.restores, s.dirty_keys, s.journal_entries, s.journal_bytes
    ));
    let errors = if s.errors.is_empty() {
        "none".to_string()
    } else {
        s.errors
            .iter()
            .map(|(c, n)| format!("{c} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    out.push_str(&format!(
        "Errors: {errors} ({} also on the source)\n",
        s.source_errors
    ));
    match &s.last_fence {
        Some(f) => out.push_str(&format!(
            "Last fence: {} at {} ms (unix), source writes paused {} ms\n",
            f.name, f.at_ms, f.pause_ms
        )),
        None => out.push_str("Last fence: none yet\n"),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_then_read_round_trips_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let status = Status {
            pid: std::process::id(),
            plan: "p".into(),
            state: "running".into(),
            sample: Some(Sample {
                phase: "catch_up".into(),
                applied_commands: 7,
                ..Sample::default()
            }),
            ..Status::default()
        };
        write(dir.path(), &status).unwrap();
        let back = read(dir.path()).unwrap();
        assert_eq!(back.sample, status.sample);
        assert!(!dir.path().join("status.json.tmp").exists());
        assert!(alive(back.pid));
        assert!(render(&back, true).contains("Phase: catch_up"));
    }

    #[test]
    fn eta_follows_the_snapshot_then_the_backlog() {
        let a = Sample {
            elapsed_secs: 1.0,
            snapshot_running: true,
            snapshot_done: 100,
            snapshot_total: 1000,
            ..Sample::default()
        };
        let b = Sample {
            elapsed_secs: 2.0,
            snapshot_done: 200,
            ..a.clone()
        };
        assert_eq!(rates(Some(&a), &b).1, Some(8));
        let c = Sample {
            elapsed_secs: 1.0,
            pending: 300,
            ..Sample::default()
        };
        let d = Sample {
            elapsed_secs: 2.0,
            pending: 100,
            applied_commands: 50,
            ..Sample::default()
        };
        assert_eq!(rates(Some(&c), &d), (50.0, Some(1)));
    }
}
