//! `KeyFilter`: which dbs, keys and types a plan migrates, compiled from `keys = { … }`.
//!
//! ## Behavior
//! - `include` empty means every key; a key must match one `include` glob and no `exclude`
//!   glob (exclude wins).
//! - `dbs` `None` means every db.
//! - `types` `None` means every type. It is checked against `TYPE` names (`string`, `list`,
//!   `set`, `zset`, `hash`, `stream`): the snapshot asks the server, replay goes by the
//!   command's group (see [`type_of_group`]).

use super::Glob;

/// The `TYPE` names a plan may list in `keys.types`.
pub const KEY_TYPES: &[&str] = &["string", "list", "set", "zset", "hash", "stream"];

/// Which part of the source a plan migrates.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct KeyFilter {
    /// Keys to migrate; empty for every key.
    pub include: Vec<Glob>,
    /// Keys to leave out even when included.
    pub exclude: Vec<Glob>,
    /// Dbs to migrate; `None` for every db.
    pub dbs: Option<Vec<u32>>,
    /// `TYPE` names to migrate; `None` for every type.
    pub types: Option<Vec<String>>,
}

impl KeyFilter {
    /// A filter that lets everything through.
    pub fn everything() -> KeyFilter {
        KeyFilter::default()
    }

    /// Builds a filter (for callers outside plans, such as the CLI's flags).
    pub fn new(
        include: Vec<Glob>,
        exclude: Vec<Glob>,
        dbs: Option<Vec<u32>>,
        types: Option<Vec<String>>,
    ) -> KeyFilter {
        KeyFilter {
            include,
            exclude,
            dbs,
            types,
        }
    }

    /// True when `key` in `db` is migrated (types aside).
    pub fn allows(&self, db: u32, key: &[u8]) -> bool {
        self.allows_db(db) && self.allows_key(key)
    }

    /// True when `db` is migrated.
    pub fn allows_db(&self, db: u32) -> bool {
        self.dbs.as_ref().is_none_or(|d| d.contains(&db))
    }

    /// True when `key` passes `include` and `exclude`, in any db.
    pub fn allows_key(&self, key: &[u8]) -> bool {
        (self.include.is_empty() || self.include.iter().any(|g| g.matches(key)))
            && !self.exclude.iter().any(|g| g.matches(key))
    }

    /// True when keys of this `TYPE` are migrated.
    pub fn allows_type(&self, type_name: &str) -> bool {
        self.types
            .as_ref()
            .is_none_or(|t| t.iter().any(|n| n.eq_ignore_ascii_case(type_name)))
    }

    /// True when the filter has key patterns (so keyless commands deserve a second look).
    pub fn filters_keys(&self) -> bool {
        !self.include.is_empty() || !self.exclude.is_empty()
    }

    /// True when nothing is filtered.
    pub fn is_everything(&self) -> bool {
        !self.filters_keys() && self.dbs.is_none() && self.types.is_none()
    }
}

/// The `TYPE` a command of this `COMMAND DOCS` group works on, if the group implies one
/// (`generic` commands such as `DEL` or `EXPIRE` work on every type).
pub fn type_of_group(group: &str) -> Option<&'static str> {
    Some(match group {
        "string" | "bitmap" | "hyperloglog" => "string",
        "list" => "list",
        "set" => "set",
        "sorted-set" | "sorted_set" | "geo" => "zset",
        "hash" => "hash",
        "stream" => "stream",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn include_exclude_dbs() {
        let f = KeyFilter::new(
            vec![Glob::new(b"fs:*"), Glob::new(b"sidekiq:*")],
            vec![Glob::new(b"fs:cache:*")],
            Some(vec![0, 1]),
            None,
        );
        assert!(f.allows(0, b"fs:1"));
        assert!(!f.allows(0, b"fs:cache:1"));
        assert!(!f.allows(2, b"fs:1"));
        assert!(!f.allows(0, b"other"));
        assert!(KeyFilter::everything().allows(9, b""));
        assert!(KeyFilter::everything().is_everything());
    }

    #[test]
    fn types() {
        let f = KeyFilter::new(vec![], vec![], None, Some(vec!["hash".into()]));
        assert!(f.allows_type("hash"));
        assert!(!f.allows_type("string"));
        assert_eq!(type_of_group("geo"), Some("zset"));
        assert_eq!(type_of_group("generic"), None);
    }
}
