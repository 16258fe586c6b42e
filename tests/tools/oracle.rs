//! The test fixtures' oracle as a command, for `make demo` and manual checks: compares two
//! servers completely (every key, type, value and TTL, in both directions).
//!
//! Usage: `cargo run --release --example oracle -- SOURCE_URL TARGET_URL [TTL_TOLERANCE_MS]`.
//! Exit code 0 when identical, 1 when not, 2 on bad usage.

#![allow(dead_code)]

#[path = "../it/support/oracle.rs"]
mod oracle;
/// The oracle's client: plain `Client::open` here, since no test server registers TLS files.
#[path = "../it/support/tls.rs"]
mod tls;

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: oracle SOURCE_URL TARGET_URL [TTL_TOLERANCE_MS]");
        return std::process::ExitCode::from(2);
    }
    let tolerance = args.get(3).and_then(|t| t.parse().ok()).unwrap_or(1000);
    let opts = oracle::OracleOptions {
        ttl_tolerance_ms: tolerance,
        ..oracle::OracleOptions::default()
    };
    let report = oracle::compare(&args[1], &args[2], &opts);
    println!("{report}");
    for d in report.diffs.iter().take(20) {
        println!("  {d}");
    }
    if report.is_identical() {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::from(1)
    }
}
