//! Experiment: dynamic vs static batch loading on the sample corpus (docs/training.md).
//!
//! ```sh
//! cargo run --release --example dynamic_loading -- [corpus=data/sample] [work=/tmp/sheared-dynamic] [steps=200]
//! ```
//!
//! 1. tokenize the seven sample domains (byte-level BPE trained on them, 10% of documents held out for eval);
//! 2. reference: a larger model (2 layers, hidden 128) trained with uniform loading for 3× the steps; its
//!    per-domain eval losses are the reference (the paper's "source reference" analogue: losses a stronger
//!    model reaches on each domain);
//! 3. the small model (2 layers, hidden 64) trained for `steps` with `uniform` loading, and again with
//!    `dynamic` loading against that reference, same tokens, same seed;
//! 4. prints per-domain eval losses, gaps to the reference, and the final dynamic weights.

use std::path::{Path, PathBuf};

use sheared::data::source::SourceOptions;
use sheared::data::tokenize::{
    DomainSpec, EvalSplit, TokenizeSpec, TokenizerSource, TrainTokenizer, tokenize,
};
use sheared::stage::{CancelFlag, NullReporter, Settings, Stage, StageContext};
use sheared::stages::train::TrainStage;

const DOMAINS: [&str; 7] = [
    "web",
    "code",
    "books",
    "stackexchange",
    "wikipedia",
    "arxiv",
    "legal",
];

fn train(
    name: &str,
    config: &str,
    inputs: &[(&str, &Path)],
    work: &Path,
) -> anyhow::Result<serde_json::Value> {
    let out = work.join(name);
    let metrics_path = out.join("metrics.json");
    if metrics_path.exists() {
        eprintln!("{name}: reusing {}", out.display());
    } else {
        let table = TrainStage.normalize(&toml::from_str(config)?)?;
        TrainStage.validate(&table)?;
        std::fs::create_dir_all(&out)?;
        let settings = Settings::default();
        let ctx = StageContext {
            name,
            config: &table,
            inputs: inputs
                .iter()
                .map(|(key, path)| (key.to_string(), path.to_path_buf()))
                .collect(),
            out_dir: out.clone(),
            scratch_dir: work.join(format!("{name}.scratch")),
            settings: &settings,
            reporter: &NullReporter,
            cancel: CancelFlag::default(),
        };
        let started = std::time::Instant::now();
        TrainStage.run(&ctx)?;
        eprintln!("{name}: {:.0} s", started.elapsed().as_secs_f64());
    }
    Ok(serde_json::from_str(&std::fs::read_to_string(
        metrics_path,
    )?)?)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let corpus = PathBuf::from(args.first().map_or("data/sample", String::as_str));
    let work = PathBuf::from(args.get(1).map_or("/tmp/sheared-dynamic", String::as_str));
    let steps: u64 = args.get(2).map_or(Ok(200), |s| s.parse())?;
    std::fs::create_dir_all(&work)?;

    let tokens = work.join("tokens");
    if !tokens.join("manifest.json").exists() {
        let spec = TokenizeSpec {
            domains: DOMAINS
                .iter()
                .map(|name| DomainSpec {
                    name: name.to_string(),
                    source: corpus.join(format!("{name}.jsonl")),
                    split: EvalSplit::Fraction(0.1),
                    options: SourceOptions::default(),
                })
                .collect(),
            tokenizer: TokenizerSource::Train(TrainTokenizer {
                vocab_size: 2048,
                min_frequency: 2,
                max_bytes_per_domain: 100_000_000,
            }),
            seq_len: 128,
            seed: 17,
            max_tokens_per_domain: None,
            bos_token: None,
            eos_token: None,
            batch_documents: 256,
        };
        tokenize(&spec, &tokens, &NullReporter, &CancelFlag::default())?;
    }

    let common = |hidden: usize, layers: usize, steps: u64, loading: &str| {
        format!(
            "init = {{ config = {{ hidden_size = {hidden}, intermediate_size = {}, num_hidden_layers = {layers}, num_attention_heads = 4, \
             num_key_value_heads = 4, max_position_embeddings = 128 }} }}\ndata = {{ path = \"tokens\" }}\nsteps = {steps}\n\
             batch_size = 8\nseq_len = 64\nlr = 3e-3\nwarmup_fraction = 0.05\neval_every = 20\neval_batches = 2\n\
             checkpoint_every = 100\nloading = {loading}\n",
            hidden * 8 / 3
        )
    };
    let reference = train(
        "reference",
        &common(128, 2, 3 * steps, "{ policy = \"uniform\" }"),
        &[("data", &tokens)],
        &work,
    )?;
    let uniform = train(
        "uniform",
        &common(64, 2, steps, "{ policy = \"uniform\" }"),
        &[("data", &tokens)],
        &work,
    )?;
    let reference_dir = work.join("reference");
    let dynamic = train(
        "dynamic",
        &common(
            96,
            2,
            steps,
            "{ policy = \"dynamic\", reference = { path = \"reference\" } }",
        ),
        &[("data", &tokens), ("loading.reference", &reference_dir)],
        &work,
    )?;

    println!(
        "| domain | reference | uniform loss | gap | dynamic loss | gap | dynamic weight | tokens seen (uniform → dynamic) |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut gaps = [Vec::new(), Vec::new()];
    for domain in DOMAINS {
        let reference_loss = reference["domains"][domain]["loss"]
            .as_f64()
            .unwrap_or(f64::NAN);
        let row = |metrics: &serde_json::Value| {
            metrics["domains"][domain]["loss"]
                .as_f64()
                .unwrap_or(f64::NAN)
        };
        let (u, d) = (row(&uniform), row(&dynamic));
        gaps[0].push(u - reference_loss);
        gaps[1].push(d - reference_loss);
        println!(
            "| {domain} | {reference_loss:.3} | {u:.3} | {:+.3} | {d:.3} | {:+.3} | {:.3} | {} → {} |",
            u - reference_loss,
            d - reference_loss,
            dynamic["domains"][domain]["weight"]
                .as_f64()
                .unwrap_or(f64::NAN),
            uniform["domains"][domain]["tokens_seen"],
            dynamic["domains"][domain]["tokens_seen"],
        );
    }
    for (name, gap, metrics) in [
        ("uniform", &gaps[0], &uniform),
        ("dynamic", &gaps[1], &dynamic),
    ] {
        let max = gap.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let mean = gap.iter().sum::<f64>() / gap.len() as f64;
        println!(
            "{name}: mean eval loss {:.3}, mean gap {mean:+.3}, max gap {max:+.3}, spread {:.3}",
            metrics["eval_loss_mean"].as_f64().unwrap_or(f64::NAN),
            max - gap.iter().copied().fold(f64::INFINITY, f64::min)
        );
    }
    Ok(())
}
