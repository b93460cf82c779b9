//! Compute precision (`settings.precision`): `fp32` everywhere, or `bf16` mixed precision as the
//! paper trains (Composer's `amp_bf16`, i.e. PyTorch autocast).
//!
//! With `bf16` the weights stay fp32 parameters (the optimiser's masters, its moments and every
//! checkpoint stay fp32, so resuming is exact); each matrix product casts its operands to bf16 and its
//! result back to fp32: the `q/k/v/o_proj`, `gate/up/down_proj` and `lm_head` projections and the
//! attention's two products (its softmax stays fp32). Everything else runs in fp32 as autocast runs
//! it: the residual stream, RMSNorm, RoPE, SiLU, the pruning masks and their Lagrange multipliers,
//! softmax-cross-entropy and the loss.
//! burn's `cast` is differentiable (its backward casts the gradient back), so the fp32 masters
//! receive fp32 gradients.

use burn::tensor::{FloatDType, Tensor};
use serde::{Deserialize, Serialize};

/// `"fp32"` (the default) or `"bf16"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    Fp32,
    Bf16,
}

impl Precision {
    pub fn is_fp32(&self) -> bool {
        *self == Precision::Fp32
    }

    /// The dtype matrix products run in; `None` for fp32 (no casts at all, so fp32 stays
    /// bit-identical to a model that never heard of precision).
    pub fn matmul_dtype(self) -> Option<FloatDType> {
        match self {
            Precision::Fp32 => None,
            Precision::Bf16 => Some(FloatDType::BF16),
        }
    }

    /// Bytes of one activation element that a matrix product saves for its backward pass (the
    /// peak-memory estimate's unit, [`crate::model::memory`]).
    pub fn activation_bytes(self) -> u64 {
        match self {
            Precision::Fp32 => 4,
            Precision::Bf16 => 2,
        }
    }

    /// `x` cast to the matmul dtype (unchanged in fp32).
    pub fn to_compute<const D: usize>(self, x: Tensor<D>) -> Tensor<D> {
        match self.matmul_dtype() {
            None => x,
            Some(dtype) => x.cast(dtype),
        }
    }

    /// A matmul result back to fp32 (unchanged in fp32).
    pub fn to_fp32<const D: usize>(self, x: Tensor<D>) -> Tensor<D> {
        match self.matmul_dtype() {
            None => x,
            Some(_) => x.cast(FloatDType::F32),
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "fp32" => Ok(Precision::Fp32),
            "bf16" => Ok(Precision::Bf16),
            other => Err(format!("unknown precision `{other}`; use `fp32` or `bf16`")),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
        })
    }
}
