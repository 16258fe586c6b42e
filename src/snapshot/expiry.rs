//! [`ExpiryRead`]: how a fenced read learns a key's absolute expiry on the source's engine.
//! `PEXPIRETIME` (Redis 7.0) gives it directly; older engines give `PTTL`, turned into an
//! absolute time with the server's own clock, `TIME`, read in the same transaction.
//!
//! ## Behavior
//! - With `PTTL` + `TIME` the expiry is `time_ms + pttl`, where both come from one `MULTI`
//!   block: the error is the time between the `PTTL` and the `TIME` inside that block (at most
//!   the block's run time, microseconds to a few milliseconds for a large read), and it can
//!   only move the expiry later by that much (docs/redis-behaviour.md §5).
//! - Either way a key without an expiry has `None`, and a missing key has `None`.

use redis::Value;

use crate::net::Engine;

/// How fenced reads on one source read expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpiryRead {
    /// `PEXPIRETIME k`: the absolute expiry in ms.
    Pexpiretime,
    /// `PTTL k` per key and one `TIME` at the end of the transaction.
    PttlAndTime,
}

impl ExpiryRead {
    /// The way `engine` supports.
    pub fn for_engine(engine: &Engine) -> ExpiryRead {
        if engine.has_pexpiretime() {
            ExpiryRead::Pexpiretime
        } else {
            ExpiryRead::PttlAndTime
        }
    }

    /// The way the server behind `con` supports, from its `INFO server` (`PEXPIRETIME` when
    /// the reply cannot be read: the caller's next command then names the real problem).
    pub async fn detect(con: &mut redis::aio::MultiplexedConnection) -> ExpiryRead {
        let info: redis::RedisResult<String> =
            redis::cmd("INFO").arg("server").query_async(con).await;
        match info.ok().as_deref().and_then(Engine::from_info) {
            Some(engine) => ExpiryRead::for_engine(&engine),
            None => ExpiryRead::Pexpiretime,
        }
    }

    /// The expiry command for `key`.
    pub fn command(self) -> &'static str {
        match self {
            ExpiryRead::Pexpiretime => "PEXPIRETIME",
            ExpiryRead::PttlAndTime => "PTTL",
        }
    }

    /// Adds the read of `key`'s expiry to `pipe`.
    pub fn push(self, pipe: &mut redis::Pipeline, key: &[u8]) {
        pipe.cmd(self.command()).arg(key);
    }

    /// Closes a transaction of reads: `TIME` when the expiries are relative.
    pub fn finish(self, pipe: &mut redis::Pipeline) {
        if self == ExpiryRead::PttlAndTime {
            pipe.cmd("TIME");
        }
    }

    /// Replies that [`ExpiryRead::finish`] adds.
    pub fn extra_replies(self) -> usize {
        match self {
            ExpiryRead::Pexpiretime => 0,
            ExpiryRead::PttlAndTime => 1,
        }
    }

    /// The server's clock in ms from the transaction's replies (the `TIME` reply is last), when
    /// this way needs it.
    pub fn clock(self, replies: &[Value]) -> Option<i64> {
        if self == ExpiryRead::Pexpiretime {
            return None;
        }
        let Some(Value::Array(parts)) = replies.last() else {
            return None;
        };
        let num = |v: &Value| -> Option<i64> {
            match v {
                Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
                Value::Int(i) => Some(*i),
                _ => None,
            }
        };
        let secs = num(parts.first()?)?;
        let micros = num(parts.get(1)?)?;
        Some(secs * 1000 + micros / 1000)
    }

    /// The absolute expiry (ms) one expiry reply means, with the transaction's `clock`.
    pub fn expire_at(self, reply: &Value, clock: Option<i64>) -> Option<i64> {
        let Value::Int(v) = reply else { return None };
        match self {
            ExpiryRead::Pexpiretime => (*v >= 0).then_some(*v),
            ExpiryRead::PttlAndTime => (*v >= 0).then(|| clock.map(|c| c + v)).flatten(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_expiries_become_absolute_with_the_servers_clock() {
        let time = Value::Array(vec![
            Value::BulkString(b"1796613575".to_vec()),
            Value::BulkString(b"296418".to_vec()),
        ]);
        let e = ExpiryRead::PttlAndTime;
        let clock = e.clock(&[Value::Nil, Value::Int(5), time]);
        assert_eq!(clock, Some(1_796_613_575_296));
        assert_eq!(
            e.expire_at(&Value::Int(100), clock),
            Some(1_796_613_575_396)
        );
        assert_eq!(e.expire_at(&Value::Int(-1), clock), None);
        assert_eq!(e.expire_at(&Value::Int(-2), clock), None);
        let p = ExpiryRead::Pexpiretime;
        assert_eq!(p.clock(&[Value::Int(1)]), None);
        assert_eq!(p.expire_at(&Value::Int(42), None), Some(42));
        assert_eq!(p.expire_at(&Value::Int(-1), None), None);
        assert_eq!(p.extra_replies() + 1, e.extra_replies());
    }
}
