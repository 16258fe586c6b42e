//! `Replayer`: applies ordered operations to the target over one pipelined RESP connection.
//!
//! ## Behavior
//! - Operations are encoded as they arrive and flushed when no more are waiting, so a busy
//!   stream goes out in large writes; a bounded window of unanswered commands keeps memory and
//!   the target's input buffer bounded.
//! - The db is switched with `SELECT` only when it changes. Atomic groups go out as
//!   `MULTI … EXEC`.
//! - Error replies are counted by their code, not fatal: a write that failed on the source
//!   (`WRONGTYPE`) fails the same way here.
//! - A broken connection ends the run with an error; the caller resyncs, because commands in
//!   flight may or may not have been applied.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::command::Argv;
use crate::net::resp::summarize;
use crate::net::{Endpoint, NetError, RawReader, encode_command};

/// `CLIENT SETNAME` of replay connections.
pub const REPLAY_CLIENT_NAME: &str = "ferry-replay";

/// Unanswered commands allowed in flight.
pub const DEFAULT_WINDOW: usize = 16_384;

/// One operation for the target, tagged with the journal position it completes.
#[derive(Debug)]
pub enum Op {
    /// A single command.
    Cmd { seq: u64, db: u32, argv: Argv },
    /// Commands applied atomically.
    Atomic { seq: u64, cmds: Vec<(u32, Argv)> },
    /// Set a key to a snapshot payload (`None`: delete it).
    Restore {
        seq: u64,
        db: u32,
        key: Vec<u8>,
        payload: Option<Vec<u8>>,
        expire_at_ms: Option<i64>,
    },
    /// Answered once everything before it is applied.
    Barrier { seq: u64, done: oneshot::Sender<()> },
    /// Read-only commands run at this position in the key's order; their replies go back to
    /// the verifier, which compares them with the same reads fenced on the source.
    Check {
        seq: u64,
        db: u32,
        /// The key the reads are about (routes the check to the key's shard).
        key: Vec<u8>,
        cmds: Vec<Argv>,
        reply: oneshot::Sender<Vec<redis::Value>>,
    },
}

impl Op {
    fn seq(&self) -> u64 {
        match self {
            Op::Cmd { seq, .. }
            | Op::Atomic { seq, .. }
            | Op::Restore { seq, .. }
            | Op::Barrier { seq, .. }
            | Op::Check { seq, .. } => *seq,
        }
    }
}

/// Counters shared with status reporting.
#[derive(Debug, Default)]
pub struct ReplayStats {
    /// Journal position of the last operation whose replies all arrived (+1).
    pub applied: AtomicU64,
    /// Commands answered.
    pub commands: AtomicU64,
    /// Keys restored from payloads.
    pub restores: AtomicU64,
    /// Error replies by code.
    pub errors: Mutex<BTreeMap<String, u64>>,
}

impl ReplayStats {
    /// Total error replies.
    pub fn error_count(&self) -> u64 {
        self.errors.lock().map_or(0, |e| e.values().sum())
    }
}

struct Pending {
    seq: u64,
    replies: usize,
    done: Option<oneshot::Sender<()>>,
    collect: Option<Collect>,
}

/// Replies a check wants back: the last `want` replies of its pending entry.
struct Collect {
    want: usize,
    values: Vec<redis::Value>,
    reply: oneshot::Sender<Vec<redis::Value>>,
}

/// Applies operations to the target.
pub struct Replayer {
    target: Endpoint,
    window: usize,
}

impl Replayer {
    /// A replayer for `target`.
    pub fn new(target: Endpoint) -> Replayer {
        Replayer {
            target,
            window: DEFAULT_WINDOW,
        }
    }

    /// Applies operations from `ops` until it closes; returns when everything sent is answered.
    pub async fn run(
        &self,
        ops: &mut mpsc::Receiver<Op>,
        stats: Arc<ReplayStats>,
    ) -> Result<(), NetError> {
        let conn = self.target.raw().await?;
        let (reader, mut writer) = conn.split();
        let window = Arc::new(Semaphore::new(self.window));
        let (pending_tx, pending_rx) = mpsc::unbounded_channel::<Pending>();
        let reader_task = tokio::spawn(read_replies(
            reader,
            pending_rx,
            window.clone(),
            stats.clone(),
        ));
        let mut db: Option<u32> = None;
        let mut buf = Vec::with_capacity(1 << 20);
        // Named, so a cutover can tell ferry's connections from the application's.
        encode_command(
            &mut buf,
            &[b"CLIENT", b"SETNAME", REPLAY_CLIENT_NAME.as_bytes()],
        );
        let _ = pending_tx.send(Pending {
            seq: 0,
            replies: 1,
            done: None,
            collect: None,
        });
        // Sent now: a connection that never gets an operation must still see its reply, or
        // closing it would wait for that reply forever.
        let mut write_result = writer.write_all(&buf).await;
        buf.clear();
        'outer: while write_result.is_ok()
            && let Some(first) = ops.recv().await
        {
            let mut next = Some(first);
            while let Some(op) = next {
                let seq = op.seq();
                let mut replies = 0;
                let mut done = None;
                let mut collect = None;
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
                        encode_command(&mut buf, &[b"EXEC"]);
                        replies += 1;
                    }
                    Op::Restore {
                        db: d,
                        key,
                        payload,
                        expire_at_ms,
                        ..
                    } => {
                        select(&mut buf, d, &mut replies);
                        match payload {
                            None => encode_command(&mut buf, &[b"DEL", &key]),
                            Some(p) => {
                                let (ttl, abs) = match expire_at_ms {
                                    Some(t) => (t.to_string(), true),
                                    None => ("0".to_string(), false),
                                };
                                let mut args: Vec<&[u8]> =
                                    vec![b"RESTORE", &key, ttl.as_bytes(), &p, b"REPLACE"];
                                if abs {
                                    args.push(b"ABSTTL");
                                }
                                encode_command(&mut buf, &args);
                            }
                        }
                        replies += 1;
                        stats.restores.fetch_add(1, Ordering::Relaxed);
                    }
                    Op::Barrier { done: d, .. } => done = Some(d),
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
                    }
                }
                let mut pending = Some(Pending {
                    seq,
                    replies,
                    done,
                    collect,
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
            Err(NetError::Io {
                endpoint: self.target.redacted().to_string(),
                message: e.to_string(),
            })
        });
        write_result.and(read_result)
    }
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
    stats: Arc<ReplayStats>,
) -> Result<(), NetError> {
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
            let p = queue.pop_front().unwrap_or_else(|| unreachable!());
            // Shards share this counter: keep the furthest position for status reporting.
            stats.applied.fetch_max(p.seq + 1, Ordering::Release);
            if let Some(d) = p.done {
                let _ = d.send(());
            }
            if let Some(c) = p.collect {
                let _ = c.reply.send(c.values);
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
            reader.consume(s.len);
            front.replies -= 1;
            progressed = true;
            window.add_permits(1);
            stats.commands.fetch_add(1, Ordering::Relaxed);
            if !s.errors.is_empty()
                && let Ok(mut errs) = stats.errors.lock()
            {
                for e in s.errors {
                    let code = e.split_whitespace().next().unwrap_or("ERR").to_string();
                    *errs.entry(code).or_default() += 1;
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
            });
        }
    }
}
