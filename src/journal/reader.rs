//! The read side: a cursor over the segment files from an absolute seq, across segment
//! boundaries, that waits for appends without ever holding up the writer.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::codec;
use super::segment::{self, Next, RecordReader, io_err};
use super::{Entry, JournalError, Shared};

/// Reads entries in seq order from the files. Obtain one with [`super::Journal::reader`].
pub struct JournalReader {
    shared: Arc<Shared>,
    seg: Option<OpenSegment>,
    /// The seq the next returned entry has.
    next: u64,
}

struct OpenSegment {
    first: u64,
    path: PathBuf,
    records: RecordReader,
}

impl JournalReader {
    pub(super) fn open(shared: Arc<Shared>, from_seq: u64) -> Result<JournalReader, JournalError> {
        let committed = shared.committed.load(Ordering::Acquire);
        if from_seq > committed {
            return Err(JournalError::PastEnd {
                seq: from_seq,
                next: committed,
            });
        }
        let seg = open_segment(&shared, from_seq, false)?;
        Ok(JournalReader {
            shared,
            seg: Some(seg),
            next: from_seq,
        })
    }

    /// The seq of the entry the next read returns.
    pub fn position(&self) -> u64 {
        self.next
    }

    /// The next entry, or `None` when the reader has caught up with the appends.
    pub fn try_next(&mut self) -> Result<Option<Entry>, JournalError> {
        // Loaded before reading: every record below it is whole in the files.
        let committed = self.shared.committed.load(Ordering::Acquire);
        if self.next >= committed {
            return Ok(None);
        }
        loop {
            let seg = match &mut self.seg {
                Some(seg) => seg,
                None => self
                    .seg
                    .insert(open_segment(&self.shared, self.next, true)?),
            };
            let corrupt = |offset: u64, reason: String| JournalError::Corrupt {
                path: seg.path.clone(),
                offset,
                reason,
            };
            match seg.records.next().map_err(io_err("reading", &seg.path))? {
                Next::Record { offset, payload } => {
                    let payload = seg.records.payload(payload);
                    let seq = codec::peek_seq(payload)
                        .map_err(|e| corrupt(offset, format!("undecodable entry: {}", e.0)))?;
                    if seq < self.next {
                        continue;
                    }
                    if seq > self.next {
                        return Err(corrupt(
                            offset,
                            format!("entry has seq {seq} where {} was expected", self.next),
                        ));
                    }
                    let entry = codec::decode(payload)
                        .map_err(|e| corrupt(offset, format!("undecodable entry: {}", e.0)))?;
                    self.next += 1;
                    return Ok(Some(entry));
                }
                Next::End => {
                    if seg.first >= self.next {
                        return Err(corrupt(
                            seg.records.offset(),
                            format!("segment ends before seq {}", self.next),
                        ));
                    }
                    // The entry is committed but not here, so a later segment starts with it.
                    self.seg = None;
                }
                Next::Torn { offset, reason } => return Err(corrupt(offset, reason.into())),
            }
        }
    }

    /// The next entry, waiting for it to be appended. Cancel-safe: dropping the future loses
    /// nothing. Fails with [`JournalError::Closed`] once the journal is dropped and read to the end.
    ///
    /// The file reads are synchronous; they are buffered and usually served from the page cache.
    pub async fn next(&mut self) -> Result<Entry, JournalError> {
        let shared = Arc::clone(&self.shared);
        loop {
            let notified = shared.notify.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before looking, so an append between the look and the wait still wakes us.
            notified.as_mut().enable();
            if let Some(entry) = self.try_next()? {
                return Ok(entry);
            }
            if shared.closed.load(Ordering::Acquire) {
                return Err(JournalError::Closed);
            }
            notified.await;
        }
    }
}

impl std::fmt::Debug for JournalReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JournalReader")
            .field("next", &self.next)
            .field("segment", &self.seg.as_ref().map(|s| &s.path))
            .finish_non_exhaustive()
    }
}

/// Opens the segment holding `seq` (`exact`: the one starting at `seq`).
fn open_segment(shared: &Shared, seq: u64, exact: bool) -> Result<OpenSegment, JournalError> {
    // Held while opening, so that retention cannot delete the file in between.
    let segments = shared.segments();
    let found = if exact {
        segments.get(&seq).copied()
    } else {
        segments.range(..=seq).next_back().copied()
    };
    let oldest = segments.first().copied().unwrap_or(seq);
    let Some(first) = found else {
        if seq < oldest {
            return Err(JournalError::Removed { seq, oldest });
        }
        return Err(JournalError::Corrupt {
            path: segment::path(&shared.dir, seq),
            offset: 0,
            reason: format!("no segment starts at seq {seq}, which is committed"),
        });
    };
    let path = segment::path(&shared.dir, first);
    let file = std::fs::File::open(&path).map_err(io_err("opening", &path))?;
    drop(segments);
    Ok(OpenSegment {
        first,
        path,
        records: RecordReader::new(file),
    })
}
