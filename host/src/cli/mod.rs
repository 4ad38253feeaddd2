//! The `durable-host` command line: parses arguments, wires the store, the
//! engine and the runtime together, and turns errors into a one-line cause,
//! a hint and an exit code.

pub mod args;
pub mod inspect;
mod report;
pub mod run;
mod table;

use std::process::ExitCode;

use durable_host::engine::EngineError;
use durable_host::runtime::RuntimeError;
use durable_host::store::StoreError;

/// Exit codes, as documented in `--help` (see [`args::EXIT_CODES`]).
pub mod exit {
    pub const SUCCESS: u8 = 0;
    pub const WORKFLOW_FAILED: u8 = 1;
    pub const USER_ERROR: u8 = 2;
    pub const SIMULATED_CRASH: i32 = 3;
    pub const NON_DETERMINISM: u8 = 4;
    pub const OWNED_ELSEWHERE: u8 = 5;
    pub const CANCELLED: u8 = 6;
}

/// Print `error` as `error: <cause>` plus a hint where one helps, and pick
/// the exit code.
pub fn report_error(error: &anyhow::Error) -> ExitCode {
    eprintln!("error: {error:#}");
    if let Some(hint) = hint(error) {
        eprintln!("  hint: {hint}");
    }
    ExitCode::from(match engine_error(error) {
        Some(e) if e.is_non_determinism() => exit::NON_DETERMINISM,
        Some(EngineError::OwnedElsewhere { .. }) => exit::OWNED_ELSEWHERE,
        _ => exit::USER_ERROR,
    })
}

fn find<T: std::error::Error + Send + Sync + 'static>(error: &anyhow::Error) -> Option<&T> {
    error.chain().find_map(|cause| cause.downcast_ref::<T>())
}

/// The engine error behind `error`, also when the runtime passed it on.
fn engine_error(error: &anyhow::Error) -> Option<&EngineError> {
    find::<EngineError>(error).or_else(|| match find::<RuntimeError>(error)? {
        RuntimeError::Engine(engine) => Some(engine),
        _ => None,
    })
}

fn hint(error: &anyhow::Error) -> Option<String> {
    if let Some(e) = engine_error(error) {
        return engine_hint(e);
    }
    if let Some(e) = find::<RuntimeError>(error) {
        return runtime_hint(e);
    }
    if let Some(e) = find::<StoreError>(error) {
        return store_hint(e);
    }
    find::<run::InputError>(error).map(|e| e.hint().to_owned())
}

fn runtime_hint(error: &RuntimeError) -> Option<String> {
    Some(match error {
        RuntimeError::Unreadable { .. } => "check the path; the onboarding example is built by \
            `cargo build --release --target wasm32-wasip2 -p onboarding` into \
            target/wasm32-wasip2/release/onboarding.wasm"
            .to_owned(),
        RuntimeError::NotWasm { .. } => {
            "pass the .wasm file that `cargo build --target wasm32-wasip2` produces".to_owned()
        }
        RuntimeError::CoreModule { .. } => "build with `--target wasm32-wasip2`, which emits a \
            component, or wrap the module with `wasm-tools component new`"
            .to_owned(),
        RuntimeError::Invalid { .. } => "the file may be truncated or built by an incompatible \
            tool; rebuild it"
            .to_owned(),
        RuntimeError::WrongWorld { .. } => "a workflow imports `durable:workflow/durable-step` \
            and exports `run: func(input: string) -> result<string, string>` (the `workflow` \
            world in wit/); in Rust, write it with the durable-sdk crate and `durable_sdk::workflow!`"
            .to_owned(),
        RuntimeError::Dir { .. } => "each --dir must name an existing host directory".to_owned(),
        RuntimeError::Engine(_) | RuntimeError::Instantiate(_) | RuntimeError::Setup(_) => return None,
    })
}

fn engine_hint(error: &EngineError) -> Option<String> {
    match error {
        EngineError::Store(e) => store_hint(e),
        EngineError::InputMismatch { .. } => Some(
            "leave out --input (and --input-file) to resume with the stored input, or start a new \
             --workflow-id"
                .to_owned(),
        ),
        EngineError::ComponentChanged { .. } => Some(
            "resume it with the component that started it; if the new one makes the same steps \
             in the same order, pass --allow-component-change"
                .to_owned(),
        ),
        EngineError::OwnedElsewhere { .. } => Some(
            "wait for that run to finish; if its process is gone, the workflow can be taken over \
             once the lease expires (see --stale-after)"
                .to_owned(),
        ),
        EngineError::Diverged { .. } | EngineError::EndedEarly { .. } => Some(
            "the workflow code no longer makes the same steps in the same order as when this \
             workflow started; finish it with the component that started it, or start a new \
             --workflow-id. Nothing was recorded."
                .to_owned(),
        ),
        _ => None,
    }
}

fn store_hint(error: &StoreError) -> Option<String> {
    Some(match error {
        StoreError::Open { .. } => {
            "create the directory first, or pass another --db PATH".to_owned()
        }
        StoreError::NotADatabase { .. } => {
            "--db must name a durable-host database or a new file; this file was left untouched"
                .to_owned()
        }
        StoreError::ReadOnly(_) => "make the database file and its directory writable, or pass \
            another --db PATH"
            .to_owned(),
        StoreError::NewerSchema { .. } => "use the durable-host version that created it".to_owned(),
        StoreError::Busy { .. } => {
            "other processes kept the database locked; run again once they are done".to_owned()
        }
        StoreError::WorkflowExists { .. } | StoreError::LostOwnership { .. } => {
            "another durable-host process is running this workflow; wait for it to end".to_owned()
        }
        StoreError::UnknownWorkflow { .. } => {
            "`durable-host list` shows the workflows in this database (see --db)".to_owned()
        }
        StoreError::Backend(_) => return None,
    })
}
