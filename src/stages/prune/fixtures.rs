//! Test fixtures: a tiny tokenized corpus, a tiny source model, and stage runs around them.

use std::path::{Path, PathBuf};

use crate::data::TokenizedDataset;
use crate::data::tokenize::tests::{documents, spec, write_jsonl};
use crate::data::tokenize::{EvalSplit, tokenize};
use crate::model::{Llama, LlamaConfig, save_hf};
use crate::stage::testing::StageRun;
use crate::stage::{CancelFlag, NullReporter, Reporter, Settings, Stage, StageError};

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
    let config = stage.normalize(&table.parse().unwrap())?;
    let run = inputs.iter().fold(
        StageRun::with_dirs(out_dir, scratch_dir).settings(settings.clone()),
        |run, (key, path)| run.input(key, path),
    );
    run.run_with(stage, &config, reporter, cancel)
}
