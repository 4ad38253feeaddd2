//! durable-host: run WebAssembly workflow components durably.
//!
//! A workflow is a component of the `workflow` world in `wit/`. Each step it
//! begins through the `durable-step` interface is sequenced and checkpointed,
//! so a workflow that dies can be run again and carry on where it stopped,
//! without repeating completed steps.
//!
//! The crate is layered so that each part can change on its own:
//!
//! - [`store`]: the checkpoint store, all SQL behind [`store::CheckpointStore`].
//! - [`engine`]: replay and sequencing of one run against the recorded history.
//! - [`runtime`]: wasmtime set-up, component checks, the sandbox, and the
//!   glue from the guest's imports to the engine.
//! - [`bindings`]: code generated from the WIT contract.
//! - [`control`]: what clients do without running workflows (deploy,
//!   submit, wait, cancel); the CLI and the HTTP API both use it.
//! - [`scheduler`]: `serve`'s queues, claiming, timers and recovery.
//! - [`api`]: `serve`'s HTTP API (axum, OpenAPI), a client of [`control`].
//! - [`metrics`]: what `serve` counts, for `GET /metrics`.
//! - [`verify`]: replays stored histories against a new build, read-only.
//! - [`versions`]: moves workflows to new code (`upgrade`, `fork`).
//! - [`wit`]: the WIT the host implements, for guest toolchains.
//!
//! The `durable-host` binary adds the command line on top.

pub mod api;
pub mod bindings;
pub mod control;
pub mod engine;
pub mod metrics;
pub mod runtime;
pub mod scheduler;
pub mod schedules;
pub mod store;
pub mod verify;
pub mod versions;
pub mod wit;

/// A fresh identifier for one run of a workflow by one process.
pub fn new_run_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS; mixing in time and pid keeps ids from
    // two processes started in the same instant apart as well.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_i64(store::now_millis());
    hasher.write_u32(std::process::id());
    format!("{:016x}", hasher.finish())
}
