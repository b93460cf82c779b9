//! Global-norm gradient clipping with PyTorch `torch.nn.utils.clip_grad_norm_` semantics.
//!
//! burn's own `GradientClipping::Norm` clips every parameter tensor by its own norm, which is a
//! different (and, for LLM training, non-standard) rule. The Sheared LLaMA runs (Composer,
//! `grad_clip_norm = 1.0`) clip the concatenation of *all* gradients, Lagrange multipliers included:
//!
//! ```text
//! total = sqrt(Σ_params ||g||²)
//! coef  = max_norm / (total + 1e-6)
//! if coef < 1: g ← g · coef   for every gradient
//! ```

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;

/// The small constant PyTorch adds to the norm before dividing (`clip_grad_norm_`).
pub const CLIP_EPSILON: f64 = 1e-6;

/// Clips `grads` of `module`'s float parameters to a global L2 norm of at most `max_norm`.
///
/// Returns the gradients and the global norm *before* clipping (what PyTorch returns and what the
/// training log reports). A non-finite norm is returned unchanged and the gradients are not scaled:
/// the caller decides what a NaN step means (the train stage stops or skips the batch).
/// `max_norm <= 0` or non-finite disables scaling but still measures the norm.
pub fn clip_global_norm<M: Module>(
    grads: GradientsParams,
    module: &M,
    max_norm: f64,
) -> (GradientsParams, f64) {
    let total_norm = global_norm(&grads, module);
    if !(total_norm.is_finite() && max_norm > 0.0 && max_norm.is_finite()) {
        return (grads, total_norm);
    }
    let coef = max_norm / (total_norm + CLIP_EPSILON);
    if coef >= 1.0 {
        // PyTorch multiplies by the clamped coefficient 1.0, which leaves the values unchanged.
        return (grads, total_norm);
    }
    let mut scaler = Scaler { grads, coef };
    module.visit(&mut scaler);
    (scaler.grads, total_norm)
}

/// The L2 norm of all gradients of `module`'s float parameters (parameters without a gradient, e.g.
/// frozen ones, count as zero). One device-to-host read.
pub fn global_norm<M: Module>(grads: &GradientsParams, module: &M) -> f64 {
    let mut collector = SquaredNorms {
        grads,
        squares: Vec::new(),
    };
    module.visit(&mut collector);
    if collector.squares.is_empty() {
        return 0.0;
    }
    let squares = Tensor::cat(collector.squares, 0).into_data(); // [num_params_with_grad]
    match squares.try_into_vec_as::<f32>() {
        // Per-tensor sums are f32 (as in PyTorch); the sum across tensors is accumulated in f64.
        Ok(values) => values.iter().map(|&value| value as f64).sum::<f64>().sqrt(),
        Err(_) => f64::NAN,
    }
}

struct SquaredNorms<'a> {
    grads: &'a GradientsParams,
    squares: Vec<Tensor<1>>,
}

impl ModuleVisitor for SquaredNorms<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(grad) = self.grads.get::<D>(param.id) {
            self.squares.push(grad.square().sum()); // [1]
        }
    }
}

struct Scaler {
    grads: GradientsParams,
    coef: f64,
}

impl ModuleVisitor for Scaler {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(grad) = self.grads.remove::<D>(param.id) {
            self.grads.register(param.id, grad.mul_scalar(self.coef));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::Param;
    use burn::tensor::TensorData;

    #[derive(Module, Debug)]
    struct TwoParams {
        matrix: Param<Tensor<2>>,
        vector: Param<Tensor<1>>,
    }

    fn model_and_grads(scale: f32) -> (TwoParams, GradientsParams) {
        let device = crate::model::device::for_tests().autodiff();
        let model = TwoParams {
            matrix: Param::from_tensor(Tensor::from_data(
                TensorData::new(vec![0.0f32; 4], [2, 2]),
                &device,
            )),
            vector: Param::from_tensor(Tensor::from_data(
                TensorData::new(vec![0.0f32; 2], [2]),
                &device,
            )),
        };
        // loss = Σ matrix ⊙ A + Σ vector ⊙ b  →  grads are exactly A and b.
        let a = Tensor::<2>::from_data(
            TensorData::new(
                [1.0f32, 2.0, 3.0, 4.0].iter().map(|x| x * scale).collect(),
                [2, 2],
            ),
            &device,
        );
        let b = Tensor::<1>::from_data(
            TensorData::new(vec![5.0f32 * scale, 6.0 * scale], [2]),
            &device,
        );
        let loss = (model.matrix.val() * a).sum() + (model.vector.val() * b).sum();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        (model, grads)
    }

    fn values<const D: usize>(tensor: Tensor<D>) -> Vec<f32> {
        tensor.into_data().try_into_vec_as::<f32>().unwrap()
    }

    #[test]
    fn clips_all_tensors_by_one_global_norm() {
        let (model, grads) = model_and_grads(1.0);
        let (grads, norm) = clip_global_norm(grads, &model, 1.0);
        // hand computation: sqrt(1 + 4 + 9 + 16 + 25 + 36) = sqrt(91)
        let expected_norm = 91f64.sqrt();
        assert!((norm - expected_norm).abs() < 1e-5, "{norm}");
        let coef = 1.0 / (expected_norm + 1e-6);
        let matrix = values(grads.get::<2>(model.matrix.id).unwrap());
        let vector = values(grads.get::<1>(model.vector.id).unwrap());
        for (got, raw) in matrix
            .iter()
            .chain(vector.iter())
            .zip([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
        {
            assert!(
                (*got as f64 - raw * coef).abs() < 1e-6,
                "{got} vs {}",
                raw * coef
            );
        }
        // after clipping, the global norm is max_norm (up to the epsilon)
        assert!((global_norm(&grads, &model) - 1.0).abs() < 1e-5);
    }

    #[test]
    fn leaves_small_gradients_untouched() {
        let (model, grads) = model_and_grads(0.01);
        let (grads, norm) = clip_global_norm(grads, &model, 1.0);
        assert!((norm - 0.01 * 91f64.sqrt()).abs() < 1e-6);
        assert_eq!(
            values(grads.get::<1>(model.vector.id).unwrap()),
            vec![5.0f32 * 0.01, 6.0f32 * 0.01]
        );
    }

    #[test]
    fn non_finite_norm_is_reported_not_applied() {
        let (model, grads) = model_and_grads(f32::INFINITY);
        let (_, norm) = clip_global_norm(grads, &model, 1.0);
        assert!(!norm.is_finite());
    }
}
