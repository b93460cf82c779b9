//! `sheared-bench prune`: the cost of pruning over plain training on the same model.
//!
//! A prune step (hard-concrete sampling, masked forward, Lagrangian, λ-gradient negation, three
//! optimiser groups) and a plain train step (unmasked forward, one AdamW group) run on the same
//! random model and the same batch, with the same global-norm clip. Rounds alternate between the
//! two so that machine noise hits both; the report gives tokens/s of each and the mask overhead
//! (target: below 15 %).

use std::time::Instant;

use burn::optim::GradientsParams;
use burn::tensor::Device;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use sheared::model::batch::causal_lm_batch_flat as inputs_and_targets;
use sheared::model::l0::L0Module;
use sheared::model::{Llama, LlamaConfig, cross_entropy};
use sheared::stage::Stage;
use sheared::stages::prune::train_loop::{L0Step, PruneModel, build_optimizer};
use sheared::stages::prune::{PruneConfig, PruneStage, resolve_target};
use sheared::train::clip::clip_global_norm;
use sheared::train::driver::take_step;
use sheared::train::optim::AdamWSettings;

use crate::row::{self, Better, Conditions, Row};

/// Model and batch sizes of the benchmark (defaults: the 5.3M-parameter probe model of the burn notes).
#[derive(Debug, Clone)]
pub struct PruneBenchOptions {
    pub vocab: usize,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub intermediate: usize,
    pub batch_size: usize,
    pub seq_len: usize,
    /// Timed steps per method per round.
    pub steps: usize,
    pub rounds: usize,
}

impl Default for PruneBenchOptions {
    fn default() -> Self {
        PruneBenchOptions {
            vocab: 4096,
            hidden: 256,
            layers: 4,
            heads: 4,
            intermediate: 688,
            batch_size: 8,
            seq_len: 256,
            steps: 3,
            rounds: 2,
        }
    }
}

#[derive(Debug, Clone)]
pub struct PruneBenchReport {
    pub options: PruneBenchOptions,
    pub parameters: u64,
    pub train_tokens_per_s: f64,
    pub prune_tokens_per_s: f64,
    /// (train tokens/s ÷ prune tokens/s − 1) × 100.
    pub mask_overhead_percent: f64,
}

pub fn run(options: &PruneBenchOptions) -> anyhow::Result<PruneBenchReport> {
    let device = Device::flex().autodiff();
    let mut config = LlamaConfig::new(
        options.vocab,
        options.hidden,
        options.intermediate,
        options.layers,
        options.heads,
        options.heads,
    );
    config.head_dim = options.hidden / options.heads.max(1);
    device.seed(1);
    let source = Llama::new(&config, &device);

    let table: toml::Table = format!(
        "model = {{ path = \"bench\" }}\ndata = {{ path = \"bench\" }}\nsteps = 1000\nbatch_size = {}\nseq_len = {}\n\
         target = {{ layers = {}, hidden = {}, heads = {}, intermediate = {} }}",
        options.batch_size,
        options.seq_len,
        (options.layers / 2).max(1),
        options.hidden / 2,
        (options.heads / 2).max(1),
        options.intermediate / 2,
    )
    .parse()?;
    let prune_config = PruneConfig::from_table(&PruneStage.normalize(&table)?)?;
    let resolved = resolve_target(&prune_config, &config)?;

    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let tokens: Vec<u32> = (0..options.batch_size * (options.seq_len + 1))
        .map(|_| rng.random_range(0..options.vocab as u32))
        .collect();
    let tokens_per_step = (options.batch_size * options.seq_len) as f64;

    let l0 = L0Module::new(
        resolved.dims.clone(),
        &prune_config.pruning_modules,
        &device,
        &mut rng,
    );
    let mut pruned = PruneModel {
        llama: source.clone(),
        l0,
    };
    let mut prune_optimizer = build_optimizer(&prune_config.adamw());
    let mut plain = source;
    let mut plain_optimizer = AdamWSettings {
        betas: [0.9, 0.95],
        eps: 1e-8,
        weight_decay: 0.0,
        no_decay: Vec::new(),
    }
    .build();
    let mut l0_step = L0Step::new(&prune_config, &resolved, ChaCha8Rng::seed_from_u64(3));

    let mut train_seconds = 0.0;
    let mut prune_seconds = 0.0;
    // One untimed step each first (allocations, lazy init).
    for round in 0..=options.rounds {
        let steps = if round == 0 { 1 } else { options.steps };
        let began = Instant::now();
        for _ in 0..steps {
            let (inputs, targets) =
                inputs_and_targets(&tokens, options.batch_size, options.seq_len, &device);
            let loss = cross_entropy(plain.forward(inputs, None), targets);
            let _value = loss.clone().into_scalar::<f32>();
            let grads = GradientsParams::from_grads(loss.backward(), &plain);
            let (grads, _) = clip_global_norm(grads, &plain, 1.0);
            plain = plain_optimizer.step(1e-4, plain, grads);
        }
        let _sync = plain.norm.weight.val().into_data();
        if round > 0 {
            train_seconds += began.elapsed().as_secs_f64();
        }
        let began = Instant::now();
        for step in 0..steps {
            let mut draw = || {
                Ok(inputs_and_targets(
                    &tokens,
                    options.batch_size,
                    options.seq_len,
                    &device,
                ))
            };
            pruned = take_step(
                &mut l0_step,
                pruned,
                &mut prune_optimizer,
                step as u64,
                1,
                prune_config.grad_clip,
                &mut draw,
            )?
            .model;
        }
        let _sync = pruned.llama.norm.weight.val().into_data();
        if round > 0 {
            prune_seconds += began.elapsed().as_secs_f64();
        }
    }
    let timed_steps = (options.steps * options.rounds) as f64;
    let train_tokens_per_s = tokens_per_step * timed_steps / train_seconds.max(1e-9);
    let prune_tokens_per_s = tokens_per_step * timed_steps / prune_seconds.max(1e-9);
    Ok(PruneBenchReport {
        options: options.clone(),
        parameters: config.parameter_counts().total,
        train_tokens_per_s,
        prune_tokens_per_s,
        mask_overhead_percent: (train_tokens_per_s / prune_tokens_per_s - 1.0) * 100.0,
    })
}

/// `sheared-bench prune` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct PruneBenchArgs {
    /// Timed steps per method per round.
    #[arg(long, default_value_t = 3)]
    pub steps: usize,
    /// Alternating rounds (prune and train take turns so that noise hits both).
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
    #[arg(long, default_value_t = 256)]
    pub hidden: usize,
    #[arg(long, default_value_t = 4)]
    pub layers: usize,
    #[arg(long, default_value_t = 256)]
    pub seq_len: usize,
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Print the results as JSON rows (see `row.rs`) instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// Run with CLI arguments and print a table (or JSON with `--json`).
pub fn run_cli(args: &PruneBenchArgs) -> anyhow::Result<()> {
    let options = PruneBenchOptions {
        steps: args.steps,
        rounds: args.rounds,
        hidden: args.hidden,
        layers: args.layers,
        seq_len: args.seq_len,
        batch_size: args.batch_size,
        ..Default::default()
    };
    let json = args.json;
    let report = run(&options)?;
    if json {
        row::print_json(&rows(&report))?;
    } else {
        println!(
            "model: {} params (hidden {}, {} layers, {} heads, intermediate {}), batch {} × seq {}",
            report.parameters,
            options.hidden,
            options.layers,
            options.heads,
            options.intermediate,
            options.batch_size,
            options.seq_len
        );
        println!(
            "train step (plain forward, 1 AdamW group): {:>10.0} tokens/s",
            report.train_tokens_per_s
        );
        println!(
            "prune step (masks + Lagrangian, 3 groups): {:>10.0} tokens/s",
            report.prune_tokens_per_s
        );
        println!(
            "mask overhead: {:.1} % (target < 15 %)",
            report.mask_overhead_percent
        );
    }
    Ok(())
}

/// The report as rows: the prune step against the plain train step on the same model and batch.
fn rows(report: &PruneBenchReport) -> Vec<Row> {
    let options = &report.options;
    let conditions = Conditions::now("prune", rayon::current_num_threads());
    vec![
        conditions
            .row(
                "prune step (masks + Lagrangian, 3 groups)",
                "throughput",
                report.prune_tokens_per_s,
                "tokens/s",
                Better::Higher,
            )
            .against(
                "plain train step (same model and batch, 1 AdamW group)",
                report.train_tokens_per_s,
            )
            .target("≥ 0.87 (mask overhead < 15 %)")
            .notes(format!(
                "mask overhead {:.1} %; {} parameters (hidden {}, {} layers, {} heads, intermediate {}), batch {} × seq {}, {} rounds of {} steps",
                report.mask_overhead_percent,
                report.parameters,
                options.hidden,
                options.layers,
                options.heads,
                options.intermediate,
                options.batch_size,
                options.seq_len,
                options.rounds,
                options.steps
            )),
    ]
}
