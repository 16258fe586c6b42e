//! `ferry backup`: the source written as an RDB file that a stock `redis-server` loads.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use ferry::backup::{self, Backup, BackupConfig};
use ferry::net::Endpoint;

/// Write the source to an RDB file with SCAN, DUMP and PEXPIRETIME only
///
/// Write every key of the source (values and expiry times) to an RDB file, using only `SCAN`,
/// `DUMP` and `PEXPIRETIME`, so it works where `SAVE`/`BGSAVE` do not (ElastiCache). The file
/// appears under its name only once complete. A Redis Cluster source gives one file per shard,
/// named after `--out` with the shard's index and slot ranges (FILE.shard0.0-5460.rdb, …).
#[derive(Debug, Args)]
pub struct BackupArgs {
    /// The server to back up, `redis://[user:pass@]host:port` (or `rediss://`).
    #[arg(long, env = "FERRY_SOURCE", value_name = "URL")]
    source: String,

    #[command(flatten)]
    source_tls: super::tls::SourceTls,

    /// The RDB file to write (replaced if it exists).
    #[arg(long, value_name = "FILE.rdb")]
    out: PathBuf,

    /// A db to back up; repeat for several. Default: every db that has keys.
    #[arg(long = "db", value_name = "N")]
    dbs: Vec<u32>,

    /// Parallel readers, each with its own source connection.
    #[arg(long, default_value_t = backup::DEFAULT_WORKERS)]
    workers: usize,

    /// Keys per pipelined read (one MULTI … EXEC on the source).
    #[arg(long, default_value_t = backup::DEFAULT_BATCH_KEYS)]
    batch: usize,
}

pub async fn run(args: BackupArgs) -> anyhow::Result<ExitCode> {
    let source = Endpoint::parse_with_tls(&args.source, &args.source_tls.options())?;
    anyhow::ensure!(args.workers > 0, "--workers must be at least 1");
    anyhow::ensure!(args.batch > 0, "--batch must be at least 1");
    let mut cfg = BackupConfig::default();
    cfg.dbs = (!args.dbs.is_empty()).then_some(args.dbs);
    cfg.workers = args.workers;
    cfg.batch_keys = args.batch;
    // A bar on a terminal only; pipes and logs get none.
    cfg.progress = true;
    let backup = Backup::new(source, args.out, cfg);
    // Dropping the run on Ctrl-C removes the unfinished `.tmp` file.
    let all = tokio::select! {
        r = backup.run_all() => r?,
        _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted; no file was written"),
    };
    for stats in all {
        say!("{}", stats.summary());
    }
    Ok(ExitCode::SUCCESS)
}
