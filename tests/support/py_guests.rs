//! The Python guests, built as their authors build them: a virtualenv
//! under `<target>/py-guests` (kept between runs) with the SDK
//! (`guest-sdk-py`) pip-installed into it, which brings componentize-py
//! (about 20 MB downloaded once), then the SDK's `durable-build`. The SDK is
//! reinstalled and the components rebuilt only when their sources changed.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use crate::artifacts;
use crate::stamp::stamp;

/// The Python components, built once per test binary.
pub struct PyGuests {
    /// `workflows/onboarding-py`.
    pub onboarding: PathBuf,
    /// `tests/fixtures/python`: the SDK's cases, by `{"case": ...}`.
    pub scenarios: PathBuf,
    /// `tests/fixtures/python-http`: outbound HTTP, built with `--http`
    /// against the host under test.
    pub http: PathBuf,
    /// The virtualenv's python, with the SDK installed.
    pub python: PathBuf,
}

pub fn py_guests() -> &'static PyGuests {
    static BUILT: OnceLock<PyGuests> = OnceLock::new();
    BUILT.get_or_init(|| {
        let tests = Path::new(env!("CARGO_MANIFEST_DIR"));
        let workspace = tests.parent().unwrap();
        let sdk = workspace.join("guest-sdk-py");
        // target/release/durable-host -> target/py-guests
        let root = artifacts()
            .host
            .ancestors()
            .nth(2)
            .unwrap()
            .join("py-guests");
        std::fs::create_dir_all(&root).unwrap();
        let python = install_sdk(&root, &sdk);

        // The sources are copied out of the repository, so that the build
        // leaves no __pycache__ behind in it.
        let sources = [
            (
                "onboarding",
                workspace.join("workflows/onboarding-py"),
                "onboarding.py",
            ),
            ("scenarios", tests.join("fixtures/python"), "scenarios.py"),
            ("http", tests.join("fixtures/python-http"), "charge.py"),
        ];
        let host = &artifacts().host;
        let stamp_of_sdk = stamp(&[sdk.join("src/durable"), workspace.join("guest-sdk/wit")])
            // Its pins (componentize-py) too.
            + &stamp(&[sdk.join("pyproject.toml")]);
        let mut builds = Vec::new();
        for (name, dir, app) in &sources {
            let wasm = root.join(format!("{name}-py.wasm"));
            let mut stamp = format!("{stamp_of_sdk}-{}", stamp(std::slice::from_ref(dir)));
            if *name == "http" {
                // The host's WASI WIT, which the build takes, moves with wasmtime.
                stamp += &crate::stamp::stamp(&[workspace.join("Cargo.lock")]);
            }
            let stamp_file = root.join(format!("{name}-py.stamp"));
            if wasm.is_file() && std::fs::read_to_string(&stamp_file).ok() == Some(stamp.clone()) {
                continue;
            }
            let copy = root.join("src").join(name);
            let _ = std::fs::remove_dir_all(&copy);
            std::fs::create_dir_all(&copy).unwrap();
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.extension().is_some_and(|e| e == "py") {
                    std::fs::copy(&path, copy.join(path.file_name().unwrap())).unwrap();
                }
            }
            eprintln!("py_guests: building {name} with durable-build");
            // All builds at once: each is mostly one core for ~10 s. The
            // console script for one, `python -m` for the others.
            let mut command = if *name == "onboarding" {
                Command::new(python.with_file_name("durable-build"))
            } else {
                let mut command = Command::new(&python);
                command.args(["-m", "durable.build"]);
                command
            };
            if *name == "http" {
                command.arg("--http").arg("--host").arg(host);
            }
            let child = command
                .args([app, "-o"])
                .arg(&wasm)
                .current_dir(&copy)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("run durable-build");
            builds.push((name, child, stamp_file, stamp));
        }
        for (name, child, stamp_file, stamp) in builds {
            let output = child.wait_with_output().unwrap();
            assert!(
                output.status.success(),
                "durable-build of {name} failed:\n{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            eprint!("py_guests: {}", String::from_utf8_lossy(&output.stdout));
            std::fs::write(stamp_file, stamp).unwrap();
        }
        PyGuests {
            onboarding: root.join("onboarding-py.wasm"),
            scenarios: root.join("scenarios-py.wasm"),
            http: root.join("http-py.wasm"),
            python,
        }
    })
}

/// A virtualenv in `root` with the SDK installed from `sdk` (reinstalled
/// when its sources changed); returns its python.
fn install_sdk(root: &Path, sdk: &Path) -> PathBuf {
    let venv = root.join("venv");
    let python = venv.join("bin/python");
    if !python.exists() {
        eprintln!("py_guests: creating a virtualenv in {}", venv.display());
        let _ = std::fs::remove_dir_all(&venv);
        checked(
            Command::new("python3").args(["-m", "venv"]).arg(&venv),
            "python3 -m venv (Python 3.11+ with venv is needed for the Python SDK's tests)",
        );
    }
    let stamp = stamp(&[sdk.to_owned()]);
    let stamp_file = root.join("sdk.stamp");
    if std::fs::read_to_string(&stamp_file).ok() != Some(stamp.clone()) {
        eprintln!("py_guests: pip install {}", sdk.display());
        // A path requirement is always reinstalled; componentize-py, pinned
        // by the SDK, is downloaded the first time only.
        checked(
            Command::new(&python)
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                ])
                .arg(sdk),
            "pip install guest-sdk-py (PyPI must be reachable the first time)",
        );
        std::fs::write(&stamp_file, stamp).unwrap();
    }
    python
}

fn checked(command: &mut Command, what: &str) {
    let output = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        output.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
