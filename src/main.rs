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
    /// Run every `sheared bench <area>` this binary has and regenerate BENCHMARKS.md.
    Benchmarks {
        /// Where to write the Markdown.
        #[arg(long, default_value = "BENCHMARKS.md")]
        out: std::path::PathBuf,
        /// Only these areas (repeatable); default: every area.
        #[arg(long)]
        only: Vec<String>,
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
        Command::Benchmarks { out, only } => sheared::report::benchmarks::regenerate(&out, &only),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
