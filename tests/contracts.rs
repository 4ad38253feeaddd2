//! Workflows built against earlier releases of the `durable:workflow`
//! contract keep running unchanged: the onboarding workflow as the SDK of
//! each release built it (from the repository's history) starts, crashes,
//! resumes, runs under `serve` and is cancelled on today's host. And a
//! workflow of another repository builds against a vendored copy of the
//! SDK.

use std::time::Duration;

use durable_tests::{
    Scratch, Server, employee, released_onboarding, run, spawn, vendored_sdk_workflow, wait_until,
};
use serde_json::json;

const RELEASES: [&str; 2] = ["0.1.0", "0.2.0"];

/// `durable-host run` of `component` as workflow `id`, with the onboarding
/// input and the scratch grants.
fn onboard(
    scratch: &Scratch,
    component: &std::path::Path,
    id: &str,
    latency_ms: u64,
) -> std::process::Command {
    let mut command = scratch.run(component, id);
    command.args(["--input", &employee(id, latency_ms)]);
    command
}

#[test]
fn an_older_build_crashes_and_resumes_with_each_side_effect_once() {
    for release in RELEASES {
        let component = released_onboarding(release);
        let scratch = Scratch::new();
        run(onboard(&scratch, &component, "emp-1", 0)
            .args(["--crash", "send_welcome_email:before"]))
        .expect_code(3);
        let done = run(scratch.run(&component, "emp-1").arg("--json"))
            .expect_code(0)
            .json();
        assert_eq!(done["status"], "completed", "contract {release}");
        assert_eq!(
            done["output"]["record_id"], "HR-emp-1",
            "contract {release}"
        );
        assert_eq!(done["output"]["laptop"]["asset_tag"], "LT-emp-1");
        let calls = scratch.service_calls();
        for service in ["hr", "it", "iam", "mail"] {
            assert_eq!(
                calls.get(service),
                Some(&1),
                "contract {release}: {calls:?}"
            );
        }
        let executions = scratch.step_executions();
        assert!(
            executions.values().all(|count| *count == 1),
            "contract {release}: {executions:?}"
        );
    }
}

#[test]
fn an_older_build_runs_under_serve() {
    let scratch = Scratch::new();
    for release in RELEASES {
        scratch.deploy(
            &format!("onboarding-{release}"),
            &released_onboarding(release),
        );
    }
    let _server = Server::start(&scratch, "server", &[]);
    for release in RELEASES {
        let id = format!("served-{release}");
        let done = run(&mut scratch.host(&[
            "start",
            &format!("onboarding-{release}"),
            "--workflow-id",
            &id,
            "--input",
            &employee(&id, 0),
            "--wait",
            "--json",
        ]))
        .expect_code(0)
        .json();
        assert_eq!(
            done["output"]["welcome_email_id"],
            json!(format!("MAIL-{id}"))
        );
    }
}

#[test]
fn an_older_build_is_stopped_by_a_cancellation() {
    for release in RELEASES {
        let component = released_onboarding(release);
        let scratch = Scratch::new();
        // Renewals every 250 ms: the run hears of the cancellation well
        // before its last step.
        let child = spawn(onboard(&scratch, &component, "slow", 800).args(["--stale-after", "1s"]));
        scratch.wait_for_step("slow", "create_record", "completed");
        run(&mut scratch.host(&["cancel", "slow"])).expect_code(0);
        let output = child.wait_with_output().unwrap();
        assert_eq!(
            output.status.code(),
            Some(6),
            "contract {release}: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        wait_until(
            "the cancellation is recorded",
            Duration::from_secs(10),
            || scratch.workflow_status("slow").as_deref() == Some("cancelled"),
        );
        assert_eq!(
            scratch.service_calls().get("mail"),
            None,
            "contract {release}"
        );
    }
}

/// README, *From another repository*: the SDK may be vendored as a copy of
/// `guest-sdk/`, which must then build outside this workspace.
#[test]
fn a_workflow_builds_with_a_vendored_copy_of_the_sdk() {
    let component = vendored_sdk_workflow();
    let scratch = Scratch::new();
    let report = run(scratch
        .run(&component, "greet-1")
        .args(["--input", "\"Ada\"", "--json"]))
    .expect_code(0)
    .json();
    assert_eq!(report["status"], "completed");
    assert_eq!(report["output"], "hello, Ada");
}
