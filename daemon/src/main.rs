//! `skychimpd`: parse the command line and run one command.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    skychimpd::cli::run(skychimpd::cli::Cli::parse())
}
