//! `sheared-bench data`: tokenize throughput of the `tokenize` stage's pipeline against Python `tokenizers`
//! `encode_batch` on the same corpus and `tokenizer.json` in the same run, and `DomainMixture` sampler throughput.
//!
//! Both tokenizers run with the same number of threads (a rayon pool here, `RAYON_NUM_THREADS` for Python).
//! The stage's number includes reading the JSONL, hashing for the split and writing shards; Python's covers
//! only `encode_batch` on texts already in memory, so the ratio is conservative for the stage.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};

use sheared::data::source::{DocumentReader, SourceOptions, resolve_sources};
use sheared::data::tokenize::{
    DomainSpec, EvalSplit, TokenizeSpec, TokenizerSource, TrainTokenizer, tokenize,
};
use sheared::data::{DomainMixture, Exhaustion, TokenizedDataset};
use sheared::stage::{CancelFlag, NullReporter};

use crate::row::{self, Better, Conditions, Row};

#[derive(Debug, Clone, clap::Args)]
pub struct DataBenchArgs {
    /// Folder of `<domain>.jsonl` files (one domain per file).
    #[arg(long, default_value = "data/sample")]
    pub corpus: PathBuf,
    /// A `tokenizer.json` to use; by default a byte-level BPE of `--vocab-size` is trained on the corpus first.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    #[arg(long, default_value_t = 8192)]
    pub vocab_size: usize,
    /// Threads for both tokenizers.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Python interpreter with the `tokenizers` package.
    #[arg(long, default_value = "python3", env = "SHEARED_BENCH_PYTHON")]
    pub python: PathBuf,
    /// Timed repetitions (the best is reported).
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Keep the tokenized output here (for `scripts/check-token-counts.py`); a temporary folder otherwise.
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long, default_value_t = 512)]
    pub seq_len: usize,
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Tokens the sampler benchmark draws.
    #[arg(long, default_value_t = 50_000_000)]
    pub sampler_tokens: u64,
    /// Write the results as JSON rows (see `row.rs`) here too.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct DataBenchReport {
    pub threads: usize,
    pub corpus_bytes: u64,
    pub documents: u64,
    /// Tokens per pass, BOS/EOS included (both sides count them the same way).
    pub tokens: u64,
    pub tokenizer_training_s: Option<f64>,
    pub stage_tokens_per_s: f64,
    pub stage_bytes_per_s: f64,
    pub rust_encode_batch_tokens_per_s: f64,
    pub python_encode_batch_tokens_per_s: f64,
    pub python_tokenizers_version: String,
    /// stage / Python `encode_batch` (target ≥ 1.0).
    pub stage_vs_python_ratio: f64,
    pub sampler_tokens_per_s: f64,
    pub sampler_seq_len: usize,
    pub sampler_batch_size: usize,
}

pub fn run(args: &DataBenchArgs) -> anyhow::Result<DataBenchReport> {
    if args.threads == 0 || args.repeats == 0 {
        bail!("--threads and --repeats must be at least 1");
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(args.threads)
        .build()?;
    let mut domains = Vec::new();
    let entries = std::fs::read_dir(&args.corpus)
        .with_context(|| format!("reading {}", args.corpus.display()))?;
    for entry in entries {
        let path = entry?.path();
        if path
            .extension()
            .is_some_and(|extension| extension == "jsonl")
        {
            let name = path
                .file_stem()
                .and_then(|stem| stem.to_str())
                .unwrap_or("domain")
                .to_string();
            domains.push(DomainSpec {
                name,
                source: path,
                split: EvalSplit::Fraction(0.05),
                options: SourceOptions::default(),
            });
        }
    }
    domains.sort_by(|a, b| a.name.cmp(&b.name));
    if domains.is_empty() {
        bail!(
            "{} holds no .jsonl files; pass --corpus with one <domain>.jsonl per domain",
            args.corpus.display()
        );
    }
    let scratch = tempfile::tempdir()?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| scratch.path().join("tokens"));
    let mut spec = TokenizeSpec {
        domains,
        tokenizer: match &args.tokenizer {
            Some(path) => TokenizerSource::File(path.clone()),
            None => TokenizerSource::Train(TrainTokenizer {
                vocab_size: args.vocab_size,
                min_frequency: 2,
                max_bytes_per_domain: 100_000_000,
            }),
        },
        seq_len: args.seq_len as u64,
        seed: 0,
        max_tokens_per_domain: None,
        bos_token: None,
        eos_token: None,
        batch_documents: sheared::data::tokenize::DEFAULT_BATCH_DOCUMENTS,
    };
    let (null, cancel) = (NullReporter, CancelFlag::default());

    // Train once (if asked), then time encoding with the trained file so both sides use identical tokenizers.
    let mut training_s = None;
    if matches!(spec.tokenizer, TokenizerSource::Train(_)) {
        let started = Instant::now();
        let first = scratch.path().join("trained");
        pool.install(|| tokenize(&spec, &first, &null, &cancel))?;
        training_s = Some(started.elapsed().as_secs_f64());
        let kept = scratch.path().join("tokenizer.json");
        std::fs::copy(first.join("tokenizer.json"), &kept)?;
        spec.tokenizer = TokenizerSource::File(kept);
    }
    let tokenizer_path = match &spec.tokenizer {
        TokenizerSource::File(path) => path.clone(),
        TokenizerSource::Train(_) => unreachable!("replaced above"),
    };

    let mut stage_best = f64::INFINITY;
    let mut tokens = 0;
    for repeat in 0..args.repeats {
        let target = if repeat + 1 == args.repeats {
            out.clone()
        } else {
            scratch.path().join(format!("run{repeat}"))
        };
        if target.exists() {
            std::fs::remove_dir_all(&target)
                .with_context(|| format!("clearing {}", target.display()))?;
        }
        let started = Instant::now();
        let summary = pool.install(|| tokenize(&spec, &target, &null, &cancel))?;
        stage_best = stage_best.min(started.elapsed().as_secs_f64());
        tokens = summary.tokens;
    }

    // The same texts in memory, for the encoder-only numbers on both sides.
    let mut texts = Vec::new();
    let mut corpus_bytes = 0;
    for domain in &spec.domains {
        let files = resolve_sources(&domain.name, &domain.source)?;
        corpus_bytes += files
            .iter()
            .map(|file| std::fs::metadata(file).map(|meta| meta.len()).unwrap_or(0))
            .sum::<u64>();
        for document in DocumentReader::new(files, SourceOptions::default()) {
            let document = document?;
            if !document.text.is_empty() {
                texts.push(document.text);
            }
        }
    }
    let tokenizer = tokenizers::Tokenizer::from_file(&tokenizer_path)
        .map_err(|error| anyhow::anyhow!("{error}"))?;
    let mut rust_best = f64::INFINITY;
    let mut rust_tokens = 0;
    for _ in 0..args.repeats {
        let started = Instant::now();
        let encodings = pool.install(|| {
            tokenizer.encode_batch(texts.iter().map(String::as_str).collect::<Vec<_>>(), false)
        });
        let encodings = encodings.map_err(|error| anyhow::anyhow!("{error}"))?;
        rust_best = rust_best.min(started.elapsed().as_secs_f64());
        rust_tokens = encodings
            .iter()
            .map(|encoding| encoding.len() as u64 + 2)
            .sum();
    }
    if rust_tokens != tokens {
        bail!(
            "the stage wrote {tokens} tokens but encode_batch gives {rust_tokens}; the benchmark compares unequal work"
        );
    }
    let python = python_encode_batch(args, &spec, &tokenizer_path, scratch.path())?;
    if python.tokens != tokens {
        bail!(
            "Python tokenizers gives {} tokens for the corpus, the stage {tokens}: the encoders disagree",
            python.tokens
        );
    }

    // Sampler: memory-mapped windows at the current weights.
    let dataset = TokenizedDataset::open(&out)?;
    let mut mixture = DomainMixture::new(&dataset, args.seq_len, 0, Exhaustion::Wrap)?;
    let batches = (args.sampler_tokens / (args.batch_size * (args.seq_len + 1)) as u64).max(1);
    let started = Instant::now();
    let mut checksum = 0u64;
    for _ in 0..batches {
        let batch = mixture.next_batch(args.batch_size)?;
        checksum = checksum.wrapping_add(batch.tokens[batch.tokens.len() / 2] as u64);
    }
    let sampler_s = started.elapsed().as_secs_f64();
    std::hint::black_box(checksum);

    let report = DataBenchReport {
        threads: args.threads,
        corpus_bytes,
        documents: texts.len() as u64,
        tokens,
        tokenizer_training_s: training_s,
        stage_tokens_per_s: tokens as f64 / stage_best,
        stage_bytes_per_s: corpus_bytes as f64 / stage_best,
        rust_encode_batch_tokens_per_s: tokens as f64 / rust_best,
        python_encode_batch_tokens_per_s: tokens as f64 / python.seconds,
        python_tokenizers_version: python.version,
        stage_vs_python_ratio: python.seconds / stage_best,
        sampler_tokens_per_s: (batches * (args.batch_size * (args.seq_len + 1)) as u64) as f64
            / sampler_s,
        sampler_seq_len: args.seq_len,
        sampler_batch_size: args.batch_size,
    };
    if let Some(path) = &args.json {
        row::write_json(&rows(&report), path)?;
    }
    Ok(report)
}

/// The report as rows: the stage and the Rust encoder against Python `tokenizers`, and the sampler.
fn rows(report: &DataBenchReport) -> Vec<Row> {
    let conditions = Conditions::now("data", report.threads);
    let python = "Python tokenizers encode_batch (in memory)";
    let mut stage = conditions
        .row(
            "tokenize stage (read + split + encode + write)",
            "throughput",
            report.stage_tokens_per_s,
            "tokens/s",
            Better::Higher,
        )
        .against(python, report.python_encode_batch_tokens_per_s)
        .peer_version(report.python_tokenizers_version.clone())
        .target("≥ 1.0")
        .notes(format!(
            "{} documents, {} B, {} tokens; stage {:.1} MB/s",
            report.documents,
            report.corpus_bytes,
            report.tokens,
            report.stage_bytes_per_s / 1e6
        ));
    if let Some(seconds) = report.tokenizer_training_s {
        stage.notes = stage
            .notes
            .map(|notes| format!("{notes}; byte-level BPE training + first pass {seconds:.2} s"));
    }
    vec![
        stage,
        conditions
            .row(
                "Rust tokenizers encode_batch (in memory)",
                "throughput",
                report.rust_encode_batch_tokens_per_s,
                "tokens/s",
                Better::Higher,
            )
            .against(python, report.python_encode_batch_tokens_per_s)
            .peer_version(report.python_tokenizers_version.clone()),
        conditions.row(
            format!(
                "DomainMixture sampler (seq_len {}, batch {})",
                report.sampler_seq_len, report.sampler_batch_size
            ),
            "throughput",
            report.sampler_tokens_per_s,
            "tokens/s",
            Better::Higher,
        ),
    ]
}

/// Prints the report as a table.
pub fn print(report: &DataBenchReport) {
    println!(
        "corpus: {} documents, {} bytes, {} tokens; {} threads",
        report.documents, report.corpus_bytes, report.tokens, report.threads
    );
    if let Some(seconds) = report.tokenizer_training_s {
        println!("byte-level BPE training + first tokenize pass: {seconds:.2} s");
    }
    println!(
        "tokenize stage (read + split + encode + write): {:>12.0} tokens/s ({:.1} MB/s)",
        report.stage_tokens_per_s,
        report.stage_bytes_per_s / 1e6
    );
    println!(
        "Rust tokenizers encode_batch (in memory):       {:>12.0} tokens/s",
        report.rust_encode_batch_tokens_per_s
    );
    println!(
        "Python tokenizers {} encode_batch (in memory): {:>12.0} tokens/s",
        report.python_tokenizers_version, report.python_encode_batch_tokens_per_s
    );
    println!(
        "stage / Python encode_batch:                     {:>12.2}x",
        report.stage_vs_python_ratio
    );
    println!(
        "DomainMixture sampler (seq_len {}, batch {}):     {:>12.0} tokens/s",
        report.sampler_seq_len, report.sampler_batch_size, report.sampler_tokens_per_s
    );
}

struct PythonTiming {
    seconds: f64,
    tokens: u64,
    version: String,
}

const PYTHON_SCRIPT: &str = r#"
import json, sys, time
import tokenizers
tokenizer = tokenizers.Tokenizer.from_file(sys.argv[1])
repeats = int(sys.argv[2])
texts = []
for path in sys.argv[3:]:
    with open(path, encoding="utf-8") as file:
        for line in file:
            if line.strip():
                text = json.loads(line)["text"]
                if text:
                    texts.append(text)
tokenizer.encode_batch(texts[:64], add_special_tokens=False)
best = float("inf")
for _ in range(repeats):
    start = time.perf_counter()
    encodings = tokenizer.encode_batch(texts, add_special_tokens=False)
    best = min(best, time.perf_counter() - start)
tokens = sum(len(encoding.ids) + 2 for encoding in encodings)
print(json.dumps({"seconds": best, "tokens": tokens, "version": tokenizers.__version__}))
"#;

fn python_encode_batch(
    args: &DataBenchArgs,
    spec: &TokenizeSpec,
    tokenizer: &Path,
    scratch: &Path,
) -> anyhow::Result<PythonTiming> {
    let script = scratch.join("bench_tokenizers.py");
    std::fs::write(&script, PYTHON_SCRIPT)?;
    let mut command = std::process::Command::new(&args.python);
    command
        .arg(&script)
        .arg(tokenizer)
        .arg(args.repeats.to_string());
    for domain in &spec.domains {
        command.arg(&domain.source);
    }
    let output = command
        .env("RAYON_NUM_THREADS", args.threads.to_string())
        .env("RAYON_RS_NUM_CPUS", args.threads.to_string())
        .env("TOKENIZERS_PARALLELISM", "true")
        .output()
        .with_context(|| {
            format!(
                "running {} (pass --python with an interpreter that has `tokenizers`)",
                args.python.display()
            )
        })?;
    if !output.status.success() {
        bail!(
            "{} failed: {}; install the package with `pip install tokenizers` or pass --python",
            args.python.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let value: serde_json::Value =
        serde_json::from_slice(&output.stdout).context("reading the Python benchmark's output")?;
    Ok(PythonTiming {
        seconds: value["seconds"]
            .as_f64()
            .context("no seconds in the Python output")?,
        tokens: value["tokens"]
            .as_u64()
            .context("no tokens in the Python output")?,
        version: value["version"].as_str().unwrap_or("?").to_string(),
    })
}
