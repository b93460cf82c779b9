//! `sheared-bench train`: training tokens/s of the full `train` loop on CPU, the share of step time
//! spent outside the model (drawing batches, building tensors, the loading policy, metrics lines,
//! checkpoints), and, as the peer measured in the same run, a bare burn loop over the same model and
//! batches (forward, cross-entropy, backward, AdamW, nothing else). Target: < 5% outside the model.
//!
//! The data is a synthetic three-domain tokenized folder written to a temporary directory (so the
//! bench needs no corpus); `--data DIR` uses a real `tokenize` output instead.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use burn::optim::GradientsParams;
use clap::Args;

use sheared::data::loading::{DynamicConfig, LoadingConfig, LoadingPolicy, ReferenceSpec};
use sheared::data::manifest::{DomainManifest, FORMAT, FORMAT_VERSION, Manifest};
use sheared::data::{
    DomainMixture, Exhaustion, ShardWriter, TokenDtype, TokenizedDataset, eval_windows,
};
use sheared::model::batch::causal_lm_batch_flat as batch_tensors;
use sheared::model::{Llama, LlamaConfig, cross_entropy, device};
use sheared::stage::{CancelFlag, NullReporter};
use sheared::train::driver::{self, DriverParts, DriverSettings, NonFinitePolicy};
use sheared::train::optim::AdamWSettings;
use sheared::train::schedule::LrSchedule;
use sheared::train::trainer::LmStep;

use crate::row::{self, Better, Conditions, Row};

#[derive(Debug, Clone, Args)]
pub struct TrainBenchArgs {
    #[arg(long, default_value_t = 4096)]
    pub vocab: usize,
    #[arg(long, default_value_t = 256)]
    pub hidden: usize,
    #[arg(long, default_value_t = 688)]
    pub intermediate: usize,
    #[arg(long, default_value_t = 4)]
    pub layers: usize,
    #[arg(long, default_value_t = 4)]
    pub heads: usize,
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    #[arg(long, default_value_t = 2)]
    pub grad_accum: usize,
    #[arg(long, default_value_t = 128)]
    pub seq: usize,
    /// Optimiser steps per measured run.
    #[arg(long, default_value_t = 20)]
    pub steps: u64,
    /// Evaluate (and update the dynamic policy) every this many steps; evaluation is reported apart.
    #[arg(long, default_value_t = 10)]
    pub eval_every: u64,
    #[arg(long, default_value_t = 10)]
    pub checkpoint_every: u64,
    /// A `tokenize` stage output to train on instead of the synthetic data.
    #[arg(long)]
    pub data: Option<PathBuf>,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Print the results as JSON rows (see `row.rs`) instead of the table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone)]
pub struct TrainBenchReport {
    pub parameters: u64,
    pub steps: u64,
    pub tokens_per_step: usize,
    pub threads: usize,
    /// The `train` loop, steps only (evaluation excluded), checkpoints included.
    pub loop_tokens_per_s: f64,
    /// The bare loop over the same batches.
    pub bare_tokens_per_s: f64,
    /// loop / bare (1.0 = no overhead).
    pub loop_vs_bare_ratio: f64,
    pub outside_model_fraction: f64,
    pub data_fraction: f64,
    pub logging_and_policy_fraction: f64,
    pub checkpoint_fraction: f64,
    pub eval_s: f64,
}

/// Writes a three-domain tokenized folder with synthetic token streams (counting, noise, repeated phrases).
pub fn write_synthetic_dataset(
    dir: &Path,
    vocab: u32,
    train_tokens: usize,
    eval_tokens: usize,
) -> anyhow::Result<()> {
    let names = ["counting", "noise", "phrases"];
    let dtype = TokenDtype::for_vocab(vocab as u64)?;
    let mut entries = Vec::new();
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as u32
    };
    let phrase: Vec<u32> = (0..97).map(|i| (i * 7919 + 5) % vocab).collect();
    for (kind, name) in names.iter().enumerate() {
        for (split, length) in [("train", train_tokens), ("eval", eval_tokens)] {
            let tokens: Vec<u32> = (0..length)
                .map(|i| match kind {
                    0 => (i as u32).wrapping_mul(3) % vocab,
                    1 => next() % vocab,
                    _ => {
                        if next() % 10 == 0 {
                            next() % vocab
                        } else {
                            phrase[i % phrase.len()]
                        }
                    }
                })
                .collect();
            let mut writer =
                ShardWriter::create(&dir.join(split).join(format!("{name}.bin")), dtype)?;
            writer.write(&tokens)?;
            writer.finish()?;
        }
        entries.push(DomainManifest {
            name: name.to_string(),
            sources: vec![],
            train_documents: 1,
            eval_documents: 1,
            train_tokens: train_tokens as u64,
            eval_tokens: eval_tokens as u64,
            empty_documents: 0,
            invalid_utf8_replaced: 0,
            train_truncated: false,
            eval_from_train_tail_tokens: 0,
        });
    }
    std::fs::write(dir.join("tokenizer.json"), "{}")?;
    Manifest {
        format: FORMAT.into(),
        format_version: FORMAT_VERSION,
        dtype,
        vocab_size: vocab as u64,
        tokenizer_blake3: String::new(),
        bos_token: "<s>".into(),
        bos_id: 0,
        eos_token: "</s>".into(),
        eos_id: 1,
        seq_len: 0,
        seed: 0,
        domains: entries,
    }
    .save(&dir.join("manifest.json"))?;
    Ok(())
}

pub fn run(args: &TrainBenchArgs) -> anyhow::Result<TrainBenchReport> {
    let temp = tempfile::tempdir()?;
    let data_dir = match &args.data {
        Some(dir) => dir.clone(),
        None => {
            let dir = temp.path().join("data");
            let tokens = (args.steps as usize + 2) * args.batch * (args.seq + 1);
            write_synthetic_dataset(&dir, args.vocab as u32, tokens, 8 * (args.seq + 1) * 2)?;
            dir
        }
    };
    let dataset = TokenizedDataset::open(&data_dir)?;
    let mut config = LlamaConfig::new(
        dataset.vocab_size(),
        args.hidden,
        args.intermediate,
        args.layers,
        args.heads,
        args.heads,
    );
    config.max_position_embeddings = config.max_position_embeddings.max(args.seq);
    let base_device = device::parse(&args.device)?;
    let train_device = base_device.autodiff();
    let domains = dataset.domains().to_vec();
    let micro = args.batch / args.grad_accum.max(1);
    let schedule = LrSchedule {
        peak_lr: 3e-4,
        warmup_steps: 2,
        total_steps: args.steps,
        min_lr_ratio: 0.1,
    };
    let adamw = AdamWSettings::default();
    let settings = DriverSettings {
        total_steps: args.steps,
        batch_size: args.batch,
        grad_accum: args.grad_accum,
        seq_len: args.seq,
        grad_clip: 1.0,
        eval_every: args.eval_every,
        eval_first: false,
        checkpoint_every: args.checkpoint_every,
        keep_checkpoints: 2,
        on_non_finite: NonFinitePolicy::Stop,
        max_skipped_batches: 0,
        optimizer_offload: false,
    };
    let loading = LoadingConfig::Dynamic(DynamicConfig {
        reference: ReferenceSpec::Table(domains.iter().map(|d| (d.clone(), 2.0)).collect()),
        initial_weights: None,
        eta: 1.0,
        smoothing: 1e-4,
        clamp_at_zero: false,
        update_every: None,
    });

    // Warm-up (allocator, thread pool, kernel caches) so neither measured side pays first-step costs.
    {
        train_device.seed(17);
        let model = Llama::new(&config, &train_device);
        let mut mixture = DomainMixture::new(&dataset, args.seq, 17, Exhaustion::Wrap)?;
        let batch = mixture.next_batch(micro)?;
        let (inputs, targets) = batch_tensors(&batch.tokens, micro, args.seq, &train_device);
        let loss = cross_entropy(model.forward(inputs, None), targets);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let _ = adamw.build().step(3e-4, model, grads);
    }

    // The full loop.
    train_device.seed(17);
    let model = Llama::new(&config, &train_device);
    let parameters = config.parameter_counts().total;
    let parts = DriverParts {
        model,
        optimizer: adamw.build(),
        mixture: DomainMixture::new(&dataset, args.seq, 17, Exhaustion::Wrap)?,
        policy: LoadingPolicy::new(&loading, &domains, None)?,
        eval: eval_windows(&dataset, args.seq, micro)?,
    };
    let scratch = temp.path().join("scratch");
    let outcome = driver::run(
        &mut LmStep {
            schedule,
            activation_checkpointing: false,
            teacher: None,
        },
        &settings,
        parts,
        &scratch,
        "bench",
        &NullReporter,
        &CancelFlag::default(),
    )
    .context("running the training loop")?;
    let timing = outcome.timing;

    // The peer: the same model size and batches, nothing but forward/backward/AdamW.
    train_device.seed(17);
    let mut model = Llama::new(&config, &train_device);
    let mut optimizer = adamw.build();
    let mut mixture = DomainMixture::new(&dataset, args.seq, 17, Exhaustion::Wrap)?;
    let batches: Vec<_> = (0..args.steps as usize * args.grad_accum)
        .map(|_| mixture.next_batch(micro))
        .collect::<Result<_, _>>()?;
    let started = Instant::now();
    for step_batches in batches.chunks(args.grad_accum) {
        let mut accumulator = burn::optim::GradientsAccumulator::<Llama>::new();
        for batch in step_batches {
            let (inputs, targets) = batch_tensors(&batch.tokens, micro, args.seq, &train_device);
            let loss = cross_entropy(model.forward(inputs, None), targets)
                .div_scalar(args.grad_accum as f64);
            let _: f32 = loss.clone().into_scalar();
            accumulator.accumulate(&model, GradientsParams::from_grads(loss.backward(), &model));
        }
        model = optimizer.step(3e-4, model, accumulator.grads());
    }
    let bare_s = started.elapsed().as_secs_f64();

    let tokens = (args.steps as usize * args.batch * args.seq) as f64;
    let loop_s = timing.steps_s + timing.checkpoint_s;
    Ok(TrainBenchReport {
        parameters,
        steps: args.steps,
        tokens_per_step: args.batch * args.seq,
        threads: rayon::current_num_threads(),
        loop_tokens_per_s: tokens / loop_s,
        bare_tokens_per_s: tokens / bare_s,
        loop_vs_bare_ratio: bare_s / loop_s,
        outside_model_fraction: timing.outside_model_fraction(),
        data_fraction: timing.data_s / loop_s,
        logging_and_policy_fraction: timing.logging_s / loop_s,
        checkpoint_fraction: timing.checkpoint_s / loop_s,
        eval_s: timing.eval_s,
    })
}

/// The report as rows: the `train` loop against the bare loop, and its time outside the model.
fn rows(report: &TrainBenchReport) -> Vec<Row> {
    let conditions = Conditions::now("train", report.threads);
    vec![
        conditions
            .row(
                "`train` loop (steps + checkpoints)",
                "throughput",
                report.loop_tokens_per_s,
                "tokens/s",
                Better::Higher,
            )
            .against(
                "bare burn loop (same batches, forward/backward/AdamW only)",
                report.bare_tokens_per_s,
            )
            .notes(format!(
                "{} parameters; {} steps of {} tokens; evaluation {:.2} s (reported apart)",
                report.parameters, report.steps, report.tokens_per_step, report.eval_s
            )),
        conditions
            .row(
                "`train` loop, time outside the model",
                "share of step time",
                100.0 * report.outside_model_fraction,
                "%",
                Better::Lower,
            )
            .target("< 5 %")
            .notes(format!(
                "data {:.2} %, metrics + policy {:.2} %, checkpoints {:.2} %",
                100.0 * report.data_fraction,
                100.0 * report.logging_and_policy_fraction,
                100.0 * report.checkpoint_fraction
            )),
    ]
}

/// Print the table, or the rows as JSON with `--json`.
pub fn print(report: &TrainBenchReport, json: bool) -> anyhow::Result<()> {
    if json {
        return row::print_json(&rows(report));
    }
    println!(
        "model: {} parameters; {} steps of {} tokens; {} threads",
        report.parameters, report.steps, report.tokens_per_step, report.threads
    );
    println!(
        "train loop (steps + checkpoints):  {:>10.0} tokens/s",
        report.loop_tokens_per_s
    );
    println!(
        "bare burn loop (same batches):     {:>10.0} tokens/s",
        report.bare_tokens_per_s
    );
    println!(
        "loop / bare:                       {:>10.3}x",
        report.loop_vs_bare_ratio
    );
    println!(
        "outside the model: {:.2}% of step time (data {:.2}%, metrics+policy {:.2}%, checkpoints {:.2}%); target < 5%",
        100.0 * report.outside_model_fraction,
        100.0 * report.data_fraction,
        100.0 * report.logging_and_policy_fraction,
        100.0 * report.checkpoint_fraction
    );
    println!("evaluation (reported apart): {:.2} s", report.eval_s);
    Ok(())
}
