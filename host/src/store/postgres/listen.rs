//! [`WorkListener`] on PostgreSQL: a connection of its own that LISTENs on
//! `durable_work`, where the schema's triggers (see [`super::schema`])
//! notify whenever work may have become ready. This is how a `serve` on one
//! host hears within milliseconds of a workflow queued, a signal sent or a
//! sleeper unloaded on another, instead of polling for it.

use std::time::Duration;

use postgres::Client;
use postgres::fallible_iterator::FallibleIterator;

use super::connection::{Target, store_error};
use crate::store::{StoreError, WorkListener};

/// The channel the triggers notify on.
const CHANNEL: &str = "durable_work";

/// Listens for the notifications of one schema.
pub struct PostgresWorkListener {
    client: Client,
    /// Notifications name the schema they come from: several schemas (test
    /// runs, separate installations) may share one database.
    schema: String,
}

impl PostgresWorkListener {
    pub(super) fn open(target: &Target) -> Result<Self, StoreError> {
        let mut client = target.connect()?.client;
        let schema: Option<String> = client
            .query_one("SELECT current_schema()", &[])
            .map_err(store_error)?
            .get(0);
        client
            .batch_execute(&format!("LISTEN {CHANNEL}"))
            .map_err(store_error)?;
        Ok(Self {
            client,
            schema: schema.unwrap_or_default(),
        })
    }
}

impl WorkListener for PostgresWorkListener {
    fn wait(&mut self, timeout: Duration) -> Result<bool, StoreError> {
        let schema = self.schema.as_str();
        let mut notifications = self.client.notifications();
        {
            let mut waiting = notifications.timeout_iter(timeout);
            loop {
                match waiting.next().map_err(store_error)? {
                    None => return Ok(false),
                    Some(note) if note.payload() == schema => break,
                    Some(_) => {} // another schema's
                }
            }
        }
        // Take what else came meanwhile: one wake-up for all of it.
        let mut pending = notifications.iter();
        while pending.next().map_err(store_error)?.is_some() {}
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance::TestSchema;
    use crate::store::{CheckpointStore, PostgresStore, QueuedWorkflow};

    fn queue(store: &PostgresStore, id: &str) {
        store
            .enqueue_workflow(&QueuedWorkflow {
                id,
                deployment: "app",
                component_sha256: "c1",
                input: "1",
                grants: "{}",
                queue: "default",
            })
            .unwrap();
    }

    #[test]
    fn a_queued_workflow_is_heard_and_another_schema_is_not() {
        let (Some(schema), Some(other)) = (TestSchema::create(), TestSchema::create()) else {
            return;
        };
        let store = PostgresStore::open(&schema.url).unwrap();
        let elsewhere = PostgresStore::open(&other.url).unwrap();
        let mut listener = PostgresStore::listen_for_work(&schema.url).unwrap();
        assert!(
            !listener.wait(Duration::from_millis(50)).unwrap(),
            "nothing yet"
        );

        queue(&elsewhere, "not-ours");
        assert!(
            !listener.wait(Duration::from_millis(200)).unwrap(),
            "another schema's work is not ours"
        );
        queue(&store, "a");
        assert!(listener.wait(Duration::from_secs(5)).unwrap());
    }
}
