//! The RDB file format as far as a backup writes it: Redis's CRC-64, length and string
//! encodings, the opcodes, and the split of a `DUMP` payload into type byte, body and trailer.
//!
//! A `DUMP` payload is `<type byte><object body><2-byte LE RDB version><8-byte LE CRC-64>`, and
//! the object body is byte for byte what an RDB file holds after the key, so a file is built
//! from payloads without decoding any value.

use std::io::{self, Write};

pub use crate::snapshot::rdb::{DUMP_TRAILER, crc64, put_len, put_string};

/// The RDB version Redis 6.x writes; used only when the source tells nothing newer.
pub const FALLBACK_RDB_VERSION: u16 = 9;

/// Opcodes, as in Redis `src/rdb.h`.
pub mod opcode {
    /// An auxiliary field: two strings.
    pub const AUX: u8 = 0xFA;
    /// Hash table size hints for the db that follows: two lengths.
    pub const RESIZEDB: u8 = 0xFB;
    /// The next key's absolute expiry, 8-byte little-endian unix ms.
    pub const EXPIRETIME_MS: u8 = 0xFC;
    /// The keys that follow belong to this db (a length).
    pub const SELECTDB: u8 = 0xFE;
    /// End of file; the CRC-64 of everything before it (and including it) follows.
    pub const EOF: u8 = 0xFF;
}

/// Why a `DUMP` payload cannot go into a file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PayloadError {
    /// Shorter than a type byte plus the trailer.
    #[error("payload of {0} bytes is too short")]
    TooShort(usize),
    /// The trailer's CRC-64 does not match the bytes.
    #[error("payload checksum {stored:#018x} does not match its bytes ({computed:#018x})")]
    Checksum { stored: u64, computed: u64 },
}

/// A `DUMP` payload taken apart (borrowed; nothing is copied).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Payload<'a> {
    /// The RDB object type (0 string, 18 quicklist, …).
    pub type_byte: u8,
    /// The object as the RDB file stores it.
    pub body: &'a [u8],
    /// The RDB version the payload was written with.
    pub version: u16,
    /// The stored CRC-64.
    pub crc: u64,
    whole: &'a [u8],
}

impl<'a> Payload<'a> {
    /// Splits a payload by its layout; the checksum is not checked here (see [`Self::verify`]).
    pub fn parse(p: &'a [u8]) -> Result<Payload<'a>, PayloadError> {
        if p.len() < 1 + DUMP_TRAILER {
            return Err(PayloadError::TooShort(p.len()));
        }
        let n = p.len();
        let version = u16::from_le_bytes([p[n - 10], p[n - 9]]);
        let mut crc = [0u8; 8];
        crc.copy_from_slice(&p[n - 8..]);
        Ok(Payload {
            type_byte: p[0],
            body: &p[1..n - DUMP_TRAILER],
            version,
            crc: u64::from_le_bytes(crc),
            whole: p,
        })
    }

    /// Checks the trailer's CRC-64, which covers everything before it.
    pub fn verify(&self) -> Result<(), PayloadError> {
        let computed = crc64(0, &self.whole[..self.whole.len() - 8]);
        if computed == self.crc {
            Ok(())
        } else {
            Err(PayloadError::Checksum {
                stored: self.crc,
                computed,
            })
        }
    }
}

/// Splits a payload without a type byte (`FUNCTION DUMP`: its body is RDB opcodes, and empty
/// when there is no library) into body and version, checking the CRC-64.
pub fn split_trailer(p: &[u8]) -> Result<(&[u8], u16), PayloadError> {
    if p.len() < DUMP_TRAILER {
        return Err(PayloadError::TooShort(p.len()));
    }
    let n = p.len();
    let mut stored = [0u8; 8];
    stored.copy_from_slice(&p[n - 8..]);
    let stored = u64::from_le_bytes(stored);
    let computed = crc64(0, &p[..n - 8]);
    if stored != computed {
        return Err(PayloadError::Checksum { stored, computed });
    }
    Ok((
        &p[..n - DUMP_TRAILER],
        u16::from_le_bytes([p[n - 10], p[n - 9]]),
    ))
}

/// Writes an RDB file front to back, keeping the running CRC-64 for the trailer.
///
/// ## Behavior
///
/// The header is written by [`RdbWriter::new`]; then aux fields, optional raw opcodes (the
/// function library), and per db a `SELECTDB` followed by its keys; [`RdbWriter::finish`] ends
/// the file with `EOF` and the checksum. Nothing checks the order; the caller keeps it.
#[derive(Debug)]
pub struct RdbWriter<W: Write> {
    inner: W,
    crc: u64,
    bytes: u64,
    /// Reused encoding buffer for small items.
    scratch: Vec<u8>,
}

impl<W: Write> RdbWriter<W> {
    /// Writes the magic and the 4-digit `version`.
    pub fn new(inner: W, version: u16) -> io::Result<RdbWriter<W>> {
        let mut w = RdbWriter {
            inner,
            crc: 0,
            bytes: 0,
            scratch: Vec::with_capacity(256),
        };
        w.write(format!("REDIS{version:04}").as_bytes())?;
        Ok(w)
    }

    fn write(&mut self, b: &[u8]) -> io::Result<()> {
        self.crc = crc64(self.crc, b);
        self.bytes += b.len() as u64;
        self.inner.write_all(b)
    }

    fn flush_scratch(&mut self) -> io::Result<()> {
        let s = std::mem::take(&mut self.scratch);
        let r = self.write(&s);
        self.scratch = s;
        self.scratch.clear();
        r
    }

    /// An auxiliary field (`redis-ver`, `ctime`, …); loaders ignore names they do not know.
    pub fn aux(&mut self, name: &[u8], value: &[u8]) -> io::Result<()> {
        self.scratch.push(opcode::AUX);
        put_string(&mut self.scratch, name);
        put_string(&mut self.scratch, value);
        self.flush_scratch()
    }

    /// Bytes that are already RDB opcodes, such as the body of a `FUNCTION DUMP` payload.
    pub fn raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.write(bytes)
    }

    /// Starts a db; `sizes` (keys, keys with a TTL) only presize the loader's tables.
    pub fn select_db(&mut self, db: u32, sizes: Option<(u64, u64)>) -> io::Result<()> {
        self.scratch.push(opcode::SELECTDB);
        put_len(&mut self.scratch, u64::from(db));
        if let Some((keys, expires)) = sizes {
            self.scratch.push(opcode::RESIZEDB);
            put_len(&mut self.scratch, keys);
            put_len(&mut self.scratch, expires);
        }
        self.flush_scratch()
    }

    /// One key: its expiry if any, the payload's type byte, the key, the payload's body.
    pub fn key(
        &mut self,
        key: &[u8],
        expire_at_ms: Option<i64>,
        payload: &Payload<'_>,
    ) -> io::Result<()> {
        if let Some(t) = expire_at_ms {
            self.scratch.push(opcode::EXPIRETIME_MS);
            self.scratch.extend_from_slice(&t.to_le_bytes());
        }
        self.scratch.push(payload.type_byte);
        put_string(&mut self.scratch, key);
        self.flush_scratch()?;
        self.write(payload.body)
    }

    /// Bytes written so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Writes `EOF` and the checksum (which covers the `EOF` byte too); returns the inner
    /// writer, flushed, and the file's length.
    pub fn finish(mut self) -> io::Result<(W, u64)> {
        self.write(&[opcode::EOF])?;
        let crc = self.crc.to_le_bytes();
        self.inner.write_all(&crc)?;
        self.bytes += 8;
        self.inner.flush()?;
        Ok((self.inner, self.bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Real Redis 7.0 `DUMP` payloads (docs/redis-behaviour.md §9): `SET str hello` and `SET int 12345`.
    const DUMP_HELLO: &[u8] = b"\x00\x05hello\n\x00cr\xdfve4 \n";
    const DUMP_INT: &[u8] = b"\x00\xc190\n\x00\x9d\x94\xea'\x93\xfc\x08\xb9";

    #[test]
    fn crc64_matches_real_dump_trailers() {
        for p in [DUMP_HELLO, DUMP_INT] {
            let payload = Payload::parse(p).unwrap();
            assert_eq!(payload.version, 10);
            assert_eq!(payload.type_byte, 0);
            payload.verify().unwrap();
        }
        assert_eq!(Payload::parse(DUMP_HELLO).unwrap().body, b"\x05hello");
        let mut bad = DUMP_HELLO.to_vec();
        bad[3] ^= 1;
        assert!(matches!(
            Payload::parse(&bad).unwrap().verify(),
            Err(PayloadError::Checksum { .. })
        ));
        assert_eq!(
            Payload::parse(b"\x00\n\x00"),
            Err(PayloadError::TooShort(3))
        );
    }

    #[test]
    fn a_file_ends_with_the_crc_of_everything_before() {
        let mut w = RdbWriter::new(Vec::new(), 10).unwrap();
        w.aux(b"redis-ver", b"7.0.15").unwrap();
        w.select_db(2, Some((1, 1))).unwrap();
        let p = Payload::parse(DUMP_HELLO).unwrap();
        w.key(b"k\x00\xff", Some(1_700_000_000_000), &p).unwrap();
        let (file, len) = w.finish().unwrap();
        assert_eq!(len as usize, file.len());
        assert!(file.starts_with(b"REDIS0010\xfa\x09redis-ver\x067.0.15\xfe\x02\xfb\x01\x01\xfc"));
        let (head, crc) = file.split_at(file.len() - 8);
        assert_eq!(head.last(), Some(&opcode::EOF));
        assert_eq!(crc64(0, head).to_le_bytes(), crc);
        assert!(head.ends_with(b"\x00\x03k\x00\xff\x05hello\xff"));
    }
}
