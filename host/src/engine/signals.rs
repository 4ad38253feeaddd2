//! Signals, timers and published events, as steps of the history.
//!
//! A wait for a signal takes the oldest signal sent for its name in the same
//! commit that records its step (`durable.signal:<name>`), so a signal is
//! delivered exactly once and a replay hands back the recorded value without
//! taking another. While nothing has come, nothing is written: the caller
//! waits (or unloads the workflow) and asks again. A timeout's end and a
//! sleep's are timers: steps whose recorded value is the wake-up time, so a
//! resumed workflow waits only for what is left. Publishing an event is a
//! step whose commit also stores the value. `children` settles waits for
//! child workflows the same way ([`WorkflowRun::settle_wait`]).
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
/// The recorded value of a wait that timed out.
const TIMED_OUT: &str = "\"timed_out\"";

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

/// How a settled wait answered.
pub(super) enum WaitAnswer {
    /// The recorded value (recorded now, or replayed).
    Recorded(String),
    Nothing,
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

/// The step that records `name` under `prefix`, once `name` is checked
/// (`what` it is, for the error): not empty, no control characters, and
/// short enough for the step's name.
pub(super) fn prefixed(what: &str, prefix: &str, name: &str) -> Result<String, EngineError> {
    check_name(what, name)?;
    let step_name = format!("{prefix}{name}");
    check_name(what, &step_name)?;
    Ok(step_name)
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
        let step_name = prefixed("a signal name", SIGNAL_STEP_PREFIX, name)?;
        let answer = self.settle_wait(&step_name, deadline, |run| {
            let Some(signal) = run.store.next_signal(&run.workflow_id, name)? else {
                return Ok(None);
            };
            let effect = StepEffect::TakeSignal { seq: signal.seq };
            Ok(Some((receipt(&signal)?, Some(effect))))
        })?;
        let key = self.key_of(&step_name);
        Ok(match answer {
            WaitAnswer::Nothing => SignalWait::Nothing,
            WaitAnswer::Cancelled(reason) => SignalWait::Cancelled(reason),
            WaitAnswer::Recorded(json) => match serde_json::from_str::<Receipt<'_>>(&json) {
                Ok(Receipt::Signal { value, .. }) => SignalWait::Received(value.get().to_owned()),
                Ok(Receipt::TimedOut) => SignalWait::TimedOut,
                Err(e) => {
                    return Err(EngineError::InvalidStepJson {
                        key,
                        reason: format!("a recorded signal does not read as one: {e}"),
                    });
                }
            },
        })
    }

    /// The wait at this position, recorded as the step `step_name` with the
    /// value `look` finds (and its effect, committed with it), or as timed
    /// out once `deadline` is due. Replaying, the recorded value; with
    /// nothing found and time left, nothing is written.
    pub(super) fn settle_wait(
        &mut self,
        step_name: &str,
        deadline: Option<Millis>,
        look: impl FnOnce(&Self) -> Result<Option<(String, Option<StepEffect>)>, EngineError>,
    ) -> Result<WaitAnswer, EngineError> {
        if let Some(executing) = self.executing.first() {
            return Err(EngineError::StepOverlap {
                executing: executing.key.clone(),
                requested: StepKey::new(
                    step_name,
                    self.ordinals.get(step_name).map_or(1, |n| n + 1),
                ),
            });
        }
        // A cancellation handed over during this wait (replayed where it
        // was recorded, or asked for by now), as in a durable sleep.
        self.read_cancellation()?;
        if let Some(reason) = self.deliver_cancellation()? {
            return Ok(WaitAnswer::Cancelled(reason));
        }
        let finished = self
            .cursor
            .at(self.position + 1)
            .is_some_and(|step| step.outcome().is_some());
        let mut found = None;
        // `verify` replays only: it must not wait for what never comes.
        if !finished && !self.replay_only {
            found = look(self)?;
            let timed_out = deadline.is_some_and(|deadline| now_millis() >= deadline);
            if found.is_none() && !timed_out {
                return Ok(WaitAnswer::Nothing);
            }
        }
        let start = self.begin_step_with(StepRequest::named(step_name))?;
        let key = self.key_of(step_name);
        match start {
            StepStart::Replayed(Ok(json)) => Ok(WaitAnswer::Recorded(json)),
            StepStart::Replayed(Err(error)) => Err(EngineError::InvalidStepJson {
                key,
                reason: format!("a wait is recorded as a value, not as the error `{error}`"),
            }),
            StepStart::Cancelled(reason) => Ok(WaitAnswer::Cancelled(reason)),
            StepStart::Execute(step) => {
                let (json, effect) = found.unwrap_or_else(|| (TIMED_OUT.to_owned(), None));
                self.finish_step_with(step.key.as_str(), Ok(json.clone()), effect)?;
                Ok(WaitAnswer::Recorded(json))
            }
        }
    }

    /// The key of the last step begun with `name`.
    pub(super) fn key_of(&self, name: &str) -> StepKey {
        StepKey::new(name, self.ordinals.get(name).copied().unwrap_or(1))
    }

    /// Publish `value` (JSON) under `key`, once: a replay finds the step
    /// recorded and publishes nothing. A pending cancellation is not handed
    /// over here (the guest could not answer it); its next step gets it.
    pub fn publish_event(&mut self, key: &str, value: &str) -> Result<(), EngineError> {
        let step_name = prefixed("an event key", EVENT_STEP_PREFIX, key)?;
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
