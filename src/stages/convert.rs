//! Stage kind `convert`: import a llama.cpp GGUF file (architecture `llama`) as a Hugging Face model
//! folder that every other stage reads.
//!
//! ```toml
//! [stages.base]
//! kind = "convert"
//! gguf = { path = "models/SmolLM2-135M-Instruct.Q4_1.gguf" }
//! ```
//! Output: `config.json`, `model.safetensors` (f32), `tokenizer.json` + `tokenizer_config.json` for
//! GPT-2 style vocabularies, `generation_config.json`, `metrics.json` (the conversion summary).

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::model::gguf;
use crate::stage::{
    InputRef, Preview, PreviewInputs, Stage, StageContext, StageError, normalize_typed,
};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct ConvertConfig {
    /// The GGUF file.
    gguf: InputRef,
}

pub struct ConvertStage;

impl Stage for ConvertStage {
    fn kind(&self) -> &'static str {
        "convert"
    }
    fn version(&self) -> u32 {
        1
    }
    fn about(&self) -> &'static str {
        "import a llama.cpp GGUF file (llama architecture) as a Hugging Face model folder"
    }
    fn normalize(&self, table: &toml::Table) -> Result<toml::Table, StageError> {
        normalize_typed::<ConvertConfig>(table).map(|(_, table)| table)
    }
    fn settings_in_key(&self) -> &'static [&'static str] {
        &[] // deterministic: no seed, no device
    }
    fn preview(&self, _config: &toml::Table, inputs: &PreviewInputs<'_>) -> Preview {
        // The header alone gives the architecture (the file is memory-mapped, the tensors not read).
        inputs
            .path("gguf")
            .and_then(|path| gguf::GgufFile::open(&path).ok())
            .and_then(|file| gguf::config_from_metadata(&file).ok())
            .map(Preview::of_model)
            .unwrap_or_default()
    }
    fn run(&self, ctx: &StageContext<'_>) -> Result<(), StageError> {
        let input = ctx.input("gguf")?;
        if !input.is_file() {
            return Err(StageError::input(
                "gguf",
                format!("{} is not a file", input.display()),
            ));
        }
        ctx.reporter
            .message(&format!("converting {}", input.display()));
        let summary = gguf::convert(input, &ctx.out_dir)
            .map_err(|error| StageError::input("gguf", error.to_string()))?;
        if let Some(reason) = &summary.tokenizer_skipped {
            ctx.reporter
                .message(&format!("no tokenizer.json written: {reason}"));
        }
        let metrics =
            serde_json::to_string_pretty(&summary).context("serialising the conversion summary")?;
        let path = ctx.out_dir.join("metrics.json");
        std::fs::write(&path, metrics).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stage::testing::StageRun;
    use std::path::Path;

    #[test]
    fn run_converts_the_gguf_input() {
        let gguf =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity/gguf_tiny/tiny.gguf");
        let dir = tempfile::tempdir().unwrap();
        let config: toml::Table = toml::from_str("gguf = { path = \"tiny.gguf\" }").unwrap();
        let run = StageRun::in_dir(dir.path()).input("gguf", &gguf);
        run.run(&ConvertStage, &config).unwrap();
        for file in [
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "metrics.json",
        ] {
            assert!(run.out_dir.join(file).is_file(), "{file} missing");
        }
        let missing = StageRun::in_dir(&dir.path().join("missing"));
        let message = missing.run(&ConvertStage, &config).unwrap_err().to_string();
        assert!(message.contains("gguf"), "{message}");
    }

    #[test]
    fn normalize_rejects_unknown_keys_and_keeps_input() {
        let table: toml::Table = toml::from_str("gguf = { path = \"m.gguf\" }").unwrap();
        let normalized = ConvertStage.normalize(&table).unwrap();
        assert_eq!(normalized, table);
        let bad: toml::Table = toml::from_str("gguf = { path = \"m.gguf\" }\nquant = 1").unwrap();
        assert!(ConvertStage.normalize(&bad).is_err());
    }
}
