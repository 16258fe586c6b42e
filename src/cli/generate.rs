//! `ferry completions` and the hidden `ferry man`: shell completion scripts and man pages,
//! generated from the same clap definitions as the parser, so they never disagree with it.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory};
use clap_complete::Shell;

/// Print a shell completion script: bash, zsh, fish, elvish or powershell
///
/// Print the completion script for a shell on stdout. Install it where the shell looks:
///
///   ferry completions bash > /usr/share/bash-completion/completions/ferry
///
///   ferry completions zsh > /usr/share/zsh/vendor-completions/_ferry
///
///   ferry completions fish > /usr/share/fish/vendor_completions.d/ferry.fish
///
/// The Debian package (`make deb`) installs all three.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    shell: Shell,
}

/// Write the man pages (ferry.1 and ferry-COMMAND.1) into a directory
///
/// Write ferry's man pages, one for ferry and one per command (`ferry-run.1`, …), into DIR,
/// which is created when missing; print the path of each file written. `make deb` packages them.
#[derive(Debug, Args)]
pub struct ManArgs {
    /// Where to write the pages.
    #[arg(value_name = "DIR")]
    dir: PathBuf,
}

pub fn completions(args: CompletionsArgs) -> anyhow::Result<ExitCode> {
    let mut cmd = super::Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "ferry", &mut script);
    super::print_out(String::from_utf8_lossy(&script))?;
    Ok(ExitCode::SUCCESS)
}

/// The DESCRIPTION of ferry(1): what `ferry --help` leaves to the commands' own pages.
const MAN_DESCRIPTION: &str = "\
ferry moves a live Redis dataset from one server to another with zero downtime: it captures \
writes from MONITOR, copies every key with fenced reads, and replays the writes in order on the \
target. Migrations are described by Lua plans (ferry run, ferry check); ferry migrate runs the \
default plan from flags. Each command has its own page, ferry-COMMAND(1), and its help under \
ferry help COMMAND.

Exit status: 0 on success; 1 when a verification found differences; 2 on an error, reported as \
one line on stderr, ferry: error: followed by what failed, with passwords shown as ***.

Environment: FERRY_LOG sets the log filter (tracing syntax, for example ferry=debug); \
FERRY_SOURCE, FERRY_TARGET and FERRY_QUEUE stand for --source, --target and --queue.

Files: the Debian package installs example plans in /usr/share/doc/ferry/examples, and the \
documentation in /usr/share/doc/ferry/docs: troubleshooting.md explains the messages ferry \
prints and what to do about them, plan-reference.md describes plans.";

pub fn man(args: ManArgs) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(&args.dir)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", args.dir.display()))?;
    // Built, so that each subcommand carries its display name (`ferry-run`), which names its
    // page; `ferry help` is what `ferry --help` is for, not a page.
    let mut root = super::Cli::command().disable_help_subcommand(true);
    root.build();
    let source = format!("ferry {}", env!("CARGO_PKG_VERSION"));
    let pages = std::iter::once(root.clone().long_about(MAN_DESCRIPTION))
        .chain(root.get_subcommands().filter(|c| !c.is_hide_set()).cloned());
    let mut written = String::new();
    for page in pages {
        let path = clap_mangen::Man::new(page)
            .source(source.clone())
            .manual("ferry manual")
            .generate_to(&args.dir)
            .map_err(|e| {
                anyhow::anyhow!("cannot write a man page in {}: {e}", args.dir.display())
            })?;
        written.push_str(&format!("{}\n", path.display()));
    }
    super::print_out(written)?;
    Ok(ExitCode::SUCCESS)
}
