//! Crash torture: run onboarding workflows on one database, SIGKILL the host
//! at random moments, sometimes start two runners at once, and resume until
//! every workflow is done. Then check, from the mock-service ledgers and the
//! database, that no completed step ever ran again.
//!
//! `DURABLE_TORTURE_ITERATIONS` (default 50) sets the number of workflows;
//! `DURABLE_TORTURE_SEED` replays a run (the seed is printed).

use std::collections::{BTreeMap, BTreeSet};
use std::process::Child;
use std::time::Duration;

use durable_tests::{Rng, Scratch, artifacts, employee, env_number, run, spawn, torture_seed};

/// Steps recorded as completed, by idempotency key.
fn completed_steps(scratch: &Scratch) -> BTreeSet<String> {
    // A runner killed before it created the tables leaves none to read.
    if !scratch.tables().contains("steps") {
        return BTreeSet::new();
    }
    scratch.strings("SELECT workflow_id || '/' || step_key FROM steps WHERE status = 'completed'")
}

fn start(scratch: &Scratch, id: &str, latency_ms: u64) -> Child {
    let mut command = scratch.run(&artifacts().onboarding, id);
    command.args(["--input", &employee(id, latency_ms)]);
    spawn(&mut command)
}

/// Outcomes a runner may legitimately have when another runner got there
/// first: done, or refused (owner alive, or beaten to the claim: exit 5).
fn assert_acceptable(child: Child, id: &str) {
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    match output.status.code() {
        Some(0 | 5) => {}
        other => panic!("{id}: unexpected exit {other:?}: {stderr}"),
    }
}

#[test]
fn onboarding_survives_random_kills_and_concurrent_runners() {
    let iterations = env_number("DURABLE_TORTURE_ITERATIONS").unwrap_or(50);
    let seed = torture_seed();
    println!("torture: {iterations} workflows, seed {seed} (DURABLE_TORTURE_SEED to replay)");
    let mut rng = Rng(seed);

    let reference = Scratch::new();
    let template = run(reference.onboarding("REFID").arg("--json"))
        .expect_code(0)
        .json()["output"]
        .to_string();

    let scratch = Scratch::new();
    let (mut kills, mut concurrent_starts) = (0, 0);
    let mut kills_per_workflow: BTreeMap<String, usize> = BTreeMap::new();
    // What each kill left: the steps completed then, and their executions.
    let mut snapshots: Vec<(BTreeSet<String>, BTreeMap<String, usize>)> = Vec::new();

    for i in 0..iterations {
        let id = format!("t{i:03}");
        let latency = rng.below(25);
        for round in 0.. {
            assert!(round < 40, "{id} never finished");
            if round > 0 && rng.below(4) == 0 {
                concurrent_starts += 1;
                let (a, b) = (start(&scratch, &id, latency), start(&scratch, &id, latency));
                assert_acceptable(a, &id);
                assert_acceptable(b, &id);
            } else if rng.below(3) < 2 {
                let mut child = start(&scratch, &id, latency);
                std::thread::sleep(Duration::from_millis(rng.below(150)));
                let _ = child.kill();
                child.wait().unwrap();
                kills += 1;
                *kills_per_workflow.entry(id.clone()).or_default() += 1;
                snapshots.push((completed_steps(&scratch), scratch.step_executions()));
            } else {
                assert_acceptable(start(&scratch, &id, latency), &id);
            }
            if scratch.workflow_status(&id).as_deref() == Some("completed") {
                break;
            }
        }
    }

    let executions = scratch.step_executions();
    for (completed, counts) in &snapshots {
        for key in completed {
            assert_eq!(
                executions.get(key),
                counts.get(key),
                "{key} was completed at a kill, yet ran again afterwards"
            );
        }
    }
    for (key, &count) in &executions {
        let workflow = key.split('/').next().unwrap();
        let allowed = 1 + kills_per_workflow.get(workflow).copied().unwrap_or(0);
        assert!(
            count <= allowed,
            "{key} ran {count} times with {} kills",
            allowed - 1
        );
    }
    let listed = run(&mut scratch.host(&["list", "--json"]))
        .expect_code(0)
        .json();
    let workflows = listed.as_array().unwrap();
    assert_eq!(workflows.len() as u64, iterations);
    for workflow in workflows {
        let id = workflow["workflow_id"].as_str().unwrap();
        assert_eq!(workflow["status"], "completed", "{id} is stuck");
        assert_eq!(workflow["steps"]["completed"], 4, "{id}");
        assert_eq!(
            workflow["output"].to_string(),
            template.replace("REFID", id),
            "{id}"
        );
    }
    assert!(scratch.integrity_ok());

    let takeovers =
        scratch.number("SELECT CAST(coalesce(sum(attempts - 1), 0) AS BIGINT) FROM steps");
    let re_executions: usize = executions.values().map(|n| n - 1).sum();
    println!(
        "torture: {kills} kills, {concurrent_starts} double starts, {takeovers} step takeovers, \
         {re_executions} re-executed side effects (all of steps in flight at a kill)"
    );
}
