//! User mistakes and guest failures: each gets a one-line cause and a hint
//! with the documented exit code, and nothing in the database is lost.

use std::path::Path;

use durable_tests::{Run, Scratch, artifacts, run};
use serde_json::json;

/// A user error: exit 2, `error:` then `hint:`, no panic or backtrace.
fn assert_user_error(result: &Run, cause: &str) {
    assert_eq!(
        result.code(),
        Some(2),
        "exit code\n{}{}",
        result.stdout(),
        result.stderr()
    );
    let stderr = result.stderr();
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(
        lines[0].starts_with("error: ") && lines[0].contains(cause),
        "cause `{cause}` in:\n{stderr}"
    );
    assert!(
        lines
            .iter()
            .skip(1)
            .any(|l| l.trim_start().starts_with("hint: ")),
        "a hint in:\n{stderr}"
    );
    assert!(
        !stderr.contains("panicked") && !stderr.contains("stack backtrace"),
        "{stderr}"
    );
}

#[test]
fn a_missing_component_file() {
    let scratch = Scratch::new();
    let result = run(&mut scratch.run(Path::new("nope/onboarding.wasm"), "x"));
    assert_user_error(&result, "cannot read nope/onboarding.wasm");
    assert!(scratch.tables().is_empty(), "nothing was created");
}

#[test]
fn a_file_that_is_not_wasm() {
    let scratch = Scratch::new();
    let path = scratch.path().join("readme.wasm");
    std::fs::write(&path, "just text").unwrap();
    assert_user_error(
        &run(&mut scratch.run(&path, "x")),
        "is not a WebAssembly file",
    );
}

#[test]
fn a_core_module_instead_of_a_component() {
    let scratch = Scratch::new();
    let path = scratch.path().join("core.wasm");
    std::fs::write(&path, b"\0asm\x01\0\0\0").unwrap();
    assert_user_error(
        &run(&mut scratch.run(&path, "x")),
        "core WebAssembly module, not a component",
    );
}

#[test]
fn a_component_of_another_world_records_nothing() {
    let scratch = Scratch::new();
    let result = run(scratch
        .run(&artifacts().not_a_workflow, "x")
        .args(["--input", "null"]));
    assert_user_error(&result, "is a component, but not a durable workflow");
    assert_eq!(
        scratch.dump(),
        "",
        "no workflow row for a component that cannot run"
    );
}

#[test]
fn an_import_this_host_lacks_is_refused_before_compiling() {
    let scratch = Scratch::new();
    // A package this host does not provide, around some code to compile.
    let component = wat::parse_str(
        r#"(component
            (import "wasi:io/poll@0.2.3" (instance))
            (import "wasi:http/outgoing-handler@0.2.3" (instance))
            (import "wasi:keyvalue/store@0.2.0-draft" (instance))
            (core module (func (export "f") (result i32) i32.const 1)))"#,
    )
    .unwrap();
    let path = scratch.path().join("kv.wasm");
    std::fs::write(&path, component).unwrap();
    let cache = scratch.path().join("cache");
    let started = std::time::Instant::now();
    let result = run(scratch
        .run(&path, "x")
        .args(["--input", "null", "--cache-dir"])
        .arg(&cache));
    assert_user_error(
        &result,
        "kv.wasm imports wasi:keyvalue/store@0.2.0-draft, which this host does not provide \
         (a workflow may import durable:workflow and WASI 0.2's wasi:cli, wasi:clocks, \
         wasi:filesystem, wasi:http, wasi:io, wasi:random and wasi:sockets)",
    );
    assert!(
        result
            .stderr()
            .contains("rebuild it without the code that imports wasi:keyvalue"),
        "{}",
        result.stderr()
    );
    assert_eq!(result.stderr().lines().count(), 2, "{}", result.stderr());
    // Refused from its imports: nothing was compiled, so nothing was cached.
    let cached = std::fs::read_dir(&cache).map_or(0, |entries| entries.count());
    assert_eq!(cached, 0, "cache entries in {}", cache.display());
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert_eq!(scratch.dump(), "");
}

#[test]
fn invalid_json_input() {
    let scratch = Scratch::new();
    let result = run(scratch
        .run(&artifacts().onboarding, "x")
        .args(["--input", "{id: 1}"]));
    assert_user_error(&result, "--input is not valid JSON");
    assert!(scratch.tables().is_empty(), "nothing was created");
}

#[test]
fn a_different_input_for_an_existing_workflow() {
    let scratch = Scratch::new();
    run(scratch.onboarding("emp-i").args(["--crash-after", "1"])).expect_code(3);
    let before = scratch.dump();
    let other = durable_tests::employee("someone-else", 0);
    let result = run(scratch
        .run(&artifacts().onboarding, "emp-i")
        .args(["--input", &other]));
    assert_eq!(result.code(), Some(2));
    assert!(
        result
            .stderr()
            .contains("was started with a different input"),
        "{}",
        result.stderr()
    );
    assert_eq!(scratch.dump(), before);
}

#[test]
fn a_database_in_a_missing_directory() {
    let scratch = Scratch::new();
    if scratch.on_postgres() {
        // About the SQLite file's path.
        return;
    }
    let mut command = std::process::Command::new(&artifacts().host);
    command
        .current_dir(scratch.path())
        .arg("run")
        .arg(&artifacts().onboarding);
    command.args(["--workflow-id", "x", "--db", "no/such/dir/durable.db"]);
    assert_user_error(&run(&mut command), "directory no/such/dir does not exist");
}

#[test]
fn a_file_that_is_not_a_database_is_left_untouched() {
    let scratch = Scratch::new();
    if scratch.on_postgres() {
        // About the SQLite file: somebody else's file where it should be.
        return;
    }
    let garbage = "this is not sqlite, but it is somebody's file\n".repeat(200);
    std::fs::write(scratch.db(), &garbage).unwrap();
    assert_user_error(
        &run(&mut scratch.onboarding("x")),
        "is not a durable-host database",
    );
    assert_eq!(std::fs::read_to_string(scratch.db()).unwrap(), garbage);
}

#[test]
fn a_missing_directory_to_grant() {
    let scratch = Scratch::new();
    let mut command = scratch.onboarding("x");
    command.args(["--dir", "missing::/data"]);
    let result = run(&mut command);
    assert_eq!(result.code(), Some(2));
    assert!(
        result.stderr().contains("missing: no such directory"),
        "{}",
        result.stderr()
    );
}

#[test]
fn a_guest_panic_suspends_the_workflow_with_its_message() {
    let scratch = Scratch::new();
    let suspended = run(scratch
        .scenario("p", json!({"scenario": "panic"}))
        .arg("--json"))
    .expect_code(7)
    .json();
    assert_eq!(suspended["status"], "suspended");
    let error = suspended["error"].as_str().unwrap();
    assert!(
        error.starts_with("guest panicked: ") && error.contains("boom: the step blew up"),
        "{error}"
    );
    // A panic is a bug, not the step's answer: the step is left unfinished,
    // its attempt recorded as interrupted with the panic, for fixed code.
    assert_eq!(
        scratch.steps("p"),
        vec![
            ("fine#000001".into(), "completed".into(), 1),
            ("explode#000001".into(), "running".into(), 1)
        ]
    );
    // `interrupted` is 0/1 on SQLite, a boolean on PostgreSQL: both test it bare.
    let interrupted = scratch.strings(
        "SELECT error FROM step_attempts WHERE step_key = 'explode#000001' AND interrupted",
    );
    assert!(
        interrupted.len() == 1 && interrupted.iter().all(|e| e.contains("boom")),
        "{interrupted:?}"
    );

    // Running it again runs nothing: a suspended workflow waits for `resume`.
    let again = run(scratch
        .scenario("p", json!({"scenario": "panic"}))
        .arg("--json"))
    .expect_code(7)
    .json();
    assert_eq!(again["already_finished"], true);
    assert_eq!(scratch.effects(), ["fine#000001", "explode#000001"]);
    assert!(scratch.integrity_ok());
}

#[test]
fn a_trap_records_the_last_lines_the_guest_wrote_to_stderr() {
    let scratch = Scratch::new();
    let result = run(scratch
        .scenario("t", json!({"scenario": "stderr_trap"}))
        .arg("--json"))
    .expect_code(7);
    let said = "guest trapped: wasm trap: wasm `unreachable` instruction executed; its stderr \
                before that: warming up | Error: the card was declined | at charge \
                (workflow.js:12:9)";
    assert_eq!(result.json()["error"], said);
    let history = run(&mut scratch.host(&["history", "t", "--json"]))
        .expect_code(0)
        .json();
    assert_eq!(history["error"], said);
    let listed = run(&mut scratch.host(&["list", "--json"])).expect_code(0);
    assert!(
        listed.stdout().contains("Error: the card was declined"),
        "{}",
        listed.stdout()
    );
}

#[test]
fn a_workflow_error_is_recorded() {
    let scratch = Scratch::new();
    let result = run(&mut scratch.scenario("f", json!({"scenario": "fail"}))).expect_code(1);
    assert!(
        result
            .stdout()
            .contains("error: the workflow gave up on purpose"),
        "{}",
        result.stdout()
    );
    assert_eq!(scratch.workflow_status("f").as_deref(), Some("failed"));
}

#[test]
fn a_step_value_that_is_not_json_suspends_the_workflow() {
    let scratch = Scratch::new();
    let suspended = run(scratch
        .scenario("j", json!({"scenario": "invalid_json"}))
        .arg("--json"))
    .expect_code(7)
    .json();
    assert!(
        suspended["error"]
            .as_str()
            .unwrap()
            .contains("not valid JSON"),
        "{suspended}"
    );
    assert_eq!(
        scratch.steps("j"),
        vec![("raw#000001".into(), "running".into(), 1)]
    );
}

#[test]
fn the_guest_sees_only_what_the_command_line_grants() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let scratch = Scratch::new();
    let view = run(scratch.scenario("s", json!({"scenario": "sandbox"})).args([
        "--env",
        &format!("PROBE_PORT={port}"),
        "--json",
    ]))
    .expect_code(0)
    .json();
    let output = &view["output"];
    assert_eq!(
        output["env"],
        json!([["PROBE_PORT", port]]),
        "no inherited environment"
    );
    assert_eq!(
        output["etc_passwd_readable"], false,
        "no ambient file system"
    );
    assert_eq!(
        output["ledger_visible"], true,
        "granted directories are visible"
    );
    assert_ne!(
        output["connect"], "connected",
        "no network: {}",
        output["connect"]
    );
}

#[test]
fn postgres_over_tls_runs_and_a_certificate_that_does_not_pass_is_refused_in_one_line() {
    let scratch = Scratch::new();
    if !scratch.on_postgres() {
        // About the connection to a PostgreSQL server.
        return;
    }
    let url = scratch.db_arg().into_string().unwrap();
    let with = |params: &str| {
        let separator = if url.contains('?') { '&' } else { '?' };
        format!("{url}{separator}{params}")
    };
    let host = |args: &[&str], db: &str| {
        let mut command = std::process::Command::new(&artifacts().host);
        command
            .current_dir(scratch.path())
            .args(args)
            .args(["--db", db]);
        run(&mut command)
    };
    let scenario = artifacts().scenarios.to_str().unwrap().to_owned();
    let input = json!({"scenario": "steps", "items": 3}).to_string();
    let args = [
        "run",
        scenario.as_str(),
        "--workflow-id",
        "tls",
        "--input",
        input.as_str(),
    ];
    host(&args, &with("sslmode=require")).expect_code(0);
    assert_eq!(scratch.workflow_status("tls").as_deref(), Some("completed"));

    // The server's certificate (Debian's, self-signed) as the only root:
    // verify-ca passes, verify-full finds it is not issued to 127.0.0.1.
    let mut client = scratch.connect().unwrap();
    let cert = client.query("SHOW ssl_cert_file")[0][0].clone();
    let cert = cert.as_str().unwrap();
    let list = ["list", "--json"];
    host(
        &list,
        &with(&format!("sslmode=verify-ca&sslrootcert={cert}")),
    )
    .expect_code(0);
    let refused = host(
        &list,
        &with(&format!("sslmode=verify-full&sslrootcert={cert}")),
    );
    assert_user_error(&refused, "TLS with the PostgreSQL server failed");
    assert!(
        refused.stderr().contains("hint: give sslrootcert=PATH"),
        "{}",
        refused.stderr()
    );
    assert!(
        refused.stderr().contains("127.0.0.1"),
        "{}",
        refused.stderr()
    );
    assert_user_error(
        &host(&list, &with("sslmode=verify-full")),
        "needs the roots to check the server's certificate against",
    );
}
