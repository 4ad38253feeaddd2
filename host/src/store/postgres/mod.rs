//! [`CheckpointStore`] on a PostgreSQL database, which several hosts may
//! share.
//!
//! This module owns the SQL of that backend: the tables (see [`schema`]),
//! their versioned migrations, and one transaction per method, with the
//! same meaning as [`super::sqlite`]'s, method by method. It knows nothing
//! of WebAssembly, replay or scheduling.
//!
//! SQLite serializes every write with its single writer lock; PostgreSQL
//! runs transactions side by side (READ COMMITTED). So where a SQLite write
//! reads a row and then decides (the ownership fence, a signal against the
//! workflow's status, the count of a history), this backend reads the
//! workflow's row `FOR UPDATE` first: writes to one workflow queue behind
//! each other as they would in SQLite, and two hosts cannot both win.
//! Conditional `UPDATE`s (a claim, a lease renewal) need no lock of their
//! own: PostgreSQL re-checks their condition on the row as committed. A
//! deadlock or serialization failure is retried, like SQLite's busy
//! database.
//!
//! Tables live in the connection's current schema (its `search_path`), so
//! several stores, or tests, can share one database in separate schemas.
//!
//! Each write is a transaction of its own. Behind
//! [`super::GroupCommitStore`], the writes of many runs go through a pool
//! of connections side by side, and the server flushes the commits that
//! wait at the same time together: PostgreSQL's own group commit. (Sharing
//! one transaction between runs, as SQLite's batches do, would hold each
//! run's row locks until the batch committed, and two workers' batches
//! could then deadlock.)
//!
//! When the server goes out of reach, operations wait for it and carry on
//! (see [`outage`]). Workers hear of new work through NOTIFY (see
//! [`listen`] and the triggers in [`schema`]). TLS follows libpq's
//! `sslmode` and `sslrootcert` (see [`tls`]).

mod connection;
mod listen;
mod outage;
mod schema;
mod tls;

pub use listen::PostgresWorkListener;

use std::collections::HashSet;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::Duration;

use postgres::{Client, Row};

use super::{
    AttemptRecord, CheckpointStore, ChildStart, Deployment, Enqueued, Fork, LOG_LINES_KEPT,
    LeaseRenewal, ListQuery, LogLine, LogRecord, LogStream, Millis, NewWorkflow, Outcome, Owner,
    PublishedEvent, QueuedWorkflow, RESERVATION_MS, Reopen, ScheduleRecord, SignalRecord,
    SignalSent, StepBegin, StepEffect, StepKey, StepRecord, StepStatus, StoreError, Takeover,
    Unload, Upgrade, WaitingFor, WorkflowEnd, WorkflowEvent, WorkflowRecord, WorkflowStatus,
    WorkflowSummary, now_millis, split_outcome,
};
/// A URL as messages may show it (see [`super::Database`]).
pub(crate) use connection::redact;
use connection::{Commit, Connection, Session, Target, WriteFailure, get, get_u32, storable};
use outage::{Outage, in_doubt, waiting_out};
use schema::{MIGRATIONS, READABLE_FROM, SCHEMA, SCHEMA_VERSION, VERSION_TABLE};

const WORKFLOW_COLUMNS: &str = "id, component_sha256, input, status, output, error, run_id, \
     owner_pid, owner_host, lease_expires_at, cancel_requested, created_at, updated_at, \
     owner_boot, owner_pid_ns, owner_started, takeovers, progress_mark, grants, error_code, \
     queue, deployment, wake_at, parent_id, waiting_for";

/// How many columns [`WORKFLOW_COLUMNS`] selects.
const WORKFLOW_COLUMN_COUNT: usize = 25;

const STEP_COLUMNS: &str = "step_key, sequence, name, status, output_json, error, attempts, \
     run_id, started_at, finished_at, failures, error_code, input_fingerprint";

const SIGNAL_COLUMNS: &str = "seq, workflow_id, name, signal_id, value, sent_at, taken_by";

/// Attempts of a write that PostgreSQL aborted for a deadlock or a
/// serialization failure (it runs again from the start).
const BUSY_RETRIES: u32 = 8;
const BACKOFF_START: Duration = Duration::from_millis(2);
const BACKOFF_CAP: Duration = Duration::from_millis(250);

/// A write of the store: a transaction, or a statement alone.
type Tx<'a> = Session<'a, Client>;

/// Whether a write in doubt was made (see [`PostgresStore::write_alone`]).
type MadeTest<'a, T> = dyn FnMut(&mut Tx<'_>) -> Result<Option<T>, StoreError> + 'a;

/// A checkpoint store in a PostgreSQL database: one connection, used by one
/// thread at a time ([`CheckpointStore::reopen`] gives another).
pub struct PostgresStore {
    target: Target,
    conn: Mutex<Connection>,
}

impl PostgresStore {
    /// Connect to the database at `url` (`postgres://user@host:port/db`,
    /// or `key=value` pairs) and create, or bring up to date, the tables in
    /// its current schema. A server that cannot be reached is an
    /// [`StoreError::Open`] naming the URL (never its password).
    pub fn open(url: &str) -> Result<Self, StoreError> {
        let store = Self::connect(Target::parse(url)?)?;
        store.create_schema(store.read(stored_version)?)?;
        Ok(store)
    }

    /// Open the database at `url` for a command that acts on what is there
    /// (`cancel`, `signal`): as [`Self::open`], except that a schema
    /// without tables is [`StoreError::NoTables`], not made, so that such a
    /// command on a mistyped URL or `search_path` leaves nothing behind.
    pub fn open_with_tables(url: &str) -> Result<Self, StoreError> {
        let store = Self::connect(Target::parse(url)?)?;
        let found = store.read(stored_version)?;
        if found.is_none() {
            return Err(store.no_tables());
        }
        store.create_schema(found)?;
        Ok(store)
    }

    fn no_tables(&self) -> StoreError {
        StoreError::NoTables {
            path: self.target.shown.clone(),
        }
    }

    /// Open the database at `url` to read what is there, changing nothing:
    /// the connection's transactions are read-only, and tables of an older
    /// schema are read as they are, not upgraded (that is for a command
    /// that writes), so a read beside workers of an older build leaves
    /// them their schema. A schema without tables, older than this build
    /// reads ([`READABLE_FROM`]) or newer than it knows is refused.
    pub fn open_read_only(url: &str) -> Result<Self, StoreError> {
        let store = Self::connect(Target::parse(url)?.read_only())?;
        let refused = |reason: String| StoreError::Open {
            path: store.target.shown.clone(),
            reason,
        };
        // `stored_version` refuses a newer schema.
        match store.read(stored_version)? {
            None => Err(store.no_tables()),
            Some(found) if found < READABLE_FROM => Err(refused(format!(
                "its tables are version {found}; any command of this durable-host that writes \
                 upgrades them to version {SCHEMA_VERSION} first"
            ))),
            Some(_) => Ok(store),
        }
    }

    /// A listener for the work notifications of the database at `url`, on
    /// a connection of its own.
    pub fn listen_for_work(url: &str) -> Result<PostgresWorkListener, StoreError> {
        PostgresWorkListener::open(&Target::parse(url)?)
    }

    /// Another connection to a database a store of this process opened
    /// already (its tables are up to date): a pool's. While the server is
    /// out of reach, this waits for it, as operations do (see [`Outage`]).
    pub fn connect_existing(url: &str) -> Result<Self, StoreError> {
        let target = Target::parse(url)?;
        let conn =
            waiting_out(&target.shown, |_| target.reconnect()).map_err(|e| target.explain(e))?;
        Ok(Self {
            target,
            conn: Mutex::new(conn),
        })
    }

    fn connect(target: Target) -> Result<Self, StoreError> {
        let conn = target.connect()?;
        Ok(Self {
            target,
            conn: Mutex::new(conn),
        })
    }

    /// The connection, connected again if the last one was lost, or
    /// `fresh`: after the server was out of reach, a connection the client
    /// has not yet seen closed is not to be trusted either.
    fn connection(&self, fresh: bool) -> Result<MutexGuard<'_, Connection>, StoreError> {
        let mut conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        // A panic while the lock was held undid the write it was in (see
        // `Connection::write`): the connection is sound.
        if fresh || conn.client.is_closed() {
            *conn = self.target.reconnect()?;
        }
        Ok(conn)
    }

    /// Run a read, outside any transaction; again, on a new connection,
    /// while the server is out of reach (see [`Outage`]).
    fn read<T>(
        &self,
        mut body: impl FnMut(&mut Session<'_, Client>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        waiting_out(&self.target.shown, |fresh| {
            self.connection(fresh)
                .and_then(|mut conn| conn.read(&mut body))
        })
        .map_err(|e| self.target.explain(e))
    }

    /// Run `body` as one write in a transaction of its own and commit it.
    /// A body that answers `Err` (a conflict it found) is undone and
    /// returns it.
    fn write<T>(
        &self,
        body: impl FnMut(&mut Tx<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.write_retrying(Commit::Flushed, body, None)
    }

    /// Like [`Self::write`], committed without waiting for the flush (see
    /// [`Commit::Unflushed`]). For marking steps running, as SQLite's
    /// `synchronous=NORMAL` commit does.
    fn write_unflushed<T>(
        &self,
        body: impl FnMut(&mut Tx<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.write_retrying(Commit::Unflushed, body, None)
    }

    /// A write of the one statement `body` runs, committed on its own (see
    /// [`Commit::Alone`]). Should the connection be lost while it runs,
    /// `made` reads, once the server answers again, whether it was made
    /// (`Some`, what `body` would have answered) or not (`None`: it runs
    /// again), so that a run carries on through an outage as it does
    /// between transactions.
    fn write_alone<T>(
        &self,
        body: impl FnMut(&mut Tx<'_>) -> Result<T, StoreError>,
        mut made: impl FnMut(&mut Tx<'_>) -> Result<Option<T>, StoreError>,
    ) -> Result<T, StoreError> {
        self.write_retrying(Commit::Alone, body, Some(&mut made))
    }

    /// A write, run again while PostgreSQL aborts it for a deadlock or a
    /// serialization failure, and while the server is out of reach before
    /// the commit (see [`Outage`]). A connection lost during the commit is
    /// an error, unless `made` can tell whether the write was made: running
    /// it again blindly could make it twice.
    fn write_retrying<T>(
        &self,
        commit: Commit,
        mut body: impl FnMut(&mut Tx<'_>) -> Result<T, StoreError>,
        mut made: Option<&mut MadeTest<'_, T>>,
    ) -> Result<T, StoreError> {
        let mut backoff = BACKOFF_START;
        let mut busy = 0;
        let mut outage = Outage::default();
        // Whether the last try's connection was lost during its commit.
        let mut doubt = false;
        loop {
            let result = self
                .connection(outage.waiting())
                .map_err(WriteFailure::NotCommitted)
                .and_then(|mut conn| {
                    if let (true, Some(made)) = (doubt, made.as_mut()) {
                        match conn.read(|tx| made(tx)) {
                            Ok(Some(value)) => return Ok(value),
                            Ok(None) => doubt = false,
                            Err(error) => return Err(WriteFailure::NotCommitted(error)),
                        }
                    }
                    conn.write(commit, &mut body)
                });
            let error = match result {
                Ok(value) => {
                    outage.over(&self.target.shown);
                    return Ok(value);
                }
                Err(WriteFailure::InDoubt(error)) if made.is_some() => {
                    doubt = true;
                    if outage.wait(&self.target.shown, &error) {
                        continue;
                    }
                    return Err(self.target.explain(in_doubt(error)));
                }
                Err(WriteFailure::InDoubt(error)) => {
                    return Err(self.target.explain(in_doubt(error)));
                }
                Err(WriteFailure::NotCommitted(error)) => error,
            };
            match error {
                StoreError::Busy { .. } => {
                    busy += 1;
                    if busy == BUSY_RETRIES {
                        return Err(StoreError::Busy { attempts: busy });
                    }
                    thread::sleep(backoff);
                    backoff = (backoff * 2).min(BACKOFF_CAP);
                }
                // Still in doubt: the server is out of reach again before
                // `made` could tell.
                error if outage.wait(&self.target.shown, &error) => {}
                error if doubt => return Err(self.target.explain(in_doubt(error))),
                error => return Err(self.target.explain(error)),
            }
        }
    }

    /// Create the tables in a new schema, or bring older ones up to
    /// [`SCHEMA_VERSION`] with [`MIGRATIONS`]; refuse newer ones. Under an
    /// advisory lock (per schema), so that processes opening at once do not
    /// race.
    /// `found`: the version [`stored_version`] read as the store opened.
    fn create_schema(&self, found: Option<i64>) -> Result<(), StoreError> {
        // Up to date (every open after the first): no lock, no write.
        if found == Some(SCHEMA_VERSION) {
            return Ok(());
        }
        self.write(|tx| {
            let schema: Option<String> = get(&tx.query_one("SELECT current_schema()", &[])?, 0)?;
            let Some(schema) = schema else {
                return Err(StoreError::Open {
                    path: self.target.shown.clone(),
                    reason: "its search_path names no schema that exists: create the schema, \
                             or set search_path (e.g. `?options=-csearch_path%3DNAME`)"
                        .to_owned(),
                });
            };
            tx.query_one(
                "SELECT pg_advisory_xact_lock(hashtext('durable-host schema ' || $1::TEXT))",
                &[&schema],
            )?;
            // Another process may have created or upgraded it while we
            // waited for the lock.
            match stored_version(tx)? {
                None => {
                    tx.batch(VERSION_TABLE)?;
                    tx.batch(SCHEMA)?;
                    tx.execute(
                        "INSERT INTO durable_schema (version) VALUES ($1)",
                        &[&SCHEMA_VERSION],
                    )?;
                }
                Some(found) => {
                    for (_, migration) in MIGRATIONS.iter().filter(|(to, _)| *to > found) {
                        tx.batch(migration)?;
                    }
                    tx.execute("UPDATE durable_schema SET version = $1", &[&SCHEMA_VERSION])?;
                }
            }
            Ok(())
        })
    }

    /// Inside a write: lock workflow `id`'s row for the rest of the
    /// transaction and check that `run_id` owns it, running. This is the
    /// fence every write of a run passes (see [`super::check_owner`]).
    fn check_owner(tx: &mut Tx<'_>, id: &str, run_id: &str) -> Result<(), StoreError> {
        super::check_owner(id, run_id, Self::locked_owner(tx, id)?)
    }

    /// Inside a write: lock workflow `id`'s row for the rest of the
    /// transaction and read its `(run_id, status)` (`None`: it is gone).
    ///
    /// Writes to one workflow find its row by the key alone, like this, and
    /// check the rest here or on the row they locked: with a status beside
    /// the key (`status = 'running'`), stale statistics (taken when little
    /// was running, or none on a new database) can make the planner read
    /// an index of every running or waiting workflow to find one.
    fn locked_owner(tx: &mut Tx<'_>, id: &str) -> Result<Option<(String, String)>, StoreError> {
        owner(tx.query_opt(
            "SELECT run_id, status FROM workflows WHERE id = $1 FOR UPDATE",
            &[&id],
        )?)
    }

    /// Whether `(run_id, status)` is `run_id` running.
    fn is_running_in(owner: Option<&(String, String)>, run_id: &str) -> bool {
        owner.is_some_and(|(owner, status)| owner == run_id && status == "running")
    }

    /// Inside a write: workflow `id`'s `(run_id, status)` as they are now
    /// (`None`: it is gone), unlocked: what a write that matched nothing
    /// reads to say why. An owner that changed since cannot be `run_id`
    /// again, so the answer stands.
    fn owner_now(tx: &mut Tx<'_>, id: &str) -> Result<Option<(String, String)>, StoreError> {
        owner(tx.query_opt("SELECT run_id, status FROM workflows WHERE id = $1", &[&id])?)
    }

    /// Inside a write: the conflict for a claim of workflow `id` that
    /// matched nothing.
    fn lost_ownership(tx: &mut Tx<'_>, id: &str) -> Result<StoreError, StoreError> {
        Ok(super::lost_ownership(id, Self::owner_now(tx, id)?))
    }

    /// Inside a write, or as one alone: record how step `key` ended (see
    /// [`CheckpointStore::finish_step`]), fenced as [`Self::check_owner`]
    /// fences, in one statement ([`FINISH_STEP`]). Only a finish that
    /// changed nothing reads why.
    fn finish_step_in(
        tx: &mut Tx<'_>,
        workflow_id: &str,
        run_id: &str,
        key: &StepKey,
        outcome: &Outcome,
    ) -> Result<(), StoreError> {
        let (status, output, error, code) = split_outcome(outcome);
        let (error, code) = (error.map(storable), code.map(storable));
        let updated = tx.execute(
            FINISH_STEP,
            &[
                &workflow_id,
                &key.as_str(),
                &run_id,
                &status.as_str(),
                &output,
                &error,
                &now_millis(),
                &code,
            ],
        )?;
        if updated == 1 {
            return Ok(());
        }
        super::check_owner(workflow_id, run_id, Self::owner_now(tx, workflow_id)?)?;
        Err(StoreError::Backend(format!(
            "step {key} of workflow {workflow_id} is not running in run {run_id}"
        )))
    }

    /// Whether step `key` is as `run_id` left it when it finished it: the
    /// test of a finish whose commit is in doubt.
    fn finished_by(
        tx: &mut Tx<'_>,
        workflow_id: &str,
        run_id: &str,
        key: &StepKey,
    ) -> Result<Option<()>, StoreError> {
        let row = tx.query_opt(
            "SELECT 1 FROM steps
             WHERE workflow_id = $1 AND step_key = $2 AND run_id = $3 AND status <> 'running'",
            &[&workflow_id, &key.as_str(), &run_id],
        )?;
        Ok(row.map(|_| ()))
    }

    /// Inside a write: how step `key` of `workflow_id` changes something
    /// else in the same transaction.
    fn apply_effect(
        tx: &mut Tx<'_>,
        workflow_id: &str,
        key: &StepKey,
        effect: &StepEffect,
    ) -> Result<(), StoreError> {
        match effect {
            StepEffect::TakeSignal { seq } => {
                let taken = tx.execute(
                    "UPDATE signals SET taken_by = $3
                     WHERE seq = $1 AND workflow_id = $2 AND taken_by IS NULL",
                    &[seq, &workflow_id, &key.as_str()],
                )?;
                if taken == 0 {
                    return Err(StoreError::Backend(format!(
                        "signal {seq} of workflow {workflow_id} was taken already"
                    )));
                }
            }
            StepEffect::StartChild(child) => Self::insert_child(tx, workflow_id, child)?,
            StepEffect::Publish { key: event, value } => {
                tx.execute(
                    "INSERT INTO published_events (workflow_id, key, value, step_key, published_at)
                     VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (workflow_id, key) DO UPDATE SET value = excluded.value,
                         step_key = excluded.step_key, published_at = excluded.published_at",
                    &[&workflow_id, event, value, &key.as_str(), &now_millis()],
                )?;
            }
        }
        Ok(())
    }

    /// Inside a write: workflow `id` ended; the workflows waiting for it
    /// (its parent, or a fork of its parent) look at once.
    fn wake_waiters(tx: &mut Tx<'_>, id: &str, now: Millis) -> Result<(), StoreError> {
        tx.execute(
            "UPDATE workflows SET wake_at = $2 WHERE status = 'waiting' AND waiting_for = $1",
            &[&WaitingFor::Child(id.to_owned()).stored(), &now],
        )?;
        Ok(())
    }

    /// Inside a write: queue `child` of `parent`.
    fn insert_child(tx: &mut Tx<'_>, parent: &str, child: &ChildStart) -> Result<(), StoreError> {
        let inserted = tx.execute(
            "INSERT INTO workflows
                 (id, component_sha256, input, status, run_id, owner_pid, owner_host,
                  lease_expires_at, created_at, updated_at, grants, queue, deployment, parent_id)
             VALUES ($1, $2, $3, 'queued', '', 0, '', 0, $4, $4, $5, $6, $7, $8)
             ON CONFLICT (id) DO NOTHING",
            &[
                &child.id,
                &child.component_sha256,
                &child.input,
                &now_millis(),
                &child.grants,
                &child.queue,
                &child.deployment,
                &parent,
            ],
        )?;
        if inserted == 0 {
            return Err(StoreError::WorkflowExists {
                id: child.id.clone(),
            });
        }
        Ok(())
    }

    /// Inside a write: the signal `signal_id` of workflow `workflow_id`.
    fn signal_by_id(
        tx: &mut Tx<'_>,
        workflow_id: &str,
        signal_id: &str,
    ) -> Result<Option<SignalRecord>, StoreError> {
        tx.query_opt(
            &format!(
                "SELECT {SIGNAL_COLUMNS} FROM signals WHERE workflow_id = $1 AND signal_id = $2"
            ),
            &[&workflow_id, &signal_id],
        )?
        .map(|row| signal_from_row(&row))
        .transpose()
    }

    /// The workflow `id`, read in `session`.
    fn workflow_in<C: postgres::GenericClient>(
        session: &mut Session<'_, C>,
        id: &str,
    ) -> Result<Option<WorkflowRecord>, StoreError> {
        session
            .query_opt(
                &format!("SELECT {WORKFLOW_COLUMNS} FROM workflows WHERE id = $1"),
                &[&id],
            )?
            .map(|row| workflow_from_row(&row))
            .transpose()
    }
}

/// The schema's version, or `None` when it has no tables yet; refuses a
/// version newer than this build knows.
fn stored_version<C: postgres::GenericClient>(
    session: &mut Session<'_, C>,
) -> Result<Option<i64>, StoreError> {
    // A plain query of the catalog, under this statement's snapshot:
    // `to_regclass` would look in caches that may not have heard yet of the
    // table another process created while this one waited for the lock.
    let exists: bool = get(
        &session.query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class c
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                 WHERE c.relname = 'durable_schema' AND n.nspname = current_schema())",
            &[],
        )?,
        0,
    )?;
    if !exists {
        return Ok(None);
    }
    let row = session.query_opt("SELECT version FROM durable_schema", &[])?;
    let Some(row) = row else {
        return Err(StoreError::Backend(
            "the table durable_schema has lost its version row".to_owned(),
        ));
    };
    let found: i64 = get(&row, 0)?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    Ok(Some(found))
}

fn insert_event(
    tx: &mut Tx<'_>,
    workflow_id: &str,
    run_id: &str,
    kind: &str,
    detail: &str,
    at: Millis,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO workflow_events (workflow_id, at, kind, detail, run_id)
         VALUES ($1, $2, $3, $4, $5)",
        &[&workflow_id, &at, &kind, &detail, &run_id],
    )?;
    Ok(())
}

/// Append `log` to workflow `id`'s log, dropping the lines that fall out of
/// the last [`LOG_LINES_KEPT`]. The caller holds the workflow's row lock
/// (its ownership check), so the numbering is not raced.
fn insert_log(tx: &mut Tx<'_>, id: &str, log: &[LogLine]) -> Result<(), StoreError> {
    if log.is_empty() {
        return Ok(());
    }
    let last: i64 = get(
        &tx.query_one(
            "SELECT coalesce(max(seq), 0) FROM workflow_logs WHERE workflow_id = $1",
            &[&id],
        )?,
        0,
    )?;
    let mut seq = last;
    for line in log {
        seq += 1;
        tx.execute(
            "INSERT INTO workflow_logs (workflow_id, seq, at, stream, step_key, line)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &id,
                &seq,
                &line.at,
                &line.stream.as_str(),
                &line.step.as_ref().map(StepKey::as_str),
                &storable(&line.text),
            ],
        )?;
    }
    if seq > LOG_LINES_KEPT {
        tx.execute(
            "DELETE FROM workflow_logs WHERE workflow_id = $1 AND seq <= $2",
            &[&id, &(seq - LOG_LINES_KEPT)],
        )?;
    }
    Ok(())
}

impl CheckpointStore for PostgresStore {
    fn reopen(&self) -> Result<Box<dyn CheckpointStore>, StoreError> {
        Ok(Box::new(Self::connect(self.target.clone())?))
    }

    fn workflow(&self, id: &str) -> Result<Option<WorkflowRecord>, StoreError> {
        self.read(|s| Self::workflow_in(s, id))
    }

    fn steps(&self, workflow_id: &str) -> Result<Vec<StepRecord>, StoreError> {
        self.steps_page(workflow_id, 0, u32::MAX)
    }

    fn steps_page(
        &self,
        workflow_id: &str,
        after: u32,
        limit: u32,
    ) -> Result<Vec<StepRecord>, StoreError> {
        self.read(|s| {
            s.query(
                &steps_page_sql(),
                &[&workflow_id, &i64::from(after), &i64::from(limit)],
            )?
            .iter()
            .map(step_from_row)
            .collect()
        })
    }

    fn attempts(&self, workflow_id: &str) -> Result<Vec<AttemptRecord>, StoreError> {
        self.read(|s| {
            s.query(
                "SELECT step_key, attempt, error, run_id, ended_at, interrupted, backoff_ms
                 FROM step_attempts WHERE workflow_id = $1 ORDER BY step_key, attempt",
                &[&workflow_id],
            )?
            .iter()
            .map(|row| {
                Ok(AttemptRecord {
                    key: StepKey::from_stored(get(row, 0)?),
                    attempt: get_u32(row, 1)?,
                    error: get(row, 2)?,
                    run_id: get(row, 3)?,
                    ended_at: get(row, 4)?,
                    interrupted: get(row, 5)?,
                    backoff_ms: get(row, 6)?,
                })
            })
            .collect()
        })
    }

    fn events(&self, workflow_id: &str) -> Result<Vec<WorkflowEvent>, StoreError> {
        self.read(|s| {
            s.query(
                "SELECT at, kind, detail, run_id FROM workflow_events
                 WHERE workflow_id = $1 ORDER BY at, seq",
                &[&workflow_id],
            )?
            .iter()
            .map(|row| {
                Ok(WorkflowEvent {
                    at: get(row, 0)?,
                    kind: get(row, 1)?,
                    detail: get(row, 2)?,
                    run_id: get(row, 3)?,
                })
            })
            .collect()
        })
    }

    fn create_workflow(&self, workflow: &NewWorkflow<'_>) -> Result<(), StoreError> {
        let now = now_millis();
        let claim = workflow.claim;
        let owner = claim.owner;
        self.write(|tx| {
            let inserted = tx.execute(
                "INSERT INTO workflows
                     (id, component_sha256, input, status, run_id, owner_pid, owner_host,
                      lease_expires_at, created_at, updated_at, owner_boot, owner_pid_ns,
                      owner_started, grants)
                 VALUES ($1, $2, $3, 'running', $4, $5, $6, $7, $8, $8, $9, $10, $11, $12)
                 ON CONFLICT (id) DO NOTHING",
                &[
                    &workflow.id,
                    &workflow.component_sha256,
                    &workflow.input,
                    &claim.run_id,
                    &i64::from(owner.pid),
                    &owner.host,
                    &claim.lease_until,
                    &now,
                    &owner.boot_id,
                    &owner.pid_ns,
                    &owner.started,
                    &workflow.grants,
                ],
            )?;
            if inserted == 0 {
                return Err(StoreError::WorkflowExists {
                    id: workflow.id.to_owned(),
                });
            }
            if let Some(bytes) = workflow.component {
                tx.execute(
                    "INSERT INTO components (sha256, bytes, created_at) VALUES ($1, $2, $3)
                     ON CONFLICT (sha256) DO NOTHING",
                    &[&workflow.component_sha256, &bytes, &now],
                )?;
            }
            Ok(())
        })
    }

    fn claim_workflow(&self, id: &str, takeover: &Takeover<'_>) -> Result<(), StoreError> {
        let now = now_millis();
        let claim = takeover.claim;
        let owner = claim.owner;
        self.write(|tx| {
            let claimed = tx.execute(
                "UPDATE workflows SET run_id = $3, owner_pid = $4, owner_host = $5,
                     lease_expires_at = $6, component_sha256 = $7, updated_at = $8,
                     owner_boot = $9, owner_pid_ns = $10, owner_started = $11,
                     takeovers = $12, progress_mark = $13, status = 'running', wake_at = NULL
                 WHERE id = $1 AND run_id = $2 AND lease_expires_at = $14
                   AND component_sha256 = $15
                   AND status IN ('running', 'queued', 'sleeping', 'waiting')",
                &[
                    &id,
                    &takeover.previous_run,
                    &claim.run_id,
                    &i64::from(owner.pid),
                    &owner.host,
                    &claim.lease_until,
                    &takeover.component_sha256,
                    &now,
                    &owner.boot_id,
                    &owner.pid_ns,
                    &owner.started,
                    &i64::from(takeover.takeovers),
                    &i64::from(takeover.progress_mark),
                    &takeover.observed_lease,
                    &takeover.observed_component,
                ],
            )?;
            if claimed == 0 {
                return Err(Self::lost_ownership(tx, id)?);
            }
            for (kind, detail) in takeover.events {
                insert_event(tx, id, claim.run_id, kind, detail, now)?;
            }
            Ok(())
        })
    }

    fn reopen_workflow(&self, id: &str, reopen: &Reopen<'_>) -> Result<(), StoreError> {
        let now = now_millis();
        let claim = reopen.claim;
        let owner = claim.owner;
        self.write(|tx| {
            // By its key alone (see `locked_owner`).
            let reopened = tx.execute(
                "WITH found AS (SELECT * FROM workflows WHERE id = $1 FOR UPDATE)
                 UPDATE workflows SET status = 'running', output = NULL, error = NULL,
                     error_code = NULL,
                     run_id = $3, owner_pid = $4, owner_host = $5, lease_expires_at = $6,
                     updated_at = $7, owner_boot = $8, owner_pid_ns = $9, owner_started = $10,
                     takeovers = 0, component_sha256 = $11,
                     grants = coalesce($12, grants)
                 WHERE id = $1 AND EXISTS (SELECT 1 FROM found
                     WHERE run_id = $2 AND status IN ('failed', 'suspended'))",
                &[
                    &id,
                    &reopen.expected_run,
                    &claim.run_id,
                    &i64::from(owner.pid),
                    &owner.host,
                    &claim.lease_until,
                    &now,
                    &owner.boot_id,
                    &owner.pid_ns,
                    &owner.started,
                    &reopen.component_sha256,
                    &reopen.grants,
                ],
            )?;
            if reopened == 0 {
                return Err(Self::lost_ownership(tx, id)?);
            }
            insert_event(tx, id, claim.run_id, "resumed", reopen.detail, now)
        })
    }

    fn renew_lease(
        &self,
        id: &str,
        run_id: &str,
        lease_until: Millis,
    ) -> Result<LeaseRenewal, StoreError> {
        self.write(|tx| renew_one(tx, id, run_id, lease_until))
    }

    fn request_cancel(&self, id: &str) -> Result<WorkflowRecord, StoreError> {
        let now = now_millis();
        let workflow = self.write(|tx| {
            // By its key alone (see `locked_owner`).
            let running = tx
                .query_opt(
                    "SELECT status = 'running' AND NOT cancel_requested FROM workflows
                     WHERE id = $1 FOR UPDATE",
                    &[&id],
                )?
                .map(|row| get::<bool>(&row, 0))
                .transpose()?;
            if running == Some(true) {
                tx.execute(
                    "UPDATE workflows SET cancel_requested = TRUE WHERE id = $1",
                    &[&id],
                )?;
                insert_event(tx, id, "", "cancel_requested", "durable-host cancel", now)?;
            }
            Self::workflow_in(tx, id)
        })?;
        workflow.ok_or_else(|| StoreError::UnknownWorkflow { id: id.to_owned() })
    }

    fn list_workflows(&self, query: &ListQuery) -> Result<Vec<WorkflowSummary>, StoreError> {
        let status = query.status.map(WorkflowStatus::as_str);
        let limit = query.limit.map(i64::from);
        self.read(|s| {
            s.query(
                &format!(
                    "SELECT {WORKFLOW_COLUMNS}, c.steps, c.completed, c.failed, c.running
                     FROM workflows w
                     CROSS JOIN LATERAL (
                         SELECT count(*) AS steps,
                                count(*) FILTER (WHERE s.status = 'completed') AS completed,
                                count(*) FILTER (WHERE s.status = 'failed') AS failed,
                                count(*) FILTER (WHERE s.status = 'running') AS running
                         FROM steps s WHERE s.workflow_id = w.id) c
                     WHERE ($1::TEXT IS NULL OR w.status = $1)
                       AND ($4::TEXT IS NULL OR strpos(w.id, $4) > 0)
                       AND ($2::TEXT IS NULL OR EXISTS (
                            SELECT 1 FROM workflows a WHERE a.id = $2
                                AND (w.created_at < a.created_at
                                     OR (w.created_at = a.created_at AND w.id > a.id))))
                     ORDER BY w.created_at DESC, w.id
                     LIMIT $3"
                ),
                &[&status, &query.after, &limit, &query.id_contains],
            )?
            .iter()
            .map(|row| {
                Ok(WorkflowSummary {
                    workflow: workflow_from_row(row)?,
                    steps: get_u32(row, WORKFLOW_COLUMN_COUNT)?,
                    completed_steps: get_u32(row, WORKFLOW_COLUMN_COUNT + 1)?,
                    failed_steps: get_u32(row, WORKFLOW_COLUMN_COUNT + 2)?,
                    running_steps: get_u32(row, WORKFLOW_COLUMN_COUNT + 3)?,
                })
            })
            .collect()
        })
    }

    fn put_component(&self, sha256: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let now = now_millis();
        self.write(|tx| {
            tx.execute(
                "INSERT INTO components (sha256, bytes, created_at) VALUES ($1, $2, $3)
                 ON CONFLICT (sha256) DO NOTHING",
                &[&sha256, &bytes, &now],
            )?;
            Ok(())
        })
    }

    fn component(&self, sha256: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.read(|s| {
            s.query_opt("SELECT bytes FROM components WHERE sha256 = $1", &[&sha256])?
                .map(|row| get(&row, 0))
                .transpose()
        })
    }

    fn deploy(&self, name: &str, sha256: &str, grants: &str) -> Result<Deployment, StoreError> {
        let now = now_millis();
        self.write(|tx| {
            // Two deploys of a name at once would both count the same next
            // version: they take turns (readers are not blocked).
            tx.batch("LOCK TABLE deployments IN SHARE ROW EXCLUSIVE MODE")?;
            let version: i64 = get(
                &tx.query_one(
                    "SELECT coalesce(max(version), 0) + 1 FROM deployments WHERE name = $1",
                    &[&name],
                )?,
                0,
            )?;
            tx.execute(
                "INSERT INTO deployments (name, version, sha256, grants, created_at)
                 VALUES ($1, $2, $3, $4, $5)",
                &[&name, &version, &sha256, &grants, &now],
            )?;
            Ok(Deployment {
                name: name.to_owned(),
                version: u32::try_from(version).map_err(|_| {
                    StoreError::Backend(format!("deployment {name} has too many versions"))
                })?,
                sha256: sha256.to_owned(),
                grants: grants.to_owned(),
                created_at: now,
            })
        })
    }

    fn deployments(&self, name: Option<&str>) -> Result<Vec<Deployment>, StoreError> {
        self.read(|s| {
            s.query(
                "SELECT name, version, sha256, grants, created_at FROM deployments
                 WHERE $1::TEXT IS NULL OR name = $1 ORDER BY name, version DESC",
                &[&name],
            )?
            .iter()
            .map(|row| {
                Ok(Deployment {
                    name: get(row, 0)?,
                    version: get_u32(row, 1)?,
                    sha256: get(row, 2)?,
                    grants: get(row, 3)?,
                    created_at: get(row, 4)?,
                })
            })
            .collect()
        })
    }

    fn fork_workflow(&self, fork: &Fork<'_>) -> Result<WorkflowRecord, StoreError> {
        let now = now_millis();
        self.write(|tx| {
            let inserted = tx.execute(
                "INSERT INTO workflows
                     (id, component_sha256, input, status, run_id, owner_pid, owner_host,
                      lease_expires_at, created_at, updated_at, grants, queue, deployment)
                 SELECT $2::TEXT, $3::TEXT, input, 'queued', '', 0, '', 0, $4::BIGINT,
                        $4::BIGINT, grants, queue, coalesce($5::TEXT, deployment)
                 FROM workflows WHERE id = $1
                 ON CONFLICT (id) DO NOTHING",
                &[
                    &fork.source,
                    &fork.id,
                    &fork.component_sha256,
                    &now,
                    &fork.deployment,
                ],
            )?;
            if inserted == 0 {
                let source_exists = tx
                    .query_opt("SELECT 1 FROM workflows WHERE id = $1", &[&fork.source])?
                    .is_some();
                return Err(if source_exists {
                    StoreError::WorkflowExists {
                        id: fork.id.to_owned(),
                    }
                } else {
                    StoreError::UnknownWorkflow {
                        id: fork.source.to_owned(),
                    }
                });
            }
            tx.execute(
                "INSERT INTO steps (workflow_id, step_key, sequence, name, status, output_json,
                     error, attempts, run_id, started_at, finished_at, failures, error_code,
                     input_fingerprint)
                 SELECT $2::TEXT, step_key, sequence, name, status, output_json, error, attempts,
                     run_id, started_at, finished_at, failures, error_code, input_fingerprint
                 FROM steps WHERE workflow_id = $1 AND sequence <= $3 AND status <> 'running'",
                &[&fork.source, &fork.id, &i64::from(fork.keep_through)],
            )?;
            // What the copied steps published stands for the fork too: a
            // `durable.event:KEY` step's value is the event's value.
            tx.execute(
                "INSERT INTO published_events (workflow_id, key, value, step_key, published_at)
                 SELECT workflow_id, substr(name, 15), output_json, step_key, finished_at
                 FROM steps s
                 WHERE workflow_id = $1 AND name LIKE 'durable.event:%' AND status = 'completed'
                   AND sequence = (SELECT max(sequence) FROM steps
                                   WHERE workflow_id = $1 AND name = s.name
                                     AND status = 'completed')",
                &[&fork.id],
            )?;
            insert_event(tx, fork.id, "", "forked", fork.detail, now)?;
            Self::workflow_in(tx, fork.id)?.ok_or_else(|| {
                StoreError::Backend(format!("the fork {} vanished as it was made", fork.id))
            })
        })
    }

    fn upgrade_workflow(&self, upgrade: &Upgrade<'_>) -> Result<bool, StoreError> {
        let now = now_millis();
        let observed = upgrade.observed;
        self.write(|tx| {
            // Hold the row while counting its history: a run that still
            // writes steps (its lease lapsed) waits, or has written them.
            tx.query_opt(
                "SELECT 1 FROM workflows WHERE id = $1 FOR UPDATE",
                &[&observed.id],
            )?;
            let steps: i64 = get(
                &tx.query_one(
                    "SELECT count(*) FROM steps WHERE workflow_id = $1",
                    &[&observed.id],
                )?,
                0,
            )?;
            if steps != upgrade.verified_steps as i64 {
                return Ok(false);
            }
            let switched = tx.execute(
                "WITH found AS (SELECT * FROM workflows WHERE id = $1 FOR UPDATE)
                 UPDATE workflows SET component_sha256 = $3, updated_at = $4,
                     run_id = coalesce($8, run_id)
                 WHERE id = $1 AND EXISTS (SELECT 1 FROM found
                     WHERE component_sha256 = $2 AND status = $5 AND run_id = $6
                       AND lease_expires_at = $7)",
                &[
                    &observed.id,
                    &observed.component_sha256,
                    &upgrade.to_sha256,
                    &now,
                    &observed.status.as_str(),
                    &observed.run_id,
                    &observed.lease_expires_at,
                    &upgrade.new_run,
                ],
            )?;
            if switched == 1 {
                // The update matched the observed run: it is still the owner.
                let (id, run_id) = (&observed.id, &observed.run_id);
                insert_event(tx, id, run_id, "upgraded", upgrade.detail, now)?;
            }
            Ok(switched == 1)
        })
    }

    fn suspend_unclaimed(
        &self,
        observed: &WorkflowRecord,
        reason: &str,
    ) -> Result<bool, StoreError> {
        let now = now_millis();
        self.write(|tx| {
            // By its key alone (see `locked_owner`).
            let suspended = tx.execute(
                "WITH found AS (SELECT * FROM workflows WHERE id = $1 FOR UPDATE)
                 UPDATE workflows SET status = 'suspended', error = $5, error_code = NULL,
                     output = NULL, wake_at = NULL, lease_expires_at = 0, updated_at = $6
                 WHERE id = $1 AND EXISTS (SELECT 1 FROM found
                     WHERE status = $2 AND run_id = $3 AND lease_expires_at = $4
                       AND component_sha256 = $7)",
                &[
                    &observed.id,
                    &observed.status.as_str(),
                    &observed.run_id,
                    &observed.lease_expires_at,
                    &reason,
                    &now,
                    &observed.component_sha256,
                ],
            )?;
            if suspended == 1 {
                insert_event(tx, &observed.id, &observed.run_id, "suspended", reason, now)?;
            }
            Ok(suspended == 1)
        })
    }

    fn queue_depths(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.read(|s| {
            s.query(
                "SELECT queue, count(*) FROM workflows WHERE status = 'queued'
                 GROUP BY queue ORDER BY queue",
                &[],
            )?
            .iter()
            .map(|row| Ok((get(row, 0)?, get::<i64>(row, 1)?.max(0) as u64)))
            .collect()
        })
    }

    fn status_counts(&self) -> Result<Vec<(WorkflowStatus, u64)>, StoreError> {
        self.read(|s| {
            let rows = s.query(
                "SELECT status, count(*) FROM workflows GROUP BY status ORDER BY status",
                &[],
            )?;
            let mut counts = Vec::new();
            for row in &rows {
                let status: String = get(row, 0)?;
                let count: i64 = get(row, 1)?;
                // A status this binary does not know (a newer schema's) is
                // left out rather than failing the whole count.
                if let Some(status) = WorkflowStatus::parse(&status) {
                    counts.push((status, count.max(0) as u64));
                }
            }
            Ok(counts)
        })
    }

    fn add_schedule(&self, schedule: &ScheduleRecord) -> Result<bool, StoreError> {
        self.write(|tx| {
            let added = tx.execute(
                "INSERT INTO schedules (name, cron, deployment, input, queue, next_tick, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (name) DO NOTHING",
                &[
                    &schedule.name,
                    &schedule.cron,
                    &schedule.deployment,
                    &schedule.input,
                    &schedule.queue,
                    &schedule.next_tick,
                    &schedule.created_at,
                ],
            )?;
            Ok(added == 1)
        })
    }

    fn remove_schedule(&self, name: &str) -> Result<bool, StoreError> {
        self.write(|tx| Ok(tx.execute("DELETE FROM schedules WHERE name = $1", &[&name])? == 1))
    }

    fn schedules(&self) -> Result<Vec<ScheduleRecord>, StoreError> {
        self.read(|s| {
            s.query(
                "SELECT name, cron, deployment, input, queue, next_tick, created_at
                 FROM schedules ORDER BY next_tick, name",
                &[],
            )?
            .iter()
            .map(|row| {
                Ok(ScheduleRecord {
                    name: get(row, 0)?,
                    cron: get(row, 1)?,
                    deployment: get(row, 2)?,
                    input: get(row, 3)?,
                    queue: get(row, 4)?,
                    next_tick: get(row, 5)?,
                    created_at: get(row, 6)?,
                })
            })
            .collect()
        })
    }

    fn advance_schedule(&self, name: &str, from: Millis, to: Millis) -> Result<bool, StoreError> {
        self.write(|tx| {
            let moved = tx.execute(
                "UPDATE schedules SET next_tick = $3 WHERE name = $1 AND next_tick = $2",
                &[&name, &from, &to],
            )?;
            Ok(moved == 1)
        })
    }

    fn enqueue_workflow(&self, workflow: &QueuedWorkflow<'_>) -> Result<Enqueued, StoreError> {
        let now = now_millis();
        self.write(|tx| {
            let inserted = tx.execute(
                "INSERT INTO workflows
                     (id, component_sha256, input, status, run_id, owner_pid, owner_host,
                      lease_expires_at, created_at, updated_at, grants, queue, deployment)
                 VALUES ($1, $2, $3, 'queued', '', 0, '', 0, $4, $4, $5, $6, $7)
                 ON CONFLICT (id) DO NOTHING",
                &[
                    &workflow.id,
                    &workflow.component_sha256,
                    &workflow.input,
                    &now,
                    &workflow.grants,
                    &workflow.queue,
                    &workflow.deployment,
                ],
            )?;
            let record = Self::workflow_in(tx, workflow.id)?.ok_or_else(|| {
                StoreError::Backend(format!(
                    "workflow {} vanished as it was queued",
                    workflow.id
                ))
            })?;
            Ok(if inserted == 1 {
                Enqueued::Created(Box::new(record))
            } else {
                Enqueued::Existing(Box::new(record))
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
        // Taken-over and due ones before new ones, oldest first within
        // each, so that work already begun finishes first. `SKIP LOCKED`:
        // rows another host is claiming this instant are left to it (its
        // claim is the fence; this only spares it a lost race). `$2` is
        // how many to read; `$3` the time.
        let kinds = [
            "status = 'running' AND lease_expires_at < $3 AND queue = $1
             ORDER BY lease_expires_at, id",
            "status IN ('sleeping', 'waiting') AND wake_at <= $3 AND queue = $1
             ORDER BY wake_at, id",
        ];
        let reserved_until = now + RESERVATION_MS;
        let wanted = |room: usize| (room + skip.len()) as i64;
        self.write(|tx| {
            let mut ready = Vec::new();
            for condition in kinds {
                let room = limit as usize - ready.len();
                if room == 0 {
                    return Ok(ready);
                }
                let sql = format!(
                    "SELECT {WORKFLOW_COLUMNS} FROM workflows WHERE {condition}
                     LIMIT $2 FOR UPDATE SKIP LOCKED"
                );
                for row in &tx.query(&sql, &[&queue, &wanted(room), &now])? {
                    let workflow = workflow_from_row(row)?;
                    if !skip.contains(&workflow.id) && ready.len() < limit as usize {
                        ready.push(workflow);
                    }
                }
            }
            let room = limit as usize - ready.len();
            if room == 0 {
                return Ok(ready);
            }
            // Queued ones are reserved for this caller (see the trait):
            // workers woken by the same notification take different ones.
            // The caller's own runs in flight hold theirs, or have claimed.
            let rows = tx.query(
                &format!(
                    "UPDATE workflows SET lease_expires_at = $4
                     WHERE id IN (
                         SELECT id FROM workflows
                         WHERE status = 'queued' AND queue = $1 AND lease_expires_at < $3
                         ORDER BY created_at, id LIMIT $2 FOR UPDATE SKIP LOCKED)
                     RETURNING {WORKFLOW_COLUMNS}"
                ),
                &[&queue, &(room as i64), &now, &reserved_until],
            )?;
            let mut queued = rows
                .iter()
                .map(workflow_from_row)
                .filter(|workflow| workflow.as_ref().map_or(true, |w| !skip.contains(&w.id)))
                .collect::<Result<Vec<_>, _>>()?;
            queued.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
            ready.extend(queued);
            Ok(ready)
        })
    }

    fn running_on_host(
        &self,
        queue: &str,
        host: &str,
        boot_id: &str,
        now: Millis,
        limit: u32,
    ) -> Result<Vec<WorkflowRecord>, StoreError> {
        self.read(|s| {
            s.query(
                &format!(
                    "SELECT {WORKFLOW_COLUMNS} FROM workflows
                     WHERE status = 'running' AND lease_expires_at >= $4 AND queue = $1
                       AND owner_host = $2 AND owner_boot = $3
                     ORDER BY lease_expires_at, id LIMIT $5"
                ),
                &[&queue, &host, &boot_id, &now, &i64::from(limit)],
            )?
            .iter()
            .map(workflow_from_row)
            .collect()
        })
    }

    fn next_wake(&self, queue: &str) -> Result<Option<Millis>, StoreError> {
        self.read(|s| {
            get(
                &s.query_one(
                    "SELECT min(wake_at) FROM workflows
                     WHERE status IN ('sleeping', 'waiting') AND queue = $1",
                    &[&queue],
                )?,
                0,
            )
        })
    }

    fn next_lease_expiry(&self, queue: &str, now: Millis) -> Result<Option<Millis>, StoreError> {
        self.read(|s| {
            get(
                &s.query_one(
                    "SELECT min(lease_expires_at) FROM workflows
                     WHERE status = 'running' AND queue = $1 AND lease_expires_at > $2",
                    &[&queue, &now],
                )?,
                0,
            )
        })
    }

    fn server_clock(&self) -> Result<Option<Millis>, StoreError> {
        self.read(|s| {
            let now = "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT";
            Ok(Some(get(&s.query_one(now, &[])?, 0)?))
        })
    }

    fn unload_workflow(
        &self,
        id: &str,
        run_id: &str,
        unload: &Unload<'_>,
    ) -> Result<bool, StoreError> {
        let status = match unload.waiting_for {
            Some(_) => WorkflowStatus::Waiting,
            None => WorkflowStatus::Sleeping,
        };
        let waiting_for = unload.waiting_for.map(WaitingFor::stored);
        let now = now_millis();
        self.write(|tx| {
            Self::check_owner(tx, id, run_id)?;
            // A cancellation asked for since the run last read it: unloading
            // would leave it to nobody. The run ends the workflow instead.
            let unloaded = tx.execute(
                "UPDATE workflows SET status = $2, wake_at = $3, lease_expires_at = 0,
                     updated_at = $4, takeovers = 0, waiting_for = $5
                 WHERE id = $1 AND (NOT cancel_requested OR $6)",
                &[
                    &id,
                    &status.as_str(),
                    &unload.wake_at,
                    &now,
                    &waiting_for,
                    &unload.despite_cancel,
                ],
            )?;
            if unloaded == 0 {
                return Ok(false);
            }
            // What it waits for came after this run last looked (a signal
            // or a child's end only wakes workflows already waiting):
            // resume at once.
            if what_came(tx, id, unload.waiting_for)? {
                tx.execute(
                    "UPDATE workflows SET wake_at = $2 WHERE id = $1",
                    &[&id, &now],
                )?;
            }
            Ok(true)
        })
    }

    fn children(&self, id: &str) -> Result<Vec<WorkflowRecord>, StoreError> {
        self.read(|s| {
            s.query(
                &format!(
                    "SELECT {WORKFLOW_COLUMNS} FROM workflows WHERE parent_id = $1
                     ORDER BY created_at, id"
                ),
                &[&id],
            )?
            .iter()
            .map(workflow_from_row)
            .collect()
        })
    }

    fn cancel_idle_workflow(
        &self,
        id: &str,
        status: WorkflowStatus,
        reason: &str,
    ) -> Result<bool, StoreError> {
        let now = now_millis();
        self.write(|tx| {
            // By its key alone (see `locked_owner`).
            let cancelled = tx.execute(
                "WITH found AS (SELECT * FROM workflows WHERE id = $1 FOR UPDATE)
                 UPDATE workflows SET status = 'cancelled', error = $3, error_code = NULL,
                     output = NULL, wake_at = NULL, cancel_requested = TRUE, updated_at = $4
                 WHERE id = $1 AND EXISTS (SELECT 1 FROM found
                     WHERE status = $2
                       AND status IN ('queued', 'sleeping', 'waiting', 'suspended'))",
                &[&id, &status.as_str(), &reason, &now],
            )?;
            if cancelled == 1 {
                insert_event(tx, id, "", "cancelled", &format!("while {status}"), now)?;
                Self::wake_waiters(tx, id, now)?;
            }
            Ok(cancelled == 1)
        })
    }

    fn release_workflow(&self, id: &str, run_id: &str) -> Result<(), StoreError> {
        self.write(|tx| {
            if Self::is_running_in(Self::locked_owner(tx, id)?.as_ref(), run_id) {
                tx.execute(
                    "UPDATE workflows SET lease_expires_at = 0, takeovers = 0 WHERE id = $1",
                    &[&id],
                )?;
            }
            Ok(())
        })
    }

    fn renew_leases(
        &self,
        runs: &[(String, String)],
        lease_until: Millis,
    ) -> Result<Vec<LeaseRenewal>, StoreError> {
        let ids: Vec<&str> = runs.iter().map(|(id, _)| id.as_str()).collect();
        let run_ids: Vec<&str> = runs.iter().map(|(_, run_id)| run_id.as_str()).collect();
        // One statement for the whole heartbeat, rather than two round trips
        // per run; answers in the order asked.
        self.write(|tx| {
            tx.query(
                "WITH wanted AS (
                     SELECT * FROM unnest($1::TEXT[], $2::TEXT[]) WITH ORDINALITY
                         AS t (id, run_id, n)
                 ), renewed AS (
                     UPDATE workflows w SET lease_expires_at = $3 FROM wanted
                     WHERE w.id = wanted.id AND w.run_id = wanted.run_id
                       AND w.status = 'running'
                     RETURNING w.id, w.run_id
                 )
                 SELECT EXISTS (SELECT 1 FROM renewed r
                                WHERE r.id = wanted.id AND r.run_id = wanted.run_id),
                        coalesce(w.cancel_requested, FALSE)
                 FROM wanted LEFT JOIN workflows w ON w.id = wanted.id
                 ORDER BY wanted.n",
                &[&ids, &run_ids, &lease_until],
            )?
            .iter()
            .map(|row| {
                Ok(LeaseRenewal {
                    owned: get(row, 0)?,
                    cancel_requested: get(row, 1)?,
                })
            })
            .collect()
        })
    }

    fn record_attempt(
        &self,
        workflow_id: &str,
        run_id: &str,
        key: &StepKey,
        error: &str,
        backoff_ms: i64,
    ) -> Result<(), StoreError> {
        let now = now_millis();
        let error = storable(error);
        self.write(|tx| {
            Self::check_owner(tx, workflow_id, run_id)?;
            let inserted = tx.execute(
                "INSERT INTO step_attempts
                     (workflow_id, step_key, attempt, error, run_id, ended_at, backoff_ms)
                 SELECT workflow_id, step_key, attempts, $4::TEXT, run_id, $5::BIGINT,
                        $6::BIGINT
                 FROM steps
                 WHERE workflow_id = $1 AND step_key = $2 AND run_id = $3
                   AND status = 'running' AND attempts > failures",
                &[
                    &workflow_id,
                    &key.as_str(),
                    &run_id,
                    &error,
                    &now,
                    &backoff_ms,
                ],
            )?;
            if inserted == 0 {
                return Err(StoreError::Backend(format!(
                    "step {key} of workflow {workflow_id} has no attempt in progress to record"
                )));
            }
            tx.execute(
                "UPDATE steps SET failures = failures + 1, error = $3
                 WHERE workflow_id = $1 AND step_key = $2",
                &[&workflow_id, &key.as_str(), &error],
            )?;
            Ok(())
        })
    }

    fn begin_retry(
        &self,
        workflow_id: &str,
        run_id: &str,
        key: &StepKey,
    ) -> Result<(), StoreError> {
        self.write_unflushed(|tx| {
            Self::check_owner(tx, workflow_id, run_id)?;
            tx.execute(
                "UPDATE steps SET attempts = attempts + 1
                 WHERE workflow_id = $1 AND step_key = $2 AND run_id = $3 AND status = 'running'",
                &[&workflow_id, &key.as_str(), &run_id],
            )?;
            Ok(())
        })
    }

    fn begin_steps(&self, workflow_id: &str, steps: &[StepBegin<'_>]) -> Result<(), StoreError> {
        match steps {
            [] => Ok(()),
            // The common case, one statement: a round trip.
            [step] => self.write_alone(
                |tx| begin_step(tx, workflow_id, step),
                |tx| begun(tx, workflow_id, step),
            ),
            // Branches begin together or not at all.
            steps => self.write_unflushed(|tx| {
                steps
                    .iter()
                    .try_for_each(|step| begin_step(tx, workflow_id, step))
            }),
        }
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
        if log.is_empty() && effect.is_none() {
            // The common case, one statement: a round trip and the flush.
            return self.write_alone(
                |tx| Self::finish_step_in(tx, workflow_id, run_id, key, outcome),
                |tx| Self::finished_by(tx, workflow_id, run_id, key),
            );
        }
        self.write(|tx| {
            Self::finish_step_in(tx, workflow_id, run_id, key, outcome)?;
            insert_log(tx, workflow_id, log)?;
            match effect {
                Some(effect) => Self::apply_effect(tx, workflow_id, key, effect),
                None => Ok(()),
            }
        })
    }

    fn send_signal(&self, signal: &SignalRecord) -> Result<SignalSent, StoreError> {
        self.write(|tx| {
            // The row lock orders the signal with the workflow's end and
            // with its unload (which looks for signals that came).
            let found: Option<(String, Option<String>)> = tx
                .query_opt(
                    "SELECT status, waiting_for FROM workflows WHERE id = $1 FOR UPDATE",
                    &[&signal.workflow_id],
                )?
                .map(|row| Ok::<_, StoreError>((get(&row, 0)?, get(&row, 1)?)))
                .transpose()?;
            let (status, waiting_for) = found.unzip();
            let status = match status.as_deref().map(WorkflowStatus::parse) {
                None => {
                    return Err(StoreError::UnknownWorkflow {
                        id: signal.workflow_id.clone(),
                    });
                }
                Some(Some(status)) => status,
                Some(None) => return Err(StoreError::Backend("unknown status".into())),
            };
            if let Some(sent) = Self::signal_by_id(tx, &signal.workflow_id, &signal.signal_id)? {
                return Ok(SignalSent::Duplicate(sent));
            }
            if status.is_final() {
                return Err(StoreError::WorkflowEnded {
                    id: signal.workflow_id.clone(),
                    status,
                });
            }
            let row = tx.query_one(
                &format!(
                    "INSERT INTO signals (workflow_id, name, signal_id, value, sent_at)
                     VALUES ($1, $2, $3, $4, $5) RETURNING {SIGNAL_COLUMNS}"
                ),
                &[
                    &signal.workflow_id,
                    &signal.name,
                    &signal.signal_id,
                    &signal.value,
                    &signal.sent_at,
                ],
            )?;
            // A workflow waiting for it is resumed to take it. Its row is
            // found by its key alone (see `locked_owner`): many workflows
            // may wait for a signal of the same name.
            if status == WorkflowStatus::Waiting
                && waiting_for.flatten() == Some(WaitingFor::Signal(signal.name.clone()).stored())
            {
                tx.execute(
                    "UPDATE workflows SET wake_at = $2 WHERE id = $1",
                    &[&signal.workflow_id, &signal.sent_at],
                )?;
            }
            Ok(SignalSent::Kept(signal_from_row(&row)?))
        })
    }

    fn next_signal(
        &self,
        workflow_id: &str,
        name: &str,
    ) -> Result<Option<SignalRecord>, StoreError> {
        self.read(|s| {
            s.query_opt(
                &format!(
                    "SELECT {SIGNAL_COLUMNS} FROM signals
                     WHERE workflow_id = $1 AND name = $2 AND taken_by IS NULL
                     ORDER BY seq LIMIT 1"
                ),
                &[&workflow_id, &name],
            )?
            .map(|row| signal_from_row(&row))
            .transpose()
        })
    }

    fn signals(&self, workflow_id: &str) -> Result<Vec<SignalRecord>, StoreError> {
        self.read(|s| {
            s.query(
                &format!(
                    "SELECT {SIGNAL_COLUMNS} FROM signals WHERE workflow_id = $1 ORDER BY seq"
                ),
                &[&workflow_id],
            )?
            .iter()
            .map(signal_from_row)
            .collect()
        })
    }

    fn published_events(&self, workflow_id: &str) -> Result<Vec<PublishedEvent>, StoreError> {
        self.read(|s| {
            s.query(
                "SELECT key, value, step_key, published_at FROM published_events
                 WHERE workflow_id = $1 ORDER BY key",
                &[&workflow_id],
            )?
            .iter()
            .map(|row| {
                Ok(PublishedEvent {
                    key: get(row, 0)?,
                    value: get(row, 1)?,
                    step_key: StepKey::from_stored(get(row, 2)?),
                    published_at: get(row, 3)?,
                })
            })
            .collect()
        })
    }

    fn finish_workflow(
        &self,
        id: &str,
        run_id: &str,
        end: &WorkflowEnd<'_>,
    ) -> Result<(), StoreError> {
        let (_, output, error, code) = split_outcome(end.outcome);
        let (error, code) = (error.map(storable), code.map(storable));
        let now = now_millis();
        self.write(|tx| {
            Self::check_owner(tx, id, run_id)?;
            insert_log(tx, id, end.log)?;
            let reason = error.as_deref().unwrap_or("the workflow ended");
            for key in end.interrupted_steps {
                tx.execute(
                    "INSERT INTO step_attempts
                         (workflow_id, step_key, attempt, error, run_id, ended_at, interrupted)
                     SELECT workflow_id, step_key, attempts, $3::TEXT, run_id, $4::BIGINT, TRUE
                     FROM steps
                     WHERE workflow_id = $1 AND step_key = $2 AND status = 'running'
                       AND attempts > failures
                     ON CONFLICT DO NOTHING",
                    &[&id, &key.as_str(), &reason, &now],
                )?;
            }
            if end.status == WorkflowStatus::Suspended {
                insert_event(tx, id, run_id, "suspended", reason, now)?;
            }
            tx.execute(
                "UPDATE workflows SET status = $3, output = $4, error = $5, updated_at = $6,
                     error_code = $7
                 WHERE id = $1 AND run_id = $2",
                &[
                    &id,
                    &run_id,
                    &end.status.as_str(),
                    &output,
                    &error,
                    &now,
                    &code,
                ],
            )?;
            if end.status.is_final() {
                Self::wake_waiters(tx, id, now)?;
            }
            Ok(())
        })
    }

    fn append_log(&self, id: &str, run_id: &str, log: &[LogLine]) -> Result<(), StoreError> {
        if log.is_empty() {
            return Ok(());
        }
        self.write(|tx| {
            Self::check_owner(tx, id, run_id)?;
            insert_log(tx, id, log)
        })
    }

    fn logs(&self, id: &str, after_seq: i64, limit: u32) -> Result<Vec<LogRecord>, StoreError> {
        self.read(|s| {
            s.query(
                "SELECT seq, at, stream, step_key, line FROM workflow_logs
                 WHERE workflow_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
                &[&id, &after_seq, &i64::from(limit)],
            )?
            .iter()
            .map(log_record)
            .collect()
        })
    }

    fn stream_logs(&self, id: &str, stream: LogStream) -> Result<Vec<LogRecord>, StoreError> {
        self.read(|s| {
            s.query(
                "SELECT seq, at, stream, step_key, line FROM workflow_logs
                 WHERE workflow_id = $1 AND stream = $2 ORDER BY seq",
                &[&id, &stream.as_str()],
            )?
            .iter()
            .map(log_record)
            .collect()
        })
    }
}

/// Inside a write: extend `run_id`'s lease on workflow `id` (see
/// [`CheckpointStore::renew_lease`]).
fn renew_one(
    tx: &mut Tx<'_>,
    id: &str,
    run_id: &str,
    lease_until: Millis,
) -> Result<LeaseRenewal, StoreError> {
    // By its key alone (see `PostgresStore::locked_owner`).
    let Some(row) = tx.query_opt(
        "SELECT run_id, status, cancel_requested FROM workflows WHERE id = $1 FOR UPDATE",
        &[&id],
    )?
    else {
        return Ok(LeaseRenewal {
            owned: false,
            cancel_requested: false,
        });
    };
    let owner: (String, String) = (get(&row, 0)?, get(&row, 1)?);
    let owned = PostgresStore::is_running_in(Some(&owner), run_id);
    if owned {
        tx.execute(
            "UPDATE workflows SET lease_expires_at = $2 WHERE id = $1",
            &[&id, &lease_until],
        )?;
    }
    Ok(LeaseRenewal {
        owned,
        cancel_requested: get(&row, 2)?,
    })
}

// The statements of a step, each committed on its own in the common case
// (see [`Commit::Alone`]). Each finds the workflow's row by its key alone,
// locked `FOR UPDATE` in a CTE the planner keeps apart, and checks the
// owner on that row: with the owner's conditions beside the key, stale
// statistics (taken when little was running) can make the planner prefer
// an index of running workflows and read every one of them on each step.
// Each answers only whether it wrote.

/// Marks a step's first attempt running (`$1` workflow, `$2` key, `$3`
/// sequence, `$4` name, `$5` attempt, `$6` run, `$7` start, `$8` input
/// fingerprint), without waiting for the flush (see [`Commit::Unflushed`]).
/// There is no earlier attempt to record, and a row already there was
/// recorded by another run: nothing is written then.
const BEGIN_FIRST_ATTEMPT: &str = "
    WITH owner AS (
        SELECT run_id, status FROM workflows WHERE id = $1 FOR UPDATE
    )
    INSERT INTO steps (workflow_id, step_key, sequence, name, status, attempts,
                       run_id, started_at, input_fingerprint)
    SELECT $1, $2, $3::BIGINT, $4::TEXT, 'running', $5, $6, $7, $8::TEXT
    FROM owner WHERE owner.run_id = $6::TEXT AND owner.status = 'running'
    ON CONFLICT DO NOTHING
    RETURNING set_config('synchronous_commit', 'off', TRUE)";

/// Marks a step running again (a retry, or a step taken over from a dead
/// run), with the same parameters as [`BEGIN_FIRST_ATTEMPT`]. Parts of one
/// statement see the history as it was when it began: the attempt a step
/// taken over from a dead run had begun (not one waiting out a retry's
/// backoff) goes into the attempt history as interrupted, as it was before
/// the row is reused. A finished step is never reopened: the upsert only
/// touches a row that is still running.
const BEGIN_AGAIN: &str = "
    WITH owner AS (
        SELECT run_id, status FROM workflows WHERE id = $1 FOR UPDATE
    ), fence AS (
        SELECT 1 FROM owner WHERE run_id = $6::TEXT AND status = 'running'
    ), interrupted AS (
        INSERT INTO step_attempts
            (workflow_id, step_key, attempt, error, run_id, ended_at, interrupted)
        SELECT workflow_id, step_key, attempts, 'interrupted: the run executing it died',
               run_id, $7::BIGINT, TRUE
        FROM steps
        WHERE EXISTS (SELECT 1 FROM fence)
          AND workflow_id = $1::TEXT AND step_key = $2::TEXT AND status = 'running'
          AND attempts > failures
        ON CONFLICT DO NOTHING
    ), begun AS (
        INSERT INTO steps (workflow_id, step_key, sequence, name, status, attempts,
                           run_id, started_at, input_fingerprint)
        SELECT $1, $2, $3::BIGINT, $4::TEXT, 'running', $5, $6, $7, $8::TEXT FROM fence
        ON CONFLICT (workflow_id, step_key) DO UPDATE SET
            attempts = excluded.attempts, run_id = excluded.run_id,
            started_at = excluded.started_at,
            input_fingerprint = excluded.input_fingerprint
        WHERE steps.status = 'running' AND excluded.attempts > steps.attempts
        RETURNING 1
    )
    SELECT set_config('synchronous_commit', 'off', TRUE) FROM begun";

/// Records how a step ended (`$1` workflow, `$2` key, `$3` run, `$4`
/// status, `$5` output, `$6` error, `$7` end, `$8` error code), if `$3`
/// owns the workflow and the step still runs in it. The `EXISTS` runs
/// once, before the step is read: the workflow's row is locked first.
const FINISH_STEP: &str = "
    WITH owner AS (
        SELECT run_id, status FROM workflows WHERE id = $1 FOR UPDATE
    )
    UPDATE steps SET status = $4, output_json = $5, error = $6, finished_at = $7,
        error_code = $8
    WHERE workflow_id = $1 AND step_key = $2 AND run_id = $3 AND status = 'running'
      AND EXISTS (SELECT 1 FROM owner WHERE owner.run_id = $3 AND owner.status = 'running')";

/// Inside a write, or as one alone: mark `step` running, fenced as
/// [`PostgresStore::check_owner`] fences, in one statement
/// ([`BEGIN_FIRST_ATTEMPT`] or [`BEGIN_AGAIN`]). Only a begin that wrote
/// nothing reads why.
fn begin_step(tx: &mut Tx<'_>, workflow_id: &str, step: &StepBegin<'_>) -> Result<(), StoreError> {
    let sql = if step.attempt == 1 {
        BEGIN_FIRST_ATTEMPT
    } else {
        BEGIN_AGAIN
    };
    let written = tx.query_opt(
        sql,
        &[
            &workflow_id,
            &step.key.as_str(),
            &i64::from(step.sequence),
            &step.name,
            &i64::from(step.attempt),
            &step.run_id,
            &step.started_at,
            &step.input_fingerprint,
        ],
    )?;
    if written.is_some() {
        return Ok(());
    }
    super::check_owner(
        workflow_id,
        step.run_id,
        PostgresStore::owner_now(tx, workflow_id)?,
    )?;
    Err(StoreError::Backend(format!(
        "step {} of workflow {workflow_id} was recorded by another run since this one read \
         the history (finished, or begun again)",
        step.key
    )))
}

/// Whether `step` is running as its begin left it: the test of a begin
/// whose commit is in doubt.
fn begun(
    tx: &mut Tx<'_>,
    workflow_id: &str,
    step: &StepBegin<'_>,
) -> Result<Option<()>, StoreError> {
    let row = tx.query_opt(
        "SELECT 1 FROM steps
         WHERE workflow_id = $1 AND step_key = $2 AND run_id = $3 AND status = 'running'
           AND attempts = $4",
        &[
            &workflow_id,
            &step.key.as_str(),
            &step.run_id,
            &i64::from(step.attempt),
        ],
    )?;
    Ok(row.map(|_| ()))
}

/// A page of a workflow's history (`$1` workflow, after sequence `$2`, at
/// most `$3` steps). `sequence > 0` is the condition of the index it reads.
fn steps_page_sql() -> String {
    format!(
        "SELECT {STEP_COLUMNS} FROM steps
         WHERE workflow_id = $1 AND sequence > $2 AND sequence > 0
         ORDER BY sequence LIMIT $3"
    )
}

/// The `(run_id, status)` a query of a workflow's owner answered (`None`:
/// it is gone).
fn owner(row: Option<Row>) -> Result<Option<(String, String)>, StoreError> {
    row.map(|row| Ok((get(&row, 0)?, get(&row, 1)?)))
        .transpose()
}

/// Inside a write that holds workflow `id`'s row: whether what it is about
/// to wait for is there already (an untaken signal of that name, the
/// child's end).
fn what_came(
    tx: &mut Tx<'_>,
    id: &str,
    waiting_for: Option<&WaitingFor>,
) -> Result<bool, StoreError> {
    match waiting_for {
        None => Ok(false),
        // Signals are sent under the same row lock: none is in flight.
        Some(WaitingFor::Signal(name)) => get(
            &tx.query_one(
                "SELECT EXISTS (SELECT 1 FROM signals
                     WHERE workflow_id = $1 AND name = $2 AND taken_by IS NULL)",
                &[&id, name],
            )?,
            0,
        ),
        // The child ends under its own row lock: `FOR SHARE` waits for an
        // end being committed, which would otherwise look for this
        // workflow before it is waiting, and miss it.
        Some(WaitingFor::Child(child)) => {
            let status: Option<String> = tx
                .query_opt(
                    "SELECT status FROM workflows WHERE id = $1 FOR SHARE",
                    &[child],
                )?
                .map(|row| get(&row, 0))
                .transpose()?;
            Ok(status
                .as_deref()
                .and_then(WorkflowStatus::parse)
                .is_some_and(WorkflowStatus::is_final))
        }
    }
}

/// A row of `SELECT seq, at, stream, step_key, line FROM workflow_logs`.
fn log_record(row: &Row) -> Result<LogRecord, StoreError> {
    let stream: String = get(row, 2)?;
    Ok(LogRecord {
        seq: get(row, 0)?,
        line: LogLine {
            at: get(row, 1)?,
            // The table's CHECK admits only these names.
            stream: LogStream::parse(&stream).unwrap_or(LogStream::Log),
            step: get::<Option<String>>(row, 3)?.map(StepKey::from_stored),
            text: get(row, 4)?,
        },
    })
}

fn signal_from_row(row: &Row) -> Result<SignalRecord, StoreError> {
    Ok(SignalRecord {
        seq: get(row, 0)?,
        workflow_id: get(row, 1)?,
        name: get(row, 2)?,
        signal_id: get(row, 3)?,
        value: get(row, 4)?,
        sent_at: get(row, 5)?,
        taken_by: get::<Option<String>>(row, 6)?.map(StepKey::from_stored),
    })
}

fn workflow_from_row(row: &Row) -> Result<WorkflowRecord, StoreError> {
    Ok(WorkflowRecord {
        id: get(row, 0)?,
        component_sha256: get(row, 1)?,
        input: get(row, 2)?,
        status: parse_column(row, 3, WorkflowStatus::parse)?,
        output: get(row, 4)?,
        error: get(row, 5)?,
        run_id: get(row, 6)?,
        owner: Owner {
            pid: get_u32(row, 7)?,
            host: get(row, 8)?,
            boot_id: get(row, 13)?,
            pid_ns: get(row, 14)?,
            started: get(row, 15)?,
        },
        lease_expires_at: get(row, 9)?,
        cancel_requested: get(row, 10)?,
        created_at: get(row, 11)?,
        updated_at: get(row, 12)?,
        takeovers: get_u32(row, 16)?,
        progress_mark: get_u32(row, 17)?,
        grants: get(row, 18)?,
        error_code: get(row, 19)?,
        queue: get(row, 20)?,
        deployment: get(row, 21)?,
        wake_at: get(row, 22)?,
        parent_id: get(row, 23)?,
        waiting_for: get::<Option<String>>(row, 24)?
            .as_deref()
            .and_then(WaitingFor::from_stored),
    })
}

fn step_from_row(row: &Row) -> Result<StepRecord, StoreError> {
    Ok(StepRecord {
        key: StepKey::from_stored(get(row, 0)?),
        sequence: get_u32(row, 1)?,
        name: get(row, 2)?,
        status: parse_column(row, 3, StepStatus::parse)?,
        output_json: get(row, 4)?,
        error: get(row, 5)?,
        attempts: get_u32(row, 6)?,
        run_id: get(row, 7)?,
        started_at: get(row, 8)?,
        finished_at: get(row, 9)?,
        failures: get_u32(row, 10)?,
        error_code: get(row, 11)?,
        input_fingerprint: get(row, 12)?,
    })
}

fn parse_column<T>(row: &Row, index: usize, parse: fn(&str) -> Option<T>) -> Result<T, StoreError> {
    let text: String = get(row, index)?;
    parse(&text).ok_or_else(|| StoreError::Backend(format!("unknown status `{text}`")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance::TestSchema;
    use std::path::Path;

    #[test]
    fn the_workflow_column_count_matches_the_columns() {
        assert_eq!(WORKFLOW_COLUMNS.split(',').count(), WORKFLOW_COLUMN_COUNT);
    }

    /// A client on `schema`, outside the store.
    fn client(schema: &TestSchema) -> Client {
        postgres::Client::connect(&schema.url, postgres::NoTls).unwrap()
    }

    /// The schema version `client` finds recorded.
    fn recorded_version(client: &mut Client) -> i64 {
        client
            .query_one("SELECT version FROM durable_schema", &[])
            .unwrap()
            .get(0)
    }

    /// A store on `schema` with workflow `id`, run by `run`, and its step
    /// `a#1` finished with `1`.
    fn one_finished_step(schema: &TestSchema, id: &str, run: &str) -> PostgresStore {
        use crate::store::conformance::{begin, finish, start};
        let store = PostgresStore::open(&schema.url).unwrap();
        start(&store, id, run);
        let key = begin(&store, id, run, "a", 1, 1).unwrap();
        finish(&store, id, run, &key, Ok("1".into())).unwrap();
        store
    }

    /// The plan `client` (under `plan_cache_mode = force_generic_plan`)
    /// makes of `sql` prepared as `name`, executed with `arguments`.
    fn generic_plan(client: &mut Client, name: &str, sql: &str, arguments: &str) -> String {
        client
            .batch_execute(&format!("PREPARE {name} AS {sql}"))
            .unwrap();
        client
            .simple_query(&format!("EXPLAIN EXECUTE {name} {arguments}"))
            .unwrap()
            .into_iter()
            .filter_map(|message| match message {
                postgres::SimpleQueryMessage::Row(row) => Some(row.get(0)?.to_owned()),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The step statements find the step by its key on a new table (no
    /// statistics yet), where the planner once took the history's index
    /// and read every step of the workflow to find one: each result cost
    /// more than the last through the first run on a new database. The
    /// history's pages still read that index.
    #[test]
    fn step_statements_find_the_step_by_its_key_on_a_new_table() {
        let Some(schema) = TestSchema::create() else {
            return;
        };
        let _store = one_finished_step(&schema, "w7", "r7");
        let mut client = client(&schema);
        client
            .batch_execute("SET plan_cache_mode = force_generic_plan")
            .unwrap();
        let statements = [
            (
                "begin_again",
                BEGIN_AGAIN,
                "('w7', 'k', 2, 'n', 2, 'r7', 5, NULL)",
            ),
            (
                "finish",
                FINISH_STEP,
                "('w7', 'k', 'r7', 'completed', '1', NULL, 5, NULL)",
            ),
        ];
        for (name, sql, arguments) in statements {
            let plan = generic_plan(&mut client, name, sql, arguments);
            assert!(plan.contains("steps_pkey on steps"), "{name}:\n{plan}");
            assert!(!plan.contains("steps_by_sequence"), "{name}:\n{plan}");
        }
        client
            .batch_execute(
                "INSERT INTO steps (workflow_id, step_key, sequence, name, status, attempts,
                                    run_id, started_at)
                 SELECT 'w' || (i % 50), 'k#' || i, i, 'k', 'completed', 1, 'r', 0
                 FROM generate_series(2, 20000) i;
                 ANALYZE steps;",
            )
            .unwrap();
        let page = generic_plan(&mut client, "page", &steps_page_sql(), "('w7', 100, 50)");
        assert!(page.contains("steps_by_sequence"), "page:\n{page}");
    }

    /// The step statements find the workflow's row by its key whatever the
    /// statistics say. Taken when little was running, they once made the
    /// planner read every running workflow's row on each step.
    #[test]
    fn step_statements_find_the_workflow_by_its_key_with_stale_statistics() {
        let Some(schema) = TestSchema::create() else {
            return;
        };
        drop(PostgresStore::open(&schema.url).unwrap());
        let mut client = client(&schema);
        client
            .batch_execute(
                "INSERT INTO workflows (id, component_sha256, input, status, run_id, owner_pid,
                                        owner_host, lease_expires_at, created_at, updated_at)
                 SELECT 'w' || i, 'sha', '{}', 'completed', 'r' || i, 1, 'h', 0, 0, 0
                 FROM generate_series(1, 20000) i;
                 ANALYZE workflows;
                 UPDATE workflows SET status = 'running'
                 WHERE id IN (SELECT 'w' || i FROM generate_series(1, 2000) i);
                 SET plan_cache_mode = force_generic_plan;",
            )
            .unwrap();
        let statements = [
            (
                "begin",
                BEGIN_FIRST_ATTEMPT,
                "('w7', 'k', 1, 'n', 1, 'r7', 5, NULL)",
            ),
            (
                "begin_again",
                BEGIN_AGAIN,
                "('w7', 'k', 1, 'n', 2, 'r7', 5, NULL)",
            ),
            (
                "finish",
                FINISH_STEP,
                "('w7', 'k', 'r7', 'completed', '1', NULL, 5, NULL)",
            ),
        ];
        for (name, sql, arguments) in statements {
            let plan = generic_plan(&mut client, name, sql, arguments);
            assert!(
                plan.contains("Index Scan using workflows_pkey on workflows"),
                "{name}:\n{plan}"
            );
            for other in ["workflows_leases", "workflows_by_status"] {
                assert!(!plan.contains(other), "{name}:\n{plan}");
            }
        }
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let Some(schema) = TestSchema::create() else {
            return;
        };
        drop(PostgresStore::open(&schema.url).unwrap());
        client(&schema)
            .execute(
                "UPDATE durable_schema SET version = $1",
                &[&(SCHEMA_VERSION + 1)],
            )
            .unwrap();
        match PostgresStore::open(&schema.url) {
            Err(StoreError::NewerSchema { found, supported }) => {
                assert_eq!((found, supported), (SCHEMA_VERSION + 1, SCHEMA_VERSION));
            }
            other => panic!("expected NewerSchema, got {:?}", other.err()),
        }
    }

    /// A schema made by version 1 (steps with a foreign key to workflows)
    /// is brought to version 2 when a newer build opens it, keeping what it
    /// holds; the steps' statements then run without the key's check.
    #[test]
    fn a_version_1_schema_is_migrated_and_keeps_its_history() {
        use crate::store::conformance::{begin, finish};
        let Some(schema) = TestSchema::create() else {
            return;
        };
        drop(one_finished_step(&schema, "wf", "r1"));
        let foreign_keys = |client: &mut Client| -> i64 {
            client
                .query_one(
                    "SELECT count(*) FROM pg_constraint
                     WHERE conrelid = 'steps'::regclass AND contype = 'f'",
                    &[],
                )
                .unwrap()
                .get(0)
        };
        let mut admin = client(&schema);
        assert_eq!(foreign_keys(&mut admin), 0);
        admin
            .batch_execute(
                "ALTER TABLE steps ADD CONSTRAINT steps_workflow_id_fkey
                     FOREIGN KEY (workflow_id) REFERENCES workflows (id);
                 UPDATE durable_schema SET version = 1",
            )
            .unwrap();

        let store = PostgresStore::open(&schema.url).unwrap();
        assert_eq!(recorded_version(&mut admin), SCHEMA_VERSION);
        assert_eq!(foreign_keys(&mut admin), 0);
        let steps = store.steps("wf").unwrap();
        assert_eq!(steps.len(), 1);
        assert_eq!(steps[0].output_json.as_deref(), Some("1"));
        let key = begin(&store, "wf", "r1", "b", 2, 1).unwrap();
        finish(&store, "wf", "r1", &key, Ok("2".into())).unwrap();
        // Without the key, a step of a workflow that is not there is still
        // refused: the statement finds no owner.
        assert!(begin(&store, "nobody", "r1", "a", 1, 1).is_err());
        assert_eq!(store.steps("nobody").unwrap().len(), 0);
    }

    /// A read-only open (`verify`, `list`, `history`) reads an older schema
    /// as it is and writes nothing: workers of the older build sharing it
    /// are not locked out by a read.
    #[test]
    fn a_read_only_open_reads_an_older_schema_and_changes_nothing() {
        let Some(schema) = TestSchema::create() else {
            return;
        };
        // Neither a read nor a command that acts on what is there (a
        // cancel) makes tables in an empty schema.
        for open in [
            PostgresStore::open_with_tables,
            PostgresStore::open_read_only,
        ] {
            match open(&schema.url) {
                Err(StoreError::NoTables { .. }) => {}
                other => panic!("expected NoTables, got {:?}", other.err()),
            }
        }
        drop(one_finished_step(&schema, "wf", "r1"));
        let mut admin = client(&schema);
        admin
            .execute("UPDATE durable_schema SET version = $1", &[&READABLE_FROM])
            .unwrap();

        let reader = PostgresStore::open_read_only(&schema.url).unwrap();
        assert_eq!(reader.steps("wf").unwrap().len(), 1);
        assert_eq!(reader.workflow("wf").unwrap().unwrap().id, "wf");
        assert!(matches!(
            reader.request_cancel("wf"),
            Err(StoreError::ReadOnly(_))
        ));
        assert_eq!(recorded_version(&mut admin), READABLE_FROM);
        assert!(!reader.workflow("wf").unwrap().unwrap().cancel_requested);

        admin
            .execute(
                "UPDATE durable_schema SET version = $1",
                &[&(SCHEMA_VERSION + 1)],
            )
            .unwrap();
        assert!(matches!(
            PostgresStore::open_read_only(&schema.url).err(),
            Some(StoreError::NewerSchema { .. })
        ));
    }

    #[test]
    fn processes_opening_a_new_schema_at_once_create_it_once() {
        let Some(schema) = TestSchema::create() else {
            return;
        };
        let opened: Vec<_> = thread::scope(|scope| {
            let handles: Vec<_> = (0..4)
                .map(|_| scope.spawn(|| PostgresStore::open(&schema.url).map(drop)))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(opened.iter().all(Result::is_ok), "{opened:?}");
        assert_eq!(recorded_version(&mut client(&schema)), SCHEMA_VERSION);
    }

    #[test]
    fn an_unreachable_server_is_named_without_its_password() {
        let url = "postgres://me:s3cret@127.0.0.1:1/test?connect_timeout=2";
        match PostgresStore::open(url) {
            Err(error @ StoreError::Open { .. }) => {
                let message = error.to_string();
                assert!(!message.contains("s3cret"), "{message}");
                assert!(message.contains("me:***@127.0.0.1:1/test"), "{message}");
                assert!(
                    message.contains("cannot reach the PostgreSQL server"),
                    "{message}"
                );
            }
            other => panic!("expected Open, got {:?}", other.err()),
        }
        assert!(matches!(
            PostgresStore::open("postgres://[not a url"),
            Err(StoreError::Open { .. })
        ));
    }

    #[test]
    fn a_search_path_without_a_schema_is_explained() {
        let Some(schema) = TestSchema::create() else {
            return;
        };
        let url = schema.url.replace("dh_test_", "dh_missing_");
        match PostgresStore::open(&url) {
            Err(StoreError::Open { reason, .. }) => {
                assert!(reason.contains("names no schema"), "{reason}");
            }
            other => panic!("expected Open, got {:?}", other.err()),
        }
    }

    /// The server process behind `store`'s connection.
    fn backend_pid(store: &PostgresStore) -> i32 {
        store
            .read(|s| Ok(s.query_one("SELECT pg_backend_pid()", &[])?.get(0)))
            .unwrap()
    }

    fn terminate(schema: &TestSchema, pid: i32) {
        client(schema)
            .execute("SELECT pg_terminate_backend($1)", &[&pid])
            .unwrap();
    }

    #[test]
    fn an_operation_whose_connection_was_lost_connects_again_and_carries_on() {
        let Some(schema) = TestSchema::create() else {
            return;
        };
        let store = PostgresStore::open(&schema.url).unwrap();
        let first = backend_pid(&store);
        terminate(&schema, first);
        assert_eq!(store.workflow("wf").unwrap(), None);
        assert_ne!(backend_pid(&store), first);
    }

    #[test]
    fn a_write_whose_connection_broke_before_its_commit_runs_again_once() {
        let Some(schema) = TestSchema::create() else {
            return;
        };
        let store = PostgresStore::open(&schema.url).unwrap();
        let mut attempts = 0;
        store
            .write(|tx| {
                attempts += 1;
                tx.execute(
                    "INSERT INTO schedules (name, cron, deployment, input, queue, next_tick, \
                     created_at) VALUES ('s', '* * * * * *', 'd', 'null', 'default', 0, 0)",
                    &[],
                )?;
                if attempts == 1 {
                    let pid: i32 = get(&tx.query_one("SELECT pg_backend_pid()", &[])?, 0)?;
                    terminate(&schema, pid);
                    // The session is gone: this statement fails, and the
                    // insert above was never committed.
                    tx.query_one("SELECT 1", &[])?;
                }
                Ok(())
            })
            .unwrap();
        assert_eq!(attempts, 2);
        assert_eq!(store.schedules().unwrap().len(), 1);
    }

    /// A write alone on `store` that inserts schedule `name`; on its first
    /// try, `cut` ends its own session (before the insert or after it, as
    /// `cut_after` says), and the connection is lost with the write in
    /// doubt. Answers how often the insert was tried and how often
    /// `made` was asked.
    fn write_alone_cut(schema: &TestSchema, store: &PostgresStore, cut_after: bool) -> (u32, u32) {
        let (mut tries, mut asked) = (0, 0);
        let cut = |tx: &mut Tx<'_>| -> Result<(), StoreError> {
            let pid: i32 = get(&tx.query_one("SELECT pg_backend_pid()", &[])?, 0)?;
            terminate(schema, pid);
            tx.query_one("SELECT 1", &[]).map(|_| ())
        };
        let insert = "INSERT INTO schedules (name, cron, deployment, input, queue, next_tick, \
                      created_at) VALUES ('s', '* * * * * *', 'd', 'null', 'default', 0, 0)";
        store
            .write_alone(
                |tx| {
                    tries += 1;
                    if tries == 1 && !cut_after {
                        cut(tx)?;
                    }
                    tx.execute(insert, &[])?;
                    if tries == 1 && cut_after {
                        cut(tx)?;
                    }
                    Ok(())
                },
                |tx| {
                    asked += 1;
                    let found = tx.query_opt("SELECT 1 FROM schedules WHERE name = 's'", &[])?;
                    Ok(found.map(|_| ()))
                },
            )
            .unwrap();
        assert_eq!(store.schedules().unwrap().len(), 1);
        (tries, asked)
    }

    #[test]
    fn a_write_alone_cut_off_before_it_was_made_runs_again_once() {
        let Some(schema) = TestSchema::create() else {
            return;
        };
        let store = PostgresStore::open(&schema.url).unwrap();
        assert_eq!(write_alone_cut(&schema, &store, false), (2, 1));
    }

    #[test]
    fn a_write_alone_cut_off_after_it_was_made_is_not_made_twice() {
        let Some(schema) = TestSchema::create() else {
            return;
        };
        let store = PostgresStore::open(&schema.url).unwrap();
        assert_eq!(write_alone_cut(&schema, &store, true), (1, 1));
    }

    /// `url` with `key=value` added, in either form of URL.
    fn with_param(url: &str, param: &str) -> String {
        match (url.contains("://"), url.contains('?')) {
            (true, true) => format!("{url}&{param}"),
            (true, false) => format!("{url}?{param}"),
            (false, _) => format!("{url} {param}"),
        }
    }

    /// Whether `store`'s connection is encrypted.
    fn encrypted(store: &PostgresStore) -> bool {
        store
            .read(|s| {
                get(
                    &s.query_one(
                        "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                        &[],
                    )?,
                    0,
                )
            })
            .unwrap()
    }

    fn refusal(url: &str) -> String {
        match PostgresStore::open(url) {
            Err(StoreError::Open { reason, .. }) => reason,
            Err(other) => panic!("refused for another reason: {other}"),
            Ok(_) => panic!("{url} was accepted"),
        }
    }

    #[test]
    fn tls_follows_sslmode_and_sslrootcert_as_libpq_does() {
        let Some(schema) = TestSchema::create() else {
            return;
        };
        let setting = |name: &str| -> String {
            client(&schema)
                .query_one(&format!("SHOW {name}"), &[])
                .unwrap()
                .get(0)
        };
        assert_eq!(
            setting("ssl"),
            "on",
            "this test needs the PostgreSQL server to offer TLS (ssl = on, as Debian sets it up)"
        );
        let url = |params: &str| with_param(&schema.url, params);

        // Without sslmode, no TLS, as before this host knew TLS.
        assert!(!encrypted(&PostgresStore::open(&schema.url).unwrap()));
        assert!(encrypted(
            &PostgresStore::open(&url("sslmode=require")).unwrap()
        ));
        assert!(encrypted(
            &PostgresStore::open(&url("sslmode=prefer")).unwrap()
        ));

        // The server's own (self-signed) certificate as the root: the chain
        // holds, but it is not issued to 127.0.0.1.
        let own = setting("ssl_cert_file");
        let store = PostgresStore::open(&url(&format!("sslmode=verify-ca&sslrootcert={own}")));
        assert!(encrypted(&store.unwrap()));
        let reason = refusal(&url(&format!("sslmode=verify-full&sslrootcert={own}")));
        assert!(
            reason.contains("TLS with the PostgreSQL server failed"),
            "{reason}"
        );
        assert!(reason.contains("127.0.0.1"), "{reason}");

        // Roots that did not sign it, given to `require`, are checked too.
        let bundle = "/etc/ssl/certs/ca-certificates.crt";
        if Path::new(bundle).is_file() {
            let reason = refusal(&url(&format!("sslmode=require&sslrootcert={bundle}")));
            assert!(reason.contains("certificate"), "{reason}");
        }
        let reason = refusal(&url(
            "sslmode=verify-full&sslrootcert=/nonexistent/root.crt",
        ));
        assert!(reason.contains("/nonexistent/root.crt"), "{reason}");
    }

    #[test]
    fn workers_asking_together_are_handed_different_queued_workflows() {
        use crate::store::conformance::{enqueue, ids, take_over};
        let Some(schema) = TestSchema::create() else {
            return;
        };
        let (a, b) = (
            PostgresStore::open(&schema.url).unwrap(),
            PostgresStore::open(&schema.url).unwrap(),
        );
        for id in ["q1", "q2", "q3"] {
            enqueue(&a, id, "default", "1");
        }
        let now = now_millis();
        let first = a
            .ready_workflows("default", now, 2, &HashSet::new())
            .unwrap();
        assert_eq!(ids(&first), ["q1", "q2"]);
        assert_eq!(
            ids(&b
                .ready_workflows("default", now, 10, &HashSet::new())
                .unwrap()),
            ["q3"]
        );
        // The worker handed one claims it; the others keep off it until
        // the reservation lapses, then may have it (q2: its worker died).
        take_over(&a, &a.workflow("q1").unwrap().unwrap(), "r1").unwrap();
        let lapsed = now + RESERVATION_MS + 1;
        assert_eq!(
            ids(&b
                .ready_workflows("default", lapsed, 10, &HashSet::new())
                .unwrap()),
            ["q2", "q3"]
        );
    }

    #[test]
    fn the_server_clock_is_read_for_the_skew_check() {
        let Some(schema) = TestSchema::create() else {
            return;
        };
        let store = PostgresStore::open(&schema.url).unwrap();
        let server = store.server_clock().unwrap().unwrap();
        // The same machine: the same clock, give or take the round trip.
        assert!((server - now_millis()).abs() < 1_000, "{server}");
    }

    #[test]
    fn a_write_that_panics_is_undone() {
        let Some(schema) = TestSchema::create() else {
            return;
        };
        let store = PostgresStore::open(&schema.url).unwrap();
        let add = |tx: &mut Tx<'_>, name: &str| {
            tx.execute(
                "INSERT INTO schedules (name, cron, deployment, input, queue, next_tick,
                     created_at)
                 VALUES ($1, '* * * * *', 'd', '1', 'q', 0, 0)",
                &[&name],
            )
        };
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            store.write(|tx| -> Result<(), StoreError> {
                add(tx, "undone")?;
                panic!("a bug in the middle of a write")
            })
        }));
        assert!(panicked.is_err());
        store.write(|tx| add(tx, "kept")).unwrap();
        let names: Vec<String> = client(&schema)
            .query("SELECT name FROM schedules", &[])
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect();
        assert_eq!(names, ["kept"]);
    }
}
