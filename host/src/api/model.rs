//! What the API's requests and answers look like on the wire: plain serde
//! types, each described for the OpenAPI document by `utoipa::ToSchema`.
//!
//! Field names are those of the command line's `--json` output (`list`,
//! `history`, `start`, `cancel`, `deploy --list`), so a script can move
//! between the two without renaming anything.

use std::time::{Duration, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use crate::engine::{CancelOutcome, idempotency_key};
use crate::runtime::SLEEP_STEP;
use crate::store::{
    AttemptRecord, CheckpointStore, Deployment, LogRecord, LogStream, Millis, PublishedEvent,
    ScheduleRecord, SignalRecord, StepRecord, StepStatus, StoreError, WorkflowEvent,
    WorkflowRecord, WorkflowStatus, WorkflowSummary,
};

/// Where a workflow stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Waiting in its queue for `serve` to run it.
    Queued,
    /// Started and not finished.
    Running,
    /// Unloaded during a long durable sleep until `wake_at_ms`.
    Sleeping,
    /// Unloaded while it waits for a signal (until `wake_at_ms` at the
    /// latest, when its wait has a timeout).
    Waiting,
    /// Returned its output. Final.
    Completed,
    /// Returned an error, or a limit stopped it. Final.
    Failed,
    /// Cancelled. Final.
    Cancelled,
    /// Stopped by a bug (a trap, a panic): `durable-host resume` continues it.
    Suspended,
}

impl From<WorkflowStatus> for Status {
    fn from(status: WorkflowStatus) -> Self {
        match status {
            WorkflowStatus::Queued => Self::Queued,
            WorkflowStatus::Running => Self::Running,
            WorkflowStatus::Sleeping => Self::Sleeping,
            WorkflowStatus::Waiting => Self::Waiting,
            WorkflowStatus::Completed => Self::Completed,
            WorkflowStatus::Failed => Self::Failed,
            WorkflowStatus::Cancelled => Self::Cancelled,
            WorkflowStatus::Suspended => Self::Suspended,
        }
    }
}

/// Where a step stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum StepState {
    /// Begun and not recorded yet (its run is at work, or died).
    Running,
    /// Ended with a value.
    Completed,
    /// Ended with an error.
    Failed,
}

impl From<StepStatus> for StepState {
    fn from(status: StepStatus) -> Self {
        match status {
            StepStatus::Running => Self::Running,
            StepStatus::Completed => Self::Completed,
            StepStatus::Failed => Self::Failed,
        }
    }
}

/// `POST /v1/workflows`: a workflow to queue.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"deployment": "onboarding", "workflow_id": "emp-001",
    "input": {"id": "emp-001", "name": "Ada Lovelace", "email": "ada@example.com", "role": "engineer"}}))]
pub struct SubmitRequest {
    /// The deployment whose newest version runs the workflow.
    pub deployment: String,
    /// The workflow's id; a new one (`wf-` and 16 hex digits) when left out.
    /// Submitting an id again with the same input finds the same workflow.
    #[serde(default)]
    pub workflow_id: Option<String>,
    /// The workflow's input: any JSON value (`null` for none). At most
    /// 16 MiB once written compactly.
    pub input: Value,
    /// The queue it waits in (`default` when left out; see `serve --queue`).
    #[serde(default)]
    pub queue: Option<String>,
}

/// A queued workflow, new or found (the `start --json` document).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Submitted {
    pub workflow_id: String,
    /// `false` when a workflow with this id and this input already existed.
    pub created: bool,
    pub status: Status,
    pub queue: String,
}

/// The process that runs (or last ran) a workflow.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OwnerView {
    pub pid: u32,
    pub host: String,
}

/// A workflow as stored (the fields of `list --json` and `history --json`).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WorkflowView {
    pub workflow_id: String,
    pub status: Status,
    /// Hex sha256 of the component that runs it.
    pub component_sha256: String,
    /// Its input.
    pub input: Value,
    /// Its output, once completed.
    pub output: Option<Value>,
    /// The error message, once failed, cancelled or suspended.
    pub error: Option<String>,
    /// The error's code, when the workflow gave one.
    pub error_code: Option<String>,
    /// The run that last owned it.
    pub run_id: String,
    pub owner: OwnerView,
    pub lease_expires_at_ms: Millis,
    /// A cancellation was handed to its running owner.
    pub cancel_requested: bool,
    pub created_at_ms: Millis,
    pub updated_at_ms: Millis,
    /// The queue it waits (or waited) in.
    pub queue: String,
    /// The deployment it was started from, if submitted by name.
    pub deployment: Option<String>,
    /// When a sleeping workflow is due; when a waiting one's wait times
    /// out, if it does.
    pub wake_at_ms: Option<Millis>,
    /// The workflow that started this one as its child, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<String>,
}

impl From<&WorkflowRecord> for WorkflowView {
    fn from(w: &WorkflowRecord) -> Self {
        Self {
            workflow_id: w.id.clone(),
            status: w.status.into(),
            component_sha256: w.component_sha256.clone(),
            input: json_value(&w.input),
            output: w.output.as_deref().map(json_value),
            error: w.error.clone(),
            error_code: w.error_code.clone(),
            run_id: w.run_id.clone(),
            owner: OwnerView {
                pid: w.owner.pid,
                host: w.owner.host.clone(),
            },
            lease_expires_at_ms: w.lease_expires_at,
            cancel_requested: w.cancel_requested,
            created_at_ms: w.created_at,
            updated_at_ms: w.updated_at,
            queue: w.queue.clone(),
            deployment: w.deployment.clone(),
            wake_at_ms: w.wake_at,
            parent_id: w.parent_id.clone(),
        }
    }
}

/// How many steps a workflow has recorded, by status.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StepCounts {
    pub total: u32,
    pub completed: u32,
    pub failed: u32,
    pub running: u32,
}

/// A workflow in a listing: the workflow and its step counts.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WorkflowListItem {
    #[serde(flatten)]
    pub workflow: WorkflowView,
    pub steps: StepCounts,
}

impl From<&WorkflowSummary> for WorkflowListItem {
    fn from(summary: &WorkflowSummary) -> Self {
        Self {
            workflow: (&summary.workflow).into(),
            steps: StepCounts {
                total: summary.steps,
                completed: summary.completed_steps,
                failed: summary.failed_steps,
                running: summary.running_steps,
            },
        }
    }
}

/// `GET /v1/workflows`: one page of workflows, newest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WorkflowPage {
    pub workflows: Vec<WorkflowListItem>,
    /// Pass it as `after` for the next page; `null` on the last page.
    pub next_after: Option<String>,
}

/// `GET /v1/workflows` query.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only workflows with this status.
    #[param(value_type = Option<Status>)]
    pub status: Option<String>,
    /// At most this many (1 to 1000, default 50).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// Only workflows after this one in the listing: the previous page's
    /// `next_after`.
    pub after: Option<String>,
    /// Only workflows whose id contains this text (case-sensitive).
    pub search: Option<String>,
}

/// `GET /v1/workflows/{id}/steps` query. Without `after` or `limit`, every
/// step; with either, one page of them.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StepsParams {
    /// Only steps after this sequence number: the previous page's
    /// `next_after`.
    pub after: Option<u32>,
    /// At most this many steps (1 to 1000, default 1000).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// `GET /v1/workflow-counts`: how many workflows have each status.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct StatusCounts {
    pub total: u64,
    pub queued: u64,
    pub running: u64,
    pub sleeping: u64,
    pub waiting: u64,
    pub completed: u64,
    pub failed: u64,
    pub cancelled: u64,
    pub suspended: u64,
}

impl FromIterator<(WorkflowStatus, u64)> for StatusCounts {
    fn from_iter<I: IntoIterator<Item = (WorkflowStatus, u64)>>(counts: I) -> Self {
        let mut all = Self::default();
        for (status, count) in counts {
            all.total += count;
            *match status {
                WorkflowStatus::Queued => &mut all.queued,
                WorkflowStatus::Running => &mut all.running,
                WorkflowStatus::Sleeping => &mut all.sleeping,
                WorkflowStatus::Waiting => &mut all.waiting,
                WorkflowStatus::Completed => &mut all.completed,
                WorkflowStatus::Failed => &mut all.failed,
                WorkflowStatus::Cancelled => &mut all.cancelled,
                WorkflowStatus::Suspended => &mut all.suspended,
            } += count;
        }
        all
    }
}

/// `POST /v1/workflows/{id}/fork`: a new workflow from another's history.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ForkRequestBody {
    /// The first step that runs again (from 1); the steps before it are
    /// copied with their recorded results.
    pub from_step: u32,
    /// The new workflow's id; `wf-` and 16 hex digits when left out.
    #[serde(default)]
    pub workflow_id: Option<String>,
    /// Run it on this deployment's component (`NAME` or `NAME@SHA`) rather
    /// than the source's.
    #[serde(default)]
    pub deployment: Option<String>,
}

/// `GET /v1/workflows/{id}/logs` query.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LogParams {
    /// Only lines after this one: the previous page's `next_after`.
    pub after: Option<i64>,
    /// At most this many lines (1 to 1000, default 1000).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// `GET /v1/workflows/{id}/result` query.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ResultParams {
    /// How long to wait for the workflow to finish: `500ms`, `30s`, `1m`,
    /// or a number of seconds; at most 60 s (longer is cut to 60 s).
    /// Answers at once when left out.
    #[param(example = "30s")]
    pub wait: Option<String>,
}

/// An attempt of a step that did not end it: failed before a retry, or cut
/// short by the death of its run.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AttemptView {
    pub attempt: u32,
    pub error: String,
    /// Cut short by the death (or stop) of its run, rather than failed.
    pub interrupted: bool,
    /// The wait before the next attempt, for a failed attempt.
    pub backoff_ms: Option<i64>,
    pub run_id: String,
    pub ended_at_ms: Millis,
}

impl From<&AttemptRecord> for AttemptView {
    fn from(a: &AttemptRecord) -> Self {
        Self {
            attempt: a.attempt,
            error: a.error.clone(),
            interrupted: a.interrupted,
            backoff_ms: a.backoff_ms,
            run_id: a.run_id.clone(),
            ended_at_ms: a.ended_at,
        }
    }
}

/// A recorded step (the `steps` of `history --json`).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StepView {
    /// Position in the workflow's history, from 1.
    pub sequence: u32,
    /// `name#NNNNNN`.
    pub key: String,
    pub name: String,
    /// What the step's body is given to make its side effects idempotent.
    pub idempotency_key: String,
    pub status: StepState,
    /// How many times a run began executing it.
    pub attempts: u32,
    /// How many of those attempts failed and were retried.
    pub failures: u32,
    pub output: Option<Value>,
    pub error: Option<String>,
    pub error_code: Option<String>,
    pub run_id: String,
    pub started_at_ms: Millis,
    pub finished_at_ms: Option<Millis>,
    pub duration_ms: Option<Millis>,
    /// For a `durable.sleep` step: when it wakes up (RFC 3339, UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sleep_until: Option<String>,
    /// The same, in milliseconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sleep_until_ms: Option<Millis>,
    /// Its attempts that did not end it.
    pub earlier_attempts: Vec<AttemptView>,
}

impl StepView {
    pub fn new(workflow_id: &str, step: &StepRecord, attempts: &[AttemptRecord]) -> Self {
        Self {
            sequence: step.sequence,
            key: step.key.as_str().to_owned(),
            name: step.name.clone(),
            idempotency_key: idempotency_key(workflow_id, &step.key),
            status: step.status.into(),
            attempts: step.attempts,
            failures: step.failures,
            output: step.output_json.as_deref().map(json_value),
            error: step.error.clone(),
            error_code: step.error_code.clone(),
            run_id: step.run_id.clone(),
            started_at_ms: step.started_at,
            finished_at_ms: step.finished_at,
            duration_ms: step.finished_at.map(|f| f - step.started_at),
            sleep_until: sleep_until(step).map(rfc3339),
            sleep_until_ms: sleep_until(step),
            earlier_attempts: attempts
                .iter()
                .filter(|a| a.key == step.key)
                .map(AttemptView::from)
                .collect(),
        }
    }
}

/// Something that happened to a workflow besides its steps.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EventView {
    pub at_ms: Millis,
    /// `takeover`, `component_changed`, `suspended`, `resumed`,
    /// `cancel_requested`...
    pub kind: String,
    pub detail: String,
    pub run_id: String,
}

impl From<&WorkflowEvent> for EventView {
    fn from(e: &WorkflowEvent) -> Self {
        Self {
            at_ms: e.at,
            kind: e.kind.clone(),
            detail: e.detail.clone(),
            run_id: e.run_id.clone(),
        }
    }
}

/// `GET /v1/workflows/{id}/steps`: the workflow with its events and steps
/// (the `history --json` document).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WorkflowHistory {
    #[serde(flatten)]
    pub workflow: WorkflowView,
    pub events: Vec<EventView>,
    /// Signals sent to it, in the order sent, taken or not.
    pub signals: Vec<SignalView>,
    /// The values it published, by key.
    pub published: Vec<PublishedEventView>,
    /// The HTTP requests its steps made, sent or refused (its log's `http`
    /// lines), oldest first.
    pub requests: Vec<LogLineView>,
    pub steps: Vec<StepView>,
    /// When one page of the steps was asked for and more follow: pass it
    /// as `after` for the next page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_after: Option<u32>,
}

impl WorkflowHistory {
    /// The document for `workflow` with `steps` (all of them, or the page
    /// before `next_after`), the rest read from `store`.
    pub fn read(
        store: &dyn CheckpointStore,
        workflow: &WorkflowRecord,
        steps: &[StepRecord],
        next_after: Option<u32>,
    ) -> Result<Self, StoreError> {
        let id = workflow.id.as_str();
        let attempts = store.attempts(id)?;
        Ok(Self {
            workflow: WorkflowView::from(workflow),
            events: store.events(id)?.iter().map(EventView::from).collect(),
            signals: store.signals(id)?.iter().map(SignalView::from).collect(),
            published: store
                .published_events(id)?
                .iter()
                .map(PublishedEventView::from)
                .collect(),
            requests: store
                .stream_logs(id, LogStream::Http)?
                .iter()
                .map(LogLineView::from)
                .collect(),
            steps: steps
                .iter()
                .map(|step| StepView::new(id, step, &attempts))
                .collect(),
            next_after,
        })
    }
}

/// A signal sent to a workflow.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SignalView {
    pub name: String,
    pub signal_id: String,
    /// The signal's value.
    #[schema(value_type = Object)]
    pub value: serde_json::Value,
    pub sent_at_ms: Millis,
    /// The step of the wait that took it (`durable.signal:NAME#000001`);
    /// none while it waits to be taken.
    pub taken_by: Option<String>,
}

impl From<&SignalRecord> for SignalView {
    fn from(signal: &SignalRecord) -> Self {
        Self {
            name: signal.name.clone(),
            signal_id: signal.signal_id.clone(),
            value: json_value(&signal.value),
            sent_at_ms: signal.sent_at,
            taken_by: signal.taken_by.as_ref().map(|key| key.as_str().to_owned()),
        }
    }
}

/// `POST /v1/workflows/{id}/signals/{name}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignalRequestBody {
    /// The signal's value, any JSON (`null` when left out).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub value: serde_json::Value,
    /// Makes sending again harmless: a signal with an id already sent to
    /// this workflow is not kept again. A new id when left out.
    #[serde(default)]
    pub signal_id: Option<String>,
}

/// The answer to a signal sent.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SignalSentView {
    pub workflow_id: String,
    #[serde(flatten)]
    pub signal: SignalView,
    /// A signal with this id had been sent before: that one stands.
    pub duplicate: bool,
}

/// A value a workflow published (`ctx.set_event`).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PublishedEventView {
    pub key: String,
    #[schema(value_type = Object)]
    pub value: serde_json::Value,
    /// The step that published it (`durable.event:KEY#000002`).
    pub step: String,
    pub published_at_ms: Millis,
}

impl From<&PublishedEvent> for PublishedEventView {
    fn from(event: &PublishedEvent) -> Self {
        Self {
            key: event.key.clone(),
            value: json_value(&event.value),
            step: event.step_key.as_str().to_owned(),
            published_at_ms: event.published_at,
        }
    }
}

/// `GET /v1/workflows/{id}/events/{key}` query.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PublishedEventParams {
    /// Wait up to this long for the workflow to publish the key (`500ms`,
    /// `30s`, `1m`, at most 60 s); without it, a key not published is 404.
    pub wait: Option<String>,
}

/// Where a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    /// The guest's standard output.
    Stdout,
    /// The guest's standard error.
    Stderr,
    /// A line the workflow logged with `ctx.log`.
    Log,
    /// An outbound HTTP request a step made: sent (with its status) or
    /// refused (with why).
    Http,
}

impl From<LogStream> for Stream {
    fn from(stream: LogStream) -> Self {
        match stream {
            LogStream::Stdout => Self::Stdout,
            LogStream::Stderr => Self::Stderr,
            LogStream::Log => Self::Log,
            LogStream::Http => Self::Http,
        }
    }
}

/// One line of a workflow's log (a line of `durable-host logs --json`).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LogLineView {
    /// Increasing within the workflow: pass the last one as `after` to read on.
    pub seq: i64,
    pub at_ms: Millis,
    pub stream: Stream,
    /// The step executing when it was written, if one was.
    pub step: Option<String>,
    pub text: String,
}

impl From<&LogRecord> for LogLineView {
    fn from(record: &LogRecord) -> Self {
        Self {
            seq: record.seq,
            at_ms: record.line.at,
            stream: record.line.stream.into(),
            step: record.line.step.as_ref().map(|key| key.as_str().to_owned()),
            text: record.line.text.clone(),
        }
    }
}

/// `GET /v1/workflows/{id}/logs`: a page of the workflow's log, oldest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LogPage {
    pub lines: Vec<LogLineView>,
    /// The `after` that reads on: the last line's `seq` (or the `after`
    /// asked, when there were no new lines).
    pub next_after: i64,
    /// The workflow's status when the page was read: a final one means no
    /// more lines will come.
    pub status: Status,
}

/// What a cancellation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CancelState {
    /// Nobody was running it: it is cancelled now.
    Cancelled,
    /// Its run hands the cancellation to it at its next step boundary.
    Requested,
    /// It had already finished; nothing changed.
    AlreadyFinished,
}

/// `POST /v1/workflows/{id}/cancel` (the `cancel --json` document).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Cancelled {
    pub workflow_id: String,
    pub cancel: CancelState,
}

impl From<&CancelOutcome> for CancelState {
    fn from(outcome: &CancelOutcome) -> Self {
        match outcome {
            CancelOutcome::Cancelled => Self::Cancelled,
            CancelOutcome::Requested { .. } => Self::Requested,
            CancelOutcome::AlreadyFinished(_) => Self::AlreadyFinished,
        }
    }
}

/// The bytes of a WebAssembly component (`POST /v1/deployments`).
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct ComponentBytes(#[allow(dead_code)] Vec<u8>);

/// A version of a deployment (the `deploy --list --json` fields).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DeploymentView {
    pub name: String,
    /// 1 for the first deployment of a name, then counting up.
    pub version: u32,
    pub component_sha256: String,
    /// What its workflows are granted (directories, environment, limits).
    pub grants: Value,
    pub created_at_ms: Millis,
}

impl From<&Deployment> for DeploymentView {
    fn from(d: &Deployment) -> Self {
        Self {
            name: d.name.clone(),
            version: d.version,
            component_sha256: d.sha256.clone(),
            grants: serde_json::from_str(&d.grants).unwrap_or_default(),
            created_at_ms: d.created_at,
        }
    }
}

/// `GET /v1/deployments`: every version, newest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DeploymentList {
    pub deployments: Vec<DeploymentView>,
}

/// `POST /v1/deployments` query.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeployParams {
    /// The deployment's name.
    pub name: String,
}

/// `GET /v1/deployments` query.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeploymentsParams {
    /// Only the versions of this deployment.
    pub name: Option<String>,
}

/// A schedule (`schedule list --json`, `GET /v1/schedules`).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ScheduleView {
    pub name: String,
    /// The cron expression (UTC).
    pub cron: String,
    pub deployment: String,
    /// The input of every workflow it starts.
    pub input: Value,
    pub queue: String,
    /// The next tick: its workflow will be `NAME@<this time>`.
    pub next_tick_ms: Millis,
    /// The same, RFC 3339, UTC.
    pub next_tick: String,
    pub created_at_ms: Millis,
}

impl From<&ScheduleRecord> for ScheduleView {
    fn from(s: &ScheduleRecord) -> Self {
        Self {
            name: s.name.clone(),
            cron: s.cron.clone(),
            deployment: s.deployment.clone(),
            input: json_value(&s.input),
            queue: s.queue.clone(),
            next_tick_ms: s.next_tick,
            next_tick: rfc3339(s.next_tick),
            created_at_ms: s.created_at,
        }
    }
}

/// `GET /v1/schedules`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ScheduleList {
    /// The soonest tick first.
    pub schedules: Vec<ScheduleView>,
}

/// `POST /v1/schedules`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleRequest {
    pub name: String,
    /// Five fields (minute hour day-of-month month day-of-week), or six
    /// with seconds first; UTC.
    #[schema(example = "0 2 * * *")]
    pub cron: String,
    /// The deployment whose newest version each tick runs.
    pub deployment: String,
    /// The input of every workflow it starts; `null` for none.
    pub input: Value,
    /// The queue they wait in (`default` when left out).
    #[serde(default)]
    pub queue: Option<String>,
}

/// `DELETE /v1/schedules/{name}`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ScheduleRemoved {
    pub name: String,
    pub removed: bool,
}

/// `GET /v1/health`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok`, or `stopping` while the server shuts down.
    #[schema(example = "ok")]
    pub status: String,
}

/// Every error: what went wrong and what to do about it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"error": {"message": "no deployment named `onboardng`",
    "hint": "GET /v1/deployments lists the deployments there are"}}))]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    pub message: String,
    /// What to change, when something helps.
    pub hint: Option<String>,
}

/// Stored JSON text as a value (text that is not JSON as a string).
pub fn json_value(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
}

/// The wake-up time a completed `durable.sleep` step recorded.
pub fn sleep_until(step: &StepRecord) -> Option<Millis> {
    if step.name != SLEEP_STEP || step.status != StepStatus::Completed {
        return None;
    }
    let millis: u64 = serde_json::from_str(step.output_json.as_deref()?).ok()?;
    Millis::try_from(millis).ok()
}

/// `2026-11-24T09:30:05Z` (RFC 3339, UTC, to the second).
pub fn rfc3339(millis: Millis) -> String {
    let time = UNIX_EPOCH + Duration::from_millis(millis.max(0) as u64);
    humantime::format_rfc3339_seconds(time).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_512_605_000), "2026-11-24T09:30:05Z");
    }
}
