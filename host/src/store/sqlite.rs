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

use std::path::Path;
use std::thread;
use std::time::Duration;

use rusqlite::{
    Connection, ErrorCode, OptionalExtension, Row, Transaction, TransactionBehavior, params,
};

use super::{
    AttemptRecord, CheckpointStore, Claim, LeaseRenewal, Millis, NewWorkflow, Outcome, Owner,
    StepBegin, StepKey, StepRecord, StepStatus, StoreError, WorkflowEnd, WorkflowRecord,
    WorkflowStatus, WorkflowSummary, now_millis,
};

/// Bumped whenever the tables change; older hosts refuse newer files.
const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS workflows (
    id               TEXT PRIMARY KEY NOT NULL,
    component_sha256 TEXT NOT NULL,
    input            TEXT NOT NULL,
    status           TEXT NOT NULL
                     CHECK (status IN ('running', 'completed', 'failed', 'cancelled')),
    output           TEXT,
    error            TEXT,
    run_id           TEXT NOT NULL,
    owner_pid        INTEGER NOT NULL,
    owner_host       TEXT NOT NULL,
    lease_expires_at INTEGER NOT NULL,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL
);
-- Clustered on its key and without a second index: every page a step
-- touches is one more page its commit writes and syncs. (Sequences are
-- unique per workflow by construction: one owner assigns them in order.)
CREATE TABLE IF NOT EXISTS steps (
    workflow_id TEXT NOT NULL REFERENCES workflows (id),
    step_key    TEXT NOT NULL,
    sequence    INTEGER NOT NULL,
    name        TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('running', 'completed', 'failed')),
    output_json TEXT,
    error       TEXT,
    attempts    INTEGER NOT NULL,
    run_id      TEXT NOT NULL,
    started_at  INTEGER NOT NULL,
    finished_at INTEGER,
    PRIMARY KEY (workflow_id, step_key)
) WITHOUT ROWID;
-- Attempts of a step that did not end it: failed tries before a retry, and
-- executions interrupted by the death of their run.
CREATE TABLE IF NOT EXISTS step_attempts (
    workflow_id TEXT NOT NULL,
    step_key    TEXT NOT NULL,
    attempt     INTEGER NOT NULL,
    error       TEXT NOT NULL,
    run_id      TEXT NOT NULL,
    ended_at    INTEGER NOT NULL,
    PRIMARY KEY (workflow_id, step_key, attempt)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS workflows_by_status ON workflows (status);
";

const WORKFLOW_COLUMNS: &str = "id, component_sha256, input, status, output, error, run_id, \
     owner_pid, owner_host, lease_expires_at, cancel_requested, created_at, updated_at";

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
}

impl SqliteStore {
    /// Open (creating if needed) the database at `path` and its tables.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let store = Self::connect(path)?;
        store.create_schema().map_err(|e| store.explain(e))?;
        Ok(store)
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
        let conn = Connection::open(path).map_err(|e| StoreError::Open {
            path: shown,
            reason: e.to_string(),
        })?;
        let store = Self {
            conn,
            path: path.to_owned(),
        };
        store.configure().map_err(|e| store.explain(e))?;
        Ok(store)
    }

    /// Name the file when SQLite finds that it is not a database.
    fn explain(&self, error: StoreError) -> StoreError {
        match error {
            StoreError::Backend(reason) if is_not_a_database(&reason) => StoreError::NotADatabase {
                path: self.path.display().to_string(),
                reason,
            },
            other => other,
        }
    }

    fn configure(&self) -> Result<(), StoreError> {
        self.conn.busy_timeout(BUSY_TIMEOUT).map_err(store_error)?;
        with_retry(|| {
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

    fn create_schema(&self) -> Result<(), StoreError> {
        // Up to date (every open after the first): no write, so no flush.
        let current = with_retry(|| {
            self.conn
                .query_row("PRAGMA user_version", [], |row| row.get::<_, i64>(0))
        })?;
        if current == SCHEMA_VERSION {
            return Ok(());
        }
        self.write(|tx| {
            let found: i64 = tx.query_row("PRAGMA user_version", [], |row| row.get(0))?;
            if found > SCHEMA_VERSION {
                return Ok(Err(StoreError::NewerSchema {
                    found,
                    supported: SCHEMA_VERSION,
                }));
            }
            tx.execute_batch(SCHEMA)?;
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
            Ok(Ok(()))
        })?
    }

    /// Run `body` in a `BEGIN IMMEDIATE` transaction and commit, retrying the
    /// whole transaction while the database is busy.
    fn write<T>(
        &self,
        mut body: impl FnMut(&Transaction<'_>) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        with_retry(|| {
            // The store never nests transactions, so the `&self` form is safe.
            let tx = Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)?;
            let value = body(&tx)?;
            tx.commit()?;
            Ok(value)
        })
    }

    /// Like [`Self::write`], with `synchronous=NORMAL` for this commit only.
    fn write_unflushed<T>(
        &self,
        body: impl FnMut(&Transaction<'_>) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        self.set_synchronous("NORMAL")?;
        let result = self.write(body);
        let restored = self.set_synchronous("FULL");
        let value = result?;
        restored?;
        Ok(value)
    }

    fn set_synchronous(&self, level: &str) -> Result<(), StoreError> {
        self.conn
            .pragma_update(None, "synchronous", level)
            .map_err(store_error)
    }
}

impl CheckpointStore for SqliteStore {
    fn reopen(&self) -> Result<Box<dyn CheckpointStore>, StoreError> {
        Ok(Box::new(Self::connect(&self.path)?))
    }

    fn workflow(&self, id: &str) -> Result<Option<WorkflowRecord>, StoreError> {
        with_retry(|| {
            self.conn
                .prepare_cached(&format!(
                    "SELECT {WORKFLOW_COLUMNS} FROM workflows WHERE id = ?1"
                ))?
                .query_row([id], workflow_from_row)
                .optional()
        })
    }

    fn steps(&self, workflow_id: &str) -> Result<Vec<StepRecord>, StoreError> {
        with_retry(|| {
            self.conn
                .prepare_cached(
                    "SELECT step_key, sequence, name, status, output_json, error, attempts,
                            run_id, started_at, finished_at
                     FROM steps WHERE workflow_id = ?1 ORDER BY sequence",
                )?
                .query_map([workflow_id], step_from_row)?
                .collect()
        })
    }

    fn attempts(&self, workflow_id: &str) -> Result<Vec<AttemptRecord>, StoreError> {
        with_retry(|| {
            self.conn
                .prepare_cached(
                    "SELECT step_key, attempt, error, run_id, ended_at FROM step_attempts
                     WHERE workflow_id = ?1 ORDER BY step_key, attempt",
                )?
                .query_map([workflow_id], |row| {
                    Ok(AttemptRecord {
                        key: StepKey::from_stored(row.get(0)?),
                        attempt: row.get(1)?,
                        error: row.get(2)?,
                        run_id: row.get(3)?,
                        ended_at: row.get(4)?,
                    })
                })?
                .collect()
        })
    }

    fn create_workflow(&self, workflow: &NewWorkflow<'_>) -> Result<(), StoreError> {
        let now = now_millis();
        let claim = workflow.claim;
        let inserted = self.write(|tx| {
            tx.prepare_cached(
                "INSERT INTO workflows
                     (id, component_sha256, input, status, run_id, owner_pid, owner_host,
                      lease_expires_at, created_at, updated_at)
                 VALUES (?1, ?2, ?3, 'running', ?4, ?5, ?6, ?7, ?8, ?8)
                 ON CONFLICT (id) DO NOTHING",
            )?
            .execute(params![
                workflow.id,
                workflow.component_sha256,
                workflow.input,
                claim.run_id,
                claim.owner.pid,
                claim.owner.host,
                claim.lease_until,
                now
            ])
        })?;
        if inserted == 0 {
            return Err(StoreError::WorkflowExists {
                id: workflow.id.to_owned(),
            });
        }
        Ok(())
    }

    fn claim_workflow(
        &self,
        id: &str,
        previous_run: &str,
        claim: &Claim<'_>,
        component_sha256: &str,
    ) -> Result<(), StoreError> {
        let now = now_millis();
        let claimed = self.write(|tx| {
            tx.prepare_cached(
                "UPDATE workflows SET run_id = ?3, owner_pid = ?4, owner_host = ?5,
                     lease_expires_at = ?6, component_sha256 = ?7, updated_at = ?8
                 WHERE id = ?1 AND run_id = ?2 AND status = 'running'",
            )?
            .execute(params![
                id,
                previous_run,
                claim.run_id,
                claim.owner.pid,
                claim.owner.host,
                claim.lease_until,
                component_sha256,
                now
            ])
        })?;
        if claimed == 0 {
            return Err(self.lost_ownership(id));
        }
        Ok(())
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
            Ok(LeaseRenewal {
                owned: renewed == 1,
                cancel_requested,
            })
        })
    }

    fn request_cancel(&self, id: &str) -> Result<WorkflowRecord, StoreError> {
        let workflow = self.write(|tx| {
            tx.prepare_cached(
                "UPDATE workflows SET cancel_requested = 1 WHERE id = ?1 AND status = 'running'",
            )?
            .execute([id])?;
            tx.prepare_cached(&format!(
                "SELECT {WORKFLOW_COLUMNS} FROM workflows WHERE id = ?1"
            ))?
            .query_row([id], workflow_from_row)
            .optional()
        })?;
        workflow.ok_or_else(|| StoreError::UnknownWorkflow { id: id.to_owned() })
    }

    fn list_workflows(
        &self,
        status: Option<WorkflowStatus>,
    ) -> Result<Vec<WorkflowSummary>, StoreError> {
        with_retry(|| {
            let mut statement = self.conn.prepare_cached(&format!(
                "SELECT {WORKFLOW_COLUMNS},
                        (SELECT count(*) FROM steps s WHERE s.workflow_id = w.id),
                        (SELECT count(*) FROM steps s WHERE s.workflow_id = w.id AND s.status = 'completed'),
                        (SELECT count(*) FROM steps s WHERE s.workflow_id = w.id AND s.status = 'failed'),
                        (SELECT count(*) FROM steps s WHERE s.workflow_id = w.id AND s.status = 'running')
                 FROM workflows w
                 WHERE ?1 IS NULL OR w.status = ?1
                 ORDER BY w.created_at DESC, w.id"
            ))?;
            let rows = statement.query_map([status.map(WorkflowStatus::as_str)], |row| {
                Ok(WorkflowSummary {
                    workflow: workflow_from_row(row)?,
                    steps: row.get(13)?,
                    completed_steps: row.get(14)?,
                    failed_steps: row.get(15)?,
                    running_steps: row.get(16)?,
                })
            })?;
            rows.collect()
        })
    }

    fn record_attempt(
        &self,
        workflow_id: &str,
        run_id: &str,
        key: &StepKey,
        error: &str,
    ) -> Result<(), StoreError> {
        let now = now_millis();
        let updated = self.write(|tx| {
            tx.prepare_cached(
                "INSERT INTO step_attempts (workflow_id, step_key, attempt, error, run_id, ended_at)
                 SELECT workflow_id, step_key, attempts, ?4, run_id, ?5 FROM steps
                 WHERE workflow_id = ?1 AND step_key = ?2 AND run_id = ?3 AND status = 'running'",
            )?
            .execute(params![workflow_id, key.as_str(), run_id, error, now])?;
            tx.prepare_cached(
                "UPDATE steps SET attempts = attempts + 1, error = ?4
                 WHERE workflow_id = ?1 AND step_key = ?2 AND run_id = ?3 AND status = 'running'",
            )?
            .execute(params![workflow_id, key.as_str(), run_id, error])
        })?;
        if updated == 0 {
            return Err(self.lost_ownership(workflow_id));
        }
        Ok(())
    }

    fn begin_steps(&self, workflow_id: &str, steps: &[StepBegin<'_>]) -> Result<(), StoreError> {
        self.write_unflushed(|tx| {
            // A step taken over from a dead run: its interrupted attempt
            // goes into the attempt history before the row is reused.
            let mut interrupted = tx.prepare_cached(
                "INSERT OR IGNORE INTO step_attempts
                     (workflow_id, step_key, attempt, error, run_id, ended_at)
                 SELECT workflow_id, step_key, attempts,
                        'interrupted: the run executing it died', run_id, ?3
                 FROM steps WHERE workflow_id = ?1 AND step_key = ?2 AND status = 'running'",
            )?;
            let mut insert = tx.prepare_cached(
                "INSERT INTO steps (workflow_id, step_key, sequence, name, status, attempts,
                                    run_id, started_at)
                 VALUES (?1, ?2, ?3, ?4, 'running', ?5, ?6, ?7)
                 ON CONFLICT (workflow_id, step_key) DO UPDATE SET
                     status = 'running', attempts = excluded.attempts,
                     run_id = excluded.run_id, started_at = excluded.started_at,
                     finished_at = NULL",
            )?;
            for step in steps {
                if step.attempt > 1 {
                    interrupted.execute(params![
                        workflow_id,
                        step.key.as_str(),
                        step.started_at
                    ])?;
                }
                insert.execute(params![
                    workflow_id,
                    step.key.as_str(),
                    step.sequence,
                    step.name,
                    step.attempt,
                    step.run_id,
                    step.started_at
                ])?;
            }
            Ok(())
        })
    }

    fn finish_step(
        &self,
        workflow_id: &str,
        run_id: &str,
        key: &StepKey,
        outcome: &Outcome,
    ) -> Result<(), StoreError> {
        let (status, output, error) = split_step_outcome(outcome);
        let now = now_millis();
        let updated = self.write(|tx| {
            tx.prepare_cached(
                "UPDATE steps SET status = ?4, output_json = ?5, error = ?6, finished_at = ?7
                 WHERE workflow_id = ?1 AND step_key = ?2 AND run_id = ?3 AND status = 'running'",
            )?
            .execute(params![
                workflow_id,
                key.as_str(),
                run_id,
                status.as_str(),
                output,
                error,
                now
            ])
        })?;
        if updated == 0 {
            return Err(self.lost_ownership(workflow_id));
        }
        Ok(())
    }

    fn finish_workflow(
        &self,
        id: &str,
        run_id: &str,
        end: &WorkflowEnd<'_>,
    ) -> Result<(), StoreError> {
        let (status, output, error) = match end.outcome {
            Ok(output) => (WorkflowStatus::Completed, Some(output.as_str()), None),
            Err(error) if end.cancelled => (WorkflowStatus::Cancelled, None, Some(error.as_str())),
            Err(error) => (WorkflowStatus::Failed, None, Some(error.as_str())),
        };
        let now = now_millis();
        let updated = self.write(|tx| {
            for key in end.failed_steps {
                tx.prepare_cached(
                    "UPDATE steps SET status = 'failed', error = ?4, finished_at = ?5
                     WHERE workflow_id = ?1 AND step_key = ?2 AND run_id = ?3
                       AND status = 'running'",
                )?
                .execute(params![id, key.as_str(), run_id, error, now])?;
            }
            tx.prepare_cached(
                "UPDATE workflows SET status = ?3, output = ?4, error = ?5, updated_at = ?6
                 WHERE id = ?1 AND run_id = ?2 AND status = 'running'",
            )?
            .execute(params![id, run_id, status.as_str(), output, error, now])
        })?;
        if updated == 0 {
            return Err(self.lost_ownership(id));
        }
        Ok(())
    }
}

impl SqliteStore {
    fn lost_ownership(&self, id: &str) -> StoreError {
        let owner = self
            .workflow(id)
            .ok()
            .flatten()
            .map_or_else(|| "(none: the workflow is gone)".to_owned(), |w| w.run_id);
        StoreError::LostOwnership {
            id: id.to_owned(),
            owner,
        }
    }
}

fn split_step_outcome(outcome: &Outcome) -> (StepStatus, Option<&str>, Option<&str>) {
    match outcome {
        Ok(output) => (StepStatus::Completed, Some(output.as_str()), None),
        Err(error) => (StepStatus::Failed, None, Some(error.as_str())),
    }
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
        },
        lease_expires_at: row.get(9)?,
        cancel_requested: row.get(10)?,
        created_at: row.get(11)?,
        updated_at: row.get(12)?,
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

fn store_error(error: rusqlite::Error) -> StoreError {
    match error.sqlite_error_code() {
        Some(ErrorCode::ReadOnly) => StoreError::ReadOnly(error.to_string()),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            StoreError::Busy { attempts: 1 }
        }
        _ => StoreError::Backend(error.to_string()),
    }
}
