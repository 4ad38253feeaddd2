//! One connection to PostgreSQL, its statement cache, its transactions,
//! and what its errors mean to a user.
//!
//! This module knows how to connect, run statements, open and end a write,
//! and report failures; it knows nothing of workflows (see the parent
//! module).
//!
//! Transactions are plain `BEGIN`/`COMMIT` statements on the client rather
//! than the client's `Transaction` object, so that one path serves a write
//! alone (a transaction of its own) and a write of a batch (a savepoint of
//! the batch's transaction, see [`super::batch`]): the connection knows
//! which, since it knows whether a batch is open on it.

use std::borrow::Cow;
use std::collections::HashMap;
use std::panic::{self, AssertUnwindSafe};
use std::str::FromStr;
use std::time::Duration;

use postgres::error::SqlState;
use postgres::types::ToSql;
use postgres::{Client, Config, GenericClient, NoTls, Row, Statement};

use crate::store::StoreError;

/// How long opening a connection may take before it counts as unreachable,
/// unless the URL says (`connect_timeout`): the default is to wait forever.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Set on every connection: the server ends a session that sits inside a
/// transaction this long. Ours run statement after statement, so only a
/// frozen or cut-off worker does that, and its row locks would otherwise
/// stop every other worker that touches those workflows until it came back.
const SESSION_SETTINGS: &str = "SET idle_in_transaction_session_timeout = '5s'";

/// Parameters of a statement, as the client takes them.
pub(super) type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// Where the store connects: the parsed URL, and the URL as it may be shown
/// (without its password).
#[derive(Clone)]
pub(super) struct Target {
    config: Config,
    pub(super) shown: String,
}

impl Target {
    /// Parse `url` (a `postgres://` URL or `key=value` pairs).
    pub(super) fn parse(url: &str) -> Result<Self, StoreError> {
        let shown = redact(url);
        let mut config = Config::from_str(url).map_err(|e| StoreError::Open {
            path: shown.clone(),
            reason: format!("not a PostgreSQL connection URL: {e}"),
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        Ok(Self { config, shown })
    }

    /// A new connection.
    pub(super) fn connect(&self) -> Result<Connection, StoreError> {
        let mut client = self
            .config
            .connect(NoTls)
            .map_err(|e| unreachable(&self.shown, &e))?;
        client
            .batch_execute(SESSION_SETTINGS)
            .map_err(store_error)?;
        Ok(Connection {
            client,
            statements: HashMap::new(),
            batch: Batch::Off,
        })
    }
}

/// A client with the statements it has prepared, and the batch open on it.
pub(super) struct Connection {
    pub(super) client: Client,
    /// Prepared once per connection, by SQL text: a statement's parse and
    /// plan lookup cost a round trip each time otherwise.
    statements: HashMap<String, Statement>,
    /// Lives and dies with this connection: a new connection has no batch,
    /// so a batch never goes on, or commits, on a connection other than the
    /// one it began on.
    batch: Batch,
}

/// Whether a batch is open on a connection.
enum Batch {
    /// None: each write is a transaction of its own.
    Off,
    /// Each write is a savepoint of the batch's transaction.
    Open,
    /// A statement outside any savepoint failed (the connection broke): the
    /// batch's transaction is lost, or aborted, and PostgreSQL would answer
    /// its `COMMIT` by rolling it back. Its writes and its commit fail with
    /// this error.
    Aborted(StoreError),
}

/// The statements that open a write and end it, keeping or undoing it.
struct Bracket {
    open: &'static str,
    keep: &'static str,
    undo: &'static str,
}

/// A write alone, in a transaction of its own.
const TRANSACTION: Bracket = Bracket {
    open: "BEGIN",
    keep: "COMMIT",
    undo: "ROLLBACK",
};

/// A write alone, committed without waiting for the flush.
const UNFLUSHED_TRANSACTION: Bracket = Bracket {
    open: "BEGIN; SET LOCAL synchronous_commit = off",
    ..TRANSACTION
};

/// A write of a batch: a savepoint, so that its failure undoes it alone.
const SAVEPOINT: Bracket = Bracket {
    open: "SAVEPOINT w",
    keep: "RELEASE SAVEPOINT w",
    undo: "ROLLBACK TO SAVEPOINT w; RELEASE SAVEPOINT w",
};

impl Connection {
    /// Whether a batch is open on this connection (even one whose
    /// transaction was lost).
    pub(super) fn in_batch(&self) -> bool {
        !matches!(self.batch, Batch::Off)
    }

    /// Run `body`, reads outside any transaction but the open batch's. A
    /// read that fails in a batch fails the batch: it may have aborted the
    /// batch's transaction.
    pub(super) fn read<T>(
        &mut self,
        body: impl FnOnce(&mut Session<'_, Client>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let result = body(&mut self.session());
        self.outside_savepoint(result)
    }

    /// Run `body` as one write: in a transaction of its own, committed
    /// (`flush`: waiting for the flush), or, while a batch is open, in a
    /// savepoint of the batch, which the batch commits. An `Err` from `body`
    /// (a conflict it found), or a panic, undoes the write.
    pub(super) fn write<T>(
        &mut self,
        flush: bool,
        body: &mut impl FnMut(&mut Session<'_, Client>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let bracket = match &self.batch {
            Batch::Off if flush => &TRANSACTION,
            Batch::Off => &UNFLUSHED_TRANSACTION,
            // The batch's flush decides, not this write's: a `SET LOCAL`
            // here would outlive the savepoint and make the whole batch's
            // commit asynchronous.
            Batch::Open => &SAVEPOINT,
            Batch::Aborted(cause) => return Err(cause.clone()),
        };
        self.run(bracket.open)?;
        let result = panic::catch_unwind(AssertUnwindSafe(|| body(&mut self.session())))
            .unwrap_or_else(|panic| {
                let _ = self.run(bracket.undo);
                panic::resume_unwind(panic)
            });
        match result {
            Ok(value) => self.run(bracket.keep).map(|()| value),
            Err(conflict) => {
                // Only a broken connection fails to undo; a batch then
                // reports it at its commit.
                let _ = self.run(bracket.undo);
                Err(conflict)
            }
        }
    }

    /// Open a batch: a transaction whose writes are savepoints, committed
    /// without waiting for the flush unless `flush`.
    pub(super) fn begin_batch(&mut self, flush: bool) -> Result<(), StoreError> {
        if self.in_batch() {
            // The last batch was never committed (its committer panicked):
            // nobody was told it was, so it goes.
            self.batch = Batch::Off;
            self.run(TRANSACTION.undo)?;
        }
        let begin = if flush {
            &TRANSACTION
        } else {
            &UNFLUSHED_TRANSACTION
        };
        self.run(begin.open)?;
        self.batch = Batch::Open;
        Ok(())
    }

    /// Commit the open batch, or roll it back and say why it failed.
    pub(super) fn commit_batch(&mut self) -> Result<(), StoreError> {
        let committed = match std::mem::replace(&mut self.batch, Batch::Off) {
            Batch::Open => self.run(TRANSACTION.keep),
            Batch::Aborted(cause) => Err(cause),
            Batch::Off => Err(StoreError::Backend(
                "no batch is open on this connection".to_owned(),
            )),
        };
        if committed.is_err() {
            let _ = self.run(TRANSACTION.undo);
        }
        committed
    }

    /// A session on the client, in whatever transaction is open.
    fn session(&mut self) -> Session<'_, Client> {
        Session {
            client: &mut self.client,
            statements: &mut self.statements,
        }
    }

    /// Run `sql` (transaction control), outside any savepoint.
    fn run(&mut self, sql: &str) -> Result<(), StoreError> {
        let result = self.client.batch_execute(sql).map_err(store_error);
        self.outside_savepoint(result)
    }

    /// `result` of statements outside any savepoint: an error aborted the
    /// open batch, if any (PostgreSQL refuses every statement after it).
    fn outside_savepoint<T>(&mut self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        if let (Err(error), Batch::Open) = (&result, &self.batch) {
            self.batch = Batch::Aborted(error.clone());
        }
        result
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
        reason: format!("the connection to the server was lost: {reason}"),
    }
}

/// Why connecting to `shown` failed, worded for the person who gave the URL.
fn unreachable(shown: &str, error: &postgres::Error) -> StoreError {
    let reason = match error.as_db_error() {
        // The server answered: a missing database or role, a refused login.
        Some(db) => db.message().to_owned(),
        // It did not: nobody listens there, or the network is down.
        None => format!(
            "{error}{}",
            std::error::Error::source(error)
                .map(|source| format!(": {source}"))
                .unwrap_or_default()
        ),
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
