//! Redis's `sdscatrepr` quoting, both ways: how `MONITOR` prints arguments and how ferry shows
//! binary keys to people.
//!
//! ## Behavior
//! [`quote`] is byte-for-byte what Redis 7 prints. [`unquote_into`] is its exact inverse: every
//! byte string survives `unquote(quote(x)) == x`. Decoding accepts upper-case hex too, because a
//! lenient reader loses nothing there, but rejects unknown escapes, which can only mean a corrupt
//! line.

use std::fmt;

/// Why a quoted argument could not be decoded. Offsets are relative to the quoted text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnquoteError {
    /// The text does not start with `"`.
    MissingOpenQuote,
    /// The text ends before the closing `"`.
    Unterminated,
    /// `\` followed by a character Redis never writes there.
    BadEscape { offset: usize },
    /// `\x` not followed by two hex digits.
    BadHex { offset: usize },
}

impl fmt::Display for UnquoteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnquoteError::MissingOpenQuote => f.write_str("argument does not start with '\"'"),
            UnquoteError::Unterminated => f.write_str("argument has no closing '\"'"),
            UnquoteError::BadEscape { .. } => f.write_str("unknown escape sequence"),
            UnquoteError::BadHex { .. } => f.write_str("'\\x' is not followed by two hex digits"),
        }
    }
}

/// Appends `bytes` quoted exactly as Redis's `sdscatrepr` does.
pub fn quote_into(out: &mut Vec<u8>, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    for &b in bytes {
        match b {
            b'\\' | b'"' => out.extend_from_slice(&[b'\\', b]),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x07 => out.extend_from_slice(b"\\a"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x20..=0x7e => out.push(b),
            _ => out.extend_from_slice(&[
                b'\\',
                b'x',
                HEX[(b >> 4) as usize],
                HEX[(b & 15) as usize],
            ]),
        }
    }
    out.push(b'"');
}

/// `bytes` quoted as Redis shows them; always valid UTF-8 because every non-ASCII byte is escaped.
pub fn quote(bytes: &[u8]) -> String {
    let mut out = Vec::with_capacity(bytes.len() + 2);
    quote_into(&mut out, bytes);
    // Every byte written above is printable ASCII.
    String::from_utf8(out).unwrap_or_default()
}

/// A `Display` adapter that quotes binary data, for logs and error messages.
pub struct Quoted<'a>(pub &'a [u8]);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&quote(self.0))
    }
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes one quoted argument at the start of `text` into `out`.
///
/// Returns how many bytes of `text` the quoted argument used, closing quote included. Raw bytes
/// are copied in runs found with `memchr`, which is what keeps the parser fast on long values.
pub fn unquote_into(text: &[u8], out: &mut Vec<u8>) -> Result<usize, UnquoteError> {
    if text.first() != Some(&b'"') {
        return Err(UnquoteError::MissingOpenQuote);
    }
    let mut i = 1;
    loop {
        let rest = &text[i..];
        let Some(j) = memchr::memchr2(b'"', b'\\', rest) else {
            return Err(UnquoteError::Unterminated);
        };
        out.extend_from_slice(&rest[..j]);
        i += j;
        // Escapes come in runs in binary values; decode a run without going back to memchr.
        loop {
            match text.get(i) {
                Some(b'"') => return Ok(i + 1),
                Some(b'\\') => {}
                _ => break,
            }
            let esc = *text.get(i + 1).ok_or(UnquoteError::Unterminated)?;
            let decoded = match esc {
                b'\\' => b'\\',
                b'"' => b'"',
                b'n' => b'\n',
                b'r' => b'\r',
                b't' => b'\t',
                b'a' => 0x07,
                b'b' => 0x08,
                b'x' => {
                    let hi = text.get(i + 2).copied().and_then(hex_val);
                    let lo = text.get(i + 3).copied().and_then(hex_val);
                    match (hi, lo) {
                        (Some(hi), Some(lo)) => {
                            out.push(hi << 4 | lo);
                            i += 4;
                            continue;
                        }
                        _ => return Err(UnquoteError::BadHex { offset: i }),
                    }
                }
                _ => return Err(UnquoteError::BadEscape { offset: i }),
            };
            out.push(decoded);
            i += 2;
        }
    }
}

/// Decodes a single quoted argument that must fill `text` exactly.
pub fn unquote(text: &[u8]) -> Result<Vec<u8>, UnquoteError> {
    let mut out = Vec::with_capacity(text.len());
    let used = unquote_into(text, &mut out)?;
    if used != text.len() {
        return Err(UnquoteError::BadEscape { offset: used });
    }
    Ok(out)
}

/// Decodes a space-separated list of quoted arguments, as in a `MONITOR` line after its header:
/// `"SET" "k" "v"`. Returns the byte offset of the first problem on error.
pub fn unquote_args(text: &[u8]) -> Result<Vec<Vec<u8>>, (usize, UnquoteError)> {
    let mut args = Vec::new();
    let mut i = 0;
    while i < text.len() {
        let mut arg = Vec::new();
        let used = unquote_into(&text[i..], &mut arg).map_err(|e| (i, e))?;
        args.push(arg);
        i += used;
        match text.get(i) {
            None => break,
            Some(b' ') if i + 1 < text.len() => i += 1,
            Some(_) => return Err((i, UnquoteError::MissingOpenQuote)),
        }
    }
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_byte_round_trips() {
        let all: Vec<u8> = (0..=255u8).collect();
        let q = quote(&all);
        assert_eq!(unquote(q.as_bytes()).unwrap(), all);
        for b in 0..=255u8 {
            assert_eq!(unquote(quote(&[b]).as_bytes()).unwrap(), vec![b]);
        }
    }

    #[test]
    fn matches_redis_examples() {
        assert_eq!(quote(b"quote\"key"), r#""quote\"key""#);
        assert_eq!(quote(b"bin\x00\x01\x7f"), r#""bin\x00\x01\x7f""#);
        assert_eq!(quote(b"bell\x07\x08"), r#""bell\a\b""#);
        assert_eq!(quote(b"\x07\x08\x0b\x0c"), r#""\a\b\x0b\x0c""#);
        assert_eq!(quote(b"sp ace'"), r#""sp ace'""#);
        assert_eq!(quote(b""), r#""""#);
    }

    #[test]
    fn splits_argument_lists() {
        let args = unquote_args(br#""SET" "a b" "\x00""#).unwrap();
        assert_eq!(args, vec![b"SET".to_vec(), b"a b".to_vec(), vec![0]]);
        assert_eq!(unquote_args(b"").unwrap(), Vec::<Vec<u8>>::new());
        assert!(unquote_args(br#""a""b""#).is_err());
        assert!(unquote_args(br#""a" "#).is_err());
    }

    #[test]
    fn rejects_corruption() {
        assert_eq!(unquote(b"abc"), Err(UnquoteError::MissingOpenQuote));
        assert_eq!(unquote(b"\"abc"), Err(UnquoteError::Unterminated));
        assert_eq!(unquote(b"\"a\\"), Err(UnquoteError::Unterminated));
        assert_eq!(
            unquote(b"\"a\\q\""),
            Err(UnquoteError::BadEscape { offset: 2 })
        );
        assert_eq!(
            unquote(b"\"\\x4\""),
            Err(UnquoteError::BadHex { offset: 1 })
        );
        assert_eq!(
            unquote(b"\"\\xZZ\""),
            Err(UnquoteError::BadHex { offset: 1 })
        );
    }
}
