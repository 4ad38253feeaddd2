//! `durable-host schedule add|list|remove`: workflows started on a
//! calendar by `serve` (see [`durable_host::schedules`]).

use std::process::ExitCode;

use serde_json::json;

use durable_host::api::model::ScheduleView;
use durable_host::control::DEFAULT_QUEUE;
use durable_host::schedules::{self, NewSchedule};
use durable_host::store::{Database, now_millis};

use super::args::ScheduleAction;
use super::exit;
use super::report::print_json;
use super::table::{render, timestamp};

pub fn schedule(
    db: &Database,
    json_mode: bool,
    action: ScheduleAction,
) -> anyhow::Result<ExitCode> {
    // Listing only reads (see `Database::open_to_read`).
    let store = &*match action {
        ScheduleAction::List => db.open_to_read()?,
        _ => db.open()?,
    };
    match action {
        ScheduleAction::Add {
            name,
            cron,
            deployment,
            input,
            queue,
        } => {
            let added = schedules::add(
                store,
                &NewSchedule {
                    name: &name,
                    cron: &cron,
                    deployment: &deployment,
                    input: &input,
                    queue: &queue,
                },
                now_millis(),
            )?;
            if json_mode {
                print_json(&ScheduleView::from(&added));
            } else {
                let queue = if added.queue == DEFAULT_QUEUE {
                    String::new()
                } else {
                    format!(" in queue `{}`", added.queue)
                };
                outln!(
                    "schedule {name} added: `{}` runs {deployment}{queue}; first tick {} UTC, as \
                     workflow {} (a `durable-host serve` on this database starts it)",
                    added.cron,
                    timestamp(added.next_tick),
                    schedules::workflow_id(&name, added.next_tick)
                );
            }
        }
        ScheduleAction::List => {
            let all = store.schedules()?;
            if json_mode {
                print_json(&all.iter().map(ScheduleView::from).collect::<Vec<_>>());
            } else if all.is_empty() {
                outln!(
                    "no schedules (`durable-host schedule add NAME --cron EXPR --deployment D` \
                     adds one)"
                );
            } else {
                let rows: Vec<Vec<String>> = all
                    .iter()
                    .map(|s| {
                        vec![
                            s.name.clone(),
                            s.cron.clone(),
                            s.deployment.clone(),
                            s.queue.clone(),
                            timestamp(s.next_tick),
                        ]
                    })
                    .collect();
                out!(
                    "{}",
                    render(
                        &[
                            "NAME",
                            "CRON (UTC)",
                            "DEPLOYMENT",
                            "QUEUE",
                            "NEXT TICK (UTC)"
                        ],
                        &rows
                    )
                );
            }
        }
        ScheduleAction::Remove { name } => {
            schedules::remove(store, &name)?;
            if json_mode {
                print_json(&json!({"name": name, "removed": true}));
            } else {
                outln!("schedule {name} removed; the workflows it started are left alone");
            }
        }
    }
    Ok(ExitCode::from(exit::SUCCESS))
}
