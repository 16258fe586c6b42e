//! `ferry preflight`: is this pair ready to migrate? A report before anything is copied.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use ferry::migration::Preflight;
use ferry::net::{Endpoint, TlsOptions};

/// Check whether a source and a target are ready to migrate, before anything is copied
///
/// Checks engines and the mechanics they call for, MONITOR, write pause, payload
/// compatibility, evictions, memory headroom, dbs, the biggest keys. Each line is ok, warn or
/// FAIL with what to do. Exit 0 when ready, 1 with warnings only, 2 when something blocks.
/// Nothing is written to either server. With --plan, the servers and the plan's options (such
/// as on_field_ttls) come from the plan file, as `ferry run` reads it; --source and --target
/// then override the plan's servers.
#[derive(Debug, Args)]
pub struct PreflightArgs {
    /// The server to migrate from.
    #[arg(
        long,
        env = "FERRY_SOURCE",
        value_name = "URL",
        required_unless_present = "plan"
    )]
    source: Option<String>,
    /// The server to migrate to.
    #[arg(
        long,
        env = "FERRY_TARGET",
        value_name = "URL",
        required_unless_present = "plan"
    )]
    target: Option<String>,

    #[command(flatten)]
    source_tls: super::tls::SourceTls,

    #[command(flatten)]
    target_tls: super::tls::TargetTls,
    /// A plan file: its source, target and options.
    #[arg(long, value_name = "PLAN.lua")]
    plan: Option<PathBuf>,
    /// `key=value`, seen by the plan's `ferry.env(key)` before the environment; repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = super::plan::parse_set, requires = "plan")]
    set: Vec<(String, String)>,
    /// Write the report as JSON to this file (`-` for stdout, instead of the text report).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

pub async fn run(args: PreflightArgs) -> anyhow::Result<ExitCode> {
    let plan = match &args.plan {
        Some(path) => Some(ferry::plan::load(path, &args.set)?),
        None => None,
    };
    let endpoint = |given: &Option<String>,
                    planned: fn(&ferry::plan::Plan) -> &ferry::plan::Server,
                    tls: TlsOptions,
                    flag: &str|
     -> anyhow::Result<Endpoint> {
        Ok(match (&plan, given) {
            (Some(p), url) => planned(p).endpoint_with(url.as_deref(), &tls)?,
            (None, Some(url)) => Endpoint::parse_with_tls(url, &tls)?,
            (None, None) => anyhow::bail!("{flag} is required without --plan"),
        })
    };
    let source = endpoint(
        &args.source,
        |p| &p.source,
        args.source_tls.options(),
        "--source",
    )?;
    let target = endpoint(
        &args.target,
        |p| &p.target,
        args.target_tls.options(),
        "--target",
    )?;
    let drop_field_ttls = plan
        .as_ref()
        .is_some_and(|p| p.on_field_ttls == ferry::plan::FieldTtlPolicy::DropFieldTtls);
    let rewrite = plan.as_ref().map(|p| p.rewrite.clone()).unwrap_or_default();
    let report = Preflight::new(source, target)
        .drop_field_ttls(drop_field_ttls)
        .rewrite(rewrite)
        .run()
        .await?;
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
