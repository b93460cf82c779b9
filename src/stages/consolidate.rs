//! Stage kind `consolidate`: a `prune` output (full-size weights + final masks) → a dense HF model of
//! exactly the target shape (docs/pruning.md), tokenizer carried along.
//!
//! The masks are folded once each and the pruned units sliced away (`model::slice`), so the dense
//! model computes what the masked model computes in eval mode. The output config is a stock
//! `LlamaForCausalLM` one when all layers share their widths (always the case for targets reached
//! by `prune`), with an explicit `head_dim` (needed whenever hidden ≠ heads × head_dim).

use anyhow::Context;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::model::slice::consolidate;
use crate::model::{load_hf, save_hf};
use crate::stage::{InputRef, Preview, PreviewInputs, Stage, StageContext, StageError};
use crate::stages::prune::{consolidated_config, read_final_masks};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsolidateConfig {
    /// The `prune` stage's output: `{ stage = "<prune stage>" }`.
    pub model: InputRef,
}

/// The `consolidate` stage kind.
pub struct ConsolidateStage;

impl Stage for ConsolidateStage {
    fn kind(&self) -> &'static str {
        "consolidate"
    }
    fn version(&self) -> u32 {
        1
    }
    fn about(&self) -> &'static str {
        "fold pruning masks into the weights and slice to a dense model of the target shape"
    }
    fn settings_in_key(&self) -> &'static [&'static str] {
        &[]
    }
    fn normalize(&self, table: &toml::Table) -> Result<toml::Table, StageError> {
        Ok(crate::stage::normalize_typed::<ConsolidateConfig>(table)?.1)
    }
    fn preview(&self, _config: &toml::Table, inputs: &PreviewInputs<'_>) -> Preview {
        let dense = match inputs.path("model") {
            Some(dir) => consolidated_config(&dir),
            None => inputs
                .upstream("model")
                .and_then(|preview| preview.consolidated_config.clone()),
        };
        let Some(dense) = dense else {
            return Preview::default();
        };
        let key_value_heads = if dense.num_key_value_heads == dense.num_attention_heads {
            String::new()
        } else {
            format!(" ({} key/value)", dense.num_key_value_heads)
        };
        let shape = format!(
            "{} layers, hidden {}, {} heads{key_value_heads}, intermediate {}",
            dense.num_hidden_layers,
            dense.hidden_size,
            dense.num_attention_heads,
            dense.intermediate_size
        );
        let mut preview = Preview::of_model(dense);
        preview.facts.push(shape);
        preview
    }
    fn run(&self, ctx: &StageContext<'_>) -> Result<(), StageError> {
        let dir = ctx.input("model")?.to_path_buf();
        let (masks, report) = read_final_masks(&dir)?;
        let device = crate::model::device::parse(&ctx.settings.device)
            .map_err(|error| StageError::config("settings.device", error.to_string()))?;
        let model = load_hf(&dir, &device)
            .map_err(|error| StageError::input("model", error.to_string()))?;
        let dense = consolidate(&model, &masks)
            .map_err(|error| StageError::input("model", error.to_string()))?;
        let shape = dense.config();
        let got = (
            shape.num_hidden_layers,
            shape.hidden_size,
            shape.num_attention_heads,
            shape.num_key_value_heads,
            shape.intermediate_size,
        );
        let want = (
            report.target.layers,
            report.target.hidden,
            report.target.heads,
            report.target.kv_heads,
            report.target.intermediate,
        );
        if got != want || shape.layer_widths.is_some() {
            return Err(StageError::input(
                "model",
                format!(
                    "consolidating gives (layers, hidden, heads, kv_heads, intermediate) = {got:?} but pruning.json's target is \
                     {want:?}; the prune output is inconsistent, rerun the prune stage"
                ),
            ));
        }
        let tokenizer = ["tokenizer.json", "tokenizer.model"]
            .iter()
            .any(|f| dir.join(f).is_file())
            .then_some(dir.as_path());
        save_hf(&dense, &ctx.out_dir, tokenizer)
            .map_err(|error| StageError::Other(error.into()))?;
        let counts = shape.parameter_counts();
        let metrics = json!({
            "method": report.method,
            "layers": shape.num_hidden_layers,
            "hidden": shape.hidden_size,
            "heads": shape.num_attention_heads,
            "kv_heads": shape.num_key_value_heads,
            "intermediate": shape.intermediate_size,
            "head_dim": shape.head_dim,
            "parameters": counts.total,
            "non_embedding_parameters": counts.non_embedding,
        });
        let path = ctx.out_dir.join("metrics.json");
        std::fs::write(
            &path,
            serde_json::to_string_pretty(&metrics).context("serialising metrics")? + "\n",
        )
        .with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }
}
