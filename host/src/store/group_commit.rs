//! Group commit: the writes of many concurrent runs share one flush.
//!
//! A [`GroupCommitStore`] is a [`CheckpointStore`] for many runs at once;
//! how it shares commits depends on the backend.
//!
//! SQLite has one writer, so its writes share one connection ([`Writer`]).
//! A write that finds nobody committing and nothing waiting commits at once
//! on its caller's thread: a lone workflow's steps pay no hand-off to
//! another thread and back. Writes that arrive while a commit is in
//! progress wait for the writer thread, which takes every write waiting
//! when it is free, runs each in a savepoint of one transaction (so a
//! conflict undoes that write alone), commits once, and only then answers
//! each caller: a write still returns only when it is durable, but a
//! hundred of them cost one fsync. Nobody holds a batch open to wait for
//! company.
//!
//! PostgreSQL runs transactions side by side and flushes the commits that
//! wait at the same time together, so there each write is a transaction of
//! its own on a pooled connection. (Runs sharing a transaction would hold
//! each other's row locks until it committed, and two workers' batches
//! could deadlock.)
//!
//! Reads use the pool too: WAL readers do not block SQLite's writer.
//!
//! The engine sees an ordinary store; sharing commits is this module's
//! business, and a backend with batches only has to offer [`BatchWriter`].

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::Instant;

use super::{
    AttemptRecord, CheckpointStore, Claim, CommitObserver, Database, Deployment, Enqueued, Fork,
    LeaseRenewal, ListQuery, LogLine, LogRecord, LogStream, Millis, NewWorkflow, Outcome, Owner,
    PublishedEvent, QueuedWorkflow, Reopen, ScheduleRecord, SignalRecord, SignalSent, StepBegin,
    StepEffect, StepKey, StepRecord, StoreError, Takeover, Unload, Upgrade, WorkflowEnd,
    WorkflowEvent, WorkflowRecord, WorkflowStatus, WorkflowSummary,
};

/// At most this many writes share a transaction: bounds the latency the
/// last of them sees.
const MAX_BATCH: usize = 512;

/// At most this many pooled connections, each with its page cache and
/// statements: SQLite's reads take microseconds, so more readers than this
/// would wait for a core anyway; PostgreSQL's reads and writes wait for the
/// server, so more of them can be in flight (beyond these, they wait for a
/// free connection).
const MAX_CONNECTIONS: (usize, usize) = (8, 16);

/// A connection whose writes can share one transaction: what batches need
/// of a backend.
pub trait BatchWriter: CheckpointStore {
    /// Open a transaction in which each following write is a savepoint, so
    /// that a conflict undoes that write alone and [`Self::commit_batch`]
    /// commits the rest at once. `flush`: the commit must be durable (a
    /// step's result), not only a step's `running` mark.
    fn begin_batch(&self, flush: bool) -> Result<(), StoreError>;

    /// Commit the batch [`Self::begin_batch`] opened, or roll it back when
    /// the commit fails.
    fn commit_batch(&self) -> Result<(), StoreError>;
}

/// A checkpoint store whose writes are group-committed.
#[derive(Clone)]
pub struct GroupCommitStore {
    shared: Arc<Shared>,
}

struct Shared {
    database: Database,
    /// The pooled connections, and how many there may be.
    pool: Mutex<Pool>,
    max_connections: usize,
    /// A pooled connection was given back.
    connection_free: Condvar,
    writes: Writes,
    commits: Arc<Commits>,
}

/// The commits made, counted, and who is told of them.
#[derive(Default)]
struct Commits {
    stats: CommitStats,
    /// Told of every commit, once set (`serve`'s metrics).
    observer: OnceLock<Arc<dyn CommitObserver>>,
}

/// How writes are committed.
enum Writes {
    /// Through one connection, many in one transaction (SQLite).
    Batched {
        writer: Arc<Writer>,
        thread: Mutex<Option<JoinHandle<()>>>,
    },
    /// Each in a transaction of its own on a pooled connection
    /// (PostgreSQL). Set once the store is closed.
    Pooled { closed: AtomicBool },
}

impl Drop for Shared {
    /// The last handle is gone: the writer thread ends once it is idle.
    fn drop(&mut self) {
        if let Writes::Batched { writer, .. } = &self.writes {
            writer.stop();
        }
    }
}

/// The write connection and who may use it: one committer at a time, the
/// writer thread or a caller that found it idle.
struct Writer {
    store: Mutex<Box<dyn BatchWriter>>,
    queue: Mutex<Queue>,
    /// Wakes the writer thread: writes are waiting, a commit ended, or the
    /// store is closing.
    wake: Condvar,
    commits: Arc<Commits>,
}

/// The pooled connections: those free, and how many exist.
#[derive(Default)]
struct Pool {
    free: Vec<Box<dyn CheckpointStore>>,
    open: usize,
}

#[derive(Default)]
struct Queue {
    waiting: Vec<Job>,
    /// A batch is being committed (by the writer thread or a caller).
    committing: bool,
    closed: bool,
}

/// What the writer has done: how many writes, in how many commits, of
/// which how many were flushed.
#[derive(Debug, Default)]
pub struct CommitStats {
    pub writes: AtomicU64,
    pub commits: AtomicU64,
    pub flushed_commits: AtomicU64,
}

/// One write waiting for the writer.
struct Job {
    /// Needs its commit flushed (a result); `false` for a step's `running`
    /// mark, which a later flush makes durable.
    flush: bool,
    /// Runs the write; answers the caller once the batch is committed.
    work: Write,
    /// Answers the caller with an error, without running.
    refuse: Box<dyn FnOnce(StoreError) + Send>,
}

/// Runs one write on the batch's connection.
type Write = Box<dyn FnOnce(&dyn CheckpointStore) -> Completion + Send>;

/// Answers one caller with the commit's result.
type Completion = Box<dyn FnOnce(Option<&StoreError>) + Send>;

impl GroupCommitStore {
    /// Open `database` (creating its tables if needed) and start its
    /// writer.
    pub fn open(database: &Database) -> Result<Self, StoreError> {
        let commits = Arc::new(Commits::default());
        let (writes, pool, max_connections) = match database.open_batch_writer()? {
            Some(store) => {
                let writer = Arc::new(Writer {
                    store: Mutex::new(store),
                    queue: Mutex::new(Queue::default()),
                    wake: Condvar::new(),
                    commits: Arc::clone(&commits),
                });
                let thread_writer = Arc::clone(&writer);
                let thread = thread::Builder::new()
                    .name("group-commit".to_owned())
                    .spawn(move || thread_writer.write_batches())
                    .map_err(|e| {
                        StoreError::Backend(format!("cannot start the writer thread: {e}"))
                    })?;
                let writes = Writes::Batched {
                    writer,
                    thread: Mutex::new(Some(thread)),
                };
                (writes, Pool::default(), MAX_CONNECTIONS.0)
            }
            None => {
                // This first connection has created the tables; it is the
                // pool's first.
                let first = database.open()?;
                let pool = Pool {
                    free: vec![first],
                    open: 1,
                };
                let closed = AtomicBool::new(false);
                (Writes::Pooled { closed }, pool, MAX_CONNECTIONS.1)
            }
        };
        Ok(Self {
            shared: Arc::new(Shared {
                database: database.clone(),
                pool: Mutex::new(pool),
                max_connections,
                connection_free: Condvar::new(),
                writes,
                commits,
            }),
        })
    }

    /// The database this store writes to.
    pub fn database(&self) -> &Database {
        &self.shared.database
    }

    /// Tell `observer` of every commit from now on (set once).
    pub fn observe_commits(&self, observer: Arc<dyn CommitObserver>) {
        let _ = self.shared.commits.observer.set(observer);
    }

    /// What the writer has done so far.
    pub fn stats(&self) -> &CommitStats {
        &self.shared.commits.stats
    }

    /// Stop taking writes: those after this fail. Batched writes in
    /// flight are committed first (this waits for the writer thread);
    /// pooled ones finish on their callers' threads.
    pub fn close(&self) {
        match &self.shared.writes {
            Writes::Batched { writer, thread } => {
                writer.stop();
                if let Some(thread) = lock(thread).take() {
                    let _ = thread.join();
                }
            }
            Writes::Pooled { closed } => closed.store(true, Ordering::SeqCst),
        }
    }

    /// Run `op` as one write and return its result once it is durable: on
    /// the write connection, at once when nothing else is being written,
    /// else in the writer's next batch; or on a pooled connection.
    fn submit<T: Send + 'static>(
        &self,
        flush: bool,
        op: impl FnOnce(&dyn CheckpointStore) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let writer = match &self.shared.writes {
            Writes::Batched { writer, .. } => writer,
            Writes::Pooled { closed } => {
                if closed.load(Ordering::SeqCst) {
                    return Err(stopped());
                }
                let started = Instant::now();
                let result = self.read(op);
                self.shared.commits.committed(1, flush, started);
                return result;
            }
        };
        let (reply, answer) = mpsc::sync_channel::<Result<T, StoreError>>(1);
        let refused = reply.clone();
        let job = Job {
            flush,
            work: Box::new(move |store| {
                let result = op(store);
                Box::new(move |committed: Option<&StoreError>| {
                    let _ = reply.send(match committed {
                        Some(error) => Err(error.clone()),
                        None => result,
                    });
                })
            }),
            refuse: Box::new(move |error| {
                let _ = refused.send(Err(error));
            }),
        };
        let mut queue = lock(&writer.queue);
        if queue.closed {
            return Err(stopped());
        }
        if queue.committing || !queue.waiting.is_empty() {
            queue.waiting.push(job);
            drop(queue);
            writer.wake.notify_one();
        } else {
            // Alone: commit on this thread, as a batch of one.
            queue.committing = true;
            drop(queue);
            writer.commit(vec![job]);
            writer.commit_ended();
        }
        answer.recv().unwrap_or_else(|_| {
            Err(StoreError::Backend(
                "the database writer stopped before answering".to_owned(),
            ))
        })
    }

    /// Run `op` on a pooled connection.
    fn read<T>(
        &self,
        op: impl FnOnce(&dyn CheckpointStore) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let connection = self.take_connection()?;
        let result = op(connection.as_ref());
        lock(&self.shared.pool).free.push(connection);
        self.shared.connection_free.notify_one();
        result
    }

    /// A free pooled connection, a new one while there are fewer than the
    /// most allowed, else the next one given back.
    fn take_connection(&self) -> Result<Box<dyn CheckpointStore>, StoreError> {
        let mut pool = lock(&self.shared.pool);
        loop {
            if let Some(connection) = pool.free.pop() {
                return Ok(connection);
            }
            if pool.open < self.shared.max_connections {
                pool.open += 1;
                drop(pool);
                let opened = self.shared.database.connect_reader();
                if opened.is_err() {
                    lock(&self.shared.pool).open -= 1;
                    // A caller waiting for this slot may open one instead.
                    self.shared.connection_free.notify_one();
                }
                return opened;
            }
            pool = self
                .shared
                .connection_free
                .wait(pool)
                .unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// The error of a write after [`GroupCommitStore::close`].
fn stopped() -> StoreError {
    StoreError::Backend("the database writer has stopped (the server is shutting down)".to_owned())
}

impl Commits {
    /// Count a commit of `writes` writes that began at `started`.
    fn committed(&self, writes: usize, flush: bool, started: Instant) {
        let stats = &self.stats;
        stats.writes.fetch_add(writes as u64, Ordering::Relaxed);
        stats.commits.fetch_add(1, Ordering::Relaxed);
        if flush {
            stats.flushed_commits.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(observer) = self.observer.get() {
            observer.committed(writes, started.elapsed());
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Writer {
    /// The writer thread: commit whatever is waiting, in batches, until the
    /// store is closed and nothing is left.
    fn write_batches(&self) {
        loop {
            let batch = {
                let mut queue = lock(&self.queue);
                while queue.committing || queue.waiting.is_empty() {
                    if queue.closed && !queue.committing && queue.waiting.is_empty() {
                        return;
                    }
                    queue = self.wake.wait(queue).unwrap_or_else(|e| e.into_inner());
                }
                queue.committing = true;
                let take = queue.waiting.len().min(MAX_BATCH);
                queue.waiting.drain(..take).collect()
            };
            self.commit(batch);
            lock(&self.queue).committing = false;
        }
    }

    /// A commit by a caller ended: wake the writer thread if writes queued
    /// up meanwhile (or the store is closing and waits for this commit).
    fn commit_ended(&self) {
        let mut queue = lock(&self.queue);
        queue.committing = false;
        if !queue.waiting.is_empty() || queue.closed {
            self.wake.notify_one();
        }
    }

    /// No more writes: the writer thread ends once those in flight are done.
    fn stop(&self) {
        lock(&self.queue).closed = true;
        self.wake.notify_one();
    }

    /// Run `batch` in one transaction, commit it, then answer each caller.
    /// Only the holder of `committing` calls this.
    fn commit(&self, batch: Vec<Job>) {
        let store = lock(&self.store);
        let started = Instant::now();
        let flush = batch.iter().any(|job| job.flush);
        if let Err(error) = store.begin_batch(flush) {
            for job in batch {
                (job.refuse)(error.clone());
            }
            return;
        }
        let completions: Vec<Completion> = batch
            .into_iter()
            .map(|job| (job.work)(store.as_ref()))
            .collect();
        let writes = completions.len();
        let committed = store.commit_batch();
        self.commits.committed(writes, flush, started);
        for complete in completions {
            complete(committed.as_ref().err());
        }
    }
}

/// Owned copies of borrowed arguments, for a write that runs on the writer.
macro_rules! owned {
    ($($name:ident),*) => { $(let $name = $name.to_owned();)* };
}

impl CheckpointStore for GroupCommitStore {
    fn reopen(&self) -> Result<Box<dyn CheckpointStore>, StoreError> {
        Ok(Box::new(self.clone()))
    }

    fn workflow(&self, id: &str) -> Result<Option<WorkflowRecord>, StoreError> {
        self.read(|store| store.workflow(id))
    }

    fn steps(&self, workflow_id: &str) -> Result<Vec<StepRecord>, StoreError> {
        self.read(|store| store.steps(workflow_id))
    }

    fn steps_page(
        &self,
        workflow_id: &str,
        after: u32,
        limit: u32,
    ) -> Result<Vec<StepRecord>, StoreError> {
        self.read(|store| store.steps_page(workflow_id, after, limit))
    }

    fn attempts(&self, workflow_id: &str) -> Result<Vec<AttemptRecord>, StoreError> {
        self.read(|store| store.attempts(workflow_id))
    }

    fn events(&self, workflow_id: &str) -> Result<Vec<WorkflowEvent>, StoreError> {
        self.read(|store| store.events(workflow_id))
    }

    fn create_workflow(&self, workflow: &NewWorkflow<'_>) -> Result<(), StoreError> {
        let (id, sha, input, grants, component) = (
            workflow.id.to_owned(),
            workflow.component_sha256.to_owned(),
            workflow.input.to_owned(),
            workflow.grants.map(str::to_owned),
            workflow.component.map(<[u8]>::to_vec),
        );
        let claim = OwnedClaim::of(workflow.claim);
        self.submit(true, move |store| {
            store.create_workflow(&NewWorkflow {
                id: &id,
                component_sha256: &sha,
                input: &input,
                claim: &claim.borrow(),
                grants: grants.as_deref(),
                component: component.as_deref(),
            })
        })
    }

    fn claim_workflow(&self, id: &str, takeover: &Takeover<'_>) -> Result<(), StoreError> {
        owned!(id);
        let previous = takeover.previous_run.to_owned();
        let observed_lease = takeover.observed_lease;
        let observed_component = takeover.observed_component.to_owned();
        let claim = OwnedClaim::of(takeover.claim);
        let sha = takeover.component_sha256.to_owned();
        let (takeovers, progress_mark) = (takeover.takeovers, takeover.progress_mark);
        let events: Vec<(String, String)> = takeover
            .events
            .iter()
            .map(|(kind, detail)| ((*kind).to_owned(), detail.clone()))
            .collect();
        self.submit(true, move |store| {
            let events: Vec<(&str, String)> = events
                .iter()
                .map(|(k, d)| (k.as_str(), d.clone()))
                .collect();
            store.claim_workflow(
                &id,
                &Takeover {
                    previous_run: &previous,
                    observed_lease,
                    observed_component: &observed_component,
                    claim: &claim.borrow(),
                    component_sha256: &sha,
                    takeovers,
                    progress_mark,
                    events: &events,
                },
            )
        })
    }

    fn reopen_workflow(&self, id: &str, reopen: &Reopen<'_>) -> Result<(), StoreError> {
        owned!(id);
        let expected = reopen.expected_run.to_owned();
        let claim = OwnedClaim::of(reopen.claim);
        let sha = reopen.component_sha256.to_owned();
        let grants = reopen.grants.map(str::to_owned);
        let detail = reopen.detail.to_owned();
        self.submit(true, move |store| {
            store.reopen_workflow(
                &id,
                &Reopen {
                    expected_run: &expected,
                    claim: &claim.borrow(),
                    component_sha256: &sha,
                    grants: grants.as_deref(),
                    detail: &detail,
                },
            )
        })
    }

    fn renew_lease(
        &self,
        id: &str,
        run_id: &str,
        lease_until: Millis,
    ) -> Result<LeaseRenewal, StoreError> {
        owned!(id, run_id);
        self.submit(false, move |store| {
            store.renew_lease(&id, &run_id, lease_until)
        })
    }

    fn renew_leases(
        &self,
        runs: &[(String, String)],
        lease_until: Millis,
    ) -> Result<Vec<LeaseRenewal>, StoreError> {
        let runs = runs.to_vec();
        self.submit(false, move |store| store.renew_leases(&runs, lease_until))
    }

    fn request_cancel(&self, id: &str) -> Result<WorkflowRecord, StoreError> {
        owned!(id);
        self.submit(true, move |store| store.request_cancel(&id))
    }

    fn list_workflows(&self, query: &ListQuery) -> Result<Vec<WorkflowSummary>, StoreError> {
        self.read(|store| store.list_workflows(query))
    }

    fn put_component(&self, sha256: &str, bytes: &[u8]) -> Result<(), StoreError> {
        owned!(sha256, bytes);
        self.submit(true, move |store| store.put_component(&sha256, &bytes))
    }

    fn component(&self, sha256: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.read(|store| store.component(sha256))
    }

    fn deploy(&self, name: &str, sha256: &str, grants: &str) -> Result<Deployment, StoreError> {
        owned!(name, sha256, grants);
        self.submit(true, move |store| store.deploy(&name, &sha256, &grants))
    }

    fn deployments(&self, name: Option<&str>) -> Result<Vec<Deployment>, StoreError> {
        self.read(|store| store.deployments(name))
    }

    fn fork_workflow(&self, fork: &Fork<'_>) -> Result<WorkflowRecord, StoreError> {
        let (source, id, sha, detail) = (
            fork.source.to_owned(),
            fork.id.to_owned(),
            fork.component_sha256.to_owned(),
            fork.detail.to_owned(),
        );
        let (keep_through, deployment) = (fork.keep_through, fork.deployment.map(str::to_owned));
        self.submit(true, move |store| {
            store.fork_workflow(&Fork {
                source: &source,
                id: &id,
                keep_through,
                component_sha256: &sha,
                deployment: deployment.as_deref(),
                detail: &detail,
            })
        })
    }

    fn upgrade_workflow(&self, upgrade: &Upgrade<'_>) -> Result<bool, StoreError> {
        let (observed, to, detail) = (
            upgrade.observed.clone(),
            upgrade.to_sha256.to_owned(),
            upgrade.detail.to_owned(),
        );
        let new_run = upgrade.new_run.map(str::to_owned);
        let verified_steps = upgrade.verified_steps;
        self.submit(true, move |store| {
            store.upgrade_workflow(&Upgrade {
                observed: &observed,
                verified_steps,
                to_sha256: &to,
                detail: &detail,
                new_run: new_run.as_deref(),
            })
        })
    }

    fn suspend_unclaimed(
        &self,
        observed: &WorkflowRecord,
        reason: &str,
    ) -> Result<bool, StoreError> {
        let (observed, reason) = (observed.clone(), reason.to_owned());
        self.submit(true, move |store| {
            store.suspend_unclaimed(&observed, &reason)
        })
    }

    fn queue_depths(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.read(|store| store.queue_depths())
    }

    fn status_counts(&self) -> Result<Vec<(WorkflowStatus, u64)>, StoreError> {
        self.read(|store| store.status_counts())
    }

    fn add_schedule(&self, schedule: &ScheduleRecord) -> Result<bool, StoreError> {
        let schedule = schedule.clone();
        self.submit(true, move |store| store.add_schedule(&schedule))
    }

    fn remove_schedule(&self, name: &str) -> Result<bool, StoreError> {
        owned!(name);
        self.submit(true, move |store| store.remove_schedule(&name))
    }

    fn schedules(&self) -> Result<Vec<ScheduleRecord>, StoreError> {
        self.read(|store| store.schedules())
    }

    fn advance_schedule(&self, name: &str, from: Millis, to: Millis) -> Result<bool, StoreError> {
        owned!(name);
        self.submit(true, move |store| store.advance_schedule(&name, from, to))
    }

    fn enqueue_workflow(&self, workflow: &QueuedWorkflow<'_>) -> Result<Enqueued, StoreError> {
        let (id, deployment, sha, input, grants, queue) = (
            workflow.id.to_owned(),
            workflow.deployment.to_owned(),
            workflow.component_sha256.to_owned(),
            workflow.input.to_owned(),
            workflow.grants.to_owned(),
            workflow.queue.to_owned(),
        );
        self.submit(true, move |store| {
            store.enqueue_workflow(&QueuedWorkflow {
                id: &id,
                deployment: &deployment,
                component_sha256: &sha,
                input: &input,
                grants: &grants,
                queue: &queue,
            })
        })
    }

    fn ready_workflows(
        &self,
        queue: &str,
        now: Millis,
        limit: u32,
        skip: &HashSet<String>,
    ) -> Result<Vec<WorkflowRecord>, StoreError> {
        self.read(|store| store.ready_workflows(queue, now, limit, skip))
    }

    fn running_on_host(
        &self,
        queue: &str,
        host: &str,
        boot_id: &str,
        now: Millis,
        limit: u32,
    ) -> Result<Vec<WorkflowRecord>, StoreError> {
        self.read(|store| store.running_on_host(queue, host, boot_id, now, limit))
    }

    fn next_wake(&self, queue: &str) -> Result<Option<Millis>, StoreError> {
        self.read(|store| store.next_wake(queue))
    }

    fn next_lease_expiry(&self, queue: &str, now: Millis) -> Result<Option<Millis>, StoreError> {
        self.read(|store| store.next_lease_expiry(queue, now))
    }

    fn server_clock(&self) -> Result<Option<Millis>, StoreError> {
        self.read(|store| store.server_clock())
    }

    fn unload_workflow(
        &self,
        id: &str,
        run_id: &str,
        unload: &Unload<'_>,
    ) -> Result<bool, StoreError> {
        owned!(id, run_id);
        let waiting_for = unload.waiting_for.cloned();
        let (wake_at, despite_cancel) = (unload.wake_at, unload.despite_cancel);
        self.submit(true, move |store| {
            let unload = Unload {
                waiting_for: waiting_for.as_ref(),
                wake_at,
                despite_cancel,
            };
            store.unload_workflow(&id, &run_id, &unload)
        })
    }

    fn children(&self, id: &str) -> Result<Vec<WorkflowRecord>, StoreError> {
        self.read(|store| store.children(id))
    }

    fn send_signal(&self, signal: &SignalRecord) -> Result<SignalSent, StoreError> {
        let signal = signal.clone();
        self.submit(true, move |store| store.send_signal(&signal))
    }

    fn next_signal(
        &self,
        workflow_id: &str,
        name: &str,
    ) -> Result<Option<SignalRecord>, StoreError> {
        self.read(|store| store.next_signal(workflow_id, name))
    }

    fn signals(&self, workflow_id: &str) -> Result<Vec<SignalRecord>, StoreError> {
        self.read(|store| store.signals(workflow_id))
    }

    fn published_events(&self, workflow_id: &str) -> Result<Vec<PublishedEvent>, StoreError> {
        self.read(|store| store.published_events(workflow_id))
    }

    fn cancel_idle_workflow(
        &self,
        id: &str,
        status: WorkflowStatus,
        reason: &str,
    ) -> Result<bool, StoreError> {
        owned!(id, reason);
        self.submit(true, move |store| {
            store.cancel_idle_workflow(&id, status, &reason)
        })
    }

    fn release_workflow(&self, id: &str, run_id: &str) -> Result<(), StoreError> {
        owned!(id, run_id);
        self.submit(true, move |store| store.release_workflow(&id, &run_id))
    }

    fn record_attempt(
        &self,
        workflow_id: &str,
        run_id: &str,
        key: &StepKey,
        error: &str,
        backoff_ms: i64,
    ) -> Result<(), StoreError> {
        owned!(workflow_id, run_id, error);
        let key = key.clone();
        self.submit(true, move |store| {
            store.record_attempt(&workflow_id, &run_id, &key, &error, backoff_ms)
        })
    }

    fn begin_retry(
        &self,
        workflow_id: &str,
        run_id: &str,
        key: &StepKey,
    ) -> Result<(), StoreError> {
        owned!(workflow_id, run_id);
        let key = key.clone();
        self.submit(false, move |store| {
            store.begin_retry(&workflow_id, &run_id, &key)
        })
    }

    fn begin_steps(&self, workflow_id: &str, steps: &[StepBegin<'_>]) -> Result<(), StoreError> {
        owned!(workflow_id);
        let steps: Vec<OwnedStepBegin> = steps.iter().map(OwnedStepBegin::of).collect();
        self.submit(false, move |store| {
            let begins: Vec<StepBegin<'_>> = steps.iter().map(OwnedStepBegin::borrow).collect();
            store.begin_steps(&workflow_id, &begins)
        })
    }

    fn finish_step(
        &self,
        workflow_id: &str,
        run_id: &str,
        key: &StepKey,
        outcome: &Outcome,
        log: &[LogLine],
        effect: Option<&StepEffect>,
    ) -> Result<(), StoreError> {
        owned!(workflow_id, run_id);
        let (key, outcome, log) = (key.clone(), outcome.clone(), log.to_vec());
        let effect = effect.cloned();
        self.submit(true, move |store| {
            store.finish_step(&workflow_id, &run_id, &key, &outcome, &log, effect.as_ref())
        })
    }

    fn append_log(&self, id: &str, run_id: &str, log: &[LogLine]) -> Result<(), StoreError> {
        owned!(id, run_id);
        let log = log.to_vec();
        self.submit(true, move |store| store.append_log(&id, &run_id, &log))
    }

    fn logs(&self, id: &str, after_seq: i64, limit: u32) -> Result<Vec<LogRecord>, StoreError> {
        self.read(|store| store.logs(id, after_seq, limit))
    }

    fn stream_logs(&self, id: &str, stream: LogStream) -> Result<Vec<LogRecord>, StoreError> {
        self.read(|store| store.stream_logs(id, stream))
    }

    fn finish_workflow(
        &self,
        id: &str,
        run_id: &str,
        end: &WorkflowEnd<'_>,
    ) -> Result<(), StoreError> {
        owned!(id, run_id);
        let (status, outcome, interrupted, log) = (
            end.status,
            end.outcome.clone(),
            end.interrupted_steps.to_vec(),
            end.log.to_vec(),
        );
        self.submit(true, move |store| {
            store.finish_workflow(
                &id,
                &run_id,
                &WorkflowEnd {
                    status,
                    outcome: &outcome,
                    interrupted_steps: &interrupted,
                    log: &log,
                },
            )
        })
    }
}

/// A [`Claim`] that owns its fields.
struct OwnedClaim {
    run_id: String,
    owner: Owner,
    lease_until: Millis,
}

impl OwnedClaim {
    fn of(claim: &Claim<'_>) -> Self {
        Self {
            run_id: claim.run_id.to_owned(),
            owner: claim.owner.clone(),
            lease_until: claim.lease_until,
        }
    }

    fn borrow(&self) -> Claim<'_> {
        Claim {
            run_id: &self.run_id,
            owner: &self.owner,
            lease_until: self.lease_until,
        }
    }
}

/// A [`StepBegin`] that owns its fields.
struct OwnedStepBegin {
    key: StepKey,
    sequence: u32,
    name: String,
    attempt: u32,
    run_id: String,
    started_at: Millis,
    input_fingerprint: Option<String>,
}

impl OwnedStepBegin {
    fn of(step: &StepBegin<'_>) -> Self {
        Self {
            key: step.key.clone(),
            sequence: step.sequence,
            name: step.name.to_owned(),
            attempt: step.attempt,
            run_id: step.run_id.to_owned(),
            started_at: step.started_at,
            input_fingerprint: step.input_fingerprint.map(str::to_owned),
        }
    }

    fn borrow(&self) -> StepBegin<'_> {
        StepBegin {
            key: &self.key,
            sequence: self.sequence,
            name: &self.name,
            attempt: self.attempt,
            run_id: &self.run_id,
            started_at: self.started_at,
            input_fingerprint: self.input_fingerprint.as_deref(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{SqliteStore, now_millis};

    fn owner() -> Owner {
        Owner {
            pid: 1,
            host: "h".into(),
            boot_id: None,
            pid_ns: None,
            started: None,
        }
    }

    #[test]
    fn concurrent_writes_are_committed_and_each_caller_gets_its_own_answer() {
        let dir = tempfile::tempdir().unwrap();
        let store = GroupCommitStore::open(&Database::Sqlite(dir.path().join("db"))).unwrap();
        let threads: Vec<_> = (0..16)
            .map(|i| {
                let store = store.clone();
                thread::spawn(move || {
                    let owner = owner();
                    let run = format!("r{i}");
                    let claim = Claim {
                        run_id: &run,
                        owner: &owner,
                        lease_until: now_millis() + 30_000,
                    };
                    let id = format!("wf{i}");
                    store
                        .create_workflow(&NewWorkflow {
                            id: &id,
                            component_sha256: "c",
                            input: "null",
                            claim: &claim,
                            grants: None,
                            component: None,
                        })
                        .unwrap();
                    // A second create of the same id conflicts, alone.
                    let again = store.create_workflow(&NewWorkflow {
                        id: &id,
                        component_sha256: "c",
                        input: "null",
                        claim: &claim,
                        grants: None,
                        component: None,
                    });
                    assert!(matches!(again, Err(StoreError::WorkflowExists { .. })));
                    let key = StepKey::new("s", 1);
                    store
                        .begin_steps(
                            &id,
                            &[StepBegin {
                                key: &key,
                                sequence: 1,
                                name: "s",
                                attempt: 1,
                                run_id: &run,
                                started_at: now_millis(),
                                input_fingerprint: None,
                            }],
                        )
                        .unwrap();
                    store
                        .finish_step(&id, &run, &key, &Ok(i.to_string()), &[], None)
                        .unwrap();
                    // A run that is not the owner is fenced out.
                    let fenced =
                        store.finish_step(&id, "intruder", &key, &Ok("0".into()), &[], None);
                    assert!(matches!(fenced, Err(StoreError::LostOwnership { .. })));
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        store.close();
        let check = SqliteStore::open(&dir.path().join("db")).unwrap();
        for i in 0..16 {
            let steps = check.steps(&format!("wf{i}")).unwrap();
            assert_eq!(
                steps[0].output_json.as_deref(),
                Some(i.to_string().as_str())
            );
        }
    }
}
