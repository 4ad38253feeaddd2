//! Simulated crashes, for testing recovery: the process ends at a chosen
//! step boundary exactly as `kill -9` would leave it.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

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

/// As given on the command line: `STEP:before`, `STEP:after`, or
/// `--crash-after N`.
impl fmt::Display for CrashPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Before(step) => write!(f, "--crash {step}:before"),
            Self::After(step) => write!(f, "--crash {step}:after"),
            Self::AfterCheckpoints(n) => write!(f, "--crash-after {n}"),
        }
    }
}

/// Which crash points of a [`CrashPlan`] a run reached. A cheap handle on
/// state shared with the plan: keep one before handing the plan to a run,
/// and ask it once the run is over.
#[derive(Debug, Clone, Default)]
pub struct CrashTracker {
    /// The plan's points, each with whether it was reached.
    points: Arc<Mutex<Vec<(CrashPoint, bool)>>>,
}

impl CrashTracker {
    fn new(points: &[CrashPoint]) -> Self {
        Self {
            points: Arc::new(Mutex::new(
                points.iter().map(|p| (p.clone(), false)).collect(),
            )),
        }
    }

    fn reach(&self, index: usize) {
        let mut points = self.points.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(point) = points.get_mut(index) {
            point.1 = true;
        }
    }

    /// The crash points no step of the run reached, in the plan's order: a
    /// step name with a typo, a step that was replayed rather than run, or
    /// more checkpoints than the run made.
    pub fn unreached(&self) -> Vec<CrashPoint> {
        let points = self.points.lock().unwrap_or_else(PoisonError::into_inner);
        points
            .iter()
            .filter(|(_, reached)| !reached)
            .map(|(point, _)| point.clone())
            .collect()
    }
}

/// Crash points for testing recovery, and what to do when one is reached.
/// The action must not return: it ends the process, like `kill -9` would.
pub struct CrashPlan {
    points: Vec<CrashPoint>,
    tracker: CrashTracker,
    crash: Box<dyn Fn(&str) + Send>,
}

impl CrashPlan {
    pub fn new(points: Vec<CrashPoint>, crash: impl Fn(&str) + Send + 'static) -> Self {
        Self {
            tracker: CrashTracker::new(&points),
            points,
            crash: Box::new(crash),
        }
    }

    /// A plan that never crashes.
    pub fn none() -> Self {
        Self::new(Vec::new(), |_| {})
    }

    /// A handle that tells, after the run, which points were never reached.
    pub fn tracker(&self) -> CrashTracker {
        self.tracker.clone()
    }

    /// The points not reached so far (see [`CrashTracker::unreached`]).
    pub fn unreached(&self) -> Vec<CrashPoint> {
        self.tracker.unreached()
    }

    pub(super) fn before_body(&self, key: &StepKey) {
        for (index, point) in self.points.iter().enumerate() {
            if let CrashPoint::Before(step) = point
                && CrashPoint::matches_step(step, key)
            {
                self.tracker.reach(index);
                (self.crash)(&format!("before step {key} ran"));
            }
        }
    }

    pub(super) fn after_checkpoint(&self, key: &StepKey, checkpoints: u32) {
        for (index, point) in self.points.iter().enumerate() {
            match point {
                CrashPoint::After(step) if CrashPoint::matches_step(step, key) => {
                    self.tracker.reach(index);
                    (self.crash)(&format!("after step {key} was checkpointed"));
                }
                CrashPoint::AfterCheckpoints(n) if *n == checkpoints => {
                    self.tracker.reach(index);
                    (self.crash)(&format!("after {checkpoints} checkpoints (last: {key})"));
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn plan(points: Vec<CrashPoint>) -> (CrashPlan, Arc<AtomicU32>) {
        let crashes = Arc::new(AtomicU32::new(0));
        let counter = crashes.clone();
        let plan = CrashPlan::new(points, move |_| {
            counter.fetch_add(1, Ordering::Relaxed);
        });
        (plan, crashes)
    }

    #[test]
    fn points_no_step_reached_are_reported() {
        let (plan, crashes) = plan(vec![
            CrashPoint::Before("charge".into()),
            CrashPoint::After("chrage".into()),
            CrashPoint::After("audit#000002".into()),
            CrashPoint::AfterCheckpoints(2),
            CrashPoint::AfterCheckpoints(9),
        ]);
        let tracker = plan.tracker();
        assert_eq!(tracker.unreached().len(), 5, "nothing ran yet");

        plan.before_body(&StepKey::new("charge", 1));
        plan.after_checkpoint(&StepKey::new("charge", 1), 1);
        plan.before_body(&StepKey::new("audit", 1));
        plan.after_checkpoint(&StepKey::new("audit", 1), 2);
        assert_eq!(crashes.load(Ordering::Relaxed), 2);

        // The handle sees what the plan saw, also once the plan is gone.
        drop(plan);
        assert_eq!(
            tracker.unreached(),
            vec![
                CrashPoint::After("chrage".into()),
                CrashPoint::After("audit#000002".into()),
                CrashPoint::AfterCheckpoints(9),
            ]
        );
    }

    #[test]
    fn a_name_matches_only_its_first_call() {
        let (plan, crashes) = plan(vec![CrashPoint::Before("charge".into())]);
        plan.before_body(&StepKey::new("charge", 2));
        assert_eq!(crashes.load(Ordering::Relaxed), 0);
        assert_eq!(plan.unreached().len(), 1);
    }

    #[test]
    fn points_read_as_on_the_command_line() {
        assert_eq!(
            CrashPoint::Before("a#000002".into()).to_string(),
            "--crash a#000002:before"
        );
        assert_eq!(
            CrashPoint::AfterCheckpoints(3).to_string(),
            "--crash-after 3"
        );
    }
}
