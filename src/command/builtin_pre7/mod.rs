//! Built-in command tables of engines before Redis 7.0, one generated file per major version
//! (its last release in the test matrix), for sources of those versions that refuse `COMMAND`.
//!
//! Within a major the commands and their key positions do not change, so one table serves each
//! (6.0 and 6.2 differ: 6.2 added `GETEX`, `LMOVE`, `ZRANGESTORE`…).

mod r40;
mod r50;
mod r60;
mod r62;

use super::spec::CommandSpec;

/// The table for a source of Redis level `(major, minor)`; `None` from 7.0, where the 7.0 table
/// serves.
pub(super) fn specs(level: (u32, u32)) -> Option<Vec<CommandSpec>> {
    match level {
        (4, _) => Some(r40::specs()),
        (5, _) => Some(r50::specs()),
        (6, 0 | 1) => Some(r60::specs()),
        (6, _) => Some(r62::specs()),
        _ => None,
    }
}
