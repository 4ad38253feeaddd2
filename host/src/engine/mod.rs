//! The replay engine: sequences a run's steps against the recorded history.
//!
//! A [`WorkflowRun`] is one execution of a workflow by this process. It loads
//! the workflow's checkpoints once, then answers each step the guest begins:
//! replay the recorded result, execute a new step, or take over a step that a
//! dead run left `running`. It enforces determinism (the guest must ask for
//! the recorded steps in the recorded order) and decides what is committed
//! when. It knows nothing of WebAssembly: the runtime calls it from the
//! guest's imports, and nothing of the command line: the caller hands it a
//! [`RunObserver`] for progress and a [`CrashPlan`] for crash simulation.
//!
//! Around the run: `lease` decides who owns a workflow and keeps the
//! ownership alive, `cancel` stops workflows, `crash` simulates deaths.

mod cancel;
mod children;
mod crash;
mod lease;
mod pending_log;
mod signals;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cancel::CANCELLED;
pub use cancel::{CANCELLED_CODE, CancelOutcome, cancel_workflow};
pub use children::{
    CHILD_RESULT_STEP_PREFIX, CHILD_STEP_PREFIX, ChildRequest, ChildStarted, ChildWait,
};
pub use crash::{CrashPlan, CrashPoint};
pub use lease::{
    LeaseGuard, LeaseKeeper, LeaseSignals, OwnHeartbeat, no_thread, owner_alive, renewal_interval,
    this_process,
};
pub use pending_log::{MAX_LOG_LINE, PendingLog};
pub use signals::{EVENT_STEP_PREFIX, SIGNAL_STEP_PREFIX, SignalWait, TimerStart, WAIT_STEP};

use crate::store::{
    CheckpointStore, Claim, Failure, LogLine, LogStream, Millis, NewWorkflow, Outcome, Owner,
    Reopen, StepBegin, StepEffect, StepKey, StepRecord, StoreError, Takeover, Unload, WaitingFor,
    WorkflowEnd, WorkflowRecord, WorkflowStatus, now_millis,
};

/// Why a run cannot go on. Apart from `Store`, these are the guest's or the
/// caller's doing, and none of them changes the recorded history.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "non-determinism: step {position} of workflow {workflow_id} is `{recorded}` in the recorded \
         history, but the workflow now asks for `{requested}`"
    )]
    Diverged {
        workflow_id: String,
        position: u32,
        recorded: StepKey,
        requested: StepKey,
    },
    #[error(
        "non-determinism: workflow {workflow_id} returned after {reached} steps, but its recorded \
         history continues with `{next}`"
    )]
    EndedEarly {
        workflow_id: String,
        reached: u32,
        next: StepKey,
    },
    #[error(
        "non-determinism: step {position} of workflow {workflow_id}, `{key}`, is called with \
         another input than the one its recorded result came from"
    )]
    InputChanged {
        workflow_id: String,
        position: u32,
        key: StepKey,
    },
    #[error(
        "non-determinism: the recorded value of step `{key}` of workflow {workflow_id} no longer \
         decodes into `{expected}` ({reason}); it is {value}"
    )]
    UndecodableValue {
        workflow_id: String,
        key: StepKey,
        expected: String,
        /// The stored JSON, cut short.
        value: String,
        reason: String,
    },
    #[error(
        "the recorded history ends after step {replayed}: the workflow would go on with `{next}`"
    )]
    HistoryEnd { replayed: u32, next: StepKey },
    #[error("workflow {workflow_id} was started with a different input")]
    InputMismatch { workflow_id: String },
    #[error("workflow {workflow_id} does not exist, and no --input was given to start it")]
    InputRequired { workflow_id: String },
    #[error("the workflow refused its input: {reason}")]
    InputRejected {
        reason: String,
        /// The workflow was already recorded (a resume, a takeover): its
        /// id stays taken, with the input it was started with.
        recorded: bool,
    },
    #[error("{what} is {size} bytes, more than the {limit} bytes allowed")]
    TooLarge {
        what: String,
        size: usize,
        limit: usize,
    },
    #[error("{what} is not valid: {reason}")]
    InvalidName { what: String, reason: String },
    #[error(
        "workflow {workflow_id} was started by component sha256 {started_with}, not by this one \
         ({given})"
    )]
    ComponentChanged {
        workflow_id: String,
        started_with: String,
        given: String,
    },
    #[error(
        "workflow {workflow_id} is being run by run {run_id} ({owner}); its lease runs for \
         another {remaining_ms} ms"
    )]
    OwnedElsewhere {
        workflow_id: String,
        run_id: String,
        owner: Box<Owner>,
        remaining_ms: Millis,
    },
    /// `upgrade` switched the workflow to component `to` while this run
    /// replayed it on the one it had: nothing was written; a run of it
    /// goes on on the new code.
    #[error(
        "workflow {workflow_id} was upgraded to component sha256 {to} while this run opened it; \
         nothing was written"
    )]
    Upgraded { workflow_id: String, to: String },
    #[error("workflow {workflow_id} was cancelled")]
    Cancelled { workflow_id: String },
    #[error("the host is shutting down; workflow {workflow_id} stopped at a step boundary")]
    Stopping { workflow_id: String },
    /// Not a failure: the guest is stopped so that the workflow can sleep
    /// without an instance until `wake_at`.
    #[error("the workflow is unloaded to sleep until {wake_at}")]
    Unloading { wake_at: Millis },
    /// Not a failure either: the workflow waits for `waiting_for` without
    /// an instance, until `deadline` at the latest.
    #[error("the workflow is unloaded to wait for {waiting_for}")]
    UnloadingToWait {
        waiting_for: WaitingFor,
        deadline: Option<Millis>,
    },
    #[error("the guest began a step with an empty name")]
    EmptyStepName,
    #[error("the guest began step `{requested}` while step `{executing}` is still executing")]
    StepOverlap {
        executing: StepKey,
        requested: StepKey,
    },
    #[error("the guest called {call} for step `{key}`, which is not a step being executed")]
    NotExecuting { key: String, call: &'static str },
    #[error("step `{key}` returned a value that is not valid JSON: {reason}")]
    InvalidStepJson { key: StepKey, reason: String },
    #[error("the workflow returned an output that is not valid JSON: {reason}")]
    InvalidOutputJson { reason: String },
    #[error(
        "workflow {workflow_id} is {status}, not failed or suspended: there is nothing to resume"
    )]
    NotResumable {
        workflow_id: String,
        status: WorkflowStatus,
    },
    #[error(
        "step `{key}` returned {size} bytes, more than the {limit} bytes a checkpoint may hold; \
         store large data elsewhere and return a reference to it"
    )]
    OutputTooLarge {
        key: StepKey,
        size: usize,
        limit: usize,
    },
}

impl EngineError {
    /// True when the guest's steps no longer match the recorded history.
    pub fn is_non_determinism(&self) -> bool {
        matches!(
            self,
            Self::Diverged { .. }
                | Self::EndedEarly { .. }
                | Self::UndecodableValue { .. }
                | Self::InputChanged { .. }
        )
    }
}

/// A step the guest begins: its name, and what it made of its input.
#[derive(Debug, Clone, Copy)]
pub struct StepRequest<'a> {
    pub name: &'a str,
    pub input_fingerprint: Option<&'a str>,
}

impl<'a> StepRequest<'a> {
    pub fn named(name: &'a str) -> Self {
        Self {
            name,
            input_fingerprint: None,
        }
    }
}

/// What a run does with a step the guest began.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepStart {
    /// Completed earlier: hand the recorded outcome back.
    Replayed(Outcome),
    /// Execute the body now.
    Execute(StepRun),
    /// The workflow is cancelled, with this reason: the step does not run.
    /// Steps begun after this (compensation) run normally, within the grace
    /// period.
    Cancelled(String),
}

/// A step the guest must execute now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepRun {
    pub key: StepKey,
    /// Executions begun, those cut short by a dead run included.
    pub attempt: u32,
    /// Failed attempts recorded before retries: what a retry policy counts.
    pub failures: u32,
    pub idempotency_key: String,
}

/// One line of a run's story, as the observer and the report see it.
#[derive(Debug, Clone, PartialEq)]
pub struct StepEvent {
    pub key: StepKey,
    pub kind: StepEventKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum StepEventKind {
    /// The recorded outcome was handed back; nothing ran.
    Replayed { failed: bool },
    /// The body ran in this run and its outcome was recorded.
    Executed {
        /// The attempt that ended the step (more than 1 after retries or a
        /// takeover).
        attempt: u32,
        /// An earlier run began the step and died: this run took it over.
        taken_over: bool,
        duration: Duration,
        /// The outcome was an error (recorded, and replayed as such).
        error: Option<String>,
    },
    /// The body was executing when the run ended abnormally (a trap).
    Interrupted {
        attempt: u32,
        duration: Duration,
        reason: String,
    },
}

/// Receives progress as it happens, for display.
pub trait RunObserver: Send {
    /// A step finished, was replayed, or was interrupted.
    fn step_event(&mut self, workflow_id: &str, event: &StepEvent);

    /// The run became the workflow's owner (before its first write): from
    /// here on the run is this process's, not another's that got there first.
    fn claimed(&mut self, _workflow_id: &str) {}

    /// A step's body is about to execute.
    fn step_started(&mut self, _workflow_id: &str, _key: &StepKey, _attempt: u32) {}

    /// The workflow logged a line (not while replaying).
    fn log(&mut self, workflow_id: &str, message: &str);

    /// The run is over: nothing more will be reported.
    fn run_ended(&mut self, _workflow_id: &str) {}
}

/// What the caller asks of a run.
pub struct RunRequest<'a> {
    pub workflow_id: &'a str,
    pub component_sha256: &'a str,
    /// The input as compact JSON; `None` to resume with the stored input
    /// (or start with `null`).
    pub input: Option<&'a str>,
    pub run_id: &'a str,
    /// Keeps the run's lease alive once it claims the workflow, and says
    /// how long a lease lasts.
    pub leases: Arc<dyn LeaseKeeper>,
    /// Unload the workflow during a long durable sleep (it becomes
    /// `sleeping`, and the run ends) instead of waiting in the process.
    pub unload_sleeps: bool,
    /// Resume even if the workflow was started by another component.
    pub allow_component_change: bool,
    /// Continue a failed or suspended workflow from its history (`resume`).
    pub reopen: bool,
    /// How long a cancelled workflow may go on running compensation steps
    /// after the cancellation is handed to it.
    pub cancel_grace: Duration,
    /// What the workflow is granted, recorded when this run starts it.
    pub grants: Option<&'a str>,
    /// The component's bytes, kept with a workflow this run starts.
    pub component: Option<Arc<[u8]>>,
}

/// The result of opening a workflow.
pub enum Opened {
    /// The workflow already finished; nothing will run.
    Finished(Box<WorkflowRecord>),
    /// The workflow can run (new, or resuming).
    Ready(Box<WorkflowRun>),
}

/// The recorded steps of a resumed workflow, walked in sequence order.
#[derive(Debug, Default)]
pub struct ReplayCursor {
    recorded: Vec<StepRecord>,
}

impl ReplayCursor {
    fn new(recorded: Vec<StepRecord>) -> Self {
        debug_assert!(recorded.windows(2).all(|w| w[0].sequence < w[1].sequence));
        Self { recorded }
    }

    /// The step recorded at `sequence` (from 1), if any.
    fn at(&self, sequence: u32) -> Option<&StepRecord> {
        // Sequences are dense from 1, so the position is the index; fall back
        // to a search should a history ever have gaps.
        match self.recorded.get(sequence as usize - 1) {
            Some(step) if step.sequence == sequence => Some(step),
            _ => self.recorded.iter().find(|s| s.sequence == sequence),
        }
    }

    /// The first recorded step after position `sequence`.
    fn after(&self, sequence: u32) -> Option<&StepRecord> {
        // Sorted by sequence: a binary search, not a scan (replay asks at
        // every step).
        let index = self.recorded.partition_point(|s| s.sequence <= sequence);
        self.recorded.get(index)
    }

    pub fn len(&self) -> usize {
        self.recorded.len()
    }

    /// How many recorded steps have finished (completed or failed).
    fn finished_steps(&self) -> u32 {
        self.recorded
            .iter()
            .filter(|step| step.outcome().is_some())
            .count() as u32
    }

    pub fn is_empty(&self) -> bool {
        self.recorded.is_empty()
    }
}

/// How a run becomes its workflow's owner.
enum ClaimKind {
    /// Start a new workflow.
    Create,
    /// Take over a running workflow from its previous run, which did not finish it.
    TakeOver {
        previous_run: String,
        /// The lease as read: the claim fails if the owner renewed it since.
        observed_lease: Millis,
        /// The component as read: the claim fails if it was upgraded since.
        observed_component: String,
        takeovers: u32,
        progress_mark: u32,
        events: Vec<(&'static str, String)>,
    },
    /// Put a failed or suspended workflow back to running (`resume`).
    Reopen {
        previous_run: String,
        detail: String,
    },
    /// Claimed: the run owns the workflow.
    Done { resumed: bool },
}

/// Runs that may die in a row, none of them recording a step, before the
/// workflow is suspended instead of taken over again: a workflow that kills
/// its host (memory, a crash in the host) must not do so forever.
pub const MAX_TAKEOVERS: u32 = 8;

/// The longest workflow id and step name, in bytes.
pub const MAX_NAME: usize = 1024;
/// The largest workflow input, in bytes.
pub const MAX_INPUT: usize = 16 << 20;
/// Longer errors (of attempts, steps, workflows) are cut to this many bytes.
pub const MAX_ERROR: usize = 64 << 10;

struct Executing {
    key: StepKey,
    attempt: u32,
    failures: u32,
    taken_over: bool,
    started: Instant,
}

/// How a run ended, for the caller to report.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub workflow_id: String,
    pub run_id: String,
    /// Whether this run found the workflow already started.
    pub resumed: bool,
    pub status: WorkflowStatus,
    pub outcome: Outcome,
    /// For a workflow unloaded to sleep: when it is due; to wait for a
    /// signal: when its wait times out, if it does.
    pub wake_at: Option<Millis>,
    /// For a workflow unloaded to wait: what it waits for.
    pub waiting_for: Option<WaitingFor>,
    pub events: Vec<StepEvent>,
}

/// One execution of a workflow by this process.
///
/// Opening reads only. The run becomes the workflow's owner (creating the
/// workflow, or taking it over from the previous run) at its first write: a
/// run refused before then, for a bad component or a diverging replay,
/// leaves the database exactly as it found it.
pub struct WorkflowRun {
    store: Box<dyn CheckpointStore>,
    workflow_id: String,
    component_sha256: String,
    input: String,
    run_id: String,
    /// How this run becomes the owner at its first write.
    claim: ClaimKind,
    owner: Owner,
    grants: Option<String>,
    component: Option<Arc<[u8]>>,
    leases: Arc<dyn LeaseKeeper>,
    unload_sleeps: bool,
    /// Present once the run has claimed the workflow.
    lease: Option<LeaseGuard>,
    cursor: ReplayCursor,
    ordinals: HashMap<String, u32>,
    position: u32,
    /// Steps whose bodies are running: one, or the branches of a parallel call.
    executing: Vec<Executing>,
    checkpoints: u32,
    crash: CrashPlan,
    observer: Box<dyn RunObserver>,
    events: Vec<StepEvent>,
    /// The workflow was asked to cancel, as this run read it from the
    /// database (when it opened it, or at a child start or a wait, which
    /// do not wait for the heartbeat to hear of it).
    cancel_read: bool,
    /// When the cancellation was handed to the workflow (this run or an
    /// earlier one), which starts its grace period.
    cancel_delivered_at: Option<Millis>,
    cancel_grace: Duration,
    /// Output and log lines waiting for the next checkpoint.
    pending_log: PendingLog,
    /// Stop with [`EngineError::HistoryEnd`] instead of executing a step
    /// (`verify`: replay the history, run nothing).
    replay_only: bool,
}

/// The step that records where a cancellation was handed to the workflow.
pub const CANCEL_STEP: &str = "durable.cancel";

/// The value of a [`CANCEL_STEP`]: the reason, and whether it ended a
/// durable sleep (rather than being handed over as a step began), so that
/// a replay hands it over the same way.
#[derive(serde::Serialize, serde::Deserialize)]
struct CancelDelivery {
    reason: String,
    #[serde(default)]
    in_sleep: bool,
}

/// How long a cancelled workflow may run compensation steps, by default.
pub const DEFAULT_CANCEL_GRACE: Duration = Duration::from_secs(30);

impl WorkflowRun {
    /// Look up workflow `request.workflow_id` to start or resume it.
    pub fn open(
        store: Box<dyn CheckpointStore>,
        request: &RunRequest<'_>,
        crash: CrashPlan,
        observer: Box<dyn RunObserver>,
    ) -> Result<Opened, EngineError> {
        let id = request.workflow_id;
        check_name("the workflow id", id)?;
        let existing = store.workflow(id)?;
        if let (Some(existing), Some(input)) = (&existing, request.input)
            && existing.input != input
        {
            return Err(EngineError::InputMismatch {
                workflow_id: id.to_owned(),
            });
        }
        let owner = this_process();
        let mut run = WorkflowRun {
            store,
            workflow_id: id.to_owned(),
            component_sha256: request.component_sha256.to_owned(),
            input: String::new(),
            run_id: request.run_id.to_owned(),
            claim: ClaimKind::Create,
            owner,
            grants: request.grants.map(str::to_owned),
            component: request.component.clone(),
            leases: Arc::clone(&request.leases),
            unload_sleeps: request.unload_sleeps,
            lease: None,
            cursor: ReplayCursor::default(),
            ordinals: HashMap::new(),
            position: 0,
            executing: Vec::new(),
            checkpoints: 0,
            crash,
            observer,
            events: Vec::new(),
            cancel_read: false,
            cancel_delivered_at: None,
            cancel_grace: request.cancel_grace,
            pending_log: PendingLog::default(),
            replay_only: false,
        };
        let Some(workflow) = existing else {
            if request.reopen {
                return Err(StoreError::UnknownWorkflow { id: id.to_owned() }.into());
            }
            let input = request.input.ok_or_else(|| EngineError::InputRequired {
                workflow_id: id.to_owned(),
            })?;
            if input.len() > MAX_INPUT {
                return Err(EngineError::TooLarge {
                    what: "the input".to_owned(),
                    size: input.len(),
                    limit: MAX_INPUT,
                });
            }
            run.input = input.to_owned();
            return Ok(Opened::Ready(Box::new(run)));
        };
        let reopening = request.reopen
            && matches!(
                workflow.status,
                WorkflowStatus::Failed | WorkflowStatus::Suspended
            );
        if request.reopen && !reopening && workflow.outcome().is_some() {
            return Err(EngineError::NotResumable {
                workflow_id: id.to_owned(),
                status: workflow.status,
            });
        }
        if workflow.outcome().is_some() && !reopening {
            return Ok(Opened::Finished(Box::new(workflow)));
        }
        let now = now_millis();
        // Queued and sleeping workflows have no owner to wait for.
        let owned = workflow.status == WorkflowStatus::Running;
        if !reopening && owned && owner_alive(&workflow, now) {
            return Err(EngineError::OwnedElsewhere {
                workflow_id: id.to_owned(),
                remaining_ms: workflow.lease_expires_at - now,
                run_id: workflow.run_id,
                owner: Box::new(workflow.owner),
            });
        }
        // Cancelled while its owner was dying: this run hands the
        // cancellation over once it is past the recorded history.
        run.cancel_read = workflow.cancel_requested;
        let changed = workflow.component_sha256 != request.component_sha256;
        if changed && !request.allow_component_change {
            return Err(EngineError::ComponentChanged {
                workflow_id: id.to_owned(),
                started_with: workflow.component_sha256,
                given: request.component_sha256.to_owned(),
            });
        }
        run.cursor = ReplayCursor::new(run.store.steps(id)?);
        run.input = workflow.input.clone();
        let mut events = Vec::new();
        if changed {
            events.push((
                "component_changed",
                format!(
                    "from sha256 {} to {} (--allow-component-change)",
                    workflow.component_sha256, request.component_sha256
                ),
            ));
        }
        if reopening {
            let mut detail = format!(
                "from {}: {}",
                workflow.status,
                workflow.error.unwrap_or_default()
            );
            for (_, change) in &events {
                detail.push_str("; component changed ");
                detail.push_str(change);
            }
            run.claim = ClaimKind::Reopen {
                previous_run: workflow.run_id,
                detail,
            };
            return Ok(Opened::Ready(Box::new(run)));
        }
        if !owned || workflow.handed_back() {
            // Picked from its queue, woken from a sleep, or handed back by
            // a run that stopped in order: nobody died.
            run.claim = ClaimKind::TakeOver {
                previous_run: workflow.run_id,
                observed_lease: workflow.lease_expires_at,
                observed_component: workflow.component_sha256,
                takeovers: 0,
                progress_mark: run.cursor.finished_steps(),
                events,
            };
            return Ok(Opened::Ready(Box::new(run)));
        }
        // The previous run ended without finishing the workflow: it died,
        // or lost its lease. Count the runs that died in a row without
        // recording a step.
        let finished = run.cursor.finished_steps();
        let takeovers = if finished == workflow.progress_mark {
            workflow.takeovers + 1
        } else {
            1
        };
        let in_flight = run
            .cursor
            .recorded
            .iter()
            .find(|step| step.outcome().is_none())
            .map(|step| format!(" in step {}", step.key))
            .unwrap_or_default();
        events.push((
            "takeover",
            format!(
                "from run {} ({}), which ended without finishing{in_flight}",
                workflow.run_id, workflow.owner
            ),
        ));
        run.claim = ClaimKind::TakeOver {
            previous_run: workflow.run_id,
            observed_lease: workflow.lease_expires_at,
            observed_component: workflow.component_sha256,
            takeovers,
            progress_mark: finished,
            events,
        };
        if takeovers > MAX_TAKEOVERS {
            let reason = format!(
                "suspended: {MAX_TAKEOVERS} runs in a row died without recording a step{in_flight} \
                 (a host killed by memory, a crash or a kill each time); fix the cause, then \
                 `durable-host resume {id}`"
            );
            let reader = run.store.reopen()?;
            run.claim()?;
            run.end(Err(Failure::new(reason)), WorkflowStatus::Suspended)?;
            let stored = reader
                .workflow(id)?
                .ok_or_else(|| StoreError::UnknownWorkflow { id: id.to_owned() })?;
            return Ok(Opened::Finished(Box::new(stored)));
        }
        Ok(Opened::Ready(Box::new(run)))
    }

    /// Replay the recorded history and stop where a step would execute
    /// ([`EngineError::HistoryEnd`]): nothing runs, nothing is claimed.
    pub fn replay_only(&mut self) {
        self.replay_only = true;
    }

    /// The guest cannot decode the recorded value of its replayed step
    /// `name` into `expected`: the error that stops the run, naming the
    /// step and the stored value (the latest replayed step of that name).
    pub fn undecodable(&self, name: &str, expected: &str, reason: &str) -> EngineError {
        let step = (1..=self.position)
            .rev()
            .filter_map(|sequence| self.cursor.at(sequence))
            .find(|step| step.name == name);
        let value = step
            .and_then(|step| step.output_json.as_deref())
            .unwrap_or("(nothing recorded)");
        const SHOWN: usize = 200;
        let value = match value.char_indices().nth(SHOWN) {
            Some((cut, _)) => format!("{}… ({} bytes)", &value[..cut], value.len()),
            None => value.to_owned(),
        };
        EngineError::UndecodableValue {
            workflow_id: self.workflow_id.clone(),
            key: step.map_or_else(|| StepKey::new(name, 1), |step| step.key.clone()),
            expected: expected.to_owned(),
            value,
            reason: reason.to_owned(),
        }
    }

    /// Where the replay stands: steps handed back so far.
    pub fn position(&self) -> u32 {
        self.position
    }

    /// Number of steps recorded by earlier runs, or `None` for a new workflow.
    pub fn recorded_steps(&self) -> Option<usize> {
        match self.claim {
            ClaimKind::Create | ClaimKind::Done { resumed: false } => None,
            _ => Some(self.cursor.len()),
        }
    }

    fn resumed(&self) -> bool {
        !matches!(
            self.claim,
            ClaimKind::Create | ClaimKind::Done { resumed: false }
        )
    }

    /// Become the workflow's owner before the first write: create it, take
    /// it over from the run that owned it when this run opened it, or reopen
    /// it; then keep the ownership alive with a heartbeat.
    fn claim(&mut self) -> Result<(), EngineError> {
        if let ClaimKind::Done { .. } = self.claim {
            return Ok(());
        }
        // The lease keeper first: a process out of file descriptors must
        // fail before it writes, not leave a claim behind.
        let lease = self
            .leases
            .keep(self.store.as_ref(), &self.workflow_id, &self.run_id)?;
        let claim = Claim {
            run_id: &self.run_id,
            owner: &self.owner,
            lease_until: now_millis() + self.leases.stale_after().as_millis() as Millis,
        };
        let id = &self.workflow_id;
        let claimed = match &self.claim {
            ClaimKind::Create => self.store.create_workflow(&NewWorkflow {
                id,
                component_sha256: &self.component_sha256,
                input: &self.input,
                claim: &claim,
                grants: self.grants.as_deref(),
                component: self.component.as_deref(),
            }),
            ClaimKind::TakeOver {
                previous_run,
                observed_lease,
                observed_component,
                takeovers,
                progress_mark,
                events,
            } => {
                let events: Vec<(&str, String)> =
                    events.iter().map(|(k, d)| (*k, d.clone())).collect();
                self.store.claim_workflow(
                    id,
                    &Takeover {
                        previous_run,
                        observed_lease: *observed_lease,
                        observed_component,
                        claim: &claim,
                        component_sha256: &self.component_sha256,
                        takeovers: *takeovers,
                        progress_mark: *progress_mark,
                        events: &events,
                    },
                )
            }
            ClaimKind::Reopen {
                previous_run,
                detail,
            } => self.store.reopen_workflow(
                id,
                &Reopen {
                    expected_run: previous_run,
                    claim: &claim,
                    component_sha256: &self.component_sha256,
                    grants: self.grants.as_deref(),
                    detail,
                },
            ),
            ClaimKind::Done { .. } => unreachable!("checked above"),
        };
        match claimed {
            // Another run claimed it since this one looked: nothing has run
            // here yet, so this is the refusal of a live owner, not a loss.
            Err(StoreError::WorkflowExists { .. } | StoreError::LostOwnership { .. }) => {
                return Err(self.owned_elsewhere()?);
            }
            claimed => claimed?,
        }
        let resumed = !matches!(self.claim, ClaimKind::Create);
        self.claim = ClaimKind::Done { resumed };
        lease.arm();
        self.lease = Some(lease);
        self.observer.claimed(&self.workflow_id);
        Ok(())
    }

    /// The refusal for a workflow another run claimed first, or that
    /// `upgrade` switched to other code since this run read it.
    fn owned_elsewhere(&self) -> Result<EngineError, EngineError> {
        let workflow =
            self.store
                .workflow(&self.workflow_id)?
                .ok_or_else(|| StoreError::UnknownWorkflow {
                    id: self.workflow_id.clone(),
                })?;
        if let ClaimKind::TakeOver {
            previous_run,
            observed_component,
            ..
        } = &self.claim
            && workflow.run_id == *previous_run
            && workflow.component_sha256 != *observed_component
        {
            return Ok(EngineError::Upgraded {
                workflow_id: self.workflow_id.clone(),
                to: workflow.component_sha256,
            });
        }
        Ok(EngineError::OwnedElsewhere {
            workflow_id: self.workflow_id.clone(),
            remaining_ms: (workflow.lease_expires_at - now_millis()).max(0),
            run_id: workflow.run_id,
            owner: Box::new(workflow.owner),
        })
    }

    /// Stop at a step boundary (or during a durable wait) if the heartbeat
    /// heard that the run must.
    pub fn check_signals(&self) -> Result<(), EngineError> {
        // The grace period for compensation is over: stop for good (but
        // replay what an earlier run recorded in time).
        if let Some(delivered) = self.cancel_delivered_at
            && !self.is_replaying()
            && now_millis() >= delivered + self.cancel_grace.as_millis() as Millis
        {
            return Err(EngineError::Cancelled {
                workflow_id: self.workflow_id.clone(),
            });
        }
        let Some(lease) = &self.lease else {
            return Ok(());
        };
        if lease.signals().lost() {
            let owner = self
                .store
                .workflow(&self.workflow_id)?
                .map_or_else(|| "(unknown)".to_owned(), |w| w.run_id);
            return Err(StoreError::LostOwnership {
                id: self.workflow_id.clone(),
                owner,
            }
            .into());
        }
        if lease.signals().stop_requested() {
            return Err(EngineError::Stopping {
                workflow_id: self.workflow_id.clone(),
            });
        }
        Ok(())
    }

    /// Whether a cancellation was asked for and not yet handed to the
    /// workflow.
    pub fn cancel_pending(&self) -> bool {
        let requested = self.cancel_read
            || self
                .lease
                .as_ref()
                .is_some_and(|lease| lease.signals().cancel_requested());
        requested && self.cancel_delivered_at.is_none()
    }

    /// Read from the database whether the workflow was asked to cancel,
    /// rather than wait for the heartbeat to say so: before work that must
    /// not start after a cancellation (a child) or a wait that would unload
    /// the workflow.
    pub fn read_cancellation(&mut self) -> Result<(), EngineError> {
        if !self.cancel_read
            && let Some(workflow) = self.store.workflow(&self.workflow_id)?
        {
            self.cancel_read = workflow.cancel_requested;
        }
        Ok(())
    }

    /// At a step boundary, or in a durable sleep (`in_sleep`): the
    /// cancellation to hand the workflow here, if any. Replaying, it is the
    /// one recorded at this position, if it was handed over the same way;
    /// running new code, a pending request is recorded here as the step
    /// `durable.cancel`, so that every replay hands it over at the same point.
    fn take_cancellation(&mut self, in_sleep: bool) -> Result<Option<String>, EngineError> {
        let next = self.position + 1;
        if let Some(recorded) = self.cursor.at(next) {
            let delivery = recorded
                .output_json
                .as_deref()
                .and_then(|json| serde_json::from_str::<CancelDelivery>(json).ok());
            let reason = match delivery {
                Some(delivery) if recorded.name == CANCEL_STEP && delivery.in_sleep == in_sleep => {
                    delivery.reason
                }
                _ => return Ok(None),
            };
            self.cancel_delivered_at = Some(recorded.finished_at.unwrap_or(recorded.started_at));
            self.position = next;
            self.ordinals.insert(CANCEL_STEP.to_owned(), 1);
            self.emit(StepEvent {
                key: recorded.key.clone(),
                kind: StepEventKind::Replayed { failed: false },
            });
            return Ok(Some(reason));
        }
        if !self.cancel_pending() {
            return Ok(None);
        }
        self.claim()?;
        let key = StepKey::new(CANCEL_STEP, 1);
        let now = now_millis();
        self.store.begin_steps(
            &self.workflow_id,
            &[StepBegin {
                key: &key,
                sequence: next,
                name: CANCEL_STEP,
                attempt: 1,
                run_id: &self.run_id,
                started_at: now,
                input_fingerprint: None,
            }],
        )?;
        let reason = CANCELLED.to_owned();
        let delivery = CancelDelivery {
            reason: reason.clone(),
            in_sleep,
        };
        let value = serde_json::to_string(&delivery).expect("plain data");
        self.store.finish_step(
            &self.workflow_id,
            &self.run_id,
            &key,
            &Ok(value),
            &self.pending_log.take(),
            None,
        )?;
        self.cancel_delivered_at = Some(now);
        self.position = next;
        self.ordinals.insert(CANCEL_STEP.to_owned(), 1);
        self.emit(StepEvent {
            key,
            kind: StepEventKind::Executed {
                attempt: 1,
                taken_over: false,
                duration: Duration::ZERO,
                error: None,
            },
        });
        Ok(Some(reason))
    }

    /// A durable wait wants to end early to hand over a cancellation: record
    /// it at this boundary, as [`Self::begin_step`] would.
    pub fn deliver_cancellation(&mut self) -> Result<Option<String>, EngineError> {
        self.check_signals()?;
        self.take_cancellation(true)
    }

    /// The input the workflow was started with, as JSON.
    pub fn input(&self) -> &str {
        &self.input
    }

    pub fn workflow_id(&self) -> &str {
        &self.workflow_id
    }

    /// The guest refused its input (`reason`): the run stops before
    /// writing anything.
    pub fn input_rejected(&self, reason: String) -> EngineError {
        EngineError::InputRejected {
            reason,
            recorded: !matches!(self.claim, ClaimKind::Create),
        }
    }

    /// Whether the guest is still walking recorded history: the code it
    /// runs now ran before, in an earlier run.
    pub fn is_replaying(&self) -> bool {
        self.cursor.after(self.position).is_some()
    }

    /// Whether what the guest says now was already kept by an earlier run.
    /// Lines are stored with the checkpoint that follows them, so they were
    /// kept if the code running now leads to a step whose end is recorded;
    /// a run that died before that checkpoint lost them, and they are kept
    /// when this run says them again.
    fn said_before(&self) -> bool {
        self.cursor
            .after(self.position)
            .is_some_and(|next| next.outcome().is_some())
    }

    /// A line of the workflow's log: passed on and kept unless an earlier
    /// run kept it, so that each line is told once.
    pub fn log(&mut self, message: &str) {
        if !self.said_before() {
            self.observer.log(&self.workflow_id, message);
            self.pending_log.push(LogLine {
                at: now_millis(),
                stream: LogStream::Log,
                step: self.current_step(),
                text: message.to_owned(),
            });
        }
    }

    /// Lines the guest printed, to keep with the next checkpoint (dropped
    /// when an earlier run kept them); a line without a step gets the
    /// executing one.
    pub fn capture_output(&mut self, lines: Vec<LogLine>) {
        if lines.is_empty() || self.said_before() {
            return;
        }
        let step = self.current_step();
        for mut line in lines {
            if line.step.is_none() {
                line.step.clone_from(&step);
            }
            self.pending_log.push(line);
        }
    }

    /// Whether the body of a step is executing (the workflow's thread is in
    /// it, or waits for the parallel branches that are).
    pub fn is_executing_a_step(&self) -> bool {
        !self.executing.is_empty()
    }

    /// The step whose body is executing on the workflow's thread, if one is.
    pub fn current_step(&self) -> Option<StepKey> {
        match self.executing.as_slice() {
            [only] => Some(only.key.clone()),
            _ => None,
        }
    }

    /// The guest begins its next step, called `name`.
    pub fn begin_step(&mut self, name: &str) -> Result<StepStart, EngineError> {
        self.begin_step_with(StepRequest::named(name))
    }

    /// The guest begins its next step, as `request` describes it.
    pub fn begin_step_with(&mut self, request: StepRequest<'_>) -> Result<StepStart, EngineError> {
        let mut starts = self.begin_steps(&[request])?;
        Ok(starts.pop().expect("one start per step"))
    }

    /// The guest begins the steps `requests` to run at the same time. They
    /// take the next positions in order; every one is checked against the
    /// history (name, and input where both have a fingerprint) before
    /// anything is written, and those to execute are marked running in a
    /// single commit.
    pub fn begin_steps(
        &mut self,
        requests: &[StepRequest<'_>],
    ) -> Result<Vec<StepStart>, EngineError> {
        self.begin_steps_handing_over(requests, true)
    }

    /// [`Self::begin_steps`]; a pending cancellation is handed over first
    /// only when `deliver_cancellation` (a step that cannot answer with it,
    /// such as publishing an event, begins without).
    fn begin_steps_handing_over(
        &mut self,
        requests: &[StepRequest<'_>],
        deliver_cancellation: bool,
    ) -> Result<Vec<StepStart>, EngineError> {
        if let Some(executing) = self.executing.first() {
            let name = requests.first().map(|r| r.name).unwrap_or_default();
            return Err(EngineError::StepOverlap {
                executing: executing.key.clone(),
                requested: StepKey::new(name, self.ordinals.get(name).copied().unwrap_or(0) + 1),
            });
        }
        self.check_signals()?;
        if deliver_cancellation && let Some(reason) = self.take_cancellation(false)? {
            return Ok(vec![StepStart::Cancelled(reason); requests.len()]);
        }
        // A failure below ends the run, so advancing as we go is harmless.
        let mut planned = Vec::with_capacity(requests.len());
        for request in requests {
            let name = request.name;
            if name.is_empty() {
                return Err(EngineError::EmptyStepName);
            }
            check_name("a step name", name)?;
            let ordinal = self.ordinals.get(name).copied().unwrap_or(0) + 1;
            let key = StepKey::new(name, ordinal);
            let sequence = self.position + 1;
            let plan = match self.cursor.at(sequence) {
                Some(recorded) if recorded.key != key => {
                    return Err(EngineError::Diverged {
                        workflow_id: self.workflow_id.clone(),
                        position: sequence,
                        recorded: recorded.key.clone(),
                        requested: key,
                    });
                }
                Some(recorded)
                    if recorded
                        .input_fingerprint
                        .as_deref()
                        .zip(request.input_fingerprint)
                        .is_some_and(|(was, now)| was != now) =>
                {
                    return Err(EngineError::InputChanged {
                        workflow_id: self.workflow_id.clone(),
                        position: sequence,
                        key,
                    });
                }
                Some(recorded) => match recorded.outcome() {
                    Some(outcome) => Err(outcome),
                    // Left running by a run that died: take it over.
                    None => Ok((recorded.attempts + 1, recorded.failures)),
                },
                None => Ok((1, 0)),
            };
            match self.ordinals.get_mut(name) {
                Some(count) => *count = ordinal,
                None => {
                    self.ordinals.insert(name.to_owned(), ordinal);
                }
            }
            self.position = sequence;
            planned.push((name, key, sequence, plan, request.input_fingerprint));
        }

        if self.replay_only
            && let Some((_, key, sequence, ..)) =
                planned.iter().find(|(_, _, _, plan, _)| plan.is_ok())
        {
            return Err(EngineError::HistoryEnd {
                replayed: sequence - 1,
                next: key.clone(),
            });
        }
        if planned.iter().any(|(_, _, _, plan, _)| plan.is_ok()) {
            self.claim()?;
            let started_at = now_millis();
            let begins: Vec<StepBegin<'_>> = planned
                .iter()
                .filter_map(|(name, key, sequence, plan, fingerprint)| {
                    Some(StepBegin {
                        key,
                        sequence: *sequence,
                        name,
                        attempt: plan.as_ref().ok()?.0,
                        run_id: &self.run_id,
                        started_at,
                        input_fingerprint: *fingerprint,
                    })
                })
                .collect();
            self.store.begin_steps(&self.workflow_id, &begins)?;
        }

        let mut starts = Vec::with_capacity(planned.len());
        for (_, key, _, plan, _) in planned {
            match plan {
                Err(outcome) => {
                    self.emit(StepEvent {
                        key,
                        kind: StepEventKind::Replayed {
                            failed: outcome.is_err(),
                        },
                    });
                    starts.push(StepStart::Replayed(outcome));
                }
                Ok((attempt, failures)) => {
                    self.observer.step_started(&self.workflow_id, &key, attempt);
                    self.executing.push(Executing {
                        key: key.clone(),
                        attempt,
                        failures,
                        taken_over: attempt > 1,
                        started: Instant::now(),
                    });
                    starts.push(StepStart::Execute(StepRun {
                        idempotency_key: idempotency_key(&self.workflow_id, &key),
                        key,
                        attempt,
                        failures,
                    }));
                }
            }
        }
        for executing in &self.executing {
            self.crash.before_body(&executing.key);
        }
        Ok(starts)
    }

    /// The guest reports how the executing step `key` ended; durable on return.
    pub fn finish_step(&mut self, key: &str, outcome: Outcome) -> Result<(), EngineError> {
        self.finish_step_with(key, outcome, None)
    }

    /// [`Self::finish_step`], making `effect` in the same commit.
    fn finish_step_with(
        &mut self,
        key: &str,
        outcome: Outcome,
        effect: Option<StepEffect>,
    ) -> Result<(), EngineError> {
        let Some(index) = self.executing.iter().position(|e| e.key.as_str() == key) else {
            return Err(EngineError::NotExecuting {
                key: key.to_owned(),
                call: "finish-step",
            });
        };
        let outcome = outcome.map_err(bounded_failure);
        // On a rejected outcome the step stays executing: the trap that
        // follows fails it with the workflow.
        let size = outcome
            .as_ref()
            .map_or_else(|f| f.message.len(), String::len);
        if size > MAX_STEP_OUTPUT {
            return Err(EngineError::OutputTooLarge {
                key: self.executing[index].key.clone(),
                size,
                limit: MAX_STEP_OUTPUT,
            });
        }
        if let Ok(json) = &outcome
            && let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(json)
        {
            return Err(EngineError::InvalidStepJson {
                key: self.executing[index].key.clone(),
                reason: e.to_string(),
            });
        }
        let executing = self.executing.remove(index);
        self.store.finish_step(
            &self.workflow_id,
            &self.run_id,
            &executing.key,
            &outcome,
            &self.pending_log.take(),
            effect.as_ref(),
        )?;
        self.checkpoints += 1;
        self.emit(StepEvent {
            key: executing.key.clone(),
            kind: StepEventKind::Executed {
                attempt: executing.attempt,
                taken_over: executing.taken_over,
                duration: executing.started.elapsed(),
                error: outcome.err().map(|failure| failure.to_string()),
            },
        });
        self.crash
            .after_checkpoint(&executing.key, self.checkpoints);
        Ok(())
    }

    /// The guest's `run` returned `outcome`: record the workflow's end.
    pub fn complete(self, outcome: Outcome) -> Result<RunReport, EngineError> {
        if let Some(next) = self.cursor.after(self.position) {
            return Err(EngineError::EndedEarly {
                workflow_id: self.workflow_id.clone(),
                reached: self.position,
                next: next.key.clone(),
            });
        }
        // The SDK always finishes what it begins; a guest that returns
        // mid-step has abandoned it, which fails the workflow.
        let outcome = match (self.executing.first(), outcome) {
            (Some(executing), _) => Err(Failure::new(format!(
                "the workflow returned while step `{}` was still executing",
                executing.key
            ))),
            (None, Ok(output)) if output.len() > MAX_STEP_OUTPUT => Err(Failure::new(format!(
                "the workflow's output is {} bytes, more than the {MAX_STEP_OUTPUT} bytes a \
                 checkpoint may hold; store large data elsewhere and return a reference to it",
                output.len()
            ))),
            (None, Ok(output)) => match serde_json::from_str::<serde::de::IgnoredAny>(&output) {
                Ok(_) => Ok(output),
                Err(e) => Err(Failure::new(
                    EngineError::InvalidOutputJson {
                        reason: e.to_string(),
                    }
                    .to_string(),
                )),
            },
            (None, Err(error)) => Err(bounded_failure(error)),
        };
        if self.cancel_delivered_at.is_some() {
            // Whatever it answers after its compensation, it was cancelled.
            let reason = match &outcome {
                Ok(_) => format!("{CANCELLED} (compensation done; the workflow then returned)"),
                Err(error) => format!("{CANCELLED}; the workflow then returned: {error}"),
            };
            return self.end(Err(Failure::new(reason)), WorkflowStatus::Cancelled);
        }
        self.end(outcome, WorkflowStatus::Completed)
    }

    /// A limit stopped the guest (time, memory): fail the workflow with
    /// `reason`. Steps it was executing stay unfinished, so that a
    /// `durable-host resume` with other limits executes them again.
    pub fn fail(self, reason: String) -> Result<RunReport, EngineError> {
        self.end(Err(Failure::new(reason)), WorkflowStatus::Failed)
    }

    /// The guest trapped (a panic, a fault): a bug in the code rather than
    /// the workflow's answer. Suspend the workflow with `reason`, keeping its
    /// history, so that fixed code can continue it (`durable-host resume`).
    pub fn suspend(self, reason: String) -> Result<RunReport, EngineError> {
        self.end(Err(Failure::new(reason)), WorkflowStatus::Suspended)
    }

    /// Whether long durable sleeps unload the workflow (see [`Self::unload`]).
    pub fn unloads_sleeps(&self) -> bool {
        self.unload_sleeps
    }

    /// The workflow sleeps until `wake_at`: record it `sleeping`, owned by
    /// nobody, and end this run. It is resumed by replay when it is due.
    pub fn unload(self, wake_at: Millis) -> Result<RunReport, EngineError> {
        self.unload_until(None, Some(wake_at))
    }

    /// The workflow waits for `waiting_for`, until `deadline` at the
    /// latest: record it `waiting`, owned by nobody, and end this run. It is
    /// resumed by replay when what it waits for comes or the deadline is
    /// due.
    pub fn unload_waiting(
        self,
        waiting_for: WaitingFor,
        deadline: Option<Millis>,
    ) -> Result<RunReport, EngineError> {
        self.unload_until(Some(waiting_for), deadline)
    }

    fn unload_until(
        mut self,
        waiting_for: Option<WaitingFor>,
        wake_at: Option<Millis>,
    ) -> Result<RunReport, EngineError> {
        self.claim()?;
        self.store
            .append_log(&self.workflow_id, &self.run_id, &self.pending_log.take())?;
        // Once the cancellation is handed over, its compensation may sleep
        // and wait like any code.
        let unload = Unload {
            waiting_for: waiting_for.as_ref(),
            wake_at,
            despite_cancel: self.cancel_delivered_at.is_some(),
        };
        let unloaded = self
            .store
            .unload_workflow(&self.workflow_id, &self.run_id, &unload)?;
        if !unloaded {
            // Asked to cancel in the instant since the run last read it (it
            // reads just before unloading): as a cancellation of an
            // unloaded workflow would, it ends now.
            return self.cancel();
        }
        let status = match waiting_for {
            Some(_) => WorkflowStatus::Waiting,
            None => WorkflowStatus::Sleeping,
        };
        self.observer.run_ended(&self.workflow_id);
        Ok(RunReport {
            resumed: self.resumed(),
            workflow_id: self.workflow_id,
            run_id: self.run_id,
            status,
            outcome: Ok(String::new()),
            wake_at,
            waiting_for,
            events: self.events,
        })
    }

    /// End the run without finishing the workflow, in order (the host had
    /// no memory for a branch): its lease is given up, so that the next run
    /// takes over at once and does not count this one among runs that died.
    /// Its steps in flight are left for that run. A store that fails here
    /// changes nothing: the lease then runs out as after a crash.
    pub fn release(mut self) {
        if let Some(lease) = self.lease.take() {
            // Renewals stop first, or one could extend the lease given up.
            drop(lease);
            let _ = self.store.release_workflow(&self.workflow_id, &self.run_id);
        }
    }

    /// The run stopped at a step boundary because it was cancelled.
    pub fn cancel(self) -> Result<RunReport, EngineError> {
        self.end(Err(Failure::new(CANCELLED)), WorkflowStatus::Cancelled)
    }

    /// A step's attempt failed with `error` and will be retried after
    /// `backoff`: record it. The step stays running; call
    /// [`Self::begin_retry`] when the backoff is over.
    pub fn record_attempt(
        &mut self,
        key: &str,
        error: &str,
        backoff: Duration,
    ) -> Result<(), EngineError> {
        self.check_signals()?;
        let Some(executing) = self.executing.iter().find(|e| e.key.as_str() == key) else {
            return Err(EngineError::NotExecuting {
                key: key.to_owned(),
                call: "record-attempt",
            });
        };
        let error = bounded_error(error.to_owned());
        self.store.record_attempt(
            &self.workflow_id,
            &self.run_id,
            &executing.key,
            &error,
            backoff.as_millis() as i64,
        )?;
        Ok(())
    }

    /// Begin the next attempt of the executing step `key`, after a failed
    /// one's backoff.
    pub fn begin_retry(&mut self, key: &str) -> Result<StepRun, EngineError> {
        self.check_signals()?;
        let Some(executing) = self.executing.iter_mut().find(|e| e.key.as_str() == key) else {
            return Err(EngineError::NotExecuting {
                key: key.to_owned(),
                call: "record-attempt",
            });
        };
        self.store
            .begin_retry(&self.workflow_id, &self.run_id, &executing.key)?;
        executing.attempt += 1;
        executing.failures += 1;
        Ok(StepRun {
            key: executing.key.clone(),
            attempt: executing.attempt,
            failures: executing.failures,
            idempotency_key: idempotency_key(&self.workflow_id, &executing.key),
        })
    }

    fn end(mut self, outcome: Outcome, status: WorkflowStatus) -> Result<RunReport, EngineError> {
        self.claim()?;
        let executing = std::mem::take(&mut self.executing);
        let interrupted: Vec<StepKey> = executing.iter().map(|e| e.key.clone()).collect();
        let status = match (&outcome, status) {
            (Err(_), WorkflowStatus::Completed) => WorkflowStatus::Failed,
            (_, status) => status,
        };
        self.store.finish_workflow(
            &self.workflow_id,
            &self.run_id,
            &WorkflowEnd {
                status,
                outcome: &outcome,
                interrupted_steps: &interrupted,
                log: &self.pending_log.take(),
            },
        )?;
        if let Err(reason) = &outcome {
            for executing in executing {
                self.emit(StepEvent {
                    key: executing.key,
                    kind: StepEventKind::Interrupted {
                        attempt: executing.attempt,
                        duration: executing.started.elapsed(),
                        reason: reason.to_string(),
                    },
                });
            }
        }
        if status == WorkflowStatus::Cancelled {
            // Children it started after the cancel command listed them.
            for child in self.store.children(&self.workflow_id)? {
                if !child.status.is_final() {
                    cancel_workflow(&*self.store, &child.id)?;
                }
            }
        }
        self.observer.run_ended(&self.workflow_id);
        Ok(RunReport {
            resumed: self.resumed(),
            workflow_id: self.workflow_id,
            run_id: self.run_id,
            status,
            outcome,
            wake_at: None,
            waiting_for: None,
            events: self.events,
        })
    }

    fn emit(&mut self, event: StepEvent) {
        self.observer.step_event(&self.workflow_id, &event);
        self.events.push(event);
    }
}

/// `<workflow id>/<step key>`, with `%` and `/` in the workflow id escaped
/// as `%25` and `%2F`, so that the first `/` always ends the id: workflow
/// `pay/x` step `charge` and workflow `pay` step `x/charge` get different
/// keys.
pub fn idempotency_key(workflow_id: &str, key: &StepKey) -> String {
    let mut encoded = String::with_capacity(workflow_id.len() + key.as_str().len() + 1);
    for c in workflow_id.chars() {
        match c {
            '%' => encoded.push_str("%25"),
            '/' => encoded.push_str("%2F"),
            c => encoded.push(c),
        }
    }
    encoded.push('/');
    encoded.push_str(key.as_str());
    encoded
}

/// Refuse an empty, oversized or control-character name at the edge, before
/// it reaches the database and every table that shows it.
fn check_name(what: &str, name: &str) -> Result<(), EngineError> {
    let invalid = |reason: String| EngineError::InvalidName {
        what: what.to_owned(),
        reason,
    };
    if name.is_empty() {
        return Err(invalid("it is empty".to_owned()));
    }
    if name.len() > MAX_NAME {
        return Err(invalid(format!(
            "it is {} bytes long, more than {MAX_NAME}",
            name.len()
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(invalid("it contains control characters".to_owned()));
    }
    Ok(())
}

/// A failure whose message is cut to [`MAX_ERROR`] bytes.
fn bounded_failure(failure: Failure) -> Failure {
    Failure {
        message: bounded_error(failure.message),
        code: failure.code.map(bounded_error),
    }
}

/// An error message cut to [`MAX_ERROR`] bytes (on a character boundary),
/// saying so.
fn bounded_error(mut error: String) -> String {
    if error.len() > MAX_ERROR {
        let mut cut = MAX_ERROR;
        while !error.is_char_boundary(cut) {
            cut -= 1;
        }
        let total = error.len();
        error.truncate(cut);
        error.push_str(&format!("… (cut from {total} bytes)"));
    }
    error
}

/// The largest result (value or error) a step may record. Checkpoints are
/// rows read back on every resume: they are for results, not for bulk data.
pub const MAX_STEP_OUTPUT: usize = 16 << 20;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{SignalRecord, SqliteStore};

    struct Silent;
    impl RunObserver for Silent {
        fn step_event(&mut self, _: &str, _: &StepEvent) {}
        fn log(&mut self, _: &str, _: &str) {}
    }

    fn open(db: &std::path::Path, run_id: &str) -> Opened {
        let store = Box::new(SqliteStore::open(db).unwrap());
        let request = RunRequest {
            workflow_id: "wf",
            component_sha256: "abc",
            input: Some("null"),
            run_id,
            leases: Arc::new(OwnHeartbeat {
                stale_after: Duration::from_secs(30),
            }),
            unload_sleeps: false,
            allow_component_change: false,
            reopen: false,
            cancel_grace: DEFAULT_CANCEL_GRACE,
            grants: None,
            component: None,
        };
        WorkflowRun::open(store, &request, CrashPlan::none(), Box::new(Silent)).unwrap()
    }

    /// Let every lease run out, as if the owners had stopped renewing
    /// them (died, or froze): a run of this same process is never provably
    /// dead, so only its lease can end its ownership.
    fn expire_leases(db: &std::path::Path) {
        rusqlite::Connection::open(db)
            .unwrap()
            .execute("UPDATE workflows SET lease_expires_at = 0", [])
            .unwrap();
    }

    fn ready(opened: Opened) -> WorkflowRun {
        match opened {
            Opened::Ready(run) => *run,
            Opened::Finished(_) => panic!("workflow unexpectedly finished"),
        }
    }

    fn execute(run: &mut WorkflowRun, name: &str, value: &str) {
        match run.begin_step(name).unwrap() {
            StepStart::Execute(step) => run
                .finish_step(step.key.as_str(), Ok(value.to_owned()))
                .unwrap(),
            other => panic!("{name}: {other:?}, expected execution"),
        }
    }

    #[test]
    fn a_cancellation_asked_for_while_unloading_ends_the_workflow() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db");
        let mut run = ready(open(&db, "r1"));
        execute(&mut run, "first", "1");
        // `cancel` reached the database before the run heard of it.
        let store = SqliteStore::open(&db).unwrap();
        store.request_cancel("wf").unwrap();
        let report = run
            .unload_waiting(WaitingFor::Signal("go".into()), None)
            .unwrap();
        assert_eq!(report.status, WorkflowStatus::Cancelled);
        assert_eq!(
            store.workflow("wf").unwrap().unwrap().status,
            WorkflowStatus::Cancelled
        );
    }

    #[test]
    fn signals_are_taken_once_in_the_order_sent_and_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db");
        let mut run = ready(open(&db, "r1"));
        execute(&mut run, "first", "1");
        let store = SqliteStore::open(&db).unwrap();
        assert_eq!(run.receive_signal("go", None).unwrap(), SignalWait::Nothing);
        for (id, value) in [("a", "1"), ("b", "2")] {
            store
                .send_signal(&SignalRecord {
                    seq: 0,
                    workflow_id: "wf".into(),
                    name: "go".into(),
                    signal_id: id.into(),
                    value: value.into(),
                    sent_at: now_millis(),
                    taken_by: None,
                })
                .unwrap();
        }
        let first = run.receive_signal("go", None).unwrap();
        assert_eq!(first, SignalWait::Received("1".into()));
        drop(run);
        expire_leases(&db);
        // A new run replays the first wait and takes the second signal.
        let mut again = ready(open(&db, "r2"));
        assert!(matches!(
            again.begin_step("first").unwrap(),
            StepStart::Replayed(_)
        ));
        assert_eq!(
            again.receive_signal("go", None).unwrap(),
            SignalWait::Received("1".into())
        );
        assert_eq!(
            again.receive_signal("go", None).unwrap(),
            SignalWait::Received("2".into())
        );
        assert_eq!(
            again.receive_signal("go", Some(0)).unwrap(),
            SignalWait::TimedOut
        );
        let taken: Vec<Option<String>> = store
            .signals("wf")
            .unwrap()
            .into_iter()
            .map(|s| s.taken_by.map(|k| k.as_str().to_owned()))
            .collect();
        assert_eq!(
            taken,
            [
                Some("durable.signal:go#000001".to_owned()),
                Some("durable.signal:go#000002".to_owned())
            ]
        );
    }

    #[test]
    fn same_name_gets_one_key_per_call() {
        let dir = tempfile::tempdir().unwrap();
        let mut run = ready(open(&dir.path().join("db"), "r1"));
        for expected in ["charge#000001", "charge#000002"] {
            let StepStart::Execute(step) = run.begin_step("charge").unwrap() else {
                panic!("expected execution")
            };
            assert_eq!(step.key.as_str(), expected);
            assert_eq!(step.idempotency_key, format!("wf/{expected}"));
            assert_eq!(step.failures, 0);
            run.finish_step(expected, Ok("1".into())).unwrap();
        }
    }

    #[test]
    fn resume_replays_completed_and_takes_over_running() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db");
        let mut first = ready(open(&db, "r1"));
        execute(&mut first, "a", "\"done\"");
        assert!(matches!(
            first.begin_step("b").unwrap(),
            StepStart::Execute(_)
        ));
        drop(first); // dies with `b` running
        expire_leases(&db);

        let mut second = ready(open(&db, "r2"));
        assert_eq!(
            second.begin_step("a").unwrap(),
            StepStart::Replayed(Ok("\"done\"".into()))
        );
        let StepStart::Execute(b) = second.begin_step("b").unwrap() else {
            panic!("b must be taken over")
        };
        assert_eq!(b.attempt, 2);
        second.finish_step("b#000001", Ok("2".into())).unwrap();
        let report = second.complete(Ok("\"ok\"".into())).unwrap();
        assert!(report.resumed);

        assert!(
            matches!(open(&db, "r3"), Opened::Finished(w) if w.output.as_deref() == Some("\"ok\""))
        );
    }

    #[test]
    fn divergence_is_refused_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db");
        let mut first = ready(open(&db, "r1"));
        execute(&mut first, "a", "1");
        drop(first);
        expire_leases(&db);
        let before = SqliteStore::open(&db).unwrap().steps("wf").unwrap();

        let mut second = ready(open(&db, "r2"));
        let err = second.begin_step("b").unwrap_err();
        assert!(err.is_non_determinism(), "{err}");
        assert!(err.to_string().contains("`a#000001`") && err.to_string().contains("`b#000001`"));
        assert_eq!(SqliteStore::open(&db).unwrap().steps("wf").unwrap(), before);
    }

    /// `upgrade` switches a workflow between a run's read and its claim
    /// (the run replayed it on the old code): the run writes nothing and
    /// says so, and the workflow stays on the new code.
    #[test]
    fn a_run_that_read_a_workflow_before_its_upgrade_cannot_claim_it() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db");
        let mut first = ready(open(&db, "r1"));
        execute(&mut first, "a", "1");
        first.unload(now_millis() - 1).unwrap(); // a sleeper, due

        let mut second = ready(open(&db, "r2"));
        let store = SqliteStore::open(&db).unwrap();
        let observed = store.workflow("wf").unwrap().unwrap();
        assert_eq!(observed.status, WorkflowStatus::Sleeping);
        assert!(
            store
                .upgrade_workflow(&crate::store::Upgrade {
                    observed: &observed,
                    verified_steps: 1,
                    to_sha256: "def",
                    detail: "abc -> def",
                    new_run: None,
                })
                .unwrap()
        );
        let before = store.steps("wf").unwrap();
        assert!(matches!(
            second.begin_step("a").unwrap(),
            StepStart::Replayed(_)
        ));
        let refused = second.begin_step("b").unwrap_err();
        assert!(
            matches!(&refused, EngineError::Upgraded { to, .. } if to == "def"),
            "{refused}"
        );
        let after = store.workflow("wf").unwrap().unwrap();
        assert_eq!(
            (after.component_sha256.as_str(), after.run_id.as_str()),
            ("def", observed.run_id.as_str())
        );
        assert_eq!(store.steps("wf").unwrap(), before);
    }

    #[test]
    fn a_run_that_lost_its_workflow_cannot_write() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db");
        let mut first = ready(open(&db, "r1"));
        execute(&mut first, "a", "1");
        let StepStart::Execute(b) = first.begin_step("b").unwrap() else {
            panic!("b must execute")
        };
        // The first run's lease runs out (it froze); a successor takes over
        // and completes the workflow.
        expire_leases(&db);
        let mut second = ready(open(&db, "r2"));
        assert!(matches!(
            second.begin_step("a").unwrap(),
            StepStart::Replayed(_)
        ));
        let StepStart::Execute(_) = second.begin_step("b").unwrap() else {
            panic!("b must be taken over")
        };
        second
            .finish_step("b#000001", Ok("\"by r2\"".into()))
            .unwrap();
        second.complete(Ok("\"done\"".into())).unwrap();
        let before = SqliteStore::open(&db).unwrap().steps("wf").unwrap();

        // The first run wakes up: every write it tries is refused, and no
        // completed step is reopened or overwritten.
        let lost =
            |e: EngineError| matches!(e, EngineError::Store(StoreError::LostOwnership { .. }));
        assert!(lost(
            first
                .finish_step(b.key.as_str(), Ok("\"by r1\"".into()))
                .unwrap_err()
        ));
        assert!(lost(first.begin_step("c").unwrap_err()));
        assert_eq!(SqliteStore::open(&db).unwrap().steps("wf").unwrap(), before);
        assert!(matches!(
            open(&db, "r3"),
            Opened::Finished(w) if w.output.as_deref() == Some("\"done\"")
        ));
    }

    #[test]
    fn idempotency_keys_do_not_collide() {
        let charge = StepKey::new("charge", 1);
        let x_charge = StepKey::new("x/charge", 1);
        assert_ne!(
            idempotency_key("pay/x", &charge),
            idempotency_key("pay", &x_charge)
        );
        assert_eq!(idempotency_key("pay/x", &charge), "pay%2Fx/charge#000001");
        assert_eq!(idempotency_key("a%2Fb", &charge), "a%252Fb/charge#000001");
        assert_eq!(idempotency_key("pay", &x_charge), "pay/x/charge#000001");
    }

    #[test]
    fn names_are_bounded_at_the_edge() {
        let dir = tempfile::tempdir().unwrap();
        let mut run = ready(open(&dir.path().join("db"), "r1"));
        let long = "n".repeat(MAX_NAME + 1);
        assert!(matches!(
            run.begin_step(&long).unwrap_err(),
            EngineError::InvalidName { .. }
        ));
        assert!(check_name("id", "line\nbreak").is_err());
        assert!(check_name("id", "pay/x").is_ok());
        let cut = bounded_error("é".repeat(MAX_ERROR));
        assert!(
            cut.len() < MAX_ERROR + 64 && cut.ends_with("bytes)"),
            "{}",
            cut.len()
        );
    }

    #[test]
    fn a_workflow_output_that_is_not_json_fails_the_workflow() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db");
        let mut run = ready(open(&db, "r1"));
        execute(&mut run, "a", "1");
        let report = run.complete(Ok("{not json".into())).unwrap();
        assert_eq!(report.status, WorkflowStatus::Failed);
        let error = report.outcome.unwrap_err().message;
        assert!(error.contains("output that is not valid JSON"), "{error}");
        let stored = SqliteStore::open(&db)
            .unwrap()
            .workflow("wf")
            .unwrap()
            .unwrap();
        assert_eq!(stored.status, WorkflowStatus::Failed);
        assert_eq!(stored.output, None);
    }

    #[test]
    fn invalid_json_from_a_step_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let mut run = ready(open(&dir.path().join("db"), "r1"));
        let StepStart::Execute(step) = run.begin_step("a").unwrap() else {
            panic!()
        };
        let err = run
            .finish_step(step.key.as_str(), Ok("{not json".into()))
            .unwrap_err();
        assert!(matches!(err, EngineError::InvalidStepJson { .. }), "{err}");
    }
}
