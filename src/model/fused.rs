//! Fused training ops: log-softmax, the next-token loss, the attention's scaled causal softmax, RoPE
//! and SiLU, each one autodiff node with a closed-form backward.
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
//! - `ℓ = −log_softmax(x)[target]`: `∂x = g · (exp(log_softmax(x)) − onehot(target))`
//! - `y = x · cos + rotate_half(x) · sin`: `∂x = g · cos − rotate_half(g · sin)`
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
use burn::backend::tensor::{BoolTensor, FloatTensor, IndexingUpdateOp, IntTensor};
use burn::backend::{Backend, Dispatch, Flex, Shape, Slice, TensorMetadata, backend_extension};
use burn::tensor::{Bool, Int, Tensor};

/// The fused ops over backend primitives; [`log_softmax`], [`token_nll`], [`causal_softmax`],
/// [`rope`] and [`silu`] are the tensor-level entry points. Every op works on the last dimension.
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

    /// Next-token negative log-likelihood: `logits [.., vocab]`, `targets [..]` (ids in
    /// `0..vocab`) → `−log_softmax(logits)[targets]`, shape `[..]`.
    fn fused_token_nll(logits: FloatTensor<Self>, targets: IntTensor<Self>) -> FloatTensor<Self> {
        pick_negated::<Self>(Self::fused_log_softmax(logits), targets)
    }

    /// The gradient of [`FusedOps::fused_token_nll`] from the saved `log_probs`:
    /// `grad · (exp(log_probs) − onehot(targets))`, shape of `log_probs`.
    fn fused_token_nll_backward(
        grad: FloatTensor<Self>,
        log_probs: FloatTensor<Self>,
        targets: IntTensor<Self>,
    ) -> FloatTensor<Self> {
        let grad = Self::float_reshape(grad, with_last_one(&log_probs.shape())); // [.., 1]
        let targets = Self::int_reshape(targets, with_last_one(&log_probs.shape())); // [.., 1]
        let last = log_probs.shape().num_dims() - 1;
        let spread = Self::float_mul(Self::float_exp(log_probs), grad.clone()); // [.., vocab]
        Self::float_scatter(
            last,
            spread,
            targets,
            Self::float_neg(grad),
            IndexingUpdateOp::Add,
        )
    }

    /// RoPE, `x · cos + rotate_half(x) · sin` over the last dimension, `rotate_half([a, b]) = [−b, a]`;
    /// `cos` and `sin` broadcast against `x` and are constants (no gradient).
    fn fused_rope(
        x: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let rotated = rotate_half::<Self>(x.clone());
        Self::float_add(Self::float_mul(x, cos), Self::float_mul(rotated, sin))
    }

    /// The gradient of [`FusedOps::fused_rope`] with respect to `x`: `grad · cos − rotate_half(grad ·
    /// sin)` (`rotate_half` is antisymmetric: its transpose is its negative).
    fn fused_rope_backward(
        grad: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let rotated = rotate_half::<Self>(Self::float_mul(grad.clone(), sin));
        Self::float_sub(Self::float_mul(grad, cos), rotated)
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

/// `shape` with its last dimension set to 1 (`[.., vocab]` → `[.., 1]`).
fn with_last_one(shape: &Shape) -> Shape {
    let rank = shape.num_dims();
    let dims: Vec<usize> = (0..rank)
        .map(|i| if i + 1 == rank { 1 } else { shape[i] })
        .collect();
    Shape::from(dims)
}

/// `−log_probs[.., targets]`: `log_probs [.., vocab]`, `targets [..]` → `[..]`.
fn pick_negated<B: Backend>(log_probs: FloatTensor<B>, targets: IntTensor<B>) -> FloatTensor<B> {
    let shape = log_probs.shape();
    let last = shape.num_dims() - 1;
    let targets = B::int_reshape(targets, with_last_one(&shape)); // [.., 1]
    let picked = B::float_gather(last, log_probs, targets); // [.., 1]
    let dims: Vec<usize> = (0..last).map(|i| shape[i]).collect();
    B::float_neg(B::float_reshape(picked, Shape::from(dims))) // [..]
}

/// `[a, b]` → `[−b, a]` over the last dimension (halves `a`, `b`): HF's `rotate_half`.
fn rotate_half<B: Backend>(x: FloatTensor<B>) -> FloatTensor<B> {
    let shape = x.shape();
    let last = shape.num_dims() - 1;
    let half = (shape[last] / 2) as isize;
    let part = |start: isize, end: isize| {
        let mut slices = vec![Slice::full(); last];
        slices.push(Slice::new(start, Some(end), 1));
        B::float_slice(x.clone(), &slices)
    };
    let (first, second) = (part(0, half), part(half, 2 * half));
    B::float_cat(vec![B::float_neg(second), first], last)
}

impl FusedOps for Flex {}

#[cfg(feature = "tch")]
mod libtorch {
    use super::FusedOps;
    use burn::backend::LibTorch;
    use burn::backend::libtorch::TchTensor;
    use burn::backend::tensor::{BoolTensor, FloatTensor, IntTensor};

    fn last_dim(tensor: &tch::Tensor) -> i64 {
        tensor.dim() as i64 - 1
    }

    /// `[a, b]` → `[−b, a]` over the last dimension.
    fn rotate_half(x: &tch::Tensor) -> tch::Tensor {
        let dim = last_dim(x);
        let half = x.size()[dim as usize] / 2;
        tch::Tensor::cat(
            &[x.narrow(dim, half, half).neg(), x.narrow(dim, 0, half)],
            dim,
        )
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

        fn fused_token_nll_backward(
            grad: FloatTensor<Self>,
            log_probs: FloatTensor<Self>,
            targets: IntTensor<Self>,
        ) -> FloatTensor<Self> {
            let dim = last_dim(&log_probs.tensor);
            let grad = grad.tensor.unsqueeze(dim); // [.., 1]
            let mut spread = log_probs.tensor.exp(); // [.., vocab]
            let _ = spread.g_mul_(&grad);
            let _ = spread.scatter_add_(dim, &targets.tensor.unsqueeze(dim), &grad.neg());
            TchTensor::new(spread)
        }

        fn fused_rope(
            x: FloatTensor<Self>,
            cos: FloatTensor<Self>,
            sin: FloatTensor<Self>,
        ) -> FloatTensor<Self> {
            let mut output = &x.tensor * &cos.tensor;
            let _ = output.addcmul_(&rotate_half(&x.tensor), &sin.tensor);
            TchTensor::new(output)
        }

        fn fused_rope_backward(
            grad: FloatTensor<Self>,
            cos: FloatTensor<Self>,
            sin: FloatTensor<Self>,
        ) -> FloatTensor<Self> {
            let mut input_grad = &grad.tensor * &cos.tensor;
            let _ = input_grad.g_sub_(&rotate_half(&(&grad.tensor * &sin.tensor)));
            TchTensor::new(input_grad)
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

/// The backward step of a one-input fused op: `gradient(grad, state)` is the input's gradient.
struct UnaryBackward<B: Backend, S> {
    name: &'static str,
    gradient: fn(FloatTensor<B>, S) -> FloatTensor<B>,
}

impl<B: Backend, S> std::fmt::Debug for UnaryBackward<B, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}Backward", self.name)
    }
}

impl<B: Backend, S: Clone + Send + std::fmt::Debug + 'static> Backward<B, 1>
    for UnaryBackward<B, S>
{
    type State = S;

    fn backward(self, ops: Ops<S, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (state, gradient) = (ops.state, self.gradient);
        unary::<B, _>(ops.parents, ops.node, grads, |grad| gradient(grad, state));
    }
}

/// Records a one-input op as one autodiff node: when `input` is tracked, `forward` computes the
/// state the backward needs and the output; when it is not, `plain` computes the output alone.
fn record_unary<B: Backend, C: CheckpointStrategy, S: Clone + Send + std::fmt::Debug + 'static>(
    input: FloatTensor<Autodiff<B, C>>,
    backward: UnaryBackward<B, S>,
    forward: impl FnOnce(FloatTensor<B>) -> (S, FloatTensor<B>),
    plain: impl FnOnce(FloatTensor<B>) -> FloatTensor<B>,
) -> FloatTensor<Autodiff<B, C>> {
    let (input, node) = input.into_parts();
    match backward.prepare::<C>([node]).compute_bound().stateful() {
        OpsKind::Tracked(prep) => {
            let (state, output) = forward(input);
            prep.finish(state, output)
        }
        OpsKind::UnTracked(prep) => prep.finish(plain(input)),
    }
}

/// One autodiff node per fused op; its backward calls the inner backend's backward op.
impl<B: Backend + FusedOps, C: CheckpointStrategy> FusedOps for Autodiff<B, C> {
    fn fused_log_softmax(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let backward = UnaryBackward {
            name: "LogSoftmax",
            gradient: |grad, output| B::fused_log_softmax_backward(grad, output),
        };
        let forward = |x| {
            let output = B::fused_log_softmax(x);
            (output.clone(), output)
        };
        record_unary::<B, C, _>(x, backward, forward, B::fused_log_softmax)
    }

    fn fused_token_nll(logits: FloatTensor<Self>, targets: IntTensor<Self>) -> FloatTensor<Self> {
        let backward = UnaryBackward {
            name: "TokenNll",
            gradient: |grad, (log_probs, targets)| {
                B::fused_token_nll_backward(grad, log_probs, targets)
            },
        };
        let saved_targets = targets.clone();
        let forward = |logits| {
            let log_probs = B::fused_log_softmax(logits);
            let output = pick_negated::<B>(log_probs.clone(), saved_targets.clone());
            ((log_probs, saved_targets), output)
        };
        record_unary::<B, C, _>(logits, backward, forward, |logits| {
            B::fused_token_nll(logits, targets)
        })
    }

    fn fused_rope(
        x: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let backward = UnaryBackward {
            name: "Rope",
            gradient: |grad, (cos, sin)| B::fused_rope_backward(grad, cos, sin),
        };
        // The tables are constants: only `x` is a parent.
        let (cos, sin) = (cos.into_primitive(), sin.into_primitive());
        let (plain_cos, plain_sin) = (cos.clone(), sin.clone());
        let forward = |x| {
            let output = B::fused_rope(x, cos.clone(), sin.clone());
            ((cos, sin), output)
        };
        record_unary::<B, C, _>(x, backward, forward, |x| {
            B::fused_rope(x, plain_cos, plain_sin)
        })
    }

    fn fused_causal_softmax(
        scores: FloatTensor<Self>,
        future: BoolTensor<Self>,
        scale: f64,
    ) -> FloatTensor<Self> {
        let backward = UnaryBackward {
            name: "CausalSoftmax",
            gradient: |grad, (output, scale)| B::fused_causal_softmax_backward(grad, output, scale),
        };
        let mask = future.clone();
        let forward = |scores| {
            let output = B::fused_causal_softmax(scores, mask, scale);
            ((output.clone(), scale), output)
        };
        record_unary::<B, C, _>(scores, backward, forward, |scores| {
            B::fused_causal_softmax(scores, future, scale)
        })
    }

    fn fused_silu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let backward = UnaryBackward {
            name: "Silu",
            gradient: |grad, input| B::fused_silu_backward(grad, input),
        };
        let forward = |x: FloatTensor<B>| (x.clone(), B::fused_silu(x));
        record_unary::<B, C, _>(x, backward, forward, B::fused_silu)
    }
}

/// `log_softmax` over the last dimension, one autodiff node.
pub fn log_softmax<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as FusedOps>::fused_log_softmax(x.into_dispatch()))
}

/// Next-token negative log-likelihood `−log_softmax(logits)[targets]`: `logits [batch, seq, vocab]`,
/// `targets [batch, seq]` → `[batch, seq]`, one autodiff node that saves only the log-probabilities.
pub fn token_nll(logits: Tensor<3>, targets: Tensor<2, Int>) -> Tensor<2> {
    Tensor::from_dispatch(<Dispatch as FusedOps>::fused_token_nll(
        logits.into_dispatch(),
        targets.into_dispatch(),
    ))
}

/// RoPE `x · cos + rotate_half(x) · sin` over the last dimension (`x: [batch, heads, seq,
/// head_dim]`, `cos`, `sin`: `[1, 1, seq, head_dim]`, constants), one autodiff node.
pub fn rope(x: Tensor<4>, cos: Tensor<4>, sin: Tensor<4>) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as FusedOps>::fused_rope(
        x.into_dispatch(),
        cos.into_dispatch(),
        sin.into_dispatch(),
    ))
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
    fn check<const D: usize, const E: usize>(
        shape: [usize; D],
        fused: impl Fn(Tensor<D>) -> Tensor<E>,
        composed: impl Fn(Tensor<D>) -> Tensor<E>,
    ) {
        let device = crate::model::device::for_tests().autodiff();
        device.seed(3);
        let x = Tensor::<D>::random(shape, Distribution::Normal(0.0, 2.0), &device);
        let output_shape = composed(x.clone()).shape();
        let w = Tensor::<E>::random(output_shape, Distribution::Normal(0.0, 1.0), &device);
        let run = |op: &dyn Fn(Tensor<D>) -> Tensor<E>| {
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
    fn token_nll_equals_log_softmax_then_gather() {
        let device = crate::model::device::for_tests().autodiff();
        let targets = Tensor::<2, Int>::from_data(
            burn::tensor::TensorData::new(vec![0i64, 16, 3, 3, 9, 1], [2, 3]),
            &device,
        );
        check(
            [2, 3, 17],
            |x| token_nll(x, targets.clone()),
            |x| {
                let log_probs = activation::log_softmax(x, 2); // [2, 3, 17]
                let picked = log_probs.gather(2, targets.clone().unsqueeze_dim::<3>(2)); // [2, 3, 1]
                picked.reshape([2, 3]).neg()
            },
        );
    }

    #[test]
    fn rope_equals_the_spelled_out_rotation() {
        let device = crate::model::device::for_tests().autodiff();
        device.seed(5);
        let table = || Tensor::<4>::random([1, 1, 3, 8], Distribution::Normal(0.0, 1.0), &device);
        let (cos, sin) = (table(), table());
        check(
            [2, 2, 3, 8],
            |x| rope(x, cos.clone(), sin.clone()),
            |x| {
                let first = x.clone().narrow(3, 0, 4);
                let second = x.clone().narrow(3, 4, 4);
                let rotated = Tensor::cat(vec![second.neg(), first], 3);
                x * cos.clone() + rotated * sin.clone()
            },
        );
    }

    #[test]
    fn silu_equals_burns() {
        check([4, 33], silu, activation::silu);
    }
}
