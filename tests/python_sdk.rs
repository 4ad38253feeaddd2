//! The Python guest SDK (`guest-sdk-py`) end to end: the onboarding
//! workflow written in Python (`workflows/onboarding-py`) gives the Rust
//! version's output and side effects, survives crashes and SIGKILLs at any
//! step, and the test-only workflows in `tests/fixtures/python` exercise
//! retries, permanent errors, exceptions, recorded clock and randomness,
//! failing branches, cancellation and refused input; `durable-build`'s
//! error report is checked too.
//!
//! The components are built by `durable_tests::py_guests` (a virtualenv
//! under `target/py-guests/`, the SDK pip-installed into it).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use durable_tests::onboarding::{SERVICES, STEPS, once_each, wait_until_running};
use durable_tests::{HttpService, Scratch, earlier_attempts, employee, py_guests, run, spawn};
use serde_json::{Value, json};

/// The latency of each mock service call in the kill tests.
const SLOW_MS: u64 = 2500;

/// `durable-host run` of the Python onboarding for `id`.
fn onboarding(scratch: &Scratch, id: &str, latency_ms: u64) -> Command {
    let mut command = scratch.run(&py_guests().onboarding, id);
    command.args(["--input", &employee(id, latency_ms)]);
    command
}

/// `durable-host run` of a Python test scenario.
fn scenario(scratch: &Scratch, id: &str, input: Value) -> Command {
    let mut command = scratch.run(&py_guests().scenarios, id);
    command.args(["--input", &input.to_string()]);
    command
}

fn history_of(scratch: &Scratch, id: &str) -> Value {
    run(&mut scratch.host(&["history", id, "--json"]))
        .expect_code(0)
        .json()
}

/// Every service record, by service, in a stable order.
fn sorted_records(scratch: &Scratch) -> Vec<(String, Value)> {
    let mut records = scratch.service_records();
    records.sort_by_key(|(service, record)| (service.clone(), record.to_string()));
    records
}

fn expected_output(id: &str) -> Value {
    json!({
        "employee_id": id,
        "record_id": format!("HR-{id}"),
        "laptop": {"asset_tag": format!("LT-{id}"), "model": "ThinkPad P16"},
        "access_groups": ["all-staff", "sso", "github", "ci"],
        "welcome_email_id": format!("MAIL-{id}"),
    })
}

#[test]
fn same_output_and_service_calls_as_the_rust_onboarding_then_a_replay_runs_nothing() {
    let python = Scratch::new();
    let started = Instant::now();
    let first = run(onboarding(&python, "emp-001", 0).arg("--json"))
        .expect_code(0)
        .json();
    println!("first Python run: {:?}", started.elapsed());
    assert_eq!(first["status"], "completed");
    assert_eq!(first["output"], expected_output("emp-001"));
    // Listed as they finished: the branches in either order.
    let outcomes: BTreeMap<String, Value> = first["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["key"].as_str().unwrap().to_owned(), s["outcome"].clone()))
        .collect();
    assert_eq!(
        outcomes,
        STEPS
            .iter()
            .map(|s| (format!("{s}#000001"), json!("executed")))
            .collect::<BTreeMap<_, _>>()
    );
    assert_eq!(python.service_calls(), once_each());

    // The Rust onboarding, same input: same output, same requests to the
    // same services with the same idempotency keys and attempts.
    let rust = Scratch::new();
    let rust_run = run(rust.onboarding("emp-001").arg("--json"))
        .expect_code(0)
        .json();
    assert_eq!(first["output"], rust_run["output"]);
    assert_eq!(sorted_records(&python), sorted_records(&rust));

    // Running the finished workflow again runs nothing.
    let started = Instant::now();
    let second = run(onboarding(&python, "emp-001", 0).arg("--json"))
        .expect_code(0)
        .json();
    println!("second (finished) Python run: {:?}", started.elapsed());
    assert_eq!(second["already_finished"], true);
    assert_eq!(second["output"], first["output"]);
    assert_eq!(python.service_calls(), once_each());
}

/// Resume `id` after a crash and check what the crash left; see
/// [`durable_tests::onboarding::resume`].
fn resume_and_check(scratch: &Scratch, id: &str, latency_ms: u64, context: &str) {
    let mut resume = onboarding(scratch, id, latency_ms);
    resume.arg("--json");
    let calls = || scratch.service_calls();
    let expected = expected_output(id);
    durable_tests::onboarding::resume(scratch, id, &mut resume, &calls, &expected, context);
}

#[test]
fn a_crash_before_or_after_any_step_resumes_without_repeating_side_effects() {
    for (index, step) in STEPS.iter().enumerate() {
        for point in ["before", "after"] {
            let context = format!("--crash {step}:{point}");
            let scratch = Scratch::new();
            let crashed =
                run(onboarding(&scratch, "emp-c", 0).args(["--crash", &format!("{step}:{point}")]))
                    .expect_code(3);
            assert!(
                crashed.stderr().contains("simulated crash"),
                "{}",
                crashed.stderr()
            );
            let steps = scratch.steps("emp-c");
            let status = steps
                .iter()
                .find(|s| s.0 == format!("{step}#000001"))
                .map(|s| s.1.as_str());
            let want = if point == "after" {
                "completed"
            } else {
                "running"
            };
            assert_eq!(status, Some(want), "{context}: {steps:?}");
            let calls = scratch.service_calls();
            if point == "before" {
                assert_eq!(
                    calls.get(SERVICES[index]),
                    None,
                    "the body did not run: {context}"
                );
            } else {
                assert_eq!(calls.get(SERVICES[index]), Some(&1), "{context}");
            }
            resume_and_check(&scratch, "emp-c", 0, &context);
        }
    }
}

/// Start the slow onboarding, SIGKILL the host while `step` is executing,
/// resume, and check that only the step cut short ran again.
fn kill_during(step: &str) {
    let id = format!("emp-k-{step}");
    let scratch = Scratch::new();
    let mut child = spawn(&mut onboarding(&scratch, &id, SLOW_MS));
    let key = format!("{step}#000001");
    wait_until_running(&scratch, &id, &key, &mut child, Duration::from_secs(60));
    // Into the body's latency (SLOW_MS), well before its end.
    std::thread::sleep(Duration::from_millis(100));
    child.kill().unwrap(); // SIGKILL
    assert!(!child.wait().unwrap().success());
    let at_kill = scratch.steps(&id);
    assert!(
        at_kill.iter().any(|s| s.0 == key && s.1 == "running"),
        "{step} was cut short: {at_kill:?}"
    );
    let position = STEPS.iter().position(|s| *s == step).unwrap();
    let calls = scratch.service_calls();
    for (earlier, service) in STEPS[..position].iter().zip(SERVICES) {
        if (*earlier, step) != ("provision_laptop", "provision_access") {
            assert_eq!(
                calls.get(service),
                Some(&1),
                "{earlier} completed before the kill"
            );
        }
    }
    assert_eq!(
        calls.get(SERVICES[position]),
        None,
        "killed in {step}'s latency"
    );
    resume_and_check(&scratch, &id, SLOW_MS, &format!("a SIGKILL in {step}"));
    let records = scratch.service_records();
    let (_, retried) = records
        .iter()
        .find(|(service, _)| service == SERVICES[position])
        .unwrap();
    assert_eq!(
        retried["attempt"], 2,
        "the step was taken over as attempt 2"
    );
    assert_eq!(retried["idempotency_key"], format!("{id}/{key}"));
}

#[test]
fn sigkill_in_the_middle_of_a_slow_step_then_resume() {
    kill_during("create_record");
}

#[test]
fn sigkill_in_the_middle_of_a_parallel_branch_then_resume() {
    kill_during("provision_laptop");
}

#[test]
fn retries_are_recorded_and_a_permanent_error_is_not_retried() {
    let scratch = Scratch::new();
    let result = run(scenario(
        &scratch,
        "retry",
        json!({"scenario": "retry", "succeed_after": 2}),
    )
    .arg("--json"))
    .expect_code(0)
    .json();
    assert_eq!(
        result["output"],
        json!({"result": {"attempt": 3, "failures": 2, "key": "flaky#000001"}})
    );
    let history = history_of(&scratch, "retry");
    let flaky = &history["steps"][0];
    let earlier = earlier_attempts(flaky);
    assert_eq!(
        earlier,
        [
            (1, "[flaky] attempt 1 failed", 50),
            (2, "[flaky] attempt 2 failed", 80)
        ],
        "each failed attempt is recorded as raised, with its backoff: {flaky}"
    );
    assert_eq!(
        (flaky["status"].as_str(), flaky["attempts"].as_u64()),
        (Some("completed"), Some(3))
    );

    // Out of attempts: the last error is the step's result, raised to the
    // workflow as a StepError with its code, and replayed as the same.
    let input = json!({"scenario": "retry", "succeed_after": 10});
    run(scenario(&scratch, "out", input.clone()).args(["--crash-after", "1"])).expect_code(3);
    assert_eq!(
        scratch.steps("out"),
        vec![("flaky#000001".into(), "failed".into(), 4)]
    );
    let replayed = run(scenario(&scratch, "out", input).arg("--json"))
        .expect_code(0)
        .json();
    assert_eq!(
        replayed["output"],
        json!({"error": "attempt 4 failed", "code": "flaky", "type": "StepError"})
    );
    assert_eq!(replayed["steps"][0]["outcome"], "replayed");

    // A PermanentError: one attempt, whatever the policy; replayed as the
    // same message and code.
    let input = json!({"scenario": "permanent"});
    run(scenario(&scratch, "perm", input.clone()).args(["--crash-after", "1"])).expect_code(3);
    assert_eq!(
        scratch.steps("perm"),
        vec![("refused#000001".into(), "failed".into(), 1)]
    );
    let refused = &history_of(&scratch, "perm")["steps"][0];
    assert_eq!(refused["earlier_attempts"], json!([]), "{refused}");
    assert_eq!(refused["error_code"], "no_account", "{refused}");
    let replayed = run(scenario(&scratch, "perm", input).arg("--json"))
        .expect_code(0)
        .json();
    assert_eq!(replayed["steps"][0]["outcome"], "replayed");
    assert_eq!(
        replayed["output"],
        json!({"error": "no such account", "code": "no_account", "permanent": false})
    );
}

#[test]
fn exceptions_are_recorded_with_their_type_message_and_traceback() {
    let scratch = Scratch::new();
    // From a step body: the step's error and the workflow's.
    let failed = run(scenario(
        &scratch,
        "boom",
        json!({"scenario": "explode", "what": "emp-9"}),
    )
    .arg("--json"))
    .expect_code(1)
    .json();
    assert_eq!(failed["status"], "failed");
    let error = failed["error"].as_str().unwrap();
    assert!(
        error.starts_with("ValueError: bad input: emp-9\nTraceback (most recent call last):"),
        "{error}"
    );
    assert!(
        error.contains("in explode"),
        "the traceback names the function: {error}"
    );
    let history = history_of(&scratch, "boom");
    assert_eq!(history["error"], failed["error"]);
    let step = &history["steps"][0];
    assert_eq!(step["status"], "failed", "{step}");
    assert_eq!(
        step["error"], failed["error"],
        "the step records the exception"
    );
    assert!(
        !error.contains("_sdk.py"),
        "the SDK's own frames are left out: {error}"
    );

    // From the workflow itself, with a `code` attribute.
    let failed = run(scenario(&scratch, "raise", json!({"scenario": "raise"})).arg("--json"))
        .expect_code(1)
        .json();
    let error = failed["error"].as_str().unwrap();
    assert!(
        error.starts_with("scenarios.QuotaExceeded: out of quota\nTraceback"),
        "{error}"
    );
    assert!(error.contains("in scenarios"), "{error}");
    assert_eq!(
        failed["error_code"], "quota",
        "the `code` attribute is the code"
    );
    let recorded = history_of(&scratch, "raise");
    assert_eq!(
        (&recorded["error"], &recorded["error_code"]),
        (&failed["error"], &failed["error_code"])
    );
}

#[test]
fn clock_randomness_context_and_failing_branches_are_recorded() {
    let scratch = Scratch::new();
    let input = json!({"scenario": "context"});
    // Crash once the clock, the random number and the uuid are recorded
    // (inside, now, random, uuid), then resume: they come back the same.
    run(scenario(&scratch, "ctx", input.clone()).args(["--crash-after", "4"])).expect_code(3);
    let done = run(scenario(&scratch, "ctx", input).arg("--json"))
        .expect_code(0)
        .json();
    let output = &done["output"];
    let history = history_of(&scratch, "ctx");
    let recorded = |key: &str| -> Value {
        let step = history["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["key"] == key)
            .unwrap_or_else(|| panic!("no step {key}: {history}"));
        step["output"].clone()
    };
    assert_eq!(output["workflow_id"], "ctx");
    assert_eq!(output["outside_step"], Value::Null);
    assert_eq!(output["inside"], "ctx/inside#000001");
    assert_eq!(output["uuid"], recorded("durable.uuid#000001"));
    assert_eq!(output["random"], recorded("durable.random#000001"));
    let random = output["random"].as_f64().unwrap();
    assert!((0.0..1.0).contains(&random), "{random}");
    assert!(
        output["now"].as_str().unwrap().ends_with("+00:00"),
        "{output}"
    );
    let keys: Vec<String> = scratch.steps("ctx").into_iter().map(|s| s.0).collect();
    for key in [
        "durable.now#000001",
        "durable.random#000001",
        "durable.uuid#000001",
        "durable.sleep#000001",
        "double#000001",
        "fail_branch#000001",
    ] {
        assert!(keys.iter().any(|k| k == key), "{key} in {keys:?}");
    }
    // A failed branch fails alone, with its message and code.
    assert_eq!(
        output["branches"],
        json!([42, {"error": "branch 7 refused", "code": "refused"}])
    );
}

#[test]
fn a_cancellation_raises_cancelled_and_the_compensation_still_runs() {
    let scratch = Scratch::new();
    let input = json!({"scenario": "compensate", "sleep_ms": 60_000});
    py_guests();
    let started = Instant::now();
    let child = spawn(scenario(&scratch, "trip", input).arg("--wait"));
    durable_tests::wait_until("the durable sleep", Duration::from_secs(60), || {
        let steps = scratch.try_steps("trip").unwrap_or_default();
        steps.iter().any(|s| s.0 == "durable.sleep#000001")
    });
    let requested = run(&mut scratch.host(&["cancel", "trip", "--json"]))
        .expect_code(0)
        .json();
    assert_eq!(requested["cancel"], "requested");
    let output = child.wait_with_output().unwrap();
    assert_eq!(
        output.status.code(),
        Some(6),
        "ends cancelled: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        started.elapsed() < Duration::from_secs(40),
        "the sleep ended early"
    );
    let keys: Vec<String> = scratch.steps("trip").into_iter().map(|s| s.0).collect();
    assert_eq!(
        keys,
        [
            "reserve#000001",
            "durable.sleep#000001",
            "durable.cancel#000001",
            "release#000001"
        ]
    );
    let history = history_of(&scratch, "trip");
    let release = history["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["key"] == "release#000001")
        .unwrap();
    assert_eq!(
        release["output"],
        json!({"released": "R-1", "type": "Cancelled", "code": "cancelled"})
    );
    assert_eq!(history["status"], "cancelled");
}

#[test]
fn an_input_of_the_wrong_shape_is_refused_and_nothing_is_recorded() {
    let scratch = Scratch::new();
    let refused = run(scratch
        .run(&py_guests().onboarding, "bad")
        .args(["--input", r#"{"id": "emp-x"}"#]))
    .expect_code(2);
    assert!(
        refused
            .stderr()
            .contains("does not have the shape the workflow expects"),
        "{}",
        refused.stderr()
    );
    assert!(refused.stderr().contains("'name'"), "{}", refused.stderr());
    assert_eq!(scratch.workflow_status("bad"), None, "the id is not spent");
    assert!(scratch.service_calls().is_empty());
}

#[test]
fn durable_build_explains_a_module_without_a_workflow_in_one_line_and_a_hint() {
    let python = &py_guests().python.clone();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("plain.py"),
        "import durable\n\ndef plain(ctx, input):\n    return input\n",
    )
    .unwrap();
    let output = Command::new(python)
        .args(["-m", "durable.build", "plain.py", "-o", "plain.wasm"])
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(
        lines[lines.len() - 2].starts_with("error: building plain.py failed: ")
            && lines[lines.len() - 2].contains("defines no workflow"),
        "{stderr}"
    );
    assert!(
        lines[lines.len() - 1].starts_with("  hint: add @durable.workflow"),
        "{stderr}"
    );
    assert!(!dir.path().join("plain.wasm").exists());

    // A missing file is told before anything runs.
    let output = Command::new(python.with_file_name("durable-build"))
        .args(["missing.py"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&output.stderr),
        "error: missing.py: no such file\n  hint: give the path of the workflow's .py file\n"
    );
}

#[test]
fn the_installed_package_ships_the_contract_as_a_file_of_its_own() {
    let python = py_guests().python.clone();
    let output = Command::new(&python)
        .args(["-c", "import durable.build as b; print(b.wit_dir())"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    assert!(
        dir.starts_with(python.ancestors().nth(2).unwrap()),
        "installed into the virtualenv, not linked to the sources: {}",
        dir.display()
    );
    let wit = dir.join("durable.wit");
    assert!(
        !std::fs::symlink_metadata(&wit).unwrap().is_symlink(),
        "{}",
        wit.display()
    );
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    assert_eq!(
        std::fs::read_to_string(&wit).unwrap(),
        std::fs::read_to_string(workspace.join("guest-sdk/wit/durable.wit")).unwrap()
    );
}

#[test]
fn a_child_workflow_is_started_once_and_its_output_awaited() {
    let scratch = Scratch::new();
    let component = &py_guests().scenarios;
    let waiting = run(&mut scenario(
        &scratch,
        "parent",
        json!({"scenario": "child"}),
    ))
    .expect_code(12)
    .stdout();
    assert!(waiting.contains("parent.kid"), "{waiting}");
    // Run again: still waiting, and the child is not started a second time.
    run(&mut scratch.run(component, "parent")).expect_code(12);
    run(&mut scratch.run(component, "parent.kid")).expect_code(0);
    let done = run(scratch.run(component, "parent").arg("--json"))
        .expect_code(0)
        .json();
    assert_eq!(done["output"], json!({"child": 2}));
    let children = scratch.number("SELECT COUNT(*) FROM workflows WHERE parent_id = 'parent'");
    assert_eq!(children, 1);
}

/// `durable-host run` of the HTTP fixture against `service` (granted).
fn charge(scratch: &Scratch, service: &HttpService, id: &str, input: Value) -> Command {
    let mut input = input;
    input["url"] = json!(service.url());
    let mut command = scratch.run(&py_guests().http, id);
    command.args([
        "--input",
        &input.to_string(),
        "--allow-http",
        service.address(),
    ]);
    command
}

/// Each call's method, path, idempotency key and whether it repeated a key.
fn http_calls(service: &HttpService) -> Vec<(String, String, String, bool)> {
    service
        .calls()
        .into_iter()
        .map(|c| {
            (
                c.method,
                c.path,
                c.idempotency_key.unwrap_or_default(),
                c.repeat,
            )
        })
        .collect()
}

#[test]
fn http_requests_from_a_step_carry_its_idempotency_keys_and_are_not_sent_again() {
    let scratch = Scratch::new();
    let service = HttpService::start();
    let done = run(charge(&scratch, &service, "pay-1", json!({})).arg("--json"))
        .expect_code(0)
        .json();
    assert_eq!(
        done["output"],
        json!({"charge": "charges-1", "receipt": "receipts-2"})
    );
    let expected = vec![
        (
            "POST".into(),
            "/v1/charges".into(),
            "pay-1/pay#000001".into(),
            false,
        ),
        (
            "POST".into(),
            "/v1/receipts".into(),
            "pay-1/pay#000001/2".into(),
            false,
        ),
    ];
    assert_eq!(http_calls(&service), expected);
    let bodies: Vec<_> = service.calls().into_iter().map(|c| c.body).collect();
    assert_eq!(bodies, [r#"{"cents":500}"#, "paid"]);

    let again = run(charge(&scratch, &service, "pay-1", json!({})).arg("--json"))
        .expect_code(0)
        .json();
    assert_eq!(again["output"], done["output"]);
    assert_eq!(
        http_calls(&service),
        expected,
        "a finished step sends nothing"
    );
}

#[test]
fn a_step_killed_between_its_requests_sends_them_again_with_the_same_keys() {
    let scratch = Scratch::new();
    let service = HttpService::start();
    let input = json!({"pause_s": 30});
    let mut first = spawn(&mut charge(&scratch, &service, "pay-k", input.clone()));
    durable_tests::wait_until("the first request", Duration::from_secs(60), || {
        !service.calls().is_empty()
    });
    first.kill().unwrap();
    first.wait().unwrap();

    let resumed = run(charge(&scratch, &service, "pay-k", input).arg("--json"))
        .expect_code(0)
        .json();
    // The same answer as the first time: the service knew the key.
    assert_eq!(resumed["output"]["charge"], "charges-1");
    assert_eq!(
        http_calls(&service),
        [
            (
                "POST".into(),
                "/v1/charges".into(),
                "pay-k/pay#000001".into(),
                false
            ),
            (
                "POST".into(),
                "/v1/charges".into(),
                "pay-k/pay#000001".into(),
                true
            ),
            (
                "POST".into(),
                "/v1/receipts".into(),
                "pay-k/pay#000001/2".into(),
                false
            ),
        ]
    );
}

#[test]
fn http_failures_name_the_request_and_what_to_do() {
    let scratch = Scratch::new();
    let service = HttpService::start();
    let url = service.url();

    // A destination not granted: refused by the host, not retried, nothing sent.
    let mut ungranted = scratch.run(&py_guests().http, "pay-r");
    let input = json!({"url": url, "fail_status": 503});
    ungranted.args(["--input", &input.to_string(), "--json"]);
    let failed = run(&mut ungranted).expect_code(1).json();
    let error = failed["error"].as_str().unwrap();
    let address = service.address();
    assert!(
        error.contains(&format!(
            "POST {url}/v1/charges was refused by the host: {address} is not among the \
             workflow's HTTP destinations (grant it with --allow-http {address})"
        )),
        "{error}"
    );
    assert!(service.calls().is_empty(), "refused before it was sent");
    let history = history_of(&scratch, "pay-r");
    assert_eq!(history["steps"][0]["attempts"], 1, "{history}");

    // A 503 is retried, with the URL shown without its query.
    let failed =
        run(charge(&scratch, &service, "pay-5", json!({"fail_status": 503})).arg("--json"))
            .expect_code(1)
            .json();
    let message = format!("GET {url}/status/503 answered 503");
    assert!(
        failed["error"].as_str().unwrap().contains(&message),
        "{failed}"
    );
    let history = history_of(&scratch, "pay-5");
    assert_eq!(history["steps"][1]["attempts"], 3, "{history}");
    assert!(!history.to_string().contains("secret"), "{history}");

    // A 404 is permanent: one attempt.
    run(&mut charge(
        &scratch,
        &service,
        "pay-4",
        json!({"fail_status": 404}),
    ))
    .expect_code(1);
    let history = history_of(&scratch, "pay-4");
    assert_eq!(history["steps"][1]["attempts"], 1, "{history}");
}

#[test]
fn a_workflow_importing_durable_http_without_the_http_build_is_refused_with_the_flag() {
    let scratch = Scratch::new();
    let app = scratch.path().join("needs_http.py");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/python-http/charge.py"),
        &app,
    )
    .unwrap();
    let output = Command::new(&py_guests().python)
        .args(["-m", "durable.build", "needs_http.py", "-o", "x.wasm"])
        .current_dir(scratch.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("durable.http needs a component built with outbound HTTP")
            && stderr.contains("hint: build with --http"),
        "{stderr}"
    );
    assert!(!scratch.path().join("x.wasm").exists());
}
