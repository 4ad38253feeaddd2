//! Guests in other languages beside the Rust one, in the same run: the
//! per-step cost of N trivial steps (a run of N minus a run of none, as for
//! Rust) and the whole-process start-up of each language's onboarding
//! workflow, cold (an empty compiled-component cache) and warm.
//!
//! The components are built as their authors build them (see
//! `durable_tests::js_guests` and `py_guests`), so the first run downloads
//! their packages.

use std::process::Command;
use std::time::Duration;

use durable_tests::{HttpService, Scratch, employee, js_guests, py_guests};
use serde_json::{Value, json};

use crate::{Bench, best, time};

/// What a language's guests cost (Rust's come from the one-shot measurements).
pub struct Figures {
    pub step: Duration,
    pub cold: Duration,
    pub warm: Duration,
    /// The size of the onboarding component.
    pub component_bytes: u64,
}

/// `durable-host run` of N trivial steps as workflow `id`.
type StepsRun = Box<dyn Fn(&Scratch, &str, u32) -> Command>;
/// `durable-host run` of the onboarding workflow `id`.
type OnboardingRun = Box<dyn Fn(&Scratch, &str) -> Command>;

/// A language's guests: how to run N trivial steps and one onboarding.
pub struct Guest {
    pub name: &'static str,
    steps: StepsRun,
    onboarding: OnboardingRun,
    component: std::path::PathBuf,
}

/// The TypeScript onboarding and the JavaScript SDK's cases; its services
/// are reached over HTTP, so `service` must outlive the measurements.
pub fn javascript(service: &'static HttpService) -> Guest {
    let guests = js_guests();
    Guest {
        name: "JavaScript",
        steps: Box::new(|scratch, id, items| {
            let mut command = scratch.run(&guests.scenarios, id);
            let input = json!({"case": "steps", "items": items});
            command.args(["--input", &input.to_string(), "--json"]);
            command
        }),
        onboarding: Box::new(move |scratch, id| {
            let input = json!({
                "id": id, "name": "Ada Lovelace", "email": "ada@example.com", "role": "engineer",
                "service_latency_ms": 0, "services_url": service.url(),
            });
            let mut command = scratch.run(&guests.onboarding, id);
            command
                .args(["--input", &input.to_string(), "--json"])
                .args(["--allow-http", service.address()]);
            command
        }),
        component: guests.onboarding.clone(),
    }
}

/// The Python onboarding (file-backed services, as Rust's) and the Python
/// SDK's cases.
pub fn python() -> Guest {
    let guests = py_guests();
    Guest {
        name: "Python",
        steps: Box::new(|scratch, id, items| {
            let mut command = scratch.run(&guests.scenarios, id);
            let input = json!({"scenario": "steps", "items": items});
            command.args(["--input", &input.to_string(), "--json"]);
            command
        }),
        onboarding: Box::new(|scratch, id| {
            let mut command = scratch.run(&guests.onboarding, id);
            command.args(["--input", &employee(id, 0), "--json"]);
            command
        }),
        component: guests.onboarding.clone(),
    }
}

/// Per-step cost and cold and warm start-up of `guest`.
pub fn measure(bench: &Bench, guest: &Guest) -> Figures {
    let scratch = Scratch::new();
    let run = |command: &mut Command| {
        let (elapsed, code) = time(command);
        assert_eq!(code, Some(0), "{} guest: {command:?} failed", guest.name);
        elapsed
    };
    let cached = |mut command: Command| {
        command.arg("--cache-dir").arg(bench.cache.path());
        command
    };
    // Fill the bench's cache first, so that no step run pays for a compile.
    run(&mut cached((guest.steps)(&scratch, "warm-up", 0)));
    let steps = bench.sizes.steps;
    let empty = best(bench.sizes.repeats, |i| {
        run(&mut cached((guest.steps)(
            &scratch,
            &format!("empty-{i}"),
            0,
        )))
    });
    let full = best(bench.sizes.repeats, |i| {
        run(&mut cached((guest.steps)(
            &scratch,
            &format!("steps-{i}"),
            steps,
        )))
    });

    let mut cold = Duration::MAX;
    let mut warm = Duration::MAX;
    for i in 0..bench.sizes.repeats {
        let cache = scratch.path().join(format!("cache-{i}"));
        let with_cache = |id: String| {
            let mut command = (guest.onboarding)(&scratch, &id);
            command.arg("--cache-dir").arg(&cache);
            command
        };
        cold = cold.min(run(&mut with_cache(format!("cold-{i}"))));
        warm = warm.min(run(&mut with_cache(format!("warm-{i}"))));
    }
    Figures {
        step: full.saturating_sub(empty) / steps,
        cold,
        warm,
        component_bytes: std::fs::metadata(&guest.component).map_or(0, |m| m.len()),
    }
}

impl Figures {
    pub fn json(&self) -> Value {
        json!({
            "step_us": self.step.as_secs_f64() * 1e6,
            "start_cold_ms": self.cold.as_secs_f64() * 1e3,
            "start_warm_ms": self.warm.as_secs_f64() * 1e3,
            "component_bytes": self.component_bytes,
        })
    }
}
