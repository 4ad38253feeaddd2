//! What one guest instance holds, and the `durable-step` imports it calls:
//! each is handed to the run's [`WorkflowRun`], on the workflow's thread.

use std::time::{Duration, Instant};

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtxView, WasiHttpView};

use super::branches::{BranchJob, BranchRunner};
use super::guest_output::GuestOutput;
use super::http::{Caller, GatedHttpView, OutboundHttp};
use super::limits::{Deadline, InstanceLimiter};
use crate::bindings::v0_3::durable_step;
use crate::engine::{
    CANCELLED_CODE, ChildRequest, ChildStarted, ChildWait, EngineError, SignalWait, StepRequest,
    StepRun, StepStart, TimerStart, WAIT_STEP, WorkflowRun,
};
use crate::store::{Failure, Millis, Outcome, WaitingFor, now_millis};

/// Everything one guest instance can reach.
pub struct HostState {
    pub(super) wasi: WasiCtx,
    pub(super) http: OutboundHttp,
    pub(super) table: ResourceTable,
    pub(super) limiter: InstanceLimiter,
    /// The run's time limit, which host calls that block must honour too.
    pub(super) deadline: Option<Deadline>,
    /// What the guest prints, for the workflow's log.
    pub(super) output: GuestOutput,
    pub(super) role: Role,
}

/// What an instance is for.
pub(super) enum Role {
    /// Runs the workflow's `run`, and owns the run's history.
    Workflow {
        run: Box<WorkflowRun>,
        branches: Box<BranchRunner>,
    },
    /// Runs one parallel branch; it cannot begin steps of its own.
    Branch,
}

impl HostState {
    /// The run, once it has what the guest printed since its last host
    /// call: the run knows whether that code was replaying and which step
    /// was executing.
    fn run(&mut self) -> wasmtime::Result<(&mut WorkflowRun, &BranchRunner)> {
        match &mut self.role {
            Role::Workflow { run, branches } => {
                run.capture_output(self.output.take_lines(false));
                Ok((run, branches))
            }
            Role::Branch => Err(wasmtime::Error::msg(
                "steps cannot be begun inside a parallel branch; return a value and begin them in the workflow",
            )),
        }
    }

    /// Wait until `until` without counting it against the run's deadline,
    /// stopping early when the run must stop (taken over, out of grace) or,
    /// when `cancellable`, when a cancellation is waiting to be handed over
    /// (`Ok(false)`).
    fn durable_wait(&mut self, until: Instant, cancellable: bool) -> wasmtime::Result<bool> {
        let started = Instant::now();
        let result = loop {
            let run = self.run()?.0;
            if let Err(stop) = run.check_signals() {
                break Err(stop.into());
            }
            if cancellable && run.cancel_pending() {
                break Ok(false);
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break Ok(true);
            }
            // Signals reach the run through its heartbeat, every few
            // hundred milliseconds at most: no need to look more often.
            std::thread::sleep(left.min(Duration::from_millis(100)));
        };
        if let Some(deadline) = &self.deadline {
            deadline.extend(started.elapsed());
        }
        result
    }

    /// The end of a wait of `timeout_ms`, recorded as a timer (none without
    /// a timeout), or the cancellation handed over instead.
    fn wait_deadline(
        &mut self,
        timeout_ms: Option<u64>,
    ) -> wasmtime::Result<Result<Option<Millis>, String>> {
        let Some(timeout_ms) = timeout_ms else {
            return Ok(Ok(None));
        };
        Ok(match self.run()?.0.timer(WAIT_STEP, timeout_ms)? {
            TimerStart::Until(deadline) => Ok(Some(deadline)),
            TimerStart::Cancelled(reason) => Err(reason),
        })
    }

    /// Wait until `settle` has an answer: unloaded, when the run allows it
    /// and the rest of the wait is long (as a long sleep: resumed by replay
    /// when `waiting_for` comes or `deadline` is due); else in the process,
    /// asking again every few milliseconds.
    fn wait_durably<T>(
        &mut self,
        waiting_for: WaitingFor,
        deadline: Option<Millis>,
        mut settle: impl FnMut(&mut WorkflowRun) -> Result<Option<T>, EngineError>,
    ) -> wasmtime::Result<T> {
        loop {
            let run = self.run()?.0;
            if let Some(answer) = settle(run)? {
                return Ok(answer);
            }
            let left = deadline.map(|deadline| {
                Duration::from_millis(deadline.saturating_sub(now_millis()).max(0) as u64)
            });
            if run.unloads_sleeps() && left.is_none_or(|left| left > UNLOAD_SLEEPS_OVER) {
                return Err(EngineError::UnloadingToWait {
                    waiting_for,
                    deadline,
                }
                .into());
            }
            let look_again = WAIT_POLL.min(left.unwrap_or(WAIT_POLL));
            self.durable_wait(Instant::now() + look_again, true)?;
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        self.http.view(&mut self.table)
    }
}

impl HostState {
    /// `wasi:http/outgoing-handler`, which lets requests out only while a
    /// step executes.
    pub(super) fn gated_http(&mut self) -> GatedHttpView<'_> {
        let caller = match &self.role {
            Role::Workflow { run, .. } if run.is_executing_a_step() => {
                Caller::Step(run.current_step())
            }
            Role::Workflow { .. } => Caller::BetweenSteps,
            // A branch instance exists only to execute its step.
            Role::Branch => Caller::Step(None),
        };
        self.http.gated(&mut self.table, caller)
    }
}

impl From<&StepRun> for durable_step::StepRun {
    fn from(step: &StepRun) -> Self {
        Self {
            key: step.key.to_string(),
            attempt: step.attempt,
            failures: step.failures,
            idempotency_key: step.idempotency_key.clone(),
        }
    }
}

impl From<durable_step::StepError> for Failure {
    fn from(error: durable_step::StepError) -> Self {
        Self {
            message: error.message,
            code: error.code,
        }
    }
}

impl From<Failure> for durable_step::StepError {
    fn from(failure: Failure) -> Self {
        Self {
            message: failure.message,
            code: failure.code,
        }
    }
}

/// An outcome as the guest hands it over.
type GuestOutcome = Result<String, durable_step::StepError>;

/// Durable sleeps longer than this unload the workflow (where the run
/// allows it); shorter ones wait in the process.
pub const UNLOAD_SLEEPS_OVER: Duration = Duration::from_secs(5);

/// The name under which durable sleeps are recorded.
pub const SLEEP_STEP: &str = "durable.sleep";

/// How often a wait in the process looks for its signal or child.
const WAIT_POLL: Duration = Duration::from_millis(25);

impl From<StepStart> for durable_step::StepStart {
    fn from(start: StepStart) -> Self {
        match start {
            StepStart::Replayed(outcome) => Self::Replayed(outcome.map_err(Into::into)),
            StepStart::Execute(step) => Self::Execute((&step).into()),
            StepStart::Cancelled(reason) => Self::Cancelled(reason),
        }
    }
}

/// The fingerprint the host records for a parallel branch's input (the
/// guest gives none: the host sees the input itself).
fn branch_fingerprint(input: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(input.as_bytes());
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

impl durable_step::Host for HostState {
    fn begin_step(&mut self, name: String) -> wasmtime::Result<durable_step::StepStart> {
        let (run, _) = self.run()?;
        Ok(run.begin_step(&name)?.into())
    }

    fn begin_step_with_input(
        &mut self,
        name: String,
        input_fingerprint: String,
    ) -> wasmtime::Result<durable_step::StepStart> {
        let (run, _) = self.run()?;
        let request = StepRequest {
            name: &name,
            input_fingerprint: Some(&input_fingerprint),
        };
        Ok(run.begin_step_with(request)?.into())
    }

    fn run_parallel(
        &mut self,
        branches: Vec<durable_step::Branch>,
    ) -> wasmtime::Result<Result<Vec<GuestOutcome>, String>> {
        let (run, runner) = self.run()?;
        let fingerprints: Vec<String> = branches
            .iter()
            .map(|b| branch_fingerprint(&b.input))
            .collect();
        let requests: Vec<StepRequest<'_>> = branches
            .iter()
            .zip(&fingerprints)
            .map(|(branch, fingerprint)| StepRequest {
                name: &branch.name,
                input_fingerprint: Some(fingerprint),
            })
            .collect();
        let starts = run.begin_steps(&requests)?;
        if let Some(StepStart::Cancelled(reason)) = starts.first() {
            return Ok(Err(reason.clone()));
        }
        let mut results: Vec<Option<Outcome>> = vec![None; branches.len()];
        let mut jobs = Vec::new();
        for (index, (start, branch)) in starts.into_iter().zip(branches).enumerate() {
            match start {
                StepStart::Replayed(outcome) => results[index] = Some(outcome),
                StepStart::Cancelled(_) => unreachable!("a cancellation applies to every branch"),
                StepStart::Execute(step) => jobs.push(BranchJob {
                    index,
                    step,
                    entry: branch.entry,
                    input: branch.input,
                    retry: branch.retry,
                }),
            }
        }
        runner.run_all(jobs, run, |index, outcome| results[index] = Some(outcome))?;
        Ok(Ok(results
            .into_iter()
            .map(|result| {
                result
                    .expect("every branch was replayed or executed")
                    .map_err(Into::into)
            })
            .collect()))
    }

    fn record_attempt(
        &mut self,
        key: String,
        error: durable_step::StepError,
        backoff_ms: u64,
    ) -> wasmtime::Result<durable_step::StepRun> {
        let backoff = Duration::from_millis(backoff_ms);
        let error = Failure::from(error).to_string();
        self.run()?.0.record_attempt(&key, &error, backoff)?;
        // A step is executing: a cancellation waits for its end.
        self.durable_wait(Instant::now() + backoff, false)?;
        let next = self.run()?.0.begin_retry(&key)?;
        Ok((&next).into())
    }

    fn finish_step(&mut self, key: String, outcome: GuestOutcome) -> wasmtime::Result<()> {
        let (run, _) = self.run()?;
        Ok(run.finish_step(&key, outcome.map_err(Failure::from))?)
    }

    fn sleep(&mut self, duration_ms: u64) -> wasmtime::Result<Result<(), String>> {
        let (run, _) = self.run()?;
        let wake_at_ms = match run.timer(SLEEP_STEP, duration_ms)? {
            TimerStart::Until(wake_at) => wake_at,
            TimerStart::Cancelled(reason) => return Ok(Err(reason)),
        };
        // A cancellation recorded right after this sleep (replaying), or
        // already asked for, ends it at once.
        run.read_cancellation()?;
        if let Some(reason) = run.deliver_cancellation()? {
            return Ok(Err(reason));
        }
        let left = wake_at_ms.saturating_sub(crate::store::now_millis()).max(0) as u64;
        if run.unloads_sleeps() && Duration::from_millis(left) > UNLOAD_SLEEPS_OVER {
            // No instance, no thread, no stack while it sleeps: the run ends
            // here and the workflow is resumed by replay when it is due.
            return Err(EngineError::Unloading {
                wake_at: wake_at_ms,
            }
            .into());
        }
        if self.durable_wait(Instant::now() + Duration::from_millis(left), true)? {
            return Ok(Ok(()));
        }
        match self.run()?.0.deliver_cancellation()? {
            Some(reason) => Ok(Err(reason)),
            None => Ok(Ok(())),
        }
    }

    fn wait_signal(
        &mut self,
        name: String,
        timeout_ms: Option<u64>,
    ) -> wasmtime::Result<Result<Option<String>, String>> {
        let deadline = match self.wait_deadline(timeout_ms)? {
            Ok(deadline) => deadline,
            Err(reason) => return Ok(Err(reason)),
        };
        self.wait_durably(WaitingFor::Signal(name.clone()), deadline, |run| {
            Ok(match run.receive_signal(&name, deadline)? {
                SignalWait::Received(value) => Some(Ok(Some(value))),
                SignalWait::TimedOut => Some(Ok(None)),
                SignalWait::Cancelled(reason) => Some(Err(reason)),
                SignalWait::Nothing => None,
            })
        })
    }

    fn start_child(
        &mut self,
        child: durable_step::ChildWorkflow,
    ) -> wasmtime::Result<Result<(), durable_step::StepError>> {
        let request = ChildRequest {
            workflow_id: &child.workflow_id,
            deployment: child.deployment.as_deref(),
            input: &child.input,
        };
        Ok(match self.run()?.0.start_child(&request)? {
            ChildStarted::Started => Ok(()),
            ChildStarted::Refused(refused) => Err(refused.into()),
            ChildStarted::Cancelled(reason) => Err(durable_step::StepError {
                message: reason,
                code: Some(CANCELLED_CODE.to_owned()),
            }),
        })
    }

    fn await_child(
        &mut self,
        workflow_id: String,
        timeout_ms: Option<u64>,
    ) -> wasmtime::Result<Result<Option<GuestOutcome>, String>> {
        let deadline = match self.wait_deadline(timeout_ms)? {
            Ok(deadline) => deadline,
            Err(reason) => return Ok(Err(reason)),
        };
        self.wait_durably(WaitingFor::Child(workflow_id.clone()), deadline, |run| {
            Ok(match run.await_child(&workflow_id, deadline)? {
                ChildWait::Ended(outcome) => Some(Ok(Some(outcome.map_err(Into::into)))),
                ChildWait::TimedOut => Some(Ok(None)),
                ChildWait::Cancelled(reason) => Some(Err(reason)),
                ChildWait::Nothing => None,
            })
        })
    }

    fn set_event(&mut self, key: String, value: String) -> wasmtime::Result<()> {
        Ok(self.run()?.0.publish_event(&key, &value)?)
    }

    fn workflow_id(&mut self) -> wasmtime::Result<String> {
        Ok(self.run()?.0.workflow_id().to_owned())
    }

    fn log(&mut self, message: String) -> wasmtime::Result<()> {
        self.run()?.0.log(&message);
        Ok(())
    }

    fn reject_input(&mut self, reason: String) -> wasmtime::Result<()> {
        Err(self.run()?.0.input_rejected(reason).into())
    }

    fn value_mismatch(
        &mut self,
        step_name: String,
        expected_type: String,
        reason: String,
    ) -> wasmtime::Result<()> {
        let (run, _) = self.run()?;
        Err(run.undecodable(&step_name, &expected_type, &reason).into())
    }
}
