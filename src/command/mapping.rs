//! The seam between replay and a plan's keyspace rules: filters, renames, db moves, dropped
//! commands and per-command hooks, applied to every command and every restored key.
//!
//! The trait keeps replay free of Lua: a plan compiles its declarative rules to native code
//! behind it, and only hooks call into Lua. [`mixed_keys`] is the one decision replay makes
//! from the rules before mapping a command; `ferry check` reports it through the same function.

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

/// For a command whose keys mix ones the plan migrates with ones it leaves out: the indices (in
/// `keys`) of the migrated ones. `None` when every key is migrated, or none is.
///
/// ## Behavior
/// Replay sends nothing for such a command and re-copies its migrated keys instead: the
/// left-out keys are missing on the target, so the command cannot run there as it ran on the
/// source (`RENAME fs:a cache:b` would fail; `MSET fs:a 1 cache:b 1` would create `cache:b`),
/// and splitting it would change what it does. `migrated` is the plan's key test
/// ([`Mapper::map_key`] is some).
pub fn mixed_keys<'a>(
    keys: impl IntoIterator<Item = &'a [u8]>,
    mut migrated: impl FnMut(&[u8]) -> bool,
) -> Option<Vec<usize>> {
    let mut any_out = false;
    let mut inside = Vec::new();
    for (i, key) in keys.into_iter().enumerate() {
        if migrated(key) {
            inside.push(i);
        } else {
            any_out = true;
        }
    }
    (any_out && !inside.is_empty()).then_some(inside)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixed_only_when_both_kinds_are_present() {
        let fs = |k: &[u8]| k.starts_with(b"fs:");
        let keys = |ks: &[&'static str]| ks.iter().map(|k| k.as_bytes()).collect::<Vec<_>>();
        assert_eq!(mixed_keys(keys(&["fs:a", "cache:b"]), fs), Some(vec![0]));
        assert_eq!(
            mixed_keys(keys(&["cache:x", "fs:a", "fs:b"]), fs),
            Some(vec![1, 2])
        );
        assert_eq!(mixed_keys(keys(&["fs:a", "fs:b"]), fs), None);
        assert_eq!(mixed_keys(keys(&["cache:a", "cache:b"]), fs), None);
        assert_eq!(mixed_keys(keys(&[]), fs), None);
    }
}
