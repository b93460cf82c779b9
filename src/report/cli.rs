//! `sheared compare RECIPE... [--format table|md|csv|json] [--plots DIR]`: the runner's plan and store
//! turned into [`super::compare`] rows (one per recipe or sweep variant) and plots.
//!
//! Nothing runs here: stages that are not committed yet show as missing metrics, and a line on stderr
//! says which and how to run them.

use std::collections::HashSet;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use super::compare::{
    Format, StageInput, VariantInput, View, apply_view, by_stage, compare, flatten_toml, render,
};
use super::html::{Page, StageRow};
use super::plots::{SeriesSource, write_plots};
use crate::plan::Plan;
use crate::plan::status::plan_status;
use crate::recipe::{LoadOptions, load};
use crate::stage::Registry;
use crate::store::Store;

/// Which runs `compare` and `report` read.
#[derive(Debug, Clone, Args)]
pub struct RunsArgs {
    /// Recipe files; a recipe with a `[sweep]` gives one row per variant. The first row is the baseline.
    #[arg(required = true)]
    pub recipes: Vec<PathBuf>,
    /// The cache folder the runs were stored in.
    #[arg(long, env = "SHEARED_CACHE", default_value = "cache")]
    pub cache: PathBuf,
    /// Override one recipe value (as for `sheared run`), TOML value syntax.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// The device the runs used (as for `sheared run`): prune and train keys include it, so a run on
    /// `cuda:0` is found only with the same device.
    #[arg(long, env = "SHEARED_DEVICE")]
    pub device: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct CompareArgs {
    #[command(flatten)]
    pub runs: RunsArgs,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Also write training-loss, eval-loss, domain-weight and sparsity plots (SVG and PNG) here.
    #[arg(long, value_name = "DIR")]
    pub plots: Option<PathBuf>,
    /// One row per evaluated model (each eval stage of each variant; a stage shared by every variant,
    /// such as the source model's eval, once) instead of one row per variant.
    #[arg(long)]
    pub by_stage: bool,
    /// Keep only the columns whose names contain one of these (comma-separated), e.g.
    /// `--columns loss.mean,arc_easy`.
    #[arg(long, value_delimiter = ',')]
    pub columns: Vec<String>,
    /// Leave out metric columns that are the same in every row.
    #[arg(long)]
    pub only_changed: bool,
    /// Sort the rows by this metric column, ascending (`--sort loss.mean`); deltas stay relative to
    /// the first variant.
    #[arg(long, value_name = "COLUMN")]
    pub sort: Option<String>,
    /// Sort descending (`--sort arc_easy.acc --reverse`).
    #[arg(long, requires = "sort")]
    pub reverse: bool,
    /// Wrap the table at this many characters (default: the terminal's width when printing to a
    /// terminal, no wrapping otherwise).
    #[arg(long)]
    pub width: Option<usize>,
}

/// `sheared report RECIPE... --out report.html`.
#[derive(Debug, Clone, Args)]
pub struct ReportArgs {
    #[command(flatten)]
    pub runs: RunsArgs,
    /// The HTML file to write (one self-contained page).
    #[arg(long, short = 'o', value_name = "FILE")]
    pub out: PathBuf,
}

/// What `compare` and `report` read from the plan and the store.
struct Gathered {
    plan: Plan,
    statuses: Vec<crate::plan::status::NodeStatus>,
    variants: Vec<VariantInput>,
    /// `metrics.jsonl` of every committed stage that has one (each key once).
    series: Vec<SeriesSource>,
    /// `stage (recipe)` of every stage not committed yet.
    not_run: Vec<String>,
}

/// Loads the recipes, plans them together and reads each stage's committed metrics (and, with
/// `with_series`, where its `metrics.jsonl` is, materialising its outputs).
fn gather(runs: &RunsArgs, with_series: bool, registry: &Registry) -> anyhow::Result<Gathered> {
    let cache = runs.cache.as_path();
    let options = LoadOptions {
        overrides: runs.set.clone(),
        device: runs.device.clone(),
    };
    let mut recipes = Vec::new();
    for path in &runs.recipes {
        recipes.extend(load(path, &options, registry)?);
    }
    let plan = Plan::build(recipes, registry)?;
    if !cache.is_dir() {
        anyhow::bail!(
            "no cache at {}: run the recipes first (`sheared run ...`), or pass --cache DIR",
            cache.display()
        );
    }
    let store =
        Store::open(cache).with_context(|| format!("opening the cache {}", cache.display()))?;
    let statuses = plan_status(&plan, &store)?;

    let mut variants = Vec::new();
    let mut not_run = Vec::new();
    let mut series = Vec::new();
    let mut plotted_keys = HashSet::new();
    for (recipe_index, recipe) in plan.recipes.iter().enumerate() {
        let mut params = std::collections::BTreeMap::new();
        for (name, decl) in &recipe.stages {
            for (key, value) in flatten_toml(&decl.config) {
                params.insert(format!("stages.{name}.{key}"), value);
            }
        }
        params.insert("settings.device".into(), recipe.settings.device.clone());
        params.insert("settings.seed".into(), recipe.settings.seed.to_string());
        let mut stages = Vec::new();
        for &index in &plan.order {
            let node = &plan.nodes[index];
            let Some(member) = node.members.iter().find(|m| m.recipe == recipe_index) else {
                continue;
            };
            let status = &statuses[index];
            let committed = status.committed.as_ref();
            if committed.is_none() {
                not_run.push(format!("{} ({})", member.stage, recipe.name));
            }
            stages.push(StageInput {
                name: member.stage.clone(),
                kind: node.kind.clone(),
                // An uncommitted stage has no key yet; its node id keeps shared nodes shared.
                key: status
                    .key
                    .clone()
                    .unwrap_or_else(|| format!("pending:{}", node.id)),
                label: node.label.clone(),
                seconds: committed.map(|c| c.manifest.seconds),
                metrics: committed.and_then(|c| c.manifest.metrics.clone()),
            });
            if let (true, Some(commit)) = (with_series, committed)
                && commit
                    .manifest
                    .files
                    .iter()
                    .any(|f| f.path == "metrics.jsonl")
                && plotted_keys.insert(status.key.clone())
            {
                let folder = store.outputs(&commit.manifest)?;
                series.push(SeriesSource {
                    label: format!("{}/{}", recipe.name, member.stage),
                    path: folder.join("metrics.jsonl"),
                });
            }
        }
        variants.push(VariantInput {
            name: row_name(&plan.recipes, recipe_index),
            params,
            stages,
        });
    }
    Ok(Gathered {
        plan,
        statuses,
        variants,
        series,
        not_run,
    })
}

/// `sheared compare`.
pub fn compare_command(args: &CompareArgs, registry: &Registry) -> anyhow::Result<()> {
    let Gathered {
        mut variants,
        series,
        not_run,
        ..
    } = gather(&args.runs, args.plots.is_some(), registry)?;
    // What the whole runs cost, with and without the cache: a by-stage row holds one eval stage,
    // so its own sums would count only the evals.
    let whole = compare(&variants);
    if args.by_stage {
        variants = by_stage(&variants);
    }
    let view = View {
        columns: args.columns.clone(),
        only_changed: args.only_changed,
        sort: args.sort.clone(),
        reverse: args.reverse,
    };
    let mut comparison = apply_view(compare(&variants), &view).map_err(anyhow::Error::msg)?;
    comparison.seconds_with_cache = whole.seconds_with_cache;
    comparison.seconds_without_cache = whole.seconds_without_cache;
    let width = args.width.or_else(|| {
        let terminal = console::Term::stdout();
        terminal
            .is_term()
            .then(|| terminal.size_checked().map(|(_, columns)| columns as usize))
            .flatten()
    });
    print!("{}", render(&comparison, args.format, width));
    if !not_run.is_empty() {
        let files: Vec<String> = args
            .runs
            .recipes
            .iter()
            .map(|path| path.display().to_string())
            .collect();
        eprintln!(
            "not run yet (no metrics): {}; `sheared run {}` makes them",
            not_run.join(", "),
            files.join(" ")
        );
    }
    if let Some(dir) = &args.plots {
        let written = write_plots(&series, dir)?;
        if written.is_empty() {
            eprintln!(
                "no plots: no committed stage has a metrics.jsonl with loss, eval losses, domain weights or sparsity"
            );
        } else {
            eprintln!("wrote {} plot files to {}", written.len(), dir.display());
        }
    }
    Ok(())
}

/// `sheared report`: the comparison, the stage graph, each stage's status and time, and every plot
/// in one HTML file.
pub fn report_command(args: &ReportArgs, registry: &Registry) -> anyhow::Result<()> {
    let gathered = gather(&args.runs, true, registry)?;
    let comparison = compare(&gathered.variants);
    let plan = &gathered.plan;
    let stages: Vec<StageRow> = plan
        .order
        .iter()
        .map(|&index| {
            let node = &plan.nodes[index];
            let status = &gathered.statuses[index];
            StageRow {
                id: node.id.clone(),
                kind: node.kind.clone(),
                status: status.status.to_string(),
                key: status
                    .key
                    .as_deref()
                    .map(|key| super::compare::short_key(key).to_string()),
                seconds: status.committed.as_ref().map(|c| c.manifest.seconds),
                used_by: node
                    .members
                    .iter()
                    .map(|member| row_name(&plan.recipes, member.recipe))
                    .collect(),
                reasons: status.reasons.iter().map(|r| r.one_line()).collect(),
            }
        })
        .collect();
    let position: std::collections::HashMap<usize, usize> = plan
        .order
        .iter()
        .enumerate()
        .map(|(position, &index)| (index, position))
        .collect();
    let mut edges = Vec::new();
    for &index in &plan.order {
        for upstream in plan.upstream(index) {
            edges.push((position[&upstream], position[&index]));
        }
    }
    edges.sort();
    let plots_dir = tempfile::tempdir().context("creating a folder for the plots")?;
    let mut plots = Vec::new();
    for path in write_plots(&gathered.series, plots_dir.path())? {
        if path.extension().is_some_and(|extension| extension == "svg") {
            let name = path
                .file_stem()
                .map(|stem| stem.to_string_lossy().into_owned())
                .unwrap_or_default();
            let svg = std::fs::read_to_string(&path)
                .with_context(|| format!("reading the plot {}", path.display()))?;
            plots.push((name, svg));
        }
    }
    let recipes: Vec<String> = args
        .runs
        .recipes
        .iter()
        .map(|path| path.display().to_string())
        .collect();
    let page = Page {
        title: format!("sheared report: {}", plan.recipes[0].base_name),
        recipes,
        generated_at: crate::store::rfc3339(std::time::SystemTime::now()),
        comparison: &comparison,
        stages,
        edges,
        plots,
    };
    let html = super::html::render(&page);
    std::fs::write(&args.out, html)
        .with_context(|| format!("writing the report {}", args.out.display()))?;
    eprintln!(
        "wrote {} ({} stage(s), {} row(s), {} plot(s))",
        args.out.display(),
        page.stages.len(),
        comparison.rows.len(),
        page.plots.len()
    );
    if !gathered.not_run.is_empty() {
        eprintln!(
            "not run yet (shown as missing): {}",
            gathered.not_run.join(", ")
        );
    }
    Ok(())
}

/// A row's name: the recipe's, or for a sweep variant when every row comes from that one recipe
/// just the variant's (`policy=static,method=l0` rather than `tiny-ablations[policy=...]`).
fn row_name(recipes: &[crate::recipe::Recipe], index: usize) -> String {
    let recipe = &recipes[index];
    let one_recipe = recipes.iter().all(|other| other.file == recipe.file);
    match &recipe.variant {
        Some(variant) if one_recipe => variant.name.clone(),
        _ => recipe.name.clone(),
    }
}
