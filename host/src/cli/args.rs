//! The command line, as clap sees it.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use durable_host::engine::CrashPoint;
use durable_host::runtime::DirGrant;

/// Run WebAssembly workflows durably: every step is checkpointed in SQLite,
/// and a workflow that dies resumes where it stopped when run again.
#[derive(Debug, Parser)]
#[command(name = "durable-host", version, after_help = EXIT_CODES)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

pub const EXIT_CODES: &str = "\
Exit codes:
  0  the workflow completed (now, or in an earlier run)
  1  the workflow failed: it returned an error or trapped (recorded)
  2  usage or input error: nothing ran, nothing was recorded
  3  simulated crash (--crash, --crash-after)
  4  non-determinism: the workflow no longer matches its recorded history (left untouched)";

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
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The workflow component (.wasm), built for wasm32-wasip2.
    pub component: PathBuf,

    /// Identifies the workflow; reuse it to resume.
    #[arg(long, value_name = "ID")]
    pub workflow_id: String,

    /// The workflow's input, as JSON. Only needed on the first run.
    #[arg(long, value_name = "JSON", conflicts_with = "input_file")]
    pub input: Option<String>,

    /// Read the input JSON from a file.
    #[arg(long, value_name = "FILE")]
    pub input_file: Option<PathBuf>,

    /// The SQLite database holding workflows and checkpoints (created if missing).
    #[arg(long, value_name = "PATH", default_value = "durable.db")]
    pub db: PathBuf,

    /// Grant the guest a host directory, at GUEST (default: the same path).
    /// Repeat for more. The guest sees no other part of the file system.
    #[arg(long = "dir", value_name = "HOST[::GUEST]", value_parser = parse_dir)]
    pub dirs: Vec<DirGrant>,

    /// Set an environment variable for the guest, which sees no others.
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    pub env: Vec<(String, String)>,

    /// Print one JSON document describing the run instead of progress lines.
    #[arg(long)]
    pub json: bool,

    /// Testing: end the process abruptly at STEP (a name, or a key such as
    /// `name#000002`), `before` its body runs or `after` its result is
    /// committed. Leaves the database as `kill -9` would. Repeatable.
    #[arg(long, value_name = "STEP:before|after", value_parser = parse_crash)]
    pub crash: Vec<CrashPoint>,

    /// Testing: end the process abruptly once this run has committed N checkpoints.
    #[arg(long, value_name = "N")]
    pub crash_after: Option<u32>,
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
}
