//! The journal's bytes: record framing (`[u32 len][u32 crc32][payload]`, little-endian) and the
//! hand-written binary form of an [`Entry`] that fills the payload.
//!
//! Payload layout: `varint seq, varint ts_us, u8 tag`, then the variant's fields in declaration
//! order. Integers are LEB128 varints (`expire_at_ms` zigzagged), byte strings and text are a
//! varint length then the bytes, an argv is a varint count then its arguments, an `Option` is a
//! `0`/`1` byte then the value. Every length is checked against what is left, so no input makes
//! the decoder allocate more than the payload's size or panic.

use super::{Entry, EntryKind, Marker};
use crate::command::Argv;

/// Bytes before each payload: length, then CRC-32 of the payload.
pub(super) const HEADER: usize = 8;

/// The largest payload the `u32` length can describe.
pub(super) const MAX_PAYLOAD: u64 = u32::MAX as u64;

const TAG_WRITE: u8 = 1;
const TAG_ATOMIC: u8 = 2;
const TAG_KEY_FENCE: u8 = 3;
const TAG_PAYLOAD: u8 = 4;
const TAG_MARKER: u8 = 5;
const TAG_GAP: u8 = 6;

/// Why a payload does not decode; the caller adds the file and offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct DecodeError(pub(super) &'static str);

/// Splits a record header into `(payload length, crc32)`.
pub(super) fn parse_header(h: &[u8]) -> Option<(u32, u32)> {
    let len = u32::from_le_bytes(h.get(0..4)?.try_into().ok()?);
    let crc = u32::from_le_bytes(h.get(4..8)?.try_into().ok()?);
    Some((len, crc))
}

/// An upper bound of the payload size, so that a batch with an oversized entry is refused before
/// any of it is written.
pub(super) fn payload_bound(kind: &EntryKind) -> u64 {
    const INT: u64 = 10;
    let argv = |a: &Argv| INT + a.byte_len() as u64 + INT * a.len() as u64;
    let fixed = 3 * INT + 1;
    fixed
        + match kind {
            EntryKind::Write { argv: a, .. } => INT + argv(a),
            EntryKind::Atomic(items) => INT + items.iter().map(|(_, a)| INT + argv(a)).sum::<u64>(),
            EntryKind::KeyFence { key, read_id, .. } => {
                4 * INT + key.len() as u64 + read_id.len() as u64
            }
            EntryKind::Payload {
                read_id,
                key,
                payload,
                ..
            } => {
                8 * INT
                    + read_id.len() as u64
                    + key.len() as u64
                    + payload.as_ref().map_or(0, |p| p.len() as u64)
            }
            EntryKind::Marker(m) => INT + m.id().len() as u64,
            EntryKind::Gap { reason } => INT + reason.len() as u64,
        }
}

/// Appends one framed record to `out`. The caller has checked [`payload_bound`].
pub(super) fn put_record(out: &mut Vec<u8>, seq: u64, ts_us: u64, kind: &EntryKind) {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER]);
    encode_payload(out, seq, ts_us, kind);
    let payload = &out[start + HEADER..];
    // Within u32 by the caller's bound check.
    let len = payload.len() as u32;
    let crc = crc32fast::hash(payload);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + HEADER].copy_from_slice(&crc.to_le_bytes());
}

/// Encodes an entry's payload (no framing).
pub(super) fn encode_payload(out: &mut Vec<u8>, seq: u64, ts_us: u64, kind: &EntryKind) {
    put_varint(out, seq);
    put_varint(out, ts_us);
    match kind {
        EntryKind::Write { db, argv } => {
            out.push(TAG_WRITE);
            put_varint(out, u64::from(*db));
            put_argv(out, argv);
        }
        EntryKind::Atomic(items) => {
            out.push(TAG_ATOMIC);
            put_varint(out, items.len() as u64);
            for (db, argv) in items {
                put_varint(out, u64::from(*db));
                put_argv(out, argv);
            }
        }
        EntryKind::KeyFence {
            db,
            key,
            read_id,
            ordinal,
        } => {
            out.push(TAG_KEY_FENCE);
            put_varint(out, u64::from(*db));
            put_bytes(out, key);
            put_bytes(out, read_id.as_bytes());
            put_varint(out, *ordinal);
        }
        EntryKind::Payload {
            read_id,
            ordinal,
            db,
            key,
            payload,
            expire_at_ms,
        } => {
            out.push(TAG_PAYLOAD);
            put_bytes(out, read_id.as_bytes());
            put_varint(out, *ordinal);
            put_varint(out, u64::from(*db));
            put_bytes(out, key);
            match payload {
                Some(p) => {
                    out.push(1);
                    put_bytes(out, p);
                }
                None => out.push(0),
            }
            match expire_at_ms {
                Some(ms) => {
                    out.push(1);
                    put_varint(out, zigzag(*ms));
                }
                None => out.push(0),
            }
        }
        EntryKind::Marker(m) => {
            out.push(TAG_MARKER);
            put_bytes(out, m.id().as_bytes());
        }
        EntryKind::Gap { reason } => {
            out.push(TAG_GAP);
            put_bytes(out, reason.as_bytes());
        }
    }
}

/// The seq of a payload without decoding the rest, for readers skipping to a position.
pub(super) fn peek_seq(payload: &[u8]) -> Result<u64, DecodeError> {
    Dec::new(payload).varint()
}

/// Decodes a whole payload; trailing bytes are an error.
pub(super) fn decode(payload: &[u8]) -> Result<Entry, DecodeError> {
    let mut d = Dec::new(payload);
    let seq = d.varint()?;
    let ts_us = d.varint()?;
    let kind = match d.u8()? {
        TAG_WRITE => {
            let db = d.u32()?;
            // The argv is the last field, so what is left bounds its bytes.
            let argv = d.argv(d.remaining())?;
            EntryKind::Write { db, argv }
        }
        TAG_ATOMIC => {
            let n = d.count(2)?;
            let mut items = Vec::with_capacity(n);
            for _ in 0..n {
                let db = d.u32()?;
                items.push((db, d.argv(0)?));
            }
            EntryKind::Atomic(items)
        }
        TAG_KEY_FENCE => EntryKind::KeyFence {
            db: d.u32()?,
            key: d.bytes()?.to_vec(),
            read_id: d.text()?,
            ordinal: d.varint()?,
        },
        TAG_PAYLOAD => EntryKind::Payload {
            read_id: d.text()?,
            ordinal: d.varint()?,
            db: d.u32()?,
            key: d.bytes()?.to_vec(),
            payload: if d.flag()? {
                Some(d.bytes()?.to_vec())
            } else {
                None
            },
            expire_at_ms: if d.flag()? {
                Some(unzigzag(d.varint()?))
            } else {
                None
            },
        },
        TAG_MARKER => EntryKind::Marker(Marker::parse(&d.text()?)),
        TAG_GAP => EntryKind::Gap { reason: d.text()? },
        _ => return Err(DecodeError("unknown entry tag")),
    };
    if d.remaining() != 0 {
        return Err(DecodeError("trailing bytes after the entry"));
    }
    Ok(Entry { seq, ts_us, kind })
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn put_argv(out: &mut Vec<u8>, argv: &Argv) {
    put_varint(out, argv.len() as u64);
    for a in argv.iter() {
        put_bytes(out, a);
    }
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

struct Dec<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Dec<'a> {
    fn new(b: &'a [u8]) -> Self {
        Dec { b, pos: 0 }
    }

    fn remaining(&self) -> usize {
        self.b.len() - self.pos
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        let v = *self
            .b
            .get(self.pos)
            .ok_or(DecodeError("entry ends early"))?;
        self.pos += 1;
        Ok(v)
    }

    fn flag(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError("bad option flag")),
        }
    }

    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut v = 0u64;
        for i in 0..10 {
            let byte = self.u8()?;
            // The tenth byte holds only the top bit of a u64.
            if i == 9 && byte > 1 {
                return Err(DecodeError("varint overflows u64"));
            }
            v |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(DecodeError("varint overflows u64"))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        u32::try_from(self.varint()?).map_err(|_| DecodeError("db number overflows u32"))
    }

    /// A count of items that each take at least `min_bytes`, so a corrupt count cannot make the
    /// decoder reserve more than the payload's size.
    fn count(&mut self, min_bytes: usize) -> Result<usize, DecodeError> {
        let n = self.varint()?;
        if n > (self.remaining() / min_bytes.max(1)) as u64 {
            return Err(DecodeError("count exceeds the entry's size"));
        }
        Ok(n as usize)
    }

    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.varint()?;
        if n > self.remaining() as u64 {
            return Err(DecodeError("length exceeds the entry's size"));
        }
        let s = &self.b[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn text(&mut self) -> Result<String, DecodeError> {
        let b = self.bytes()?;
        String::from_utf8(b.to_vec()).map_err(|_| DecodeError("text is not UTF-8"))
    }

    fn argv(&mut self, reserve: usize) -> Result<Argv, DecodeError> {
        let n = self.count(1)?;
        let mut argv = Argv::new();
        argv.buf_mut().reserve(reserve);
        for _ in 0..n {
            let a = self.bytes()?;
            argv.buf_mut().extend_from_slice(a);
            argv.finish_arg();
        }
        Ok(argv)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_kind() -> Vec<EntryKind> {
        let all_bytes: Vec<u8> = (0..=255u8).collect();
        vec![
            EntryKind::Write {
                db: 0,
                argv: Argv::from_args([b"SET".as_slice(), &all_bytes, b"", b"\r\n\0"]),
            },
            EntryKind::Write {
                db: u32::MAX,
                argv: Argv::new(),
            },
            EntryKind::Atomic(vec![]),
            EntryKind::Atomic(vec![
                (3, Argv::from_args(["INCR", "k"])),
                (15, Argv::from_args([b"DEL".as_slice(), &all_bytes])),
            ]),
            EntryKind::KeyFence {
                db: 7,
                key: all_bytes.clone(),
                read_id: "127.0.0.1:6379".into(),
                ordinal: u64::MAX,
            },
            EntryKind::Payload {
                read_id: "[::1]:50000".into(),
                ordinal: 0,
                db: 1,
                key: b"k".to_vec(),
                payload: Some(all_bytes.clone()),
                expire_at_ms: Some(i64::MIN),
            },
            EntryKind::Payload {
                read_id: String::new(),
                ordinal: 42,
                db: 0,
                key: vec![],
                payload: None,
                expire_at_ms: None,
            },
            EntryKind::Payload {
                read_id: "a".into(),
                ordinal: 1,
                db: 2,
                key: vec![0],
                payload: Some(vec![]),
                expire_at_ms: Some(-1),
            },
            EntryKind::Marker(Marker::Position("ferry-final-é".into())),
            EntryKind::Marker(Marker::Dirty {
                db: 9,
                key: b"\x00k".to_vec(),
            }),
            EntryKind::Gap {
                reason: "MONITOR connection lost".into(),
            },
        ]
    }

    #[test]
    fn every_kind_round_trips() {
        for (i, kind) in every_kind().into_iter().enumerate() {
            let mut out = Vec::new();
            let seq = [0, 1, 127, 128, u64::MAX][i % 5];
            encode_payload(&mut out, seq, i as u64 * 1_000_003, &kind);
            assert!(out.len() as u64 <= payload_bound(&kind), "{kind:?}");
            let entry = decode(&out).unwrap();
            assert_eq!(peek_seq(&out).unwrap(), seq);
            assert_eq!(
                entry,
                Entry {
                    seq,
                    ts_us: i as u64 * 1_000_003,
                    kind
                }
            );
        }
    }

    #[test]
    fn framing_carries_length_and_crc() {
        let kind = EntryKind::Marker(Marker::Position("m".into()));
        let mut out = vec![9, 9];
        put_record(&mut out, 5, 6, &kind);
        let (len, crc) = parse_header(&out[2..]).unwrap();
        assert_eq!(len as usize, out.len() - 2 - HEADER);
        assert_eq!(crc, crc32fast::hash(&out[2 + HEADER..]));
        assert_eq!(decode(&out[2 + HEADER..]).unwrap().kind, kind);
    }

    #[test]
    fn zigzag_round_trips() {
        for v in [0, 1, -1, i64::MAX, i64::MIN, 1_700_000_000_000] {
            assert_eq!(unzigzag(zigzag(v)), v);
        }
    }

    #[test]
    fn bad_payloads_are_errors_not_panics() {
        let mut out = Vec::new();
        for kind in every_kind() {
            out.clear();
            encode_payload(&mut out, 1, 2, &kind);
            for cut in 0..out.len() {
                assert!(decode(&out[..cut]).is_err(), "{kind:?} cut at {cut}");
            }
            let mut long = out.clone();
            long.push(0);
            assert!(decode(&long).is_err());
        }
        assert!(decode(&[0, 0, 99]).is_err());
        assert!(decode(&[0xff; 11]).is_err());
        // A huge count must fail without allocating it.
        let mut huge = vec![0, 0, TAG_ATOMIC];
        put_varint(&mut huge, u64::MAX);
        assert!(decode(&huge).is_err());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let _ = decode(&bytes);
            let _ = peek_seq(&bytes);
        }
    }
}
