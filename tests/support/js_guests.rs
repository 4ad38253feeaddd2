//! The JavaScript guests, built as their authors build them: the packages
//! of each npm project installed from its lockfile (`npm ci`, from npm's
//! cache after the first time; it also refreshes the project's packed copy
//! of the SDK), then the SDK's `durable-build`. Components go to
//! `<target>/js-guests`, and are built again only when the SDK, the
//! contract or the project changed.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use crate::artifacts;
use crate::stamp::stamp;

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
        let sdk = workspace.join("guest-sdk-js");
        // What a build reads besides its project (not the SDK's copy of
        // the WIT, which npm's prepare step makes).
        let sdk_sources = ["index.js", "index.d.ts", "package.json", "bin"]
            .iter()
            .map(|file| sdk.join(file))
            .chain([workspace.join("guest-sdk/wit")])
            .collect::<Vec<_>>();
        let sdk_stamp = stamp(&sdk_sources);
        let example = workspace.join("workflows/onboarding-js");
        let onboarding = out.join("onboarding.wasm");
        if build(&example, "onboarding.ts", &onboarding, &sdk_stamp) {
            // The SDK's TypeScript declarations type-check the example (strict).
            command(
                &example,
                Command::new("npm").args(["run", "--silent", "check"]),
            );
        }
        let scenarios = out.join("js-scenarios.wasm");
        let fixture = workspace.join("tests/fixtures/js-sdk");
        build(&fixture, "scenarios.js", &scenarios, &sdk_stamp);
        JsGuests {
            onboarding,
            scenarios,
        }
    })
}

/// Build `module` of `project` into `out`, unless it was built from the
/// same sources; whether it was built.
fn build(project: &Path, module: &str, out: &Path, sdk_stamp: &str) -> bool {
    let stamp = format!("{sdk_stamp}-{}", stamp(&[project.to_owned()]));
    let stamp_file = out.with_extension("stamp");
    if out.is_file() && std::fs::read_to_string(&stamp_file).ok().as_deref() == Some(&stamp) {
        return false;
    }
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
    std::fs::write(stamp_file, stamp).unwrap();
    true
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
