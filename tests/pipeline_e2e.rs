//! End-to-end: the whole Sheared-LLaMA pipeline (`pipelines/sheared.toml`: tokenize → source →
//! prune → consolidate → train with dynamic loading → eval, plus the source's eval as reference)
//! through the real binary at toy shapes, then an ablation (`--set` of the loading policy) that must
//! rerun only the stages it changes, then a no-op rerun that must run nothing.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

const SHEARED: &str = env!("CARGO_BIN_EXE_sheared");

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The first `documents` lines of a shipped sample domain, so the test tokenizes little.
fn sample_documents(domain: &str, documents: usize) -> String {
    let path = repo().join("data/sample").join(format!("{domain}.jsonl"));
    let text = std::fs::read_to_string(&path).expect("read data/sample");
    text.lines()
        .take(documents)
        .map(|line| format!("{line}\n"))
        .collect()
}

/// A recipe over the real pipeline file with tiny shapes and step counts.
fn write_recipe(dir: &Path) -> PathBuf {
    for domain in ["web", "code", "wikipedia"] {
        std::fs::write(
            dir.join(format!("{domain}.jsonl")),
            sample_documents(domain, 6),
        )
        .expect("write sample");
    }
    let pipeline = repo().join("pipelines/sheared.toml");
    let recipe = format!(
        r#"extends = "{pipeline}"
name = "e2e"

[stages.tokenize]
domains = {{ web = {{ path = "web.jsonl" }}, code = {{ path = "code.jsonl" }}, wikipedia = {{ path = "wikipedia.jsonl" }} }}
tokenizer = {{ train = {{ vocab_size = 300 }} }}
seq_len = 32
eval_documents = 1

[stages.source]
kind = "train"
init = {{ config = {{ hidden_size = 32, intermediate_size = 64, num_hidden_layers = 2, num_attention_heads = 2, num_key_value_heads = 2, max_position_embeddings = 64 }} }}
data = {{ stage = "tokenize" }}
steps = 4
batch_size = 4
seq_len = 32
lr = 3e-3
warmup_steps = 1
eval_every = 2
eval_batches = 1

[stages.eval-source]
seq_len = 32
sequences_per_domain = 2
batch_size = 2

[stages.prune]
target = {{ layers = 1, hidden = 16, heads = 1, intermediate = 32 }}
steps = 3
batch_size = 2
seq_len = 32
lr = 3e-3
eval_every = 3
eval_batches = 1

[stages.train]
steps = 3
batch_size = 2
seq_len = 32
lr = 3e-3
warmup_steps = 1
eval_every = 1
eval_batches = 1

[stages.eval]
seq_len = 32
sequences_per_domain = 2
batch_size = 2
"#,
        pipeline = pipeline.display()
    );
    let path = dir.join("e2e.toml");
    std::fs::write(&path, recipe).expect("write recipe");
    path
}

/// `sheared run RECIPE ARGS --json`; returns the parsed events, failing with the output otherwise.
fn run(dir: &Path, recipe: &Path, extra: &[&str]) -> Vec<serde_json::Value> {
    let output = Command::new(SHEARED)
        .arg("run")
        .arg(recipe)
        .args(extra)
        .arg("--json")
        .current_dir(dir)
        .env("SHEARED_CACHE", dir.join("cache"))
        .env_remove("RUST_LOG")
        .output()
        .expect("run sheared");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "sheared run {extra:?} failed:\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

/// The `preview` of every stage in `sheared plan RECIPE --json`, by stage name.
fn plan_previews(dir: &Path, recipe: &Path) -> BTreeMap<String, serde_json::Value> {
    let output = Command::new(SHEARED)
        .arg("plan")
        .arg(recipe)
        .arg("--json")
        .current_dir(dir)
        .env("SHEARED_CACHE", dir.join("cache"))
        .env_remove("RUST_LOG")
        .output()
        .expect("run sheared plan");
    assert!(output.status.success(), "sheared plan failed");
    let document: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("plan --json is JSON");
    document["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .map(|stage| {
            (
                stage["stage"].as_str().expect("name").to_string(),
                stage["preview"].clone(),
            )
        })
        .collect()
}

fn stages_with(events: &[serde_json::Value], event: &str) -> BTreeSet<String> {
    events
        .iter()
        .filter(|value| value["event"] == event)
        .filter_map(|value| value["stage"].as_str().map(str::to_string))
        .collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|name| name.to_string()).collect()
}

#[test]
fn full_pipeline_then_an_ablation_reruns_only_what_changed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let recipe = write_recipe(dir.path());
    let all = common::PIPELINE_STAGES;

    // Before anything ran: the budgets are known, the parameter counts are not (the tokenizer is
    // trained by `tokenize`, so the embedding size is not known yet) and are not guessed.
    let before = plan_previews(dir.path(), &recipe);
    assert_eq!(before["source"]["tokens"], 4 * 4 * 32, "{before:#?}");
    assert!(before["source"].get("parameters").is_none(), "{before:#?}");
    assert!(
        before["consolidate"].get("parameters").is_none(),
        "{before:#?}"
    );

    let first = run(dir.path(), &recipe, &[]);
    assert_eq!(stages_with(&first, "committed"), set(&all), "{first:#?}");

    // The final model is the target shape, and the eval measured every domain.
    let path = |stage: &str| -> PathBuf {
        let output = Command::new(SHEARED)
            .args(["path", recipe.to_str().expect("utf-8 path"), stage])
            .current_dir(dir.path())
            .env("SHEARED_CACHE", dir.path().join("cache"))
            .output()
            .expect("sheared path");
        assert!(output.status.success(), "sheared path {stage} failed");
        PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
    };
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(path("train").join("config.json")).expect("config.json"),
    )
    .expect("config json");
    assert_eq!(config["hidden_size"], 16);
    assert_eq!(config["num_hidden_layers"], 1);
    assert_eq!(config["intermediate_size"], 32);
    let metrics: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(path("eval").join("metrics.json")).expect("metrics.json"),
    )
    .expect("metrics json");
    for domain in ["web", "code", "wikipedia"] {
        let loss = metrics["domains"][domain]["loss"].as_f64();
        assert!(
            loss.is_some_and(f64::is_finite),
            "no loss for {domain}: {metrics}"
        );
    }

    // After the run the previews read the cache: what consolidate wrote is what plan shows for it,
    // for prune's target and for the train stage that continues from it.
    let consolidated: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(path("consolidate").join("metrics.json")).expect("metrics.json"),
    )
    .expect("consolidate metrics");
    let parameters = &consolidated["parameters"];
    assert!(parameters.as_u64().is_some_and(|count| count > 0));
    let after = plan_previews(dir.path(), &recipe);
    assert_eq!(&after["consolidate"]["parameters"]["model"], parameters);
    assert_eq!(&after["prune"]["parameters"]["target"], parameters);
    assert_eq!(&after["train"]["parameters"]["model"], parameters);
    assert_eq!(
        after["prune"]["parameters"]["source"],
        after["source"]["parameters"]["model"]
    );

    // Ablation: static loading instead of dynamic changes train and what follows it only.
    let ablation = run(
        dir.path(),
        &recipe,
        &[
            "--set",
            "stages.train.loading={ policy = \"static\", weights = { web = 2.0, code = 1.0, wikipedia = 1.0 } }",
        ],
    );
    assert_eq!(
        stages_with(&ablation, "committed"),
        set(&["train", "eval"]),
        "{ablation:#?}"
    );
    assert_eq!(
        stages_with(&ablation, "cached"),
        set(&["tokenize", "source", "eval-source", "prune", "consolidate"]),
        "{ablation:#?}"
    );

    // Nothing changed: everything is cached.
    let rerun = run(dir.path(), &recipe, &[]);
    assert!(stages_with(&rerun, "committed").is_empty(), "{rerun:#?}");
    assert_eq!(stages_with(&rerun, "cached"), set(&all), "{rerun:#?}");
}
