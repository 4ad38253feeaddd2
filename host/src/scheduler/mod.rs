//! `serve`: one process runs many workflows from the database's queues,
//! resumes sleeping ones when they are due and takes over those whose owner
//! died, until it is asked to stop.
//!
//! The scheduler owns what to run when: per queue, it takes ready
//! workflows (oldest first) up to the queue's concurrency, each on a thread
//! of its own, and wakes when a run ends, when the next sleeper or schedule
//! tick is due, or every poll interval (for submissions from other
//! processes). Due schedule ticks are queued by [`schedules::fire_due`]. It
//! does not know how a run replays or checkpoints (the engine), how a
//! component is instantiated (the runtime), or how writes are batched (the
//! store's group commit). Leases of all runs are kept by one thread
//! ([`leases`]).
//!
//! Runs happen on threads rather than async tasks: a workflow blocks in its
//! steps (files, CPU) and in SQLite; a long sleep unloads it entirely, so a
//! thread is only held while a workflow is actually running.

pub mod leases;

use std::collections::{HashMap, HashSet};
use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::control::ControlError;
use crate::engine::{
    CrashPlan, EngineError, Opened, RunObserver, RunReport, RunRequest, StepEvent, WorkflowRun,
    owner_alive, this_process,
};
use crate::metrics::Metrics;
use crate::runtime::{
    ComponentCache, ComponentFile, Grants, Runtime, RuntimeConfig, RuntimeError, WorkflowComponent,
};
use crate::schedules;
use crate::store::{
    CheckpointStore, CommitObserver, Database, GroupCommitStore, Millis, StoreError, WorkListener,
    WorkflowRecord, WorkflowStatus, now_millis,
};
use leases::SharedLeases;

/// How a server runs.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Each queue served, with how many of its workflows run at once.
    pub queues: Vec<(String, usize)>,
    /// How long a run's lease lasts without renewal.
    pub stale_after: Duration,
    /// On shutdown, how long runs may take to reach a step boundary.
    pub shutdown_grace: Duration,
    /// How long a cancelled workflow may run compensation steps.
    pub cancel_grace: Duration,
    /// How often the database is checked for work from other processes.
    pub poll_interval: Duration,
    pub cache: Option<ComponentCache>,
    /// Where runs, steps, takeovers, timers and commits are counted.
    pub metrics: Arc<Metrics>,
}

/// What a server did, for its last log line.
#[derive(Debug, Default, Clone)]
pub struct ServeSummary {
    /// Runs this server began (claimed the workflow).
    pub started: u64,
    /// Runs another process got to first: it claimed, finished, cancelled
    /// or upgraded the workflow between this server's read and its run's
    /// claim.
    pub lost: u64,
    pub completed: u64,
    pub failed: u64,
    pub suspended: u64,
    pub cancelled: u64,
    pub slept: u64,
    /// Runs that ended waiting for a signal.
    pub waited: u64,
    /// Runs still at work when the shutdown grace ran out.
    pub abandoned: usize,
    /// Writes of all runs, the commits they shared, and how many of those
    /// were flushed to disk (group commit).
    pub writes: u64,
    pub commits: u64,
    pub flushed_commits: u64,
}

/// Why a server could not start or go on.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

/// Set by a signal handler (or a test): stop taking work and shut down.
pub type ShutdownFlag = Arc<AtomicBool>;

/// Run workflows from `store`'s queues until `shutdown` is set, then drain:
/// runs stop at their next step boundary (within `shutdown_grace`) and
/// release their leases, so another process resumes them at once.
pub fn serve(
    store: GroupCommitStore,
    config: &ServeConfig,
    shutdown: ShutdownFlag,
) -> Result<ServeSummary, ServeError> {
    let runs: usize = config
        .queues
        .iter()
        .map(|(_, concurrency)| concurrency)
        .sum();
    let runtime = Runtime::new(RuntimeConfig {
        interruptible: true,
        cache: config.cache.clone(),
        echo_output: false,
        pooled_runs: (runs > 0).then_some(runs),
    })?;
    if let Some(reason) = runtime.pool_refused() {
        tracing::info!(
            runs,
            "cannot reserve the instance pool ({reason}): instances are mapped one by one, \
             which is slower for short workflows"
        );
    }
    store.observe_commits(Arc::clone(&config.metrics) as Arc<dyn CommitObserver>);
    leases::check_clock(&store, config.stale_after);
    let leases = SharedLeases::new(config.stale_after);
    let (stop_renewing, renewals_stopped) = mpsc::channel::<()>();
    let renewer = leases.start_renewing(Box::new(store.clone()), renewals_stopped)?;
    let shared = Arc::new(Shared {
        store,
        runtime,
        leases,
        components: Mutex::new(HashMap::new()),
        opening: Mutex::new(HashSet::new()),
        cancel_grace: config.cancel_grace,
        metrics: Arc::clone(&config.metrics),
    });
    let mut dispatcher = Dispatcher {
        shared: Arc::clone(&shared),
        running: HashMap::new(),
        in_flight: HashMap::new(),
        // At start: scan at once.
        last_orphan_scan: Instant::now() - ORPHAN_SCAN,
        workers: Workers::new(runs),
        summary: ServeSummary::default(),
        paused: None,
        held: HashMap::new(),
        schedules_due: None,
        schedules_read: None,
    };
    let (done_tx, done_rx) = mpsc::channel::<Event>();
    let listener = listen_for_work(shared.store.database(), done_tx.clone(), &shutdown)?;
    tracing::info!(queues = ?config.queues, notified = listener.is_some(), "serving");
    while !shutdown.load(Ordering::Relaxed) {
        let looked = dispatcher.dispatch(config, &done_tx).and_then(|()| {
            // A run that ended meanwhile left room: look again at once,
            // without reading when the next timer is due.
            match done_rx.try_recv() {
                Ok(event) => {
                    dispatcher.handle(event);
                    Ok(Duration::ZERO)
                }
                Err(_) => dispatcher.wait_time(config),
            }
        });
        let wait = match looked {
            Ok(wait) => wait,
            // The database is out of reach for longer than the store waits,
            // or cannot be written: keep the runs going, look again later.
            Err(ServeError::Store(error)) if error.is_storage_failure() => {
                tracing::warn!(%error, "cannot read the queues");
                dispatcher.starved(Shortage::Storage)
            }
            Err(error) => return Err(error),
        };
        match done_rx.recv_timeout(wait) {
            Ok(event) => {
                dispatcher.handle(event);
                while let Ok(event) = done_rx.try_recv() {
                    dispatcher.handle(event);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => unreachable!("the dispatcher holds a sender"),
        }
    }

    // Drain: runs stop at their next step boundary and release their leases.
    let draining = dispatcher.in_flight.len();
    tracing::info!(
        runs = draining,
        "shutting down: stopping runs at their next step"
    );
    shared.leases.stop_all();
    let deadline = Instant::now() + config.shutdown_grace;
    while !dispatcher.in_flight.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        if let Ok(event) = done_rx.recv_timeout(left) {
            dispatcher.handle(event);
        }
    }
    dispatcher.summary.abandoned = dispatcher.in_flight.len();
    // Those began here too (the metric counted them at their claim).
    dispatcher.summary.started += dispatcher
        .in_flight
        .values()
        .filter(|claimed| claimed.load(Ordering::Relaxed))
        .count() as u64;
    if dispatcher.summary.abandoned > 0 {
        tracing::warn!(
            runs = dispatcher.summary.abandoned,
            "shutdown grace over: runs still in a step are left to their leases"
        );
    }
    drop(stop_renewing);
    let _ = renewer.join();
    if let Some(listener) = listener {
        let _ = listener.join();
    }
    let stats = shared.store.stats();
    dispatcher.summary.writes = stats.writes.load(Ordering::Relaxed);
    dispatcher.summary.commits = stats.commits.load(Ordering::Relaxed);
    dispatcher.summary.flushed_commits = stats.flushed_commits.load(Ordering::Relaxed);
    if dispatcher.summary.abandoned == 0 {
        shared.store.close();
    }
    Ok(dispatcher.summary)
}

/// What every run of the server shares.
struct Shared {
    store: GroupCommitStore,
    runtime: Runtime,
    leases: Arc<SharedLeases>,
    /// Compiled components by sha256: compiled once per server.
    components: Mutex<HashMap<String, WorkflowComponent>>,
    /// Workflows handed to a worker that has not opened (claimed) them
    /// yet: of the runs in flight, the only ones the store may still
    /// answer as ready.
    opening: Mutex<HashSet<String>>,
    cancel_grace: Duration,
    metrics: Arc<Metrics>,
}

/// What wakes the dispatcher.
enum Event {
    /// A run ended.
    Finished(Finished),
    /// The database says work may have become ready (see [`listen_for_work`]).
    WorkMayBeReady,
}

/// How long the work listener waits before it looks at the shutdown flag.
const LISTEN_TICK: Duration = Duration::from_millis(250);

/// Longest pause between attempts to listen again after losing the
/// database's notifications.
const LISTEN_BACKOFF_CAP: Duration = Duration::from_secs(5);

/// Wake the dispatcher whenever the database says work may have become
/// ready (PostgreSQL's NOTIFY), until shutdown, so that a worker hears of a
/// workflow queued, signalled or woken on another host within milliseconds
/// rather than at its next poll. `None` for a database that cannot tell
/// (SQLite): polling finds the work there. Lost notifications are listened
/// for again with backoff; meanwhile polling goes on.
fn listen_for_work(
    database: &Database,
    wake: Sender<Event>,
    shutdown: &ShutdownFlag,
) -> Result<Option<thread::JoinHandle<()>>, ServeError> {
    let Some(mut listener) = database.work_listener()? else {
        return Ok(None);
    };
    let (database, shutdown) = (database.clone(), Arc::clone(shutdown));
    let listen = move || {
        while !shutdown.load(Ordering::Relaxed) {
            match listener.wait(LISTEN_TICK) {
                Ok(true) => {
                    if wake.send(Event::WorkMayBeReady).is_err() {
                        return;
                    }
                }
                Ok(false) => {}
                Err(error) => {
                    tracing::warn!(%error, "lost the database's work notifications; polling until they are back");
                    let Some(again) = listen_again(&database, &shutdown) else {
                        return;
                    };
                    listener = again;
                    tracing::info!("hearing the database's work notifications again");
                }
            }
        }
    };
    let handle = thread::Builder::new()
        .name("work-listener".to_owned())
        .spawn(listen)
        .map_err(|e| StoreError::Backend(format!("cannot start the work listener: {e}")))?;
    Ok(Some(handle))
}

/// A new listener once the database takes one, trying with backoff; `None`
/// at shutdown.
fn listen_again(database: &Database, shutdown: &AtomicBool) -> Option<Box<dyn WorkListener>> {
    let mut backoff = LISTEN_TICK;
    loop {
        thread::sleep(backoff);
        if shutdown.load(Ordering::Relaxed) {
            return None;
        }
        match database.work_listener() {
            Ok(listener) => return listener,
            Err(_) => backoff = (backoff * 2).min(LISTEN_BACKOFF_CAP),
        }
    }
}

/// A run that ended, for the dispatcher.
struct Finished {
    queue: String,
    workflow_id: String,
    end: RunEnd,
}

/// How a run handed to a worker ended.
enum RunEnd {
    /// It ran, and left the workflow with this status.
    Ran(WorkflowStatus),
    /// Nothing ran: the server is stopping, or the run lost its lease.
    NotRun,
    /// Another process got to the workflow first: it claimed, finished,
    /// cancelled or upgraded it after this server read it as ready.
    Lost,
    /// It stopped on an error of its own, logged (a component that does not
    /// compile, a database error): held back a while, not retried at once.
    Stopped,
    /// The host ran short of what runs need: new runs wait a while rather
    /// than fail at once, again and again.
    Starved(Shortage),
}

/// What the host ran short of.
#[derive(Debug, Clone, Copy)]
enum Shortage {
    /// The database could not be written (a full disk, an I/O error).
    Storage,
    /// Memory (or a thread) for a new instance could not be had: the
    /// workflow is handed back as it stood, nothing recorded against it.
    Memory,
}

impl RunEnd {
    fn of_store(error: &StoreError) -> Self {
        Shortage::of(error).map_or(Self::Stopped, Self::Starved)
    }
}

impl Shortage {
    /// What `error` says the host ran short of, if anything.
    fn of(error: &StoreError) -> Option<Self> {
        if error.is_storage_failure() {
            Some(Self::Storage)
        } else if error.is_host_memory() {
            Some(Self::Memory)
        } else {
            None
        }
    }
}

/// The first pause of new runs after the host ran short, and the longest.
const STARVED_BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(10));

/// The first hold of a workflow whose run stopped on an error, and the
/// longest (each one in a row doubles it).
const HOLD_BACKOFF: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(60));

struct Dispatcher {
    shared: Arc<Shared>,
    /// Runs in progress per queue.
    running: HashMap<String, usize>,
    /// Workflows dispatched and not finished: not to be taken again. With
    /// each, whether its run has claimed it yet (or suspended it
    /// unclaimed): it began here, whatever its end; not when another
    /// process had it first. Set by the run before it reports its end.
    in_flight: HashMap<String, Arc<AtomicBool>>,
    /// When workflows of dead owners of this host were last looked for.
    last_orphan_scan: Instant,
    workers: Workers,
    summary: ServeSummary,
    /// After the host ran short: no new runs until then, the pause that
    /// led to it (doubled at each shortage in a row), and what it lacked.
    paused: Option<(Instant, Duration, Shortage)>,
    /// Workflows whose last run stopped on an error: not started again
    /// before then, and the hold that led to it.
    held: HashMap<String, (Instant, Duration)>,
    /// The soonest tick of a schedule, as last read.
    schedules_due: Option<Millis>,
    /// When the schedules were last read (other processes add them too).
    schedules_read: Option<Instant>,
}

/// How often to look for workflows whose owner died on this host.
const ORPHAN_SCAN: Duration = Duration::from_secs(1);

impl Dispatcher {
    /// Start as many ready workflows as the queues have room for.
    fn dispatch(&mut self, config: &ServeConfig, done: &Sender<Event>) -> Result<(), ServeError> {
        if self
            .paused
            .is_some_and(|(until, ..)| Instant::now() < until)
        {
            return Ok(());
        }
        // A hold that ran out no longer skips its workflow, but is kept a
        // while to double the next one if its run stops again.
        let looked = Instant::now();
        self.held
            .retain(|_, (until, _)| looked < *until + HOLD_BACKOFF.1);
        let now = now_millis();
        self.fire_schedules(config, now);
        let scan_orphans = self.last_orphan_scan.elapsed() >= ORPHAN_SCAN;
        // Whether a scan was made, and found no more than it could start.
        let (mut scanned, mut left_over) = (false, false);
        for (queue, concurrency) in &config.queues {
            let busy = self.running.get(queue).copied().unwrap_or(0);
            let free = concurrency.saturating_sub(busy);
            if free == 0 {
                continue;
            }
            // Only the runs here that have not claimed theirs yet can still
            // look ready (the others are running under a lease this process
            // renews): leaving out all in flight would read a row more for
            // each, to throw it away.
            let mut skip = lock(&self.shared.opening).clone();
            skip.extend(
                self.held
                    .iter()
                    .filter(|(_, (until, _))| looked < *until)
                    .map(|(id, _)| id.clone()),
            );
            // A dead process's workflows first: they were in flight before
            // anything queued now, and are taken over "at once".
            let mut ready = if scan_orphans {
                scanned = true;
                let orphans = self.orphans(queue, now, (free + busy) as u32)?;
                left_over |= orphans.len() > free;
                orphans
            } else {
                Vec::new()
            };
            if ready.len() < free {
                let room = (free - ready.len()) as u32;
                ready.extend(self.shared.store.ready_workflows(queue, now, room, &skip)?);
            }
            let fresh: Vec<WorkflowRecord> = ready
                .into_iter()
                .filter(|w| !self.in_flight.contains_key(&w.id))
                .take(free)
                .collect();
            for workflow in fresh {
                self.start(workflow, done.clone());
            }
        }
        // Only a scan made restarts the wait (a pass with every slot busy
        // made none), and only if it left no orphan behind: the slots that
        // free next must go to them, not to the queue.
        if scanned && !left_over {
            self.last_orphan_scan = Instant::now();
        }
        Ok(())
    }

    /// Queue the workflows of the schedules that are due: when the soonest
    /// tick comes, and every poll interval for schedules added elsewhere.
    fn fire_schedules(&mut self, config: &ServeConfig, now: Millis) {
        let due = self.schedules_due.is_some_and(|due| due <= now);
        let stale = self
            .schedules_read
            .is_none_or(|read| read.elapsed() >= config.poll_interval);
        if !due && !stale {
            return;
        }
        self.schedules_read = Some(Instant::now());
        match schedules::fire_due(&self.shared.store, now) {
            Ok(firing) => {
                for fired in &firing.fired {
                    tracing::info!(
                        schedule = fired.schedule,
                        workflow_id = fired.workflow_id,
                        skipped = fired.skipped,
                        queued_before = fired.existed,
                        "schedule ticked"
                    );
                }
                for (schedule, error) in &firing.refused {
                    tracing::warn!(schedule, %error, "schedule tick skipped");
                }
                self.schedules_due = firing.next_due;
            }
            Err(error) => {
                // Looked at again at the next poll, not at once: a due time
                // left in the past would make the loop spin.
                self.schedules_due = None;
                match error {
                    ControlError::Store(error) if error.is_storage_failure() => {
                        self.starved(Shortage::Storage);
                    }
                    error => tracing::warn!(%error, "cannot read or queue the schedules"),
                }
            }
        }
    }

    /// Running workflows of `queue` whose lease still runs but whose owner
    /// is a process of this host that is provably dead (a server killed
    /// here): taken over at once rather than after their lease (unless held
    /// back after a run of theirs stopped on an error).
    fn orphans(
        &self,
        queue: &str,
        now: Millis,
        limit: u32,
    ) -> Result<Vec<WorkflowRecord>, ServeError> {
        let me = this_process();
        let Some(boot_id) = &me.boot_id else {
            return Ok(Vec::new());
        };
        let running = self
            .shared
            .store
            .running_on_host(queue, &me.host, boot_id, now, limit)?;
        let looked = Instant::now();
        let held = |id: &str| self.held.get(id).is_some_and(|(until, _)| looked < *until);
        Ok(running
            .into_iter()
            .filter(|w| !self.in_flight.contains_key(&w.id) && !held(&w.id) && !owner_alive(w, now))
            .collect())
    }

    fn start(&mut self, workflow: WorkflowRecord, done: Sender<Event>) {
        *self.running.entry(workflow.queue.clone()).or_default() += 1;
        // Read after the run whatever way it ended (a panic included), and
        // at shutdown for a run still in a step.
        let claimed = Arc::new(AtomicBool::new(false));
        self.in_flight
            .insert(workflow.id.clone(), Arc::clone(&claimed));
        lock(&self.shared.opening).insert(workflow.id.clone());
        let shared = Arc::clone(&self.shared);
        let (queue, workflow_id) = (workflow.queue.clone(), workflow.id.clone());
        let refused = self.workers.run(Box::new(move || {
            // A run that panics (a dependency that cannot start its threads,
            // say) must still free its slot, and not be retried at once.
            let end =
                panic::catch_unwind(AssertUnwindSafe(|| execute(&shared, &workflow, &claimed)))
                    .unwrap_or_else(|_| {
                        tracing::error!(
                            workflow_id = workflow.id,
                            "the run panicked (the host short of memory or threads, or a bug); \
                         its workflow goes on from what was recorded"
                        );
                        RunEnd::Starved(Shortage::Memory)
                    });
            let finished = Finished {
                queue: workflow.queue.clone(),
                workflow_id: workflow.id.clone(),
                end,
            };
            let _ = done.send(Event::Finished(finished));
        }));
        if refused.is_err() {
            // No thread to run it: left as it was, for when there is one.
            lock(&self.shared.opening).remove(&workflow_id);
            self.finished(Finished {
                queue,
                workflow_id,
                end: RunEnd::Starved(Shortage::Memory),
            });
        }
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Finished(finished) => self.finished(finished),
            // The next dispatch reads what is ready.
            Event::WorkMayBeReady => {}
        }
    }

    fn finished(&mut self, finished: Finished) {
        if let Some(count) = self.running.get_mut(&finished.queue) {
            *count = count.saturating_sub(1);
        }
        let claimed = self.in_flight.remove(&finished.workflow_id);
        if claimed.is_some_and(|claimed| claimed.load(Ordering::Relaxed)) {
            self.summary.started += 1;
        }
        if let RunEnd::Ran(status) = finished.end {
            self.shared.metrics.run_ended(status);
            self.held.remove(&finished.workflow_id);
        }
        match finished.end {
            RunEnd::Ran(WorkflowStatus::Completed) => self.summary.completed += 1,
            RunEnd::Ran(WorkflowStatus::Failed) => self.summary.failed += 1,
            RunEnd::Ran(WorkflowStatus::Suspended) => self.summary.suspended += 1,
            RunEnd::Ran(WorkflowStatus::Cancelled) => self.summary.cancelled += 1,
            RunEnd::Ran(WorkflowStatus::Sleeping) => self.summary.slept += 1,
            RunEnd::Ran(WorkflowStatus::Waiting) => self.summary.waited += 1,
            _ => {}
        }
        match finished.end {
            RunEnd::Starved(shortage) => {
                self.starved(shortage);
            }
            RunEnd::Ran(_) => match self.paused.take() {
                Some((.., Shortage::Storage)) => {
                    tracing::info!("the database can be written again: runs resume");
                }
                Some((.., Shortage::Memory)) => {
                    tracing::info!("instances can be created again: runs resume");
                }
                None => {}
            },
            RunEnd::Stopped => {
                let hold = match self.held.get(&finished.workflow_id) {
                    Some((_, hold)) => (*hold * 2).min(HOLD_BACKOFF.1),
                    None => HOLD_BACKOFF.0,
                };
                tracing::info!(
                    workflow_id = finished.workflow_id,
                    hold_ms = hold.as_millis() as u64,
                    "held back before its next run"
                );
                self.held
                    .insert(finished.workflow_id, (Instant::now() + hold, hold));
            }
            RunEnd::NotRun => {}
            RunEnd::Lost => self.summary.lost += 1,
        }
    }

    /// The host ran short of `shortage`: no new runs (nor schedule ticks)
    /// for a pause that doubles at each shortage in a row; how long.
    fn starved(&mut self, shortage: Shortage) -> Duration {
        let pause = self.paused.map_or(STARVED_BACKOFF.0, |(_, pause, _)| {
            (pause * 2).min(STARVED_BACKOFF.1)
        });
        let until = Instant::now() + pause;
        // Runs failing together extend one pause, said once.
        if self.paused.is_none_or(|(was, ..)| was < Instant::now()) {
            let pause_ms = pause.as_millis() as u64;
            match shortage {
                Shortage::Storage => tracing::warn!(
                    pause_ms,
                    "the database cannot be written: no new runs for a while (what was \
                     committed stands; runs resume once it can be written again)"
                ),
                Shortage::Memory => tracing::warn!(
                    pause_ms,
                    "the host has no memory for new instances: no new runs for a while \
                     (the workflows are handed back as they stood; runs resume once \
                     instances can be created again)"
                ),
            }
            self.paused = Some((until, pause, shortage));
        }
        pause
    }

    /// How long to wait for a run to end before looking again: until the
    /// next sleeper is due, at most the poll interval.
    fn wait_time(&self, config: &ServeConfig) -> Result<Duration, ServeError> {
        let now = now_millis();
        let mut wait = config.poll_interval;
        if let Some((until, ..)) = self.paused {
            wait = wait.min(until.saturating_duration_since(Instant::now()));
        }
        // While paused, schedules wait with the runs.
        let paused = self
            .paused
            .is_some_and(|(until, ..)| Instant::now() < until);
        if let Some(due) = self.schedules_due.filter(|_| !paused) {
            wait = wait.min(Duration::from_millis(due.saturating_sub(now).max(0) as u64));
        }
        for (queue, _) in &config.queues {
            // A sleeper coming due, and a lease running out: a worker that
            // died on another host is taken over as its lease expires, not
            // at the next poll.
            let store = &self.shared.store;
            let due = [
                store.next_wake(queue)?,
                store.next_lease_expiry(queue, now)?,
            ];
            for at in due.into_iter().flatten() {
                let until = Duration::from_millis(at.saturating_sub(now).max(0) as u64);
                wait = wait.min(until);
            }
        }
        Ok(wait)
    }
}

/// Threads that run workflows: started when all are busy, kept for the
/// next workflow (a thread per workflow would map and unmap a stack each
/// time, which costs every core a TLB flush). There are never more than the
/// queues' concurrency: a run reports its end before its thread is idle
/// again, so a job may be handed over while that thread is still on its
/// way back to the queue; it waits for it rather than starting another.
struct Workers {
    jobs: Sender<Job>,
    next: Arc<Mutex<mpsc::Receiver<Job>>>,
    idle: Arc<AtomicUsize>,
    /// Threads started, and the most there may be.
    threads: usize,
    max_threads: usize,
}

type Job = Box<dyn FnOnce() + Send>;

impl Workers {
    fn new(max_threads: usize) -> Self {
        let (jobs, next) = mpsc::channel();
        Self {
            jobs,
            next: Arc::new(Mutex::new(next)),
            idle: Arc::new(AtomicUsize::new(0)),
            threads: 0,
            max_threads,
        }
    }

    /// Hand `job` to an idle thread or a new one; `Err` gives it back
    /// when there is no thread at all to run it (none could be started).
    fn run(&mut self, job: Job) -> Result<(), Job> {
        // Claim an idle worker, or start one.
        let claimed = self
            .idle
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |idle| {
                idle.checked_sub(1)
            })
            .is_ok();
        if !claimed && self.threads < self.max_threads {
            let (next, idle) = (Arc::clone(&self.next), Arc::clone(&self.idle));
            let spawned = thread::Builder::new()
                .name("workflow".to_owned())
                .spawn(move || {
                    loop {
                        let job = lock(&next).recv();
                        match job {
                            Ok(job) => job(),
                            // The server is done with its workers.
                            Err(_) => break,
                        }
                        idle.fetch_add(1, Ordering::AcqRel);
                    }
                });
            match spawned {
                Ok(_) => self.threads += 1,
                Err(error) => {
                    tracing::error!(%error, "cannot start a thread to run workflows");
                    // The job would wait for a thread that never comes.
                    if self.threads == 0 {
                        return Err(job);
                    }
                }
            }
        }
        // A busy thread takes it once its run ends.
        let _ = self.jobs.send(job);
        Ok(())
    }
}

/// Run `workflow` until it ends, sleeps or stops.
/// `claimed` is set once the run has claimed the workflow (see
/// [`LogObserver`]), or suspended it unclaimed.
fn execute(shared: &Shared, workflow: &WorkflowRecord, claimed: &Arc<AtomicBool>) -> RunEnd {
    let id = workflow.id.as_str();
    let opening = Opening {
        set: &shared.opening,
        id,
    };
    let component = match compiled(shared, &workflow.component_sha256) {
        Ok(component) => component,
        Err(error) => {
            tracing::error!(workflow_id = id, %error, "cannot load the workflow's component");
            return match &error {
                ServeError::Store(e) => RunEnd::of_store(e),
                ServeError::Runtime(_) => RunEnd::Stopped,
            };
        }
    };
    let grants = workflow
        .grants
        .as_deref()
        .and_then(Grants::from_json)
        .unwrap_or_default();
    let run_id = crate::new_run_id();
    let request = RunRequest {
        workflow_id: id,
        component_sha256: &workflow.component_sha256,
        input: None,
        run_id: &run_id,
        leases: Arc::new(Arc::clone(&shared.leases)),
        unload_sleeps: true,
        allow_component_change: false,
        reopen: false,
        cancel_grace: shared.cancel_grace,
        grants: None,
        component: None,
    };
    let observer = Box::new(LogObserver {
        metrics: Arc::clone(&shared.metrics),
        opened: Some(workflow.clone()),
        run_id: run_id.clone(),
        claimed: Arc::clone(claimed),
    });
    let run = match WorkflowRun::open(
        Box::new(shared.store.clone()),
        &request,
        CrashPlan::none(),
        observer,
    ) {
        Ok(Opened::Ready(run)) => run,
        // Ended by this run (suspended after too many takeovers), or
        // finished elsewhere since it was read as ready: not ours to count.
        Ok(Opened::Finished(record)) if record.run_id == run_id => {
            tracing::warn!(
                workflow_id = id,
                reason = record.error.as_deref().unwrap_or_default(),
                "suspended"
            );
            return RunEnd::Ran(record.status);
        }
        Ok(Opened::Finished(_)) => return RunEnd::Lost,
        Err(EngineError::OwnedElsewhere { .. }) => return lost(id),
        // Switched to other code (`upgrade`) since it was read as ready:
        // this server never allows a change, and the next run takes the
        // new code.
        Err(EngineError::Upgraded { .. } | EngineError::ComponentChanged { .. }) => {
            return upgraded(id);
        }
        Err(error) => {
            tracing::error!(workflow_id = id, %error, "cannot open the workflow");
            return match &error {
                EngineError::Store(e) => RunEnd::of_store(e),
                _ => RunEnd::Stopped,
            };
        }
    };
    drop(opening);
    match shared.runtime.run(&component, &grants, run) {
        Ok(report) => {
            log_report(&report);
            RunEnd::Ran(report.status)
        }
        Err(RuntimeError::Engine(EngineError::Stopping { .. })) => {
            // Shutting down: hand the workflow to whoever comes next.
            if let Err(error) = shared.store.release_workflow(id, &run_id) {
                tracing::warn!(workflow_id = id, %error, "cannot release the workflow's lease");
            }
            tracing::info!(workflow_id = id, "stopped for shutdown; lease released");
            RunEnd::NotRun
        }
        Err(RuntimeError::Engine(EngineError::OwnedElsewhere { .. })) => lost(id),
        Err(RuntimeError::Engine(EngineError::Upgraded { .. })) => upgraded(id),
        Err(RuntimeError::Engine(error)) if error.is_non_determinism() => suspend_unclaimed(
            shared,
            workflow,
            &error.to_string(),
            "suspended: its code no longer replays its history",
            claimed,
        ),
        // No run of this code will take this input: a person must look.
        Err(RuntimeError::Engine(error @ EngineError::InputRejected { .. })) => suspend_unclaimed(
            shared,
            workflow,
            &format!(
                "{error}; cancel it, or `durable-host resume {id} NEW.wasm` with code that takes it"
            ),
            "suspended: the workflow refused its input",
            claimed,
        ),
        Err(error) => {
            tracing::error!(workflow_id = id, %error, "run stopped");
            match &error {
                RuntimeError::Engine(EngineError::Store(e))
                    if let Some(shortage) = Shortage::of(e) =>
                {
                    // The database failed under the run (a commit whose
                    // answer was lost, a full disk), or the host had no
                    // memory for it: hand the workflow to whoever comes next
                    // once it can go on, rather than after its lease; it
                    // resumes from what was stored.
                    if shared.store.release_workflow(id, &run_id).is_ok() {
                        tracing::info!(workflow_id = id, "lease released");
                    }
                    RunEnd::Starved(shortage)
                }
                // The runtime handed the workflow back already (when the
                // workflow's own instance found no memory, nothing was
                // claimed).
                RuntimeError::HostMemory { .. } => RunEnd::Starved(Shortage::Memory),
                // Another run has it now: theirs.
                RuntimeError::Engine(EngineError::Store(StoreError::LostOwnership { .. })) => {
                    RunEnd::NotRun
                }
                _ => RunEnd::Stopped,
            }
        }
    }
}

/// A workflow in [`Shared::opening`], taken out when dropped: once its run
/// opened it, or gave up before.
struct Opening<'a> {
    set: &'a Mutex<HashSet<String>>,
    id: &'a str,
}

impl Drop for Opening<'_> {
    fn drop(&mut self) {
        lock(self.set).remove(self.id);
    }
}

/// The workflow cannot go on on its code (which no longer replays its
/// history, or refuses its input): suspend it, its steps untouched, rather
/// than retry it forever; `durable-host resume` continues it on code that
/// can (`verify` finds such code). `what` is the line logged. A run that
/// suspends it began here, though it claimed nothing: `claimed` is set.
fn suspend_unclaimed(
    shared: &Shared,
    workflow: &WorkflowRecord,
    reason: &str,
    what: &str,
    claimed: &AtomicBool,
) -> RunEnd {
    let id = workflow.id.as_str();
    match shared.store.suspend_unclaimed(workflow, reason) {
        Ok(true) => {
            claimed.store(true, Ordering::Relaxed);
            shared.metrics.run_started(&workflow.queue);
            tracing::warn!(workflow_id = id, reason, "{what}");
            RunEnd::Ran(WorkflowStatus::Suspended)
        }
        // Someone else took it up (or `upgrade` switched it) meanwhile:
        // theirs to judge.
        Ok(false) => RunEnd::Lost,
        Err(error) => {
            tracing::error!(workflow_id = id, %error, "cannot suspend the workflow");
            RunEnd::of_store(&error)
        }
    }
}

/// The compiled component with `sha256`, compiled from the database's
/// copy once per server.
fn compiled(shared: &Shared, sha256: &str) -> Result<WorkflowComponent, ServeError> {
    // Held while compiling: the runs that need the same component wait for
    // this compilation instead of each doing their own.
    let mut components = lock(&shared.components);
    if let Some(component) = components.get(sha256) {
        return Ok(component.clone());
    }
    let bytes = shared.store.component(sha256)?.ok_or_else(|| {
        StoreError::Backend(format!(
            "the component with sha256 {sha256} is not in the database; deploy it again"
        ))
    })?;
    let file = ComponentFile::from_bytes(PathBuf::from(format!("component {sha256}")), bytes)?;
    let component = shared.runtime.compile(&file)?;
    components.insert(sha256.to_owned(), component.clone());
    Ok(component)
}

fn log_report(report: &RunReport) {
    let id = report.workflow_id.as_str();
    match (&report.outcome, report.status) {
        (_, WorkflowStatus::Sleeping) => {
            tracing::info!(workflow_id = id, wake_at = report.wake_at, "sleeping")
        }
        (_, WorkflowStatus::Waiting) => tracing::info!(
            workflow_id = id,
            waiting_for = report.waiting_for.as_ref().map(ToString::to_string),
            timeout_at = report.wake_at,
            "waiting"
        ),
        (Ok(_), status) => tracing::info!(workflow_id = id, %status, "finished"),
        (Err(error), status) => {
            tracing::warn!(workflow_id = id, %status, error = %error, "finished")
        }
    }
}

/// Another process claimed the workflow between this server's read and
/// its run's claim (several servers on one database): theirs.
fn lost(id: &str) -> RunEnd {
    tracing::debug!(workflow_id = id, "another process claimed it first");
    RunEnd::Lost
}

/// `upgrade` switched the workflow's code between this server's read and
/// its run's claim: the next run reads it on the new code.
fn upgraded(id: &str) -> RunEnd {
    tracing::info!(
        workflow_id = id,
        "upgraded meanwhile: its next run takes the new code"
    );
    RunEnd::Lost
}

/// Step events as debug logs, and counted; the run's claim logged and
/// counted as the run's start here.
struct LogObserver {
    metrics: Arc<Metrics>,
    /// The workflow as the run opened it, until the run claims it.
    opened: Option<WorkflowRecord>,
    run_id: String,
    /// Set once the run claims the workflow.
    claimed: Arc<AtomicBool>,
}

impl RunObserver for LogObserver {
    fn claimed(&mut self, workflow_id: &str) {
        let Some(workflow) = self.opened.take() else {
            return;
        };
        self.claimed.store(true, Ordering::Relaxed);
        self.metrics.run_started(&workflow.queue);
        let run_id = self.run_id.as_str();
        match workflow.status {
            WorkflowStatus::Queued => tracing::info!(workflow_id, run_id, "started"),
            WorkflowStatus::Sleeping => {
                if let Some(wake_at) = workflow.wake_at {
                    let late = (now_millis() - wake_at).max(0) as u64;
                    self.metrics.timer_fired(Duration::from_millis(late));
                }
                tracing::info!(workflow_id, run_id, "woke up")
            }
            WorkflowStatus::Waiting => tracing::info!(
                workflow_id,
                run_id,
                waiting_for = workflow.waiting_for.as_ref().map(ToString::to_string),
                "resumed to look for what it waits for"
            ),
            WorkflowStatus::Running if workflow.handed_back() => {
                tracing::info!(
                    workflow_id,
                    run_id,
                    "resumed where a run that stopped left it"
                )
            }
            _ => {
                self.metrics.takeover();
                tracing::info!(workflow_id, run_id, "taking over")
            }
        }
    }

    fn step_event(&mut self, workflow_id: &str, event: &StepEvent) {
        self.metrics.step(event);
        tracing::debug!(workflow_id, step = %event.key, event = ?event.kind, "step");
    }

    // Kept with the workflow (`logs ID`): in the server's log only on
    // request, so that a chatty workflow does not drown it.
    fn log(&mut self, workflow_id: &str, message: &str) {
        tracing::debug!(workflow_id, message, "workflow log");
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
