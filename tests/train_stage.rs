//! End-to-end: `sheared run` of a recipe that tokenizes a tiny three-domain corpus and trains a tiny
//! LLaMA on it with dynamic batch loading, through the real binary and the runner.

mod common;

use common::{sheared, text, write_corpus};

const RECIPE: &str = r#"
name = "train-e2e"

[stages.tokens]
kind = "tokenize"
domains = { web = { path = "web.jsonl" }, code = { path = "code.jsonl" }, arxiv = { path = "arxiv.jsonl" } }
tokenizer = { train = { vocab_size = 300 } }
seq_len = 16
eval_documents = 4

[stages.train]
kind = "train"
init = { config = { hidden_size = 16, intermediate_size = 32, num_hidden_layers = 2, num_attention_heads = 2, num_key_value_heads = 2, max_position_embeddings = 32 } }
data = { stage = "tokens" }
steps = STEPS
batch_size = 4
grad_accum = 2
seq_len = 16
lr = 3e-3
warmup_steps = 1
eval_every = 2
eval_batches = 1
checkpoint_every = 2
loading = { policy = "dynamic", reference = { web = 3.0, code = 2.5, arxiv = 3.0 } }
"#;

#[test]
fn tokenize_then_train_through_the_runner() {
    let dir = tempfile::tempdir().unwrap();
    write_corpus(dir.path());
    std::fs::write(dir.path().join("recipe.toml"), RECIPE.replace("STEPS", "4")).unwrap();
    let output = sheared(dir.path(), &["run", "recipe.toml"]);
    assert!(output.status.success(), "{}", text(&output));

    let output = sheared(dir.path(), &["path", "recipe.toml", "train"]);
    assert!(output.status.success(), "{}", text(&output));
    let out = std::path::PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    for file in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "metrics.jsonl",
        "domain_weights.json",
    ] {
        assert!(
            out.join(file).is_file(),
            "missing {file} in {}",
            out.display()
        );
    }
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(metrics["steps"], 4);
    assert_eq!(metrics["tokens"], 4 * 4 * 16);
    let weights: f64 = ["web", "code", "arxiv"]
        .iter()
        .map(|d| metrics["domains"][d]["weight"].as_f64().unwrap())
        .sum();
    assert!((weights - 1.0).abs() < 1e-9);
    let lines = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert_eq!(lines.matches("\"kind\":\"train\"").count(), 4);
    assert_eq!(lines.matches("\"kind\":\"eval\"").count(), 3); // before step 1, after steps 2 and 4

    // The curves, live: one TensorBoard event file beside the stage's log, one version record and
    // one event per metrics record (4 train steps, 3 evals), each a checksummed TFRecord.
    let key = out.file_name().unwrap();
    let output = sheared(dir.path(), &["path", "recipe.toml", "train", "--logs"]);
    assert!(output.status.success(), "{}", text(&output));
    let logs = std::path::PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    assert_eq!(logs, dir.path().join("cache/logs").join(key));
    let tensorboard = logs.join("tensorboard");
    let files: Vec<_> = std::fs::read_dir(&tensorboard)
        .unwrap_or_else(|error| panic!("{}: {error}", tensorboard.display()))
        .flatten()
        .map(|entry| entry.path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let name = files[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with("events.out.tfevents."), "{name}");
    let bytes = std::fs::read(&files[0]).unwrap();
    let mut records = 0;
    let mut at = 0;
    while at < bytes.len() {
        let length = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
        at += 16 + length;
        records += 1;
    }
    assert_eq!(at, bytes.len(), "whole records");
    assert_eq!(records, 1 + 4 + 3);
    let contains = |needle: &[u8]| bytes.windows(needle.len()).any(|window| window == needle);
    assert!(
        contains(b"brain.Event:2") && contains(b"train/loss") && contains(b"eval/eval_loss/web")
    );

    // A bad value is refused before anything runs, naming the key.
    std::fs::write(dir.path().join("recipe.toml"), RECIPE.replace("STEPS", "0")).unwrap();
    let output = sheared(dir.path(), &["run", "recipe.toml"]);
    assert!(!output.status.success());
    assert!(text(&output).contains("steps"), "{}", text(&output));
}
