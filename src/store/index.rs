//! The sled index, opened per operation under a file lock so several processes can share it.
//!
//! sled lets only one process open a database at a time (it takes an exclusive `flock` on its
//! `db` file and fails otherwise). Two `sheared run` processes on one cache must both read and
//! write the index, and a stage may run for days, so no process may keep it open. Every index
//! operation therefore:
//! 1. takes an exclusive `flock` on `index.lock` (blocking: other processes and threads queue here
//!    instead of failing inside sled),
//! 2. opens sled with the background flusher off, runs the operation, flushes, closes,
//! 3. releases the lock.
//!
//! sled may release its own `db` lock a moment after the `Db` is dropped (its I/O threads finish
//! asynchronously, spacejam/sled#1234), so opening retries for a while on that one error. An
//! operation costs about one sled open (milliseconds); callers batch work into one
//! [`Index::with`] where they can (a folder's stat-cache lookups, all of gc's reads).
//! The lock file is never deleted; the kernel drops the `flock` when a process dies.
//!
//! A burst of operations (planning 20 stages: lookups, stat-cache hits, history) can instead run
//! inside an [`IndexSession`](super::IndexSession), which keeps the database open and the lock held
//! until it is dropped: one open for the whole burst. Other processes wait meanwhile, so sessions
//! must never span a stage's execution.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::StoreError;
use super::fsutil::at;

/// sled tree names.
pub const MANIFESTS: &str = "manifests";
pub const STAT_CACHE: &str = "stat_cache";
pub const FAILURES: &str = "failures";
pub const HISTORY: &str = "history";

/// How long to keep retrying sled's own lock after ours is held (see module docs).
const SLED_LOCK_RETRY: Duration = Duration::from_secs(30);

pub struct Index {
    dir: PathBuf,
    lock_path: PathBuf,
    /// The database and its lock while an [`IndexSession`](super::IndexSession) is open.
    held: Mutex<Held>,
}

#[derive(Default)]
struct Held {
    sessions: usize,
    open: Option<(sled::Db, File)>,
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Index {
    pub fn new(root: &Path) -> Self {
        Index {
            dir: root.join("index"),
            lock_path: root.join("index.lock"),
            held: Mutex::new(Held::default()),
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Keep the database open (and the lock held) until the matching [`Index::end_session`], so a
    /// burst of operations pays for one open. Other processes wait meanwhile.
    pub fn begin_session(&self) -> Result<(), StoreError> {
        let mut held = self.held();
        if held.open.is_none() {
            let lock = self.lock()?;
            let db = self.open_db()?;
            held.open = Some((db, lock));
        }
        held.sessions += 1;
        Ok(())
    }

    pub fn end_session(&self) {
        let mut held = self.held();
        held.sessions = held.sessions.saturating_sub(1);
        if held.sessions == 0
            && let Some((db, lock)) = held.open.take()
        {
            if let Err(error) = db.flush() {
                tracing::warn!("flushing the cache index: {error}");
            }
            drop(db);
            drop(lock);
        }
    }

    /// Moves the database folder aside (`index.damaged-<unix ms>`, beside it) under the index
    /// lock, so that the next open starts an empty one; where it went, `None` when there was none.
    pub fn move_aside(&self) -> Result<Option<PathBuf>, StoreError> {
        let _lock = self.lock()?;
        if !self.dir.exists() {
            return Ok(None);
        }
        let target = self
            .dir
            .with_file_name(format!("index.damaged-{}", super::fsutil::now_unix_ms()));
        std::fs::rename(&self.dir, &target).map_err(at("moving aside", &self.dir))?;
        Ok(Some(target))
    }

    fn lock(&self) -> Result<File, StoreError> {
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&self.lock_path)
            .map_err(at("opening the index lock", &self.lock_path))?;
        lock.lock().map_err(at("locking", &self.lock_path))?;
        Ok(lock)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Run `operation` with the database open and the index lock held; flush before returning.
    pub fn with<T>(
        &self,
        operation: impl FnOnce(&sled::Db) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        {
            let held = self.held();
            if let Some((db, _)) = &held.open {
                // Inside a session: operations of this process run one at a time on the open db.
                let value = operation(db)?;
                db.flush().map_err(|error| self.sled_error(error))?;
                return Ok(value);
            }
        }
        let lock = self.lock()?;
        let db = self.open_db()?;
        let result = operation(&db);
        let flushed = db.flush().map_err(|error| self.sled_error(error));
        drop(db);
        drop(lock);
        let value = result?;
        flushed?;
        Ok(value)
    }

    fn open_db(&self) -> Result<sled::Db, StoreError> {
        self.remove_unfinished_snapshots();
        let started = Instant::now();
        let mut pause = Duration::from_millis(1);
        loop {
            match sled::Config::new()
                .path(&self.dir)
                .flush_every_ms(None)
                .open()
            {
                Ok(db) => return Ok(db),
                Err(sled::Error::Io(error))
                    if error.to_string().contains("could not acquire lock")
                        && started.elapsed() < SLED_LOCK_RETRY =>
                {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
                Err(error) => return Err(self.sled_error(error)),
            }
        }
    }

    /// Removes `snap.*.generating` files: snapshots sled began but never finished. sled writes a
    /// snapshot to that name and renames it when complete, but when the write fails (a full disk)
    /// the file stays, and sled's next open takes it for the newest snapshot and refuses the whole
    /// index as corrupt, though every committed record is intact. Our `index.lock` is held by
    /// every opener, so no other process is writing one now.
    fn remove_unfinished_snapshots(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return; // no index yet: sled creates it
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("snap.") && name.ends_with(".generating") {
                match std::fs::remove_file(entry.path()) {
                    Ok(()) => tracing::debug!("removed sled's unfinished snapshot {name}"),
                    Err(error) => tracing::warn!(
                        "could not remove sled's unfinished snapshot {}: {error}",
                        entry.path().display()
                    ),
                }
            }
        }
    }

    /// Map a sled error; I/O errors keep their classification (full disk, permissions).
    pub fn sled_error(&self, error: sled::Error) -> StoreError {
        match error {
            sled::Error::Io(source) => {
                super::fsutil::io_error("using the cache index", &self.dir, source)
            }
            other => StoreError::Index {
                path: self.dir.clone(),
                message: format!(
                    "{other}; if the index is damaged, run `sheared verify --rebuild-index`: it moves the \
                     index aside and rebuilds it from the manifest copies in the cache's `manifests/` \
                     folder (committed outputs are kept and not recomputed)"
                ),
            },
        }
    }
}

/// Read and decode a JSON value from a tree; undecodable values are reported, not trusted.
pub fn get_json<T: serde::de::DeserializeOwned>(
    index: &Index,
    tree: &sled::Tree,
    key: &[u8],
) -> Result<Option<T>, StoreError> {
    match tree.get(key).map_err(|error| index.sled_error(error))? {
        None => Ok(None),
        Some(bytes) => match serde_json::from_slice(&bytes) {
            Ok(value) => Ok(Some(value)),
            Err(error) => {
                tracing::warn!(tree = ?String::from_utf8_lossy(&tree.name()), "ignoring an unreadable index record: {error}");
                Ok(None)
            }
        },
    }
}

/// Encode and store a JSON value.
pub fn put_json<T: serde::Serialize>(
    index: &Index,
    tree: &sled::Tree,
    key: &[u8],
    value: &T,
) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec(value).map_err(|error| StoreError::Index {
        path: index.dir().to_path_buf(),
        message: format!("encoding a record: {error}"),
    })?;
    tree.insert(key, bytes)
        .map_err(|error| index.sled_error(error))?;
    Ok(())
}

/// Open a tree.
pub fn tree(index: &Index, db: &sled::Db, name: &str) -> Result<sled::Tree, StoreError> {
    db.open_tree(name).map_err(|error| index.sled_error(error))
}

#[cfg(test)]
mod tests {
    use super::super::testing::{key, store};

    /// Rapid open/close cycles from several threads (each a separate sled open under the lock)
    /// must neither fail on sled's own lock nor lose writes.
    #[test]
    fn concurrent_per_operation_opens_do_not_fail_or_lose_writes() {
        let (_dir, store) = store();
        let store = std::sync::Arc::new(store);
        let started = std::time::Instant::now();
        let threads: Vec<_> = (0..4)
            .map(|thread| {
                let store = std::sync::Arc::clone(&store);
                std::thread::spawn(move || {
                    for index in 0..25 {
                        store
                            .record_use(
                                "r",
                                &format!("stage-{thread}"),
                                &key(&format!("{thread}-{index}")),
                            )
                            .unwrap();
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        eprintln!("100 index operations in {:?}", started.elapsed());
        for thread in 0..4 {
            assert_eq!(
                store
                    .history("r", &format!("stage-{thread}"))
                    .unwrap()
                    .len(),
                25
            );
        }
    }
}

#[cfg(test)]
mod session_tests {
    use super::super::testing::{commit_files, key, store};

    #[test]
    fn a_session_reuses_one_open_and_commits_inside_it_are_durable() {
        let (dir, store) = store();
        {
            let _session = store.index_session().unwrap();
            let _nested = store.index_session().unwrap();
            commit_files(&store, &key("k"), "r", "s", &[("f", b"1")]);
            assert!(store.lookup(&key("k")).unwrap().is_some());
        }
        drop(store);
        // After the session closed, a fresh handle (as another process would) sees the entry.
        let reopened = super::super::Store::open(dir.path().join("cache")).unwrap();
        assert!(reopened.lookup(&key("k")).unwrap().is_some());
    }
}

/// Two real processes hammering one index (sled admits one process at a time; our lock + retry
/// must make that invisible). The child processes re-run this test binary on `child_worker`.
#[cfg(test)]
mod cross_process_tests {
    use super::super::Store;
    use super::super::testing::{key, store};

    const OPERATIONS: usize = 30;

    #[test]
    fn two_processes_share_the_index_without_errors_or_lost_writes() {
        let (_dir, store) = store();
        let exe = std::env::current_exe().unwrap();
        let children: Vec<_> = (0..2)
            .map(|worker| {
                std::process::Command::new(&exe)
                    .args([
                        "--exact",
                        "store::index::cross_process_tests::child_worker",
                        "--ignored",
                        "--test-threads=1",
                    ])
                    .env("SHEARED_TEST_CACHE", store.root())
                    .env("SHEARED_TEST_WORKER", worker.to_string())
                    .output()
                    .unwrap()
            })
            .collect();
        for (worker, output) in children.iter().enumerate() {
            assert!(
                output.status.success(),
                "worker {worker}: {}",
                String::from_utf8_lossy(&output.stdout)
            );
            assert!(
                String::from_utf8_lossy(&output.stdout).contains("1 passed"),
                "worker {worker} did not run"
            );
            assert_eq!(
                store
                    .history("r", &format!("worker-{worker}"))
                    .unwrap()
                    .len(),
                OPERATIONS
            );
        }
    }

    #[test]
    #[ignore = "child process of two_processes_share_the_index_without_errors_or_lost_writes"]
    fn child_worker() {
        let cache = std::env::var("SHEARED_TEST_CACHE").expect("run by the parent test only");
        let worker = std::env::var("SHEARED_TEST_WORKER").expect("run by the parent test only");
        let store = Store::open(cache).unwrap();
        for index in 0..OPERATIONS {
            store
                .record_use(
                    "r",
                    &format!("worker-{worker}"),
                    &key(&format!("{worker}-{index}")),
                )
                .unwrap();
            assert_eq!(store.lookup(&key("nothing")).unwrap(), None);
        }
    }
}
