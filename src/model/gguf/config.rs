//! The model's `config.json` from the GGUF `llama.*` metadata.

use super::reader::{GgufFile, MetadataValue};
use crate::model::ModelError;
use crate::model::config::{LlamaConfig, RopeScaling};

/// The HF config described by a `llama` GGUF's metadata.
pub fn config_from_metadata(gguf: &GgufFile) -> Result<LlamaConfig, ModelError> {
    let path = gguf.path.as_path();
    let architecture = gguf
        .get("general.architecture")
        .and_then(MetadataValue::as_str)
        .unwrap_or("(missing)");
    if architecture != "llama" {
        return Err(ModelError::config(
            path,
            format!(
                "unsupported GGUF architecture `{architecture}` (general.architecture); sheared imports `llama` only"
            ),
        ));
    }
    let number = |key: &str| -> Result<Option<u64>, ModelError> {
        match gguf.get(&format!("llama.{key}")) {
            None => Ok(None),
            Some(value) => value.as_u64().map(Some).ok_or_else(|| {
                ModelError::config(path, format!("`llama.{key}` must be one unsigned integer (per-layer arrays are not supported)"))
            }),
        }
    };
    let required = |key: &str| -> Result<usize, ModelError> {
        number(key)?
            .map(|v| v as usize)
            .ok_or_else(|| ModelError::config(path, format!("missing metadata `llama.{key}`")))
    };
    let float = |key: &str| {
        gguf.get(&format!("llama.{key}"))
            .and_then(MetadataValue::as_f64)
    };
    let hidden = required("embedding_length")?;
    let heads = required("attention.head_count")?;
    let kv_heads = number("attention.head_count_kv")?.map_or(heads, |v| v as usize);
    let head_dim = match number("attention.key_length")?.or(number("rope.dimension_count")?) {
        Some(dim) => dim as usize,
        None => hidden / heads.max(1),
    };
    let token_count = gguf
        .get("tokenizer.ggml.tokens")
        .and_then(MetadataValue::as_array)
        .map(<[_]>::len);
    let embed_rows = gguf
        .tensors
        .iter()
        .find(|t| t.name == "token_embd.weight")
        .and_then(|t| t.dims.get(1).copied());
    let vocab_size = match number("vocab_size")? {
        Some(v) => v as usize,
        None => embed_rows
            .map(|v| v as usize)
            .or(token_count)
            .ok_or_else(|| {
                ModelError::config(
                    path,
                    "cannot tell the vocabulary size (no llama.vocab_size, no token_embd.weight)",
                )
            })?,
    };
    let rope_scaling = match gguf
        .get("llama.rope.scaling.type")
        .and_then(MetadataValue::as_str)
    {
        None | Some("none") => None,
        Some("linear") => Some(RopeScaling::Linear {
            factor: float("rope.scaling.factor").unwrap_or(1.0),
        }),
        Some(other) => {
            return Err(ModelError::config(
                path,
                format!(
                    "unsupported rope scaling type `{other}` (llama.rope.scaling.type); sheared imports none and linear"
                ),
            ));
        }
    };
    if gguf.tensors.iter().any(|t| t.name == "rope_freqs.weight") {
        return Err(ModelError::config(
            path,
            "the file carries `rope_freqs.weight` (LLaMA-3.1 style rope scaling), which GGUF import does not support; \
             convert from the Hugging Face checkpoint instead",
        ));
    }
    let token_id = |key: &str| {
        gguf.get(&format!("tokenizer.ggml.{key}"))
            .and_then(MetadataValue::as_u64)
            .map(|v| v as u32)
    };
    let mut config = LlamaConfig::new(
        vocab_size,
        hidden,
        required("feed_forward_length")?,
        required("block_count")?,
        heads,
        kv_heads,
    );
    config.head_dim = head_dim;
    config.rms_norm_eps = float("attention.layer_norm_rms_epsilon").unwrap_or(1e-5);
    config.rope_theta = float("rope.freq_base").unwrap_or(10000.0);
    config.rope_scaling = rope_scaling;
    config.max_position_embeddings = number("context_length")?.map_or(2048, |v| v as usize);
    config.tie_word_embeddings = !gguf.tensors.iter().any(|t| t.name == "output.weight");
    config.bos_token_id = token_id("bos_token_id");
    config.eos_token_id = token_id("eos_token_id").into_iter().collect();
    config.pad_token_id = token_id("padding_token_id");
    config.validate(path)?;
    Ok(config)
}
