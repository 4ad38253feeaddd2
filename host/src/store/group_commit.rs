//! Group commit: the writes of many concurrent runs share one transaction
//! and one flush.
//!
//! A [`GroupCommitStore`] is a [`CheckpointStore`] whose writes go to one
//! writer thread. The writer takes every write waiting when it is free,
//! runs each in a savepoint of one transaction (so a conflict undoes that
//! write alone), commits once, and only then answers each caller: a write
//! still returns only when it is durable, but a hundred of them cost one
//! fsync. A lone write does not wait for company: the writer never holds a
//! batch open. Reads use a small pool of connections, since WAL readers do
//! not block the writer.
//!
//! The engine sees an ordinary store; batching is this module's business.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};

use super::{
    AttemptRecord, CheckpointStore, Claim, Deployment, Enqueued, Fork, LeaseRenewal, ListQuery,
    LogLine, LogRecord, Millis, NewWorkflow, Outcome, Owner, QueuedWorkflow, Reopen, SqliteStore,
    StepBegin, StepKey, StepRecord, StoreError, Takeover, Upgrade, WorkflowEnd, WorkflowEvent,
    WorkflowRecord, WorkflowStatus, WorkflowSummary,
};

/// At most this many writes share a transaction: bounds the latency the
/// last of them sees.
const MAX_BATCH: usize = 512;

/// A checkpoint store whose writes are group-committed.
#[derive(Clone)]
pub struct GroupCommitStore {
    shared: Arc<Shared>,
}

struct Shared {
    path: std::path::PathBuf,
    stats: Arc<CommitStats>,
    readers: Mutex<Vec<SqliteStore>>,
    writer: Mutex<Option<Sender<Job>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
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
    work: Box<dyn FnOnce(&SqliteStore) -> Completion + Send>,
    /// Answers the caller with an error, without running.
    refuse: Box<dyn FnOnce(StoreError) + Send>,
}

/// Answers one caller with the commit's result.
type Completion = Box<dyn FnOnce(Option<&StoreError>) + Send>;

impl GroupCommitStore {
    /// Open the database at `path` (creating it and its tables if needed)
    /// and start its writer.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let writer_store = SqliteStore::open(path)?;
        let (jobs, received) = mpsc::channel();
        let stats = Arc::new(CommitStats::default());
        let writer_stats = Arc::clone(&stats);
        let thread = thread::Builder::new()
            .name("group-commit".to_owned())
            .spawn(move || write_batches(&writer_store, &received, &writer_stats))
            .map_err(|e| StoreError::Backend(format!("cannot start the writer thread: {e}")))?;
        Ok(Self {
            shared: Arc::new(Shared {
                path: path.to_owned(),
                stats,
                readers: Mutex::new(Vec::new()),
                writer: Mutex::new(Some(jobs)),
                thread: Mutex::new(Some(thread)),
            }),
        })
    }

    /// What the writer has done so far.
    pub fn stats(&self) -> &CommitStats {
        &self.shared.stats
    }

    /// Wait for the writes in flight, then stop the writer. Writes after
    /// this fail.
    pub fn close(&self) {
        drop(lock(&self.shared.writer).take());
        if let Some(thread) = lock(&self.shared.thread).take() {
            let _ = thread.join();
        }
    }

    /// Run `op` on the writer's connection, in the next batch, and return
    /// its result once that batch is durable.
    fn submit<T: Send + 'static>(
        &self,
        flush: bool,
        op: impl FnOnce(&SqliteStore) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
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
        let sent = lock(&self.shared.writer)
            .as_ref()
            .map(|writer| writer.send(job).is_ok());
        if sent != Some(true) {
            return Err(StoreError::Backend(
                "the database writer has stopped (the server is shutting down)".to_owned(),
            ));
        }
        answer.recv().unwrap_or_else(|_| {
            Err(StoreError::Backend(
                "the database writer stopped before answering".to_owned(),
            ))
        })
    }

    /// Run `op` on a pooled read connection.
    fn read<T>(
        &self,
        op: impl FnOnce(&SqliteStore) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let pooled = lock(&self.shared.readers).pop();
        let reader = match pooled {
            Some(reader) => reader,
            None => SqliteStore::connect_existing(&self.shared.path)?,
        };
        let result = op(&reader);
        lock(&self.shared.readers).push(reader);
        result
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The writer: commit whatever is waiting, in batches, until every handle
/// is gone.
fn write_batches(store: &SqliteStore, jobs: &Receiver<Job>, stats: &CommitStats) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let flush = batch.iter().any(|job| job.flush);
        if let Err(error) = store.begin_batch(flush) {
            for job in batch {
                (job.refuse)(error.clone());
            }
            continue;
        }
        stats
            .writes
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        let completions: Vec<Completion> = batch.into_iter().map(|job| (job.work)(store)).collect();
        let committed = store.commit_batch();
        stats.commits.fetch_add(1, Ordering::Relaxed);
        if flush {
            stats.flushed_commits.fetch_add(1, Ordering::Relaxed);
        }
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
        let keep_through = fork.keep_through;
        self.submit(true, move |store| {
            store.fork_workflow(&Fork {
                source: &source,
                id: &id,
                keep_through,
                component_sha256: &sha,
                detail: &detail,
            })
        })
    }

    fn upgrade_workflow(&self, upgrade: &Upgrade<'_>) -> Result<bool, StoreError> {
        let (id, observed, to, detail) = (
            upgrade.id.to_owned(),
            upgrade.observed.clone(),
            upgrade.to_sha256.to_owned(),
            upgrade.detail.to_owned(),
        );
        let verified_steps = upgrade.verified_steps;
        self.submit(true, move |store| {
            store.upgrade_workflow(&Upgrade {
                id: &id,
                observed: &observed,
                verified_steps,
                to_sha256: &to,
                detail: &detail,
            })
        })
    }

    fn suspend_unclaimed(
        &self,
        observed: &WorkflowRecord,
        reason: &str,
    ) -> Result<bool, StoreError> {
        let (observed, reason) = (observed.clone(), reason.to_owned());
        self.submit(true, move |store| store.suspend_unclaimed(&observed, &reason))
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
    ) -> Result<Vec<WorkflowRecord>, StoreError> {
        self.read(|store| store.ready_workflows(queue, now, limit))
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

    fn sleep_workflow(&self, id: &str, run_id: &str, wake_at: Millis) -> Result<(), StoreError> {
        owned!(id, run_id);
        self.submit(true, move |store| {
            store.sleep_workflow(&id, &run_id, wake_at)
        })
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
    ) -> Result<(), StoreError> {
        owned!(workflow_id, run_id);
        let (key, outcome, log) = (key.clone(), outcome.clone(), log.to_vec());
        self.submit(true, move |store| {
            store.finish_step(&workflow_id, &run_id, &key, &outcome, &log)
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
    use crate::store::now_millis;

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
        let store = GroupCommitStore::open(&dir.path().join("db")).unwrap();
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
                        .finish_step(&id, &run, &key, &Ok(i.to_string()), &[])
                        .unwrap();
                    // A run that is not the owner is fenced out.
                    let fenced = store.finish_step(&id, "intruder", &key, &Ok("0".into()), &[]);
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
