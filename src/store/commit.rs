//! Attempts and the commit protocol: begin an attempt, hash and move its files into `objects/`,
//! write the manifest last; lookups of committed entries.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::SystemTime;

use rayon::prelude::*;

use super::digest::{Digest, FileEntry, HashingReader, folder_digest};
use super::entry::{Attempt, EntryStatus, MANIFEST_FORMAT, Manifest};
use super::failures::push_history;
use super::fsutil::{self, at, io_error, now_unix_ms, rfc3339, unique_suffix};
use super::index::{self, FAILURES, MANIFESTS};
use super::{Store, StoreError};

/// Who made an attempt folder, parsed from its name `<key>.<host>.<pid>-<nanos>-<n>`.
pub(super) struct AttemptOwner {
    pub key: Digest,
    pub host: String,
    pub pid: u32,
}

impl AttemptOwner {
    pub fn parse(name: &str) -> Option<AttemptOwner> {
        let key = name.get(..64)?.parse().ok()?;
        let rest = name.get(65..)?;
        let (host, suffix) = rest.rsplit_once('.')?;
        let pid = suffix.split('-').next()?.parse().ok()?;
        Some(AttemptOwner {
            key,
            host: host.to_string(),
            pid,
        })
    }
}

/// What the runner knows about a finished attempt, recorded in its manifest.
#[derive(Debug, Clone)]
pub struct CommitRecord {
    /// Stage name in the recipe (`prune`).
    pub stage: String,
    /// Recipe name (`name = ..` of the recipe that ran it).
    pub recipe: String,
    pub kind: String,
    /// The stage kind's implementation version.
    pub version: u32,
    /// The full cache-key preimage (the runner diffs these to explain staleness).
    pub preimage: serde_json::Value,
    pub started_at: SystemTime,
    pub seconds: f64,
}

/// A file of an attempt after hashing, before it becomes an object.
struct HashedFile {
    walked: fsutil::WalkedFile,
    digest: Digest,
}

pub(super) fn all_manifests(store: &Store, db: &sled::Db) -> Result<Vec<Manifest>, StoreError> {
    let manifests = index::tree(&store.index, db, MANIFESTS)?;
    let mut out = Vec::new();
    for item in manifests.iter() {
        let (_, bytes) = item.map_err(|error| store.index.sled_error(error))?;
        match serde_json::from_slice::<Manifest>(&bytes) {
            Ok(manifest) if manifest.format == MANIFEST_FORMAT => out.push(manifest),
            Ok(_) => {}
            Err(error) => tracing::warn!("ignoring an unreadable manifest in the index: {error}"),
        }
    }
    Ok(out)
}

fn read_metrics(out_dir: &Path) -> Option<serde_json::Value> {
    let path = out_dir.join("metrics.json");
    let bytes = fs::read(&path).ok()?;
    match serde_json::from_slice(&bytes) {
        Ok(value) => Some(value),
        Err(error) => {
            tracing::warn!(
                "{} is not valid JSON ({error}); committing it as a file but recording no metrics",
                path.display()
            );
            None
        }
    }
}

pub(super) fn is_cross_device_or_link_limit(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::EXDEV) | Some(libc::EMLINK))
}

impl Store {
    /// Start an attempt of `key`: a fresh empty `out_dir`, the key's persistent `scratch_dir`
    /// (created if missing, kept as is otherwise) and a new log path.
    pub fn begin(&self, key: &Digest) -> Result<Attempt, StoreError> {
        self.remove_dead_attempts(key);
        let scratch_dir = self.scratch_path(key);
        fs::create_dir_all(&scratch_dir).map_err(at("creating", &scratch_dir))?;
        let out_dir = self.dir("attempts").join(format!(
            "{}.{}.{}",
            key.to_hex(),
            self.host,
            unique_suffix()
        ));
        fs::create_dir(&out_dir).map_err(at("creating", &out_dir))?;
        let logs = self.logs_path(key);
        fs::create_dir_all(&logs).map_err(at("creating", &logs))?;
        let started_at = SystemTime::now();
        let log_path = logs.join(format!(
            "{}-{}.log",
            rfc3339(started_at),
            std::process::id()
        ));
        Ok(Attempt {
            key: *key,
            out_dir,
            scratch_dir,
            log_path,
            started_at,
        })
    }

    /// Remove earlier attempt folders of `key` left by dead processes of this host (a killed
    /// stage may have left gigabytes there; the next attempt would need that space again).
    fn remove_dead_attempts(&self, key: &Digest) {
        let Ok(entries) = fs::read_dir(self.dir("attempts")) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(owner) = AttemptOwner::parse(&name) else {
                continue;
            };
            if owner.key == *key
                && owner.host == self.host
                && !super::lease::pid_alive(owner.pid)
                && let Err(error) = fsutil::remove_tree(&entry.path())
            {
                tracing::warn!("could not remove an abandoned attempt: {error}");
            }
        }
    }

    /// Commit an attempt: hash every file of `out_dir`, put the files into `objects/` (dedup, read
    /// only, fsynced), then write the manifest last. Removes the attempt folder and the key's
    /// scratch folder afterwards. On error nothing is committed and `out_dir` is left intact, so
    /// the commit can be retried after fixing the cause (e.g. freeing disk space).
    pub fn commit(&self, attempt: &Attempt, record: CommitRecord) -> Result<Manifest, StoreError> {
        self.commit_until(attempt, record, false)
    }

    /// `stop_before_manifest` simulates a crash between the object moves and the manifest write.
    pub(super) fn commit_until(
        &self,
        attempt: &Attempt,
        record: CommitRecord,
        stop_before_manifest: bool,
    ) -> Result<Manifest, StoreError> {
        let walk = fsutil::walk(&attempt.out_dir)?;
        let metrics = read_metrics(&attempt.out_dir);
        let hashed: Vec<HashedFile> = walk
            .files
            .into_par_iter()
            .map(|walked| {
                let digest = Digest::of_file(&walked.path).map_err(at("hashing", &walked.path))?;
                Ok(HashedFile { walked, digest })
            })
            .collect::<Result<_, StoreError>>()?;
        let files: Vec<FileEntry> = hashed
            .iter()
            .map(|file| FileEntry {
                path: file.walked.relative.clone(),
                digest: file.digest,
                bytes: file.walked.metadata.len(),
            })
            .collect();

        // Every object this commit references gets a fresh ctime (link, rename or chmod), and gc
        // spares objects younger than its grace period: no lock is needed against gc.
        let mut touched_dirs = BTreeSet::new();
        for file in &hashed {
            let object = self.object_path(&file.digest);
            if self.put_object(file, &object)? {
                touched_dirs.insert(object.parent().map(Path::to_path_buf).unwrap_or_default());
            }
        }
        for dir in &touched_dirs {
            fsutil::sync_dir(dir)?;
        }
        fsutil::sync_dir(&self.dir("objects"))?;
        if stop_before_manifest {
            return Err(StoreError::Io {
                action: "simulated crash before writing the manifest of",
                path: attempt.out_dir.clone(),
                source: io::Error::other("simulated crash"),
            });
        }

        let now = SystemTime::now();
        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            key: attempt.key,
            status: EntryStatus::Committed,
            stage: record.stage,
            recipe: record.recipe,
            kind: record.kind,
            version: record.version,
            preimage: record.preimage,
            output_digest: folder_digest(&files),
            bytes: files.iter().map(|file| file.bytes).sum(),
            files,
            empty_dirs: walk.empty_dirs,
            metrics,
            started_at: rfc3339(record.started_at),
            committed_at: rfc3339(now),
            committed_unix_ms: now_unix_ms(),
            seconds: record.seconds,
            host: self.host.clone(),
            log_path: attempt.log_path.exists().then(|| attempt.log_path.clone()),
        };
        let key_bytes = attempt.key.as_bytes().to_vec();
        // The copy first: every index record then has one (its objects are already in place, so a
        // copy whose index record never got written is a complete entry too).
        self.write_manifest_copy(&manifest)?;
        self.index
            .with(|db| {
                let manifests = index::tree(&self.index, db, MANIFESTS)?;
                index::put_json(&self.index, &manifests, &key_bytes, &manifest)?;
                // The manifest insert above is the commit point; the rest is bookkeeping.
                let failures = index::tree(&self.index, db, FAILURES)?;
                failures
                    .remove(&key_bytes)
                    .map_err(|error| self.index.sled_error(error))?;
                push_history(self, db, &manifest.recipe, &manifest.stage, &attempt.key)
            })
            .map_err(|error| StoreError::NotIndexed {
                copy: self.manifest_copy_path(&attempt.key),
                source: Box::new(error),
            })?;

        for dir in [&attempt.out_dir, &attempt.scratch_dir] {
            if let Err(error) = fsutil::remove_tree(dir) {
                tracing::warn!(
                    "committed stage {} but could not clean up: {error}",
                    manifest.stage
                );
            }
        }
        Ok(manifest)
    }

    /// Make `file` the object at `object`. Returns whether a new object was written.
    fn put_object(&self, file: &HashedFile, object: &Path) -> Result<bool, StoreError> {
        let bytes = file.walked.metadata.len();
        match fs::symlink_metadata(object) {
            Ok(existing) if existing.is_file() && existing.len() == bytes => {
                // chmod updates the ctime, which protects the object from a concurrent gc.
                fs::set_permissions(object, fs::Permissions::from_mode(0o444))
                    .map_err(at("refreshing", object))?;
                return Ok(false);
            }
            Ok(_) => {
                tracing::warn!(
                    "replacing damaged object {} (wrong size or type)",
                    object.display()
                );
                let _ = fs::remove_file(object);
            }
            Err(_) => {}
        }
        let parent = object.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(parent).map_err(at("creating", parent))?;
        let source = &file.walked.path;
        // A file with other hard links may be a user's file a stage linked in: linking it into the
        // objects would make it read-only and let later edits corrupt the object. Copy those.
        if !file.walked.is_symlink && file.walked.metadata.nlink() == 1 {
            fs::set_permissions(source, fs::Permissions::from_mode(0o444))
                .map_err(at("making read-only", source))?;
            match fs::hard_link(source, object) {
                Ok(()) => {
                    File::open(object)
                        .and_then(|f| f.sync_all())
                        .map_err(at("syncing", object))?;
                    return Ok(true);
                }
                Err(error) if error.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
                Err(error) if is_cross_device_or_link_limit(&error) => {}
                Err(error) => return Err(io_error("linking into the objects", object, error)),
            }
        }
        self.copy_object(source, &file.digest, object)?;
        Ok(true)
    }

    /// Copy `source` into `object` through `tmp/`, checking the bytes still hash to `digest`.
    fn copy_object(&self, source: &Path, digest: &Digest, object: &Path) -> Result<(), StoreError> {
        let temporary = self
            .dir("tmp")
            .join(format!("{}.{}", digest.to_hex(), unique_suffix()));
        let result = (|| {
            let mut reader = HashingReader::new(File::open(source).map_err(at("reading", source))?);
            let mut writer = File::create(&temporary).map_err(at("creating", &temporary))?;
            // 1 MiB reads: blake3 hashes large chunks with wide SIMD (io::copy would use 8 KiB).
            let mut buffer = vec![0u8; 1 << 20];
            loop {
                let count = match reader.read(&mut buffer) {
                    Ok(0) => break,
                    Ok(count) => count,
                    Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                    Err(error) => return Err(io_error("reading", source, error)),
                };
                writer
                    .write_all(&buffer[..count])
                    .map_err(at("copying into", &temporary))?;
            }
            if reader.digest() != *digest {
                return Err(StoreError::InvalidOutput {
                    path: source.to_path_buf(),
                    message: "the file changed while it was being committed; make sure nothing writes to it after the stage ends".into(),
                });
            }
            writer.sync_all().map_err(at("syncing", &temporary))?;
            fs::set_permissions(&temporary, fs::Permissions::from_mode(0o444))
                .map_err(at("making read-only", &temporary))?;
            fs::rename(&temporary, object).map_err(at("renaming into", object))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&temporary);
        }
        result
    }

    /// The committed, complete entry of `key`. If an object it references is missing or has the
    /// wrong size, the manifest is dropped (with a warning) and `None` is returned, so the stage
    /// recomputes instead of handing a broken folder downstream. A manifest the index lost (a
    /// damaged or deleted index) is restored from its copy when the copy's objects are intact.
    pub fn lookup(&self, key: &Digest) -> Result<Option<Manifest>, StoreError> {
        let manifest = match self.manifest(key)? {
            Some(manifest) => manifest,
            None => match self.read_manifest_copy(key) {
                Some(copy) if self.objects_intact(&copy) => {
                    tracing::warn!(
                        "the cache index had no record of stage `{}` ({}); restored it from {}",
                        copy.stage,
                        key.short(),
                        self.manifest_copy_path(key).display()
                    );
                    self.index.with(|db| {
                        let manifests = index::tree(&self.index, db, MANIFESTS)?;
                        index::put_json(&self.index, &manifests, key.as_bytes(), &copy)
                    })?;
                    copy
                }
                _ => return Ok(None),
            },
        };
        if let Some(entry) = self.missing_object(&manifest) {
            tracing::warn!(
                "cache entry of stage `{}` ({}) lost object {} (file `{}`); dropping it so the stage runs again",
                manifest.stage,
                key.short(),
                entry.digest.short(),
                entry.path
            );
            self.drop_manifests(&[manifest])?;
            return Ok(None);
        }
        Ok(Some(manifest))
    }

    /// Whether every object `manifest` references exists with its size (what a lookup checks).
    pub(super) fn objects_intact(&self, manifest: &Manifest) -> bool {
        self.missing_object(manifest).is_none()
    }

    /// The first file of `manifest` whose object is missing or has another size.
    fn missing_object<'m>(&self, manifest: &'m Manifest) -> Option<&'m FileEntry> {
        manifest.files.iter().find(|entry| {
            let object = self.object_path(&entry.digest);
            !matches!(fs::metadata(&object), Ok(metadata) if metadata.is_file() && metadata.len() == entry.bytes)
        })
    }

    /// Writes `manifests/<key>.json` (atomically).
    pub(super) fn write_manifest_copy(&self, manifest: &Manifest) -> Result<(), StoreError> {
        let path = self.manifest_copy_path(&manifest.key);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(at("creating", parent))?;
        }
        let bytes = serde_json::to_vec_pretty(manifest).map_err(|error| StoreError::Index {
            path: path.clone(),
            message: format!("encoding a manifest: {error}"),
        })?;
        fsutil::write_atomic(&path, &bytes)
    }

    /// The copy of `key`'s manifest, if it exists, reads as a manifest of this format and agrees
    /// with itself: its file list hashes to its `output_digest` and sums to its `bytes`. A copy
    /// is a plain file with no checksum of its own, so a flipped byte in a path, a digest or a size
    /// that still parses would otherwise hand a stage a wrong folder when the index is rebuilt.
    pub(super) fn read_manifest_copy(&self, key: &Digest) -> Option<Manifest> {
        let bytes = fs::read(self.manifest_copy_path(key)).ok()?;
        serde_json::from_slice::<Manifest>(&bytes)
            .ok()
            .filter(|manifest| {
                manifest.format == MANIFEST_FORMAT
                    && manifest.key == *key
                    && folder_digest(&manifest.files) == manifest.output_digest
                    && manifest.files.iter().map(|file| file.bytes).sum::<u64>() == manifest.bytes
            })
    }

    /// Removes the copy of `manifest` if it is that version (a newer commit's copy stays).
    pub(super) fn remove_manifest_copy(&self, manifest: &Manifest) {
        if self
            .read_manifest_copy(&manifest.key)
            .is_none_or(|copy| copy.committed_unix_ms == manifest.committed_unix_ms)
        {
            let path = self.manifest_copy_path(&manifest.key);
            if let Err(error) = fs::remove_file(&path)
                && error.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!("could not remove {}: {error}", path.display());
            }
        }
    }

    /// The manifest of `key` as stored, without checking its objects (for reports and diffs).
    pub fn manifest(&self, key: &Digest) -> Result<Option<Manifest>, StoreError> {
        let manifest: Option<Manifest> = self.index.with(|db| {
            let manifests = index::tree(&self.index, db, MANIFESTS)?;
            index::get_json(&self.index, &manifests, key.as_bytes())
        })?;
        Ok(manifest.filter(|manifest| manifest.format == MANIFEST_FORMAT))
    }

    /// Every committed manifest (unchecked), in key order.
    pub fn manifests(&self) -> Result<Vec<Manifest>, StoreError> {
        self.index.with(|db| all_manifests(self, db))
    }

    /// Remove manifests (each only if it is still the stored version) and their materialised
    /// outputs. Objects stay until gc.
    pub(super) fn drop_manifests(&self, dropped: &[Manifest]) -> Result<(), StoreError> {
        self.index.with(|db| {
            let manifests = index::tree(&self.index, db, MANIFESTS)?;
            for manifest in dropped {
                let current: Option<Manifest> =
                    index::get_json(&self.index, &manifests, manifest.key.as_bytes())?;
                if current
                    .as_ref()
                    .is_some_and(|current| current.committed_unix_ms == manifest.committed_unix_ms)
                {
                    manifests
                        .remove(manifest.key.as_bytes())
                        .map_err(|error| self.index.sled_error(error))?;
                }
            }
            Ok(())
        })?;
        for manifest in dropped {
            self.remove_manifest_copy(manifest);
            fsutil::remove_tree(&self.outputs_path(&manifest.key))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{commit_files, key, record, store, write_files};
    use super::*;
    use crate::store::FailureInfo;

    #[test]
    fn commit_stores_objects_read_only_and_lookup_returns_the_manifest() {
        let (_dir, store) = store();
        let stage_key = key("a");
        let attempt = store.begin(&stage_key).unwrap();
        assert_eq!(
            fs::read_dir(&attempt.out_dir).unwrap().count(),
            0,
            "out_dir starts empty"
        );
        write_files(&attempt.scratch_dir, &[("checkpoint", b"step 3")]);
        write_files(
            &attempt.out_dir,
            &[
                ("model/weights.bin", b"weights"),
                ("metrics.json", br#"{"loss": 2.5}"#),
            ],
        );
        fs::create_dir_all(attempt.out_dir.join("empty")).unwrap();
        let manifest = store.commit(&attempt, record("r", "train")).unwrap();

        assert_eq!(
            manifest
                .files
                .iter()
                .map(|f| f.path.as_str())
                .collect::<Vec<_>>(),
            ["metrics.json", "model/weights.bin"]
        );
        assert_eq!(manifest.metrics, Some(serde_json::json!({ "loss": 2.5 })));
        assert_eq!(manifest.empty_dirs, ["empty"]);
        assert_eq!(manifest.bytes, 7 + 13);
        assert_eq!(manifest.output_digest, folder_digest(&manifest.files));
        let weights = manifest.file("model/weights.bin").unwrap();
        assert_eq!(weights.digest, Digest::of_bytes(b"weights"));
        let object = store.object_path(&weights.digest);
        assert_eq!(fs::read(&object).unwrap(), b"weights");
        assert_eq!(
            fs::metadata(&object).unwrap().permissions().mode() & 0o222,
            0,
            "objects are read-only"
        );
        assert!(
            !attempt.out_dir.exists() && !attempt.scratch_dir.exists(),
            "attempt and scratch removed"
        );
        assert_eq!(store.lookup(&stage_key).unwrap(), Some(manifest.clone()));
        assert_eq!(store.lookup(&key("other")).unwrap(), None);

        let outputs = store.outputs(&manifest).unwrap();
        assert_eq!(
            fs::read(outputs.join("model/weights.bin")).unwrap(),
            b"weights"
        );
        assert!(outputs.join("empty").is_dir());
        let linked = fs::metadata(outputs.join("model/weights.bin")).unwrap();
        assert_eq!(
            linked.ino(),
            fs::metadata(&object).unwrap().ino(),
            "outputs are hard links"
        );
    }

    #[test]
    fn identical_outputs_share_objects_and_output_digest() {
        let (_dir, store) = store();
        let first = commit_files(&store, &key("1"), "r", "s", &[("a", b"same"), ("b", b"x")]);
        let second = commit_files(&store, &key("2"), "r", "s", &[("a", b"same"), ("b", b"x")]);
        assert_eq!(
            first.output_digest, second.output_digest,
            "early cutoff: same bytes, same digest"
        );
        let third = commit_files(&store, &key("3"), "r", "s", &[("a", b"same"), ("b", b"y")]);
        assert_ne!(first.output_digest, third.output_digest);
        let objects: usize = fs::read_dir(store.root().join("objects"))
            .unwrap()
            .map(|fan| fs::read_dir(fan.unwrap().path()).unwrap().count())
            .sum();
        assert_eq!(objects, 3, "a, x and y stored once each");
    }

    #[test]
    fn crash_between_object_moves_and_manifest_leaves_no_entry_and_a_retry_commits() {
        let (_dir, store) = store();
        let stage_key = key("crash");
        let attempt = store.begin(&stage_key).unwrap();
        write_files(&attempt.out_dir, &[("out.bin", b"result")]);
        write_files(&attempt.scratch_dir, &[("ckpt", b"half")]);
        let error = store
            .commit_until(&attempt, record("r", "s"), true)
            .unwrap_err();
        assert!(error.to_string().contains("simulated crash"));
        assert!(
            store.object_path(&Digest::of_bytes(b"result")).exists(),
            "objects were written"
        );
        assert_eq!(
            store.lookup(&stage_key).unwrap(),
            None,
            "no manifest, no entry"
        );
        assert!(
            attempt.scratch_dir.join("ckpt").exists(),
            "scratch kept for the next attempt"
        );

        // A process restarting after the crash reruns the stage and commits normally.
        let retry = store.begin(&stage_key).unwrap();
        assert_eq!(fs::read(retry.scratch_dir.join("ckpt")).unwrap(), b"half");
        write_files(&retry.out_dir, &[("out.bin", b"result")]);
        let manifest = store.commit(&retry, record("r", "s")).unwrap();
        assert_eq!(store.lookup(&stage_key).unwrap(), Some(manifest));
    }

    #[test]
    fn lookup_drops_an_entry_whose_object_is_missing() {
        let (_dir, store) = store();
        let stage_key = key("k");
        let manifest = commit_files(&store, &stage_key, "r", "s", &[("f", b"data")]);
        store.outputs(&manifest).unwrap();
        fs::remove_file(store.object_path(&Digest::of_bytes(b"data"))).unwrap();
        assert_eq!(store.lookup(&stage_key).unwrap(), None);
        assert_eq!(
            store.manifest(&stage_key).unwrap(),
            None,
            "the manifest was dropped"
        );
        assert!(
            !store.outputs_path(&stage_key).exists(),
            "its outputs were removed"
        );
        assert!(matches!(
            store.outputs(&manifest),
            Err(StoreError::MissingObject { .. })
        ));
    }

    #[test]
    fn outputs_are_rebuilt_when_damaged() {
        let (_dir, store) = store();
        let manifest = commit_files(&store, &key("k"), "r", "s", &[("a", b"1"), ("d/b", b"2")]);
        let folder = store.outputs(&manifest).unwrap();
        fs::remove_file(folder.join("d/b")).unwrap();
        fs::write(folder.join("extra"), b"junk").unwrap();
        let again = store.outputs(&manifest).unwrap();
        assert_eq!(again, folder);
        assert_eq!(fs::read(folder.join("d/b")).unwrap(), b"2");
        assert!(!folder.join("extra").exists());
        fs::remove_dir_all(&folder).unwrap();
        assert_eq!(
            fs::read(store.outputs(&manifest).unwrap().join("a")).unwrap(),
            b"1"
        );
    }

    #[test]
    fn a_file_with_other_hard_links_is_copied_not_captured() {
        let (dir, store) = store();
        let user_file = dir.path().join("user.txt");
        fs::write(&user_file, b"user data").unwrap();
        let attempt = store.begin(&key("k")).unwrap();
        fs::hard_link(&user_file, attempt.out_dir.join("linked.txt")).unwrap();
        std::os::unix::fs::symlink(&user_file, attempt.out_dir.join("symlinked.txt")).unwrap();
        let manifest = store.commit(&attempt, record("r", "s")).unwrap();
        assert_eq!(manifest.files.len(), 2);
        let object = store.object_path(&Digest::of_bytes(b"user data"));
        assert_ne!(
            fs::metadata(&object).unwrap().ino(),
            fs::metadata(&user_file).unwrap().ino()
        );
        assert_ne!(
            fs::metadata(&user_file).unwrap().permissions().mode() & 0o200,
            0,
            "user file still writable"
        );
    }

    #[test]
    fn failures_are_recorded_counted_and_cleared_by_commit() {
        let (_dir, store) = store();
        let stage_key = key("k");
        let info = FailureInfo {
            stage: "s".into(),
            recipe: "r".into(),
            error: "exit status 1".into(),
        };
        let attempt = store.begin(&stage_key).unwrap();
        write_files(&attempt.scratch_dir, &[("ckpt", b"1")]);
        let first = store.fail(&attempt, info.clone()).unwrap();
        assert_eq!(first.failures, 1);
        assert!(!attempt.out_dir.exists());
        assert!(
            attempt.scratch_dir.join("ckpt").exists(),
            "scratch survives failure"
        );
        let second = store.fail(&store.begin(&stage_key).unwrap(), info).unwrap();
        assert_eq!(second.failures, 2);
        assert_eq!(
            store.failure(&stage_key).unwrap().unwrap().error,
            "exit status 1"
        );
        commit_files(&store, &stage_key, "r", "s", &[("f", b"ok")]);
        assert_eq!(store.failure(&stage_key).unwrap(), None);
    }

    #[test]
    fn history_tracks_the_last_committed_run_per_recipe_stage() {
        let (_dir, store) = store();
        assert_eq!(store.last_committed("r", "s").unwrap(), None);
        let old = commit_files(&store, &key("old"), "r", "s", &[("f", b"1")]);
        let new = commit_files(&store, &key("new"), "r", "s", &[("f", b"2")]);
        assert_eq!(
            store.last_committed("r", "s").unwrap().unwrap().key,
            new.key
        );
        // Switching back to the old config is a cache hit that the runner records.
        store.record_use("r", "s", &old.key).unwrap();
        assert_eq!(
            store.last_committed("r", "s").unwrap().unwrap().key,
            old.key
        );
        store.record_use("other-recipe", "s", &new.key).unwrap();
        let keys: Vec<_> = store
            .history("r", "s")
            .unwrap()
            .into_iter()
            .map(|entry| entry.key)
            .collect();
        assert_eq!(keys, [new.key, old.key]);
        let all = store.all_history().unwrap();
        assert_eq!(all.len(), 2);
        assert!(
            all.iter()
                .any(|history| history.recipe == "other-recipe" && history.stage == "s")
        );
    }

    #[test]
    fn invalid_metrics_json_is_committed_without_metrics() {
        let (_dir, store) = store();
        let manifest = commit_files(
            &store,
            &key("k"),
            "r",
            "s",
            &[("metrics.json", b"{not json")],
        );
        assert_eq!(manifest.metrics, None);
        assert_eq!(manifest.files.len(), 1);
    }

    #[test]
    fn special_files_in_outputs_are_rejected_and_nothing_is_committed() {
        let (_dir, store) = store();
        let attempt = store.begin(&key("k")).unwrap();
        write_files(&attempt.out_dir, &[("good", b"1")]);
        let fifo = attempt.out_dir.join("pipe");
        let c_path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o644) }, 0);
        let error = store.commit(&attempt, record("r", "s")).unwrap_err();
        assert!(
            error.to_string().contains("pipe") && error.to_string().contains("FIFO"),
            "{error}"
        );
        assert_eq!(store.lookup(&key("k")).unwrap(), None);
        assert!(
            attempt.out_dir.join("good").exists(),
            "outputs left for a retry"
        );
    }

    #[test]
    fn begin_removes_attempts_of_dead_processes_of_the_same_key() {
        let (_dir, store) = store();
        let stage_key = key("k");
        let attempts = store.root().join("attempts");
        let dead = attempts.join(format!(
            "{}.{}.999999999-1-1",
            stage_key.to_hex(),
            store.host()
        ));
        let other_key = attempts.join(format!(
            "{}.{}.999999999-1-1",
            key("other").to_hex(),
            store.host()
        ));
        let other_host = attempts.join(format!(
            "{}.elsewhere.example.999999999-1-1",
            stage_key.to_hex()
        ));
        for dir in [&dead, &other_key, &other_host] {
            write_files(dir, &[("partial", b"left by a killed stage")]);
        }
        let live = store.begin(&stage_key).unwrap();
        assert!(!dead.exists(), "dead attempt of this key removed");
        assert!(
            other_key.exists() && other_host.exists(),
            "other keys and hosts untouched"
        );
        store.begin(&stage_key).unwrap();
        assert!(
            live.out_dir.exists(),
            "attempts of live processes untouched"
        );
        let owner =
            AttemptOwner::parse(&other_host.file_name().unwrap().to_string_lossy()).unwrap();
        assert_eq!(
            (owner.key, owner.host.as_str(), owner.pid),
            (stage_key, "elsewhere.example", 999999999)
        );
    }

    #[test]
    fn recommitting_a_key_with_other_bytes_of_the_same_size_refreshes_its_outputs() {
        let (_dir, store) = store();
        let first = commit_files(&store, &key("k"), "r", "s", &[("model", b"AAAA")]);
        let folder = store.outputs(&first).unwrap();
        // `--force` reruns the same key; a nondeterministic stage writes other bytes.
        let second = commit_files(&store, &key("k"), "r", "s", &[("model", b"BBBB")]);
        assert_eq!(store.outputs(&second).unwrap(), folder);
        assert_eq!(fs::read(folder.join("model")).unwrap(), b"BBBB");
    }
}
