//! The seam between replay and a plan's keyspace rules: filters, renames, db moves, dropped
//! commands and per-command hooks, applied to every command and every restored key.
//!
//! The trait keeps replay free of Lua: a plan compiles its declarative rules to native code
//! behind it, and only hooks call into Lua.

use crate::command::Argv;

/// Maps the source keyspace onto the target's.
pub trait Mapper: Send + Sync {
    /// Maps one command about to be sent; pushes what to send instead (nothing = skip it).
    /// An error is a hook that failed under the `fail` policy: the migration stops.
    fn map_command(&self, db: u32, argv: Argv, out: &mut Vec<(u32, Argv)>) -> Result<(), String>;

    /// Where a source key lives on the target; `None` when the plan excludes it.
    fn map_key(&self, db: u32, key: &[u8]) -> Option<(u32, Vec<u8>)>;

    /// The source key a target key comes from, when the target key belongs to the migration
    /// (the sweep deletes only those when their source key is gone).
    fn unmap_key(&self, db: u32, key: &[u8]) -> Option<(u32, Vec<u8>)>;

    /// Every source key that maps to this target key (a rename can make two source names
    /// land on one target name); empty when none does. The default is [`Self::unmap_key`]'s.
    fn unmap_candidates(&self, db: u32, key: &[u8]) -> Vec<(u32, Vec<u8>)> {
        self.unmap_key(db, key).into_iter().collect()
    }
}
