//! Hugging Face model folders: `config.json` + `model.safetensors` (or sharded
//! `model.safetensors.index.json` + shards), tokenizer files alongside.
//!
//! Loading reads every float dtype (f32, f16, bf16, f64) into f32 and checks the tensor set exactly:
//! missing and unexpected tensors and shape mismatches are errors naming the tensor. Saving writes
//! f32 safetensors with metadata `format = pt` (transformers refuses other formats), `config.json`,
//! and copies the tokenizer files.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use burn::module::Param;
use burn::nn::Embedding;
use burn::tensor::{Device, Tensor, TensorData};
use safetensors::{Dtype, SafeTensors};

use super::ModelError;
use super::config::LlamaConfig;
use super::llama::{Attention, DecoderLayer, Llama, Mlp, RmsNorm, linear_from};

/// Python module written next to configs with per-layer widths (see [`LlamaConfig`] docs).
pub const SHEARED_MODELING_PY: &str = include_str!("modeling_sheared_llama.py");

/// Tokenizer and generation files carried from a source folder into a saved model folder.
pub const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "generation_config.json",
];

/// Whether a tensor is a `[out, in]` matrix that burn stores transposed.
fn is_linear(name: &str) -> bool {
    name.ends_with("_proj.weight") || name == "lm_head.weight"
}

/// The tensor names and HF shapes a model with `config` has, in file order.
pub fn expected_tensors(config: &LlamaConfig) -> Vec<(String, Vec<usize>)> {
    let hidden = config.hidden_size;
    let mut names = vec![(
        "model.embed_tokens.weight".to_string(),
        vec![config.vocab_size, hidden],
    )];
    for index in 0..config.num_hidden_layers {
        let widths = config.layer(index);
        let prefix = format!("model.layers.{index}");
        names.push((format!("{prefix}.input_layernorm.weight"), vec![hidden]));
        if widths.num_attention_heads > 0 {
            let query = widths.num_attention_heads * config.head_dim;
            let key_value = widths.num_key_value_heads * config.head_dim;
            names.push((
                format!("{prefix}.self_attn.q_proj.weight"),
                vec![query, hidden],
            ));
            names.push((
                format!("{prefix}.self_attn.k_proj.weight"),
                vec![key_value, hidden],
            ));
            names.push((
                format!("{prefix}.self_attn.v_proj.weight"),
                vec![key_value, hidden],
            ));
            names.push((
                format!("{prefix}.self_attn.o_proj.weight"),
                vec![hidden, query],
            ));
        }
        names.push((
            format!("{prefix}.post_attention_layernorm.weight"),
            vec![hidden],
        ));
        if widths.intermediate_size > 0 {
            let intermediate = widths.intermediate_size;
            names.push((
                format!("{prefix}.mlp.gate_proj.weight"),
                vec![intermediate, hidden],
            ));
            names.push((
                format!("{prefix}.mlp.up_proj.weight"),
                vec![intermediate, hidden],
            ));
            names.push((
                format!("{prefix}.mlp.down_proj.weight"),
                vec![hidden, intermediate],
            ));
        }
    }
    names.push(("model.norm.weight".to_string(), vec![hidden]));
    if !config.tie_word_embeddings {
        names.push((
            "lm_head.weight".to_string(),
            vec![config.vocab_size, hidden],
        ));
    }
    names
}

/// Tensors by HF name, in HF layout (`[out, in]` for matrices), f32.
pub type HostTensors = HashMap<String, (Vec<f32>, Vec<usize>)>;

/// Build a model from host tensors in HF layout, checking the set and every shape against `config`.
/// `origin` names the source in errors. Consumes the tensors it uses.
pub fn model_from_tensors(
    config: &LlamaConfig,
    mut tensors: HostTensors,
    origin: &Path,
    device: &Device,
) -> Result<Llama, ModelError> {
    let expected = expected_tensors(config);
    let expected_names: BTreeSet<&str> = expected.iter().map(|(name, _)| name.as_str()).collect();
    let missing: Vec<&str> = expected_names
        .iter()
        .copied()
        .filter(|name| !tensors.contains_key(*name))
        .collect();
    if !missing.is_empty() {
        return Err(ModelError::weights(
            origin,
            format!(
                "{} tensor(s) the config requires are missing: {}",
                missing.len(),
                list(&missing)
            ),
        ));
    }
    // Buffers some exporters include that carry no parameters, and a duplicate head of tied models.
    tensors.retain(|name, _| !name.ends_with("rotary_emb.inv_freq"));
    if config.tie_word_embeddings {
        tensors.remove("lm_head.weight");
    }
    let mut unexpected: Vec<&str> = tensors
        .keys()
        .map(String::as_str)
        .filter(|name| !expected_names.contains(name))
        .collect();
    if !unexpected.is_empty() {
        unexpected.sort();
        return Err(ModelError::weights(
            origin,
            format!(
                "{} tensor(s) are not part of a LLaMA model with this config.json: {}",
                unexpected.len(),
                list(&unexpected)
            ),
        ));
    }
    for (name, shape) in &expected {
        let found = &tensors[name].1;
        if found != shape {
            return Err(ModelError::tensor(
                origin,
                name,
                format!("expected shape {shape:?} (from config.json), found {found:?}"),
            ));
        }
    }

    let mut take = |name: &str| -> Tensor<2> {
        let (values, shape) = tensors.remove(name).unwrap_or_default();
        if is_linear(name) {
            // HF [out, in] → burn [in, out]
            let (rows, columns) = (shape[0], shape[1]);
            Tensor::from_data(
                TensorData::new(transpose(&values, rows, columns), [columns, rows]),
                device,
            )
        } else if shape.len() == 2 {
            Tensor::from_data(TensorData::new(values, [shape[0], shape[1]]), device)
        } else {
            let size = shape[0];
            Tensor::from_data(TensorData::new(values, [1, size]), device)
        }
    };
    let norm = |tensor: Tensor<2>| RmsNorm {
        weight: Param::from_tensor(tensor.reshape([config.hidden_size])),
        eps: config.rms_norm_eps,
    };

    let embed_tokens = Embedding {
        weight: Param::from_tensor(take("model.embed_tokens.weight")),
    };
    let mut layers = Vec::with_capacity(config.num_hidden_layers);
    for index in 0..config.num_hidden_layers {
        let widths = config.layer(index);
        let prefix = format!("model.layers.{index}");
        let input_layernorm = norm(take(&format!("{prefix}.input_layernorm.weight")));
        let self_attn = (widths.num_attention_heads > 0).then(|| Attention {
            q_proj: linear_from(take(&format!("{prefix}.self_attn.q_proj.weight"))),
            k_proj: linear_from(take(&format!("{prefix}.self_attn.k_proj.weight"))),
            v_proj: linear_from(take(&format!("{prefix}.self_attn.v_proj.weight"))),
            o_proj: linear_from(take(&format!("{prefix}.self_attn.o_proj.weight"))),
            head_dim: config.head_dim,
        });
        let post_attention_layernorm =
            norm(take(&format!("{prefix}.post_attention_layernorm.weight")));
        let mlp = (widths.intermediate_size > 0).then(|| Mlp {
            gate_proj: linear_from(take(&format!("{prefix}.mlp.gate_proj.weight"))),
            up_proj: linear_from(take(&format!("{prefix}.mlp.up_proj.weight"))),
            down_proj: linear_from(take(&format!("{prefix}.mlp.down_proj.weight"))),
        });
        layers.push(DecoderLayer {
            input_layernorm,
            self_attn,
            post_attention_layernorm,
            mlp,
        });
    }
    let final_norm = norm(take("model.norm.weight"));
    let lm_head = (!config.tie_word_embeddings).then(|| linear_from(take("lm_head.weight")));
    Ok(Llama::from_parts(
        config,
        embed_tokens,
        layers,
        final_norm,
        lm_head,
    ))
}

/// Load a Hugging Face LLaMA folder onto `device` (f32).
pub fn load_hf(dir: &Path, device: &Device) -> Result<Llama, ModelError> {
    let config_path = dir.join("config.json");
    if !config_path.is_file() {
        return Err(ModelError::config(
            &config_path,
            "not found: a Hugging Face model folder needs config.json",
        ));
    }
    let config = LlamaConfig::load(&config_path)?;
    let tensors = read_weights(dir)?;
    model_from_tensors(&config, tensors, dir, device)
}

/// The weight files of a model folder: the shards listed by `model.safetensors.index.json`, or
/// `model.safetensors`.
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, ModelError> {
    let index_path = dir.join("model.safetensors.index.json");
    if index_path.is_file() {
        let text = std::fs::read_to_string(&index_path)
            .map_err(|error| ModelError::io(&index_path, error))?;
        let index: serde_json::Value = serde_json::from_str(&text).map_err(|error| {
            ModelError::weights(&index_path, format!("not valid JSON: {error}"))
        })?;
        let weight_map = index
            .get("weight_map")
            .and_then(|map| map.as_object())
            .ok_or_else(|| ModelError::weights(&index_path, "missing `weight_map` object"))?;
        let mut files = BTreeSet::new();
        for (tensor, file) in weight_map {
            let file = file
                .as_str()
                .filter(|file| !file.contains('/') && !file.contains('\\') && *file != "..")
                .ok_or_else(|| {
                    ModelError::tensor(
                        &index_path,
                        tensor,
                        "`weight_map` value must be a file name in this folder",
                    )
                })?;
            files.insert(dir.join(file));
        }
        return Ok(files.into_iter().collect());
    }
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    Err(ModelError::weights(
        dir,
        "no model.safetensors or model.safetensors.index.json (PyTorch .bin checkpoints are not supported: \
         re-save with transformers' `save_pretrained(..., safe_serialization=True)`)",
    ))
}

/// Read every tensor of every weight file into f32 host memory.
fn read_weights(dir: &Path) -> Result<HostTensors, ModelError> {
    let mut tensors = HostTensors::new();
    for path in weight_files(dir)? {
        let file = File::open(&path).map_err(|error| ModelError::io(&path, error))?;
        // SAFETY: the map is read-only and dropped before this function returns; the file is not
        // modified by this process. Another process truncating it concurrently would be undefined
        // behaviour, as with every mmap reader (the safetensors ecosystem shares this caveat).
        let bytes =
            unsafe { memmap2::Mmap::map(&file) }.map_err(|error| ModelError::io(&path, error))?;
        let file_tensors = SafeTensors::deserialize(&bytes).map_err(|error| {
            ModelError::weights(
                &path,
                format!("not a readable safetensors file (truncated or corrupt?): {error}"),
            )
        })?;
        for (name, view) in file_tensors.iter() {
            let values = to_f32(view.dtype(), view.data())
                .map_err(|message| ModelError::tensor(&path, name, message))?;
            if tensors
                .insert(name.to_string(), (values, view.shape().to_vec()))
                .is_some()
            {
                return Err(ModelError::tensor(
                    &path,
                    name,
                    "appears in more than one shard",
                ));
            }
        }
    }
    Ok(tensors)
}

/// Decode little-endian float bytes of `dtype` into f32.
fn to_f32(dtype: Dtype, data: &[u8]) -> Result<Vec<f32>, String> {
    Ok(match dtype {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::F64 => data
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32)
            .collect(),
        other => {
            return Err(format!(
                "dtype {other:?} is not a float type this loader reads (f32, f16, bf16, f64)"
            ));
        }
    })
}

/// Row-major `[rows, columns]` → `[columns, rows]`.
pub fn transpose(values: &[f32], rows: usize, columns: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; values.len()];
    for row in 0..rows {
        for column in 0..columns {
            out[column * rows + row] = values[row * columns + column];
        }
    }
    out
}

fn list(names: &[&str]) -> String {
    const SHOWN: usize = 8;
    let mut text = names
        .iter()
        .take(SHOWN)
        .map(|name| format!("`{name}`"))
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        text.push_str(&format!(" and {} more", names.len() - SHOWN));
    }
    text
}

/// The model's tensors in HF names and layout (`[out, in]`), f32 host memory.
pub fn model_to_tensors(model: &Llama) -> Vec<(String, Vec<f32>, Vec<usize>)> {
    let mut out = Vec::new();
    let mut push_matrix = |name: String, tensor: Tensor<2>, linear: bool| {
        let [rows, columns] = tensor.dims();
        let values = host(tensor.into_data());
        if linear {
            out.push((name, transpose(&values, rows, columns), vec![columns, rows]));
        } else {
            out.push((name, values, vec![rows, columns]));
        }
    };
    push_matrix(
        "model.embed_tokens.weight".into(),
        model.embed_tokens.weight.val(),
        false,
    );
    let mut vectors = Vec::new();
    for (index, layer) in model.layers.iter().enumerate() {
        let prefix = format!("model.layers.{index}");
        vectors.push((
            format!("{prefix}.input_layernorm.weight"),
            layer.input_layernorm.weight.val(),
        ));
        vectors.push((
            format!("{prefix}.post_attention_layernorm.weight"),
            layer.post_attention_layernorm.weight.val(),
        ));
        if let Some(attn) = &layer.self_attn {
            for (part, linear) in [
                ("q_proj", &attn.q_proj),
                ("k_proj", &attn.k_proj),
                ("v_proj", &attn.v_proj),
                ("o_proj", &attn.o_proj),
            ] {
                push_matrix(
                    format!("{prefix}.self_attn.{part}.weight"),
                    linear.weight.val(),
                    true,
                );
            }
        }
        if let Some(mlp) = &layer.mlp {
            for (part, linear) in [
                ("gate_proj", &mlp.gate_proj),
                ("up_proj", &mlp.up_proj),
                ("down_proj", &mlp.down_proj),
            ] {
                push_matrix(
                    format!("{prefix}.mlp.{part}.weight"),
                    linear.weight.val(),
                    true,
                );
            }
        }
    }
    vectors.push(("model.norm.weight".into(), model.norm.weight.val()));
    if let Some(head) = &model.lm_head {
        push_matrix("lm_head.weight".into(), head.weight.val(), true);
    }
    for (name, tensor) in vectors {
        let size = tensor.dims()[0];
        out.push((name, host(tensor.into_data()), vec![size]));
    }
    out
}

fn host(data: TensorData) -> Vec<f32> {
    data.convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap_or_default()
}

/// Float type of the weights [`save_hf_with_dtype`] writes. Compute is always f32; `BF16` halves
/// the file size (the dtype LLaMA checkpoints are usually published in) at the cost of rounding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightDtype {
    #[default]
    F32,
    BF16,
    F16,
}

impl WeightDtype {
    fn safetensors(self) -> Dtype {
        match self {
            WeightDtype::F32 => Dtype::F32,
            WeightDtype::BF16 => Dtype::BF16,
            WeightDtype::F16 => Dtype::F16,
        }
    }
    /// The name transformers uses in config.json (`torch_dtype`).
    pub fn torch_name(self) -> &'static str {
        match self {
            WeightDtype::F32 => "float32",
            WeightDtype::BF16 => "bfloat16",
            WeightDtype::F16 => "float16",
        }
    }
}

/// A tensor owned in memory (f32), encoded to the file dtype one tensor at a time while writing.
struct OwnedView {
    shape: Vec<usize>,
    values: Vec<f32>,
    dtype: WeightDtype,
}

impl safetensors::View for &OwnedView {
    fn dtype(&self) -> Dtype {
        self.dtype.safetensors()
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        match self.dtype {
            WeightDtype::F32 => std::borrow::Cow::Borrowed(bytemuck::cast_slice(&self.values)),
            WeightDtype::BF16 => std::borrow::Cow::Owned(
                self.values
                    .iter()
                    .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
                    .collect(),
            ),
            WeightDtype::F16 => std::borrow::Cow::Owned(
                self.values
                    .iter()
                    .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                    .collect(),
            ),
        }
    }
    fn data_len(&self) -> usize {
        self.values.len() * if self.dtype == WeightDtype::F32 { 4 } else { 2 }
    }
}

/// Write `tensors` (HF names, layout and shapes; f32 values) as one safetensors file of `dtype`
/// with metadata `format = pt`. Written to a `.partial` file and renamed, so a crash never leaves a
/// half-written `model.safetensors`.
pub fn write_safetensors(
    path: &Path,
    tensors: Vec<(String, Vec<f32>, Vec<usize>)>,
    dtype: WeightDtype,
) -> Result<(), ModelError> {
    let views: BTreeMap<String, OwnedView> = tensors
        .into_iter()
        .map(|(name, values, shape)| {
            (
                name,
                OwnedView {
                    shape,
                    values,
                    dtype,
                },
            )
        })
        .collect();
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let temporary = path.with_extension("safetensors.partial");
    safetensors::serialize_to_file(
        views.iter().map(|(name, view)| (name.as_str(), view)),
        Some(metadata),
        &temporary,
    )
    .map_err(|error| ModelError::weights(&temporary, format!("writing failed: {error}")))?;
    std::fs::rename(&temporary, path).map_err(|error| ModelError::io(path, error))
}

/// Save `model` as a Hugging Face folder: `config.json`, `model.safetensors` (f32, `format = pt`),
/// `modeling_sheared_llama.py` when layers have different widths, and the tokenizer files found in
/// `tokenizer_from` (a folder, or a single `tokenizer.json`).
pub fn save_hf(model: &Llama, dir: &Path, tokenizer_from: Option<&Path>) -> Result<(), ModelError> {
    save_hf_with_dtype(model, dir, tokenizer_from, WeightDtype::F32)
}

/// [`save_hf`] with the weights stored as `dtype`.
pub fn save_hf_with_dtype(
    model: &Llama,
    dir: &Path,
    tokenizer_from: Option<&Path>,
    dtype: WeightDtype,
) -> Result<(), ModelError> {
    std::fs::create_dir_all(dir).map_err(|error| ModelError::io(dir, error))?;
    let config = model.config();
    write_safetensors(
        &dir.join("model.safetensors"),
        model_to_tensors(model),
        dtype,
    )?;
    let mut json = config.to_json();
    json["torch_dtype"] = serde_json::json!(dtype.torch_name());
    let config_path = dir.join("config.json");
    let text = serde_json::to_string_pretty(&json)
        .map_err(|error| ModelError::Invalid(error.to_string()))?;
    std::fs::write(&config_path, text + "\n")
        .map_err(|error| ModelError::io(&config_path, error))?;
    if config.layer_widths.is_some() {
        let path = dir.join("modeling_sheared_llama.py");
        std::fs::write(&path, SHEARED_MODELING_PY).map_err(|error| ModelError::io(&path, error))?;
    }
    if let Some(source) = tokenizer_from {
        copy_tokenizer_files(source, dir)?;
    }
    Ok(())
}

/// Copy the tokenizer/generation files of `source` (folder or single file) into `dir`.
pub fn copy_tokenizer_files(source: &Path, dir: &Path) -> Result<(), ModelError> {
    if source.is_file() {
        let name = source.file_name().unwrap_or_default();
        let target = dir.join(name);
        std::fs::copy(source, &target).map_err(|error| ModelError::io(&target, error))?;
        return Ok(());
    }
    let mut copied = 0;
    for name in TOKENIZER_FILES {
        let from = source.join(name);
        if from.is_file() {
            let target = dir.join(name);
            std::fs::copy(&from, &target).map_err(|error| ModelError::io(&target, error))?;
            copied += 1;
        }
    }
    if copied == 0 {
        return Err(ModelError::weights(
            source,
            format!(
                "no tokenizer files found to carry along (looked for {})",
                TOKENIZER_FILES.join(", ")
            ),
        ));
    }
    Ok(())
}

/// Test helpers shared by the stage tests.
#[cfg(test)]
pub(crate) mod testing {
    use std::path::Path;

    /// Every f32 value of a safetensors file, tensors in name order (safetensors lists them in no
    /// fixed order).
    pub(crate) fn f32_values(path: &Path) -> Vec<f32> {
        let bytes =
            std::fs::read(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
        let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut named = tensors.tensors();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        named
            .into_iter()
            .flat_map(|(_, view)| {
                view.data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}
