//! The `method = "l0"` pruning step (paper §2.1; the step is spelled out in docs/pruning.md) and the
//! stage's run on the [training driver](crate::train::driver).
//!
//! Per optimiser step: clamp z_loga → draw ONE hard-concrete noise sample per mask unit (shared by the
//! step's micro-batches, so `grad_accum` changes memory, not the step) → per micro-batch: masked
//! forward → loss = token-mean CE / grad_accum (+ the Lagrangian, targets warmed up linearly, in the
//! first micro-batch only: it depends on z_loga and λ, not on the data) → backward. Then, on the
//! accumulated gradients: negate the λ gradients (ascent) → global-norm clip over everything → one
//! AdamW step with three learning-rate groups (weights `lr`, z_loga `mask_lr`, λ `lambda_lr`, all times
//! the same cosine-with-warm-up factor; z and λ never decay). Evaluation uses the deterministic
//! expected-count masks.
//!
//! Resume, metrics, cancel, evaluation cadence, dynamic batch loading, non-finite losses and
//! checkpoints are the driver's; the step adds the mask RNG to the checkpoint, so a rerun continues
//! from the newest complete checkpoint and ends with the same bits as an uninterrupted run (on CPU).

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context;
use burn::module::{Module, ParamGroup};
use burn::optim::lr_scheduler::module_lr_scheduler::ModuleLrScheduler;
use burn::optim::{GradientsAccumulator, GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::outputs;
use super::{
    MaskSampling, Method, PruneConfig, PruneStage, ResolvedTarget, loading_error, resolve_target,
};
use crate::data::loading::LoadingPolicy;
use crate::data::{DomainMixture, EvalWindows, Exhaustion, TokenizedDataset, eval_windows};
use crate::model::l0::{L0Module, MaskNoise, PruningModule, warmed_up_target};
use crate::model::{Llama, Masks, cross_entropy, cross_entropy_per_sequence, load_hf};
use crate::stage::{Stage, StageContext, StageError};
use crate::train::driver::{
    self, Backward, DriverParts, MicroBatch, MicroBatchLoss, StepRates, TrainStep, domain_losses,
    per_micro_batch,
};
use crate::train::optim::AdamWSettings;
use crate::train::schedule::cosine_with_warmup;

/// What the optimiser trains: the model weights and the L0 module (z_loga, λ) together.
#[derive(Module, Debug)]
pub struct PruneModel {
    pub llama: Llama,
    pub l0: L0Module,
}

/// Seed streams derived from the stage seed (kept apart so that one never shifts another).
fn mask_init_seed(seed: u64) -> u64 {
    seed ^ 0x6d61_736b_5f69_6e69 // "mask_ini"
}
fn mask_sample_seed(seed: u64) -> u64 {
    seed ^ 0x6d61_736b_5f73_6d70 // "mask_smp"
}

/// The AdamW optimiser with the three groups (weights with `adamw`'s decay and `no_decay`; z_loga and
/// λ without decay); the same construction is used to resume.
pub fn build_optimizer(adamw: &AdamWSettings) -> ModuleOptimizer {
    adamw.build().with_group(
        ParamGroup::from_any_predicates(vec!["z_loga", "lambda"]),
        adamw.adamw(0.0),
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

/// The mask RNG: what a resumed prune run needs besides parameters, optimiser and sampler.
#[derive(Debug, Serialize, Deserialize)]
pub struct L0State {
    mask_rng: ChaCha8Rng,
}

/// One L0 pruning step for the driver.
pub struct L0Step {
    config: PruneConfig,
    resolved: ResolvedTarget,
    mask_rng: ChaCha8Rng,
    /// The current step's mask noise (drawn in `begin_step`).
    noise: Option<MaskNoise>,
}

impl L0Step {
    pub fn new(config: &PruneConfig, resolved: &ResolvedTarget, mask_rng: ChaCha8Rng) -> Self {
        L0Step {
            config: config.clone(),
            resolved: resolved.clone(),
            mask_rng,
            noise: None,
        }
    }

    /// The Lagrangian's per-module targets at the 0-based `step` (warmed up linearly).
    fn target_at(&self, module: PruningModule, step: u64) -> f64 {
        warmed_up_target(
            self.resolved
                .mask_target
                .sparsity(&self.resolved.dims, module),
            step as usize,
            self.config.lagrangian_warmup_steps(),
        )
    }
}

/// One micro-batch with per-layer activation checkpointing: the model's gradients and ∂loss/∂z from
/// [`Llama::backward_checkpointed`], then one small backward from the masks (and the Lagrangian) into
/// the L0 parameters; the two sets of gradients touch disjoint parameters and are merged.
fn checkpointed_micro_batch(
    model: &PruneModel,
    masks: &Masks,
    lagrangian: Option<Tensor<1>>,
    batch: MicroBatch,
) -> MicroBatchLoss {
    let (labels, count) = (batch.labels, batch.count);
    let result = model
        .llama
        .backward_checkpointed(batch.input_ids, Some(masks), |logits| {
            per_micro_batch(cross_entropy(logits, labels), count) // [1]
        });
    let lagrangian_value = lagrangian
        .as_ref()
        .map_or(0.0, |l| l.clone().into_scalar::<f32>() as f64);
    let upstream = [masks.surrogate(&result.mask_gradients), lagrangian]
        .into_iter()
        .flatten()
        .reduce(|a, b| a + b); // [1]
    let mut merged = GradientsAccumulator::<PruneModel>::new();
    merged.accumulate(model, result.gradients);
    if let Some(upstream) = upstream {
        merged.accumulate(
            model,
            GradientsParams::from_grads(upstream.backward(), model),
        );
    }
    MicroBatchLoss {
        backward: Backward::Gradients(merged.grads()),
        value: result.loss + lagrangian_value,
        parts: vec![("lm_loss", result.loss), ("lagrangian", lagrangian_value)],
    }
}

impl TrainStep for L0Step {
    type Model = PruneModel;
    type State = L0State;

    fn begin_step(&mut self, model: PruneModel, _step: u64) -> PruneModel {
        let model = PruneModel {
            l0: model.l0.clamp_z_loga(),
            llama: model.llama,
        };
        self.noise = Some(model.l0.draw_noise(&mut self.mask_rng));
        model
    }

    fn micro_batch_loss(
        &mut self,
        model: &PruneModel,
        batch: MicroBatch,
        step: u64,
    ) -> MicroBatchLoss {
        // The step's first micro-batch uses the sample `begin_step` drew; later ones draw their own
        // unless the recipe asks for one sample per step.
        if batch.index > 0 && self.config.mask_sampling == MaskSampling::PerMicroBatch {
            self.noise = None;
        }
        let noise = self
            .noise
            .get_or_insert_with(|| model.l0.draw_noise(&mut self.mask_rng));
        let masks = model.l0.masks_from_noise(noise);
        let lagrangian = if batch.index == 0 {
            model.l0.lagrangian(|module| self.target_at(module, step)) // [1]
        } else {
            None
        };
        if self.config.activation_checkpointing {
            return checkpointed_micro_batch(model, &masks, lagrangian, batch);
        }
        let logits = model.llama.forward(batch.input_ids, Some(&masks)); // [micro_batch, seq, vocab]
        let lm_loss = per_micro_batch(cross_entropy(logits, batch.labels), batch.count); // [1]
        let objective = match &lagrangian {
            Some(lagrangian) => lm_loss.clone() + lagrangian.clone(),
            None => lm_loss.clone(),
        };
        let lm_value = lm_loss.into_scalar::<f32>() as f64;
        let lagrangian_value = lagrangian.map_or(0.0, |l| l.into_scalar::<f32>() as f64);
        MicroBatchLoss {
            backward: Backward::Objective(Box::new(objective)),
            value: lm_value + lagrangian_value,
            parts: vec![("lm_loss", lm_value), ("lagrangian", lagrangian_value)],
        }
    }

    /// Gradient ASCENT on the multipliers: AdamW with a negated gradient = a negative learning rate.
    fn finish_gradients(&self, model: &PruneModel, mut grads: GradientsParams) -> GradientsParams {
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
        grads
    }

    fn learning_rates(&self, step: u64) -> StepRates {
        let (lr, mask_lr, lambda_lr) = learning_rates(&self.config, step as usize);
        let rates = ModuleLrScheduler::new(lr)
            .with_group(ParamGroup::from_predicate("z_loga"), mask_lr)
            .with_group(ParamGroup::from_predicate("lambda"), lambda_lr)
            .step();
        StepRates {
            rates,
            logged: vec![("lr", lr), ("mask_lr", mask_lr), ("lambda_lr", lambda_lr)],
        }
    }

    fn step_metrics(
        &self,
        model: &PruneModel,
        step: u64,
    ) -> serde_json::Map<String, serde_json::Value> {
        let host = model.l0.host_z_loga();
        let mut expected = serde_json::Map::new();
        let mut target = serde_json::Map::new();
        let mut lambdas = serde_json::Map::new();
        for module in model.l0.modules() {
            let rows = host.expected_sparsity(module).unwrap_or_default();
            let mean = rows.iter().sum::<f64>() / rows.len().max(1) as f64;
            expected.insert(module.name().into(), json!(mean));
            target.insert(module.name().into(), json!(self.target_at(module, step)));
            lambdas.insert(module.name().into(), json!(model.l0.host_lambda(module)));
        }
        let expected_parameters = host.expected_parameters(&self.resolved.dims);
        let mut record = serde_json::Map::new();
        record.insert("expected_sparsity".into(), expected.into());
        record.insert("target_sparsity".into(), target.into());
        record.insert("lambda".into(), lambdas.into());
        record.insert("expected_parameters".into(), json!(expected_parameters));
        record.insert(
            "expected_model_sparsity".into(),
            json!(1.0 - expected_parameters / self.resolved.dims.prunable_parameters()),
        );
        record
    }

    /// Mean CE per domain on the fixed eval windows, with the deterministic eval-time masks.
    fn evaluate(&self, model: &PruneModel, eval: &[EvalWindows], micro_batch: usize) -> Vec<f64> {
        let valid = model.clone().valid();
        let device = valid.llama.embed_tokens.weight.device();
        let masks: Masks = valid.l0.host_z_loga().eval_masks().to_masks(&device);
        domain_losses(eval, micro_batch, &device, |input_ids, labels| {
            cross_entropy_per_sequence(valid.llama.forward(input_ids, Some(&masks)), labels) // [rows]
        })
    }

    fn eval_metrics(&self, model: &PruneModel) -> serde_json::Map<String, serde_json::Value> {
        let kept = model.l0.host_z_loga().eval_masks();
        let kept_counts: serde_json::Map<String, serde_json::Value> = PruningModule::ALL
            .iter()
            .filter_map(|&m| kept.kept(m).map(|k| (m.name().to_string(), json!(k))))
            .collect();
        [("eval_kept".to_string(), kept_counts.into())]
            .into_iter()
            .collect()
    }

    fn device(&self, model: &PruneModel) -> Device {
        model.llama.embed_tokens.weight.device()
    }

    fn state(&self) -> L0State {
        L0State {
            mask_rng: self.mask_rng.clone(),
        }
    }

    fn restore(&mut self, state: L0State) {
        self.mask_rng = state.mask_rng;
    }

    fn non_finite_hint(&self) -> &'static str {
        "Lower `lr`, `mask_lr` or `lambda_lr`, lengthen the warm-up"
    }
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
    let policy =
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
    let model = PruneModel { llama, l0 };
    let mut step = L0Step::new(
        config,
        &resolved,
        ChaCha8Rng::seed_from_u64(mask_sample_seed(seed)),
    );
    let fingerprint = driver::fingerprint(
        ctx.config,
        json!({
            "seed": seed, "device": ctx.settings.device, "kind": "prune",
            "version": PruneStage.version(),
        }),
    );
    let outcome = driver::run(
        &mut step,
        &config.driver_settings(),
        DriverParts {
            model,
            optimizer: build_optimizer(&config.adamw()),
            mixture,
            policy,
            eval: windows,
        },
        &ctx.scratch_dir,
        &fingerprint,
        ctx.reporter,
        &ctx.cancel,
    )?;
    let model = outcome.model;
    write_consumed(ctx, &outcome.consumed)?;

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
        outputs::Selection::Learned(&model.l0, &host_z),
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
    fs::copy(
        ctx.scratch_dir.join(driver::METRICS_FILE),
        ctx.out_dir.join(driver::METRICS_FILE),
    )
    .context("copying metrics.jsonl")?;
    Ok(())
}

/// `consumed_windows.json`: where pruning's sampler stopped in each domain, for a later stage's
/// `skip_windows_of` (continued pre-training on other windows).
pub(super) fn write_consumed(
    ctx: &StageContext<'_>,
    consumed: &crate::data::ConsumedWindows,
) -> Result<(), StageError> {
    let text = serde_json::to_string_pretty(consumed).map_err(anyhow::Error::from)?;
    fs::write(
        ctx.out_dir.join(crate::data::CONSUMED_WINDOWS_FILE),
        text + "\n",
    )
    .map_err(|error| {
        StageError::Other(anyhow::Error::new(error).context("writing consumed_windows.json"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::LlamaConfig;
    use crate::model::init::seeded_normal_init;
    use crate::train::driver::take_step;

    fn values(model: &PruneModel) -> Vec<f32> {
        struct Collect(Vec<f32>);
        impl burn::module::ModuleVisitor for Collect {
            fn visit_float<const D: usize>(
                &mut self,
                param: &burn::module::Param<burn::tensor::Tensor<D>>,
            ) {
                self.0
                    .extend(param.val().into_data().try_into_vec_as::<f32>().unwrap());
            }
        }
        let mut collect = Collect(Vec::new());
        model.visit(&mut collect);
        collect.0
    }

    /// One step of batch 4 as one pass and as two micro-batches of 2 from the same model, noise and
    /// rows: (updated parameters, loss, grad norm).
    fn one_step(grad_accum: usize) -> (Vec<f32>, f64, f64, Vec<(&'static str, f64)>) {
        one_step_sampled(grad_accum, "per_step")
    }

    fn one_step_sampled(
        grad_accum: usize,
        sampling: &str,
    ) -> (Vec<f32>, f64, f64, Vec<(&'static str, f64)>) {
        let device = crate::model::device::for_tests().autodiff();
        let source = LlamaConfig::new(48, 16, 24, 2, 4, 4);
        let table: toml::Table = format!(
            "model = {{ path = \"m\" }}\ndata = {{ stage = \"d\" }}\nsteps = 10\nbatch_size = 4\ngrad_accum = {grad_accum}\n\
             seq_len = 8\nlr = 1e-3\nwarmup_steps = 0\nlagrangian_warmup_steps = 0\nmask_lr = 0.5\nlambda_lr = 0.5\n\
             target = {{ layers = 1, hidden = 8, heads = 2, intermediate = 12 }}\nmask_sampling = \"{sampling}\"\n"
        )
        .parse()
        .unwrap();
        let config = PruneConfig::from_table(&PruneStage.normalize(&table).unwrap()).unwrap();
        config.check().unwrap();
        let resolved = resolve_target(&config, &source).unwrap();
        let model = PruneModel {
            llama: seeded_normal_init(Llama::new(&source, &device), 3, 0.02),
            l0: L0Module::new(
                resolved.dims.clone(),
                &config.pruning_modules,
                &device,
                &mut ChaCha8Rng::seed_from_u64(4),
            ),
        };
        let mut optimizer = build_optimizer(&config.adamw());
        let mut step = L0Step::new(&config, &resolved, ChaCha8Rng::seed_from_u64(5));
        let rows: Vec<u32> = (0..4 * 9).map(|i| (i * 7 + i / 5) % 48).collect();
        let micro = 4 / grad_accum;
        let mut next = 0;
        let mut draw = || {
            let batch = &rows[next * micro * 9..(next + 1) * micro * 9];
            next += 1;
            Ok(crate::model::batch::causal_lm_batch_flat(
                batch, micro, 8, &device,
            ))
        };
        let result = take_step(
            &mut step,
            model,
            &mut optimizer,
            3,
            grad_accum,
            1.0,
            &mut draw,
        )
        .unwrap();
        assert!(result.finite);
        (
            values(&result.model),
            result.loss,
            result.grad_norm,
            result.parts,
        )
    }

    /// By default each micro-batch draws its own mask sample (the reference's one per forward call):
    /// two micro-batches then take another step than one pass, and than one shared sample.
    #[test]
    fn each_micro_batch_draws_its_own_masks_by_default() {
        let (shared, loss_shared, ..) = one_step_sampled(2, "per_step");
        let (own, loss_own, ..) = one_step_sampled(2, "per_micro_batch");
        let (again, loss_again, ..) = one_step_sampled(2, "per_micro_batch");
        assert_ne!(loss_shared, loss_own);
        assert_ne!(shared, own);
        assert_eq!(
            (own, loss_own),
            (again, loss_again),
            "deterministic in the mask seed"
        );
        // With one micro-batch the two settings are the same step, bit for bit.
        assert_eq!(
            one_step_sampled(1, "per_step").0,
            one_step_sampled(1, "per_micro_batch").0
        );
    }

    /// With `mask_sampling = "per_step"`, grad_accum only changes memory: two micro-batches of 2 take the step one pass of 4 takes, up to
    /// float summation order (tolerance: 1e-5 relative on loss and gradient norm, 1e-6 absolute on
    /// every updated parameter, i.e. 1e-3 of the weights' lr).
    #[test]
    fn two_micro_batches_take_the_same_step_as_one_pass() {
        let (one, loss_one, norm_one, parts_one) = one_step(1);
        let (two, loss_two, norm_two, parts_two) = one_step(2);
        assert!(
            (loss_one - loss_two).abs() <= 1e-5 * loss_one.abs(),
            "{loss_one} vs {loss_two}"
        );
        assert!(
            (norm_one - norm_two).abs() <= 1e-5 * norm_one,
            "{norm_one} vs {norm_two}"
        );
        for ((name, a), (other, b)) in parts_one.iter().zip(&parts_two) {
            assert_eq!(name, other);
            assert!(
                (a - b).abs() <= 1e-5 * a.abs().max(1e-3),
                "{name}: {a} vs {b}"
            );
        }
        assert_eq!(one.len(), two.len());
        let worst = one
            .iter()
            .zip(&two)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(worst <= 1e-6, "largest parameter difference {worst}");
        // ... and it is a real step: the parameters moved.
        let (before, ..) = {
            let device = crate::model::device::for_tests();
            let source = LlamaConfig::new(48, 16, 24, 2, 4, 4);
            let llama = seeded_normal_init(Llama::new(&source, &device), 3, 0.02);
            (llama
                .embed_tokens
                .weight
                .val()
                .into_data()
                .try_into_vec_as::<f32>()
                .unwrap(),)
        };
        assert!(before.iter().zip(&one).any(|(a, b)| a != b));
    }
}
