//! [`Op`]: the unit the stitcher hands to replay: one operation for the target, at its position
//! in the journal.

use tokio::sync::oneshot;

use super::lease::Fence;
use crate::command::Argv;

/// One operation for the target, tagged with the journal position it completes.
#[derive(Debug)]
pub enum Op {
    /// A single command.
    Cmd { seq: u64, db: u32, argv: Argv },
    /// Commands applied atomically.
    Atomic { seq: u64, cmds: Vec<(u32, Argv)> },
    /// Set a key to a snapshot payload (`None`: delete it).
    Restore {
        seq: u64,
        db: u32,
        key: Vec<u8>,
        payload: Option<Vec<u8>>,
        expire_at_ms: Option<i64>,
    },
    /// Restore the source's function libraries (a `FUNCTION DUMP` payload) with `FUNCTION
    /// RESTORE <payload> REPLACE`. The source just produced the payload, so any failure is the
    /// target's.
    Functions { seq: u64, payload: Vec<u8> },
    /// Answered once everything before it is applied.
    Barrier { seq: u64, done: oneshot::Sender<()> },
    /// Read-only commands run at this position in the key's order; their replies go back to
    /// the verifier, which compares them with the same reads fenced on the source.
    Check {
        seq: u64,
        db: u32,
        /// The key the reads are about (routes the check to the key's shard).
        key: Vec<u8>,
        cmds: Vec<Argv>,
        reply: oneshot::Sender<Vec<redis::Value>>,
    },
    /// `op` reached a key that was alive on the source but expires at `expire_at_ms`. Applied
    /// after that time (replay lags), it finds the key gone on the target and acts on nothing
    /// (or creates a new key without a TTL): then `keys` (target keys it writes) are re-copied.
    Expiring {
        op: Box<Op>,
        expire_at_ms: i64,
        keys: Vec<(u32, Vec<u8>)>,
    },
    /// A batch of one shard (`Cmd`, `Atomic` and `Restore` operations) applied in one
    /// transaction only while this process still holds the shard's lease. `done` gets `true`
    /// once the target applied it, `false` when the fence refused it (another process took the
    /// lease): then none of it was applied.
    Fenced {
        seq: u64,
        // Boxed: a fence is four vectors, and every other `Op` would carry its size.
        fence: Box<Fence>,
        ops: Vec<Op>,
        done: oneshot::Sender<bool>,
    },
}

impl Op {
    /// The journal position this operation completes.
    pub fn seq(&self) -> u64 {
        match self {
            Op::Cmd { seq, .. }
            | Op::Atomic { seq, .. }
            | Op::Restore { seq, .. }
            | Op::Functions { seq, .. }
            | Op::Barrier { seq, .. }
            | Op::Check { seq, .. }
            | Op::Fenced { seq, .. } => *seq,
            Op::Expiring { op, .. } => op.seq(),
        }
    }
}
