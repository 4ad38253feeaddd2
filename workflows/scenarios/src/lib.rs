//! Test workflows for the host's edge cases, chosen by the input's
//! `scenario` field. Every executed step body appends its key to
//! `/ledger/effects.log` (when `/ledger` is granted), so tests can count
//! real executions.

use std::fs::OpenOptions;
use std::io::Write;
use std::time::Duration;

use durable_sdk::{Branch, Context, Error, RetryPolicy, current_step};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Deserialize)]
struct Input {
    scenario: String,
    #[serde(default)]
    items: u32,
    #[serde(default)]
    sleep_ms: u64,
    #[serde(default)]
    burn_ms: u64,
    /// A step name, for scenarios that take one.
    #[serde(default)]
    name: String,
    /// MiB each parallel branch allocates (`mem_branches`).
    #[serde(default)]
    mib: u32,
    /// How long a branch holds its memory before returning.
    #[serde(default)]
    hold_ms: u64,
    /// KiB each step returns (`big_steps`).
    #[serde(default)]
    kib: u32,
    /// What each execution of a planned step does, in order: `fail`, `ok`
    /// or `sleep:<ms>` (then ok); the last entry repeats.
    #[serde(default)]
    plan: Vec<String>,
    /// Backoff between the attempts of a planned step.
    #[serde(default)]
    backoff_ms: u64,
    /// How long each wait for a signal may take (`signals`); none: forever.
    #[serde(default)]
    timeout_ms: Option<u64>,
    /// A pause after each child start (`children`), so that a cancel comes
    /// while it is still starting them.
    #[serde(default)]
    pace_ms: u64,
    /// The URL the `http*` scenarios call.
    #[serde(default)]
    url: String,
}

fn scenarios(ctx: &Context, input: Input) -> Result<Value, Error> {
    match input.scenario.as_str() {
        "loop" => loops_and_branches(ctx, input.items),
        "auto_ids" => auto_ids(ctx),
        "reorder" => reorder(ctx),
        "step_error" => step_error(ctx),
        "panic" => panic_in_step(ctx),
        "stderr_trap" => stderr_then_trap(ctx),
        "fail" => Err(durable_sdk::error!("the workflow gave up on purpose")),
        "invalid_json" => invalid_json(ctx),
        "slow" => slow(ctx, input.items, input.sleep_ms),
        "sandbox" => Ok(sandbox_view()),
        "parallel" => parallel(ctx, input.items, input.sleep_ms, input.burn_ms),
        "fast_and_slow" => fast_and_slow(ctx, input.sleep_ms),
        "sequential_burn" => sequential_burn(ctx, input.items, input.burn_ms),
        "branch_panic" => branch_panic(ctx),
        "retry" => retry(ctx, input.items),
        "retry_permanent" => retry_permanent(ctx),
        "sleep" => durable_sleep(ctx, input.sleep_ms),
        "clock" => clock(ctx),
        "spin" => spin(ctx),
        "hog" => hog(ctx),
        "big_output" => big_output(ctx, input.items),
        "steps" => trivial_steps(ctx, input.items),
        "compensate" => compensate(ctx, input.sleep_ms),
        "error_codes" => error_codes(ctx),
        "burn_between" => burn_between(ctx, input.items, input.burn_ms),
        "mem_branches" => mem_branches(ctx, input.items, input.mib, input.hold_ms),
        "hold" => hold(ctx, input.items, input.sleep_ms),
        "idempotency" => idempotency(ctx, &input.name),
        "boom" => boom_between_steps(ctx),
        "grants" => recorded_grants(ctx),
        "http" => http_call(ctx, &input.url, input.hold_ms),
        "http_branches" => http_branches(ctx, &input.url, input.items),
        "http_between" => http_between(ctx, &input.url),
        "plan_step" => plan_step(ctx, input.items, input.backoff_ms, input.plan),
        "plan_branch" => plan_branch(ctx, input.items, input.backoff_ms, input.plan),
        "logs" => logs(ctx),
        "output" => output(ctx, input.sleep_ms),
        "big_steps" => big_steps(ctx, input.items, input.kib),
        "keyed" => keyed_steps(ctx, input.items, input.sleep_ms),
        "keyed_sleep" => keyed_sleep(ctx, input.sleep_ms),
        "signals" => signals(ctx, input.items, input.sleep_ms, input.timeout_ms),
        "children" => children(ctx, &input),
        other => Err(durable_sdk::error!("unknown scenario `{other}`")),
    }
}

/// A step fails with a coded error; the workflow matches on the code (the
/// same on replay) and fails with a code of its own.
fn error_codes(ctx: &Context) -> Result<Value, Error> {
    let charged: Result<String, Error> = ctx.step("charge", || {
        effect()?;
        Err(Error::new("the card was declined").with_code("card_declined"))
    });
    let fallback = match charged {
        Err(e) if e.code() == Some("card_declined") => ctx.step("invoice", || {
            effect()?;
            Ok("invoice sent".to_owned())
        })?,
        other => other?,
    };
    Err(Error::new(format!("paid by {fallback}")).with_code("needs_follow_up"))
}

/// Reserves, waits, and releases what it reserved when it is cancelled.
fn compensate(ctx: &Context, sleep_ms: u64) -> Result<Value, Error> {
    let reservation: String = ctx.step("reserve", || {
        effect()?;
        Ok("R-1".to_owned())
    })?;
    match ctx.sleep(Duration::from_millis(sleep_ms)) {
        Err(cancelled) if cancelled.is_cancelled() => {
            ctx.step("release", || {
                effect()?;
                Ok(format!("released {reservation}"))
            })?;
            Err(cancelled)
        }
        other => {
            other?;
            ctx.step("confirm", || {
                effect()?;
                Ok(reservation.clone())
            })?;
            Ok(json!({ "confirmed": reservation }))
        }
    }
}

/// A step of `sleep_ms` (time to send signals before the first wait), then
/// `items` waits for the signal `go`, each followed by a step, publishing
/// its progress as the event `progress`.
fn signals(
    ctx: &Context,
    items: u32,
    sleep_ms: u64,
    timeout_ms: Option<u64>,
) -> Result<Value, Error> {
    ctx.step("before", || {
        effect()?;
        std::thread::sleep(Duration::from_millis(sleep_ms));
        Ok(())
    })?;
    let mut received = Vec::new();
    for waited in 0..items {
        ctx.set_event("progress", &json!({ "waiting": waited }))?;
        let value: Option<Value> = ctx.wait_signal("go", timeout_ms.map(Duration::from_millis))?;
        ctx.step("after_signal", effect)?;
        received.push(value);
    }
    ctx.set_event("progress", "done")?;
    Ok(json!({ "received": received }))
}

/// `items` children of this same component, `<id>.child-<n>`, each the
/// `slow` scenario (two steps of `sleep_ms`), `pace_ms` apart, then a step,
/// then a wait for each child in turn; returns their outputs (`null` for a
/// timeout).
fn children(ctx: &Context, input: &Input) -> Result<Value, Error> {
    let id = ctx.workflow_id();
    let child = json!({"scenario": "slow", "items": 2, "sleep_ms": input.sleep_ms});
    let started = (0..input.items)
        .map(|n| {
            let started = ctx.start_child(&format!("{id}.child-{n}"), None, &child);
            std::thread::sleep(Duration::from_millis(input.pace_ms));
            started
        })
        .collect::<Result<Vec<_>, Error>>()?;
    ctx.step("all_started", effect)?;
    let timeout = input.timeout_ms.map(Duration::from_millis);
    let outputs = started
        .iter()
        .map(|child| ctx.await_child::<Value>(child, timeout))
        .collect::<Result<Vec<_>, Error>>()?;
    Ok(json!({ "children": outputs }))
}

/// Records that the current step's body really ran.
fn effect() -> Result<(), Error> {
    let Some(step) = current_step() else {
        return Err(durable_sdk::error!("effect() called outside a step"));
    };
    if std::path::Path::new("/ledger").is_dir() {
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open("/ledger/effects.log")?;
        // One write per line: concurrent branches append to the same file.
        log.write_all(format!("{}\n", step.key).as_bytes())?;
    }
    Ok(())
}

/// The same step names used in a loop and under a condition.
fn loops_and_branches(ctx: &Context, items: u32) -> Result<Value, Error> {
    let mut charged = Vec::new();
    for i in 0..items {
        let amount: u32 = ctx.step("charge", || {
            effect()?;
            Ok(i * 10)
        })?;
        if i % 2 == 0 {
            ctx.step("audit", || {
                effect()?;
                Ok(format!("audited {i}"))
            })?;
        }
        charged.push(amount);
    }
    let total: u32 = ctx.step("total", || {
        effect()?;
        Ok(charged.iter().sum())
    })?;
    Ok(json!({ "charged": charged, "total": total }))
}

/// Unnamed steps: named after their call site, stable across runs.
fn auto_ids(ctx: &Context) -> Result<Value, Error> {
    let mut keys = Vec::new();
    for _ in 0..2 {
        keys.push(ctx.step("", || {
            effect()?;
            Ok(current_step().map(|s| s.key))
        })?);
    }
    keys.push(ctx.step("", || {
        effect()?;
        Ok(current_step().map(|s| s.key))
    })?);
    Ok(json!({ "keys": keys }))
}

/// Step order read from `/ledger/order` (default `ab`) outside any step, to
/// play a code change between runs.
fn reorder(ctx: &Context) -> Result<Value, Error> {
    let order = std::fs::read_to_string("/ledger/order").unwrap_or_else(|_| "ab".to_owned());
    let mut done = Vec::new();
    for name in order.trim().chars() {
        let name = name.to_string();
        done.push(ctx.step(&name, || {
            effect()?;
            Ok(name.clone())
        })?);
    }
    Ok(json!(done))
}

/// A step's error is recorded, handled, and replayed as the same error.
fn step_error(ctx: &Context) -> Result<Value, Error> {
    let attempt: Result<u32, Error> = ctx.step("flaky_call", || {
        effect()?;
        Err(durable_sdk::error!("service said no"))
    });
    let fallback: String = ctx.step("fallback", || {
        effect()?;
        Ok("used the fallback".to_owned())
    })?;
    Ok(json!({ "error": attempt.unwrap_err().message(), "fallback": fallback }))
}

fn panic_in_step(ctx: &Context) -> Result<Value, Error> {
    ctx.step("fine", || {
        effect()?;
        Ok(1)
    })?;
    ctx.step("explode", || -> Result<u32, Error> {
        effect()?;
        panic!("boom: the step blew up")
    })?;
    Ok(Value::Null)
}

/// A guest that dies as a JavaScript one does on an uncaught exception: it
/// prints the error on stderr, then traps without a Rust panic.
fn stderr_then_trap(ctx: &Context) -> Result<Value, Error> {
    ctx.step("charge", || -> Result<u32, Error> {
        eprintln!("warming up");
        eprintln!("Error: the card was declined");
        eprintln!("    at charge (workflow.js:12:9)");
        std::process::abort()
    })?;
    Ok(Value::Null)
}

/// A guest that breaks the contract, as a non-Rust one might: it bypasses
/// the SDK and reports a value that is not JSON.
fn invalid_json(_ctx: &Context) -> Result<Value, Error> {
    use durable_sdk::bindings::durable::workflow::durable_step as host;
    if let host::StepStart::Execute(run) = host::begin_step("raw") {
        host::finish_step(&run.key, &Ok("{not json".to_owned()));
    }
    Ok(Value::Null)
}

fn slow(ctx: &Context, items: u32, sleep_ms: u64) -> Result<Value, Error> {
    for i in 0..items {
        ctx.step("tick", || {
            std::thread::sleep(std::time::Duration::from_millis(sleep_ms));
            effect()?;
            Ok(i)
        })?;
    }
    Ok(json!(items))
}

#[derive(Serialize, Deserialize)]
struct Work {
    index: u32,
    /// Sleep a random time up to this, so branches finish in a random order.
    max_sleep_ms: u64,
    /// Keep a core busy this long.
    burn_ms: u64,
}

/// A branch body: sleeps and burns as asked, records its effect.
fn work(job: Work) -> Result<u32, Error> {
    if job.max_sleep_ms > 0 {
        std::thread::sleep(std::time::Duration::from_millis(random_below(
            job.max_sleep_ms + 1,
        )));
    }
    burn(job.burn_ms);
    effect()?;
    Ok(job.index * job.index)
}

/// `items` branches named `work`, with random durations.
fn parallel(ctx: &Context, items: u32, max_sleep_ms: u64, burn_ms: u64) -> Result<Value, Error> {
    let branches = (0..items)
        .map(|index| {
            Branch::new(
                "work",
                work,
                &Work {
                    index,
                    max_sleep_ms,
                    burn_ms,
                },
            )
        })
        .collect();
    let results = ctx
        .parallel(branches)
        .into_iter()
        .collect::<Result<Vec<u32>, Error>>()?;
    Ok(json!(results))
}

/// The same CPU work as `parallel`, one step after the other: the baseline
/// for the parallel speed-up.
fn sequential_burn(ctx: &Context, items: u32, burn_ms: u64) -> Result<Value, Error> {
    let mut results = Vec::new();
    for index in 0..items {
        results.push(ctx.step("work", || {
            work(Work {
                index,
                max_sleep_ms: 0,
                burn_ms,
            })
        })?);
    }
    Ok(json!(results))
}

/// One branch finishes at once, the other takes `sleep_ms`.
fn fast_and_slow(ctx: &Context, sleep_ms: u64) -> Result<Value, Error> {
    let (fast, slow) = ctx.join(
        Branch::new(
            "fast",
            work,
            &Work {
                index: 1,
                max_sleep_ms: 0,
                burn_ms: 0,
            },
        ),
        Branch::new("slow", sleepy, &sleep_ms),
    );
    Ok(json!({ "fast": fast?, "slow": slow? }))
}

fn sleepy(sleep_ms: u64) -> Result<String, Error> {
    std::thread::sleep(std::time::Duration::from_millis(sleep_ms));
    effect()?;
    Ok(format!("slept {sleep_ms} ms"))
}

/// One branch panics: it fails alone, its sibling's result stands.
fn branch_panic(ctx: &Context) -> Result<Value, Error> {
    let (fine, broken) = ctx.join(
        Branch::new(
            "fine",
            work,
            &Work {
                index: 3,
                max_sleep_ms: 0,
                burn_ms: 0,
            },
        ),
        Branch::new("broken", explode, &()),
    );
    Ok(json!({ "fine": fine?, "broken_error": broken.unwrap_err().message() }))
}

fn explode((): ()) -> Result<u32, Error> {
    effect()?;
    panic!("branch blew up")
}

/// Keep a core busy for about `ms` milliseconds: a fixed amount of work
/// (not a wall-clock loop), so that branches sharing a core take longer,
/// as real CPU-bound work would.
fn burn(ms: u64) {
    // About a millisecond of one core of the machine the benchmarks ran on.
    const ROUNDS_PER_MS: u64 = 900_000;
    let mut x: u64 = 1;
    for _ in 0..ms * ROUNDS_PER_MS {
        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
}

fn random_below(bound: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from WASI's random source.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u8(0);
    hasher.finish() % bound.max(1)
}

/// A step that fails until its attempt `succeed_on`, under a retry policy
/// of 4 attempts with short backoffs.
fn retry(ctx: &Context, succeed_on: u32) -> Result<Value, Error> {
    let policy =
        RetryPolicy::attempts(4).backoff(Duration::from_millis(50), Duration::from_millis(80));
    let result = ctx.step_with_retry("flaky", &policy, || {
        effect()?;
        let attempt = current_step().map_or(0, |s| s.attempt);
        if attempt < succeed_on {
            Err(durable_sdk::error!("attempt {attempt} failed"))
        } else {
            Ok(attempt)
        }
    });
    let after = ctx.step("after", || Ok("ran".to_owned()))?;
    Ok(json!({ "result": result.map_err(|e| e.message().to_owned()), "after": after }))
}

fn retry_permanent(ctx: &Context) -> Result<Value, Error> {
    let result: Result<u32, Error> =
        ctx.step_with_retry("refused", &RetryPolicy::attempts(5), || {
            effect()?;
            Err(Error::permanent("the service refused the request"))
        });
    Ok(json!({ "error": result.unwrap_err().message() }))
}

fn durable_sleep(ctx: &Context, sleep_ms: u64) -> Result<Value, Error> {
    ctx.step("before_sleep", || Ok(1))?;
    ctx.sleep(Duration::from_millis(sleep_ms))?;
    ctx.step("after_sleep", || {
        effect()?;
        Ok(2)
    })?;
    Ok(json!("woke up"))
}

fn clock(ctx: &Context) -> Result<Value, Error> {
    let now = ctx
        .now()?
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(Error::new)?
        .as_millis() as u64;
    let random = ctx.random()?;
    let uuid = ctx.uuid()?;
    ctx.step("last", || Ok(()))?;
    Ok(json!({ "now_ms": now, "random": random, "uuid": uuid }))
}

/// Never returns: for --timeout.
fn spin(ctx: &Context) -> Result<Value, Error> {
    ctx.step("spin", || {
        let mut x = 0u64;
        loop {
            x = std::hint::black_box(x.wrapping_add(1));
        }
    })
}

/// Allocates without bound: for --max-memory.
fn hog(ctx: &Context) -> Result<Value, Error> {
    ctx.step("hog", || {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            hoard.push(vec![1u8; 1 << 20]);
            std::hint::black_box(&hoard);
        }
    })
}

/// `items` steps that do nothing but return their number: for measuring
/// what a step costs the host.
fn trivial_steps(ctx: &Context, items: u32) -> Result<Value, Error> {
    let mut sum = 0u64;
    for i in 0..items {
        sum += ctx.step("s", || Ok(u64::from(i)))?;
    }
    Ok(json!(sum))
}

/// A step returning `mib` MiB.
fn big_output(ctx: &Context, mib: u32) -> Result<Value, Error> {
    let big: String = ctx.step("big", || Ok("x".repeat((mib as usize) << 20)))?;
    Ok(json!(big.len()))
}

/// What the guest can see of the host, for the sandbox test. (Reads
/// outside steps are fine here: the test only looks at one run.)
fn sandbox_view() -> Value {
    let env: Vec<(String, String)> = std::env::vars().collect();
    let probe_port = std::env::var("PROBE_PORT").ok();
    let connect = probe_port.map(|port| {
        std::net::TcpStream::connect(("127.0.0.1", port.parse::<u16>().unwrap_or(9)))
            .map(|_| "connected".to_owned())
            .unwrap_or_else(|e| e.to_string())
    });
    json!({
        "env": env,
        "etc_passwd_readable": std::fs::read("/etc/passwd").is_ok(),
        "ledger_visible": std::path::Path::new("/ledger").is_dir(),
        "connect": connect,
    })
}

durable_sdk::workflow!(scenarios);

/// `items` steps with `burn_ms` of CPU-busy (wall-clock) time after each:
/// a run spends nearly all its time between steps.
fn burn_between(ctx: &Context, items: u32, burn_ms: u64) -> Result<Value, Error> {
    let mut sum = 0u64;
    for i in 0..items {
        sum += ctx.step("step", || {
            effect()?;
            Ok(u64::from(i))
        })?;
        busy_for(Duration::from_millis(burn_ms));
    }
    Ok(json!(sum))
}

/// Keep a core busy until `time` has passed on the (monotonic) clock.
fn busy_for(time: Duration) {
    let started = std::time::Instant::now();
    let mut x: u64 = 1;
    while started.elapsed() < time {
        for _ in 0..10_000 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
}

#[derive(Serialize, Deserialize)]
struct MemJob {
    mib: u32,
    hold_ms: u64,
}

/// `items` branches, each allocating and touching `mib` MiB and holding it
/// for `hold_ms`: the result of each, `{"ok": mib}` or `{"err": message}`.
fn mem_branches(ctx: &Context, items: u32, mib: u32, hold_ms: u64) -> Result<Value, Error> {
    let branches = (0..items)
        .map(|_| Branch::new("mem", touch_memory, &MemJob { mib, hold_ms }))
        .collect();
    let results: Vec<Value> = ctx
        .parallel(branches)
        .into_iter()
        .map(|result| match result {
            Ok(mib) => json!({ "ok": mib }),
            Err(e) => json!({ "err": e.message() }),
        })
        .collect();
    Ok(json!(results))
}

fn touch_memory(job: MemJob) -> Result<u32, Error> {
    let mut block = vec![0u8; (job.mib as usize) << 20];
    for i in (0..block.len()).step_by(4096) {
        block[i] = 1;
    }
    std::hint::black_box(&block);
    std::thread::sleep(Duration::from_millis(job.hold_ms));
    effect()?;
    Ok(job.mib)
}

/// `items` (at least one) steps `hold` that record their effect first,
/// then sleep `sleep_ms` inside the body.
fn hold(ctx: &Context, items: u32, sleep_ms: u64) -> Result<Value, Error> {
    let items = items.max(1);
    for i in 0..items {
        ctx.step("hold", || {
            effect()?;
            std::thread::sleep(Duration::from_millis(sleep_ms));
            Ok(i)
        })?;
    }
    Ok(json!(items))
}

/// The idempotency key the host hands a step called `name`.
fn idempotency(ctx: &Context, name: &str) -> Result<Value, Error> {
    let key: String = ctx.step(name, || {
        effect()?;
        Ok(current_step().expect("inside a step").idempotency_key)
    })?;
    Ok(json!(key))
}

/// POSTs to `url` in the step `charge` and returns the answer; the first
/// attempt then holds the step open for `hold_ms`, for a kill to land
/// between the call and the checkpoint.
fn http_call(ctx: &Context, url: &str, hold_ms: u64) -> Result<Value, Error> {
    let answer: Value = ctx.step("charge", || {
        let answer = durable_sdk::http::post(url)
            .json(&json!({ "amount_cents": 500 }))?
            .send()?
            .error_for_status()?
            .json()?;
        if current_step().expect("inside a step").attempt == 1 {
            std::thread::sleep(Duration::from_millis(hold_ms));
        }
        Ok(answer)
    })?;
    Ok(answer)
}

/// `items` parallel branches, each POSTing to `url`.
fn http_branches(ctx: &Context, url: &str, items: u32) -> Result<Value, Error> {
    fn call(url: String) -> Result<Value, Error> {
        durable_sdk::http::post(&url)
            .send()?
            .error_for_status()?
            .json()
    }
    let branches = (0..items)
        .map(|_| Branch::new("notify", call, &url.to_owned()))
        .collect();
    let answers = ctx
        .parallel(branches)
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    Ok(json!(answers))
}

/// A request from workflow code between steps, made with wasi:http itself
/// (the SDK would not send it): what the host answers.
fn http_between(ctx: &Context, url: &str) -> Result<Value, Error> {
    use wstd::http::{Body, Client, Request};
    let request = Request::get(url).body(Body::empty())?;
    let sent = wstd::runtime::block_on(Client::new().send(request));
    let host_said = match sent {
        Ok(response) => format!("sent: {}", response.status()),
        Err(error) => format!("{error:?}"),
    };
    let sdk_said = durable_sdk::http::get(url)
        .send()
        .err()
        .map(|e| e.to_string());
    ctx.step("after", || Ok(1))?;
    Ok(json!({ "host": host_said, "sdk": sdk_said }))
}

/// Panics between its two steps when `BOOM=1` (a bug in workflow code,
/// outside any step).
fn boom_between_steps(ctx: &Context) -> Result<Value, Error> {
    ctx.step("first", || {
        effect()?;
        Ok(1)
    })?;
    if std::env::var("BOOM").as_deref() == Ok("1") {
        panic!("BOOM between the steps");
    }
    ctx.step("second", || {
        effect()?;
        Ok(2)
    })?;
    Ok(json!("survived"))
}

/// Two steps that need what the workflow was granted: `/ledger` (they
/// fail without it) and the variable `X`.
fn recorded_grants(ctx: &Context) -> Result<Value, Error> {
    ctx.step("a", required_effect)?;
    let x: Option<String> = ctx.step("b", || {
        required_effect()?;
        Ok(std::env::var("X").ok())
    })?;
    Ok(json!({ "x": x }))
}

/// Like [`effect`], but an error when `/ledger` is not granted.
fn required_effect() -> Result<(), Error> {
    if !std::path::Path::new("/ledger").is_dir() {
        return Err(durable_sdk::error!("/ledger is not granted"));
    }
    effect()
}

/// One step `planned` retried under `attempts` attempts with a fixed
/// backoff, each execution following `plan`.
fn plan_step(
    ctx: &Context,
    attempts: u32,
    backoff_ms: u64,
    plan: Vec<String>,
) -> Result<Value, Error> {
    let backoff = Duration::from_millis(backoff_ms);
    let policy = RetryPolicy::attempts(attempts).backoff(backoff, backoff);
    let result = ctx.step_with_retry("planned", &policy, || follow_plan(&plan));
    Ok(json!({ "result": result.map_err(|e| e.message().to_owned()) }))
}

/// The same as a parallel branch with a retry policy.
fn plan_branch(
    ctx: &Context,
    attempts: u32,
    backoff_ms: u64,
    plan: Vec<String>,
) -> Result<Value, Error> {
    let backoff = Duration::from_millis(backoff_ms);
    let policy = RetryPolicy::attempts(attempts).backoff(backoff, backoff);
    let mut results = ctx.parallel(vec![
        Branch::new("planned", follow_plan_owned, &plan).retry(&policy),
    ]);
    let result = results.pop().expect("one result per branch");
    Ok(json!({ "result": result.map_err(|e| e.message().to_owned()) }))
}

fn follow_plan_owned(plan: Vec<String>) -> Result<Value, Error> {
    follow_plan(&plan)
}

/// One execution of a planned step: counts executions (across runs and
/// instances) in `/ledger/<key>.executions`, one line each with what the
/// host announced, and does what the plan says for this execution.
fn follow_plan(plan: &[String]) -> Result<Value, Error> {
    let step = current_step().ok_or_else(|| durable_sdk::error!("not in a step"))?;
    effect()?;
    let path = format!("/ledger/{}.executions", step.key);
    let before = std::fs::read_to_string(&path).unwrap_or_default();
    let execution = before.lines().count() + 1;
    let mut log = OpenOptions::new().create(true).append(true).open(&path)?;
    log.write_all(
        format!(
            "execution={execution} attempt={} failures={}\n",
            step.attempt, step.failures
        )
        .as_bytes(),
    )?;
    drop(log);
    let action = plan
        .get(execution - 1)
        .or(plan.last())
        .map_or("ok", String::as_str);
    if let Some(ms) = action.strip_prefix("sleep:") {
        std::thread::sleep(Duration::from_millis(ms.parse().unwrap_or(0)));
    } else if action == "fail" {
        return Err(durable_sdk::error!("execution {execution} failed"));
    }
    Ok(json!({ "execution": execution, "attempt": step.attempt, "failures": step.failures }))
}

/// Logs around its steps, and returns the workflow id the context knows.
fn logs(ctx: &Context) -> Result<Value, Error> {
    ctx.log("before the first step");
    ctx.step("s", || {
        effect()?;
        Ok(1)
    })?;
    ctx.log("after the first step");
    ctx.step("t", || {
        effect()?;
        Ok(2)
    })?;
    ctx.log(format!("done as {}", ctx.workflow_id()));
    Ok(json!(ctx.workflow_id()))
}

/// Prints on stdout and stderr from workflow code, from a step body and
/// from a parallel branch, around a `ctx.log`; then holds in a step for
/// `sleep_ms` (time for a test to kill the run), printing before it.
fn output(ctx: &Context, sleep_ms: u64) -> Result<Value, Error> {
    println!("workflow code before any step");
    ctx.step("print", || {
        effect()?;
        println!("inside print");
        eprintln!("a warning from print");
        Ok(1)
    })?;
    print!("an unfinished ");
    println!("line between steps");
    ctx.log("logged between steps");
    let shouted = ctx
        .parallel(vec![Branch::new("shout", shout, &"branch".to_owned())])
        .into_iter()
        .collect::<Result<Vec<String>, Error>>()?;
    println!("before the hold");
    ctx.step("hold", || {
        effect()?;
        std::thread::sleep(Duration::from_millis(sleep_ms));
        Ok(2)
    })?;
    // Rust's stdout holds a line back until its newline: flushed, the
    // host gets it unfinished.
    print!("the end, without a newline");
    std::io::stdout()
        .flush()
        .map_err(|e| durable_sdk::error!("{e}"))?;
    Ok(json!(shouted))
}

/// A branch that prints what it was given.
fn shout(word: String) -> Result<String, Error> {
    effect()?;
    println!("{word} says hello");
    Ok(word.to_uppercase())
}

/// `items` steps `big`, each returning about `kib` KiB.
fn big_steps(ctx: &Context, items: u32, kib: u32) -> Result<Value, Error> {
    let mut total = 0usize;
    for i in 0..items {
        let value: String = ctx.step("big", || {
            effect()?;
            Ok(format!("{i}:{}", "x".repeat((kib as usize) << 10)))
        })?;
        total += value.len();
    }
    Ok(json!(total))
}

/// Appends the current step's idempotency key (`<workflow id>/<step key>`)
/// to `/ledger/keyed.log`, in one write: many workflows (of one `serve` or
/// several) can share the ledger and still be told apart.
fn keyed_effect() -> Result<(), Error> {
    let Some(step) = current_step() else {
        return Err(durable_sdk::error!("keyed_effect() called outside a step"));
    };
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open("/ledger/keyed.log")?;
    log.write_all(format!("{}\n", step.idempotency_key).as_bytes())?;
    Ok(())
}

/// `items` steps `k`, each sleeping `sleep_ms` in its body before it
/// records its keyed effect (so a kill in the body leaves no effect).
fn keyed_steps(ctx: &Context, items: u32, sleep_ms: u64) -> Result<Value, Error> {
    let mut sum = 0u64;
    for i in 0..items {
        sum += ctx.step("k", || {
            if sleep_ms > 0 {
                std::thread::sleep(Duration::from_millis(sleep_ms));
            }
            keyed_effect()?;
            Ok(u64::from(i))
        })?;
    }
    Ok(json!({ "workflow_id": ctx.workflow_id(), "sum": sum }))
}

/// A keyed step `before`, a durable sleep of `sleep_ms`, a keyed step
/// `after`: long sleeps unload the workflow under `serve`.
fn keyed_sleep(ctx: &Context, sleep_ms: u64) -> Result<Value, Error> {
    ctx.step("before", || {
        keyed_effect()?;
        Ok(1)
    })?;
    ctx.sleep(Duration::from_millis(sleep_ms))?;
    ctx.step("after", || {
        keyed_effect()?;
        Ok(2)
    })?;
    Ok(json!({ "workflow_id": ctx.workflow_id(), "slept_ms": sleep_ms }))
}
