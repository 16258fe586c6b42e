//! `ferry preflight`: is this pair ready to migrate? A report before anything is copied.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use ferry::migration::Preflight;
use ferry::net::Endpoint;

/// Check whether a source and a target are ready to migrate, before anything is copied
///
/// Checks engines and the mechanics they call for, MONITOR, write pause, payload
/// compatibility, evictions, memory headroom, dbs, the biggest keys. Each line is ok, warn or
/// FAIL with what to do. Exit 0 when ready, 1 with warnings only, 2 when something blocks.
/// Nothing is written to either server.
#[derive(Debug, Args)]
pub struct PreflightArgs {
    /// The server to migrate from.
    #[arg(long, env = "FERRY_SOURCE", value_name = "URL")]
    source: String,
    /// The server to migrate to.
    #[arg(long, env = "FERRY_TARGET", value_name = "URL")]
    target: String,
    /// Write the report as JSON to this file (`-` for stdout, instead of the text report).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

pub async fn run(args: PreflightArgs) -> anyhow::Result<ExitCode> {
    let source = Endpoint::parse(&args.source)?;
    let target = Endpoint::parse(&args.target)?;
    let report = Preflight::new(source, target).run().await?;
    match args.json.as_deref() {
        Some(p) if p.as_os_str() == "-" => {
            super::print_out(format!("{}\n", serde_json::to_string_pretty(&report)?))?
        }
        Some(p) => {
            std::fs::write(p, serde_json::to_vec_pretty(&report)?)
                .map_err(|e| anyhow::anyhow!("cannot write report {}: {e}", p.display()))?;
            super::print_out(&report)?;
        }
        None => super::print_out(&report)?,
    }
    Ok(ExitCode::from(report.exit_code()))
}
