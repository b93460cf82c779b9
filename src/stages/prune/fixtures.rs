//! Test fixtures: a tiny tokenized corpus, a tiny source model, and stage contexts around them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::data::TokenizedDataset;
use crate::data::tokenize::tests::{documents, spec, write_jsonl};
use crate::data::tokenize::{EvalSplit, tokenize};
use crate::model::{Llama, LlamaConfig, save_hf};
use crate::stage::{CancelFlag, NullReporter, Reporter, Settings, Stage, StageContext, StageError};

/// A tokenized two-domain corpus (`web`, `code`) and a random 2-layer model over its vocabulary.
pub struct Fixture {
    pub root: tempfile::TempDir,
    pub data: PathBuf,
    pub model: PathBuf,
    pub config: LlamaConfig,
}

pub fn fixture() -> Fixture {
    let root = tempfile::tempdir().unwrap();
    write_jsonl(&root.path().join("web").join("a.jsonl"), &documents(1, 60));
    write_jsonl(&root.path().join("code").join("a.jsonl"), &documents(2, 40));
    let data = root.path().join("data");
    tokenize(
        &spec(root.path(), EvalSplit::Fraction(0.2)),
        &data,
        &NullReporter,
        &CancelFlag::default(),
    )
    .unwrap();
    let dataset = TokenizedDataset::open(&data).unwrap();
    let mut config = LlamaConfig::new(dataset.vocab_size(), 16, 24, 2, 4, 4);
    config.head_dim = 4;
    let device = crate::model::device::for_tests();
    device.seed(5);
    let model_dir = root.path().join("model");
    save_hf(
        &Llama::new(&config, &device),
        &model_dir,
        Some(&dataset.tokenizer_path()),
    )
    .unwrap();
    Fixture {
        data,
        model: model_dir,
        config,
        root,
    }
}

/// Cancels the run when `progress` reports `cancel_at` done steps (a cooperative "kill").
pub struct KillAt {
    pub cancel: CancelFlag,
    pub cancel_at: u64,
    pub seen: AtomicU64,
}

impl Reporter for KillAt {
    fn progress(&self, done: u64, _: u64, _: &str) {
        self.seen.store(done, Ordering::SeqCst);
        if done == self.cancel_at {
            self.cancel.cancel();
        }
    }
    fn message(&self, _: &str) {}
    fn metrics(&self, _: &serde_json::Value) {}
}

/// Run `stage` on the (un-normalised) TOML `table` with `inputs`.
pub fn run_stage(
    stage: &dyn Stage,
    table: &str,
    inputs: &[(&str, &Path)],
    out_dir: &Path,
    scratch_dir: &Path,
    reporter: &dyn Reporter,
    cancel: CancelFlag,
) -> Result<(), StageError> {
    let settings = Settings::for_tests();
    run_stage_with(
        &settings,
        stage,
        table,
        inputs,
        out_dir,
        scratch_dir,
        reporter,
        cancel,
    )
}

/// [`run_stage`] with given run-wide settings.
#[allow(clippy::too_many_arguments)]
pub fn run_stage_with(
    settings: &Settings,
    stage: &dyn Stage,
    table: &str,
    inputs: &[(&str, &Path)],
    out_dir: &Path,
    scratch_dir: &Path,
    reporter: &dyn Reporter,
    cancel: CancelFlag,
) -> Result<(), StageError> {
    let table: toml::Table = table.parse().unwrap();
    let config = stage.normalize(&table)?;
    stage.validate(&config)?;
    std::fs::create_dir_all(out_dir).unwrap();
    std::fs::create_dir_all(scratch_dir).unwrap();
    let inputs: BTreeMap<String, PathBuf> = inputs
        .iter()
        .map(|(k, p)| (k.to_string(), p.to_path_buf()))
        .collect();
    let ctx = StageContext {
        name: "test",
        config: &config,
        inputs,
        out_dir: out_dir.to_path_buf(),
        scratch_dir: scratch_dir.to_path_buf(),
        settings,
        reporter,
        cancel,
    };
    stage.run(&ctx)
}
