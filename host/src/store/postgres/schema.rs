//! The tables, and how an older schema is brought up to date.
//!
//! A new schema gets [`SCHEMA`]; one made by an older build is upgraded by
//! the [`MIGRATIONS`] after its version, in one transaction. The version is
//! the one row of `durable_schema` (SQLite's `user_version`). Every table
//! change bumps [`SCHEMA_VERSION`], and a build refuses a schema newer than
//! it knows.
//!
//! The tables mirror SQLite's (see `store::sqlite::schema`), with BIGINT for
//! times and counters, BOOLEAN for flags, BYTEA for component bytes. Keys
//! that listings sort by are `COLLATE "C"`: byte order, as SQLite compares
//! text, whatever the database's locale.

/// Bumped whenever the tables change; older hosts refuse newer schemas.
pub const SCHEMA_VERSION: i64 = 2;

/// The oldest schema whose tables this build reads as they are, without
/// upgrading them (see `PostgresStore::open_read_only`): version 2 changed
/// an index and a constraint, not what is stored.
pub const READABLE_FROM: i64 = 1;

/// The version table, created before anything else.
pub const VERSION_TABLE: &str = "
-- The schema's version: one row.
CREATE TABLE durable_schema (
    one     BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one),
    version BIGINT NOT NULL
);
";

/// The tables as this version creates them in a new schema.
pub const SCHEMA: &str = r#"
CREATE TABLE workflows (
    id               TEXT COLLATE "C" PRIMARY KEY,
    component_sha256 TEXT NOT NULL,
    input            TEXT NOT NULL,
    status           TEXT NOT NULL
                     CHECK (status IN ('queued', 'running', 'sleeping', 'waiting', 'completed',
                                       'failed', 'cancelled', 'suspended')),
    output           TEXT,
    error            TEXT,
    run_id           TEXT NOT NULL,
    owner_pid        BIGINT NOT NULL,
    owner_host       TEXT NOT NULL,
    lease_expires_at BIGINT NOT NULL,
    cancel_requested BOOLEAN NOT NULL DEFAULT FALSE,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    -- Which process the owning run is, beyond its pid: see engine::lease.
    owner_boot       TEXT,
    owner_pid_ns     TEXT,
    owner_started    BIGINT,
    -- Runs that died in a row without recording a step, and how many
    -- steps were recorded when the last of them took over.
    takeovers        BIGINT NOT NULL DEFAULT 0,
    progress_mark    BIGINT NOT NULL DEFAULT 0,
    -- What the workflow was granted when it started (runtime::Grants, JSON).
    grants           TEXT,
    error_code       TEXT,
    -- The queue it waits in, and the deployment it was started from.
    queue            TEXT COLLATE "C" NOT NULL DEFAULT 'default',
    deployment       TEXT,
    -- When a sleeping or waiting workflow is due to be resumed.
    wake_at          BIGINT,
    -- The workflow that started this one as its child.
    parent_id        TEXT COLLATE "C",
    -- What a waiting workflow waits for: `signal:NAME` or `child:ID`.
    waiting_for      TEXT
);
CREATE INDEX workflows_by_status ON workflows (status);
CREATE INDEX workflows_by_age ON workflows (created_at DESC, id);
CREATE INDEX workflows_queued ON workflows (queue, created_at) WHERE status = 'queued';
CREATE INDEX workflows_waking ON workflows (wake_at) WHERE status IN ('sleeping', 'waiting');
CREATE INDEX workflows_leases ON workflows (lease_expires_at) WHERE status = 'running';
CREATE INDEX workflows_by_parent ON workflows (parent_id) WHERE parent_id IS NOT NULL;
CREATE INDEX workflows_waiting_for ON workflows (waiting_for) WHERE status = 'waiting';

-- No foreign key to workflows, unlike SQLite's: every statement that adds
-- a step reads and locks the workflow's row in the same transaction, and
-- PostgreSQL's check would run a query of its own on each (a sixth of a
-- step's `running` mark).
CREATE TABLE steps (
    workflow_id TEXT NOT NULL,
    step_key    TEXT COLLATE "C" NOT NULL,
    sequence    BIGINT NOT NULL,
    name        TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('running', 'completed', 'failed')),
    output_json TEXT,
    error       TEXT,
    attempts    BIGINT NOT NULL,
    run_id      TEXT NOT NULL,
    started_at  BIGINT NOT NULL,
    finished_at BIGINT,
    -- Failed attempts recorded before a retry (interrupted ones excluded).
    failures    BIGINT NOT NULL DEFAULT 0,
    error_code  TEXT,
    -- What the guest made of the step's input, when it gave one: a replay
    -- with another input is non-determinism.
    input_fingerprint TEXT,
    PRIMARY KEY (workflow_id, step_key)
);
-- Pages of a history are read by sequence. Partial, so that only a query
-- that spells out `sequence > 0` can use it: a statement about one step
-- (`workflow_id` and `step_key`) must find it by the primary key. Before a
-- new table has statistics, the planner rated both indexes alike and could
-- take this one, reading every step of the workflow to find one.
CREATE INDEX steps_by_sequence ON steps (workflow_id, sequence) WHERE sequence > 0;

-- Attempts of a step that did not end it: failed tries before a retry, and
-- executions interrupted by the death of their run.
CREATE TABLE step_attempts (
    workflow_id TEXT NOT NULL,
    step_key    TEXT COLLATE "C" NOT NULL,
    attempt     BIGINT NOT NULL,
    error       TEXT NOT NULL,
    run_id      TEXT NOT NULL,
    ended_at    BIGINT NOT NULL,
    -- Cut short by the death of its run.
    interrupted BOOLEAN NOT NULL DEFAULT FALSE,
    -- The wait before the next attempt, for failed ones.
    backoff_ms  BIGINT,
    PRIMARY KEY (workflow_id, step_key, attempt)
);

-- What happened to a workflow besides its steps. `seq` keeps events of
-- the same millisecond in the order they were written (SQLite's rowid).
CREATE TABLE workflow_events (
    seq         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    workflow_id TEXT NOT NULL,
    at          BIGINT NOT NULL,
    kind        TEXT NOT NULL,
    detail      TEXT NOT NULL,
    run_id      TEXT NOT NULL
);
CREATE INDEX workflow_events_by_workflow ON workflow_events (workflow_id, at, seq);

-- Component files by content: a workflow resumes on the exact bytes that
-- started it, whatever happens to the file.
CREATE TABLE components (
    sha256     TEXT PRIMARY KEY,
    bytes      BYTEA NOT NULL,
    created_at BIGINT NOT NULL
);

-- Named versions of components, with what their workflows are granted.
CREATE TABLE deployments (
    name       TEXT COLLATE "C" NOT NULL,
    version    BIGINT NOT NULL,
    sha256     TEXT NOT NULL REFERENCES components (sha256),
    grants     TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (name, version)
);

-- What a workflow's guest printed, logged, and the HTTP requests it made,
-- by line, in the order it happened; written with the checkpoint that
-- follows it.
CREATE TABLE workflow_logs (
    workflow_id TEXT NOT NULL,
    seq         BIGINT NOT NULL,
    at          BIGINT NOT NULL,
    stream      TEXT NOT NULL CHECK (stream IN ('stdout', 'stderr', 'log', 'http')),
    step_key    TEXT,
    line        TEXT NOT NULL,
    PRIMARY KEY (workflow_id, seq)
);

-- Workflows started on a calendar: `serve` queues one workflow of
-- `deployment` per tick of `cron` (UTC), with a deterministic id.
CREATE TABLE schedules (
    name        TEXT COLLATE "C" PRIMARY KEY,
    cron        TEXT NOT NULL,
    deployment  TEXT NOT NULL,
    input       TEXT NOT NULL,
    queue       TEXT NOT NULL,
    next_tick   BIGINT NOT NULL,
    created_at  BIGINT NOT NULL
);

-- Signals sent to workflows, kept until a wait takes them: each is taken
-- once, oldest first, by the step named in `taken_by`.
CREATE TABLE signals (
    seq         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    workflow_id TEXT NOT NULL,
    name        TEXT NOT NULL,
    signal_id   TEXT NOT NULL,
    value       TEXT NOT NULL,
    sent_at     BIGINT NOT NULL,
    taken_by    TEXT,
    UNIQUE (workflow_id, signal_id)
);
CREATE INDEX signals_untaken ON signals (workflow_id, name, seq) WHERE taken_by IS NULL;

-- Tell the workers that LISTEN on `durable_work` (the payload is this
-- schema) that work may have become ready: a workflow queued, a wake-up
-- time set or moved (a sleep, a signal or a child's end waking a waiter), a
-- lease given back. Statement order inside a transaction does not matter:
-- PostgreSQL delivers a notification at commit, once per payload.
CREATE FUNCTION durable_work_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('durable_work', TG_TABLE_SCHEMA);
    RETURN NULL;
END
$$;
CREATE TRIGGER workflows_queued AFTER INSERT ON workflows
    FOR EACH ROW WHEN (NEW.status = 'queued')
    EXECUTE FUNCTION durable_work_notify();
CREATE TRIGGER workflows_ready AFTER UPDATE ON workflows
    FOR EACH ROW WHEN (
        (NEW.status = 'queued' AND OLD.status <> 'queued')
        OR NEW.wake_at IS DISTINCT FROM OLD.wake_at
        OR NEW.lease_expires_at < OLD.lease_expires_at
    )
    EXECUTE FUNCTION durable_work_notify();

-- The last value a workflow published under each key, for observers.
CREATE TABLE published_events (
    workflow_id  TEXT NOT NULL,
    key          TEXT COLLATE "C" NOT NULL,
    value        TEXT NOT NULL,
    step_key     TEXT NOT NULL,
    published_at BIGINT NOT NULL,
    PRIMARY KEY (workflow_id, key)
);
"#;

/// Upgrades of an existing schema, by the version they lead to. Each runs
/// in the one transaction that also sets the version.
pub const MIGRATIONS: &[(i64, &str)] = &[(
    2,
    "ALTER TABLE steps DROP CONSTRAINT IF EXISTS steps_workflow_id_fkey;
     DROP INDEX IF EXISTS steps_by_sequence;
     CREATE INDEX steps_by_sequence ON steps (workflow_id, sequence) WHERE sequence > 0;",
)];
