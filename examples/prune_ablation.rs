//! Learned L0 masks vs magnitude vs random pruning at the same target shape (docs/pruning.md).
//!
//! 1. tokenize `data/sample` (7 domains, a byte-level BPE trained on the train split);
//! 2. train a small LLaMA source model on it;
//! 3. prune it to one target shape with `method = "l0"` (the `prune` stage), `"magnitude"` and
//!    `"random"`, and consolidate each (the `consolidate` stage);
//! 4. report each dense model's eval loss, right after consolidation and after the same number of
//!    continued-training steps (equal budget, so the l0 run's extra training steps are matched).
//!
//! `cargo run --release --example prune_ablation -- OUT_DIR [--source-steps N] [--prune-steps N] [--continue-steps N] [--batch N]`

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::Device;
use serde_json::json;
use sheared::data::tokenize::{
    DomainSpec, EvalSplit, TokenizeSpec, TokenizerSource, TrainTokenizer, tokenize,
};
use sheared::data::{DomainMixture, EvalWindows, Exhaustion, TokenizedDataset, eval_windows};
use sheared::model::batch::causal_lm_batch_flat as inputs_and_targets;
use sheared::model::{
    Llama, LlamaConfig, cross_entropy, cross_entropy_per_sequence, load_hf, save_hf,
};
use sheared::stage::{CancelFlag, Reporter, Settings, Stage, StageContext};
use sheared::stages::consolidate::ConsolidateStage;
use sheared::stages::prune::PruneStage;
use sheared::train::clip::clip_global_norm;
use sheared::train::optim::AdamWSettings;
use sheared::train::schedule::cosine_with_warmup;

const SEQ_LEN: usize = 128;
const EVAL_SEQUENCES: usize = 16;
const LR: f64 = 1e-3;

struct Printer;
impl Reporter for Printer {
    fn progress(&self, done: u64, total: u64, unit: &str) {
        if done.is_multiple_of(50) || done == total {
            eprintln!("  {done}/{total} {unit}");
        }
    }
    fn message(&self, text: &str) {
        eprintln!("  {text}");
    }
    fn metrics(&self, _: &serde_json::Value) {}
}

fn arg(args: &[String], name: &str, default: usize) -> usize {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Plain LM training (AdamW 0.9/0.95, cosine with 10 % warm-up to 0.1, global clip 1.0).
fn train(
    mut model: Llama,
    dataset: &TokenizedDataset,
    steps: usize,
    batch: usize,
    seed: u64,
    device: &Device,
) -> Result<Llama> {
    let mut mixture = DomainMixture::new(dataset, SEQ_LEN, seed, Exhaustion::Wrap)?;
    let mut optimizer = AdamWSettings {
        weight_decay: 0.0,
        ..Default::default()
    }
    .build();
    let began = Instant::now();
    for step in 0..steps {
        let rows = mixture.next_batch(batch)?;
        let (inputs, targets) = inputs_and_targets(&rows.tokens, batch, SEQ_LEN, device);
        let loss = cross_entropy(model.forward(inputs, None), targets);
        let value: f32 = loss.clone().into_scalar();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let (grads, _) = clip_global_norm(grads, &model, 1.0);
        let lr = LR * cosine_with_warmup(step as u64, (steps / 10) as u64, steps as u64, 0.1);
        model = optimizer.step(lr, model, grads);
        if (step + 1) % 100 == 0 || step + 1 == steps {
            let rate = ((step + 1) * batch * SEQ_LEN) as f64 / began.elapsed().as_secs_f64();
            eprintln!(
                "  train step {}/{steps}: loss {value:.3} ({rate:.0} tokens/s)",
                step + 1
            );
        }
    }
    Ok(model)
}

/// Mean eval CE per domain and the mean over domains.
fn evaluate(model: &Llama, windows: &[EvalWindows]) -> (BTreeMap<String, f64>, f64) {
    let device = model.embed_tokens.weight.device();
    let mut by_domain = BTreeMap::new();
    for domain in windows {
        let (inputs, targets) = inputs_and_targets(
            &domain.tokens,
            domain.num_sequences,
            domain.seq_len,
            &device,
        );
        let losses = cross_entropy_per_sequence(model.forward(inputs, None), targets);
        let values: Vec<f32> = losses.into_data().try_into_vec::<f32>().unwrap_or_default();
        by_domain.insert(
            domain.domain.clone(),
            values.iter().map(|&v| v as f64).sum::<f64>() / values.len() as f64,
        );
    }
    let mean = by_domain.values().sum::<f64>() / by_domain.len() as f64;
    (by_domain, mean)
}

fn run_stage(stage: &dyn Stage, table: &str, inputs: &[(&str, &Path)], out: &Path) -> Result<()> {
    let config = stage.normalize(&table.parse::<toml::Table>()?)?;
    stage.validate(&config)?;
    std::fs::create_dir_all(out)?;
    let scratch = out.with_extension("scratch");
    std::fs::create_dir_all(&scratch)?;
    let settings = Settings::default();
    let ctx = StageContext {
        name: "ablation",
        config: &config,
        inputs: inputs
            .iter()
            .map(|(k, p)| (k.to_string(), p.to_path_buf()))
            .collect(),
        out_dir: out.to_path_buf(),
        scratch_dir: scratch,
        settings: &settings,
        reporter: &Printer,
        cancel: CancelFlag::default(),
    };
    stage.run(&ctx)?;
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let out = PathBuf::from(
        args.first()
            .context("usage: prune_ablation OUT_DIR [--source-steps N] ...")?,
    );
    let source_steps = arg(&args, "--source-steps", 600);
    let prune_steps = arg(&args, "--prune-steps", 200);
    let continue_steps = arg(&args, "--continue-steps", 200);
    let batch = arg(&args, "--batch", 16);
    std::fs::create_dir_all(&out)?;
    let device = Device::flex().autodiff();

    // 1. Data.
    let data_dir = out.join("data");
    if !data_dir.join("manifest.json").is_file() {
        eprintln!("tokenizing data/sample");
        let domains = [
            "web",
            "code",
            "books",
            "arxiv",
            "wikipedia",
            "stackexchange",
            "legal",
        ]
        .iter()
        .filter(|name| {
            Path::new("data/sample")
                .join(format!("{name}.jsonl"))
                .is_file()
        })
        .map(|name| DomainSpec {
            name: name.to_string(),
            source: Path::new("data/sample").join(format!("{name}.jsonl")),
            split: EvalSplit::Fraction(0.1),
            options: Default::default(),
        })
        .collect();
        let spec = TokenizeSpec {
            domains,
            tokenizer: TokenizerSource::Train(TrainTokenizer {
                vocab_size: 4096,
                min_frequency: 2,
                max_bytes_per_domain: 1 << 22,
            }),
            seq_len: SEQ_LEN as u64,
            seed: 17,
            max_tokens_per_domain: None,
            bos_token: None,
            eos_token: None,
            batch_documents: 256,
        };
        tokenize(&spec, &data_dir, &Printer, &CancelFlag::default())?;
    }
    let dataset = TokenizedDataset::open(&data_dir)?;
    let windows = eval_windows(&dataset, SEQ_LEN, EVAL_SEQUENCES)?;

    // 2. Source model.
    let source_dir = out.join("source");
    let mut config = LlamaConfig::new(dataset.vocab_size(), 128, 384, 4, 4, 4);
    config.head_dim = 32;
    config.rms_norm_eps = 1e-5;
    if !source_dir.join("model.safetensors").is_file() {
        eprintln!("training the source model ({source_steps} steps of {batch} × {SEQ_LEN})");
        device.seed(17);
        let model = train(
            Llama::new(&config, &device),
            &dataset,
            source_steps,
            batch,
            1,
            &device,
        )?;
        save_hf(&model.valid(), &source_dir, Some(&dataset.tokenizer_path()))?;
    }
    let source = load_hf(&source_dir, &Device::flex())?;
    let (source_domains, source_loss) = evaluate(&source, &windows);
    eprintln!("source eval loss {source_loss:.4}");

    // 3. Prune three ways to one shape, consolidate, evaluate; then continue training each equally.
    let target = "target = { layers = 3, hidden = 64, heads = 2, intermediate = 192 }";
    let mut results = BTreeMap::new();
    for method in ["l0", "magnitude", "random"] {
        let pruned = out.join(format!("pruned-{method}"));
        let dense = out.join(format!("dense-{method}"));
        if !dense.join("model.safetensors").is_file() {
            eprintln!("prune: {method}");
            let table = format!(
                "model = {{ path = \"source\" }}\ndata = {{ stage = \"data\" }}\nmethod = \"{method}\"\n{target}\n\
                 steps = {prune_steps}\nbatch_size = {batch}\nseq_len = {SEQ_LEN}\nlr = {LR}\neval_batches = 1\n\
                 eval_every = {}\nseed = 17\n",
                (prune_steps / 4).max(1)
            );
            let _ = std::fs::remove_dir_all(&pruned);
            let inputs = [
                ("model", source_dir.as_path()),
                ("data", data_dir.as_path()),
            ];
            run_stage(&PruneStage, &table, &inputs, &pruned)?;
            let _ = std::fs::remove_dir_all(&dense);
            run_stage(
                &ConsolidateStage,
                "model = { stage = \"prune\" }",
                &[("model", pruned.as_path())],
                &dense,
            )?;
        }
        let model = load_hf(&dense, &Device::flex())?;
        let parameters = model.config().parameter_counts();
        let (domains, loss) = evaluate(&model, &windows);
        eprintln!("{method}: consolidated eval loss {loss:.4}; continuing {continue_steps} steps");
        let continued = train(
            load_hf(&dense, &device)?,
            &dataset,
            continue_steps,
            batch,
            2,
            &device,
        )?
        .valid();
        let (continued_domains, continued_loss) = evaluate(&continued, &windows);
        eprintln!("{method}: after continued training {continued_loss:.4}");
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(pruned.join("pruning.json"))?)?;
        results.insert(
            method,
            json!({
                "parameters": parameters.total,
                "non_embedding_parameters": parameters.non_embedding,
                "eval_loss": loss,
                "eval_loss_by_domain": domains,
                "continued_eval_loss": continued_loss,
                "continued_eval_loss_by_domain": continued_domains,
                "expected_sparsity": report.get("expected_sparsity"),
                "target_sparsity": report.get("target_sparsity"),
            }),
        );
    }
    let summary = json!({
        "seq_len": SEQ_LEN, "batch_size": batch, "lr": LR,
        "source_steps": source_steps, "prune_steps": prune_steps, "continue_steps": continue_steps,
        "source": { "parameters": config.parameter_counts().total, "eval_loss": source_loss, "eval_loss_by_domain": source_domains },
        "target": target,
        "methods": results,
    });
    std::fs::write(
        out.join("summary.json"),
        serde_json::to_string_pretty(&summary)? + "\n",
    )?;
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}
