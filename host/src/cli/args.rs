//! The command line, as clap sees it.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use durable_host::engine::CrashPoint;
use durable_host::runtime::{ComponentCache, DirGrant, Grants, HttpDestination, Sandbox};
use durable_host::store::{Database, WorkflowStatus};

/// Run WebAssembly workflows durably: every step is checkpointed in SQLite,
/// and a workflow that dies resumes where it stopped when run again.
#[derive(Debug, Parser)]
#[command(name = "durable-host", version, after_help = EXIT_CODES)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// The database holding workflows and checkpoints: a SQLite file
    /// (created if missing), or a PostgreSQL database shared by workers on
    /// several hosts (postgres://USER[:PASSWORD]@HOST[:PORT]/DB; for TLS,
    /// add ?sslmode=verify-full&sslrootcert=CA.pem, as with libpq).
    #[arg(
        long,
        global = true,
        value_name = "PATH|URL",
        env = "DURABLE_DB",
        default_value = "durable.db",
        hide_env_values = true
    )]
    pub db: Database,

    /// Print JSON for scripts instead of text for people.
    #[arg(long, global = true)]
    pub json: bool,
}

pub const EXIT_CODES: &str = "\
Exit codes:
  0  success (for `run`: the workflow completed, now or in an earlier run)
  1  the workflow failed: it returned an error or a limit stopped it (recorded)
  2  usage or input error: nothing ran, nothing was recorded
  3  simulated crash (--crash, --crash-after)
  4  non-determinism: the workflow no longer matches its recorded history (left untouched);
     `verify`, `upgrade`: some selected workflow does not replay on the new code
  5  the workflow is being run by another live process, or was upgraded while this run opened it
     (left untouched)
  6  the workflow was cancelled
  7  suspended: the workflow's code trapped or panicked (or, queued with `start`, refused its input);
     recorded as suspended, resumable
  8  this run lost ownership of the workflow to another run mid-way and stopped (what it committed stands)
  9  storage failure (disk full, I/O error, database replaced): steps may have run; what was committed stands; run again once fixed
 10  the workflow is sleeping (a long durable sleep) until the time printed: run it again then, or let `serve` continue it
 11  `start --wait`: the workflow had not finished when --wait-timeout ran out (it goes on);
     `get-event --wait`: it had not published the event when the wait ran out
 12  the workflow is waiting for a signal (`durable-host signal`) or a child workflow: run it
     again once the signal is sent (or the child ended), or let `serve` continue it
 13  the host had no memory (or thread) for an instance of the workflow (out of memory, `ulimit -v`,
     `ulimit -u`): the run stopped; what was recorded stands (nothing, if the workflow could not
     start); run it again once there is memory";

/// `durable-host schedule ...`.
#[derive(Debug, Subcommand)]
pub enum ScheduleAction {
    /// Add a schedule; its first tick is the first after now.
    Add {
        /// The schedule's name (its workflows are NAME@TIME).
        name: String,

        /// When: five fields, minute hour day-of-month month day-of-week
        /// (e.g. "0 2 * * *" for 02:00 UTC daily, "*/15 * * * *" every 15
        /// minutes), or six with seconds first. UTC.
        #[arg(long, value_name = "EXPR")]
        cron: String,

        /// The deployment whose newest version each tick runs.
        #[arg(long, visible_alias = "component", value_name = "NAME")]
        deployment: String,

        /// The input of every workflow it starts, as JSON.
        #[arg(long, value_name = "JSON", default_value = "null")]
        input: String,

        /// The queue its workflows wait in (see `serve --queue`).
        #[arg(long, value_name = "NAME", default_value = "default")]
        queue: String,
    },

    /// List the schedules, the soonest tick first.
    List,

    /// Remove a schedule; the workflows it started are left alone.
    Remove {
        /// The schedule's name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a workflow, resume it, or show its result if it already finished.
    ///
    /// The first run of a workflow id starts it with the given input. Running
    /// the same id again resumes it: steps recorded as finished are replayed
    /// from the database without running again, and a step that was in
    /// flight when the previous run died is executed again.
    #[command(after_help = EXIT_CODES)]
    Run(RunArgs),

    /// List workflows, newest first, with their status and step counts.
    ///
    /// Shows a page at a time: `--after` the last id shown gives the next.
    List {
        /// Only workflows with this status: queued, running, sleeping,
        /// waiting, completed, failed, cancelled or suspended.
        #[arg(long, value_parser = parse_status)]
        status: Option<WorkflowStatus>,

        /// At most this many workflows (1 or more).
        #[arg(long, value_name = "N", default_value_t = 50,
              value_parser = clap::value_parser!(u32).range(1..))]
        limit: u32,

        /// Only workflows after this one in the listing (the last id of the
        /// previous page).
        #[arg(long, value_name = "ID")]
        after: Option<String>,

        /// Only workflows whose id contains TEXT (case-sensitive).
        #[arg(long, value_name = "TEXT")]
        search: Option<String>,

        /// Every workflow, however many (streamed, in pages).
        #[arg(long, conflicts_with = "limit")]
        all: bool,
    },

    /// Show every step of a workflow: key, status, attempts, duration, output, error.
    History {
        /// The workflow id.
        workflow_id: String,

        /// Draw the steps as a timeline instead: one bar per step from its
        /// start to its end, so parallel branches overlap; failed and
        /// interrupted attempts are marked, sleeps dotted (colour on a
        /// terminal only; NO_COLOR turns it off).
        #[arg(long)]
        timeline: bool,
    },

    /// Show what a workflow printed (stdout, stderr) and logged (`ctx.log`),
    /// oldest first: time, stream, the step it came from, the line.
    ///
    /// Lines are stored with the checkpoint that follows them, so a crash
    /// loses at most what was printed since the last step; code replayed
    /// after a crash does not log its lines twice. A workflow keeps its
    /// last 10,000 lines. With --json, one JSON object per line.
    Logs {
        /// The workflow id.
        workflow_id: String,

        /// Only the last N lines.
        #[arg(long, value_name = "N")]
        tail: Option<usize>,

        /// Keep printing new lines until the workflow completes, fails, is
        /// cancelled or suspended (Ctrl-C stops following).
        #[arg(long, short)]
        follow: bool,
    },

    /// Check a new build against stored histories before shipping it.
    ///
    /// Replays each selected workflow's recorded steps on COMPONENT without
    /// running any step body and without changing the database (it is
    /// opened read-only: safe while `serve` runs). Code between steps does
    /// run, with the workflow's recorded environment and read-only
    /// directories. Per workflow it says: compatible (and the step a resume
    /// would execute next), diverges at step N (the recorded steps around N
    /// beside the step the new code asks for), input changed (a step called
    /// with other arguments), undecodable (a recorded value that no longer
    /// decodes into the step's type), trapped, or ended early.
    /// Exits 0 only when every selected workflow that has not finished is
    /// compatible, 4 otherwise.
    Verify {
        /// The new build of the workflow's component (.wasm).
        component: PathBuf,

        /// Only this workflow (repeatable).
        #[arg(long = "workflow-id", value_name = "ID")]
        workflow_ids: Vec<String>,

        /// Only workflows with this status [default: running, sleeping and
        /// waiting: the ones that will resume].
        #[arg(long, value_parser = parse_status, conflicts_with_all = ["all", "workflow_ids"])]
        status: Option<WorkflowStatus>,

        /// Every workflow, finished ones included (does the new code end
        /// them as they ended?).
        #[arg(long, conflicts_with = "workflow_ids")]
        all: bool,

        /// How long one workflow's replay may take (the new code may loop).
        #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
        timeout: Duration,

        #[command(flatten)]
        cache: CacheArgs,
    },

    /// Move workflows that have not finished to a newer deployment, each
    /// only where the new code replays its history.
    ///
    /// Each selected workflow is verified against TARGET's component as
    /// `verify` does; those that replay are switched to it (an `upgraded`
    /// event in their history) and resume on it, the others stay on their
    /// code, listed with the reason. A workflow a live run holds is refused
    /// (its code is in that process): upgrade it when it sleeps or its
    /// server stops. Grants stay the ones it was started with. Exits 0 when
    /// every selected workflow is on TARGET, 4 otherwise.
    Upgrade {
        /// The workflows to move.
        #[arg(required_unless_present = "all", value_name = "ID")]
        workflow_ids: Vec<String>,

        /// Every workflow that has not finished (queued, running, sleeping,
        /// waiting, suspended) and is TARGET's: started from its deployment,
        /// or by `run` on a version of its code or with recorded steps its
        /// code replays. Other deployments' workflows are left alone (and
        /// refused when named).
        #[arg(long, conflicts_with = "workflow_ids")]
        all: bool,

        /// The deployment to move them to: its newest version, or the one
        /// whose component's sha256 starts with SHA.
        #[arg(long, value_name = "NAME[@SHA]")]
        to: String,

        /// How long one workflow's verification may take.
        #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
        timeout: Duration,

        #[command(flatten)]
        cache: CacheArgs,
    },

    /// Start a new workflow from another's history: the same input and
    /// grants, the results of the steps before --from-step copied, the
    /// rest run again.
    ///
    /// For a bug in a late step: fix it, deploy the fix, and fork from that
    /// step with --component; the early steps' side effects are not
    /// repeated. The new workflow is queued (`serve` runs it, and so does
    /// `durable-host run COMPONENT --workflow-id NEW`) and its history says
    /// what it was forked from.
    Fork {
        /// The workflow to fork.
        workflow_id: String,

        /// The first step to run again, from 1 (`history` numbers them).
        #[arg(long, value_name = "N")]
        from_step: u32,

        /// The new workflow's id [default: a fresh one].
        #[arg(long = "workflow-id", value_name = "NEW")]
        new_workflow_id: Option<String>,

        /// The code it runs: a deployment's name (its newest version) or a
        /// .wasm file [default: the forked workflow's component].
        #[arg(long, value_name = "NAME|FILE")]
        component: Option<String>,

        #[command(flatten)]
        cache: CacheArgs,
    },

    /// Resume every unfinished workflow that this component started.
    ///
    /// Workflows are matched by the component's sha256, so a rebuilt
    /// component recovers nothing it did not start. Workflows that another
    /// live process is running are skipped.
    #[command(after_help = EXIT_CODES)]
    Recover {
        /// The workflow component (.wasm).
        component: PathBuf,

        #[command(flatten)]
        execution: ExecutionArgs,
    },

    /// Continue a failed or suspended workflow from its history.
    ///
    /// A workflow is suspended when its code traps or panics (a bug, not its
    /// answer) or when its runs keep dying; it fails when it returns an
    /// error or a limit stops it. Resuming replays its recorded steps on
    /// COMPONENT (usually the fixed build: the switch is recorded in its
    /// history) and executes the rest. The recorded grants are used unless
    /// --dir/--env/--timeout/--max-memory are given, which replace them.
    #[command(after_help = EXIT_CODES)]
    Resume {
        /// The workflow id.
        workflow_id: String,

        /// The workflow component (.wasm) to continue it with.
        component: PathBuf,

        #[command(flatten)]
        execution: ExecutionArgs,
    },

    /// Keep a component in the database as the newest version of a named
    /// deployment, with what its workflows are granted.
    ///
    /// `durable-host start NAME` runs new workflows on the newest version;
    /// every version is kept, and a workflow always resumes on the exact
    /// component that started it.
    Deploy {
        /// The deployment's name.
        #[arg(required_unless_present = "list")]
        name: Option<String>,

        /// The workflow component (.wasm), checked before it is kept.
        #[arg(required_unless_present = "list")]
        component: Option<PathBuf>,

        /// List the deployments instead (every version, newest first).
        #[arg(long, conflicts_with_all = ["name", "component"])]
        list: bool,

        #[command(flatten)]
        grants: GrantArgs,

        #[command(flatten)]
        cache: CacheArgs,
    },

    /// Compile a component into the cache ahead of its first run.
    ///
    /// Checks COMPONENT as `run` does (its imports before compiling, then
    /// the `workflow` world) and keeps its compiled form in the cache, where
    /// `run`, `serve`, `verify` and the rest find it whatever their limits:
    /// compiling a JavaScript or Python guest takes seconds, loading it a
    /// few milliseconds. A component compiled already is only loaded.
    /// `deploy` fills the cache the same way.
    Compile {
        /// The workflow component (.wasm).
        component: PathBuf,

        /// Where compiled components are cached [default:
        /// $DURABLE_HOST_CACHE_DIR, else ~/.cache/durable-host]; pass the
        /// same to `run` and `serve`.
        #[arg(long, value_name = "DIR")]
        cache_dir: Option<PathBuf>,
    },

    /// Write the WIT this host implements into DIR: the `durable:workflow`
    /// contract (DIR/durable.wit) and the WASI 0.2 packages the host links
    /// (DIR/deps/*.wit).
    ///
    /// For guest toolchains that need WIT for every interface a component
    /// imports: the Python SDK's `durable-build --http` runs it to build
    /// against the host's own `wasi:http`. Files of those names in DIR are
    /// replaced; nothing else there is touched.
    Wit {
        /// The directory to write (created when missing).
        dir: PathBuf,
    },

    /// Queue a workflow of a deployment for `durable-host serve` to run, and
    /// print its id (or, with --wait, its result).
    ///
    /// Idempotent on the id: the same id with the same input answers with
    /// the existing workflow; another input is refused.
    #[command(after_help = EXIT_CODES)]
    Start {
        /// The deployment (see `durable-host deploy`).
        name: String,

        /// The workflow's id [default: a new one].
        #[arg(long, value_name = "ID")]
        workflow_id: Option<String>,

        /// The workflow's input, as JSON (`null` for none).
        #[arg(long, value_name = "JSON", required_unless_present = "input_file")]
        input: Option<String>,

        /// Read the input JSON from a file.
        #[arg(long, value_name = "FILE", conflicts_with = "input")]
        input_file: Option<PathBuf>,

        /// The queue to wait in (see `serve --queue`).
        #[arg(long, value_name = "NAME", default_value = "default")]
        queue: String,

        /// Wait for the workflow to finish and print its result, as `run`
        /// does (exit codes included).
        #[arg(long)]
        wait: bool,

        /// With --wait, give up waiting after this long (exit 11; the
        /// workflow goes on).
        #[arg(long, value_name = "DURATION", value_parser = parse_duration, requires = "wait")]
        wait_timeout: Option<Duration>,
    },

    /// Start workflows on a calendar: `serve` queues one per tick of a cron
    /// expression (UTC).
    ///
    /// Each tick's workflow has the id NAME@TIME (e.g.
    /// nightly@2026-12-03T02:00:00Z), so a tick runs once, also across
    /// restarts and several servers. Ticks missed while no server ran are
    /// coalesced: the latest one runs once, the older ones are skipped.
    Schedule {
        #[command(subcommand)]
        action: ScheduleAction,
    },

    /// Run workflows from the database's queues until SIGTERM or SIGINT.
    ///
    /// Takes queued workflows oldest first up to each queue's concurrency,
    /// resumes sleeping workflows when they are due (and waiting ones when
    /// their signal comes) and takes over those whose owner died, here or in
    /// another `serve` on the same database.
    /// Checkpoints of all runs share commits (group commit). On SIGTERM it
    /// stops taking work, lets runs reach their next step boundary within
    /// --shutdown-grace and releases their leases; a second signal exits at
    /// once. Logs go to stderr (RUST_LOG filters them).
    Serve {
        /// How many workflows of the `default` queue run at once (0: none;
        /// the server then runs only its --queue queues and answers the API).
        /// Instances come from a pool reserved for all queues' runs at once
        /// (address space, not memory: ~8 GiB per run); past about 10,000
        /// runs it cannot be reserved and instances are mapped one by one,
        /// slower.
        #[arg(long, value_name = "N", default_value_t = 64)]
        concurrency: usize,

        /// Also serve queue NAME with N workflows at once. Repeatable.
        #[arg(long = "queue", value_name = "NAME=N", value_parser = parse_queue)]
        queues: Vec<(String, usize)>,

        /// A run that stops renewing its lease for this long is presumed
        /// dead and may be taken over.
        #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_lease)]
        stale_after: Duration,

        /// On SIGTERM, how long runs may take to reach a step boundary.
        #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
        shutdown_grace: Duration,

        /// After `durable-host cancel`, how long a workflow may run its
        /// compensation steps.
        #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
        cancel_grace: Duration,

        /// How often to look for work submitted by other processes
        /// [default: 50ms; 1s on PostgreSQL, whose notifications wake
        /// every worker within milliseconds, so that polling is only the
        /// fallback].
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        poll_interval: Option<Duration>,

        /// Log lines as JSON objects instead of text.
        #[arg(long, value_name = "FORMAT", default_value = "text", value_parser = ["text", "json"])]
        log_format: String,

        /// Also serve the HTTP API (JSON; see docs/api.md) on ADDR, e.g.
        /// 127.0.0.1:8080 (port 0 picks a free port; the log says which).
        /// Without it there is no API.
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,

        /// Require the token in FILE (its contents, trimmed) on every API
        /// request, as `Authorization: Bearer TOKEN`. Required when --listen
        /// is not a loopback address.
        #[arg(long, value_name = "FILE", requires = "listen")]
        token_file: Option<PathBuf>,

        #[command(flatten)]
        cache: CacheArgs,
    },

    /// Send a signal to a workflow: its next wait for NAME
    /// (`ctx.wait_signal`) takes it.
    ///
    /// Signals are kept until taken: one sent before the workflow waits is
    /// not missed. Each is taken once, oldest first. A workflow `waiting`
    /// for it is resumed by `serve` at once (under `run`, run it again).
    #[command(after_help = EXIT_CODES)]
    Signal {
        /// The workflow id.
        workflow_id: String,

        /// The signal's name, as the workflow waits for it.
        name: String,

        /// The signal's value, as JSON.
        #[arg(long, value_name = "JSON", default_value = "null")]
        data: String,

        /// An id that makes sending again harmless: a signal with an id
        /// already sent to this workflow is ignored [default: a new id].
        #[arg(long, value_name = "ID")]
        signal_id: Option<String>,
    },

    /// Print the value a workflow published under KEY (`ctx.set_event`).
    #[command(after_help = EXIT_CODES)]
    GetEvent {
        /// The workflow id.
        workflow_id: String,

        /// The event's key.
        key: String,

        /// Wait until the workflow publishes it (or ends), at most this
        /// long (a bare `--wait`: an hour; exit 11 when it runs out while
        /// the workflow goes on); without it, a key not yet published is
        /// an error.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration, num_args = 0..=1,
              default_missing_value = "1h")]
        wait: Option<Duration>,
    },

    /// Cancel a workflow: it is never resumed, and a run in progress stops
    /// at its next step boundary.
    Cancel {
        /// The workflow id.
        workflow_id: String,
    },
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The workflow component (.wasm), built for wasm32-wasip2.
    pub component: PathBuf,

    /// Identifies the workflow; reuse it to resume.
    #[arg(long, value_name = "ID")]
    pub workflow_id: String,

    /// The workflow's input, as JSON. Needed to start a workflow (`--input
    /// null` for none); leave it out to resume one.
    #[arg(long, value_name = "JSON", conflicts_with = "input_file")]
    pub input: Option<String>,

    /// Read the input JSON from a file.
    #[arg(long, value_name = "FILE")]
    pub input_file: Option<PathBuf>,

    /// Resume even though the workflow was started by a different component
    /// (its recorded steps must still match; non-determinism is refused).
    #[arg(long)]
    pub allow_component_change: bool,

    /// Wait through a long durable sleep in this process. Without it, a
    /// sleep of more than a few seconds ends the run with the workflow
    /// `sleeping` (exit 10) until a time it prints; run it again then, or
    /// let `durable-host serve` continue it.
    #[arg(long)]
    pub wait: bool,

    #[command(flatten)]
    pub execution: ExecutionArgs,

    /// Testing: end the process abruptly at STEP (a name, or a key such as
    /// `name#000002`), `before` its body runs or `after` its result is
    /// committed. Leaves the database as `kill -9` would. Repeatable.
    #[arg(long, value_name = "STEP:before|after", value_parser = parse_crash)]
    pub crash: Vec<CrashPoint>,

    /// Testing: end the process abruptly once this run has committed N checkpoints.
    #[arg(long, value_name = "N")]
    pub crash_after: Option<u32>,
}

/// How workflows execute: what the guest may see and use, and how runs
/// hold their workflows.
#[derive(Debug, Clone, Args)]
pub struct ExecutionArgs {
    #[command(flatten)]
    pub grants: GrantArgs,

    /// A run that stops renewing its lease for this long is presumed dead and
    /// may be taken over by another process.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_lease)]
    pub stale_after: Duration,

    /// After `durable-host cancel`, how long the workflow may run steps that
    /// undo its work (compensation) before it is stopped.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub cancel_grace: Duration,

    #[command(flatten)]
    pub cache: CacheArgs,
}

/// Where compiled components are kept.
#[derive(Debug, Clone, Args)]
pub struct CacheArgs {
    /// Where compiled components are cached [default: $DURABLE_HOST_CACHE_DIR,
    /// else ~/.cache/durable-host].
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Compile the component every time instead of using the cache.
    #[arg(long, conflicts_with = "cache_dir")]
    pub no_cache: bool,
}

impl CacheArgs {
    pub fn cache(&self) -> Option<ComponentCache> {
        match (&self.cache_dir, self.no_cache) {
            (_, true) => None,
            (Some(dir), false) => Some(ComponentCache::new(dir.clone())),
            (None, false) => ComponentCache::default_dir().map(ComponentCache::new),
        }
    }
}

/// What a workflow is granted: directories, environment, limits. Recorded
/// with the workflow (or the deployment) and used on every resume.
#[derive(Debug, Clone, Args)]
pub struct GrantArgs {
    /// Grant the guest a host directory, at GUEST (default: the same path).
    /// Repeat for more. The guest sees no other part of the file system.
    #[arg(long = "dir", value_name = "HOST[::GUEST]", value_parser = parse_dir)]
    pub dirs: Vec<DirGrant>,

    /// Set an environment variable for the guest, which sees no others.
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    pub env: Vec<(String, String)>,

    /// Let steps send HTTP requests to HOST (every port) or HOST:PORT, over
    /// http or https. Repeat for more. Without it a guest has no network;
    /// requests from workflow code between steps are refused either way.
    #[arg(long = "allow-http", value_name = "HOST[:PORT]")]
    pub allow_http: Vec<HttpDestination>,

    /// Stop a run after this long (e.g. 30s, 500ms, 5m), also while the
    /// guest waits in a host call; durable sleeps and retry backoffs do not
    /// count. The workflow is recorded as failed with the reason.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Option<Duration>,

    /// Limit the memory of a whole run, its parallel branches included
    /// (e.g. 64MiB, 1GiB): what needs more is stopped and recorded as failed.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_memory: Option<usize>,
}

impl GrantArgs {
    pub fn to_grants(&self) -> Grants {
        let sandbox = Sandbox {
            dirs: self.dirs.clone(),
            env: self.env.clone(),
            http: self.allow_http.clone(),
        };
        Grants::new(&sandbox, self.timeout, self.max_memory)
    }
}

fn parse_queue(text: &str) -> Result<(String, usize), String> {
    match text.split_once('=') {
        Some((name, n)) if !name.is_empty() => match n.parse::<usize>() {
            Ok(n) if n > 0 => Ok((name.to_owned(), n)),
            _ => Err("N must be a positive number, e.g. --queue payments=4".to_owned()),
        },
        _ => Err("expected NAME=N, e.g. --queue payments=4".to_owned()),
    }
}

fn parse_status(text: &str) -> Result<WorkflowStatus, String> {
    WorkflowStatus::parse(text).ok_or_else(|| {
        "expected queued, running, sleeping, waiting, completed, failed, cancelled or suspended"
            .to_owned()
    })
}

fn parse_dir(text: &str) -> Result<DirGrant, String> {
    let (host, guest) = match text.split_once("::") {
        Some((host, guest)) => (host, guest),
        None => (text, text),
    };
    if host.is_empty() || guest.is_empty() {
        return Err("expected HOST or HOST::GUEST, e.g. --dir ./data::/data".to_owned());
    }
    Ok(DirGrant {
        host: PathBuf::from(host),
        guest: guest.to_owned(),
        read_only: false,
    })
}

fn parse_env(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err("expected KEY=VALUE, e.g. --env REGION=eu".to_owned()),
    }
}

fn parse_crash(text: &str) -> Result<CrashPoint, String> {
    match text.rsplit_once(':') {
        Some((step, "before")) if !step.is_empty() => Ok(CrashPoint::Before(step.to_owned())),
        Some((step, "after")) if !step.is_empty() => Ok(CrashPoint::After(step.to_owned())),
        _ => Err(
            "expected STEP:before or STEP:after, e.g. --crash provision_laptop:after".to_owned(),
        ),
    }
}

/// Split `12.5MiB` into `(12.5, "MiB")`.
fn number_and_unit(text: &str) -> Option<(f64, &str)> {
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let number = text[..split].parse::<f64>().ok()?;
    Some((number, text[split..].trim()))
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let seconds = number_and_unit(text).and_then(|(n, unit)| {
        Some(
            n * match unit {
                "ms" => 0.001,
                "s" => 1.0,
                "m" | "min" => 60.0,
                "h" => 3600.0,
                "d" => 86400.0,
                _ => return None,
            },
        )
    });
    // Ten years is more than any lease, timeout or grace needs, and keeps
    // every sum of durations and times far from overflowing.
    const LONGEST: f64 = 10.0 * 365.0 * 24.0 * 3600.0;
    match seconds {
        Some(s) if s > 0.0 && s <= LONGEST => Ok(Duration::from_secs_f64(s)),
        Some(s) if s > LONGEST => Err("too long: at most ten years".to_owned()),
        _ => Err("expected a positive duration with a unit: 500ms, 30s, 5m, 1h".to_owned()),
    }
}

/// A lease: long enough to be renewed a few times (at least a second).
fn parse_lease(text: &str) -> Result<Duration, String> {
    let lease = parse_duration(text)?;
    if lease < Duration::from_secs(1) {
        return Err("a lease of less than 1s cannot be renewed in time; use 1s or more".to_owned());
    }
    Ok(lease)
}

fn parse_size(text: &str) -> Result<usize, String> {
    let bytes = number_and_unit(text).and_then(|(n, unit)| {
        Some(
            n * match unit.to_ascii_lowercase().as_str() {
                "" | "b" => 1.0,
                "k" | "kb" | "kib" => 1024.0,
                "m" | "mb" | "mib" => 1024.0 * 1024.0,
                "g" | "gb" | "gib" => 1024.0 * 1024.0 * 1024.0,
                _ => return None,
            },
        )
    });
    match bytes {
        Some(b) if b >= 1.0 => Ok(b as usize),
        _ => Err("expected a size such as 64MiB, 512KiB or 1GiB".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn dir_defaults_guest_path_to_host_path() {
        let grant = parse_dir("/tmp/x").unwrap();
        assert_eq!(
            (grant.host, grant.guest.as_str()),
            (PathBuf::from("/tmp/x"), "/tmp/x")
        );
        let grant = parse_dir("./data::/services").unwrap();
        assert_eq!(
            (grant.host, grant.guest.as_str()),
            (PathBuf::from("./data"), "/services")
        );
        assert!(parse_dir("::/x").is_err());
    }

    #[test]
    fn crash_points_parse() {
        assert_eq!(
            parse_crash("a#000002:after"),
            Ok(CrashPoint::After("a#000002".into()))
        );
        assert_eq!(
            parse_crash("create_record:before"),
            Ok(CrashPoint::Before("create_record".into()))
        );
        assert!(parse_crash("create_record").is_err());
        assert!(parse_crash(":after").is_err());
    }

    #[test]
    fn durations_and_sizes_parse() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("30").is_err(), "a unit is required");
        assert!(parse_duration("0s").is_err());
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("lots").is_err());
    }
}
