//! The `durable-host` binary. See `durable-host --help`.

mod cli;

use std::process::ExitCode;

use clap::Parser;

use cli::args::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (db, json) = (cli.db.as_path(), cli.json);
    let result = match cli.command {
        Command::Run(args) => cli::run::run(db, json, args),
        Command::List { status } => cli::inspect::list(db, json, status),
        Command::History { workflow_id } => cli::inspect::history(db, json, &workflow_id),
        Command::Recover {
            component,
            execution,
        } => cli::run::recover(db, json, &component, &execution),
        Command::Cancel { workflow_id } => cli::inspect::cancel(db, json, &workflow_id),
    };
    result.unwrap_or_else(|error| cli::report_error(&error))
}
