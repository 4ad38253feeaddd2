//! Cancelling workflows: a running owner hears of it through its heartbeat
//! and hands it to the workflow at its next step boundary or durable wait,
//! as an error the workflow can answer with compensation steps (for a grace
//! period, then it is stopped); a workflow nobody runs is finished as
//! cancelled at once. A workflow's child workflows are cancelled with it.

use super::{EngineError, owner_alive};
use crate::store::{
    CheckpointStore, Failure, Owner, StepKey, StoreError, WorkflowEnd, WorkflowRecord,
    WorkflowStatus, now_millis,
};

/// The error recorded for a cancelled workflow.
pub(super) const CANCELLED: &str = "cancelled by request";

/// The code of a cancellation handed to a guest as an error, and of a
/// cancelled child's outcome as its parent sees it (as the SDKs use it).
pub const CANCELLED_CODE: &str = "cancelled";

/// Finish a running workflow whose owner is gone as cancelled; the steps it
/// left running are recorded as interrupted.
pub(super) fn finish_cancel(
    store: &dyn CheckpointStore,
    workflow: &WorkflowRecord,
) -> Result<WorkflowRecord, EngineError> {
    let running: Vec<StepKey> = store
        .steps(&workflow.id)?
        .into_iter()
        .filter(|step| step.outcome().is_none())
        .map(|step| step.key)
        .collect();
    store.finish_workflow(
        &workflow.id,
        &workflow.run_id,
        &WorkflowEnd {
            status: WorkflowStatus::Cancelled,
            outcome: &Err(Failure::new(CANCELLED)),
            interrupted_steps: &running,
            log: &[],
        },
    )?;
    Ok(store
        .workflow(&workflow.id)?
        .unwrap_or_else(|| workflow.clone()))
}

/// What `durable-host cancel` achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelOutcome {
    /// Nobody was running it: it is cancelled now.
    Cancelled,
    /// Its owner is alive and hands the cancellation to the workflow at its
    /// next step boundary.
    Requested { run_id: String, owner: Owner },
    /// It had already finished with this status; nothing changed.
    AlreadyFinished(WorkflowStatus),
}

/// Cancel workflow `id`: a running owner stops at its next step boundary; a
/// workflow nobody is running is cancelled at once, and is never resumed.
/// Its unfinished child workflows (and theirs) are cancelled with it.
pub fn cancel_workflow(
    store: &dyn CheckpointStore,
    id: &str,
) -> Result<CancelOutcome, EngineError> {
    let outcome = cancel_one(store, id)?;
    if !matches!(outcome, CancelOutcome::AlreadyFinished(_)) {
        for child in store.children(id)? {
            if !child.status.is_final() {
                cancel_workflow(store, &child.id)?;
            }
        }
    }
    Ok(outcome)
}

/// Cancel workflow `id` alone.
fn cancel_one(store: &dyn CheckpointStore, id: &str) -> Result<CancelOutcome, EngineError> {
    let workflow = match store.workflow(id)? {
        None => return Err(StoreError::UnknownWorkflow { id: id.to_owned() }.into()),
        // Nobody holds a queued, sleeping, waiting or suspended workflow:
        // cancel it here, unless it changed since it was read.
        Some(workflow)
            if matches!(
                workflow.status,
                WorkflowStatus::Queued
                    | WorkflowStatus::Sleeping
                    | WorkflowStatus::Waiting
                    | WorkflowStatus::Suspended
            ) =>
        {
            if store.cancel_idle_workflow(id, workflow.status, CANCELLED)? {
                return Ok(CancelOutcome::Cancelled);
            }
            return cancel_one(store, id);
        }
        Some(workflow) if workflow.status != WorkflowStatus::Running => {
            return Ok(CancelOutcome::AlreadyFinished(workflow.status));
        }
        Some(_) => match store.request_cancel(id)? {
            // Unloaded (or ended) since it was read: cancel it as it is now.
            changed if changed.status != WorkflowStatus::Running => return cancel_one(store, id),
            running => running,
        },
    };
    if owner_alive(&workflow, now_millis()) {
        return Ok(CancelOutcome::Requested {
            run_id: workflow.run_id,
            owner: workflow.owner,
        });
    }
    finish_cancel(store, &workflow)?;
    Ok(CancelOutcome::Cancelled)
}
