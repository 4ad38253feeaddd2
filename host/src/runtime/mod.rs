//! The WebAssembly side: loading workflow components and running them in a
//! sandbox, with the `durable-step` imports wired to the replay engine.
//!
//! A [`ComponentFile`] is read and fingerprinted without compiling, so that a
//! finished workflow can answer from the database at once. [`Runtime`] holds
//! the wasmtime engine and the linker (WASI 0.2 plus `durable-step`);
//! [`Runtime::compile`] checks that a component is a workflow before anything
//! runs, and [`Runtime::run`] executes one [`WorkflowRun`] in a fresh,
//! sandboxed instance.

mod cache;
mod guest_output;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store, StoreLimits, StoreLimitsBuilder, Trap};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::bindings::{Workflow, WorkflowPre, durable_step};
use crate::engine::{EngineError, RunReport, StepRun, StepStart, WorkflowRun};
use crate::store::Outcome;
pub use cache::ComponentCache;
use guest_output::GuestOutput;

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
    #[error("{path} is a component, but not a durable workflow: {reason}")]
    WrongWorld { path: PathBuf, reason: String },
    #[error("cannot grant directory {host} to the guest: {reason}")]
    Dir { host: PathBuf, reason: String },
    #[error("cannot start the workflow instance: {0}")]
    Instantiate(String),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("cannot set up the WebAssembly engine: {0}")]
    Setup(String),
}

/// A component file, read and fingerprinted but not compiled.
pub struct ComponentFile {
    path: PathBuf,
    bytes: Vec<u8>,
    sha256: String,
}

impl ComponentFile {
    /// Read `path` and check that it holds a WebAssembly component.
    pub fn read(path: &Path) -> Result<Self, RuntimeError> {
        let bytes = std::fs::read(path).map_err(|e| RuntimeError::Unreadable {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        const MAGIC: &[u8] = b"\0asm";
        const CORE_VERSION: &[u8] = &[1, 0, 0, 0];
        match bytes.get(..8) {
            Some(header) if header.starts_with(MAGIC) && &header[4..] == CORE_VERSION => {
                return Err(RuntimeError::CoreModule {
                    path: path.to_owned(),
                });
            }
            Some(header) if header.starts_with(MAGIC) => {}
            _ => {
                return Err(RuntimeError::NotWasm {
                    path: path.to_owned(),
                });
            }
        }
        let digest = Sha256::digest(&bytes);
        let sha256 = digest
            .iter()
            .fold(String::with_capacity(64), |mut hex, byte| {
                let _ = write!(hex, "{byte:02x}");
                hex
            });
        Ok(Self {
            path: path.to_owned(),
            bytes,
            sha256,
        })
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
    pre: WorkflowPre<HostState>,
}

/// What the guest may see of the host. Nothing else is granted.
#[derive(Debug, Clone, Default)]
pub struct Sandbox {
    /// Host directories, each visible to the guest at its guest path.
    pub dirs: Vec<DirGrant>,
    /// Environment variables the guest sees.
    pub env: Vec<(String, String)>,
}

/// One preopened directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirGrant {
    pub host: PathBuf,
    pub guest: String,
    pub read_only: bool,
}

/// How a runtime compiles and what it lets a guest use.
#[derive(Debug, Clone, Default)]
pub struct RuntimeConfig {
    /// Wall-clock limit for a whole run, branches included.
    pub timeout: Option<Duration>,
    /// Limit on each instance's linear memory, in bytes.
    pub max_memory: Option<usize>,
    /// Where compiled components are kept; `None` compiles every time.
    pub cache: Option<ComponentCache>,
}

/// How often the epoch advances when a timeout is set: the precision of
/// `--timeout`, and the cost of the checks, which is small.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// The wasmtime engine and a linker providing WASI 0.2 and `durable-step`.
pub struct Runtime {
    engine: Engine,
    linker: Linker<HostState>,
    config: RuntimeConfig,
    /// Stops the epoch ticker thread (present with a timeout) when dropped.
    ticker_stop: Option<Arc<AtomicBool>>,
}

impl Runtime {
    pub fn new(config: RuntimeConfig) -> Result<Self, RuntimeError> {
        let setup = |e: wasmtime::Error| RuntimeError::Setup(e.to_string());
        let mut wasmtime_config = Config::new();
        wasmtime_config.epoch_interruption(config.timeout.is_some());
        let engine = Engine::new(&wasmtime_config).map_err(setup)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(setup)?;
        Workflow::add_to_linker::<_, HasSelf<HostState>>(&mut linker, |state| state)
            .map_err(setup)?;
        let ticker_stop = config.timeout.map(|_| {
            let stop = Arc::new(AtomicBool::new(false));
            let (engine, ticker_stop) = (engine.clone(), Arc::clone(&stop));
            thread::spawn(move || {
                while !ticker_stop.load(Ordering::Relaxed) {
                    thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            });
            stop
        });
        Ok(Self {
            engine,
            linker,
            config,
            ticker_stop,
        })
    }

    /// Compile `file` (or load it from the cache) and check it against the
    /// `workflow` world: every import must be one this host provides, and
    /// `run` and `run-branch` must be exported.
    pub fn compile(&self, file: &ComponentFile) -> Result<WorkflowComponent, RuntimeError> {
        let invalid = |e: wasmtime::Error| RuntimeError::Invalid {
            path: file.path.clone(),
            reason: e.root_cause().to_string(),
        };
        let component = match &self.config.cache {
            Some(cache) => cache.load_or_compile(&self.engine, &file.sha256, &file.bytes),
            None => wasmtime::component::Component::new(&self.engine, &file.bytes),
        }
        .map_err(invalid)?;
        let wrong_world = |e: wasmtime::Error| RuntimeError::WrongWorld {
            path: file.path.clone(),
            reason: e.to_string(),
        };
        let instance_pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(wrong_world)?;
        let pre = WorkflowPre::new(instance_pre).map_err(wrong_world)?;
        Ok(WorkflowComponent { pre })
    }

    /// Execute `run` in a new instance of `component`, confined to `sandbox`.
    ///
    /// A trap (panic, fault) fails the workflow and its executing step and is
    /// reported as the run's outcome. An engine error that must leave the
    /// history untouched (non-determinism, storage failure) is returned as
    /// an error instead.
    pub fn run(
        &self,
        component: &WorkflowComponent,
        sandbox: &Sandbox,
        run: Box<WorkflowRun>,
    ) -> Result<RunReport, RuntimeError> {
        let output = GuestOutput::default();
        let wasi = sandbox.wasi_ctx(&output)?;
        let input = run.input().to_owned();
        let limits = Limits {
            deadline: self.config.timeout.map(|timeout| Instant::now() + timeout),
            config: self.config.clone(),
        };
        let branches = BranchRunner {
            component: component.clone(),
            sandbox: sandbox.clone(),
            limits: limits.clone(),
        };
        let role = Role::Workflow { run, branches };
        let mut store = limits.store(&self.engine, wasi, role);
        let result = component
            .pre
            .instantiate(&mut store)
            .map_err(|e| RuntimeError::Instantiate(e.to_string()))
            .map(|workflow| workflow.call_run(&mut store, &input));
        let Role::Workflow { run, .. } = store.into_data().role else {
            unreachable!("the workflow instance keeps its role")
        };
        match result? {
            Ok(outcome) => Ok(run.complete(outcome)?),
            Err(trap) => match trap.downcast::<EngineError>() {
                Ok(EngineError::Cancelled { .. }) => Ok(run.cancel()?),
                Ok(error) if keeps_history(&error) => Err(error.into()),
                Ok(guest_misuse) => Ok(run.abort(guest_misuse.to_string())?),
                Err(trap) => Ok(run.abort(limits.trap_reason(&trap, &output))?),
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
struct Limits {
    deadline: Option<Instant>,
    config: RuntimeConfig,
}

impl Limits {
    /// A store for one instance, with the memory limit and what is left of
    /// the run's time.
    fn store(&self, engine: &Engine, wasi: WasiCtx, role: Role) -> Store<HostState> {
        let mut limits = StoreLimitsBuilder::new().trap_on_grow_failure(true);
        if let Some(bytes) = self.config.max_memory {
            limits = limits.memory_size(bytes);
        }
        let mut store = Store::new(
            engine,
            HostState {
                wasi,
                table: ResourceTable::new(),
                limits: limits.build(),
                role,
            },
        );
        store.limiter(|state| &mut state.limits);
        if let Some(deadline) = self.deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            store.set_epoch_deadline((left.as_millis() / EPOCH_TICK.as_millis()) as u64 + 1);
        }
        store
    }

    /// A one-line reason for a trap: a limit that was hit, the panic message
    /// if the guest printed one, else the trap itself (its backtrace is
    /// noise in a failure record).
    fn trap_reason(&self, trap: &wasmtime::Error, output: &GuestOutput) -> String {
        if let Some(exit) = trap.downcast_ref::<wasmtime_wasi::I32Exit>() {
            return format!(
                "the guest exited with status {} instead of returning",
                exit.0
            );
        }
        if let (Some(Trap::Interrupt), Some(timeout)) =
            (trap.downcast_ref::<Trap>(), self.config.timeout)
        {
            return format!("guest stopped: it ran past the --timeout of {timeout:?}");
        }
        if let Some(bytes) = self.config.max_memory
            && format!("{trap:#}").contains("growing memory")
        {
            return format!(
                "guest stopped: it needed more than the --max-memory of {} MiB",
                bytes >> 20
            );
        }
        match output.panic_message() {
            Some(panic) => format!("guest panicked: {panic}"),
            None => format!("guest trapped: {}", trap.root_cause()),
        }
    }
}

/// At most this many branch instances run at once; more branches wait.
const MAX_BRANCH_THREADS: usize = 64;

/// Runs the branches of a parallel call, each in a fresh instance of the
/// workflow's component on a thread of its own.
struct BranchRunner {
    component: WorkflowComponent,
    sandbox: Sandbox,
    limits: Limits,
}

/// One branch to execute.
struct BranchJob {
    index: usize,
    step: StepRun,
    entry: String,
    input: String,
}

impl BranchRunner {
    /// Execute `jobs` concurrently, handing each outcome to `record` on this
    /// thread as soon as it is known, so that every branch is checkpointed on
    /// its own by the one thread that writes.
    fn run_all(
        &self,
        jobs: Vec<BranchJob>,
        mut record: impl FnMut(usize, &str, Outcome) -> Result<(), EngineError>,
    ) -> Result<(), EngineError> {
        let workers = jobs.len().min(MAX_BRANCH_THREADS);
        let queue = Mutex::new(jobs.into_iter());
        let (done, finished) = mpsc::channel();
        thread::scope(|scope| {
            for _ in 0..workers {
                let done = done.clone();
                let queue = &queue;
                scope.spawn(move || {
                    loop {
                        let next = queue.lock().unwrap_or_else(|e| e.into_inner()).next();
                        let Some(job) = next else { break };
                        let outcome = self.run_one(&job);
                        // A closed channel means the run is failing: stop.
                        if done.send((job.index, job.step.key, outcome)).is_err() {
                            break;
                        }
                    }
                });
            }
            drop(done);
            for (index, key, outcome) in finished {
                record(index, key.as_str(), outcome)?;
            }
            Ok(())
        })
    }

    /// Run one branch to its outcome; a trap fails this branch only.
    fn run_one(&self, job: &BranchJob) -> Outcome {
        let output = GuestOutput::default();
        let wasi = self.sandbox.wasi_ctx(&output).map_err(|e| e.to_string())?;
        let pre = &self.component.pre;
        let mut store = self.limits.store(pre.engine(), wasi, Role::Branch);
        let workflow = pre
            .instantiate(&mut store)
            .map_err(|e| format!("cannot start an instance for the branch: {e}"))?;
        let step = durable_step::StepRun::from(&job.step);
        workflow
            .call_run_branch(&mut store, &job.entry, &step, &job.input)
            .unwrap_or_else(|trap| Err(self.limits.trap_reason(&trap, &output)))
    }
}

/// Engine errors after which the run must stop without recording anything.
fn keeps_history(error: &EngineError) -> bool {
    error.is_non_determinism()
        || matches!(
            error,
            EngineError::Store(_) | EngineError::InputMismatch { .. }
        )
}

impl Sandbox {
    fn wasi_ctx(&self, output: &GuestOutput) -> Result<WasiCtx, RuntimeError> {
        // No inherited environment, arguments, stdin or network: only what
        // the sandbox lists. WASI's clocks and random stay available.
        let mut builder = WasiCtxBuilder::new();
        builder.stdout(output.clone()).stderr(output.clone());
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

/// Everything one guest instance can reach.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
    role: Role,
}

/// What an instance is for.
enum Role {
    /// Runs the workflow's `run`, and owns the run's history.
    Workflow {
        run: Box<WorkflowRun>,
        branches: BranchRunner,
    },
    /// Runs one parallel branch; it cannot begin steps of its own.
    Branch,
}

impl HostState {
    fn run(&mut self) -> wasmtime::Result<(&mut WorkflowRun, &BranchRunner)> {
        match &mut self.role {
            Role::Workflow { run, branches } => Ok((run, branches)),
            Role::Branch => Err(wasmtime::Error::msg(
                "steps cannot be begun inside a parallel branch; return a value and begin them in the workflow",
            )),
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl From<&StepRun> for durable_step::StepRun {
    fn from(step: &StepRun) -> Self {
        Self {
            key: step.key.to_string(),
            attempt: step.attempt,
            idempotency_key: step.idempotency_key.clone(),
        }
    }
}

impl durable_step::Host for HostState {
    fn begin_step(&mut self, name: String) -> wasmtime::Result<durable_step::StepStart> {
        let (run, _) = self.run()?;
        Ok(match run.begin_step(&name)? {
            StepStart::Replayed(outcome) => durable_step::StepStart::Replayed(outcome),
            StepStart::Execute(step) => durable_step::StepStart::Execute((&step).into()),
        })
    }

    fn run_parallel(
        &mut self,
        branches: Vec<durable_step::Branch>,
    ) -> wasmtime::Result<Vec<Outcome>> {
        let (run, runner) = self.run()?;
        let names: Vec<&str> = branches.iter().map(|b| b.name.as_str()).collect();
        let starts = run.begin_steps(&names)?;
        let mut results: Vec<Option<Outcome>> = vec![None; branches.len()];
        let mut jobs = Vec::new();
        for (index, (start, branch)) in starts.into_iter().zip(branches).enumerate() {
            match start {
                StepStart::Replayed(outcome) => results[index] = Some(outcome),
                StepStart::Execute(step) => jobs.push(BranchJob {
                    index,
                    step,
                    entry: branch.entry,
                    input: branch.input,
                }),
            }
        }
        runner.run_all(jobs, |index, key, outcome| {
            run.finish_step(key, outcome.clone())?;
            results[index] = Some(outcome);
            Ok(())
        })?;
        Ok(results
            .into_iter()
            .map(|result| result.expect("every branch was replayed or executed"))
            .collect())
    }

    fn record_attempt(&mut self, key: String, error: String) -> wasmtime::Result<u32> {
        let (run, _) = self.run()?;
        Ok(run.record_attempt(&key, &error)?)
    }

    fn finish_step(&mut self, key: String, outcome: Outcome) -> wasmtime::Result<()> {
        let (run, _) = self.run()?;
        Ok(run.finish_step(&key, outcome)?)
    }
}
