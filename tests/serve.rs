//! `durable-host serve`, `deploy` and `start`, driven as users drive them:
//! real processes on a real database. Components are deployed, workflows
//! queued with `start` (one process each), and one or more `serve`
//! processes run them; the tests SIGKILL, SIGTERM and SIGINT the servers
//! and check, from the scenarios guest's effects ledger
//! (`/ledger/keyed.log`: one `<workflow id>/<step key>` line per executed
//! step body) and from the database, that nothing ran twice that must not
//! and that nothing was lost.
//!
//! Sizes can be raised through the environment:
//! `DURABLE_SERVE_WORKFLOWS` (500: the many-workflows test),
//! `DURABLE_SERVE_KILL_WORKFLOWS` (200: kill -9 in the middle),
//! `DURABLE_SERVE_SHARED_WORKFLOWS` (200: two servers, one database),
//! `DURABLE_SERVE_SLEEPERS` (2,000: workflows sleeping at once),
//! `DURABLE_SERVE_NAPPERS` (50: short sleepers woken on time).
//!
//! Run with `--test-threads 1`: each test keeps the two cores busy.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use durable_tests::backend::postgres_address;
use durable_tests::{
    Run, Scratch, Server, TcpProxy, artifacts, employee, run, sha256_of, wait_until,
};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------
// Helpers

/// The deployment name the scenarios guest is deployed under.
const SCENARIOS: &str = "scenarios";

/// How long a wait for the servers may take before the test fails: long,
/// because the first `serve` on a machine compiles the component (a cold
/// compile takes ~15 s on two cores).
const PATIENCE: Duration = Duration::from_secs(180);

fn env_size(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The scratch ledger granted as `/ledger`.
fn ledger_grant(scratch: &Scratch) -> String {
    format!("{}::/ledger", scratch.path().join("ledger").display())
}

/// `durable-host deploy <name> <component> <args> --json`: the deployment.
fn deploy(scratch: &Scratch, name: &str, component: &Path, args: &[&str]) -> Value {
    let mut command = scratch.host(&["deploy", name]);
    command.arg(component).args(args).arg("--json");
    run(&mut command).expect_code(0).json()
}

/// Deploy the scenarios guest as `scenarios`, with the ledger granted.
fn deploy_scenarios(scratch: &Scratch) -> Value {
    let grant = ledger_grant(scratch);
    deploy(
        scratch,
        SCENARIOS,
        &artifacts().scenarios,
        &["--dir", &grant],
    )
}

/// `durable-host start <name> --workflow-id <id> --input <input> <extra>`.
fn start(scratch: &Scratch, name: &str, id: &str, input: &Value, extra: &[&str]) -> Run {
    let input = input.to_string();
    let mut command = scratch.host(&["start", name, "--workflow-id", id, "--input", &input]);
    command.args(extra).stdin(Stdio::null());
    run(&mut command)
}

/// Queue every `(id, input)` with `start` (four processes at a time), each
/// expected to print its id; the time it took.
fn submit_all(scratch: &Scratch, workflows: &[(String, Value)], extra: &[&str]) -> Duration {
    let began = Instant::now();
    let chunk = workflows.len().div_ceil(4).max(1);
    std::thread::scope(|scope| {
        for part in workflows.chunks(chunk) {
            scope.spawn(move || {
                for (id, input) in part {
                    let started = start(scratch, SCENARIOS, id, input, extra).expect_code(0);
                    assert_eq!(started.stdout().trim(), id, "start prints the id");
                }
            });
        }
    });
    began.elapsed()
}

/// `(id, keyed input)` for `count` workflows `<prefix><n>`.
fn keyed(prefix: &str, count: usize, items: u32, sleep_ms: u64) -> Vec<(String, Value)> {
    (0..count)
        .map(|n| {
            (
                format!("{prefix}{n:04}"),
                json!({ "scenario": "keyed", "items": items, "sleep_ms": sleep_ms }),
            )
        })
        .collect()
}

/// The idempotency keys of `items` steps `k` of each workflow.
fn expected_keys(workflows: &[(String, Value)], items: u32) -> BTreeSet<String> {
    workflows
        .iter()
        .flat_map(|(id, _)| (1..=items).map(move |n| format!("{id}/k#{n:06}")))
        .collect()
}

/// How many times each step body ran, by idempotency key, from the ledger.
fn executions(scratch: &Scratch) -> BTreeMap<String, usize> {
    let log = scratch.path().join("ledger/keyed.log");
    let mut counts = BTreeMap::new();
    if let Ok(text) = std::fs::read_to_string(log) {
        for line in text.lines() {
            *counts.entry(line.to_owned()).or_default() += 1;
        }
    }
    counts
}

/// How many workflows have `status` (0 while the database is missing).
fn count_status(scratch: &Scratch, status: &str) -> usize {
    status_counts(scratch).get(status).copied().unwrap_or(0) as usize
}

fn status_counts(scratch: &Scratch) -> BTreeMap<String, i64> {
    scratch
        .query("SELECT status, count(*) FROM workflows GROUP BY status")
        .into_iter()
        .map(|row| {
            (
                row[0].as_str().unwrap().to_owned(),
                row[1].as_i64().unwrap(),
            )
        })
        .collect()
}

/// Wait until `count` workflows are completed, failing early (with the
/// counts) if any failed or was suspended.
fn wait_completed(scratch: &Scratch, count: usize, servers: &[&Server]) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if count_status(scratch, "completed") >= count {
            return;
        }
        let stuck = count_status(scratch, "failed") + count_status(scratch, "suspended");
        if stuck > 0 || Instant::now() > deadline {
            let logs: Vec<String> = servers.iter().map(|s| s.log()).collect();
            panic!(
                "not all {count} workflows completed: {:?}\n--- server logs (tail)\n{}",
                status_counts(scratch),
                logs.iter()
                    .map(|l| tail(l, 30))
                    .collect::<Vec<_>>()
                    .join("\n---\n")
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Wait until each of the `count` workflows has completed a step.
fn wait_each_completed_a_step(scratch: &Scratch, count: usize) {
    wait_until("every workflow to complete a step", PATIENCE, || {
        scratch.number("SELECT count(DISTINCT workflow_id) FROM steps WHERE status = 'completed'")
            == count as i64
    });
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// `PRAGMA integrity_check` answers `ok`.
fn assert_integrity(scratch: &Scratch) {
    assert!(scratch.integrity_ok(), "PRAGMA integrity_check failed");
}

/// Every expected step ran exactly once, and nothing else ran.
fn assert_exactly_once(scratch: &Scratch, expected: &BTreeSet<String>) {
    let executions = executions(scratch);
    let twice: Vec<_> = executions.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "steps executed more than once: {twice:?}");
    let ran: BTreeSet<String> = executions.into_keys().collect();
    let missing: Vec<_> = expected.difference(&ran).take(10).collect();
    let extra: Vec<_> = ran.difference(expected).take(10).collect();
    assert!(missing.is_empty(), "steps that never ran: {missing:?}");
    assert!(extra.is_empty(), "unexpected effects: {extra:?}");
}

/// Every workflow in `workflows` is completed with `items` completed steps
/// and its output.
fn assert_all_completed(scratch: &Scratch, workflows: &[(String, Value)], items: u32) {
    let recorded: BTreeMap<String, (Value, Value, i64)> = scratch
        .query(
            "SELECT id, status, output,
                    (SELECT count(*) FROM steps s
                     WHERE s.workflow_id = w.id AND s.status = 'completed')
             FROM workflows w",
        )
        .into_iter()
        .map(|row| {
            let id = row[0].as_str().unwrap().to_owned();
            (
                id,
                (row[1].clone(), row[2].clone(), row[3].as_i64().unwrap()),
            )
        })
        .collect();
    let sum: u64 = (0..u64::from(items)).sum();
    for (id, _) in workflows {
        let (status, output, steps) = &recorded[id];
        assert_eq!(status, "completed", "{id}");
        assert_eq!(*steps, i64::from(items), "{id}: completed steps");
        let output: Value = serde_json::from_str(output.as_str().unwrap_or("null")).unwrap();
        assert_eq!(output, json!({ "workflow_id": id, "sum": sum }), "{id}");
    }
}

/// The largest number of intervals `[start, end)` open at one instant.
fn max_overlap(intervals: &[(i64, i64)]) -> usize {
    let mut edges: Vec<(i64, i32)> = intervals
        .iter()
        .flat_map(|&(start, end)| [(start, 1), (end, -1)])
        .collect();
    // At equal times, ends before starts: half-open intervals.
    edges.sort();
    let (mut open, mut max) = (0i32, 0i32);
    for (_, delta) in edges {
        open += delta;
        max = max.max(open);
    }
    max as usize
}

/// `(first step start, last step end)` of each workflow of `queue`.
fn step_spans(scratch: &Scratch, queue: &str) -> Vec<(i64, i64)> {
    scratch
        .query(&format!(
            "SELECT min(s.started_at), max(s.finished_at) FROM steps s
             JOIN workflows w ON w.id = s.workflow_id
             WHERE w.queue = '{queue}' GROUP BY s.workflow_id"
        ))
        .into_iter()
        .map(|row| (row[0].as_i64().unwrap(), row[1].as_i64().unwrap()))
        .collect()
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

// ---------------------------------------------------------------------------
// Tests

/// 500 workflows queued with `start` (while the server runs) to one `serve
/// --concurrency 32`: all complete, every step body ran exactly once.
#[test]
fn many_workflows_complete_exactly_once() {
    let count = env_size("DURABLE_SERVE_WORKFLOWS", 500);
    let items = 3;
    let scratch = Scratch::new();
    deploy_scenarios(&scratch);
    let server = Server::start(&scratch, "serve", &["--concurrency", "32"]);
    let workflows = keyed("w", count, items, 0);
    let submitting = submit_all(&scratch, &workflows, &[]);
    wait_completed(&scratch, count, &[&server]);
    let elapsed = server.started.elapsed();

    assert_all_completed(&scratch, &workflows, items);
    assert_exactly_once(&scratch, &expected_keys(&workflows, items));
    assert_eq!(
        scratch.number("SELECT count(*) FROM steps WHERE attempts <> 1"),
        0,
        "no step needed a second attempt"
    );
    assert_integrity(&scratch);
    let (first, last) = (
        scratch.number("SELECT min(started_at) FROM steps"),
        scratch.number("SELECT max(finished_at) FROM steps"),
    );
    let busy_ms = (last - first).max(1);
    println!(
        "serve: {count} workflows of {items} steps: submitted with `start` in {:.2} s \
         ({:.0}/s, 4 processes at a time); all completed {:.2} s after serve started; \
         first step to last step {busy_ms} ms ({:.0} workflows/s); serve threads {}, RSS {} MB",
        submitting.as_secs_f64(),
        count as f64 / submitting.as_secs_f64(),
        elapsed.as_secs_f64(),
        count as f64 * 1000.0 / busy_ms as f64,
        server.proc_status("Threads"),
        server.proc_status("VmRSS") / 1024,
    );
}

/// SIGKILL of `serve` in the middle, then a new `serve`: every workflow
/// completes; no step completed at the kill ran again; steps in flight ran
/// at most once more.
#[test]
fn kill_9_in_the_middle_then_restart_completes_everything() {
    let count = env_size("DURABLE_SERVE_KILL_WORKFLOWS", 200);
    let items = 5;
    let scratch = Scratch::new();
    deploy_scenarios(&scratch);
    let workflows = keyed("k", count, items, 30);
    submit_all(&scratch, &workflows, &[]);

    let args = ["--concurrency", "32", "--stale-after", "2s"];
    let mut first = Server::start(&scratch, "serve-1", &args);
    wait_until("a quarter of the workflows to complete", PATIENCE, || {
        count_status(&scratch, "completed") >= count / 4
    });
    first.kill9();

    let completed_at_kill = scratch.completed_steps();
    let executions_at_kill = executions(&scratch);
    let statuses_at_kill = status_counts(&scratch);
    let steps_in_flight = scratch.number("SELECT count(*) FROM steps WHERE status = 'running'");
    let done_at_kill = count_status(&scratch, "completed");
    assert!(
        done_at_kill > 0 && done_at_kill < count,
        "the kill must land in the middle: {statuses_at_kill:?}"
    );

    let restarted = Instant::now();
    let second = Server::start(&scratch, "serve-2", &args);
    wait_completed(&scratch, count, &[&second]);
    let recovery = restarted.elapsed();

    let executions = executions(&scratch);
    for key in &completed_at_kill {
        assert_eq!(
            executions.get(key),
            executions_at_kill.get(key),
            "{key} was completed at the kill, yet ran again afterwards"
        );
    }
    let expected = expected_keys(&workflows, items);
    for key in &expected {
        let ran = executions.get(key).copied().unwrap_or(0);
        assert!(
            (1..=2).contains(&ran),
            "{key} ran {ran} times (one kill allows at most 2)"
        );
    }
    let extra: Vec<_> = executions
        .keys()
        .filter(|k| !expected.contains(*k))
        .collect();
    assert!(extra.is_empty(), "unexpected effects: {extra:?}");
    assert_all_completed(&scratch, &workflows, items);
    assert_integrity(&scratch);

    let re_executed: usize = executions.values().map(|n| n - 1).sum();
    let takeovers =
        scratch.number("SELECT CAST(coalesce(sum(attempts - 1), 0) AS BIGINT) FROM steps");
    println!(
        "serve kill -9: at the kill {statuses_at_kill:?}, {steps_in_flight} steps in flight; \
         after restart all {count} completed in {:.2} s; {takeovers} steps taken over, \
         {re_executed} side effects repeated (in flight at the kill); \
         second server took over {} workflows",
        recovery.as_secs_f64(),
        second.logged_ids("taking over").len(),
    );
}

/// After a kill -9, a new `serve` on the same machine takes over the dead
/// server's workflows at once: their owner is provably dead (same boot,
/// same pid namespace, pid gone), as `run` already knows; nobody should
/// wait out a 30 s lease (README guarantee 7; issue 11: "at start and
/// continuously, serve resumes every workflow whose owner is dead or whose
/// lease expired"). Nor wait behind work queued since: they get the new
/// server's slots first.
#[test]
fn restart_after_kill_9_takes_over_dead_owners_without_waiting_for_leases() {
    let (count, items) = (8, 10);
    let scratch = Scratch::new();
    deploy_scenarios(&scratch);
    let workflows = keyed("dead", count, items, 200);
    submit_all(&scratch, &workflows, &[]);
    let args = ["--concurrency", "16", "--stale-after", "30s"];
    let mut first = Server::start(&scratch, "serve-1", &args);
    wait_each_completed_a_step(&scratch, count);
    first.kill9();
    assert_eq!(count_status(&scratch, "running"), count);
    let backlog = keyed("backlog", count, 2, 200);
    submit_all(&scratch, &backlog, &[]);

    let restarted = Instant::now();
    let second = Server::start(
        &scratch,
        "serve-2",
        &["--concurrency", &count.to_string(), "--stale-after", "30s"],
    );
    let deadline = restarted + Duration::from_secs(15);
    while count_status(&scratch, "completed") < count && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let waited = restarted.elapsed();
    let taken_over = second.logged_ids("taking over").len();
    assert_eq!(
        count_status(&scratch, "completed"),
        count,
        "{waited:?} after a restart, the dead server's workflows are still not done \
         ({taken_over} taken over): `serve` waits for their leases (--stale-after 30s) \
         although their owner is provably dead; {:?}",
        status_counts(&scratch)
    );
    assert_all_completed(&scratch, &workflows, items);
    // With as many slots as dead workflows, the backlog waited for them:
    // each dead one began a step in its new run before any backlog step.
    let first_backlog_step = scratch.number(&format!(
        "SELECT coalesce(min(started_at), {}) FROM steps WHERE workflow_id LIKE 'backlog%'",
        i64::MAX
    ));
    let last_takeover = scratch.number(
        "SELECT max(taken) FROM (SELECT min(s.started_at) AS taken FROM steps s
           JOIN workflows w ON w.id = s.workflow_id AND s.run_id = w.run_id
           WHERE w.id LIKE 'dead%' GROUP BY w.id) AS taken_over",
    );
    assert!(
        last_takeover <= first_backlog_step,
        "work queued after the kill started ({first_backlog_step}) before the dead server's \
         workflows were all taken over ({last_takeover})"
    );
    assert_integrity(&scratch);
    println!(
        "serve: after kill -9, a new server finished the dead one's {count} workflows in {:.2} s",
        waited.as_secs_f64()
    );
}

/// SIGTERM drains: runs stop at their next step boundary, the server exits
/// 0 within its grace, leases are released, and a new server resumes the
/// workflows at once (long before `--stale-after` 30 s) without running a
/// step twice.
#[test]
fn a_workflow_that_cannot_run_is_suspended_or_held_back_not_retried_at_once() {
    let scratch = Scratch::new();
    deploy_scenarios(&scratch);
    // A deployment whose granted directory is gone once its workflow starts.
    let gone = scratch.path().join("gone");
    std::fs::create_dir(&gone).unwrap();
    let grant = format!("{}::/gone", gone.display());
    deploy(
        &scratch,
        "needs-dir",
        &artifacts().scenarios,
        &["--dir", &grant],
    );
    std::fs::remove_dir(&gone).unwrap();
    let steps = json!({ "scenario": "steps", "items": 1 });
    start(&scratch, "needs-dir", "held", &steps, &[]).expect_code(0);
    let server = Server::start(&scratch, "serve", &[]);

    // No run of this code takes this input: suspended with the reason, so
    // that `start --wait` answers instead of waiting on a retry loop.
    let refused = start(
        &scratch,
        SCENARIOS,
        "refused",
        &json!({ "oops": 1 }),
        &["--wait", "--wait-timeout", "60s"],
    )
    .expect_code(7);
    assert!(
        refused.stdout().contains("suspended")
            && refused.stdout().contains("refused its input")
            && !refused.stdout().contains("nothing ran"),
        "{}",
        refused.stdout()
    );
    assert_eq!(scratch.number("SELECT count(*) FROM steps"), 0);

    // A run that stops on an error of its own is tried again after a hold
    // that doubles (1 s, 2 s...), not thousands of times a second.
    std::thread::sleep(Duration::from_millis(2500));
    let tries = server.log().matches("cannot grant directory").count();
    assert!(
        (1..=3).contains(&tries),
        "{tries} tries in 2.5 s:\n{}",
        server.log()
    );
    assert!(server.log().contains("held back before its next run"));
    // Once the directory is back, it runs.
    std::fs::create_dir(&gone).unwrap();
    wait_until("the held workflow to complete", PATIENCE, || {
        scratch.workflow_status("held").as_deref() == Some("completed")
    });
    assert_eq!(
        scratch.workflow_status("refused").as_deref(),
        Some("suspended")
    );
}

#[test]
fn parallel_branches_run_in_serve_within_the_runs_memory_budget() {
    // The workflow's own instance comes from serve's pool, its branches'
    // are mapped one by one: both share the run's --max-memory budget.
    let scratch = Scratch::new();
    deploy_scenarios(&scratch);
    deploy(
        &scratch,
        "budgeted",
        &artifacts().scenarios,
        &["--max-memory", "256MiB"],
    );
    let _server = Server::start(&scratch, "serve", &["--concurrency", "2"]);
    let wait = ["--wait", "--wait-timeout", "120s"];
    // More branches than run at once (16), each in an instance of its own.
    let many = json!({"scenario": "parallel", "items": 40, "sleep_ms": 1, "burn_ms": 0});
    start(&scratch, SCENARIOS, "many", &many, &wait).expect_code(0);
    assert_eq!(
        scratch.number(
            "SELECT count(*) FROM steps WHERE workflow_id = 'many' AND status = 'completed'"
        ),
        40
    );
    // 8 branches of 120 MiB held at once: at most two fit 256 MiB.
    let hungry = json!({"scenario": "mem_branches", "items": 8, "mib": 120, "hold_ms": 2000});
    let failed = start(&scratch, "budgeted", "hungry", &hungry, &wait).expect_code(1);
    assert!(
        failed.stdout().contains("--max-memory"),
        "{}",
        failed.stdout()
    );
    // A workflow after them starts from a clean instance, and completes.
    let steps = json!({ "scenario": "steps", "items": 2 });
    start(&scratch, SCENARIOS, "after", &steps, &wait).expect_code(0);
}

#[test]
fn sigterm_drains_at_step_boundaries_and_releases_leases() {
    let (count, items) = (6, 20);
    let scratch = Scratch::new();
    deploy_scenarios(&scratch);
    let workflows = keyed("d", count, items, 300);
    submit_all(&scratch, &workflows, &[]);
    let args = [
        "--concurrency",
        "8",
        "--stale-after",
        "30s",
        "--shutdown-grace",
        "5s",
    ];
    let mut first = Server::start(&scratch, "serve-1", &args);
    wait_each_completed_a_step(&scratch, count);

    let signalled = Instant::now();
    first.signal("-TERM");
    let status = first
        .wait_exit(Duration::from_secs(30))
        .expect("serve did not exit within 30 s of SIGTERM");
    let drain = signalled.elapsed();
    assert_eq!(status.code(), Some(0), "serve's exit after SIGTERM");
    assert!(
        drain < Duration::from_secs(5),
        "serve took {drain:?} to drain steps of 300 ms (grace 5 s)"
    );

    assert_eq!(
        scratch.number("SELECT count(*) FROM steps WHERE status = 'running'"),
        0,
        "a drained run leaves no step running"
    );
    assert_eq!(
        count_status(&scratch, "running"),
        count,
        "the workflows were stopped mid-way: {:?}",
        status_counts(&scratch)
    );
    assert_eq!(
        scratch.number(
            "SELECT count(*) FROM workflows WHERE status = 'running' AND lease_expires_at <> 0"
        ),
        0,
        "drained workflows have their leases released"
    );
    // Stopped at a boundary: every step that ran is recorded, none more.
    let ran: BTreeSet<String> = executions(&scratch).into_keys().collect();
    assert_eq!(ran, scratch.completed_steps());
    let log = first.log();
    assert_eq!(first.logged_ids("lease released").len(), count, "{log}");
    assert!(log.contains("abandoned=0"), "{log}");
    let steps_before = scratch.completed_steps().len();
    let first_runs = scratch.strings("SELECT DISTINCT run_id FROM steps");

    let restarted = Instant::now();
    let second = Server::start(&scratch, "serve-2", &args);
    wait_until(
        "the new server to resume every workflow (leases released: no wait for --stale-after)",
        Duration::from_secs(20),
        || {
            let resumed: BTreeSet<String> = scratch
                .query("SELECT DISTINCT workflow_id, run_id FROM steps WHERE status = 'completed'")
                .into_iter()
                .filter(|row| !first_runs.contains(row[1].as_str().unwrap()))
                .map(|row| row[0].as_str().unwrap().to_owned())
                .collect();
            resumed.len() == count
        },
    );
    let resumed = restarted.elapsed();
    wait_completed(&scratch, count, &[&second]);
    let finished = restarted.elapsed();
    assert_all_completed(&scratch, &workflows, items);
    assert_exactly_once(&scratch, &expected_keys(&workflows, items));
    assert_integrity(&scratch);
    // Handed back in order: resumed, not taken over from a dead run.
    assert_eq!(
        scratch.number("SELECT count(*) FROM workflow_events WHERE kind = 'takeover'"),
        0,
        "{:?}",
        scratch.query("SELECT workflow_id, detail FROM workflow_events")
    );
    let log = second.log();
    assert_eq!(
        second
            .logged_ids("resumed where a run that stopped left it")
            .len(),
        count,
        "{log}"
    );
    assert!(!log.contains("taking over"), "{log}");
    println!(
        "serve SIGTERM: drained {count} runs and exited in {:.2} s ({steps_before} of {} steps done); \
         a new server resumed all of them within {:.2} s and finished in {:.2} s \
         (--stale-after 30s)",
        drain.as_secs_f64(),
        count * items as usize,
        resumed.as_secs_f64(),
        finished.as_secs_f64(),
    );
}

/// `durable-host serve 2>&1 | head`, or a log collector that went away:
/// the server can no longer write its log, and goes on serving (a log
/// line that cannot be written used to panic the thread that wrote it,
/// the scheduler's included), then drains on SIGTERM and exits 0.
#[test]
fn a_server_whose_log_nobody_reads_keeps_serving() {
    let scratch = Scratch::new();
    deploy_scenarios(&scratch);
    let mut server = Server::start_unread(&scratch, &["--concurrency", "4"]);
    let workflows = keyed("unread", 20, 3, 0);
    submit_all(&scratch, &workflows, &[]);
    wait_completed(&scratch, workflows.len(), &[&server]);
    server.signal("-TERM");
    let status = server.wait_exit(PATIENCE);
    assert_all_completed(&scratch, &workflows, 3);
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "drained and exited 0"
    );
}

/// A second signal during a long drain exits at once (130), leaving the
/// step in flight to the next server.
#[test]
fn second_signal_during_a_drain_exits_at_once() {
    let scratch = Scratch::new();
    deploy_scenarios(&scratch);
    let input = json!({ "scenario": "keyed", "items": 1, "sleep_ms": 3000 });
    start(&scratch, SCENARIOS, "long", &input, &[]).expect_code(0);
    let args = ["--stale-after", "2s", "--shutdown-grace", "60s"];
    let mut first = Server::start(&scratch, "serve-1", &args);
    scratch.wait_for_step("long", "k#", "running");
    first.signal("-TERM");
    wait_until("serve to begin its drain", Duration::from_secs(5), || {
        first.log().contains("shutting down")
    });
    assert!(
        first.wait_exit(Duration::from_millis(200)).is_none(),
        "serve must wait for the step in flight (grace 60 s)"
    );
    let signalled = Instant::now();
    first.signal("-INT");
    let status = first
        .wait_exit(Duration::from_secs(10))
        .expect("serve did not exit after a second signal");
    let exit = signalled.elapsed();
    assert_eq!(
        status.code(),
        Some(130),
        "exit status after a second signal"
    );
    assert!(
        exit < Duration::from_secs(2),
        "a second signal must end serve at once, not after {exit:?}"
    );
    // It did not wait for the step: the step is still unfinished.
    assert_eq!(
        scratch.steps("long"),
        vec![("k#000001".to_owned(), "running".to_owned(), 1)]
    );
    assert!(
        executions(&scratch).is_empty(),
        "the step body never finished"
    );

    // The next server takes it over once the lease runs out.
    let second = Server::start(&scratch, "serve-2", &args);
    wait_completed(&scratch, 1, &[&second]);
    assert_eq!(
        scratch.steps("long"),
        vec![("k#000001".to_owned(), "completed".to_owned(), 2)]
    );
    assert_exactly_once(&scratch, &BTreeSet::from(["long/k#000001".to_owned()]));
    assert_integrity(&scratch);
    println!("serve: second signal ended the drain in {exit:?} (exit 130)");
}

/// A run still in its step when the shutdown grace runs out is left to
/// its lease, and the server's last line counts it as begun, as the
/// `durable_runs_started_total` metric did at its claim.
#[test]
fn a_run_left_in_a_step_at_the_end_of_the_grace_counts_as_started() {
    let scratch = Scratch::new();
    deploy_scenarios(&scratch);
    let input = json!({ "scenario": "keyed", "items": 1, "sleep_ms": 3000 });
    start(&scratch, SCENARIOS, "slow", &input, &[]).expect_code(0);
    let args = ["--stale-after", "2s", "--shutdown-grace", "500ms"];
    let mut server = Server::start(&scratch, "serve-1", &args);
    scratch.wait_for_step("slow", "k#", "running");
    server.signal("-TERM");
    let status = server.wait_exit(Duration::from_secs(10));
    assert_eq!(status.and_then(|s| s.code()), Some(0));
    let log = server.log();
    assert!(log.contains("abandoned=1"), "{log}");
    assert!(log.contains("started=1"), "{log}");
}

/// Two servers on one database share the work: every step runs exactly
/// once, each workflow is run by one server, and both servers work.
#[test]
fn two_servers_on_one_database_run_disjoint_work() {
    let count = env_size("DURABLE_SERVE_SHARED_WORKFLOWS", 200);
    let items = 3;
    let scratch = Scratch::new();
    deploy_scenarios(&scratch);
    let args = ["--concurrency", "16", "--stale-after", "5s"];
    let a = Server::start(&scratch, "serve-a", &args);
    let b = Server::start(&scratch, "serve-b", &args);
    let workflows = keyed("s", count, items, 20);
    submit_all(&scratch, &workflows, &[]);
    wait_completed(&scratch, count, &[&a, &b]);

    assert_all_completed(&scratch, &workflows, items);
    assert_exactly_once(&scratch, &expected_keys(&workflows, items));
    assert_eq!(
        scratch.number(
            "SELECT count(*) FROM (SELECT workflow_id FROM steps
             GROUP BY workflow_id HAVING count(DISTINCT run_id) > 1) AS shared"
        ),
        0,
        "each workflow's steps were all run by one run"
    );
    let by_a: BTreeSet<String> = a.logged_ids("finished").into_iter().collect();
    let by_b: BTreeSet<String> = b.logged_ids("finished").into_iter().collect();
    let both: Vec<_> = by_a.intersection(&by_b).collect();
    assert!(
        both.is_empty(),
        "workflows finished by both servers: {both:?}"
    );
    assert_eq!(
        by_a.len() + by_b.len(),
        count,
        "every workflow finished once"
    );
    assert!(
        !by_a.is_empty() && !by_b.is_empty(),
        "both servers should work: {} and {}",
        by_a.len(),
        by_b.len()
    );
    // Each counts the runs it began, not the workflows another one won.
    for (mut server, finished) in [(a, by_a.len()), (b, by_b.len())] {
        server.signal("-TERM");
        assert!(server.wait_exit(Duration::from_secs(30)).is_some());
        let log = server.log();
        let errors: Vec<&str> = log.lines().filter(|l| l.contains("ERROR")).collect();
        assert!(errors.is_empty(), "a server logged errors: {errors:#?}");
        let started = log
            .lines()
            .filter(|line| line.contains("stopped"))
            .find_map(|line| {
                line.split_once(" started=")?
                    .1
                    .split(' ')
                    .next()?
                    .parse()
                    .ok()
            });
        assert_eq!(started, Some(finished), "{log}");
    }
    assert_integrity(&scratch);
    println!(
        "serve: two servers ran {} and {} of {count} workflows",
        by_a.len(),
        by_b.len()
    );
}

/// When a server of this host dies while another is busy with queued work,
/// the busy one gives the slots that free next to the dead server's
/// workflows, all of them, not to the queue: they are taken over "at
/// once", not once the queue has drained or their lease has run out.
#[test]
fn a_busy_server_gives_its_next_free_slots_to_a_dead_servers_workflows() {
    let scratch = Scratch::new();
    deploy_scenarios(&scratch);
    let args = ["--concurrency", "2", "--stale-after", "30s"];
    let dead = keyed("dead", 2, 30, 200);
    submit_all(&scratch, &dead, &[]);
    let mut first = Server::start(&scratch, "serve-1", &args);
    wait_each_completed_a_step(&scratch, dead.len());
    let backlog = keyed("backlog", 16, 3, 300);
    submit_all(&scratch, &backlog, &[]);
    let second = Server::start(&scratch, "serve-2", &args);
    wait_until("the second server to run the backlog", PATIENCE, || {
        scratch.number(
            "SELECT count(DISTINCT workflow_id) FROM steps WHERE workflow_id LIKE 'backlog%'",
        ) >= 2
    });
    first.kill9();
    wait_completed(&scratch, dead.len() + backlog.len(), &[&second]);
    assert_all_completed(&scratch, &dead, 30);
    assert_all_completed(&scratch, &backlog, 3);
    let last_backlog_start = scratch.number(
        "SELECT max(first) FROM (SELECT min(started_at) AS first FROM steps
           WHERE workflow_id LIKE 'backlog%' GROUP BY workflow_id) AS starts",
    );
    let last_takeover = scratch.number(
        "SELECT max(taken) FROM (SELECT min(s.started_at) AS taken FROM steps s
           JOIN workflows w ON w.id = s.workflow_id AND s.run_id = w.run_id
           WHERE w.id LIKE 'dead%' GROUP BY w.id) AS taken_over",
    );
    assert!(
        last_takeover < last_backlog_start,
        "the dead server's workflows waited for the queue: the last taken over at \
         {last_takeover}, the last queued one started at {last_backlog_start}"
    );
    assert_integrity(&scratch);
}

/// `(id, run_id)` of the workflows running under the server with `pid`.
fn owned_by(scratch: &Scratch, pid: u32) -> BTreeMap<String, String> {
    running_where(scratch, &format!("owner_pid = {pid}"))
}

/// `(id, run_id)` of the running workflows whose owner meets `condition`.
fn running_where(scratch: &Scratch, condition: &str) -> BTreeMap<String, String> {
    scratch
        .query(&format!(
            "SELECT id, run_id FROM workflows WHERE status = 'running' AND {condition}"
        ))
        .into_iter()
        .map(|row| (text(&row[0]), text(&row[1])))
        .collect()
}

fn text(value: &Value) -> String {
    value.as_str().unwrap_or_default().to_owned()
}

/// Whether workflow `id` is no longer held by run `run_id`: taken over by
/// another run, or ended.
fn moved_on(scratch: &Scratch, id: &str, run_id: &str) -> bool {
    let row = scratch.query(&format!(
        "SELECT run_id, status FROM workflows WHERE id = '{id}'"
    ));
    text(&row[0][0]) != run_id || text(&row[0][1]) != "running"
}

/// Three workers on one database share the work; one is SIGKILLed in the
/// middle and the survivors take its workflows over within its lease + 1 s,
/// and every workflow completes with no completed step run again. The
/// killed worker runs in a PID namespace of its own, so that the others
/// cannot see that its pid is gone and must wait for its lease, as workers
/// on other hosts do: on PostgreSQL this is the many-hosts set-up of
/// README's *Scaling out*.
#[test]
fn three_workers_share_the_work_and_survivors_take_over_a_killed_one() {
    let count = env_size("DURABLE_SERVE_WORKER_WORKFLOWS", 1000);
    let items = 3;
    let lease = Duration::from_secs(3);
    let scratch = Scratch::new();
    deploy_scenarios(&scratch);
    let workflows = keyed("w", count, items, 20);
    submit_all(&scratch, &workflows, &[]);
    let args = ["--concurrency", "16", "--stale-after", "3s"];
    let a = Server::start(&scratch, "worker-a", &args);
    let mut elsewhere = std::process::Command::new("unshare");
    elsewhere
        .args(["--pid", "--fork", "--mount-proc", "--kill-child"])
        .arg(&artifacts().host)
        .args(["serve", "--db"])
        .arg(scratch.db_arg())
        .args(args)
        .current_dir(scratch.path());
    let mut b = Server::spawn(&mut elsewhere, scratch.path(), "worker-b");
    let c = Server::start(&scratch, "worker-c", &args);
    wait_until("a quarter of the workflows to complete", PATIENCE, || {
        count_status(&scratch, "completed") >= count / 4
    });
    // Worker b's pid is its namespace's: its workflows are those running
    // under another owner than a and c.
    let orphans = running_where(
        &scratch,
        &format!("owner_pid NOT IN ({}, {})", a.pid(), c.pid()),
    );
    b.kill9();
    let killed = Instant::now();
    let completed_at_kill = scratch.completed_steps();
    let executions_at_kill = executions(&scratch);
    assert!(
        !orphans.is_empty() && count_status(&scratch, "completed") < count,
        "the kill must land while worker b runs workflows: {:?}",
        status_counts(&scratch)
    );
    wait_until(
        "the survivors to take over the killed worker's workflows",
        PATIENCE,
        || orphans.iter().all(|(id, run)| moved_on(&scratch, id, run)),
    );
    let taken_over_in = killed.elapsed();
    wait_completed(&scratch, count, &[&a, &c]);

    assert!(
        taken_over_in <= lease + Duration::from_secs(1),
        "the killed worker's {} workflows were taken over {taken_over_in:?} after the kill \
         (lease {lease:?})",
        orphans.len()
    );
    let executions = executions(&scratch);
    for key in &completed_at_kill {
        assert_eq!(
            executions.get(key),
            executions_at_kill.get(key),
            "{key} was completed at the kill, yet ran again afterwards"
        );
    }
    let expected = expected_keys(&workflows, items);
    let ran: BTreeSet<String> = executions.keys().cloned().collect();
    assert_eq!(ran, expected, "every step ran, and nothing else");
    assert!(
        executions.values().all(|&n| n <= 2),
        "one kill repeats a step at most once"
    );
    assert_all_completed(&scratch, &workflows, items);
    let by: Vec<usize> = [&a, &c]
        .iter()
        .map(|s| s.logged_ids("finished").len())
        .collect();
    assert!(by.iter().all(|&n| n > 0), "both survivors worked: {by:?}");
    assert_integrity(&scratch);
    println!(
        "serve: 3 workers, {count} workflows; worker b killed holding {} of them, taken over \
         in {:.2} s; the survivors finished {by:?}",
        orphans.len(),
        taken_over_in.as_secs_f64()
    );
}

/// A worker frozen (SIGSTOP) past its lease loses its workflows to another;
/// thawed after the other finished them, it writes nothing: every write of a
/// run is fenced by its ownership.
#[test]
fn a_worker_frozen_past_its_lease_writes_nothing_once_thawed() {
    let (count, items) = (4, 12);
    let scratch = Scratch::new();
    deploy_scenarios(&scratch);
    let workflows = keyed("f", count, items, 150);
    submit_all(&scratch, &workflows, &[]);
    let args = ["--concurrency", "8", "--stale-after", "2s"];
    let frozen = Server::start(&scratch, "frozen", &args);
    wait_each_completed_a_step(&scratch, count);
    frozen.signal("-STOP");
    let owned = owned_by(&scratch, frozen.pid());
    assert_eq!(owned.len(), count, "the frozen worker held every workflow");

    let successor = Server::start(&scratch, "successor", &args);
    wait_completed(&scratch, count, &[&successor]);
    let before = scratch.dump();
    frozen.signal("-CONT");
    // Long enough for the thawed runs to reach their next write and be fenced.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        scratch.dump(),
        before,
        "the thawed worker changed the database after losing its workflows"
    );
    assert_all_completed(&scratch, &workflows, items);
    let executions = executions(&scratch);
    assert!(
        executions.values().all(|&n| n <= 2),
        "a step ran more than once more after the freeze: {executions:?}"
    );
    let log = frozen.log();
    assert!(
        log.contains("lost") || log.contains("taken over"),
        "the thawed worker says it lost its workflows:\n{}",
        tail(&log, 20)
    );
}

/// While two workers run, the network to PostgreSQL stalls for 3 s
/// (nothing passes, nothing breaks), then PostgreSQL goes out of reach for
/// 4 s (every connection breaks, new ones are turned away: a restart, or a
/// network cut): the workers wait, say so, retry with backoff, and carry
/// on when it answers. Nothing is lost, no step completed before the
/// outage runs again, and the workers need neither a restart nor a
/// takeover.
#[test]
fn workers_wait_out_a_database_outage_and_carry_on() {
    let scratch = Scratch::new();
    if !scratch.on_postgres() {
        // A SQLite file has no server to lose.
        return;
    }
    let (count, items) = (40, 30);
    deploy_scenarios(&scratch);
    let workflows = keyed("o", count, items, 100);
    submit_all(&scratch, &workflows, &[]);
    let proxy = TcpProxy::start(&postgres_address());
    let db = scratch.db_arg_through(&proxy);
    let serve = |name: &str| {
        let mut command = std::process::Command::new(&artifacts().host);
        command.current_dir(scratch.path()).args([
            "serve",
            "--db",
            &db,
            "--concurrency",
            "16",
            "--stale-after",
            "30s",
        ]);
        Server::spawn(&mut command, scratch.path(), name)
    };
    let (mut a, mut b) = (serve("worker-a"), serve("worker-b"));
    wait_each_completed_a_step(&scratch, count);

    proxy.freeze();
    std::thread::sleep(Duration::from_secs(3));
    proxy.thaw();
    let steps = || scratch.number("SELECT count(*) FROM steps WHERE status = 'completed'");
    let thawed = steps();
    wait_until("steps to complete after the stall", PATIENCE, || {
        steps() > thawed + 20
    });

    proxy.cut();
    let completed_at_cut = scratch.completed_steps();
    let executions_at_cut = executions(&scratch);
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        a.wait_exit(Duration::ZERO).is_none() && b.wait_exit(Duration::ZERO).is_none(),
        "the workers outlive the outage:\n{}\n---\n{}",
        tail(&a.log(), 20),
        tail(&b.log(), 20)
    );
    proxy.restore();
    let restored = Instant::now();
    wait_completed(&scratch, count, &[&a, &b]);
    let finished = restored.elapsed();

    let executions = executions(&scratch);
    for key in &completed_at_cut {
        assert_eq!(
            executions.get(key),
            executions_at_cut.get(key),
            "{key} was completed before the outage, yet ran again"
        );
    }
    assert!(
        executions.values().all(|&n| n <= 2),
        "a step ran more than once more: {executions:?}"
    );
    assert_all_completed(&scratch, &workflows, items);
    let logs = [a.log(), b.log()];
    for log in &logs {
        assert!(
            log.contains("PostgreSQL is out of reach") && log.contains("PostgreSQL answers again"),
            "each worker reports the outage and its end:\n{}",
            tail(log, 30)
        );
    }
    let takeovers =
        scratch.number("SELECT CAST(coalesce(sum(takeovers), 0) AS BIGINT) FROM workflows");
    let repeated: usize = executions.values().map(|n| n - 1).sum();
    let stopped: Vec<&str> = logs
        .iter()
        .flat_map(|l| l.lines().filter(|line| line.contains("run stopped")))
        .collect();
    println!(
        "stall of 3 s, outage of 4 s: all {count} workflows completed {:.2} s after it ended; \
         {repeated} step bodies ran again, {} runs stopped, {takeovers} takeovers\n{}",
        finished.as_secs_f64(),
        stopped.len(),
        stopped.join("\n")
    );
    for worker in [&a, &b] {
        worker.signal("-TERM");
    }
    assert!(
        a.wait_exit(Duration::from_secs(30))
            .is_some_and(|s| s.success())
    );
    assert!(
        b.wait_exit(Duration::from_secs(30))
            .is_some_and(|s| s.success())
    );
}

/// On PostgreSQL, an idle worker hears of a workflow queued, and of a
/// signal sent, by another process at once (NOTIFY), not at its next poll:
/// here the poll is 30 s away.
#[test]
fn an_idle_worker_hears_of_work_from_another_process_at_once() {
    let scratch = Scratch::new();
    if !scratch.on_postgres() {
        // SQLite has no notifications: its `serve` polls (50 ms by default).
        return;
    }
    deploy_scenarios(&scratch);
    let server = Server::start(&scratch, "serve", &["--poll-interval", "30s"]);
    wait_until("serve to listen", Duration::from_secs(30), || {
        server.log().contains("notified=true")
    });
    // The first workflow compiles the component: wait it out.
    start(
        &scratch,
        SCENARIOS,
        "warm",
        &json!({"scenario": "keyed", "items": 1}),
        &[],
    )
    .expect_code(0);
    wait_completed(&scratch, 1, &[&server]);

    let submitted = Instant::now();
    start(
        &scratch,
        SCENARIOS,
        "quick",
        &json!({"scenario": "keyed", "items": 1}),
        &[],
    )
    .expect_code(0);
    wait_completed(&scratch, 2, &[&server]);
    let queued_to_done = submitted.elapsed();

    let waits = json!({"scenario": "signals", "items": 1, "sleep_ms": 0, "timeout_ms": null});
    start(&scratch, SCENARIOS, "waiter", &waits, &[]).expect_code(0);
    wait_until("the waiter to be unloaded", Duration::from_secs(10), || {
        scratch.workflow_status("waiter").as_deref() == Some("waiting")
    });
    let signalled = Instant::now();
    run(&mut scratch.host(&["signal", "waiter", "go", "--data", "1"])).expect_code(0);
    wait_completed(&scratch, 3, &[&server]);
    let signal_to_done = signalled.elapsed();
    for (what, took) in [("queued", queued_to_done), ("signalled", signal_to_done)] {
        assert!(
            took < Duration::from_secs(5),
            "a workflow {what} elsewhere finished {took:?} later: the worker waited for its poll"
        );
    }
    println!(
        "serve on PostgreSQL, polling every 30 s: queued to completed {} ms, signal to \
         completed {} ms",
        queued_to_done.as_millis(),
        signal_to_done.as_millis()
    );
}

/// Thousands of workflows sleeping at once are rows, not threads or memory;
/// `list --status sleeping` counts them; short sleepers are woken after
/// their due time (never before) and complete.
#[test]
fn sleeping_workflows_are_unloaded_and_woken_when_due() {
    let sleepers = env_size("DURABLE_SERVE_SLEEPERS", 2000);
    let nappers = env_size("DURABLE_SERVE_NAPPERS", 50);
    let scratch = Scratch::new();
    deploy_scenarios(&scratch);
    const CONCURRENCY: u64 = 16;
    let server = Server::start(
        &scratch,
        "serve",
        &["--concurrency", &CONCURRENCY.to_string()],
    );
    wait_until("serve to start", Duration::from_secs(30), || {
        server.log().contains("serving")
    });
    let (idle_threads, idle_rss) = (server.proc_status("Threads"), server.proc_status("VmRSS"));

    let long: Vec<(String, Value)> = (0..sleepers)
        .map(|n| {
            (
                format!("sleeper{n:05}"),
                json!({ "scenario": "keyed_sleep", "sleep_ms": 600_000 }),
            )
        })
        .collect();
    let submitting = submit_all(&scratch, &long, &[]);
    wait_until("every workflow to sleep", PATIENCE, || {
        count_status(&scratch, "sleeping") == sleepers
    });
    // Let the runs' threads end.
    std::thread::sleep(Duration::from_secs(1));
    let threads = server.proc_status("Threads");
    let rss_mib = server.proc_status("VmRSS") / 1024;
    let peak_mib = server.proc_status("VmHWM") / 1024;
    println!(
        "serve: {sleepers} workflows sleeping (submitted in {:.1} s): {threads} threads, \
         RSS {rss_mib} MiB (peak {peak_mib} MiB); idle before: {idle_threads} threads, \
         RSS {} MiB",
        submitting.as_secs_f64(),
        idle_rss / 1024
    );
    // Worker threads stay for the next workflows (at most one per slot of
    // --concurrency), and WASI keeps a few threads for file operations a
    // while; a sleeping workflow holds none: far fewer than the sleepers.
    assert!(
        threads <= idle_threads + 2 * CONCURRENCY + 16,
        "{threads} threads for {sleepers} sleeping workflows"
    );
    assert!(rss_mib < 300, "RSS {rss_mib} MiB for sleeping workflows");
    assert_eq!(
        scratch.number(
            "SELECT count(*) FROM workflows WHERE status = 'sleeping' AND lease_expires_at = 0
             AND wake_at > 0"
        ),
        sleepers as i64,
        "sleepers hold no lease and have a wake time"
    );
    let listed = run(&mut scratch.host(&["list", "--status", "sleeping", "--all", "--json"]))
        .expect_code(0)
        .json();
    assert_eq!(listed.as_array().unwrap().len(), sleepers);
    let executed = executions(&scratch);
    assert_eq!(executed.len(), sleepers, "one `before` each");
    assert!(executed.keys().all(|k| k.ends_with("/before#000001")));

    // Short sleeps on the same server, among the long ones.
    let short: Vec<(String, Value)> = (0..nappers)
        .map(|n| {
            (
                format!("nap{n:03}"),
                json!({ "scenario": "keyed_sleep", "sleep_ms": 6000 }),
            )
        })
        .collect();
    submit_all(&scratch, &short, &[]);
    wait_completed(&scratch, nappers, &[&server]);

    let rows: Vec<(String, i64, i64, i64)> = scratch
        .query(
            "SELECT w.id, CAST(z.output_json AS BIGINT), a.started_at, w.updated_at
             FROM workflows w
             JOIN steps z ON z.workflow_id = w.id AND z.step_key = 'durable.sleep#000001'
             JOIN steps a ON a.workflow_id = w.id AND a.step_key = 'after#000001'
             WHERE w.id LIKE 'nap%'",
        )
        .into_iter()
        .map(|r| {
            let n = |i: usize| r[i].as_i64().unwrap();
            (r[0].as_str().unwrap().to_owned(), n(1), n(2), n(3))
        })
        .collect();
    assert_eq!(rows.len(), nappers);
    let woken: BTreeSet<String> = server.logged_ids("woke up").into_iter().collect();
    let mut lateness = Vec::new();
    for (id, wake_at, after_started, completed_at) in &rows {
        assert!(
            after_started >= wake_at,
            "{id} resumed {} ms before its wake time",
            wake_at - after_started
        );
        assert!(woken.contains(id), "{id} was not unloaded and woken");
        lateness.push(completed_at - wake_at);
    }
    lateness.sort();
    let executed = executions(&scratch);
    for (id, _) in &short {
        for step in ["before", "after"] {
            assert_eq!(
                executed.get(&format!("{id}/{step}#000001")),
                Some(&1),
                "{id}"
            );
        }
    }
    assert_eq!(count_status(&scratch, "sleeping"), sleepers);
    assert_integrity(&scratch);
    println!(
        "serve: {nappers} sleeps of 6 s, completion - wake time: p50 {} ms, p99 {} ms, max {} ms",
        percentile(&lateness, 0.5),
        percentile(&lateness, 0.99),
        lateness.last().unwrap_or(&0)
    );
}

/// `start`: idempotent on id and input, refuses another input and unknown
/// deployments without changing anything; `--wait` prints the result with
/// `run`'s exit codes, `--wait-timeout` exits 11.
#[test]
fn start_is_idempotent_and_waits_with_run_exit_codes() {
    let scratch = Scratch::new();
    deploy_scenarios(&scratch);
    let input = json!({ "scenario": "keyed", "items": 2 });

    let first = start(&scratch, SCENARIOS, "same", &input, &[]).expect_code(0);
    assert_eq!(first.stdout(), "same\n");
    let spaced = r#"{ "scenario" : "keyed",  "items" : 2 }"#;
    let again = run(scratch
        .host(&[
            "start",
            SCENARIOS,
            "--workflow-id",
            "same",
            "--input",
            spaced,
        ])
        .stdin(Stdio::null()))
    .expect_code(0);
    assert_eq!(again.stdout(), "same\n", "the same id again");
    assert!(
        again.stderr().contains("already exists"),
        "{}",
        again.stderr()
    );
    let json_again = start(&scratch, SCENARIOS, "same", &input, &["--json"])
        .expect_code(0)
        .json();
    assert_eq!(json_again["workflow_id"], "same");
    assert_eq!(json_again["created"], false);
    assert_eq!(json_again["status"], "queued");
    assert_eq!(scratch.number("SELECT count(*) FROM workflows"), 1);

    let before = scratch.dump();
    let other = json!({ "scenario": "keyed", "items": 3 });
    let conflict = start(&scratch, SCENARIOS, "same", &other, &[]).expect_code(2);
    assert!(
        conflict.stderr().contains("exists with another input"),
        "{}",
        conflict.stderr()
    );
    assert_eq!(scratch.dump(), before, "a refused start changes nothing");

    let unknown = start(&scratch, "no-such-app", "x", &input, &[]).expect_code(2);
    assert!(
        unknown
            .stderr()
            .contains("no deployment named `no-such-app`")
            && unknown.stderr().contains("durable-host deploy"),
        "{}",
        unknown.stderr()
    );
    let bad_json = run(scratch
        .host(&["start", SCENARIOS, "--workflow-id", "y", "--input", "{oops"])
        .stdin(Stdio::null()))
    .expect_code(2);
    assert!(!bad_json.stderr().is_empty());
    assert_eq!(scratch.dump(), before, "refused starts change nothing");

    // No id: one is made up, printed, and queued.
    let made_up = run(scratch
        .host(&["start", SCENARIOS, "--input", &input.to_string()])
        .stdin(Stdio::null()))
    .expect_code(0)
    .stdout();
    let made_up = made_up.trim();
    assert!(made_up.starts_with("wf-"), "{made_up}");
    assert_eq!(scratch.workflow_status(made_up).as_deref(), Some("queued"));

    // Nothing serves: --wait-timeout gives up with 11, the workflow stays.
    let waited = Instant::now();
    let timed_out = start(
        &scratch,
        SCENARIOS,
        "later",
        &input,
        &["--wait", "--wait-timeout", "300ms"],
    )
    .expect_code(11);
    assert!(waited.elapsed() < Duration::from_secs(10));
    assert!(
        timed_out.stdout().contains("still queued"),
        "{}",
        timed_out.stdout()
    );
    assert_eq!(scratch.workflow_status("later").as_deref(), Some("queued"));

    let server = Server::start(&scratch, "serve", &[]);
    let done = start(&scratch, SCENARIOS, "waited", &input, &["--wait"]).expect_code(0);
    assert!(
        done.stdout().contains("completed") && done.stdout().contains(r#""sum":1"#),
        "{}",
        done.stdout()
    );
    let done_json = start(
        &scratch,
        SCENARIOS,
        "waited-json",
        &input,
        &["--wait", "--json"],
    )
    .expect_code(0)
    .json();
    assert_eq!(done_json["status"], "completed");
    assert_eq!(
        done_json["output"],
        json!({ "workflow_id": "waited-json", "sum": 1 })
    );
    let failed = start(
        &scratch,
        SCENARIOS,
        "gives-up",
        &json!({ "scenario": "fail" }),
        &["--wait"],
    )
    .expect_code(1);
    assert!(
        format!("{}{}", failed.stdout(), failed.stderr()).contains("gave up on purpose"),
        "{}{}",
        failed.stdout(),
        failed.stderr()
    );
    // The one that timed out went on; waiting again (same id and input)
    // answers with its result.
    let later = start(&scratch, SCENARIOS, "later", &input, &["--wait"]).expect_code(0);
    assert!(later.stdout().contains("completed"), "{}", later.stdout());
    // Idempotent after the end too: the same input answers, nothing reruns.
    start(&scratch, SCENARIOS, "same", &input, &["--wait"]).expect_code(0);
    wait_until("every workflow to end", PATIENCE, || {
        ["queued", "running", "sleeping"]
            .iter()
            .all(|status| count_status(&scratch, status) == 0)
    });
    assert_eq!(
        status_counts(&scratch),
        BTreeMap::from([("completed".to_owned(), 5), ("failed".to_owned(), 1)]),
        "{}",
        server.log()
    );
    assert_eq!(
        executions(&scratch).values().filter(|n| **n != 1).count(),
        0,
        "every step ran once"
    );
    assert_integrity(&scratch);
}

/// Named queues: `--queue fast=4` runs up to 4 of its workflows at once
/// while the default queue (`--concurrency 1`) runs one at a time; a queue
/// no server serves keeps its workflows queued.
#[test]
fn named_queues_have_their_own_concurrency() {
    let scratch = Scratch::new();
    deploy_scenarios(&scratch);
    let (fast_count, default_count, items) = (8, 4, 3);
    let fast = keyed("fast", fast_count, items, 150);
    let default = keyed("default", default_count, items, 150);
    submit_all(&scratch, &fast, &["--queue", "fast"]);
    submit_all(&scratch, &default, &[]);
    let unserved = json!({ "scenario": "keyed", "items": 1 });
    start(
        &scratch,
        SCENARIOS,
        "elsewhere",
        &unserved,
        &["--queue", "other"],
    )
    .expect_code(0);

    let server = Server::start(
        &scratch,
        "serve",
        &["--concurrency", "1", "--queue", "fast=4"],
    );
    wait_completed(&scratch, fast_count + default_count, &[&server]);
    assert_all_completed(&scratch, &fast, items);
    assert_all_completed(&scratch, &default, items);

    let fast_spans = step_spans(&scratch, "fast");
    let default_spans = step_spans(&scratch, "default");
    let all: Vec<(i64, i64)> = fast_spans.iter().chain(&default_spans).copied().collect();
    let (fast_overlap, default_overlap, total_overlap) = (
        max_overlap(&fast_spans),
        max_overlap(&default_spans),
        max_overlap(&all),
    );
    println!(
        "serve queues: at most {fast_overlap} `fast` workflows at once (limit 4), \
         {default_overlap} `default` (limit 1), {total_overlap} in all"
    );
    assert!(
        (2..=4).contains(&fast_overlap),
        "fast=4 ran {fast_overlap} at once"
    );
    assert_eq!(default_overlap, 1, "--concurrency 1 ran several at once");
    assert!(total_overlap <= 5, "{total_overlap} workflows at once");

    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        scratch.workflow_status("elsewhere").as_deref(),
        Some("queued"),
        "a queue nobody serves is not run"
    );
    assert_integrity(&scratch);
}

/// Every deployed version is kept; a workflow runs on the version it was
/// started on, whatever was deployed after.
#[test]
fn deploy_keeps_every_version_and_workflows_keep_theirs() {
    let scratch = Scratch::new();
    let services = format!("{}::/services", scratch.path().join("services").display());
    let onboarding_sha = sha256_of(&artifacts().onboarding);
    let scenarios_sha = sha256_of(&artifacts().scenarios);

    let v1 = deploy(
        &scratch,
        "app",
        &artifacts().onboarding,
        &["--dir", &services],
    );
    assert_eq!(v1["version"], 1);
    assert_eq!(v1["component_sha256"], onboarding_sha.as_str());
    let employee: Value = serde_json::from_str(&employee("emp-1", 0)).unwrap();
    start(&scratch, "app", "on-v1", &employee, &[]).expect_code(0);

    let grant = ledger_grant(&scratch);
    let v2 = deploy(&scratch, "app", &artifacts().scenarios, &["--dir", &grant]);
    assert_eq!(v2["version"], 2);
    assert_eq!(v2["component_sha256"], scenarios_sha.as_str());
    let v3 = deploy(&scratch, "app", &artifacts().scenarios, &["--dir", &grant]);
    assert_eq!(
        v3["version"], 3,
        "the same file deployed again is a new version"
    );
    assert_eq!(v3["component_sha256"], scenarios_sha.as_str());

    let listed = run(&mut scratch.host(&["deploy", "--list", "--json"]))
        .expect_code(0)
        .json();
    let versions: Vec<(i64, String)> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["name"] == "app")
        .map(|d| {
            (
                d["version"].as_i64().unwrap(),
                d["component_sha256"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        versions,
        vec![
            (3, scenarios_sha.clone()),
            (2, scenarios_sha.clone()),
            (1, onboarding_sha.clone())
        ]
    );

    let keyed_input = json!({ "scenario": "keyed", "items": 1 });
    start(&scratch, "app", "on-v3", &keyed_input, &[]).expect_code(0);
    // Idempotent start of the old one does not move it to the new version.
    start(&scratch, "app", "on-v1", &employee, &[]).expect_code(0);
    let sha_of = |id: &str| -> String {
        let sql = format!("SELECT component_sha256 FROM workflows WHERE id = '{id}'");
        scratch.strings(&sql).into_iter().next().unwrap()
    };
    assert_eq!(sha_of("on-v1"), onboarding_sha);
    assert_eq!(sha_of("on-v3"), scenarios_sha);

    let server = Server::start(&scratch, "serve", &[]);
    wait_completed(&scratch, 2, &[&server]);
    assert_eq!(
        sha_of("on-v1"),
        onboarding_sha,
        "still its version after running"
    );
    assert_eq!(scratch.steps("on-v1").len(), 4, "the onboarding steps ran");
    let calls = scratch.service_calls();
    assert_eq!(
        calls.values().sum::<usize>(),
        4,
        "one call per service: {calls:?}"
    );
    assert_exactly_once(&scratch, &BTreeSet::from(["on-v3/k#000001".to_owned()]));
    assert_integrity(&scratch);
}
