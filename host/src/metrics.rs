//! What `serve` counts, for `GET /metrics` in the Prometheus (OpenMetrics)
//! text format, with the well-kept `prometheus-client` crate.
//!
//! The scheduler counts runs, takeovers and timer lateness, its observer
//! counts steps, the store's group commit reports each commit (through
//! [`CommitObserver`], so the store knows nothing of metrics), and the
//! queue depths are read from the database when scraped. The HTTP API only
//! renders what is here.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::engine::{StepEvent, StepEventKind};
use crate::store::{CheckpointStore, CommitObserver, StoreError, WorkflowStatus};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabel {
    queue: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabel {
    /// `executed`, `replayed` or `interrupted`.
    outcome: &'static str,
}

/// The server's counters, shared by its threads.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    runs_started: Family<QueueLabel, Counter>,
    runs_ended: Family<StatusLabel, Counter>,
    steps: Family<StepLabel, Counter>,
    takeovers: Counter,
    timer_lateness: Histogram,
    commit_writes: Histogram,
    commit_seconds: Histogram,
    queue_depth: Family<QueueLabel, Gauge>,
    /// The queues this server serves: their depth reads 0 when empty,
    /// rather than vanishing from the scrape.
    served: Vec<String>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("durable");
        let runs_started = Family::<QueueLabel, Counter>::default();
        registry.register(
            "runs_started",
            "Runs of workflows begun by this server (new, woken, taken over), by queue",
            runs_started.clone(),
        );
        let runs_ended = Family::<StatusLabel, Counter>::default();
        registry.register(
            "runs_ended",
            "Runs that ended, by the status they left the workflow in",
            runs_ended.clone(),
        );
        let steps = Family::<StepLabel, Counter>::default();
        registry.register(
            "steps",
            "Steps executed, replayed from history, or interrupted",
            steps.clone(),
        );
        let takeovers = Counter::default();
        registry.register(
            "takeovers",
            "Running workflows taken over from a dead owner or an expired lease",
            takeovers.clone(),
        );
        let timer_lateness = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register(
            "timer_lateness_seconds",
            "From a sleeping workflow's wake-up time to the start of the run that woke it",
            timer_lateness.clone(),
        );
        let commit_writes = Histogram::new(exponential_buckets(1.0, 2.0, 12));
        registry.register(
            "commit_writes",
            "Writes per group commit (one transaction)",
            commit_writes.clone(),
        );
        let commit_seconds = Histogram::new(exponential_buckets(0.000_05, 2.0, 16));
        registry.register(
            "commit_seconds",
            "Time of a group commit, its flush included",
            commit_seconds.clone(),
        );
        let queue_depth = Family::<QueueLabel, Gauge>::default();
        registry.register(
            "queue_depth",
            "Workflows waiting in each queue (read when scraped)",
            queue_depth.clone(),
        );
        Self {
            registry,
            runs_started,
            runs_ended,
            steps,
            takeovers,
            timer_lateness,
            commit_writes,
            commit_seconds,
            queue_depth,
            served: Vec::new(),
        }
    }
}

impl Metrics {
    pub fn run_started(&self, queue: &str) {
        self.runs_started
            .get_or_create(&QueueLabel {
                queue: queue.to_owned(),
            })
            .inc();
    }

    pub fn run_ended(&self, status: WorkflowStatus) {
        self.runs_ended
            .get_or_create(&StatusLabel {
                status: status.as_str(),
            })
            .inc();
    }

    pub fn step(&self, event: &StepEvent) {
        let outcome = match event.kind {
            StepEventKind::Replayed { .. } => "replayed",
            StepEventKind::Executed { .. } => "executed",
            StepEventKind::Interrupted { .. } => "interrupted",
        };
        self.steps.get_or_create(&StepLabel { outcome }).inc();
    }

    pub fn takeover(&self) {
        self.takeovers.inc();
    }

    /// A sleeping workflow's run began `late` after its wake-up time.
    pub fn timer_fired(&self, late: Duration) {
        self.timer_lateness.observe(late.as_secs_f64());
    }

    /// Report a depth for each of `queues`, empty or not.
    pub fn serving(mut self, queues: impl IntoIterator<Item = String>) -> Self {
        self.served = queues.into_iter().collect();
        self
    }

    /// The text for a scrape, with the queue depths read from `store` now.
    pub fn render(&self, store: &dyn CheckpointStore) -> Result<String, StoreError> {
        self.queue_depth.clear();
        for queue in &self.served {
            self.queue_depth
                .get_or_create(&QueueLabel {
                    queue: queue.clone(),
                })
                .set(0);
        }
        for (queue, depth) in store.queue_depths()? {
            self.queue_depth
                .get_or_create(&QueueLabel { queue })
                .set(depth as i64);
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        Ok(text)
    }
}

impl CommitObserver for Metrics {
    fn committed(&self, writes: usize, took: Duration) {
        self.commit_writes.observe(writes as f64);
        self.commit_seconds.observe(took.as_secs_f64());
    }
}
