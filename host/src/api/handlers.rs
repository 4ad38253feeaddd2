//! The endpoints. Each reads its request, hands the work to the
//! synchronous library layer ([`crate::control`], the store) on tokio's
//! blocking pool, and turns the answer into JSON. The rules about
//! workflows are the library's, shared with the command line; only the
//! wire's own live here (pages, waits, body limits, content types).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use super::error::ApiError;
use super::model::{
    CancelState, Cancelled, ComponentBytes, DeployParams, DeploymentList, DeploymentView,
    DeploymentsParams, ErrorBody, ForkRequestBody, Health, ListParams, LogLineView, LogPage,
    LogParams, PublishedEventParams, PublishedEventView, ResultParams, ScheduleList,
    ScheduleRemoved, ScheduleRequest, ScheduleView, SignalRequestBody, SignalSentView, SignalView,
    StatusCounts, StepsParams, SubmitRequest, Submitted, WorkflowHistory, WorkflowListItem,
    WorkflowPage, WorkflowView,
};
use super::{ApiState, DEPLOY_BODY_LIMIT, SUBMIT_BODY_LIMIT};
use crate::control::{self, ControlError, DEFAULT_QUEUE, Signal, Submission};
use crate::runtime::{ComponentFile, Grants};
use crate::schedules::{self, NewSchedule};
use crate::store::{CheckpointStore, GroupCommitStore, ListQuery, WorkflowStatus, now_millis};
use crate::versions::{self, ForkRequest};

/// Workflows a listing shows unless asked for another number.
pub const DEFAULT_PAGE: u32 = 50;
/// The most workflows one page shows.
pub const MAX_PAGE: u32 = 1000;
/// The longest a result request waits.
pub const MAX_WAIT: Duration = Duration::from_secs(60);
/// A long poll looks at its workflow after this long, then less and less
/// often, down to once every [`LAST_LOOK`].
const FIRST_LOOK: Duration = Duration::from_millis(10);
const LAST_LOOK: Duration = Duration::from_millis(200);

/// Run `work` on the blocking pool with a handle on the store: SQLite and
/// the control layer block, and must not hold up the async workers.
async fn blocking<T: Send + 'static>(
    state: &ApiState,
    work: impl FnOnce(&GroupCommitStore) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let store = state.store.clone();
    tokio::task::spawn_blocking(move || work(&store))
        .await
        .map_err(|e| ApiError::internal(format!("the request's work stopped: {e}")))?
}

/// A JSON request body, read whatever its `Content-Type`, refused as our
/// JSON error (400, or 413 past the route's body limit).
pub struct JsonBody<T>(pub T);

/// What a request body looks like, for the hint of a refused one.
pub trait BodyExample {
    const EXAMPLE: &'static str;
}

impl BodyExample for SubmitRequest {
    const EXAMPLE: &'static str = r#"send a JSON object such as {"deployment": "NAME", "input": {...}} (workflow_id and queue are optional)"#;
}

impl BodyExample for SignalRequestBody {
    const EXAMPLE: &'static str =
        r#"send a JSON object such as {"value": {...}} (signal_id is optional)"#;
}

impl BodyExample for ForkRequestBody {
    const EXAMPLE: &'static str =
        r#"send a JSON object such as {"from_step": 3} (workflow_id and deployment are optional)"#;
}

impl BodyExample for ScheduleRequest {
    const EXAMPLE: &'static str = r#"send a JSON object such as {"name": "nightly", "cron": "0 2 * * *", "deployment": "NAME", "input": {...}} (queue is optional)"#;
}

impl<S: Send + Sync, T: DeserializeOwned + BodyExample> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        check_length(&request, SUBMIT_BODY_LIMIT)?;
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| body_error(rejection.status(), &rejection.body_text()))?;
        // No body at all is an object with no fields: enough where every
        // field is optional (a signal), and a missing field's name is a
        // better answer than the end of the input elsewhere.
        let body: &[u8] = if bytes.trim_ascii().is_empty() {
            b"{}"
        } else {
            &bytes
        };
        serde_json::from_slice(body).map(JsonBody).map_err(|e| {
            let message = if e.is_data() {
                format!("the request is not valid: {e}")
            } else {
                format!("the body is not valid JSON: {e}")
            };
            ApiError::bad_request(message, T::EXAMPLE)
        })
    }
}

/// The raw body, up to the route's limit.
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        check_length(&request, DEPLOY_BODY_LIMIT)?;
        Bytes::from_request(request, state)
            .await
            .map(RawBody)
            .map_err(|rejection| body_error(rejection.status(), &rejection.body_text()))
    }
}

/// Refuse a body whose announced length is over `limit` before reading
/// any of it: a client that sent `Expect: 100-continue` (curl does, for
/// large bodies) gets the 413 without uploading. A body without a length
/// is cut at the limit as it is read (the route's `DefaultBodyLimit`).
fn check_length(request: &Request, limit: usize) -> Result<(), ApiError> {
    let length = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match length {
        Some(length) if length > limit as u64 => Err(body_error(StatusCode::PAYLOAD_TOO_LARGE, "")),
        _ => Ok(()),
    }
}

fn body_error(status: StatusCode, text: &str) -> ApiError {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            status,
            format!(
                "the body is too large: at most {} MiB ({} MiB for a deployment's component)",
                SUBMIT_BODY_LIMIT >> 20,
                DEPLOY_BODY_LIMIT >> 20
            ),
            Some("keep large data elsewhere and pass a reference to it"),
        )
    } else {
        ApiError::new(status, format!("cannot read the body: {text}"), None)
    }
}

/// A query string, refused as our JSON error (400).
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        parse_query(&parts.uri).map(ApiQuery)
    }
}

fn parse_query<T: DeserializeOwned>(uri: &Uri) -> Result<T, ApiError> {
    axum::extract::Query::<T>::try_from_uri(uri)
        .map(|query| query.0)
        .map_err(|rejection| {
            ApiError::bad_request(
                format!("the query is not valid: {}", rejection.body_text()),
                "see GET /v1/openapi.json for each endpoint's parameters",
            )
        })
}

/// Queue a workflow of a deployment's newest version.
///
/// Idempotent on `workflow_id`: the same id with the same input answers
/// 200 with the existing workflow; another input is refused with 409.
#[utoipa::path(
    post,
    path = "/v1/workflows",
    tag = "workflows",
    request_body = SubmitRequest,
    responses(
        (status = 202, description = "Queued: `serve` runs it", body = Submitted),
        (status = 200, description = "A workflow with this id and this input already existed: this is it", body = Submitted),
        (status = 400, description = "Not JSON, a missing or unknown field, a bad id, queue or deployment name", body = ErrorBody),
        (status = 404, description = "No deployment of that name", body = ErrorBody),
        (status = 409, description = "A workflow with this id exists with another input", body = ErrorBody),
        (status = 413, description = "The body (17 MiB) or the input (16 MiB) is too large", body = ErrorBody),
        (status = 503, description = "The server is shutting down", body = ErrorBody),
    )
)]
pub async fn submit_workflow(
    State(state): State<ApiState>,
    JsonBody(request): JsonBody<SubmitRequest>,
) -> Result<(StatusCode, Json<Submitted>), ApiError> {
    state.accepting_writes()?;
    let submitted = blocking(&state, move |store| {
        let input = request.input.to_string();
        let submission = Submission {
            deployment: &request.deployment,
            workflow_id: request.workflow_id.as_deref(),
            input: &input,
            queue: request.queue.as_deref().unwrap_or(DEFAULT_QUEUE),
        };
        Ok(control::submit(store, &submission)?)
    })
    .await?;
    let status = if submitted.created {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    let workflow = submitted.workflow;
    Ok((
        status,
        Json(Submitted {
            workflow_id: workflow.id,
            created: submitted.created,
            status: workflow.status.into(),
            queue: workflow.queue,
        }),
    ))
}

/// The `limit` asked for a page, or `default`; from 1 to [`MAX_PAGE`].
fn page_limit(asked: Option<u32>, default: u32) -> Result<u32, ApiError> {
    let limit = asked.unwrap_or(default);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(
            format!("limit {limit} is out of range"),
            &format!("limit is from 1 to {MAX_PAGE} (default {default}); page with `after`"),
        ));
    }
    Ok(limit)
}

/// List workflows, newest first, a page at a time.
#[utoipa::path(
    get,
    path = "/v1/workflows",
    tag = "workflows",
    params(ListParams),
    responses(
        (status = 200, description = "One page; `next_after` gives the next", body = WorkflowPage),
        (status = 400, description = "A bad status, limit or `after` id", body = ErrorBody),
    )
)]
pub async fn list_workflows(
    State(state): State<ApiState>,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<WorkflowPage>, ApiError> {
    let status = params
        .status
        .as_deref()
        .map(|text| {
            WorkflowStatus::parse(text).ok_or_else(|| {
                ApiError::bad_request(
                    format!("`{text}` is not a workflow status"),
                    "status is one of queued, running, sleeping, waiting, completed, failed, cancelled, suspended",
                )
            })
        })
        .transpose()?;
    let limit = page_limit(params.limit, DEFAULT_PAGE)?;
    let page = blocking(&state, move |store| {
        if let Some(after) = &params.after
            && store.workflow(after)?.is_none()
        {
            return Err(ApiError::bad_request(
                format!("`after` names no workflow: {after}"),
                "pass the `next_after` of the previous page, or leave `after` out for the first page",
            ));
        }
        // One more than asked tells whether there is a next page.
        let mut rows = store.list_workflows(&ListQuery {
            status,
            limit: Some(limit + 1),
            after: params.after,
            id_contains: params.search.filter(|text| !text.is_empty()),
        })?;
        let more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        let next_after = more
            .then(|| rows.last().map(|s| s.workflow.id.clone()))
            .flatten();
        Ok(WorkflowPage {
            workflows: rows.iter().map(WorkflowListItem::from).collect(),
            next_after,
        })
    })
    .await?;
    Ok(Json(page))
}

/// One workflow as stored.
#[utoipa::path(
    get,
    path = "/v1/workflows/{id}",
    tag = "workflows",
    params(("id" = String, Path, description = "The workflow id (`/` written %2F)")),
    responses(
        (status = 200, description = "The workflow", body = WorkflowView),
        (status = 404, description = "No such workflow", body = ErrorBody),
    )
)]
pub async fn get_workflow(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<WorkflowView>, ApiError> {
    let record = blocking(&state, move |store| Ok(control::workflow(store, &id)?)).await?;
    Ok(Json(WorkflowView::from(&record)))
}

/// How many workflows have each status.
#[utoipa::path(
    get,
    path = "/v1/workflow-counts",
    tag = "workflows",
    responses((status = 200, description = "Counts by status, and the total", body = StatusCounts))
)]
pub async fn workflow_counts(
    State(state): State<ApiState>,
) -> Result<Json<StatusCounts>, ApiError> {
    let counts = blocking(&state, |store| Ok(store.status_counts()?)).await?;
    Ok(Json(counts.into_iter().collect()))
}

/// A workflow with its steps and events.
///
/// Each step carries its earlier attempts; the document is the one
/// `durable-host history --json` prints. With `after` or `limit`, one page
/// of the steps, and `next_after` when more follow.
#[utoipa::path(
    get,
    path = "/v1/workflows/{id}/steps",
    tag = "workflows",
    params(("id" = String, Path, description = "The workflow id (`/` written %2F)"), StepsParams),
    responses(
        (status = 200, description = "The workflow, its events and its steps", body = WorkflowHistory),
        (status = 400, description = "A bad limit", body = ErrorBody),
        (status = 404, description = "No such workflow", body = ErrorBody),
    )
)]
pub async fn workflow_steps(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    ApiQuery(params): ApiQuery<StepsParams>,
) -> Result<Json<WorkflowHistory>, ApiError> {
    let paged = params.after.is_some() || params.limit.is_some();
    let limit = if paged {
        page_limit(params.limit, MAX_PAGE)?
    } else {
        u32::MAX
    };
    let after = params.after.unwrap_or(0);
    let history = blocking(&state, move |store| {
        let workflow = control::workflow(store, &id)?;
        // One more than asked tells whether there is a next page.
        let mut steps = store.steps_page(&id, after, limit.saturating_add(1))?;
        let more = steps.len() > limit as usize;
        steps.truncate(limit as usize);
        let next_after = more
            .then(|| steps.last().map(|step| step.sequence))
            .flatten();
        Ok(WorkflowHistory::read(store, &workflow, &steps, next_after)?)
    })
    .await?;
    Ok(Json(history))
}

/// A page of what a workflow printed (stdout, stderr) and logged.
///
/// Lines are stored with the checkpoint that follows them; poll with
/// `after` set to the previous page's `next_after` to follow a running
/// workflow.
#[utoipa::path(
    get,
    path = "/v1/workflows/{id}/logs",
    tag = "workflows",
    params(("id" = String, Path, description = "The workflow id (`/` written %2F)"), LogParams),
    responses(
        (status = 200, description = "Lines after `after`, oldest first", body = LogPage),
        (status = 400, description = "A bad `after` or limit", body = ErrorBody),
        (status = 404, description = "No such workflow", body = ErrorBody),
    )
)]
pub async fn workflow_logs(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    ApiQuery(params): ApiQuery<LogParams>,
) -> Result<Json<LogPage>, ApiError> {
    let limit = page_limit(params.limit, MAX_PAGE)?;
    let after = params.after.unwrap_or(0);
    let page = blocking(&state, move |store| {
        // The status first: lines written before a final status are then
        // all in this page or the next.
        let workflow = control::workflow(store, &id)?;
        let lines = store.logs(&id, after, limit)?;
        Ok(LogPage {
            next_after: lines.last().map_or(after, |record| record.seq),
            lines: lines.iter().map(LogLineView::from).collect(),
            status: workflow.status.into(),
        })
    })
    .await?;
    Ok(Json(page))
}

/// A workflow's result, waiting for it up to `wait`.
///
/// Answers 200 once the workflow finished (completed, failed, cancelled
/// or suspended), 202 with the record as it is when the wait ran out.
#[utoipa::path(
    get,
    path = "/v1/workflows/{id}/result",
    tag = "workflows",
    params(
        ("id" = String, Path, description = "The workflow id (`/` written %2F)"),
        ResultParams,
    ),
    responses(
        (status = 200, description = "Finished: the record with its output or error", body = WorkflowView),
        (status = 202, description = "Not finished when the wait ran out: the record as it is", body = WorkflowView),
        (status = 400, description = "A bad `wait`", body = ErrorBody),
        (status = 404, description = "No such workflow", body = ErrorBody),
    )
)]
pub async fn workflow_result(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    ApiQuery(params): ApiQuery<ResultParams>,
) -> Result<(StatusCode, Json<WorkflowView>), ApiError> {
    let record = long_poll(
        &state,
        params.wait.as_deref(),
        move |store| Ok(control::workflow(store, &id)?),
        |record| record.outcome().is_some(),
    )
    .await?;
    let status = if record.outcome().is_some() {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((status, Json(WorkflowView::from(&record))))
}

/// Look with `look` until `done` says so, `wait` (a duration, see
/// [`parse_wait`]; none: look once) runs out or the server winds down; the
/// last look. Waiting happens here, between short looks on the blocking
/// pool, not on it: a thousand long polls must not hold a thousand
/// threads, nor queue submissions behind them.
async fn long_poll<T: Send + 'static>(
    state: &ApiState,
    wait: Option<&str>,
    look: impl Fn(&GroupCommitStore) -> Result<T, ApiError> + Clone + Send + 'static,
    done: impl Fn(&T) -> bool,
) -> Result<T, ApiError> {
    let wait = match wait {
        Some(text) => parse_wait(text)?,
        None => Duration::ZERO,
    };
    let deadline = Instant::now() + wait;
    let mut pause = FIRST_LOOK;
    loop {
        let this_look = look.clone();
        let seen = blocking(state, move |store| this_look(store)).await?;
        let left = deadline.saturating_duration_since(Instant::now());
        if done(&seen) || left.is_zero() || state.winding_down() {
            return Ok(seen);
        }
        tokio::time::sleep(pause.min(left)).await;
        pause = (pause * 3 / 2).min(LAST_LOOK);
    }
}

/// `30s`, `500ms`, `1m`, `1h`, `2.5s` or a bare number of seconds; at
/// most [`MAX_WAIT`] (longer is cut to it).
fn parse_wait(text: &str) -> Result<Duration, ApiError> {
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let seconds = text[..split].parse::<f64>().ok().and_then(|n| {
        let scale = match &text[split..] {
            "ms" => 0.001,
            "" | "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        Some(n * scale).filter(|s| s.is_finite())
    });
    match seconds {
        Some(seconds) => Ok(Duration::from_secs_f64(seconds.min(MAX_WAIT.as_secs_f64()))),
        None => Err(ApiError::bad_request(
            format!("wait `{text}` is not a duration this API reads"),
            "wait is a duration such as 500ms, 30s or 1m (ms, s, m or h; at most 60s, longer is \
             cut), or a number of seconds",
        )),
    }
}

/// Cancel a workflow.
///
/// One nobody runs is cancelled at once (200); a running
/// one is handed the cancellation at its next step boundary (202) and may
/// run its compensation steps for `serve --cancel-grace`.
#[utoipa::path(
    post,
    path = "/v1/workflows/{id}/cancel",
    tag = "workflows",
    params(("id" = String, Path, description = "The workflow id (`/` written %2F)")),
    responses(
        (status = 200, description = "`cancelled`, or `already_finished` (nothing changed)", body = Cancelled),
        (status = 202, description = "`requested`: its run stops at its next step", body = Cancelled),
        (status = 404, description = "No such workflow", body = ErrorBody),
        (status = 503, description = "The server is shutting down", body = ErrorBody),
    )
)]
pub async fn cancel_workflow(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Cancelled>), ApiError> {
    state.accepting_writes()?;
    let (id, outcome) = blocking(&state, move |store| {
        let outcome = control::cancel(store, &id)?;
        Ok((id, outcome))
    })
    .await?;
    let cancel = CancelState::from(&outcome);
    let status = match cancel {
        CancelState::Requested => StatusCode::ACCEPTED,
        CancelState::Cancelled | CancelState::AlreadyFinished => StatusCode::OK,
    };
    Ok((
        status,
        Json(Cancelled {
            workflow_id: id,
            cancel,
        }),
    ))
}

/// Send a signal to a workflow: its next wait for `name` takes it.
///
/// Kept until taken, so one sent before the workflow waits is not missed;
/// each is taken once, oldest first. A workflow waiting for it resumes at
/// once. 202 when kept; 200 when a signal with this `signal_id` was sent
/// before (that one stands).
#[utoipa::path(
    post,
    path = "/v1/workflows/{id}/signals/{name}",
    tag = "workflows",
    params(
        ("id" = String, Path, description = "The workflow id (`/` written %2F)"),
        ("name" = String, Path, description = "The signal's name, as the workflow waits for it"),
    ),
    request_body = SignalRequestBody,
    responses(
        (status = 202, description = "Kept for the workflow", body = SignalSentView),
        (status = 200, description = "Sent before with this `signal_id`: nothing changed", body = SignalSentView),
        (status = 400, description = "Not JSON, an unknown field, a bad name", body = ErrorBody),
        (status = 404, description = "No such workflow", body = ErrorBody),
        (status = 409, description = "The workflow has ended", body = ErrorBody),
        (status = 503, description = "The server is shutting down", body = ErrorBody),
    )
)]
pub async fn send_signal(
    State(state): State<ApiState>,
    Path((id, name)): Path<(String, String)>,
    JsonBody(request): JsonBody<SignalRequestBody>,
) -> Result<(StatusCode, Json<SignalSentView>), ApiError> {
    state.accepting_writes()?;
    let (signal, new) = blocking(&state, move |store| {
        let value = request.value.to_string();
        Ok(control::send_signal(
            store,
            &Signal {
                workflow_id: &id,
                name: &name,
                value: &value,
                signal_id: request.signal_id.as_deref(),
            },
        )?)
    })
    .await?;
    let status = if new {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(SignalSentView {
            workflow_id: signal.workflow_id.clone(),
            signal: SignalView::from(&signal),
            duplicate: !new,
        }),
    ))
}

/// The value a workflow last published under `key` (`ctx.set_event`),
/// waiting up to `wait` for it to be published.
///
/// Answers 202 with the workflow's record as it is while the key is not
/// published and may still be (as `/result` does for a workflow not
/// finished), so that a client tells "ask again" from "never": 404, a
/// workflow that ended without publishing it.
#[utoipa::path(
    get,
    path = "/v1/workflows/{id}/events/{key}",
    tag = "workflows",
    params(
        ("id" = String, Path, description = "The workflow id (`/` written %2F)"),
        ("key" = String, Path, description = "The event's key"),
        PublishedEventParams,
    ),
    responses(
        (status = 200, description = "The value", body = PublishedEventView),
        (status = 202, description = "Not published when the wait ran out, and the workflow goes on: its record as it is", body = WorkflowView),
        (status = 400, description = "A bad `wait`", body = ErrorBody),
        (status = 404, description = "No such workflow, or it ended without publishing `key`", body = ErrorBody),
    )
)]
pub async fn published_event(
    State(state): State<ApiState>,
    Path((id, key)): Path<(String, String)>,
    ApiQuery(params): ApiQuery<PublishedEventParams>,
) -> Result<Response, ApiError> {
    let found = long_poll(
        &state,
        params.wait.as_deref(),
        {
            let id = id.clone();
            move |store| Ok(control::published_event(store, &id, &key, None))
        },
        // An ended workflow publishes nothing more: no use waiting.
        |found| !matches!(found, Err(ControlError::UnknownEvent { ended: false, .. })),
    )
    .await?;
    match found {
        Ok(event) => Ok(Json(PublishedEventView::from(&event)).into_response()),
        Err(ControlError::UnknownEvent { ended: false, .. }) => {
            let record = blocking(&state, move |store| Ok(control::workflow(store, &id)?)).await?;
            Ok((StatusCode::ACCEPTED, Json(WorkflowView::from(&record))).into_response())
        }
        Err(error) => Err(error.into()),
    }
}

/// Queue a new workflow that starts from this one's history.
///
/// It gets the same input, grants and queue, and a copy of the steps
/// before `from_step` with their recorded results; `serve` runs the rest.
#[utoipa::path(
    post,
    path = "/v1/workflows/{id}/fork",
    tag = "workflows",
    params(("id" = String, Path, description = "The workflow id (`/` written %2F)")),
    request_body = ForkRequestBody,
    responses(
        (status = 201, description = "The new workflow, queued", body = WorkflowView),
        (status = 400, description = "Not JSON, a missing or unknown field", body = ErrorBody),
        (status = 404, description = "No such workflow or deployment", body = ErrorBody),
        (status = 409, description = "`from_step` is out of range or follows an unfinished step, or the new id is taken", body = ErrorBody),
        (status = 503, description = "The server is shutting down", body = ErrorBody),
    )
)]
pub async fn fork_workflow(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    JsonBody(request): JsonBody<ForkRequestBody>,
) -> Result<(StatusCode, Json<WorkflowView>), ApiError> {
    state.accepting_writes()?;
    let forked = blocking(&state, move |store| {
        let component = request
            .deployment
            .as_deref()
            .map(|spec| versions::deployment(store, spec))
            .transpose()?;
        Ok(versions::fork(
            store,
            &ForkRequest {
                source: &id,
                from_step: request.from_step,
                id: request.workflow_id.as_deref(),
                component_sha256: component.as_ref().map(|d| d.sha256.as_str()),
                deployment: component.as_ref().map(|d| d.name.as_str()),
            },
        )?)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(WorkflowView::from(&forked))))
}

/// Every schedule, the soonest tick first.
#[utoipa::path(
    get,
    path = "/v1/schedules",
    tag = "schedules",
    responses((status = 200, description = "The schedules", body = ScheduleList))
)]
pub async fn list_schedules(State(state): State<ApiState>) -> Result<Json<ScheduleList>, ApiError> {
    let all = blocking(&state, |store| Ok(store.schedules()?)).await?;
    Ok(Json(ScheduleList {
        schedules: all.iter().map(ScheduleView::from).collect(),
    }))
}

/// Add a schedule: `serve` queues one workflow of `deployment` per tick of
/// `cron` (UTC), with the id `NAME@TIME`, so that a tick runs once.
#[utoipa::path(
    post,
    path = "/v1/schedules",
    tag = "schedules",
    request_body = ScheduleRequest,
    responses(
        (status = 201, description = "Added; `next_tick` is its first tick", body = ScheduleView),
        (status = 400, description = "Not JSON, a missing or unknown field, a bad name, or a bad cron expression", body = ErrorBody),
        (status = 404, description = "No deployment of that name", body = ErrorBody),
        (status = 409, description = "A schedule of that name exists", body = ErrorBody),
        (status = 503, description = "The server is shutting down", body = ErrorBody),
    )
)]
pub async fn add_schedule(
    State(state): State<ApiState>,
    JsonBody(request): JsonBody<ScheduleRequest>,
) -> Result<(StatusCode, Json<ScheduleView>), ApiError> {
    state.accepting_writes()?;
    let added = blocking(&state, move |store| {
        let input = request.input.to_string();
        Ok(schedules::add(
            store,
            &NewSchedule {
                name: &request.name,
                cron: &request.cron,
                deployment: &request.deployment,
                input: &input,
                queue: request.queue.as_deref().unwrap_or(DEFAULT_QUEUE),
            },
            now_millis(),
        )?)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(ScheduleView::from(&added))))
}

/// Remove a schedule. The workflows it started are left alone.
#[utoipa::path(
    delete,
    path = "/v1/schedules/{name}",
    tag = "schedules",
    params(("name" = String, Path, description = "The schedule's name")),
    responses(
        (status = 200, description = "Removed", body = ScheduleRemoved),
        (status = 404, description = "No such schedule", body = ErrorBody),
        (status = 503, description = "The server is shutting down", body = ErrorBody),
    )
)]
pub async fn remove_schedule(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<ScheduleRemoved>, ApiError> {
    state.accepting_writes()?;
    let name = blocking(&state, move |store| {
        schedules::remove(store, &name)?;
        Ok(name)
    })
    .await?;
    Ok(Json(ScheduleRemoved {
        name,
        removed: true,
    }))
}

/// Deploy a component as the newest version of deployment `name`.
///
/// The component is checked (it must be a workflow) before it is kept.
/// Its workflows are granted nothing (no directory, no environment, no
/// limits): `durable-host deploy NAME FILE --dir ... --env ...` on the
/// command line deploys with grants.
#[utoipa::path(
    post,
    path = "/v1/deployments",
    tag = "deployments",
    params(DeployParams),
    request_body(
        content = ComponentBytes,
        content_type = "application/wasm",
        description = "The component's bytes (a .wasm built for wasm32-wasip2), at most 64 MiB",
    ),
    responses(
        (status = 201, description = "Deployed: the new version", body = DeploymentView),
        (status = 400, description = "Not a workflow component, or a bad name", body = ErrorBody),
        (status = 413, description = "Larger than 64 MiB", body = ErrorBody),
        (status = 415, description = "Not sent as application/wasm", body = ErrorBody),
        (status = 503, description = "The server is shutting down", body = ErrorBody),
    )
)]
pub async fn deploy(
    State(state): State<ApiState>,
    uri: Uri,
    headers: HeaderMap,
    RawBody(bytes): RawBody,
) -> Result<(StatusCode, Json<DeploymentView>), ApiError> {
    // The body is read before anything is refused: a client still sending
    // it would otherwise see the connection reset instead of the answer.
    let params: DeployParams = parse_query(&uri)?;
    state.accepting_writes()?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = content_type.split(';').next().unwrap_or("").trim();
    if !essence.eq_ignore_ascii_case("application/wasm")
        && !essence.eq_ignore_ascii_case("application/octet-stream")
    {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "a component is sent as application/wasm, not `{}`",
                if content_type.is_empty() {
                    "(no Content-Type)"
                } else {
                    content_type
                }
            ),
            Some("curl: --data-binary @FILE.wasm -H 'Content-Type: application/wasm'"),
        ));
    }
    let runtime = state.runtime.clone();
    let deployment = blocking(&state, move |store| {
        let file = ComponentFile::from_bytes("the uploaded component".into(), bytes.to_vec())?;
        Ok(control::deploy(
            store,
            &runtime,
            &params.name,
            &file,
            &Grants::default(),
        )?)
    })
    .await?;
    tracing::info!(
        deployment = deployment.name,
        version = deployment.version,
        sha256 = deployment.sha256,
        "deployed over HTTP"
    );
    Ok((StatusCode::CREATED, Json(DeploymentView::from(&deployment))))
}

/// Every deployment version, newest first.
#[utoipa::path(
    get,
    path = "/v1/deployments",
    tag = "deployments",
    params(DeploymentsParams),
    responses(
        (status = 200, description = "Every version, newest first", body = DeploymentList),
        (status = 400, description = "An unknown parameter", body = ErrorBody),
    )
)]
pub async fn list_deployments(
    State(state): State<ApiState>,
    ApiQuery(params): ApiQuery<DeploymentsParams>,
) -> Result<Json<DeploymentList>, ApiError> {
    let deployments = blocking(&state, move |store| {
        Ok(store.deployments(params.name.as_deref())?)
    })
    .await?;
    Ok(Json(DeploymentList {
        deployments: deployments.iter().map(DeploymentView::from).collect(),
    }))
}

/// `GET /metrics`: the server's counters in the Prometheus (OpenMetrics)
/// text format.
pub async fn metrics(State(state): State<ApiState>) -> Result<impl IntoResponse, ApiError> {
    let metrics = Arc::clone(&state.metrics);
    let text = blocking(&state, move |store| Ok(metrics.render(store)?)).await?;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    ))
}

/// Whether the server answers and takes work.
#[utoipa::path(
    get,
    path = "/v1/health",
    tag = "server",
    responses(
        (status = 200, description = "`ok`: the server answers and takes work", body = Health),
        (status = 503, description = "`stopping`: the server is shutting down", body = Health),
    )
)]
pub async fn health(State(state): State<ApiState>) -> (StatusCode, Json<Health>) {
    let (status, text) = if state.winding_down() {
        (StatusCode::SERVICE_UNAVAILABLE, "stopping")
    } else {
        (StatusCode::OK, "ok")
    };
    (
        status,
        Json(Health {
            status: text.to_owned(),
        }),
    )
}

/// This document.
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    tag = "server",
    responses((status = 200, description = "The OpenAPI 3 document of this API", content_type = "application/json"))
)]
pub async fn openapi(State(state): State<ApiState>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        state.openapi.clone(),
    )
        .into_response()
}

/// Any path the API does not have.
pub async fn not_found(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no endpoint {} {}", request.method(), request.uri().path()),
        Some("the endpoints are listed by GET /v1/openapi.json"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_parse_and_are_capped() {
        assert_eq!(parse_wait("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_wait("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_wait("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_wait("1m").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_wait("10m").unwrap(), MAX_WAIT);
        assert_eq!(
            parse_wait("1h").unwrap(),
            MAX_WAIT,
            "longer is cut, not refused"
        );
        assert_eq!(parse_wait("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_wait("99999999999999999999999").unwrap(), MAX_WAIT);
        for bad in ["", "s", "-1s", "soon", "1d", "1e400", "."] {
            assert!(parse_wait(bad).is_err(), "{bad}");
        }
    }
}
