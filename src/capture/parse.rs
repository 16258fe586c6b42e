//! The `MONITOR` line parser: `+<sec>.<usec> [<db> <peer>] "<arg0>" "<arg1>" …` to [`MonitorLine`].
//!
//! ## Behavior
//! - Arguments are decoded byte-exactly (the inverse of Redis's `sdscatrepr`, see
//!   [`crate::escape`]); nothing is treated as UTF-8.
//! - The command name is upper-cased in place; the other arguments are untouched.
//! - The peer is found by the first `] "` after the db, because IPv6 peers (`[::1]:5000`) contain
//!   `]` themselves.
//! - Anything else is a [`ParseError`] with the byte offset and the reason. The parser never
//!   panics, whatever the input (a property test holds it to that).

use std::fmt;
use std::net::SocketAddr;

use crate::command::Argv;
use crate::escape::{UnquoteError, unquote_into};

/// Who sent a logged command.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Peer {
    /// A TCP client, as `CLIENT INFO` shows it in `addr=`. On a replica, the master link.
    Tcp(SocketAddr),
    /// A command run by a Lua script or function.
    Lua,
    /// A unix-socket client; every such client shows the same server socket path.
    Unix(Box<[u8]>),
    /// Anything else Redis may print (for example `?:0` for a connection without a peer).
    Other(Box<[u8]>),
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Tcp(a) => write!(f, "{a}"),
            Peer::Lua => f.write_str("lua"),
            Peer::Unix(p) => write!(f, "unix:{}", String::from_utf8_lossy(p)),
            Peer::Other(p) => f.write_str(&String::from_utf8_lossy(p)),
        }
    }
}

/// One parsed `MONITOR` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonitorLine {
    /// Wall-clock time on the source when the line was produced, in microseconds since the epoch.
    /// For normal commands that is after execution; for scripts, before (docs/redis-behaviour.md §1).
    pub ts_us: u64,
    /// The client's selected db when the line was produced.
    pub db: u32,
    /// Who sent it.
    pub peer: Peer,
    /// The arguments, with the command name upper-cased.
    pub argv: Argv,
}

impl Default for MonitorLine {
    fn default() -> Self {
        MonitorLine {
            ts_us: 0,
            db: 0,
            peer: Peer::Lua,
            argv: Argv::new(),
        }
    }
}

/// What is wrong with a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ParseErrorKind {
    /// The line does not start with `+<digits>`.
    BadTimestamp,
    /// The `[` before the db is missing.
    MissingHeader,
    /// The db is not a decimal number followed by a space.
    BadDb,
    /// No `] "` closes the header.
    UnterminatedHeader,
    /// The peer is empty or an unparseable address.
    BadPeer,
    /// An argument is not quoted correctly.
    BadArgument(UnquoteError),
    /// Something other than ` "` follows an argument.
    BadSeparator,
}

/// A malformed line: where and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed MONITOR line at byte {offset}: {kind}")]
pub struct ParseError {
    /// Byte offset in the line (the leading `+` is offset 0 when present).
    pub offset: usize,
    /// The reason.
    pub kind: ParseErrorKind,
}

impl fmt::Display for ParseErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseErrorKind::BadTimestamp => f.write_str("expected a timestamp <sec>.<usec>"),
            ParseErrorKind::MissingHeader => f.write_str("expected '[' before the db"),
            ParseErrorKind::BadDb => f.write_str("expected a db number and a space"),
            ParseErrorKind::UnterminatedHeader => f.write_str("no '] \"' closes the header"),
            ParseErrorKind::BadPeer => f.write_str("unrecognised client address"),
            ParseErrorKind::BadArgument(e) => write!(f, "bad argument: {e}"),
            ParseErrorKind::BadSeparator => f.write_str("expected ' \"' between arguments"),
        }
    }
}

fn err(offset: usize, kind: ParseErrorKind) -> ParseError {
    ParseError { offset, kind }
}

/// Parses one line; it may carry the leading `+` and the trailing `\r\n`.
pub fn parse_line(line: &[u8]) -> Result<MonitorLine, ParseError> {
    let mut out = MonitorLine::default();
    parse_line_into(line, &mut out)?;
    Ok(out)
}

/// Parses one line into `out`, reusing its allocations. On error `out` holds no meaningful value.
pub fn parse_line_into(line: &[u8], out: &mut MonitorLine) -> Result<(), ParseError> {
    let line = line.strip_suffix(b"\r\n").unwrap_or(line);
    let mut i = usize::from(line.first() == Some(&b'+'));

    // Timestamp: <sec>.<usec>, usec printed with %06ld.
    let (sec, n) = parse_u64(&line[i..]).ok_or(err(i, ParseErrorKind::BadTimestamp))?;
    i += n;
    if line.get(i) != Some(&b'.') {
        return Err(err(i, ParseErrorKind::BadTimestamp));
    }
    i += 1;
    let (usec, n) = parse_u64(&line[i..]).ok_or(err(i, ParseErrorKind::BadTimestamp))?;
    if n != 6 {
        return Err(err(i, ParseErrorKind::BadTimestamp));
    }
    i += n;
    out.ts_us = sec
        .checked_mul(1_000_000)
        .and_then(|s| s.checked_add(usec))
        .ok_or(err(i, ParseErrorKind::BadTimestamp))?;

    if line.get(i..i + 2) != Some(b" [") {
        return Err(err(i, ParseErrorKind::MissingHeader));
    }
    i += 2;
    let (db, n) = parse_u64(&line[i..]).ok_or(err(i, ParseErrorKind::BadDb))?;
    out.db = u32::try_from(db).map_err(|_| err(i, ParseErrorKind::BadDb))?;
    i += n;
    if line.get(i) != Some(&b' ') {
        return Err(err(i, ParseErrorKind::BadDb));
    }
    i += 1;

    let peer_start = i;
    let close = find_header_end(&line[i..]).ok_or(err(i, ParseErrorKind::UnterminatedHeader))?;
    out.peer = parse_peer(&line[peer_start..peer_start + close])
        .ok_or(err(peer_start, ParseErrorKind::BadPeer))?;
    i = peer_start + close + 2;

    out.argv.clear();
    loop {
        let used = unquote_into(&line[i..], out.argv.buf_mut())
            .map_err(|e| err(i + unquote_offset(e), ParseErrorKind::BadArgument(e)))?;
        out.argv.finish_arg();
        i += used;
        match line.get(i) {
            None => break,
            Some(b' ') if line.get(i + 1) == Some(&b'"') => i += 1,
            Some(_) => return Err(err(i, ParseErrorKind::BadSeparator)),
        }
    }
    out.argv.uppercase_name();
    Ok(())
}

fn unquote_offset(e: UnquoteError) -> usize {
    match e {
        UnquoteError::BadEscape { offset } | UnquoteError::BadHex { offset } => offset,
        UnquoteError::MissingOpenQuote | UnquoteError::Unterminated => 0,
    }
}

/// The offset of the first `] "` (a `memmem` finder costs more to build than this short scan).
fn find_header_end(s: &[u8]) -> Option<usize> {
    let mut from = 0;
    loop {
        let j = memchr::memchr(b']', &s[from..])? + from;
        if s.get(j + 1..j + 3) == Some(b" \"") {
            return Some(j);
        }
        from = j + 1;
    }
}

/// Parses leading ASCII digits; returns the value and how many bytes were used.
fn parse_u64(s: &[u8]) -> Option<(u64, usize)> {
    let n = s.iter().take_while(|b| b.is_ascii_digit()).count();
    if n == 0 || n > 19 {
        return None;
    }
    let mut v: u64 = 0;
    for &b in &s[..n] {
        v = v.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some((v, n))
}

fn parse_peer(s: &[u8]) -> Option<Peer> {
    if s.is_empty() {
        return None;
    }
    if s == b"lua" {
        return Some(Peer::Lua);
    }
    if let Some(path) = s.strip_prefix(b"unix:") {
        return Some(Peer::Unix(path.into()));
    }
    let text = std::str::from_utf8(s).ok();
    match text.and_then(|t| t.parse::<SocketAddr>().ok()) {
        Some(addr) => Some(Peer::Tcp(addr)),
        None => Some(Peer::Other(s.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(l: &MonitorLine) -> Vec<Vec<u8>> {
        l.argv.iter().map(|a| a.to_vec()).collect()
    }

    #[test]
    fn parses_examples_from_redis() {
        let l = parse_line(
            b"+1795657696.408763 [0 127.0.0.1:34514] \"SET\" \"quote\\\"key\" \"va\\\"lue\"\r\n",
        )
        .unwrap();
        assert_eq!(l.ts_us, 1_795_657_696_408_763);
        assert_eq!(l.db, 0);
        assert_eq!(l.peer, Peer::Tcp("127.0.0.1:34514".parse().unwrap()));
        assert_eq!(
            args(&l),
            vec![b"SET".to_vec(), b"quote\"key".to_vec(), b"va\"lue".to_vec()]
        );

        let l = parse_line(br#"+1795657696.409408 [0 127.0.0.1:34514] "SET" "bin\x00\x01\x7f" "\x00\x01\x02\x1b\x7f""#).unwrap();
        assert_eq!(l.argv.get(1).unwrap(), b"bin\x00\x01\x7f");
        assert_eq!(l.argv.get(2).unwrap(), b"\x00\x01\x02\x1b\x7f");

        let l = parse_line(br#"+1795657696.410015 [0 127.0.0.1:34514] "SET" "empty" """#).unwrap();
        assert_eq!(l.argv.get(2).unwrap(), b"");
    }

    #[test]
    fn parses_peers_and_dbs() {
        let l = parse_line(br#"+1795658200.759903 [0 [::1]:49390] "ping""#).unwrap();
        assert_eq!(l.peer, Peer::Tcp("[::1]:49390".parse().unwrap()));
        assert_eq!(l.argv.name(), b"PING");

        let l = parse_line(br#"+1795658161.095933 [12 lua] "SET" "afterloop" "1""#).unwrap();
        assert_eq!((l.db, l.peer), (12, Peer::Lua));

        let l = parse_line(br#"+1795657707.933692 [5 unix:/tmp/redis.sock] "SELECT" "5""#).unwrap();
        assert_eq!(l.peer, Peer::Unix(b"/tmp/redis.sock".to_vec().into()));
        assert_eq!(l.db, 5);

        let l = parse_line(br#"+1.000000 [0 ?:0] "PING""#).unwrap();
        assert_eq!(l.peer, Peer::Other(b"?:0".to_vec().into()));
    }

    #[test]
    fn reports_offsets_and_reasons() {
        let cases: &[(&[u8], usize, ParseErrorKind)] = &[
            (b"", 0, ParseErrorKind::BadTimestamp),
            (b"+OK", 1, ParseErrorKind::BadTimestamp),
            (b"+12.34 [0 lua] \"X\"", 4, ParseErrorKind::BadTimestamp),
            (b"+1.000000 0 lua] \"X\"", 9, ParseErrorKind::MissingHeader),
            (b"+1.000000 [x lua] \"X\"", 11, ParseErrorKind::BadDb),
            (b"+1.000000 [0lua] \"X\"", 12, ParseErrorKind::BadDb),
            (
                b"+1.000000 [0 lua \"X\"",
                13,
                ParseErrorKind::UnterminatedHeader,
            ),
            (
                b"+1.000000 [0 lua] \"X\"\"Y\"",
                21,
                ParseErrorKind::BadSeparator,
            ),
            (
                b"+1.000000 [0 lua] \"X\" ",
                21,
                ParseErrorKind::BadSeparator,
            ),
            (
                b"+1.000000 [0 lua] \"X\" \"\\q\"",
                23,
                ParseErrorKind::BadArgument(UnquoteError::BadEscape { offset: 1 }),
            ),
            (
                b"+1.000000 [0 lua] \"X",
                18,
                ParseErrorKind::BadArgument(UnquoteError::Unterminated),
            ),
        ];
        for (line, offset, kind) in cases {
            let e = parse_line(line).unwrap_err();
            assert_eq!(
                (e.offset, e.kind),
                (*offset, *kind),
                "{}",
                String::from_utf8_lossy(line)
            );
        }
    }
}
