//! `durable-host upgrade` and `fork`: moving workflows to new code, as
//! [`durable_host::versions`] does it, reported for people or for scripts.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use serde::Serialize;

use durable_host::runtime::{ComponentFile, Runtime, RuntimeConfig};
use durable_host::store::{CheckpointStore, Database};
use durable_host::verify::Selection;
use durable_host::versions::{self, ForkRequest, IN_FLIGHT, UpgradeResult};

use super::args::CacheArgs;
use super::exit;
use super::report::print_json;
use super::table::{MAX_CELL_CHARS, preview};

/// A runtime for verifying replays, which have a timeout.
fn runtime(cache: &CacheArgs) -> anyhow::Result<Runtime> {
    Ok(Runtime::new(RuntimeConfig {
        interruptible: true,
        cache: cache.cache(),
        echo_output: false,
        pooled_runs: None,
    })?)
}

#[derive(Serialize)]
struct UpgradeJson {
    workflow_id: String,
    /// `upgraded`, `already_there` or `refused`.
    result: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

pub fn upgrade(
    db: &Database,
    json_mode: bool,
    workflow_ids: Vec<String>,
    all: bool,
    target: &str,
    timeout: Duration,
    cache: &CacheArgs,
) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        db.exists(),
        "no database at {db}: there are no workflows to upgrade (pass --db PATH)"
    );
    let store = &*db.open()?;
    let deployment = versions::deployment(store, target)?;
    let bytes = store.component(&deployment.sha256)?.ok_or_else(|| {
        anyhow::anyhow!(
            "the component of deployment {target} is missing from the database; deploy it again"
        )
    })?;
    let runtime = runtime(cache)?;
    let file = ComponentFile::from_bytes(format!("deployment {target}").into(), bytes)?;
    let component = runtime.compile(&file)?;
    let selection = if all {
        Selection::Statuses(IN_FLIGHT.to_vec())
    } else {
        Selection::Ids(workflow_ids)
    };
    let (mut moved, mut refused) = (0u64, 0u64);
    let mut results = Vec::new();
    versions::upgrade(
        db,
        &runtime,
        &deployment,
        &component,
        &selection,
        timeout,
        |workflow, result| {
            let id = preview(&workflow.id, MAX_CELL_CHARS);
            let (name, reason) = match result {
                UpgradeResult::Upgraded { recorded_steps } => {
                    moved += 1;
                    if !json_mode {
                        outln!("{id}  upgraded (its {recorded_steps} recorded steps replay)");
                    }
                    ("upgraded", None)
                }
                UpgradeResult::AlreadyThere => {
                    if !json_mode {
                        outln!("{id}  already on it");
                    }
                    ("already_there", None)
                }
                UpgradeResult::Refused(reason) => {
                    refused += 1;
                    if !json_mode {
                        outln!("{id}  left on its code: {reason}");
                    }
                    ("refused", Some(reason.clone()))
                }
            };
            results.push(UpgradeJson {
                workflow_id: workflow.id.clone(),
                result: name,
                reason,
            });
        },
    )?;
    if json_mode {
        print_json(&serde_json::json!({
            "deployment": deployment.name,
            "version": deployment.version,
            "component_sha256": deployment.sha256,
            "workflows": results,
            "upgraded": moved,
            "refused": refused,
        }));
    } else {
        outln!(
            "{moved} upgraded to {} version {}, {refused} left on their code",
            deployment.name,
            deployment.version
        );
    }
    Ok(ExitCode::from(if refused == 0 {
        exit::SUCCESS
    } else {
        exit::NON_DETERMINISM
    }))
}

pub fn fork(
    db: &Database,
    json_mode: bool,
    source: &str,
    from_step: u32,
    new_id: Option<&str>,
    component: Option<&str>,
    cache: &CacheArgs,
) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        db.exists(),
        "no database at {db}: there is no workflow to fork (pass --db PATH)"
    );
    let store = &*db.open()?;
    let target = component
        .map(|spec| component_of(store, spec, cache))
        .transpose()?;
    let forked = versions::fork(
        store,
        &ForkRequest {
            source,
            from_step,
            id: new_id,
            component_sha256: target.as_ref().map(|(sha256, _)| sha256.as_str()),
            deployment: target.as_ref().and_then(|(_, name)| name.as_deref()),
        },
    )?;
    if json_mode {
        print_json(&serde_json::json!({
            "workflow_id": forked.id,
            "forked_from": source,
            "from_step": from_step,
            "status": forked.status.as_str(),
            "queue": forked.queue,
            "component_sha256": forked.component_sha256,
        }));
    } else {
        outln!(
            "forked {source} from step {from_step} as {} (queued in `{}`: `durable-host serve` \
             runs it, or `durable-host run COMPONENT --workflow-id {}`)",
            forked.id,
            forked.queue,
            forked.id
        );
    }
    Ok(ExitCode::from(exit::SUCCESS))
}

/// The component `spec` names: a .wasm file (checked and kept in the
/// database) or a deployment.
fn component_of(
    store: &dyn CheckpointStore,
    spec: &str,
    cache: &CacheArgs,
) -> anyhow::Result<(String, Option<String>)> {
    let path = Path::new(spec);
    if path.is_file() {
        let file = ComponentFile::read(path)?;
        runtime(cache)?.compile(&file)?;
        store.put_component(file.sha256(), file.bytes())?;
        return Ok((file.sha256().to_owned(), None));
    }
    let deployment = versions::deployment(store, spec)?;
    Ok((deployment.sha256, Some(deployment.name)))
}
