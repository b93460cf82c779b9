//! Bad model files and arguments give clear errors that name the file, tensor or option.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use sheared::model::gguf::{GgufFile, convert};
use sheared::model::hf::{WeightDtype, model_to_tensors, write_safetensors};
use sheared::model::load_hf;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/parity")
        .join(name)
}

/// A writable copy of the `gqa_tied` fixture.
fn copy_of_gqa_tied() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for name in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture("gqa_tied").join(name), dir.path().join(name)).unwrap();
    }
    dir
}

fn load_error(dir: &Path) -> String {
    load_hf(dir, &sheared::model::device::for_tests())
        .map(|_| ())
        .unwrap_err()
        .to_string()
}

#[test]
fn truncated_safetensors_is_reported() {
    let dir = copy_of_gqa_tied();
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let message = load_error(dir.path());
    assert!(
        message.contains("model.safetensors") && message.contains("truncated or corrupt"),
        "{message}"
    );
}

#[test]
fn missing_and_unexpected_tensors_are_named() {
    let dir = copy_of_gqa_tied();
    let model = load_hf(dir.path(), &sheared::model::device::for_tests()).unwrap();
    let mut tensors = model_to_tensors(&model);
    tensors.retain(|(name, _, _)| name != "model.layers.1.mlp.up_proj.weight");
    write_safetensors(
        &dir.path().join("model.safetensors"),
        tensors.clone(),
        WeightDtype::F32,
    )
    .unwrap();
    let message = load_error(dir.path());
    assert!(
        message.contains("missing") && message.contains("model.layers.1.mlp.up_proj.weight"),
        "{message}"
    );

    let mut tensors = model_to_tensors(&model);
    tensors.push((
        "model.layers.0.self_attn.q_norm.weight".into(),
        vec![1.0; 4],
        vec![4],
    ));
    write_safetensors(
        &dir.path().join("model.safetensors"),
        tensors,
        WeightDtype::BF16,
    )
    .unwrap();
    let message = load_error(dir.path());
    assert!(
        message.contains("not part of") && message.contains("q_norm"),
        "{message}"
    );
}

#[test]
fn shape_mismatch_names_tensor_and_shapes() {
    let dir = copy_of_gqa_tied();
    let path = dir.path().join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config["intermediate_size"] = serde_json::json!(24);
    std::fs::write(&path, config.to_string()).unwrap();
    let message = load_error(dir.path());
    assert!(
        message.contains("model.layers.0.mlp.gate_proj.weight"),
        "{message}"
    );
    assert!(
        message.contains("expected shape [24, 16]") && message.contains("found [20, 16]"),
        "{message}"
    );
}

#[test]
fn unsupported_architecture_and_missing_weights() {
    let dir = copy_of_gqa_tied();
    let path = dir.path().join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config["model_type"] = serde_json::json!("gemma");
    std::fs::write(&path, config.to_string()).unwrap();
    assert!(load_error(dir.path()).contains("unsupported architecture"));

    let empty = tempfile::tempdir().unwrap();
    assert!(load_error(empty.path()).contains("config.json"));
    std::fs::copy(
        fixture("gqa_tied").join("config.json"),
        empty.path().join("config.json"),
    )
    .unwrap();
    assert!(load_error(empty.path()).contains("no model.safetensors"));
}

#[test]
fn truncated_gguf_is_reported() {
    let bytes = std::fs::read(fixture("gguf_tiny").join("tiny.gguf")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let header_cut = dir.path().join("header.gguf");
    std::fs::write(&header_cut, &bytes[..200]).unwrap();
    let message = GgufFile::open(&header_cut)
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(message.contains("truncated or corrupt GGUF"), "{message}");
    let message = GgufFile::open(&header_cut.with_file_name("none"))
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(message.contains("none"), "{message}");
    std::fs::write(&header_cut, &bytes[..14]).unwrap();
    let message = GgufFile::open(&header_cut)
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(message.contains("truncated GGUF header"), "{message}");

    let data_cut = dir.path().join("data.gguf");
    std::fs::write(&data_cut, &bytes[..bytes.len() - 100]).unwrap();
    let message = convert(&data_cut, &dir.path().join("out"))
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("truncated GGUF") && message.contains("tensor `"),
        "{message}"
    );

    let not_gguf = dir.path().join("not.gguf");
    std::fs::write(&not_gguf, b"PK\x03\x04 not a gguf").unwrap();
    assert!(
        GgufFile::open(&not_gguf)
            .map(|_| ())
            .unwrap_err()
            .to_string()
            .contains("not a GGUF file")
    );
}

/// A minimal GGUF v3 file with one tensor of ggml type `ggml_type` (no data checks happen before the type).
fn gguf_with_tensor_type(path: &Path, ggml_type: u32) {
    let mut bytes = Vec::new();
    bytes.extend(b"GGUF");
    bytes.extend(3u32.to_le_bytes());
    bytes.extend(1u64.to_le_bytes()); // tensors
    bytes.extend(1u64.to_le_bytes()); // metadata entries
    let string = |bytes: &mut Vec<u8>, text: &str| {
        bytes.extend((text.len() as u64).to_le_bytes());
        bytes.extend(text.as_bytes());
    };
    string(&mut bytes, "general.architecture");
    bytes.extend(8u32.to_le_bytes());
    string(&mut bytes, "llama");
    string(&mut bytes, "blk.0.ffn_down.weight");
    bytes.extend(2u32.to_le_bytes());
    bytes.extend(256u64.to_le_bytes());
    bytes.extend(4u64.to_le_bytes());
    bytes.extend(ggml_type.to_le_bytes());
    bytes.extend(0u64.to_le_bytes());
    bytes.resize(bytes.len().div_ceil(32) * 32 + 4096, 0);
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn unsupported_quantisation_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q6k.gguf");
    gguf_with_tensor_type(&path, 14);
    let gguf = GgufFile::open(&path).unwrap();
    let message = gguf.tensor_f32(&gguf.tensors[0]).unwrap_err().to_string();
    assert!(
        message.contains("Q6_K") && message.contains("blk.0.ffn_down.weight"),
        "{message}"
    );
}

#[test]
fn cli_errors_are_clear() {
    let dir = fixture("gqa_tied");
    let ids = dir.join("reference.json");
    let run = |args: &[&str]| {
        let output = Command::cargo_bin("sheared")
            .unwrap()
            .args(args)
            .output()
            .unwrap();
        assert!(!output.status.success());
        String::from_utf8_lossy(&output.stderr).to_string()
    };
    // Only where `cuda:0` cannot work (always so in CI): without the libtorch backend the fix is a rebuild; with it (and no GPU here) the message says
    // that libtorch sees no GPU.
    let cuda = sheared::model::device::parse("cuda:0");
    let message = || {
        run(&[
            "score",
            dir.to_str().unwrap(),
            "--token-ids",
            ids.to_str().unwrap(),
            "--device",
            "cuda:0",
        ])
    };
    if cuda.is_ok() {
        // A GPU is here: nothing to refuse.
    } else if cfg!(feature = "tch") {
        let message = message();
        assert!(
            message.contains("no CUDA GPU") || message.contains("pick one"),
            "{message}"
        );
    } else {
        let message = message();
        assert!(message.contains("--features tch"), "{message}");
    }

    let bad_ids = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(bad_ids.path(), r#"{"input_ids": [[1, 2, 999]]}"#).unwrap();
    let message = run(&[
        "score",
        dir.to_str().unwrap(),
        "--token-ids",
        bad_ids.path().to_str().unwrap(),
    ]);
    assert!(
        message.contains("input_ids[0][2]") && message.contains("0..32"),
        "{message}"
    );

    let text = tempfile::NamedTempFile::new().unwrap();
    let message = run(&[
        "score",
        dir.to_str().unwrap(),
        "--text",
        text.path().to_str().unwrap(),
    ]);
    assert!(
        message.contains("no tokenizer.json") && message.contains("--token-ids"),
        "{message}"
    );

    let message = run(&["convert", ids.to_str().unwrap(), "/nonexistent-out"]);
    assert!(message.contains("not a GGUF file"), "{message}");
}
