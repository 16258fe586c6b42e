//! `ferry status`: what a run in a state dir is doing (or did), from its status file.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use ferry::observe;

/// Show a run's phase, lag, progress, ETA, errors and last fence, from its state dir
///
/// Read the status file a run (`ferry migrate`, `ferry run`, `ferry capture`) rewrites about
/// every second in its state dir, during the run or after it, and say whether the process that
/// wrote it is still alive. Exit 0 when a status was read, 2 when there is none.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The run's state dir (`--state-dir` of `ferry migrate`, `journal.dir` of a plan).
    #[arg(long, default_value = "./ferry-state", value_name = "DIR")]
    state_dir: PathBuf,

    /// Print the status file as JSON, with `alive` added.
    #[arg(long)]
    json: bool,
}

pub fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let status = observe::read_status(&args.state_dir)?;
    let alive = observe::alive(status.pid);
    if args.json {
        let mut v = serde_json::to_value(&status)?;
        if let Some(o) = v.as_object_mut() {
            o.insert("alive".into(), alive.into());
        }
        super::print_out(serde_json::to_string_pretty(&v)?)?;
    } else {
        super::print_out(observe::render_status(&status, alive).trim_end())?;
    }
    Ok(ExitCode::SUCCESS)
}
