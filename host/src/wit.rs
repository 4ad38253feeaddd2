//! The WIT this host implements, as files: what `durable-host wit` writes.
//!
//! The Rust and JavaScript SDKs carry what they need, but some guest
//! toolchains need WIT for every interface a component imports
//! (componentize-py for `wasi:http`). Taking it from the host guarantees a
//! guest is built against the WASI release the host links, not another.
//! This module only writes text; it knows nothing of components.

use std::io;
use std::path::{Path, PathBuf};

include!(concat!(env!("OUT_DIR"), "/wasi_wit.rs"));

/// The current `durable:workflow` contract.
const CONTRACT_WIT: &str = include_str!("../../guest-sdk/wit/durable.wit");

/// Write the contract as `DIR/durable.wit` and WASI's packages as
/// `DIR/deps/*.wit`, which makes DIR a WIT package directory any WIT tool
/// reads; existing files of those names are replaced. Returns the files
/// written.
pub fn write_wit(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let deps = dir.join("deps");
    std::fs::create_dir_all(&deps)?;
    let mut written = Vec::with_capacity(WASI_WIT.len() + 1);
    let contract = dir.join("durable.wit");
    std::fs::write(&contract, CONTRACT_WIT)?;
    written.push(contract);
    for (name, text) in WASI_WIT {
        let path = deps.join(name);
        std::fs::write(&path, text)?;
        written.push(path);
    }
    Ok(written)
}

/// The release of WASI the host links, as its WIT names it (`0.2.12`).
pub fn wasi_version() -> &'static str {
    package_version(wasi_file("http.wit")).unwrap_or("unknown")
}

/// The contract's release (`0.3.0`).
pub fn contract_version() -> &'static str {
    package_version(CONTRACT_WIT).unwrap_or("unknown")
}

fn wasi_file(name: &str) -> &'static str {
    WASI_WIT
        .iter()
        .find(|(file, _)| *file == name)
        .map_or("", |(_, text)| text)
}

/// `X` of the first `package ns:name@X;` line.
fn package_version(wit: &str) -> Option<&str> {
    wit.lines()
        .find_map(|line| line.trim().strip_prefix("package "))
        .and_then(|decl| decl.trim_end_matches(';').split_once('@'))
        .map(|(_, version)| version.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_written_directory_holds_the_contract_and_wasi_http() {
        let dir = tempfile::tempdir().unwrap();
        let files = write_wit(dir.path()).unwrap();
        let contract = std::fs::read_to_string(dir.path().join("durable.wit")).unwrap();
        assert!(contract.contains("world workflow"));
        let http = std::fs::read_to_string(dir.path().join("deps/http.wit")).unwrap();
        assert!(http.contains("interface outgoing-handler"));
        assert_eq!(files.len(), WASI_WIT.len() + 1);
        assert!(wasi_version().starts_with("0.2."), "{}", wasi_version());
        assert_eq!(contract_version(), "0.3.0");
    }
}
