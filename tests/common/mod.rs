//! Helpers shared by the end-to-end tests that drive the real `sheared` binary: one way to run it in
//! a recipe folder with its own cache, and the small corpora those recipes tokenize.
#![allow(dead_code)] // each test crate uses its own subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const SHEARED: &str = env!("CARGO_BIN_EXE_sheared");

/// A `tokens` stage over the `web` and `code` files of [`write_corpus`]: a 300-token BPE trained on
/// them, sequences of 16, two held-out documents per domain.
pub const CORPUS_TOKENS_STAGE: &str = r#"
[stages.tokens]
kind = "tokenize"
domains = { web = { path = "web.jsonl" }, code = { path = "code.jsonl" } }
tokenizer = { train = { vocab_size = 300 } }
seq_len = 16
eval_documents = 2
"#;

/// The stages of `pipelines/sheared.toml` (with a `source` stage), in run order.
pub const PIPELINE_STAGES: [&str; 7] = [
    "tokenize",
    "source",
    "eval-source",
    "prune",
    "consolidate",
    "train",
    "eval",
];

/// `sheared ARGS` in `dir`, with the cache in `dir/cache` and no log filter from the environment.
pub fn sheared(dir: &Path, args: &[&str]) -> Output {
    Command::new(SHEARED)
        .args(args)
        .current_dir(dir)
        .env("SHEARED_CACHE", dir.join("cache"))
        .env_remove("RUST_LOG")
        .output()
        .expect("run sheared")
}

/// [`sheared`] that must succeed; its stdout.
pub fn sheared_ok(dir: &Path, args: &[&str]) -> String {
    let output = sheared(dir, args);
    assert!(
        output.status.success(),
        "sheared {args:?} failed:\n{}",
        text(&output)
    );
    String::from_utf8_lossy(&output.stdout).to_string()
}

/// stdout then stderr.
pub fn text(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).to_string() + &String::from_utf8_lossy(&output.stderr)
}

/// tests/fixtures/eval: the tiny model, its tokenizer and task files.
pub fn eval_fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/eval")
}

/// `web.jsonl`, `code.jsonl`, `arxiv.jsonl` in `dir`: 40 documents of 60 words each from a
/// domain-specific 9-word vocabulary, so that per-domain losses differ.
pub fn write_corpus(dir: &Path) {
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
