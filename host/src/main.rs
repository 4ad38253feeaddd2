//! The `durable-host` binary. See `durable-host --help`.

mod cli;

use std::process::ExitCode;

use clap::Parser;

use cli::args::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => cli::run::run(args),
    };
    result.unwrap_or_else(|error| cli::report_error(&error))
}
