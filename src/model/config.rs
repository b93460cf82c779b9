//! [`LlamaConfig`]: the Hugging Face `config.json` of a LLaMA model, plus per-layer widths.
//!
//! Hugging Face's `LlamaConfig` has one `num_attention_heads` / `num_key_value_heads` /
//! `intermediate_size` for all layers. A pruned model may keep different widths per layer, so this
//! config carries an optional [`LayerWidths`] list. On disk:
//! - all layers agree → a stock `LlamaForCausalLM` config (transformers loads it as is);
//! - layers differ → the stock fields hold the largest width, `sheared_layer_widths` lists every
//!   layer, `architectures = ["ShearedLlamaForCausalLM"]` and `auto_map` points at
//!   `modeling_sheared_llama.py` (written next to it by [`save_hf`](super::save_hf)), so
//!   `AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)` builds each layer at its
//!   own width (docs/model.md).

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::ModelError;

/// Widths of one decoder layer. `num_attention_heads == 0` means the layer has no attention block
/// (all heads pruned: the sub-block is the identity); `intermediate_size == 0` likewise for the MLP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerWidths {
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub intermediate_size: usize,
}

/// RoPE frequency scaling variants from transformers' `rope_scaling` / `rope_parameters`.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// `inv_freq / factor` (positions interpolated linearly).
    Linear { factor: f64 },
    /// LLaMA-3.1's piecewise scaling of the low frequencies.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    },
}

/// A LLaMA architecture. Field names and defaults follow transformers' `LlamaConfig`.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    /// Intermediate (SwiGLU) width; with [`layer_widths`](Self::layer_widths) the largest layer's.
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    /// Query heads; with [`layer_widths`](Self::layer_widths) the largest layer's.
    pub num_attention_heads: usize,
    /// Key/value heads (GQA groups); with [`layer_widths`](Self::layer_widths) the largest layer's.
    pub num_key_value_heads: usize,
    /// Per-head width. Explicit because a pruned model need not have `hidden = heads × head_dim`.
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    /// `true`: the LM head reuses `embed_tokens.weight` (no `lm_head.weight` tensor).
    pub tie_word_embeddings: bool,
    pub max_position_embeddings: usize,
    pub bos_token_id: Option<u32>,
    /// One id or several (LLaMA-3 lists several).
    pub eos_token_id: Vec<u32>,
    pub pad_token_id: Option<u32>,
    /// Standard deviation of the normal init of every weight matrix (HF `_init_weights`).
    pub initializer_range: f64,
    /// Per-layer widths when layers differ; `None` when every layer has the stock widths above.
    pub layer_widths: Option<Vec<LayerWidths>>,
}

/// Parameter counts. `embedding` is `embed_tokens` plus an untied `lm_head`; `non_embedding` is
/// everything else (attention, MLP, norms) — the quantity pruning targets are stated in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParameterCounts {
    pub total: u64,
    pub embedding: u64,
    pub non_embedding: u64,
}

/// Architectures we accept in `config.json`'s `architectures`.
const ACCEPTED_ARCHITECTURES: &[&str] = &["LlamaForCausalLM", "ShearedLlamaForCausalLM"];

impl LlamaConfig {
    /// A config with transformers' defaults for everything but the sizes.
    pub fn new(
        vocab_size: usize,
        hidden_size: usize,
        intermediate_size: usize,
        num_hidden_layers: usize,
        num_attention_heads: usize,
        num_key_value_heads: usize,
    ) -> Self {
        LlamaConfig {
            vocab_size,
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim: hidden_size / num_attention_heads.max(1),
            rms_norm_eps: 1e-6,
            rope_theta: 10000.0,
            rope_scaling: None,
            tie_word_embeddings: false,
            max_position_embeddings: 2048,
            bos_token_id: Some(1),
            eos_token_id: vec![2],
            pad_token_id: None,
            initializer_range: 0.02,
            layer_widths: None,
        }
    }

    /// The widths of layer `index` (the stock widths unless per-layer widths are set).
    pub fn layer(&self, index: usize) -> LayerWidths {
        match &self.layer_widths {
            Some(widths) => widths.get(index).copied().unwrap_or(self.stock_widths()),
            None => self.stock_widths(),
        }
    }

    fn stock_widths(&self) -> LayerWidths {
        LayerWidths {
            num_attention_heads: self.num_attention_heads,
            num_key_value_heads: self.num_key_value_heads,
            intermediate_size: self.intermediate_size,
        }
    }

    /// Widths of every layer.
    pub fn all_layer_widths(&self) -> Vec<LayerWidths> {
        (0..self.num_hidden_layers)
            .map(|index| self.layer(index))
            .collect()
    }

    /// Set per-layer widths; collapses to a stock config (`layer_widths = None`) when all agree, and
    /// sets the stock fields to the largest widths otherwise.
    pub fn set_layer_widths(&mut self, widths: Vec<LayerWidths>) {
        self.num_hidden_layers = widths.len();
        if let Some(first) = widths.first().copied() {
            if widths.iter().all(|layer| *layer == first) {
                self.num_attention_heads = first.num_attention_heads;
                self.num_key_value_heads = first.num_key_value_heads;
                self.intermediate_size = first.intermediate_size;
                self.layer_widths = None;
                return;
            }
            self.num_attention_heads = widths
                .iter()
                .map(|l| l.num_attention_heads)
                .max()
                .unwrap_or(0);
            self.num_key_value_heads = widths
                .iter()
                .map(|l| l.num_key_value_heads)
                .max()
                .unwrap_or(0);
            self.intermediate_size = widths
                .iter()
                .map(|l| l.intermediate_size)
                .max()
                .unwrap_or(0);
            self.layer_widths = Some(widths);
        } else {
            self.layer_widths = None;
        }
    }

    /// Checks the invariants the model relies on. `origin` names the file in error messages.
    pub fn validate(&self, origin: &Path) -> Result<(), ModelError> {
        let fail = |message: String| Err(ModelError::config(origin, message));
        for (name, value) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("head_dim", self.head_dim),
        ] {
            if value == 0 {
                return fail(format!("`{name}` must be positive"));
            }
        }
        if !self.head_dim.is_multiple_of(2) {
            return fail(format!(
                "`head_dim` = {} must be even (RoPE rotates pairs of dimensions)",
                self.head_dim
            ));
        }
        if self.rms_norm_eps.is_nan()
            || self.rms_norm_eps <= 0.0
            || self.rope_theta.is_nan()
            || self.rope_theta <= 0.0
        {
            return fail("`rms_norm_eps` and `rope_theta` must be positive".into());
        }
        if let Some(widths) = &self.layer_widths
            && widths.len() != self.num_hidden_layers
        {
            return fail(format!(
                "`sheared_layer_widths` has {} entries but `num_hidden_layers` = {}",
                widths.len(),
                self.num_hidden_layers
            ));
        }
        for (index, layer) in self.all_layer_widths().iter().enumerate() {
            let heads = layer.num_attention_heads;
            let kv_heads = layer.num_key_value_heads;
            if (heads == 0) != (kv_heads == 0) || (kv_heads > 0 && heads % kv_heads != 0) {
                return fail(format!(
                    "layer {index}: {heads} attention heads cannot be split into {kv_heads} key/value groups \
                     (num_attention_heads must be a multiple of num_key_value_heads)"
                ));
            }
        }
        Ok(())
    }

    /// Parameter counts of a model with this config (tied embeddings counted once).
    pub fn parameter_counts(&self) -> ParameterCounts {
        let hidden = self.hidden_size as u64;
        let head_dim = self.head_dim as u64;
        let mut non_embedding = hidden; // final norm
        for layer in self.all_layer_widths() {
            let query = layer.num_attention_heads as u64 * head_dim;
            let key_value = layer.num_key_value_heads as u64 * head_dim;
            non_embedding += 2 * hidden; // input_layernorm, post_attention_layernorm
            non_embedding += hidden * query * 2 + hidden * key_value * 2; // q, o, k, v
            non_embedding += 3 * hidden * layer.intermediate_size as u64; // gate, up, down
        }
        let embedding =
            self.vocab_size as u64 * hidden * if self.tie_word_embeddings { 1 } else { 2 };
        ParameterCounts {
            total: embedding + non_embedding,
            embedding,
            non_embedding,
        }
    }

    /// Parameters one key/value group of layer `index` owns: its `H/G` query heads' rows of `q_proj`
    /// and columns of `o_proj`, plus its head of `k_proj` and `v_proj` (`head_z` masks whole groups;
    /// for multi-head attention this is the spec's `params_per_head = 4·d·d_h`).
    pub fn attention_parameters_per_group(&self, index: usize) -> u64 {
        let layer = self.layer(index);
        if layer.num_key_value_heads == 0 {
            return 0;
        }
        let queries_per_group = (layer.num_attention_heads / layer.num_key_value_heads) as u64;
        let per_head = self.hidden_size as u64 * self.head_dim as u64;
        2 * per_head * queries_per_group + 2 * per_head
    }

    /// Read a Hugging Face `config.json`.
    pub fn load(path: &Path) -> Result<Self, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|error| ModelError::io(path, error))?;
        let value: Value = serde_json::from_str(&text)
            .map_err(|error| ModelError::config(path, format!("not valid JSON: {error}")))?;
        Self::from_json(&value, path)
    }

    /// Write `config.json` (see the module docs for the per-layer format).
    pub fn save(&self, path: &Path) -> Result<(), ModelError> {
        let text = serde_json::to_string_pretty(&self.to_json())
            .map_err(|error| ModelError::Invalid(error.to_string()))?;
        std::fs::write(path, text + "\n").map_err(|error| ModelError::io(path, error))
    }

    /// Parse a config.json value. `origin` names the file in errors.
    pub fn from_json(value: &Value, origin: &Path) -> Result<Self, ModelError> {
        let object = value
            .as_object()
            .ok_or_else(|| ModelError::config(origin, "config.json must be a JSON object"))?;
        let fail = |message: String| ModelError::config(origin, message);

        if let Some(model_type) = object.get("model_type").and_then(Value::as_str)
            && model_type != "llama"
        {
            return Err(fail(format!(
                "unsupported architecture: `model_type` is \"{model_type}\"; sheared implements \"llama\" (LlamaForCausalLM) only"
            )));
        }
        if let Some(architectures) = object.get("architectures").and_then(Value::as_array) {
            let names: Vec<&str> = architectures.iter().filter_map(Value::as_str).collect();
            if !names.is_empty()
                && !names
                    .iter()
                    .any(|name| ACCEPTED_ARCHITECTURES.contains(name))
            {
                return Err(fail(format!(
                    "unsupported architecture {names:?}; sheared implements LlamaForCausalLM only"
                )));
            }
        }
        if let Some(activation) = object.get("hidden_act").and_then(Value::as_str)
            && activation != "silu"
        {
            return Err(fail(format!(
                "unsupported `hidden_act` \"{activation}\"; LLaMA uses \"silu\""
            )));
        }
        for key in ["attention_bias", "mlp_bias"] {
            if object.get(key).and_then(Value::as_bool) == Some(true) {
                return Err(fail(format!(
                    "`{key}` = true is not supported (LLaMA has no biases)"
                )));
            }
        }

        let usize_key = |key: &str| -> Result<Option<usize>, ModelError> {
            match object.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(value) => value
                    .as_u64()
                    .map(|number| Some(number as usize))
                    .ok_or_else(|| {
                        fail(format!(
                            "`{key}` must be a non-negative integer, found {value}"
                        ))
                    }),
            }
        };
        let required = |key: &str| -> Result<usize, ModelError> {
            usize_key(key)?.ok_or_else(|| fail(format!("missing required key `{key}`")))
        };
        let float_key = |key: &str| -> Result<Option<f64>, ModelError> {
            match object.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(value) => value
                    .as_f64()
                    .map(Some)
                    .ok_or_else(|| fail(format!("`{key}` must be a number, found {value}"))),
            }
        };
        let token_id = |key: &str| -> Result<Vec<u32>, ModelError> {
            match object.get(key) {
                None | Some(Value::Null) => Ok(Vec::new()),
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|item| {
                        item.as_u64()
                            .map(|id| id as u32)
                            .ok_or_else(|| fail(format!("`{key}` entries must be integers")))
                    })
                    .collect(),
                Some(value) => value.as_u64().map(|id| vec![id as u32]).ok_or_else(|| {
                    fail(format!(
                        "`{key}` must be an integer or a list of integers, found {value}"
                    ))
                }),
            }
        };

        let hidden_size = required("hidden_size")?;
        let num_attention_heads = required("num_attention_heads")?;
        let head_dim = match usize_key("head_dim")? {
            Some(head_dim) => head_dim,
            None if num_attention_heads > 0 => hidden_size / num_attention_heads,
            None => {
                return Err(fail(
                    "missing `head_dim` (needed when `num_attention_heads` is 0)".into(),
                ));
            }
        };
        let (rope_theta, rope_scaling) = parse_rope(object, origin)?;
        let mut config = LlamaConfig {
            vocab_size: required("vocab_size")?,
            hidden_size,
            intermediate_size: required("intermediate_size")?,
            num_hidden_layers: required("num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads: usize_key("num_key_value_heads")?.unwrap_or(num_attention_heads),
            head_dim,
            rms_norm_eps: float_key("rms_norm_eps")?.unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            tie_word_embeddings: object
                .get("tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            max_position_embeddings: usize_key("max_position_embeddings")?.unwrap_or(2048),
            bos_token_id: token_id("bos_token_id")?.first().copied(),
            eos_token_id: token_id("eos_token_id")?,
            pad_token_id: token_id("pad_token_id")?.first().copied(),
            initializer_range: float_key("initializer_range")?.unwrap_or(0.02),
            layer_widths: None,
        };
        if let Some(widths) = object
            .get("sheared_layer_widths")
            .filter(|value| !value.is_null())
        {
            let widths: Vec<LayerWidths> = serde_json::from_value(widths.clone()).map_err(|error| {
                fail(format!(
                    "`sheared_layer_widths` must be a list of {{num_attention_heads, num_key_value_heads, intermediate_size}}: {error}"
                ))
            })?;
            if widths.len() != config.num_hidden_layers {
                return Err(fail(format!(
                    "`sheared_layer_widths` has {} entries but `num_hidden_layers` = {}",
                    widths.len(),
                    config.num_hidden_layers
                )));
            }
            config.set_layer_widths(widths);
        }
        config.validate(origin)?;
        Ok(config)
    }

    /// The config.json object. Stock LlamaForCausalLM keys; per-layer extras only when layers differ.
    pub fn to_json(&self) -> Value {
        let mut object = Map::new();
        let architecture = if self.layer_widths.is_some() {
            "ShearedLlamaForCausalLM"
        } else {
            "LlamaForCausalLM"
        };
        object.insert("architectures".into(), json!([architecture]));
        object.insert("model_type".into(), json!("llama"));
        object.insert("attention_bias".into(), json!(false));
        object.insert("attention_dropout".into(), json!(0.0));
        object.insert("bos_token_id".into(), json!(self.bos_token_id));
        let eos = match self.eos_token_id.as_slice() {
            [] => Value::Null,
            [single] => json!(single),
            many => json!(many),
        };
        object.insert("eos_token_id".into(), eos);
        if let Some(pad) = self.pad_token_id {
            object.insert("pad_token_id".into(), json!(pad));
        }
        object.insert("head_dim".into(), json!(self.head_dim));
        object.insert("hidden_act".into(), json!("silu"));
        object.insert("hidden_size".into(), json!(self.hidden_size));
        object.insert("initializer_range".into(), json!(self.initializer_range));
        object.insert("intermediate_size".into(), json!(self.intermediate_size));
        object.insert(
            "max_position_embeddings".into(),
            json!(self.max_position_embeddings),
        );
        object.insert("mlp_bias".into(), json!(false));
        object.insert(
            "num_attention_heads".into(),
            json!(self.num_attention_heads),
        );
        object.insert("num_hidden_layers".into(), json!(self.num_hidden_layers));
        object.insert(
            "num_key_value_heads".into(),
            json!(self.num_key_value_heads),
        );
        object.insert("pretraining_tp".into(), json!(1));
        object.insert("rms_norm_eps".into(), json!(self.rms_norm_eps));
        let rope_scaling = match &self.rope_scaling {
            None => Value::Null,
            Some(RopeScaling::Linear { factor }) => {
                json!({ "rope_type": "linear", "factor": factor })
            }
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => json!({
                "rope_type": "llama3",
                "factor": factor,
                "low_freq_factor": low_freq_factor,
                "high_freq_factor": high_freq_factor,
                "original_max_position_embeddings": original_max_position_embeddings,
            }),
        };
        object.insert("rope_scaling".into(), rope_scaling);
        object.insert("rope_theta".into(), json!(self.rope_theta));
        object.insert(
            "tie_word_embeddings".into(),
            json!(self.tie_word_embeddings),
        );
        object.insert("torch_dtype".into(), json!("float32"));
        object.insert("use_cache".into(), json!(true));
        object.insert("vocab_size".into(), json!(self.vocab_size));
        if let Some(widths) = &self.layer_widths {
            object.insert("sheared_layer_widths".into(), json!(widths));
            object.insert(
                "auto_map".into(),
                json!({ "AutoModelForCausalLM": "modeling_sheared_llama.ShearedLlamaForCausalLM" }),
            );
        }
        Value::Object(object)
    }
}

/// RoPE settings from either transformers 4's `rope_theta` + `rope_scaling` or transformers 5's
/// `rope_parameters`. Unsupported scaling types are errors that name the type.
fn parse_rope(
    object: &Map<String, Value>,
    origin: &Path,
) -> Result<(f64, Option<RopeScaling>), ModelError> {
    let fail = |message: String| ModelError::config(origin, message);
    let parameters = object.get("rope_parameters").and_then(Value::as_object);
    let theta = object
        .get("rope_theta")
        .and_then(Value::as_f64)
        .or_else(|| {
            parameters
                .and_then(|p| p.get("rope_theta"))
                .and_then(Value::as_f64)
        })
        .unwrap_or(10000.0);
    let (key, scaling) = match object.get("rope_scaling").and_then(Value::as_object) {
        Some(scaling) => ("rope_scaling", Some(scaling)),
        None => ("rope_parameters", parameters),
    };
    let Some(scaling) = scaling else {
        return Ok((theta, None));
    };
    let kind = scaling
        .get("rope_type")
        .or_else(|| scaling.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let number = |field: &str| -> Result<f64, ModelError> {
        scaling.get(field).and_then(Value::as_f64).ok_or_else(|| {
            fail(format!(
                "`{key}.{field}` is required for rope type \"{kind}\""
            ))
        })
    };
    let scaling = match kind {
        "default" => None,
        "linear" => Some(RopeScaling::Linear {
            factor: number("factor")?,
        }),
        "llama3" => Some(RopeScaling::Llama3 {
            factor: number("factor")?,
            low_freq_factor: number("low_freq_factor")?,
            high_freq_factor: number("high_freq_factor")?,
            original_max_position_embeddings: number("original_max_position_embeddings")? as usize,
        }),
        other => {
            return Err(fail(format!(
                "unsupported rope scaling type \"{other}\" in `{key}`; sheared implements \"default\", \"linear\" and \"llama3\""
            )));
        }
    };
    Ok((theta, scaling))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin() -> &'static Path {
        Path::new("config.json")
    }

    #[test]
    fn stock_config_round_trips() {
        let mut config = LlamaConfig::new(64, 32, 48, 2, 4, 2);
        config.head_dim = 12;
        config.tie_word_embeddings = true;
        let back = LlamaConfig::from_json(&config.to_json(), origin()).unwrap();
        assert_eq!(back, config);
        assert!(config.to_json().get("sheared_layer_widths").is_none());
    }

    #[test]
    fn per_layer_widths_round_trip_and_collapse() {
        let mut config = LlamaConfig::new(64, 32, 48, 2, 4, 2);
        let a = LayerWidths {
            num_attention_heads: 4,
            num_key_value_heads: 2,
            intermediate_size: 48,
        };
        let b = LayerWidths {
            num_attention_heads: 2,
            num_key_value_heads: 1,
            intermediate_size: 20,
        };
        config.set_layer_widths(vec![a, b]);
        assert_eq!(config.layer(1), b);
        let json = config.to_json();
        assert_eq!(json["architectures"][0], "ShearedLlamaForCausalLM");
        assert_eq!(LlamaConfig::from_json(&json, origin()).unwrap(), config);
        config.set_layer_widths(vec![b, b]);
        assert_eq!(config.layer_widths, None);
        assert_eq!(config.num_attention_heads, 2);
    }

    #[test]
    fn rejects_unsupported_things_by_name() {
        let mut json = LlamaConfig::new(64, 32, 48, 2, 4, 2).to_json();
        json["rope_scaling"] = serde_json::json!({"rope_type": "yarn", "factor": 4.0});
        let message = LlamaConfig::from_json(&json, origin())
            .unwrap_err()
            .to_string();
        assert!(message.contains("\"yarn\""), "{message}");
        let mut json = LlamaConfig::new(64, 32, 48, 2, 4, 2).to_json();
        json["model_type"] = serde_json::json!("mistral");
        let message = LlamaConfig::from_json(&json, origin())
            .unwrap_err()
            .to_string();
        assert!(message.contains("mistral"), "{message}");
        let mut json = LlamaConfig::new(64, 32, 48, 2, 4, 3).to_json();
        json["num_key_value_heads"] = serde_json::json!(3);
        assert!(LlamaConfig::from_json(&json, origin()).is_err());
    }

    #[test]
    fn reads_transformers_5_rope_parameters() {
        let mut json = LlamaConfig::new(64, 32, 48, 2, 4, 2).to_json();
        let object = json.as_object_mut().unwrap();
        object.remove("rope_theta");
        object.remove("rope_scaling");
        object.insert(
            "rope_parameters".into(),
            serde_json::json!({"rope_type": "default", "rope_theta": 500000.0}),
        );
        let config = LlamaConfig::from_json(&json, origin()).unwrap();
        assert_eq!(config.rope_theta, 500000.0);
        assert_eq!(config.rope_scaling, None);
    }

    #[test]
    fn counts_llama2_7b() {
        let mut config = LlamaConfig::new(32000, 4096, 11008, 32, 32, 32);
        config.head_dim = 128;
        let counts = config.parameter_counts();
        // LLaMA2-7B: 6,738,415,616 parameters with untied embeddings.
        assert_eq!(counts.total, 6_738_415_616);
        assert_eq!(counts.embedding, 2 * 32000 * 4096);
    }
}
