//! Shard leases in the target: which `ferry replay` process may apply a shard, and the fence
//! ([`Fence`]) that makes every batch it applies conditional on still holding the lease.
//!
//! ## Behavior
//! - Per shard `s`, three keys in db 0 of the target (`docs/leases.md`):
//!   `ferry:lease:<s>:token` (`<n>:<owner>`, `n` one more for every new holder, never reset),
//!   `ferry:lease:<s>:owner` (the holder's id, with a `PX` expiry that the holder renews) and
//!   `ferry:lease:<s>:progress` (a hash: per message group, one past the last gseq applied,
//!   written inside each fenced batch).
//! - [`Leases::acquire`] takes a shard whose owner key is gone (expired or released) or is
//!   this process's, with a new token, and returns the group's applied position read in the
//!   same script: what the previous holder applied, exactly.
//! - A batch is `WATCH token dirty`, a check script that touches `dirty` (so that `EXEC` fails)
//!   unless the token is still ours, then `MULTI … HSET progress … EXEC`: once another process
//!   took the lease, nothing this process sends for the shard is applied, whatever its clock
//!   or its stall. `EXEC` answering nil is the refusal ([`Fence`] in [`super::Op::Fenced`]).

use std::time::Duration;

use crate::command::Argv;

/// Prefix of every lease key; verification skips keys under it.
pub const LEASE_PREFIX: &[u8] = b"ferry:lease:";

/// Takes the lease when nobody else holds it: `{token, applied position of the group or -1}`,
/// or `{0, ms left}` when another process holds it.
const ACQUIRE_SCRIPT: &str = "local o = redis.call('GET', KEYS[2]) \
if o and o ~= ARGV[1] then return {0, redis.call('PTTL', KEYS[2])} end \
local c = redis.call('GET', KEYS[1]) \
local t = 1 \
if c then t = (tonumber(string.match(c, '^%d+')) or 0) + 1 end \
redis.call('SET', KEYS[1], t .. ':' .. ARGV[1]) \
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2]) \
local p = redis.call('HGET', KEYS[3], ARGV[3]) \
if p then return {t, tonumber(p)} end \
return {t, -1}";

/// Extends the lease while the token is still ours: 1, else 0.
const RENEW_SCRIPT: &str = "if redis.call('GET', KEYS[1]) ~= ARGV[3] then return 0 end \
local o = redis.call('GET', KEYS[2]) \
if o and o ~= ARGV[1] then return 0 end \
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2]) \
return 1";

/// Gives the lease up (the owner key only: the token never goes back).
const RELEASE_SCRIPT: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
return redis.call('DEL', KEYS[1]) end return 0";

/// Run between `WATCH token dirty` and `MULTI`: when the token is no longer ours, writes (and
/// removes) the watched `dirty` key, which makes this connection's `EXEC` fail. Touching a
/// per-process key rather than the token keeps a zombie from aborting the holder's batches.
pub const CHECK_SCRIPT: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then return 1 end \
redis.call('SET', KEYS[2], '1') redis.call('DEL', KEYS[2]) return 0";

/// Why a lease call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LeaseError {
    #[error("shard lease on the target: {0}")]
    Redis(#[from] redis::RedisError),
}

/// What a batch of one shard is conditional on; see the module doc.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// `ferry:lease:<s>:token`, watched.
    pub token_key: Vec<u8>,
    /// This process's token for the shard, `<n>:<owner>`: unique to the holder even if a
    /// failover lost an increment of `n`.
    pub token: Vec<u8>,
    /// The per-process key the check touches when the token moved on, watched too.
    pub dirty_key: Vec<u8>,
    /// Run in db 0 inside the transaction after the batch: the progress update.
    pub tail: Vec<Argv>,
}

/// A lease this process holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    pub token: u64,
    /// One past the last gseq of the group applied in the target when the lease was taken
    /// (`None`: the group has no progress yet).
    pub applied: Option<u64>,
}

/// The leases of one process, on a control connection to the target.
pub struct Leases {
    con: redis::aio::MultiplexedConnection,
    /// Names this process in owner keys: host-unique (pid) and restart-unique (start time).
    owner: String,
    ttl: Duration,
}

fn key(shard: usize, what: &str) -> Vec<u8> {
    [LEASE_PREFIX, format!("{shard}:{what}").as_bytes()].concat()
}

impl Leases {
    /// Leases that expire `ttl` after their last renewal, held by a new owner id.
    pub fn new(con: redis::aio::MultiplexedConnection, ttl: Duration) -> Leases {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Leases {
            con,
            owner: format!("{}-{nanos:x}", std::process::id()),
            ttl,
        }
    }

    /// This process's owner id.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    fn ttl_ms(&self) -> u64 {
        self.ttl.as_millis().max(1) as u64
    }

    /// Takes `shard`'s lease with a new token unless another process holds it (`None`).
    pub async fn acquire(&mut self, shard: usize, group: u32) -> Result<Option<Held>, LeaseError> {
        let (token, applied): (i64, i64) = redis::Script::new(ACQUIRE_SCRIPT)
            .key(key(shard, "token"))
            .key(key(shard, "owner"))
            .key(key(shard, "progress"))
            .arg(&self.owner)
            .arg(self.ttl_ms())
            .arg(group)
            .invoke_async(&mut self.con)
            .await?;
        if token <= 0 {
            return Ok(None);
        }
        Ok(Some(Held {
            token: token as u64,
            applied: u64::try_from(applied).ok(),
        }))
    }

    /// The applied position of `group` in `shard`'s progress (a group first seen while the
    /// lease is held, like a new capture run's).
    pub async fn applied(&mut self, shard: usize, group: u32) -> Result<Option<u64>, LeaseError> {
        let p: Option<u64> = redis::cmd("HGET")
            .arg(key(shard, "progress"))
            .arg(group)
            .query_async(&mut self.con)
            .await?;
        Ok(p)
    }

    /// Extends the lease; `false` when another process took it since.
    pub async fn renew(&mut self, shard: usize, token: u64) -> Result<bool, LeaseError> {
        let ok: i64 = redis::Script::new(RENEW_SCRIPT)
            .key(key(shard, "token"))
            .key(key(shard, "owner"))
            .arg(&self.owner)
            .arg(self.ttl_ms())
            .arg(self.token(token))
            .invoke_async(&mut self.con)
            .await?;
        Ok(ok == 1)
    }

    /// Gives the lease up so another process can take the shard at once.
    pub async fn release(&mut self, shard: usize) -> Result<(), LeaseError> {
        let _: i64 = redis::Script::new(RELEASE_SCRIPT)
            .key(key(shard, "owner"))
            .arg(&self.owner)
            .invoke_async(&mut self.con)
            .await?;
        Ok(())
    }

    /// The token key's value while this process holds the lease under `n`.
    fn token(&self, n: u64) -> Vec<u8> {
        format!("{n}:{}", self.owner).into_bytes()
    }

    /// The fence of a batch of `group` in `shard` ending before gseq `end`, under `token`.
    pub fn fence(&self, shard: usize, token: u64, group: u32, end: u64) -> Fence {
        Fence {
            token_key: key(shard, "token"),
            token: self.token(token),
            dirty_key: [LEASE_PREFIX, b"dirty:", self.owner.as_bytes()].concat(),
            tail: vec![Argv::from_args([
                &b"HSET"[..],
                &key(shard, "progress"),
                group.to_string().as_bytes(),
                end.to_string().as_bytes(),
            ])],
        }
    }
}

/// Whether `key` is one of ferry's lease keys (skipped by verification).
pub fn is_lease_key(key: &[u8]) -> bool {
    key.starts_with(LEASE_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_keys_are_named_per_shard() {
        assert_eq!(key(3, "token"), b"ferry:lease:3:token".to_vec());
        assert!(is_lease_key(&key(0, "progress")));
        assert!(!is_lease_key(b"ferry:parts:x"));
    }
}
