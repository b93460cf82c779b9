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
    /// Show a model folder's architecture, per-layer widths and parameter counts.
    Inspect(sheared::model::cli::InspectArgs),
    /// Mean token loss and perplexity of a model on a text file or on token ids.
    Score(sheared::model::cli::ScoreArgs),
    /// Convert a llama.cpp GGUF file (llama architecture) into a Hugging Face model folder.
    Convert(sheared::model::cli::ConvertArgs),
    /// Benchmarks.
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result: anyhow::Result<()> = match cli.command {
        Command::Kinds => {
            let registry = sheared::stages::builtin();
            for kind in registry.kinds() {
                let about = registry
                    .get(kind)
                    .map(|stage| stage.about())
                    .unwrap_or_default();
                println!("{kind:<14} {about}");
            }
            Ok(())
        }
        Command::Inspect(args) => sheared::model::cli::inspect(&args),
        Command::Score(args) => sheared::model::cli::score(&args),
        Command::Convert(args) => sheared::model::cli::convert(&args),
        Command::Bench { area: BenchArea::Model(args) } => sheared::bench::model::run(&args),
        Command::Bench { area: BenchArea::Prune(args) } => sheared::bench::prune::run_cli(&args),
        Command::Bench { area: BenchArea::Data(args) } => {
            sheared::bench::data::run(&args).map(|report| sheared::bench::data::print(&report))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
