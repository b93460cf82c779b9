//! End-to-end: `sheared run` of a recipe that tokenizes a tiny three-domain corpus and trains a tiny
//! LLaMA on it with dynamic batch loading, through the real binary and the runner.

use std::path::Path;
use std::process::{Command, Output};

const SHEARED: &str = env!("CARGO_BIN_EXE_sheared");

fn sheared(dir: &Path, args: &[&str]) -> Output {
    Command::new(SHEARED)
        .args(args)
        .current_dir(dir)
        .env("SHEARED_CACHE", dir.join("cache"))
        .env_remove("RUST_LOG")
        .output()
        .expect("run sheared")
}

fn text(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).to_string() + &String::from_utf8_lossy(&output.stderr)
}

fn write_corpus(dir: &Path) {
    let words = [
        [
            "the", "river", "runs", "past", "old", "mills", "and", "quiet", "fields",
        ],
        ["fn", "main", "let", "x", "=", "vec", "!", "[", "]"],
        [
            "theorem", "proof", "lemma", "let", "epsilon", "be", "small", "then", "holds",
        ],
    ];
    for (index, name) in ["web", "code", "arxiv"].iter().enumerate() {
        let mut lines = String::new();
        for document in 0..40 {
            let body: Vec<&str> = (0..60)
                .map(|i| words[index][(i * (document + 3) + i / 7) % 9])
                .collect();
            lines.push_str(&serde_json::json!({ "text": body.join(" ") }).to_string());
            lines.push('\n');
        }
        std::fs::write(dir.join(format!("{name}.jsonl")), lines).unwrap();
    }
}

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

    // A bad value is refused before anything runs, naming the key.
    std::fs::write(dir.path().join("recipe.toml"), RECIPE.replace("STEPS", "0")).unwrap();
    let output = sheared(dir.path(), &["run", "recipe.toml"]);
    assert!(!output.status.success());
    assert!(text(&output).contains("steps"), "{}", text(&output));
}
