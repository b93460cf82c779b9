//! Training utilities shared by the `train` and `prune` stages, and the training loop.
//!
//! - [`schedule`]: cosine learning-rate schedule with linear warm-up (Composer's `cosine_with_warmup`).
//! - [`clip`]: global-norm gradient clipping with PyTorch `clip_grad_norm_` semantics.
//! - [`optim`]: AdamW with every value explicit and no decay on norms and embeddings.
//! - [`adamw`]: the AdamW update itself, PyTorch's, in fused passes.
//! - [`checkpoint`]: atomic, fingerprinted checkpoint folders for bit-identical resume.
//! - [`driver`]: the one training loop of `train` and `prune` (micro-batches, eval, dynamic loading,
//!   non-finite losses, checkpoints, resume), generic over a [`driver::TrainStep`].
//! - [`trainer`]: the `train` stage's step (dense next-token cross-entropy).

pub mod adamw;
pub mod checkpoint;
pub mod clip;
pub mod driver;
pub mod optim;
pub mod schedule;
pub mod trainer;
