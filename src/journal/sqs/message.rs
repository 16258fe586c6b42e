//! The bytes of one SQS message: a packed run of a group's journal entries (the "blob"), its
//! header, and the base64 form used when the blob travels in the message body.
//!
//! Blob layout (integers are LEB128 varints, as in `codec.rs`):
//! `b"FRYQ" u8 version, group, first_gseq, count, first_seq, last_seq`, then `count` times
//! `len, payload` (payload = the journal codec's entry payload), then a little-endian CRC-32 of
//! everything before it. Decoding checks every length against what is left and the CRC, so no
//! input makes it allocate more than the blob's size or panic.

use super::super::codec;
use crate::journal::Entry;

const MAGIC: &[u8; 4] = b"FRYQ";
/// Bumped on any incompatible layout change; readers refuse versions they do not know.
pub(super) const VERSION: u8 = 1;
/// The most a header can take: magic, version, five varints of up to 10 bytes.
pub(super) const HEADER_MAX: usize = 4 + 1 + 5 * 10;
const CRC_LEN: usize = 4;

/// What a message says about itself: which group, which gseqs and which global seqs it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageHeader {
    pub version: u8,
    pub group: u32,
    pub first_gseq: u64,
    pub count: u64,
    pub first_seq: u64,
    pub last_seq: u64,
}

impl MessageHeader {
    /// One past the last gseq in the message.
    pub fn end_gseq(&self) -> u64 {
        self.first_gseq.saturating_add(self.count)
    }
}

/// A message being filled: the encoded records of consecutive gseqs of one group.
#[derive(Debug)]
pub(super) struct Packer {
    pub group: u32,
    pub first_gseq: u64,
    pub count: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    /// `len, payload` records, without the header (written once the counts are final).
    records: Vec<u8>,
}

impl Packer {
    pub fn new(group: u32, first_gseq: u64) -> Self {
        Packer {
            group,
            first_gseq,
            count: 0,
            first_seq: 0,
            last_seq: 0,
            records: Vec::new(),
        }
    }

    /// Size of the finished blob if nothing more is added (upper bound: the header is counted at
    /// its largest).
    pub fn blob_len(&self) -> usize {
        HEADER_MAX + self.records.len() + CRC_LEN
    }

    /// Size of one entry's record (for deciding whether it still fits).
    pub fn record_len(payload: &[u8]) -> usize {
        varint_len(payload.len() as u64) + payload.len()
    }

    pub fn push(&mut self, seq: u64, payload: &[u8]) {
        if self.count == 0 {
            self.first_seq = seq;
        }
        self.last_seq = seq;
        self.count += 1;
        put_varint(&mut self.records, payload.len() as u64);
        self.records.extend_from_slice(payload);
    }

    pub fn header(&self) -> MessageHeader {
        MessageHeader {
            version: VERSION,
            group: self.group,
            first_gseq: self.first_gseq,
            count: self.count,
            first_seq: self.first_seq,
            last_seq: self.last_seq,
        }
    }

    /// The finished blob.
    pub fn finish(self) -> (MessageHeader, Vec<u8>) {
        let header = self.header();
        let mut out = Vec::with_capacity(self.blob_len());
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        put_varint(&mut out, u64::from(header.group));
        put_varint(&mut out, header.first_gseq);
        put_varint(&mut out, header.count);
        put_varint(&mut out, header.first_seq);
        put_varint(&mut out, header.last_seq);
        out.extend_from_slice(&self.records);
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        (header, out)
    }
}

/// Decodes a blob into its header and entries.
pub(super) fn decode_blob(blob: &[u8]) -> Result<(MessageHeader, Vec<Entry>), &'static str> {
    if blob.len() < MAGIC.len() + 1 + CRC_LEN || &blob[..4] != MAGIC {
        return Err("not a ferry journal message (bad magic)");
    }
    let (body, crc) = blob.split_at(blob.len() - CRC_LEN);
    let crc = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    if crc32fast::hash(body) != crc {
        return Err("CRC mismatch");
    }
    let version = body[4];
    if version != VERSION {
        return Err("unknown message format version");
    }
    let mut pos = 5;
    let mut next = || varint(body, &mut pos);
    let group = u32::try_from(next()?).map_err(|_| "group overflows u32")?;
    let first_gseq = next()?;
    let count = next()?;
    let first_seq = next()?;
    let last_seq = next()?;
    let header = MessageHeader {
        version,
        group,
        first_gseq,
        count,
        first_seq,
        last_seq,
    };
    // Every record takes at least one byte, so a corrupt count cannot reserve much.
    if count > (body.len() - pos) as u64 {
        return Err("count exceeds the message's size");
    }
    let mut entries = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let len = varint(body, &mut pos)?;
        if len > (body.len() - pos) as u64 {
            return Err("record length exceeds the message's size");
        }
        let payload = &body[pos..pos + len as usize];
        pos += len as usize;
        entries.push(codec::decode(payload).map_err(|e| e.0)?);
    }
    if pos != body.len() {
        return Err("trailing bytes after the last record");
    }
    Ok((header, entries))
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

fn varint(b: &[u8], pos: &mut usize) -> Result<u64, &'static str> {
    let mut v = 0u64;
    for i in 0..10 {
        let byte = *b.get(*pos).ok_or("message ends early")?;
        *pos += 1;
        if i == 9 && byte > 1 {
            return Err("varint overflows u64");
        }
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("varint overflows u64")
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding: SQS bodies must be XML characters, and raw records are not.
pub(super) fn base64_encode(b: &[u8]) -> String {
    let mut out = String::with_capacity(b.len().div_ceil(3) * 4);
    for chunk in b.chunks(3) {
        let n = match *chunk {
            [a, b, c] => u32::from_be_bytes([0, a, b, c]),
            [a, b] => u32::from_be_bytes([0, a, b, 0]),
            [a] => u32::from_be_bytes([0, a, 0, 0]),
            _ => 0,
        };
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The inverse of [`base64_encode`]; anything else is an error.
pub(super) fn base64_decode(s: &str) -> Result<Vec<u8>, &'static str> {
    let s = s.as_bytes();
    if !s.len().is_multiple_of(4) {
        return Err("base64 length is not a multiple of 4");
    }
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let chunks = s.len() / 4;
    for (i, chunk) in s.chunks(4).enumerate() {
        let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && i + 1 != chunks) {
            return Err("misplaced base64 padding");
        }
        let mut n = 0u32;
        for &c in &chunk[..4 - pad] {
            let v = match c {
                b'A'..=b'Z' => c - b'A',
                b'a'..=b'z' => c - b'a' + 26,
                b'0'..=b'9' => c - b'0' + 52,
                b'+' => 62,
                b'/' => 63,
                _ => return Err("invalid base64 character"),
            };
            n = n << 6 | u32::from(v);
        }
        n <<= 6 * pad as u32;
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..4 - pad]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Argv;
    use crate::journal::EntryKind;

    fn entry(seq: u64) -> Entry {
        Entry {
            seq,
            ts_us: seq * 10,
            kind: EntryKind::Write {
                db: 0,
                argv: Argv::from_args([b"SET".as_slice(), &seq.to_le_bytes(), b"\0\xff"]),
            },
        }
    }

    fn packed(group: u32, first_gseq: u64, seqs: &[u64]) -> (MessageHeader, Vec<u8>) {
        let mut p = Packer::new(group, first_gseq);
        let mut buf = Vec::new();
        for &s in seqs {
            let e = entry(s);
            buf.clear();
            codec::encode_payload(&mut buf, e.seq, e.ts_us, &e.kind);
            p.push(s, &buf);
        }
        assert!(p.blob_len() >= p.header().count as usize);
        let bound = p.blob_len();
        let (h, blob) = p.finish();
        assert!(blob.len() <= bound);
        (h, blob)
    }

    #[test]
    fn blob_round_trips() {
        let (h, blob) = packed(7, 1000, &[5, 9, 300]);
        let (h2, entries) = decode_blob(&blob).unwrap();
        assert_eq!(h, h2);
        assert_eq!(
            (h.first_seq, h.last_seq, h.count, h.end_gseq()),
            (5, 300, 3, 1003)
        );
        assert_eq!(entries, vec![entry(5), entry(9), entry(300)]);
    }

    #[test]
    fn bad_blobs_are_errors_not_panics() {
        let (_, blob) = packed(1, 0, &[1, 2]);
        for cut in 0..blob.len() {
            assert!(decode_blob(&blob[..cut]).is_err());
        }
        let mut flipped = blob.clone();
        flipped[10] ^= 1;
        assert!(decode_blob(&flipped).is_err());
    }

    #[test]
    fn base64_round_trips() {
        for len in 0..70usize {
            let data: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let s = base64_encode(&data);
            assert_eq!(s.len(), len.div_ceil(3) * 4);
            assert_eq!(base64_decode(&s).unwrap(), data);
        }
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        for bad in ["Zm8", "Zm=8", "Z===", "Zm8=Zm8=", "Zm8*"] {
            assert!(base64_decode(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn varint_len_matches_encoding() {
        for v in [0, 1, 127, 128, 16383, 16384, u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(out.len(), varint_len(v), "{v}");
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let _ = decode_blob(&bytes);
            let _ = base64_decode(&String::from_utf8_lossy(&bytes));
        }
    }
}
