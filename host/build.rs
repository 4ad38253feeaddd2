//! Embeds the WASI WIT this host implements, for `durable-host wit`.
//!
//! A guest language whose toolchain needs WIT for every interface it
//! imports (componentize-py for `wasi:http`) must build against the exact
//! WASI release the host links. That release's WIT ships in the source of
//! the `wasmtime-wasi-http` crate this build uses, which lives in cargo's
//! package cache, not in this repository: `cargo metadata` says where.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const WASI_CRATE: &str = "wasmtime-wasi-http";

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=../Cargo.lock");

    let deps = wasi_crate_dir(&manifest_dir).join("wit").join("deps");
    let mut files: Vec<PathBuf> = fs::read_dir(&deps)
        .unwrap_or_else(|e| panic!("reading {}: {e}", deps.display()))
        .map(|entry| entry.expect("listing WIT files").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "wit"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no WIT files in {}", deps.display());

    let mut source = String::from("/// WASI's WIT as this host links it: (file name, text).\n");
    source.push_str("pub const WASI_WIT: &[(&str, &str)] = &[\n");
    for path in &files {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("UTF-8 name");
        writeln!(
            source,
            "    ({name:?}, include_str!({:?})),",
            path.display().to_string()
        )
        .expect("writing to a String");
    }
    source.push_str("];\n");
    let out = PathBuf::from(env::var("OUT_DIR").expect("set by cargo")).join("wasi_wit.rs");
    fs::write(&out, source).unwrap_or_else(|e| panic!("writing {}: {e}", out.display()));
}

/// The source directory of the WASI crate the host is built with.
fn wasi_crate_dir(manifest_dir: &Path) -> PathBuf {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let target = env::var("TARGET").expect("set by cargo");
    // Only this target's packages: those the build has, and on a fresh
    // machine the manifests of the other workspace members' dependencies,
    // which cargo fetches as a build would.
    let output = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--locked",
            "--filter-platform",
        ])
        .arg(target)
        .arg("--manifest-path")
        .arg(manifest_dir.join("Cargo.toml"))
        .output()
        .expect("running cargo metadata");
    assert!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("cargo metadata prints JSON");
    let wanted = wasi_crate_version(&metadata);
    metadata["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == WASI_CRATE && p["version"] == wanted.as_str())
        .and_then(|p| p["manifest_path"].as_str())
        .and_then(|manifest| Path::new(manifest).parent())
        .unwrap_or_else(|| panic!("cargo metadata lists no {WASI_CRATE} {wanted}"))
        .to_owned()
}

/// The version of the WASI crate the host depends on (the lockfile may hold
/// others, for other packages).
fn wasi_crate_version(metadata: &serde_json::Value) -> String {
    let root = metadata["resolve"]["root"]
        .as_str()
        .expect("the host package is the root");
    let host = metadata["resolve"]["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["id"] == root)
        .expect("the root package in the resolved graph");
    host["deps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d["pkg"].as_str())
        .find_map(|id| {
            let (_, rest) = id.split_once(&format!("#{WASI_CRATE}@"))?;
            Some(rest.to_owned())
        })
        .unwrap_or_else(|| panic!("durable-host does not depend on {WASI_CRATE}"))
}
