//! Failed attempts (the last error and log of a key, counted until it commits) and per-stage
//! history (which key each recipe stage used, newest last).

use std::path::PathBuf;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::digest::Digest;
use super::entry::{Attempt, MANIFEST_FORMAT, Manifest};
use super::fsutil::{self, now_unix_ms, rfc3339};
use super::index::{self, FAILURES, HISTORY, MANIFESTS};
use super::{Store, StoreError};

/// Entries kept per (recipe, stage) history; older ones are forgotten (their manifests stay).
const HISTORY_LIMIT: usize = 64;

/// Why an attempt failed, as the runner reports it.
#[derive(Debug, Clone)]
pub struct FailureInfo {
    pub stage: String,
    pub recipe: String,
    /// The error message (one or a few lines).
    pub error: String,
}

/// The last failure of a stage key (for `plan` status `failed`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailureRecord {
    pub key: Digest,
    pub stage: String,
    pub recipe: String,
    pub error: String,
    pub log_path: PathBuf,
    pub failed_at: String,
    pub failed_unix_ms: u64,
    /// How many attempts of this key have failed since it last committed.
    pub failures: u32,
}

/// One use of a key by a recipe's stage (a commit or a cache hit).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub key: Digest,
    pub used_unix_ms: u64,
}

/// The history of one (recipe, stage name), oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageHistory {
    pub recipe: String,
    pub stage: String,
    pub entries: Vec<HistoryEntry>,
}

fn history_key(recipe: &str, stage: &str) -> Vec<u8> {
    let mut key = recipe.as_bytes().to_vec();
    key.push(0);
    key.extend_from_slice(stage.as_bytes());
    key
}

pub(super) fn push_history(
    store: &Store,
    db: &sled::Db,
    recipe: &str,
    stage: &str,
    key: &Digest,
) -> Result<(), StoreError> {
    let history = index::tree(&store.index, db, HISTORY)?;
    let history_key = history_key(recipe, stage);
    let mut entries: Vec<HistoryEntry> =
        index::get_json(&store.index, &history, &history_key)?.unwrap_or_default();
    entries.retain(|entry| entry.key != *key);
    entries.push(HistoryEntry {
        key: *key,
        used_unix_ms: now_unix_ms(),
    });
    let excess = entries.len().saturating_sub(HISTORY_LIMIT);
    entries.drain(..excess);
    index::put_json(&store.index, &history, &history_key, &entries)
}

pub(super) fn all_history(store: &Store, db: &sled::Db) -> Result<Vec<StageHistory>, StoreError> {
    let history = index::tree(&store.index, db, HISTORY)?;
    let mut out = Vec::new();
    for item in history.iter() {
        let (key, bytes) = item.map_err(|error| store.index.sled_error(error))?;
        let mut parts = key.splitn(2, |byte| *byte == 0);
        let recipe = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
        let stage = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
        if let Ok(entries) = serde_json::from_slice::<Vec<HistoryEntry>>(&bytes) {
            out.push(StageHistory {
                recipe,
                stage,
                entries,
            });
        }
    }
    Ok(out)
}

pub(super) fn history_key_of(recipe: &str, stage: &str) -> Vec<u8> {
    history_key(recipe, stage)
}

impl Store {
    /// Record a failed attempt (for `plan` status `failed` and the log tail) and remove its partial
    /// outputs. The scratch folder is kept: the next attempt resumes from it.
    pub fn fail(&self, attempt: &Attempt, info: FailureInfo) -> Result<FailureRecord, StoreError> {
        let key_bytes = attempt.key.as_bytes().to_vec();
        let now = SystemTime::now();
        let record = self.index.with(|db| {
            let failures = index::tree(&self.index, db, FAILURES)?;
            let previous: Option<FailureRecord> =
                index::get_json(&self.index, &failures, &key_bytes)?;
            let record = FailureRecord {
                key: attempt.key,
                stage: info.stage,
                recipe: info.recipe,
                error: info.error,
                log_path: attempt.log_path.clone(),
                failed_at: rfc3339(now),
                failed_unix_ms: now_unix_ms(),
                failures: previous.map_or(1, |previous| previous.failures.saturating_add(1)),
            };
            index::put_json(&self.index, &failures, &key_bytes, &record)?;
            Ok(record)
        })?;
        fsutil::remove_tree(&attempt.out_dir)?;
        Ok(record)
    }

    /// The last failure of `key` since it last committed, if any.
    pub fn failure(&self, key: &Digest) -> Result<Option<FailureRecord>, StoreError> {
        self.index.with(|db| {
            let failures = index::tree(&self.index, db, FAILURES)?;
            index::get_json(&self.index, &failures, key.as_bytes())
        })
    }

    /// Record that `recipe`'s stage `stage` used `key` (commit or cache hit): the runner diffs
    /// against the newest entry to explain staleness; gc `--keep-last N` keeps the newest N.
    pub fn record_use(&self, recipe: &str, stage: &str, key: &Digest) -> Result<(), StoreError> {
        self.index
            .with(|db| push_history(self, db, recipe, stage, key))
    }

    /// The history of one recipe stage, oldest first.
    pub fn history(&self, recipe: &str, stage: &str) -> Result<Vec<HistoryEntry>, StoreError> {
        self.index.with(|db| {
            let history = index::tree(&self.index, db, HISTORY)?;
            Ok(
                index::get_json(&self.index, &history, &history_key(recipe, stage))?
                    .unwrap_or_default(),
            )
        })
    }

    /// Every recipe stage's history (for `compare` and gc).
    pub fn all_history(&self) -> Result<Vec<StageHistory>, StoreError> {
        self.index.with(|db| all_history(self, db))
    }

    /// The newest committed manifest that `recipe`'s stage `stage` used, if any is still stored.
    pub fn last_committed(
        &self,
        recipe: &str,
        stage: &str,
    ) -> Result<Option<Manifest>, StoreError> {
        let history = self.history(recipe, stage)?;
        self.index.with(|db| {
            let manifests = index::tree(&self.index, db, MANIFESTS)?;
            for entry in history.iter().rev() {
                let manifest: Option<Manifest> =
                    index::get_json(&self.index, &manifests, entry.key.as_bytes())?;
                if let Some(manifest) =
                    manifest.filter(|manifest| manifest.format == MANIFEST_FORMAT)
                {
                    return Ok(Some(manifest));
                }
            }
            Ok(None)
        })
    }
}
