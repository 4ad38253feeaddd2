//! Moving workflows to new code: `upgrade` switches in-flight workflows to
//! a newer deployment where [`verify`](crate::verify) passes, recording the
//! switch in their history; `fork` starts a new workflow from an old one's
//! history, so that a bug fixed in a late step does not repeat the early
//! steps' side effects.
//!
//! By default a workflow resumes on the exact component that started it;
//! everything here is an explicit operator's choice. Like [`control`](crate::control),
//! this module knows the store and the runtime, not the command line.

use std::collections::HashSet;
use std::time::Duration;

use crate::control::{ControlError, new_workflow_id};
use crate::engine::{MAX_NAME, owner_alive};
use crate::runtime::{Runtime, WorkflowComponent};
use crate::store::{
    CheckpointStore, Database, Deployment, Fork, StoreError, Upgrade, WorkflowRecord,
    WorkflowStatus, now_millis,
};
use crate::verify::{Selection, Verdict, Verifier, VerifyError};

/// What `upgrade` did with one workflow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpgradeResult {
    /// Switched to the target; it had this many recorded steps.
    Upgraded { recorded_steps: usize },
    /// Already on the target's component.
    AlreadyThere,
    /// Left on its code, for this reason.
    Refused(String),
}

/// The workflows `upgrade` selects by default: every one that has not
/// finished.
pub const IN_FLIGHT: [WorkflowStatus; 5] = [
    WorkflowStatus::Queued,
    WorkflowStatus::Running,
    WorkflowStatus::Sleeping,
    WorkflowStatus::Waiting,
    WorkflowStatus::Suspended,
];

/// Move the workflows `selection` names to `target` (whose compiled
/// component is `component`), each only if its history replays on it and
/// no live run holds it; `each` hears every workflow's result.
pub fn upgrade(
    db: &Database,
    runtime: &Runtime,
    target: &Deployment,
    component: &WorkflowComponent,
    selection: &Selection,
    timeout: Duration,
    mut each: impl FnMut(&WorkflowRecord, &UpgradeResult),
) -> Result<(), VerifyError> {
    let verifier = Verifier::new(db, runtime, component, &target.sha256, timeout)?;
    let store = db.open()?;
    let versions: HashSet<String> = store
        .deployments(Some(&target.name))?
        .into_iter()
        .map(|version| version.sha256)
        .collect();
    let named = matches!(selection, Selection::Ids(_));
    verifier.select(selection, |workflow| {
        let result = match &workflow.deployment {
            // `--all` (or a status) selects the deployment's own workflows.
            Some(other) if *other != target.name && !named => return Ok(()),
            Some(other) if *other != target.name => UpgradeResult::Refused(format!(
                "it belongs to deployment `{other}`: `upgrade --to {other}` moves it to that \
                 deployment's newest code"
            )),
            _ => {
                // Started by `run` on code that is no version of the
                // target's: only a recorded history that replays can show
                // it is the same workflow (one with no step replays on any
                // code); otherwise it is not selected.
                let unproven = !named
                    && workflow.deployment.is_none()
                    && !versions.contains(&workflow.component_sha256);
                match upgrade_one(store.as_ref(), &verifier, target, &workflow, unproven)? {
                    Some(result) => result,
                    None => return Ok(()),
                }
            }
        };
        each(&workflow, &result);
        Ok(())
    })
}

/// Move `workflow` to `target` if its history replays there; `None` when it
/// is `unproven` to be the target's workflow and its history does not show
/// it (none recorded, or one that does not replay).
fn upgrade_one(
    store: &dyn CheckpointStore,
    verifier: &Verifier<'_>,
    target: &Deployment,
    workflow: &WorkflowRecord,
    unproven: bool,
) -> Result<Option<UpgradeResult>, VerifyError> {
    if workflow.component_sha256 == target.sha256 {
        return Ok(Some(UpgradeResult::AlreadyThere));
    }
    if workflow.outcome().is_some() && workflow.status != WorkflowStatus::Suspended {
        return Ok(Some(UpgradeResult::Refused(format!(
            "it has {}: there is nothing left to run",
            match workflow.status {
                WorkflowStatus::Completed => "completed",
                WorkflowStatus::Failed => "failed (`durable-host resume` continues it on new code)",
                _ => "been cancelled",
            }
        ))));
    }
    if workflow.status == WorkflowStatus::Running && owner_alive(workflow, now_millis()) {
        return Ok(Some(UpgradeResult::Refused(format!(
            "run {} of {} is running it now; upgrade it once it sleeps, or after that server \
             stops (its code is in that process's memory)",
            workflow.run_id, workflow.owner
        ))));
    }
    let verdict = verifier.verify(workflow.clone())?;
    // Only a replay that ran and did not match shows it is not the
    // deployment's workflow; one that could not run at all (the store, the
    // host's memory) says nothing either way, and is reported.
    let replay_failed = !matches!(
        verdict.verdict,
        Verdict::Compatible { .. } | Verdict::Unverifiable { .. }
    );
    if unproven && (verdict.recorded_steps == 0 || replay_failed) {
        return Ok(None);
    }
    if let Some(reason) = incompatibility(&verdict.verdict) {
        return Ok(Some(UpgradeResult::Refused(reason)));
    }
    let detail = format!(
        "from component {} to {} (deployment {} version {}), verified against its {} recorded \
         steps",
        short(&workflow.component_sha256),
        short(&target.sha256),
        target.name,
        target.version,
        verdict.recorded_steps
    );
    // A running workflow's owner is gone as far as anyone can tell (its
    // lease ran out), but may be frozen or cut off: the switch takes the
    // workflow from its run, whose writes are all fenced by its id.
    let new_run = (workflow.status == WorkflowStatus::Running).then(crate::new_run_id);
    let switched = store.upgrade_workflow(&Upgrade {
        observed: workflow,
        verified_steps: verdict.recorded_steps,
        to_sha256: &target.sha256,
        detail: &detail,
        new_run: new_run.as_deref(),
    })?;
    Ok(Some(if switched {
        UpgradeResult::Upgraded {
            recorded_steps: verdict.recorded_steps,
        }
    } else {
        UpgradeResult::Refused(
            "it changed while it was being verified (a run took it up); run upgrade again".into(),
        )
    }))
}

/// Why a verdict does not allow an upgrade, if it does not.
fn incompatibility(verdict: &Verdict) -> Option<String> {
    Some(match verdict {
        Verdict::Compatible { .. } => return None,
        Verdict::Diverged {
            position,
            recorded,
            requested,
            ..
        } => format!(
            "its history diverges at step {position}: it recorded {recorded}, the new code asks \
             for {requested}"
        ),
        Verdict::InputChanged { position, key } => format!(
            "the new code calls step {position} ({key}) with another input than the recorded one"
        ),
        Verdict::EndedEarly { reached, next } => {
            format!("the new code returns after {reached} steps; its history goes on with {next}")
        }
        Verdict::Undecodable {
            key,
            expected,
            value,
            ..
        } => format!("the recorded value of {key} ({value}) no longer decodes into {expected}"),
        Verdict::Trapped { reason, .. } => format!("the new code traps on its history: {reason}"),
        Verdict::Unverifiable { reason } => format!("its history cannot be replayed: {reason}"),
    })
}

/// The first 12 hex digits of a sha256, as people quote them.
fn short(sha256: &str) -> &str {
    &sha256[..sha256.len().min(12)]
}

/// A fork to make.
#[derive(Debug, Clone)]
pub struct ForkRequest<'a> {
    pub source: &'a str,
    /// The first step that runs again (from 1); the steps before it are
    /// copied with their recorded results.
    pub from_step: u32,
    /// The new workflow's id; a fresh one when `None`.
    pub id: Option<&'a str>,
    /// Its component (kept in the database already); the source's when `None`.
    pub component_sha256: Option<&'a str>,
    /// The deployment that component is a version of, when one was named:
    /// the fork is labelled with it rather than with the source's.
    pub deployment: Option<&'a str>,
}

/// Start a new workflow from `request.source`'s history: the same input,
/// grants and queue, its steps before `from_step` copied, the rest run
/// again when it is run (`serve` takes it from its queue, or `run`).
pub fn fork(
    store: &dyn CheckpointStore,
    request: &ForkRequest<'_>,
) -> Result<WorkflowRecord, ControlError> {
    let source = store
        .workflow(request.source)?
        .ok_or_else(|| StoreError::UnknownWorkflow {
            id: request.source.to_owned(),
        })?;
    let steps = store.steps(request.source)?;
    let refuse = |reason: String| ControlError::Refused { reason };
    if request.from_step == 0 || request.from_step as usize > steps.len() + 1 {
        return Err(refuse(format!(
            "step {} is not a step of {}: it has {} recorded steps, so fork from 1 to {}",
            request.from_step,
            request.source,
            steps.len(),
            steps.len() + 1
        )));
    }
    if let Some(unfinished) = steps
        .iter()
        .find(|step| step.sequence < request.from_step && step.outcome().is_none())
    {
        return Err(refuse(format!(
            "step {} ({}) of {} has not finished, so it has no result to copy: fork from step {} \
             or earlier",
            unfinished.sequence, unfinished.key, request.source, unfinished.sequence
        )));
    }
    if let Some(id) = request.id
        && store.workflow(id)?.is_some()
    {
        return Err(refuse(format!(
            "workflow {id} exists already: pick another id for the fork, or leave it out for a \
             fresh one"
        )));
    }
    let id = match request.id {
        Some(id) if id.len() > MAX_NAME || id.is_empty() || id.chars().any(char::is_control) => {
            return Err(refuse(format!(
                "`{}` is not a usable workflow id (1 to {MAX_NAME} bytes, no control characters)",
                id.chars().take(80).collect::<String>()
            )));
        }
        Some(id) => id.to_owned(),
        None => new_workflow_id(),
    };
    let component = request.component_sha256.unwrap_or(&source.component_sha256);
    let detail = format!(
        "from {} at step {}: {} recorded steps copied{}",
        request.source,
        request.from_step,
        request.from_step - 1,
        if component == source.component_sha256 {
            String::new()
        } else {
            format!(", on component {}", short(component))
        }
    );
    Ok(store.fork_workflow(&Fork {
        source: request.source,
        id: &id,
        keep_through: request.from_step - 1,
        component_sha256: component,
        deployment: request.deployment,
        detail: &detail,
    })?)
}

/// The deployment `spec` names: `NAME` (its newest version) or
/// `NAME@SHA` (the version whose component's sha256 starts with SHA).
pub fn deployment(store: &dyn CheckpointStore, spec: &str) -> Result<Deployment, ControlError> {
    let (name, sha) = match spec.split_once('@') {
        Some((name, sha)) => (name, Some(sha)),
        None => (spec, None),
    };
    let versions = store.deployments(Some(name))?;
    if versions.is_empty() {
        return Err(ControlError::UnknownDeployment {
            name: name.to_owned(),
        });
    }
    versions
        .into_iter()
        .find(|d| sha.is_none_or(|sha| !sha.is_empty() && d.sha256.starts_with(sha)))
        .ok_or_else(|| ControlError::UnknownVersion {
            name: name.to_owned(),
            sha: sha.unwrap_or_default().to_owned(),
        })
}
