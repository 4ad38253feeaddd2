//! Child workflows: a parent starts children once (a replay neither starts
//! one again nor loses it), waits for them without holding a process, and
//! cancelling it cancels them.

use std::time::Duration;

use durable_tests::{Scratch, Server, artifacts, run, wait_until};
use serde_json::{Value, json};

/// The `children` scenario: `items` children of two `sleep_ms` steps each.
fn parent(items: u32, sleep_ms: u64) -> Value {
    json!({"scenario": "children", "items": items, "sleep_ms": sleep_ms})
}

/// `start scenarios --workflow-id ID --input INPUT [extra]`.
fn start(scratch: &Scratch, id: &str, input: &Value, extra: &[&str]) -> durable_tests::Run {
    let input = input.to_string();
    let mut args = vec!["start", "scenarios", "--workflow-id", id, "--input", &input];
    args.extend(extra);
    run(&mut scratch.host(&args))
}

/// `(id, parent_id, status)` of every workflow, by id.
fn family(scratch: &Scratch) -> Vec<(String, Option<String>, String)> {
    let text = |value: &Value| value.as_str().map(str::to_owned);
    scratch
        .query("SELECT id, parent_id, status FROM workflows ORDER BY id")
        .into_iter()
        .map(|row| {
            (
                text(&row[0]).unwrap(),
                text(&row[1]),
                text(&row[2]).unwrap(),
            )
        })
        .collect()
}

#[test]
fn serve_runs_the_children_once_and_resumes_the_parent_also_after_a_kill() {
    let scratch = Scratch::new();
    scratch.deploy("scenarios", &artifacts().scenarios);
    let mut first = Server::start(&scratch, "first", &[]);
    start(&scratch, "p", &parent(3, 300), &[]).expect_code(0);
    // Killed while the children run and the parent waits for them: after
    // its `all_started` step is recorded (a child may begin before it; a
    // kill inside a step runs that step again, at least once).
    wait_until("the children run", Duration::from_secs(30), || {
        scratch.number(
            "SELECT count(*) FROM steps WHERE workflow_id = 'p' \
             AND step_key = 'all_started#000001' AND status = 'completed'",
        ) == 1
            && scratch.number("SELECT count(*) FROM steps WHERE step_key = 'tick#000001'") >= 1
    });
    first.kill9();
    let _second = Server::start(&scratch, "second", &[]);
    let done = start(&scratch, "p", &parent(3, 300), &["--wait", "--json"])
        .expect_code(0)
        .json();
    assert_eq!(done["output"], json!({"children": [2, 2, 2]}));
    let family = family(&scratch);
    assert_eq!(family.len(), 4, "{family:?}");
    for (id, parent, status) in &family[1..] {
        assert!(id.starts_with("p.child-"), "{id}");
        assert_eq!(parent.as_deref(), Some("p"));
        assert_eq!(status, "completed");
    }
    // Each child started once, each completed step ran once.
    assert_eq!(
        scratch.number(
            "SELECT count(*) FROM steps WHERE workflow_id = 'p' AND name LIKE 'durable.child:%'"
        ),
        3
    );
    let effects = scratch.effects();
    let all_started = effects
        .iter()
        .filter(|k| *k == "all_started#000001")
        .count();
    assert_eq!(all_started, 1, "{effects:?}");
    // The children ran with the parent's grants: their steps reached the
    // ledger directory that only the parent's deployment grants.
    let ticks = effects.iter().filter(|k| *k == "tick#000002").count();
    assert!(ticks >= 3, "{effects:?}");
    let grants = scratch.query("SELECT grants FROM workflows WHERE parent_id = 'p'");
    assert!(
        grants.len() == 3
            && grants
                .iter()
                .all(|g| g[0].as_str().unwrap().contains("/ledger")),
        "{grants:?}"
    );
}

#[test]
fn a_cancelled_parent_starts_no_more_children_and_ends_cancelled() {
    let scratch = Scratch::new();
    scratch.deploy("scenarios", &artifacts().scenarios);
    // Two at a time: most children wait in the queue when the cancel comes,
    // and 20 ms apart, the parent is still starting them (for 20 s).
    let _server = Server::start(&scratch, "server", &["--concurrency", "2"]);
    let mut input = parent(1000, 100);
    input["pace_ms"] = json!(20);
    start(&scratch, "many", &input, &[]).expect_code(0);
    wait_until("a few children", Duration::from_secs(30), || {
        scratch.number("SELECT count(*) FROM workflows WHERE parent_id = 'many'") >= 5
    });
    run(&mut scratch.host(&["cancel", "many"])).expect_code(0);
    wait_until("the parent ends", Duration::from_secs(30), || {
        matches!(
            scratch.workflow_status("many").as_deref(),
            Some("cancelled" | "failed" | "completed")
        )
    });
    assert_eq!(
        scratch.workflow_status("many").as_deref(),
        Some("cancelled")
    );
    wait_until("every child ends", Duration::from_secs(30), || {
        scratch.number(
            "SELECT count(*) FROM workflows WHERE parent_id = 'many'
               AND status NOT IN ('completed', 'failed', 'cancelled')",
        ) == 0
    });
    let started = scratch.number("SELECT count(*) FROM workflows WHERE parent_id = 'many'");
    assert!(started < 1000, "it stopped starting children: {started}");
    let completed = scratch
        .number("SELECT count(*) FROM workflows WHERE parent_id = 'many' AND status = 'completed'");
    assert!(
        completed < 10,
        "the queued children were cancelled, not run: {completed}"
    );
}

#[test]
fn under_run_the_parent_waits_for_children_run_by_their_ids() {
    let scratch = Scratch::new();
    let component = &artifacts().scenarios;
    // Killed right after the first child's start is committed: the next
    // run does not start it again (its id would be taken).
    run(scratch
        .scenario("q", parent(2, 0))
        .args(["--crash", "durable.child:q.child-0:after"]))
    .expect_code(3);
    assert_eq!(family(&scratch).len(), 2);
    let waiting = run(&mut scratch.run(component, "q"))
        .expect_code(12)
        .stdout();
    assert!(
        waiting.contains("waiting for the child workflow q.child-0"),
        "{waiting}"
    );
    for child in ["q.child-0", "q.child-1"] {
        run(&mut scratch.run(component, child)).expect_code(0);
    }
    let done = run(scratch.run(component, "q").arg("--json"))
        .expect_code(0)
        .json();
    assert_eq!(done["output"], json!({"children": [2, 2]}));
    assert_eq!(family(&scratch).len(), 3);
}

#[test]
fn cancelling_a_parent_cancels_its_children_and_a_timeout_gives_up_waiting() {
    let scratch = Scratch::new();
    run(&mut scratch.scenario("r", parent(2, 0))).expect_code(12);
    run(&mut scratch.host(&["cancel", "r"])).expect_code(0);
    let family = family(&scratch);
    assert!(
        family.iter().all(|(_, _, status)| status == "cancelled"),
        "{family:?}"
    );
    // A child nobody runs, awaited with a timeout: the parent goes on.
    let mut input = parent(1, 0);
    input["timeout_ms"] = json!(200);
    let done = run(scratch.scenario("s", input).args(["--json", "--wait"]))
        .expect_code(0)
        .json();
    assert_eq!(done["output"], json!({"children": [null]}));
}
