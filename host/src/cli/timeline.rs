//! `durable-host history ID --timeline`: a workflow's steps as a Gantt chart
//! in the terminal. One row per step, each a bar from its start to its end
//! on a shared time axis, so that parallel branches show as overlapping
//! bars, and retries, interrupted attempts and durable sleeps are marked
//! where they happened. Plain glyphs carry the meaning; colour (on a
//! terminal only) repeats it.

use std::fmt::Write as _;

use durable_host::api::model::sleep_until;
use durable_host::store::{AttemptRecord, Millis, StepRecord, StepStatus, WorkflowRecord};

use super::table::{preview, timestamp};

/// Columns given to step keys; longer keys are cut.
const MAX_LABEL: usize = 32;

/// The narrowest bar area drawn, whatever the terminal says.
const MIN_BARS: usize = 20;

/// What one cell of a row shows, strongest last: a mark wins over a bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Cell {
    Empty,
    Sleeping,
    Running,
    Completed,
    Failed,
    Retried,
    Interrupted,
}

impl Cell {
    fn glyph(self) -> char {
        match self {
            Self::Empty => ' ',
            Self::Sleeping => '·',
            Self::Running => '░',
            Self::Completed => '█',
            Self::Failed => '▒',
            Self::Retried => '!',
            Self::Interrupted => '×',
        }
    }

    /// ANSI colour for a terminal.
    fn colour(self) -> &'static str {
        match self {
            Self::Empty => "",
            Self::Sleeping => "\x1b[34m",
            Self::Running => "\x1b[33m",
            Self::Completed => "\x1b[32m",
            Self::Failed | Self::Retried | Self::Interrupted => "\x1b[31m",
        }
    }
}

/// How the chart is drawn.
pub struct Style {
    /// Columns available for the whole line.
    pub width: usize,
    pub colour: bool,
}

impl Style {
    /// For stdout: its width and colour when it is a terminal (`NO_COLOR`
    /// turns colour off), `COLUMNS` or 100 columns otherwise.
    pub fn for_stdout() -> Self {
        use std::io::IsTerminal;
        let terminal = std::io::stdout().is_terminal();
        let width = terminal
            .then(terminal_size::terminal_size)
            .flatten()
            .map(|(width, _)| usize::from(width.0))
            .or_else(|| std::env::var("COLUMNS").ok()?.parse().ok())
            .unwrap_or(100);
        Self {
            width,
            colour: terminal && std::env::var_os("NO_COLOR").is_none(),
        }
    }
}

/// The chart of `workflow`, its `steps` and their earlier `attempts`, as of
/// `now` (running steps reach it).
pub fn render(
    workflow: &WorkflowRecord,
    steps: &[StepRecord],
    attempts: &[AttemptRecord],
    now: Millis,
    style: &Style,
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "workflow {} {} (started {} UTC)",
        preview(&workflow.id, MAX_LABEL * 2),
        workflow.status,
        timestamp(workflow.created_at)
    );
    if steps.is_empty() {
        out.push_str("no steps recorded yet\n");
        return out;
    }
    let spans: Vec<Span> = steps.iter().map(|step| Span::of(step, now)).collect();
    let start = spans.iter().map(|s| s.start).min().unwrap_or(now);
    // A sleep still under way runs off the right edge instead of squeezing
    // everything else into one column.
    let end = spans
        .iter()
        .map(|s| {
            if s.cell == Cell::Sleeping {
                s.end.min(now)
            } else {
                s.end
            }
        })
        .max()
        .unwrap_or(now)
        .max(start + 1);
    let label = steps
        .iter()
        .map(|s| s.key.as_str().chars().count())
        .max()
        .unwrap_or(0)
        .min(MAX_LABEL);
    // label, space, |bars|, space, a note of ~24 columns.
    let bars = style.width.saturating_sub(label + 3 + 24).max(MIN_BARS);
    let column = |at: Millis| -> usize {
        let offset = (at.clamp(start, end) - start) as u128;
        (offset * (bars as u128 - 1) / (end - start) as u128) as usize
    };
    let _ = writeln!(
        out,
        "{:label$}  {:<half$}{:>rest$}",
        "",
        "0",
        human_duration(end - start),
        half = bars / 2,
        rest = bars - bars / 2
    );
    for (step, span) in steps.iter().zip(&spans) {
        let mut row = vec![Cell::Empty; bars];
        let (from, to) = (column(span.start), column(span.end));
        for cell in &mut row[from..=to.max(from)] {
            *cell = span.cell;
        }
        for attempt in attempts.iter().filter(|a| a.key == step.key) {
            let mark = if attempt.interrupted {
                Cell::Interrupted
            } else {
                Cell::Retried
            };
            let at = &mut row[column(attempt.ended_at)];
            *at = (*at).max(mark);
        }
        let _ = write!(out, "{:label$} |", preview(step.key.as_str(), label));
        draw(&mut out, &row, style.colour);
        let _ = writeln!(out, "| {}", span.note(step, attempts));
    }
    out.push_str(&format!(
        "{:label$}  █ completed  ▒ failed  ░ running  · sleeping  ! failed attempt  × interrupted attempt\n",
        ""
    ));
    out
}

/// One step's place on the axis.
struct Span {
    start: Millis,
    end: Millis,
    cell: Cell,
}

impl Span {
    fn of(step: &StepRecord, now: Millis) -> Self {
        let (end, cell) = match (sleep_until(step), step.status, step.finished_at) {
            (Some(wake_at), _, _) => (wake_at, Cell::Sleeping),
            (None, StepStatus::Running, _) => (now, Cell::Running),
            (None, StepStatus::Failed, finished) => (finished.unwrap_or(now), Cell::Failed),
            (None, StepStatus::Completed, finished) => (finished.unwrap_or(now), Cell::Completed),
        };
        Self {
            start: step.started_at,
            end: end.max(step.started_at),
            cell,
        }
    }

    fn note(&self, step: &StepRecord, attempts: &[AttemptRecord]) -> String {
        let mut note = match self.cell {
            Cell::Sleeping => format!("sleep until {} UTC", timestamp(self.end)),
            Cell::Running => format!("running {}", human_duration(self.end - self.start)),
            Cell::Failed => format!("failed {}", human_duration(self.end - self.start)),
            _ => human_duration(self.end - self.start),
        };
        let earlier = attempts.iter().filter(|a| a.key == step.key).count();
        if earlier > 0 {
            let _ = write!(note, ", attempt {}", step.attempts);
        }
        note
    }
}

fn draw(out: &mut String, row: &[Cell], colour: bool) {
    let mut current = Cell::Empty;
    for &cell in row {
        if colour && cell != current {
            out.push_str("\x1b[0m");
            out.push_str(cell.colour());
            current = cell;
        }
        out.push(cell.glyph());
    }
    if colour {
        out.push_str("\x1b[0m");
    }
}

/// `840 ms`, `12.4 s`, `3 min 05 s`, `26 h 03 min`.
fn human_duration(ms: Millis) -> String {
    if ms < 1_000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else if ms < 3_600_000 {
        format!("{} min {:02} s", ms / 60_000, ms % 60_000 / 1000)
    } else {
        format!("{} h {:02} min", ms / 3_600_000, ms % 3_600_000 / 60_000)
    }
}

#[cfg(test)]
mod tests {
    use durable_host::store::{Owner, StepKey, WorkflowStatus};

    use super::*;

    fn workflow() -> WorkflowRecord {
        WorkflowRecord {
            id: "wf".into(),
            component_sha256: String::new(),
            input: "null".into(),
            status: WorkflowStatus::Running,
            output: None,
            error: None,
            error_code: None,
            run_id: "r".into(),
            owner: Owner {
                pid: 1,
                host: "h".into(),
                boot_id: None,
                pid_ns: None,
                started: None,
            },
            lease_expires_at: 0,
            cancel_requested: false,
            created_at: 0,
            updated_at: 0,
            takeovers: 0,
            progress_mark: 0,
            grants: None,
            queue: "default".into(),
            deployment: None,
            wake_at: None,
            parent_id: None,
            waiting_for: None,
        }
    }

    fn step(
        name: &str,
        status: StepStatus,
        started: Millis,
        finished: Option<Millis>,
    ) -> StepRecord {
        StepRecord {
            key: StepKey::new(name, 1),
            sequence: 1,
            name: name.into(),
            status,
            output_json: Some("1".into()),
            error: None,
            error_code: None,
            attempts: 1,
            failures: 0,
            run_id: "r".into(),
            started_at: started,
            finished_at: finished,
            input_fingerprint: None,
        }
    }

    /// The bar area of the row of `key`.
    fn bars<'a>(chart: &'a str, key: &str) -> &'a str {
        let row = chart.lines().find(|l| l.starts_with(key)).unwrap();
        row.split('|').nth(1).unwrap()
    }

    /// First and last column a row's bar covers.
    fn extent(bars: &str, glyph: char) -> (usize, usize) {
        let cells: Vec<char> = bars.chars().collect();
        let first = cells.iter().position(|&c| c == glyph).unwrap();
        let last = cells.iter().rposition(|&c| c == glyph).unwrap();
        (first, last)
    }

    const PLAIN: Style = Style {
        width: 100,
        colour: false,
    };

    #[test]
    fn parallel_steps_overlap_and_sequential_ones_follow() {
        let steps = [
            step("a", StepStatus::Completed, 0, Some(100)),
            step("left", StepStatus::Completed, 100, Some(600)),
            step("right", StepStatus::Completed, 100, Some(1000)),
            step("z", StepStatus::Running, 1000, None),
        ];
        let chart = render(&workflow(), &steps, &[], 1200, &PLAIN);
        let (a, left, right, z) = (
            extent(bars(&chart, "a#"), '█'),
            extent(bars(&chart, "left#"), '█'),
            extent(bars(&chart, "right#"), '█'),
            extent(bars(&chart, "z#"), '░'),
        );
        assert_eq!(a.0, 0);
        assert!(left.0 == right.0 && left.1 < right.1, "{chart}");
        assert!(a.1 <= left.0 && right.1 <= z.0, "{chart}");
        assert_eq!(
            z.1,
            bars(&chart, "z#").chars().count() - 1,
            "running reaches now"
        );
        assert!(chart.contains("running 200 ms"), "{chart}");
        assert!(chart.lines().all(|l| l.chars().count() <= 100), "{chart}");
    }

    #[test]
    fn attempts_are_marked_and_sleeps_run_off_the_edge() {
        let mut retried = step("flaky", StepStatus::Completed, 0, Some(1000));
        retried.attempts = 3;
        let attempts = [
            AttemptRecord {
                key: retried.key.clone(),
                attempt: 1,
                error: "boom".into(),
                run_id: "r".into(),
                ended_at: 300,
                interrupted: false,
                backoff_ms: Some(100),
            },
            AttemptRecord {
                key: retried.key.clone(),
                attempt: 2,
                error: "died".into(),
                run_id: "r".into(),
                ended_at: 600,
                interrupted: true,
                backoff_ms: None,
            },
        ];
        let mut sleep = step("durable.sleep", StepStatus::Completed, 1000, Some(1000));
        sleep.output_json = Some("999999999".into());
        let chart = render(&workflow(), &[retried, sleep], &attempts, 2000, &PLAIN);
        let flaky = bars(&chart, "flaky#");
        assert!(
            flaky.find('!').unwrap() < flaky.find('×').unwrap(),
            "{chart}"
        );
        assert!(chart.contains("attempt 3"), "{chart}");
        let sleeping = bars(&chart, "durable.sleep#");
        assert!(sleeping.ends_with('·'), "{chart}");
        assert!(chart.contains("sleep until"), "{chart}");
    }

    #[test]
    fn colour_only_when_asked() {
        let steps = [step("a", StepStatus::Failed, 0, Some(10))];
        let plain = render(&workflow(), &steps, &[], 10, &PLAIN);
        assert!(!plain.contains('\x1b'));
        assert!(plain.contains('▒'));
        let coloured = render(
            &workflow(),
            &steps,
            &[],
            10,
            &Style {
                width: 100,
                colour: true,
            },
        );
        assert!(coloured.contains("\x1b[31m▒"), "{coloured:?}");
    }
}
