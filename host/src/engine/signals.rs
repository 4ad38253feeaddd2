//! Signals, timers and published events, as steps of the history.
//!
//! A wait for a signal takes the oldest signal sent for its name in the same
//! commit that records its step (`durable.signal:<name>`), so a signal is
//! delivered exactly once and a replay hands back the recorded value without
//! taking another. While nothing has come, nothing is written: the caller
//! waits (or unloads the workflow) and asks again. A timeout's end and a
//! sleep's are timers: steps whose recorded value is the wake-up time, so a
//! resumed workflow waits only for what is left. Publishing an event is a
//! step whose commit also stores the value.
//!
//! How the wait is spent (in the process, or unloaded) is the runtime's and
//! the scheduler's business; this module only decides what is recorded.

use serde_json::value::RawValue;

use super::{EngineError, StepRequest, StepStart, WorkflowRun, check_name};
use crate::store::{Millis, SignalRecord, StepEffect, StepKey, now_millis};

/// The steps that record which signal a wait took: `durable.signal:<name>`.
pub const SIGNAL_STEP_PREFIX: &str = "durable.signal:";
/// The steps that record a published event: `durable.event:<key>`.
pub const EVENT_STEP_PREFIX: &str = "durable.event:";
/// The timer of a wait with a timeout: its recorded value is the deadline.
pub const WAIT_STEP: &str = "durable.wait";

/// What a wait for a signal found.
#[derive(Debug, PartialEq, Eq)]
pub enum SignalWait {
    /// The signal's value, as JSON.
    Received(String),
    /// The deadline passed first.
    TimedOut,
    /// Nothing yet, and nothing recorded: wait, then ask again.
    Nothing,
    /// The workflow was cancelled; the reason.
    Cancelled(String),
}

/// How a timer step began.
#[derive(Debug, PartialEq, Eq)]
pub enum TimerStart {
    /// It ends at this time (ms since the epoch), recorded by the first run
    /// that reached it.
    Until(Millis),
    /// The workflow was cancelled; the reason.
    Cancelled(String),
}

/// The recorded value of a wait's step.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
enum Receipt<'a> {
    Signal {
        signal_id: String,
        #[serde(borrow)]
        value: &'a RawValue,
    },
    TimedOut,
}

impl WorkflowRun {
    /// Begin the timer step `name` (a sleep, a wait's timeout) of
    /// `duration_ms`: the first run records its end, a replay reads it.
    pub fn timer(&mut self, name: &str, duration_ms: u64) -> Result<TimerStart, EngineError> {
        let start = self.begin_step(name)?;
        let key = self.key_of(name);
        match start {
            StepStart::Replayed(Ok(json)) => serde_json::from_str::<Millis>(&json)
                .map(TimerStart::Until)
                .map_err(|e| EngineError::InvalidStepJson {
                    key,
                    reason: format!("a recorded wake-up time must be a number: {e}"),
                }),
            StepStart::Replayed(Err(error)) => Err(EngineError::InvalidStepJson {
                key,
                reason: format!("a timer is recorded as a time, not as the error `{error}`"),
            }),
            StepStart::Cancelled(reason) => Ok(TimerStart::Cancelled(reason)),
            StepStart::Execute(step) => {
                let until = now_millis().saturating_add(duration_ms.min(i64::MAX as u64) as i64);
                self.finish_step(step.key.as_str(), Ok(until.to_string()))?;
                Ok(TimerStart::Until(until))
            }
        }
    }

    /// The wait at this position for the signal `name`, which times out at
    /// `deadline`: the recorded answer when replaying; else the oldest
    /// signal not yet taken, taken now, or the timeout once due, recorded
    /// now; else [`SignalWait::Nothing`], recording nothing.
    pub fn receive_signal(
        &mut self,
        name: &str,
        deadline: Option<Millis>,
    ) -> Result<SignalWait, EngineError> {
        check_name("a signal name", name)?;
        let step_name = format!("{SIGNAL_STEP_PREFIX}{name}");
        let finished = self
            .cursor
            .at(self.position + 1)
            .is_some_and(|step| step.outcome().is_some());
        let mut signal = None;
        // `verify` replays only: it must not wait for what never comes.
        if !finished && !self.replay_only {
            if let Some(reason) = self.deliver_cancellation()? {
                return Ok(SignalWait::Cancelled(reason));
            }
            signal = self.store.next_signal(&self.workflow_id, name)?;
            let timed_out = deadline.is_some_and(|deadline| now_millis() >= deadline);
            if signal.is_none() && !timed_out {
                return Ok(SignalWait::Nothing);
            }
        }
        let start = self.begin_step_with(StepRequest::named(&step_name))?;
        let key = self.key_of(&step_name);
        match start {
            StepStart::Replayed(Ok(json)) => match serde_json::from_str::<Receipt<'_>>(&json) {
                Ok(Receipt::Signal { value, .. }) => {
                    Ok(SignalWait::Received(value.get().to_owned()))
                }
                Ok(Receipt::TimedOut) => Ok(SignalWait::TimedOut),
                Err(e) => Err(EngineError::InvalidStepJson {
                    key,
                    reason: format!("a recorded signal does not read as one: {e}"),
                }),
            },
            StepStart::Replayed(Err(error)) => Err(EngineError::InvalidStepJson {
                key,
                reason: format!("a signal is recorded as a value, not as the error `{error}`"),
            }),
            StepStart::Cancelled(reason) => Ok(SignalWait::Cancelled(reason)),
            StepStart::Execute(step) => match signal {
                Some(signal) => {
                    let effect = StepEffect::TakeSignal { seq: signal.seq };
                    self.finish_step_with(step.key.as_str(), Ok(receipt(&signal)?), Some(effect))?;
                    Ok(SignalWait::Received(signal.value))
                }
                None => {
                    let timed_out = serde_json::to_string(&Receipt::TimedOut).expect("plain data");
                    self.finish_step(step.key.as_str(), Ok(timed_out))?;
                    Ok(SignalWait::TimedOut)
                }
            },
        }
    }

    /// The key of the last step begun with `name`.
    fn key_of(&self, name: &str) -> StepKey {
        StepKey::new(name, self.ordinals.get(name).copied().unwrap_or(1))
    }

    /// Publish `value` (JSON) under `key`, once: a replay finds the step
    /// recorded and publishes nothing. A pending cancellation is not handed
    /// over here (the guest could not answer it); its next step gets it.
    pub fn publish_event(&mut self, key: &str, value: &str) -> Result<(), EngineError> {
        check_name("an event key", key)?;
        let step_name = format!("{EVENT_STEP_PREFIX}{key}");
        let start = self
            .begin_steps_handing_over(&[StepRequest::named(&step_name)], false)?
            .pop()
            .expect("one start per step");
        match start {
            StepStart::Execute(step) => {
                let effect = StepEffect::Publish {
                    key: key.to_owned(),
                    value: value.to_owned(),
                };
                // The step's value is the event's, so the history shows it
                // (and a value that is not JSON is refused like a step's).
                self.finish_step_with(step.key.as_str(), Ok(value.to_owned()), Some(effect))
            }
            StepStart::Replayed(_) | StepStart::Cancelled(_) => Ok(()),
        }
    }
}

/// The recorded value of a wait that took `signal`.
fn receipt(signal: &SignalRecord) -> Result<String, EngineError> {
    let value =
        RawValue::from_string(signal.value.clone()).map_err(|e| EngineError::InvalidStepJson {
            key: StepKey::new(&format!("{SIGNAL_STEP_PREFIX}{}", signal.name), 1),
            reason: format!(
                "signal {} holds a value that is not JSON: {e}",
                signal.signal_id
            ),
        })?;
    Ok(serde_json::to_string(&Receipt::Signal {
        signal_id: signal.signal_id.clone(),
        value: &value,
    })
    .expect("plain data"))
}
