//! The command model: what `COMMAND INFO` says about one command (flags, key specs, tips,
//! subcommands), in plain Rust.

use std::fmt;

macro_rules! flag_set {
    ($(#[$doc:meta])* $name:ident { $($(#[$fdoc:meta])* $flag:ident = $bit:expr, $text:literal;)* }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
        pub struct $name(u32);

        impl $name {
            $($(#[$fdoc])* pub const $flag: $name = $name(1 << $bit);)*
            const NAMES: &'static [($name, &'static str)] = &[$(($name::$flag, $text)),*];

            /// No flag set.
            pub const fn empty() -> Self {
                $name(0)
            }

            /// True when every flag of `other` is set.
            pub const fn contains(self, other: $name) -> bool {
                self.0 & other.0 == other.0
            }

            /// True when any flag of `other` is set.
            pub const fn intersects(self, other: $name) -> bool {
                self.0 & other.0 != 0
            }

            /// The flag with Redis's name `name` (case-insensitive), if ferry knows it.
            pub fn from_name(name: &str) -> Option<Self> {
                Self::NAMES
                    .iter()
                    .find(|(_, n)| n.eq_ignore_ascii_case(name))
                    .map(|(f, _)| *f)
            }

            /// Parses Redis's names, separated by spaces; unknown names are ignored because newer
            /// servers add flags that do not change what ferry does.
            pub fn parse(names: &str) -> Self {
                names
                    .split_ascii_whitespace()
                    .filter_map(Self::from_name)
                    .fold(Self::empty(), |a, b| a | b)
            }

            /// Redis's names of the flags set, in a fixed order.
            pub fn names(self) -> impl Iterator<Item = &'static str> {
                Self::NAMES
                    .iter()
                    .filter(move |(f, _)| self.contains(*f))
                    .map(|(_, n)| *n)
            }
        }

        impl std::ops::BitOr for $name {
            type Output = $name;
            fn bitor(self, o: $name) -> $name {
                $name(self.0 | o.0)
            }
        }

        impl std::ops::BitOrAssign for $name {
            fn bitor_assign(&mut self, o: $name) {
                self.0 |= o.0;
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let names: Vec<_> = self.names().collect();
                write!(f, "{}[{}]", stringify!($name), names.join(" "))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let names: Vec<_> = self.names().collect();
                f.write_str(&names.join(" "))
            }
        }
    };
}

flag_set! {
    /// Command flags from `COMMAND INFO` (Redis 7.0 names).
    CommandFlags {
        /// Modifies the dataset.
        WRITE = 0, "write";
        /// Only reads.
        READONLY = 1, "readonly";
        /// May grow memory; refused under OOM.
        DENYOOM = 2, "denyoom";
        /// Administrative; never shown by `MONITOR`.
        ADMIN = 3, "admin";
        /// Pub/sub related.
        PUBSUB = 4, "pubsub";
        /// Not allowed in scripts.
        NOSCRIPT = 5, "noscript";
        /// May block the client.
        BLOCKING = 6, "blocking";
        /// Allowed while loading.
        LOADING = 7, "loading";
        /// Allowed on a stale replica.
        STALE = 8, "stale";
        /// Logged by the script engine rather than by `call()` (scripts; docs/redis-behaviour.md §3).
        SKIP_MONITOR = 9, "skip_monitor";
        /// Not in the slow log.
        SKIP_SLOWLOG = 10, "skip_slowlog";
        /// Allowed on an importing slot with `ASKING`.
        ASKING = 11, "asking";
        /// O(1) or O(log N).
        FAST = 12, "fast";
        /// Allowed before authentication.
        NO_AUTH = 13, "no_auth";
        /// May replicate even if not a write (PUBLISH, PFCOUNT).
        MAY_REPLICATE = 14, "may_replicate";
        /// Keys are optional.
        NO_MANDATORY_KEYS = 15, "no_mandatory_keys";
        /// Not allowed during async loading.
        NO_ASYNC_LOADING = 16, "no_async_loading";
        /// Not allowed inside MULTI.
        NO_MULTI = 17, "no_multi";
        /// Key positions depend on the arguments.
        MOVABLEKEYS = 18, "movablekeys";
        /// Allowed while a script is busy.
        ALLOW_BUSY = 19, "allow_busy";
        /// A module command.
        MODULE = 20, "module";
    }
}

flag_set! {
    /// Key-spec flags: how a command touches one key (Redis 7.0 names).
    KeyFlags {
        /// Read-only access.
        RO = 0, "RO";
        /// Read and write.
        RW = 1, "RW";
        /// Overwrite: the old value is not read.
        OW = 2, "OW";
        /// Removes the key.
        RM = 3, "RM";
        /// The value is returned or copied.
        ACCESS = 4, "access";
        /// Updates the value.
        UPDATE = 5, "update";
        /// Adds data, no change to existing data.
        INSERT = 6, "insert";
        /// Deletes data.
        DELETE = 7, "delete";
        /// Not a key (a channel or similar), skipped by key extraction.
        NOT_KEY = 8, "not_key";
        /// Extraction from specs may miss keys; the server falls back to its own code.
        INCOMPLETE = 9, "incomplete";
        /// Flags depend on the arguments; the server decides per call.
        VARIABLE_FLAGS = 10, "variable_flags";
    }
}

impl KeyFlags {
    /// True when a command with these flags may change the key: RW, OW, RM, or an
    /// insert/update/delete.
    pub const fn writes(self) -> bool {
        self.intersects(KeyFlags(
            KeyFlags::RW.0
                | KeyFlags::OW.0
                | KeyFlags::RM.0
                | KeyFlags::UPDATE.0
                | KeyFlags::INSERT.0
                | KeyFlags::DELETE.0,
        ))
    }

    /// True when the command's result depends on the key's current value (RO or RW access).
    /// `OW` and `RM` keys are replaced or removed without being read.
    pub const fn reads(self) -> bool {
        self.intersects(KeyFlags(KeyFlags::RO.0 | KeyFlags::RW.0))
    }
}

/// Where a key spec starts looking (`begin_search`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BeginSearch {
    /// A fixed argument index.
    Index(i32),
    /// The argument after `keyword`, searched from `startfrom` (negative: backwards from the end).
    Keyword { keyword: String, startfrom: i32 },
    /// The server needs its own code (SORT's `BY`/`GET`/`STORE`).
    Unknown,
}

/// How a key spec finds keys once it has a start (`find_keys`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FindKeys {
    /// Keys from the start to `lastkey` (relative; negative counts from the end), every
    /// `keystep`; with `limit` > 0 only a 1/limit share of the remaining arguments.
    Range {
        lastkey: i32,
        keystep: i32,
        limit: i32,
    },
    /// A key count at `keynumidx`, then keys from `firstkey`, every `keystep`.
    Keynum {
        keynumidx: i32,
        firstkey: i32,
        keystep: i32,
    },
    /// The server needs its own code.
    Unknown,
}

/// One key specification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySpec {
    /// Access flags of the keys this spec finds.
    pub flags: KeyFlags,
    /// Where the search starts.
    pub begin: BeginSearch,
    /// How keys are found from there.
    pub find: FindKeys,
}

/// Everything ferry knows about one command or subcommand.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct CommandSpec {
    /// Lower-case full name, `set` or `xgroup|create`.
    pub name: String,
    /// Redis arity: exact argument count, or negative for "at least".
    pub arity: i32,
    /// Command flags.
    pub flags: CommandFlags,
    /// ACL categories, `@write` and so on.
    pub acl_categories: Vec<String>,
    /// Command tips, `nondeterministic_output`, `request_policy:all_shards` and so on.
    pub tips: Vec<String>,
    /// Key specifications in server order.
    pub key_specs: Vec<KeySpec>,
    /// Subcommands (for container commands such as `XGROUP`).
    pub subcommands: Vec<CommandSpec>,
    /// The `COMMAND DOCS` group (`string`, `stream`…), empty when docs were unavailable.
    pub group: String,
}

impl CommandSpec {
    /// The name as it is matched against argv: the part after `|` for a subcommand.
    pub fn short_name(&self) -> &str {
        self.name.rsplit('|').next().unwrap_or(&self.name)
    }

    /// True for commands with the `write` flag.
    pub fn is_write(&self) -> bool {
        self.flags.contains(CommandFlags::WRITE)
    }

    /// True when the command's effect depends on choices the server makes (`SPOP`'s member,
    /// `XADD *`'s id), so replaying it literally may diverge.
    pub fn is_nondeterministic(&self) -> bool {
        self.tips.iter().any(|t| t == "nondeterministic_output")
    }

    /// True when some key spec is a real key (not `not_key`).
    pub fn has_key_specs(&self) -> bool {
        self.key_specs
            .iter()
            .any(|s| !s.flags.contains(KeyFlags::NOT_KEY))
    }
}
