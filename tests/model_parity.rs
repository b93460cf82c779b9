//! Parity with Hugging Face transformers: the fixtures in tests/fixtures/parity were written by
//! scripts/make-parity-fixtures.py (transformers 5.24, torch, f32 reference logits and loss).

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use burn::tensor::{Int, Tensor, TensorData};
use sheared::model::{WeightDtype, cross_entropy, gguf, load_hf, save_hf, save_hf_with_dtype};

const TOLERANCE: f64 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/parity")
        .join(name)
}

struct Reference {
    input_ids: Vec<Vec<i64>>,
    logits: Vec<f32>,
    mean_loss: f64,
}

fn reference(dir: &Path) -> Reference {
    let value: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
            .unwrap();
    Reference {
        input_ids: serde_json::from_value(value["input_ids"].clone()).unwrap(),
        logits: serde_json::from_value(value["logits"].clone()).unwrap(),
        mean_loss: value["mean_loss"].as_f64().unwrap(),
    }
}

/// Logits and transformers-style loss (targets = inputs shifted by one) of the model in `dir`.
fn check_against_reference(model_dir: &Path, reference: &Reference) {
    let device = sheared::model::device::for_tests();
    let model = load_hf(model_dir, &device).unwrap();
    let batch = reference.input_ids.len();
    let seq = reference.input_ids[0].len();
    let flat: Vec<i64> = reference.input_ids.iter().flatten().copied().collect();
    let input_ids = Tensor::<2, Int>::from_data(TensorData::new(flat, [batch, seq]), &device);
    let logits = model.forward(input_ids.clone(), None); // [batch, seq, vocab]
    let values = logits.clone().into_data().try_to_vec::<f32>().unwrap();
    assert_eq!(values.len(), reference.logits.len());
    let max_difference = values
        .iter()
        .zip(&reference.logits)
        .map(|(a, b)| (a - b).abs() as f64)
        .fold(0.0, f64::max);
    assert!(
        max_difference < TOLERANCE,
        "{}: max |logit difference| = {max_difference}",
        model_dir.display()
    );

    let inputs = logits.narrow(1, 0, seq - 1); // predictions for positions 1..seq
    let targets = input_ids.narrow(1, 1, seq - 1);
    let loss = cross_entropy(inputs, targets).into_scalar::<f32>() as f64;
    assert!(
        (loss - reference.mean_loss).abs() < TOLERANCE,
        "{}: loss {loss} vs transformers {}",
        model_dir.display(),
        reference.mean_loss
    );
}

#[test]
fn mha_untied_sharded_f32_matches_transformers() {
    let dir = fixture("mha_untied");
    check_against_reference(&dir, &reference(&dir));
}

#[test]
fn gqa_tied_bf16_matches_transformers() {
    let dir = fixture("gqa_tied");
    check_against_reference(&dir, &reference(&dir));
}

#[test]
fn explicit_head_dim_llama3_rope_f16_matches_transformers() {
    let dir = fixture("head_dim");
    check_against_reference(&dir, &reference(&dir));
}

#[test]
fn save_then_load_keeps_the_function() {
    let dir = fixture("gqa_tied");
    let device = sheared::model::device::for_tests();
    let model = load_hf(&dir, &device).unwrap();
    let out = tempfile::tempdir().unwrap();
    save_hf(&model, out.path(), None).unwrap();
    check_against_reference(out.path(), &reference(&dir));
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("config.json")).unwrap())
            .unwrap();
    assert_eq!(config["tie_word_embeddings"], true);
    assert_eq!(config["num_key_value_heads"], 2);

    // The fixture's weights are bf16 values, so a bf16 save is lossless.
    let bf16 = tempfile::tempdir().unwrap();
    save_hf_with_dtype(&model, bf16.path(), None, WeightDtype::BF16).unwrap();
    check_against_reference(bf16.path(), &reference(&dir));
    let size = |dir: &Path| {
        std::fs::metadata(dir.join("model.safetensors"))
            .unwrap()
            .len()
    };
    assert!(
        size(bf16.path()) * 4 < size(out.path()) * 3,
        "bf16 file is not smaller"
    );
}

#[test]
fn gguf_conversion_matches_transformers_on_gguf_dequantised_weights() {
    let dir = fixture("gguf_tiny");
    let out = tempfile::tempdir().unwrap();
    let summary = gguf::convert(&dir.join("tiny.gguf"), out.path()).unwrap();
    assert_eq!(summary.tokenizer_skipped, None);
    for kind in [
        "Q8_0 (#8)",
        "Q4_0 (#2)",
        "Q4_1 (#3)",
        "F16 (#1)",
        "F32 (#0)",
    ] {
        assert!(
            summary.tensor_types.contains_key(kind),
            "{kind} missing from {:?}",
            summary.tensor_types
        );
    }
    check_against_reference(out.path(), &reference(&dir));

    // The rebuilt tokenizer.json loads and applies the byte-level BPE merges.
    let value: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
            .unwrap();
    let tokenizer = tokenizers::Tokenizer::from_file(out.path().join("tokenizer.json")).unwrap();
    let encoding = tokenizer
        .encode(value["text"].as_str().unwrap(), false)
        .unwrap();
    let expected: Vec<u32> = serde_json::from_value(value["text_ids"].clone()).unwrap();
    assert_eq!(encoding.get_ids(), expected.as_slice());
}

#[test]
fn score_command_reports_the_transformers_loss() {
    for name in ["mha_untied", "gqa_tied", "head_dim"] {
        let dir = fixture(name);
        let output = Command::cargo_bin("sheared")
            .unwrap()
            .args([
                "score",
                dir.to_str().unwrap(),
                "--token-ids",
                dir.join("reference.json").to_str().unwrap(),
                "--json",
            ])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        let loss = report["mean_loss"].as_f64().unwrap();
        let expected = reference(&dir).mean_loss;
        assert!(
            (loss - expected).abs() < TOLERANCE,
            "{name}: score {loss} vs transformers {expected}"
        );
        assert_eq!(report["tokens"], 2 * 6);
        assert!((report["perplexity"].as_f64().unwrap() - loss.exp()).abs() < 1e-9);
    }
}

#[test]
fn inspect_command_reports_widths_and_counts() {
    let dir = fixture("mha_untied");
    let output = Command::cargo_bin("sheared")
        .unwrap()
        .args(["inspect", dir.to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    // transformers counted 5456 parameters for this fixture (model.safetensors.index.json).
    assert_eq!(report["parameters"]["total"], 5456);
    assert_eq!(report["parameters"]["embedding"], 2 * 32 * 16);
    assert_eq!(report["layers"][1]["num_attention_heads"], 4);
}

#[test]
fn per_layer_widths_match_the_sheared_modeling_file_and_round_trip() {
    let dir = fixture("per_layer");
    let reference = reference(&dir);
    check_against_reference(&dir, &reference);
    let model = load_hf(&dir, &sheared::model::device::for_tests()).unwrap();
    let out = tempfile::tempdir().unwrap();
    save_hf(&model, out.path(), None).unwrap();
    check_against_reference(out.path(), &reference);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("config.json")).unwrap())
            .unwrap();
    assert_eq!(config["architectures"][0], "ShearedLlamaForCausalLM");
    assert_eq!(
        config["auto_map"]["AutoModelForCausalLM"],
        "modeling_sheared_llama.ShearedLlamaForCausalLM"
    );
    assert_eq!(config["sheared_layer_widths"][2]["num_attention_heads"], 0);
    assert!(out.path().join("modeling_sheared_llama.py").is_file());
}
