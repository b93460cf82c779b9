//! Peak device memory of one training step (or one forward pass) of a LLaMA, estimated from its
//! config alone, so that `sheared plan` can show it and `sheared run` can refuse a stage that cannot
//! fit before it loads a single weight (a 7B prune step that runs out of memory after an hour of
//! loading and tokenizing wastes the hour).
//!
//! The estimate is the sum of five named parts, each derived below from the tensors that exist at the
//! peak of a step — the start of the backward pass, when every activation saved for backward is still
//! alive, the gradients are being written and the optimiser state exists from the previous step:
//!
//! - **weights**: every parameter ([`LlamaConfig::parameter_counts`], `P`) as an fp32 master copy,
//!   `4·P` bytes; with [`Precision::Bf16`] a bf16 working copy besides, `+ 2·P`.
//! - **gradients**: one fp32 gradient per parameter, `4·P`. With gradient accumulation
//!   (`grad_accum > 1`) burn's `GradientsAccumulator` holds the running sum while the next
//!   micro-batch's backward writes fresh gradients, so `2 · 4·P`.
//! - **adam**: AdamW's two fp32 moments, `2 · 4·P`. With `optimizer_offload` they wait in host
//!   memory between steps ([`crate::train::optim::offload_to_host`]) and come back one parameter at a
//!   time during the update, as the gradients go: the device peak is then the larger of the backward
//!   (weights, gradients, activations) and the end of the update (weights, moments), not their sum.
//! - **masks** (prune only): the L0 parameters — `z_loga` of every pruned module (`head [L, G]`,
//!   `intermediate [L, I]`, `layer [L]`, `hidden [d]`) and each module's Lagrange multipliers
//!   `[λ1, λ2]` — are trained with AdamW too: value, gradient, two moments and the sampled mask,
//!   `5 · 4` bytes each. Small (≈ 0.4 M values for LLaMA2-7B), but counted.
//! - **activations**: what autodiff saves for backward at `micro_batch × seq_len` tokens, counted
//!   per tensor from the forward pass in [`super::llama`] as burn records it (see
//!   [`layer_saved_elements`] and [`head_saved_elements`]), times the activation dtype's bytes.
//!   With activation checkpointing only each layer's input `[batch, seq, hidden]` is kept, and one
//!   pass's activations exist at a time: the head and loss, then each layer while it is recomputed,
//!   its attention computed block by block of query rows ([`layer_recomputed_elements`]): no
//!   `[batch, heads, seq, seq]` at all. A forward-only pass (eval) keeps
//!   nothing: its peak is the residual stream plus one layer's transient tensors plus the logits.
//!
//! Not counted: the allocator's fragmentation and caching, the transient copies an optimiser step makes
//! of one parameter at a time, the data batch, and the runtime itself (CUDA context ≈ 0.5 GiB). They
//! are why the estimate is a lower bound on what a device must have; docs/training.md states how far
//! it is from a measured CPU run.

use serde::Serialize;

use super::blockwise_attention::QUERY_BLOCK;
use super::config::{LayerWidths, LlamaConfig};
use super::l0::PruningModule;

/// Bytes in a GiB (what the plan prints).
pub const GIB: f64 = (1u64 << 30) as f64;

pub use super::precision::Precision;

/// Tokens one forward/backward pass sees: `micro_batch` sequences of `seq_len` tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct StepShape {
    pub micro_batch: usize,
    pub seq_len: usize,
}

/// How a step is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MemoryOptions {
    pub precision: Precision,
    /// Keep only each layer's input and recompute one layer at a time in backward.
    pub activation_checkpointing: bool,
    /// AdamW's moments wait in host memory between steps.
    pub optimizer_offload: bool,
}

impl MemoryOptions {
    /// fp32, no checkpointing: how `prune` and `train` run today.
    pub const FP32: MemoryOptions = MemoryOptions {
        precision: Precision::Fp32,
        activation_checkpointing: false,
        optimizer_offload: false,
    };
}

/// Which masks the pruning forward multiplies in (each one saves extra activations).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct MaskSet {
    pub head: bool,
    pub intermediate: bool,
    pub layer: bool,
    pub hidden: bool,
}

impl MaskSet {
    pub fn from_modules(modules: &[PruningModule]) -> MaskSet {
        MaskSet {
            head: modules.contains(&PruningModule::Head),
            intermediate: modules.contains(&PruningModule::Intermediate),
            layer: modules.contains(&PruningModule::Layer),
            hidden: modules.contains(&PruningModule::Hidden),
        }
    }
}

/// What kind of step is estimated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// A dense training step (`train`): forward, backward, AdamW; `grad_accum` micro-batches per step.
    Train { grad_accum: usize },
    /// An L0 pruning step (`prune`, method l0): masked forward, backward into the weights and the
    /// masks, AdamW over both; `grad_accum` micro-batches per step.
    Prune { masks: MaskSet, grad_accum: usize },
    /// A forward pass without autodiff (`eval`).
    Forward,
    /// Forward and backward without an optimiser, the gradients summed over `grad_accum`
    /// micro-batches (`prune` with `method = "taylor"`: the calibration gradients).
    Gradients { grad_accum: usize },
}

/// Peak memory of one step, by part. All in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct MemoryEstimate {
    pub weights_bytes: u64,
    pub gradients_bytes: u64,
    pub optimizer_bytes: u64,
    pub masks_bytes: u64,
    pub activations_bytes: u64,
    /// `optimizer_bytes` wait in host memory between steps and meet the device only during the
    /// update, when the activations are gone and the gradients are being consumed.
    pub optimizer_on_host: bool,
    /// A frozen distillation teacher ([`teacher_bytes`]); 0 without one.
    pub teacher_bytes: u64,
}

impl MemoryEstimate {
    /// Peak device bytes.
    pub fn total_bytes(&self) -> u64 {
        let always = self.weights_bytes + self.masks_bytes + self.teacher_bytes;
        let backward = self.gradients_bytes + self.activations_bytes;
        if self.optimizer_on_host {
            always + backward.max(self.optimizer_bytes)
        } else {
            always + backward + self.optimizer_bytes
        }
    }

    /// The non-zero parts with their plan names, in a fixed order.
    pub fn parts(&self) -> Vec<(&'static str, u64)> {
        [
            ("weights", self.weights_bytes),
            ("grads", self.gradients_bytes),
            ("adam", self.optimizer_bytes),
            ("masks", self.masks_bytes),
            ("activations", self.activations_bytes),
            ("teacher", self.teacher_bytes),
        ]
        .into_iter()
        .filter(|(_, bytes)| *bytes > 0)
        .collect()
    }

    /// `peak memory ≈ 12.3 GiB (weights 1.1 GiB, grads 1.1 GiB, adam 2.2 GiB, activations 7.9 GiB)`,
    /// with offloading `... (weights .., grads .., activations ..; adam 2.2 GiB on the host between
    /// steps)`.
    pub fn describe(&self) -> String {
        let parts: Vec<String> = self
            .parts()
            .iter()
            .filter(|(name, _)| !(self.optimizer_on_host && *name == "adam"))
            .map(|(name, bytes)| format!("{name} {}", format_bytes(*bytes)))
            .collect();
        let host = if self.optimizer_on_host {
            format!(
                "; adam {} on the host between steps",
                format_bytes(self.optimizer_bytes)
            )
        } else {
            String::new()
        };
        format!(
            "peak memory ≈ {} ({}{host})",
            format_bytes(self.total_bytes()),
            parts.join(", ")
        )
    }
}

/// `6.2 TiB`, `12.3 GiB`, `512.0 MiB`, `3.0 KiB`, `17 B`.
pub fn format_bytes(bytes: u64) -> String {
    let value = bytes as f64;
    if value >= 1024.0 * GIB {
        format!("{:.1} TiB", value / (1024.0 * GIB))
    } else if value >= GIB {
        format!("{:.1} GiB", value / GIB)
    } else if value >= (1u64 << 20) as f64 {
        format!("{:.1} MiB", value / (1u64 << 20) as f64)
    } else if value >= 1024.0 {
        format!("{:.1} KiB", value / 1024.0)
    } else {
        format!("{bytes} B")
    }
}

/// Bytes a frozen distillation teacher (`train.distill`) adds to a training step: its weights in the
/// compute dtype and its forward pass at `shape` (no autodiff: one layer at a time), plus its logits
/// `[batch, seq, vocab]` in fp32, which stay on the device until the student's loss has used them.
pub fn teacher_bytes(teacher: &LlamaConfig, shape: StepShape, precision: Precision) -> u64 {
    let forward = estimate(
        teacher,
        Step::Forward,
        shape,
        MemoryOptions {
            precision,
            ..MemoryOptions::FP32
        },
    );
    let tokens = (shape.micro_batch * shape.seq_len) as u64;
    forward.total_bytes() + tokens * teacher.vocab_size as u64 * 4
}

/// Number of L0 parameters (`z_loga` of each module plus its two Lagrange multipliers) for pruning
/// `config` with `modules`. Head masks have one unit per key/value group (see [`super::Masks`]).
pub fn l0_parameter_count(config: &LlamaConfig, modules: &[PruningModule]) -> u64 {
    let layers = config.num_hidden_layers as u64;
    modules
        .iter()
        .map(|module| {
            let z_loga = match module {
                PruningModule::Head => layers * config.num_key_value_heads as u64, // [L, G]
                PruningModule::Intermediate => layers * config.intermediate_size as u64, // [L, I]
                PruningModule::Layer => layers,                                    // [L]
                PruningModule::Hidden => config.hidden_size as u64,                // [d]
            };
            z_loga + 2 // [λ1, λ2]
        })
        .sum()
}

/// Peak memory of one `step` of a model with `config` at `shape`.
pub fn estimate(
    config: &LlamaConfig,
    step: Step,
    shape: StepShape,
    options: MemoryOptions,
) -> MemoryEstimate {
    let parameters = config.parameter_counts().total;
    let fp32 = 4u64;
    let working_copy = match options.precision {
        Precision::Fp32 => 0,
        Precision::Bf16 => 2 * parameters,
    };
    let activation_bytes = options.precision.activation_bytes();
    match step {
        Step::Forward => MemoryEstimate {
            // Inference needs only the weights in the compute dtype.
            weights_bytes: parameters * activation_bytes,
            activations_bytes: forward_elements(config, shape) * activation_bytes,
            ..MemoryEstimate::default()
        },
        Step::Gradients { grad_accum } => MemoryEstimate {
            optimizer_bytes: 0,
            optimizer_on_host: false,
            ..estimate(
                config,
                Step::Train { grad_accum },
                shape,
                MemoryOptions {
                    optimizer_offload: false,
                    ..options
                },
            )
        },
        Step::Train { grad_accum } => {
            let gradient_buffers = if grad_accum > 1 { 2 } else { 1 };
            MemoryEstimate {
                weights_bytes: parameters * fp32 + working_copy,
                gradients_bytes: gradient_buffers * parameters * fp32,
                optimizer_bytes: 2 * parameters * fp32,
                optimizer_on_host: options.optimizer_offload,
                teacher_bytes: 0,
                masks_bytes: 0,
                activations_bytes: training_elements(
                    config,
                    shape,
                    MaskSet::default(),
                    options.activation_checkpointing,
                ) * activation_bytes,
            }
        }
        Step::Prune { masks, grad_accum } => {
            let gradient_buffers = if grad_accum > 1 { 2 } else { 1 };
            let modules: Vec<PruningModule> = PruningModule::ALL
                .into_iter()
                .filter(|module| match module {
                    PruningModule::Head => masks.head,
                    PruningModule::Intermediate => masks.intermediate,
                    PruningModule::Layer => masks.layer,
                    PruningModule::Hidden => masks.hidden,
                })
                .collect();
            MemoryEstimate {
                weights_bytes: parameters * fp32 + working_copy,
                gradients_bytes: gradient_buffers * parameters * fp32,
                optimizer_bytes: 2 * parameters * fp32,
                optimizer_on_host: options.optimizer_offload,
                teacher_bytes: 0,
                // value, gradient, two AdamW moments, the sampled mask
                masks_bytes: 5 * l0_parameter_count(config, &modules) * fp32,
                activations_bytes: training_elements(
                    config,
                    shape,
                    masks,
                    options.activation_checkpointing,
                ) * activation_bytes,
            }
        }
    }
}

/// Elements autodiff saves for backward in one decoder layer with `widths` (b = micro-batch,
/// s = seq_len, d = hidden, H = query heads, h = head_dim, I = intermediate), following the
/// forward of [`super::llama::DecoderLayer`] op by op:
///
/// Attention sub-block (absent when the layer has no heads):
/// - `input_layernorm`: `x.square()` and `x · rsqrt` save the input `// [b, s, d]`, `· weight`
///   saves the normalised `// [b, s, d]`, `sqrt`/`recip` save `// [b, s, 1]`;
/// - `q_proj`, `k_proj`, `v_proj` share one saved input, the norm's output `// [b, s, d]`;
/// - `q·kᵀ` saves query and key after RoPE and `repeat_kv` `// 2 × [b, H, s, h]` (RoPE multiplies
///   by constant tables and saves nothing of size);
/// - the causal softmax (one fused node, [`super::fused`]) saves its output, the probabilities
///   `// [b, H, s, s]`;
/// - `probs · v` saves value `// [b, H, s, h]` (the probabilities are already counted);
/// - `o_proj` saves its input, the context made contiguous `// [b, s, H·h]`.
///
/// MLP sub-block (absent when the layer has no intermediate units):
/// - `post_attention_layernorm` as above `// 2 × [b, s, d] + [b, s, 1]`; `gate_proj`/`up_proj`
///   share its output `// [b, s, d]`;
/// - the fused `silu(g)` saves `g`, `silu(g) ⊙ up` saves both factors, and `down_proj` saves the
///   product `// 4 × [b, s, I]`.
///
/// Masks (prune), each when its module is pruned:
/// - `hidden_z` multiplies each norm's output: `// [b, s, d]` per norm, and each block output;
/// - `layer_z` multiplies each block output: `// [b, s, d]` per block for each of the two masks;
/// - `head_z` multiplies the context per head: `// [b, H, s, h]`;
/// - `intermediate_z` multiplies `up`: `// [b, s, I]`.
pub fn layer_saved_elements(
    config: &LlamaConfig,
    widths: LayerWidths,
    shape: StepShape,
    masks: MaskSet,
) -> u64 {
    let batch = shape.micro_batch as u64;
    let seq = shape.seq_len as u64;
    let tokens = batch * seq;
    let hidden = config.hidden_size as u64;
    let head_dim = config.head_dim as u64;
    let heads = widths.num_attention_heads as u64;
    let intermediate = widths.intermediate_size as u64;
    let norm = 2 * tokens * hidden + tokens // x, x·rsqrt [b, s, d]; rsqrt [b, s, 1]
        + if masks.hidden { tokens * hidden } else { 0 }; // output before hidden_z [b, s, d]
    let block_output = tokens * hidden * (u64::from(masks.layer) + u64::from(masks.hidden)); // before layer_z / hidden_z [b, s, d]
    let mut elements = 0;
    if heads > 0 {
        let per_head = tokens * heads * head_dim; // [b, H, s, h]
        elements += norm;
        elements += tokens * hidden; // q/k/v_proj input [b, s, d]
        elements += 3 * per_head; // query, key, value [b, H, s, h]
        elements += batch * heads * seq * seq; // probabilities [b, H, s, s]
        elements += per_head; // o_proj input [b, s, H·h]
        if masks.head {
            elements += per_head; // context before head_z [b, H, s, h]
        }
        elements += block_output;
    }
    if intermediate > 0 {
        elements += norm;
        elements += tokens * hidden; // gate/up_proj input [b, s, d]
        elements += 4 * tokens * intermediate; // gate, silu, up, silu⊙up [b, s, I]
        if masks.intermediate {
            elements += tokens * intermediate; // up before intermediate_z [b, s, I]
        }
        elements += block_output;
    }
    elements
}

/// Elements alive while a checkpointed step recomputes and back-propagates one layer
/// ([`super::checkpointing`]): what [`layer_saved_elements`] counts, except that the attention runs
/// block by block ([`super::blockwise_attention`], `B` = `min(QUERY_BLOCK, s)` query rows): instead
/// of the softmax's probabilities `[b, H, s, s]`, one block's probabilities, their gradient
/// and the scores' gradient `// 3 × [b, H, B, s]`, and besides them the context, its gradient and the
/// query, key and value gradients `// 5 × [b, H, s, h]`.
pub fn layer_recomputed_elements(
    config: &LlamaConfig,
    widths: LayerWidths,
    shape: StepShape,
    masks: MaskSet,
) -> u64 {
    let saved = layer_saved_elements(config, widths, shape, masks);
    let heads = widths.num_attention_heads as u64;
    if heads == 0 {
        return saved;
    }
    let batch = shape.micro_batch as u64;
    let seq = shape.seq_len as u64;
    let block = QUERY_BLOCK.min(shape.seq_len) as u64;
    let per_head = batch * seq * heads * config.head_dim as u64; // [b, H, s, h]
    let probabilities = batch * heads * seq * seq; // what the whole-sequence softmax saves
    saved - probabilities + 3 * batch * heads * block * seq + 5 * per_head
}

/// Elements saved by the head of the model in a training step: the final norm
/// `// 2 × [b, s, d] + [b, s, 1]` (+ its output before `hidden_z`), the `lm_head` input
/// `// [b, s, d]`, and for the loss the log-probabilities (what the fused loss saves) and, while its
/// backward runs, the logits' gradient `// 2 × [b, s, V]`.
pub fn head_saved_elements(config: &LlamaConfig, shape: StepShape, masks: MaskSet) -> u64 {
    let tokens = (shape.micro_batch * shape.seq_len) as u64;
    let hidden = config.hidden_size as u64;
    let vocab = config.vocab_size as u64;
    let norm = 2 * tokens * hidden + tokens + if masks.hidden { tokens * hidden } else { 0 };
    norm + tokens * hidden + 2 * tokens * vocab
}

/// Activation elements alive at the peak of a training step.
fn training_elements(
    config: &LlamaConfig,
    shape: StepShape,
    masks: MaskSet,
    activation_checkpointing: bool,
) -> u64 {
    let layers = config.all_layer_widths();
    let head = head_saved_elements(config, shape, masks);
    if activation_checkpointing {
        let layer_inputs =
            layers.len() as u64 * (shape.micro_batch * shape.seq_len * config.hidden_size) as u64; // L × [b, s, d]
        let one_layer = layers
            .iter()
            .map(|widths| layer_recomputed_elements(config, *widths, shape, masks))
            .max()
            .unwrap_or(0);
        // The head's pass finishes (its graph freed) before the first layer is recomputed; what
        // carries over between passes is the gradient of the residual stream.
        let upstream = (shape.micro_batch * shape.seq_len * config.hidden_size) as u64; // [b, s, d]
        layer_inputs + upstream + one_layer.max(head)
    } else {
        layers
            .iter()
            .map(|widths| layer_saved_elements(config, *widths, shape, masks))
            .sum::<u64>()
            + head
    }
}

/// Activation elements alive at the peak of a forward pass without autodiff: the residual stream
/// `// [b, s, d]`, one layer's tensors while it runs (bounded by what training would save of it),
/// the final norm's output `// [b, s, d]`, and the logits with their log-softmax `// 2 × [b, s, V]`.
fn forward_elements(config: &LlamaConfig, shape: StepShape) -> u64 {
    let tokens = (shape.micro_batch * shape.seq_len) as u64;
    let hidden = config.hidden_size as u64;
    let one_layer = config
        .all_layer_widths()
        .iter()
        .map(|widths| layer_saved_elements(config, *widths, shape, MaskSet::default()))
        .max()
        .unwrap_or(0);
    tokens * hidden + one_layer + tokens * hidden + 2 * tokens * config.vocab_size as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// vocab 10, hidden 4, intermediate 6, 2 layers, 2 heads (head_dim 2), untied.
    fn tiny() -> LlamaConfig {
        LlamaConfig::new(10, 4, 6, 2, 2, 2)
    }

    fn shape(micro_batch: usize, seq_len: usize) -> StepShape {
        StepShape {
            micro_batch,
            seq_len,
        }
    }

    const ALL_MASKS: MaskSet = MaskSet {
        head: true,
        intermediate: true,
        layer: true,
        hidden: true,
    };

    #[test]
    fn tiny_training_step_matches_hand_computed_bytes() {
        // Parameters: embed + lm_head 2·10·4 = 80; per layer 2 norms 8, q/k/v/o 4·(4·4) = 64,
        // gate/up/down 3·4·6 = 72 → 144; final norm 4 → 80 + 2·144 + 4 = 372.
        let config = tiny();
        assert_eq!(config.parameter_counts().total, 372);
        // b = 1, s = 3: tokens 3.
        // Attention: norm 2·3·4 + 3 = 27, qkv input 12, q/k/v 3·(3·2·2) = 36,
        // probabilities 1·2·3·3 = 18, o_proj input 12 → 105.
        // MLP: norm 27, input 12, 4·3·6 = 72 → 111. Layer: 216.
        let layer = layer_saved_elements(&config, config.layer(0), shape(1, 3), MaskSet::default());
        assert_eq!(layer, 216);
        // Head: norm 27, lm_head input 12, 2·3·10 = 60 → 99.
        assert_eq!(
            head_saved_elements(&config, shape(1, 3), MaskSet::default()),
            99
        );
        let estimate = estimate(
            &config,
            Step::Train { grad_accum: 1 },
            shape(1, 3),
            MemoryOptions::FP32,
        );
        assert_eq!(
            estimate,
            MemoryEstimate {
                weights_bytes: 372 * 4,
                gradients_bytes: 372 * 4,
                optimizer_bytes: 2 * 372 * 4,
                masks_bytes: 0,
                activations_bytes: (2 * 216 + 99) * 4,
                optimizer_on_host: false,
                teacher_bytes: 0,
            }
        );
        assert_eq!(estimate.total_bytes(), 1488 + 1488 + 2976 + 2124);
    }

    #[test]
    fn accumulation_holds_two_gradient_buffers() {
        let config = tiny();
        let one = estimate(
            &config,
            Step::Train { grad_accum: 1 },
            shape(1, 3),
            MemoryOptions::FP32,
        );
        let four = estimate(
            &config,
            Step::Train { grad_accum: 4 },
            shape(1, 3),
            MemoryOptions::FP32,
        );
        assert_eq!(four.gradients_bytes, 2 * one.gradients_bytes);
        assert_eq!(four.activations_bytes, one.activations_bytes);
    }

    #[test]
    fn pruning_adds_mask_parameters_and_masked_activations() {
        let config = tiny();
        // z_loga: head [2, 2] = 4, intermediate [2, 6] = 12, layer [2] = 2, hidden [4] = 4;
        // λ: 4 × 2 = 8 → 30.
        assert_eq!(l0_parameter_count(&config, &PruningModule::ALL), 30);
        // Per layer on top of 216: attention norm output before hidden_z 12, context before head_z
        // 12, block output before layer_z and hidden_z 2·12; MLP norm 12, up before
        // intermediate_z 18, block output 24 → 216 + 48 + 54 = 318.
        assert_eq!(
            layer_saved_elements(&config, config.layer(0), shape(1, 3), ALL_MASKS),
            318
        );
        // Head: 99 + final norm output before hidden_z 12 = 111.
        assert_eq!(head_saved_elements(&config, shape(1, 3), ALL_MASKS), 111);
        let estimate = estimate(
            &config,
            Step::Prune {
                masks: ALL_MASKS,
                grad_accum: 1,
            },
            shape(1, 3),
            MemoryOptions::FP32,
        );
        assert_eq!(estimate.masks_bytes, 30 * 5 * 4);
        assert_eq!(estimate.activations_bytes, (2 * 318 + 111) * 4);
        assert_eq!(estimate.weights_bytes, 372 * 4);
    }

    #[test]
    fn checkpointing_keeps_layer_inputs_and_one_layer() {
        let config = tiny();
        let options = MemoryOptions {
            precision: Precision::Fp32,
            activation_checkpointing: true,
            optimizer_offload: false,
        };
        let estimate = estimate(&config, Step::Train { grad_accum: 1 }, shape(1, 3), options);
        // 2 layer inputs of 3·4 = 24, the residual's gradient 12, and the larger of the head's
        // pass (99) and one layer recomputed: 216 saved, less the probabilities 1·2·3·3 = 18,
        // plus one block of 3 rows 3·(1·2·3·3) = 54 and the context and its gradients
        // 5·(1·2·3·2) = 60 → 312.
        assert_eq!(estimate.activations_bytes, (24 + 12 + 312) * 4);
    }

    #[test]
    fn calibration_gradients_are_a_training_step_without_the_optimiser() {
        let config = tiny();
        let train = estimate(
            &config,
            Step::Train { grad_accum: 2 },
            shape(1, 3),
            MemoryOptions::FP32,
        );
        let gradients = estimate(
            &config,
            Step::Gradients { grad_accum: 2 },
            shape(1, 3),
            MemoryOptions::FP32,
        );
        assert_eq!(gradients.optimizer_bytes, 0);
        assert_eq!(
            gradients.total_bytes(),
            train.total_bytes() - train.optimizer_bytes
        );
    }

    #[test]
    fn forward_only_keeps_weights_and_one_layer() {
        let config = tiny();
        let estimate = estimate(&config, Step::Forward, shape(1, 3), MemoryOptions::FP32);
        // Residual 12 + one layer 216 + norm output 12 + logits and log-softmax 2·3·10 = 60.
        assert_eq!(
            estimate,
            MemoryEstimate {
                weights_bytes: 372 * 4,
                activations_bytes: (12 + 216 + 12 + 60) * 4,
                ..MemoryEstimate::default()
            }
        );
    }

    #[test]
    fn bf16_halves_activations_and_adds_a_weight_copy() {
        let config = tiny();
        let fp32 = estimate(
            &config,
            Step::Train { grad_accum: 1 },
            shape(2, 5),
            MemoryOptions::FP32,
        );
        let bf16 = estimate(
            &config,
            Step::Train { grad_accum: 1 },
            shape(2, 5),
            MemoryOptions {
                precision: Precision::Bf16,
                activation_checkpointing: false,
                optimizer_offload: false,
            },
        );
        assert_eq!(bf16.activations_bytes * 2, fp32.activations_bytes);
        assert_eq!(bf16.weights_bytes, 372 * 4 + 372 * 2);
        assert_eq!(bf16.gradients_bytes, fp32.gradients_bytes);
        assert_eq!(bf16.optimizer_bytes, fp32.optimizer_bytes);
    }

    #[test]
    fn more_tokens_need_more_memory_and_checkpointing_less() {
        let config = LlamaConfig::new(64, 32, 48, 4, 4, 2);
        let steps = [
            Step::Train { grad_accum: 1 },
            Step::Prune {
                masks: ALL_MASKS,
                grad_accum: 1,
            },
            Step::Forward,
        ];
        for step in steps {
            let at = |b, s| estimate(&config, step, shape(b, s), MemoryOptions::FP32);
            let base = at(2, 16);
            assert!(at(3, 16).total_bytes() > base.total_bytes(), "{step:?}");
            assert!(at(2, 17).total_bytes() > base.total_bytes(), "{step:?}");
            // Attention scores grow with the square of the sequence: doubling seq more than doubles
            // a layer's activations, doubling the batch doubles them exactly.
            let layer = |b, s| {
                layer_saved_elements(&config, config.layer(0), shape(b, s), MaskSet::default())
            };
            assert_eq!(layer(4, 16), 2 * layer(2, 16));
            assert!(layer(2, 32) > 2 * layer(2, 16));
        }
        for step in [
            Step::Train { grad_accum: 1 },
            Step::Prune {
                masks: ALL_MASKS,
                grad_accum: 1,
            },
        ] {
            let with = |checkpointing| {
                estimate(
                    &config,
                    step,
                    shape(2, 16),
                    MemoryOptions {
                        precision: Precision::Fp32,
                        activation_checkpointing: checkpointing,
                        optimizer_offload: false,
                    },
                )
            };
            let (plain, checkpointed) = (with(false), with(true));
            assert!(checkpointed.activations_bytes < plain.activations_bytes);
            assert_eq!(checkpointed.weights_bytes, plain.weights_bytes);
        }
    }

    /// A distillation teacher adds its forward pass and its kept logits, always on the device.
    #[test]
    fn a_teacher_adds_its_forward_and_its_logits() {
        let config = tiny();
        let forward = estimate(&config, Step::Forward, shape(1, 3), MemoryOptions::FP32);
        let teacher = teacher_bytes(&config, shape(1, 3), Precision::Fp32);
        assert_eq!(teacher, forward.total_bytes() + 3 * 10 * 4);
        let mut step = estimate(
            &config,
            Step::Train { grad_accum: 1 },
            shape(1, 3),
            MemoryOptions::FP32,
        );
        let without = step.total_bytes();
        step.teacher_bytes = teacher;
        assert_eq!(step.total_bytes(), without + teacher);
        assert!(step.describe().contains("teacher"), "{}", step.describe());
    }

    #[test]
    fn describes_parts_in_gib() {
        let estimate = MemoryEstimate {
            weights_bytes: (1.1 * GIB) as u64,
            gradients_bytes: (1.1 * GIB) as u64,
            optimizer_bytes: (2.2 * GIB) as u64,
            masks_bytes: 1_600_000,
            activations_bytes: (7.9 * GIB) as u64,
            optimizer_on_host: false,
            teacher_bytes: 0,
        };
        assert_eq!(
            estimate.describe(),
            "peak memory ≈ 12.3 GiB (weights 1.1 GiB, grads 1.1 GiB, adam 2.2 GiB, masks 1.5 MiB, activations 7.9 GiB)"
        );
        assert_eq!(format_bytes(1536), "1.5 KiB");
        assert_eq!(format_bytes(3 << 40), "3.0 TiB");
        assert_eq!(format_bytes(17), "17 B");
    }
}

/// The numbers docs/training.md quotes for pruning LLaMA2-7B (recipes/2.7b.toml's prune stage), so
/// that the docs change when the formulas do.
#[cfg(test)]
mod llama2_7b {
    use super::*;

    fn prune_step(micro_batch: usize, precision: Precision, checkpointing: bool) -> MemoryEstimate {
        prune_step_with(micro_batch, precision, checkpointing, false)
    }

    fn prune_step_with(
        micro_batch: usize,
        precision: Precision,
        checkpointing: bool,
        offload: bool,
    ) -> MemoryEstimate {
        let config = LlamaConfig::new(32000, 4096, 11008, 32, 32, 32);
        assert_eq!(config.parameter_counts().total, 6_738_415_616);
        estimate(
            &config,
            Step::Prune {
                masks: MaskSet::from_modules(&PruningModule::ALL),
                // the paper's 32 sequences per step, in micro-batches of `micro_batch`
                grad_accum: 32 / micro_batch,
            },
            StepShape {
                micro_batch,
                seq_len: 4096,
            },
            MemoryOptions {
                precision,
                activation_checkpointing: checkpointing,
                optimizer_offload: offload,
            },
        )
    }

    #[test]
    fn the_paper_batch_in_one_fp32_pass() {
        let step = prune_step(32, Precision::Fp32, false);
        assert_eq!(step.weights_bytes, 4 * 6_738_415_616);
        // z_loga 32·32 + 32·11008 + 32 + 4096, λ 4·2 → 357,416 values × 5 × 4 bytes.
        assert_eq!(step.masks_bytes, 357_416 * 20);
        assert_eq!(
            step.describe(),
            "peak memory ≈ 4.0 TiB (weights 25.1 GiB, grads 25.1 GiB, adam 50.2 GiB, masks 6.8 MiB, activations 3.9 TiB)"
        );
    }

    #[test]
    fn one_sequence_in_bf16_with_and_without_checkpointing() {
        let plain = prune_step(1, Precision::Bf16, false);
        assert_eq!(
            plain.describe(),
            "peak memory ≈ 201.1 GiB (weights 37.7 GiB, grads 50.2 GiB, adam 50.2 GiB, masks 6.8 MiB, activations 63.1 GiB)"
        );
        let checkpointed = prune_step(1, Precision::Bf16, true);
        assert_eq!(
            checkpointed.describe(),
            "peak memory ≈ 140.4 GiB (weights 37.7 GiB, grads 50.2 GiB, adam 50.2 GiB, masks 6.8 MiB, activations 2.3 GiB)"
        );
        assert_eq!(
            prune_step(1, Precision::Fp32, false).describe(),
            "peak memory ≈ 251.6 GiB (weights 25.1 GiB, grads 50.2 GiB, adam 50.2 GiB, masks 6.8 MiB, activations 126.1 GiB)"
        );
    }

    /// The target of the GPU issue: pruning LLaMA2-7B on ONE 141 GB (131.3 GiB) GPU. Without
    /// offloading the moments, bf16 + checkpointing needs 140.4 GiB; with them on the host the
    /// device peak is the backward's, and micro-batches of 4 sequences (recipes/2.7b.toml) fit.
    #[test]
    fn offloaded_moments_fit_one_141_gb_gpu() {
        let one_gpu = 141e9 as u64;
        assert!(prune_step(1, Precision::Bf16, true).total_bytes() > one_gpu);
        let offloaded = prune_step_with(1, Precision::Bf16, true, true);
        assert_eq!(
            offloaded.describe(),
            "peak memory ≈ 90.2 GiB (weights 37.7 GiB, grads 50.2 GiB, masks 6.8 MiB, activations 2.3 GiB; adam 50.2 GiB on the host between steps)"
        );
        let micro_4 = prune_step_with(4, Precision::Bf16, true, true);
        assert!(micro_4.total_bytes() < one_gpu, "{}", micro_4.describe());
        // Without accumulation the update's end (weights + moments) can be the peak.
        let estimate = MemoryEstimate {
            weights_bytes: 10,
            gradients_bytes: 4,
            optimizer_bytes: 8,
            activations_bytes: 1,
            optimizer_on_host: true,
            ..MemoryEstimate::default()
        };
        assert_eq!(estimate.total_bytes(), 18);
    }
}
