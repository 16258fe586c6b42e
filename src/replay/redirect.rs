//! Following a cluster target's `MOVED` and `ASK` replies: an operation the target redirects is
//! sent again, with the same bytes, to the node the reply names (after `ASKING` for `ASK`),
//! from the reader of the connection that got the redirect, so it lands before anything that
//! connection answers later.
//!
//! ## Behavior
//! - A redirect is followed before the replies after it are handled, so a key's writes keep
//!   their order: everything a connection sent for a key after a redirected write is redirected
//!   too (the key is no longer on that node) and follows in the same order.
//! - `MOVED` is also told to the router (a [`Moved`]), which sends the slot's later operations
//!   to the new owner once this connection has drained (a barrier).
//! - At most [`MAX_HOPS`] redirects per operation; past them, or when the node named cannot be
//!   reached, the operation's keys are re-copied like any target-only failure.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc;

use crate::net::resp::{ReplySummary, summarize};
use crate::net::{Endpoint, NetError, RawReader, RawWriter, encode_command};

/// Redirects followed for one operation before its keys are re-copied instead.
pub const MAX_HOPS: usize = 5;

/// A slot a primary no longer serves, from a `MOVED` reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Moved {
    pub slot: u16,
    pub host: String,
    pub port: u16,
}

/// One `MOVED` or `ASK` reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    /// `ASK`: this once, during a slot migration; `MOVED`: for good.
    pub ask: bool,
    pub to: Moved,
}

/// Parses `MOVED 3999 127.0.0.1:6381` or `ASK 3999 127.0.0.1:6381`.
pub fn parse(line: &str) -> Option<Redirect> {
    let mut words = line.split_whitespace();
    let ask = match words.next()? {
        "MOVED" => false,
        "ASK" => true,
        _ => return None,
    };
    let slot = words.next()?.parse().ok()?;
    let (host, port) = words.next()?.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some(Redirect {
        ask,
        to: Moved {
            slot,
            host: host.to_string(),
            port: port.parse().ok()?,
        },
    })
}

/// What a replay connection toward a cluster needs to follow redirects.
#[derive(Clone)]
pub struct Redirects {
    /// The URL's credentials and TLS settings, for the nodes redirects name.
    pub base: Endpoint,
    /// Where `MOVED` slots are told to the router.
    pub moved: mpsc::UnboundedSender<Moved>,
    /// Counts the redirects followed (shared with the replay statistics).
    pub followed: Arc<AtomicU64>,
}

/// The connections of one reader to the nodes redirects named.
pub(super) struct Redirector {
    cfg: Redirects,
    conns: HashMap<(String, u16), (RawReader, RawWriter)>,
}

impl Redirector {
    pub(super) fn new(cfg: Redirects) -> Redirector {
        Redirector {
            cfg,
            conns: HashMap::new(),
        }
    }

    /// Counts a redirect and tells the router of a `MOVED`.
    pub(super) fn noted(&self, r: &Redirect) {
        self.cfg.followed.fetch_add(1, Ordering::Relaxed);
        if !r.ask {
            let _ = self.cfg.moved.send(r.to.clone());
        }
    }

    /// Sends `body` (`replies` commands) to the node `r` names; returns each reply's summary
    /// and bytes.
    pub(super) async fn send(
        &mut self,
        r: &Redirect,
        body: &[u8],
        replies: usize,
    ) -> Result<Vec<(ReplySummary, Vec<u8>)>, NetError> {
        let key = (r.to.host.clone(), r.to.port);
        let result = self.exchange(&key, r.ask, body, replies).await;
        if result.is_err() {
            // Opened again on the next redirect to that node.
            self.conns.remove(&key);
        }
        result
    }

    async fn exchange(
        &mut self,
        key: &(String, u16),
        ask: bool,
        body: &[u8],
        replies: usize,
    ) -> Result<Vec<(ReplySummary, Vec<u8>)>, NetError> {
        if !self.conns.contains_key(key) {
            let ep = self.cfg.base.with_host_port(&key.0, key.1);
            let conn = ep.raw().await?;
            self.conns.insert(key.clone(), conn.split());
        }
        let Some((reader, writer)) = self.conns.get_mut(key) else {
            unreachable!("inserted above")
        };
        let mut buf = Vec::with_capacity(body.len() + 32);
        if ask {
            encode_command(&mut buf, &[b"ASKING"]);
        }
        buf.extend_from_slice(body);
        writer.write_all(&buf).await?;
        let mut out = Vec::with_capacity(replies);
        let mut skip = usize::from(ask);
        while out.len() < replies {
            let summary = summarize(reader.unconsumed()).map_err(|e| NetError::Io {
                endpoint: format!("{}:{}", key.0, key.1),
                message: e.to_string(),
            })?;
            let Some(s) = summary else {
                if reader.fill().await? == 0 {
                    return Err(NetError::Io {
                        endpoint: format!("{}:{}", key.0, key.1),
                        message: "the node closed the connection".into(),
                    });
                }
                continue;
            };
            let bytes = reader.unconsumed()[..s.len].to_vec();
            reader.consume(s.len);
            if skip > 0 {
                skip -= 1;
                continue;
            }
            out.push((s, bytes));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_moved_and_ask() {
        assert_eq!(
            parse("MOVED 3999 127.0.0.1:6381"),
            Some(Redirect {
                ask: false,
                to: Moved {
                    slot: 3999,
                    host: "127.0.0.1".into(),
                    port: 6381
                }
            })
        );
        assert!(parse("ASK 1 ::1:7000").is_some_and(|r| r.ask && r.to.host == "::1"));
        assert_eq!(parse("ERR MOVED"), None);
        assert_eq!(parse("MOVED x 1:2"), None);
    }
}
