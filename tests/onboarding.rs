//! The onboarding workflow end to end: an uninterrupted run, a crash at
//! every step boundary, and a real SIGKILL in the middle of a slow step.

use std::time::Duration;

use durable_tests::onboarding::{SERVICES, STEPS, once_each, wait_until_running};
use durable_tests::{Scratch, employee, run, spawn};
use serde_json::Value;

/// The output of an uninterrupted run of `id`, from a scratch of its own.
fn uninterrupted_output(id: &str) -> Value {
    let scratch = Scratch::new();
    run(scratch.onboarding(id).arg("--json"))
        .expect_code(0)
        .json()["output"]
        .clone()
}

#[test]
fn uninterrupted_run_then_a_second_run_replays_nothing() {
    let scratch = Scratch::new();
    let first = run(scratch.onboarding("emp-001").arg("--json"))
        .expect_code(0)
        .json();
    assert_eq!(first["status"], "completed");
    assert_eq!(first["output"]["record_id"], "HR-emp-001");
    assert_eq!(first["output"]["laptop"]["asset_tag"], "LT-emp-001");
    assert_eq!(first["output"]["welcome_email_id"], "MAIL-emp-001");
    let outcomes: Vec<_> = first["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["outcome"].clone())
        .collect();
    assert_eq!(outcomes, vec!["executed"; 4]);
    assert_eq!(scratch.service_calls(), once_each());

    // Running a finished workflow prints the stored output and runs nothing.
    let second = run(scratch.onboarding("emp-001").arg("--json"))
        .expect_code(0)
        .json();
    assert_eq!(second["already_finished"], true);
    assert_eq!(second["output"], first["output"]);
    assert_eq!(scratch.service_calls(), once_each());

    // Same for people: the stored output, and no step line.
    let human = run(&mut scratch.onboarding("emp-001"))
        .expect_code(0)
        .stdout();
    assert!(human.contains("already completed; nothing ran"), "{human}");
    assert!(!human.contains("executed  "), "{human}");
    assert_eq!(scratch.service_calls(), once_each());
}

#[test]
fn human_output_shows_each_step_and_the_result() {
    let scratch = Scratch::new();
    let stdout = run(&mut scratch.onboarding("emp-h"))
        .expect_code(0)
        .stdout();
    for step in STEPS {
        assert!(
            stdout.contains(&format!("executed  {step}#000001")),
            "{stdout}"
        );
    }
    assert!(stdout.contains("workflow emp-h completed in"), "{stdout}");
    assert!(stdout.contains("\"record_id\":\"HR-emp-h\""), "{stdout}");
}

/// The first and last column of the bar in the `history --timeline` row of
/// step `key`.
fn bar_extent(chart: &str, key: &str) -> (usize, usize) {
    let row = chart
        .lines()
        .find(|line| line.starts_with(key))
        .unwrap_or_else(|| panic!("no row for {key}:\n{chart}"));
    let bars: Vec<char> = row.split('|').nth(1).unwrap().chars().collect();
    let first = bars.iter().position(|&c| c == '█').unwrap();
    let last = bars.iter().rposition(|&c| c == '█').unwrap();
    (first, last)
}

#[test]
fn the_timeline_shows_the_provisioning_branches_overlapping() {
    let scratch = Scratch::new();
    let slow = scratch
        .run(&durable_tests::artifacts().onboarding, "emp-t")
        .args(["--input", &employee("emp-t", 300)])
        .output()
        .unwrap();
    assert!(slow.status.success(), "{slow:?}");
    let chart = run(scratch
        .host(&["history", "emp-t", "--timeline"])
        .env("COLUMNS", "120"))
    .expect_code(0)
    .stdout();
    assert!(
        chart.lines().all(|line| line.chars().count() <= 120),
        "{chart}"
    );
    assert!(
        !chart.contains('\x1b'),
        "no colour off a terminal:\n{chart}"
    );
    let record = bar_extent(&chart, "create_record#");
    let laptop = bar_extent(&chart, "provision_laptop#");
    let access = bar_extent(&chart, "provision_access#");
    let email = bar_extent(&chart, "send_welcome_email#");
    // Each service call takes 300 ms: the branches run side by side, after
    // the record and before the email.
    assert!(record.1 <= laptop.0 && record.1 <= access.0, "{chart}");
    assert!(laptop.0.max(access.0) < laptop.1.min(access.1), "{chart}");
    assert!(laptop.1.max(access.1) <= email.0, "{chart}");
}

/// Resume `id` after a crash and check what the crash left; see
/// [`durable_tests::onboarding::resume`].
fn resume_and_check(scratch: &Scratch, id: &str, expected: &Value, context: &str) {
    let mut resume = scratch.onboarding(id);
    resume.arg("--json");
    let calls = || scratch.service_calls();
    durable_tests::onboarding::resume(scratch, id, &mut resume, &calls, expected, context);
}

#[test]
fn crash_before_or_after_any_step_resumes_without_repeating_side_effects() {
    let expected = uninterrupted_output("emp-c");
    for (index, step) in STEPS.iter().enumerate() {
        for point in ["before", "after"] {
            let context = format!("--crash {step}:{point}");
            let scratch = Scratch::new();
            let crashed = run(scratch
                .onboarding("emp-c")
                .args(["--crash", &format!("{step}:{point}")]));
            let crashed = crashed.expect_code(3);
            assert!(
                crashed.stderr().contains("simulated crash"),
                "{}",
                crashed.stderr()
            );

            // The crashed step is running (before) or completed (after), the
            // steps before it are completed (bar its parallel sibling), and
            // no later step has begun.
            let steps = scratch.steps("emp-c");
            let status_of = |name: &str| {
                let key = format!("{name}#000001");
                steps.iter().find(|s| s.0 == key).map(|s| s.1.clone())
            };
            let crashed_status = if point == "after" {
                "completed"
            } else {
                "running"
            };
            assert_eq!(
                status_of(step).as_deref(),
                Some(crashed_status),
                "{context}"
            );
            for earlier in &STEPS[..index] {
                if (*earlier, *step) != ("provision_laptop", "provision_access") {
                    assert_eq!(
                        status_of(earlier).as_deref(),
                        Some("completed"),
                        "{earlier} at {context}"
                    );
                }
            }
            for later in &STEPS[index + 1..] {
                if (*step, *later) != ("provision_laptop", "provision_access") {
                    assert_eq!(status_of(later), None, "{later} at {context}");
                }
            }
            if point == "before" {
                let calls = scratch.service_calls();
                assert_eq!(
                    calls.get(SERVICES[index]),
                    None,
                    "the body did not run: {context}"
                );
            }
            resume_and_check(&scratch, "emp-c", &expected, &context);
        }
    }
}

#[test]
fn crash_after_n_checkpoints_resumes_to_the_same_output() {
    let expected = uninterrupted_output("emp-n");
    for n in 1..=4 {
        let scratch = Scratch::new();
        run(scratch
            .onboarding("emp-n")
            .args(["--crash-after", &n.to_string()]))
        .expect_code(3);
        let completed = scratch
            .steps("emp-n")
            .iter()
            .filter(|s| s.1 == "completed")
            .count();
        assert_eq!(completed, n, "checkpoints after --crash-after {n}");
        // After the last checkpoint the workflow row is still running.
        resume_and_check(&scratch, "emp-n", &expected, &format!("--crash-after {n}"));
    }
}

#[test]
fn sigkill_in_the_middle_of_a_slow_step_then_resume() {
    let expected = uninterrupted_output("emp-k");
    let scratch = Scratch::new();
    let mut command = scratch.run(&durable_tests::artifacts().onboarding, "emp-k");
    command.args(["--input", &employee("emp-k", 400)]);
    let mut child = spawn(&mut command);

    // Wait until provision_laptop is executing (its body is in its latency).
    let key = "provision_laptop#000001";
    wait_until_running(&scratch, "emp-k", key, &mut child, Duration::from_secs(30));
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert!(!status.success());

    let calls = scratch.service_calls();
    assert_eq!(
        calls.get("hr"),
        Some(&1),
        "create_record completed before the kill"
    );
    assert!(calls.get("it").copied().unwrap_or(0) <= 1);

    let resumed = run(scratch
        .run(&durable_tests::artifacts().onboarding, "emp-k")
        .arg("--json"))
    .expect_code(0)
    .json();
    assert_eq!(resumed["output"], expected);
    let calls = scratch.service_calls();
    assert_eq!(calls["hr"], 1, "a completed step never runs again");
    assert!(
        (1..=2).contains(&calls["it"]),
        "the step in flight runs at most twice: {calls:?}"
    );
    assert_eq!((calls["iam"], calls["mail"]), (1, 1));
    let laptop = scratch
        .steps("emp-k")
        .into_iter()
        .find(|s| s.0 == "provision_laptop#000001")
        .unwrap();
    assert_eq!(
        (laptop.1.as_str(), laptop.2),
        ("completed", 2),
        "taken over as attempt 2"
    );
    assert!(scratch.integrity_ok());
}
