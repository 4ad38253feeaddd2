//! Compiled components kept on disk, so that running a workflow again does
//! not compile its component again (seconds for a large guest).
//!
//! An entry is named after the component's sha256 and the wasmtime engine's
//! compatibility hash (its version and settings), and written atomically.
//! An entry that does not load (another engine, a damaged file) is simply
//! compiled and written again.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};

use wasmtime::Engine;
use wasmtime::component::Component;

/// Where compiled components are kept.
#[derive(Debug, Clone)]
pub struct ComponentCache {
    dir: PathBuf,
}

impl ComponentCache {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    /// The default location: `$DURABLE_HOST_CACHE_DIR`, else the user's cache
    /// directory (`$XDG_CACHE_HOME` or `~/.cache`) + `durable-host`.
    pub fn default_dir() -> Option<PathBuf> {
        let var = |name| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        var("DURABLE_HOST_CACHE_DIR")
            .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("durable-host")))
            .or_else(|| var("HOME").map(|d| d.join(".cache/durable-host")))
    }

    /// Load the compiled form of the component with `sha256`, or compile
    /// `bytes` and keep the result.
    pub fn load_or_compile(
        &self,
        engine: &Engine,
        sha256: &str,
        bytes: &[u8],
    ) -> wasmtime::Result<Component> {
        let mut engine_hash = DefaultHasher::new();
        engine
            .precompile_compatibility_hash()
            .hash(&mut engine_hash);
        let path = self
            .dir
            .join(format!("{sha256}-{:016x}.cwasm", engine_hash.finish()));
        if path.is_file() {
            // SAFETY: entries are written only by `store` below, from
            // `Component::serialize` of an engine with this compatibility
            // hash, into the user's own cache directory. Wasmtime checks the
            // header and refuses an entry built by an incompatible engine.
            if let Ok(component) = unsafe { Component::deserialize_file(engine, &path) } {
                return Ok(component);
            }
        }
        let component = Component::new(engine, bytes)?;
        // A cache that cannot be written costs only the next compile.
        let _ = self.store(&path, &component);
        Ok(component)
    }

    fn store(&self, path: &Path, component: &Component) -> std::io::Result<()> {
        let compiled = component.serialize().map_err(std::io::Error::other)?;
        std::fs::create_dir_all(&self.dir)?;
        let partial = path.with_extension(format!("partial-{}", std::process::id()));
        std::fs::write(&partial, compiled)?;
        std::fs::rename(&partial, path)
    }
}
