//! What one guest instance holds, and the `durable-step` imports it calls:
//! each is handed to the run's [`WorkflowRun`], on the workflow's thread.

use std::time::{Duration, Instant};

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::branches::{BranchJob, BranchRunner};
use super::limits::{Deadline, InstanceLimiter};
use crate::bindings::durable_step;
use crate::engine::{EngineError, StepRun, StepStart, WorkflowRun};
use crate::store::Outcome;

/// Everything one guest instance can reach.
pub struct HostState {
    pub(super) wasi: WasiCtx,
    pub(super) table: ResourceTable,
    pub(super) limiter: InstanceLimiter,
    /// The run's time limit, which host calls that block must honour too.
    pub(super) deadline: Option<Deadline>,
    pub(super) role: Role,
}

/// What an instance is for.
pub(super) enum Role {
    /// Runs the workflow's `run`, and owns the run's history.
    Workflow {
        run: Box<WorkflowRun>,
        branches: BranchRunner,
    },
    /// Runs one parallel branch; it cannot begin steps of its own.
    Branch,
}

impl HostState {
    fn run(&mut self) -> wasmtime::Result<(&mut WorkflowRun, &BranchRunner)> {
        match &mut self.role {
            Role::Workflow { run, branches } => Ok((run, branches)),
            Role::Branch => Err(wasmtime::Error::msg(
                "steps cannot be begun inside a parallel branch; return a value and begin them in the workflow",
            )),
        }
    }

    /// Wait until `until` without counting it against the run's deadline,
    /// stopping early when the run must stop (cancelled, taken over).
    fn durable_wait(&mut self, until: Instant) -> wasmtime::Result<()> {
        let started = Instant::now();
        let result = loop {
            if let Err(stop) = self.run()?.0.check_signals() {
                break Err(stop.into());
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break Ok(());
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
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
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

/// The name under which durable sleeps are recorded.
pub const SLEEP_STEP: &str = "durable.sleep";

impl durable_step::Host for HostState {
    fn begin_step(&mut self, name: String) -> wasmtime::Result<durable_step::StepStart> {
        let (run, _) = self.run()?;
        Ok(match run.begin_step(&name)? {
            StepStart::Replayed(outcome) => durable_step::StepStart::Replayed(outcome),
            StepStart::Execute(step) => durable_step::StepStart::Execute((&step).into()),
        })
    }

    fn run_parallel(
        &mut self,
        branches: Vec<durable_step::Branch>,
    ) -> wasmtime::Result<Vec<Outcome>> {
        let (run, runner) = self.run()?;
        let names: Vec<&str> = branches.iter().map(|b| b.name.as_str()).collect();
        let starts = run.begin_steps(&names)?;
        let mut results: Vec<Option<Outcome>> = vec![None; branches.len()];
        let mut jobs = Vec::new();
        for (index, (start, branch)) in starts.into_iter().zip(branches).enumerate() {
            match start {
                StepStart::Replayed(outcome) => results[index] = Some(outcome),
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
        Ok(results
            .into_iter()
            .map(|result| result.expect("every branch was replayed or executed"))
            .collect())
    }

    fn record_attempt(
        &mut self,
        key: String,
        error: String,
        backoff_ms: u64,
    ) -> wasmtime::Result<durable_step::StepRun> {
        let backoff = Duration::from_millis(backoff_ms);
        self.run()?.0.record_attempt(&key, &error, backoff)?;
        self.durable_wait(Instant::now() + backoff)?;
        let next = self.run()?.0.begin_retry(&key)?;
        Ok((&next).into())
    }

    fn finish_step(&mut self, key: String, outcome: Outcome) -> wasmtime::Result<()> {
        let (run, _) = self.run()?;
        Ok(run.finish_step(&key, outcome)?)
    }

    fn sleep(&mut self, duration_ms: u64) -> wasmtime::Result<()> {
        let (run, _) = self.run()?;
        let wake_at_ms = match run.begin_step(SLEEP_STEP)? {
            StepStart::Replayed(Ok(json)) => {
                serde_json::from_str::<i64>(&json).map_err(|e| EngineError::InvalidStepJson {
                    key: crate::store::StepKey::from_stored(SLEEP_STEP.to_owned()),
                    reason: format!("a recorded wake-up time must be a number: {e}"),
                })?
            }
            StepStart::Replayed(Err(error)) => return Err(wasmtime::Error::msg(error)),
            StepStart::Execute(step) => {
                let wake_at = crate::store::now_millis() + duration_ms as i64;
                run.finish_step(step.key.as_str(), Ok(wake_at.to_string()))?;
                wake_at
            }
        };
        let left = wake_at_ms.saturating_sub(crate::store::now_millis()).max(0) as u64;
        self.durable_wait(Instant::now() + Duration::from_millis(left))
    }

    fn workflow_id(&mut self) -> wasmtime::Result<String> {
        Ok(self.run()?.0.workflow_id().to_owned())
    }

    fn log(&mut self, message: String) -> wasmtime::Result<()> {
        self.run()?.0.log(&message);
        Ok(())
    }

    fn reject_input(&mut self, reason: String) -> wasmtime::Result<()> {
        Err(EngineError::InputRejected { reason }.into())
    }
}
