//! One contract, every backend: the behaviour the engine and the scheduler
//! rely on, written once against `&dyn CheckpointStore` and run against
//! SQLite and PostgreSQL, alone and behind [`GroupCommitStore`] (see
//! [`contract!`]).
//!
//! Each PostgreSQL test works in a schema of its own, dropped at its end
//! ([`TestSchema`]). The server is `DURABLE_TEST_POSTGRES_URL`, else
//! [`DEFAULT_POSTGRES_URL`]; when it cannot be reached the PostgreSQL tests
//! fail if `CI` or `DURABLE_TEST_POSTGRES_URL` is set, and otherwise say
//! `SKIPPED` on stderr and pass.

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::*;

/// Where the PostgreSQL tests connect when `DURABLE_TEST_POSTGRES_URL` is unset.
pub(crate) const DEFAULT_POSTGRES_URL: &str = "postgres://root@127.0.0.1:5432/test";

/// A store for one test, and what it lives in (removed on drop, after the store).
struct Fixture {
    store: Box<dyn CheckpointStore>,
    _home: Box<dyn std::any::Any>,
}

fn sqlite_fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = SqliteStore::open(&dir.path().join("durable.db")).expect("the SQLite store opens");
    Fixture {
        store: Box::new(store),
        _home: Box::new(dir),
    }
}

/// SQLite behind group commit, as `serve` uses it.
fn group_commit_fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = GroupCommitStore::open(&Database::Sqlite(dir.path().join("durable.db")))
        .expect("the SQLite store opens");
    Fixture {
        store: Box::new(store),
        _home: Box::new(dir),
    }
}

/// PostgreSQL behind group commit, as `serve` uses it.
fn group_commit_postgres_fixture() -> Option<Fixture> {
    let schema = TestSchema::create()?;
    let store = GroupCommitStore::open(&Database::Postgres(schema.url.clone()))
        .expect("the PostgreSQL store opens");
    Some(Fixture {
        store: Box::new(store),
        _home: Box::new(schema),
    })
}

fn postgres_fixture() -> Option<Fixture> {
    let schema = TestSchema::create()?;
    let store = PostgresStore::open(&schema.url).expect("the PostgreSQL store opens");
    Some(Fixture {
        store: Box::new(store),
        _home: Box::new(schema),
    })
}

/// A fresh PostgreSQL schema for one test, dropped (with its tables) on drop.
pub(crate) struct TestSchema {
    base_url: String,
    name: String,
    /// The server's URL with this schema as its `search_path`.
    pub(crate) url: String,
}

impl TestSchema {
    /// A new schema, or `None` (after a loud `SKIPPED` line) when the
    /// server cannot be reached and this run does not require it.
    pub(crate) fn create() -> Option<Self> {
        let configured = std::env::var("DURABLE_TEST_POSTGRES_URL").ok();
        let required = configured.is_some() || std::env::var_os("CI").is_some();
        let base_url = configured.unwrap_or_else(|| DEFAULT_POSTGRES_URL.to_owned());
        let mut client = match admin_client(&base_url) {
            Ok(client) => client,
            Err(error) => {
                let shown = super::postgres::redact(&base_url);
                let error = match std::error::Error::source(&error) {
                    Some(source) => format!("{error}: {source}"),
                    None => error.to_string(),
                };
                assert!(
                    !required,
                    "PostgreSQL unreachable at {shown}, and this run requires it \
                     (CI or DURABLE_TEST_POSTGRES_URL is set): {error}"
                );
                eprintln!("SKIPPED: PostgreSQL unreachable at {shown} ({error})");
                return None;
            }
        };
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "dh_test_{}_{}_{}",
            std::process::id(),
            now_millis(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        client
            .batch_execute(&format!("CREATE SCHEMA {name}"))
            .expect("a test schema can be created");
        let url = with_search_path(&base_url, &name);
        Some(Self {
            base_url,
            name,
            url,
        })
    }
}

impl Drop for TestSchema {
    fn drop(&mut self) {
        let dropped = admin_client(&self.base_url).and_then(|mut client| {
            client.batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name))
        });
        if let Err(error) = dropped {
            eprintln!("could not drop the test schema {}: {error}", self.name);
        }
    }
}

fn admin_client(url: &str) -> Result<::postgres::Client, ::postgres::Error> {
    let mut config = ::postgres::Config::from_str(url)?;
    config.connect_timeout(Duration::from_secs(5));
    config.connect(::postgres::NoTls)
}

/// `url` with `schema` as the connection's `search_path`.
fn with_search_path(url: &str, schema: &str) -> String {
    if url.contains("://") {
        let separator = if url.contains('?') { '&' } else { '?' };
        format!("{url}{separator}options=-csearch_path%3D{schema}")
    } else {
        format!("{url} options=-csearch_path={schema}")
    }
}

/// Each test, once per store: `mod sqlite`, `mod postgres`, and each of
/// them behind group commit (`mod group_commit`, `mod group_commit_postgres`),
/// as `serve` uses them.
macro_rules! contract {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[test]
                fn $test() {
                    let fixture = super::sqlite_fixture();
                    super::$test(&*fixture.store);
                }
            )*
        }
        mod group_commit {
            $(
                #[test]
                fn $test() {
                    let fixture = super::group_commit_fixture();
                    super::$test(&*fixture.store);
                }
            )*
        }
        mod postgres {
            $(
                #[test]
                fn $test() {
                    if let Some(fixture) = super::postgres_fixture() {
                        super::$test(&*fixture.store);
                    }
                }
            )*
        }
        mod group_commit_postgres {
            $(
                #[test]
                fn $test() {
                    if let Some(fixture) = super::group_commit_postgres_fixture() {
                        super::$test(&*fixture.store);
                    }
                }
            )*
        }
    };
}

contract!(
    create_and_read_back,
    the_next_lease_to_expire,
    a_takeover_needs_the_observed_run_and_lease,
    concurrent_takeovers_have_one_winner,
    a_run_that_lost_ownership_changes_nothing,
    steps_begin_finish_and_replay,
    attempts_and_retries,
    leases_renew_expire_and_release,
    cancel,
    listing_pages_newest_first,
    deployments_and_components,
    queue_submissions_are_idempotent,
    ready_work_in_order,
    running_on_host,
    unload_sleep_and_wake,
    unload_for_a_signal_that_came_is_due_at_once,
    signals,
    schedules,
    logs,
    children,
    published_events,
    fork,
    upgrade_and_suspend_unclaimed,
    an_upgrade_takes_a_running_workflow_from_its_run,
    finish_and_reopen,
    a_reopened_handle_sees_the_same_database,
    a_nul_in_guest_text_does_not_fail_a_checkpoint,
    a_takeover_racing_a_run_keeps_exactly_what_was_acknowledged,
    a_signal_racing_an_unload_wakes_it,
    a_child_ending_as_its_parent_unloads_wakes_the_parent,
);

// ---------------------------------------------------------------------------
// Helpers: the records the engine builds.

fn owner(host: &str) -> Owner {
    Owner {
        pid: 4242,
        host: host.to_owned(),
        boot_id: Some("boot-1".to_owned()),
        pid_ns: Some("pid:[1]".to_owned()),
        started: Some(77),
    }
}

const LEASE: Millis = 60_000;

/// Create running workflow `id` owned by `run`.
pub(crate) fn start(store: &dyn CheckpointStore, id: &str, run: &str) -> WorkflowRecord {
    let owner = owner("h1");
    let claim = Claim {
        run_id: run,
        owner: &owner,
        lease_until: now_millis() + LEASE,
    };
    store
        .create_workflow(&NewWorkflow {
            id,
            component_sha256: "c1",
            input: "{\"n\":1}",
            claim: &claim,
            grants: Some("{}"),
            component: Some(b"\0asm-c1"),
        })
        .expect("create");
    store.workflow(id).unwrap().expect("created")
}

/// Take `workflow` (as last read) over for `run`.
pub(crate) fn take_over(
    store: &dyn CheckpointStore,
    workflow: &WorkflowRecord,
    run: &str,
) -> Result<(), StoreError> {
    let owner = owner("h2");
    let claim = Claim {
        run_id: run,
        owner: &owner,
        lease_until: now_millis() + LEASE,
    };
    store.claim_workflow(
        &workflow.id,
        &Takeover {
            previous_run: &workflow.run_id,
            observed_lease: workflow.lease_expires_at,
            observed_component: &workflow.component_sha256,
            claim: &claim,
            component_sha256: &workflow.component_sha256,
            takeovers: workflow.takeovers + 1,
            progress_mark: 0,
            events: &[("takeover", format!("from {}", workflow.run_id))],
        },
    )
}

/// Begin step `name#1` at `sequence`, attempt `attempt`, for `run`.
pub(crate) fn begin(
    store: &dyn CheckpointStore,
    id: &str,
    run: &str,
    name: &str,
    sequence: u32,
    attempt: u32,
) -> Result<StepKey, StoreError> {
    let key = StepKey::new(name, 1);
    store.begin_steps(
        id,
        &[StepBegin {
            key: &key,
            sequence,
            name,
            attempt,
            run_id: run,
            started_at: now_millis(),
            input_fingerprint: Some("fp"),
        }],
    )?;
    Ok(key)
}

pub(crate) fn finish(
    store: &dyn CheckpointStore,
    id: &str,
    run: &str,
    key: &StepKey,
    outcome: Outcome,
) -> Result<(), StoreError> {
    store.finish_step(id, run, key, &outcome, &[], None)
}

fn line(text: &str, stream: LogStream) -> LogLine {
    LogLine {
        at: now_millis(),
        stream,
        step: Some(StepKey::new("a", 1)),
        text: text.to_owned(),
    }
}

pub(crate) fn end(
    store: &dyn CheckpointStore,
    id: &str,
    run: &str,
    status: WorkflowStatus,
    outcome: Outcome,
) -> Result<(), StoreError> {
    store.finish_workflow(
        id,
        run,
        &WorkflowEnd {
            status,
            outcome: &outcome,
            interrupted_steps: &[],
            log: &[],
        },
    )
}

pub(crate) fn enqueue(store: &dyn CheckpointStore, id: &str, queue: &str, input: &str) -> Enqueued {
    store.put_component("c1", b"\0asm-c1").unwrap();
    store
        .enqueue_workflow(&QueuedWorkflow {
            id,
            deployment: "app",
            component_sha256: "c1",
            input,
            grants: "{}",
            queue,
        })
        .expect("enqueue")
}

fn unload(
    store: &dyn CheckpointStore,
    id: &str,
    run: &str,
    waiting_for: Option<&WaitingFor>,
    wake_at: Option<Millis>,
) -> Result<bool, StoreError> {
    store.unload_workflow(
        id,
        run,
        &Unload {
            waiting_for,
            wake_at,
            despite_cancel: false,
        },
    )
}

fn signal(workflow_id: &str, name: &str, signal_id: &str, value: &str) -> SignalRecord {
    SignalRecord {
        seq: 0,
        workflow_id: workflow_id.to_owned(),
        name: name.to_owned(),
        signal_id: signal_id.to_owned(),
        value: value.to_owned(),
        sent_at: now_millis(),
        taken_by: None,
    }
}

pub(crate) fn ids(workflows: &[WorkflowRecord]) -> Vec<&str> {
    workflows.iter().map(|w| w.id.as_str()).collect()
}

fn is_lost(result: Result<impl std::fmt::Debug, StoreError>) -> bool {
    matches!(result, Err(StoreError::LostOwnership { .. }))
}

// ---------------------------------------------------------------------------
// The contract.

fn create_and_read_back(store: &dyn CheckpointStore) {
    let before = now_millis();
    let workflow = start(store, "wf", "r1");
    assert_eq!(workflow.status, WorkflowStatus::Running);
    assert_eq!(workflow.component_sha256, "c1");
    assert_eq!(workflow.input, "{\"n\":1}");
    assert_eq!(workflow.run_id, "r1");
    assert_eq!(workflow.owner, owner("h1"));
    assert_eq!(workflow.grants.as_deref(), Some("{}"));
    assert_eq!(workflow.queue, "default");
    assert!(workflow.created_at >= before && workflow.lease_expires_at > workflow.created_at);
    assert!(!workflow.cancel_requested);
    assert_eq!(workflow.outcome(), None);
    assert_eq!(
        store.component("c1").unwrap().as_deref(),
        Some(&b"\0asm-c1"[..])
    );
    assert_eq!(store.component("nope").unwrap(), None);
    assert_eq!(store.workflow("nope").unwrap(), None);

    let owner = owner("h9");
    let claim = Claim {
        run_id: "r2",
        owner: &owner,
        lease_until: now_millis() + LEASE,
    };
    let again = store.create_workflow(&NewWorkflow {
        id: "wf",
        component_sha256: "c2",
        input: "null",
        claim: &claim,
        grants: None,
        component: Some(b"other"),
    });
    assert!(matches!(again, Err(StoreError::WorkflowExists { id }) if id == "wf"));
    // The refused create kept nothing, not even its component.
    assert_eq!(store.component("c2").unwrap(), None);
    assert_eq!(store.workflow("wf").unwrap().unwrap(), workflow);
}

fn a_takeover_needs_the_observed_run_and_lease(store: &dyn CheckpointStore) {
    let workflow = start(store, "wf", "r1");
    let mut stale = workflow.clone();
    stale.lease_expires_at += 1;
    assert!(is_lost(take_over(store, &stale, "r2")));

    take_over(store, &workflow, "r2").unwrap();
    let now = store.workflow("wf").unwrap().unwrap();
    assert_eq!(now.run_id, "r2");
    assert_eq!(now.owner.host, "h2");
    assert_eq!(now.takeovers, 1);
    assert_eq!(now.status, WorkflowStatus::Running);
    let events = store.events("wf").unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(
        (
            events[0].kind.as_str(),
            events[0].detail.as_str(),
            events[0].run_id.as_str()
        ),
        ("takeover", "from r1", "r2")
    );

    // The same observation again: r2 owns it now.
    match take_over(store, &workflow, "r3") {
        Err(StoreError::LostOwnership { id, owner }) => {
            assert_eq!((id.as_str(), owner.as_str()), ("wf", "r2"));
        }
        other => panic!("expected LostOwnership, got {other:?}"),
    }
    // A takeover of a workflow that is gone.
    let mut gone = workflow.clone();
    gone.id = "gone".to_owned();
    assert!(is_lost(take_over(store, &gone, "r3")));
}

fn concurrent_takeovers_have_one_winner(store: &dyn CheckpointStore) {
    let workflow = start(store, "wf", "r1");
    let results: Vec<Result<(), StoreError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let other = store.reopen().unwrap();
                let workflow = workflow.clone();
                scope.spawn(move || take_over(&*other, &workflow, &format!("r{}", i + 10)))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        1,
        "{results:?}"
    );
    assert!(results.iter().all(|r| r.is_ok() || is_lost(r.clone())));
    assert_eq!(store.events("wf").unwrap().len(), 1);
}

fn a_run_that_lost_ownership_changes_nothing(store: &dyn CheckpointStore) {
    let workflow = start(store, "wf", "r1");
    let key = begin(store, "wf", "r1", "a", 1, 1).unwrap();
    take_over(store, &workflow, "r2").unwrap();
    let snapshot = |store: &dyn CheckpointStore| {
        (
            store.workflow("wf").unwrap(),
            store.steps("wf").unwrap(),
            store.attempts("wf").unwrap(),
            store.logs("wf", 0, 100).unwrap(),
            store.published_events("wf").unwrap(),
            store.children("wf").unwrap(),
        )
    };
    let before = snapshot(store);

    // Every write of the old run r1 is fenced off.
    let log = [line("late", LogStream::Stdout)];
    assert!(is_lost(begin(store, "wf", "r1", "b", 2, 1)));
    assert!(is_lost(begin(store, "wf", "r1", "a", 1, 2)));
    assert!(is_lost(finish(store, "wf", "r1", &key, Ok("1".into()))));
    assert!(is_lost(store.finish_step(
        "wf",
        "r1",
        &key,
        &Ok("1".into()),
        &log,
        Some(&StepEffect::Publish {
            key: "k".into(),
            value: "1".into()
        }),
    )));
    assert!(is_lost(store.record_attempt("wf", "r1", &key, "boom", 10)));
    assert!(is_lost(store.begin_retry("wf", "r1", &key)));
    assert!(is_lost(store.append_log("wf", "r1", &log)));
    assert!(is_lost(unload(store, "wf", "r1", None, Some(1))));
    assert!(is_lost(end(
        store,
        "wf",
        "r1",
        WorkflowStatus::Completed,
        Ok("done".into())
    )));
    let renewal = store.renew_lease("wf", "r1", now_millis() + LEASE).unwrap();
    assert!(!renewal.owned);
    store.release_workflow("wf", "r1").unwrap();
    assert_eq!(snapshot(store), before);

    // A run whose workflow is not running any more is fenced off too.
    end(
        store,
        "wf",
        "r2",
        WorkflowStatus::Failed,
        Err(Failure::new("x")),
    )
    .unwrap();
    match store.append_log("wf", "r2", &log) {
        Err(StoreError::LostOwnership { owner, .. }) => assert!(owner.contains("failed")),
        other => panic!("expected LostOwnership, got {other:?}"),
    }
    match begin(store, "wf", "r2", "b", 2, 1) {
        Err(StoreError::LostOwnership { owner, .. }) => assert!(owner.contains("failed")),
        other => panic!("expected LostOwnership, got {other:?}"),
    }
    assert!(is_lost(store.append_log("gone", "r2", &log)));
}

fn steps_begin_finish_and_replay(store: &dyn CheckpointStore) {
    start(store, "wf", "r1");
    let (a, b) = (StepKey::new("a", 1), StepKey::new("b", 1));
    let t = now_millis();
    store
        .begin_steps(
            "wf",
            &[
                StepBegin {
                    key: &a,
                    sequence: 1,
                    name: "a",
                    attempt: 1,
                    run_id: "r1",
                    started_at: t,
                    input_fingerprint: Some("fa"),
                },
                StepBegin {
                    key: &b,
                    sequence: 2,
                    name: "b",
                    attempt: 1,
                    run_id: "r1",
                    started_at: t,
                    input_fingerprint: None,
                },
            ],
        )
        .unwrap();
    let steps = store.steps("wf").unwrap();
    assert_eq!(steps.len(), 2);
    assert_eq!((steps[0].sequence, steps[1].sequence), (1, 2));
    assert_eq!(steps[0].status, StepStatus::Running);
    assert_eq!(steps[0].outcome(), None);
    assert_eq!(steps[0].input_fingerprint.as_deref(), Some("fa"));
    assert_eq!((steps[0].attempts, steps[0].failures), (1, 0));
    assert_eq!(steps[0].started_at, t);

    let log = [
        line("hello", LogStream::Stdout),
        line("note", LogStream::Log),
    ];
    store
        .finish_step("wf", "r1", &a, &Ok("{\"v\":1}".into()), &log, None)
        .unwrap();
    let failure = Failure {
        message: "declined".into(),
        code: Some("card_declined".into()),
    };
    finish(store, "wf", "r1", &b, Err(failure.clone())).unwrap();
    let steps = store.steps("wf").unwrap();
    assert_eq!(steps[0].outcome(), Some(Ok("{\"v\":1}".to_owned())));
    assert!(steps[0].finished_at.is_some());
    assert_eq!(steps[1].outcome(), Some(Err(failure)));
    assert_eq!(steps[1].status, StepStatus::Failed);
    let logs = store.logs("wf", 0, 10).unwrap();
    assert_eq!(
        logs.iter()
            .map(|l| (l.seq, l.line.text.as_str()))
            .collect::<Vec<_>>(),
        [(1, "hello"), (2, "note")]
    );

    // A finished step is never begun or finished again.
    for attempt in [1, 2] {
        assert!(matches!(
            begin(store, "wf", "r1", "a", 1, attempt),
            Err(StoreError::Backend(_))
        ));
    }
    assert!(matches!(
        finish(store, "wf", "r1", &a, Ok("2".into())),
        Err(StoreError::Backend(_))
    ));
    // Nor is a running step begun again with the same attempt.
    begin(store, "wf", "r1", "c", 3, 1).unwrap();
    assert!(matches!(
        begin(store, "wf", "r1", "c", 3, 1),
        Err(StoreError::Backend(_))
    ));
    assert_eq!(
        store.steps("wf").unwrap()[0].outcome(),
        Some(Ok("{\"v\":1}".to_owned()))
    );

    // Pages of the history, by sequence.
    let page = store.steps_page("wf", 1, 1).unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].key, b);
    assert!(store.steps_page("wf", 3, 10).unwrap().is_empty());
    assert_eq!(store.steps_page("wf", 0, 10).unwrap().len(), 3);
}

fn attempts_and_retries(store: &dyn CheckpointStore) {
    let workflow = start(store, "wf", "r1");
    let key = begin(store, "wf", "r1", "a", 1, 1).unwrap();
    store
        .record_attempt("wf", "r1", &key, "timeout", 250)
        .unwrap();
    let step = &store.steps("wf").unwrap()[0];
    assert_eq!((step.attempts, step.failures), (1, 1));
    assert_eq!(step.status, StepStatus::Running);
    assert_eq!(step.error.as_deref(), Some("timeout"));
    // No attempt in progress until the retry begins.
    assert!(matches!(
        store.record_attempt("wf", "r1", &key, "again", 250),
        Err(StoreError::Backend(_))
    ));
    store.begin_retry("wf", "r1", &key).unwrap();
    let step = &store.steps("wf").unwrap()[0];
    assert_eq!((step.attempts, step.failures), (2, 1));

    // The run dies in attempt 2; a new run takes the step over as attempt 3.
    take_over(store, &workflow, "r2").unwrap();
    begin(store, "wf", "r2", "a", 1, 3).unwrap();
    let attempts = store.attempts("wf").unwrap();
    assert_eq!(attempts.len(), 2);
    assert_eq!(
        (
            attempts[0].attempt,
            attempts[0].error.as_str(),
            attempts[0].interrupted
        ),
        (1, "timeout", false)
    );
    assert_eq!(attempts[0].backoff_ms, Some(250));
    assert_eq!(attempts[0].run_id, "r1");
    assert_eq!((attempts[1].attempt, attempts[1].interrupted), (2, true));
    assert_eq!(attempts[1].backoff_ms, None);
    let step = &store.steps("wf").unwrap()[0];
    assert_eq!((step.attempts, step.run_id.as_str()), (3, "r2"));
    finish(store, "wf", "r2", &key, Ok("ok".into())).unwrap();
    assert_eq!(store.steps("wf").unwrap()[0].failures, 1);
}

fn leases_renew_expire_and_release(store: &dyn CheckpointStore) {
    let workflow = start(store, "wf", "r1");
    start(store, "wf2", "r9");
    let now = now_millis();
    let renewal = store.renew_lease("wf", "r1", now + 2 * LEASE).unwrap();
    assert_eq!(
        renewal,
        LeaseRenewal {
            owned: true,
            cancel_requested: false
        }
    );
    assert_eq!(
        store.workflow("wf").unwrap().unwrap().lease_expires_at,
        now + 2 * LEASE
    );
    assert!(!store.renew_lease("wf", "other", now).unwrap().owned);
    assert!(!store.renew_lease("gone", "r1", now).unwrap().owned);

    store.request_cancel("wf2").unwrap();
    let renewals = store
        .renew_leases(
            &[
                ("wf2".into(), "r9".into()),
                ("wf".into(), "zz".into()),
                ("wf".into(), "r1".into()),
                ("gone".into(), "r1".into()),
                ("wf".into(), "r1".into()),
            ],
            now + 3 * LEASE,
        )
        .unwrap();
    assert_eq!(
        renewals,
        [
            LeaseRenewal {
                owned: true,
                cancel_requested: true
            },
            LeaseRenewal {
                owned: false,
                cancel_requested: false
            },
            LeaseRenewal {
                owned: true,
                cancel_requested: false
            },
            LeaseRenewal {
                owned: false,
                cancel_requested: false
            },
            LeaseRenewal {
                owned: true,
                cancel_requested: false
            },
        ]
    );
    assert!(store.renew_leases(&[], now).unwrap().is_empty());

    // Running with a lease that runs: not ready; once it expires, ready.
    assert_eq!(
        ids(&store
            .ready_workflows("default", now, 10, &HashSet::new())
            .unwrap()),
        Vec::<&str>::new()
    );
    let later = now + 3 * LEASE + 1;
    assert_eq!(
        ids(&store
            .ready_workflows("default", later, 10, &HashSet::new())
            .unwrap())
        .len(),
        2
    );
    // A released lease is ready at once, and claimable.
    store.release_workflow("wf", "r1").unwrap();
    let ready = store
        .ready_workflows("default", now, 10, &HashSet::new())
        .unwrap();
    assert_eq!(ids(&ready), ["wf"]);
    assert_eq!(ready[0].lease_expires_at, 0);
    assert!(is_lost(take_over(store, &workflow, "r2")));
    take_over(store, &ready[0], "r2").unwrap();
    let taken = store.workflow("wf").unwrap().unwrap();
    assert_eq!((taken.run_id.as_str(), taken.takeovers), ("r2", 1));
    // Given back in order: not a run that died, so the count starts again.
    store.release_workflow("wf", "r2").unwrap();
    assert_eq!(store.workflow("wf").unwrap().unwrap().takeovers, 0);
}

fn cancel(store: &dyn CheckpointStore) {
    start(store, "wf", "r1");
    let workflow = store.request_cancel("wf").unwrap();
    assert!(workflow.cancel_requested);
    assert_eq!(workflow.status, WorkflowStatus::Running);
    // Asked once: the second request records nothing more.
    store.request_cancel("wf").unwrap();
    let events = store.events("wf").unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kind, "cancel_requested");
    assert!(matches!(
        store.request_cancel("gone"),
        Err(StoreError::UnknownWorkflow { .. })
    ));
    // A run asked to stop cannot unload, unless handing it over was asked.
    assert!(!unload(store, "wf", "r1", None, Some(now_millis())).unwrap());
    assert_eq!(
        store.workflow("wf").unwrap().unwrap().status,
        WorkflowStatus::Running
    );
    let unloaded = store
        .unload_workflow(
            "wf",
            "r1",
            &Unload {
                waiting_for: None,
                wake_at: Some(now_millis() + LEASE),
                despite_cancel: true,
            },
        )
        .unwrap();
    assert!(unloaded);
    assert_eq!(
        store.workflow("wf").unwrap().unwrap().status,
        WorkflowStatus::Sleeping
    );

    // Idle workflows are cancelled in place, if still as observed.
    enqueue(store, "q", "default", "1");
    assert!(
        !store
            .cancel_idle_workflow("q", WorkflowStatus::Sleeping, "stop")
            .unwrap()
    );
    assert!(
        store
            .cancel_idle_workflow("q", WorkflowStatus::Queued, "stop")
            .unwrap()
    );
    let q = store.workflow("q").unwrap().unwrap();
    assert_eq!(q.status, WorkflowStatus::Cancelled);
    assert!(q.cancel_requested);
    assert_eq!(q.outcome(), Some(Err(Failure::new("stop"))));
    assert_eq!(store.events("q").unwrap()[0].detail, "while queued");
    assert!(
        !store
            .cancel_idle_workflow("q", WorkflowStatus::Queued, "stop")
            .unwrap()
    );
    // A running workflow is not idle.
    start(store, "busy", "r2");
    assert!(
        !store
            .cancel_idle_workflow("busy", WorkflowStatus::Running, "stop")
            .unwrap()
    );
}

fn listing_pages_newest_first(store: &dyn CheckpointStore) {
    // Some in the same millisecond (ties go by id), some apart.
    for id in ["b", "a", "c"] {
        start(store, id, "r");
    }
    std::thread::sleep(Duration::from_millis(3));
    enqueue(store, "e", "default", "1");
    enqueue(store, "d", "default", "1");
    std::thread::sleep(Duration::from_millis(3));
    start(store, "f", "r");
    let key = begin(store, "f", "r", "s", 1, 1).unwrap();
    finish(store, "f", "r", &key, Ok("1".into())).unwrap();
    begin(store, "f", "r", "t", 2, 1).unwrap();

    let all = store.list_workflows(&ListQuery::default()).unwrap();
    let mut expected: Vec<&WorkflowRecord> = all.iter().map(|s| &s.workflow).collect();
    expected.sort_by(|x, y| y.created_at.cmp(&x.created_at).then(x.id.cmp(&y.id)));
    let listed: Vec<&str> = all.iter().map(|s| s.workflow.id.as_str()).collect();
    assert_eq!(
        listed,
        expected.iter().map(|w| w.id.as_str()).collect::<Vec<_>>()
    );
    assert_eq!(listed.len(), 6);
    assert_eq!(listed[0], "f");
    let f = &all[0];
    assert_eq!(
        (f.steps, f.completed_steps, f.failed_steps, f.running_steps),
        (2, 1, 0, 1)
    );

    // Pages of two, each after the last id of the one before.
    let mut paged = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list_workflows(&ListQuery {
                limit: Some(2),
                after: after.clone(),
                ..ListQuery::default()
            })
            .unwrap();
        if page.is_empty() {
            break;
        }
        after = page.last().map(|s| s.workflow.id.clone());
        paged.extend(page.into_iter().map(|s| s.workflow.id));
    }
    assert_eq!(paged, listed);

    let queued = store
        .list_workflows(&ListQuery {
            status: Some(WorkflowStatus::Queued),
            ..ListQuery::default()
        })
        .unwrap();
    let queued: Vec<&str> = queued.iter().map(|s| s.workflow.id.as_str()).collect();
    assert_eq!(queued, ["d", "e"]);
    let containing = store
        .list_workflows(&ListQuery {
            id_contains: Some("c".into()),
            ..ListQuery::default()
        })
        .unwrap();
    assert_eq!(containing.len(), 1);
    let none = store
        .list_workflows(&ListQuery {
            limit: Some(0),
            ..ListQuery::default()
        })
        .unwrap();
    assert!(none.is_empty());
    let mut counts = store.status_counts().unwrap();
    counts.sort_by_key(|(status, _)| status.as_str());
    assert_eq!(
        counts,
        [(WorkflowStatus::Queued, 2), (WorkflowStatus::Running, 4)]
    );
}

fn deployments_and_components(store: &dyn CheckpointStore) {
    store.put_component("c1", b"one").unwrap();
    // Kept under its hash: the first bytes stand.
    store.put_component("c1", b"other").unwrap();
    assert_eq!(store.component("c1").unwrap().as_deref(), Some(&b"one"[..]));
    let big: Vec<u8> = (0..=255).cycle().take(300_000).collect();
    store.put_component("c2", &big).unwrap();
    assert_eq!(store.component("c2").unwrap(), Some(big));

    let first = store.deploy("app", "c1", "{\"a\":1}").unwrap();
    assert_eq!((first.name.as_str(), first.version), ("app", 1));
    let second = store.deploy("app", "c2", "{}").unwrap();
    assert_eq!(second.version, 2);
    store.deploy("Zed", "c1", "{}").unwrap();
    let all = store.deployments(None).unwrap();
    let listed: Vec<(&str, u32)> = all.iter().map(|d| (d.name.as_str(), d.version)).collect();
    // Byte order: upper case first.
    assert_eq!(listed, [("Zed", 1), ("app", 2), ("app", 1)]);
    assert_eq!(store.deployments(Some("app")).unwrap(), [second, first]);
    assert!(store.deployments(Some("none")).unwrap().is_empty());
    // A deployment of a component that was never kept is refused.
    assert!(store.deploy("app", "missing", "{}").is_err());
    assert_eq!(store.deployments(Some("app")).unwrap().len(), 2);
}

fn queue_submissions_are_idempotent(store: &dyn CheckpointStore) {
    let Enqueued::Created(created) = enqueue(store, "wf", "emails", "{\"x\":1}") else {
        panic!("expected a new workflow");
    };
    assert_eq!(created.status, WorkflowStatus::Queued);
    assert_eq!(created.queue, "emails");
    assert_eq!(created.deployment.as_deref(), Some("app"));
    assert_eq!(created.run_id, "");
    assert_eq!(created.lease_expires_at, 0);
    // The same id again: the existing workflow answers (the caller
    // compares inputs, and refuses a different one).
    let Enqueued::Existing(same) = enqueue(store, "wf", "emails", "{\"x\":1}") else {
        panic!("expected the existing workflow");
    };
    assert_eq!(same, created);
    let Enqueued::Existing(other) = enqueue(store, "wf", "default", "{\"x\":2}") else {
        panic!("expected the existing workflow");
    };
    assert_eq!(other.input, "{\"x\":1}");
    assert_eq!(other.queue, "emails");

    enqueue(store, "wf2", "emails", "1");
    enqueue(store, "wf3", "default", "1");
    assert_eq!(
        store.queue_depths().unwrap(),
        [("default".to_owned(), 1), ("emails".to_owned(), 2)]
    );
    // Claiming a queued workflow makes it running.
    let queued = store.workflow("wf").unwrap().unwrap();
    take_over(store, &queued, "r1").unwrap();
    let running = store.workflow("wf").unwrap().unwrap();
    assert_eq!(
        (running.status, running.run_id.as_str()),
        (WorkflowStatus::Running, "r1")
    );
    assert!(is_lost(take_over(store, &queued, "r2")));
    assert_eq!(
        store.queue_depths().unwrap(),
        [("default".to_owned(), 1), ("emails".to_owned(), 1)]
    );
}

fn ready_work_in_order(store: &dyn CheckpointStore) {
    enqueue(store, "q1", "default", "1");
    std::thread::sleep(Duration::from_millis(2));
    enqueue(store, "q2", "default", "1");
    enqueue(store, "other-queue", "emails", "1");
    start(store, "expired", "r1");
    store.release_workflow("expired", "r1").unwrap();
    start(store, "sleeper", "r2");
    let now = now_millis();
    unload(store, "sleeper", "r2", None, Some(now - 5)).unwrap();
    start(store, "later", "r3");
    unload(store, "later", "r3", None, Some(now + LEASE)).unwrap();

    // Each call may reserve the queued ones it answers with (PostgreSQL
    // does): the next, past the reservation, gets them again.
    let mut at = now;
    let mut ready = |limit, skip: &[&str]| {
        let skip = skip.iter().map(|id| id.to_string()).collect();
        let ready = store.ready_workflows("default", at, limit, &skip).unwrap();
        at += RESERVATION_MS + 1;
        ids(&ready)
            .iter()
            .map(|id| id.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(ready(10, &[]), ["expired", "sleeper", "q1", "q2"]);
    assert_eq!(ready(3, &[]), ["expired", "sleeper", "q1"]);
    assert_eq!(ready(1, &[]), ["expired"]);
    assert_eq!(ready(3, &["sleeper", "q1"]), ["expired", "q2"]);
    assert_eq!(
        ids(&store
            .ready_workflows("emails", now, 10, &HashSet::new())
            .unwrap()),
        ["other-queue"]
    );
    assert!(
        store
            .ready_workflows("none", now, 10, &HashSet::new())
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.next_wake("default").unwrap(), Some(now - 5));
    assert_eq!(store.next_wake("emails").unwrap(), None);
}

fn the_next_lease_to_expire(store: &dyn CheckpointStore) {
    let now = now_millis();
    assert_eq!(store.next_lease_expiry("default", now).unwrap(), None);
    let first = start(store, "first", "r1");
    start(store, "second", "r2");
    assert_eq!(
        store.next_lease_expiry("default", now).unwrap(),
        Some(first.lease_expires_at)
    );
    assert_eq!(store.next_lease_expiry("emails", now).unwrap(), None);
    // Expired, or given back: up for takeover already, not to wait for.
    store.release_workflow("first", "r1").unwrap();
    let second = store.workflow("second").unwrap().unwrap();
    assert_eq!(
        store.next_lease_expiry("default", now).unwrap(),
        Some(second.lease_expires_at)
    );
    assert_eq!(
        store
            .next_lease_expiry("default", second.lease_expires_at)
            .unwrap(),
        None
    );
}

fn running_on_host(store: &dyn CheckpointStore) {
    start(store, "mine", "r1");
    start(store, "released", "r2");
    store.release_workflow("released", "r2").unwrap();
    let now = now_millis();
    let found = store
        .running_on_host("default", "h1", "boot-1", now, 10)
        .unwrap();
    assert_eq!(ids(&found), ["mine"]);
    assert!(
        store
            .running_on_host("default", "h1", "boot-2", now, 10)
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .running_on_host("default", "h2", "boot-1", now, 10)
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .running_on_host("emails", "h1", "boot-1", now, 10)
            .unwrap()
            .is_empty()
    );
}

fn unload_sleep_and_wake(store: &dyn CheckpointStore) {
    start(store, "wf", "r1");
    let wake = now_millis() + 1_000;
    assert!(unload(store, "wf", "r1", None, Some(wake)).unwrap());
    let sleeping = store.workflow("wf").unwrap().unwrap();
    assert_eq!(sleeping.status, WorkflowStatus::Sleeping);
    assert_eq!(sleeping.wake_at, Some(wake));
    assert_eq!(sleeping.lease_expires_at, 0);
    assert_eq!(sleeping.run_id, "r1");
    assert_eq!(sleeping.waiting_for, None);
    assert_eq!(store.next_wake("default").unwrap(), Some(wake));
    assert!(
        store
            .ready_workflows("default", wake - 1, 10, &HashSet::new())
            .unwrap()
            .is_empty()
    );
    let ready = store
        .ready_workflows("default", wake, 10, &HashSet::new())
        .unwrap();
    assert_eq!(ids(&ready), ["wf"]);
    // Resumed by a takeover: running again, not due any more.
    take_over(store, &ready[0], "r2").unwrap();
    let resumed = store.workflow("wf").unwrap().unwrap();
    assert_eq!(
        (resumed.status, resumed.wake_at),
        (WorkflowStatus::Running, None)
    );
    assert_eq!(store.next_wake("default").unwrap(), None);

    // Waiting for a signal, without a timeout: due when it comes.
    let waits = WaitingFor::Signal("approve".into());
    assert!(unload(store, "wf", "r2", Some(&waits), None).unwrap());
    let waiting = store.workflow("wf").unwrap().unwrap();
    assert_eq!(waiting.status, WorkflowStatus::Waiting);
    assert_eq!(waiting.waiting_for, Some(waits));
    assert_eq!(store.next_wake("default").unwrap(), None);
    // Another signal name does not wake it.
    store
        .send_signal(&signal("wf", "other", "s0", "0"))
        .unwrap();
    assert_eq!(store.workflow("wf").unwrap().unwrap().wake_at, None);
    let sent = signal("wf", "approve", "s1", "true");
    store.send_signal(&sent).unwrap();
    assert_eq!(
        store.workflow("wf").unwrap().unwrap().wake_at,
        Some(sent.sent_at)
    );
    assert_eq!(
        ids(&store
            .ready_workflows("default", sent.sent_at, 10, &HashSet::new())
            .unwrap()),
        ["wf"]
    );
}

fn unload_for_a_signal_that_came_is_due_at_once(store: &dyn CheckpointStore) {
    start(store, "wf", "r1");
    store.send_signal(&signal("wf", "go", "s1", "1")).unwrap();
    let before = now_millis();
    let waits = WaitingFor::Signal("go".into());
    assert!(unload(store, "wf", "r1", Some(&waits), Some(before + LEASE)).unwrap());
    let waiting = store.workflow("wf").unwrap().unwrap();
    assert_eq!(waiting.status, WorkflowStatus::Waiting);
    let wake = waiting.wake_at.expect("due");
    assert!(wake >= before && wake < before + LEASE);
}

fn signals(store: &dyn CheckpointStore) {
    start(store, "wf", "r1");
    let SignalSent::Kept(first) = store.send_signal(&signal("wf", "go", "s1", "1")).unwrap() else {
        panic!("expected a new signal");
    };
    assert!(first.seq > 0);
    assert_eq!(first.taken_by, None);
    let SignalSent::Kept(second) = store.send_signal(&signal("wf", "go", "s2", "2")).unwrap()
    else {
        panic!("expected a new signal");
    };
    assert!(second.seq > first.seq);
    // Sent again with the same id: the first one stands.
    assert_eq!(
        store
            .send_signal(&signal("wf", "go", "s1", "changed"))
            .unwrap(),
        SignalSent::Duplicate(first.clone())
    );
    assert_eq!(store.next_signal("wf", "go").unwrap(), Some(first.clone()));
    assert_eq!(store.next_signal("wf", "stop").unwrap(), None);

    let key = begin(store, "wf", "r1", "durable.signal:go", 1, 1).unwrap();
    store
        .finish_step(
            "wf",
            "r1",
            &key,
            &Ok("1".into()),
            &[],
            Some(&StepEffect::TakeSignal { seq: first.seq }),
        )
        .unwrap();
    assert_eq!(store.next_signal("wf", "go").unwrap(), Some(second.clone()));
    // Taken once: a second take fails, and its step stays unfinished.
    let key2 = StepKey::new("durable.signal:go", 2);
    store
        .begin_steps(
            "wf",
            &[StepBegin {
                key: &key2,
                sequence: 2,
                name: "durable.signal:go",
                attempt: 1,
                run_id: "r1",
                started_at: now_millis(),
                input_fingerprint: None,
            }],
        )
        .unwrap();
    assert!(matches!(
        store.finish_step(
            "wf",
            "r1",
            &key2,
            &Ok("1".into()),
            &[],
            Some(&StepEffect::TakeSignal { seq: first.seq }),
        ),
        Err(StoreError::Backend(_))
    ));
    assert_eq!(store.steps("wf").unwrap()[1].status, StepStatus::Running);
    let all = store.signals("wf").unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].taken_by, Some(key));
    assert_eq!(all[1], second);

    assert!(matches!(
        store.send_signal(&signal("gone", "go", "s1", "1")),
        Err(StoreError::UnknownWorkflow { .. })
    ));
    end(
        store,
        "wf",
        "r1",
        WorkflowStatus::Completed,
        Ok("done".into()),
    )
    .unwrap();
    assert!(matches!(
        store.send_signal(&signal("wf", "go", "s3", "3")),
        Err(StoreError::WorkflowEnded {
            status: WorkflowStatus::Completed,
            ..
        })
    ));
    // A duplicate is still answered as one after the end.
    assert!(matches!(
        store.send_signal(&signal("wf", "go", "s2", "2")),
        Ok(SignalSent::Duplicate(_))
    ));
}

fn schedules(store: &dyn CheckpointStore) {
    let schedule = |name: &str, next_tick| ScheduleRecord {
        name: name.to_owned(),
        cron: "0 * * * *".to_owned(),
        deployment: "app".to_owned(),
        input: "{}".to_owned(),
        queue: "default".to_owned(),
        next_tick,
        created_at: 5,
    };
    assert!(store.add_schedule(&schedule("hourly", 2_000)).unwrap());
    assert!(!store.add_schedule(&schedule("hourly", 1)).unwrap());
    assert!(store.add_schedule(&schedule("b", 1_000)).unwrap());
    assert!(store.add_schedule(&schedule("a", 1_000)).unwrap());
    let names = |store: &dyn CheckpointStore| -> Vec<String> {
        store
            .schedules()
            .unwrap()
            .into_iter()
            .map(|s| s.name)
            .collect()
    };
    assert_eq!(names(store), ["a", "b", "hourly"]);
    assert_eq!(store.schedules().unwrap()[2], schedule("hourly", 2_000));
    assert!(!store.advance_schedule("hourly", 1, 3_000).unwrap());
    assert!(store.advance_schedule("hourly", 2_000, 500).unwrap());
    assert_eq!(names(store), ["hourly", "a", "b"]);
    assert!(!store.advance_schedule("gone", 0, 1).unwrap());
    assert!(store.remove_schedule("a").unwrap());
    assert!(!store.remove_schedule("a").unwrap());
    assert_eq!(names(store), ["hourly", "b"]);
}

fn logs(store: &dyn CheckpointStore) {
    start(store, "wf", "r1");
    assert!(store.logs("wf", 0, 10).unwrap().is_empty());
    store.append_log("wf", "r1", &[]).unwrap();
    let lines = [
        line("out", LogStream::Stdout),
        line("err", LogStream::Stderr),
        line("GET http://x/: 200", LogStream::Http),
        LogLine {
            step: None,
            ..line("log", LogStream::Log)
        },
    ];
    store.append_log("wf", "r1", &lines).unwrap();
    let all = store.logs("wf", 0, 10).unwrap();
    assert_eq!(all.iter().map(|l| l.seq).collect::<Vec<_>>(), [1, 2, 3, 4]);
    assert_eq!(
        all.iter().map(|l| l.line.clone()).collect::<Vec<_>>(),
        lines
    );
    let page = store.logs("wf", 1, 2).unwrap();
    assert_eq!(page.iter().map(|l| l.seq).collect::<Vec<_>>(), [2, 3]);
    let http = store.stream_logs("wf", LogStream::Http).unwrap();
    assert_eq!(http.len(), 1);
    assert_eq!(
        (http[0].seq, http[0].line.text.as_str()),
        (3, "GET http://x/: 200")
    );

    // The last LOG_LINES_KEPT lines are kept.
    let many: Vec<LogLine> = (0..LOG_LINES_KEPT)
        .map(|i| line(&format!("line {i}"), LogStream::Stdout))
        .collect();
    store.append_log("wf", "r1", &many).unwrap();
    let kept = store.logs("wf", 0, u32::MAX).unwrap();
    assert_eq!(kept.len() as i64, LOG_LINES_KEPT);
    assert_eq!(kept[0].seq, 5);
    assert_eq!(kept[0].line.text, "line 0");
    assert!(store.stream_logs("wf", LogStream::Http).unwrap().is_empty());
}

fn children(store: &dyn CheckpointStore) {
    start(store, "parent", "r1");
    let child = ChildStart {
        id: "child".into(),
        deployment: Some("app".into()),
        component_sha256: "c1".into(),
        input: "{\"c\":1}".into(),
        grants: Some("{}".into()),
        queue: "kids".into(),
    };
    let key = begin(store, "parent", "r1", "durable.child", 1, 1).unwrap();
    store
        .finish_step(
            "parent",
            "r1",
            &key,
            &Ok("\"child\"".into()),
            &[],
            Some(&StepEffect::StartChild(child.clone())),
        )
        .unwrap();
    let queued = store.workflow("child").unwrap().unwrap();
    assert_eq!(queued.status, WorkflowStatus::Queued);
    assert_eq!(queued.parent_id.as_deref(), Some("parent"));
    assert_eq!(queued.queue, "kids");
    assert_eq!(ids(&store.children("parent").unwrap()), ["child"]);

    // The id taken: refused, and the step stays unfinished.
    let key2 = StepKey::new("durable.child", 2);
    store
        .begin_steps(
            "parent",
            &[StepBegin {
                key: &key2,
                sequence: 2,
                name: "durable.child",
                attempt: 1,
                run_id: "r1",
                started_at: now_millis(),
                input_fingerprint: None,
            }],
        )
        .unwrap();
    assert!(matches!(
        store.finish_step(
            "parent",
            "r1",
            &key2,
            &Ok("\"child\"".into()),
            &[],
            Some(&StepEffect::StartChild(child)),
        ),
        Err(StoreError::WorkflowExists { id }) if id == "child"
    ));
    assert_eq!(
        store.steps("parent").unwrap()[1].status,
        StepStatus::Running
    );

    // The parent waits for its child, which ends: the parent is due.
    let waits = WaitingFor::Child("child".into());
    assert!(unload(store, "parent", "r1", Some(&waits), None).unwrap());
    assert_eq!(store.workflow("parent").unwrap().unwrap().wake_at, None);
    take_over(store, &queued, "rc").unwrap();
    end(
        store,
        "child",
        "rc",
        WorkflowStatus::Completed,
        Ok("42".into()),
    )
    .unwrap();
    let parent = store.workflow("parent").unwrap().unwrap();
    assert!(parent.wake_at.is_some());
    assert_eq!(parent.status, WorkflowStatus::Waiting);

    // Waiting for a child that has ended already: due at once.
    let ready = store
        .ready_workflows("default", now_millis(), 10, &HashSet::new())
        .unwrap();
    take_over(store, &ready[0], "r2").unwrap();
    assert!(unload(store, "parent", "r2", Some(&waits), None).unwrap());
    assert!(store.workflow("parent").unwrap().unwrap().wake_at.is_some());

    // A queued child cancelled: its waiting parent is due too.
    let ready = store
        .ready_workflows("default", now_millis(), 10, &HashSet::new())
        .unwrap();
    take_over(store, &ready[0], "r3").unwrap();
    enqueue(store, "child2", "kids", "1");
    let waits2 = WaitingFor::Child("child2".into());
    assert!(unload(store, "parent", "r3", Some(&waits2), None).unwrap());
    assert_eq!(store.workflow("parent").unwrap().unwrap().wake_at, None);
    assert!(
        store
            .cancel_idle_workflow("child2", WorkflowStatus::Queued, "no")
            .unwrap()
    );
    assert!(store.workflow("parent").unwrap().unwrap().wake_at.is_some());
}

fn published_events(store: &dyn CheckpointStore) {
    start(store, "wf", "r1");
    for (ordinal, value) in [(1, "1"), (2, "2")] {
        let key = StepKey::new("durable.event:progress", ordinal);
        store
            .begin_steps(
                "wf",
                &[StepBegin {
                    key: &key,
                    sequence: ordinal,
                    name: "durable.event:progress",
                    attempt: 1,
                    run_id: "r1",
                    started_at: now_millis(),
                    input_fingerprint: None,
                }],
            )
            .unwrap();
        store
            .finish_step(
                "wf",
                "r1",
                &key,
                &Ok(value.into()),
                &[],
                Some(&StepEffect::Publish {
                    key: "progress".into(),
                    value: value.into(),
                }),
            )
            .unwrap();
    }
    let events = store.published_events("wf").unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].value, "2");
    assert_eq!(
        events[0].step_key,
        StepKey::new("durable.event:progress", 2)
    );
}

fn fork(store: &dyn CheckpointStore) {
    start(store, "src", "r1");
    let a = begin(store, "src", "r1", "a", 1, 1).unwrap();
    finish(store, "src", "r1", &a, Ok("1".into())).unwrap();
    let event = StepKey::new("durable.event:stage", 1);
    store
        .begin_steps(
            "src",
            &[StepBegin {
                key: &event,
                sequence: 2,
                name: "durable.event:stage",
                attempt: 1,
                run_id: "r1",
                started_at: now_millis(),
                input_fingerprint: None,
            }],
        )
        .unwrap();
    store
        .finish_step(
            "src",
            "r1",
            &event,
            &Ok("\"two\"".into()),
            &[],
            Some(&StepEffect::Publish {
                key: "stage".into(),
                value: "\"two\"".into(),
            }),
        )
        .unwrap();
    let c = begin(store, "src", "r1", "c", 3, 1).unwrap();
    finish(store, "src", "r1", &c, Ok("3".into())).unwrap();
    begin(store, "src", "r1", "d", 4, 1).unwrap();

    let forked = store
        .fork_workflow(&Fork {
            source: "src",
            id: "copy",
            keep_through: 4,
            component_sha256: "c9",
            deployment: Some("fixed"),
            detail: "from src at 4",
        })
        .unwrap();
    assert_eq!(forked.status, WorkflowStatus::Queued);
    assert_eq!(forked.deployment.as_deref(), Some("fixed"));
    assert_eq!(forked.component_sha256, "c9");
    assert_eq!(forked.input, "{\"n\":1}");
    assert_eq!(forked.grants.as_deref(), Some("{}"));
    assert_eq!(forked.parent_id, None);
    // Finished steps through 4 are copied; the running one is not.
    let steps = store.steps("copy").unwrap();
    assert_eq!(
        steps.iter().map(|s| s.sequence).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert_eq!(steps[0].outcome(), Some(Ok("1".to_owned())));
    let published = store.published_events("copy").unwrap();
    assert_eq!(published.len(), 1);
    assert_eq!(
        (published[0].key.as_str(), published[0].value.as_str()),
        ("stage", "\"two\"")
    );
    let events = store.events("copy").unwrap();
    assert_eq!(
        (events[0].kind.as_str(), events[0].detail.as_str()),
        ("forked", "from src at 4")
    );

    let short = store
        .fork_workflow(&Fork {
            source: "src",
            id: "short",
            keep_through: 1,
            component_sha256: "c1",
            deployment: None,
            detail: "",
        })
        .unwrap();
    assert_eq!(store.steps(&short.id).unwrap().len(), 1);
    // No deployment named: the source's label, whatever it is.
    assert_eq!(
        short.deployment,
        store.workflow("src").unwrap().unwrap().deployment
    );
    assert!(store.published_events("short").unwrap().is_empty());
    assert!(matches!(
        store.fork_workflow(&Fork {
            source: "src",
            id: "copy",
            keep_through: 1,
            component_sha256: "c1",
            deployment: None,
            detail: "",
        }),
        Err(StoreError::WorkflowExists { .. })
    ));
    assert!(matches!(
        store.fork_workflow(&Fork {
            source: "gone",
            id: "new",
            keep_through: 1,
            component_sha256: "c1",
            deployment: None,
            detail: "",
        }),
        Err(StoreError::UnknownWorkflow { .. })
    ));
    assert_eq!(store.workflow("new").unwrap(), None);
}

fn upgrade_and_suspend_unclaimed(store: &dyn CheckpointStore) {
    start(store, "wf", "r1");
    let a = begin(store, "wf", "r1", "a", 1, 1).unwrap();
    finish(store, "wf", "r1", &a, Ok("1".into())).unwrap();
    unload(store, "wf", "r1", None, Some(now_millis() + LEASE)).unwrap();
    let observed = store.workflow("wf").unwrap().unwrap();

    let upgrade = |observed: &WorkflowRecord, steps: usize, to: &str| {
        store.upgrade_workflow(&Upgrade {
            observed,
            verified_steps: steps,
            to_sha256: to,
            detail: "c1 -> c2",
            new_run: None,
        })
    };
    assert!(!upgrade(&observed, 2, "c2").unwrap());
    assert!(upgrade(&observed, 1, "c2").unwrap());
    let upgraded = store.workflow("wf").unwrap().unwrap();
    assert_eq!(upgraded.component_sha256, "c2");
    let events = store.events("wf").unwrap();
    let last = events.last().unwrap();
    assert_eq!(
        (
            last.kind.as_str(),
            last.detail.as_str(),
            last.run_id.as_str()
        ),
        ("upgraded", "c1 -> c2", "r1")
    );
    // The observation is stale now (another component): neither another
    // upgrade nor a run that read it before this one, and replayed it on
    // the old code, may act on it.
    assert!(!upgrade(&observed, 1, "c3").unwrap());
    assert!(is_lost(take_over(store, &observed, "r2")));
    assert_eq!(store.workflow("wf").unwrap().unwrap(), upgraded);

    let mut stale = upgraded.clone();
    stale.status = WorkflowStatus::Queued;
    assert!(!store.suspend_unclaimed(&stale, "does not replay").unwrap());
    assert!(
        !store
            .suspend_unclaimed(&observed, "c1 does not replay")
            .unwrap()
    );
    assert!(
        store
            .suspend_unclaimed(&upgraded, "does not replay")
            .unwrap()
    );
    let suspended = store.workflow("wf").unwrap().unwrap();
    assert_eq!(suspended.status, WorkflowStatus::Suspended);
    assert_eq!(suspended.wake_at, None);
    assert_eq!(
        suspended.outcome(),
        Some(Err(Failure::new("does not replay")))
    );
    assert_eq!(
        store.events("wf").unwrap().last().unwrap().kind,
        "suspended"
    );
    assert!(!store.suspend_unclaimed(&upgraded, "again").unwrap());
}

/// `upgrade` of a running workflow (its owner's lease ran out) gives it a
/// new run id: the owner, frozen or cut off rather than dead, can write
/// nothing more on the old code.
fn an_upgrade_takes_a_running_workflow_from_its_run(store: &dyn CheckpointStore) {
    start(store, "wf", "r1");
    let a = begin(store, "wf", "r1", "a", 1, 1).unwrap();
    finish(store, "wf", "r1", &a, Ok("1".into())).unwrap();
    let b = begin(store, "wf", "r1", "b", 2, 1).unwrap();
    let observed = store.workflow("wf").unwrap().unwrap();
    assert!(
        store
            .upgrade_workflow(&Upgrade {
                observed: &observed,
                verified_steps: 2,
                to_sha256: "c2",
                detail: "c1 -> c2",
                new_run: Some("r-up"),
            })
            .unwrap()
    );
    let upgraded = store.workflow("wf").unwrap().unwrap();
    assert_eq!(
        (upgraded.component_sha256.as_str(), upgraded.run_id.as_str()),
        ("c2", "r-up")
    );
    let steps = store.steps("wf").unwrap();
    assert!(is_lost(finish(store, "wf", "r1", &b, Ok("2".into()))));
    assert!(is_lost(begin(store, "wf", "r1", "c", 3, 1)));
    assert_eq!(store.steps("wf").unwrap(), steps);
}

fn finish_and_reopen(store: &dyn CheckpointStore) {
    start(store, "ok", "r1");
    let log = [line("bye", LogStream::Stdout)];
    store
        .finish_workflow(
            "ok",
            "r1",
            &WorkflowEnd {
                status: WorkflowStatus::Completed,
                outcome: &Ok("{\"done\":true}".into()),
                interrupted_steps: &[],
                log: &log,
            },
        )
        .unwrap();
    let ok = store.workflow("ok").unwrap().unwrap();
    assert_eq!(ok.outcome(), Some(Ok("{\"done\":true}".to_owned())));
    assert_eq!(store.logs("ok", 0, 10).unwrap()[0].line.text, "bye");
    assert!(is_lost(end(
        store,
        "ok",
        "r1",
        WorkflowStatus::Failed,
        Err(Failure::new("x"))
    )));

    start(store, "bad", "r1");
    let failure = Failure {
        message: "no".into(),
        code: Some("E1".into()),
    };
    end(
        store,
        "bad",
        "r1",
        WorkflowStatus::Failed,
        Err(failure.clone()),
    )
    .unwrap();
    assert_eq!(
        store.workflow("bad").unwrap().unwrap().outcome(),
        Some(Err(failure))
    );

    // Suspended with a step cut short: an interrupted attempt is recorded
    // and the step stays running, for the resume to execute again.
    start(store, "trap", "r1");
    let a = begin(store, "trap", "r1", "a", 1, 1).unwrap();
    let b = begin(store, "trap", "r1", "b", 2, 1).unwrap();
    store.record_attempt("trap", "r1", &b, "flaky", 10).unwrap();
    store
        .finish_workflow(
            "trap",
            "r1",
            &WorkflowEnd {
                status: WorkflowStatus::Suspended,
                outcome: &Err(Failure::new("guest trapped")),
                interrupted_steps: &[a.clone(), b.clone()],
                log: &[],
            },
        )
        .unwrap();
    let trap = store.workflow("trap").unwrap().unwrap();
    assert_eq!(trap.status, WorkflowStatus::Suspended);
    let attempts = store.attempts("trap").unwrap();
    // `b` was waiting out a backoff, not executing: only `a` was cut short.
    assert_eq!(attempts.len(), 2);
    assert_eq!(
        (
            attempts[0].key.clone(),
            attempts[0].interrupted,
            attempts[0].error.as_str()
        ),
        (a, true, "guest trapped")
    );
    assert_eq!(
        (attempts[1].key.clone(), attempts[1].interrupted),
        (b, false)
    );
    assert_eq!(store.steps("trap").unwrap()[0].status, StepStatus::Running);
    let events = store.events("trap").unwrap();
    assert_eq!(
        (events[0].kind.as_str(), events[0].detail.as_str()),
        ("suspended", "guest trapped")
    );

    // Resumed by a new run, on another component and grants.
    let owner = owner("h3");
    let claim = Claim {
        run_id: "r2",
        owner: &owner,
        lease_until: now_millis() + LEASE,
    };
    let reopen = |expected_run, grants| Reopen {
        expected_run,
        claim: &claim,
        component_sha256: "c2",
        grants,
        detail: "durable-host resume",
    };
    assert!(is_lost(store.reopen_workflow("trap", &reopen("r0", None))));
    assert!(is_lost(store.reopen_workflow("ok", &reopen("r1", None))));
    store
        .reopen_workflow("trap", &reopen("r1", Some("{\"net\":true}")))
        .unwrap();
    let resumed = store.workflow("trap").unwrap().unwrap();
    assert_eq!(resumed.status, WorkflowStatus::Running);
    assert_eq!(
        (resumed.run_id.as_str(), resumed.owner.host.as_str()),
        ("r2", "h3")
    );
    assert_eq!(resumed.component_sha256, "c2");
    assert_eq!(resumed.grants.as_deref(), Some("{\"net\":true}"));
    assert_eq!(
        (resumed.error.as_deref(), resumed.output.as_deref()),
        (None, None)
    );
    assert_eq!(
        store.events("trap").unwrap().last().unwrap().kind,
        "resumed"
    );
    // Failed and resumed without new grants: the old ones stand.
    store.reopen_workflow("bad", &reopen("r1", None)).unwrap();
    assert_eq!(
        store.workflow("bad").unwrap().unwrap().grants.as_deref(),
        Some("{}")
    );
}

fn a_reopened_handle_sees_the_same_database(store: &dyn CheckpointStore) {
    let other = store.reopen().unwrap();
    start(&*other, "wf", "r1");
    assert_eq!(store.workflow("wf").unwrap().unwrap().run_id, "r1");
    let third = other.reopen().unwrap();
    assert!(third.workflow("wf").unwrap().is_some());
    drop(other);
    assert!(store.workflow("wf").unwrap().is_some());
}

fn a_nul_in_guest_text_does_not_fail_a_checkpoint(store: &dyn CheckpointStore) {
    // Kept as written (SQLite) or with U+FFFD for the NUL (PostgreSQL).
    let same = |stored: &str, written: &str| {
        stored.replace('\0', "\u{FFFD}") == written.replace('\0', "\u{FFFD}")
    };
    start(store, "wf", "r1");
    let a = begin(store, "wf", "r1", "a", 1, 1).unwrap();
    store
        .record_attempt("wf", "r1", &a, "bad\0byte", 1)
        .unwrap();
    store.begin_retry("wf", "r1", &a).unwrap();
    let failure = Failure {
        message: "no\0pe".into(),
        code: Some("E\0".into()),
    };
    let log = [line("binary \0 output", LogStream::Stdout)];
    store
        .finish_step("wf", "r1", &a, &Err(failure), &log, None)
        .unwrap();
    let step = &store.steps("wf").unwrap()[0];
    assert!(same(step.error.as_deref().unwrap(), "no\0pe"));
    assert!(same(step.error_code.as_deref().unwrap(), "E\0"));
    assert!(same(&store.attempts("wf").unwrap()[0].error, "bad\0byte"));
    assert!(same(
        &store.logs("wf", 0, 10).unwrap()[0].line.text,
        "binary \0 output"
    ));
    end(
        store,
        "wf",
        "r1",
        WorkflowStatus::Failed,
        Err(Failure::new("end\0")),
    )
    .unwrap();
    let workflow = store.workflow("wf").unwrap().unwrap();
    assert!(same(workflow.error.as_deref().unwrap(), "end\0"));
}

// ---------------------------------------------------------------------------
// Races: two connections at once. SQLite serializes its writers; the
// PostgreSQL store must order them itself (row locks), with the same result.

fn a_takeover_racing_a_run_keeps_exactly_what_was_acknowledged(store: &dyn CheckpointStore) {
    let workflow = start(store, "wf", "r1");
    let runner = store.reopen().unwrap();
    let acknowledged: Vec<u32> = std::thread::scope(|scope| {
        let run = scope.spawn(move || {
            let mut acknowledged = Vec::new();
            for sequence in 1..=100_000 {
                let name = format!("s{sequence}");
                let key = match begin(&*runner, "wf", "r1", &name, sequence, 1) {
                    Ok(key) => key,
                    Err(error) => {
                        assert!(matches!(error, StoreError::LostOwnership { .. }), "{error}");
                        break;
                    }
                };
                match finish(&*runner, "wf", "r1", &key, Ok("1".into())) {
                    Ok(()) => acknowledged.push(sequence),
                    Err(error) => {
                        assert!(matches!(error, StoreError::LostOwnership { .. }), "{error}");
                        break;
                    }
                }
            }
            acknowledged
        });
        std::thread::sleep(Duration::from_millis(20));
        take_over(store, &workflow, "r2").unwrap();
        run.join().unwrap()
    });
    // Every acknowledged step is there; nothing refused is.
    let completed: Vec<u32> = store
        .steps("wf")
        .unwrap()
        .iter()
        .filter(|step| step.status == StepStatus::Completed)
        .map(|step| step.sequence)
        .collect();
    assert_eq!(completed, acknowledged);
    assert_eq!(store.workflow("wf").unwrap().unwrap().run_id, "r2");
}

fn a_signal_racing_an_unload_wakes_it(store: &dyn CheckpointStore) {
    for round in 0..10 {
        let id = format!("wf{round}");
        start(store, &id, "r1");
        let sender = store.reopen().unwrap();
        std::thread::scope(|scope| {
            let sent = {
                let id = id.clone();
                scope.spawn(move || sender.send_signal(&signal(&id, "go", "s", "1")))
            };
            let waits = WaitingFor::Signal("go".into());
            assert!(unload(store, &id, "r1", Some(&waits), None).unwrap());
            sent.join().unwrap().unwrap();
        });
        let workflow = store.workflow(&id).unwrap().unwrap();
        assert_eq!(workflow.status, WorkflowStatus::Waiting);
        assert!(
            workflow.wake_at.is_some(),
            "round {round}: the signal was missed"
        );
    }
}

fn a_child_ending_as_its_parent_unloads_wakes_the_parent(store: &dyn CheckpointStore) {
    for round in 0..10 {
        let (parent, child) = (format!("p{round}"), format!("c{round}"));
        start(store, &parent, "rp");
        start(store, &child, "rc");
        let other = store.reopen().unwrap();
        std::thread::scope(|scope| {
            let ended = {
                let child = child.clone();
                scope.spawn(move || {
                    end(
                        &*other,
                        &child,
                        "rc",
                        WorkflowStatus::Completed,
                        Ok("1".into()),
                    )
                })
            };
            let waits = WaitingFor::Child(child.clone());
            assert!(unload(store, &parent, "rp", Some(&waits), None).unwrap());
            ended.join().unwrap().unwrap();
        });
        let workflow = store.workflow(&parent).unwrap().unwrap();
        assert_eq!(workflow.status, WorkflowStatus::Waiting);
        assert!(
            workflow.wake_at.is_some(),
            "round {round}: the child's end was missed"
        );
    }
}
