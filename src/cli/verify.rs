//! `ferry verify`: compare the source and the target; exit 1 when they differ.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use ferry::net::{Endpoint, TlsOptions};
use ferry::verify::{self, Verifier, VerifyConfig};

/// Compare the source and the target key by key; exit 1 when they differ
///
/// Compare every key (or a sample) of the source with the target, in both directions. Keys
/// that differ are re-checked so a target still catching up is not reported. With `--plan`,
/// the plan's key filter, renames, db moves and verify rules apply, and its servers are the
/// defaults.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The server copied from, `redis://[user:pass@]host:port` (or `rediss://`).
    #[arg(
        long,
        env = "FERRY_SOURCE",
        value_name = "URL",
        required_unless_present = "plan"
    )]
    source: Option<String>,

    /// The server copied to.
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

    /// A migration plan whose keyspace rules and verify rules apply.
    #[arg(long, value_name = "PLAN.lua")]
    plan: Option<PathBuf>,

    /// `key=value` for the plan's `ferry.env`; repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = super::plan::parse_set, requires = "plan")]
    set: Vec<(String, String)>,

    /// Compare this many randomly chosen keys that the plan migrates (and a tenth as many
    /// target keys for extras). Default: the plan's `verify`, else every key.
    #[arg(long, value_name = "N", conflicts_with = "full")]
    sample: Option<u64>,

    /// Compare every key (the default without a plan's `verify = { sample = N }`).
    #[arg(long)]
    full: bool,

    /// A db to compare; repeat for several. Default: every db that has keys on either side.
    #[arg(long = "db", value_name = "N")]
    dbs: Vec<u32>,

    /// Accepted difference between expiry times, in milliseconds.
    #[arg(long, default_value_t = verify::DEFAULT_TTL_TOLERANCE_MS, value_name = "MS")]
    ttl_tolerance_ms: i64,

    /// Re-checks of a key that differs before it is reported.
    #[arg(long, default_value_t = verify::DEFAULT_RECHECKS)]
    rechecks: u32,

    /// How long each re-check waits for the target to converge, in milliseconds.
    #[arg(long, default_value_t = verify::DEFAULT_RECHECK_DELAY.as_millis() as u64, value_name = "MS")]
    recheck_delay_ms: u64,

    /// Write the report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,

    /// Print nothing; the exit code tells.
    #[arg(long)]
    quiet: bool,
}

pub async fn run(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let plan = match &args.plan {
        Some(p) => Some(ferry::plan::load(p, &args.set)?),
        None => None,
    };
    let endpoint = |given: &Option<String>,
                    planned: fn(&ferry::plan::Plan) -> &ferry::plan::Server,
                    tls: TlsOptions|
     -> anyhow::Result<Endpoint> {
        Ok(match &plan {
            Some(p) => planned(p).endpoint_with(given.as_deref(), &tls)?,
            None => Endpoint::parse_with_tls(given.as_deref().unwrap_or_default(), &tls)?,
        })
    };
    let source = endpoint(&args.source, |p| &p.source, args.source_tls.options())?;
    let target = endpoint(&args.target, |p| &p.target, args.target_tls.options())?;
    anyhow::ensure!(
        args.ttl_tolerance_ms >= 0,
        "--ttl-tolerance-ms must not be negative"
    );
    anyhow::ensure!(args.sample != Some(0), "--sample must be at least 1");
    let cfg = VerifyConfig {
        dbs: (!args.dbs.is_empty()).then_some(args.dbs),
        // Flags first, then the plan's `verify` (a sample of N, or full), else every key.
        sample: if args.full {
            None
        } else {
            args.sample.or_else(|| {
                plan.as_ref()
                    .filter(|p| !p.verify.full)
                    .and_then(|p| p.verify.sample)
            })
        },
        ttl_tolerance_ms: args.ttl_tolerance_ms,
        rechecks: args.rechecks,
        recheck_delay: Duration::from_millis(args.recheck_delay_ms),
        // A bar on a terminal only; pipes and logs get none.
        progress: !args.quiet,
        ..VerifyConfig::default()
    };
    let mut verifier = Verifier::new(source, target, cfg);
    if let Some(plan) = &plan {
        if let Some(m) = ferry::plan::PlanMapper::for_keys(plan) {
            verifier = verifier.with_mapper(m);
        }
        verifier = verifier.with_rules(std::sync::Arc::new(ferry::plan::PlanRules(
            plan.verify.clone(),
        )));
    }
    let report = verifier.run().await?;
    if !args.quiet {
        super::print_out(report.grouped(10))?;
        say!("{}", report.summary());
    }
    if let Some(path) = args.json {
        let data = serde_json::to_vec_pretty(&report)?;
        std::fs::write(&path, data)
            .map_err(|e| anyhow::anyhow!("cannot write report {}: {e}", path.display()))?;
    }
    Ok(if report.is_identical() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
