//! Digests of external inputs (`{ path = .. }`), with a stat cache so unchanged files are not
//! rehashed: a 13 GB checkpoint costs one `stat` per run, not a minute of hashing.
//!
//! The cache maps a file's absolute path to `(dev, inode, size, mtime_ns) → digest`. Any change
//! of those four fields means a rehash. Like git's "racily clean" rule, a file modified less than
//! [`RACY_WINDOW_MS`] before hashing started is hashed but not cached: a write landing in the same
//! timestamp tick after we hashed would otherwise go unnoticed.
//!
//! Large files are memory-mapped for hashing; like `b3sum`, a process truncating a file while we
//! hash it would crash us with SIGBUS, so inputs must not be rewritten during planning.

use std::collections::HashMap;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::digest::{Digest, FileEntry, folder_digest};
use super::fsutil::{self, at, now_unix_ms};
use super::index::{self, STAT_CACHE};
use super::{Store, StoreError};

/// Files modified this recently before hashing are not stat-cached (see module docs).
pub const RACY_WINDOW_MS: i128 = 2_000;

/// The digest of an external file or folder, and what it cost.
#[derive(Debug, Clone, PartialEq)]
pub struct ExternalHash {
    /// File digest for a file, [`folder_digest`] for a folder.
    pub digest: Digest,
    pub is_folder: bool,
    /// Files and bytes the input has.
    pub files: u64,
    pub bytes: u64,
    /// Bytes actually read this time (0 when every file hit the stat cache).
    pub hashed_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct StatRecord {
    dev: u64,
    inode: u64,
    bytes: u64,
    mtime_ns: i128,
    digest: Digest,
}

impl StatRecord {
    fn matches(&self, metadata: &fs::Metadata) -> bool {
        self.dev == metadata.dev()
            && self.inode == metadata.ino()
            && self.bytes == metadata.len()
            && self.mtime_ns == fsutil::mtime_ns(metadata)
    }
}

impl Store {
    /// Digest of an external file or folder (symlinks followed), using and updating the stat
    /// cache. Missing paths give [`StoreError::MissingExternal`].
    pub fn hash_external(&self, path: &Path) -> Result<ExternalHash, StoreError> {
        let absolute = match fs::canonicalize(path) {
            Ok(absolute) => absolute,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::MissingExternal {
                    path: path.to_path_buf(),
                });
            }
            Err(error) => return Err(fsutil::io_error("resolving", path, error)),
        };
        let metadata = fs::metadata(&absolute).map_err(at("reading", &absolute))?;
        let is_folder = metadata.is_dir();
        // (relative name, absolute path, metadata) per file.
        let files: Vec<(String, PathBuf, fs::Metadata)> = if is_folder {
            fsutil::walk(&absolute)?
                .files
                .into_iter()
                .map(|file| (file.relative, file.path, file.metadata))
                .collect()
        } else {
            vec![(String::new(), absolute.clone(), metadata)]
        };

        // One index operation for all lookups; hashing happens without the index lock.
        let cached: HashMap<PathBuf, Digest> = self.index.with(|db| {
            let stat_cache = index::tree(&self.index, db, STAT_CACHE)?;
            let mut hits = HashMap::new();
            for (_, file_path, file_metadata) in &files {
                let record: Option<StatRecord> = index::get_json(
                    &self.index,
                    &stat_cache,
                    file_path.as_os_str().as_encoded_bytes(),
                )?;
                if let Some(record) = record.filter(|record| record.matches(file_metadata)) {
                    hits.insert(file_path.clone(), record.digest);
                }
            }
            Ok(hits)
        })?;

        let hash_started_ms = i128::from(now_unix_ms());
        let fresh: Vec<(PathBuf, StatRecord)> = files
            .par_iter()
            .filter(|(_, file_path, _)| !cached.contains_key(file_path))
            .map(|(_, file_path, file_metadata)| {
                let digest = Digest::of_file(file_path).map_err(at("hashing", file_path))?;
                let record = StatRecord {
                    dev: file_metadata.dev(),
                    inode: file_metadata.ino(),
                    bytes: file_metadata.len(),
                    mtime_ns: fsutil::mtime_ns(file_metadata),
                    digest,
                };
                Ok((file_path.clone(), record))
            })
            .collect::<Result<_, StoreError>>()?;
        let hashed_bytes = fresh.iter().map(|(_, record)| record.bytes).sum();
        let cacheable: Vec<&(PathBuf, StatRecord)> = fresh
            .iter()
            .filter(|(_, record)| record.mtime_ns / 1_000_000 < hash_started_ms - RACY_WINDOW_MS)
            .collect();
        if !cacheable.is_empty() {
            self.index.with(|db| {
                let stat_cache = index::tree(&self.index, db, STAT_CACHE)?;
                for (file_path, record) in &cacheable {
                    index::put_json(
                        &self.index,
                        &stat_cache,
                        file_path.as_os_str().as_encoded_bytes(),
                        record,
                    )?;
                }
                Ok(())
            })?;
        }

        let fresh: HashMap<PathBuf, Digest> = fresh
            .into_iter()
            .map(|(path, record)| (path, record.digest))
            .collect();
        let entries: Vec<FileEntry> = files
            .iter()
            .map(|(relative, file_path, file_metadata)| FileEntry {
                path: relative.clone(),
                digest: cached
                    .get(file_path)
                    .or_else(|| fresh.get(file_path))
                    .copied()
                    .unwrap_or(Digest::from_bytes([0; 32])),
                bytes: file_metadata.len(),
            })
            .collect();
        let digest = if is_folder {
            folder_digest(&entries)
        } else {
            entries[0].digest
        };
        Ok(ExternalHash {
            digest,
            is_folder,
            files: entries.len() as u64,
            bytes: entries.iter().map(|entry| entry.bytes).sum(),
            hashed_bytes,
        })
    }

    /// Forget stat-cache entries of files that no longer exist or changed (gc calls this).
    pub(super) fn prune_stat_cache(&self, dry_run: bool) -> Result<usize, StoreError> {
        self.index.with(|db| {
            let stat_cache = index::tree(&self.index, db, STAT_CACHE)?;
            let mut stale = Vec::new();
            for item in stat_cache.iter() {
                let (key, bytes) = item.map_err(|error| self.index.sled_error(error))?;
                let path = PathBuf::from(std::ffi::OsStr::from_bytes(&key));
                let record: Option<StatRecord> = serde_json::from_slice(&bytes).ok();
                let current = fs::metadata(&path).ok();
                let valid = matches!((&record, &current), (Some(record), Some(metadata)) if record.matches(metadata));
                if !valid {
                    stale.push(key);
                }
            }
            if !dry_run {
                for key in &stale {
                    stat_cache.remove(key).map_err(|error| self.index.sled_error(error))?;
                }
            }
            Ok(stale.len())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::store;
    use super::*;
    use std::time::{Duration, SystemTime};

    /// Set a file's mtime into the past so the stat cache may record it (see RACY_WINDOW_MS).
    fn age(path: &Path) {
        let file = fs::File::options().write(true).open(path).unwrap();
        file.set_modified(SystemTime::now() - Duration::from_secs(60))
            .unwrap();
    }

    #[test]
    fn unchanged_file_is_not_rehashed_and_a_change_is_detected() {
        let (dir, store) = store();
        let path = dir.path().join("checkpoint.bin");
        fs::write(&path, b"weights v1").unwrap();
        age(&path);
        let first = store.hash_external(&path).unwrap();
        assert_eq!(first.digest, Digest::of_bytes(b"weights v1"));
        assert_eq!(
            (
                first.is_folder,
                first.files,
                first.bytes,
                first.hashed_bytes
            ),
            (false, 1, 10, 10)
        );
        let second = store.hash_external(&path).unwrap();
        assert_eq!(second.digest, first.digest);
        assert_eq!(second.hashed_bytes, 0, "stat cache hit");

        fs::write(&path, b"weights v2").unwrap(); // same size, new mtime
        age(&path);
        let changed = store.hash_external(&path).unwrap();
        assert_eq!(changed.digest, Digest::of_bytes(b"weights v2"));
        assert_eq!(changed.hashed_bytes, 10);
    }

    #[test]
    fn recently_modified_files_are_hashed_but_not_cached() {
        let (dir, store) = store();
        let path = dir.path().join("fresh");
        fs::write(&path, b"just written").unwrap();
        assert_eq!(store.hash_external(&path).unwrap().hashed_bytes, 12);
        assert_eq!(
            store.hash_external(&path).unwrap().hashed_bytes,
            12,
            "racy: still rehashed"
        );
    }

    #[test]
    fn folder_digest_depends_on_names_and_contents_and_uses_the_cache_per_file() {
        let (dir, store) = store();
        let folder = dir.path().join("data");
        fs::create_dir_all(folder.join("sub")).unwrap();
        for (name, bytes) in [("a.txt", &b"aaa"[..]), ("sub/b.txt", b"bb")] {
            fs::write(folder.join(name), bytes).unwrap();
            age(&folder.join(name));
        }
        let first = store.hash_external(&folder).unwrap();
        assert!(first.is_folder);
        assert_eq!((first.files, first.bytes, first.hashed_bytes), (2, 5, 5));
        let expected = folder_digest(&[
            FileEntry {
                path: "a.txt".into(),
                digest: Digest::of_bytes(b"aaa"),
                bytes: 3,
            },
            FileEntry {
                path: "sub/b.txt".into(),
                digest: Digest::of_bytes(b"bb"),
                bytes: 2,
            },
        ]);
        assert_eq!(first.digest, expected);
        assert_eq!(store.hash_external(&folder).unwrap().hashed_bytes, 0);

        fs::rename(folder.join("a.txt"), folder.join("c.txt")).unwrap();
        let renamed = store.hash_external(&folder).unwrap();
        assert_ne!(
            renamed.digest, first.digest,
            "a rename changes the folder digest"
        );
        assert_eq!(renamed.hashed_bytes, 3, "only the renamed file is rehashed");
    }

    #[test]
    fn a_missing_path_names_it() {
        let (dir, store) = store();
        let error = store.hash_external(&dir.path().join("nope")).unwrap_err();
        assert!(matches!(error, StoreError::MissingExternal { .. }));
        assert!(error.to_string().contains("nope"));
    }

    #[test]
    fn gc_prunes_stat_entries_of_deleted_files() {
        let (dir, store) = store();
        let path = dir.path().join("f");
        fs::write(&path, b"x").unwrap();
        age(&path);
        store.hash_external(&path).unwrap();
        assert_eq!(store.prune_stat_cache(false).unwrap(), 0);
        fs::remove_file(&path).unwrap();
        assert_eq!(store.prune_stat_cache(true).unwrap(), 1);
        assert_eq!(store.prune_stat_cache(false).unwrap(), 1);
        assert_eq!(store.prune_stat_cache(false).unwrap(), 0);
    }
}
