//! Parallel branches: each runs in a fresh instance of the workflow's
//! component on a thread of its own, while the workflow's thread, the only
//! one that writes, records what they report: each branch's result as soon
//! as it is known, and each failed attempt of a branch that retries.

use std::sync::Mutex;
use std::sync::mpsc::{self, Sender};
use std::thread;
use std::time::{Duration, Instant};

use super::guest_output::GuestOutput;
use super::host::Role;
use super::limits::LimitExceeded;
use super::{HostMemory, RunLimits, Sandbox, WorkflowComponent, limit_exceeded, trap_reason};
use crate::bindings::v0_3::durable_step::RetryPolicy;
use crate::engine::{StepRun, WorkflowRun};
use crate::store::{Failure, LogLine, Outcome};

/// At most this many branch instances run at once; more branches wait for a
/// free thread. Memory is bounded by the run's budget, threads by this.
const MAX_BRANCH_THREADS: usize = 16;

/// Runs the branches of a parallel call.
pub struct BranchRunner {
    component: WorkflowComponent,
    sandbox: Sandbox,
    limits: RunLimits,
    echo_output: bool,
}

/// One branch to execute.
pub struct BranchJob {
    pub index: usize,
    pub step: StepRun,
    pub entry: String,
    pub input: String,
    pub retry: Option<RetryPolicy>,
}

/// Why a branch stopped with no outcome to record: the run ends, and a
/// later run executes the branch again.
#[derive(Debug, thiserror::Error)]
enum Interrupted {
    /// A limit of the run (time, memory).
    #[error(transparent)]
    Limit(#[from] LimitExceeded),
    /// The host had no memory for the branch's instance.
    #[error(transparent)]
    HostMemory(#[from] HostMemory),
}

/// What a branch thread asks of the workflow's thread.
enum Report {
    /// The branch ended with this outcome, or was interrupted (which is not
    /// the branch's answer: it is not recorded).
    Finished {
        index: usize,
        step: StepRun,
        outcome: Result<Outcome, Interrupted>,
        /// What the branch printed, for the workflow's log.
        log: Vec<LogLine>,
    },
    /// An attempt failed: record it; the answer says whether to go on.
    Failed {
        step: StepRun,
        error: String,
        log: Vec<LogLine>,
        backoff: Duration,
        reply: Sender<Result<(), String>>,
    },
    /// The backoff is over: begin the next attempt.
    Retrying {
        step: StepRun,
        reply: Sender<Result<StepRun, String>>,
    },
}

impl BranchRunner {
    pub(super) fn new(
        component: WorkflowComponent,
        sandbox: Sandbox,
        limits: RunLimits,
        echo_output: bool,
    ) -> Self {
        Self {
            component,
            sandbox,
            limits,
            echo_output,
        }
    }

    /// Execute `jobs` concurrently. Every write goes through `run` on this
    /// thread; `done` hears each branch's outcome once it is recorded. A
    /// branch stopped by a limit (time, memory), or for which the host had
    /// no memory, is left unfinished, and the run ends with that once the
    /// other branches are recorded, so that a resume (with other limits, or
    /// on a host with memory) executes it again.
    pub fn run_all(
        &self,
        jobs: Vec<BranchJob>,
        run: &mut WorkflowRun,
        mut done: impl FnMut(usize, Outcome),
    ) -> wasmtime::Result<()> {
        let workers = jobs.len().min(MAX_BRANCH_THREADS);
        let queue = Mutex::new(jobs.into_iter());
        let (reports, received) = mpsc::channel();
        thread::scope(|scope| {
            let mut started = 0;
            for _ in 0..workers {
                let reports = reports.clone();
                let queue = &queue;
                let spawned = thread::Builder::new().spawn_scoped(scope, move || {
                    loop {
                        let next = queue.lock().unwrap_or_else(|e| e.into_inner()).next();
                        let Some(job) = next else { break };
                        let Some((step, outcome, log)) =
                            self.run_with_retries(job.step.clone(), &job, &reports)
                        else {
                            break;
                        };
                        // A closed channel means the run is failing: stop.
                        let finished = Report::Finished {
                            index: job.index,
                            step,
                            outcome,
                            log,
                        };
                        if reports.send(finished).is_err() {
                            break;
                        }
                    }
                });
                // Fewer threads share the queue; none at all stops the run
                // as for an instance the host has no memory for.
                match spawned {
                    Ok(_) => started += 1,
                    Err(error) if started == 0 => {
                        return Err(HostMemory(format!(
                            "cannot start a thread for the parallel steps: {error}"
                        ))
                        .into());
                    }
                    Err(_) => break,
                }
            }
            drop(reports);
            let mut interrupted = None;
            for report in received {
                match report {
                    Report::Finished {
                        index,
                        step,
                        outcome: Ok(outcome),
                        log,
                    } => {
                        run.capture_output(log);
                        run.finish_step(step.key.as_str(), outcome.clone())?;
                        done(index, outcome);
                    }
                    Report::Finished {
                        outcome: Err(why),
                        log,
                        ..
                    } => {
                        run.capture_output(log);
                        interrupted.get_or_insert(why);
                    }
                    Report::Failed {
                        step,
                        error,
                        log,
                        backoff,
                        reply,
                    } => {
                        run.capture_output(log);
                        let recorded = run.record_attempt(step.key.as_str(), &error, backoff);
                        let _ =
                            reply.send(recorded.as_ref().map(|_| ()).map_err(|e| e.to_string()));
                        recorded?;
                    }
                    Report::Retrying { step, reply } => {
                        let next = run.begin_retry(step.key.as_str());
                        let _ =
                            reply.send(next.as_ref().map(Clone::clone).map_err(|e| e.to_string()));
                        next?;
                    }
                }
            }
            match interrupted {
                Some(Interrupted::Limit(exceeded)) => Err(exceeded.into()),
                Some(Interrupted::HostMemory(starved)) => Err(starved.into()),
                None => Ok(()),
            }
        })
    }

    /// Run one branch, retrying a returned error as its policy says.
    /// `None` when the workflow's thread stopped listening (the run is
    /// ending).
    fn run_with_retries(
        &self,
        mut step: StepRun,
        job: &BranchJob,
        reports: &Sender<Report>,
    ) -> Option<(StepRun, Result<Outcome, Interrupted>, Vec<LogLine>)> {
        loop {
            let (outcome, log) = self.run_one(&step, job);
            let outcome = match outcome {
                Ok(outcome) => outcome,
                Err(why) => return Some((step, Err(why), log)),
            };
            let retry = match (&outcome, &job.retry) {
                (Err(_), Some(policy)) if step.failures + 1 < policy.max_attempts => policy,
                _ => return Some((step, Ok(outcome), log)),
            };
            let error = outcome.err().map(|f| f.to_string()).unwrap_or_default();
            let backoff = backoff_before(retry, step.failures + 2);
            let (reply, answer) = mpsc::channel();
            let failed = Report::Failed {
                step: step.clone(),
                error: error.clone(),
                log,
                backoff,
                reply,
            };
            reports.send(failed).ok()?;
            answer.recv().ok()?.ok()?;
            let waited = Instant::now();
            thread::sleep(backoff);
            if let Some(deadline) = &self.limits.deadline {
                deadline.extend(waited.elapsed());
            }
            let (reply, answer) = mpsc::channel();
            reports
                .send(Report::Retrying {
                    step: step.clone(),
                    reply,
                })
                .ok()?;
            step = answer.recv().ok()?.ok()?;
        }
    }

    /// Run one attempt of a branch to its outcome (a trap fails this
    /// branch only), or to what interrupted it; with the lines it printed.
    fn run_one(
        &self,
        step: &StepRun,
        job: &BranchJob,
    ) -> (Result<Outcome, Interrupted>, Vec<LogLine>) {
        let output = GuestOutput::new(self.echo_output);
        let outcome = self.attempt(step, job, &output);
        let mut log = output.take_lines(true);
        for line in &mut log {
            line.step = Some(step.key.clone());
        }
        (outcome, log)
    }

    fn attempt(
        &self,
        step: &StepRun,
        job: &BranchJob,
        output: &GuestOutput,
    ) -> Result<Outcome, Interrupted> {
        let pre = match self.component.branch_pre() {
            Ok(pre) => pre,
            Err(e) => {
                if let Some(starved) = HostMemory::of(&e) {
                    return Err(starved.into());
                }
                let reason = format!("cannot load the component for the branch: {e}");
                return Ok(Err(Failure::new(reason)));
            }
        };
        let mut store = match self
            .limits
            .store(pre.engine(), &self.sandbox, output, Role::Branch)
        {
            Ok(store) => store,
            Err(e) => return Ok(Err(Failure::new(e.to_string()))),
        };
        let workflow = match pre.instantiate(&mut store) {
            Ok(workflow) => workflow,
            Err(e) => {
                if let Some(limit) = limit_exceeded(&e) {
                    return Err(limit.at_start().into());
                }
                if let Some(starved) = HostMemory::of(&e) {
                    return Err(starved.into());
                }
                let reason = format!("cannot start an instance for the branch: {e}");
                return Ok(Err(Failure::new(reason)));
            }
        };
        match workflow.call_run_branch(&mut store, &job.entry, step, &job.input) {
            Ok(outcome) => Ok(outcome),
            Err(trap) => match limit_exceeded(&trap) {
                Some(limit) => Err(limit.into()),
                None => Ok(Err(Failure::new(trap_reason(&trap, output)))),
            },
        }
    }
}

/// The wait before attempt `attempt` (2 is the first retry) under `policy`.
fn backoff_before(policy: &RetryPolicy, attempt: u32) -> Duration {
    let retries = attempt.saturating_sub(2).min(64) as i32;
    let initial = Duration::from_millis(policy.initial_backoff_ms);
    initial
        .mul_f64(policy.multiplier.max(1.0).powi(retries))
        .min(Duration::from_millis(policy.max_backoff_ms))
}
