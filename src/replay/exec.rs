//! `Replayer`: applies ordered operations to the target over one pipelined RESP connection.
//!
//! ## Behavior
//! - Operations are encoded as they arrive and flushed when no more are waiting, so a busy
//!   stream goes out in large writes; a bounded window of unanswered commands keeps memory and
//!   the target's input buffer bounded.
//! - The db is switched with `SELECT` only when it changes. Atomic groups go out as
//!   `MULTI … EXEC`.
//! - Error replies follow [`super::policy`]: a write that failed on the source (`WRONGTYPE`)
//!   fails the same way here and is only counted; an error only the target can give (`OOM`,
//!   `NOPERM`…) records the keys of the operation as diverged and asks for their re-copy; a
//!   transient one (`LOADING`, `BUSY`…) ends the run like a broken connection.
//! - A broken connection ends the run with an error; the caller resyncs, because commands in
//!   flight may or may not have been applied.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{Semaphore, mpsc, oneshot};

use super::lease::CHECK_SCRIPT;
use super::op::Op;
use super::policy::{Diverged, ErrorClass, classify, error_code};
use super::redirect::{self, MAX_HOPS, Redirect, Redirector, Redirects};
use crate::clock::now_ms;
use crate::command::{Argv, CommandTable, KeyRef};
use crate::journal::Marker;
use crate::net::resp::summarize;
use crate::net::{Endpoint, NetError, RawReader, encode_command};

/// `CLIENT SETNAME` of replay connections.
pub const REPLAY_CLIENT_NAME: &str = "ferry-replay";

/// Unanswered commands allowed in flight.
pub const DEFAULT_WINDOW: usize = 16_384;

/// How long before a key's expiry replay already treats it as possibly gone on the target: the
/// time a sent command may wait in the target's input, plus clock skew between ferry and the
/// target.
pub const EXPIRY_MARGIN_MS: i64 = 1000;

/// Counters shared with status reporting.
#[derive(Debug, Default)]
pub struct ReplayStats {
    /// Journal position of the last operation whose replies all arrived (+1).
    pub applied: AtomicU64,
    /// Commands answered.
    pub commands: AtomicU64,
    /// Keys restored from payloads.
    pub restores: AtomicU64,
    /// Error replies by code, whatever their class.
    pub errors: Mutex<BTreeMap<String, u64>>,
    /// Error replies the source gave too (expected).
    pub source_errors: AtomicU64,
    /// Error replies only the target gave, by code (transient ones included).
    pub target_errors: Mutex<BTreeMap<String, u64>>,
    /// Keys the target holds differently because of target-only failures.
    pub diverged: Mutex<Diverged>,
    /// `diverged`'s size, read without the lock on the restore path.
    diverged_len: AtomicU64,
    /// Keys re-copied because a write reached them after their expiry on the target.
    pub expiry_recopies: AtomicU64,
    /// Re-copy requests sent to the capture node's stream but not yet placed there.
    pub recopies_outstanding: AtomicU64,
    /// Fenced batches the target refused: this process had lost the shard's lease.
    pub fenced_batches: AtomicU64,
    /// Toward a cluster: `MOVED` and `ASK` replies followed (shared with the redirectors).
    pub redirects: Arc<AtomicU64>,
    /// Toward a cluster: commands across slots split into one per slot (`MSET` → `SET`s).
    pub cross_slot_split: AtomicU64,
    /// Toward a cluster: keys of commands across slots that could not be split, re-copied.
    pub cross_slot_recopies: AtomicU64,
    /// The target runs an older Redis than the source (set at start): an `ERR` reply to a
    /// write may be the older engine not knowing a command or option the source accepted, so
    /// it counts as target-only and the keys are re-copied (docs/redis-behaviour.md §22).
    pub older_target: AtomicBool,
    /// The target has no `RESTORE … ABSTTL` (Redis 4.0; set by the replayer from the target's
    /// engine): restores carry the TTL left, computed from the absolute expiry as they are
    /// encoded, and a key already past it is deleted instead.
    pub relative_restores: AtomicBool,
}

impl ReplayStats {
    /// Error replies by code so far, whatever their class.
    pub fn errors_by_code(&self) -> BTreeMap<String, u64> {
        self.errors.lock().map(|e| e.clone()).unwrap_or_default()
    }

    /// Error replies only the target gave, by code, so far.
    pub fn target_errors_by_code(&self) -> BTreeMap<String, u64> {
        self.target_errors
            .lock()
            .map(|e| e.clone())
            .unwrap_or_default()
    }

    /// Total error replies.
    pub fn error_count(&self) -> u64 {
        self.errors.lock().map_or(0, |e| e.values().sum())
    }

    /// Error replies only the target gave.
    pub fn target_error_count(&self) -> u64 {
        self.target_errors.lock().map_or(0, |e| e.values().sum())
    }

    /// How many keys differ because of target-only failures, and one of them.
    pub fn diverged_summary(&self) -> (u64, Option<String>) {
        self.diverged
            .lock()
            .map_or((0, None), |d| (d.count(), d.example()))
    }

    fn with_diverged<T>(&self, f: impl FnOnce(&mut Diverged) -> T) -> Option<T> {
        let mut d = self.diverged.lock().ok()?;
        let out = f(&mut d);
        self.diverged_len.store(d.count(), Ordering::Relaxed);
        Some(out)
    }
}

/// Why a replay connection stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    /// The connection could not be opened: nothing was sent, nothing was lost.
    #[error("cannot open a replay connection: {0}")]
    Connect(NetError),
    /// The connection broke with commands in flight.
    #[error(transparent)]
    Net(#[from] NetError),
    /// The target refused commands for a while (`LOADING`, `BUSY`…); the commands sent with
    /// them may or may not have been applied.
    #[error("the target answered {line}")]
    Transient { line: String },
}

impl ReplayError {
    /// True when commands may have been lost, so the caller must resync.
    pub fn lost_writes(&self) -> bool {
        !matches!(self, ReplayError::Connect(_))
    }
}

/// What an operation applied, kept until its replies arrive so a failure can name its keys.
enum Origin {
    /// Connection setup (`CLIENT SETNAME`) or a barrier: no data.
    Setup,
    Cmd(u32, Argv),
    Atomic(Vec<(u32, Argv)>),
    Restore(u32, Vec<u8>),
    /// The snapshot's copy of the function libraries.
    Functions,
    Check,
    /// A fenced batch: the operations whose replies are the elements of its `EXEC`.
    Fenced(Vec<Origin>),
}

/// What a fenced batch waits for: its outcome, and which operation of
/// [`Origin::Fenced`] each element of its `EXEC` reply answers (`None`: a `SELECT` or the
/// progress update).
struct FenceWait {
    done: oneshot::Sender<bool>,
    slots: Vec<Option<usize>>,
    /// `EXEC` answered nil: the lease had moved on and nothing was applied.
    refused: bool,
}

struct Pending {
    seq: u64,
    replies: usize,
    done: Option<oneshot::Sender<()>>,
    collect: Option<Collect>,
    origin: Origin,
    /// A reply of this operation was a target-only error.
    failed: bool,
    fence: Option<FenceWait>,
    /// Toward a cluster: the operation's bytes and reply count, to send again where a
    /// `MOVED` or `ASK` points.
    resend: Option<(Vec<u8>, usize)>,
    /// The first `MOVED` or `ASK` among its replies.
    redirect: Option<Redirect>,
}

impl Pending {
    fn new(seq: u64, replies: usize) -> Pending {
        Pending {
            seq,
            replies,
            done: None,
            collect: None,
            origin: Origin::Setup,
            failed: false,
            fence: None,
            resend: None,
            redirect: None,
        }
    }
}

/// Replies a check wants back: the last `want` replies of its pending entry.
struct Collect {
    want: usize,
    values: Vec<redis::Value>,
    reply: oneshot::Sender<Vec<redis::Value>>,
}

/// Where the keys of target-only failures go to be re-copied: target db and key.
pub type RecopySender = mpsc::UnboundedSender<(u32, Vec<u8>)>;

/// Applies operations to the target.
pub struct Replayer {
    target: Endpoint,
    window: usize,
    recopy: Option<(Arc<CommandTable>, RecopySender)>,
    redirects: Option<Redirects>,
}

impl Replayer {
    /// A replayer for `target`.
    pub fn new(target: Endpoint) -> Replayer {
        Replayer {
            target,
            window: DEFAULT_WINDOW,
            recopy: None,
            redirects: None,
        }
    }

    /// Names the keys of operations that fail only on the target (through `table`) and sends
    /// them to `recopy`; without it such failures are recorded as diverged without keys.
    pub fn with_recopy(mut self, table: Arc<CommandTable>, recopy: RecopySender) -> Replayer {
        self.recopy = Some((table, recopy));
        self
    }

    /// Toward a cluster node: follows `MOVED` and `ASK` replies (see [`super::redirect`]).
    pub fn with_redirects(mut self, redirects: Redirects) -> Replayer {
        self.redirects = Some(redirects);
        self
    }

    /// The target this replayer writes to.
    pub fn target(&self) -> &Endpoint {
        &self.target
    }

    /// Applies operations from `ops` until it closes; returns when everything sent is answered.
    pub async fn run(
        &self,
        ops: &mut mpsc::Receiver<Op>,
        stats: Arc<ReplayStats>,
    ) -> Result<(), ReplayError> {
        let conn = self.target.raw().await.map_err(ReplayError::Connect)?;
        if let Ok(engine) = crate::net::Engine::detect(&self.target).await {
            stats
                .relative_restores
                .store(!engine.has_restore_absttl(), Ordering::Relaxed);
        }
        let relative = stats.relative_restores.load(Ordering::Relaxed);
        let (reader, mut writer) = conn.split();
        let window = Arc::new(Semaphore::new(self.window));
        let (pending_tx, pending_rx) = mpsc::unbounded_channel::<Pending>();
        let reader_window = window.clone();
        let failures = Failures {
            stats: stats.clone(),
            recopy: self.recopy.clone(),
            keys: Vec::new(),
            redirector: self.redirects.clone().map(Redirector::new),
        };
        let reader_task = tokio::spawn(async move {
            let r = read_replies(reader, pending_rx, reader_window.clone(), failures).await;
            // A writer waiting for the window must not wait for replies that will not come.
            reader_window.close();
            r
        });
        let mut db: Option<u32> = None;
        let mut buf = Vec::with_capacity(1 << 20);
        // Named, so a cutover can tell ferry's connections from the application's.
        encode_command(
            &mut buf,
            &[b"CLIENT", b"SETNAME", REPLAY_CLIENT_NAME.as_bytes()],
        );
        let _ = pending_tx.send(Pending::new(0, 1));
        // Sent now: a connection that never gets an operation must still see its reply, or
        // closing it would wait for that reply forever.
        let mut write_result = writer.write_all(&buf).await;
        buf.clear();
        'outer: while write_result.is_ok() {
            // The reader stops early on a transient error: stop waiting for work then too.
            let first = tokio::select! {
                op = ops.recv() => match op {
                    Some(op) => op,
                    None => break,
                },
                _ = pending_tx.closed() => break,
            };
            let mut next = Some(first);
            while let Some(mut op) = next {
                if let Op::Expiring {
                    op: inner,
                    expire_at_ms,
                    keys,
                } = op
                {
                    if now_ms() + EXPIRY_MARGIN_MS >= expire_at_ms
                        && let Some((_, tx)) = &self.recopy
                    {
                        for k in keys {
                            // Counted before it is sent, so the count never goes below zero.
                            stats.recopies_outstanding.fetch_add(1, Ordering::Relaxed);
                            if tx.send(k).is_ok() {
                                stats.expiry_recopies.fetch_add(1, Ordering::Relaxed);
                            } else {
                                stats.recopies_outstanding.fetch_sub(1, Ordering::Relaxed);
                            }
                        }
                    }
                    op = *inner;
                }
                let seq = op.seq();
                let mut replies = 0;
                let mut done = None;
                let mut collect = None;
                let mut origin = Origin::Setup;
                let mut fence = None;
                let db_before = db;
                let mut forget_db = false;
                let start = buf.len();
                let mut select = |buf: &mut Vec<u8>, want: u32, replies: &mut usize| {
                    if db != Some(want) {
                        encode_command(buf, &[b"SELECT", want.to_string().as_bytes()]);
                        *replies += 1;
                        db = Some(want);
                    }
                };
                match op {
                    Op::Cmd { db: d, argv, .. } => {
                        select(&mut buf, d, &mut replies);
                        encode_argv(&mut buf, &argv);
                        replies += 1;
                        origin = Origin::Cmd(d, argv);
                    }
                    Op::Atomic { cmds, .. } => {
                        // SELECT inside MULTI is queued like the rest, so the block stays atomic.
                        encode_command(&mut buf, &[b"MULTI"]);
                        replies += 1;
                        for (d, argv) in &cmds {
                            select(&mut buf, *d, &mut replies);
                            encode_argv(&mut buf, argv);
                            replies += 1;
                        }
                        // A group the target refuses before running it (`OOM` or `NOPERM` at
                        // queue time: `EXECABORT`) runs none of its SELECTs either: when the
                        // group ends in another db than it started in, the connection's db is
                        // known again only after the next SELECT.
                        forget_db = cmds.last().is_some_and(|(d, _)| Some(*d) != db_before);
                        encode_command(&mut buf, &[b"EXEC"]);
                        replies += 1;
                        origin = Origin::Atomic(cmds);
                    }
                    Op::Restore {
                        db: d,
                        key,
                        payload,
                        expire_at_ms,
                        ..
                    } => {
                        select(&mut buf, d, &mut replies);
                        encode_restore(&mut buf, &key, payload.as_deref(), expire_at_ms, relative);
                        replies += 1;
                        stats.restores.fetch_add(1, Ordering::Relaxed);
                        origin = Origin::Restore(d, key);
                    }
                    Op::Functions { payload, .. } => {
                        // Libraries are server-wide: no SELECT.
                        encode_command(&mut buf, &[b"FUNCTION", b"RESTORE", &payload, b"REPLACE"]);
                        replies += 1;
                        origin = Origin::Functions;
                    }
                    Op::Barrier { done: d, .. } => done = Some(d),
                    Op::Fenced {
                        fence: f,
                        ops: batch,
                        done: d,
                        ..
                    } => {
                        let (slots, origins) =
                            encode_fenced(&mut buf, &mut select, &mut replies, &f, batch, &stats);
                        fence = Some(FenceWait {
                            done: d,
                            slots,
                            refused: false,
                        });
                        origin = Origin::Fenced(origins);
                    }
                    // Unwrapped above.
                    Op::Expiring { .. } => {}
                    Op::Check {
                        db: d, cmds, reply, ..
                    } => {
                        select(&mut buf, d, &mut replies);
                        for argv in &cmds {
                            encode_argv(&mut buf, argv);
                        }
                        replies += cmds.len();
                        collect = Some(Collect {
                            want: cmds.len(),
                            values: Vec::with_capacity(cmds.len()),
                            reply,
                        });
                        origin = Origin::Check;
                    }
                }
                if forget_db {
                    db = None;
                }
                // Only toward a cluster: a copy of what was sent, in case it is redirected.
                let resend = (self.redirects.is_some() && replies > 0)
                    .then(|| (buf[start..].to_vec(), replies));
                let mut pending = Some(Pending {
                    done,
                    collect,
                    origin,
                    fence,
                    resend,
                    ..Pending::new(seq, replies)
                });
                if replies > 0 {
                    // The window counts commands; a huge group takes what it needs.
                    let permits = replies.min(self.window) as u32;
                    match window.clone().try_acquire_many_owned(permits) {
                        Ok(p) => p.forget(),
                        Err(tokio::sync::TryAcquireError::Closed) => break 'outer,
                        Err(tokio::sync::TryAcquireError::NoPermits) => {
                            // The replies that free the window belong to commands still in the
                            // buffer: hand over the expectations and send the buffer before
                            // waiting, or the window never frees.
                            if let Some(p) = pending.take()
                                && pending_tx.send(p).is_err()
                            {
                                break 'outer;
                            }
                            if let Err(e) = writer.write_all(&buf).await {
                                write_result = Err(e);
                                break 'outer;
                            }
                            buf.clear();
                            match window.clone().acquire_many_owned(permits).await {
                                Ok(p) => p.forget(),
                                Err(_) => break 'outer,
                            }
                        }
                    }
                }
                if let Some(p) = pending
                    && pending_tx.send(p).is_err()
                {
                    break 'outer;
                }
                next = if buf.len() < (1 << 20) {
                    ops.try_recv().ok()
                } else {
                    None
                };
            }
            if let Err(e) = writer.write_all(&buf).await {
                write_result = Err(e);
                break;
            }
            buf.clear();
        }
        drop(pending_tx);
        let read_result = reader_task.await.unwrap_or_else(|e| {
            Err(ReplayError::Net(NetError::Io {
                endpoint: self.target.redacted().to_string(),
                message: e.to_string(),
            }))
        });
        // The reader's error says why (a transient reply) better than the write that followed.
        read_result.and(write_result.map_err(ReplayError::from))
    }
}

/// Sends `ECHO ferry-recopy:<db>:<hex key>` on `node` (the capture node) for each key a
/// [`Replayer`] found diverged or applied a write to after its expiry: capture turns it into a
/// re-copy at that point of the stream. A diverged key whose request cannot be sent stays in the
/// diverged ledger, so a stop fails rather than hide it. `stats.recopies_outstanding` counts the
/// requests not yet placed, so a final fence can wait for them.
pub async fn request_recopies(
    nodes: crate::net::NodesCell,
    mut keys: mpsc::UnboundedReceiver<(u32, Vec<u8>)>,
    stats: Arc<ReplayStats>,
) {
    let mut con = None;
    let mut version = nodes.version();
    let mut batch = Vec::new();
    while let Some(first) = keys.recv().await {
        batch.clear();
        batch.push(first);
        while batch.len() < 1000
            && let Ok(next) = keys.try_recv()
        {
            batch.push(next);
        }
        let mut pipe = redis::pipe();
        for (db, key) in &batch {
            let request = Marker::Recopy {
                db: *db,
                key: key.clone(),
            };
            pipe.cmd("ECHO").arg(request.echo()).ignore();
        }
        // One reconnect: the connection may have been idle long enough to be dropped.
        let mut placed = false;
        for _ in 0..2 {
            if con.is_none() || nodes.version() != version {
                // Any node's stream carries a request (it names its key); after a failover,
                // one that capture still reads.
                let now = nodes.get();
                version = now.0;
                con = now.1.first().control().await.ok();
            }
            let Some(c) = con.as_mut() else { break };
            match pipe.query_async::<()>(c).await {
                Ok(()) => {
                    placed = true;
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "Could not ask the capture node for re-copies.");
                    con = None;
                }
            }
        }
        if !placed {
            // A diverged key stays in the ledger (the stop fails); an expired one may differ.
            tracing::error!(
                keys = batch.len(),
                "Re-copy requests were lost: the capture node did not take them. Run `ferry verify` after the migration."
            );
        }
        stats
            .recopies_outstanding
            .fetch_sub(batch.len() as u64, Ordering::Relaxed);
    }
}

/// The reader's side of the error policy.
struct Failures {
    stats: Arc<ReplayStats>,
    recopy: Option<(Arc<CommandTable>, RecopySender)>,
    keys: Vec<KeyRef>,
    /// Toward a cluster: follows `MOVED` and `ASK`.
    redirector: Option<Redirector>,
}

/// Target-only failures logged one by one before the log goes quiet (the ledger keeps count).
const LOGGED_FAILURES: u64 = 10;

impl Failures {
    /// Handles one error reply of `p`; `Err` when the connection must be given up.
    fn error(&mut self, p: &mut Pending, line: String) -> Result<(), ReplayError> {
        self.error_at(p, None, line)
    }

    /// Handles one error reply of `p`, of its operation `part` when it is a fenced batch
    /// (`None`: of the whole batch).
    fn error_at(
        &mut self,
        p: &mut Pending,
        part: Option<usize>,
        line: String,
    ) -> Result<(), ReplayError> {
        if self.redirector.is_some() && !matches!(p.origin, Origin::Setup) {
            if p.redirect.is_some() {
                // What follows a redirect in the same operation (`EXECABORT` of a group whose
                // commands were redirected) is answered again where the operation goes.
                return Ok(());
            }
            if let Some(r) = redirect::parse(&line) {
                p.redirect = Some(r);
                return Ok(());
            }
        }
        let origin = match (&p.origin, part) {
            (Origin::Fenced(list), Some(i)) => list.get(i).unwrap_or(&p.origin),
            (o, _) => o,
        };
        let stats = &self.stats;
        let code = error_code(&line).to_string();
        if let Ok(mut errs) = stats.errors.lock() {
            *errs.entry(code.clone()).or_default() += 1;
        }
        let class = match (origin, classify(&line)) {
            // A verification read: the verifier compares the replies itself.
            (Origin::Check, _) => return Ok(()),
            // The connection's name only helps a cutover tell ferry's clients apart.
            (Origin::Setup, _) => {
                tracing::warn!(error = %line, "The target refused to name the replay connection.");
                return Ok(());
            }
            (_, ErrorClass::Transient) => ErrorClass::Transient,
            // An older target than the source: `ERR` may be its not knowing what the source
            // accepted (`unknown command`, `syntax error`, `wrong number of arguments`).
            (Origin::Cmd(..) | Origin::Atomic(_) | Origin::Fenced(_), ErrorClass::AsOnSource)
                if code == "ERR" && stats.older_target.load(Ordering::Relaxed) =>
            {
                ErrorClass::TargetOnly
            }
            // The source produced this payload a moment ago: any failure is the target's.
            (Origin::Restore(..) | Origin::Functions, _) => ErrorClass::TargetOnly,
            (_, c) => c,
        };
        if class == ErrorClass::AsOnSource {
            stats.source_errors.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        let seen = stats.target_errors.lock().map_or(0, |mut e| {
            let n = e.entry(code).or_default();
            *n += 1;
            e.values().sum::<u64>()
        });
        if class == ErrorClass::Transient {
            return Err(ReplayError::Transient { line });
        }
        if matches!(origin, Origin::Functions) {
            tracing::error!(error = %line, "The target refused the copy of the source's function libraries (FUNCTION RESTORE … REPLACE): FCALL of them would fail there.");
        } else if seen <= LOGGED_FAILURES {
            let (what, name) = match origin {
                Origin::Restore(..) => ("restore", "RESTORE".to_string()),
                Origin::Cmd(_, argv) => {
                    ("write", String::from_utf8_lossy(argv.name()).into_owned())
                }
                _ => ("transaction", "MULTI".to_string()),
            };
            tracing::error!(error = %line, command = %name, "A {what} failed only on the target: its keys now differ from the source and are re-copied.");
        }
        let mut requests = Vec::new();
        let whole = match origin {
            Origin::Fenced(list) => list.as_slice(),
            o => std::slice::from_ref(o),
        };
        for origin in whole {
            self.mark(origin, &line, &mut requests);
        }
        p.failed = true;
        if let Some((_, tx)) = &self.recopy {
            for r in requests {
                self.stats
                    .recopies_outstanding
                    .fetch_add(1, Ordering::Relaxed);
                if tx.send(r).is_err() {
                    self.stats
                        .recopies_outstanding
                        .fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
        Ok(())
    }

    /// Marks what `origin` wrote as diverged; keys newly diverged go to `requests`.
    fn mark(&mut self, origin: &Origin, line: &str, requests: &mut Vec<(u32, Vec<u8>)>) {
        match origin {
            Origin::Restore(db, key) => {
                // Asking again would fail again: the ledger keeps the key until a later
                // restore of it succeeds.
                self.stats.with_diverged(|d| d.mark(*db, key, line));
            }
            Origin::Cmd(db, argv) => self.keys_of(*db, argv, line, requests),
            Origin::Atomic(cmds) => {
                for (db, argv) in cmds {
                    self.keys_of(*db, argv, line, requests);
                }
            }
            // Nothing to re-copy: a resync's copy could only fail the same way. The ledger
            // keeps it, so the final fence fails rather than claim the target has them.
            Origin::Functions => {
                self.stats.with_diverged(|d| {
                    d.mark_keyless(format!("FUNCTION RESTORE (the function libraries): {line}"))
                });
            }
            // A whole fenced batch is marked operation by operation by the caller.
            Origin::Setup | Origin::Check | Origin::Fenced(_) => {}
        }
    }

    /// Sends `p` again where its `MOVED` or `ASK` points, until it is answered without one;
    /// past [`MAX_HOPS`] or when that node cannot be reached, its keys are re-copied.
    async fn follow(&mut self, p: &mut Pending) -> Result<(), ReplayError> {
        let Some((body, replies)) = p.resend.take() else {
            return Ok(());
        };
        let mut hops = 0;
        while let Some(r) = p.redirect.take() {
            let Some(redirector) = self.redirector.as_mut() else {
                return Ok(());
            };
            redirector.noted(&r);
            hops += 1;
            let answered = if hops > MAX_HOPS {
                Err(format!(
                    "more than {MAX_HOPS} redirects, the last to {}:{}",
                    r.to.host, r.to.port
                ))
            } else {
                redirector
                    .send(&r, &body, replies)
                    .await
                    .map_err(|e| e.to_string())
            };
            match answered {
                Err(why) => {
                    tracing::warn!(slot = r.to.slot, error = %why, "A redirected write could not be sent again; its keys are re-copied.");
                    // Not a redirect line, so it is classified as a target-only failure.
                    return self.error(p, format!("CLUSTER redirect not followed: {why}"));
                }
                Ok(answers) => {
                    if let Some(c) = p.collect.as_mut() {
                        c.values.clear();
                    }
                    let n = answers.len();
                    for (i, (s, bytes)) in answers.into_iter().enumerate() {
                        if let Some(c) = p.collect.as_mut()
                            && n - i <= c.want
                        {
                            c.values
                                .push(redis::parse_redis_value(&bytes).unwrap_or_else(|e| {
                                    redis::Value::SimpleString(format!("unparsable: {e}"))
                                }));
                        }
                        for e in s.errors {
                            self.error(p, e)?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Marks the keys of `argv` diverged; the newly diverged ones go to `requests`.
    fn keys_of(&mut self, db: u32, argv: &Argv, line: &str, requests: &mut Vec<(u32, Vec<u8>)>) {
        let name = String::from_utf8_lossy(argv.name()).into_owned();
        let Some((table, _)) = &self.recopy else {
            self.stats
                .with_diverged(|d| d.mark_keyless(format!("{name}: {line}")));
            return;
        };
        self.keys.clear();
        table.keys_into(argv, &mut self.keys);
        if self.keys.is_empty() {
            self.stats
                .with_diverged(|d| d.mark_keyless(format!("{name} (db {db}): {line}")));
            return;
        }
        let keys = &self.keys;
        self.stats.with_diverged(|d| {
            for k in keys {
                let key = argv.get(k.pos).unwrap_or_default();
                if d.mark(db, key, line) {
                    requests.push((db, key.to_vec()));
                }
            }
        });
    }

    /// `p` got all its replies.
    fn completed(&self, p: &Pending) {
        if let Origin::Restore(db, key) = &p.origin
            && !p.failed
            && self.stats.diverged_len.load(Ordering::Relaxed) > 0
        {
            self.stats.with_diverged(|d| d.settle(*db, key));
        }
    }
}

/// Encodes a fenced batch (`docs/leases.md`): `WATCH token dirty`, the check script, then the
/// batch and its progress update in `MULTI … EXEC`. Returns, per element of the `EXEC` reply,
/// the operation it answers, and the operations. `select` switches the connection's db (adding
/// to `replies`); whether `EXEC` runs (its last `SELECT` is 0) or not (the `SELECT` before
/// `WATCH` was), the connection ends in db 0, as `select` then believes.
fn encode_fenced(
    buf: &mut Vec<u8>,
    select: &mut impl FnMut(&mut Vec<u8>, u32, &mut usize),
    replies: &mut usize,
    f: &super::lease::Fence,
    batch: Vec<Op>,
    stats: &ReplayStats,
) -> (Vec<Option<usize>>, Vec<Origin>) {
    // The lease keys live in db 0; the check runs there too.
    select(buf, 0, replies);
    encode_command(buf, &[b"WATCH", &f.token_key, &f.dirty_key]);
    encode_command(
        buf,
        &[
            b"EVAL",
            CHECK_SCRIPT.as_bytes(),
            b"2",
            &f.token_key,
            &f.dirty_key,
            &f.token,
        ],
    );
    encode_command(buf, &[b"MULTI"]);
    *replies += 3;
    let mut slots = Vec::new();
    let mut origins = Vec::new();
    // Each queued command is answered `QUEUED`, then again in `EXEC`.
    let mut queue = |buf: &mut Vec<u8>, d: u32, item: Queued, slot: Option<usize>| {
        let before = *replies;
        select(buf, d, replies);
        if *replies > before {
            slots.push(None);
        }
        match item {
            Queued::Select => return,
            Queued::Argv(argv) => encode_argv(buf, argv),
            Queued::Restore(key, payload, at) => encode_restore(
                buf,
                key,
                payload,
                at,
                stats.relative_restores.load(Ordering::Relaxed),
            ),
        }
        *replies += 1;
        slots.push(slot);
    };
    for op in batch {
        let i = Some(origins.len());
        match op {
            Op::Cmd { db: d, argv, .. } => {
                queue(buf, d, Queued::Argv(&argv), i);
                origins.push(Origin::Cmd(d, argv));
            }
            Op::Atomic { cmds, .. } => {
                // Already inside the batch's transaction.
                for (d, argv) in &cmds {
                    queue(buf, *d, Queued::Argv(argv), i);
                }
                origins.push(Origin::Atomic(cmds));
            }
            Op::Restore {
                db: d,
                key,
                payload,
                expire_at_ms,
                ..
            } => {
                queue(
                    buf,
                    d,
                    Queued::Restore(&key, payload.as_deref(), expire_at_ms),
                    i,
                );
                stats.restores.fetch_add(1, Ordering::Relaxed);
                origins.push(Origin::Restore(d, key));
            }
            other => {
                tracing::debug!(
                    seq = other.seq(),
                    "Skipped an operation a fenced batch cannot carry."
                );
            }
        }
    }
    queue(buf, 0, Queued::Select, None);
    for argv in &f.tail {
        queue(buf, 0, Queued::Argv(argv), None);
    }
    encode_command(buf, &[b"EXEC"]);
    *replies += 1;
    (slots, origins)
}

/// What a fenced batch queues in its transaction.
enum Queued<'a> {
    /// Only the `SELECT` (if the db changes).
    Select,
    Argv(&'a Argv),
    /// Key, payload (`None`: delete) and absolute expiry.
    Restore(&'a [u8], Option<&'a [u8]>, Option<i64>),
}

/// `RESTORE key <abs ms or 0> payload REPLACE [ABSTTL]`, or `DEL key` for a key the source no
/// longer has. With `relative` (a target without `ABSTTL`), the TTL left now: the key then
/// expires later than on the source by the time from here to the target's execution (a
/// pipeline's latency), and a key already past its expiry is deleted, as `RESTORE … ABSTTL`
/// with a past time does.
fn encode_restore(
    buf: &mut Vec<u8>,
    key: &[u8],
    payload: Option<&[u8]>,
    expire_at_ms: Option<i64>,
    relative: bool,
) {
    match (payload, expire_at_ms) {
        (None, _) => encode_command(buf, &[b"DEL", key]),
        (Some(_), Some(t)) if relative && t <= now_ms() => encode_command(buf, &[b"DEL", key]),
        (Some(p), Some(t)) if relative => {
            let ttl = (t - now_ms()).to_string();
            encode_command(buf, &[b"RESTORE", key, ttl.as_bytes(), p, b"REPLACE"]);
        }
        (Some(p), _) => {
            let ttl = expire_at_ms.map_or_else(|| "0".to_string(), |t| t.to_string());
            let mut args: Vec<&[u8]> = vec![b"RESTORE", key, ttl.as_bytes(), p, b"REPLACE"];
            if expire_at_ms.is_some() {
                args.push(b"ABSTTL");
            }
            encode_command(buf, &args);
        }
    }
}

/// The error lines of each element of an `EXEC` array reply, with the fenced batch's operation
/// each element answers.
fn element_errors(reply: &[u8], slots: &[Option<usize>]) -> Vec<(Option<usize>, String)> {
    let mut out = Vec::new();
    let Some(end) = reply.iter().position(|&b| b == b'\r') else {
        return out;
    };
    let mut at = end + 2;
    let mut i = 0;
    while at < reply.len() {
        let Ok(Some(s)) = summarize(&reply[at..]) else {
            break;
        };
        for e in s.errors {
            out.push((slots.get(i).copied().flatten(), e));
        }
        at += s.len;
        i += 1;
    }
    out
}

fn encode_argv(buf: &mut Vec<u8>, argv: &Argv) {
    buf.extend_from_slice(format!("*{}\r\n", argv.len()).as_bytes());
    for a in argv.iter() {
        buf.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        buf.extend_from_slice(a);
        buf.extend_from_slice(b"\r\n");
    }
}

async fn read_replies(
    mut reader: RawReader,
    mut pending: mpsc::UnboundedReceiver<Pending>,
    window: Arc<Semaphore>,
    mut failures: Failures,
) -> Result<(), ReplayError> {
    let stats = failures.stats.clone();
    let mut queue: VecDeque<Pending> = VecDeque::new();
    let mut closed = false;
    loop {
        // Take expectations in order; answer barriers whose predecessors are all answered.
        while let Ok(p) = pending.try_recv() {
            queue.push_back(p);
        }
        while let Some(front) = queue.front_mut() {
            if front.replies > 0 {
                break;
            }
            let Some(mut p) = queue.pop_front() else {
                break;
            };
            if p.redirect.is_some() {
                failures.follow(&mut p).await?;
            }
            failures.completed(&p);
            // Shards share this counter: keep the furthest position for status reporting.
            stats.applied.fetch_max(p.seq + 1, Ordering::Release);
            if let Some(d) = p.done {
                let _ = d.send(());
            }
            if let Some(c) = p.collect {
                let _ = c.reply.send(c.values);
            }
            if let Some(f) = p.fence {
                if f.refused {
                    stats.fenced_batches.fetch_add(1, Ordering::Relaxed);
                }
                let _ = f.done.send(!f.refused);
            }
        }
        if queue.is_empty() {
            if closed {
                return Ok(());
            }
            match pending.recv().await {
                Some(p) => queue.push_back(p),
                None => closed = true,
            }
            continue;
        }
        // Parse every complete reply in the buffer.
        let mut progressed = false;
        while let Some(front) = queue.front_mut() {
            if front.replies == 0 {
                break;
            }
            let summary = summarize(reader.unconsumed()).map_err(|e| NetError::Io {
                endpoint: "target".into(),
                message: e.to_string(),
            })?;
            let Some(s) = summary else { break };
            if let Some(c) = front.collect.as_mut()
                && front.replies <= c.want
            {
                let value = redis::parse_redis_value(&reader.unconsumed()[..s.len])
                    .unwrap_or_else(|e| redis::Value::SimpleString(format!("unparsable: {e}")));
                c.values.push(value);
            }
            // A fenced batch's EXEC: nil when refused; its errors belong to single operations.
            let mut parts = None;
            if front.replies == 1
                && let Some(f) = front.fence.as_mut()
            {
                let reply = &reader.unconsumed()[..s.len];
                if reply.starts_with(b"*-1") || reply.starts_with(b"_") {
                    f.refused = true;
                } else if !s.errors.is_empty() && reply.starts_with(b"*") {
                    parts = Some(element_errors(reply, &f.slots));
                }
            }
            reader.consume(s.len);
            front.replies -= 1;
            progressed = true;
            window.add_permits(1);
            stats.commands.fetch_add(1, Ordering::Relaxed);
            match parts {
                Some(parts) => {
                    for (part, e) in parts {
                        failures.error_at(front, part, e)?;
                    }
                }
                None => {
                    for e in s.errors {
                        failures.error(front, e)?;
                    }
                }
            }
        }
        if progressed {
            continue;
        }
        if reader.fill().await? == 0 {
            return Err(NetError::Io {
                endpoint: "target".into(),
                message: "the target closed the replay connection".into(),
            }
            .into());
        }
    }
}

#[cfg(test)]
mod tests {
    //! The replayer against a real `redis-server`: what each operation leaves on the target,
    //! and how target-only failures and late writes to expiring keys turn into re-copies.

    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use redis::AsyncCommands;

    use super::*;
    use crate::command::TableOrigin;

    /// A throwaway `redis-server` on a free port, without persistence, killed by its pid on drop.
    struct Server {
        child: Child,
        port: u16,
        _dir: tempfile::TempDir,
    }

    impl Server {
        fn start() -> Server {
            // The port may be taken between the probe and the server's own bind: try again.
            for _ in 0..5 {
                let port = std::net::TcpListener::bind("127.0.0.1:0")
                    .and_then(|l| l.local_addr())
                    .expect("a free port")
                    .port();
                let dir = tempfile::tempdir().unwrap();
                let child = Command::new("redis-server")
                    .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                    .args(["--save", "", "--appendonly", "no"])
                    .arg("--dir")
                    .arg(dir.path())
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("redis-server must be installed for these tests");
                let mut server = Server {
                    child,
                    port,
                    _dir: dir,
                };
                if server.ready() {
                    return server;
                }
            }
            panic!("redis-server did not start on a free port");
        }

        /// Waits until this process (not whoever won the port) answers.
        fn ready(&mut self) -> bool {
            let deadline = Instant::now() + Duration::from_secs(10);
            let client = redis::Client::open(self.url()).unwrap();
            while Instant::now() < deadline {
                if self.child.try_wait().ok().flatten().is_some() {
                    return false;
                }
                if let Ok(mut con) = client.get_connection_with_timeout(Duration::from_secs(1))
                    && let Ok(info) = redis::cmd("INFO").arg("server").query::<String>(&mut con)
                {
                    let pid = format!("process_id:{}", self.child.id());
                    return info.lines().any(|l| l.trim() == pid);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            false
        }

        fn url(&self) -> String {
            format!("redis://127.0.0.1:{}", self.port)
        }

        fn endpoint(&self) -> Endpoint {
            Endpoint::parse(&self.url()).unwrap()
        }

        /// A control connection in `db`.
        async fn con(&self, db: i64) -> redis::aio::MultiplexedConnection {
            self.endpoint().with_db(db).control().await.unwrap()
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn table() -> Arc<CommandTable> {
        Arc::new(CommandTable::from_specs(
            CommandTable::builtin().iter().cloned().collect(),
            TableOrigin::Builtin,
        ))
    }

    fn argv(args: &[&str]) -> Argv {
        Argv::from_args(args)
    }

    fn cmd(seq: u64, db: u32, args: &[&str]) -> Op {
        Op::Cmd {
            seq,
            db,
            argv: argv(args),
        }
    }

    fn key(db: u32, k: &str) -> (u32, Vec<u8>) {
        (db, k.as_bytes().to_vec())
    }

    /// A replayer with re-copies running on `server`: feed it through `ops`.
    struct Replay {
        ops: mpsc::Sender<Op>,
        task: tokio::task::JoinHandle<Result<(), ReplayError>>,
        recopies: mpsc::UnboundedReceiver<(u32, Vec<u8>)>,
        stats: Arc<ReplayStats>,
    }

    impl Replay {
        fn start(server: &Server) -> Replay {
            let (ops, mut rx) = mpsc::channel(1024);
            let (recopy_tx, recopies) = mpsc::unbounded_channel();
            let stats = Arc::new(ReplayStats::default());
            let replayer = Replayer::new(server.endpoint()).with_recopy(table(), recopy_tx);
            let task = tokio::spawn({
                let stats = stats.clone();
                async move { replayer.run(&mut rx, stats).await }
            });
            Replay {
                ops,
                task,
                recopies,
                stats,
            }
        }

        async fn send(&self, ops: Vec<Op>) {
            for op in ops {
                self.ops.send(op).await.unwrap();
            }
        }

        /// Sends a barrier and waits until replay answers it.
        async fn sync(&self, seq: u64) {
            let (done, answered) = oneshot::channel();
            self.send(vec![Op::Barrier { seq, done }]).await;
            tokio::time::timeout(Duration::from_secs(10), answered)
                .await
                .expect("barrier not answered in time")
                .expect("replay dropped the barrier");
        }

        /// Closes the stream, waits for every reply, and returns the re-copy requests made.
        async fn finish(mut self) -> (Arc<ReplayStats>, Vec<(u32, Vec<u8>)>) {
            drop(self.ops);
            self.task.await.unwrap().unwrap();
            let mut recopies = Vec::new();
            while let Ok(k) = self.recopies.try_recv() {
                recopies.push(k);
            }
            (self.stats, recopies)
        }
    }

    async fn replay(server: &Server, ops: Vec<Op>) -> (Arc<ReplayStats>, Vec<(u32, Vec<u8>)>) {
        let r = Replay::start(server);
        r.send(ops).await;
        r.finish().await
    }

    /// A payload restores the key with its absolute expiry (in any db, replacing what was
    /// there); a restore without payload deletes the key.
    #[tokio::test]
    async fn restores_land_with_their_absolute_expiry_and_none_deletes() {
        let server = Server::start();
        let mut c0 = server.con(0).await;
        let mut c2 = server.con(2).await;
        let _: () = c0.set("src", "hello").await.unwrap();
        let _: () = c0.rpush("lsrc", &["a", "b"]).await.unwrap();
        let _: () = c0.set("gone", "x").await.unwrap();
        let _: () = c2.set("l", "not a list").await.unwrap();
        let dump = |k: &'static str| {
            let mut c = c0.clone();
            async move {
                redis::cmd("DUMP")
                    .arg(k)
                    .query_async::<Vec<u8>>(&mut c)
                    .await
                    .unwrap()
            }
        };
        let (p_str, p_list) = (dump("src").await, dump("lsrc").await);
        let expire_at = now_ms() + 3_600_000;
        let (stats, recopies) = replay(
            &server,
            vec![
                Op::Restore {
                    seq: 1,
                    db: 0,
                    key: b"dst".to_vec(),
                    payload: Some(p_str),
                    expire_at_ms: Some(expire_at),
                },
                Op::Restore {
                    seq: 2,
                    db: 2,
                    key: b"l".to_vec(),
                    payload: Some(p_list),
                    expire_at_ms: None,
                },
                Op::Restore {
                    seq: 3,
                    db: 0,
                    key: b"gone".to_vec(),
                    payload: None,
                    expire_at_ms: None,
                },
            ],
        )
        .await;
        let dst: String = c0.get("dst").await.unwrap();
        assert_eq!(dst, "hello");
        let at: i64 = redis::cmd("PEXPIRETIME")
            .arg("dst")
            .query_async(&mut c0)
            .await
            .unwrap();
        assert_eq!(at, expire_at);
        let l: Vec<String> = c2.lrange("l", 0, -1).await.unwrap();
        assert_eq!(l, ["a", "b"]);
        let ttl: i64 = c2.pttl("l").await.unwrap();
        assert_eq!(ttl, -1);
        let gone: bool = c0.exists("gone").await.unwrap();
        assert!(!gone);
        assert_eq!(stats.restores.load(Ordering::Relaxed), 3);
        assert_eq!(stats.applied.load(Ordering::Relaxed), 4);
        assert_eq!(stats.error_count(), 0);
        assert!(recopies.is_empty());
    }

    /// Commands and atomic groups apply in stream order, each in its own db, switching dbs
    /// only when needed (inside a group too).
    #[tokio::test]
    async fn commands_and_atomic_groups_apply_in_order_in_their_dbs() {
        let server = Server::start();
        let (stats, recopies) = replay(
            &server,
            vec![
                cmd(1, 0, &["RPUSH", "l", "1"]),
                Op::Atomic {
                    seq: 2,
                    cmds: vec![
                        (0, argv(&["RPUSH", "l", "2"])),
                        (1, argv(&["RPUSH", "l", "x"])),
                        (0, argv(&["RPUSH", "l", "3"])),
                    ],
                },
                cmd(3, 0, &["RPUSH", "l", "4"]),
                cmd(4, 1, &["RPUSH", "l", "y"]),
                Op::Atomic {
                    seq: 5,
                    cmds: vec![(1, argv(&["INCR", "n"])), (1, argv(&["INCR", "n"]))],
                },
            ],
        )
        .await;
        let mut c0 = server.con(0).await;
        let mut c1 = server.con(1).await;
        let l0: Vec<String> = c0.lrange("l", 0, -1).await.unwrap();
        let l1: Vec<String> = c1.lrange("l", 0, -1).await.unwrap();
        let n: i64 = c1.get("n").await.unwrap();
        assert_eq!(l0, ["1", "2", "3", "4"]);
        assert_eq!(l1, ["x", "y"]);
        assert_eq!(n, 2);
        // SETNAME; SELECT 0, RPUSH; MULTI, RPUSH, SELECT 1, RPUSH, SELECT 0, RPUSH, EXEC;
        // RPUSH; SELECT 1, RPUSH; MULTI, INCR, INCR, EXEC.
        assert_eq!(stats.commands.load(Ordering::Relaxed), 17);
        assert_eq!(stats.applied.load(Ordering::Relaxed), 6);
        assert_eq!(stats.error_count(), 0);
        assert!(recopies.is_empty());
    }

    /// An expiring write applied (give or take `EXPIRY_MARGIN_MS`) after its key's expiry asks
    /// for a re-copy of the keys it writes; one applied well before does not. The write itself
    /// is applied either way.
    #[tokio::test]
    async fn an_expiring_write_applied_after_the_expiry_asks_for_a_recopy() {
        let server = Server::start();
        let now = now_ms();
        let expiring = |seq, k: &str, expire_at_ms| Op::Expiring {
            op: Box::new(cmd(seq, 0, &["INCR", k])),
            expire_at_ms,
            keys: vec![key(0, k)],
        };
        let (stats, recopies) = replay(
            &server,
            vec![
                expiring(1, "past", now - 1000),
                expiring(2, "later", now + 3_600_000),
                // Inside the margin: may be gone by the time the target runs it.
                expiring(3, "margin", now + EXPIRY_MARGIN_MS / 2),
            ],
        )
        .await;
        assert_eq!(recopies, vec![key(0, "past"), key(0, "margin")]);
        assert_eq!(stats.expiry_recopies.load(Ordering::Relaxed), 2);
        // Nobody places them here (no `request_recopies` task).
        assert_eq!(stats.recopies_outstanding.load(Ordering::Relaxed), 2);
        let mut c0 = server.con(0).await;
        let values: Vec<i64> = c0.mget(&["past", "later", "margin"]).await.unwrap();
        assert_eq!(values, [1, 1, 1]);
        assert_eq!(stats.applied.load(Ordering::Relaxed), 4);
    }

    /// An error only the target gives (`OOM`) leaves the write's keys in the diverged ledger
    /// and asks for their re-copy once; a failed restore is recorded without a request (it
    /// would fail again) and leaves the ledger when a later restore of the key succeeds; an
    /// error the source gave too (`WRONGTYPE`) is only counted.
    #[tokio::test]
    async fn target_only_errors_mark_keys_diverged_and_ask_for_recopies() {
        let server = Server::start();
        let mut c0 = server.con(0).await;
        let _: () = c0.set("str", "v").await.unwrap();
        let _: () = c0.set("payload", "restored").await.unwrap();
        let payload: Vec<u8> = redis::cmd("DUMP")
            .arg("payload")
            .query_async(&mut c0)
            .await
            .unwrap();
        let restore = |seq| Op::Restore {
            seq,
            db: 0,
            key: b"r".to_vec(),
            payload: Some(payload.clone()),
            expire_at_ms: None,
        };
        let _: () = redis::cmd("CONFIG")
            .arg(&["SET", "maxmemory", "1"])
            .query_async(&mut c0)
            .await
            .unwrap();
        let r = Replay::start(&server);
        r.send(vec![
            cmd(1, 0, &["SET", "k", "v"]),
            cmd(2, 0, &["SET", "k", "v2"]),
            // Not `denyoom`: fails as it did on the source.
            cmd(3, 0, &["LPOP", "str"]),
            restore(4),
            Op::Atomic {
                seq: 5,
                cmds: vec![(0, argv(&["SET", "a", "1"])), (0, argv(&["SET", "b", "1"]))],
            },
        ])
        .await;
        r.sync(6).await;
        assert_eq!(r.stats.diverged_summary().0, 4);
        let _: () = redis::cmd("CONFIG")
            .arg(&["SET", "maxmemory", "0"])
            .query_async(&mut c0)
            .await
            .unwrap();
        r.send(vec![restore(7)]).await;
        let (stats, recopies) = r.finish().await;
        assert_eq!(recopies, vec![key(0, "k"), key(0, "a"), key(0, "b")]);
        assert_eq!(stats.recopies_outstanding.load(Ordering::Relaxed), 3);
        // `r` settled by the successful restore; the written keys stay until re-copied.
        assert_eq!(stats.diverged_summary().0, 3);
        {
            let d = stats.diverged.lock().unwrap();
            let example = d.example().unwrap();
            assert!(example.contains("OOM"), "{example}");
        }
        let expected: BTreeMap<String, u64> = [("OOM".to_string(), 5)].into();
        assert_eq!(*stats.target_errors.lock().unwrap(), expected);
        // WRONGTYPE, and the EXECABORT of the refused group.
        assert_eq!(stats.source_errors.load(Ordering::Relaxed), 2);
        let r_value: String = c0.get("r").await.unwrap();
        assert_eq!(r_value, "restored");
        let k: bool = c0.exists("k").await.unwrap();
        assert!(!k);
    }

    /// A barrier is answered only once the replies of everything before it arrived: while the
    /// target holds a write (`CLIENT PAUSE WRITE`), the barrier behind it waits.
    #[tokio::test]
    async fn a_barrier_is_answered_after_the_replies_before_it() {
        let server = Server::start();
        let mut c0 = server.con(0).await;
        let _: () = redis::cmd("CLIENT")
            .arg(&["PAUSE", "20000", "WRITE"])
            .query_async(&mut c0)
            .await
            .unwrap();
        let r = Replay::start(&server);
        let (done, mut answered) = oneshot::channel();
        r.send(vec![
            cmd(1, 0, &["SET", "k", "v"]),
            Op::Barrier { seq: 2, done },
        ])
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            answered.try_recv().is_err(),
            "the barrier was answered before the write before it"
        );
        let k: Option<String> = c0.get("k").await.unwrap();
        assert_eq!(k, None);
        assert_eq!(r.stats.applied.load(Ordering::Relaxed), 1);
        let _: () = redis::cmd("CLIENT")
            .arg("UNPAUSE")
            .query_async(&mut c0)
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(10), answered)
            .await
            .expect("barrier not answered after the pause")
            .unwrap();
        // Answered: the write is on the target.
        let k: Option<String> = c0.get("k").await.unwrap();
        assert_eq!(k.as_deref(), Some("v"));
        assert_eq!(r.stats.applied.load(Ordering::Relaxed), 3);
        let (stats, _) = r.finish().await;
        assert_eq!(stats.error_count(), 0);
    }

    #[tokio::test]
    async fn a_group_the_target_refuses_does_not_leave_later_writes_in_its_db() {
        // A refused group runs none of its SELECTs: the executor must not believe it switched.
        let server = Server::start();
        let mut c0 = server.con(0).await;
        let _: () = redis::cmd("CONFIG")
            .arg(&["SET", "maxmemory", "1"])
            .query_async(&mut c0)
            .await
            .unwrap();
        let r = Replay::start(&server);
        r.send(vec![
            cmd(1, 0, &["LPOP", "x"]),
            Op::Atomic {
                seq: 2,
                cmds: vec![(1, argv(&["SET", "k", "v"]))],
            },
        ])
        .await;
        r.sync(3).await;
        let _: () = redis::cmd("CONFIG")
            .arg(&["SET", "maxmemory", "0"])
            .query_async(&mut c0)
            .await
            .unwrap();
        r.send(vec![cmd(4, 1, &["SET", "j", "v"])]).await;
        let (stats, _) = r.finish().await;
        assert!(stats.target_error_count() > 0, "the group was refused");
        let mut c1 = server.con(1).await;
        let in_db1: bool = c1.exists("j").await.unwrap();
        let in_db0: bool = c0.exists("j").await.unwrap();
        assert!(in_db1 && !in_db0, "j in db1: {in_db1}, in db0: {in_db0}");
    }
}
