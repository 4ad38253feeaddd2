//! Write durable workflows in plain Rust.
//!
//! A workflow is a function `fn(&Context, Input) -> Result<Output, Error>`
//! compiled to a WebAssembly component (`cargo build --target wasm32-wasip2`)
//! and run by `durable-host`. Every piece of work that must not be repeated
//! after a crash goes into a [`Context::step`]: the host checkpoints each step's
//! result in SQLite, and when a crashed workflow runs again, completed steps
//! hand back their recorded result instead of running a second time.
//!
//! ```no_run
//! use durable_sdk::{Context, Error};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Deserialize)]
//! struct Order { id: u64, amount_cents: u64 }
//!
//! #[derive(Serialize)]
//! struct Receipt { payment_id: String, emailed: bool }
//!
//! fn checkout(ctx: &Context, order: Order) -> Result<Receipt, Error> {
//!     // Runs once; on a resumed run the stored payment id comes back.
//!     let payment_id: String = ctx.step("charge_card", || {
//!         Ok(format!("pay-{}-{}", order.id, order.amount_cents))
//!     })?;
//!     let emailed = ctx.step("send_receipt", || Ok(true))?;
//!     Ok(Receipt { payment_id, emailed })
//! }
//!
//! durable_sdk::workflow!(checkout);
//! ```
//!
//! Then: `durable-host run target/wasm32-wasip2/release/checkout.wasm
//! --workflow-id order-42 --input '{"id": 42, "amount_cents": 1999}'`.
//!
//! # What must stay deterministic
//!
//! On every run the workflow function executes from the top, so the code
//! *between* steps must make the same decisions each time: the same steps, in
//! the same order, with the same names. Anything that can change between runs
//! (the clock, random numbers, files, other services) belongs inside a step,
//! whose recorded result is what later runs see. The host stops a run that
//! asks for a different step than the recorded history, and changes nothing.
//!
//! # Parallel steps
//!
//! [`Context::parallel`] and [`Context::join`] run several steps at once. Each
//! branch body is a plain function that the host runs in its own instance of
//! the workflow, on its own thread:
//!
//! ```no_run
//! # use durable_sdk::{Branch, Context, Error};
//! fn resize(width: u32) -> Result<String, Error> { Ok(format!("thumb-{width}.png")) }
//!
//! fn thumbnails(ctx: &Context, widths: Vec<u32>) -> Result<Vec<String>, Error> {
//!     let branches = widths.iter().map(|w| Branch::new("resize", resize, w)).collect();
//!     ctx.parallel(branches).into_iter().collect()
//! }
//! ```
//!
//! # Signals and events
//!
//! A workflow can wait for people and other systems: [`Context::wait_signal`]
//! returns the value sent with `durable-host signal` (or the HTTP API), with
//! an optional timeout, and holds no process while it waits.
//! [`Context::set_event`] publishes a value (progress, a link) that observers
//! read with `durable-host get-event`.
//!
//! ```no_run
//! # use durable_sdk::{Context, Error};
//! # use std::time::Duration;
//! fn expense(ctx: &Context, amount: u64) -> Result<String, Error> {
//!     ctx.set_event("status", "awaiting approval")?;
//!     let approved: Option<bool> =
//!         ctx.wait_signal("approval", Some(Duration::from_secs(3 * 24 * 3600)))?;
//!     Ok(match approved {
//!         Some(true) => format!("paid {amount}"),
//!         Some(false) => "rejected".to_owned(),
//!         None => "escalated: nobody answered in three days".to_owned(),
//!     })
//! }
//! ```
//!
//! # Calling other services
//!
//! With the `http` feature, [`http`] sends requests from step bodies to the
//! destinations the workflow was granted (`--allow-http`), with the step's
//! idempotency key in an `Idempotency-Key` header.
//!
//! # Steps and their keys
//!
//! Each step gets the key `name#NNNNNN`, counting calls per name, so calling
//! the same step in a loop or a branch is fine. Pass an empty name and the
//! SDK names the step after its call site (`file:line:column`).
//!
//! A step either completes (its value or its error is recorded and replayed)
//! or is interrupted by a crash. An interrupted step runs again on the next
//! run: steps are *at least once* while in flight and *exactly once* once
//! recorded. Give external services [`current_step`]'s idempotency key to
//! make the repeat harmless.

// The bindings and the export macro name this crate by its path, also from inside.
extern crate self as durable_sdk;

use std::cell::RefCell;
use std::fmt;
use std::marker::PhantomData;
use std::panic::Location;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde::de::DeserializeOwned;

#[doc(hidden)]
#[allow(clippy::too_many_arguments)] // generated code
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "workflow",
        pub_export_macro: true,
        default_bindings_module: "durable_sdk::bindings",
        runtime_path: "durable_sdk::bindings::wit_bindgen_rt",
    });
    #[doc(hidden)]
    pub use wit_bindgen::rt as wit_bindgen_rt;
}

#[doc(hidden)]
pub use serde_json as __serde_json;

#[cfg(feature = "http")]
pub mod http;

use bindings::durable::workflow::durable_step as host;

/// An error that ends a step or a workflow.
///
/// It carries a message, which is what the host records and what a replay
/// hands back. Any `std::error::Error` converts into it, so `?` works inside
/// steps and workflows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    message: String,
    code: Option<String>,
    permanent: bool,
    cancelled: bool,
}

impl Error {
    /// An error with the given message. A step with a [`RetryPolicy`]
    /// retries it.
    pub fn new(message: impl fmt::Display) -> Self {
        Self {
            message: message.to_string(),
            code: None,
            permanent: false,
            cancelled: false,
        }
    }

    /// The same error with a short, stable `code` a caller can match on
    /// (`card_declined`, `out_of_stock`): recorded with the message and
    /// handed back by replays, so `match err.code()` gives the same answer
    /// on every run.
    pub fn with_code(mut self, code: impl Into<String>) -> Self {
        self.code = Some(code.into());
        self
    }

    /// The code given with [`Error::with_code`], if any. A cancellation has
    /// the code [`CANCELLED`].
    pub fn code(&self) -> Option<&str> {
        self.code.as_deref()
    }

    fn cancelled(reason: String) -> Self {
        Self {
            cancelled: true,
            permanent: true,
            ..Self::new(reason).with_code(CANCELLED)
        }
    }

    fn from_host(error: host::StepError) -> Self {
        Self {
            code: error.code,
            ..Self::new(error.message)
        }
    }

    fn to_host(&self) -> host::StepError {
        host::StepError {
            message: self.message.clone(),
            code: self.code.clone(),
        }
    }

    /// The workflow was cancelled (`durable-host cancel`): the step, sleep
    /// or parallel call that returned this did not run. The workflow may
    /// still run steps that undo its work (compensation) within the host's
    /// grace period, then should return; it ends `cancelled` whatever it
    /// returns.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled
    }

    /// An error that retrying cannot fix (a bad request, a refusal): a step
    /// fails with it at once, whatever its [`RetryPolicy`].
    pub fn permanent(message: impl fmt::Display) -> Self {
        Self {
            permanent: true,
            ..Self::new(message)
        }
    }

    /// Whether this error skips the remaining retries.
    pub fn is_permanent(&self) -> bool {
        self.permanent
    }

    /// The message, as recorded by the host.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

// Like anyhow, `Error` does not implement `std::error::Error` itself, so this
// blanket conversion does not overlap with `From<Error> for Error`.
impl<E: std::error::Error> From<E> for Error {
    fn from(error: E) -> Self {
        Self::new(error)
    }
}

/// The code of an [`Error`] that tells of a cancellation.
pub const CANCELLED: &str = "cancelled";

/// The code of the error [`Context::wait_signal`] returns for a signal whose
/// value does not decode into the type asked for.
pub const UNDECODABLE_SIGNAL: &str = "undecodable_signal";

/// Build an [`Error`] from a format string: `Err(durable_sdk::error!("no seat {n}"))`.
#[macro_export]
macro_rules! error {
    ($($arg:tt)*) => {
        $crate::Error::new(::std::format!($($arg)*))
    };
}

/// The step whose body is executing right now, as the host announced it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepRun {
    /// `name#NNNNNN`.
    pub key: String,
    /// 1 on the first execution; one more for each execution since: retries,
    /// and executions again after an earlier run died mid-step.
    pub attempt: u32,
    /// Failed attempts so far: what a [`RetryPolicy`] counts (an execution
    /// cut short by a crash is not a failure).
    pub failures: u32,
    /// `<workflow id>/<step key>`, with `%` and `/` in the workflow id
    /// written `%25` and `%2F`: hand it to external services so that a
    /// repeated attempt is recognised as a duplicate.
    pub idempotency_key: String,
}

thread_local! {
    static CURRENT_STEP: RefCell<Option<StepRun>> = const { RefCell::new(None) };
}

/// The step being executed, or `None` outside a step body (and while a step
/// is replayed, as its body does not run).
pub fn current_step() -> Option<StepRun> {
    CURRENT_STEP.with(|current| current.borrow().clone())
}

/// A child workflow started with [`Context::start_child`]; wait for it with
/// [`Context::await_child`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Child {
    workflow_id: String,
}

impl Child {
    /// The child's workflow id.
    pub fn workflow_id(&self) -> &str {
        &self.workflow_id
    }
}

/// Write a formatted line to the workflow's log: `durable_sdk::log!(ctx, "charged {n}")`.
/// See [`Context::log`].
#[macro_export]
macro_rules! log {
    ($ctx:expr, $($arg:tt)*) => {
        $ctx.log(::std::format_args!($($arg)*))
    };
}

/// The workflow's handle on the host: every durable operation goes through it.
pub struct Context {
    _private: (),
}

impl Context {
    #[doc(hidden)]
    pub fn __new() -> Self {
        Self { _private: () }
    }

    /// Run `body` as the durable step `name`, or hand back its recorded
    /// result if an earlier run of this workflow completed it.
    ///
    /// The value is stored as JSON, so `T` must round-trip through serde. An
    /// `Err` from `body` is recorded too and replayed as the same error.
    /// With an empty `name` the step is named after this call's location in
    /// the source.
    #[track_caller]
    pub fn step<T, F>(&self, name: &str, body: F) -> Result<T, Error>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> Result<T, Error>,
    {
        let mut body = Some(body);
        self.step_with_retry(name, &RetryPolicy::none(), || {
            body.take()
                .expect("a step without retries runs its body once")()
        })
    }

    /// Like [`Context::step`], retrying a failed attempt as `policy` says.
    ///
    /// Each failed attempt is recorded (the step's `attempts` and latest
    /// error, visible in `durable-host history`) before the backoff, so the
    /// count survives a crash. An [`Error::permanent`] error, or the error of
    /// the last allowed attempt, becomes the step's recorded result.
    #[track_caller]
    pub fn step_with_retry<T, F>(
        &self,
        name: &str,
        policy: &RetryPolicy,
        body: F,
    ) -> Result<T, Error>
    where
        T: Serialize + DeserializeOwned,
        F: FnMut() -> Result<T, Error>,
    {
        self.run_step(name, None, policy, body)
    }

    /// Like [`Context::step`], for a step that works on `input`: `body` gets
    /// it, and a fingerprint of it is recorded with the step. A replay that
    /// reaches the step with another input stops as non-deterministic (the
    /// code now calls it with other arguments than those its recorded result
    /// came from) instead of handing back that result. Steps recorded before
    /// they had a fingerprint replay as before.
    #[track_caller]
    pub fn step_with_input<I, T, F>(&self, name: &str, input: &I, body: F) -> Result<T, Error>
    where
        I: Serialize,
        T: Serialize + DeserializeOwned,
        F: FnOnce(&I) -> Result<T, Error>,
    {
        let json = serde_json::to_vec(input)
            .map_err(|e| error!("the input of step `{name}` cannot be encoded as JSON: {e}"))?;
        let mut body = Some(body);
        self.run_step(
            name,
            Some(&fingerprint(&json)),
            &RetryPolicy::none(),
            || {
                body.take()
                    .expect("a step without retries runs its body once")(input)
            },
        )
    }

    #[track_caller]
    fn run_step<T, F>(
        &self,
        name: &str,
        input_fingerprint: Option<&str>,
        policy: &RetryPolicy,
        mut body: F,
    ) -> Result<T, Error>
    where
        T: Serialize + DeserializeOwned,
        F: FnMut() -> Result<T, Error>,
    {
        let caller = Location::caller();
        let name = if name.is_empty() {
            format!("{}:{}:{}", caller.file(), caller.line(), caller.column())
        } else {
            name.to_owned()
        };
        let start = match input_fingerprint {
            Some(fingerprint) => host::begin_step_with_input(&name, fingerprint),
            None => host::begin_step(&name),
        };
        let mut run = match start {
            host::StepStart::Replayed(recorded) => return decode(&name, recorded),
            host::StepStart::Execute(run) => run,
            host::StepStart::Cancelled(reason) => return Err(Error::cancelled(reason)),
        };
        let key = run.key.clone();
        loop {
            let outcome = with_current_step(run.clone(), &mut body);
            match outcome {
                Err(error) if !error.permanent && run.failures + 1 < policy.max_attempts => {
                    // The host records the error as raised, waits out the
                    // backoff durably and counts the next attempt.
                    let backoff = policy.backoff_before(run.failures + 2);
                    run = host::record_attempt(&key, &error.to_host(), backoff.as_millis() as u64);
                }
                outcome => {
                    let recorded = match &outcome {
                        Ok(value) => serde_json::to_string(value).map_err(|e| {
                            Error::new(format!(
                                "step `{key}` returned a value that cannot be stored as JSON: {e}"
                            ))
                            .to_host()
                        }),
                        Err(error) => Err(error.to_host()),
                    };
                    host::finish_step(&key, &recorded);
                    // Hand back exactly what a replay will see.
                    return match recorded {
                        Ok(_) => outcome,
                        Err(error) => Err(Error::from_host(error)),
                    };
                }
            }
        }
    }

    /// Sleep durably: the host records the wake-up time (as the step
    /// `durable.sleep`) and waits, so a workflow resumed after a crash sleeps
    /// only what is left, or not at all. The wait does not count against the
    /// run's `--timeout`.
    ///
    /// A cancellation ends the sleep early with an error for which
    /// [`Error::is_cancelled`] is true.
    pub fn sleep(&self, duration: Duration) -> Result<(), Error> {
        host::sleep(duration.as_millis().min(u128::from(u64::MAX)) as u64).map_err(Error::cancelled)
    }

    /// Wait for the signal `name` and return its value, or `None` when
    /// `timeout` runs out first (`None` waits as long as it takes).
    ///
    /// Signals are sent with `durable-host signal ID NAME --data JSON` or
    /// `POST /v1/workflows/{id}/signals/{name}`, and kept until a wait takes
    /// them: one sent before the workflow gets here is not missed. Each is
    /// taken once, oldest first, and recorded (as the step
    /// `durable.signal:NAME`), so a resumed workflow gets the same value.
    /// The timeout is a durable timer, like [`Context::sleep`]'s.
    ///
    /// A long wait holds no process: `durable-host run` ends with the
    /// workflow `waiting` (exit 12), and `serve` resumes it as soon as the
    /// signal comes. A value that does not decode into `T` (anyone may send
    /// a signal) is taken all the same and returned as an error with the
    /// code [`UNDECODABLE_SIGNAL`] (a replay gets the same error): wait
    /// again to skip it. A cancellation ends the wait with an error for
    /// which [`Error::is_cancelled`] is true.
    pub fn wait_signal<T: DeserializeOwned>(
        &self,
        name: &str,
        timeout: Option<Duration>,
    ) -> Result<Option<T>, Error> {
        let timeout_ms = timeout.map(|t| t.as_millis().min(u128::from(u64::MAX)) as u64);
        match host::wait_signal(name, timeout_ms) {
            Err(reason) => Err(Error::cancelled(reason)),
            Ok(None) => Ok(None),
            Ok(Some(json)) => serde_json::from_str(&json).map(Some).map_err(|e| {
                error!(
                    "signal `{name}` holds a value that is not a {}: {e}",
                    std::any::type_name::<T>()
                )
                .with_code(UNDECODABLE_SIGNAL)
            }),
        }
    }

    /// Start the workflow `workflow_id` as a child of this one, with
    /// `input`: of the newest version of `deployment` (`durable-host
    /// deploy`), or of this workflow's own component (and grants) when
    /// `None`. Started once: the start is recorded (the step
    /// `durable.child:ID`) in the same commit that queues the child, so a
    /// resumed workflow neither starts it again nor loses it. `serve` runs
    /// it like any queued workflow, in this workflow's queue.
    ///
    /// An error when it cannot be started (the id is another workflow's, no
    /// such deployment), which is recorded too, or when this workflow was
    /// cancelled. Cancelling this workflow cancels its unfinished children.
    pub fn start_child<I: Serialize + ?Sized>(
        &self,
        workflow_id: &str,
        deployment: Option<&str>,
        input: &I,
    ) -> Result<Child, Error> {
        let input = serde_json::to_string(input).map_err(|e| {
            error!("the input of child workflow {workflow_id} cannot be encoded as JSON: {e}")
        })?;
        let child = host::ChildWorkflow {
            workflow_id: workflow_id.to_owned(),
            deployment: deployment.map(str::to_owned),
            input,
        };
        host::start_child(&child).map_err(|error| match error.code.as_deref() {
            Some(CANCELLED) => Error::cancelled(error.message),
            _ => Error::from_host(error),
        })?;
        Ok(Child {
            workflow_id: child.workflow_id,
        })
    }

    /// Wait for `child` to end and return its output, or `None` when
    /// `timeout` runs out first (`None` waits as long as it takes). The
    /// child's error (a cancelled child's has the code `cancelled`) is
    /// returned as this call's error. The outcome is recorded (the step
    /// `durable.child-result:ID`), so a resumed workflow gets the same one.
    /// Like [`Context::wait_signal`], a long wait holds no process.
    pub fn await_child<T: DeserializeOwned>(
        &self,
        child: &Child,
        timeout: Option<Duration>,
    ) -> Result<Option<T>, Error> {
        let id = &child.workflow_id;
        let timeout_ms = timeout.map(|t| t.as_millis().min(u128::from(u64::MAX)) as u64);
        match host::await_child(id, timeout_ms) {
            Err(reason) => Err(Error::cancelled(reason)),
            Ok(None) => Ok(None),
            Ok(Some(Err(error))) => Err(Error::from_host(error)),
            Ok(Some(Ok(json))) => serde_json::from_str(&json).map(Some).map_err(|e| {
                error!(
                    "child workflow {id} returned a value that is not a {}: {e}",
                    std::any::type_name::<T>()
                )
            }),
        }
    }

    /// Publish `value` under `key` for people and programs watching the
    /// workflow: `durable-host get-event ID KEY [--wait]`, `GET
    /// /v1/workflows/{id}/events/{key}`. The last value published for a
    /// key is the one read. Recorded as the step `durable.event:KEY`, so a
    /// resumed workflow does not publish it again.
    pub fn set_event<T: Serialize + ?Sized>(&self, key: &str, value: &T) -> Result<(), Error> {
        let json = serde_json::to_string(value)
            .map_err(|e| error!("the event `{key}` cannot be encoded as JSON: {e}"))?;
        host::set_event(key, &json);
        Ok(())
    }

    /// The id of the workflow being run.
    pub fn workflow_id(&self) -> String {
        host::workflow_id()
    }

    /// Write a line to the workflow's log (the host's standard error, with
    /// the workflow id). Silent while the workflow replays recorded steps, so
    /// a line is written once, not again on every resume.
    pub fn log(&self, message: impl fmt::Display) {
        host::log(&message.to_string());
    }

    /// The current time, recorded: every replay sees the same instant.
    pub fn now(&self) -> Result<SystemTime, Error> {
        let millis: u64 = self.step("durable.now", || Ok(unix_millis()))?;
        Ok(UNIX_EPOCH + Duration::from_millis(millis))
    }

    /// A random number, recorded: every replay sees the same value.
    pub fn random(&self) -> Result<u64, Error> {
        self.step("durable.random", || Ok(random_u64()))
    }

    /// A random (version 4) UUID, recorded: every replay sees the same one.
    pub fn uuid(&self) -> Result<String, Error> {
        self.step("durable.uuid", || {
            let (high, low) = (random_u64(), random_u64());
            let high = (high & !0xf000) | 0x4000; // version 4
            let low = (low & !(0b11 << 62)) | (0b10 << 62); // RFC 4122 variant
            Ok(format!(
                "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
                high >> 32,
                (high >> 16) & 0xffff,
                high & 0xffff,
                low >> 48,
                low & 0xffff_ffff_ffff
            ))
        })
    }
}

/// How [`Context::step_with_retry`] retries: up to `max_attempts` in all,
/// waiting `initial_backoff`, then `multiplier` times longer each time, at
/// most `max_backoff`.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub multiplier: f64,
}

impl RetryPolicy {
    /// Up to `max_attempts` attempts, backing off from 100 ms, doubling, to 30 s.
    pub fn attempts(max_attempts: u32) -> Self {
        Self {
            max_attempts,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(30),
            multiplier: 2.0,
        }
    }

    /// One attempt: no retries.
    pub fn none() -> Self {
        Self::attempts(1)
    }

    /// The same policy with another backoff.
    pub fn backoff(self, initial: Duration, max: Duration) -> Self {
        Self {
            initial_backoff: initial,
            max_backoff: max,
            ..self
        }
    }

    /// The wait before attempt `attempt` (2 is the first retry).
    pub fn backoff_before(&self, attempt: u32) -> Duration {
        let retries = attempt.saturating_sub(2).min(64) as i32;
        self.initial_backoff
            .mul_f64(self.multiplier.max(1.0).powi(retries))
            .min(self.max_backoff)
    }
}

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // RandomState's keys come from the platform's random source (WASI's).
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(unix_millis());
    hasher.finish()
}

/// A step to run in parallel with others: see [`Context::parallel`] and
/// [`Context::join`].
///
/// The body is a plain function (not a closure) because it runs in a
/// separate instance of the workflow, on its own thread: it gets its input
/// as a value and cannot borrow from the workflow.
pub struct Branch<T> {
    spec: host::Branch,
    /// An input that could not be encoded fails the branch without running it.
    input_error: Option<String>,
    _output: PhantomData<fn() -> T>,
}

impl<T: Serialize + DeserializeOwned> Branch<T> {
    /// The step `name`, running `body(input)`.
    pub fn new<I>(name: &str, body: fn(I) -> Result<T, Error>, input: &I) -> Self
    where
        I: Serialize + DeserializeOwned,
    {
        let (input, input_error) = match serde_json::to_string(input) {
            Ok(json) => (json, None),
            Err(e) => (
                String::new(),
                Some(format!(
                    "the input of branch `{name}` cannot be encoded as JSON: {e}"
                )),
            ),
        };
        Self {
            spec: host::Branch {
                name: name.to_owned(),
                entry: branch_entry(body),
                input,
                retry: None,
            },
            input_error,
            _output: PhantomData,
        }
    }

    /// Retry the branch as `policy` says when it returns an error (not an
    /// [`Error::permanent`] one: see below). The host runs each attempt in a
    /// fresh instance and records each failed attempt, as
    /// [`Context::step_with_retry`] does.
    ///
    /// A branch runs in another instance, so the host cannot tell a
    /// permanent error from its message: a branch that must not be retried
    /// on some errors should not be given a policy, or should return `Ok`
    /// with a value that says it failed.
    pub fn retry(mut self, policy: &RetryPolicy) -> Self {
        self.spec.retry = Some(host::RetryPolicy {
            max_attempts: policy.max_attempts,
            initial_backoff_ms: policy.initial_backoff.as_millis() as u64,
            max_backoff_ms: policy.max_backoff.as_millis() as u64,
            multiplier: policy.multiplier,
        });
        self
    }
}

impl Context {
    /// Run steps at the same time, each in its own instance of the workflow
    /// on its own host thread, and return their results in order.
    ///
    /// Keys are reserved in list order before anything runs, so they are the
    /// same on every run whatever finishes first. Each branch is checkpointed
    /// on its own: after a crash, only the branches that had not finished run
    /// again. A branch that panics fails alone, with the panic as its error.
    pub fn parallel<T: Serialize + DeserializeOwned>(
        &self,
        branches: Vec<Branch<T>>,
    ) -> Vec<Result<T, Error>> {
        let specs = branches
            .iter()
            .map(|b| (b.spec.clone(), b.input_error.clone()))
            .collect();
        run_branches(specs)
            .into_iter()
            .zip(&branches)
            .map(|(outcome, branch)| decode_branch(&branch.spec.name, outcome))
            .collect()
    }

    /// Run two steps of different types at the same time; see [`Context::parallel`].
    pub fn join<A, B>(&self, a: Branch<A>, b: Branch<B>) -> (Result<A, Error>, Result<B, Error>)
    where
        A: Serialize + DeserializeOwned,
        B: Serialize + DeserializeOwned,
    {
        let mut outcomes = run_branches(vec![
            (a.spec.clone(), a.input_error),
            (b.spec.clone(), b.input_error),
        ]);
        let outcome_b = outcomes.pop().expect("one result per branch");
        let outcome_a = outcomes.pop().expect("one result per branch");
        (
            decode_branch(&a.spec.name, outcome_a),
            decode_branch(&b.spec.name, outcome_b),
        )
    }
}

/// How one branch ended, before decoding.
enum BranchOutcome {
    Recorded(Result<String, host::StepError>),
    Cancelled(String),
}

/// Run the branches whose input could be encoded; the others fail at once.
fn run_branches(specs: Vec<(host::Branch, Option<String>)>) -> Vec<BranchOutcome> {
    let runnable: Vec<host::Branch> = specs
        .iter()
        .filter(|(_, e)| e.is_none())
        .map(|(s, _)| s.clone())
        .collect();
    let mut results = match host::run_parallel(&runnable) {
        Ok(results) => results.into_iter(),
        Err(reason) => {
            return specs
                .iter()
                .map(|_| BranchOutcome::Cancelled(reason.clone()))
                .collect();
        }
    };
    specs
        .into_iter()
        .map(|(_, input_error)| {
            BranchOutcome::Recorded(match input_error {
                Some(message) => Err(Error::new(message).to_host()),
                None => results.next().expect("one result per branch"),
            })
        })
        .collect()
}

fn decode_branch<T: DeserializeOwned>(name: &str, outcome: BranchOutcome) -> Result<T, Error> {
    match outcome {
        BranchOutcome::Recorded(recorded) => decode(name, recorded),
        BranchOutcome::Cancelled(reason) => Err(Error::cancelled(reason)),
    }
}

/// A branch function and its monomorphic adapter, as function-table indices.
///
/// Every instance of a component has the same function table, so the indices
/// name the same functions in the instance that runs the branch.
fn branch_entry<I, T>(body: fn(I) -> Result<T, Error>) -> String
where
    I: DeserializeOwned,
    T: Serialize,
{
    let adapter: fn(usize, String) -> Result<String, host::StepError> = run_branch_body::<I, T>;
    format!("{}:{}", adapter as usize, body as usize)
}

fn run_branch_body<I: DeserializeOwned, T: Serialize>(
    body: usize,
    input: String,
) -> Result<String, host::StepError> {
    // SAFETY: `body` was made from a `fn(I) -> Result<T, Error>` by
    // `branch_entry::<I, T>`, which also chose this adapter, in an instance
    // of this same component (the host only calls `run-branch` that way).
    let body: fn(I) -> Result<T, Error> =
        unsafe { std::mem::transmute::<usize, fn(I) -> Result<T, Error>>(body) };
    let input: I = serde_json::from_str(&input)
        .map_err(|e| error!("the branch input does not have the expected shape: {e}").to_host())?;
    let value = body(input).map_err(|e| e.to_host())?;
    serde_json::to_string(&value).map_err(|e| {
        error!("the branch returned a value that cannot be stored as JSON: {e}").to_host()
    })
}

/// Run one branch in this instance. Used by [`workflow!`]; not public API.
#[doc(hidden)]
pub fn __run_branch(
    entry: String,
    step: host::StepRun,
    input: String,
) -> Result<String, host::StepError> {
    let parse = |index: Option<&str>| index.and_then(|i| i.parse::<usize>().ok());
    let mut parts = entry.split(':');
    let (Some(adapter), Some(body)) = (parse(parts.next()), parse(parts.next())) else {
        return Err(error!("`{entry}` is not a branch entry of this SDK").to_host());
    };
    // SAFETY: as in `run_branch_body`: `adapter` came from `branch_entry` in
    // an instance of this same component.
    let adapter: fn(usize, String) -> Result<String, host::StepError> = unsafe {
        std::mem::transmute::<usize, fn(usize, String) -> Result<String, host::StepError>>(adapter)
    };
    with_current_step(step, || adapter(body, input))
}

fn with_current_step<T>(run: host::StepRun, body: impl FnOnce() -> T) -> T {
    let step = StepRun {
        key: run.key,
        attempt: run.attempt,
        failures: run.failures,
        idempotency_key: run.idempotency_key,
    };
    CURRENT_STEP.with(|current| *current.borrow_mut() = Some(step));
    let result = body();
    CURRENT_STEP.with(|current| *current.borrow_mut() = None);
    result
}

/// FNV-1a (64 bits) of a step's JSON input: small, stable across builds
/// and platforms, and enough to tell one input from another.
fn fingerprint(bytes: &[u8]) -> String {
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("fnv1a64:{hash:016x}")
}

fn decode<T: DeserializeOwned>(
    name: &str,
    recorded: Result<String, host::StepError>,
) -> Result<T, Error> {
    match recorded {
        Ok(json) => Ok(serde_json::from_str(&json).unwrap_or_else(|e| {
            // The history holds a value this code cannot read: the step's type
            // changed since it ran. Continuing would diverge from the history;
            // the host stops the run as non-deterministic.
            host::value_mismatch(name, std::any::type_name::<T>(), &e.to_string());
            panic!("recorded result of step `{name}` does not match the type this workflow expects ({e}); was the workflow changed since it started?")
        })),
        Err(error) => Err(Error::from_host(error)),
    }
}

/// Decode the workflow input, run `workflow`, encode its output. Used by
/// [`workflow!`]; not part of the public API.
#[doc(hidden)]
pub fn __run<I, O>(
    input: String,
    workflow: fn(&Context, I) -> Result<O, Error>,
) -> Result<String, host::StepError>
where
    I: DeserializeOwned,
    O: Serialize,
{
    let input: I = match serde_json::from_str(&input) {
        Ok(input) => input,
        Err(e) => {
            // Not the workflow's answer: the host refuses the run and
            // records nothing, so the id is not spent on a typo.
            let reason = format!("it does not have the shape the workflow expects: {e}");
            host::reject_input(&reason);
            return Err(Error::new(reason).to_host());
        }
    };
    let output = workflow(&Context::__new(), input).map_err(|e| e.to_host())?;
    serde_json::to_string(&output)
        .map_err(|e| error!("the workflow output cannot be encoded as JSON: {e}").to_host())
}

/// Export a function `fn(&Context, Input) -> Result<Output, Error>` as this
/// component's workflow. Use it once per crate.
///
/// `Input` is decoded from the JSON the workflow was started with and
/// `Output` is encoded as the workflow's JSON result.
#[macro_export]
macro_rules! workflow {
    ($function:path) => {
        struct __DurableWorkflow;

        impl $crate::bindings::Guest for __DurableWorkflow {
            fn run(
                input: ::std::string::String,
            ) -> ::std::result::Result<
                ::std::string::String,
                $crate::bindings::durable::workflow::durable_step::StepError,
            > {
                $crate::__run(input, $function)
            }

            fn run_branch(
                entry: ::std::string::String,
                step: $crate::bindings::durable::workflow::durable_step::StepRun,
                input: ::std::string::String,
            ) -> ::std::result::Result<
                ::std::string::String,
                $crate::bindings::durable::workflow::durable_step::StepError,
            > {
                $crate::__run_branch(entry, step, input)
            }
        }

        $crate::bindings::export!(__DurableWorkflow with_types_in $crate::bindings);
    };
}
