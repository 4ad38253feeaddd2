//! What the onboarding workflow's tests share, in every guest language:
//! its steps and services, waiting for a step to be cut short, and the
//! check of a resumed run against what a crash left.

use std::collections::BTreeMap;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{Scratch, run};

/// The onboarding workflow's steps, in order.
pub const STEPS: [&str; 4] = [
    "create_record",
    "provision_laptop",
    "provision_access",
    "send_welcome_email",
];
/// The mock service each of [`STEPS`] calls.
pub const SERVICES: [&str; 4] = ["hr", "it", "iam", "mail"];

/// Each service called once.
pub fn once_each() -> BTreeMap<String, usize> {
    SERVICES.iter().map(|s| (s.to_string(), 1)).collect()
}

/// Wait, for at most `timeout`, until the step `key` of workflow `id` is
/// running, while `host` (the run that executes it) is still alive.
pub fn wait_until_running(
    scratch: &Scratch,
    id: &str,
    key: &str,
    host: &mut Child,
    timeout: Duration,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let steps = scratch.try_steps(id).unwrap_or_default();
        if steps.iter().any(|s| s.0 == key && s.1 == "running") {
            return;
        }
        assert!(Instant::now() < deadline, "{key} never started: {steps:?}");
        assert!(
            host.try_wait().unwrap().is_none(),
            "the host exited before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Resume the crashed onboarding workflow `id` with `resume` (its `run
/// ... --json`, in any language) and check the promises against what the
/// crash left, counting each service's calls with `calls`: every step
/// completed at the crash ran exactly once in all, every step in flight at
/// most twice, every other step once, and the output is `expected`.
pub fn resume(
    scratch: &Scratch,
    id: &str,
    resume: &mut Command,
    calls: &dyn Fn() -> BTreeMap<String, usize>,
    expected: &Value,
    context: &str,
) {
    let at_crash: BTreeMap<String, String> = scratch
        .steps(id)
        .into_iter()
        .map(|(key, status, _)| (key.trim_end_matches("#000001").to_owned(), status))
        .collect();
    let resumed = run(resume).expect_code(0).json();
    assert_eq!(&resumed["output"], expected, "output after {context}");
    assert_eq!(resumed["resumed"], true, "{context}");
    let calls = calls();
    for (step, service) in STEPS.iter().zip(SERVICES) {
        let count = calls.get(service).copied().unwrap_or(0);
        match at_crash.get(*step).map(String::as_str) {
            Some("running") => assert!(
                (1..=2).contains(&count),
                "{step} was in flight at {context}: ran {count} times"
            ),
            status => assert_eq!(
                count, 1,
                "{step} ({status:?} at {context}) must run exactly once"
            ),
        }
    }
    let replayed = resumed["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["outcome"] == "replayed")
        .count();
    let completed = at_crash
        .values()
        .filter(|status| *status == "completed")
        .count();
    assert_eq!(
        replayed, completed,
        "every step completed at {context} is replayed, no other"
    );
    for (key, status, attempts) in scratch.steps(id) {
        let was_running = at_crash
            .get(key.trim_end_matches("#000001"))
            .is_some_and(|s| s == "running");
        assert_eq!(
            (status.as_str(), attempts),
            ("completed", if was_running { 2 } else { 1 }),
            "{key} after {context}"
        );
    }
    assert!(scratch.integrity_ok());
}
