//! The one training driver behind the `train` and `prune` stages.
//!
//! Both stages run the same loop; what differs between them is a [`TrainStep`]: the model type, how a
//! micro-batch's loss is computed (prune adds the L0 masks and the Lagrangian), how the accumulated
//! gradients are finished (prune negates the λ gradients: ascent), the learning rates of the
//! optimiser groups, the extra metrics and the extra checkpoint state (prune: the mask RNG).
//! Everything else lives here, once:
//!
//! ```text
//! resume from the newest complete checkpoint (metrics.jsonl truncated to its step)
//! loop: cancelled? → checkpoint, stop
//!       begin step → grad_accum micro-batches (draw with the policy's weights → loss / grad_accum → backward)
//!       → finish gradients → clip the global norm → non-finite? (stop | skip the batch) → optimiser step
//!       → log → eval (every eval_every, at loading-policy updates, at the end) → policy update → checkpoint
//! final checkpoint, final eval
//! ```
//!
//! Gradient accumulation only trades memory for time: the micro-batches of a step are drawn in the
//! order one batch would be, every sequence has `seq_len` predictions, so the mean of the micro-batch
//! means is the batch mean, and the step equals the one-pass step up to float summation order. With
//! `grad_accum = 1` nothing is divided or accumulated, so that step is bit for bit the plain one.
//!
//! Everything a resumed run needs is in the checkpoint: parameters (burnpack, ParamIds kept),
//! optimiser moments, the sampler's exact position, the loading policy, the running totals and the
//! step's own state. The lr schedule is a pure function of the step, so a killed run resumed from its
//! newest checkpoint ends with the same bits as an uninterrupted one.

use std::fs;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::lr_scheduler::module_lr_scheduler::ModuleLearningRate;
use burn::optim::{GradientsAccumulator, GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Int, Tensor};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::data::loading::{LoadingError, LoadingPolicy, PolicyState};
use crate::data::{ConsumedWindows, DataError, DomainMixture, EvalWindows, SamplerState};
use crate::model::batch::causal_lm_batch_flat;
use crate::progress::{CancelFlag, Reporter};
use crate::train::checkpoint::{self, CheckpointError};
use crate::train::clip::clip_global_norm;
use crate::train::optim::{check_host_default, offload_to_host};

pub const CHECKPOINT_DIR: &str = "checkpoints";
pub const METRICS_FILE: &str = "metrics.jsonl";

/// What to do when a step's loss or gradient norm is NaN or infinite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NonFinitePolicy {
    /// Stop the run, naming the step, the batch's domains and the last good checkpoint.
    #[default]
    Stop,
    /// Drop the batch (no update), log it, and stop only after `max_skipped_batches` such batches.
    SkipBatch,
}

impl NonFinitePolicy {
    /// For `skip_serializing_if`: the default adds nothing to a normalised config.
    pub fn is_stop(&self) -> bool {
        *self == NonFinitePolicy::Stop
    }
}

/// One micro-batch of a step: `input_ids [micro_batch, seq_len]`, `labels [micro_batch, seq_len]`.
pub struct MicroBatch {
    pub input_ids: Tensor<2, Int>,
    pub labels: Tensor<2, Int>,
    /// 0-based position in the step.
    pub index: usize,
    /// Micro-batches in the step (`grad_accum`).
    pub count: usize,
}

/// The loss of one micro-batch.
pub struct MicroBatchLoss {
    /// Where the micro-batch's gradients come from.
    pub backward: Backward,
    /// The host value of `objective` (summed over micro-batches it is the step's loss).
    pub value: f64,
    /// Named parts of `value` to log (summed over micro-batches), e.g. `lm_loss`, `lagrangian`.
    pub parts: Vec<(&'static str, f64)>,
}

/// How a micro-batch's gradients are obtained.
pub enum Backward {
    /// The driver runs backward on this `[1]` objective, already divided by the micro-batch count
    /// (see [`per_micro_batch`]).
    Objective(Box<Tensor<1>>),
    /// The step computed the gradients itself (activation checkpointing:
    /// [`Llama::backward_checkpointed`](crate::model::Llama::backward_checkpointed)).
    Gradients(GradientsParams),
}

/// A micro-batch's token-mean loss as its share of the step's: divided by `count`, untouched at
/// `count = 1` (so that a step without accumulation computes exactly the plain loss).
pub fn per_micro_batch(loss: Tensor<1>, count: usize) -> Tensor<1> {
    if count > 1 {
        loss.div_scalar(count as f64)
    } else {
        loss
    }
}

/// The learning rates of one step: what the optimiser gets and what the metrics line shows.
pub struct StepRates {
    pub rates: ModuleLearningRate,
    /// E.g. `[("lr", ..)]`, or prune's `lr`, `mask_lr`, `lambda_lr`.
    pub logged: Vec<(&'static str, f64)>,
}

/// What differs between the stages that use the driver.
pub trait TrainStep {
    /// What the optimiser trains; lives on an autodiff device.
    type Model: Module;
    /// State besides parameters, optimiser and sampler that a resumed run needs (prune: the mask RNG).
    type State: Serialize + DeserializeOwned;

    /// Prepares one optimiser step, 0-based `step` (prune: clamps z_loga and draws the step's mask noise,
    /// shared by all its micro-batches).
    fn begin_step(&mut self, model: Self::Model, step: u64) -> Self::Model;
    /// The loss of one micro-batch and how to get its gradients ([`Backward`]).
    fn micro_batch_loss(
        &mut self,
        model: &Self::Model,
        batch: MicroBatch,
        step: u64,
    ) -> MicroBatchLoss;
    /// The accumulated gradients of the step before clipping (prune: negated λ gradients for ascent).
    fn finish_gradients(&self, _model: &Self::Model, grads: GradientsParams) -> GradientsParams {
        grads
    }
    /// Learning rates of the 0-based `step`.
    fn learning_rates(&self, step: u64) -> StepRates;
    /// Extra fields of the metrics line after the 0-based `step` (the model is the updated one).
    fn step_metrics(
        &self,
        _model: &Self::Model,
        _step: u64,
    ) -> serde_json::Map<String, serde_json::Value> {
        serde_json::Map::new()
    }
    /// Per-domain mean eval loss over `eval` in chunks of `micro_batch` sequences, no autodiff
    /// (see [`domain_losses`]).
    fn evaluate(&self, model: &Self::Model, eval: &[EvalWindows], micro_batch: usize) -> Vec<f64>;
    /// Extra fields of an eval line (prune: the kept counts of the deterministic masks).
    fn eval_metrics(&self, _model: &Self::Model) -> serde_json::Map<String, serde_json::Value> {
        serde_json::Map::new()
    }
    /// The (autodiff) device the batches go to.
    fn device(&self, model: &Self::Model) -> Device;
    fn state(&self) -> Self::State;
    fn restore(&mut self, state: Self::State);
    /// What to suggest when the loss becomes non-finite.
    fn non_finite_hint(&self) -> &'static str {
        "Lower `lr`, lengthen the warm-up, check the input model"
    }
}

/// The numbers of a run that the driver acts on.
#[derive(Debug, Clone, PartialEq)]
pub struct DriverSettings {
    pub total_steps: u64,
    /// Sequences per optimiser step (all micro-batches together).
    pub batch_size: usize,
    /// Micro-batches per optimiser step; `batch_size` is a multiple of it.
    pub grad_accum: usize,
    pub seq_len: usize,
    /// Global-norm clip; 0 disables clipping (the norm is still measured and logged).
    pub grad_clip: f64,
    /// Evaluate every this many steps (0: only at the end).
    pub eval_every: u64,
    /// Also evaluate before the first step (the paper's continued pre-training does; its first
    /// dynamic-loading update then happens before any training).
    pub eval_first: bool,
    /// Checkpoint every this many steps (0: only the final one and on cancel).
    pub checkpoint_every: u64,
    pub keep_checkpoints: usize,
    pub on_non_finite: NonFinitePolicy,
    pub max_skipped_batches: u64,
    /// Keep AdamW's moments in host memory between steps ([`offload_to_host`]): the same bits, a
    /// device that needs two weight-sized buffers less during forward and backward.
    pub optimizer_offload: bool,
}

/// Keys of the `train` and `prune` tables that change how a stage runs but not one bit of what it
/// writes; they are left out of the cache key ([`crate::stage::Stage::execution_keys`]) and out of
/// the checkpoint fingerprint, so toggling one reuses committed outputs and resumes checkpoints.
pub const EXECUTION_KEYS: &[&str] = &["optimizer_offload"];

/// The checkpoint fingerprint of a stage: its normalised `config` without [`EXECUTION_KEYS`] under
/// `"config"`, beside what else decides its outputs in `extra` (`seed`, `device`, `kind`, `version`).
/// Without execution keys it is the fingerprint earlier versions wrote, so their checkpoints resume.
pub fn fingerprint(config: &toml::Table, extra: serde_json::Value) -> String {
    let mut keyed = config.clone();
    for key in EXECUTION_KEYS {
        keyed.remove(*key);
    }
    let mut object = match extra {
        serde_json::Value::Object(object) => object,
        other => serde_json::Map::from_iter([("extra".to_string(), other)]),
    };
    object.insert("config".into(), json!(keyed));
    checkpoint::fingerprint(&serde_json::Value::Object(object))
}

impl DriverSettings {
    pub fn micro_batch_size(&self) -> usize {
        self.batch_size / self.grad_accum.max(1)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(
        "non-finite training loss at step {step} (loss {loss}, gradient norm {grad_norm}; batch domains: {domains}). \
         {checkpoint}. No weights were written. {hint}, or set `on_non_finite = \"skip_batch\"` to drop such batches"
    )]
    NonFinite {
        step: u64,
        loss: f64,
        grad_norm: f64,
        domains: String,
        checkpoint: String,
        hint: &'static str,
    },
    #[error(
        "{count} batches with a non-finite loss were skipped (the last at step {step}; `max_skipped_batches` = {max}); {checkpoint}"
    )]
    TooManySkipped {
        count: u64,
        step: u64,
        max: u64,
        checkpoint: String,
    },
    #[error("the weights became non-finite by step {step}; {checkpoint}. No weights were written")]
    NonFiniteWeights { step: u64, checkpoint: String },
    #[error("cancelled after step {step}; the next run resumes from {checkpoint}")]
    Cancelled { step: u64, checkpoint: String },
    #[error("optimizer_offload: {0}")]
    Offload(String),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Loading(#[from] LoadingError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What a stage returns for a failed run: cancellation stays cancellation (the runner keeps the
/// scratch folder for the resume), everything else carries its message.
impl From<TrainError> for crate::stage::StageError {
    fn from(error: TrainError) -> Self {
        match error {
            TrainError::Cancelled { .. } => crate::stage::StageError::Cancelled,
            other => crate::stage::StageError::Other(anyhow::Error::new(other)),
        }
    }
}

/// What the driver trains with. `model` must live on an autodiff device; `optimizer` has the
/// parameter groups the step's [`TrainStep::learning_rates`] address.
pub struct DriverParts<M> {
    pub model: M,
    pub optimizer: ModuleOptimizer,
    pub mixture: DomainMixture,
    pub policy: LoadingPolicy,
    pub eval: Vec<EvalWindows>,
}

/// Seconds spent per activity over the steps this process ran (a resumed run counts only its own).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Timing {
    /// Wall time of the optimiser steps, everything included except evaluation.
    pub steps_s: f64,
    /// Forward, backward, clipping and the optimiser update.
    pub model_s: f64,
    /// Drawing batches and building their tensors.
    pub data_s: f64,
    /// Writing metrics lines and policy updates.
    pub logging_s: f64,
    pub checkpoint_s: f64,
    pub eval_s: f64,
    /// Moving AdamW's moments to the host after each step (`optimizer_offload`; part of `steps_s`).
    #[serde(default)]
    pub offload_s: f64,
    /// Optimiser steps this process ran.
    pub steps: u64,
}

impl Timing {
    /// Share of the step time spent outside the model (data, policy, logging, checkpointing).
    pub fn outside_model_fraction(&self) -> f64 {
        let total = self.steps_s + self.checkpoint_s;
        if total > 0.0 {
            (total - self.model_s) / total
        } else {
            0.0
        }
    }
}

pub struct DriverOutcome<M> {
    pub model: M,
    pub steps: u64,
    pub policy: LoadingPolicy,
    /// Per-domain eval losses at the end (domain order).
    pub final_eval: Vec<f64>,
    /// Training loss of the last step.
    pub final_loss: Option<f64>,
    pub tokens_per_domain: Vec<u64>,
    pub skipped_batches: u64,
    pub resumed_from: Option<u64>,
    /// The windows the run drew (where its sampler stopped in each domain).
    pub consumed: ConsumedWindows,
    pub timing: Timing,
}

/// `state.json` payload of a checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Payload<T> {
    sampler: SamplerState,
    policy: PolicyState,
    tokens_per_domain: Vec<u64>,
    skipped_batches: u64,
    last_loss: Option<f64>,
    /// The step's own state; absent (read as `None`) in `train` checkpoints written before the driver.
    step_state: Option<T>,
}

/// One optimiser step's result.
pub struct StepResult<M> {
    /// Updated when the step was finite, unchanged otherwise.
    pub model: M,
    pub loss: f64,
    pub parts: Vec<(&'static str, f64)>,
    pub grad_norm: f64,
    pub rates: Vec<(&'static str, f64)>,
    /// False when the loss or the gradient norm was non-finite (no update was made).
    pub finite: bool,
    pub model_s: f64,
    pub data_s: f64,
}

/// One optimiser step of `step_impl` at the 0-based `step`: `grad_accum` micro-batches from `draw`
/// (each `[micro_batch, seq_len]` `input_ids`/`labels`), gradients accumulated, finished, clipped at
/// `grad_clip` (0: measured only), and applied unless the loss or the norm is non-finite.
pub fn take_step<S: TrainStep>(
    step_impl: &mut S,
    model: S::Model,
    optimizer: &mut ModuleOptimizer,
    step: u64,
    grad_accum: usize,
    grad_clip: f64,
    draw: &mut dyn FnMut() -> Result<(Tensor<2, Int>, Tensor<2, Int>), TrainError>,
) -> Result<StepResult<S::Model>, TrainError> {
    let count = grad_accum.max(1);
    let mut model_s = 0.0;
    let mut data_s = 0.0;
    let started = Instant::now();
    let model = step_impl.begin_step(model, step);
    model_s += started.elapsed().as_secs_f64();
    let mut loss = 0.0f64;
    let mut parts: Vec<(&'static str, f64)> = Vec::new();
    let mut accumulator = GradientsAccumulator::<S::Model>::new();
    let mut single = None;
    for index in 0..count {
        let started = Instant::now();
        let (input_ids, labels) = draw()?;
        data_s += started.elapsed().as_secs_f64();

        let started = Instant::now();
        let batch = MicroBatch {
            input_ids,
            labels,
            index,
            count,
        };
        let micro = step_impl.micro_batch_loss(&model, batch, step);
        loss += micro.value;
        for (name, value) in micro.parts {
            match parts.iter_mut().find(|(known, _)| *known == name) {
                Some((_, total)) => *total += value,
                None => parts.push((name, value)),
            }
        }
        let grads = match micro.backward {
            Backward::Objective(objective) => {
                GradientsParams::from_grads(objective.backward(), &model)
            }
            Backward::Gradients(grads) => grads,
        };
        if count > 1 {
            accumulator.accumulate(&model, grads);
        } else {
            single = Some(grads);
        }
        model_s += started.elapsed().as_secs_f64();
    }
    let started = Instant::now();
    let grads = single.unwrap_or_else(|| accumulator.grads());
    let grads = step_impl.finish_gradients(&model, grads);
    let (grads, grad_norm) = clip_global_norm(grads, &model, grad_clip);
    let rates = step_impl.learning_rates(step);
    let finite = loss.is_finite() && grad_norm.is_finite();
    let model = if finite {
        optimizer.step(rates.rates, model, grads)
    } else {
        model
    };
    model_s += started.elapsed().as_secs_f64();
    Ok(StepResult {
        model,
        loss,
        parts,
        grad_norm,
        rates: rates.logged,
        finite,
        model_s,
        data_s,
    })
}

/// Per-domain token-mean loss over fixed eval windows in chunks of `micro_batch` sequences;
/// `per_sequence` maps `input_ids [rows, seq]`, `labels [rows, seq]` to the `[rows]` mean losses. The
/// rows are summed on the host in f64.
pub fn domain_losses(
    eval: &[EvalWindows],
    micro_batch: usize,
    device: &Device,
    mut per_sequence: impl FnMut(Tensor<2, Int>, Tensor<2, Int>) -> Tensor<1>,
) -> Vec<f64> {
    eval.iter()
        .map(|windows| {
            let width = windows.seq_len + 1;
            let mut total = 0.0f64;
            for chunk in windows.tokens.chunks(micro_batch.max(1) * width) {
                let rows = chunk.len() / width;
                let (input_ids, labels) =
                    causal_lm_batch_flat(chunk, rows, windows.seq_len, device);
                let per_row: Vec<f32> = per_sequence(input_ids, labels) // [rows]
                    .into_data()
                    .convert::<f32>()
                    .try_to_vec::<f32>()
                    .unwrap_or_default();
                total += per_row.iter().map(|&v| v as f64).sum::<f64>();
            }
            total / windows.num_sequences.max(1) as f64
        })
        .collect()
}

/// True when every float parameter is finite (one device read).
pub fn weights_are_finite<M: Module>(model: &M) -> bool {
    struct Check(Vec<Tensor<1>>);
    impl ModuleVisitor for Check {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let value = param.val();
            self.0.push((value.clone() - value).sum()); // NaN iff some element is NaN or ±inf
        }
    }
    let mut check = Check(Vec::new());
    model.visit(&mut check);
    if check.0.is_empty() {
        return true;
    }
    Tensor::cat(check.0, 0)
        .sum()
        .into_scalar::<f32>()
        .is_finite()
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Keeps the `metrics.jsonl` lines of steps `<= step` (a resumed run rewrites what came after; a torn
/// last line is dropped).
fn truncate_metrics(path: &Path, step: u64) -> Result<(), TrainError> {
    if !path.exists() {
        return Ok(());
    }
    let file = fs::File::open(path).map_err(io_error(path))?;
    let mut kept = String::new();
    for line in std::io::BufReader::new(file).lines() {
        let line = line.map_err(io_error(path))?;
        let Ok(record) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if record
            .get("step")
            .and_then(|s| s.as_u64())
            .is_some_and(|s| s <= step)
        {
            kept.push_str(&line);
            kept.push('\n');
        }
    }
    fs::write(path, kept).map_err(io_error(path))
}

fn describe_checkpoint(root: &Path) -> String {
    match checkpoint::newest_complete(root) {
        Ok(Some(found)) => format!(
            "last good checkpoint: {} (step {})",
            found.dir.display(),
            found.step
        ),
        _ => "no checkpoint was written yet".to_string(),
    }
}

fn domain_summary(domains: &[String], counts: &[usize]) -> String {
    domains
        .iter()
        .zip(counts)
        .filter(|(_, count)| **count > 0)
        .map(|(domain, count)| format!("{domain}×{count}"))
        .collect::<Vec<_>>()
        .join(", ")
}

struct MetricsLog<'a> {
    file: fs::File,
    path: PathBuf,
    reporter: &'a dyn Reporter,
}

impl MetricsLog<'_> {
    fn write(&mut self, record: serde_json::Value) -> Result<(), TrainError> {
        let mut line = record.to_string();
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .map_err(io_error(&self.path))?;
        self.reporter.metrics(&record);
        Ok(())
    }
}

fn named(
    domains: &[String],
    values: impl IntoIterator<Item = serde_json::Value>,
) -> serde_json::Value {
    serde_json::Value::Object(domains.iter().cloned().zip(values).collect())
}

/// The loop's mutable state besides model and optimiser.
struct Run<'a, S: TrainStep> {
    step_impl: &'a mut S,
    settings: &'a DriverSettings,
    optimizer: ModuleOptimizer,
    mixture: DomainMixture,
    policy: LoadingPolicy,
    eval: Vec<EvalWindows>,
    domains: Vec<String>,
    checkpoint_root: PathBuf,
    fingerprint: &'a str,
    tokens_per_domain: Vec<u64>,
    skipped_batches: u64,
    last_loss: Option<f64>,
    timing: Timing,
}

impl<S: TrainStep> Run<'_, S> {
    fn save_checkpoint(&self, model: &S::Model, step: u64) -> Result<(), TrainError> {
        let payload = Payload {
            sampler: self.mixture.state(),
            policy: self.policy.state(),
            tokens_per_domain: self.tokens_per_domain.clone(),
            skipped_batches: self.skipped_batches,
            last_loss: self.last_loss,
            step_state: Some(self.step_impl.state()),
        };
        checkpoint::save(
            &self.checkpoint_root,
            step,
            self.fingerprint,
            model,
            &self.optimizer,
            &payload,
            self.settings.keep_checkpoints,
        )?;
        Ok(())
    }

    /// Evaluates, updates the loading policy when `update_policy`, logs; returns the losses.
    fn evaluate_and_update(
        &mut self,
        model: &S::Model,
        step: u64,
        update_policy: bool,
        log: &mut MetricsLog,
    ) -> Result<Vec<f64>, TrainError> {
        let started = Instant::now();
        let micro_batch = self.settings.micro_batch_size();
        let losses = self.step_impl.evaluate(model, &self.eval, micro_batch);
        self.timing.eval_s += started.elapsed().as_secs_f64();
        let mut record = json!({
            "kind": "eval",
            "step": step,
            "eval_loss": named(&self.domains, losses.iter().map(|l| json!(l))),
            "eval_loss_mean": losses.iter().sum::<f64>() / losses.len().max(1) as f64,
        });
        if update_policy && let Some(update) = self.policy.update(step, &losses)? {
            record["loading_update"] = json!({
                "deltas": named(&self.domains, update.deltas.iter().map(|d| json!(d))),
                "weights": named(&self.domains, update.weights.iter().map(|w| json!(w))),
            });
            self.mixture.set_weights(self.policy.weights())?;
        }
        record["domain_weights"] = serde_json::Value::Object(self.policy.domain_weights());
        if let Some(object) = record.as_object_mut() {
            object.extend(self.step_impl.eval_metrics(model));
        }
        log.write(record)?;
        Ok(losses)
    }
}

/// Runs (or resumes) training with `step_impl`. Checkpoints and `metrics.jsonl` live in
/// `scratch_dir`; `fingerprint` identifies the configuration (see [`checkpoint::fingerprint`]).
/// Returns the trained model; writes nothing outside `scratch_dir`.
pub fn run<S: TrainStep>(
    step_impl: &mut S,
    settings: &DriverSettings,
    parts: DriverParts<S::Model>,
    scratch_dir: &Path,
    fingerprint: &str,
    reporter: &dyn Reporter,
    cancel: &CancelFlag,
) -> Result<DriverOutcome<S::Model>, TrainError> {
    let DriverParts {
        mut model,
        mut optimizer,
        mut mixture,
        mut policy,
        eval,
    } = parts;
    if settings.optimizer_offload {
        check_host_default().map_err(TrainError::Offload)?;
    }
    let domains = policy.domains().to_vec();
    let checkpoint_root = scratch_dir.join(CHECKPOINT_DIR);
    let metrics_path = scratch_dir.join(METRICS_FILE);
    fs::create_dir_all(scratch_dir).map_err(io_error(scratch_dir))?;
    let micro_batch = settings.micro_batch_size();

    let mut step = 0u64;
    let mut resumed_from = None;
    let mut tokens_per_domain = vec![0u64; domains.len()];
    let mut skipped_batches = 0;
    let mut last_loss = None;
    if let Some(found) = checkpoint::newest_complete(&checkpoint_root)? {
        let (loaded_model, loaded_optimizer, state) =
            checkpoint::load::<S::Model, Payload<S::State>>(&found, fingerprint, model, optimizer)?;
        model = loaded_model;
        optimizer = loaded_optimizer;
        mixture.restore(state.payload.sampler)?;
        policy.restore(state.payload.policy)?;
        tokens_per_domain = state.payload.tokens_per_domain;
        skipped_batches = state.payload.skipped_batches;
        last_loss = state.payload.last_loss;
        if let Some(step_state) = state.payload.step_state {
            step_impl.restore(step_state);
        }
        step = state.step;
        resumed_from = Some(step);
        truncate_metrics(&metrics_path, step)?;
        reporter.message(&format!(
            "resuming from checkpoint {} (step {step})",
            found.dir.display()
        ));
    } else {
        if metrics_path.exists() {
            fs::remove_file(&metrics_path).map_err(io_error(&metrics_path))?;
        }
        mixture.set_weights(policy.weights())?;
    }
    let device = step_impl.device(&model);
    let mut run = Run {
        step_impl,
        settings,
        optimizer,
        mixture,
        policy,
        eval,
        domains,
        checkpoint_root,
        fingerprint,
        tokens_per_domain,
        skipped_batches,
        last_loss,
        timing: Timing::default(),
    };
    let file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&metrics_path)
        .map_err(io_error(&metrics_path))?;
    let mut log = MetricsLog {
        file,
        path: metrics_path.clone(),
        reporter,
    };
    let mut last_eval: Option<Vec<f64>> = None;

    if step == 0 && settings.eval_first && !run.eval.is_empty() {
        let update = run.policy.updates_on_eval();
        last_eval = Some(run.evaluate_and_update(&model, 0, update, &mut log)?);
    }
    let mut last_checkpoint_step = resumed_from;
    while step < settings.total_steps {
        if cancel.is_cancelled() {
            if last_checkpoint_step != Some(step) && step > 0 {
                run.save_checkpoint(&model, step)?;
            }
            return Err(TrainError::Cancelled {
                step,
                checkpoint: describe_checkpoint(&run.checkpoint_root),
            });
        }
        let step_started = Instant::now();
        let mut counts = vec![0usize; run.domains.len()];
        let result = {
            let mixture = &mut run.mixture;
            let counts = &mut counts;
            let device = &device;
            let mut draw = || -> Result<(Tensor<2, Int>, Tensor<2, Int>), TrainError> {
                let batch = mixture.next_batch(micro_batch)?;
                let added = batch.domain_counts(counts.len());
                for (count, add) in counts.iter_mut().zip(added) {
                    *count += add;
                }
                Ok(causal_lm_batch_flat(
                    &batch.tokens,
                    micro_batch,
                    settings.seq_len,
                    device,
                ))
            };
            take_step(
                &mut *run.step_impl,
                model,
                &mut run.optimizer,
                step,
                settings.grad_accum,
                settings.grad_clip,
                &mut draw,
            )?
        };
        model = result.model;
        if settings.optimizer_offload {
            let started = Instant::now();
            run.optimizer = offload_to_host(run.optimizer.clone());
            run.timing.offload_s += started.elapsed().as_secs_f64();
        }
        if !result.finite {
            let domains_text = domain_summary(&run.domains, &counts);
            match settings.on_non_finite {
                NonFinitePolicy::Stop => {
                    return Err(TrainError::NonFinite {
                        step: step + 1,
                        loss: result.loss,
                        grad_norm: result.grad_norm,
                        domains: domains_text,
                        checkpoint: describe_checkpoint(&run.checkpoint_root),
                        hint: run.step_impl.non_finite_hint(),
                    });
                }
                NonFinitePolicy::SkipBatch => {
                    run.skipped_batches += 1;
                    // Logged under the step the batch was for, so a resume from `step` drops the line
                    // together with the batch it redraws.
                    log.write(json!({
                        "kind": "skipped", "step": step + 1, "loss": result.loss, "grad_norm": result.grad_norm,
                        "batch_domains": domains_text, "skipped_batches": run.skipped_batches,
                    }))?;
                    if run.skipped_batches > settings.max_skipped_batches {
                        return Err(TrainError::TooManySkipped {
                            count: run.skipped_batches,
                            step: step + 1,
                            max: settings.max_skipped_batches,
                            checkpoint: describe_checkpoint(&run.checkpoint_root),
                        });
                    }
                    continue;
                }
            }
        }
        let logging_started = Instant::now();
        let step_s = step_started.elapsed().as_secs_f64();
        run.last_loss = Some(result.loss);
        for (total, count) in run.tokens_per_domain.iter_mut().zip(&counts) {
            *total += (*count * settings.seq_len) as u64;
        }
        let mut record = json!({
            "kind": "train",
            "step": step + 1,
            "loss": result.loss,
            "grad_norm": result.grad_norm,
            "tokens_per_s": (settings.batch_size * settings.seq_len) as f64 / step_s.max(1e-12),
            "tokens": run.tokens_per_domain.iter().sum::<u64>(),
            "tokens_seen": named(&run.domains, run.tokens_per_domain.iter().map(|t| json!(t))),
            "domain_weights": serde_json::Value::Object(run.policy.domain_weights()),
        });
        if let Some(object) = record.as_object_mut() {
            for (name, value) in result.parts.iter().chain(&result.rates) {
                object.insert((*name).into(), json!(value));
            }
            object.extend(run.step_impl.step_metrics(&model, step));
        }
        step += 1;
        log.write(record)?;
        reporter.progress(step, settings.total_steps, "steps");
        run.timing.logging_s += logging_started.elapsed().as_secs_f64();
        run.timing.model_s += result.model_s;
        run.timing.data_s += result.data_s;
        run.timing.steps_s += step_started.elapsed().as_secs_f64();
        run.timing.steps += 1;

        let periodic_eval = settings.eval_every > 0 && step.is_multiple_of(settings.eval_every);
        let scheduled_update = run.policy.wants_update_at(step);
        let final_step = step == settings.total_steps;
        if (periodic_eval || scheduled_update || final_step) && !run.eval.is_empty() {
            let update = (periodic_eval && run.policy.updates_on_eval()) || scheduled_update;
            last_eval = Some(run.evaluate_and_update(&model, step, update, &mut log)?);
        }

        let due = settings.checkpoint_every > 0 && step.is_multiple_of(settings.checkpoint_every);
        if due || final_step {
            let started = Instant::now();
            if !weights_are_finite(&model) {
                return Err(TrainError::NonFiniteWeights {
                    step,
                    checkpoint: describe_checkpoint(&run.checkpoint_root),
                });
            }
            run.save_checkpoint(&model, step)?;
            last_checkpoint_step = Some(step);
            run.timing.checkpoint_s += started.elapsed().as_secs_f64();
        }
    }
    log.file.flush().map_err(io_error(&metrics_path))?;
    if !weights_are_finite(&model) {
        return Err(TrainError::NonFiniteWeights {
            step,
            checkpoint: describe_checkpoint(&run.checkpoint_root),
        });
    }
    let final_eval = match last_eval {
        Some(losses) => losses,
        None if run.eval.is_empty() => Vec::new(),
        // resumed after the final step's checkpoint
        None => run.step_impl.evaluate(&model, &run.eval, micro_batch),
    };
    Ok(DriverOutcome {
        model,
        steps: step,
        policy: run.policy,
        final_eval,
        final_loss: run.last_loss,
        tokens_per_domain: run.tokens_per_domain,
        skipped_batches: run.skipped_batches,
        resumed_from,
        consumed: run.mixture.consumed(),
        timing: run.timing,
    })
}
