//! A JavaScript guest built with componentize-js's default options, which
//! import wasi:http: it instantiates, and its `fetch` from a step goes
//! through the allow-list like any other guest's request.
//!
//! The first run installs componentize-js from the npm registry into the
//! target directory (kept for later runs) and builds the component.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use durable_tests::{HttpService, Scratch, artifacts, run};
use serde_json::json;

/// `tests/fixtures/fetch-js` built into a component, once per test binary.
fn fetch_js() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/fetch-js");
        let workspace = fixture.ancestors().nth(3).unwrap().to_owned();
        let host = &artifacts().host;
        // target/release/durable-host -> target/js-guests/fetch-js
        let dir = host.ancestors().nth(2).unwrap().join("js-guests/fetch-js");
        std::fs::create_dir_all(&dir).unwrap();
        for file in ["package.json", "workflow.js"] {
            std::fs::copy(fixture.join(file), dir.join(file)).unwrap();
        }
        let built = dir.join("fetch.wasm");
        let componentize = dir.join("node_modules/.bin/componentize-js");
        if !componentize.exists() {
            eprintln!("js_guest: installing componentize-js with npm (once)");
            npm(
                &dir,
                &["install", "--no-audit", "--no-fund", "--loglevel=error"],
            );
        }
        let wit = workspace.join("guest-sdk/wit");
        let status = Command::new(&componentize)
            .current_dir(&dir)
            .args(["workflow.js", "--wit"])
            .arg(&wit)
            .args(["--world-name", "workflow", "-o"])
            .arg(&built)
            .stdin(Stdio::null())
            .status()
            .expect("run componentize-js");
        assert!(status.success(), "componentize-js failed: {status}");
        built
    })
}

fn npm(dir: &Path, args: &[&str]) {
    let status = Command::new("npm")
        .current_dir(dir)
        .args(args)
        .stdin(Stdio::null())
        .status()
        .expect("npm is needed to build the JavaScript guest");
    assert!(status.success(), "npm {args:?} failed: {status}");
}

fn fetch(scratch: &Scratch, id: &str, url: &str, allow: Option<&str>) -> durable_tests::Run {
    let input = json!({ "url": url }).to_string();
    let mut command = scratch.host(&["run", fetch_js().to_str().unwrap()]);
    command
        .args(["--workflow-id", id, "--input", &input, "--json"])
        .stdin(Stdio::null());
    if let Some(allow) = allow {
        command.args(["--allow-http", allow]);
    }
    run(&mut command)
}

#[test]
fn a_default_componentize_js_build_fetches_only_what_it_is_granted() {
    let scratch = Scratch::new();
    let service = HttpService::start();
    let url = format!("{}/v1/notes", service.url());

    let done = fetch(&scratch, "js-1", &url, Some(service.address())).expect_code(0);
    assert_eq!(
        done.json()["output"],
        json!({ "status": 200, "answer": { "id": "notes-1" } })
    );
    assert_eq!(service.calls().len(), 1);
    assert_eq!(service.calls()[0].method, "POST");
    // Replayed: no second call.
    fetch(&scratch, "js-1", &url, Some(service.address())).expect_code(0);
    assert_eq!(service.calls().len(), 1);
    let history = run(&mut scratch.host(&["history", "js-1", "--json"]))
        .expect_code(0)
        .json();
    let request = &history["requests"][0];
    assert_eq!(request["step"], "call#000001");
    assert!(
        request["text"]
            .as_str()
            .unwrap()
            .starts_with(&format!("POST {url}: 200 in ")),
        "{request}"
    );

    // Not granted: refused, and the log says why.
    let refused = fetch(&scratch, "js-2", &url, None).expect_code(1);
    assert_eq!(refused.json()["status"], "failed");
    assert_eq!(service.calls().len(), 1);
    let history = run(&mut scratch.host(&["history", "js-2", "--json"]))
        .expect_code(0)
        .json();
    let reason = history["requests"][0]["text"].as_str().unwrap();
    assert!(
        reason.contains("refused: ") && reason.contains("--allow-http"),
        "{reason}"
    );
}
