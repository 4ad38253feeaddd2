//! The web console: a page, a script and a style sheet, embedded in the
//! binary and served at `/` beside the API. The console is one more client
//! of the API (`/v1/...`), so this module only hands out the files; it knows
//! nothing of workflows.
//!
//! The files need no token: they hold no data, and the page asks for the
//! token when the API answers 401. Every answer forbids framing (the page
//! has buttons that cancel workflows) and loading anything from elsewhere.

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::IntoResponse;
use axum::routing::get;

const INDEX: &str = include_str!("index.html");
const SCRIPT: &str = include_str!("console.js");
const STYLE: &str = include_str!("console.css");
const ICON: &str = include_str!("icon.svg");

/// The console's routes: `/` and its files under `/console/`.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/console/console.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/console/console.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
        .route(
            "/console/icon.svg",
            get(|| async { asset("image/svg+xml", ICON) }),
        )
}

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            // Served from the binary: a new binary may bring new files.
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::CONTENT_SECURITY_POLICY,
                // Bars are placed with inline style attributes.
                HeaderValue::from_static(
                    "default-src 'self'; style-src 'self' 'unsafe-inline'; \
                     frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
                ),
            ),
            (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        body,
    )
}
