//! The one batch builder: rows of token ids → the `input_ids` / `labels` pair of causal LM training.
//!
//! A row of `seq_len + 1` tokens gives `seq_len` predictions: the model reads `row[..seq_len]` and is
//! scored on `row[1..=seq_len]` (Hugging Face shifts `labels` inside the loss; here the shift happens
//! once, on the host, so every caller — `train`, `prune`, `eval` and `sheared score` — builds its
//! tensors the same way).

use burn::tensor::{Device, Int, Tensor, TensorData};

/// `input_ids [rows, seq_len]` and `labels [rows, seq_len]` from rows of at least `seq_len + 1` tokens
/// (longer rows use their first `seq_len + 1`).
pub fn causal_lm_batch<'a>(
    rows: impl IntoIterator<Item = &'a [u32]>,
    seq_len: usize,
    device: &Device,
) -> (Tensor<2, Int>, Tensor<2, Int>) {
    let mut input_ids = Vec::new();
    let mut labels = Vec::new();
    let mut count = 0;
    for row in rows {
        input_ids.extend(row[..seq_len].iter().map(|&token| token as i64));
        labels.extend(row[1..=seq_len].iter().map(|&token| token as i64));
        count += 1;
    }
    (
        Tensor::from_data(TensorData::new(input_ids, [count, seq_len]), device), // [rows, seq_len]
        Tensor::from_data(TensorData::new(labels, [count, seq_len]), device),    // [rows, seq_len]
    )
}

/// [`causal_lm_batch`] of the first `rows` rows of a flat `[rows, seq_len + 1]` row-major buffer (what
/// [`super::DomainMixture::next_batch`] and [`super::EvalWindows`] hold).
pub fn causal_lm_batch_flat(
    tokens: &[u32],
    rows: usize,
    seq_len: usize,
    device: &Device,
) -> (Tensor<2, Int>, Tensor<2, Int>) {
    causal_lm_batch(tokens.chunks_exact(seq_len + 1).take(rows), seq_len, device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_the_inputs_shifted_by_one() {
        let device = crate::model::device::for_tests();
        let tokens: Vec<u32> = (0..12).collect(); // 3 rows of 4
        let (inputs, labels) = causal_lm_batch_flat(&tokens, 2, 3, &device);
        assert_eq!(inputs.dims(), [2, 3]);
        let inputs = inputs.into_data().try_into_vec_as::<i64>().unwrap();
        let labels = labels.into_data().try_into_vec_as::<i64>().unwrap();
        assert_eq!(inputs, vec![0, 1, 2, 4, 5, 6]);
        assert_eq!(labels, vec![1, 2, 3, 5, 6, 7]);
        // Longer rows use their first seq_len + 1 tokens.
        let long = [10u32, 11, 12, 13, 14];
        let (inputs, labels) = causal_lm_batch([&long[..]], 2, &device);
        assert_eq!(
            inputs.into_data().try_into_vec_as::<i64>().unwrap(),
            vec![10, 11]
        );
        assert_eq!(
            labels.into_data().try_into_vec_as::<i64>().unwrap(),
            vec![11, 12]
        );
    }
}
