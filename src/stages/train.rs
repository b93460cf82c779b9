//! Stage kind `train`: (continued) pre-training of a LLaMA with a loading policy, resumable to the bit.
//!
//! ```toml
//! [stages.continue]
//! kind = "train"
//! model = { stage = "consolidate" }          # or: init = { config = { hidden_size = 64, num_hidden_layers = 2, ... } }
//! data = { stage = "tokenize" }
//! steps = 1000                                # or: tokens = 50_000_000
//! batch_size = 16
//! grad_accum = 2
//! seq_len = 256
//! lr = 1e-4
//! warmup_fraction = 0.03                      # or: warmup_steps = 30
//! loading = { policy = "dynamic", reference = { stage = "eval-source" } }
//! ```
//!
//! Outputs (the folder is itself a Hugging Face model folder, so later stages take `{ stage = "continue" }`
//! as a model): `config.json`, `model.safetensors`, tokenizer files, `metrics.jsonl` (one line per step and
//! per evaluation), `metrics.json` (final numbers, `{"domains": {"<domain>": {"loss", "weight", "tokens_seen"}}}`
//! so a train output can itself serve as a reference), and `domain_weights.json` (final weights + history).

use std::path::Path;

use anyhow::Context;
use burn::module::Module;
use serde::{Deserialize, Serialize};

use crate::data::loading::{LoadingConfig, LoadingError, LoadingPolicy};
use crate::data::{
    CONSUMED_WINDOWS_FILE, ConsumedWindows, DomainMixture, Exhaustion, TokenizedDataset,
    eval_windows,
};
use crate::model::memory::Step;
use crate::model::precision::Precision;
use crate::model::{Llama, LlamaConfig, load_hf, save_hf};
use crate::stage::preview::StepBatch;
use crate::stage::{
    InputRef, Preview, PreviewInputs, Stage, StageContext, StageError, normalize_typed,
};
use crate::train::driver::{self, DriverParts, DriverSettings, NonFinitePolicy};
use crate::train::optim::AdamWSettings;
use crate::train::schedule::LrSchedule;
use crate::train::trainer::{LmStep, Teacher};

/// `init = { config = { ... } }`: a randomly initialised model; keys are Hugging Face `config.json` keys.
/// `vocab_size`, `bos_token_id` and `eos_token_id` default to the tokenizer's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitSpec {
    pub config: toml::Table,
}

/// `train.distill`: loss = (1 − alpha)·CE + alpha·T²·KL(teacher ‖ student) on the logits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistillConfig {
    /// A Hugging Face model folder with the student's vocabulary (usually the unpruned source).
    pub teacher: InputRef,
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    #[serde(default = "default_temperature")]
    pub temperature: f64,
}

fn default_alpha() -> f64 {
    0.5
}
fn default_temperature() -> f64 {
    1.0
}

/// The `train` stage table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<InputRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<InitSpec>,
    pub data: InputRef,
    /// Optimiser steps; exactly one of `steps` and `tokens`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<u64>,
    /// Training tokens; the run takes ceil(tokens / (batch_size · seq_len)) steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
    /// Sequences per optimiser step (global batch).
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Micro-batches per step; `batch_size` must be a multiple.
    #[serde(default = "default_one")]
    pub grad_accum: usize,
    #[serde(default = "default_seq_len")]
    pub seq_len: usize,
    /// Peak learning rate (paper: 1e-4).
    #[serde(default = "default_lr")]
    pub lr: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup_steps: Option<u64>,
    /// Warm-up as a fraction of all steps (paper: 0.03); the default when neither warm-up key is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup_fraction: Option<f64>,
    /// Cosine decay ends at `lr · min_lr_ratio` (paper: 0.1).
    #[serde(default = "default_min_lr_ratio")]
    pub min_lr_ratio: f64,
    #[serde(default = "default_betas")]
    pub betas: [f64; 2],
    #[serde(default = "default_eps")]
    pub eps: f64,
    #[serde(default)]
    pub weight_decay: f64,
    /// Parameter-path substrings exempt from weight decay.
    #[serde(default = "default_no_decay")]
    pub no_decay: Vec<String>,
    /// Global gradient-norm clip (paper: 1.0); 0 disables.
    #[serde(default = "default_grad_clip")]
    pub grad_clip: f64,
    #[serde(default = "default_eval_every")]
    pub eval_every: u64,
    /// Eval batches (of `batch_size / grad_accum` sequences) per domain.
    #[serde(default = "default_eval_batches")]
    pub eval_batches: usize,
    #[serde(default = "default_true")]
    pub eval_first: bool,
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: u64,
    #[serde(default = "default_keep_checkpoints")]
    pub keep_checkpoints: usize,
    #[serde(default)]
    pub loading: LoadingConfig,
    /// When a domain runs out of windows: `wrap` (new shuffled epoch) or `error`.
    #[serde(default)]
    pub exhaustion: Exhaustion,
    /// A stage whose training windows this one skips (`{ stage = "prune" }`): its output's
    /// `consumed_windows.json` says where its sampler stopped in each domain, and this stage starts
    /// there, so continued pre-training reads other windows than pruning did (as the reference
    /// prunes and continues on disjoint data) until a domain runs out and wraps. Needs the same
    /// `seed` and `seq_len` as that stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_windows_of: Option<InputRef>,
    /// Logit distillation from a frozen teacher (Minitron): `distill = { teacher = { stage =
    /// "source" }, alpha = 0.5, temperature = 1.0 }`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distill: Option<DistillConfig>,
    /// Overrides `[settings] seed` for this stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// The master weights' type: `f32`, always. bf16 *compute* is the run-wide
    /// `settings.precision = "bf16"` (mixed precision over these fp32 masters; docs/training.md).
    #[serde(default = "default_dtype")]
    pub dtype: String,
    /// Per-decoder-layer activation checkpointing: keep only each layer's input between forward and
    /// backward and recompute one layer at a time (same gradients, about one more forward of compute,
    /// activation memory of one layer instead of all; `sheared plan` shows the estimate).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub activation_checkpointing: bool,
    /// Keep AdamW's moments in host memory between optimiser steps and on the device only during
    /// each parameter's update: the device needs 8 bytes per parameter less through forward and
    /// backward (what lets a 7B prune fit one GPU), at the cost of copying the moments out and back
    /// once per step. The results are bit-identical, so this key is not part of the cache key.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub optimizer_offload: bool,
    #[serde(default)]
    pub on_non_finite: NonFinitePolicy,
    #[serde(default = "default_max_skipped")]
    pub max_skipped_batches: u64,
}

fn default_batch_size() -> usize {
    8
}
fn default_one() -> usize {
    1
}
fn default_seq_len() -> usize {
    256
}
fn default_lr() -> f64 {
    1e-4
}
fn default_min_lr_ratio() -> f64 {
    0.1
}
fn default_betas() -> [f64; 2] {
    AdamWSettings::default().betas
}
fn default_eps() -> f64 {
    AdamWSettings::default().eps
}
fn default_no_decay() -> Vec<String> {
    AdamWSettings::default().no_decay
}
fn default_grad_clip() -> f64 {
    1.0
}
fn default_eval_every() -> u64 {
    100
}
fn default_eval_batches() -> usize {
    2
}
fn default_true() -> bool {
    true
}
fn default_checkpoint_every() -> u64 {
    100
}
fn default_keep_checkpoints() -> usize {
    2
}
fn default_dtype() -> String {
    "f32".into()
}
fn default_max_skipped() -> u64 {
    10
}

impl TrainConfig {
    /// The keys that shape one step's memory ([`Preview::add_step_memory`]).
    pub fn step_batch(&self, precision: Precision) -> StepBatch {
        StepBatch {
            batch_size: self.batch_size,
            grad_accum: self.grad_accum,
            seq_len: self.seq_len,
            activation_checkpointing: self.activation_checkpointing,
            optimizer_offload: self.optimizer_offload,
            precision,
            teacher: None,
        }
    }

    pub fn adamw(&self) -> AdamWSettings {
        AdamWSettings {
            betas: self.betas,
            eps: self.eps,
            weight_decay: self.weight_decay,
            no_decay: self.no_decay.clone(),
        }
    }

    /// Total optimiser steps (validated config).
    pub fn total_steps(&self) -> u64 {
        match (self.steps, self.tokens) {
            (Some(steps), _) => steps,
            (None, Some(tokens)) => tokens.div_ceil((self.batch_size * self.seq_len).max(1) as u64),
            (None, None) => 0,
        }
    }

    pub fn warmup_steps(&self) -> u64 {
        match (self.warmup_steps, self.warmup_fraction) {
            (Some(steps), _) => steps,
            (None, Some(fraction)) => (fraction * self.total_steps() as f64).round() as u64,
            (None, None) => 0,
        }
    }

    pub fn schedule(&self) -> LrSchedule {
        LrSchedule {
            peak_lr: self.lr,
            warmup_steps: self.warmup_steps(),
            total_steps: self.total_steps(),
            min_lr_ratio: self.min_lr_ratio,
        }
    }

    pub fn driver_settings(&self) -> DriverSettings {
        DriverSettings {
            total_steps: self.total_steps(),
            batch_size: self.batch_size,
            grad_accum: self.grad_accum,
            seq_len: self.seq_len,
            grad_clip: self.grad_clip,
            eval_every: self.eval_every,
            eval_first: self.eval_first,
            checkpoint_every: self.checkpoint_every,
            keep_checkpoints: self.keep_checkpoints,
            on_non_finite: self.on_non_finite,
            max_skipped_batches: self.max_skipped_batches,
            optimizer_offload: self.optimizer_offload,
        }
    }

    /// Every check that needs only the config.
    pub fn check(&self) -> Result<(), StageError> {
        let fail = |key: &str, message: String| Err(StageError::config(key, message));
        match (&self.model, &self.init) {
            (Some(_), Some(_)) => return fail(
                "init",
                "give either `model` (a model to continue) or `init` (a random model), not both"
                    .into(),
            ),
            (None, None) => {
                return fail("model", "missing: write `model = { stage = \"...\" }` or `init = { config = { hidden_size = .., ... } }`".into());
            }
            _ => {}
        }
        match (self.steps, self.tokens) {
            (Some(_), Some(_)) => {
                return fail("tokens", "give either `steps` or `tokens`, not both".into());
            }
            (None, None) => {
                return fail("steps", "missing: set `steps = N` or `tokens = N`".into());
            }
            (Some(0), _) => return fail("steps", "must be at least 1".into()),
            (None, Some(0)) => return fail("tokens", "must be at least 1".into()),
            _ => {}
        }
        if self.batch_size == 0 {
            return fail("batch_size", "must be at least 1".into());
        }
        if self.grad_accum == 0 || !self.batch_size.is_multiple_of(self.grad_accum) {
            return fail(
                "grad_accum",
                format!(
                    "{} must be at least 1 and divide batch_size = {} (micro-batches are batch_size / grad_accum)",
                    self.grad_accum, self.batch_size
                ),
            );
        }
        if self.seq_len == 0 {
            return fail("seq_len", "must be at least 1".into());
        }
        let total = self.total_steps();
        if self.warmup_steps.is_some() && self.warmup_fraction.is_some() {
            return fail(
                "warmup_fraction",
                "give either `warmup_steps` or `warmup_fraction`, not both".into(),
            );
        }
        if let Some(fraction) = self.warmup_fraction
            && !(0.0..1.0).contains(&fraction)
        {
            return fail("warmup_fraction", format!("{fraction} must be in [0, 1)"));
        }
        let warmup = self.warmup_steps();
        if warmup >= total {
            return fail(
                "warmup_steps",
                format!(
                    "the warm-up ({warmup} steps) must be shorter than the run ({total} steps)"
                ),
            );
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            let hint = if warmup > 0 {
                format!(" (with a warm-up of {warmup} steps the lr would stay 0 throughout)")
            } else {
                String::new()
            };
            return fail(
                "lr",
                format!(
                    "{} must be a positive number{hint}; the paper uses 1e-4",
                    self.lr
                ),
            );
        }
        if !(0.0..=1.0).contains(&self.min_lr_ratio) {
            return fail(
                "min_lr_ratio",
                format!("{} must be in [0, 1]", self.min_lr_ratio),
            );
        }
        self.adamw()
            .validate()
            .map_err(|error| StageError::config(error.key, error.message))?;
        if !(self.grad_clip.is_finite() && self.grad_clip >= 0.0) {
            return fail(
                "grad_clip",
                format!("{} must be >= 0 (0 disables clipping)", self.grad_clip),
            );
        }
        if self.keep_checkpoints == 0 {
            return fail(
                "keep_checkpoints",
                "must be at least 1 (the newest checkpoint is what a rerun resumes from)".into(),
            );
        }
        if self.dtype != "f32" {
            return fail(
                "dtype",
                format!(
                    "\"{}\" is not supported: the master weights are always \"f32\"; for bf16 compute set \
                     `precision = \"bf16\"` under [settings] (mixed precision over fp32 masters)",
                    self.dtype
                ),
            );
        }
        if let Some(distill) = &self.distill {
            if !(0.0..=1.0).contains(&distill.alpha) {
                return fail(
                    "distill.alpha",
                    format!(
                        "{} must be in [0, 1] (the weight of the KL term; Minitron uses 1.0, 0.5 mixes in the LM loss)",
                        distill.alpha
                    ),
                );
            }
            if !(distill.temperature.is_finite() && distill.temperature > 0.0) {
                return fail(
                    "distill.temperature",
                    format!(
                        "{} must be a positive number (1.0 is plain logits)",
                        distill.temperature
                    ),
                );
            }
        }
        self.loading.validate().map_err(loading_error)?;
        if let LoadingConfig::Dynamic(dynamic) = &self.loading {
            if self.eval_batches == 0 {
                return fail(
                    "eval_batches",
                    "dynamic loading needs per-domain eval losses; set eval_batches >= 1".into(),
                );
            }
            if self.eval_every == 0 && dynamic.update_every.is_none() {
                return fail("eval_every", "dynamic loading updates after each evaluation; set eval_every >= 1 or loading.update_every".into());
            }
        }
        Ok(())
    }
}

fn loading_error(error: LoadingError) -> StageError {
    match error {
        LoadingError::Config { key, message } => {
            StageError::config(format!("loading.{key}"), message)
        }
        LoadingError::ReferenceFile { path, message } => {
            StageError::input("loading.reference", format!("{path}: {message}"))
        }
        other => StageError::Other(other.into()),
    }
}

pub struct TrainStage;

impl Stage for TrainStage {
    fn kind(&self) -> &'static str {
        "train"
    }
    fn version(&self) -> u32 {
        1
    }
    fn about(&self) -> &'static str {
        "(continued) pre-training with static/uniform/dynamic batch loading; resumable checkpoints"
    }
    fn settings_in_key(&self) -> &'static [&'static str] {
        &["seed", "device", "precision"]
    }
    fn execution_keys(&self) -> &'static [&'static str] {
        crate::train::driver::EXECUTION_KEYS
    }
    fn normalize(&self, table: &toml::Table) -> Result<toml::Table, StageError> {
        let (mut config, _) = normalize_typed::<TrainConfig>(table)?;
        if config.warmup_steps.is_none() && config.warmup_fraction.is_none() {
            config.warmup_fraction = Some(0.03);
        }
        match toml::Value::try_from(&config).map_err(|error| StageError::Other(error.into()))? {
            toml::Value::Table(table) => Ok(table),
            _ => Err(StageError::Other(anyhow::anyhow!(
                "train config did not serialise to a table"
            ))),
        }
    }
    fn validate(&self, config: &toml::Table) -> Result<(), StageError> {
        let (config, _) = normalize_typed::<TrainConfig>(config)?;
        config.check()
    }
    fn preview(&self, config: &toml::Table, inputs: &PreviewInputs<'_>) -> Preview {
        let Ok((config, _)) = normalize_typed::<TrainConfig>(config) else {
            return Preview::default();
        };
        let model_config = match &config.init {
            Some(spec) => {
                let from_data: Vec<(&str, serde_json::Value)> = inputs
                    .vocab_size("data")
                    .map(|vocab| ("vocab_size", serde_json::json!(vocab)))
                    .into_iter()
                    .collect();
                init_config(spec, &from_data).ok()
            }
            None => inputs.model_config("model"),
        };
        let mut preview = model_config
            .clone()
            .map(Preview::of_model)
            .unwrap_or_default();
        preview.add_tokens(config.total_steps(), config.batch_size, config.seq_len);
        if let Some(model_config) = &model_config {
            let step = Step::Train {
                grad_accum: config.grad_accum.max(1),
            };
            let mut batch = config.step_batch(inputs.precision);
            batch.teacher = config
                .distill
                .as_ref()
                .and_then(|_| inputs.model_config("distill.teacher"));
            preview.add_step_memory(model_config, step, batch);
        }
        preview
    }
    fn run(&self, ctx: &StageContext<'_>) -> Result<(), StageError> {
        let (config, _) = normalize_typed::<TrainConfig>(ctx.config)?;
        config.check()?;
        run_train(&config, ctx)
    }
}

/// Builds the model config of `init = { config = .. }`; the `config.json` keys it leaves out take
/// the values in `from_data` (the tokenizer's `vocab_size`, `bos_token_id`, `eos_token_id`).
fn init_config(
    spec: &InitSpec,
    from_data: &[(&str, serde_json::Value)],
) -> Result<LlamaConfig, StageError> {
    let mut json = serde_json::to_value(&spec.config)
        .map_err(|error| StageError::config("init.config", error.to_string()))?;
    if let Some(object) = json.as_object_mut() {
        for (key, value) in from_data {
            object.entry(*key).or_insert(value.clone());
        }
    }
    let origin = Path::new("init.config");
    let config = LlamaConfig::from_json(&json, origin)
        .map_err(|error| StageError::config("init.config", error.to_string()))?;
    config
        .validate(origin)
        .map_err(|error| StageError::config("init.config", error.to_string()))?;
    if !(config.initializer_range.is_finite() && config.initializer_range > 0.0) {
        return Err(StageError::config(
            "init.config.initializer_range",
            format!(
                "{} must be a positive number (HF default 0.02)",
                config.initializer_range
            ),
        ));
    }
    Ok(config)
}

/// Windows of `seq_len + 1` tokens in each domain's train split.
fn train_windows(dataset: &TokenizedDataset, seq_len: usize) -> Vec<u64> {
    dataset
        .manifest()
        .domains
        .iter()
        .map(|domain| {
            if domain.train_tokens > seq_len as u64 {
                (domain.train_tokens - 1) / seq_len as u64
            } else {
                0
            }
        })
        .collect()
}

/// "A batch size the data cannot fill": one batch needs more distinct windows than the train split
/// holds, or (with `exhaustion = "error"`) the run needs more than a domain can give.
fn check_data_fills_batches(
    config: &TrainConfig,
    dataset: &TokenizedDataset,
    weights: &[f64],
) -> Result<(), StageError> {
    let windows = train_windows(dataset, config.seq_len);
    let total_windows: u64 = windows.iter().sum();
    if (config.batch_size as u64) > total_windows {
        return Err(StageError::config(
            "batch_size",
            format!(
                "{} sequences of {} tokens per step, but the training data holds only {total_windows} such sequences; \
                 lower batch_size or seq_len, or add data",
                config.batch_size,
                config.seq_len + 1
            ),
        ));
    }
    if config.exhaustion == Exhaustion::Error {
        let needed = config.total_steps() as f64 * config.batch_size as f64;
        for ((domain, available), weight) in dataset.domains().iter().zip(&windows).zip(weights) {
            let expected = needed * weight;
            if expected > *available as f64 {
                return Err(StageError::config(
                    "exhaustion",
                    format!(
                        "domain `{domain}` would be drawn about {expected:.0} times but holds {available} sequences of {} tokens; \
                         use exhaustion = \"wrap\", fewer steps, or a smaller weight",
                        config.seq_len + 1
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn run_train(config: &TrainConfig, ctx: &StageContext<'_>) -> Result<(), StageError> {
    let seed = config.seed.unwrap_or(ctx.settings.seed);
    let device = crate::model::device::parse(&ctx.settings.device)
        .map_err(|error| StageError::Other(error.into()))?;
    let data_dir = ctx.input("data")?;
    let dataset = TokenizedDataset::open(data_dir)
        .map_err(|error| StageError::input("data", error.to_string()))?;
    let domains = dataset.domains().to_vec();
    let reference_input = ctx
        .inputs
        .get("loading.reference")
        .map(|path| path.as_path());
    let policy =
        LoadingPolicy::new(&config.loading, &domains, reference_input).map_err(loading_error)?;
    check_data_fills_batches(config, &dataset, policy.weights())?;

    // The model: loaded or seeded random init, on an autodiff device.
    let train_device = device.clone().autodiff();
    let model: Llama = match (&config.model, &config.init) {
        (Some(_), _) => {
            let dir = ctx.input("model")?;
            load_hf(dir, &train_device)
                .map_err(|error| StageError::input("model", error.to_string()))?
        }
        (None, Some(spec)) => {
            let from_data = [
                ("vocab_size", serde_json::json!(dataset.vocab_size())),
                ("bos_token_id", serde_json::json!(dataset.bos_id())),
                ("eos_token_id", serde_json::json!(dataset.eos_id())),
            ];
            let model_config = init_config(spec, &from_data)?;
            // HF-style init (normal(0, initializer_range), norms 1) from the stage's own seeded stream.
            let std = model_config.initializer_range;
            crate::model::init::seeded_normal_init(
                Llama::new(&model_config, &train_device),
                seed,
                std,
            )
        }
        (None, None) => return Err(StageError::config("model", "missing")),
    };
    let model_vocab = model.config().vocab_size;
    if model_vocab != dataset.vocab_size() {
        return Err(StageError::input(
            if config.model.is_some() {
                "model"
            } else {
                "init.config.vocab_size"
            },
            format!(
                "the model's vocabulary has {model_vocab} tokens but the data's tokenizer has {}; train on data tokenized \
                 with the model's own tokenizer",
                dataset.vocab_size()
            ),
        ));
    }
    // Matrix products in `settings.precision`; the parameters (and so the optimiser and every
    // checkpoint) stay fp32.
    let model = model.with_precision(ctx.settings.precision);
    let teacher = match &config.distill {
        None => None,
        Some(distill) => {
            let dir = ctx.input("distill.teacher")?;
            let teacher = load_hf(dir, &device)
                .map_err(|error| StageError::input("distill.teacher", error.to_string()))?;
            let teacher_vocab = teacher.config().vocab_size;
            if teacher_vocab != model_vocab {
                return Err(StageError::input(
                    "distill.teacher",
                    format!(
                        "the teacher's vocabulary has {teacher_vocab} tokens, the student's {model_vocab}; logit \
                         distillation needs one tokenizer (distil from the model this one was pruned from)"
                    ),
                ));
            }
            Some(Teacher {
                model: teacher.with_precision(ctx.settings.precision),
                alpha: distill.alpha,
                temperature: distill.temperature,
            })
        }
    };

    let settings = config.driver_settings();
    let eval = if config.eval_batches > 0 {
        eval_windows(
            &dataset,
            config.seq_len,
            config.eval_batches * settings.micro_batch_size(),
        )
        .map_err(|error| StageError::input("data", error.to_string()))?
    } else {
        Vec::new()
    };
    let mut mixture = DomainMixture::new(&dataset, config.seq_len, seed, config.exhaustion)
        .map_err(|error| StageError::input("data", error.to_string()))?;
    if config.skip_windows_of.is_some() {
        let path = ctx.input("skip_windows_of")?.join(CONSUMED_WINDOWS_FILE);
        let text = std::fs::read_to_string(&path).map_err(|error| {
            StageError::input(
                "skip_windows_of",
                format!(
                    "{}: {error}; point it at a stage that records the windows it drew (`prune`)",
                    path.display()
                ),
            )
        })?;
        let consumed: ConsumedWindows = serde_json::from_str(&text).map_err(|error| {
            StageError::input("skip_windows_of", format!("{}: {error}", path.display()))
        })?;
        mixture
            .skip_consumed(&consumed)
            .map_err(|error| StageError::input("skip_windows_of", error.to_string()))?;
    }
    let fingerprint = driver::fingerprint(
        ctx.config,
        serde_json::json!({
            "seed": seed, "device": ctx.settings.device, "kind": "train", "version": TrainStage.version(),
        }),
    );

    let outcome = driver::run(
        &mut LmStep {
            schedule: config.schedule(),
            activation_checkpointing: config.activation_checkpointing,
            teacher,
        },
        &settings,
        DriverParts {
            model,
            optimizer: config.adamw().build(),
            mixture,
            policy,
            eval,
        },
        ctx.scratch_dir.as_path(),
        &fingerprint,
        ctx.reporter,
        &ctx.cancel,
    )?;

    // Outputs: HF folder at the root, metrics, weights.
    let out = ctx.out_dir.as_path();
    save_hf(&outcome.model.valid(), out, Some(&dataset.tokenizer_path())).map_err(|error| {
        StageError::Other(anyhow::Error::new(error).context("writing the trained model"))
    })?;
    let metrics_source = ctx.scratch_dir.join(driver::METRICS_FILE);
    std::fs::copy(&metrics_source, out.join(driver::METRICS_FILE))
        .with_context(|| format!("copying {}", metrics_source.display()))?;

    let weights = outcome.policy.weights();
    let mut per_domain = serde_json::Map::new();
    for (index, domain) in domains.iter().enumerate() {
        let mut entry = serde_json::json!({
            "weight": weights[index],
            "tokens_seen": outcome.tokens_per_domain[index],
        });
        if let Some(loss) = outcome.final_eval.get(index) {
            entry["loss"] = serde_json::json!(loss);
        }
        if let Some(rule) = outcome.policy.dynamic_rule() {
            entry["reference_loss"] = serde_json::json!(rule.reference[index]);
        }
        per_domain.insert(domain.clone(), entry);
    }
    let counts = outcome.model.config().parameter_counts();
    let metrics = serde_json::json!({
        "steps": outcome.steps,
        "tokens": outcome.tokens_per_domain.iter().sum::<u64>(),
        "final_loss": outcome.final_loss,
        "eval_loss_mean": if outcome.final_eval.is_empty() { None } else { Some(outcome.final_eval.iter().sum::<f64>() / outcome.final_eval.len() as f64) },
        "domains": per_domain,
        "skipped_batches": outcome.skipped_batches,
        "resumed_from_step": outcome.resumed_from,
        "parameters": counts.total,
        "non_embedding_parameters": counts.non_embedding,
        "tokens_per_s": if outcome.timing.steps_s > 0.0 {
            Some((outcome.timing.steps as f64 * (config.batch_size * config.seq_len) as f64) / outcome.timing.steps_s)
        } else { None },
        "outside_model_fraction": outcome.timing.outside_model_fraction(),
        "timing": outcome.timing,
    });
    let metrics_path = out.join("metrics.json");
    std::fs::write(
        &metrics_path,
        serde_json::to_string_pretty(&metrics).unwrap_or_default() + "\n",
    )
    .with_context(|| format!("writing {}", metrics_path.display()))?;
    let weights_json = serde_json::json!({
        "domain_weights": serde_json::Value::Object(outcome.policy.domain_weights()),
        "history": outcome.policy.history(),
    });
    let weights_path = out.join("domain_weights.json");
    std::fs::write(
        &weights_path,
        serde_json::to_string_pretty(&weights_json).unwrap_or_default() + "\n",
    )
    .with_context(|| format!("writing {}", weights_path.display()))?;
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::data::TokenDtype;
    use crate::data::dataset::testing::{FakeManifest, write_dataset_with};
    use crate::model::hf::testing::f32_values;
    use crate::model::precision::Precision;
    use crate::progress::testing::CancelAtStep;
    use crate::stage::testing::StageRun;
    use crate::stage::{CancelFlag, NullReporter, Reporter, Settings};

    pub const VOCAB: u32 = 48;

    /// A small deterministic token stream: `kind` 0 counts, 1 is noise, 2 repeats a phrase.
    fn stream(kind: u32, length: usize, salt: u64) -> Vec<u32> {
        let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ salt;
        let mut next = move || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as u32
        };
        let phrase: Vec<u32> = (0..11).map(|i| (i * 7 + 5) % VOCAB).collect();
        (0..length)
            .map(|i| match kind {
                0 => (i as u32 * 3 + 2) % VOCAB,
                1 => next() % VOCAB,
                _ => {
                    if next() % 10 == 0 {
                        next() % VOCAB
                    } else {
                        phrase[i % phrase.len()]
                    }
                }
            })
            .collect()
    }

    /// Writes a tokenize-stage-shaped folder with three domains and a 48-token vocabulary.
    pub fn write_fixture(dir: &Path, train_tokens: usize) {
        let domains: Vec<(&str, Vec<u32>, Vec<u32>)> = ["counting", "noise", "phrases"]
            .into_iter()
            .enumerate()
            .map(|(kind, name)| {
                let salt = kind as u64 * 10;
                let train = stream(kind as u32, train_tokens, 1 + salt);
                let eval = stream(kind as u32, 400, 2 + salt);
                (name, train, eval)
            })
            .collect();
        let spec = FakeManifest {
            dtype: TokenDtype::U16,
            vocab_size: VOCAB as u64,
            bos_id: 0,
            eos_id: 1,
            seq_len: 8,
        };
        write_dataset_with(dir, &domains, &spec);
    }

    pub const TINY_INIT: &str = r#"
        init = { config = { hidden_size = 16, intermediate_size = 32, num_hidden_layers = 2, num_attention_heads = 2, num_key_value_heads = 2, max_position_embeddings = 64 } }
        data = { stage = "tokenize" }
    "#;

    fn table(extra: &str) -> toml::Table {
        TrainStage
            .normalize(&toml::from_str(&format!("{TINY_INIT}\n{extra}")).unwrap())
            .unwrap()
    }

    struct Run {
        out: PathBuf,
        scratch: PathBuf,
    }

    fn run_stage(
        config: &toml::Table,
        data: &Path,
        run: &Run,
        reporter: &dyn Reporter,
        cancel: CancelFlag,
    ) -> Result<(), StageError> {
        run_stage_with(&Settings::for_tests(), config, data, run, reporter, cancel)
    }

    fn run_stage_with(
        settings: &Settings,
        config: &toml::Table,
        data: &Path,
        run: &Run,
        reporter: &dyn Reporter,
        cancel: CancelFlag,
    ) -> Result<(), StageError> {
        StageRun::with_dirs(&run.out, &run.scratch)
            .settings(settings.clone())
            .input("data", data)
            .run_with(&TrainStage, config, reporter, cancel)
    }

    fn losses(metrics_jsonl: &Path) -> Vec<(u64, String, String)> {
        std::fs::read_to_string(metrics_jsonl)
            .unwrap()
            .lines()
            .map(|line| {
                let record: serde_json::Value = serde_json::from_str(line).unwrap();
                let value = if record["kind"] == "eval" {
                    record["eval_loss"].to_string()
                } else {
                    record["loss"].to_string()
                };
                (
                    record["step"].as_u64().unwrap(),
                    record["kind"].to_string(),
                    value + &record["domain_weights"].to_string(),
                )
            })
            .collect()
    }

    /// The `loss` of every train line of a `metrics.jsonl`, in order.
    fn train_losses(metrics_jsonl: &Path) -> Vec<f64> {
        std::fs::read_to_string(metrics_jsonl)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
            .filter(|record| record["kind"] == "train")
            .map(|record| record["loss"].as_f64().unwrap())
            .collect()
    }

    #[test]
    fn killed_run_resumes_to_the_same_bits() {
        killed_run_resumes_to_the_same_bits_in(Precision::Fp32);
    }

    /// bf16 keeps fp32 masters and fp32 optimiser state in its checkpoints, so resuming is exact too.
    #[test]
    fn killed_bf16_run_resumes_to_the_same_bits() {
        killed_run_resumes_to_the_same_bits_in(Precision::Bf16);
    }

    fn killed_run_resumes_to_the_same_bits_in(precision: Precision) {
        let settings = Settings {
            precision,
            ..Settings::for_tests()
        };
        let run_stage = |config: &toml::Table,
                         data: &Path,
                         run: &Run,
                         reporter: &dyn Reporter,
                         cancel: CancelFlag| {
            run_stage_with(&settings, config, data, run, reporter, cancel)
        };
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        write_fixture(&data, 3000);
        let config = table(
            "steps = 7\nbatch_size = 4\ngrad_accum = 2\nseq_len = 8\nlr = 3e-3\nwarmup_steps = 2\neval_every = 2\n\
             eval_batches = 1\ncheckpoint_every = 2\nkeep_checkpoints = 3\n\
             loading = { policy = \"dynamic\", reference = { counting = 1.0, noise = 3.0, phrases = 1.5 } }",
        );
        let whole = Run {
            out: dir.path().join("a/out"),
            scratch: dir.path().join("a/scratch"),
        };
        run_stage(&config, &data, &whole, &NullReporter, CancelFlag::default()).unwrap();

        // Cancelled after step 5: the loop writes a checkpoint at 5. Deleting it simulates a hard kill
        // after step 5 whose newest complete checkpoint is step 4 (metrics of step 5 must be dropped).
        let killed = Run {
            out: dir.path().join("b/out"),
            scratch: dir.path().join("b/scratch"),
        };
        let flag = CancelFlag::default();
        let reporter = CancelAtStep::new(5, &flag);
        let error = run_stage(&config, &data, &killed, &reporter, flag).unwrap_err();
        assert!(matches!(error, StageError::Cancelled), "{error}");
        let checkpoints = killed.scratch.join(driver::CHECKPOINT_DIR);
        assert_eq!(
            crate::train::checkpoint::newest_complete(&checkpoints)
                .unwrap()
                .unwrap()
                .step,
            5
        );
        std::fs::remove_dir_all(checkpoints.join("step-000000005")).unwrap();
        let resumed = Run {
            out: dir.path().join("b/out2"),
            scratch: killed.scratch.clone(),
        };
        run_stage(
            &config,
            &data,
            &resumed,
            &NullReporter,
            CancelFlag::default(),
        )
        .unwrap();

        let weights_a = std::fs::read(whole.out.join("model.safetensors")).unwrap();
        let weights_b = std::fs::read(resumed.out.join("model.safetensors")).unwrap();
        assert!(
            weights_a == weights_b,
            "resumed weights differ from the uninterrupted run"
        );
        assert_eq!(
            losses(&whole.out.join("metrics.jsonl")),
            losses(&resumed.out.join("metrics.jsonl"))
        );
        let metrics: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(resumed.out.join("metrics.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(metrics["resumed_from_step"], 4);
        assert_eq!(metrics["steps"], 7);
        let weights: f64 = ["counting", "noise", "phrases"]
            .iter()
            .map(|d| metrics["domains"][d]["weight"].as_f64().unwrap())
            .sum();
        assert!((weights - 1.0).abs() < 1e-12);
        // The policy did move: the noise domain is furthest above... or below its reference; weights are not uniform.
        assert!(metrics["domains"]["noise"]["weight"].as_f64().unwrap() != 1.0 / 3.0);
    }

    /// A few steps in bf16 land close to fp32 (same data, same init) without being the same
    /// computation, and the weights written are fp32 masters.
    #[test]
    fn bf16_training_tracks_fp32() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        write_fixture(&data, 3000);
        let config = table(
            "steps = 6\nbatch_size = 4\nseq_len = 8\nlr = 3e-3\nwarmup_steps = 2\neval_every = 3\neval_batches = 1",
        );
        let mut finals = Vec::new();
        for precision in [Precision::Fp32, Precision::Bf16] {
            let run = Run {
                out: dir.path().join(format!("{precision}/out")),
                scratch: dir.path().join(format!("{precision}/scratch")),
            };
            let settings = Settings {
                precision,
                ..Settings::for_tests()
            };
            run_stage_with(
                &settings,
                &config,
                &data,
                &run,
                &NullReporter,
                CancelFlag::default(),
            )
            .unwrap();
            let train = train_losses(&run.out.join("metrics.jsonl"));
            let weights = std::fs::read(run.out.join("model.safetensors")).unwrap();
            let tensors = safetensors::SafeTensors::deserialize(&weights).unwrap();
            for (name, view) in tensors.tensors() {
                assert_eq!(view.dtype(), safetensors::Dtype::F32, "{precision}: {name}");
            }
            finals.push(train);
        }
        let (fp32, bf16) = (&finals[0], &finals[1]);
        assert_eq!(fp32.len(), 6);
        assert_ne!(fp32, bf16, "bf16 must not be the fp32 computation");
        for (step, (a, b)) in fp32.iter().zip(bf16).enumerate() {
            assert!(
                (a - b).abs() < 0.02 * a,
                "step {step}: fp32 loss {a}, bf16 loss {b}"
            );
        }
    }

    /// Activation checkpointing changes memory, not the training: the same losses and weights as the
    /// plain run (up to float summation order), with gradient accumulation in the loop.
    #[test]
    fn activation_checkpointing_trains_the_same_model() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        write_fixture(&data, 3000);
        let base = "steps = 4\nbatch_size = 4\ngrad_accum = 2\nseq_len = 8\nlr = 3e-3\nwarmup_steps = 1\n\
                    eval_every = 2\neval_batches = 1";
        let mut runs = Vec::new();
        for (name, extra) in [
            ("plain", ""),
            ("checkpointed", "activation_checkpointing = true"),
        ] {
            let run = Run {
                out: dir.path().join(format!("{name}/out")),
                scratch: dir.path().join(format!("{name}/scratch")),
            };
            let config = table(&format!("{base}\n{extra}"));
            run_stage(&config, &data, &run, &NullReporter, CancelFlag::default()).unwrap();
            let train = train_losses(&run.out.join("metrics.jsonl"));
            let values = f32_values(&run.out.join("model.safetensors"));
            runs.push((train, values));
        }
        let ((plain_losses, plain), (losses_checkpointed, checkpointed)) = (&runs[0], &runs[1]);
        assert_eq!(plain_losses.len(), 4);
        for (a, b) in plain_losses.iter().zip(losses_checkpointed) {
            assert!(
                (a - b).abs() < 1e-5 * a,
                "losses {plain_losses:?} vs {losses_checkpointed:?}"
            );
        }
        let difference = plain
            .iter()
            .zip(checkpointed)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(difference < 1e-4, "weights differ by up to {difference}");
    }

    /// The train stage's `metrics.json` is what [`crate::stage::StageMetrics`] describes: typing
    /// loses nothing, an eval's `tokens_from` finds its tokens, and its final eval losses serve as
    /// dynamic loading's reference when another stage names it `{ stage = .. }`.
    #[test]
    fn its_metrics_json_reads_back_as_stage_metrics() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        write_fixture(&data, 2000);
        let config = table("steps = 2\nbatch_size = 2\nseq_len = 8\neval_batches = 1");
        let run = Run {
            out: dir.path().join("out"),
            scratch: dir.path().join("scratch"),
        };
        run_stage(&config, &data, &run, &NullReporter, CancelFlag::default()).unwrap();
        let path = run.out.join(crate::stage::METRICS_FILE);
        let written: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let metrics = crate::stage::StageMetrics::read(&path).unwrap();
        assert_eq!(serde_json::to_value(&metrics).unwrap(), written);
        assert_eq!(metrics.tokens(), written["tokens"].as_f64());
        assert!(metrics.tokens().is_some_and(|tokens| tokens > 0.0));
        let domains: Vec<String> = ["counting", "noise", "phrases"].map(String::from).into();
        let losses: Vec<f64> = domains
            .iter()
            .map(|domain| metrics.domain_loss(domain).unwrap())
            .collect();
        assert_eq!(
            crate::data::loading::reference_from_metrics(&run.out, &domains).unwrap(),
            losses
        );
    }

    /// `optimizer_offload` moves AdamW's moments to the host and back, never changes them: the same
    /// weights, bit for bit, as the plain run; and a run killed while offloading resumes from its
    /// checkpoint without it (the switch is outside the cache key and the checkpoint fingerprint).
    #[test]
    fn optimizer_offload_trains_the_same_bits_and_resumes_across_the_switch() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        write_fixture(&data, 3000);
        let base = "steps = 4\nbatch_size = 4\ngrad_accum = 2\nseq_len = 8\nlr = 3e-3\nwarmup_steps = 1\n\
                    eval_every = 2\neval_batches = 1\ncheckpoint_every = 1";
        let plain = table(base);
        let offloaded = table(&format!("{base}\noptimizer_offload = true"));
        assert_eq!(offloaded["optimizer_offload"].as_bool(), Some(true));
        assert!(!plain.contains_key("optimizer_offload"), "default left out");
        let run_of = |name: &str| Run {
            out: dir.path().join(format!("{name}/out")),
            scratch: dir.path().join(format!("{name}/scratch")),
        };
        let weights = |run: &Run| std::fs::read(run.out.join("model.safetensors")).unwrap();
        let reference = run_of("plain");
        run_stage(
            &plain,
            &data,
            &reference,
            &NullReporter,
            CancelFlag::default(),
        )
        .unwrap();
        let with_offload = run_of("offloaded");
        run_stage(
            &offloaded,
            &data,
            &with_offload,
            &NullReporter,
            CancelFlag::default(),
        )
        .unwrap();
        assert!(
            weights(&reference) == weights(&with_offload),
            "offloading changed the weights"
        );
        let metrics: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(with_offload.out.join("metrics.json")).unwrap(),
        )
        .unwrap();
        assert!(
            metrics["timing"]["offload_s"].as_f64().unwrap() > 0.0,
            "{metrics}"
        );

        let killed = run_of("killed");
        let flag = CancelFlag::default();
        let reporter = CancelAtStep::new(2, &flag);
        let error = run_stage(&offloaded, &data, &killed, &reporter, flag).unwrap_err();
        assert!(matches!(error, StageError::Cancelled), "{error}");
        let resumed = Run {
            out: dir.path().join("killed/out2"),
            scratch: killed.scratch.clone(),
        };
        run_stage(
            &plain,
            &data,
            &resumed,
            &NullReporter,
            CancelFlag::default(),
        )
        .unwrap();
        assert!(
            weights(&reference) == weights(&resumed),
            "the resumed run differs"
        );
        let log = std::fs::read_to_string(resumed.out.join("metrics.jsonl")).unwrap();
        assert_eq!(log.lines().filter(|l| l.contains("\"train\"")).count(), 4);
    }

    /// Logit distillation: with alpha = 0 it is plain training (the KL term has no weight); with
    /// alpha = 1 and the teacher equal to the student's own starting point the first step's KL is 0
    /// and the run logs both parts; a teacher of another vocabulary is refused before training.
    #[test]
    fn distillation_mixes_the_teacher_in_and_checks_its_vocabulary() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        write_fixture(&data, 2000);
        let base =
            "steps = 3\nbatch_size = 2\nseq_len = 8\nlr = 3e-3\nwarmup_steps = 0\neval_batches = 1";
        let run_of = |name: &str| Run {
            out: dir.path().join(format!("{name}/out")),
            scratch: dir.path().join(format!("{name}/scratch")),
        };
        let run_with_teacher = |name: &str, extra: &str, teacher: &Path| {
            let run = run_of(name);
            StageRun::with_dirs(&run.out, &run.scratch)
                .settings(Settings::for_tests())
                .input("data", &data)
                .input("distill.teacher", teacher)
                .run_with(
                    &TrainStage,
                    &table(&format!("{base}\n{extra}")),
                    &NullReporter,
                    CancelFlag::default(),
                )
                .map(|()| run)
        };
        // The teacher: a model trained by the same stage.
        let teacher = run_of("teacher");
        run_stage(
            &table(base),
            &data,
            &teacher,
            &NullReporter,
            CancelFlag::default(),
        )
        .unwrap();

        let plain = run_of("plain");
        run_stage(
            &table(base),
            &data,
            &plain,
            &NullReporter,
            CancelFlag::default(),
        )
        .unwrap();
        let weightless = run_with_teacher(
            "weightless",
            "distill = { teacher = { path = \"t\" }, alpha = 0.0 }",
            &teacher.out,
        )
        .unwrap();
        let values = |run: &Run| f32_values(&run.out.join("model.safetensors"));
        let difference = values(&plain)
            .iter()
            .zip(values(&weightless))
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(
            difference <= 1e-7,
            "alpha 0 changed the weights by {difference}"
        );

        let distilled = run_with_teacher(
            "distilled",
            "distill = { teacher = { path = \"t\" }, alpha = 1.0, temperature = 2.0 }",
            &teacher.out,
        )
        .unwrap();
        assert_ne!(values(&distilled), values(&plain));
        // The checkpointed backward computes the same distillation step.
        let checkpointed = run_with_teacher(
            "distilled-checkpointed",
            "distill = { teacher = { path = \"t\" }, alpha = 1.0, temperature = 2.0 }\nactivation_checkpointing = true",
            &teacher.out,
        )
        .unwrap();
        let difference = values(&distilled)
            .iter()
            .zip(values(&checkpointed))
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(
            difference < 1e-4,
            "checkpointed distillation differs by {difference}"
        );
        let lines: Vec<serde_json::Value> =
            std::fs::read_to_string(distilled.out.join("metrics.jsonl"))
                .unwrap()
                .lines()
                .map(|line| serde_json::from_str(line).unwrap())
                .filter(|line: &serde_json::Value| line["kind"] == "train")
                .collect();
        assert_eq!(lines.len(), 3);
        for line in &lines {
            let (loss, kl) = (
                line["loss"].as_f64().unwrap(),
                line["kl_loss"].as_f64().unwrap(),
            );
            assert!(line["ce_loss"].as_f64().unwrap() > 0.0, "{line}");
            assert!(
                (loss - kl).abs() <= 1e-5 * loss.abs().max(1e-3),
                "alpha 1: loss = KL: {line}"
            );
        }

        // Another vocabulary: refused with the key, before any step.
        let config_path = teacher.out.join("config.json");
        let mut config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
        config["vocab_size"] = serde_json::json!(config["vocab_size"].as_u64().unwrap() + 1);
        let other = dir.path().join("other-teacher");
        std::fs::create_dir_all(&other).unwrap();
        for file in std::fs::read_dir(&teacher.out).unwrap() {
            let file = file.unwrap().path();
            std::fs::copy(&file, other.join(file.file_name().unwrap())).unwrap();
        }
        std::fs::write(other.join("config.json"), config.to_string()).unwrap();
        let error = run_with_teacher(
            "mismatch",
            "distill = { teacher = { path = \"t\" } }",
            &other,
        )
        .err()
        .unwrap()
        .to_string();
        assert!(
            error.contains("distill.teacher") || error.contains("vocab"),
            "{error}"
        );
        assert!(!dir.path().join("mismatch/out/model.safetensors").exists());
        // Bad values name their key.
        let bad = TrainStage
            .normalize(
                &toml::from_str(&format!(
                    "{TINY_INIT}\n{base}\ndistill = {{ teacher = {{ path = \"t\" }}, alpha = 1.5 }}"
                ))
                .unwrap(),
            )
            .and_then(|table| TrainStage.validate(&table));
        match bad {
            Err(StageError::Config { key, .. }) => assert_eq!(key, "distill.alpha"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_checkpoint_of_another_config_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        write_fixture(&data, 2000);
        let first =
            table("steps = 2\nbatch_size = 2\nseq_len = 8\ncheckpoint_every = 1\neval_batches = 1");
        let run = Run {
            out: dir.path().join("out"),
            scratch: dir.path().join("scratch"),
        };
        run_stage(&first, &data, &run, &NullReporter, CancelFlag::default()).unwrap();
        let second = table(
            "steps = 2\nbatch_size = 2\nseq_len = 8\ncheckpoint_every = 1\neval_batches = 1\nlr = 5e-4",
        );
        let rerun = Run {
            out: dir.path().join("out2"),
            scratch: run.scratch.clone(),
        };
        let error = run_stage(&second, &data, &rerun, &NullReporter, CancelFlag::default())
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("different configuration") && error.contains("delete"),
            "{error}"
        );
    }

    #[test]
    fn non_finite_loss_stops_with_step_domains_and_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        write_fixture(&data, 2000);
        // lr 1e30 without clipping blows the weights up to ~1e30 in one step; the next loss is NaN.
        let config = table(
            "steps = 5\nbatch_size = 2\nseq_len = 8\nlr = 1e30\nwarmup_steps = 0\ngrad_clip = 0.0\ncheckpoint_every = 1\neval_batches = 1\neval_first = false",
        );
        let run = Run {
            out: dir.path().join("out"),
            scratch: dir.path().join("scratch"),
        };
        let error = run_stage(&config, &data, &run, &NullReporter, CancelFlag::default())
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("non-finite") && error.contains("at step 2"),
            "{error}"
        );
        assert!(
            error.contains("last good checkpoint") && error.contains("step-000000001"),
            "{error}"
        );
        assert!(
            ["counting×", "noise×", "phrases×"]
                .iter()
                .any(|d| error.contains(d)),
            "{error}"
        );
        assert!(
            !run.out.join("model.safetensors").exists(),
            "no weights may be written"
        );

        let skip = table(
            "steps = 5\nbatch_size = 2\nseq_len = 8\nlr = 1e30\nwarmup_steps = 0\ngrad_clip = 0.0\ncheckpoint_every = 1\n\
             eval_batches = 1\neval_first = false\non_non_finite = \"skip_batch\"\nmax_skipped_batches = 2",
        );
        let run = Run {
            out: dir.path().join("out2"),
            scratch: dir.path().join("scratch2"),
        };
        let error = run_stage(&skip, &data, &run, &NullReporter, CancelFlag::default())
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("3 batches with a non-finite loss were skipped"),
            "{error}"
        );
        let skipped = std::fs::read_to_string(run.scratch.join(driver::METRICS_FILE))
            .unwrap()
            .matches("\"skipped\"")
            .count();
        assert_eq!(skipped, 3);
    }

    fn config_error(extra: &str) -> String {
        let table: toml::Table = toml::from_str(&format!("{TINY_INIT}\n{extra}")).unwrap();
        match TrainStage
            .normalize(&table)
            .and_then(|normal| TrainStage.validate(&normal))
        {
            Ok(()) => panic!("accepted: {extra}"),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn bad_config_is_rejected_before_compute() {
        assert!(config_error("steps = 0").contains("`steps`: must be at least 1"));
        let error = config_error("steps = 10\nlr = 0.0\nwarmup_steps = 2");
        assert!(
            error.contains("`lr`") && error.contains("warm-up of 2 steps"),
            "{error}"
        );
        assert!(
            config_error("steps = 10\nbatch_size = 6\ngrad_accum = 4").contains("`grad_accum`")
        );
        assert!(config_error("tokens = 100\nsteps = 3").contains("`tokens`"));
        assert!(config_error("steps = 10\nwarmup_steps = 10").contains("`warmup_steps`"));
        assert!(config_error("steps = 10\nbetas = [0.9, 1.5]").contains("`betas`"));
        let error = config_error(
            "steps = 10\nloading = { policy = \"static\", weights = { counting = 0.0, noise = 0.0 } }",
        );
        assert!(
            error.contains("`loading.weights`") && error.contains("sum to 0"),
            "{error}"
        );
        let error = config_error(
            "steps = 10\neval_batches = 0\nloading = { policy = \"dynamic\", reference = { counting = 1.0 } }",
        );
        assert!(error.contains("`eval_batches`"), "{error}");
        assert!(config_error("steps = 10\ndtype = \"bf16\"").contains("`dtype`"));
        assert!(config_error("steps = 10\nmodel = { stage = \"x\" }").contains("not both"));
        assert!(config_error("steps = 10\nbatch_sise = 3").contains("batch_sise"));
    }

    fn run_error(extra: &str, train_tokens: usize) -> String {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        write_fixture(&data, train_tokens);
        let config = table(extra);
        let run = Run {
            out: dir.path().join("out"),
            scratch: dir.path().join("scratch"),
        };
        let error = run_stage(&config, &data, &run, &NullReporter, CancelFlag::default())
            .unwrap_err()
            .to_string();
        assert!(
            !run.scratch.join(driver::METRICS_FILE).exists(),
            "compute started before the error: {error}"
        );
        error
    }

    #[test]
    fn bad_inputs_are_rejected_before_compute() {
        let error = run_error(
            "steps = 3\nseq_len = 8\nloading = { policy = \"dynamic\", reference = { counting = 1.0, noise = 3.0 } }",
            500,
        );
        assert!(
            error.contains("`loading.reference`") && error.contains("`phrases` is missing"),
            "{error}"
        );
        let error = run_error(
            "steps = 3\nseq_len = 8\nloading = { policy = \"dynamic\", reference = { counting = 1.0, noise = 3.0, phrases = 1.0, phrase = 2.0 } }",
            500,
        );
        assert!(
            error.contains("loading.reference.phrase") && error.contains("did you mean `phrases`"),
            "{error}"
        );
        let error = run_error("steps = 3\nseq_len = 8\nbatch_size = 200", 100);
        assert!(
            error.contains("`batch_size`") && error.contains("holds only 36"),
            "{error}"
        );
        let error = run_error(
            "steps = 100\nseq_len = 8\nbatch_size = 8\nexhaustion = \"error\"",
            200,
        );
        assert!(error.contains("`exhaustion`"), "{error}");

        // vocabulary mismatch: a model with 99 tokens against the 48-token data
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        write_fixture(&data, 500);
        let config = TrainStage
            .normalize(
                &toml::from_str(
                    "init = { config = { vocab_size = 99, hidden_size = 16, intermediate_size = 32, num_hidden_layers = 1, \
                     num_attention_heads = 2, num_key_value_heads = 2 } }\ndata = { stage = \"tokenize\" }\nsteps = 2\nseq_len = 8",
                )
                .unwrap(),
            )
            .unwrap();
        let run = Run {
            out: dir.path().join("out"),
            scratch: dir.path().join("scratch"),
        };
        let error = run_stage(&config, &data, &run, &NullReporter, CancelFlag::default())
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("99 tokens") && error.contains("48"),
            "{error}"
        );
    }
}
