//! One thread keeps the leases of all of a server's runs alive, in one
//! transaction per round, instead of a heartbeat thread per run.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::engine::{LeaseGuard, LeaseKeeper, LeaseSignals, renewal_interval};
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
    ) -> JoinHandle<()> {
        let leases = Arc::clone(self);
        thread::Builder::new()
            .name("leases".to_owned())
            .spawn(move || {
                let interval = renewal_interval(leases.stale_after);
                while let Err(RecvTimeoutError::Timeout) = stop.recv_timeout(interval) {
                    if let Err(error) = leases.renew(store.as_ref()) {
                        // The next round tries again; a lease outlives a few.
                        tracing::warn!(%error, "renewing leases failed");
                    }
                }
            })
            .expect("spawn the lease thread")
    }

    fn renew(&self, store: &dyn CheckpointStore) -> Result<(), StoreError> {
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
            return Ok(());
        }
        let runs: Vec<(String, String)> = tracked
            .iter()
            .map(|(id, run, _)| (id.clone(), run.clone()))
            .collect();
        let until = now_millis() + self.stale_after.as_millis() as Millis;
        let renewals = store.renew_leases(&runs, until)?;
        for ((workflow_id, _, signals), renewal) in tracked.iter().zip(renewals) {
            if !renewal.owned && !signals.lost() {
                tracing::warn!(workflow_id, "lost the lease to another run");
            }
            signals.update(renewal);
        }
        Ok(())
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

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
