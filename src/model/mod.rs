//! The LLaMA model, its masks and its consolidation.

pub mod l0;
pub mod slice;
