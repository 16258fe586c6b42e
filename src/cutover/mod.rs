//! The end of a migration: the switch at the final fence ([`Fenced`]: pause, reverse sync,
//! release), and [`Backup`], the final snapshot of the source as an RDB file.

mod backup;
pub mod rdb;
mod switch;

pub use switch::Fenced;

pub use backup::{
    Backup, BackupConfig, BackupError, BackupStats, DEFAULT_BATCH_KEYS, DEFAULT_SCAN_COUNT,
    DEFAULT_WORKERS,
};
