//! `durable-host verify NEW.wasm`: each selected workflow's verdict as it
//! is known (a line each, with the recorded steps around a divergence), then
//! a summary line; `--json` prints one document at the end.

use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde::Serialize;

use durable_host::runtime::{ComponentFile, Runtime, RuntimeConfig};
use durable_host::store::{Database, StepKey, WorkflowStatus};
use durable_host::verify::{Selection, Verdict, Verifier, WorkflowVerdict};
use durable_host::versions::IN_FLIGHT;

use super::args::CacheArgs;
use super::exit;
use super::report::print_json;
use super::table::{MAX_CELL_CHARS, preview};

/// What the command line selects: ids, a status, every workflow, or by
/// default the workflows that will resume (running, sleeping, waiting).
pub fn selection(ids: Vec<String>, status: Option<WorkflowStatus>, all: bool) -> Selection {
    match (status, all) {
        _ if !ids.is_empty() => Selection::Ids(ids),
        (Some(status), _) => Selection::Statuses(vec![status]),
        (None, true) => Selection::Statuses(Vec::new()),
        (None, false) => Selection::Statuses(vec![
            WorkflowStatus::Running,
            WorkflowStatus::Sleeping,
            WorkflowStatus::Waiting,
        ]),
    }
}

pub fn verify(
    db: &Database,
    json_mode: bool,
    component: &Path,
    selection: Selection,
    timeout: Duration,
    cache: &CacheArgs,
) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        db.exists(),
        "no database at {db}: there are no histories to verify (pass --db PATH)"
    );
    let file = ComponentFile::read(component)?;
    let runtime = Runtime::new(RuntimeConfig {
        interruptible: true,
        cache: cache.cache(),
        echo_output: false,
        pooled_runs: None,
    })?;
    let compiled = runtime.compile(&file)?;
    let verifier = Verifier::new(db, &runtime, &compiled, file.sha256(), timeout)?;
    let started = Instant::now();
    let mut summary = Summary::default();
    let mut verdicts = Vec::new();
    let mut stdout = std::io::stdout().lock();
    verifier.select(&selection, |workflow| {
        let verdict = verifier.verify(workflow)?;
        summary.count(&verdict);
        if json_mode {
            verdicts.push(VerdictJson::from(&verdict));
        } else {
            let _ = stdout.write_all(describe(&verdict).as_bytes());
            let _ = stdout.flush();
        }
        Ok(())
    })?;
    let seconds = started.elapsed().as_secs_f64();
    if json_mode {
        print_json(&VerifyJson {
            component_sha256: file.sha256(),
            workflows: verdicts,
            summary: &summary,
            seconds,
        });
    } else {
        outln!(
            "verified {} workflows ({} recorded steps, {:.0} steps/s): {} compatible, {} diverged, \
             {} with a changed input, {} undecodable, {} trapped, {} ended early, {} unverifiable",
            summary.workflows,
            summary.recorded_steps,
            summary.recorded_steps as f64 / seconds.max(1e-9),
            summary.compatible,
            summary.diverged,
            summary.input_changed,
            summary.undecodable,
            summary.trapped,
            summary.ended_early,
            summary.unverifiable
        );
    }
    Ok(ExitCode::from(if summary.blocking == 0 {
        exit::SUCCESS
    } else {
        exit::NON_DETERMINISM
    }))
}

/// A workflow's verdict for people: one line, and the recorded steps
/// around a divergence.
fn describe(verdict: &WorkflowVerdict) -> String {
    let head = format!(
        "{}  {}  ",
        preview(&verdict.workflow.id, MAX_CELL_CHARS),
        verdict.workflow.status
    );
    let recorded = verdict.recorded_steps;
    match &verdict.verdict {
        Verdict::Compatible {
            replayed,
            next: Some(next),
            ..
        } => format!(
            "{head}compatible: replayed {replayed} of {recorded} recorded steps; a resume \
             executes {next} next\n"
        ),
        Verdict::Compatible {
            replayed, ending, ..
        } => format!(
            "{head}compatible: replayed {replayed} of {recorded} recorded steps; then {}\n",
            ending.as_deref().unwrap_or("ends")
        ),
        Verdict::Diverged {
            position,
            recorded: was,
            requested,
            around,
        } => {
            let mut text = format!(
                "{head}DIVERGES at step {position}: the history has {was}, the new code asks \
                 for {requested}\n"
            );
            for (sequence, key) in around {
                let (mark, new) = if sequence == position {
                    (">", format!("   <- new code: {requested}"))
                } else {
                    (" ", String::new())
                };
                text.push_str(&format!("    {mark} {sequence:>4}  {key}{new}\n"));
            }
            text
        }
        Verdict::InputChanged { position, key } => format!(
            "{head}INPUT CHANGED at step {position}: the new code calls {key} with another input \
             than the one its recorded result came from\n"
        ),
        Verdict::EndedEarly { reached, next } => format!(
            "{head}ENDS EARLY: the new code returns after {reached} steps; the history goes on \
             with {next}\n"
        ),
        Verdict::Undecodable {
            key,
            expected,
            value,
            reason,
        } => format!(
            "{head}UNDECODABLE: the recorded value of {key} no longer decodes into {expected} \
             ({reason}); it is {value}\n"
        ),
        Verdict::Trapped { reason, .. } => {
            format!("{head}TRAPPED while replaying: {}\n", preview(reason, 400))
        }
        Verdict::Unverifiable { reason } => format!("{head}cannot be replayed: {reason}\n"),
    }
}

#[derive(Debug, Default, Serialize)]
struct Summary {
    workflows: u64,
    recorded_steps: u64,
    compatible: u64,
    diverged: u64,
    input_changed: u64,
    undecodable: u64,
    trapped: u64,
    ended_early: u64,
    unverifiable: u64,
    /// Incompatible workflows that have not finished: the ones a deploy of
    /// this build would strand (finished ones only inform).
    #[serde(skip)]
    blocking: u64,
}

impl Summary {
    fn count(&mut self, verdict: &WorkflowVerdict) {
        self.workflows += 1;
        if !verdict.verdict.is_compatible() && IN_FLIGHT.contains(&verdict.workflow.status) {
            self.blocking += 1;
        }
        self.recorded_steps += verdict.recorded_steps as u64;
        *match verdict.verdict {
            Verdict::Compatible { .. } => &mut self.compatible,
            Verdict::Diverged { .. } => &mut self.diverged,
            Verdict::InputChanged { .. } => &mut self.input_changed,
            Verdict::Undecodable { .. } => &mut self.undecodable,
            Verdict::Trapped { .. } => &mut self.trapped,
            Verdict::EndedEarly { .. } => &mut self.ended_early,
            Verdict::Unverifiable { .. } => &mut self.unverifiable,
        } += 1;
    }
}

#[derive(Serialize)]
struct VerifyJson<'a> {
    component_sha256: &'a str,
    workflows: Vec<VerdictJson>,
    summary: &'a Summary,
    seconds: f64,
}

/// One workflow in `verify --json`: `verdict` names the case; the fields
/// that case has are filled.
#[derive(Serialize, Default)]
struct VerdictJson {
    workflow_id: String,
    status: &'static str,
    recorded_steps: usize,
    verdict: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    replayed: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ending: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    position: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    recorded: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    requested: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    around: Vec<AroundJson>,
    /// The step whose recorded value no longer decodes.
    #[serde(skip_serializing_if = "Option::is_none")]
    step: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expected: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

#[derive(Serialize)]
struct AroundJson {
    sequence: u32,
    key: String,
}

impl From<&WorkflowVerdict> for VerdictJson {
    fn from(verdict: &WorkflowVerdict) -> Self {
        let key = |key: &StepKey| Some(key.as_str().to_owned());
        let base = Self {
            workflow_id: verdict.workflow.id.clone(),
            status: verdict.workflow.status.as_str(),
            recorded_steps: verdict.recorded_steps,
            ..Self::default()
        };
        match &verdict.verdict {
            Verdict::Compatible {
                replayed,
                next,
                ending,
            } => Self {
                verdict: "compatible",
                replayed: Some(*replayed),
                next: next.as_ref().and_then(key),
                ending: ending.clone(),
                ..base
            },
            Verdict::Diverged {
                position,
                recorded,
                requested,
                around,
            } => Self {
                verdict: "diverged",
                position: Some(*position),
                recorded: key(recorded),
                requested: key(requested),
                around: around
                    .iter()
                    .map(|(sequence, key)| AroundJson {
                        sequence: *sequence,
                        key: key.as_str().to_owned(),
                    })
                    .collect(),
                ..base
            },
            Verdict::InputChanged {
                position,
                key: step,
            } => Self {
                verdict: "input_changed",
                position: Some(*position),
                step: key(step),
                ..base
            },
            Verdict::EndedEarly { reached, next } => Self {
                verdict: "ended_early",
                replayed: Some(*reached),
                next: key(next),
                ..base
            },
            Verdict::Undecodable {
                key: step,
                expected,
                value,
                reason,
            } => Self {
                verdict: "undecodable",
                step: key(step),
                expected: Some(expected.clone()),
                value: Some(value.clone()),
                reason: Some(reason.clone()),
                ..base
            },
            Verdict::Trapped { replayed, reason } => Self {
                verdict: "trapped",
                replayed: Some(*replayed),
                reason: Some(reason.clone()),
                ..base
            },
            Verdict::Unverifiable { reason } => Self {
                verdict: "unverifiable",
                reason: Some(reason.clone()),
                ..base
            },
        }
    }
}
