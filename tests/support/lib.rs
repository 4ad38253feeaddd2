//! Shared harness for the integration tests: builds the real `durable-host`
//! binary and the guest components (once per test binary), and runs the
//! binary in a scratch directory with its own database and mock services.
//!
//! Everything is built in the release profile, the one the rest of the
//! workspace uses, so the tests reuse the build instead of compiling
//! wasmtime a second time.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod backend;
mod http_service;
pub use http_service::{HttpCall, HttpService};
mod js_guests;
pub use js_guests::{JsGuests, js_guests};
mod py_guests;
pub use py_guests::{PyGuests, py_guests};
pub mod onboarding;
mod proxy;
pub use proxy::TcpProxy;
mod stamp;

/// Paths of the built artefacts.
pub struct Artifacts {
    pub host: PathBuf,
    pub onboarding: PathBuf,
    /// Onboarding that waits for a manager's approval (a signal).
    pub onboarding_approval: PathBuf,
    pub scenarios: PathBuf,
    pub not_a_workflow: PathBuf,
    /// Checkout, which calls services over HTTP.
    pub checkout: PathBuf,
}

/// Build the host and the guests (a no-op when they are up to date).
pub fn artifacts() -> &'static Artifacts {
    static BUILT: OnceLock<Artifacts> = OnceLock::new();
    BUILT.get_or_init(|| {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let target = target_dir(workspace);
        // With the same packages as `cargo test` (the workspace's default
        // members), so that their shared dependencies get the same features
        // and the host is not built a second time with others.
        cargo(
            workspace,
            &target,
            &[
                "build",
                "--release",
                "-p",
                "durable-host",
                "-p",
                "durable-tests",
            ],
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
                "onboarding-approval",
                "-p",
                "scenarios",
                "-p",
                "checkout",
            ],
        );
        let wasm = target.join("wasm32-wasip2/release");
        Artifacts {
            host: target.join("release/durable-host"),
            onboarding: wasm.join("onboarding.wasm"),
            onboarding_approval: wasm.join("onboarding_approval.wasm"),
            scenarios: wasm.join("scenarios.wasm"),
            not_a_workflow: wasm.join("not-a-workflow.wasm"),
            checkout: wasm.join("checkout.wasm"),
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

/// The last commit whose SDK targeted each earlier release of the
/// contract: the onboarding workflow is built from its sources as they
/// were, as a user's old build would have been.
const RELEASED_SDKS: &[(&str, &str)] = &[
    ("0.1.0", "06a68f5cfa4a5a0603bed7a78aacc70fb9b34b9d"),
    ("0.2.0", "c1d1ca057426b20ffa27bf493631d57efb04ee08"),
];

/// The onboarding workflow built with the SDK of contract release
/// `contract` (0.1.0, 0.2.0): its sources are taken from the repository's
/// history (`git archive`), not kept as a binary, and built in a workspace
/// of their own under the target directory. Built once per test binary
/// (cargo makes it a no-op when it is up to date).
pub fn released_onboarding(contract: &str) -> PathBuf {
    static BUILDS: std::sync::Mutex<Vec<(String, PathBuf)>> = std::sync::Mutex::new(Vec::new());
    let mut builds = BUILDS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, path)) = builds.iter().find(|(c, _)| c == contract) {
        return path.clone();
    }
    let (_, commit) = RELEASED_SDKS
        .iter()
        .find(|(c, _)| *c == contract)
        .unwrap_or_else(|| panic!("no SDK release for contract {contract}"));
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let root = target_dir(workspace).join("released-sdks");
    let sources = root.join(contract);
    if !sources.join("Cargo.toml").is_file() {
        let _ = std::fs::remove_dir_all(&sources);
        std::fs::create_dir_all(&sources).unwrap();
        let archive = Command::new("git")
            .args(["archive", "--format=tar", commit])
            .args(["Cargo.lock", "guest-sdk", "wit", "workflows/onboarding"])
            .current_dir(workspace)
            .output()
            .expect("run git");
        assert!(
            archive.status.success(),
            "cannot read the SDK of contract {contract} (commit {commit}) from git history: {}\n\
             (the compatibility tests build it from the repository's history: run them in a \
             clone with its full history)",
            String::from_utf8_lossy(&archive.stderr)
        );
        let mut tar = Command::new("tar")
            .arg("-x")
            .current_dir(&sources)
            .stdin(Stdio::piped())
            .spawn()
            .expect("run tar");
        std::io::Write::write_all(tar.stdin.as_mut().unwrap(), &archive.stdout).unwrap();
        assert!(
            tar.wait().unwrap().success(),
            "tar -x of the SDK sources failed"
        );
        // The workspace as it was, cut down to the SDK and the workflow.
        std::fs::write(
            sources.join("Cargo.toml"),
            r#"[workspace]
resolver = "3"
members = ["guest-sdk", "workflows/onboarding"]

[workspace.package]
edition = "2024"
license = "Apache-2.0"
publish = false

[workspace.dependencies]
serde = { version = "1", features = ["derive"] }
serde_json = "1"

[profile.release]
debug = false
incremental = false
"#,
        )
        .unwrap();
    }
    let target = root.join("target");
    cargo(
        &sources,
        &target,
        &[
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "-p",
            "onboarding",
        ],
    );
    let copy = root.join(format!("onboarding-{contract}.wasm"));
    std::fs::copy(target.join("wasm32-wasip2/release/onboarding.wasm"), &copy).unwrap();
    builds.push((contract.to_owned(), copy.clone()));
    copy
}

/// A workflow of another repository with the SDK vendored into it: a copy
/// of `guest-sdk/` beside a crate of its own, outside this workspace (its
/// own `[workspace]`, as a repository is: the directory is under this
/// one's target). Built with this workspace's lock file into its target
/// directory, so that it reuses the crates the guests already built. Its
/// `run` greets its input in a step.
pub fn vendored_sdk_workflow() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let root = target_dir(workspace).join("vendored-sdk");
    let repo = root.join("repo");
    let _ = std::fs::remove_dir_all(&repo);
    std::fs::create_dir_all(repo.join("src")).unwrap();
    let copied = Command::new("cp")
        // Times kept: cargo then rebuilds the copy only when it changed.
        .arg("-Rp")
        .arg(workspace.join("guest-sdk"))
        .arg(repo.join("durable-sdk"))
        .status()
        .expect("run cp");
    assert!(copied.success(), "cp -R guest-sdk failed");
    std::fs::copy(workspace.join("Cargo.lock"), repo.join("Cargo.lock")).unwrap();
    std::fs::write(
        repo.join("Cargo.toml"),
        r#"[package]
name = "greeter"
version = "0.1.0"
edition = "2024"

[lib]
crate-type = ["cdylib"]

[dependencies]
durable-sdk = { path = "durable-sdk" }
serde = { version = "1", features = ["derive"] }

[workspace]
"#,
    )
    .unwrap();
    std::fs::write(
        repo.join("src/lib.rs"),
        r#"use durable_sdk::{Context, Error};

fn greet(ctx: &Context, name: String) -> Result<String, Error> {
    ctx.step("greet", || Ok(format!("hello, {name}")))
}

durable_sdk::workflow!(greet);
"#,
    )
    .unwrap();
    let target = target_dir(workspace);
    cargo(
        &repo,
        &target,
        &["build", "--release", "--target", "wasm32-wasip2"],
    );
    target.join("wasm32-wasip2/release/greeter.wasm")
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
    let mut command = Command::new(&cargo);
    // Without what cargo set for this test binary: build scripts that
    // watch a variable (ring's watches CARGO_MANIFEST_DIR) would otherwise
    // run again, and rebuild what depends on them, once for `cargo test`
    // and once for this build.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("CARGO_PKG_")
            || matches!(
                &*name,
                "CARGO_MANIFEST_DIR"
                    | "CARGO_MANIFEST_PATH"
                    | "CARGO_CRATE_NAME"
                    | "CARGO_BIN_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "CARGO_TARGET_TMPDIR"
                    | "OUT_DIR"
            )
        {
            command.env_remove(&*name);
        }
    }
    let status = command
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
/// The database is `durable.db` in the directory, or a PostgreSQL schema of
/// its own under `DURABLE_TEST_BACKEND=postgres` (see [`backend`]).
pub struct Scratch {
    dir: tempfile::TempDir,
    postgres: Option<backend::PgSchema>,
}

impl Default for Scratch {
    fn default() -> Self {
        Self::new()
    }
}

impl Scratch {
    pub fn new() -> Self {
        Self::with_postgres(backend::on_postgres())
    }

    /// A scratch on PostgreSQL (a schema of its own, see [`backend`])
    /// whatever `DURABLE_TEST_BACKEND` says: for the bench, which measures
    /// both backends in one run. Panics when PostgreSQL cannot be reached.
    pub fn on_postgres_schema() -> Self {
        Self::with_postgres(true)
    }

    fn with_postgres(postgres: bool) -> Self {
        let dir = tempfile::tempdir().expect("create a scratch directory");
        std::fs::create_dir(dir.path().join("services")).unwrap();
        std::fs::create_dir(dir.path().join("ledger")).unwrap();
        let postgres = postgres.then(backend::PgSchema::create);
        Self { dir, postgres }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The SQLite file, for the tests about what only a file has (its
    /// locks, its pages, a full disk).
    pub fn db(&self) -> PathBuf {
        assert!(
            self.postgres.is_none(),
            "this test is about the SQLite file: run it without DURABLE_TEST_BACKEND=postgres"
        );
        self.sqlite_file()
    }

    fn sqlite_file(&self) -> PathBuf {
        self.path().join("durable.db")
    }

    /// What `--db` is given: the file, or the PostgreSQL URL.
    pub fn db_arg(&self) -> std::ffi::OsString {
        match &self.postgres {
            Some(schema) => schema.url().into(),
            None => self.sqlite_file().into(),
        }
    }

    /// `--db` for a host that reaches the scratch PostgreSQL schema
    /// through `proxy` (see [`TcpProxy`]).
    pub fn db_arg_through(&self, proxy: &TcpProxy) -> String {
        let schema = self
            .postgres
            .as_ref()
            .expect("a proxy stands before PostgreSQL only");
        schema.url_through(proxy.port())
    }

    /// Whether the database is PostgreSQL.
    pub fn on_postgres(&self) -> bool {
        self.postgres.is_some()
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
            .arg(self.db_arg())
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

    /// `durable-host deploy NAME COMPONENT` on the scratch database, with
    /// the scratch service and ledger directories granted (as [`Self::run`]).
    pub fn deploy(&self, name: &str, component: &Path) {
        let dir = |name: &str| format!("{}::/{name}", self.path().join(name).display());
        let (services, ledger) = (dir("services"), dir("ledger"));
        run(&mut self.host(&[
            "deploy",
            name,
            component.to_str().unwrap(),
            "--dir",
            &services,
            "--dir",
            &ledger,
        ]))
        .expect_code(0);
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
            .arg(self.db_arg());
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

    /// How many times each step body ran, by idempotency key
    /// (`<workflow id>/<step key>`): the onboarding services' records and
    /// the scenarios' keyed ledger (`/ledger/keyed.log`).
    pub fn step_executions(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for (_, record) in self.service_records() {
            let key = record["idempotency_key"].as_str().unwrap().to_owned();
            *counts.entry(key).or_default() += 1;
        }
        let keyed = self.path().join("ledger/keyed.log");
        if keyed.exists() {
            for key in read_lines(&keyed) {
                *counts.entry(key).or_default() += 1;
            }
        }
        counts
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

    /// A connection to the scratch database (read-only on SQLite), for
    /// many queries; `None` while the SQLite file does not exist yet.
    pub fn connect(&self) -> Option<Connection> {
        if let Some(schema) = &self.postgres {
            return Some(Connection::Postgres(schema.client()));
        }
        if !self.sqlite_file().exists() {
            return None;
        }
        let conn = rusqlite::Connection::open_with_flags(
            self.sqlite_file(),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .expect("open the scratch database");
        conn.busy_timeout(Duration::from_secs(5)).unwrap();
        Some(Connection::Sqlite(conn))
    }

    /// Every row of `sql` (see [`Connection::query`]), on a connection of
    /// its own. Empty while the SQLite file does not exist yet.
    pub fn query(&self, sql: &str) -> Vec<Vec<Value>> {
        self.connect()
            .map_or_else(Vec::new, |mut conn| conn.query(sql))
    }

    /// The steps recorded as completed, by idempotency key
    /// (`<workflow id>/<step key>`, as [`Self::step_executions`] counts them).
    pub fn completed_steps(&self) -> std::collections::BTreeSet<String> {
        self.strings("SELECT workflow_id || '/' || step_key FROM steps WHERE status = 'completed'")
    }

    /// The first column of every row of `sql`, as text.
    pub fn strings(&self, sql: &str) -> std::collections::BTreeSet<String> {
        self.query(sql)
            .into_iter()
            .map(|row| match &row[0] {
                Value::String(text) => text.clone(),
                other => other.to_string(),
            })
            .collect()
    }

    /// One integer from `sql` (a query both backends read alike).
    pub fn number(&self, sql: &str) -> i64 {
        if let Some(schema) = &self.postgres {
            let row = schema
                .client()
                .query_one(sql, &[])
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
            return backend::integer(&backend::json_row(&row)[0]);
        }
        self.sql()
            .query_row(sql, [], |r| r.get(0))
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// Run `sql` (statements both backends accept, `;`-separated) on one
    /// connection: for tests that tamper with the rows as another tool could.
    pub fn execute(&self, sql: &str) {
        if let Some(schema) = &self.postgres {
            schema
                .client()
                .batch_execute(sql)
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
            return;
        }
        let conn = self.sql();
        conn.busy_timeout(Duration::from_secs(5)).unwrap();
        conn.execute_batch(sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// The names of the database's tables: none until a command created
    /// them (nor while the SQLite file does not exist).
    pub fn tables(&self) -> std::collections::BTreeSet<String> {
        self.strings(if self.on_postgres() {
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        } else {
            "SELECT name FROM sqlite_master WHERE type = 'table'"
        })
    }

    /// `(step_key, status, attempts)` of every step of `workflow_id`, in order.
    pub fn steps(&self, workflow_id: &str) -> Vec<(String, String, u32)> {
        self.try_steps(workflow_id).expect("read the steps table")
    }

    /// Like [`Self::steps`], for polling a database that may not exist yet.
    pub fn try_steps(&self, workflow_id: &str) -> rusqlite::Result<Vec<(String, String, u32)>> {
        if let Some(schema) = &self.postgres {
            let rows = schema
                .client()
                .query(
                    "SELECT step_key, status, attempts FROM steps WHERE workflow_id = $1 \
                     ORDER BY sequence",
                    &[&workflow_id],
                )
                .unwrap_or_default();
            return Ok(rows
                .iter()
                .map(|row| {
                    let attempts = backend::integer(&backend::json_row(row)[2]);
                    (row.get(0), row.get(1), attempts as u32)
                })
                .collect());
        }
        let conn = rusqlite::Connection::open_with_flags(
            self.sqlite_file(),
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
        if let Some(schema) = &self.postgres {
            return schema
                .client()
                .query_opt("SELECT status FROM workflows WHERE id = $1", &[&id])
                .ok()
                .flatten()
                .map(|row| row.get(0));
        }
        self.sql()
            .query_row("SELECT status FROM workflows WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .ok()
    }

    /// Every row of both tables, to prove that a refused run changed nothing.
    pub fn dump(&self) -> String {
        if let Some(schema) = &self.postgres {
            let mut client = schema.client();
            let mut dump = String::new();
            for table in ["workflows", "steps"] {
                let sql = format!("SELECT t::text FROM {table} t ORDER BY 1");
                for row in client.query(&sql, &[]).unwrap_or_default() {
                    dump.push_str(&format!("{table}: {}\n", row.get::<_, String>(0)));
                }
            }
            return dump;
        }
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

    /// SQLite's `integrity_check` of the file. PostgreSQL checks its own
    /// pages; there, this only checks that the database answers.
    pub fn integrity_ok(&self) -> bool {
        if let Some(schema) = &self.postgres {
            return schema.client().query_one("SELECT 1", &[]).is_ok();
        }
        let result: String = self
            .sql()
            .query_row("PRAGMA integrity_check", [], |row| row.get(0))
            .unwrap();
        result == "ok"
    }
}

/// An open connection to a scratch database ([`Scratch::connect`]):
/// polling through it spares PostgreSQL a new server process per query.
pub enum Connection {
    Sqlite(rusqlite::Connection),
    Postgres(postgres::Client),
}

impl Connection {
    /// Every row of `sql` (a query both backends read alike, without
    /// parameters), its values as JSON: integers, reals, text, null.
    pub fn query(&mut self, sql: &str) -> Vec<Vec<Value>> {
        let conn = match self {
            Self::Postgres(client) => {
                let rows = client
                    .query(sql, &[])
                    .unwrap_or_else(|e| panic!("{sql}: {e}"));
                return rows.iter().map(backend::json_row).collect();
            }
            Self::Sqlite(conn) => conn,
        };
        let mut statement = conn
            .prepare_cached(sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        let columns = statement.column_count();
        statement
            .query_map([], |row| {
                (0..columns)
                    .map(|i| {
                        Ok(match row.get::<_, rusqlite::types::Value>(i)? {
                            rusqlite::types::Value::Null => Value::Null,
                            rusqlite::types::Value::Integer(n) => n.into(),
                            rusqlite::types::Value::Real(x) => x.into(),
                            rusqlite::types::Value::Text(t) => t.into(),
                            rusqlite::types::Value::Blob(b) => b.len().into(),
                        })
                    })
                    .collect()
            })
            .and_then(|rows| rows.collect())
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }
}

/// A step's failed attempts in `history --json`: `(attempt, error, backoff_ms)`.
pub fn earlier_attempts(step: &Value) -> Vec<(u64, &str, u64)> {
    step["earlier_attempts"]
        .as_array()
        .unwrap_or_else(|| panic!("no earlier_attempts in {step}"))
        .iter()
        .map(|a| {
            (
                a["attempt"].as_u64().unwrap(),
                a["error"].as_str().unwrap(),
                a["backoff_ms"].as_u64().unwrap(),
            )
        })
        .collect()
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

/// Every thread of `pid` is stopped (after SIGSTOP).
pub fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.filter_map(Result::ok).all(|task| {
        std::fs::read_to_string(task.path().join("stat"))
            .ok()
            .and_then(|stat| {
                let (_, rest) = stat.rsplit_once(')')?;
                rest.split_whitespace().next()?.chars().next()
            })
            .is_some_and(|state| state == 'T' || state == 't')
    })
}

/// Nobody holds the write lock of the database at `db`: a process frozen
/// now cannot block everyone else's writes.
pub fn is_write_lock_free(db: &Path) -> bool {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.busy_timeout(Duration::ZERO).unwrap();
    match conn.execute_batch("BEGIN IMMEDIATE") {
        Ok(()) => {
            conn.execute_batch("ROLLBACK").unwrap();
            true
        }
        Err(_) => false,
    }
}

/// A number from the environment, for the sizes and seeds of long tests.
pub fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// The seed of a randomised test: `DURABLE_TORTURE_SEED`, or the clock.
/// Never 0, where xorshift would stay.
pub fn torture_seed() -> u64 {
    env_number("DURABLE_TORTURE_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    }) | 1
}

/// xorshift64*: small, seedable, good enough to pick delays.
pub struct Rng(pub u64);

impl Rng {
    /// A number in `0..bound`.
    pub fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % bound.max(1)
    }

    /// A duration in `min..max` milliseconds.
    pub fn millis(&mut self, min: u64, max: u64) -> Duration {
        Duration::from_millis(min + self.below(max - min))
    }
}

/// A `durable-host serve` process, its stderr (the log) in a file. Killed
/// (SIGKILL) when dropped, so that a failing test leaves no server behind.
pub struct Server {
    child: Child,
    log: PathBuf,
    pub started: Instant,
}

impl Server {
    /// `durable-host serve --db <scratch db> <args>`, logging to `<name>.log`
    /// in the scratch directory.
    pub fn start(scratch: &Scratch, name: &str, args: &[&str]) -> Self {
        Self::spawn(scratch.host(&["serve"]).args(args), scratch.path(), name)
    }

    /// Spawn `command` (a `serve`, possibly wrapped in `nsenter`, which
    /// execs it: the pid stays the server's), logging to `<name>.log` in
    /// `dir`.
    pub fn spawn(command: &mut Command, dir: &Path, name: &str) -> Self {
        let log = dir.join(format!("{name}.log"));
        let child = command
            .stdin(Stdio::null())
            .stdout(File::create(dir.join(format!("{name}.out"))).unwrap())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .expect("start durable-host serve");
        Self {
            child,
            log,
            started: Instant::now(),
        }
    }

    /// `durable-host serve --db <scratch db> <args>` whose log nobody
    /// reads: its stderr is a pipe whose reading end is closed at once, as
    /// when `serve 2>&1 | head` has ended. [`Self::log`] is empty.
    pub fn start_unread(scratch: &Scratch, args: &[&str]) -> Self {
        let mut child = scratch
            .host(&["serve"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start durable-host serve");
        drop(child.stderr.take());
        Self {
            child,
            log: scratch.path().join("unread.log"),
            started: Instant::now(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Send `signal` (`-TERM`, `-INT`) with `kill`.
    pub fn signal(&self, signal: &str) {
        crate::signal(self.pid(), signal);
    }

    /// SIGKILL, and reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        self.child.wait().unwrap();
    }

    /// The exit status, waiting at most `timeout` (`None`: still running).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A `kB` or count field of `/proc/PID/status` (`VmRSS`, `Threads`).
    pub fn proc_status(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc/PID/status of the server");
        status
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{field}:")))
            .and_then(|value| value.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc/PID/status"))
    }

    /// The `http://HOST:PORT` of its API (`serve --listen`), once it has
    /// logged it.
    pub fn api_base(&self) -> String {
        let mut addr = None;
        wait_until(
            "serve logs `listening addr=`",
            Duration::from_secs(60),
            || {
                addr = self.log().lines().find_map(|line| {
                    let rest = line.split_once("listening addr=")?.1;
                    Some(rest.split_whitespace().next()?.to_owned())
                });
                addr.is_some()
            },
        );
        format!("http://{}", addr.unwrap())
    }

    /// Workflow ids named by log lines containing `message`.
    pub fn logged_ids(&self, message: &str) -> Vec<String> {
        self.log()
            .lines()
            .filter(|line| line.contains(message))
            .filter_map(|line| {
                let (_, rest) = line.split_once("workflow_id=\"")?;
                Some(rest.split('"').next()?.to_owned())
            })
            .collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
