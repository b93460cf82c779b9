//! End-to-end: a train stage whose estimated peak memory exceeds the device's
//! (`settings.device_memory_gb`) is refused by `sheared run` before it computes anything; its
//! upstream output stays committed, an independent stage still runs with `--keep-going`, `sheared
//! plan --json` shows the estimate, and with enough memory the same stage runs.

mod common;

use common::{CORPUS_TOKENS_STAGE, sheared, text, write_corpus};

/// The model's vocabulary is the trained tokenizer's, so the train stage's estimate is known once
/// `tokens` has run (a small corpus can stop short of `vocab_size`).
/// The recipe: [`CORPUS_TOKENS_STAGE`] and what this test adds.
fn recipe() -> String {
    format!("{HEAD}{CORPUS_TOKENS_STAGE}{TAIL}")
}

const HEAD: &str = r#"
name = "memory"

[settings]
device_memory_gb = 0.001

"#;

const TAIL: &str = r#"
[stages.train]
kind = "train"
init = { config = { hidden_size = 64, intermediate_size = 128, num_hidden_layers = 2, num_attention_heads = 4, num_key_value_heads = 4, max_position_embeddings = 32 } }
data = { stage = "tokens" }
steps = 2
batch_size = 4
grad_accum = 2
seq_len = 16
warmup_steps = 0
eval_every = 0
eval_batches = 0

[stages.independent]
kind = "command"
argv = ["/bin/sh", "-c", "echo ran > {out}/ran.txt"]
"#;

/// `sheared plan recipe.toml --json --set ASSIGNMENT`, parsed.
fn plan_with(dir: &std::path::Path, assignment: &str) -> serde_json::Value {
    let output = sheared(dir, &["plan", "recipe.toml", "--json", "--set", assignment]);
    assert!(output.status.success(), "{}", text(&output));
    serde_json::from_slice(&output.stdout).unwrap()
}

fn stage<'a>(plan: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    plan["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|stage| stage["id"] == id)
        .unwrap_or_else(|| panic!("no stage {id} in {plan}"))
}

#[test]
fn a_stage_that_cannot_fit_is_refused_before_it_computes() {
    let dir = tempfile::tempdir().unwrap();
    write_corpus(dir.path());
    std::fs::write(dir.path().join("recipe.toml"), recipe()).unwrap();

    let output = sheared(
        dir.path(),
        &["run", "recipe.toml", "--keep-going", "--json"],
    );
    let all = text(&output);
    assert!(!output.status.success(), "{all}");
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    let of = |kind: &str, id: &str| {
        events
            .iter()
            .filter(|event| event["event"] == kind && event["stage"] == id)
            .count()
    };
    assert_eq!(of("committed", "tokens"), 1, "{all}");
    assert_eq!(of("committed", "independent"), 1, "{all}");
    assert_eq!(of("started", "train"), 0, "refused before it starts: {all}");
    let failed = events
        .iter()
        .find(|event| event["event"] == "failed" && event["stage"] == "train")
        .unwrap_or_else(|| panic!("train did not fail: {all}"));
    let reason = failed["reason"].as_str().unwrap();
    let device = format!("device `{}`", sheared::model::device::name_for_tests());
    for part in [
        "stage `train`",
        device.as_str(),
        "settings.device_memory_gb = 0.001",
        "1.0 MiB",
        "batch_size",
        "grad_accum",
        "seq_len",
        "refused before computing anything",
    ] {
        assert!(reason.contains(part), "{part:?} not in {reason}");
    }
    // Nothing was computed: no checkpoint, no training record in the stage's log.
    let log = std::fs::read_to_string(failed["log"].as_str().unwrap()).unwrap();
    assert!(!log.contains("\"loss\""), "{log}");

    // The failure is recorded; the committed upstream stays cached; the plan shows the estimate.
    let output = sheared(dir.path(), &["plan", "recipe.toml", "--json"]);
    assert!(output.status.success(), "{}", text(&output));
    let plan: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(stage(&plan, "tokens")["status"], "cached", "{plan}");
    assert_eq!(stage(&plan, "train")["status"], "failed", "{plan}");
    let preview = &stage(&plan, "train")["preview"];
    let estimate = preview["memory_bytes"].as_u64().expect("memory_bytes");
    assert!(estimate > 1 << 20, "{preview}");
    let memory = &preview["memory"];
    let parts: u64 = [
        "weights_bytes",
        "gradients_bytes",
        "optimizer_bytes",
        "masks_bytes",
        "activations_bytes",
    ]
    .iter()
    .map(|part| memory[part].as_u64().unwrap_or(0))
    .sum();
    assert_eq!(parts, estimate, "{memory}");
    assert_eq!(memory["micro_batch"], 2, "{memory}"); // batch_size 4 / grad_accum 2
    assert_eq!(memory["seq_len"], 16);
    assert_eq!(memory["precision"], "fp32");
    // bf16 (a run-wide setting) halves the activations in the estimate and adds a bf16 weight copy.
    let bf16_plan = plan_with(dir.path(), "settings.precision=\"bf16\"");
    let bf16 = &stage(&bf16_plan, "train")["preview"]["memory"];
    assert_eq!(bf16["precision"], "bf16", "{bf16}");
    assert_eq!(
        bf16["activations_bytes"].as_u64().unwrap() * 2,
        memory["activations_bytes"].as_u64().unwrap(),
        "{bf16}"
    );
    assert_eq!(
        stage(&bf16_plan, "train")["status"],
        "missing",
        "precision is part of the train stage's key (a new key, never run): {bf16_plan}"
    );
    let estimate_text = format!("{:.1} MiB", estimate as f64 / (1u64 << 20) as f64);
    assert!(
        reason.contains(&estimate_text),
        "{estimate_text} not in {reason}"
    );

    // With enough memory the same stage runs, and only it.
    let output = sheared(
        dir.path(),
        &[
            "run",
            "recipe.toml",
            "--json",
            "--set",
            "settings.device_memory_gb=64",
        ],
    );
    let all = text(&output);
    assert!(output.status.success(), "{all}");
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    let kinds: Vec<(String, String)> = events
        .iter()
        .map(|event| (event["event"].to_string(), event["stage"].to_string()))
        .collect();
    assert!(
        kinds.contains(&("\"committed\"".into(), "\"train\"".into())),
        "{all}"
    );
    assert!(
        kinds.contains(&("\"cached\"".into(), "\"tokens\"".into())),
        "{all}"
    );

    // Offloading AdamW's moments changes where bytes wait, not the outputs: the committed stage is
    // still the cached one, and its device estimate no longer adds the moments to the backward peak.
    let offload_plan = plan_with(dir.path(), "stages.train.optimizer_offload=true");
    let train = stage(&offload_plan, "train");
    assert_eq!(train["status"], "cached", "not in the key: {offload_plan}");
    let offloaded = &train["preview"]["memory"];
    assert_eq!(offloaded["optimizer_on_host"], true, "{offloaded}");
    let part = |name: &str| offloaded[name].as_u64().unwrap();
    assert_eq!(
        train["preview"]["memory_bytes"].as_u64().unwrap(),
        part("weights_bytes")
            + part("masks_bytes")
            + (part("gradients_bytes") + part("activations_bytes")).max(part("optimizer_bytes")),
        "{offloaded}"
    );
    assert!(train["preview"]["memory_bytes"].as_u64().unwrap() < estimate);
}

#[test]
fn a_negative_device_memory_is_a_recipe_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("recipe.toml"),
        "[settings]\ndevice_memory_gb = -1\n[stages.a]\nkind = \"command\"\nargv = [\"true\"]\n",
    )
    .unwrap();
    let output = sheared(dir.path(), &["plan", "recipe.toml"]);
    assert!(!output.status.success());
    assert!(
        text(&output).contains("device_memory_gb"),
        "{}",
        text(&output)
    );
}
