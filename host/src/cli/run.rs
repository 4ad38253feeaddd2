//! `durable-host run`: start, resume, or report a workflow.
//!
//! The order of the checks is deliberate: everything a user can get wrong
//! (input, component, directories, database) is checked before the workflow
//! is claimed (at its first write), so a mistake never leaves a record behind.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context as _;

use durable_host::engine::{CrashPlan, CrashPoint, Opened, RunRequest, WorkflowRun};
use durable_host::runtime::{ComponentFile, Runtime, Sandbox};
use durable_host::store::{Outcome, SqliteStore};

use super::args::RunArgs;
use super::exit;
use super::report::{self, Progress};

/// A problem with `--input` / `--input-file`.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("--input is not valid JSON: {0}")]
    InvalidJson(serde_json::Error),
    #[error("{path} does not hold valid JSON: {source}")]
    InvalidJsonFile {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot read --input-file {path}: {source}")]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl InputError {
    pub fn hint(&self) -> &'static str {
        match self {
            Self::InvalidJson(_) => {
                "pass JSON and quote it for the shell, e.g. --input '{\"id\": \"emp-001\"}'; a \
                 plain string needs its own quotes: --input '\"text\"'"
            }
            Self::InvalidJsonFile { .. } => "fix the file, or pass the JSON inline with --input",
            Self::Unreadable { .. } => "check the path of --input-file",
        }
    }
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let input = read_input(&args)?;
    let component = ComponentFile::read(&args.component)?;
    let sandbox = Sandbox {
        dirs: args.dirs.clone(),
        env: args.env.clone(),
    };
    for dir in &sandbox.dirs {
        anyhow::ensure!(
            dir.host.is_dir(),
            "--dir {}: no such directory (create it first; the guest sees it as {})",
            dir.host.display(),
            dir.guest
        );
    }
    let store = SqliteStore::open(&args.db)?;
    let run_id = durable_host::new_run_id();
    let request = RunRequest {
        workflow_id: &args.workflow_id,
        component_sha256: component.sha256(),
        input: input.as_deref(),
        run_id: &run_id,
    };
    let progress = Box::new(Progress { live: !args.json });
    let run = match WorkflowRun::open(Box::new(store), &request, crash_plan(&args), progress)? {
        Opened::Finished(workflow) => {
            let outcome = workflow.outcome().unwrap_or_else(|| Err(String::new()));
            report::print_finished(&workflow, &outcome, args.json);
            return Ok(exit_code(&outcome));
        }
        Opened::Ready(run) => run,
    };

    let runtime = Runtime::new()?;
    let compiled = runtime
        .compile(&component)
        .with_context(|| format!("workflow {} was not started", args.workflow_id))?;

    if !args.json {
        report::print_start(&args.workflow_id, &run_id, run.recorded_steps());
    }
    let report = runtime.run(&compiled, &sandbox, run)?;
    report::print_report(&report, started.elapsed(), args.json);
    Ok(exit_code(&report.outcome))
}

/// The input as compact JSON (so that equal values compare equal), or `None`.
fn read_input(args: &RunArgs) -> Result<Option<String>, InputError> {
    let value: serde_json::Value = match (&args.input, &args.input_file) {
        (Some(text), _) => serde_json::from_str(text).map_err(InputError::InvalidJson)?,
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path).map_err(|source| InputError::Unreadable {
                path: path.clone(),
                source,
            })?;
            serde_json::from_str(&text).map_err(|source| InputError::InvalidJsonFile {
                path: path.clone(),
                source,
            })?
        }
        (None, None) => return Ok(None),
    };
    Ok(Some(value.to_string()))
}

fn crash_plan(args: &RunArgs) -> CrashPlan {
    let mut points = args.crash.clone();
    points.extend(args.crash_after.map(CrashPoint::AfterCheckpoints));
    CrashPlan::new(points, |point| {
        eprintln!("durable-host: simulated crash {point}");
        // No destructors, no rollback, no close: what `kill -9` leaves behind.
        std::process::exit(exit::SIMULATED_CRASH);
    })
}

fn exit_code(outcome: &Outcome) -> ExitCode {
    ExitCode::from(match outcome {
        Ok(_) => exit::COMPLETED,
        Err(_) => exit::WORKFLOW_FAILED,
    })
}
