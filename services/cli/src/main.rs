//! `neuroshard`: parses the command line and runs it (see the crate docs). An error is one
//! line on stderr, `neuroshard: error: …` with its causes, and exit status 1 — no backtrace,
//! whatever `RUST_BACKTRACE` says, since the message is for the person who typed the command.

use clap::Parser;

fn main() -> std::process::ExitCode {
    match neuroshard_cli::run(neuroshard_cli::Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("neuroshard: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
