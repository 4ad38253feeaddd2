//! Crash torture for `durable-host serve`, and `serve` on a disk that fills.
//!
//! Torture: onboarding and scenario workflows are queued with `start` and
//! over HTTP, then servers on the one database are SIGKILLed at random
//! moments, two of them run at once, and one is frozen (SIGSTOP) past its
//! lease while another takes its workflows over, then thawed. A last server
//! finishes what is left. Then, from the side-effect ledgers (the onboarding
//! services' records and the scenarios' `/ledger/keyed.log`, both by
//! idempotency key) and from the database: every workflow completed with
//! its output, no step completed at a kill ever ran again, no step ran more
//! often than it was begun, and the frozen server's runs wrote nothing
//! after they lost their leases.
//!
//! `DURABLE_SERVE_TORTURE_ROUNDS` (default 12) and
//! `DURABLE_SERVE_TORTURE_WORKFLOWS` (default 240) set the size;
//! `DURABLE_TORTURE_SEED` replays a run (the seed is printed).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use durable_tests::{
    Rng, Scratch, Server, all_threads_stopped, artifacts, employee, env_number, is_write_lock_free,
    run, signal, torture_seed, wait_until,
};
use serde_json::{Value, json};

/// How long a wait for the servers may take before the test fails: a cold
/// compile of a component takes ~15 s on two cores.
const PATIENCE: Duration = Duration::from_secs(180);

/// Steps of a `keyed` scenario workflow.
const KEYED_ITEMS: u32 = 4;

/// A durable sleep `serve` unloads the workflow for (more than 5 s).
const SLEEP_MS: u64 = 5_500;

/// A queued workflow and what it must end with.
struct Workflow {
    id: String,
    deployment: &'static str,
    input: Value,
    output: Value,
    steps: i64,
}

/// Half onboarding, half `keyed` scenarios, with slow enough steps that
/// kills land in them; one in eight sleeps long enough to be unloaded
/// between two steps, and is woken by whichever server is alive then.
fn workflows(count: usize, rng: &mut Rng, onboarding_output: &str) -> Vec<Workflow> {
    (0..count)
        .map(|n| {
            if n % 8 == 7 {
                let id = format!("sl{n:04}");
                return Workflow {
                    input: json!({ "scenario": "keyed_sleep", "sleep_ms": SLEEP_MS }),
                    output: json!({ "workflow_id": id, "slept_ms": SLEEP_MS }),
                    deployment: "scenarios",
                    // `before`, `durable.sleep` and `after`.
                    steps: 3,
                    id,
                };
            }
            if n % 2 == 1 {
                return keyed(&format!("kd{n:04}"), rng);
            }
            let id = format!("on{n:04}");
            let input = employee(&id, 30 + rng.below(90));
            let output = onboarding_output.replace("REFID", &id);
            Workflow {
                input: serde_json::from_str(&input).unwrap(),
                output: serde_json::from_str(&output).unwrap(),
                deployment: "onboarding",
                steps: 4,
                id,
            }
        })
        .collect()
}

/// A `keyed` scenario workflow: `KEYED_ITEMS` steps of 30-120 ms.
fn keyed(id: &str, rng: &mut Rng) -> Workflow {
    let input = json!({
        "scenario": "keyed", "items": KEYED_ITEMS, "sleep_ms": 30 + rng.below(90),
    });
    let sum: u32 = (0..KEYED_ITEMS).sum();
    Workflow {
        id: id.to_owned(),
        deployment: "scenarios",
        input,
        output: json!({ "workflow_id": id, "sum": sum }),
        steps: i64::from(KEYED_ITEMS),
    }
}

/// Deploy onboarding (services granted) and the scenarios (ledger granted),
/// with `host` building each `durable-host` command for the database.
fn deploy_both(scratch: &Scratch, host: impl Fn(&[&str]) -> Command) {
    for (name, component, grant) in [
        ("onboarding", &artifacts().onboarding, "services"),
        ("scenarios", &artifacts().scenarios, "ledger"),
    ] {
        let grant = format!("{}::/{grant}", scratch.path().join(grant).display());
        let component = component.to_str().unwrap();
        run(&mut host(&["deploy", name, component, "--dir", &grant])).expect_code(0);
    }
}

/// Queue `workflows` with `start`, four processes at a time.
fn start_all(workflows: &[Workflow], host: impl Fn(&[&str]) -> Command + Sync) {
    let chunk = workflows.len().div_ceil(4).max(1);
    std::thread::scope(|scope| {
        for part in workflows.chunks(chunk) {
            let host = &host;
            scope.spawn(move || {
                for w in part {
                    let input = w.input.to_string();
                    let args = [
                        "start",
                        w.deployment,
                        "--workflow-id",
                        &w.id,
                        "--input",
                        &input,
                    ];
                    let started = run(host(&args).stdin(Stdio::null())).expect_code(0);
                    assert_eq!(started.stdout().trim(), w.id);
                }
            });
        }
    });
}

/// The output the onboarding workflow gives employee `REFID`.
fn onboarding_output() -> String {
    let reference = Scratch::new();
    run(reference.onboarding("REFID").arg("--json"))
        .expect_code(0)
        .json()["output"]
        .to_string()
}

/// The address a `serve --listen 127.0.0.1:0` logged.
fn listen_address(server: &Server) -> String {
    let mut address = None;
    wait_until("serve to log its address", PATIENCE, || {
        address = server.log().lines().find_map(|line| {
            let (_, rest) = line.split_once("listening addr=")?;
            Some(rest.split_whitespace().next()?.to_owned())
        });
        address.is_some()
    });
    address.unwrap()
}

/// Submit `workflows` over the HTTP API at `address`: each answered 202.
fn submit_over_http(address: &str, workflows: &[Workflow]) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into();
    for w in workflows {
        let body = json!({ "deployment": w.deployment, "workflow_id": w.id, "input": w.input });
        let mut reply = agent
            .post(format!("http://{address}/v1/workflows"))
            .header("Content-Type", "application/json")
            .send(body.to_string().as_bytes())
            .expect("the API answers");
        let status = reply.status().as_u16();
        let text = reply.body_mut().read_to_string().unwrap_or_default();
        assert_eq!(status, 202, "submitting {}: {text}", w.id);
    }
}

/// `(key, attempts)` of every step, keys as idempotency keys.
fn step_attempts(scratch: &Scratch) -> BTreeMap<String, i64> {
    scratch
        .query("SELECT workflow_id || '/' || step_key, attempts FROM steps")
        .into_iter()
        .map(|row| (text(&row[0]), row[1].as_i64().unwrap()))
        .collect()
}

/// Completed steps, by idempotency key, with their recorded output.
fn completed_steps(scratch: &Scratch) -> BTreeMap<String, String> {
    scratch
        .query(
            "SELECT workflow_id || '/' || step_key, output_json FROM steps
             WHERE status = 'completed'",
        )
        .into_iter()
        .map(|row| (text(&row[0]), text(&row[1])))
        .collect()
}

fn text(value: &Value) -> String {
    value.as_str().unwrap_or_default().to_owned()
}

fn count_status(scratch: &Scratch, status: &str) -> i64 {
    scratch.number(&format!(
        "SELECT count(*) FROM workflows WHERE status = '{status}'"
    ))
}

/// Every workflow of `workflows` completed, with its output and all its
/// steps.
fn assert_all_completed(scratch: &Scratch, workflows: &[Workflow]) {
    let recorded: BTreeMap<String, Vec<Value>> = scratch
        .query(
            "SELECT id, status, output, (SELECT count(*) FROM steps s
                 WHERE s.workflow_id = w.id AND s.status = 'completed')
             FROM workflows w",
        )
        .into_iter()
        .map(|row| (text(&row[0]), row))
        .collect();
    for w in workflows {
        let row = recorded
            .get(&w.id)
            .unwrap_or_else(|| panic!("no workflow {}", w.id));
        assert_eq!(row[1], "completed", "{}", w.id);
        assert_eq!(row[3], w.steps, "{}: completed steps", w.id);
        let output: Value = serde_json::from_str(row[2].as_str().unwrap_or("null")).unwrap();
        assert_eq!(output, w.output, "{}", w.id);
    }
}

/// No step ran more often than it was begun (each execution follows its
/// own `running` mark, so only a step in flight at a failure repeats), and
/// every completed step's effect happened.
fn assert_ran_as_begun(scratch: &Scratch, executions: &BTreeMap<String, usize>) {
    let attempts = step_attempts(scratch);
    for (key, &ran) in executions {
        let begun = attempts.get(key).copied().unwrap_or(0);
        assert!(
            ran as i64 <= begun,
            "{key} ran {ran} times but was begun {begun} times"
        );
    }
    // `durable.*` steps (a sleep's wake-up time) have no effect.
    for key in completed_steps(scratch)
        .keys()
        .filter(|k| !k.contains("/durable."))
    {
        assert!(
            executions.contains_key(key),
            "{key} completed without its effect"
        );
    }
}

/// Every row of `steps`, `workflows` and `workflow_events` whose `run_id`
/// is one of `runs`, rendered.
fn rows_of_runs(scratch: &Scratch, runs: &BTreeSet<String>) -> BTreeSet<String> {
    let runs: Vec<String> = runs.iter().map(|run| format!("'{run}'")).collect();
    let mut rows = BTreeSet::new();
    for table in ["steps", "workflows", "workflow_events"] {
        let sql = format!(
            "SELECT * FROM {table} WHERE run_id IN ({})",
            runs.join(", ")
        );
        for row in scratch.query(&sql) {
            rows.insert(format!("{table}: {row:?}"));
        }
    }
    rows
}

/// What the database and the ledgers held while no server was alive.
struct Snapshot {
    completed: BTreeSet<String>,
    executions: BTreeMap<String, usize>,
}

/// Runs of a frozen server that lost their workflows, and every row they
/// had written when they did.
struct Fenced {
    runs: BTreeSet<String>,
    rows: BTreeSet<String>,
}

struct Torture<'a> {
    scratch: &'a Scratch,
    rng: Rng,
    servers: usize,
    snapshots: Vec<Snapshot>,
    fenced: Vec<Fenced>,
    steps_in_flight_at_kills: i64,
}

impl Torture<'_> {
    /// A new server with a random concurrency and a lease of `stale_after`.
    fn server(&mut self, stale_after: &str, extra: &[&str]) -> Server {
        self.servers += 1;
        let concurrency = [2, 4, 8][self.rng.below(3) as usize].to_string();
        let mut args = vec!["--concurrency", &concurrency, "--stale-after", stale_after];
        args.extend_from_slice(extra);
        Server::start(self.scratch, &format!("serve-{}", self.servers), &args)
    }

    /// Record what the database and the ledgers hold: no server may be alive.
    fn snapshot(&mut self) {
        self.steps_in_flight_at_kills += self
            .scratch
            .number("SELECT count(*) FROM steps WHERE status = 'running'");
        self.snapshots.push(Snapshot {
            completed: completed_steps(self.scratch).into_keys().collect(),
            executions: self.scratch.step_executions(),
        });
    }

    fn done(&self, total: usize) -> bool {
        count_status(self.scratch, "completed") as usize == total
    }

    /// One server, killed at a random moment; the first one also takes
    /// `over_http` through the API before it dies.
    fn kill_one(&mut self, over_http: &[Workflow]) {
        let mut server = if over_http.is_empty() {
            self.server("2s", &[])
        } else {
            let server = self.server("2s", &["--listen", "127.0.0.1:0"]);
            submit_over_http(&listen_address(&server), over_http);
            server
        };
        std::thread::sleep(self.rng.millis(300, 1500));
        server.kill9();
        self.snapshot();
    }

    /// Two servers at once, killed together or one after the other.
    fn kill_two(&mut self) {
        let mut a = self.server("2s", &[]);
        let mut b = self.server("2s", &[]);
        std::thread::sleep(self.rng.millis(300, 1500));
        a.kill9();
        if self.rng.below(2) == 0 {
            std::thread::sleep(self.rng.millis(0, 800));
        }
        b.kill9();
        self.snapshot();
    }

    /// A server frozen past its 1 s lease; another takes its workflows
    /// over; the frozen one is thawed and both run a while, then die.
    fn freeze_one(&mut self) {
        let mut frozen = self.server("1s", &[]);
        std::thread::sleep(self.rng.millis(300, 1000));
        // Frozen holding SQLite's write lock, it would block its successor
        // too. PostgreSQL ends a frozen session's transaction by itself.
        let pid = frozen.pid();
        for tries in 0.. {
            assert!(tries < 100, "never froze serve without its write lock");
            signal(pid, "-STOP");
            wait_until("serve to stop", Duration::from_secs(10), || {
                all_threads_stopped(pid)
            });
            if self.scratch.on_postgres() || is_write_lock_free(&self.scratch.db()) {
                break;
            }
            signal(pid, "-CONT");
            std::thread::sleep(self.rng.millis(1, 30));
        }
        let owned: BTreeMap<String, String> = self
            .scratch
            .query(&format!(
                "SELECT id, run_id FROM workflows WHERE status = 'running' AND owner_pid = {pid}"
            ))
            .into_iter()
            .map(|row| (text(&row[0]), text(&row[1])))
            .collect();
        if owned.is_empty() {
            // Caught between workflows (or out of work): a plain kill.
            signal(pid, "-CONT");
            frozen.kill9();
            self.snapshot();
            return;
        }

        let mut successor = self.server("2s", &[]);
        wait_until(
            "the frozen server's workflows to be taken over",
            PATIENCE,
            || {
                owned.iter().all(|(id, run)| {
                    let sql = format!("SELECT run_id FROM workflows WHERE id = '{id}'");
                    !self.scratch.strings(&sql).contains(run)
                })
            },
        );
        let rows = rows_of_runs(self.scratch, &owned.values().cloned().collect());
        signal(pid, "-CONT");
        // Each thawed run goes on until it learns, from its lease or its
        // next write, that it lost the workflow: the fencing is exercised.
        // (On PostgreSQL, a run frozen inside a transaction finds its session
        // ended by the server; it connects again and is fenced the same way.)
        wait_until("the thawed runs to stop", PATIENCE, || {
            let log = frozen.log();
            owned.keys().all(|id| {
                let named = format!("workflow_id=\"{id}\"");
                log.lines().any(|line| {
                    line.contains(&named)
                        && (line.contains("taken over") || line.contains("lost the lease"))
                })
            })
        });
        let runs = owned.into_values().collect();
        self.fenced.push(Fenced { runs, rows });
        std::thread::sleep(self.rng.millis(0, 1000));
        frozen.kill9();
        successor.kill9();
        self.snapshot();
    }
}

#[test]
fn serve_survives_kills_concurrent_servers_and_a_frozen_server() {
    let began = Instant::now();
    let rounds = env_number("DURABLE_SERVE_TORTURE_ROUNDS").unwrap_or(12);
    let count = env_number("DURABLE_SERVE_TORTURE_WORKFLOWS").unwrap_or(240) as usize;
    let seed = torture_seed();
    println!(
        "serve torture: {count} workflows, {rounds} rounds, seed {seed} \
         (DURABLE_TORTURE_SEED to replay)"
    );
    let mut rng = Rng(seed);
    let scratch = Scratch::new();
    let all = workflows(count, &mut rng, &onboarding_output());
    let host = |args: &[&str]| scratch.host(args);
    deploy_both(&scratch, host);
    let (by_start, over_http) = all.split_at(count - count / 6);
    start_all(by_start, host);

    let mut torture = Torture {
        scratch: &scratch,
        rng,
        servers: 0,
        snapshots: Vec::new(),
        fenced: Vec::new(),
        steps_in_flight_at_kills: 0,
    };
    // Round 0 takes the HTTP submissions; the next three play each kind
    // of round once, in a seeded order, so that every seed tries them all.
    let mut kinds = [1, 2, 3];
    let first = torture.rng.below(3) as usize;
    kinds.rotate_left(first);
    let mut played = 0;
    for round in 0..rounds as usize {
        if round > 0 && torture.done(count) {
            break;
        }
        let kind = match round {
            0 => 0,
            1..=3 => kinds[round - 1],
            _ => 1 + torture.rng.below(3),
        };
        match kind {
            0 => torture.kill_one(over_http),
            1 => torture.kill_one(&[]),
            2 => torture.kill_two(),
            _ => torture.freeze_one(),
        }
        played += 1;
    }
    let done_by_torture = count_status(&scratch, "completed");

    let mut last = torture.server("2s", &[]);
    wait_until("every workflow to complete", PATIENCE, || {
        let stuck = count_status(&scratch, "failed") + count_status(&scratch, "suspended");
        assert_eq!(stuck, 0, "workflows failed or were suspended");
        // Serving: its SIGTERM handler is in place.
        torture.done(count) && last.log().contains("serving")
    });
    last.signal("-TERM");
    let status = last
        .wait_exit(Duration::from_secs(30))
        .expect("serve did not stop on SIGTERM");
    assert_eq!(status.code(), Some(0), "{}", last.log());

    assert_all_completed(&scratch, &all);
    let total = scratch.number("SELECT count(*) FROM workflows");
    assert_eq!(total as usize, count);

    // No step completed at a kill ran again.
    let executions = scratch.step_executions();
    for snapshot in &torture.snapshots {
        for key in &snapshot.completed {
            assert_eq!(
                executions.get(key),
                snapshot.executions.get(key),
                "{key} was completed at a kill, yet ran again afterwards"
            );
        }
    }
    assert_ran_as_begun(&scratch, &executions);

    // The frozen servers' runs wrote nothing after they lost their leases:
    // every row they own now, they owned then, unchanged.
    for fenced in &torture.fenced {
        let now = rows_of_runs(&scratch, &fenced.runs);
        let written: Vec<_> = now.difference(&fenced.rows).collect();
        assert!(
            written.is_empty(),
            "runs of a frozen server wrote after a takeover: {written:#?}"
        );
    }
    assert!(
        scratch.integrity_ok(),
        "the database's integrity check failed"
    );
    assert!(
        torture.steps_in_flight_at_kills > 0,
        "no kill caught a step in flight: the test tested nothing"
    );

    let takeovers =
        scratch.number("SELECT CAST(coalesce(sum(attempts - 1), 0) AS BIGINT) FROM steps");
    let repeated: usize = executions.values().map(|n| n - 1).sum();
    println!(
        "serve torture: {played} rounds, {} servers, {} frozen runs fenced; {done_by_torture} of \
         {count} completed before the last server; {} steps in flight at kills, {takeovers} \
         step takeovers, {repeated} side effects repeated (all in flight at a kill); {:.1} s",
        torture.servers,
        torture.fenced.iter().map(|f| f.runs.len()).sum::<usize>(),
        torture.steps_in_flight_at_kills,
        began.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------
// A full disk

/// A tmpfs of a given size mounted in a mount namespace of its own (as
/// `tests/hardening.rs` fills a disk without touching the machine's
/// mounts), held by a sleeping process: commands reach it through
/// `nsenter`, and it vanishes with the holder, also when a failing test
/// drops it.
struct Tmpfs {
    holder: Child,
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let mut holder = Command::new("unshare")
            .args(["--mount", "sh", "-c"])
            .arg(r#"mount -t tmpfs -o "size=$SIZE" tmpfs "$T" && echo mounted && exec sleep 3600"#)
            .env("T", dir)
            .env("SIZE", size)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run unshare");
        let mut line = String::new();
        BufReader::new(holder.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        if line.trim() != "mounted" {
            let mut stderr = String::new();
            let _ = holder.stderr.take().unwrap().read_to_string(&mut stderr);
            let _ = holder.wait();
            panic!("cannot mount a tmpfs; this test needs root and `unshare --mount`: {stderr}");
        }
        Self {
            holder,
            dir: dir.to_owned(),
        }
    }

    /// `program args`, run where the tmpfs is mounted.
    fn command(&self, program: &Path, args: &[&str]) -> Command {
        let mut command = Command::new("nsenter");
        command
            .args(["-t", &self.holder.id().to_string(), "-m", "--"])
            .arg(program)
            .args(args);
        command
    }

    /// Run `script` with `sh` where the tmpfs is mounted (on `$T`); its stdout.
    fn sh(&self, script: &str) -> String {
        let output = self
            .command(Path::new("sh"), &["-c", script])
            .env("T", &self.dir)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// A server on a database whose disk has filled up: the scenarios
/// deployed and `count` keyed workflows queued on a 16 MiB tmpfs, then a
/// filler leaving the database `room_kib` KiB to grow into.
struct FullDisk {
    scratch: Scratch,
    tmpfs: Tmpfs,
    workflows: Vec<Workflow>,
}

impl FullDisk {
    fn new(count: usize, room_kib: u64) -> Self {
        let scratch = Scratch::new();
        let tmpfs = Tmpfs::mount(&scratch.path().join("tmpfs"), "16m");
        let mut rng = Rng(1);
        let workflows: Vec<Workflow> = (0..count)
            .map(|n| keyed(&format!("kd{n:04}"), &mut rng))
            .collect();
        let disk = Self {
            scratch,
            tmpfs,
            workflows,
        };
        let host = |args: &[&str]| disk.host(args);
        deploy_both(&disk.scratch, host);
        start_all(&disk.workflows, host);
        disk.tmpfs.sh(&format!(
            r#"free=$(df -k --output=avail "$T" | tail -1)
               head -c $(( (free - {room_kib}) * 1024 )) /dev/zero > "$T/filler""#
        ));
        disk
    }

    fn db(&self) -> PathBuf {
        self.tmpfs.dir.join("durable.db")
    }

    /// `durable-host <args> --db <the database on the tmpfs>`, run where
    /// the tmpfs is mounted.
    fn host(&self, args: &[&str]) -> Command {
        let mut command = self.tmpfs.command(&artifacts().host, args);
        command.arg("--db").arg(self.db());
        command
    }

    fn serve(&self, name: &str) -> Server {
        let args = ["serve", "--concurrency", "8", "--stale-after", "2s"];
        Server::spawn(&mut self.host(&args), self.scratch.path(), name)
    }

    /// `(status, completed steps)` of every workflow, as `list` reads them.
    fn listed(&self) -> BTreeMap<String, (String, i64)> {
        let listed = run(&mut self.host(&["list", "--all", "--json"]))
            .expect_code(0)
            .json();
        listed
            .as_array()
            .unwrap()
            .iter()
            .map(|w| {
                let id = w["workflow_id"].as_str().unwrap().to_owned();
                let status = w["status"].as_str().unwrap().to_owned();
                (id, (status, w["steps"]["completed"].as_i64().unwrap()))
            })
            .collect()
    }

    /// A copy of the database (made while no server runs) in a scratch
    /// directory of its own, for SQL.
    fn copy(&self) -> Scratch {
        let copy = Scratch::new();
        self.tmpfs.sh(&format!(
            r#"for f in "$T"/durable.db "$T"/durable.db-wal; do
                   if [ -e "$f" ]; then cp "$f" "{}/"; fi
               done"#,
            copy.path().display()
        ));
        copy
    }
}

/// `serve` on a disk that fills up names the full disk in its log, drains
/// on SIGTERM, and loses nothing it committed; once space is freed, a new
/// server finishes every workflow and no step committed before the disk
/// filled runs again.
#[test]
fn a_full_disk_is_reported_loses_nothing_and_a_new_server_finishes() {
    if durable_tests::backend::on_postgres() {
        // About the SQLite file: its disk fills up.
        return;
    }
    let disk = FullDisk::new(120, 768);
    let mut full = disk.serve("serve-full");
    // What readers saw committed while the disk filled up.
    let mut seen: BTreeMap<String, (String, i64)> = BTreeMap::new();
    wait_until("serve to report the full disk", PATIENCE, || {
        for (id, (status, steps)) in disk.listed() {
            let entry = seen.entry(id).or_insert((status.clone(), steps));
            if status == "completed" {
                entry.0 = status;
            }
            entry.1 = entry.1.max(steps);
        }
        // The lease keeper may warn first; the run's own report is an error.
        full.log()
            .lines()
            .any(|l| l.contains("is full") && l.contains("ERROR"))
    });
    let log = full.log();
    let report = log
        .lines()
        .find(|l| l.contains("is full") && l.contains("ERROR"))
        .unwrap_or_else(|| panic!("no error reports the full disk:\n{log}"));
    assert!(
        report.contains(&disk.db().display().to_string()),
        "the report names the database: {report}"
    );
    full.signal("-TERM");
    let status = full
        .wait_exit(Duration::from_secs(30))
        .expect("serve did not stop on SIGTERM with its disk full");
    assert_eq!(status.code(), Some(0), "SIGTERM drains, full disk or not");

    // Nothing a reader saw committed was lost.
    let listed = disk.listed();
    for (id, (status, steps)) in &seen {
        let (now, now_steps) = &listed[id];
        if status == "completed" {
            assert_eq!(now, "completed", "{id} was seen completed");
        }
        assert!(
            now_steps >= steps,
            "{id} had {steps} steps, now {now_steps}"
        );
    }
    let at_stop = disk.copy();
    assert!(at_stop.integrity_ok(), "PRAGMA integrity_check failed");
    let committed = completed_steps(&at_stop);
    let done = count_status(&at_stop, "completed") as usize;
    assert!(
        !committed.is_empty() && done < disk.workflows.len(),
        "the disk must fill in the middle of the work: {done} workflows done, {} steps",
        committed.len()
    );
    let executions_at_stop = disk.scratch.step_executions();

    disk.tmpfs.sh(r#"rm "$T/filler""#);
    let mut freed = disk.serve("serve-freed");
    wait_until("every workflow to complete", PATIENCE, || {
        // Serving: its SIGTERM handler is in place.
        freed.log().contains("serving")
            && disk
                .listed()
                .values()
                .all(|(status, _)| status == "completed")
    });
    freed.signal("-TERM");
    let status = freed
        .wait_exit(Duration::from_secs(30))
        .expect("serve did not stop on SIGTERM");
    assert_eq!(status.code(), Some(0), "{}", freed.log());

    let end = disk.copy();
    assert!(end.integrity_ok(), "PRAGMA integrity_check failed");
    assert_all_completed(&end, &disk.workflows);
    let executions = disk.scratch.step_executions();
    let now = completed_steps(&end);
    for (key, output) in &committed {
        assert_eq!(
            now.get(key),
            Some(output),
            "{key} changed after the disk filled"
        );
        assert_eq!(
            executions.get(key),
            executions_at_stop.get(key),
            "{key} was committed before the disk filled, yet ran again"
        );
    }
    assert_ran_as_begun(&end, &executions);
    let repeated: usize = executions.values().map(|n| n - 1).sum();
    println!(
        "serve on a full disk: {done} of {} workflows and {} steps committed before it filled \
         ({} storage-failure log lines); all completed after space was freed; {repeated} side \
         effects repeated (in flight when the disk filled)",
        disk.workflows.len(),
        committed.len(),
        log.lines().filter(|l| l.contains("is full")).count(),
    );
}

/// A full disk is a lasting condition: `serve` must not retry the
/// workflows it cannot write as fast as it can.
#[test]
fn a_full_disk_does_not_make_serve_spin() {
    if durable_tests::backend::on_postgres() {
        // About the SQLite file: its disk fills up.
        return;
    }
    let disk = FullDisk::new(40, 256);
    let mut full = disk.serve("serve-full");
    wait_until("serve to report the full disk", PATIENCE, || {
        full.log().contains("is full")
    });
    // A rate: how often it reports the same failure over a few seconds.
    std::thread::sleep(Duration::from_secs(3));
    let exited = full.wait_exit(Duration::ZERO).map(|status| status.code());
    let reports = full.log().lines().filter(|l| l.contains("is full")).count();
    if exited.is_none() {
        assert!(
            full.log().contains("no new runs for a while"),
            "{}",
            full.log()
        );
    }
    assert!(
        exited == Some(Some(9)) || reports <= 100,
        "3 s after the disk filled, serve is {} and reported it {reports} times",
        match exited {
            Some(code) => format!("gone with exit {code:?}"),
            None => "still running".to_owned(),
        }
    );
}
