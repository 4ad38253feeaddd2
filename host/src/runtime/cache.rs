//! Compiled components kept on disk, so that running a workflow again does
//! not compile its component again (seconds for a large guest).
//!
//! An entry is named after the component's sha256 and the wasmtime engine's
//! compatibility hash (its version and settings):
//! `<component sha256>-<engine hash>.cwasm`, with its manifest
//! `<component sha256>-<engine hash>.sha256` beside it.
//!
//! # The cache is trusted
//!
//! An entry is native machine code, and wasmtime runs a deserialized entry
//! as it is: it checks that the entry was made by a compatible engine, but it
//! cannot tell whether the code is a faithful compilation of any component,
//! nor whether it stays in the sandbox. Whoever can write an entry can run
//! any code as the user running the host; an entry compiled from another
//! component would run that component while the workflow is recorded as
//! pinned to this one's sha256. The cache directory is therefore trusted like
//! the host binary itself, and the host guards it:
//!
//! - The directory is created with mode 0700. A directory that is not owned
//!   by the current user, or that its group or others may write, is not used
//!   at all: the component is compiled and nothing is read or written.
//! - After writing an entry, the host writes its manifest (each file written
//!   to a temporary name and renamed into place): the sha256 of the entry's
//!   bytes and the sha256 of the component it was compiled from. Loading
//!   reads the entry's bytes once, hashes them, and deserializes those very
//!   bytes only if the manifest names both that hash and the component being
//!   run. An entry without a manifest, damaged, cut short by a crash, or
//!   copied over from another component (with or without that component's
//!   manifest) is ignored: the component is compiled again and the entry and
//!   manifest are written anew. A cache that cannot be read or written never
//!   fails a run; it only costs a compile.
//!
//! What this cannot do: the manifest is a checksum, not a signature. Anyone
//! who can write the cache directory (this user, root) can write a matching
//! manifest too. The manifest catches mistakes and swapped or damaged files;
//! the 0700 directory keeps other users out. `--no-cache` never loads
//! compiled code from disk.

use std::fmt::Write as _;
use std::fs::{self, DirBuilder, OpenOptions};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Where compiled components are kept.
#[derive(Debug, Clone)]
pub struct ComponentCache {
    dir: PathBuf,
}

/// What the cache did for one component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheUse {
    /// Its compiled form was loaded: nothing was compiled.
    Loaded,
    /// It was compiled and its compiled form kept.
    Stored,
    /// It was compiled and not kept, for this reason.
    NotStored(String),
}

/// The two files of one cache entry.
#[derive(Debug)]
struct Entry {
    /// `Component::serialize` output.
    compiled: PathBuf,
    /// [`manifest`] of `compiled`, written after it.
    manifest: PathBuf,
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

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Load the compiled form of the component with `sha256` (the hex
    /// sha256 of `bytes`), or compile `bytes` and keep the result. A cache
    /// that cannot be used costs only a compile, and says why.
    pub fn load_or_compile(
        &self,
        engine: &Engine,
        sha256: &str,
        bytes: &[u8],
    ) -> wasmtime::Result<(Component, CacheUse)> {
        let is_sha256 = sha256.len() == 64 && sha256.bytes().all(|b| b.is_ascii_hexdigit());
        let unused = if !is_sha256 {
            Some("the component has no sha256 to name its entry".to_owned())
        } else {
            self.untrusted_dir()
        };
        if let Some(why) = unused {
            return Ok((Component::new(engine, bytes)?, CacheUse::NotStored(why)));
        }
        let entry = self.entry(engine, sha256);
        if let Some(component) = entry.load(engine, sha256) {
            return Ok((component, CacheUse::Loaded));
        }
        let component = Component::new(engine, bytes)?;
        let kept = match entry.store(sha256, &component) {
            Ok(()) => CacheUse::Stored,
            Err(e) => CacheUse::NotStored(format!("cannot write {}: {e}", self.dir.display())),
        };
        Ok((component, kept))
    }

    fn entry(&self, engine: &Engine, sha256: &str) -> Entry {
        let mut engine_hash = DefaultHasher::new();
        engine
            .precompile_compatibility_hash()
            .hash(&mut engine_hash);
        let stem = format!("{sha256}-{:016x}", engine_hash.finish());
        Entry {
            compiled: self.dir.join(format!("{stem}.cwasm")),
            manifest: self.dir.join(format!("{stem}.sha256")),
        }
    }

    /// Create the directory (mode 0700) if it is missing, and tell why it
    /// may not be used, unless it is a directory owned by the current user
    /// that neither its group nor others may write.
    fn untrusted_dir(&self) -> Option<String> {
        let dir = self.dir.display();
        if let Err(e) = DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
        {
            return Some(format!("cannot create {dir}: {e}"));
        }
        let trusted = fs::metadata(&self.dir).is_ok_and(|metadata| {
            metadata.is_dir()
                && metadata.mode() & 0o022 == 0
                && owner_of_new_files(&self.dir) == Some(metadata.uid())
        });
        (!trusted).then(|| {
            format!(
                "{dir} is not a directory of this user's that only this user may write, so \
                 compiled code is neither read from it nor written to it"
            )
        })
    }
}

impl Entry {
    /// The compiled component, if both files are there and the manifest
    /// vouches for these bytes as compiled from the component `sha256`.
    fn load(&self, engine: &Engine, sha256: &str) -> Option<Component> {
        let recorded = fs::read(&self.manifest).ok()?;
        let compiled = fs::read(&self.compiled).ok()?;
        if recorded != manifest(sha256, &compiled).into_bytes() {
            return None;
        }
        // SAFETY: `Component::deserialize` runs native code without checking
        // it, so these bytes must come from `Component::serialize`. They are
        // the very bytes just hashed (read once; the file is not read again),
        // and their sha256 matches the manifest the host wrote in `store`
        // after serializing its own compilation of the component `sha256`,
        // in a directory owned by this user that nobody else may write (see
        // the module documentation for what that does not protect against).
        // Wasmtime also checks the header and refuses bytes made by an
        // incompatible engine.
        unsafe { Component::deserialize(engine, &compiled) }.ok()
    }

    /// Write the entry, then its manifest, each atomically.
    fn store(&self, sha256: &str, component: &Component) -> io::Result<()> {
        let compiled = component.serialize().map_err(io::Error::other)?;
        write_atomically(&self.compiled, &compiled)?;
        write_atomically(&self.manifest, manifest(sha256, &compiled).as_bytes())
    }
}

/// The manifest of an entry: what was compiled and what came out. Compared
/// whole, byte for byte.
fn manifest(component_sha256: &str, compiled: &[u8]) -> String {
    format!(
        "durable-host compiled component 1\ncomponent {component_sha256}\ncwasm {}\n",
        hex_sha256(compiled)
    )
}

fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .fold(String::with_capacity(64), |mut hex, byte| {
            let _ = write!(hex, "{byte:02x}");
            hex
        })
}

/// A name no other writer (thread or process) of the cache uses right now.
fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// The owner the file system gives a file this process creates in `dir`:
/// the current user, as this file system sees it.
fn owner_of_new_files(dir: &Path) -> Option<u32> {
    let probe = dir.join(format!(".owner-probe-{}", unique_suffix()));
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&probe)
        .ok()?;
    let uid = file.metadata().map(|m| m.uid()).ok();
    drop(file);
    let _ = fs::remove_file(&probe);
    uid
}

/// Write `contents` to a new file beside `path` and rename it over `path`.
/// No fsync: a file cut short by a crash no longer matches its manifest.
fn write_atomically(path: &Path, contents: &[u8]) -> io::Result<()> {
    let mut partial = path.as_os_str().to_owned();
    partial.push(format!(".partial-{}", unique_suffix()));
    let partial = PathBuf::from(partial);
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&partial)
        .and_then(|mut file| file.write_all(contents))
        .and_then(|()| fs::rename(&partial, path));
    if written.is_err() {
        let _ = fs::remove_file(&partial);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A tiny component that imports a function named `name`.
    fn component(name: &str) -> (Vec<u8>, String) {
        let bytes = wat::parse_str(format!("(component (import \"{name}\" (func)))")).unwrap();
        let sha256 = hex_sha256(&bytes);
        (bytes, sha256)
    }

    fn imports(engine: &Engine, component: &Component) -> Vec<String> {
        component
            .component_type()
            .imports(engine)
            .map(|(name, _)| name.to_owned())
            .collect()
    }

    fn inode(path: &Path) -> u64 {
        fs::metadata(path).unwrap().ino()
    }

    #[test]
    fn an_entry_is_written_and_used() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ComponentCache::new(dir.path().join("cache"));
        let engine = Engine::default();
        let (bytes, sha256) = component("a");
        let (first, used) = cache.load_or_compile(&engine, &sha256, &bytes).unwrap();
        assert_eq!(imports(&engine, &first), ["a"]);
        assert_eq!(used, CacheUse::Stored);
        let entry = cache.entry(&engine, &sha256);
        let written = inode(&entry.compiled);
        assert_eq!(
            fs::read_to_string(&entry.manifest).unwrap(),
            manifest(&sha256, &fs::read(&entry.compiled).unwrap())
        );
        // A hit reads the entry and writes nothing.
        let (again, used) = cache.load_or_compile(&engine, &sha256, &bytes).unwrap();
        assert_eq!(imports(&engine, &again), ["a"]);
        assert_eq!(used, CacheUse::Loaded);
        assert_eq!(inode(&entry.compiled), written);
    }

    #[test]
    fn the_directory_is_created_0700() {
        let dir = tempfile::tempdir().unwrap();
        let cache_dir = dir.path().join("nested/cache");
        let cache = ComponentCache::new(cache_dir.clone());
        let engine = Engine::default();
        let (bytes, sha256) = component("a");
        cache.load_or_compile(&engine, &sha256, &bytes).unwrap();
        let mode = fs::metadata(&cache_dir).unwrap().mode();
        assert_eq!(mode & 0o777, 0o700, "mode {mode:o}");
        assert!(cache.entry(&engine, &sha256).compiled.is_file());
    }

    #[test]
    fn an_entry_swapped_for_another_components_is_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ComponentCache::new(dir.path().to_owned());
        let engine = Engine::default();
        let (bytes_a, sha_a) = component("a");
        let (bytes_b, sha_b) = component("b");
        cache.load_or_compile(&engine, &sha_a, &bytes_a).unwrap();
        cache.load_or_compile(&engine, &sha_b, &bytes_b).unwrap();
        let entry_a = cache.entry(&engine, &sha_a);
        let entry_b = cache.entry(&engine, &sha_b);

        // b's compiled code copied over a's name: the manifest does not match.
        fs::copy(&entry_b.compiled, &entry_a.compiled).unwrap();
        let swapped = inode(&entry_a.compiled);
        let loaded = cache.load_or_compile(&engine, &sha_a, &bytes_a).unwrap().0;
        assert_eq!(imports(&engine, &loaded), ["a"]);
        // ...and the entry was compiled and written again.
        assert_ne!(inode(&entry_a.compiled), swapped);
        assert_ne!(
            fs::read(&entry_a.compiled).unwrap(),
            fs::read(&entry_b.compiled).unwrap()
        );

        // b's code and b's manifest both copied over a's: the manifest names b.
        fs::copy(&entry_b.compiled, &entry_a.compiled).unwrap();
        fs::copy(&entry_b.manifest, &entry_a.manifest).unwrap();
        let loaded = cache.load_or_compile(&engine, &sha_a, &bytes_a).unwrap().0;
        assert_eq!(imports(&engine, &loaded), ["a"]);
        assert_eq!(
            fs::read_to_string(&entry_a.manifest).unwrap(),
            manifest(&sha_a, &fs::read(&entry_a.compiled).unwrap())
        );
        assert!(
            fs::read_to_string(&entry_a.manifest)
                .unwrap()
                .contains(&sha_a)
        );
    }

    #[test]
    fn a_missing_manifest_means_compiling_again() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ComponentCache::new(dir.path().to_owned());
        let engine = Engine::default();
        let (bytes, sha256) = component("a");
        cache.load_or_compile(&engine, &sha256, &bytes).unwrap();
        let entry = cache.entry(&engine, &sha256);
        fs::remove_file(&entry.manifest).unwrap();
        let before = inode(&entry.compiled);
        let (loaded, _) = cache.load_or_compile(&engine, &sha256, &bytes).unwrap();
        assert_eq!(imports(&engine, &loaded), ["a"]);
        assert_ne!(inode(&entry.compiled), before);
        assert!(entry.manifest.is_file());
    }

    #[test]
    fn a_damaged_entry_means_compiling_again() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ComponentCache::new(dir.path().to_owned());
        let engine = Engine::default();
        let (bytes, sha256) = component("a");
        cache.load_or_compile(&engine, &sha256, &bytes).unwrap();
        let entry = cache.entry(&engine, &sha256);
        let mut compiled = fs::read(&entry.compiled).unwrap();
        let last = compiled.len() - 1;
        compiled[last] ^= 0xff;
        fs::write(&entry.compiled, &compiled).unwrap();
        let before = inode(&entry.compiled);
        let (loaded, _) = cache.load_or_compile(&engine, &sha256, &bytes).unwrap();
        assert_eq!(imports(&engine, &loaded), ["a"]);
        assert_ne!(inode(&entry.compiled), before);
    }

    #[test]
    fn a_directory_others_may_write_is_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let cache_dir = dir.path().join("cache");
        fs::create_dir(&cache_dir).unwrap();
        fs::set_permissions(&cache_dir, fs::Permissions::from_mode(0o770)).unwrap();
        let cache = ComponentCache::new(cache_dir.clone());
        let engine = Engine::default();
        let (bytes, sha256) = component("a");
        let (loaded, used) = cache.load_or_compile(&engine, &sha256, &bytes).unwrap();
        assert_eq!(imports(&engine, &loaded), ["a"]);
        assert!(matches!(used, CacheUse::NotStored(why) if why.contains("only this user")));
        assert_eq!(fs::read_dir(&cache_dir).unwrap().count(), 0);
        // Left as it was: the host does not take over a directory it did not make.
        assert_eq!(fs::metadata(&cache_dir).unwrap().mode() & 0o777, 0o770);
    }
}
