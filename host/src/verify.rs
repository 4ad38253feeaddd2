//! `verify`: replay stored histories against a new build of a workflow's
//! component, to learn before a deploy whether in-flight workflows could
//! resume on it.
//!
//! Each workflow is replayed by the ordinary engine and runtime, with two
//! differences that make it harmless: the engine stops where a step would
//! execute ([`WorkflowRun::replay_only`]), so no step body runs, and the
//! store it is given ([`ReadOnlyHistory`]) reads the real database through a
//! read-only connection while every write vanishes. The guest's own code
//! between steps does run, with the workflow's recorded environment and its
//! directories made read-only. This module does not know the command line.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use crate::engine::{
    CrashPlan, DEFAULT_CANCEL_GRACE, EngineError, LeaseGuard, LeaseKeeper, LeaseSignals, Opened,
    RunObserver, RunRequest, StepEvent, WorkflowRun,
};
use crate::runtime::{Grants, Runtime, RuntimeError, WorkflowComponent};
use crate::store::{
    AttemptRecord, CheckpointStore, Database, Deployment, Enqueued, Fork, LeaseRenewal, ListQuery,
    LogLine, LogRecord, LogStream, Millis, NewWorkflow, Outcome, PublishedEvent, QueuedWorkflow,
    Reopen, ScheduleRecord, SignalRecord, SignalSent, StepBegin, StepEffect, StepKey, StepRecord,
    StoreError, Takeover, Unload, Upgrade, WorkflowEnd, WorkflowEvent, WorkflowRecord,
    WorkflowStatus, WorkflowSummary,
};

/// How a workflow's history fares on the new component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every recorded step replayed. `next` is the step a resumed run would
    /// execute first (`None` when the new code ends there: `ending` says how).
    Compatible {
        replayed: u32,
        next: Option<StepKey>,
        ending: Option<String>,
    },
    /// At `position` the history holds one step and the new code asks for
    /// another. `around` is the recorded history near it.
    Diverged {
        position: u32,
        recorded: StepKey,
        requested: StepKey,
        around: Vec<(u32, StepKey)>,
    },
    /// At `position` the new code calls step `key` with another input
    /// than the one its recorded result came from.
    InputChanged { position: u32, key: StepKey },
    /// The new code returned after `reached` steps; the history goes on.
    EndedEarly { reached: u32, next: StepKey },
    /// A recorded value no longer decodes into the type the new code
    /// expects for step `key`: the value (cut short) and the decode error.
    Undecodable {
        key: StepKey,
        expected: String,
        value: String,
        reason: String,
    },
    /// The new code trapped while replaying (a panic; with an SDK older
    /// than `value-mismatch`, also an undecodable value): the reason.
    Trapped { replayed: u32, reason: String },
    /// It could not be replayed at all (its input refused, a limit, a store
    /// error): why.
    Unverifiable { reason: String },
}

impl Verdict {
    /// Whether the workflow could resume on the new component.
    pub fn is_compatible(&self) -> bool {
        matches!(self, Self::Compatible { .. })
    }
}

/// One workflow's verdict.
#[derive(Debug, Clone)]
pub struct WorkflowVerdict {
    pub workflow: WorkflowRecord,
    pub recorded_steps: usize,
    pub verdict: Verdict,
}

/// Which workflows to verify.
#[derive(Debug, Clone)]
pub enum Selection {
    Ids(Vec<String>),
    /// Every workflow with one of these statuses; every workflow when empty.
    Statuses(Vec<WorkflowStatus>),
}

/// Why verifying could not start.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

/// Replays workflows of one database against one component.
pub struct Verifier<'a> {
    db: Database,
    store: Box<dyn CheckpointStore>,
    runtime: &'a Runtime,
    component: &'a WorkflowComponent,
    sha256: &'a str,
    /// How long one workflow's replay may take (the new code may loop).
    timeout: Duration,
}

/// Workflows listed per query.
const PAGE: u32 = 500;

impl<'a> Verifier<'a> {
    pub fn new(
        db: &Database,
        runtime: &'a Runtime,
        component: &'a WorkflowComponent,
        sha256: &'a str,
        timeout: Duration,
    ) -> Result<Self, VerifyError> {
        Ok(Self {
            db: db.clone(),
            store: db.open_read_only()?,
            runtime,
            component,
            sha256,
            timeout,
        })
    }

    /// The workflows `selection` names, newest first, handed to `each` one
    /// at a time (a large database is not held in memory).
    pub fn select(
        &self,
        selection: &Selection,
        mut each: impl FnMut(WorkflowRecord) -> Result<(), VerifyError>,
    ) -> Result<(), VerifyError> {
        match selection {
            Selection::Ids(ids) => {
                for id in ids {
                    let workflow = self
                        .store
                        .workflow(id)?
                        .ok_or_else(|| StoreError::UnknownWorkflow { id: id.clone() })?;
                    each(workflow)?;
                }
            }
            Selection::Statuses(statuses) => {
                let mut query = ListQuery {
                    status: None,
                    limit: Some(PAGE),
                    ..ListQuery::default()
                };
                loop {
                    let page = self.store.list_workflows(&query)?;
                    let full = page.len() == PAGE as usize;
                    query.after = page.last().map(|s| s.workflow.id.clone());
                    for summary in page {
                        if statuses.is_empty() || statuses.contains(&summary.workflow.status) {
                            each(summary.workflow)?;
                        }
                    }
                    if !full {
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    /// Replay `workflow`'s history on the component.
    pub fn verify(&self, workflow: WorkflowRecord) -> Result<WorkflowVerdict, VerifyError> {
        let steps = self.store.steps(&workflow.id)?;
        let verdict = self.replay(&workflow, &steps);
        Ok(WorkflowVerdict {
            recorded_steps: steps.len(),
            workflow,
            verdict,
        })
    }

    fn replay(&self, workflow: &WorkflowRecord, steps: &[StepRecord]) -> Verdict {
        let unverifiable = |reason: String| Verdict::Unverifiable { reason };
        let history = match ReadOnlyHistory::open(&self.db) {
            Ok(history) => history,
            Err(e) => return unverifiable(e.to_string()),
        };
        let run_id = crate::new_run_id();
        let request = RunRequest {
            workflow_id: &workflow.id,
            component_sha256: self.sha256,
            input: None,
            run_id: &run_id,
            leases: Arc::new(NoLease),
            unload_sleeps: true,
            allow_component_change: true,
            reopen: false,
            cancel_grace: DEFAULT_CANCEL_GRACE,
            grants: None,
            component: None,
        };
        let mut run = match WorkflowRun::open(
            Box::new(history),
            &request,
            CrashPlan::none(),
            Box::new(Quiet),
        ) {
            Ok(Opened::Ready(run)) => run,
            Ok(Opened::Finished(_)) => {
                unreachable!("the history view shows every workflow running")
            }
            Err(e) => return unverifiable(e.to_string()),
        };
        run.replay_only();
        let mut grants = workflow
            .grants
            .as_deref()
            .and_then(Grants::from_json)
            .unwrap_or_default();
        for dir in &mut grants.dirs {
            dir.read_only = true;
        }
        grants.timeout_ms = Some(self.timeout.as_millis() as u64);
        let replayed = steps.len() as u32;
        match self.runtime.run(self.component, &grants, run) {
            Err(RuntimeError::Engine(EngineError::HistoryEnd { replayed, next })) => {
                Verdict::Compatible {
                    replayed,
                    next: Some(next),
                    ending: None,
                }
            }
            Err(RuntimeError::Engine(EngineError::Diverged {
                position,
                recorded,
                requested,
                ..
            })) => Verdict::Diverged {
                position,
                recorded,
                requested,
                around: steps
                    .iter()
                    .filter(|s| s.sequence + 2 >= position && s.sequence <= position + 2)
                    .map(|s| (s.sequence, s.key.clone()))
                    .collect(),
            },
            Err(RuntimeError::Engine(EngineError::EndedEarly { reached, next, .. })) => {
                Verdict::EndedEarly { reached, next }
            }
            Err(RuntimeError::Engine(EngineError::InputChanged { position, key, .. })) => {
                Verdict::InputChanged { position, key }
            }
            Err(RuntimeError::Engine(EngineError::UndecodableValue {
                key,
                expected,
                value,
                reason,
                ..
            })) => Verdict::Undecodable {
                key,
                expected,
                value,
                reason,
            },
            Err(other) => unverifiable(other.to_string()),
            Ok(report) => match report.status {
                WorkflowStatus::Suspended => Verdict::Trapped {
                    replayed: report.events.len() as u32,
                    reason: outcome_text(&report.outcome),
                },
                WorkflowStatus::Sleeping => Verdict::Compatible {
                    replayed,
                    next: None,
                    ending: Some("sleeps, as recorded".to_owned()),
                },
                status => Verdict::Compatible {
                    replayed,
                    next: None,
                    ending: Some(ending(workflow, status, &report.outcome)),
                },
            },
        }
    }
}

/// How the new code ends a workflow whose history it replayed whole.
fn ending(workflow: &WorkflowRecord, status: WorkflowStatus, outcome: &Outcome) -> String {
    let recorded = workflow.outcome();
    let same = recorded.as_ref() == Some(outcome);
    match (outcome, same, recorded.is_some()) {
        (_, true, _) => format!("{status} with the recorded result"),
        (Ok(output), false, true) => format!("completed, but with another output: {output}"),
        (Err(error), false, true) => format!("{status}, but with another error: {error}"),
        (_, false, false) => format!("would end it now: {status}: {}", outcome_text(outcome)),
    }
}

fn outcome_text(outcome: &Outcome) -> String {
    match outcome {
        Ok(output) => output.clone(),
        Err(failure) => failure.to_string(),
    }
}

/// The refusal of a write that would outlive a verify run.
fn read_only(what: &str) -> StoreError {
    StoreError::Backend(format!(
        "cannot {what} while verifying: the database is open read-only"
    ))
}

/// A verify run keeps no lease: it claims nothing.
struct NoLease;

impl LeaseKeeper for NoLease {
    fn keep(
        &self,
        _store: &dyn CheckpointStore,
        _workflow_id: &str,
        _run_id: &str,
    ) -> Result<LeaseGuard, StoreError> {
        Ok(LeaseGuard::new(
            Arc::new(LeaseSignals::default()),
            Box::new(()),
        ))
    }

    fn stale_after(&self) -> Duration {
        Duration::from_secs(30)
    }
}

/// A verify run reports nothing as it goes.
struct Quiet;

impl RunObserver for Quiet {
    fn step_event(&mut self, _workflow_id: &str, _event: &StepEvent) {}
    fn log(&mut self, _workflow_id: &str, _message: &str) {}
}

/// The database as a verify run sees it: read through a read-only
/// connection, every workflow running with a long-dead owner and no
/// cancellation (so that the engine replays it, whatever its status), and
/// every write accepted and dropped.
pub struct ReadOnlyHistory {
    db: Database,
    store: Box<dyn CheckpointStore>,
}

impl ReadOnlyHistory {
    pub fn open(db: &Database) -> Result<Self, StoreError> {
        Ok(Self {
            db: db.clone(),
            store: db.open_read_only()?,
        })
    }
}

impl CheckpointStore for ReadOnlyHistory {
    fn reopen(&self) -> Result<Box<dyn CheckpointStore>, StoreError> {
        Ok(Box::new(Self::open(&self.db)?))
    }

    fn workflow(&self, id: &str) -> Result<Option<WorkflowRecord>, StoreError> {
        Ok(self.store.workflow(id)?.map(|mut workflow| {
            workflow.status = WorkflowStatus::Running;
            workflow.lease_expires_at = 0;
            workflow.cancel_requested = false;
            workflow.takeovers = 0;
            workflow
        }))
    }

    fn steps(&self, workflow_id: &str) -> Result<Vec<StepRecord>, StoreError> {
        self.store.steps(workflow_id)
    }

    fn steps_page(
        &self,
        workflow_id: &str,
        after: u32,
        limit: u32,
    ) -> Result<Vec<StepRecord>, StoreError> {
        self.store.steps_page(workflow_id, after, limit)
    }

    fn attempts(&self, workflow_id: &str) -> Result<Vec<AttemptRecord>, StoreError> {
        self.store.attempts(workflow_id)
    }

    fn events(&self, workflow_id: &str) -> Result<Vec<WorkflowEvent>, StoreError> {
        self.store.events(workflow_id)
    }

    fn list_workflows(&self, query: &ListQuery) -> Result<Vec<WorkflowSummary>, StoreError> {
        self.store.list_workflows(query)
    }

    fn component(&self, sha256: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.store.component(sha256)
    }

    fn deployments(&self, name: Option<&str>) -> Result<Vec<Deployment>, StoreError> {
        self.store.deployments(name)
    }

    fn ready_workflows(
        &self,
        _: &str,
        _: Millis,
        _: u32,
        _: &HashSet<String>,
    ) -> Result<Vec<WorkflowRecord>, StoreError> {
        Ok(Vec::new())
    }

    fn running_on_host(
        &self,
        _: &str,
        _: &str,
        _: &str,
        _: Millis,
        _: u32,
    ) -> Result<Vec<WorkflowRecord>, StoreError> {
        Ok(Vec::new())
    }

    fn next_wake(&self, _: &str) -> Result<Option<Millis>, StoreError> {
        Ok(None)
    }

    fn next_lease_expiry(&self, _: &str, _: Millis) -> Result<Option<Millis>, StoreError> {
        Ok(None)
    }

    fn logs(&self, id: &str, after_seq: i64, limit: u32) -> Result<Vec<LogRecord>, StoreError> {
        self.store.logs(id, after_seq, limit)
    }

    fn stream_logs(&self, id: &str, stream: LogStream) -> Result<Vec<LogRecord>, StoreError> {
        self.store.stream_logs(id, stream)
    }

    fn next_signal(&self, id: &str, name: &str) -> Result<Option<SignalRecord>, StoreError> {
        self.store.next_signal(id, name)
    }

    fn signals(&self, id: &str) -> Result<Vec<SignalRecord>, StoreError> {
        self.store.signals(id)
    }

    fn published_events(&self, id: &str) -> Result<Vec<PublishedEvent>, StoreError> {
        self.store.published_events(id)
    }

    // Writes are dropped: a verify run leaves no trace.

    fn create_workflow(&self, _: &NewWorkflow<'_>) -> Result<(), StoreError> {
        Ok(())
    }

    fn claim_workflow(&self, _: &str, _: &Takeover<'_>) -> Result<(), StoreError> {
        Ok(())
    }

    fn reopen_workflow(&self, _: &str, _: &Reopen<'_>) -> Result<(), StoreError> {
        Ok(())
    }

    fn renew_lease(&self, _: &str, _: &str, _: Millis) -> Result<LeaseRenewal, StoreError> {
        Ok(LeaseRenewal {
            owned: true,
            cancel_requested: false,
        })
    }

    fn request_cancel(&self, id: &str) -> Result<WorkflowRecord, StoreError> {
        self.workflow(id)?
            .ok_or_else(|| StoreError::UnknownWorkflow { id: id.to_owned() })
    }

    fn put_component(&self, _: &str, _: &[u8]) -> Result<(), StoreError> {
        Ok(())
    }

    fn deploy(&self, name: &str, _: &str, _: &str) -> Result<Deployment, StoreError> {
        Err(read_only(&format!("deploy {name}")))
    }

    fn send_signal(&self, signal: &SignalRecord) -> Result<SignalSent, StoreError> {
        Err(read_only(&format!("signal {}", signal.workflow_id)))
    }

    fn children(&self, id: &str) -> Result<Vec<WorkflowRecord>, StoreError> {
        self.store.children(id)
    }

    fn fork_workflow(&self, fork: &Fork<'_>) -> Result<WorkflowRecord, StoreError> {
        Err(read_only(&format!("fork {}", fork.source)))
    }

    fn upgrade_workflow(&self, upgrade: &Upgrade<'_>) -> Result<bool, StoreError> {
        Err(read_only(&format!("upgrade {}", upgrade.observed.id)))
    }

    fn suspend_unclaimed(&self, _: &WorkflowRecord, _: &str) -> Result<bool, StoreError> {
        Ok(false)
    }

    fn queue_depths(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.store.queue_depths()
    }

    fn status_counts(&self) -> Result<Vec<(WorkflowStatus, u64)>, StoreError> {
        self.store.status_counts()
    }

    fn add_schedule(&self, schedule: &ScheduleRecord) -> Result<bool, StoreError> {
        Err(read_only(&format!("add schedule {}", schedule.name)))
    }

    fn remove_schedule(&self, name: &str) -> Result<bool, StoreError> {
        Err(read_only(&format!("remove schedule {name}")))
    }

    fn schedules(&self) -> Result<Vec<ScheduleRecord>, StoreError> {
        self.store.schedules()
    }

    fn advance_schedule(&self, name: &str, _: Millis, _: Millis) -> Result<bool, StoreError> {
        Err(read_only(&format!("advance schedule {name}")))
    }

    fn enqueue_workflow(&self, workflow: &QueuedWorkflow<'_>) -> Result<Enqueued, StoreError> {
        Err(read_only(&format!("queue {}", workflow.id)))
    }

    fn unload_workflow(&self, _: &str, _: &str, _: &Unload<'_>) -> Result<bool, StoreError> {
        Ok(true)
    }

    fn cancel_idle_workflow(
        &self,
        _: &str,
        _: WorkflowStatus,
        _: &str,
    ) -> Result<bool, StoreError> {
        Ok(false)
    }

    fn release_workflow(&self, _: &str, _: &str) -> Result<(), StoreError> {
        Ok(())
    }

    fn record_attempt(
        &self,
        _: &str,
        _: &str,
        _: &StepKey,
        _: &str,
        _: i64,
    ) -> Result<(), StoreError> {
        Ok(())
    }

    fn begin_retry(&self, _: &str, _: &str, _: &StepKey) -> Result<(), StoreError> {
        Ok(())
    }

    fn begin_steps(&self, _: &str, _: &[StepBegin<'_>]) -> Result<(), StoreError> {
        Ok(())
    }

    fn finish_step(
        &self,
        _: &str,
        _: &str,
        _: &StepKey,
        _: &Outcome,
        _: &[LogLine],
        _: Option<&StepEffect>,
    ) -> Result<(), StoreError> {
        Ok(())
    }

    fn append_log(&self, _: &str, _: &str, _: &[LogLine]) -> Result<(), StoreError> {
        Ok(())
    }

    fn finish_workflow(&self, _: &str, _: &str, _: &WorkflowEnd<'_>) -> Result<(), StoreError> {
        Ok(())
    }
}
