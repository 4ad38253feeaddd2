//! The HTTP API of `durable-host serve --listen ADDR`: JSON over HTTP/1.1
//! for submitting workflows, following them, cancelling them and deploying
//! components, beside the scheduler in the same process; and the web
//! console ([`console`]) at `/`, which is a client of that API.
//!
//! This module owns the wire: routes, request and answer shapes
//! ([`model`]), status codes and JSON errors ([`ApiError`]), the bearer
//! token, body limits, and the OpenAPI document. Every rule about workflows
//! lives in [`crate::control`] and the store, which the command line uses
//! too; handlers call them on tokio's blocking pool, each with a clone of
//! the server's [`GroupCommitStore`], so the API's writes share the
//! scheduler's group commits.
//!
//! The server runs on a tokio runtime of its own (two worker threads, named
//! `api`), started before the scheduler and shut down after it. When the
//! scheduler starts to drain (SIGTERM), writes are refused with 503 and long
//! polls answer with what there is; reads go on until the scheduler has
//! stopped. Then the API stops accepting and lets requests in flight finish
//! for up to [`SHUTDOWN_GRACE`].
//!
//! Why axum: it is the HTTP framework of the tokio project (already in our
//! tree through wasmtime-wasi), built on hyper, the most used and most
//! carefully maintained HTTP implementation in Rust, and it keeps handlers
//! plain async functions over typed extractors, which utoipa reads to
//! generate the OpenAPI document. utoipa-axum registers each handler in the
//! router and in the document in one go, so neither can list a path the
//! other lacks.

mod console;
mod error;
mod handlers;
pub mod model;

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderName, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::serve::ListenerExt;
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{RefOr, ResponseBuilder};
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

pub use error::ApiError;

use crate::engine::MAX_INPUT;
use crate::metrics::Metrics;
use crate::runtime::{ComponentCache, Runtime, RuntimeConfig, RuntimeError};
use crate::scheduler::ShutdownFlag;
use crate::store::GroupCommitStore;

/// The largest component `POST /v1/deployments` takes.
pub const DEPLOY_BODY_LIMIT: usize = 64 << 20;
/// The largest JSON body (`POST /v1/workflows`, a signal, a schedule, a
/// fork): the largest input or value, written compactly, and room for the
/// other fields and the body's own spacing.
pub const SUBMIT_BODY_LIMIT: usize = MAX_INPUT + (1 << 20);
/// After the scheduler stopped, how long requests in flight may take.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What handlers share.
#[derive(Clone)]
pub(crate) struct ApiState {
    store: GroupCommitStore,
    /// Checks deployed components (not interruptible: it never runs one).
    runtime: Arc<Runtime>,
    /// Set on SIGTERM/SIGINT, as the scheduler starts to drain.
    draining: ShutdownFlag,
    /// Set when the API itself stops.
    stopping: Arc<AtomicBool>,
    /// The OpenAPI document, as served.
    openapi: Bytes,
    metrics: Arc<Metrics>,
}

impl ApiState {
    /// The server is shutting down: long polls answer with what there is,
    /// and writes are refused.
    fn winding_down(&self) -> bool {
        self.draining.load(Ordering::Relaxed) || self.stopping.load(Ordering::Relaxed)
    }

    /// Refuse a write once the server is shutting down: its scheduler no
    /// longer runs what is queued, and its database writer stops with it.
    fn accepting_writes(&self) -> Result<(), ApiError> {
        if self.winding_down() {
            Err(ApiError::shutting_down())
        } else {
            Ok(())
        }
    }
}

/// How the API listens.
#[derive(Debug)]
pub struct ApiConfig {
    /// Bound already: a port that is taken is refused with the rest,
    /// before anything else is opened.
    listener: std::net::TcpListener,
    /// Where it listens (the port the system picked, for `:0`).
    addr: SocketAddr,
    /// Required as `Authorization: Bearer <token>` on every request.
    pub token: Option<String>,
    /// Where compiled components are kept when checking deployments.
    pub cache: Option<ComponentCache>,
}

/// Why the API could not start.
#[derive(Debug, thiserror::Error)]
pub enum ApiStartError {
    #[error("--listen {listen}: {reason} (expected HOST:PORT, e.g. 127.0.0.1:8080)")]
    Address { listen: String, reason: String },
    #[error(
        "refusing to listen on {addr} without a token: it is not a loopback address, so anyone \
         who can reach it could run and cancel workflows; pass --token-file FILE (clients then \
         send `Authorization: Bearer <the file's contents>`), or listen on a loopback address \
         such as 127.0.0.1:{port}",
        port = addr.port()
    )]
    TokenRequired { addr: SocketAddr },
    #[error("cannot read the token file {path}: {reason}")]
    TokenFile { path: PathBuf, reason: String },
    #[error("cannot listen on {addr}: {reason}")]
    Bind { addr: SocketAddr, reason: String },
    #[error("cannot start the HTTP API: {0}")]
    Threads(String),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

impl ApiConfig {
    /// What `serve --listen LISTEN [--token-file FILE]` asks for, checked:
    /// an address that resolves, a token file with a token in it, a token
    /// whenever the address is not a loopback one, and the address bound.
    pub fn new(
        listen: &str,
        token_file: Option<&Path>,
        cache: Option<ComponentCache>,
    ) -> Result<Self, ApiStartError> {
        let address_error = |reason: String| ApiStartError::Address {
            listen: listen.to_owned(),
            reason,
        };
        let addr = listen
            .to_socket_addrs()
            .map_err(|e| address_error(e.to_string()))?
            .next()
            .ok_or_else(|| address_error("it names no address".to_owned()))?;
        let token = token_file.map(read_token).transpose()?;
        if token.is_none() && !addr.ip().is_loopback() {
            return Err(ApiStartError::TokenRequired { addr });
        }
        let bind_error = |e: std::io::Error| ApiStartError::Bind {
            addr,
            reason: e.to_string(),
        };
        let listener = std::net::TcpListener::bind(addr).map_err(bind_error)?;
        listener.set_nonblocking(true).map_err(bind_error)?;
        let addr = listener.local_addr().map_err(bind_error)?;
        Ok(Self {
            listener,
            addr,
            token,
            cache,
        })
    }
}

/// The token in `path`: its contents without surrounding white space.
pub fn read_token(path: &Path) -> Result<String, ApiStartError> {
    let failed = |reason: String| ApiStartError::TokenFile {
        path: path.to_owned(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| failed(e.to_string()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(failed("it is empty".to_owned()));
    }
    if token.chars().any(|c| !c.is_ascii_graphic()) {
        return Err(failed(
            "a token is printable ASCII without spaces (it is sent in an HTTP header)".to_owned(),
        ));
    }
    Ok(token.to_owned())
}

/// The API, serving until [`ApiServer::shutdown`].
pub struct ApiServer {
    addr: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    stopping: Arc<AtomicBool>,
    /// Outlives the runtime (fields drop after [`ApiServer`]'s `drop`):
    /// the last handle on the store closes its PostgreSQL connections,
    /// whose synchronous client runs a runtime of its own for that, which
    /// cannot start inside the API's.
    _store: GroupCommitStore,
}

/// Serve the API on `store` at `config`'s address, on threads of its own.
/// Logs `listening addr=HOST:PORT` (the port the system picked, for `:0`).
/// Once `shutdown` is set (the scheduler's flag), writes are refused with
/// 503 and long polls answer at once; reads go on until
/// [`ApiServer::shutdown`].
/// `GET /metrics` renders `metrics`.
pub fn start(
    store: GroupCommitStore,
    config: ApiConfig,
    shutdown: ShutdownFlag,
    metrics: Arc<Metrics>,
) -> Result<ApiServer, ApiStartError> {
    let runtime = Runtime::new(RuntimeConfig {
        interruptible: false,
        cache: config.cache,
        echo_output: false,
        pooled_runs: None,
    })?;
    let (listener, addr) = (config.listener, config.addr);
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("api")
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| ApiStartError::Threads(e.to_string()))?;
    let stopping = Arc::new(AtomicBool::new(false));
    let (router, document) = routes();
    let openapi = document
        .to_json()
        .map_err(|e| ApiStartError::Threads(format!("cannot write the OpenAPI document: {e}")))?;
    let state = ApiState {
        store: store.clone(),
        runtime: Arc::new(runtime),
        draining: shutdown,
        stopping: Arc::clone(&stopping),
        openapi: Bytes::from(openapi),
        metrics,
    };
    let token = config.token.map(Arc::<str>::from);
    // Prometheus's text format, not JSON: outside the OpenAPI document.
    let app = router
        .route("/metrics", axum::routing::get(handlers::metrics))
        .fallback(handlers::not_found)
        .layer(middleware::from_fn_with_state(token.clone(), require_token))
        // After the token layer: the console's files need none.
        .merge(console::routes())
        .layer(middleware::from_fn_with_state(
            token.is_some(),
            same_origin_only,
        ))
        .layer(middleware::from_fn(json_errors))
        .with_state(state);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = {
        let _entered = tokio.enter();
        let listener = tokio::net::TcpListener::from_std(listener)
            .map_err(|e| ApiStartError::Bind {
                addr,
                reason: e.to_string(),
            })?
            .tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
        tokio.spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
        })
    };
    tracing::info!(%addr, token_required = token.is_some(), "listening");
    Ok(ApiServer {
        addr,
        runtime: Some(tokio),
        server: Some(server),
        stop: Some(stop),
        stopping,
        _store: store,
    })
}

impl ApiServer {
    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stop accepting, let requests in flight finish (long polls answer at
    /// once) for up to [`SHUTDOWN_GRACE`], then stop the threads.
    pub fn shutdown(mut self) {
        self.stop_serving();
    }

    fn stop_serving(&mut self) {
        let Some(runtime) = self.runtime.take() else {
            return;
        };
        self.stopping.store(true, Ordering::Relaxed);
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            match runtime.block_on(async { tokio::time::timeout(SHUTDOWN_GRACE, server).await }) {
                Ok(Ok(Ok(()))) => tracing::info!("HTTP API stopped"),
                Ok(Ok(Err(error))) => tracing::warn!(%error, "HTTP API stopped with an error"),
                Ok(Err(error)) => tracing::warn!(%error, "HTTP API stopped with an error"),
                Err(_) => tracing::warn!(
                    grace = ?SHUTDOWN_GRACE,
                    "HTTP API: requests still in flight after the grace are dropped"
                ),
            }
        }
        runtime.shutdown_timeout(Duration::from_secs(1));
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop_serving();
    }
}

/// The API's routes (state still to be given) and its OpenAPI document,
/// made from the same list of handlers.
fn routes() -> (Router<ApiState>, utoipa::openapi::OpenApi) {
    let (router, mut document) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(
            routes!(handlers::submit_workflow, handlers::list_workflows)
                .layer(DefaultBodyLimit::max(SUBMIT_BODY_LIMIT)),
        )
        .routes(routes!(handlers::get_workflow))
        .routes(routes!(handlers::workflow_counts))
        .routes(routes!(handlers::workflow_steps))
        .routes(routes!(handlers::workflow_logs))
        .routes(routes!(handlers::workflow_result))
        .routes(routes!(handlers::cancel_workflow))
        .routes(routes!(handlers::fork_workflow).layer(DefaultBodyLimit::max(SUBMIT_BODY_LIMIT)))
        .routes(routes!(handlers::send_signal).layer(DefaultBodyLimit::max(SUBMIT_BODY_LIMIT)))
        .routes(routes!(handlers::published_event))
        .routes(
            routes!(handlers::deploy, handlers::list_deployments)
                .layer(DefaultBodyLimit::max(DEPLOY_BODY_LIMIT)),
        )
        .routes(
            routes!(handlers::list_schedules, handlers::add_schedule)
                .layer(DefaultBodyLimit::max(SUBMIT_BODY_LIMIT)),
        )
        .routes(routes!(handlers::remove_schedule))
        .routes(routes!(handlers::health))
        .routes(routes!(handlers::openapi))
        .split_for_parts();
    add_common_responses(&mut document);
    (router, document)
}

/// The OpenAPI 3 document of the API, as `GET /v1/openapi.json` serves it.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    routes().1
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "durable-host",
        description = "Submit, follow and cancel durable workflows, and deploy workflow \
            components, on a `durable-host serve --listen ADDR`. Every error is \
            `{\"error\": {\"message\": ..., \"hint\": ...}}`. When the server was started with \
            `--token-file`, every request needs `Authorization: Bearer <token>`."
    ),
    tags(
        (name = "workflows", description = "Submit workflows and follow them"),
        (name = "deployments", description = "Components kept in the database under a name"),
        (name = "schedules", description = "Workflows started on a calendar"),
        (name = "server", description = "The server itself"),
    )
)]
struct ApiDoc;

/// The bearer scheme, and the answers every operation may give besides its
/// own: 401 without the token, 500 when storage fails.
fn add_common_responses(document: &mut utoipa::openapi::OpenApi) {
    let components = document.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(
                    "The contents of the server's --token-file; needed only when it was given",
                ))
                .build(),
        ),
    );
    document.security = Some(vec![
        SecurityRequirement::new("bearer", Vec::<String>::new()),
        SecurityRequirement::default(),
    ]);
    let error = |description: &str| {
        RefOr::T(
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    utoipa::openapi::ContentBuilder::new()
                        .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                            "ErrorBody",
                        ))))
                        .build(),
                )
                .build(),
        )
    };
    for item in document.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.post,
            &mut item.put,
            &mut item.delete,
            &mut item.patch,
        ];
        for operation in operations.into_iter().flatten() {
            let responses = &mut operation.responses.responses;
            responses.entry("401".to_owned()).or_insert_with(|| {
                error("The server needs a bearer token, and none or another was sent")
            });
            responses
                .entry("500".to_owned())
                .or_insert_with(|| error("Storage failed; the message says how"));
        }
    }
}

/// Refuse a request without the server's bearer token, when it has one.
async fn require_token(
    State(token): State<Option<Arc<str>>>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(token) = token {
        let sent = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| {
                let (scheme, credentials) = value.trim().split_once(' ')?;
                scheme
                    .eq_ignore_ascii_case("bearer")
                    .then(|| credentials.trim())
            });
        match sent {
            None => {
                return ApiError::unauthorized(
                    "this server needs a bearer token: send `Authorization: Bearer TOKEN`",
                )
                .into_response();
            }
            Some(sent) if !same_secret(sent.as_bytes(), token.as_bytes()) => {
                return ApiError::unauthorized("the bearer token is not this server's")
                    .into_response();
            }
            Some(_) => {}
        }
    }
    next.run(request).await
}

/// Refuse what a web page from another site could make a browser send:
/// a change (any method but GET and HEAD) that the browser marks as
/// cross-site or that comes with another origin, and, on a server without
/// a token, any request whose `Host` is a name other than `localhost` (a
/// page whose own name was pointed at this server: DNS rebinding).
/// Clients other than browsers send neither header and pass.
async fn same_origin_only(
    State(token_required): State<bool>,
    request: Request,
    next: Next,
) -> Response {
    let headers = request.headers();
    let text = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let host = text(header::HOST);
    if !token_required
        && let Some(host) = host
        && !is_address(host)
    {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "Host `{host}` is not an address of this server: without a token, it answers \
                 only requests to an IP address or localhost (a guard against DNS rebinding)"
            ),
            Some("open http://127.0.0.1:PORT/ (or localhost), or start serve with --token-file"),
        )
        .into_response();
    }
    let changes = !matches!(*request.method(), Method::GET | Method::HEAD);
    let cross_site = matches!(
        text(HeaderName::from_static("sec-fetch-site")),
        Some("cross-site" | "same-site")
    );
    let other_origin = text(header::ORIGIN).is_some_and(|origin| {
        origin.split_once("://").map(|(_, authority)| authority) != host.or(Some(""))
    });
    if changes && (cross_site || other_origin) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "a page from another site cannot change workflows, deployments or schedules here"
                .to_owned(),
            Some("send the request from the console on this server, or from a client that is not a browser"),
        )
        .into_response();
    }
    next.run(request).await
}

/// `host` (a `Host` header, with or without a port) names an IP address or
/// `localhost`.
fn is_address(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        // [::1]:8080
        Some(rest) => rest.split_once(']').map_or("", |(name, _)| name),
        None => host.rsplit_once(':').map_or(host, |(name, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                name
            } else {
                host
            }
        }),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()
}

/// Compare without stopping at the first difference, so that the time
/// taken tells nothing of how much of a guess was right.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// Turn an error answer that is not ours (the router's 405, an extractor's
/// refusal) into our JSON error, keeping its status; log each request at
/// debug level.
async fn json_errors(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    let status = response.status();
    tracing::debug!(
        %method,
        path,
        status = status.as_u16(),
        ms = started.elapsed().as_millis() as u64,
        "request"
    );
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json || !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let (parts, body) = response.into_parts();
    let allow = parts.headers.get(header::ALLOW).cloned();
    let text = axum::body::to_bytes(body, 64 << 10)
        .await
        .map(|bytes| String::from_utf8_lossy(&bytes).trim().to_owned())
        .unwrap_or_default();
    let error = if status == StatusCode::METHOD_NOT_ALLOWED {
        // The router adds the `Allow` header after this layer.
        ApiError {
            status,
            message: format!("{method} is not allowed on {path}"),
            hint: Some(
                "the Allow header lists the methods it takes; GET /v1/openapi.json documents \
                 every endpoint"
                    .to_owned(),
            ),
        }
    } else {
        let message = if text.is_empty() {
            status.canonical_reason().unwrap_or("error").to_owned()
        } else {
            text
        };
        ApiError {
            status,
            message,
            hint: None,
        }
    };
    let mut answer = error.into_response();
    if let Some(allow) = allow {
        answer.headers_mut().insert(header::ALLOW, allow);
    }
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_that_are_addresses() {
        for host in [
            "127.0.0.1",
            "127.0.0.1:8080",
            "[::1]:8080",
            "localhost:1",
            "LOCALHOST",
        ] {
            assert!(is_address(host), "{host}");
        }
        for host in [
            "evil.example",
            "evil.example:8080",
            "127.0.0.1.nip.io:80",
            "[::1",
        ] {
            assert!(!is_address(host), "{host}");
        }
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"abcd"));
    }

    #[test]
    fn a_token_is_required_off_loopback() {
        assert!(ApiConfig::new("127.0.0.1:0", None, None).is_ok());
        assert!(ApiConfig::new("[::1]:0", None, None).is_ok());
        assert!(ApiConfig::new("localhost:0", None, None).is_ok());
        let refused = ApiConfig::new("0.0.0.0:8080", None, None).unwrap_err();
        assert!(
            matches!(refused, ApiStartError::TokenRequired { .. }),
            "{refused}"
        );
        assert!(refused.to_string().contains("--token-file"), "{refused}");
        assert!(matches!(
            ApiConfig::new("8080", None, None).unwrap_err(),
            ApiStartError::Address { .. }
        ));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "  s3cret\n").unwrap();
        let config = ApiConfig::new("0.0.0.0:8080", Some(&file), None).unwrap();
        assert_eq!(config.token.as_deref(), Some("s3cret"));
        std::fs::write(&file, "\n").unwrap();
        assert!(matches!(
            ApiConfig::new("127.0.0.1:0", Some(&file), None).unwrap_err(),
            ApiStartError::TokenFile { .. }
        ));
    }

    #[test]
    fn the_document_lists_every_endpoint() {
        let document = openapi_document();
        let mut paths: Vec<&str> = document.paths.paths.keys().map(String::as_str).collect();
        paths.sort_unstable();
        assert_eq!(
            paths,
            [
                "/v1/deployments",
                "/v1/health",
                "/v1/openapi.json",
                "/v1/schedules",
                "/v1/schedules/{name}",
                "/v1/workflow-counts",
                "/v1/workflows",
                "/v1/workflows/{id}",
                "/v1/workflows/{id}/cancel",
                "/v1/workflows/{id}/events/{key}",
                "/v1/workflows/{id}/fork",
                "/v1/workflows/{id}/logs",
                "/v1/workflows/{id}/result",
                "/v1/workflows/{id}/signals/{name}",
                "/v1/workflows/{id}/steps",
            ]
        );
        let json = document.to_json().unwrap();
        assert!(json.contains("\"openapi\":\"3."), "{json}");
        assert!(json.contains("ErrorBody"));
    }
}
