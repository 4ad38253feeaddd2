//! Operating workflows: list, history, recover, cancel; retries, durable
//! sleep, recorded time and randomness; the compiled-component cache.

use std::time::{Duration, Instant};

use durable_tests::{Scratch, artifacts, earlier_attempts, run, sha256_of, spawn};
use serde_json::json;

#[test]
fn list_shows_every_workflow_with_status_and_step_counts() {
    let scratch = Scratch::new();
    run(&mut scratch.onboarding("done")).expect_code(0);
    run(scratch.onboarding("halfway").args(["--crash-after", "1"])).expect_code(3);
    run(&mut scratch.scenario("broken", json!({"scenario": "fail"}))).expect_code(1);

    let listed = run(&mut scratch.host(&["list", "--json"]))
        .expect_code(0)
        .json();
    let by_id = |id: &str| {
        listed
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["workflow_id"] == id)
            .cloned()
            .unwrap()
    };
    assert_eq!(by_id("done")["status"], "completed");
    assert_eq!(
        by_id("done")["steps"],
        json!({"total": 4, "completed": 4, "failed": 0, "running": 0})
    );
    assert_eq!(by_id("halfway")["status"], "running");
    assert_eq!(by_id("halfway")["steps"]["completed"], 1);
    assert_eq!(by_id("broken")["status"], "failed");
    assert_eq!(by_id("broken")["error"], "the workflow gave up on purpose");

    let running = run(&mut scratch.host(&["list", "--status", "running", "--json"]))
        .expect_code(0)
        .json();
    assert_eq!(running.as_array().unwrap().len(), 1);
    // --search keeps the ids that contain the text.
    let found = run(&mut scratch.host(&["list", "--search", "alf", "--json"]))
        .expect_code(0)
        .json();
    assert_eq!(found.as_array().unwrap().len(), 1, "{found}");
    assert_eq!(found[0]["workflow_id"], "halfway");
    let none = run(&mut scratch.host(&["list", "--search", "zzz", "--status", "failed"]))
        .expect_code(0)
        .stdout();
    assert_eq!(
        none.trim(),
        "no workflows with status failed whose id contains `zzz`"
    );

    let table = run(&mut scratch.host(&["list"])).expect_code(0).stdout();
    let header = table.lines().next().unwrap();
    assert!(
        header.starts_with("WORKFLOW")
            && header.contains("STATUS")
            && header.contains("STEPS DONE"),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("halfway") && l.contains("running") && l.contains("1/")),
        "{table}"
    );
}

#[test]
fn history_shows_each_step_with_attempts_durations_and_results() {
    let scratch = Scratch::new();
    run(scratch
        .onboarding("h")
        .args(["--crash", "create_record:before"]))
    .expect_code(3);
    run(&mut scratch.onboarding("h")).expect_code(0);

    let history = run(&mut scratch.host(&["history", "h", "--json"]))
        .expect_code(0)
        .json();
    assert_eq!(history["status"], "completed");
    let steps = history["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 4);
    assert_eq!(steps[0]["key"], "create_record#000001");
    assert_eq!(steps[0]["attempts"], 2, "the takeover is visible");
    let interrupted = steps[0]["earlier_attempts"][0]["error"].as_str().unwrap();
    assert!(interrupted.starts_with("interrupted"), "{interrupted}");
    assert_eq!(steps[0]["output"], "HR-h");
    assert!(
        steps
            .iter()
            .all(|s| s["status"] == "completed" && s["duration_ms"].is_i64())
    );

    let table = run(&mut scratch.host(&["history", "h"]))
        .expect_code(0)
        .stdout();
    assert!(
        table.contains("ATTEMPTS") && table.contains("RESULT"),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.contains("create_record#000001") && l.contains("completed  2")),
        "{table}"
    );
    assert!(table.contains("output: {"), "{table}");
}

#[test]
fn recover_resumes_what_this_component_started_and_nothing_else() {
    let scratch = Scratch::new();
    for (id, n) in [("r1", "1"), ("r2", "2"), ("r3", "3")] {
        run(scratch.onboarding(id).args(["--crash-after", n])).expect_code(3);
    }
    run(&mut scratch.onboarding("finished")).expect_code(0);
    run(scratch
        .scenario("other", json!({"scenario": "loop", "items": 2}))
        .args(["--crash-after", "1"]))
    .expect_code(3);

    // No grants on the command line: each workflow resumes with the
    // directories it was started with.
    let mut command = scratch.host(&["recover"]);
    command.arg(&artifacts().onboarding).arg("--json");
    let summary = run(&mut command).expect_code(0).json();
    assert_eq!(summary["resumed"], 3);
    assert_eq!(summary["completed"], 3);
    assert_eq!(summary["skipped"], 0);
    let recovered: Vec<&str> = summary["workflows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["workflow_id"].as_str().unwrap())
        .collect();
    assert_eq!(recovered.len(), 3);
    assert!(
        ["r1", "r2", "r3"].iter().all(|id| recovered.contains(id)),
        "{recovered:?}"
    );

    // Four onboardings: each completed step ran once. Only r2 crashed with a
    // parallel branch in flight, which may have run twice.
    let calls = scratch.service_calls();
    assert_eq!((calls["hr"], calls["mail"]), (4, 4), "{calls:?}");
    assert!(
        calls["it"] >= 4 && calls["iam"] >= 4 && calls["it"] + calls["iam"] <= 9,
        "{calls:?}"
    );
    let other = scratch.workflow_status("other").unwrap();
    assert_eq!(
        other, "running",
        "another component's workflow is left alone"
    );
}

#[test]
fn a_cancelled_workflow_is_never_resumed() {
    let scratch = Scratch::new();
    run(scratch.onboarding("c").args(["--crash-after", "1"])).expect_code(3);
    let cancelled = run(&mut scratch.host(&["cancel", "c"]))
        .expect_code(0)
        .stdout();
    assert!(cancelled.contains("workflow c cancelled"), "{cancelled}");

    let again = run(scratch.onboarding("c").arg("--json"))
        .expect_code(6)
        .json();
    assert_eq!(again["status"], "cancelled");
    assert_eq!(again["already_finished"], true);
    assert_eq!(
        scratch.service_calls().values().sum::<usize>(),
        1,
        "nothing ran after the cancel"
    );
    let second = run(&mut scratch.host(&["cancel", "c"]))
        .expect_code(0)
        .stdout();
    assert!(second.contains("already cancelled"), "{second}");
}

/// Start the `compensate` scenario as `id` (reserve, a long durable sleep,
/// release when cancelled) and cancel it once it sleeps.
fn cancel_while_sleeping(scratch: &Scratch, id: &str, extra: &[&str]) -> std::process::Output {
    let child = spawn(
        scratch
            .scenario(id, json!({"scenario": "compensate", "sleep_ms": 60_000}))
            .arg("--wait")
            .args(extra),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !scratch
        .try_steps(id)
        .unwrap_or_default()
        .iter()
        .any(|s| s.0 == "durable.sleep#000001")
    {
        assert!(Instant::now() < deadline, "the workflow never slept");
        std::thread::sleep(Duration::from_millis(10));
    }
    let requested = run(&mut scratch.host(&["cancel", id, "--json"]))
        .expect_code(0)
        .json();
    assert_eq!(requested["cancel"], "requested");
    child.wait_with_output().unwrap()
}

#[test]
fn a_cancelled_workflow_runs_its_compensation_and_ends_cancelled() {
    let scratch = Scratch::new();
    let started = Instant::now();
    let output = cancel_while_sleeping(&scratch, "trip", &[]);
    assert_eq!(
        output.status.code(),
        Some(6),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // The sleep ended early (within the heartbeat's few seconds, not 60 s),
    // the cancellation is in the history where it was handed over, and the
    // compensation step ran.
    assert!(started.elapsed() < Duration::from_secs(30));
    let keys: Vec<(String, String)> = scratch
        .steps("trip")
        .into_iter()
        .map(|(key, status, _)| (key, status))
        .collect();
    let completed = |k: &str| (k.to_owned(), "completed".to_owned());
    assert_eq!(
        keys,
        [
            completed("reserve#000001"),
            completed("durable.sleep#000001"),
            completed("durable.cancel#000001"),
            completed("release#000001"),
        ]
    );
    assert_eq!(scratch.effects(), ["reserve#000001", "release#000001"]);
    assert_eq!(
        scratch.workflow_status("trip").as_deref(),
        Some("cancelled")
    );
}

#[test]
fn a_crash_during_compensation_replays_the_cancellation_where_it_was() {
    let scratch = Scratch::new();
    let output = cancel_while_sleeping(&scratch, "trip", &["--crash", "release:after"]);
    assert_eq!(
        output.status.code(),
        Some(3),
        "simulated crash after release"
    );
    // The resumed run replays the sleep, is handed the cancellation at the
    // same point (without sleeping out the minute), replays the release and
    // ends cancelled; no step runs twice.
    let started = Instant::now();
    let resumed = run(&mut scratch.scenario(
        "trip",
        json!({"scenario": "compensate", "sleep_ms": 60_000}),
    ))
    .expect_code(6);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{}",
        resumed.stdout()
    );
    assert_eq!(scratch.effects(), ["reserve#000001", "release#000001"]);
    assert_eq!(
        scratch.workflow_status("trip").as_deref(),
        Some("cancelled")
    );
}

#[test]
fn cancelling_a_running_workflow_stops_it_at_the_next_step() {
    let scratch = Scratch::new();
    let child = spawn(&mut scratch.scenario(
        "long",
        json!({"scenario": "slow", "items": 100, "sleep_ms": 50}),
    ));
    let deadline = Instant::now() + Duration::from_secs(30);
    while scratch
        .try_steps("long")
        .unwrap_or_default()
        .iter()
        .filter(|s| s.1 == "completed")
        .count()
        < 2
    {
        assert!(Instant::now() < deadline, "the workflow never got going");
        std::thread::sleep(Duration::from_millis(10));
    }
    let requested = run(&mut scratch.host(&["cancel", "long", "--json"]))
        .expect_code(0)
        .json();
    assert_eq!(requested["cancel"], "requested");

    let output = child.wait_with_output().unwrap();
    assert_eq!(
        output.status.code(),
        Some(6),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    let steps = scratch.steps("long");
    assert!(steps.len() < 100, "it stopped early: {} steps", steps.len());
    assert!(
        steps.iter().all(|s| s.1 == "completed"),
        "it stopped at a step boundary: {steps:?}"
    );
    assert_eq!(
        scratch.workflow_status("long").as_deref(),
        Some("cancelled")
    );
}

#[test]
fn retries_are_counted_and_recorded() {
    let scratch = Scratch::new();
    // Succeeds on its third attempt, after backoffs of 50 and 80 ms.
    let result = run(scratch
        .scenario("ok", json!({"scenario": "retry", "items": 3}))
        .arg("--json"))
    .expect_code(0)
    .json();
    assert_eq!(result["output"]["result"], json!({"Ok": 3}));
    let history = run(&mut scratch.host(&["history", "ok", "--json"]))
        .expect_code(0)
        .json();
    let flaky = &history["steps"][0];
    let earlier = earlier_attempts(flaky);
    assert_eq!(
        earlier,
        [(1, "attempt 1 failed", 50), (2, "attempt 2 failed", 80)],
        "each failed attempt is recorded as raised, with its backoff"
    );
    assert_eq!(
        (flaky["status"].as_str(), flaky["attempts"].as_u64()),
        (Some("completed"), Some(3))
    );
    assert!(
        flaky["duration_ms"].as_i64().unwrap() >= 130,
        "backed off 50 + 80 ms: {flaky}"
    );
    assert_eq!(
        scratch
            .effects()
            .iter()
            .filter(|k| *k == "flaky#000001")
            .count(),
        3
    );

    // Never succeeds: four attempts, then the last error is the result, and
    // a replay hands back the same error.
    let input = json!({"scenario": "retry", "items": 99});
    run(scratch
        .scenario("no", input.clone())
        .args(["--crash-after", "1"]))
    .expect_code(3);
    let steps = scratch.steps("no");
    assert_eq!(steps, vec![("flaky#000001".into(), "failed".into(), 4)]);
    let replayed = run(scratch.scenario("no", input).arg("--json"))
        .expect_code(0)
        .json();
    assert_eq!(
        replayed["output"]["result"],
        json!({"Err": "attempt 4 failed"})
    );
    assert_eq!(replayed["steps"][0]["outcome"], "replayed");

    // A permanent error is not retried.
    run(&mut scratch.scenario("perm", json!({"scenario": "retry_permanent"}))).expect_code(0);
    assert_eq!(
        scratch.steps("perm"),
        vec![("refused#000001".into(), "failed".into(), 1)]
    );
}

#[test]
fn a_durable_sleep_resumed_after_a_kill_sleeps_only_what_is_left() {
    let scratch = Scratch::new();
    let input = json!({"scenario": "sleep", "sleep_ms": 4000});
    let mut child = spawn(&mut scratch.scenario("nap", input.clone()));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !scratch
        .try_steps("nap")
        .unwrap_or_default()
        .iter()
        .any(|s| s.0 == "durable.sleep#000001")
    {
        assert!(Instant::now() < deadline, "the sleep never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(1500));
    child.kill().unwrap();
    child.wait().unwrap();

    let resumed_at = Instant::now();
    run(&mut scratch.scenario("nap", input)).expect_code(0);
    let resumed_for = resumed_at.elapsed();
    let row = scratch.query(
        "SELECT s.output_json, a.started_at FROM steps s, steps a
         WHERE s.step_key = 'durable.sleep#000001' AND a.step_key = 'after_sleep#000001'",
    );
    let (wake_at, after_started) = (row[0][0].as_str().unwrap(), row[0][1].as_i64().unwrap());
    assert!(
        after_started >= wake_at.parse::<i64>().unwrap(),
        "it slept until the recorded wake-up time"
    );
    assert!(
        resumed_for < Duration::from_millis(3800),
        "it did not sleep the whole 4 s again: {resumed_for:?}"
    );
    assert_eq!(scratch.effects(), ["after_sleep#000001"]);
}

#[test]
fn time_and_randomness_replay_identically() {
    let scratch = Scratch::new();
    let input = json!({"scenario": "clock"});
    run(scratch
        .scenario("clock", input.clone())
        .args(["--crash-after", "3"]))
    .expect_code(3);
    let recorded: Vec<String> = [
        "durable.now#000001",
        "durable.random#000001",
        "durable.uuid#000001",
    ]
    .iter()
    .map(|key| {
        let sql = format!("SELECT output_json FROM steps WHERE step_key = '{key}'");
        scratch.strings(&sql).into_iter().next().unwrap()
    })
    .collect();
    std::thread::sleep(Duration::from_millis(20));
    let resumed = run(scratch.scenario("clock", input).arg("--json"))
        .expect_code(0)
        .json();
    let output = &resumed["output"];
    assert_eq!(output["now_ms"].to_string(), recorded[0]);
    assert_eq!(output["random"].to_string(), recorded[1]);
    assert_eq!(output["uuid"].to_string(), recorded[2]);
    let uuid = output["uuid"].as_str().unwrap();
    assert_eq!(
        (uuid.len(), &uuid[14..15]),
        (36, "4"),
        "a version 4 UUID: {uuid}"
    );
}

#[test]
fn a_warm_start_loads_the_compiled_component_from_the_cache() {
    let scratch = Scratch::new();
    let cache = scratch.path().join("cache");
    let cache_arg = cache.display().to_string();
    run(scratch.onboarding("cold").args(["--cache-dir", &cache_arg])).expect_code(0);
    // One compiled component, and the manifest of its hash beside it.
    let entries: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "cwasm"))
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    let modified = std::fs::metadata(&entries[0]).unwrap().modified().unwrap();

    run(scratch.onboarding("warm").args(["--cache-dir", &cache_arg])).expect_code(0);
    assert_eq!(
        std::fs::metadata(&entries[0]).unwrap().modified().unwrap(),
        modified,
        "reused, not rewritten"
    );

    // A damaged entry is recompiled, not trusted.
    std::fs::write(&entries[0], b"garbage").unwrap();
    run(scratch
        .onboarding("repaired")
        .args(["--cache-dir", &cache_arg]))
    .expect_code(0);
    assert!(
        std::fs::metadata(&entries[0]).unwrap().len() > 1000,
        "rewritten"
    );
}

#[test]
fn a_long_durable_sleep_ends_the_run_and_a_later_run_continues_it() {
    let scratch = Scratch::new();
    let input = json!({"scenario": "sleep", "sleep_ms": 6_000});
    let started = Instant::now();
    // No process waits out the sleep: the run ends with the workflow
    // `sleeping` and says until when.
    let slept = run(scratch.scenario("nap", input.clone()).arg("--json"))
        .expect_code(10)
        .json();
    assert_eq!(slept["status"], "sleeping");
    let wake_at = slept["wake_at_ms"].as_i64().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "it did not wait"
    );
    assert_eq!(scratch.workflow_status("nap").as_deref(), Some("sleeping"));

    // Run again too early: it replays, finds the sleep not over, sleeps on.
    run(&mut scratch.scenario("nap", input.clone())).expect_code(10);

    // Once it is due, a run finishes it without sleeping again.
    let left = wake_at - durable_host_now();
    if left > 0 {
        std::thread::sleep(Duration::from_millis(left as u64 + 50));
    }
    let done = run(scratch.scenario("nap", input).arg("--json"))
        .expect_code(0)
        .json();
    assert_eq!(done["status"], "completed");
    assert_eq!(
        scratch
            .steps("nap")
            .iter()
            .filter(|s| s.0.starts_with("durable.sleep"))
            .count(),
        1,
        "one recorded sleep"
    );
}

fn durable_host_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[test]
fn a_compiled_entry_swapped_for_another_components_is_not_run() {
    let scratch = Scratch::new();
    let cache = scratch.path().join("cache");
    let cache_arg = cache.display().to_string();
    // Fill the cache with both components' compiled code.
    run(scratch
        .onboarding("first")
        .args(["--cache-dir", &cache_arg]))
    .expect_code(0);
    run(scratch
        .scenario("other", json!({"scenario": "loop", "items": 1}))
        .args(["--cache-dir", &cache_arg]))
    .expect_code(0);
    let entries: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "cwasm"))
        .collect();
    assert_eq!(entries.len(), 2, "{entries:?}");
    let onboarding_sha = sha256_of(&artifacts().onboarding);
    let (onboarding, other): (Vec<_>, Vec<_>) = entries
        .iter()
        .partition(|path| path.to_string_lossy().contains(&onboarding_sha));
    // Someone copies the other component's native code over onboarding's.
    std::fs::copy(other[0], onboarding[0]).unwrap();

    // The host notices (the manifest names another hash), compiles the
    // real onboarding again and runs it: its mock services are called.
    let before = scratch.service_calls().values().sum::<usize>();
    run(scratch
        .onboarding("second")
        .args(["--cache-dir", &cache_arg]))
    .expect_code(0);
    assert_eq!(scratch.service_calls().values().sum::<usize>(), before + 4);
    let recorded = scratch.strings("SELECT component_sha256 FROM workflows WHERE id = 'second'");
    assert_eq!(recorded.into_iter().next().unwrap(), onboarding_sha);
}
