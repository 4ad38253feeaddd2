//! `durable-host compile`: a component checked and its compiled form put in
//! the cache ahead of its first run, so that the run starts at once.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use serde_json::json;

use durable_host::runtime::{CacheUse, ComponentCache, ComponentFile, Runtime, RuntimeConfig};

use super::exit;
use super::report::print_json;

/// Why nothing was put in the cache.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error("no cache directory: none of DURABLE_HOST_CACHE_DIR, XDG_CACHE_HOME and HOME is set")]
    NoCacheDir,
    #[error("the component compiled, but its compiled form was not kept: {why}")]
    NotStored { why: String },
}

impl CompileError {
    pub fn hint(&self) -> &'static str {
        match self {
            Self::NoCacheDir => "pass --cache-dir DIR",
            Self::NotStored { .. } => {
                "pass --cache-dir DIR naming a directory of yours that only you may write (a \
                 missing one is created with mode 0700), and the same --cache-dir to `run`"
            }
        }
    }
}

pub fn compile(
    json_mode: bool,
    component: &Path,
    cache_dir: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let cache = cache_dir
        .or_else(ComponentCache::default_dir)
        .map(ComponentCache::new)
        .ok_or(CompileError::NoCacheDir)?;
    let dir = cache.dir().to_owned();
    let file = ComponentFile::read(component)?;
    let mib = file.bytes().len() as f64 / f64::from(1 << 20);
    if !json_mode && std::io::stderr().is_terminal() {
        errln!("compiling {} ({mib:.1} MiB)...", component.display());
    }
    let runtime = Runtime::new(RuntimeConfig {
        interruptible: false,
        cache: Some(cache),
        echo_output: false,
        pooled_runs: None,
    })?;
    let started = Instant::now();
    let compiled = runtime.compile(&file)?;
    let seconds = started.elapsed().as_secs_f64();
    let compiled_now = match compiled.cache_use() {
        CacheUse::Stored => true,
        CacheUse::Loaded => false,
        CacheUse::NotStored(why) => return Err(CompileError::NotStored { why: why.clone() }.into()),
    };
    if json_mode {
        print_json(&json!({
            "component": component,
            "component_sha256": file.sha256(),
            "bytes": file.bytes().len(),
            "cache_dir": dir,
            "compiled": compiled_now,
            "duration_ms": (seconds * 1000.0).round() as u64,
        }));
    } else if compiled_now {
        outln!(
            "compiled {} (component {}, {mib:.1} MiB) in {seconds:.2} s into {}",
            component.display(),
            &file.sha256()[..12],
            dir.display()
        );
    } else {
        outln!(
            "{} (component {}) was compiled already: loaded from {} in {seconds:.2} s",
            component.display(),
            &file.sha256()[..12],
            dir.display()
        );
    }
    Ok(ExitCode::from(exit::SUCCESS))
}
