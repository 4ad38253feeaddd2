//! What clients do to workflows without running them: deploy components,
//! submit workflows to queues, look them up, wait for results, send them
//! signals, read the events they publish, cancel.
//!
//! The command line and the HTTP API are both thin clients of this module,
//! so the two agree on every rule (idempotent submissions, size limits,
//! error kinds). It knows the store and the runtime's checks, but nothing of
//! clap, HTTP, or how `serve` schedules what it queues.

use std::time::{Duration, Instant};

use crate::engine::{MAX_INPUT, MAX_NAME, cancel_workflow};
use crate::runtime::{ComponentFile, Grants, Runtime, RuntimeError};
use crate::store::{
    CheckpointStore, Deployment, Enqueued, PublishedEvent, QueuedWorkflow, SignalRecord,
    SignalSent, StoreError, WorkflowRecord, now_millis,
};

pub use crate::engine::CancelOutcome;

/// The queue workflows wait in unless they name another.
pub const DEFAULT_QUEUE: &str = "default";

/// Why a client's request was refused. Each says what to change.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("no deployment named `{name}`")]
    UnknownDeployment { name: String },
    #[error("deployment `{name}` has no version whose component's sha256 starts with `{sha}`")]
    UnknownVersion { name: String, sha: String },
    #[error("no schedule named `{name}`")]
    UnknownSchedule { name: String },
    /// A cron expression that does not parse or never ticks: why, and
    /// what one looks like.
    #[error("{reason}")]
    InvalidSchedule { reason: String, hint: &'static str },
    #[error("workflow {id} has published no event `{key}`{}", event_wait(*.ended, .waited))]
    UnknownEvent {
        id: String,
        key: String,
        /// The workflow has ended: it will publish nothing more.
        ended: bool,
        /// How long the caller waited for it, if at all.
        waited: Option<Duration>,
    },
    #[error("workflow {id} exists with another input")]
    InputConflict { id: String },
    /// `what` (the input, a signal's value) does not parse.
    #[error("{what} is not valid JSON: {reason}")]
    InvalidInput { what: &'static str, reason: String },
    #[error("{what} is {size} bytes, more than the {limit} bytes allowed")]
    TooLarge {
        what: &'static str,
        size: usize,
        limit: usize,
    },
    #[error("{what} `{value}` is not valid: {reason}")]
    InvalidName {
        what: &'static str,
        value: String,
        reason: &'static str,
    },
    /// The request cannot be done as asked: why, and what would work.
    #[error("{reason}")]
    Refused { reason: String },
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
}

/// Check a deployment name, queue name or workflow id: printable, no `/`
/// trouble for URLs is needed, but no control characters and a bound.
pub(crate) fn check_name(what: &'static str, value: &str) -> Result<(), ControlError> {
    let invalid = |reason| ControlError::InvalidName {
        what,
        value: value.chars().take(80).collect(),
        reason,
    };
    if value.is_empty() {
        return Err(invalid("it is empty"));
    }
    if value.len() > MAX_NAME {
        return Err(invalid("it is longer than 1,024 bytes"));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid("it contains control characters"));
    }
    Ok(())
}

/// Keep `component` in the database and record it as the newest version of
/// deployment `name`, after checking that it is a workflow this host can
/// run. Every version is kept: workflows resume on the exact bytes that
/// started them.
pub fn deploy(
    store: &dyn CheckpointStore,
    runtime: &Runtime,
    name: &str,
    component: &ComponentFile,
    grants: &Grants,
) -> Result<Deployment, ControlError> {
    check_name("the deployment name", name)?;
    if name.contains('@') {
        return Err(ControlError::InvalidName {
            what: "the deployment name",
            value: name.chars().take(80).collect(),
            reason: "`@` separates a deployment's name from its version (`upgrade --to NAME@SHA`)",
        });
    }
    runtime.compile(component)?;
    store.put_component(component.sha256(), component.bytes())?;
    Ok(store.deploy(name, component.sha256(), &grants.to_json())?)
}

/// A workflow to queue.
#[derive(Debug, Clone)]
pub struct Submission<'a> {
    /// The deployment whose newest version runs it.
    pub deployment: &'a str,
    /// Its id; one is made up when `None`.
    pub workflow_id: Option<&'a str>,
    /// Its input, as JSON text.
    pub input: &'a str,
    pub queue: &'a str,
}

/// A queued workflow, new or found.
#[derive(Debug, Clone)]
pub struct Submitted {
    pub workflow: WorkflowRecord,
    /// `false` when a workflow with this id and input already existed.
    pub created: bool,
}

/// `text` (`what` it is, for errors), checked to be JSON of at most
/// [`MAX_INPUT`] bytes, written compact: stored so, equal values compare
/// equal.
fn compact_json(what: &'static str, text: &str) -> Result<String, ControlError> {
    if text.len() > MAX_INPUT {
        return Err(ControlError::TooLarge {
            what,
            size: text.len(),
            limit: MAX_INPUT,
        });
    }
    Ok(serde_json::from_str::<serde_json::Value>(text)
        .map_err(|e| ControlError::InvalidInput {
            what,
            reason: e.to_string(),
        })?
        .to_string())
}

/// Queue a workflow of the newest version of `submission.deployment`.
/// Idempotent on the id: the same id and input answer with the existing
/// workflow; another input is refused.
pub fn submit(
    store: &dyn CheckpointStore,
    submission: &Submission<'_>,
) -> Result<Submitted, ControlError> {
    check_name("the deployment name", submission.deployment)?;
    check_name("the queue name", submission.queue)?;
    let input = compact_json("the input", submission.input)?;
    let id = match submission.workflow_id {
        Some(id) => {
            check_name("the workflow id", id)?;
            id.to_owned()
        }
        None => new_workflow_id(),
    };
    let deployment = store
        .deployments(Some(submission.deployment))?
        .into_iter()
        .next()
        .ok_or_else(|| ControlError::UnknownDeployment {
            name: submission.deployment.to_owned(),
        })?;
    let enqueued = store.enqueue_workflow(&QueuedWorkflow {
        id: &id,
        deployment: &deployment.name,
        component_sha256: &deployment.sha256,
        input: &input,
        grants: &deployment.grants,
        queue: submission.queue,
    })?;
    match enqueued {
        Enqueued::Created(workflow) => Ok(Submitted {
            workflow: *workflow,
            created: true,
        }),
        Enqueued::Existing(workflow) if workflow.input == input => Ok(Submitted {
            workflow: *workflow,
            created: false,
        }),
        Enqueued::Existing(_) => Err(ControlError::InputConflict { id }),
    }
}

/// The workflow `id`, or `UnknownWorkflow`.
pub fn workflow(store: &dyn CheckpointStore, id: &str) -> Result<WorkflowRecord, ControlError> {
    store
        .workflow(id)?
        .ok_or_else(|| StoreError::UnknownWorkflow { id: id.to_owned() }.into())
}

/// How often [`wait_for_end`] looks.
const RESULT_POLL: Duration = Duration::from_millis(20);

/// Wait up to `timeout` for workflow `id` to finish (complete, fail, be
/// cancelled or suspended); the record as it is then.
pub fn wait_for_end(
    store: &dyn CheckpointStore,
    id: &str,
    timeout: Duration,
) -> Result<WorkflowRecord, ControlError> {
    let deadline = Instant::now() + timeout;
    loop {
        let record = workflow(store, id)?;
        if record.outcome().is_some() || Instant::now() >= deadline {
            return Ok(record);
        }
        std::thread::sleep(RESULT_POLL.min(deadline.saturating_duration_since(Instant::now())));
    }
}

/// A signal for a workflow, as a client sends it.
#[derive(Debug, Clone)]
pub struct Signal<'a> {
    pub workflow_id: &'a str,
    pub name: &'a str,
    /// JSON.
    pub value: &'a str,
    /// Makes sending again harmless: a second signal with this id is
    /// ignored [default: a new id, so every send is a signal].
    pub signal_id: Option<&'a str>,
}

/// Send `signal`, kept for the workflow until one of its waits takes it.
/// Answers with the signal kept, and whether it was new.
pub fn send_signal(
    store: &dyn CheckpointStore,
    signal: &Signal<'_>,
) -> Result<(SignalRecord, bool), ControlError> {
    check_name("the workflow id", signal.workflow_id)?;
    check_name("the signal name", signal.name)?;
    if let Some(id) = signal.signal_id {
        check_name("the signal id", id)?;
    }
    let value = compact_json("the signal's value", signal.value)?;
    let sent = store.send_signal(&SignalRecord {
        seq: 0,
        workflow_id: signal.workflow_id.to_owned(),
        name: signal.name.to_owned(),
        signal_id: signal
            .signal_id
            .map_or_else(|| format!("sig-{}", crate::new_run_id()), str::to_owned),
        value,
        sent_at: now_millis(),
        taken_by: None,
    })?;
    Ok(match sent {
        SignalSent::Kept(signal) => (signal, true),
        SignalSent::Duplicate(signal) => (signal, false),
    })
}

/// The value workflow `id` last published under `key`; with `wait`, wait
/// up to that long for one to be published.
pub fn published_event(
    store: &dyn CheckpointStore,
    id: &str,
    key: &str,
    wait: Option<Duration>,
) -> Result<PublishedEvent, ControlError> {
    let deadline = Instant::now() + wait.unwrap_or_default();
    loop {
        let workflow = workflow(store, id)?;
        let found = store
            .published_events(id)?
            .into_iter()
            .find(|event| event.key == key);
        match found {
            Some(event) => return Ok(event),
            // An ended workflow publishes nothing more.
            None if Instant::now() >= deadline || workflow.status.is_final() => {
                return Err(ControlError::UnknownEvent {
                    id: id.to_owned(),
                    key: key.to_owned(),
                    ended: workflow.status.is_final(),
                    waited: wait.filter(|wait| !wait.is_zero()),
                });
            }
            None => std::thread::sleep(
                RESULT_POLL.min(deadline.saturating_duration_since(Instant::now())),
            ),
        }
    }
}

/// What [`ControlError::UnknownEvent`] adds: why no more waiting helps, or
/// how long it waited.
fn event_wait(ended: bool, waited: &Option<Duration>) -> String {
    match waited {
        _ if ended => " and has ended: it publishes nothing more".to_owned(),
        Some(waited) => format!(" after a wait of {} s", waited.as_secs_f64()),
        None => String::new(),
    }
}

/// Cancel workflow `id` (see [`cancel_workflow`]).
pub fn cancel(store: &dyn CheckpointStore, id: &str) -> Result<CancelOutcome, ControlError> {
    Ok(cancel_workflow(store, id)?)
}

/// A fresh workflow id, `wf-` and 16 hex digits.
pub fn new_workflow_id() -> String {
    format!("wf-{}", crate::new_run_id())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqliteStore;

    fn store_with_deployment() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("db")).unwrap();
        store.put_component("abc", b"\0asm").unwrap();
        store.deploy("greet", "abc", "{}").unwrap();
        (dir, store)
    }

    fn submission<'a>(id: Option<&'a str>, input: &'a str) -> Submission<'a> {
        Submission {
            deployment: "greet",
            workflow_id: id,
            input,
            queue: DEFAULT_QUEUE,
        }
    }

    #[test]
    fn submissions_are_idempotent_on_the_id() {
        let (_dir, store) = store_with_deployment();
        let first = submit(&store, &submission(Some("a"), r#"{"x": 1}"#)).unwrap();
        assert!(first.created);
        assert_eq!(first.workflow.input, r#"{"x":1}"#);
        let again = submit(&store, &submission(Some("a"), r#"{ "x" : 1 }"#)).unwrap();
        assert!(!again.created, "the same input (however spaced) finds it");
        let other = submit(&store, &submission(Some("a"), r#"{"x": 2}"#)).unwrap_err();
        assert!(
            matches!(other, ControlError::InputConflict { .. }),
            "{other}"
        );
    }

    #[test]
    fn bad_submissions_are_refused() {
        let (_dir, store) = store_with_deployment();
        let unknown = submit(
            &store,
            &Submission {
                deployment: "nope",
                ..submission(None, "1")
            },
        )
        .unwrap_err();
        assert!(matches!(unknown, ControlError::UnknownDeployment { .. }));
        assert!(matches!(
            submit(&store, &submission(None, "{oops")).unwrap_err(),
            ControlError::InvalidInput { .. }
        ));
        let made_up = submit(&store, &submission(None, "1")).unwrap();
        assert!(made_up.workflow.id.starts_with("wf-"));
    }
}
