//! Parallel steps: stable keys whatever finishes first, per-branch
//! checkpoints, failures confined to their branch, and concurrent writers
//! on one database.

use std::collections::BTreeSet;
use std::time::Instant;

use durable_tests::{Scratch, artifacts, employee, run, spawn};
use serde_json::{Value, json};

fn squares(n: u32) -> Value {
    json!((0..n).map(|i| i * i).collect::<Vec<_>>())
}

#[test]
fn branch_keys_follow_call_order_whatever_finishes_first() {
    let input = json!({"scenario": "parallel", "items": 8, "sleep_ms": 40});
    let want: Vec<String> = (1..=8).map(|i| format!("work#{i:06}")).collect();
    let mut completion_orders = BTreeSet::new();
    for attempt in 0..3 {
        let scratch = Scratch::new();
        let id = format!("keys-{attempt}");
        // Crash after a few branches, resume: keys must line up across runs.
        run(scratch
            .scenario(&id, input.clone())
            .args(["--crash-after", "3"]))
        .expect_code(3);
        let resumed = run(scratch.scenario(&id, input.clone()).arg("--json"))
            .expect_code(0)
            .json();
        assert_eq!(resumed["output"], squares(8));
        let keys: Vec<String> = scratch.steps(&id).into_iter().map(|s| s.0).collect();
        assert_eq!(keys, want, "keys in sequence order");
        let effects = scratch.effects();
        assert_eq!(
            effects.iter().collect::<BTreeSet<_>>().len(),
            8,
            "every branch ran"
        );
        completion_orders.insert(effects);
    }
    // Random sleeps make the branches finish in different orders; print it
    // rather than assert it, as chance could repeat an order.
    println!(
        "distinct completion orders seen: {}",
        completion_orders.len()
    );
}

#[test]
fn a_crash_with_one_branch_done_reruns_only_the_unfinished_one() {
    let input = json!({"scenario": "fast_and_slow", "sleep_ms": 1500});
    let scratch = Scratch::new();
    run(scratch
        .scenario("fs", input.clone())
        .args(["--crash", "fast:after"]))
    .expect_code(3);
    let steps = scratch.steps("fs");
    assert_eq!(
        steps,
        vec![
            ("fast#000001".into(), "completed".into(), 1),
            ("slow#000001".into(), "running".into(), 1)
        ]
    );
    assert_eq!(
        scratch.effects(),
        ["fast#000001"],
        "slow was still sleeping"
    );

    let resumed = run(scratch.scenario("fs", input).arg("--json"))
        .expect_code(0)
        .json();
    assert_eq!(
        resumed["output"],
        json!({"fast": 1, "slow": "slept 1500 ms"})
    );
    let outcomes: Vec<(&str, &str)> = resumed["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["key"].as_str().unwrap(), s["outcome"].as_str().unwrap()))
        .collect();
    assert_eq!(
        outcomes,
        [("fast#000001", "replayed"), ("slow#000001", "executed")]
    );
    assert_eq!(scratch.effects(), ["fast#000001", "slow#000001"]);
    assert_eq!(
        scratch.steps("fs")[1],
        ("slow#000001".into(), "completed".into(), 2)
    );
}

#[test]
fn a_panicking_branch_fails_alone() {
    let scratch = Scratch::new();
    let result = run(scratch
        .scenario("bp", json!({"scenario": "branch_panic"}))
        .arg("--json"))
    .expect_code(0)
    .json();
    assert_eq!(result["output"]["fine"], 9);
    let error = result["output"]["broken_error"].as_str().unwrap();
    assert!(
        error.contains("guest panicked") && error.contains("branch blew up"),
        "{error}"
    );
    assert_eq!(
        scratch.steps("bp"),
        vec![
            ("fine#000001".into(), "completed".into(), 1),
            ("broken#000001".into(), "failed".into(), 1)
        ]
    );
}

#[test]
fn sixty_four_branches_at_once() {
    let scratch = Scratch::new();
    let result = run(scratch
        .scenario(
            "wide",
            json!({"scenario": "parallel", "items": 64, "sleep_ms": 10}),
        )
        .arg("--json"))
    .expect_code(0)
    .json();
    assert_eq!(result["output"], squares(64));
    let steps = scratch.steps("wide");
    assert_eq!(steps.len(), 64);
    assert!(steps.iter().all(|s| s.1 == "completed" && s.2 == 1));
    assert_eq!(scratch.effects().len(), 64);
    assert!(scratch.integrity_ok());
}

#[test]
fn two_cpu_bound_branches_overlap_in_time() {
    // Each branch burns 400 ms of CPU. Run one after the other they would
    // take 800 ms; overlapping, each branch's duration covers most of the
    // other's. Checked through the recorded start and finish times, not a
    // wall-clock budget, so a loaded machine cannot fail it.
    let scratch = Scratch::new();
    run(&mut scratch.scenario(
        "cpu",
        json!({"scenario": "parallel", "items": 2, "burn_ms": 400}),
    ))
    .expect_code(0);
    let rows = scratch.query(
        "SELECT a.started_at, a.finished_at, b.started_at, b.finished_at FROM steps a, steps b
         WHERE a.step_key = 'work#000001' AND b.step_key = 'work#000002'",
    );
    let time = |i: usize| rows[0][i].as_i64().unwrap();
    let (start_a, end_a, start_b, end_b) = (time(0), time(1), time(2), time(3));
    let overlap = end_a.min(end_b) - start_a.max(start_b);
    assert!(
        overlap > 0,
        "the branches ran one after the other: {start_a}..{end_a}, {start_b}..{end_b}"
    );
}

#[test]
fn many_processes_share_one_database() {
    const PROCESSES: usize = 8;
    const WORKFLOWS: usize = 20;
    let scratch = Scratch::new();
    let started = Instant::now();
    std::thread::scope(|scope| {
        for process in 0..PROCESSES {
            let scratch = &scratch;
            scope.spawn(move || {
                for n in 0..WORKFLOWS {
                    let id = format!("p{process}-w{n}");
                    let mut command = scratch.run(&artifacts().onboarding, &id);
                    command.args(["--input", &employee(&id, 0), "--json"]);
                    let child = spawn(&mut command);
                    let output = child.wait_with_output().unwrap();
                    let stderr = String::from_utf8_lossy(&output.stderr);
                    assert!(output.status.success(), "{id} failed: {stderr}");
                    assert!(
                        !stderr.contains("locked") && !stderr.contains("busy"),
                        "{id}: {stderr}"
                    );
                }
            });
        }
    });
    println!(
        "{} workflows from {PROCESSES} processes in {:?}",
        PROCESSES * WORKFLOWS,
        started.elapsed()
    );
    let count = |sql: &str| scratch.number(sql);
    assert_eq!(
        count("SELECT count(*) FROM workflows WHERE status = 'completed'"),
        (PROCESSES * WORKFLOWS) as i64
    );
    assert_eq!(
        count("SELECT count(*) FROM steps WHERE status = 'completed'"),
        (PROCESSES * WORKFLOWS * 4) as i64
    );
    assert_eq!(
        count("SELECT count(*) FROM steps WHERE status <> 'completed'"),
        0
    );
    assert!(scratch.integrity_ok());
    let calls = scratch.service_calls();
    assert!(
        calls.values().all(|&n| n == PROCESSES * WORKFLOWS),
        "{calls:?}"
    );
}
