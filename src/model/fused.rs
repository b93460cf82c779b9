//! Fused training ops: log-softmax, the attention's scaled causal softmax and SiLU, each one autodiff
//! node with a closed-form backward.
//!
//! Why: burn's autodiff records these as the chains of elementwise ops they are written with (a
//! log-softmax is max, subtract, exp, sum, log, subtract), and its backward walks every link, so a
//! training step made many more passes over the `[batch, seq, vocab]` logits and the `[batch, heads,
//! seq, seq]` attention scores than PyTorch's, which has one kernel each way. Here each op is one
//! node: its forward is the backend's own kernel where it has one (libtorch's `log_softmax`,
//! `softmax`, `silu`), and its backward is libtorch's backward kernel or, on other backends, the
//! closed form in three passes or fewer:
//!
//! - `y = log_softmax(x)`: `∂x = g − exp(y) · Σg`
//! - `y = softmax(s · x + mask)`: `∂x = s · y ⊙ (g − Σ(g ⊙ y))` (masked entries have `y = 0`)
//! - `y = x · σ(x)`: `∂x = g · σ(x) · (1 + x · (1 − σ(x)))`
//!
//! The backward ops have default bodies made of differentiable backend ops, so a backend without a
//! kernel of its own (flex) computes the same thing, and the backward is itself differentiable.

// burn-tch is deprecated upstream but is the GPU backend buildable offline; the generated dispatch
// names it.
#![cfg_attr(feature = "tch", allow(deprecated))]

use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::CheckpointStrategy};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::backend::tensor::{BoolTensor, FloatTensor};
use burn::backend::{Backend, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::tensor::{Bool, Tensor};

/// The fused ops over backend primitives; [`log_softmax`], [`causal_softmax`] and [`silu`] are the
/// tensor-level entry points. Every op works on the last dimension.
#[backend_extension(Flex, LibTorch: cfg(feature = "tch"), Autodiff)]
pub trait FusedOps: Backend {
    /// `log_softmax` over the last dimension.
    fn fused_log_softmax(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let last = x.shape().num_dims() - 1;
        Self::log_softmax(x, last)
    }

    /// The gradient of [`FusedOps::fused_log_softmax`] at its `output`: `grad − exp(output) · Σ grad`.
    fn fused_log_softmax_backward(
        grad: FloatTensor<Self>,
        output: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let last = grad.shape().num_dims() - 1;
        let grad_sum = Self::float_sum_dim(grad.clone(), last);
        Self::float_sub(grad, Self::float_mul(Self::float_exp(output), grad_sum))
    }

    /// `softmax(scale · scores)` over the last dimension, with the entries where `future` is true
    /// set to `−∞` first (`future` broadcasts against `scores`; no row may be all future).
    fn fused_causal_softmax(
        scores: FloatTensor<Self>,
        future: BoolTensor<Self>,
        scale: f64,
    ) -> FloatTensor<Self> {
        let last = scores.shape().num_dims() - 1;
        let scaled = Self::float_mul_scalar(scores, scale.into());
        let masked = Self::float_mask_fill(scaled, future, f32::NEG_INFINITY.into());
        Self::softmax(masked, last)
    }

    /// The gradient of [`FusedOps::fused_causal_softmax`] at its `output`:
    /// `scale · output ⊙ (grad − Σ(grad ⊙ output))`.
    fn fused_causal_softmax_backward(
        grad: FloatTensor<Self>,
        output: FloatTensor<Self>,
        scale: f64,
    ) -> FloatTensor<Self> {
        let last = grad.shape().num_dims() - 1;
        let weighted = Self::float_mul(grad.clone(), output.clone());
        let centred = Self::float_sub(grad, Self::float_sum_dim(weighted, last));
        Self::float_mul_scalar(Self::float_mul(output, centred), scale.into())
    }

    /// SiLU, `x · σ(x)`.
    fn fused_silu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::float_mul(x.clone(), Self::sigmoid(x))
    }

    /// The gradient of [`FusedOps::fused_silu`] at its input `x`: `grad · σ(x) · (1 + x · (1 − σ(x)))`.
    fn fused_silu_backward(grad: FloatTensor<Self>, x: FloatTensor<Self>) -> FloatTensor<Self> {
        let sigmoid = Self::sigmoid(x.clone());
        let one_minus = Self::float_add_scalar(Self::float_neg(sigmoid.clone()), 1.0.into());
        let slope = Self::float_add_scalar(Self::float_mul(x, one_minus), 1.0.into());
        Self::float_mul(grad, Self::float_mul(sigmoid, slope))
    }
}

impl FusedOps for Flex {}

#[cfg(feature = "tch")]
mod libtorch {
    use super::FusedOps;
    use burn::backend::LibTorch;
    use burn::backend::libtorch::TchTensor;
    use burn::backend::tensor::{BoolTensor, FloatTensor};

    fn last_dim(tensor: &tch::Tensor) -> i64 {
        tensor.dim() as i64 - 1
    }

    /// libtorch's own kernels, forward and backward, as PyTorch's autograd calls them.
    impl FusedOps for LibTorch {
        fn fused_log_softmax(x: FloatTensor<Self>) -> FloatTensor<Self> {
            let dim = last_dim(&x.tensor);
            TchTensor::new(x.tensor.log_softmax(dim, None))
        }

        fn fused_log_softmax_backward(
            grad: FloatTensor<Self>,
            output: FloatTensor<Self>,
        ) -> FloatTensor<Self> {
            let dim = last_dim(&output.tensor);
            let kind = output.tensor.kind();
            TchTensor::new(tch::Tensor::internal_log_softmax_backward_data(
                &grad.tensor,
                &output.tensor,
                dim,
                kind,
            ))
        }

        fn fused_causal_softmax(
            scores: FloatTensor<Self>,
            future: BoolTensor<Self>,
            scale: f64,
        ) -> FloatTensor<Self> {
            let dim = last_dim(&scores.tensor);
            let masked = (&scores.tensor * scale).masked_fill_(&future.tensor, f64::NEG_INFINITY);
            TchTensor::new(masked.softmax(dim, None))
        }

        fn fused_causal_softmax_backward(
            grad: FloatTensor<Self>,
            output: FloatTensor<Self>,
            scale: f64,
        ) -> FloatTensor<Self> {
            let dim = last_dim(&output.tensor);
            let kind = output.tensor.kind();
            let mut input_grad = tch::Tensor::internal_softmax_backward_data(
                &grad.tensor,
                &output.tensor,
                dim,
                kind,
            );
            let _ = input_grad.g_mul_scalar_(scale);
            TchTensor::new(input_grad)
        }

        fn fused_silu(x: FloatTensor<Self>) -> FloatTensor<Self> {
            TchTensor::new(x.tensor.silu())
        }

        fn fused_silu_backward(grad: FloatTensor<Self>, x: FloatTensor<Self>) -> FloatTensor<Self> {
            TchTensor::new(x.tensor.silu_backward(&grad.tensor))
        }
    }
}

/// One autodiff node per fused op; the backward calls the inner backend's backward op.
impl<B: Backend + FusedOps, C: CheckpointStrategy> FusedOps for Autodiff<B, C> {
    fn fused_log_softmax(x: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct LogSoftmaxBackward;

        impl<B: Backend + FusedOps> Backward<B, 1> for LogSoftmaxBackward {
            type State = FloatTensor<B>; // the output

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                _: &mut Checkpointer,
            ) {
                let output = ops.state;
                unary::<B, _>(ops.parents, ops.node, grads, |grad| {
                    B::fused_log_softmax_backward(grad, output)
                });
            }
        }

        let (x, node) = x.into_parts();
        match LogSoftmaxBackward
            .prepare::<C>([node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let output = B::fused_log_softmax(x);
                prep.finish(output.clone(), output)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_log_softmax(x)),
        }
    }

    fn fused_causal_softmax(
        scores: FloatTensor<Self>,
        future: BoolTensor<Self>,
        scale: f64,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct CausalSoftmaxBackward {
            scale: f64,
        }

        impl<B: Backend + FusedOps> Backward<B, 1> for CausalSoftmaxBackward {
            type State = FloatTensor<B>; // the output

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                _: &mut Checkpointer,
            ) {
                let (output, scale) = (ops.state, self.scale);
                unary::<B, _>(ops.parents, ops.node, grads, |grad| {
                    B::fused_causal_softmax_backward(grad, output, scale)
                });
            }
        }

        let (scores, node) = scores.into_parts();
        match (CausalSoftmaxBackward { scale })
            .prepare::<C>([node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let output = B::fused_causal_softmax(scores, future, scale);
                prep.finish(output.clone(), output)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_causal_softmax(scores, future, scale)),
        }
    }

    fn fused_silu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct SiluBackward;

        impl<B: Backend + FusedOps> Backward<B, 1> for SiluBackward {
            type State = FloatTensor<B>; // the input

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                _: &mut Checkpointer,
            ) {
                let input = ops.state;
                unary::<B, _>(ops.parents, ops.node, grads, |grad| {
                    B::fused_silu_backward(grad, input)
                });
            }
        }

        let (x, node) = x.into_parts();
        match SiluBackward.prepare::<C>([node]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let output = B::fused_silu(x.clone());
                prep.finish(x, output)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_silu(x)),
        }
    }
}

/// `log_softmax` over the last dimension, one autodiff node.
pub fn log_softmax<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as FusedOps>::fused_log_softmax(x.into_dispatch()))
}

/// `softmax(scale · scores)` over the last dimension with `future` entries masked out (`future`
/// broadcasts against `scores`, e.g. `[1, 1, seq, seq]` against `[batch, heads, seq, seq]`), one
/// autodiff node.
pub fn causal_softmax(scores: Tensor<4>, future: Tensor<4, Bool>, scale: f64) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as FusedOps>::fused_causal_softmax(
        scores.into_dispatch(),
        future.into_dispatch(),
        scale,
    ))
}

/// SiLU, `x · σ(x)`, one autodiff node.
pub fn silu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as FusedOps>::fused_silu(x.into_dispatch()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;
    use burn::tensor::activation;

    fn max_difference<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
        (a - b).abs().max().into_scalar::<f32>()
    }

    /// The fused op and burn's composed ops give the same values and the same gradient of
    /// `Σ op(x) ⊙ w` for a random `w` (so every output entry's gradient counts, with its own weight).
    fn check<const D: usize>(
        shape: [usize; D],
        fused: impl Fn(Tensor<D>) -> Tensor<D>,
        composed: impl Fn(Tensor<D>) -> Tensor<D>,
    ) {
        let device = crate::model::device::for_tests().autodiff();
        device.seed(3);
        let x = Tensor::<D>::random(shape, Distribution::Normal(0.0, 2.0), &device);
        let w = Tensor::<D>::random(shape, Distribution::Normal(0.0, 1.0), &device);
        let run = |op: &dyn Fn(Tensor<D>) -> Tensor<D>| {
            let x = x.clone().require_grad();
            let y = op(x.clone());
            let gradients = (y.clone() * w.clone()).sum().backward();
            (y.inner(), x.grad(&gradients).unwrap())
        };
        let (fused_y, fused_grad) = run(&fused);
        let (composed_y, composed_grad) = run(&composed);
        assert!(max_difference(fused_y, composed_y) < 1e-5);
        assert!(max_difference(fused_grad, composed_grad) < 1e-4);
    }

    #[test]
    fn log_softmax_equals_burns() {
        check([2, 3, 17], log_softmax, |x| activation::log_softmax(x, 2));
    }

    #[test]
    fn causal_softmax_equals_scaled_masked_softmax() {
        let device = crate::model::device::for_tests();
        let future =
            || Tensor::<2, Bool>::tril_mask([5, 5], 0, &device.clone().autodiff()).unsqueeze::<4>();
        check(
            [2, 3, 5, 5],
            |x| causal_softmax(x, future(), 0.25),
            |x| {
                let masked = x.mul_scalar(0.25).mask_fill(future(), f32::NEG_INFINITY);
                activation::softmax(masked, 3)
            },
        );
        // Row t attends to positions 0..=t only.
        let weights = causal_softmax(
            Tensor::<4>::ones([1, 1, 5, 5], &device),
            future().inner(),
            1.0,
        );
        let first_row = weights
            .narrow(2, 0, 1)
            .into_data()
            .try_into_vec::<f32>()
            .unwrap();
        assert_eq!(first_row, vec![1.0, 0.0, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn silu_equals_burns() {
        check([4, 33], silu, activation::silu);
    }
}
