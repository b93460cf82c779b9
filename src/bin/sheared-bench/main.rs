//! `sheared-bench`: every benchmark of sheared against a named peer, and the BENCHMARKS.md writer.
//!
//! A separate binary so that the product (`sheared`) carries only what a user needs at run time:
//! the peer comparisons embed a Python script, shell out to python3/b3sum/md5sum and reach into
//! the library's internals, none of which a training run wants. This binary sees the library only
//! through its public API. Run it with `cargo run --release --bin sheared-bench -- <area> ...`.

mod data;
mod eval;
mod machine;
mod markdown;
mod model;
mod prune;
mod row;
mod runner;
mod store;
mod train;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "sheared-bench",
    version,
    about = "Benchmarks of sheared against named peers, measured in the same run."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Tokens/s of a LLaMA training step (forward + backward) against PyTorch, same config and threads.
    Model(model::ModelBenchArgs),
    /// Prune-step vs plain train-step tokens/s on the same model (the mask overhead; target < 15 %).
    Prune(prune::PruneBenchArgs),
    /// Tokenize throughput vs Python `tokenizers`, and DomainMixture sampler throughput.
    Data(data::DataBenchArgs),
    /// Scored requests/s of the eval stage's scorer vs lm-eval-harness on the same model and items.
    Eval(eval::EvalBenchArgs),
    /// No-op rerun of a 20-stage recipe with large cached outputs, against rehashing everything.
    Runner(runner::RunnerBenchArgs),
    /// Hashing throughput against b3sum and md5sum, and the stat-cache hit cost.
    Store(store::Args),
    /// Training tokens/s of the `train` loop and its time outside the model, against a bare burn loop.
    Train(train::TrainBenchArgs),
    /// Run every area (or `--only` some) and regenerate BENCHMARKS.md.
    All(markdown::AllArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    sheared::exec::logging::init();
    let result: anyhow::Result<()> = match cli.command {
        Command::Model(args) => model::run(&args),
        Command::Prune(args) => prune::run_cli(&args),
        Command::Data(args) => data::run(&args).map(|report| data::print(&report)),
        Command::Eval(args) => eval::run(&args),
        Command::Runner(args) => runner::run(&args),
        Command::Store(args) => store::run(&args).and_then(|report| {
            println!("{}", report.to_markdown());
            match &args.json {
                Some(path) => report.write_json(path),
                None => Ok(()),
            }
        }),
        Command::Train(args) => {
            train::run(&args).and_then(|report| train::print(&report, args.json))
        }
        Command::All(args) => markdown::regenerate(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", sheared::exec::cli::format_error(&error));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    /// `sheared-bench all` runs the areas it declares; every subcommand but `all` must be one.
    #[test]
    fn every_area_is_declared_for_the_markdown() {
        let subcommands: Vec<String> = Cli::command()
            .get_subcommands()
            .map(|command| command.get_name().to_string())
            .filter(|name| name != "all")
            .collect();
        let declared: Vec<String> = markdown::AREAS
            .iter()
            .map(|(area, _)| area.to_string())
            .collect();
        assert_eq!(subcommands, declared);
    }
}
