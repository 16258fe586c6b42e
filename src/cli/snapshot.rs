//! `ferry snapshot`: one fenced copy of every key from the source to the target.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use ferry::net::Endpoint;
use ferry::snapshot::{self, SnapshotConfig, Snapshotter};

/// Copy every key once with fenced, parallel, pipelined DUMP/RESTORE; resumable
///
/// Copy every key of the source to the target with parallel, pipelined, fenced DUMP/RESTORE;
/// big keys and keys the target cannot RESTORE are copied type-aware in chunks.
#[derive(Debug, Args)]
pub struct SnapshotArgs {
    /// The server to copy from, `redis://[user:pass@]host:port` (or `rediss://`).
    #[arg(long, env = "FERRY_SOURCE", value_name = "URL")]
    source: String,

    /// The server to copy to.
    #[arg(long, env = "FERRY_TARGET", value_name = "URL")]
    target: String,

    #[command(flatten)]
    source_tls: super::tls::SourceTls,

    #[command(flatten)]
    target_tls: super::tls::TargetTls,

    /// A db to copy; repeat for several. Default: every db that has keys.
    #[arg(long = "db", value_name = "N")]
    dbs: Vec<u32>,

    /// Parallel workers, each with its own source and target connection.
    #[arg(long, default_value_t = snapshot::DEFAULT_WORKERS)]
    workers: usize,

    /// Keys per fenced read (one MULTI … EXEC on the source).
    #[arg(long, default_value_t = snapshot::DEFAULT_BATCH_KEYS)]
    batch: usize,

    /// Cap on commands per second sent to the source.
    #[arg(long, value_name = "OPS")]
    max_source_ops: Option<u64>,

    /// Keys whose MEMORY USAGE exceeds this many bytes are copied in chunks.
    #[arg(long, default_value_t = snapshot::DEFAULT_BIG_KEY_BYTES, value_name = "BYTES")]
    big_key_bytes: u64,

    /// Copy every key type-aware (HSCAN/SSCAN/ZSCAN/LRANGE/XRANGE) instead of DUMP/RESTORE.
    #[arg(long)]
    type_aware: bool,

    /// Toward a target without hash-field TTLs (before Redis 7.4, Valkey), copy the fields of
    /// hashes that have TTLs without them (counted); without it such a copy is refused.
    #[arg(long)]
    drop_field_ttls: bool,

    /// Directory for the checkpoint; a rerun with the same directory resumes, retries the keys
    /// that failed, and deletes temporary keys that a killed run left on the target.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,

    /// Write the final report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,

    /// No progress bar or progress log lines.
    #[arg(long)]
    quiet: bool,
}

pub async fn run(args: SnapshotArgs) -> anyhow::Result<ExitCode> {
    let source = Endpoint::parse_with_tls(&args.source, &args.source_tls.options())?;
    let target = Endpoint::parse_with_tls(&args.target, &args.target_tls.options())?;
    anyhow::ensure!(args.workers > 0, "--workers must be at least 1");
    anyhow::ensure!(args.batch > 0, "--batch must be at least 1");
    let mut cfg = SnapshotConfig::default();
    cfg.dbs = (!args.dbs.is_empty()).then_some(args.dbs);
    cfg.workers = args.workers;
    cfg.batch_keys = args.batch;
    cfg.max_source_ops = args.max_source_ops;
    cfg.big_key_bytes = args.big_key_bytes;
    cfg.type_aware = args.type_aware;
    cfg.drop_field_ttls = args.drop_field_ttls;
    cfg.state_dir = args.state_dir;
    cfg.progress = !args.quiet;
    let report = Snapshotter::new(source, target, cfg).run().await?;
    say!("{}", report.summary());
    for f in report.failed_keys.iter().take(20) {
        say!("ferry: failed key db{} {}: {}", f.db, f.key, f.reason);
    }
    if let Some(path) = args.json {
        let data = serde_json::to_vec_pretty(&report)?;
        std::fs::write(&path, data)
            .map_err(|e| anyhow::anyhow!("cannot write report {}: {e}", path.display()))?;
    }
    Ok(if report.failed_count() > 0 {
        ExitCode::from(super::EXIT_ERROR)
    } else {
        ExitCode::SUCCESS
    })
}
