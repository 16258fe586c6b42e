//! `MonitorStream`: a raw connection in `MONITOR` mode, yielding parsed lines.
//!
//! Reading and parsing happen on the caller's task with a large read buffer. The stream never
//! waits on anything but the socket, so a consumer that keeps calling [`MonitorStream::next`]
//! keeps the source's output buffer for this client near empty (docs/redis-behaviour.md §7).

use super::parse::{MonitorLine, ParseError, parse_line_into};
use crate::escape::Quoted;
use crate::net::framing::Frame;
use crate::net::{Endpoint, NetError, RawConn, Reply};

/// Why the stream stopped or a line was rejected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaptureError {
    /// Connecting or reading failed.
    #[error(transparent)]
    Net(#[from] NetError),
    /// The server refused `MONITOR`.
    #[error("{endpoint} refused MONITOR: {message}")]
    Refused { endpoint: String, message: String },
    /// One line did not parse; the stream itself is still usable.
    #[error("{endpoint}: line {line_no}: {error}: {excerpt}")]
    Parse {
        endpoint: String,
        line_no: u64,
        error: ParseError,
        excerpt: String,
    },
    /// The server ended the stream with an error line (for example when the client was killed).
    #[error("{endpoint} ended MONITOR: {message}")]
    ServerError { endpoint: String, message: String },
}

/// A live `MONITOR` stream.
#[derive(Debug)]
pub struct MonitorStream {
    conn: RawConn,
    line: MonitorLine,
    lines: u64,
    bytes: u64,
    client_id: Option<i64>,
}

impl MonitorStream {
    /// Connects, names the connection `ferry-monitor` (so operators can see it in
    /// `CLIENT LIST`), and enters `MONITOR` mode.
    pub async fn start(ep: &Endpoint) -> Result<MonitorStream, CaptureError> {
        let mut conn = ep.raw().await?;
        conn.expect_ok(&[b"CLIENT", b"SETNAME", b"ferry-monitor"])
            .await?;
        let client_id = match conn.request(&[b"CLIENT", b"ID"]).await? {
            Reply::Int(id) => Some(id),
            _ => None,
        };
        match conn.request(&[b"MONITOR"]).await? {
            Reply::Status(s) if s == "OK" => {}
            Reply::Error(message) => {
                return Err(CaptureError::Refused {
                    endpoint: ep.redacted().to_string(),
                    message,
                });
            }
            other => {
                return Err(CaptureError::Refused {
                    endpoint: ep.redacted().to_string(),
                    message: format!("unexpected reply {other:?}"),
                });
            }
        }
        Ok(MonitorStream {
            conn,
            line: MonitorLine::default(),
            lines: 0,
            bytes: 0,
            client_id,
        })
    }

    /// The server's id for this connection (`CLIENT ID`), to watch its output buffer.
    pub fn client_id(&self) -> Option<i64> {
        self.client_id
    }

    /// Lines received so far.
    pub fn lines(&self) -> u64 {
        self.lines
    }

    /// Bytes of lines received so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The next line; `Ok(None)` when the server closed the connection cleanly.
    ///
    /// A line that does not parse is returned as [`CaptureError::Parse`]; calling `next` again
    /// continues with the following line.
    pub async fn next(&mut self) -> Result<Option<&MonitorLine>, CaptureError> {
        loop {
            match self.poll_line() {
                Some(Ok(())) => return Ok(Some(&self.line)),
                Some(Err(e)) => return Err(e),
                None => {}
            }
            if self.fill().await? == 0 {
                return Ok(None);
            }
        }
    }

    /// The next line if one is already buffered; `None` when more bytes must be read first.
    pub fn try_next(&mut self) -> Option<Result<&MonitorLine, CaptureError>> {
        self.poll_line().map(|r| r.map(|()| &self.line))
    }

    /// Parses the next buffered line into `self.line`.
    fn poll_line(&mut self) -> Option<Result<(), CaptureError>> {
        let endpoint = self.conn.endpoint().to_string();
        let frame = self.conn.framer().next_frame()?;
        let raw = match frame {
            Frame::Line(raw) => raw,
            Frame::Error(raw) | Frame::Unexpected(raw) => {
                return Some(Err(CaptureError::ServerError {
                    endpoint,
                    message: String::from_utf8_lossy(raw).into_owned(),
                }));
            }
        };
        self.lines += 1;
        self.bytes += raw.len() as u64 + 2;
        if let Err(error) = parse_line_into(raw, &mut self.line) {
            let excerpt = Quoted(&raw[..raw.len().min(120)]).to_string();
            return Some(Err(CaptureError::Parse {
                endpoint,
                line_no: self.lines,
                error,
                excerpt,
            }));
        }
        Some(Ok(()))
    }

    /// Reads more bytes from the socket; `Ok(0)` when the server closed the connection.
    pub async fn fill(&mut self) -> Result<usize, CaptureError> {
        Ok(self.conn.fill().await?)
    }
}
