//! [`BatchWriter`] for PostgreSQL: the writes of a batch share one
//! transaction, and one commit. For now a batch holds one write (see
//! `max_batch`): with more, two workers' batches can deadlock.
//!
//! [`super::super::GroupCommitStore`] hands the writes of many concurrent
//! runs to one connection. Between [`BatchWriter::begin_batch`] (`BEGIN`)
//! and [`BatchWriter::commit_batch`] (`COMMIT`), each write runs in a
//! savepoint (see `Connection::write`): a write whose body fails (a run
//! that lost ownership, a deadlock it retries) is rolled back to its
//! savepoint alone, and the batch goes on. A batch of nothing but `running`
//! marks commits without waiting for the flush; the next flushed commit
//! makes it durable, since the log is flushed in order. A write of a batch
//! never sets its own flush level: that would outlive its savepoint and
//! decide for the whole batch.
//!
//! A batch lives on the connection it began on. Should that connection
//! break, the store does not connect again in the middle of the batch (the
//! batch's writes so far would be gone, and the rest would commit without
//! them): its remaining writes and its commit fail with the broken
//! connection's error, which group commit gives every caller of the batch,
//! and the next batch connects again. Likewise a statement outside any
//! savepoint that fails aborts the batch's transaction, so the batch fails
//! rather than have PostgreSQL answer its `COMMIT` by rolling it back.

use super::PostgresStore;
use crate::store::{BatchWriter, StoreError};

impl BatchWriter for PostgresStore {
    fn begin_batch(&self, flush: bool) -> Result<(), StoreError> {
        let mut conn = self.connection()?;
        conn.begin_batch(flush).map_err(|e| self.explain(e))
    }

    /// One write per transaction. The writes of a batch would hold their
    /// row locks until it commits, and the batches of two workers could
    /// then wait on each other (one claims A then B, the other B then A):
    /// PostgreSQL breaks such a cycle only after its deadlock timeout, by
    /// failing a write. SQLite has one writer and no such cycle.
    fn max_batch(&self) -> usize {
        1
    }

    fn commit_batch(&self) -> Result<(), StoreError> {
        // As it is: the batch must commit on the connection it began on.
        self.lock().commit_batch().map_err(|e| self.explain(e))
    }
}

#[cfg(test)]
mod tests {
    use postgres::{Client, NoTls};

    use super::*;
    use crate::store::conformance::TestSchema;
    use crate::store::{CheckpointStore, Claim, NewWorkflow, Owner, StepKey, now_millis};

    /// A store on a fresh schema, and a client of its own on that schema.
    fn open() -> Option<(TestSchema, PostgresStore, Client)> {
        let schema = TestSchema::create()?;
        let store = PostgresStore::open(&schema.url).unwrap();
        let other = Client::connect(&schema.url, NoTls).unwrap();
        Some((schema, store, other))
    }

    /// Create running workflow `id`, owned by `run`.
    fn create(store: &PostgresStore, id: &str, run: &str) -> Result<(), StoreError> {
        let owner = Owner {
            pid: 1,
            host: "h1".to_owned(),
            boot_id: None,
            pid_ns: None,
            started: None,
        };
        store.create_workflow(&NewWorkflow {
            id,
            component_sha256: "c1",
            input: "1",
            claim: &Claim {
                run_id: run,
                owner: &owner,
                lease_until: now_millis() + 60_000,
            },
            grants: None,
            component: None,
        })
    }

    /// The workflows committed, as another connection sees them.
    fn committed(other: &mut Client) -> Vec<String> {
        other
            .query("SELECT id FROM workflows ORDER BY id", &[])
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect()
    }

    fn synchronous_commit(store: &PostgresStore) -> String {
        store
            .read(|s| Ok(s.query_one("SHOW synchronous_commit", &[])?.get(0)))
            .unwrap()
    }

    #[test]
    fn a_batch_commits_its_writes_at_once() {
        let Some((_schema, store, mut other)) = open() else {
            return;
        };
        store.begin_batch(true).unwrap();
        for id in ["a", "b", "c"] {
            create(&store, id, "r1").unwrap();
        }
        assert!(committed(&mut other).is_empty());
        store.commit_batch().unwrap();
        assert_eq!(committed(&mut other), ["a", "b", "c"]);
        // Writes after the batch commit on their own again.
        create(&store, "d", "r1").unwrap();
        assert_eq!(committed(&mut other).len(), 4);
    }

    #[test]
    fn a_failed_write_is_undone_alone() {
        let Some((_schema, store, mut other)) = open() else {
            return;
        };
        create(&store, "a", "r1").unwrap();
        store.begin_batch(true).unwrap();
        create(&store, "b", "r2").unwrap();
        // A run that lost ownership: fenced off.
        let fenced = store.record_attempt("a", "intruder", &StepKey::new("s", 1), "boom", 0);
        assert!(
            matches!(fenced, Err(StoreError::LostOwnership { .. })),
            "{fenced:?}"
        );
        // A write that changed a row before it failed: its change goes too.
        let failed = store.write(|tx| {
            tx.execute("UPDATE workflows SET input = '2' WHERE id = 'a'", &[])?;
            PostgresStore::check_owner(tx, "a", "intruder")
        });
        assert!(matches!(failed, Err(StoreError::LostOwnership { .. })));
        // A deadlock the first time: its savepoint runs again.
        let mut deadlocked = false;
        store
            .write(|tx| {
                tx.execute(
                    "UPDATE workflows SET input = input || '+' WHERE id = 'b'",
                    &[],
                )?;
                if !deadlocked {
                    deadlocked = true;
                    return Err(StoreError::Busy { attempts: 1 });
                }
                Ok(())
            })
            .unwrap();
        create(&store, "c", "r3").unwrap();
        store.commit_batch().unwrap();

        assert_eq!(committed(&mut other), ["a", "b", "c"]);
        let inputs: Vec<String> = other
            .query("SELECT input FROM workflows ORDER BY id", &[])
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect();
        assert_eq!(inputs, ["1", "1+", "1"]);
    }

    #[test]
    fn a_batch_whose_connection_breaks_commits_nothing() {
        let Some((schema, store, mut other)) = open() else {
            return;
        };
        store.begin_batch(true).unwrap();
        create(&store, "a", "r1").unwrap();
        let pid: i32 = store
            .read(|s| Ok(s.query_one("SELECT pg_backend_pid()", &[])?.get(0)))
            .unwrap();
        other
            .execute("SELECT pg_terminate_backend($1)", &[&pid])
            .unwrap();
        // Neither this write nor the commit may pass for done, on the
        // broken connection or on a new one.
        match create(&store, "b", "r1") {
            Err(error @ StoreError::Io { .. }) => assert!(error.is_storage_failure()),
            other => panic!("expected Io, got {other:?}"),
        }
        match store.commit_batch() {
            Err(StoreError::Io { path, reason }) => {
                assert_eq!(path, super::super::redact(&schema.url));
                assert!(reason.contains("connection"), "{reason}");
            }
            other => panic!("expected Io, got {other:?}"),
        }
        assert!(committed(&mut other).is_empty());
        // The next batch connects again.
        store.begin_batch(true).unwrap();
        create(&store, "c", "r1").unwrap();
        store.commit_batch().unwrap();
        assert_eq!(committed(&mut other), ["c"]);
    }

    #[test]
    fn the_batch_decides_whether_its_commit_waits_for_the_flush() {
        let Some((_schema, store, _other)) = open() else {
            return;
        };
        create(&store, "a", "r1").unwrap();

        store.begin_batch(false).unwrap();
        assert_eq!(synchronous_commit(&store), "off");
        store.commit_batch().unwrap();

        // An unflushed write in a flushed batch leaves the batch flushed.
        store.begin_batch(true).unwrap();
        store.begin_retry("a", "r1", &StepKey::new("s", 1)).unwrap();
        assert_eq!(synchronous_commit(&store), "on");
        store.commit_batch().unwrap();
        assert_eq!(synchronous_commit(&store), "on");
    }
}
