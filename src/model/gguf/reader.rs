//! Reading a GGUF file: the header (metadata key/values, tensor infos) and the tensors, dequantised
//! to f32 (F32, F16, BF16, F64, Q8_0, Q4_0, Q4_1).

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;

use crate::model::ModelError;

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
    /// The product of the dims, saturating: a corrupt dim makes it huge (and the tensor's data
    /// "truncated"), never an overflow.
    pub fn element_count(&self) -> u64 {
        self.dims
            .iter()
            .fold(1u64, |count, &dim| count.saturating_mul(dim))
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
    pub(super) path: std::path::PathBuf,
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
            .unwrap_or(32);
        if alignment == 0 || alignment > 1 << 20 {
            return Err(ModelError::weights(
                path,
                format!(
                    "corrupt GGUF: general.alignment = {alignment} (GGUF files align tensor data to a few bytes, 32 by default)"
                ),
            ));
        }
        let alignment = alignment as usize;
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
        let size = (count / block_values).saturating_mul(block_bytes);
        let start = (self.data_start as u64).saturating_add(info.offset);
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
