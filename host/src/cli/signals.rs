//! `durable-host signal` and `get-event`: talking to a workflow while it
//! runs (see [`durable_host::control`]).

use std::process::ExitCode;
use std::time::Duration;

use serde_json::json;

use durable_host::control::{self, Signal};
use durable_host::store::Database;

use super::exit;
use super::inspect::{open_existing, open_to_read};
use super::report::print_json;

pub fn signal(db: &Database, json_mode: bool, signal: &Signal<'_>) -> anyhow::Result<ExitCode> {
    let store = &*open_existing(db)?;
    let (sent, new) = control::send_signal(store, signal)?;
    if json_mode {
        print_json(&json!({
            "workflow_id": sent.workflow_id,
            "name": sent.name,
            "signal_id": sent.signal_id,
            "sent_at_ms": sent.sent_at,
            "duplicate": !new,
        }));
    } else if new {
        outln!(
            "signal `{}` ({}) sent to workflow {}",
            sent.name,
            sent.signal_id,
            sent.workflow_id
        );
    } else {
        outln!(
            "signal {} was sent to workflow {} before; this one was ignored",
            sent.signal_id,
            sent.workflow_id
        );
    }
    Ok(ExitCode::from(exit::SUCCESS))
}

pub fn get_event(
    db: &Database,
    json_mode: bool,
    id: &str,
    key: &str,
    wait: Option<Duration>,
) -> anyhow::Result<ExitCode> {
    let store = &*open_to_read(db)?;
    let event = control::published_event(store, id, key, wait)?;
    if json_mode {
        let value: serde_json::Value = serde_json::from_str(&event.value)?;
        print_json(&json!({
            "workflow_id": id,
            "key": event.key,
            "value": value,
            "step": event.step_key.as_str(),
            "published_at_ms": event.published_at,
        }));
    } else {
        outln!("{}", event.value);
    }
    Ok(ExitCode::from(exit::SUCCESS))
}
