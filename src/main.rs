//! The `ringsock` binary: parse flags, run, turn the outcome into an exit code.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = match ringsock::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // --help and --version succeed; usage errors exit 1 like systemd-socket-proxyd.
            return if e.use_stderr() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match cli.validate().and_then(ringsock::run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            ringsock::error!("{message}");
            ExitCode::FAILURE
        }
    }
}
