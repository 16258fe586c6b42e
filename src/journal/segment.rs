//! Segment files: their names, listing them, reading their records through one buffer, and
//! validating them when a journal is opened.

use std::fs::File;
use std::io::{self, Read};
use std::ops::Range;
use std::path::{Path, PathBuf};

use super::JournalError;
use super::codec::{self, HEADER};

const SUFFIX: &str = ".seg";

/// Read buffer; a larger record grows it for as long as it is needed.
const BUF_BYTES: usize = 256 << 10;

/// `00000000000000000042.seg`: zero-padded so that names sort like the seqs they start at.
pub(super) fn file_name(first_seq: u64) -> String {
    format!("{first_seq:020}{SUFFIX}")
}

pub(super) fn path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(file_name(first_seq))
}

pub(super) fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> JournalError {
    let path = path.to_path_buf();
    move |source| JournalError::Io { op, path, source }
}

/// The segments in `dir` by first seq, ascending. Files not ending in `.seg` are not ours; a
/// `.seg` file with another name is refused rather than silently skipped, since skipping it
/// could hide entries.
pub(super) fn list(dir: &Path) -> Result<Vec<u64>, JournalError> {
    let mut firsts = Vec::new();
    for item in std::fs::read_dir(dir).map_err(io_err("listing", dir))? {
        let item = item.map_err(io_err("listing", dir))?;
        let name = item.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(stem) = name.strip_suffix(SUFFIX) else {
            continue;
        };
        match stem.parse::<u64>() {
            Ok(first) if stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()) => {
                firsts.push(first)
            }
            _ => {
                return Err(JournalError::Corrupt {
                    path: item.path(),
                    offset: 0,
                    reason: "not a segment name (20 digits then .seg)".into(),
                });
            }
        }
    }
    firsts.sort_unstable();
    Ok(firsts)
}

/// What the next bytes of a segment hold.
pub(super) enum Next {
    /// A whole record whose checksum matches; the payload is [`RecordReader::payload`].
    Record { offset: u64, payload: Range<usize> },
    /// The file ends exactly at a record boundary.
    End,
    /// The file ends inside a record, or the record's checksum does not match.
    Torn { offset: u64, reason: &'static str },
}

/// Sequential record reads of one segment through a buffer of its own. The file may still be
/// growing: a read that finds a partial record keeps the bytes it has and resumes there.
pub(super) struct RecordReader {
    file: File,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// File offset of `buf[start]`.
    offset: u64,
}

impl RecordReader {
    pub(super) fn new(file: File) -> Self {
        RecordReader {
            file,
            buf: vec![0; BUF_BYTES],
            start: 0,
            end: 0,
            offset: 0,
        }
    }

    /// The payload of the record [`RecordReader::next`] just returned.
    pub(super) fn payload(&self, range: Range<usize>) -> &[u8] {
        &self.buf[range]
    }

    /// File offset of the next record.
    pub(super) fn offset(&self) -> u64 {
        self.offset
    }

    pub(super) fn next(&mut self) -> io::Result<Next> {
        if !self.fill(HEADER)? {
            return Ok(if self.start == self.end {
                Next::End
            } else {
                Next::Torn {
                    offset: self.offset,
                    reason: "the file ends inside a record header",
                }
            });
        }
        let Some((len, crc)) = codec::parse_header(&self.buf[self.start..self.end]) else {
            return Ok(Next::Torn {
                offset: self.offset,
                reason: "the file ends inside a record header",
            });
        };
        let total = HEADER + len as usize;
        if !self.fill(total)? {
            return Ok(Next::Torn {
                offset: self.offset,
                reason: "the file ends inside a record",
            });
        }
        let payload = self.start + HEADER..self.start + total;
        if crc32fast::hash(&self.buf[payload.clone()]) != crc {
            return Ok(Next::Torn {
                offset: self.offset,
                reason: "record checksum mismatch",
            });
        }
        let offset = self.offset;
        self.start += total;
        self.offset += total as u64;
        Ok(Next::Record { offset, payload })
    }

    /// Makes `need` bytes available from `start`; false when the file ends first.
    fn fill(&mut self, need: usize) -> io::Result<bool> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            // A huge record is over; give its buffer back.
            if self.buf.len() > 4 * BUF_BYTES && need <= BUF_BYTES {
                self.buf = vec![0; BUF_BYTES];
            }
        }
        while self.end - self.start < need {
            if self.start + need > self.buf.len() {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if need > self.buf.len() {
                // A corrupt length must not make us allocate gigabytes for a short file.
                let file_len = self.file.metadata()?.len();
                if self.offset + need as u64 > file_len {
                    return Ok(false);
                }
                self.buf.resize(need, 0);
            }
            match self.file.read(&mut self.buf[self.end..]) {
                Ok(0) => return Ok(false),
                Ok(n) => self.end += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }
}

/// A segment as found when opening the journal.
pub(super) struct Scanned {
    /// Bytes up to the end of the last valid record.
    pub(super) valid_len: u64,
    /// The seq after the last valid record (the segment's first seq if it has none).
    pub(super) next_seq: u64,
    /// Where and why validation stopped before the end of the file.
    pub(super) problem: Option<(u64, String)>,
}

/// Validates every record of a segment: checksum, decoding, and seqs dense from `first_seq`.
pub(super) fn scan(path: &Path, first_seq: u64) -> Result<Scanned, JournalError> {
    let file = File::open(path).map_err(io_err("opening", path))?;
    let mut rr = RecordReader::new(file);
    let mut next_seq = first_seq;
    let problem = loop {
        match rr.next().map_err(io_err("reading", path))? {
            Next::End => break None,
            Next::Torn { offset, reason } => break Some((offset, reason.to_string())),
            Next::Record { offset, payload } => match codec::decode(rr.payload(payload)) {
                Err(e) => break Some((offset, format!("undecodable entry: {}", e.0))),
                Ok(entry) if entry.seq != next_seq => {
                    break Some((
                        offset,
                        format!("entry has seq {} where {next_seq} was expected", entry.seq),
                    ));
                }
                Ok(_) => next_seq += 1,
            },
        }
    };
    let valid_len = match &problem {
        Some((offset, _)) => *offset,
        None => rr.offset(),
    };
    Ok(Scanned {
        valid_len,
        next_seq,
        problem,
    })
}
