//! One thread keeps the leases of all of a server's runs alive, in one
//! transaction per round, instead of a heartbeat thread per run; and a
//! check, at start, that this host's clock agrees with the database's.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::engine::{LeaseGuard, LeaseKeeper, LeaseSignals, no_thread, renewal_interval};
use crate::store::{CheckpointStore, Millis, StoreError, now_millis};

/// The leases of every run of this process.
pub struct SharedLeases {
    stale_after: Duration,
    runs: Mutex<HashMap<u64, Tracked>>,
    next_key: AtomicU64,
    stopping: AtomicBool,
}

struct Tracked {
    workflow_id: String,
    run_id: String,
    signals: Arc<LeaseSignals>,
}

impl SharedLeases {
    pub fn new(stale_after: Duration) -> Arc<Self> {
        Arc::new(Self {
            stale_after,
            runs: Mutex::new(HashMap::new()),
            next_key: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
        })
    }

    /// Renew every armed lease a few times per lease, until `stop` is
    /// dropped (or sent to).
    pub fn start_renewing(
        self: &Arc<Self>,
        store: Box<dyn CheckpointStore>,
        stop: Receiver<()>,
    ) -> Result<JoinHandle<()>, StoreError> {
        let leases = Arc::clone(self);
        thread::Builder::new()
            .name("leases".to_owned())
            .spawn(move || {
                let interval = renewal_interval(leases.stale_after);
                while let Err(RecvTimeoutError::Timeout) = stop.recv_timeout(interval) {
                    match leases.renew(store.as_ref()) {
                        Ok(taken) => {
                            for workflow_id in taken {
                                tracing::warn!(workflow_id, "lost the lease to another run");
                            }
                        }
                        // The next round tries again; a lease outlives a few.
                        Err(error) => tracing::warn!(%error, "renewing leases failed"),
                    }
                }
            })
            .map_err(|e| no_thread("starting the thread that renews leases", &e))
    }

    /// One round: renew every armed lease and tell each run what its
    /// renewal answered; the workflows another run has taken over since.
    fn renew(&self, store: &dyn CheckpointStore) -> Result<Vec<String>, StoreError> {
        let tracked: Vec<(String, String, Arc<LeaseSignals>)> = lock(&self.runs)
            .values()
            .filter(|run| run.signals.armed())
            .map(|run| {
                (
                    run.workflow_id.clone(),
                    run.run_id.clone(),
                    Arc::clone(&run.signals),
                )
            })
            .collect();
        if tracked.is_empty() {
            return Ok(Vec::new());
        }
        let runs: Vec<(String, String)> = tracked
            .iter()
            .map(|(id, run, _)| (id.clone(), run.clone()))
            .collect();
        let until = now_millis() + self.stale_after.as_millis() as Millis;
        let renewals = store.renew_leases(&runs, until)?;
        let mut taken = Vec::new();
        for ((workflow_id, run_id, signals), renewal) in tracked.into_iter().zip(renewals) {
            if !renewal.owned && !signals.lost() && taken_over(store, &workflow_id, &run_id) {
                taken.push(workflow_id);
            }
            signals.update(renewal);
        }
        Ok(taken)
    }

    /// Ask every run to stop at its next step boundary (a graceful
    /// shutdown), and the runs that start from now on too.
    pub fn stop_all(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        for run in lock(&self.runs).values() {
            run.signals.request_stop();
        }
    }

    /// How many runs hold a lease now.
    pub fn active(&self) -> usize {
        lock(&self.runs).len()
    }
}

impl LeaseKeeper for Arc<SharedLeases> {
    fn keep(
        &self,
        _store: &dyn CheckpointStore,
        workflow_id: &str,
        run_id: &str,
    ) -> Result<LeaseGuard, StoreError> {
        let signals = Arc::new(LeaseSignals::default());
        if self.stopping.load(Ordering::Relaxed) {
            signals.request_stop();
        }
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        lock(&self.runs).insert(
            key,
            Tracked {
                workflow_id: workflow_id.to_owned(),
                run_id: run_id.to_owned(),
                signals: Arc::clone(&signals),
            },
        );
        let untrack = Untrack {
            leases: Arc::clone(self),
            key,
        };
        Ok(LeaseGuard::new(signals, Box::new(untrack)))
    }

    fn stale_after(&self) -> Duration {
        self.stale_after
    }
}

/// Stops renewing one run's lease when its guard is dropped.
struct Untrack {
    leases: Arc<SharedLeases>,
    key: u64,
}

impl Drop for Untrack {
    fn drop(&mut self) {
        lock(&self.leases.runs).remove(&self.key);
    }
}

/// Whether a lease that was not renewed went to another run. A round takes
/// its list of runs before its statement, which may wait for the row locks
/// of runs writing meanwhile: a run that ended its workflow (or put it to
/// sleep, or released it) in between is not renewed either, and that is no
/// loss to report.
fn taken_over(store: &dyn CheckpointStore, workflow_id: &str, run_id: &str) -> bool {
    match store.workflow(workflow_id) {
        Ok(Some(workflow)) => workflow.run_id != run_id,
        Ok(None) | Err(_) => true,
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// How far this host's clock may stray from the database server's before
/// `serve` warns.
const CLOCK_SKEW_WARNING: Millis = 1_000;

/// Warn when this host's clock and the database server's (see
/// [`CheckpointStore::server_clock`]) disagree: leases are written by one
/// host's clock and judged by another's, so a skew shortens or stretches
/// every lease another host sees, and one near `stale_after` hands a live
/// worker's workflows to a second worker.
pub fn check_clock(store: &dyn CheckpointStore, stale_after: Duration) {
    let before = now_millis();
    let server = store.server_clock();
    let after = now_millis();
    match server {
        Ok(Some(server)) => {
            if let Some(warning) = clock_skew(before, server, after, stale_after) {
                tracing::warn!("{warning}");
            }
        }
        Ok(None) => {}
        Err(error) => tracing::debug!(%error, "could not read the database server's clock"),
    }
}

/// The warning for a skew between this host's clock, read `before` and
/// `after` asking, and the `server`'s, if it is surely larger than
/// [`CLOCK_SKEW_WARNING`].
fn clock_skew(
    before: Millis,
    server: Millis,
    after: Millis,
    stale_after: Duration,
) -> Option<String> {
    let skew = (before + after) / 2 - server;
    let uncertainty = (after - before) / 2;
    if skew.abs() - uncertainty <= CLOCK_SKEW_WARNING {
        return None;
    }
    Some(format!(
        "this host's clock is {:.1} s {} the database server's: leases are judged by other \
         hosts' clocks, so keep every host in sync (NTP, chrony); a skew near --stale-after \
         ({} s) lets another worker take over this one's live workflows",
        skew.abs() as f64 / 1000.0,
        if skew > 0 { "ahead of" } else { "behind" },
        stale_after.as_secs()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance::{end, start, take_over};
    use crate::store::{SqliteStore, WorkflowStatus};

    #[test]
    fn a_round_reports_only_workflows_another_run_took_over() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("durable.db")).unwrap();
        let leases = SharedLeases::new(Duration::from_secs(30));
        let guards: Vec<LeaseGuard> = ["kept", "ended", "taken"]
            .into_iter()
            .map(|id| {
                start(&store, id, "r1");
                let guard = leases.keep(&store, id, "r1").unwrap();
                guard.arm();
                guard
            })
            .collect();
        // Between a round's list and its statement, one run ends its own
        // workflow and another run takes one over.
        end(
            &store,
            "ended",
            "r1",
            WorkflowStatus::Completed,
            Ok("1".into()),
        )
        .unwrap();
        let taken = store.workflow("taken").unwrap().unwrap();
        take_over(&store, &taken, "r2").unwrap();

        assert_eq!(leases.renew(&store).unwrap(), ["taken"]);
        let lost: Vec<bool> = guards.iter().map(|g| g.signals().lost()).collect();
        assert_eq!(lost, [false, true, true], "every run hears its renewal");
        // Said once: the next round knows the run heard it.
        assert!(leases.renew(&store).unwrap().is_empty());
    }

    #[test]
    fn a_clock_skew_is_named_only_when_it_is_surely_past_a_second() {
        let lease = Duration::from_secs(30);
        assert_eq!(clock_skew(10_000, 10_020, 10_040, lease), None);
        // 1.5 s, but the answer took 2 s: it may be 0.5 s.
        assert_eq!(clock_skew(10_000, 9_500, 12_000, lease), None);
        let ahead = clock_skew(10_000, 7_990, 10_020, lease).unwrap();
        assert!(
            ahead.starts_with("this host's clock is 2.0 s ahead of"),
            "{ahead}"
        );
        assert!(ahead.contains("(30 s)"), "{ahead}");
        let behind = clock_skew(10_000, 15_000, 10_000, lease).unwrap();
        assert!(behind.contains("5.0 s behind"), "{behind}");
    }
}
