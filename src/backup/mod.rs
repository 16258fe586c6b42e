//! [`Backup`]: the source written as an RDB file from `DUMP` payloads, for sources that cannot
//! `SAVE` (ElastiCache): the rollback copy of a cutover.

pub mod rdb;
mod writer;

pub use writer::{
    Backup, BackupConfig, BackupError, BackupStats, DEFAULT_BATCH_KEYS, DEFAULT_SCAN_COUNT,
    DEFAULT_WORKERS, shard_file,
};
