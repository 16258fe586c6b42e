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

pub use crate::net::cluster::{Moved, Redirect, parse_redirect as parse};
use crate::net::resp::{ReplySummary, summarize};
use crate::net::{Endpoint, NetError, RawReader, RawWriter, encode_command};

/// Redirects followed for one operation before its keys are re-copied instead.
pub const MAX_HOPS: usize = 5;

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
