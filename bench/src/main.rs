//! `durable-bench`: what durable-host costs, measured against the physical
//! limit in the same run.
//!
//! A durable step cannot be cheaper than the commit that makes its result
//! durable, so the baseline is a raw rusqlite loop committing one small row
//! per transaction with the pragmas the host uses (WAL, `synchronous=FULL`,
//! a busy timeout), in a temp dir like every database of the run.
//! Everything else is measured through the real `durable-host` binary, as
//! users run it, and reported as figures and ratios; nothing is asserted:
//!
//! - per-step cost of N trivial steps (a run of N steps minus a run of none,
//!   which takes out process start-up), against the baseline commit;
//! - replay rate of a 10,000-step history left unfinished by a crash;
//! - whole-process start-up of the onboarding workflow, cold (compiling)
//!   and warm (from the compiled-component cache);
//! - speed-up of K CPU-bound parallel branches over the same work in
//!   sequence;
//! - workflows per second with 1, 2 and 4 processes at a time on one
//!   database, and the cost per durable commit that implies.
//!
//! ```text
//! cargo run --release -p durable-bench [-- --quick] [--json] [--steps N]
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use durable_tests::{Scratch, artifacts};
use serde_json::{Value, json};

const USAGE: &str = "usage: durable-bench [--quick] [--json] [--steps N]";

/// Steps of each workflow in the many-workflows measurement.
const WORKFLOW_STEPS: u32 = 10;
/// Flushed commits of one such workflow: its step results, plus the
/// workflow's creation and its end. (Marking a step running is committed
/// without a flush, and opening an up-to-date database writes nothing.)
const WORKFLOW_COMMITS: u32 = WORKFLOW_STEPS + 2;
/// CPU time of each branch in the parallel measurement (nominal: the
/// scenarios guest burns a fixed amount of work calibrated to about 1 ms).
const BURN_MS: u64 = 300;

/// How much work each measurement does.
struct Sizes {
    commits: u32,
    steps: u32,
    replay: u32,
    workflows: u32,
    repeats: u32,
}

struct Options {
    quick: bool,
    json: bool,
    steps: Option<u32>,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Options, String> {
    let mut options = Options {
        quick: false,
        json: false,
        steps: None,
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => options.quick = true,
            "--json" => options.json = true,
            "--steps" => {
                let n = args.next().ok_or("--steps needs a number")?;
                match n.parse() {
                    Ok(n) if n > 0 => options.steps = Some(n),
                    _ => return Err(format!("--steps {n}: expected a positive number")),
                }
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(options)
}

struct Report {
    rows: Vec<(String, String, String)>,
    results: serde_json::Map<String, Value>,
}

impl Report {
    /// One row of the table, and `figures` (with the ratios) under `key` in JSON.
    fn add(&mut self, key: &str, label: &str, value: String, comparison: String, figures: Value) {
        eprintln!("  {label}: {value}  {comparison}");
        self.rows.push((label.to_owned(), value, comparison));
        self.results.insert(key.to_owned(), figures);
    }
}

fn main() {
    let options = parse_args(std::env::args().skip(1)).unwrap_or_else(|error| {
        eprintln!("error: {error}\n  {USAGE}");
        std::process::exit(2);
    });
    let mut sizes = if options.quick {
        Sizes {
            commits: 500,
            steps: 500,
            replay: 2_000,
            workflows: 100,
            repeats: 2,
        }
    } else {
        Sizes {
            commits: 2_000,
            steps: 2_000,
            replay: 10_000,
            workflows: 1_000,
            repeats: 3,
        }
    };
    if let Some(steps) = options.steps {
        sizes.steps = steps;
    }
    eprintln!("building durable-host and the guests...");
    artifacts();
    let machine = machine();
    let bench = Bench::new(sizes);
    let sizes = &bench.sizes;
    let mut report = Report {
        rows: Vec::new(),
        results: serde_json::Map::new(),
    };

    eprintln!(
        "measuring ({}):",
        if options.quick { "quick" } else { "full" }
    );
    let full_before = raw_commit(sizes.commits, "FULL");
    let normal = raw_commit(sizes.commits, "NORMAL");
    report.add(
        "baseline_commit_full",
        "raw SQLite commit, WAL + synchronous=FULL (baseline, before the steps)",
        micros(full_before),
        "1.00x".into(),
        json!({"us": us(full_before)}),
    );
    report.add(
        "baseline_commit_normal",
        "raw SQLite commit, WAL + synchronous=NORMAL",
        micros(normal),
        format!("{:.2}x", ratio(normal, full_before)),
        json!({"us": us(normal), "ratio_to_full": ratio(normal, full_before)}),
    );

    let (steps_run, empty) = bench.steps();
    let step = steps_run.saturating_sub(empty) / sizes.steps;
    // fsync latency drifts on virtual disks: take the baseline again right
    // after the steps, and compare with the mean of both.
    let full = (full_before + raw_commit(sizes.commits, "FULL")) / 2;
    report.add(
        "step",
        &format!("durable step ({} trivial steps, per step)", sizes.steps),
        micros(step),
        format!(
            "{:.2}x of a FULL commit (mean of before and after: {})",
            ratio(step, full),
            micros(full)
        ),
        json!({
            "steps": sizes.steps,
            "us": us(step),
            "run_ms": ms(steps_run),
            "empty_run_ms": ms(empty),
            "baseline_full_us": us(full),
            "ratio_to_full": ratio(step, full),
        }),
    );

    let (resume, empty) = bench.replay();
    let replaying = resume.saturating_sub(empty);
    let replay = f64::from(sizes.replay) / replaying.as_secs_f64();
    report.add(
        "replay",
        &format!("replay of a {}-step history", sizes.replay),
        format!("{replay:.0} steps/s"),
        format!(
            "{:.2} us per step (resume {} - empty run {})",
            us(replaying) / f64::from(sizes.replay),
            millis(resume),
            millis(empty)
        ),
        json!({
            "steps": sizes.replay,
            "steps_per_s": replay,
            "us_per_step": us(replaying) / f64::from(sizes.replay),
            "resume_ms": ms(resume),
            "empty_run_ms": ms(empty),
        }),
    );

    let (cold, warm, uncached) = bench.start_up();
    report.add(
        "start_cold",
        "onboarding run, whole process, cold (compiles, fills the cache)",
        millis(cold),
        String::new(),
        json!({"ms": ms(cold)}),
    );
    report.add(
        "start_warm",
        "onboarding run, whole process, warm (compiled component from the cache)",
        millis(warm),
        format!("{:.1}x faster than cold", ratio(cold, warm)),
        json!({"ms": ms(warm), "speedup_over_cold": ratio(cold, warm)}),
    );
    report.add(
        "start_uncached",
        "onboarding run, whole process, --no-cache",
        millis(uncached),
        format!("{:.2}x of cold", ratio(uncached, cold)),
        json!({"ms": ms(uncached), "ratio_to_cold": ratio(uncached, cold)}),
    );

    for branches in [2, 4] {
        let (parallel, sequential) = bench.parallel_speedup(branches);
        let speedup = ratio(sequential, parallel);
        report.add(
            &format!("parallel_{branches}"),
            &format!(
                "{branches} CPU-bound branches of {BURN_MS} ms: parallel vs one after another"
            ),
            format!("{} vs {}", millis(parallel), millis(sequential)),
            format!("{speedup:.2}x speed-up on {} cores", machine.cores),
            json!({
                "branches": branches,
                "parallel_ms": ms(parallel),
                "sequential_ms": ms(sequential),
                "speedup": speedup,
                "cores": machine.cores,
            }),
        );
    }

    for processes in [1, 2, 4] {
        let rate = bench.many_workflows(processes);
        let per_workflow = Duration::from_secs_f64(1.0 / rate);
        let per_commit = per_workflow / WORKFLOW_COMMITS;
        report.add(
            &format!("workflows_{processes}_processes"),
            &format!(
                "{} workflows of {WORKFLOW_STEPS} steps, {processes} process(es) at a time",
                sizes.workflows
            ),
            format!("{rate:.1} workflows/s"),
            format!(
                "{} per workflow = {} per flushed commit ({WORKFLOW_COMMITS} each), {:.1}x a FULL commit",
                millis(per_workflow),
                micros(per_commit),
                ratio(per_commit, full)
            ),
            json!({
                "workflows": sizes.workflows,
                "processes": processes,
                "workflows_per_s": rate,
                "ms_per_workflow": ms(per_workflow),
                "commits_per_workflow": WORKFLOW_COMMITS,
                "us_per_commit_implied": us(per_commit),
                "ratio_to_full": ratio(per_commit, full),
            }),
        );
    }

    let temp = std::env::temp_dir();
    if options.json {
        let document = json!({
            "machine": {"cores": machine.cores, "cpu": machine.cpu, "temp_dir": temp},
            "quick": options.quick,
            "results": report.results,
        });
        println!("{document}");
    } else {
        println!(
            "Machine: {} cores, {}; every database (baseline included) in a temp dir under {}.\n",
            machine.cores,
            machine.cpu,
            temp.display()
        );
        println!("| measurement | result | compared |\n|---|---|---|");
        for (label, value, comparison) in &report.rows {
            println!("| {label} | {value} | {comparison} |");
        }
    }
}

struct Machine {
    cores: usize,
    cpu: String,
}

fn machine() -> Machine {
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
    Machine { cores, cpu }
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

/// The measurements that drive the real binary.
struct Bench {
    sizes: Sizes,
    /// Compiled-component cache for every run but the start-up ones, warmed
    /// at once, so that no measurement pays for a compilation by accident
    /// (and the user's own cache is left alone).
    cache: tempfile::TempDir,
}

impl Bench {
    fn new(sizes: Sizes) -> Self {
        let bench = Self {
            sizes,
            cache: tempfile::tempdir().expect("create a cache directory"),
        };
        let (_, code) = bench.run_steps(&Scratch::new(), "warm-up", 0, &[]);
        assert_eq!(code, Some(0), "the warm-up run failed");
        bench
    }

    /// `durable-host run` of the scenarios guest, with the bench's cache.
    fn scenario(&self, scratch: &Scratch, id: &str, input: Value) -> Command {
        let mut command = scratch.scenario(id, input);
        command.arg("--cache-dir").arg(self.cache.path());
        command
    }

    /// Time a run of the scenarios guest's `steps` workflow with `items`
    /// trivial steps, printing `--json` as the host's users would.
    fn run_steps(
        &self,
        scratch: &Scratch,
        id: &str,
        items: u32,
        extra: &[&str],
    ) -> (Duration, Option<i32>) {
        let input = json!({"scenario": "steps", "items": items});
        time(self.scenario(scratch, id, input).args(extra).arg("--json"))
    }

    /// Best time of new workflows with no steps: process start-up, opening
    /// the database, instantiating the guest, creating and ending the workflow.
    fn empty_run(&self, scratch: &Scratch) -> Duration {
        best(self.sizes.repeats, |i| {
            self.run_steps(scratch, &format!("empty-{i}"), 0, &[]).0
        })
    }

    /// Best time of a new workflow of N trivial steps, and of one with none
    /// (per step: the difference over N).
    fn steps(&self) -> (Duration, Duration) {
        let scratch = Scratch::new();
        let empty = self.empty_run(&scratch);
        let steps = best(self.sizes.repeats, |i| {
            let (elapsed, code) =
                self.run_steps(&scratch, &format!("steps-{i}"), self.sizes.steps, &[]);
            assert_eq!(code, Some(0));
            elapsed
        });
        (steps, empty)
    }

    /// Best time to resume a history of `replay` completed steps whose
    /// workflow is still running (its process died right after the last
    /// checkpoint), each resume on a copy of the recorded database; and the
    /// best time of an empty run, to subtract.
    fn replay(&self) -> (Duration, Duration) {
        let recorded = Scratch::new();
        let empty = self.empty_run(&recorded);
        let n = self.sizes.replay;
        let (_, code) = self.run_steps(&recorded, "history", n, &["--crash-after", &n.to_string()]);
        assert_eq!(
            code,
            Some(3),
            "the recording run should stop after its last checkpoint"
        );
        let resume = best(self.sizes.repeats, |_| {
            let copy = Scratch::new();
            // The crashed process left its last commits in the WAL.
            for suffix in ["", "-wal"] {
                let from = with_suffix(&recorded.db(), suffix);
                if from.exists() {
                    std::fs::copy(&from, with_suffix(&copy.db(), suffix)).unwrap();
                }
            }
            let (elapsed, code) = self.run_steps(&copy, "history", n, &[]);
            assert_eq!(code, Some(0), "the resumed run should complete");
            elapsed
        });
        (resume, empty)
    }

    /// Cold (empty cache), warm (cached) and uncached whole-process runs of
    /// onboarding, each for a new workflow id.
    fn start_up(&self) -> (Duration, Duration, Duration) {
        let scratch = Scratch::new();
        let mut n = 0;
        let mut onboarding = |extra: &[&str]| {
            n += 1;
            let mut command = scratch.onboarding(&format!("emp-{n}"));
            let (elapsed, code) = time(command.args(extra));
            assert_eq!(code, Some(0));
            elapsed
        };
        let mut cold = Duration::MAX;
        let mut warm = Duration::MAX;
        for i in 0..self.sizes.repeats {
            let cache = scratch.path().join(format!("cache-{i}"));
            let cache = cache.to_str().unwrap();
            cold = cold.min(onboarding(&["--cache-dir", cache]));
            warm = warm.min(onboarding(&["--cache-dir", cache]));
        }
        let uncached = best(self.sizes.repeats, |_| onboarding(&["--no-cache"]));
        (cold, warm, uncached)
    }

    /// Best wall times of `branches` CPU burns in parallel, and of the same
    /// burns one after another, taken in turns.
    fn parallel_speedup(&self, branches: u32) -> (Duration, Duration) {
        let scratch = Scratch::new();
        let run = |scenario: &str, i: u32| {
            let input = json!({"scenario": scenario, "items": branches, "burn_ms": BURN_MS});
            let (elapsed, code) =
                time(&mut self.scenario(&scratch, &format!("{scenario}-{branches}-{i}"), input));
            assert_eq!(code, Some(0));
            elapsed
        };
        let mut parallel = Duration::MAX;
        let mut sequential = Duration::MAX;
        for i in 0..self.sizes.repeats {
            parallel = parallel.min(run("parallel", i));
            sequential = sequential.min(run("sequential_burn", i));
        }
        (parallel, sequential)
    }

    /// Workflows per second: `processes` runners on one database, each
    /// starting `durable-host run` for its share of distinct workflow ids,
    /// one process after another.
    fn many_workflows(&self, processes: u32) -> f64 {
        let scratch = Scratch::new();
        let workflows = self.sizes.workflows;
        let started = Instant::now();
        std::thread::scope(|scope| {
            for p in 0..processes {
                let scratch = &scratch;
                scope.spawn(move || {
                    for w in (p..workflows).step_by(processes as usize) {
                        let (_, code) =
                            self.run_steps(scratch, &format!("wf-{w}"), WORKFLOW_STEPS, &[]);
                        assert_eq!(code, Some(0));
                    }
                });
            }
        });
        f64::from(workflows) / started.elapsed().as_secs_f64()
    }
}

fn time(command: &mut Command) -> (Duration, Option<i32>) {
    let started = Instant::now();
    let output = command.output().expect("run durable-host");
    (started.elapsed(), output.status.code())
}

fn best(runs: u32, measure: impl FnMut(u32) -> Duration) -> Duration {
    (0..runs).map(measure).min().unwrap()
}

/// `durable.db` + `-wal` is `durable.db-wal`.
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut path = path.as_os_str().to_owned();
    path.push(suffix);
    path.into()
}

fn ratio(value: Duration, baseline: Duration) -> f64 {
    value.as_secs_f64() / baseline.as_secs_f64()
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
