//! What the store records: the manifest of a committed entry, and an attempt's folders.

use std::path::PathBuf;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::digest::{Digest, FileEntry};

/// Manifest format written by this binary; manifests of other formats are treated as absent.
pub const MANIFEST_FORMAT: u32 = 1;

/// A running attempt of one stage key. Write outputs into `out_dir`, checkpoints into
/// `scratch_dir`, the log into `log_path`; then [`Store::commit`] or [`Store::fail`].
#[derive(Debug, Clone)]
pub struct Attempt {
    pub key: Digest,
    /// Fresh and empty: `attempts/<key>.<pid>-<time>-<n>/`.
    pub out_dir: PathBuf,
    /// `scratch/<key>/`: kept across failed and killed attempts, deleted when the key commits.
    pub scratch_dir: PathBuf,
    /// `logs/<key>/<time>-<pid>.log` (not created; the runner opens it).
    pub log_path: PathBuf,
    pub started_at: SystemTime,
}

/// Only committed entries are ever written; the field makes that explicit in the JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryStatus {
    Committed,
}

/// A committed cache entry: what a stage key produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub key: Digest,
    pub status: EntryStatus,
    pub stage: String,
    pub recipe: String,
    pub kind: String,
    pub version: u32,
    pub preimage: serde_json::Value,
    /// Sorted by path.
    pub files: Vec<FileEntry>,
    #[serde(default)]
    pub empty_dirs: Vec<String>,
    /// [`folder_digest`] of `files`: the input digest downstream stages see. Identical bytes give
    /// an identical digest, so downstream keys do not change (early cutoff).
    pub output_digest: Digest,
    /// Sum of file sizes.
    pub bytes: u64,
    /// Parsed `metrics.json` of the output folder, if it had one.
    pub metrics: Option<serde_json::Value>,
    /// RFC 3339.
    pub started_at: String,
    pub committed_at: String,
    pub committed_unix_ms: u64,
    pub seconds: f64,
    pub host: String,
    pub log_path: Option<PathBuf>,
}

impl Manifest {
    /// The entry of one output file (`{ stage = "x", file = "f" }` inputs use its digest).
    pub fn file(&self, path: &str) -> Option<&FileEntry> {
        self.files
            .binary_search_by(|entry| entry.path.as_str().cmp(path))
            .ok()
            .map(|index| &self.files[index])
    }
}
