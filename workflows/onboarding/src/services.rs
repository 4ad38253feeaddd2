//! File-backed stand-ins for the systems onboarding talks to.
//!
//! Each service is a JSON-lines ledger under the guest directory `/services`
//! (grant it with `--dir <host dir>::/services`). Every call appends one line,
//! so the ledgers show exactly how many times each side effect really ran;
//! the answers are derived from the request, as an idempotent service's
//! would be, so a repeated call gets the same answer.

use std::fs::OpenOptions;
use std::io::Write;
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
    let path = dir.join(format!("{service}.jsonl"));
    let mut ledger = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| durable_sdk::error!("cannot open {}: {e}", path.display()))?;
    writeln!(ledger, "{line}")
        .map_err(|e| durable_sdk::error!("cannot write {}: {e}", path.display()))?;
    Ok(())
}
