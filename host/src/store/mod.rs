//! The checkpoint store: where workflows and their steps are made durable.
//!
//! [`CheckpointStore`] is the whole of what the engine asks of a database, in
//! terms of workflows and steps; every line of SQL lives behind it (see
//! [`sqlite`], and [`postgres`] for a database shared by several hosts). It
//! knows nothing of WebAssembly or of replay: it records what it is told,
//! one transaction per state change, and reports conflicts instead of
//! overwriting another run's work.

#[cfg(test)]
pub(crate) mod conformance;
pub mod group_commit;
mod location;
pub mod postgres;
pub mod sqlite;

use std::collections::HashSet;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

pub use group_commit::{BatchWriter, GroupCommitStore};
pub use location::{BadDatabase, Database};
pub use postgres::{PostgresStore, PostgresWorkListener};
pub use sqlite::SqliteStore;

/// How a step or workflow ended: its JSON value, or its error.
pub type Outcome = Result<String, Failure>;

/// The error a step or workflow ended with: a message for people, and a
/// code a program can match on (`card_declined`) when the workflow gave one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub message: String,
    pub code: Option<String>,
}

impl Failure {
    /// An error without a code.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            code: None,
        }
    }
}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Self::new(message)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.code {
            Some(code) => write!(f, "[{code}] {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// Milliseconds since the Unix epoch.
pub type Millis = i64;

/// The current time in [`Millis`].
pub fn now_millis() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as Millis)
}

/// A step's identity within its workflow: `name#NNNNNN`, where the number
/// counts the calls of that name from 1.
///
/// Counting per name (rather than using one global position) means a step
/// keeps its key when unrelated steps are added elsewhere in a loop or branch.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StepKey(String);

impl StepKey {
    /// The key of the `ordinal`-th (from 1) step called `name`.
    pub fn new(name: &str, ordinal: u32) -> Self {
        Self(format!("{name}#{ordinal:06}"))
    }

    /// Wrap a key read back from storage.
    pub fn from_stored(key: String) -> Self {
        Self(key)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StepKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a step stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepStatus {
    /// Begun and not yet recorded: the run executing it is alive, or died.
    Running,
    /// Ended with a value.
    Completed,
    /// Ended with an error (replayed as that error) or a trap.
    Failed,
}

/// Where a workflow stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkflowStatus {
    /// Submitted with `start`, waiting in its queue for a `serve` to run it.
    Queued,
    /// Started and not finished: it resumes when run again.
    Running,
    /// Unloaded during a long durable sleep: no process holds it until
    /// [`WorkflowRecord::wake_at`], when it is resumed by replay.
    Sleeping,
    /// Unloaded while it waits for a signal: no process holds it until a
    /// signal is sent to it or its wait's timeout
    /// ([`WorkflowRecord::wake_at`]) is due; then it is resumed by replay.
    Waiting,
    /// Returned its output. Final.
    Completed,
    /// Returned an error or trapped. Final.
    Failed,
    /// Cancelled by `durable-host cancel`. Final.
    Cancelled,
    /// Stopped by a bug rather than by its own answer (a trap, a panic, runs
    /// that kept dying): its history is kept and `durable-host resume`
    /// continues it, with fixed code or limits.
    Suspended,
}

macro_rules! status_text {
    ($type:ty { $($variant:ident => $text:literal),* $(,)? }) => {
        impl $type {
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text),* }
            }

            pub fn parse(text: &str) -> Option<Self> {
                match text { $($text => Some(Self::$variant),)* _ => None }
            }
        }

        impl fmt::Display for $type {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

status_text!(StepStatus { Running => "running", Completed => "completed", Failed => "failed" });
status_text!(WorkflowStatus {
    Queued => "queued",
    Running => "running",
    Sleeping => "sleeping",
    Waiting => "waiting",
    Completed => "completed",
    Failed => "failed",
    Cancelled => "cancelled",
    Suspended => "suspended",
});

impl WorkflowStatus {
    /// Completed, failed or cancelled: it never runs again.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }
}

/// Where a line of a workflow's log came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStream {
    /// The guest's standard output.
    Stdout,
    /// The guest's standard error (a Rust guest's panic message, say).
    Stderr,
    /// A line the workflow logged with `ctx.log`.
    Log,
    /// An outbound HTTP request, as the host saw it: sent (with its status)
    /// or refused (with why).
    Http,
}

status_text!(LogStream { Stdout => "stdout", Stderr => "stderr", Log => "log", Http => "http" });

/// One line of a workflow's log, as captured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// When the guest wrote it.
    pub at: Millis,
    pub stream: LogStream,
    /// The step executing when it was written (its branch's step, for a
    /// parallel branch), if one was.
    pub step: Option<StepKey>,
    pub text: String,
}

/// A stored log line: its place in the workflow's log, then the line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    /// Increasing within a workflow; the cursor for reading on.
    pub seq: i64,
    pub line: LogLine,
}

/// How many lines of its log a workflow keeps: older ones are dropped as
/// new ones come, so that a chatty guest cannot fill the disk.
pub const LOG_LINES_KEPT: i64 = 10_000;

/// How long a queued workflow that [`CheckpointStore::ready_workflows`]
/// handed to one worker is kept from the others: long enough to open and
/// claim it, short enough that a worker dying with it delays it little
/// (the others poll, and take it once this lapses).
pub const RESERVATION_MS: Millis = 2_000;

/// A workflow as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkflowRecord {
    pub id: String,
    /// Hex sha256 of the component that started the workflow.
    pub component_sha256: String,
    /// The input, as JSON.
    pub input: String,
    pub status: WorkflowStatus,
    /// The output as JSON, once completed.
    pub output: Option<String>,
    /// The error message, once failed (or cancelled, or suspended).
    pub error: Option<String>,
    /// The error's code, if the workflow gave one.
    pub error_code: Option<String>,
    /// The run that last owned the workflow.
    pub run_id: String,
    /// The process of that run.
    pub owner: Owner,
    /// Until when that run's ownership holds, unless renewed.
    pub lease_expires_at: Millis,
    /// `durable-host cancel` asked the running owner to stop.
    pub cancel_requested: bool,
    pub created_at: Millis,
    pub updated_at: Millis,
    /// Runs that died in a row without recording a step.
    pub takeovers: u32,
    /// Steps recorded when the last of those runs took over.
    pub progress_mark: u32,
    /// What the workflow was granted when it started (opaque to the store).
    pub grants: Option<String>,
    /// The queue it waits in (`default` unless started with another).
    pub queue: String,
    /// The deployment it was started from, if started by name.
    pub deployment: Option<String>,
    /// When a sleeping workflow is due.
    pub wake_at: Option<Millis>,
    /// The workflow that started this one as its child, if one did.
    pub parent_id: Option<String>,
    /// For a waiting workflow: what it waits for.
    pub waiting_for: Option<WaitingFor>,
}

impl WorkflowRecord {
    /// Running, but handed back in order by its run
    /// ([`CheckpointStore::release_workflow`]: a server shutting down, a
    /// host out of memory): nobody died, and any process may go on with it.
    pub fn handed_back(&self) -> bool {
        self.status == WorkflowStatus::Running && self.lease_expires_at == 0
    }

    /// The final outcome, or `None` while the workflow is running.
    pub fn outcome(&self) -> Option<Outcome> {
        match self.status {
            WorkflowStatus::Queued
            | WorkflowStatus::Running
            | WorkflowStatus::Sleeping
            | WorkflowStatus::Waiting => None,
            WorkflowStatus::Completed => Some(Ok(self.output.clone().unwrap_or_default())),
            WorkflowStatus::Failed | WorkflowStatus::Cancelled | WorkflowStatus::Suspended => {
                Some(Err(Failure {
                    message: self.error.clone().unwrap_or_default(),
                    code: self.error_code.clone(),
                }))
            }
        }
    }
}

/// The process that runs (or ran) a workflow.
///
/// A pid names a process only within one pid namespace and one boot of one
/// machine, so the record keeps those too, and the process's start time,
/// which tells a reused pid apart. Any of them may be unknown (`None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub pid: u32,
    pub host: String,
    /// The kernel's boot id.
    pub boot_id: Option<String>,
    /// The pid namespace, as `/proc/self/ns/pid` names it.
    pub pid_ns: Option<String>,
    /// When the process started, in clock ticks since boot.
    pub started: Option<i64>,
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pid {} on {}", self.pid, self.host)
    }
}

/// A workflow with counts of its steps, for listings.
#[derive(Debug, Clone)]
pub struct WorkflowSummary {
    pub workflow: WorkflowRecord,
    pub steps: u32,
    pub completed_steps: u32,
    pub failed_steps: u32,
    pub running_steps: u32,
}

/// What the heartbeat learns when it renews a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseRenewal {
    /// The run still owns the workflow.
    pub owned: bool,
    pub cancel_requested: bool,
}

/// A step as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepRecord {
    pub key: StepKey,
    /// Position in the workflow's history, from 1.
    pub sequence: u32,
    pub name: String,
    pub status: StepStatus,
    pub output_json: Option<String>,
    pub error: Option<String>,
    pub error_code: Option<String>,
    /// How many times a run has begun executing the step.
    pub attempts: u32,
    /// How many of those attempts failed and were retried (attempts cut
    /// short by the death of their run are not counted).
    pub failures: u32,
    /// The run that last executed the step.
    pub run_id: String,
    pub started_at: Millis,
    pub finished_at: Option<Millis>,
    /// What the guest made of the step's input, if it gave one.
    pub input_fingerprint: Option<String>,
}

impl StepRecord {
    /// The recorded outcome, or `None` while the step is running.
    pub fn outcome(&self) -> Option<Outcome> {
        match self.status {
            StepStatus::Running => None,
            StepStatus::Completed => Some(Ok(self.output_json.clone().unwrap_or_default())),
            StepStatus::Failed => Some(Err(Failure {
                message: self.error.clone().unwrap_or_default(),
                code: self.error_code.clone(),
            })),
        }
    }
}

/// An attempt of a step that did not end it: a failure before a retry, or
/// an execution cut short by the death of its run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRecord {
    pub key: StepKey,
    pub attempt: u32,
    pub error: String,
    pub run_id: String,
    pub ended_at: Millis,
    /// Cut short by the death (or the stop) of its run, rather than failed.
    pub interrupted: bool,
    /// The wait before the next attempt, for a failed attempt.
    pub backoff_ms: Option<i64>,
}

/// Something that happened to a workflow besides its steps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkflowEvent {
    pub at: Millis,
    /// `takeover`, `component_changed`, `suspended`, `resumed`, `cancel_requested`...
    pub kind: String,
    pub detail: String,
    pub run_id: String,
}

/// A step that a run is about to execute.
#[derive(Debug, Clone)]
pub struct StepBegin<'a> {
    pub key: &'a StepKey,
    pub sequence: u32,
    pub name: &'a str,
    /// 1 for a new step, more when taking over one left running.
    pub attempt: u32,
    pub run_id: &'a str,
    pub started_at: Millis,
    /// What the guest made of the step's input, if it gave one.
    pub input_fingerprint: Option<&'a str>,
}

/// A workflow that a run is about to start.
#[derive(Debug, Clone)]
pub struct NewWorkflow<'a> {
    pub id: &'a str,
    pub component_sha256: &'a str,
    pub input: &'a str,
    pub claim: &'a Claim<'a>,
    /// What the workflow is granted, recorded for its resumes.
    pub grants: Option<&'a str>,
    /// The component's bytes, kept (if not already) in the same
    /// transaction, so that any process can resume the workflow.
    pub component: Option<&'a [u8]>,
}

/// A run taking over a running workflow from `previous_run`, which did not
/// finish it.
#[derive(Debug, Clone)]
pub struct Takeover<'a> {
    pub previous_run: &'a str,
    /// The lease as the run read it: the claim fails if it changed since
    /// (the owner was alive after all and renewed it).
    pub observed_lease: Millis,
    /// The component the workflow was on when the run read it: the claim
    /// fails if it changed since (`upgrade` switched it while the run
    /// replayed on the old one).
    pub observed_component: &'a str,
    pub claim: &'a Claim<'a>,
    /// The component the workflow continues on (a change is recorded as an event).
    pub component_sha256: &'a str,
    /// The new [`WorkflowRecord::takeovers`] and [`WorkflowRecord::progress_mark`].
    pub takeovers: u32,
    pub progress_mark: u32,
    /// Recorded with the takeover, in the same transaction.
    pub events: &'a [(&'a str, String)],
}

/// A run taking ownership of a workflow until `lease_until`.
#[derive(Debug, Clone)]
pub struct Claim<'a> {
    pub run_id: &'a str,
    pub owner: &'a Owner,
    pub lease_until: Millis,
}

/// A workflow submitted to a queue (`start`), for a `serve` to run.
#[derive(Debug, Clone)]
pub struct QueuedWorkflow<'a> {
    pub id: &'a str,
    pub deployment: &'a str,
    pub component_sha256: &'a str,
    pub input: &'a str,
    pub grants: &'a str,
    pub queue: &'a str,
}

/// What became of a submission.
#[derive(Debug, Clone)]
pub enum Enqueued {
    /// A new workflow, queued.
    Created(Box<WorkflowRecord>),
    /// A workflow with this id and the same input existed: this is it.
    Existing(Box<WorkflowRecord>),
}

/// A named version of a component, with what its workflows are granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deployment {
    pub name: String,
    /// 1 for the first deployment of a name, then counting up.
    pub version: u32,
    pub sha256: String,
    /// The grants of its workflows (`runtime::Grants` as JSON).
    pub grants: String,
    pub created_at: Millis,
}

/// A schedule: one workflow of `deployment` per tick of `cron`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleRecord {
    pub name: String,
    /// The cron expression, as given (UTC).
    pub cron: String,
    pub deployment: String,
    /// The input of every workflow it starts (JSON text).
    pub input: String,
    pub queue: String,
    /// The next tick to start.
    pub next_tick: Millis,
    pub created_at: Millis,
}

/// Which workflows a listing shows, newest first.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub status: Option<WorkflowStatus>,
    /// At most this many (all when `None`).
    pub limit: Option<u32>,
    /// Only those after this one in the listing's order (its id), for paging.
    pub after: Option<String>,
    /// Only those whose id contains this text (case-sensitive).
    pub id_contains: Option<String>,
}

/// A new workflow that starts from another's history (`fork`).
#[derive(Debug, Clone)]
pub struct Fork<'a> {
    pub source: &'a str,
    pub id: &'a str,
    /// The source's steps up to this sequence are copied (finished ones:
    /// the caller checks they are); later ones run again.
    pub keep_through: u32,
    pub component_sha256: &'a str,
    /// The deployment it runs on, when named; the source's otherwise.
    pub deployment: Option<&'a str>,
    /// Recorded as the new workflow's `forked` event.
    pub detail: &'a str,
}

/// Moving a workflow nobody runs to another component (`upgrade`).
#[derive(Debug, Clone)]
pub struct Upgrade<'a> {
    /// The workflow as it was when the new component was verified against
    /// its history (with `verified_steps` steps): any change since (a run
    /// claimed it, it went on) fails the switch.
    pub observed: &'a WorkflowRecord,
    pub verified_steps: usize,
    pub to_sha256: &'a str,
    /// Recorded as the workflow's `upgraded` event.
    pub detail: &'a str,
    /// For a running workflow (whose owner's lease ran out): the run id it
    /// gets instead of its owner's, so that the owner, should it come back,
    /// can write nothing more on the old code.
    pub new_run: Option<&'a str>,
}

/// A run putting a failed or suspended workflow back to running.
#[derive(Debug, Clone)]
pub struct Reopen<'a> {
    pub expected_run: &'a str,
    pub claim: &'a Claim<'a>,
    pub component_sha256: &'a str,
    /// Replaces the recorded grants when given.
    pub grants: Option<&'a str>,
    pub detail: &'a str,
}

/// The end of a run that ends its workflow (or suspends it), with the steps
/// it left executing.
#[derive(Debug, Clone)]
pub struct WorkflowEnd<'a> {
    /// `Completed`, `Failed`, `Cancelled` or `Suspended`.
    pub status: WorkflowStatus,
    pub outcome: &'a Outcome,
    /// Steps whose bodies were cut short: they stay `running`, with an
    /// interrupted attempt recorded, so that a resume executes them again.
    pub interrupted_steps: &'a [StepKey],
    /// Log lines captured since the last checkpoint, kept with this one.
    pub log: &'a [LogLine],
}

/// A signal sent to a workflow, kept until one of its waits takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignalRecord {
    /// The order signals were sent in, across all workflows.
    pub seq: i64,
    pub workflow_id: String,
    pub name: String,
    /// Chosen by the sender (or generated): a signal sent again with the
    /// same id is the same signal.
    pub signal_id: String,
    /// JSON.
    pub value: String,
    pub sent_at: Millis,
    /// The step that took it, once one has.
    pub taken_by: Option<StepKey>,
}

/// What [`CheckpointStore::send_signal`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignalSent {
    /// Kept for the workflow (and a waiting workflow made due).
    Kept(SignalRecord),
    /// A signal with this id was sent before: that one stands.
    Duplicate(SignalRecord),
}

/// A value a workflow published for observers under a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedEvent {
    pub key: String,
    /// JSON.
    pub value: String,
    /// The step that published it.
    pub step_key: StepKey,
    pub published_at: Millis,
}

/// What finishing a step also changes, in the same transaction, so that
/// neither happens without the other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepEffect {
    /// The step took signal `seq` (not yet taken): it is delivered once.
    TakeSignal { seq: i64 },
    /// The step published `value` under `key`, replacing the key's value.
    Publish { key: String, value: String },
    /// The step started `child`: it is queued, with the stepping workflow
    /// as its parent. Refused with [`StoreError::WorkflowExists`] when its
    /// id is taken.
    StartChild(ChildStart),
}

/// A child workflow to queue (see [`StepEffect::StartChild`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildStart {
    pub id: String,
    pub deployment: Option<String>,
    pub component_sha256: String,
    pub input: String,
    pub grants: Option<String>,
    pub queue: String,
}

/// How a run unloads its workflow ([`CheckpointStore::unload_workflow`]).
#[derive(Debug, Clone, Copy)]
pub struct Unload<'a> {
    /// What it waits for; `None`: it sleeps.
    pub waiting_for: Option<&'a WaitingFor>,
    /// When it is due: a sleep's end, a wait's timeout.
    pub wake_at: Option<Millis>,
    /// Unload even though a cancellation was asked for: it was handed to
    /// the workflow, and this is its compensation waiting.
    pub despite_cancel: bool,
}

/// What a workflow unloaded to wait is waiting for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitingFor {
    /// A signal of this name.
    Signal(String),
    /// The end of this child workflow.
    Child(String),
}

impl WaitingFor {
    /// As stored: `signal:NAME` or `child:ID`.
    pub fn stored(&self) -> String {
        match self {
            Self::Signal(name) => format!("signal:{name}"),
            Self::Child(id) => format!("child:{id}"),
        }
    }

    /// The inverse of [`Self::stored`].
    pub fn from_stored(text: &str) -> Option<Self> {
        match text.split_once(':')? {
            ("signal", name) => Some(Self::Signal(name.to_owned())),
            ("child", id) => Some(Self::Child(id.to_owned())),
            _ => None,
        }
    }
}

impl fmt::Display for WaitingFor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Signal(name) => write!(f, "the signal `{name}`"),
            Self::Child(id) => write!(f, "the child workflow {id}"),
        }
    }
}

/// Why the store could not do what was asked. Each variant says what a user
/// can act on; `Backend` carries the database's own error.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the database {path}: {reason}")]
    Open { path: String, reason: String },
    #[error("{path} is not a durable-host database (SQLite reports: {reason})")]
    NotADatabase { path: String, reason: String },
    #[error("the database is read-only: {0}")]
    ReadOnly(String),
    #[error("{path} holds no durable-host tables: nothing has run there yet")]
    NoTables { path: String },
    #[error(
        "the database's tables were made by a newer durable-host (schema version {found}, this build knows {supported})"
    )]
    NewerSchema { found: i64, supported: i64 },
    #[error("the database stayed locked by other writers through {attempts} attempts")]
    Busy { attempts: u32 },
    #[error("workflow {id} already exists")]
    WorkflowExists { id: String },
    #[error("workflow {id} was taken over by run {owner}")]
    LostOwnership { id: String, owner: String },
    #[error("workflow {id} does not exist")]
    UnknownWorkflow { id: String },
    #[error("workflow {id} has ended ({status}): it takes no more signals")]
    WorkflowEnded { id: String, status: WorkflowStatus },
    #[error("the disk holding the database {path} is full")]
    DiskFull { path: String },
    #[error("I/O error on the database {path}: {reason}")]
    Io { path: String, reason: String },
    #[error("the database file {path} was deleted or replaced while this process was using it")]
    Replaced { path: String },
    #[error("too many open files: cannot open the database {path}")]
    TooManyFiles { path: String },
    /// The host is short of memory (or of threads) for `what`: the
    /// database's own allocations, or a thread a run needs beside the
    /// store (its lease's). Nothing was written.
    #[error("the host is short of memory: {what} failed: {reason}")]
    HostMemory { what: &'static str, reason: String },
    #[error("database error: {0}")]
    Backend(String),
}

impl StoreError {
    /// The host is short of memory: a later try may succeed, as after a
    /// storage failure.
    pub fn is_host_memory(&self) -> bool {
        matches!(self, Self::HostMemory { .. })
    }

    /// The database itself failed (a full disk, an I/O error, the file
    /// replaced), as opposed to a conflict or a refusal: what was committed
    /// stands, and the same operation may work once it is fixed.
    pub fn is_storage_failure(&self) -> bool {
        matches!(
            self,
            Self::DiskFull { .. } | Self::Io { .. } | Self::Replaced { .. }
        )
    }
}

/// A step's (or workflow's) status, output, error message and error code
/// for `outcome`, as the columns store them.
pub(crate) fn split_outcome(
    outcome: &Outcome,
) -> (StepStatus, Option<&str>, Option<&str>, Option<&str>) {
    match outcome {
        Ok(output) => (StepStatus::Completed, Some(output.as_str()), None, None),
        Err(failure) => (
            StepStatus::Failed,
            None,
            Some(failure.message.as_str()),
            failure.code.as_deref(),
        ),
    }
}

/// The fence every write of a run passes: `Ok(())` while `run_id` owns
/// running workflow `id`, given its `(run_id, status)` as read in the
/// write's own transaction (`None`: there is no such workflow); else the
/// conflict to roll back with.
pub(crate) fn check_owner(
    id: &str,
    run_id: &str,
    row: Option<(String, String)>,
) -> Result<(), StoreError> {
    match row {
        Some((owner, status)) if owner == run_id && status == "running" => Ok(()),
        Some((owner, status)) => Err(StoreError::LostOwnership {
            id: id.to_owned(),
            owner: if owner == run_id {
                format!("nobody: it is {status} now")
            } else {
                owner
            },
        }),
        None => Err(StoreError::LostOwnership {
            id: id.to_owned(),
            owner: "(none: the workflow is gone)".to_owned(),
        }),
    }
}

/// The conflict for a claim that found workflow `id` changed, given its
/// `(run_id, status)` as it is now (`None`: it is gone).
pub(crate) fn lost_ownership(id: &str, row: Option<(String, String)>) -> StoreError {
    StoreError::LostOwnership {
        id: id.to_owned(),
        owner: match row {
            Some((run, status)) if status == "running" => run,
            Some((run, status)) => format!("{run} (now {status})"),
            None => "(none: the workflow is gone)".to_owned(),
        },
    }
}

/// Hears that work may have become ready in the database: a workflow
/// queued, a wake-up time set or moved, a lease given back, whoever did it
/// (another process, another host). A hint, not a promise: the one who
/// listens still reads what is ready, and polls as well.
pub trait WorkListener: Send {
    /// Wait at most `timeout` for news: `true` when some came (all news so
    /// far is taken at once), `false` when the time ran out.
    fn wait(&mut self, timeout: std::time::Duration) -> Result<bool, StoreError>;
}

/// Told of each commit a batching store makes (for metrics).
pub trait CommitObserver: Send + Sync {
    /// A transaction of `writes` writes committed in `took`.
    fn committed(&self, writes: usize, took: std::time::Duration);
}

/// Durable storage of workflows and their step checkpoints.
///
/// Each method is one transaction: when it returns `Ok`, the change is
/// committed; when it returns `Err`, nothing changed.
pub trait CheckpointStore: Send {
    /// Another handle on the same database, for another thread.
    fn reopen(&self) -> Result<Box<dyn CheckpointStore>, StoreError>;

    /// The workflow `id`, if it exists.
    fn workflow(&self, id: &str) -> Result<Option<WorkflowRecord>, StoreError>;

    /// Every step of workflow `id`, in sequence order.
    fn steps(&self, workflow_id: &str) -> Result<Vec<StepRecord>, StoreError>;

    /// At most `limit` steps of workflow `id` after sequence `after`, in
    /// sequence order: a page of a long history.
    fn steps_page(
        &self,
        workflow_id: &str,
        after: u32,
        limit: u32,
    ) -> Result<Vec<StepRecord>, StoreError>;

    /// The attempts of workflow `id`'s steps that did not end them, by step
    /// key and attempt.
    fn attempts(&self, workflow_id: &str) -> Result<Vec<AttemptRecord>, StoreError>;

    /// Record a new running workflow. Fails with `WorkflowExists` if another
    /// run created it first.
    fn create_workflow(&self, workflow: &NewWorkflow<'_>) -> Result<(), StoreError>;

    /// Make `takeover.claim.run_id` the owner of running workflow `id`,
    /// provided its owner is still `takeover.previous_run` (otherwise
    /// `LostOwnership`), with the takeover's counters and events.
    fn claim_workflow(&self, id: &str, takeover: &Takeover<'_>) -> Result<(), StoreError>;

    /// Put a failed or suspended workflow back to `running` for `claim`'s
    /// run, with a `resumed` event saying `detail`, on `component_sha256`
    /// and, when given, new `grants`. `LostOwnership` if its status or
    /// owner changed since `expected_run` was read.
    fn reopen_workflow(&self, id: &str, reopen: &Reopen<'_>) -> Result<(), StoreError>;

    /// The events of workflow `id`, oldest first.
    fn events(&self, workflow_id: &str) -> Result<Vec<WorkflowEvent>, StoreError>;

    /// Extend the lease of `run_id` on workflow `id`; reports whether the run
    /// still owns it and whether it was asked to stop.
    fn renew_lease(
        &self,
        id: &str,
        run_id: &str,
        lease_until: Millis,
    ) -> Result<LeaseRenewal, StoreError>;

    /// Ask the owner of running workflow `id` to stop at its next step.
    /// Returns the workflow as it is now (`UnknownWorkflow` if there is none).
    fn request_cancel(&self, id: &str) -> Result<WorkflowRecord, StoreError>;

    /// Workflows, newest first, as `query` selects them.
    fn list_workflows(&self, query: &ListQuery) -> Result<Vec<WorkflowSummary>, StoreError>;

    /// Keep a component's bytes under their sha256 (a no-op if kept).
    fn put_component(&self, sha256: &str, bytes: &[u8]) -> Result<(), StoreError>;

    /// The bytes of the component with `sha256`, if kept.
    fn component(&self, sha256: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Record a new version of deployment `name`: the component `sha256`
    /// (kept already) and its grants. Returns it.
    fn deploy(&self, name: &str, sha256: &str, grants: &str) -> Result<Deployment, StoreError>;

    /// Queue a new workflow `fork.id` with the input, grants and queue of
    /// `fork.source` and a copy of its steps through `fork.keep_through`.
    /// `WorkflowExists` if the id is taken, `UnknownWorkflow` if the
    /// source is gone.
    fn fork_workflow(&self, fork: &Fork<'_>) -> Result<WorkflowRecord, StoreError>;

    /// Switch workflow `upgrade.observed.id` to `upgrade.to_sha256`, provided it is
    /// still as `upgrade.observed` (component, status, run, lease) with
    /// `verified_steps` steps. `false` when it changed since it was verified.
    fn upgrade_workflow(&self, upgrade: &Upgrade<'_>) -> Result<bool, StoreError>;

    /// Suspend workflow `observed.id`, which no run has claimed (nor
    /// `upgrade` switched) since it was read as `observed`, with `reason`
    /// (its code no longer replays its history); its steps are left as they
    /// are. `false` if it changed.
    fn suspend_unclaimed(
        &self,
        observed: &WorkflowRecord,
        reason: &str,
    ) -> Result<bool, StoreError>;

    /// How many workflows wait in each queue that has any.
    fn queue_depths(&self) -> Result<Vec<(String, u64)>, StoreError>;

    /// How many workflows have each status that some workflow has.
    fn status_counts(&self) -> Result<Vec<(WorkflowStatus, u64)>, StoreError>;

    /// Record a new schedule. `false`, and nothing changed, when one with
    /// its name exists.
    fn add_schedule(&self, schedule: &ScheduleRecord) -> Result<bool, StoreError>;

    /// Delete schedule `name`; `false` when there was none. Workflows it
    /// started are left alone.
    fn remove_schedule(&self, name: &str) -> Result<bool, StoreError>;

    /// Every schedule, the soonest tick first.
    fn schedules(&self) -> Result<Vec<ScheduleRecord>, StoreError>;

    /// Move schedule `name`'s next tick from `from` to `to`. `false` when
    /// its next tick is no longer `from` (another process moved it), or it
    /// was removed.
    fn advance_schedule(&self, name: &str, from: Millis, to: Millis) -> Result<bool, StoreError>;

    /// Every deployment (of `name`, when given), newest version first.
    fn deployments(&self, name: Option<&str>) -> Result<Vec<Deployment>, StoreError>;

    /// Queue a workflow, unless one with its id exists: then answer with
    /// that one (the caller compares inputs).
    fn enqueue_workflow(&self, workflow: &QueuedWorkflow<'_>) -> Result<Enqueued, StoreError>;

    /// Workflows of `queue` a `serve` may take now, oldest first, at most
    /// `limit`, leaving out those in `skip` (the caller's own runs that
    /// have not claimed theirs yet): running ones whose lease expired at
    /// `now`, sleeping ones that are due, and queued ones.
    ///
    /// A backend that several hosts share (PostgreSQL) reserves the queued
    /// ones it answers with until `now` + [`RESERVATION_MS`]: until the
    /// caller claims them or the reservation lapses, other callers are not
    /// given them, so that workers woken together do not all open the same
    /// workflows. The claim stays the fence (a reservation is the lease a
    /// claim observes); SQLite's single writer needs none.
    fn ready_workflows(
        &self,
        queue: &str,
        now: Millis,
        limit: u32,
        skip: &HashSet<String>,
    ) -> Result<Vec<WorkflowRecord>, StoreError>;

    /// Running workflows of `queue` whose lease still runs, owned by
    /// processes of `host` in boot `boot_id`: those whose owner this host can
    /// prove dead are taken over without waiting for their lease.
    fn running_on_host(
        &self,
        queue: &str,
        host: &str,
        boot_id: &str,
        now: Millis,
        limit: u32,
    ) -> Result<Vec<WorkflowRecord>, StoreError>;

    /// The earliest time a sleeping or waiting workflow of `queue` is due, if any.
    fn next_wake(&self, queue: &str) -> Result<Option<Millis>, StoreError>;

    /// The earliest lease of a running workflow of `queue` that expires
    /// after `now`, if any: should its owner have died where nobody can see
    /// (another host), the workflow is up for takeover then.
    fn next_lease_expiry(&self, queue: &str, now: Millis) -> Result<Option<Millis>, StoreError>;

    /// The database server's clock, now, for a backend that several hosts
    /// share (PostgreSQL); `None` for one on this host. A lease is written
    /// by its owner's clock and read by every other host's, so `serve`
    /// checks that they agree.
    fn server_clock(&self) -> Result<Option<Millis>, StoreError> {
        Ok(None)
    }

    /// Unload running workflow `id` of `run_id` as `unload` says: it
    /// becomes `sleeping`, or `waiting` for what it waits for (and due at
    /// once if that came since the run last looked: a signal of that name,
    /// the child's end), owned by nobody. `false`, changing nothing, when a
    /// cancellation was asked for and `unload.despite_cancel` is not set:
    /// the run must end it instead.
    fn unload_workflow(
        &self,
        id: &str,
        run_id: &str,
        unload: &Unload<'_>,
    ) -> Result<bool, StoreError>;

    /// Cancel workflow `id`, which nobody holds, provided it is still in
    /// `status` (queued, sleeping, waiting or suspended); `false` if it changed.
    fn cancel_idle_workflow(
        &self,
        id: &str,
        status: WorkflowStatus,
        reason: &str,
    ) -> Result<bool, StoreError>;

    /// Give up `run_id`'s lease on running workflow `id` (a graceful
    /// shutdown, a host out of memory): another process may take it over at
    /// once. The run ended in order, so the count of runs that died in a row
    /// starts again.
    fn release_workflow(&self, id: &str, run_id: &str) -> Result<(), StoreError>;

    /// Extend the leases of many runs at once, as [`CheckpointStore::renew_lease`]
    /// does for one; answers in the same order.
    fn renew_leases(
        &self,
        runs: &[(String, String)],
        lease_until: Millis,
    ) -> Result<Vec<LeaseRenewal>, StoreError> {
        runs.iter()
            .map(|(id, run_id)| self.renew_lease(id, run_id, lease_until))
            .collect()
    }

    /// Record a failed attempt of step `key`, which stays running and will
    /// be retried after `backoff_ms`: the attempt goes into the attempt
    /// history and `failures` counts it. The next attempt is begun with
    /// [`CheckpointStore::begin_retry`].
    fn record_attempt(
        &self,
        workflow_id: &str,
        run_id: &str,
        key: &StepKey,
        error: &str,
        backoff_ms: i64,
    ) -> Result<(), StoreError>;

    /// Count the next execution of step `key` (after a failed attempt's backoff).
    fn begin_retry(&self, workflow_id: &str, run_id: &str, key: &StepKey)
    -> Result<(), StoreError>;

    /// Mark steps running before their bodies execute (new rows, or new
    /// attempts of steps left running), in one transaction. Visible to other
    /// processes at once; made crash-safe by the next durable commit (see
    /// the module docs of [`sqlite`]).
    fn begin_steps(&self, workflow_id: &str, steps: &[StepBegin<'_>]) -> Result<(), StoreError>;

    /// Record how a step this run is executing ended, with the log lines
    /// captured since the last checkpoint, and make `effect` in the same
    /// transaction. Durable on return.
    fn finish_step(
        &self,
        workflow_id: &str,
        run_id: &str,
        key: &StepKey,
        outcome: &Outcome,
        log: &[LogLine],
        effect: Option<&StepEffect>,
    ) -> Result<(), StoreError>;

    /// Append lines to the log of workflow `id`, which `run_id` owns
    /// (for the log of a run that ends without a checkpoint: an unload).
    fn append_log(&self, id: &str, run_id: &str, log: &[LogLine]) -> Result<(), StoreError>;

    /// The log of workflow `id` after line `after_seq`, oldest first, at
    /// most `limit` lines.
    fn logs(&self, id: &str, after_seq: i64, limit: u32) -> Result<Vec<LogRecord>, StoreError>;

    /// The lines of workflow `id`'s log from `stream` (kept of the last
    /// [`LOG_LINES_KEPT`]), oldest first.
    fn stream_logs(&self, id: &str, stream: LogStream) -> Result<Vec<LogRecord>, StoreError>;

    /// Keep `signal` (its `seq` and `taken_by` are ignored) for workflow
    /// `signal.workflow_id`, unless one with its id was sent before; a
    /// `waiting` workflow becomes due at once. Refused for a workflow that
    /// does not exist or has ended. Durable on return.
    fn send_signal(&self, signal: &SignalRecord) -> Result<SignalSent, StoreError>;

    /// The oldest signal `name` of workflow `workflow_id` that no step has taken.
    fn next_signal(
        &self,
        workflow_id: &str,
        name: &str,
    ) -> Result<Option<SignalRecord>, StoreError>;

    /// Every signal sent to workflow `workflow_id`, in the order sent.
    fn signals(&self, workflow_id: &str) -> Result<Vec<SignalRecord>, StoreError>;

    /// The values workflow `workflow_id` published, by key.
    fn published_events(&self, workflow_id: &str) -> Result<Vec<PublishedEvent>, StoreError>;

    /// The workflows workflow `id` started as its children.
    fn children(&self, id: &str) -> Result<Vec<WorkflowRecord>, StoreError>;

    /// Record how a workflow ended (or that it is suspended). Durable on return.
    fn finish_workflow(
        &self,
        id: &str,
        run_id: &str,
        end: &WorkflowEnd<'_>,
    ) -> Result<(), StoreError>;
}
