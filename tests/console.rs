//! The web console in a real browser: headless Chromium, driven over
//! WebDriver (chromedriver) with fantoccini, against a real `serve` running
//! real workflows. The screenshots go to
//! `target/tmp/console-screenshots/` for a person to look at.
//!
//! Chromium and chromedriver are Debian's `chromium` and `chromium-driver`;
//! `scripts/test.sh` installs them when they are missing.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use durable_tests::{Scratch, Server, artifacts, employee, run};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// chromedriver and the browser session it runs; both stopped when dropped.
struct Browser {
    driver: Child,
    client: Option<Client>,
    runtime: tokio::runtime::Runtime,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn start() -> Self {
        for program in [CHROMEDRIVER, CHROMIUM] {
            assert!(
                Path::new(program).exists(),
                "{program} is missing: the browser tests need Debian's `chromium` and \
                 `chromium-driver` (scripts/test.sh installs them)"
            );
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let profile = tempfile::tempdir().unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let capabilities: serde_json::Map<String, Value> = serde_json::from_value(json!({
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                // No network on these machines: nothing that phones home.
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--no-first-run", "--window-size=1400,1100",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }
        }))
        .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = runtime.block_on(async {
            loop {
                let connector = hyper_util::client::legacy::connect::HttpConnector::new();
                match ClientBuilder::new(connector)
                    .capabilities(capabilities.clone())
                    .connect(&url)
                    .await
                {
                    Ok(client) => break client,
                    // chromedriver is still starting.
                    Err(_) if Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(e) => panic!("no WebDriver session from chromedriver: {e}"),
                }
            }
        });
        Self {
            driver,
            client: Some(client),
            runtime,
            _profile: profile,
        }
    }

    fn client(&self) -> &Client {
        self.client.as_ref().unwrap()
    }

    fn goto(&self, url: &str) {
        self.runtime.block_on(self.client().goto(url)).unwrap();
    }

    /// Run `script` in the page and return what it returns.
    fn eval(&self, script: &str) -> Value {
        self.runtime
            .block_on(self.client().execute(script, vec![]))
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Wait until `script` returns something truthy, and return it.
    fn eventually(&self, what: &str, script: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let value = self.eval(script);
            let truthy = match &value {
                Value::Null | Value::Bool(false) => false,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return value;
            }
            if Instant::now() > deadline {
                let page = self.eval("return document.body.innerText");
                self.screenshot(&format!("timeout-{}", what.replace(' ', "-")));
                panic!("timed out waiting for {what}; the page shows:\n{page}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn click(&self, css: &str) {
        let mut tries = 0;
        loop {
            let clicked = self.runtime.block_on(async {
                self.client()
                    .wait()
                    .at_most(Duration::from_secs(30))
                    .for_element(Locator::Css(css))
                    .await?
                    .click()
                    .await
            });
            match clicked {
                Ok(()) => return,
                // Redrawn between finding and clicking (the page updates
                // itself): find it again.
                Err(e) if tries < 5 && e.to_string().contains("stale element") => tries += 1,
                Err(e) => panic!("cannot click {css}: {e}"),
            }
        }
    }

    fn text(&self, css: &str) -> String {
        self.eval(&format!(
            "const e = document.querySelector({}); return e ? e.innerText : null",
            json!(css)
        ))
        .as_str()
        .unwrap_or_default()
        .to_owned()
    }

    /// Save a screenshot of the window as `NAME.png`; returns its path.
    fn screenshot(&self, name: &str) -> PathBuf {
        let png = self
            .runtime
            .block_on(self.client().screenshot())
            .expect("take a screenshot");
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        eprintln!("screenshot: {}", path.display());
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            let _ = self.runtime.block_on(client.close());
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// A `serve --listen 127.0.0.1:0` on `scratch`, with the onboarding and
/// scenarios components deployed, and its base URL.
fn serve(scratch: &Scratch) -> (Server, String) {
    serve_with(scratch, &[])
}

/// [`serve`], with `extra` arguments for `serve`.
fn serve_with(scratch: &Scratch, extra: &[&str]) -> (Server, String) {
    scratch.deploy("onboarding", &artifacts().onboarding);
    scratch.deploy("scenarios", &artifacts().scenarios);
    let mut args = vec!["--listen", "127.0.0.1:0", "--concurrency", "8"];
    args.extend(extra);
    let server = Server::start(scratch, "serve", &args);
    let base = server.api_base();
    (server, base)
}

/// `start NAME --workflow-id ID --input INPUT`, and with `--wait` for its end.
fn start(scratch: &Scratch, name: &str, id: &str, input: &str, wait: bool) {
    let mut args = vec!["start", name, "--workflow-id", id, "--input", input];
    if wait {
        args.extend(["--wait", "--wait-timeout", "120s"]);
    }
    run(&mut scratch.host(&args)).expect_code(0);
}

/// The left and right edges (CSS pixels) and top of the bar of the step
/// whose key starts with `prefix`.
fn bar(browser: &Browser, prefix: &str) -> (f64, f64, f64) {
    let rect = browser.eventually(
        &format!("the bar of {prefix}"),
        &format!(
            "const bar = document.querySelector('.bar[data-key^=\"{prefix}\"]');
             if (!bar) return null;
             const r = bar.getBoundingClientRect();
             return [r.left, r.right, r.top];"
        ),
    );
    let n = |i: usize| rect[i].as_f64().unwrap();
    (n(0), n(1), n(2))
}

#[test]
fn the_console_lists_workflows_and_draws_their_timelines() {
    let scratch = Scratch::new();
    let (server, base) = serve(&scratch);
    // Each service call takes 400 ms, so that the two provisioning branches
    // are long bars that visibly overlap.
    start(
        &scratch,
        "onboarding",
        "emp-042",
        &employee("emp-042", 400),
        true,
    );
    for i in 0..3 {
        start(
            &scratch,
            "scenarios",
            &format!("batch-{i}"),
            &json!({"scenario": "steps", "items": 3}).to_string(),
            true,
        );
    }
    // A step that fails twice and is retried; a durable sleep of 800 ms.
    start(
        &scratch,
        "scenarios",
        "retrying",
        &json!({"scenario": "retry", "items": 3}).to_string(),
        true,
    );
    start(
        &scratch,
        "scenarios",
        "napping",
        &json!({"scenario": "sleep", "sleep_ms": 800}).to_string(),
        true,
    );
    start(
        &scratch,
        "scenarios",
        "broken",
        &json!({"scenario": "fail"}).to_string(),
        false,
    );
    start(
        &scratch,
        "scenarios",
        "long-history",
        &json!({"scenario": "steps", "items": 10000}).to_string(),
        true,
    );
    durable_tests::wait_until("`broken` to fail", Duration::from_secs(60), || {
        scratch.workflow_status("broken").as_deref() == Some("failed")
    });

    let browser = Browser::start();
    browser.goto(&format!("{base}/"));
    // The list: every workflow, newest first, with counts per status.
    let ids = browser.eventually(
        "the workflow rows",
        "const rows = [...document.querySelectorAll('tr[data-workflow-id]')];
         return rows.length === 8 ? rows.map(r => r.dataset.workflowId) : null;",
    );
    assert_eq!(
        ids,
        json!([
            "long-history",
            "broken",
            "napping",
            "retrying",
            "batch-2",
            "batch-1",
            "batch-0",
            "emp-042"
        ])
    );
    assert!(
        browser.text("#status-counts").contains("all8"),
        "{}",
        browser.text("#status-counts")
    );
    assert!(browser.text("#status-counts").contains("failed1"));
    assert!(
        browser
            .text("tr[data-workflow-id='broken']")
            .contains("failed")
    );
    browser.screenshot("list");

    // Filter by status, then search by id.
    browser.click("button[data-status='failed']");
    browser.eventually(
        "the failed filter",
        "const rows = document.querySelectorAll('tr[data-workflow-id]');
         return rows.length === 1 && rows[0].dataset.workflowId === 'broken';",
    );
    browser.click("button[data-status='all']");
    browser.eval(
        "const s = document.getElementById('search');
         s.value = 'batch'; s.dispatchEvent(new Event('input'));",
    );
    let found = browser.eventually(
        "the search",
        "const rows = [...document.querySelectorAll('tr[data-workflow-id]')];
         return rows.length === 3 ? rows.map(r => r.dataset.workflowId) : null;",
    );
    assert_eq!(found, json!(["batch-2", "batch-1", "batch-0"]));

    // The onboarding page: the two provisioning branches are bars on rows
    // of their own that overlap in time, after create_record's bar.
    browser.goto(&format!("{base}/#/workflows/emp-042"));
    browser.eventually(
        "the onboarding timeline",
        "return document.querySelectorAll('#timeline .bar').length === 4",
    );
    let record = bar(&browser, "create_record");
    let laptop = bar(&browser, "provision_laptop");
    let access = bar(&browser, "provision_access");
    let email = bar(&browser, "send_welcome_email");
    assert!(
        laptop.0 < access.1 && access.0 < laptop.1,
        "the branches overlap: laptop {laptop:?}, access {access:?}"
    );
    assert_ne!(laptop.2, access.2, "each branch has its own row");
    assert!(
        laptop.1 - laptop.0 > 50.0,
        "a 400 ms call is a long bar: {laptop:?}"
    );
    assert!(record.1 <= laptop.0 + 1.0 && record.1 <= access.0 + 1.0);
    assert!(email.0 + 1.0 >= laptop.1.max(access.1));
    assert_eq!(browser.text("#workflow-status"), "completed");
    assert!(browser.text("#workflow-output").contains("HR-emp-042"));
    // A step's details: its key, idempotency key and output.
    browser.click(".row[data-sequence='2']");
    let key = browser.eventually(
        "the step details",
        "return document.getElementById('step-idempotency-key')?.innerText",
    );
    assert!(
        key.as_str().unwrap().starts_with("emp-042/provision_"),
        "{key}"
    );
    assert!(browser.text("#step-output").contains("output"));
    let shot = browser.screenshot("onboarding");
    assert!(std::fs::metadata(shot).unwrap().len() > 10_000);

    // Retried attempts are marked on their step's row; a durable sleep is
    // a bar up to its wake-up time.
    browser.goto(&format!("{base}/#/workflows/retrying"));
    let marks = browser.eventually(
        "the retried attempts",
        "return document.querySelectorAll(\".bar[data-key^='flaky'] ~ .mark.retried\").length",
    );
    assert_eq!(marks, json!(2));
    browser.click(".row[data-sequence='1']");
    let attempts = browser.eventually(
        "the earlier attempts",
        "return document.querySelector('#step-detail .attempts')?.innerText",
    );
    assert!(
        attempts.as_str().unwrap().contains("attempt 1 failed"),
        "{attempts}"
    );
    browser.screenshot("retries");
    browser.goto(&format!("{base}/#/workflows/napping"));
    let sleep = bar(&browser, "durable.sleep");
    let after = bar(&browser, "after_sleep");
    assert!(
        sleep.1 - sleep.0 > 100.0,
        "800 ms of sleep is a long bar: {sleep:?}"
    );
    assert!(after.0 + 1.0 >= sleep.1, "{sleep:?} then {after:?}");

    // Fork the onboarding from its third step, from the page: a new
    // workflow with the first two steps copied, which `serve` then runs.
    browser.goto(&format!("{base}/#/workflows/emp-042"));
    browser.click(".row[data-sequence='3']");
    browser.click("#fork-from-step");
    browser.eventually(
        "the fork dialog",
        "return document.getElementById('confirm').open",
    );
    assert_eq!(
        browser.eval("return document.getElementById('confirm-from_step').value"),
        json!("3")
    );
    browser.eval("document.getElementById('confirm-workflow_id').value = 'emp-042-again'");
    browser.click("#confirm-ok");
    browser.eventually(
        "the forked workflow's page",
        // The page's own heading, not the address: the address changes
        // before the old page is replaced (hashchange is a later task).
        "return document.getElementById('workflow-id')?.innerText === 'emp-042-again'
            && document.getElementById('workflow-status')?.innerText === 'completed'",
    );
    let copied = scratch.number(
        "SELECT count(*) FROM steps WHERE workflow_id = 'emp-042-again' AND run_id IN
             (SELECT run_id FROM steps WHERE workflow_id = 'emp-042')",
    );
    assert_eq!(copied, 2, "the steps before step 3 were copied");
    let calls = scratch.step_executions();
    assert_eq!(calls.get("emp-042-again/create_record#000001"), None);
    assert_eq!(
        calls.get("emp-042-again/send_welcome_email#000001"),
        Some(&1)
    );

    // A failed workflow shows its error.
    browser.goto(&format!("{base}/#/workflows/broken"));
    let error = browser.eventually(
        "the error",
        "return document.getElementById('workflow-error')?.innerText",
    );
    assert!(
        error.as_str().unwrap().contains("gave up on purpose"),
        "{error}"
    );

    // 10,000 steps: all counted, few drawn, the last one reached by
    // scrolling.
    browser.goto(&format!("{base}/#/workflows/long-history"));
    browser.eventually(
        "the long history",
        "return document.getElementById('step-count')?.innerText.includes('10000 completed of 10000')",
    );
    let drawn = browser.eval("return document.querySelectorAll('#timeline .row').length");
    assert!(
        drawn.as_u64().unwrap() < 200,
        "only the rows in view are in the page: {drawn}"
    );
    browser.eval("const t = document.getElementById('timeline'); t.scrollTop = t.scrollHeight;");
    browser.eventually(
        "the last step's row",
        "return document.querySelector(\".row[data-sequence='10000']\") !== null",
    );
    browser.click(".row[data-sequence='10000']");
    let last = browser.eventually(
        "the last step's details",
        "return document.getElementById('step-key')?.innerText",
    );
    assert!(last.as_str().unwrap().starts_with("10000."), "{last}");
    browser.screenshot("long-history");
    drop(server);
}

#[test]
fn a_workflow_page_follows_a_running_workflow_and_cancels_it() {
    let scratch = Scratch::new();
    let (server, base) = serve(&scratch);
    let browser = Browser::start();

    // Twelve steps of 700 ms: the page shows them arrive without a reload
    // (long enough that a page slow to open on a busy machine still sees
    // several).
    start(
        &scratch,
        "scenarios",
        "ticking",
        &json!({"scenario": "slow", "items": 12, "sleep_ms": 700}).to_string(),
        false,
    );
    browser.goto(&format!("{base}/#/workflows/ticking"));
    browser.eventually(
        "the running workflow",
        "return document.getElementById('workflow-status')?.innerText === 'running'",
    );
    browser.eval("window.notReloaded = true");
    let mut seen = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while browser.text("#workflow-status") != "completed" {
        assert!(Instant::now() < deadline, "the page never showed the end");
        let bars = browser.eval("return document.querySelectorAll('#timeline .bar').length");
        seen.insert(bars.as_u64().unwrap());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        seen.len() >= 3,
        "the timeline grew step by step on its own: saw {seen:?} bars"
    );
    assert_eq!(
        browser.eval("return window.notReloaded === true"),
        json!(true)
    );
    browser.eventually(
        "all twelve bars",
        "return document.querySelectorAll('#timeline .bar.completed').length === 12",
    );
    assert!(browser.text("#workflow-output").contains("12"));

    // Cancel from the page, after a confirmation.
    start(
        &scratch,
        "scenarios",
        "doomed",
        &json!({"scenario": "slow", "items": 500, "sleep_ms": 200}).to_string(),
        false,
    );
    browser.goto(&format!("{base}/#/workflows/doomed"));
    browser.eventually(
        "a step of the doomed workflow",
        "return document.querySelectorAll('#timeline .bar').length >= 2",
    );
    browser.click("#cancel-button");
    browser.eventually(
        "the confirmation",
        "return document.getElementById('confirm').open",
    );
    browser.screenshot("cancel-confirmation");
    assert_eq!(
        scratch.workflow_status("doomed").as_deref(),
        Some("running")
    );
    browser.click("#confirm-ok");
    browser.eventually(
        "the cancelled status",
        "return document.getElementById('workflow-status')?.innerText === 'cancelled'",
    );
    assert_eq!(
        scratch.workflow_status("doomed").as_deref(),
        Some("cancelled")
    );
    let done = scratch
        .number("SELECT count(*) FROM steps WHERE workflow_id = 'doomed' AND status = 'completed'");
    assert!(done < 500, "it stopped early: {done} steps");
    assert!(
        browser.eval("return document.getElementById('cancel-button').disabled") == json!(true),
        "a finished workflow cannot be cancelled again"
    );
    browser.screenshot("cancelled");
    drop(server);

    // A server with a token: the page loads, asks for the token, and with
    // it shows the workflows.
    let guarded = Scratch::new();
    let token_file = guarded.path().join("token");
    std::fs::write(&token_file, "s3cret\n").unwrap();
    let (_server, base) = serve_with(&guarded, &["--token-file", token_file.to_str().unwrap()]);
    start(
        &guarded,
        "scenarios",
        "behind-a-token",
        &json!({"scenario": "steps", "items": 1}).to_string(),
        true,
    );
    browser.goto(&format!("{base}/"));
    browser.eventually(
        "the token dialog",
        "return document.getElementById('token').open",
    );
    assert_eq!(
        browser.eval("return document.querySelectorAll('tr[data-workflow-id]').length"),
        json!(0)
    );
    browser.eval(
        "document.getElementById('token-input').value = 's3cret';
         document.getElementById('token-form').requestSubmit();",
    );
    browser.eventually(
        "the workflows behind the token",
        "return document.querySelector(\"tr[data-workflow-id='behind-a-token']\") !== null",
    );
}

/// A suspended workflow keeps the signals sent to it for its resume: its
/// page shows one sent after it was drawn (it polled only the record,
/// which a signal does not change, as for an ended workflow).
#[test]
fn a_suspended_workflows_page_shows_a_signal_sent_to_it() {
    let scratch = Scratch::new();
    let (server, base) = serve(&scratch);
    let browser = Browser::start();
    start(
        &scratch,
        "scenarios",
        "stuck",
        &json!({"scenario": "panic"}).to_string(),
        false,
    );
    browser.goto(&format!("{base}/#/workflows/stuck"));
    browser.eventually(
        "the suspended workflow",
        "return document.getElementById('workflow-status')?.innerText === 'suspended'
            && document.getElementById('signal-button').disabled === false",
    );
    run(&mut scratch.host(&["signal", "stuck", "later", "--data", r#"{"n": 1}"#])).expect_code(0);
    let shown = browser.eventually(
        "the signal on the page",
        "return document.querySelector('#signals li[data-signal-id]')?.innerText",
    );
    let shown = shown.as_str().unwrap();
    assert!(
        shown.contains("later") && shown.contains("not taken yet"),
        "{shown}"
    );
    drop(server);
}

#[test]
fn a_waiting_workflow_takes_a_signal_sent_from_its_page() {
    let scratch = Scratch::new();
    let (server, base) = serve(&scratch);
    let browser = Browser::start();
    start(
        &scratch,
        "scenarios",
        "asking",
        &json!({"scenario": "signals", "items": 1}).to_string(),
        false,
    );
    browser.goto(&format!("{base}/#/workflows/asking"));
    let published = browser.eventually(
        "the waiting workflow and what it published",
        "return document.getElementById('workflow-status')?.innerText === 'waiting'
            && document.querySelector('#published dd[data-key=\"progress\"]')?.innerText",
    );
    assert!(
        published.as_str().unwrap().contains(r#"{"waiting":0}"#),
        "{published}"
    );
    browser.click("#signal-button");
    browser.eventually(
        "the signal dialog",
        "return document.getElementById('confirm').open",
    );
    browser.eval(
        "document.getElementById('confirm-name').value = 'go';
         document.getElementById('confirm-value').value = '{\"ok\": true}';",
    );
    browser.screenshot("signal-dialog");
    browser.click("#confirm-ok");
    browser.eventually(
        "the signal taken and the workflow completed",
        "return document.getElementById('workflow-status')?.innerText === 'completed'
            && document.querySelector('#signals li')?.innerText.includes('durable.signal:go#000001')",
    );
    assert!(browser.text("#workflow-output").contains("ok"));
    // The wait is drawn from when it began to when the signal came.
    let wait = bar(&browser, "durable.signal:go");
    assert!(wait.1 - wait.0 > 50.0, "the wait is a long bar: {wait:?}");
    assert_eq!(
        browser.eval("return document.querySelector(\".bar[data-key^='durable.signal:go']\").classList.contains('sleep')"),
        json!(true)
    );
    assert!(
        browser.eval("return document.getElementById('signal-button').disabled") == json!(true),
        "an ended workflow takes no signals"
    );
    browser.screenshot("signalled");
    drop(server);
}
