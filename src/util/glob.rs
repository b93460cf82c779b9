//! External `{ path = .. }` inputs that are glob patterns (`data/books/*.txt.zst`).

use std::path::{Path, PathBuf};

/// Whether `{ path = .. }` is a glob pattern (`data/books/*.txt.zst`) rather than one file or folder.
pub fn is_glob(path: &Path) -> bool {
    path.to_string_lossy().contains(['*', '?', '['])
}

/// The files a glob matches, sorted (unreadable entries are skipped).
pub fn glob_matches(path: &Path) -> Vec<PathBuf> {
    let mut matches: Vec<PathBuf> = match glob::glob(&path.to_string_lossy()) {
        Ok(paths) => paths.flatten().collect(),
        Err(_) => Vec::new(),
    };
    matches.sort();
    matches
}

/// Whether an external input exists: the file or folder, or at least one match of a glob.
pub fn external_exists(path: &Path) -> bool {
    if is_glob(path) {
        !glob_matches(path).is_empty()
    } else {
        path.exists()
    }
}
