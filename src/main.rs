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
    /// Run every `sheared bench <area>` this binary has and regenerate BENCHMARKS.md.
    Benchmarks {
        /// Where to write the Markdown.
        #[arg(long, default_value = "BENCHMARKS.md")]
        out: std::path::PathBuf,
        /// Only these areas (repeatable); default: every area.
        #[arg(long)]
        only: Vec<String>,
        /// Extra arguments for one area, e.g. `--arg "store=--bytes 100000000"` (repeatable).
        #[arg(long = "arg", value_name = "AREA=ARGS")]
        area_args: Vec<String>,
    },
    /// Recipes or sweep variants side by side: differing parameters, metrics, deltas, reuse; plots.
    Compare(sheared::report::cli::CompareArgs),
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
    /// Print the committed output folder of a stage.
    Path(sheared::exec::cli::StageArgs),
    /// Print the stage graph as Mermaid or Graphviz dot.
    Dag(sheared::exec::cli::DagArgs),
    /// Remove cache entries no recipe under recipes/ (or given) uses.
    Gc(sheared::exec::cli::GcArgs),
    /// Rehash every cached object; drop entries with corrupt or missing objects.
    Verify(sheared::exec::cli::VerifyArgs),
    /// Run a benchmark and print a markdown table.
    Bench {
        #[command(subcommand)]
        area: BenchArea,
    },
}

#[derive(Subcommand)]
enum BenchArea {
    /// Tokens/s of a LLaMA training step (forward + backward) against PyTorch, same config and threads.
    Model(sheared::bench::model::ModelBenchArgs),
    /// Prune-step vs plain train-step tokens/s on the same model (the mask overhead; target < 15 %).
    Prune(sheared::bench::prune::PruneBenchArgs),
    /// Tokenize throughput vs Python `tokenizers`, and DomainMixture sampler throughput.
    Data(sheared::bench::data::DataBenchArgs),
    /// No-op rerun of a 20-stage recipe with large cached outputs, against rehashing everything.
    Runner(sheared::bench::runner::RunnerBenchArgs),
    /// Hashing throughput against b3sum and md5sum, and the stat-cache hit cost.
    Store(sheared::bench::store::Args),
    /// Training tokens/s of the `train` loop and its time outside the model, against a bare burn loop.
    Train(sheared::bench::train::TrainBenchArgs),
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
        Command::Bench {
            area: BenchArea::Runner(args),
        } => sheared::bench::runner::run(&args),
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
        Command::Benchmarks {
            out,
            only,
            area_args,
        } => sheared::report::benchmarks::regenerate(&out, &only, &area_args),
        Command::Inspect(args) => sheared::model::cli::inspect(&args),
        Command::Score(args) => sheared::model::cli::score(&args),
        Command::Convert(args) => sheared::model::cli::convert(&args),
        Command::Bench {
            area: BenchArea::Model(args),
        } => sheared::bench::model::run(&args),
        Command::Bench {
            area: BenchArea::Prune(args),
        } => sheared::bench::prune::run_cli(&args),
        Command::Bench {
            area: BenchArea::Data(args),
        } => sheared::bench::data::run(&args).map(|report| sheared::bench::data::print(&report)),
        Command::Bench {
            area: BenchArea::Store(args),
        } => sheared::bench::store::run(&args).and_then(|report| {
            println!("{}", report.to_markdown());
            match &args.json {
                Some(path) => report.write_json(path),
                None => Ok(()),
            }
        }),
        Command::Bench {
            area: BenchArea::Train(args),
        } => sheared::bench::train::run(&args)
            .map(|report| sheared::bench::train::print(&report, args.json)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", sheared::exec::cli::format_error(&error));
            ExitCode::FAILURE
        }
    }
}
