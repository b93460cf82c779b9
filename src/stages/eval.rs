//! Stage kind `eval`: per-domain loss / perplexity on the eval split and multiple-choice tasks.
//!
//! ```toml
//! [stages.eval]
//! kind = "eval"
//! model = { stage = "train" }            # any HF LLaMA folder: a stage output or { path = ".." }
//! data = { stage = "tokenize" }          # optional: per-domain losses on its eval split + its tokenizer
//! seq_len = 256                          # window length of the domain losses
//! sequences_per_domain = 64              # windows per domain (fixed: the first N, same for every model)
//! batch_size = 8                         # windows per forward pass
//! tasks.arc_easy = { source = { path = "eval-tasks/arc_easy/rc_0shot" }, limit = 100 }
//! tasks.piqa = { path = "eval-tasks/piqa/rc_0shot" }   # shorthand: the whole task, defaults
//! tasks.arc_challenge = { source = { path = "eval-data" }, task = "arc_challenge", num_fewshot = 25 }
//! tasks.nq_open = { source = { path = "eval-data" }, task = "nq_open", num_fewshot = 32, max_gen_toks = 256 }
//! tasks.logiqa = { source = { path = "logiqa.jsonl" }, task = "logiqa", fewshot_source = { path = "train.jsonl" } }
//! dump_prompts = false                   # true: prompts/<task>.jsonl with every scored string
//! tokens_from = { prune = { stage = "prune" }, train = { stage = "train" } }   # optional
//! ```
//!
//! A task's file is an *input* (`source = { path = .. }` or `{ stage = .., file = .. }`), so the runner
//! hashes its content into the cache key and resolves relative paths against the recipe. That is why the
//! file is not a plain string next to `limit`. Task files: see [`crate::eval::tasks`]; scoring follows
//! lm-eval-harness ([`crate::eval`]). Every task's per-question scores land in `predictions/<task>.jsonl`.
//!
//! With `task`, the prompts are built by sheared from a Hugging Face dataset folder (Arrow files) or a
//! user's JSONL with lm-eval's template, few-shot sampler (seed 1234) and delimiters
//! ([`crate::eval::builtin`], [`crate::eval::user_tasks`]); `nq_open` is answered by greedy generation
//! and scored by exact match ([`crate::eval::generate`]). `metrics.json` then names each task's
//! `task`, `num_fewshot`, `split` and `fewshot_split` (and `max_gen_toks` for generation).
//!
//! Tokens seen upstream (`tokens_upstream` in `metrics.json`): the sum of `tokens` (or `tokens_seen`,
//! `train_tokens`, `tokens_total`) over the `metrics.json` of every `tokens_from` input (else the last
//! `metrics.jsonl` record with `tokens`); without `tokens_from`, the model folder's own metrics (a
//! train stage's output has them) if any; else null. Read before any compute.
//!
//! The tokenizer for tasks is the data input's `tokenizer.json`, else the model folder's.
//! `settings.device` selects where to run but is not part of the key: the same model on CPU or GPU gives
//! the same numbers up to float rounding, and a cached result is not recomputed for a device change.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use burn::tensor::Device;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::data::{TokenizedDataset, eval_windows};
use crate::eval::fewshot::LM_EVAL_FEWSHOT_SEED;
use crate::eval::{
    BUILTIN_TASKS, DocsOptions, EvalError, GenerationTask, LlamaGreedy, LlamaScorer, Prompted,
    Splits, Task, TaskFormat, Template, TextEncoder, builtin_task, domain_loss,
    evaluate_generation, evaluate_task, load_builtin, load_task, load_user_task,
};
use crate::model::batch::causal_lm_batch;
use crate::model::memory::{self, MemoryOptions, Step, StepShape};
use crate::model::precision::Precision;
use crate::model::{Llama, LlamaConfig, cross_entropy_per_sequence, load_hf};
use crate::stage::{InputRef, Preview, PreviewInputs, Stage, StageContext, StageError};
use crate::stage::{METRICS_FILE, StageMetrics};

/// The `eval` stage kind.
pub struct EvalStage;

/// Typed config. Tasks are kept as raw TOML and checked by hand (see [`parse_task`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    pub model: InputRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<InputRef>,
    #[serde(default = "default_seq_len")]
    pub seq_len: usize,
    #[serde(default = "default_sequences")]
    pub sequences_per_domain: usize,
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Tokens (padded rows × length) per forward pass when scoring tasks. Memory is about
    /// `batch_tokens × vocab_size × 8` bytes (logits and their log-softmax).
    #[serde(default = "default_batch_tokens")]
    pub batch_tokens: usize,
    /// Longest context + continuation fed to the model for tasks (left-truncated like lm-eval);
    /// 0 = the model's `max_position_embeddings`.
    #[serde(default)]
    pub max_length: usize,
    #[serde(default)]
    pub tasks: BTreeMap<String, toml::Value>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tokens_from: BTreeMap<String, InputRef>,
    /// Write `prompts/<task>.jsonl`: every context and continuation as scored (for reference checks).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dump_prompts: bool,
}

fn default_seq_len() -> usize {
    256
}
fn default_sequences() -> usize {
    64
}
fn default_batch_size() -> usize {
    8
}
fn default_batch_tokens() -> usize {
    2048
}

/// The peak memory of the larger forward pass: a batch of domain windows (`batch_size × seq_len`)
/// or a task batch. Task batches pack at most `batch_tokens` padded tokens; they are estimated as
/// one row of `batch_tokens` tokens (the longest batch the budget allows; a single question longer
/// than the budget runs alone and is not foreseen). fp32, as the stage loads the model.
fn add_forward_memory(
    preview: &mut Preview,
    config: &EvalConfig,
    tasks: bool,
    model: &LlamaConfig,
    precision: Precision,
) {
    let domains = config.data.is_some().then_some(StepShape {
        micro_batch: config.batch_size,
        seq_len: config.seq_len,
    });
    let task_batch = tasks.then_some(StepShape {
        micro_batch: 1,
        seq_len: config.batch_tokens,
    });
    let options = MemoryOptions {
        precision,
        activation_checkpointing: false,
        optimizer_offload: false,
    };
    let Some((estimate, shape)) = domains
        .into_iter()
        .chain(task_batch)
        .map(|shape| {
            (
                memory::estimate(model, Step::Forward, shape, options),
                shape,
            )
        })
        .max_by_key(|(estimate, _)| estimate.total_bytes())
    else {
        return;
    };
    preview.add_memory(
        estimate,
        shape,
        options,
        format!(
            "lower batch_size (now {}) or seq_len (now {}) for the domain losses, or batch_tokens (now {}) for tasks",
            config.batch_size, config.seq_len, config.batch_tokens
        ),
    );
}

/// One task as configured.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskSpec {
    /// The dotted input key the runner materialises the file under.
    pub input_key: String,
    pub limit: Option<usize>,
    pub format: TaskFormat,
    pub unconditional: bool,
    /// The lm-eval task whose template builds the prompts (`arc_challenge`, `mmlu`, `logiqa`, ...);
    /// `None` for ready-made request / simple files, whose contexts are used as written.
    pub task: Option<String>,
    pub num_fewshot: usize,
    pub seed: u64,
    pub split: Option<String>,
    pub fewshot_split: Option<String>,
    /// Input key of `fewshot_source` (a user task's shots file).
    pub fewshot_key: Option<String>,
    pub max_gen_toks: usize,
}

const TASK_KEYS: [&str; 11] = [
    "source",
    "limit",
    "format",
    "unconditional",
    "task",
    "num_fewshot",
    "seed",
    "split",
    "fewshot_split",
    "fewshot_source",
    "max_gen_toks",
];

/// Templates for tasks a user brings as JSONL ([`crate::eval::user_tasks`]) and not shipped as datasets.
const USER_ONLY_TASKS: [&str; 1] = ["logiqa"];

/// lm-eval's `max_gen_toks` default.
const DEFAULT_MAX_GEN_TOKS: usize = 256;

fn is_input(value: &toml::Value) -> bool {
    let Some(table) = value.as_table() else {
        return false;
    };
    let keys: Vec<&str> = table.keys().map(String::as_str).collect();
    matches!(
        keys.as_slice(),
        ["path"] | ["stage"] | ["file", "stage"] | ["stage", "file"]
    )
}

/// The template of a task name: a built-in dataset task or a user-only one.
pub fn template_of(name: &str) -> Option<Template> {
    builtin_task(name)
        .map(|task| task.template)
        .or((name == "logiqa").then_some(Template::Logiqa))
}

/// Check one `tasks.<name>` entry and fill its defaults (the input itself is left as written).
pub fn parse_task(name: &str, value: &toml::Value) -> Result<(TaskSpec, toml::Value), StageError> {
    let key = format!("tasks.{name}");
    if is_input(value) {
        let spec = TaskSpec {
            input_key: key,
            limit: None,
            format: TaskFormat::Auto,
            unconditional: false,
            task: None,
            num_fewshot: 0,
            seed: LM_EVAL_FEWSHOT_SEED,
            split: None,
            fewshot_split: None,
            fewshot_key: None,
            max_gen_toks: DEFAULT_MAX_GEN_TOKS,
        };
        return Ok((spec, value.clone()));
    }
    let Some(table) = value.as_table() else {
        return Err(StageError::config(
            &key,
            "expected `{ source = { path = \"..\" }, limit = N }` or the shorthand `{ path = \"..\" }`",
        ));
    };
    for entry in table.keys() {
        if !TASK_KEYS.contains(&entry.as_str()) {
            let hint = if entry == "path" || entry == "stage" {
                " — with other keys, write the file as `source = { path = \"..\" }` (it is an input: hashed and resolved \
                 relative to the recipe)"
                    .to_string()
            } else {
                match strsim_suggest(entry) {
                    Some(suggestion) => format!(" — did you mean `{suggestion}`?"),
                    None => format!(" (known keys: {})", TASK_KEYS.join(", ")),
                }
            };
            return Err(StageError::config(
                format!("{key}.{entry}"),
                format!("unknown key{hint}"),
            ));
        }
    }
    let source = table.get("source").ok_or_else(|| {
        StageError::config(
            format!("{key}.source"),
            "missing: the task file, e.g. `source = { path = \"tasks/arc_easy/rc_0shot\" }`",
        )
    })?;
    if !is_input(source) {
        return Err(StageError::config(
            format!("{key}.source"),
            "must be an input: `{ path = \"..\" }` or `{ stage = \"..\", file = \"..\" }`",
        ));
    }
    let positive = |entry: &str, zero_ok: bool| -> Result<Option<usize>, StageError> {
        match table.get(entry) {
            None => Ok(None),
            Some(toml::Value::Integer(n)) if *n > 0 || (zero_ok && *n == 0) => {
                Ok(Some(*n as usize))
            }
            Some(other) => Err(StageError::config(
                format!("{key}.{entry}"),
                format!(
                    "must be a {} integer, got {other}",
                    if zero_ok { "non-negative" } else { "positive" }
                ),
            )),
        }
    };
    let text = |entry: &str| -> Result<Option<String>, StageError> {
        match table.get(entry) {
            None => Ok(None),
            Some(toml::Value::String(text)) if !text.is_empty() => Ok(Some(text.clone())),
            Some(other) => Err(StageError::config(
                format!("{key}.{entry}"),
                format!("must be a non-empty string, got {other}"),
            )),
        }
    };
    let limit = positive("limit", false)?;
    let format = match table.get("format") {
        None => TaskFormat::Auto,
        Some(value) => value.clone().try_into().map_err(|_| {
            StageError::config(
                format!("{key}.format"),
                format!("must be \"auto\", \"requests\" or \"simple\", got {value}"),
            )
        })?,
    };
    let unconditional = match table.get("unconditional") {
        None => false,
        Some(toml::Value::Boolean(flag)) => *flag,
        Some(other) => {
            return Err(StageError::config(
                format!("{key}.unconditional"),
                format!("must be true or false, got {other}"),
            ));
        }
    };
    let task = text("task")?;
    if let Some(task) = &task
        && template_of(task).is_none()
    {
        let known: Vec<&str> = BUILTIN_TASKS
            .iter()
            .map(|task| task.name)
            .chain(USER_ONLY_TASKS)
            .collect();
        return Err(StageError::config(
            format!("{key}.task"),
            format!("unknown task {task:?}; known: {}", known.join(", ")),
        ));
    }
    let num_fewshot = positive("num_fewshot", true)?.unwrap_or(0);
    let seed = positive("seed", true)?.map_or(LM_EVAL_FEWSHOT_SEED, |seed| seed as u64);
    let split = text("split")?;
    let fewshot_split = text("fewshot_split")?;
    let max_gen_toks = positive("max_gen_toks", false)?.unwrap_or(DEFAULT_MAX_GEN_TOKS);
    let fewshot_source = table.get("fewshot_source");
    if let Some(fewshot_source) = fewshot_source
        && !is_input(fewshot_source)
    {
        return Err(StageError::config(
            format!("{key}.fewshot_source"),
            "must be an input: `{ path = \"..\" }` or `{ stage = \"..\", file = \"..\" }`",
        ));
    }
    // Keys that only mean something for templated tasks, and the other way round.
    let templated_only = [
        "num_fewshot",
        "seed",
        "split",
        "fewshot_split",
        "fewshot_source",
        "max_gen_toks",
    ];
    match &task {
        None => {
            if let Some(entry) = templated_only
                .iter()
                .find(|entry| table.contains_key(**entry))
            {
                return Err(StageError::config(
                    format!("{key}.{entry}"),
                    "needs `task = \"<lm-eval task>\"` (e.g. \"arc_challenge\"): request and simple files carry \
                     their prompts as written",
                ));
            }
        }
        Some(_) => {
            if let Some(entry) = ["format", "unconditional"]
                .iter()
                .find(|entry| table.contains_key(**entry))
            {
                return Err(StageError::config(
                    format!("{key}.{entry}"),
                    "only applies to request and simple files (without `task`)",
                ));
            }
        }
    }
    let mut normalized = toml::Table::new();
    normalized.insert("source".into(), source.clone());
    if let Some(limit) = limit {
        normalized.insert("limit".into(), toml::Value::Integer(limit as i64));
    }
    match &task {
        None => {
            normalized.insert(
                "format".into(),
                toml::Value::try_from(format).map_err(|e| StageError::Other(e.into()))?,
            );
            normalized.insert("unconditional".into(), toml::Value::Boolean(unconditional));
        }
        Some(task) => {
            normalized.insert("task".into(), toml::Value::String(task.clone()));
            normalized.insert(
                "num_fewshot".into(),
                toml::Value::Integer(num_fewshot as i64),
            );
            normalized.insert("seed".into(), toml::Value::Integer(seed as i64));
            for (entry, value) in [("split", &split), ("fewshot_split", &fewshot_split)] {
                if let Some(value) = value {
                    normalized.insert(entry.into(), toml::Value::String(value.clone()));
                }
            }
            if let Some(fewshot_source) = fewshot_source {
                normalized.insert("fewshot_source".into(), fewshot_source.clone());
            }
            if template_of(task) == Some(Template::NqOpen) {
                normalized.insert(
                    "max_gen_toks".into(),
                    toml::Value::Integer(max_gen_toks as i64),
                );
            }
        }
    }
    Ok((
        TaskSpec {
            input_key: format!("{key}.source"),
            limit,
            format,
            unconditional,
            task,
            num_fewshot,
            seed,
            split,
            fewshot_split,
            fewshot_key: fewshot_source.map(|_| format!("{key}.fewshot_source")),
            max_gen_toks,
        },
        toml::Value::Table(normalized),
    ))
}

fn strsim_suggest(word: &str) -> Option<&'static str> {
    TASK_KEYS
        .iter()
        .copied()
        .filter(|known| strsim::jaro_winkler(word, known) > 0.8)
        .max_by(|a, b| strsim::jaro_winkler(word, a).total_cmp(&strsim::jaro_winkler(word, b)))
}

/// The typed config, its normalised table, and the tasks in name order.
type ParsedConfig = (EvalConfig, toml::Table, Vec<(String, TaskSpec)>);

fn parse_config(table: &toml::Table) -> Result<ParsedConfig, StageError> {
    let (mut config, _) = crate::stage::normalize_typed::<EvalConfig>(table)?;
    let mut specs = Vec::new();
    for (name, value) in config.tasks.iter_mut() {
        let (spec, normalized) = parse_task(name, value)?;
        *value = normalized;
        specs.push((name.clone(), spec));
    }
    for (key, value) in [
        ("seq_len", config.seq_len),
        ("sequences_per_domain", config.sequences_per_domain),
        ("batch_size", config.batch_size),
        ("batch_tokens", config.batch_tokens),
    ] {
        if value == 0 {
            return Err(StageError::config(key, "must be at least 1"));
        }
    }
    if config.data.is_none() && config.tasks.is_empty() {
        return Err(StageError::config(
            "data",
            "nothing to evaluate: give `data = { stage = \"tokenize\" }` for per-domain losses and/or `tasks`",
        ));
    }
    let normalized =
        match toml::Value::try_from(&config).map_err(|e| StageError::Other(e.into()))? {
            toml::Value::Table(table) => table,
            other => {
                return Err(StageError::Other(anyhow::anyhow!(
                    "config serialised to {}",
                    other.type_str()
                )));
            }
        };
    Ok((config, normalized, specs))
}

impl Stage for EvalStage {
    fn kind(&self) -> &'static str {
        "eval"
    }
    fn version(&self) -> u32 {
        2
    }
    fn about(&self) -> &'static str {
        "per-domain eval loss/perplexity and lm-eval-style multiple-choice accuracy of a model"
    }
    fn normalize(&self, table: &toml::Table) -> Result<toml::Table, StageError> {
        parse_config(table).map(|(_, normalized, _)| normalized)
    }
    fn settings_in_key(&self) -> &'static [&'static str] {
        &["precision"]
    }
    fn validate(&self, config: &toml::Table) -> Result<(), StageError> {
        parse_config(config).map(|_| ())
    }
    fn preview(&self, config: &toml::Table, inputs: &PreviewInputs<'_>) -> Preview {
        let mut preview = Preview::default();
        let Ok((config, _, specs)) = parse_config(config) else {
            return preview;
        };
        let model = inputs.model_config("model");
        if let Some(model) = &model {
            preview.add_model("model", model);
        }
        if config.data.is_some() {
            preview.facts.push(format!(
                "{} windows of {} tokens per domain",
                config.sequences_per_domain, config.seq_len
            ));
        }
        if !specs.is_empty() {
            let names: Vec<String> = specs
                .iter()
                .map(|(name, spec)| match (&spec.task, spec.num_fewshot) {
                    (Some(_), shots) if shots > 0 => format!("{name} ({shots}-shot)"),
                    _ => name.clone(),
                })
                .collect();
            preview.facts.push(format!("tasks: {}", names.join(", ")));
        }
        if let Some(model) = &model {
            add_forward_memory(
                &mut preview,
                &config,
                !specs.is_empty(),
                model,
                inputs.precision,
            );
        }
        preview
    }
    fn run(&self, ctx: &StageContext<'_>) -> Result<(), StageError> {
        let started = Instant::now();
        let (config, _, specs) = parse_config(ctx.config)?;
        let device = crate::model::device::parse(&ctx.settings.device)
            .map_err(|e| StageError::config("settings.device", e.to_string()))?;
        let model_dir = ctx.input("model")?;
        // Before any compute, so that a bad `tokens_from` costs nothing.
        let (tokens_upstream, tokens_source) = upstream_tokens(ctx, &config, model_dir)?;
        ctx.reporter
            .message(&format!("loading {}", model_dir.display()));
        let model = load_hf(model_dir, &device)
            .map_err(|e| StageError::input("model", e.to_string()))?
            .with_precision(ctx.settings.precision);
        let model_config = model.config();
        let counts = model_config.parameter_counts();

        let dataset = match &config.data {
            Some(_) => Some(
                TokenizedDataset::open(ctx.input("data")?)
                    .map_err(|e| StageError::input("data", e.to_string()))?,
            ),
            None => None,
        };
        if let Some(dataset) = &dataset
            && dataset.vocab_size() > model_config.vocab_size
        {
            return Err(StageError::input(
                "data",
                format!(
                    "the tokenizer has {} tokens but the model's vocabulary has {}: the data was tokenized for another model",
                    dataset.vocab_size(),
                    model_config.vocab_size
                ),
            ));
        }

        let mut domains = serde_json::Map::new();
        if let Some(dataset) = &dataset {
            let windows = eval_windows(dataset, config.seq_len, config.sequences_per_domain)
                .map_err(|e| StageError::input("data", e.to_string()))?;
            let total: usize = windows.iter().map(|w| w.num_sequences).sum();
            let mut done = 0;
            for domain in &windows {
                let mut losses = Vec::with_capacity(domain.num_sequences);
                for start in (0..domain.num_sequences).step_by(config.batch_size) {
                    ctx.cancel.check()?;
                    let rows = config.batch_size.min(domain.num_sequences - start);
                    let batch: Vec<&[u32]> = (start..start + rows).map(|i| domain.row(i)).collect();
                    for loss in window_losses(&model, &batch, domain.seq_len, &device)? {
                        losses.push((loss, domain.seq_len as u64));
                    }
                    done += rows;
                    ctx.reporter.progress(done as u64, total as u64, "windows");
                }
                if let Some(result) = domain_loss(&losses) {
                    if !result.loss.is_finite() {
                        return Err(StageError::Other(anyhow::anyhow!(
                            "the eval loss of domain `{}` is {}: the model's weights hold NaN or inf",
                            domain.domain,
                            result.loss
                        )));
                    }
                    domains.insert(
                        domain.domain.clone(),
                        serde_json::to_value(result).map_err(|e| StageError::Other(e.into()))?,
                    );
                }
            }
        }

        let mut tasks = serde_json::Map::new();
        if !specs.is_empty() {
            let tokenizer_path = match &dataset {
                Some(dataset) => dataset.tokenizer_path(),
                None => model_dir.join("tokenizer.json"),
            };
            let tokenizer = tokenizers::Tokenizer::from_file(&tokenizer_path).map_err(|e| {
                StageError::input(
                    if dataset.is_some() { "data" } else { "model" },
                    format!("cannot load tokenizer {}: {e} (tasks need a tokenizer: give `data` or a model folder with tokenizer.json)", tokenizer_path.display()),
                )
            })?;
            let prefix_token = model_config
                .bos_token_id
                .or(model_config.eos_token_id.first().copied());
            let max_length = if config.max_length == 0 {
                model_config.max_position_embeddings
            } else {
                config.max_length
            };
            std::fs::create_dir_all(ctx.out_dir.join("predictions"))
                .context("creating predictions/")?;
            let eos_tokens: Vec<u32> = model_config.eos_token_id.clone();
            for (name, spec) in &specs {
                let task_started = Instant::now();
                let loaded = load_spec(ctx, spec)?;
                let progress = |done: usize, total: usize| {
                    ctx.reporter.progress(done as u64, total as u64, "requests")
                };
                let (task, generation, extra) = match loaded {
                    Loaded::File(task) => (Some(task), None, json!({})),
                    Loaded::Templated {
                        prompts,
                        docs_in_split,
                        splits,
                        path,
                    } => {
                        if config.dump_prompts {
                            write_prompts(&ctx.out_dir, name, &prompts)?;
                        }
                        let extra = json!({
                            "task": spec.task, "num_fewshot": spec.num_fewshot, "limit": spec.limit, "split": splits.eval,
                            "fewshot_split": splits.fewshot, "questions_in_file": docs_in_split,
                        });
                        let (choices, generations) = split_prompts(prompts);
                        if generations.is_empty() {
                            let task = Task {
                                path,
                                format: TaskFormat::Simple,
                                questions: choices,
                                questions_in_file: docs_in_split,
                            };
                            (Some(task), None, extra)
                        } else {
                            let until = spec
                                .task
                                .as_deref()
                                .and_then(builtin_task)
                                .map(|task| task.until.iter().map(|s| s.to_string()).collect())
                                .unwrap_or_default();
                            let task = GenerationTask {
                                questions: generations,
                                until,
                                max_gen_toks: spec.max_gen_toks,
                            };
                            (None, Some(task), extra)
                        }
                    }
                };
                let mut entry = if let Some(task) = task {
                    ctx.reporter
                        .message(&format!("task {name}: {} questions", task.questions.len()));
                    let mut scorer =
                        LlamaScorer::new(&model, device.clone(), max_length, config.batch_tokens)
                            .with_cancel(ctx.cancel.clone())
                            .with_progress(&progress);
                    let outcome = evaluate_task(
                        &task,
                        &tokenizer as &dyn TextEncoder,
                        &mut scorer,
                        prefix_token,
                        spec.unconditional,
                    );
                    ctx.cancel.check()?;
                    let (result, per_question) = outcome.map_err(|e| task_error(name, spec, e))?;
                    write_predictions(&ctx.out_dir, name, &per_question)?;
                    task_entry(&result, "questions_in_file", json!(task.questions_in_file))?
                } else if let Some(task) = generation {
                    ctx.reporter.message(&format!(
                        "task {name}: {} questions (greedy generation)",
                        task.questions.len()
                    ));
                    let mut generator =
                        LlamaGreedy::new(&model, device.clone()).with_cancel(ctx.cancel.clone());
                    let outcome = evaluate_generation(
                        &task,
                        &tokenizer,
                        &mut generator,
                        &eos_tokens,
                        max_length,
                        &progress,
                    );
                    ctx.cancel.check()?;
                    let (result, per_question) = outcome.map_err(|e| task_error(name, spec, e))?;
                    write_predictions(&ctx.out_dir, name, &per_question)?;
                    task_entry(&result, "max_gen_toks", json!(task.max_gen_toks))?
                } else {
                    unreachable!("a task is either scored or generated")
                };
                if let (Value::Object(map), Value::Object(extra)) = (&mut entry, extra) {
                    map.extend(extra);
                    // Building the prompts and scoring them: where an evaluation's time goes.
                    map.insert(
                        "seconds".into(),
                        json!(task_started.elapsed().as_secs_f64()),
                    );
                }
                tasks.insert(name.clone(), entry);
            }
        }

        let metrics = json!({
            "domains": domains,
            "tasks": tasks,
            "parameters": {"total": counts.total, "non_embedding": counts.non_embedding, "embedding": counts.embedding},
            "tokens_upstream": tokens_upstream,
            "tokens_upstream_from": tokens_source,
            "eval": {"seq_len": config.seq_len, "sequences_per_domain": config.sequences_per_domain},
            "wall_seconds": started.elapsed().as_secs_f64(),
            "device": ctx.settings.device,
        });
        ctx.reporter.metrics(&metrics);
        let text =
            serde_json::to_string_pretty(&metrics).map_err(|e| StageError::Other(e.into()))?;
        std::fs::write(ctx.out_dir.join("metrics.json"), text + "\n")
            .context("writing metrics.json")?;
        Ok(())
    }
}

/// A task ready to score: a ready-made file, or prompts built from documents by a template.
enum Loaded {
    File(Task),
    Templated {
        prompts: Vec<Prompted>,
        docs_in_split: usize,
        splits: Splits,
        path: PathBuf,
    },
}

fn load_spec(ctx: &StageContext<'_>, spec: &TaskSpec) -> Result<Loaded, StageError> {
    let path = ctx.input(&spec.input_key)?;
    let input_error = |e: EvalError| StageError::input(&spec.input_key, e.to_string());
    let Some(name) = &spec.task else {
        return load_task(path, spec.format, spec.limit)
            .map(Loaded::File)
            .map_err(input_error);
    };
    let options = DocsOptions {
        num_fewshot: spec.num_fewshot,
        limit: spec.limit,
        seed: spec.seed,
        split: spec.split.clone(),
        fewshot_split: spec.fewshot_split.clone(),
    };
    let fewshot_path = match &spec.fewshot_key {
        Some(key) => Some(ctx.input(key)?.to_path_buf()),
        None => None,
    };
    let template = template_of(name).ok_or_else(|| {
        StageError::config(
            format!("{}.task", spec.input_key.trim_end_matches(".source")),
            format!("unknown task {name:?}"),
        )
    })?;
    // A JSONL file is a user task in the documented format; a folder is a dataset.
    if path.is_file() {
        if !matches!(template, Template::Mmlu | Template::Logiqa) {
            return Err(StageError::input(
                &spec.input_key,
                format!(
                    "{} is a file, but task {name:?} is built from its dataset folder (split folders with data-*.arrow); \
                     only `mmlu` and `logiqa` read a user's JSONL",
                    path.display()
                ),
            ));
        }
        if spec.split.is_some() || spec.fewshot_split.is_some() {
            return Err(StageError::config(
                format!("{}.split", spec.input_key.trim_end_matches(".source")),
                "a JSONL task has no splits: give the shots as `fewshot_source = { path = \"..\" }`",
            ));
        }
        let (prompts, docs_in_split, splits) =
            load_user_task(path, fewshot_path.as_deref(), template, &options).map_err(|e| {
                // A problem in the shots file is reported against its own input key.
                let message = e.to_string();
                let in_shots = fewshot_path
                    .as_ref()
                    .is_some_and(|shots| message.contains(&shots.display().to_string()));
                let key = match (&spec.fewshot_key, in_shots) {
                    (Some(key), true) => key.as_str(),
                    _ => spec.input_key.as_str(),
                };
                StageError::input(key, message)
            })?;
        return Ok(Loaded::Templated {
            prompts,
            docs_in_split,
            splits,
            path: path.to_path_buf(),
        });
    }
    if fewshot_path.is_some() {
        return Err(StageError::config(
            format!(
                "{}.fewshot_source",
                spec.input_key.trim_end_matches(".source")
            ),
            "only for JSONL tasks; a dataset folder names its shots' split with `fewshot_split`",
        ));
    }
    let builtin = builtin_task(name).ok_or_else(|| {
        StageError::input(
            &spec.input_key,
            format!(
                "task {name:?} is not shipped as a dataset: give a JSONL file (see docs/eval.md)"
            ),
        )
    })?;
    let task = load_builtin(builtin, path, &options).map_err(input_error)?;
    Ok(Loaded::Templated {
        prompts: task.prompts,
        docs_in_split: task.docs_in_split,
        splits: task.splits,
        path: task.dataset_dir,
    })
}

/// Multiple-choice questions and generation questions, in order (a task has only one kind).
fn split_prompts(
    prompts: Vec<Prompted>,
) -> (
    Vec<crate::eval::Question>,
    Vec<crate::eval::GenerationQuestion>,
) {
    let mut choices = Vec::new();
    let mut generations = Vec::new();
    for prompt in prompts {
        match prompt {
            Prompted::Choice(question) => choices.push(question),
            Prompted::Generation(question) => generations.push(question),
        }
    }
    (choices, generations)
}

fn task_error(name: &str, spec: &TaskSpec, error: EvalError) -> StageError {
    match error {
        EvalError::Scorer(_) => StageError::Other(anyhow::anyhow!("task {name}: {error}")),
        other => StageError::input(&spec.input_key, other.to_string()),
    }
}

/// A task's `metrics.json` entry: its result with one detail of how it was run added.
fn task_entry(result: &impl Serialize, key: &str, value: Value) -> Result<Value, StageError> {
    let mut entry = serde_json::to_value(result).map_err(|e| StageError::Other(e.into()))?;
    if let Value::Object(map) = &mut entry {
        map.insert(key.into(), value);
    }
    Ok(entry)
}

fn write_predictions<T: Serialize>(
    out_dir: &Path,
    name: &str,
    rows: &[T],
) -> Result<(), StageError> {
    let mut lines = String::new();
    for row in rows {
        lines.push_str(&serde_json::to_string(row).map_err(|e| StageError::Other(e.into()))?);
        lines.push('\n');
    }
    std::fs::write(
        out_dir.join("predictions").join(format!("{name}.jsonl")),
        lines,
    )
    .context("writing predictions")?;
    Ok(())
}

/// `prompts/<task>.jsonl` (with `dump_prompts = true`): the exact strings each question is scored on,
/// for comparing with another harness. Multiple choice: `{"id", "requests": [[context, continuation], ..], "gold"}`;
/// generation: `{"id", "context", "answers"}`.
fn write_prompts(out_dir: &Path, name: &str, prompts: &[Prompted]) -> Result<(), StageError> {
    let dir = out_dir.join("prompts");
    std::fs::create_dir_all(&dir).context("creating prompts/")?;
    let rows: Vec<Value> = prompts
        .iter()
        .map(|prompt| match prompt {
            Prompted::Choice(question) => json!({
                "id": question.id,
                "requests": question.choices.iter().map(|c| [&c.context, &c.continuation]).collect::<Vec<_>>(),
                "gold": question.gold,
            }),
            Prompted::Generation(question) => json!({
                "id": question.id, "context": question.context, "answers": question.answers,
            }),
        })
        .collect();
    let mut lines = String::new();
    for row in rows {
        lines.push_str(&row.to_string());
        lines.push('\n');
    }
    std::fs::write(dir.join(format!("{name}.jsonl")), lines).context("writing prompts")?;
    Ok(())
}

/// Tokens seen upstream and where the number came from (see the module docs).
fn upstream_tokens(
    ctx: &StageContext<'_>,
    config: &EvalConfig,
    model_dir: &Path,
) -> Result<(Option<f64>, Vec<String>), StageError> {
    // `metrics.json`'s tokens, else the last `metrics.jsonl` record that has them.
    // An unreadable or malformed `metrics.json` counts as absent here, as a missing number does: the
    // error below names the folder and what it lacks.
    let read = |dir: &Path| -> Option<f64> {
        let summary = StageMetrics::read(&StageMetrics::file_in(dir))
            .ok()
            .and_then(|metrics| metrics.tokens());
        if !dir.is_dir() {
            return summary;
        }
        summary.or_else(|| {
            let text = std::fs::read_to_string(dir.join("metrics.jsonl")).ok()?;
            text.lines()
                .rev()
                .filter_map(|line| serde_json::from_str::<Value>(line).ok())
                .find_map(|record| record.get("tokens").and_then(Value::as_f64))
        })
    };
    if config.tokens_from.is_empty() {
        return Ok(match read(model_dir) {
            Some(tokens) => (Some(tokens), vec!["model".into()]),
            None => (None, Vec::new()),
        });
    }
    let mut total = 0.0;
    let mut sources = Vec::new();
    for name in config.tokens_from.keys() {
        let key = format!("tokens_from.{name}");
        let dir: PathBuf = ctx.input(&key)?.to_path_buf();
        let tokens = read(&dir).ok_or_else(|| {
            StageError::input(
                &key,
                format!(
                    "{} has no `tokens` number in {METRICS_FILE} (nor in metrics.jsonl); name only stages that \
                     report the tokens they trained on",
                    dir.display()
                ),
            )
        })?;
        total += tokens;
        sources.push(key);
    }
    Ok((Some(total), sources))
}

/// Mean next-token loss of each window: rows of `seq_len + 1` tokens, inputs `[..seq_len]`, targets `[1..]`.
fn window_losses(
    model: &Llama,
    rows: &[&[u32]],
    seq_len: usize,
    device: &Device,
) -> Result<Vec<f64>, StageError> {
    let (inputs, targets) = causal_lm_batch(rows.iter().copied(), seq_len, device); // [batch, seq] each
    let logits = model.forward(inputs, None); // [batch, seq, vocab]
    let losses = cross_entropy_per_sequence(logits, targets); // [batch]
    let losses = losses.into_data().convert::<f32>().try_to_vec::<f32>();
    let losses = losses
        .map_err(|error| StageError::Other(anyhow::anyhow!("reading eval losses: {error:?}")))?;
    Ok(losses.into_iter().map(f64::from).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> toml::Table {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn normalize_fills_defaults_and_keeps_inputs_where_written() {
        let normalized = EvalStage
            .normalize(&table(
                "model = { stage = 'train' }\ndata = { stage = 'tokenize' }\n\
                 tasks.arc = { source = { path = 'arc' }, limit = 5 }\ntasks.piqa = { path = 'piqa' }",
            ))
            .unwrap();
        assert_eq!(normalized["seq_len"].as_integer(), Some(256));
        assert_eq!(normalized["tasks"]["arc"]["format"].as_str(), Some("auto"));
        assert_eq!(
            normalized["tasks"]["arc"]["unconditional"].as_bool(),
            Some(false)
        );
        assert_eq!(normalized["tasks"]["piqa"]["path"].as_str(), Some("piqa"));
        let (_, _, specs) = parse_config(&normalized).unwrap();
        assert_eq!(specs[0].1.input_key, "tasks.arc.source");
        assert_eq!(specs[0].1.limit, Some(5));
        assert_eq!(specs[1].1.input_key, "tasks.piqa");
        // Normalising twice changes nothing (the key must be stable).
        assert_eq!(EvalStage.normalize(&normalized).unwrap(), normalized);
    }

    #[test]
    fn bad_configs_name_the_key() {
        let cases = [
            ("model = { stage = 't' }", "data", "nothing to evaluate"),
            (
                "model = { stage = 't' }\ntasks.arc = { path = 'a', limit = 3 }",
                "tasks.arc.path",
                "source = { path",
            ),
            (
                "model = { stage = 't' }\ntasks.arc = { source = { path = 'a' }, limt = 3 }",
                "tasks.arc.limt",
                "did you mean `limit`",
            ),
            (
                "model = { stage = 't' }\ntasks.arc = { source = { path = 'a' }, limit = 0 }",
                "tasks.arc.limit",
                "positive",
            ),
            (
                "model = { stage = 't' }\ntasks.arc = { source = { path = 'a' }, format = 'xml' }",
                "tasks.arc.format",
                "simple",
            ),
            (
                "model = { stage = 't' }\ntasks.arc = { source = 'a' }",
                "tasks.arc.source",
                "must be an input",
            ),
            (
                "model = { stage = 't' }\ndata = { stage = 'd' }\nbatch_size = 0",
                "batch_size",
                "at least 1",
            ),
        ];
        for (text, key, message) in cases {
            match EvalStage.normalize(&table(text)) {
                Err(StageError::Config {
                    key: got,
                    message: text,
                }) => {
                    assert_eq!(got, key, "{text}");
                    assert!(text.contains(message), "{key}: {text}");
                }
                other => panic!("{text}: expected a config error, got {other:?}"),
            }
        }
        assert!(
            EvalStage
                .normalize(&table(
                    "model = { stage = 't' }\ndata = { stage = 'd' }\nsequence = 3"
                ))
                .is_err()
        );
    }

    mod run {
        use super::*;
        use crate::data::TokenDtype;
        use crate::data::dataset::testing::{FakeManifest, write_dataset_with};
        use crate::stage::testing::StageRun;
        use crate::stage::{CancelFlag, NullReporter};

        fn fixtures() -> PathBuf {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/eval")
        }

        /// A tokenize-stage folder with two domains of pseudo-random ids below the tiny model's vocabulary.
        fn write_dataset(dir: &Path) {
            let mut state = 12345u64;
            let mut next = move || {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 33) % 300) as u32
            };
            let domains: Vec<(&str, Vec<u32>, Vec<u32>)> =
                [("web", 8 * 16 + 1), ("code", 3 * 16 + 5)]
                    .into_iter()
                    .map(|(name, length)| {
                        let tokens: Vec<u32> = (0..length).map(|_| next()).collect();
                        (name, tokens.clone(), tokens)
                    })
                    .collect();
            let spec = FakeManifest {
                dtype: TokenDtype::U16,
                vocab_size: 300,
                bos_id: 1,
                eos_id: 2,
                seq_len: 16,
            };
            write_dataset_with(dir, &domains, &spec);
            std::fs::copy(
                fixtures().join("tiny_model/tokenizer.json"),
                dir.join("tokenizer.json"),
            )
            .unwrap();
        }

        fn run_stage(
            config_text: &str,
            inputs: &[(&str, PathBuf)],
            cancel: CancelFlag,
        ) -> (Result<(), StageError>, PathBuf, tempfile::TempDir) {
            let work = tempfile::tempdir().unwrap();
            let config = EvalStage.normalize(&table(config_text)).unwrap();
            let run = inputs
                .iter()
                .fold(StageRun::in_dir(work.path()), |run, (key, path)| {
                    run.input(key, path)
                });
            let result = run.run_with(&EvalStage, &config, &NullReporter, cancel);
            let out_dir = run.out_dir;
            (result, out_dir, work)
        }

        /// The file the stage writes is what [`StageMetrics`] describes: its readers (`sheared compare`,
        /// dynamic loading's reference, another eval's `tokens_from`) find the numbers under the typed
        /// keys, and typing loses nothing.
        #[test]
        fn its_metrics_json_reads_back_as_stage_metrics() {
            let data = tempfile::tempdir().unwrap();
            write_dataset(data.path());
            let config = "model = { stage = 'train' }\ndata = { stage = 'tokenize' }\nseq_len = 16\nsequences_per_domain = 2\n\
                          batch_size = 2\ntasks.arc = { source = { path = 'a' }, limit = 2 }";
            let inputs = [
                ("model", fixtures().join("tiny_model")),
                ("data", data.path().to_path_buf()),
                ("tasks.arc.source", fixtures().join("arc_easy/rc_0shot")),
            ];
            let (result, out, _work) = run_stage(config, &inputs, CancelFlag::default());
            result.unwrap();
            let path = out.join(METRICS_FILE);
            let written: Value =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            let metrics = StageMetrics::read(&path).unwrap();
            assert_eq!(serde_json::to_value(&metrics).unwrap(), written);
            for domain in ["web", "code"] {
                assert_eq!(
                    metrics.domain_loss(domain),
                    written["domains"][domain]["loss"].as_f64()
                );
                assert!(metrics.domain_loss(domain).is_some());
            }
            let arc = &metrics.tasks.as_ref().unwrap()["arc"];
            assert_eq!(arc.acc, written["tasks"]["arc"]["acc"].as_f64());
            assert!(arc.acc.is_some() && arc.acc_norm.is_some());
            let counts = metrics.parameter_counts().unwrap();
            assert_eq!(counts.total(), written["parameters"]["total"].as_f64());
            assert!(counts.total().is_some() && counts.non_embedding().is_some());
        }

        #[test]
        fn writes_domain_losses_tasks_parameters_and_upstream_tokens() {
            let data = tempfile::tempdir().unwrap();
            write_dataset(data.path());
            let upstream = tempfile::tempdir().unwrap();
            std::fs::write(
                upstream.path().join("metrics.json"),
                r#"{"tokens": 1234, "loss": 3.0}"#,
            )
            .unwrap();
            let model_dir = fixtures().join("tiny_model");
            let config = "model = { stage = 'train' }\ndata = { stage = 'tokenize' }\nseq_len = 16\nsequences_per_domain = 4\n\
                          batch_size = 3\ntasks.arc = { source = { path = 'a' }, limit = 2 }\ntasks.simple = { path = 's' }\n\
                          tokens_from = { train = { stage = 'train' } }";
            let inputs = [
                ("model", model_dir.clone()),
                ("data", data.path().to_path_buf()),
                ("tasks.arc.source", fixtures().join("arc_easy/rc_0shot")),
                ("tasks.simple", fixtures().join("simple.jsonl")),
                ("tokens_from.train", upstream.path().to_path_buf()),
            ];
            let (result, out, _work) = run_stage(config, &inputs, CancelFlag::default());
            result.unwrap();
            let metrics: Value =
                serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap())
                    .unwrap();
            // web has 8 windows of 16 (asked for 4), code 3.
            assert_eq!(metrics["domains"]["web"]["sequences"], 4);
            assert_eq!(metrics["domains"]["web"]["tokens"], 64);
            assert_eq!(metrics["domains"]["code"]["sequences"], 3);
            let web = metrics["domains"]["web"]["loss"].as_f64().unwrap();
            assert!(web.is_finite() && web > 0.0);
            assert!(
                (metrics["domains"]["web"]["perplexity"].as_f64().unwrap() - web.exp()).abs()
                    < 1e-6 * web.exp()
            );
            assert!(metrics["domains"]["web"]["stderr"].as_f64().unwrap() > 0.0);
            assert_eq!(metrics["tasks"]["arc"]["n"], 2);
            assert_eq!(metrics["tasks"]["arc"]["questions_in_file"], 3);
            assert_eq!(metrics["tasks"]["simple"]["n"], 3);
            assert_eq!(metrics["tokens_upstream"], 1234.0);
            let counts = crate::model::LlamaConfig::load(&model_dir.join("config.json"))
                .unwrap()
                .parameter_counts();
            assert_eq!(metrics["parameters"]["total"], counts.total);
            assert_eq!(metrics["device"], crate::model::device::name_for_tests());
            let predictions = std::fs::read_to_string(out.join("predictions/arc.jsonl")).unwrap();
            assert_eq!(predictions.lines().count(), 2);

            // The window loss is the same number the task scorer computes for "first token → rest of the window".
            let dataset = TokenizedDataset::open(data.path()).unwrap();
            let windows = eval_windows(&dataset, 16, 4).unwrap();
            let device = crate::model::device::for_tests();
            let model = load_hf(&model_dir, &device).unwrap();
            let mut scorer = LlamaScorer::new(&model, device, 256, 1024);
            let requests: Vec<crate::eval::ScoreRequest> = (0..4)
                .map(|i| crate::eval::ScoreRequest {
                    context: windows[0].row(i)[..1].to_vec(),
                    continuation: windows[0].row(i)[1..].to_vec(),
                })
                .collect();
            use crate::eval::LogLikelihoodScorer;
            let total: f64 = scorer
                .score(&requests)
                .unwrap()
                .iter()
                .map(|s| -s.log_likelihood)
                .sum();
            assert!(
                (total / 64.0 - web).abs() < 1e-4,
                "{} vs {web}",
                total / 64.0
            );
        }

        #[test]
        fn bad_inputs_are_named_and_cancel_stops() {
            let model_dir = fixtures().join("tiny_model");
            let bad_task = tempfile::tempdir().unwrap();
            std::fs::write(
                bad_task.path().join("t.jsonl"),
                "{\"context\": \"c\", \"choices\": [\"a\"], \"gold\": 0}\n",
            )
            .unwrap();
            let config = "model = { stage = 'm' }\ntasks.t = { path = 't' }";
            let (result, _, _w) = run_stage(
                config,
                &[
                    ("model", model_dir.clone()),
                    ("tasks.t", bad_task.path().join("t.jsonl")),
                ],
                CancelFlag::default(),
            );
            match result {
                Err(StageError::Input { key, message }) => assert!(
                    key == "tasks.t" && message.contains("t.jsonl:1"),
                    "{key}: {message}"
                ),
                other => panic!("expected an input error, got {other:?}"),
            }
            let (result, _, _w) = run_stage(
                config,
                &[
                    ("model", bad_task.path().to_path_buf()),
                    ("tasks.t", bad_task.path().join("t.jsonl")),
                ],
                CancelFlag::default(),
            );
            assert!(
                matches!(result, Err(StageError::Input { ref key, .. }) if key == "model"),
                "{result:?}"
            );

            // tokens_from: metrics.jsonl is the fallback; a folder with neither fails before any compute.
            let upstream = tempfile::tempdir().unwrap();
            let simple = fixtures().join("simple.jsonl");
            let config = "model = { stage = 'm' }\ntasks.t = { path = 't' }\ntokens_from = { prune = { stage = 'p' } }";
            let inputs = |upstream: &Path| {
                vec![
                    ("model", model_dir.clone()),
                    ("tasks.t", simple.clone()),
                    ("tokens_from.prune", upstream.to_path_buf()),
                ]
            };
            let (result, _, _w) =
                run_stage(config, &inputs(upstream.path()), CancelFlag::default());
            match result {
                Err(StageError::Input { key, message }) => {
                    assert!(
                        key == "tokens_from.prune" && message.contains("no `tokens`"),
                        "{key}: {message}"
                    )
                }
                other => panic!("expected an input error, got {other:?}"),
            }
            std::fs::write(
                upstream.path().join("metrics.jsonl"),
                "{\"step\": 1, \"tokens\": 64}\n{\"step\": 2, \"tokens\": 128}\n{\"step\": 2}\n",
            )
            .unwrap();
            let (result, out, _w) =
                run_stage(config, &inputs(upstream.path()), CancelFlag::default());
            result.unwrap();
            let metrics: Value =
                serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap())
                    .unwrap();
            assert_eq!(metrics["tokens_upstream"], 128.0);

            let data = tempfile::tempdir().unwrap();
            write_dataset(data.path());
            let cancel = CancelFlag::default();
            cancel.cancel();
            let (result, _, _w) = run_stage(
                "model = { stage = 'm' }\ndata = { stage = 'd' }\nseq_len = 16",
                &[("model", model_dir), ("data", data.path().to_path_buf())],
                cancel,
            );
            assert!(matches!(result, Err(StageError::Cancelled)), "{result:?}");
        }
    }
}
