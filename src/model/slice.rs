//! Consolidation: fold deterministic masks into the weights and slice a masked model into a dense one
//! (docs/pruning.md, `consolidate`), so that the dense model computes exactly what the masked model computes in eval mode.
//!
//! Every mask is folded exactly ONCE, on the path where the masked forward applies it:
//! - `head_z[l, g]` scales the context of group g's query heads before `o_proj` → the `o_proj` input
//!   rows of those heads (this works for GQA too, where `v_proj` rows are shared by several heads);
//! - `layer_z[l]` scales both block outputs → all of `o_proj` and `down_proj`;
//! - `hidden_z` scales both block outputs and every RMSNorm output → the `o_proj`/`down_proj` output
//!   columns and the three norm weights. It is NOT folded into `lm_head` (the reference does, which
//!   applies it twice on the logit path) and NOT into `embed_tokens` (the reference does, although
//!   its training forward never masks the embedding);
//! - `intermediate_z[l]` scales the `up_proj` output → `up_proj` output columns.
//!
//! Units whose mask is exactly 0 are then sliced away; layers whose `layer_z` is 0 are dropped and the
//! rest renumbered; a sub-block left with no heads / no intermediate units becomes `None` (identity).

use burn::module::Param;
use burn::nn::{Embedding, Linear};
use burn::tensor::{Device, Int, Tensor, TensorData};

use super::ModelError;
use super::l0::HostMasks;
use super::llama::{Attention, DecoderLayer, Llama, Mlp, RmsNorm, linear_from};

fn indices(keep: &[usize], device: &Device) -> Tensor<1, Int> {
    let values: Vec<i64> = keep.iter().map(|&i| i as i64).collect();
    Tensor::from_data(TensorData::new(values, [keep.len()]), device)
}

fn vector(values: Vec<f32>, device: &Device) -> Tensor<1> {
    let count = values.len();
    Tensor::from_data(TensorData::new(values, [count]), device)
}

fn kept(values: &[f32]) -> Vec<usize> {
    values
        .iter()
        .enumerate()
        .filter(|(_, v)| **v != 0.0)
        .map(|(i, _)| i)
        .collect()
}

/// Scale `weight [rows, cols]` by `row_scale [rows]` ⊗ `col_scale [cols]` (either optional).
fn scale(weight: Tensor<2>, row_scale: Option<Vec<f32>>, col_scale: Option<&[f32]>) -> Tensor<2> {
    let device = weight.device();
    let [rows, cols] = weight.dims();
    let mut weight = weight;
    if let Some(r) = row_scale {
        weight = weight * vector(r, &device).reshape([rows, 1]);
    }
    if let Some(c) = col_scale {
        weight = weight * vector(c.to_vec(), &device).reshape([1, cols]);
    }
    weight
}

fn norm_folded(norm: &RmsNorm, hidden_z: Option<&[f32]>, keep_hidden: &Tensor<1, Int>) -> RmsNorm {
    let mut weight = norm.weight.val(); // [d]
    if let Some(z) = hidden_z {
        let device = weight.device();
        weight = weight * vector(z.to_vec(), &device);
    }
    RmsNorm {
        weight: Param::from_tensor(weight.select(0, keep_hidden.clone())),
        eps: norm.eps,
    }
}

fn check_len(name: &str, found: usize, expected: usize) -> Result<(), ModelError> {
    if found == expected {
        Ok(())
    } else {
        Err(ModelError::Invalid(format!(
            "mask `{name}` has {found} entries, the model needs {expected}"
        )))
    }
}

/// The dense model equal to `model` masked by `masks` in eval mode. `masks` must match the model's
/// (unpruned, uniform-width) shape.
pub fn consolidate(model: &Llama, masks: &HostMasks) -> Result<Llama, ModelError> {
    let config = model.config();
    let device = model.embed_tokens.weight.device();
    let layers = model.layers.len();
    let hidden = config.hidden_size;

    if let Some(z) = &masks.hidden {
        check_len("hidden_z", z.len(), hidden)?;
    }
    if let Some(z) = &masks.layer {
        check_len("layer_z", z.len(), layers)?;
    }
    for (name, rows) in [
        ("head_z", &masks.head),
        ("intermediate_z", &masks.intermediate),
    ] {
        if let Some(rows) = rows {
            check_len(name, rows.len(), layers)?;
        }
    }
    let hidden_z = masks.hidden.as_deref();
    let keep_hidden_list = match hidden_z {
        Some(z) => kept(z),
        None => (0..hidden).collect(),
    };
    if keep_hidden_list.is_empty() {
        return Err(ModelError::Invalid(
            "the hidden mask keeps no dimension".into(),
        ));
    }
    let keep_hidden = indices(&keep_hidden_list, &device);

    let mut new_layers = Vec::new();
    for (index, layer) in model.layers.iter().enumerate() {
        let layer_value = masks.layer.as_ref().map_or(1.0, |z| z[index]);
        if layer_value == 0.0 {
            continue; // the whole layer is pruned; later layers move up
        }
        let layer_scale = (layer_value != 1.0).then_some(layer_value);

        let self_attn = match &layer.self_attn {
            None => None,
            Some(attn) => {
                let heads = attn.num_heads();
                let groups = attn.num_key_value_heads();
                let per_group = heads / groups.max(1);
                let head_dim = attn.head_dim;
                let group_z: Vec<f32> = match &masks.head {
                    Some(rows) => {
                        check_len("head_z row", rows[index].len(), groups)?;
                        rows[index].clone()
                    }
                    None => vec![1.0; groups],
                };
                let kept_groups = kept(&group_z);
                if kept_groups.is_empty() {
                    None
                } else {
                    let query_rows: Vec<usize> = kept_groups
                        .iter()
                        .flat_map(|&g| (g * per_group * head_dim)..((g + 1) * per_group * head_dim))
                        .collect();
                    let kv_rows: Vec<usize> = kept_groups
                        .iter()
                        .flat_map(|&g| (g * head_dim)..((g + 1) * head_dim))
                        .collect();
                    let query_index = indices(&query_rows, &device);
                    let kv_index = indices(&kv_rows, &device);
                    // o_proj [heads·head_dim, d]: rows × head_z·layer_z, columns × hidden_z.
                    let row_scale: Vec<f32> = (0..heads * head_dim)
                        .map(|row| {
                            group_z[row / (per_group * head_dim)] * layer_scale.unwrap_or(1.0)
                        })
                        .collect();
                    let o = scale(attn.o_proj.weight.val(), Some(row_scale), hidden_z)
                        .select(0, query_index.clone())
                        .select(1, keep_hidden.clone());
                    let input_sliced = |linear: &Linear, outputs: &Tensor<1, Int>| {
                        linear_from(
                            linear
                                .weight
                                .val()
                                .select(0, keep_hidden.clone())
                                .select(1, outputs.clone()),
                        )
                    };
                    Some(Attention {
                        q_proj: input_sliced(&attn.q_proj, &query_index),
                        k_proj: input_sliced(&attn.k_proj, &kv_index),
                        v_proj: input_sliced(&attn.v_proj, &kv_index),
                        o_proj: linear_from(o),
                        head_dim,
                    })
                }
            }
        };

        let mlp = match &layer.mlp {
            None => None,
            Some(mlp) => {
                let width = mlp.intermediate_size();
                let intermediate_z: Option<Vec<f32>> = match &masks.intermediate {
                    Some(rows) => {
                        check_len("intermediate_z row", rows[index].len(), width)?;
                        Some(rows[index].clone())
                    }
                    None => None,
                };
                let kept_units = match &intermediate_z {
                    Some(z) => kept(z),
                    None => (0..width).collect(),
                };
                if kept_units.is_empty() {
                    None
                } else {
                    let unit_index = indices(&kept_units, &device);
                    let gate = mlp
                        .gate_proj
                        .weight
                        .val()
                        .select(0, keep_hidden.clone())
                        .select(1, unit_index.clone());
                    let up = scale(mlp.up_proj.weight.val(), None, intermediate_z.as_deref())
                        .select(0, keep_hidden.clone())
                        .select(1, unit_index.clone());
                    let down_rows = layer_scale.map(|v| vec![v; width]);
                    let down = scale(mlp.down_proj.weight.val(), down_rows, hidden_z)
                        .select(0, unit_index)
                        .select(1, keep_hidden.clone());
                    Some(Mlp {
                        gate_proj: linear_from(gate),
                        up_proj: linear_from(up),
                        down_proj: linear_from(down),
                    })
                }
            }
        };

        new_layers.push(DecoderLayer {
            input_layernorm: norm_folded(&layer.input_layernorm, hidden_z, &keep_hidden),
            self_attn,
            post_attention_layernorm: norm_folded(
                &layer.post_attention_layernorm,
                hidden_z,
                &keep_hidden,
            ),
            mlp,
        });
    }
    if new_layers.is_empty() {
        return Err(ModelError::Invalid("the layer mask keeps no layer".into()));
    }

    // Embedding and LM head: sliced, never scaled (see the module docs).
    let embed_tokens = Embedding {
        weight: Param::from_tensor(
            model
                .embed_tokens
                .weight
                .val()
                .select(1, keep_hidden.clone()),
        ),
    };
    let lm_head = model
        .lm_head
        .as_ref()
        .map(|head| linear_from(head.weight.val().select(0, keep_hidden.clone())));
    let norm = norm_folded(&model.norm, hidden_z, &keep_hidden);
    Ok(Llama::from_parts(
        &config,
        embed_tokens,
        new_layers,
        norm,
        lm_head,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::LlamaConfig;
    use crate::model::l0::HostMasks;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Soft values in (0.5, 1] with exactly `keep` non-zero entries at random positions.
    fn row(rng: &mut ChaCha8Rng, size: usize, keep: usize) -> Vec<f32> {
        let mut order: Vec<usize> = (0..size).collect();
        for i in (1..size).rev() {
            order.swap(i, rng.random_range(0..=i));
        }
        let mut values = vec![0.0f32; size];
        for &i in order.iter().take(keep) {
            values[i] = rng.random_range(0.5..1.0);
        }
        values
    }

    fn input_ids(vocab: usize, device: &Device) -> Tensor<2, Int> {
        let ids: Vec<i64> = (0..14).map(|i| ((i * 7 + 3) % vocab) as i64).collect();
        Tensor::from_data(TensorData::new(ids, [2, 7]), device)
    }

    fn max_difference(a: Tensor<3>, b: Tensor<3>) -> f32 {
        (a - b).abs().max().into_scalar()
    }

    fn check_equivalence(
        config: &LlamaConfig,
        seed: u64,
        masks: impl Fn(&mut ChaCha8Rng) -> HostMasks,
    ) -> Llama {
        let device = crate::model::device::for_tests();
        device.seed(seed);
        let model = Llama::new(config, &device);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let host = masks(&mut rng);
        let masked = model.forward(
            input_ids(config.vocab_size, &device),
            Some(&host.to_masks(&device)),
        );
        let dense = consolidate(&model, &host).unwrap();
        let plain = dense.forward(input_ids(config.vocab_size, &device), None);
        let difference = max_difference(masked, plain);
        assert!(
            difference < 1e-4,
            "masked vs consolidated logits differ by {difference}"
        );
        dense
    }

    #[test]
    fn masked_equals_consolidated_mha_all_modules() {
        let mut config = LlamaConfig::new(50, 32, 40, 3, 4, 4);
        config.head_dim = 8;
        let dense = check_equivalence(&config, 1, |rng| HostMasks {
            head: Some((0..3).map(|_| row(rng, 4, 2)).collect()),
            intermediate: Some((0..3).map(|_| row(rng, 40, 24)).collect()),
            layer: Some(vec![0.9, 0.0, 0.97]),
            hidden: Some(row(rng, 32, 20)),
        });
        let shape = dense.config();
        assert_eq!(
            (
                shape.num_hidden_layers,
                shape.hidden_size,
                shape.num_attention_heads,
                shape.intermediate_size
            ),
            (2, 20, 2, 24)
        );
        assert_eq!(shape.head_dim, 8);
        assert!(shape.layer_widths.is_none());
    }

    #[test]
    fn masked_equals_consolidated_gqa_tied_and_partial_modules() {
        let mut config = LlamaConfig::new(40, 24, 20, 2, 6, 3); // 2 query heads per group
        config.head_dim = 4;
        config.tie_word_embeddings = true;
        let dense = check_equivalence(&config, 2, |rng| HostMasks {
            head: Some((0..2).map(|_| row(rng, 3, 2)).collect()),
            intermediate: None,
            layer: None,
            hidden: Some(row(rng, 24, 16)),
        });
        let shape = dense.config();
        assert_eq!(
            (
                shape.num_attention_heads,
                shape.num_key_value_heads,
                shape.hidden_size
            ),
            (4, 2, 16)
        );
        assert!(shape.tie_word_embeddings);
    }

    #[test]
    fn uneven_rows_give_per_layer_widths_and_empty_blocks_become_identity() {
        let mut config = LlamaConfig::new(30, 16, 12, 2, 2, 2);
        config.head_dim = 8;
        let dense = check_equivalence(&config, 3, |rng| HostMasks {
            head: Some(vec![vec![0.0, 0.0], row(rng, 2, 1)]),
            intermediate: Some(vec![row(rng, 12, 5), row(rng, 12, 9)]),
            layer: None,
            hidden: None,
        });
        assert!(dense.layers[0].self_attn.is_none());
        let widths = dense.config().layer_widths.expect("layers differ");
        assert_eq!(widths[0].num_attention_heads, 0);
        assert_eq!(widths[1].intermediate_size, 9);
    }

    #[test]
    fn mask_shape_errors_are_reported() {
        let device = crate::model::device::for_tests();
        let model = Llama::new(&LlamaConfig::new(30, 16, 12, 2, 2, 2), &device);
        let bad = HostMasks {
            head: None,
            intermediate: None,
            layer: Some(vec![1.0]),
            hidden: None,
        };
        assert!(
            consolidate(&model, &bad)
                .unwrap_err()
                .to_string()
                .contains("layer_z")
        );
        let none = HostMasks {
            head: None,
            intermediate: None,
            layer: Some(vec![0.0, 0.0]),
            hidden: None,
        };
        assert!(consolidate(&model, &none).is_err());
    }
}
