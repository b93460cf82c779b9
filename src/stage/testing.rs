//! Test helpers shared by the stage kinds' tests: one way to build a [`StageContext`] and run a
//! stage the way the runner does (validate, then run), instead of a hand-built context per test.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{CancelFlag, NullReporter, Reporter, Settings, Stage, StageContext, StageError};

/// One run of a stage in a test: its inputs, output and scratch folders, and settings.
pub(crate) struct StageRun {
    pub(crate) inputs: BTreeMap<String, PathBuf>,
    pub(crate) out_dir: PathBuf,
    pub(crate) scratch_dir: PathBuf,
    pub(crate) settings: Settings,
}

impl StageRun {
    /// Output in `dir/out`, scratch in `dir/scratch`, the test device's settings, no inputs.
    pub(crate) fn in_dir(dir: &Path) -> Self {
        StageRun::with_dirs(&dir.join("out"), &dir.join("scratch"))
    }

    pub(crate) fn with_dirs(out_dir: &Path, scratch_dir: &Path) -> Self {
        StageRun {
            inputs: BTreeMap::new(),
            out_dir: out_dir.to_path_buf(),
            scratch_dir: scratch_dir.to_path_buf(),
            settings: Settings::for_tests(),
        }
    }

    /// Adds the input at `key` (a dotted recipe key such as `data` or `domains.web`).
    pub(crate) fn input(mut self, key: &str, path: &Path) -> Self {
        self.inputs.insert(key.to_string(), path.to_path_buf());
        self
    }

    pub(crate) fn settings(mut self, settings: Settings) -> Self {
        self.settings = settings;
        self
    }

    /// Validates the normalised `config` and runs `stage` on it (the output folder is created, as
    /// the runner creates it).
    pub(crate) fn run_with(
        &self,
        stage: &dyn Stage,
        config: &toml::Table,
        reporter: &dyn Reporter,
        cancel: CancelFlag,
    ) -> Result<(), StageError> {
        std::fs::create_dir_all(&self.out_dir).unwrap();
        let ctx = StageContext {
            name: stage.kind(),
            config,
            inputs: self.inputs.clone(),
            out_dir: self.out_dir.clone(),
            scratch_dir: self.scratch_dir.clone(),
            settings: &self.settings,
            reporter,
            cancel,
        };
        stage.validate(config)?;
        stage.run(&ctx)
    }

    /// [`StageRun::run_with`] without a reporter or cancellation.
    pub(crate) fn run(&self, stage: &dyn Stage, config: &toml::Table) -> Result<(), StageError> {
        self.run_with(stage, config, &NullReporter, CancelFlag::default())
    }
}
