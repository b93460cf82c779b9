//! The ablation baselines `method = "magnitude"`, `"taylor"`, `"random"` and `"layer-drop"`: the
//! same target shape as L0 pruning, units chosen without training. Kept units get mask value 1
//! (nothing to fold), so the consolidated model is the source restricted to the chosen units.
//!
//! The importance of a unit sums a per-element score over every weight it owns (burn layout
//! `[in, out]`): `w²` for magnitude (the squared Frobenius norm); for taylor, LLM-Pruner's
//! element-wise first-order importance `|w · ∂loss/∂w|` (Ma et al. 2023, eq. 4, aggregated by sum
//! over the coupled group, its default), the gradients summed over calibration batches, the RMSNorm
//! weights of a hidden channel included. The weights a unit owns:
//! - hidden dim i: column i of `embed_tokens`, input row i of q/k/v/gate/up, output column i of
//!   o/down, input row i of `lm_head`;
//! - head unit (KV group) g of layer l: its query heads' q columns and o rows, its k and v columns;
//! - intermediate unit j of layer l: gate and up column j, down row j;
//! - layer l: all its attention and MLP weights.
//!
//! Per-layer modules keep the top units of each layer (uniform shape), like the deterministic L0 masks.
//! (LLM-Pruner does not remove whole layers; a taylor target with fewer layers drops the layers of
//! lowest summed importance.)

use burn::module::{Module, Param};
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::Tensor;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::outputs;
use super::train_loop::tokenizer_source;
use super::{DropLayersBy, Method, PruneConfig, ResolvedTarget, resolve_target};
use crate::model::l0::{HostMasks, PruningModule};
use crate::model::{Llama, load_hf};
use crate::stage::{StageContext, StageError};

/// 1.0 for the `keep` highest scores (ties: lower index first), 0.0 elsewhere.
pub fn keep_top(scores: &[f64], keep: usize) -> Vec<f32> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    let mut values = vec![0.0f32; scores.len()];
    for &index in order.iter().take(keep) {
        values[index] = 1.0;
    }
    values
}

/// Every unit's score, as a method ranks them (higher = kept first), rows as in
/// `pruning.json`'s `kept_indices`; `masks` keeps exactly the target's count of each row's top.
pub struct Ranking {
    /// `[layers][kv groups]`.
    pub head: Vec<Vec<f64>>,
    /// `[layers][intermediate]`.
    pub intermediate: Vec<Vec<f64>>,
    /// `[layers]`.
    pub layer: Vec<f64>,
    /// `[hidden]`.
    pub hidden: Vec<f64>,
    /// What the numbers are, in words (for `pruning.json`).
    pub score: &'static str,
    /// What the layer numbers are, where they differ from `score` (layer-drop).
    pub layer_score: &'static str,
}

impl Ranking {
    /// Exactly the target counts of the highest scores of every row.
    pub fn masks(&self, resolved: &ResolvedTarget) -> HostMasks {
        let target = &resolved.mask_target;
        HostMasks {
            head: Some(
                self.head
                    .iter()
                    .map(|row| keep_top(row, target.heads))
                    .collect(),
            ),
            intermediate: Some(
                self.intermediate
                    .iter()
                    .map(|row| keep_top(row, target.intermediate))
                    .collect(),
            ),
            layer: Some(keep_top(&self.layer, target.layers)),
            hidden: Some(keep_top(&self.hidden, target.hidden)),
        }
    }

    /// The scores for `pruning.json`, each module with what its numbers are.
    pub fn scores(&self) -> outputs::UnitScores {
        let (score, layer_score) = (self.score, self.layer_score);
        let module = |score: &str, rows: Vec<Vec<f64>>| outputs::ModuleScores {
            score: score.to_string(),
            rows,
        };
        [
            (PruningModule::Head, module(score, self.head.clone())),
            (
                PruningModule::Intermediate,
                module(score, self.intermediate.clone()),
            ),
            (
                PruningModule::Layer,
                module(layer_score, vec![self.layer.clone()]),
            ),
            (
                PruningModule::Hidden,
                module(score, vec![self.hidden.clone()]),
            ),
        ]
        .into_iter()
        .map(|(module, scores)| (module.name().to_string(), scores))
        .collect()
    }
}

/// What magnitude's scores are.
const MAGNITUDE_SCORE: &str =
    "sum of squared weights over the unit's coupled structure (squared Frobenius norm)";
/// What taylor's scores are.
const TAYLOR_SCORE: &str = "sum of |w * dloss/dw| over the unit's coupled structure (LLM-Pruner's \
     element-wise first-order importance), gradients summed over the calibration batches";

fn host(tensor: Tensor<2>) -> Vec<f64> {
    tensor
        .into_data()
        .try_into_vec::<f32>()
        .unwrap_or_default()
        .into_iter()
        .map(f64::from)
        .collect()
}

/// Σ per input row of a per-element score `[in, out]` → `[in]`.
fn row_sums(scores: Tensor<2>) -> Vec<f64> {
    let rows = scores.dims()[0];
    host(scores.sum_dim(1).reshape([1, rows]))
}

/// Σ per output column of a per-element score `[in, out]` → `[out]`.
fn column_sums(scores: Tensor<2>) -> Vec<f64> {
    host(scores.sum_dim(0))
}

/// The per-element importance of a weight (same shape out).
type ElementScore<'a, const D: usize> = &'a dyn Fn(&Param<Tensor<D>>) -> Tensor<D>;

/// The per-element importance of a weight matrix (`[in, out]`) and, where the method counts them,
/// of an RMSNorm weight (`[d]`).
struct ElementScores<'a> {
    matrix: ElementScore<'a, 2>,
    norm: Option<ElementScore<'a, 1>>,
}

fn add(into: &mut [f64], values: &[f64]) {
    into.iter_mut().zip(values).for_each(|(a, b)| *a += b);
}

/// Sum consecutive chunks of `values` of length `chunk`.
fn chunk_sums(values: &[f64], chunk: usize) -> Vec<f64> {
    values
        .chunks(chunk.max(1))
        .map(|c| c.iter().sum())
        .collect()
}

/// Scores every unit by its weight norm (squared).
pub fn magnitude_ranking(model: &Llama, resolved: &ResolvedTarget) -> Ranking {
    importance_ranking(
        model,
        resolved,
        MAGNITUDE_SCORE,
        &ElementScores {
            matrix: &|weight| weight.val().square(),
            norm: None,
        },
    )
}

/// Scores every unit by its first-order importance `Σ |w · ∂loss/∂w|`. `model` lives on an
/// autodiff device; `gradients` are its calibration gradients.
pub fn taylor_ranking(
    model: &Llama,
    gradients: &GradientsParams,
    resolved: &ResolvedTarget,
) -> Ranking {
    fn score<const D: usize>(weight: &Param<Tensor<D>>, gradients: &GradientsParams) -> Tensor<D> {
        let value = weight.val().inner();
        match gradients.get::<D>(weight.id) {
            Some(gradient) => (value * gradient).abs(),
            None => value.zeros_like(), // no path to the loss: no importance
        }
    }
    importance_ranking(
        model,
        resolved,
        TAYLOR_SCORE,
        &ElementScores {
            matrix: &|weight| score(weight, gradients),
            norm: Some(&|weight| score(weight, gradients)),
        },
    )
}

/// Scores every unit by the sum of its weights' element scores (module docs).
fn importance_ranking(
    model: &Llama,
    resolved: &ResolvedTarget,
    score: &'static str,
    scores: &ElementScores,
) -> Ranking {
    let dims = &resolved.dims;
    let matrix = |weight: &Param<Tensor<2>>| (scores.matrix)(weight);
    let mut hidden = column_sums(matrix(&model.embed_tokens.weight));
    if let Some(head) = &model.lm_head {
        add(&mut hidden, &row_sums(matrix(&head.weight)));
    }
    let add_norm = |hidden: &mut Vec<f64>, weight: &Param<Tensor<1>>| {
        if let Some(norm) = scores.norm {
            let values = norm(weight); // [d]
            let width = values.dims()[0];
            add(hidden, &host(values.reshape([1, width])));
        }
    };
    add_norm(&mut hidden, &model.norm.weight);
    let mut heads = Vec::new();
    let mut intermediate = Vec::new();
    let mut layers = Vec::new();
    for layer in &model.layers {
        let mut layer_total = 0.0;
        let mut group_scores = vec![0.0; dims.heads];
        if let Some(attn) = &layer.self_attn {
            let head_dim = attn.head_dim;
            let per_group = attn.num_heads() / attn.num_key_value_heads().max(1);
            add_norm(&mut hidden, &layer.input_layernorm.weight);
            for projection in [&attn.q_proj, &attn.k_proj, &attn.v_proj] {
                add(&mut hidden, &row_sums(matrix(&projection.weight)));
            }
            add(&mut hidden, &column_sums(matrix(&attn.o_proj.weight)));
            let query = chunk_sums(
                &column_sums(matrix(&attn.q_proj.weight)),
                per_group * head_dim,
            );
            let output = chunk_sums(&row_sums(matrix(&attn.o_proj.weight)), per_group * head_dim);
            let key = chunk_sums(&column_sums(matrix(&attn.k_proj.weight)), head_dim);
            let value = chunk_sums(&column_sums(matrix(&attn.v_proj.weight)), head_dim);
            for (g, score) in group_scores.iter_mut().enumerate() {
                *score = query.get(g).copied().unwrap_or(0.0)
                    + output.get(g).copied().unwrap_or(0.0)
                    + key.get(g).copied().unwrap_or(0.0)
                    + value.get(g).copied().unwrap_or(0.0);
            }
            layer_total += group_scores.iter().sum::<f64>();
        }
        let mut unit_scores = vec![0.0; dims.intermediate];
        if let Some(mlp) = &layer.mlp {
            add_norm(&mut hidden, &layer.post_attention_layernorm.weight);
            add(&mut hidden, &row_sums(matrix(&mlp.gate_proj.weight)));
            add(&mut hidden, &row_sums(matrix(&mlp.up_proj.weight)));
            add(&mut hidden, &column_sums(matrix(&mlp.down_proj.weight)));
            add(
                &mut unit_scores,
                &column_sums(matrix(&mlp.gate_proj.weight)),
            );
            add(&mut unit_scores, &column_sums(matrix(&mlp.up_proj.weight)));
            add(&mut unit_scores, &row_sums(matrix(&mlp.down_proj.weight)));
            layer_total += unit_scores.iter().sum::<f64>();
        }
        heads.push(group_scores);
        intermediate.push(unit_scores);
        layers.push(layer_total);
    }
    Ranking {
        head: heads,
        intermediate,
        layer: layers,
        hidden,
        score,
        layer_score: score,
    }
}

/// `method = "layer-drop"`: keep the target's number of layers, the first ones (`influence` =
/// `None`) or those of highest block influence; the other modules keep their magnitude ranking (all
/// ones where the target keeps the source's size).
pub fn layer_drop_ranking(
    model: &Llama,
    resolved: &ResolvedTarget,
    influence: Option<&[f64]>,
) -> Ranking {
    let layers = resolved.dims.layers;
    let (layer, layer_score) = match influence {
        Some(influence) => (
            influence.to_vec(),
            "block influence: 1 - mean cosine similarity of the residual stream before and after \
             the layer over the calibration batches",
        ),
        None => (
            (0..layers).map(|index| (layers - index) as f64).collect(), // earlier = higher
            "layers - index: the first layers are kept",
        ),
    };
    Ranking {
        layer,
        layer_score,
        ..magnitude_ranking(model, resolved)
    }
}

/// Calls `visit(index, tokens)` for each of `calibration_batches` (default 4) batches of
/// `batch_size` rows of `seq_len + 1` tokens, drawn uniformly from the stage's data with `seed`
/// (what `block_influence` and `taylor` score on); stops when the stage is cancelled.
fn for_each_calibration_batch(
    ctx: &StageContext<'_>,
    config: &PruneConfig,
    seed: u64,
    mut visit: impl FnMut(usize, &[u32]) -> Result<(), StageError>,
) -> Result<usize, StageError> {
    let dataset = crate::data::TokenizedDataset::open(ctx.input("data")?)
        .map_err(|error| StageError::input("data", error.to_string()))?;
    let mut mixture = crate::data::DomainMixture::new(
        &dataset,
        config.seq_len,
        seed,
        crate::data::Exhaustion::Wrap,
    )
    .map_err(|error| StageError::input("data", error.to_string()))?;
    let batches = config.calibration_batches.unwrap_or(4);
    for index in 0..batches {
        if ctx.cancel.is_cancelled() {
            return Err(StageError::Cancelled);
        }
        let batch = mixture
            .next_batch(config.batch_size)
            .map_err(|error| StageError::input("data", error.to_string()))?;
        visit(index, &batch.tokens)?;
    }
    Ok(batches)
}

/// Block influence of every layer, averaged over the calibration batches.
fn block_influence(
    ctx: &StageContext<'_>,
    config: &PruneConfig,
    model: &Llama,
    seed: u64,
    device: &burn::tensor::Device,
) -> Result<Vec<f64>, StageError> {
    let mut total = vec![0.0; model.layers.len()];
    let batches = for_each_calibration_batch(ctx, config, seed, |_, tokens| {
        let (input_ids, _) = crate::model::batch::causal_lm_batch_flat(
            tokens,
            config.batch_size,
            config.seq_len,
            device,
        ); // [batch, seq]
        add(&mut total, &model.block_influence(input_ids));
        Ok(())
    })?;
    let influence: Vec<f64> = total.iter().map(|sum| sum / batches as f64).collect();
    ctx.reporter.message(&format!(
        "block influence per layer: {}",
        influence
            .iter()
            .map(|value| format!("{value:.4}"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    Ok(influence)
}

/// `method = "taylor"`: ∂loss/∂w of every parameter of `model` (on an autodiff device), summed over
/// the calibration batches, each in `grad_accum` micro-batches (with activation checkpointing when
/// the stage asks for it).
fn calibration_gradients(
    ctx: &StageContext<'_>,
    config: &PruneConfig,
    model: &Llama,
    seed: u64,
    device: &burn::tensor::Device,
) -> Result<GradientsParams, StageError> {
    let batches = config.calibration_batches.unwrap_or(4) as u64;
    let rows = config.batch_size / config.grad_accum.max(1);
    let row_tokens = config.seq_len + 1;
    let mut accumulator = GradientsAccumulator::<Llama>::new();
    for_each_calibration_batch(ctx, config, seed, |index, tokens| {
        for micro in tokens.chunks(rows * row_tokens) {
            if ctx.cancel.is_cancelled() {
                return Err(StageError::Cancelled);
            }
            let (input_ids, targets) =
                crate::model::batch::causal_lm_batch_flat(micro, rows, config.seq_len, device); // [rows, seq]
            let gradients = if config.activation_checkpointing {
                model
                    .backward_checkpointed(input_ids, None, |logits| {
                        crate::model::cross_entropy(logits, targets) // [1]
                    })
                    .gradients
            } else {
                let loss = crate::model::cross_entropy(model.forward(input_ids, None), targets); // [1]
                GradientsParams::from_grads(loss.backward(), model)
            };
            accumulator.accumulate(model, gradients);
        }
        ctx.reporter
            .progress(index as u64 + 1, batches, "calibration batches");
        Ok(())
    })?;
    Ok(accumulator.grads())
}

/// What random's scores are.
const RANDOM_SCORE: &str = "a uniform draw in [0, 1) per unit (seeded)";

/// Scores every unit by a uniform random draw (seeded), so the kept units are a uniformly random
/// subset of each row.
pub fn random_ranking(resolved: &ResolvedTarget, seed: u64) -> Ranking {
    let dims = &resolved.dims;
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x7261_6e64_6f6d_5f6d); // "random_m"
    let mut draw = |size: usize| -> Vec<f64> { (0..size).map(|_| rng.random::<f64>()).collect() };
    let layer = draw(dims.layers);
    let hidden = draw(dims.hidden);
    let head = (0..dims.layers).map(|_| draw(dims.heads)).collect();
    let intermediate = (0..dims.layers).map(|_| draw(dims.intermediate)).collect();
    Ranking {
        head,
        intermediate,
        layer,
        hidden,
        score: RANDOM_SCORE,
        layer_score: RANDOM_SCORE,
    }
}

pub(super) fn run(ctx: &StageContext<'_>, config: &PruneConfig) -> Result<(), StageError> {
    let seed = config.seed.unwrap_or(ctx.settings.seed);
    let device = crate::model::device::parse(&ctx.settings.device)
        .map_err(|error| StageError::config("settings.device", error.to_string()))?;
    let model_dir = ctx.input("model")?.to_path_buf();
    let source_config = super::load_source_config(config, &model_dir)?;
    let resolved = resolve_target(config, &source_config)?;
    if config.method == Method::Taylor {
        let device = device.autodiff();
        let model = load_hf(&model_dir, &device)
            .map_err(|error| StageError::input("model", error.to_string()))?
            .with_precision(ctx.settings.precision);
        let gradients = calibration_gradients(ctx, config, &model, seed, &device)?;
        let ranking = taylor_ranking(&model, &gradients, &resolved);
        return write_outputs(
            ctx,
            config,
            &model.valid(),
            &model_dir,
            &source_config,
            &resolved,
            &ranking,
            seed,
        );
    }
    let model = load_hf(&model_dir, &device)
        .map_err(|error| StageError::input("model", error.to_string()))?;
    let ranking = match config.method {
        Method::Magnitude => magnitude_ranking(&model, &resolved),
        Method::Random => random_ranking(&resolved, seed),
        Method::LayerDrop => {
            let influence = match config.drop_layers_by {
                DropLayersBy::Top => None,
                DropLayersBy::BlockInfluence => {
                    Some(block_influence(ctx, config, &model, seed, &device)?)
                }
            };
            layer_drop_ranking(&model, &resolved, influence.as_deref())
        }
        Method::L0 | Method::Taylor => {
            unreachable!("l0 is run by the training loop, taylor above")
        }
    };
    write_outputs(
        ctx,
        config,
        &model,
        &model_dir,
        &source_config,
        &resolved,
        &ranking,
        seed,
    )
}

/// The stage's outputs for a one-shot method: the masked model folder, `pruning.json`, no consumed
/// windows, and metrics saying no data was trained on.
#[allow(clippy::too_many_arguments)]
fn write_outputs(
    ctx: &StageContext<'_>,
    config: &PruneConfig,
    model: &Llama,
    model_dir: &std::path::Path,
    source_config: &crate::model::LlamaConfig,
    resolved: &ResolvedTarget,
    ranking: &Ranking,
    seed: u64,
) -> Result<(), StageError> {
    let masks = &ranking.masks(resolved);
    let report = outputs::report(
        config.method,
        config,
        source_config,
        resolved,
        masks,
        outputs::Selection::OneShot(ranking.scores()),
    )?;
    let tokenizer = tokenizer_source(model_dir, None);
    outputs::write(ctx, model, tokenizer.as_deref(), masks, None, &report)?;
    super::train_loop::write_consumed(
        ctx,
        &crate::data::ConsumedWindows::none(seed, config.seq_len),
    )?;
    // No data was read: say so, so that `tokens_from = { prune = .. }` of an eval counts zero
    // tokens for a baseline instead of refusing a stage that reports none.
    let metrics = serde_json::json!({ "method": config.method, "steps": 0, "tokens": 0 });
    std::fs::write(ctx.out_dir.join("metrics.json"), format!("{metrics:#}\n")).map_err(|error| {
        StageError::Other(anyhow::Error::new(error).context("writing metrics.json"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::LlamaConfig;
    use crate::model::l0::PruningModule;
    use crate::stage::Stage;
    use crate::stages::prune::{PruneStage, resolve_target};

    fn resolved(config: &LlamaConfig) -> ResolvedTarget {
        let table: toml::Table = "model = { path = \"m\" }\nmethod = \"magnitude\"\ntarget = { layers = 2, hidden = 12, heads = 2, intermediate = 10 }"
            .parse()
            .unwrap();
        let normal = PruneStage.normalize(&table).unwrap();
        resolve_target(&PruneConfig::from_table(&normal).unwrap(), config).unwrap()
    }

    #[test]
    fn keep_top_is_exact_and_breaks_ties_low() {
        assert_eq!(keep_top(&[0.5, 2.0, 2.0, 1.0], 2), vec![0.0, 1.0, 1.0, 0.0]);
        assert_eq!(keep_top(&[1.0, 1.0, 1.0], 1), vec![1.0, 0.0, 0.0]);
    }

    #[test]
    fn magnitude_and_random_hit_the_target_counts() {
        let mut config = LlamaConfig::new(30, 16, 14, 3, 4, 4);
        config.head_dim = 4;
        let device = crate::model::device::for_tests();
        let model = Llama::new(&config, &device);
        let resolved = resolved(&config);
        for masks in [
            magnitude_ranking(&model, &resolved).masks(&resolved),
            random_ranking(&resolved, 7).masks(&resolved),
        ] {
            assert_eq!(masks.kept(PruningModule::Layer), Some(vec![2]));
            assert_eq!(masks.kept(PruningModule::Hidden), Some(vec![12]));
            assert_eq!(masks.kept(PruningModule::Head), Some(vec![2, 2, 2]));
            assert_eq!(
                masks.kept(PruningModule::Intermediate),
                Some(vec![10, 10, 10])
            );
        }
        let random = |seed| random_ranking(&resolved, seed).masks(&resolved);
        assert_eq!(random(7), random(7));
        assert_ne!(random(7), random(8));
    }

    /// An MLP unit with large gate and up weights whose `down_proj` row is zero never reaches the
    /// loss: magnitude keeps it (large norm), taylor drops it (`|w · ∂loss/∂w|` is zero for each of
    /// its weights: zero gradient through gate and up, zero weight in down).
    #[test]
    fn taylor_drops_a_heavy_unit_the_loss_does_not_see() {
        use burn::tensor::{Int, TensorData};
        let mut config = LlamaConfig::new(30, 16, 14, 3, 4, 4);
        config.head_dim = 4;
        let device = crate::model::device::for_tests().autodiff();
        device.seed(9);
        let mut model = Llama::new(&config, &device);
        let mlp = model.layers[0].mlp.as_mut().unwrap();
        for linear in [&mut mlp.gate_proj, &mut mlp.up_proj] {
            let boost = Tensor::<2>::zeros([16, 14], &device).slice_assign(
                [0..16, 5..6],
                Tensor::ones([16, 1], &device).mul_scalar(100.0),
            );
            linear.weight =
                burn::module::Param::from_tensor((linear.weight.val() + boost).detach());
        }
        let down = mlp.down_proj.weight.val();
        let keep_rows = Tensor::<2>::ones([14, 16], &device)
            .slice_assign([5..6, 0..16], Tensor::zeros([1, 16], &device));
        mlp.down_proj.weight = burn::module::Param::from_tensor((down * keep_rows).detach());
        let ids: Vec<i64> = (0..16).map(|i| (i * 7 + 2) % 30).collect();
        let input_ids = Tensor::<2, Int>::from_data(TensorData::new(ids.clone(), [2, 8]), &device);
        let targets = Tensor::<2, Int>::from_data(
            TensorData::new(ids.iter().map(|i| (i + 3) % 30).collect::<Vec<_>>(), [2, 8]),
            &device,
        );
        let loss = crate::model::cross_entropy(model.forward(input_ids, None), targets);
        let gradients = GradientsParams::from_grads(loss.backward(), &model);
        let resolved = resolved(&config);
        let magnitude = magnitude_ranking(&model.valid(), &resolved).masks(&resolved);
        let taylor = taylor_ranking(&model, &gradients, &resolved).masks(&resolved);
        assert_eq!(magnitude.intermediate.as_ref().unwrap()[0][5], 1.0);
        assert_eq!(taylor.intermediate.as_ref().unwrap()[0][5], 0.0);
        assert_eq!(
            taylor.kept(PruningModule::Intermediate),
            Some(vec![10, 10, 10])
        );
        assert_eq!(taylor.kept(PruningModule::Hidden), Some(vec![12]));
    }

    #[test]
    fn magnitude_keeps_the_heavy_units() {
        let mut config = LlamaConfig::new(30, 16, 14, 3, 4, 4);
        config.head_dim = 4;
        let resolved = resolved(&config);
        let device = crate::model::device::for_tests();
        let mut model = Llama::new(&config, &device);
        // Make intermediate unit 5 of layer 0 and hidden dim 3 huge.
        let mlp = model.layers[0].mlp.as_mut().unwrap();
        let up = mlp.up_proj.weight.val();
        let boost = Tensor::<2>::zeros([16, 14], &device).slice_assign(
            [0..16, 5..6],
            Tensor::ones([16, 1], &device).mul_scalar(100.0),
        );
        mlp.up_proj.weight = burn::module::Param::from_tensor(up + boost);
        let masks = magnitude_ranking(&model, &resolved).masks(&resolved);
        assert_eq!(masks.intermediate.as_ref().unwrap()[0][5], 1.0);
        let embed = model.embed_tokens.weight.val();
        let boost = Tensor::<2>::zeros([30, 16], &device).slice_assign(
            [0..30, 3..4],
            Tensor::ones([30, 1], &device).mul_scalar(100.0),
        );
        model.embed_tokens.weight = burn::module::Param::from_tensor(embed + boost);
        let masks = magnitude_ranking(&model, &resolved).masks(&resolved);
        assert_eq!(masks.hidden.as_ref().unwrap()[3], 1.0);
    }
}
