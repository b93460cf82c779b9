//! Incremental decoding with a key/value cache: the keys and values of positions already seen are
//! kept per layer, so each generated token costs one position's forward pass instead of the whole
//! sequence's (transformers' `DynamicCache`, `use_cache=True`).
//!
//! Only the plain model decodes (no pruning masks: generation runs on consolidated models). The
//! numbers equal [`Llama::forward`]'s up to float rounding: attention here is spelled out (scores,
//! softmax, weighted sum) because the query block is shorter than the key block, which burn's
//! causal `attention` op does not express.

use burn::tensor::activation::softmax;
use burn::tensor::{Bool, Int, Tensor};

use super::fused::causal_softmax;
use super::llama::{Attention, Llama, Rope, project, repeat_kv};
use super::precision::Precision;

/// Keys and values of the positions decoded so far, per layer: `[batch, kv_heads, positions, head_dim]`.
#[derive(Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor<4>, Tensor<4>)>>,
    positions: usize,
}

impl KvCache {
    pub fn new() -> Self {
        KvCache::default()
    }

    /// Positions already in the cache (the next input starts at this position).
    pub fn len(&self) -> usize {
        self.positions
    }

    pub fn is_empty(&self) -> bool {
        self.positions == 0
    }

    /// The cache of one sequence (batch 1) repeated for `batch` sequences that continue the same
    /// prefix differently (the answer choices after one shared few-shot context).
    pub fn repeat_batch(&self, batch: usize) -> KvCache {
        let repeat = |t: &Tensor<4>| {
            let [_, groups, positions, head_dim] = t.dims();
            t.clone().expand([batch, groups, positions, head_dim]) // [batch, groups, positions, head_dim]
        };
        KvCache {
            layers: self
                .layers
                .iter()
                .map(|layer| layer.as_ref().map(|(k, v)| (repeat(k), repeat(v))))
                .collect(),
            positions: self.positions,
        }
    }
}

impl Llama {
    /// `input_ids: [batch, new]`, the tokens at positions `cache.len()..cache.len() + new` →
    /// logits `[batch, new, vocab]`; their keys and values are appended to `cache`.
    pub fn forward_cached(&self, input_ids: Tensor<2, Int>, cache: &mut KvCache) -> Tensor<3> {
        let x = self.decode(input_ids, cache); // [batch, new, hidden]
        self.head(x, None) // [batch, new, vocab]
    }

    /// [`forward_cached`](Self::forward_cached) returning only the last position's logits
    /// `[batch, 1, vocab]`: what greedy decoding and a shared context need, without the LM head's
    /// `new × vocab` product for every other position.
    pub fn forward_cached_last(&self, input_ids: Tensor<2, Int>, cache: &mut KvCache) -> Tensor<3> {
        let x = self.decode(input_ids, cache); // [batch, new, hidden]
        let new = x.dims()[1];
        self.head(x.narrow(1, new - 1, 1), None) // [batch, 1, vocab]
    }

    /// The decoder stack over the new positions: hidden states `[batch, new, hidden]` before the final norm.
    fn decode(&self, input_ids: Tensor<2, Int>, cache: &mut KvCache) -> Tensor<3> {
        let [_, new] = input_ids.dims();
        let start = cache.positions;
        let device = input_ids.device();
        let rope = self.rope(start + new, &device).positions(start, new);
        cache.layers.resize_with(self.layers.len(), || None);
        let mut x = self.embed_tokens.forward(input_ids); // [batch, new, hidden]
        for (layer, past) in self.layers.iter().zip(cache.layers.iter_mut()) {
            if let Some(attn) = &layer.self_attn {
                let normed = layer.input_layernorm.forward(x.clone()); // [batch, new, hidden]
                x = x + attn.forward_cached(normed, &rope, start, past, self.precision());
            }
            if let Some(mlp) = &layer.mlp {
                let normed = layer.post_attention_layernorm.forward(x.clone()); // [batch, new, hidden]
                x = x + mlp.forward(normed, None, self.precision());
            }
        }
        cache.positions = start + new;
        x
    }
}

impl Attention {
    /// `x: [batch, new, hidden]` at positions `start..start + new` → `[batch, new, hidden]`, attending
    /// to the `start` cached positions and causally within the new block.
    fn forward_cached(
        &self,
        x: Tensor<3>,
        rope: &Rope,
        start: usize,
        past: &mut Option<(Tensor<4>, Tensor<4>)>,
        precision: Precision,
    ) -> Tensor<3> {
        let [batch, new, _] = x.dims();
        let heads = self.num_heads();
        let groups = self.num_key_value_heads();
        let head_dim = self.head_dim;
        // query [batch, heads, new, head_dim]; key, value [batch, groups, new, head_dim]
        let (query, key, value) = self.query_key_value(x, rope, precision);
        let (key, value) = match past.take() {
            Some((past_key, past_value)) => (
                Tensor::cat(vec![past_key, key], 2), // [batch, groups, start + new, head_dim]
                Tensor::cat(vec![past_value, value], 2), // [batch, groups, start + new, head_dim]
            ),
            None => (key, value),
        };
        *past = Some((key.clone(), value.clone()));
        let total = start + new;
        let key = repeat_kv(key, heads / groups); // [batch, heads, total, head_dim]
        let value = repeat_kv(value, heads / groups); // [batch, heads, total, head_dim]

        let scale = 1.0 / (head_dim as f64).sqrt();
        let scores = precision.to_fp32(
            precision
                .to_compute(query)
                .matmul(precision.to_compute(key).swap_dims(2, 3)),
        ); // [batch, heads, new, total]
        let weights = if new > 1 {
            // Query i sits at position start + i and sees keys 0..=start + i.
            let future = Tensor::<2, Bool>::tril_mask([new, total], start as i64, &scores.device())
                .unsqueeze::<4>(); // [1, 1, new, total]
            causal_softmax(scores, future, scale)
        } else {
            softmax(scores.mul_scalar(scale), 3) // one new position sees every key
        }; // [batch, heads, new, total]
        let context = precision.to_fp32(
            precision
                .to_compute(weights)
                .matmul(precision.to_compute(value)),
        ); // [batch, heads, new, head_dim]
        let context = context
            .swap_dims(1, 2)
            .reshape([batch, new, heads * head_dim]); // [batch, new, heads·head_dim]
        project(&self.o_proj, context, precision)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::LlamaConfig;
    use crate::model::device;
    use crate::model::init::seeded_normal_init;
    use burn::tensor::TensorData;

    fn max_difference(a: Tensor<3>, b: Tensor<3>) -> f32 {
        (a - b).abs().max().into_scalar()
    }

    /// Prompt in one block, then one token at a time, then a block of two: every position's
    /// logits equal the full forward's.
    #[test]
    fn cached_decoding_equals_the_full_forward() {
        let device = device::for_tests();
        for (heads, kv_heads) in [(4, 4), (4, 2)] {
            let mut config = LlamaConfig::new(61, 32, 48, 2, heads, kv_heads);
            config.head_dim = 8;
            let model = seeded_normal_init(Llama::new(&config, &device), 5, 0.2);
            let tokens: Vec<i64> = vec![3, 17, 42, 5, 9, 60, 1, 33];
            let ids = |range: std::ops::Range<usize>| {
                let part = tokens[range.clone()].to_vec();
                Tensor::<2, Int>::from_data(TensorData::new(part, [1, range.len()]), &device)
            };
            let full = model.forward(ids(0..8), None); // [1, 8, vocab]
            let mut cache = KvCache::new();
            let mut pieces = vec![model.forward_cached(ids(0..4), &mut cache)];
            for position in 4..6 {
                pieces.push(model.forward_cached(ids(position..position + 1), &mut cache));
            }
            let mut branch = cache.repeat_batch(2);
            pieces.push(model.forward_cached(ids(6..8), &mut cache));
            assert_eq!(cache.len(), 8);
            let cached = Tensor::cat(pieces, 1); // [1, 8, vocab]
            let difference = max_difference(full.clone(), cached);
            assert!(difference < 1e-4, "heads {heads}/{kv_heads}: {difference}");

            // Two sequences continuing the same 6-token prefix: each equals its own full forward.
            let other: Vec<i64> = vec![3, 17, 42, 5, 9, 60, 11, 12];
            let both = [tokens[6..8].to_vec(), other[6..8].to_vec()].concat();
            let input = Tensor::<2, Int>::from_data(TensorData::new(both, [2, 2]), &device);
            let last = model.forward_cached_last(input, &mut branch); // [2, 1, vocab]
            let other_full = model.forward(
                Tensor::<2, Int>::from_data(TensorData::new(other, [1, 8]), &device),
                None,
            );
            let expected = Tensor::cat(vec![full.narrow(1, 7, 1), other_full.narrow(1, 7, 1)], 0); // [2, 1, vocab]
            let difference = max_difference(expected, last);
            assert!(
                difference < 1e-4,
                "branches {heads}/{kv_heads}: {difference}"
            );
        }
    }
}
