//! `durable-host run` and `durable-host recover`: execute workflows.
//!
//! The order of the checks is deliberate: everything a user can get wrong
//! (input, component, directories, database) is checked before the workflow
//! is claimed (at its first write), so a mistake never leaves a record behind.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use serde_json::json;

use durable_host::engine::{
    CrashPlan, CrashPoint, EngineError, Opened, OwnHeartbeat, RunReport, RunRequest, WorkflowRun,
};
use durable_host::runtime::{
    ComponentFile, Grants, Runtime, RuntimeConfig, RuntimeError, WorkflowComponent,
};
use durable_host::store::{CheckpointStore, Database, Failure, ListQuery, WorkflowStatus};

use super::args::{ExecutionArgs, RunArgs};
use super::exit;
use super::report::{self, Progress};

/// A problem with `--input` / `--input-file`.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("--input is not valid JSON: {0}")]
    InvalidJson(serde_json::Error),
    #[error("{path} does not hold valid JSON")]
    InvalidJsonFile {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot read --input-file {path}")]
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

/// A connection to the database, of either backend.
type Store = Box<dyn CheckpointStore>;

/// What every execution with one set of grants needs, checked and set up once.
struct Executor {
    db: Database,
    grants: Grants,
    runtime: Runtime,
    stale_after: std::time::Duration,
    cancel_grace: std::time::Duration,
}

impl Executor {
    fn new(db: &Database, grants: Grants, args: &ExecutionArgs) -> anyhow::Result<Self> {
        check_grants(db, &grants)?;
        let runtime = Runtime::new(RuntimeConfig {
            interruptible: grants.timeout().is_some(),
            cache: args.cache.cache(),
            echo_output: true,
            pooled_runs: None,
        })?;
        Ok(Self {
            db: db.clone(),
            grants,
            runtime,
            stale_after: args.stale_after,
            cancel_grace: args.cancel_grace,
        })
    }

    /// The store for one run: `opened` if the database was opened already,
    /// else a new connection.
    fn store(&self, opened: Option<Store>) -> anyhow::Result<Store> {
        Ok(match opened {
            Some(store) => store,
            None => self.db.open()?,
        })
    }
}

/// What the command line grants.
pub(super) fn given_grants(args: &ExecutionArgs) -> Grants {
    args.grants.to_grants()
}

/// The database, if it exists, and what workflow `id` was granted when it
/// started, if it exists and the grants were recorded; and whether it has
/// ended (a run of it only prints how). The connection is kept for the
/// run: closing it here, as the last connection, would checkpoint and
/// remove the WAL, which the run's own connection would then create again.
fn recorded_grants(
    db: &Database,
    id: &str,
) -> anyhow::Result<(Option<Store>, Option<Grants>, bool)> {
    if !db.exists() {
        return Ok((None, None, false));
    }
    let store = db.open()?;
    let workflow = store.workflow(id)?;
    let ended = workflow.as_ref().is_some_and(|w| w.outcome().is_some());
    let grants = workflow
        .and_then(|w| w.grants)
        .and_then(|json| Grants::from_json(&json));
    Ok((Some(store), grants, ended))
}

/// Every granted directory must exist, and none may hold the database: a
/// guest that can write there can overwrite every workflow's checkpoints.
pub(super) fn check_grants(db: &Database, grants: &Grants) -> anyhow::Result<()> {
    let db_dir = db
        .sqlite_path()
        .and_then(|path| std::path::absolute(path).ok())
        .and_then(|db| db.parent().and_then(|dir| dir.canonicalize().ok()));
    for dir in &grants.dirs {
        anyhow::ensure!(
            dir.host.is_dir(),
            "--dir {}: no such directory (create it first; the guest sees it as {})",
            dir.host.display(),
            dir.guest
        );
        if let (Some(db_dir), Ok(granted)) = (&db_dir, dir.host.canonicalize()) {
            anyhow::ensure!(
                !db_dir.starts_with(&granted),
                "--dir {} would let the guest write the database {}, and with it every \
                 workflow's checkpoints; keep the database outside the directories you grant \
                 (pass --db PATH, or grant a subdirectory)",
                dir.host.display(),
                db
            );
        }
    }
    Ok(())
}

pub fn run(db: &Database, json_mode: bool, args: RunArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let input = read_input(&args)?;
    let component = ComponentFile::read(&args.component)?;
    let (opened, recorded, ended) = recorded_grants(db, &args.workflow_id)?;
    // An ended workflow runs nothing: other grants change nothing, and its
    // stored result is printed with those it had.
    let given = given_grants(&args.execution);
    let grants = match recorded {
        Some(recorded) if ended => recorded,
        recorded => Grants::for_resume(&args.workflow_id, recorded.as_ref(), given)
            .map_err(RuntimeError::from)?,
    };
    let executor = Executor::new(db, grants, &args.execution)?;
    let grants_json = executor.grants.to_json();
    let run_id = durable_host::new_run_id();
    let request = RunRequest {
        workflow_id: &args.workflow_id,
        component_sha256: component.sha256(),
        input: input.as_deref(),
        run_id: &run_id,
        leases: Arc::new(OwnHeartbeat {
            stale_after: executor.stale_after,
        }),
        unload_sleeps: !args.wait,
        allow_component_change: args.allow_component_change,
        reopen: false,
        cancel_grace: args.execution.cancel_grace,
        grants: Some(&grants_json),
        component: Some(Arc::clone(component.bytes())),
    };
    let progress = Box::new(Progress::new(!json_mode));
    let crash = crash_plan(&args);
    let crash_points = crash.tracker();
    let run = match WorkflowRun::open(executor.store(opened)?, &request, crash, progress)? {
        Opened::Finished(workflow) => {
            let outcome = workflow
                .outcome()
                .unwrap_or_else(|| Err(Failure::new(String::new())));
            report::print_finished(&workflow, &outcome, json_mode);
            return Ok(exit_code(workflow.status));
        }
        Opened::Ready(run) => run,
    };
    let compiled = executor
        .runtime
        .compile(&component)
        .with_context(|| format!("workflow {} was not started", args.workflow_id))?;
    if !json_mode {
        report::print_start(&args.workflow_id, &run_id, run.recorded_steps());
    }
    let report = executor.runtime.run(&compiled, &executor.grants, run)?;
    report::print_report(&report, started.elapsed(), json_mode);
    // A crash that was asked for and did not happen is a mistake (a typo in
    // a step name, say) that must not pass for a run that survived it.
    let unreached = crash_points.unreached();
    for point in &unreached {
        let why = match point {
            CrashPoint::AfterCheckpoints(_) => "this run committed fewer checkpoints",
            CrashPoint::Before(_) | CrashPoint::After(_) => "no such step ran in this run",
        };
        errln!("warning: {point} was never reached ({why})");
    }
    if !unreached.is_empty() {
        errln!(
            "  hint: `durable-host history {}` lists the steps by key; a crash point names a \
             step (its first call) or a key like `name#000002`; built-in steps are named \
             `durable.now`, `durable.sleep`, `durable.random` and `durable.uuid`; a step \
             replayed from an earlier run does not run again",
            args.workflow_id
        );
        if report.status == WorkflowStatus::Completed {
            return Ok(ExitCode::from(exit::USER_ERROR));
        }
    }
    Ok(exit_code(report.status))
}

/// What became of one workflow during `recover`.
enum Recovered {
    Finished(RunReport),
    Skipped(String),
}

pub fn recover(
    db: &Database,
    json_mode: bool,
    component_path: &Path,
    args: &ExecutionArgs,
) -> anyhow::Result<ExitCode> {
    let component = ComponentFile::read(component_path)?;
    let given = given_grants(args);
    let candidates: Vec<(String, Option<String>)> = db
        .open()?
        .list_workflows(&ListQuery {
            status: Some(WorkflowStatus::Running),
            ..ListQuery::default()
        })?
        .into_iter()
        .filter(|summary| summary.workflow.component_sha256 == component.sha256())
        .map(|summary| (summary.workflow.id, summary.workflow.grants))
        .collect();
    if !json_mode {
        outln!(
            "recovering {} unfinished workflow(s) started by {}",
            candidates.len(),
            component.path().display()
        );
    }
    // Workflows may have been started with different grants: one executor
    // (and one compiled component) per set of grants.
    let mut executors: Vec<(Executor, Option<WorkflowComponent>)> = Vec::new();
    let mut results = Vec::new();
    for (id, recorded) in candidates {
        let recorded = recorded.as_deref().and_then(Grants::from_json);
        let grants = match Grants::for_resume(&id, recorded.as_ref(), given.clone()) {
            Ok(grants) => grants,
            Err(refused) => {
                if !json_mode {
                    outln!("workflow {id} skipped: {refused}");
                }
                results.push((id, Recovered::Skipped(refused.to_string())));
                continue;
            }
        };
        let slot = match executors.iter().position(|(e, _)| e.grants == grants) {
            Some(slot) => slot,
            None => {
                executors.push((Executor::new(db, grants, args)?, None));
                executors.len() - 1
            }
        };
        let (executor, compiled) = &mut executors[slot];
        let outcome = recover_one(executor, &component, compiled, &id, json_mode)?;
        results.push((id, outcome));
    }

    let count = |status: WorkflowStatus| {
        results
            .iter()
            .filter(|(_, r)| matches!(r, Recovered::Finished(report) if report.status == status))
            .count()
    };
    let (completed, failed, cancelled, suspended) = (
        count(WorkflowStatus::Completed),
        count(WorkflowStatus::Failed),
        count(WorkflowStatus::Cancelled),
        count(WorkflowStatus::Suspended),
    );
    let skipped = results.len() - completed - failed - cancelled - suspended;
    if json_mode {
        let workflows: Vec<_> = results
            .iter()
            .map(|(id, result)| match result {
                Recovered::Finished(report) => json!({
                    "workflow_id": id,
                    "status": report.status.as_str(),
                    "output": report::output_value(&report.outcome),
                    "error": report::error_message(&report.outcome),
                    "error_code": report::error_code(&report.outcome),
                }),
                Recovered::Skipped(reason) => json!({
                    "workflow_id": id, "status": "skipped", "reason": reason,
                }),
            })
            .collect();
        report::print_json(&json!({
            "resumed": results.len() - skipped,
            "completed": completed,
            "failed": failed,
            "cancelled": cancelled,
            "suspended": suspended,
            "skipped": skipped,
            "workflows": workflows,
        }));
    } else {
        outln!(
            "recovered {}: {completed} completed, {failed} failed, {cancelled} cancelled, \
             {suspended} suspended, {skipped} skipped",
            results.len()
        );
    }
    Ok(ExitCode::from(if failed + suspended > 0 {
        exit::WORKFLOW_FAILED
    } else {
        exit::SUCCESS
    }))
}

fn recover_one(
    executor: &Executor,
    component: &ComponentFile,
    compiled: &mut Option<WorkflowComponent>,
    id: &str,
    json_mode: bool,
) -> anyhow::Result<Recovered> {
    let run_id = durable_host::new_run_id();
    let request = RunRequest {
        workflow_id: id,
        component_sha256: component.sha256(),
        input: None,
        run_id: &run_id,
        leases: Arc::new(OwnHeartbeat {
            stale_after: executor.stale_after,
        }),
        unload_sleeps: true,
        allow_component_change: false,
        reopen: false,
        cancel_grace: executor.cancel_grace,
        grants: None,
        component: None,
    };
    let progress = Box::new(Progress::new(!json_mode));
    let run = match WorkflowRun::open(executor.store(None)?, &request, CrashPlan::none(), progress)
    {
        Ok(Opened::Ready(run)) => run,
        // Finished (or cancelled) since it was listed: nothing to resume.
        Ok(Opened::Finished(workflow)) => {
            return Ok(Recovered::Skipped(format!("already {}", workflow.status)));
        }
        Err(error @ (EngineError::OwnedElsewhere { .. } | EngineError::Upgraded { .. })) => {
            return Ok(Recovered::Skipped(error.to_string()));
        }
        Err(error) => return Err(error.into()),
    };
    if !json_mode {
        report::print_start(id, &run_id, run.recorded_steps());
    }
    let compiled = match compiled {
        Some(compiled) => compiled,
        None => compiled.insert(executor.runtime.compile(component)?),
    };
    let started = Instant::now();
    match executor.runtime.run(compiled, &executor.grants, run) {
        Ok(report) => {
            if !json_mode {
                report::print_report(&report, started.elapsed(), false);
            }
            Ok(Recovered::Finished(report))
        }
        // One workflow that cannot go on (say, it diverges) must not stop
        // the recovery of the others.
        Err(error) => {
            if !json_mode {
                outln!("workflow {id} skipped: {error}");
            }
            Ok(Recovered::Skipped(error.to_string()))
        }
    }
}

/// `durable-host resume`: continue a failed or suspended workflow from its
/// history, on `component` (fixed code is the usual reason), with the
/// recorded grants or, when the command line names some, with those.
pub fn resume(
    db: &Database,
    json_mode: bool,
    workflow_id: &str,
    component_path: &Path,
    args: &ExecutionArgs,
) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let component = ComponentFile::read(component_path)?;
    anyhow::ensure!(
        db.exists(),
        "no database at {db}: nothing has run there yet (pass --db PATH to look elsewhere)"
    );
    let given = given_grants(args);
    let (opened, recorded, _) = recorded_grants(db, workflow_id)?;
    let grants = match recorded {
        Some(recorded) if given.is_empty() => recorded,
        _ => given,
    };
    let executor = Executor::new(db, grants, args)?;
    let grants_json = executor.grants.to_json();
    let run_id = durable_host::new_run_id();
    let request = RunRequest {
        workflow_id,
        component_sha256: component.sha256(),
        input: None,
        run_id: &run_id,
        leases: Arc::new(OwnHeartbeat {
            stale_after: executor.stale_after,
        }),
        unload_sleeps: true,
        allow_component_change: true,
        reopen: true,
        cancel_grace: args.cancel_grace,
        grants: Some(&grants_json),
        component: None,
    };
    let progress = Box::new(Progress::new(!json_mode));
    let run = match WorkflowRun::open(
        executor.store(opened)?,
        &request,
        CrashPlan::none(),
        progress,
    )? {
        Opened::Finished(workflow) => {
            let outcome = workflow
                .outcome()
                .unwrap_or_else(|| Err(Failure::new(String::new())));
            report::print_finished(&workflow, &outcome, json_mode);
            return Ok(exit_code(workflow.status));
        }
        Opened::Ready(run) => run,
    };
    let compiled = executor
        .runtime
        .compile(&component)
        .with_context(|| format!("workflow {workflow_id} was not resumed"))?;
    if !json_mode {
        report::print_start(workflow_id, &run_id, run.recorded_steps());
    }
    let report = executor.runtime.run(&compiled, &executor.grants, run)?;
    report::print_report(&report, started.elapsed(), json_mode);
    Ok(exit_code(report.status))
}

/// The input as compact JSON (so that equal values compare equal), or `None`.
fn read_input(args: &RunArgs) -> Result<Option<String>, InputError> {
    input_json(args.input.as_deref(), args.input_file.as_deref())
}

/// `--input` or `--input-file` as compact JSON, or `None` when neither.
pub(super) fn input_json(
    input: Option<&str>,
    input_file: Option<&Path>,
) -> Result<Option<String>, InputError> {
    let value: serde_json::Value = match (input, input_file) {
        (Some(text), _) => serde_json::from_str(text).map_err(InputError::InvalidJson)?,
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path).map_err(|source| InputError::Unreadable {
                path: path.to_owned(),
                source,
            })?;
            serde_json::from_str(&text).map_err(|source| InputError::InvalidJsonFile {
                path: path.to_owned(),
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
        errln!("durable-host: simulated crash {point}");
        // No destructors, no rollback, no close: what `kill -9` leaves behind.
        std::process::exit(exit::SIMULATED_CRASH);
    })
}

pub(super) fn exit_code(status: WorkflowStatus) -> ExitCode {
    ExitCode::from(match status {
        WorkflowStatus::Completed => exit::SUCCESS,
        WorkflowStatus::Failed | WorkflowStatus::Running | WorkflowStatus::Queued => {
            exit::WORKFLOW_FAILED
        }
        WorkflowStatus::Sleeping => exit::SLEEPING,
        WorkflowStatus::Waiting => exit::WAITING,
        WorkflowStatus::Cancelled => exit::CANCELLED,
        WorkflowStatus::Suspended => exit::SUSPENDED,
    })
}
