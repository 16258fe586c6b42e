//! Where ferry connects: Redis URLs, redacted display, control connections (redis-rs) and raw
//! RESP connections (for `MONITOR`), with errors that name the endpoint and never the password.
//!
//! URLs follow redis-rs: `redis://[user:pass@]host:port[/db]`, `rediss://…` for TLS (certificates
//! verified unless the URL ends in `#insecure`; CA bundle, client certificate and server name
//! from [`TlsOptions`]), and `redis+unix:///path?db=N&pass=…`. Every connection is opened by
//! `connect::open`.

pub mod cluster;
mod connect;
mod engine;
pub mod framing;
mod nodes;
mod raw;
pub mod resp;
mod tls;

pub use engine::{Engine, EngineKind};
pub use nodes::{NodesCell, SourceNodes};
use std::io;
use std::time::Duration;

use redis::{ConnectionAddr, IntoConnectionInfo};

pub use raw::{RawConn, RawReader, RawWriter, Reply, encode_command};
pub use tls::TlsOptions;

/// How long a connection attempt (TCP, TLS and AUTH together) may take.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a control connection waits for one reply before giving up on the connection.
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);

/// Why ferry could not talk to a server. Every variant names the endpoint, redacted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// The URL does not parse.
    #[error("invalid Redis URL '{url}': {reason}")]
    InvalidUrl { url: String, reason: String },
    /// Nothing answered at the address.
    #[error("cannot connect to {endpoint}: {source}")]
    Unreachable { endpoint: String, source: io::Error },
    /// The connection attempt did not finish in time.
    #[error("timed out after {secs}s connecting to {endpoint}")]
    Timeout { endpoint: String, secs: u64 },
    /// The server refused the credentials.
    #[error("authentication failed for {endpoint}: {message}")]
    Auth { endpoint: String, message: String },
    /// The TLS handshake or certificate check failed.
    #[error("TLS with {endpoint} failed: {message}")]
    Tls { endpoint: String, message: String },
    /// The endpoint's TLS settings cannot be used (a file missing, a key without its
    /// certificate, TLS settings for a `redis://` URL).
    #[error("TLS settings for {endpoint}: {message}")]
    TlsConfig { endpoint: String, message: String },
    /// ferry's user on that server may not run commands ferry needs (ACL `NOPERM`).
    #[error("missing permissions on the {side} {endpoint}: {message}")]
    Permission {
        endpoint: String,
        side: &'static str,
        message: String,
    },
    /// The server answered a command with an error.
    #[error("{endpoint} rejected {command}: {message}")]
    Server {
        endpoint: String,
        command: String,
        message: String,
    },
    /// The connection broke or the server sent something that is not RESP.
    #[error("connection to {endpoint} failed: {message}")]
    Io { endpoint: String, message: String },
}

/// A parsed Redis URL. Its `Display` is the URL with the password replaced by `***`.
#[derive(Clone)]
pub struct Endpoint {
    info: redis::ConnectionInfo,
    redacted: String,
    /// The TLS settings given for this endpoint (paths only).
    tls_options: TlsOptions,
    /// The client configuration for a `rediss://` URL, built once from `tls_options`.
    tls: Option<tls::TlsSetup>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Endpoint({})", self.redacted)
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted)
    }
}

impl Endpoint {
    /// Parses and validates a URL; the error shows the URL redacted. A `rediss://` URL trusts
    /// the default roots (see [`TlsOptions`]).
    pub fn parse(url: &str) -> Result<Endpoint, NetError> {
        Endpoint::parse_with_tls(url, &TlsOptions::default())
    }

    /// Parses a URL and applies TLS settings to it: the CA bundle, client certificate and key
    /// are read here, so a missing or unusable file is an error before anything connects.
    ///
    /// ## Behavior
    /// TLS settings on a `redis://` or unix-socket URL are refused rather than ignored: the
    /// user meant TLS, and a plain connection would send the password in clear.
    pub fn parse_with_tls(url: &str, options: &TlsOptions) -> Result<Endpoint, NetError> {
        let mut ep = Endpoint::parse_url(url)?;
        let setup = match ep.info.addr() {
            ConnectionAddr::TcpTls { host, insecure, .. } => {
                Some(tls::setup(host, *insecure, options).map_err(|message| {
                    NetError::TlsConfig {
                        endpoint: ep.redacted.clone(),
                        message,
                    }
                })?)
            }
            _ if !options.is_empty() => {
                return Err(NetError::TlsConfig {
                    endpoint: ep.redacted.clone(),
                    message: "TLS settings (CA, client certificate or server name) were given for a URL without TLS; use rediss://".into(),
                });
            }
            _ => None,
        };
        ep.tls = setup;
        ep.tls_options = options.clone();
        Ok(ep)
    }

    /// The TLS settings this endpoint was given.
    pub fn tls_options(&self) -> &TlsOptions {
        &self.tls_options
    }

    fn parse_url(url: &str) -> Result<Endpoint, NetError> {
        let redacted = redact_url(url);
        let info = url
            .into_connection_info()
            .map_err(|e| NetError::InvalidUrl {
                url: redacted.clone(),
                reason: redis_reason(&e),
            })?;
        if let ConnectionAddr::Tcp(host, _) | ConnectionAddr::TcpTls { host, .. } = info.addr()
            && host.is_empty()
        {
            return Err(NetError::InvalidUrl {
                url: redacted,
                reason: "no host".into(),
            });
        }
        Ok(Endpoint {
            info,
            redacted,
            tls_options: TlsOptions::default(),
            tls: None,
        })
    }

    /// The URL with its password redacted.
    pub fn redacted(&self) -> &str {
        &self.redacted
    }

    /// The db the URL selects (0 when absent).
    pub fn db(&self) -> i64 {
        self.info.redis_settings().db()
    }

    /// The same endpoint with another db selected.
    pub fn with_db(&self, db: i64) -> Endpoint {
        let redis = self.info.redis_settings().clone().set_db(db);
        Endpoint {
            info: self.info.clone().set_redis_settings(redis),
            ..self.clone()
        }
    }

    /// The same credentials and db at another host and port (a replica of this node, say).
    pub fn with_host_port(&self, host: &str, port: u16) -> Endpoint {
        let addr = match self.info.addr() {
            ConnectionAddr::TcpTls {
                insecure,
                tls_params,
                ..
            } => ConnectionAddr::TcpTls {
                host: host.to_string(),
                port,
                insecure: *insecure,
                tls_params: tls_params.clone(),
            },
            _ => ConnectionAddr::Tcp(host.to_string(), port),
        };
        // The redacted text keeps scheme and masked userinfo; only host and port change.
        let (auth_start, at) = split_userinfo(&self.redacted);
        let prefix = &self.redacted[..at.map_or(auth_start, |at| at + 1)];
        let redacted = if host.contains(':') {
            format!("{prefix}[{host}]:{port}")
        } else {
            format!("{prefix}{host}:{port}")
        };
        // Without a server-name override, the other host's certificate is checked against
        // that host's name.
        let mut tls = self.tls.clone();
        if let Some(setup) = tls.as_mut()
            && self.tls_options.server_name.is_none()
            && let Ok(name) = rustls::pki_types::ServerName::try_from(host.to_string())
        {
            setup.server_name = name;
        }
        Endpoint {
            info: self.info.clone().set_addr(addr),
            redacted,
            tls_options: self.tls_options.clone(),
            tls,
        }
    }

    /// The address part, for matching against `CLIENT INFO` and cluster nodes.
    pub fn addr(&self) -> &ConnectionAddr {
        self.info.addr()
    }

    /// Opens a multiplexed control connection and checks it with `PING`.
    pub async fn control(&self) -> Result<redis::aio::MultiplexedConnection, NetError> {
        let connect = async {
            // Connected, TLS'd and authenticated by ferry's one path; redis-rs takes the stream
            // over and only selects the db (so it never sees the password).
            let conn = connect::open(self).await?;
            let stream = conn.into_stream().ok_or_else(|| NetError::Io {
                endpoint: self.redacted.clone(),
                message: "unexpected bytes after the handshake reply".into(),
            })?;
            let settings = self.info.redis_settings();
            let redis_info = redis::RedisConnectionInfo::default()
                .set_db(settings.db())
                .set_protocol(settings.protocol());
            // redis-rs answers "timed out" after 500 ms by default; a DUMP of a big key or a
            // large fenced read under load can take longer than that without anything wrong.
            let config = redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(DEFAULT_CONNECT_TIMEOUT))
                .set_response_timeout(Some(DEFAULT_RESPONSE_TIMEOUT));
            let (con, driver) =
                redis::aio::MultiplexedConnection::new_with_config(&redis_info, stream, config)
                    .await
                    .map_err(|e| self.classify(&e))?;
            // The driver ends when the last clone of the connection is dropped.
            tokio::spawn(driver);
            Ok::<_, NetError>(con)
        };
        match tokio::time::timeout(DEFAULT_CONNECT_TIMEOUT, connect).await {
            Err(_) => Err(NetError::Timeout {
                endpoint: self.redacted.clone(),
                secs: DEFAULT_CONNECT_TIMEOUT.as_secs(),
            }),
            Ok(r) => r,
        }
    }

    /// Opens a raw RESP connection (authenticated, db not selected), for `MONITOR`.
    pub async fn raw(&self) -> Result<RawConn, NetError> {
        match tokio::time::timeout(DEFAULT_CONNECT_TIMEOUT, connect::open(self)).await {
            Err(_) => Err(NetError::Timeout {
                endpoint: self.redacted.clone(),
                secs: DEFAULT_CONNECT_TIMEOUT.as_secs(),
            }),
            Ok(r) => r,
        }
    }

    /// Maps a redis-rs error to what the user needs to know, by kind rather than by text where
    /// redis-rs offers a kind.
    pub fn classify(&self, e: &redis::RedisError) -> NetError {
        let endpoint = self.redacted.clone();
        if e.is_connection_refusal() {
            return NetError::Unreachable {
                endpoint,
                source: io::Error::new(io::ErrorKind::ConnectionRefused, redis_reason(e)),
            };
        }
        let code = e.code().unwrap_or_default();
        let detail = e.detail().unwrap_or_default();
        let auth_words = detail.contains("AUTH") || detail.contains("password");
        if e.kind() == redis::ErrorKind::AuthenticationFailed
            || matches!(code, "WRONGPASS" | "NOAUTH" | "NOPERM")
            || (code == "ERR" && auth_words)
        {
            return NetError::Auth {
                endpoint,
                message: redact_text(&redis_reason(e), self),
            };
        }
        if e.is_timeout() {
            return NetError::Timeout {
                endpoint,
                secs: DEFAULT_CONNECT_TIMEOUT.as_secs(),
            };
        }
        // TLS failures never get here: the handshake and the first round trip (where a TLS
        // alert from the server arrives) are `connect::open`'s, with rustls's typed errors.
        let message = redact_text(&redis_reason(e), self);
        if e.is_io_error() {
            return NetError::Unreachable {
                endpoint,
                source: io::Error::other(message),
            };
        }
        NetError::Io { endpoint, message }
    }

    pub(crate) fn info(&self) -> &redis::ConnectionInfo {
        &self.info
    }
}

/// redis-rs builds rustls without choosing a crypto provider; pick ring once per process so that
/// `rediss://` works (build-notes: the "CryptoProvider" panic).
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// This connection's address as the server sees it (`CLIENT INFO` `addr=`), which is also how
/// `MONITOR` names it; ferry registers its own connections by it.
pub async fn client_addr(
    con: &mut redis::aio::MultiplexedConnection,
) -> redis::RedisResult<String> {
    let field = |line: &str, k: &str| {
        line.split_whitespace()
            .find_map(|f| f.strip_prefix(k))
            .map(str::to_string)
    };
    match redis::cmd("CLIENT")
        .arg("INFO")
        .query_async::<String>(con)
        .await
    {
        Ok(info) => return Ok(field(&info, "addr=").unwrap_or_default()),
        // `CLIENT INFO` is Redis 6.2's: before it, the connection names itself uniquely and
        // finds that name in `CLIENT LIST` (named `ferry-…`, so ferry's own checks skip it).
        Err(e) if !e.is_io_error() && !e.is_connection_dropped() && !e.is_timeout() => {}
        Err(e) => return Err(e),
    }
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let name = format!(
        "ferry-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    redis::cmd("CLIENT")
        .arg("SETNAME")
        .arg(&name)
        .query_async::<()>(con)
        .await?;
    let list: String = redis::cmd("CLIENT").arg("LIST").query_async(con).await?;
    Ok(list
        .lines()
        .find(|l| field(l, "name=").as_deref() == Some(name.as_str()))
        .and_then(|l| field(l, "addr="))
        .unwrap_or_default())
}

/// A redis-rs error as one line, without the redundant kind prefix where there is a detail.
fn redis_reason(e: &redis::RedisError) -> String {
    short_error(e, |_| None)
}

/// A redis-rs error as one short line. A pipeline's or a transaction's errors (redis-rs lists
/// every one of them: a batch of 500 keys refused with `MOVED` makes 20 kB) become the first,
/// the key its command named (from `key_of` by the command's index), and how many others.
pub fn short_error(e: &redis::RedisError, key_of: impl Fn(usize) -> Option<String>) -> String {
    let text = e.to_string();
    let aborted = text.starts_with("Transaction aborted");
    let batch = aborted || text.starts_with("Pipeline failure");
    let items = match e.clone().into_server_errors() {
        Some(items) if batch && !items.is_empty() => items,
        _ => return text.replace('\n', " "),
    };
    let (index, first) = &items[0];
    let mut out = String::new();
    if aborted {
        out.push_str("transaction aborted: ");
    }
    // As the server sent it (`MOVED 3999 10.0.0.2:6379`), not redis-rs's rewording.
    out.push_str(first.code());
    if let Some(d) = first.details() {
        out.push(' ');
        out.push_str(&d.replace('\n', " "));
    }
    if let Some(key) = key_of(*index) {
        out.push_str(&format!(" (key {key})"));
    }
    match items.len() - 1 {
        0 => {}
        1 => out.push_str(" and 1 other error"),
        n => out.push_str(&format!(" and {n} other errors")),
    }
    out
}

/// Removes the endpoint's password from arbitrary text, in case a library echoed it.
fn redact_text(text: &str, ep: &Endpoint) -> String {
    match ep.info.redis_settings().password() {
        Some(p) if !p.is_empty() => text.replace(p, "***"),
        _ => text.to_string(),
    }
}

/// The URL with the password (userinfo or `pass=`/`password=` query) replaced by `***`.
///
/// ## Behavior
/// Works on any text, not only URLs that parse, because the text it protects most is the one in
/// an "invalid Redis URL" message:
/// - Userinfo is everything from the authority start (after an optional `scheme:` and any
///   slashes) to the *last* `@` of the text. A strict URL reader would stop the authority at the
///   first `/`, `?` or `#`, but users paste base64 and ElastiCache passwords unencoded, and those
///   contain `/`, `?` and `#`; masking a little too much is harmless, showing a password is not.
///   The part before the first `:` is the user name and stays; without a `:`, redis-rs reads a
///   lone userinfo as the password, so all of it goes.
/// - Unix-socket URLs (`redis+unix:///path`) have a path after `//`, which may hold an `@`; there
///   only an `@` before the path's first `/` ends a userinfo.
/// - Every `pass=` or `password=` query value is masked up to the next `&`, `#` included.
pub fn redact_url(url: &str) -> String {
    let (auth_start, at) = split_userinfo(url);
    let mut out = String::with_capacity(url.len());
    out.push_str(&url[..auth_start]);
    let rest = match at {
        Some(at) => {
            let userinfo = &url[auth_start..at];
            match userinfo.find(':') {
                Some(colon) => {
                    out.push_str(&userinfo[..colon]);
                    out.push_str(":***");
                }
                None => out.push_str("***"),
            }
            &url[at..]
        }
        None => &url[auth_start..],
    };
    match rest.split_once('?') {
        Some((head, query)) => {
            out.push_str(head);
            out.push('?');
            for (i, kv) in query.split('&').enumerate() {
                if i > 0 {
                    out.push('&');
                }
                match kv.split_once('=') {
                    Some((k, _))
                        if k.eq_ignore_ascii_case("pass") || k.eq_ignore_ascii_case("password") =>
                    {
                        out.push_str(k);
                        out.push_str("=***");
                    }
                    _ => out.push_str(kv),
                }
            }
        }
        None => out.push_str(rest),
    }
    out
}

/// Where the authority of `url` starts, and the `@` that ends its userinfo, if any (see
/// [`redact_url`] for the rules).
fn split_userinfo(url: &str) -> (usize, Option<usize>) {
    let scheme = scheme_len(url);
    let unix = url[..scheme].to_ascii_lowercase().contains("unix");
    if unix {
        // `redis+unix:///tmp/s`: an authority only sits between `//` and the path's `/`.
        let Some(start) = url[scheme..].starts_with("//").then_some(scheme + 2) else {
            return (scheme, None);
        };
        let end = url[start..]
            .find(['/', '?', '#'])
            .map_or(url.len(), |i| start + i);
        return (start, url[start..end].rfind('@').map(|at| start + at));
    }
    // Malformed URLs (`redis:/…`, `redis:///…`) keep whatever slashes they have.
    let start = scheme + url[scheme..].bytes().take_while(|&b| b == b'/').count();
    (start, url[start..].rfind('@').map(|at| start + at))
}

/// The length of a leading `scheme:` (RFC 3986: a letter, then letters, digits, `+`, `-`, `.`),
/// or 0. `user:pass@host` reads as scheme `user`, which redacts the same way.
fn scheme_len(url: &str) -> usize {
    let bytes = url.as_bytes();
    if !bytes.first().is_some_and(u8::is_ascii_alphabetic) {
        return 0;
    }
    let n = bytes
        .iter()
        .take_while(|&&b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
        .count();
    if bytes.get(n) == Some(&b':') {
        n + 1
    } else {
        0
    }
}

/// The value of `name` in an `INFO` reply (`name:value` lines), trimmed.
pub fn info_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact_url("redis://u:s3cret@h:1/2"), "redis://u:***@h:1/2");
        assert_eq!(redact_url("redis://:s3cret@h:1"), "redis://:***@h:1");
        assert_eq!(redact_url("rediss://s3cret@h"), "rediss://***@h");
        assert_eq!(redact_url("redis://h:1"), "redis://h:1");
        assert_eq!(
            redact_url("redis+unix:///tmp/s?db=1&pass=s3cret"),
            "redis+unix:///tmp/s?db=1&pass=***"
        );
        assert_eq!(redact_url("redis://u:p@ss@h"), "redis://u:***@h");
        assert_eq!(
            redact_url("rediss://h:1/0?db=2#insecure"),
            "rediss://h:1/0?db=2#insecure"
        );
        assert_eq!(redact_url("127.0.0.1:6379"), "127.0.0.1:6379");
        assert_eq!(
            redact_url("redis+unix:///tmp/a@b/s?db=1"),
            "redis+unix:///tmp/a@b/s?db=1"
        );
    }

    /// Text that does not parse as a URL, or parses differently from what the user meant, where
    /// the password used to show in error messages.
    #[test]
    fn redacts_passwords_in_malformed_urls() {
        let cases = [
            (
                "redis//:hunter2@127.0.0.1:7400",
                "redis//:***@127.0.0.1:7400",
            ),
            ("redis:/:hunter2@x", "redis:/:***@x"),
            ("redis:///:hunter2@x", "redis:///:***@x"),
            ("hunter2@127.0.0.1:7400", "***@127.0.0.1:7400"),
            (":hunter2@127.0.0.1:7400", ":***@127.0.0.1:7400"),
            ("rediss:hunter2@h", "rediss:***@h"),
            ("redis://user:hun@ter2@h", "redis://user:***@h"),
            ("redis://:hunter2@[::1]:6379", "redis://:***@[::1]:6379"),
            ("redis://:hunter2@[::1", "redis://:***@[::1"),
            ("redis://:hunter2@", "redis://:***@"),
            // Unencoded `/`, `?` and `#` in a password (base64, ElastiCache tokens).
            ("redis://:hun/ter2@h:1/0", "redis://:***@h:1/0"),
            ("redis://:hun?ter2@h:1", "redis://:***@h:1"),
            ("redis://:hun#ter2@h:1", "redis://:***@h:1"),
            ("redis+unix://:hunter2@/tmp/s", "redis+unix://:***@/tmp/s"),
            (
                "redis+unix:///tmp/s?PASSWORD=hunter2",
                "redis+unix:///tmp/s?PASSWORD=***",
            ),
            (
                "redis+unix:///tmp/s?pass=hun#ter2",
                "redis+unix:///tmp/s?pass=***",
            ),
            (
                "redis://h/?password=hunter2&db=1",
                "redis://h/?password=***&db=1",
            ),
        ];
        for (url, want) in cases {
            let got = redact_url(url);
            assert_eq!(got, want, "{url}");
            assert!(!got.contains("hunter2") && !got.contains("ter2"), "{url}");
        }
    }

    #[test]
    fn parse_errors_never_show_the_password() {
        for url in [
            "redis//:hunter2@127.0.0.1:7400",
            "redis:/:hunter2@x",
            "hunter2@127.0.0.1:7400",
            "rediss:hunter2@h",
            "redis://:hunter2@[::1",
            "redis://:hun/ter2@h:1/0",
            "redis+unix:///tmp/s?db=x&pass=hunter2",
        ] {
            let e = Endpoint::parse(url).unwrap_err();
            let msg = e.to_string();
            assert!(matches!(e, NetError::InvalidUrl { .. }), "{url}: {msg}");
            assert!(!msg.contains("hunter2") && !msg.contains("ter2"), "{msg}");
        }
        // These parse; their display must not show the password either.
        for url in ["redis://user:hun@ter2@h", "redis://:hunter2@[::1]:6379"] {
            let ep = Endpoint::parse(url).unwrap();
            assert!(!ep.to_string().contains("ter2"), "{ep}");
            assert!(!format!("{ep:?}").contains("ter2"), "{ep:?}");
        }
    }

    #[test]
    fn other_host_keeps_the_redacted_credentials() {
        let ep = Endpoint::parse("redis://u:hunter2@h:1/2").unwrap();
        assert_eq!(ep.with_host_port("r", 7).to_string(), "redis://u:***@r:7");
        assert_eq!(
            ep.with_host_port("::1", 7).to_string(),
            "redis://u:***@[::1]:7"
        );
        let ep = Endpoint::parse("redis://h:1").unwrap();
        assert_eq!(ep.with_host_port("r", 7).to_string(), "redis://r:7");
    }

    #[test]
    fn parse_errors_are_redacted() {
        let e = Endpoint::parse("http://u:s3cret@h:1").unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("http://u:***@h:1"), "{msg}");
        assert!(!msg.contains("s3cret"), "{msg}");
        let e = Endpoint::parse("redis://u:s3cret@h:notaport").unwrap_err();
        assert!(!e.to_string().contains("s3cret"));
        assert!(Endpoint::parse("redis://127.0.0.1:6379/3").unwrap().db() == 3);
    }
}
