//! One connection to PostgreSQL, its statement cache, its transactions,
//! and what its errors mean to a user.
//!
//! This module knows how to connect, run statements, open and end a write,
//! and report failures; it knows nothing of workflows (see the parent
//! module).
//!
//! Transactions are plain `BEGIN`/`COMMIT` statements on the client rather
//! than the client's `Transaction` object, so that a write can tell a
//! connection lost before its commit (nothing was written: run it again)
//! from one lost during it (it may have been written).

use std::borrow::Cow;
use std::collections::HashMap;
use std::panic::{self, AssertUnwindSafe};
use std::str::FromStr;
use std::time::Duration;

use postgres::error::SqlState;
use postgres::types::ToSql;
use postgres::{Client, Config, GenericClient, NoTls, Row, Statement};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::tls;

use crate::store::StoreError;

/// How long opening a connection may take before it counts as unreachable,
/// unless the URL says (`connect_timeout`): the default is to wait forever.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long sent data may go unacknowledged before the connection counts
/// as broken, and how soon an idle one is probed (three probes, 5 s apart),
/// unless the URL says (`tcp_user_timeout`, `keepalives_idle`...): by
/// default a connection to a server that vanished without a word (a dead
/// host, a black-holed network) hangs for many minutes, and so would the
/// worker, where it should wait for the server as after a restart.
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(20);
const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
const KEEPALIVE_PROBES: (Duration, u32) = (Duration::from_secs(5), 3);
/// The client's own default for `keepalives_idle`, which cannot tell
/// whether the URL set it.
const CLIENT_KEEPALIVE_IDLE: Duration = Duration::from_secs(2 * 60 * 60);

/// Set on every connection: the server ends a session that sits inside a
/// transaction this long. Ours run statement after statement, so only a
/// frozen or cut-off worker does that, and its row locks would otherwise
/// stop every other worker that touches those workflows until it came back.
const SESSION_SETTINGS: &str = "SET idle_in_transaction_session_timeout = '5s'";

/// Set besides [`SESSION_SETTINGS`] on a read-only target's connections.
const READ_ONLY_SETTING: &str = "SET default_transaction_read_only = on";

/// Parameters of a statement, as the client takes them.
pub(super) type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// Where the store connects: the parsed URL, and the URL as it may be shown
/// (without its password).
#[derive(Clone)]
pub(super) struct Target {
    config: Config,
    /// `None`: without TLS (see [`tls`]).
    tls: Option<MakeRustlsConnect>,
    pub(super) shown: String,
    /// Every connection's transactions are read-only: the server refuses
    /// any write.
    read_only: bool,
}

impl Target {
    /// Parse `url` (a `postgres://` URL or `key=value` pairs).
    pub(super) fn parse(url: &str) -> Result<Self, StoreError> {
        let shown = redact(url);
        let refused = |reason: String| StoreError::Open {
            path: shown.clone(),
            reason,
        };
        let security = tls::security(url).map_err(refused)?;
        let mut config = Config::from_str(&security.url)
            .map_err(|e| refused(format!("not a PostgreSQL connection URL: {e}")))?;
        config.ssl_mode(security.mode);
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_tcp_user_timeout().is_none() {
            config.tcp_user_timeout(TCP_USER_TIMEOUT);
        }
        if config.get_keepalives_idle() == CLIENT_KEEPALIVE_IDLE {
            config.keepalives_idle(KEEPALIVE_IDLE);
        }
        if config.get_keepalives_interval().is_none() {
            config.keepalives_interval(KEEPALIVE_PROBES.0);
        }
        if config.get_keepalives_retries().is_none() {
            config.keepalives_retries(KEEPALIVE_PROBES.1);
        }
        Ok(Self {
            config,
            tls: security.connector,
            shown,
            read_only: false,
        })
    }

    /// The same target, for connections that may only read.
    pub(super) fn read_only(self) -> Self {
        Self {
            read_only: true,
            ..self
        }
    }

    /// A new connection.
    pub(super) fn connect(&self) -> Result<Connection, StoreError> {
        self.descriptors_left()?;
        let client = match &self.tls {
            Some(tls) => self.config.connect(tls.clone()),
            None => self.config.connect(NoTls),
        };
        let mut client = client.map_err(|e| unreachable(&self.shown, &e))?;
        let settings = if self.read_only {
            Cow::Owned(format!("{SESSION_SETTINGS}; {READ_ONLY_SETTING}"))
        } else {
            Cow::Borrowed(SESSION_SETTINGS)
        };
        client.batch_execute(&settings).map_err(store_error)?;
        Ok(Connection {
            client,
            statements: HashMap::new(),
        })
    }
}

impl Target {
    /// The synchronous client starts a runtime of its own (an epoll and a
    /// waker descriptor) before it opens its socket, and panics when it
    /// cannot: check that there is room first, so that a low open-file
    /// limit is an error with its hint rather than a panic.
    fn descriptors_left(&self) -> Result<(), StoreError> {
        const EMFILE: i32 = 24;
        const ENFILE: i32 = 23;
        let probes: Result<Vec<std::fs::File>, std::io::Error> =
            (0..3).map(|_| std::fs::File::open("/dev/null")).collect();
        match probes {
            Err(error) if matches!(error.raw_os_error(), Some(EMFILE | ENFILE)) => {
                Err(StoreError::TooManyFiles {
                    path: self.shown.clone(),
                })
            }
            _ => Ok(()),
        }
    }

    /// Name the database in errors about it.
    pub(super) fn explain(&self, error: StoreError) -> StoreError {
        let path = self.shown.clone();
        match error {
            StoreError::DiskFull { .. } => StoreError::DiskFull { path },
            StoreError::Io { reason, .. } => StoreError::Io { path, reason },
            other => other,
        }
    }

    /// A new connection in place of one that was lost: failing to make it
    /// means the server is still out of reach (it answered before).
    pub(super) fn reconnect(&self) -> Result<Connection, StoreError> {
        self.connect().map_err(|error| match error {
            StoreError::Open { reason, .. } => lost_connection(&reason),
            other => other,
        })
    }
}

/// A client with the statements it has prepared.
pub(super) struct Connection {
    pub(super) client: Client,
    /// Prepared once per connection, by SQL text: a statement's parse and
    /// plan lookup cost a round trip each time otherwise.
    statements: HashMap<String, Statement>,
}

/// Why a write failed, as far as running it again goes.
pub(super) enum WriteFailure {
    /// Nothing was committed: a conflict the write found, a deadlock, or a
    /// connection lost before the commit (the server rolls back what a
    /// lost session had open).
    NotCommitted(StoreError),
    /// The connection was lost after the commit was sent: the write may
    /// have been committed, or not.
    InDoubt(StoreError),
}

/// How a write is committed.
#[derive(Clone, Copy)]
pub(super) enum Commit {
    /// In a transaction of its own, waiting for the flush.
    Flushed,
    /// In a transaction of its own, without waiting for the flush: a crash
    /// of the server may forget it, and its next flushed commit makes it
    /// durable, since the log is flushed in order.
    Unflushed,
    /// The write is one statement, which the server commits on its own:
    /// one round trip where a transaction takes three or more. A
    /// connection lost during it leaves the write in doubt, as one lost
    /// during a `COMMIT` does.
    Alone,
}

/// The statements that open a write in a transaction and end it, keeping
/// or undoing it.
struct Bracket {
    open: &'static str,
    keep: &'static str,
    undo: &'static str,
}

impl Commit {
    fn bracket(self) -> Option<&'static Bracket> {
        const FLUSHED: Bracket = Bracket {
            open: "BEGIN",
            keep: "COMMIT",
            undo: "ROLLBACK",
        };
        const UNFLUSHED: Bracket = Bracket {
            open: "BEGIN; SET LOCAL synchronous_commit = off",
            ..FLUSHED
        };
        match self {
            Commit::Flushed => Some(&FLUSHED),
            Commit::Unflushed => Some(&UNFLUSHED),
            Commit::Alone => None,
        }
    }
}

impl Connection {
    /// Run `body` (reads outside any transaction).
    pub(super) fn read<T>(
        &mut self,
        body: impl FnOnce(&mut Session<'_, Client>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        body(&mut self.session())
    }

    /// Run `body` as one write, committed as `commit` says. An `Err` from
    /// `body` (a conflict it found), or a panic, undoes a write in a
    /// transaction; a write [`Commit::Alone`] answers `Err` only for what
    /// its one statement did not change.
    pub(super) fn write<T>(
        &mut self,
        commit: Commit,
        body: &mut impl FnMut(&mut Session<'_, Client>) -> Result<T, StoreError>,
    ) -> Result<T, WriteFailure> {
        let Some(bracket) = commit.bracket() else {
            return body(&mut self.session()).map_err(|error| self.failure_sent(error));
        };
        self.run(bracket.open).map_err(WriteFailure::NotCommitted)?;
        let result = panic::catch_unwind(AssertUnwindSafe(|| body(&mut self.session())))
            .unwrap_or_else(|panic| {
                let _ = self.run(bracket.undo);
                panic::resume_unwind(panic)
            });
        match result {
            Ok(value) => self
                .run(bracket.keep)
                .map(|()| value)
                .map_err(|error| self.failure_sent(error)),
            Err(conflict) => {
                // Only a broken connection fails to undo, and the server
                // rolls back the lost session's transaction itself.
                let _ = self.run(bracket.undo);
                Err(WriteFailure::NotCommitted(conflict))
            }
        }
    }

    /// What `error` means for a statement that commits (a `COMMIT`, or a
    /// statement alone) once it was sent.
    fn failure_sent(&self, error: StoreError) -> WriteFailure {
        if self.client.is_closed() || error.is_storage_failure() {
            WriteFailure::InDoubt(error)
        } else {
            // The server answered: it refused the write.
            WriteFailure::NotCommitted(error)
        }
    }

    /// A session on the client, in whatever transaction is open.
    fn session(&mut self) -> Session<'_, Client> {
        Session {
            client: &mut self.client,
            statements: &mut self.statements,
        }
    }

    /// Run `sql` (transaction control).
    fn run(&mut self, sql: &str) -> Result<(), StoreError> {
        self.client.batch_execute(sql).map_err(store_error)
    }
}

/// Statements on a client or in a transaction, through the cache.
pub(super) struct Session<'a, C> {
    client: &'a mut C,
    statements: &'a mut HashMap<String, Statement>,
}

impl<C: GenericClient> Session<'_, C> {
    fn statement(&mut self, sql: &str) -> Result<Statement, StoreError> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.client.prepare(sql).map_err(store_error)?;
        self.statements.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }

    /// Run `sql`; how many rows it changed.
    pub(super) fn execute(&mut self, sql: &str, params: Params<'_>) -> Result<u64, StoreError> {
        let statement = self.statement(sql)?;
        self.client.execute(&statement, params).map_err(store_error)
    }

    pub(super) fn query(&mut self, sql: &str, params: Params<'_>) -> Result<Vec<Row>, StoreError> {
        let statement = self.statement(sql)?;
        self.client.query(&statement, params).map_err(store_error)
    }

    pub(super) fn query_opt(
        &mut self,
        sql: &str,
        params: Params<'_>,
    ) -> Result<Option<Row>, StoreError> {
        let statement = self.statement(sql)?;
        self.client
            .query_opt(&statement, params)
            .map_err(store_error)
    }

    pub(super) fn query_one(&mut self, sql: &str, params: Params<'_>) -> Result<Row, StoreError> {
        let statement = self.statement(sql)?;
        self.client
            .query_one(&statement, params)
            .map_err(store_error)
    }

    /// Run several statements without parameters (schema changes), unprepared.
    pub(super) fn batch(&mut self, sql: &str) -> Result<(), StoreError> {
        self.client.batch_execute(sql).map_err(store_error)
    }
}

/// Text a guest wrote (a log line, an error message), as PostgreSQL can
/// keep it: TEXT cannot hold NUL, which UTF-8 (and SQLite) allow, so a NUL
/// becomes U+FFFD, the mark `String::from_utf8_lossy` leaves for bytes it
/// cannot show, rather than failing the checkpoint that carries it.
pub(super) fn storable(text: &str) -> Cow<'_, str> {
    if text.contains('\0') {
        Cow::Owned(text.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(text)
    }
}

/// Column `index` of `row`.
pub(super) fn get<'a, T: postgres::types::FromSql<'a>>(
    row: &'a Row,
    index: usize,
) -> Result<T, StoreError> {
    row.try_get(index).map_err(store_error)
}

/// Column `index` of `row`, a BIGINT counter the records keep as `u32`.
pub(super) fn get_u32(row: &Row, index: usize) -> Result<u32, StoreError> {
    let value: i64 = get(row, index)?;
    u32::try_from(value).map_err(|_| {
        StoreError::Backend(format!(
            "column {} holds {value}, out of range",
            row.columns()[index].name()
        ))
    })
}

/// The store's error for a PostgreSQL error.
pub(super) fn store_error(error: postgres::Error) -> StoreError {
    // The socket failed or the server closed it (a restart, a terminated
    // backend): the client is closed, and the store connects again.
    let broken = std::error::Error::source(&error).is_some_and(|e| e.is::<std::io::Error>());
    if error.is_closed() || broken {
        return lost_connection(&error.to_string());
    }
    let Some(db) = error.as_db_error() else {
        return StoreError::Backend(error.to_string());
    };
    let code = db.code();
    if *code == SqlState::T_R_SERIALIZATION_FAILURE
        || *code == SqlState::T_R_DEADLOCK_DETECTED
        || *code == SqlState::LOCK_NOT_AVAILABLE
    {
        StoreError::Busy { attempts: 1 }
    } else if *code == SqlState::DISK_FULL {
        StoreError::DiskFull {
            path: String::new(),
        }
    } else if *code == SqlState::IO_ERROR {
        StoreError::Io {
            path: String::new(),
            reason: db.message().to_owned(),
        }
    } else if *code == SqlState::READ_ONLY_SQL_TRANSACTION {
        StoreError::ReadOnly(db.message().to_owned())
    } else if code.code().starts_with("08")
        // A session frozen inside a transaction past the server's limit
        // (see SESSION_SETTINGS) was ended by it: connect again, and the
        // write finds out whether its run still owns the workflow.
        || *code == SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT
        || *code == SqlState::ADMIN_SHUTDOWN
        || *code == SqlState::CRASH_SHUTDOWN
        || *code == SqlState::CANNOT_CONNECT_NOW
    {
        lost_connection(db.message())
    } else {
        StoreError::Backend(format!("{} ({})", db.message(), code.code()))
    }
}

/// The connection to the server broke (or the server is going down): a
/// storage failure, like an I/O error on a file, after which the store
/// connects again. [`super::PostgresStore`] names the URL.
fn lost_connection(reason: &str) -> StoreError {
    StoreError::Io {
        path: String::new(),
        reason: format!("{LOST}: {reason}"),
    }
}

const LOST: &str = "the connection to the server was lost";

/// Whether `error` says the server is out of reach (rather than refusing
/// what was asked).
pub(super) fn is_lost_connection(error: &StoreError) -> bool {
    matches!(error, StoreError::Io { reason, .. } if reason.starts_with(LOST))
}

/// Why connecting to `shown` failed, worded for the person who gave the URL.
fn unreachable(shown: &str, error: &postgres::Error) -> StoreError {
    let source = std::error::Error::source(error)
        .map(|source| format!(": {source}"))
        .unwrap_or_default();
    // The client's errors have no kind to match, only their words.
    if error.to_string() == "error performing TLS handshake" {
        return StoreError::Open {
            path: shown.to_owned(),
            reason: format!(
                "TLS with the PostgreSQL server failed{source} (sslmode=verify-full wants the \
                 server's certificate to name the URL's host and to chain to a root in \
                 sslrootcert, verify-ca only the chain; require and prefer check nothing \
                 without sslrootcert)"
            ),
        };
    }
    let reason = match error.as_db_error() {
        // The server answered: a missing database or role, a refused login.
        Some(db) => db.message().to_owned(),
        // It did not: nobody listens there, or the network is down.
        None => format!("{error}{source}"),
    };
    StoreError::Open {
        path: shown.to_owned(),
        reason: format!(
            "cannot reach the PostgreSQL server: {reason} (is it running, and are the host, \
             port, database and user in the URL right?)"
        ),
    }
}

/// `url` with its password, if any, replaced by `***`: URLs end up in logs.
pub(crate) fn redact(url: &str) -> String {
    if let Some(rest) = url
        .strip_prefix("postgres://")
        .map(|rest| ("postgres://", rest))
        .or_else(|| {
            url.strip_prefix("postgresql://")
                .map(|rest| ("postgresql://", rest))
        })
    {
        let (scheme, rest) = rest;
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        let authority = match authority.rsplit_once('@') {
            Some((user_info, hosts)) => match user_info.split_once(':') {
                Some((user, _)) => format!("{user}:***@{hosts}"),
                None => authority.to_owned(),
            },
            None => authority.to_owned(),
        };
        let tail = redact_query(tail);
        return format!("{scheme}{authority}{tail}");
    }
    // `key=value` pairs: drop the value of `password`.
    url.split_whitespace()
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
            _ => pair.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A URL's path and query with the value of a `password` parameter hidden.
fn redact_query(tail: &str) -> String {
    let Some((path, query)) = tail.split_once('?') else {
        return tail.to_owned();
    };
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
            _ => pair.to_owned(),
        })
        .collect();
    format!("{path}?{}", query.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tls_mode_this_host_does_not_know_is_refused_with_the_reason() {
        let Err(StoreError::Open { path, reason }) =
            Target::parse("postgres://me:secret@db/work?sslmode=allow")
        else {
            panic!("sslmode=allow must be refused");
        };
        assert_eq!(path, "postgres://me:***@db/work?sslmode=allow");
        assert!(reason.contains("verify-full"), "{reason}");
    }

    #[test]
    fn passwords_are_never_shown() {
        let cases = [
            (
                "postgres://root@127.0.0.1:5432/test",
                "postgres://root@127.0.0.1:5432/test",
            ),
            (
                "postgres://me:s3cret@db:5432/test?sslmode=disable",
                "postgres://me:***@db:5432/test?sslmode=disable",
            ),
            (
                "postgresql://me:p%40ss@db/test",
                "postgresql://me:***@db/test",
            ),
            (
                "postgres://db/test?user=me&password=s3cret",
                "postgres://db/test?user=me&password=***",
            ),
            (
                "host=db user=me password=s3cret dbname=test",
                "host=db user=me password=*** dbname=test",
            ),
        ];
        for (url, shown) in cases {
            assert_eq!(redact(url), shown);
        }
    }
}
