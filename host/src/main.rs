//! The `durable-host` binary. See `durable-host --help`.

mod cli;

use std::process::ExitCode;

use clap::Parser;

use cli::args::{Cli, Command};
use durable_host::control::Signal;
use durable_host::store::ListQuery;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => return usage_error(&error),
    };
    let (db, json) = (&cli.db, cli.json);
    // A reader that stopped reading (`list | head`) is no error for a
    // command that only prints what it read; one that changes something
    // still says where it was cut off.
    let only_prints = matches!(
        cli.command,
        Command::List { .. } | Command::History { .. } | Command::Logs { .. }
    );
    let result = match cli.command {
        Command::Run(args) => cli::run::run(db, json, args),
        Command::List {
            status,
            limit,
            after,
            search,
            all,
        } => {
            let query = ListQuery {
                status,
                after,
                id_contains: search,
                limit: None,
            };
            cli::inspect::list(db, json, query, (!all).then_some(limit))
        }
        Command::History {
            workflow_id,
            timeline,
        } => cli::inspect::history(db, json, &workflow_id, timeline),
        Command::Verify {
            component,
            workflow_ids,
            status,
            all,
            timeout,
            cache,
        } => cli::verify::verify(
            db,
            json,
            &component,
            cli::verify::selection(workflow_ids, status, all),
            timeout,
            &cache,
        ),
        Command::Upgrade {
            workflow_ids,
            all,
            to,
            timeout,
            cache,
        } => cli::versions::upgrade(db, json, workflow_ids, all, &to, timeout, &cache),
        Command::Fork {
            workflow_id,
            from_step,
            new_workflow_id,
            component,
            cache,
        } => cli::versions::fork(
            db,
            json,
            &workflow_id,
            from_step,
            new_workflow_id.as_deref(),
            component.as_deref(),
            &cache,
        ),
        Command::Logs {
            workflow_id,
            tail,
            follow,
        } => cli::inspect::logs(db, json, &workflow_id, tail, follow),
        Command::Recover {
            component,
            execution,
        } => cli::run::recover(db, json, &component, &execution),
        Command::Resume {
            workflow_id,
            component,
            execution,
        } => cli::run::resume(db, json, &workflow_id, &component, &execution),
        Command::Cancel { workflow_id } => cli::inspect::cancel(db, json, &workflow_id),
        Command::Signal {
            workflow_id,
            name,
            data,
            signal_id,
        } => cli::signals::signal(
            db,
            json,
            &Signal {
                workflow_id: &workflow_id,
                name: &name,
                value: &data,
                signal_id: signal_id.as_deref(),
            },
        ),
        Command::GetEvent {
            workflow_id,
            key,
            wait,
        } => cli::signals::get_event(db, json, &workflow_id, &key, wait),
        Command::Compile {
            component,
            cache_dir,
        } => cli::compile::compile(json, &component, cache_dir),
        Command::Wit { dir } => cli::wit::write(json, &dir),
        Command::Deploy { list: true, .. } => cli::serve::list_deployments(db, json),
        Command::Deploy {
            name,
            component,
            grants,
            cache,
            ..
        } => cli::serve::deploy(
            db,
            json,
            name.as_deref().unwrap_or_default(),
            component.as_deref().unwrap_or(std::path::Path::new("")),
            &grants,
            &cache,
        ),
        Command::Schedule { action } => cli::schedules::schedule(db, json, action),
        Command::Start {
            name,
            workflow_id,
            input,
            input_file,
            queue,
            wait,
            wait_timeout,
        } => cli::serve::start(
            db,
            json,
            &cli::serve::StartArgs {
                name: &name,
                workflow_id: workflow_id.as_deref(),
                input: input.as_deref(),
                input_file: input_file.as_deref(),
                queue: &queue,
                wait,
                wait_timeout,
            },
        ),
        Command::Serve {
            concurrency,
            queues,
            stale_after,
            shutdown_grace,
            cancel_grace,
            poll_interval,
            log_format,
            listen,
            token_file,
            cache,
        } => cli::serve::serve(
            db,
            cli::serve::ServeArgs {
                concurrency,
                queues,
                stale_after,
                shutdown_grace,
                cancel_grace,
                poll_interval,
                json_logs: log_format == "json",
                listen,
                token_file,
                cache,
            },
        ),
    };
    match result {
        Err(error) if only_prints && cli::is_broken_pipe(&error) => ExitCode::SUCCESS,
        result => result.unwrap_or_else(|error| cli::report_error(&error, json)),
    }
}

/// A command line clap refused (or `--help`, `--version`). With `--json`
/// anywhere on it, a refusal is also printed as the JSON error document.
fn usage_error(error: &clap::Error) -> ExitCode {
    let wants_json = std::env::args_os()
        .skip(1)
        .take_while(|arg| arg != "--")
        .any(|arg| arg == "--json");
    if !wants_json || error.exit_code() == 0 {
        error.exit();
    }
    let _ = error.print();
    // The cause is the first paragraph, before the usage.
    let text = error.render().to_string();
    let cause: Vec<&str> = text
        .lines()
        .take_while(|line| !line.trim().is_empty())
        .map(str::trim)
        .collect();
    let cause = cause.join(" ");
    let message = cause.strip_prefix("error: ").unwrap_or(&cause);
    let code = cli::exit::USER_ERROR;
    cli::print_json_error(message, Some("see `durable-host --help`"), code);
    ExitCode::from(code)
}
