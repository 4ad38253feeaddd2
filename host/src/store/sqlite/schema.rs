//! The tables, and how an older database is brought up to date.
//!
//! A new database gets [`SCHEMA`]; one made by an older build is upgraded by
//! the [`MIGRATIONS`] after its version, in one transaction. Every table
//! change bumps [`SCHEMA_VERSION`], and a build refuses a database newer
//! than it knows.

/// Bumped whenever the tables change; older hosts refuse newer files.
pub const SCHEMA_VERSION: i64 = 6;

/// The log table, created alike by [`SCHEMA`] and the version 3 and 6
/// migrations.
macro_rules! workflow_logs_table {
    () => {
        "
-- What a workflow's guest printed (stdout, stderr), logged, and the HTTP
-- requests it made, by line, in the order it happened; written with the
-- checkpoint that follows it.
CREATE TABLE workflow_logs (
    workflow_id TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    at          INTEGER NOT NULL,
    stream      TEXT NOT NULL CHECK (stream IN ('stdout', 'stderr', 'log', 'http')),
    step_key    TEXT,
    line        TEXT NOT NULL,
    PRIMARY KEY (workflow_id, seq)
) WITHOUT ROWID;
"
    };
}

/// The schedule table, created alike by [`SCHEMA`] and the version 4
/// migration.
macro_rules! schedules_table {
    () => {
        "
-- Workflows started on a calendar: `serve` queues one workflow of
-- `deployment` per tick of `cron` (UTC), with a deterministic id.
CREATE TABLE schedules (
    name        TEXT PRIMARY KEY NOT NULL,
    cron        TEXT NOT NULL,
    deployment  TEXT NOT NULL,
    input       TEXT NOT NULL,
    queue       TEXT NOT NULL,
    -- The next tick to start, in ms since the epoch.
    next_tick   INTEGER NOT NULL,
    created_at  INTEGER NOT NULL
);
"
    };
}

/// The workflows table (as `$name`), created alike by [`SCHEMA`] and the
/// version 5 migration, which rebuilds it for a new status.
macro_rules! workflows_table {
    ($name:literal) => {
        concat!(
            "
CREATE TABLE ",
            $name,
            " (
    id               TEXT PRIMARY KEY NOT NULL,
    component_sha256 TEXT NOT NULL,
    input            TEXT NOT NULL,
    status           TEXT NOT NULL
                     CHECK (status IN ('queued', 'running', 'sleeping', 'waiting', 'completed',
                                       'failed', 'cancelled', 'suspended')),
    output           TEXT,
    error            TEXT,
    run_id           TEXT NOT NULL,
    owner_pid        INTEGER NOT NULL,
    owner_host       TEXT NOT NULL,
    lease_expires_at INTEGER NOT NULL,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    -- Which process the owning run is, beyond its pid: see engine::lease.
    owner_boot       TEXT,
    owner_pid_ns     TEXT,
    owner_started    INTEGER,
    -- Runs that died in a row without recording a step, and how many
    -- steps were recorded when the last of them took over.
    takeovers        INTEGER NOT NULL DEFAULT 0,
    progress_mark    INTEGER NOT NULL DEFAULT 0,
    -- What the workflow was granted when it started (runtime::Grants, JSON).
    grants           TEXT,
    error_code       TEXT,
    -- The queue it waits in, and the deployment it was started from.
    queue            TEXT NOT NULL DEFAULT 'default',
    deployment       TEXT,
    -- When a sleeping or waiting workflow is due to be resumed.
    wake_at          INTEGER,
    -- The workflow that started this one as its child.
    parent_id        TEXT,
    -- What a waiting workflow waits for: `signal:NAME` or `child:ID`.
    waiting_for      TEXT
);
"
        )
    };
}

/// The workflows table's indexes, created alike by [`SCHEMA`] and the
/// version 5 migration.
macro_rules! workflows_indexes {
    () => {
        "
CREATE INDEX workflows_by_status ON workflows (status);
CREATE INDEX workflows_by_age ON workflows (created_at DESC, id);
CREATE INDEX workflows_queued ON workflows (queue, created_at) WHERE status = 'queued';
CREATE INDEX workflows_waking ON workflows (wake_at) WHERE status IN ('sleeping', 'waiting');
CREATE INDEX workflows_leases ON workflows (lease_expires_at) WHERE status = 'running';
CREATE INDEX workflows_by_parent ON workflows (parent_id) WHERE parent_id IS NOT NULL;
CREATE INDEX workflows_waiting_for ON workflows (waiting_for) WHERE status = 'waiting';
"
    };
}

/// The signal and published-event tables, created alike by [`SCHEMA`] and
/// the version 5 migration.
macro_rules! signals_tables {
    () => {
        "
-- Signals sent to workflows, kept until a wait takes them: each is taken
-- once, oldest first, by the step named in `taken_by`.
CREATE TABLE signals (
    seq         INTEGER PRIMARY KEY,
    workflow_id TEXT NOT NULL,
    name        TEXT NOT NULL,
    signal_id   TEXT NOT NULL,
    value       TEXT NOT NULL,
    sent_at     INTEGER NOT NULL,
    taken_by    TEXT,
    UNIQUE (workflow_id, signal_id)
);
CREATE INDEX signals_untaken ON signals (workflow_id, name, seq) WHERE taken_by IS NULL;
-- The last value a workflow published under each key, for observers.
CREATE TABLE published_events (
    workflow_id  TEXT NOT NULL,
    key          TEXT NOT NULL,
    value        TEXT NOT NULL,
    step_key     TEXT NOT NULL,
    published_at INTEGER NOT NULL,
    PRIMARY KEY (workflow_id, key)
) WITHOUT ROWID;
"
    };
}

/// The tables as this version creates them in a new database.
pub const SCHEMA: &str = concat!(
    workflows_table!("workflows"),
    "
-- Clustered on its key and without a second index: every page a step
-- touches is one more page its commit writes and syncs. (Sequences are
-- unique per workflow by construction: one owner assigns them in order.)
CREATE TABLE steps (
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
    -- Failed attempts recorded before a retry (interrupted ones excluded).
    failures    INTEGER NOT NULL DEFAULT 0,
    error_code  TEXT,
    -- What the guest made of the step's input, when it gave one: a replay
    -- with another input is non-determinism.
    input_fingerprint TEXT,
    PRIMARY KEY (workflow_id, step_key)
) WITHOUT ROWID;
-- Attempts of a step that did not end it: failed tries before a retry, and
-- executions interrupted by the death of their run.
CREATE TABLE step_attempts (
    workflow_id TEXT NOT NULL,
    step_key    TEXT NOT NULL,
    attempt     INTEGER NOT NULL,
    error       TEXT NOT NULL,
    run_id      TEXT NOT NULL,
    ended_at    INTEGER NOT NULL,
    -- 1 when the attempt was cut short by the death of its run.
    interrupted INTEGER NOT NULL DEFAULT 0,
    -- The wait before the next attempt, for failed ones.
    backoff_ms  INTEGER,
    PRIMARY KEY (workflow_id, step_key, attempt)
) WITHOUT ROWID;
-- What happened to a workflow besides its steps: takeovers, code
-- changes, suspensions, resumes, cancel requests.
CREATE TABLE workflow_events (
    workflow_id TEXT NOT NULL,
    at          INTEGER NOT NULL,
    kind        TEXT NOT NULL,
    detail      TEXT NOT NULL,
    run_id      TEXT NOT NULL
);
-- Component files by content: a workflow resumes on the exact bytes that
-- started it, whatever happens to the file.
CREATE TABLE components (
    sha256     TEXT PRIMARY KEY NOT NULL,
    bytes      BLOB NOT NULL,
    created_at INTEGER NOT NULL
);
-- Named versions of components, with what their workflows are granted.
CREATE TABLE deployments (
    name       TEXT NOT NULL,
    version    INTEGER NOT NULL,
    sha256     TEXT NOT NULL REFERENCES components (sha256),
    grants     TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE INDEX workflow_events_by_workflow ON workflow_events (workflow_id, at);
",
    workflows_indexes!(),
    workflow_logs_table!(),
    schedules_table!(),
    signals_tables!()
);

/// Upgrades of an existing database, by the version they lead to. Each runs
/// in the one transaction that also sets `user_version`.
pub const MIGRATIONS: &[(i64, &str)] = &[
    (
        2,
        "
    -- New statuses: SQLite cannot alter a CHECK, so the table is rebuilt
    -- (with foreign keys off; they are checked before the commit).
    CREATE TABLE workflows_v2 (
        id               TEXT PRIMARY KEY NOT NULL,
        component_sha256 TEXT NOT NULL,
        input            TEXT NOT NULL,
        status           TEXT NOT NULL
                         CHECK (status IN ('queued', 'running', 'sleeping', 'completed', 'failed',
                                           'cancelled', 'suspended')),
        output           TEXT,
        error            TEXT,
        run_id           TEXT NOT NULL,
        owner_pid        INTEGER NOT NULL,
        owner_host       TEXT NOT NULL,
        lease_expires_at INTEGER NOT NULL,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        created_at       INTEGER NOT NULL,
        updated_at       INTEGER NOT NULL,
        owner_boot       TEXT,
        owner_pid_ns     TEXT,
        owner_started    INTEGER,
        takeovers        INTEGER NOT NULL DEFAULT 0,
        progress_mark    INTEGER NOT NULL DEFAULT 0,
        grants           TEXT,
        error_code       TEXT,
        queue            TEXT NOT NULL DEFAULT 'default',
        deployment       TEXT,
        wake_at          INTEGER
    );
    INSERT INTO workflows_v2 (id, component_sha256, input, status, output, error, run_id,
        owner_pid, owner_host, lease_expires_at, cancel_requested, created_at, updated_at)
    SELECT id, component_sha256, input, status, output, error, run_id,
        owner_pid, owner_host, lease_expires_at, cancel_requested, created_at, updated_at
    FROM workflows;
    DROP TABLE workflows;
    ALTER TABLE workflows_v2 RENAME TO workflows;
    CREATE INDEX workflows_by_status ON workflows (status);
    CREATE INDEX workflows_by_age ON workflows (created_at DESC, id);
    CREATE INDEX workflows_queued ON workflows (queue, created_at) WHERE status = 'queued';
    CREATE INDEX workflows_waking ON workflows (wake_at) WHERE status = 'sleeping';
    CREATE INDEX workflows_leases ON workflows (lease_expires_at) WHERE status = 'running';
    ALTER TABLE steps ADD COLUMN failures INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE steps ADD COLUMN error_code TEXT;
    -- (Databases from the first version 1 builds had no step_attempts.)
    CREATE TABLE IF NOT EXISTS step_attempts (
        workflow_id TEXT NOT NULL,
        step_key    TEXT NOT NULL,
        attempt     INTEGER NOT NULL,
        error       TEXT NOT NULL,
        run_id      TEXT NOT NULL,
        ended_at    INTEGER NOT NULL,
        PRIMARY KEY (workflow_id, step_key, attempt)
    ) WITHOUT ROWID;
    ALTER TABLE step_attempts ADD COLUMN interrupted INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE step_attempts ADD COLUMN backoff_ms INTEGER;
    UPDATE step_attempts SET interrupted = 1 WHERE error LIKE 'interrupted:%';
    -- Version 1 failed a workflow and the step it was in when the guest
    -- trapped or hit a limit; now the step stays unfinished (so `resume`
    -- executes it again) and a trap suspends the workflow.
    INSERT OR IGNORE INTO step_attempts
        (workflow_id, step_key, attempt, error, run_id, ended_at, interrupted)
    SELECT s.workflow_id, s.step_key, s.attempts, s.error, s.run_id,
           coalesce(s.finished_at, s.started_at), 1
    FROM steps s JOIN workflows w ON w.id = s.workflow_id
    WHERE w.status = 'failed' AND s.status = 'failed' AND s.error = w.error
      AND (w.error LIKE 'guest panicked%' OR w.error LIKE 'guest trapped%'
           OR w.error LIKE 'guest stopped%');
    UPDATE steps SET status = 'running', error = NULL, finished_at = NULL
    WHERE status = 'failed' AND EXISTS (
        SELECT 1 FROM workflows w WHERE w.id = steps.workflow_id AND w.status = 'failed'
            AND w.error = steps.error
            AND (w.error LIKE 'guest panicked%' OR w.error LIKE 'guest trapped%'
                 OR w.error LIKE 'guest stopped%'));
    UPDATE workflows SET status = 'suspended'
    WHERE status = 'failed' AND (error LIKE 'guest panicked%' OR error LIKE 'guest trapped%');
    CREATE TABLE workflow_events (
        workflow_id TEXT NOT NULL,
        at          INTEGER NOT NULL,
        kind        TEXT NOT NULL,
        detail      TEXT NOT NULL,
        run_id      TEXT NOT NULL
    );
    CREATE INDEX workflow_events_by_workflow ON workflow_events (workflow_id, at);
    CREATE TABLE components (
        sha256     TEXT PRIMARY KEY NOT NULL,
        bytes      BLOB NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE deployments (
        name       TEXT NOT NULL,
        version    INTEGER NOT NULL,
        sha256     TEXT NOT NULL REFERENCES components (sha256),
        grants     TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (name, version)
    );
    ",
    ),
    (
        3,
        concat!(
            workflow_logs_table!(),
            "ALTER TABLE steps ADD COLUMN input_fingerprint TEXT;"
        ),
    ),
    (4, schedules_table!()),
    (
        5,
        concat!(
            "-- A new status, 'waiting', parent_id and waiting_for: the table is rebuilt
             -- (see version 2).",
            workflows_table!("workflows_v5"),
            "INSERT INTO workflows_v5 (id, component_sha256, input, status, output, error,
                 run_id, owner_pid, owner_host, lease_expires_at, cancel_requested, created_at,
                 updated_at, owner_boot, owner_pid_ns, owner_started, takeovers, progress_mark,
                 grants, error_code, queue, deployment, wake_at)
             SELECT id, component_sha256, input, status, output, error,
                 run_id, owner_pid, owner_host, lease_expires_at, cancel_requested, created_at,
                 updated_at, owner_boot, owner_pid_ns, owner_started, takeovers, progress_mark,
                 grants, error_code, queue, deployment, wake_at FROM workflows;
             DROP TABLE workflows;
             ALTER TABLE workflows_v5 RENAME TO workflows;",
            workflows_indexes!(),
            signals_tables!()
        ),
    ),
    (
        6,
        concat!(
            "-- A new stream, 'http': the table is rebuilt (see version 2).
             ALTER TABLE workflow_logs RENAME TO workflow_logs_v5;",
            workflow_logs_table!(),
            "INSERT INTO workflow_logs (workflow_id, seq, at, stream, step_key, line)
             SELECT workflow_id, seq, at, stream, step_key, line FROM workflow_logs_v5;
             DROP TABLE workflow_logs_v5;"
        ),
    ),
];
