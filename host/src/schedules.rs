//! Schedules: workflows started on a calendar. A schedule names a
//! deployment, an input and a cron expression (UTC); `serve` queues one
//! workflow per tick, whose id is the schedule's name and the tick's time
//! (`nightly@2026-12-03T02:00:00Z`).
//!
//! The deterministic id is what makes a tick run once: queuing is
//! idempotent on the id, so a tick queued twice (by two servers, or again
//! after a crash between queuing it and recording that it was) is one
//! workflow. The schedule's next tick moves only after its workflow is
//! queued, and only from the tick this process read (a fenced update).
//!
//! Ticks missed while no server ran are coalesced: the most recent one is
//! queued once when a server next looks, and the older ones are skipped
//! (and counted in the log), so a server down for a week does not start a
//! week of workflows at once.
//!
//! This module knows the rules; the store keeps the rows, the scheduler
//! calls [`fire_due`] from its loop, and the CLI and the API call the rest.

use std::time::{Duration, UNIX_EPOCH};

use chrono::{DateTime, Utc};
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

use crate::control::{self, ControlError, Submission, check_name};
use crate::store::{CheckpointStore, Millis, ScheduleRecord};

/// The longest schedule name: `NAME@TIME` must stay a usable workflow id.
const MAX_SCHEDULE_NAME: usize = 1000;

/// The next tick of a schedule that will not tick again (its stored
/// expression no longer parses): 9999-12-31T23:59:59Z, still a date.
pub const PARKED: Millis = 253_402_300_799_000;

/// Missed ticks counted at most, when coalescing.
const MAX_COUNTED_MISSES: u32 = 10_000;

/// A schedule to add.
#[derive(Debug, Clone)]
pub struct NewSchedule<'a> {
    pub name: &'a str,
    pub cron: &'a str,
    pub deployment: &'a str,
    /// JSON text.
    pub input: &'a str,
    pub queue: &'a str,
}

/// A tick whose workflow was queued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fired {
    pub schedule: String,
    pub workflow_id: String,
    /// Older ticks missed while no server ran, skipped.
    pub skipped: u32,
    /// A workflow with this id existed already (the tick was queued before).
    pub existed: bool,
}

/// What [`fire_due`] did.
#[derive(Debug, Default)]
pub struct Firing {
    pub fired: Vec<Fired>,
    /// Schedules whose tick could not be queued, and why; their tick moves
    /// on (it would fail again).
    pub refused: Vec<(String, ControlError)>,
    /// The soonest tick still to come, if any schedule has one.
    pub next_due: Option<Millis>,
}

impl Firing {
    /// A schedule's next tick is at `tick`: the soonest so far, or not.
    fn due_at(&mut self, tick: Millis) {
        self.next_due = Some(self.next_due.map_or(tick, |due| due.min(tick)));
    }
}

/// What a cron expression looks like, for one that is refused.
const CRON_FORM: &str = "five fields, minute hour day-of-month month day-of-week, e.g. \
    `0 2 * * *` for 02:00 UTC every day (a sixth field first gives seconds)";

/// Parse a cron expression: five fields (minute hour day-of-month month
/// day-of-week), or six with seconds first; UTC.
pub fn parse(expression: &str) -> Result<Cron, ControlError> {
    // No year field: a schedule ticks for ever, or it is refused.
    CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build()
        .parse(expression)
        .map_err(|e| ControlError::InvalidSchedule {
            reason: format!("`{expression}` is not a cron expression: {e}"),
            hint: CRON_FORM,
        })
}

/// The first tick of `cron` strictly after `after`.
pub fn next_tick(cron: &Cron, after: Millis) -> Option<Millis> {
    let after = DateTime::<Utc>::from_timestamp_millis(after)?;
    cron.find_next_occurrence(&after, false)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// The id of the workflow schedule `name` starts for the tick at `tick`.
pub fn workflow_id(name: &str, tick: Millis) -> String {
    let time = UNIX_EPOCH + Duration::from_millis(tick.max(0) as u64);
    format!("{name}@{}", humantime::format_rfc3339_seconds(time))
}

/// Add a schedule; its first tick is the first after `now`. Refused when
/// the name is taken, the expression does not parse or never ticks, or the
/// deployment does not exist.
pub fn add(
    store: &dyn CheckpointStore,
    schedule: &NewSchedule<'_>,
    now: Millis,
) -> Result<ScheduleRecord, ControlError> {
    check_name("the schedule name", schedule.name)?;
    if schedule.name.len() > MAX_SCHEDULE_NAME {
        return Err(ControlError::InvalidName {
            what: "the schedule name",
            value: schedule.name.chars().take(80).collect(),
            reason: "it is longer than 1,000 bytes (its workflows' ids add the tick's time)",
        });
    }
    check_name("the queue name", schedule.queue)?;
    if schedule.name.contains('@') {
        return Err(ControlError::InvalidName {
            what: "the schedule name",
            value: schedule.name.to_owned(),
            reason: "`@` separates the name from the tick in its workflows' ids",
        });
    }
    let cron = parse(schedule.cron)?;
    let first = next_tick(&cron, now).ok_or_else(|| ControlError::InvalidSchedule {
        reason: format!("`{}` has no tick after now", schedule.cron),
        hint: CRON_FORM,
    })?;
    let input = serde_json::from_str::<serde_json::Value>(schedule.input)
        .map_err(|e| ControlError::InvalidInput {
            what: "the input",
            reason: e.to_string(),
        })?
        .to_string();
    if store.deployments(Some(schedule.deployment))?.is_empty() {
        return Err(ControlError::UnknownDeployment {
            name: schedule.deployment.to_owned(),
        });
    }
    let record = ScheduleRecord {
        name: schedule.name.to_owned(),
        cron: schedule.cron.trim().to_owned(),
        deployment: schedule.deployment.to_owned(),
        input,
        queue: schedule.queue.to_owned(),
        next_tick: first,
        created_at: now,
    };
    if !store.add_schedule(&record)? {
        return Err(ControlError::Refused {
            reason: format!(
                "a schedule named `{}` exists already: remove it first \
                 (`durable-host schedule remove {}`), or pick another name",
                schedule.name, schedule.name
            ),
        });
    }
    Ok(record)
}

/// Remove schedule `name`. The workflows it started are left alone.
pub fn remove(store: &dyn CheckpointStore, name: &str) -> Result<(), ControlError> {
    if store.remove_schedule(name)? {
        Ok(())
    } else {
        Err(ControlError::UnknownSchedule {
            name: name.to_owned(),
        })
    }
}

/// Queue the workflow of every schedule whose tick is due at `now`, and
/// move each to its first tick after `now`.
pub fn fire_due(store: &dyn CheckpointStore, now: Millis) -> Result<Firing, ControlError> {
    let mut firing = Firing::default();
    for schedule in store.schedules()? {
        if schedule.next_tick > now {
            firing.due_at(schedule.next_tick);
            continue;
        }
        let cron = match parse(&schedule.cron) {
            Ok(cron) => cron,
            Err(e) => {
                // It would fail at every look: parked, said once.
                store.advance_schedule(&schedule.name, schedule.next_tick, PARKED)?;
                firing.refused.push((schedule.name, e));
                continue;
            }
        };
        let (tick, skipped) = latest_tick(&cron, schedule.next_tick, now);
        let id = workflow_id(&schedule.name, tick);
        let submitted = control::submit(
            store,
            &Submission {
                deployment: &schedule.deployment,
                workflow_id: Some(&id),
                input: &schedule.input,
                queue: &schedule.queue,
            },
        );
        match submitted {
            Ok(submitted) => firing.fired.push(Fired {
                schedule: schedule.name.clone(),
                workflow_id: id,
                skipped,
                existed: !submitted.created,
            }),
            // The database failed: the tick stays due, for the next look.
            Err(ControlError::Store(e)) => return Err(e.into()),
            Err(refused) => firing.refused.push((schedule.name.clone(), refused)),
        }
        // An expression that ticks no more is parked rather than left due.
        let next = next_tick(&cron, now).unwrap_or(PARKED);
        // Another server may have moved it first: then it is its tick.
        if store.advance_schedule(&schedule.name, schedule.next_tick, next)? && next < PARKED {
            firing.due_at(next);
        }
    }
    Ok(firing)
}

/// The most recent tick from `due` up to `now`, and how many ticks before
/// it were missed.
fn latest_tick(cron: &Cron, due: Millis, now: Millis) -> (Millis, u32) {
    let mut tick = due;
    let mut skipped = 0;
    while let Some(next) = next_tick(cron, tick).filter(|&next| next <= now) {
        if skipped == MAX_COUNTED_MISSES {
            // Counting stops here; jump straight to the last tick.
            let last = DateTime::<Utc>::from_timestamp_millis(now)
                .and_then(|now| cron.find_previous_occurrence(&now, true).ok())
                .map_or(next, |t| t.timestamp_millis());
            return (last.max(next), skipped);
        }
        tick = next;
        skipped += 1;
    }
    (tick, skipped)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-02T10:00:00Z.
    const TEN: Millis = 1_796_205_600_000;

    #[test]
    fn ticks_follow_the_expression_in_utc() {
        let hourly = parse("0 * * * *").unwrap();
        assert_eq!(next_tick(&hourly, TEN), Some(TEN + 3_600_000));
        assert_eq!(next_tick(&hourly, TEN - 1), Some(TEN));
        let every_second = parse("* * * * * *").unwrap();
        assert_eq!(next_tick(&every_second, TEN + 10), Some(TEN + 1000));
        assert_eq!(workflow_id("nightly", TEN), "nightly@2026-12-02T10:00:00Z");
    }

    #[test]
    fn missed_ticks_are_coalesced_into_the_latest() {
        let hourly = parse("0 * * * *").unwrap();
        assert_eq!(latest_tick(&hourly, TEN, TEN), (TEN, 0));
        assert_eq!(latest_tick(&hourly, TEN, TEN + 3_599_999), (TEN, 0));
        assert_eq!(
            latest_tick(&hourly, TEN, TEN + 3 * 3_600_000 + 5),
            (TEN + 3 * 3_600_000, 3)
        );
        let every_second = parse("* * * * * *").unwrap();
        let (tick, skipped) = latest_tick(&every_second, TEN, TEN + 86_400_000);
        assert_eq!(tick, TEN + 86_400_000);
        assert_eq!(skipped, MAX_COUNTED_MISSES);
    }

    #[test]
    fn a_bad_expression_says_what_one_looks_like() {
        let refused = parse("every day").unwrap_err();
        assert!(
            refused
                .to_string()
                .contains("`every day` is not a cron expression"),
            "{refused}"
        );
        let ControlError::InvalidSchedule { hint, .. } = refused else {
            panic!("{refused:?}");
        };
        assert!(hint.contains("`0 2 * * *`"), "{hint}");
        assert!(parse("61 * * * *").is_err());
        // No year field: a schedule never runs out of ticks.
        assert!(parse("0 0 12 25 12 * 2026").is_err());
    }
}
