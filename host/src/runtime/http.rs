//! Outbound HTTP (`wasi:http/outgoing-handler`): what a guest may call, and
//! the record of what it called.
//!
//! A request goes out only to a destination the workflow was granted
//! (`--allow-http HOST[:PORT]`, recorded with its other grants) and only
//! while a step executes: a request made by workflow code between steps
//! would not be replayed, so the next run would see another answer. Each
//! request, refused or sent, becomes a line of the workflow's log with the
//! step it was made in, so that `history` shows what a step called; its URL
//! is written without the query and the user, where secrets tend to go.
//!
//! Sending itself is wasmtime-wasi-http's client (hyper, rustls for https);
//! this module decides, bounds the waits and records, and knows of steps
//! only whether one is executing and its key ([`Caller`]).

use std::fmt;
use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use wasmtime::StoreContextMut;
use wasmtime::component::{Linker, Resource, ResourceTable};
use wasmtime_wasi_http::p2::HttpResult;
use wasmtime_wasi_http::p2::bindings::{self, http::outgoing_handler, http::types};
use wasmtime_wasi_http::p2::types::{HostFutureIncomingResponse, HostOutgoingRequest};
use wasmtime_wasi_http::{
    Error as HttpError, RequestOptions, WasiBody, WasiHttp, WasiHttpCtx, WasiHttpCtxView,
    WasiHttpHooks, WasiHttpView,
};

use super::guest_output::GuestOutput;
use super::host::HostState;
use super::limits::Deadline;
use crate::store::{LogStream, StepKey};

/// A destination a workflow may send requests to: every port of a host,
/// or one port of it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HttpDestination {
    /// Lower case; an IPv6 address in brackets, as URLs write it.
    host: String,
    port: Option<u16>,
}

/// Why `--allow-http` could not read a destination.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadDestination(String);

impl FromStr for HttpDestination {
    type Err = BadDestination;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad =
            |why: &str| BadDestination(format!("{why}, e.g. api.example.com or 127.0.0.1:8080"));
        if text.contains("://") {
            return Err(bad("give the host without a scheme"));
        }
        if text.contains(['/', '?', '#', '@']) {
            return Err(bad("give a host and optionally a port, without a path"));
        }
        let (host, port) = match text.rsplit_once(':') {
            // `::1` without brackets is an address, not a port.
            Some((host, port)) if !host.contains(':') || host.ends_with(']') => (host, Some(port)),
            _ => (text, None),
        };
        let port = match port {
            None => None,
            Some(port) => match port.parse::<u16>() {
                Ok(port) if port > 0 => Some(port),
                _ => return Err(bad(&format!("{port:?} is not a port"))),
            },
        };
        let host = canonical_host(host);
        let valid = if let Some(address) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'))
        {
            address.parse::<std::net::Ipv6Addr>().is_ok()
        } else {
            !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        };
        if !valid {
            return Err(bad(&format!("{host:?} is not a host name or address")));
        }
        Ok(Self { host, port })
    }
}

impl TryFrom<String> for HttpDestination {
    type Error = BadDestination;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<HttpDestination> for String {
    fn from(destination: HttpDestination) -> Self {
        destination.to_string()
    }
}

impl fmt::Display for HttpDestination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            Some(port) => write!(f, "{}:{port}", self.host),
            None => f.write_str(&self.host),
        }
    }
}

impl HttpDestination {
    fn allows(&self, host: &str, port: u16) -> bool {
        self.host == canonical_host(host) && self.port.is_none_or(|p| p == port)
    }
}

/// A host as grants and URLs are compared: lower case, without the final
/// dot of a fully qualified name, an IPv6 address in its shortest form.
fn canonical_host(host: &str) -> String {
    let host = host.strip_suffix('.').unwrap_or(host);
    let ipv6 = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .and_then(|h| h.parse::<std::net::Ipv6Addr>().ok());
    match ipv6 {
        Some(address) => format!("[{address}]"),
        None => host.to_ascii_lowercase(),
    }
}

/// Where a request may be made from.
pub(super) enum Caller {
    /// Workflow code between steps: no request.
    BetweenSteps,
    /// A step's body: its key, where the instance knows it (a branch's
    /// lines get theirs from the branch runner).
    Step(Option<StepKey>),
}

/// The `wasi:http` state of one instance.
pub(super) struct OutboundHttp {
    ctx: WasiHttpCtx,
    gate: HttpGate,
    sender: RecordingSender,
}

impl OutboundHttp {
    /// Requests to `allowed` only, noted in `log`, given up at `deadline`.
    pub(super) fn new(
        allowed: &[HttpDestination],
        log: GuestOutput,
        deadline: Option<Deadline>,
    ) -> Self {
        Self {
            ctx: WasiHttpCtx::new(),
            gate: HttpGate {
                allowed: allowed.into(),
                log: log.clone(),
            },
            sender: RecordingSender {
                log,
                deadline,
                step: None,
            },
        }
    }

    /// What wasi:http's calls work on.
    pub(super) fn view<'a>(&'a mut self, table: &'a mut ResourceTable) -> WasiHttpCtxView<'a> {
        WasiHttpCtxView {
            ctx: &mut self.ctx,
            table,
            hooks: &mut self.sender,
        }
    }

    /// What `outgoing-handler.handle` works on, made by `caller`.
    pub(super) fn gated<'a>(
        &'a mut self,
        table: &'a mut ResourceTable,
        caller: Caller,
    ) -> GatedHttpView<'a> {
        GatedHttpView {
            caller,
            gate: &self.gate,
            sender: &mut self.sender,
            ctx: &mut self.ctx,
            table,
        }
    }
}

/// Where `wasi:http`'s `handle` lives: the version wasmtime-wasi-http 48
/// implements (its `wit/deps/http.wit`, also what `wstd` imports). A guest
/// built against any 0.2 release links to it by semver, and it is the only
/// `handle` this linker has: no import reaches the client around the gate.
const OUTGOING_HANDLER: &str = "wasi:http/outgoing-handler@0.2.12";

/// Add `wasi:http` to `linker`: its types as wasmtime-wasi-http has them,
/// its `outgoing-handler` behind the gate.
pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    let options = bindings::LinkOptions::default();
    bindings::sync::http::types::add_to_linker::<_, WasiHttp>(linker, &options.into(), |state| {
        state.http()
    })?;
    linker.instance(OUTGOING_HANDLER)?.func_wrap(
        "handle",
        |mut store: StoreContextMut<'_, HostState>,
         (request, options): (
            Resource<HostOutgoingRequest>,
            Option<Resource<RequestOptions>>,
        )| {
            let mut gated = store.data_mut().gated_http();
            match gated.handle(request, options) {
                Ok(response) => Ok((Ok(response),)),
                // An error code for the guest, or a trap.
                Err(error) => Ok((Err(error.downcast()?),)),
            }
        },
    )
}

/// `outgoing-handler.handle` for one call: refuses at once, before any of
/// the body is written, what may not go out; hands the rest to
/// wasmtime-wasi-http.
pub(super) struct GatedHttpView<'a> {
    caller: Caller,
    gate: &'a HttpGate,
    sender: &'a mut RecordingSender,
    ctx: &'a mut WasiHttpCtx,
    table: &'a mut ResourceTable,
}

impl GatedHttpView<'_> {
    fn handle(
        &mut self,
        request: Resource<HostOutgoingRequest>,
        options: Option<Resource<RequestOptions>>,
    ) -> HttpResult<Resource<HostFutureIncomingResponse>> {
        let outgoing = self.table.get(&request)?;
        let method = method_name(&outgoing.method).to_owned();
        let (step, refused) = match (&self.caller, request_uri(outgoing)) {
            (Caller::BetweenSteps, uri) => (None, Some((uri, BETWEEN_STEPS.to_owned()))),
            (Caller::Step(step), None) => {
                let why = "its URL is not valid (scheme, host and path)".to_owned();
                (step.clone(), Some((None, why)))
            }
            (Caller::Step(step), Some(uri)) => (
                step.clone(),
                self.gate.refusal(&uri).map(|why| (Some(uri), why)),
            ),
        };
        if let Some((uri, why)) = refused {
            let url = uri.as_ref().map_or_else(|| "(no URL)".to_owned(), redacted);
            self.gate.log.record(
                LogStream::Http,
                step,
                format!("{method} {url} refused: {why}"),
            );
            self.table.delete(request)?;
            return Err(types::ErrorCode::HttpRequestDenied.into());
        }
        // Noted with the step that made it, even if its answer is read later.
        self.sender.step = step;
        let mut http = WasiHttpCtxView {
            ctx: self.ctx,
            table: self.table,
            hooks: self.sender,
        };
        outgoing_handler::Host::handle(&mut http, request, options)
    }
}

/// Why a request from workflow code is refused.
const BETWEEN_STEPS: &str = "outbound HTTP is allowed only while a step executes (the answer of \
    a request made between steps would not be replayed): make the request in a step";

/// Decides on each request.
struct HttpGate {
    allowed: Arc<[HttpDestination]>,
    log: GuestOutput,
}

impl HttpGate {
    /// Why a step may not call `uri`, if it may not.
    fn refusal(&self, uri: &http::Uri) -> Option<String> {
        let host = uri.host().unwrap_or_default();
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            return Some("a URL with a user name or password is not sent".to_owned());
        }
        let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
            Some("http") => 80,
            _ => 443,
        });
        if self.allowed.iter().any(|d| d.allows(host, port)) {
            return None;
        }
        let granted = if self.allowed.is_empty() {
            "the workflow was granted no HTTP destinations".to_owned()
        } else {
            let list: Vec<String> = self.allowed.iter().map(ToString::to_string).collect();
            format!("the workflow may call {}", list.join(", "))
        };
        let host = canonical_host(host);
        Some(format!(
            "{host}:{port} is not allowed ({granted}); grant it with --allow-http {host}:{port} \
             (or --allow-http {host} for every port)"
        ))
    }
}

/// How long a request may wait to connect, for its answer to begin, and
/// between the pieces of its body, when the guest says nothing shorter:
/// wasmtime-wasi-http's own default, 10 minutes, outlives most runs.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Sends what the gate let through, and notes each answer (or failure).
struct RecordingSender {
    log: GuestOutput,
    /// The run's `--timeout`: no request waits past it.
    deadline: Option<Deadline>,
    /// The step of the request being handed over.
    step: Option<StepKey>,
}

type Connection = Box<dyn Future<Output = Result<(), HttpError>> + Send>;
type Response =
    Box<dyn Future<Output = Result<(http::Response<WasiBody>, Connection), HttpError>> + Send>;

impl WasiHttpHooks for RecordingSender {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _request_errors: Connection,
    ) -> Response {
        let call = format!("{} {}", request.method(), redacted(request.uri()));
        let (log, step) = (self.log.clone(), self.step.take());
        let left = self.deadline.as_ref().map(Deadline::remaining);
        let bound = |given: Option<Duration>| {
            let timeout = given.unwrap_or(REQUEST_TIMEOUT);
            Some(left.map_or(timeout, |left| timeout.min(left)))
        };
        let given = options.unwrap_or_default();
        let options = RequestOptions {
            connect_timeout: bound(given.connect_timeout),
            first_byte_timeout: bound(given.first_byte_timeout),
            between_bytes_timeout: bound(given.between_bytes_timeout),
        };
        Box::new(async move {
            let started = Instant::now();
            let sent = wasmtime_wasi_http::default_send_request(request, Some(options)).await;
            let ms = started.elapsed().as_millis();
            let line = match &sent {
                Ok((response, _)) => format!("{call}: {} in {ms} ms", response.status().as_u16()),
                Err(error) => format!("{call} failed after {ms} ms: {error}"),
            };
            log.record(LogStream::Http, step, line);
            let (response, connection) = sent?;
            Ok((
                response.map(BodyExt::boxed_unsync),
                Box::new(connection) as Connection,
            ))
        })
    }

    // A connection that breaks off is worth another attempt: say so rather
    // than the protocol error every hyper failure otherwise becomes.
    fn p2_error_from_hyper(&mut self, error: &hyper::Error) -> types::ErrorCode {
        if error.is_incomplete_message() || error.is_closed() || error.is_canceled() {
            types::ErrorCode::ConnectionTerminated
        } else {
            types::ErrorCode::HttpProtocolError
        }
    }
}

/// The URL `request` goes to, as the handler will build it (no scheme:
/// https).
fn request_uri(request: &HostOutgoingRequest) -> Option<http::Uri> {
    let scheme = match &request.scheme {
        Some(types::Scheme::Http) => "http",
        Some(types::Scheme::Https) | None => "https",
        Some(types::Scheme::Other(other)) => other.as_str(),
    };
    http::Uri::builder()
        .scheme(scheme)
        .authority(request.authority.as_deref().unwrap_or_default())
        .path_and_query(request.path_with_query.as_deref().unwrap_or("/"))
        .build()
        .ok()
}

fn method_name(method: &types::Method) -> &str {
    use types::Method;
    match method {
        Method::Get => "GET",
        Method::Head => "HEAD",
        Method::Post => "POST",
        Method::Put => "PUT",
        Method::Delete => "DELETE",
        Method::Connect => "CONNECT",
        Method::Options => "OPTIONS",
        Method::Trace => "TRACE",
        Method::Patch => "PATCH",
        Method::Other(other) => other,
    }
}

/// `uri` as the log shows it: no user, no query (`?...` says there was one).
fn redacted(uri: &http::Uri) -> String {
    let mut shown = format!(
        "{}://{}",
        uri.scheme_str().unwrap_or("https"),
        uri.host().unwrap_or_default()
    );
    if let Some(port) = uri.port_u16() {
        shown.push_str(&format!(":{port}"));
    }
    shown.push_str(uri.path());
    if uri.query().is_some() {
        shown.push_str("?...");
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::*;

    fn destination(text: &str) -> HttpDestination {
        text.parse().unwrap()
    }

    #[test]
    fn destinations_are_hosts_with_an_optional_port() {
        assert_eq!(
            destination("API.example.com").to_string(),
            "api.example.com"
        );
        assert_eq!(destination("127.0.0.1:8080").to_string(), "127.0.0.1:8080");
        assert_eq!(destination("[::1]:80").to_string(), "[::1]:80");
        assert_eq!(destination("[::1]").to_string(), "[::1]");
        for bad in [
            "http://api.example.com",
            "api.example.com/v1",
            "host:0",
            "host:http",
            "",
            ":80",
            "::1",
            "user@host",
            "bad host",
        ] {
            assert!(bad.parse::<HttpDestination>().is_err(), "{bad:?} parsed");
        }
        let error = "http://x".parse::<HttpDestination>().unwrap_err();
        assert_eq!(
            error.to_string(),
            "give the host without a scheme, e.g. api.example.com or 127.0.0.1:8080"
        );
    }

    #[test]
    fn a_host_allows_every_port_and_a_port_only_itself() {
        let gate = HttpGate {
            allowed: vec![
                destination("api.example.com"),
                destination("127.0.0.1:8080"),
            ]
            .into(),
            log: GuestOutput::new(false),
        };
        let refused = |uri: &str| gate.refusal(&uri.parse().unwrap());
        assert_eq!(refused("https://API.example.com/charge"), None);
        assert_eq!(refused("http://api.example.com:9000/"), None);
        assert_eq!(refused("http://127.0.0.1:8080/x"), None);
        assert_eq!(
            refused("http://127.0.0.1:8081/x").unwrap(),
            "127.0.0.1:8081 is not allowed (the workflow may call api.example.com, \
             127.0.0.1:8080); grant it with --allow-http 127.0.0.1:8081 (or --allow-http \
             127.0.0.1 for every port)"
        );
        assert!(
            refused("https://evil.example/")
                .unwrap()
                .starts_with("evil.example:443 ")
        );
        // A suffix is another host.
        assert!(refused("https://evilapi.example.com/").is_some());
        // A fully qualified name is the same host.
        assert_eq!(refused("https://api.example.com./x"), None);
        // The user part would hide the host from a careless reader.
        assert!(
            refused("https://u:p@api.example.com/")
                .unwrap()
                .contains("user name")
        );
    }

    #[test]
    fn hosts_compare_in_one_spelling() {
        assert_eq!(
            destination("API.Example.com.").to_string(),
            "api.example.com"
        );
        assert_eq!(destination("[0:0::1]:8080").to_string(), "[::1]:8080");
        assert!(destination("[::1]").allows("[0::1]", 80));
        assert!(destination("localhost").allows("LOCALHOST.", 3000));
        assert!(!destination("localhost:3000").allows("localhost", 3001));
    }

    #[test]
    fn nothing_is_allowed_without_a_grant() {
        let gate = HttpGate {
            allowed: Vec::new().into(),
            log: GuestOutput::new(false),
        };
        let uri = "http://127.0.0.1:1/".parse().unwrap();
        assert!(
            gate.refusal(&uri)
                .unwrap()
                .contains("the workflow was granted no HTTP destinations")
        );
    }

    #[test]
    fn logged_urls_lose_their_query_and_user() {
        let uri = "https://user:secret@api.example.com:8443/v1/charge?token=s3cret"
            .parse()
            .unwrap();
        assert_eq!(redacted(&uri), "https://api.example.com:8443/v1/charge?...");
        assert_eq!(
            redacted(&"http://127.0.0.1/".parse().unwrap()),
            "http://127.0.0.1/"
        );
    }
}
