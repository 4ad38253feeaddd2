//! Replay semantics: step keys in loops and branches, automatic ids,
//! recorded errors, and the non-determinism guard.

use durable_tests::{Scratch, run};
use serde_json::json;

#[test]
fn a_step_name_used_in_a_loop_gets_one_key_per_call_and_replays() {
    let input = json!({"scenario": "loop", "items": 5});
    let reference = Scratch::new();
    let expected = run(reference.scenario("loop", input.clone()).arg("--json"))
        .expect_code(0)
        .json();
    assert_eq!(
        expected["output"],
        json!({"charged": [0, 10, 20, 30, 40], "total": 100})
    );

    let keys: Vec<String> = reference.steps("loop").into_iter().map(|s| s.0).collect();
    let want = [
        "charge#000001",
        "audit#000001",
        "charge#000002",
        "charge#000003",
        "audit#000002",
        "charge#000004",
        "charge#000005",
        "audit#000003",
        "total#000001",
    ];
    assert_eq!(keys, want);

    // Crash in the middle of the loop, resume: every body ran exactly once.
    let scratch = Scratch::new();
    run(scratch
        .scenario("loop", input.clone())
        .args(["--crash-after", "4"]))
    .expect_code(3);
    let resumed = run(scratch.scenario("loop", input).arg("--json"))
        .expect_code(0)
        .json();
    assert_eq!(resumed["output"], expected["output"]);
    assert_eq!(scratch.effects(), want, "each step body ran once, in order");
}

#[test]
fn unnamed_steps_get_stable_ids_from_their_call_site() {
    let input = json!({"scenario": "auto_ids"});
    let scratch = Scratch::new();
    run(scratch
        .scenario("auto", input.clone())
        .args(["--crash-after", "1"]))
    .expect_code(3);
    let resumed = run(scratch.scenario("auto", input).arg("--json"))
        .expect_code(0)
        .json();

    let keys: Vec<String> = scratch.steps("auto").into_iter().map(|s| s.0).collect();
    assert_eq!(keys.len(), 3);
    let (loop_site, n1) = keys[0].rsplit_once('#').unwrap();
    let (loop_site_again, n2) = keys[1].rsplit_once('#').unwrap();
    let (other_site, n3) = keys[2].rsplit_once('#').unwrap();
    assert_eq!(
        loop_site, loop_site_again,
        "one call site in a loop, one name"
    );
    assert_eq!((n1, n2, n3), ("000001", "000002", "000001"));
    assert_ne!(loop_site, other_site);
    for site in [loop_site, other_site] {
        let mut parts = site.rsplitn(3, ':');
        let (column, line, file) = (
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
        );
        assert!(file.ends_with("src/lib.rs"), "{site}");
        assert!(
            line.parse::<u32>().is_ok() && column.parse::<u32>().is_ok(),
            "{site}"
        );
    }
    // The first key was recorded by the crashed run and matched on resume.
    assert_eq!(resumed["steps"][0]["outcome"], "replayed");
    assert_eq!(resumed["output"]["keys"], json!(keys));
    assert_eq!(scratch.effects(), keys);
}

#[test]
fn a_step_error_is_recorded_and_replayed_as_the_same_error() {
    let input = json!({"scenario": "step_error"});
    let scratch = Scratch::new();
    run(scratch
        .scenario("err", input.clone())
        .args(["--crash-after", "1"]))
    .expect_code(3);
    assert_eq!(
        scratch.steps("err"),
        vec![("flaky_call#000001".into(), "failed".into(), 1)]
    );

    let resumed = run(scratch.scenario("err", input).arg("--json"))
        .expect_code(0)
        .json();
    assert_eq!(
        resumed["output"],
        json!({"error": "service said no", "fallback": "used the fallback"})
    );
    assert_eq!(
        resumed["steps"][0],
        json!({"key": "flaky_call#000001", "outcome": "replayed", "recorded_error": true})
    );
    assert_eq!(scratch.effects(), ["flaky_call#000001", "fallback#000001"]);
}

#[test]
fn a_workflow_that_changes_its_step_order_is_stopped_and_nothing_is_recorded() {
    let input = json!({"scenario": "reorder"});
    let scratch = Scratch::new();
    scratch.set_step_order("ab");
    run(scratch
        .scenario("order", input.clone())
        .args(["--crash-after", "1"]))
    .expect_code(3);
    let before = scratch.dump();

    scratch.set_step_order("ba");
    let diverged = run(&mut scratch.scenario("order", input.clone())).expect_code(4);
    let stderr = diverged.stderr();
    assert!(stderr.contains("non-determinism"), "{stderr}");
    assert!(
        stderr.contains("`a#000001`") && stderr.contains("`b#000001`"),
        "names both steps: {stderr}"
    );
    assert!(stderr.contains("hint:"), "{stderr}");
    assert_eq!(scratch.dump(), before, "the database is untouched");
    assert_eq!(scratch.effects(), ["a#000001"], "no step body ran");

    // The original code still resumes it.
    scratch.set_step_order("ab");
    let resumed = run(scratch.scenario("order", input).arg("--json"))
        .expect_code(0)
        .json();
    assert_eq!(resumed["output"], json!(["a", "b"]));
}

#[test]
fn a_workflow_that_stops_short_of_its_history_is_stopped_too() {
    let input = json!({"scenario": "reorder"});
    let scratch = Scratch::new();
    scratch.set_step_order("ab");
    run(scratch
        .scenario("short", input.clone())
        .args(["--crash-after", "2"]))
    .expect_code(3);
    let before = scratch.dump();
    scratch.set_step_order("a");
    let shortened = run(&mut scratch.scenario("short", input)).expect_code(4);
    assert!(
        shortened.stderr().contains("continues with `b#000001`"),
        "{}",
        shortened.stderr()
    );
    assert_eq!(scratch.dump(), before);
}

#[test]
fn a_long_run_of_replayed_steps_is_summed_up_in_one_line() {
    let input = json!({"scenario": "loop", "items": 5});
    let scratch = Scratch::new();
    run(scratch
        .scenario("summary", input.clone())
        .args(["--crash-after", "6"]))
    .expect_code(3);
    let stdout = run(&mut scratch.scenario("summary", input))
        .expect_code(0)
        .stdout();
    assert!(
        stdout.contains("  replayed  charge#000001 … charge#000004  (6 steps)"),
        "{stdout}"
    );
    assert!(stdout.contains("executed  charge#000005"), "{stdout}");
}

#[test]
fn error_codes_are_recorded_and_replayed() {
    let input = json!({"scenario": "error_codes"});
    let scratch = Scratch::new();
    run(scratch
        .scenario("codes", input.clone())
        .args(["--crash", "invoice:after"]))
    .expect_code(3);
    // The replayed `charge` error carries its code, so the workflow takes
    // the same branch, and its own error's code is recorded.
    let failed = run(scratch.scenario("codes", input).arg("--json"))
        .expect_code(1)
        .json();
    assert_eq!(failed["error"], "paid by invoice sent");
    assert_eq!(failed["error_code"], "needs_follow_up");
    assert_eq!(scratch.effects(), ["charge#000001", "invoice#000001"]);
    let history = run(&mut scratch.host(&["history", "codes", "--json"]))
        .expect_code(0)
        .json();
    assert_eq!(history["steps"][0]["error_code"], "card_declined");
    assert_eq!(history["error_code"], "needs_follow_up");
}
