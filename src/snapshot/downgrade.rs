//! Rewriting a `DUMP` payload into an older RDB version (Redis 7.2 / Valkey 7.2–8.x, RDB 11,
//! toward Redis 7.0, RDB 10), so a live migration toward the older engine still copies each key
//! with one fenced read and one `RESTORE`.
//!
//! ## Behavior
//! - A payload is `[object type][value][RDB version u16 LE][CRC-64 u64 LE]`; `RESTORE` refuses
//!   any version above its own (docs/redis-behaviour.md §16, §20). RDB 11 differs from RDB 10 in two
//!   object types only (Redis 7.2's `rdb.h`): `SET_LISTPACK` (20) and `STREAM_LISTPACKS_3` (21).
//!   Every other type is the same bytes in both versions.
//! - A listpack set (20) becomes a plain set (2): its members, integers in their decimal form
//!   (the value the set holds; Redis 7.0 re-encodes small integer sets as intsets on load).
//! - A stream (21) becomes a `STREAM_LISTPACKS_2` (19): the same bytes without each consumer's
//!   active time, which Redis 7.0 does not have (its consumers keep their seen time).
//! - `FUNCTION DUMP` payloads (libraries' code after opcode 245) are the same in both versions.
//! - Everything else keeps its bytes; the version becomes the target's and the CRC is computed
//!   again. Module values and unknown types are refused with [`DowngradeError`]: the caller
//!   passes the original on, the target's `RESTORE` refuses it, and the key is reported as
//!   diverged (never a silent loss).

use std::fmt;

use super::rdb::{DUMP_TRAILER, crc64, put_len, put_string};

/// The oldest and newest payload versions [`downgrade`] converts between.
pub const FROM_RDB: u16 = 11;
/// See [`FROM_RDB`].
pub const TO_RDB: u16 = 10;

/// True when payloads of RDB `from` can be rewritten for a server that reads up to RDB `to`.
pub fn can_downgrade(from: u16, to: u16) -> bool {
    from == FROM_RDB && to == TO_RDB
}

/// Why a payload could not be rewritten.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DowngradeError(pub String);

impl fmt::Display for DowngradeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DowngradeError {}

fn err(what: impl Into<String>) -> DowngradeError {
    DowngradeError(what.into())
}

/// The RDB version a payload carries, if it is long enough to carry one.
pub fn payload_version(payload: &[u8]) -> Option<u16> {
    let at = payload.len().checked_sub(DUMP_TRAILER)?;
    Some(u16::from_le_bytes([payload[at], payload[at + 1]]))
}

/// `payload` rewritten for a server that reads up to RDB `to`; unchanged (copied) when it
/// already is at or below `to`.
pub fn downgrade(payload: &[u8], to: u16) -> Result<Vec<u8>, DowngradeError> {
    let version = payload_version(payload).ok_or_else(|| err("payload too short"))?;
    if version <= to {
        return Ok(payload.to_vec());
    }
    if !can_downgrade(version, to) {
        return Err(err(format!(
            "RDB {version} payloads cannot be rewritten for RDB {to}"
        )));
    }
    let body_end = payload.len() - DUMP_TRAILER;
    let crc = u64::from_le_bytes(payload[body_end + 2..].try_into().unwrap_or_default());
    if crc != 0 && crc64(0, &payload[..body_end + 2]) != crc {
        return Err(err("payload checksum mismatch"));
    }
    let mut out = Vec::with_capacity(payload.len());
    // An empty `FUNCTION DUMP` is the trailer alone.
    let Some((&ty, value)) = payload[..body_end].split_first() else {
        return Ok(restamped(out, to));
    };
    match ty {
        // Types that RDB 10 reads the same: strings, lists, sets, zsets, hashes in every
        // encoding Redis 7.0 knows, and version-2 streams.
        0..=5 | 9..=19 => {
            out.push(ty);
            out.extend_from_slice(value);
        }
        // `FUNCTION DUMP`: one `RDB_OPCODE_FUNCTION2` and the library's code per library, the
        // same in RDB 10 and 11.
        FUNCTION2 => {
            out.push(ty);
            out.extend_from_slice(value);
        }
        20 => {
            out.push(2);
            set_listpack_as_set(value, &mut out)?;
        }
        21 => {
            out.push(19);
            stream_without_active_times(value, &mut out)?;
        }
        6 | 7 => return Err(err("module values have no older form")),
        t => return Err(err(format!("unknown object type {t}"))),
    }
    Ok(restamped(out, to))
}

/// The opcode before each library in a `FUNCTION DUMP` payload (Redis 7.0's `rdb.h`).
const FUNCTION2: u8 = 245;

/// `body` with the trailer of RDB `version`: the version and the CRC-64 of both.
fn restamped(mut body: Vec<u8>, version: u16) -> Vec<u8> {
    body.extend_from_slice(&version.to_le_bytes());
    let crc = crc64(0, &body);
    body.extend_from_slice(&crc.to_le_bytes());
    body
}

/// A reader over an object's value bytes.
struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DowngradeError> {
        let end = self.at.checked_add(n).filter(|e| *e <= self.buf.len());
        let end = end.ok_or_else(|| err("payload ends early"))?;
        let s = &self.buf[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn byte(&mut self) -> Result<u8, DowngradeError> {
        Ok(self.take(1)?[0])
    }

    /// An RDB length; `Err` for the special string encodings, which only strings may carry.
    fn len(&mut self) -> Result<u64, DowngradeError> {
        match self.length()? {
            Length::Len(n) => Ok(n),
            Length::Encoded(_) => Err(err("an encoded value where a length belongs")),
        }
    }

    fn length(&mut self) -> Result<Length, DowngradeError> {
        let first = self.byte()?;
        Ok(match first >> 6 {
            0 => Length::Len(u64::from(first & 0x3f)),
            1 => Length::Len((u64::from(first & 0x3f) << 8) | u64::from(self.byte()?)),
            2 => match first {
                0x80 => Length::Len(u64::from(u32::from_be_bytes(
                    self.take(4)?.try_into().unwrap_or_default(),
                ))),
                0x81 => Length::Len(u64::from_be_bytes(
                    self.take(8)?.try_into().unwrap_or_default(),
                )),
                _ => return Err(err(format!("unknown length prefix {first:#x}"))),
            },
            _ => Length::Encoded(first & 0x3f),
        })
    }

    /// An RDB string, decoded (integers as text, LZF decompressed).
    fn string(&mut self) -> Result<Vec<u8>, DowngradeError> {
        match self.length()? {
            Length::Len(n) => Ok(self
                .take(usize::try_from(n).map_err(|_| err("huge"))?)?
                .to_vec()),
            Length::Encoded(0) => Ok((self.byte()? as i8).to_string().into_bytes()),
            Length::Encoded(1) => Ok(i16::from_le_bytes(
                self.take(2)?.try_into().unwrap_or_default(),
            )
            .to_string()
            .into_bytes()),
            Length::Encoded(2) => Ok(i32::from_le_bytes(
                self.take(4)?.try_into().unwrap_or_default(),
            )
            .to_string()
            .into_bytes()),
            Length::Encoded(3) => {
                let clen = self.len()? as usize;
                let len = self.len()? as usize;
                lzf_decompress(self.take(clen)?, len)
            }
            Length::Encoded(e) => Err(err(format!("unknown string encoding {e}"))),
        }
    }

    /// Skips an RDB string without decoding it.
    fn skip_string(&mut self) -> Result<(), DowngradeError> {
        match self.length()? {
            Length::Len(n) => self
                .take(usize::try_from(n).map_err(|_| err("huge"))?)
                .map(drop),
            Length::Encoded(0) => self.take(1).map(drop),
            Length::Encoded(1) => self.take(2).map(drop),
            Length::Encoded(2) => self.take(4).map(drop),
            Length::Encoded(3) => {
                let clen = self.len()? as usize;
                self.len()?;
                self.take(clen).map(drop)
            }
            Length::Encoded(e) => Err(err(format!("unknown string encoding {e}"))),
        }
    }
}

enum Length {
    Len(u64),
    Encoded(u8),
}

/// LZF decompression (liblzf's format, as Redis writes compressed strings).
fn lzf_decompress(input: &[u8], len: usize) -> Result<Vec<u8>, DowngradeError> {
    let mut out: Vec<u8> = Vec::with_capacity(len);
    let mut i = 0;
    let bad = || err("corrupt LZF string");
    while i < input.len() {
        let ctrl = input[i] as usize;
        i += 1;
        if ctrl < 32 {
            let run = ctrl + 1;
            out.extend_from_slice(input.get(i..i + run).ok_or_else(bad)?);
            i += run;
        } else {
            let mut n = ctrl >> 5;
            if n == 7 {
                n += *input.get(i).ok_or_else(bad)? as usize;
                i += 1;
            }
            let back = ((ctrl & 0x1f) << 8) + *input.get(i).ok_or_else(bad)? as usize + 1;
            i += 1;
            let from = out.len().checked_sub(back).ok_or_else(bad)?;
            // Overlapping copies repeat bytes just written, so copy one at a time.
            for k in 0..n + 2 {
                let b = out[from + k];
                out.push(b);
            }
        }
    }
    if out.len() != len {
        return Err(bad());
    }
    Ok(out)
}

/// The elements of a listpack, as bytes (integers in decimal).
fn listpack_elements(lp: &[u8]) -> Result<Vec<Vec<u8>>, DowngradeError> {
    let bad = || err("corrupt listpack");
    let mut at = 6;
    let mut items = Vec::new();
    loop {
        let b = *lp.get(at).ok_or_else(bad)?;
        if b == 0xff {
            return Ok(items);
        }
        let get = |from: usize, n: usize| lp.get(from..from + n).ok_or_else(bad);
        let int = |bytes: &[u8]| -> i64 {
            // Little-endian two's complement of 2, 3, 4 or 8 bytes.
            let mut v: i64 = 0;
            for (k, x) in bytes.iter().enumerate() {
                v |= i64::from(*x) << (8 * k);
            }
            let bits = 8 * bytes.len() as u32;
            if bits < 64 && v & (1 << (bits - 1)) != 0 {
                v -= 1 << bits;
            }
            v
        };
        let (item, size): (Vec<u8>, usize) = if b & 0x80 == 0 {
            (i64::from(b & 0x7f).to_string().into_bytes(), 1)
        } else if b & 0xc0 == 0x80 {
            let n = (b & 0x3f) as usize;
            (get(at + 1, n)?.to_vec(), 1 + n)
        } else if b & 0xe0 == 0xc0 {
            let raw = (i64::from(b & 0x1f) << 8) | i64::from(*lp.get(at + 1).ok_or_else(bad)?);
            let v = if raw >= 1 << 12 { raw - (1 << 13) } else { raw };
            (v.to_string().into_bytes(), 2)
        } else if b & 0xf0 == 0xe0 {
            let n = (((b & 0x0f) as usize) << 8) | *lp.get(at + 1).ok_or_else(bad)? as usize;
            (get(at + 2, n)?.to_vec(), 2 + n)
        } else {
            match b {
                0xf0 => {
                    let n =
                        u32::from_le_bytes(get(at + 1, 4)?.try_into().unwrap_or_default()) as usize;
                    (get(at + 5, n)?.to_vec(), 5 + n)
                }
                0xf1 => (int(get(at + 1, 2)?).to_string().into_bytes(), 3),
                0xf2 => (int(get(at + 1, 3)?).to_string().into_bytes(), 4),
                0xf3 => (int(get(at + 1, 4)?).to_string().into_bytes(), 5),
                0xf4 => (int(get(at + 1, 8)?).to_string().into_bytes(), 9),
                _ => return Err(bad()),
            }
        };
        // The back-length that follows each entry: 7 bits per byte.
        let back = match size {
            0..=127 => 1,
            128..=16_382 => 2,
            16_383..=2_097_150 => 3,
            2_097_151..=268_435_454 => 4,
            _ => 5,
        };
        items.push(item);
        at += size + back;
    }
}

/// A `SET_LISTPACK` value as a plain set's value.
fn set_listpack_as_set(value: &[u8], out: &mut Vec<u8>) -> Result<(), DowngradeError> {
    let mut r = Reader { buf: value, at: 0 };
    let members = listpack_elements(&r.string()?)?;
    put_len(out, members.len() as u64);
    for m in members {
        put_string(out, &m);
    }
    Ok(())
}

/// A `STREAM_LISTPACKS_3` value as a `STREAM_LISTPACKS_2` one: the consumers' active times
/// (8 bytes after each seen time) are left out, every other byte is kept.
fn stream_without_active_times(value: &[u8], out: &mut Vec<u8>) -> Result<(), DowngradeError> {
    let mut r = Reader { buf: value, at: 0 };
    // Bytes of `value` before this offset are in `out` already (or left out).
    let mut copied = 0;
    let nodes = r.len()?;
    for _ in 0..2 * nodes {
        r.skip_string()?;
    }
    // Length, last ID (2), first ID (2), max deleted ID (2), entries added.
    for _ in 0..8 {
        r.len()?;
    }
    let groups = r.len()?;
    for _ in 0..groups {
        r.skip_string()?;
        // Last delivered ID (2), entries read.
        for _ in 0..3 {
            r.len()?;
        }
        let pending = r.len()?;
        for _ in 0..pending {
            // Raw ID, delivery time, delivery count.
            r.take(16 + 8)?;
            r.len()?;
        }
        let consumers = r.len()?;
        for _ in 0..consumers {
            r.skip_string()?;
            r.take(8)?;
            out.extend_from_slice(&value[copied..r.at]);
            r.take(8)?;
            copied = r.at;
            let owned = r.len()?;
            r.take(16 * usize::try_from(owned).map_err(|_| err("huge"))?)?;
        }
    }
    if r.at != value.len() {
        return Err(err("stream value has trailing bytes"));
    }
    out.extend_from_slice(&value[copied..]);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(ty: u8, value: &[u8], version: u16) -> Vec<u8> {
        let mut p = vec![ty];
        p.extend_from_slice(value);
        p.extend_from_slice(&version.to_le_bytes());
        let crc = crc64(0, &p);
        p.extend_from_slice(&crc.to_le_bytes());
        p
    }

    #[test]
    fn payloads_at_or_below_the_target_version_are_kept() {
        let p = payload(0, b"\x03abc", 10);
        assert_eq!(downgrade(&p, 10).unwrap(), p);
        let q = payload(0, b"\x03abc", 11);
        assert_eq!(downgrade(&q, 10).unwrap(), payload(0, b"\x03abc", 10));
        assert!(downgrade(&payload(0, b"\x03abc", 12), 10).is_err());
        assert!(downgrade(&payload(7, b"", 11), 10).is_err());
        let functions = payload(245, b"\x05#!lua", 11);
        assert_eq!(
            downgrade(&functions, 10).unwrap(),
            payload(245, b"\x05#!lua", 10)
        );
        let empty = restamped(Vec::new(), 11);
        assert_eq!(downgrade(&empty, 10).unwrap(), restamped(Vec::new(), 10));
        let mut broken = q.clone();
        broken[2] ^= 1;
        assert_eq!(
            downgrade(&broken, 10).unwrap_err().to_string(),
            "payload checksum mismatch"
        );
    }

    #[test]
    fn listpack_sets_become_plain_sets() {
        // A listpack of "a", 5, -2 (13-bit), "hello": 6-byte header, entries with back-lengths.
        let mut lp = vec![0, 0, 0, 0, 4, 0];
        lp.extend_from_slice(&[0x81, b'a', 2]);
        lp.extend_from_slice(&[5, 1]);
        lp.extend_from_slice(&[0xdf, 0xfe, 2]);
        lp.extend_from_slice(&[0x85, b'h', b'e', b'l', b'l', b'o', 6]);
        lp.push(0xff);
        let n = lp.len() as u32;
        lp[..4].copy_from_slice(&n.to_le_bytes());
        let mut value = vec![lp.len() as u8];
        value.extend_from_slice(&lp);
        let got = downgrade(&payload(20, &value, 11), 10).unwrap();
        let want = payload(2, b"\x04\x01a\x015\x02-2\x05hello", 10);
        assert_eq!(got, want);
    }

    #[test]
    fn lzf_strings_decompress() {
        // "aaaaaaaaaa": a literal 'a', then a back-reference of 9 bytes at distance 1.
        let compressed = [0x00, b'a', (7 << 5), 9 - 2 - 7, 0x00];
        assert_eq!(lzf_decompress(&compressed, 10).unwrap(), b"aaaaaaaaaa");
        assert!(lzf_decompress(&compressed, 11).is_err());
    }

    #[test]
    fn streams_lose_only_consumer_active_times() {
        let mut v = vec![1, 2, b'n', b'k', 3, b'l', b'p', b'x'];
        v.extend_from_slice(&[1, 5, 0, 5, 0, 0, 0, 9]);
        // One group "g", last ID 5-0, entries read 1, one pending entry.
        v.extend_from_slice(&[1, 1, b'g', 5, 0, 1, 1]);
        v.extend_from_slice(&[7; 16]);
        v.extend_from_slice(&[8; 8]);
        v.push(1);
        // One consumer "c": seen time, active time, one owned ID.
        v.extend_from_slice(&[1, 1, b'c']);
        v.extend_from_slice(&[0x11; 8]);
        let active_at = v.len();
        v.extend_from_slice(&[0x22; 8]);
        v.push(1);
        v.extend_from_slice(&[7; 16]);
        let mut want = v[..active_at].to_vec();
        want.extend_from_slice(&v[active_at + 8..]);
        assert_eq!(
            downgrade(&payload(21, &v, 11), 10).unwrap(),
            payload(19, &want, 10)
        );
        v.push(0);
        assert!(downgrade(&payload(21, &v, 11), 10).is_err());
    }
}
