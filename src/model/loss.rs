//! Next-token cross-entropy. Callers shift: for a batch row of `seq + 1` tokens, inputs are
//! `tokens[..seq]` and targets `tokens[1..]`, so `targets[b, t]` is the token after `input[b, t]`.

use burn::tensor::{Int, Tensor};

use super::fused::{log_softmax, token_nll};

/// Negative log-likelihood of each target token: `logits [batch, seq, vocab]`, `targets [batch, seq]`
/// → `[batch, seq]`. Target ids must lie in `0..vocab` (no ignore index).
pub fn token_losses(logits: Tensor<3>, targets: Tensor<2, Int>) -> Tensor<2> {
    token_nll(logits, targets) // [batch, seq]
}

/// Token-mean cross-entropy over the whole batch, shape `[1]` (PyTorch `F.cross_entropy` with
/// `reduction="mean"`).
pub fn cross_entropy(logits: Tensor<3>, targets: Tensor<2, Int>) -> Tensor<1> {
    token_losses(logits, targets).mean()
}

/// Mean cross-entropy of each sequence (row), shape `[batch]`. Per-domain losses for dynamic batch
/// loading are averages of these rows grouped by domain id.
pub fn cross_entropy_per_sequence(logits: Tensor<3>, targets: Tensor<2, Int>) -> Tensor<1> {
    let [batch, _, _] = logits.dims();
    token_losses(logits, targets).mean_dim(1).reshape([batch])
}

/// Logit distillation's soft loss: token-mean `KL(teacher ‖ student)` of the two models' next-token
/// distributions at temperature `temperature`, times `temperature²` (Hinton et al.; so that its
/// gradients keep their size as the temperature changes). `student, teacher: [batch, seq, vocab]`
/// → `[1]`. The teacher's logits carry no gradient (the caller computes them without autodiff).
pub fn distillation_kl(student: Tensor<3>, teacher: Tensor<3>, temperature: f64) -> Tensor<1> {
    let [batch, seq, _] = student.dims();
    let student_log = log_softmax(student.div_scalar(temperature)); // [batch, seq, vocab]
    let teacher_log = log_softmax(teacher.div_scalar(temperature)); // [batch, seq, vocab]
    let teacher_probs = teacher_log.clone().exp(); // [batch, seq, vocab]
    let per_token = (teacher_probs * (teacher_log - student_log)).sum_dim(2); // [batch, seq, 1]
    per_token
        .reshape([batch * seq])
        .mean()
        .mul_scalar(temperature * temperature)
}

/// Mean loss per domain from per-sequence losses (`cross_entropy_per_sequence`, read to the host)
/// and each sequence's domain id. `None` for domains without a sequence in the batch.
pub fn mean_loss_by_domain(
    per_sequence: &[f32],
    domain_ids: &[usize],
    num_domains: usize,
) -> Vec<Option<f64>> {
    let mut sums = vec![0.0f64; num_domains];
    let mut counts = vec![0usize; num_domains];
    for (&loss, &domain) in per_sequence.iter().zip(domain_ids) {
        if domain < num_domains {
            sums[domain] += loss as f64;
            counts[domain] += 1;
        }
    }
    sums.iter()
        .zip(&counts)
        .map(|(&sum, &count)| (count > 0).then(|| sum / count as f64))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    #[test]
    fn matches_hand_computed_values() {
        let device = crate::model::device::for_tests();
        // batch 2, seq 1, vocab 3.
        let logits = Tensor::<3>::from_data(
            TensorData::new(vec![0.0f32, 1.0, 2.0, 1.0, 1.0, 1.0], [2, 1, 3]),
            &device,
        );
        let targets = Tensor::<2, Int>::from_data(TensorData::new(vec![2i64, 0], [2, 1]), &device);
        let log_sum = (1.0f64 + 1f64.exp() + 2f64.exp()).ln();
        let first = log_sum - 2.0;
        let second = 3f64.ln();
        let per_row = cross_entropy_per_sequence(logits.clone(), targets.clone())
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        assert!((per_row[0] as f64 - first).abs() < 1e-6);
        assert!((per_row[1] as f64 - second).abs() < 1e-6);
        assert_eq!(
            mean_loss_by_domain(&per_row, &[1, 1], 3),
            vec![
                None,
                Some((per_row[0] as f64 + per_row[1] as f64) / 2.0),
                None
            ]
        );
        let mean = cross_entropy(logits, targets).into_scalar::<f32>() as f64;
        assert!((mean - (first + second) / 2.0).abs() < 1e-6);
    }

    #[test]
    fn distillation_kl_matches_the_hand_computation() {
        let device = crate::model::device::for_tests();
        let tensor =
            |values: Vec<f32>| Tensor::<3>::from_data(TensorData::new(values, [1, 1, 2]), &device);
        // Teacher logits (0, ln 3): p = (1/4, 3/4); student logits (0, 0): q = (1/2, 1/2).
        let teacher = tensor(vec![0.0, 3.0f32.ln()]);
        let student = tensor(vec![0.0, 0.0]);
        let kl = distillation_kl(student.clone(), teacher.clone(), 1.0).into_scalar::<f32>() as f64;
        let expected = 0.25 * (0.25f64 / 0.5).ln() + 0.75 * (0.75f64 / 0.5).ln();
        assert!((kl - expected).abs() < 1e-6, "{kl} vs {expected}");
        // Equal distributions: zero. Temperature 2 scales by 4 after softening.
        let same = distillation_kl(teacher.clone(), teacher.clone(), 1.0).into_scalar::<f32>();
        assert!(same.abs() < 1e-7, "{same}");
        let soft = distillation_kl(student, teacher, 2.0).into_scalar::<f32>() as f64;
        let p = [1.0 / (1.0 + 3f64.sqrt()), 3f64.sqrt() / (1.0 + 3f64.sqrt())];
        let expected = 4.0 * (p[0] * (p[0] / 0.5).ln() + p[1] * (p[1] / 0.5).ln());
        assert!((soft - expected).abs() < 1e-5, "{soft} vs {expected}");
    }
}
