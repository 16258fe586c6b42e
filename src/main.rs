//! The `ferry` binary: parses the command line and hands off to [`cli`]; exit codes are a
//! contract (0 ok, 1 differences found, 2 error).

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
