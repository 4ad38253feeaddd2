//! Measurements of `durable-host serve`, driven as users drive it: the
//! scenarios guest deployed into the database, workflows submitted over the
//! HTTP API (`POST /v1/workflows`, a few client threads on keep-alive
//! connections) or with `durable-host start`, and `serve` processes started,
//! stopped with SIGTERM or killed with SIGKILL. What happened is read back
//! from the scratch's database (SQLite, opened read-only, or PostgreSQL)
//! and from `serve`'s log, whose last line
//! (`stopped ... writes=N commits=N flushed_commits=N`) says how many
//! commits the run's writes shared and how many of those were flushed.
//!
//! - throughput: N workflows queued before `serve` starts (through a first
//!   `serve --concurrency 0`, which runs nothing: its API only queues),
//!   then the time from starting `serve` (one, or several workers on one
//!   database) to the last completion, the flushed commits per workflow,
//!   and the servers' CPU time by thread (from `/proc`: how many cores
//!   were busy, how busy the writer was);
//! - submissions per second over HTTP, measured while queuing those;
//! - per-step cost of a lone long workflow inside `serve`;
//! - memory of many sleeping workflows (and, as a control, of a server
//!   that ran as many to completion), and the lateness of timers;
//! - how soon a workflow waiting (unloaded) for a signal takes it;
//! - recovery after `kill -9` of a `serve` with many workflows in flight.
//!
//! Every server uses the bench's compiled-component cache, filled first by
//! one `serve` run ([`warm_up`]), so that no measured server compiles.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use durable_tests::{Scratch, artifacts, backend};
use serde_json::{Value, json};

/// The name the scenarios guest is deployed under.
const DEPLOYMENT: &str = "scenarios";
/// Client threads submitting over HTTP, each with its own keep-alive
/// connection.
pub const CLIENT_THREADS: usize = 8;
/// The longest any wait of this module may take before the bench gives up.
pub const PATIENCE: Duration = Duration::from_secs(300);
/// How often the database is polled while waiting.
pub const POLL: Duration = Duration::from_millis(5);

/// A `durable-host serve` process on a scratch database, logging (at info)
/// to a file. Killed when dropped, so that a failing bench leaves no server
/// behind.
pub struct Server {
    child: Child,
    log: PathBuf,
    /// When the process was started (wall clock, for the database's times).
    pub spawned_ms: i64,
}

impl Server {
    /// `durable-host serve --db <scratch db> <args> --cache-dir <cache>`.
    pub fn start(scratch: &Scratch, cache: &Path, name: &str, args: &[&str]) -> Self {
        Self::start_under(&[], scratch, cache, name, args)
    }

    /// [`Self::start`] run by `prefix` (`unshare ...`, which then is the
    /// process [`Self::pid`] names and [`Self::kill9`] kills), if any.
    pub fn start_under(
        prefix: &[&str],
        scratch: &Scratch,
        cache: &Path,
        name: &str,
        args: &[&str],
    ) -> Self {
        let log = scratch.path().join(format!("{name}.log"));
        let mut serve = scratch.host(&["serve"]);
        serve.args(args).arg("--cache-dir").arg(cache);
        let mut command = match prefix.split_first() {
            None => serve,
            Some((program, prefix_args)) => {
                let mut wrapped = Command::new(program);
                wrapped
                    .args(prefix_args)
                    .arg(serve.get_program())
                    .args(serve.get_args())
                    .current_dir(scratch.path());
                wrapped
            }
        };
        let spawned_ms = now_ms();
        let child = command
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).expect("create the server's log"))
            .spawn()
            .expect("start durable-host serve");
        Self {
            child,
            log,
            spawned_ms,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The first log line containing `needle`, once there is one.
    fn wait_log(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(line) = self.log().lines().find(|l| l.contains(needle)) {
                return line.to_owned();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "serve exited ({status}) before logging `{needle}`:\n{}",
                    tail(&self.log(), 20)
                );
            }
            assert!(Instant::now() < deadline, "serve never logged `{needle}`");
            std::thread::sleep(POLL);
        }
    }

    /// Wait until the scheduler runs.
    pub fn wait_serving(&mut self) {
        self.wait_log("serving");
    }

    /// The API's address (`--listen 127.0.0.1:0` lets the system pick the port).
    pub fn api_addr(&mut self) -> String {
        let line = self.wait_log("listening addr=");
        let (_, rest) = line.split_once("listening addr=").unwrap();
        rest.split_whitespace().next().unwrap().to_owned()
    }

    /// SIGTERM, wait for the drain, and the figures of the last log line.
    pub fn stop(mut self) -> Stopped {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {}", self.pid());
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.child.try_wait().unwrap().is_some() {
                break;
            }
            assert!(Instant::now() < deadline, "serve did not stop on SIGTERM");
            std::thread::sleep(POLL);
        }
        Stopped::parse(&self.log())
    }

    /// SIGKILL, and reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// CPU time the process has used so far, in all, and by thread name
    /// (threads that ended are in the total only).
    pub fn cpu(&self) -> Cpu {
        let pid = self.pid();
        let total = read_cpu(&format!("/proc/{pid}/stat")).map_or(0.0, |(_, s)| s);
        let mut threads = BTreeMap::new();
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
            for task in tasks.flatten() {
                if let Some((name, seconds)) = read_cpu(&task.path().join("stat").to_string_lossy())
                {
                    *threads.entry(name).or_insert(0.0) += seconds;
                }
            }
        }
        Cpu { total, threads }
    }

    /// How many files the process has open at `path` (connections to a
    /// database, when `path` is the database file).
    pub fn open_files(&self, path: &Path) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|fds| {
                fds.flatten()
                    .filter(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target == path))
                    .count()
            })
            .unwrap_or(0)
    }

    /// A `kB` or count field of `/proc/PID/status` (`VmRSS`, `VmHWM`, `Threads`).
    pub fn proc_status(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc/PID/status of the server");
        status
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{field}:")))
            .and_then(|value| value.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc/PID/status"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill9();
        }
    }
}

/// The figures of `serve`'s last log line, `stopped started=... writes=N
/// commits=N flushed_commits=N` (those the log has).
#[derive(Debug, Default, Clone)]
pub struct Stopped {
    pub fields: BTreeMap<String, u64>,
}

impl Stopped {
    fn parse(log: &str) -> Self {
        let fields = log
            .lines()
            .rev()
            .find(|line| line.contains("serve: stopped"))
            .map(|line| {
                line.split_whitespace()
                    .filter_map(|token| {
                        let (key, value) = token.split_once('=')?;
                        Some((key.to_owned(), value.parse().ok()?))
                    })
                    .collect()
            })
            .unwrap_or_default();
        Self { fields }
    }

    pub fn get(&self, field: &str) -> Option<u64> {
        self.fields.get(field).copied()
    }

    /// `field` per `per`, when the log has it.
    pub fn per(&self, field: &str, per: usize) -> Option<f64> {
        self.get(field).map(|n| n as f64 / per as f64)
    }

    pub fn json(&self) -> Value {
        json!(self.fields)
    }
}

/// The figures of several servers, added up.
impl std::iter::Sum for Stopped {
    fn sum<I: Iterator<Item = Self>>(servers: I) -> Self {
        let mut fields = BTreeMap::new();
        for server in servers {
            for (key, value) in server.fields {
                *fields.entry(key).or_insert(0) += value;
            }
        }
        Self { fields }
    }
}

/// CPU seconds (user + system) of a process, and of its live threads by name.
#[derive(Debug, Default, Clone)]
pub struct Cpu {
    pub total: f64,
    pub threads: BTreeMap<String, f64>,
}

impl Cpu {
    /// Seconds of threads named `name`.
    pub fn of(&self, name: &str) -> f64 {
        self.threads.get(name).copied().unwrap_or(0.0)
    }

    pub fn json(&self) -> Value {
        json!({"total_s": self.total, "threads_s": self.threads})
    }
}

/// The CPU times of several servers, added up.
impl std::iter::Sum for Cpu {
    fn sum<I: Iterator<Item = Self>>(servers: I) -> Self {
        let mut all = Self::default();
        for server in servers {
            all.total += server.total;
            for (name, seconds) in server.threads {
                *all.threads.entry(name).or_insert(0.0) += seconds;
            }
        }
        all
    }
}

/// `(comm, utime + stime in seconds)` of a `/proc/.../stat` file.
fn read_cpu(path: &str) -> Option<(String, f64)> {
    let stat = std::fs::read_to_string(path).ok()?;
    let (head, rest) = stat.rsplit_once(')')?;
    let name = head.split_once('(')?.1.to_owned();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, utime 14 and stime 15.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some((name, ticks as f64 / clock_ticks()))
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 almost everywhere).
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// A connection to the scratch database (read-only on SQLite), kept open
/// for polling, on either backend.
pub struct Db(RefCell<durable_tests::Connection>);

impl Db {
    pub fn open(scratch: &Scratch) -> Self {
        Self(RefCell::new(
            scratch
                .connect()
                .expect("the database exists once deployed"),
        ))
    }

    /// Rows of `sql`, each as its integers (0 for NULL). On PostgreSQL,
    /// `sum(...)` must be cast to BIGINT.
    pub fn rows(&self, sql: &str) -> Vec<Vec<i64>> {
        self.0
            .borrow_mut()
            .query(sql)
            .iter()
            .map(|row| row.iter().map(backend::integer).collect())
            .collect()
    }

    /// One integer (0 for NULL) from `sql`.
    pub fn number(&self, sql: &str) -> i64 {
        self.rows(sql)
            .first()
            .and_then(|row| row.first().copied())
            .unwrap_or_else(|| panic!("{sql}: no row"))
    }

    pub fn count(&self, status: &str) -> usize {
        self.number(&format!(
            "SELECT count(*) FROM workflows WHERE status = '{status}'"
        )) as usize
    }

    /// Poll until `count(status) >= n`; panics (with the server's log) if a
    /// workflow failed or was suspended, or after [`PATIENCE`].
    pub fn wait_count(&self, status: &str, n: usize, server: &Server) {
        let deadline = Instant::now() + PATIENCE;
        // One query per poll: on PostgreSQL each is a round trip.
        let sql = format!(
            "SELECT CAST(sum(CASE WHEN status = '{status}' THEN 1 ELSE 0 END) AS BIGINT),
                    CAST(sum(CASE WHEN status IN ('failed', 'suspended') THEN 1 ELSE 0 END)
                         AS BIGINT)
             FROM workflows"
        );
        loop {
            let counts = &self.rows(&sql)[0];
            let (done, stuck) = (counts[0] as usize, counts[1]);
            if done >= n {
                return;
            }
            if stuck > 0 || Instant::now() > deadline {
                panic!(
                    "waiting for {n} workflows {status}: {done} are, {stuck} failed or suspended\n{}",
                    tail(&server.log(), 20)
                );
            }
            std::thread::sleep(POLL);
        }
    }
}

/// `durable-host deploy scenarios <scenarios.wasm>` (no grants: the guest's
/// effects ledger is then skipped).
pub fn deploy(scratch: &Scratch, cache: &Path) {
    let output = scratch
        .host(&["deploy", DEPLOYMENT])
        .arg(&artifacts().scenarios)
        .arg("--cache-dir")
        .arg(cache)
        .stdin(Stdio::null())
        .output()
        .expect("run durable-host deploy");
    assert!(
        output.status.success(),
        "deploy failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `durable-host start scenarios --workflow-id ID --input INPUT`.
fn start(scratch: &Scratch, id: &str, input: &Value) {
    let output = scratch
        .host(&[
            "start",
            DEPLOYMENT,
            "--workflow-id",
            id,
            "--input",
            &input.to_string(),
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run durable-host start");
    assert!(
        output.status.success(),
        "start failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Submit every `(id, input)` with `POST /v1/workflows` from
/// [`CLIENT_THREADS`] threads, each on its own keep-alive connection; the
/// time it took. Every answer must be `202 Accepted`.
pub fn submit(addr: &str, workflows: &[(String, Value)]) -> Duration {
    let url = format!("http://{addr}/v1/workflows");
    let chunk = workflows.len().div_ceil(CLIENT_THREADS).max(1);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for part in workflows.chunks(chunk) {
            let url = &url;
            scope.spawn(move || {
                let agent = http_agent();
                for (id, input) in part {
                    let body = json!({"deployment": DEPLOYMENT, "workflow_id": id, "input": input})
                        .to_string();
                    let mut response = agent
                        .post(url)
                        .header("Content-Type", "application/json")
                        .send(body.as_str())
                        .expect("POST /v1/workflows reaches the server");
                    let status = response.status().as_u16();
                    // Read the answer to the end: the connection is reused.
                    let answer = response.body_mut().read_to_string().unwrap_or_default();
                    assert_eq!(status, 202, "POST /v1/workflows {id}: {answer}");
                }
            });
        }
    });
    started.elapsed()
}

/// A `serve --listen 127.0.0.1:0 --concurrency 64` on a new scratch
/// database with the scenarios guest deployed, serving: the scratch, the
/// database (read-only), the server and its API's address.
fn serving(cache: &Path) -> (Scratch, Db, Server, String) {
    let scratch = Scratch::new();
    deploy(&scratch, cache);
    let db = Db::open(&scratch);
    let mut server = Server::start(
        &scratch,
        cache,
        "serve",
        &["--listen", "127.0.0.1:0", "--concurrency", "64"],
    );
    let addr = server.api_addr();
    server.wait_serving();
    (scratch, db, server, addr)
}

/// An HTTP client that hands back every status (the bench checks them).
fn http_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

/// `count` workflows `<prefix><n>` with `input`.
pub fn workflows(prefix: &str, count: usize, input: &Value) -> Vec<(String, Value)> {
    (0..count)
        .map(|n| (format!("{prefix}{n:06}"), input.clone()))
        .collect()
}

/// Queue `workflows` through a `serve --concurrency 0` (its API queues,
/// its scheduler runs nothing); the submission time and that server's
/// figures.
pub fn queue_over_http(
    scratch: &Scratch,
    cache: &Path,
    workflows: &[(String, Value)],
) -> (Duration, Stopped) {
    let mut submitter = Server::start(
        scratch,
        cache,
        "submit",
        &["--listen", "127.0.0.1:0", "--concurrency", "0"],
    );
    let addr = submitter.api_addr();
    submitter.wait_serving();
    let took = submit(&addr, workflows);
    let stopped = submitter.stop();
    let queued = Db::open(scratch).count("queued");
    assert_eq!(queued, workflows.len(), "every submission is queued");
    (took, stopped)
}

/// Run one workflow through `serve`, so that the compiled-component cache
/// holds the component as `serve` compiles it (its engine differs from
/// `run`'s: runs are interruptible).
pub fn warm_up(cache: &Path) {
    let scratch = Scratch::new();
    deploy(&scratch, cache);
    start(
        &scratch,
        "warm-up",
        &json!({"scenario": "steps", "items": 1}),
    );
    let mut server = Server::start(&scratch, cache, "serve", &[]);
    server.wait_serving();
    Db::open(&scratch).wait_count("completed", 1, &server);
    server.stop();
}

/// Workflows per second through `serve` (one process, or several workers
/// on one database).
pub struct Throughput {
    pub workflows: usize,
    /// Queuing them over HTTP (the server running nothing).
    pub submit: Duration,
    pub submit_stopped: Stopped,
    /// From starting (the first) `serve` to the last completion.
    pub wall: Duration,
    /// From starting (the first) `serve` to the first step's start
    /// (process start, opening the database, loading the component).
    pub startup: Duration,
    /// The servers' CPU time once every workflow completed.
    pub cpu: Cpu,
    pub stopped: Stopped,
}

impl Throughput {
    pub fn rate(&self) -> f64 {
        self.workflows as f64 / self.wall.as_secs_f64()
    }

    /// The rate once the first workflow runs.
    pub fn running_rate(&self) -> f64 {
        self.workflows as f64 / self.wall.saturating_sub(self.startup).as_secs_f64()
    }

    pub fn submit_rate(&self) -> f64 {
        self.workflows as f64 / self.submit.as_secs_f64()
    }
}

/// `count` workflows of `items` trivial steps queued on `scratch` (a new
/// one, deployed here), then `workers` processes of `serve --concurrency
/// N` started one after another and timed from the first start to the
/// last completion (the database's completion times against the first
/// process's start); their CPU times and figures are summed.
pub fn throughput(
    scratch: &Scratch,
    cache: &Path,
    items: u32,
    count: usize,
    concurrency: usize,
    workers: usize,
) -> Throughput {
    deploy(scratch, cache);
    let queued = workflows("wf-", count, &json!({"scenario": "steps", "items": items}));
    let (submit, submit_stopped) = queue_over_http(scratch, cache, &queued);
    let db = Db::open(scratch);
    let concurrency = concurrency.to_string();
    let servers: Vec<Server> = (0..workers)
        .map(|n| {
            let name = if workers == 1 {
                "serve".to_owned()
            } else {
                format!("serve-{n}")
            };
            Server::start(scratch, cache, &name, &["--concurrency", &concurrency])
        })
        .collect();
    db.wait_count("completed", count, &servers[0]);
    let cpu = servers.iter().map(Server::cpu).sum();
    let spawned_ms = servers[0].spawned_ms;
    let stopped = servers.into_iter().map(Server::stop).sum();
    let last = db.number("SELECT max(updated_at) FROM workflows");
    let first_step = db.number("SELECT min(started_at) FROM steps");
    Throughput {
        workflows: count,
        submit,
        submit_stopped,
        wall: millis_between(spawned_ms, last),
        startup: millis_between(spawned_ms, first_step),
        cpu,
        stopped,
    }
}

/// The per-step cost of a lone workflow of `steps` trivial steps inside
/// `serve` (`--concurrency 1`, `repeats` such workflows queued one after
/// another): the time between its first and last step results over the
/// steps between them, from the database's times; the best workflow.
pub fn lone_workflow(
    scratch: &Scratch,
    cache: &Path,
    steps: u32,
    repeats: u32,
) -> (Duration, Cpu, Stopped) {
    deploy(scratch, cache);
    for i in 0..repeats {
        start(
            scratch,
            &format!("lone-{i}"),
            &json!({"scenario": "steps", "items": steps}),
        );
    }
    let db = Db::open(scratch);
    let mut server = Server::start(scratch, cache, "serve", &["--concurrency", "1"]);
    server.wait_serving();
    db.wait_count("completed", repeats as usize, &server);
    let cpu = server.cpu();
    let stopped = server.stop();
    let best = db
        .rows(
            "SELECT min(finished_at), max(finished_at), count(*) FROM steps
             WHERE step_key LIKE 's#%' GROUP BY workflow_id",
        )
        .into_iter()
        .map(|row| {
            assert_eq!(row[2], i64::from(steps), "every step recorded");
            Duration::from_micros(((row[1] - row[0]) * 1000 / (row[2] - 1).max(1)) as u64)
        })
        .min()
        .expect("the lone workflows ran");
    (best, cpu, stopped)
}

/// Memory of sleeping workflows, and how late short sleeps end.
pub struct Sleepers {
    pub sleepers: usize,
    /// Submitting them over HTTP to the `serve` that runs them.
    pub submit: Duration,
    pub idle_rss_kb: u64,
    pub idle_threads: u64,
    pub rss_kb: u64,
    pub hwm_kb: u64,
    pub threads: u64,
    /// Connections the server has open to the database then.
    pub connections: usize,
    pub nappers: usize,
    /// Per short sleeper, sorted: the next step's end minus the wake time.
    pub lateness_ms: Vec<i64>,
    /// Per short sleeper, sorted: the next step's start minus the wake time.
    pub resume_ms: Vec<i64>,
    pub stopped: Stopped,
}

/// `sleepers` workflows sleeping 10 minutes submitted over HTTP to one
/// `serve --concurrency 64 --listen`, its memory once all sleep; then
/// `nappers` sleeping `nap_ms` among them, and when each woke.
pub fn sleepers(cache: &Path, sleepers: usize, nappers: usize, nap_ms: u64) -> Sleepers {
    let (scratch, db, server, addr) = serving(cache);
    let (idle_rss_kb, idle_threads) = (server.proc_status("VmRSS"), server.proc_status("Threads"));
    let long = workflows(
        "sleep-",
        sleepers,
        &json!({"scenario": "sleep", "sleep_ms": 600_000}),
    );
    let submit_took = submit(&addr, &long);
    db.wait_count("sleeping", sleepers, &server);
    // Let the runs' threads go idle.
    std::thread::sleep(Duration::from_secs(1));
    let (rss_kb, hwm_kb, threads) = (
        server.proc_status("VmRSS"),
        server.proc_status("VmHWM"),
        server.proc_status("Threads"),
    );
    let connections = server.open_files(&scratch.db());
    let short = workflows(
        "nap-",
        nappers,
        &json!({"scenario": "sleep", "sleep_ms": nap_ms}),
    );
    submit(&addr, &short);
    db.wait_count("completed", nappers, &server);
    let stopped = server.stop();
    let rows = db.rows(
        "SELECT CAST(z.output_json AS INTEGER), a.started_at, a.finished_at
         FROM workflows w
         JOIN steps z ON z.workflow_id = w.id AND z.step_key = 'durable.sleep#000001'
         JOIN steps a ON a.workflow_id = w.id AND a.step_key = 'after_sleep#000001'
         WHERE w.id LIKE 'nap-%'",
    );
    assert_eq!(
        rows.len(),
        nappers,
        "every short sleeper's wake time and last step"
    );
    let mut lateness_ms: Vec<i64> = rows.iter().map(|r| r[2] - r[0]).collect();
    let mut resume_ms: Vec<i64> = rows.iter().map(|r| r[1] - r[0]).collect();
    lateness_ms.sort_unstable();
    resume_ms.sort_unstable();
    Sleepers {
        sleepers,
        submit: submit_took,
        idle_rss_kb,
        idle_threads,
        rss_kb,
        hwm_kb,
        threads,
        connections,
        nappers,
        lateness_ms,
        resume_ms,
        stopped,
    }
}

/// What [`signal_latency`] measured.
pub struct SignalLatency {
    pub workflows: usize,
    /// From each signal's `sent_at` to the end of the wait's step that took
    /// it, sorted.
    pub taken_ms: Vec<i64>,
    /// From each signal's `sent_at` to the end of the step after the wait.
    pub done_ms: Vec<i64>,
    pub stopped: Stopped,
}

/// `count` workflows waiting for the signal `go` (unloaded: `waiting`),
/// then one signal each over HTTP, one at a time, 10 ms apart: how long
/// from each signal to the step that took it, as recorded in the database.
pub fn signal_latency(cache: &Path, count: usize) -> SignalLatency {
    let (_scratch, db, server, addr) = serving(cache);
    let waiting = workflows("wait-", count, &json!({"scenario": "signals", "items": 1}));
    submit(&addr, &waiting);
    db.wait_count("waiting", count, &server);
    let agent = http_agent();
    for (id, _) in &waiting {
        let mut response = agent
            .post(format!("http://{addr}/v1/workflows/{id}/signals/go"))
            .header("Content-Type", "application/json")
            .send(r#"{"value": "go"}"#)
            .expect("POST .../signals/go reaches the server");
        let status = response.status().as_u16();
        let answer = response.body_mut().read_to_string().unwrap_or_default();
        assert_eq!(status, 202, "signal {id}: {answer}");
        std::thread::sleep(Duration::from_millis(10));
    }
    db.wait_count("completed", count, &server);
    let stopped = server.stop();
    let rows = db.rows(
        "SELECT g.sent_at, t.finished_at, a.finished_at
         FROM signals g
         JOIN steps t ON t.workflow_id = g.workflow_id AND t.step_key = g.taken_by
         JOIN steps a ON a.workflow_id = g.workflow_id AND a.step_key = 'after_signal#000001'",
    );
    assert_eq!(
        rows.len(),
        count,
        "every signal taken, every next step done"
    );
    let mut taken_ms: Vec<i64> = rows.iter().map(|r| r[1] - r[0]).collect();
    let mut done_ms: Vec<i64> = rows.iter().map(|r| r[2] - r[0]).collect();
    taken_ms.sort_unstable();
    done_ms.sort_unstable();
    SignalLatency {
        workflows: count,
        taken_ms,
        done_ms,
        stopped,
    }
}

/// The control for [`sleepers`]: the same number of workflows of one step
/// submitted the same way to the same kind of server, run to completion
/// rather than left sleeping; the server's RSS once they all completed
/// (`(VmRSS, VmHWM)` in kB).
pub fn completed_rss(cache: &Path, count: usize) -> (u64, u64) {
    let (_scratch, db, server, addr) = serving(cache);
    let done = workflows("done-", count, &json!({"scenario": "steps", "items": 1}));
    submit(&addr, &done);
    db.wait_count("completed", count, &server);
    std::thread::sleep(Duration::from_secs(1));
    let rss = (server.proc_status("VmRSS"), server.proc_status("VmHWM"));
    server.stop();
    rss
}

/// Recovery after `kill -9` of a `serve` with every workflow in flight.
pub struct Recovery {
    pub workflows: usize,
    /// At the kill: workflows running, completed, and steps completed.
    pub running_at_kill: usize,
    pub completed_at_kill: usize,
    pub steps_done_at_kill: i64,
    /// The most steps any unfinished workflow still had to run, times
    /// `step_ms`: the least the rest can take with every workflow at once.
    pub ideal: Duration,
    /// From the kill to starting the new `serve` (reading the counts above).
    pub restart_delay: Duration,
    /// From the kill until no workflow is left to the dead server.
    pub resumed: Duration,
    /// From the kill until every workflow completed.
    pub completed: Duration,
    /// `taking over` lines of the new server.
    pub taken_over: usize,
    pub stopped: Stopped,
}

/// `count` workflows of `steps` steps of `step_ms` each (scenario `slow`),
/// all in flight in one `serve --concurrency count`, which is killed with
/// SIGKILL once every workflow has run a step; a new `serve` is started at
/// once and timed.
pub fn recovery(cache: &Path, count: usize, steps: u32, step_ms: u64) -> Recovery {
    let scratch = Scratch::new();
    deploy(&scratch, cache);
    let queued = workflows(
        "slow-",
        count,
        &json!({"scenario": "slow", "items": steps, "sleep_ms": step_ms}),
    );
    queue_over_http(&scratch, cache, &queued);
    let db = Db::open(&scratch);
    let concurrency = count.to_string();
    let mut first = Server::start(&scratch, cache, "first", &["--concurrency", &concurrency]);
    let dead_pid = first.pid();
    // Kill once every workflow has a step done (most have more to go).
    let deadline = Instant::now() + PATIENCE;
    while db.number("SELECT count(DISTINCT workflow_id) FROM steps WHERE status = 'completed'")
        < count as i64
    {
        assert!(
            Instant::now() < deadline && db.count("failed") + db.count("suspended") == 0,
            "the workflows never got going: {}",
            tail(&first.log(), 20)
        );
        std::thread::sleep(POLL);
    }
    first.kill9();
    let killed = Instant::now();
    let running_at_kill = db.count("running");
    let completed_at_kill = db.count("completed");
    let steps_done_at_kill = db.number("SELECT count(*) FROM steps WHERE status = 'completed'");
    let least_done = db.number(
        "SELECT min((SELECT count(*) FROM steps s WHERE s.workflow_id = w.id
                     AND s.status = 'completed'))
         FROM workflows w WHERE w.status != 'completed'",
    );
    let ideal = Duration::from_millis((i64::from(steps) - least_done).max(0) as u64 * step_ms);
    let second = Server::start(&scratch, cache, "second", &["--concurrency", &concurrency]);
    let restart_delay = killed.elapsed();
    let mut resumed = None;
    let deadline = Instant::now() + PATIENCE;
    loop {
        if resumed.is_none()
            && db.number(&format!(
                "SELECT count(*) FROM workflows WHERE status = 'running' AND owner_pid = {dead_pid}"
            )) == 0
        {
            resumed = Some(killed.elapsed());
        }
        if db.count("completed") == count {
            break;
        }
        assert!(
            Instant::now() < deadline && db.count("failed") + db.count("suspended") == 0,
            "the workflows did not all complete after the restart: {}",
            tail(&second.log(), 20)
        );
        std::thread::sleep(POLL);
    }
    let completed = killed.elapsed();
    let taken_over = second
        .log()
        .lines()
        .filter(|l| l.contains("taking over"))
        .count();
    let stopped = second.stop();
    Recovery {
        workflows: count,
        running_at_kill,
        completed_at_kill,
        steps_done_at_kill,
        ideal,
        restart_delay,
        resumed: resumed.unwrap_or(completed),
        completed,
        taken_over,
        stopped,
    }
}

pub fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

pub fn millis_between(from_ms: i64, to_ms: i64) -> Duration {
    Duration::from_millis((to_ms - from_ms).max(0) as u64)
}

pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
