//! LLaMA as transformers' `LlamaForCausalLM` computes it, with the pruning masks of Sheared LLaMA.
//!
//! Plain forward (`masks = None`): embedding → per layer `x += attn(rmsnorm(x))`, `x += mlp(rmsnorm(x))`
//! → final RMSNorm → LM head. RoPE is HF's `rotate_half` layout, so HF weights load without any q/k
//! permutation. Attention uses burn's `attention` op (causal), GQA by repeating key/value heads.
//!
//! Masked forward (where each mask multiplies: docs/model.md, "Masks"), each mask optional:
//! - `head_z[l]` multiplies the per-head attention context before `o_proj` (see [`Masks`] for GQA);
//! - `layer_z[l]` multiplies both block outputs of layer `l` (the `layer` mask is shared by the
//!   attention and MLP sub-blocks);
//! - `hidden_z` multiplies both block outputs and the output of every RMSNorm, whose variance is then
//!   taken over the kept (non-zero) dims only; the token embedding is *not* masked, as in the
//!   reference training forward;
//! - `intermediate_z[l]` multiplies the `up_proj` output.

use burn::module::{Module, Param};
use burn::nn::{Embedding, EmbeddingConfig, Initializer, Linear, LinearConfig};
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};

use super::ModelError;
use super::config::{LayerWidths, LlamaConfig, RopeScaling};
use super::fused::{causal_softmax, rope, silu};
use super::precision::Precision;

/// Pruning masks for one forward pass. Every mask is optional; absent masks cost nothing.
///
/// Shapes (L layers, d hidden, I intermediate, G key/value groups per layer):
/// - `layer_z: [L]`
/// - `head_z: [L, G]` where G = `num_key_value_heads` — **one mask value per key/value group**.
///   For multi-head attention (LLaMA-2, G = H) this is the usual per-head mask `[L, H]`.
///   For grouped-query attention the value of group g multiplies the context of each of the
///   `H / G` query heads that share its key/value head. Why whole groups and not query heads within
///   groups: (1) slicing a masked group removes its query heads *and* its k/v head, so the pruned
///   model keeps `num_attention_heads / num_key_value_heads` uniform in every layer, which is what
///   transformers' `LlamaAttention` requires — query-head pruning would leave groups of unequal size
///   that no stock config can express; (2) a group is the unit that owns k/v parameters and the KV
///   cache, so it is the unit whose removal saves memory at inference; (3) for MHA the two choices
///   coincide, so LLaMA-2 results are unchanged. The price is coarser granularity for GQA models
///   (SmolLM2-135M has 3 groups of 3 heads per layer). Parameters per group:
///   [`LlamaConfig::attention_parameters_per_group`].
/// - `intermediate_z: [L, I]`
/// - `hidden_z: [d]`
///
/// For models with per-layer widths, layer `l` uses the first `G_l` / `I_l` entries of its row.
#[derive(Debug, Clone, Default)]
pub struct Masks {
    pub layer_z: Option<Tensor<1>>,
    pub head_z: Option<Tensor<2>>,
    pub intermediate_z: Option<Tensor<2>>,
    pub hidden_z: Option<Tensor<1>>,
}

impl Masks {
    /// Check the mask shapes against a model config (call once before training, not per step).
    pub fn check(&self, config: &LlamaConfig) -> Result<(), ModelError> {
        let layers = config.num_hidden_layers;
        let widths = config.all_layer_widths();
        let groups = widths
            .iter()
            .map(|w| w.num_key_value_heads)
            .max()
            .unwrap_or(0);
        let intermediate = widths
            .iter()
            .map(|w| w.intermediate_size)
            .max()
            .unwrap_or(0);
        let mismatch = |name: &str, expected: Vec<usize>, found: Vec<usize>| {
            Err(ModelError::Invalid(format!(
                "mask `{name}` has shape {found:?}, the model needs {expected:?}"
            )))
        };
        if let Some(z) = &self.layer_z
            && z.dims() != [layers]
        {
            return mismatch("layer_z", vec![layers], z.dims().to_vec());
        }
        if let Some(z) = &self.head_z
            && z.dims() != [layers, groups]
        {
            return mismatch("head_z", vec![layers, groups], z.dims().to_vec());
        }
        if let Some(z) = &self.intermediate_z
            && z.dims() != [layers, intermediate]
        {
            return mismatch(
                "intermediate_z",
                vec![layers, intermediate],
                z.dims().to_vec(),
            );
        }
        if let Some(z) = &self.hidden_z
            && z.dims() != [config.hidden_size]
        {
            return mismatch("hidden_z", vec![config.hidden_size], z.dims().to_vec());
        }
        Ok(())
    }
}

/// The hidden mask prepared once per forward: `z` shaped for broadcasting and the kept-dims
/// indicator the masked RMSNorm averages over.
pub(super) struct HiddenMask {
    /// `[1, 1, d]`
    z: Tensor<3>,
    /// `[1, 1, d]`, 1.0 where `z != 0` (no gradient: the kept set is a step function of z).
    keep: Tensor<3>,
    /// `[1, 1, 1]`, number of kept dims.
    kept_count: Tensor<3>,
}

impl HiddenMask {
    pub(super) fn new(hidden_z: &Tensor<1>) -> Self {
        let z = hidden_z.clone().unsqueeze::<3>(); // [1, 1, d]
        let keep = z.clone().detach().not_equal_elem(0.0).float(); // [1, 1, d]
        let kept_count = keep.clone().sum_dim(2); // [1, 1, 1]
        HiddenMask {
            z,
            keep,
            kept_count,
        }
    }
}

/// Root-mean-square layer norm, HF `LlamaRMSNorm` (weight named `weight`, eps from the config).
#[derive(Module, Debug)]
pub struct RmsNorm {
    /// `[d]`
    pub weight: Param<Tensor<1>>,
    pub eps: f64,
}

impl RmsNorm {
    pub fn new(size: usize, eps: f64, device: &Device) -> Self {
        RmsNorm {
            weight: Param::from_tensor(Tensor::ones([size], device)),
            eps,
        }
    }

    /// `x: [batch, seq, d]` → `weight ⊙ x / sqrt(mean(x²) + eps)`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let variance = x.clone().square().mean_dim(2); // [batch, seq, 1]
        let normed = x * (variance.add_scalar(self.eps)).sqrt().recip(); // [batch, seq, d]
        normed * self.weight.val().unsqueeze::<3>()
    }

    /// Spec §1.3: variance over the kept dims only, output multiplied by `hidden_z`.
    fn forward_masked(&self, x: Tensor<3>, hidden: &HiddenMask) -> Tensor<3> {
        let squares = x.clone().square() * hidden.keep.clone(); // [batch, seq, d]
        let variance = squares.sum_dim(2) / hidden.kept_count.clone(); // [batch, seq, 1]
        let normed = x * (variance.add_scalar(self.eps)).sqrt().recip(); // [batch, seq, d]
        normed * self.weight.val().unsqueeze::<3>() * hidden.z.clone()
    }

    fn forward_maybe_masked(&self, x: Tensor<3>, hidden: Option<&HiddenMask>) -> Tensor<3> {
        match hidden {
            Some(hidden) => self.forward_masked(x, hidden),
            None => self.forward(x),
        }
    }
}

/// Rotary position tables for one sequence length: `cos`, `sin` each `[1, 1, seq, head_dim]`.
pub struct Rope {
    cos: Tensor<4>,
    sin: Tensor<4>,
}

impl Rope {
    /// HF `LlamaRotaryEmbedding`: `inv_freq = 1 / theta^(2i/head_dim)` in f32 (optionally scaled),
    /// angles `position · inv_freq`, duplicated to `[θ_0..θ_{h/2}, θ_0..θ_{h/2}]` (rotate_half layout).
    pub fn new(
        head_dim: usize,
        theta: f64,
        scaling: Option<&RopeScaling>,
        seq_len: usize,
        device: &Device,
    ) -> Self {
        let half = head_dim / 2;
        let mut inv_freq: Vec<f32> = (0..half)
            .map(|i| 1.0 / (theta as f32).powf((2 * i) as f32 / head_dim as f32))
            .collect();
        match scaling {
            None => {}
            Some(RopeScaling::Linear { factor }) => {
                inv_freq.iter_mut().for_each(|f| *f /= *factor as f32)
            }
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => {
                let context = *original_max_position_embeddings as f64;
                let low_freq_wavelen = context / low_freq_factor;
                let high_freq_wavelen = context / high_freq_factor;
                for f in inv_freq.iter_mut() {
                    let wavelen = 2.0 * std::f64::consts::PI / *f as f64;
                    let scaled = if wavelen > low_freq_wavelen {
                        *f as f64 / factor
                    } else {
                        *f as f64
                    };
                    let medium = wavelen >= high_freq_wavelen && wavelen <= low_freq_wavelen;
                    *f = if medium {
                        let smooth = (context / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        ((1.0 - smooth) * scaled / factor + smooth * scaled) as f32
                    } else {
                        scaled as f32
                    };
                }
            }
        }
        let mut cos = Vec::with_capacity(seq_len * head_dim);
        let mut sin = Vec::with_capacity(seq_len * head_dim);
        for position in 0..seq_len {
            for i in 0..head_dim {
                let angle = position as f32 * inv_freq[i % half];
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        let shape = [1, 1, seq_len, head_dim];
        Rope {
            cos: Tensor::from_data(TensorData::new(cos, shape), device),
            sin: Tensor::from_data(TensorData::new(sin, shape), device),
        }
    }

    /// The tables of positions `start..start + len` (for a continuation after `start` cached positions).
    pub(super) fn positions(self, start: usize, len: usize) -> Rope {
        Rope {
            cos: self.cos.narrow(2, start, len),
            sin: self.sin.narrow(2, start, len),
        }
    }

    /// `x: [batch, heads, seq, head_dim]` → `x·cos + rotate_half(x)·sin` (one fused node).
    pub(super) fn apply(&self, x: Tensor<4>) -> Tensor<4> {
        rope(x, self.cos.clone(), self.sin.clone()) // [batch, heads, seq, head_dim]
    }
}

/// Self-attention with grouped-query heads. The numbers of heads are read off the weight shapes
/// (`q_proj` is `[hidden, heads·head_dim]`), so slicing weights is all it takes to prune heads.
#[derive(Module, Debug)]
pub struct Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    pub head_dim: usize,
}

impl Attention {
    pub fn new(
        hidden: usize,
        widths: LayerWidths,
        head_dim: usize,
        init: &Initializer,
        device: &Device,
    ) -> Self {
        let query = widths.num_attention_heads * head_dim;
        let key_value = widths.num_key_value_heads * head_dim;
        Attention {
            q_proj: linear(hidden, query, init, device),
            k_proj: linear(hidden, key_value, init, device),
            v_proj: linear(hidden, key_value, init, device),
            o_proj: linear(query, hidden, init, device),
            head_dim,
        }
    }

    pub fn num_heads(&self) -> usize {
        self.q_proj.weight.dims()[1] / self.head_dim
    }

    pub fn num_key_value_heads(&self) -> usize {
        self.k_proj.weight.dims()[1] / self.head_dim
    }

    /// `x: [batch, seq, hidden]` → rotated queries `[batch, heads, seq, head_dim]`, rotated keys and
    /// values `[batch, groups, seq, head_dim]` (keys and values not yet repeated for GQA).
    pub(super) fn query_key_value(
        &self,
        x: Tensor<3>,
        rope: &Rope,
        precision: Precision,
    ) -> (Tensor<4>, Tensor<4>, Tensor<4>) {
        let [batch, seq, _] = x.dims();
        let head_dim = self.head_dim;
        let split = |t: Tensor<3>, n: usize| t.reshape([batch, seq, n, head_dim]).swap_dims(1, 2);
        let query = rope.apply(split(
            project(&self.q_proj, x.clone(), precision),
            self.num_heads(),
        )); // [batch, heads, seq, head_dim]
        let key = rope.apply(split(
            project(&self.k_proj, x.clone(), precision),
            self.num_key_value_heads(),
        )); // [batch, groups, seq, head_dim]
        let value = split(
            project(&self.v_proj, x, precision),
            self.num_key_value_heads(),
        ); // [batch, groups, seq, head_dim]
        (query, key, value)
    }

    /// `x: [batch, seq, hidden]` → queries, keys and values `[batch, heads, seq, head_dim]` as the
    /// attention reads them: rotated, and keys and values repeated to one per query head (GQA).
    pub(super) fn attention_inputs(
        &self,
        x: Tensor<3>,
        rope: &Rope,
        precision: Precision,
    ) -> (Tensor<4>, Tensor<4>, Tensor<4>) {
        let repeats = self.num_heads() / self.num_key_value_heads();
        let (query, key, value) = self.query_key_value(x, rope, precision);
        (
            query,
            repeat_kv(key, repeats),   // [batch, heads, seq, head_dim]
            repeat_kv(value, repeats), // [batch, heads, seq, head_dim]
        )
    }

    /// The attention's context `[batch, heads, seq, head_dim]`, `head_z: [groups]` → `o_proj`'s
    /// output `[batch, seq, hidden]`.
    pub(super) fn output(
        &self,
        mut context: Tensor<4>,
        head_z: Option<Tensor<1>>,
        precision: Precision,
    ) -> Tensor<3> {
        let [batch, heads, seq, head_dim] = context.dims();
        let groups = self.num_key_value_heads();
        if let Some(z) = head_z {
            let per_head = z
                .reshape([groups, 1])
                .expand([groups, heads / groups])
                .reshape([1, heads, 1, 1]); // group g's value for each of its query heads
            context = context * per_head;
        }
        let context = context
            .swap_dims(1, 2)
            .reshape([batch, seq, heads * head_dim]); // [batch, seq, heads·head_dim]
        project(&self.o_proj, context, precision)
    }
}

/// Causal attention over `[batch, heads, seq, head_dim]` queries, keys and values → context, same
/// shape. A checkpointed training step computes the same thing block by block
/// ([`super::blockwise_attention`]).
fn attend(query: Tensor<4>, key: Tensor<4>, value: Tensor<4>, precision: Precision) -> Tensor<4> {
    match precision {
        // burn's attention op in inference: fused where the backend has it (libtorch's SDPA).
        // Under autodiff burn runs it as a chain of elementwise ops; the spelled-out form with
        // one fused softmax node has far fewer passes over the scores, forward and backward.
        Precision::Fp32 if !query.is_autodiff() => {
            let options = AttentionModuleOptions {
                scale: None,
                softcap: None,
                is_causal: true,
            };
            attention(query, key, value, None, None, options) // [batch, heads, seq, head_dim]
        }
        _ => autocast_attention(query, key, value, precision),
    }
}

/// Causal attention as autocast runs it: both matrix products in the compute dtype, the softmax in
/// fp32 (in fp32 precision, simply causal attention). Spelled out (rather than burn's `attention`
/// op, which backends implement in different ways) so that every backend and autodiff compute the
/// same thing. All `[batch, heads, seq, head_dim]`, fp32 in and out.
pub(super) fn autocast_attention(
    query: Tensor<4>,
    key: Tensor<4>,
    value: Tensor<4>,
    precision: Precision,
) -> Tensor<4> {
    let [_, _, seq, head_dim] = query.dims();
    let scale = 1.0 / (head_dim as f64).sqrt();
    let scores = precision
        .to_compute(query)
        .matmul(precision.to_compute(key).swap_dims(2, 3)); // [batch, heads, seq, seq]
    let future = Tensor::<2, Bool>::tril_mask([seq, seq], 0, &scores.device()).unsqueeze::<4>(); // [1, 1, seq, seq]
    let weights = causal_softmax(precision.to_fp32(scores), future, scale); // [batch, heads, seq, seq]
    let context = precision
        .to_compute(weights)
        .matmul(precision.to_compute(value)); // [batch, heads, seq, head_dim]
    precision.to_fp32(context)
}

/// `[batch, groups, seq, head_dim]` → `[batch, groups·repeats, seq, head_dim]` (HF `repeat_kv` order:
/// query head h reads key/value group h / repeats).
pub(super) fn repeat_kv(x: Tensor<4>, repeats: usize) -> Tensor<4> {
    if repeats == 1 {
        return x;
    }
    let [batch, groups, seq, head_dim] = x.dims();
    x.unsqueeze_dim::<5>(2)
        .expand([batch, groups, repeats, seq, head_dim])
        .reshape([batch, groups * repeats, seq, head_dim])
}

/// SwiGLU MLP: `down(silu(gate(x)) ⊙ up(x))`.
#[derive(Module, Debug)]
pub struct Mlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

impl Mlp {
    pub fn new(hidden: usize, intermediate: usize, init: &Initializer, device: &Device) -> Self {
        Mlp {
            gate_proj: linear(hidden, intermediate, init, device),
            up_proj: linear(hidden, intermediate, init, device),
            down_proj: linear(intermediate, hidden, init, device),
        }
    }

    pub fn intermediate_size(&self) -> usize {
        self.up_proj.weight.dims()[1]
    }

    /// `x: [batch, seq, hidden]`, `intermediate_z: [intermediate]` → `[batch, seq, hidden]`.
    pub(super) fn forward(
        &self,
        x: Tensor<3>,
        intermediate_z: Option<Tensor<1>>,
        precision: Precision,
    ) -> Tensor<3> {
        let gate = silu(project(&self.gate_proj, x.clone(), precision)); // [batch, seq, intermediate]
        let mut up = project(&self.up_proj, x, precision); // [batch, seq, intermediate]
        if let Some(z) = intermediate_z {
            up = up * z.unsqueeze::<3>();
        }
        project(&self.down_proj, gate * up, precision)
    }
}

/// One pre-norm decoder block. `self_attn` / `mlp` are `None` when pruning removed every head /
/// every intermediate unit of this layer: that sub-block is then the identity (docs/pruning.md, `consolidate`).
#[derive(Module, Debug)]
pub struct DecoderLayer {
    pub input_layernorm: RmsNorm,
    pub self_attn: Option<Attention>,
    pub post_attention_layernorm: RmsNorm,
    pub mlp: Option<Mlp>,
}

/// One layer's slice of the [`Masks`].
#[derive(Default)]
pub(super) struct LayerMasks<'a> {
    layer_z: Option<Tensor<3>>, // [1, 1, 1]
    head_z: Option<Tensor<1>>,
    intermediate_z: Option<Tensor<1>>,
    hidden: Option<&'a HiddenMask>,
}

impl DecoderLayer {
    pub fn new(
        config: &LlamaConfig,
        widths: LayerWidths,
        init: &Initializer,
        device: &Device,
    ) -> Self {
        let hidden = config.hidden_size;
        DecoderLayer {
            input_layernorm: RmsNorm::new(hidden, config.rms_norm_eps, device),
            self_attn: (widths.num_attention_heads > 0)
                .then(|| Attention::new(hidden, widths, config.head_dim, init, device)),
            post_attention_layernorm: RmsNorm::new(hidden, config.rms_norm_eps, device),
            mlp: (widths.intermediate_size > 0)
                .then(|| Mlp::new(hidden, widths.intermediate_size, init, device)),
        }
    }

    pub(super) fn forward(
        &self,
        x: Tensor<3>,
        rope: &Rope,
        masks: LayerMasks<'_>,
        precision: Precision,
    ) -> Tensor<3> {
        let context = self
            .attention_inputs(x.clone(), rope, &masks, precision)
            .map(|(query, key, value)| attend(query, key, value, precision)); // [batch, heads, seq, head_dim]
        self.forward_from_context(x, context, masks, precision)
    }

    /// The layer's first part: `input_layernorm` and the attention's queries, keys and values
    /// `[batch, heads, seq, head_dim]` ([`Attention::attention_inputs`]) from its input `x: [batch,
    /// seq, hidden]`; `None` when the layer has no heads.
    pub(super) fn attention_inputs(
        &self,
        x: Tensor<3>,
        rope: &Rope,
        masks: &LayerMasks<'_>,
        precision: Precision,
    ) -> Option<(Tensor<4>, Tensor<4>, Tensor<4>)> {
        let attn = self.self_attn.as_ref()?;
        let normed = self.input_layernorm.forward_maybe_masked(x, masks.hidden); // [batch, seq, hidden]
        Some(attn.attention_inputs(normed, rope, precision))
    }

    /// The rest of the layer from its input `x: [batch, seq, hidden]` and the attention's
    /// `context: [batch, heads, seq, head_dim]` (`None` when the layer has no heads): `o_proj`, the
    /// residual, and the MLP sub-block → `[batch, seq, hidden]`.
    pub(super) fn forward_from_context(
        &self,
        mut x: Tensor<3>,
        context: Option<Tensor<4>>,
        masks: LayerMasks<'_>,
        precision: Precision,
    ) -> Tensor<3> {
        let scale_block = |mut out: Tensor<3>| {
            if let Some(z) = &masks.layer_z {
                out = out * z.clone();
            }
            if let Some(hidden) = masks.hidden {
                out = out * hidden.z.clone();
            }
            out
        };
        if let (Some(attn), Some(context)) = (&self.self_attn, context) {
            x = x + scale_block(attn.output(context, masks.head_z.clone(), precision));
        }
        if let Some(mlp) = &self.mlp {
            let normed = self
                .post_attention_layernorm
                .forward_maybe_masked(x.clone(), masks.hidden); // [batch, seq, hidden]
            x = x + scale_block(mlp.forward(normed, masks.intermediate_z.clone(), precision));
        }
        x
    }

    pub fn widths(&self) -> LayerWidths {
        LayerWidths {
            num_attention_heads: self.self_attn.as_ref().map_or(0, Attention::num_heads),
            num_key_value_heads: self
                .self_attn
                .as_ref()
                .map_or(0, Attention::num_key_value_heads),
            intermediate_size: self.mlp.as_ref().map_or(0, Mlp::intermediate_size),
        }
    }
}

/// `LlamaForCausalLM`. `lm_head = None` means tied embeddings (logits use `embed_tokens.weight`).
#[derive(Module, Debug)]
pub struct Llama {
    pub embed_tokens: Embedding,
    pub layers: Vec<DecoderLayer>,
    pub norm: RmsNorm,
    pub lm_head: Option<Linear>,
    /// Settings that are not widths (eps, RoPE, token ids, ...); widths are read off the weights.
    #[module(skip)]
    settings: LlamaConfig,
    /// What the matrix products compute in ([`Precision`]); never stored in weights files.
    #[module(skip)]
    precision: Precision,
}

impl Llama {
    /// A randomly initialised model: every weight matrix ~ Normal(0, `initializer_range`), norms 1
    /// (HF `_init_weights`). Seed with `device.seed(..)` first for reproducibility.
    pub fn new(config: &LlamaConfig, device: &Device) -> Self {
        let init = Initializer::Normal {
            mean: 0.0,
            std: config.initializer_range,
        };
        let embed_tokens = EmbeddingConfig::new(config.vocab_size, config.hidden_size)
            .with_initializer(init.clone())
            .init(device);
        let layers = (0..config.num_hidden_layers)
            .map(|index| DecoderLayer::new(config, config.layer(index), &init, device))
            .collect();
        let lm_head = (!config.tie_word_embeddings)
            .then(|| linear(config.hidden_size, config.vocab_size, &init, device));
        Llama {
            embed_tokens,
            layers,
            norm: RmsNorm::new(config.hidden_size, config.rms_norm_eps, device),
            lm_head,
            settings: config.clone(),
            precision: Precision::Fp32,
        }
    }

    /// The same model computing its matrix products in `precision` (weights stay as they are).
    pub fn with_precision(mut self, precision: Precision) -> Self {
        self.precision = precision;
        self
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Assemble a model from loaded parts (HF / GGUF import, consolidation). `config` supplies the
    /// non-width settings; widths always come from the parts themselves.
    pub fn from_parts(
        config: &LlamaConfig,
        embed_tokens: Embedding,
        layers: Vec<DecoderLayer>,
        norm: RmsNorm,
        lm_head: Option<Linear>,
    ) -> Self {
        Llama {
            embed_tokens,
            layers,
            norm,
            lm_head,
            settings: config.clone(),
            precision: Precision::Fp32,
        }
    }

    /// The config describing this model as it is now (widths read from the weight shapes, so it
    /// stays right after the weights are sliced).
    pub fn config(&self) -> LlamaConfig {
        let mut config = self.settings.clone();
        let [vocab_size, hidden_size] = self.embed_tokens.weight.dims();
        config.vocab_size = vocab_size;
        config.hidden_size = hidden_size;
        config.tie_word_embeddings = self.lm_head.is_none();
        config.set_layer_widths(self.layers.iter().map(DecoderLayer::widths).collect());
        config
    }

    /// `input_ids: [batch, seq]` → logits `[batch, seq, vocab]`. With `masks` the pruning masks are
    /// applied as described in the module docs; shapes must pass [`Masks::check`] (panics otherwise:
    /// a programming error, not a data error).
    pub fn forward(&self, input_ids: Tensor<2, Int>, masks: Option<&Masks>) -> Tensor<3> {
        let [_, seq] = input_ids.dims();
        let rope = self.rope(seq, &input_ids.device());
        let mut x = self.embed_tokens.forward(input_ids); // [batch, seq, hidden] — never masked (docs/model.md, "Masks")
        let hidden = masks.and_then(|m| m.hidden_z.as_ref()).map(HiddenMask::new);
        for (index, layer) in self.layers.iter().enumerate() {
            let layer_masks = self.layer_masks(masks, hidden.as_ref(), index);
            x = layer.forward(x, &rope, layer_masks, self.precision); // [batch, seq, hidden]
        }
        self.head(x, hidden.as_ref()) // [batch, seq, vocab]
    }

    /// The plain model's decoder stack: `input_ids: [batch, seq]` → hidden states `[batch, seq,
    /// hidden]` before the final norm. With [`logits`](Self::logits), a caller that needs the
    /// predictions at a few positions only (scoring continuations) skips the LM head and its
    /// `vocab`-wide rows everywhere else: `forward(ids, None)` = `logits(hidden_states(ids))`.
    pub fn hidden_states(&self, input_ids: Tensor<2, Int>) -> Tensor<3> {
        let [_, seq] = input_ids.dims();
        let rope = self.rope(seq, &input_ids.device());
        let mut x = self.embed_tokens.forward(input_ids); // [batch, seq, hidden]
        for layer in &self.layers {
            x = layer.forward(x, &rope, LayerMasks::default(), self.precision); // [batch, seq, hidden]
        }
        x
    }

    /// Each decoder layer's block influence (ShortGPT, Men et al. 2024): `1 − cos(x_in, x_out)` of the
    /// residual stream before and after the layer, averaged over every token of `input_ids: [batch,
    /// seq]`. A layer that barely turns the stream has low influence (the one to drop first).
    pub fn block_influence(&self, input_ids: Tensor<2, Int>) -> Vec<f64> {
        let [_, seq] = input_ids.dims();
        let rope = self.rope(seq, &input_ids.device());
        let mut x = self.embed_tokens.forward(input_ids); // [batch, seq, hidden]
        let mut influence = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            let out = layer.forward(x.clone(), &rope, LayerMasks::default(), self.precision); // [batch, seq, hidden]
            let dot = (x.clone() * out.clone()).sum_dim(2); // [batch, seq, 1]
            let norms = (x.square().sum_dim(2) * out.clone().square().sum_dim(2))
                .sqrt()
                .clamp_min(1e-12); // [batch, seq, 1]
            let cosine = (dot / norms).mean().into_scalar::<f32>() as f64;
            influence.push(1.0 - cosine);
            x = out;
        }
        influence
    }

    /// The final norm and LM head of the plain model: `[batch, positions, hidden]` → `[batch, positions, vocab]`.
    pub fn logits(&self, hidden_states: Tensor<3>) -> Tensor<3> {
        self.head(hidden_states, None)
    }

    /// The rotary tables for `seq` positions on `device`.
    pub(super) fn rope(&self, seq: usize, device: &Device) -> Rope {
        Rope::new(
            self.settings.head_dim,
            self.settings.rope_theta,
            self.settings.rope_scaling.as_ref(),
            seq,
            device,
        )
    }

    /// Layer `index`'s rows of `masks` (a layer with per-layer widths takes the first entries).
    pub(super) fn layer_masks<'a>(
        &self,
        masks: Option<&Masks>,
        hidden: Option<&'a HiddenMask>,
        index: usize,
    ) -> LayerMasks<'a> {
        let Some(masks) = masks else {
            return LayerMasks::default();
        };
        let widths = self.layers[index].widths();
        let row = |z: &Option<Tensor<2>>, width: usize| {
            z.as_ref().map(|z| {
                let columns = z.dims()[1];
                let row = z.clone().narrow(0, index, 1).reshape([columns]);
                if columns == width {
                    row
                } else {
                    row.narrow(0, 0, width)
                }
            })
        };
        LayerMasks {
            layer_z: masks
                .layer_z
                .as_ref()
                .map(|z| z.clone().narrow(0, index, 1).reshape([1, 1, 1])),
            head_z: row(&masks.head_z, widths.num_key_value_heads),
            intermediate_z: row(&masks.intermediate_z, widths.intermediate_size),
            hidden,
        }
    }

    /// The final norm and the language-model head: `x: [batch, seq, hidden]` → `[batch, seq, vocab]`.
    pub(super) fn head(&self, x: Tensor<3>, hidden: Option<&HiddenMask>) -> Tensor<3> {
        let x = self.norm.forward_maybe_masked(x, hidden); // [batch, seq, hidden]
        match &self.lm_head {
            Some(head) => project(head, x, self.precision), // [batch, seq, vocab]
            None => {
                let [batch, seq, hidden] = x.dims();
                let weight = self.precision.to_compute(self.embed_tokens.weight.val()); // [vocab, hidden]
                let vocab = weight.dims()[0];
                let logits = self
                    .precision
                    .to_compute(x.reshape([batch * seq, hidden]))
                    .matmul(weight.transpose()); // [batch·seq, vocab]
                self.precision.to_fp32(logits).reshape([batch, seq, vocab])
            }
        }
    }
}

/// `x · weight` of a bias-free projection, in `precision` (fp32: exactly `Linear::forward`); the
/// result is fp32 either way. `x: [batch, seq, in]` → `[batch, seq, out]`.
pub(super) fn project(linear: &Linear, x: Tensor<3>, precision: Precision) -> Tensor<3> {
    match precision {
        Precision::Fp32 => linear.forward(x),
        _ => {
            let weight = precision.to_compute(linear.weight.val()).unsqueeze::<3>(); // [1, in, out]
            precision.to_fp32(precision.to_compute(x).matmul(weight))
        }
    }
}

fn linear(input: usize, output: usize, init: &Initializer, device: &Device) -> Linear {
    LinearConfig::new(input, output)
        .with_bias(false)
        .with_initializer(init.clone())
        .init(device)
}

/// A bias-free [`Linear`] holding `weight` (burn layout `[in, out]`).
pub fn linear_from(weight: Tensor<2>) -> Linear {
    Linear {
        weight: Param::from_tensor(weight),
        bias: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    fn tiny_config() -> LlamaConfig {
        let mut config = LlamaConfig::new(24, 16, 12, 3, 4, 2);
        config.head_dim = 4;
        config.rms_norm_eps = 1e-5;
        config.initializer_range = 0.3; // large enough that the logits are far from uniform
        config
    }

    fn ids(device: &Device) -> Tensor<2, Int> {
        Tensor::<2, Int>::from_data(
            TensorData::new(vec![1i64, 5, 7, 3, 22, 9, 0, 13, 4, 4, 17, 2], [2, 6]),
            device,
        )
    }

    fn max_difference(a: Tensor<3>, b: Tensor<3>) -> f32 {
        (a - b).abs().max().into_scalar::<f32>()
    }

    fn indices(keep: &[bool], device: &Device) -> Tensor<1, Int> {
        let kept: Vec<i64> = keep
            .iter()
            .enumerate()
            .filter(|(_, k)| **k)
            .map(|(i, _)| i as i64)
            .collect();
        let count = kept.len();
        Tensor::from_data(TensorData::new(kept, [count]), device)
    }

    fn mask(values: &[bool], device: &Device) -> Tensor<1> {
        let data: Vec<f32> = values.iter().map(|&k| if k { 1.0 } else { 0.0 }).collect();
        let count = data.len();
        Tensor::from_data(TensorData::new(data, [count]), device)
    }

    fn select_linear(linear: &Linear, dim: usize, keep: &Tensor<1, Int>) -> Linear {
        linear_from(linear.weight.val().select(dim, keep.clone()))
    }

    /// Hard 0/1 masks → the physically smaller model (test-only version of consolidation).
    struct HardMasks {
        layer: Vec<bool>,
        groups: Vec<Vec<bool>>,
        intermediate: Vec<Vec<bool>>,
        hidden: Vec<bool>,
    }

    fn slice(model: &Llama, hard: &HardMasks, device: &Device) -> Llama {
        let keep_hidden = indices(&hard.hidden, device);
        let norm = |n: &RmsNorm| RmsNorm {
            weight: Param::from_tensor(n.weight.val().select(0, keep_hidden.clone())),
            eps: n.eps,
        };
        let mut layers = Vec::new();
        for (index, layer) in model.layers.iter().enumerate() {
            if !hard.layer[index] {
                continue;
            }
            let attn = layer.self_attn.as_ref().unwrap();
            let per_group = attn.num_heads() / attn.num_key_value_heads();
            let head_dim = attn.head_dim;
            let query_columns: Vec<bool> = hard.groups[index]
                .iter()
                .flat_map(|&k| std::iter::repeat_n(k, per_group * head_dim))
                .collect();
            let kv_columns: Vec<bool> = hard.groups[index]
                .iter()
                .flat_map(|&k| std::iter::repeat_n(k, head_dim))
                .collect();
            let self_attn = query_columns.contains(&true).then(|| {
                let q = indices(&query_columns, device);
                let kv = indices(&kv_columns, device);
                Attention {
                    q_proj: select_linear(&select_linear(&attn.q_proj, 0, &keep_hidden), 1, &q),
                    k_proj: select_linear(&select_linear(&attn.k_proj, 0, &keep_hidden), 1, &kv),
                    v_proj: select_linear(&select_linear(&attn.v_proj, 0, &keep_hidden), 1, &kv),
                    o_proj: select_linear(&select_linear(&attn.o_proj, 1, &keep_hidden), 0, &q),
                    head_dim,
                }
            });
            let mlp = layer.mlp.as_ref().unwrap();
            let keep_intermediate = indices(&hard.intermediate[index], device);
            let mlp = hard.intermediate[index].contains(&true).then(|| Mlp {
                gate_proj: select_linear(
                    &select_linear(&mlp.gate_proj, 0, &keep_hidden),
                    1,
                    &keep_intermediate,
                ),
                up_proj: select_linear(
                    &select_linear(&mlp.up_proj, 0, &keep_hidden),
                    1,
                    &keep_intermediate,
                ),
                down_proj: select_linear(
                    &select_linear(&mlp.down_proj, 1, &keep_hidden),
                    0,
                    &keep_intermediate,
                ),
            });
            layers.push(DecoderLayer {
                input_layernorm: norm(&layer.input_layernorm),
                self_attn,
                post_attention_layernorm: norm(&layer.post_attention_layernorm),
                mlp,
            });
        }
        let embed_tokens = Embedding {
            weight: Param::from_tensor(
                model
                    .embed_tokens
                    .weight
                    .val()
                    .select(1, keep_hidden.clone()),
            ),
        };
        let lm_head = model
            .lm_head
            .as_ref()
            .map(|head| select_linear(head, 0, &keep_hidden));
        Llama::from_parts(
            &model.settings,
            embed_tokens,
            layers,
            norm(&model.norm),
            lm_head,
        )
    }

    fn masks_of(hard: &HardMasks, device: &Device) -> Masks {
        let rows = |rows: &[Vec<bool>]| {
            Tensor::stack::<2>(rows.iter().map(|r| mask(r, device)).collect(), 0)
        };
        Masks {
            layer_z: Some(mask(&hard.layer, device)),
            head_z: Some(rows(&hard.groups)),
            intermediate_z: Some(rows(&hard.intermediate)),
            hidden_z: Some(mask(&hard.hidden, device)),
        }
    }

    #[test]
    fn logits_of_hidden_states_equal_the_forward() {
        let device = crate::model::device::for_tests();
        let model =
            crate::model::init::seeded_normal_init(Llama::new(&tiny_config(), &device), 3, 0.3);
        let full = model.forward(ids(&device), None); // [batch, seq, vocab]
        let split = model.logits(model.hidden_states(ids(&device))); // [batch, seq, vocab]
        assert!(max_difference(full, split) < 1e-6);
    }

    #[test]
    fn all_ones_masks_equal_the_plain_forward() {
        let device = crate::model::device::for_tests();
        device.seed(3);
        let config = tiny_config();
        let model = Llama::new(&config, &device);
        let masks = Masks {
            layer_z: Some(Tensor::ones([3], &device)),
            head_z: Some(Tensor::ones([3, 2], &device)),
            intermediate_z: Some(Tensor::ones([3, 12], &device)),
            hidden_z: Some(Tensor::ones([16], &device)),
        };
        masks.check(&config).unwrap();
        let plain = model.forward(ids(&device), None);
        let masked = model.forward(ids(&device), Some(&masks));
        assert!(
            plain.clone().abs().max().into_scalar::<f32>() > 1.0,
            "logits too small for a meaningful test"
        );
        assert!(max_difference(plain, masked) < 1e-5);
    }

    #[test]
    fn hard_masks_equal_the_sliced_model() {
        let device = crate::model::device::for_tests();
        for tied in [false, true] {
            device.seed(5);
            let mut config = tiny_config();
            config.tie_word_embeddings = tied;
            let model = Llama::new(&config, &device);
            let hard = HardMasks {
                layer: vec![true, false, true],
                // layer 2 loses every group: its attention disappears (identity).
                groups: vec![vec![false, true], vec![true, true], vec![false, false]],
                intermediate: (0..3)
                    .map(|l| (0..12).map(|i| (i + l) % 3 != 0).collect())
                    .collect(),
                hidden: (0..16).map(|i| i % 4 != 1).collect(),
            };
            let masked = model.forward(ids(&device), Some(&masks_of(&hard, &device)));
            let sliced = slice(&model, &hard, &device);
            let config = sliced.config();
            assert_eq!(config.hidden_size, 12);
            assert_eq!(config.num_hidden_layers, 2);
            assert_eq!(config.layer(0).num_attention_heads, 2);
            assert_eq!(config.layer(1).num_attention_heads, 0);
            let plain = sliced.forward(ids(&device), None);
            let difference = max_difference(masked, plain);
            assert!(
                difference < 1e-4,
                "tied={tied}: masked vs sliced differ by {difference}"
            );
        }
    }

    #[test]
    fn masks_receive_gradients() {
        let device = crate::model::device::for_tests().autodiff();
        device.seed(7);
        let config = tiny_config();
        let model = Llama::new(&config, &device);
        let head_z =
            Tensor::<2>::random([3, 2], Distribution::Uniform(0.5, 1.0), &device).require_grad();
        let hidden_z =
            Tensor::<1>::random([16], Distribution::Uniform(0.5, 1.0), &device).require_grad();
        let masks = Masks {
            head_z: Some(head_z.clone()),
            hidden_z: Some(hidden_z.clone()),
            ..Masks::default()
        };
        let logits = model.forward(ids(&device), Some(&masks));
        let gradients = logits.sum().backward();
        let head_gradient = head_z
            .grad(&gradients)
            .unwrap()
            .abs()
            .sum()
            .into_scalar::<f32>();
        let hidden_gradient = hidden_z
            .grad(&gradients)
            .unwrap()
            .abs()
            .sum()
            .into_scalar::<f32>();
        assert!(head_gradient > 0.0 && hidden_gradient > 0.0);
    }

    /// bf16 matmuls with fp32 everything else: logits within bf16's ~3 significant digits of fp32
    /// (relative to their scale), masked forward included, and the gradients reach the fp32
    /// parameters as fp32 and point the same way.
    #[test]
    fn bf16_forward_and_gradients_track_fp32() {
        use burn::tensor::DType;
        let device = crate::model::device::for_tests().autodiff();
        device.seed(11);
        let config = tiny_config();
        // Seeded weights: burn's device RNG is shared with concurrently running tests.
        let model = crate::model::init::seeded_normal_init(
            Llama::new(&config, &device),
            11,
            config.initializer_range,
        );
        // Fixed mask values in [0.5, 1): nothing here draws from the shared device RNG.
        let values = |count: usize| -> Vec<f32> {
            (0..count)
                .map(|i| 0.5 + 0.05 * ((i * 7) % 10) as f32)
                .collect()
        };
        let masks = Masks {
            head_z: Some(Tensor::from_data(
                TensorData::new(values(6), [3, 2]),
                &device,
            )),
            intermediate_z: Some(Tensor::from_data(
                TensorData::new(values(36), [3, 12]),
                &device,
            )),
            hidden_z: Some(Tensor::from_data(
                TensorData::new(values(16), [16]),
                &device,
            )),
            ..Masks::default()
        };
        let fp32 = model.forward(ids(&device), Some(&masks)); // [batch, seq, vocab]
        let bf16_model = model.clone().with_precision(Precision::Bf16);
        let bf16 = bf16_model.forward(ids(&device), Some(&masks));
        assert_eq!(bf16.dtype(), DType::F32, "logits come back in fp32");
        let scale = fp32.clone().abs().max().into_scalar::<f32>();
        let difference = max_difference(fp32.clone(), bf16.clone());
        assert!(
            difference > 0.0 && difference < 0.02 * scale,
            "bf16 logits differ from fp32 by {difference} at scale {scale}"
        );

        let weight = |m: &Llama| m.layers[0].mlp.as_ref().unwrap().up_proj.weight.val();
        let fp32_gradient = weight(&model).grad(&fp32.sum().backward()).unwrap(); // [hidden, intermediate]
        let bf16_gradient = weight(&bf16_model).grad(&bf16.sum().backward()).unwrap();
        assert_eq!(bf16_gradient.dtype(), DType::F32);
        let cosine = (fp32_gradient.clone() * bf16_gradient.clone())
            .sum()
            .into_scalar::<f32>()
            / (fp32_gradient.square().sum().sqrt() * bf16_gradient.square().sum().sqrt())
                .into_scalar::<f32>();
        assert!(cosine > 0.999, "gradient cosine {cosine}");
    }

    #[test]
    fn mask_shapes_are_checked() {
        let device = crate::model::device::for_tests();
        let config = tiny_config();
        let masks = Masks {
            head_z: Some(Tensor::ones([3, 4], &device)),
            ..Masks::default()
        };
        let message = masks.check(&config).unwrap_err().to_string();
        assert!(
            message.contains("head_z") && message.contains("[3, 2]"),
            "{message}"
        );
    }

    #[test]
    fn per_layer_widths_survive_config_round_trip() {
        let device = crate::model::device::for_tests();
        let mut config = tiny_config();
        config.set_layer_widths(vec![
            LayerWidths {
                num_attention_heads: 4,
                num_key_value_heads: 2,
                intermediate_size: 12,
            },
            LayerWidths {
                num_attention_heads: 2,
                num_key_value_heads: 1,
                intermediate_size: 5,
            },
            LayerWidths {
                num_attention_heads: 0,
                num_key_value_heads: 0,
                intermediate_size: 7,
            },
        ]);
        let model = Llama::new(&config, &device);
        assert_eq!(model.config(), config);
        assert_eq!(model.forward(ids(&device), None).dims(), [2, 6, 24]);
    }
}
