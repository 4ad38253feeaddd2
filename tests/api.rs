//! The HTTP API of `durable-host serve --listen`: the real binary on a
//! loopback port picked by the system (read back from its log), driven by a
//! real HTTP client.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use durable_tests::{Scratch, artifacts, employee, run};
use serde_json::{Value, json};

/// A running `durable-host serve --listen 127.0.0.1:0`.
struct Server {
    child: Child,
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
    log: Arc<Mutex<Vec<String>>>,
}

/// An answer: status, headers we look at, and the body (parsed when JSON).
#[derive(Debug)]
struct Reply {
    status: u16,
    content_type: String,
    allow: Option<String>,
    www_authenticate: Option<String>,
    text: String,
    json: Value,
}

impl Reply {
    /// Assert the status, showing the body when it differs.
    fn expect(self, status: u16) -> Self {
        assert_eq!(
            self.status, status,
            "unexpected status; body: {}",
            self.text
        );
        self
    }

    /// Assert that this is one of our JSON errors, and return its message.
    fn error_message(&self) -> String {
        assert!(
            self.content_type.starts_with("application/json"),
            "an error is JSON: {self:?}"
        );
        let message = self.json["error"]["message"]
            .as_str()
            .unwrap_or_else(|| panic!("no error.message in {}", self.text));
        assert!(!message.is_empty());
        assert!(
            self.json["error"].as_object().unwrap().contains_key("hint"),
            "{}",
            self.text
        );
        message.to_owned()
    }
}

impl Server {
    /// `serve --listen 127.0.0.1:0` on the scratch database, with `extra`
    /// arguments; waits until it logs the address it listens on.
    fn start(scratch: &Scratch, extra: &[&str]) -> Server {
        Self::start_with_token(scratch, extra, None)
    }

    fn start_with_token(scratch: &Scratch, extra: &[&str], token: Option<&str>) -> Server {
        let mut command = scratch.host(&["serve", "--listen", "127.0.0.1:0"]);
        command
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("start durable-host serve");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (addr_tx, addr_rx) = mpsc::channel();
        let lines = Arc::clone(&log);
        // Read stderr to the end, so that the server never blocks on it.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let addr = line
                    .contains("listening")
                    .then(|| line.split("addr=").nth(1))
                    .flatten()
                    .map(|addr| addr.split_whitespace().next().unwrap_or("").to_owned());
                lines.lock().unwrap().push(line);
                if let Some(addr) = addr {
                    let _ = addr_tx.send(addr);
                }
            }
        });
        let addr = match addr_rx.recv_timeout(Duration::from_secs(60)) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "serve logged no `listening addr=`:\n{}",
                    log.lock().unwrap().join("\n")
                );
            }
        };
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(120)))
            .build()
            .into();
        Server {
            child,
            base: format!("http://{addr}"),
            token: token.map(str::to_owned),
            agent,
            log,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn auth<B>(&self, request: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.token {
            Some(token) => request.header("Authorization", format!("Bearer {token}")),
            None => request,
        }
    }

    fn get(&self, path: &str) -> Reply {
        reply(self.auth(self.agent.get(self.url(path))).call())
    }

    fn post_json(&self, path: &str, body: &Value) -> Reply {
        self.post(path, "application/json", body.to_string().as_bytes())
    }

    fn post(&self, path: &str, content_type: &str, body: &[u8]) -> Reply {
        let mut request = self
            .auth(self.agent.post(self.url(path)))
            .header("Content-Type", content_type);
        if body.len() > 1 << 20 {
            // As curl does: a refusal comes before the upload, rather than
            // as a reset connection in the middle of it.
            request = request.header("Expect", "100-continue");
        }
        reply(request.send(body))
    }

    fn post_empty(&self, path: &str) -> Reply {
        reply(self.auth(self.agent.post(self.url(path))).send_empty())
    }

    fn delete(&self, path: &str) -> Reply {
        reply(self.auth(self.agent.delete(self.url(path))).call())
    }

    fn put(&self, path: &str) -> Reply {
        reply(self.auth(self.agent.put(self.url(path))).send_empty())
    }

    /// Submit workflow `id` of `deployment` with `input` (202 expected).
    fn submit(&self, deployment: &str, id: &str, input: Value, queue: Option<&str>) -> Reply {
        let mut body = json!({"deployment": deployment, "workflow_id": id, "input": input});
        if let Some(queue) = queue {
            body["queue"] = json!(queue);
        }
        self.post_json("/v1/workflows", &body).expect(202)
    }

    /// Long-poll workflow `id` until it has finished (200).
    fn result(&self, id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let reply = self.get(&format!("/v1/workflows/{id}/result?wait=30s"));
            match reply.status {
                200 => return reply.json,
                202 if Instant::now() < deadline => continue,
                _ => panic!("no result for {id}: {reply:?}\n{}", self.log()),
            }
        }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// SIGTERM, and the exit code once it stopped.
    fn stop(self) -> Option<i32> {
        self.terminate();
        self.wait()
    }

    /// Send SIGTERM.
    fn terminate(&self) {
        durable_tests::signal(self.child.id(), "-TERM");
    }

    /// The exit code, once it stopped.
    fn wait(mut self) -> Option<i32> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(Instant::now() < deadline, "serve did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn reply(result: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Reply {
    let mut response = result.expect("the request reaches the server and gets an answer");
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let content_type = header("content-type").unwrap_or_default();
    let allow = header("allow");
    let www_authenticate = header("www-authenticate");
    let status = response.status().as_u16();
    let text = response
        .body_mut()
        .with_config()
        .limit(64 << 20)
        .read_to_string()
        .expect("read the body");
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    Reply {
        status,
        content_type,
        allow,
        www_authenticate,
        text,
        json,
    }
}

/// `durable-host deploy NAME FILE`, with the scratch services and ledger
/// directories granted.
/// What must not change when a request is refused: every row of the
/// workflow tables, and how many deployments and components there are.
fn snapshot(scratch: &Scratch) -> String {
    let mut text = scratch.dump();
    for table in [
        "deployments",
        "components",
        "workflow_events",
        "step_attempts",
    ] {
        let count = scratch.number(&format!("SELECT count(*) FROM {table}"));
        text.push_str(&format!("{table}: {count}\n"));
    }
    text
}

fn keys(value: &Value) -> BTreeSet<String> {
    value
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {value}"))
        .keys()
        .cloned()
        .collect()
}

#[test]
fn many_workflows_submitted_over_http_all_complete_once() {
    const WORKFLOWS: usize = 120;
    let scratch = Scratch::new();
    scratch.deploy("onboarding", &artifacts().onboarding);
    let server = Server::start(&scratch, &[]);

    let ids: Vec<String> = (0..WORKFLOWS).map(|i| format!("emp-{i:03}")).collect();
    for id in &ids {
        let input: Value = serde_json::from_str(&employee(id, 0)).unwrap();
        let submitted = server.submit("onboarding", id, input, None).json;
        assert_eq!(submitted["workflow_id"], id.as_str());
        assert_eq!(submitted["created"], true);
        assert_eq!(submitted["queue"], "default");
        assert!(
            ["queued", "running", "completed"].contains(&submitted["status"].as_str().unwrap()),
            "{submitted}"
        );
    }
    for id in &ids {
        let record = server.result(id);
        assert_eq!(record["status"], "completed", "{record}");
        assert_eq!(record["output"]["employee_id"], id.as_str());
        assert_eq!(record["deployment"], "onboarding");
    }

    // Every side effect ran exactly once: one call per step of each
    // workflow, each with its own idempotency key.
    let records = scratch.service_records();
    assert_eq!(records.len(), 4 * WORKFLOWS, "{records:?}");
    let mut calls = BTreeMap::<String, usize>::new();
    for (_, record) in &records {
        let key = record["idempotency_key"].as_str().unwrap().to_owned();
        *calls.entry(key).or_default() += 1;
    }
    assert_eq!(calls.len(), 4 * WORKFLOWS, "a key was used twice");
    let workflows: BTreeSet<&str> = calls
        .keys()
        .map(|key| key.split('/').next().unwrap())
        .collect();
    assert_eq!(workflows.len(), WORKFLOWS);

    // The listing pages through all of them.
    let mut listed = Vec::new();
    let mut path = "/v1/workflows?status=completed&limit=50".to_owned();
    loop {
        let page = server.get(&path).expect(200).json;
        let rows = page["workflows"].as_array().unwrap();
        listed.extend(rows.iter().map(|w| w["workflow_id"].clone()));
        match page["next_after"].as_str() {
            Some(after) => path = format!("/v1/workflows?status=completed&limit=50&after={after}"),
            None => break,
        }
    }
    assert_eq!(listed.len(), WORKFLOWS);

    // Same field names and values as the command line's JSON.
    let id = "emp-007";
    let api_history = server
        .get(&format!("/v1/workflows/{id}/steps"))
        .expect(200)
        .json;
    let cli_history = run(&mut scratch.host(&["history", id, "--json"]))
        .expect_code(0)
        .json();
    for (key, value) in cli_history.as_object().unwrap() {
        assert_eq!(
            api_history.get(key),
            Some(value),
            "history field `{key}` differs:\nAPI {api_history}\nCLI {cli_history}"
        );
    }
    assert_eq!(api_history["steps"].as_array().unwrap().len(), 4);
    let api_step = &api_history["steps"][0];
    assert!(keys(api_step).contains("earlier_attempts"), "{api_step}");
    let cli_list = run(&mut scratch.host(&["list", "--json", "--limit", "1"]))
        .expect_code(0)
        .json();
    let cli_item = &cli_list[0];
    let api_list = server.get("/v1/workflows?limit=1").expect(200).json;
    let api_item = &api_list["workflows"][0];
    assert!(
        keys(api_item).is_superset(&keys(cli_item)),
        "list fields: API {api_item}\nCLI {cli_item}"
    );
    assert_eq!(api_item["steps"], cli_item["steps"]);

    assert_eq!(server.stop(), Some(0));
    assert!(scratch.integrity_ok());
}

#[test]
fn components_deployed_over_http_run() {
    let scratch = Scratch::new();
    let server = Server::start(&scratch, &[]);
    let bytes = std::fs::read(&artifacts().scenarios).unwrap();

    let first = server
        .post("/v1/deployments?name=scenarios", "application/wasm", &bytes)
        .expect(201)
        .json;
    assert_eq!(first["name"], "scenarios");
    assert_eq!(first["version"], 1);
    let sha256 = first["component_sha256"].as_str().unwrap().to_owned();
    assert_eq!(sha256.len(), 64);
    assert_eq!(
        first["grants"]["dirs"],
        json!([]),
        "a deployment over HTTP grants nothing: {first}"
    );
    assert_eq!(first["grants"]["env"], json!([]), "{first}");
    let second = server
        .post("/v1/deployments?name=scenarios", "application/wasm", &bytes)
        .expect(201)
        .json;
    assert_eq!(second["version"], 2);
    assert_eq!(second["component_sha256"], sha256.as_str());

    let listed = server.get("/v1/deployments").expect(200).json;
    let versions: Vec<&Value> = listed["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| &d["version"])
        .collect();
    assert_eq!(versions, [&json!(2), &json!(1)], "newest first");
    let cli = run(&mut scratch.host(&["deploy", "--list", "--json"]))
        .expect_code(0)
        .json();
    assert_eq!(
        cli, listed["deployments"],
        "the CLI sees the same deployments"
    );
    let none = server.get("/v1/deployments?name=other").expect(200).json;
    assert_eq!(none["deployments"], json!([]));

    server.submit(
        "scenarios",
        "sum",
        json!({"scenario": "steps", "items": 5}),
        None,
    );
    let record = server.result("sum");
    assert_eq!(record["status"], "completed", "{record}");
    assert_eq!(record["output"], 10);
    assert_eq!(record["component_sha256"], sha256.as_str());
    assert_eq!(server.stop(), Some(0));
}

#[test]
fn results_are_long_polled() {
    let scratch = Scratch::new();
    scratch.deploy("scenarios", &artifacts().scenarios);
    let server = Server::start(&scratch, &[]);
    server.submit(
        "scenarios",
        "slow",
        json!({"scenario": "hold", "items": 1, "sleep_ms": 1500}),
        None,
    );

    let now = server.get("/v1/workflows/slow/result").expect(202).json;
    assert!(
        ["queued", "running"].contains(&now["status"].as_str().unwrap()),
        "{now}"
    );
    assert!(now["output"].is_null());

    let started = Instant::now();
    let waited = server
        .get("/v1/workflows/slow/result?wait=300ms")
        .expect(202)
        .json;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(280) && took < Duration::from_secs(5),
        "waited {took:?}"
    );
    assert_eq!(waited["workflow_id"], "slow");

    let started = Instant::now();
    let done = server
        .get("/v1/workflows/slow/result?wait=30s")
        .expect(200)
        .json;
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["output"], 1);

    // A finished workflow answers at once, whatever the wait.
    let started = Instant::now();
    server.get("/v1/workflows/slow/result?wait=60s").expect(200);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(scratch.effects(), ["hold#000001"]);
    assert_eq!(server.stop(), Some(0));
}

#[test]
fn listings_page_newest_first() {
    let scratch = Scratch::new();
    scratch.deploy("scenarios", &artifacts().scenarios);
    let server = Server::start(&scratch, &[]);
    // A queue nobody serves: they stay queued.
    for i in 0..7 {
        server.submit(
            "scenarios",
            &format!("parked-{i}"),
            json!({"scenario": "steps", "items": 1}),
            Some("parked"),
        );
        std::thread::sleep(Duration::from_millis(3));
    }
    let everything = server.get("/v1/workflows").expect(200).json;
    assert!(everything["next_after"].is_null());
    let all: Vec<Value> = everything["workflows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["workflow_id"].clone())
        .collect();
    let newest_first: Vec<Value> = (0..7).rev().map(|i| json!(format!("parked-{i}"))).collect();
    assert_eq!(all, newest_first);

    let mut paged = Vec::new();
    let mut sizes = Vec::new();
    let mut path = "/v1/workflows?limit=3".to_owned();
    loop {
        let page = server.get(&path).expect(200).json;
        let rows = page["workflows"].as_array().unwrap();
        sizes.push(rows.len());
        paged.extend(rows.iter().map(|w| w["workflow_id"].clone()));
        match page["next_after"].as_str() {
            Some(after) => {
                assert_eq!(Some(after), rows.last().unwrap()["workflow_id"].as_str());
                path = format!("/v1/workflows?limit=3&after={after}");
            }
            None => break,
        }
    }
    assert_eq!(sizes, [3, 3, 1]);
    assert_eq!(paged, all);
    // A page that ends exactly at the end says so.
    let exact = server.get("/v1/workflows?limit=7").expect(200).json;
    assert!(exact["next_after"].is_null(), "{exact}");

    let queued = server.get("/v1/workflows?status=queued").expect(200).json;
    assert_eq!(queued["workflows"].as_array().unwrap().len(), 7);
    assert_eq!(queued["workflows"][0]["queue"], "parked");
    assert_eq!(queued["workflows"][0]["steps"]["total"], 0);
    let completed = server
        .get("/v1/workflows?status=completed")
        .expect(200)
        .json;
    assert_eq!(completed["workflows"], json!([]));

    // An id with `/` (and a space) in it is percent-encoded in the path.
    server.submit("scenarios", "pay/x 1", json!(null), Some("parked"));
    let odd = server.get("/v1/workflows/pay%2Fx%201").expect(200).json;
    assert_eq!(odd["workflow_id"], "pay/x 1");
    server.get("/v1/workflows/pay/x%201").expect(404);

    let one = server.get("/v1/workflows/parked-3").expect(200).json;
    assert_eq!(one["status"], "queued");
    assert_eq!(one["input"], json!({"scenario": "steps", "items": 1}));

    // Search by a part of the id, with the other filters and paging.
    let ids = |path: &str| -> Vec<String> {
        server.get(path).expect(200).json["workflows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["workflow_id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(ids("/v1/workflows?search=ked-4"), ["parked-4"]);
    assert_eq!(ids("/v1/workflows?search=%2Fx"), ["pay/x 1"]);
    assert_eq!(
        ids("/v1/workflows?search=parked&limit=2&after=parked-5"),
        ["parked-4", "parked-3"]
    );
    assert!(
        ids("/v1/workflows?search=PARKED").is_empty(),
        "case-sensitive"
    );
    assert!(ids("/v1/workflows?search=parked&status=running").is_empty());
    // Counts by status, for the console's filters.
    let counts = server.get("/v1/workflow-counts").expect(200).json;
    assert_eq!(counts["total"], 8, "{counts}");
    assert_eq!(counts["queued"], 8, "{counts}");
    assert_eq!(counts["completed"], 0, "{counts}");
    assert_eq!(server.stop(), Some(0));
}

#[test]
fn long_histories_page_and_fork_over_http() {
    let scratch = Scratch::new();
    scratch.deploy("scenarios", &artifacts().scenarios);
    let server = Server::start(&scratch, &[]);
    server.submit(
        "scenarios",
        "long",
        json!({"scenario": "steps", "items": 2500}),
        None,
    );
    assert_eq!(server.result("long")["status"], "completed");
    let everything = server.get("/v1/workflows/long/steps").expect(200).json;
    let all = everything["steps"].as_array().unwrap();
    assert_eq!(all.len(), 2500);
    assert!(
        everything.get("next_after").is_none(),
        "{}",
        everything["next_after"]
    );
    assert_eq!(
        all[0]["idempotency_key"],
        format!("long/{}", all[0]["key"].as_str().unwrap())
    );

    let mut paged = Vec::new();
    let mut after = 0;
    loop {
        let page = server
            .get(&format!(
                "/v1/workflows/long/steps?after={after}&limit=1000"
            ))
            .expect(200)
            .json;
        assert_eq!(page["workflow_id"], "long");
        paged.extend(page["steps"].as_array().unwrap().iter().cloned());
        match page["next_after"].as_u64() {
            Some(next) => after = next,
            None => break,
        }
    }
    assert_eq!(&paged, all);
    server
        .get("/v1/workflows/long/steps?limit=1001")
        .expect(400);
    server.get("/v1/workflows/long/steps?after=-1").expect(400);

    // Fork from step 2000: 1999 steps copied, the rest run again.
    let forked = server
        .post_json(
            "/v1/workflows/long/fork",
            &json!({"from_step": 2000, "workflow_id": "long-again"}),
        )
        .expect(201)
        .json;
    assert_eq!(forked["workflow_id"], "long-again");
    assert_eq!(
        server.result("long-again")["output"],
        server.result("long")["output"]
    );
    let copied = scratch.number(
        "SELECT count(*) FROM steps WHERE workflow_id = 'long-again' AND run_id IN
             (SELECT run_id FROM steps WHERE workflow_id = 'long')",
    );
    assert_eq!(copied, 1999);
    // Refusals say why, and change nothing.
    let before = snapshot(&scratch);
    let taken = server
        .post_json(
            "/v1/workflows/long/fork",
            &json!({"from_step": 1, "workflow_id": "long"}),
        )
        .expect(409);
    assert!(
        taken.error_message().contains("exists already"),
        "{taken:?}"
    );
    let beyond = server
        .post_json("/v1/workflows/long/fork", &json!({"from_step": 2502}))
        .expect(409);
    assert!(
        beyond.error_message().contains("fork from 1 to 2501"),
        "{beyond:?}"
    );
    server
        .post_json("/v1/workflows/nobody/fork", &json!({"from_step": 1}))
        .expect(404);
    server
        .post_json("/v1/workflows/long/fork", &json!({"from": 1}))
        .expect(400);
    server
        .post_json(
            "/v1/workflows/long/fork",
            &json!({"from_step": 1, "deployment": "nope"}),
        )
        .expect(404);
    assert_eq!(snapshot(&scratch), before);
    assert_eq!(server.stop(), Some(0));
}

#[test]
fn submissions_are_idempotent_on_the_id() {
    let scratch = Scratch::new();
    scratch.deploy("scenarios", &artifacts().scenarios);
    let server = Server::start(&scratch, &[]);
    let input = json!({"scenario": "steps", "items": 2});
    let first = server
        .submit("scenarios", "same", input.clone(), Some("parked"))
        .json;
    assert_eq!(first["created"], true);

    // The same input, however spaced, finds the same workflow.
    let again = server
        .post(
            "/v1/workflows",
            "application/json",
            br#"{ "deployment" : "scenarios", "workflow_id": "same", "queue": "parked",
                 "input": { "items" : 2, "scenario" : "steps" } }"#,
        )
        .expect(200)
        .json;
    assert_eq!(again["created"], false);
    assert_eq!(again["workflow_id"], "same");
    assert_eq!(again["status"], "queued");

    let before = snapshot(&scratch);
    let conflict = server.post_json(
        "/v1/workflows",
        &json!({"deployment": "scenarios", "workflow_id": "same", "queue": "parked",
                "input": {"scenario": "steps", "items": 3}}),
    );
    let message = conflict.expect(409).error_message();
    assert!(message.contains("another input"), "{message}");
    assert_eq!(snapshot(&scratch), before, "a conflict changes nothing");

    // Without an id, one is made up.
    let made_up = server
        .post_json(
            "/v1/workflows",
            &json!({"deployment": "scenarios", "input": null, "queue": "parked"}),
        )
        .expect(202)
        .json;
    assert!(
        made_up["workflow_id"].as_str().unwrap().starts_with("wf-"),
        "{made_up}"
    );
    assert_eq!(server.stop(), Some(0));
}

#[test]
fn workflows_are_cancelled_over_http() {
    let scratch = Scratch::new();
    scratch.deploy("scenarios", &artifacts().scenarios);
    let server = Server::start(&scratch, &[]);

    // Running: handed the cancellation at its next step.
    server.submit(
        "scenarios",
        "long",
        json!({"scenario": "hold", "items": 600, "sleep_ms": 100}),
        None,
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !scratch.effects().iter().any(|e| e == "hold#000002") {
        assert!(Instant::now() < deadline, "the workflow never ran");
        std::thread::sleep(Duration::from_millis(20));
    }
    let requested = server
        .post_empty("/v1/workflows/long/cancel")
        .expect(202)
        .json;
    assert_eq!(
        requested,
        json!({"workflow_id": "long", "cancel": "requested"})
    );
    let record = server.result("long");
    assert_eq!(record["status"], "cancelled", "{record}");
    assert!(scratch.effects().len() < 100, "it stopped early");

    // Finished: nothing to do.
    let finished = server
        .post_empty("/v1/workflows/long/cancel")
        .expect(200)
        .json;
    assert_eq!(finished["cancel"], "already_finished");

    // Queued: nobody runs it, so it is cancelled at once, and never runs.
    server.submit(
        "scenarios",
        "waiting",
        json!({"scenario": "steps", "items": 1}),
        Some("parked"),
    );
    let cancelled = server
        .post_empty("/v1/workflows/waiting/cancel")
        .expect(200)
        .json;
    assert_eq!(
        cancelled,
        json!({"workflow_id": "waiting", "cancel": "cancelled"})
    );
    let record = server.get("/v1/workflows/waiting/result").expect(200).json;
    assert_eq!(record["status"], "cancelled", "{record}");
    server
        .post_empty("/v1/workflows/waiting/cancel")
        .expect(200);

    let unknown = server.post_empty("/v1/workflows/nope/cancel").expect(404);
    assert!(unknown.error_message().contains("nope"));
    assert_eq!(server.stop(), Some(0));
}

#[test]
fn bad_requests_are_refused_and_change_nothing() {
    let scratch = Scratch::new();
    scratch.deploy("scenarios", &artifacts().scenarios);
    let server = Server::start(&scratch, &[]);
    server.submit(
        "scenarios",
        "keep",
        json!({"scenario": "steps", "items": 1}),
        Some("parked"),
    );
    let before = snapshot(&scratch);

    // What a page from another site could make a browser send: a change
    // marked cross-site or from another origin, or any request under another
    // host name (DNS rebinding).
    let resubmit = json!({"deployment": "scenarios", "workflow_id": "keep",
        "input": {"scenario": "steps", "items": 1}, "queue": "parked"})
    .to_string();
    let from_browser = |name: &str, value: &str| {
        reply(
            server
                .agent
                .post(server.url("/v1/workflows"))
                .header(name, value)
                .send(resubmit.as_bytes()),
        )
    };
    let cross = from_browser("Sec-Fetch-Site", "cross-site").expect(403);
    assert!(cross.error_message().contains("another site"), "{cross:?}");
    from_browser("Origin", "http://evil.example").expect(403);
    from_browser("Origin", "null").expect(403);
    server
        .agent
        .post(server.url("/v1/workflows/keep/cancel"))
        .header("Origin", "http://evil.example")
        .send_empty()
        .map(|r| assert_eq!(r.status(), 403))
        .unwrap();
    let rebound = reply(
        server
            .agent
            .get(server.url("/v1/workflows"))
            .header("Host", "evil.example")
            .call(),
    )
    .expect(403);
    assert!(
        rebound.error_message().contains("DNS rebinding"),
        "{rebound:?}"
    );
    // The console's own requests pass: same origin.
    let origin = server.base.clone();
    from_browser("Origin", &origin).expect(200);
    from_browser("Sec-Fetch-Site", "same-origin").expect(200);
    assert_eq!(snapshot(&scratch), before);

    let submit = |body: &[u8]| server.post("/v1/workflows", "application/json", body);
    // Malformed JSON, wrong shapes, bad fields.
    for (body, status, says) in [
        (&b"{oops"[..], 400, "not valid JSON"),
        (b"", 400, "missing field `deployment`"),
        (b"[]", 400, "not valid"),
        (
            br#"{"deployment": "scenarios"}"#,
            400,
            "missing field `input`",
        ),
        (br#"{"input": 1}"#, 400, "missing field `deployment`"),
        (
            br#"{"deployment": "scenarios", "input": 1, "workflowId": "x"}"#,
            400,
            "unknown field `workflowId`",
        ),
        (br#"{"deployment": 5, "input": 1}"#, 400, "invalid type"),
        (
            br#"{"deployment": "scenarios", "input": 1, "workflow_id": "a\u0007b"}"#,
            400,
            "control characters",
        ),
        (br#"{"deployment": "", "input": 1}"#, 400, "empty"),
        (
            br#"{"deployment": "scenarios", "input": 1, "queue": ""}"#,
            400,
            "empty",
        ),
        (
            br#"{"deployment": "nope", "input": 1}"#,
            404,
            "no deployment named `nope`",
        ),
        (
            br#"{"deployment": "scenarios", "workflow_id": "keep", "input": 2, "queue": "parked"}"#,
            409,
            "another input",
        ),
    ] {
        let reply = submit(body);
        assert_eq!(
            reply.status,
            status,
            "{} -> {}",
            String::from_utf8_lossy(body),
            reply.text
        );
        let message = reply.error_message();
        assert!(message.contains(says), "{message}");
    }

    // Too large: an input over 16 MiB, and a body over the limit.
    let big_input = json!({"deployment": "scenarios", "input": "x".repeat((16 << 20) + 10)});
    let reply = server.post_json("/v1/workflows", &big_input).expect(413);
    assert!(reply.error_message().contains("bytes"), "{}", reply.text);
    let huge = json!({"deployment": "scenarios", "input": "x".repeat(18 << 20)});
    let reply = server.post_json("/v1/workflows", &huge).expect(413);
    assert!(
        reply.error_message().contains("too large"),
        "{}",
        reply.text
    );

    // Wrong methods: our JSON error, with the methods the path takes.
    for (reply, allowed) in [
        (server.delete("/v1/workflows"), "POST"),
        (server.get("/v1/workflows/keep/cancel"), "POST"),
        (server.put("/v1/health"), "GET"),
        (server.delete("/v1/deployments"), "GET"),
    ] {
        let reply = reply.expect(405);
        assert!(reply.error_message().contains("not allowed"));
        assert!(
            reply.allow.as_deref().unwrap_or("").contains(allowed),
            "{reply:?}"
        );
    }

    // Unknown paths and workflows.
    server.get("/v1/nothing-here").expect(404).error_message();
    server.get("/console/nothing").expect(404).error_message();
    for path in [
        "/v1/workflows/nope",
        "/v1/workflows/nope/steps",
        "/v1/workflows/nope/result?wait=100ms",
    ] {
        let message = server.get(path).expect(404).error_message();
        assert!(message.contains("nope"), "{message}");
    }
    server.post_empty("/v1/workflows/nope/cancel").expect(404);

    // Schedules: a bad expression, a missing deployment, a taken name.
    let bad_cron = server
        .post_json(
            "/v1/schedules",
            &json!({"name": "s", "cron": "every day", "deployment": "scenarios", "input": 1}),
        )
        .expect(400);
    assert!(bad_cron.error_message().contains("not a cron expression"));
    assert!(
        bad_cron.json["error"]["hint"]
            .as_str()
            .is_some_and(|hint| hint.contains("`0 2 * * *`")),
        "the hint shows the form: {}",
        bad_cron.text
    );
    server
        .post_json(
            "/v1/schedules",
            &json!({"name": "s", "cron": "0 2 * * *", "deployment": "nope", "input": 1}),
        )
        .expect(404);
    server
        .post_json("/v1/schedules", &json!({"name": "s", "cron": "0 2 * * *"}))
        .expect(400);
    server
        .delete("/v1/schedules/nope")
        .expect(404)
        .error_message();
    let listed = server.get("/v1/schedules").expect(200).json;
    assert_eq!(listed["schedules"], json!([]), "{listed}");

    // Bad query parameters.
    for path in [
        "/v1/workflows?limit=0",
        "/v1/workflows?limit=1001",
        "/v1/workflows?limit=many",
        "/v1/workflows?status=bogus",
        "/v1/workflows?after=nope",
        "/v1/workflows?bogus=1",
        "/v1/workflows/keep/result?wait=soon",
        "/v1/workflows/keep/result?wait=1d",
        "/v1/workflows/keep/steps?limit=0",
        "/v1/workflows/keep/steps?after=x",
        "/v1/deployments?nam=x",
    ] {
        server.get(path).expect(400).error_message();
    }

    // Deployments: no name, wrong type, not a workflow, too large.
    let wasm = std::fs::read(&artifacts().scenarios).unwrap();
    let not_a_workflow = std::fs::read(&artifacts().not_a_workflow).unwrap();
    server
        .post("/v1/deployments", "application/wasm", &wasm)
        .expect(400)
        .error_message();
    server
        .post("/v1/deployments?name=", "application/wasm", &wasm)
        .expect(400)
        .error_message();
    server
        .post("/v1/deployments?name=x", "application/json", &wasm)
        .expect(415)
        .error_message();
    let message = server
        .post("/v1/deployments?name=x", "application/wasm", b"hello")
        .expect(400)
        .error_message();
    assert!(message.contains("not a WebAssembly file"), "{message}");
    let message = server
        .post(
            "/v1/deployments?name=x",
            "application/wasm",
            &not_a_workflow,
        )
        .expect(400)
        .error_message();
    assert!(message.contains("not a durable workflow"), "{message}");
    let mut too_large = wasm.clone();
    too_large.resize(65 << 20, 0);
    server
        .post("/v1/deployments?name=x", "application/wasm", &too_large)
        .expect(413)
        .error_message();

    assert_eq!(
        snapshot(&scratch),
        before,
        "a refused request changed the database"
    );
    // And the server is still fine.
    server.get("/v1/health").expect(200);
    assert_eq!(server.stop(), Some(0));
}

#[test]
fn a_token_guards_every_request() {
    let scratch = Scratch::new();
    scratch.deploy("scenarios", &artifacts().scenarios);
    let token_file = scratch.path().join("token");
    std::fs::write(&token_file, "  s3cret-token\n").unwrap();
    let token_arg = token_file.to_str().unwrap();
    let server =
        Server::start_with_token(&scratch, &["--token-file", token_arg], Some("s3cret-token"));
    assert!(
        server.log().contains("token_required=true"),
        "{}",
        server.log()
    );
    let before = snapshot(&scratch);

    let anonymous = |path: &str| reply(server.agent.get(server.url(path)).call());
    for path in [
        "/v1/health",
        "/v1/workflows",
        "/v1/openapi.json",
        "/v1/nothing",
    ] {
        let refused = anonymous(path).expect(401);
        refused.error_message();
        assert!(
            refused
                .www_authenticate
                .as_deref()
                .is_some_and(|v| v.starts_with("Bearer")),
            "{refused:?}"
        );
    }
    for header in [
        "Bearer wrong",
        "Basic czNjcmV0LXRva2Vu",
        "Bearer",
        "s3cret-token",
    ] {
        let refused = reply(
            server
                .agent
                .get(server.url("/v1/health"))
                .header("Authorization", header)
                .call(),
        );
        refused.expect(401).error_message();
    }
    let unsent = reply(
        server
            .agent
            .post(server.url("/v1/workflows"))
            .header("Content-Type", "application/json")
            .send(
                json!({"deployment": "scenarios", "workflow_id": "x", "input": 1})
                    .to_string()
                    .as_bytes(),
            ),
    );
    unsent.expect(401);
    assert_eq!(snapshot(&scratch), before);

    // The console's files hold no data: they load without the token (the
    // page asks for it), and forbid framing.
    let page = anonymous("/").expect(200);
    assert!(page.content_type.starts_with("text/html"), "{page:?}");
    assert!(page.text.contains("/console/console.js"), "{}", page.text);
    let script = anonymous("/console/console.js").expect(200);
    assert!(script.content_type.starts_with("text/javascript"));
    let headers = server.agent.get(server.url("/")).call().unwrap();
    let csp = headers.headers()["content-security-policy"]
        .to_str()
        .unwrap();
    assert!(
        csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert_eq!(snapshot(&scratch), before);

    // With the token, everything works.
    server.get("/v1/health").expect(200);
    server.get("/v1/openapi.json").expect(200);
    server.get("/v1/nothing").expect(404);
    server.submit(
        "scenarios",
        "x",
        json!({"scenario": "steps", "items": 1}),
        None,
    );
    assert_eq!(server.result("x")["status"], "completed");
    assert_eq!(server.stop(), Some(0));
}

#[test]
fn a_non_loopback_address_needs_a_token() {
    let scratch = Scratch::new();
    let refused = run(&mut scratch.host(&["serve", "--listen", "0.0.0.0:0"])).expect_code(2);
    let stderr = refused.stderr();
    assert!(
        stderr.contains("refusing to listen on 0.0.0.0:0") && stderr.contains("--token-file"),
        "{stderr}"
    );
    assert!(scratch.tables().is_empty(), "nothing was created");

    let empty = scratch.path().join("empty-token");
    std::fs::write(&empty, "\n").unwrap();
    let refused = run(&mut scratch.host(&[
        "serve",
        "--listen",
        "0.0.0.0:0",
        "--token-file",
        empty.to_str().unwrap(),
    ]))
    .expect_code(2);
    assert!(
        refused.stderr().contains("is empty"),
        "{}",
        refused.stderr()
    );
    let missing = run(&mut scratch.host(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--token-file",
        "no-such-file",
    ]))
    .expect_code(2);
    assert!(
        missing.stderr().contains("no-such-file"),
        "{}",
        missing.stderr()
    );
    // A token without an API is a mistake too.
    run(&mut scratch.host(&["serve", "--token-file", empty.to_str().unwrap()])).expect_code(2);
    let bad = run(&mut scratch.host(&["serve", "--listen", "nowhere"])).expect_code(2);
    assert!(bad.stderr().contains("HOST:PORT"), "{}", bad.stderr());
    // A port that is taken, too, is refused before the database is opened.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = taken.local_addr().unwrap().to_string();
    let busy = run(&mut scratch.host(&["serve", "--listen", &listen])).expect_code(2);
    assert!(
        busy.stderr()
            .contains(&format!("cannot listen on {listen}")),
        "{}",
        busy.stderr()
    );
    assert!(scratch.tables().is_empty(), "nothing was created");
}

/// The OpenAPI document lists every endpoint, and each answers with a
/// status it documents.
#[test]
fn the_openapi_document_is_true() {
    let scratch = Scratch::new();
    scratch.deploy("scenarios", &artifacts().scenarios);
    let server = Server::start(&scratch, &[]);
    let document = server.get("/v1/openapi.json").expect(200).json;
    assert!(
        document["openapi"].as_str().unwrap().starts_with("3."),
        "{document}"
    );
    server.submit(
        "scenarios",
        "done",
        json!({"scenario": "steps", "items": 3}),
        None,
    );
    assert_eq!(server.result("done")["status"], "completed");
    let wasm = std::fs::read(&artifacts().scenarios).unwrap();

    let call = |method: &str, path: &str| -> Reply {
        match (method, path) {
            ("get", "/v1/workflows/{id}/result") => {
                server.get("/v1/workflows/done/result?wait=30s")
            }
            // `done` published nothing and has ended: 404 at once.
            ("get", "/v1/workflows/{id}/events/{key}") => {
                server.get("/v1/workflows/done/events/status?wait=30s")
            }
            ("post", "/v1/workflows/{id}/signals/{name}") => {
                server.post_json("/v1/workflows/done/signals/go", &json!({"value": 1}))
            }
            ("get", path) => server.get(&path.replace("{id}", "done")),
            ("post", "/v1/workflows") => server.post_json(
                "/v1/workflows",
                &json!({"deployment": "scenarios", "input": {"scenario": "steps"}, "queue": "parked"}),
            ),
            ("post", "/v1/deployments") => {
                server.post("/v1/deployments?name=doc", "application/wasm", &wasm)
            }
            ("post", "/v1/workflows/{id}/cancel") => {
                server.post_empty("/v1/workflows/done/cancel")
            }
            ("post", "/v1/schedules") => server.post_json(
                "/v1/schedules",
                &json!({"name": "doc", "cron": "0 2 * * *", "deployment": "scenarios", "input": null}),
            ),
            ("delete", "/v1/schedules/{name}") => server.delete("/v1/schedules/doc"),
            ("post", "/v1/workflows/{id}/fork") => server.post_json(
                "/v1/workflows/done/fork",
                &json!({"from_step": 2, "workflow_id": "forked"}),
            ),
            other => panic!("the test does not know how to call {other:?}"),
        }
    };
    let expected: BTreeMap<(&str, &str), u16> = [
        (("get", "/v1/health"), 200),
        (("get", "/v1/openapi.json"), 200),
        (("get", "/v1/deployments"), 200),
        (("post", "/v1/deployments"), 201),
        (("get", "/v1/workflows"), 200),
        (("post", "/v1/workflows"), 202),
        (("get", "/v1/workflows/{id}"), 200),
        (("get", "/v1/workflows/{id}/steps"), 200),
        (("get", "/v1/workflows/{id}/logs"), 200),
        (("get", "/v1/workflows/{id}/result"), 200),
        (("post", "/v1/workflows/{id}/cancel"), 200),
        (("post", "/v1/workflows/{id}/fork"), 201),
        (("get", "/v1/workflows/{id}/events/{key}"), 404),
        (("post", "/v1/workflows/{id}/signals/{name}"), 409),
        (("get", "/v1/workflow-counts"), 200),
        (("get", "/v1/schedules"), 200),
        (("post", "/v1/schedules"), 201),
        (("delete", "/v1/schedules/{name}"), 200),
    ]
    .into_iter()
    .collect();

    let mut called = BTreeSet::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let reply = call(method, path);
            let documented = operation["responses"].as_object().unwrap();
            for (code, response) in documented {
                assert!(
                    response["description"].is_string(),
                    "{method} {path} {code} has no description"
                );
            }
            assert!(
                reply.status < 500,
                "{method} {path}: {} {}",
                reply.status,
                reply.text
            );
            assert!(
                documented.contains_key(&reply.status.to_string()),
                "{method} {path} answered {}, which it does not document",
                reply.status
            );
            assert_eq!(
                expected.get(&(method.as_str(), path.as_str())),
                Some(&reply.status),
                "{method} {path}: {}",
                reply.text
            );
            assert!(reply.content_type.starts_with("application/json"));
            // The answer has every field its schema requires.
            let schema =
                &documented[&reply.status.to_string()]["content"]["application/json"]["schema"];
            for field in required_fields(&document, schema) {
                assert!(
                    reply.json.get(&field).is_some(),
                    "{method} {path}: no `{field}` in {}",
                    reply.text
                );
            }
            called.insert((method.clone(), path.clone()));
        }
    }
    let expected: BTreeSet<(String, String)> = expected
        .keys()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(
        called, expected,
        "the document lists every endpoint, and only those"
    );
    assert_eq!(server.stop(), Some(0));
}

/// The properties `schema` requires, following `$ref` and `allOf`.
fn required_fields(document: &Value, schema: &Value) -> Vec<String> {
    if let Some(reference) = schema["$ref"].as_str() {
        let name = reference.rsplit('/').next().unwrap();
        return required_fields(document, &document["components"]["schemas"][name]);
    }
    let mut fields: Vec<String> = schema["required"]
        .as_array()
        .map(|r| r.iter().map(|f| f.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default();
    for part in schema["allOf"].as_array().into_iter().flatten() {
        fields.extend(required_fields(document, part));
    }
    fields
}

/// SIGTERM: while the scheduler drains, the API refuses changes (503) and
/// answers long polls at once, reads still work, and the process then
/// exits cleanly.
#[test]
fn the_api_drains_with_the_server() {
    let scratch = Scratch::new();
    scratch.deploy("scenarios", &artifacts().scenarios);
    let server = Server::start(&scratch, &["--shutdown-grace", "20s"]);
    server.submit(
        "scenarios",
        "busy",
        json!({"scenario": "hold", "items": 3, "sleep_ms": 3000}),
        None,
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while scratch.effects().is_empty() {
        assert!(Instant::now() < deadline, "the workflow never ran");
        std::thread::sleep(Duration::from_millis(20));
    }
    let server = Arc::new(server);
    let polling = {
        let server = Arc::clone(&server);
        std::thread::spawn(move || {
            let started = Instant::now();
            let reply = server.get("/v1/workflows/busy/result?wait=60s");
            (reply, started.elapsed())
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    server.terminate();
    let (reply, took) = polling.join().unwrap();
    let reply = reply.expect(202);
    assert_eq!(reply.json["status"], "running");
    assert!(
        took < Duration::from_secs(3),
        "the long poll ended at once: {took:?}"
    );

    let health = server.get("/v1/health").expect(503);
    assert_eq!(health.json, json!({"status": "stopping"}));
    let refused = server.post_json(
        "/v1/workflows",
        &json!({"deployment": "scenarios", "workflow_id": "late", "input": null}),
    );
    assert!(
        refused
            .expect(503)
            .error_message()
            .contains("shutting down")
    );
    server.post_empty("/v1/workflows/busy/cancel").expect(503);
    server.get("/v1/workflows/busy").expect(200);

    let server = Arc::try_unwrap(server).ok().expect("the poller is done");
    assert_eq!(server.wait(), Some(0));
    assert_eq!(scratch.workflow_status("late"), None);
    assert_eq!(scratch.workflow_status("busy").as_deref(), Some("running"));
    assert!(scratch.integrity_ok());
}

#[test]
fn a_workflows_output_is_read_and_followed_over_http_and_with_logs() {
    let scratch = Scratch::new();
    scratch.deploy("scenarios", &artifacts().scenarios);
    let server = Server::start(&scratch, &[]);
    server.submit(
        "scenarios",
        "talker",
        json!({"scenario": "output", "sleep_ms": 2000}),
        None,
    );
    // Followed from the start: it prints lines as their checkpoints land
    // and ends by itself when the workflow does.
    let follower = scratch
        .host(&["logs", "talker", "--follow", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // While the workflow holds in its last step, the lines kept with the
    // checkpoints before it are there; the rest is not yet.
    scratch.wait_for_step("talker", "hold#", "running");
    let early = server.get("/v1/workflows/talker/logs").expect(200).json;
    assert_eq!(early["status"], "running", "{early}");
    let early_texts: Vec<&str> = early["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|line| line["text"].as_str().unwrap())
        .collect();
    assert_eq!(early_texts.last(), Some(&"branch says hello"), "{early}");

    server.result("talker");
    let page = server.get("/v1/workflows/talker/logs").expect(200).json;
    assert_eq!(page["status"], "completed");
    let lines = page["lines"].as_array().unwrap();
    assert_eq!(lines.len(), 8, "{page}");
    assert_eq!(lines[2]["stream"], "stderr");
    assert_eq!(lines[2]["step"], "print#000001");
    assert_eq!(lines[4]["stream"], "log");
    assert_eq!(lines[7]["text"], "the end, without a newline");
    assert!(
        lines
            .windows(2)
            .all(|w| w[0]["seq"].as_i64() < w[1]["seq"].as_i64())
    );
    // Paging: from `next_after` on there is nothing; `limit` cuts.
    let next = page["next_after"].as_i64().unwrap();
    let rest = server
        .get(&format!("/v1/workflows/talker/logs?after={next}"))
        .expect(200)
        .json;
    assert_eq!(rest["lines"], json!([]));
    assert_eq!(rest["next_after"], next);
    let two = server
        .get("/v1/workflows/talker/logs?limit=2")
        .expect(200)
        .json;
    assert_eq!(two["lines"].as_array().unwrap().len(), 2);
    assert_eq!(two["next_after"], lines[1]["seq"]);

    // The follower saw the same lines and stopped on its own.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut follower = follower;
    while follower.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "logs --follow did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
    let followed = follower.wait_with_output().unwrap();
    assert!(followed.status.success());
    let followed: Vec<Value> = String::from_utf8(followed.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(&followed, lines);

    // Bad requests change nothing and say why.
    let bad = server.get("/v1/workflows/talker/logs?limit=0").expect(400);
    assert!(bad.error_message().contains("limit"));
    let bad = server.get("/v1/workflows/talker/logs?after=x").expect(400);
    bad.error_message();
    let unknown = server.get("/v1/workflows/nobody/logs").expect(404);
    assert!(unknown.error_message().contains("nobody"));

    // Guest output goes to the workflow's log, not into serve's own.
    let log = server.log.lock().unwrap().join("\n");
    assert!(!log.contains("inside print"), "{log}");
    assert_eq!(server.stop(), Some(0));
}

/// `name{labels} value` lines of a scrape, by `name{labels}`.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

#[test]
fn metrics_count_runs_steps_commits_queues_and_timers() {
    let scratch = Scratch::new();
    scratch.deploy("scenarios", &artifacts().scenarios);
    let server = Server::start(&scratch, &[]);
    let before = server.get("/metrics").expect(200);
    assert!(
        before
            .content_type
            .starts_with("application/openmetrics-text"),
        "{before:?}"
    );
    assert!(before.text.ends_with("# EOF\n"), "{}", before.text);

    for i in 0..3 {
        server.submit(
            "scenarios",
            &format!("steps-{i}"),
            json!({"scenario": "steps", "items": 3}),
            None,
        );
    }
    // A sleep long enough to unload the workflow, then a wake-up.
    server.submit(
        "scenarios",
        "sleeper",
        json!({"scenario": "sleep", "sleep_ms": 5500}),
        None,
    );
    server.submit(
        "scenarios",
        "parked",
        json!({"scenario": "steps"}),
        Some("nobody-serves-this"),
    );
    for id in ["steps-0", "steps-1", "steps-2", "sleeper"] {
        server.result(id);
    }

    let scrape = server.get("/metrics").expect(200);
    let got = samples(&scrape.text);
    let value = |name: &str| {
        got.get(name)
            .copied()
            .unwrap_or_else(|| panic!("no {name} in\n{}", scrape.text))
    };
    assert_eq!(value(r#"durable_runs_started_total{queue="default"}"#), 5.0);
    assert_eq!(
        value(r#"durable_runs_ended_total{status="completed"}"#),
        4.0
    );
    assert_eq!(value(r#"durable_runs_ended_total{status="sleeping"}"#), 1.0);
    assert!(value(r#"durable_steps_total{outcome="executed"}"#) >= 10.0);
    assert!(
        value(r#"durable_steps_total{outcome="replayed"}"#) >= 1.0,
        "the woken sleeper replays"
    );
    assert_eq!(value("durable_timer_lateness_seconds_count"), 1.0);
    assert!(value("durable_timer_lateness_seconds_sum") < 5.0);
    assert!(value("durable_commit_writes_count") >= 1.0);
    assert!(value("durable_commit_writes_sum") >= value("durable_commit_writes_count"));
    assert_eq!(
        value("durable_commit_seconds_count"),
        value("durable_commit_writes_count")
    );
    assert_eq!(
        value(r#"durable_queue_depth{queue="nobody-serves-this"}"#),
        1.0
    );
    // A served queue that is empty reads 0 rather than vanishing.
    assert_eq!(value(r#"durable_queue_depth{queue="default"}"#), 0.0);
    assert_eq!(value("durable_takeovers_total"), 0.0);
    assert_eq!(server.stop(), Some(0));
}

#[test]
fn signals_and_published_events_over_http() {
    let scratch = Scratch::new();
    scratch.deploy("scenarios", &artifacts().scenarios);
    let server = Server::start(&scratch, &[]);
    server.submit(
        "scenarios",
        "asks",
        json!({"scenario": "signals", "items": 2}),
        None,
    );
    // Waits for the first publication (the workflow may not have run yet).
    let progress = server
        .get("/v1/workflows/asks/events/progress?wait=30s")
        .expect(200)
        .json;
    assert_eq!(progress["value"], json!({"waiting": 0}));
    assert_eq!(progress["step"], "durable.event:progress#000001");
    // A key it has not published while it goes on: 202 and its record, so a
    // client asks again; after the wait, and at once without one.
    for path in [
        "/v1/workflows/asks/events/unheard?wait=300ms",
        "/v1/workflows/asks/events/unheard",
    ] {
        let pending = server.get(path).expect(202).json;
        assert_eq!(pending["workflow_id"], "asks", "{pending}");
        assert!(
            ["running", "waiting"].contains(&pending["status"].as_str().unwrap()),
            "{pending}"
        );
    }

    let sent = server
        .post_json(
            "/v1/workflows/asks/signals/go",
            &json!({"value": {"n": 1}, "signal_id": "first"}),
        )
        .expect(202)
        .json;
    assert_eq!(sent["duplicate"], false);
    let again = server
        .post_json(
            "/v1/workflows/asks/signals/go",
            &json!({"value": "ignored", "signal_id": "first"}),
        )
        .expect(200)
        .json;
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["value"], json!({"n": 1}), "the first one stands");
    // A signal's value may be as large as an input (16 MiB), not only the
    // 2 MB a body gets by default.
    let big = json!({"value": "x".repeat(3 << 20)});
    server
        .post_json("/v1/workflows/asks/signals/big", &big)
        .expect(202);
    // No body at all is a signal with a null value, as `{}` is.
    server
        .post_empty("/v1/workflows/asks/signals/go")
        .expect(202);
    let record = server.result("asks");
    assert_eq!(record["output"], json!({"received": [{"n": 1}, null]}));

    let history = server.get("/v1/workflows/asks/steps").expect(200).json;
    let taken: Vec<&Value> = history["signals"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["name"] == "go")
        .map(|s| &s["taken_by"])
        .collect();
    assert_eq!(
        taken,
        [
            &json!("durable.signal:go#000001"),
            &json!("durable.signal:go#000002")
        ]
    );
    assert_eq!(history["published"][0]["value"], "done");
    // Ended without publishing it: it never will, whatever the wait.
    let never = server
        .get("/v1/workflows/asks/events/unheard?wait=30s")
        .expect(404)
        .json;
    assert!(
        never["error"]["message"]
            .as_str()
            .unwrap()
            .contains("has ended"),
        "{never}"
    );

    // Refusals: a bad body, an unknown workflow, an ended one.
    let bad = server
        .post_json("/v1/workflows/asks/signals/go", &json!({"data": 1}))
        .expect(400)
        .json;
    assert!(
        bad["error"]["hint"].as_str().unwrap().contains("\"value\""),
        "{bad}"
    );
    server
        .post_json("/v1/workflows/nobody/signals/go", &json!({}))
        .expect(404);
    server
        .post_json("/v1/workflows/asks/signals/go", &json!({}))
        .expect(409);
}
