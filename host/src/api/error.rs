//! Errors as the API answers them: a status and the JSON document
//! `{"error": {"message": ..., "hint": ...}}`, whatever refused the request
//! (a handler, an extractor, the router, the token check).

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::model::{ErrorBody, ErrorDetail};
use crate::control::ControlError;
use crate::engine::EngineError;
use crate::runtime::{RuntimeError, WorldMismatch};
use crate::store::StoreError;

/// A refused or failed request.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub hint: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>, hint: Option<&str>) -> Self {
        Self {
            status,
            message: message.into(),
            hint: hint.map(str::to_owned),
        }
    }

    pub fn bad_request(message: impl Into<String>, hint: &str) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message, Some(hint))
    }

    /// Something on our side failed (not the request's fault).
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            message,
            Some("the server logs say more; the request may be sent again"),
        )
    }

    pub fn unauthorized(message: &str) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            message,
            Some(
                "send the server's token (the contents of its --token-file) as `Authorization: Bearer TOKEN`",
            ),
        )
    }

    pub fn shutting_down() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is shutting down and takes no more changes",
            Some(
                "send the request again once it is back, or to another `durable-host serve` of the same database",
            ),
        )
    }

    pub fn unknown_workflow(id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            format!("workflow {id} does not exist"),
            Some(
                "GET /v1/workflows lists the workflows there are; an id with `/` or `%` in it is written %2F and %25 in the path",
            ),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(status = self.status.as_u16(), message = %self.message, "request failed");
        }
        let status = self.status;
        let body = ErrorBody {
            error: ErrorDetail {
                message: self.message,
                hint: self.hint,
            },
        };
        let mut response = (status, Json(body)).into_response();
        match status {
            StatusCode::UNAUTHORIZED => {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"durable-host\""),
                );
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        response
    }
}

impl From<ControlError> for ApiError {
    fn from(error: ControlError) -> Self {
        let message = error.to_string();
        match error {
            ControlError::UnknownDeployment { .. } => Self::new(
                StatusCode::NOT_FOUND,
                message,
                Some(
                    "GET /v1/deployments lists the deployments there are; `durable-host deploy NAME FILE.wasm` or POST /v1/deployments?name=NAME makes one",
                ),
            ),
            ControlError::UnknownVersion { .. } => Self::new(
                StatusCode::NOT_FOUND,
                message,
                Some("GET /v1/deployments lists each version with its component's sha256"),
            ),
            ControlError::UnknownSchedule { .. } => Self::new(
                StatusCode::NOT_FOUND,
                message,
                Some("GET /v1/schedules lists the schedules there are"),
            ),
            // A workflow that ended without it: the handler answers one
            // that may still publish it with 202.
            ControlError::UnknownEvent { .. } => Self::new(
                StatusCode::NOT_FOUND,
                message,
                Some("GET /v1/workflows/{id}/steps shows the durable.event steps it recorded"),
            ),
            ControlError::InputConflict { .. } => Self::new(
                StatusCode::CONFLICT,
                message,
                Some(
                    "an id names one workflow: submit it with the input it has (GET /v1/workflows/{id} shows it), or pick another workflow_id",
                ),
            ),
            ControlError::InvalidInput { what, .. } => Self::bad_request(
                message,
                &format!("{what} may be any JSON value (`null` for none)"),
            ),
            ControlError::TooLarge { .. } => Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                message,
                Some("keep large data elsewhere and pass a reference to it"),
            ),
            ControlError::InvalidName { .. } => Self::bad_request(
                message,
                "use a printable name of at most 1,024 bytes, without control characters (nor `@` in a deployment or schedule name)",
            ),
            ControlError::Refused { .. } => Self::new(StatusCode::CONFLICT, message, None),
            ControlError::InvalidSchedule { hint, .. } => {
                Self::new(StatusCode::BAD_REQUEST, message, Some(hint))
            }
            ControlError::Runtime(e) => e.into(),
            ControlError::Store(e) => e.into(),
            ControlError::Engine(e) => e.into(),
        }
    }
}

impl From<RuntimeError> for ApiError {
    fn from(error: RuntimeError) -> Self {
        let message = error.to_string();
        let hint = match error {
            RuntimeError::NotWasm { .. } | RuntimeError::Unreadable { .. } => {
                "send the .wasm file that `cargo build --target wasm32-wasip2` produces, as the raw body"
            }
            RuntimeError::CoreModule { .. } => {
                "build with `--target wasm32-wasip2`, which emits a component, or wrap the module with `wasm-tools component new`"
            }
            RuntimeError::Invalid { .. } => {
                "the file may be truncated or built by an incompatible tool; rebuild it"
            }
            RuntimeError::WrongWorld {
                mismatch: WorldMismatch::UnsupportedImport(import),
                ..
            } => return Self::bad_request(message, &import.hint()),
            RuntimeError::WrongWorld { .. } => {
                "a workflow imports `durable:workflow/durable-step` and exports `run` (the `workflow` world in wit/); in Rust, write it with durable-sdk and `durable_sdk::workflow!`"
            }
            RuntimeError::Engine(e) => return e.into(),
            RuntimeError::HostMemory { .. } => {
                return Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    message,
                    Some(crate::runtime::HOST_MEMORY_HINT),
                );
            }
            RuntimeError::Dir { .. } | RuntimeError::Grants(_) | RuntimeError::Setup(_) => {
                return Self::internal(message);
            }
        };
        Self::bad_request(message, hint)
    }
}

impl From<EngineError> for ApiError {
    fn from(error: EngineError) -> Self {
        match error {
            EngineError::Store(e) => e.into(),
            other => Self::internal(other.to_string()),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match &error {
            StoreError::UnknownWorkflow { id } => Self::unknown_workflow(id),
            StoreError::Busy { .. } => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                error.to_string(),
                Some("other processes kept the database locked; send the request again shortly"),
            ),
            StoreError::WorkflowEnded { .. } => Self::new(
                StatusCode::CONFLICT,
                error.to_string(),
                Some("signals are for workflows that have not ended"),
            ),
            StoreError::WorkflowExists { .. } | StoreError::LostOwnership { .. } => Self::new(
                StatusCode::CONFLICT,
                error.to_string(),
                Some("the workflow changed while the request was handled; send it again"),
            ),
            StoreError::HostMemory { .. } => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                error.to_string(),
                Some("the server's host is short of memory; send the request again shortly"),
            ),
            _ => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("storage failure: {error}"),
                Some(
                    "the server logs say more; once the database is fixed, send the request again",
                ),
            ),
        }
    }
}
