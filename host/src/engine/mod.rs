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
mod crash;
mod lease;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use cancel::{CANCELLED, finish_cancel};
pub use cancel::{CancelOutcome, cancel_workflow};
pub use crash::{CrashPlan, CrashPoint};
pub use lease::{Heartbeat, owner_alive, this_process};

use crate::store::{
    CheckpointStore, Claim, Millis, NewWorkflow, Outcome, Owner, StepBegin, StepKey, StepRecord,
    StoreError, WorkflowEnd, WorkflowRecord, WorkflowStatus, now_millis,
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
    #[error("workflow {workflow_id} was started with a different input")]
    InputMismatch { workflow_id: String },
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
        owner: Owner,
        remaining_ms: Millis,
    },
    #[error("workflow {workflow_id} was cancelled")]
    Cancelled { workflow_id: String },
    #[error("the guest began a step with an empty name")]
    EmptyStepName,
    #[error("the guest began step `{requested}` while step `{executing}` is still executing")]
    StepOverlap {
        executing: StepKey,
        requested: StepKey,
    },
    #[error("the guest finished step `{key}`, which is not the step being executed")]
    NotExecuting { key: String },
    #[error("step `{key}` returned a value that is not valid JSON: {reason}")]
    InvalidStepJson { key: StepKey, reason: String },
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
        matches!(self, Self::Diverged { .. } | Self::EndedEarly { .. })
    }
}

/// What a run does with a step the guest began.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepStart {
    /// Completed earlier: hand the recorded outcome back.
    Replayed(Outcome),
    /// Execute the body now.
    Execute(StepRun),
}

/// A step the guest must execute now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepRun {
    pub key: StepKey,
    pub attempt: u32,
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

    /// A step's body is about to execute.
    fn step_started(&mut self, _workflow_id: &str, _key: &StepKey, _attempt: u32) {}

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
    /// How long a run's ownership outlives its last heartbeat.
    pub stale_after: Duration,
    /// Resume even if the workflow was started by another component.
    pub allow_component_change: bool,
}

/// The result of opening a workflow.
pub enum Opened {
    /// The workflow already finished; nothing will run.
    Finished(WorkflowRecord),
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
        self.recorded.iter().find(|s| s.sequence > sequence)
    }

    pub fn len(&self) -> usize {
        self.recorded.len()
    }

    pub fn is_empty(&self) -> bool {
        self.recorded.is_empty()
    }
}

struct Executing {
    key: StepKey,
    attempt: u32,
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
    /// The owner to take over from when resuming; `None` for a new workflow.
    previous_run: Option<String>,
    owner: Owner,
    stale_after: Duration,
    /// Present once the run has claimed the workflow.
    heartbeat: Option<Heartbeat>,
    cursor: ReplayCursor,
    ordinals: HashMap<String, u32>,
    position: u32,
    /// Steps whose bodies are running: one, or the branches of a parallel call.
    executing: Vec<Executing>,
    checkpoints: u32,
    crash: CrashPlan,
    observer: Box<dyn RunObserver>,
    events: Vec<StepEvent>,
}

impl WorkflowRun {
    /// Look up workflow `request.workflow_id` to start or resume it.
    pub fn open(
        store: Box<dyn CheckpointStore>,
        request: &RunRequest<'_>,
        crash: CrashPlan,
        observer: Box<dyn RunObserver>,
    ) -> Result<Opened, EngineError> {
        let id = request.workflow_id;
        let existing = store.workflow(id)?;
        if let (Some(existing), Some(input)) = (&existing, request.input)
            && existing.input != input
        {
            return Err(EngineError::InputMismatch {
                workflow_id: id.to_owned(),
            });
        }
        let owner = this_process();
        let (input, previous_run, cursor) = match existing {
            Some(workflow) if workflow.outcome().is_some() => {
                return Ok(Opened::Finished(workflow));
            }
            Some(workflow) => {
                let now = now_millis();
                if owner_alive(&workflow, now) {
                    return Err(EngineError::OwnedElsewhere {
                        workflow_id: id.to_owned(),
                        remaining_ms: workflow.lease_expires_at - now,
                        run_id: workflow.run_id,
                        owner: workflow.owner,
                    });
                }
                if workflow.cancel_requested {
                    // Cancelled while its owner was dying: finish the cancel.
                    return Ok(Opened::Finished(finish_cancel(store.as_ref(), &workflow)?));
                }
                if workflow.component_sha256 != request.component_sha256
                    && !request.allow_component_change
                {
                    return Err(EngineError::ComponentChanged {
                        workflow_id: id.to_owned(),
                        started_with: workflow.component_sha256,
                        given: request.component_sha256.to_owned(),
                    });
                }
                let cursor = ReplayCursor::new(store.steps(id)?);
                (workflow.input, Some(workflow.run_id), cursor)
            }
            None => (
                request.input.unwrap_or("null").to_owned(),
                None,
                ReplayCursor::default(),
            ),
        };
        Ok(Opened::Ready(Box::new(WorkflowRun {
            store,
            workflow_id: id.to_owned(),
            component_sha256: request.component_sha256.to_owned(),
            input,
            run_id: request.run_id.to_owned(),
            previous_run,
            owner,
            stale_after: request.stale_after,
            heartbeat: None,
            cursor,
            ordinals: HashMap::new(),
            position: 0,
            executing: Vec::new(),
            checkpoints: 0,
            crash,
            observer,
            events: Vec::new(),
        })))
    }

    /// Number of steps recorded by earlier runs, or `None` for a new workflow.
    pub fn recorded_steps(&self) -> Option<usize> {
        self.previous_run.as_ref().map(|_| self.cursor.len())
    }

    /// Become the workflow's owner before the first write: create it, or
    /// take it over from the run that owned it when this run opened it; then
    /// keep the ownership alive with a heartbeat.
    fn claim(&mut self) -> Result<(), EngineError> {
        if self.heartbeat.is_some() {
            return Ok(());
        }
        let claim = Claim {
            run_id: &self.run_id,
            owner: &self.owner,
            lease_until: now_millis() + self.stale_after.as_millis() as Millis,
        };
        let id = &self.workflow_id;
        match &self.previous_run {
            Some(previous) => {
                self.store
                    .claim_workflow(id, previous, &claim, &self.component_sha256)?
            }
            None => self.store.create_workflow(&NewWorkflow {
                id,
                component_sha256: &self.component_sha256,
                input: &self.input,
                claim: &claim,
            })?,
        }
        self.heartbeat = Some(Heartbeat::start(
            self.store.reopen()?,
            self.workflow_id.clone(),
            self.run_id.clone(),
            self.stale_after,
        ));
        Ok(())
    }

    /// Stop at a step boundary if the heartbeat heard that the run must.
    fn check_signals(&self) -> Result<(), EngineError> {
        let Some(heartbeat) = &self.heartbeat else {
            return Ok(());
        };
        if heartbeat.lost() {
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
        if heartbeat.cancel_requested() {
            return Err(EngineError::Cancelled {
                workflow_id: self.workflow_id.clone(),
            });
        }
        Ok(())
    }

    /// The input the workflow was started with, as JSON.
    pub fn input(&self) -> &str {
        &self.input
    }

    /// The guest begins its next step, called `name`.
    pub fn begin_step(&mut self, name: &str) -> Result<StepStart, EngineError> {
        let mut starts = self.begin_steps(&[name])?;
        Ok(starts.pop().expect("one start per step"))
    }

    /// The guest begins the steps `names` to run at the same time. They take
    /// the next positions in order; every one is checked against the history
    /// before anything is written, and those to execute are marked running
    /// in a single commit.
    pub fn begin_steps(&mut self, names: &[&str]) -> Result<Vec<StepStart>, EngineError> {
        if let Some(executing) = self.executing.first() {
            let name = names.first().copied().unwrap_or_default();
            return Err(EngineError::StepOverlap {
                executing: executing.key.clone(),
                requested: StepKey::new(name, self.ordinals.get(name).copied().unwrap_or(0) + 1),
            });
        }
        self.check_signals()?;
        // A failure below ends the run, so advancing as we go is harmless.
        let mut planned = Vec::with_capacity(names.len());
        for &name in names {
            if name.is_empty() {
                return Err(EngineError::EmptyStepName);
            }
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
                Some(recorded) => match recorded.outcome() {
                    Some(outcome) => Err(outcome),
                    // Left running by a run that died: take it over.
                    None => Ok(recorded.attempts + 1),
                },
                None => Ok(1),
            };
            match self.ordinals.get_mut(name) {
                Some(count) => *count = ordinal,
                None => {
                    self.ordinals.insert(name.to_owned(), ordinal);
                }
            }
            self.position = sequence;
            planned.push((name, key, sequence, plan));
        }

        if planned.iter().any(|(.., plan)| plan.is_ok()) {
            self.claim()?;
            let started_at = now_millis();
            let begins: Vec<StepBegin<'_>> = planned
                .iter()
                .filter_map(|(name, key, sequence, plan)| {
                    Some(StepBegin {
                        key,
                        sequence: *sequence,
                        name,
                        attempt: *plan.as_ref().ok()?,
                        run_id: &self.run_id,
                        started_at,
                    })
                })
                .collect();
            self.store.begin_steps(&self.workflow_id, &begins)?;
        }

        let mut starts = Vec::with_capacity(planned.len());
        for (_, key, _, plan) in planned {
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
                Ok(attempt) => {
                    self.observer.step_started(&self.workflow_id, &key, attempt);
                    self.executing.push(Executing {
                        key: key.clone(),
                        attempt,
                        taken_over: attempt > 1,
                        started: Instant::now(),
                    });
                    starts.push(StepStart::Execute(StepRun {
                        idempotency_key: format!("{}/{}", self.workflow_id, key),
                        key,
                        attempt,
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
        let Some(index) = self.executing.iter().position(|e| e.key.as_str() == key) else {
            return Err(EngineError::NotExecuting {
                key: key.to_owned(),
            });
        };
        // On a rejected outcome the step stays executing: the trap that
        // follows fails it with the workflow.
        let size = outcome.as_ref().map_or_else(String::len, String::len);
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
        self.store
            .finish_step(&self.workflow_id, &self.run_id, &executing.key, &outcome)?;
        self.checkpoints += 1;
        self.emit(StepEvent {
            key: executing.key.clone(),
            kind: StepEventKind::Executed {
                attempt: executing.attempt,
                taken_over: executing.taken_over,
                duration: executing.started.elapsed(),
                error: outcome.err(),
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
        // mid-step has abandoned it, which fails the step with the workflow.
        let outcome = match self.executing.first() {
            Some(executing) => Err(format!(
                "the workflow returned while step `{}` was still executing",
                executing.key
            )),
            None => outcome,
        };
        self.end(outcome, false)
    }

    /// The guest trapped (a panic, a fault, a limit): fail the workflow and
    /// the step it was executing, with `reason`.
    pub fn abort(self, reason: String) -> Result<RunReport, EngineError> {
        self.end(Err(reason), false)
    }

    /// The run stopped at a step boundary because it was cancelled.
    pub fn cancel(self) -> Result<RunReport, EngineError> {
        self.end(Err(CANCELLED.to_owned()), true)
    }

    /// A step's attempt failed and will be retried: record it. The step
    /// stays running, and `attempt` is what the guest should use next.
    pub fn record_attempt(&mut self, key: &str, error: &str) -> Result<u32, EngineError> {
        self.check_signals()?;
        let Some(executing) = self.executing.iter_mut().find(|e| e.key.as_str() == key) else {
            return Err(EngineError::NotExecuting {
                key: key.to_owned(),
            });
        };
        self.store
            .record_attempt(&self.workflow_id, &self.run_id, &executing.key, error)?;
        executing.attempt += 1;
        Ok(executing.attempt)
    }

    fn end(mut self, outcome: Outcome, cancelled: bool) -> Result<RunReport, EngineError> {
        self.claim()?;
        let executing = std::mem::take(&mut self.executing);
        let failed_steps: Vec<StepKey> = executing.iter().map(|e| e.key.clone()).collect();
        self.store.finish_workflow(
            &self.workflow_id,
            &self.run_id,
            &WorkflowEnd {
                outcome: &outcome,
                failed_steps: &failed_steps,
                cancelled,
            },
        )?;
        if let Err(reason) = &outcome {
            for executing in executing {
                self.emit(StepEvent {
                    key: executing.key,
                    kind: StepEventKind::Interrupted {
                        attempt: executing.attempt,
                        duration: executing.started.elapsed(),
                        reason: reason.clone(),
                    },
                });
            }
        }
        self.observer.run_ended(&self.workflow_id);
        Ok(RunReport {
            workflow_id: self.workflow_id,
            run_id: self.run_id,
            resumed: self.previous_run.is_some(),
            status: match (&outcome, cancelled) {
                (Ok(_), _) => WorkflowStatus::Completed,
                (Err(_), true) => WorkflowStatus::Cancelled,
                (Err(_), false) => WorkflowStatus::Failed,
            },
            outcome,
            events: self.events,
        })
    }

    fn emit(&mut self, event: StepEvent) {
        self.observer.step_event(&self.workflow_id, &event);
        self.events.push(event);
    }
}

/// The largest result (value or error) a step may record. Checkpoints are
/// rows read back on every resume: they are for results, not for bulk data.
pub const MAX_STEP_OUTPUT: usize = 16 << 20;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqliteStore;

    struct Silent;
    impl RunObserver for Silent {
        fn step_event(&mut self, _: &str, _: &StepEvent) {}
    }

    fn open(db: &std::path::Path, run_id: &str) -> Opened {
        let store = Box::new(SqliteStore::open(db).unwrap());
        let request = RunRequest {
            workflow_id: "wf",
            component_sha256: "abc",
            input: None,
            run_id,
            stale_after: Duration::from_secs(30),
            allow_component_change: false,
        };
        WorkflowRun::open(store, &request, CrashPlan::none(), Box::new(Silent)).unwrap()
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
            StepStart::Replayed(_) => panic!("{name} replayed, expected execution"),
        }
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
        let before = SqliteStore::open(&db).unwrap().steps("wf").unwrap();

        let mut second = ready(open(&db, "r2"));
        let err = second.begin_step("b").unwrap_err();
        assert!(err.is_non_determinism(), "{err}");
        assert!(err.to_string().contains("`a#000001`") && err.to_string().contains("`b#000001`"));
        assert_eq!(SqliteStore::open(&db).unwrap().steps("wf").unwrap(), before);
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
