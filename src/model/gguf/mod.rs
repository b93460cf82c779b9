//! Import of llama.cpp GGUF files (v2/v3, architecture `llama`) into Hugging Face folders.
//!
//! What the conversion does:
//! 1. parse the header: metadata key/values and tensor infos (dims fastest-first, so an HF `[out, in]`
//!    matrix is stored with `ne = [in, out]`);
//! 2. dequantise every tensor to f32 (F32, F16, BF16, F64, Q8_0, Q4_0, Q4_1; other types are named
//!    in the error);
//! 3. rename `blk.N.attn_q` → `model.layers.N.self_attn.q_proj` etc., and undo llama.cpp's q/k row
//!    permutation (its converter interleaves the two RoPE halves of every head for its "NORM" RoPE;
//!    HF's `rotate_half` wants them back in halves);
//! 4. write `config.json`, `model.safetensors` and, for GPT-2 style byte-level BPE vocabularies,
//!    `tokenizer.json` + `tokenizer_config.json` rebuilt from the `tokenizer.ggml.*` metadata.
//!
//! Steps 1–2 are [`reader`], the config is [`config`], the tokenizer [`tokenizer`]; this file renames,
//! un-permutes and writes the folder.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Value, json};

use crate::model::ModelError;
use crate::model::config::LlamaConfig;
use crate::model::hf::{HostTensors, WeightDtype, expected_tensors, write_safetensors};

mod config;
mod reader;
mod tokenizer;

pub use config::config_from_metadata;
pub use reader::{GgmlType, GgufFile, MetadataValue, TensorInfo, dequantize, ggml_type_name};
pub use tokenizer::tokenizer_json;

/// Undo llama.cpp's q/k permutation: within each head, GGUF row `2i + j` holds HF row `j·(head_dim/2) + i`.
/// `values` is row-major `[heads·head_dim, columns]`.
pub fn unpermute_rows(values: &[f32], heads: usize, columns: usize) -> Vec<f32> {
    let rows = values.len() / columns.max(1);
    let head_dim = rows / heads.max(1);
    let half = head_dim / 2;
    let mut out = vec![0.0f32; values.len()];
    for head in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                let from = head * head_dim + 2 * i + j;
                let to = head * head_dim + j * half + i;
                out[to * columns..(to + 1) * columns]
                    .copy_from_slice(&values[from * columns..(from + 1) * columns]);
            }
        }
    }
    out
}

/// HF name of a GGUF tensor, and the number of heads to un-permute by (q/k only).
fn hf_name(gguf_name: &str, config: &LlamaConfig) -> Option<(String, Option<usize>)> {
    match gguf_name {
        "token_embd.weight" => return Some(("model.embed_tokens.weight".into(), None)),
        "output_norm.weight" => return Some(("model.norm.weight".into(), None)),
        "output.weight" => return Some(("lm_head.weight".into(), None)),
        _ => {}
    }
    let rest = gguf_name.strip_prefix("blk.")?;
    let (index, part) = rest.split_once('.')?;
    let index: usize = index.parse().ok()?;
    let (hf_part, heads) = match part {
        "attn_norm.weight" => ("input_layernorm.weight", None),
        "attn_q.weight" => (
            "self_attn.q_proj.weight",
            Some(config.layer(index).num_attention_heads),
        ),
        "attn_k.weight" => (
            "self_attn.k_proj.weight",
            Some(config.layer(index).num_key_value_heads),
        ),
        "attn_v.weight" => ("self_attn.v_proj.weight", None),
        "attn_output.weight" => ("self_attn.o_proj.weight", None),
        "ffn_norm.weight" => ("post_attention_layernorm.weight", None),
        "ffn_gate.weight" => ("mlp.gate_proj.weight", None),
        "ffn_up.weight" => ("mlp.up_proj.weight", None),
        "ffn_down.weight" => ("mlp.down_proj.weight", None),
        _ => return None,
    };
    Some((format!("model.layers.{index}.{hf_part}"), heads))
}

/// All tensors of a `llama` GGUF in HF names and layout, f32.
pub fn tensors_from_gguf(gguf: &GgufFile, config: &LlamaConfig) -> Result<HostTensors, ModelError> {
    let mut tensors = HostTensors::new();
    let mut unknown = Vec::new();
    for info in &gguf.tensors {
        let Some((name, heads)) = hf_name(&info.name, config) else {
            unknown.push(info.name.clone());
            continue;
        };
        let shape = info.shape();
        let mut values = gguf.tensor_f32(info)?;
        if let Some(heads) = heads
            && shape.len() == 2
            && heads > 0
        {
            values = unpermute_rows(&values, heads, shape[1]);
        }
        tensors.insert(name, (values, shape));
    }
    if !unknown.is_empty() {
        return Err(ModelError::weights(
            &gguf.path,
            format!(
                "tensors that a `llama` model does not have: {}",
                unknown.join(", ")
            ),
        ));
    }
    Ok(tensors)
}

/// What [`convert`] wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConvertSummary {
    pub config: serde_json::Value,
    pub tensors: usize,
    pub parameters: u64,
    /// Tensor type name → number of tensors of that type in the GGUF.
    pub tensor_types: BTreeMap<String, usize>,
    /// `None` when the tokenizer was written; otherwise why not.
    pub tokenizer_skipped: Option<String>,
}

/// Convert a `llama` GGUF file into a Hugging Face folder `out_dir` (created if absent).
pub fn convert(gguf_path: &Path, out_dir: &Path) -> Result<ConvertSummary, ModelError> {
    let gguf = GgufFile::open(gguf_path)?;
    let config = config_from_metadata(&gguf)?;
    let tensors = tensors_from_gguf(&gguf, &config)?;
    // Check the tensor set and shapes exactly as the HF loader would, before writing anything.
    let expected = expected_tensors(&config);
    for (name, shape) in &expected {
        match tensors.get(name) {
            None => {
                return Err(ModelError::tensor(
                    gguf_path,
                    name,
                    "missing from the GGUF file",
                ));
            }
            Some((_, found)) if found != shape => {
                return Err(ModelError::tensor(
                    gguf_path,
                    name,
                    format!("expected shape {shape:?}, found {found:?}"),
                ));
            }
            Some(_) => {}
        }
    }
    let mut tensor_types = BTreeMap::new();
    for info in &gguf.tensors {
        *tensor_types
            .entry(ggml_type_name(info.ggml_type))
            .or_insert(0) += 1;
    }
    std::fs::create_dir_all(out_dir).map_err(|error| ModelError::io(out_dir, error))?;
    let tokenizer_skipped = match tokenizer_json(&gguf) {
        Ok((tokenizer, tokenizer_config)) => {
            write_json(&out_dir.join("tokenizer.json"), &tokenizer)?;
            write_json(&out_dir.join("tokenizer_config.json"), &tokenizer_config)?;
            None
        }
        Err(reason) => Some(reason),
    };
    let count = tensors.len();
    let ordered: Vec<(String, Vec<f32>, Vec<usize>)> = tensors
        .into_iter()
        .map(|(name, (values, shape))| (name, values, shape))
        .collect();
    write_safetensors(
        &out_dir.join("model.safetensors"),
        ordered,
        WeightDtype::F32,
    )?;
    config.save(&out_dir.join("config.json"))?;
    let generation =
        json!({ "bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id.first() });
    write_json(&out_dir.join("generation_config.json"), &generation)?;
    Ok(ConvertSummary {
        config: config.to_json(),
        tensors: count,
        parameters: config.parameter_counts().total,
        tensor_types,
        tokenizer_skipped,
    })
}

fn write_json(path: &Path, value: &Value) -> Result<(), ModelError> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|error| ModelError::Invalid(error.to_string()))?;
    std::fs::write(path, text + "\n").map_err(|error| ModelError::io(path, error))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f16_bytes(value: f32) -> [u8; 2] {
        half::f16::from_f32(value).to_le_bytes()
    }

    #[test]
    fn q8_0_block_by_hand() {
        let mut block = f16_bytes(0.5).to_vec();
        block.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let values = dequantize(GgmlType::Q8_0, &block, 32);
        assert_eq!(values[0], -8.0);
        assert_eq!(values[16], 0.0);
        assert_eq!(values[31], 7.5);
    }

    #[test]
    fn q4_0_block_by_hand() {
        let mut block = f16_bytes(2.0).to_vec();
        // low nibble 0..15 → values 0..15; high nibble 15 - j → values 16..31.
        block.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let values = dequantize(GgmlType::Q4_0, &block, 32);
        assert_eq!(values[0], 2.0 * (0 - 8) as f32);
        assert_eq!(values[15], 2.0 * (15 - 8) as f32);
        assert_eq!(values[16], 2.0 * (15 - 8) as f32);
        assert_eq!(values[31], 2.0 * (0 - 8) as f32);
    }

    #[test]
    fn q4_1_block_by_hand() {
        let mut block = f16_bytes(0.25).to_vec();
        block.extend(f16_bytes(-1.0));
        block.extend((0..16u8).map(|j| j | (3 << 4)));
        let values = dequantize(GgmlType::Q4_1, &block, 32);
        assert_eq!(values[0], -1.0);
        assert_eq!(values[15], 0.25 * 15.0 - 1.0);
        assert_eq!(values[20], 0.25 * 3.0 - 1.0);
    }

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        // llama.cpp: w.reshape(heads, 2, head_dim/2, cols).swapaxes(1, 2).reshape(rows, cols)
        let (heads, head_dim, columns) = (2, 4, 3);
        let rows = heads * head_dim;
        let hf: Vec<f32> = (0..rows * columns).map(|v| v as f32).collect();
        let mut permuted = vec![0.0; hf.len()];
        for head in 0..heads {
            for j in 0..2 {
                for i in 0..head_dim / 2 {
                    let source = head * head_dim + j * (head_dim / 2) + i; // (head, j, i)
                    let target = head * head_dim + i * 2 + j; // (head, i, j)
                    for c in 0..columns {
                        permuted[target * columns + c] = hf[source * columns + c];
                    }
                }
            }
        }
        assert_eq!(unpermute_rows(&permuted, heads, columns), hf);
    }

    #[test]
    fn names_unsupported_types() {
        let message = GgmlType::from_id(14).unwrap_err();
        assert!(message.contains("Q6_K"), "{message}");
    }
}
