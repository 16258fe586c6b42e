//! `Capture`: the task that owns the `MONITOR` connection. It only reads, parses, groups and
//! hands batches to its sink (the journal); a second connection guards the source's output
//! buffer for it.
//!
//! ## Behavior
//! - Never waits on anything downstream but the sink's append (the journal writes to disk), so
//!   the source never has to buffer the stream for ferry (docs/redis-behaviour.md §7).
//! - If the monitor client's `omem` on the source passes [`CaptureConfig::omem_limit`], capture
//!   drops the connection itself and reports a gap, rather than let the source evict keys or
//!   refuse writes.
//! - Any break in the stream (connection lost, guard, unparseable line) is reported as a
//!   [`EntryKind::Gap`]; capture reconnects with backoff and goes on.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::group::{Grouper, PeerRegistry, Role};
use super::late::LateWrites;
use super::monitor::{CaptureError, MonitorStream};
use crate::command::CommandTable;
use crate::journal::EntryKind;
use crate::net::Endpoint;

/// Default bound on the source's output buffer for the monitor connection.
pub const DEFAULT_OMEM_LIMIT: u64 = 64 << 20;

/// Capture settings.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CaptureConfig {
    /// Past this many bytes of output buffer on the source, capture disconnects (a gap).
    pub omem_limit: u64,
    /// How often the guard looks at the output buffer.
    pub guard_every: Duration,
    /// How long the stream must be quiet before an open script's group is closed.
    pub script_quiet: Duration,
    /// The guard's last reading of the output buffer (bytes), shared with whoever reports on
    /// the run (status file, run report); also the `ferry_monitor_output_buffer_bytes` gauge.
    pub omem_seen: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        CaptureConfig {
            omem_limit: DEFAULT_OMEM_LIMIT,
            guard_every: Duration::from_millis(250),
            script_quiet: Duration::from_millis(5),
            omem_seen: Default::default(),
        }
    }
}

/// Where capture delivers batches; an error stops capture (the journal failed).
pub trait CaptureSink: Send + 'static {
    /// Appends a batch, in order.
    fn append(&mut self, batch: Vec<(u64, EntryKind)>) -> Result<(), String>;
}

/// Capture of one source node.
pub struct Capture {
    source: Endpoint,
    table: Arc<CommandTable>,
    peers: Arc<PeerRegistry>,
    cfg: CaptureConfig,
    late: Option<Arc<LateWrites>>,
}

/// Handle on a running capture.
pub struct CaptureHandle {
    /// Becomes true once `MONITOR` is live; later key reads are sure to be seen.
    pub live: watch::Receiver<bool>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), String>>,
}

impl CaptureHandle {
    /// Waits until `MONITOR` is live (or capture failed for good).
    pub async fn wait_live(&mut self) -> bool {
        self.live.wait_for(|l| *l).await.is_ok()
    }

    /// Stops capture and returns how it ended.
    pub async fn stop(self) -> Result<(), String> {
        let _ = self.stop.send(true);
        self.task.await.map_err(|e| e.to_string())?
    }
}

/// The captures of every node of a source (one per shard of a cluster), stopped together.
pub struct CaptureSet(Vec<CaptureHandle>);

impl CaptureSet {
    /// The set of `handles`.
    pub fn new(handles: Vec<CaptureHandle>) -> CaptureSet {
        CaptureSet(handles)
    }

    /// Waits until every `MONITOR` is live (false when one failed for good).
    pub async fn wait_live(&mut self) -> bool {
        for h in &mut self.0 {
            if !h.wait_live().await {
                return false;
            }
        }
        true
    }

    /// Stops every capture; returns the first failure.
    pub async fn stop(self) -> Result<(), String> {
        let mut result = Ok(());
        for h in self.0 {
            let r = h.stop().await;
            if result.is_ok() {
                result = r;
            }
        }
        result
    }
}

impl Capture {
    /// Capture of `source`, classifying with `table`; `peers` holds ferry's own connections.
    pub fn new(
        source: Endpoint,
        table: Arc<CommandTable>,
        peers: Arc<PeerRegistry>,
        cfg: CaptureConfig,
    ) -> Capture {
        Capture {
            late: None,
            source,
            table,
            peers,
            cfg,
        }
    }

    /// Counts the writes after a cutover's switch marker in `late`.
    pub fn with_late(mut self, late: Arc<LateWrites>) -> Capture {
        self.late = Some(late);
        self
    }

    /// Starts capturing into `sink`.
    pub fn spawn<S: CaptureSink>(self, sink: S) -> CaptureHandle {
        let (live_tx, live) = watch::channel(false);
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(self.run(sink, live_tx, stop_rx));
        CaptureHandle { live, stop, task }
    }

    async fn run<S: CaptureSink>(
        self,
        mut sink: S,
        live: watch::Sender<bool>,
        mut stop: watch::Receiver<bool>,
    ) -> Result<(), String> {
        let mut grouper =
            Grouper::new(self.table.clone(), self.peers.clone()).on_server(&self.source);
        if let Some(late) = &self.late {
            grouper = grouper.with_late(late.clone());
        }
        let mut backoff = Duration::from_millis(100);
        loop {
            let reason = match self
                .session(&mut grouper, &mut sink, &live, &mut stop)
                .await
            {
                Ok(()) => return Ok(()),
                Err(Fatal(e)) => return Err(e),
                Err(Broken(reason)) => reason,
            };
            let _ = live.send(false);
            grouper.reset();
            tracing::warn!(source = %self.source, %reason, "Capture lost the stream; resync follows.");
            sink.append(vec![(now_us(), EntryKind::Gap { reason })])?;
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.changed() => return Ok(()),
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// One `MONITOR` connection, until it breaks or capture is stopped.
    async fn session<S: CaptureSink>(
        &self,
        grouper: &mut Grouper,
        sink: &mut S,
        live: &watch::Sender<bool>,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), Outcome> {
        let mut stream = MonitorStream::start(&self.source)
            .await
            .map_err(|e| Broken(e.to_string()))?;
        let (trip_tx, mut trip) = watch::channel(None::<String>);
        let guard = stream.client_id().map(|id| {
            tokio::spawn(guard(
                self.source.clone(),
                self.peers.clone(),
                id,
                self.cfg.clone(),
                trip_tx,
            ))
        });
        let _ = live.send(true);
        // A guard that gave up (no `CLIENT ID` before 5.0, `CLIENT LIST` refused) drops its
        // sender: that ends the watching, not the stream.
        let mut guarded = guard.is_some();
        let result = async {
            let mut batch = Vec::new();
            let mut units = Vec::new();
            loop {
                while let Some(next) = stream.try_next() {
                    match next {
                        Ok(line) => {
                            let ts = line.ts_us;
                            grouper.push(line, &mut units);
                            batch.extend(units.drain(..).map(|u| (ts, u)));
                        }
                        Err(e @ CaptureError::Parse { .. }) => {
                            batch.push((
                                now_us(),
                                EntryKind::Gap {
                                    reason: e.to_string(),
                                },
                            ));
                        }
                        Err(e) => return Err(Broken(e.to_string())),
                    }
                }
                if !batch.is_empty() {
                    sink.append(std::mem::take(&mut batch)).map_err(Fatal)?;
                }
                let quiet = grouper.script_open();
                let read = tokio::select! {
                    r = stream.fill() => r,
                    _ = tokio::time::sleep(self.cfg.script_quiet), if quiet => {
                        grouper.flush_script(&mut units);
                        let ts = now_us();
                        batch.extend(units.drain(..).map(|u| (ts, u)));
                        continue;
                    }
                    tripped = trip.changed(), if guarded => {
                        if tripped.is_err() {
                            guarded = false;
                            continue;
                        }
                        let why = trip.borrow().clone().unwrap_or_default();
                        return Err(Broken(why));
                    }
                    _ = stop.changed() => return Ok(()),
                };
                match read {
                    Ok(0) => return Err(Broken("the source closed the MONITOR connection".into())),
                    Ok(_) => {}
                    Err(e) => return Err(Broken(e.to_string())),
                }
            }
        }
        .await;
        if let Some(g) = guard {
            g.abort();
        }
        result
    }
}

/// Why a capture session ended.
enum Outcome {
    Broken(String),
    Fatal(String),
}
use crate::clock::now_us;
use Outcome::{Broken, Fatal};

/// Watches the monitor client's output buffer on the source; trips when it passes the limit.
async fn guard(
    source: Endpoint,
    peers: Arc<PeerRegistry>,
    id: i64,
    cfg: CaptureConfig,
    trip: watch::Sender<Option<String>>,
) {
    if let Some(reason) = watch_output_buffer(&source, &peers, id, &cfg).await {
        let _ = trip.send(Some(reason));
    }
}

/// Polls `CLIENT LIST ID <id>` on a second connection until the client's output buffer on the
/// source (`omem`) passes `cfg.omem_limit`; returns why it tripped, or `None` when the guard
/// cannot watch (no connection, `CLIENT LIST` refused, the client gone).
pub async fn watch_output_buffer(
    source: &Endpoint,
    peers: &PeerRegistry,
    id: i64,
    cfg: &CaptureConfig,
) -> Option<String> {
    let mut con = source.control().await.ok()?;
    if let Ok(addr) = crate::net::client_addr(&mut con).await {
        peers.register(source, &addr, Role::Control);
    }
    let mut tick = tokio::time::interval(cfg.guard_every);
    // `CLIENT LIST ID` is Redis 6.2's; before, the whole list, searched for the id.
    let mut by_id = true;
    loop {
        tick.tick().await;
        let mut cmd = redis::cmd("CLIENT");
        cmd.arg("LIST");
        if by_id {
            cmd.arg("ID").arg(id);
        }
        let list = match cmd.query_async::<String>(&mut con).await {
            Err(e) if by_id && e.to_string().contains("syntax error") => {
                by_id = false;
                redis::cmd("CLIENT")
                    .arg("LIST")
                    .query_async::<String>(&mut con)
                    .await
            }
            other => other,
        };
        let Ok(list) = list.map(|l| {
            let me = format!("id={id} ");
            l.lines()
                .find(|line| line.starts_with(&me))
                .unwrap_or_default()
                .to_string()
        }) else {
            // CLIENT LIST may be refused by ACLs; then the guard cannot help, and says so once.
            tracing::warn!("The source refuses CLIENT LIST; the MONITOR buffer guard is off.");
            return None;
        };
        if list.trim().is_empty() {
            return None;
        }
        let omem: u64 = list
            .split_whitespace()
            .find_map(|f| f.strip_prefix("omem="))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        cfg.omem_seen
            .store(omem, std::sync::atomic::Ordering::Relaxed);
        metrics::gauge!("ferry_monitor_output_buffer_bytes").set(omem as f64);
        if omem > cfg.omem_limit {
            return Some(format!(
                "capture disconnected to protect the source: the source buffered {} for MONITOR (limit {})",
                size(omem),
                size(cfg.omem_limit)
            ));
        }
    }
}

/// A byte count in the largest unit that keeps it whole-ish, for messages.
fn size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 20 => format!("{} MB", b >> 20),
        b if b >= 1 << 10 => format!("{} KB", b >> 10),
        b => format!("{b} bytes"),
    }
}
