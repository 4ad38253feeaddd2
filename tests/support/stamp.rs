//! Whether a guest built in another language must be built again: the
//! Python and JavaScript builds take seconds to minutes, so they are skipped
//! when nothing they read changed.

use std::hash::{DefaultHasher, Hasher};
use std::path::{Path, PathBuf};

/// A hash of the contents of the files under `dirs` (or of the files
/// themselves; build outputs, installed packages and caches left out), to
/// tell when something must be built again.
pub fn stamp(dirs: &[PathBuf]) -> String {
    fn walk(path: &Path, files: &mut Vec<PathBuf>) {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let skipped = ["__pycache__", "build", "node_modules"];
        if skipped.contains(&name.as_ref())
            || name.ends_with(".egg-info")
            || name.ends_with(".wasm")
        {
            return;
        }
        if path.is_dir() {
            for entry in std::fs::read_dir(path).unwrap() {
                walk(&entry.unwrap().path(), files);
            }
        } else if path.is_file() {
            files.push(path.to_owned());
        }
    }
    let mut hasher = DefaultHasher::new();
    for dir in dirs {
        let mut files = Vec::new();
        walk(dir, &mut files);
        files.sort();
        for file in files {
            let relative = file.strip_prefix(dir).unwrap();
            hasher.write(relative.to_string_lossy().as_bytes());
            hasher.write(&std::fs::read(&file).unwrap());
        }
    }
    format!("{:016x}", hasher.finish())
}
