//! Outbound HTTP from steps: a real service on 127.0.0.1 counts the calls
//! that the real host lets through, with and without a crash.

use std::process::Stdio;
use std::time::Duration;

use durable_tests::{HttpService, Scratch, Server, artifacts, run, signal, spawn, wait_until};
use serde_json::{Value, json};

/// `run` of a scenario that calls `service`, granted `allow` (none: no flag).
fn call(scratch: &Scratch, id: &str, input: Value, allow: Option<&str>) -> std::process::Command {
    let mut command = scratch.scenario(id, input);
    if let Some(allow) = allow {
        command.args(["--allow-http", allow]);
    }
    command
}

fn charge(service: &HttpService, hold_ms: u64) -> Value {
    json!({ "scenario": "http", "url": format!("{}/v1/charges?token=s3cret", service.url()), "hold_ms": hold_ms })
}

/// The `requests` of `history --json`: `(step, text)`.
fn requests(scratch: &Scratch, id: &str) -> Vec<(String, String)> {
    let history = run(&mut scratch.host(&["history", id, "--json"]))
        .expect_code(0)
        .json();
    history["requests"]
        .as_array()
        .expect("history has its requests")
        .iter()
        .map(|line| {
            (
                line["step"].as_str().unwrap_or("-").to_owned(),
                line["text"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn a_completed_step_calls_once_and_later_runs_replay_its_answer() {
    let scratch = Scratch::new();
    let service = HttpService::start();
    let input = charge(&service, 0);
    let first =
        run(call(&scratch, "order-1", input.clone(), Some(service.address())).arg("--json"))
            .expect_code(0)
            .json();
    let calls = service.calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].method, "POST");
    assert_eq!(calls[0].path, "/v1/charges?token=s3cret");
    assert_eq!(calls[0].body, r#"{"amount_cents":500}"#);
    assert_eq!(
        calls[0].idempotency_key.as_deref(),
        Some("order-1/charge#000001"),
        "the step's idempotency key goes with the request"
    );
    assert_eq!(first["output"]["id"], "charges-1");

    // Finished: the answer comes from the database, the service is not called.
    let again = run(call(&scratch, "order-1", input, Some(service.address())).arg("--json"))
        .expect_code(0)
        .json();
    assert_eq!(again["output"], first["output"]);
    assert_eq!(service.calls().len(), 1);

    // The history says what the step called, without the query's secret.
    let expected = format!("POST http://{}/v1/charges?...: 200 in ", service.address());
    let recorded = requests(&scratch, "order-1");
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    assert_eq!(recorded[0].0, "charge#000001");
    assert!(recorded[0].1.starts_with(&expected), "{recorded:?}");
    let human = run(&mut scratch.host(&["history", "order-1"])).expect_code(0);
    assert!(
        human.stdout().contains("http requests:"),
        "{}",
        human.stdout()
    );
    assert!(human.stdout().contains(&expected), "{}", human.stdout());
    assert!(!human.stdout().contains("s3cret"), "{}", human.stdout());
}

#[test]
fn the_checkout_example_calls_each_service_once_across_a_crash() {
    let scratch = Scratch::new();
    let service = HttpService::start();
    let input = json!({
        "order_id": "order-42",
        "amount_cents": 1999,
        "email": "ada@example.com",
        "services": service.url(),
    })
    .to_string();
    let checkout = |extra: &[&str]| {
        let mut command = scratch.host(&["run", artifacts().checkout.to_str().unwrap()]);
        command
            .args(["--workflow-id", "order-42", "--input", &input])
            .args(["--allow-http", service.address()])
            .args(extra)
            .stdin(Stdio::null());
        run(&mut command)
    };
    checkout(&["--crash", "ship:before"]).expect_code(3);
    let receipt = checkout(&["--json"]).expect_code(0).json();
    checkout(&[]).expect_code(0);
    let paths: Vec<String> = service.calls().into_iter().map(|c| c.path).collect();
    assert_eq!(
        paths,
        [
            "/payments/charges",
            "/shipping/shipments",
            "/email/messages"
        ]
    );
    assert_eq!(
        receipt["output"],
        json!({
            "order_id": "order-42",
            "charge_id": "charges-1",
            "shipment_id": "shipments-2",
            "receipt_email_id": "messages-3",
        })
    );
}

#[test]
fn a_kill_between_the_call_and_its_checkpoint_repeats_it_with_the_same_key() {
    let scratch = Scratch::new();
    let service = HttpService::start();
    // The first attempt holds the step open after its call: killed there.
    let input = charge(&service, 60_000);
    let mut first = spawn(
        call(&scratch, "order-2", input.clone(), Some(service.address())).stdout(Stdio::null()),
    );
    wait_until("the first call", Duration::from_secs(60), || {
        service.calls().len() == 1
    });
    signal(first.id(), "-KILL");
    first.wait().unwrap();

    let resumed = run(call(&scratch, "order-2", input, Some(service.address())).arg("--json"))
        .expect_code(0)
        .json();
    let calls = service.calls();
    assert_eq!(calls.len(), 2, "the unfinished step runs again: {calls:?}");
    assert_eq!(calls[0].idempotency_key, calls[1].idempotency_key);
    assert_eq!(
        calls[1].idempotency_key.as_deref(),
        Some("order-2/charge#000001")
    );
    assert!(calls[1].repeat);
    // The service recognised the repeat: one charge, and the step kept it.
    assert_eq!(resumed["output"]["id"], "charges-1");
    let steps = scratch.steps("order-2");
    assert_eq!(
        steps,
        [("charge#000001".to_owned(), "completed".to_owned(), 2)]
    );
}

#[test]
fn a_destination_not_granted_is_refused_with_the_flag_that_allows_it() {
    let scratch = Scratch::new();
    let service = HttpService::start();
    let failed = run(&mut call(
        &scratch,
        "order-3",
        charge(&service, 0),
        Some("127.0.0.1:1"),
    ))
    .expect_code(1);
    assert!(service.calls().is_empty());
    let address = service.address();
    let stdout = failed.stdout();
    assert!(
        stdout.contains(&format!(
            "error: POST http://{address}/v1/charges was refused by the host: {address} is not \
             among the workflow's HTTP destinations (grant it with --allow-http {address})"
        )),
        "{stdout}"
    );
    // The host's own account, with the step, names the flag to use.
    let recorded = requests(&scratch, "order-3");
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    assert_eq!(recorded[0].0, "charge#000001");
    assert_eq!(
        recorded[0].1,
        format!(
            "POST http://{address}/v1/charges?... refused: {address} is not allowed (the \
             workflow may call 127.0.0.1:1); grant it with --allow-http {address} (or \
             --allow-http 127.0.0.1 for every port)"
        )
    );

    // Run again with the grant the error named: it has failed, so nothing
    // runs and its stored result is printed, with the way to continue it.
    let again = run(&mut call(
        &scratch,
        "order-3",
        charge(&service, 0),
        Some(address),
    ))
    .expect_code(1);
    assert!(service.calls().is_empty());
    let stdout = again.stdout();
    assert!(
        stdout.contains("already failed; nothing ran")
            && stdout.contains("resume order-3 COMPONENT")
            && stdout.contains("was refused by the host"),
        "{stdout}"
    );
}

#[test]
fn without_the_flag_a_guest_has_no_network() {
    let scratch = Scratch::new();
    let service = HttpService::start();
    run(&mut call(&scratch, "order-4", charge(&service, 0), None)).expect_code(1);
    assert!(service.calls().is_empty());
    let recorded = requests(&scratch, "order-4");
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    assert!(
        recorded[0]
            .1
            .contains("(the workflow was granted no HTTP destinations)"),
        "{recorded:?}"
    );
}

#[test]
fn a_request_from_workflow_code_between_steps_is_refused() {
    let scratch = Scratch::new();
    let service = HttpService::start();
    let input = json!({ "scenario": "http_between", "url": service.url() });
    let output = run(call(&scratch, "between", input, Some(service.address())).arg("--json"))
        .expect_code(0)
        .json();
    assert!(service.calls().is_empty());
    let host = output["output"]["host"].as_str().unwrap();
    assert!(host.contains("HttpRequestDenied"), "{host}");
    let sdk = output["output"]["sdk"].as_str().unwrap();
    assert!(
        sdk.contains("was not sent: outbound HTTP is allowed only inside a step body"),
        "{sdk}"
    );
    let recorded = requests(&scratch, "between");
    assert_eq!(recorded.len(), 1, "the SDK sent nothing: {recorded:?}");
    assert_eq!(recorded[0].0, "-");
    assert!(
        recorded[0].1.ends_with(
            "refused: outbound HTTP is allowed only while a step executes (the answer of a \
             request made between steps would not be replayed): make the request in a step"
        ),
        "{recorded:?}"
    );
}

#[test]
fn parallel_branches_call_with_their_own_keys() {
    let scratch = Scratch::new();
    let service = HttpService::start();
    let input = json!({ "scenario": "http_branches", "url": format!("{}/notify", service.url()), "items": 3 });
    run(&mut call(&scratch, "fan-out", input, Some("127.0.0.1"))).expect_code(0);
    let mut keys: Vec<String> = service
        .calls()
        .into_iter()
        .filter_map(|call| call.idempotency_key)
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "fan-out/notify#000001",
            "fan-out/notify#000002",
            "fan-out/notify#000003"
        ]
    );
    let mut steps: Vec<String> = requests(&scratch, "fan-out")
        .into_iter()
        .map(|(step, _)| step)
        .collect();
    steps.sort();
    assert_eq!(steps, ["notify#000001", "notify#000002", "notify#000003"]);
}

#[test]
fn the_grant_is_recorded_kept_on_resume_and_carried_by_a_deployment() {
    let scratch = Scratch::new();
    let service = HttpService::start();
    let input = charge(&service, 0);
    run(call(
        &scratch,
        "widened",
        json!({ "scenario": "boom" }),
        Some(service.address()),
    )
    .args(["--crash", "first:after"]))
    .expect_code(3);
    // A resume may not widen (or narrow) what the workflow may call.
    let refused = run(&mut call(
        &scratch,
        "widened",
        json!({ "scenario": "boom" }),
        Some("evil.example"),
    ))
    .expect_code(2);
    let stderr = refused.stderr();
    assert!(
        stderr.contains(&format!(
            "--allow-http {} was granted at the start, not now",
            service.address()
        )) && stderr.contains("--allow-http evil.example is granted now, not at the start"),
        "{stderr}"
    );
    // A resume that names no grants gets the recorded ones, the HTTP
    // destination included.
    let kept_input = charge(&service, 0).to_string();
    run(scratch.scenario("kept", charge(&service, 0)).args([
        "--allow-http",
        service.address(),
        "--crash",
        "charge:before",
    ]))
    .expect_code(3);
    let scenarios = artifacts().scenarios.to_str().unwrap();
    let mut resume = scratch.host(&[
        "run",
        scenarios,
        "--workflow-id",
        "kept",
        "--input",
        &kept_input,
    ]);
    run(resume.stdin(Stdio::null())).expect_code(0);
    assert_eq!(service.calls().len(), 1, "the resumed step called");

    // Under serve, the deployment's grant is the workflow's.
    let ledger = format!("{}::/ledger", scratch.path().join("ledger").display());
    run(&mut scratch.host(&[
        "deploy",
        "payments",
        artifacts().scenarios.to_str().unwrap(),
        "--dir",
        &ledger,
        "--allow-http",
        service.address(),
    ]))
    .expect_code(0);
    let _server = Server::start(&scratch, "serve", &[]);
    let done = run(&mut scratch.host(&[
        "start",
        "payments",
        "--workflow-id",
        "served",
        "--input",
        &input.to_string(),
        "--wait",
        "--json",
    ]))
    .expect_code(0)
    .json();
    assert_eq!(done["output"]["id"], "charges-2");
    assert_eq!(service.calls().len(), 2);
    assert_eq!(
        service.calls()[1].idempotency_key.as_deref(),
        Some("served/charge#000001")
    );
}
