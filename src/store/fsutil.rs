//! Filesystem helpers shared by the store: error classification, atomic writes, folder walks.

use std::fs::{self, File, Metadata};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use super::StoreError;

/// Turn an I/O error into a [`StoreError`] that names the path and says what to do: a full disk and
/// a non-writable cache get their own variants because the fix is different.
pub fn io_error(action: &'static str, path: &Path, source: io::Error) -> StoreError {
    match source.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => StoreError::DiskFull {
            path: path.to_path_buf(),
        },
        Some(libc::EACCES) | Some(libc::EPERM) | Some(libc::EROFS) => StoreError::NotWritable {
            path: path.to_path_buf(),
            source,
        },
        _ => StoreError::Io {
            action,
            path: path.to_path_buf(),
            source,
        },
    }
}

/// Shorthand: `result.map_err(at("reading", path))`.
pub fn at<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| io_error(action, path, source)
}

/// A name unique within this host: pid, a per-process counter and the time.
pub fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{}-{}-{}", std::process::id(), nanos, count)
}

/// Milliseconds since the Unix epoch (0 if the clock is before 1970).
pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// RFC 3339 UTC time for humans and manifests.
pub fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}

/// Write `bytes` to `path` atomically: a temporary file in the same folder, fsync, rename.
/// Readers see the old content or the new one, never a prefix.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let parent = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temporary = parent.join(format!(".{name}.tmp-{}", unique_suffix()));
    let result = (|| {
        let mut file = File::create(&temporary).map_err(at("creating", &temporary))?;
        file.write_all(bytes).map_err(at("writing", &temporary))?;
        file.sync_all().map_err(at("syncing", &temporary))?;
        fs::rename(&temporary, path).map_err(at("renaming into", path))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temporary);
    }
    result
}

/// fsync a folder so that renames into it survive a power loss.
pub fn sync_dir(path: &Path) -> Result<(), StoreError> {
    File::open(path)
        .and_then(|dir| dir.sync_all())
        .map_err(at("syncing folder", path))
}

/// Remove a folder tree if it exists. Files may be read-only (objects' hard links): unlinking
/// needs write permission on the folder only.
pub fn remove_tree(path: &Path) -> Result<(), StoreError> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(io_error("removing", path, error)),
    }
}

/// Bytes of all regular files under `path` (0 if it does not exist). Does not follow symlinks.
pub fn tree_bytes(path: &Path) -> u64 {
    let Ok(metadata) = fs::symlink_metadata(path) else {
        return 0;
    };
    if metadata.is_file() {
        return metadata.len();
    }
    if !metadata.is_dir() {
        return 0;
    }
    let Ok(entries) = fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| tree_bytes(&entry.path()))
        .sum()
}

/// One file found by [`walk`].
#[derive(Debug)]
pub struct WalkedFile {
    /// Path relative to the walked root, `/`-separated.
    pub relative: String,
    /// Absolute path as walked (may be a symlink).
    pub path: PathBuf,
    /// Metadata of the file itself (symlinks followed).
    pub metadata: Metadata,
    /// Whether `path` is a symlink (to a file).
    pub is_symlink: bool,
}

/// The files of a folder, sorted by relative path, plus its empty sub-folders.
#[derive(Debug, Default)]
pub struct Walk {
    pub files: Vec<WalkedFile>,
    pub empty_dirs: Vec<String>,
}

/// List every regular file under `root`, following symlinks (Hugging Face caches and stages that
/// link their inputs use them) with loop detection. Sockets, FIFOs and devices, names that are not
/// UTF-8, and symlink loops are errors naming the path.
pub fn walk(root: &Path) -> Result<Walk, StoreError> {
    let mut walk = Walk::default();
    let root_metadata = fs::metadata(root).map_err(at("reading", root))?;
    let mut ancestors = vec![(root_metadata.dev(), root_metadata.ino())];
    walk_into(root, "", &mut ancestors, &mut walk)?;
    walk.files
        .sort_by(|a, b| a.relative.as_bytes().cmp(b.relative.as_bytes()));
    walk.empty_dirs.sort();
    Ok(walk)
}

fn walk_into(
    dir: &Path,
    prefix: &str,
    ancestors: &mut Vec<(u64, u64)>,
    walk: &mut Walk,
) -> Result<(), StoreError> {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .map_err(at("listing", dir))?
        .collect::<Result<_, _>>()
        .map_err(at("listing", dir))?;
    entries.sort_by_key(|entry| entry.file_name());
    if entries.is_empty() && !prefix.is_empty() {
        walk.empty_dirs
            .push(prefix.trim_end_matches('/').to_string());
    }
    for entry in entries {
        let path = entry.path();
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            return Err(StoreError::InvalidOutput {
                path,
                message: "the file name is not valid UTF-8; rename it".into(),
            });
        };
        let relative = format!("{prefix}{name}");
        let link_metadata = fs::symlink_metadata(&path).map_err(at("reading", &path))?;
        let is_symlink = link_metadata.file_type().is_symlink();
        let metadata = if is_symlink {
            fs::metadata(&path).map_err(|source| StoreError::InvalidOutput {
                path: path.clone(),
                message: format!("broken symlink ({source}); remove it or point it at a real file"),
            })?
        } else {
            link_metadata
        };
        if metadata.is_dir() {
            let id = (metadata.dev(), metadata.ino());
            if ancestors.contains(&id) {
                return Err(StoreError::InvalidOutput {
                    path,
                    message: "symlink loop: this folder links to one of its parents".into(),
                });
            }
            ancestors.push(id);
            walk_into(&path, &format!("{relative}/"), ancestors, walk)?;
            ancestors.pop();
        } else if metadata.is_file() {
            walk.files.push(WalkedFile {
                relative,
                path,
                metadata,
                is_symlink,
            });
        } else {
            return Err(StoreError::InvalidOutput {
                path,
                message:
                    "not a regular file or folder (socket, FIFO or device); only files are stored"
                        .into(),
            });
        }
    }
    Ok(())
}

/// Modification time in nanoseconds since the epoch (negative before 1970).
pub fn mtime_ns(metadata: &Metadata) -> i128 {
    i128::from(metadata.mtime()) * 1_000_000_000 + i128::from(metadata.mtime_nsec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walk_lists_files_sorted_follows_file_symlinks_and_rejects_loops() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        fs::create_dir_all(root.join("b/c")).unwrap();
        fs::create_dir_all(root.join("empty")).unwrap();
        fs::write(root.join("z"), b"z").unwrap();
        fs::write(root.join("b/c/a"), b"a").unwrap();
        fs::write(dir.path().join("outside"), b"o").unwrap();
        std::os::unix::fs::symlink(dir.path().join("outside"), root.join("link")).unwrap();
        let walked = walk(&root).unwrap();
        let names: Vec<_> = walked.files.iter().map(|f| f.relative.as_str()).collect();
        assert_eq!(names, ["b/c/a", "link", "z"]);
        assert!(walked.files[1].is_symlink);
        assert_eq!(walked.empty_dirs, ["empty"]);

        std::os::unix::fs::symlink(&root, root.join("b/loop")).unwrap();
        let error = walk(&root).unwrap_err().to_string();
        assert!(error.contains("symlink loop"), "{error}");
    }

    #[test]
    fn write_atomic_replaces_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("record.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary files left"
        );
    }

    #[test]
    fn full_disk_and_permission_errors_are_classified() {
        let path = Path::new("/x");
        let full = io_error("writing", path, io::Error::from_raw_os_error(libc::ENOSPC));
        assert!(matches!(full, StoreError::DiskFull { .. }));
        assert!(full.to_string().contains("no space left"), "{full}");
        let denied = io_error("writing", path, io::Error::from_raw_os_error(libc::EACCES));
        assert!(matches!(denied, StoreError::NotWritable { .. }));
    }
}
