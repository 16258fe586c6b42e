//! A raw RESP connection over TCP, TLS or a unix socket. `MONITOR` needs the bytes exactly as the
//! server sent them, which redis-rs does not expose, so capture talks RESP itself.

use std::sync::Arc;

use redis::ConnectionAddr;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::framing::{Frame, Framer};
use super::{Endpoint, NetError};

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
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
    pub(super) async fn connect(ep: &Endpoint) -> Result<RawConn, NetError> {
        let endpoint = ep.redacted().to_string();
        let unreachable = |e: std::io::Error| NetError::Unreachable {
            endpoint: endpoint.clone(),
            source: e,
        };
        let stream: Box<dyn Stream> = match ep.addr() {
            ConnectionAddr::Tcp(host, port) => {
                let s = tokio::net::TcpStream::connect((host.as_str(), *port))
                    .await
                    .map_err(unreachable)?;
                s.set_nodelay(true).ok();
                Box::new(s)
            }
            ConnectionAddr::TcpTls {
                host,
                port,
                insecure,
                ..
            } => {
                let s = tokio::net::TcpStream::connect((host.as_str(), *port))
                    .await
                    .map_err(unreachable)?;
                s.set_nodelay(true).ok();
                Box::new(tls_connect(s, host, *insecure, &endpoint).await?)
            }
            ConnectionAddr::Unix(path) => Box::new(
                tokio::net::UnixStream::connect(path)
                    .await
                    .map_err(unreachable)?,
            ),
            other => {
                return Err(NetError::InvalidUrl {
                    url: endpoint.clone(),
                    reason: format!("unsupported address {other:?}"),
                });
            }
        };
        let mut conn = RawConn {
            stream,
            framer: Framer::new(),
            endpoint,
        };
        let settings = ep.info().redis_settings();
        if let Some(pass) = settings.password() {
            let reply = match settings.username() {
                Some(user) => {
                    conn.request(&[b"AUTH", user.as_bytes(), pass.as_bytes()])
                        .await?
                }
                None => conn.request(&[b"AUTH", pass.as_bytes()]).await?,
            };
            if let Reply::Error(message) = reply {
                return Err(NetError::Auth {
                    endpoint: conn.endpoint.clone(),
                    message,
                });
            }
        }
        Ok(conn)
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

    /// Sends one command and reads its reply.
    pub async fn request(&mut self, args: &[&[u8]]) -> Result<Reply, NetError> {
        let mut out = Vec::new();
        encode_command(&mut out, args);
        self.stream
            .write_all(&out)
            .await
            .map_err(|e| self.io_err(e))?;
        self.read_reply().await
    }

    /// Sends one command without reading its reply (a subscription's replies are messages).
    pub async fn send(&mut self, args: &[&[u8]]) -> Result<(), NetError> {
        let mut out = Vec::new();
        encode_command(&mut out, args);
        self.stream
            .write_all(&out)
            .await
            .map_err(|e| self.io_err(e))
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
        let n = self.stream.read_buf(buf).await.map_err(|e| NetError::Io {
            endpoint: self.endpoint.clone(),
            message: e.to_string(),
        })?;
        Ok(n)
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

async fn tls_connect(
    tcp: tokio::net::TcpStream,
    host: &str,
    insecure: bool,
    endpoint: &str,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, NetError> {
    let tls_err = |m: String| NetError::Tls {
        endpoint: endpoint.to_string(),
        message: m,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(e.to_string()))?;
    let config = if insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(insecure::AcceptAny(provider)))
            .with_no_client_auth()
    } else {
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    let name = rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| tls_err(e.to_string()))?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| tls_err(e.to_string()))
}

/// The `#insecure` URL fragment: the user explicitly turned certificate checks off.
mod insecure {
    use rustls::DigitallySignedStruct;
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use std::sync::Arc;

    #[derive(Debug)]
    pub(super) struct AcceptAny(pub Arc<rustls::crypto::CryptoProvider>);

    impl ServerCertVerifier for AcceptAny {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                m,
                c,
                d,
                &self.0.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                m,
                c,
                d,
                &self.0.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
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
    /// Writes all of `buf`.
    pub async fn write_all(&mut self, buf: &[u8]) -> Result<(), NetError> {
        self.write.write_all(buf).await.map_err(|e| NetError::Io {
            endpoint: self.endpoint.clone(),
            message: e.to_string(),
        })
    }
}
