//! The `durable-host` command line: parses arguments, wires the store, the
//! engine and the runtime together, and turns errors into a one-line cause,
//! a hint and an exit code.

/// `println!` for a command's answer, which does not panic when the reader
/// of stdout went away (`| head`): see [`write_stdout`].
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::write_stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` that does not panic, as [`outln!`].
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::write_stdout(format_args!($($arg)*))
    };
}

/// `eprintln!` that does not panic when the reader of stderr went away
/// (`2>&1 | head`): see [`write_ignoring`].
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::cli::write_ignoring(std::io::stderr(), format_args!("{}\n", format_args!($($arg)*)))
    };
}

pub mod args;
pub mod compile;
pub mod inspect;
mod report;
pub mod run;
pub mod schedules;
pub mod serve;
pub mod signals;
mod table;
mod timeline;
pub mod verify;
pub mod versions;
pub mod wit;

use std::process::ExitCode;

use durable_host::control::ControlError;
use durable_host::engine::EngineError;
use durable_host::runtime::{RuntimeError, WorldMismatch};
use durable_host::store::StoreError;
use durable_host::verify::VerifyError;

/// Exit codes, as documented in `--help` (see [`args::EXIT_CODES`]).
pub mod exit {
    pub const SUCCESS: u8 = 0;
    pub const WORKFLOW_FAILED: u8 = 1;
    pub const USER_ERROR: u8 = 2;
    pub const SIMULATED_CRASH: i32 = 3;
    pub const NON_DETERMINISM: u8 = 4;
    pub const OWNED_ELSEWHERE: u8 = 5;
    pub const CANCELLED: u8 = 6;
    pub const SUSPENDED: u8 = 7;
    pub const OWNERSHIP_LOST: u8 = 8;
    pub const STORAGE_FAILURE: u8 = 9;
    pub const SLEEPING: u8 = 10;
    pub const STILL_RUNNING: u8 = 11;
    pub const WAITING: u8 = 12;
    pub const HOST_MEMORY: u8 = 13;
}

/// Print `error` as `error: <cause>` plus a hint where one helps, and pick
/// the exit code. With `--json` the same goes to stdout as one document,
/// `{"error": {"message", "hint", "exit_code"}}`, for scripts.
pub fn report_error(error: &anyhow::Error, json_mode: bool) -> ExitCode {
    let message = format!("{error:#}");
    let hint = hint(error);
    let code = exit_code(error);
    errln!("error: {message}");
    if let Some(hint) = &hint {
        errln!("  hint: {hint}");
    }
    if json_mode {
        print_json_error(&message, hint.as_deref(), code);
    }
    ExitCode::from(code)
}

/// Write `text` to stdout, ignoring a failure (see [`write_ignoring`]).
pub fn write_stdout(text: std::fmt::Arguments<'_>) {
    write_ignoring(std::io::stdout().lock(), text);
}

/// Write `text` to `out`, ignoring a failure: a reader that stopped
/// reading is its own choice, what the command did stands, and the exit
/// code must still say how it went (`println!` would panic with 101).
pub fn write_ignoring(mut out: impl std::io::Write, text: std::fmt::Arguments<'_>) {
    let _ = out.write_fmt(text);
}

/// Whether `error` is standard output closed by its reader.
pub fn is_broken_pipe(error: &anyhow::Error) -> bool {
    use std::io::ErrorKind::BrokenPipe;
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .map(std::io::Error::kind)
            .or_else(|| cause.downcast_ref::<serde_json::Error>()?.io_error_kind())
            == Some(BrokenPipe)
    })
}

/// Print an error as the `--json` error document on stdout.
pub fn print_json_error(message: &str, hint: Option<&str>, exit_code: u8) {
    report::print_json(&error_json(message, hint, exit_code));
}

/// The `--json` form of an error.
fn error_json(message: &str, hint: Option<&str>, exit_code: u8) -> serde_json::Value {
    serde_json::json!({
        "error": { "message": message, "hint": hint, "exit_code": exit_code },
    })
}

/// The documented exit code for `error` (see [`args::EXIT_CODES`]).
fn exit_code(error: &anyhow::Error) -> u8 {
    if let Some(e) = store_error(error) {
        match e {
            StoreError::LostOwnership { .. } => return exit::OWNERSHIP_LOST,
            // Lost the race to create the workflow: another run has it.
            StoreError::WorkflowExists { .. } => return exit::OWNED_ELSEWHERE,
            StoreError::HostMemory { .. } => return exit::HOST_MEMORY,
            e if e.is_storage_failure() => return exit::STORAGE_FAILURE,
            _ => {}
        }
    }
    if let Some(RuntimeError::HostMemory { .. }) = runtime_error(error) {
        return exit::HOST_MEMORY;
    }
    // Not yet, rather than not at all: a script waits again.
    if let Some(ControlError::UnknownEvent {
        ended: false,
        waited: Some(_),
        ..
    }) = find::<ControlError>(error)
    {
        return exit::STILL_RUNNING;
    }
    match engine_error(error) {
        Some(e) if e.is_non_determinism() => exit::NON_DETERMINISM,
        Some(EngineError::OwnedElsewhere { .. } | EngineError::Upgraded { .. }) => {
            exit::OWNED_ELSEWHERE
        }
        _ => exit::USER_ERROR,
    }
}

fn find<T: std::error::Error + Send + Sync + 'static>(error: &anyhow::Error) -> Option<&T> {
    error.chain().find_map(|cause| cause.downcast_ref::<T>())
}

/// The runtime error behind `error`, also when the control layer passed it on.
fn runtime_error(error: &anyhow::Error) -> Option<&RuntimeError> {
    find::<RuntimeError>(error)
        .or_else(|| match find::<ControlError>(error)? {
            ControlError::Runtime(runtime) => Some(runtime),
            _ => None,
        })
        .or_else(|| match find::<VerifyError>(error)? {
            VerifyError::Runtime(runtime) => Some(runtime),
            VerifyError::Store(_) => None,
        })
}

/// The engine error behind `error`, also when the runtime or the control
/// layer passed it on.
fn engine_error(error: &anyhow::Error) -> Option<&EngineError> {
    find::<EngineError>(error)
        .or_else(|| match runtime_error(error)? {
            RuntimeError::Engine(engine) => Some(engine),
            _ => None,
        })
        .or_else(|| match find::<ControlError>(error)? {
            ControlError::Engine(engine) => Some(engine),
            _ => None,
        })
}

/// The store error behind `error`, also when the engine or the runtime
/// passed it on (they wrap it transparently, so it is not in the chain).
fn store_error(error: &anyhow::Error) -> Option<&StoreError> {
    find::<StoreError>(error)
        .or_else(|| match engine_error(error)? {
            EngineError::Store(store) => Some(store),
            _ => None,
        })
        .or_else(|| match find::<ControlError>(error)? {
            ControlError::Store(store) => Some(store),
            _ => None,
        })
        .or_else(|| match find::<VerifyError>(error)? {
            VerifyError::Store(store) => Some(store),
            VerifyError::Runtime(_) => None,
        })
}

/// The first hint a layer has for `error`: the engine's, the runtime's,
/// the store's, then the control layer's.
fn hint(error: &anyhow::Error) -> Option<String> {
    engine_error(error)
        .and_then(engine_hint)
        .or_else(|| runtime_error(error).and_then(runtime_hint))
        .or_else(|| store_error(error).and_then(store_hint))
        .or_else(|| find::<ControlError>(error).and_then(control_hint))
        .or_else(|| find::<compile::CompileError>(error).map(|e| e.hint().to_owned()))
        .or_else(|| find::<run::InputError>(error).map(|e| e.hint().to_owned()))
}

fn control_hint(error: &ControlError) -> Option<String> {
    Some(match error {
        ControlError::UnknownDeployment { .. } => "`durable-host deploy NAME FILE.wasm` makes \
            one; `durable-host deploy --list` shows those there are"
            .to_owned(),
        ControlError::UnknownVersion { .. } => "`durable-host deploy --list` shows each version \
            with the start of its component's sha256"
            .to_owned(),
        ControlError::UnknownSchedule { .. } => {
            "`durable-host schedule list` shows the schedules there are".to_owned()
        }
        ControlError::UnknownEvent {
            id, ended, waited, ..
        } => match (ended, waited) {
            (true, _) => {
                format!("`durable-host history {id}` shows the durable.event steps it recorded")
            }
            (false, Some(_)) => "wait longer with `--wait DURATION` (a bare `--wait` waits \
                                 an hour)"
                .to_owned(),
            (false, None) => "`--wait DURATION` waits for the workflow to publish it (a bare \
                              `--wait` waits an hour)"
                .to_owned(),
        },
        ControlError::InputConflict { .. } => "an id names one workflow: start it with the input \
            it has (`durable-host history ID`), or pick another --workflow-id"
            .to_owned(),
        ControlError::InvalidInput { .. } => {
            "pass JSON and quote it for the shell, e.g. '{\"id\": 1}'; a plain string needs \
             its own quotes: '\"text\"'"
                .to_owned()
        }
        ControlError::TooLarge { .. } => {
            "keep large data elsewhere and pass a reference to it".to_owned()
        }
        ControlError::InvalidName { .. } => {
            "use a printable name of at most 1,024 bytes (no `@` in a deployment or schedule \
             name)"
                .to_owned()
        }
        ControlError::InvalidSchedule { hint, .. } => (*hint).to_owned(),
        // Its reason says what would work.
        ControlError::Refused { .. }
        | ControlError::Runtime(_)
        | ControlError::Store(_)
        | ControlError::Engine(_) => return None,
    })
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
        RuntimeError::WrongWorld {
            mismatch: WorldMismatch::UnsupportedImport(import),
            ..
        } => import.hint(),
        RuntimeError::WrongWorld {
            mismatch: WorldMismatch::NotAWorkflow(reason),
            ..
        } if reason.contains("durable:workflow/durable-step@") => {
            "this component imports a release of the durable:workflow contract this host does \
             not provide in that form (it runs 0.1.0, 0.2.0 and 0.3.0 as released): a component \
             from a newer SDK needs a newer durable-host; one from a development build of the SDK \
             needs a rebuild with a released one"
                .to_owned()
        }
        RuntimeError::WrongWorld { .. } => "a workflow imports `durable:workflow/durable-step` \
            and exports `run: func(input: string) -> result<string, step-error>` (the \
            `workflow` world in wit/); in Rust, write it with the durable-sdk crate and `durable_sdk::workflow!`"
            .to_owned(),
        RuntimeError::Dir { .. } => "each --dir must name an existing host directory".to_owned(),
        RuntimeError::Grants(_) => "run it with the grants it started with (or with none: the \
            recorded ones are used); to change them, `durable-host resume` a failed or \
            suspended workflow with the new ones"
            .to_owned(),
        RuntimeError::HostMemory { .. } => durable_host::runtime::HOST_MEMORY_HINT.to_owned(),
        RuntimeError::Engine(_) | RuntimeError::Setup(_) => return None,
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
        EngineError::InputRequired { .. } => Some(
            "pass --input JSON (or --input null) to start it; to resume a workflow, check its \
             id with `durable-host list`"
                .to_owned(),
        ),
        EngineError::InputRejected {
            recorded: false, ..
        } => Some(
            "pass an input of the shape the workflow expects; nothing was recorded, so the same \
             --workflow-id can be used again"
                .to_owned(),
        ),
        EngineError::InputRejected { recorded: true, .. } => Some(
            "this code does not take the input the workflow was started with (nothing was \
             recorded by this run): resume it with code that does, or cancel it"
                .to_owned(),
        ),
        EngineError::NotResumable { .. } => Some(
            "`durable-host run` continues a running workflow; `durable-host history ID` shows \
             how it ended"
                .to_owned(),
        ),
        EngineError::ComponentChanged { .. } => Some(
            "resume it with the component that started it; if the new one makes the same steps \
             in the same order, pass --allow-component-change"
                .to_owned(),
        ),
        EngineError::Upgraded { workflow_id, .. } => Some(format!(
            "`durable-host history {workflow_id}` shows the upgrade; run it with the new \
             component, or let `serve` continue it"
        )),
        EngineError::OwnedElsewhere { .. } => Some(
            "wait for that run to finish; if its process is gone, the workflow can be taken over \
             once the lease expires (see --stale-after)"
                .to_owned(),
        ),
        e if e.is_non_determinism() => Some(
            "the workflow code no longer makes the same steps in the same order, with values of \
             the same types, as when this workflow started; finish it with the component that \
             started it, or start a new --workflow-id. Nothing was recorded. `durable-host \
             verify NEW.wasm` checks a build against every workflow before a deploy."
                .to_owned(),
        ),
        _ => None,
    }
}

/// A database named by URL (PostgreSQL), not a file.
fn is_url(path: &str) -> bool {
    path.contains("://")
}

fn store_hint(error: &StoreError) -> Option<String> {
    Some(match error {
        StoreError::Open { path, reason }
            if is_url(path) && (reason.contains("TLS") || reason.contains("ssl")) =>
        {
            "give sslrootcert=PATH, the PEM file of the root that signed the server's \
            certificate, and the host name the certificate names (verify-full), or use \
            sslmode=verify-ca, which checks the signature only; see README, TLS to the server"
                .to_owned()
        }
        StoreError::Open { path, .. } if is_url(path) => {
            "--db postgres://USER[:PASSWORD]@HOST[:PORT]/DB \
            must name a PostgreSQL database this user may create tables in (the tables go in \
            the first schema of its search_path); check the server, the URL and the role"
                .to_owned()
        }
        StoreError::Open { reason, .. } if missing_directory(reason) => {
            "create the directory first, or pass another --db PATH".to_owned()
        }
        StoreError::Open { .. } => "--db must name a database file, or a new file in a \
            directory this user can write to; check the path and its permissions, or pass \
            another --db PATH"
            .to_owned(),
        StoreError::NotADatabase { .. } => {
            "--db must name a durable-host database or a new file; this file was left untouched"
                .to_owned()
        }
        StoreError::ReadOnly(_) => "make the database writable by this user (a SQLite file and \
            its directory; a PostgreSQL role and server that take writes), or pass another --db"
            .to_owned(),
        StoreError::NoTables { .. } => "check the URL's database and search_path against the \
            workers' --db; the first command there that writes (`run`, `serve`, `deploy`) \
            creates the tables"
            .to_owned(),
        StoreError::NewerSchema { .. } => "use a durable-host as new as the one that created or \
            last upgraded the tables"
            .to_owned(),
        StoreError::Busy { .. } => {
            "other processes kept the database locked; run again once they are done".to_owned()
        }
        StoreError::WorkflowExists { .. } => "another durable-host process started this \
            workflow at the same moment and is running it; wait for it to end"
            .to_owned(),
        StoreError::LostOwnership { id, .. } => format!(
            "another run took this workflow over (its lease expired while this process was \
             paused or cut off); this run stopped and wrote nothing more: see `durable-host \
             history {id}`"
        ),
        StoreError::UnknownWorkflow { .. } => {
            "`durable-host list` shows the workflows in this database (see --db)".to_owned()
        }
        StoreError::WorkflowEnded { id, .. } => format!(
            "signals are for workflows that have not ended; `durable-host history {id}` shows \
             how it ended"
        ),
        StoreError::DiskFull { path } => format!(
            "free space on the disk holding {path} and run the same command again; nothing \
             committed is lost"
        ),
        StoreError::Io { path, .. } if is_url(path) => format!(
            "the connection to {path} broke off; what was committed stands: run the same \
             command again once the server answers"
        ),
        StoreError::Io { path, .. } => format!(
            "check {path} and its disk (the system log may name the device); what was committed \
             stands: run the same command again once the disk is sound"
        ),
        StoreError::Replaced { path } => format!(
            "{path} was deleted or replaced while this run used it; its last checkpoints may be \
             in the unlinked file: restore the file and run the same command again"
        ),
        StoreError::TooManyFiles { .. } => {
            "raise the open-file limit (ulimit -n) and run the same command again".to_owned()
        }
        StoreError::HostMemory { .. } => "free memory on the host, or lift `ulimit -v` (and \
            `ulimit -u` for threads), then run the same command again; nothing was written"
            .to_owned(),
        StoreError::Backend(_) => return None,
    })
}

/// Whether an `Open` error's reason says the directory is missing.
fn missing_directory(reason: &str) -> bool {
    reason.contains("does not exist") || reason.contains("No such file or directory")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lost() -> StoreError {
        StoreError::LostOwnership {
            id: "wf-1".into(),
            owner: "run-2".into(),
        }
    }

    #[test]
    fn lost_ownership_is_its_own_exit_code_wherever_it_is_wrapped() {
        let errors = [
            anyhow::Error::from(lost()),
            EngineError::Store(lost()).into(),
            RuntimeError::Engine(EngineError::Store(lost())).into(),
            anyhow::Error::from(RuntimeError::Engine(EngineError::Store(lost())))
                .context("workflow wf-1 stopped"),
        ];
        for error in &errors {
            assert_eq!(exit_code(error), exit::OWNERSHIP_LOST, "{error:#}");
            let hint = hint(error).unwrap();
            assert!(
                hint.contains("another run took this workflow over"),
                "{hint}"
            );
            assert!(hint.contains("durable-host history wf-1"), "{hint}");
        }
    }

    #[test]
    fn storage_failures_exit_9_with_a_hint_naming_the_file() {
        let path = || "/data/durable.db".to_owned();
        for (error, says) in [
            (StoreError::DiskFull { path: path() }, "free space"),
            (
                StoreError::Io {
                    path: path(),
                    reason: "disk I/O error".into(),
                },
                "its disk",
            ),
            (StoreError::Replaced { path: path() }, "restore the file"),
        ] {
            let error = anyhow::Error::from(RuntimeError::Engine(EngineError::Store(error)));
            assert_eq!(exit_code(&error), exit::STORAGE_FAILURE, "{error:#}");
            let hint = hint(&error).unwrap();
            assert!(
                hint.contains(says) && hint.contains("/data/durable.db"),
                "{hint}"
            );
        }
    }

    #[test]
    fn other_store_errors_keep_their_codes() {
        let exists = anyhow::Error::from(EngineError::Store(StoreError::WorkflowExists {
            id: "wf-1".into(),
        }));
        assert_eq!(exit_code(&exists), exit::OWNED_ELSEWHERE);
        let files = anyhow::Error::from(StoreError::TooManyFiles {
            path: "durable.db".into(),
        });
        assert_eq!(exit_code(&files), exit::USER_ERROR);
        assert!(hint(&files).unwrap().contains("ulimit -n"));
    }

    #[test]
    fn only_a_missing_directory_is_told_to_be_created() {
        let open = |reason: &str| {
            anyhow::Error::from(StoreError::Open {
                path: "x/durable.db".into(),
                reason: reason.into(),
            })
        };
        let missing = hint(&open("the directory x does not exist")).unwrap();
        assert!(missing.contains("create the directory"), "{missing}");
        let denied = hint(&open("unable to open database file: permission denied")).unwrap();
        assert!(!denied.contains("create the directory"), "{denied}");
        assert!(denied.contains("permissions"), "{denied}");
        assert_eq!(exit_code(&open("anything")), exit::USER_ERROR);
        // A PostgreSQL database that "does not exist" is no directory to create.
        let server = anyhow::Error::from(StoreError::Open {
            path: "postgres://me@db/work".into(),
            reason: "cannot reach the PostgreSQL server: database \"work\" does not exist".into(),
        });
        let hint = hint(&server).unwrap();
        assert!(
            hint.contains("postgres://") && !hint.contains("directory"),
            "{hint}"
        );
    }

    #[test]
    fn json_errors_have_message_hint_and_code() {
        let value = error_json("workflow x does not exist", None, 2);
        assert_eq!(
            value.to_string(),
            r#"{"error":{"exit_code":2,"hint":null,"message":"workflow x does not exist"}}"#
        );
    }
}
