//! Stage kind `prune`: targeted structured pruning (paper, arXiv 2310.06694 §2.1;
//! docs/pruning.md).
//!
//! `method = "l0"` trains the source weights, hard-concrete mask logits and Lagrange multipliers
//! together (one loss = LM cross-entropy + Lagrangian, one backward, λ by ascent) until the learned
//! masks reach the target shape. `method = "magnitude"` and `"random"` are the ablation baselines:
//! they pick units of the same target shape by weight norm or at random, with no training;
//! `"layer-drop"` removes whole layers (the top ones, or those of lowest block influence on data) and
//! prunes the other dimensions by magnitude where the target is smaller.
//!
//! Every method writes the same folder, which the `consolidate` stage turns into a dense model:
//! - the full-size HF model (trained weights for l0, the source weights for the baselines);
//! - `masks.safetensors`: the final deterministic masks `{head,intermediate,layer,hidden}_z` (exact
//!   target counts, kept values folded at consolidation) and, for l0, `*_z_loga` and `*_lambda`;
//! - `pruning.json`: method, source and target shape, final kept counts, expected vs target sparsity;
//! - `metrics.jsonl` (l0 only): one record per step and per evaluation;
//! - `consumed_windows.json`: where the sampler stopped in each domain (empty for the baselines), so
//!   that continued pre-training can skip the windows pruning trained on (`train.skip_windows_of`).

#[cfg(test)]
mod fixtures;
mod heuristics;
mod outputs;
#[cfg(test)]
mod stage_tests;
pub mod train_loop;

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::data::loading::{LoadingConfig, LoadingError};
use crate::model::LlamaConfig;
use crate::model::l0::{MaskDims, MaskTarget, PruningModule, default_pruning_modules};
use crate::model::memory::{MaskSet, Step};
use crate::model::precision::Precision;
use crate::stage::preview::{StepBatch, describe_counts};
use crate::stage::{InputRef, Preview, PreviewInputs, Stage, StageContext, StageError};
use crate::train::driver::{DriverSettings, NonFinitePolicy};
use crate::train::optim::AdamWSettings;

pub use outputs::{
    MASKS_FILE, PRUNING_FILE, PruningReport, Shape, consolidated_config, read_final_masks,
};

/// How the units to keep are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Learned hard-concrete masks with the Lagrangian (the paper).
    #[default]
    L0,
    /// Keep the units with the largest weight norm (one shot, no training).
    Magnitude,
    /// Keep random units (seeded), same shape.
    Random,
    /// Drop whole layers to the target's layer count (`drop_layers_by`); the other dimensions are
    /// pruned by magnitude where the target is smaller than the source, kept otherwise.
    #[serde(rename = "layer-drop")]
    LayerDrop,
    /// LLM-Pruner's first-order (Taylor) importance, element-wise: each unit's score is
    /// `Σ |w · ∂loss/∂w|` over every weight of its coupled structure, the gradients summed over
    /// `calibration_batches` batches of the stage's data (one shot, no training).
    Taylor,
}

/// Which layers `method = "layer-drop"` removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DropLayersBy {
    /// The top (last) layers, as "Why Lift so Heavy?" does.
    #[default]
    Top,
    /// The layers with the lowest block influence, `1 − cos` of the residual stream before and after
    /// the layer on `calibration_batches` batches of the stage's data (ShortGPT).
    BlockInfluence,
}

impl DropLayersBy {
    fn is_default(&self) -> bool {
        *self == DropLayersBy::default()
    }
}

/// How often the hard-concrete masks are sampled during an optimiser step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MaskSampling {
    /// A fresh sample for every micro-batch, as the reference draws one per forward call (per
    /// micro-batch and per GPU): more mask noise averaged into each step's gradient.
    #[default]
    PerMicroBatch,
    /// One sample shared by all micro-batches of a step, which makes `grad_accum` a pure memory
    /// trade (the step equals one pass over the whole batch, up to float summation order).
    PerStep,
}

impl MaskSampling {
    fn is_default(&self) -> bool {
        *self == MaskSampling::default()
    }
}

/// How the target's hidden size relates to its heads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeadDimRule {
    /// Heads keep the source's head_dim; hidden may differ from heads × head_dim (config.json then
    /// states `head_dim` explicitly).
    #[default]
    KeepSource,
    /// Require hidden = heads × source head_dim, as in the paper's targets (a stock config in which
    /// transformers derives head_dim itself).
    HiddenEqualsHeadsTimesHeadDim,
}

/// The target architecture. `kv_heads` is needed only for GQA sources whose group count changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetShape {
    pub layers: usize,
    pub hidden: usize,
    pub heads: usize,
    pub intermediate: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_heads: Option<usize>,
}

fn default_steps() -> usize {
    3200
}
fn default_batch_size() -> usize {
    32
}
fn default_seq_len() -> usize {
    4096
}
fn default_lr() -> f64 {
    1e-4
}
fn default_one() -> f64 {
    1.0
}
fn default_min_lr_ratio() -> f64 {
    0.1
}
fn default_eval_batches() -> usize {
    8
}
fn default_grad_accum() -> usize {
    1
}
fn is_default_grad_accum(value: &usize) -> bool {
    *value == default_grad_accum()
}
fn default_betas() -> [f64; 2] {
    AdamWSettings::default().betas
}
fn is_default_betas(value: &[f64; 2]) -> bool {
    *value == default_betas()
}
fn default_eps() -> f64 {
    AdamWSettings::default().eps
}
fn is_default_eps(value: &f64) -> bool {
    *value == default_eps()
}
fn default_keep_checkpoints() -> usize {
    2
}
fn is_default_keep_checkpoints(value: &usize) -> bool {
    *value == default_keep_checkpoints()
}
fn default_max_skipped() -> u64 {
    10
}
fn is_default_max_skipped(value: &u64) -> bool {
    *value == default_max_skipped()
}

/// The `prune` stage table. Defaults are the paper's (§4: 3,200 steps of 32 × 4096 tokens, lr 1e-4,
/// mask/λ lr 1.0, 10 % lr warm-up, 20 % Lagrangian warm-up, cosine to 0.1, clip 1.0, eval every 50);
/// the step-count-dependent ones scale with `steps` when a recipe gives fewer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PruneConfig {
    /// The source model: a HF folder (`{ path = ... }` or `{ stage = ... }`).
    pub model: InputRef,
    /// A `tokenize` stage output; needed by `method = "l0"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<InputRef>,
    #[serde(default)]
    pub method: Method,
    pub target: TargetShape,
    /// The source architecture the recipe expects, as Hugging Face `config.json` keys
    /// (`{ hidden_size = 4096, num_hidden_layers = 32, ... }`). The stage refuses a `model` whose
    /// config differs in any of them (a multi-hour run on the wrong folder is caught at once), and
    /// `sheared plan` counts the source's and the target's parameters from it before the model
    /// folder exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_source: Option<toml::Table>,
    #[serde(default = "default_pruning_modules")]
    pub pruning_modules: Vec<PruningModule>,
    #[serde(default)]
    pub head_dim_rule: HeadDimRule,
    #[serde(default = "default_steps")]
    pub steps: usize,
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Micro-batches per step (`batch_size` must be a multiple): each forward/backward pass takes
    /// `batch_size / grad_accum` sequences; each draws its own mask sample unless `mask_sampling =
    /// "per_step"`.
    #[serde(
        default = "default_grad_accum",
        skip_serializing_if = "is_default_grad_accum"
    )]
    pub grad_accum: usize,
    /// `"per_micro_batch"` (the reference's one sample per forward call) or `"per_step"`.
    #[serde(default, skip_serializing_if = "MaskSampling::is_default")]
    pub mask_sampling: MaskSampling,
    /// `method = "layer-drop"`: `"top"` or `"block_influence"`.
    #[serde(default, skip_serializing_if = "DropLayersBy::is_default")]
    pub drop_layers_by: DropLayersBy,
    /// `method = "taylor"` and `drop_layers_by = "block_influence"`: the batches of `batch_size` ×
    /// `seq_len` tokens they score on (default 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration_batches: Option<usize>,
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
    #[serde(default = "default_seq_len")]
    pub seq_len: usize,
    /// Learning rate of the model weights.
    #[serde(default = "default_lr")]
    pub lr: f64,
    /// Learning rate of the mask logits z_loga.
    #[serde(default = "default_one")]
    pub mask_lr: f64,
    /// Learning rate of the Lagrange multipliers (applied as ascent).
    #[serde(default = "default_one")]
    pub lambda_lr: f64,
    /// Steps over which the Lagrangian's target sparsity rises from 0 (default 20 % of `steps`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lagrangian_warmup_steps: Option<usize>,
    /// Linear learning-rate warm-up (default 10 % of `steps`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup_steps: Option<usize>,
    #[serde(default = "default_min_lr_ratio")]
    pub min_lr_ratio: f64,
    /// Global gradient-norm clip over all parameters (weights, z_loga, λ), as `clip_grad_norm_`.
    #[serde(default = "default_one")]
    pub grad_clip: f64,
    /// Weight decay of the model weights (z_loga and λ never decay).
    #[serde(default)]
    pub weight_decay: f64,
    /// AdamW's (β1, β2) for all three groups (the paper's 0.9, 0.95).
    #[serde(default = "default_betas", skip_serializing_if = "is_default_betas")]
    pub betas: [f64; 2],
    /// AdamW's eps for all three groups.
    #[serde(default = "default_eps", skip_serializing_if = "is_default_eps")]
    pub eps: f64,
    /// Weight parameters whose path contains one of these get no weight decay (default: none, so
    /// `weight_decay` applies to every weight as before; `train` defaults to norms and embeddings).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub no_decay: Vec<String>,
    /// What a NaN/infinite loss does: `stop` (default) or `skip_batch` (up to `max_skipped_batches`).
    #[serde(default, skip_serializing_if = "NonFinitePolicy::is_stop")]
    pub on_non_finite: NonFinitePolicy,
    #[serde(
        default = "default_max_skipped",
        skip_serializing_if = "is_default_max_skipped"
    )]
    pub max_skipped_batches: u64,
    /// Evaluate every this many steps (default `steps / 64`, i.e. 50 of 3,200).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_every: Option<usize>,
    /// Evaluation batches (of `batch_size` sequences) per domain.
    #[serde(default = "default_eval_batches")]
    pub eval_batches: usize,
    /// The mixture policy (`static`, `uniform` or `dynamic` batch loading, paper §2.2); dynamic updates
    /// after each evaluation unless it sets `update_every`.
    #[serde(default)]
    pub loading: LoadingConfig,
    /// In-stage checkpoint every this many steps (default `steps / 10`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_every: Option<usize>,
    /// Newest in-stage checkpoints kept (a cancelled run writes one more before it stops).
    #[serde(
        default = "default_keep_checkpoints",
        skip_serializing_if = "is_default_keep_checkpoints"
    )]
    pub keep_checkpoints: usize,
    /// Overrides `settings.seed` for this stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

impl PruneConfig {
    pub fn warmup_steps(&self) -> usize {
        self.warmup_steps
            .unwrap_or((self.steps as f64 * 0.1).round() as usize)
    }
    pub fn lagrangian_warmup_steps(&self) -> usize {
        self.lagrangian_warmup_steps
            .unwrap_or((self.steps as f64 * 0.2).round() as usize)
    }
    pub fn eval_every(&self) -> usize {
        self.eval_every.unwrap_or((self.steps / 64).max(1))
    }
    pub fn checkpoint_every(&self) -> usize {
        self.checkpoint_every.unwrap_or((self.steps / 10).max(1))
    }

    /// AdamW of the weights; z_loga and λ use the same betas and eps without decay.
    pub fn adamw(&self) -> AdamWSettings {
        AdamWSettings {
            betas: self.betas,
            eps: self.eps,
            weight_decay: self.weight_decay,
            no_decay: self.no_decay.clone(),
        }
    }

    pub fn micro_batch_size(&self) -> usize {
        self.batch_size / self.grad_accum.max(1)
    }

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

    /// What the training driver needs (evaluation only when due, never before the first step).
    pub fn driver_settings(&self) -> DriverSettings {
        DriverSettings {
            total_steps: self.steps as u64,
            batch_size: self.batch_size,
            grad_accum: self.grad_accum,
            seq_len: self.seq_len,
            grad_clip: self.grad_clip,
            eval_every: self.eval_every() as u64,
            eval_first: false,
            checkpoint_every: self.checkpoint_every() as u64,
            keep_checkpoints: self.keep_checkpoints,
            on_non_finite: self.on_non_finite,
            max_skipped_batches: self.max_skipped_batches,
            optimizer_offload: self.optimizer_offload,
        }
    }

    /// Parse a normalised table.
    pub fn from_table(table: &toml::Table) -> Result<Self, StageError> {
        Ok(crate::stage::normalize_typed::<PruneConfig>(table)?.0)
    }

    /// Checks that need the config only (the source-dependent ones are in [`resolve_target`]).
    pub fn check(&self) -> Result<(), StageError> {
        let target = &self.target;
        for (key, value) in [
            ("target.layers", target.layers),
            ("target.hidden", target.hidden),
            ("target.heads", target.heads),
            ("target.intermediate", target.intermediate),
        ] {
            if value == 0 {
                return Err(StageError::config(
                    key,
                    "must be at least 1 (a target cannot remove a whole dimension)",
                ));
            }
        }
        if let Some(kv_heads) = target.kv_heads
            && (kv_heads == 0 || !target.heads.is_multiple_of(kv_heads))
        {
            return Err(StageError::config(
                "target.kv_heads",
                format!(
                    "{kv_heads} key/value heads cannot group {} query heads; use a divisor of target.heads",
                    target.heads
                ),
            ));
        }
        let mut seen = Vec::new();
        for module in &self.pruning_modules {
            if seen.contains(module) {
                return Err(StageError::config(
                    "pruning_modules",
                    format!("`{}` is listed twice", module.name()),
                ));
            }
            seen.push(*module);
        }
        if self.method != Method::LayerDrop && !self.drop_layers_by.is_default() {
            return Err(StageError::config(
                "drop_layers_by",
                "`drop_layers_by` applies to method = \"layer-drop\" only",
            ));
        }
        if !matches!(self.method, Method::LayerDrop | Method::Taylor)
            && self.calibration_batches.is_some()
        {
            return Err(StageError::config(
                "calibration_batches",
                "`calibration_batches` applies to method = \"taylor\" and to method = \"layer-drop\" with \
                 drop_layers_by = \"block_influence\" only",
            ));
        }
        if self.method == Method::Taylor {
            if self.data.is_none() {
                return Err(StageError::config(
                    "data",
                    "method = \"taylor\" scores units by gradients on data: add `data = { stage = \"<your \
                     tokenize stage>\" }`",
                ));
            }
            if self.calibration_batches == Some(0) || self.batch_size == 0 || self.seq_len == 0 {
                return Err(StageError::config(
                    "calibration_batches",
                    "needs at least one batch of at least one sequence (calibration_batches, batch_size, seq_len ≥ 1)",
                ));
            }
            if self.grad_accum == 0 || !self.batch_size.is_multiple_of(self.grad_accum) {
                return Err(StageError::config(
                    "grad_accum",
                    format!(
                        "batch_size = {} must be a multiple of grad_accum = {} (each calibration batch runs as \
                         grad_accum micro-batches)",
                        self.batch_size, self.grad_accum
                    ),
                ));
            }
        }
        if self.method == Method::LayerDrop && self.drop_layers_by == DropLayersBy::BlockInfluence {
            if self.data.is_none() {
                return Err(StageError::config(
                    "data",
                    "drop_layers_by = \"block_influence\" measures the layers on data: add `data = { stage = \"<your \
                     tokenize stage>\" }`, or drop the top layers with drop_layers_by = \"top\"",
                ));
            }
            if self.calibration_batches == Some(0) || self.batch_size == 0 || self.seq_len == 0 {
                return Err(StageError::config(
                    "calibration_batches",
                    "needs at least one batch of at least one sequence (calibration_batches, batch_size, seq_len ≥ 1)",
                ));
            }
        }
        if self.method == Method::L0 {
            if self.data.is_none() {
                return Err(StageError::config(
                    "data",
                    "method = \"l0\" trains on data: add `data = { stage = \"<your tokenize stage>\" }`",
                ));
            }
            if self.pruning_modules.is_empty() {
                return Err(StageError::config(
                    "pruning_modules",
                    "method = \"l0\" needs at least one module to prune",
                ));
            }
            for (key, value) in [
                ("steps", self.steps),
                ("batch_size", self.batch_size),
                ("seq_len", self.seq_len),
                ("eval_batches", self.eval_batches),
                ("eval_every", self.eval_every()),
                ("checkpoint_every", self.checkpoint_every()),
            ] {
                if value == 0 {
                    return Err(StageError::config(key, "must be at least 1"));
                }
            }
            for (key, value) in [
                ("lr", self.lr),
                ("mask_lr", self.mask_lr),
                ("lambda_lr", self.lambda_lr),
            ] {
                if !(value.is_finite() && value >= 0.0) {
                    return Err(StageError::config(
                        key,
                        format!("{value} must be a finite number >= 0"),
                    ));
                }
            }
            if !(0.0..=1.0).contains(&self.min_lr_ratio) {
                return Err(StageError::config(
                    "min_lr_ratio",
                    format!("{} must be in [0, 1]", self.min_lr_ratio),
                ));
            }
            if !(self.grad_clip.is_finite() && self.grad_clip > 0.0) {
                return Err(StageError::config(
                    "grad_clip",
                    format!("{} must be a positive number", self.grad_clip),
                ));
            }
            self.loading.validate().map_err(loading_error)?;
            self.adamw()
                .validate()
                .map_err(|error| StageError::config(error.key, error.message))?;
            if self.grad_accum == 0 || !self.batch_size.is_multiple_of(self.grad_accum) {
                return Err(StageError::config(
                    "grad_accum",
                    format!(
                        "{} must be at least 1 and divide batch_size = {} (micro-batches are batch_size / grad_accum)",
                        self.grad_accum, self.batch_size
                    ),
                ));
            }
            if self.keep_checkpoints == 0 {
                return Err(StageError::config(
                    "keep_checkpoints",
                    "must be at least 1 (the newest checkpoint is what a rerun resumes from)",
                ));
            }
        }
        Ok(())
    }
}

/// A loading-policy error as a stage error whose key is under `loading`.
pub(crate) fn loading_error(error: LoadingError) -> StageError {
    match error {
        LoadingError::Config { key, message } => {
            StageError::config(format!("loading.{key}"), message)
        }
        LoadingError::ReferenceFile { .. } => {
            StageError::input("loading.reference", error.to_string())
        }
        other => StageError::Other(other.into()),
    }
}

/// Read the source model's `config.json` from `model_dir` and check it against `expect_source`.
pub(crate) fn load_source_config(
    config: &PruneConfig,
    model_dir: &Path,
) -> Result<LlamaConfig, StageError> {
    let path = model_dir.join("config.json");
    let bad = |message: String| StageError::input("model", message);
    let text = std::fs::read_to_string(&path)
        .map_err(|error| bad(format!("{}: {error}", path.display())))?;
    let raw: serde_json::Value = serde_json::from_str(&text)
        .map_err(|error| bad(format!("{}: not valid JSON: {error}", path.display())))?;
    let source = LlamaConfig::from_json(&raw, &path).map_err(|error| bad(error.to_string()))?;
    if let Some(expected) = &config.expect_source {
        check_expected_source(expected, &raw, &source, &path)?;
    }
    Ok(source)
}

/// Every key of `expect_source` must have the same value in the model's `config.json` (or, for a key
/// the file leaves out, in transformers' default that the parsed config filled in).
fn check_expected_source(
    expected: &toml::Table,
    raw: &serde_json::Value,
    source: &LlamaConfig,
    path: &Path,
) -> Result<(), StageError> {
    let canonical = source.to_json();
    for (key, want) in expected {
        let want = serde_json::to_value(want).map_err(|error| {
            StageError::config(format!("expect_source.{key}"), error.to_string())
        })?;
        let have = raw.get(key).or_else(|| canonical.get(key));
        let same = match (have, &want) {
            (Some(serde_json::Value::Number(a)), serde_json::Value::Number(b)) => {
                match (a.as_i64(), b.as_i64()) {
                    (Some(a), Some(b)) => a == b,
                    _ => a.as_f64() == b.as_f64(),
                }
            }
            (Some(have), want) => have == want,
            (None, _) => false,
        };
        if !same {
            let have = have.map_or("no such key".to_string(), ToString::to_string);
            return Err(StageError::config(
                format!("expect_source.{key}"),
                format!(
                    "the model's {} has {key} = {have} but the recipe expects {want}; point `model` at the intended \
                     folder, or change expect_source",
                    path.display()
                ),
            ));
        }
    }
    Ok(())
}

/// The source config that `expect_source` describes on its own (when the model folder is absent).
fn expected_source_config(expected: &toml::Table) -> Option<LlamaConfig> {
    let json = serde_json::to_value(expected).ok()?;
    LlamaConfig::from_json(&json, Path::new("expect_source")).ok()
}

/// The target expressed in mask units for a given source, plus the dims of the masks.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedTarget {
    pub dims: MaskDims,
    pub mask_target: MaskTarget,
    /// Query heads per head-mask unit (1 for MHA, the group size for GQA: the model masks whole KV groups).
    pub query_heads_per_unit: usize,
    pub kv_heads: usize,
}

/// Check the target against the source (before any compute) and express it in mask units.
/// Errors name the recipe key at fault.
pub fn resolve_target(
    config: &PruneConfig,
    source: &LlamaConfig,
) -> Result<ResolvedTarget, StageError> {
    let target = &config.target;
    if source.layer_widths.is_some() {
        return Err(StageError::input(
            "model",
            "the source has per-layer widths (an already pruned model); prune a model whose layers all share one shape",
        ));
    }
    for (key, wanted, have, what) in [
        (
            "target.layers",
            target.layers,
            source.num_hidden_layers,
            "layers",
        ),
        (
            "target.hidden",
            target.hidden,
            source.hidden_size,
            "hidden size",
        ),
        (
            "target.heads",
            target.heads,
            source.num_attention_heads,
            "attention heads",
        ),
        (
            "target.intermediate",
            target.intermediate,
            source.intermediate_size,
            "intermediate size",
        ),
    ] {
        if wanted > have {
            return Err(StageError::config(
                key,
                format!(
                    "{wanted} is larger than the source's {have} {what}; pruning can only shrink a model"
                ),
            ));
        }
    }
    let source_kv = source.num_key_value_heads.max(1);
    let group = source.num_attention_heads / source_kv;
    if !target.heads.is_multiple_of(group) {
        return Err(StageError::config(
            "target.heads",
            format!(
                "{} heads do not fill whole key/value groups: the source groups its {} query heads into {} KV heads \
                 ({group} per group) and pruning removes whole groups; use a multiple of {group}",
                target.heads, source.num_attention_heads, source_kv
            ),
        ));
    }
    let kv_heads = target.heads / group;
    if let Some(given) = target.kv_heads
        && given != kv_heads
    {
        return Err(StageError::config(
            "target.kv_heads",
            format!(
                "{given} does not match target.heads = {}: with {group} query heads per KV group the target has {kv_heads} KV heads",
                target.heads
            ),
        ));
    }
    if config.head_dim_rule == HeadDimRule::HiddenEqualsHeadsTimesHeadDim
        && target.hidden != target.heads * source.head_dim
    {
        return Err(StageError::config(
            "target.hidden",
            format!(
                "{} ≠ target.heads × head_dim = {} × {} = {}, which head_dim_rule = \"hidden_equals_heads_times_head_dim\" \
                 requires; change target.hidden or use head_dim_rule = \"keep_source\"",
                target.hidden,
                target.heads,
                source.head_dim,
                target.heads * source.head_dim
            ),
        ));
    }
    let dims = MaskDims {
        layers: source.num_hidden_layers,
        heads: source_kv,
        intermediate: source.intermediate_size,
        hidden: source.hidden_size,
        attention_params_per_head_unit_per_hidden: (2 * group + 2) * source.head_dim,
    };
    let mask_target = MaskTarget {
        layers: target.layers,
        heads: kv_heads,
        intermediate: target.intermediate,
        hidden: target.hidden,
    };
    // A dimension can only shrink through its module.
    if config.method == Method::L0 {
        for module in PruningModule::ALL {
            if !config.pruning_modules.contains(&module)
                && mask_target.count(module) != dims.size(module)
            {
                return Err(StageError::config(
                    "pruning_modules",
                    format!(
                        "the target changes the {} count ({} → {}) but `{}` is not in pruning_modules; add it",
                        module.name(),
                        dims.size(module),
                        mask_target.count(module),
                        module.name()
                    ),
                ));
            }
        }
    }
    Ok(ResolvedTarget {
        dims,
        mask_target,
        query_heads_per_unit: group,
        kv_heads,
    })
}

/// The `prune` stage kind.
pub struct PruneStage;

impl Stage for PruneStage {
    fn kind(&self) -> &'static str {
        "prune"
    }
    fn version(&self) -> u32 {
        // 2: every prune output records `consumed_windows.json`.
        // 3: a mask sample per micro-batch by default (`mask_sampling`).
        // 4: `pruning.json` scores every unit; `random` ranks units by seeded uniform draws.
        4
    }
    fn about(&self) -> &'static str {
        "targeted structured pruning to an exact shape (L0 masks + Lagrangian; magnitude/random/layer-drop baselines)"
    }
    fn settings_in_key(&self) -> &'static [&'static str] {
        &["seed", "device", "precision"]
    }
    fn execution_keys(&self) -> &'static [&'static str] {
        crate::train::driver::EXECUTION_KEYS
    }
    fn normalize(&self, table: &toml::Table) -> Result<toml::Table, StageError> {
        let (mut config, _) = crate::stage::normalize_typed::<PruneConfig>(table)?;
        // Spell out the step-dependent defaults so the cache key and the logs show the values used.
        config.warmup_steps = Some(config.warmup_steps());
        config.lagrangian_warmup_steps = Some(config.lagrangian_warmup_steps());
        config.eval_every = Some(config.eval_every());
        config.checkpoint_every = Some(config.checkpoint_every());
        match toml::Value::try_from(&config).map_err(|error| StageError::Other(error.into()))? {
            toml::Value::Table(back) => Ok(back),
            other => Err(StageError::Other(anyhow::anyhow!(
                "config serialised to a {}",
                other.type_str()
            ))),
        }
    }
    fn validate(&self, config: &toml::Table) -> Result<(), StageError> {
        PruneConfig::from_table(config)?.check()
    }
    fn preview(&self, config: &toml::Table, inputs: &PreviewInputs<'_>) -> Preview {
        let Ok(config) = PruneConfig::from_table(config) else {
            return Preview::default();
        };
        let mut preview = Preview::default();
        let source = match inputs.path("model") {
            Some(dir) => match load_source_config(&config, &dir) {
                Ok(source) => Some(source),
                Err(error) => {
                    preview.facts.push(format!("source: {error}"));
                    None
                }
            },
            None => inputs.model_config("model").or_else(|| {
                config
                    .expect_source
                    .as_ref()
                    .and_then(expected_source_config)
            }),
        };
        if let Some(source) = source {
            match resolve_target(&config, &source) {
                Ok(resolved) => {
                    let target = outputs::target_shape(&resolved).dense_config(&source);
                    let (source_counts, target_counts) =
                        (source.parameter_counts(), target.parameter_counts());
                    preview
                        .parameters
                        .insert("source".into(), source_counts.total);
                    preview
                        .parameters
                        .insert("target".into(), target_counts.total);
                    preview.facts.push(format!(
                        "{} → {} params ({:.1} %)",
                        describe_counts(&source_counts),
                        describe_counts(&target_counts),
                        100.0 * target_counts.total as f64 / source_counts.total.max(1) as f64
                    ));
                    preview.model_config = Some(source);
                    preview.consolidated_config = Some(target);
                }
                Err(error) => preview.facts.push(format!("target: {error}")),
            }
        }
        if config.method == Method::L0 {
            preview.add_tokens(config.steps as u64, config.batch_size, config.seq_len);
            if let Some(source) = preview.model_config.clone() {
                // The full source model with its masks (weights, masks and λ stay fp32).
                let step = Step::Prune {
                    masks: MaskSet::from_modules(&config.pruning_modules),
                    grad_accum: config.grad_accum.max(1),
                };
                preview.add_step_memory(&source, step, config.step_batch(inputs.precision));
            }
        }
        if config.method == Method::Taylor
            && let Some(source) = preview.model_config.clone()
        {
            preview.add_tokens(
                config.calibration_batches.unwrap_or(4) as u64,
                config.batch_size,
                config.seq_len,
            );
            // Forward and backward of the source, gradients summed over the micro-batches.
            let step = Step::Gradients {
                grad_accum: config.grad_accum.max(1),
            };
            preview.add_step_memory(&source, step, config.step_batch(inputs.precision));
        }
        preview
    }
    fn run(&self, ctx: &StageContext<'_>) -> Result<(), StageError> {
        let config = PruneConfig::from_table(ctx.config)?;
        config.check()?;
        match config.method {
            Method::L0 => train_loop::run_l0(ctx, &config),
            Method::Magnitude | Method::Random | Method::LayerDrop | Method::Taylor => {
                heuristics::run(ctx, &config)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> toml::Table {
        text.parse().unwrap()
    }

    fn base() -> &'static str {
        "model = { path = \"m\" }\ndata = { stage = \"tok\" }\n"
    }

    fn normalized(extra: &str) -> Result<PruneConfig, StageError> {
        let stage = PruneStage;
        let normal = stage.normalize(&table(&format!("{}{extra}", base())))?;
        stage.validate(&normal)?;
        PruneConfig::from_table(&normal)
    }

    fn source() -> LlamaConfig {
        LlamaConfig::new(64, 32, 48, 4, 4, 4)
    }

    fn key_of(error: StageError) -> String {
        match error {
            StageError::Config { key, .. } | StageError::Input { key, .. } => key,
            other => panic!("not a keyed error: {other}"),
        }
    }

    #[test]
    fn defaults_follow_the_paper_scaled_to_steps() {
        let config =
            normalized("target = { layers = 2, hidden = 16, heads = 2, intermediate = 24 }")
                .unwrap();
        assert_eq!(config.steps, 3200);
        assert_eq!(config.warmup_steps, Some(320));
        assert_eq!(config.lagrangian_warmup_steps, Some(640));
        assert_eq!(config.eval_every, Some(50));
        assert_eq!(config.pruning_modules, default_pruning_modules());
        let short = normalized(
            "steps = 100\ntarget = { layers = 2, hidden = 16, heads = 2, intermediate = 24 }",
        )
        .unwrap();
        assert_eq!(short.warmup_steps, Some(10));
        assert_eq!(short.lagrangian_warmup_steps, Some(20));
        assert_eq!(short.eval_every, Some(1));
        assert_eq!(short.checkpoint_every, Some(10));
    }

    /// The keys the driver brought are left out of a normalised config at their defaults, so that
    /// recipes written before them keep their cache keys.
    #[test]
    fn new_keys_at_their_defaults_leave_the_normalised_config_unchanged() {
        let stage = PruneStage;
        let target = "target = { layers = 2, hidden = 16, heads = 2, intermediate = 24 }\n";
        let plain = stage
            .normalize(&table(&format!("{}{target}", base())))
            .unwrap();
        let explicit = stage
            .normalize(&table(&format!(
                "{}{target}grad_accum = 1\nbetas = [0.9, 0.95]\neps = 1e-8\nno_decay = []\n\
                 on_non_finite = \"stop\"\nmax_skipped_batches = 10\nkeep_checkpoints = 2\n",
                base()
            )))
            .unwrap();
        assert_eq!(plain, explicit);
        for key in [
            "grad_accum",
            "betas",
            "eps",
            "no_decay",
            "on_non_finite",
            "keep_checkpoints",
        ] {
            assert!(!plain.contains_key(key), "{key}");
        }
        let other = stage
            .normalize(&table(&format!("{}{target}grad_accum = 4\n", base())))
            .unwrap();
        assert_eq!(other["grad_accum"].as_integer(), Some(4));
        assert_eq!(
            key_of(normalized(&format!("{target}batch_size = 6\ngrad_accum = 4")).unwrap_err()),
            "grad_accum"
        );
        assert_eq!(
            key_of(normalized(&format!("{target}betas = [0.9, 1.5]")).unwrap_err()),
            "betas"
        );
    }

    #[test]
    fn config_errors_name_their_key() {
        let cases = [
            (
                "target = { layers = 0, hidden = 16, heads = 2, intermediate = 24 }",
                "target.layers",
            ),
            (
                "target = { layers = 2, hidden = 16, heads = 3, intermediate = 24, kv_heads = 2 }",
                "target.kv_heads",
            ),
            (
                "steps = 0\ntarget = { layers = 2, hidden = 16, heads = 2, intermediate = 24 }",
                "steps",
            ),
            (
                "pruning_modules = [\"head\", \"head\"]\ntarget = { layers = 2, hidden = 16, heads = 2, intermediate = 24 }",
                "pruning_modules",
            ),
        ];
        for (extra, key) in cases {
            assert_eq!(key_of(normalized(extra).unwrap_err()), key, "{extra}");
        }
        let stage = PruneStage;
        let no_data = stage
            .normalize(&table("model = { path = \"m\" }\ntarget = { layers = 2, hidden = 16, heads = 2, intermediate = 24 }"))
            .unwrap();
        assert_eq!(key_of(stage.validate(&no_data).unwrap_err()), "data");
        assert!(stage.normalize(&table(&format!("{}bogus = 1\ntarget = {{ layers = 1, hidden = 1, heads = 1, intermediate = 1 }}", base()))).is_err());
    }

    #[test]
    fn source_checks_name_their_key() {
        let cases = [
            (
                "target = { layers = 5, hidden = 16, heads = 2, intermediate = 24 }",
                "target.layers",
            ),
            (
                "target = { layers = 2, hidden = 64, heads = 2, intermediate = 24 }",
                "target.hidden",
            ),
            (
                "target = { layers = 2, hidden = 16, heads = 8, intermediate = 24 }",
                "target.heads",
            ),
            (
                "target = { layers = 2, hidden = 16, heads = 2, intermediate = 96 }",
                "target.intermediate",
            ),
            (
                "head_dim_rule = \"hidden_equals_heads_times_head_dim\"\ntarget = { layers = 2, hidden = 20, heads = 2, intermediate = 24 }",
                "target.hidden",
            ),
            (
                "pruning_modules = [\"head\", \"intermediate\"]\ntarget = { layers = 2, hidden = 16, heads = 2, intermediate = 24 }",
                "pruning_modules",
            ),
        ];
        for (extra, key) in cases {
            let config = normalized(extra).unwrap();
            assert_eq!(
                key_of(resolve_target(&config, &source()).unwrap_err()),
                key,
                "{extra}"
            );
        }
        let ok = normalized("target = { layers = 2, hidden = 16, heads = 2, intermediate = 24 }")
            .unwrap();
        let resolved = resolve_target(&ok, &source()).unwrap();
        assert_eq!(
            resolved.mask_target,
            MaskTarget {
                layers: 2,
                heads: 2,
                intermediate: 24,
                hidden: 16
            }
        );
        assert_eq!(
            resolved.dims.attention_params_per_head_unit_per_hidden,
            4 * 8
        );
    }

    #[test]
    fn gqa_targets_must_fill_whole_groups() {
        let gqa = LlamaConfig::new(64, 32, 48, 4, 4, 2); // 2 query heads per KV group
        let odd = normalized("target = { layers = 2, hidden = 16, heads = 3, intermediate = 24 }")
            .unwrap();
        assert_eq!(
            key_of(resolve_target(&odd, &gqa).unwrap_err()),
            "target.heads"
        );
        let wrong_kv = normalized(
            "target = { layers = 2, hidden = 16, heads = 2, intermediate = 24, kv_heads = 2 }",
        )
        .unwrap();
        assert_eq!(
            key_of(resolve_target(&wrong_kv, &gqa).unwrap_err()),
            "target.kv_heads"
        );
        let ok = normalized("target = { layers = 2, hidden = 16, heads = 2, intermediate = 24 }")
            .unwrap();
        let resolved = resolve_target(&ok, &gqa).unwrap();
        assert_eq!(
            (
                resolved.kv_heads,
                resolved.dims.heads,
                resolved.mask_target.heads
            ),
            (1, 2, 1)
        );
        assert_eq!(
            resolved.dims.attention_params_per_head_unit_per_hidden,
            6 * 8
        );
    }
}
