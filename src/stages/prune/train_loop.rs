//! The `method = "l0"` pruning loop (paper §2.1; the step is spelled out in docs/pruning.md).
//!
//! Per step: clamp z_loga → draw one hard-concrete sample per mask → masked forward → loss =
//! token-mean CE + Lagrangian (targets warmed up linearly) → ONE backward → negate the λ gradients
//! (ascent) → global-norm clip over everything → one AdamW step with three learning-rate groups
//! (weights `lr`, z_loga `mask_lr`, λ `lambda_lr`, all times the same cosine-with-warm-up factor;
//! z and λ never decay). Evaluation uses the deterministic expected-count masks.
//!
//! Resume: every `checkpoint_every` steps the weights, z_loga, λ (burnpack, ParamIds kept), the
//! AdamW state, the mask RNG, the data sampler and the length of `metrics.jsonl` go to
//! `<scratch>/checkpoints`. A rerun continues from the newest complete checkpoint and ends with the
//! same bits as an uninterrupted run (on CPU).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use burn::module::{Module, ParamGroup};
use burn::optim::lr_scheduler::module_lr_scheduler::ModuleLrScheduler;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::outputs;
use super::{Method, PruneConfig, ResolvedTarget, loading_error, resolve_target};
use crate::data::loading::{LoadingPolicy, PolicyState};
use crate::data::{
    DomainMixture, EvalWindows, Exhaustion, SamplerState, TokenizedDataset, eval_windows,
};
use crate::model::l0::{L0Module, PruningModule, warmed_up_target};
use crate::model::{Llama, Masks, cross_entropy, cross_entropy_per_sequence, load_hf};
use crate::stage::{StageContext, StageError};
use crate::train::checkpoint;
use crate::train::clip::clip_global_norm;
use crate::train::optim::AdamWSettings;
use crate::train::schedule::cosine_with_warmup;

/// What the optimiser trains: the model weights and the L0 module (z_loga, λ) together.
#[derive(Module, Debug)]
pub struct PruneModel {
    pub llama: Llama,
    pub l0: L0Module,
}

/// Everything besides parameters and optimiser state that a resumed run needs to continue exactly.
#[derive(Debug, Serialize, Deserialize)]
struct LoopState {
    mask_rng: ChaCha8Rng,
    sampler: SamplerState,
    policy: PolicyState,
    /// Bytes of `metrics.jsonl` written up to the checkpoint (later lines are dropped on resume).
    metrics_bytes: u64,
}

/// Seed streams derived from the stage seed (kept apart so that one never shifts another).
fn mask_init_seed(seed: u64) -> u64 {
    seed ^ 0x6d61_736b_5f69_6e69 // "mask_ini"
}
fn mask_sample_seed(seed: u64) -> u64 {
    seed ^ 0x6d61_736b_5f73_6d70 // "mask_smp"
}

/// The AdamW optimiser with the three groups; the same construction is used to resume.
pub fn build_optimizer(weight_decay: f64) -> ModuleOptimizer {
    let settings = AdamWSettings {
        betas: [0.9, 0.95],
        eps: 1e-8,
        weight_decay,
        no_decay: Vec::new(),
    };
    settings.adamw_config(weight_decay).init().with_group(
        ParamGroup::from_any_predicates(vec!["z_loga", "lambda"]),
        settings.adamw(0.0),
        None,
    )
}

/// Learning rates of the three groups at `step`.
pub fn learning_rates(config: &PruneConfig, step: usize) -> (f64, f64, f64) {
    let factor = cosine_with_warmup(
        step as u64,
        config.warmup_steps() as u64,
        config.steps as u64,
        config.min_lr_ratio,
    );
    (
        config.lr * factor,
        config.mask_lr * factor,
        config.lambda_lr * factor,
    )
}

/// Inputs `[batch, seq]` and targets `[batch, seq]` from rows of `seq + 1` tokens.
pub fn inputs_and_targets(
    tokens: &[u32],
    rows: usize,
    seq_len: usize,
    device: &Device,
) -> (Tensor<2, Int>, Tensor<2, Int>) {
    let width = seq_len + 1;
    let mut inputs = Vec::with_capacity(rows * seq_len);
    let mut targets = Vec::with_capacity(rows * seq_len);
    for row in tokens.chunks(width).take(rows) {
        inputs.extend(row[..seq_len].iter().map(|&t| t as i64));
        targets.extend(row[1..].iter().map(|&t| t as i64));
    }
    (
        Tensor::from_data(TensorData::new(inputs, [rows, seq_len]), device),
        Tensor::from_data(TensorData::new(targets, [rows, seq_len]), device),
    )
}

/// One training step; returns the updated model and (ce, lagrangian, grad norm before clipping).
#[allow(clippy::too_many_arguments)]
pub fn train_step(
    model: PruneModel,
    optimizer: &mut ModuleOptimizer,
    config: &PruneConfig,
    resolved: &ResolvedTarget,
    step: usize,
    tokens: &[u32],
    mask_rng: &mut ChaCha8Rng,
    device: &Device,
) -> (PruneModel, f64, f64, f64) {
    let model = PruneModel {
        l0: model.l0.clamp_z_loga(),
        llama: model.llama,
    };
    let (inputs, targets) = inputs_and_targets(tokens, config.batch_size, config.seq_len, device);
    let masks = model.l0.sample(mask_rng);
    let logits = model.llama.forward(inputs, Some(&masks)); // [batch, seq, vocab]
    let lm_loss = cross_entropy(logits, targets); // [1]
    let warmup = config.lagrangian_warmup_steps();
    let target_at = |module: PruningModule| {
        warmed_up_target(
            resolved.mask_target.sparsity(&resolved.dims, module),
            step,
            warmup,
        )
    };
    let lagrangian = model.l0.lagrangian(target_at);
    let loss = match &lagrangian {
        Some(lagrangian) => lm_loss.clone() + lagrangian.clone(),
        None => lm_loss.clone(),
    };
    let lm_value = lm_loss.into_scalar::<f32>() as f64;
    let lagrangian_value = lagrangian.map_or(0.0, |l| l.into_scalar::<f32>() as f64);
    let mut grads = GradientsParams::from_grads(loss.backward(), &model);
    // Gradient ASCENT on the multipliers: AdamW with a negated gradient = a negative learning rate.
    for lambda in [
        &model.l0.head_lambda,
        &model.l0.intermediate_lambda,
        &model.l0.layer_lambda,
        &model.l0.hidden_lambda,
    ]
    .into_iter()
    .flatten()
    {
        if let Some(gradient) = grads.remove::<1>(lambda.id) {
            grads.register(lambda.id, gradient.neg());
        }
    }
    let (grads, grad_norm) = clip_global_norm(grads, &model, config.grad_clip);
    let (lr, mask_lr, lambda_lr) = learning_rates(config, step);
    let rates = ModuleLrScheduler::new(lr)
        .with_group(ParamGroup::from_predicate("z_loga"), mask_lr)
        .with_group(ParamGroup::from_predicate("lambda"), lambda_lr)
        .step();
    let model = optimizer.step(rates, model, grads);
    (model, lm_value, lagrangian_value, grad_norm)
}

/// Mean CE per domain on the fixed eval windows, with the deterministic eval-time masks.
pub fn evaluate(model: &PruneModel, windows: &[EvalWindows], batch_size: usize) -> Vec<f64> {
    let valid = model.clone().valid();
    let device = valid.llama.embed_tokens.weight.device();
    let masks: Masks = valid.l0.host_z_loga().eval_masks().to_masks(&device);
    windows
        .iter()
        .map(|domain| {
            let mut total = 0.0;
            let mut start = 0;
            while start < domain.num_sequences {
                let rows = batch_size.min(domain.num_sequences - start);
                let width = domain.seq_len + 1;
                let tokens = &domain.tokens[start * width..(start + rows) * width];
                let (inputs, targets) = inputs_and_targets(tokens, rows, domain.seq_len, &device);
                let logits = valid.llama.forward(inputs, Some(&masks));
                let per_row: Vec<f32> = cross_entropy_per_sequence(logits, targets)
                    .into_data()
                    .try_into_vec::<f32>()
                    .unwrap_or_default();
                total += per_row.iter().map(|&v| v as f64).sum::<f64>();
                start += rows;
            }
            total / domain.num_sequences.max(1) as f64
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn step_record(
    config: &PruneConfig,
    resolved: &ResolvedTarget,
    model: &PruneModel,
    step: usize,
    values: (f64, f64, f64),
    weights: &[f64],
    domains: &[String],
    tokens_per_s: f64,
) -> serde_json::Value {
    let host = model.l0.host_z_loga();
    let (lm_loss, lagrangian, grad_norm) = values;
    let (lr, mask_lr, lambda_lr) = learning_rates(config, step);
    let mut expected = serde_json::Map::new();
    let mut target = serde_json::Map::new();
    let mut lambdas = serde_json::Map::new();
    for module in model.l0.modules() {
        let rows = host.expected_sparsity(module).unwrap_or_default();
        let mean = rows.iter().sum::<f64>() / rows.len().max(1) as f64;
        expected.insert(module.name().into(), json!(mean));
        let full = resolved.mask_target.sparsity(&resolved.dims, module);
        target.insert(
            module.name().into(),
            json!(warmed_up_target(
                full,
                step,
                config.lagrangian_warmup_steps()
            )),
        );
        lambdas.insert(module.name().into(), json!(model.l0.host_lambda(module)));
    }
    let expected_parameters = host.expected_parameters(&resolved.dims);
    let domain_weights: serde_json::Map<String, serde_json::Value> = domains
        .iter()
        .cloned()
        .zip(weights.iter().map(|w| json!(w)))
        .collect();
    json!({
        "step": step + 1,
        "loss": lm_loss + lagrangian,
        "lm_loss": lm_loss,
        "lagrangian": lagrangian,
        "grad_norm": grad_norm,
        "expected_sparsity": expected,
        "target_sparsity": target,
        "lambda": lambdas,
        "expected_parameters": expected_parameters,
        "expected_model_sparsity": 1.0 - expected_parameters / resolved.dims.prunable_parameters(),
        "lr": lr,
        "mask_lr": mask_lr,
        "lambda_lr": lambda_lr,
        "domain_weights": domain_weights,
        "tokens_per_s": tokens_per_s,
    })
}

fn append_line(path: &Path, record: &serde_json::Value) -> Result<(), StageError> {
    let mut file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    writeln!(file, "{record}").with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn truncate_to(path: &Path, bytes: u64) -> Result<(), StageError> {
    if path.exists() {
        let file = fs::OpenOptions::new()
            .write(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        file.set_len(bytes)
            .with_context(|| format!("truncating {}", path.display()))?;
    }
    Ok(())
}

/// The folder a source-model input's tokenizer files come from, if it has any.
pub(super) fn tokenizer_source(
    model_dir: &Path,
    dataset: Option<&TokenizedDataset>,
) -> Option<PathBuf> {
    if model_dir.join("tokenizer.json").is_file() || model_dir.join("tokenizer.model").is_file() {
        return Some(model_dir.to_path_buf());
    }
    dataset
        .map(TokenizedDataset::tokenizer_path)
        .filter(|path| path.is_file())
}

pub(super) fn run_l0(ctx: &StageContext<'_>, config: &PruneConfig) -> Result<(), StageError> {
    let seed = config.seed.unwrap_or(ctx.settings.seed);
    let base_device = crate::model::device::parse(&ctx.settings.device)
        .map_err(|error| StageError::config("settings.device", error.to_string()))?;
    let device = base_device.autodiff();
    let model_dir = ctx.input("model")?.to_path_buf();
    let data_dir = ctx.input("data")?.to_path_buf();

    // Everything that can be checked before compute.
    let source_config = super::load_source_config(config, &model_dir)?;
    let resolved = resolve_target(config, &source_config)?;
    let dataset = TokenizedDataset::open(&data_dir)
        .map_err(|error| StageError::input("data", error.to_string()))?;
    if dataset.vocab_size() > source_config.vocab_size {
        return Err(StageError::input(
            "data",
            format!(
                "the tokenizer has {} tokens but the model's vocabulary has {}; tokenize with the model's tokenizer",
                dataset.vocab_size(),
                source_config.vocab_size
            ),
        ));
    }
    let mut mixture = DomainMixture::new(&dataset, config.seq_len, seed, Exhaustion::Wrap)
        .map_err(|error| StageError::input("data", error.to_string()))?;
    let domains: Vec<String> = dataset.domains().to_vec();
    let reference_input = ctx.inputs.get("loading.reference").map(PathBuf::as_path);
    let mut policy =
        LoadingPolicy::new(&config.loading, &domains, reference_input).map_err(loading_error)?;
    mixture
        .set_weights(policy.weights())
        .map_err(|error| StageError::config("loading", error.to_string()))?;
    let windows = eval_windows(
        &dataset,
        config.seq_len,
        config.eval_batches * config.batch_size,
    )
    .map_err(|error| StageError::input("data", error.to_string()))?;

    let llama = load_hf(&model_dir, &device)
        .map_err(|error| StageError::input("model", error.to_string()))?
        .with_precision(ctx.settings.precision); // matmuls only; weights, masks and λ stay fp32
    let l0 = L0Module::new(
        resolved.dims.clone(),
        &config.pruning_modules,
        &device,
        &mut ChaCha8Rng::seed_from_u64(mask_init_seed(seed)),
    );
    let mut model = PruneModel { llama, l0 };
    let mut optimizer = build_optimizer(config.weight_decay);
    let mut mask_rng = ChaCha8Rng::seed_from_u64(mask_sample_seed(seed));

    let checkpoints = ctx.scratch_dir.join("checkpoints");
    let metrics_path = ctx.scratch_dir.join("metrics.jsonl");
    let fingerprint = checkpoint::fingerprint(&(ctx.config, seed, &ctx.settings.device));
    let mut start = 0usize;
    match checkpoint::newest_complete(&checkpoints)
        .map_err(|error| StageError::Other(error.into()))?
    {
        Some(found) => {
            let (restored, restored_optimizer, state) =
                checkpoint::load::<PruneModel, LoopState>(&found, &fingerprint, model, optimizer)
                    .map_err(|error| StageError::Other(error.into()))?;
            model = restored;
            optimizer = restored_optimizer;
            mask_rng = state.payload.mask_rng;
            policy
                .restore(state.payload.policy)
                .map_err(|error| StageError::Other(error.into()))?;
            mixture
                .restore(state.payload.sampler)
                .map_err(|error| StageError::Other(error.into()))?;
            truncate_to(&metrics_path, state.payload.metrics_bytes)?;
            start = state.step as usize;
            ctx.reporter.message(&format!(
                "resuming pruning from the checkpoint at step {start}"
            ));
        }
        None => {
            fs::create_dir_all(&ctx.scratch_dir).context("creating the scratch folder")?;
            truncate_to(&metrics_path, 0)?;
        }
    }

    for step in start..config.steps {
        ctx.cancel.check()?;
        let began = Instant::now();
        let batch = mixture
            .next_batch(config.batch_size)
            .map_err(|error| StageError::Other(error.into()))?;
        let (next, lm_loss, lagrangian, grad_norm) = train_step(
            model,
            &mut optimizer,
            config,
            &resolved,
            step,
            &batch.tokens,
            &mut mask_rng,
            &device,
        );
        model = next;
        if !(lm_loss.is_finite() && lagrangian.is_finite()) {
            return Err(StageError::Other(anyhow::anyhow!(
                "step {}: the loss became {lm_loss} (LM) + {lagrangian} (Lagrangian); lower `lr`, `mask_lr` or `lambda_lr`. \
                 The last checkpoint in {} is kept",
                step + 1,
                checkpoints.display()
            )));
        }
        let tokens_per_s =
            (config.batch_size * config.seq_len) as f64 / began.elapsed().as_secs_f64().max(1e-9);
        let record = step_record(
            config,
            &resolved,
            &model,
            step,
            (lm_loss, lagrangian, grad_norm),
            mixture.weights(),
            &domains,
            tokens_per_s,
        );
        ctx.reporter.metrics(&record);
        append_line(&metrics_path, &record)?;
        let done = step + 1;
        let update_now = policy.wants_update_at(done as u64);
        if done % config.eval_every() == 0 || done == config.steps || update_now {
            let losses = evaluate(&model, &windows, config.batch_size);
            let by_domain: serde_json::Map<String, serde_json::Value> = domains
                .iter()
                .cloned()
                .zip(losses.iter().map(|l| json!(l)))
                .collect();
            let kept = model.l0.host_z_loga().eval_masks();
            let kept_counts: serde_json::Map<String, serde_json::Value> = PruningModule::ALL
                .iter()
                .filter_map(|&m| kept.kept(m).map(|k| (m.name().to_string(), json!(k))))
                .collect();
            let mut eval =
                json!({ "step": done, "eval_loss": by_domain, "eval_kept": kept_counts });
            // Dynamic batch loading: new weights for the next batches (not after the last step).
            if done < config.steps && (policy.updates_on_eval() || update_now) {
                let update = policy
                    .update(done as u64, &losses)
                    .map_err(loading_error)?
                    .cloned();
                mixture
                    .set_weights(policy.weights())
                    .map_err(|error| StageError::Other(error.into()))?;
                eval["loading_update"] = json!(update);
            }
            ctx.reporter.metrics(&eval);
            append_line(&metrics_path, &eval)?;
        }
        ctx.reporter
            .progress(done as u64, config.steps as u64, "steps");
        if done % config.checkpoint_every() == 0 && done < config.steps {
            let metrics_bytes = fs::metadata(&metrics_path).map(|m| m.len()).unwrap_or(0);
            let state = LoopState {
                mask_rng: mask_rng.clone(),
                sampler: mixture.state(),
                policy: policy.state(),
                metrics_bytes,
            };
            checkpoint::save(
                &checkpoints,
                done as u64,
                &fingerprint,
                &model,
                &optimizer,
                &state,
                1,
            )
            .map_err(|error| StageError::Other(error.into()))?;
        }
    }

    // Final deterministic masks with exactly the target counts.
    let model = PruneModel {
        l0: model.l0.clamp_z_loga(),
        llama: model.llama,
    }
    .valid();
    let host_z = model.l0.host_z_loga();
    let final_masks = host_z.target_masks(&resolved.mask_target);
    let report = outputs::report(
        Method::L0,
        config,
        &source_config,
        &resolved,
        &final_masks,
        Some((&model.l0, &host_z)),
    )?;
    let tokenizer = tokenizer_source(&model_dir, Some(&dataset));
    outputs::write(
        ctx,
        &model.llama,
        tokenizer.as_deref(),
        &final_masks,
        Some(&model.l0),
        &report,
    )?;
    fs::copy(&metrics_path, ctx.out_dir.join("metrics.jsonl")).context("copying metrics.jsonl")?;
    Ok(())
}
