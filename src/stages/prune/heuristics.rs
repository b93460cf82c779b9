//! The ablation baselines `method = "magnitude"`, `"random"` and `"layer-drop"`: the same target
//! shape as L0 pruning, units chosen without training. Kept units get mask value 1 (nothing to fold), so the
//! consolidated model is the source restricted to the chosen units.
//!
//! Magnitude importance of a unit is the squared Frobenius norm of every weight it owns (burn layout
//! `[in, out]`):
//! - hidden dim i: column i of `embed_tokens`, input row i of q/k/v/gate/up, output column i of
//!   o/down, input row i of `lm_head`;
//! - head unit (KV group) g of layer l: its query heads' q columns and o rows, its k and v columns;
//! - intermediate unit j of layer l: gate and up column j, down row j;
//! - layer l: all its attention and MLP weights.
//!
//! Per-layer modules keep the top units of each layer (uniform shape), like the deterministic L0 masks.

use burn::tensor::Tensor;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use super::outputs;
use super::train_loop::tokenizer_source;
use super::{DropLayersBy, Method, PruneConfig, ResolvedTarget, resolve_target};
use crate::model::l0::HostMasks;
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

fn keep_random(size: usize, keep: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
    let mut order: Vec<usize> = (0..size).collect();
    order.shuffle(rng);
    let mut values = vec![0.0f32; size];
    for &index in order.iter().take(keep) {
        values[index] = 1.0;
    }
    values
}

fn host(tensor: Tensor<2>) -> Vec<f64> {
    tensor
        .into_data()
        .try_into_vec::<f32>()
        .unwrap_or_default()
        .into_iter()
        .map(f64::from)
        .collect()
}

/// Σ w² per input row, `[in]`.
fn row_squares(weight: Tensor<2>) -> Vec<f64> {
    let rows = weight.dims()[0];
    host(weight.square().sum_dim(1).reshape([1, rows]))
}

/// Σ w² per output column, `[out]`.
fn column_squares(weight: Tensor<2>) -> Vec<f64> {
    host(weight.square().sum_dim(0))
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

/// Masks keeping the units of largest weight norm, exactly the target counts.
pub fn magnitude_masks(model: &Llama, resolved: &ResolvedTarget) -> HostMasks {
    let dims = &resolved.dims;
    let target = &resolved.mask_target;
    let mut hidden = column_squares(model.embed_tokens.weight.val());
    if let Some(head) = &model.lm_head {
        add(&mut hidden, &row_squares(head.weight.val()));
    }
    let mut heads = Vec::new();
    let mut intermediate = Vec::new();
    let mut layers = Vec::new();
    for layer in &model.layers {
        let mut layer_total = 0.0;
        let mut group_scores = vec![0.0; dims.heads];
        if let Some(attn) = &layer.self_attn {
            let head_dim = attn.head_dim;
            let per_group = attn.num_heads() / attn.num_key_value_heads().max(1);
            for projection in [&attn.q_proj, &attn.k_proj, &attn.v_proj] {
                add(&mut hidden, &row_squares(projection.weight.val()));
            }
            add(&mut hidden, &column_squares(attn.o_proj.weight.val()));
            let query = chunk_sums(
                &column_squares(attn.q_proj.weight.val()),
                per_group * head_dim,
            );
            let output = chunk_sums(&row_squares(attn.o_proj.weight.val()), per_group * head_dim);
            let key = chunk_sums(&column_squares(attn.k_proj.weight.val()), head_dim);
            let value = chunk_sums(&column_squares(attn.v_proj.weight.val()), head_dim);
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
            add(&mut hidden, &row_squares(mlp.gate_proj.weight.val()));
            add(&mut hidden, &row_squares(mlp.up_proj.weight.val()));
            add(&mut hidden, &column_squares(mlp.down_proj.weight.val()));
            add(
                &mut unit_scores,
                &column_squares(mlp.gate_proj.weight.val()),
            );
            add(&mut unit_scores, &column_squares(mlp.up_proj.weight.val()));
            add(&mut unit_scores, &row_squares(mlp.down_proj.weight.val()));
            layer_total += unit_scores.iter().sum::<f64>();
        }
        heads.push(keep_top(&group_scores, target.heads));
        intermediate.push(keep_top(&unit_scores, target.intermediate));
        layers.push(layer_total);
    }
    HostMasks {
        head: Some(heads),
        intermediate: Some(intermediate),
        layer: Some(keep_top(&layers, target.layers)),
        hidden: Some(keep_top(&hidden, target.hidden)),
    }
}

/// `method = "layer-drop"`: keep the target's number of layers, the first ones (`influence` =
/// `None`) or those of highest block influence; the other modules keep their magnitude masks (all
/// ones where the target keeps the source's size).
pub fn layer_drop_masks(
    model: &Llama,
    resolved: &ResolvedTarget,
    influence: Option<&[f64]>,
) -> HostMasks {
    let layers = resolved.dims.layers;
    let scores: Vec<f64> = match influence {
        Some(influence) => influence.to_vec(),
        None => (0..layers).map(|index| (layers - index) as f64).collect(), // earlier = higher
    };
    HostMasks {
        layer: Some(keep_top(&scores, resolved.mask_target.layers)),
        ..magnitude_masks(model, resolved)
    }
}

/// Block influence of every layer, averaged over `calibration_batches` (default 4) batches of
/// `batch_size` × `seq_len` tokens drawn uniformly from the stage's data with its seed.
fn block_influence(
    ctx: &StageContext<'_>,
    config: &PruneConfig,
    model: &Llama,
    seed: u64,
    device: &burn::tensor::Device,
) -> Result<Vec<f64>, StageError> {
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
    let mut total = vec![0.0; model.layers.len()];
    for _ in 0..batches {
        if ctx.cancel.is_cancelled() {
            return Err(StageError::Cancelled);
        }
        let batch = mixture
            .next_batch(config.batch_size)
            .map_err(|error| StageError::input("data", error.to_string()))?;
        let (input_ids, _) = crate::model::batch::causal_lm_batch_flat(
            &batch.tokens,
            config.batch_size,
            config.seq_len,
            device,
        ); // [batch, seq]
        add(&mut total, &model.block_influence(input_ids));
    }
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

/// Masks keeping uniformly random units, exactly the target counts (seeded).
pub fn random_masks(resolved: &ResolvedTarget, seed: u64) -> HostMasks {
    let dims = &resolved.dims;
    let target = &resolved.mask_target;
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x7261_6e64_6f6d_5f6d); // "random_m"
    let layer = keep_random(dims.layers, target.layers, &mut rng);
    let hidden = keep_random(dims.hidden, target.hidden, &mut rng);
    let head = (0..dims.layers)
        .map(|_| keep_random(dims.heads, target.heads, &mut rng))
        .collect();
    let intermediate = (0..dims.layers)
        .map(|_| keep_random(dims.intermediate, target.intermediate, &mut rng))
        .collect();
    HostMasks {
        head: Some(head),
        intermediate: Some(intermediate),
        layer: Some(layer),
        hidden: Some(hidden),
    }
}

pub(super) fn run(ctx: &StageContext<'_>, config: &PruneConfig) -> Result<(), StageError> {
    let seed = config.seed.unwrap_or(ctx.settings.seed);
    let device = crate::model::device::parse(&ctx.settings.device)
        .map_err(|error| StageError::config("settings.device", error.to_string()))?;
    let model_dir = ctx.input("model")?.to_path_buf();
    let source_config = super::load_source_config(config, &model_dir)?;
    let resolved = resolve_target(config, &source_config)?;
    let model = load_hf(&model_dir, &device)
        .map_err(|error| StageError::input("model", error.to_string()))?;
    let masks = match config.method {
        Method::Magnitude => magnitude_masks(&model, &resolved),
        Method::Random => random_masks(&resolved, seed),
        Method::LayerDrop => {
            let influence = match config.drop_layers_by {
                DropLayersBy::Top => None,
                DropLayersBy::BlockInfluence => {
                    Some(block_influence(ctx, config, &model, seed, &device)?)
                }
            };
            layer_drop_masks(&model, &resolved, influence.as_deref())
        }
        Method::L0 => unreachable!("l0 is run by the training loop"),
    };
    let report = outputs::report(
        config.method,
        config,
        &source_config,
        &resolved,
        &masks,
        None,
    )?;
    let tokenizer = tokenizer_source(&model_dir, None);
    outputs::write(ctx, &model, tokenizer.as_deref(), &masks, None, &report)?;
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
            magnitude_masks(&model, &resolved),
            random_masks(&resolved, 7),
        ] {
            assert_eq!(masks.kept(PruningModule::Layer), Some(vec![2]));
            assert_eq!(masks.kept(PruningModule::Hidden), Some(vec![12]));
            assert_eq!(masks.kept(PruningModule::Head), Some(vec![2, 2, 2]));
            assert_eq!(
                masks.kept(PruningModule::Intermediate),
                Some(vec![10, 10, 10])
            );
        }
        assert_eq!(random_masks(&resolved, 7), random_masks(&resolved, 7));
        assert_ne!(random_masks(&resolved, 7), random_masks(&resolved, 8));
    }

    #[test]
    fn magnitude_keeps_the_heavy_units() {
        let mut config = LlamaConfig::new(30, 16, 14, 3, 4, 4);
        config.head_dim = 4;
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
        let masks = magnitude_masks(&model, &resolved(&config));
        assert_eq!(masks.intermediate.as_ref().unwrap()[0][5], 1.0);
        let embed = model.embed_tokens.weight.val();
        let boost = Tensor::<2>::zeros([30, 16], &device).slice_assign(
            [0..30, 3..4],
            Tensor::ones([30, 1], &device).mul_scalar(100.0),
        );
        model.embed_tokens.weight = burn::module::Param::from_tensor(embed + boost);
        let masks = magnitude_masks(&model, &resolved(&config));
        assert_eq!(masks.hidden.as_ref().unwrap()[3], 1.0);
    }
}
