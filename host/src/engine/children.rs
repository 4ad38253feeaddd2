//! Child workflows, as steps of the parent's history: starting one is a
//! step whose commit also queues the child (so a replay neither starts it
//! again nor loses it), and waiting for one settles like a wait for a
//! signal (`signals`), with the child's outcome as the recorded value.
//! Running the child is the scheduler's business: to it, a child is one
//! more queued workflow.

use serde_json::value::RawValue;

use super::signals::{WaitAnswer, prefixed};
use super::{CANCELLED_CODE, EngineError, StepStart, WorkflowRun};
use crate::store::{
    ChildStart, Failure, Millis, Outcome, StepEffect, StepKey, StoreError, WorkflowStatus,
};

/// The steps that record a child workflow's start: `durable.child:<id>`.
pub const CHILD_STEP_PREFIX: &str = "durable.child:";
/// The steps that record a child workflow's outcome, as its parent waited
/// for it: `durable.child-result:<id>`.
pub const CHILD_RESULT_STEP_PREFIX: &str = "durable.child-result:";

/// What a wait for a child workflow found.
#[derive(Debug, PartialEq, Eq)]
pub enum ChildWait {
    /// The child ended with this outcome.
    Ended(Outcome),
    /// The deadline passed first.
    TimedOut,
    /// Not ended yet, and nothing recorded: wait, then ask again.
    Nothing,
    /// The workflow was cancelled; the reason.
    Cancelled(String),
}

/// What became of a child workflow's start.
#[derive(Debug, PartialEq, Eq)]
pub enum ChildStarted {
    /// It is queued (now, or by an earlier run).
    Started,
    /// It could not be started, for this recorded reason.
    Refused(Failure),
    /// The workflow was cancelled; the reason.
    Cancelled(String),
}

/// A child workflow, as the guest asks for it.
#[derive(Debug, Clone, Copy)]
pub struct ChildRequest<'a> {
    pub workflow_id: &'a str,
    /// Its deployment's newest version; `None`: the parent's component.
    pub deployment: Option<&'a str>,
    /// JSON.
    pub input: &'a str,
}

/// The recorded value of a wait for a child.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
enum ChildOutcome {
    Output {
        output: Box<RawValue>,
    },
    Error {
        message: String,
        code: Option<String>,
    },
    TimedOut,
}

fn outcome_json(outcome: &ChildOutcome) -> String {
    serde_json::to_string(outcome).expect("plain data")
}

impl WorkflowRun {
    /// Start `child` as a workflow of its own, once (the step
    /// `durable.child:<id>`, committed with the child's creation), or say
    /// why not: a refusal (recorded) or the workflow's cancellation.
    pub fn start_child(&mut self, child: &ChildRequest<'_>) -> Result<ChildStarted, EngineError> {
        let step_name = prefixed("a child workflow id", CHILD_STEP_PREFIX, child.workflow_id)?;
        // A cancellation asked for is handed over here rather than after
        // more children were started.
        self.read_cancellation()?;
        let step = match self.begin_step(&step_name)? {
            StepStart::Replayed(Ok(_)) => return Ok(ChildStarted::Started),
            StepStart::Replayed(Err(refused)) => return Ok(ChildStarted::Refused(refused)),
            StepStart::Cancelled(reason) => return Ok(ChildStarted::Cancelled(reason)),
            StepStart::Execute(step) => step,
        };
        let refused = match self.child_start(child)? {
            Ok(start) => {
                let value = serde_json::json!({ "workflow_id": start.id }).to_string();
                let effect = StepEffect::StartChild(start);
                match self.finish_step_with(step.key.as_str(), Ok(value), Some(effect)) {
                    Ok(()) => return Ok(ChildStarted::Started),
                    // Taken since it was looked up: refused like an id
                    // taken before.
                    Err(EngineError::Store(StoreError::WorkflowExists { id })) => taken(&id),
                    Err(other) => return Err(other),
                }
            }
            Err(refused) => refused,
        };
        let refused = Failure::new(refused);
        self.finish_step(step.key.as_str(), Err(refused.clone()))?;
        Ok(ChildStarted::Refused(refused))
    }

    /// What to queue for `child`, or why it cannot be started.
    fn child_start(
        &self,
        child: &ChildRequest<'_>,
    ) -> Result<Result<ChildStart, String>, EngineError> {
        let id = child.workflow_id;
        if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(child.input) {
            return Ok(Err(format!(
                "the input of child workflow {id} is not JSON: {e}"
            )));
        }
        if self.store.workflow(id)?.is_some() {
            return Ok(Err(taken(id)));
        }
        let parent =
            self.store
                .workflow(&self.workflow_id)?
                .ok_or_else(|| StoreError::UnknownWorkflow {
                    id: self.workflow_id.clone(),
                })?;
        let queue = parent.queue;
        let (deployment, component_sha256, grants) = match child.deployment {
            // The parent's component, grants and deployment (so that an
            // upgrade of the deployment finds the child too).
            None => (
                parent.deployment,
                self.component_sha256.clone(),
                parent.grants,
            ),
            Some(name) => match self.store.deployments(Some(name))?.into_iter().next() {
                Some(newest) => (Some(newest.name), newest.sha256, Some(newest.grants)),
                None => {
                    return Ok(Err(format!(
                        "cannot start child workflow {id}: no deployment named `{name}`"
                    )));
                }
            },
        };
        Ok(Ok(ChildStart {
            id: id.to_owned(),
            deployment,
            component_sha256,
            input: child.input.to_owned(),
            grants,
            queue,
        }))
    }

    /// The wait at this position for child workflow `id` to end, which
    /// times out at `deadline`: as [`Self::receive_signal`], with the
    /// child's outcome (a cancelled child's is an error with the code
    /// `cancelled`; a suspended child has not ended).
    pub fn await_child(
        &mut self,
        id: &str,
        deadline: Option<Millis>,
    ) -> Result<ChildWait, EngineError> {
        let step_name = prefixed("a child workflow id", CHILD_RESULT_STEP_PREFIX, id)?;
        let answer = self.settle_wait(&step_name, deadline, |run| {
            let Some(child) = run.store.workflow(id)? else {
                let unknown = ChildOutcome::Error {
                    message: format!("there is no child workflow {id}: start it first"),
                    code: None,
                };
                return Ok(Some((outcome_json(&unknown), None)));
            };
            let ended = match (child.status, child.outcome()) {
                (status, Some(outcome)) if status.is_final() => outcome,
                _ => return Ok(None),
            };
            let outcome = match ended {
                Ok(output) => ChildOutcome::Output {
                    output: RawValue::from_string(output).map_err(|e| {
                        EngineError::InvalidStepJson {
                            key: StepKey::new(&format!("{CHILD_RESULT_STEP_PREFIX}{id}"), 1),
                            reason: format!(
                                "child workflow {id} ended with an output that is not JSON: {e}"
                            ),
                        }
                    })?,
                },
                Err(failure) => ChildOutcome::Error {
                    message: failure.message,
                    code: failure.code.or_else(|| {
                        (child.status == WorkflowStatus::Cancelled)
                            .then(|| CANCELLED_CODE.to_owned())
                    }),
                },
            };
            Ok(Some((outcome_json(&outcome), None)))
        })?;
        let key = self.key_of(&step_name);
        Ok(match answer {
            WaitAnswer::Nothing => ChildWait::Nothing,
            WaitAnswer::Cancelled(reason) => ChildWait::Cancelled(reason),
            WaitAnswer::Recorded(json) => match serde_json::from_str::<ChildOutcome>(&json) {
                Ok(ChildOutcome::Output { output }) => {
                    ChildWait::Ended(Ok(output.get().to_owned()))
                }
                Ok(ChildOutcome::Error { message, code }) => {
                    ChildWait::Ended(Err(Failure { message, code }))
                }
                Ok(ChildOutcome::TimedOut) => ChildWait::TimedOut,
                Err(e) => {
                    return Err(EngineError::InvalidStepJson {
                        key,
                        reason: format!("a recorded child outcome does not read as one: {e}"),
                    });
                }
            },
        })
    }
}

/// Why a child whose id is taken is not started.
fn taken(id: &str) -> String {
    format!("cannot start child workflow {id}: a workflow with that id exists")
}
