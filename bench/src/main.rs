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
//! - the same per-step cost and start-up for the TypeScript and Python
//!   guests (see [`languages`]), against the Rust guest's;
//! - speed-up of K CPU-bound parallel branches over the same work in
//!   sequence;
//! - workflows per second with 1, 2 and 4 processes at a time on one
//!   database, and the cost per durable commit that implies;
//! - through one `durable-host serve` (see [`serve`]): single-step and
//!   ten-step workflows per second and the flushed commits per workflow,
//!   submissions per second over HTTP, a lone long workflow's per-step cost,
//!   the memory of many sleeping workflows and how late timers fire, and
//!   the time to recover from `kill -9` with many workflows in flight;
//! - the PostgreSQL backend (see [`postgres`]): per-step cost against a raw
//!   PostgreSQL commit, workflows per second with 1, 2 and 4 `serve`
//!   workers beside SQLite, and how soon survivors take over a killed
//!   worker's workflows.
//!
//! ```text
//! cargo run --release -p durable-bench [-- --quick] [--json] [--steps N]
//!     [--serve-only | --postgres-only]
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use durable_tests::{Scratch, artifacts};
use serde_json::{Value, json};

mod languages;
mod postgres;
mod serve;

const USAGE: &str =
    "usage: durable-bench [--quick] [--json] [--steps N] [--serve-only | --postgres-only]";

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
    /// Single-step and ten-step workflows queued for one `serve`.
    serve_single: usize,
    serve_ten: usize,
    /// Workflows sleeping 10 minutes, and short sleepers among them.
    sleepers: usize,
    nappers: usize,
    /// Workflows in flight when `serve` is killed.
    in_flight: usize,
    /// Workflows waiting for a signal, each then sent one.
    signalled: usize,
    /// Workflows queued for 1, 2 and 4 workers, on each backend.
    pg_workflows: usize,
    /// Workflows in flight on the worker killed in the takeover measurement.
    takeover_in_flight: usize,
}

struct Options {
    quick: bool,
    json: bool,
    steps: Option<u32>,
    serve_only: bool,
    postgres_only: bool,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Options, String> {
    let mut options = Options {
        quick: false,
        json: false,
        steps: None,
        serve_only: false,
        postgres_only: false,
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => options.quick = true,
            "--json" => options.json = true,
            "--serve-only" => options.serve_only = true,
            "--postgres-only" => options.postgres_only = true,
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
    if options.serve_only && options.postgres_only {
        return Err("--serve-only and --postgres-only exclude each other".into());
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
            serve_single: 1_000,
            serve_ten: 300,
            sleepers: 1_000,
            nappers: 50,
            in_flight: 200,
            signalled: 100,
            pg_workflows: 200,
            takeover_in_flight: 8,
        }
    } else {
        Sizes {
            commits: 2_000,
            steps: 2_000,
            replay: 10_000,
            workflows: 1_000,
            repeats: 3,
            serve_single: 5_000,
            serve_ten: 2_000,
            sleepers: 10_000,
            nappers: 200,
            in_flight: 1_000,
            signalled: 500,
            pg_workflows: 1_000,
            takeover_in_flight: 16,
        }
    };
    if let Some(steps) = options.steps {
        sizes.steps = steps;
    }
    eprintln!("building durable-host and the guests...");
    artifacts();
    let machine = machine();
    let bench = Bench::new(sizes);
    let mut report = Report {
        rows: Vec::new(),
        results: serde_json::Map::new(),
    };

    eprintln!(
        "measuring ({}):",
        if options.quick { "quick" } else { "full" }
    );
    if !options.postgres_only {
        sqlite_measurements(&bench, &mut report, &machine, options.serve_only);
    }
    let pg_server = if options.serve_only {
        None
    } else {
        postgres::measurements(&bench, &mut report)
    };

    let temp = std::env::temp_dir();
    if options.json {
        let document = json!({
            "machine": {
                "cores": machine.cores,
                "cpu": machine.cpu,
                "temp_dir": temp,
                "postgres": pg_server.as_ref().map(postgres::PgServer::json),
            },
            "quick": options.quick,
            "results": report.results,
        });
        println!("{document}");
    } else {
        let server = pg_server
            .map(|server| format!("; {}", server.describe()))
            .unwrap_or_default();
        println!(
            "Machine: {} cores, {}; every SQLite database (baseline included) in a temp dir \
             under {}{server}.\n",
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

/// The SQLite baselines, then the one-shot measurements and the other
/// languages' (unless `serve_only`), then `serve`'s.
fn sqlite_measurements(bench: &Bench, report: &mut Report, machine: &Machine, serve_only: bool) {
    let sizes = &bench.sizes;
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

    let full = if serve_only {
        full_before
    } else {
        let rust = one_shot(bench, report, full_before, machine);
        other_languages(bench, report, &rust);
        rust.full
    };
    serve_measurements(bench, report, full);
}

/// What [`one_shot`] measured that later measurements compare with.
struct OneShot {
    /// The FULL commit baseline: the mean of the one taken before and one
    /// taken again after the steps.
    full: Duration,
    /// The Rust guest's per-step cost and onboarding start-up.
    rust: languages::Figures,
}

/// The measurements of one-shot processes (`durable-host run`).
fn one_shot(
    bench: &Bench,
    report: &mut Report,
    full_before: Duration,
    machine: &Machine,
) -> OneShot {
    let sizes = &bench.sizes;
    let (steps_run, empty) = bench.steps(&Scratch::new());
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

    let (resume, empty, recorded) = bench.replay();
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

    let (verifying, verified) = bench.verify(&recorded);
    let verify_rate = verified as f64 / verifying.as_secs_f64();
    report.add(
        "verify",
        &format!("verify of the same {verified}-step history (read-only, nothing runs)"),
        format!("{verify_rate:.0} steps/s"),
        format!(
            "{} for the replay, by verify's own timer; target 50,000 steps/s",
            millis(verifying)
        ),
        json!({
            "steps": verified,
            "steps_per_s": verify_rate,
            "seconds": verifying.as_secs_f64(),
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

    OneShot {
        full,
        rust: languages::Figures {
            step,
            cold,
            warm,
            component_bytes: std::fs::metadata(&artifacts().onboarding).map_or(0, |m| m.len()),
        },
    }
}

/// The same per-step cost and start-up for the guests in other languages,
/// against the Rust guest's in this run.
fn other_languages(bench: &Bench, report: &mut Report, one_shot: &OneShot) {
    let rust = &one_shot.rust;
    let service: &'static _ = Box::leak(Box::new(durable_tests::HttpService::start()));
    let guests = [languages::javascript(service), languages::python()];
    for guest in guests {
        let figures = languages::measure(bench, &guest);
        let key = guest.name.to_lowercase();
        let size = format!("{:.1} MB component", figures.component_bytes as f64 / 1e6);
        report.add(
            &format!("{key}_step"),
            &format!(
                "{} guest: durable step ({} trivial steps, per step)",
                guest.name, bench.sizes.steps
            ),
            micros(figures.step),
            format!(
                "{:.2}x the Rust guest's ({})",
                ratio(figures.step, rust.step),
                micros(rust.step)
            ),
            figures.json(),
        );
        report.add(
            &format!("{key}_start_cold"),
            &format!(
                "{} onboarding run, whole process, cold ({size})",
                guest.name
            ),
            millis(figures.cold),
            format!(
                "{:.1}x the Rust guest's ({})",
                ratio(figures.cold, rust.cold),
                millis(rust.cold)
            ),
            json!({"ms": ms(figures.cold), "ratio_to_rust": ratio(figures.cold, rust.cold)}),
        );
        report.add(
            &format!("{key}_start_warm"),
            &format!("{} onboarding run, whole process, warm", guest.name),
            millis(figures.warm),
            format!(
                "{:.1}x the Rust guest's ({})",
                ratio(figures.warm, rust.warm),
                millis(rust.warm)
            ),
            json!({"ms": ms(figures.warm), "ratio_to_rust": ratio(figures.warm, rust.warm)}),
        );
    }
}

/// The measurements of `durable-host serve` (see [`serve`]), compared with
/// the FULL commit baseline `full` (and, for the lone workflow's steps, with
/// the baseline taken again around them).
fn serve_measurements(bench: &Bench, report: &mut Report, full: Duration) {
    let sizes = &bench.sizes;
    let cache = bench.cache.path();
    serve::warm_up(cache);

    let before = raw_commit(sizes.commits, "FULL");
    let (step, cpu, stopped) =
        serve::lone_workflow(&Scratch::new(), cache, sizes.steps, sizes.repeats);
    let around = (before + raw_commit(sizes.commits, "FULL")) / 2;
    report.add(
        "serve_lone_step",
        &format!(
            "serve: a lone workflow of {} trivial steps, per step",
            sizes.steps
        ),
        micros(step),
        format!(
            "{:.2}x of a FULL commit (taken before and after: {}); {} flushed commits per step",
            ratio(step, around),
            micros(around),
            stopped
                .per(
                    "flushed_commits",
                    sizes.steps as usize * sizes.repeats as usize
                )
                .map_or("?".into(), |n| format!("{n:.2}"))
        ),
        json!({
            "steps": sizes.steps,
            "workflows": sizes.repeats,
            "us": us(step),
            "baseline_full_us": us(around),
            "ratio_to_full": ratio(step, around),
            "server": stopped.json(),
            "server_cpu": cpu.json(),
        }),
    );

    let mut submissions = None;
    for (items, count) in [(1, sizes.serve_single), (10, sizes.serve_ten)] {
        for concurrency in [16, 64] {
            let run = serve::throughput(&Scratch::new(), cache, items, count, concurrency, 1);
            let per_workflow = Duration::from_secs_f64(1.0 / run.rate());
            let flushed = run.stopped.per("flushed_commits", count);
            let commits = run.stopped.per("commits", count);
            let kind = if items == 1 { "single" } else { "ten" };
            report.add(
                &format!("serve_{kind}_step_c{concurrency}"),
                &format!(
                    "serve: {count} workflows of {items} step(s), --concurrency {concurrency}"
                ),
                format!("{:.0} workflows/s", run.rate()),
                format!(
                    "{} per workflow, {:.2}x a FULL commit; {} flushed commits per workflow \
                     ({} commits); {:.0}/s after start-up ({}); {:.2} cores busy, \
                     writer thread {:.0}%",
                    micros(per_workflow),
                    ratio(per_workflow, full),
                    flushed.map_or("?".into(), |n| format!("{n:.3}")),
                    commits.map_or("?".into(), |n| format!("{n:.2}")),
                    run.running_rate(),
                    millis(run.startup),
                    run.cpu.total / run.wall.as_secs_f64(),
                    100.0 * run.cpu.of("group-commit") / run.wall.as_secs_f64(),
                ),
                json!({
                    "workflows": count,
                    "steps": items,
                    "concurrency": concurrency,
                    "workflows_per_s": run.rate(),
                    "workflows_per_s_after_startup": run.running_rate(),
                    "wall_ms": ms(run.wall),
                    "startup_ms": ms(run.startup),
                    "us_per_workflow": us(per_workflow),
                    "ratio_to_full": ratio(per_workflow, full),
                    "flushed_commits_per_workflow": flushed,
                    "commits_per_workflow": commits,
                    "server": run.stopped.json(),
                    "server_cpu": run.cpu.json(),
                    "cores_busy": run.cpu.total / run.wall.as_secs_f64(),
                    "us_cpu_per_workflow": run.cpu.total * 1e6 / count as f64,
                }),
            );
            if submissions.is_none() {
                submissions = Some(run);
            }
        }
    }
    let run = submissions.expect("a throughput run");
    let per_submission = run.submit / run.workflows as u32;
    let flushed = run.submit_stopped.per("flushed_commits", run.workflows);
    report.add(
        "serve_http_submissions",
        &format!(
            "serve: {} submissions over HTTP ({} client threads, keep-alive), nothing running",
            run.workflows,
            serve::CLIENT_THREADS
        ),
        format!("{:.0} submissions/s", run.submit_rate()),
        format!(
            "{} each, {:.2}x a FULL commit; {} flushed commits per submission",
            micros(per_submission),
            ratio(per_submission, full),
            flushed.map_or("?".into(), |n| format!("{n:.3}"))
        ),
        json!({
            "submissions": run.workflows,
            "client_threads": serve::CLIENT_THREADS,
            "submissions_per_s": run.submit_rate(),
            "us_per_submission": us(per_submission),
            "ratio_to_full": ratio(per_submission, full),
            "flushed_commits_per_submission": flushed,
            "server": run.submit_stopped.json(),
        }),
    );

    let nap_ms = 6_000;
    let sleep = serve::sleepers(cache, sizes.sleepers, sizes.nappers, nap_ms);
    let submit_rate = sleep.sleepers as f64 / sleep.submit.as_secs_f64();
    report.add(
        "serve_http_submissions_running",
        &format!(
            "serve: {} submissions over HTTP while running them (each sleeps after a step)",
            sleep.sleepers
        ),
        format!("{submit_rate:.0} submissions/s"),
        format!("{} each", micros(sleep.submit / sleep.sleepers as u32)),
        json!({
            "submissions": sleep.sleepers,
            "client_threads": serve::CLIENT_THREADS,
            "submissions_per_s": submit_rate,
        }),
    );
    let (control_rss_kb, control_hwm_kb) = serve::completed_rss(cache, sizes.sleepers);
    let mib = |kb: u64| kb as f64 / 1024.0;
    report.add(
        "serve_sleeping_memory",
        &format!("serve: RSS with {} workflows sleeping", sleep.sleepers),
        format!("{:.1} MiB", mib(sleep.rss_kb)),
        format!(
            "idle before: {:.1} MiB; peak {:.1} MiB; {} threads (idle: {}); \
             {} database connections; as many run to completion instead: {:.1} MiB \
             (peak {:.1} MiB)",
            mib(sleep.idle_rss_kb),
            mib(sleep.hwm_kb),
            sleep.threads,
            sleep.idle_threads,
            sleep.connections,
            mib(control_rss_kb),
            mib(control_hwm_kb)
        ),
        json!({
            "sleepers": sleep.sleepers,
            "rss_mib": mib(sleep.rss_kb),
            "peak_rss_mib": mib(sleep.hwm_kb),
            "idle_rss_mib": mib(sleep.idle_rss_kb),
            "threads": sleep.threads,
            "idle_threads": sleep.idle_threads,
            "database_connections": sleep.connections,
            "completed_instead_rss_mib": mib(control_rss_kb),
            "completed_instead_peak_rss_mib": mib(control_hwm_kb),
        }),
    );
    let late = &sleep.lateness_ms;
    let resume = &sleep.resume_ms;
    report.add(
        "serve_timer_lateness",
        &format!(
            "serve: {} sleeps of {} s among them, next step's end - wake time",
            sleep.nappers,
            nap_ms / 1000
        ),
        format!(
            "p50 {} ms, p99 {} ms",
            serve::percentile(late, 0.5),
            serve::percentile(late, 0.99)
        ),
        format!(
            "max {} ms; next step's start - wake time: p50 {} ms, p99 {} ms",
            late.last().copied().unwrap_or(0),
            serve::percentile(resume, 0.5),
            serve::percentile(resume, 0.99)
        ),
        json!({
            "workflows": sleep.nappers,
            "sleep_ms": nap_ms,
            "among_sleepers": sleep.sleepers,
            "lateness_p50_ms": serve::percentile(late, 0.5),
            "lateness_p99_ms": serve::percentile(late, 0.99),
            "lateness_max_ms": late.last().copied().unwrap_or(0),
            "resume_p50_ms": serve::percentile(resume, 0.5),
            "resume_p99_ms": serve::percentile(resume, 0.99),
            "server": sleep.stopped.json(),
        }),
    );

    let signals = serve::signal_latency(cache, sizes.signalled);
    let (taken, done) = (&signals.taken_ms, &signals.done_ms);
    report.add(
        "serve_signal_latency",
        &format!(
            "serve: {} workflows waiting (unloaded) for a signal, sent one at a time over HTTP; \
             signal sent - its wait's step recorded",
            signals.workflows
        ),
        format!(
            "p50 {} ms, p99 {} ms",
            serve::percentile(taken, 0.5),
            serve::percentile(taken, 0.99)
        ),
        format!(
            "max {} ms; to the step after the wait recorded: p50 {} ms, p99 {} ms; \
             --poll-interval 50ms",
            taken.last().copied().unwrap_or(0),
            serve::percentile(done, 0.5),
            serve::percentile(done, 0.99)
        ),
        json!({
            "workflows": signals.workflows,
            "taken_p50_ms": serve::percentile(taken, 0.5),
            "taken_p99_ms": serve::percentile(taken, 0.99),
            "taken_max_ms": taken.last().copied().unwrap_or(0),
            "next_step_p50_ms": serve::percentile(done, 0.5),
            "next_step_p99_ms": serve::percentile(done, 0.99),
            "server": signals.stopped.json(),
        }),
    );

    let (steps, step_ms) = (5, 100);
    let recovery = serve::recovery(cache, sizes.in_flight, steps, step_ms);
    report.add(
        "serve_kill9_recovery",
        &format!(
            "serve: kill -9 with {} workflows in flight ({steps} steps of {step_ms} ms), restart at once",
            recovery.workflows
        ),
        format!(
            "{} to all completed",
            millis(recovery.completed)
        ),
        format!(
            "all taken over after {}; {} running at the kill, {} steps of {} done; \
             least possible {}",
            millis(recovery.resumed),
            recovery.running_at_kill,
            recovery.steps_done_at_kill,
            recovery.workflows * steps as usize,
            millis(recovery.ideal)
        ),
        json!({
            "workflows": recovery.workflows,
            "steps": steps,
            "step_ms": step_ms,
            "running_at_kill": recovery.running_at_kill,
            "completed_at_kill": recovery.completed_at_kill,
            "steps_done_at_kill": recovery.steps_done_at_kill,
            "restart_delay_ms": ms(recovery.restart_delay),
            "resumed_ms": ms(recovery.resumed),
            "completed_ms": ms(recovery.completed),
            "least_possible_ms": ms(recovery.ideal),
            "taken_over": recovery.taken_over,
            "server": recovery.stopped.json(),
        }),
    );
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
    pub(crate) sizes: Sizes,
    /// Compiled-component cache for every run but the start-up ones, warmed
    /// at once, so that no measurement pays for a compilation by accident
    /// (and the user's own cache is left alone).
    pub(crate) cache: tempfile::TempDir,
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
    /// (per step: the difference over N), on `scratch`'s database.
    fn steps(&self, scratch: &Scratch) -> (Duration, Duration) {
        let empty = self.empty_run(scratch);
        let steps = best(self.sizes.repeats, |i| {
            let (elapsed, code) =
                self.run_steps(scratch, &format!("steps-{i}"), self.sizes.steps, &[]);
            assert_eq!(code, Some(0));
            elapsed
        });
        (steps, empty)
    }

    /// Best time to resume a history of `replay` completed steps whose
    /// workflow is still running (its process died right after the last
    /// checkpoint), each resume on a copy of the recorded database; and the
    /// best time of an empty run, to subtract.
    fn replay(&self) -> (Duration, Duration, Scratch) {
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
            // Without grants: the copy's scratch directories are not the
            // ones the workflow was started with, and a run that names
            // other grants is refused; the recorded ones are used.
            let input = json!({"scenario": "steps", "items": n});
            let (elapsed, code) = time(
                Command::new(&artifacts().host)
                    .current_dir(copy.path())
                    .arg("run")
                    .arg(&artifacts().scenarios)
                    .args(["--workflow-id", "history", "--input", &input.to_string()])
                    .arg("--db")
                    .arg(copy.db())
                    .arg("--cache-dir")
                    .arg(self.cache.path())
                    .arg("--json")
                    .stdin(std::process::Stdio::null()),
            );
            assert_eq!(code, Some(0), "the resumed run should complete");
            elapsed
        });
        (resume, empty, recorded)
    }

    /// `durable-host verify` of the scenarios component against the
    /// recorded history: the best of its own timer (the replays, after the
    /// component is loaded), with the steps it verified.
    fn verify(&self, recorded: &Scratch) -> (Duration, u64) {
        let mut verified = 0;
        let best = best(self.sizes.repeats, |_| {
            let output = Command::new(&artifacts().host)
                .current_dir(recorded.path())
                .arg("verify")
                .arg(&artifacts().scenarios)
                .arg("--db")
                .arg(recorded.db())
                .arg("--cache-dir")
                .arg(self.cache.path())
                .arg("--json")
                .stdin(std::process::Stdio::null())
                .output()
                .unwrap();
            assert!(
                output.status.success(),
                "verify should find the history compatible"
            );
            let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
            verified = report["summary"]["recorded_steps"].as_u64().unwrap();
            Duration::from_secs_f64(report["seconds"].as_f64().unwrap())
        });
        (best, verified)
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
