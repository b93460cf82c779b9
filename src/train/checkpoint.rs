//! Atomic in-stage checkpoints for resuming a killed training or pruning run to the bit.
//!
//! Layout under a root folder (the stage's scratch dir, e.g. `<scratch>/checkpoints`):
//!
//! ```text
//! step-000000120/          a complete checkpoint (the name appears only after everything is on disk)
//!   model.bpk              burnpack: parameters *with their ParamIds*, which the optimiser state is keyed by
//!   optimizer.bpk          burnpack: AdamW moments and step counts per ParamId
//!   state.json             { format_version, step, fingerprint, payload } — the caller's exact state
//! .tmp-step-000000140-…/   an interrupted write; ignored and removed by the next save
//! ```
//!
//! A checkpoint is written into a `.tmp-*` folder, every file is fsynced, and the folder is renamed to
//! `step-N` (atomic on POSIX). So a folder named `step-N` is always complete, whatever moment the
//! process was killed at. SafeTensors would lose the ParamIds and silently reset the optimiser (see
//! burn notes §4.1), which is why the model is stored as burnpack here and exported as HF only at the end.
//!
//! The `fingerprint` hashes the configuration that determines the run's numbers; [`load`] refuses a
//! checkpoint whose fingerprint differs, so a changed recipe never continues from stale state.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::optim::ModuleOptimizer;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub const MODEL_FILE: &str = "model.bpk";
pub const OPTIMIZER_FILE: &str = "optimizer.bpk";
pub const STATE_FILE: &str = "state.json";
const FORMAT_VERSION: u32 = 1;
const STEP_PREFIX: &str = "step-";
const TMP_PREFIX: &str = ".tmp-";

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint I/O at {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("checkpoint {path}: {message}")]
    Record { path: PathBuf, message: String },
    #[error("checkpoint state {path} is unreadable: {message}")]
    State { path: PathBuf, message: String },
    #[error(
        "checkpoint {path} was written by a different configuration (fingerprint {found}, this run {expected}); \
         it is not loaded. Restore the configuration it was made with, or delete {path} to start over"
    )]
    FingerprintMismatch {
        path: PathBuf,
        found: String,
        expected: String,
    },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `state.json`: the step, the configuration fingerprint and the caller's payload (sampler, loading
/// policy, RNG, running totals, ...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointState<T> {
    pub format_version: u32,
    /// Number of optimiser steps completed.
    pub step: u64,
    pub fingerprint: String,
    pub payload: T,
}

/// A complete checkpoint folder found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub dir: PathBuf,
    pub step: u64,
}

/// A stable hash (blake3, hex) of the JSON form of `config`.
pub fn fingerprint(config: &impl Serialize) -> String {
    let json = serde_json::to_vec(config).unwrap_or_default();
    blake3::hash(&json).to_hex().to_string()
}

fn step_dir_name(step: u64) -> String {
    format!("{STEP_PREFIX}{step:09}")
}

fn sync_file(path: &Path) -> Result<(), CheckpointError> {
    fs::File::open(path)
        .and_then(|file| file.sync_all())
        .map_err(io_error(path))
}

/// Writes a checkpoint for `step` under `root` atomically, then deletes all but the newest `keep`
/// complete checkpoints (`keep` is at least 1) and any leftovers of interrupted writes.
pub fn save<M: Module, T: Serialize>(
    root: &Path,
    step: u64,
    fingerprint: &str,
    model: &M,
    optimizer: &ModuleOptimizer,
    payload: &T,
    keep: usize,
) -> Result<Checkpoint, CheckpointError> {
    fs::create_dir_all(root).map_err(io_error(root))?;
    let final_dir = root.join(step_dir_name(step));
    let tmp_dir = root.join(format!(
        "{TMP_PREFIX}{}-{}",
        step_dir_name(step),
        std::process::id()
    ));
    if tmp_dir.exists() {
        fs::remove_dir_all(&tmp_dir).map_err(io_error(&tmp_dir))?;
    }
    fs::create_dir_all(&tmp_dir).map_err(io_error(&tmp_dir))?;

    let model_path = tmp_dir.join(MODEL_FILE);
    model
        .clone()
        .save_file(&model_path)
        .map_err(|error| CheckpointError::Record {
            path: model_path.clone(),
            message: error.to_string(),
        })?;
    let optimizer_path = tmp_dir.join(OPTIMIZER_FILE);
    optimizer
        .save(&optimizer_path)
        .map_err(|error| CheckpointError::Record {
            path: optimizer_path.clone(),
            message: error.to_string(),
        })?;
    let state_path = tmp_dir.join(STATE_FILE);
    let state = CheckpointState {
        format_version: FORMAT_VERSION,
        step,
        fingerprint: fingerprint.to_string(),
        payload,
    };
    let json = serde_json::to_vec_pretty(&state).map_err(|error| CheckpointError::State {
        path: state_path.clone(),
        message: error.to_string(),
    })?;
    let mut file = fs::File::create(&state_path).map_err(io_error(&state_path))?;
    file.write_all(&json)
        .and_then(|()| file.sync_all())
        .map_err(io_error(&state_path))?;
    sync_file(&model_path)?;
    sync_file(&optimizer_path)?;
    sync_file(&tmp_dir)?;

    if final_dir.exists() {
        // Only reachable when a run re-saves a step it resumed from; the new copy is equivalent.
        fs::remove_dir_all(&final_dir).map_err(io_error(&final_dir))?;
    }
    fs::rename(&tmp_dir, &final_dir).map_err(io_error(&final_dir))?;
    sync_file(root)?;

    prune_old(root, keep.max(1))?;
    Ok(Checkpoint {
        dir: final_dir,
        step,
    })
}

/// All complete checkpoints under `root`, oldest first. A missing root means none.
pub fn list_complete(root: &Path) -> Result<Vec<Checkpoint>, CheckpointError> {
    let entries = match fs::read_dir(root) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => {
            return Err(CheckpointError::Io {
                path: root.to_path_buf(),
                source: error,
            });
        }
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_error(root))?;
        let name = entry.file_name();
        let Some(step) = name
            .to_str()
            .and_then(|name| name.strip_prefix(STEP_PREFIX))
            .and_then(|s| s.parse::<u64>().ok())
        else {
            continue;
        };
        let dir = entry.path();
        if [MODEL_FILE, OPTIMIZER_FILE, STATE_FILE]
            .iter()
            .all(|file| dir.join(file).is_file())
        {
            found.push(Checkpoint { dir, step });
        }
    }
    found.sort_by_key(|checkpoint| checkpoint.step);
    Ok(found)
}

/// The complete checkpoint with the highest step under `root`, if any.
pub fn newest_complete(root: &Path) -> Result<Option<Checkpoint>, CheckpointError> {
    Ok(list_complete(root)?.pop())
}

fn prune_old(root: &Path, keep: usize) -> Result<(), CheckpointError> {
    let complete = list_complete(root)?;
    for old in complete.iter().take(complete.len().saturating_sub(keep)) {
        fs::remove_dir_all(&old.dir).map_err(io_error(&old.dir))?;
    }
    for entry in fs::read_dir(root).map_err(io_error(root))?.flatten() {
        if entry
            .file_name()
            .to_str()
            .is_some_and(|name| name.starts_with(TMP_PREFIX))
        {
            let path = entry.path();
            fs::remove_dir_all(&path).map_err(io_error(&path))?;
        }
    }
    Ok(())
}

/// Reads `state.json` of a checkpoint folder and checks its fingerprint against `expected`.
pub fn read_state<T: DeserializeOwned>(
    dir: &Path,
    expected: &str,
) -> Result<CheckpointState<T>, CheckpointError> {
    let path = dir.join(STATE_FILE);
    let bytes = fs::read(&path).map_err(io_error(&path))?;
    let state: CheckpointState<T> =
        serde_json::from_slice(&bytes).map_err(|error| CheckpointError::State {
            path: path.clone(),
            message: error.to_string(),
        })?;
    if state.format_version != FORMAT_VERSION {
        return Err(CheckpointError::State {
            path,
            message: format!(
                "format version {} (this build reads {FORMAT_VERSION})",
                state.format_version
            ),
        });
    }
    if state.fingerprint != expected {
        return Err(CheckpointError::FingerprintMismatch {
            path: dir.to_path_buf(),
            found: state.fingerprint,
            expected: expected.to_string(),
        });
    }
    Ok(state)
}

/// Restores a checkpoint: checks the fingerprint first (nothing is loaded on a mismatch), then loads
/// the parameters (and their ParamIds) into `model` and the optimiser state into `optimizer`, which
/// must have the same parameter groups as the one saved.
pub fn load<M: Module, T: DeserializeOwned>(
    checkpoint: &Checkpoint,
    expected_fingerprint: &str,
    model: M,
    optimizer: ModuleOptimizer,
) -> Result<(M, ModuleOptimizer, CheckpointState<T>), CheckpointError> {
    let state = read_state(&checkpoint.dir, expected_fingerprint)?;
    let model_path = checkpoint.dir.join(MODEL_FILE);
    let model = model
        .try_load_file(&model_path)
        .map_err(|error| CheckpointError::Record {
            path: model_path.clone(),
            message: error.to_string(),
        })?;
    let optimizer_path = checkpoint.dir.join(OPTIMIZER_FILE);
    let optimizer = optimizer
        .load(&optimizer_path)
        .map_err(|error| CheckpointError::Record {
            path: optimizer_path.clone(),
            message: error.to_string(),
        })?;
    Ok((model, optimizer, state))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::optim::AdamWSettings;
    use burn::module::Param;
    use burn::optim::GradientsParams;
    use burn::tensor::{Device, Tensor, TensorData};

    #[derive(Module, Debug)]
    struct Tiny {
        weight: Param<Tensor<2>>,
        norm: Param<Tensor<1>>,
    }

    fn tiny(device: &Device, offset: f32) -> Tiny {
        Tiny {
            weight: Param::from_tensor(Tensor::from_data(
                TensorData::new(
                    (0..6).map(|i| i as f32 * 0.1 + offset).collect::<Vec<_>>(),
                    [2, 3],
                ),
                device,
            )),
            norm: Param::from_tensor(Tensor::from_data(
                TensorData::new(vec![1.0f32 + offset; 3], [3]),
                device,
            )),
        }
    }

    fn train_step(
        model: Tiny,
        optimizer: &mut ModuleOptimizer,
        step: u64,
        device: &Device,
    ) -> Tiny {
        let input = Tensor::<2>::from_data(
            TensorData::new(
                vec![0.3f32 * step as f32, -1.0, 0.5, 2.0, 0.1, -0.4],
                [3, 2],
            ),
            device,
        );
        let out = model.weight.val().matmul(input); // [2, 2]
        let loss = (out.square().sum() + (model.norm.val() - 0.5).square().sum()).sqrt();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        optimizer.step(0.05, model, grads)
    }

    fn bits(model: &Tiny) -> Vec<u32> {
        let mut out: Vec<u32> = model
            .weight
            .val()
            .into_data()
            .try_into_vec_as::<f32>()
            .unwrap()
            .iter()
            .map(|v| v.to_bits())
            .collect();
        out.extend(
            model
                .norm
                .val()
                .into_data()
                .try_into_vec_as::<f32>()
                .unwrap()
                .iter()
                .map(|v| v.to_bits()),
        );
        out
    }

    #[test]
    fn resume_from_checkpoint_is_bit_identical() {
        let device = crate::model::device::for_tests().autodiff();
        let settings = AdamWSettings {
            weight_decay: 0.1,
            ..Default::default()
        };
        let root = tempfile::tempdir().unwrap();

        // uninterrupted: 6 steps, checkpoint after 3
        let mut optimizer = settings.build();
        let mut model = tiny(&device, 0.0);
        for step in 0..6 {
            model = train_step(model, &mut optimizer, step, &device);
            if step == 2 {
                save(
                    root.path(),
                    3,
                    "abc",
                    &model,
                    &optimizer,
                    &serde_json::json!({"cursor": 42}),
                    2,
                )
                .unwrap();
            }
        }
        let reference = bits(&model);

        // resumed: a fresh model (different ParamIds, different values) and optimiser
        let checkpoint = newest_complete(root.path()).unwrap().unwrap();
        assert_eq!(checkpoint.step, 3);
        let (mut model, mut optimizer, state): (Tiny, _, CheckpointState<serde_json::Value>) =
            load(&checkpoint, "abc", tiny(&device, 7.0), settings.build()).unwrap();
        assert_eq!(state.payload["cursor"], 42);
        for step in state.step..6 {
            model = train_step(model, &mut optimizer, step, &device);
        }
        assert_eq!(bits(&model), reference);
    }

    #[test]
    fn keeps_only_the_newest_and_ignores_partial_writes() {
        let device = crate::model::device::for_tests();
        let root = tempfile::tempdir().unwrap();
        let model = tiny(&device, 0.0);
        let optimizer = AdamWSettings::default().build();
        // a leftover of a killed write, and a step folder missing its state file
        fs::create_dir_all(root.path().join(".tmp-step-000000009-1")).unwrap();
        fs::create_dir_all(root.path().join("step-000000099")).unwrap();
        for step in [1, 2, 3, 4] {
            save(root.path(), step, "f", &model, &optimizer, &(), 2).unwrap();
        }
        let steps: Vec<u64> = list_complete(root.path())
            .unwrap()
            .iter()
            .map(|c| c.step)
            .collect();
        assert_eq!(steps, vec![3, 4]);
        assert!(!root.path().join(".tmp-step-000000009-1").exists());
        assert_eq!(newest_complete(root.path()).unwrap().unwrap().step, 4);
        assert_eq!(newest_complete(&root.path().join("absent")).unwrap(), None);
    }

    #[test]
    fn a_checkpoint_from_another_config_is_refused() {
        let device = crate::model::device::for_tests();
        let root = tempfile::tempdir().unwrap();
        let optimizer = AdamWSettings::default().build();
        save(
            root.path(),
            5,
            &fingerprint(&"config A"),
            &tiny(&device, 0.0),
            &optimizer,
            &(),
            1,
        )
        .unwrap();
        let checkpoint = newest_complete(root.path()).unwrap().unwrap();
        let Err(error) = load::<Tiny, ()>(
            &checkpoint,
            &fingerprint(&"config B"),
            tiny(&device, 0.0),
            optimizer,
        ) else {
            panic!("a checkpoint from another configuration was loaded");
        };
        assert!(matches!(error, CheckpointError::FingerprintMismatch { .. }));
        assert!(
            error.to_string().contains("different configuration"),
            "{error}"
        );
    }
}
