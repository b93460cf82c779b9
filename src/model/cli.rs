//! `sheared inspect`, `sheared score` and `sheared convert`: thin command-line shells over the model
//! library. Each returns `anyhow::Result` with the context a user needs.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use burn::tensor::Device;
use serde_json::json;

use super::config::{LayerWidths, LlamaConfig};
use super::{Llama, device, gguf, load_hf, loss};
use crate::model::batch::causal_lm_batch;

/// `sheared inspect MODEL_DIR [--json]`
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// A Hugging Face model folder (config.json + safetensors).
    pub model_dir: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `sheared score MODEL_DIR (--text FILE | --token-ids FILE.json) [--json]`
#[derive(Debug, clap::Args)]
pub struct ScoreArgs {
    /// A Hugging Face model folder (config.json + safetensors; tokenizer.json for --text).
    pub model_dir: PathBuf,
    /// A UTF-8 text file, tokenised with the model folder's tokenizer.json and scored in windows.
    #[arg(
        long,
        conflicts_with = "token_ids",
        required_unless_present = "token_ids"
    )]
    pub text: Option<PathBuf>,
    /// A JSON file `{"input_ids": [[..], ..]}`; each row is scored as one sequence.
    #[arg(long)]
    pub token_ids: Option<PathBuf>,
    /// Window length in tokens for --text (default: the model's max_position_embeddings, at most 1024).
    #[arg(long)]
    pub window: Option<usize>,
    /// Sequences per forward pass.
    #[arg(long, default_value_t = 4)]
    pub batch_size: usize,
    /// `cpu`, `torch-cpu` or `cuda:N`.
    #[arg(long, env = "SHEARED_DEVICE", default_value = "cpu")]
    pub device: String,
    /// Print `{"mean_loss", "perplexity", "tokens"}` instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `sheared convert IN.gguf OUT_DIR [--json]`
#[derive(Debug, clap::Args)]
pub struct ConvertArgs {
    /// A llama.cpp GGUF file (architecture `llama`).
    pub gguf: PathBuf,
    /// The Hugging Face folder to write (created if absent).
    pub out_dir: PathBuf,
    /// Print the conversion summary as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Consecutive layers with equal widths, as `(first, last, widths)`.
fn layer_runs(widths: &[LayerWidths]) -> Vec<(usize, usize, LayerWidths)> {
    let mut runs: Vec<(usize, usize, LayerWidths)> = Vec::new();
    for (index, layer) in widths.iter().enumerate() {
        match runs.last_mut() {
            Some((_, last, run)) if run == layer => *last = index,
            _ => runs.push((index, index, *layer)),
        }
    }
    runs
}

fn thousands(value: u64) -> String {
    crate::util::fmt::group_thousands(value as i64)
}

pub fn inspect(args: &InspectArgs) -> anyhow::Result<()> {
    let config_path = args.model_dir.join("config.json");
    let config = LlamaConfig::load(&config_path)
        .with_context(|| format!("inspecting {}", args.model_dir.display()))?;
    let counts = config.parameter_counts();
    let widths = config.all_layer_widths();
    let weight_bytes: u64 = std::fs::read_dir(&args.model_dir)
        .with_context(|| format!("listing {}", args.model_dir.display()))?
        .filter_map(Result::ok)
        .filter(|entry| {
            entry
                .file_name()
                .to_string_lossy()
                .ends_with(".safetensors")
        })
        .filter_map(|entry| entry.metadata().ok().map(|m| m.len()))
        .sum();
    if args.json {
        let report = json!({
            "architecture": if config.layer_widths.is_some() { "ShearedLlamaForCausalLM" } else { "LlamaForCausalLM" },
            "vocab_size": config.vocab_size,
            "hidden_size": config.hidden_size,
            "head_dim": config.head_dim,
            "num_hidden_layers": config.num_hidden_layers,
            "tie_word_embeddings": config.tie_word_embeddings,
            "rope_theta": config.rope_theta,
            "rms_norm_eps": config.rms_norm_eps,
            "layers": widths,
            "parameters": counts,
            "weight_bytes": weight_bytes,
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!("model        {}", args.model_dir.display());
    println!(
        "architecture LLaMA: vocab {}, hidden {}, head_dim {}, {} layers, {} embeddings",
        config.vocab_size,
        config.hidden_size,
        config.head_dim,
        config.num_hidden_layers,
        if config.tie_word_embeddings {
            "tied"
        } else {
            "untied"
        }
    );
    println!(
        "rope         theta {}, scaling {}; rms_norm_eps {}",
        config.rope_theta,
        config
            .rope_scaling
            .as_ref()
            .map_or("none".to_string(), |s| format!("{s:?}")),
        config.rms_norm_eps
    );
    for (first, last, layer) in layer_runs(&widths) {
        let range = if first == last {
            format!("{first}")
        } else {
            format!("{first}-{last}")
        };
        println!(
            "layers {range:<6}{} heads / {} kv heads, intermediate {}",
            layer.num_attention_heads, layer.num_key_value_heads, layer.intermediate_size
        );
    }
    println!(
        "parameters   total {}, embedding {}, non-embedding {}",
        thousands(counts.total),
        thousands(counts.embedding),
        thousands(counts.non_embedding)
    );
    println!(
        "weights      {} bytes of safetensors",
        thousands(weight_bytes)
    );
    Ok(())
}

/// Mean next-token loss of `model` over sequences (each row contributes `len - 1` predictions).
/// Returns `(total negative log-likelihood, predicted tokens)`.
pub fn score_sequences(
    model: &Llama,
    sequences: &[Vec<u32>],
    batch_size: usize,
    device: &Device,
) -> (f64, u64) {
    let mut total = 0.0f64;
    let mut count = 0u64;
    // Group rows of equal length so each forward pass is a rectangle.
    let mut order: Vec<usize> = (0..sequences.len())
        .filter(|&i| sequences[i].len() >= 2)
        .collect();
    order.sort_by_key(|&i| sequences[i].len());
    for group in order.chunk_by(|&a, &b| sequences[a].len() == sequences[b].len()) {
        for batch in group.chunks(batch_size.max(1)) {
            let length = sequences[batch[0]].len() - 1;
            let rows = batch.iter().map(|&row| sequences[row].as_slice());
            let (inputs, targets) = causal_lm_batch(rows, length, device); // [batch, length] each
            let logits = model.forward(inputs, None); // [batch, length, vocab]
            let losses = loss::token_losses(logits, targets); // [batch, length]
            total += losses.sum().into_scalar::<f32>() as f64;
            count += (batch.len() * length) as u64;
        }
    }
    (total, count)
}

/// Read `{"input_ids": [[..], ..]}` (a flat list is one sequence).
fn read_token_ids(path: &Path, vocab_size: usize) -> anyhow::Result<Vec<Vec<u32>>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: not valid JSON", path.display()))?;
    let ids = value.get("input_ids").with_context(|| {
        format!(
            "{}: expected an object with key `input_ids`",
            path.display()
        )
    })?;
    let rows: Vec<serde_json::Value> = match ids.as_array() {
        Some(items) if items.iter().all(|item| item.is_number()) => vec![ids.clone()],
        Some(items) => items.clone(),
        None => bail!(
            "{}: `input_ids` must be a list of lists of token ids",
            path.display()
        ),
    };
    let mut sequences = Vec::with_capacity(rows.len());
    for (row_index, row) in rows.iter().enumerate() {
        let items = row.as_array().with_context(|| {
            format!(
                "{}: `input_ids[{row_index}]` must be a list of token ids",
                path.display()
            )
        })?;
        let mut sequence = Vec::with_capacity(items.len());
        for (position, item) in items.iter().enumerate() {
            let id = item.as_u64().filter(|&id| (id as usize) < vocab_size).with_context(|| {
                format!(
                    "{}: `input_ids[{row_index}][{position}]` = {item} is not a token id in 0..{vocab_size}",
                    path.display()
                )
            })?;
            sequence.push(id as u32);
        }
        sequences.push(sequence);
    }
    Ok(sequences)
}

pub fn score(args: &ScoreArgs) -> anyhow::Result<()> {
    let device = device::parse(&args.device)?;
    let model = load_hf(&args.model_dir, &device)
        .with_context(|| format!("loading {}", args.model_dir.display()))?;
    let config = model.config();
    let sequences = match (&args.text, &args.token_ids) {
        (_, Some(path)) => read_token_ids(path, config.vocab_size)?,
        (Some(path), None) => {
            let tokenizer_path = args.model_dir.join("tokenizer.json");
            if !tokenizer_path.is_file() {
                bail!(
                    "{}: no tokenizer.json in the model folder; pass --token-ids FILE.json instead of --text",
                    args.model_dir.display()
                );
            }
            let tokenizer = tokenizers::Tokenizer::from_file(&tokenizer_path)
                .map_err(|error| anyhow::anyhow!("{}: {error}", tokenizer_path.display()))?;
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let encoding = tokenizer
                .encode(text, true)
                .map_err(|error| anyhow::anyhow!("tokenizing {}: {error}", path.display()))?;
            let window = args
                .window
                .unwrap_or(config.max_position_embeddings.min(1024))
                .max(2);
            encoding
                .get_ids()
                .chunks(window)
                .map(<[u32]>::to_vec)
                .collect()
        }
        (None, None) => bail!("pass --text FILE or --token-ids FILE.json"),
    };
    let (total, tokens) = score_sequences(&model, &sequences, args.batch_size, &device);
    if tokens == 0 {
        bail!("nothing to score: every sequence has fewer than 2 tokens");
    }
    let mean_loss = total / tokens as f64;
    let perplexity = mean_loss.exp();
    if args.json {
        println!(
            "{}",
            json!({"mean_loss": mean_loss, "perplexity": perplexity, "tokens": tokens})
        );
    } else {
        println!(
            "mean loss {mean_loss:.6}, perplexity {perplexity:.4} over {tokens} predicted tokens"
        );
    }
    Ok(())
}

pub fn convert(args: &ConvertArgs) -> anyhow::Result<()> {
    let summary = gguf::convert(&args.gguf, &args.out_dir).with_context(|| {
        format!(
            "converting {} to {}",
            args.gguf.display(),
            args.out_dir.display()
        )
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
        return Ok(());
    }
    println!(
        "wrote {} ({} tensors, {} parameters; GGUF tensor types {:?})",
        args.out_dir.display(),
        summary.tensors,
        thousands(summary.parameters),
        summary.tensor_types
    );
    if let Some(reason) = &summary.tokenizer_skipped {
        println!("warning: no tokenizer.json written: {reason}");
    }
    Ok(())
}
