//! What an operation does when the PostgreSQL server goes out of reach (a
//! restart, a failover, a cut network): it waits for the server, with
//! backoff, and carries on once it answers, rather than fail a run that
//! would otherwise have to be taken over and replayed.
//!
//! Only what is safe to run again is retried: reads, and writes whose
//! connection was lost before their commit (the server rolls back what a
//! lost session had open). A write whose connection was lost during its
//! commit may have been made, so it fails ([`in_doubt`]); the run stops
//! there and is replayed from what the database holds, as after a crash.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use super::connection::is_lost_connection;
use crate::store::StoreError;

/// How long an operation waits for the server to come back before it
/// fails with the lost connection's error.
const PATIENCE: Duration = Duration::from_secs(60);
/// The first wait before connecting again, and the longest.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(2));

/// Since when each database (by its shown URL) has been out of reach, as
/// far as this process knows: one warning when it goes, one line when it
/// comes back, however many connections saw it.
static OUT_OF_REACH: Mutex<Option<HashMap<String, Instant>>> = Mutex::new(None);

/// Run `attempt` until it succeeds, fails for another reason than reach,
/// or the server stays away past [`PATIENCE`]; `attempt` is told whether to
/// connect afresh (after the server was out of reach). For what is safe to
/// run again; writes decide for themselves (see `write_retrying`).
pub(super) fn waiting_out<T>(
    shown: &str,
    mut attempt: impl FnMut(bool) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let mut outage = Outage::default();
    loop {
        match attempt(outage.waiting()) {
            Ok(value) => {
                outage.over(shown);
                return Ok(value);
            }
            Err(error) if outage.wait(shown, &error) => {}
            Err(error) => return Err(error),
        }
    }
}

/// One operation's wait for a server out of reach.
#[derive(Default)]
pub(super) struct Outage {
    /// When this operation first found the server out of reach.
    since: Option<Instant>,
    backoff: Option<Duration>,
}

impl Outage {
    /// Whether to run the operation again after `error`: the server is out
    /// of reach, and has been for less than [`PATIENCE`]. Sleeps before
    /// answering yes.
    pub(super) fn wait(&mut self, shown: &str, error: &StoreError) -> bool {
        if !is_lost_connection(error) {
            self.over(shown);
            return false;
        }
        let since = *self.since.get_or_insert_with(Instant::now);
        if since.elapsed() >= PATIENCE {
            return false;
        }
        note_out_of_reach(shown, error);
        let backoff = self.backoff.map_or(BACKOFF.0, |b| (b * 2).min(BACKOFF.1));
        self.backoff = Some(backoff);
        thread::sleep(backoff);
        true
    }

    /// Whether this operation found the server out of reach and waits for
    /// it: the next try connects afresh.
    pub(super) fn waiting(&self) -> bool {
        self.since.is_some()
    }

    /// The operation ended for another reason than reach: if it had waited,
    /// the server answers again.
    pub(super) fn over(&mut self, shown: &str) {
        if self.since.take().is_some() {
            note_back(shown);
        }
    }
}

fn note_out_of_reach(shown: &str, error: &StoreError) {
    let mut down = OUT_OF_REACH.lock().unwrap_or_else(PoisonError::into_inner);
    let down = down.get_or_insert_with(HashMap::new);
    if !down.contains_key(shown) {
        down.insert(shown.to_owned(), Instant::now());
        tracing::warn!(
            database = shown,
            %error,
            "PostgreSQL is out of reach; waiting for it (up to {} s per operation)",
            PATIENCE.as_secs()
        );
    }
}

fn note_back(shown: &str) {
    let mut down = OUT_OF_REACH.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(since) = down.as_mut().and_then(|down| down.remove(shown)) {
        tracing::info!(
            database = shown,
            "PostgreSQL answers again, after {:.1} s out of reach",
            since.elapsed().as_secs_f64()
        );
    }
}

/// The error of a write whose connection was lost during its commit.
pub(super) fn in_doubt(error: StoreError) -> StoreError {
    match error {
        StoreError::Io { path, reason } => StoreError::Io {
            path,
            reason: format!(
                "{reason} (while committing: the write may or may not have been made; \
                 the run stops here and resumes from what the database holds)"
            ),
        },
        other => other,
    }
}
