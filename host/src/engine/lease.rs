//! Run ownership: which process may execute a workflow's steps.
//!
//! The run that claims a workflow records its process and a lease deadline,
//! and a [`Heartbeat`] thread pushes the deadline forward while the run is
//! alive. Another run may take the workflow over only when the lease has
//! expired, or when the owner is provably dead: a process of this same boot
//! of this machine, in this same pid namespace, whose pid is gone or now
//! names a process that started at another time. A pid seen from another
//! namespace (a container, `unshare --pid`) proves nothing, so there only
//! the lease speaks. Every write of a run is fenced by its ownership in the
//! store, so a run that lost it (it was frozen past its lease, say) stops at
//! its next write instead of overwriting its successor's work.

use std::path::Path;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::store::{
    CheckpointStore, LeaseRenewal, Millis, Owner, StoreError, WorkflowRecord, now_millis,
};

/// This process, as recorded in the workflows it owns.
pub fn this_process() -> Owner {
    static ME: OnceLock<Owner> = OnceLock::new();
    ME.get_or_init(|| {
        let pid = std::process::id();
        // A /proc mounted for another pid namespace (`unshare --pid`
        // without `--mount-proc`) shows other processes under our pids:
        // then nothing it says about pids can prove a death.
        let own_proc = proc_is_ours();
        Owner {
            pid,
            host: host_name(),
            boot_id: read_trimmed("/proc/sys/kernel/random/boot_id"),
            pid_ns: std::fs::read_link("/proc/self/ns/pid")
                .ok()
                .filter(|_| own_proc)
                .map(|link| link.to_string_lossy().into_owned()),
            started: own_proc
                .then(|| std::fs::read_to_string("/proc/self/stat").ok())
                .flatten()
                .and_then(|stat| parse_stat(&stat))
                .map(|(_, started)| started),
        }
    })
    .clone()
}

/// Whether /proc belongs to our pid namespace: `/proc/self` names our pid.
fn proc_is_ours() -> bool {
    std::fs::read_link("/proc/self")
        .is_ok_and(|link| link.to_string_lossy() == std::process::id().to_string())
}

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|text| text.trim().to_owned())
        .filter(|text| !text.is_empty())
}

fn host_name() -> String {
    read_trimmed("/proc/sys/kernel/hostname")
        .or_else(|| read_trimmed("/etc/hostname"))
        .unwrap_or_else(|| "localhost".to_owned())
}

/// Whether the run that owns `workflow` may still be executing it.
pub fn owner_alive(workflow: &WorkflowRecord, now: Millis) -> bool {
    workflow.lease_expires_at > now && !provably_dead(&workflow.owner, &this_process())
}

/// Whether `owner` is a process that `me` can see has ended: one of the same
/// machine boot and pid namespace whose pid is gone, a zombie, or reused by
/// a process that started at another time.
fn provably_dead(owner: &Owner, me: &Owner) -> bool {
    let comparable = |a: &Option<String>, b: &Option<String>| a.is_some() && a == b;
    if owner.host != me.host
        || !comparable(&owner.boot_id, &me.boot_id)
        || !comparable(&owner.pid_ns, &me.pid_ns)
    {
        return false;
    }
    if owner.pid == me.pid {
        // This very process, unless the pid was reused since: its runs may
        // still be alive (a server runs many), so only the lease speaks.
        return owner.started.is_some() && me.started.is_some() && owner.started != me.started;
    }
    match (process_state(owner.pid), owner.started) {
        (ProcessState::Gone, _) => true,
        (ProcessState::Running { started }, Some(recorded)) => started != recorded,
        (ProcessState::Running { .. }, None) => false,
        (ProcessState::Unknown, _) => false,
    }
}

enum ProcessState {
    Gone,
    Running { started: i64 },
    Unknown,
}

/// The state of `pid` in this pid namespace, from /proc. Zombies count as
/// gone: they run nothing.
fn process_state(pid: u32) -> ProcessState {
    let stat = Path::new("/proc").join(pid.to_string()).join("stat");
    match std::fs::read_to_string(&stat) {
        Ok(stat) => match parse_stat(&stat) {
            Some((state, _)) if state == 'Z' || state == 'X' => ProcessState::Gone,
            Some((_, started)) => ProcessState::Running { started },
            None => ProcessState::Unknown,
        },
        // Only a missing entry proves the process gone; a read refused
        // (permissions, no descriptors left) proves nothing.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && proc_is_ours() => ProcessState::Gone,
        Err(_) => ProcessState::Unknown,
    }
}

/// The state letter and start time (field 22, in clock ticks since boot) of
/// a `/proc/PID/stat` line. The command name in field 2 may hold spaces
/// and parentheses, so fields are counted from its last `)`.
fn parse_stat(stat: &str) -> Option<(char, i64)> {
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // After the state (field 3), the start time is the 19th field.
    let started = fields.nth(18)?.parse().ok()?;
    Some((state, started))
}

/// What a run hears about its workflow while it runs: it lost its
/// ownership, or was asked to cancel. Set by whoever renews the lease.
#[derive(Debug, Default)]
pub struct LeaseSignals {
    /// Renewals begin once the run has claimed the workflow.
    armed: AtomicBool,
    lost: AtomicBool,
    cancel: AtomicBool,
    /// The host is shutting down: stop at the next step boundary.
    stop: AtomicBool,
}

impl LeaseSignals {
    /// Another run took the workflow over.
    pub fn lost(&self) -> bool {
        self.lost.load(Ordering::Relaxed)
    }

    /// `durable-host cancel` asked this run to stop.
    pub fn cancel_requested(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    /// The host asks the run to stop at its next step boundary, leaving the
    /// workflow for another process (a graceful shutdown).
    pub fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Whether the lease is to be renewed (the workflow is claimed).
    pub fn armed(&self) -> bool {
        self.armed.load(Ordering::Relaxed)
    }

    /// Take in what a renewal answered.
    pub fn update(&self, renewal: LeaseRenewal) {
        self.lost.store(!renewal.owned, Ordering::Relaxed);
        self.cancel
            .store(renewal.cancel_requested, Ordering::Relaxed);
    }
}

/// Keeps the leases of runs alive: a thread per run for a one-shot `run`, one
/// thread for all of a server's runs.
pub trait LeaseKeeper: Send + Sync {
    /// Get ready to renew `run_id`'s lease on `workflow_id` (opening what
    /// that needs, so that a failure comes before the run's first write).
    /// Renewals begin when the guard is armed and stop when it is dropped.
    fn keep(
        &self,
        store: &dyn CheckpointStore,
        workflow_id: &str,
        run_id: &str,
    ) -> Result<LeaseGuard, StoreError>;

    /// How long a lease lasts without renewal.
    fn stale_after(&self) -> Duration;
}

/// A run's hold on its lease; renewals stop when it is dropped.
pub struct LeaseGuard {
    signals: Arc<LeaseSignals>,
    _renewer: Box<dyn Send>,
}

impl LeaseGuard {
    pub fn new(signals: Arc<LeaseSignals>, renewer: Box<dyn Send>) -> Self {
        Self {
            signals,
            _renewer: renewer,
        }
    }

    /// The run has claimed the workflow: renew from now on.
    pub fn arm(&self) {
        self.signals.armed.store(true, Ordering::Relaxed);
    }

    pub fn signals(&self) -> &LeaseSignals {
        &self.signals
    }
}

/// The one-shot `run`'s keeper: a heartbeat thread per run, on a connection
/// of its own.
pub struct OwnHeartbeat {
    pub stale_after: Duration,
}

impl LeaseKeeper for OwnHeartbeat {
    fn keep(
        &self,
        store: &dyn CheckpointStore,
        workflow_id: &str,
        run_id: &str,
    ) -> Result<LeaseGuard, StoreError> {
        let heartbeat = Heartbeat::start(
            store.reopen()?,
            workflow_id.to_owned(),
            run_id.to_owned(),
            self.stale_after,
        )?;
        Ok(LeaseGuard::new(
            Arc::clone(&heartbeat.signals),
            Box::new(heartbeat),
        ))
    }

    fn stale_after(&self) -> Duration {
        self.stale_after
    }
}

/// How often a lease of `stale_after` is renewed: a few times per lease.
pub fn renewal_interval(stale_after: Duration) -> Duration {
    (stale_after / 4).clamp(Duration::from_millis(100), Duration::from_secs(2))
}

/// The error of a thread the host could not start (short of memory, or of
/// threads): before the run writes anything, so nothing is left behind.
/// `what`: starting it, e.g. "starting the thread that renews leases".
pub fn no_thread(what: &'static str, error: &std::io::Error) -> StoreError {
    StoreError::HostMemory {
        what,
        reason: error.to_string(),
    }
}

/// Renews one run's lease in the background until dropped.
struct Heartbeat {
    signals: Arc<LeaseSignals>,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Heartbeat {
    fn start(
        store: Box<dyn CheckpointStore>,
        workflow_id: String,
        run_id: String,
        stale_after: Duration,
    ) -> Result<Self, StoreError> {
        let signals = Arc::new(LeaseSignals::default());
        let (stop, stopped) = mpsc::channel::<()>();
        let interval = renewal_interval(stale_after);
        let thread = thread::Builder::new()
            .name(format!("heartbeat {workflow_id}"))
            .spawn({
                let signals = Arc::clone(&signals);
                move || {
                    while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
                        if !signals.armed() {
                            continue;
                        }
                        let until = now_millis() + stale_after.as_millis() as Millis;
                        // A failed renewal is retried on the next beat; the
                        // lease is long enough to absorb a few.
                        if let Ok(renewal) = store.renew_lease(&workflow_id, &run_id, until) {
                            signals.update(renewal);
                            if !renewal.owned {
                                break;
                            }
                        }
                    }
                }
            })
            .map_err(|e| no_thread("starting the thread that renews the lease", &e))?;
        Ok(Self {
            signals,
            stop: Some(stop),
            thread: Some(thread),
        })
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

    fn process_start(pid: u32) -> Option<i64> {
        match process_state(pid) {
            ProcessState::Running { started } => Some(started),
            _ => None,
        }
    }

    #[test]
    fn this_process_is_running_and_a_reaped_child_is_gone() {
        let me = this_process();
        assert!(matches!(
            process_state(me.pid),
            ProcessState::Running { .. }
        ));
        assert!(me.boot_id.is_some() && me.pid_ns.is_some() && me.started.is_some());
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(matches!(process_state(pid), ProcessState::Gone));
    }

    #[test]
    fn only_a_comparable_owner_is_provably_dead() {
        let me = this_process();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = Owner {
            pid: child.id(),
            started: None,
            ..me.clone()
        };
        child.wait().unwrap();
        assert!(provably_dead(&dead, &me));
        // The same pid seen from another pid namespace, or another boot,
        // proves nothing.
        let other_ns = Owner {
            pid_ns: Some("pid:[1]".into()),
            ..dead.clone()
        };
        assert!(!provably_dead(&other_ns, &me));
        let other_boot = Owner {
            boot_id: Some("another boot".into()),
            ..dead.clone()
        };
        assert!(!provably_dead(&other_boot, &me));
        let unknown = Owner {
            pid_ns: None,
            ..dead
        };
        assert!(!provably_dead(&unknown, &me));
        // A live pid that started at another time is a reused pid.
        let parent = Owner {
            pid: std::os::unix::process::parent_id(),
            started: Some(1),
            ..me.clone()
        };
        assert!(provably_dead(&parent, &me));
        let parent_now = Owner {
            started: process_start(parent.pid),
            ..parent
        };
        assert!(!provably_dead(&parent_now, &me));
    }

    #[test]
    fn stat_lines_with_odd_command_names_parse() {
        let line = "42 (a (weird) name) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 777 19 20";
        assert_eq!(parse_stat(line), Some(('S', 777)));
    }
}
