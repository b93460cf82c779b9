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

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;

use serde_json::{Value, json};

use super::ModelError;
use super::config::{LlamaConfig, RopeScaling};
use super::hf::{HostTensors, WeightDtype, expected_tensors, write_safetensors};

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetadataValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Vec<MetadataValue>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl MetadataValue {
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetadataValue::U8(v) => Some(v as u64),
            MetadataValue::U16(v) => Some(v as u64),
            MetadataValue::U32(v) => Some(v as u64),
            MetadataValue::U64(v) => Some(v),
            MetadataValue::I8(v) if v >= 0 => Some(v as u64),
            MetadataValue::I16(v) if v >= 0 => Some(v as u64),
            MetadataValue::I32(v) if v >= 0 => Some(v as u64),
            MetadataValue::I64(v) if v >= 0 => Some(v as u64),
            _ => None,
        }
    }
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            // Shortest decimal that round-trips the f32 (1e-5 stays 1e-5 instead of 9.9999997e-6).
            MetadataValue::F32(v) => v.to_string().parse().ok(),
            MetadataValue::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetadataValue::String(text) => Some(text),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetadataValue::Bool(v) => Some(v),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&[MetadataValue]> {
        match self {
            MetadataValue::Array(items) => Some(items),
            _ => None,
        }
    }
}

/// A tensor's header entry.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` varies fastest.
    pub dims: Vec<u64>,
    pub ggml_type: u32,
    /// Offset from the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    pub fn element_count(&self) -> u64 {
        self.dims.iter().product()
    }
    /// Row-major (HF/torch) shape: the ggml dims reversed.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

/// The ggml tensor types the importer reads, with their block layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    F64,
    Q4_0,
    Q4_1,
    Q8_0,
}

impl GgmlType {
    pub fn from_id(id: u32) -> Result<Self, String> {
        Ok(match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            8 => GgmlType::Q8_0,
            28 => GgmlType::F64,
            30 => GgmlType::BF16,
            other => {
                return Err(format!(
                    "tensor type {} is not supported (supported: F32, F16, BF16, F64, Q8_0, Q4_0, Q4_1); \
                     re-quantise with llama.cpp's `llama-quantize` to one of those",
                    ggml_type_name(other)
                ));
            }
        })
    }
    /// (values per block, bytes per block)
    pub fn block(self) -> (u64, u64) {
        match self {
            GgmlType::F32 => (1, 4),
            GgmlType::F16 | GgmlType::BF16 => (1, 2),
            GgmlType::F64 => (1, 8),
            GgmlType::Q4_0 => (32, 18),
            GgmlType::Q4_1 => (32, 20),
            GgmlType::Q8_0 => (32, 34),
        }
    }
}

/// ggml's name for a type id (for error messages).
pub fn ggml_type_name(id: u32) -> String {
    const NAMES: &[&str] = &[
        "F32",
        "F16",
        "Q4_0",
        "Q4_1",
        "Q4_2",
        "Q4_3",
        "Q5_0",
        "Q5_1",
        "Q8_0",
        "Q8_1",
        "Q2_K",
        "Q3_K",
        "Q4_K",
        "Q5_K",
        "Q6_K",
        "Q8_K",
        "IQ2_XXS",
        "IQ2_XS",
        "IQ3_XXS",
        "IQ1_S",
        "IQ4_NL",
        "IQ3_S",
        "IQ2_S",
        "IQ4_XS",
        "I8",
        "I16",
        "I32",
        "I64",
        "F64",
        "IQ1_M",
        "BF16",
        "Q4_0_4_4",
        "Q4_0_4_8",
        "Q4_0_8_8",
        "TQ1_0",
        "TQ2_0",
        "IQ4_NL_4_4",
        "IQ4_NL_4_8",
        "IQ4_NL_8_8",
        "MXFP4",
    ];
    NAMES
        .get(id as usize)
        .map_or_else(|| format!("#{id}"), |name| format!("{name} (#{id})"))
}

/// Dequantise `count` values of `ggml_type` from `bytes` (exactly the tensor's bytes).
pub fn dequantize(ggml_type: GgmlType, bytes: &[u8], count: usize) -> Vec<f32> {
    let f16 = |b: &[u8]| half::f16::from_le_bytes([b[0], b[1]]).to_f32();
    let mut out = Vec::with_capacity(count);
    match ggml_type {
        GgmlType::F32 => out.extend(
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        ),
        GgmlType::F16 => out.extend(bytes.chunks_exact(2).map(f16)),
        GgmlType::BF16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()),
        ),
        GgmlType::F64 => {
            out.extend(bytes.chunks_exact(8).map(|b| {
                f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32
            }))
        }
        // {f16 d; i8 q[32]} → d·q
        GgmlType::Q8_0 => {
            for block in bytes.chunks_exact(34) {
                let scale = f16(&block[0..2]);
                out.extend(block[2..34].iter().map(|&q| scale * (q as i8) as f32));
            }
        }
        // {f16 d; u8 qs[16]} → value j = d·((qs[j] & 0xF) − 8), value j+16 = d·((qs[j] >> 4) − 8)
        GgmlType::Q4_0 => {
            for block in bytes.chunks_exact(18) {
                let scale = f16(&block[0..2]);
                let quants = &block[2..18];
                out.extend(
                    quants
                        .iter()
                        .map(|&q| scale * ((q & 0x0F) as i32 - 8) as f32),
                );
                out.extend(quants.iter().map(|&q| scale * ((q >> 4) as i32 - 8) as f32));
            }
        }
        // {f16 d; f16 m; u8 qs[16]} → value j = d·(qs[j] & 0xF) + m, value j+16 = d·(qs[j] >> 4) + m
        GgmlType::Q4_1 => {
            for block in bytes.chunks_exact(20) {
                let scale = f16(&block[0..2]);
                let minimum = f16(&block[2..4]);
                let quants = &block[4..20];
                out.extend(quants.iter().map(|&q| scale * (q & 0x0F) as f32 + minimum));
                out.extend(quants.iter().map(|&q| scale * (q >> 4) as f32 + minimum));
            }
        }
    }
    out.truncate(count);
    out
}

/// A parsed GGUF file (memory-mapped).
pub struct GgufFile {
    pub version: u32,
    pub metadata: BTreeMap<String, MetadataValue>,
    pub tensors: Vec<TensorInfo>,
    data_start: usize,
    bytes: memmap2::Mmap,
    path: std::path::PathBuf,
}

/// Bounds-checked little-endian reader over the header.
struct Reader<'a> {
    bytes: &'a [u8],
    position: usize,
    path: &'a Path,
}

impl<'a> Reader<'a> {
    fn take(&mut self, count: usize, what: &str) -> Result<&'a [u8], ModelError> {
        let end = self.position.checked_add(count).filter(|&end| end <= self.bytes.len()).ok_or_else(|| {
            ModelError::weights(
                self.path,
                format!(
                    "truncated GGUF header: reading {what} needs {count} bytes at offset {} but the file has {} bytes",
                    self.position,
                    self.bytes.len()
                ),
            )
        })?;
        let slice = &self.bytes[self.position..end];
        self.position = end;
        Ok(slice)
    }
    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], ModelError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }
    fn u32(&mut self, what: &str) -> Result<u32, ModelError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &str) -> Result<u64, ModelError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }
    /// A count that must fit in the rest of the file (each item takes at least `min_item_bytes`).
    fn count(&mut self, what: &str, min_item_bytes: usize) -> Result<usize, ModelError> {
        let count = self.u64(what)?;
        let remaining = (self.bytes.len() - self.position) as u64;
        if count.saturating_mul(min_item_bytes as u64) > remaining {
            return Err(ModelError::weights(
                self.path,
                format!(
                    "truncated or corrupt GGUF: {what} = {count} cannot fit in the remaining {remaining} bytes"
                ),
            ));
        }
        Ok(count as usize)
    }
    fn string(&mut self, what: &str) -> Result<String, ModelError> {
        let length = self.count(what, 1)?;
        let bytes = self.take(length, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| {
            ModelError::weights(
                self.path,
                format!("{what} at offset {} is not UTF-8", self.position),
            )
        })
    }
    fn value(
        &mut self,
        value_type: u32,
        key: &str,
        depth: usize,
    ) -> Result<MetadataValue, ModelError> {
        let what = format!("metadata `{key}`");
        Ok(match value_type {
            0 => MetadataValue::U8(self.array::<1>(&what)?[0]),
            1 => MetadataValue::I8(self.array::<1>(&what)?[0] as i8),
            2 => MetadataValue::U16(u16::from_le_bytes(self.array(&what)?)),
            3 => MetadataValue::I16(i16::from_le_bytes(self.array(&what)?)),
            4 => MetadataValue::U32(self.u32(&what)?),
            5 => MetadataValue::I32(i32::from_le_bytes(self.array(&what)?)),
            6 => MetadataValue::F32(f32::from_le_bytes(self.array(&what)?)),
            7 => MetadataValue::Bool(self.array::<1>(&what)?[0] != 0),
            8 => MetadataValue::String(self.string(&what)?),
            9 if depth == 0 => {
                let item_type = self.u32(&what)?;
                let length = self.count(&what, 1)?;
                let mut items = Vec::with_capacity(length);
                for _ in 0..length {
                    items.push(self.value(item_type, key, depth + 1)?);
                }
                MetadataValue::Array(items)
            }
            10 => MetadataValue::U64(self.u64(&what)?),
            11 => MetadataValue::I64(i64::from_le_bytes(self.array(&what)?)),
            12 => MetadataValue::F64(f64::from_le_bytes(self.array(&what)?)),
            other => {
                return Err(ModelError::weights(
                    self.path,
                    format!("corrupt GGUF: metadata `{key}` has unknown value type {other}"),
                ));
            }
        })
    }
}

impl GgufFile {
    /// Open and parse the header of a GGUF file. Tensor data is read lazily by [`Self::tensor_f32`].
    pub fn open(path: &Path) -> Result<Self, ModelError> {
        let file = File::open(path).map_err(|error| ModelError::io(path, error))?;
        // SAFETY: read-only map of a file this process does not modify (see hf::read_weights).
        let bytes =
            unsafe { memmap2::Mmap::map(&file) }.map_err(|error| ModelError::io(path, error))?;
        let mut reader = Reader {
            bytes: &bytes,
            position: 0,
            path,
        };
        if reader.take(4, "the magic number")? != b"GGUF" {
            return Err(ModelError::weights(
                path,
                "not a GGUF file (the first 4 bytes are not `GGUF`)",
            ));
        }
        let version = reader.u32("the version")?;
        if !(2..=3).contains(&version) {
            return Err(ModelError::weights(
                path,
                format!(
                    "GGUF version {version} is not supported (little-endian versions 2 and 3 are; \
                     a huge number here usually means a big-endian file)"
                ),
            ));
        }
        let tensor_count = reader.count("tensor count", 24)?;
        let metadata_count = reader.count("metadata count", 12)?;
        let mut metadata = BTreeMap::new();
        for _ in 0..metadata_count {
            let key = reader.string("a metadata key")?;
            let value_type = reader.u32(&format!("the type of metadata `{key}`"))?;
            let value = reader.value(value_type, &key, 0)?;
            metadata.insert(key, value);
        }
        let mut tensors = Vec::with_capacity(tensor_count);
        for _ in 0..tensor_count {
            let name = reader.string("a tensor name")?;
            let what = format!("tensor info of `{name}`");
            let rank = reader.u32(&what)? as usize;
            if rank > 4 {
                return Err(ModelError::tensor(
                    path,
                    &name,
                    format!("corrupt GGUF: {rank} dimensions"),
                ));
            }
            let dims = (0..rank)
                .map(|_| reader.u64(&what))
                .collect::<Result<Vec<_>, _>>()?;
            let ggml_type = reader.u32(&what)?;
            let offset = reader.u64(&what)?;
            tensors.push(TensorInfo {
                name,
                dims,
                ggml_type,
                offset,
            });
        }
        let alignment = metadata
            .get("general.alignment")
            .and_then(MetadataValue::as_u64)
            .unwrap_or(32)
            .max(1) as usize;
        let data_start = reader.position.div_ceil(alignment) * alignment;
        Ok(GgufFile {
            version,
            metadata,
            tensors,
            data_start,
            bytes,
            path: path.to_path_buf(),
        })
    }

    pub fn get(&self, key: &str) -> Option<&MetadataValue> {
        self.metadata.get(key)
    }

    /// The tensor's values as f32 in row-major order of [`TensorInfo::shape`].
    pub fn tensor_f32(&self, info: &TensorInfo) -> Result<Vec<f32>, ModelError> {
        let ggml_type = GgmlType::from_id(info.ggml_type)
            .map_err(|message| ModelError::tensor(&self.path, &info.name, message))?;
        let count = info.element_count();
        let (block_values, block_bytes) = ggml_type.block();
        if !count.is_multiple_of(block_values) {
            return Err(ModelError::tensor(
                &self.path,
                &info.name,
                format!("{count} values is not a whole number of {block_values}-value blocks"),
            ));
        }
        let size = count / block_values * block_bytes;
        let start = self.data_start as u64 + info.offset;
        let end = start.checked_add(size).filter(|&end| end <= self.bytes.len() as u64).ok_or_else(|| {
            ModelError::tensor(
                &self.path,
                &info.name,
                format!(
                    "truncated GGUF: the tensor's data needs bytes {start}..{} but the file has {} bytes",
                    start.saturating_add(size),
                    self.bytes.len()
                ),
            )
        })?;
        Ok(dequantize(
            ggml_type,
            &self.bytes[start as usize..end as usize],
            count as usize,
        ))
    }
}

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

/// Pre-tokenizer of a GGUF `tokenizer.ggml.pre` name (llama.cpp's list), as HF tokenizer.json JSON.
fn pre_tokenizer(pre: &str) -> Result<Value, String> {
    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    Ok(match pre {
        "default" | "gpt2" | "gpt-2" => byte_level(true),
        // llama.cpp: "\\p{N}" then the GPT-2 regex == HF Digits(individual) + ByteLevel.
        "smollm" | "starcoder" | "refact" | "codeshell" => json!({
            "type": "Sequence",
            "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level(true)],
        }),
        "llama-bpe" | "llama3" => json!({
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"},
                 "behavior": "Isolated", "invert": false},
                byte_level(false),
            ],
        }),
        other => {
            return Err(format!(
                "tokenizer pre-tokenizer `{other}` (tokenizer.ggml.pre) is not supported (gpt2, smollm, starcoder, llama-bpe are)"
            ));
        }
    })
}

/// `tokenizer.json` and `tokenizer_config.json` rebuilt from a GPT-2 style (`tokenizer.ggml.model =
/// gpt2`) vocabulary. Errors say why no tokenizer could be built (the weights are still converted).
pub fn tokenizer_json(gguf: &GgufFile) -> Result<(Value, Value), String> {
    let model = gguf
        .get("tokenizer.ggml.model")
        .and_then(MetadataValue::as_str)
        .unwrap_or("(missing)");
    if model != "gpt2" {
        return Err(format!(
            "tokenizer model `{model}` (tokenizer.ggml.model) is not supported; only GPT-2 style byte-level BPE (`gpt2`) is"
        ));
    }
    let strings = |key: &str| -> Result<Vec<String>, String> {
        gguf.get(key)
            .and_then(MetadataValue::as_array)
            .ok_or_else(|| format!("missing `{key}`"))?
            .iter()
            .map(|item| {
                item.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| format!("`{key}` must hold strings"))
            })
            .collect()
    };
    let tokens = strings("tokenizer.ggml.tokens")?;
    let merges = strings("tokenizer.ggml.merges")?;
    let token_types: Vec<i64> = gguf
        .get("tokenizer.ggml.token_type")
        .and_then(MetadataValue::as_array)
        .map(|items| {
            items
                .iter()
                .map(|item| item.as_u64().map_or(1, |v| v as i64))
                .collect()
        })
        .unwrap_or_default();
    let pre = pre_tokenizer(
        gguf.get("tokenizer.ggml.pre")
            .and_then(MetadataValue::as_str)
            .unwrap_or("default"),
    )?;

    let mut vocab = serde_json::Map::new();
    for (id, token) in tokens.iter().enumerate() {
        vocab.insert(token.clone(), json!(id));
    }
    // Control (3) and user-defined (4) tokens are matched before BPE, as HF does with added tokens.
    let added: Vec<Value> = tokens
        .iter()
        .enumerate()
        .filter(|(id, _)| matches!(token_types.get(*id), Some(3) | Some(4)))
        .map(|(id, content)| {
            json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": token_types.get(id) == Some(&4), "special": token_types.get(id) == Some(&3)})
        })
        .collect();
    let token_of = |key: &str| {
        gguf.get(&format!("tokenizer.ggml.{key}"))
            .and_then(MetadataValue::as_u64)
            .and_then(|id| tokens.get(id as usize).cloned())
    };
    let add_bos = gguf
        .get("tokenizer.ggml.add_bos_token")
        .and_then(MetadataValue::as_bool)
        .unwrap_or(false);
    let bos = token_of("bos_token_id");
    let post_processor = match (&bos, add_bos) {
        (Some(bos), true) => {
            let bos_id = gguf
                .get("tokenizer.ggml.bos_token_id")
                .and_then(MetadataValue::as_u64)
                .unwrap_or(0);
            json!({
                "type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                         {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {bos.clone(): {"id": bos, "ids": [bos_id], "tokens": [bos]}},
            })
        }
        _ => {
            json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true})
        }
    };
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre,
        "post_processor": post_processor,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges,
        },
    });
    let mut tokenizer_config = serde_json::Map::new();
    tokenizer_config.insert("tokenizer_class".into(), json!("PreTrainedTokenizerFast"));
    tokenizer_config.insert("add_bos_token".into(), json!(add_bos));
    tokenizer_config.insert("clean_up_tokenization_spaces".into(), json!(false));
    for (field, key) in [
        ("bos_token", "bos_token_id"),
        ("eos_token", "eos_token_id"),
        ("unk_token", "unknown_token_id"),
        ("pad_token", "padding_token_id"),
    ] {
        if let Some(token) = token_of(key) {
            tokenizer_config.insert(field.into(), json!(token));
        }
    }
    if let Some(template) = gguf
        .get("tokenizer.chat_template")
        .and_then(MetadataValue::as_str)
    {
        tokenizer_config.insert("chat_template".into(), json!(template));
    }
    Ok((tokenizer, Value::Object(tokenizer_config)))
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
