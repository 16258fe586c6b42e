//! Rewriting a `DUMP` payload into an older RDB version (Redis 7.4's RDB 12 down to Redis
//! 4.0's RDB 8), so a live migration toward the older engine still copies each key with one
//! fenced read and one `RESTORE`.
//!
//! ## Behavior
//! - A payload is `[object type][value][RDB version u16 LE][CRC-64 u64 LE]`; `RESTORE` refuses
//!   any version above its own (docs/redis-behaviour.md §16, §20). Each version adds object
//!   types only (the `rdb.h` of Redis 5.0, 7.0, 7.2 and 7.4); every other type is the same
//!   bytes in every version from 8 on, and keeps them.
//! - RDB 12 (7.4) adds hashes with field TTLs (`HASH_METADATA` 24, `HASH_LISTPACK_EX` 25):
//!   they become plain hashes (4) without the TTLs under [`FieldTtls::Drop`] (a plan's
//!   `drop_field_ttls`; fields already expired are left out), and are refused under
//!   [`FieldTtls::Refuse`] unless no field has a TTL any more.
//! - RDB 11 (7.2, Valkey): a listpack set (20) becomes a plain set (2), integers in their
//!   decimal form; a stream (21) loses each consumer's active time.
//! - RDB 10 (7.0): listpack hashes (16), sorted sets (17) and quicklists of listpacks (18)
//!   become plain hashes (4), `ZSET_2` (5, binary doubles: a listpack's score text reads back
//!   to the same double) and plain lists (1); a stream (19) loses its first and max-deleted
//!   IDs, entries-added and each group's entries-read, which Redis 5.0–6.2 do not have.
//! - RDB 9 (5.0) adds streams: Redis 4.0 (RDB 8) has none, so a stream is refused.
//! - `FUNCTION DUMP` payloads (libraries' code after opcode 245) are the same from RDB 10 on.
//! - The version becomes the target's and the CRC is computed again. Module values and unknown
//!   types are refused with [`DowngradeError`]: the caller passes the original on, the target's
//!   `RESTORE` refuses it, and the key is reported as diverged (never a silent loss).

use std::fmt;

use super::rdb::{DUMP_TRAILER, crc64, put_len, put_string};

/// The newest payload version [`downgrade`] reads (Redis 7.4).
pub const FROM_RDB: u16 = 12;
/// The oldest payload version [`downgrade`] writes (Redis 4.0).
pub const TO_RDB: u16 = 8;

/// True when payloads of RDB `from` can be rewritten for a server that reads up to RDB `to`
/// (per key, some values may still have no older form: module values, streams for RDB 8,
/// field TTLs under [`FieldTtls::Refuse`]).
pub fn can_downgrade(from: u16, to: u16) -> bool {
    from > to && from <= FROM_RDB && to >= TO_RDB
}

/// What a hash with field TTLs (Redis 7.4, RDB 12) becomes toward a target without them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldTtls {
    /// A hash with a field that has a TTL is not rewritten (the key is reported as diverged);
    /// a hash whose fields have none (any more) becomes a plain hash.
    Refuse,
    /// Fields keep their values without their TTLs; fields whose TTL is at or before `now_ms`
    /// (expired, not yet reclaimed by the source) are left out.
    Drop { now_ms: i64 },
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
/// already is at or below `to`. Hashes with field TTLs are refused ([`FieldTtls::Refuse`]).
pub fn downgrade(payload: &[u8], to: u16) -> Result<Vec<u8>, DowngradeError> {
    downgrade_with(payload, to, FieldTtls::Refuse)
}

/// [`downgrade`], with what becomes of field TTLs.
pub fn downgrade_with(
    payload: &[u8],
    to: u16,
    field_ttls: FieldTtls,
) -> Result<Vec<u8>, DowngradeError> {
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
        // Types every RDB version from 8 on reads the same: strings, plain lists, sets,
        // zsets and hashes, intsets, ziplists and quicklists of ziplists.
        0..=5 | 9..=14 => {
            out.push(ty);
            out.extend_from_slice(value);
        }
        // Redis 7.0's listpack encodings (RDB 10): the plain forms older versions read.
        16..=18 if to >= 10 => {
            out.push(ty);
            out.extend_from_slice(value);
        }
        16 => {
            out.push(4);
            pairs_as_plain(value, &mut out)?;
        }
        17 => {
            out.push(5);
            zset_listpack_as_zset2(value, &mut out)?;
        }
        18 => {
            out.push(1);
            quicklist2_as_list(value, &mut out)?;
        }
        // Streams: RDB 9 (5.0) has the first form, RDB 10 adds IDs and counters, RDB 11 the
        // consumers' active times; RDB 8 (4.0) has no streams at all.
        15 | 19 | 21 if to < 9 => return Err(err("Redis 4.0 (RDB 8) has no streams")),
        15 => {
            out.push(ty);
            out.extend_from_slice(value);
        }
        19 | 21 => {
            let new_ty = match to {
                11.. => ty,
                10 => 19,
                _ => 15,
            };
            out.push(new_ty);
            if new_ty == ty {
                out.extend_from_slice(value);
            } else {
                let shape = StreamShape {
                    active_times: ty == 21,
                    drop_active_times: new_ty != 21,
                    drop_v2: new_ty == 15,
                };
                stream_rewrite(value, shape, &mut out)?;
            }
        }
        20 if to >= 11 => {
            out.push(ty);
            out.extend_from_slice(value);
        }
        20 => {
            out.push(2);
            set_listpack_as_set(value, &mut out)?;
        }
        // Redis 7.4's hashes with field TTLs (RDB 12): plain hashes, or refused.
        24 => {
            out.push(4);
            hash_metadata_as_hash(value, field_ttls, &mut out)?;
        }
        25 => {
            out.push(4);
            hash_listpack_ex_as_hash(value, field_ttls, &mut out)?;
        }
        // `FUNCTION DUMP`: one `RDB_OPCODE_FUNCTION2` and the library's code per library, the
        // same from RDB 10 (Redis 7.0, which has functions) on.
        FUNCTION2 if to >= 10 => {
            out.push(ty);
            out.extend_from_slice(value);
        }
        FUNCTION2 => return Err(err("function libraries need Redis 7.0 (RDB 10)")),
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

/// Which stream fields a payload has, and which the target's version lacks.
#[derive(Debug, Clone, Copy)]
struct StreamShape {
    /// Each consumer has an active time after its seen time (`STREAM_LISTPACKS_3`, RDB 11).
    active_times: bool,
    /// Leave the active times out (for RDB 10 and older).
    drop_active_times: bool,
    /// Leave out what RDB 10 added (`STREAM_LISTPACKS_2`): the first and max-deleted IDs and
    /// entries-added after the last ID, each group's entries-read (for RDB 9).
    drop_v2: bool,
}

/// A stream value rewritten for an older stream type: the fields the older type lacks are
/// left out, every other byte is kept.
fn stream_rewrite(
    value: &[u8],
    shape: StreamShape,
    out: &mut Vec<u8>,
) -> Result<(), DowngradeError> {
    let mut r = Reader { buf: value, at: 0 };
    // Bytes of `value` before this offset are in `out` already (or left out).
    let mut copied = 0;
    let skip = |r: &mut Reader, copied: &mut usize, from: usize, out: &mut Vec<u8>| {
        out.extend_from_slice(&value[*copied..from]);
        *copied = r.at;
    };
    let nodes = r.len()?;
    for _ in 0..2 * nodes {
        r.skip_string()?;
    }
    // Length, last ID (2).
    for _ in 0..3 {
        r.len()?;
    }
    // First ID (2), max deleted ID (2), entries added: in every form but the first, which
    // `value` is not (an RDB 9 stream is never rewritten).
    let from = r.at;
    for _ in 0..5 {
        r.len()?;
    }
    if shape.drop_v2 {
        skip(&mut r, &mut copied, from, out);
    }
    let groups = r.len()?;
    for _ in 0..groups {
        r.skip_string()?;
        // Last delivered ID (2), then entries read.
        r.len()?;
        r.len()?;
        let from = r.at;
        r.len()?;
        if shape.drop_v2 {
            skip(&mut r, &mut copied, from, out);
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
            if shape.active_times {
                let from = r.at;
                r.take(8)?;
                if shape.drop_active_times {
                    skip(&mut r, &mut copied, from, out);
                }
            }
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

/// The elements of the listpack string `value` holds, which come in tuples of `n`.
fn listpack_tuples(value: &[u8], n: usize, what: &str) -> Result<Vec<Vec<u8>>, DowngradeError> {
    let mut r = Reader { buf: value, at: 0 };
    let items = listpack_elements(&r.string()?)?;
    if items.len() % n != 0 {
        return Err(err(format!("{what} whose count is not a multiple of {n}")));
    }
    Ok(items)
}

/// A listpack of field/value pairs (`HASH_LISTPACK`) as a plain hash's value.
fn pairs_as_plain(value: &[u8], out: &mut Vec<u8>) -> Result<(), DowngradeError> {
    let items = listpack_tuples(value, 2, "a hash listpack")?;
    put_len(out, items.len() as u64 / 2);
    for item in items {
        put_string(out, &item);
    }
    Ok(())
}

/// A `ZSET_LISTPACK` (member, score pairs; scores as Redis prints them, which read back to the
/// same double) as a `ZSET_2` value: members with binary doubles.
fn zset_listpack_as_zset2(value: &[u8], out: &mut Vec<u8>) -> Result<(), DowngradeError> {
    let items = listpack_tuples(value, 2, "a zset listpack")?;
    put_len(out, items.len() as u64 / 2);
    for pair in items.chunks_exact(2) {
        let score: f64 = std::str::from_utf8(&pair[1])
            .ok()
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| err("a zset score that is not a number"))?;
        put_string(out, &pair[0]);
        out.extend_from_slice(&score.to_le_bytes());
    }
    Ok(())
}

/// A `LIST_QUICKLIST_2` (nodes, each a plain element or a listpack) as a plain list.
fn quicklist2_as_list(value: &[u8], out: &mut Vec<u8>) -> Result<(), DowngradeError> {
    /// `QUICKLIST_NODE_CONTAINER_PLAIN`: the node is one element.
    const PLAIN: u64 = 1;
    let mut r = Reader { buf: value, at: 0 };
    let nodes = r.len()?;
    let mut items = Vec::new();
    for _ in 0..nodes {
        let container = r.len()?;
        let data = r.string()?;
        if container == PLAIN {
            items.push(data);
        } else {
            items.extend(listpack_elements(&data)?);
        }
    }
    if r.at != value.len() {
        return Err(err("list value has trailing bytes"));
    }
    put_len(out, items.len() as u64);
    for item in items {
        put_string(out, &item);
    }
    Ok(())
}

/// The fields of a hash with field TTLs, as (field, value, absolute TTL in ms or none), as a
/// plain hash's value under `policy`.
fn fields_without_ttls(
    fields: Vec<(Vec<u8>, Vec<u8>, Option<u64>)>,
    policy: FieldTtls,
    out: &mut Vec<u8>,
) -> Result<(), DowngradeError> {
    let kept: Vec<_> = match policy {
        FieldTtls::Refuse => {
            if fields.iter().any(|f| f.2.is_some()) {
                return Err(err(
                    "a hash with field TTLs, which the target cannot hold (on_field_ttls = \"refuse\")",
                ));
            }
            fields
        }
        FieldTtls::Drop { now_ms } => fields
            .into_iter()
            .filter(|f| f.2.is_none_or(|at| at as i64 > now_ms))
            .collect(),
    };
    if kept.is_empty() {
        // RESTORE refuses an empty hash; the source reclaims the key as its fields expire.
        return Err(err("every field of the hash had expired"));
    }
    put_len(out, kept.len() as u64);
    for (f, v, _) in kept {
        put_string(out, &f);
        put_string(out, &v);
    }
    Ok(())
}

/// A `HASH_METADATA` value (the next field expiry, then per field a TTL relative to it plus
/// one, or 0 for none; the field; the value) as a plain hash's value.
fn hash_metadata_as_hash(
    value: &[u8],
    policy: FieldTtls,
    out: &mut Vec<u8>,
) -> Result<(), DowngradeError> {
    let mut r = Reader { buf: value, at: 0 };
    let min = u64::from_le_bytes(r.take(8)?.try_into().unwrap_or_default());
    let n = r.len()?;
    let mut fields = Vec::new();
    for _ in 0..n {
        let ttl = r.len()?;
        let f = r.string()?;
        let v = r.string()?;
        let at = (ttl != 0).then(|| (min + ttl).saturating_sub(1));
        fields.push((f, v, at));
    }
    if r.at != value.len() {
        return Err(err("hash value has trailing bytes"));
    }
    fields_without_ttls(fields, policy, out)
}

/// A `HASH_LISTPACK_EX` value (the next field expiry, then a listpack of field, value,
/// absolute TTL triples, 0 for none) as a plain hash's value.
fn hash_listpack_ex_as_hash(
    value: &[u8],
    policy: FieldTtls,
    out: &mut Vec<u8>,
) -> Result<(), DowngradeError> {
    // The next field expiry (8 bytes) comes first; the TTLs themselves are in the listpack.
    let rest = value.get(8..).ok_or_else(|| err("payload ends early"))?;
    let items = listpack_tuples(rest, 3, "a hash listpack with field TTLs")?;
    let mut fields = Vec::new();
    for t in items.chunks_exact(3) {
        let at: u64 = std::str::from_utf8(&t[2])
            .ok()
            .and_then(|x| x.parse().ok())
            .ok_or_else(|| err("a field TTL that is not a number"))?;
        fields.push((t[0].clone(), t[1].clone(), (at != 0).then_some(at)));
    }
    fields_without_ttls(fields, policy, out)
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
        assert_eq!(
            downgrade(&payload(0, b"\x03abc", 12), 8).unwrap(),
            payload(0, b"\x03abc", 8)
        );
        assert!(downgrade(&payload(0, b"\x03abc", 13), 10).is_err());
        assert!(downgrade(&payload(245, b"\x05#!lua", 11), 9).is_err());
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

    /// A listpack of short strings (each under 64 bytes), as an RDB string value.
    fn listpack(items: &[&[u8]]) -> Vec<u8> {
        let mut lp = vec![0, 0, 0, 0, items.len() as u8, 0];
        for it in items {
            lp.push(0x80 | it.len() as u8);
            lp.extend_from_slice(it);
            lp.push(1 + it.len() as u8);
        }
        lp.push(0xff);
        let n = lp.len() as u32;
        lp[..4].copy_from_slice(&n.to_le_bytes());
        let mut value = Vec::new();
        put_len(&mut value, lp.len() as u64);
        value.extend_from_slice(&lp);
        value
    }

    fn plain(items: &[&[u8]], count: u64) -> Vec<u8> {
        let mut v = Vec::new();
        put_len(&mut v, count);
        for it in items {
            put_string(&mut v, it);
        }
        v
    }

    #[test]
    fn listpack_hashes_zsets_and_lists_become_plain_for_rdb_9() {
        let hash = payload(16, &listpack(&[b"f", b"v", b"g", b"w"]), 10);
        assert_eq!(downgrade(&hash, 10).unwrap(), hash);
        assert_eq!(
            downgrade(&hash, 9).unwrap(),
            payload(4, &plain(&[b"f", b"v", b"g", b"w"], 2), 9)
        );
        let zset = payload(17, &listpack(&[b"a", b"1.5", b"b", b"-inf"]), 11);
        let mut want = Vec::new();
        put_len(&mut want, 2);
        put_string(&mut want, b"a");
        want.extend_from_slice(&1.5f64.to_le_bytes());
        put_string(&mut want, b"b");
        want.extend_from_slice(&f64::NEG_INFINITY.to_le_bytes());
        assert_eq!(downgrade(&zset, 8).unwrap(), payload(5, &want, 8));
        // Two nodes: a packed one of two elements and a plain one.
        let mut list = vec![2, 2];
        list.extend_from_slice(&listpack(&[b"x", b"y"]));
        list.extend_from_slice(&[1, 3]);
        list.extend_from_slice(b"big");
        assert_eq!(
            downgrade(&payload(18, &list, 10), 9).unwrap(),
            payload(1, &plain(&[b"x", b"y", b"big"], 3), 9)
        );
    }

    #[test]
    fn hashes_with_field_ttls_lose_them_only_when_told() {
        // HASH_LISTPACK_EX: next expiry, then field, value, absolute TTL (0: none) triples.
        let mut v = 2000u64.to_le_bytes().to_vec();
        v.extend_from_slice(&listpack(&[
            b"a", b"1", b"0", b"b", b"2", b"2000", b"c", b"3", b"900",
        ]));
        let p = payload(25, &v, 12);
        let e = downgrade(&p, 11).unwrap_err().to_string();
        assert!(e.contains("field TTLs"), "{e}");
        // Kept without TTLs, except the field that expired before the rewrite.
        assert_eq!(
            downgrade_with(&p, 11, FieldTtls::Drop { now_ms: 1000 }).unwrap(),
            payload(4, &plain(&[b"a", b"1", b"b", b"2"], 2), 11)
        );
        // No field has a TTL any more: nothing is lost, so it is rewritten under Refuse too.
        let mut none = 0u64.to_le_bytes().to_vec();
        none.extend_from_slice(&listpack(&[b"a", b"1", b"0"]));
        assert_eq!(
            downgrade(&payload(25, &none, 12), 10).unwrap(),
            payload(4, &plain(&[b"a", b"1"], 1), 10)
        );
        // HASH_METADATA: TTLs relative to the next expiry, plus one.
        let mut m = 5000u64.to_le_bytes().to_vec();
        m.extend_from_slice(&[2, 0, 1, b'a', 1, b'1', 1, 1, b'b', 1, b'2']);
        let p = payload(24, &m, 12);
        assert!(downgrade(&p, 10).is_err());
        assert_eq!(
            downgrade_with(&p, 10, FieldTtls::Drop { now_ms: 4999 }).unwrap(),
            payload(4, &plain(&[b"a", b"1", b"b", b"2"], 2), 10)
        );
        assert_eq!(
            downgrade_with(&p, 10, FieldTtls::Drop { now_ms: 5000 }).unwrap(),
            payload(4, &plain(&[b"a", b"1"], 1), 10)
        );
    }

    #[test]
    fn streams_lose_what_rdb_9_lacks_and_have_no_rdb_8_form() {
        let mut v = vec![1, 2, b'n', b'k', 3, b'l', b'p', b'x'];
        // Length, last ID; then first ID, max deleted ID, entries added (RDB 10).
        v.extend_from_slice(&[1, 5, 0]);
        let v2_at = v.len();
        v.extend_from_slice(&[5, 0, 0, 0, 9]);
        // One group "g", last ID 5-0, entries read 1, no pending entries, one consumer.
        v.extend_from_slice(&[1, 1, b'g', 5, 0]);
        let read_at = v.len();
        v.extend_from_slice(&[1, 0, 1, 1, b'c']);
        v.extend_from_slice(&[0x11; 8]);
        let active_at = v.len();
        v.extend_from_slice(&[0x22; 8]);
        v.push(0);
        let mut want = v[..v2_at].to_vec();
        want.extend_from_slice(&v[v2_at + 5..read_at]);
        want.extend_from_slice(&v[read_at + 1..active_at]);
        want.extend_from_slice(&v[active_at + 8..]);
        assert_eq!(
            downgrade(&payload(21, &v, 12), 9).unwrap(),
            payload(15, &want, 9)
        );
        assert!(downgrade(&payload(21, &v, 12), 8).is_err());
        assert!(downgrade(&payload(15, &want, 9), 8).is_err());
    }
}
