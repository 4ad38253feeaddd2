//! `durable-host verify`: histories recorded by the base build of the
//! `versions` workflow, replayed against real new builds of it (a step
//! appended, inserted or renamed, a step's type changed, an early return),
//! without running a step and without changing the database.

use std::time::Duration;

use durable_tests::{Scratch, run, sha256_of, version};
use serde_json::{Value, json};

/// A workflow left in flight in step `c` (its steps `a` and `b` recorded),
/// and one that completed.
fn histories() -> Scratch {
    let scratch = Scratch::new();
    let base = version(None);
    run(scratch
        .run(&base, "in-flight")
        .args(["--input", "null", "--crash", "c:before"]))
    .expect_code(3);
    run(scratch.run(&base, "done").args(["--input", "null"])).expect_code(0);
    scratch
}

/// What a command that writes nothing leaves as it was: the SQLite file's
/// bytes; on PostgreSQL, the workflow tables' rows and the recorded events.
fn fingerprint(scratch: &Scratch) -> String {
    if !scratch.on_postgres() {
        return sha256_of(&scratch.db());
    }
    let events = scratch.number("SELECT count(*) FROM workflow_events");
    format!("{}workflow_events: {events}", scratch.dump())
}

/// The component workflow `id` is pinned to.
fn component_of(scratch: &Scratch, id: &str) -> String {
    let sql = format!("SELECT component_sha256 FROM workflows WHERE id = '{id}'");
    scratch.strings(&sql).into_iter().next().unwrap()
}

/// `verify --json` with `args`: its exit code and its verdicts by workflow.
fn verify(scratch: &Scratch, feature: Option<&str>, args: &[&str]) -> (Option<i32>, Vec<Value>) {
    let component = version(feature);
    let mut command = scratch.host(&["verify", component.to_str().unwrap(), "--json"]);
    command.args(args);
    let result = run(&mut command);
    let document = result.json();
    assert_eq!(
        document["summary"]["workflows"].as_u64().unwrap() as usize,
        document["workflows"].as_array().unwrap().len(),
        "{document}"
    );
    (
        result.code(),
        document["workflows"].as_array().unwrap().clone(),
    )
}

#[test]
fn new_builds_are_judged_against_recorded_histories_without_touching_them() {
    let scratch = histories();
    let before = fingerprint(&scratch);
    let effects_before = scratch.effects();

    // The same code, and code that only adds a step at the end: a resume
    // goes on with the step in flight. Only in-flight workflows by default.
    for feature in [None, Some("append")] {
        let (code, verdicts) = verify(&scratch, feature, &[]);
        assert_eq!(code, Some(0), "{feature:?}: {verdicts:?}");
        assert_eq!(verdicts.len(), 1, "{verdicts:?}");
        let verdict = &verdicts[0];
        assert_eq!(verdict["workflow_id"], "in-flight");
        assert_eq!(verdict["verdict"], "compatible", "{verdict}");
        assert_eq!(verdict["replayed"], 2);
        assert_eq!(verdict["next"], "c#000001");
    }

    // A step inserted or renamed: the divergence, where, and around it.
    for feature in ["insert", "rename"] {
        let (code, verdicts) = verify(&scratch, Some(feature), &[]);
        assert_eq!(code, Some(4), "{verdicts:?}");
        let verdict = &verdicts[0];
        assert_eq!(verdict["verdict"], "diverged", "{verdict}");
        assert_eq!(verdict["position"], 2);
        assert_eq!(verdict["recorded"], "b#000001");
        let asked = if feature == "insert" {
            "x#000001"
        } else {
            "b2#000001"
        };
        assert_eq!(verdict["requested"], asked);
        let around: Vec<&str> = verdict["around"]
            .as_array()
            .unwrap()
            .iter()
            .map(|step| step["key"].as_str().unwrap())
            .collect();
        assert_eq!(around, ["a#000001", "b#000001", "c#000001"]);
    }

    // The same step called with another input than its recorded result
    // came from.
    let (code, verdicts) = verify(&scratch, Some("reinput"), &[]);
    assert_eq!(code, Some(4));
    let verdict = &verdicts[0];
    assert_eq!(verdict["verdict"], "input_changed", "{verdict}");
    assert_eq!(verdict["position"], 2);
    assert_eq!(verdict["step"], "b#000001");

    // A recorded value that no longer decodes, and an early return.
    let (code, verdicts) = verify(&scratch, Some("retype"), &[]);
    assert_eq!(code, Some(4));
    let verdict = &verdicts[0];
    assert_eq!(verdict["verdict"], "undecodable", "{verdict}");
    assert_eq!(verdict["step"], "a#000001");
    assert_eq!(verdict["value"], "1");
    assert!(
        verdict["expected"].as_str().unwrap().contains("String"),
        "{verdict}"
    );
    assert!(
        verdict["reason"]
            .as_str()
            .unwrap()
            .contains("expected a string"),
        "{verdict}"
    );
    let (code, verdicts) = verify(&scratch, Some("shorter"), &[]);
    assert_eq!(code, Some(4));
    assert_eq!(verdicts[0]["verdict"], "ended_early");
    assert_eq!(verdicts[0]["next"], "b#000001");

    // --all takes finished workflows too: the same code ends them as they
    // ended; --workflow-id picks one.
    let (code, verdicts) = verify(&scratch, None, &["--all"]);
    assert_eq!(code, Some(0), "{verdicts:?}");
    let done = verdicts
        .iter()
        .find(|v| v["workflow_id"] == "done")
        .unwrap();
    assert_eq!(done["verdict"], "compatible");
    assert_eq!(done["replayed"], 3);
    assert!(
        done["ending"].as_str().unwrap().contains("recorded result"),
        "{done}"
    );
    // A finished workflow the new code would not replay is reported, but
    // only unfinished ones decide the exit code: nothing will resume it.
    let (code, verdicts) = verify(&scratch, Some("rename"), &["--workflow-id", "done"]);
    assert_eq!(code, Some(0));
    assert_eq!(verdicts.len(), 1);
    assert_eq!(verdicts[0]["workflow_id"], "done");
    assert_eq!(verdicts[0]["verdict"], "diverged");

    // Nothing ran and nothing changed.
    assert_eq!(fingerprint(&scratch), before, "the database was written");
    assert_eq!(scratch.effects(), effects_before);
    let status = scratch.workflow_status("in-flight");
    assert_eq!(status.as_deref(), Some("running"));

    // People get a line per workflow and a summary.
    let text = run(&mut scratch.host(&["verify", version(Some("insert")).to_str().unwrap()]))
        .expect_code(4)
        .stdout();
    assert!(text.contains("DIVERGES at step 2"), "{text}");
    assert!(text.contains("1 diverged"), "{text}");

    // Running the new build is refused the same way: exit 4, the step and
    // the stored value named, nothing run or recorded.
    let steps_before = scratch.steps("in-flight");
    let refused = run(scratch
        .run(&version(Some("retype")), "in-flight")
        .arg("--allow-component-change"))
    .expect_code(4);
    let stderr = refused.stderr();
    assert!(stderr.contains("non-determinism"), "{stderr}");
    assert!(
        stderr.contains("`a#000001`") && stderr.contains("it is 1"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(scratch.steps("in-flight"), steps_before);
    assert_eq!(scratch.effects(), effects_before);

    // And so is the new input.
    let refused = run(scratch
        .run(&version(Some("reinput")), "in-flight")
        .arg("--allow-component-change"))
    .expect_code(4);
    assert!(
        refused.stderr().contains("another input"),
        "{}",
        refused.stderr()
    );
    assert_eq!(scratch.steps("in-flight"), steps_before);

    // An unknown workflow is an error, not a verdict.
    let unknown = run(&mut scratch.host(&[
        "verify",
        version(None).to_str().unwrap(),
        "--workflow-id",
        "nobody",
    ]))
    .expect_code(2);
    assert!(unknown.stderr().contains("nobody"), "{}", unknown.stderr());
}

#[test]
fn upgrade_moves_only_workflows_whose_history_replays_and_records_it() {
    let scratch = histories();
    // Started by `run` on code no deployment has, and not replaying on the
    // inserting build: nothing shows it is this deployment's workflow, so
    // `--all` does not select it (README, *Deploying a new version*).
    run(&mut scratch.host(&["deploy", "v", version(Some("insert")).to_str().unwrap()]))
        .expect_code(0);
    let unselected = run(&mut scratch.host(&["upgrade", "--all", "--to", "v", "--json"]))
        .expect_code(0)
        .json();
    assert_eq!(unselected["workflows"], json!([]), "{unselected}");

    // Once the code that started it is a version of the deployment, it is
    // the deployment's: the inserting build is refused for it, with why;
    // the finished one has nothing to move.
    let base = version(None);
    let inserting = version(Some("insert"));
    for component in [&base, &inserting] {
        run(&mut scratch.host(&["deploy", "v", component.to_str().unwrap()])).expect_code(0);
    }
    let refused = run(&mut scratch.host(&["upgrade", "--all", "--to", "v", "--json"]))
        .expect_code(4)
        .json();
    assert_eq!(refused["upgraded"], 0, "{refused}");
    let only = &refused["workflows"].as_array().unwrap()[0];
    assert_eq!(only["workflow_id"], "in-flight");
    assert_eq!(only["result"], "refused");
    assert!(
        only["reason"]
            .as_str()
            .unwrap()
            .contains("diverges at step 2"),
        "{only}"
    );
    let finished = run(&mut scratch.host(&["upgrade", "done", "--to", "v"])).expect_code(4);
    assert!(
        finished.stdout().contains("completed"),
        "{}",
        finished.stdout()
    );
    let before = component_of(&scratch, "in-flight");

    // The appending build replays it: switched, recorded, and it finishes
    // on the new code (its new step included).
    let append = version(Some("append"));
    run(&mut scratch.host(&["deploy", "v", append.to_str().unwrap()])).expect_code(0);
    let moved = run(&mut scratch.host(&["upgrade", "in-flight", "--to", "v"])).expect_code(0);
    assert!(
        moved.stdout().contains("in-flight  upgraded"),
        "{}",
        moved.stdout()
    );
    let after = component_of(&scratch, "in-flight");
    assert_ne!(after, before);
    assert_eq!(after, sha256_of(&append));
    let history = run(&mut scratch.host(&["history", "in-flight", "--json"])).json();
    let events = history["events"].as_array().unwrap();
    assert!(
        events
            .iter()
            .any(|e| e["kind"] == "upgraded" && e["detail"].as_str().unwrap().contains("version 4")),
        "{history}"
    );
    // A crash on the new code, then a resume: still on it, and done.
    run(scratch
        .run(&append, "in-flight")
        .args(["--crash", "d:before"]))
    .expect_code(3);
    let finished = run(scratch.run(&append, "in-flight").arg("--json")).expect_code(0);
    assert_eq!(finished.json()["output"], 3);
    let keys: Vec<String> = scratch
        .steps("in-flight")
        .into_iter()
        .map(|s| s.0)
        .collect();
    assert_eq!(keys, ["a#000001", "b#000001", "c#000001", "d#000001"]);
}

#[test]
fn fork_copies_the_steps_before_the_one_given_and_runs_the_rest() {
    let scratch = histories();
    let forked = run(&mut scratch.host(&[
        "fork",
        "done",
        "--from-step",
        "3",
        "--workflow-id",
        "again",
        "--json",
    ]))
    .expect_code(0)
    .json();
    assert_eq!(forked["workflow_id"], "again");
    assert_eq!(forked["status"], "queued");
    let copied: Vec<(String, String)> = scratch
        .steps("again")
        .into_iter()
        .map(|(key, status, _)| (key, status))
        .collect();
    assert_eq!(
        copied,
        [
            ("a#000001".to_owned(), "completed".to_owned()),
            ("b#000001".to_owned(), "completed".to_owned())
        ]
    );
    // Run on a new build, with a crash in the middle: the copied steps
    // replay, step 3 runs again, and the resume finishes it.
    run(scratch.run(&version(Some("append")), "again").args([
        "--allow-component-change",
        "--crash",
        "d:before",
    ]))
    .expect_code(3);
    let rerun = run(scratch
        .run(&version(Some("append")), "again")
        .args(["--json", "--allow-component-change"]))
    .expect_code(0)
    .json();
    let executed: Vec<&str> = rerun["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["outcome"] == "executed")
        .map(|s| s["key"].as_str().unwrap())
        .collect();
    assert_eq!(executed, ["d#000001"], "{rerun}");
    let keys: Vec<String> = scratch.steps("again").into_iter().map(|s| s.0).collect();
    assert_eq!(keys, ["a#000001", "b#000001", "c#000001", "d#000001"]);
    let history = run(&mut scratch.host(&["history", "again", "--json"])).json();
    assert!(
        history["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "forked"
                && e["detail"]
                    .as_str()
                    .unwrap()
                    .contains("from done at step 3")),
        "{history}"
    );

    // Refusals say what would work, and change nothing.
    let bad = run(&mut scratch.host(&["fork", "done", "--from-step", "9"])).expect_code(2);
    assert!(
        bad.stderr().contains("fork from 1 to 4"),
        "{}",
        bad.stderr()
    );
    let unfinished =
        run(&mut scratch.host(&["fork", "in-flight", "--from-step", "4"])).expect_code(2);
    assert!(
        unfinished.stderr().contains("step 3"),
        "{}",
        unfinished.stderr()
    );
    let taken =
        run(&mut scratch.host(&["fork", "done", "--from-step", "1", "--workflow-id", "again"]))
            .expect_code(2);
    assert!(
        taken.stderr().contains("exists already"),
        "{}",
        taken.stderr()
    );
    assert_eq!(
        scratch.workflow_status("again").as_deref(),
        Some("completed")
    );
}

#[test]
fn verify_beside_a_running_server_changes_nothing() {
    let scratch = Scratch::new();
    let base = version(None);
    run(&mut scratch.host(&["deploy", "v", base.to_str().unwrap()])).expect_code(0);
    let server = durable_tests::Server::start(&scratch, "serve", &["--concurrency", "4"]);
    for i in 0..20 {
        run(&mut scratch.host(&[
            "start",
            "v",
            "--workflow-id",
            &format!("w{i}"),
            "--input",
            "null",
        ]))
        .expect_code(0);
    }
    // Verify while the server works through them: every verdict is about
    // the history as it was read, and nothing is written.
    let mut rounds = 0;
    while scratch.number("SELECT count(*) FROM workflows WHERE status != 'completed'") != 0
        || rounds == 0
    {
        let (code, verdicts) = verify(&scratch, Some("append"), &["--all"]);
        assert_eq!(code, Some(0), "{verdicts:?}");
        rounds += 1;
        assert!(rounds < 200, "the server did not finish");
    }
    let events = scratch.number("SELECT count(*) FROM workflow_events");
    assert_eq!(events, 0, "verify recorded something");
    let outputs = scratch.query("SELECT output FROM workflows ORDER BY id");
    assert_eq!(outputs, vec![vec![Value::from("3")]; 20]);
    let component = scratch.number("SELECT count(DISTINCT component_sha256) FROM workflows");
    assert_eq!(component, 1, "verify moved a workflow");
    drop(server);
}

#[test]
fn serve_suspends_a_workflow_whose_code_no_longer_replays_instead_of_retrying_it() {
    let scratch = histories();
    // The workflow's component now asks for other steps than its history
    // holds, as code that is not deterministic would.
    let insert = version(Some("insert"));
    run(&mut scratch.host(&["deploy", "v", insert.to_str().unwrap()])).expect_code(0);
    scratch.execute(&format!(
        "UPDATE workflows SET component_sha256 = '{}' WHERE id = 'in-flight'",
        sha256_of(&insert)
    ));
    let steps_before = scratch.steps("in-flight");
    let server = durable_tests::Server::start(&scratch, "serve", &[]);
    durable_tests::wait_until(
        "the workflow to be suspended",
        Duration::from_secs(60),
        || scratch.workflow_status("in-flight").as_deref() == Some("suspended"),
    );
    // Once, not over and over.
    std::thread::sleep(Duration::from_millis(500));
    let log = server.log();
    assert_eq!(
        log.matches("its code no longer replays").count(),
        1,
        "{log}"
    );
    drop(server);
    assert_eq!(scratch.steps("in-flight"), steps_before);
    let history = run(&mut scratch.host(&["history", "in-flight", "--json"])).json();
    let error = history["error"].as_str().unwrap();
    assert!(
        error.contains("non-determinism") && error.contains("x#000001"),
        "{error}"
    );

    // Code that replays it continues it.
    run(&mut scratch.host(&["resume", "in-flight", version(None).to_str().unwrap()]))
        .expect_code(0);
    assert_eq!(
        scratch.workflow_status("in-flight").as_deref(),
        Some("completed")
    );
}

#[test]
fn upgrade_and_fork_keep_to_the_deployment_they_are_given() {
    let scratch = Scratch::new();
    let deploy = |name: &str, component: &std::path::Path| {
        run(&mut scratch.host(&["deploy", name, component.to_str().unwrap()])).expect_code(0);
    };
    deploy("payments", &durable_tests::artifacts().scenarios);
    deploy("reports", &version(None));
    let input = r#"{"scenario": "steps", "items": 2}"#;
    run(&mut scratch.host(&[
        "start",
        "payments",
        "--workflow-id",
        "pay-1",
        "--input",
        input,
    ]))
    .expect_code(0);
    let before = component_of(&scratch, "pay-1");

    // With no step recorded it would "replay" on any code: --all leaves
    // another deployment's workflow alone, and naming it is refused.
    let all = run(&mut scratch.host(&["upgrade", "--all", "--to", "reports", "--json"]))
        .expect_code(0)
        .json();
    assert_eq!(all["upgraded"], 0, "{all}");
    assert_eq!(component_of(&scratch, "pay-1"), before);
    let named = run(&mut scratch.host(&["upgrade", "pay-1", "--to", "reports"])).expect_code(4);
    assert!(
        named.stdout().contains("belongs to deployment `payments`"),
        "{}",
        named.stdout()
    );
    assert_eq!(component_of(&scratch, "pay-1"), before);
    // A version that is not there is named as such, with where to look.
    let missing =
        run(&mut scratch.host(&["upgrade", "pay-1", "--to", "reports@deadbeef"])).expect_code(2);
    assert!(
        missing.stderr().contains(
            "deployment `reports` has no version whose component's sha256 starts with `deadbeef`"
        ) && missing.stderr().contains("deploy --list"),
        "{}",
        missing.stderr()
    );
    let unknown =
        run(&mut scratch.host(&["upgrade", "pay-1", "--to", "nope@deadbeef"])).expect_code(2);
    assert!(
        unknown.stderr().contains("no deployment named `nope`"),
        "{}",
        unknown.stderr()
    );
    assert_eq!(component_of(&scratch, "pay-1"), before);

    // A fork onto a deployment is labelled with it, not with its source's.
    run(&mut scratch.host(&[
        "fork",
        "pay-1",
        "--from-step",
        "1",
        "--workflow-id",
        "pay-2",
        "--component",
        "reports",
    ]))
    .expect_code(0);
    let listed = run(&mut scratch.host(&["list", "--json"]))
        .expect_code(0)
        .json();
    let deployment_of = |id: &str| {
        listed
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["workflow_id"] == id)
            .map(|w| w["deployment"].clone())
    };
    assert_eq!(
        deployment_of("pay-2"),
        Some(Value::from("reports")),
        "{listed}"
    );
    assert_eq!(
        deployment_of("pay-1"),
        Some(Value::from("payments")),
        "{listed}"
    );
}
