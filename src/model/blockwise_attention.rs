//! Causal attention computed one block of query rows at a time, forward and backward, so that a
//! training step never holds the `[batch, heads, seq, seq]` scores of a whole layer.
//!
//! Why: a whole-sequence attention under autodiff (burn 0.22 has no fused attention backward)
//! keeps the softmax's probabilities for backward, `[batch, heads, seq, seq]`: at 4 × 4096 tokens
//! with 32 heads that is 8 GiB in fp32 for one layer, most of what a checkpointed 7B prune step holds besides weights.
//! Row `i` of the attention needs only its own scores against keys `0..=i`, so a block of
//! [`QUERY_BLOCK`] rows at a time holds `[batch, heads, QUERY_BLOCK, seq]`, and the backward pass
//! recomputes each block's probabilities from the queries and keys instead of saving them (as
//! FlashAttention's backward does; Rabe & Staats 2021, "Self-attention does not need O(n²) memory").
//!
//! The gradients are written by hand from the softmax's Jacobian — for one block with scores
//! `S = scale · Q Kᵀ`, probabilities `P = softmax(S)` and context `O = P V`:
//! `dV = Pᵀ dO`, `dP = dO Vᵀ`, `dS = P ⊙ (dP − rowsum(dP ⊙ P))`, `dQ = scale · dS K`,
//! `dK = scale · dSᵀ Q` — with each matrix product in the compute dtype and the softmax in fp32, as
//! autodiff differentiates [`super::llama`]'s attention under `bf16` (its casts' backward casts the
//! gradient). [`super::checkpointing`] stitches these gradients into the layer's backward pass.
//!
//! All tensors live on a plain (non-autodiff) device: `[batch, heads, seq, head_dim]`, fp32 in and
//! out, keys and values already repeated to one per query head.

use burn::tensor::{Bool, Tensor};

use super::fused::causal_softmax;
use super::precision::Precision;

/// Query rows per block. The transient memory of one block is about three
/// `[batch, heads, QUERY_BLOCK, seq]` fp32 tensors (scores or probabilities, their gradient and the
/// softmax's); smaller blocks mean more, smaller matrix products.
pub const QUERY_BLOCK: usize = 256;

/// Causal attention `softmax(scale · Q Kᵀ) V`, `query`, `key`, `value`: `[batch, heads, seq,
/// head_dim]` → context `[batch, heads, seq, head_dim]`.
pub fn forward(
    query: &Tensor<4>,
    key: &Tensor<4>,
    value: &Tensor<4>,
    precision: Precision,
) -> Tensor<4> {
    let [_, _, seq, _] = query.dims();
    let contexts = blocks(seq)
        .map(|(start, rows)| {
            let end = start + rows;
            let probabilities = probabilities(query, key, start, rows, precision); // [batch, heads, rows, end]
            let value = value.clone().narrow(2, 0, end); // [batch, heads, end, head_dim]
            matmul(probabilities, value, precision) // [batch, heads, rows, head_dim]
        })
        .collect();
    Tensor::cat(contexts, 2) // [batch, heads, seq, head_dim]
}

/// The gradients of `sum(forward(query, key, value) ⊙ d_context)` with respect to query, key and
/// value, each `[batch, heads, seq, head_dim]`.
pub fn backward(
    query: &Tensor<4>,
    key: &Tensor<4>,
    value: &Tensor<4>,
    d_context: &Tensor<4>,
    precision: Precision,
) -> (Tensor<4>, Tensor<4>, Tensor<4>) {
    let [_, _, seq, head_dim] = query.dims();
    let scale = attention_scale(head_dim);
    let mut d_key = key.zeros_like(); // [batch, heads, seq, head_dim]
    let mut d_value = value.zeros_like(); // [batch, heads, seq, head_dim]
    let mut d_queries = Vec::new();
    for (start, rows) in blocks(seq) {
        let end = start + rows;
        let probabilities = probabilities(query, key, start, rows, precision); // [batch, heads, rows, end]
        let query_block = query.clone().narrow(2, start, rows); // [batch, heads, rows, head_dim]
        let d_context_block = d_context.clone().narrow(2, start, rows); // [batch, heads, rows, head_dim]
        let key_prefix = key.clone().narrow(2, 0, end); // [batch, heads, end, head_dim]
        let value_prefix = value.clone().narrow(2, 0, end); // [batch, heads, end, head_dim]

        let d_value_prefix = matmul(
            probabilities.clone().swap_dims(2, 3),
            d_context_block.clone(),
            precision,
        ); // [batch, heads, end, head_dim]
        let d_probabilities = matmul(d_context_block, value_prefix.swap_dims(2, 3), precision); // [batch, heads, rows, end]
        let row_dot = (d_probabilities.clone() * probabilities.clone()).sum_dim(3); // [batch, heads, rows, 1]
        let d_scores = (probabilities * (d_probabilities - row_dot)).mul_scalar(scale); // [batch, heads, rows, end]

        d_queries.push(matmul(d_scores.clone(), key_prefix, precision)); // [batch, heads, rows, head_dim]
        let d_key_prefix = matmul(d_scores.swap_dims(2, 3), query_block, precision); // [batch, heads, end, head_dim]
        d_key = add_to_prefix(d_key, d_key_prefix, end);
        d_value = add_to_prefix(d_value, d_value_prefix, end);
    }
    (Tensor::cat(d_queries, 2), d_key, d_value)
}

/// `1 / √head_dim`, as burn's `attention` and HF's LLaMA scale the scores.
fn attention_scale(head_dim: usize) -> f64 {
    1.0 / (head_dim as f64).sqrt()
}

/// `(start, rows)` of each block of query rows.
fn blocks(seq: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..seq)
        .step_by(QUERY_BLOCK)
        .map(move |start| (start, QUERY_BLOCK.min(seq - start)))
}

/// The attention probabilities of query rows `start..start + rows` over keys `0..start + rows` (the
/// later keys are all masked for these rows): `[batch, heads, rows, start + rows]`, fp32.
fn probabilities(
    query: &Tensor<4>,
    key: &Tensor<4>,
    start: usize,
    rows: usize,
    precision: Precision,
) -> Tensor<4> {
    let [_, _, _, head_dim] = query.dims();
    let end = start + rows;
    let query_block = query.clone().narrow(2, start, rows); // [batch, heads, rows, head_dim]
    let key_prefix = key.clone().narrow(2, 0, end); // [batch, heads, end, head_dim]
    let scores = matmul(query_block, key_prefix.swap_dims(2, 3), precision); // [batch, heads, rows, end]
    // Row r is query position start + r: keys after it are the future.
    let future =
        Tensor::<2, Bool>::tril_mask([rows, end], start as i64, &scores.device()).unsqueeze::<4>(); // [1, 1, rows, end]
    causal_softmax(scores, future, attention_scale(head_dim)) // [batch, heads, rows, end]
}

/// `a · b` in the compute dtype, fp32 out.
fn matmul(a: Tensor<4>, b: Tensor<4>, precision: Precision) -> Tensor<4> {
    precision.to_fp32(precision.to_compute(a).matmul(precision.to_compute(b)))
}

/// `total[:, :, ..end] += prefix`.
fn add_to_prefix(total: Tensor<4>, prefix: Tensor<4>, end: usize) -> Tensor<4> {
    let [batch, heads, _, head_dim] = total.dims();
    let ranges = [0..batch, 0..heads, 0..end, 0..head_dim];
    let sum = total.clone().slice(ranges.clone()) + prefix;
    total.slice_assign(ranges, sum)
}

#[cfg(test)]
mod tests {
    use burn::tensor::Distribution;

    use super::*;

    /// The whole-sequence attention autodiff differentiates in training (llama.rs), on a graph.
    fn naive(
        query: Tensor<4>,
        key: Tensor<4>,
        value: Tensor<4>,
        precision: Precision,
    ) -> Tensor<4> {
        super::super::llama::autocast_attention(query, key, value, precision)
    }

    fn max_relative_difference(a: Tensor<4>, b: Tensor<4>) -> f32 {
        let scale = a.clone().abs().max().into_scalar::<f32>().max(1e-12);
        (a - b).abs().max().into_scalar::<f32>() / scale
    }

    /// Forward and all three gradients equal autodiff through the whole-sequence attention, for a
    /// sequence shorter than one block, exactly one block, and several blocks with a ragged last
    /// one; fp32 to rounding, bf16 within bf16's resolution.
    #[test]
    fn blockwise_equals_autodiff_of_the_whole_sequence_attention() {
        for (seq, precision, tolerance) in [
            (7, Precision::Fp32, 1e-5),
            (QUERY_BLOCK, Precision::Fp32, 1e-5),
            (2 * QUERY_BLOCK + 37, Precision::Fp32, 1e-5),
            (QUERY_BLOCK + 37, Precision::Bf16, 2e-2),
        ] {
            let device = crate::model::device::for_tests().autodiff();
            device.seed(11);
            let shape = [2, 3, seq, 8];
            let random = || Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &device);
            let (query, key, value, d_context) = (random(), random(), random(), random());
            let leaf = |t: &Tensor<4>| Tensor::from_inner(t.clone().inner()).require_grad();
            let (q, k, v) = (leaf(&query), leaf(&key), leaf(&value));
            let context = naive(q.clone(), k.clone(), v.clone(), precision);
            let gradients = (context.clone() * d_context.clone().detach())
                .sum()
                .backward();
            let [q, k, v] = [q, k, v].map(|t| t.grad(&gradients).expect("a leaf of the graph"));

            let [query, key, value, d_context] = [query, key, value, d_context].map(|t| t.inner());
            let blockwise = forward(&query, &key, &value, precision);
            let (d_query, d_key, d_value) = backward(&query, &key, &value, &d_context, precision);
            for (name, expected, got) in [
                ("context", context.inner(), blockwise),
                ("d_query", q, d_query),
                ("d_key", k, d_key),
                ("d_value", v, d_value),
            ] {
                let difference = max_relative_difference(expected, got);
                assert!(
                    difference < tolerance,
                    "seq {seq}, {precision}: {name} differs by {difference}"
                );
            }
        }
    }
}
