//! The JavaScript guests, built as their authors build them: the packages
//! of each npm project installed from its lockfile (`npm ci`, from npm's
//! cache after the first time; it also refreshes the project's packed copy
//! of the SDK), then the SDK's `durable-build`. Components go to
//! `<target>/js-guests`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use crate::artifacts;

/// Paths of the built JavaScript components.
pub struct JsGuests {
    /// `workflows/onboarding-js`, in TypeScript.
    pub onboarding: PathBuf,
    /// `tests/fixtures/js-sdk`: the SDK's cases, by `{"case": ...}`.
    pub scenarios: PathBuf,
}

/// Both components, built once per process.
pub fn js_guests() -> &'static JsGuests {
    static BUILT: OnceLock<JsGuests> = OnceLock::new();
    BUILT.get_or_init(|| {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        // target/release/durable-host -> target/js-guests
        let out = artifacts()
            .host
            .ancestors()
            .nth(2)
            .unwrap()
            .join("js-guests");
        std::fs::create_dir_all(&out).unwrap();
        let example = workspace.join("workflows/onboarding-js");
        let onboarding = build(&example, "onboarding.ts", &out.join("onboarding.wasm"));
        // The SDK's TypeScript declarations type-check the example (strict).
        command(
            &example,
            Command::new("npm").args(["run", "--silent", "check"]),
        );
        JsGuests {
            onboarding,
            scenarios: build(
                &workspace.join("tests/fixtures/js-sdk"),
                "scenarios.js",
                &out.join("js-scenarios.wasm"),
            ),
        }
    })
}

fn build(project: &Path, module: &str, out: &Path) -> PathBuf {
    command(
        project,
        Command::new("npm").args(["ci", "--no-audit", "--no-fund", "--loglevel=error"]),
    );
    command(
        project,
        Command::new(project.join("node_modules/.bin/durable-build"))
            .arg(module)
            .arg("-o")
            .arg(out),
    );
    out.to_owned()
}

fn command(dir: &Path, command: &mut Command) {
    let status = command
        .current_dir(dir)
        .stdin(Stdio::null())
        // Progress, not output: durable-bench's stdout is its report.
        .stdout(std::io::stderr())
        .status()
        .unwrap_or_else(|e| panic!("{command:?} (npm and Node.js are needed): {e}"));
    assert!(
        status.success(),
        "{command:?} in {}: {status}",
        dir.display()
    );
}
