//! Garbage collection and verification.
//!
//! gc keeps: the live keys the caller names (every stage of the recipes it knows), every key with
//! a live lease, and with `keep_last = Some(n)` the newest `n` committed keys of every (recipe,
//! stage) history. Everything else goes: manifests, outputs, scratch, logs, failure records,
//! attempts, and objects that no remaining manifest references.
//!
//! gc takes no lock against commits. Instead it spares every object, temporary file and
//! half-built output folder changed within the store's grace period (ctime or mtime; 15 minutes by
//! default): a commit refreshes the ctime of each object it will reference (link, rename or chmod)
//! just before writing its manifest, so gc cannot delete an object between a commit's dedup check
//! and its manifest. Orphans of crashed commits are collected by the first gc after the grace
//! period. `gc.lock` only keeps two gc/verify runs apart.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::commit::{AttemptOwner, all_manifests};
use super::digest::Digest;
use super::entry::Manifest;
use super::failures::{all_history, history_key_of};
use super::fsutil::{self, at};
use super::index::{self, FAILURES, HISTORY, MANIFESTS};
use super::lease::pid_alive;
use super::{Store, StoreError};

/// What gc removed (or would remove with `dry_run`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GcReport {
    pub dry_run: bool,
    pub manifests: usize,
    pub objects: usize,
    /// Bytes reclaimed: objects, scratch and attempt folders, copied outputs.
    pub bytes: u64,
    pub scratch_dirs: usize,
    pub attempt_dirs: usize,
    pub output_dirs: usize,
    pub stat_cache_entries: usize,
    /// Keys kept because a live lease holds them.
    pub leased_keys: usize,
}

/// A manifest dropped by verify (or lookup) because its objects are damaged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DroppedManifest {
    pub key: Digest,
    pub stage: String,
    pub recipe: String,
}

/// What verify found.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VerifyReport {
    pub objects_checked: usize,
    pub bytes_checked: u64,
    /// Objects whose bytes do not hash to their name (deleted).
    pub corrupt: Vec<Digest>,
    /// Objects a manifest references that do not exist.
    pub missing: Vec<Digest>,
    /// Manifests dropped because they reference corrupt or missing objects (those stages rerun).
    pub dropped: Vec<DroppedManifest>,
    /// Index records that did not decode (`tree/key`), removed.
    #[serde(default)]
    pub unreadable_records: Vec<String>,
    /// Of those, manifests put back from their copies (`manifests/<key>.json`): no rerun.
    #[serde(default)]
    pub restored_records: usize,
    /// Manifest copies written for index records that had none (caches from before the copies).
    #[serde(default)]
    pub copies_written: usize,
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.corrupt.is_empty() && self.missing.is_empty() && self.unreadable_records.is_empty()
    }
}

/// What `sheared verify --rebuild-index` did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RebuildReport {
    /// Where the old index folder went (kept for inspection; delete it when satisfied).
    pub moved_to: Option<PathBuf>,
    /// Manifests restored from their copies (history rebuilt from them too).
    pub restored: usize,
    /// Copies that did not read as a manifest (removed).
    pub unreadable: Vec<PathBuf>,
    /// Copies whose objects are missing or have the wrong size (removed: those stages rerun).
    pub incomplete: Vec<DroppedManifest>,
}

impl Store {
    /// Remove what is not needed (see module docs). `live_keys`: the stage keys of every recipe
    /// to keep (planned keys, committed or not: their scratch is kept too).
    pub fn gc(
        &self,
        live_keys: &BTreeSet<Digest>,
        keep_last: Option<usize>,
        dry_run: bool,
    ) -> Result<GcReport, StoreError> {
        let _gc_guard = self.gc_lock()?;
        let mut report = GcReport {
            dry_run,
            ..GcReport::default()
        };
        let leased: BTreeSet<Digest> = self.live_leases(dry_run)?.into_iter().collect();
        report.leased_keys = leased.len();

        let (manifests, histories) = self
            .index
            .with(|db| Ok((all_manifests(self, db)?, all_history(self, db)?)))?;
        let committed: BTreeSet<Digest> = manifests.iter().map(|manifest| manifest.key).collect();
        let mut keep: BTreeSet<Digest> = live_keys.union(&leased).copied().collect();
        if let Some(count) = keep_last {
            for history in &histories {
                let newest = history
                    .entries
                    .iter()
                    .rev()
                    .filter(|entry| committed.contains(&entry.key))
                    .take(count);
                keep.extend(newest.map(|entry| entry.key));
            }
        }
        let doomed: Vec<&Manifest> = manifests
            .iter()
            .filter(|manifest| !keep.contains(&manifest.key))
            .collect();
        report.manifests = doomed.len();
        let remaining: BTreeSet<Digest> = committed
            .iter()
            .filter(|key| keep.contains(key))
            .copied()
            .collect();

        if !dry_run {
            self.index.with(|db| {
                let manifest_tree = index::tree(&self.index, db, MANIFESTS)?;
                let failures = index::tree(&self.index, db, FAILURES)?;
                let history_tree = index::tree(&self.index, db, HISTORY)?;
                for manifest in &doomed {
                    manifest_tree
                        .remove(manifest.key.as_bytes())
                        .map_err(|error| self.index.sled_error(error))?;
                }
                for item in failures.iter() {
                    let (key, _) = item.map_err(|error| self.index.sled_error(error))?;
                    let live = <[u8; 32]>::try_from(key.as_ref())
                        .is_ok_and(|bytes| keep.contains(&Digest::from_bytes(bytes)));
                    if !live {
                        failures
                            .remove(key)
                            .map_err(|error| self.index.sled_error(error))?;
                    }
                }
                for history in &histories {
                    let entries: Vec<_> = history
                        .entries
                        .iter()
                        .filter(|entry| remaining.contains(&entry.key))
                        .cloned()
                        .collect();
                    let key = history_key_of(&history.recipe, &history.stage);
                    if entries.is_empty() {
                        history_tree
                            .remove(key)
                            .map_err(|error| self.index.sled_error(error))?;
                    } else if entries.len() != history.entries.len() {
                        index::put_json(&self.index, &history_tree, &key, &entries)?;
                    }
                }
                Ok(())
            })?;
            for manifest in &doomed {
                self.remove_manifest_copy(manifest);
            }
            // Copies of keys nothing keeps whose index record never existed (a commit killed
            // between the two writes): their objects are collected below.
            for (key, path) in self.manifest_copies()? {
                if !keep.contains(&key) && !committed.contains(&key) {
                    fs::remove_file(&path).map_err(at("removing", &path))?;
                }
            }
        }

        // Objects no remaining manifest references.
        let referenced: BTreeSet<Digest> = manifests
            .iter()
            .filter(|manifest| remaining.contains(&manifest.key))
            .flat_map(|manifest| manifest.files.iter().map(|entry| entry.digest))
            .collect();
        for (digest, path, bytes) in self.list_objects()? {
            if digest.is_some_and(|digest| referenced.contains(&digest))
                || self.recently_changed(&path)
            {
                continue;
            }
            report.objects += 1;
            report.bytes += bytes;
            if !dry_run {
                fs::remove_file(&path).map_err(at("removing", &path))?;
            }
        }
        // Copies in progress are recent; older temporary files belong to dead processes.
        report.bytes += self
            .clear_children(&self.dir("tmp"), dry_run, |_, path| {
                self.recently_changed(path)
            })?
            .1;

        // Per-key folders.
        let key_of = |name: &str| name.get(..64).and_then(|hex| hex.parse::<Digest>().ok());
        let (count, _) = self.clear_children(&self.dir("outputs"), dry_run, |name, path| {
            // `.tmp-`/`.trash-` folders may be in use by another process if they are recent.
            key_of(name).is_some_and(|key| remaining.contains(&key))
                || (name.starts_with('.') && self.recently_changed(path))
        })?;
        report.output_dirs = count;
        // Scratch is kept for planned keys that have not committed yet (resume) and leased keys.
        let (count, bytes) = self.clear_children(&self.dir("scratch"), dry_run, |name, _| {
            key_of(name).is_some_and(|key| {
                (keep.contains(&key) && !remaining.contains(&key)) || leased.contains(&key)
            })
        })?;
        report.scratch_dirs = count;
        report.bytes += bytes;
        // Attempts: kept while their key is leased or their process lives (this host), or while
        // recent (another host's process cannot be checked).
        let (count, bytes) =
            self.clear_children(&self.dir("attempts"), dry_run, |name, path| {
                match AttemptOwner::parse(name) {
                    Some(owner) => {
                        leased.contains(&owner.key)
                            || if owner.host == self.host {
                                pid_alive(owner.pid)
                            } else {
                                self.recently_changed(path)
                            }
                    }
                    None => self.recently_changed(path),
                }
            })?;
        report.attempt_dirs = count;
        report.bytes += bytes;
        self.clear_children(&self.dir("logs"), dry_run, |name, _| {
            key_of(name).is_some_and(|key| remaining.contains(&key) || keep.contains(&key))
        })?;
        report.stat_cache_entries = self.prune_stat_cache(dry_run)?;
        Ok(report)
    }

    /// Every file under `objects/`: its digest if the name is one, path, size.
    fn list_objects(&self) -> Result<Vec<(Option<Digest>, PathBuf, u64)>, StoreError> {
        let objects = self.dir("objects");
        let mut out = Vec::new();
        for fan in fs::read_dir(&objects)
            .map_err(at("listing", &objects))?
            .flatten()
        {
            let fan_path = fan.path();
            if !fan_path.is_dir() {
                continue;
            }
            for entry in fs::read_dir(&fan_path)
                .map_err(at("listing", &fan_path))?
                .flatten()
            {
                let path = entry.path();
                let bytes = entry.metadata().map(|metadata| metadata.len()).unwrap_or(0);
                let digest = entry
                    .file_name()
                    .to_str()
                    .and_then(|name| name.parse::<Digest>().ok());
                out.push((digest, path, bytes));
            }
        }
        Ok(out)
    }

    /// Whether `path` changed (ctime or mtime) within the grace period; unreadable counts as recent.
    fn recently_changed(&self, path: &Path) -> bool {
        use std::os::unix::fs::MetadataExt;
        let Ok(metadata) = fs::symlink_metadata(path) else {
            return true;
        };
        let changed_s = metadata.ctime().max(metadata.mtime());
        let now_s = (fsutil::now_unix_ms() / 1000) as i64;
        now_s - changed_s < self.gc_grace.as_secs() as i64
    }

    /// Remove the children of `dir` that `keep(name, path)` rejects. Returns (count, bytes).
    fn clear_children(
        &self,
        dir: &Path,
        dry_run: bool,
        keep: impl Fn(&str, &Path) -> bool,
    ) -> Result<(usize, u64), StoreError> {
        let mut count = 0;
        let mut bytes = 0;
        for entry in fs::read_dir(dir).map_err(at("listing", dir))?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if keep(&name, &path) {
                continue;
            }
            count += 1;
            bytes += fsutil::tree_bytes(&path);
            if !dry_run {
                if path.is_dir() {
                    fsutil::remove_tree(&path)?;
                } else {
                    fs::remove_file(&path).map_err(at("removing", &path))?;
                }
            }
        }
        Ok((count, bytes))
    }

    /// Rehash every object; delete corrupt ones and drop every manifest that references a corrupt
    /// or missing object, so those stages rerun.
    pub fn verify(&self) -> Result<VerifyReport, StoreError> {
        let (unreadable_records, restored_records) = self.repair_records()?;
        let manifests = self.manifests()?;
        let mut copies_written = 0;
        for manifest in &manifests {
            if self.read_manifest_copy(&manifest.key).is_none() {
                self.write_manifest_copy(manifest)?;
                copies_written += 1;
            }
        }
        let objects = self.list_objects()?;
        // Hash first (the long part); a concurrent commit that replaces a damaged object only
        // makes us drop an entry that then recomputes.
        let checked: Vec<(PathBuf, u64, Option<Digest>, bool)> = objects
            .into_par_iter()
            .map(|(digest, path, bytes)| {
                let intact = match (digest, Digest::of_file(&path)) {
                    (Some(digest), Ok(actual)) => actual == digest,
                    _ => false,
                };
                (path, bytes, digest, intact)
            })
            .collect();
        let mut report = VerifyReport {
            objects_checked: checked.len(),
            bytes_checked: checked.iter().map(|(_, bytes, _, _)| bytes).sum(),
            unreadable_records,
            restored_records,
            copies_written,
            ..VerifyReport::default()
        };
        let _gc_guard = self.gc_lock()?;
        let mut present: BTreeSet<Digest> = BTreeSet::new();
        for (path, _, digest, intact) in &checked {
            if *intact {
                present.extend(*digest);
                continue;
            }
            tracing::warn!("object {} is corrupt; removing it", path.display());
            if let Some(digest) = digest {
                report.corrupt.push(*digest);
            }
            match fs::remove_file(path) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => return Err(fsutil::io_error("removing", path, error)),
            }
        }
        let mut missing: BTreeSet<Digest> = BTreeSet::new();
        let mut dropped: HashMap<Digest, Manifest> = HashMap::new();
        for manifest in &manifests {
            for entry in &manifest.files {
                if !present.contains(&entry.digest) {
                    if !report.corrupt.contains(&entry.digest) {
                        missing.insert(entry.digest);
                    }
                    dropped.insert(manifest.key, manifest.clone());
                }
            }
        }
        report.missing = missing.into_iter().collect();
        let mut dropped: Vec<Manifest> = dropped.into_values().collect();
        dropped.sort_by_key(|manifest| manifest.key);
        for manifest in &dropped {
            tracing::warn!(
                "dropping the cache entry of stage `{}` of recipe `{}` ({}): it references damaged objects",
                manifest.stage,
                manifest.recipe,
                manifest.key.short()
            );
        }
        self.drop_manifests(&dropped)?;
        report.dropped = dropped
            .into_iter()
            .map(|manifest| DroppedManifest {
                key: manifest.key,
                stage: manifest.stage,
                recipe: manifest.recipe,
            })
            .collect();
        Ok(report)
    }
}

impl Store {
    /// Index records that do not decode as what their tree holds: each is named (`tree/key`) and
    /// removed, and a manifest whose copy is intact is put back from it. Returns the names and how
    /// many manifests were restored.
    fn repair_records(&self) -> Result<(Vec<String>, usize), StoreError> {
        fn decodes<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> bool {
            serde_json::from_slice::<T>(bytes).is_ok()
        }
        /// Whether a record's bytes decode as what its tree holds.
        type Decodes = fn(&[u8]) -> bool;
        let checks: [(&str, Decodes); 3] = [
            (MANIFESTS, decodes::<Manifest>),
            (FAILURES, decodes::<super::FailureRecord>),
            (HISTORY, decodes::<Vec<super::HistoryEntry>>),
        ];
        self.index.with(|db| {
            let mut names = Vec::new();
            let mut restored = 0;
            for (name, check) in checks {
                let tree = index::tree(&self.index, db, name)?;
                let mut bad = Vec::new();
                for item in tree.iter() {
                    let (key, bytes) = item.map_err(|error| self.index.sled_error(error))?;
                    if !check(&bytes) {
                        bad.push(key);
                    }
                }
                for key in bad {
                    let digest = <[u8; 32]>::try_from(key.as_ref())
                        .ok()
                        .map(Digest::from_bytes);
                    names.push(format!(
                        "{name}/{}",
                        match &digest {
                            Some(digest) => digest.to_hex(),
                            None => String::from_utf8_lossy(&key).replace('\u{0}', "/"),
                        }
                    ));
                    tracing::warn!(
                        "removing an unreadable index record {}",
                        names[names.len() - 1]
                    );
                    tree.remove(&key)
                        .map_err(|error| self.index.sled_error(error))?;
                    if name == MANIFESTS
                        && let Some(copy) =
                            digest.and_then(|digest| self.read_manifest_copy(&digest))
                        && self.objects_intact(&copy)
                    {
                        index::put_json(&self.index, &tree, &key, &copy)?;
                        restored += 1;
                    }
                }
            }
            Ok((names, restored))
        })
    }

    /// Every manifest copy under `manifests/`, by key (files not named `<key>.json` are ignored).
    pub(super) fn manifest_copies(&self) -> Result<Vec<(Digest, PathBuf)>, StoreError> {
        let folder = self.root().join("manifests");
        let entries = match fs::read_dir(&folder) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(fsutil::io_error("listing", &folder, error)),
        };
        let mut copies = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(key) = name
                .strip_suffix(".json")
                .and_then(|hex| hex.parse::<Digest>().ok())
            {
                copies.push((key, entry.path()));
            }
        }
        copies.sort();
        Ok(copies)
    }

    /// Replace a damaged index: move its folder aside and build a new one from the manifest copies
    /// whose objects are intact, their run history included (in commit order). Failure records and
    /// the stat cache start empty (a failed stage reruns anyway; files are rehashed once).
    pub fn rebuild_index(&self) -> Result<RebuildReport, StoreError> {
        let _gc_guard = self.gc_lock()?;
        let mut report = RebuildReport {
            moved_to: self.index.move_aside()?,
            ..RebuildReport::default()
        };
        let mut restored = Vec::new();
        for (key, path) in self.manifest_copies()? {
            match self.read_manifest_copy(&key) {
                None => {
                    tracing::warn!("{} is not a readable manifest; removing it", path.display());
                    fs::remove_file(&path).map_err(at("removing", &path))?;
                    report.unreadable.push(path);
                }
                Some(manifest) if !self.objects_intact(&manifest) => {
                    fs::remove_file(&path).map_err(at("removing", &path))?;
                    report.incomplete.push(DroppedManifest {
                        key,
                        stage: manifest.stage,
                        recipe: manifest.recipe,
                    });
                }
                Some(manifest) => restored.push(manifest),
            }
        }
        restored.sort_by_key(|manifest| manifest.committed_unix_ms);
        self.index.with(|db| {
            let manifests = index::tree(&self.index, db, MANIFESTS)?;
            for manifest in &restored {
                index::put_json(&self.index, &manifests, manifest.key.as_bytes(), manifest)?;
                super::failures::push_history(
                    self,
                    db,
                    &manifest.recipe,
                    &manifest.stage,
                    &manifest.key,
                )?;
            }
            Ok(())
        })?;
        report.restored = restored.len();
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{commit_files, key, record, write_files};
    use super::super::{Acquire, Digest};
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// Garbage in index records: verify names each one and removes it; a manifest whose copy is
    /// intact comes back from it (no rerun), one whose copy is gone is dropped (that stage reruns).
    #[test]
    fn unreadable_index_records_are_named_removed_and_restored_from_copies() {
        let (_dir, store) = store();
        let kept = commit_files(&store, &key("a"), "r", "a", &[("f", b"one")]);
        let lost = commit_files(&store, &key("b"), "r", "b", &[("g", b"two")]);
        fs::remove_file(store.manifest_copy_path(&lost.key)).unwrap();
        store
            .index
            .with(|db| {
                let manifests = index::tree(&store.index, db, MANIFESTS)?;
                for manifest in [&kept, &lost] {
                    manifests
                        .insert(manifest.key.as_bytes(), &b"{\"format\": tru"[..])
                        .unwrap();
                }
                let failures = index::tree(&store.index, db, FAILURES)?;
                failures
                    .insert(key("c").as_bytes(), &b"\xff\xfe"[..])
                    .unwrap();
                Ok(())
            })
            .unwrap();
        let report = store.verify().unwrap();
        assert!(!report.is_clean());
        let mut names = report.unreadable_records.clone();
        names.sort();
        let mut expected = vec![
            format!("failures/{}", key("c").to_hex()),
            format!("manifests/{}", kept.key.to_hex()),
            format!("manifests/{}", lost.key.to_hex()),
        ];
        expected.sort();
        assert_eq!(names, expected);
        assert_eq!(report.restored_records, 1);
        assert_eq!(store.lookup(&kept.key).unwrap(), Some(kept));
        assert_eq!(store.lookup(&lost.key).unwrap(), None);
        assert!(
            store.verify().unwrap().is_clean(),
            "a second verify finds nothing"
        );
    }

    /// A damaged index (here: deleted, as sled may silently open an empty one) loses nothing that
    /// has a manifest copy: lookups restore single records, `rebuild_index` the whole index with
    /// its history; copies whose objects are gone are dropped; old caches get their copies from
    /// verify.
    #[test]
    fn a_lost_index_is_rebuilt_from_the_manifest_copies() {
        let (_dir, store) = store();
        let first = commit_files(&store, &key("a"), "r", "a", &[("f", b"one")]);
        let second = commit_files(&store, &key("b"), "r", "b", &[("g", b"two")]);
        let broken = commit_files(&store, &key("c"), "r", "c", &[("h", b"three")]);
        fs::remove_file(store.object_path(&broken.files[0].digest)).unwrap();

        fs::remove_dir_all(store.root().join("index")).unwrap();
        assert_eq!(store.lookup(&first.key).unwrap(), Some(first.clone()));
        assert_eq!(store.lookup(&broken.key).unwrap(), None);

        fs::remove_dir_all(store.root().join("index")).unwrap();
        let report = store.rebuild_index().unwrap();
        assert_eq!(report.restored, 2);
        assert_eq!(report.incomplete.len(), 1);
        assert_eq!(report.incomplete[0].stage, "c");
        assert_eq!(store.manifests().unwrap().len(), 2);
        assert_eq!(store.lookup(&second.key).unwrap(), Some(second.clone()));
        let last = store.last_committed("r", "b").unwrap();
        assert_eq!(last.map(|manifest| manifest.key), Some(second.key));
        assert!(!store.manifest_copy_path(&broken.key).exists());

        // A damaged index folder is moved aside, not deleted.
        fs::write(store.root().join("index/db"), b"garbage").unwrap();
        let report = store.rebuild_index().unwrap();
        let moved = report.moved_to.expect("moved aside");
        assert!(moved.join("db").exists());
        assert_eq!(report.restored, 2);

        // A copy damaged in a way that still parses (a file's path, its recorded size, the
        // total) disagrees with its own output digest: it is named, removed and not restored.
        let copy_path = store.manifest_copy_path(&second.key);
        let pristine = fs::read_to_string(&copy_path).unwrap();
        for (from, to) in [("\"g\"", "\"G\""), ("\"bytes\": 3", "\"bytes\": 4")] {
            assert!(pristine.contains(from), "{from} not in {pristine}");
            fs::write(&copy_path, pristine.replacen(from, to, 1)).unwrap();
            let report = store.rebuild_index().unwrap();
            assert_eq!(report.restored, 1, "{to}");
            assert_eq!(report.unreadable, std::slice::from_ref(&copy_path), "{to}");
            assert!(!copy_path.exists());
            assert_eq!(store.lookup(&second.key).unwrap(), None, "{to}");
            fs::write(&copy_path, &pristine).unwrap();
            assert_eq!(store.rebuild_index().unwrap().restored, 2);
        }

        // A cache from before the copies: verify writes them.
        for manifest in [&first, &second] {
            fs::remove_file(store.manifest_copy_path(&manifest.key)).unwrap();
        }
        assert_eq!(store.verify().unwrap().copies_written, 2);
        assert!(store.manifest_copy_path(&first.key).exists());
    }

    /// A store whose gc collects even what was just written.
    fn store() -> (tempfile::TempDir, Store) {
        let (dir, store) = super::super::testing::store();
        (dir, store.with_gc_grace(std::time::Duration::ZERO))
    }

    fn object_count(store: &Store) -> usize {
        store.list_objects().unwrap().len()
    }

    #[test]
    fn gc_removes_what_no_live_key_needs_and_dry_run_removes_nothing() {
        let (_dir, store) = store();
        let live = commit_files(
            &store,
            &key("live"),
            "r",
            "a",
            &[("shared", b"common"), ("own", b"live only")],
        );
        let dead = commit_files(
            &store,
            &key("dead"),
            "r",
            "b",
            &[("shared", b"common"), ("big", &[7u8; 1000])],
        );
        store.outputs(&dead).unwrap();
        // A crashed commit's orphan object, a dead attempt and scratch of a key nobody plans.
        let crashed = store.begin(&key("crashed")).unwrap();
        write_files(&crashed.out_dir, &[("orphan", b"orphan!")]);
        store
            .commit_until(&crashed, record("r", "c"), true)
            .unwrap_err();
        let dead_attempt = store.root().join("attempts").join(format!(
            "{}.{}.999999999-1-1",
            key("crashed").to_hex(),
            store.host()
        ));
        fs::create_dir_all(&dead_attempt).unwrap();
        let planned_scratch = store.begin(&key("planned")).unwrap().scratch_dir;
        write_files(&planned_scratch, &[("ckpt", b"resume me")]);
        assert_eq!(object_count(&store), 4);

        let live_keys: BTreeSet<Digest> = [key("live"), key("planned")].into_iter().collect();
        let preview = store.gc(&live_keys, None, true).unwrap();
        assert!(preview.dry_run);
        assert_eq!(
            (preview.manifests, preview.objects),
            (1, 2),
            "dead's big + crashed's orphan"
        );
        assert_eq!(object_count(&store), 4, "dry run deletes nothing");
        assert!(store.manifest(&key("dead")).unwrap().is_some());

        let report = store.gc(&live_keys, None, false).unwrap();
        assert_eq!((report.manifests, report.objects), (1, 2));
        assert!(report.bytes >= 1000 + 7, "{report:?}");
        assert_eq!(object_count(&store), 2);
        assert_eq!(store.lookup(&key("live")).unwrap(), Some(live));
        assert_eq!(store.manifest(&key("dead")).unwrap(), None);
        assert!(!store.outputs_path(&key("dead")).exists());
        assert!(!dead_attempt.exists(), "attempts of dead processes removed");
        assert!(
            crashed.out_dir.exists(),
            "attempts of live processes (this test) kept"
        );
        assert!(
            !crashed.scratch_dir.exists(),
            "scratch of unplanned keys removed"
        );
        assert!(
            planned_scratch.join("ckpt").exists(),
            "scratch of planned keys kept"
        );
        assert_eq!(store.history("r", "b").unwrap(), vec![]);
        let again = store.gc(&live_keys, None, false).unwrap();
        assert_eq!((again.manifests, again.objects, again.bytes), (0, 0, 0));
    }

    #[test]
    fn keep_last_keeps_the_newest_runs_of_each_recipe_stage() {
        let (_dir, store) = store();
        for (index, name) in ["v1", "v2", "v3"].iter().enumerate() {
            commit_files(
                &store,
                &key(name),
                "r",
                "train",
                &[("model", format!("model {index}").as_bytes())],
            );
        }
        commit_files(&store, &key("other"), "q", "eval", &[("scores", b"1")]);
        let report = store.gc(&BTreeSet::new(), Some(2), false).unwrap();
        assert_eq!(report.manifests, 1);
        assert_eq!(store.manifest(&key("v1")).unwrap(), None);
        for name in ["v2", "v3", "other"] {
            assert!(store.lookup(&key(name)).unwrap().is_some(), "{name} kept");
        }
        store.gc(&BTreeSet::new(), None, false).unwrap();
        assert!(store.manifests().unwrap().is_empty());
        assert_eq!(object_count(&store), 0);
    }

    #[test]
    fn gc_never_touches_a_leased_key() {
        let (_dir, store) = store();
        let running = key("running");
        let Acquire::Acquired(lease) = store.acquire(&running).unwrap() else {
            panic!()
        };
        let attempt = store.begin(&running).unwrap();
        write_files(&attempt.out_dir, &[("partial", b"in progress")]);
        write_files(&attempt.scratch_dir, &[("ckpt", b"step 10")]);
        store.gc(&BTreeSet::new(), None, false).unwrap();
        assert!(
            attempt.out_dir.join("partial").exists() && attempt.scratch_dir.join("ckpt").exists()
        );
        let manifest = store.commit(&attempt, record("r", "s")).unwrap();
        assert_eq!(
            store.gc(&BTreeSet::new(), None, false).unwrap().manifests,
            0,
            "leased key's manifest kept"
        );
        drop(lease);
        assert_eq!(
            store.gc(&BTreeSet::new(), None, false).unwrap().manifests,
            1
        );
        assert_eq!(store.lookup(&manifest.key).unwrap(), None);
    }

    #[test]
    fn verify_finds_corrupt_and_missing_objects_and_drops_their_manifests() {
        let (_dir, store) = store();
        let first = commit_files(
            &store,
            &key("1"),
            "r",
            "a",
            &[("weights", b"good bytes"), ("x", b"fine")],
        );
        let second = commit_files(&store, &key("2"), "r", "b", &[("copy", b"good bytes")]);
        let third = commit_files(&store, &key("3"), "r", "c", &[("lost", b"soon gone")]);
        let clean = store.verify().unwrap();
        assert!(clean.is_clean() && clean.objects_checked == 3, "{clean:?}");

        let damaged = store.object_path(&Digest::of_bytes(b"good bytes"));
        fs::set_permissions(&damaged, fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(&damaged, b"bad! bytes").unwrap(); // same size: only a rehash notices
        fs::remove_file(store.object_path(&Digest::of_bytes(b"soon gone"))).unwrap();
        let report = store.verify().unwrap();
        assert_eq!(report.corrupt, vec![Digest::of_bytes(b"good bytes")]);
        assert_eq!(report.missing, vec![Digest::of_bytes(b"soon gone")]);
        let mut dropped: Vec<Digest> = report.dropped.iter().map(|entry| entry.key).collect();
        dropped.sort();
        let mut expected = vec![first.key, second.key, third.key];
        expected.sort();
        assert_eq!(dropped, expected);
        assert!(!damaged.exists(), "corrupt object deleted");
        assert_eq!(
            store.lookup(&first.key).unwrap(),
            None,
            "the stage will rerun"
        );

        // Rerunning recreates the object and the entry.
        let rerun = commit_files(
            &store,
            &key("1"),
            "r",
            "a",
            &[("weights", b"good bytes"), ("x", b"fine")],
        );
        assert_eq!(rerun.output_digest, first.output_digest);
        assert!(store.verify().unwrap().is_clean());
    }

    #[test]
    fn recent_orphans_are_spared_within_the_grace_period_and_gc_runs_one_at_a_time() {
        let (_dir, store) = super::super::testing::store(); // default grace
        let attempt = store.begin(&key("in-flight")).unwrap();
        write_files(&attempt.out_dir, &[("f", b"about to be referenced")]);
        // Objects moved in, manifest not yet written: exactly what a concurrent commit looks like.
        store
            .commit_until(&attempt, record("r", "s"), true)
            .unwrap_err();
        let report = store.gc(&BTreeSet::new(), None, false).unwrap();
        assert_eq!(report.objects, 0);
        assert_eq!(object_count(&store), 1);

        let _running = store.gc_lock().unwrap();
        let error = store.gc(&BTreeSet::new(), None, true).unwrap_err();
        assert!(matches!(error, StoreError::Busy { .. }), "{error}");
    }
}
