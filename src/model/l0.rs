//! Hard-concrete L0 masks and the per-module Lagrangian of Sheared LLaMA (paper,
//! arXiv 2310.06694 §2.1 "Targeted structured pruning"; docs/pruning.md).
//!
//! Every prunable unit (a layer, an attention head unit, an intermediate dim, a hidden dim) owns a
//! mask logit `z_loga`. Training draws a stretched, clamped hard-concrete sample per unit and forward;
//! evaluation and consolidation use deterministic masks built from the logits. The Lagrangian pulls
//! the expected sparsity of each module to its (warmed-up) target; its multipliers λ1, λ2 start at 0
//! and are trained by gradient ASCENT (the caller negates their gradients).
//!
//! Numbers follow `llmshearing/models/l0_module.py` exactly; see the constants below.

use burn::module::{Module, Param};
use burn::tensor::activation::sigmoid;
use burn::tensor::{Device, Tensor, TensorData};
use rand::Rng;
use rand_distr::{Distribution, Normal};
use serde::{Deserialize, Serialize};

use super::Masks;

/// Left end of the stretched hard-concrete interval (`limit_a`).
pub const LIMIT_LEFT: f64 = -0.1;
/// Right end of the stretched hard-concrete interval (`limit_b`).
pub const LIMIT_RIGHT: f64 = 1.1;
/// `u` is drawn from U(ε, 1−ε) so that `ln u` and `ln(1−u)` stay finite.
pub const EPSILON: f64 = 1e-6;
/// Hard-concrete temperature β.
pub const TEMPERATURE: f64 = 2.0 / 3.0;
/// The reference's "magical number": deterministic soft value = sigmoid(z_loga / β · 0.8) = sigmoid(1.2·z_loga).
pub const MAGICAL_NUMBER: f64 = 0.8;
/// Mean of the z_loga init (the reference overwrites the droprate-derived mean 0 with 5).
pub const Z_LOGA_INIT_MEAN: f64 = 5.0;
/// Standard deviation of the z_loga init.
pub const Z_LOGA_INIT_STD: f64 = 0.01;
/// z_loga is clamped to [ln 0.01, ln 100] before every use.
pub const Z_LOGA_MIN: f64 = -4.605_170_185_988_091; // ln(1e-2)
pub const Z_LOGA_MAX: f64 = 4.605_170_185_988_091; // ln(1e2)

/// The shift in `score = sigmoid(z_loga − β·ln(−l/r))`: −β·ln(0.1/1.1) = (2/3)·ln 11.
pub fn score_shift() -> f64 {
    -TEMPERATURE * (-LIMIT_LEFT / LIMIT_RIGHT).ln()
}

/// A prunable module, named as in the reference's `pruning_modules`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PruningModule {
    /// Attention head units, z_loga `[L, H]`.
    Head,
    /// MLP intermediate dims, z_loga `[L, I]`.
    Intermediate,
    /// Whole decoder layers (attention and MLP together), z_loga `[L]`.
    Layer,
    /// Residual-stream dims shared by all layers, z_loga `[d]`.
    Hidden,
}

impl PruningModule {
    pub const ALL: [PruningModule; 4] = [
        PruningModule::Head,
        PruningModule::Intermediate,
        PruningModule::Layer,
        PruningModule::Hidden,
    ];

    pub fn name(self) -> &'static str {
        match self {
            PruningModule::Head => "head",
            PruningModule::Intermediate => "intermediate",
            PruningModule::Layer => "layer",
            PruningModule::Hidden => "hidden",
        }
    }
}

/// The paper's released recipe prunes all four.
pub fn default_pruning_modules() -> Vec<PruningModule> {
    vec![
        PruningModule::Head,
        PruningModule::Intermediate,
        PruningModule::Layer,
        PruningModule::Hidden,
    ]
}

/// Sizes of the prunable structure of the source model, in mask units.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MaskDims {
    pub layers: usize,
    /// Head-mask units per layer: query heads for multi-head attention, KV groups for GQA.
    pub heads: usize,
    pub intermediate: usize,
    pub hidden: usize,
    /// Parameters one head unit owns per hidden dim: 4·head_dim for MHA (q, k, v, o rows of one head);
    /// (2g + 2)·head_dim for a KV group of g query heads (g q and o heads, one k and one v head).
    pub attention_params_per_head_unit_per_hidden: usize,
}

impl MaskDims {
    /// Size of one row of `module`'s mask (the count a target refers to).
    pub fn size(&self, module: PruningModule) -> usize {
        match module {
            PruningModule::Head => self.heads,
            PruningModule::Intermediate => self.intermediate,
            PruningModule::Layer => self.layers,
            PruningModule::Hidden => self.hidden,
        }
    }

    /// Number of rows (layers for per-layer masks, 1 for the global ones).
    pub fn rows(&self, module: PruningModule) -> usize {
        match module {
            PruningModule::Head | PruningModule::Intermediate => self.layers,
            PruningModule::Layer | PruningModule::Hidden => 1,
        }
    }

    /// Prunable parameter count of the full model (embeddings, lm_head and norms excluded):
    /// L·(attention + 3·d·I). For LLaMA2-7B this is 6,476,005,376.
    pub fn prunable_parameters(&self) -> f64 {
        let attention =
            (self.attention_params_per_head_unit_per_hidden * self.heads * self.hidden) as f64;
        let mlp = (3 * self.hidden * self.intermediate) as f64;
        self.layers as f64 * (attention + mlp)
    }
}

/// The target shape in mask units (one count per module, per row for per-layer masks).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaskTarget {
    pub layers: usize,
    pub heads: usize,
    pub intermediate: usize,
    pub hidden: usize,
}

impl MaskTarget {
    pub fn count(&self, module: PruningModule) -> usize {
        match module {
            PruningModule::Head => self.heads,
            PruningModule::Intermediate => self.intermediate,
            PruningModule::Layer => self.layers,
            PruningModule::Hidden => self.hidden,
        }
    }

    /// Full target sparsity of `module`: 1 − target / source.
    pub fn sparsity(&self, dims: &MaskDims, module: PruningModule) -> f64 {
        1.0 - self.count(module) as f64 / dims.size(module) as f64
    }
}

/// Lagrangian target warm-up (`get_target_sparsity`, start 0): t(step) = t_full·min(1, step / warmup_steps).
pub fn warmed_up_target(full_sparsity: f64, step: usize, warmup_steps: usize) -> f64 {
    if warmup_steps == 0 {
        return full_sparsity;
    }
    full_sparsity * (step as f64 / warmup_steps as f64).min(1.0)
}

/// Mask logits and Lagrange multipliers. A field is `None` when its module is not pruned.
/// Parameter paths contain `z_loga` or `lambda`, which is how the optimiser groups find them.
#[derive(Module, Debug)]
pub struct L0Module {
    pub head_z_loga: Option<Param<Tensor<2>>>,         // [L, H]
    pub intermediate_z_loga: Option<Param<Tensor<2>>>, // [L, I]
    pub layer_z_loga: Option<Param<Tensor<1>>>,        // [L]
    pub hidden_z_loga: Option<Param<Tensor<1>>>,       // [d]
    /// `[λ1, λ2]` per module.
    pub head_lambda: Option<Param<Tensor<1>>>,
    pub intermediate_lambda: Option<Param<Tensor<1>>>,
    pub layer_lambda: Option<Param<Tensor<1>>>,
    pub hidden_lambda: Option<Param<Tensor<1>>>,
    #[module(skip)]
    pub dims: MaskDims,
}

/// Host copy of every z_loga row (after clamping), the input of all deterministic computations.
#[derive(Clone, Debug, PartialEq)]
pub struct HostZLoga {
    pub head: Option<Vec<Vec<f32>>>,
    pub intermediate: Option<Vec<Vec<f32>>>,
    pub layer: Option<Vec<f32>>,
    pub hidden: Option<Vec<f32>>,
}

/// Deterministic mask values on the host (kept units hold sigmoid(1.2·z_loga), pruned ones 0).
#[derive(Clone, Debug, PartialEq)]
pub struct HostMasks {
    pub head: Option<Vec<Vec<f32>>>,
    pub intermediate: Option<Vec<Vec<f32>>>,
    pub layer: Option<Vec<f32>>,
    pub hidden: Option<Vec<f32>>,
}

fn z_loga_init(count: usize, rng: &mut impl Rng) -> Vec<f32> {
    let normal = Normal::new(Z_LOGA_INIT_MEAN, Z_LOGA_INIT_STD).expect("constant, valid normal");
    (0..count).map(|_| normal.sample(rng) as f32).collect()
}

fn param1(values: Vec<f32>, device: &Device) -> Param<Tensor<1>> {
    let count = values.len();
    Param::from_tensor(Tensor::from_data(TensorData::new(values, [count]), device))
}

fn param2(values: Vec<f32>, rows: usize, cols: usize, device: &Device) -> Param<Tensor<2>> {
    Param::from_tensor(Tensor::from_data(
        TensorData::new(values, [rows, cols]),
        device,
    ))
}

fn rows_of(values: Vec<f32>, cols: usize) -> Vec<Vec<f32>> {
    values.chunks(cols.max(1)).map(<[f32]>::to_vec).collect()
}

fn clamp_param<const D: usize>(param: Param<Tensor<D>>) -> Param<Tensor<D>> {
    param.map(|tensor| {
        // Clamp outside the graph (a fresh leaf), as the reference's in-place `.data.clamp_`.
        let require_grad = tensor.is_require_grad();
        if tensor.is_autodiff() {
            tensor
                .inner()
                .clamp(Z_LOGA_MIN, Z_LOGA_MAX)
                .autodiff()
                .set_require_grad(require_grad)
        } else {
            tensor.clamp(Z_LOGA_MIN, Z_LOGA_MAX)
        }
    })
}

/// Expected score (probability that a unit is non-zero): sigmoid(z_loga + (2/3)·ln 11).
/// Tensor form, differentiable; the reference clamps the cdf to [ε, 1−ε].
pub fn expected_score<const D: usize>(z_loga: Tensor<D>) -> Tensor<D> {
    sigmoid(z_loga.add_scalar(score_shift())).clamp(EPSILON, 1.0 - EPSILON)
}

/// Host form of [`expected_score`].
pub fn expected_score_host(z_loga: f32) -> f64 {
    let value = 1.0 / (1.0 + (-(z_loga as f64 + score_shift())).exp());
    value.clamp(EPSILON, 1.0 - EPSILON)
}

/// The U(ε, 1−ε) draws of one hard-concrete sample, one per mask unit (`head [L, G]`,
/// `intermediate [L, I]`, `layer [L]`, `hidden [d]`); `None` for modules not pruned.
#[derive(Debug, Clone)]
pub struct MaskNoise {
    pub head: Option<Tensor<2>>,
    pub intermediate: Option<Tensor<2>>,
    pub layer: Option<Tensor<1>>,
    pub hidden: Option<Tensor<1>>,
}

/// One hard-concrete sample from the uniform draw `u`:
/// z = clamp(sigmoid((ln u − ln(1−u) + z_loga)/β)·(r−l) + l, 0, 1).
pub fn hard_concrete_sample<const D: usize>(z_loga: Tensor<D>, uniform: Tensor<D>) -> Tensor<D> {
    let logistic = uniform.clone().log() - uniform.neg().add_scalar(1.0).log();
    let soft = sigmoid((logistic + z_loga).div_scalar(TEMPERATURE));
    soft.mul_scalar(LIMIT_RIGHT - LIMIT_LEFT)
        .add_scalar(LIMIT_LEFT)
        .clamp(0.0, 1.0)
}

/// Keep the `size − num_zeros` largest `z_loga` of a row; kept units get sigmoid(z_loga/β·0.8), the
/// rest 0. Ties are broken towards the lower index (a stable sort), so the result is reproducible.
pub fn deterministic_row(z_loga_row: &[f32], num_zeros: usize) -> Vec<f32> {
    let mut order: Vec<usize> = (0..z_loga_row.len()).collect();
    order.sort_by(|&a, &b| z_loga_row[a].total_cmp(&z_loga_row[b]).then(b.cmp(&a)));
    let mut values: Vec<f32> = z_loga_row
        .iter()
        .map(|&z| (1.0 / (1.0 + (-(z as f64) / TEMPERATURE * MAGICAL_NUMBER).exp())) as f32)
        .collect();
    for &index in order.iter().take(num_zeros.min(z_loga_row.len())) {
        values[index] = 0.0;
    }
    values
}

/// Number of zeros for an eval-time deterministic row: round(size − Σ score), Python's round
/// (half to even).
pub fn expected_num_zeros(z_loga_row: &[f32]) -> usize {
    let expected_kept: f64 = z_loga_row.iter().map(|&z| expected_score_host(z)).sum();
    zeros_from_expectation(z_loga_row.len(), expected_kept)
}

/// round(size − expected_kept) with ties to even, limited to [0, size].
pub fn zeros_from_expectation(size: usize, expected_kept: f64) -> usize {
    let zeros = (size as f64 - expected_kept).round_ties_even();
    zeros.clamp(0.0, size as f64) as usize
}

impl L0Module {
    /// Fresh logits N(5, 0.01) for every module in `modules`, λ = 0. The draw comes from `rng` so a
    /// seed fixes it on every backend.
    pub fn new(
        dims: MaskDims,
        modules: &[PruningModule],
        device: &Device,
        rng: &mut impl Rng,
    ) -> Self {
        let has = |module: PruningModule| modules.contains(&module);
        let mut module = L0Module {
            head_z_loga: None,
            intermediate_z_loga: None,
            layer_z_loga: None,
            hidden_z_loga: None,
            head_lambda: None,
            intermediate_lambda: None,
            layer_lambda: None,
            hidden_lambda: None,
            dims: dims.clone(),
        };
        // Draw in a fixed module order so the stream does not depend on how `modules` is written.
        if has(PruningModule::Head) {
            let values = z_loga_init(dims.layers * dims.heads, rng);
            module.head_z_loga = Some(param2(values, dims.layers, dims.heads, device));
            module.head_lambda = Some(param1(vec![0.0, 0.0], device));
        }
        if has(PruningModule::Intermediate) {
            let values = z_loga_init(dims.layers * dims.intermediate, rng);
            module.intermediate_z_loga =
                Some(param2(values, dims.layers, dims.intermediate, device));
            module.intermediate_lambda = Some(param1(vec![0.0, 0.0], device));
        }
        if has(PruningModule::Layer) {
            module.layer_z_loga = Some(param1(z_loga_init(dims.layers, rng), device));
            module.layer_lambda = Some(param1(vec![0.0, 0.0], device));
        }
        if has(PruningModule::Hidden) {
            module.hidden_z_loga = Some(param1(z_loga_init(dims.hidden, rng), device));
            module.hidden_lambda = Some(param1(vec![0.0, 0.0], device));
        }
        module
    }

    /// Which modules this instance prunes, in canonical order.
    pub fn modules(&self) -> Vec<PruningModule> {
        let mut modules = Vec::new();
        if self.head_z_loga.is_some() {
            modules.push(PruningModule::Head);
        }
        if self.intermediate_z_loga.is_some() {
            modules.push(PruningModule::Intermediate);
        }
        if self.layer_z_loga.is_some() {
            modules.push(PruningModule::Layer);
        }
        if self.hidden_z_loga.is_some() {
            modules.push(PruningModule::Hidden);
        }
        modules
    }

    /// Clamp every z_loga to [ln 0.01, ln 100] in place, as the reference does (on `.data`, so no
    /// gradient flows through the clamp). Call before every use.
    pub fn clamp_z_loga(mut self) -> Self {
        self.head_z_loga = self.head_z_loga.map(clamp_param);
        self.intermediate_z_loga = self.intermediate_z_loga.map(clamp_param);
        self.layer_z_loga = self.layer_z_loga.map(clamp_param);
        self.hidden_z_loga = self.hidden_z_loga.map(clamp_param);
        self
    }

    /// Training-time hard-concrete sample of every mask (`head_z` per KV group, as [`Masks`] defines); one draw per unit from `rng`
    /// (U(ε, 1−ε)), shared by the whole batch.
    pub fn sample(&self, rng: &mut impl Rng) -> Masks {
        self.masks_from_noise(&self.draw_noise(rng))
    }

    /// The uniform noise of one hard-concrete sample, drawn from `rng` in module order (head,
    /// intermediate, layer, hidden). Kept apart from [`Self::masks_from_noise`] so that a step with
    /// gradient accumulation draws once and rebuilds the same masks in each micro-batch's own graph.
    pub fn draw_noise(&self, rng: &mut impl Rng) -> MaskNoise {
        fn uniform<const D: usize>(reference: &Param<Tensor<D>>, rng: &mut impl Rng) -> Tensor<D> {
            let reference = reference.val();
            let shape = reference.shape();
            let values: Vec<f32> = (0..shape.num_elements())
                .map(|_| rng.random_range(EPSILON..1.0 - EPSILON) as f32)
                .collect();
            Tensor::from_data(TensorData::new(values, shape), &reference.device())
        }
        MaskNoise {
            head: self.head_z_loga.as_ref().map(|p| uniform(p, rng)),
            intermediate: self.intermediate_z_loga.as_ref().map(|p| uniform(p, rng)),
            layer: self.layer_z_loga.as_ref().map(|p| uniform(p, rng)),
            hidden: self.hidden_z_loga.as_ref().map(|p| uniform(p, rng)),
        }
    }

    /// The hard-concrete masks of the current z_loga under `noise` (a fresh autodiff graph each call).
    pub fn masks_from_noise(&self, noise: &MaskNoise) -> Masks {
        fn sample<const D: usize>(
            z_loga: &Option<Param<Tensor<D>>>,
            u: &Option<Tensor<D>>,
        ) -> Option<Tensor<D>> {
            match (z_loga, u) {
                (Some(z_loga), Some(u)) => Some(hard_concrete_sample(z_loga.val(), u.clone())),
                _ => None,
            }
        }
        Masks {
            layer_z: sample(&self.layer_z_loga, &noise.layer),
            head_z: sample(&self.head_z_loga, &noise.head),
            intermediate_z: sample(&self.intermediate_z_loga, &noise.intermediate),
            hidden_z: sample(&self.hidden_z_loga, &noise.hidden),
        }
    }

    /// Expected sparsity of `module` per row: 1 − Σ score / size. `[rows]` (rows = L or 1).
    pub fn expected_sparsity(&self, module: PruningModule) -> Option<Tensor<1>> {
        let size = self.dims.size(module) as f64;
        let per_row = |score: Tensor<2>| -> Tensor<1> {
            let rows = score.dims()[0];
            score
                .sum_dim(1)
                .reshape([rows])
                .div_scalar(size)
                .neg()
                .add_scalar(1.0)
        };
        match module {
            PruningModule::Head => self
                .head_z_loga
                .as_ref()
                .map(|p| per_row(expected_score(p.val()))),
            PruningModule::Intermediate => self
                .intermediate_z_loga
                .as_ref()
                .map(|p| per_row(expected_score(p.val()))),
            PruningModule::Layer => self.layer_z_loga.as_ref().map(|p| {
                expected_score(p.val())
                    .sum()
                    .div_scalar(size)
                    .neg()
                    .add_scalar(1.0)
            }),
            PruningModule::Hidden => self.hidden_z_loga.as_ref().map(|p| {
                expected_score(p.val())
                    .sum()
                    .div_scalar(size)
                    .neg()
                    .add_scalar(1.0)
            }),
        }
    }

    fn lambda(&self, module: PruningModule) -> Option<&Param<Tensor<1>>> {
        match module {
            PruningModule::Head => self.head_lambda.as_ref(),
            PruningModule::Intermediate => self.intermediate_lambda.as_ref(),
            PruningModule::Layer => self.layer_lambda.as_ref(),
            PruningModule::Hidden => self.hidden_lambda.as_ref(),
        }
    }

    /// The Lagrangian with per-module targets `targets(module)` (already warmed up):
    /// Σ_m mean_over_rows[ λ1_m·(s_m − t_m) + λ2_m·(s_m − t_m)² ]. Shape `[1]`.
    /// Returns `None` when no module is pruned.
    pub fn lagrangian(&self, targets: impl Fn(PruningModule) -> f64) -> Option<Tensor<1>> {
        let mut total: Option<Tensor<1>> = None;
        for module in self.modules() {
            let (Some(sparsity), Some(lambda)) =
                (self.expected_sparsity(module), self.lambda(module))
            else {
                continue;
            };
            let lambda = lambda.val(); // [2]
            let lambda_1 = lambda.clone().narrow(0, 0, 1); // [1]
            let lambda_2 = lambda.narrow(0, 1, 1); // [1]
            let gap = sparsity.sub_scalar(targets(module)); // [rows]
            let term = (gap.clone() * lambda_1 + gap.square() * lambda_2).mean(); // [1]
            total = Some(match total {
                Some(sum) => sum + term,
                None => term,
            });
        }
        total
    }

    /// Copy the (clamped) logits to the host. Reads go through `inner()` so that logging never
    /// builds autodiff graph nodes that no backward would free.
    pub fn host_z_loga(&self) -> HostZLoga {
        let to_rows = |p: &Param<Tensor<2>>| {
            let tensor = p.val().inner().clamp(Z_LOGA_MIN, Z_LOGA_MAX);
            let cols = tensor.dims()[1];
            rows_of(
                tensor.into_data().try_into_vec::<f32>().unwrap_or_default(),
                cols,
            )
        };
        let to_vec = |p: &Param<Tensor<1>>| {
            p.val()
                .inner()
                .clamp(Z_LOGA_MIN, Z_LOGA_MAX)
                .into_data()
                .try_into_vec::<f32>()
                .unwrap_or_default()
        };
        HostZLoga {
            head: self.head_z_loga.as_ref().map(to_rows),
            intermediate: self.intermediate_z_loga.as_ref().map(to_rows),
            layer: self.layer_z_loga.as_ref().map(to_vec),
            hidden: self.hidden_z_loga.as_ref().map(to_vec),
        }
    }

    /// Current `[λ1, λ2]` of `module` on the host.
    pub fn host_lambda(&self, module: PruningModule) -> Option<[f32; 2]> {
        let values = self
            .lambda(module)?
            .val()
            .into_data()
            .try_into_vec::<f32>()
            .ok()?;
        Some([*values.first()?, *values.get(1)?])
    }
}

impl HostZLoga {
    /// Deterministic masks for evaluation during pruning (`eval_target_model = false`): per row,
    /// zero the round(size − Σ score) smallest logits.
    pub fn eval_masks(&self) -> HostMasks {
        let row = |r: &Vec<f32>| deterministic_row(r, expected_num_zeros(r));
        HostMasks {
            head: self
                .head
                .as_ref()
                .map(|rows| rows.iter().map(row).collect()),
            intermediate: self
                .intermediate
                .as_ref()
                .map(|rows| rows.iter().map(row).collect()),
            layer: self.layer.as_ref().map(row),
            hidden: self.hidden.as_ref().map(row),
        }
    }

    /// Deterministic masks for consolidation (`eval_target_model = true`): per row, keep exactly the
    /// target count of highest logits.
    pub fn target_masks(&self, target: &MaskTarget) -> HostMasks {
        let row = |r: &Vec<f32>, keep: usize| deterministic_row(r, r.len().saturating_sub(keep));
        HostMasks {
            head: self
                .head
                .as_ref()
                .map(|rows| rows.iter().map(|r| row(r, target.heads)).collect()),
            intermediate: self
                .intermediate
                .as_ref()
                .map(|rows| rows.iter().map(|r| row(r, target.intermediate)).collect()),
            layer: self.layer.as_ref().map(|r| row(r, target.layers)),
            hidden: self.hidden.as_ref().map(|r| row(r, target.hidden)),
        }
    }

    /// Expected number of remaining prunable parameters (paper §2.1; embeddings, lm_head and norms
    /// excluded): (Σ h)·[P_head·Σ_{l,h} ℓ_l a_{l,h} + 3·Σ_{l,j} ℓ_l m_{l,j}], with absent modules
    /// counting as fully kept.
    pub fn expected_parameters(&self, dims: &MaskDims) -> f64 {
        let scores = |row: &[f32]| {
            row.iter()
                .map(|&z| expected_score_host(z))
                .collect::<Vec<f64>>()
        };
        let layer_scores: Vec<f64> = match &self.layer {
            Some(row) => scores(row),
            None => vec![1.0; dims.layers],
        };
        let hidden_kept: f64 = match &self.hidden {
            Some(row) => scores(row).iter().sum(),
            None => dims.hidden as f64,
        };
        let per_layer_sum = |rows: &Option<Vec<Vec<f32>>>, width: usize| -> f64 {
            (0..dims.layers)
                .map(|l| {
                    let kept: f64 = match rows.as_ref().and_then(|rows| rows.get(l)) {
                        Some(row) => scores(row).iter().sum(),
                        None => width as f64,
                    };
                    layer_scores.get(l).copied().unwrap_or(1.0) * kept
                })
                .sum()
        };
        let heads = per_layer_sum(&self.head, dims.heads);
        let intermediate = per_layer_sum(&self.intermediate, dims.intermediate);
        hidden_kept
            * (dims.attention_params_per_head_unit_per_hidden as f64 * heads + 3.0 * intermediate)
    }

    /// Expected sparsity per row of `module` on the host (for logs).
    pub fn expected_sparsity(&self, module: PruningModule) -> Option<Vec<f64>> {
        let row = |r: &Vec<f32>| {
            1.0 - r.iter().map(|&z| expected_score_host(z)).sum::<f64>() / r.len().max(1) as f64
        };
        match module {
            PruningModule::Head => self
                .head
                .as_ref()
                .map(|rows| rows.iter().map(row).collect()),
            PruningModule::Intermediate => self
                .intermediate
                .as_ref()
                .map(|rows| rows.iter().map(row).collect()),
            PruningModule::Layer => self.layer.as_ref().map(|r| vec![row(r)]),
            PruningModule::Hidden => self.hidden.as_ref().map(|r| vec![row(r)]),
        }
    }
}

impl HostMasks {
    /// Number of kept (non-zero) units per row of `module`, or `None` when it is not pruned.
    pub fn kept(&self, module: PruningModule) -> Option<Vec<usize>> {
        let count = |r: &Vec<f32>| r.iter().filter(|&&v| v != 0.0).count();
        match module {
            PruningModule::Head => self
                .head
                .as_ref()
                .map(|rows| rows.iter().map(count).collect()),
            PruningModule::Intermediate => self
                .intermediate
                .as_ref()
                .map(|rows| rows.iter().map(count).collect()),
            PruningModule::Layer => self.layer.as_ref().map(|r| vec![count(r)]),
            PruningModule::Hidden => self.hidden.as_ref().map(|r| vec![count(r)]),
        }
    }

    /// Upload to `device` in the shapes the masked forward takes.
    pub fn to_masks(&self, device: &Device) -> Masks {
        let two = |rows: &Vec<Vec<f32>>| {
            let cols = rows.first().map(Vec::len).unwrap_or(0);
            let flat: Vec<f32> = rows.iter().flatten().copied().collect();
            Tensor::<2>::from_data(TensorData::new(flat, [rows.len(), cols]), device)
        };
        let one = |row: &Vec<f32>| {
            Tensor::<1>::from_data(TensorData::new(row.clone(), [row.len()]), device)
        };
        Masks {
            layer_z: self.layer.as_ref().map(one),
            head_z: self.head.as_ref().map(two),
            intermediate_z: self.intermediate.as_ref().map(two),
            hidden_z: self.hidden.as_ref().map(one),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn sigmoid_f64(x: f64) -> f64 {
        1.0 / (1.0 + (-x).exp())
    }

    fn dims() -> MaskDims {
        MaskDims {
            layers: 2,
            heads: 4,
            intermediate: 8,
            hidden: 16,
            attention_params_per_head_unit_per_hidden: 16,
        }
    }

    fn host(tensor: Tensor<1>) -> Vec<f32> {
        tensor.into_data().try_into_vec::<f32>().unwrap()
    }

    #[test]
    fn constants_match_the_reference() {
        assert!((score_shift() - (2.0 / 3.0) * 11f64.ln()).abs() < 1e-12);
        assert!((score_shift() - 1.598_597).abs() < 1e-6);
        assert!((Z_LOGA_MAX - 100f64.ln()).abs() < 1e-12);
        assert!((Z_LOGA_MIN + 100f64.ln()).abs() < 1e-12);
    }

    #[test]
    fn expected_score_at_zero_and_bounds() {
        let device = crate::model::device::for_tests();
        let z = Tensor::<1>::from_floats([0.0, Z_LOGA_MAX as f32, Z_LOGA_MIN as f32], &device);
        let score = host(expected_score(z));
        assert!((score[0] as f64 - sigmoid_f64((2.0 / 3.0) * 11f64.ln())).abs() < 1e-6);
        // At the clamp limits P(z≠0) is 0.998 and 0.047.
        assert!((score[1] as f64 - 0.998).abs() < 5e-4, "{}", score[1]);
        assert!((score[2] as f64 - 0.047).abs() < 5e-4, "{}", score[2]);
        assert!((expected_score_host(0.0) - 0.831_822_184).abs() < 1e-8);
    }

    #[test]
    fn hard_concrete_sample_hand_values() {
        let device = crate::model::device::for_tests();
        // u = 0.5: logistic noise 0, so z = clamp(1.2·sigmoid(z_loga/β) − 0.1, 0, 1).
        let z_loga = Tensor::<1>::from_floats([0.0, 1.0, -3.0, 4.0], &device);
        let u = Tensor::<1>::from_floats([0.5, 0.5, 0.5, 0.5], &device);
        let z = host(hard_concrete_sample(z_loga, u));
        let expect = |zl: f64| (1.2 * sigmoid_f64(zl / (2.0 / 3.0)) - 0.1).clamp(0.0, 1.0);
        for (got, zl) in z.iter().zip([0.0, 1.0, -3.0, 4.0]) {
            assert!(
                (*got as f64 - expect(zl)).abs() < 1e-6,
                "{got} vs {}",
                expect(zl)
            );
        }
        assert!((z[0] - 0.5).abs() < 1e-6);
        assert_eq!(z[2], 0.0);
        assert_eq!(z[3], 1.0);
        // u = 0.9 at z_loga = 0: sigmoid(ln 9 / β) = 9^1.5 / (1 + 9^1.5) = 27/28.
        let z = host(hard_concrete_sample(
            Tensor::<1>::from_floats([0.0], &device),
            Tensor::from_floats([0.9], &device),
        ));
        assert!((z[0] as f64 - (1.2f64 * 27.0 / 28.0 - 0.1).min(1.0)).abs() < 1e-6);
    }

    #[test]
    fn deterministic_rows_keep_the_highest_with_soft_values() {
        let row = [0.5f32, -1.0, 2.0, 0.0];
        let values = deterministic_row(&row, 2);
        assert_eq!(values[1], 0.0);
        assert_eq!(values[3], 0.0);
        assert!((values[0] as f64 - sigmoid_f64(1.2 * 0.5)).abs() < 1e-6);
        assert!((values[2] as f64 - sigmoid_f64(2.4)).abs() < 1e-6);
        // Maximum kept value at the clamp: sigmoid(1.2·ln 100) = 0.99603.
        let top = deterministic_row(&[Z_LOGA_MAX as f32], 0);
        assert!((top[0] as f64 - 0.99603).abs() < 1e-5);
        // Ties: the lower index survives.
        let tied = deterministic_row(&[1.0, 1.0, 1.0], 2);
        assert!(tied[0] > 0.0 && tied[1] == 0.0 && tied[2] == 0.0);
    }

    #[test]
    fn expected_zero_count_rounds_half_to_even() {
        // 4 units expecting 1.5 kept → 2.5 zeros → 2; 0.5 kept → 3.5 zeros → 4 (Python's round).
        assert_eq!(zeros_from_expectation(4, 1.5), 2);
        assert_eq!(zeros_from_expectation(4, 0.5), 4);
        assert_eq!(zeros_from_expectation(4, 1.4), 3);
        assert_eq!(zeros_from_expectation(4, 4.3), 0);
        // And a value just over one half rounds up: all at z = 0 keep 4·0.8318 = 3.327 → 0.673 → 1 zero.
        assert_eq!(expected_num_zeros(&[0.0; 4]), 1);
    }

    #[test]
    fn expected_parameters_full_model_and_llama_7b_total() {
        let device = crate::model::device::for_tests();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let dims = dims();
        let module = L0Module::new(dims.clone(), &default_pruning_modules(), &device, &mut rng)
            .clamp_z_loga();
        let host_z = module.host_z_loga();
        // All logits at ln 100 → every score 0.998119...; E[N] = s_h·(16·s_l·s_a·8 + 3·s_l·s_m·16) scaled.
        let s = expected_score_host(Z_LOGA_MAX as f32);
        let expect = (16.0 * s) * (16.0 * (2.0 * s * 4.0 * s) + 3.0 * (2.0 * s * 8.0 * s));
        let got = host_z.expected_parameters(&dims);
        assert!((got - expect).abs() / expect < 1e-5, "{got} vs {expect}");
        assert!(got < dims.prunable_parameters());
        let llama_7b = MaskDims {
            layers: 32,
            heads: 32,
            intermediate: 11008,
            hidden: 4096,
            attention_params_per_head_unit_per_hidden: 4 * 128,
        };
        assert_eq!(llama_7b.prunable_parameters(), 6_476_005_376.0);
        // Without masks the expectation is the full count.
        let none = HostZLoga {
            head: None,
            intermediate: None,
            layer: None,
            hidden: None,
        };
        assert_eq!(none.expected_parameters(&llama_7b), 6_476_005_376.0);
    }

    #[test]
    fn target_masks_are_exact_and_eval_masks_use_expectations() {
        let device = crate::model::device::for_tests();
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let module =
            L0Module::new(dims(), &default_pruning_modules(), &device, &mut rng).clamp_z_loga();
        let host_z = module.host_z_loga();
        let target = MaskTarget {
            layers: 1,
            heads: 3,
            intermediate: 5,
            hidden: 10,
        };
        let masks = host_z.target_masks(&target);
        assert_eq!(masks.kept(PruningModule::Head), Some(vec![3, 3]));
        assert_eq!(masks.kept(PruningModule::Intermediate), Some(vec![5, 5]));
        assert_eq!(masks.kept(PruningModule::Layer), Some(vec![1]));
        assert_eq!(masks.kept(PruningModule::Hidden), Some(vec![10]));
        // Fresh logits (≈ 4.6) expect 0.998 of each row kept → round(size·0.0019) zeros = 0.
        let eval = host_z.eval_masks();
        assert_eq!(eval.kept(PruningModule::Intermediate), Some(vec![8, 8]));
    }

    #[test]
    fn init_is_normal_5_then_clamped() {
        let device = crate::model::device::for_tests();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let module = L0Module::new(dims(), &[PruningModule::Hidden], &device, &mut rng);
        let raw = host(module.hidden_z_loga.as_ref().unwrap().val());
        let mean: f32 = raw.iter().sum::<f32>() / raw.len() as f32;
        assert!((mean - 5.0).abs() < 0.02);
        let clamped = module.clamp_z_loga();
        let values = host(clamped.hidden_z_loga.as_ref().unwrap().val());
        assert!(values.iter().all(|&v| (v as f64 - Z_LOGA_MAX).abs() < 1e-6));
        assert!(clamped.head_z_loga.is_none() && clamped.head_lambda.is_none());
        assert_eq!(clamped.modules(), vec![PruningModule::Hidden]);
    }

    #[test]
    fn lagrangian_hand_value_and_warmup() {
        let device = crate::model::device::for_tests();
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let mut module = L0Module::new(
            dims(),
            &[PruningModule::Head, PruningModule::Layer],
            &device,
            &mut rng,
        );
        // Head logits: layer 0 all 0, layer 1 all Z_MAX; λ_head = (2, 3). Layer logits 0, λ_layer = (1, 0).
        let zmax = Z_LOGA_MAX as f32;
        module.head_z_loga = Some(param2(
            vec![0.0, 0.0, 0.0, 0.0, zmax, zmax, zmax, zmax],
            2,
            4,
            &device,
        ));
        module.head_lambda = Some(param1(vec![2.0, 3.0], &device));
        module.layer_z_loga = Some(param1(vec![0.0, 0.0], &device));
        module.layer_lambda = Some(param1(vec![1.0, 0.0], &device));
        let target = |m: PruningModule| match m {
            PruningModule::Head => 0.5,
            _ => 0.25,
        };
        let got = host(module.lagrangian(target).unwrap())[0] as f64;
        let s0 = 1.0 - expected_score_host(0.0);
        let s1 = 1.0 - expected_score_host(zmax);
        let head = ((2.0 * (s0 - 0.5) + 3.0 * (s0 - 0.5).powi(2))
            + (2.0 * (s1 - 0.5) + 3.0 * (s1 - 0.5).powi(2)))
            / 2.0;
        let layer = 1.0 * (s0 - 0.25);
        assert!(
            (got - (head + layer)).abs() < 1e-5,
            "{got} vs {}",
            head + layer
        );
        // λ start at 0 → Lagrangian 0 at init.
        let fresh = L0Module::new(dims(), &default_pruning_modules(), &device, &mut rng);
        assert_eq!(host(fresh.lagrangian(|_| 0.5).unwrap())[0], 0.0);
        // Warm-up: linear from 0 to the full target over the warm-up steps, then flat.
        assert_eq!(warmed_up_target(0.5, 0, 640), 0.0);
        assert!((warmed_up_target(0.5, 320, 640) - 0.25).abs() < 1e-12);
        assert_eq!(warmed_up_target(0.5, 6400, 640), 0.5);
        assert_eq!(warmed_up_target(0.5, 0, 0), 0.5);
    }

    #[test]
    fn lagrangian_gradients_reach_lambda_and_z_loga() {
        let device = crate::model::device::for_tests().autodiff();
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let module =
            L0Module::new(dims(), &[PruningModule::Layer], &device, &mut rng).clamp_z_loga();
        let loss = module.lagrangian(|_| 0.5).unwrap();
        let grads = loss.backward();
        let lambda_grad = module
            .layer_lambda
            .as_ref()
            .unwrap()
            .val()
            .grad(&grads)
            .unwrap();
        let values = lambda_grad.into_data().try_into_vec::<f32>().unwrap();
        // dL/dλ1 = s − t, dL/dλ2 = (s − t)² with s = 1 − score(ln 100).
        let gap = (1.0 - expected_score_host(Z_LOGA_MAX as f32)) - 0.5;
        assert!((values[0] as f64 - gap).abs() < 1e-5);
        assert!((values[1] as f64 - gap * gap).abs() < 1e-5);
    }

    #[test]
    fn samples_are_seeded_and_in_range() {
        let device = crate::model::device::for_tests();
        let mut rng = ChaCha8Rng::seed_from_u64(6);
        let module =
            L0Module::new(dims(), &default_pruning_modules(), &device, &mut rng).clamp_z_loga();
        let a = module.sample(&mut ChaCha8Rng::seed_from_u64(9));
        let b = module.sample(&mut ChaCha8Rng::seed_from_u64(9));
        let a_values = a
            .intermediate_z
            .unwrap()
            .into_data()
            .try_into_vec::<f32>()
            .unwrap();
        let b_values = b
            .intermediate_z
            .unwrap()
            .into_data()
            .try_into_vec::<f32>()
            .unwrap();
        assert_eq!(a_values, b_values);
        assert!(a_values.iter().all(|&v| (0.0..=1.0).contains(&v)));
        assert_eq!(a.head_z.unwrap().dims(), [2, 4]);
        assert_eq!(a.hidden_z.unwrap().dims(), [16]);
    }
}
