//! The peak-memory estimate ([`sheared::model::memory`]) against a measured CPU run: real training
//! steps of a small LLaMA (dense `train`, L0 `prune` steps with all four masks, and dense `train` with
//! activation checkpointing at a longer sequence) on burn's CPU
//! backend, peak RSS growth read from `/proc/self/status` (`VmHWM`). Each workload runs in a fresh
//! process (this test binary re-executed with `SHEARED_MEASURE=<workload>`): memory a previous
//! workload freed stays in the allocator and would hide the next one's growth, and no other test
//! may share the process's peak.
//!
//! The measured peak must lie within a factor of 1.5 of the estimate either way (docs/training.md
//! quotes the numbers). Linux only.
#![cfg(target_os = "linux")]

use burn::optim::GradientsParams;
use burn::tensor::Device;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use sheared::model::l0::L0Module;
use sheared::model::memory::{self, MaskSet, MemoryOptions, Step, StepShape};
use sheared::model::{Llama, LlamaConfig, cross_entropy};
use sheared::stage::Stage;
use sheared::stages::prune::train_loop::{L0Step, PruneModel, build_optimizer};
use sheared::stages::prune::{PruneConfig, PruneStage, resolve_target};
use sheared::train::clip::clip_global_norm;
use sheared::train::driver::take_step;
use sheared::train::optim::AdamWSettings;

/// The accepted ratio between measured and estimated peak, both ways.
const FACTOR: f64 = 1.5;

/// A `kB` field of `/proc/self/status`, in bytes.
fn status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"));
    let kib: u64 = line
        .trim_start_matches(':')
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    kib * 1024
}

/// Resets `VmHWM` to the current RSS (Linux ≥ 4.0) and returns that RSS.
fn reset_peak() -> u64 {
    std::fs::write("/proc/self/clear_refs", "5")
        .expect("reset VmHWM through /proc/self/clear_refs");
    status_bytes("VmRSS")
}

const WORKLOAD: &str = "SHEARED_MEASURE";
const TEST_NAME: &str = "measured_cpu_peaks_are_within_the_stated_factor_of_the_estimate";

/// Runs `workload` in a fresh process of this test binary; its peak RSS growth in bytes.
fn measure_in_child(workload: &str) -> u64 {
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", TEST_NAME, "--nocapture", "--test-threads=1"])
        .env(WORKLOAD, workload)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{workload}: {text}");
    text.lines()
        .find_map(|line| line.split_once("measured_bytes=").map(|(_, value)| value))
        .unwrap_or_else(|| panic!("{workload}: no measurement in {text}"))
        .trim()
        .parse()
        .unwrap()
}

fn tokens(rows: usize, width: usize, vocab: usize) -> Vec<u32> {
    (0..rows * width)
        .map(|index| ((index * 7919 + index / 13) % vocab) as u32)
        .collect()
}

fn config() -> LlamaConfig {
    let mut config = LlamaConfig::new(4096, 256, 704, 4, 8, 8);
    config.max_position_embeddings = 512;
    config
}

const SHAPE: StepShape = StepShape {
    micro_batch: 4,
    seq_len: 256,
};

/// Tokens of the checkpointed workload: long enough that one layer's unfused attention scores
/// (`2 × [2, 8, 1024, 1024]` fp32, 128 MiB) would dwarf the blockwise attention's blocks.
const LONG_SHAPE: StepShape = StepShape {
    micro_batch: 2,
    seq_len: 1024,
};

/// Two dense training steps at `shape` (the second has AdamW's moments), with activation
/// checkpointing (blockwise attention) or a plain backward; returns the peak RSS growth.
fn measure_train(config: &LlamaConfig, shape: StepShape, checkpointed: bool) -> u64 {
    let device = Device::flex().autodiff();
    device.seed(3);
    let rows = tokens(shape.micro_batch, shape.seq_len + 1, config.vocab_size);
    let baseline = reset_peak();
    let mut model = Llama::new(config, &device);
    let mut optimizer = AdamWSettings::default().build();
    for _ in 0..2 {
        let (inputs, targets) = sheared::model::batch::causal_lm_batch_flat(
            &rows,
            shape.micro_batch,
            shape.seq_len,
            &device,
        );
        let grads = if checkpointed {
            model
                .backward_checkpointed(inputs, None, |logits| cross_entropy(logits, targets)) // [1]
                .gradients
        } else {
            let logits = model.forward(inputs, None); // [batch, seq, vocab]
            GradientsParams::from_grads(cross_entropy(logits, targets).backward(), &model)
        };
        let (grads, _) = clip_global_norm(grads, &model, 1.0);
        model = optimizer.step(1e-4, model, grads);
    }
    drop(model);
    status_bytes("VmHWM") - baseline
}

/// Two L0 pruning steps of the same model with all four masks.
fn measure_prune(config: &LlamaConfig) -> u64 {
    let table: toml::Table = format!(
        "model = {{ path = \"m\" }}\ndata = {{ stage = \"d\" }}\nsteps = 10\nbatch_size = {}\nseq_len = {}\n\
         target = {{ layers = 2, hidden = 128, heads = 4, intermediate = 352 }}\n",
        SHAPE.micro_batch, SHAPE.seq_len
    )
    .parse()
    .unwrap();
    let prune = PruneConfig::from_table(&PruneStage.normalize(&table).unwrap()).unwrap();
    let resolved = resolve_target(&prune, config).unwrap();
    let device = Device::flex().autodiff();
    device.seed(5);
    let rows = tokens(SHAPE.micro_batch, SHAPE.seq_len + 1, config.vocab_size);
    let baseline = reset_peak();
    let l0 = L0Module::new(
        resolved.dims.clone(),
        &prune.pruning_modules,
        &device,
        &mut ChaCha8Rng::seed_from_u64(1),
    );
    let mut model = PruneModel {
        llama: Llama::new(config, &device),
        l0,
    };
    let mut optimizer = build_optimizer(&prune.adamw());
    let mut step_impl = L0Step::new(&prune, &resolved, ChaCha8Rng::seed_from_u64(2));
    for step in 0..2 {
        let mut draw = || {
            Ok(sheared::model::batch::causal_lm_batch_flat(
                &rows,
                SHAPE.micro_batch,
                SHAPE.seq_len,
                &device,
            ))
        };
        model = take_step(
            &mut step_impl,
            model,
            &mut optimizer,
            step,
            1,
            prune.grad_clip,
            &mut draw,
        )
        .unwrap()
        .model;
    }
    drop(model);
    status_bytes("VmHWM") - baseline
}

#[test]
fn measured_cpu_peaks_are_within_the_stated_factor_of_the_estimate() {
    let config = config();
    if let Ok(workload) = std::env::var(WORKLOAD) {
        let measured = match workload.as_str() {
            "train" => measure_train(&config, SHAPE, false),
            "prune" => measure_prune(&config),
            "train-checkpointed" => measure_train(&config, LONG_SHAPE, true),
            other => panic!("unknown workload {other}"),
        };
        println!("measured_bytes={measured}");
        return;
    }
    let mib = |bytes: u64| bytes as f64 / (1u64 << 20) as f64;
    let cases = [
        (
            "train",
            memory::estimate(
                &config,
                Step::Train { grad_accum: 1 },
                SHAPE,
                MemoryOptions::FP32,
            ),
            measure_in_child("train"),
        ),
        (
            "prune",
            memory::estimate(
                &config,
                Step::Prune {
                    masks: MaskSet::from_modules(&sheared::model::l0::default_pruning_modules()),
                    grad_accum: 1,
                },
                SHAPE,
                MemoryOptions::FP32,
            ),
            measure_in_child("prune"),
        ),
        (
            "train-checkpointed",
            memory::estimate(
                &config,
                Step::Train { grad_accum: 1 },
                LONG_SHAPE,
                MemoryOptions {
                    activation_checkpointing: true,
                    ..MemoryOptions::FP32
                },
            ),
            measure_in_child("train-checkpointed"),
        ),
    ];
    for (name, estimate, measured) in cases {
        let ratio = measured as f64 / estimate.total_bytes() as f64;
        eprintln!(
            "{name}: estimated {:.1} MiB ({}), measured peak RSS growth {:.1} MiB, measured/estimated = {ratio:.2}",
            mib(estimate.total_bytes()),
            estimate.describe(),
            mib(measured)
        );
        assert!(
            (1.0 / FACTOR..=FACTOR).contains(&ratio),
            "{name}: measured {:.1} MiB vs estimated {:.1} MiB (ratio {ratio:.2}) is outside the factor {FACTOR}",
            mib(measured),
            mib(estimate.total_bytes())
        );
    }
}
