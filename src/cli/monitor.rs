//! `ferry monitor`: shows the source's writes as ferry parses and classifies them.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use ferry::capture::{CaptureError, MonitorLine, MonitorStream};
use ferry::command::{Class, CommandTable, KeyRef, TableOrigin};
use ferry::escape::quote_into;
use ferry::net::Endpoint;

/// Show the writes ferry captures from the source, parsed and classified
///
/// Print the source's write commands as ferry sees them: db, keys, and arguments quoted as Redis
/// shows them. A debugging aid: it runs MONITOR, which costs the source CPU.
#[derive(Debug, Args)]
pub struct MonitorArgs {
    /// The server to watch, `redis://[user:pass@]host:port` (or `rediss://` for TLS).
    #[arg(long, env = "FERRY_SOURCE", value_name = "URL")]
    source: String,

    #[command(flatten)]
    source_tls: super::tls::SourceTls,

    /// Show every command, not only writes.
    #[arg(long)]
    all: bool,

    /// Use the built-in Redis 7.0 command table instead of asking the server.
    #[arg(long)]
    builtin_table: bool,

    /// Stop after this many printed commands.
    #[arg(long, value_name = "N")]
    count: Option<u64>,
}

/// Decides what to print; scripts, transactions and writes make up the write stream.
fn shown(class: Class, all: bool) -> bool {
    all || matches!(
        class,
        Class::Write | Class::Script | Class::Transaction | Class::ScriptCache | Class::Unknown
    )
}

fn format_line(out: &mut Vec<u8>, line: &MonitorLine, class: Class, keys: &[KeyRef]) {
    let secs = line.ts_us / 1_000_000;
    let micros = line.ts_us % 1_000_000;
    let _ = write!(out, "{secs}.{micros:06} db{} {} ", line.db, line.peer);
    let _ = write!(out, "{class:?}");
    if !keys.is_empty() {
        out.extend_from_slice(b" keys=");
        for (i, k) in keys.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            quote_into(out, line.argv.get(k.pos).unwrap_or_default());
        }
    }
    out.extend_from_slice(b" | ");
    for (i, a) in line.argv.iter().enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        quote_into(out, a);
    }
    out.push(b'\n');
}

pub async fn run(args: MonitorArgs) -> anyhow::Result<ExitCode> {
    let ep = Endpoint::parse_with_tls(&args.source, &args.source_tls.options())?;
    let table = if args.builtin_table {
        None
    } else {
        let mut con = ep.control().await?;
        match CommandTable::load(&mut con).await {
            Ok(t) => Some(t),
            Err(e) => {
                // ElastiCache-like sources may rename or disable COMMAND; classifying by the
                // built-in table is still right for every command Redis 7.0 knows.
                tracing::warn!(
                    error = %e,
                    "Cannot load the source's command table; falling back to the built-in Redis 7.0 command table."
                );
                None
            }
        }
    };
    let table = table.as_ref().unwrap_or_else(|| CommandTable::builtin());
    match table.origin() {
        TableOrigin::Server { version } => {
            tracing::info!(
                version,
                commands = table.len(),
                "Loaded the source's command table."
            )
        }
        TableOrigin::Builtin if args.builtin_table => {
            tracing::info!("Using the built-in Redis 7.0 command table.")
        }
        TableOrigin::Builtin => {}
    }
    let mut stream = MonitorStream::start(&ep).await?;
    tracing::info!(source = %ep, "Monitoring; press Ctrl-C to stop.");

    let stdout = std::io::stdout();
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut keys = Vec::new();
    let mut printed = 0u64;
    let mut shutdown = std::pin::pin!(tokio::signal::ctrl_c());
    loop {
        let next = tokio::select! {
            _ = &mut shutdown => break,
            next = stream.next() => next,
        };
        match next {
            Ok(Some(line)) => {
                let class = table.classify(&line.argv);
                if !shown(class, args.all) {
                    continue;
                }
                keys.clear();
                table.keys_into(&line.argv, &mut keys);
                buf.clear();
                format_line(&mut buf, line, class, &keys);
                let mut out = stdout.lock();
                if out.write_all(&buf).and_then(|_| out.flush()).is_err() {
                    // The reader went away (a closed pipe); that is a normal way to stop.
                    break;
                }
                printed += 1;
                if args.count.is_some_and(|n| printed >= n) {
                    break;
                }
            }
            Ok(None) => anyhow::bail!("{ep} closed the MONITOR connection"),
            Err(e @ CaptureError::Parse { .. }) => tracing::error!("{e}"),
            Err(e) => return Err(e).context("monitoring stopped"),
        }
    }
    Ok(ExitCode::SUCCESS)
}
