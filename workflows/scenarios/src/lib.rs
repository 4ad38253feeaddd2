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
}

fn scenarios(ctx: &Context, input: Input) -> Result<Value, Error> {
    match input.scenario.as_str() {
        "loop" => loops_and_branches(ctx, input.items),
        "auto_ids" => auto_ids(ctx),
        "reorder" => reorder(ctx),
        "step_error" => step_error(ctx),
        "panic" => panic_in_step(ctx),
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
        other => Err(durable_sdk::error!("unknown scenario `{other}`")),
    }
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
