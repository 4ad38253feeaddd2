//! Which database the integration tests' commands use: a SQLite file in the
//! scratch directory (the default), or, with `DURABLE_TEST_BACKEND=postgres`,
//! a schema of its own in the PostgreSQL database `DURABLE_TEST_POSTGRES_URL`
//! names (default: the local one, `postgres://root@127.0.0.1:5432/test`).
//! The same suites run on both: that is the backend matrix.

use std::sync::atomic::{AtomicU64, Ordering};

use postgres::{Client, NoTls};

/// The local PostgreSQL every machine of the project runs.
const DEFAULT_URL: &str = "postgres://root@127.0.0.1:5432/test";

/// Whether the suites run on PostgreSQL (`DURABLE_TEST_BACKEND=postgres`).
pub fn on_postgres() -> bool {
    match std::env::var("DURABLE_TEST_BACKEND").as_deref() {
        Ok("postgres") => true,
        Ok("sqlite") | Err(_) => false,
        Ok(other) => panic!("DURABLE_TEST_BACKEND={other}: use sqlite or postgres"),
    }
}

/// The PostgreSQL database the tests use.
pub fn postgres_url() -> String {
    std::env::var("DURABLE_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

/// The `host:port` the server of [`postgres_url`] listens on (port 5432
/// when the URL names none).
pub fn postgres_address() -> String {
    let url = postgres_url();
    let (_, authority, _) = split_authority(&url);
    if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:5432")
    }
}

/// `url` as what comes before its host, the host (and port), and the rest.
fn split_authority(url: &str) -> (&str, &str, &str) {
    let start = url.find("://").map_or(0, |i| i + 3);
    let start = start + url[start..].find('@').map_or(0, |i| i + 1);
    let end = start + url[start..].find(['/', '?']).unwrap_or(url.len() - start);
    (&url[..start], &url[start..end], &url[end..])
}

/// A schema of its own for one test, dropped with it: `--db` points the
/// host at it through the connection's `search_path`.
pub struct PgSchema {
    name: String,
    base: String,
}

impl PgSchema {
    pub fn create() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let base = postgres_url();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let name = format!(
            "dh_it_{}_{}_{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        client(&base)
            .batch_execute(&format!("CREATE SCHEMA {name}"))
            .unwrap_or_else(|e| panic!("create the test schema in {base}: {e}"));
        Self { name, base }
    }

    /// The URL `--db` takes: the database, with this schema first on the
    /// search path.
    pub fn url(&self) -> String {
        let separator = if self.base.contains('?') { '&' } else { '?' };
        format!(
            "{}{separator}options=-csearch_path%3D{}",
            self.base, self.name
        )
    }

    /// [`Self::url`] with the server reached at `127.0.0.1:port` (a proxy).
    pub fn url_through(&self, port: u16) -> String {
        let url = self.url();
        let (before, _, after) = split_authority(&url);
        format!("{before}127.0.0.1:{port}{after}")
    }

    /// A connection whose unqualified table names are this schema's.
    pub fn client(&self) -> Client {
        let mut client = client(&self.base);
        client
            .batch_execute(&format!("SET search_path TO {}", self.name))
            .unwrap();
        client
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        if let Ok(mut client) = Client::connect(&self.base, NoTls) {
            let _ = client.batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name));
        }
    }
}

fn client(url: &str) -> Client {
    Client::connect(url, NoTls).unwrap_or_else(|e| {
        panic!(
            "DURABLE_TEST_BACKEND=postgres, but PostgreSQL at {url} cannot be reached: {e} \
             (start it, or set DURABLE_TEST_POSTGRES_URL)"
        )
    })
}

/// A value of [`json_row`] that must be an integer (NULL as 0).
pub fn integer(value: &serde_json::Value) -> i64 {
    match value {
        serde_json::Value::Null => 0,
        other => other
            .as_i64()
            .unwrap_or_else(|| panic!("not an integer: {other}")),
    }
}

/// A row as JSON values (integers, reals, text, booleans as 0/1, null),
/// the way the SQLite side reads it.
pub fn json_row(row: &postgres::Row) -> Vec<serde_json::Value> {
    use postgres::types::Type;
    use serde_json::Value;
    (0..row.len())
        .map(|i| match *row.columns()[i].type_() {
            Type::INT8 => row
                .get::<_, Option<i64>>(i)
                .map_or(Value::Null, Value::from),
            Type::INT4 => row
                .get::<_, Option<i32>>(i)
                .map_or(Value::Null, Value::from),
            Type::INT2 => row
                .get::<_, Option<i16>>(i)
                .map_or(Value::Null, Value::from),
            Type::BOOL => row
                .get::<_, Option<bool>>(i)
                .map_or(Value::Null, |b| Value::from(i64::from(b))),
            Type::FLOAT8 => row
                .get::<_, Option<f64>>(i)
                .map_or(Value::Null, Value::from),
            Type::NUMERIC => panic!("cast NUMERIC results (sum(...)) to bigint in test queries"),
            _ => row
                .get::<_, Option<String>>(i)
                .map_or(Value::Null, Value::from),
        })
        .collect()
}
