//! Who may run a workflow, and what the host refuses: live owners, expired
//! leases, lost ownership, component pinning, resource limits and damaged
//! or missing databases.

use std::process::Command;
use std::time::{Duration, Instant};

use durable_tests::{Scratch, artifacts, employee, run, signal, spawn};
use serde_json::json;

fn slow_onboarding(scratch: &Scratch, id: &str, latency_ms: u64) -> Command {
    let mut command = scratch.run(&artifacts().onboarding, id);
    command.args(["--input", &employee(id, latency_ms)]);
    command
}

#[test]
fn a_live_owner_is_named_and_a_dead_one_is_taken_over_at_once() {
    let scratch = Scratch::new();
    let mut owner = spawn(&mut slow_onboarding(&scratch, "busy", 1500));
    scratch.wait_for_step("busy", "create_record", "running");

    let refused = run(&mut scratch.run(&artifacts().onboarding, "busy")).expect_code(5);
    let stderr = refused.stderr();
    assert!(stderr.contains("is being run by run"), "{stderr}");
    assert!(
        stderr.contains(&format!("pid {}", owner.id())),
        "names the owner: {stderr}"
    );
    assert!(stderr.contains("hint:"), "{stderr}");

    owner.kill().unwrap();
    owner.wait().unwrap();
    // The owner's pid is gone: no need to wait for its lease to expire.
    let started = Instant::now();
    let resumed = run(scratch.run(&artifacts().onboarding, "busy").arg("--json"))
        .expect_code(0)
        .json();
    assert_eq!(resumed["status"], "completed");
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "took over without waiting for the lease"
    );
}

#[test]
fn an_owner_on_another_host_is_respected_until_its_lease_expires() {
    let scratch = Scratch::new();
    run(scratch.onboarding("remote").args(["--crash-after", "1"])).expect_code(3);
    scratch
        .execute("UPDATE workflows SET owner_host = 'elsewhere', lease_expires_at = 9999999999999");
    let refused = run(&mut scratch.run(&artifacts().onboarding, "remote")).expect_code(5);
    assert!(
        refused.stderr().contains("on elsewhere"),
        "{}",
        refused.stderr()
    );

    scratch.execute("UPDATE workflows SET lease_expires_at = 1");
    run(&mut scratch.run(&artifacts().onboarding, "remote")).expect_code(0);
}

#[test]
fn the_heartbeat_keeps_the_lease_ahead_of_stale_after() {
    let scratch = Scratch::new();
    let mut command = slow_onboarding(&scratch, "beat", 1200);
    command.args(["--stale-after", "1s"]);
    let mut child = spawn(&mut command);
    scratch.wait_for_step("beat", "create_record", "running");
    let lease = || scratch.number("SELECT lease_expires_at FROM workflows WHERE id = 'beat'");
    let first = lease();
    std::thread::sleep(Duration::from_millis(700));
    let second = lease();
    assert!(
        second > first,
        "the lease was renewed: {first} then {second}"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn a_frozen_owner_that_lost_its_lease_stops_at_its_next_write() {
    let scratch = Scratch::new();
    let frozen = spawn(&mut slow_onboarding(&scratch, "frozen", 600));
    scratch.wait_for_step("frozen", "create_record", "running");
    signal(frozen.id(), "-STOP");
    // Its lease runs out (as it would after --stale-after) while it is stopped.
    scratch.execute("UPDATE workflows SET lease_expires_at = 1, owner_host = 'elsewhere'");
    let successor = run(scratch.run(&artifacts().onboarding, "frozen").arg("--json"))
        .expect_code(0)
        .json();
    assert_eq!(successor["status"], "completed");

    signal(frozen.id(), "-CONT");
    let output = frozen.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(8), "{stderr}");
    assert!(stderr.contains("was taken over by run"), "{stderr}");
    // The successor's record stands.
    let status = scratch.workflow_status("frozen").unwrap();
    assert_eq!(status, "completed");
    let calls = scratch.service_calls();
    assert!(calls.values().all(|&n| (1..=2).contains(&n)), "{calls:?}");
    assert!(scratch.integrity_ok());
}

/// The same component with one more custom section: other bytes, same code.
fn rebuilt_copy(scratch: &Scratch) -> std::path::PathBuf {
    let mut bytes = std::fs::read(&artifacts().scenarios).unwrap();
    let name = b"rebuilt";
    let payload = b"same code, other bytes";
    bytes.push(0); // custom section
    bytes.push((1 + name.len() + payload.len()) as u8);
    bytes.push(name.len() as u8);
    bytes.extend_from_slice(name);
    bytes.extend_from_slice(payload);
    let path = scratch.path().join("rebuilt.wasm");
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn resuming_with_another_component_needs_permission() {
    let scratch = Scratch::new();
    let input = json!({"scenario": "loop", "items": 3}).to_string();
    run(scratch
        .run(&artifacts().scenarios, "pin")
        .args(["--input", &input, "--crash-after", "2"]))
    .expect_code(3);
    let before = scratch.dump();
    let rebuilt = rebuilt_copy(&scratch);

    let refused = run(&mut scratch.run(&rebuilt, "pin"));
    assert_eq!(refused.code(), Some(2));
    assert!(
        refused.stderr().contains("was started by component sha256"),
        "{}",
        refused.stderr()
    );
    assert!(
        refused.stderr().contains("--allow-component-change"),
        "{}",
        refused.stderr()
    );
    assert_eq!(scratch.dump(), before, "nothing recorded");

    let allowed = run(scratch
        .run(&rebuilt, "pin")
        .args(["--allow-component-change", "--json"]))
    .expect_code(0)
    .json();
    assert_eq!(allowed["output"]["total"], 30);
    let pinned = scratch.strings("SELECT component_sha256 FROM workflows WHERE id = 'pin'");
    let pinned = pinned.into_iter().next().unwrap();
    assert!(
        !before.contains(&pinned),
        "the workflow is now pinned to the new component"
    );
}

#[test]
fn a_guest_that_runs_forever_is_stopped_by_the_timeout() {
    let scratch = Scratch::new();
    let input = json!({"scenario": "spin"}).to_string();
    let result = run(scratch.run(&artifacts().scenarios, "spin").args([
        "--input",
        &input,
        "--timeout",
        "500ms",
        "--json",
    ]))
    .expect_code(1)
    .json();
    let error = result["error"].as_str().unwrap();
    assert!(error.contains("ran past the --timeout of 500ms"), "{error}");
    // The workflow failed; its step did not end, so a `resume` with more
    // time executes it again.
    assert_eq!(scratch.workflow_status("spin").as_deref(), Some("failed"));
    assert_eq!(
        scratch.steps("spin"),
        vec![("spin#000001".into(), "running".into(), 1)]
    );
    // The host and the database are fine: the next workflow runs.
    run(&mut scratch.onboarding("after-spin")).expect_code(0);
}

#[test]
fn a_guest_that_allocates_without_bound_is_stopped_by_the_memory_limit() {
    let scratch = Scratch::new();
    let input = json!({"scenario": "hog"}).to_string();
    let result = run(scratch.run(&artifacts().scenarios, "hog").args([
        "--input",
        &input,
        "--max-memory",
        "32MiB",
        "--json",
    ]))
    .expect_code(1)
    .json();
    let error = result["error"].as_str().unwrap();
    assert!(
        error.contains("more than the --max-memory of 32 MiB"),
        "{error}"
    );
    run(&mut scratch.onboarding("after-hog")).expect_code(0);
}

#[test]
fn an_oversized_step_result_suspends_the_workflow_clearly() {
    let scratch = Scratch::new();
    let input = json!({"scenario": "big_output", "items": 20}).to_string();
    let result = run(scratch
        .run(&artifacts().scenarios, "big")
        .args(["--input", &input, "--json"]))
    .expect_code(7)
    .json();
    assert_eq!(result["status"], "suspended");
    let error = result["error"].as_str().unwrap();
    assert!(
        error.contains("more than the 16777216 bytes a checkpoint may hold"),
        "{error}"
    );
    assert!(scratch.integrity_ok());
}

#[test]
fn a_corrupt_database_is_reported_and_left_as_it_was() {
    let scratch = Scratch::new();
    if scratch.on_postgres() {
        // About the SQLite file: its pages damaged.
        return;
    }
    run(&mut scratch.onboarding("c1")).expect_code(0);
    let mut bytes = std::fs::read(scratch.db()).unwrap();
    // Keep the header (so SQLite opens it) and damage the pages behind it.
    for byte in bytes.iter_mut().skip(100).take(8192) {
        *byte = 0xA5;
    }
    std::fs::write(scratch.db(), &bytes).unwrap();
    for _ in 0..2 {
        let result = run(&mut scratch.onboarding("c2"));
        assert_eq!(result.code(), Some(2), "{}", result.stderr());
        assert!(
            result.stderr().starts_with("error: "),
            "{}",
            result.stderr()
        );
        assert!(!result.stderr().contains("panicked"), "{}", result.stderr());
    }
    assert_eq!(
        std::fs::read(scratch.db()).unwrap(),
        bytes,
        "the file was not touched"
    );
}

#[test]
fn a_database_path_that_is_a_directory() {
    let scratch = Scratch::new();
    if scratch.on_postgres() {
        // About the SQLite file's path.
        return;
    }
    let mut command = Command::new(&artifacts().host);
    command
        .current_dir(scratch.path())
        .arg("run")
        .arg(&artifacts().onboarding);
    command.args(["--workflow-id", "x", "--db", "services"]);
    let result = run(&mut command);
    assert_eq!(result.code(), Some(2));
    assert!(
        result
            .stderr()
            .starts_with("error: cannot open the database services"),
        "{}",
        result.stderr()
    );
    assert!(result.stderr().contains("hint:"), "{}", result.stderr());
}

#[test]
fn a_read_only_database_is_reported() {
    let scratch = Scratch::new();
    if scratch.on_postgres() {
        // About the SQLite file: its permissions.
        return;
    }
    run(&mut scratch.onboarding("ro1")).expect_code(0);
    let db = scratch.db();
    // Permissions do not bind root (as in CI); the immutable attribute does.
    let immutable = Command::new("chattr")
        .arg("+i")
        .arg(&db)
        .status()
        .is_ok_and(|s| s.success());
    if !immutable {
        let mut permissions = std::fs::metadata(&db).unwrap().permissions();
        permissions.set_readonly(true);
        std::fs::set_permissions(&db, permissions).unwrap();
    }
    let before = std::fs::read(&db).unwrap();
    let result = run(&mut scratch.onboarding("ro2"));
    if immutable {
        Command::new("chattr").arg("-i").arg(&db).status().unwrap();
    }
    assert_eq!(result.code(), Some(2), "{}", result.stderr());
    assert!(
        result
            .stderr()
            .starts_with("error: the database is read-only"),
        "{}",
        result.stderr()
    );
    assert!(
        result
            .stderr()
            .contains("hint: make the database writable by this user (a SQLite file"),
        "{}",
        result.stderr()
    );
    assert_eq!(std::fs::read(&db).unwrap(), before, "nothing was written");
}

#[test]
fn unknown_workflows_and_missing_databases() {
    let scratch = Scratch::new();
    run(&mut scratch.onboarding("known")).expect_code(0);
    for command in ["history", "cancel"] {
        let result = run(&mut scratch.host(&[command, "nobody"]));
        assert_eq!(result.code(), Some(2), "{command}: {}", result.stderr());
        assert!(
            result.stderr().contains("workflow nobody does not exist"),
            "{}",
            result.stderr()
        );
        assert!(
            result.stderr().contains("hint: `durable-host list`"),
            "{}",
            result.stderr()
        );
    }
    if scratch.on_postgres() {
        // The rest is about SQLite files: a missing one is not created.
        return;
    }
    let result = run(Command::new(&artifacts().host)
        .current_dir(scratch.path())
        .args(["list", "--db", "nope.db"]));
    assert_eq!(result.code(), Some(2));
    assert!(
        result.stderr().contains("no database at nope.db"),
        "{}",
        result.stderr()
    );
    assert!(
        !scratch.path().join("nope.db").exists(),
        "list does not create a database"
    );
}
