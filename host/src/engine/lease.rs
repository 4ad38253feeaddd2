//! Run ownership: which process may execute a workflow's steps.
//!
//! The run that claims a workflow records its process and a lease deadline,
//! and a [`Heartbeat`] thread pushes the deadline forward while the run is
//! alive. Another run may take the workflow over only when the lease has
//! expired, or when the owner is provably dead: a process on this same host
//! whose pid no longer exists. Every write of a run is conditional on its
//! ownership, so a run that lost it (it was frozen past its lease, say)
//! stops at its next write instead of overwriting its successor's work.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::store::{CheckpointStore, Millis, Owner, WorkflowRecord, now_millis};

/// This process, as recorded in the workflows it owns.
pub fn this_process() -> Owner {
    Owner {
        pid: std::process::id(),
        host: host_name(),
    }
}

fn host_name() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|path| std::fs::read_to_string(path).ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// Whether the run that owns `workflow` may still be executing it.
pub fn owner_alive(workflow: &WorkflowRecord, now: Millis) -> bool {
    if workflow.lease_expires_at <= now {
        return false;
    }
    let me = this_process();
    if workflow.owner.host != me.host {
        // Another machine: only its lease speaks for it.
        return true;
    }
    workflow.owner.pid != me.pid && process_running(workflow.owner.pid)
}

/// Whether `pid` is a live (not exited, not zombie) process. Where that
/// cannot be known, assume it is, and let the lease decide.
fn process_running(pid: u32) -> bool {
    let stat = Path::new("/proc").join(pid.to_string()).join("stat");
    match std::fs::read_to_string(&stat) {
        // The state follows the command name, which ends with the last ')'.
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) if Path::new("/proc/self/stat").exists() => false,
        Err(_) => true,
    }
}

/// Renews a run's lease in the background, and passes on what it hears:
/// the run lost its ownership, or was asked to cancel.
pub struct Heartbeat {
    signals: Arc<Signals>,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct Signals {
    lost: AtomicBool,
    cancel: AtomicBool,
}

impl Heartbeat {
    /// Renew the lease of `run_id` on `workflow_id` to `stale_after` from
    /// now, a few times per `stale_after`, until dropped.
    pub fn start(
        store: Box<dyn CheckpointStore>,
        workflow_id: String,
        run_id: String,
        stale_after: Duration,
    ) -> Self {
        let signals = Arc::new(Signals::default());
        let (stop, stopped) = mpsc::channel::<()>();
        let interval = (stale_after / 4).clamp(Duration::from_millis(100), Duration::from_secs(2));
        let thread = thread::Builder::new()
            .name(format!("heartbeat {workflow_id}"))
            .spawn({
                let signals = Arc::clone(&signals);
                move || {
                    while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
                        let until = now_millis() + stale_after.as_millis() as Millis;
                        // A failed renewal is retried on the next beat; the
                        // lease is long enough to absorb a few.
                        if let Ok(renewal) = store.renew_lease(&workflow_id, &run_id, until) {
                            signals.lost.store(!renewal.owned, Ordering::Relaxed);
                            signals
                                .cancel
                                .store(renewal.cancel_requested, Ordering::Relaxed);
                            if !renewal.owned {
                                break;
                            }
                        }
                    }
                }
            })
            .expect("spawn the heartbeat thread");
        Self {
            signals,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Another run took the workflow over.
    pub fn lost(&self) -> bool {
        self.signals.lost.load(Ordering::Relaxed)
    }

    /// `durable-host cancel` asked this run to stop.
    pub fn cancel_requested(&self) -> bool {
        self.signals.cancel.load(Ordering::Relaxed)
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_running_and_a_reaped_child_is_not() {
        assert!(process_running(std::process::id()));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(!process_running(pid));
    }
}
