//! The WebAssembly side: loading workflow components and running them in a
//! sandbox, with the `durable-step` imports wired to the replay engine.
//!
//! A [`ComponentFile`] is read and fingerprinted without compiling, so that a
//! finished workflow can answer from the database at once. [`Runtime`] holds
//! the wasmtime engine and the linker (WASI 0.2, `wasi:http` and `durable-step`);
//! [`Runtime::compile`] checks that a component is a workflow before anything
//! runs, and [`Runtime::run`] executes one [`WorkflowRun`] in a fresh,
//! sandboxed instance.
//!
//! Around it: `host` is what an instance holds and the `durable-step`
//! implementation, `branches` runs parallel branches, `limits` the run's
//! time and memory, `grants` what a workflow was granted, `http` outbound
//! HTTP (its allow-list and the record of each request), `cache` compiled
//! components, `imports` what a component imports (read before compiling),
//! `contract` which release of the contract a component was built against,
//! `compat` the imports of the earlier releases and `pool` the instance
//! pool `serve` reserves for its runs.

mod branches;
mod cache;
mod compat;
mod contract;
mod grants;
mod guest_output;
mod host;
mod http;
mod imports;
mod limits;
mod pool;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store, Trap};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder};

use crate::bindings::{v0_1, v0_2, v0_3};
use crate::engine::{EngineError, RunReport, WorkflowRun};
use branches::BranchRunner;
pub use cache::{CacheUse, ComponentCache};
use contract::ContractPre;
pub use grants::{Grants, GrantsError};
use guest_output::GuestOutput;
use host::Role;
pub use host::{HostState, SLEEP_STEP, UNLOAD_SLEEPS_OVER};
use http::OutboundHttp;
pub use http::{BadDestination, HttpDestination};
pub use imports::UnsupportedImport;
pub use limits::LimitExceeded;
use limits::{Deadline, EPOCH_TICK, InstanceLimiter, MemoryBudget};

/// What went wrong loading or running a component.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot read {path}: {reason}")]
    Unreadable { path: PathBuf, reason: String },
    #[error("{path} is not a WebAssembly file")]
    NotWasm { path: PathBuf },
    #[error("{path} is a core WebAssembly module, not a component")]
    CoreModule { path: PathBuf },
    #[error("{path} is not a valid WebAssembly component: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("{path} {mismatch}")]
    WrongWorld {
        path: PathBuf,
        mismatch: WorldMismatch,
    },
    #[error("cannot grant directory {host} to the guest: {reason}")]
    Dir { host: PathBuf, reason: String },
    /// The host could not allocate what a new instance needs (its memory,
    /// or the address space its guard regions reserve): the run stopped,
    /// without recording the failure against the workflow. What it had
    /// recorded stands (nothing, when the workflow's own instance could not
    /// start); a later run goes on from there.
    #[error("the host could not allocate memory for an instance of the workflow: {reason}")]
    HostMemory { reason: String },
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("cannot set up the WebAssembly engine: {0}")]
    Setup(String),
    #[error(transparent)]
    Grants(#[from] GrantsError),
}

/// What to do about [`RuntimeError::HostMemory`].
pub const HOST_MEMORY_HINT: &str = "each instance reserves about 4 GiB of address space for \
    its memory (guard pages, not RAM): lift the address-space limit (`ulimit -v unlimited`) \
    or free memory on the host, then run it again; it goes on from what was recorded";

/// Why a component cannot run here as a workflow.
#[derive(Debug, thiserror::Error)]
pub enum WorldMismatch {
    /// Found in its imports, before compiling.
    #[error(transparent)]
    UnsupportedImport(#[from] UnsupportedImport),
    /// Found by linking the compiled component against the `workflow` world.
    #[error("is a component, but not a durable workflow: {0}")]
    NotAWorkflow(String),
}

/// A component file, read and fingerprinted but not compiled.
pub struct ComponentFile {
    path: PathBuf,
    bytes: Arc<[u8]>,
    sha256: String,
}

impl ComponentFile {
    /// Read `path` and check that it holds a WebAssembly component.
    pub fn read(path: &Path) -> Result<Self, RuntimeError> {
        let bytes = std::fs::read(path).map_err(|e| RuntimeError::Unreadable {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        Self::from_bytes(path.to_owned(), bytes)
    }

    /// Check that `bytes` (known to people as `path`: a file, or a
    /// component kept in the database) hold a WebAssembly component.
    pub fn from_bytes(path: PathBuf, bytes: Vec<u8>) -> Result<Self, RuntimeError> {
        const MAGIC: &[u8] = b"\0asm";
        const CORE_VERSION: &[u8] = &[1, 0, 0, 0];
        match bytes.get(..8) {
            Some(header) if header.starts_with(MAGIC) && &header[4..] == CORE_VERSION => {
                return Err(RuntimeError::CoreModule { path });
            }
            Some(header) if header.starts_with(MAGIC) => {}
            _ => return Err(RuntimeError::NotWasm { path }),
        }
        let digest = Sha256::digest(&bytes);
        let sha256 = digest
            .iter()
            .fold(String::with_capacity(64), |mut hex, byte| {
                let _ = write!(hex, "{byte:02x}");
                hex
            });
        Ok(Self {
            path,
            bytes: bytes.into(),
            sha256,
        })
    }

    /// The component's bytes, to keep in the database.
    pub fn bytes(&self) -> &Arc<[u8]> {
        &self.bytes
    }

    /// Hex sha256 of the file: the identity a workflow is pinned to.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A compiled component, checked to be a workflow and ready to instantiate.
#[derive(Clone)]
pub struct WorkflowComponent {
    /// For the workflow's own instances: pooled when the runtime has a pool
    /// that holds the component.
    pre: ContractPre,
    /// With a pooled `pre`: the engine that maps branch instances one by one
    /// (the pool holds one instance per run), and the component loaded into
    /// it on the first branch.
    mapped: Option<(Arc<Linked>, Arc<OnceLock<ContractPre>>)>,
    cache_use: CacheUse,
}

impl WorkflowComponent {
    /// Whether it was compiled, and whether its compiled form was kept.
    pub fn cache_use(&self) -> &CacheUse {
        &self.cache_use
    }

    /// The component for branch instances, which are mapped one by one.
    fn branch_pre(&self) -> wasmtime::Result<ContractPre> {
        let Some((mapped, loaded)) = &self.mapped else {
            return Ok(self.pre.clone());
        };
        if let Some(pre) = loaded.get() {
            return Ok(pre.clone());
        }
        let component = mapped.load(self.pre.component())?;
        let pre = ContractPre::new(mapped.linker.instantiate_pre(&component)?)?;
        Ok(loaded.get_or_init(|| pre).clone())
    }
}

/// What the guest may see of the host. Nothing else is granted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sandbox {
    /// Host directories, each visible to the guest at its guest path.
    pub dirs: Vec<DirGrant>,
    /// Environment variables the guest sees.
    pub env: Vec<(String, String)>,
    /// Where steps may send HTTP requests.
    pub http: Vec<HttpDestination>,
}

/// One preopened directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirGrant {
    pub host: PathBuf,
    pub guest: String,
    pub read_only: bool,
}

/// How a runtime compiles and runs guests.
#[derive(Debug, Clone, Default)]
pub struct RuntimeConfig {
    /// Advance the epoch, so that runs can have a `--timeout`. Code is
    /// compiled with epoch checks either way, so that one compiled form
    /// (and one cache entry) serves runs with and without a timeout.
    pub interruptible: bool,
    /// Where compiled components are kept; `None` compiles every time.
    pub cache: Option<ComponentCache>,
    /// Copy what guests print to this process's stderr as they print it
    /// (`run`); it is kept in the workflow's log either way.
    pub echo_output: bool,
    /// Take instances from a pool reserved up front for this many runs at
    /// once (`serve`; see [`pool`]) rather than map each afresh.
    pub pooled_runs: Option<usize>,
}

/// The wasmtime engines and their linkers providing WASI 0.2 and
/// `durable-step`.
pub struct Runtime {
    /// Instances from a pool reserved up front (`serve`; see [`pool`]),
    /// when one was asked for and could be reserved.
    pooled: Option<Linked>,
    /// Instances mapped one by one: `run`, parallel branches, and
    /// components the pool's slots cannot hold.
    mapped: Arc<Linked>,
    /// Why the pool asked for could not be reserved.
    pool_refused: Option<String>,
    config: RuntimeConfig,
    /// Stops the epoch ticker thread (present with a timeout) when dropped.
    ticker_stop: Option<Arc<AtomicBool>>,
}

/// An engine, and a linker of every import a workflow may use.
struct Linked {
    engine: Engine,
    linker: Linker<HostState>,
}

impl Linked {
    fn new(wasmtime_config: &mut Config) -> wasmtime::Result<Self> {
        wasmtime_config.epoch_interruption(true);
        let engine = Engine::new(wasmtime_config)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        http::add_to_linker(&mut linker)?;
        limits::enforce_deadline_in_poll(&mut linker)?;
        // Every release of the contract, each under its own versioned name.
        v0_3::Workflow::add_to_linker::<_, HasSelf<HostState>>(&mut linker, |state| state)?;
        v0_2::durable_step::add_to_linker::<_, HasSelf<HostState>>(&mut linker, |state| state)?;
        v0_1::durable_step::add_to_linker::<_, HasSelf<HostState>>(&mut linker, |state| state)?;
        Ok(Self { engine, linker })
    }

    /// `component`, compiled by another engine of the same settings, loaded
    /// into this one (a pool refuses one its slots cannot hold).
    fn load(&self, component: &Component) -> wasmtime::Result<Component> {
        let code = component.serialize()?;
        // SAFETY: serialized from this process's own compilation just now.
        unsafe { Component::deserialize(&self.engine, &code) }
    }
}

impl Runtime {
    pub fn new(config: RuntimeConfig) -> Result<Self, RuntimeError> {
        let setup = |e: wasmtime::Error| RuntimeError::Setup(e.to_string());
        let mapped = Arc::new(Linked::new(&mut Config::new()).map_err(setup)?);
        let (pooled, pool_refused) = match config.pooled_runs {
            None => (None, None),
            Some(runs) => match pool::config(runs) {
                None => (
                    None,
                    Some(format!(
                        "{runs} runs need more address space than a process has"
                    )),
                ),
                Some(pool) => {
                    let mut pooled = Config::new();
                    pooled.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
                    match Linked::new(&mut pooled) {
                        Ok(linked) => (Some(linked), None),
                        Err(e) => (None, Some(format!("{:#}", e))),
                    }
                }
            },
        };
        let ticker_stop = if config.interruptible {
            let stop = Arc::new(AtomicBool::new(false));
            let ticker_stop = Arc::clone(&stop);
            let engines: Vec<Engine> = pooled
                .iter()
                .chain([&*mapped])
                .map(|linked| linked.engine.clone())
                .collect();
            thread::Builder::new()
                .name("epoch".to_owned())
                .spawn(move || {
                    while !ticker_stop.load(Ordering::Relaxed) {
                        thread::sleep(EPOCH_TICK);
                        engines.iter().for_each(Engine::increment_epoch);
                    }
                })
                .map_err(|e| {
                    RuntimeError::Setup(format!("cannot start the thread that keeps time: {e}"))
                })?;
            Some(stop)
        } else {
            None
        };
        Ok(Self {
            pooled,
            mapped,
            pool_refused,
            config,
            ticker_stop,
        })
    }

    /// Why the instance pool asked for ([`RuntimeConfig::pooled_runs`]) could
    /// not be reserved: instances are then mapped one by one.
    pub fn pool_refused(&self) -> Option<&str> {
        self.pool_refused.as_deref()
    }

    /// Compile `file` (or load it from the cache) and check it against the
    /// `workflow` world: every import must be one this host provides, and
    /// `run` and `run-branch` must be exported. An import of a package this
    /// host lacks is refused before compiling.
    pub fn compile(&self, file: &ComponentFile) -> Result<WorkflowComponent, RuntimeError> {
        let wrong_world = |mismatch| RuntimeError::WrongWorld {
            path: file.path.clone(),
            mismatch,
        };
        if let Some(import) = imports::unsupported_import(&file.bytes) {
            return Err(wrong_world(import.into()));
        }
        let invalid = |e: wasmtime::Error| RuntimeError::Invalid {
            path: file.path.clone(),
            reason: e.root_cause().to_string(),
        };
        let (component, cache_use) = match &self.config.cache {
            Some(cache) => cache.load_or_compile(&self.mapped.engine, &file.sha256, &file.bytes),
            None => Component::new(&self.mapped.engine, &file.bytes)
                .map(|component| (component, CacheUse::NotStored("no cache".into()))),
        }
        .map_err(invalid)?;
        // Both engines compile alike: the pool's loads the same code, and
        // refuses a component its slots cannot hold (its instances are then
        // mapped).
        let pooled = self
            .pooled
            .as_ref()
            .and_then(|pooled| match pooled.load(&component) {
                Ok(component) => Some((pooled, component)),
                Err(error) => {
                    tracing::info!(
                        component = %file.path.display(),
                        "its instances are mapped one by one, not pooled: {error:#}"
                    );
                    None
                }
            });
        let mapped = pooled
            .is_some()
            .then(|| (Arc::clone(&self.mapped), Arc::new(OnceLock::new())));
        let (linked, component) = pooled.unwrap_or((&self.mapped, component));
        let not_a_workflow =
            |e: wasmtime::Error| wrong_world(WorldMismatch::NotAWorkflow(e.to_string()));
        let instance_pre = linked
            .linker
            .instantiate_pre(&component)
            .map_err(not_a_workflow)?;
        let pre = ContractPre::new(instance_pre).map_err(not_a_workflow)?;
        Ok(WorkflowComponent {
            pre,
            mapped,
            cache_use,
        })
    }

    /// Execute `run` in a new instance of `component`, with what `grants`
    /// allows: its sandbox and its limits (a timeout needs a runtime made
    /// `interruptible`).
    ///
    /// A limit (time, memory) fails the workflow; a trap (panic, fault)
    /// suspends it, keeping its history for fixed code. An engine error that
    /// must leave the history untouched (non-determinism, storage failure,
    /// a refused input) is returned as an error instead.
    pub fn run(
        &self,
        component: &WorkflowComponent,
        grants: &Grants,
        run: Box<WorkflowRun>,
    ) -> Result<RunReport, RuntimeError> {
        let sandbox = grants.sandbox();
        let output = GuestOutput::new(self.config.echo_output);
        let input = run.input().to_owned();
        let limits = RunLimits {
            deadline: grants
                .timeout()
                .filter(|_| self.config.interruptible)
                .map(Deadline::start),
            memory: grants.max_memory.map(MemoryBudget::new),
        };
        let branches = Box::new(BranchRunner::new(
            component.clone(),
            sandbox.clone(),
            limits.clone(),
            self.config.echo_output,
        ));
        let role = Role::Workflow { run, branches };
        let mut store = limits.store(component.pre.engine(), &sandbox, &output, role)?;
        let instance = component.pre.instantiate(&mut store);
        // Before the guest ran: not its fault, nothing to record against it.
        if let Some(HostMemory(reason)) = instance.as_ref().err().and_then(HostMemory::of) {
            return Err(RuntimeError::HostMemory { reason });
        }
        let result = instance
            .map_err(starting)
            .and_then(|workflow| workflow.call_run(&mut store, &input));
        let Role::Workflow { mut run, .. } = store.into_data().role else {
            unreachable!("the workflow instance keeps its role")
        };
        run.capture_output(output.take_lines(true));
        // An instance that cannot even start (its memory over the budget,
        // say) is handled like a trap in it.
        let trap = match result {
            Ok(outcome) => return Ok(run.complete(outcome)?),
            Err(trap) => trap,
        };
        // A branch the host had no memory for: hand the workflow back, its
        // step left for the next run to execute.
        if let Some(HostMemory(reason)) = trap
            .chain()
            .find_map(|cause| cause.downcast_ref::<HostMemory>())
        {
            let reason = reason.clone();
            run.release();
            return Err(RuntimeError::HostMemory { reason });
        }
        match trap.downcast::<EngineError>() {
            Ok(EngineError::Cancelled { .. }) => Ok(run.cancel()?),
            Ok(EngineError::Unloading { wake_at }) => Ok(run.unload(wake_at)?),
            Ok(EngineError::UnloadingToWait {
                waiting_for,
                deadline,
            }) => Ok(run.unload_waiting(waiting_for, deadline)?),
            Ok(error) if keeps_history(&error) => Err(error.into()),
            // The guest broke the protocol: a bug in its code.
            Ok(guest_misuse) => Ok(run.suspend(guest_misuse.to_string())?),
            Err(trap) => match limit_exceeded(&trap) {
                Some(limit) => Ok(run.fail(limit.to_string())?),
                None => Ok(run.suspend(trap_reason(&trap, &output))?),
            },
        }
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Some(stop) = &self.ticker_stop {
            stop.store(true, Ordering::Relaxed);
        }
    }
}

/// The limits of one run, shared by its workflow and branch instances.
#[derive(Clone)]
struct RunLimits {
    deadline: Option<Deadline>,
    memory: Option<Arc<MemoryBudget>>,
}

impl RunLimits {
    /// A store for one instance, granted what `sandbox` lists, drawing on
    /// the run's memory budget and stopping at the run's deadline.
    fn store(
        &self,
        engine: &Engine,
        sandbox: &Sandbox,
        output: &GuestOutput,
        role: Role,
    ) -> Result<Store<HostState>, RuntimeError> {
        let mut store = Store::new(
            engine,
            HostState {
                wasi: sandbox.wasi_ctx(output)?,
                http: OutboundHttp::new(&sandbox.http, output.clone(), self.deadline.clone()),
                table: ResourceTable::new(),
                limiter: InstanceLimiter::new(self.memory.clone()),
                deadline: self.deadline.clone(),
                output: output.clone(),
                role,
            },
        );
        store.limiter(|state| &mut state.limiter);
        match &self.deadline {
            Some(deadline) => limits::arm_deadline(&mut store, deadline),
            // Code compiled with epoch checks is interrupted at once without
            // a deadline. (Relative to the current epoch: no overflow.)
            None => store.set_epoch_deadline(u64::MAX / 2),
        }
        Ok(store)
    }
}

/// The limit behind a trap, if one stopped the guest.
fn limit_exceeded(trap: &wasmtime::Error) -> Option<LimitExceeded> {
    trap.chain()
        .find_map(|cause| cause.downcast_ref::<LimitExceeded>())
        .cloned()
}

/// An instance the host had no memory for, which stops the run without
/// recording anything against the workflow ([`RuntimeError::HostMemory`]).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct HostMemory(String);

impl HostMemory {
    /// Whether creating an instance failed with `error` because the host
    /// had no memory to give it: an `mmap` refused (`ENOMEM`, also under
    /// `ulimit -v`) or an allocation wasmtime could not make, a pool out of
    /// slots (it is sized not to run out), or a memory image the kernel
    /// kept refusing ([`memory_image`]). A guest's own memory limit is not
    /// this ([`limit_exceeded`]).
    fn of(error: &wasmtime::Error) -> Option<Self> {
        if let Some(HostMemory(reason)) = error.chain().find_map(|c| c.downcast_ref::<HostMemory>())
        {
            return Some(Self(reason.clone()));
        }
        let starved = error.chain().any(|cause| {
            cause.downcast_ref::<wasmtime::OutOfMemory>().is_some()
                || cause
                    .downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
                    .is_some()
                || cause.downcast_ref::<rustix::io::Errno>() == Some(&rustix::io::Errno::NOMEM)
                || cause
                    .downcast_ref::<std::io::Error>()
                    .is_some_and(|e| e.kind() == std::io::ErrorKind::OutOfMemory)
        });
        let (outer, root) = (error.to_string(), error.root_cause().to_string());
        starved.then(|| {
            Self(if outer == root {
                root
            } else {
                format!("{outer}: {root}")
            })
        })
    }
}

/// How many times a component's memory image is made before the run gives
/// up ([`memory_image`]), and the pause between two tries.
const IMAGE_TRIES: u32 = 4;
const IMAGE_PAUSE: Duration = Duration::from_millis(100);

/// Make `component`'s copy-on-write memory images, once per loaded
/// component, before its first instance (where wasmtime would otherwise
/// make them).
///
/// On Linux an image is a memfd sealed read-only, and the kernel refuses
/// the seal (`EBUSY`) while it still holds a reference to one of the new
/// pages after waiting a while for them: a passing state of a loaded host,
/// which the first instance would report as the guest's trap, suspending
/// the workflow. So a busy image is made again, from a new memfd; one that
/// stays busy stops the run as a host without memory does, recording
/// nothing against the workflow.
pub(super) fn memory_image(component: &Component) -> wasmtime::Result<()> {
    retry_busy(|| component.initialize_copy_on_write_image())
}

/// `make`, tried up to [`IMAGE_TRIES`] times while it fails with `EBUSY`.
fn retry_busy(mut make: impl FnMut() -> wasmtime::Result<()>) -> wasmtime::Result<()> {
    let busy = |error: &wasmtime::Error| {
        error.chain().any(|cause| {
            cause
                .downcast_ref::<std::io::Error>()
                .and_then(|e| e.raw_os_error())
                == Some(rustix::io::Errno::BUSY.raw_os_error())
        })
    };
    for _ in 1..IMAGE_TRIES {
        match make() {
            Err(error) if busy(&error) => thread::sleep(IMAGE_PAUSE),
            done => return done,
        }
    }
    make().map_err(|error| {
        if busy(&error) {
            HostMemory(format!(
                "the kernel refused to seal its memory image {IMAGE_TRIES} times: {}",
                error.root_cause()
            ))
            .into()
        } else {
            error
        }
    })
}

/// An error creating an instance. A memory limit met there says so: a
/// budget too small to start needs another hint than one outgrown.
fn starting(error: wasmtime::Error) -> wasmtime::Error {
    match limit_exceeded(&error) {
        Some(limit) => limit.at_start().into(),
        None => error,
    }
}

/// A one-line reason for a trap: the panic message if the guest printed
/// one, else the trap itself (its backtrace is noise in a record), then the
/// last lines the guest wrote to stderr before it (an exception's message
/// and traceback, from a JavaScript or Python guest).
fn trap_reason(trap: &wasmtime::Error, output: &GuestOutput) -> String {
    let words = output.last_words();
    let mut reason = if let Some(exit) = trap.downcast_ref::<wasmtime_wasi::I32Exit>() {
        format!(
            "the guest exited with status {} instead of returning",
            exit.0
        )
    } else if let Some(Trap::Interrupt) = trap.downcast_ref::<Trap>() {
        "guest interrupted".to_owned()
    } else if let Some(panic) = words.panic {
        format!("guest panicked: {panic}")
    } else {
        format!("guest trapped: {}", trap.root_cause())
    };
    if !words.stderr.is_empty() {
        // One line, so that tables can show it.
        reason.push_str("; its stderr before that: ");
        reason.push_str(&words.stderr.join(" | "));
    }
    reason
}

/// Engine errors after which the run must stop without recording anything.
fn keeps_history(error: &EngineError) -> bool {
    error.is_non_determinism()
        || matches!(
            error,
            EngineError::Store(_)
                | EngineError::InputMismatch { .. }
                | EngineError::InputRejected { .. }
                | EngineError::Stopping { .. }
                | EngineError::HistoryEnd { .. }
                // Claimed by another run, or upgraded, first: nothing of
                // this run's was written, nor may be.
                | EngineError::OwnedElsewhere { .. }
                | EngineError::Upgraded { .. }
        )
}

impl Sandbox {
    fn wasi_ctx(&self, output: &GuestOutput) -> Result<WasiCtx, RuntimeError> {
        // No inherited environment, arguments, stdin or network: only what
        // the sandbox lists. WASI's clocks and random stay available.
        let mut builder = WasiCtxBuilder::new();
        builder.stdout(output.clone()).stderr(output.stderr());
        builder.envs(&self.env);
        for dir in &self.dirs {
            let perms = if dir.read_only {
                FsPerms::ReadOnly
            } else {
                FsPerms::ReadWrite
            };
            builder
                .preopened_dir(&dir.host, &dir.guest, perms)
                .map_err(|e| RuntimeError::Dir {
                    host: dir.host.clone(),
                    reason: e.to_string(),
                })?;
        }
        Ok(builder.build())
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::io;

    use super::*;

    /// As wasmtime reports a refused seal: the memfd crate's error, with
    /// the kernel's errno as its source.
    #[derive(Debug, thiserror::Error)]
    #[error("cannot add seals to the memfd")]
    struct AddSeals(#[source] io::Error);

    fn refused(errno: rustix::io::Errno) -> wasmtime::Error {
        AddSeals(io::Error::from_raw_os_error(errno.raw_os_error())).into()
    }

    #[test]
    fn a_memory_image_the_kernel_calls_busy_is_made_again() {
        let tries = Cell::new(0);
        let made = retry_busy(|| {
            tries.set(tries.get() + 1);
            match tries.get() {
                1 | 2 => Err(refused(rustix::io::Errno::BUSY)),
                _ => Ok(()),
            }
        });
        assert!(made.is_ok(), "{made:?}");
        assert_eq!(tries.get(), 3);
    }

    #[test]
    fn a_memory_image_that_stays_busy_stops_the_run_as_the_host_s_shortage() {
        let tries = Cell::new(0);
        let error = retry_busy(|| {
            tries.set(tries.get() + 1);
            Err(refused(rustix::io::Errno::BUSY))
        })
        .unwrap_err();
        assert_eq!(tries.get(), IMAGE_TRIES);
        let HostMemory(reason) = HostMemory::of(&error).expect("the host's, not the guest's");
        assert!(
            reason.contains("seal its memory image 4 times")
                && reason.contains("Device or resource busy"),
            "{reason}"
        );
    }

    #[test]
    fn any_other_failure_of_a_memory_image_is_not_tried_again() {
        let tries = Cell::new(0);
        let error = retry_busy(|| {
            tries.set(tries.get() + 1);
            Err(refused(rustix::io::Errno::PERM))
        })
        .unwrap_err();
        assert_eq!(tries.get(), 1);
        assert!(HostMemory::of(&error).is_none(), "{error:?}");
    }
}
