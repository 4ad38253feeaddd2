//! Regression tests for the hardening of the host's promises: fencing of a
//! run that lost its lease, the run-wide memory budget, the bound on
//! takeovers, owners in other pid namespaces, idempotency keys, timeouts,
//! protection of the database, a full disk, input checks, suspension and
//! resume, recorded grants, retries, the replay-silent log, and a host with
//! no memory for an instance.
//!
//! Every test drives the real `durable-host` binary; the durability tests
//! kill (SIGKILL), freeze (SIGSTOP/SIGCONT) or starve (a full tmpfs, a
//! memory budget, an address-space limit) a real process.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use durable_tests::{
    Scratch, Server, all_threads_stopped, artifacts, is_write_lock_free, run, signal, spawn,
    wait_until,
};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------
// Helpers

/// Wait for `child` to exit (at most `timeout`, then kill it and fail) and
/// collect its output.
fn wait_output(mut child: Child, timeout: Duration) -> Output {
    use std::io::Read;
    // Drain the pipes on threads so that a chatty child cannot block.
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let out = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(pipe) = stdout.as_mut() {
            let _ = pipe.read_to_end(&mut buf);
        }
        buf
    });
    let err = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(pipe) = stderr.as_mut() {
            let _ = pipe.read_to_end(&mut buf);
        }
        buf
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the process did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Every row of every table, to prove that a process wrote nothing.
fn dump_all(scratch: &Scratch) -> String {
    let mut dump = String::new();
    for table in ["workflows", "steps", "step_attempts", "workflow_events"] {
        for row in scratch.query(&format!("SELECT * FROM {table} ORDER BY 1, 2, 3")) {
            dump.push_str(&format!("{table}: {row:?}\n"));
        }
    }
    dump
}

/// `command` run by `prefix` (`unshare ...`): the same program, arguments
/// and working directory.
fn wrapped(prefix: &[&str], command: &Command) -> Command {
    let mut wrapped = Command::new(prefix[0]);
    wrapped
        .args(&prefix[1..])
        .arg(command.get_program())
        .args(command.get_args())
        .stdin(Stdio::null());
    if let Some(dir) = command.get_current_dir() {
        wrapped.current_dir(dir);
    }
    wrapped
}

/// `durable-host run` of the scenarios guest on the scratch database,
/// granting nothing (unlike [`Scratch::run`]).
fn plain_run(scratch: &Scratch, id: &str) -> Command {
    let mut command = Command::new(&artifacts().host);
    command
        .current_dir(scratch.path())
        .arg("run")
        .arg(&artifacts().scenarios)
        .args(["--workflow-id", id, "--db"])
        .arg(scratch.db_arg())
        .stdin(Stdio::null());
    command
}

fn ledger(scratch: &Scratch) -> String {
    format!("{}::/ledger", scratch.path().join("ledger").display())
}

/// How many steps of `id` are completed (0 while the database is missing).
fn completed_steps(scratch: &Scratch, id: &str) -> usize {
    scratch
        .try_steps(id)
        .unwrap_or_default()
        .iter()
        .filter(|s| s.1 == "completed")
        .count()
}

/// `(status, error, attempts, failures)` of step `key` of `id`.
fn step_row(scratch: &Scratch, id: &str, key: &str) -> (String, Option<String>, u32, u32) {
    let rows = scratch.query(&format!(
        "SELECT status, error, attempts, failures FROM steps
         WHERE workflow_id = '{id}' AND step_key = '{key}'"
    ));
    let row = rows
        .first()
        .unwrap_or_else(|| panic!("no step {key} of {id}"));
    let count = |i: usize| row[i].as_u64().unwrap() as u32;
    let error = row[1].as_str().map(str::to_owned);
    (
        row[0].as_str().unwrap().to_owned(),
        error,
        count(2),
        count(3),
    )
}

/// `(attempt, error, interrupted, backoff_ms)` of every recorded earlier
/// attempt of step `key` of `id`.
fn attempt_rows(scratch: &Scratch, id: &str, key: &str) -> Vec<(u32, String, bool, Option<i64>)> {
    scratch
        .query(&format!(
            "SELECT attempt, error, interrupted, backoff_ms FROM step_attempts
             WHERE workflow_id = '{id}' AND step_key = '{key}' ORDER BY attempt"
        ))
        .into_iter()
        .map(|r| {
            let attempt = r[0].as_u64().unwrap() as u32;
            let error = r[1].as_str().unwrap().to_owned();
            (attempt, error, r[2].as_i64().unwrap() != 0, r[3].as_i64())
        })
        .collect()
}

/// Event kinds recorded for `id`.
fn event_kinds(scratch: &Scratch, id: &str) -> BTreeSet<String> {
    scratch.strings(&format!(
        "SELECT kind FROM workflow_events WHERE workflow_id = '{id}'"
    ))
}

/// Lines of `/ledger/<key>.executions` written by the `plan_*` scenarios.
fn executions(scratch: &Scratch, key: &str) -> Vec<String> {
    let path = scratch.path().join(format!("ledger/{key}.executions"));
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// How many times each step body ran, from the scenarios' effects log.
fn effect_counts(scratch: &Scratch) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for key in scratch.effects() {
        *counts.entry(key).or_default() += 1;
    }
    counts
}

// ---------------------------------------------------------------------------
// 1. Fencing

/// Freeze `pid` at a point where it is between two steps: no step of `id`
/// is running and it holds no lock: SQLite's write lock, or on PostgreSQL
/// a transaction (which the server would end under it, failing the run in
/// another way than the fencing). Returns false (and lets it run again)
/// when the freeze caught it elsewhere.
fn freeze_between_steps(scratch: &Scratch, id: &str, pid: u32) -> bool {
    signal(pid, "-STOP");
    wait_until("the process to stop", Duration::from_secs(10), || {
        all_threads_stopped(pid)
    });
    let steps = scratch.steps(id);
    let unlocked = if scratch.on_postgres() {
        !in_a_postgres_transaction(scratch, pid)
    } else {
        is_write_lock_free(&scratch.db())
    };
    if steps.iter().all(|s| s.1 == "completed") && unlocked {
        return true;
    }
    signal(pid, "-CONT");
    false
}

/// Whether a PostgreSQL session of process `pid` is inside a transaction
/// (or a statement): its sessions found by the local ports of its sockets.
fn in_a_postgres_transaction(scratch: &Scratch, pid: u32) -> bool {
    let sockets: BTreeSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|link| {
            let inode = link.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?;
            Some(inode.to_owned())
        })
        .collect();
    let mut ports = Vec::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            // `sl local_address(IP:PORT, hex) ... inode` (the tenth field).
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() > 9 && sockets.contains(fields[9]) {
                let port = fields[1].rsplit(':').next().unwrap();
                ports.push(u16::from_str_radix(port, 16).unwrap().to_string());
            }
        }
    }
    assert!(!ports.is_empty(), "process {pid} has no connection");
    let busy = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE client_port IN ({}) AND state <> 'idle'",
        ports.join(", ")
    );
    scratch.number(&busy) > 0
}

#[test]
fn a_run_frozen_between_steps_past_its_lease_writes_nothing_after_a_takeover() {
    let iterations: usize = std::env::var("DURABLE_FENCE_ITERATIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(5);
    const STEPS: usize = 12;
    for iteration in 0..iterations {
        let scratch = Scratch::new();
        let id = format!("fence-{iteration}");
        let input = json!({"scenario": "burn_between", "items": STEPS, "burn_ms": 250});
        let mut first = scratch.scenario(&id, input.clone());
        first.args(["--stale-after", "1s"]);
        let frozen = spawn(&mut first);
        let pid = frozen.id();

        // Freeze at a different point each time: after 1 to 7 steps, and a
        // varying way into the CPU-bound stretch after it.
        let after = 1 + iteration % 7;
        wait_until(
            &format!("{after} completed steps"),
            Duration::from_secs(60),
            || completed_steps(&scratch, &id) >= after,
        );
        std::thread::sleep(Duration::from_millis((iteration as u64 * 53) % 200));
        let mut tries = 0;
        while !freeze_between_steps(&scratch, &id, pid) {
            tries += 1;
            assert!(tries < 100, "never caught the run between two steps");
            std::thread::sleep(Duration::from_millis(7 + tries % 30));
        }
        let done_when_frozen = completed_steps(&scratch, &id);
        assert!(
            done_when_frozen < STEPS,
            "iteration {iteration}: frozen before the end"
        );

        // Its lease (1 s) runs out while it is stopped; a second run takes
        // the workflow over and completes it.
        std::thread::sleep(Duration::from_millis(1500));
        let successor = run(scratch.scenario(&id, input).arg("--json"))
            .expect_code(0)
            .json();
        assert_eq!(successor["status"], "completed");
        let expected: usize = (0..STEPS).sum();
        assert_eq!(successor["output"], json!(expected));
        let dump = dump_all(&scratch);
        let effects = scratch.effects();

        // The frozen run wakes up: it must stop with exit 8 and write nothing.
        signal(pid, "-CONT");
        let output = wait_output(frozen, Duration::from_secs(60));
        let stderr = text(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(8),
            "iteration {iteration} (frozen after {done_when_frozen} steps): the run that lost \
             its lease must exit 8\n--- stdout\n{}--- stderr\n{stderr}",
            text(&output.stdout)
        );
        assert!(stderr.contains("taken over"), "{stderr}");
        assert!(
            !text(&output.stdout).contains("completed in"),
            "it must not report completion: {}",
            text(&output.stdout)
        );
        assert_eq!(
            dump_all(&scratch),
            dump,
            "iteration {iteration}: the run that lost its lease changed the database"
        );
        assert_eq!(
            scratch.effects(),
            effects,
            "iteration {iteration}: a step body ran after the run lost its lease"
        );
        // Every step body ran exactly once: the first run's before the
        // freeze, the successor's after.
        let counts = effect_counts(&scratch);
        assert_eq!(counts.len(), STEPS, "{counts:?}");
        assert!(counts.values().all(|&n| n == 1), "{counts:?}");
        assert!(scratch.integrity_ok());
    }
}

// ---------------------------------------------------------------------------
// 2. Memory budget for the whole run

#[test]
fn max_memory_is_a_budget_for_all_branches_together() {
    let scratch = Scratch::new();
    // 8 branches of 120 MiB each, all holding their memory at the same
    // time: each fits a 256 MiB limit alone, at most two fit together.
    let input = json!({"scenario": "mem_branches", "items": 8, "mib": 120, "hold_ms": 2000});
    let result =
        run(scratch
            .scenario("mem", input.clone())
            .args(["--max-memory", "256MiB", "--json"]));
    // The run ends on its own (it is not killed), failed by the limit.
    let failed = result.expect_code(1).json();
    assert_eq!(failed["status"], "failed");
    let error = failed["error"].as_str().unwrap_or_default();
    assert!(error.contains("--max-memory"), "{error}");
    let branch_rows = || -> Vec<(String, String)> {
        scratch
            .query(
                "SELECT step_key, status FROM steps
                 WHERE workflow_id = 'mem' AND name = 'mem' ORDER BY sequence",
            )
            .into_iter()
            .map(|r| {
                (
                    r[0].as_str().unwrap().to_owned(),
                    r[1].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let branches = branch_rows();
    assert_eq!(branches.len(), 8, "{branches:?}");
    let fitted = branches.iter().filter(|b| b.1 == "completed").count();
    assert!(
        (1..=2).contains(&fitted),
        "one or two 120 MiB branches fit a 256 MiB budget, {fitted} did: {branches:?}"
    );
    // A limit is not a branch's answer: the branches it stopped are left
    // unfinished, so that a resume with a larger budget runs them.
    assert!(
        branches
            .iter()
            .all(|(_, status)| status == "completed" || status == "running"),
        "{branches:?}"
    );
    let mut resume = scratch.host(&["resume", "mem"]);
    resume.arg(&artifacts().scenarios).args([
        "--max-memory",
        "2GiB",
        "--dir",
        &format!("{}::/ledger", scratch.path().join("ledger").display()),
        "--dir",
        &format!("{}::/services", scratch.path().join("services").display()),
    ]);
    run(&mut resume).expect_code(0);
    assert!(
        branch_rows()
            .iter()
            .all(|(_, status)| status == "completed")
    );
    // The host carries on: another workflow in the same database runs.
    run(&mut scratch.scenario("after-mem", json!({"scenario": "loop", "items": 2}))).expect_code(0);
}

#[test]
fn a_max_memory_too_small_to_start_says_so_and_suggests_a_larger_one() {
    let scratch = Scratch::new();
    let input = json!({"scenario": "loop", "items": 2});
    // A Rust guest's instance starts with more than 1 MiB (its stack alone).
    let failed = run(scratch
        .scenario("small", input)
        .args(["--max-memory", "1MiB", "--json"]))
    .expect_code(1)
    .json();
    let error = failed["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("an instance could not start within the --max-memory of 1 MiB")
            && error.contains("resume it with a larger --max-memory, e.g. "),
        "{error}"
    );
    // The suggestion is enough.
    let suggested = error.rsplit("e.g. ").next().unwrap();
    let mut resume = scratch.host(&["resume", "small"]);
    resume
        .arg(&artifacts().scenarios)
        .args(["--max-memory", suggested])
        .arg("--dir")
        .arg(format!(
            "{}::/ledger",
            scratch.path().join("ledger").display()
        ))
        .arg("--dir")
        .arg(format!(
            "{}::/services",
            scratch.path().join("services").display()
        ));
    run(&mut resume).expect_code(0);
}

// ---------------------------------------------------------------------------
// 3. Takeover bound

#[test]
fn a_workflow_whose_runs_keep_dying_is_suspended_then_resumed() {
    let scratch = Scratch::new();
    let input = json!({"scenario": "slow", "items": 1, "sleep_ms": 0});
    let mut suspended_at = None;
    let mut last = None;
    for attempt in 1..=20 {
        let result = run(scratch
            .scenario("doomed", input.clone())
            .args(["--crash", "tick:before"]));
        if result.code() == Some(7) {
            suspended_at = Some(attempt);
            last = Some(result);
            break;
        }
        result.expect_code(3);
    }
    let suspended_at = suspended_at.expect("never suspended after 20 runs that died");
    // The first run creates it; each later run is a takeover.
    let takeovers = suspended_at - 2;
    assert!(
        (2..=8).contains(&takeovers),
        "suspended after {takeovers} consecutive takeovers (run {suspended_at})"
    );
    // The run that suspends it says why (the stored error, on stdout).
    let last = last.unwrap();
    let said = format!("{}{}", last.stdout(), last.stderr());
    assert!(
        said.contains("suspended") && said.contains("died"),
        "{said}"
    );

    let history = run(&mut scratch.host(&["history", "doomed", "--json"]))
        .expect_code(0)
        .json();
    assert_eq!(history["status"], "suspended");
    let reason = history["error"].as_str().unwrap();
    assert!(reason.contains("died"), "names the runs dying: {reason}");
    assert_eq!(
        scratch.workflow_status("doomed").as_deref(),
        Some("suspended")
    );
    assert!(
        scratch.effects().is_empty(),
        "no body ran: {:?}",
        scratch.effects()
    );

    // Fixed (no more crash): resume completes it.
    let mut resume = scratch.host(&["resume", "doomed"]);
    resume.arg(&artifacts().scenarios);
    run(&mut resume).expect_code(0);
    assert_eq!(
        scratch.workflow_status("doomed").as_deref(),
        Some("completed")
    );
    assert_eq!(scratch.effects(), ["tick#000001"]);
}

// ---------------------------------------------------------------------------
// 4. PID namespaces

const UNSHARE_PID: &[&str] = &["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"];

#[test]
fn a_run_in_another_pid_namespace_does_not_take_over_a_live_owner() {
    let scratch = Scratch::new();
    let input = json!({"scenario": "hold", "items": 1, "sleep_ms": 60000});
    let mut owner = spawn(&mut scratch.scenario("ns-out", input.clone()));
    wait_until("the step to run", Duration::from_secs(30), || {
        scratch.effects().len() == 1
    });
    let before = scratch.steps("ns-out");

    let mut inside = wrapped(UNSHARE_PID, &scratch.scenario("ns-out", input.clone()));
    let refused = run(&mut inside);
    let refused = refused.expect_code(5);
    assert!(
        refused.stderr().contains("is being run by run"),
        "{}",
        refused.stderr()
    );
    assert_eq!(scratch.effects(), ["hold#000001"], "the step ran once");
    assert_eq!(scratch.steps("ns-out"), before);
    assert_eq!(before, vec![("hold#000001".into(), "running".into(), 1)]);

    owner.kill().unwrap();
    owner.wait().unwrap();
}

#[test]
fn a_run_outside_does_not_take_over_a_live_owner_in_a_pid_namespace() {
    let scratch = Scratch::new();
    let input = json!({"scenario": "hold", "items": 1, "sleep_ms": 60000});
    let mut owner = wrapped(UNSHARE_PID, &scratch.scenario("ns-in", input.clone()));
    let mut owner = spawn(&mut owner);
    wait_until("the step to run", Duration::from_secs(30), || {
        scratch.effects().len() == 1
    });
    let before = scratch.steps("ns-in");
    let owner_pid = scratch.number("SELECT owner_pid FROM workflows WHERE id = 'ns-in'");

    let refused = run(&mut scratch.scenario("ns-in", input.clone())).expect_code(5);
    assert!(
        refused.stderr().contains("is being run by run"),
        "the owner (pid {owner_pid} in its namespace) is alive: {}",
        refused.stderr()
    );
    assert_eq!(scratch.effects(), ["hold#000001"], "the step ran once");
    assert_eq!(scratch.steps("ns-in"), before);

    owner.kill().unwrap();
    owner.wait().unwrap();
}

// ---------------------------------------------------------------------------
// 5. Idempotency keys

#[test]
fn idempotency_keys_tell_a_slash_in_the_id_from_one_in_the_step() {
    let scratch = Scratch::new();
    let key = |id: &str, name: &str| {
        let result = run(scratch
            .scenario(id, json!({"scenario": "idempotency", "name": name}))
            .arg("--json"))
        .expect_code(0)
        .json();
        result["output"].as_str().unwrap().to_owned()
    };
    let a = key("pay/x", "charge");
    let b = key("pay", "x/charge");
    assert_ne!(a, b);
    assert_eq!(a, "pay%2Fx/charge#000001");
    assert_eq!(b, "pay/x/charge#000001");
    assert_eq!(key("100%", "charge"), "100%25/charge#000001");
}

// ---------------------------------------------------------------------------
// 6. Timeouts

#[test]
fn a_timeout_stops_a_step_blocked_in_a_sleep() {
    let scratch = Scratch::new();
    let started = Instant::now();
    let result = run(scratch
        .scenario(
            "nap",
            json!({"scenario": "slow", "items": 1, "sleep_ms": 20000}),
        )
        .args(["--timeout", "2s", "--json"]));
    let took = started.elapsed();
    let result = result.expect_code(1).json();
    assert!(took < Duration::from_secs(10), "stopped after {took:?}");
    let error = result["error"].as_str().unwrap();
    assert!(error.contains("--timeout"), "{error}");
    assert_eq!(scratch.workflow_status("nap").as_deref(), Some("failed"));
}

#[test]
fn a_timeout_stops_a_parallel_branch_blocked_in_a_sleep() {
    let scratch = Scratch::new();
    let started = Instant::now();
    let result = run(scratch
        .scenario(
            "branch-nap",
            json!({"scenario": "fast_and_slow", "sleep_ms": 30000}),
        )
        .args(["--timeout", "2s", "--json"]));
    let took = started.elapsed();
    let result = result.expect_code(1).json();
    assert!(took < Duration::from_secs(10), "stopped after {took:?}");
    let error = result["error"].as_str().unwrap();
    assert!(error.contains("--timeout"), "{error}");
}

#[test]
fn durable_sleeps_do_not_count_against_the_timeout() {
    let scratch = Scratch::new();
    let result = run(scratch
        .scenario("dozy", json!({"scenario": "sleep", "sleep_ms": 2000}))
        .args(["--timeout", "1500ms", "--json"]))
    .expect_code(0)
    .json();
    assert_eq!(result["output"], "woke up");
}

// ---------------------------------------------------------------------------
// 7. Database protection

#[test]
fn granting_the_directory_that_holds_the_database_is_refused() {
    let scratch = Scratch::new();
    if scratch.on_postgres() {
        // About the SQLite file: a guest granted the directory that holds it.
        return;
    }
    // A database with a workflow in it, in the scratch directory.
    run(&mut scratch.scenario("kept", json!({"scenario": "loop", "items": 1}))).expect_code(0);
    let bytes = std::fs::read(scratch.db()).unwrap();
    let dump = dump_all(&scratch);

    // `--dir .` in the directory of the default ./durable.db.
    let refused = run(Command::new(&artifacts().host)
        .current_dir(scratch.path())
        .args(["run"])
        .arg(&artifacts().scenarios)
        .args(["--workflow-id", "greedy", "--dir", ".", "--input"])
        .arg(json!({"scenario": "loop", "items": 1}).to_string())
        .stdin(Stdio::null()))
    .expect_code(2);
    assert!(refused.stderr().contains("--dir"), "{}", refused.stderr());

    // A --db inside a granted directory (two levels down).
    std::fs::create_dir_all(scratch.path().join("data/db")).unwrap();
    let nested = scratch.path().join("data/db/nested.db");
    run(Command::new(&artifacts().host)
        .arg("run")
        .arg(&artifacts().scenarios)
        .args(["--workflow-id", "seed", "--db"])
        .arg(&nested)
        .args(["--input", r#"{"scenario": "loop", "items": 1}"#])
        .stdin(Stdio::null()))
    .expect_code(0);
    let nested_bytes = std::fs::read(&nested).unwrap();
    let refused = run(Command::new(&artifacts().host)
        .current_dir(scratch.path())
        .args(["run"])
        .arg(&artifacts().scenarios)
        .args(["--workflow-id", "greedy", "--db"])
        .arg(&nested)
        .arg("--dir")
        .arg(format!("{}::/data", scratch.path().join("data").display()))
        .args(["--input", r#"{"scenario": "loop", "items": 1}"#])
        .stdin(Stdio::null()))
    .expect_code(2);
    assert!(refused.stderr().contains("--dir"), "{}", refused.stderr());

    assert_eq!(
        std::fs::read(scratch.db()).unwrap(),
        bytes,
        "durable.db untouched"
    );
    assert_eq!(dump_all(&scratch), dump);
    assert_eq!(
        std::fs::read(&nested).unwrap(),
        nested_bytes,
        "nested.db untouched"
    );
    assert!(scratch.workflow_status("greedy").is_none());
}

#[test]
fn a_database_deleted_under_a_run_stops_it_with_a_storage_failure() {
    let scratch = Scratch::new();
    if scratch.on_postgres() {
        // About the SQLite file: deleted from under a run.
        return;
    }
    let input = json!({"scenario": "hold", "items": 2, "sleep_ms": 1500});
    let child = spawn(&mut scratch.scenario("doomed-db", input));
    wait_until("the first step to run", Duration::from_secs(30), || {
        scratch.effects().len() == 1
    });
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", scratch.db().display()));
    }
    let output = wait_output(child, Duration::from_secs(60));
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(9), "{stderr}");
    assert!(stderr.contains("deleted or replaced"), "{stderr}");
    assert!(
        !text(&output.stdout).contains("completed"),
        "{}",
        text(&output.stdout)
    );
    assert_eq!(
        scratch.effects(),
        ["hold#000001"],
        "it stopped at its next write"
    );
}

#[test]
fn a_database_replaced_under_a_run_stops_it_and_the_copy_is_resumable() {
    let scratch = Scratch::new();
    if scratch.on_postgres() {
        // About the SQLite file: replaced under a run by a copy.
        return;
    }
    let input = json!({"scenario": "hold", "items": 2, "sleep_ms": 1500});
    let child = spawn(&mut scratch.scenario("swapped", input));
    wait_until("the first step to run", Duration::from_secs(30), || {
        scratch.effects().len() == 1
    });
    // A consistent copy (as a restore from backup would be) put in place.
    let copy = scratch.path().join("copy.db");
    scratch
        .sql()
        .execute("VACUUM INTO ?1", [copy.to_str().unwrap()])
        .unwrap();
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", scratch.db().display()));
    }
    std::fs::rename(&copy, scratch.db()).unwrap();
    let replaced = dump_all(&scratch);

    let output = wait_output(child, Duration::from_secs(60));
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(9), "{stderr}");
    assert!(stderr.contains("deleted or replaced"), "{stderr}");
    assert!(
        !text(&output.stdout).contains("completed"),
        "{}",
        text(&output.stdout)
    );
    assert_eq!(
        dump_all(&scratch),
        replaced,
        "nothing went into the new file"
    );
    assert_eq!(
        scratch.steps("swapped"),
        vec![("hold#000001".into(), "running".into(), 1)]
    );

    // Run again: the step in flight is taken over and the workflow ends.
    run(&mut plain_run(&scratch, "swapped")).expect_code(0);
    assert_eq!(
        scratch.workflow_status("swapped").as_deref(),
        Some("completed")
    );
}

// ---------------------------------------------------------------------------
// 8. Disk full

#[test]
fn a_full_disk_stops_the_run_with_a_storage_failure_and_loses_nothing_committed() {
    let scratch = Scratch::new();
    if scratch.on_postgres() {
        // About the SQLite file: its disk fills up.
        return;
    }
    let mount = scratch.path().join("tmpfs");
    let out = scratch.path().join("out");
    std::fs::create_dir(&mount).unwrap();
    std::fs::create_dir(&out).unwrap();
    // Everything on the tmpfs happens in one private mount namespace: the
    // run that fills the disk, a look at the history, copies of the
    // database, then the same run again once space is freed.
    let script = r#"
set -u
mount -t tmpfs -o size=8m tmpfs "$T" || { echo "cannot mount a tmpfs on $T" >&2; exit 97; }
head -c 6291456 /dev/zero > "$T/filler" || exit 96
go() { "$HOST" run "$WASM" --workflow-id big --db "$T/durable.db" --dir "$LEDGER::/ledger" --input "$INPUT"; }
go > "$OUT/run1.out" 2> "$OUT/run1.err"; echo $? > "$OUT/run1.code"
"$HOST" history big --db "$T/durable.db" --json > "$OUT/history1.json" 2> "$OUT/history1.err"
echo $? > "$OUT/history1.code"
mkdir "$OUT/full" && cp "$T"/durable.db* "$OUT/full/" || exit 95
rm "$T/filler"
go > "$OUT/run2.out" 2> "$OUT/run2.err"; echo $? > "$OUT/run2.code"
mkdir "$OUT/freed" && cp "$T"/durable.db* "$OUT/freed/" || exit 94
"#;
    let input = json!({"scenario": "big_steps", "items": 30, "kib": 100});
    let status = Command::new("unshare")
        .args(["--mount", "sh", "-c", script])
        .env("T", &mount)
        .env("OUT", &out)
        .env("HOST", &artifacts().host)
        .env("WASM", &artifacts().scenarios)
        .env("LEDGER", scratch.path().join("ledger"))
        .env("INPUT", input.to_string())
        .stdin(Stdio::null())
        .output()
        .expect("run unshare");
    assert!(
        status.status.success(),
        "the tmpfs script failed ({:?}); this test needs root and `unshare --mount`:\n{}",
        status.status,
        text(&status.stderr)
    );
    let read = |name: &str| std::fs::read_to_string(out.join(name)).unwrap_or_default();
    let code = |name: &str| read(name).trim().parse::<i32>().unwrap();

    // The run that filled the disk: exit 9, with a hint to free space.
    let stderr = read("run1.err");
    assert_eq!(code("run1.code"), 9, "{}{stderr}", read("run1.out"));
    assert!(stderr.contains("full"), "{stderr}");
    assert!(stderr.contains("free space"), "{stderr}");

    // Read back inside the same mount namespace: the steps it committed.
    assert_eq!(code("history1.code"), 0, "{}", read("history1.err"));
    let history: Value = serde_json::from_str(&read("history1.json")).unwrap();
    let committed: Vec<String> = history["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["status"] == "completed")
        .map(|s| s["key"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        (1..30).contains(&committed.len()),
        "some steps were committed before the disk filled: {committed:?}"
    );

    // The database as it was left on the full disk is sound and holds them.
    let full = out.join("full/durable.db");
    let _ = std::fs::remove_file(out.join("full/durable.db-shm"));
    let conn = rusqlite::Connection::open(&full).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    let stored: i64 = conn
        .query_row(
            "SELECT count(*) FROM steps WHERE workflow_id = 'big' AND status = 'completed'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(stored as usize, committed.len());
    drop(conn);

    // Space freed, the same command again: it completes, and no committed
    // step ran a second time.
    assert_eq!(
        code("run2.code"),
        0,
        "{}{}",
        read("run2.out"),
        read("run2.err")
    );
    let _ = std::fs::remove_file(out.join("freed/durable.db-shm"));
    let conn = rusqlite::Connection::open(out.join("freed/durable.db")).unwrap();
    let (status, done): (String, i64) = conn
        .query_row(
            "SELECT status, (SELECT count(*) FROM steps WHERE status = 'completed')
             FROM workflows WHERE id = 'big'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((status.as_str(), done), ("completed", 30));
    let counts = effect_counts(&scratch);
    for key in &committed {
        assert_eq!(counts.get(key), Some(&1), "{key} ran again: {counts:?}");
    }
}

// ---------------------------------------------------------------------------
// 9. Inputs

#[test]
fn an_input_of_the_wrong_shape_records_nothing() {
    let scratch = Scratch::new();
    let refused = run(&mut scratch.scenario("shape", json!({"nope": 1}))).expect_code(2);
    let stderr = refused.stderr();
    assert!(stderr.contains("shape"), "{stderr}");
    assert!(
        scratch.workflow_status("shape").is_none(),
        "no workflow row"
    );
    assert!(scratch.try_steps("shape").unwrap_or_default().is_empty());

    // The id was not spent: it starts with a correct input.
    let started = run(scratch
        .scenario("shape", json!({"scenario": "loop", "items": 1}))
        .arg("--json"))
    .expect_code(0)
    .json();
    assert_eq!(started["status"], "completed");

    // A recorded workflow resumed on code that does not take its input:
    // the hint is not to reuse its id, which stays taken.
    run(&mut scratch.scenario("failed", json!({"scenario": "fail"}))).expect_code(1);
    let onboarding = durable_tests::artifacts().onboarding.clone();
    let refused =
        run(&mut scratch.host(&["resume", "failed", onboarding.to_str().unwrap()])).expect_code(2);
    let stderr = refused.stderr();
    assert!(
        stderr.contains("refused its input")
            && stderr.contains("resume it with code that does, or cancel it")
            && !stderr.contains("can be used again"),
        "{stderr}"
    );
    assert_eq!(scratch.workflow_status("failed").as_deref(), Some("failed"));
}

#[test]
fn starting_a_workflow_needs_an_explicit_input() {
    let scratch = Scratch::new();
    let refused = run(&mut plain_run(&scratch, "nothing")).expect_code(2);
    let stderr = refused.stderr();
    assert!(stderr.contains("no --input"), "{stderr}");
    if scratch.tables().contains("workflows") {
        assert!(
            scratch.workflow_status("nothing").is_none(),
            "no workflow row"
        );
    }

    // `--input null` is an explicit input: the host passes it to the
    // workflow (which here refuses it for its shape), rather than asking
    // for one.
    let null = run(plain_run(&scratch, "nothing").args(["--input", "null"])).expect_code(2);
    let stderr = null.stderr();
    assert!(!stderr.contains("no --input"), "{stderr}");
    assert!(
        stderr.contains("shape") && stderr.contains("null"),
        "{stderr}"
    );
    assert!(scratch.workflow_status("nothing").is_none());
}

// ---------------------------------------------------------------------------
// 10. Suspended and resume

#[test]
fn a_panic_between_steps_suspends_and_resume_continues_it() {
    let scratch = Scratch::new();
    let suspended = run(scratch
        .scenario("boom", json!({"scenario": "boom"}))
        .args(["--env", "BOOM=1", "--json"]))
    .expect_code(7)
    .json();
    assert_eq!(suspended["status"], "suspended");
    assert_eq!(
        scratch.workflow_status("boom").as_deref(),
        Some("suspended")
    );
    assert_eq!(
        scratch.steps("boom"),
        vec![("first#000001".into(), "completed".into(), 1)]
    );
    assert_eq!(scratch.effects(), ["first#000001"]);

    // A plain run does not continue a suspended workflow.
    let again = run(&mut plain_run(&scratch, "boom"));
    assert_ne!(again.code(), Some(0), "{}", again.stderr());
    assert_eq!(scratch.effects(), ["first#000001"]);

    let mut resume = scratch.host(&["resume", "boom"]);
    resume.arg(&artifacts().scenarios).args([
        "--env",
        "BOOM=0",
        "--dir",
        &ledger(&scratch),
        "--json",
    ]);
    let resumed = run(&mut resume).expect_code(0).json();
    assert_eq!(resumed["output"], "survived");
    assert_eq!(
        scratch.effects(),
        ["first#000001", "second#000001"],
        "the first step did not run again"
    );

    let history = run(&mut scratch.host(&["history", "boom", "--json"]))
        .expect_code(0)
        .json();
    assert_eq!(history["status"], "completed");
    let events = history["events"]
        .as_array()
        .unwrap_or_else(|| panic!("history --json has no `events`: {history}"));
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["kind"].as_str()).collect();
    assert!(kinds.contains(&"suspended"), "{history}");
    assert!(kinds.contains(&"resumed"), "{history}");
    assert!(event_kinds(&scratch, "boom").contains("resumed"));
}

// ---------------------------------------------------------------------------
// 11. Grants recorded

#[test]
fn a_resume_uses_the_recorded_grants_and_refuses_other_ones() {
    let scratch = Scratch::new();
    let input = json!({"scenario": "grants"}).to_string();
    for id in ["granted", "regranted"] {
        run(plain_run(&scratch, id).args([
            "--input",
            &input,
            "--dir",
            &ledger(&scratch),
            "--env",
            "X=1",
            "--crash",
            "a:after",
        ]))
        .expect_code(3);
    }

    // No --dir, no --env: the recorded ones.
    let resumed = run(plain_run(&scratch, "granted").arg("--json"))
        .expect_code(0)
        .json();
    assert_eq!(resumed["output"], json!({"x": "1"}));
    let counts = effect_counts(&scratch);
    assert_eq!(
        counts.get("b#000001"),
        Some(&1),
        "b wrote to /ledger: {counts:?}"
    );

    // Another directory: refused, naming the difference, and nothing written.
    let before = dump_all(&scratch);
    let other = scratch.path().join("services");
    let refused = run(plain_run(&scratch, "regranted").args([
        "--dir",
        &format!("{}::/ledger", other.display()),
        "--env",
        "X=1",
    ]))
    .expect_code(2);
    let stderr = refused.stderr();
    assert!(stderr.contains("--dir"), "{stderr}");
    assert!(stderr.contains(&other.display().to_string()), "{stderr}");
    assert_eq!(dump_all(&scratch), before);
    assert_eq!(effect_counts(&scratch).get("b#000001"), Some(&1));
}

// ---------------------------------------------------------------------------
// 12. Retries

#[test]
fn a_branch_retries_until_it_succeeds() {
    let scratch = Scratch::new();
    let input = json!({
        "scenario": "plan_branch", "items": 3, "backoff_ms": 10,
        "plan": ["fail", "fail", "ok"],
    });
    let result = run(scratch.scenario("branchy", input).arg("--json"))
        .expect_code(0)
        .json();
    assert_eq!(result["output"]["result"]["Ok"]["execution"], 3, "{result}");
    assert_eq!(executions(&scratch, "planned#000001").len(), 3);
    let (status, _, attempts, failures) = step_row(&scratch, "branchy", "planned#000001");
    assert_eq!((status.as_str(), attempts, failures), ("completed", 3, 2));
    let earlier = attempt_rows(&scratch, "branchy", "planned#000001");
    assert_eq!(
        earlier,
        vec![
            (1, "execution 1 failed".into(), false, Some(10)),
            (2, "execution 2 failed".into(), false, Some(10)),
        ]
    );
}

#[test]
fn a_step_killed_during_its_backoff_keeps_counting_its_failures() {
    let scratch = Scratch::new();
    // Three attempts in all, 3 s apart: the first fails, the run is killed
    // while it waits, the second (in the next run) fails, the third works.
    let input = json!({
        "scenario": "plan_step", "items": 3, "backoff_ms": 3000,
        "plan": ["fail", "fail", "ok"],
    });
    let mut child = spawn(&mut scratch.scenario("backoff", input.clone()));
    wait_until(
        "the first failure to be recorded",
        Duration::from_secs(30),
        || {
            scratch.tables().contains("step_attempts")
                && scratch
                    .number("SELECT count(*) FROM step_attempts WHERE workflow_id = 'backoff'")
                    == 1
        },
    );
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(executions(&scratch, "planned#000001").len(), 1);
    let (status, error, attempts, failures) = step_row(&scratch, "backoff", "planned#000001");
    assert_eq!(
        (status.as_str(), error.as_deref(), attempts, failures),
        ("running", Some("execution 1 failed"), 1, 1)
    );

    let result = run(scratch.scenario("backoff", input).arg("--json"))
        .expect_code(0)
        .json();
    assert_eq!(result["output"]["result"]["Ok"]["execution"], 3, "{result}");
    // The next run went on counting: its first execution was attempt 2,
    // with one failure behind it.
    assert_eq!(
        executions(&scratch, "planned#000001"),
        [
            "execution=1 attempt=1 failures=0",
            "execution=2 attempt=2 failures=1",
            "execution=3 attempt=3 failures=2",
        ]
    );
    let (status, _, attempts, failures) = step_row(&scratch, "backoff", "planned#000001");
    assert_eq!((status.as_str(), attempts, failures), ("completed", 3, 2));
    // No attempt was recorded as interrupted (none was: the kill came
    // during a backoff), and each error is exactly what the step raised.
    assert_eq!(
        attempt_rows(&scratch, "backoff", "planned#000001"),
        vec![
            (1, "execution 1 failed".into(), false, Some(3000)),
            (2, "execution 2 failed".into(), false, Some(3000)),
        ]
    );
}

#[test]
fn a_step_that_fails_for_good_records_the_error_it_raised() {
    let scratch = Scratch::new();
    let input = json!({
        "scenario": "plan_step", "items": 2, "backoff_ms": 10, "plan": ["fail"],
    });
    let result = run(scratch.scenario("hopeless", input).arg("--json"))
        .expect_code(0)
        .json();
    assert_eq!(result["output"]["result"]["Err"], "execution 2 failed");
    let (status, error, attempts, failures) = step_row(&scratch, "hopeless", "planned#000001");
    assert_eq!(
        (status.as_str(), error.as_deref(), attempts),
        ("failed", Some("execution 2 failed"), 2)
    );
    assert!(failures >= 1, "{failures}");
    let history = run(&mut scratch.host(&["history", "hopeless", "--json"]))
        .expect_code(0)
        .json();
    let earlier = &history["steps"][0]["earlier_attempts"];
    assert_eq!(earlier[0]["error"], "execution 1 failed", "{history}");
}

#[test]
fn a_takeover_of_a_step_killed_mid_attempt_does_not_use_up_its_retries() {
    let scratch = Scratch::new();
    // Two attempts allowed. The first execution is killed mid-body; the
    // second fails; the third must still run (the kill was no failure).
    let input = json!({
        "scenario": "plan_step", "items": 2, "backoff_ms": 10,
        "plan": ["sleep:60000", "fail", "ok"],
    });
    let mut child = spawn(&mut scratch.scenario("killed", input.clone()));
    wait_until("the first execution", Duration::from_secs(30), || {
        executions(&scratch, "planned#000001").len() == 1
    });
    child.kill().unwrap();
    child.wait().unwrap();
    let (_, _, attempts, failures) = step_row(&scratch, "killed", "planned#000001");
    assert_eq!((attempts, failures), (1, 0));

    let result = run(scratch.scenario("killed", input).arg("--json"))
        .expect_code(0)
        .json();
    assert_eq!(result["output"]["result"]["Ok"]["execution"], 3, "{result}");
    let (status, _, attempts, failures) = step_row(&scratch, "killed", "planned#000001");
    assert_eq!(
        (status.as_str(), attempts, failures),
        ("completed", 3, 1),
        "the takeover counted an attempt, not a failure"
    );
    let earlier = attempt_rows(&scratch, "killed", "planned#000001");
    assert_eq!(earlier.len(), 2, "{earlier:?}");
    assert!(earlier[0].2, "attempt 1 was interrupted: {earlier:?}");
    assert_eq!(
        (
            earlier[1].0,
            earlier[1].1.as_str(),
            earlier[1].2,
            earlier[1].3
        ),
        (2, "execution 2 failed", false, Some(10))
    );
    assert_eq!(
        executions(&scratch, "planned#000001"),
        [
            "execution=1 attempt=1 failures=0",
            "execution=2 attempt=2 failures=0",
            "execution=3 attempt=3 failures=1",
        ]
    );
}

// ---------------------------------------------------------------------------
// 13. The log is silent while replaying

#[test]
fn the_log_is_written_once_not_again_while_replaying() {
    let scratch = Scratch::new();
    let input = json!({"scenario": "logs"});
    let crashed = run(scratch
        .scenario("chatty", input.clone())
        .args(["--crash", "s:after"]))
    .expect_code(3);
    let first = crashed.stderr();
    assert!(first.contains("[chatty] before the first step"), "{first}");
    assert!(!first.contains("after the first step"), "{first}");

    let resumed = run(scratch.scenario("chatty", input).arg("--json")).expect_code(0);
    let stderr = resumed.stderr();
    assert!(
        !stderr.contains("before the first step"),
        "logged again while replaying: {stderr}"
    );
    assert!(stderr.contains("[chatty] after the first step"), "{stderr}");
    assert!(stderr.contains("[chatty] done as chatty"), "{stderr}");
    assert_eq!(resumed.json()["output"], "chatty", "ctx.workflow_id()");
    assert_eq!(scratch.effects(), ["s#000001", "t#000001"]);
}

/// `(stream, step, text)` of each line `durable-host logs --json` prints.
fn log_lines(scratch: &Scratch, workflow_id: &str) -> Vec<(String, String, String)> {
    let logs = run(&mut scratch.host(&["logs", workflow_id, "--json"])).expect_code(0);
    logs.stdout()
        .lines()
        .map(|line| {
            let line: Value = serde_json::from_str(line).expect("one JSON object per line");
            let text = |field: &str| line[field].as_str().unwrap_or("-").to_owned();
            (text("stream"), text("step"), text("text"))
        })
        .collect()
}

#[test]
fn guest_output_is_kept_per_workflow_once_across_a_crash() {
    let scratch = Scratch::new();
    let input = json!({"scenario": "output"});
    let crashed = run(scratch
        .scenario("talker", input.clone())
        .args(["--crash", "hold:before"]))
    .expect_code(3);
    // `run` still shows the guest's output as it happens.
    assert!(
        crashed.stderr().contains("inside print"),
        "{}",
        crashed.stderr()
    );
    run(&mut scratch.scenario("talker", input)).expect_code(0);

    let lines = |rows: &[(&str, &str, &str)]| -> Vec<(String, String, String)> {
        rows.iter()
            .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
            .collect()
    };
    // Each line once: what the first run kept is not kept again when the
    // second replays the same code; what it printed after its last
    // checkpoint ("before the hold") died with it and is kept from the
    // second run.
    assert_eq!(
        log_lines(&scratch, "talker"),
        lines(&[
            ("stdout", "-", "workflow code before any step"),
            ("stdout", "print#000001", "inside print"),
            ("stderr", "print#000001", "a warning from print"),
            ("stdout", "-", "an unfinished line between steps"),
            ("log", "-", "logged between steps"),
            ("stdout", "shout#000001", "branch says hello"),
            ("stdout", "-", "before the hold"),
            ("stdout", "-", "the end, without a newline"),
        ])
    );

    // People get one line each, with its time, stream and step; --tail cuts.
    let text = run(&mut scratch.host(&["logs", "talker", "--tail", "2"])).expect_code(0);
    let text = text.stdout();
    let shown: Vec<&str> = text.lines().collect();
    assert_eq!(shown.len(), 2, "{shown:?}");
    assert!(
        shown[0].ends_with(" stdout -  before the hold"),
        "{shown:?}"
    );
    assert!(shown[0].starts_with("20"), "a date first: {shown:?}");

    // An unknown workflow is an error, not an empty log.
    let unknown = run(&mut scratch.host(&["logs", "nobody"])).expect_code(2);
    assert!(unknown.stderr().contains("nobody"), "{}", unknown.stderr());
}

/// `durable-host run ... 2>&1 | head -1`: whoever reads the run's stderr
/// goes away while the guest still prints. The echo is a courtesy: the
/// output is kept in the database all the same, the workflow completes,
/// and an error still ends with its exit code, not a panic's.
#[test]
fn a_run_whose_stderr_nobody_reads_completes_and_keeps_its_output() {
    let scratch = Scratch::new();
    let unread = |command: &mut Command| {
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("durable-host starts");
        drop(child.stderr.take());
        child.wait().expect("durable-host ends").code()
    };
    let input = json!({"scenario": "output"});
    assert_eq!(unread(&mut scratch.scenario("unread", input)), Some(0));
    assert_eq!(
        log_lines(&scratch, "unread").len(),
        8,
        "every line kept, as when someone reads"
    );
    let status = run(&mut scratch.host(&["history", "unread", "--json"])).expect_code(0);
    assert_eq!(status.json()["status"], "completed");
    assert_eq!(unread(&mut scratch.host(&["logs", "nobody"])), Some(2));
}

// ---------------------------------------------------------------------------
// 14. A host with no memory for an instance

/// An address-space limit under the 4 GiB an instance reserves for its
/// memory: the host cannot create one, as when it is out of memory.
const NO_MEMORY: &[&str] = &["prlimit", "--as=3000000000", "--"];

/// How long a server may take to get somewhere on a busy machine.
const PATIENCE: Duration = Duration::from_secs(180);

#[test]
fn a_run_the_host_has_no_memory_for_records_nothing_and_says_what_to_do() {
    let scratch = Scratch::new();
    let input = json!({"scenario": "steps", "items": 2});
    let mut starved = scratch.scenario("starved", input.clone());
    starved.arg("--json");
    let refused = run(&mut wrapped(NO_MEMORY, &starved))
        .expect_code(13)
        .json();
    let message = refused["error"]["message"].as_str().unwrap_or_default();
    let hint = refused["error"]["hint"].as_str().unwrap_or_default();
    assert!(
        message.contains("could not allocate memory for an instance of the workflow"),
        "{refused}"
    );
    assert!(hint.contains("ulimit -v"), "{refused}");
    // Not the guest's fault: nothing recorded against it (not suspended).
    assert_eq!(scratch.workflow_status("starved"), None);
    // Once there is memory, the same command runs it.
    run(&mut scratch.scenario("starved", input)).expect_code(0);
    assert_eq!(
        scratch.workflow_status("starved").as_deref(),
        Some("completed")
    );
    assert_eq!(completed_steps(&scratch, "starved"), 2);
}

#[test]
fn a_branch_the_host_has_no_memory_for_is_left_for_the_next_run_not_failed() {
    let scratch = Scratch::new();
    let input = json!({"scenario": "parallel", "items": 2, "sleep_ms": 1, "burn_ms": 0});
    // Room for the workflow's instance (~4 GiB of address space), not for a
    // branch's beside it.
    let room_for_one = ["prlimit", "--as=6442450944", "--"];
    // Each run hands the workflow back in order: more of them than the
    // bound on runs that die in a row (8) do not suspend it as a crash loop.
    for _ in 0..10 {
        let stopped = run(&mut wrapped(
            &room_for_one,
            &scratch.scenario("branches", input.clone()),
        ))
        .expect_code(13);
        assert!(
            stopped.stderr().contains("could not allocate memory"),
            "{}",
            stopped.stderr()
        );
    }
    // Not the workflow's answer: its branch steps are left in flight.
    assert_eq!(
        scratch.workflow_status("branches").as_deref(),
        Some("running")
    );
    let steps = scratch.try_steps("branches").unwrap_or_default();
    assert!(steps.iter().all(|s| s.1 != "failed"), "{steps:?}");
    // The next run, with memory, takes them over and finishes.
    run(&mut scratch.scenario("branches", input)).expect_code(0);
    assert_eq!(
        scratch.workflow_status("branches").as_deref(),
        Some("completed")
    );
    assert_eq!(completed_steps(&scratch, "branches"), 2);
}

#[test]
fn serve_with_no_memory_for_instances_leaves_workflows_as_they_were_and_backs_off() {
    let scratch = Scratch::new();
    scratch.deploy("scenarios", &artifacts().scenarios);
    let input = json!({"scenario": "steps", "items": 2}).to_string();
    run(&mut scratch.host(&[
        "start",
        "scenarios",
        "--workflow-id",
        "queued",
        "--input",
        &input,
    ]))
    .expect_code(0);
    let mut starved = Server::spawn(
        &mut wrapped(NO_MEMORY, &scratch.host(&["serve"])),
        scratch.path(),
        "serve-starved",
    );
    wait_until(
        "serve to report it has no memory for instances",
        PATIENCE,
        || starved.log().contains("no memory for new instances"),
    );
    std::thread::sleep(Duration::from_secs(2));
    let log = starved.log();
    assert!(
        starved.wait_exit(Duration::ZERO).is_none(),
        "serve stopped:\n{log}"
    );
    // Pauses of 0.1, 0.2, 0.4, 0.8, 1.6 s between tries: a handful in about
    // 2 s, not one after another as fast as it can.
    let tries = log.matches("could not allocate memory").count();
    assert!(
        (1..=8).contains(&tries),
        "{tries} tries in about 2 s:\n{log}"
    );
    assert!(!log.contains("suspended"), "{log}");
    assert_eq!(
        scratch.workflow_status("queued").as_deref(),
        Some("queued"),
        "{log}"
    );
    starved.signal("-TERM");
    assert!(
        starved.wait_exit(PATIENCE).is_some(),
        "serve did not stop:\n{log}"
    );
    // With memory, a server runs it.
    let server = Server::start(&scratch, "serve", &[]);
    wait_until("the workflow to complete", PATIENCE, || {
        scratch.workflow_status("queued").as_deref() == Some("completed")
    });
    assert_eq!(completed_steps(&scratch, "queued"), 2, "{}", server.log());
}
