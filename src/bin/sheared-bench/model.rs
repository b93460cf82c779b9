//! `sheared-bench model`: tokens/s of a LLaMA training step (forward + cross-entropy + backward, and
//! the AdamW step separately) for a ~20M-parameter model, against transformers' `LlamaForCausalLM`
//! in PyTorch with the same config, batch, sequence length and thread count, measured in the same
//! run (the PyTorch side is `scripts/bench_model_torch.py`, embedded in the binary and run with
//! `--python`). Reports the ratio (sheared / PyTorch, higher is better) and both peak RSS values,
//! and the forward / backward / optimiser split of each side so a gap can be located.

use std::io::Write;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};
use burn::optim::GradientsParams;
use burn::tensor::{Distribution, Int, Tensor};
use clap::Args;
use serde::{Deserialize, Serialize};

use sheared::model::precision::Precision;
use sheared::model::{Llama, LlamaConfig, cross_entropy, device};
use sheared::train::optim::AdamWSettings;

use crate::machine::load_average;
use crate::row::{self, Better, Conditions, Row};

const TORCH_SCRIPT: &str = include_str!("../../../scripts/bench_model_torch.py");

#[derive(Debug, Clone, Args)]
pub struct ModelBenchArgs {
    #[arg(long, default_value_t = 8192)]
    pub vocab: usize,
    #[arg(long, default_value_t = 384)]
    pub hidden: usize,
    #[arg(long, default_value_t = 1024)]
    pub intermediate: usize,
    #[arg(long, default_value_t = 8)]
    pub layers: usize,
    #[arg(long, default_value_t = 6)]
    pub heads: usize,
    /// Key/value heads (grouped-query attention); default: `--heads`.
    #[arg(long)]
    pub kv_heads: Option<usize>,
    /// Tie `lm_head` to the embedding (SmolLM2 does).
    #[arg(long)]
    pub tied: bool,
    /// `fp32`, or `bf16` mixed precision (sheared's `settings.precision`; PyTorch's autocast).
    #[arg(long, default_value = "fp32")]
    pub precision: Precision,
    /// The device's peak dense matmul TFLOP/s in `--precision` (989 for an H100/H200 SXM in bf16):
    /// with it, the report gives each side's model FLOPs utilisation.
    #[arg(long)]
    pub peak_tflops: Option<f64>,
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    #[arg(long, default_value_t = 256)]
    pub seq: usize,
    /// Threads for both sides (rayon for sheared, torch.set_num_threads for PyTorch). Default: all cores.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Measured steps (after the warm-up); the median is reported.
    #[arg(long, default_value_t = 3)]
    pub steps: usize,
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// `cpu`, `torch-cpu` or `cuda:N` (PyTorch runs on the CPU or on that GPU).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Python with torch + transformers for the peer measurement.
    #[arg(long, env = "SHEARED_BENCH_PYTHON", default_value = "python3")]
    pub python: String,
    /// Measure sheared only.
    #[arg(long)]
    pub skip_torch: bool,
    /// Print the results as JSON rows (see `row.rs`) instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// Seconds of one measured step.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct StepTimes {
    forward_s: f64,
    backward_s: f64,
    optimizer_s: f64,
}

#[derive(Debug, Deserialize)]
struct TorchReport {
    torch_version: String,
    parameters: u64,
    steps: Vec<StepTimes>,
    peak_rss_bytes: u64,
    /// `torch.cuda.max_memory_allocated()` on a GPU.
    #[serde(default)]
    peak_device_bytes: Option<u64>,
    /// Seconds of one fp32 matmul of the MLP's shape ([`measure_matmul`]).
    #[serde(default)]
    matmul_s: Option<f64>,
}

/// Warm-up and timed repeats of the matmul measurement (the same in `bench_model_torch.py`).
const MATMUL_WARMUP: usize = 3;
const MATMUL_REPEATS: usize = 20;

/// Seconds of one fp32 matmul `[batch·seq, hidden] × [hidden, intermediate]` on the device: the
/// step's largest products on their own, so a gap in the step can be split into the matmul
/// kernels' share and the rest's.
fn measure_matmul(args: &ModelBenchArgs) -> anyhow::Result<f64> {
    let device = device::parse(&args.device)?;
    let a = Tensor::<2>::random(
        [args.batch * args.seq, args.hidden],
        Distribution::Default,
        &device,
    ); // [rows, hidden]
    let b = Tensor::<2>::random(
        [args.hidden, args.intermediate],
        Distribution::Default,
        &device,
    ); // [hidden, intermediate]
    for _ in 0..MATMUL_WARMUP {
        drop(a.clone().matmul(b.clone())); // [rows, intermediate]
    }
    device.sync().ok();
    let start = Instant::now();
    for _ in 0..MATMUL_REPEATS {
        drop(a.clone().matmul(b.clone())); // [rows, intermediate]
    }
    device.sync().ok();
    Ok(start.elapsed().as_secs_f64() / MATMUL_REPEATS as f64)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Median forward, backward, optimiser seconds.
fn medians(steps: &[StepTimes]) -> StepTimes {
    StepTimes {
        forward_s: median(steps.iter().map(|s| s.forward_s).collect()),
        backward_s: median(steps.iter().map(|s| s.backward_s).collect()),
        optimizer_s: median(steps.iter().map(|s| s.optimizer_s).collect()),
    }
}

fn peak_rss_bytes() -> u64 {
    // SAFETY: getrusage writes into the zeroed struct we own.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let status = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    if status == 0 {
        usage.ru_maxrss as u64 * 1024
    } else {
        0
    }
}

fn measure_sheared(args: &ModelBenchArgs, config: &LlamaConfig) -> anyhow::Result<Vec<StepTimes>> {
    let device = device::parse(&args.device)?.autodiff();
    device.seed(0);
    let mut model = Llama::new(config, &device).with_precision(args.precision);
    // The training stages' optimiser: betas (0.9, 0.95), eps 1e-8, as the PyTorch side.
    let mut optimizer = AdamWSettings {
        weight_decay: 0.0,
        ..AdamWSettings::default()
    }
    .build();
    let tokens = Tensor::<2, Int>::random(
        [args.batch, args.seq + 1],
        Distribution::Uniform(0.0, args.vocab as f64),
        &device,
    );
    let inputs = tokens.clone().narrow(1, 0, args.seq); // [batch, seq]
    let targets = tokens.narrow(1, 1, args.seq); // [batch, seq]
    let mut steps = Vec::new();
    for step in 0..args.warmup + args.steps {
        let start = Instant::now();
        let logits = model.forward(inputs.clone(), None); // [batch, seq, vocab]
        let loss = cross_entropy(logits, targets.clone());
        let _loss_value: f32 = loss.clone().into_scalar(); // host read: the forward is done
        let forward_done = Instant::now();
        let gradients = GradientsParams::from_grads(loss.backward(), &model);
        device.sync().ok();
        let backward_done = Instant::now();
        model = optimizer.step(1e-4, model, gradients);
        device.sync().ok();
        let optimizer_done = Instant::now();
        if step >= args.warmup {
            steps.push(StepTimes {
                forward_s: (forward_done - start).as_secs_f64(),
                backward_s: (backward_done - forward_done).as_secs_f64(),
                optimizer_s: (optimizer_done - backward_done).as_secs_f64(),
            });
        }
    }
    Ok(steps)
}

fn measure_torch(args: &ModelBenchArgs, threads: usize) -> anyhow::Result<TorchReport> {
    let mut script = tempfile::Builder::new()
        .suffix(".py")
        .tempfile()
        .context("creating a temporary file")?;
    script.write_all(TORCH_SCRIPT.as_bytes())?;
    let numbers = [
        ("vocab", args.vocab),
        ("hidden", args.hidden),
        ("intermediate", args.intermediate),
        ("layers", args.layers),
        ("heads", args.heads),
        ("batch", args.batch),
        ("seq", args.seq),
        ("kv-heads", args.kv_heads.unwrap_or(args.heads)),
        ("threads", threads),
        ("steps", args.steps),
        ("warmup", args.warmup),
    ];
    let mut command = Command::new(&args.python);
    command.arg(script.path());
    for (name, value) in numbers {
        command.arg(format!("--{name}")).arg(value.to_string());
    }
    let torch_device = match args.device.strip_prefix("cuda") {
        Some(index) => format!("cuda{index}"),
        None => "cpu".to_string(),
    };
    command
        .args(["--device", &torch_device])
        .args(["--precision", &args.precision.to_string()]);
    if args.tied {
        command.arg("--tied");
    }
    let output = command
        .env("OMP_NUM_THREADS", threads.to_string())
        .output()
        .with_context(|| format!("running `{}` (pass --python PATH to a Python with torch + transformers, or --skip-torch)", args.python))?;
    if !output.status.success() {
        bail!(
            "the PyTorch benchmark failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
                .lines()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
                .join(" | ")
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|line| line.starts_with('{'))
        .context("the PyTorch benchmark printed no JSON")?;
    serde_json::from_str(line).context("parsing the PyTorch benchmark's JSON")
}

pub fn run(args: &ModelBenchArgs) -> anyhow::Result<()> {
    let kv_heads = args.kv_heads.unwrap_or(args.heads);
    if args.steps == 0
        || args.heads == 0
        || !args.hidden.is_multiple_of(args.heads)
        || kv_heads == 0
        || !args.heads.is_multiple_of(kv_heads)
    {
        bail!(
            "--steps must be positive, --hidden a multiple of --heads and --heads a multiple of --kv-heads"
        );
    }
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    // Must happen before burn touches rayon; fails harmlessly if a pool already exists.
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global();
    device::set_libtorch_threads(threads);
    let mut config = LlamaConfig::new(
        args.vocab,
        args.hidden,
        args.intermediate,
        args.layers,
        args.heads,
        kv_heads,
    );
    config.max_position_embeddings = args.seq.max(2048);
    config.tie_word_embeddings = args.tied;
    let parameters = config.parameter_counts().total;
    // Training FLOPs per token (PaLM's accounting): 6 per parameter that multiplies an input (the
    // embedding lookup does not; a tied head does), plus the attention products, 12 · layers ·
    // hidden · seq (forward QKᵀ and AV, 2 FLOPs each, times 3 for forward + backward).
    let counts = config.parameter_counts();
    let matmul_parameters =
        counts.total - (args.vocab * args.hidden) as u64 * u64::from(!args.tied);
    let flops_per_token =
        6.0 * matmul_parameters as f64 + 12.0 * (args.layers * args.hidden * args.seq) as f64;
    let tokens_per_step = (args.batch * args.seq) as f64;

    let load_before = load_average();
    // PyTorch first, so that its peak RSS is not inflated by ours (they are separate processes anyway).
    let torch = if args.skip_torch {
        None
    } else {
        Some(measure_torch(args, threads)?)
    };
    let sheared_steps = measure_sheared(args, &config)?;
    let sheared = medians(&sheared_steps);
    let sheared_rss = peak_rss_bytes();
    let matmul_s = measure_matmul(args)?;
    let load_after = load_average();
    let matmul_flops = 2.0 * (args.batch * args.seq * args.hidden * args.intermediate) as f64;

    let rate = |t: &StepTimes| tokens_per_step / (t.forward_s + t.backward_s);
    let step_rate = |t: &StepTimes| tokens_per_step / (t.forward_s + t.backward_s + t.optimizer_s);
    let utilisation = |t: &StepTimes| {
        args.peak_tflops
            .map(|peak| rate(t) * flops_per_token / (peak * 1e12))
    };
    if args.json {
        let conditions = Conditions::now("model", threads);
        let setup = format!(
            "{parameters} parameters (vocab {}, d {}, I {}, {} layers, {} heads, {kv_heads} kv heads{}), {}, batch {} × seq {}, device {}, median of {} steps; load average before {}",
            args.vocab,
            args.hidden,
            args.intermediate,
            args.layers,
            args.heads,
            if args.tied { ", tied" } else { "" },
            args.precision,
            args.batch,
            args.seq,
            args.device,
            args.steps,
            load_before.map_or("unknown".to_string(), |load| format!("{load:.1}")),
        );
        let setup = match &torch {
            Some(torch) => format!(
                "{setup}; the PyTorch model has {} parameters",
                torch.parameters
            ),
            None => setup,
        };
        let peer = torch.as_ref().map(|torch| (medians(&torch.steps), torch));
        let mut rows = Vec::new();
        let mut add = |row: Row, peer_value: Option<f64>| {
            let row = match (&peer, peer_value) {
                (Some((_, torch)), Some(value)) => row
                    .against("PyTorch (transformers LlamaForCausalLM)", value)
                    .peer_version(torch.torch_version.clone()),
                _ => row,
            };
            rows.push(row);
        };
        let times = peer.as_ref().map(|(times, _)| times);
        add(
            conditions
                .row(
                    "forward + backward",
                    "throughput",
                    rate(&sheared),
                    "tokens/s",
                    Better::Higher,
                )
                .notes(setup),
            times.map(rate),
        );
        add(
            conditions.row(
                "training step (+ AdamW)",
                "throughput",
                step_rate(&sheared),
                "tokens/s",
                Better::Higher,
            ),
            times.map(step_rate),
        );
        add(
            conditions.row(
                "forward",
                "wall time",
                sheared.forward_s,
                "s",
                Better::Lower,
            ),
            times.map(|t| t.forward_s),
        );
        add(
            conditions.row(
                "backward",
                "wall time",
                sheared.backward_s,
                "s",
                Better::Lower,
            ),
            times.map(|t| t.backward_s),
        );
        add(
            conditions.row(
                "AdamW step",
                "wall time",
                sheared.optimizer_s,
                "s",
                Better::Lower,
            ),
            times.map(|t| t.optimizer_s),
        );
        let mut memory = conditions.row(
            "whole process",
            "peak RSS",
            sheared_rss as f64,
            "B",
            Better::Lower,
        );
        if let Some(device_bytes) = torch.as_ref().and_then(|torch| torch.peak_device_bytes) {
            memory = memory.notes(format!("PyTorch peak device memory {device_bytes} B"));
        }
        add(
            memory,
            torch.as_ref().map(|torch| torch.peak_rss_bytes as f64),
        );
        add(
            conditions.row(
                format!(
                    "matmul [{}, {}] × [{}, {}], fp32",
                    args.batch * args.seq,
                    args.hidden,
                    args.hidden,
                    args.intermediate
                ),
                "throughput",
                matmul_flops / matmul_s / 1e9,
                "GFLOP/s",
                Better::Higher,
            ),
            torch
                .as_ref()
                .and_then(|torch| torch.matmul_s)
                .map(|seconds| matmul_flops / seconds / 1e9),
        );
        if let Some(ours) = utilisation(&sheared) {
            add(
                conditions.row(
                    "forward + backward",
                    "model FLOPs utilisation",
                    ours,
                    "fraction",
                    Better::Higher,
                ),
                times.and_then(utilisation),
            );
        }
        return row::print_json(&rows);
    }
    println!(
        "LLaMA {} params (vocab {}, d {}, I {}, {} layers, {} heads), batch {} x seq {}, {} threads, device {}",
        parameters,
        args.vocab,
        args.hidden,
        args.intermediate,
        args.layers,
        args.heads,
        args.batch,
        args.seq,
        threads,
        args.device
    );
    let line = |name: &str, t: &StepTimes, rss: u64| {
        println!(
            "{name:<8} forward {:.3} s  backward {:.3} s  adamw {:.3} s  | fwd+bwd {:.0} tokens/s, full step {:.0} tokens/s | peak RSS {:.0} MB",
            t.forward_s,
            t.backward_s,
            t.optimizer_s,
            rate(t),
            step_rate(t),
            rss as f64 / 1e6
        )
    };
    if let (Some(before), Some(after)) = (load_before, load_after) {
        println!(
            "load average (1 min) {before:.1} before, {after:.1} after: a load above the thread count skews both sides"
        );
    }
    line("sheared", &sheared, sheared_rss);
    println!(
        "sheared  matmul [{}, {}] x [{}, {}] fp32: {:.1} GFLOP/s",
        args.batch * args.seq,
        args.hidden,
        args.hidden,
        args.intermediate,
        matmul_flops / matmul_s / 1e9
    );
    if let Some(torch) = &torch {
        if let Some(seconds) = torch.matmul_s {
            println!(
                "pytorch  matmul: {:.1} GFLOP/s",
                matmul_flops / seconds / 1e9
            );
        }
        let peer = medians(&torch.steps);
        line("pytorch", &peer, torch.peak_rss_bytes);
        println!(
            "ratio (sheared / pytorch, higher is better): forward+backward {:.2}x, full training step {:.2}x  (torch {})",
            rate(&sheared) / rate(&peer),
            step_rate(&sheared) / step_rate(&peer),
            torch.torch_version
        );
    }
    Ok(())
}
