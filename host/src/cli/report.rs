//! What `durable-host run` prints: live progress lines for people, or one
//! JSON document for scripts.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use serde_json::{Value, json};

use durable_host::engine::{RunObserver, RunReport, StepEvent, StepEventKind};
use durable_host::store::{Outcome, StepKey, WorkflowRecord};

/// Prints each step as it ends (human mode) or nothing (JSON mode, where
/// the whole story is printed at the end). On a terminal it also keeps a
/// status line showing the steps in flight, redrawn in place.
pub struct Progress {
    live: bool,
    terminal: bool,
    in_flight: Vec<StepKey>,
    done: usize,
}

impl Progress {
    pub fn new(live: bool) -> Self {
        Self {
            live,
            terminal: live && std::io::stdout().is_terminal(),
            in_flight: Vec::new(),
            done: 0,
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
        self.in_flight.retain(|key| *key != event.key);
        self.done += 1;
        let mut stdout = std::io::stdout().lock();
        // On a terminal, the status line is replaced by the finished step's.
        let clear = if self.terminal { "\r\x1b[2K" } else { "" };
        let _ = writeln!(stdout, "{clear}{}", step_line(event));
        if self.terminal {
            self.redraw_status(&mut stdout);
        }
    }

    fn step_started(&mut self, _workflow_id: &str, key: &StepKey, _attempt: u32) {
        if self.terminal {
            self.in_flight.push(key.clone());
            let mut stdout = std::io::stdout().lock();
            let _ = write!(stdout, "\r\x1b[2K");
            self.redraw_status(&mut stdout);
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
        } => format!("  failed    {key:<32} {:>9}  {reason}", millis(*duration)),
    }
}

pub fn millis(duration: Duration) -> String {
    format!("{:.1} ms", duration.as_secs_f64() * 1000.0)
}

/// The header printed before a run's steps.
pub fn print_start(workflow_id: &str, run_id: &str, recorded_steps: Option<usize>) {
    match recorded_steps {
        None => println!("workflow {workflow_id}: started (run {run_id})"),
        Some(n) => {
            println!("workflow {workflow_id}: resuming with {n} recorded step(s) (run {run_id})")
        }
    }
}

/// The end of a run that executed.
pub fn print_report(report: &RunReport, elapsed: Duration, json_mode: bool) {
    if json_mode {
        let steps: Vec<Value> = report.events.iter().map(step_json).collect();
        print_json(json!({
            "workflow_id": report.workflow_id,
            "run_id": report.run_id,
            "resumed": report.resumed,
            "already_finished": false,
            "status": report.status.as_str(),
            "output": output_value(&report.outcome),
            "error": report.outcome.as_ref().err(),
            "duration_ms": elapsed.as_secs_f64() * 1000.0,
            "steps": steps,
        }));
        return;
    }
    let count = |f: fn(&StepEventKind) -> bool| report.events.iter().filter(|e| f(&e.kind)).count();
    let executed = count(|k| matches!(k, StepEventKind::Executed { .. }));
    let replayed = count(|k| matches!(k, StepEventKind::Replayed { .. }));
    println!(
        "workflow {} {} in {}: {executed} step(s) executed, {replayed} replayed",
        report.workflow_id,
        report.status,
        millis(elapsed)
    );
    print_outcome(&report.outcome);
}

/// A workflow that had already finished: nothing ran.
pub fn print_finished(workflow: &WorkflowRecord, outcome: &Outcome, json_mode: bool) {
    let status = workflow.status;
    if json_mode {
        print_json(json!({
            "workflow_id": workflow.id,
            "run_id": workflow.run_id,
            "resumed": false,
            "already_finished": true,
            "status": status.as_str(),
            "output": output_value(outcome),
            "error": outcome.as_ref().err(),
            "duration_ms": 0.0,
            "steps": [],
        }));
        return;
    }
    println!(
        "workflow {} already {status}; nothing ran (stored result below)",
        workflow.id
    );
    print_outcome(outcome);
}

fn print_outcome(outcome: &Outcome) {
    match outcome {
        Ok(output) => println!("output: {output}"),
        Err(error) => println!("error: {error}"),
    }
}

pub fn print_json(value: Value) {
    let mut stdout = std::io::stdout().lock();
    // A closed pipe is the reader's choice; there is nothing useful to do.
    let _ = serde_json::to_writer(&mut stdout, &value);
    let _ = writeln!(stdout);
}

pub fn output_value(outcome: &Outcome) -> Value {
    match outcome {
        // Stored outputs are validated JSON; keep a raw string should one not be.
        Ok(output) => {
            serde_json::from_str(output).unwrap_or_else(|_| Value::String(output.clone()))
        }
        Err(_) => Value::Null,
    }
}

fn step_json(event: &StepEvent) -> Value {
    let key = event.key.as_str();
    match &event.kind {
        StepEventKind::Replayed { failed } => json!({
            "key": key, "outcome": "replayed", "recorded_error": failed,
        }),
        StepEventKind::Executed {
            attempt,
            taken_over,
            duration,
            error,
        } => json!({
            "key": key,
            "outcome": if error.is_some() { "failed" } else { "executed" },
            "attempt": attempt,
            "taken_over": taken_over,
            "duration_ms": duration.as_secs_f64() * 1000.0,
            "error": error,
        }),
        StepEventKind::Interrupted {
            attempt,
            duration,
            reason,
        } => json!({
            "key": key,
            "outcome": "failed",
            "attempt": attempt,
            "duration_ms": duration.as_secs_f64() * 1000.0,
            "error": reason,
        }),
    }
}
