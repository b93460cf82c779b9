//! The runner's subcommands (`run`, `plan`, `why`, `path`, `dag`, `gc`, `verify`): argument types for
//! clap and the functions `main.rs` calls.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;

use super::{Output, RunOptions};
use crate::plan::Plan;
use crate::plan::dag::{DagFormat, render};
use crate::plan::status::{NodeStatus, Reason, Status, output_path, plan_status};
use crate::recipe::LoadOptions;
use crate::stage::{CancelFlag, Registry};
use crate::store::Store;
use crate::util::fmt::human_bytes;

/// Options shared by every command that reads recipes.
#[derive(Debug, Clone, Args)]
pub struct RecipeOptions {
    /// The cache folder (objects, index, logs).
    #[arg(long, env = "SHEARED_CACHE", default_value = "cache")]
    pub cache: PathBuf,
    /// Override one recipe value, TOML value syntax: `--set stages.prune.target.hidden=1024`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Run-wide device (`cpu`, `torch-cpu`, `cuda:0`); replaces `settings.device`.
    #[arg(long, env = "SHEARED_DEVICE")]
    pub device: Option<String>,
}

impl RecipeOptions {
    fn load_options(&self) -> LoadOptions {
        LoadOptions {
            overrides: self.set.clone(),
            device: self.device.clone(),
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Recipe files; all are planned together so shared stages run once.
    #[arg(required = true)]
    pub recipes: Vec<PathBuf>,
    #[command(flatten)]
    pub options: RecipeOptions,
    /// Stages run at once.
    #[arg(long, short = 'j', default_value_t = 1)]
    pub jobs: usize,
    /// Run only this stage and what it needs (repeatable).
    #[arg(long, value_name = "STAGE")]
    pub only: Vec<String>,
    /// Rerun this stage and everything downstream even if cached (repeatable).
    #[arg(long, value_name = "STAGE")]
    pub force: Vec<String>,
    /// After a failure, keep running stages that do not depend on it.
    #[arg(long)]
    pub keep_going: bool,
    /// Print NDJSON events (started, cached, committed, failed, ...) on stdout.
    #[arg(long)]
    pub json: bool,
    /// Where stages compute: `local` (this process) or `slurm` (one Slurm job per stage);
    /// replaces `settings.executor`.
    #[arg(long, value_name = "local|slurm")]
    pub executor: Option<crate::stage::Executor>,
}

#[derive(Debug, Clone, Args)]
pub struct PlanArgs {
    /// One or more recipes, planned together as `run` plans them (shared stages are one node).
    #[arg(required = true)]
    pub recipes: Vec<PathBuf>,
    #[command(flatten)]
    pub options: RecipeOptions,
    /// One JSON document instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct StageArgs {
    pub recipe: PathBuf,
    /// Stage name (or a sweep node id such as `prune[target={hidden=32}]`).
    pub stage: String,
    #[command(flatten)]
    pub options: RecipeOptions,
}

#[derive(Debug, Clone, Args)]
pub struct PathArgs {
    #[command(flatten)]
    pub stage: StageArgs,
    /// Print the stage's log folder instead (its attempts' logs and `tensorboard/`, the live
    /// curves: `tensorboard --logdir <it>`); known as soon as the stage's key is, before it
    /// commits.
    #[arg(long)]
    pub logs: bool,
}

#[derive(Debug, Clone, Args)]
pub struct DagArgs {
    pub recipe: PathBuf,
    #[arg(long, value_enum, default_value = "mermaid")]
    pub format: DagFormat,
    /// Override one recipe value (as for `run`).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub struct GcArgs {
    /// Extra recipes whose stages are live (besides every recipe under `recipes/`).
    pub recipes: Vec<PathBuf>,
    /// Show what would be removed without removing it.
    #[arg(long)]
    pub dry_run: bool,
    /// Also keep the newest N committed entries of every recipe stage (so switching back is free).
    #[arg(long, default_value_t = 1)]
    pub keep_last: usize,
    /// Folder of recipes that count as live.
    #[arg(long, default_value = "recipes")]
    pub recipes_dir: PathBuf,
    #[arg(long, env = "SHEARED_CACHE", default_value = "cache")]
    pub cache: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub struct VerifyArgs {
    #[arg(long, env = "SHEARED_CACHE", default_value = "cache")]
    pub cache: PathBuf,
    /// Move a damaged index aside and rebuild it from the manifest copies (`cache/manifests/`)
    /// whose objects are intact, before verifying.
    #[arg(long)]
    pub rebuild_index: bool,
}

fn plan_recipes(
    recipes: &[PathBuf],
    load_options: &LoadOptions,
    registry: &Registry,
) -> anyhow::Result<Plan> {
    crate::plan::load_plan(recipes, load_options, registry)
}

fn open_store(cache: &Path) -> anyhow::Result<Store> {
    Store::open(cache).with_context(|| format!("opening the cache {}", cache.display()))
}

/// `sheared run`.
pub fn run(args: &RunArgs, registry: &Registry) -> anyhow::Result<()> {
    let mut plan = plan_recipes(&args.recipes, &args.options.load_options(), registry)?;
    for recipe in &mut plan.recipes {
        recipe.check_paths()?;
        if let Some(executor) = args.executor {
            recipe.settings.executor = executor;
        }
    }
    let partitions: Vec<(String, String)> = plan
        .nodes
        .iter()
        .filter(|node| plan.recipes[node.recipe].settings.executor == crate::stage::Executor::Slurm)
        .map(|node| {
            let resources = node
                .resources
                .over(&plan.recipes[node.recipe].settings.slurm);
            (node.id.clone(), resources.partition.unwrap_or_default())
        })
        .collect();
    if !partitions.is_empty() {
        let named: Vec<(String, String)> = partitions
            .into_iter()
            .filter(|(_, partition)| !partition.is_empty())
            .collect();
        super::slurm::preflight(&named)?;
    }
    let store = open_store(&args.options.cache)?;
    super::install_interrupt_handler();
    let output = Output::choose(args.json);
    let options = RunOptions {
        jobs: args.jobs,
        only: args.only.clone(),
        force: args.force.clone(),
        keep_going: args.keep_going,
    };
    let clock = std::time::Instant::now();
    let summary = super::run(
        &plan,
        &store,
        registry,
        &options,
        &output,
        &CancelFlag::default(),
    )?;
    output.note(&format!(
        "{} committed, {} cached, {} failed, {} skipped in {}",
        summary.committed.len(),
        summary.cached.len(),
        summary.failed.len(),
        summary.skipped.len(),
        super::events::format_seconds(clock.elapsed().as_secs_f64())
    ));
    if summary.cancelled {
        bail!("interrupted; scratch folders are kept, run the same command again to resume");
    }
    if !summary.success() {
        bail!(
            "{} requested stage(s) did not complete: {}",
            summary.incomplete_requested.len(),
            summary.incomplete_requested.join(", ")
        );
    }
    Ok(())
}

/// `sheared plan`.
pub fn plan(args: &PlanArgs, registry: &Registry) -> anyhow::Result<()> {
    let plan = plan_recipes(&args.recipes, &args.options.load_options(), registry)?;
    let store = open_store(&args.options.cache)?;
    let mut statuses = plan_status(&plan, &store)?;
    for status in &mut statuses {
        let Some(key) = status.record.as_ref().map(|record| record.key) else {
            continue;
        };
        let folder = store.jobs_path(&key);
        if status.status != Status::Cached
            && folder.exists()
            && let Some((text, alive)) = super::slurm::job_status(&folder)
        {
            if alive {
                // A job a killed coordinator left: the next `sheared run` adopts it.
                status.status = Status::Running;
            }
            status.job = Some(text);
        }
    }
    let previews = crate::plan::preview::previews(&plan, &statuses, &store, registry);
    if args.json {
        let mut stages = Vec::new();
        for &index in &plan.order {
            let mut stage = serde_json::to_value(&statuses[index])?;
            if let Some(object) = stage.as_object_mut() {
                object.insert("preview".into(), serde_json::to_value(&previews[index])?);
            }
            stages.push(stage);
        }
        let document = serde_json::json!({
            "recipes": plan.recipes.iter().map(|recipe| recipe.name.clone()).collect::<Vec<_>>(),
            "stages": stages,
        });
        println!("{}", serde_json::to_string_pretty(&document)?);
        return Ok(());
    }
    let width = statuses
        .iter()
        .map(|status| status.id.len())
        .max()
        .unwrap_or(5)
        .max(5);
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for status in &statuses {
        *counts.entry(status.status.to_string()).or_default() += 1;
    }
    for &index in &plan.order {
        let status = &statuses[index];
        let key = status
            .key
            .as_deref()
            .map(|key| &key[..12])
            .unwrap_or("(pending)");
        let line = format!(
            "{:<8} {:<width$} {:<12} {key:<12}  {}",
            status.status.to_string(),
            status.id,
            status.kind,
            previews[index].line()
        );
        println!("{}", line.trim_end());
        if let Some(job) = &status.job {
            println!("{:<8} {:<width$}   - {job}", "", "");
        }
        if status.status != Status::Cached {
            for reason in &status.reasons {
                println!("{:<8} {:<width$}   - {}", "", "", reason.one_line());
            }
        }
    }
    let summary: Vec<String> = counts
        .iter()
        .map(|(status, count)| format!("{count} {status}"))
        .collect();
    eprintln!("{} stage(s): {}", statuses.len(), summary.join(", "));
    Ok(())
}

fn print_tree(reason: &Reason, depth: usize) {
    println!("{}- {}", "  ".repeat(depth + 1), reason.text);
    for cause in &reason.causes {
        print_tree(cause, depth + 1);
    }
}

/// `sheared why`: the stage's status and the full chain of causes through its upstream stages.
pub fn why(args: &StageArgs, registry: &Registry) -> anyhow::Result<()> {
    let plan = plan_recipes(
        std::slice::from_ref(&args.recipe),
        &args.options.load_options(),
        registry,
    )?;
    let store = open_store(&args.options.cache)?;
    let statuses = plan_status(&plan, &store)?;
    for index in plan.find(&args.stage)? {
        explain_node(&plan, &statuses, index, 0, &mut Vec::new());
    }
    Ok(())
}

fn explain_node(
    plan: &Plan,
    statuses: &[NodeStatus],
    index: usize,
    depth: usize,
    seen: &mut Vec<usize>,
) {
    let status = &statuses[index];
    let indent = "  ".repeat(depth);
    let key = status
        .key
        .as_deref()
        .map(|key| format!(" [{}]", &key[..12]))
        .unwrap_or_default();
    println!(
        "{indent}{} ({}): {}{key}",
        status.id, status.kind, status.status
    );
    if seen.contains(&index) {
        return;
    }
    seen.push(index);
    if status.status == Status::Cached {
        if let Some(output) = &status.output {
            println!("{indent}  output: {output}");
        }
        return;
    }
    for reason in &status.reasons {
        print_tree(reason, depth);
    }
    for upstream in plan.upstream(index) {
        if statuses[upstream].status != Status::Cached {
            explain_node(plan, statuses, upstream, depth + 1, seen);
        }
    }
}

/// `sheared path`: the committed output folder of a stage.
pub fn path(args: &PathArgs, registry: &Registry) -> anyhow::Result<()> {
    let logs = args.logs;
    let args = &args.stage;
    let plan = plan_recipes(
        std::slice::from_ref(&args.recipe),
        &args.options.load_options(),
        registry,
    )?;
    let store = open_store(&args.options.cache)?;
    let statuses = plan_status(&plan, &store)?;
    let nodes = plan.find(&args.stage)?;
    let mut missing = Vec::new();
    if logs {
        for index in &nodes {
            match statuses[*index].record.as_ref() {
                Some(record) => println!("{}", store.logs_path(&record.key).display()),
                None => missing.push(format!(
                    "`{}` waits on {}",
                    statuses[*index].id,
                    statuses[*index].waits_on.join(", ")
                )),
            }
        }
        if !missing.is_empty() {
            bail!(
                "{}: its key (and so its log folder) is known once those stages commit; run `sheared run {} --only {}`",
                missing.join("; "),
                args.recipe.display(),
                args.stage
            );
        }
        return Ok(());
    }
    for index in &nodes {
        match output_path(&store, &statuses[*index])? {
            Some(output) => println!("{}", output.display()),
            None => missing.push(format!(
                "`{}` is {}",
                statuses[*index].id, statuses[*index].status
            )),
        }
    }
    if !missing.is_empty() {
        bail!(
            "{} not committed for this recipe; run `sheared run {} --only {}` first",
            missing.join(", "),
            args.recipe.display(),
            args.stage
        );
    }
    Ok(())
}

/// `sheared dag`.
pub fn dag(args: &DagArgs, registry: &Registry) -> anyhow::Result<()> {
    let plan = plan_recipes(
        std::slice::from_ref(&args.recipe),
        &LoadOptions {
            overrides: args.set.clone(),
            device: None,
        },
        registry,
    )?;
    print!("{}", render(&plan, args.format));
    Ok(())
}

/// `sheared gc`: keep what the recipes under `recipes/` (and the given ones) use, remove the rest.
pub fn gc(args: &GcArgs, registry: &Registry) -> anyhow::Result<()> {
    let store = open_store(&args.cache)?;
    let mut files: Vec<PathBuf> = args.recipes.clone();
    if args.recipes_dir.is_dir() {
        let mut found: Vec<PathBuf> = std::fs::read_dir(&args.recipes_dir)
            .with_context(|| format!("reading {}", args.recipes_dir.display()))?
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .filter(|path| {
                path.extension()
                    .is_some_and(|extension| extension == "toml")
            })
            .collect();
        found.sort();
        files.extend(found);
    }
    let mut live = std::collections::BTreeSet::new();
    for file in &files {
        let given = args.recipes.contains(file);
        let plan = match plan_recipes(
            std::slice::from_ref(file),
            &LoadOptions::default(),
            registry,
        ) {
            Ok(plan) => plan,
            Err(error) if !given => {
                eprintln!(
                    "warning: {} does not load ({error:#}); its stages are kept only through --keep-last history",
                    file.display()
                );
                continue;
            }
            Err(error) => return Err(error),
        };
        for status in plan_status(&plan, &store)? {
            if let Some(commit) = status.committed {
                live.insert(commit.key);
            }
        }
    }
    let keep_last = (args.keep_last > 0).then_some(args.keep_last);
    let report = store.gc(&live, keep_last, args.dry_run)?;
    let verb = if args.dry_run {
        "would remove"
    } else {
        "removed"
    };
    println!(
        "{verb} {} manifest(s), {} object(s), {} reclaimed ({} live stage key(s) from {} recipe file(s) kept)",
        report.manifests,
        report.objects,
        human_bytes(report.bytes),
        live.len(),
        files.len()
    );
    Ok(())
}

/// `sheared verify`: rehash every object; drop manifests that reference corrupt or missing ones.
pub fn verify(args: &VerifyArgs) -> anyhow::Result<()> {
    let store = open_store(&args.cache)?;
    if args.rebuild_index {
        let rebuilt = store.rebuild_index()?;
        if let Some(moved) = &rebuilt.moved_to {
            println!(
                "moved the old index to {} (delete it when satisfied)",
                moved.display()
            );
        }
        println!(
            "rebuilt the index: {} cache entr{} restored from their manifest copies",
            rebuilt.restored,
            if rebuilt.restored == 1 { "y" } else { "ies" }
        );
        for path in &rebuilt.unreadable {
            println!("unreadable manifest copy {} (removed)", path.display());
        }
        for dropped in &rebuilt.incomplete {
            println!(
                "cache entry of stage `{}` (recipe `{}`), key {} has lost objects: it will rerun",
                dropped.stage,
                dropped.recipe,
                dropped.key.to_hex()
            );
        }
    }
    let report = store.verify()?;
    println!(
        "checked {} object(s), {}",
        report.objects_checked,
        human_bytes(report.bytes_checked)
    );
    for digest in &report.corrupt {
        println!("corrupt object {}", digest.to_hex());
    }
    for digest in &report.missing {
        println!("missing object {}", digest.to_hex());
    }
    for record in &report.unreadable_records {
        println!("unreadable index record {record} (removed)");
    }
    if report.restored_records > 0 {
        println!(
            "{} manifest record(s) restored from their copies",
            report.restored_records
        );
    }
    if report.copies_written > 0 {
        println!(
            "wrote {} missing manifest cop{} (cache/manifests/)",
            report.copies_written,
            if report.copies_written == 1 {
                "y"
            } else {
                "ies"
            }
        );
    }
    for dropped in &report.dropped {
        println!(
            "dropped cache entry of stage `{}` (recipe `{}`), key {}: it will rerun",
            dropped.stage,
            dropped.recipe,
            dropped.key.to_hex()
        );
    }
    if report.is_clean() {
        println!("cache is consistent");
        Ok(())
    } else {
        bail!(
            "{} corrupt and {} missing object(s), {} unreadable index record(s); the stages they \
             belonged to will rerun on the next `sheared run` (restored records will not)",
            report.corrupt.len(),
            report.missing.len(),
            report.unreadable_records.len()
        )
    }
}

/// An error and its causes on one line, skipping causes that the message before already quotes
/// (many `io::Error` wrappers put their source into their own message).
pub fn format_error(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let part = cause.to_string();
        if text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_already_in_the_message_are_not_repeated() {
        let io = std::io::Error::other("Not a directory");
        let error = anyhow::Error::new(io)
            .context("creating x: Not a directory")
            .context("opening the cache");
        assert_eq!(
            format_error(&error),
            "opening the cache: creating x: Not a directory"
        );
    }
}
