//! The `sheared` command line. Each subcommand is a thin shell over a library function.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "sheared",
    version,
    about = "Build small, strong language models out of big ones (Sheared LLaMA)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the stage kinds this binary knows.
    Kinds,
    /// Recipes or sweep variants side by side: differing parameters, metrics, deltas, reuse; plots.
    Compare(sheared::report::cli::CompareArgs),
    /// One self-contained HTML page: comparison, stage graph, stage status and times, plots.
    Report(sheared::report::cli::ReportArgs),
    /// Show a model folder's architecture, per-layer widths and parameter counts.
    Inspect(sheared::model::cli::InspectArgs),
    /// Mean token loss and perplexity of a model on a text file or on token ids.
    Score(sheared::model::cli::ScoreArgs),
    /// Convert a llama.cpp GGUF file (llama architecture) into a Hugging Face model folder.
    Convert(sheared::model::cli::ConvertArgs),
    /// Run one or more recipes (shared stages run once; cached stages are skipped).
    Run(sheared::exec::cli::RunArgs),
    /// Show each stage's status (cached, stale, missing, running, failed) and why.
    Plan(sheared::exec::cli::PlanArgs),
    /// Explain why a stage would run: the full chain of causes.
    Why(sheared::exec::cli::StageArgs),
    /// Print the committed output folder of a stage (`--logs`: its log and TensorBoard folder).
    Path(sheared::exec::cli::PathArgs),
    /// Print the stage graph as Mermaid or Graphviz dot.
    Dag(sheared::exec::cli::DagArgs),
    /// Remove cache entries no recipe under recipes/ (or given) uses.
    Gc(sheared::exec::cli::GcArgs),
    /// Rehash every cached object; drop entries with corrupt or missing objects.
    Verify(sheared::exec::cli::VerifyArgs),
    /// Run one stage inside a Slurm job (what `sheared run --executor slurm` submits).
    #[command(hide = true)]
    StageJob {
        /// The stage's job folder (`jobs/<key>/` in the cache).
        folder: std::path::PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    sheared::exec::logging::init();
    // The stage kinds this binary knows; the runner sees them only through the registry.
    let registry = sheared::stages::builtin();
    let result: anyhow::Result<()> = match cli.command {
        Command::Run(args) => sheared::exec::cli::run(&args, &registry),
        Command::Plan(args) => sheared::exec::cli::plan(&args, &registry),
        Command::Why(args) => sheared::exec::cli::why(&args, &registry),
        Command::Path(args) => sheared::exec::cli::path(&args, &registry),
        Command::Dag(args) => sheared::exec::cli::dag(&args, &registry),
        Command::Gc(args) => sheared::exec::cli::gc(&args, &registry),
        Command::Verify(args) => sheared::exec::cli::verify(&args),
        Command::StageJob { folder } => match sheared::exec::slurm::stage_job(&folder, &registry) {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::FAILURE,
            Err(error) => Err(error),
        },
        Command::Kinds => {
            for kind in registry.kinds() {
                let about = registry
                    .get(kind)
                    .map(|stage| stage.about())
                    .unwrap_or_default();
                println!("{kind:<14} {about}");
            }
            Ok(())
        }
        Command::Compare(args) => sheared::report::cli::compare_command(&args, &registry),
        Command::Report(args) => sheared::report::cli::report_command(&args, &registry),
        Command::Inspect(args) => sheared::model::cli::inspect(&args),
        Command::Score(args) => sheared::model::cli::score(&args),
        Command::Convert(args) => sheared::model::cli::convert(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", sheared::exec::cli::format_error(&error));
            ExitCode::FAILURE
        }
    }
}
