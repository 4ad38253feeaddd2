//! The JavaScript SDK end to end: the onboarding workflow in TypeScript
//! (`workflows/onboarding-js`) and the SDK's own cases
//! (`tests/fixtures/js-sdk`), each built with the SDK's `durable-build` and
//! crashed, killed and resumed like the Rust guest.
//! The first run downloads the npm packages (componentize-js, esbuild,
//! TypeScript: about 150 MB) into each project's node_modules.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use durable_tests::onboarding::{SERVICES, STEPS, once_each, wait_until_running};
use durable_tests::{HttpService, Scratch, js_guests, run, spawn};
use serde_json::{Value, json};

/// `durable-host run` of the TypeScript onboarding for `id`, calling `service`.
fn onboarding(scratch: &Scratch, service: &HttpService, id: &str, latency_ms: u64) -> Command {
    let mut command = ungranted(scratch, service, id, latency_ms);
    command.args(["--allow-http", service.address()]);
    command
}

/// The same, without the grant of `service`'s address.
fn ungranted(scratch: &Scratch, service: &HttpService, id: &str, latency_ms: u64) -> Command {
    let input = json!({
        "id": id,
        "name": "Ada Lovelace",
        "email": "ada@example.com",
        "role": "engineer",
        "service_latency_ms": latency_ms,
        "services_url": service.url(),
    });
    let mut command = scratch.run(&js_guests().onboarding, id);
    command.args(["--input", &input.to_string(), "--json"]);
    command
}

/// How many times each service was called.
fn calls(service: &HttpService) -> BTreeMap<String, usize> {
    count(service, false)
}

/// How many distinct requests each service had: a repeated idempotency
/// key (a step in flight at a crash, run again) is one request.
fn requests(service: &HttpService) -> BTreeMap<String, usize> {
    count(service, true)
}

fn count(service: &HttpService, distinct: bool) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for call in service.calls() {
        if distinct && call.repeat {
            continue;
        }
        let name = call.path.trim_start_matches('/').split('/').next().unwrap();
        *counts.entry(name.to_owned()).or_default() += 1;
    }
    counts
}

/// The Rust onboarding's output for `id`: the TypeScript one must match it.
fn rust_output(id: &str) -> Value {
    let scratch = Scratch::new();
    let mut command = scratch.onboarding(id);
    run(command.arg("--json")).expect_code(0).json()["output"].clone()
}

#[test]
fn typescript_onboarding_gives_the_rust_output_and_calls_each_service_once() {
    let scratch = Scratch::new();
    let service = HttpService::start();
    let first = run(&mut onboarding(&scratch, &service, "emp-001", 0))
        .expect_code(0)
        .json();
    assert_eq!(first["output"], rust_output("emp-001"));
    assert_eq!(calls(&service), once_each());
    // Each call carried its step's idempotency key.
    let keys: Vec<_> = service
        .calls()
        .iter()
        .map(|c| c.idempotency_key.clone().unwrap_or_default())
        .collect();
    for step in STEPS {
        let key = format!("emp-001/{step}#000001");
        assert!(keys.contains(&key), "{key} in {keys:?}");
    }

    let again = run(&mut onboarding(&scratch, &service, "emp-001", 0))
        .expect_code(0)
        .json();
    assert_eq!(again["already_finished"], true);
    assert_eq!(again["output"], first["output"]);
    assert_eq!(
        calls(&service),
        once_each(),
        "a finished workflow calls nothing"
    );
}

#[test]
fn a_request_to_a_destination_not_granted_fails_its_step_naming_the_flag() {
    let scratch = Scratch::new();
    let service = HttpService::start();
    let failed = run(&mut ungranted(&scratch, &service, "emp-r", 0))
        .expect_code(1)
        .json();
    let error = failed["error"].as_str().unwrap();
    let url = format!("{}/hr/create_record", service.url());
    assert!(
        error.starts_with(&format!("POST {url} failed: ")) && error.contains("--allow-http"),
        "{error}"
    );
    assert!(service.calls().is_empty(), "refused before it was sent");
}

#[test]
fn a_crash_before_or_after_any_step_resumes_without_calling_a_service_twice() {
    let expected = rust_output("emp-c");
    for (index, step) in STEPS.iter().enumerate() {
        for point in ["before", "after"] {
            let context = format!("--crash {step}:{point}");
            let scratch = Scratch::new();
            let service = HttpService::start();
            run(onboarding(&scratch, &service, "emp-c", 0)
                .args(["--crash", &format!("{step}:{point}")]))
            .expect_code(3);
            let at_crash = calls(&service);
            let called = at_crash.get(SERVICES[index]).copied();
            assert_eq!(
                called,
                (point == "after").then_some(1),
                "{context}: {at_crash:?}"
            );

            // A step done at the crash is not called again; a step in flight
            // (a parallel sibling) may call again, with the same
            // idempotency key.
            let mut resume = onboarding(&scratch, &service, "emp-c", 0);
            let counted = || calls(&service);
            durable_tests::onboarding::resume(
                &scratch,
                "emp-c",
                &mut resume,
                &counted,
                &expected,
                &context,
            );
            assert_eq!(requests(&service), once_each(), "{context}");
        }
    }
}

/// Kill the host while `step` waits out its latency, resume, and check that
/// only unfinished steps ran again.
fn kill_during(step: &str) {
    let scratch = Scratch::new();
    let service = HttpService::start();
    let mut child = spawn(&mut onboarding(&scratch, &service, "emp-k", 1_500));
    let key = format!("{step}#000001");
    wait_until_running(&scratch, "emp-k", &key, &mut child, Duration::from_secs(60));
    child.kill().unwrap(); // SIGKILL
    assert!(!child.wait().unwrap().success());
    let running: Vec<String> = scratch
        .steps("emp-k")
        .into_iter()
        .filter(|s| s.1 == "running")
        .map(|s| s.0)
        .collect();

    let resumed = run(&mut onboarding(&scratch, &service, "emp-k", 1_500))
        .expect_code(0)
        .json();
    assert_eq!(
        resumed["output"],
        rust_output("emp-k"),
        "killed during {step}"
    );
    assert_eq!(
        calls(&service),
        once_each(),
        "killed during {step}'s latency, before its call"
    );
    for (key, status, attempts) in scratch.steps("emp-k") {
        // Taken over as attempt 2 if it was in flight; every other step ran once.
        let expected = if running.contains(&key) { 2 } else { 1 };
        assert_eq!(
            (status.as_str(), attempts),
            ("completed", expected),
            "{key}, killed during {step}"
        );
    }
    assert!(scratch.integrity_ok());
}

#[test]
fn sigkill_in_the_middle_of_a_step_then_resume() {
    kill_during("create_record");
}

#[test]
fn sigkill_in_the_middle_of_a_branch_then_resume() {
    kill_during("provision_laptop");
}

fn scenario(scratch: &Scratch, id: &str, case: &str) -> Command {
    let mut command = scratch.run(&js_guests().scenarios, id);
    command.args(["--input", &json!({ "case": case }).to_string(), "--json"]);
    command
}

fn history(scratch: &Scratch, id: &str) -> Value {
    run(&mut scratch.host(&["history", id, "--json"]))
        .expect_code(0)
        .json()
}

fn step<'a>(history: &'a Value, key: &str) -> &'a Value {
    history["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["key"] == key)
        .unwrap_or_else(|| panic!("no step {key} in {history}"))
}

#[test]
fn retries_are_recorded_and_a_permanent_error_is_not_retried() {
    let scratch = Scratch::new();
    let done = run(&mut scenario(&scratch, "retries", "retries"))
        .expect_code(0)
        .json();
    assert_eq!(
        done["output"],
        json!({
            "flaky": 3,
            "refused": { "message": "card declined", "code": "card_declined" },
            "branchAttempt": 2,
        })
    );
    let history = history(&scratch, "retries");
    let flaky = step(&history, "flaky#000001");
    assert_eq!(
        (flaky["attempts"].as_u64(), flaky["failures"].as_u64()),
        (Some(3), Some(2))
    );
    assert_eq!(flaky["earlier_attempts"][1]["error"], "attempt 2 failed");
    let refused = step(&history, "refused#000001");
    assert_eq!(
        (
            &refused["status"],
            &refused["attempts"],
            &refused["error_code"]
        ),
        (&json!("failed"), &json!(1), &json!("card_declined"))
    );
    assert_eq!(step(&history, "flaky_branch#000001")["attempts"], 2);
}

#[test]
fn a_thrown_error_is_recorded_with_its_type_message_and_code() {
    let scratch = Scratch::new();
    let failed = run(&mut scenario(&scratch, "thrown", "thrown"))
        .expect_code(1)
        .json();
    assert_eq!(failed["status"], "failed");
    let error = failed["error"].as_str().unwrap();
    assert!(
        error.starts_with("TypeError: ") && error.contains("null"),
        "{error}"
    );
    assert_eq!(
        step(&history(&scratch, "thrown"), "broken#000001")["error"],
        error
    );
    // Killed right after the step's error was recorded: the resumed run
    // replays the error, it does not run the step again.
    run(scenario(&scratch, "thrown-2", "thrown").args(["--crash-after", "1"])).expect_code(3);
    let resumed = run(&mut scenario(&scratch, "thrown-2", "thrown"))
        .expect_code(1)
        .json();
    assert_eq!(resumed["error"], error);
    assert_eq!(resumed["steps"][0]["outcome"], "replayed", "{resumed}");

    let coded = run(&mut scenario(&scratch, "coded", "coded"))
        .expect_code(1)
        .json();
    assert_eq!(
        (&coded["error"], &coded["error_code"]),
        (&json!("no seat left on flight LH123"), &json!("sold_out"))
    );
}

#[test]
fn now_random_and_uuid_are_recorded_and_replayed() {
    let scratch = Scratch::new();
    run(scenario(&scratch, "recorded", "recorded").args(["--crash", "last:before"])).expect_code(3);
    let resumed = run(&mut scenario(&scratch, "recorded", "recorded"))
        .expect_code(0)
        .json();
    assert_eq!(resumed["resumed"], true);
    let output = &resumed["output"];
    let history = history(&scratch, "recorded");
    let recorded = |key: &str| step(&history, key)["output"].clone();
    assert_eq!(output["random"], recorded("durable.random#000001"));
    assert_eq!(output["uuid"], recorded("durable.uuid#000001"));
    let millis = recorded("durable.now#000001").as_u64().unwrap();
    assert!(
        output["now"].as_str().unwrap().starts_with("20"),
        "{output}"
    );
    assert!(millis > 1_700_000_000_000, "{millis}");
    assert_eq!(output["nowMs"], millis, "the recorded instant");
    let uuid = output["uuid"].as_str().unwrap();
    assert!(
        uuid.len() == 36 && uuid.as_bytes()[14] == b'4',
        "a version 4 UUID: {uuid}"
    );
}

#[test]
fn a_child_workflow_is_started_once_and_its_output_awaited() {
    let scratch = Scratch::new();
    let component = &js_guests().scenarios;
    let waiting = run(&mut scenario(&scratch, "parent", "child"))
        .expect_code(12)
        .stdout();
    assert!(waiting.contains("parent.kid"), "{waiting}");
    // Run again: still waiting, and the child is not started a second time.
    run(&mut scratch.run(component, "parent")).expect_code(12);
    run(&mut scratch.run(component, "parent.kid")).expect_code(0);
    let done = run(scratch.run(component, "parent").arg("--json"))
        .expect_code(0)
        .json();
    assert_eq!(done["output"], json!({ "child": 2 }));
    let children = scratch.number("SELECT COUNT(*) FROM workflows WHERE parent_id = 'parent'");
    assert_eq!(children, 1);
}

#[test]
fn a_cancellation_ends_a_sleep_and_the_compensation_still_runs() {
    let scratch = Scratch::new();
    js_guests();
    let mut command = scratch.run(&js_guests().scenarios, "trip");
    let input = json!({ "case": "compensate", "sleep_ms": 60_000 });
    command.args(["--input", &input.to_string(), "--wait"]);
    let started = Instant::now();
    let child = spawn(&mut command);
    durable_tests::wait_until("the durable sleep", Duration::from_secs(60), || {
        let steps = scratch.try_steps("trip").unwrap_or_default();
        steps.iter().any(|s| s.0 == "durable.sleep#000001")
    });
    run(&mut scratch.host(&["cancel", "trip"])).expect_code(0);
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(6), "ends cancelled");
    assert!(
        started.elapsed() < Duration::from_secs(40),
        "the sleep ended early"
    );
    let history = history(&scratch, "trip");
    assert_eq!(history["status"], "cancelled");
    assert_eq!(
        step(&history, "release#000001")["output"],
        json!({ "released": "R-1", "type": "CancelledError", "code": "cancelled" })
    );
}
