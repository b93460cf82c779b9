//! The training loop: micro-batches → one optimiser step, with evaluation, dynamic batch loading,
//! checkpoints and bit-identical resume.
//!
//! One optimiser step (`step` counts completed steps; the schedule uses the 0-based index of the step
//! being taken):
//!
//! ```text
//! for each of grad_accum micro-batches: draw batch (policy weights) → forward → CE / grad_accum → backward
//! clip the global gradient norm → non-finite? (stop | skip batch) → AdamW step at schedule.lr(step)
//! step += 1 → log → eval (every eval_every, and update_every for dynamic loading) → policy update → checkpoint
//! ```
//!
//! Everything a resumed run needs is in the checkpoint: parameters (burnpack, ParamIds kept),
//! optimiser moments, the sampler's exact position, the loading policy, the running totals. The lr
//! schedule is a pure function of the step and there is no other randomness in a dense forward pass,
//! so a killed run resumed from its newest checkpoint ends with the same bits as an uninterrupted one.

use std::fs;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::data::loading::{LoadingError, LoadingPolicy, PolicyState};
use crate::data::{DataError, DomainMixture, EvalWindows, SamplerState};
use crate::model::{Llama, cross_entropy, cross_entropy_per_sequence};
use crate::progress::{CancelFlag, Reporter};
use crate::train::checkpoint::{self, CheckpointError};
use crate::train::clip::clip_global_norm;
use crate::train::optim::AdamWSettings;
use crate::train::schedule::LrSchedule;

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

/// The numbers of a training run (the `train` stage fills them from its config).
#[derive(Debug, Clone, PartialEq)]
pub struct LoopSettings {
    pub total_steps: u64,
    /// Sequences per optimiser step (all micro-batches together).
    pub batch_size: usize,
    /// Micro-batches per optimiser step; `batch_size` is a multiple of it.
    pub grad_accum: usize,
    pub seq_len: usize,
    pub schedule: LrSchedule,
    pub adamw: AdamWSettings,
    /// Global-norm clip; 0 disables clipping (the norm is still measured and logged).
    pub grad_clip: f64,
    /// Evaluate every this many steps (0: only at the end).
    pub eval_every: u64,
    /// Also evaluate before the first step (the paper's continued pre-training does; its first
    /// dynamic-loading update then happens before any training).
    pub eval_first: bool,
    pub checkpoint_every: u64,
    pub keep_checkpoints: usize,
    pub on_non_finite: NonFinitePolicy,
    pub max_skipped_batches: u64,
}

impl LoopSettings {
    pub fn micro_batch_size(&self) -> usize {
        self.batch_size / self.grad_accum.max(1)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(
        "non-finite training loss at step {step} (loss {loss}, gradient norm {grad_norm}; batch domains: {domains}). \
         {checkpoint}. No weights were written. Lower `lr`, lengthen the warm-up, check the input model, or set \
         `on_non_finite = \"skip_batch\"` to drop such batches"
    )]
    NonFinite {
        step: u64,
        loss: f64,
        grad_norm: f64,
        domains: String,
        checkpoint: String,
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

/// What the loop trains with. `model` must live on an autodiff device.
pub struct TrainParts {
    pub model: Llama,
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

pub struct TrainOutcome {
    pub model: Llama,
    pub steps: u64,
    pub policy: LoadingPolicy,
    /// Per-domain eval losses at the end (domain order).
    pub final_eval: Vec<f64>,
    /// Training loss of the last step.
    pub final_loss: Option<f64>,
    pub tokens_per_domain: Vec<u64>,
    pub skipped_batches: u64,
    pub resumed_from: Option<u64>,
    pub timing: Timing,
}

/// `state.json` payload of a training checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Payload {
    sampler: SamplerState,
    policy: PolicyState,
    tokens_per_domain: Vec<u64>,
    skipped_batches: u64,
    last_loss: Option<f64>,
}

impl Payload {
    /// Everything besides model and optimiser that a resumed run needs to continue bit-identically.
    fn capture(
        mixture: &DomainMixture,
        policy: &LoadingPolicy,
        tokens_per_domain: &[u64],
        skipped_batches: u64,
        last_loss: Option<f64>,
    ) -> Self {
        Payload {
            sampler: mixture.state(),
            policy: policy.state(),
            tokens_per_domain: tokens_per_domain.to_vec(),
            skipped_batches,
            last_loss,
        }
    }
}

pub const CHECKPOINT_DIR: &str = "checkpoints";
pub const METRICS_FILE: &str = "metrics.jsonl";

/// `[batch, seq_len + 1]` row-major tokens → (inputs `[batch, seq_len]`, targets `[batch, seq_len]`).
pub fn batch_tensors(
    rows: &[u32],
    batch: usize,
    seq_len: usize,
    device: &Device,
) -> (Tensor<2, Int>, Tensor<2, Int>) {
    let width = seq_len + 1;
    let mut inputs = Vec::with_capacity(batch * seq_len);
    let mut targets = Vec::with_capacity(batch * seq_len);
    for row in rows.chunks_exact(width).take(batch) {
        inputs.extend(row[..seq_len].iter().map(|&token| token as i64));
        targets.extend(row[1..].iter().map(|&token| token as i64));
    }
    (
        Tensor::from_data(TensorData::new(inputs, [batch, seq_len]), device),
        Tensor::from_data(TensorData::new(targets, [batch, seq_len]), device),
    )
}

fn param_device(model: &Llama) -> Device {
    model.embed_tokens.weight.val().device()
}

/// Per-domain token-mean cross-entropy over fixed eval windows, without building autodiff graphs.
pub fn evaluate(model: &Llama, eval: &[EvalWindows], micro_batch: usize) -> Vec<f64> {
    let model = model.valid();
    let device = param_device(&model);
    eval.iter()
        .map(|windows| {
            let mut sum = 0.0f64;
            let width = windows.seq_len + 1;
            for chunk in windows.tokens.chunks(micro_batch.max(1) * width) {
                let rows = chunk.len() / width;
                let (inputs, targets) = batch_tensors(chunk, rows, windows.seq_len, &device);
                let per_row = cross_entropy_per_sequence(model.forward(inputs, None), targets); // [rows]
                sum += per_row.sum().into_scalar::<f32>() as f64;
            }
            sum / windows.num_sequences.max(1) as f64
        })
        .collect()
}

/// Re-draws every weight matrix (every float parameter of rank ≥ 2) of `model` from
/// Normal(0, `std`) with a ChaCha8 stream seeded by `seed`, in module order; rank-1 parameters (norm
/// weights) keep their values. burn's device RNG is process-global, so `device.seed(s)` followed by
/// `Llama::new` is not reproducible when anything else draws random numbers concurrently (another
/// stage, another test thread); this init is, whatever runs beside it.
pub fn seeded_normal_init<M: Module>(model: M, seed: u64, std: f64) -> M {
    use rand::SeedableRng;
    use rand_distr::Distribution;
    struct Init {
        rng: rand_chacha::ChaCha8Rng,
        normal: rand_distr::Normal<f32>,
    }
    impl burn::module::ModuleMapper for Init {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            if D < 2 {
                return param;
            }
            param.map(|tensor| {
                let shape = tensor.shape();
                let device = tensor.device();
                let tracked = tensor.is_require_grad();
                let values: Vec<f32> = (0..shape.num_elements())
                    .map(|_| self.normal.sample(&mut self.rng))
                    .collect();
                let fresh = Tensor::from_data(TensorData::new(values, shape), &device);
                // A new leaf does not track gradients by itself; keep the parameter trainable.
                if tracked { fresh.require_grad() } else { fresh }
            })
        }
    }
    // A non-finite or negative `std` (rejected by the stage before this point) falls back to HF's 0.02.
    let normal = rand_distr::Normal::new(0.0f32, std as f32)
        .or_else(|_| rand_distr::Normal::new(0.0f32, 0.02))
        .unwrap_or_else(|_| unreachable!("Normal(0, 0.02) is valid"));
    model.map(&mut Init {
        rng: rand_chacha::ChaCha8Rng::seed_from_u64(seed),
        normal,
    })
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

/// Keeps the `metrics.jsonl` lines of steps `<= step` (a resumed run rewrites what came after).
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
        }; // torn last line
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

/// Runs (or resumes) training. Checkpoints and `metrics.jsonl` live in `scratch_dir`; `fingerprint`
/// identifies the configuration (see [`checkpoint::fingerprint`]). Returns the trained model; writes
/// nothing outside `scratch_dir`.
pub fn train(
    settings: &LoopSettings,
    parts: TrainParts,
    scratch_dir: &Path,
    fingerprint: &str,
    reporter: &dyn Reporter,
    cancel: &CancelFlag,
) -> Result<TrainOutcome, TrainError> {
    let TrainParts {
        mut model,
        mut mixture,
        mut policy,
        eval,
    } = parts;
    let domains = policy.domains().to_vec();
    let checkpoint_root = scratch_dir.join(CHECKPOINT_DIR);
    let metrics_path = scratch_dir.join(METRICS_FILE);
    fs::create_dir_all(scratch_dir).map_err(io_error(scratch_dir))?;
    let mut optimizer = settings.adamw.build();
    let micro_batch = settings.micro_batch_size();
    let device = param_device(&model);

    let mut step = 0u64;
    let mut tokens_per_domain = vec![0u64; domains.len()];
    let mut skipped_batches = 0u64;
    let mut last_loss = None;
    let mut resumed_from = None;
    if let Some(found) = checkpoint::newest_complete(&checkpoint_root)? {
        let (loaded_model, loaded_optimizer, state) =
            checkpoint::load::<Llama, Payload>(&found, fingerprint, model, optimizer)?;
        model = loaded_model;
        optimizer = loaded_optimizer;
        mixture.restore(state.payload.sampler)?;
        policy.restore(state.payload.policy)?;
        tokens_per_domain = state.payload.tokens_per_domain;
        skipped_batches = state.payload.skipped_batches;
        last_loss = state.payload.last_loss;
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
    let mut timing = Timing::default();
    let mut last_eval: Option<Vec<f64>> = None;

    // Evaluate, update the policy when due, and log. Returns the losses.
    let evaluate_and_update = |model: &Llama,
                               step: u64,
                               update_policy: bool,
                               policy: &mut LoadingPolicy,
                               mixture: &mut DomainMixture,
                               log: &mut MetricsLog,
                               timing: &mut Timing|
     -> Result<Vec<f64>, TrainError> {
        let started = Instant::now();
        let losses = evaluate(model, &eval, micro_batch);
        timing.eval_s += started.elapsed().as_secs_f64();
        let mut record = json!({
            "kind": "eval",
            "step": step,
            "eval_loss": named(&domains, losses.iter().map(|l| json!(l))),
            "eval_loss_mean": losses.iter().sum::<f64>() / losses.len().max(1) as f64,
        });
        if update_policy && let Some(update) = policy.update(step, &losses)? {
            record["deltas"] = named(&domains, update.deltas.iter().map(|d| json!(d)));
            mixture.set_weights(policy.weights())?;
        }
        record["domain_weights"] = serde_json::Value::Object(policy.domain_weights());
        log.write(record)?;
        Ok(losses)
    };

    if step == 0 && settings.eval_first && !eval.is_empty() {
        let update = policy.updates_on_eval();
        last_eval = Some(evaluate_and_update(
            &model,
            0,
            update,
            &mut policy,
            &mut mixture,
            &mut log,
            &mut timing,
        )?);
    }
    let mut last_checkpoint_step = resumed_from;
    while step < settings.total_steps {
        if cancel.is_cancelled() {
            if last_checkpoint_step != Some(step) && step > 0 {
                let payload = Payload::capture(
                    &mixture,
                    &policy,
                    &tokens_per_domain,
                    skipped_batches,
                    last_loss,
                );
                checkpoint::save(
                    &checkpoint_root,
                    step,
                    fingerprint,
                    &model,
                    &optimizer,
                    &payload,
                    settings.keep_checkpoints,
                )?;
            }
            return Err(TrainError::Cancelled {
                step,
                checkpoint: describe_checkpoint(&checkpoint_root),
            });
        }
        let step_started = Instant::now();
        let mut model_s = 0.0;
        let mut data_s = 0.0;
        let mut loss_value = 0.0f64;
        let mut counts = vec![0usize; domains.len()];
        let mut accumulator = GradientsAccumulator::<Llama>::new();
        let mut single = None;
        for _ in 0..settings.grad_accum {
            let data_started = Instant::now();
            let batch = mixture.next_batch(micro_batch)?;
            for (count, add) in counts.iter_mut().zip(batch.domain_counts(domains.len())) {
                *count += add;
            }
            let (inputs, targets) =
                batch_tensors(&batch.tokens, micro_batch, settings.seq_len, &device);
            data_s += data_started.elapsed().as_secs_f64();

            let model_started = Instant::now();
            let logits = model.forward(inputs, None); // [micro_batch, seq_len, vocab]
            let loss = cross_entropy(logits, targets); // [1]
            let loss = if settings.grad_accum > 1 {
                loss.div_scalar(settings.grad_accum as f64)
            } else {
                loss
            };
            loss_value += loss.clone().into_scalar::<f32>() as f64;
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            if settings.grad_accum > 1 {
                accumulator.accumulate(&model, grads);
            } else {
                single = Some(grads);
            }
            model_s += model_started.elapsed().as_secs_f64();
        }
        let model_started = Instant::now();
        let grads = single.unwrap_or_else(|| accumulator.grads());
        let (grads, grad_norm) = clip_global_norm(grads, &model, settings.grad_clip);
        if !loss_value.is_finite() || !grad_norm.is_finite() {
            drop(grads);
            let domains_text = domain_summary(&domains, &counts);
            match settings.on_non_finite {
                NonFinitePolicy::Stop => {
                    return Err(TrainError::NonFinite {
                        step: step + 1,
                        loss: loss_value,
                        grad_norm,
                        domains: domains_text,
                        checkpoint: describe_checkpoint(&checkpoint_root),
                    });
                }
                NonFinitePolicy::SkipBatch => {
                    skipped_batches += 1;
                    log.write(json!({
                        "kind": "skipped", "step": step, "loss": loss_value, "grad_norm": grad_norm,
                        "batch_domains": domains_text, "skipped_batches": skipped_batches,
                    }))?;
                    if skipped_batches > settings.max_skipped_batches {
                        return Err(TrainError::TooManySkipped {
                            count: skipped_batches,
                            step: step + 1,
                            max: settings.max_skipped_batches,
                            checkpoint: describe_checkpoint(&checkpoint_root),
                        });
                    }
                    continue;
                }
            }
        }
        let lr = settings.schedule.lr(step);
        model = optimizer.step(lr, model, grads);
        model_s += model_started.elapsed().as_secs_f64();
        step += 1;
        last_loss = Some(loss_value);
        for (total, count) in tokens_per_domain.iter_mut().zip(&counts) {
            *total += (*count * settings.seq_len) as u64;
        }

        let logging_started = Instant::now();
        let step_s = step_started.elapsed().as_secs_f64();
        log.write(json!({
            "kind": "train",
            "step": step,
            "loss": loss_value,
            "lr": lr,
            "grad_norm": grad_norm,
            "tokens_per_s": (settings.batch_size * settings.seq_len) as f64 / step_s.max(1e-12),
            "tokens": tokens_per_domain.iter().sum::<u64>(),
            "tokens_seen": named(&domains, tokens_per_domain.iter().map(|t| json!(t))),
            "domain_weights": serde_json::Value::Object(policy.domain_weights()),
        }))?;
        reporter.progress(step, settings.total_steps, "steps");
        timing.logging_s += logging_started.elapsed().as_secs_f64();
        timing.model_s += model_s;
        timing.data_s += data_s;
        timing.steps_s += step_started.elapsed().as_secs_f64();
        timing.steps += 1;

        let periodic_eval = settings.eval_every > 0 && step.is_multiple_of(settings.eval_every);
        let scheduled_update = policy.wants_update_at(step);
        let final_step = step == settings.total_steps;
        if (periodic_eval || scheduled_update || final_step) && !eval.is_empty() {
            let update = (periodic_eval && policy.updates_on_eval()) || scheduled_update;
            last_eval = Some(evaluate_and_update(
                &model,
                step,
                update,
                &mut policy,
                &mut mixture,
                &mut log,
                &mut timing,
            )?);
        }

        let due = settings.checkpoint_every > 0 && step.is_multiple_of(settings.checkpoint_every);
        if due || final_step {
            let started = Instant::now();
            if !weights_are_finite(&model) {
                return Err(TrainError::NonFiniteWeights {
                    step,
                    checkpoint: describe_checkpoint(&checkpoint_root),
                });
            }
            let payload = Payload::capture(
                &mixture,
                &policy,
                &tokens_per_domain,
                skipped_batches,
                last_loss,
            );
            checkpoint::save(
                &checkpoint_root,
                step,
                fingerprint,
                &model,
                &optimizer,
                &payload,
                settings.keep_checkpoints,
            )?;
            last_checkpoint_step = Some(step);
            timing.checkpoint_s += started.elapsed().as_secs_f64();
        }
    }
    log.file.flush().map_err(io_error(&metrics_path))?;
    if !weights_are_finite(&model) {
        return Err(TrainError::NonFiniteWeights {
            step,
            checkpoint: describe_checkpoint(&checkpoint_root),
        });
    }
    let final_eval = match last_eval {
        Some(losses) => losses,
        None if eval.is_empty() => Vec::new(),
        None => evaluate(&model, &eval, micro_batch), // resumed after the final step's checkpoint
    };
    Ok(TrainOutcome {
        model,
        steps: step,
        policy,
        final_eval,
        final_loss: last_loss,
        tokens_per_domain,
        skipped_batches,
        resumed_from,
        timing,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::LlamaConfig;

    fn bits(model: &Llama) -> Vec<u32> {
        let weight = model.layers[0]
            .mlp
            .as_ref()
            .map(|mlp| mlp.gate_proj.weight.val())
            .unwrap();
        weight
            .into_data()
            .try_into_vec_as::<f32>()
            .unwrap()
            .iter()
            .map(|v| v.to_bits())
            .collect()
    }

    #[test]
    fn seeded_init_keeps_parameters_trainable() {
        let config = LlamaConfig::new(32, 16, 32, 1, 2, 2);
        let model = seeded_normal_init(
            Llama::new(&config, &crate::model::device::for_tests().autodiff()),
            7,
            0.02,
        );
        let gate = model.layers[0]
            .mlp
            .as_ref()
            .map(|mlp| mlp.gate_proj.weight.val())
            .unwrap();
        assert!(gate.is_require_grad());
    }

    #[test]
    fn seeded_init_ignores_the_global_device_rng() {
        let config = LlamaConfig::new(32, 16, 32, 1, 2, 2);
        let device = crate::model::device::for_tests();
        device.seed(1);
        let first = seeded_normal_init(Llama::new(&config, &device), 7, 0.02);
        device.seed(99);
        let second = seeded_normal_init(Llama::new(&config, &device), 7, 0.02);
        let other_seed = seeded_normal_init(Llama::new(&config, &device), 8, 0.02);
        assert_eq!(bits(&first), bits(&second));
        assert_ne!(bits(&first), bits(&other_seed));
        let values: Vec<f32> = bits(&first).iter().map(|b| f32::from_bits(*b)).collect();
        let std = (values.iter().map(|v| v * v).sum::<f32>() / values.len() as f32).sqrt();
        assert!((0.015..0.025).contains(&std), "{std}");
    }
}
