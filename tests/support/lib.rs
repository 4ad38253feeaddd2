//! Shared harness for the integration tests: builds the real `durable-host`
//! binary and the guest components (once per test binary), and runs the
//! binary in a scratch directory with its own database and mock services.
//!
//! Everything is built in the release profile, the one the rest of the
//! workspace uses, so the tests reuse the build instead of compiling
//! wasmtime a second time.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Paths of the built artefacts.
pub struct Artifacts {
    pub host: PathBuf,
    pub onboarding: PathBuf,
    pub scenarios: PathBuf,
    pub not_a_workflow: PathBuf,
}

/// Build the host and the guests (a no-op when they are up to date).
pub fn artifacts() -> &'static Artifacts {
    static BUILT: OnceLock<Artifacts> = OnceLock::new();
    BUILT.get_or_init(|| {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let target = target_dir(workspace);
        cargo(
            workspace,
            &target,
            &["build", "--release", "-p", "durable-host"],
        );
        cargo(
            workspace,
            &target,
            &[
                "build",
                "--release",
                "--target",
                "wasm32-wasip2",
                "-p",
                "onboarding",
                "-p",
                "scenarios",
            ],
        );
        let wasm = target.join("wasm32-wasip2/release");
        Artifacts {
            host: target.join("release/durable-host"),
            onboarding: wasm.join("onboarding.wasm"),
            scenarios: wasm.join("scenarios.wasm"),
            not_a_workflow: wasm.join("not-a-workflow.wasm"),
        }
    })
}

/// The `versions` workflow built with `feature` (`None`: the base
/// version), copied to a file of its own: built once per test binary.
pub fn version(feature: Option<&str>) -> PathBuf {
    static BUILDS: std::sync::Mutex<Vec<(Option<String>, PathBuf)>> =
        std::sync::Mutex::new(Vec::new());
    let mut builds = BUILDS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, path)) = builds.iter().find(|(f, _)| f.as_deref() == feature) {
        return path.clone();
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let target = target_dir(workspace);
    let mut args = vec![
        "build",
        "--release",
        "--target",
        "wasm32-wasip2",
        "-p",
        "versions",
    ];
    if let Some(feature) = feature {
        args.extend(["--features", feature]);
    }
    cargo(workspace, &target, &args);
    let wasm = target.join("wasm32-wasip2/release");
    let copy = wasm.join(format!("versions-{}.wasm", feature.unwrap_or("base")));
    std::fs::copy(wasm.join("versions.wasm"), &copy).unwrap();
    builds.push((feature.map(str::to_owned), copy.clone()));
    copy
}

/// The target directory of the build that produced this test binary
/// (`<target>/<profile>/deps/<test>`), unless overridden.
fn target_dir(workspace: &Path) -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.ancestors().nth(3).map(Path::to_path_buf))
        .filter(|dir| dir.join("release").is_dir() || dir.join("debug").is_dir())
        .unwrap_or_else(|| workspace.join("target"))
}

fn cargo(workspace: &Path, target: &Path, args: &[&str]) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let status = Command::new(&cargo)
        .args(args)
        .arg("--target-dir")
        .arg(target)
        .current_dir(workspace)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cargo}: {e}"));
    assert!(
        status.success(),
        "`cargo {}` failed; is the wasm32-wasip2 target installed? (`rustup target add wasm32-wasip2`)",
        args.join(" ")
    );
}

/// A scratch directory with a database, a `services/` directory for the
/// onboarding mock services and a `ledger/` directory for the scenarios.
pub struct Scratch {
    dir: tempfile::TempDir,
}

impl Default for Scratch {
    fn default() -> Self {
        Self::new()
    }
}

impl Scratch {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("create a scratch directory");
        std::fs::create_dir(dir.path().join("services")).unwrap();
        std::fs::create_dir(dir.path().join("ledger")).unwrap();
        Self { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn db(&self) -> PathBuf {
        self.path().join("durable.db")
    }

    /// `durable-host run <component> --workflow-id <id> --db <scratch db>`,
    /// with the scratch service and ledger directories granted.
    pub fn run(&self, component: &Path, workflow_id: &str) -> Command {
        let mut command = Command::new(&artifacts().host);
        command
            .current_dir(self.path())
            .arg("run")
            .arg(component)
            .args(["--workflow-id", workflow_id, "--db"])
            .arg(self.db())
            .arg("--dir")
            .arg(format!(
                "{}::/services",
                self.path().join("services").display()
            ))
            .arg("--dir")
            .arg(format!("{}::/ledger", self.path().join("ledger").display()))
            .stdin(Stdio::null());
        command
    }

    /// `durable-host run` of the scenarios guest, with `input`.
    pub fn scenario(&self, workflow_id: &str, input: Value) -> Command {
        let mut command = self.run(&artifacts().scenarios, workflow_id);
        command.args(["--input", &input.to_string()]);
        command
    }

    /// Any other `durable-host` command (`list`, `history`...) on the scratch database.
    pub fn host(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&artifacts().host);
        command
            .current_dir(self.path())
            .args(args)
            .arg("--db")
            .arg(self.db());
        command
    }

    /// Start the onboarding workflow `id` with standard input.
    pub fn onboarding(&self, id: &str) -> Command {
        let mut command = self.run(&artifacts().onboarding, id);
        command.args(["--input", &employee(id, 0)]);
        command
    }

    /// How many times each mock service really ran (`service -> calls`).
    pub fn service_calls(&self) -> BTreeMap<String, usize> {
        let mut calls = BTreeMap::new();
        for (service, _) in self.service_records() {
            *calls.entry(service).or_default() += 1;
        }
        calls
    }

    /// Every completed mock-service call: `(service, record)`.
    pub fn service_records(&self) -> Vec<(String, Value)> {
        let mut records = Vec::new();
        for service in std::fs::read_dir(self.path().join("services")).unwrap() {
            let service = service.unwrap().path();
            let name = service.file_name().unwrap().to_string_lossy().into_owned();
            for call in std::fs::read_dir(&service).unwrap() {
                let call = call.unwrap().path();
                // `.partial` files are calls a kill interrupted before they took effect.
                if call.extension().is_some_and(|e| e == "json") {
                    let text = std::fs::read_to_string(&call).unwrap();
                    records.push((name.clone(), serde_json::from_str(&text).unwrap()));
                }
            }
        }
        records
    }

    /// The step keys the scenarios guest executed, in order.
    pub fn effects(&self) -> Vec<String> {
        let log = self.path().join("ledger/effects.log");
        if log.exists() {
            read_lines(&log)
        } else {
            Vec::new()
        }
    }

    /// Open the scratch database for inspection.
    pub fn sql(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.db()).expect("open the scratch database")
    }

    /// `(step_key, status, attempts)` of every step of `workflow_id`, in order.
    pub fn steps(&self, workflow_id: &str) -> Vec<(String, String, u32)> {
        self.try_steps(workflow_id).expect("read the steps table")
    }

    /// Like [`Self::steps`], for polling a database that may not exist yet.
    pub fn try_steps(&self, workflow_id: &str) -> rusqlite::Result<Vec<(String, String, u32)>> {
        let conn = rusqlite::Connection::open_with_flags(
            self.db(),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )?;
        let mut statement = conn.prepare(
            "SELECT step_key, status, attempts FROM steps WHERE workflow_id = ?1 ORDER BY sequence",
        )?;
        statement
            .query_map([workflow_id], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?))
            })?
            .collect()
    }

    /// Wait until `workflow_id` has a step in `status` whose key starts with `prefix`.
    pub fn wait_for_step(&self, workflow_id: &str, prefix: &str, status: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let steps = self.try_steps(workflow_id).unwrap_or_default();
            if steps
                .iter()
                .any(|s| s.0.starts_with(prefix) && s.1 == status)
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no {status} {prefix} step: {steps:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The recorded status of workflow `id`, if it exists.
    pub fn workflow_status(&self, id: &str) -> Option<String> {
        self.sql()
            .query_row("SELECT status FROM workflows WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .ok()
    }

    /// Every row of both tables, to prove that a refused run changed nothing.
    pub fn dump(&self) -> String {
        if !self.db().exists() {
            return String::new();
        }
        let conn = self.sql();
        let mut dump = String::new();
        for table in ["workflows", "steps"] {
            let Ok(mut statement) = conn.prepare(&format!("SELECT * FROM {table} ORDER BY 1, 2"))
            else {
                continue;
            };
            let columns = statement.column_count();
            let rows = statement
                .query_map([], |row| {
                    (0..columns)
                        .map(|i| {
                            row.get::<_, rusqlite::types::Value>(i)
                                .map(|v| format!("{v:?}"))
                        })
                        .collect::<Result<Vec<_>, _>>()
                })
                .unwrap();
            for row in rows {
                dump.push_str(&format!("{table}: {}\n", row.unwrap().join(" | ")));
            }
        }
        dump
    }

    /// The step order the scenarios' `reorder` workflow reads between steps,
    /// to play a code change between runs.
    pub fn set_step_order(&self, order: &str) {
        std::fs::write(self.path().join("ledger/order"), order).unwrap();
    }

    pub fn integrity_ok(&self) -> bool {
        let result: String = self
            .sql()
            .query_row("PRAGMA integrity_check", [], |row| row.get(0))
            .unwrap();
        result == "ok"
    }
}

/// The onboarding input for employee `id`, with `latency_ms` per service call.
pub fn employee(id: &str, latency_ms: u64) -> String {
    serde_json::json!({
        "id": id,
        "name": "Ada Lovelace",
        "email": "ada@example.com",
        "role": "engineer",
        "service_latency_ms": latency_ms,
    })
    .to_string()
}

fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The finished process, with helpers for what tests look at.
pub struct Run {
    pub output: Output,
}

impl Run {
    pub fn code(&self) -> Option<i32> {
        self.output.status.code()
    }

    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    /// The `--json` document printed on stdout.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.output.stdout)
            .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}):\n{}", self.stdout()))
    }

    /// Assert the exit code, showing the output when it differs.
    pub fn expect_code(self, code: i32) -> Self {
        assert_eq!(
            self.code(),
            Some(code),
            "unexpected exit status\n--- stdout\n{}--- stderr\n{}",
            self.stdout(),
            self.stderr()
        );
        self
    }
}

/// Run `command` to completion.
pub fn run(command: &mut Command) -> Run {
    Run {
        output: command.output().expect("start durable-host"),
    }
}

/// Spawn `command` with piped output (for kill tests).
pub fn spawn(command: &mut Command) -> Child {
    command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start durable-host")
}

/// Wait until `done` holds, failing the test after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Send `signal` (`-STOP`, `-CONT`, `-TERM`...) to process `pid` with `kill`.
pub fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {signal} {pid}");
}

/// Hex sha256 of the file at `path`, from `sha256sum`.
pub fn sha256_of(path: &Path) -> String {
    let output = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(output.status.success(), "sha256sum {}", path.display());
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}
