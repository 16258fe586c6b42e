//! The command line: validated arguments, logging, and the exit-code contract
//! (0 ok, 1 verification found differences, 2 error).

/// `eprintln!` that cannot panic: with stderr closed (`2>&-`) the message is lost, but the run
/// keeps its exit code.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod backup;
mod generate;
mod migrate;
mod monitor;
mod plan;
mod preflight;
mod snapshot;
#[cfg(feature = "sqs")]
mod split;
mod status;
mod tls;
mod verify;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// What `ferry --version` prints after `ferry `: the crate version, the commit it was built
/// from and the enabled cargo features (from `build.rs`).
const VERSION: &str = env!("FERRY_VERSION");

/// Move a live Redis dataset to another server with zero downtime, exactly.
#[derive(Debug, Parser)]
#[command(name = "ferry", version = VERSION, about, long_about = None)]
struct Cli {
    /// Log verbosity: -v for debug, -vv for trace. `FERRY_LOG` (tracing filter syntax) overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Run(plan::RunArgs),
    Check(plan::CheckArgs),
    Migrate(migrate::MigrateArgs),
    Preflight(preflight::PreflightArgs),
    Monitor(monitor::MonitorArgs),
    Snapshot(snapshot::SnapshotArgs),
    Verify(verify::VerifyArgs),
    Backup(backup::BackupArgs),
    Status(status::StatusArgs),
    #[cfg(feature = "sqs")]
    Capture(split::CaptureArgs),
    #[cfg(feature = "sqs")]
    Replay(split::ReplayArgs),
    Completions(generate::CompletionsArgs),
    #[command(hide = true)]
    Man(generate::ManArgs),
}

/// Exit code for an error (bad input, unreachable server, failed run).
pub const EXIT_ERROR: u8 = 2;

/// Writes a report to stdout.
///
/// ## Behavior
/// A reader that went away (`ferry check plan.lua | head -1`) is not an error: it read what it
/// wanted, so the rest is dropped without a message and the command's exit code stays its
/// verdict (0, 1 or 2 as if everything had been read). Any other write error is an error.
/// Rust ignores `SIGPIPE`, so `print!` would panic here instead.
pub(crate) fn print_out(report: impl std::fmt::Display) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match write!(out, "{report}").and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.map_err(|e| anyhow::anyhow!("cannot write to stdout: {e}")),
    }
}

/// A stop request set by SIGINT/SIGTERM, listened for from the moment this returns: a signal
/// that arrives while a plan's phases run is not lost (a background job's inherited SIGINT
/// disposition is "ignore", so an unhandled one would vanish), and stops the run at a final
/// fence. A second signal exits at once with code 2.
pub(crate) fn stop_on_signals() -> ferry::migration::Stop {
    let stop = ferry::migration::Stop::new();
    let s = stop.clone();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let signals = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        );
        tokio::spawn(async move {
            match signals {
                (Ok(mut int), Ok(mut term)) => {
                    tokio::select! {
                        _ = int.recv() => {}
                        _ = term.recv() => {}
                    }
                    s.set();
                    // A stop during a long snapshot waits for it; a second signal is the
                    // operator's way out, as a kill would be: the next run resyncs.
                    tokio::select! {
                        _ = int.recv() => {}
                        _ = term.recv() => {}
                    }
                    say!(
                        "ferry: error: a second stop signal: exiting without a final fence; the target may differ, and the next run resyncs every key"
                    );
                    std::process::exit(i32::from(EXIT_ERROR));
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                    s.set();
                }
            }
        });
    }
    #[cfg(not(unix))]
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        s.set();
    });
    stop
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "ferry=info",
        1 => "ferry=debug",
        _ => "ferry=trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Runs the binary; every error ends as one line on stderr and exit code 2.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version: nothing the user typed is echoed.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let args: Vec<String> = std::env::args_os()
                .skip(1)
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            let text = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
                e.render().ansi().to_string()
            } else {
                e.render().to_string()
            };
            eprint!("{}", redact_args(&text, &args));
            return ExitCode::from(EXIT_ERROR);
        }
    };
    init_logging(cli.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            say!("ferry: error: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => plan::run(args).await,
            Command::Check(args) => plan::check(args),
            Command::Migrate(args) => migrate::run(args).await,
            Command::Monitor(args) => monitor::run(args).await,
            Command::Snapshot(args) => snapshot::run(args).await,
            Command::Verify(args) => verify::run(args).await,
            Command::Backup(args) => backup::run(args).await,
            Command::Status(args) => status::run(args),
            Command::Preflight(args) => preflight::run(args).await,
            #[cfg(feature = "sqs")]
            Command::Capture(args) => split::capture(args).await,
            #[cfg(feature = "sqs")]
            Command::Replay(args) => split::replay(args).await,
            Command::Completions(args) => generate::completions(args),
            Command::Man(args) => generate::man(args),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            say!("ferry: error: {}", one_line(&e));
            ExitCode::from(EXIT_ERROR)
        }
    }
}

/// `text` with every argument that holds a password replaced by its redacted form.
///
/// clap echoes what the user typed in its errors (`unexpected argument 'redis://:pw@h'`,
/// `invalid value … for '--count'`), and a URL given in the wrong place is still a secret. Both
/// a whole argument and the value of `--flag=value` are looked for, because clap quotes the
/// value alone.
fn redact_args(text: &str, args: &[String]) -> String {
    let mut secrets: Vec<&str> = Vec::new();
    for arg in args {
        secrets.push(arg);
        if let Some((flag, value)) = arg.split_once('=')
            && flag.starts_with('-')
        {
            secrets.push(value);
        }
    }
    // Longest first, so a value is not replaced inside a longer argument that holds it.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let mut out = text.to_string();
    for secret in secrets {
        let redacted = ferry::net::redact_url(secret);
        if redacted != secret {
            out = out.replace(secret, &redacted);
        }
    }
    out
}

/// An error and its causes on one line, without repeating text a cause already carries.
fn one_line(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !out.contains(&c) {
            out.push_str(": ");
            out.push_str(&c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_errors_do_not_echo_passwords() {
        let args = |a: &[&str]| -> Vec<String> { a.iter().map(|s| s.to_string()).collect() };
        let text = "error: unexpected argument 'redis://:hunter2@h' found";
        let out = redact_args(text, &args(&["monitor", "redis://:hunter2@h"]));
        assert_eq!(out, "error: unexpected argument 'redis://:***@h' found");
        let text = "error: invalid value 'u:hunter2@h' for '--count <N>'";
        let out = redact_args(text, &args(&["monitor", "--count=u:hunter2@h"]));
        assert_eq!(out, "error: invalid value 'u:***@h' for '--count <N>'");
        let text = "error: unexpected argument '--sourc' found";
        assert_eq!(redact_args(text, &args(&["--sourc", "x"])), text);
    }
}
