//! The imports of earlier contract releases, each answered by the current
//! one (`host`), so that a component built against 0.1.0 or 0.2.0 keeps
//! running unchanged: one implementation of the protocol, and here only the
//! translation of each release's types.
//!
//! 0.2.0 is 0.3.0 without signals and published events. 0.1.0 knew no
//! cancellation (a cancelled 0.1.0 workflow is stopped at its next step,
//! as it was then), error codes, host-side backoff or input fingerprints.

use super::host::HostState;
use crate::bindings::{v0_1, v0_2, v0_3};
use crate::engine::{EngineError, StepRun};
use v0_3::durable_step as current;

/// Converts between records of the same shape in two releases.
macro_rules! same_record {
    ($from:ty => $to:ty { $($field:ident),* }) => {
        impl From<$from> for $to {
            fn from(value: $from) -> Self {
                Self { $($field: value.$field.into()),* }
            }
        }
    };
}

same_record!(v0_2::durable_step::StepError => current::StepError { message, code });
same_record!(current::StepError => v0_2::durable_step::StepError { message, code });
same_record!(current::StepRun => v0_2::durable_step::StepRun { key, attempt, failures, idempotency_key });
same_record!(v0_2::durable_step::RetryPolicy => current::RetryPolicy {
    max_attempts, initial_backoff_ms, max_backoff_ms, multiplier
});

impl From<v0_2::durable_step::Branch> for current::Branch {
    fn from(branch: v0_2::durable_step::Branch) -> Self {
        Self {
            name: branch.name,
            entry: branch.entry,
            input: branch.input,
            retry: branch.retry.map(Into::into),
        }
    }
}

impl From<current::StepStart> for v0_2::durable_step::StepStart {
    fn from(start: current::StepStart) -> Self {
        match start {
            current::StepStart::Replayed(outcome) => Self::Replayed(outcome.map_err(Into::into)),
            current::StepStart::Execute(step) => Self::Execute(step.into()),
            current::StepStart::Cancelled(reason) => Self::Cancelled(reason),
        }
    }
}

impl From<&StepRun> for v0_1::durable_step::StepRun {
    fn from(step: &StepRun) -> Self {
        Self {
            key: step.key.to_string(),
            attempt: step.attempt,
            idempotency_key: step.idempotency_key.clone(),
        }
    }
}

type Result<T> = wasmtime::Result<T>;
type Outcome0_2 = std::result::Result<String, v0_2::durable_step::StepError>;

impl v0_2::durable_step::Host for HostState {
    fn begin_step(&mut self, name: String) -> Result<v0_2::durable_step::StepStart> {
        current::Host::begin_step(self, name).map(Into::into)
    }

    fn begin_step_with_input(
        &mut self,
        name: String,
        input_fingerprint: String,
    ) -> Result<v0_2::durable_step::StepStart> {
        current::Host::begin_step_with_input(self, name, input_fingerprint).map(Into::into)
    }

    fn run_parallel(
        &mut self,
        branches: Vec<v0_2::durable_step::Branch>,
    ) -> Result<std::result::Result<Vec<Outcome0_2>, String>> {
        let branches = branches.into_iter().map(Into::into).collect();
        Ok(
            current::Host::run_parallel(self, branches)?.map(|outcomes| {
                outcomes
                    .into_iter()
                    .map(|outcome| outcome.map_err(Into::into))
                    .collect()
            }),
        )
    }

    fn record_attempt(
        &mut self,
        key: String,
        error: v0_2::durable_step::StepError,
        backoff_ms: u64,
    ) -> Result<v0_2::durable_step::StepRun> {
        current::Host::record_attempt(self, key, error.into(), backoff_ms).map(Into::into)
    }

    fn finish_step(&mut self, key: String, outcome: Outcome0_2) -> Result<()> {
        current::Host::finish_step(self, key, outcome.map_err(Into::into))
    }

    fn sleep(&mut self, duration_ms: u64) -> Result<std::result::Result<(), String>> {
        current::Host::sleep(self, duration_ms)
    }

    fn workflow_id(&mut self) -> Result<String> {
        current::Host::workflow_id(self)
    }

    fn log(&mut self, message: String) -> Result<()> {
        current::Host::log(self, message)
    }

    fn reject_input(&mut self, reason: String) -> Result<()> {
        current::Host::reject_input(self, reason)
    }

    fn value_mismatch(
        &mut self,
        step_name: String,
        expected_type: String,
        reason: String,
    ) -> Result<()> {
        current::Host::value_mismatch(self, step_name, expected_type, reason)
    }
}

/// A 0.1.0 guest cannot be told of a cancellation: its run stops here and
/// the workflow ends cancelled, as it did under the 0.1.0 hosts.
fn stop_cancelled(state: &mut HostState) -> wasmtime::Error {
    match current::Host::workflow_id(state) {
        Ok(workflow_id) => EngineError::Cancelled { workflow_id }.into(),
        Err(error) => error,
    }
}

fn plain(error: current::StepError) -> String {
    error.message
}

fn step_error(message: String) -> current::StepError {
    current::StepError {
        message,
        code: None,
    }
}

impl v0_1::durable_step::Host for HostState {
    fn begin_step(&mut self, name: String) -> Result<v0_1::durable_step::StepStart> {
        Ok(match current::Host::begin_step(self, name)? {
            current::StepStart::Replayed(outcome) => {
                v0_1::durable_step::StepStart::Replayed(outcome.map_err(plain))
            }
            current::StepStart::Execute(step) => {
                v0_1::durable_step::StepStart::Execute(v0_1::durable_step::StepRun {
                    key: step.key,
                    attempt: step.attempt,
                    idempotency_key: step.idempotency_key,
                })
            }
            current::StepStart::Cancelled(_) => return Err(stop_cancelled(self)),
        })
    }

    fn run_parallel(
        &mut self,
        branches: Vec<v0_1::durable_step::Branch>,
    ) -> Result<Vec<std::result::Result<String, String>>> {
        let branches = branches
            .into_iter()
            .map(|branch| current::Branch {
                name: branch.name,
                entry: branch.entry,
                input: branch.input,
                retry: None,
            })
            .collect();
        match current::Host::run_parallel(self, branches)? {
            Ok(outcomes) => Ok(outcomes
                .into_iter()
                .map(|outcome| outcome.map_err(plain))
                .collect()),
            Err(_) => Err(stop_cancelled(self)),
        }
    }

    /// 0.1.0 guests waited out their own backoff before calling this; the
    /// host records the failure and begins the next attempt at once.
    fn record_attempt(&mut self, key: String, error: String) -> Result<u32> {
        let next = current::Host::record_attempt(self, key, step_error(error), 0)?;
        Ok(next.attempt)
    }

    fn finish_step(
        &mut self,
        key: String,
        outcome: std::result::Result<String, String>,
    ) -> Result<()> {
        current::Host::finish_step(self, key, outcome.map_err(step_error))
    }
}
