//! The `prune` output folder: full-size HF model + `masks.safetensors` + `pruning.json`.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::{Method, PruneConfig, ResolvedTarget};
use crate::model::l0::{HostMasks, HostZLoga, L0Module, PruningModule};
use crate::model::{Llama, LlamaConfig, save_hf};
use crate::stage::{StageContext, StageError};

/// Mask file: final deterministic masks `{head,intermediate,layer,hidden}_z` (what consolidation
/// folds), plus `*_z_loga` and `*_lambda` for learned masks.
pub const MASKS_FILE: &str = "masks.safetensors";
/// Summary: method, source/target/final shapes, expected vs target sparsity.
pub const PRUNING_FILE: &str = "pruning.json";

/// One module's unit scores in `pruning.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModuleScores {
    /// What the numbers are, in words; within a row, the kept units are the highest.
    pub score: String,
    /// Rows as in `kept_indices` (`head` and `intermediate`: one per layer).
    pub rows: Vec<Vec<f64>>,
}

/// Every pruned module's unit scores, by module name.
pub type UnitScores = BTreeMap<String, ModuleScores>;

/// How the units were chosen, for the report.
pub enum Selection<'a> {
    /// Learned masks: their λ, expected sparsity and log α (the scores).
    Learned(&'a L0Module, &'a HostZLoga),
    /// A one-shot method and the scores it ranked units by.
    OneShot(UnitScores),
}

/// A model shape in the recipe's units (heads are query heads).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shape {
    pub layers: usize,
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub intermediate: usize,
}

/// `pruning.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PruningReport {
    pub method: Method,
    pub source: Shape,
    pub target: Shape,
    /// The shape the final deterministic masks give (equal to `target` by construction; checked).
    pub final_shape: Shape,
    pub pruning_modules: Vec<PruningModule>,
    /// Kept units per row of each pruned module (per layer for head/intermediate).
    pub final_kept: BTreeMap<String, Vec<usize>>,
    /// Which units each row keeps, by index (`head` and `intermediate`: one row per layer; `layer`
    /// and `hidden`: one row), the same for every method, so that two methods' choices can be
    /// compared unit by unit.
    #[serde(default)]
    pub kept_indices: BTreeMap<String, Vec<Vec<usize>>>,
    /// Every unit's score as the method ranked it (for `l0`, the final `z_loga`), so that methods
    /// can be compared by more than their choice: how close the cut was, which units they agree
    /// on ranking high.
    #[serde(default)]
    pub scores: UnitScores,
    /// Mean expected sparsity per module at the end (learned masks only).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub expected_sparsity: BTreeMap<String, f64>,
    pub target_sparsity: BTreeMap<String, f64>,
    /// Expected remaining prunable parameters at the end (learned masks only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_parameters: Option<f64>,
    /// Prunable parameters (embeddings, lm_head and norms excluded) of the source and the target.
    pub source_parameters: f64,
    pub target_parameters: f64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub lambda: BTreeMap<String, [f32; 2]>,
    pub steps: usize,
}

impl Shape {
    /// The config of the dense model of this shape cut out of `source`, as `consolidate` writes it:
    /// the source's vocabulary, head_dim, norms and RoPE with this shape's widths.
    pub fn dense_config(&self, source: &LlamaConfig) -> LlamaConfig {
        let mut config = source.clone();
        config.num_hidden_layers = self.layers;
        config.hidden_size = self.hidden;
        config.num_attention_heads = self.heads;
        config.num_key_value_heads = self.kv_heads;
        config.intermediate_size = self.intermediate;
        config.layer_widths = None;
        config
    }
}

/// The dense config that consolidating the `prune` output in `dir` gives (its `config.json` and
/// `pruning.json`); `None` when either is missing or unreadable.
pub fn consolidated_config(dir: &Path) -> Option<LlamaConfig> {
    let source = LlamaConfig::load(&dir.join("config.json")).ok()?;
    let text = std::fs::read_to_string(dir.join(PRUNING_FILE)).ok()?;
    let report: PruningReport = serde_json::from_str(&text).ok()?;
    Some(report.target.dense_config(&source))
}

pub(super) fn target_shape(resolved: &ResolvedTarget) -> Shape {
    Shape {
        layers: resolved.mask_target.layers,
        hidden: resolved.mask_target.hidden,
        heads: resolved.mask_target.heads * resolved.query_heads_per_unit,
        kv_heads: resolved.kv_heads,
        intermediate: resolved.mask_target.intermediate,
    }
}

fn source_shape(source: &LlamaConfig) -> Shape {
    Shape {
        layers: source.num_hidden_layers,
        hidden: source.hidden_size,
        heads: source.num_attention_heads,
        kv_heads: source.num_key_value_heads,
        intermediate: source.intermediate_size,
    }
}

fn target_parameters(resolved: &ResolvedTarget) -> f64 {
    let t = &resolved.mask_target;
    let attention =
        (resolved.dims.attention_params_per_head_unit_per_hidden * t.heads * t.hidden) as f64;
    t.layers as f64 * (attention + (3 * t.hidden * t.intermediate) as f64)
}

/// The shape the masks give: kept layers, kept hidden dims, and the per-layer head / intermediate
/// counts of the kept layers (an error if they differ between kept layers: a target is uniform).
fn final_shape(masks: &HostMasks, resolved: &ResolvedTarget) -> Result<Shape, StageError> {
    let dims = &resolved.dims;
    let kept_layers: Vec<usize> = match &masks.layer {
        Some(z) => (0..dims.layers).filter(|&l| z[l] != 0.0).collect(),
        None => (0..dims.layers).collect(),
    };
    let uniform =
        |name: &str, rows: &Option<Vec<Vec<f32>>>, full: usize| -> Result<usize, StageError> {
            let counts: Vec<usize> = kept_layers
                .iter()
                .map(|&l| {
                    rows.as_ref()
                        .map_or(full, |rows| rows[l].iter().filter(|v| **v != 0.0).count())
                })
                .collect();
            match counts.first() {
                Some(&first) if counts.iter().all(|&c| c == first) => Ok(first),
                Some(_) => Err(StageError::Other(anyhow::anyhow!(
                    "the final {name} masks keep different counts per layer: {counts:?}"
                ))),
                None => Ok(0),
            }
        };
    let groups = uniform("head", &masks.head, dims.heads)?;
    Ok(Shape {
        layers: kept_layers.len(),
        hidden: masks
            .hidden
            .as_ref()
            .map_or(dims.hidden, |z| z.iter().filter(|v| **v != 0.0).count()),
        heads: groups * resolved.query_heads_per_unit,
        kv_heads: groups,
        intermediate: uniform("intermediate", &masks.intermediate, dims.intermediate)?,
    })
}

/// Each pruned module's rows (`head` and `intermediate`: one per layer; `layer` and `hidden`:
/// one), from the four fields that masks and `z_loga` share.
fn module_rows<'a>(
    head: Option<&'a Vec<Vec<f32>>>,
    intermediate: Option<&'a Vec<Vec<f32>>>,
    layer: Option<&'a Vec<f32>>,
    hidden: Option<&'a Vec<f32>>,
) -> Vec<(PruningModule, Vec<&'a [f32]>)> {
    let per_layer = |rows: &'a Vec<Vec<f32>>| rows.iter().map(Vec::as_slice).collect();
    [
        (PruningModule::Head, head.map(per_layer)),
        (PruningModule::Intermediate, intermediate.map(per_layer)),
        (PruningModule::Layer, layer.map(|row| vec![row.as_slice()])),
        (
            PruningModule::Hidden,
            hidden.map(|row| vec![row.as_slice()]),
        ),
    ]
    .into_iter()
    .filter_map(|(module, rows)| Some((module, rows?)))
    .collect()
}

/// The indices of the nonzero entries of each row of each module's final mask.
fn kept_indices(masks: &HostMasks) -> BTreeMap<String, Vec<Vec<usize>>> {
    let indices = |row: &[f32]| -> Vec<usize> {
        row.iter()
            .enumerate()
            .filter(|(_, value)| **value != 0.0)
            .map(|(index, _)| index)
            .collect()
    };
    module_rows(
        masks.head.as_ref(),
        masks.intermediate.as_ref(),
        masks.layer.as_ref(),
        masks.hidden.as_ref(),
    )
    .into_iter()
    .map(|(module, rows)| {
        let rows = rows.into_iter().map(indices).collect();
        (module.name().to_string(), rows)
    })
    .collect()
}

/// The learned masks' scores: the final `z_loga` of every unit (the deterministic masks keep the
/// largest of each row).
fn z_loga_scores(host_z: &HostZLoga) -> UnitScores {
    const SCORE: &str = "z_loga: the hard-concrete log alpha after training; the deterministic \
                         masks keep the target count of the largest";
    module_rows(
        host_z.head.as_ref(),
        host_z.intermediate.as_ref(),
        host_z.layer.as_ref(),
        host_z.hidden.as_ref(),
    )
    .into_iter()
    .map(|(module, rows)| {
        let rows = rows
            .into_iter()
            .map(|row| row.iter().map(|&value| f64::from(value)).collect())
            .collect();
        let scores = ModuleScores {
            score: SCORE.to_string(),
            rows,
        };
        (module.name().to_string(), scores)
    })
    .collect()
}

fn kept_counts(masks: &HostMasks) -> BTreeMap<String, Vec<usize>> {
    PruningModule::ALL
        .iter()
        .filter_map(|&m| masks.kept(m).map(|k| (m.name().to_string(), k)))
        .collect()
}

/// The report for any method; learned masks add the end-of-training expectations.
pub fn report(
    method: Method,
    config: &PruneConfig,
    source: &LlamaConfig,
    resolved: &ResolvedTarget,
    masks: &HostMasks,
    selection: Selection<'_>,
) -> Result<PruningReport, StageError> {
    let target = target_shape(resolved);
    let final_shape = final_shape(masks, resolved)?;
    if final_shape != target {
        return Err(StageError::Other(anyhow::anyhow!(
            "internal error: the final masks give shape {final_shape:?}, not the target {target:?}"
        )));
    }
    let modules: Vec<PruningModule> = PruningModule::ALL
        .iter()
        .copied()
        .filter(|&m| masks.kept(m).is_some())
        .collect();
    let mut expected_sparsity = BTreeMap::new();
    let mut lambda = BTreeMap::new();
    let mut expected_parameters = None;
    let (scores, learned) = match selection {
        Selection::OneShot(scores) => (scores, None),
        Selection::Learned(l0, host_z) => (z_loga_scores(host_z), Some((l0, host_z))),
    };
    if let Some((l0, host_z)) = learned {
        for &module in &modules {
            let rows = host_z.expected_sparsity(module).unwrap_or_default();
            expected_sparsity.insert(
                module.name().to_string(),
                rows.iter().sum::<f64>() / rows.len().max(1) as f64,
            );
            if let Some(values) = l0.host_lambda(module) {
                lambda.insert(module.name().to_string(), values);
            }
        }
        expected_parameters = Some(host_z.expected_parameters(&resolved.dims));
    }
    let target_sparsity = modules
        .iter()
        .map(|&m| {
            (
                m.name().to_string(),
                resolved.mask_target.sparsity(&resolved.dims, m),
            )
        })
        .collect();
    Ok(PruningReport {
        method,
        source: source_shape(source),
        target,
        final_shape,
        pruning_modules: modules,
        final_kept: kept_counts(masks),
        kept_indices: kept_indices(masks),
        scores,
        expected_sparsity,
        target_sparsity,
        expected_parameters,
        source_parameters: resolved.dims.prunable_parameters(),
        target_parameters: target_parameters(resolved),
        lambda,
        steps: if method == Method::L0 {
            config.steps
        } else {
            0
        },
    })
}

fn flat_rows(rows: &[Vec<f32>]) -> (Vec<f32>, Vec<usize>) {
    let cols = rows.first().map_or(0, Vec::len);
    (
        rows.iter().flatten().copied().collect(),
        vec![rows.len(), cols],
    )
}

/// Write the whole output folder (except `metrics.jsonl`).
pub fn write(
    ctx: &StageContext<'_>,
    model: &Llama,
    tokenizer_from: Option<&Path>,
    masks: &HostMasks,
    l0: Option<&L0Module>,
    report: &PruningReport,
) -> Result<(), StageError> {
    save_hf(model, &ctx.out_dir, tokenizer_from)
        .map_err(|error| StageError::Other(error.into()))?;
    let mut tensors: Vec<(String, Vec<f32>, Vec<usize>)> = Vec::new();
    let mut push_masks = |suffix: &str, values: &HostMasks| {
        if let Some(rows) = &values.head {
            let (flat, shape) = flat_rows(rows);
            tensors.push((format!("head_{suffix}"), flat, shape));
        }
        if let Some(rows) = &values.intermediate {
            let (flat, shape) = flat_rows(rows);
            tensors.push((format!("intermediate_{suffix}"), flat, shape));
        }
        if let Some(row) = &values.layer {
            tensors.push((format!("layer_{suffix}"), row.clone(), vec![row.len()]));
        }
        if let Some(row) = &values.hidden {
            tensors.push((format!("hidden_{suffix}"), row.clone(), vec![row.len()]));
        }
    };
    push_masks("z", masks);
    if let Some(l0) = l0 {
        let host = l0.host_z_loga();
        let as_masks = HostMasks {
            head: host.head,
            intermediate: host.intermediate,
            layer: host.layer,
            hidden: host.hidden,
        };
        push_masks("z_loga", &as_masks);
        for module in l0.modules() {
            if let Some(values) = l0.host_lambda(module) {
                tensors.push((
                    format!("{}_lambda", module.name()),
                    values.to_vec(),
                    vec![2],
                ));
            }
        }
    }
    crate::model::hf::write_safetensors(
        &ctx.out_dir.join(MASKS_FILE),
        tensors,
        crate::model::hf::WeightDtype::F32,
    )
    .map_err(|error| StageError::Other(error.into()))?;
    let json = serde_json::to_string_pretty(report).context("serialising pruning.json")?;
    let path = ctx.out_dir.join(PRUNING_FILE);
    std::fs::write(&path, json + "\n").with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Values and shape of one tensor.
type FlatTensor = (Vec<f32>, Vec<usize>);

/// Read the final masks and the report of a `prune` output folder. Errors name the file.
pub fn read_final_masks(dir: &Path) -> Result<(HostMasks, PruningReport), StageError> {
    let bad = |path: &Path, message: String| {
        StageError::input("model", format!("{}: {message}", path.display()))
    };
    let report_path = dir.join(PRUNING_FILE);
    let text = std::fs::read_to_string(&report_path).map_err(|error| {
        bad(
            &report_path,
            format!("{error}; is this the output of a `prune` stage?"),
        )
    })?;
    let report: PruningReport =
        serde_json::from_str(&text).map_err(|error| bad(&report_path, error.to_string()))?;
    let masks_path = dir.join(MASKS_FILE);
    let bytes = std::fs::read(&masks_path).map_err(|error| bad(&masks_path, error.to_string()))?;
    let file = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|error| bad(&masks_path, error.to_string()))?;
    let read = |name: &str| -> Result<Option<FlatTensor>, StageError> {
        let Ok(view) = file.tensor(name) else {
            return Ok(None);
        };
        if view.dtype() != safetensors::Dtype::F32 {
            return Err(bad(
                &masks_path,
                format!("tensor `{name}` is {:?}, expected F32", view.dtype()),
            ));
        }
        let values: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        Ok(Some((values, view.shape().to_vec())))
    };
    let rows = |name: &str| -> Result<Option<Vec<Vec<f32>>>, StageError> {
        match read(name)? {
            None => Ok(None),
            Some((values, shape)) if shape.len() == 2 && shape[1] > 0 => {
                Ok(Some(values.chunks(shape[1]).map(<[f32]>::to_vec).collect()))
            }
            Some((_, shape)) => Err(bad(
                &masks_path,
                format!("tensor `{name}` has shape {shape:?}, expected 2 dims"),
            )),
        }
    };
    let masks = HostMasks {
        head: rows("head_z")?,
        intermediate: rows("intermediate_z")?,
        layer: read("layer_z")?.map(|(values, _)| values),
        hidden: read("hidden_z")?.map(|(values, _)| values),
    };
    Ok((masks, report))
}
