//! Keys, statuses and explanations: what would `sheared run` do for each stage, and why.
//!
//! A stage's key is resolved once every upstream input has a committed output (its digest enters the
//! key). When that is not yet the case the stage is reported as depending on those upstream stages,
//! and its reasons compare what is known (params, settings, kind version) with the last committed run
//! of the same stage name in the same recipe.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Value as Json, json};

use super::{InputSource, Plan, key};
use crate::store::{Digest, FileEntry, Manifest, Store, StoreError, folder_digest};
use crate::util::glob::{external_exists, glob_matches, is_glob};

/// The five things a stage can be before a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Its key is committed: nothing to do.
    Cached,
    /// A previous run of this stage exists, but under another key (or its key is not known yet).
    Stale,
    /// Never committed.
    Missing,
    /// Another process holds its lease.
    Running,
    /// Its last attempt with this key failed.
    Failed,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = match self {
            Status::Cached => "cached",
            Status::Stale => "stale",
            Status::Missing => "missing",
            Status::Running => "running",
            Status::Failed => "failed",
        };
        f.write_str(text)
    }
}

/// One cause of a rerun; `causes` explain it further (an upstream stage's own reasons).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Reason {
    pub text: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub causes: Vec<Reason>,
}

impl Reason {
    fn new(text: impl Into<String>) -> Self {
        Reason {
            text: text.into(),
            causes: Vec::new(),
        }
    }

    /// `text (upstream: root cause; root cause)`, one line: the chain in between (consolidate
    /// re-ran because prune re-ran because ...) repeats what every other line of the plan already
    /// says, and a change of a shared setting would be repeated once per path to it, so only the
    /// distinct changes at the roots of `causes` are named (the JSON keeps the whole tree).
    pub fn one_line(&self) -> String {
        let mut roots = Vec::new();
        self.collect_roots(&mut roots);
        if roots.is_empty() {
            self.text.clone()
        } else {
            format!("{} (upstream: {})", self.text, roots.join("; "))
        }
    }

    fn collect_roots(&self, roots: &mut Vec<String>) {
        for cause in &self.causes {
            if cause.causes.is_empty() {
                if !roots.contains(&cause.text) {
                    roots.push(cause.text.clone());
                }
            } else {
                cause.collect_roots(roots);
            }
        }
    }
}

/// What a stage's key is made of. Stored with each commit as its preimage record.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyRecord {
    pub key: Digest,
    /// The exact JSON hashed into `key`.
    pub preimage: Json,
    /// Where each input came from (upstream stage + key, or path): explanations only, not hashed.
    pub provenance: Json,
}

impl KeyRecord {
    /// The JSON stored in the manifest.
    pub fn to_json(&self) -> Json {
        json!({ "key": self.key.to_hex(), "preimage": self.preimage, "provenance": self.provenance })
    }

    /// Read back what [`KeyRecord::to_json`] stored.
    pub fn from_json(value: &Json) -> Option<KeyRecord> {
        Some(KeyRecord {
            key: value.get("key")?.as_str()?.parse().ok()?,
            preimage: value.get("preimage")?.clone(),
            provenance: value.get("provenance").cloned().unwrap_or(Json::Null),
        })
    }
}

/// The committed outputs of a node as the runner needs them to compute downstream keys.
#[derive(Debug, Clone)]
pub struct Committed {
    pub key: Digest,
    pub manifest: Manifest,
}

/// Why a key cannot be computed.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "stage `{stage}`: input `{input}` wants file `{file}` of stage `{upstream}`, which has no such file or folder (it has: {available})"
    )]
    NoSuchFile {
        stage: String,
        input: String,
        file: String,
        upstream: String,
        available: String,
    },
    #[error("stage `{stage}`: input `{input}`: {source}")]
    External {
        stage: String,
        input: String,
        #[source]
        source: Box<StoreError>,
    },
}

/// The digest of `file` in an upstream output: the file's own digest, or, when `file` names a
/// folder inside the output, the [`folder_digest`] of the files under it (paths relative to it),
/// so a stage can take a whole sub-folder (`{ stage = "fetch-tasks", file = "datasets" }`) and its
/// key changes exactly when something in that folder does. `None` when neither exists.
fn file_or_folder_digest(manifest: &Manifest, file: &str) -> Option<Digest> {
    let file = file.trim_end_matches('/');
    if let Some(entry) = manifest.files.iter().find(|entry| entry.path == file) {
        return Some(entry.digest);
    }
    let prefix = format!("{file}/");
    let inside: Vec<FileEntry> = manifest
        .files
        .iter()
        .filter_map(|entry| {
            entry.path.strip_prefix(&prefix).map(|relative| FileEntry {
                path: relative.to_string(),
                ..entry.clone()
            })
        })
        .collect();
    (!inside.is_empty()).then(|| folder_digest(&inside))
}

/// The key of node `index`, given the committed outputs of its upstream nodes; `None` while an
/// upstream node is not committed.
pub fn resolve_key(
    plan: &Plan,
    index: usize,
    committed: &dyn Fn(usize) -> Option<Committed>,
    store: &Store,
) -> Result<Option<KeyRecord>, KeyError> {
    let node = &plan.nodes[index];
    let mut digests = serde_json::Map::new();
    let mut provenance = serde_json::Map::new();
    for input in &node.inputs {
        match &input.source {
            InputSource::Stage {
                node: upstream,
                file,
            } => {
                let Some(upstream_commit) = committed(*upstream) else {
                    return Ok(None);
                };
                let digest = match file {
                    None => upstream_commit.manifest.output_digest.to_hex(),
                    Some(file) => match file_or_folder_digest(&upstream_commit.manifest, file) {
                        Some(digest) => digest.to_hex(),
                        None => {
                            return Err(KeyError::NoSuchFile {
                                stage: node.id.clone(),
                                input: input.key.clone(),
                                file: file.clone(),
                                upstream: plan.nodes[*upstream].id.clone(),
                                available: upstream_commit
                                    .manifest
                                    .files
                                    .iter()
                                    .map(|entry| entry.path.as_str())
                                    .take(20)
                                    .collect::<Vec<_>>()
                                    .join(", "),
                            });
                        }
                    },
                };
                digests.insert(input.key.clone(), Json::String(digest));
                provenance.insert(
                    input.key.clone(),
                    json!({ "stage": plan.nodes[*upstream].stage, "node": plan.nodes[*upstream].id, "key": upstream_commit.key.to_hex(), "file": file }),
                );
            }
            InputSource::Path(path) => {
                let digest = external_digest(store, path).map_err(|source| KeyError::External {
                    stage: node.id.clone(),
                    input: input.key.clone(),
                    source: Box::new(source),
                })?;
                digests.insert(input.key.clone(), Json::String(digest.to_hex()));
                provenance.insert(
                    input.key.clone(),
                    json!({ "path": path.display().to_string() }),
                );
            }
        }
    }
    let preimage = key::preimage(
        &node.kind,
        node.version,
        &node.key_config,
        &node.settings,
        &Json::Object(digests),
    );
    Ok(Some(KeyRecord {
        key: key::key_of(&preimage),
        preimage: key::sorted(&preimage),
        provenance: Json::Object(provenance),
    }))
}

/// The content digest of an external input. A glob's digest covers the list of matched paths and
/// each match's content (through the store's stat cache), so adding, removing or editing a matched
/// file changes it.
pub fn external_digest(store: &Store, path: &Path) -> Result<Digest, StoreError> {
    if !is_glob(path) {
        return store.hash_external(path).map(|hashed| hashed.digest);
    }
    let matches = glob_matches(path);
    if matches.is_empty() {
        return Err(StoreError::MissingExternal {
            path: path.to_path_buf(),
        });
    }
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"sheared-glob-v1\n");
    for matched in &matches {
        let digest = store.hash_external(matched)?.digest;
        hasher.update(matched.to_string_lossy().as_bytes());
        hasher.update(b"\0");
        hasher.update(digest.to_hex().as_bytes());
        hasher.update(b"\n");
    }
    Ok(Digest::from_bytes(*hasher.finalize().as_bytes()))
}

/// Everything `sheared plan` shows for one node.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NodeStatus {
    pub id: String,
    pub stage: String,
    pub kind: String,
    pub status: Status,
    /// Known once every upstream is committed.
    pub key: Option<String>,
    /// Upstream stages that must commit before the key is known.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub waits_on: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<Reason>,
    /// The output folder when cached (materialised by [`output_path`], not by planning).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// The `metrics.json` the stage wrote, when cached.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics: Option<Json>,
    /// The Slurm job computing this stage, if any (`slurm job 51: RUNNING, ...`); filled by the
    /// runner's side (`crate::exec::slurm::job_status`), which knows where jobs are recorded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    #[serde(skip)]
    pub record: Option<KeyRecord>,
    #[serde(skip)]
    pub committed: Option<Committed>,
}

/// The status of every node, in plan order of node indices.
pub fn plan_status(plan: &Plan, store: &Store) -> anyhow::Result<Vec<NodeStatus>> {
    let _session = store.index_session()?;
    let mut statuses: Vec<Option<NodeStatus>> = vec![None; plan.nodes.len()];
    for &index in &plan.order {
        let node = &plan.nodes[index];
        let lookup = |upstream: usize| {
            statuses[upstream]
                .as_ref()
                .and_then(|status: &NodeStatus| status.committed.clone())
        };
        let missing_paths: Vec<String> = node
            .inputs
            .iter()
            .filter_map(|input| match &input.source {
                InputSource::Path(path) if !external_exists(path) => Some(format!(
                    "input {}: path {} does not exist",
                    input.key,
                    path.display()
                )),
                _ => None,
            })
            .collect();
        let mut missing_paths = missing_paths;
        let record = if missing_paths.is_empty() {
            match resolve_key(plan, index, &lookup, store) {
                Ok(record) => record,
                // Shown as a reason; `run` reports it as the stage's failure.
                Err(error) => {
                    missing_paths.push(error.to_string());
                    None
                }
            }
        } else {
            None
        };
        let waits_on: Vec<String> = plan
            .upstream(index)
            .into_iter()
            .filter(|&upstream| {
                statuses[upstream]
                    .as_ref()
                    .is_none_or(|status| status.committed.is_none())
            })
            .map(|upstream| plan.nodes[upstream].id.clone())
            .collect();
        let (recipe, stage) = plan.record_name(index);
        let mut status = NodeStatus {
            id: node.id.clone(),
            stage: node.stage.clone(),
            kind: node.kind.clone(),
            status: Status::Missing,
            key: record.as_ref().map(|record| record.key.to_hex()),
            waits_on,
            reasons: Vec::new(),
            output: None,
            metrics: None,
            job: None,
            record: record.clone(),
            committed: None,
        };
        if let Some(record) = &record
            && let Some(manifest) = store.lookup(&record.key)?
        {
            status.status = Status::Cached;
            status.output = Some(store.outputs_path(&record.key).display().to_string());
            status.metrics = manifest.metrics.clone();
            status.committed = Some(Committed {
                key: record.key,
                manifest,
            });
            statuses[index] = Some(status);
            continue;
        }
        if let Some(record) = &record {
            if store.lease_holder(&record.key)?.is_some() {
                status.status = Status::Running;
            } else if let Some(failure) = store.failure(&record.key)? {
                status.status = Status::Failed;
                status.reasons.push(Reason::new(format!(
                    "last attempt failed ({} time(s)): {}",
                    failure.failures, failure.error
                )));
            }
        }
        let previous = store.last_committed(recipe, stage)?;
        if let Some(previous) = &previous {
            if status.status == Status::Missing {
                status.status = Status::Stale;
            }
            if let Some(old) = KeyRecord::from_json(&previous.preimage) {
                let current = record
                    .clone()
                    .unwrap_or_else(|| partial_record(plan, index, &lookup));
                status.reasons.extend(explain(store, &current, &old, 0)?);
            }
        }
        status
            .reasons
            .extend(missing_paths.into_iter().map(Reason::new));
        for upstream in &status.waits_on {
            status.reasons.push(Reason::new(format!(
                "depends on `{upstream}`, which must run first (its output decides this key)"
            )));
        }
        if status.reasons.is_empty() && status.status == Status::Stale {
            status.reasons.push(Reason::new(
                "the last committed output of this key is gone (dropped by verify or gc)",
            ));
        }
        statuses[index] = Some(status);
    }
    Ok(statuses.into_iter().flatten().collect())
}

/// A record with what is known before upstream commits: inputs whose digest is unknown are null.
fn partial_record(
    plan: &Plan,
    index: usize,
    committed: &dyn Fn(usize) -> Option<Committed>,
) -> KeyRecord {
    let node = &plan.nodes[index];
    let mut digests = serde_json::Map::new();
    let mut provenance = serde_json::Map::new();
    for input in &node.inputs {
        if let InputSource::Stage {
            node: upstream,
            file,
        } = &input.source
        {
            let digest = committed(*upstream).map(|commit| commit.manifest.output_digest.to_hex());
            digests.insert(
                input.key.clone(),
                digest.map(Json::String).unwrap_or(Json::Null),
            );
            provenance.insert(
                input.key.clone(),
                json!({ "stage": plan.nodes[*upstream].stage, "node": plan.nodes[*upstream].id, "file": file }),
            );
        }
    }
    let preimage = key::preimage(
        &node.kind,
        node.version,
        &node.key_config,
        &node.settings,
        &Json::Object(digests),
    );
    KeyRecord {
        key: Digest::from_bytes([0; 32]),
        preimage,
        provenance: Json::Object(provenance),
    }
}

/// The differences between the current key record and an older one of the same stage.
pub fn explain(
    store: &Store,
    current: &KeyRecord,
    old: &KeyRecord,
    depth: usize,
) -> Result<Vec<Reason>, StoreError> {
    let mut reasons = Vec::new();
    let field =
        |record: &KeyRecord, name: &str| record.preimage.get(name).cloned().unwrap_or(Json::Null);
    let (kind, old_kind) = (field(current, "kind"), field(old, "kind"));
    if kind != old_kind {
        reasons.push(Reason::new(format!(
            "kind {} → {}",
            show(&old_kind),
            show(&kind)
        )));
    } else if field(current, "version") != field(old, "version") {
        reasons.push(Reason::new(format!(
            "kind {} implementation {} → {}",
            show(&kind),
            show(&field(old, "version")),
            show(&field(current, "version"))
        )));
    }
    if field(current, "format") != field(old, "format") {
        reasons.push(Reason::new(format!(
            "cache key format {} → {}",
            show(&field(old, "format")),
            show(&field(current, "format"))
        )));
    }
    for (name, label) in [("config", "param"), ("settings", "setting")] {
        let (now, before) = (flatten(&field(current, name)), flatten(&field(old, name)));
        for (key, value) in &now {
            match before.get(key) {
                Some(previous) if previous == value => {}
                Some(previous) => reasons.push(Reason::new(format!(
                    "{label} {key}: {} → {}",
                    show(previous),
                    show(value)
                ))),
                None => reasons.push(Reason::new(format!(
                    "{label} {key}: (unset) → {}",
                    show(value)
                ))),
            }
        }
        for (key, previous) in &before {
            if !now.contains_key(key) {
                reasons.push(Reason::new(format!(
                    "{label} {key}: {} → (unset)",
                    show(previous)
                )));
            }
        }
    }
    let inputs = field(current, "inputs");
    let old_inputs = field(old, "inputs");
    let empty = serde_json::Map::new();
    let (inputs, old_inputs) = (
        inputs.as_object().unwrap_or(&empty),
        old_inputs.as_object().unwrap_or(&empty),
    );
    for (name, digest) in inputs {
        let Some(old_digest) = old_inputs.get(name) else {
            reasons.push(Reason::new(format!("input {name} added")));
            continue;
        };
        if digest == old_digest || digest.is_null() {
            continue;
        }
        let source = current.provenance.get(name).cloned().unwrap_or(Json::Null);
        let old_source = old.provenance.get(name).cloned().unwrap_or(Json::Null);
        if let Some(path) = source.get("path").and_then(Json::as_str) {
            match old_source.get("path").and_then(Json::as_str) {
                Some(old_path) if old_path != path => reasons.push(Reason::new(format!(
                    "input {name} now reads {path} (was {old_path})"
                ))),
                _ => reasons.push(Reason::new(format!(
                    "input {name} changed: the content of {path} changed"
                ))),
            }
            continue;
        }
        let upstream = source
            .get("stage")
            .and_then(Json::as_str)
            .unwrap_or("?")
            .to_string();
        let mut reason = Reason::new(format!(
            "input {name} changed because stage {upstream} re-ran"
        ));
        let new_key = source.get("key").and_then(Json::as_str);
        let old_key = old_source.get("key").and_then(Json::as_str);
        if depth < 16
            && let (Some(new_key), Some(old_key)) = (new_key, old_key)
            && new_key != old_key
        {
            let new_record = lookup_hex(store, new_key)?
                .and_then(|manifest| KeyRecord::from_json(&manifest.preimage));
            let old_record = lookup_hex(store, old_key)?
                .and_then(|manifest| KeyRecord::from_json(&manifest.preimage));
            if let (Some(new_record), Some(old_record)) = (new_record, old_record) {
                reason.causes = explain(store, &new_record, &old_record, depth + 1)?;
            }
        } else if new_key.is_some() && new_key == old_key {
            reason.text = format!(
                "input {name} changed: stage {upstream} produced different output for the same key (forced rerun or non-deterministic)"
            );
        }
        reasons.push(reason);
    }
    for name in old_inputs.keys() {
        if !inputs.contains_key(name) {
            reasons.push(Reason::new(format!("input {name} removed")));
        }
    }
    Ok(reasons)
}

/// `a.b.c → value` for every leaf of a JSON object (arrays are leaves: they replace as a whole).
fn flatten(value: &Json) -> BTreeMap<String, Json> {
    let mut out = BTreeMap::new();
    fn walk(value: &Json, prefix: &str, out: &mut BTreeMap<String, Json>) {
        match value {
            Json::Object(map) if !map.is_empty() && !map.contains_key("input") => {
                for (key, item) in map {
                    let path = if prefix.is_empty() {
                        key.clone()
                    } else {
                        format!("{prefix}.{key}")
                    };
                    walk(item, &path, out);
                }
            }
            Json::Object(map) if map.contains_key("input") => {}
            other => {
                if !prefix.is_empty() {
                    out.insert(prefix.to_string(), other.clone());
                }
            }
        }
    }
    walk(value, "", &mut out);
    out
}

/// A JSON value as a person reads it in a reason: strings unquoted.
fn show(value: &Json) -> String {
    match value {
        Json::String(text) => text.clone(),
        Json::Null => "(none)".into(),
        other => other.to_string(),
    }
}

/// The committed output folder of a stage, if committed (for `sheared path`).
pub fn output_path(
    store: &Store,
    status: &NodeStatus,
) -> Result<Option<std::path::PathBuf>, StoreError> {
    match &status.committed {
        Some(commit) => store.outputs(&commit.manifest).map(Some),
        None => Ok(None),
    }
}

/// The manifest of a key written as hex in a provenance record (without dropping broken entries:
/// only its preimage is read).
fn lookup_hex(store: &Store, hex: &str) -> Result<Option<Manifest>, StoreError> {
    match hex.parse::<Digest>() {
        Ok(key) => store.manifest(&key),
        Err(_) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(
        kind: &str,
        version: u32,
        config: Json,
        settings: Json,
        inputs: Json,
        provenance: Json,
    ) -> KeyRecord {
        let preimage = key::preimage(kind, version, &config, &settings, &inputs);
        KeyRecord {
            key: key::key_of(&preimage),
            preimage,
            provenance,
        }
    }

    #[test]
    fn explain_names_params_settings_versions_and_inputs() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let old = record(
            "prune",
            3,
            json!({ "target": { "hidden": 2560 }, "lr": 0.1, "model": { "input": "model" } }),
            json!({ "seed": 17 }),
            json!({ "model": "aa", "data": "bb" }),
            json!({ "model": { "path": "/m" }, "data": { "stage": "tokenize", "key": "00" } }),
        );
        let new = record(
            "prune",
            4,
            json!({ "target": { "hidden": 2048 }, "model": { "input": "model" }, "steps": 5 }),
            json!({ "seed": 18 }),
            json!({ "model": "cc", "data": "dd" }),
            json!({ "model": { "path": "/m" }, "data": { "stage": "tokenize", "key": "11" } }),
        );
        let reasons: Vec<String> = explain(&store, &new, &old, 0)
            .unwrap()
            .iter()
            .map(Reason::one_line)
            .collect();
        assert_eq!(
            reasons,
            [
                "kind prune implementation 3 → 4",
                "param steps: (unset) → 5",
                "param target.hidden: 2560 → 2048",
                "param lr: 0.1 → (unset)",
                "setting seed: 17 → 18",
                "input model changed: the content of /m changed",
                "input data changed because stage tokenize re-ran",
            ]
        );
    }

    /// One line names the distinct root changes upstream, not the chain to each of them.
    #[test]
    fn one_line_names_each_upstream_root_once() {
        let because = |text: &str, causes: Vec<Reason>| Reason {
            text: text.into(),
            causes,
        };
        let seed = || Reason::new("setting seed: 18 → 19");
        let reason = because(
            "input model changed because stage consolidate re-ran",
            vec![because(
                "input model changed because stage prune re-ran",
                vec![
                    seed(),
                    because(
                        "input model changed because stage source re-ran",
                        vec![seed(), Reason::new("param steps: 300 → 400")],
                    ),
                ],
            )],
        );
        assert_eq!(
            reason.one_line(),
            "input model changed because stage consolidate re-ran (upstream: setting seed: 18 → 19; \
             param steps: 300 → 400)"
        );
        assert_eq!(seed().one_line(), "setting seed: 18 → 19");
    }

    #[test]
    fn flatten_skips_input_markers() {
        let value = json!({ "target": { "hidden": 4, "heads": 2 }, "model": { "input": "model" }, "list": [1, 2] });
        let flat = flatten(&value);
        assert_eq!(
            flat.keys().collect::<Vec<_>>(),
            ["list", "target.heads", "target.hidden"]
        );
    }
}
