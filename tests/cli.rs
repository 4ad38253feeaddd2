//! The command line's own promises, on the real binary: tables that never
//! panic whatever the database holds, documented exit codes and hints for
//! lost ownership and storage failures, `--json` errors, crash points that
//! were never reached, and durable sleeps shown as times.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use durable_tests::{Run, Scratch, artifacts, employee, run, signal, spawn};
use serde_json::{Value, json};

/// No panic, no backtrace: what a user must never see.
fn assert_no_panic(result: &Run) {
    let stderr = result.stderr();
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{stderr}"
    );
}

/// The `error:` line and the hint of a failed command.
fn error_and_hint(result: &Run) -> (String, String) {
    let stderr = result.stderr();
    let error = stderr
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line in:\n{stderr}"))
        .to_owned();
    let hint = stderr
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("hint: "))
        .unwrap_or_else(|| panic!("no hint in:\n{stderr}"))
        .to_owned();
    (error, hint)
}

/// `command` run by `sh` after `limits` (shell commands such as `ulimit -n 3`).
fn with_limits(command: &Command, limits: &str) -> Command {
    let mut shell = Command::new("sh");
    shell
        .arg("-c")
        .arg(format!("{limits}; exec \"$0\" \"$@\""))
        .arg(command.get_program())
        .args(command.get_args());
    if let Some(dir) = command.get_current_dir() {
        shell.current_dir(dir);
    }
    shell
}

/// Copy workflow `from` (its row and its steps) under the id `to`, giving
/// its first step the name `step_name`: rows no run would write today, as
/// an older database or another tool could hold them.
fn copy_workflow(scratch: &Scratch, from: &str, to: &str, step_name: &str) {
    // Unqualified, `w` and `s` are the temporary tables on both backends.
    scratch.execute(&format!(
        "CREATE TEMP TABLE w AS SELECT * FROM workflows WHERE id = '{from}';
         UPDATE w SET id = '{to}';
         INSERT INTO workflows SELECT * FROM w;
         CREATE TEMP TABLE s AS SELECT * FROM steps WHERE workflow_id = '{from}';
         UPDATE s SET workflow_id = '{to}';
         UPDATE s SET name = '{step_name}', step_key = '{step_name}#000001'
         WHERE sequence = (SELECT min(sequence) FROM s);
         INSERT INTO steps SELECT * FROM s;
         INSERT INTO step_attempts (workflow_id, step_key, attempt, error, run_id, ended_at)
         VALUES ('{to}', '{step_name}#000001', 1, 'interrupted: the run died', 'run-0', 0)"
    ));
}

// 1. Tables never panic.

#[test]
fn list_and_history_cut_huge_ids_and_step_names_instead_of_panicking() {
    let scratch = Scratch::new();
    run(&mut scratch.scenario("seed", json!({"scenario": "loop", "items": 1}))).expect_code(0);
    // Past the 65,535 a format width may be.
    let id = "w".repeat(70_000);
    let name = "s".repeat(70_000);
    copy_workflow(&scratch, "seed", &id, &name);
    let cut_id = format!("{}…", "w".repeat(79));
    let cut_name = format!("{}…", "s".repeat(79));
    // Seven columns of at most 80 characters, two spaces apart.
    let bounded = |stdout: &str| {
        for line in stdout.lines() {
            assert!(
                line.chars().count() <= 7 * 82,
                "a line of {} characters",
                line.chars().count()
            );
        }
    };

    let list = run(&mut scratch.host(&["list"])).expect_code(0);
    assert_no_panic(&list);
    let stdout = list.stdout();
    bounded(&stdout);
    let row = stdout
        .lines()
        .find(|l| l.starts_with(&cut_id))
        .unwrap_or_else(|| panic!("no row for the long id in:\n{stdout}"));
    assert!(row.contains("completed"), "{row}");
    assert!(stdout.lines().any(|l| l.starts_with("seed ")), "{stdout}");

    let history = run(&mut scratch.host(&["history", &id])).expect_code(0);
    assert_no_panic(&history);
    let stdout = history.stdout();
    bounded(&stdout);
    assert!(stdout.contains(&cut_name), "{stdout}");
    assert!(stdout.contains("charge#000001") || stdout.contains("audit#000001"));
    assert!(stdout.contains("earlier attempts:"), "{stdout}");

    // --json keeps every value whole.
    let listed = run(&mut scratch.host(&["list", "--json"]))
        .expect_code(0)
        .json();
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["workflow_id"] == id.as_str()),
        "the full id in list --json"
    );
    let steps = run(&mut scratch.host(&["history", "--json", &id]))
        .expect_code(0)
        .json()["steps"]
        .clone();
    assert_eq!(steps[0]["name"], name.as_str());
    assert_eq!(steps[0]["key"], format!("{name}#000001"));
}

// 2. Exit codes and hints.

#[test]
fn a_run_that_lost_its_workflow_to_another_exits_8_and_says_what_happened() {
    let scratch = Scratch::new();
    let mut command = scratch.run(&artifacts().onboarding, "frozen");
    command.args(["--input", &employee("frozen", 600), "--json"]);
    let frozen = spawn(&mut command);
    scratch.wait_for_step("frozen", "create_record", "running");
    signal(frozen.id(), "-STOP");
    // Its lease runs out while it is stopped, and another run takes over.
    scratch.execute("UPDATE workflows SET lease_expires_at = 1, owner_host = 'elsewhere'");
    run(&mut scratch.run(&artifacts().onboarding, "frozen")).expect_code(0);

    signal(frozen.id(), "-CONT");
    let frozen = Run {
        output: frozen.wait_with_output().unwrap(),
    };
    assert_no_panic(&frozen);
    let frozen = frozen.expect_code(8);
    let (error, hint) = error_and_hint(&frozen);
    assert!(error.contains("frozen"), "{error}");
    assert!(
        hint.contains("another run took this workflow over")
            && hint.contains("durable-host history frozen"),
        "{hint}"
    );
    let json = frozen.json();
    assert_eq!(json["error"]["exit_code"], 8);
    assert_eq!(json["error"]["hint"], hint.as_str());
    // The successor's record stands.
    assert_eq!(scratch.workflow_status("frozen").unwrap(), "completed");
}

#[test]
fn a_database_deleted_under_a_run_is_a_storage_failure() {
    let scratch = Scratch::new();
    if scratch.on_postgres() {
        // About the SQLite file: deleted from under a run.
        return;
    }
    let input = json!({"scenario": "slow", "items": 4, "sleep_ms": 300});
    let child = spawn(&mut scratch.scenario("doomed", input));
    scratch.wait_for_step("doomed", "tick#000001", "completed");
    std::fs::remove_file(scratch.db()).unwrap();
    let result = Run {
        output: child.wait_with_output().unwrap(),
    };
    assert_no_panic(&result);
    let result = result.expect_code(9);
    let (error, hint) = error_and_hint(&result);
    assert!(error.contains("durable.db"), "{error}");
    assert!(hint.contains("restore the file"), "{hint}");
}

#[test]
fn a_full_disk_is_a_storage_failure() {
    let scratch = Scratch::new();
    if scratch.on_postgres() {
        // About the SQLite file: a file-size limit stands in for its full disk.
        return;
    }
    // A file-size limit stands in for a full disk: the database may grow to
    // 1 MiB, and the step's result alone is 2 MiB. (SIGXFSZ is ignored so
    // that the write fails instead of killing the process.)
    let mut command = scratch.scenario("big", json!({"scenario": "big_output", "items": 2}));
    command.args(["--no-cache", "--json"]);
    let result = run(&mut with_limits(&command, "trap '' XFSZ; ulimit -f 2048"));
    assert_no_panic(&result);
    let result = result.expect_code(9);
    let (error, hint) = error_and_hint(&result);
    assert!(error.contains("durable.db"), "{error}");
    assert!(
        hint.contains("free space") || hint.contains("its disk"),
        "{hint}"
    );
    let json = result.json();
    assert_eq!(json["error"]["exit_code"], 9);
}

#[test]
fn too_many_open_files_is_a_user_error_with_the_limit_to_raise() {
    let scratch = Scratch::new();
    run(&mut scratch.scenario("seed", json!({"scenario": "loop", "items": 1}))).expect_code(0);
    // stdin (closed for the dynamic loader, reopened on /dev/null by Rust's
    // start-up), stdout and stderr take the three descriptors allowed: none
    // is left for the database.
    let result = run(&mut with_limits(
        &scratch.host(&["history", "seed"]),
        "exec 0<&-; ulimit -n 3",
    ));
    assert_no_panic(&result);
    let result = result.expect_code(2);
    let (_, hint) = error_and_hint(&result);
    assert!(hint.contains("ulimit -n"), "{hint}");
}

#[test]
fn only_a_missing_directory_is_told_to_be_created() {
    let scratch = Scratch::new();
    if scratch.on_postgres() {
        // About the SQLite file's path: a missing directory, a directory.
        return;
    }
    let run_with_db = |db: &str| {
        let mut command = Command::new(&artifacts().host);
        command
            .current_dir(scratch.path())
            .arg("run")
            .arg(&artifacts().scenarios)
            .args(["--workflow-id", "x", "--db", db]);
        run(&mut command)
    };
    let missing = run_with_db("no-such-dir/durable.db").expect_code(2);
    let (_, hint) = error_and_hint(&missing);
    assert!(hint.contains("create the directory"), "{hint}");

    // A directory where the database should be: creating one would not help.
    let directory = run_with_db("services").expect_code(2);
    let (error, hint) = error_and_hint(&directory);
    assert!(error.contains("services"), "{error}");
    assert!(!hint.contains("create the directory"), "{hint}");
}

// 3. `--json` errors.

#[test]
fn json_errors_are_one_document_on_stdout() {
    let scratch = Scratch::new();
    run(&mut scratch.scenario("seed", json!({"scenario": "loop", "items": 1}))).expect_code(0);

    let result = run(&mut scratch.host(&["--json", "history", "no-such-id"])).expect_code(2);
    let error = &result.json()["error"];
    assert_eq!(error["exit_code"], 2);
    assert!(
        error["message"].as_str().unwrap().contains("no-such-id"),
        "{error}"
    );
    assert!(error["hint"].is_string(), "{error}");
    // People still get the text on stderr.
    assert!(
        result.stderr().starts_with("error: "),
        "{}",
        result.stderr()
    );

    // A run refused before it starts, and a command line clap refuses.
    let refused = run(scratch.run(Path::new("nope.wasm"), "x").arg("--json")).expect_code(2);
    let error = &refused.json()["error"];
    assert!(error["message"].as_str().unwrap().contains("nope.wasm"));
    assert_eq!(error["exit_code"], 2);
    let usage = run(&mut scratch.host(&["--json", "history"])).expect_code(2);
    let error = &usage.json()["error"];
    assert_eq!(error["exit_code"], 2);
    assert!(
        error["message"].as_str().unwrap().contains("<WORKFLOW_ID>"),
        "{error}"
    );

    // Without --json, stdout stays empty.
    let plain = run(&mut scratch.host(&["history", "no-such-id"])).expect_code(2);
    assert_eq!(plain.stdout(), "");
}

// 4. Crash points that were never reached.

#[test]
fn a_crash_point_no_step_reached_is_a_warning_and_exit_2() {
    let scratch = Scratch::new();
    let input = json!({"scenario": "loop", "items": 2});
    let typo = run(scratch.scenario("typo", input.clone()).args([
        "--crash",
        "chrage:before",
        "--crash",
        "total:after",
    ]))
    .expect_code(3);
    // The reachable point crashed the run: no warning about the other.
    assert!(
        !typo.stderr().contains("never reached"),
        "{}",
        typo.stderr()
    );

    let result = run(scratch.scenario("typo", input).args([
        "--crash",
        "chrage:before",
        "--crash-after",
        "99",
        "--json",
    ]))
    .expect_code(2);
    let stderr = result.stderr();
    assert!(
        stderr.contains("warning: --crash chrage:before was never reached"),
        "{stderr}"
    );
    assert!(
        stderr.contains("warning: --crash-after 99 was never reached"),
        "{stderr}"
    );
    for builtin in [
        "durable.now",
        "durable.sleep",
        "durable.random",
        "durable.uuid",
    ] {
        assert!(stderr.contains(builtin), "{builtin} in:\n{stderr}");
    }
    assert!(stderr.contains("#000002"), "{stderr}");
    // The run itself went through and was recorded as usual.
    assert_eq!(result.json()["status"], "completed");
    assert_eq!(scratch.workflow_status("typo").unwrap(), "completed");

    // Points that are reached still crash.
    let scratch = Scratch::new();
    run(scratch
        .scenario("ok", json!({"scenario": "loop", "items": 2}))
        .args(["--crash", "charge#000002:before"]))
    .expect_code(3);
}

// 5. Durable sleeps.

/// `2026-12-02 10:00:00` for epoch milliseconds, by GNU date.
fn utc(millis: i64) -> String {
    let output = Command::new("date")
        .args([
            "-u",
            "-d",
            &format!("@{}", millis / 1000),
            "+%Y-%m-%d %H:%M:%S",
        ])
        .output()
        .unwrap();
    assert!(output.status.success());
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

#[test]
fn sleeps_show_their_wake_up_time() {
    let scratch = Scratch::new();
    // Crash right after the wake-up time (an hour from now) is recorded.
    run(scratch
        .scenario(
            "napping",
            json!({"scenario": "sleep", "sleep_ms": 3_600_000}),
        )
        .args(["--crash", "durable.sleep:after"]))
    .expect_code(3);
    run(&mut scratch.scenario("done", json!({"scenario": "sleep", "sleep_ms": 1}))).expect_code(0);

    let history = run(&mut scratch.host(&["history", "--json", "napping"]))
        .expect_code(0)
        .json();
    let sleep = history["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "durable.sleep")
        .cloned()
        .unwrap();
    // JSON keeps the raw value.
    let wake_ms = sleep["output"].as_i64().unwrap();
    let wake = utc(wake_ms);
    assert_eq!(sleep["sleep_until"], format!("{}Z", wake.replace(' ', "T")));

    let table = run(&mut scratch.host(&["history", "napping"]))
        .expect_code(0)
        .stdout();
    let row = table
        .lines()
        .find(|l| l.contains("durable.sleep#000001"))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(row.contains(&format!("until {wake} UTC")), "{row}");
    assert!(!row.contains(&wake_ms.to_string()), "{row}");

    let list = run(&mut scratch.host(&["list"])).expect_code(0).stdout();
    let napping = list.lines().find(|l| l.starts_with("napping")).unwrap();
    assert!(
        napping.contains(&format!("sleeping until {wake} UTC")),
        "{list}"
    );
    // A finished workflow is not sleeping, whatever its last step was.
    let done = list.lines().find(|l| l.starts_with("done")).unwrap();
    assert!(!done.contains("sleeping"), "{list}");
}

#[test]
fn a_sleep_that_is_over_is_not_shown_as_sleeping() {
    let scratch = Scratch::new();
    run(scratch
        .scenario("woken", json!({"scenario": "sleep", "sleep_ms": 1}))
        .args(["--crash", "durable.sleep:after"]))
    .expect_code(3);
    std::thread::sleep(Duration::from_millis(20));
    let list = run(&mut scratch.host(&["list"])).expect_code(0).stdout();
    let row = list.lines().find(|l| l.starts_with("woken")).unwrap();
    assert!(
        row.contains("running") && !row.contains("sleeping"),
        "{list}"
    );
    let history: Value = run(&mut scratch.host(&["history", "--json", "woken"]))
        .expect_code(0)
        .json();
    assert!(history["steps"][1]["sleep_until"].is_string(), "{history}");
}

/// The compiled entries in cache directory `dir`, with their inodes (a
/// rewritten entry gets a new one).
fn cache_entries(dir: &Path) -> Vec<(String, u64)> {
    use std::os::unix::fs::MetadataExt;
    let mut entries: Vec<(String, u64)> = std::fs::read_dir(dir)
        .map(|entries| entries.map(Result::unwrap).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter(|entry| entry.path().extension().is_some_and(|e| e == "cwasm"))
        .map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            (name, entry.metadata().unwrap().ino())
        })
        .collect();
    entries.sort();
    entries
}

#[test]
fn compile_fills_the_one_cache_entry_that_runs_load_whatever_their_timeout() {
    let scratch = Scratch::new();
    let cache = scratch.path().join("cache");
    let cache_arg = cache.to_str().unwrap();
    let compile = || {
        let mut command = scratch.host(&["compile"]);
        command
            .arg(&artifacts().scenarios)
            .args(["--cache-dir", cache_arg, "--json"]);
        run(&mut command).expect_code(0).json()
    };
    let first = compile();
    assert_eq!(first["compiled"], true, "{first}");
    assert_eq!(first["cache_dir"], cache_arg);
    assert_eq!(first["component_sha256"].as_str().unwrap().len(), 64);
    let entries = cache_entries(&cache);
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(compile()["compiled"], false, "compiled already");

    // Runs without and with a timeout load that entry: none compiles again.
    let input = json!({"scenario": "loop", "items": 2});
    run(scratch
        .scenario("plain", input.clone())
        .args(["--cache-dir", cache_arg]))
    .expect_code(0);
    run(scratch
        .scenario("timed", input)
        .args(["--cache-dir", cache_arg, "--timeout", "30s"]))
    .expect_code(0);
    assert_eq!(cache_entries(&cache), entries);

    // People get the timing.
    let mut again = scratch.host(&["compile"]);
    again
        .arg(&artifacts().scenarios)
        .args(["--cache-dir", cache_arg]);
    let said = run(&mut again).expect_code(0).stdout();
    assert!(said.contains("was compiled already: loaded from"), "{said}");
}

#[test]
fn deploy_fills_the_cache_entry_that_run_loads() {
    let scratch = Scratch::new();
    let cache = scratch.path().join("cache");
    let cache_arg = cache.to_str().unwrap();
    let mut deploy = scratch.host(&["deploy", "scenarios"]);
    deploy
        .arg(&artifacts().scenarios)
        .args(["--cache-dir", cache_arg]);
    run(&mut deploy).expect_code(0);
    let entries = cache_entries(&cache);
    assert_eq!(entries.len(), 1, "{entries:?}");
    run(scratch
        .scenario("r", json!({"scenario": "loop", "items": 1}))
        .args(["--cache-dir", cache_arg]))
    .expect_code(0);
    assert_eq!(cache_entries(&cache), entries);
}

#[test]
fn compile_into_a_directory_others_may_write_is_refused_with_a_hint() {
    use std::os::unix::fs::PermissionsExt;
    let scratch = Scratch::new();
    let cache = scratch.path().join("shared");
    std::fs::create_dir(&cache).unwrap();
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut command = scratch.host(&["compile"]);
    command
        .arg(&artifacts().scenarios)
        .arg("--cache-dir")
        .arg(&cache);
    let result = run(&mut command);
    assert_eq!(result.code(), Some(2), "{}", result.stderr());
    assert_no_panic(&result);
    let (error, hint) = error_and_hint(&result);
    assert!(error.contains("its compiled form was not kept"), "{error}");
    assert!(hint.contains("--cache-dir DIR"), "{hint}");
    assert!(cache_entries(&cache).is_empty());
}

#[test]
fn a_reader_that_stops_early_is_no_error_for_list_and_history() {
    let scratch = Scratch::new();
    // A history of 1,500 steps and a list of 512 workflows: far more
    // output than a pipe holds.
    run(&mut scratch.scenario("w", json!({"scenario": "steps", "items": 1500}))).expect_code(0);
    let mut doubling = String::from("CREATE TEMP TABLE copies AS SELECT * FROM workflows;");
    for round in 0..9 {
        // Ids stay unique: each is `w` and a distinct set of round digits.
        doubling.push_str(&format!(
            "CREATE TEMP TABLE more AS SELECT * FROM copies; \
             UPDATE more SET id = id || '{round}'; \
             INSERT INTO copies SELECT * FROM more; DROP TABLE more;"
        ));
    }
    doubling.push_str("INSERT INTO workflows SELECT * FROM copies WHERE id <> 'w';");
    scratch.execute(&doubling);
    for args in [
        &["list", "--all"][..],
        &["list", "--all", "--json"],
        &["history", "w"],
        &["history", "w", "--json"],
    ] {
        let mut child = scratch
            .host(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = [0; 16];
        std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut first).unwrap();
        drop(child.stdout.take());
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(stderr.is_empty(), "{args:?}: {stderr}");
    }
}

#[test]
fn names_that_select_nothing_or_could_not_be_named_again_are_refused_with_a_hint() {
    let scratch = Scratch::new();
    run(&mut scratch.scenario("w", json!({"scenario": "steps", "items": 1}))).expect_code(0);
    // A mistyped cursor must not look like the end of the listing.
    let unknown = run(&mut scratch.host(&["list", "--after", "nope"])).expect_code(2);
    assert!(
        unknown.stderr().contains("--after names no workflow")
            && unknown.stderr().contains("hint:"),
        "{}",
        unknown.stderr()
    );
    run(&mut scratch.host(&["list", "--limit", "0"])).expect_code(2);
    let after_last = run(&mut scratch.host(&["list", "--after", "w", "--json"]))
        .expect_code(0)
        .json();
    assert_eq!(after_last, json!([]));
    let mut verify = scratch.host(&["verify"]);
    verify
        .arg(&artifacts().scenarios)
        .args(["--workflow-id", "nope"]);
    let unknown = run(&mut verify).expect_code(2);
    assert!(
        unknown.stderr().contains("workflow nope does not exist")
            && unknown.stderr().contains("hint: `durable-host list`"),
        "{}",
        unknown.stderr()
    );

    // `@` would make a deployment impossible to name in `upgrade --to NAME@SHA`.
    let mut deploy = scratch.host(&["deploy", "a@b"]);
    deploy.arg(&artifacts().scenarios);
    let refused = run(&mut deploy).expect_code(2);
    assert!(
        refused.stderr().contains("`@` separates"),
        "{}",
        refused.stderr()
    );
    let deployments = run(&mut scratch.host(&["deploy", "--list", "--json"]))
        .expect_code(0)
        .json();
    assert_eq!(deployments, json!([]), "nothing deployed");
}

#[test]
fn a_reader_that_went_away_changes_no_exit_code_and_stops_no_run() {
    let scratch = Scratch::new();
    let slow = json!({"scenario": "slow", "items": 3, "sleep_ms": 50});
    let mut deployments = scratch.host(&["deploy", "--list"]);
    let mut schedules = scratch.host(&["schedule", "list"]);
    for (name, command) in [
        ("run", &mut scratch.scenario("piped", slow)),
        ("deploy --list", &mut deployments),
        ("schedule list", &mut schedules),
    ] {
        let mut child = command
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Closed before the command writes anything: every write fails.
        drop(child.stdout.take());
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(0), "{name}: {stderr}");
        assert!(!stderr.contains("panicked"), "{name}: {stderr}");
    }
    assert_eq!(
        scratch.workflow_status("piped").as_deref(),
        Some("completed")
    );
}
