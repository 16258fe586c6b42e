//! A raw RESP connection over TCP, TLS or a unix socket. `MONITOR` needs the bytes exactly as the
//! server sent them, which redis-rs does not expose, so capture talks RESP itself.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::NetError;
use super::framing::{Frame, Framer};
use super::tls::TlsSetup;

/// A byte stream to a server: TCP, TLS over TCP, or a unix socket.
pub(crate) trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// A reply to a handshake command. Only the shapes the handshake needs are decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+…`
    Status(String),
    /// `:…`
    Int(i64),
    /// `$…` (`None` for nil)
    Bulk(Option<Vec<u8>>),
    /// `-…`
    Error(String),
}

/// An authenticated raw connection.
pub struct RawConn {
    stream: Box<dyn Stream>,
    framer: Framer,
    endpoint: String,
    /// The endpoint's TLS settings, to word a TLS alert that ends the connection.
    tls: Option<TlsSetup>,
}

impl std::fmt::Debug for RawConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RawConn({})", self.endpoint)
    }
}

/// Encodes a command as a RESP array of bulk strings.
pub fn encode_command(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

impl RawConn {
    /// A raw connection over `stream`, before any command was sent on it.
    pub(super) fn new(stream: Box<dyn Stream>, endpoint: String, tls: Option<TlsSetup>) -> RawConn {
        RawConn {
            stream,
            framer: Framer::new(),
            endpoint,
            tls,
        }
    }

    /// The stream, for a redis-rs connection to take over; `None` when bytes are buffered that
    /// redis-rs would not see (the server sent more than the replies read).
    pub(super) fn into_stream(self) -> Option<Box<dyn Stream>> {
        (self.framer.pending() == 0).then_some(self.stream)
    }

    /// The endpoint, redacted.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn io_err(&self, e: impl std::fmt::Display) -> NetError {
        NetError::Io {
            endpoint: self.endpoint.clone(),
            message: e.to_string(),
        }
    }

    /// A read or write failure; a TLS alert from the server (a client certificate it requires,
    /// under TLS 1.3, arrives only after the handshake) is told as the TLS problem it is.
    fn stream_err(&self, e: std::io::Error) -> NetError {
        match self
            .tls
            .as_ref()
            .and_then(|t| super::tls::describe_io(&e, t))
        {
            Some(message) => NetError::Tls {
                endpoint: self.endpoint.clone(),
                message,
            },
            None => self.io_err(e),
        }
    }

    /// Sends one command and reads its reply.
    pub async fn request(&mut self, args: &[&[u8]]) -> Result<Reply, NetError> {
        let mut out = Vec::new();
        encode_command(&mut out, args);
        // TLS buffers what it cannot write at once until a flush; TCP's flush does nothing.
        let written = match self.stream.write_all(&out).await {
            Ok(()) => self.stream.flush().await,
            Err(e) => Err(e),
        };
        written.map_err(|e| self.stream_err(e))?;
        self.read_reply().await
    }

    /// Sends one command without reading its reply (a subscription's replies are messages).
    pub async fn send(&mut self, args: &[&[u8]]) -> Result<(), NetError> {
        let mut out = Vec::new();
        encode_command(&mut out, args);
        let written = match self.stream.write_all(&out).await {
            Ok(()) => self.stream.flush().await,
            Err(e) => Err(e),
        };
        written.map_err(|e| self.stream_err(e))
    }

    /// Reads one array reply of simple elements, such as a pub/sub message; an error reply
    /// becomes [`NetError::Server`] naming `command`.
    pub async fn read_array(&mut self, command: &str) -> Result<Vec<Reply>, NetError> {
        let line = self.read_line().await?;
        match line.first() {
            Some(b'*') => {
                let n: i64 = String::from_utf8_lossy(&line[1..])
                    .parse()
                    .map_err(|_| self.io_err("bad array length"))?;
                let mut out = Vec::with_capacity(n.clamp(0, 16) as usize);
                for _ in 0..n.max(0) {
                    out.push(self.read_reply().await?);
                }
                Ok(out)
            }
            Some(b'-') => Err(NetError::Server {
                endpoint: self.endpoint.clone(),
                command: command.to_string(),
                message: String::from_utf8_lossy(&line[1..]).into_owned(),
            }),
            _ => Err(self.io_err(format!("unexpected reply {}", crate::escape::Quoted(&line)))),
        }
    }

    /// Sends a command and fails unless the reply is `+OK`-like, naming the command on failure.
    pub async fn expect_ok(&mut self, args: &[&[u8]]) -> Result<(), NetError> {
        match self.request(args).await? {
            Reply::Error(message) => Err(NetError::Server {
                endpoint: self.endpoint.clone(),
                command: String::from_utf8_lossy(args[0]).into_owned(),
                message,
            }),
            _ => Ok(()),
        }
    }

    /// Reads more bytes into the framer; `Ok(0)` means the server closed the connection.
    pub async fn fill(&mut self) -> Result<usize, NetError> {
        let buf = self.framer.read_buf();
        buf.reserve(256 * 1024);
        match self.stream.read_buf(buf).await {
            Ok(n) => Ok(n),
            Err(e) => Err(self.stream_err(e)),
        }
    }

    /// Splits the connection so that commands can be written while replies are read.
    pub fn split(self) -> (RawReader, RawWriter) {
        let (read, write) = tokio::io::split(self.stream);
        (
            RawReader {
                read,
                framer: self.framer,
                endpoint: self.endpoint.clone(),
            },
            RawWriter {
                write,
                endpoint: self.endpoint,
            },
        )
    }

    /// The framer holding bytes read but not yet consumed.
    pub fn framer(&mut self) -> &mut Framer {
        &mut self.framer
    }

    async fn read_line(&mut self) -> Result<Vec<u8>, NetError> {
        loop {
            if let Some(frame) = self.framer.next_frame() {
                let line = match frame {
                    Frame::Line(l) | Frame::Error(l) | Frame::Unexpected(l) => l.to_vec(),
                };
                return Ok(line);
            }
            if self.fill().await? == 0 {
                return Err(self.io_err("server closed the connection"));
            }
        }
    }

    async fn read_reply(&mut self) -> Result<Reply, NetError> {
        let line = self.read_line().await?;
        let text = || String::from_utf8_lossy(&line[1..]).into_owned();
        match line.first() {
            Some(b'+') => Ok(Reply::Status(text())),
            Some(b'-') => Ok(Reply::Error(text())),
            Some(b':') => text()
                .parse()
                .map(Reply::Int)
                .map_err(|_| self.io_err("bad integer reply")),
            Some(b'$') => {
                let len: i64 = text().parse().map_err(|_| self.io_err("bad bulk length"))?;
                if len < 0 {
                    return Ok(Reply::Bulk(None));
                }
                let len = len as usize;
                while self.framer.pending() < len + 2 {
                    if self.fill().await? == 0 {
                        return Err(self.io_err("server closed the connection"));
                    }
                }
                let data = self.framer.take(len + 2);
                Ok(Reply::Bulk(Some(data[..len].to_vec())))
            }
            _ => Err(self.io_err(format!("unexpected reply {}", crate::escape::Quoted(&line)))),
        }
    }
}

/// The reading half of a split [`RawConn`].
pub struct RawReader {
    read: tokio::io::ReadHalf<Box<dyn Stream>>,
    framer: Framer,
    endpoint: String,
}

impl RawReader {
    /// Reads more bytes; `Ok(0)` when the server closed the connection.
    pub async fn fill(&mut self) -> Result<usize, NetError> {
        let buf = self.framer.read_buf();
        buf.reserve(256 * 1024);
        self.read.read_buf(buf).await.map_err(|e| NetError::Io {
            endpoint: self.endpoint.clone(),
            message: e.to_string(),
        })
    }

    /// Bytes read and not yet consumed.
    pub fn unconsumed(&self) -> &[u8] {
        self.framer.unconsumed()
    }

    /// Consumes `n` bytes.
    pub fn consume(&mut self, n: usize) {
        self.framer.consume(n);
    }
}

/// The writing half of a split [`RawConn`].
pub struct RawWriter {
    write: tokio::io::WriteHalf<Box<dyn Stream>>,
    endpoint: String,
}

impl RawWriter {
    /// Writes all of `buf` and flushes it: a TLS stream keeps what the socket did not take
    /// at once in its buffer until a flush, which would stall a pipeline waiting for replies.
    pub async fn write_all(&mut self, buf: &[u8]) -> Result<(), NetError> {
        let written = match self.write.write_all(buf).await {
            Ok(()) => self.write.flush().await,
            Err(e) => Err(e),
        };
        written.map_err(|e| NetError::Io {
            endpoint: self.endpoint.clone(),
            message: e.to_string(),
        })
    }
}
