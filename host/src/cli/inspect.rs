//! `durable-host list`, `history`, `logs` and `cancel`: look at and steer
//! workflows without running them.

use std::process::ExitCode;

use serde_json::json;

use std::io::Write as _;
use std::time::Duration;

use durable_host::api::model::{LogLineView, WorkflowHistory, WorkflowListItem, sleep_until};
use durable_host::engine::{CancelOutcome, cancel_workflow};
use durable_host::store::{
    CheckpointStore, Database, ListQuery, LogRecord, LogStream, Millis, StepRecord, StoreError,
    WorkflowStatus, WorkflowSummary, now_millis,
};

use super::report::print_json;
use super::table::{MAX_CELL_CHARS, preview, render, timestamp};
use super::{exit, timeline};

/// Characters of output shown per step in `history`'s table.
const PREVIEW_CHARS: usize = 48;

/// Open the database to act on what is there (`cancel`, `signal`): a
/// missing file, or a schema without tables, is an error here, not a new
/// empty database.
pub(super) fn open_existing(db: &Database) -> anyhow::Result<Box<dyn CheckpointStore>> {
    ensure_exists(db)?;
    Ok(db.open_existing()?)
}

/// Open the database to read what is there (`list`, `history`, `logs`,
/// `get-event`): a missing file is an error, and PostgreSQL's tables are
/// read as they are (see [`Database::open_to_read`]).
pub(super) fn open_to_read(db: &Database) -> anyhow::Result<Box<dyn CheckpointStore>> {
    ensure_exists(db)?;
    Ok(db.open_to_read()?)
}

fn ensure_exists(db: &Database) -> anyhow::Result<()> {
    anyhow::ensure!(
        db.exists(),
        "no database at {db}: nothing has run there yet (pass --db PATH to look elsewhere)"
    );
    Ok(())
}

/// Rows fetched per query when listing everything.
const LIST_PAGE: u32 = 1000;

/// List the workflows `query` selects (its `limit` aside), at most `limit`.
pub fn list(
    db: &Database,
    json_mode: bool,
    mut query: ListQuery,
    limit: Option<u32>,
) -> anyhow::Result<ExitCode> {
    let store = &*open_to_read(db)?;
    // A mistyped cursor must not look like the end of the listing.
    if let Some(after) = &query.after
        && store.workflow(after)?.is_none()
    {
        return Err(
            anyhow::Error::new(StoreError::UnknownWorkflow { id: after.clone() })
                .context("--after names no workflow"),
        );
    }
    query.limit = Some(limit.map_or(LIST_PAGE, |l| l.min(LIST_PAGE)));
    let mut left = limit;
    let mut stdout = std::io::BufWriter::new(std::io::stdout().lock());
    let mut shown = 0usize;
    let mut last_id = None;
    if json_mode {
        write!(stdout, "[")?;
    }
    // Page through the database, printing as we go: a listing of every
    // workflow costs one page of memory, not the whole table.
    loop {
        let page = store.list_workflows(&query)?;
        let full = page.len() as u32 == query.limit.unwrap_or(0);
        if json_mode {
            for summary in &page {
                if shown > 0 {
                    write!(stdout, ",")?;
                }
                serde_json::to_writer(&mut stdout, &WorkflowListItem::from(summary))?;
                shown += 1;
            }
        } else if !page.is_empty() {
            let rows = page
                .iter()
                .map(|summary| list_row(store, summary))
                .collect::<Result<Vec<_>, StoreError>>()?;
            let table = render(LIST_HEADER, &rows);
            // Each page is aligned on its own; the header comes once.
            let body = if shown == 0 {
                table.as_str()
            } else {
                table.split_once('\n').map_or("", |(_, body)| body)
            };
            write!(stdout, "{body}")?;
            shown += page.len();
        }
        last_id = page.last().map(|s| s.workflow.id.clone()).or(last_id);
        if let Some(left) = &mut left {
            *left = left.saturating_sub(page.len() as u32);
        }
        if !full || left == Some(0) {
            break;
        }
        query.after = last_id.clone();
        query.limit = Some(left.map_or(LIST_PAGE, |l| l.min(LIST_PAGE)));
    }
    if json_mode {
        writeln!(stdout, "]")?;
        return Ok(ExitCode::from(exit::SUCCESS));
    }
    if shown == 0 {
        let status = query.status.map(|s| format!(" with status {s}"));
        let search = query
            .id_contains
            .map(|text| format!(" whose id contains `{text}`"));
        writeln!(
            stdout,
            "no workflows{}{}",
            status.unwrap_or_default(),
            search.unwrap_or_default()
        )?;
    } else if let (Some(limit), Some(last)) = (limit, &last_id)
        && shown as u32 == limit
    {
        writeln!(
            stdout,
            "(first {shown}; the next page: --after {last}, or --all for every workflow)"
        )?;
    }
    Ok(ExitCode::from(exit::SUCCESS))
}

const LIST_HEADER: &[&str] = &[
    "WORKFLOW",
    "STATUS",
    "STEPS DONE",
    "NOTES",
    "COMPONENT",
    "STARTED (UTC)",
    "UPDATED (UTC)",
];

fn list_row(
    store: &dyn CheckpointStore,
    summary: &WorkflowSummary,
) -> Result<Vec<String>, StoreError> {
    let w = &summary.workflow;
    let mut notes = step_notes(summary);
    let until = match w.status {
        WorkflowStatus::Sleeping | WorkflowStatus::Waiting => w.wake_at,
        WorkflowStatus::Running => sleeping_until(store, &w.id)?,
        _ => None,
    };
    let waiting_for = w
        .waiting_for
        .as_ref()
        .map_or_else(|| "a signal".to_owned(), ToString::to_string);
    let note = match (w.status, until) {
        (WorkflowStatus::Waiting, Some(until)) => Some(format!(
            "waiting for {waiting_for} until {} UTC",
            timestamp(until)
        )),
        (WorkflowStatus::Waiting, None) => Some(format!("waiting for {waiting_for}")),
        (_, Some(until)) => Some(format!("sleeping until {} UTC", timestamp(until))),
        (_, None) => None,
    };
    if let Some(note) = note {
        if !notes.is_empty() {
            notes.push_str(", ");
        }
        notes.push_str(&note);
    }
    Ok(vec![
        w.id.clone(),
        w.status.to_string(),
        format!("{}/{}", summary.completed_steps, summary.steps),
        notes,
        w.component_sha256.chars().take(12).collect(),
        timestamp(w.created_at),
        timestamp(w.updated_at),
    ])
}

/// When a running workflow whose last recorded step is a completed
/// `durable.sleep` wakes up, if that is still ahead.
fn sleeping_until(store: &dyn CheckpointStore, id: &str) -> Result<Option<Millis>, StoreError> {
    let steps = store.steps(id)?;
    let last = steps.iter().max_by_key(|step| step.sequence);
    Ok(last
        .and_then(sleep_until)
        .filter(|&until| until > now_millis()))
}

fn step_notes(summary: &WorkflowSummary) -> String {
    let mut notes = Vec::new();
    if summary.running_steps > 0 {
        notes.push(format!("{} in flight", summary.running_steps));
    }
    if summary.failed_steps > 0 {
        notes.push(format!("{} failed", summary.failed_steps));
    }
    if summary.workflow.cancel_requested && summary.workflow.status == WorkflowStatus::Running {
        notes.push("cancel requested".to_owned());
    }
    notes.join(", ")
}

pub fn history(
    db: &Database,
    json_mode: bool,
    workflow_id: &str,
    timeline: bool,
) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        !(timeline && json_mode),
        "--timeline draws for people and --json prints for scripts: pick one \
         (--json has every step's start and end)"
    );
    let store = &*open_to_read(db)?;
    let workflow = store
        .workflow(workflow_id)?
        .ok_or_else(|| StoreError::UnknownWorkflow {
            id: workflow_id.to_owned(),
        })?;
    let steps = store.steps(workflow_id)?;
    if json_mode {
        print_json(&WorkflowHistory::read(store, &workflow, &steps, None)?);
        return Ok(ExitCode::from(exit::SUCCESS));
    }
    let attempts = store.attempts(workflow_id)?;
    // Written, not printed: a reader that stops early (`| head`) ends the
    // command quietly (see main) instead of a panic.
    let mut out = std::io::stdout().lock();
    if timeline {
        let style = timeline::Style::for_stdout();
        write!(
            out,
            "{}",
            timeline::render(&workflow, &steps, &attempts, now_millis(), &style)
        )?;
        return Ok(ExitCode::from(exit::SUCCESS));
    }
    let events = store.events(workflow_id)?;
    writeln!(
        out,
        "workflow {} {} (run {}, started {} UTC)",
        preview(&workflow.id, MAX_CELL_CHARS),
        workflow.status,
        workflow.run_id,
        timestamp(workflow.created_at)
    )?;
    let rows: Vec<Vec<String>> = steps
        .iter()
        .map(|step| {
            let result = match (sleep_until(step), &step.output_json, &step.error) {
                (Some(until), _, _) => format!("until {} UTC", timestamp(until)),
                (None, Some(output), _) => preview(output, PREVIEW_CHARS),
                (None, None, Some(error)) => format!("error: {}", preview(error, PREVIEW_CHARS)),
                (None, None, None) => String::new(),
            };
            vec![
                step.sequence.to_string(),
                step.key.to_string(),
                step.status.to_string(),
                step.attempts.to_string(),
                duration(step),
                result,
            ]
        })
        .collect();
    write!(
        out,
        "{}",
        render(
            &["#", "STEP", "STATUS", "ATTEMPTS", "DURATION", "RESULT"],
            &rows
        )
    )?;
    if !attempts.is_empty() {
        writeln!(out, "earlier attempts:")?;
        for attempt in &attempts {
            let how = match (attempt.interrupted, attempt.backoff_ms) {
                (true, _) => "interrupted".to_owned(),
                (false, Some(ms)) => format!("failed, retried after {ms} ms"),
                (false, None) => "failed".to_owned(),
            };
            writeln!(
                out,
                "  {} attempt {} {how} ({} UTC, run {}): {}",
                preview(attempt.key.as_str(), MAX_CELL_CHARS),
                attempt.attempt,
                timestamp(attempt.ended_at),
                attempt.run_id,
                preview(&attempt.error, 2 * PREVIEW_CHARS)
            )?;
        }
    }
    let requests = store.stream_logs(workflow_id, LogStream::Http)?;
    if !requests.is_empty() {
        writeln!(out, "http requests:")?;
        for request in &requests {
            let step = request.line.step.as_ref().map_or("-", |key| key.as_str());
            writeln!(
                out,
                "  {} UTC  {}  {}",
                timestamp(request.line.at),
                preview(step, MAX_CELL_CHARS),
                // A refusal says why and which flag allows it: keep it whole.
                preview(&request.line.text, 8 * PREVIEW_CHARS)
            )?;
        }
    }
    if !events.is_empty() {
        writeln!(out, "events:")?;
        for event in &events {
            writeln!(
                out,
                "  {} UTC  {}  {}",
                timestamp(event.at),
                event.kind,
                preview(&event.detail, 2 * PREVIEW_CHARS)
            )?;
        }
    }
    match workflow.outcome() {
        Some(Ok(output)) => writeln!(out, "output: {output}")?,
        Some(Err(error)) => writeln!(out, "error: {error}")?,
        None => {}
    }
    Ok(ExitCode::from(exit::SUCCESS))
}

fn duration(step: &StepRecord) -> String {
    step.finished_at
        .map(|finished| format!("{} ms", finished - step.started_at))
        .unwrap_or_default()
}

/// Lines read per query by `logs`.
const LOG_PAGE: u32 = 1000;

/// How often `logs --follow` looks for new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

pub fn logs(
    db: &Database,
    json_mode: bool,
    workflow_id: &str,
    tail: Option<usize>,
    follow: bool,
) -> anyhow::Result<ExitCode> {
    let store = &*open_to_read(db)?;
    let unknown = || StoreError::UnknownWorkflow {
        id: workflow_id.to_owned(),
    };
    let mut ended = store
        .workflow(workflow_id)?
        .ok_or_else(unknown)?
        .outcome()
        .is_some();
    let mut after = 0;
    if let Some(tail) = tail {
        // A workflow keeps a bounded log: reading it whole is bounded too.
        let mut lines = Vec::new();
        loop {
            let page = store.logs(workflow_id, after, LOG_PAGE)?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            lines.extend(page);
            let excess = lines.len().saturating_sub(tail);
            lines.drain(..excess);
        }
        print_log(&lines, json_mode)?;
    }
    loop {
        let page = store.logs(workflow_id, after, LOG_PAGE)?;
        if let Some(last) = page.last() {
            after = last.seq;
            print_log(&page, json_mode)?;
        }
        if page.len() as u32 == LOG_PAGE {
            continue;
        }
        // Lines land with the checkpoints before the end is recorded: once
        // the end is seen, one more read has them all.
        if !follow || ended {
            break;
        }
        std::thread::sleep(FOLLOW_POLL);
        ended = store
            .workflow(workflow_id)?
            .ok_or_else(unknown)?
            .outcome()
            .is_some();
    }
    Ok(ExitCode::from(exit::SUCCESS))
}

/// `2026-12-02 14:03:07.412 stdout provision-laptop#000001  the line`, or
/// one JSON object per line.
fn print_log(lines: &[LogRecord], json_mode: bool) -> std::io::Result<()> {
    let mut stdout = std::io::BufWriter::new(std::io::stdout().lock());
    for record in lines {
        if json_mode {
            serde_json::to_writer(&mut stdout, &LogLineView::from(record))?;
            writeln!(stdout)?;
        } else {
            let line = &record.line;
            writeln!(
                stdout,
                "{}.{:03} {:<6} {}  {}",
                timestamp(line.at),
                line.at.rem_euclid(1000),
                line.stream,
                line.step.as_ref().map_or("-", |key| key.as_str()),
                line.text
            )?;
        }
    }
    stdout.flush()
}

pub fn cancel(db: &Database, json_mode: bool, workflow_id: &str) -> anyhow::Result<ExitCode> {
    let store = &*open_existing(db)?;
    let outcome = cancel_workflow(store, workflow_id)?;
    let (state, message) = match &outcome {
        CancelOutcome::Cancelled => ("cancelled", format!("workflow {workflow_id} cancelled")),
        CancelOutcome::Requested { run_id, owner } => (
            "requested",
            format!(
                "workflow {workflow_id}: cancel requested; run {run_id} ({owner}) stops at its next \
                 step (if it returns before one, it ends as it returned)"
            ),
        ),
        CancelOutcome::AlreadyFinished(status) => (
            "already_finished",
            format!("workflow {workflow_id} already {status}; nothing to cancel"),
        ),
    };
    if json_mode {
        print_json(&json!({ "workflow_id": workflow_id, "cancel": state }));
    } else {
        outln!("{message}");
    }
    Ok(ExitCode::from(exit::SUCCESS))
}
