//! Where the checkpoints live, as `--db` and `DURABLE_DB` name it: a
//! SQLite file (the default: one file, no server) or a PostgreSQL database
//! (`postgres://USER@HOST/DB`, shared by workers on several hosts).
//!
//! This is the one place that picks a backend; everything above it holds a
//! [`Database`] and asks it for a [`CheckpointStore`].

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use super::postgres::redact;
use super::{BatchWriter, CheckpointStore, PostgresStore, SqliteStore, StoreError, WorkListener};

/// A database of workflows and checkpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    /// A SQLite file, created when missing.
    Sqlite(PathBuf),
    /// A PostgreSQL connection URL (`postgres://` or `postgresql://`).
    Postgres(String),
}

/// `--db` names neither a file nor a PostgreSQL URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadDatabase(String);

impl FromStr for Database {
    type Err = BadDatabase;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            return Ok(Self::Postgres(text.to_owned()));
        }
        let path = text.strip_prefix("sqlite:").unwrap_or(text);
        if path.is_empty() {
            return Err(BadDatabase(
                "an empty database path: give a file (durable.db) or postgres://USER@HOST/DB"
                    .to_owned(),
            ));
        }
        if let Some((scheme, _)) = path.split_once("://") {
            return Err(BadDatabase(format!(
                "{scheme}:// is not a database this host supports: give a SQLite file \
                 (durable.db) or postgres://USER@HOST/DB"
            )));
        }
        Ok(Self::Sqlite(PathBuf::from(path)))
    }
}

impl fmt::Display for Database {
    /// The file, or the URL with any password left out (it goes into
    /// messages and logs).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sqlite(path) => write!(f, "{}", path.display()),
            Self::Postgres(url) => f.write_str(&redact(url)),
        }
    }
}

impl Database {
    /// Open it, creating the file or the tables when missing.
    pub fn open(&self) -> Result<Box<dyn CheckpointStore>, StoreError> {
        Ok(match self {
            Self::Sqlite(path) => Box::new(SqliteStore::open(path)?),
            Self::Postgres(url) => Box::new(PostgresStore::open(url)?),
        })
    }

    /// Open it to read histories without changing them: SQLite opens the
    /// file read-only, so this is safe beside a running `serve`;
    /// PostgreSQL's transactions are read-only, and an older schema is
    /// read, not upgraded (see [`PostgresStore::open_read_only`]).
    pub fn open_read_only(&self) -> Result<Box<dyn CheckpointStore>, StoreError> {
        Ok(match self {
            Self::Sqlite(path) => Box::new(SqliteStore::open_read_only(path)?),
            Self::Postgres(url) => Box::new(PostgresStore::open_read_only(url)?),
        })
    }

    /// Open it for a command that acts on what is there (`cancel`,
    /// `signal`): as [`Self::open`], except that a PostgreSQL schema without
    /// tables is [`StoreError::NoTables`] rather than made (a SQLite file's
    /// existence is for the caller to check).
    pub fn open_existing(&self) -> Result<Box<dyn CheckpointStore>, StoreError> {
        match self {
            Self::Sqlite(_) => self.open(),
            Self::Postgres(url) => Ok(Box::new(PostgresStore::open_with_tables(url)?)),
        }
    }

    /// Open it for a command that only reads (`list`, `history`, `logs`):
    /// as [`Self::open`] for SQLite (its one file is upgraded where it
    /// lies), as [`Self::open_read_only`] for PostgreSQL, whose tables may
    /// be shared with workers of an older build that a read must not lock
    /// out by upgrading them.
    pub fn open_to_read(&self) -> Result<Box<dyn CheckpointStore>, StoreError> {
        match self {
            Self::Sqlite(_) => self.open(),
            Self::Postgres(_) => self.open_read_only(),
        }
    }

    /// The connection group commit batches writes on (see
    /// [`super::group_commit`]), opened as [`Self::open`] does; `None` for
    /// PostgreSQL, whose writes go side by side, each in a transaction of
    /// its own.
    pub(crate) fn open_batch_writer(&self) -> Result<Option<Box<dyn BatchWriter>>, StoreError> {
        Ok(match self {
            Self::Sqlite(path) => Some(Box::new(SqliteStore::open(path)?)),
            Self::Postgres(_) => None,
        })
    }

    /// Another connection to a database opened already (its tables are up
    /// to date): for reading beside the writer (SQLite), for reading and
    /// writing (PostgreSQL).
    pub(crate) fn connect_reader(&self) -> Result<Box<dyn CheckpointStore>, StoreError> {
        Ok(match self {
            Self::Sqlite(path) => Box::new(SqliteStore::connect_existing(path)?),
            Self::Postgres(url) => Box::new(PostgresStore::connect_existing(url)?),
        })
    }

    /// A listener that hears when work may have become ready, for a
    /// database that can tell (PostgreSQL's NOTIFY); `None` for SQLite,
    /// whose `serve` polls a file it shares with no other host.
    pub fn work_listener(&self) -> Result<Option<Box<dyn WorkListener>>, StoreError> {
        Ok(match self {
            Self::Sqlite(_) => None,
            Self::Postgres(url) => Some(Box::new(PostgresStore::listen_for_work(url)?)),
        })
    }

    /// Whether there is anything to read: a missing SQLite file is no
    /// database yet (a server database always is one).
    pub fn exists(&self) -> bool {
        match self {
            Self::Sqlite(path) => path.is_file(),
            Self::Postgres(_) => true,
        }
    }

    /// The SQLite file, for what only a file has (its directory, its size).
    pub fn sqlite_path(&self) -> Option<&Path> {
        match self {
            Self::Sqlite(path) => Some(path),
            Self::Postgres(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_picks_postgres_and_anything_else_is_a_file() {
        assert_eq!(
            "postgres://me@db/work".parse(),
            Ok(Database::Postgres("postgres://me@db/work".to_owned()))
        );
        assert!(matches!(
            "postgresql://db/work".parse(),
            Ok(Database::Postgres(_))
        ));
        assert_eq!(
            "durable.db".parse(),
            Ok(Database::Sqlite("durable.db".into()))
        );
        assert_eq!(
            "sqlite:data/wf.db".parse(),
            Ok(Database::Sqlite("data/wf.db".into()))
        );
        let bad = "mysql://db/work".parse::<Database>().unwrap_err();
        assert!(
            bad.to_string().contains("mysql:// is not a database"),
            "{bad}"
        );
        assert!("".parse::<Database>().is_err());
    }

    #[test]
    fn passwords_stay_out_of_messages() {
        let db: Database = "postgres://me:hunter2@db:5432/work?sslmode=disable"
            .parse()
            .unwrap();
        assert_eq!(
            db.to_string(),
            "postgres://me:***@db:5432/work?sslmode=disable"
        );
    }
}
