//! File-backed stand-ins for the systems the example workflows talk to.
//!
//! Each service is a directory under the guest directory `/services` (grant
//! it with `--dir <host dir>::/services`), and every call leaves one JSON
//! file there, published with an atomic rename: a host killed mid-call
//! leaves either the whole record or none. So the directories show exactly
//! how many times each side effect really ran. The answers are derived from
//! the request, as an idempotent service's would be, so a repeated call gets
//! the same answer.

use std::hash::{BuildHasher, Hasher};
use std::path::Path;
use std::time::Duration;

use durable_sdk::{Error, current_step};
use serde::Serialize;

const SERVICES_DIR: &str = "/services";

/// Append `request` to the ledger of `service`, after the simulated latency.
pub fn call(
    service: &str,
    operation: &str,
    latency_ms: u64,
    request: impl Serialize,
) -> Result<(), Error> {
    if latency_ms > 0 {
        std::thread::sleep(Duration::from_millis(latency_ms));
    }
    let dir = Path::new(SERVICES_DIR);
    if !dir.is_dir() {
        return Err(durable_sdk::error!(
            "the mock services directory {SERVICES_DIR} is not available: run with --dir <host dir>::{SERVICES_DIR}"
        ));
    }
    let step = current_step();
    let line = serde_json::json!({
        "operation": operation,
        "idempotency_key": step.as_ref().map(|s| s.idempotency_key.as_str()),
        "attempt": step.as_ref().map(|s| s.attempt),
        "request": request,
    });
    let service_dir = dir.join(service);
    let record = service_dir.join(format!("{:016x}.json", unique()));
    let partial = record.with_extension("partial");
    let failed = |e: std::io::Error| durable_sdk::error!("the {service} service failed: {e}");
    std::fs::create_dir_all(&service_dir).map_err(failed)?;
    std::fs::write(&partial, line.to_string()).map_err(failed)?;
    std::fs::rename(&partial, &record).map_err(failed)?;
    Ok(())
}

/// A random name for a call record (seeded from WASI's random source).
fn unique() -> u64 {
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}
