//! [`SqsWriter`]: gives entries their per-group gseqs, packs them into messages and sends them
//! with `SendMessageBatch`, several calls in flight, until SQS has acknowledged every one.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::ops::Range;
use std::time::Duration;

use aws_sdk_sqs::primitives::Blob;
use aws_sdk_sqs::types::{MessageAttributeValue, SendMessageBatchRequestEntry};
use tokio::task::JoinSet;

use super::message::{self, HEADER_MAX, MessageHeader, Packer};
use super::{BLOB_ATTRIBUTE, MESSAGE_HEADROOM, PayloadEncoding, SqsError, SqsQueue};
use crate::journal::Entry;
use crate::journal::codec;

/// Most entries SQS takes in one `SendMessageBatch` call.
const BATCH_ENTRIES: usize = 10;
/// Attempts for entries that failed inside an otherwise answered batch (throttling, internal
/// errors). Whole-call failures are retried by the SDK itself.
const ENTRY_ATTEMPTS: u32 = 6;
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Sealed messages waiting per call slot before `send` waits for calls to finish, so that a
/// slow queue holds back capture instead of growing memory.
const QUEUED_PER_SLOT: usize = 2 * BATCH_ENTRIES;

/// Counters since the writer was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Entries handed to [`SqsWriter::send`].
    pub entries: u64,
    /// Messages SQS acknowledged.
    pub messages_acked: u64,
    /// `SendMessageBatch` calls made, retries included.
    pub calls: u64,
    /// Entries of answered calls that failed and were sent again.
    pub entry_retries: u64,
}

/// A sealed message ready to go.
#[derive(Debug)]
struct Outgoing {
    header: MessageHeader,
    body: String,
    /// The packed records, when they travel as an attribute rather than in `body`.
    blob: Option<Vec<u8>>,
    /// Bytes as SQS counts them toward its limits.
    size: usize,
}

/// What one batch call task reports back.
struct Outcome {
    acked: Vec<MessageHeader>,
    /// Messages not acknowledged, to go back to the front of their groups' queues.
    unsent: Vec<Outgoing>,
    calls: u64,
    entry_retries: u64,
    error: Option<SqsError>,
}

/// Per group: which gseqs SQS has acknowledged.
#[derive(Debug, Default)]
struct Acked {
    /// Every gseq below this (from the group's first) is acknowledged.
    below: u64,
    /// Acknowledged runs above `below`: first gseq → end.
    runs: BTreeMap<u64, u64>,
    /// Messages sealed and not yet acknowledged.
    outstanding: usize,
}

/// Sends one queue's journal entries. Not `Clone`: one writer owns a group's gseq counter.
///
/// ## Behavior
/// - [`send`](Self::send) assigns gseqs and packs; full messages go out in the background as
///   soon as a call slot is free. It waits only when too many messages are queued.
/// - [`flush`](Self::flush) sends the partly filled messages too and returns once SQS has
///   acknowledged everything handed in, or with the first error. Messages of a failed call are
///   kept and sent again by the next `flush`; with FIFO de-duplication that resend is safe.
/// - Dropping the writer abandons whatever `flush` has not confirmed.
pub struct SqsWriter {
    queue: SqsQueue,
    fifo: bool,
    /// Largest blob a message carries, after headroom and encoding overhead.
    blob_limit: usize,
    next_gseq: HashMap<u32, u64>,
    open: HashMap<u32, Packer>,
    /// Sealed messages per group, in gseq order.
    ready: BTreeMap<u32, VecDeque<Outgoing>>,
    /// FIFO: groups with a message in a call in flight (see the module docs).
    busy: HashSet<u32>,
    tasks: JoinSet<Outcome>,
    acked: HashMap<u32, Acked>,
    /// Group after which the next batch starts looking, so that groups take turns.
    cursor: u32,
    scratch: Vec<u8>,
    stats: WriterStats,
}

impl SqsWriter {
    pub(super) fn new(queue: SqsQueue) -> Self {
        let cfg = queue.config();
        let room = cfg.max_message_bytes - MESSAGE_HEADROOM;
        let blob_limit = match cfg.encoding {
            PayloadEncoding::BinaryAttribute => room,
            PayloadEncoding::Base64Body => room / 4 * 3,
        };
        SqsWriter {
            fifo: cfg.is_fifo(),
            blob_limit,
            queue,
            next_gseq: HashMap::new(),
            open: HashMap::new(),
            ready: BTreeMap::new(),
            busy: HashSet::new(),
            tasks: JoinSet::new(),
            acked: HashMap::new(),
            cursor: 0,
            scratch: Vec::new(),
            stats: WriterStats::default(),
        }
    }

    /// Hands in `entries` for `group` and returns the gseqs they got. An entry too large for a
    /// message fails the whole call before any entry is taken.
    pub async fn send(&mut self, group: u32, entries: &[Entry]) -> Result<Range<u64>, SqsError> {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        let mut ends = Vec::with_capacity(entries.len());
        for e in entries {
            let start = scratch.len();
            codec::encode_payload(&mut scratch, e.seq, e.ts_us, &e.kind);
            let len = scratch.len() - start;
            if HEADER_MAX + Packer::record_len(&scratch[start..]) + 4 > self.blob_limit {
                self.scratch = scratch;
                return Err(SqsError::EntryTooLarge {
                    group,
                    seq: e.seq,
                    bytes: len,
                    limit: self.blob_limit,
                });
            }
            ends.push(scratch.len());
        }
        let first = self.next_gseq(group);
        let mut gseq = first;
        let mut start = 0;
        for (e, end) in entries.iter().zip(ends) {
            let payload = &scratch[start..end];
            start = end;
            let full = self.open.get(&group).is_some_and(|p| {
                p.count > 0 && p.blob_len() + Packer::record_len(payload) > self.blob_limit
            });
            if full {
                self.seal(group);
            }
            self.open
                .entry(group)
                .or_insert_with(|| Packer::new(group, gseq))
                .push(e.seq, payload);
            gseq += 1;
        }
        self.scratch = scratch;
        self.next_gseq.insert(group, gseq);
        self.stats.entries += entries.len() as u64;
        self.pump();
        let limit = self.queue.config().max_in_flight * QUEUED_PER_SLOT;
        while self.queued() > limit {
            self.reap_one().await?;
            self.pump();
        }
        Ok(first..gseq)
    }

    /// Sends everything handed in, partial messages included, and waits until SQS has
    /// acknowledged all of it.
    pub async fn flush(&mut self) -> Result<(), SqsError> {
        let groups: Vec<u32> = self.open.keys().copied().collect();
        for g in groups {
            self.seal(g);
        }
        loop {
            self.pump();
            if self.tasks.is_empty() {
                return Ok(());
            }
            self.reap_one().await?;
        }
    }

    /// The gseq the next entry of `group` gets.
    pub fn next_gseq(&self, group: u32) -> u64 {
        self.next_gseq.get(&group).copied().unwrap_or(0)
    }

    /// Makes `group` continue at `gseq`, e.g. from the caller's own record after a restart. The
    /// partly filled message of the group is sealed first, so entries already handed in keep
    /// their gseqs. If nothing of the group is outstanding, [`Self::acked_gseq`] restarts there.
    pub fn set_next_gseq(&mut self, group: u32, gseq: u64) {
        self.seal(group);
        self.next_gseq.insert(group, gseq);
        let acked = self.acked.entry(group).or_default();
        if acked.outstanding == 0 {
            acked.below = gseq;
            acked.runs.clear();
        }
    }

    /// Every gseq of `group` below this one has been acknowledged by SQS (counted from the
    /// group's first gseq in this writer).
    pub fn acked_gseq(&self, group: u32) -> u64 {
        self.acked.get(&group).map_or(0, |a| a.below)
    }

    pub fn stats(&self) -> WriterStats {
        self.stats
    }

    fn queued(&self) -> usize {
        self.ready.values().map(VecDeque::len).sum()
    }

    /// Closes the group's partly filled message and queues it.
    fn seal(&mut self, group: u32) {
        let Some(packer) = self.open.remove(&group) else {
            return;
        };
        if packer.count == 0 {
            return;
        }
        let (header, blob) = packer.finish();
        let out = match self.queue.config().encoding {
            PayloadEncoding::BinaryAttribute => {
                let body = format!(
                    "ferry journal v{} group={} gseq={}+{} seq={}..{}",
                    header.version,
                    header.group,
                    header.first_gseq,
                    header.count,
                    header.first_seq,
                    header.last_seq
                );
                Outgoing {
                    size: body.len() + BLOB_ATTRIBUTE.len() + "Binary".len() + blob.len(),
                    header,
                    body,
                    blob: Some(blob),
                }
            }
            PayloadEncoding::Base64Body => {
                let body = message::base64_encode(&blob);
                Outgoing {
                    size: body.len(),
                    header,
                    body,
                    blob: None,
                }
            }
        };
        self.acked.entry(group).or_default().outstanding += 1;
        self.ready.entry(group).or_default().push_back(out);
    }

    /// Starts batch calls while there are free slots and messages to send.
    fn pump(&mut self) {
        while self.tasks.len() < self.queue.config().max_in_flight {
            let batch = self.take_batch();
            if batch.is_empty() {
                return;
            }
            let queue = self.queue.clone();
            let fifo = self.fifo;
            self.tasks.spawn(send_batch(queue, fifo, batch));
        }
    }

    /// Up to ten queued messages within the batch byte limit, groups taking turns. FIFO takes
    /// at most one message per group and none from a group already in flight.
    fn take_batch(&mut self) -> Vec<Outgoing> {
        let max_bytes = self.queue.config().max_batch_bytes;
        let groups: Vec<u32> = self
            .ready
            .range(self.cursor..)
            .chain(self.ready.range(..self.cursor))
            .map(|(&g, _)| g)
            .collect();
        let mut batch = Vec::new();
        let mut bytes = 0;
        for g in groups {
            if batch.len() == BATCH_ENTRIES {
                break;
            }
            if self.fifo && self.busy.contains(&g) {
                continue;
            }
            let Some(q) = self.ready.get_mut(&g) else {
                continue;
            };
            while let Some(m) = q.front() {
                if batch.len() == BATCH_ENTRIES || bytes + m.size > max_bytes {
                    break;
                }
                bytes += m.size;
                batch.extend(q.pop_front());
                self.cursor = g.wrapping_add(1);
                if self.fifo {
                    self.busy.insert(g);
                    break;
                }
            }
            if q.is_empty() {
                self.ready.remove(&g);
            }
        }
        batch
    }

    /// Waits for one batch call and books its outcome.
    async fn reap_one(&mut self) -> Result<(), SqsError> {
        let Some(done) = self.tasks.join_next().await else {
            return Ok(());
        };
        let outcome = done.map_err(|e| SqsError::Task(e.to_string()))?;
        self.stats.calls += outcome.calls;
        self.stats.entry_retries += outcome.entry_retries;
        for h in outcome.acked {
            self.busy.remove(&h.group);
            self.stats.messages_acked += 1;
            let a = self.acked.entry(h.group).or_default();
            a.outstanding = a.outstanding.saturating_sub(1);
            if h.first_gseq <= a.below {
                a.below = a.below.max(h.end_gseq());
            } else {
                a.runs.insert(h.first_gseq, h.end_gseq());
            }
            while let Some(end) = a.runs.remove(&a.below) {
                a.below = end;
            }
        }
        // Back to the front, newest first, so each group's queue stays in gseq order.
        for m in outcome.unsent.into_iter().rev() {
            self.busy.remove(&m.header.group);
            self.ready.entry(m.header.group).or_default().push_front(m);
        }
        match outcome.error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// One `SendMessageBatch` call, with retries of the entries SQS reports as failed.
async fn send_batch(queue: SqsQueue, fifo: bool, msgs: Vec<Outgoing>) -> Outcome {
    let mut outcome = Outcome {
        acked: Vec::new(),
        unsent: Vec::new(),
        calls: 0,
        entry_retries: 0,
        error: None,
    };
    let mut pending: Vec<Option<Outgoing>> = msgs.into_iter().map(Some).collect();
    let mut backoff = FIRST_BACKOFF;
    for attempt in 1..=ENTRY_ATTEMPTS {
        let entries: Result<Vec<_>, _> = pending
            .iter()
            .enumerate()
            .filter_map(|(i, m)| m.as_ref().map(|m| request_entry(i, m, fifo)))
            .collect();
        let entries = match entries {
            Ok(e) => e,
            Err(e) => {
                outcome.error = Some(SqsError::Task(format!("building a batch entry: {e}")));
                break;
            }
        };
        outcome.calls += 1;
        let answer = queue
            .client
            .send_message_batch()
            .queue_url(&queue.cfg.queue_url)
            .set_entries(Some(entries))
            .send()
            .await;
        let answer = match answer {
            Ok(a) => a,
            Err(e) => {
                outcome.error = Some(SqsError::sdk("SendMessageBatch")(e));
                break;
            }
        };
        for ok in answer.successful() {
            if let Some(m) = entry_index(ok.id()).and_then(|i| pending.get_mut(i)?.take()) {
                outcome.acked.push(m.header);
            }
        }
        let failed = answer.failed();
        if failed.is_empty() {
            break;
        }
        let first = &failed[0];
        let give_up = failed.iter().any(|f| f.sender_fault()) || attempt == ENTRY_ATTEMPTS;
        if give_up {
            let f = failed.iter().find(|f| f.sender_fault()).unwrap_or(first);
            outcome.error = Some(SqsError::BatchEntries {
                op: "SendMessageBatch",
                failed: failed.len(),
                code: f.code().to_string(),
                message: f.message().unwrap_or_default().to_string(),
                sender_fault: f.sender_fault(),
            });
            break;
        }
        tracing::debug!(
            failed = failed.len(),
            code = first.code(),
            "SQS send: retrying failed batch entries"
        );
        outcome.entry_retries += failed.len() as u64;
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
    outcome.unsent = pending.into_iter().flatten().collect();
    outcome
}

/// Batch entry ids are the message's index in the call (`m0`…`m9`).
fn entry_index(id: &str) -> Option<usize> {
    id.strip_prefix('m')?.parse().ok()
}

fn request_entry(
    i: usize,
    m: &Outgoing,
    fifo: bool,
) -> Result<SendMessageBatchRequestEntry, aws_sdk_sqs::error::BuildError> {
    let h = &m.header;
    let mut b = SendMessageBatchRequestEntry::builder()
        .id(format!("m{i}"))
        .message_body(&m.body);
    if let Some(blob) = &m.blob {
        b = b.message_attributes(
            BLOB_ATTRIBUTE,
            MessageAttributeValue::builder()
                .data_type("Binary")
                .binary_value(Blob::new(blob.clone()))
                .build()?,
        );
    }
    if fifo {
        b = b
            .message_group_id(format!("shard-{}", h.group))
            .message_deduplication_id(format!("{}-{}-{}", h.group, h.first_gseq, h.count));
    }
    b.build()
}
