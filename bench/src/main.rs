//! `durable-bench`: what durable-host costs, measured against the physical
//! limit in the same run.
//!
//! A durable step cannot be cheaper than the commit that makes its result
//! durable, so the baseline is a raw rusqlite loop committing one small row
//! per transaction with the pragmas the host uses (WAL, `synchronous=FULL`).
//! Everything else is measured through the real `durable-host` binary, as
//! users run it, and reported as figures and ratios; nothing is asserted.
//!
//! ```text
//! cargo run --release -p durable-bench [-- --quick] [--json]
//! ```

use std::process::Command;
use std::time::{Duration, Instant};

use durable_tests::{Scratch, artifacts};
use serde_json::{Value, json};

/// How much work each measurement does.
struct Sizes {
    commits: u32,
    steps: u32,
    replay: u32,
    workflows: u32,
    repeats: u32,
}

struct Report {
    rows: Vec<(String, String, String)>,
    json: serde_json::Map<String, Value>,
}

impl Report {
    fn add(&mut self, key: &str, label: &str, value: String, comparison: String, figure: Value) {
        eprintln!("  {label}: {value}  {comparison}");
        self.rows.push((label.to_owned(), value, comparison));
        self.json.insert(key.to_owned(), figure);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let json_mode = args.iter().any(|a| a == "--json");
    if let Some(unknown) = args
        .iter()
        .find(|a| !matches!(a.as_str(), "--quick" | "--json"))
    {
        eprintln!("error: unknown argument {unknown}\n  usage: durable-bench [--quick] [--json]");
        std::process::exit(2);
    }
    let sizes = if quick {
        Sizes {
            commits: 500,
            steps: 500,
            replay: 2_000,
            workflows: 40,
            repeats: 2,
        }
    } else {
        Sizes {
            commits: 2_000,
            steps: 2_000,
            replay: 10_000,
            workflows: 300,
            repeats: 3,
        }
    };
    eprintln!("building durable-host and the guests...");
    artifacts();
    let mut report = Report {
        rows: Vec::new(),
        json: serde_json::Map::new(),
    };
    let machine = machine();
    report.json.insert("machine".into(), json!(machine));

    eprintln!("measuring ({}):", if quick { "quick" } else { "full" });
    let full = raw_commit(sizes.commits, "FULL");
    let normal = raw_commit(sizes.commits, "NORMAL");
    report.add(
        "baseline_commit_full_us",
        "raw SQLite commit, WAL + synchronous=FULL (baseline, before the steps)",
        micros(full),
        "1.00x".into(),
        json!(us(full)),
    );
    report.add(
        "baseline_commit_normal_us",
        "raw SQLite commit, WAL + synchronous=NORMAL",
        micros(normal),
        ratio(normal, full),
        json!(us(normal)),
    );

    let step = step_overhead(&sizes);
    // fsync latency drifts on virtual disks: take the baseline again right
    // after the steps, and compare with the mean of both.
    let full = (full + raw_commit(sizes.commits, "FULL")) / 2;
    report.add(
        "step_us",
        &format!("durable step ({} trivial steps, per step)", sizes.steps),
        micros(step),
        format!(
            "{} of a FULL commit (mean of before and after: {})",
            ratio(step, full),
            micros(full)
        ),
        json!(us(step)),
    );

    let replay = replay_rate(&sizes);
    report.add(
        "replay_steps_per_s",
        &format!("replay of a {}-step history", sizes.replay),
        format!("{:.0} steps/s", replay),
        format!("{:.2} us per step", 1e6 / replay),
        json!(replay),
    );

    let (cold, warm, uncached) = start_up(&sizes);
    report.add(
        "start_cold_ms",
        "onboarding run, whole process, cold (compiles)",
        millis(cold),
        String::new(),
        json!(ms(cold)),
    );
    report.add(
        "start_warm_ms",
        "onboarding run, whole process, warm (cached compile)",
        millis(warm),
        format!(
            "{:.1}x faster than cold",
            cold.as_secs_f64() / warm.as_secs_f64()
        ),
        json!(ms(warm)),
    );
    report.add(
        "start_uncached_ms",
        "onboarding run, --no-cache",
        millis(uncached),
        String::new(),
        json!(ms(uncached)),
    );

    for branches in [2, 4] {
        let (parallel, sequential) = parallel_speedup(branches);
        report.add(
            &format!("parallel_{branches}_speedup"),
            &format!("{branches} CPU-bound branches of 300 ms: parallel vs one after another"),
            format!("{} vs {}", millis(parallel), millis(sequential)),
            format!(
                "{:.2}x speed-up on {} cores",
                sequential.as_secs_f64() / parallel.as_secs_f64(),
                machine["cores"]
            ),
            json!({"parallel_ms": ms(parallel), "sequential_ms": ms(sequential)}),
        );
    }

    for processes in [1, 2, 4] {
        let rate = many_workflows(sizes.workflows, processes);
        report.add(
            &format!("workflows_per_s_{processes}_processes"),
            &format!(
                "{} workflows of 10 steps, {processes} process(es) at a time",
                sizes.workflows
            ),
            format!("{rate:.1} workflows/s"),
            format!("{:.1} ms per workflow", 1000.0 / rate),
            json!(rate),
        );
    }

    if json_mode {
        println!("{}", Value::Object(report.json));
    } else {
        println!(
            "Machine: {} cores, {}; temp dir on the same disk as the database.\n",
            machine["cores"],
            machine["cpu"].as_str().unwrap_or("unknown CPU")
        );
        println!("| measurement | result | compared |\n|---|---|---|");
        for (label, value, comparison) in &report.rows {
            println!("| {label} | {value} | {comparison} |");
        }
    }
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, name)| name.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    json!({"cores": cores, "cpu": cpu})
}

/// Mean time of one commit of one small row, with the host's pragmas.
fn raw_commit(commits: u32, synchronous: &str) -> Duration {
    let dir = tempfile::tempdir().unwrap();
    let conn = rusqlite::Connection::open(dir.path().join("raw.db")).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    conn.execute_batch(&format!(
        "PRAGMA synchronous = {synchronous};
         CREATE TABLE rows (id INTEGER PRIMARY KEY, key TEXT NOT NULL, value TEXT NOT NULL);"
    ))
    .unwrap();
    let started = Instant::now();
    for i in 0..commits {
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        conn.prepare_cached("INSERT INTO rows (key, value) VALUES (?1, ?2)")
            .unwrap()
            .execute(rusqlite::params![format!("s#{i:06}"), i.to_string()])
            .unwrap();
        conn.execute_batch("COMMIT").unwrap();
    }
    started.elapsed() / commits
}

/// Run the scenarios guest's `steps` workflow with `items` steps (as a new
/// workflow) and time the whole process.
fn time_steps(scratch: &Scratch, id: &str, items: u32, extra: &[&str]) -> (Duration, Option<i32>) {
    let mut command = scratch.scenario(id, json!({"scenario": "steps", "items": items}));
    command.args(extra).arg("--json");
    time(&mut command)
}

fn time(command: &mut Command) -> (Duration, Option<i32>) {
    let started = Instant::now();
    let output = command.output().expect("run durable-host");
    (started.elapsed(), output.status.code())
}

fn best(runs: u32, mut measure: impl FnMut(u32) -> Duration) -> Duration {
    (0..runs).map(&mut measure).min().unwrap()
}

/// Per-step cost: a run of N steps minus a run of none, over N.
fn step_overhead(sizes: &Sizes) -> Duration {
    let scratch = Scratch::new();
    let empty = best(sizes.repeats, |i| {
        time_steps(&scratch, &format!("empty-{i}"), 0, &[]).0
    });
    let full = best(sizes.repeats, |i| {
        time_steps(&scratch, &format!("steps-{i}"), sizes.steps, &[]).0
    });
    full.saturating_sub(empty) / sizes.steps
}

/// Steps replayed per second when resuming a history of `replay` steps.
fn replay_rate(sizes: &Sizes) -> f64 {
    let scratch = Scratch::new();
    let empty = best(sizes.repeats, |i| {
        time_steps(&scratch, &format!("empty-{i}"), 0, &[]).0
    });
    let n = sizes.replay.to_string();
    let (_, code) = time_steps(&scratch, "history", sizes.replay, &["--crash-after", &n]);
    assert_eq!(
        code,
        Some(3),
        "the recording run should stop after its last checkpoint"
    );
    let (resume, code) = time_steps(&scratch, "history", sizes.replay, &[]);
    assert_eq!(code, Some(0));
    sizes.replay as f64 / resume.saturating_sub(empty).as_secs_f64()
}

/// Cold (empty cache), warm (cached) and uncached whole-process runs of onboarding.
fn start_up(sizes: &Sizes) -> (Duration, Duration, Duration) {
    let scratch = Scratch::new();
    let mut n = 0;
    let mut onboarding = |extra: &[&str]| {
        n += 1;
        let id = format!("emp-{n}");
        let mut command = scratch.onboarding(&id);
        command.args(extra);
        let (elapsed, code) = time(&mut command);
        assert_eq!(code, Some(0));
        elapsed
    };
    let mut cold = Duration::MAX;
    let mut warm = Duration::MAX;
    for i in 0..sizes.repeats {
        let cache = scratch.path().join(format!("cache-{i}"));
        let cache = cache.to_str().unwrap();
        cold = cold.min(onboarding(&["--cache-dir", cache]));
        warm = warm.min(onboarding(&["--cache-dir", cache]));
    }
    let uncached = best(sizes.repeats, |_| onboarding(&["--no-cache"]));
    (cold, warm, uncached)
}

/// Wall time of `branches` 300 ms CPU burns in parallel, and one after another.
fn parallel_speedup(branches: u32) -> (Duration, Duration) {
    let scratch = Scratch::new();
    let run = |scenario: &str| {
        let input = json!({"scenario": scenario, "items": branches, "burn_ms": 300});
        let (elapsed, code) = time(&mut scratch.scenario(&format!("{scenario}-{branches}"), input));
        assert_eq!(code, Some(0));
        elapsed
    };
    (run("parallel"), run("sequential_burn"))
}

/// Workflows per second, `processes` runners at a time on one database.
fn many_workflows(workflows: u32, processes: u32) -> f64 {
    let scratch = Scratch::new();
    let started = Instant::now();
    std::thread::scope(|scope| {
        for p in 0..processes {
            let scratch = &scratch;
            scope.spawn(move || {
                for w in (p..workflows).step_by(processes as usize) {
                    let (_, code) = time_steps(scratch, &format!("wf-{w}"), 10, &[]);
                    assert_eq!(code, Some(0));
                }
            });
        }
    });
    workflows as f64 / started.elapsed().as_secs_f64()
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn micros(d: Duration) -> String {
    format!("{:.1} us", us(d))
}

fn millis(d: Duration) -> String {
    format!("{:.1} ms", ms(d))
}

fn ratio(value: Duration, baseline: Duration) -> String {
    format!("{:.2}x", value.as_secs_f64() / baseline.as_secs_f64())
}
