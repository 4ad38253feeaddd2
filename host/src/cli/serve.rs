//! `durable-host deploy`, `start` and `serve`: components kept in the
//! database, workflows queued, and the server that runs them. Thin: the
//! rules live in `durable_host::control` and `durable_host::scheduler`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use serde_json::json;

use durable_host::api::{self, ApiConfig};
use durable_host::control::{self, DEFAULT_QUEUE, Submission};
use durable_host::metrics::Metrics;
use durable_host::runtime::{ComponentFile, Runtime, RuntimeConfig};
use durable_host::scheduler::{self, ServeConfig};
use durable_host::store::{Database, GroupCommitStore};

use super::args::{CacheArgs, GrantArgs};
use super::exit;
use super::report::{self, print_json};
use super::run::{check_grants, exit_code, input_json};
use super::table::{render, timestamp};

pub fn deploy(
    db: &Database,
    json_mode: bool,
    name: &str,
    component: &Path,
    grants: &GrantArgs,
    cache: &CacheArgs,
) -> anyhow::Result<ExitCode> {
    let file = ComponentFile::read(component)?;
    let grants = grants.to_grants();
    check_grants(db, &grants)?;
    // Every runtime compiles alike, so this check also fills the cache
    // entry that `serve` and `run` load. It runs nothing: no timeouts.
    let runtime = Runtime::new(RuntimeConfig {
        interruptible: false,
        cache: cache.cache(),
        echo_output: false,
        pooled_runs: None,
    })?;
    let store = &*db.open()?;
    let deployment = control::deploy(store, &runtime, name, &file, &grants)?;
    if json_mode {
        print_json(&deployment_json(&deployment));
    } else {
        outln!(
            "deployed {} version {} (component {}): `durable-host start {}` runs it",
            deployment.name,
            deployment.version,
            &deployment.sha256[..12],
            deployment.name
        );
    }
    Ok(ExitCode::from(exit::SUCCESS))
}

pub fn list_deployments(db: &Database, json_mode: bool) -> anyhow::Result<ExitCode> {
    let deployments = db.open_to_read()?.deployments(None)?;
    if json_mode {
        print_json(&deployments.iter().map(deployment_json).collect::<Vec<_>>());
        return Ok(ExitCode::from(exit::SUCCESS));
    }
    if deployments.is_empty() {
        outln!("no deployments (`durable-host deploy NAME FILE.wasm` makes one)");
        return Ok(ExitCode::from(exit::SUCCESS));
    }
    let rows: Vec<Vec<String>> = deployments
        .iter()
        .map(|d| {
            vec![
                d.name.clone(),
                d.version.to_string(),
                d.sha256.chars().take(12).collect(),
                timestamp(d.created_at),
            ]
        })
        .collect();
    out!(
        "{}",
        render(&["NAME", "VERSION", "COMPONENT", "DEPLOYED (UTC)"], &rows)
    );
    Ok(ExitCode::from(exit::SUCCESS))
}

fn deployment_json(deployment: &durable_host::store::Deployment) -> serde_json::Value {
    json!({
        "name": deployment.name,
        "version": deployment.version,
        "component_sha256": deployment.sha256,
        "grants": serde_json::from_str::<serde_json::Value>(&deployment.grants).unwrap_or_default(),
        "created_at_ms": deployment.created_at,
    })
}

/// What `start` was asked.
pub struct StartArgs<'a> {
    pub name: &'a str,
    pub workflow_id: Option<&'a str>,
    pub input: Option<&'a str>,
    pub input_file: Option<&'a Path>,
    pub queue: &'a str,
    pub wait: bool,
    pub wait_timeout: Option<Duration>,
}

pub fn start(db: &Database, json_mode: bool, args: &StartArgs<'_>) -> anyhow::Result<ExitCode> {
    let input = input_json(args.input, args.input_file)?.unwrap_or_else(|| "null".to_owned());
    let store = &*db.open()?;
    let submitted = control::submit(
        store,
        &Submission {
            deployment: args.name,
            workflow_id: args.workflow_id,
            input: &input,
            queue: args.queue,
        },
    )?;
    let id = submitted.workflow.id.clone();
    if !args.wait {
        if json_mode {
            print_json(&json!({
                "workflow_id": id,
                "created": submitted.created,
                "status": submitted.workflow.status.as_str(),
                "queue": submitted.workflow.queue,
            }));
        } else if submitted.created {
            outln!("{id}");
        } else {
            errln!(
                "workflow {id} already exists with this input ({}); nothing new was queued",
                submitted.workflow.status
            );
            outln!("{id}");
        }
        return Ok(ExitCode::from(exit::SUCCESS));
    }
    // A day is "forever" for a command line; the workflow itself goes on.
    let timeout = args.wait_timeout.unwrap_or(Duration::from_secs(24 * 3600));
    let record = control::wait_for_end(store, &id, timeout)?;
    match record.outcome() {
        Some(outcome) => {
            // Ended before this command: it only reads the stored result.
            let already = submitted.workflow.outcome().is_some();
            report::print_stored(&record, &outcome, json_mode, already);
            Ok(exit_code(record.status))
        }
        None => {
            if json_mode {
                print_json(&json!({
                    "workflow_id": id,
                    "status": record.status.as_str(),
                    "finished": false,
                }));
            } else {
                outln!(
                    "workflow {id} is still {} after {}; it goes on (`durable-host history {id}`)",
                    record.status,
                    super::report::millis(timeout)
                );
            }
            Ok(ExitCode::from(exit::STILL_RUNNING))
        }
    }
}

/// What `serve` was asked.
pub struct ServeArgs {
    pub concurrency: usize,
    pub queues: Vec<(String, usize)>,
    pub stale_after: Duration,
    pub shutdown_grace: Duration,
    pub cancel_grace: Duration,
    /// `None`: the backend's default.
    pub poll_interval: Option<Duration>,
    pub json_logs: bool,
    /// Serve the HTTP API on this address.
    pub listen: Option<String>,
    /// The API's bearer token is in this file.
    pub token_file: Option<PathBuf>,
    pub cache: CacheArgs,
}

pub fn serve(db: &Database, args: ServeArgs) -> anyhow::Result<ExitCode> {
    init_logs(args.json_logs);
    let shutdown = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        // A second signal while shutting down exits at once.
        signal_hook::flag::register_conditional_shutdown(signal, 130, Arc::clone(&shutdown))?;
        signal_hook::flag::register(signal, Arc::clone(&shutdown))?;
    }
    let mut queues = vec![(DEFAULT_QUEUE.to_owned(), args.concurrency)];
    for (name, concurrency) in args.queues {
        match queues.iter_mut().find(|(q, _)| *q == name) {
            Some(queue) => queue.1 = concurrency,
            None => queues.push((name, concurrency)),
        }
    }
    // Checked before the database is opened: a refusal leaves nothing behind.
    let api_config = match &args.listen {
        Some(listen) => Some(ApiConfig::new(
            listen,
            args.token_file.as_deref(),
            args.cache.cache(),
        )?),
        None => None,
    };
    let store = GroupCommitStore::open(db)?;
    let metrics = Arc::new(Metrics::default().serving(queues.iter().map(|(name, _)| name.clone())));
    let api = match api_config {
        Some(config) => Some(api::start(
            store.clone(),
            config,
            Arc::clone(&shutdown),
            Arc::clone(&metrics),
        )?),
        None => None,
    };
    let served = scheduler::serve(
        store,
        &ServeConfig {
            queues,
            stale_after: args.stale_after,
            shutdown_grace: args.shutdown_grace,
            cancel_grace: args.cancel_grace,
            poll_interval: args.poll_interval.unwrap_or(match db {
                Database::Sqlite(_) => Duration::from_millis(50),
                Database::Postgres(_) => Duration::from_secs(1),
            }),
            cache: args.cache.cache(),
            metrics,
        },
        shutdown,
    );
    if let Some(api) = api {
        api.shutdown();
    }
    let summary = served?;
    tracing::info!(
        started = summary.started,
        lost = summary.lost,
        completed = summary.completed,
        failed = summary.failed,
        suspended = summary.suspended,
        cancelled = summary.cancelled,
        slept = summary.slept,
        waited = summary.waited,
        abandoned = summary.abandoned,
        writes = summary.writes,
        commits = summary.commits,
        flushed_commits = summary.flushed_commits,
        "stopped"
    );
    Ok(ExitCode::from(exit::SUCCESS))
}

/// Logs on stderr, filtered by `RUST_LOG` (default: info). A log line
/// that cannot be written (the reader of stderr went away) is dropped:
/// tracing's fallback would report it on that same stderr with a panic,
/// taking down the thread that logged (a run, or the scheduler itself).
fn init_logs(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .log_internal_errors(false);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
