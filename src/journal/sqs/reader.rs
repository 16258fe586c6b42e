//! [`SqsReader`]: receives messages, restores each group's gseq order exactly once, reports
//! gaps, and deletes messages once the caller has acknowledged every entry in them.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Instant;

use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry, Message,
    MessageSystemAttributeName,
};

use super::message::{self, MessageHeader};
use super::{BLOB_ATTRIBUTE, SqsError, SqsQueue};
use crate::journal::Entry;

/// Most entries SQS takes in one delete or visibility batch, and most messages per receive.
const BATCH_ENTRIES: usize = 10;

/// What the reader hands the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SqsEvent {
    /// The next entries of a group, in gseq order.
    Batch(SqsBatch),
    /// Gseqs `expected_gseq..got_gseq` of `group` did not arrive within
    /// [`super::SqsConfig::gap_wait`]. The reader continues with `got_gseq`; the caller must
    /// resync what the missing entries touched.
    Gap {
        group: u32,
        expected_gseq: u64,
        got_gseq: u64,
    },
    /// A message that is not a ferry journal message (or is damaged). It is neither yielded
    /// nor deleted: it comes back after its visibility timeout, and a redrive policy moves it
    /// to a dead-letter queue after enough receives.
    Malformed {
        message_id: String,
        receive_count: u32,
        reason: String,
    },
}

/// Consecutive entries of one group from one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqsBatch {
    pub group: u32,
    /// The gseq of `entries[0]`; the next ones follow densely.
    pub first_gseq: u64,
    pub entries: Vec<Entry>,
    /// The message was received before (`ApproximateReceiveCount > 1`): a worker crashed or
    /// stalled with it, or handed it back. `ferry replay` knows from the shard's recorded
    /// position whether it was applied (`docs/leases.md`); a caller without one must treat
    /// its entries as in doubt.
    pub redelivered: bool,
    pub message_id: String,
}

impl SqsBatch {
    /// One past the last gseq.
    pub fn end_gseq(&self) -> u64 {
        self.first_gseq + self.entries.len() as u64
    }
}

/// Counters since the reader was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReaderStats {
    pub receive_calls: u64,
    pub messages: u64,
    pub entries_yielded: u64,
    /// Messages whose entries had all been yielded already.
    pub duplicates: u64,
    pub redelivered: u64,
    pub gaps: u64,
    pub malformed: u64,
    pub deleted: u64,
    /// Visibility extensions of held messages.
    pub extended: u64,
    /// Out-of-order messages handed back to the queue because the reorder buffer was full.
    pub released: u64,
}

/// A received message not yet deleted.
#[derive(Debug)]
struct Held {
    group: u32,
    end_gseq: u64,
    receipt: String,
    visible_until: Instant,
}

/// A message received ahead of its turn.
#[derive(Debug)]
struct Early {
    header: MessageHeader,
    entries: Vec<Entry>,
    redelivered: bool,
    message_id: String,
}

#[derive(Debug, Default)]
struct Group {
    /// The next gseq to yield.
    next: u64,
    /// Every gseq below this is applied (acknowledged by the caller).
    acked: u64,
    /// Out-of-order messages by first gseq.
    early: BTreeMap<u64, Early>,
    /// Since when the group has waited for `next` while holding later messages.
    waiting_since: Option<Instant>,
}

/// Reads one queue's journal entries.
///
/// ## Behavior
/// - [`next`](Self::next) returns buffered events first; otherwise it deletes acknowledged
///   messages, extends the visibility of held ones, makes one receive call (long-polling up to
///   [`super::SqsConfig::wait`]) and returns the first resulting event, or `None` when nothing
///   came.
/// - On a standard queue, per group it yields gseqs in order, each once: a message wholly
///   below the next expected gseq is a duplicate and dropped, one that overlaps is trimmed, one
///   ahead is buffered. On a FIFO queue, which several processes share, it yields every message
///   whole as it comes: the caller holds the shard's lease and knows what the target applied
///   (`docs/leases.md`), so it skips, applies or [`release`](Self::release)s each.
/// - Messages are deleted only when [`ack`](Self::ack) covers all their entries, and
///   [`commit`](Self::commit) (or the next `next`) runs. Dropping the reader deletes nothing:
///   unacknowledged messages come back after their visibility timeout, flagged redelivered.
pub struct SqsReader {
    queue: SqsQueue,
    groups: HashMap<u32, Group>,
    /// By message id, so that a message received again replaces its old receipt handle.
    held: HashMap<String, Held>,
    events: VecDeque<SqsEvent>,
    early_count: usize,
    /// Receipt handles of messages to make visible again at once.
    release: Vec<String>,
    stats: ReaderStats,
}

impl SqsReader {
    pub(super) fn new(queue: SqsQueue, checkpoint: HashMap<u32, u64>) -> Self {
        let groups = checkpoint
            .into_iter()
            .map(|(g, next)| {
                (
                    g,
                    Group {
                        next,
                        acked: next,
                        ..Group::default()
                    },
                )
            })
            .collect();
        SqsReader {
            queue,
            groups,
            held: HashMap::new(),
            events: VecDeque::new(),
            early_count: 0,
            release: Vec::new(),
            stats: ReaderStats::default(),
        }
    }

    /// The next event, or `None` if one receive brought nothing new to yield.
    pub async fn next(&mut self) -> Result<Option<SqsEvent>, SqsError> {
        if let Some(e) = self.events.pop_front() {
            return Ok(Some(e));
        }
        self.commit().await?;
        self.extend_visibility().await;
        self.check_gaps();
        if self.events.is_empty() {
            self.receive().await?;
            self.check_gaps();
        }
        Ok(self.events.pop_front())
    }

    /// Records that every entry of `group` up to and including `gseq` is applied. Messages
    /// wholly acknowledged are deleted by the next [`commit`](Self::commit) or `next`.
    pub fn ack(&mut self, group: u32, gseq: u64) {
        let g = self.groups.entry(group).or_default();
        g.acked = g.acked.max(gseq.saturating_add(1));
    }

    /// Hands a yielded message back to the queue at once (the next commit or `next` makes it
    /// visible): another process holds its shard, or it came ahead of its turn.
    pub fn release(&mut self, message_id: &str) {
        if let Some(h) = self.held.remove(message_id) {
            self.release.push(h.receipt);
            self.stats.released += 1;
        }
    }

    /// Makes the messages handed back with [`release`](Self::release) visible now, rather than
    /// at the next commit: another process may be waiting for them.
    pub async fn flush_released(&mut self) {
        self.flush_releases().await;
    }

    /// Whether events are buffered, so that [`next`](Self::next) returns without a receive.
    pub fn has_buffered(&self) -> bool {
        !self.events.is_empty()
    }

    /// Records that the target applied every gseq of `group` below `applied` (read with the
    /// shard's lease): held messages wholly below are deleted, and on a standard queue the
    /// group continues from there.
    pub fn applied(&mut self, group: u32, applied: u64) {
        let g = self.groups.entry(group).or_default();
        g.acked = g.acked.max(applied);
        g.next = g.next.max(applied);
    }

    /// Forgets what was yielded of `group` beyond what was acknowledged (its batches were
    /// refused by the fence): held messages not acknowledged go back to the queue, and on a
    /// standard queue the group is read again from its acknowledged position.
    pub fn rewind(&mut self, group: u32) {
        let Some(g) = self.groups.get_mut(&group) else {
            return;
        };
        g.next = g.acked;
        self.early_count -= g.early.len();
        g.early.clear();
        g.waiting_since = None;
        let acked = g.acked;
        let back: Vec<String> = self
            .held
            .iter()
            .filter(|(_, h)| h.group == group && h.end_gseq > acked)
            .map(|(id, _)| id.clone())
            .collect();
        for id in back {
            self.release(&id);
        }
    }

    /// Per group, the next gseq to apply: what the caller persists and passes to a new reader.
    pub fn checkpoint(&self) -> BTreeMap<u32, u64> {
        self.groups.iter().map(|(&g, s)| (g, s.acked)).collect()
    }

    pub fn stats(&self) -> ReaderStats {
        self.stats
    }

    /// Deletes the messages whose entries are all acknowledged, and hands back released ones;
    /// returns how many were deleted.
    pub async fn commit(&mut self) -> Result<usize, SqsError> {
        let done: Vec<(String, String)> = self
            .held
            .iter()
            .filter(|(_, h)| {
                self.groups
                    .get(&h.group)
                    .is_some_and(|g| g.acked >= h.end_gseq)
            })
            .map(|(id, h)| (id.clone(), h.receipt.clone()))
            .collect();
        let mut deleted = 0;
        for chunk in done.chunks(BATCH_ENTRIES) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, (_, receipt))| {
                    DeleteMessageBatchRequestEntry::builder()
                        .id(format!("d{i}"))
                        .receipt_handle(receipt)
                        .build()
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| SqsError::Task(format!("building a delete entry: {e}")))?;
            let out = self
                .queue
                .client
                .delete_message_batch()
                .queue_url(&self.queue.cfg.queue_url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(SqsError::sdk("DeleteMessageBatch"))?;
            for (i, (id, _)) in chunk.iter().enumerate() {
                let failed = out.failed().iter().find(|f| f.id() == format!("d{i}"));
                match failed {
                    // A service-side failure: keep the message for the next commit.
                    Some(f) if !f.sender_fault() => continue,
                    // An invalid handle means the message was received again elsewhere (or is
                    // gone); retrying with it cannot work, and any copy will be a duplicate.
                    Some(f) => {
                        tracing::warn!(message_id = %id, code = f.code(), "SQS delete failed")
                    }
                    None => deleted += 1,
                }
                self.held.remove(id);
            }
        }
        self.stats.deleted += deleted as u64;
        self.flush_releases().await;
        Ok(deleted)
    }

    /// Keeps held messages hidden while they wait in the reorder buffer or for the caller's ack.
    /// Extends the visibility of every message received and not yet deleted whose visibility
    /// is half gone. [`next`](Self::next) does this too; a caller busy applying a batch for
    /// longer calls it meanwhile, or SQS hands the batch to another reader while it is still
    /// being applied.
    pub async fn keep_alive(&mut self) {
        self.extend_visibility().await;
    }

    async fn extend_visibility(&mut self) {
        let vt = self.queue.cfg.visibility_timeout;
        let now = Instant::now();
        let due: Vec<(String, String)> = self
            .held
            .iter()
            .filter(|(_, h)| h.visible_until.saturating_duration_since(now) < vt / 2)
            .map(|(id, h)| (id.clone(), h.receipt.clone()))
            .collect();
        for chunk in due.chunks(BATCH_ENTRIES) {
            let entries: Result<Vec<_>, _> = chunk
                .iter()
                .enumerate()
                .map(|(i, (_, receipt))| {
                    ChangeMessageVisibilityBatchRequestEntry::builder()
                        .id(format!("v{i}"))
                        .receipt_handle(receipt)
                        .visibility_timeout(vt.as_secs() as i32)
                        .build()
                })
                .collect();
            let Ok(entries) = entries else { continue };
            let sent = Instant::now();
            let out = self
                .queue
                .client
                .change_message_visibility_batch()
                .queue_url(&self.queue.cfg.queue_url)
                .set_entries(Some(entries))
                .send()
                .await;
            // A failed extension only risks a redelivery, which the reader de-duplicates.
            let out = match out {
                Ok(o) => o,
                Err(e) => {
                    let e = SqsError::sdk("ChangeMessageVisibilityBatch")(e);
                    tracing::warn!("SQS visibility extension failed: {e}");
                    continue;
                }
            };
            for (i, (id, _)) in chunk.iter().enumerate() {
                let failed = out.failed().iter().any(|f| f.id() == format!("v{i}"));
                if let (false, Some(h)) = (failed, self.held.get_mut(id)) {
                    h.visible_until = sent + vt;
                    self.stats.extended += 1;
                }
            }
        }
    }

    /// Makes released messages visible again so they come back later.
    async fn flush_releases(&mut self) {
        let release = std::mem::take(&mut self.release);
        for chunk in release.chunks(BATCH_ENTRIES) {
            let entries: Result<Vec<_>, _> = chunk
                .iter()
                .enumerate()
                .map(|(i, receipt)| {
                    ChangeMessageVisibilityBatchRequestEntry::builder()
                        .id(format!("r{i}"))
                        .receipt_handle(receipt)
                        .visibility_timeout(0)
                        .build()
                })
                .collect();
            let Ok(entries) = entries else { continue };
            // If this fails the message simply returns when its visibility timeout ends.
            let _ = self
                .queue
                .client
                .change_message_visibility_batch()
                .queue_url(&self.queue.cfg.queue_url)
                .set_entries(Some(entries))
                .send()
                .await;
        }
    }

    async fn receive(&mut self) -> Result<(), SqsError> {
        let cfg = &self.queue.cfg;
        let vt = cfg.visibility_timeout;
        self.stats.receive_calls += 1;
        let out = self
            .queue
            .client
            .receive_message()
            .queue_url(&cfg.queue_url)
            .max_number_of_messages(BATCH_ENTRIES as i32)
            .wait_time_seconds(cfg.wait.as_secs() as i32)
            .visibility_timeout(vt.as_secs() as i32)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_attribute_names(BLOB_ATTRIBUTE)
            .send()
            .await
            .map_err(SqsError::sdk("ReceiveMessage"))?;
        let received = Instant::now();
        for m in out.messages() {
            self.accept(m, received + vt);
        }
        Ok(())
    }

    /// Sorts one received message into yield, duplicate or early.
    fn accept(&mut self, m: &Message, visible_until: Instant) {
        self.stats.messages += 1;
        let message_id = m.message_id().unwrap_or_default().to_string();
        let receive_count: u32 = m
            .attributes()
            .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
            .and_then(|v| v.parse().ok())
            .unwrap_or(1);
        let decoded = decode(m);
        let (header, entries) = match decoded {
            Ok(d) => d,
            Err(reason) => {
                self.stats.malformed += 1;
                tracing::warn!(%message_id, %reason, "SQS message is not a ferry journal message");
                self.events.push_back(SqsEvent::Malformed {
                    message_id,
                    receive_count,
                    reason: reason.to_string(),
                });
                return;
            }
        };
        let redelivered = receive_count > 1;
        if redelivered {
            self.stats.redelivered += 1;
        }
        if let Some(receipt) = m.receipt_handle() {
            self.held.insert(
                message_id.clone(),
                Held {
                    group: header.group,
                    end_gseq: header.end_gseq(),
                    receipt: receipt.to_string(),
                    visible_until,
                },
            );
        }
        let early = Early {
            header,
            entries,
            redelivered,
            message_id,
        };
        if self.queue.cfg.is_fifo() {
            // Readers in several processes share a FIFO queue, and a group may reach one of
            // them out of order (a stalled holder's message comes back late; moto hands out a
            // group's next message while the previous one is in flight). Only the caller knows
            // what the target applied (the shard's lease and its progress), so it gets every
            // message whole and decides: apply, skip as applied, or hand back.
            self.stats.entries_yielded += early.entries.len() as u64;
            self.events.push_back(SqsEvent::Batch(SqsBatch {
                group: header.group,
                first_gseq: header.first_gseq,
                entries: early.entries,
                redelivered,
                message_id: early.message_id,
            }));
            return;
        }
        let g = self.groups.entry(header.group).or_default();
        if header.end_gseq() <= g.next {
            self.stats.duplicates += 1;
        } else if header.first_gseq <= g.next {
            self.yield_early(early);
            self.drain(header.group);
        } else {
            match g.early.get(&header.first_gseq) {
                Some(have) if have.header.end_gseq() >= header.end_gseq() => {
                    self.stats.duplicates += 1;
                }
                _ => {
                    if g.early.insert(header.first_gseq, early).is_none() {
                        self.early_count += 1;
                    }
                    g.waiting_since.get_or_insert_with(Instant::now);
                    if self.early_count > self.queue.cfg.reorder_messages {
                        self.release_newest(header.group);
                    }
                }
            }
        }
    }

    /// Hands the latest early message of `group` back to the queue to bound memory.
    fn release_newest(&mut self, group: u32) {
        let Some(g) = self.groups.get_mut(&group) else {
            return;
        };
        let Some((_, e)) = g.early.pop_last() else {
            return;
        };
        self.early_count -= 1;
        if g.early.is_empty() {
            g.waiting_since = None;
        }
        if let Some(h) = self.held.remove(&e.message_id) {
            self.release.push(h.receipt);
        }
        self.stats.released += 1;
    }

    /// Queues the part of `e` at or after its group's next gseq as a batch.
    fn yield_early(&mut self, e: Early) {
        let g = self.groups.entry(e.header.group).or_default();
        let skip = (g.next - e.header.first_gseq) as usize;
        let entries: Vec<Entry> = e.entries.into_iter().skip(skip).collect();
        g.next = e.header.end_gseq();
        self.stats.entries_yielded += entries.len() as u64;
        self.events.push_back(SqsEvent::Batch(SqsBatch {
            group: e.header.group,
            first_gseq: e.header.end_gseq() - entries.len() as u64,
            entries,
            redelivered: e.redelivered,
            message_id: e.message_id,
        }));
    }

    /// Yields early messages of `group` that have become next.
    fn drain(&mut self, group: u32) {
        loop {
            let Some(g) = self.groups.get_mut(&group) else {
                return;
            };
            let Some(entry) = g.early.first_entry() else {
                g.waiting_since = None;
                return;
            };
            if *entry.key() > g.next {
                // Progress was made, so the wait for the next hole starts now.
                g.waiting_since = Some(Instant::now());
                return;
            }
            let e = entry.remove();
            self.early_count -= 1;
            if e.header.end_gseq() <= g.next {
                self.stats.duplicates += 1;
            } else {
                self.yield_early(e);
            }
        }
    }

    /// Gives up waiting on holes older than the gap wait.
    fn check_gaps(&mut self) {
        let wait = self.queue.cfg.gap_wait;
        let stuck: Vec<u32> = self
            .groups
            .iter()
            .filter(|(_, g)| g.waiting_since.is_some_and(|t| t.elapsed() >= wait))
            .map(|(&id, _)| id)
            .collect();
        for group in stuck {
            let Some(g) = self.groups.get_mut(&group) else {
                continue;
            };
            let Some(&got) = g.early.keys().next() else {
                g.waiting_since = None;
                continue;
            };
            let expected = g.next;
            g.next = got;
            self.stats.gaps += 1;
            tracing::warn!(group, expected, got, "SQS journal: gap in a group's gseqs");
            self.events.push_back(SqsEvent::Gap {
                group,
                expected_gseq: expected,
                got_gseq: got,
            });
            self.drain(group);
        }
    }
}

/// The header and entries of a message: from the binary attribute, else from a base64 body.
fn decode(m: &Message) -> Result<(MessageHeader, Vec<Entry>), &'static str> {
    let attr = m
        .message_attributes()
        .and_then(|a| a.get(BLOB_ATTRIBUTE))
        .and_then(|v| v.binary_value());
    match attr {
        Some(blob) => message::decode_blob(blob.as_ref()),
        None => {
            let body = m.body().ok_or("message has no body")?;
            message::decode_blob(&message::base64_decode(body)?)
        }
    }
}
