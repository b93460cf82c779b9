//! Previews: what `sheared plan` says about a stage before it runs — the parameter counts of the
//! models it reads and writes, its token budget — so that a recipe's shapes and costs can be read
//! off before hours of compute (the paper recipes show their 2.7B and 1.3B targets on a machine that
//! has neither LLaMA2-7B nor the data).
//!
//! A preview is computed from the stage's normalised config and what is known of its inputs now:
//! an input that exists (an external path, a committed upstream output) is read; an upstream stage
//! that has not run contributes its own preview. Nothing is guessed: what cannot be known yet is left
//! out. Previews are not part of any cache key and never fail a plan.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::model::memory::{self, MemoryEstimate, MemoryOptions, Precision, Step, StepShape};
use crate::model::{LlamaConfig, ParameterCounts};
use crate::util::fmt::group_thousands;

/// What a stage will produce, as far as it is known before it runs.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Preview {
    /// Short facts for the plan table (`6,738,415,616 → 2,701,560,320 params (40.1 %)`), in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub facts: Vec<String>,
    /// Named parameter counts (`source`, `target`, `model`) for `plan --json`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub parameters: BTreeMap<String, u64>,
    /// Tokens the stage trains on (steps × batch × sequence length).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
    /// Estimated peak device memory of the stage's heaviest step, in bytes (the total of `memory`).
    /// The runner compares it with the device's memory before the stage computes anything.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// The estimate's parts and the step it was made for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryPreview>,
    /// The `config.json` of the model folder this stage writes, when it writes one.
    #[serde(skip)]
    pub model_config: Option<LlamaConfig>,
    /// The dense model that consolidating this stage's output gives (set by `prune`).
    #[serde(skip)]
    pub consolidated_config: Option<LlamaConfig>,
    /// The vocabulary size of the tokenizer this stage's output uses (set by `tokenize`).
    #[serde(skip)]
    pub vocab_size: Option<usize>,
}

impl Preview {
    /// The preview of a stage that writes a model with `config`: its parameter count as a fact.
    pub fn of_model(config: LlamaConfig) -> Preview {
        let mut preview = Preview::default();
        preview.add_model("model", &config);
        preview.model_config = Some(config);
        preview
    }

    /// Record the parameter count of `config` under `name` and as a fact.
    pub fn add_model(&mut self, name: &str, config: &LlamaConfig) {
        let counts = config.parameter_counts();
        self.parameters.insert(name.to_string(), counts.total);
        self.facts
            .push(format!("{} params", describe_counts(&counts)));
    }

    /// Record a training budget of `steps` steps of `batch_size` sequences of `seq_len` tokens.
    pub fn add_tokens(&mut self, steps: u64, batch_size: usize, seq_len: usize) {
        let tokens = steps * batch_size as u64 * seq_len as u64;
        self.tokens = Some(tokens);
        self.facts.push(format!(
            "{steps} steps × {batch_size} × {seq_len} = {} tokens",
            short_count(tokens)
        ));
    }

    /// Record the peak memory `estimate` of one step at `shape`; `advice` says which of the stage's
    /// keys shrink it (the runner quotes it when it refuses the stage).
    pub fn add_memory(
        &mut self,
        estimate: MemoryEstimate,
        shape: StepShape,
        options: MemoryOptions,
        advice: String,
    ) {
        self.memory_bytes = Some(estimate.total_bytes());
        self.facts.push(estimate.describe());
        self.memory = Some(MemoryPreview {
            estimate,
            micro_batch: shape.micro_batch,
            seq_len: shape.seq_len,
            precision: options.precision,
            activation_checkpointing: options.activation_checkpointing,
            optimizer_offload: options.optimizer_offload,
            advice,
        });
    }

    /// Record the peak memory of one training step of `model` (`train` and `prune`): a micro-batch of
    /// `batch.batch_size / batch.grad_accum` sequences in a forward/backward pass, with the advice
    /// that names the stage's keys (`batch_size`, `grad_accum`, `seq_len`, `activation_checkpointing`).
    pub fn add_step_memory(&mut self, model: &LlamaConfig, step: Step, batch: StepBatch) {
        let grad_accum = batch.grad_accum.max(1);
        let shape = StepShape {
            micro_batch: batch.batch_size / grad_accum,
            seq_len: batch.seq_len,
        };
        let options = MemoryOptions {
            precision: batch.precision,
            activation_checkpointing: batch.activation_checkpointing,
            optimizer_offload: batch.optimizer_offload,
        };
        let mut switches = Vec::new();
        if !batch.activation_checkpointing {
            switches.push("activation_checkpointing = true");
        }
        if !batch.optimizer_offload {
            switches.push("optimizer_offload = true");
        }
        let switches = if switches.is_empty() {
            String::new()
        } else {
            format!(", or set {}", switches.join(" and "))
        };
        let advice = format!(
            "lower batch_size or raise grad_accum (the micro-batch is batch_size / grad_accum = {} / {grad_accum} \
             = {}), or shorten seq_len (now {}){switches}",
            batch.batch_size, shape.micro_batch, batch.seq_len
        );
        let mut estimate = memory::estimate(model, step, shape, options);
        if let Some(teacher) = &batch.teacher {
            estimate.teacher_bytes = memory::teacher_bytes(teacher, shape, batch.precision);
        }
        self.add_memory(estimate, shape, options, advice);
    }

    /// The facts as one line.
    pub fn line(&self) -> String {
        self.facts.join("; ")
    }
}

/// The keys of a training stage that shape one step's memory.
pub struct StepBatch {
    pub batch_size: usize,
    pub grad_accum: usize,
    pub seq_len: usize,
    pub activation_checkpointing: bool,
    pub optimizer_offload: bool,
    pub precision: Precision,
    /// A distillation teacher's config (`train.distill`), when known.
    pub teacher: Option<LlamaConfig>,
}

/// A stage's peak-memory estimate as `plan --json` shows it (`preview.memory`).
#[derive(Debug, Clone, Serialize)]
pub struct MemoryPreview {
    /// `weights_bytes`, `gradients_bytes`, `optimizer_bytes`, `masks_bytes`, `activations_bytes`.
    #[serde(flatten)]
    pub estimate: MemoryEstimate,
    /// Sequences per forward/backward pass.
    pub micro_batch: usize,
    pub seq_len: usize,
    pub precision: Precision,
    pub activation_checkpointing: bool,
    /// AdamW's moments wait in host memory between steps (`optimizer_bytes` is then host memory).
    pub optimizer_offload: bool,
    /// What to change in the stage to need less (`lower batch_size or raise grad_accum ...`).
    pub advice: String,
}

/// `2,701,560,320 (2.70B)`.
pub fn describe_counts(counts: &ParameterCounts) -> String {
    format!(
        "{} ({})",
        group_thousands(counts.total as i64),
        short_count(counts.total)
    )
}

/// `2.70B`, `44.1M`, `512K`, `900`.
pub fn short_count(value: u64) -> String {
    let value_f = value as f64;
    if value >= 1_000_000_000 {
        format!("{:.2}B", value_f / 1e9)
    } else if value >= 1_000_000 {
        format!("{:.1}M", value_f / 1e6)
    } else if value >= 10_000 {
        format!("{:.0}K", value_f / 1e3)
    } else {
        value.to_string()
    }
}

/// What is known of one input when planning.
#[derive(Debug, Clone, Copy, Default)]
pub struct PreviewInput<'a> {
    /// The input's path when it exists now: an external path, or a committed upstream output
    /// (with `file` joined).
    pub path: Option<&'a Path>,
    /// The upstream stage's preview, for `{ stage = .. }` inputs.
    pub upstream: Option<&'a Preview>,
}

/// The inputs of one stage by dotted key, with the lookups previews need.
#[derive(Debug, Clone, Default)]
pub struct PreviewInputs<'a> {
    pub inputs: BTreeMap<String, PreviewInput<'a>>,
    /// `settings.precision` of the run (memory estimates depend on it).
    pub precision: Precision,
}

impl<'a> PreviewInputs<'a> {
    fn get(&self, key: &str) -> PreviewInput<'a> {
        self.inputs.get(key).copied().unwrap_or_default()
    }

    /// The existing folder or file at `key`, if any.
    pub fn path(&self, key: &str) -> Option<PathBuf> {
        self.get(key).path.map(Path::to_path_buf)
    }

    /// The architecture of the model folder at input `key`: its `config.json` when the folder exists,
    /// else what the upstream stage will write.
    pub fn model_config(&self, key: &str) -> Option<LlamaConfig> {
        let input = self.get(key);
        match input.path {
            Some(dir) => LlamaConfig::load(&dir.join("config.json")).ok(),
            None => input
                .upstream
                .and_then(|preview| preview.model_config.clone()),
        }
    }

    /// The vocabulary size of the `tokenize` output at input `key`.
    pub fn vocab_size(&self, key: &str) -> Option<usize> {
        let input = self.get(key);
        match input.path {
            // `vocab_size` of the tokenized data's `manifest.json` (`crate::data::Manifest`), read
            // as plain JSON so that the contract stays below `data`.
            Some(dir) => std::fs::read(dir.join("manifest.json"))
                .ok()
                .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
                .and_then(|manifest| manifest.get("vocab_size")?.as_u64())
                .map(|vocab_size| vocab_size as usize),
            None => input.upstream.and_then(|preview| preview.vocab_size),
        }
    }

    /// The upstream preview at `key` (for facts only a stage's own preview knows).
    pub fn upstream(&self, key: &str) -> Option<&'a Preview> {
        self.get(key).upstream
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_read_both_ways() {
        assert_eq!(short_count(2_701_560_320), "2.70B");
        assert_eq!(short_count(44_051_328), "44.1M");
        assert_eq!(short_count(360_000), "360K");
        assert_eq!(short_count(999), "999");
        let counts = ParameterCounts {
            total: 1_345_423_360,
            embedding: 0,
            non_embedding: 0,
        };
        assert_eq!(describe_counts(&counts), "1,345,423,360 (1.35B)");
    }

    #[test]
    fn token_budgets_multiply_out() {
        let mut preview = Preview::default();
        preview.add_tokens(3200, 32, 4096);
        assert_eq!(preview.tokens, Some(419_430_400));
        assert_eq!(preview.line(), "3200 steps × 32 × 4096 = 419.4M tokens");
    }

    #[test]
    fn existing_folders_win_over_upstream_predictions() {
        let dir = tempfile::tempdir().unwrap();
        LlamaConfig::new(100, 16, 32, 2, 2, 2)
            .save(&dir.path().join("config.json"))
            .unwrap();
        let upstream = Preview::of_model(LlamaConfig::new(999, 16, 32, 2, 2, 2));
        let mut inputs = PreviewInputs::default();
        inputs.inputs.insert(
            "model".into(),
            PreviewInput {
                path: Some(dir.path()),
                upstream: Some(&upstream),
            },
        );
        inputs.inputs.insert(
            "other".into(),
            PreviewInput {
                path: None,
                upstream: Some(&upstream),
            },
        );
        assert_eq!(inputs.model_config("model").unwrap().vocab_size, 100);
        assert_eq!(inputs.model_config("other").unwrap().vocab_size, 999);
        assert!(inputs.model_config("missing").is_none());
    }
}
