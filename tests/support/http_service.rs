//! A real HTTP service on 127.0.0.1 for workflows to call: it keeps every
//! request it receives and answers each with JSON, the same answer again
//! for a repeated `Idempotency-Key`, as a payment provider would. The tests
//! count its calls; `mock-http` serves it for the README's example.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use serde_json::{Value, json};

/// One request as the service received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCall {
    pub method: String,
    /// With its query.
    pub path: String,
    pub idempotency_key: Option<String>,
    pub body: String,
    /// Its idempotency key was seen before: answered as the first time.
    pub repeat: bool,
}

#[derive(Default)]
struct Received {
    calls: Vec<HttpCall>,
    /// Idempotency key to the answer given for it.
    answers: HashMap<String, Value>,
}

/// The service, answering until the process ends.
pub struct HttpService {
    address: String,
    received: Arc<Mutex<Received>>,
}

impl HttpService {
    /// On a free port of 127.0.0.1.
    pub fn start() -> Self {
        Self::bind("127.0.0.1:0", |_| {}).expect("bind 127.0.0.1")
    }

    /// On `address`, telling `seen` of each call as it comes.
    pub fn bind(
        address: &str,
        seen: impl Fn(&HttpCall) + Send + Sync + 'static,
    ) -> io::Result<Self> {
        let listener = TcpListener::bind(address)?;
        let address = listener.local_addr()?.to_string();
        let received = Arc::new(Mutex::new(Received::default()));
        let shared = Arc::clone(&received);
        let seen = Arc::new(seen);
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (shared, seen) = (Arc::clone(&shared), Arc::clone(&seen));
                // A connection of its own for each client (parallel steps),
                // which gives up on one that says nothing for long; one that
                // breaks off is the client's business.
                thread::spawn(move || {
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
                    let _ = serve(stream, &shared, &*seen);
                });
            }
        });
        Ok(Self { address, received })
    }

    /// `127.0.0.1:PORT`, as `--allow-http` takes it.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Every request so far, in the order received.
    pub fn calls(&self) -> Vec<HttpCall> {
        self.received.lock().unwrap().calls.clone()
    }
}

/// Answer the requests of one connection.
fn serve(
    stream: TcpStream,
    received: &Mutex<Received>,
    seen: &(impl Fn(&HttpCall) + ?Sized),
) -> io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line)? == 0 {
            return Ok(());
        }
        let mut parts = request_line.split_whitespace();
        let (method, path) = (
            parts.next().unwrap_or_default().to_owned(),
            parts.next().unwrap_or_default().to_owned(),
        );
        let mut headers = HashMap::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line)?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
            }
        }
        let body = read_body(&mut reader, &headers)?;
        let key = headers.get("idempotency-key").cloned();
        let (call, status, answer) = {
            let mut received = received.lock().unwrap();
            let repeat = key
                .as_ref()
                .is_some_and(|key| received.answers.contains_key(key));
            let n = received.calls.len() + 1;
            let answer = match key.as_ref().and_then(|key| received.answers.get(key)) {
                Some(answer) => answer.clone(),
                None => json!({ "id": format!("{}-{n}", resource(&path)) }),
            };
            if let Some(key) = &key {
                received.answers.insert(key.clone(), answer.clone());
            }
            let call = HttpCall {
                method,
                path: path.clone(),
                idempotency_key: key,
                body: String::from_utf8_lossy(&body).into_owned(),
                repeat,
            };
            received.calls.push(call.clone());
            // `/status/NNN...` answers NNN: a service that fails.
            let status = path
                .strip_prefix("/status/")
                .and_then(|rest| rest.get(..3)?.parse::<u16>().ok())
                .unwrap_or(200);
            (call, status, answer)
        };
        seen(&call);
        let answer = answer.to_string();
        write!(
            writer,
            "HTTP/1.1 {status} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}",
            if status < 400 { "OK" } else { "Error" },
            answer.len()
        )?;
        writer.flush()?;
    }
}

/// The last segment of a path without its query: `charges` of `/v1/charges?x`.
fn resource(path: &str) -> &str {
    let path = path.split('?').next().unwrap_or(path);
    path.rsplit('/').find(|s| !s.is_empty()).unwrap_or("root")
}

fn read_body(reader: &mut impl BufRead, headers: &HashMap<String, String>) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    if let Some(length) = headers.get("content-length") {
        let length: usize = length.parse().unwrap_or(0);
        body.resize(length, 0);
        reader.read_exact(&mut body)?;
    } else if headers
        .get("transfer-encoding")
        .is_some_and(|t| t.eq_ignore_ascii_case("chunked"))
    {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size)?;
            let size = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16)
                .unwrap_or(0);
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk)?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    }
    Ok(body)
}
