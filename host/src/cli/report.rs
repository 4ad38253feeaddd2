//! What `durable-host run` prints: live progress lines for people, or one
//! JSON document for scripts.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use durable_host::api::model::json_value;
use durable_host::engine::{RunObserver, RunReport, StepEvent, StepEventKind};
use durable_host::store::{Millis, Outcome, StepKey, WaitingFor, WorkflowRecord, WorkflowStatus};

use super::table::timestamp;

/// Prints each step as it ends (human mode) or nothing (JSON mode, where
/// the whole story is printed at the end). A run of replayed steps is
/// summed up in one line. On a terminal it also keeps a status line showing
/// the steps in flight, redrawn in place.
pub struct Progress {
    live: bool,
    terminal: bool,
    in_flight: Vec<StepKey>,
    done: usize,
    /// Consecutive replayed steps not printed yet (the first few, and the last).
    replayed: Vec<StepKey>,
    replayed_count: usize,
}

/// Up to this many consecutive replayed steps get a line each.
const REPLAYED_LINES: usize = 3;

impl Progress {
    pub fn new(live: bool) -> Self {
        Self {
            live,
            terminal: live && std::io::stdout().is_terminal(),
            in_flight: Vec::new(),
            done: 0,
            replayed: Vec::new(),
            replayed_count: 0,
        }
    }

    fn print_line(&self, stdout: &mut impl Write, line: &str) {
        // On a terminal, the status line is replaced by the new line.
        let clear = if self.terminal { "\r\x1b[2K" } else { "" };
        let _ = writeln!(stdout, "{clear}{line}");
    }

    fn flush_replayed(&mut self, stdout: &mut impl Write) {
        let keys = std::mem::take(&mut self.replayed);
        let count = std::mem::take(&mut self.replayed_count);
        if count > REPLAYED_LINES {
            let (first, last) = (&keys[0], &keys[keys.len() - 1]);
            self.print_line(
                stdout,
                &format!("  replayed  {first} … {last}  ({count} steps)"),
            );
        } else {
            for key in &keys {
                self.print_line(stdout, &format!("  replayed  {key}"));
            }
        }
    }

    fn redraw_status(&self, stdout: &mut impl Write) {
        if let Some(first) = self.in_flight.first() {
            let more = match self.in_flight.len() {
                1 => String::new(),
                n => format!(" and {} more", n - 1),
            };
            let _ = write!(stdout, "  running   {first}{more}  ({} done)", self.done);
        }
        let _ = stdout.flush();
    }
}

impl RunObserver for Progress {
    fn step_event(&mut self, _workflow_id: &str, event: &StepEvent) {
        if !self.live {
            return;
        }
        self.done += 1;
        if let StepEventKind::Replayed { failed: false } = event.kind {
            // Keep the first few keys, then only the first and the latest.
            if self.replayed.len() > REPLAYED_LINES {
                self.replayed.pop();
            }
            self.replayed.push(event.key.clone());
            self.replayed_count += 1;
            return;
        }
        self.in_flight.retain(|key| *key != event.key);
        let mut stdout = std::io::stdout().lock();
        self.flush_replayed(&mut stdout);
        self.print_line(&mut stdout, &step_line(event));
        if self.terminal {
            self.redraw_status(&mut stdout);
        }
    }

    fn step_started(&mut self, _workflow_id: &str, key: &StepKey, _attempt: u32) {
        if !self.live {
            return;
        }
        let mut stdout = std::io::stdout().lock();
        self.flush_replayed(&mut stdout);
        if self.terminal {
            self.in_flight.push(key.clone());
            let _ = write!(stdout, "\r\x1b[2K");
            self.redraw_status(&mut stdout);
        }
    }

    fn log(&mut self, workflow_id: &str, message: &str) {
        // The log goes with the guest's own output, on stderr: stdout stays
        // the command's answer (and `--json`'s document).
        errln!("[{workflow_id}] {message}");
    }

    fn run_ended(&mut self, _workflow_id: &str) {
        if self.live {
            self.flush_replayed(&mut std::io::stdout().lock());
        }
    }
}

fn step_line(event: &StepEvent) -> String {
    let key = event.key.as_str();
    match &event.kind {
        StepEventKind::Replayed { failed: false } => format!("  replayed  {key}"),
        StepEventKind::Replayed { failed: true } => format!("  replayed  {key}  (recorded error)"),
        StepEventKind::Executed {
            attempt,
            taken_over,
            duration,
            error,
        } => {
            let verb = if error.is_some() {
                "failed  "
            } else {
                "executed"
            };
            let mut line = format!("  {verb}  {key:<32} {:>9}", millis(*duration));
            if *taken_over {
                line.push_str(&format!(
                    "  (attempt {attempt}; taken over from a run that died)"
                ));
            } else if *attempt > 1 {
                line.push_str(&format!("  (attempt {attempt})"));
            }
            if let Some(error) = error {
                line.push_str(&format!("  error: {error}"));
            }
            line
        }
        StepEventKind::Interrupted {
            duration, reason, ..
        } => format!("  interrupted {key:<30} {:>9}  {reason}", millis(*duration)),
    }
}

pub fn millis(duration: Duration) -> String {
    format!("{:.1} ms", duration.as_secs_f64() * 1000.0)
}

/// The header printed before a run's steps.
pub fn print_start(workflow_id: &str, run_id: &str, recorded_steps: Option<usize>) {
    match recorded_steps {
        None => outln!("workflow {workflow_id}: starting (run {run_id})"),
        Some(n) => {
            outln!("workflow {workflow_id}: resuming with {n} recorded step(s) (run {run_id})")
        }
    }
}

/// The end of a run that executed.
pub fn print_report(report: &RunReport, elapsed: Duration, json_mode: bool) {
    if json_mode {
        print_json(&RunJson {
            workflow_id: &report.workflow_id,
            run_id: &report.run_id,
            resumed: report.resumed,
            already_finished: false,
            status: report.status.as_str(),
            output: match report.wake_at {
                Some(_) => Value::Null,
                None => output_value(&report.outcome),
            },
            error: error_message(&report.outcome),
            error_code: error_code(&report.outcome),
            wake_at_ms: report.wake_at,
            waiting_for: report.waiting_for.as_ref().map(waiting_json),
            duration_ms: elapsed.as_secs_f64() * 1000.0,
            steps: report.events.iter().map(StepJson::from).collect(),
        });
        return;
    }
    let count = |f: fn(&StepEventKind) -> bool| report.events.iter().filter(|e| f(&e.kind)).count();
    let executed = count(|k| matches!(k, StepEventKind::Executed { .. }));
    let replayed = count(|k| matches!(k, StepEventKind::Replayed { .. }));
    outln!(
        "workflow {} {} in {}: {executed} step(s) executed, {replayed} replayed",
        report.workflow_id,
        report.status,
        millis(elapsed)
    );
    match (&report.waiting_for, report.wake_at) {
        (Some(waiting_for), deadline) => print_waiting(&report.workflow_id, waiting_for, deadline),
        (None, Some(wake_at)) => print_sleeping(wake_at),
        (None, None) => print_outcome(&report.outcome),
    }
}

/// A workflow that had already finished: nothing ran.
pub fn print_finished(workflow: &WorkflowRecord, outcome: &Outcome, json_mode: bool) {
    print_stored(workflow, outcome, json_mode, true);
}

/// A workflow's stored result; `already` when this command ran nothing
/// (as opposed to waiting for another process to finish it).
pub fn print_stored(workflow: &WorkflowRecord, outcome: &Outcome, json_mode: bool, already: bool) {
    let status = workflow.status;
    if json_mode {
        print_json(&RunJson {
            workflow_id: &workflow.id,
            run_id: &workflow.run_id,
            resumed: false,
            already_finished: already,
            status: status.as_str(),
            output: output_value(outcome),
            error: error_message(outcome),
            error_code: error_code(outcome),
            wake_at_ms: workflow.wake_at,
            waiting_for: None,
            duration_ms: 0.0,
            steps: Vec::new(),
        });
        return;
    }
    match status {
        WorkflowStatus::Suspended => outln!(
            "workflow {id} {is}suspended{nothing_ran} (`durable-host resume {id} COMPONENT` \
             continues it once the cause is fixed)",
            id = workflow.id,
            is = if already { "is " } else { "" },
            nothing_ran = if already { "; nothing ran" } else { "" },
        ),
        WorkflowStatus::Failed if already => outln!(
            "workflow {id} already failed; nothing ran (stored result below; `durable-host \
             resume {id} COMPONENT` continues it, with other grants if given there)",
            id = workflow.id
        ),
        _ if already => outln!(
            "workflow {} already {status}; nothing ran (stored result below)",
            workflow.id
        ),
        _ => outln!("workflow {} {status}", workflow.id),
    }
    print_outcome(outcome);
}

fn print_sleeping(wake_at: Millis) {
    outln!(
        "sleeping until {} UTC: run it again then (or now: it sleeps on), or let \
         `durable-host serve` continue it",
        timestamp(wake_at)
    );
}

fn print_waiting(id: &str, waiting_for: &WaitingFor, deadline: Option<Millis>) {
    let until = deadline
        .map(|deadline| format!(" (until {} UTC at the latest)", timestamp(deadline)))
        .unwrap_or_default();
    let what_to_do = match waiting_for {
        WaitingFor::Signal(signal) => {
            format!("`durable-host signal {id} {signal} --data JSON` sends it; then run it again")
        }
        WaitingFor::Child(child) => format!(
            "`durable-host serve` runs the child (or `durable-host run COMPONENT --workflow-id \
             {child}`); then run this one again"
        ),
    };
    outln!(
        "waiting for {waiting_for}{until}: {what_to_do}, or let `durable-host serve` continue it"
    );
}

/// `{"signal": NAME}` or `{"child": ID}`, for `--json`.
fn waiting_json(waiting_for: &WaitingFor) -> Value {
    match waiting_for {
        WaitingFor::Signal(name) => serde_json::json!({ "signal": name }),
        WaitingFor::Child(id) => serde_json::json!({ "child": id }),
    }
}

fn print_outcome(outcome: &Outcome) {
    match outcome {
        Ok(output) => outln!("output: {output}"),
        Err(error) => outln!("error: {error}"),
    }
}

pub fn print_json(value: &impl Serialize) {
    let mut stdout = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
    // A closed pipe is the reader's choice; there is nothing useful to do.
    let _ = serde_json::to_writer(&mut stdout, value);
    let _ = writeln!(stdout);
}

pub fn error_message(outcome: &Outcome) -> Option<&str> {
    outcome.as_ref().err().map(|f| f.message.as_str())
}

pub fn error_code(outcome: &Outcome) -> Option<&str> {
    outcome.as_ref().err().and_then(|f| f.code.as_deref())
}

pub fn output_value(outcome: &Outcome) -> Value {
    outcome.as_deref().map_or(Value::Null, json_value)
}

/// The `--json` document of `run`. A struct, not a `Value`: a replay of
/// 10,000 steps prints 10,000 of these, and building maps for them cost more
/// than the replay itself.
#[derive(Serialize)]
struct RunJson<'a> {
    workflow_id: &'a str,
    run_id: &'a str,
    resumed: bool,
    already_finished: bool,
    status: &'static str,
    output: Value,
    error: Option<&'a str>,
    /// The error's code, when the workflow gave one.
    error_code: Option<&'a str>,
    /// For a sleeping workflow: when it is due; for a waiting one, when
    /// its wait times out.
    #[serde(skip_serializing_if = "Option::is_none")]
    wake_at_ms: Option<Millis>,
    /// For a waiting workflow: what it waits for, `{"signal": NAME}` or
    /// `{"child": ID}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    waiting_for: Option<Value>,
    duration_ms: f64,
    steps: Vec<StepJson<'a>>,
}

/// One step of [`RunJson`].
#[derive(Serialize)]
struct StepJson<'a> {
    key: &'a str,
    outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    recorded_error: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    attempt: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    taken_over: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    duration_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
}

impl<'a> From<&'a StepEvent> for StepJson<'a> {
    fn from(event: &'a StepEvent) -> Self {
        let step = StepJson {
            key: event.key.as_str(),
            outcome: "failed",
            recorded_error: None,
            attempt: None,
            taken_over: None,
            duration_ms: None,
            error: None,
        };
        let ms = |d: &Duration| Some(d.as_secs_f64() * 1000.0);
        match &event.kind {
            StepEventKind::Replayed { failed } => StepJson {
                outcome: "replayed",
                recorded_error: Some(*failed),
                ..step
            },
            StepEventKind::Executed {
                attempt,
                taken_over,
                duration,
                error,
            } => StepJson {
                outcome: if error.is_some() {
                    "failed"
                } else {
                    "executed"
                },
                attempt: Some(*attempt),
                taken_over: Some(*taken_over),
                duration_ms: ms(duration),
                error: error.as_deref(),
                ..step
            },
            StepEventKind::Interrupted {
                attempt,
                duration,
                reason,
            } => StepJson {
                outcome: "interrupted",
                attempt: Some(*attempt),
                duration_ms: ms(duration),
                error: Some(reason),
                ..step
            },
        }
    }
}
