//! The end of a migration: what happens to the source once the target has taken over, starting
//! with [`Backup`], the final snapshot of the source as an RDB file.

mod backup;
pub mod rdb;

pub use backup::{
    Backup, BackupConfig, BackupError, BackupStats, DEFAULT_BATCH_KEYS, DEFAULT_SCAN_COUNT,
    DEFAULT_WORKERS,
};
