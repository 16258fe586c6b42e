//! Replay: applying the journaled writes to the target in order, exactly.
//!
//! - [`rewrite`]: what cannot be repeated literally (relative TTLs, blocking pops, server
//!   choices) is rewritten or marked for re-copy.
//! - [`Replayer`]: the pipelined executor on the target.
//! - [`lease`]: shard leases in the target and the fence of each batch a split
//!   replay process applies.
//! - [`policy`]: what an error reply from the target means (expected, transient, divergence).

mod cluster;
mod connection;
mod exec;
mod expiry;
pub mod lease;
mod op;
pub mod policy;
mod redirect;
#[cfg(feature = "sqs")]
pub mod remote;
pub mod rewrite;
mod shard;
mod stitch;

pub use exec::{
    DEFAULT_WINDOW, REPLAY_CLIENT_NAME, RecopySender, ReplayError, ReplayStats, Replayer,
    request_recopies,
};
pub use op::Op;
pub use shard::{DEFAULT_SHARDS, Layout, run_sharded, shard_of};
pub use stitch::{
    CheckRegistry, CheckSlot, DEFAULT_PAYLOAD_TIMEOUT, StitchConfig, StitchEvent, StitchShared,
    Stitcher,
};
