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
    /// Run a benchmark and print a markdown table.
    Bench {
        #[command(subcommand)]
        area: BenchArea,
    },
}

#[derive(Subcommand)]
enum BenchArea {
    /// Hashing throughput against b3sum and md5sum, and the stat-cache hit cost.
    Store(sheared::bench::store::Args),
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
        Command::Bench {
            area: BenchArea::Store(args),
        } => sheared::bench::store::run(&args).and_then(|report| {
            println!("{}", report.to_markdown());
            match &args.json {
                Some(path) => report.write_json(path),
                None => Ok(()),
            }
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
