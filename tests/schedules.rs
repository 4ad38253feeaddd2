//! Schedules: `serve` starts one workflow per cron tick, with the id
//! `NAME@TIME`, so that a tick runs once across several servers, kills and
//! restarts; ticks missed while no server ran are coalesced.

use std::collections::BTreeMap;
use std::time::Duration;

use durable_tests::{Scratch, Server, artifacts, run, wait_until};
use serde_json::json;

/// Deploy the scenarios guest with the ledger granted, and add schedule
/// `name` ticking every second with the `keyed` scenario (one step that
/// records its idempotency key each time its body runs).
fn every_second(scratch: &Scratch, name: &str) {
    scratch.deploy("scenarios", &artifacts().scenarios);
    let added = run(&mut scratch.host(&[
        "schedule",
        "add",
        name,
        "--cron",
        "* * * * * *",
        "--deployment",
        "scenarios",
        "--input",
        &json!({"scenario": "keyed", "items": 1}).to_string(),
    ]))
    .expect_code(0)
    .stdout();
    assert!(added.contains(&format!("as workflow {name}@")), "{added}");
}

/// The workflows of schedule `name`, by id, with their status.
fn ticks(scratch: &Scratch, name: &str) -> BTreeMap<String, String> {
    let sql = format!("SELECT id, status FROM workflows WHERE id LIKE '{name}@%' ORDER BY id");
    scratch
        .query(&sql)
        .into_iter()
        .map(|row| {
            (
                row[0].as_str().unwrap().to_owned(),
                row[1].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn each_tick_runs_once_across_servers_kills_and_restarts() {
    let scratch = Scratch::new();
    every_second(&scratch, "every");
    let mut first = Server::start(&scratch, "first", &[]);
    let second = Server::start(&scratch, "second", &[]);
    wait_until("three ticks", Duration::from_secs(30), || {
        ticks(&scratch, "every").len() >= 3
    });
    // Kill one server at whatever point it is (between reading a tick and
    // queuing its workflow, or between that and moving the schedule on).
    first.kill9();
    // A tick whose step was in flight on the killed server may run it again
    // (at least once); one whose step had completed must not.
    let completed_at_kill = scratch.completed_steps();
    let executions_at_kill = scratch.step_executions();
    let seen = ticks(&scratch, "every").len();
    wait_until("three more ticks", Duration::from_secs(30), || {
        ticks(&scratch, "every").len() >= seen + 3
    });
    let mut again = Server::start(&scratch, "again", &[]);
    let seen = ticks(&scratch, "every").len();
    wait_until("two more ticks", Duration::from_secs(30), || {
        ticks(&scratch, "every").len() >= seen + 2
    });
    run(&mut scratch.host(&["schedule", "remove", "every"])).expect_code(0);
    // A server that read the schedule just before it was removed may still
    // queue one tick; then nothing more comes.
    std::thread::sleep(Duration::from_millis(1200));
    wait_until(
        "every tick's workflow to finish",
        Duration::from_secs(60),
        || ticks(&scratch, "every").values().all(|s| s == "completed"),
    );
    let all = ticks(&scratch, "every");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(ticks(&scratch, "every"), all, "no tick after the removal");
    let logs = [first.log(), second.log(), again.log()].join("\n");
    second.signal("-TERM");
    again.signal("-TERM");
    drop(second);
    assert!(again.wait_exit(Duration::from_secs(30)).is_some());

    // One workflow per second. A gap is only where a loaded machine held
    // every server past a tick, and then the next tick says it coalesced
    // the ones it skipped.
    let seconds: Vec<(u64, &String)> = all
        .keys()
        .map(|id| (tick_seconds(id.strip_prefix("every@").unwrap()), id))
        .collect();
    for pair in seconds.windows(2) {
        let ((before, _), (after, id)) = (pair[0], pair[1]);
        if after != before + 1 {
            let skipped = format!("skipped={}", after - before - 1);
            assert!(
                logs.lines()
                    .any(|l| l.contains(id.as_str()) && l.contains(&skipped)),
                "a gap before {id} that no tick accounts for: {all:?}"
            );
        }
    }
    // Each tick's step ran once, or twice if the kill caught it in flight.
    let executions = scratch.step_executions();
    for key in &completed_at_kill {
        assert_eq!(
            executions.get(key),
            executions_at_kill.get(key),
            "{key} was completed at the kill, yet ran again: {executions:?}"
        );
    }
    for id in all.keys() {
        let key = format!("{id}/k#000001");
        let ran = executions.get(&key).copied().unwrap_or(0);
        let allowed = if executions_at_kill.contains_key(&key) {
            2
        } else {
            1
        };
        assert!(
            (1..=allowed).contains(&ran),
            "{key} ran {ran} times (at most {allowed}): {executions:?}"
        );
    }
    assert_eq!(executions.len(), all.len(), "{executions:?}");
}

#[test]
fn ticks_missed_while_no_server_ran_are_coalesced() {
    let scratch = Scratch::new();
    every_second(&scratch, "missed");
    // Nobody serves for three seconds: three ticks or more are missed.
    std::thread::sleep(Duration::from_millis(3200));
    let server = Server::start(&scratch, "serve", &[]);
    wait_until("the first tick's workflow", Duration::from_secs(30), || {
        !ticks(&scratch, "missed").is_empty()
    });
    let log = || server.log();
    wait_until("the tick in the log", Duration::from_secs(10), || {
        log().contains("schedule ticked")
    });
    let first_line = log()
        .lines()
        .find(|line| line.contains("schedule ticked"))
        .unwrap()
        .to_owned();
    let skipped: u32 = first_line
        .split("skipped=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no skipped= in {first_line}"));
    assert!(skipped >= 2, "{first_line}");
    // The first workflow queued is the latest missed tick's: none was
    // queued for the older ones.
    let earliest = ticks(&scratch, "missed").into_keys().next().unwrap();
    assert!(first_line.contains(&earliest), "{earliest}: {first_line}");
    drop(server);
}

#[test]
fn schedules_are_added_listed_and_removed_with_clear_errors() {
    let scratch = Scratch::new();
    every_second(&scratch, "nightly-ish");
    let listed = run(&mut scratch.host(&["schedule", "list", "--json"]))
        .expect_code(0)
        .json();
    assert_eq!(listed[0]["name"], "nightly-ish");
    assert_eq!(listed[0]["cron"], "* * * * * *");
    assert_eq!(listed[0]["input"], json!({"scenario": "keyed", "items": 1}));
    assert_eq!(listed[0]["queue"], "default");
    let table = run(&mut scratch.host(&["schedule", "list"]))
        .expect_code(0)
        .stdout();
    assert!(
        table.starts_with("NAME") && table.contains("nightly-ish"),
        "{table}"
    );

    let refused = |args: &[&str], says: &str| {
        let failed = run(&mut scratch.host(args)).expect_code(2);
        assert!(failed.stderr().contains(says), "{}", failed.stderr());
        assert!(!failed.stderr().contains("panicked"));
    };
    let add = |name: &'static str, cron: &'static str, deployment: &'static str| {
        vec![
            "schedule",
            "add",
            name,
            "--cron",
            cron,
            "--deployment",
            deployment,
        ]
    };
    refused(
        &add("bad", "every day", "scenarios"),
        "`every day` is not a cron expression",
    );
    refused(
        &add("bad", "every day", "scenarios"),
        "hint: five fields, minute hour day-of-month month day-of-week",
    );
    refused(
        &add("bad", "0 2 * * *", "nope"),
        "no deployment named `nope`",
    );
    refused(
        &add("nightly-ish", "0 2 * * *", "scenarios"),
        "exists already",
    );
    refused(&add("a@b", "0 2 * * *", "scenarios"), "`@` separates");
    let mut bad_input = add("bad", "0 2 * * *", "scenarios");
    bad_input.extend(["--input", "{oops"]);
    refused(&bad_input, "not valid JSON");
    refused(&["schedule", "remove", "nope"], "no schedule named `nope`");
    // Nothing refused was added.
    let listed = run(&mut scratch.host(&["schedule", "list", "--json"]))
        .expect_code(0)
        .json();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");

    run(&mut scratch.host(&["schedule", "remove", "nightly-ish"])).expect_code(0);
    let none = run(&mut scratch.host(&["schedule", "list"]))
        .expect_code(0)
        .stdout();
    assert!(none.starts_with("no schedules"), "{none}");
}

/// A tick's time (`2026-12-02T10:00:00Z`) in seconds, counted from the
/// start of its month: enough to compare ticks a few seconds apart.
fn tick_seconds(text: &str) -> u64 {
    let (date, time) = text.trim_end_matches('Z').split_once('T').unwrap();
    let [h, m, s]: [u64; 3] = time
        .split(':')
        .map(|n| n.parse().unwrap())
        .collect::<Vec<_>>()
        .try_into()
        .unwrap();
    let day: u64 = date.rsplit('-').next().unwrap().parse().unwrap();
    ((day * 24 + h) * 60 + m) * 60 + s
}
