//! Splits the raw `MONITOR` byte stream into lines without copying them.
//!
//! Every `MONITOR` line is a RESP simple string (`+…\r\n`); the server may also end the stream
//! with an error line (`-ERR …\r\n`), for example when it kills the client. Redis escapes CR and
//! LF inside arguments, so a `\r\n` always ends a line.

/// Accumulates bytes read from the socket and hands out complete lines.
#[derive(Debug, Default)]
pub struct Framer {
    buf: Vec<u8>,
    start: usize,
}

/// One complete line of the stream, without its `\r\n`.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// `+…`: a monitor line (or the `+OK` that answers `MONITOR`), leading `+` included.
    Line(&'a [u8]),
    /// `-…`: the server reports an error and will close the connection.
    Error(&'a [u8]),
    /// Anything else: the stream is not a `MONITOR` stream.
    Unexpected(&'a [u8]),
}

impl Framer {
    /// An empty framer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Drops consumed bytes and returns the buffer to append freshly read bytes to.
    pub fn read_buf(&mut self) -> &mut Vec<u8> {
        if self.start > 0 && (self.start == self.buf.len() || self.start > 64 * 1024) {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        &mut self.buf
    }

    /// Appends bytes (a convenience over [`Framer::read_buf`]).
    pub fn extend(&mut self, data: &[u8]) {
        self.read_buf().extend_from_slice(data);
    }

    /// Bytes received but not yet returned as a frame.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The bytes received but not yet consumed.
    pub(crate) fn unconsumed(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// Marks `n` buffered bytes as consumed.
    pub(crate) fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.buf.len());
    }

    /// Removes and returns the next `n` buffered bytes (the caller checked [`Framer::pending`]).
    pub(crate) fn take(&mut self, n: usize) -> &[u8] {
        let start = self.start;
        self.start += n;
        &self.buf[start..start + n]
    }

    /// The next complete frame, if one is buffered.
    pub fn next_frame(&mut self) -> Option<Frame<'_>> {
        let rest = &self.buf[self.start..];
        let mut from = 0;
        let end = loop {
            let nl = memchr::memchr(b'\n', &rest[from..])? + from;
            if nl > 0 && rest[nl - 1] == b'\r' {
                break nl - 1;
            }
            // A bare LF cannot occur inside a well-formed line; keep it so the parser reports it.
            from = nl + 1;
        };
        self.start += end + 2;
        let line = &rest[..end];
        Some(match line.first() {
            Some(b'+') => Frame::Line(line),
            Some(b'-') => Frame::Error(line),
            _ => Frame::Unexpected(line),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_across_reads() {
        let mut f = Framer::new();
        f.extend(b"+OK\r\n+1.000000 [0 lua] \"SET\" \"a\"");
        assert_eq!(f.next_frame(), Some(Frame::Line(b"+OK")));
        assert_eq!(f.next_frame(), None);
        f.extend(b" \"b\"\r");
        assert_eq!(f.next_frame(), None);
        f.extend(b"\n-ERR killed\r\n*1\r\n");
        assert_eq!(
            f.next_frame(),
            Some(Frame::Line(b"+1.000000 [0 lua] \"SET\" \"a\" \"b\""))
        );
        assert_eq!(f.next_frame(), Some(Frame::Error(b"-ERR killed")));
        assert_eq!(f.next_frame(), Some(Frame::Unexpected(b"*1")));
        assert_eq!(f.next_frame(), None);
        assert_eq!(f.pending(), 0);
    }
}
