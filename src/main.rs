//! The `sheared` command line. Each subcommand is a thin shell over a library function.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "sheared", version, about = "Build small, strong language models out of big ones (Sheared LLaMA).")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the stage kinds this binary knows.
    Kinds,
    /// Benchmarks; each reports a ratio against a peer measured in the same run.
    Bench {
        #[command(subcommand)]
        area: BenchArea,
    },
}

#[derive(Subcommand)]
enum BenchArea {
    /// Prune-step vs plain train-step tokens/s on the same model (the mask overhead; target < 15 %).
    Prune {
        /// Timed steps per method per round.
        #[arg(long, default_value_t = 3)]
        steps: usize,
        /// Alternating rounds (prune and train take turns so noise hits both).
        #[arg(long, default_value_t = 2)]
        rounds: usize,
        #[arg(long, default_value_t = 256)]
        hidden: usize,
        #[arg(long, default_value_t = 4)]
        layers: usize,
        #[arg(long, default_value_t = 256)]
        seq_len: usize,
        #[arg(long, default_value_t = 8)]
        batch_size: usize,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result: anyhow::Result<()> = match cli.command {
        Command::Kinds => {
            let registry = sheared::stages::builtin();
            for kind in registry.kinds() {
                let about = registry.get(kind).map(|stage| stage.about()).unwrap_or_default();
                println!("{kind:<14} {about}");
            }
            Ok(())
        }
        Command::Bench { area: BenchArea::Prune { steps, rounds, hidden, layers, seq_len, batch_size, json } } => {
            let options = sheared::bench::prune::PruneBenchOptions {
                steps,
                rounds,
                hidden,
                layers,
                seq_len,
                batch_size,
                ..Default::default()
            };
            sheared::bench::prune::run_and_print(&options, json)
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
