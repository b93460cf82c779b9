//! `sheared compare`: recipes (or sweep variants) side by side.
//!
//! A library over plain inputs so that whatever produced the runs (the runner's plan + store, or a test)
//! can feed it: per variant its name, its flattened parameters (`stages.prune.target.hidden` → `1024`)
//! and, per stage, the cache key, the compute seconds of its committed run and its `metrics.json`.
//!
//! Columns are the parameters that differ between variants (the ones that make it an ablation), then
//! metrics: per-domain eval loss, task accuracies, parameter counts, tokens seen, compute seconds; every
//! metric also as the delta to the first row (the baseline). Stages whose cache key occurs in an earlier
//! variant were computed once and reused; the summary says how much compute that saved.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;
use serde_json::Value;

use crate::stage::StageMetrics;
use crate::util::differ::{Leaves, cut_with_hash, distinguishing};
use crate::util::fmt::group_thousands;

/// One stage of one variant, as the runner knows it after (or without) running.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StageInput {
    /// The stage's name in the recipe (`prune`, `eval_source`).
    pub name: String,
    /// Its kind (`prune`, `train`, `eval`, ...).
    pub kind: String,
    /// Its cache key (hex); equal keys mean one computation.
    pub key: String,
    /// The plan's label of this definition of the stage (`method=l0` in `eval-distill[method=l0]`)
    /// when the stage name has several; `None` otherwise.
    pub label: Option<String>,
    /// Seconds its committed run took (`None` if not committed).
    pub seconds: Option<f64>,
    /// Its `metrics.json`, if it wrote one.
    pub metrics: Option<Value>,
}

/// One row: a recipe or a sweep variant.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct VariantInput {
    pub name: String,
    /// Every parameter of the resolved recipe as dotted key → display text (see [`flatten_toml`]).
    pub params: BTreeMap<String, String>,
    pub stages: Vec<StageInput>,
}

/// A stage a variant did not compute itself.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reuse {
    pub stage: String,
    pub key: String,
    /// The first variant that has this key.
    pub from: String,
}

/// One rendered row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    pub variant: String,
    /// The first variant of the run, which the deltas are relative to.
    pub baseline: bool,
    /// Values of [`Comparison::param_columns`] (`None`: the variant does not set it). A folded
    /// column (a changed sub-table) shows what tells this row's table from the others'.
    pub params: Vec<Option<String>>,
    /// Every parameter that differs between the rows, unfolded: dotted key → value.
    pub changed: BTreeMap<String, String>,
    /// Values of [`Comparison::metric_columns`].
    pub metrics: Vec<Option<f64>>,
    /// `metrics[i] − first row's metrics[i]`.
    pub deltas: Vec<Option<f64>>,
    pub reused: Vec<Reuse>,
}

/// The whole comparison, ready to render.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    pub param_columns: Vec<String>,
    pub metric_columns: Vec<String>,
    pub rows: Vec<Row>,
    /// Stages that have the same key in every variant (they cannot explain a difference).
    pub shared_by_all: Vec<String>,
    /// Σ seconds over every (variant, stage) pair: what running each variant alone would cost.
    pub seconds_without_cache: f64,
    /// Σ seconds over distinct keys: what the shared runs cost.
    pub seconds_with_cache: f64,
}

/// Flatten a TOML table into dotted keys (`a.b.c`) with TOML-formatted values; arrays and inline
/// values stay whole (`[1, 2]`), tables recurse.
pub fn flatten_toml(table: &toml::Table) -> BTreeMap<String, String> {
    fn walk(prefix: &str, table: &toml::Table, out: &mut BTreeMap<String, String>) {
        for (key, value) in table {
            let dotted = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            match value {
                toml::Value::Table(inner) => walk(&dotted, inner, out),
                toml::Value::String(text) => {
                    out.insert(dotted, text.clone());
                }
                other => {
                    out.insert(dotted, other.to_string());
                }
            }
        }
    }
    let mut out = BTreeMap::new();
    walk("", table, &mut out);
    out
}

/// Whether a stage reports eval metrics: kind `eval`, or a `command` stage (e.g. one running
/// lm-eval-harness) whose `metrics.json` has `domains` or `tasks` objects in the eval stage's format.
/// (A train stage's `domains` holds its final weights and losses, not an evaluation of the result.)
fn is_eval_like(stage: &StageInput) -> bool {
    stage.kind == "eval"
        || (stage.kind == "command"
            && stage
                .metrics
                .as_ref()
                .and_then(StageMetrics::from_value)
                .is_some_and(|m| m.domains.is_some() || m.tasks.is_some()))
}

/// Metric columns and values of one variant, in a stable order (see [`compare`]).
fn variant_metrics(
    variant: &VariantInput,
    eval_prefix: &dyn Fn(&str) -> String,
) -> BTreeMap<(u8, String), f64> {
    let mut out = BTreeMap::new();
    let mut tokens_from_training = None::<f64>;
    let mut tokens_from_eval = None::<f64>;
    let mut seconds = None::<f64>;
    for stage in &variant.stages {
        if let Some(value) = stage.seconds {
            *seconds.get_or_insert(0.0) += value;
        }
        let Some(metrics) = stage.metrics.as_ref().and_then(StageMetrics::from_value) else {
            continue;
        };
        if matches!(stage.kind.as_str(), "train" | "prune")
            && let Some(tokens) = metrics.tokens()
        {
            *tokens_from_training.get_or_insert(0.0) += tokens;
        }
        if !is_eval_like(stage) {
            continue;
        }
        let prefix = eval_prefix(&stage.name);
        if let Some(domains) = &metrics.domains {
            let losses: Vec<f64> = domains
                .iter()
                .filter_map(|(domain, values)| {
                    let loss = values.loss?;
                    out.insert((0, format!("{prefix}loss.{domain}")), loss);
                    Some(loss)
                })
                .collect();
            if losses.len() > 1 {
                out.insert(
                    (1, format!("{prefix}loss.mean")),
                    losses.iter().sum::<f64>() / losses.len() as f64,
                );
            }
        }
        for (task, values) in metrics.tasks.iter().flatten() {
            for (metric, value) in [
                ("acc", values.acc),
                ("acc_norm", values.acc_norm),
                ("exact_match", values.exact_match),
                ("perplexity", values.perplexity),
            ] {
                if let Some(value) = value {
                    out.insert((2, format!("{prefix}{task}.{metric}")), value);
                }
            }
        }
        if let Some(counts) = metrics.parameter_counts() {
            for (count, value) in [
                ("total", counts.total()),
                ("non_embedding", counts.non_embedding()),
            ] {
                if let Some(value) = value {
                    out.insert((3, format!("{prefix}params.{count}")), value);
                }
            }
        }
        if let Some(tokens) = metrics.tokens_upstream() {
            tokens_from_eval = Some(tokens_from_eval.map_or(tokens, |seen: f64| seen.max(tokens)));
        }
    }
    if let Some(tokens) = tokens_from_training.or(tokens_from_eval) {
        out.insert((4, "tokens".into()), tokens);
    }
    if let Some(seconds) = seconds {
        out.insert((5, "seconds".into()), seconds);
    }
    out
}

/// One row per evaluated model instead of per variant (`sheared compare --by-stage`): every
/// eval-like stage with metrics becomes a row `variant/stage` holding just that stage, so the source
/// model's scores (an `eval-source` shared by every variant, which [`compare`] leaves out as identical
/// columns), the pruned-only model's and the final model's sit in one table with the same columns.
/// A stage whose key several variants share is one row with only the parameters those variants
/// agree on, named by the stage alone when it has one definition, else by the plan's label of its
/// definition (`method=l0/eval-distill` for a stage that one pruning method's variants share
/// across loading policies). The stage is renamed `eval` in its
/// row so that columns are not prefixed per stage.
pub fn by_stage(variants: &[VariantInput]) -> Vec<VariantInput> {
    let mut owners: HashMap<&str, Vec<&VariantInput>> = HashMap::new();
    for variant in variants {
        for stage in &variant.stages {
            owners.entry(stage.key.as_str()).or_default().push(variant);
        }
    }
    let mut seen = BTreeSet::new();
    let mut shared_rows = Vec::new();
    let mut own_rows = Vec::new();
    for variant in variants {
        for stage in variant
            .stages
            .iter()
            .filter(|s| is_eval_like(s) && s.metrics.is_some())
        {
            if !seen.insert(stage.key.as_str()) {
                continue;
            }
            let sharers = &owners[stage.key.as_str()];
            let shared = sharers.len() > 1 && variants.len() > 1;
            let row = VariantInput {
                name: match (&stage.label, shared) {
                    (_, false) => format!("{}/{}", variant.name, stage.name),
                    (Some(label), true) => format!("{label}/{}", stage.name),
                    (None, true) => stage.name.clone(),
                },
                params: if shared {
                    common_params(sharers)
                } else {
                    variant.params.clone()
                },
                stages: vec![StageInput {
                    name: "eval".into(),
                    ..stage.clone()
                }],
            };
            if shared {
                shared_rows.push(row);
            } else {
                own_rows.push(row);
            }
        }
    }
    shared_rows.extend(own_rows);
    shared_rows
}

/// The parameters every one of `variants` has with the same value: a shared row carries those,
/// so only the ones that make the ablation become columns (and a row every variant shares shows
/// none of them).
fn common_params(variants: &[&VariantInput]) -> BTreeMap<String, String> {
    let Some((first, rest)) = variants.split_first() else {
        return BTreeMap::new();
    };
    first
        .params
        .iter()
        .filter(|(key, value)| rest.iter().all(|v| v.params.get(*key) == Some(*value)))
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect()
}

/// Build the comparison. The first variant is the baseline for deltas.
pub fn compare(variants: &[VariantInput]) -> Comparison {
    // Parameters that differ (a key missing in some variant differs too).
    let all_keys: BTreeSet<&String> = variants.iter().flat_map(|v| v.params.keys()).collect();
    let changed_keys: Vec<String> = all_keys
        .into_iter()
        .filter(|key| {
            let values: Vec<Option<&String>> =
                variants.iter().map(|v| v.params.get(*key)).collect();
            values.windows(2).any(|pair| pair[0] != pair[1])
        })
        .cloned()
        .collect();
    let param_groups = fold_columns(&changed_keys);
    let param_cells: Vec<Vec<Option<String>>> = param_groups
        .iter()
        .map(|(column, leaves)| column_cells(column, leaves, variants))
        .collect();
    let param_columns: Vec<String> = param_groups.into_iter().map(|(column, _)| column).collect();

    // Keys shared by every variant, and the first owner of each key.
    let mut first_owner: HashMap<&str, &str> = HashMap::new();
    let mut seconds_by_key: HashMap<&str, f64> = HashMap::new();
    let mut seconds_without_cache = 0.0;
    for variant in variants {
        for stage in &variant.stages {
            first_owner.entry(&stage.key).or_insert(&variant.name);
            if let Some(seconds) = stage.seconds {
                seconds_without_cache += seconds;
                seconds_by_key.insert(&stage.key, seconds);
            }
        }
    }
    let seconds_with_cache: f64 = seconds_by_key.values().sum();
    let shared_keys: BTreeSet<&str> = match variants.split_first() {
        Some((first, rest)) if !rest.is_empty() => first
            .stages
            .iter()
            .map(|stage| stage.key.as_str())
            .filter(|key| {
                rest.iter()
                    .all(|v| v.stages.iter().any(|stage| stage.key == *key))
            })
            .collect(),
        _ => BTreeSet::new(),
    };
    let shared_by_all: Vec<String> = variants
        .first()
        .map(|first| {
            first
                .stages
                .iter()
                .filter(|s| shared_keys.contains(s.key.as_str()))
                .map(|s| s.name.clone())
                .collect()
        })
        .unwrap_or_default();

    // Metrics of stages shared by all would be identical columns: leave them out. Prefix eval metrics
    // with the stage name only when more than one eval stage contributes.
    let contributing_evals: BTreeSet<&str> = variants
        .iter()
        .flat_map(|v| v.stages.iter())
        .filter(|s| is_eval_like(s) && s.metrics.is_some() && !shared_keys.contains(s.key.as_str()))
        .map(|s| s.name.as_str())
        .collect();
    let prefix = |name: &str| {
        if contributing_evals.len() > 1 {
            format!("{name}:")
        } else {
            String::new()
        }
    };
    let per_variant: Vec<BTreeMap<(u8, String), f64>> = variants
        .iter()
        .map(|variant| {
            let visible = VariantInput {
                stages: variant
                    .stages
                    .iter()
                    .filter(|s| !(is_eval_like(s) && shared_keys.contains(s.key.as_str())))
                    .cloned()
                    .collect(),
                ..VariantInput::default()
            };
            let mut metrics = variant_metrics(&visible, &prefix);
            // Tokens and seconds are about the whole variant, shared stages included.
            let whole = variant_metrics(variant, &prefix);
            for key in [(4, "tokens".to_string()), (5, "seconds".to_string())] {
                match whole.get(&key) {
                    Some(value) => metrics.insert(key, *value),
                    None => metrics.remove(&key),
                };
            }
            metrics
        })
        .collect();
    let column_keys: BTreeSet<&(u8, String)> = per_variant.iter().flat_map(|m| m.keys()).collect();
    let metric_columns: Vec<String> = column_keys.iter().map(|(_, name)| name.clone()).collect();

    let baseline = per_variant.first();
    let rows = variants
        .iter()
        .zip(&per_variant)
        .enumerate()
        .map(|(row_index, (variant, metrics))| {
            let values: Vec<Option<f64>> = column_keys
                .iter()
                .map(|key| metrics.get(*key).copied())
                .collect();
            let deltas = column_keys
                .iter()
                .zip(&values)
                .map(|(key, value)| Some(value.as_ref()? - baseline?.get(*key)?))
                .collect();
            let reused = variant
                .stages
                .iter()
                .filter_map(|stage| {
                    let owner = *first_owner.get(stage.key.as_str())?;
                    (owner != variant.name).then(|| Reuse {
                        stage: stage.name.clone(),
                        key: stage.key.clone(),
                        from: owner.to_string(),
                    })
                })
                .collect();
            Row {
                variant: variant.name.clone(),
                baseline: row_index == 0,
                params: param_cells
                    .iter()
                    .map(|cells| cells[row_index].clone())
                    .collect(),
                changed: changed_keys
                    .iter()
                    .filter_map(|key| Some((key.clone(), variant.params.get(key)?.clone())))
                    .collect(),
                metrics: values,
                deltas,
                reused,
            }
        })
        .collect();
    Comparison {
        param_columns,
        metric_columns,
        rows,
        shared_by_all,
        seconds_without_cache,
        seconds_with_cache,
    }
}

/// The longest a folded column's cell gets before it is cut and hashed.
const MAX_FOLDED_CHARS: usize = 32;

/// The table a parameter belongs to when it changes with others: `stages.<stage>.<key>` (e.g.
/// `stages.train.loading`) or `settings.<key>`; `None` for a top-level value of either.
fn fold_prefix(key: &str) -> Option<String> {
    let segments: Vec<&str> = key.split('.').collect();
    let depth = if segments.first() == Some(&"stages") {
        3
    } else {
        2
    };
    (segments.len() > depth).then(|| segments[..depth].join("."))
}

/// Changed parameters as columns: the leaves of one changed sub-table fold into one column named
/// by the table (`stages.train.loading`) when two or more of them change; other leaves stay their
/// own columns. Each column with the leaves it shows, in key order.
fn fold_columns(changed: &[String]) -> Vec<(String, Vec<String>)> {
    let mut by_prefix: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for key in changed {
        if let Some(prefix) = fold_prefix(key) {
            by_prefix.entry(prefix).or_default().push(key.clone());
        }
    }
    let mut columns: Vec<(String, Vec<String>)> = Vec::new();
    for key in changed {
        match fold_prefix(key) {
            Some(prefix) if by_prefix[&prefix].len() > 1 => {
                if !columns.iter().any(|(column, _)| *column == prefix) {
                    columns.push((prefix.clone(), by_prefix[&prefix].clone()));
                }
            }
            _ => columns.push((key.clone(), vec![key.clone()])),
        }
    }
    columns
}

/// Each variant's cell of one column: the value of a single leaf, or for a folded table what tells
/// the variant's table from the others' ([`distinguishing`]; `policy=static`), cut when long.
fn column_cells(column: &str, leaves: &[String], variants: &[VariantInput]) -> Vec<Option<String>> {
    if let [key] = leaves
        && key == column
    {
        return variants
            .iter()
            .map(|v| v.params.get(key).cloned())
            .collect();
    }
    let own: Vec<Leaves> = variants
        .iter()
        .map(|variant| {
            leaves
                .iter()
                .filter_map(|key| {
                    let value = variant.params.get(key)?;
                    let path = key.strip_prefix(column)?.trim_start_matches('.');
                    Some((path.to_string(), value.clone()))
                })
                .collect()
        })
        .collect();
    distinguishing(&own)
        .into_iter()
        .zip(&own)
        .map(|(text, leaves)| {
            (!leaves.is_empty()).then(|| {
                let identity = format!("{leaves:?}");
                cut_with_hash(&text, &identity, MAX_FOLDED_CHARS)
            })
        })
        .collect()
}

/// What `sheared compare` shows of a comparison: which columns, which rows first.
#[derive(Debug, Clone, Default)]
pub struct View {
    /// Keep only the parameter and metric columns whose names contain one of these (empty: all).
    pub columns: Vec<String>,
    /// Drop metric columns that have the same value in every row.
    pub only_changed: bool,
    /// Sort rows by this metric column, ascending (rows without it last).
    pub sort: Option<String>,
    /// Sort descending instead.
    pub reverse: bool,
}

/// `comparison` as `view` asks. Deltas stay relative to the first variant of the run (the baseline),
/// wherever sorting puts it. An unknown sort column or a column filter that matches nothing is an
/// error that lists the columns.
pub fn apply_view(mut comparison: Comparison, view: &View) -> Result<Comparison, String> {
    let listing = |comparison: &Comparison| {
        comparison
            .param_columns
            .iter()
            .chain(&comparison.metric_columns)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ")
    };
    if let Some(sort) = &view.sort {
        let Some(index) = comparison.metric_columns.iter().position(|c| c == sort) else {
            return Err(format!(
                "--sort {sort}: no such metric column; the metric columns are: {}",
                comparison.metric_columns.join(", ")
            ));
        };
        comparison.rows.sort_by(|a, b| {
            let (a, b) = (a.metrics[index], b.metrics[index]);
            match (a, b) {
                (Some(a), Some(b)) if view.reverse => b.total_cmp(&a),
                (Some(a), Some(b)) => a.total_cmp(&b),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => std::cmp::Ordering::Equal,
            }
        });
    }
    let keep_metric: Vec<bool> = (0..comparison.metric_columns.len())
        .map(|index| {
            let name = &comparison.metric_columns[index];
            let wanted = view.columns.is_empty() || view.columns.iter().any(|c| name.contains(c));
            let values: Vec<Option<f64>> = comparison
                .rows
                .iter()
                .map(|row| row.metrics[index])
                .collect();
            let changes = values.windows(2).any(|pair| pair[0] != pair[1]);
            wanted && (!view.only_changed || changes)
        })
        .collect();
    let keep_param: Vec<bool> = comparison
        .param_columns
        .iter()
        .map(|name| view.columns.is_empty() || view.columns.iter().any(|c| name.contains(c)))
        .collect();
    if !view.columns.is_empty() && !keep_metric.iter().chain(&keep_param).any(|keep| *keep) {
        return Err(format!(
            "--columns {}: matches no column; the columns are: {}",
            view.columns.join(","),
            listing(&comparison)
        ));
    }
    let filter = |items: Vec<String>, keep: &[bool]| -> Vec<String> {
        items
            .into_iter()
            .zip(keep)
            .filter_map(|(item, keep)| keep.then_some(item))
            .collect()
    };
    comparison.metric_columns = filter(comparison.metric_columns, &keep_metric);
    comparison.param_columns = filter(comparison.param_columns, &keep_param);
    for row in &mut comparison.rows {
        let pick = |values: &mut Vec<Option<f64>>| {
            *values = values
                .iter()
                .zip(&keep_metric)
                .filter_map(|(value, keep)| keep.then_some(*value))
                .collect();
        };
        pick(&mut row.metrics);
        pick(&mut row.deltas);
        row.params = row
            .params
            .iter()
            .zip(&keep_param)
            .filter(|(_, keep)| **keep)
            .map(|(value, _)| value.clone())
            .collect();
    }
    Ok(comparison)
}

/// Output formats of `sheared compare`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum Format {
    /// Aligned plain text for a terminal.
    #[default]
    Table,
    /// A Markdown table (for docs/results.md).
    Md,
    /// CSV with one column per metric and one per delta.
    Csv,
    /// The [`Comparison`] as JSON.
    Json,
}

/// Human formatting by column: counts as integers with thousands separators, seconds with one
/// decimal, everything else with four.
pub(super) fn format_value(column: &str, value: f64) -> String {
    if column.ends_with("params.total")
        || column.ends_with("params.non_embedding")
        || column == "tokens"
    {
        group_thousands(value.round() as i64)
    } else if column == "seconds" {
        format!("{value:.1}")
    } else {
        format!("{value:.4}")
    }
}

pub(super) fn format_delta(column: &str, delta: f64) -> String {
    let text = format_value(column, delta.abs());
    if delta < 0.0 {
        format!("-{text}")
    } else {
        format!("+{text}")
    }
}

pub(super) fn short_key(key: &str) -> &str {
    key.get(..12).unwrap_or(key)
}

/// Header and cell texts shared by the table and Markdown renderers.
fn text_cells(comparison: &Comparison) -> (Vec<String>, Vec<Vec<String>>) {
    let mut header = vec!["variant".to_string()];
    header.extend(comparison.param_columns.iter().cloned());
    header.extend(comparison.metric_columns.iter().cloned());
    let cells = comparison
        .rows
        .iter()
        .map(|row| {
            let mut cells = vec![row.variant.clone()];
            cells.extend(
                row.params
                    .iter()
                    .map(|value| value.clone().unwrap_or_else(|| "—".into())),
            );
            for ((column, value), delta) in comparison
                .metric_columns
                .iter()
                .zip(&row.metrics)
                .zip(&row.deltas)
            {
                cells.push(match (value, delta) {
                    (None, _) => "—".into(),
                    (Some(value), Some(delta)) if !row.baseline => {
                        format!(
                            "{} ({})",
                            format_value(column, *value),
                            format_delta(column, *delta)
                        )
                    }
                    (Some(value), _) => format_value(column, *value),
                });
            }
            cells
        })
        .collect();
    (header, cells)
}

/// Lines about reuse and saved compute, shared by the text renderers.
fn reuse_lines(comparison: &Comparison) -> Vec<String> {
    let mut lines = Vec::new();
    for row in &comparison.rows {
        if row.reused.is_empty() {
            continue;
        }
        let items: Vec<String> = row
            .reused
            .iter()
            .map(|r| format!("{} ({} from {})", r.stage, short_key(&r.key), r.from))
            .collect();
        lines.push(format!("{} reused: {}", row.variant, items.join(", ")));
    }
    if !comparison.shared_by_all.is_empty() {
        lines.push(format!(
            "shared by every variant: {}",
            comparison.shared_by_all.join(", ")
        ));
    }
    let saved = comparison.seconds_without_cache - comparison.seconds_with_cache;
    if comparison.seconds_without_cache > 0.0 {
        lines.push(format!(
            "compute: {:.1} s with the cache, {:.1} s if every variant ran alone (saved {:.1} s, {:.0}%)",
            comparison.seconds_with_cache,
            comparison.seconds_without_cache,
            saved,
            100.0 * saved / comparison.seconds_without_cache
        ));
    }
    lines
}

fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

/// `text` broken at spaces into lines of at most `width` characters (continuations indented by two);
/// a word longer than the width stays whole. Without a width, one line.
fn wrap(text: &str, width: Option<usize>) -> Vec<String> {
    let Some(width) = width else {
        return vec![text.to_string()];
    };
    let mut lines: Vec<String> = Vec::new();
    let mut current = String::new();
    for word in text.split(' ') {
        let length = current.chars().count();
        if length > 0 && length + 1 + word.chars().count() > width {
            lines.push(std::mem::replace(&mut current, "  ".to_string()));
        } else if length > 0 && !current.trim().is_empty() {
            current.push(' ');
        }
        current.push_str(word);
    }
    lines.push(current);
    lines
}

/// Columns of a table `widths` wide in blocks that fit `width` characters (two between columns),
/// each block starting with column 0 (the variant); a column wider than `width` gets a block alone.
fn column_blocks(widths: &[usize], width: Option<usize>) -> Vec<Vec<usize>> {
    let Some(limit) = width else {
        return vec![(0..widths.len()).collect()];
    };
    let mut blocks: Vec<Vec<usize>> = Vec::new();
    let mut current = vec![0];
    let mut used = widths.first().copied().unwrap_or(0);
    for column in 1..widths.len() {
        if current.len() > 1 && used + 2 + widths[column] > limit {
            blocks.push(std::mem::replace(&mut current, vec![0]));
            used = widths[0];
        }
        current.push(column);
        used += 2 + widths[column];
    }
    blocks.push(current);
    blocks
}

/// Render in `format`. Every format ends with a newline. `width` (characters) applies to the
/// table: wider tables are wrapped into blocks of columns, each led by the variant column.
pub fn render(comparison: &Comparison, format: Format, width: Option<usize>) -> String {
    match format {
        Format::Json => serde_json::to_string_pretty(comparison).unwrap_or_default() + "\n",
        Format::Csv => {
            let mut header = vec!["variant".to_string()];
            header.extend(comparison.param_columns.iter().cloned());
            header.extend(comparison.metric_columns.iter().cloned());
            header.extend(
                comparison
                    .metric_columns
                    .iter()
                    .map(|c| format!("delta.{c}")),
            );
            header.push("reused".into());
            let mut out = header
                .iter()
                .map(|h| csv_field(h))
                .collect::<Vec<_>>()
                .join(",")
                + "\n";
            let number = |value: &Option<f64>| value.map(|v| v.to_string()).unwrap_or_default();
            for row in &comparison.rows {
                let mut fields = vec![csv_field(&row.variant)];
                fields.extend(
                    row.params
                        .iter()
                        .map(|p| csv_field(p.as_deref().unwrap_or(""))),
                );
                fields.extend(row.metrics.iter().map(number));
                fields.extend(row.deltas.iter().map(number));
                let reused: Vec<String> = row
                    .reused
                    .iter()
                    .map(|r| format!("{}<-{}", r.stage, r.from))
                    .collect();
                fields.push(csv_field(&reused.join(" ")));
                out += &(fields.join(",") + "\n");
            }
            out
        }
        Format::Md => {
            let (header, cells) = text_cells(comparison);
            let escape = |text: &str| text.replace('|', "\\|");
            let mut out = format!(
                "| {} |\n",
                header
                    .iter()
                    .map(|h| escape(h))
                    .collect::<Vec<_>>()
                    .join(" | ")
            );
            out += &format!("|{}\n", "---|".repeat(header.len()));
            for row in cells {
                out += &format!(
                    "| {} |\n",
                    row.iter()
                        .map(|c| escape(c))
                        .collect::<Vec<_>>()
                        .join(" | ")
                );
            }
            let notes = reuse_lines(comparison);
            if !notes.is_empty() {
                out.push('\n');
                for line in notes {
                    out += &format!("- {line}\n");
                }
            }
            out
        }
        Format::Table => {
            let (header, cells) = text_cells(comparison);
            let widths: Vec<usize> = (0..header.len())
                .map(|column| {
                    std::iter::once(&header[column])
                        .chain(cells.iter().map(|row| &row[column]))
                        .map(|t| t.chars().count())
                        .max()
                        .unwrap_or(0)
                })
                .collect();
            let line = |row: &[String], columns: &[usize]| {
                columns
                    .iter()
                    .map(|&column| {
                        let text = &row[column];
                        format!(
                            "{text}{}",
                            " ".repeat(widths[column] - text.chars().count())
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("  ")
                    .trim_end()
                    .to_string()
                    + "\n"
            };
            let mut out = String::new();
            for (index, block) in column_blocks(&widths, width).iter().enumerate() {
                if index > 0 {
                    out.push('\n');
                }
                out += &line(&header, block);
                for row in &cells {
                    out += &line(row, block);
                }
            }
            let notes = reuse_lines(comparison);
            if !notes.is_empty() {
                out.push('\n');
                for note in notes {
                    for line in wrap(&note, width) {
                        out += &format!("{line}\n");
                    }
                }
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn by_stage_gives_the_shared_source_eval_and_each_model_its_own_row() {
        let eval = |name: &str, key: &str, acc: f64| StageInput {
            name: name.into(),
            kind: "eval".into(),
            key: key.into(),
            label: None,
            seconds: Some(1.0),
            metrics: Some(serde_json::json!({"tasks": {"arc_easy": {"acc": acc}}})),
        };
        let variant = |method: &str, keys: [&str; 2]| VariantInput {
            name: format!("r[{method}]"),
            params: BTreeMap::from([("stages.prune.method".to_string(), method.to_string())]),
            stages: vec![
                eval("eval-source", "k-source", 0.5),
                eval("eval-pruned", keys[0], 0.3),
                eval("eval", keys[1], 0.4),
            ],
        };
        let rows = by_stage(&[variant("l0", ["a", "b"]), variant("magnitude", ["c", "d"])]);
        let names: Vec<&str> = rows.iter().map(|row| row.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "eval-source",
                "r[l0]/eval-pruned",
                "r[l0]/eval",
                "r[magnitude]/eval-pruned",
                "r[magnitude]/eval"
            ]
        );
        assert!(rows[0].params.is_empty()); // the variants agree on no parameter here
        let comparison = compare(&rows);
        assert!(
            comparison
                .metric_columns
                .contains(&"arc_easy.acc".to_string()),
            "{:?}",
            comparison.metric_columns
        );
        assert_eq!(comparison.rows[0].metrics[0], Some(0.5));
        assert_eq!(comparison.param_columns, ["stages.prune.method"]);
    }

    /// A stage shared by some variants only (a distillation stage that reads the pruning method
    /// but not the loading policy) is one row per key, named by the plan's label of its definition
    /// and carrying its sharers' common parameters.
    #[test]
    fn by_stage_names_a_partly_shared_stage_by_what_its_sharers_have_in_common() {
        let variant = |policy: &str, method: &str| VariantInput {
            name: format!("r[policy={policy},method={method}]"),
            params: BTreeMap::from([
                ("stages.prune.method".to_string(), method.to_string()),
                (
                    "stages.train.loading.policy".to_string(),
                    policy.to_string(),
                ),
            ]),
            stages: vec![StageInput {
                name: "eval-distill".into(),
                kind: "eval".into(),
                key: format!("distill-{method}"),
                label: Some(format!("method={method}")),
                seconds: Some(1.0),
                metrics: Some(serde_json::json!({"tasks": {"arc_easy": {"acc": 0.5}}})),
            }],
        };
        let rows = by_stage(&[
            variant("dynamic", "l0"),
            variant("dynamic", "magnitude"),
            variant("static", "l0"),
            variant("static", "magnitude"),
        ]);
        let names: Vec<&str> = rows.iter().map(|row| row.name.as_str()).collect();
        assert_eq!(
            names,
            ["method=l0/eval-distill", "method=magnitude/eval-distill"]
        );
        assert_eq!(
            rows[1].params,
            BTreeMap::from([("stages.prune.method".to_string(), "magnitude".to_string())])
        );
    }

    use super::*;
    use serde_json::json;

    fn stage(
        name: &str,
        kind: &str,
        key: &str,
        seconds: f64,
        metrics: Option<Value>,
    ) -> StageInput {
        StageInput {
            name: name.into(),
            kind: kind.into(),
            key: key.into(),
            label: None,
            seconds: Some(seconds),
            metrics,
        }
    }

    fn eval_metrics(web: f64, code: f64, arc: f64) -> Value {
        json!({"domains": {"web": {"loss": web}, "code": {"loss": code}},
               "tasks": {"arc_easy": {"acc": arc, "acc_norm": arc + 0.01}},
               "parameters": {"total": 1234567, "non_embedding": 1000000}})
    }

    fn variants() -> Vec<VariantInput> {
        let params = |policy: &str| -> BTreeMap<String, String> {
            flatten_toml(
                &toml::from_str(&format!(
                    "name = 'x'\n[stages.train]\nlr = 1e-4\nloading.policy = '{policy}'\n[stages.prune]\ntarget = {{ hidden = 32 }}\n"
                ))
                .unwrap(),
            )
        };
        vec![
            VariantInput {
                name: "dynamic".into(),
                params: params("dynamic"),
                stages: vec![
                    stage("tokenize", "tokenize", "aaaa", 2.0, None),
                    stage(
                        "prune",
                        "prune",
                        "bbbb",
                        10.0,
                        Some(json!({"tokens": 1000})),
                    ),
                    stage(
                        "train",
                        "train",
                        "cccc",
                        20.0,
                        // A train stage's own `domains` (final weights/losses) is not an evaluation.
                        Some(
                            json!({"tokens": 5000, "domains": {"web": {"loss": 9.9, "weight": 0.5}}}),
                        ),
                    ),
                    stage(
                        "eval",
                        "eval",
                        "dddd",
                        1.0,
                        Some(eval_metrics(3.0, 2.0, 0.5)),
                    ),
                    stage(
                        "eval_source",
                        "eval",
                        "ssss",
                        1.0,
                        Some(eval_metrics(2.5, 1.5, 0.6)),
                    ),
                ],
            },
            VariantInput {
                name: "static".into(),
                params: params("static"),
                stages: vec![
                    stage("tokenize", "tokenize", "aaaa", 2.0, None),
                    stage(
                        "prune",
                        "prune",
                        "bbbb",
                        10.0,
                        Some(json!({"tokens": 1000})),
                    ),
                    stage(
                        "train",
                        "train",
                        "eeee",
                        22.0,
                        Some(json!({"tokens": 5000})),
                    ),
                    stage(
                        "eval",
                        "eval",
                        "ffff",
                        1.0,
                        Some(eval_metrics(3.2, 1.9, 0.45)),
                    ),
                    stage(
                        "eval_source",
                        "eval",
                        "ssss",
                        1.0,
                        Some(eval_metrics(2.5, 1.5, 0.6)),
                    ),
                ],
            },
        ]
    }

    #[test]
    fn only_differing_params_and_deltas_to_the_first_row() {
        let comparison = compare(&variants());
        assert_eq!(
            comparison.param_columns,
            vec!["stages.train.loading.policy"]
        );
        assert_eq!(
            comparison.metric_columns,
            vec![
                "loss.code",
                "loss.web",
                "loss.mean",
                "arc_easy.acc",
                "arc_easy.acc_norm",
                "params.non_embedding",
                "params.total",
                "tokens",
                "seconds"
            ]
        );
        let web = comparison
            .metric_columns
            .iter()
            .position(|c| c == "loss.web")
            .unwrap();
        let second = &comparison.rows[1];
        assert_eq!(second.params, vec![Some("static".to_string())]);
        assert!((second.deltas[web].unwrap() - 0.2).abs() < 1e-12);
        assert_eq!(comparison.rows[0].metrics[web], Some(3.0));
        assert_eq!(comparison.rows[0].deltas[web], Some(0.0));
        let tokens = comparison
            .metric_columns
            .iter()
            .position(|c| c == "tokens")
            .unwrap();
        assert_eq!(second.metrics[tokens], Some(6000.0));
        // tokenize, prune and eval_source were computed once for both rows.
        let reused: Vec<&str> = second.reused.iter().map(|r| r.stage.as_str()).collect();
        assert_eq!(reused, vec!["tokenize", "prune", "eval_source"]);
        assert_eq!(
            comparison.shared_by_all,
            vec!["tokenize", "prune", "eval_source"]
        );
        assert!((comparison.seconds_without_cache - 70.0).abs() < 1e-9);
        assert!((comparison.seconds_with_cache - 57.0).abs() < 1e-9);
    }

    #[test]
    fn renders_every_format() {
        let comparison = compare(&variants());
        let table = render(&comparison, Format::Table, None);
        assert!(table.contains("stages.train.loading.policy"), "{table}");
        assert!(table.contains("3.2000 (+0.2000)"), "{table}");
        assert!(table.contains("1,234,567"), "{table}");
        assert!(
            table.contains("static reused: tokenize (aaaa from dynamic)"),
            "{table}"
        );
        assert!(table.contains("saved 13.0 s"), "{table}");
        let md = render(&comparison, Format::Md, None);
        assert!(
            md.starts_with("| variant | stages.train.loading.policy | loss.code |"),
            "{md}"
        );
        assert_eq!(md.lines().nth(1).unwrap().matches("---|").count(), 11);
        let csv = render(&comparison, Format::Csv, None);
        let header = csv.lines().next().unwrap();
        assert!(header.ends_with("delta.seconds,reused"), "{header}");
        assert_eq!(csv.lines().count(), 3);
        let json: Value = serde_json::from_str(&render(&comparison, Format::Json, None)).unwrap();
        assert_eq!(json["rows"][1]["variant"], "static");
    }

    #[test]
    fn a_single_recipe_and_missing_metrics_still_render() {
        let mut only = variants();
        only.truncate(1);
        only[0].stages[3].metrics = None;
        let comparison = compare(&only);
        assert!(comparison.param_columns.is_empty());
        // eval_source is not shared by "every variant" when there is one variant: its metrics show, unprefixed.
        assert!(comparison.metric_columns.contains(&"loss.web".to_string()));
        let table = render(&comparison, Format::Table, None);
        assert!(table.starts_with("variant"), "{table}");
        assert_eq!(group_thousands(-1234), "-1,234");
    }

    /// A changed sub-table is one column showing what tells the rows apart; the JSON keeps every
    /// changed leaf.
    #[test]
    fn changed_sub_tables_fold_into_one_column() {
        let mut rows = variants();
        let loading = |text: &str| {
            flatten_toml(&toml::from_str(&format!("[stages.train]\nlr = 1e-4\n{text}")).unwrap())
        };
        rows[0].params =
            loading("loading = { policy = 'dynamic', reference = { stage = 'eval-source' } }");
        rows[1].params = loading(
            "loading = { policy = 'static', weights = { web = 1.0, code = 1.0, books = 1.0 } }",
        );
        let comparison = compare(&rows);
        assert_eq!(comparison.param_columns, ["stages.train.loading"]);
        assert_eq!(
            comparison.rows[0].params,
            [Some("policy=dynamic".to_string())]
        );
        assert_eq!(
            comparison.rows[1].params,
            [Some("policy=static".to_string())]
        );
        assert_eq!(
            comparison.rows[1].changed["stages.train.loading.weights.books"],
            "1.0"
        );
        assert_eq!(
            comparison.rows[1].changed.len(),
            4,
            "{:?}",
            comparison.rows[1].changed
        );
    }

    #[test]
    fn views_select_sort_and_wrap() {
        let comparison = compare(&variants());
        let sorted = apply_view(
            comparison.clone(),
            &View {
                sort: Some("loss.web".into()),
                reverse: true,
                ..View::default()
            },
        )
        .unwrap();
        assert_eq!(sorted.rows[0].variant, "static");
        assert!(sorted.rows[1].baseline);
        let table = render(&sorted, Format::Table, None);
        assert!(
            table.contains("3.2000 (+0.2000)"),
            "deltas stay relative to the baseline:\n{table}"
        );

        let narrow = apply_view(
            comparison.clone(),
            &View {
                columns: vec!["loss".into()],
                only_changed: true,
                ..View::default()
            },
        )
        .unwrap();
        assert!(narrow.param_columns.is_empty());
        assert!(narrow.metric_columns.iter().all(|c| c.contains("loss")));
        assert!(!narrow.metric_columns.is_empty());
        for row in &narrow.rows {
            assert_eq!(row.metrics.len(), narrow.metric_columns.len());
            assert_eq!(row.deltas.len(), narrow.metric_columns.len());
        }
        let unchanged = apply_view(
            comparison.clone(),
            &View {
                only_changed: true,
                ..View::default()
            },
        )
        .unwrap();
        assert!(
            !unchanged.metric_columns.contains(&"tokens".to_string()),
            "{:?}",
            unchanged.metric_columns
        );

        let error = apply_view(
            comparison.clone(),
            &View {
                sort: Some("los.web".into()),
                ..View::default()
            },
        )
        .unwrap_err();
        assert!(error.contains("loss.web"), "{error}");
        let error = apply_view(
            comparison.clone(),
            &View {
                columns: vec!["nothing-like-this".into()],
                ..View::default()
            },
        )
        .unwrap_err();
        assert!(error.contains("matches no column"), "{error}");

        let wide = render(&comparison, Format::Table, None);
        let wrapped = render(&comparison, Format::Table, Some(60));
        let longest = |text: &str| text.lines().map(|l| l.chars().count()).max().unwrap();
        assert!(longest(&wide) > 60, "{wide}");
        let table_part = wrapped
            .split("\n\n")
            .filter(|block| block.starts_with("variant"));
        for block in table_part {
            assert!(longest(block) <= 60, "{wrapped}");
        }
        assert!(wrapped.matches("variant").count() >= 2, "{wrapped}");
    }
}
