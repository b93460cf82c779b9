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
    /// Benchmarks that report ratios against a named peer measured in the same run.
    Bench {
        #[command(subcommand)]
        area: BenchArea,
    },
}

#[derive(Subcommand)]
enum BenchArea {
    /// Tokenize throughput vs Python `tokenizers`, and DomainMixture sampler throughput.
    Data(sheared::bench::data::DataBenchArgs),
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
