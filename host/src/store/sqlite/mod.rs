//! [`CheckpointStore`] on a single SQLite file.
//!
//! The database runs in WAL mode with `synchronous=FULL`, so a commit is on
//! disk when it returns and readers never block the writer. Every change is
//! an explicit `BEGIN IMMEDIATE` transaction, which takes the write lock up
//! front (no deadlock-prone read-to-write upgrade); `busy_timeout` waits for
//! other writers and [`SqliteStore`] retries, with backoff, the few cases
//! where SQLite reports `SQLITE_BUSY` without waiting.
//!
//! Marking a step *running* is committed with `synchronous=NORMAL`: it
//! reaches the WAL (and so survives the process dying) without an fsync of
//! its own, and the step's result, committed with `FULL`, flushes it. A step
//! therefore pays one flush, not two; a power cut can only forget that a step
//! had begun, which re-executes it, as any in-flight step may be.

use std::collections::HashSet;
use std::path::Path;
use std::thread;
use std::time::Duration;

use rusqlite::{
    Connection, ErrorCode, OpenFlags, OptionalExtension, Row, Transaction, TransactionBehavior,
    params,
};

use super::{
    AttemptRecord, BatchWriter, CheckpointStore, ChildStart, Deployment, Enqueued, Fork,
    LOG_LINES_KEPT, LeaseRenewal, ListQuery, LogLine, LogRecord, LogStream, Millis, NewWorkflow,
    Outcome, Owner, PublishedEvent, QueuedWorkflow, Reopen, ScheduleRecord, SignalRecord,
    SignalSent, StepBegin, StepEffect, StepKey, StepRecord, StepStatus, StoreError, Takeover,
    Unload, Upgrade, WaitingFor, WorkflowEnd, WorkflowEvent, WorkflowRecord, WorkflowStatus,
    WorkflowSummary, now_millis, split_outcome,
};

mod schema;

use schema::{MIGRATIONS, SCHEMA, SCHEMA_VERSION};

const WORKFLOW_COLUMNS: &str = "id, component_sha256, input, status, output, error, run_id, \
     owner_pid, owner_host, lease_expires_at, cancel_requested, created_at, updated_at, \
     owner_boot, owner_pid_ns, owner_started, takeovers, progress_mark, grants, error_code, \
     queue, deployment, wake_at, parent_id, waiting_for";

/// How many columns [`WORKFLOW_COLUMNS`] selects.
const WORKFLOW_COLUMN_COUNT: usize = 25;

/// Prepared statements kept per connection.
const STATEMENT_CACHE: usize = 96;

/// How long SQLite itself waits for a lock before reporting `SQLITE_BUSY`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Retries on top of the busy timeout, for the busy cases SQLite does not wait on.
const BUSY_RETRIES: u32 = 8;
const BACKOFF_START: Duration = Duration::from_millis(2);
const BACKOFF_CAP: Duration = Duration::from_millis(250);

/// A checkpoint store in one SQLite database file.
pub struct SqliteStore {
    conn: Connection,
    path: std::path::PathBuf,
    /// The file this connection opened, checked before every commit: a
    /// database deleted or replaced under a run would otherwise take its
    /// checkpoints into an unlinked file without a word.
    identity: FileIdentity,
    /// Writes are savepoints of a batch: see [`BatchWriter::begin_batch`].
    in_batch: std::cell::Cell<bool>,
    /// The connection's `synchronous` level, to set it only when it changes.
    synchronous: std::cell::Cell<&'static str>,
}

/// Device and inode of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileIdentity {
    dev: u64,
    ino: u64,
}

impl FileIdentity {
    fn of(path: &Path) -> Option<Self> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path).ok()?;
        Some(Self {
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }
}

impl SqliteStore {
    /// Open (creating if needed) the database at `path` and its tables.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let store = Self::connect(path)?;
        store.create_schema().map_err(|e| store.explain(e))?;
        Ok(store)
    }

    /// Open the existing database at `path` for reading only: nothing this
    /// handle does can change the file (safe beside a running `serve`).
    pub fn open_read_only(path: &Path) -> Result<Self, StoreError> {
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).map_err(|e| open_error(path, e))?;
        let store = Self::wrap(path, conn)?;
        store.conn.busy_timeout(BUSY_TIMEOUT).map_err(store_error)?;
        let version = store.schema_version()?;
        if version < SCHEMA_VERSION {
            return Err(StoreError::Open {
                path: path.display().to_string(),
                reason: format!(
                    "its tables are version {version}; any other command of this durable-host \
                     upgrades them to version {SCHEMA_VERSION} first"
                ),
            });
        }
        Ok(store)
    }

    /// Another connection to a database whose tables are up to date.
    pub(crate) fn connect_existing(path: &Path) -> Result<Self, StoreError> {
        Self::connect(path)
    }

    /// Open a connection to a database whose tables exist, with our pragmas.
    fn connect(path: &Path) -> Result<Self, StoreError> {
        let shown = path.display().to_string();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
            && !parent.is_dir()
        {
            return Err(StoreError::Open {
                path: shown,
                reason: format!("the directory {} does not exist", parent.display()),
            });
        }
        let conn = Connection::open(path).map_err(|e| open_error(path, e))?;
        let store = Self::wrap(path, conn)?;
        store.configure().map_err(|e| store.explain(e))?;
        Ok(store)
    }

    /// The store around `conn`, just opened on `path`.
    fn wrap(path: &Path, conn: Connection) -> Result<Self, StoreError> {
        let identity = FileIdentity::of(path).ok_or_else(|| StoreError::Open {
            path: path.display().to_string(),
            reason: "the file vanished as it was opened".to_owned(),
        })?;
        Ok(Self {
            conn,
            path: path.to_owned(),
            identity,
            in_batch: std::cell::Cell::new(false),
            synchronous: std::cell::Cell::new("FULL"),
        })
    }

    /// The tables' version (`user_version`); a newer one than this build
    /// knows is refused.
    fn schema_version(&self) -> Result<i64, StoreError> {
        let version = self.read(|| {
            self.conn
                .query_row("PRAGMA user_version", [], |row| row.get::<_, i64>(0))
        })?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::NewerSchema {
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        Ok(version)
    }

    /// Name the file in errors about it.
    fn explain(&self, error: StoreError) -> StoreError {
        let path = self.path.display().to_string();
        match error {
            StoreError::Backend(reason) if is_not_a_database(&reason) => {
                StoreError::NotADatabase { path, reason }
            }
            StoreError::DiskFull { .. } => StoreError::DiskFull { path },
            StoreError::Io { reason, .. } => StoreError::Io { path, reason },
            other => other,
        }
    }

    /// Run a read, retrying while the database is busy.
    fn read<T>(&self, op: impl FnMut() -> rusqlite::Result<T>) -> Result<T, StoreError> {
        with_retry(op).map_err(|e| self.explain(e))
    }

    fn configure(&self) -> Result<(), StoreError> {
        self.conn.busy_timeout(BUSY_TIMEOUT).map_err(store_error)?;
        // Room for every statement the store uses: a statement pushed out
        // of the cache is parsed again on its next use.
        self.conn
            .set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        // SQLite's statistics (STAT4) would otherwise re-plan, so re-parse, a
        // cached statement whenever a bound value changes: keep one plan.
        self.conn
            .set_db_config(
                rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
                true,
            )
            .map_err(store_error)?;
        self.read(|| {
            // journal_mode returns the mode it ended up in: a read-only file
            // cannot switch to WAL, and anything else would break our promises.
            let mode: String = self
                .conn
                .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
            if !mode.eq_ignore_ascii_case("wal") {
                return Err(rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_READONLY),
                    Some(format!("cannot switch the journal to WAL (it is `{mode}`)")),
                ));
            }
            self.conn
                .execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;")
        })?;
        Ok(())
    }

    /// Create the tables in a new database, or bring an older one up to
    /// [`SCHEMA_VERSION`] with [`MIGRATIONS`]; refuse a newer one.
    fn create_schema(&self) -> Result<(), StoreError> {
        // Up to date (every open after the first): no write, so no flush.
        if self.schema_version()? == SCHEMA_VERSION {
            return Ok(());
        }
        // A migration rebuilds tables that others reference; SQLite only
        // allows that with foreign keys off, which cannot change inside a
        // transaction. They are checked before the commit instead.
        self.conn
            .execute_batch("PRAGMA foreign_keys = OFF")
            .map_err(store_error)?;
        let result = self.write(|tx| {
            // Another process may have upgraded it while we waited for the lock.
            let found: i64 = tx.query_row("PRAGMA user_version", [], |row| row.get(0))?;
            if found > SCHEMA_VERSION {
                return Ok(Err(StoreError::NewerSchema {
                    found,
                    supported: SCHEMA_VERSION,
                }));
            }
            if found == 0 {
                tx.execute_batch(SCHEMA)?;
            } else {
                for (_, migration) in MIGRATIONS.iter().filter(|(to, _)| *to > found) {
                    tx.execute_batch(migration)?;
                }
                let broken: Option<String> = tx
                    .query_row("PRAGMA foreign_key_check", [], |row| row.get(0))
                    .optional()?;
                if let Some(table) = broken {
                    return Ok(Err(StoreError::Backend(format!(
                        "upgrading the database found rows of `{table}` without their workflow"
                    ))));
                }
            }
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
            Ok(Ok(()))
        });
        self.conn
            .execute_batch("PRAGMA foreign_keys = ON")
            .map_err(store_error)?;
        result
    }

    /// Run `body` in a `BEGIN IMMEDIATE` transaction and commit, retrying the
    /// whole transaction while the database is busy. A body that answers
    /// `Err(StoreError)` (a conflict it found) rolls back and returns it.
    fn write<T>(
        &self,
        mut body: impl FnMut(&Connection) -> rusqlite::Result<Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        if self.in_batch.get() {
            return self.write_in_batch(body);
        }
        self.check_identity()?;
        self.read(|| {
            // The store never nests transactions, so the `&self` form is safe.
            let tx = Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)?;
            match body(&tx)? {
                Ok(value) => {
                    tx.commit()?;
                    Ok(Ok(value))
                }
                // Dropping the transaction rolls it back.
                Err(conflict) => Ok(Err(conflict)),
            }
        })?
    }

    fn check_identity(&self) -> Result<(), StoreError> {
        if FileIdentity::of(&self.path) != Some(self.identity) {
            return Err(StoreError::Replaced {
                path: self.path.display().to_string(),
            });
        }
        Ok(())
    }

    /// One write of a batch (see [`BatchWriter::begin_batch`]): a savepoint, so
    /// that a conflict or an error undoes this write alone.
    fn write_in_batch<T>(
        &self,
        mut body: impl FnMut(&Connection) -> rusqlite::Result<Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let fail = |e| self.explain(store_error(e));
        // A failed write (disk full, I/O) may make SQLite roll the whole
        // batch back; then a savepoint would open a transaction of its own
        // that commits at once, while its caller hears the batch failed.
        if self.conn.is_autocommit() {
            return Err(StoreError::Backend(
                "the batch this write belonged to was rolled back by an earlier failure".to_owned(),
            ));
        }
        self.execute_cached("SAVEPOINT write").map_err(fail)?;
        let result = body(&self.conn);
        if !matches!(result, Ok(Ok(_))) {
            self.execute_cached("ROLLBACK TO write").map_err(fail)?;
        }
        self.execute_cached("RELEASE write").map_err(fail)?;
        result.map_err(fail)?
    }

    /// Like [`Self::write`], with `synchronous=NORMAL` for this commit only.
    fn write_unflushed<T>(
        &self,
        body: impl FnMut(&Connection) -> rusqlite::Result<Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        if self.in_batch.get() {
            return self.write_in_batch(body);
        }
        self.set_synchronous("NORMAL")?;
        let result = self.write(body);
        let restored = self.set_synchronous("FULL");
        let value = result?;
        restored?;
        Ok(value)
    }

    fn set_synchronous(&self, level: &'static str) -> Result<(), StoreError> {
        if self.synchronous.get() == level {
            return Ok(());
        }
        self.conn
            .pragma_update(None, "synchronous", level)
            .map_err(|e| self.explain(store_error(e)))?;
        self.synchronous.set(level);
        Ok(())
    }

    /// Run a statement without parameters from the statement cache (no
    /// parsing after the first time).
    fn execute_cached(&self, sql: &str) -> rusqlite::Result<()> {
        self.conn.prepare_cached(sql)?.execute([])?;
        Ok(())
    }

    /// Inside a write: record how step `key` ended (see
    /// [`CheckpointStore::finish_step`]).
    fn finish_step_in(
        tx: &Connection,
        workflow_id: &str,
        run_id: &str,
        key: &StepKey,
        outcome: &Outcome,
        log: &[LogLine],
    ) -> rusqlite::Result<Result<(), StoreError>> {
        if let Err(lost) = Self::check_owner(tx, workflow_id, run_id)? {
            return Ok(Err(lost));
        }
        let (status, output, error, code) = split_outcome(outcome);
        insert_log(tx, workflow_id, log)?;
        let updated = tx
            .prepare_cached(
                "UPDATE steps SET status = ?4, output_json = ?5, error = ?6, finished_at = ?7,
                     error_code = ?8
                 WHERE workflow_id = ?1 AND step_key = ?2 AND run_id = ?3
                   AND status = 'running'",
            )?
            .execute(params![
                workflow_id,
                key.as_str(),
                run_id,
                status.as_str(),
                output,
                error,
                now_millis(),
                code
            ])?;
        Ok(if updated == 0 {
            Err(StoreError::Backend(format!(
                "step {key} of workflow {workflow_id} is not running in run {run_id}"
            )))
        } else {
            Ok(())
        })
    }

    /// Inside a write: workflow `id` ended; the workflows waiting for it
    /// (its parent, or a fork of its parent) look at once.
    fn wake_waiters(tx: &Connection, id: &str, now: Millis) -> rusqlite::Result<()> {
        tx.prepare_cached(
            "UPDATE workflows INDEXED BY workflows_waiting_for SET wake_at = ?2
             WHERE status = 'waiting' AND waiting_for = ?1",
        )?
        .execute(params![WaitingFor::Child(id.to_owned()).stored(), now])?;
        Ok(())
    }

    /// Inside a write: queue `child` of `parent`.
    fn insert_child(
        tx: &Connection,
        parent: &str,
        child: &ChildStart,
    ) -> rusqlite::Result<Result<(), StoreError>> {
        let now = now_millis();
        let inserted = tx
            .prepare_cached(
                "INSERT INTO workflows
                     (id, component_sha256, input, status, run_id, owner_pid, owner_host,
                      lease_expires_at, created_at, updated_at, grants, queue, deployment,
                      parent_id)
                 VALUES (?1, ?2, ?3, 'queued', '', 0, '', 0, ?4, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (id) DO NOTHING",
            )?
            .execute(params![
                child.id,
                child.component_sha256,
                child.input,
                now,
                child.grants,
                child.queue,
                child.deployment,
                parent,
            ])?;
        Ok(if inserted == 1 {
            Ok(())
        } else {
            Err(StoreError::WorkflowExists {
                id: child.id.clone(),
            })
        })
    }

    /// Inside a write: the signal `signal_id` of workflow `workflow_id`.
    fn signal_by_id(
        tx: &Connection,
        workflow_id: &str,
        signal_id: &str,
    ) -> rusqlite::Result<Option<SignalRecord>> {
        tx.prepare_cached(&format!(
            "SELECT {SIGNAL_COLUMNS} FROM signals WHERE workflow_id = ?1 AND signal_id = ?2"
        ))?
        .query_row([workflow_id, signal_id], signal_from_row)
        .optional()
    }

    /// Inside a write: `Ok(())` while `run_id` owns running workflow `id`,
    /// else the conflict to roll back with. This is the fence every write
    /// of a run passes, in the write's own transaction.
    fn check_owner(
        tx: &Connection,
        id: &str,
        run_id: &str,
    ) -> rusqlite::Result<Result<(), StoreError>> {
        let row: Option<(String, String)> = tx
            .prepare_cached("SELECT run_id, status FROM workflows WHERE id = ?1")?
            .query_row([id], |row| Ok((row.get(0)?, row.get(1)?)))
            .optional()?;
        Ok(super::check_owner(id, run_id, row))
    }
}

impl BatchWriter for SqliteStore {
    /// A transaction in which the following writes are savepoints; a batch
    /// that needs no flush commits with `synchronous=NORMAL`.
    fn begin_batch(&self, flush: bool) -> Result<(), StoreError> {
        self.check_identity()?;
        self.set_synchronous(if flush { "FULL" } else { "NORMAL" })?;
        self.read(|| self.execute_cached("BEGIN IMMEDIATE"))?;
        self.in_batch.set(true);
        Ok(())
    }

    fn commit_batch(&self) -> Result<(), StoreError> {
        self.in_batch.set(false);
        let committed = self.read(|| self.execute_cached("COMMIT"));
        if committed.is_err() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
        committed
    }
}

fn insert_event(
    tx: &Connection,
    workflow_id: &str,
    run_id: &str,
    kind: &str,
    detail: &str,
    at: Millis,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO workflow_events (workflow_id, at, kind, detail, run_id)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![workflow_id, at, kind, detail, run_id])?;
    Ok(())
}

impl CheckpointStore for SqliteStore {
    fn reopen(&self) -> Result<Box<dyn CheckpointStore>, StoreError> {
        Ok(Box::new(Self::connect(&self.path)?))
    }

    fn workflow(&self, id: &str) -> Result<Option<WorkflowRecord>, StoreError> {
        self.read(|| {
            self.conn
                .prepare_cached(&format!(
                    "SELECT {WORKFLOW_COLUMNS} FROM workflows WHERE id = ?1"
                ))?
                .query_row([id], workflow_from_row)
                .optional()
        })
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
        self.read(|| {
            self.conn
                .prepare_cached(
                    "SELECT step_key, sequence, name, status, output_json, error, attempts,
                            run_id, started_at, finished_at, failures, error_code,
                            input_fingerprint
                     FROM steps WHERE workflow_id = ?1 AND sequence > ?2
                     ORDER BY sequence LIMIT ?3",
                )?
                .query_map(params![workflow_id, after, limit], step_from_row)?
                .collect()
        })
    }

    fn attempts(&self, workflow_id: &str) -> Result<Vec<AttemptRecord>, StoreError> {
        self.read(|| {
            self.conn
                .prepare_cached(
                    "SELECT step_key, attempt, error, run_id, ended_at, interrupted, backoff_ms
                     FROM step_attempts WHERE workflow_id = ?1 ORDER BY step_key, attempt",
                )?
                .query_map([workflow_id], |row| {
                    Ok(AttemptRecord {
                        key: StepKey::from_stored(row.get(0)?),
                        attempt: row.get(1)?,
                        error: row.get(2)?,
                        run_id: row.get(3)?,
                        ended_at: row.get(4)?,
                        interrupted: row.get(5)?,
                        backoff_ms: row.get(6)?,
                    })
                })?
                .collect()
        })
    }

    fn events(&self, workflow_id: &str) -> Result<Vec<WorkflowEvent>, StoreError> {
        self.read(|| {
            self.conn
                .prepare_cached(
                    "SELECT at, kind, detail, run_id FROM workflow_events
                     WHERE workflow_id = ?1 ORDER BY at, rowid",
                )?
                .query_map([workflow_id], |row| {
                    Ok(WorkflowEvent {
                        at: row.get(0)?,
                        kind: row.get(1)?,
                        detail: row.get(2)?,
                        run_id: row.get(3)?,
                    })
                })?
                .collect()
        })
    }

    fn create_workflow(&self, workflow: &NewWorkflow<'_>) -> Result<(), StoreError> {
        let now = now_millis();
        let claim = workflow.claim;
        let owner = claim.owner;
        self.write(|tx| {
            let inserted = tx
                .prepare_cached(
                    "INSERT INTO workflows
                         (id, component_sha256, input, status, run_id, owner_pid, owner_host,
                          lease_expires_at, created_at, updated_at, owner_boot, owner_pid_ns,
                          owner_started, grants)
                     VALUES (?1, ?2, ?3, 'running', ?4, ?5, ?6, ?7, ?8, ?8, ?9, ?10, ?11, ?12)
                     ON CONFLICT (id) DO NOTHING",
                )?
                .execute(params![
                    workflow.id,
                    workflow.component_sha256,
                    workflow.input,
                    claim.run_id,
                    owner.pid,
                    owner.host,
                    claim.lease_until,
                    now,
                    owner.boot_id,
                    owner.pid_ns,
                    owner.started,
                    workflow.grants,
                ])?;
            if let (1, Some(bytes)) = (inserted, workflow.component) {
                tx.prepare_cached(
                    "INSERT INTO components (sha256, bytes, created_at) VALUES (?1, ?2, ?3)
                     ON CONFLICT (sha256) DO NOTHING",
                )?
                .execute(params![workflow.component_sha256, bytes, now])?;
            }
            Ok(if inserted == 0 {
                Err(StoreError::WorkflowExists {
                    id: workflow.id.to_owned(),
                })
            } else {
                Ok(())
            })
        })
    }

    fn claim_workflow(&self, id: &str, takeover: &Takeover<'_>) -> Result<(), StoreError> {
        let now = now_millis();
        let claim = takeover.claim;
        let owner = claim.owner;
        self.write(|tx| {
            let claimed = tx
                .prepare_cached(
                    "UPDATE workflows SET run_id = ?3, owner_pid = ?4, owner_host = ?5,
                         lease_expires_at = ?6, component_sha256 = ?7, updated_at = ?8,
                         owner_boot = ?9, owner_pid_ns = ?10, owner_started = ?11,
                         takeovers = ?12, progress_mark = ?13, status = 'running', wake_at = NULL
                     WHERE id = ?1 AND run_id = ?2 AND lease_expires_at = ?14
                       AND component_sha256 = ?15
                       AND status IN ('running', 'queued', 'sleeping', 'waiting')",
                )?
                .execute(params![
                    id,
                    takeover.previous_run,
                    claim.run_id,
                    owner.pid,
                    owner.host,
                    claim.lease_until,
                    takeover.component_sha256,
                    now,
                    owner.boot_id,
                    owner.pid_ns,
                    owner.started,
                    takeover.takeovers,
                    takeover.progress_mark,
                    takeover.observed_lease,
                    takeover.observed_component,
                ])?;
            if claimed == 0 {
                return Ok(Err(lost_ownership(tx, id)?));
            }
            for (kind, detail) in takeover.events {
                insert_event(tx, id, claim.run_id, kind, detail, now)?;
            }
            Ok(Ok(()))
        })
    }

    fn reopen_workflow(&self, id: &str, reopen: &Reopen<'_>) -> Result<(), StoreError> {
        let now = now_millis();
        let claim = reopen.claim;
        let owner = claim.owner;
        self.write(|tx| {
            let reopened = tx
                .prepare_cached(
                    "UPDATE workflows SET status = 'running', output = NULL, error = NULL,
                         error_code = NULL,
                         run_id = ?3, owner_pid = ?4, owner_host = ?5, lease_expires_at = ?6,
                         updated_at = ?7, owner_boot = ?8, owner_pid_ns = ?9, owner_started = ?10,
                         takeovers = 0, component_sha256 = ?11,
                         grants = coalesce(?12, grants)
                     WHERE id = ?1 AND run_id = ?2 AND status IN ('failed', 'suspended')",
                )?
                .execute(params![
                    id,
                    reopen.expected_run,
                    claim.run_id,
                    owner.pid,
                    owner.host,
                    claim.lease_until,
                    now,
                    owner.boot_id,
                    owner.pid_ns,
                    owner.started,
                    reopen.component_sha256,
                    reopen.grants,
                ])?;
            if reopened == 0 {
                return Ok(Err(lost_ownership(tx, id)?));
            }
            insert_event(tx, id, claim.run_id, "resumed", reopen.detail, now)?;
            Ok(Ok(()))
        })
    }

    fn renew_lease(
        &self,
        id: &str,
        run_id: &str,
        lease_until: Millis,
    ) -> Result<LeaseRenewal, StoreError> {
        self.write(|tx| {
            let renewed = tx
                .prepare_cached(
                    "UPDATE workflows SET lease_expires_at = ?3
                     WHERE id = ?1 AND run_id = ?2 AND status = 'running'",
                )?
                .execute(params![id, run_id, lease_until])?;
            let cancel_requested: bool = tx
                .prepare_cached("SELECT cancel_requested FROM workflows WHERE id = ?1")?
                .query_row([id], |row| row.get(0))
                .optional()?
                .unwrap_or(false);
            Ok(Ok(LeaseRenewal {
                owned: renewed == 1,
                cancel_requested,
            }))
        })
    }

    fn request_cancel(&self, id: &str) -> Result<WorkflowRecord, StoreError> {
        let now = now_millis();
        let workflow = self.write(|tx| {
            let requested = tx
                .prepare_cached(
                    "UPDATE workflows SET cancel_requested = 1
                     WHERE id = ?1 AND status = 'running' AND cancel_requested = 0",
                )?
                .execute([id])?;
            if requested == 1 {
                insert_event(tx, id, "", "cancel_requested", "durable-host cancel", now)?;
            }
            Ok(Ok(tx
                .prepare_cached(&format!(
                    "SELECT {WORKFLOW_COLUMNS} FROM workflows WHERE id = ?1"
                ))?
                .query_row([id], workflow_from_row)
                .optional()?))
        })?;
        workflow.ok_or_else(|| StoreError::UnknownWorkflow { id: id.to_owned() })
    }

    fn list_workflows(&self, query: &ListQuery) -> Result<Vec<WorkflowSummary>, StoreError> {
        self.read(|| {
            let mut statement = self.conn.prepare_cached(&format!(
                "SELECT {WORKFLOW_COLUMNS},
                        (SELECT count(*) FROM steps s WHERE s.workflow_id = w.id),
                        (SELECT count(*) FROM steps s WHERE s.workflow_id = w.id AND s.status = 'completed'),
                        (SELECT count(*) FROM steps s WHERE s.workflow_id = w.id AND s.status = 'failed'),
                        (SELECT count(*) FROM steps s WHERE s.workflow_id = w.id AND s.status = 'running')
                 FROM workflows w
                 WHERE (?1 IS NULL OR w.status = ?1)
                   AND (?4 IS NULL OR instr(w.id, ?4) > 0)
                   AND (?2 IS NULL OR EXISTS (
                        SELECT 1 FROM workflows a WHERE a.id = ?2
                            AND (w.created_at < a.created_at
                                 OR (w.created_at = a.created_at AND w.id > a.id))))
                 ORDER BY w.created_at DESC, w.id
                 LIMIT ?3"
            ))?;
            let limit = query.limit.map_or(-1, i64::from);
            let rows = statement.query_map(
                params![
                    query.status.map(WorkflowStatus::as_str),
                    query.after,
                    limit,
                    query.id_contains
                ],
                |row| {
                    Ok(WorkflowSummary {
                        workflow: workflow_from_row(row)?,
                        steps: row.get(WORKFLOW_COLUMN_COUNT)?,
                        completed_steps: row.get(WORKFLOW_COLUMN_COUNT + 1)?,
                        failed_steps: row.get(WORKFLOW_COLUMN_COUNT + 2)?,
                        running_steps: row.get(WORKFLOW_COLUMN_COUNT + 3)?,
                    })
                },
            )?;
            rows.collect()
        })
    }

    fn put_component(&self, sha256: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let now = now_millis();
        self.write(|tx| {
            tx.prepare_cached(
                "INSERT INTO components (sha256, bytes, created_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (sha256) DO NOTHING",
            )?
            .execute(params![sha256, bytes, now])?;
            Ok(Ok(()))
        })
    }

    fn component(&self, sha256: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.read(|| {
            self.conn
                .prepare_cached("SELECT bytes FROM components WHERE sha256 = ?1")?
                .query_row([sha256], |row| row.get(0))
                .optional()
        })
    }

    fn deploy(&self, name: &str, sha256: &str, grants: &str) -> Result<Deployment, StoreError> {
        let now = now_millis();
        self.write(|tx| {
            let version: u32 = tx
                .prepare_cached(
                    "SELECT coalesce(max(version), 0) + 1 FROM deployments WHERE name = ?1",
                )?
                .query_row([name], |row| row.get(0))?;
            tx.prepare_cached(
                "INSERT INTO deployments (name, version, sha256, grants, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![name, version, sha256, grants, now])?;
            Ok(Ok(Deployment {
                name: name.to_owned(),
                version,
                sha256: sha256.to_owned(),
                grants: grants.to_owned(),
                created_at: now,
            }))
        })
    }

    fn deployments(&self, name: Option<&str>) -> Result<Vec<Deployment>, StoreError> {
        self.read(|| {
            self.conn
                .prepare_cached(
                    "SELECT name, version, sha256, grants, created_at FROM deployments
                     WHERE ?1 IS NULL OR name = ?1 ORDER BY name, version DESC",
                )?
                .query_map([name], |row| {
                    Ok(Deployment {
                        name: row.get(0)?,
                        version: row.get(1)?,
                        sha256: row.get(2)?,
                        grants: row.get(3)?,
                        created_at: row.get(4)?,
                    })
                })?
                .collect()
        })
    }

    fn fork_workflow(&self, fork: &Fork<'_>) -> Result<WorkflowRecord, StoreError> {
        let now = now_millis();
        self.write(|tx| {
            let inserted = tx
                .prepare_cached(
                    "INSERT INTO workflows
                         (id, component_sha256, input, status, run_id, owner_pid, owner_host,
                          lease_expires_at, created_at, updated_at, grants, queue, deployment)
                     SELECT ?2, ?3, input, 'queued', '', 0, '', 0, ?4, ?4, grants, queue,
                            coalesce(?5, deployment)
                     FROM workflows WHERE id = ?1
                     ON CONFLICT (id) DO NOTHING",
                )?
                .execute(params![
                    fork.source,
                    fork.id,
                    fork.component_sha256,
                    now,
                    fork.deployment
                ])?;
            if inserted == 0 {
                let source_exists = tx
                    .prepare_cached("SELECT 1 FROM workflows WHERE id = ?1")?
                    .exists([fork.source])?;
                return Ok(Err(if source_exists {
                    StoreError::WorkflowExists {
                        id: fork.id.to_owned(),
                    }
                } else {
                    StoreError::UnknownWorkflow {
                        id: fork.source.to_owned(),
                    }
                }));
            }
            tx.prepare_cached(
                "INSERT INTO steps (workflow_id, step_key, sequence, name, status, output_json,
                     error, attempts, run_id, started_at, finished_at, failures, error_code,
                     input_fingerprint)
                 SELECT ?2, step_key, sequence, name, status, output_json, error, attempts,
                     run_id, started_at, finished_at, failures, error_code, input_fingerprint
                 FROM steps WHERE workflow_id = ?1 AND sequence <= ?3 AND status != 'running'",
            )?
            .execute(params![fork.source, fork.id, fork.keep_through])?;
            // What the copied steps published stands for the fork too: a
            // `durable.event:KEY` step's value is the event's value.
            tx.prepare_cached(
                "INSERT INTO published_events (workflow_id, key, value, step_key, published_at)
                 SELECT workflow_id, substr(name, 15), output_json, step_key, finished_at
                 FROM steps s
                 WHERE workflow_id = ?1 AND name LIKE 'durable.event:%' AND status = 'completed'
                   AND sequence = (SELECT max(sequence) FROM steps
                                   WHERE workflow_id = ?1 AND name = s.name
                                     AND status = 'completed')",
            )?
            .execute([fork.id])?;
            insert_event(tx, fork.id, "", "forked", fork.detail, now)?;
            Ok(Ok(tx
                .prepare_cached(&format!(
                    "SELECT {WORKFLOW_COLUMNS} FROM workflows WHERE id = ?1"
                ))?
                .query_row([fork.id], workflow_from_row)?))
        })
    }

    fn upgrade_workflow(&self, upgrade: &Upgrade<'_>) -> Result<bool, StoreError> {
        let now = now_millis();
        let observed = upgrade.observed;
        self.write(|tx| {
            let steps: i64 = tx
                .prepare_cached("SELECT count(*) FROM steps WHERE workflow_id = ?1")?
                .query_row([&observed.id], |row| row.get(0))?;
            if steps != upgrade.verified_steps as i64 {
                return Ok(Ok(false));
            }
            let switched = tx
                .prepare_cached(
                    "UPDATE workflows SET component_sha256 = ?3, updated_at = ?4,
                         run_id = coalesce(?8, run_id)
                     WHERE id = ?1 AND component_sha256 = ?2 AND status = ?5 AND run_id = ?6
                       AND lease_expires_at = ?7",
                )?
                .execute(params![
                    observed.id,
                    observed.component_sha256,
                    upgrade.to_sha256,
                    now,
                    observed.status.as_str(),
                    observed.run_id,
                    observed.lease_expires_at,
                    upgrade.new_run,
                ])?;
            if switched == 1 {
                // The update matched the observed run: it is still the owner.
                let (id, run_id) = (&observed.id, &observed.run_id);
                insert_event(tx, id, run_id, "upgraded", upgrade.detail, now)?;
            }
            Ok(Ok(switched == 1))
        })
    }

    fn suspend_unclaimed(
        &self,
        observed: &WorkflowRecord,
        reason: &str,
    ) -> Result<bool, StoreError> {
        let now = now_millis();
        self.write(|tx| {
            let suspended = tx
                .prepare_cached(
                    "UPDATE workflows SET status = 'suspended', error = ?5, error_code = NULL,
                         output = NULL, wake_at = NULL, lease_expires_at = 0, updated_at = ?6
                     WHERE id = ?1 AND status = ?2 AND run_id = ?3 AND lease_expires_at = ?4
                       AND component_sha256 = ?7",
                )?
                .execute(params![
                    observed.id,
                    observed.status.as_str(),
                    observed.run_id,
                    observed.lease_expires_at,
                    reason,
                    now,
                    observed.component_sha256,
                ])?;
            if suspended == 1 {
                insert_event(tx, &observed.id, &observed.run_id, "suspended", reason, now)?;
            }
            Ok(Ok(suspended == 1))
        })
    }

    fn queue_depths(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.read(|| {
            self.conn
                .prepare_cached(
                    "SELECT queue, count(*) FROM workflows INDEXED BY workflows_queued
                     WHERE status = 'queued' GROUP BY queue ORDER BY queue",
                )?
                .query_map([], |row| {
                    Ok((row.get(0)?, row.get::<_, i64>(1)?.max(0) as u64))
                })?
                .collect()
        })
    }

    fn add_schedule(&self, schedule: &ScheduleRecord) -> Result<bool, StoreError> {
        self.write(|tx| {
            let added = tx
                .prepare_cached(
                    "INSERT INTO schedules
                         (name, cron, deployment, input, queue, next_tick, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                     ON CONFLICT (name) DO NOTHING",
                )?
                .execute(params![
                    schedule.name,
                    schedule.cron,
                    schedule.deployment,
                    schedule.input,
                    schedule.queue,
                    schedule.next_tick,
                    schedule.created_at
                ])?;
            Ok(Ok(added == 1))
        })
    }

    fn remove_schedule(&self, name: &str) -> Result<bool, StoreError> {
        self.write(|tx| {
            let removed = tx
                .prepare_cached("DELETE FROM schedules WHERE name = ?1")?
                .execute([name])?;
            Ok(Ok(removed == 1))
        })
    }

    fn schedules(&self) -> Result<Vec<ScheduleRecord>, StoreError> {
        self.read(|| {
            self.conn
                .prepare_cached(
                    "SELECT name, cron, deployment, input, queue, next_tick, created_at
                     FROM schedules ORDER BY next_tick, name",
                )?
                .query_map([], |row| {
                    Ok(ScheduleRecord {
                        name: row.get(0)?,
                        cron: row.get(1)?,
                        deployment: row.get(2)?,
                        input: row.get(3)?,
                        queue: row.get(4)?,
                        next_tick: row.get(5)?,
                        created_at: row.get(6)?,
                    })
                })?
                .collect()
        })
    }

    fn advance_schedule(&self, name: &str, from: Millis, to: Millis) -> Result<bool, StoreError> {
        self.write(|tx| {
            let moved = tx
                .prepare_cached(
                    "UPDATE schedules SET next_tick = ?3 WHERE name = ?1 AND next_tick = ?2",
                )?
                .execute(params![name, from, to])?;
            Ok(Ok(moved == 1))
        })
    }

    fn status_counts(&self) -> Result<Vec<(WorkflowStatus, u64)>, StoreError> {
        self.read(|| {
            let mut statement = self.conn.prepare_cached(
                "SELECT status, count(*) FROM workflows INDEXED BY workflows_by_status
                 GROUP BY status",
            )?;
            let rows = statement.query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, i64>(1)?.max(0) as u64,
                ))
            })?;
            let mut counts = Vec::new();
            for row in rows {
                let (status, count) = row?;
                // A status this binary does not know (a newer schema's) is
                // left out rather than failing the whole count.
                if let Some(status) = WorkflowStatus::parse(&status) {
                    counts.push((status, count));
                }
            }
            Ok(counts)
        })
    }

    fn enqueue_workflow(&self, workflow: &QueuedWorkflow<'_>) -> Result<Enqueued, StoreError> {
        let now = now_millis();
        self.write(|tx| {
            let inserted = tx
                .prepare_cached(
                    "INSERT INTO workflows
                         (id, component_sha256, input, status, run_id, owner_pid, owner_host,
                          lease_expires_at, created_at, updated_at, grants, queue, deployment)
                     VALUES (?1, ?2, ?3, 'queued', '', 0, '', 0, ?4, ?4, ?5, ?6, ?7)
                     ON CONFLICT (id) DO NOTHING",
                )?
                .execute(params![
                    workflow.id,
                    workflow.component_sha256,
                    workflow.input,
                    now,
                    workflow.grants,
                    workflow.queue,
                    workflow.deployment,
                ])?;
            let record = tx
                .prepare_cached(&format!(
                    "SELECT {WORKFLOW_COLUMNS} FROM workflows WHERE id = ?1"
                ))?
                .query_row([workflow.id], workflow_from_row)?;
            Ok(Ok(if inserted == 1 {
                Enqueued::Created(Box::new(record))
            } else {
                Enqueued::Existing(Box::new(record))
            }))
        })
    }

    fn ready_workflows(
        &self,
        queue: &str,
        now: Millis,
        limit: u32,
        skip: &HashSet<String>,
    ) -> Result<Vec<WorkflowRecord>, StoreError> {
        // Enough to leave `skip` out afterwards.
        let wanted = i64::from(limit) + skip.len() as i64;
        let ready: Vec<WorkflowRecord> = self.read(|| {
            // Three index scans (the partial indexes in `schema`, named:
            // the planner would rather take the one on status), oldest
            // first within each: taken-over and due ones before new ones, so
            // that work already begun finishes first.
            self.conn
                .prepare_cached(&format!(
                    "SELECT {WORKFLOW_COLUMNS} FROM (
                         SELECT * FROM workflows INDEXED BY workflows_leases
                             WHERE status = 'running' AND lease_expires_at < ?2 AND queue = ?1
                         UNION ALL
                         SELECT * FROM workflows INDEXED BY workflows_waking
                             WHERE status IN ('sleeping', 'waiting') AND wake_at <= ?2
                               AND queue = ?1
                         UNION ALL
                         SELECT * FROM (SELECT * FROM workflows
                             WHERE status = 'queued' AND queue = ?1
                             ORDER BY created_at LIMIT ?3)
                     ) LIMIT ?3"
                ))?
                .query_map(params![queue, now, wanted], workflow_from_row)?
                .collect()
        })?;
        Ok(ready
            .into_iter()
            .filter(|workflow| !skip.contains(&workflow.id))
            .take(limit as usize)
            .collect())
    }

    fn running_on_host(
        &self,
        queue: &str,
        host: &str,
        boot_id: &str,
        now: Millis,
        limit: u32,
    ) -> Result<Vec<WorkflowRecord>, StoreError> {
        self.read(|| {
            self.conn
                .prepare_cached(&format!(
                    "SELECT {WORKFLOW_COLUMNS} FROM workflows INDEXED BY workflows_leases
                     WHERE status = 'running' AND lease_expires_at >= ?4 AND queue = ?1
                       AND owner_host = ?2 AND owner_boot = ?3
                     ORDER BY lease_expires_at LIMIT ?5"
                ))?
                .query_map(params![queue, host, boot_id, now, limit], workflow_from_row)?
                .collect()
        })
    }

    fn next_wake(&self, queue: &str) -> Result<Option<Millis>, StoreError> {
        self.read(|| {
            self.conn
                .prepare_cached(
                    "SELECT min(wake_at) FROM workflows INDEXED BY workflows_waking
                     WHERE status IN ('sleeping', 'waiting') AND queue = ?1",
                )?
                .query_row([queue], |row| row.get(0))
        })
    }

    fn next_lease_expiry(&self, queue: &str, now: Millis) -> Result<Option<Millis>, StoreError> {
        self.read(|| {
            self.conn
                .prepare_cached(
                    "SELECT min(lease_expires_at) FROM workflows
                     WHERE status = 'running' AND queue = ?1 AND lease_expires_at > ?2",
                )?
                .query_row(params![queue, now], |row| row.get(0))
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
            if let Err(lost) = Self::check_owner(tx, id, run_id)? {
                return Ok(Err(lost));
            }
            // A cancellation asked for since the run last read it: unloading
            // would leave it to nobody. The run ends the workflow instead.
            let unloaded = tx
                .prepare_cached(
                    "UPDATE workflows SET status = ?2, wake_at = ?3, lease_expires_at = 0,
                         updated_at = ?4, takeovers = 0, waiting_for = ?5
                     WHERE id = ?1 AND (cancel_requested = 0 OR ?6)",
                )?
                .execute(params![
                    id,
                    status.as_str(),
                    unload.wake_at,
                    now,
                    waiting_for,
                    unload.despite_cancel
                ])?;
            if unloaded == 0 {
                return Ok(Ok(false));
            }
            // What it waits for came after this run last looked (a signal
            // or a child's end only wakes workflows already waiting):
            // resume at once.
            let came = match unload.waiting_for {
                None => false,
                Some(WaitingFor::Signal(name)) => tx
                    .prepare_cached(
                        "SELECT EXISTS (SELECT 1 FROM signals INDEXED BY signals_untaken
                             WHERE workflow_id = ?1 AND name = ?2 AND taken_by IS NULL)",
                    )?
                    .query_row(params![id, name], |row| row.get(0))?,
                Some(WaitingFor::Child(child)) => tx
                    .prepare_cached(
                        "SELECT EXISTS (SELECT 1 FROM workflows WHERE id = ?1
                             AND status IN ('completed', 'failed', 'cancelled'))",
                    )?
                    .query_row([child], |row| row.get(0))?,
            };
            if came {
                tx.prepare_cached("UPDATE workflows SET wake_at = ?2 WHERE id = ?1")?
                    .execute(params![id, now])?;
            }
            Ok(Ok(true))
        })
    }

    fn children(&self, id: &str) -> Result<Vec<WorkflowRecord>, StoreError> {
        self.read(|| {
            self.conn
                .prepare_cached(&format!(
                    "SELECT {WORKFLOW_COLUMNS} FROM workflows INDEXED BY workflows_by_parent
                     WHERE parent_id = ?1 ORDER BY created_at, id"
                ))?
                .query_map([id], workflow_from_row)?
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
            let cancelled = tx
                .prepare_cached(
                    "UPDATE workflows SET status = 'cancelled', error = ?3, error_code = NULL,
                         output = NULL, wake_at = NULL, cancel_requested = 1, updated_at = ?4
                     WHERE id = ?1 AND status = ?2
                       AND status IN ('queued', 'sleeping', 'waiting', 'suspended')",
                )?
                .execute(params![id, status.as_str(), reason, now])?;
            if cancelled == 1 {
                insert_event(tx, id, "", "cancelled", &format!("while {status}"), now)?;
                Self::wake_waiters(tx, id, now)?;
            }
            Ok(Ok(cancelled == 1))
        })
    }

    fn release_workflow(&self, id: &str, run_id: &str) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.prepare_cached(
                "UPDATE workflows SET lease_expires_at = 0, takeovers = 0
                 WHERE id = ?1 AND run_id = ?2 AND status = 'running'",
            )?
            .execute(params![id, run_id])?;
            Ok(Ok(()))
        })
    }

    fn renew_leases(
        &self,
        runs: &[(String, String)],
        lease_until: Millis,
    ) -> Result<Vec<LeaseRenewal>, StoreError> {
        self.write(|tx| {
            let mut renew = tx.prepare_cached(
                "UPDATE workflows SET lease_expires_at = ?3
                 WHERE id = ?1 AND run_id = ?2 AND status = 'running'",
            )?;
            let mut cancel =
                tx.prepare_cached("SELECT cancel_requested FROM workflows WHERE id = ?1")?;
            let mut renewals = Vec::with_capacity(runs.len());
            for (id, run_id) in runs {
                let owned = renew.execute(params![id, run_id, lease_until])? == 1;
                let cancel_requested = cancel
                    .query_row([id], |row| row.get(0))
                    .optional()?
                    .unwrap_or(false);
                renewals.push(LeaseRenewal {
                    owned,
                    cancel_requested,
                });
            }
            Ok(Ok(renewals))
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
        self.write(|tx| {
            if let Err(lost) = Self::check_owner(tx, workflow_id, run_id)? {
                return Ok(Err(lost));
            }
            let inserted = tx
                .prepare_cached(
                    "INSERT INTO step_attempts
                         (workflow_id, step_key, attempt, error, run_id, ended_at, backoff_ms)
                     SELECT workflow_id, step_key, attempts, ?4, run_id, ?5, ?6 FROM steps
                     WHERE workflow_id = ?1 AND step_key = ?2 AND run_id = ?3
                       AND status = 'running' AND attempts > failures",
                )?
                .execute(params![
                    workflow_id,
                    key.as_str(),
                    run_id,
                    error,
                    now,
                    backoff_ms
                ])?;
            if inserted == 0 {
                return Ok(Err(StoreError::Backend(format!(
                    "step {key} of workflow {workflow_id} has no attempt in progress to record"
                ))));
            }
            tx.prepare_cached(
                "UPDATE steps SET failures = failures + 1, error = ?3
                 WHERE workflow_id = ?1 AND step_key = ?2",
            )?
            .execute(params![workflow_id, key.as_str(), error])?;
            Ok(Ok(()))
        })
    }

    fn begin_retry(
        &self,
        workflow_id: &str,
        run_id: &str,
        key: &StepKey,
    ) -> Result<(), StoreError> {
        self.write_unflushed(|tx| {
            if let Err(lost) = Self::check_owner(tx, workflow_id, run_id)? {
                return Ok(Err(lost));
            }
            tx.prepare_cached(
                "UPDATE steps SET attempts = attempts + 1
                 WHERE workflow_id = ?1 AND step_key = ?2 AND run_id = ?3 AND status = 'running'",
            )?
            .execute(params![workflow_id, key.as_str(), run_id])?;
            Ok(Ok(()))
        })
    }

    fn begin_steps(&self, workflow_id: &str, steps: &[StepBegin<'_>]) -> Result<(), StoreError> {
        let Some(run_id) = steps.first().map(|step| step.run_id) else {
            return Ok(());
        };
        self.write_unflushed(|tx| {
            if let Err(lost) = Self::check_owner(tx, workflow_id, run_id)? {
                return Ok(Err(lost));
            }
            // A step taken over from a dead run whose last attempt had begun
            // (not one waiting out a retry's backoff): that attempt goes into
            // the attempt history as interrupted before the row is reused.
            let mut interrupted = tx.prepare_cached(
                "INSERT OR IGNORE INTO step_attempts
                     (workflow_id, step_key, attempt, error, run_id, ended_at, interrupted)
                 SELECT workflow_id, step_key, attempts,
                        'interrupted: the run executing it died', run_id, ?3, 1
                 FROM steps WHERE workflow_id = ?1 AND step_key = ?2 AND status = 'running'
                   AND attempts > failures",
            )?;
            // A finished step is never reopened: the upsert only touches a
            // row that is still running.
            let mut upsert = tx.prepare_cached(
                "INSERT INTO steps (workflow_id, step_key, sequence, name, status, attempts,
                                    run_id, started_at, input_fingerprint)
                 VALUES (?1, ?2, ?3, ?4, 'running', ?5, ?6, ?7, ?8)
                 ON CONFLICT (workflow_id, step_key) DO UPDATE SET
                     attempts = excluded.attempts, run_id = excluded.run_id,
                     started_at = excluded.started_at,
                     input_fingerprint = excluded.input_fingerprint
                 WHERE steps.status = 'running' AND excluded.attempts > steps.attempts",
            )?;
            for step in steps {
                if step.attempt > 1 {
                    interrupted.execute(params![
                        workflow_id,
                        step.key.as_str(),
                        step.started_at
                    ])?;
                }
                let written = upsert.execute(params![
                    workflow_id,
                    step.key.as_str(),
                    step.sequence,
                    step.name,
                    step.attempt,
                    step.run_id,
                    step.started_at,
                    step.input_fingerprint
                ])?;
                if written == 0 {
                    return Ok(Err(StoreError::Backend(format!(
                        "step {} of workflow {workflow_id} was recorded by another run since this \
                         one read the history (finished, or begun again)",
                        step.key
                    ))));
                }
            }
            Ok(Ok(()))
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
        self.write(|tx| {
            if let Err(refused) = Self::finish_step_in(tx, workflow_id, run_id, key, outcome, log)?
            {
                return Ok(Err(refused));
            }
            let Some(effect) = effect else {
                return Ok(Ok(()));
            };
            match effect {
                StepEffect::TakeSignal { seq } => {
                    let taken = tx
                        .prepare_cached(
                            "UPDATE signals SET taken_by = ?3
                             WHERE seq = ?1 AND workflow_id = ?2 AND taken_by IS NULL",
                        )?
                        .execute(params![seq, workflow_id, key.as_str()])?;
                    if taken == 0 {
                        return Ok(Err(StoreError::Backend(format!(
                            "signal {seq} of workflow {workflow_id} was taken already"
                        ))));
                    }
                }
                StepEffect::StartChild(child) => {
                    if let Err(taken) = Self::insert_child(tx, workflow_id, child)? {
                        return Ok(Err(taken));
                    }
                }
                StepEffect::Publish { key: event, value } => {
                    tx.prepare_cached(
                        "INSERT INTO published_events
                             (workflow_id, key, value, step_key, published_at)
                         VALUES (?1, ?2, ?3, ?4, ?5)
                         ON CONFLICT (workflow_id, key) DO UPDATE SET value = excluded.value,
                             step_key = excluded.step_key, published_at = excluded.published_at",
                    )?
                    .execute(params![
                        workflow_id,
                        event,
                        value,
                        key.as_str(),
                        now_millis()
                    ])?;
                }
            }
            Ok(Ok(()))
        })
    }

    fn send_signal(&self, signal: &SignalRecord) -> Result<SignalSent, StoreError> {
        self.write(|tx| {
            let status: Option<String> = tx
                .prepare_cached("SELECT status FROM workflows WHERE id = ?1")?
                .query_row([&signal.workflow_id], |row| row.get(0))
                .optional()?;
            let status = match status.as_deref().map(WorkflowStatus::parse) {
                None => {
                    return Ok(Err(StoreError::UnknownWorkflow {
                        id: signal.workflow_id.clone(),
                    }));
                }
                Some(Some(status)) => status,
                Some(None) => return Ok(Err(StoreError::Backend("unknown status".into()))),
            };
            if let Some(sent) = Self::signal_by_id(tx, &signal.workflow_id, &signal.signal_id)? {
                return Ok(Ok(SignalSent::Duplicate(sent)));
            }
            if status.is_final() {
                return Ok(Err(StoreError::WorkflowEnded {
                    id: signal.workflow_id.clone(),
                    status,
                }));
            }
            tx.prepare_cached(
                "INSERT INTO signals (workflow_id, name, signal_id, value, sent_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![
                signal.workflow_id,
                signal.name,
                signal.signal_id,
                signal.value,
                signal.sent_at
            ])?;
            // A workflow waiting for it is resumed to take it.
            tx.prepare_cached(
                "UPDATE workflows SET wake_at = ?2
                 WHERE id = ?1 AND status = 'waiting' AND waiting_for = ?3",
            )?
            .execute(params![
                signal.workflow_id,
                signal.sent_at,
                WaitingFor::Signal(signal.name.clone()).stored()
            ])?;
            let sent = Self::signal_by_id(tx, &signal.workflow_id, &signal.signal_id)?
                .expect("the signal was just inserted");
            Ok(Ok(SignalSent::Kept(sent)))
        })
    }

    fn next_signal(
        &self,
        workflow_id: &str,
        name: &str,
    ) -> Result<Option<SignalRecord>, StoreError> {
        self.read(|| {
            self.conn
                .prepare_cached(&format!(
                    "SELECT {SIGNAL_COLUMNS} FROM signals INDEXED BY signals_untaken
                     WHERE workflow_id = ?1 AND name = ?2 AND taken_by IS NULL
                     ORDER BY seq LIMIT 1"
                ))?
                .query_row([workflow_id, name], signal_from_row)
                .optional()
        })
    }

    fn signals(&self, workflow_id: &str) -> Result<Vec<SignalRecord>, StoreError> {
        self.read(|| {
            self.conn
                .prepare_cached(&format!(
                    "SELECT {SIGNAL_COLUMNS} FROM signals WHERE workflow_id = ?1 ORDER BY seq"
                ))?
                .query_map([workflow_id], signal_from_row)?
                .collect()
        })
    }

    fn published_events(&self, workflow_id: &str) -> Result<Vec<PublishedEvent>, StoreError> {
        self.read(|| {
            self.conn
                .prepare_cached(
                    "SELECT key, value, step_key, published_at FROM published_events
                     WHERE workflow_id = ?1 ORDER BY key",
                )?
                .query_map([workflow_id], |row| {
                    Ok(PublishedEvent {
                        key: row.get(0)?,
                        value: row.get(1)?,
                        step_key: StepKey::from_stored(row.get(2)?),
                        published_at: row.get(3)?,
                    })
                })?
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
        let now = now_millis();
        self.write(|tx| {
            if let Err(lost) = Self::check_owner(tx, id, run_id)? {
                return Ok(Err(lost));
            }
            insert_log(tx, id, end.log)?;
            let reason = error.unwrap_or("the workflow ended");
            for key in end.interrupted_steps {
                tx.prepare_cached(
                    "INSERT OR IGNORE INTO step_attempts
                         (workflow_id, step_key, attempt, error, run_id, ended_at, interrupted)
                     SELECT workflow_id, step_key, attempts, ?3, run_id, ?4, 1 FROM steps
                     WHERE workflow_id = ?1 AND step_key = ?2 AND status = 'running'
                       AND attempts > failures",
                )?
                .execute(params![id, key.as_str(), reason, now])?;
            }
            if end.status == WorkflowStatus::Suspended {
                insert_event(tx, id, run_id, "suspended", reason, now)?;
            }
            tx.prepare_cached(
                "UPDATE workflows SET status = ?3, output = ?4, error = ?5, updated_at = ?6,
                     error_code = ?7
                 WHERE id = ?1 AND run_id = ?2",
            )?
            .execute(params![
                id,
                run_id,
                end.status.as_str(),
                output,
                error,
                now,
                code
            ])?;
            if end.status.is_final() {
                Self::wake_waiters(tx, id, now)?;
            }
            Ok(Ok(()))
        })
    }

    fn append_log(&self, id: &str, run_id: &str, log: &[LogLine]) -> Result<(), StoreError> {
        if log.is_empty() {
            return Ok(());
        }
        self.write(|tx| {
            if let Err(lost) = Self::check_owner(tx, id, run_id)? {
                return Ok(Err(lost));
            }
            insert_log(tx, id, log)?;
            Ok(Ok(()))
        })
    }

    fn logs(&self, id: &str, after_seq: i64, limit: u32) -> Result<Vec<LogRecord>, StoreError> {
        self.read(|| {
            self.conn
                .prepare_cached(
                    "SELECT seq, at, stream, step_key, line FROM workflow_logs
                     WHERE workflow_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
                )?
                .query_map(params![id, after_seq, limit], log_record)?
                .collect()
        })
    }

    fn stream_logs(&self, id: &str, stream: LogStream) -> Result<Vec<LogRecord>, StoreError> {
        self.read(|| {
            self.conn
                .prepare_cached(
                    "SELECT seq, at, stream, step_key, line FROM workflow_logs
                     WHERE workflow_id = ?1 AND stream = ?2 ORDER BY seq",
                )?
                .query_map(params![id, stream.as_str()], log_record)?
                .collect()
        })
    }
}

/// A row of `SELECT seq, at, stream, step_key, line FROM workflow_logs`.
fn log_record(row: &rusqlite::Row<'_>) -> rusqlite::Result<LogRecord> {
    let stream: String = row.get(2)?;
    Ok(LogRecord {
        seq: row.get(0)?,
        line: LogLine {
            at: row.get(1)?,
            // The table's CHECK admits only these names.
            stream: LogStream::parse(&stream).unwrap_or(LogStream::Log),
            step: row.get::<_, Option<String>>(3)?.map(StepKey::from_stored),
            text: row.get(4)?,
        },
    })
}

/// Append `log` to workflow `id`'s log, dropping the lines that fall out of
/// the last [`LOG_LINES_KEPT`].
fn insert_log(tx: &Connection, id: &str, log: &[LogLine]) -> rusqlite::Result<()> {
    if log.is_empty() {
        return Ok(());
    }
    let last: i64 = tx
        .prepare_cached("SELECT coalesce(max(seq), 0) FROM workflow_logs WHERE workflow_id = ?1")?
        .query_row([id], |row| row.get(0))?;
    let mut insert = tx.prepare_cached(
        "INSERT INTO workflow_logs (workflow_id, seq, at, stream, step_key, line)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    let mut seq = last;
    for line in log {
        seq += 1;
        insert.execute(params![
            id,
            seq,
            line.at,
            line.stream.as_str(),
            line.step.as_ref().map(StepKey::as_str),
            line.text
        ])?;
    }
    if seq > LOG_LINES_KEPT {
        tx.prepare_cached("DELETE FROM workflow_logs WHERE workflow_id = ?1 AND seq <= ?2")?
            .execute(params![id, seq - LOG_LINES_KEPT])?;
    }
    Ok(())
}

/// The conflict for a write that found workflow `id` owned by another run.
fn lost_ownership(tx: &Connection, id: &str) -> rusqlite::Result<StoreError> {
    let owner: Option<(String, String)> = tx
        .prepare_cached("SELECT run_id, status FROM workflows WHERE id = ?1")?
        .query_row([id], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?;
    Ok(super::lost_ownership(id, owner))
}

const SIGNAL_COLUMNS: &str = "seq, workflow_id, name, signal_id, value, sent_at, taken_by";

fn signal_from_row(row: &Row<'_>) -> rusqlite::Result<SignalRecord> {
    Ok(SignalRecord {
        seq: row.get(0)?,
        workflow_id: row.get(1)?,
        name: row.get(2)?,
        signal_id: row.get(3)?,
        value: row.get(4)?,
        sent_at: row.get(5)?,
        taken_by: row.get::<_, Option<String>>(6)?.map(StepKey::from_stored),
    })
}

fn workflow_from_row(row: &Row<'_>) -> rusqlite::Result<WorkflowRecord> {
    Ok(WorkflowRecord {
        id: row.get(0)?,
        component_sha256: row.get(1)?,
        input: row.get(2)?,
        status: parse_column(row, 3, WorkflowStatus::parse)?,
        output: row.get(4)?,
        error: row.get(5)?,
        run_id: row.get(6)?,
        owner: Owner {
            pid: row.get(7)?,
            host: row.get(8)?,
            boot_id: row.get(13)?,
            pid_ns: row.get(14)?,
            started: row.get(15)?,
        },
        lease_expires_at: row.get(9)?,
        cancel_requested: row.get(10)?,
        created_at: row.get(11)?,
        updated_at: row.get(12)?,
        takeovers: row.get(16)?,
        progress_mark: row.get(17)?,
        grants: row.get(18)?,
        error_code: row.get(19)?,
        queue: row.get(20)?,
        deployment: row.get(21)?,
        wake_at: row.get(22)?,
        parent_id: row.get(23)?,
        waiting_for: row
            .get::<_, Option<String>>(24)?
            .as_deref()
            .and_then(WaitingFor::from_stored),
    })
}

fn step_from_row(row: &Row<'_>) -> rusqlite::Result<StepRecord> {
    Ok(StepRecord {
        key: StepKey::from_stored(row.get(0)?),
        sequence: row.get(1)?,
        name: row.get(2)?,
        status: parse_column(row, 3, StepStatus::parse)?,
        output_json: row.get(4)?,
        error: row.get(5)?,
        attempts: row.get(6)?,
        run_id: row.get(7)?,
        started_at: row.get(8)?,
        finished_at: row.get::<_, Option<Millis>>(9)?,
        failures: row.get(10)?,
        error_code: row.get(11)?,
        input_fingerprint: row.get(12)?,
    })
}

fn parse_column<T>(
    row: &Row<'_>,
    index: usize,
    parse: fn(&str) -> Option<T>,
) -> rusqlite::Result<T> {
    let text: String = row.get(index)?;
    parse(&text).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            index,
            rusqlite::types::Type::Text,
            format!("unknown status `{text}`").into(),
        )
    })
}

/// Run `op`, retrying with exponential backoff while SQLite reports the
/// database busy or locked; any other error is returned at once.
fn with_retry<T>(mut op: impl FnMut() -> rusqlite::Result<T>) -> Result<T, StoreError> {
    let mut backoff = BACKOFF_START;
    for attempt in 1..=BUSY_RETRIES {
        match op() {
            Err(e) if is_busy(&e) && attempt < BUSY_RETRIES => {
                thread::sleep(backoff);
                backoff = (backoff * 2).min(BACKOFF_CAP);
            }
            Err(e) if is_busy(&e) => return Err(StoreError::Busy { attempts: attempt }),
            other => return other.map_err(store_error),
        }
    }
    unreachable!("the last attempt always returns")
}

fn is_busy(error: &rusqlite::Error) -> bool {
    matches!(
        error.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

fn is_not_a_database(reason: &str) -> bool {
    reason.contains("not a database") || reason.contains("malformed")
}

/// The store's error for a SQLite error; [`SqliteStore::explain`] adds the
/// path where the variant has one.
fn store_error(error: rusqlite::Error) -> StoreError {
    match error.sqlite_error_code() {
        Some(ErrorCode::ReadOnly) => StoreError::ReadOnly(error.to_string()),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            StoreError::Busy { attempts: 1 }
        }
        Some(ErrorCode::DiskFull) => StoreError::DiskFull {
            path: String::new(),
        },
        Some(ErrorCode::SystemIoFailure) => StoreError::Io {
            path: String::new(),
            reason: error.to_string(),
        },
        Some(ErrorCode::OutOfMemory) => StoreError::HostMemory {
            what: "a database statement",
            reason: error.to_string(),
        },
        _ => StoreError::Backend(error.to_string()),
    }
}

/// Why `path` could not be opened, telling a missing directory and an
/// exhausted file table apart from the rest (SQLite says "unable to open"
/// for all of them).
fn open_error(path: &Path, error: rusqlite::Error) -> StoreError {
    let shown = path.display().to_string();
    const EMFILE: i32 = 24;
    const ENFILE: i32 = 23;
    // The kernel finds a free descriptor before it looks at the path, so a
    // plain open reports EMFILE whether or not the file exists.
    match std::fs::File::open(path)
        .err()
        .and_then(|e| e.raw_os_error())
    {
        Some(EMFILE | ENFILE) => StoreError::TooManyFiles { path: shown },
        _ => StoreError::Open {
            path: shown,
            reason: error.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_workflow_column_count_matches_the_columns() {
        assert_eq!(WORKFLOW_COLUMNS.split(',').count(), WORKFLOW_COLUMN_COUNT);
    }

    #[test]
    fn version_6_keeps_the_log_and_admits_http_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v5.db");
        drop(SqliteStore::open(&path).unwrap());
        // The log table as version 5 had it, with a line in it.
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "DROP TABLE workflow_logs;
             CREATE TABLE workflow_logs (
                 workflow_id TEXT NOT NULL,
                 seq         INTEGER NOT NULL,
                 at          INTEGER NOT NULL,
                 stream      TEXT NOT NULL CHECK (stream IN ('stdout', 'stderr', 'log')),
                 step_key    TEXT,
                 line        TEXT NOT NULL,
                 PRIMARY KEY (workflow_id, seq)
             ) WITHOUT ROWID;
             INSERT INTO workflow_logs VALUES ('wf', 1, 10, 'stdout', 'a#000001', 'hello');
             PRAGMA user_version = 5;",
        )
        .unwrap();
        assert!(
            conn.execute(
                "INSERT INTO workflow_logs VALUES ('wf', 2, 11, 'http', NULL, 'GET')",
                []
            )
            .is_err()
        );
        drop(conn);

        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
        let kept = store.logs("wf", 0, 10).unwrap();
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].line.text, "hello");
        assert_eq!(kept[0].line.step, Some(StepKey::new("a", 1)));
        store
            .conn
            .execute(
                "INSERT INTO workflow_logs VALUES ('wf', 2, 11, 'http', NULL, 'GET http://x/: 200')",
                [],
            )
            .unwrap();
        let http = store.stream_logs("wf", LogStream::Http).unwrap();
        assert_eq!(http.len(), 1);
        assert_eq!(http[0].line.text, "GET http://x/: 200");
    }
}
