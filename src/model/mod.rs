//! The LLaMA model sheared prunes and trains, its masked forward pass, and its file formats.
//!
//! - [`config`]: [`LlamaConfig`] (Hugging Face `config.json`, per-layer widths after pruning).
//! - [`llama`]: the model ([`Llama`], [`DecoderLayer`], [`Attention`], [`Mlp`], [`RmsNorm`]) and the
//!   pruning [`Masks`] (where each mask multiplies: docs/model.md, "Masks").
//! - [`loss`]: next-token cross-entropy (token mean, per sequence).
//! - [`fused`]: the next-token loss, log-softmax, the attention's causal softmax, RoPE and SiLU as one
//!   autodiff node each.
//! - [`batch`]: the one builder of `input_ids`/`labels` tensors from token rows.
//! - [`precision`]: `fp32` or `bf16` mixed precision of the matrix products.
//! - [`checkpointing`]: per-layer activation checkpointing (`Llama::backward_checkpointed`).
//! - [`blockwise_attention`]: causal attention forward and backward in blocks of query rows, never
//!   the whole `[batch, heads, seq, seq]` (what a checkpointed layer recomputes with).
//! - [`hf`]: load/save Hugging Face model folders (safetensors, sharded or not).
//! - [`init`]: seeded normal initialisation, reproducible whatever else draws random numbers.
//! - [`kv_cache`]: incremental decoding (`Llama::forward_cached`) for greedy generation.
//! - [`gguf`]: import llama.cpp GGUF files (dequantise, un-permute q/k, tokenizer).
//! - [`device`]: `"cpu"` / `"torch-cpu"` / `"cuda:N"` to a burn [`Device`](burn::tensor::Device).
//! - [`l0`]: hard-concrete L0 masks, expected sizes and the Lagrangian (paper §2.1).
//! - [`memory`]: peak device memory of a training step or forward pass, estimated from a config.
//! - [`slice`]: consolidation, folding masks into the weights and slicing to a dense model (docs/pruning.md).
//! - [`cli`]: `sheared inspect`, `sheared score`, `sheared convert`.
//!
//! Layout conventions: burn's `Linear` stores its weight as `[in, out]`; Hugging Face stores `[out, in]`.
//! The I/O code transposes; everything inside the crate sees burn's layout.

pub mod batch;
pub mod blockwise_attention;
pub mod checkpointing;
pub mod cli;
pub mod config;
pub mod device;
pub mod fused;
pub mod gguf;
pub mod hf;
pub mod init;
pub mod kv_cache;
pub mod l0;
pub mod llama;
pub mod loss;
pub mod memory;
pub mod precision;
pub mod slice;

pub use config::{LayerWidths, LlamaConfig, ParameterCounts, RopeScaling};
pub use hf::{WeightDtype, load_hf, save_hf, save_hf_with_dtype};
pub use llama::{Attention, DecoderLayer, Llama, Masks, Mlp, RmsNorm, linear_from};
pub use loss::{cross_entropy, cross_entropy_per_sequence, mean_loss_by_domain};

use std::path::PathBuf;

/// Everything that can go wrong building, loading or saving a model. Messages name the file, tensor
/// or key involved and, where there is one, what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// `config.json` (or a GGUF header) describes something this crate does not implement.
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    /// A weight file is unreadable, truncated or inconsistent with the config.
    #[error("{path}: {message}")]
    Weights { path: PathBuf, message: String },
    /// A tensor is missing, unexpected, or has the wrong shape.
    #[error("{path}: tensor `{tensor}`: {message}")]
    Tensor {
        path: PathBuf,
        tensor: String,
        message: String,
    },
    /// The device string is not understood, or the binary lacks the backend for it.
    #[error("device `{name}`: {message}")]
    Device { name: String, message: String },
    /// Model or mask shapes that cannot work together (caller error, not a file error).
    #[error("{0}")]
    Invalid(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ModelError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ModelError::Io {
            path: path.into(),
            source,
        }
    }
    pub(crate) fn config(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        ModelError::Config {
            path: path.into(),
            message: message.into(),
        }
    }
    pub(crate) fn weights(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        ModelError::Weights {
            path: path.into(),
            message: message.into(),
        }
    }
    pub(crate) fn tensor(
        path: impl Into<PathBuf>,
        tensor: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        ModelError::Tensor {
            path: path.into(),
            tensor: tensor.into(),
            message: message.into(),
        }
    }
}
