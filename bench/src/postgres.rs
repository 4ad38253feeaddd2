//! The PostgreSQL backend (`--db postgres://...`), against its own
//! physical limit and beside SQLite, in the same run.
//!
//! As for SQLite, a durable step cannot be cheaper than the commit that
//! makes it durable, so the baseline is a raw commit on the same server: one
//! connection (the `postgres` crate, as the host's) running `BEGIN; INSERT
//! one small row; COMMIT` in a schema of its own, with the server's
//! `synchronous_commit` (on by default). The server's WAL flush drifts as
//! fsync does (by 15% within a run here), so a batch of these commits is
//! taken right before each measurement it is compared with. Then, through
//! the real binary:
//!
//! - per-step cost of N trivial steps in `durable-host run` (a run of N
//!   minus a run of none, as [`Bench::steps`] measures SQLite's), each run
//!   paired with the batch before it; the pair with the median ratio is
//!   reported, with the range ([`paired_steps`]). Each pair also times the
//!   same N steps' writes through the host's own store with no guest
//!   ([`store_steps`]), which splits a step's cost into the database's
//!   share and the host's on the machine measured. And of a lone workflow
//!   inside `serve` ([`serve::lone_workflow`]), against the mean of the
//!   batches just before and after it (the target: at most 1.5x);
//! - workflows per second with 1, 2 and 4 `serve` workers on one database,
//!   PostgreSQL beside SQLite (several `serve` on one SQLite file work too):
//!   the workflows are queued first, then timed from the first worker's
//!   start to the last completion ([`serve::throughput`]);
//! - takeover: three workers with a short lease, one killed with SIGKILL
//!   while every workflow is in flight, and the time until the survivors
//!   claimed all of its workflows. Once as on one machine, where a survivor
//!   sees the dead owner's pid gone and need not wait; once as another host
//!   sees it: the victim runs in a pid namespace of its own (`unshare`, as
//!   root), so its death cannot be proven and only its lease's expiry
//!   speaks.
//!
//! Every measurement has a schema of its own in the database
//! `DURABLE_TEST_POSTGRES_URL` names (default: the local server; see
//! `durable_tests::backend`). When no server answers there, the section is
//! skipped and the table says so.

use std::process::Command;
use std::time::{Duration, Instant};

use durable_host::engine::this_process;
use durable_host::store::{
    CheckpointStore, Claim, NewWorkflow, PostgresStore, StepBegin, StepKey, now_millis,
};
use durable_tests::{Scratch, backend};
use postgres::NoTls;
use serde_json::{Value, json};

use crate::serve::{self, Db, Server};
use crate::{Bench, Report, WORKFLOW_STEPS, micros, millis, ms, ratio, us};

/// Workers at a time in the workflows-per-second measurement, and each
/// one's `--concurrency`.
const WORKERS: [usize; 3] = [1, 2, 4];
const WORKER_CONCURRENCY: usize = 16;
/// The lease of the takeover measurement (`--stale-after`).
const LEASE: Duration = Duration::from_secs(3);
/// Steps of each workflow in flight at the kill, and each step's sleep:
/// long enough that none ends before every one has been taken over.
const TAKEOVER_STEPS: u32 = 60;
const TAKEOVER_STEP_MS: u64 = 200;
/// A process whose death no other process can prove: in its own pid
/// namespace (with its own /proc), killed with `unshare` itself.
const UNSHARE_PID: &[&str] = &["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"];

/// The server measured, as the machine line shows it.
pub struct PgServer {
    pub address: String,
    pub version: String,
    pub synchronous_commit: String,
    pub fsync: String,
}

impl PgServer {
    pub fn describe(&self) -> String {
        format!(
            "PostgreSQL {} at {} (synchronous_commit={}, fsync={})",
            self.version, self.address, self.synchronous_commit, self.fsync
        )
    }

    pub fn json(&self) -> Value {
        json!({
            "address": self.address,
            "version": self.version,
            "synchronous_commit": self.synchronous_commit,
            "fsync": self.fsync,
        })
    }
}

/// The server at `DURABLE_TEST_POSTGRES_URL`, if one answers within a
/// few seconds.
fn probe() -> Result<PgServer, String> {
    let mut config: postgres::Config = backend::postgres_url()
        .parse()
        .map_err(|e| format!("not a PostgreSQL URL: {e}"))?;
    config.connect_timeout(Duration::from_secs(3));
    let mut client = config.connect(NoTls).map_err(|e| {
        // The client's own message ("error connecting to server") hides why.
        let mut message = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            message.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        message
    })?;
    let mut setting = |name: &str| -> Result<String, String> {
        client
            .query_one("SELECT current_setting($1)", &[&name])
            .map(|row| row.get(0))
            .map_err(|e| e.to_string())
    };
    Ok(PgServer {
        address: backend::postgres_address(),
        version: setting("server_version")?,
        synchronous_commit: setting("synchronous_commit")?,
        fsync: setting("fsync")?,
    })
}

/// The PostgreSQL measurements (see the module's doc), or a loud row saying
/// why there are none; the server measured.
pub fn measurements(bench: &Bench, report: &mut Report) -> Option<PgServer> {
    let server = match probe() {
        Ok(server) => server,
        Err(error) => {
            let address = backend::postgres_address();
            eprintln!(
                "\n  !!! PostgreSQL NOT MEASURED: no server answers at {address}: {error}\n  \
                 !!! start one, or point DURABLE_TEST_POSTGRES_URL at one\n"
            );
            report.add(
                "postgres",
                "**PostgreSQL: NOT MEASURED**",
                "skipped".into(),
                format!("no server answers at {address}: {error}"),
                json!({"skipped": error, "address": address}),
            );
            return None;
        }
    };
    eprintln!("  on {}:", server.describe());
    let sizes = &bench.sizes;
    let cache = bench.cache.path();
    serve::warm_up(cache);

    let paired = paired_steps(bench, &Scratch::on_postgres_schema());
    let before = raw_commit(sizes.commits);
    let (lone, lone_cpu, lone_stopped) = serve::lone_workflow(
        &Scratch::on_postgres_schema(),
        cache,
        sizes.steps,
        sizes.repeats,
    );
    let after = raw_commit(sizes.commits);
    let commit = (before + after) / 2;
    let batches: Vec<String> = paired.pairs.iter().map(|p| micros(p.commit)).collect();
    report.add(
        "pg_baseline_commit",
        &format!(
            "raw PostgreSQL commit, BEGIN; INSERT; COMMIT on one connection (baseline: a \
             batch before each measurement; before the step runs {}, around serve {} and {})",
            batches.join(", "),
            micros(before),
            micros(after)
        ),
        micros(paired.median().commit),
        "1.00x".into(),
        json!({
            "us": us(paired.median().commit),
            "before_step_runs_us": paired.pairs.iter().map(|p| us(p.commit)).collect::<Vec<_>>(),
            "before_serve_us": us(before),
            "after_serve_us": us(after),
            "commits": sizes.commits,
        }),
    );
    let median = paired.median();
    let (low, high) = paired.range();
    report.add(
        "pg_step",
        &format!(
            "PostgreSQL: durable step ({} trivial steps, per step; the median of {} runs, each \
             against the commit batch before it)",
            sizes.steps,
            paired.pairs.len()
        ),
        micros(median.step),
        format!(
            "{:.2}x of a raw PostgreSQL commit (target: at most 1.5x); {low:.2}x-{high:.2}x \
             over the runs",
            median.ratio()
        ),
        json!({
            "steps": sizes.steps,
            "us": us(median.step),
            "empty_run_ms": ms(paired.empty),
            "baseline_commit_us": us(median.commit),
            "ratio_to_commit": median.ratio(),
            "ratios": paired.pairs.iter().map(Pair::ratio).collect::<Vec<_>>(),
        }),
    );
    let host = median.step.saturating_sub(median.store);
    report.add(
        "pg_store_step",
        "PostgreSQL: the store alone, the same steps' writes (the fenced running mark, the \
         result) through the host's PostgresStore with no guest, in the median run's pair",
        micros(median.store),
        format!(
            "{:.2}x of the raw commit: the database's share of the step; the rest, {} (the \
             guest, its bindings, the engine), is {:.2}x",
            ratio(median.store, median.commit),
            micros(host),
            ratio(host, median.commit)
        ),
        json!({
            "steps": sizes.steps,
            "us": us(median.store),
            "baseline_commit_us": us(median.commit),
            "ratio_to_commit": ratio(median.store, median.commit),
            "host_us": us(host),
            "ratios": paired.pairs.iter().map(|p| ratio(p.store, p.commit)).collect::<Vec<_>>(),
        }),
    );
    report.add(
        "pg_serve_lone_step",
        &format!(
            "PostgreSQL: serve, a lone workflow of {} trivial steps, per step",
            sizes.steps
        ),
        micros(lone),
        {
            let per_step = |field| {
                lone_stopped
                    .per(field, sizes.steps as usize * sizes.repeats as usize)
                    .map_or("?".into(), |n| format!("{n:.2}"))
            };
            format!(
                "{:.2}x of a raw PostgreSQL commit; {} commits per step, {} of them flushed",
                ratio(lone, commit),
                per_step("commits"),
                per_step("flushed_commits")
            )
        },
        json!({
            "steps": sizes.steps,
            "workflows": sizes.repeats,
            "us": us(lone),
            "baseline_commit_us": us(commit),
            "ratio_to_commit": ratio(lone, commit),
            "server": lone_stopped.json(),
            "server_cpu": lone_cpu.json(),
        }),
    );

    let count = sizes.pg_workflows;
    for workers in WORKERS {
        let throughput = |scratch: Scratch| {
            serve::throughput(
                &scratch,
                cache,
                WORKFLOW_STEPS,
                count,
                WORKER_CONCURRENCY,
                workers,
            )
        };
        let sqlite = throughput(Scratch::new());
        let pg = throughput(Scratch::on_postgres_schema());
        let busy = |run: &serve::Throughput| run.cpu.total / run.wall.as_secs_f64();
        // More than one when workers open the same workflow and all but
        // one of them find it claimed, or finished, already (`lost`).
        let starts = |run: &serve::Throughput| {
            let stopped = &run.stopped;
            let opened = stopped.get("started").zip(stopped.get("lost"));
            opened.map_or("?".into(), |(started, lost)| {
                format!("{:.2}", (started + lost) as f64 / count as f64)
            })
        };
        report.add(
            &format!("pg_workflows_{workers}_workers"),
            &format!(
                "{count} workflows of {WORKFLOW_STEPS} steps, {workers} serve worker(s) \
                 (--concurrency {WORKER_CONCURRENCY} each): PostgreSQL vs SQLite"
            ),
            format!("{:.0} vs {:.0} workflows/s", pg.rate(), sqlite.rate()),
            format!(
                "PostgreSQL at {:.2}x SQLite's rate; {:.0} vs {:.0}/s after start-up; \
                 workers' CPU {:.2} vs {:.2} cores (PostgreSQL's own not counted); \
                 runs started per workflow {} vs {}",
                pg.rate() / sqlite.rate(),
                pg.running_rate(),
                sqlite.running_rate(),
                busy(&pg),
                busy(&sqlite),
                starts(&pg),
                starts(&sqlite),
            ),
            json!({
                "workflows": count,
                "steps": WORKFLOW_STEPS,
                "workers": workers,
                "concurrency_per_worker": WORKER_CONCURRENCY,
                "postgres": throughput_json(&pg),
                "sqlite": throughput_json(&sqlite),
                "ratio_postgres_to_sqlite": pg.rate() / sqlite.rate(),
            }),
        );
    }

    let in_flight = sizes.takeover_in_flight;
    for other_host in [false, true] {
        let (key, how) = if other_host {
            (
                "pg_takeover_other_host",
                "as another host sees it: the victim in its own pid namespace, only its lease \
                 speaks",
            )
        } else {
            (
                "pg_takeover_same_host",
                "on one machine: the survivors see the victim's pid gone",
            )
        };
        if other_host && !can_unshare() {
            report.add(
                key,
                &format!("PostgreSQL: takeover {how}"),
                "skipped".into(),
                "`unshare --pid --fork --mount-proc` fails here (it needs root)".into(),
                json!({"skipped": "unshare --pid failed"}),
            );
            continue;
        }
        let took = takeover(cache, in_flight, other_host);
        report.add(
            key,
            &format!(
                "PostgreSQL: 3 workers, --stale-after {} s, one killed with SIGKILL with {} \
                 workflows in flight ({TAKEOVER_STEPS} steps of {TAKEOVER_STEP_MS} ms); \
                 takeover {how}",
                LEASE.as_secs(),
                took.owned
            ),
            format!("{} to all taken over", millis(took.all)),
            format!(
                "{:.2}x the lease; first after {}; the lease had {} left at the kill; \
                 survivors poll every 1 s (serve's default on PostgreSQL)",
                ratio(took.all, LEASE),
                millis(took.first),
                millis(took.lease_left)
            ),
            json!({
                "lease_ms": ms(LEASE),
                "workflows_of_victim": took.owned,
                "workflows_in_flight": 3 * in_flight,
                "first_ms": ms(took.first),
                "all_ms": ms(took.all),
                "ratio_to_lease": ratio(took.all, LEASE),
                "lease_left_at_kill_ms": ms(took.lease_left),
                "takeovers_recorded": took.takeovers,
                "taking_over_logged": took.logged,
            }),
        );
    }
    Some(server)
}

fn throughput_json(run: &serve::Throughput) -> Value {
    json!({
        "workflows_per_s": run.rate(),
        "workflows_per_s_after_startup": run.running_rate(),
        "wall_ms": ms(run.wall),
        "startup_ms": ms(run.startup),
        "submissions_per_s": run.submit_rate(),
        "servers": run.stopped.json(),
        "servers_cpu": run.cpu.json(),
        "cores_busy": run.cpu.total / run.wall.as_secs_f64(),
    })
}

/// A step run and the commit batch taken just before it.
#[derive(Clone, Copy)]
struct Pair {
    /// Per step: the run's time less an empty run's, over its steps.
    step: Duration,
    commit: Duration,
    /// Per step: the same steps' writes through the store alone, taken
    /// between the batch and the run.
    store: Duration,
}

impl Pair {
    fn ratio(&self) -> f64 {
        ratio(self.step, self.commit)
    }
}

/// The step runs under `run`, by ratio to their commit batch.
struct PairedSteps {
    pairs: Vec<Pair>,
    /// The best empty run, subtracted from each.
    empty: Duration,
}

impl PairedSteps {
    fn median(&self) -> Pair {
        self.pairs[self.pairs.len() / 2]
    }

    fn range(&self) -> (f64, f64) {
        (
            self.pairs[0].ratio(),
            self.pairs[self.pairs.len() - 1].ratio(),
        )
    }
}

/// Runs of N trivial steps under `run` on `scratch`'s database, each right
/// after a batch of raw commits: a drift of the machine or the server (a
/// checkpoint, the disk) weighs on both sides of a pair.
fn paired_steps(bench: &Bench, scratch: &Scratch) -> PairedSteps {
    let sizes = &bench.sizes;
    let empty = bench.empty_run(scratch);
    let mut pairs: Vec<Pair> = (0..sizes.repeats)
        .map(|i| {
            let commit = raw_commit(sizes.commits);
            let store = store_steps(sizes.steps);
            let (elapsed, code) = bench.run_steps(scratch, &format!("steps-{i}"), sizes.steps, &[]);
            assert_eq!(code, Some(0));
            Pair {
                step: elapsed.saturating_sub(empty) / sizes.steps,
                commit,
                store,
            }
        })
        .collect();
    pairs.sort_by(|a, b| a.ratio().total_cmp(&b.ratio()));
    PairedSteps { pairs, empty }
}

/// Mean time of one `BEGIN; INSERT one small row; COMMIT` on one
/// connection, in a new schema (a new table).
fn raw_commit(commits: u32) -> Duration {
    let schema = backend::PgSchema::create();
    let mut client = schema.client();
    client
        .batch_execute(
            "CREATE TABLE rows (id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                                key TEXT NOT NULL, value TEXT NOT NULL)",
        )
        .unwrap();
    let insert = client
        .prepare("INSERT INTO rows (key, value) VALUES ($1, $2)")
        .unwrap();
    let started = Instant::now();
    for i in 0..commits {
        client.batch_execute("BEGIN").unwrap();
        client
            .execute(&insert, &[&format!("s#{i:06}"), &i.to_string()])
            .unwrap();
        client.batch_execute("COMMIT").unwrap();
    }
    started.elapsed() / commits
}

/// Per step, what `durable-host run` writes for `steps` trivial steps,
/// through the host's own [`PostgresStore`] with no guest and no engine:
/// each step's fenced `running` mark (`begin_steps`) and its result
/// (`finish_step`), on a workflow of a new schema that this process owns.
fn store_steps(steps: u32) -> Duration {
    const ID: &str = "store-steps";
    const RUN: &str = "bench-run";
    let schema = backend::PgSchema::create();
    let store = PostgresStore::open(&schema.url()).expect("open the store");
    let owner = this_process();
    let claim = Claim {
        run_id: RUN,
        owner: &owner,
        lease_until: now_millis() + 3_600_000,
    };
    store
        .create_workflow(&NewWorkflow {
            id: ID,
            component_sha256: "bench",
            input: "null",
            claim: &claim,
            grants: None,
            component: Some(b"\0asm"),
        })
        .expect("create the workflow");
    let value = Ok("0".to_owned());
    let started = Instant::now();
    for sequence in 1..=steps {
        let key = StepKey::new("s", sequence);
        let begin = StepBegin {
            key: &key,
            sequence,
            name: "s",
            attempt: 1,
            run_id: RUN,
            started_at: now_millis(),
            input_fingerprint: None,
        };
        store
            .begin_steps(ID, &[begin])
            .expect("mark the step running");
        store
            .finish_step(ID, RUN, &key, &value, &[], None)
            .expect("record the step");
    }
    started.elapsed() / steps
}

/// Whether this process may run one in a pid namespace of its own.
fn can_unshare() -> bool {
    Command::new(UNSHARE_PID[0])
        .args(&UNSHARE_PID[1..])
        .arg("true")
        .output()
        .is_ok_and(|output| output.status.success())
}

/// What [`takeover`] measured, from the kill.
struct Takeover {
    /// Workflows the victim owned at the kill.
    owned: i64,
    /// The latest lease of those, then.
    lease_left: Duration,
    /// Until the first and the last of them was claimed by a survivor.
    first: Duration,
    all: Duration,
    /// Takeovers recorded, and `taking over` lines the survivors logged.
    takeovers: i64,
    logged: usize,
}

/// `3 * in_flight` long workflows on PostgreSQL: a victim `serve
/// --concurrency in_flight` takes its share first, two survivors with room
/// for it too (`--concurrency 2 * in_flight`, so that only noticing the
/// death counts) take the rest; once all run, the victim gets SIGKILL, and
/// the times until the survivors claimed its workflows are read from their
/// `takeover` events. With `other_host`, the victim runs in a pid namespace
/// of its own.
fn takeover(cache: &std::path::Path, in_flight: usize, other_host: bool) -> Takeover {
    let scratch = Scratch::on_postgres_schema();
    serve::deploy(&scratch, cache);
    let input = json!({"scenario": "slow", "items": TAKEOVER_STEPS, "sleep_ms": TAKEOVER_STEP_MS});
    serve::queue_over_http(
        &scratch,
        cache,
        &serve::workflows("slow-", 3 * in_flight, &input),
    );
    let db = Db::open(&scratch);
    let lease = format!("{}s", LEASE.as_secs());
    let worker = |prefix: &[&str], name: &str, concurrency: usize| {
        let concurrency = concurrency.to_string();
        let args = ["--concurrency", &concurrency, "--stale-after", &lease];
        Server::start_under(prefix, &scratch, cache, name, &args)
    };
    let prefix = if other_host { UNSHARE_PID } else { &[] };
    let mut victim = worker(prefix, "victim", in_flight);
    db.wait_count("running", in_flight, &victim);
    let survivors: Vec<Server> = (0..2)
        .map(|n| worker(&[], &format!("survivor-{n}"), 2 * in_flight))
        .collect();
    db.wait_count("running", 3 * in_flight, &survivors[0]);
    // The victim's: owned by no survivor (in its own namespace, its pid
    // is another number than the one this process knows).
    let victims = format!(
        "FROM workflows WHERE status = 'running' AND owner_pid NOT IN ({}, {})",
        survivors[0].pid(),
        survivors[1].pid()
    );
    let owned = db.number(&format!("SELECT count(*) {victims}"));
    let lease_until = db.number(&format!("SELECT max(lease_expires_at) {victims}"));
    victim.kill9();
    let killed_ms = serve::now_ms();
    let deadline = Instant::now() + serve::PATIENCE;
    let events = "FROM workflow_events WHERE kind = 'takeover'";
    while db.number(&format!("SELECT count(*) {events}")) < owned {
        assert!(
            Instant::now() < deadline,
            "the survivors never took over the victim's {owned} workflows:\n{}",
            serve::tail(&survivors[0].log(), 20)
        );
        std::thread::sleep(serve::POLL);
    }
    let row = &db.rows(&format!("SELECT min(at), max(at), count(*) {events}"))[0];
    let logged = survivors
        .iter()
        .map(|s| s.log().matches("taking over").count())
        .sum();
    for survivor in survivors {
        survivor.stop();
    }
    Takeover {
        owned,
        lease_left: serve::millis_between(killed_ms, lease_until),
        first: serve::millis_between(killed_ms, row[0]),
        all: serve::millis_between(killed_ms, row[1]),
        takeovers: row[2],
        logged,
    }
}
