//! The one path by which ferry opens a connection: TCP or a unix socket, TLS with the
//! endpoint's settings, then `AUTH` (or `PING`) as the first round trip. Control connections
//! (redis-rs) and raw RESP ones (`MONITOR`) both start here, so a refused port, a certificate
//! problem, a TLS alert and a wrong password read the same whichever stage met them.

use std::collections::HashSet;
use std::sync::Mutex;

use redis::ConnectionAddr;

use super::raw::{RawConn, Reply, Stream};
use super::{Endpoint, NetError};

/// Opens and authenticates a raw connection to `ep` (db not selected).
pub(super) async fn open(ep: &Endpoint) -> Result<RawConn, NetError> {
    let endpoint = ep.redacted().to_string();
    let unreachable = |e: std::io::Error| NetError::Unreachable {
        endpoint: endpoint.clone(),
        source: e,
    };
    let tls = ep.tls.clone();
    let stream: Box<dyn Stream> = match ep.addr() {
        ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } => {
            let tcp = tokio::net::TcpStream::connect((host.as_str(), *port))
                .await
                .map_err(unreachable)?;
            tcp.set_nodelay(true).ok();
            match &tls {
                None => Box::new(tcp),
                Some(setup) => {
                    warn_insecure(ep);
                    let connector = tokio_rustls::TlsConnector::from(setup.config.clone());
                    let stream = connector
                        .connect(setup.server_name.clone(), tcp)
                        .await
                        .map_err(|e| NetError::Tls {
                            endpoint: endpoint.clone(),
                            message: super::tls::describe_io(&e, setup)
                                .unwrap_or_else(|| e.to_string()),
                        })?;
                    Box::new(stream)
                }
            }
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
    let mut conn = RawConn::new(stream, endpoint, tls);
    // The first round trip is ferry's own, so that a TLS alert sent after the handshake (a
    // TLS 1.3 server that wants a client certificate) or a refused password is told here.
    let settings = ep.info().redis_settings();
    let reply = match (settings.username(), settings.password()) {
        (Some(user), Some(pass)) => {
            conn.request(&[b"AUTH", user.as_bytes(), pass.as_bytes()])
                .await?
        }
        (None, Some(pass)) => conn.request(&[b"AUTH", pass.as_bytes()]).await?,
        (_, None) => conn.request(&[b"PING"]).await?,
    };
    if let Reply::Error(message) = reply {
        let auth = settings.password().is_some()
            || message.starts_with("NOAUTH")
            || message.starts_with("WRONGPASS");
        let message = match settings.password() {
            Some(p) if !p.is_empty() => message.replace(p, "***"),
            _ => message,
        };
        return Err(if auth {
            NetError::Auth {
                endpoint: conn.endpoint().to_string(),
                message,
            }
        } else {
            NetError::Server {
                endpoint: conn.endpoint().to_string(),
                command: "PING".into(),
                message,
            }
        });
    }
    Ok(conn)
}

/// `#insecure` turns certificate checks off: said once per endpoint in every process, loudly,
/// because anyone on the path can then read the data and the password.
fn warn_insecure(ep: &Endpoint) {
    if !matches!(ep.addr(), ConnectionAddr::TcpTls { insecure: true, .. }) {
        return;
    }
    static WARNED: Mutex<Option<HashSet<String>>> = Mutex::new(None);
    let mut warned = WARNED.lock().unwrap_or_else(|e| e.into_inner());
    if warned
        .get_or_insert_with(HashSet::new)
        .insert(ep.redacted().to_string())
    {
        tracing::warn!(
            "{}: #insecure: the server's certificate is NOT checked; anyone on the network path can read and change the data and the password (give the CA with tls.ca or --source-ca/--target-ca instead)",
            ep.redacted()
        );
    }
}
