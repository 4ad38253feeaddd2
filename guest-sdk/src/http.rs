//! Outbound HTTP from step bodies (the `http` feature).
//!
//! ```no_run
//! # use durable_sdk::{Context, Error, http};
//! # #[derive(serde::Serialize, serde::Deserialize)] struct Charge { id: String }
//! fn pay(ctx: &Context, cents: u64) -> Result<Charge, Error> {
//!     ctx.step("charge", || {
//!         http::post("http://127.0.0.1:8088/charges")
//!             .json(&serde_json::json!({ "amount_cents": cents }))?
//!             .send()?
//!             .error_for_status()?
//!             .json()
//!     })
//! }
//! ```
//!
//! The host sends a request only while a step executes and only to the
//! destinations the workflow was granted (`--allow-http HOST[:PORT]`); it
//! records each request's method, URL (without its query) and status with
//! the step. A completed step is replayed from its record, so its requests
//! are never sent again; a step interrupted by a crash runs again and sends
//! them again. Every request therefore carries an `Idempotency-Key` header,
//! so that a service that honours it recognises the repeat: the step's
//! idempotency key (see [`crate::StepRun`]) for its first request, and
//! `KEY/2`, `KEY/3`... for the next ones, the same on every attempt of the
//! step (a service may refuse one key used for two different requests).
//!
//! Built on `wstd`'s `wasi:http` client; requests have timeouts
//! ([`Client::connect_timeout`], [`Client::response_timeout`]).

use std::cell::RefCell;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use wstd::http::{Body, ErrorCode, Method, Request};

use crate::{Error, StepRun, current_step};

/// The header that carries the step's idempotency key.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Sends requests with its timeouts. [`get`], [`post`] and the others use
/// [`Client::new`]'s.
#[derive(Debug, Clone)]
pub struct Client {
    connect_timeout: Duration,
    response_timeout: Duration,
}

impl Default for Client {
    fn default() -> Self {
        Self::new()
    }
}

impl Client {
    /// 10 s to connect; 30 s for the response to begin, and between the
    /// pieces of its body.
    pub fn new() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            response_timeout: Duration::from_secs(30),
        }
    }

    /// How long to wait for the connection.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long to wait for the response to begin, and then between the
    /// pieces of its body.
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// A request of any method.
    pub fn request(&self, method: Method, url: &str) -> RequestBuilder {
        RequestBuilder {
            client: self.clone(),
            method,
            url: url.to_owned(),
            headers: Vec::new(),
            body: Vec::new(),
            idempotency_key: true,
        }
    }

    pub fn get(&self, url: &str) -> RequestBuilder {
        self.request(Method::GET, url)
    }

    pub fn post(&self, url: &str) -> RequestBuilder {
        self.request(Method::POST, url)
    }

    pub fn put(&self, url: &str) -> RequestBuilder {
        self.request(Method::PUT, url)
    }

    pub fn patch(&self, url: &str) -> RequestBuilder {
        self.request(Method::PATCH, url)
    }

    pub fn delete(&self, url: &str) -> RequestBuilder {
        self.request(Method::DELETE, url)
    }
}

/// A GET request with the default [`Client`].
pub fn get(url: &str) -> RequestBuilder {
    Client::new().get(url)
}

/// A POST request with the default [`Client`].
pub fn post(url: &str) -> RequestBuilder {
    Client::new().post(url)
}

/// A PUT request with the default [`Client`].
pub fn put(url: &str) -> RequestBuilder {
    Client::new().put(url)
}

/// A PATCH request with the default [`Client`].
pub fn patch(url: &str) -> RequestBuilder {
    Client::new().patch(url)
}

/// A DELETE request with the default [`Client`].
pub fn delete(url: &str) -> RequestBuilder {
    Client::new().delete(url)
}

/// A request being put together; [`RequestBuilder::send`] sends it.
#[derive(Debug)]
#[must_use = "a request does nothing until it is sent"]
pub struct RequestBuilder {
    client: Client,
    method: Method,
    url: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    idempotency_key: bool,
}

impl RequestBuilder {
    /// Add a header (one given as `Idempotency-Key` replaces the step's).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Send `value` as JSON, with its content type (unless one is given).
    pub fn json<T: Serialize + ?Sized>(self, value: &T) -> Result<Self, Error> {
        let body = serde_json::to_vec(value)
            .map_err(|e| Error::permanent(format!("cannot encode the request body: {e}")))?;
        let typed = self.has_header("content-type");
        let with_type = if typed {
            self
        } else {
            self.header("content-type", "application/json")
        };
        Ok(with_type.body(body))
    }

    fn has_header(&self, name: &str) -> bool {
        self.headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(name))
    }

    /// Send these bytes as the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// Leave out the `Idempotency-Key` header.
    pub fn without_idempotency_key(mut self) -> Self {
        self.idempotency_key = false;
        self
    }

    /// Send the request and read the whole response.
    ///
    /// Fails with an [`Error::permanent`] outside a step, for a destination
    /// the workflow was not granted and for a URL that does not parse;
    /// with a plain [`Error`] (which a [`crate::RetryPolicy`] retries) when
    /// the service cannot be reached or does not answer in time. A response
    /// of any status is `Ok`: see [`Response::error_for_status`].
    pub fn send(self) -> Result<Response, Error> {
        let call = format!("{} {}", self.method, shown(&self.url));
        let Some(step) = current_step() else {
            return Err(Error::permanent(format!(
                "{call} was not sent: outbound HTTP is allowed only inside a step body (the \
                 answer of a request made between steps would not be replayed)"
            )));
        };
        let mut request = Request::builder()
            .method(self.method.clone())
            .uri(&self.url);
        if self.idempotency_key && !self.has_header(IDEMPOTENCY_KEY) {
            request = request.header(IDEMPOTENCY_KEY, next_request_key(&step));
        }
        for (name, value) in &self.headers {
            request = request.header(name, value);
        }
        // Without a length the body would go chunked, which not every
        // service reads.
        if !self.body.is_empty() && !self.has_header("content-length") {
            request = request.header("content-length", self.body.len());
        }
        let request = request
            .body(Body::from(self.body))
            .map_err(|e| Error::permanent(format!("{call} was not sent: {e}")))?;
        let mut client = wstd::http::Client::new();
        client.set_connect_timeout(self.client.connect_timeout);
        client.set_first_byte_timeout(self.client.response_timeout);
        client.set_between_bytes_timeout(self.client.response_timeout);
        let answer = wstd::runtime::block_on(async move {
            let mut response = client.send(request).await?;
            let body = response.body_mut().contents().await?.to_vec();
            Ok::<_, wstd::http::Error>((response, body))
        });
        let (response, body) = answer.map_err(|error| failed(&call, &self.url, error))?;
        Ok(Response {
            call,
            status: response.status().as_u16(),
            headers: response
                .headers()
                .iter()
                .map(|(name, value)| {
                    let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                    (name.as_str().to_owned(), value)
                })
                .collect(),
            body,
        })
    }
}

thread_local! {
    /// The step attempt whose requests are being counted, and how many it
    /// has sent.
    static REQUESTS: RefCell<(String, u32, u32)> = const { RefCell::new((String::new(), 0, 0)) };
}

/// The `Idempotency-Key` of `step`'s next request: its key for the first,
/// `KEY/n` for the n-th, counted afresh on each attempt.
fn next_request_key(step: &StepRun) -> String {
    REQUESTS.with(|requests| {
        let mut requests = requests.borrow_mut();
        if requests.0 != step.key || requests.1 != step.attempt {
            *requests = (step.key.clone(), step.attempt, 0);
        }
        requests.2 += 1;
        match requests.2 {
            1 => step.idempotency_key.clone(),
            n => format!("{}/{n}", step.idempotency_key),
        }
    })
}

/// A request's failure, said so that the step's recorded error explains it.
fn failed(call: &str, url: &str, error: wstd::http::Error) -> Error {
    let Some(code) = error.downcast_ref::<ErrorCode>() else {
        return Error::new(format!("{call} failed: {error:#}"));
    };
    match code {
        ErrorCode::HttpRequestDenied => {
            let destination = url
                .parse::<wstd::http::Uri>()
                .ok()
                .and_then(|uri| {
                    let host = uri.host()?;
                    Some(
                        uri.port_u16()
                            .map_or(host.to_owned(), |port| format!("{host}:{port}")),
                    )
                })
                .unwrap_or_else(|| shown(url));
            Error::permanent(format!(
                "{call} was refused by the host: {destination} is not among the workflow's \
                 HTTP destinations (grant it with --allow-http {destination})"
            ))
        }
        ErrorCode::ConnectionTimeout => Error::new(format!("{call}: no connection in time")),
        ErrorCode::HttpResponseTimeout | ErrorCode::ConnectionReadTimeout => {
            Error::new(format!("{call}: no response in time"))
        }
        ErrorCode::ConnectionRefused => Error::new(format!("{call}: connection refused")),
        ErrorCode::DnsError(_) | ErrorCode::DestinationNotFound => {
            Error::new(format!("{call}: the host name does not resolve"))
        }
        ErrorCode::ConnectionTerminated => Error::new(format!("{call}: the connection broke off")),
        ErrorCode::HttpRequestUriInvalid | ErrorCode::HttpRequestMethodInvalid => {
            Error::permanent(format!("{call}: {code:?}"))
        }
        other => Error::new(format!("{call} failed: {other:?}")),
    }
}

/// A URL for messages: without its query and any user or password (where
/// secrets tend to go).
fn shown(url: &str) -> String {
    let url = url.split(['?', '#']).next().unwrap_or(url);
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    match scheme {
        "" => format!("{host}{path}"),
        scheme => format!("{scheme}://{host}{path}"),
    }
}

/// A response, read whole.
#[derive(Debug, Clone)]
pub struct Response {
    call: String,
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    /// The status code: 200, 404...
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The first value of the header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// The body's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.body
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body decoded from JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_slice(&self.body).map_err(|e| {
            Error::permanent(format!(
                "{}: the response ({}) is not the JSON expected: {e}",
                self.call, self.status
            ))
        })
    }

    /// The response if its status is below 400, else an error with the
    /// status and the start of the body: a plain [`Error`] (retried) for
    /// 408, 409 (the same idempotency key is still being served), 429 and
    /// 5xx, which a later attempt may not meet, an [`Error::permanent`] for
    /// the other 4xx, which it would. Redirects are not followed: a 3xx is
    /// returned as it is.
    pub fn error_for_status(self) -> Result<Self, Error> {
        if self.status < 400 {
            return Ok(self);
        }
        let text = self.text();
        let excerpt: String = text.chars().take(200).collect();
        let message = format!("{} answered {}: {}", self.call, self.status, excerpt.trim());
        Err(match self.status {
            408 | 409 | 429 | 500.. => Error::new(message),
            _ => Error::permanent(message),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_leave_the_query_and_the_user_out() {
        assert_eq!(shown("http://h/p?token=x"), "http://h/p");
        assert_eq!(shown("http://h/p#frag"), "http://h/p");
        assert_eq!(shown("https://u:pw@h:8443/p"), "https://h:8443/p");
        assert_eq!(shown("http://h"), "http://h");
    }

    #[test]
    fn each_request_of_a_step_attempt_has_its_own_key() {
        let step = |attempt| StepRun {
            key: "charge#000001".to_owned(),
            attempt,
            failures: 0,
            idempotency_key: "order-1/charge#000001".to_owned(),
        };
        assert_eq!(next_request_key(&step(1)), "order-1/charge#000001");
        assert_eq!(next_request_key(&step(1)), "order-1/charge#000001/2");
        // The next attempt sends the same keys again.
        assert_eq!(next_request_key(&step(2)), "order-1/charge#000001");
        assert_eq!(next_request_key(&step(2)), "order-1/charge#000001/2");
    }

    fn response(status: u16) -> Response {
        Response {
            call: "POST http://h/charge".to_owned(),
            status,
            headers: vec![("Content-Type".to_owned(), "text/plain".to_owned())],
            body: b"card declined".to_vec(),
        }
    }

    #[test]
    fn client_errors_are_permanent_and_server_errors_retried() {
        assert!(response(201).error_for_status().is_ok());
        let declined = response(402).error_for_status().unwrap_err();
        assert!(declined.is_permanent());
        assert_eq!(
            declined.message(),
            "POST http://h/charge answered 402: card declined"
        );
        for status in [408, 429, 500, 503] {
            assert!(
                !response(status)
                    .error_for_status()
                    .unwrap_err()
                    .is_permanent()
            );
        }
        assert_eq!(response(200).header("content-type"), Some("text/plain"));
    }
}
