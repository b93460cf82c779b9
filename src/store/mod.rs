//! The content-addressed store: objects, the index, attempts, leases, gc and verify.
//!
//! # Layout (under the cache folder, default `./cache`)
//! ```text
//! FORMAT            store format version ("sheared-store 1")
//! objects/ab/<hex>  files by blake3 digest: write-once, read-only (0444), fan-out by the first byte
//! index/            sled database: manifests, stat cache, failures, per-stage history
//! index.lock        flock serialising index access across processes (see `index` module docs)
//! gc.lock           flock: one gc or verify at a time
//! attempts/<key>.<host>.<pid>-..   fresh, empty output folders of running attempts
//! scratch/<key>/    persistent per stage key across failed or killed attempts; deleted on commit
//! outputs/<key>/    materialised outputs: hard links to objects (copies across filesystems)
//! logs/<key>/       one log file per attempt
//! manifests/<key>.json  a copy of each committed manifest, written just before its index record:
//!                   lookups restore a record the index lost, `verify --rebuild-index` the whole index
//! jobs/<key>/       a Slurm job's spec, outputs and logs while it runs (exec::slurm); deleted on commit
//! leases/<key>.lock + <key>.json   one lease per stage key (flock held for the lease's lifetime + record)
//! tmp/              objects being copied in (never trusted; gc empties it)
//! ```
//!
//! # API at a glance
//! ```text
//! Store::open(root) -> Store                       .with_lease_timing(..) .with_gc_grace(..)
//! store.index_session() -> IndexSession            one sled open for a burst of calls (planning)
//! store.hash_external(path) -> ExternalHash        { digest, is_folder, files, bytes, hashed_bytes }
//! store.lookup(&key) -> Option<Manifest>           committed and complete (objects checked), else None
//! store.manifest(&key) / store.manifests()         as stored, unchecked (reports)
//! store.begin(&key) -> Attempt                     { key, out_dir, scratch_dir, log_path, started_at }
//! store.commit(&attempt, CommitRecord) -> Manifest { files, output_digest, metrics, preimage, .. }
//! store.fail(&attempt, FailureInfo) -> FailureRecord;   store.failure(&key) -> Option<FailureRecord>
//! store.outputs(&manifest) -> PathBuf              outputs/<key>/, rebuilt if damaged
//! store.record_use(recipe, stage, &key)            history, on commits (automatic) and cache hits
//! store.last_committed(recipe, stage) -> Option<Manifest>;  store.history(..); store.all_history()
//! store.acquire(&key) -> Acquire::{Acquired(LeaseGuard), HeldBy(LeaseInfo)}
//! store.lease_holder(&key) -> Option<LeaseInfo>;  store.wait_released(&key, poll, &should_stop) -> bool
//! store.gc(&live_keys, keep_last, dry_run) -> GcReport;  store.verify() -> VerifyReport
//! Digest::{of_bytes, of_file, of_reader, to_hex, short, parse};  folder_digest(&[FileEntry]);  log_tail(path, n)
//! ```
//!
//! # How the runner uses it
//! ```text
//! let store = Store::open(cache_dir)?;
//! let input_digest = store.hash_external(path)?.digest;           // { path = .. } inputs (stat-cached)
//! // stage key = blake3 over the preimage (plan's job); then, per stage:
//! if let Some(manifest) = store.lookup(&key)? {                   // cached: manifest.output_digest
//!     store.record_use(recipe, stage, &key)?;                     // feeds downstream keys
//! }
//! match store.acquire(&key)? {
//!     Acquire::HeldBy(info) => { store.wait_released(&key, poll, &|| cancelled)?; /* then lookup again */ }
//!     Acquire::Acquired(lease) => {
//!         if let Some(manifest) = store.lookup(&key)? { /* someone else committed meanwhile */ }
//!         let attempt = store.begin(&key)?;       // out_dir (empty), scratch_dir (kept), log_path
//!         // ... run the stage with inputs from store.outputs(&upstream_manifest)? ...
//!         let manifest = store.commit(&attempt, record)?;    // or store.fail(&attempt, failure)?
//!         drop(lease);                                       // hold it until commit/fail returns
//!     }
//! }
//! ```
//! Stages must treat their inputs as read-only: output folders are hard links to the objects, and
//! a process running as root can write through the read-only bits (`sheared verify` detects it).
//!
//! # Guarantees
//! - **Crash safety.** [`Store::commit`] hashes the attempt's files, moves them into `objects/`
//!   (fsynced), and writes the manifest *last* (one sled insert, flushed). A crash at any instant
//!   leaves no entry (the orphan objects are garbage for [`Store::gc`]) or a complete one.
//! - **Never a crash downstream.** [`Store::lookup`] checks that every object of a manifest exists
//!   with its recorded size; if not it drops the manifest (with a warning) and returns `None` so the
//!   stage recomputes. [`Store::verify`] rehashes every object and does the same for corrupt ones.
//! - **Concurrent processes.** Index access is serialised by `index.lock` with a per-operation sled
//!   open; leases are files with kernel `flock`s, so a killed process never leaves a lease that
//!   blocks anyone (the kernel drops its lock; the next acquirer breaks the stale record with a
//!   warning). gc spares objects whose ctime is within its grace period (15 minutes); every commit
//!   refreshes the ctime of each object it references (link, rename or chmod) before writing its
//!   manifest, so gc never deletes an object a concurrent commit is about to reference, and no
//!   lock orders between commits, gc and index sessions can deadlock.
//! - **Clear errors.** A non-writable cache or a full disk yields [`StoreError::NotWritable`] /
//!   [`StoreError::DiskFull`] naming the path and what to do; committed entries are never touched
//!   on those paths.

mod commit;
mod digest;
mod entry;
mod external;
mod failures;
mod fsutil;
mod gc;
mod index;
mod lease;
mod materialise;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use commit::CommitRecord;
pub use digest::{
    Digest, DigestParseError, FileEntry, HashingReader, PARALLEL_HASH_MIN_BYTES, folder_digest,
};
pub use entry::{Attempt, EntryStatus, Manifest};
pub use external::ExternalHash;
pub use failures::{FailureInfo, FailureRecord, HistoryEntry, StageHistory};
pub use fsutil::{now_unix_ms, rfc3339, write_atomic};
pub use gc::{DroppedManifest, GcReport, VerifyReport};
pub use lease::{Acquire, LeaseGuard, LeaseInfo, LeaseTiming};

use fsutil::at;
use index::Index;

/// The on-disk format this binary reads and writes (`FORMAT` file).
pub const FORMAT: &str = "sheared-store 1";

/// Everything that can go wrong in the store. Each message names the path and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "cannot write to {path}: {source}. Make the cache folder writable (owner, permissions, read-only mount) or point `--cache DIR` / SHEARED_CACHE at a writable folder"
    )]
    NotWritable { path: PathBuf, source: io::Error },
    #[error(
        "no space left on the device holding {path}. Free space (`sheared gc` removes unused cache entries) or point `--cache DIR` / SHEARED_CACHE at a bigger disk; committed cache entries are unchanged"
    )]
    DiskFull { path: PathBuf },
    /// The index record of a commit could not be written, after its objects and its manifest copy
    /// were: the output is complete on disk, and a later lookup restores the record from the copy.
    #[error(
        "{source}. This stage's output is stored (its objects and its manifest copy {}): once the index can be written again, the next run reuses it without recomputing",
        copy.display()
    )]
    NotIndexed {
        copy: PathBuf,
        source: Box<StoreError>,
    },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("cache index at {path}: {message}")]
    Index { path: PathBuf, message: String },
    #[error(
        "{path} is a sheared cache of format `{found}`, this binary reads `{FORMAT}`; use another `--cache DIR`"
    )]
    Format { path: PathBuf, found: String },
    #[error(
        "external input {path} does not exist; fix the `path = ...` in the recipe (relative paths are relative to the recipe file)"
    )]
    MissingExternal { path: PathBuf },
    #[error("stage output {path}: {message}")]
    InvalidOutput { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Busy { path: PathBuf, message: String },
    #[error(
        "object {digest} of cache entry {key} is missing from {path}; run the stage again (`sheared verify` drops such entries so they recompute)"
    )]
    MissingObject {
        key: Digest,
        digest: Digest,
        path: PathBuf,
    },
}

/// A handle on one cache folder. Cheap to share (`Arc<Store>`) between the runner's threads; every
/// method is safe to call concurrently from threads and from other processes.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    index: Index,
    host: String,
    lease_timing: LeaseTiming,
    gc_grace: Duration,
}

/// gc spares objects, temporary files and half-built folders younger than this (by ctime/mtime),
/// which covers a commit between its object moves and its manifest write without any lock.
pub const DEFAULT_GC_GRACE: Duration = Duration::from_secs(15 * 60);

impl Store {
    /// Open (creating if needed) the store at `root`. Fails with a clear error if `root` cannot be
    /// created or written, or holds a store of another format.
    pub fn open(root: impl AsRef<Path>) -> Result<Store, StoreError> {
        let root = root.as_ref();
        fs::create_dir_all(root).map_err(at("creating the cache folder", root))?;
        let root = fs::canonicalize(root).map_err(at("resolving", root))?;
        for sub in [
            "objects", "attempts", "scratch", "outputs", "logs", "leases", "tmp",
        ] {
            let dir = root.join(sub);
            fs::create_dir_all(&dir).map_err(at("creating", &dir))?;
        }
        // A write probe turns a read-only cache into an error now, not after a 3-hour stage.
        let probe = root
            .join("tmp")
            .join(format!(".probe-{}", fsutil::unique_suffix()));
        fs::write(&probe, b"probe").map_err(at("writing a probe file in", &probe))?;
        let _ = fs::remove_file(&probe);
        let format_path = root.join("FORMAT");
        match fs::read_to_string(&format_path) {
            Ok(found) if found.trim() == FORMAT => {}
            Ok(found) => {
                return Err(StoreError::Format {
                    path: root,
                    found: found.trim().to_string(),
                });
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                fsutil::write_atomic(&format_path, format!("{FORMAT}\n").as_bytes())?
            }
            Err(error) => return Err(fsutil::io_error("reading", &format_path, error)),
        }
        let host = hostname::get()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "unknown".into());
        Ok(Store {
            index: Index::new(&root),
            root,
            host,
            lease_timing: LeaseTiming::default(),
            gc_grace: DEFAULT_GC_GRACE,
        })
    }

    /// Change how often leases heartbeat and when a silent lease counts as stale (tests use short ones).
    pub fn with_lease_timing(mut self, timing: LeaseTiming) -> Store {
        self.lease_timing = timing;
        self
    }

    /// Change gc's grace period (tests use zero to collect what they just made).
    pub fn with_gc_grace(mut self, grace: Duration) -> Store {
        self.gc_grace = grace;
        self
    }

    /// The cache folder (absolute).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// This machine's host name as recorded in leases and manifests.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Where the object with `digest` lives (it may not exist).
    pub fn object_path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.to_hex();
        self.root.join("objects").join(&hex[..2]).join(hex)
    }

    /// The persistent scratch folder of a stage key (it may not exist).
    pub fn scratch_path(&self, key: &Digest) -> PathBuf {
        self.root.join("scratch").join(key.to_hex())
    }

    /// The materialised output folder of a stage key (it may not exist; see [`Store::outputs`]).
    pub fn outputs_path(&self, key: &Digest) -> PathBuf {
        self.root.join("outputs").join(key.to_hex())
    }

    /// The log folder of a stage key (one file per attempt).
    pub fn logs_path(&self, key: &Digest) -> PathBuf {
        self.root.join("logs").join(key.to_hex())
    }

    /// The copy of a key's committed manifest (see the layout above).
    pub fn manifest_copy_path(&self, key: &Digest) -> PathBuf {
        self.root
            .join("manifests")
            .join(format!("{}.json", key.to_hex()))
    }

    /// The folder of a stage key's Slurm job while it runs (`crate::exec::slurm`).
    pub fn jobs_path(&self, key: &Digest) -> PathBuf {
        self.root.join("jobs").join(key.to_hex())
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Take `gc.lock` so that only one gc or verify runs at a time. Never blocks (a blocked gc
    /// inside someone's index session could deadlock): a second gc gets [`StoreError::Busy`].
    fn gc_lock(&self) -> Result<fs::File, StoreError> {
        let path = self.root.join("gc.lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(at("opening", &path))?;
        match file.try_lock() {
            Ok(()) => Ok(file),
            Err(fs::TryLockError::WouldBlock) => Err(StoreError::Busy {
                path,
                message: "another `sheared gc` or `sheared verify` is running on this cache; wait for it to finish".into(),
            }),
            Err(fs::TryLockError::Error(error)) => Err(fsutil::io_error("locking", &path, error)),
        }
    }
}

/// Keeps the index open for a burst of operations (see [`Store::index_session`]); closes it on drop.
#[must_use = "the session ends when this is dropped"]
pub struct IndexSession<'a> {
    store: &'a Store,
}

impl Drop for IndexSession<'_> {
    fn drop(&mut self) {
        self.store.index.end_session();
    }
}

impl Store {
    /// Open the index once for many operations: every store method called from any thread of this
    /// process while the session lives reuses the open database instead of opening it per call
    /// (an open costs milliseconds). Other processes wait for the index until the session ends, so
    /// hold it while planning or reporting, never while a stage runs. Sessions nest.
    pub fn index_session(&self) -> Result<IndexSession<'_>, StoreError> {
        self.index.begin_session()?;
        Ok(IndexSession { store: self })
    }
}

/// The last `lines` lines of a log file (for failure messages); empty if it cannot be read.
pub fn log_tail(path: &Path, lines: usize) -> String {
    use std::io::{Read, Seek, SeekFrom};
    const TAIL_BYTES: u64 = 64 * 1024;
    let Ok(mut file) = fs::File::open(path) else {
        return String::new();
    };
    let length = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(length.saturating_sub(TAIL_BYTES)));
    let mut bytes = Vec::new();
    let _ = file.read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Default poll interval for [`Store::wait_released`].
pub const DEFAULT_LEASE_POLL: Duration = Duration::from_millis(500);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_creates_layout_and_rejects_foreign_format() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("cache")).unwrap();
        for sub in [
            "objects", "attempts", "scratch", "outputs", "logs", "leases", "tmp",
        ] {
            assert!(store.root().join(sub).is_dir(), "{sub}");
        }
        drop(store);
        Store::open(dir.path().join("cache")).unwrap();
        fs::write(dir.path().join("cache/FORMAT"), "sheared-store 99\n").unwrap();
        let error = Store::open(dir.path().join("cache"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("sheared-store 99"), "{error}");
    }

    #[test]
    fn open_on_a_read_only_folder_names_the_path() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let locked = dir.path().join("locked");
        fs::create_dir(&locked).unwrap();
        fs::set_permissions(&locked, fs::Permissions::from_mode(0o555)).unwrap();
        // root ignores permission bits; sysfs refuses new folders even to root (EPERM).
        let target = if unsafe { libc::geteuid() } == 0 {
            PathBuf::from("/sys/sheared-test-cache")
        } else {
            locked.join("cache")
        };
        let error = Store::open(&target).unwrap_err();
        assert!(matches!(error, StoreError::NotWritable { .. }), "{error}");
        let message = error.to_string();
        assert!(
            message.contains("sheared-test-cache") || message.contains("locked"),
            "{message}"
        );
        assert!(message.contains("--cache"), "{message}");
        fs::set_permissions(&locked, fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn handles_can_be_shared_between_runner_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<Store>();
        shareable::<LeaseGuard>();
        shareable::<Manifest>();
        fn sendable<T: Send>() {}
        sendable::<Attempt>();
    }

    #[test]
    fn log_tail_returns_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        fs::write(&path, "a\nb\nc\nd\n").unwrap();
        assert_eq!(log_tail(&path, 2), "c\nd");
        assert_eq!(log_tail(&dir.path().join("missing"), 2), "");
    }
}

/// Helpers for the store's unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    pub fn key(name: &str) -> Digest {
        Digest::of_bytes(name.as_bytes())
    }

    pub fn record(recipe: &str, stage: &str) -> CommitRecord {
        CommitRecord {
            stage: stage.into(),
            recipe: recipe.into(),
            kind: "command".into(),
            version: 1,
            preimage: serde_json::json!({ "kind": "command", "stage": stage }),
            started_at: std::time::SystemTime::now(),
            seconds: 0.5,
        }
    }

    /// Begin an attempt of `key`, write `files` (relative path, bytes) and commit it.
    pub fn commit_files(
        store: &Store,
        key: &Digest,
        recipe: &str,
        stage: &str,
        files: &[(&str, &[u8])],
    ) -> Manifest {
        let attempt = store.begin(key).unwrap();
        write_files(&attempt.out_dir, files);
        store.commit(&attempt, record(recipe, stage)).unwrap()
    }

    pub fn write_files(dir: &Path, files: &[(&str, &[u8])]) {
        for (path, bytes) in files {
            let path = dir.join(path);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, bytes).unwrap();
        }
    }

    pub fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("cache")).unwrap();
        (dir, store)
    }
}

/// Full-disk behaviour on a real small filesystem. Needs one (root: `mount -t tmpfs -o size=2m
/// tmpfs /mnt/small`), hence ignored by default:
/// `SHEARED_TEST_SMALL_FS=/mnt/small cargo test --lib -- --ignored full_disk`.
#[cfg(test)]
mod full_disk_tests {
    use super::testing::{commit_files, key, record, write_files};
    use super::*;

    #[test]
    #[ignore = "needs a small filesystem in SHEARED_TEST_SMALL_FS"]
    fn full_disk_gives_a_clear_error_keeps_committed_entries_and_a_retry_succeeds() {
        let small = PathBuf::from(
            std::env::var("SHEARED_TEST_SMALL_FS").expect("set SHEARED_TEST_SMALL_FS"),
        );
        let capacity = fs2_free_bytes(&small);
        let cache = small.join(format!("cache-{}", fsutil::unique_suffix()));
        let store = Store::open(&cache).unwrap();
        let kept = commit_files(
            &store,
            &key("kept"),
            "r",
            "a",
            &[("small", b"committed before the disk filled")],
        );

        // A stage output that links a file from another disk: committing it must copy it in.
        let outside = tempfile::tempdir().unwrap();
        let big = outside.path().join("big.bin");
        fs::write(&big, vec![1u8; capacity as usize + (1 << 20)]).unwrap();
        let attempt = store.begin(&key("big")).unwrap();
        write_files(&attempt.out_dir, &[("note", b"n")]);
        std::os::unix::fs::symlink(&big, attempt.out_dir.join("big.bin")).unwrap();
        let error = store.commit(&attempt, record("r", "b")).unwrap_err();
        assert!(matches!(error, StoreError::DiskFull { .. }), "{error}");
        let message = error.to_string();
        assert!(
            message.contains("no space left") && message.contains(cache.to_str().unwrap()),
            "{message}"
        );
        assert_eq!(store.lookup(&key("big")).unwrap(), None);
        assert_eq!(
            store.lookup(&kept.key).unwrap(),
            Some(kept.clone()),
            "committed entry intact"
        );
        assert!(store.verify().unwrap().is_clean());
        assert_eq!(
            fs::read_dir(cache.join("tmp")).unwrap().count(),
            0,
            "no partial copy left"
        );

        // After freeing space (here: the stage output shrinks), the same attempt commits.
        fs::remove_file(attempt.out_dir.join("big.bin")).unwrap();
        store.commit(&attempt, record("r", "b")).unwrap();

        // Opening a new cache on a full disk says so.
        let filler = small.join(format!("filler-{}", fsutil::unique_suffix()));
        let _ = fs::write(&filler, vec![0u8; capacity as usize + (1 << 20)]);
        let error = Store::open(small.join("another-cache")).unwrap_err();
        assert!(matches!(error, StoreError::DiskFull { .. }), "{error}");
        let _ = fs::remove_file(&filler);
        let _ = fsutil::remove_tree(&small.join("another-cache"));
        fsutil::remove_tree(&cache).unwrap();
    }

    fn fs2_free_bytes(path: &Path) -> u64 {
        let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::statvfs(c_path.as_ptr(), &mut stats) }, 0);
        stats.f_bavail as u64 * stats.f_frsize as u64
    }
}
