//! `durable-host wit DIR`: the WIT the host implements, written for a
//! guest toolchain (see [`durable_host::wit`]).

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use serde_json::json;

use super::exit;
use super::report::print_json;

pub fn write(json_mode: bool, dir: &Path) -> anyhow::Result<ExitCode> {
    let files = durable_host::wit::write_wit(dir)
        .with_context(|| format!("cannot write the WIT into {}", dir.display()))?;
    let contract = durable_host::wit::contract_version();
    let wasi = durable_host::wit::wasi_version();
    if json_mode {
        print_json(&json!({
            "dir": dir,
            "files": files,
            "contract": format!("durable:workflow@{contract}"),
            "wasi": wasi,
        }));
    } else {
        outln!(
            "wrote durable:workflow@{contract} and WASI {wasi} ({} files) into {}",
            files.len(),
            dir.display()
        );
    }
    Ok(ExitCode::from(exit::SUCCESS))
}
