//! The paper recipes (`recipes/2.7b.toml`, `recipes/1.3b.toml`) encode the paper's shapes: their
//! prune targets, applied to LLaMA2-7B's config, give exactly the published parameter counts; and
//! `sheared plan` works on them on a machine that has neither the model nor the data.

use std::path::PathBuf;
use std::process::Command;

use sheared::model::LlamaConfig;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// LLaMA2-7B's config.json (meta-llama/Llama-2-7b-hf), with the target's widths when given.
fn llama2_config(target: Option<&toml::Table>) -> LlamaConfig {
    let width = |key: &str, default: i64| -> i64 {
        target
            .and_then(|table| table.get(key))
            .and_then(toml::Value::as_integer)
            .unwrap_or(default)
    };
    let hidden = width("hidden", 4096);
    let heads = width("heads", 32);
    let json = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": 32000, "hidden_size": hidden, "intermediate_size": width("intermediate", 11008),
        "num_hidden_layers": width("layers", 32), "num_attention_heads": heads,
        "num_key_value_heads": width("kv_heads", heads), "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": false,
        "bos_token_id": 1, "eos_token_id": 2, "initializer_range": 0.02,
    });
    LlamaConfig::from_json(&json, &repo().join("recipes")).expect("valid LLaMA config")
}

fn prune_target(recipe: &str) -> toml::Table {
    let text = std::fs::read_to_string(repo().join("recipes").join(recipe)).expect("read recipe");
    let table: toml::Table = toml::from_str(&text).expect("recipe is TOML");
    table["stages"]["prune"]["target"]
        .as_table()
        .expect("stages.prune.target is a table")
        .clone()
}

#[test]
fn paper_targets_have_the_published_parameter_counts() {
    assert_eq!(llama2_config(None).parameter_counts().total, 6_738_415_616);
    let target = prune_target("2.7b.toml");
    assert_eq!(
        llama2_config(Some(&target)).parameter_counts().total,
        2_701_560_320
    );
    let target = prune_target("1.3b.toml");
    assert_eq!(
        llama2_config(Some(&target)).parameter_counts().total,
        1_345_423_360
    );
}

#[test]
fn plan_works_without_the_model_and_data() {
    for (recipe, target) in [
        ("2.7b.toml", "2,701,560,320"),
        ("1.3b.toml", "1,345,423,360"),
    ] {
        let cache = tempfile::tempdir().expect("temp dir");
        let output = Command::new(env!("CARGO_BIN_EXE_sheared"))
            .arg("plan")
            .arg(repo().join("recipes").join(recipe))
            .env("SHEARED_CACHE", cache.path())
            .env_remove("RUST_LOG")
            .output()
            .expect("run sheared plan");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "plan {recipe} failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        for stage in [
            "tokenize",
            "prune",
            "consolidate",
            "train",
            "eval",
            "eval-source",
        ] {
            assert!(
                stdout.contains(stage),
                "plan of {recipe} lacks {stage}:\n{stdout}"
            );
        }
        // Parameter counts from `expect_source`, predicted down the DAG: prune shows source → target,
        // consolidate and train (and the final eval) the target.
        let line_of = |stage: &str| {
            stdout
                .lines()
                .find(|line| line.split_whitespace().nth(1) == Some(stage))
                .unwrap_or_else(|| panic!("no line for {stage}:\n{stdout}"))
                .to_string()
        };
        assert!(
            line_of("prune").contains(&format!("6,738,415,616 (6.74B) → {target}")),
            "{stdout}"
        );
        for stage in ["consolidate", "train", "eval"] {
            assert!(line_of(stage).contains(target), "{stage}:\n{stdout}");
        }
        assert!(line_of("train").contains("tokens"), "{stdout}");
    }
}

/// Keys a kind leaves out of its normalised table while they hold their defaults (`grad_accum`,
/// `activation_checkpointing`, `settings.precision`) are settable with `--set` like any other, and
/// the plan's memory estimate follows them; a misspelt one is still refused with a suggestion.
#[test]
fn set_reaches_keys_kept_out_of_the_key_at_their_defaults() {
    let cache = tempfile::tempdir().expect("temp dir");
    let plan = |sets: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_sheared"));
        command
            .arg("plan")
            .arg(repo().join("recipes").join("2.7b.toml"))
            .arg("--json")
            .env("SHEARED_CACHE", cache.path())
            .env_remove("SHEARED_DEVICE");
        for set in sets {
            command.args(["--set", set]);
        }
        command.output().expect("run sheared plan")
    };
    let output = plan(&[
        "settings.precision=\"bf16\"",
        "stages.prune.grad_accum=32",
        "stages.prune.activation_checkpointing=true",
        "stages.prune.optimizer_offload=false",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let document: serde_json::Value = serde_json::from_slice(&output.stdout).expect("plan JSON");
    let prune = document["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .find(|stage| stage["id"] == "prune")
        .expect("a prune stage");
    let memory = &prune["preview"]["memory"];
    assert_eq!(memory["micro_batch"], 1, "{memory}");
    assert_eq!(memory["precision"], "bf16", "{memory}");
    assert_eq!(memory["activation_checkpointing"], true, "{memory}");
    // ≈ 141 GiB (docs/training.md): far below the 4.0 TiB of one fp32 pass of 32 × 4096.
    let bytes = prune["preview"]["memory_bytes"]
        .as_u64()
        .expect("memory_bytes");
    assert!(bytes < 150 << 30 && bytes > 130 << 30, "{bytes}");

    // As written, the recipe keeps AdamW's moments on the host: its prune step fits one 141 GB GPU.
    let output = plan(&[]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let document: serde_json::Value = serde_json::from_slice(&output.stdout).expect("plan JSON");
    for id in ["prune", "train"] {
        let stage = document["stages"]
            .as_array()
            .expect("stages")
            .iter()
            .find(|stage| stage["id"] == id)
            .expect("the stage");
        let bytes = stage["preview"]["memory_bytes"]
            .as_u64()
            .expect("memory_bytes");
        assert!(
            bytes < 141_000_000_000,
            "{id}: {bytes} bytes do not fit one H200"
        );
    }

    let output = plan(&["stages.prune.grad_acum=32"]);
    assert!(!output.status.success());
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(message.contains("did you mean `grad_accum`"), "{message}");
}
