//! Simulated crashes, for testing recovery: the process ends at a chosen
//! step boundary exactly as `kill -9` would leave it.

use crate::store::StepKey;

/// Where a simulated crash ends the process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CrashPoint {
    /// After the step is marked running, before its body runs.
    Before(String),
    /// Right after the step's result is committed.
    After(String),
    /// After this many checkpoints (step results) committed by this run.
    AfterCheckpoints(u32),
}

impl CrashPoint {
    /// `step` matches a key (`name#000002`) exactly, or a name's first call.
    fn matches_step(step: &str, key: &StepKey) -> bool {
        if step.contains('#') {
            step == key.as_str()
        } else {
            *key == StepKey::new(step, 1)
        }
    }
}

/// Crash points for testing recovery, and what to do when one is reached.
/// The action must not return: it ends the process, like `kill -9` would.
pub struct CrashPlan {
    points: Vec<CrashPoint>,
    crash: Box<dyn Fn(&str) + Send>,
}

impl CrashPlan {
    pub fn new(points: Vec<CrashPoint>, crash: impl Fn(&str) + Send + 'static) -> Self {
        Self {
            points,
            crash: Box::new(crash),
        }
    }

    /// A plan that never crashes.
    pub fn none() -> Self {
        Self::new(Vec::new(), |_| {})
    }

    pub(super) fn before_body(&self, key: &StepKey) {
        for point in &self.points {
            if let CrashPoint::Before(step) = point
                && CrashPoint::matches_step(step, key)
            {
                (self.crash)(&format!("before step {key} ran"));
            }
        }
    }

    pub(super) fn after_checkpoint(&self, key: &StepKey, checkpoints: u32) {
        for point in &self.points {
            match point {
                CrashPoint::After(step) if CrashPoint::matches_step(step, key) => {
                    (self.crash)(&format!("after step {key} was checkpointed"));
                }
                CrashPoint::AfterCheckpoints(n) if *n == checkpoints => {
                    (self.crash)(&format!("after {checkpoints} checkpoints (last: {key})"));
                }
                _ => {}
            }
        }
    }
}
