//! Stage kind `tokenize`: raw multi-domain text → token shards (see [`crate::data::tokenize`]).
//!
//! ```toml
//! [stages.tokens]
//! kind = "tokenize"
//! domains = { web = { path = "data/sample/web.jsonl" }, code = { path = "data/code/*.jsonl.zst" } }
//! tokenizer = { train = { vocab_size = 4096 } }      # or { path = "models/llama/tokenizer.json" }
//! seq_len = 512
//! eval_fraction = 0.05                               # or eval_documents = 20
//! domain_settings = { code = { text_field = "content", eval_documents = 5 } }
//! ```

use std::collections::BTreeMap;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::data::DataError;
use crate::data::source::{InvalidUtf8, SourceOptions};
use crate::data::tokenize::{
    DomainSpec, EvalSplit, TokenizeSpec, TokenizerSource, TrainTokenizer, tokenize,
};
use crate::stage::{
    InputRef, Preview, PreviewInputs, Stage, StageContext, StageError, normalize_typed,
};

/// The `tokenize` stage's config, as written in a recipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizeConfig {
    /// `name = { path = "file|folder|glob" }` (or `{ stage = .. }`), in order; the order defines domain ids.
    pub domains: toml::Table,
    /// `{ path = "tokenizer.json" }` / `{ stage = .., file = .. }`, or `{ train = { vocab_size = .. } }`.
    pub tokenizer: toml::Value,
    #[serde(default = "default_text_field")]
    pub text_field: String,
    /// Share of each domain's documents that go to eval (by hash); default 0.05 unless `eval_documents` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_fraction: Option<f64>,
    /// Fixed number of eval documents per domain (the smallest hashes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_documents: Option<u64>,
    /// Fixed number of held-out *sequences* of `seq_len` tokens per domain, as the paper holds out
    /// (500 × 4096): the last `eval_sequences × seq_len + 1` tokens of the domain's stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_sequences: Option<u64>,
    /// Per-domain overrides of `text_field`, `eval_fraction`, `eval_documents`, `eval_sequences`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub domain_settings: BTreeMap<String, DomainSettings>,
    /// Every domain must give at least one window of `seq_len + 1` tokens in each split.
    pub seq_len: u64,
    /// Salt of the split hash. Its own key (not `settings.seed`) so that sweeping training seeds keeps one split.
    #[serde(default)]
    pub seed: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens_per_domain: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bos_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eos_token: Option<String>,
    /// `"error"` (stop at file:line) or `"replace"` (U+FFFD, counted in the manifest).
    #[serde(default)]
    pub invalid_utf8: InvalidUtf8,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_field: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_fraction: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_documents: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_sequences: Option<u64>,
}

fn default_text_field() -> String {
    "text".into()
}

impl TokenizeConfig {
    fn parse(table: &toml::Table) -> Result<(Self, toml::Table), StageError> {
        let (mut config, _): (TokenizeConfig, _) = normalize_typed(table)?;
        if config.eval_fraction.is_none()
            && config.eval_documents.is_none()
            && config.eval_sequences.is_none()
        {
            config.eval_fraction = Some(0.05);
        }
        // Fill the trainer's defaults too, so they enter the cache key explicitly.
        if let Some(train) = config.tokenizer_source_config()? {
            let mut filled = toml::Table::new();
            filled.insert(
                "train".into(),
                toml::Value::try_from(&train).map_err(|error| StageError::Other(error.into()))?,
            );
            config.tokenizer = toml::Value::Table(filled);
        }
        let back = match toml::Value::try_from(&config)
            .map_err(|error| StageError::Other(error.into()))?
        {
            toml::Value::Table(back) => back,
            _ => {
                return Err(StageError::Other(anyhow::anyhow!(
                    "tokenize config did not serialise to a table"
                )));
            }
        };
        Ok((config, back))
    }

    fn check(&self) -> Result<(), StageError> {
        if self.domains.is_empty() {
            return Err(StageError::config(
                "domains",
                "name at least one domain: `domains = { web = { path = \"..\" } }`",
            ));
        }
        for (name, value) in &self.domains {
            InputRef::deserialize(value.clone()).map_err(|_| {
                StageError::config(
                    format!("domains.{name}"),
                    "write `{ path = \"file, folder or glob\" }` or `{ stage = \"..\" }`",
                )
            })?;
        }
        for name in self.domain_settings.keys() {
            if !self.domains.contains_key(name) {
                let known: Vec<&str> = self.domains.keys().map(String::as_str).collect();
                return Err(StageError::config(
                    format!("domain_settings.{name}"),
                    format!(
                        "`{name}` is not a domain (domains: {}){}",
                        known.join(", "),
                        crate::data::did_you_mean(name, known.iter().copied())
                    ),
                ));
            }
        }
        let splits = [
            self.eval_fraction.is_some(),
            self.eval_documents.is_some(),
            self.eval_sequences.is_some(),
        ];
        if splits.iter().filter(|set| **set).count() > 1 {
            return Err(StageError::config(
                if self.eval_sequences.is_some() {
                    "eval_sequences"
                } else {
                    "eval_documents"
                },
                "set one of `eval_fraction`, `eval_documents` and `eval_sequences`, not several",
            ));
        }
        for (name, local) in &self.domain_settings {
            let set = [
                local.eval_fraction.is_some(),
                local.eval_documents.is_some(),
                local.eval_sequences.is_some(),
            ];
            if set.iter().filter(|set| **set).count() > 1 {
                return Err(StageError::config(
                    format!("domain_settings.{name}"),
                    "set one of `eval_fraction`, `eval_documents` and `eval_sequences`, not several",
                ));
            }
        }
        // Every domain needs held-out text: the eval stages and dynamic loading read per-domain
        // losses from it, and the stage itself refuses an empty eval split. Say so now, before a
        // whole corpus is read and tokenized for nothing.
        for name in self.domains.keys() {
            let nothing_held_out = match self.split_for(name) {
                EvalSplit::Documents(count) | EvalSplit::Sequences(count) => count == 0,
                EvalSplit::Fraction(fraction) => fraction <= 0.0,
            };
            if nothing_held_out {
                let key = if self.domain_settings.contains_key(name) {
                    format!("domain_settings.{name}")
                } else if self.eval_documents.is_some() {
                    "eval_documents".into()
                } else if self.eval_sequences.is_some() {
                    "eval_sequences".into()
                } else {
                    "eval_fraction".into()
                };
                return Err(StageError::config(
                    key,
                    format!(
                        "domain `{name}` would hold out nothing, but every domain needs an eval split (per-domain \
                         losses for evaluation and dynamic loading); use eval_fraction > 0 (e.g. 0.05), \
                         eval_documents >= 1 or eval_sequences >= 1"
                    ),
                ));
            }
        }
        self.tokenizer_source_config()?;
        if self.seq_len == 0 {
            return Err(StageError::config("seq_len", "must be at least 1"));
        }
        Ok(())
    }

    /// `Ok(None)` for a tokenizer input, `Ok(Some(train))` for `{ train = .. }`.
    fn tokenizer_source_config(&self) -> Result<Option<TrainTokenizer>, StageError> {
        if InputRef::deserialize(self.tokenizer.clone()).is_ok() {
            return Ok(None);
        }
        let toml::Value::Table(table) = &self.tokenizer else {
            return Err(StageError::config(
                "tokenizer",
                "write `{ path = \"tokenizer.json\" }` or `{ train = { vocab_size = 4096 } }`",
            ));
        };
        match (table.get("train"), table.len()) {
            (Some(train), 1) => TrainTokenizer::deserialize(train.clone())
                .map(Some)
                .map_err(|error| {
                    StageError::config("tokenizer.train", error.message().to_string())
                }),
            _ => Err(StageError::config(
                "tokenizer",
                "write `{ path = \"tokenizer.json\" }` or `{ train = { vocab_size = 4096 } }`",
            )),
        }
    }

    /// The domain's own setting if it has one, else the stage's; a fraction of 0.05 by default.
    fn split_for(&self, name: &str) -> EvalSplit {
        let local = self.domain_settings.get(name).cloned().unwrap_or_default();
        let of = |documents: Option<u64>, sequences: Option<u64>, fraction: Option<f64>| {
            documents
                .map(EvalSplit::Documents)
                .or(sequences.map(EvalSplit::Sequences))
                .or(fraction.map(EvalSplit::Fraction))
        };
        of(
            local.eval_documents,
            local.eval_sequences,
            local.eval_fraction,
        )
        .or(of(
            self.eval_documents,
            self.eval_sequences,
            self.eval_fraction,
        ))
        .unwrap_or(EvalSplit::Fraction(0.05))
    }
}

pub struct TokenizeStage;

impl Stage for TokenizeStage {
    fn kind(&self) -> &'static str {
        "tokenize"
    }
    fn version(&self) -> u32 {
        1
    }
    fn about(&self) -> &'static str {
        "multi-domain JSONL/txt text -> train/eval token shards + manifest (trains a BPE tokenizer if asked)"
    }
    fn normalize(&self, table: &toml::Table) -> Result<toml::Table, StageError> {
        let (config, back) = TokenizeConfig::parse(table)?;
        config.check()?;
        Ok(back)
    }
    fn settings_in_key(&self) -> &'static [&'static str] {
        &[]
    }
    fn validate(&self, config: &toml::Table) -> Result<(), StageError> {
        TokenizeConfig::parse(config)?.0.check()
    }
    fn preview(&self, config: &toml::Table, inputs: &PreviewInputs<'_>) -> Preview {
        // A trained tokenizer's size is known only once trained (a small corpus can stop short of
        // `vocab_size`); a given tokenizer.json is read.
        let mut preview = Preview::default();
        let Ok((config, _)) = TokenizeConfig::parse(config) else {
            return preview;
        };
        if let Ok(None) = config.tokenizer_source_config()
            && let Some(path) = inputs.path("tokenizer")
        {
            let file = if path.is_dir() {
                path.join("tokenizer.json")
            } else {
                path
            };
            if let Ok(tokenizer) = tokenizers::Tokenizer::from_file(&file) {
                let vocab_size = tokenizer.get_vocab_size(true);
                preview.vocab_size = Some(vocab_size);
                preview
                    .facts
                    .push(format!("vocabulary of {vocab_size} tokens"));
            }
        }
        preview
    }
    fn run(&self, ctx: &StageContext<'_>) -> Result<(), StageError> {
        let (config, _) = TokenizeConfig::parse(ctx.config)?;
        config.check()?;
        let tokenizer = match config.tokenizer_source_config()? {
            Some(train) => TokenizerSource::Train(train),
            // `{ stage = "model" }` gives the model folder: its tokenizer.json is meant.
            None => {
                let path = ctx.input("tokenizer")?;
                TokenizerSource::File(if path.is_dir() {
                    path.join("tokenizer.json")
                } else {
                    path.to_path_buf()
                })
            }
        };
        let mut domains = Vec::new();
        for name in config.domains.keys() {
            let settings = config
                .domain_settings
                .get(name)
                .cloned()
                .unwrap_or_default();
            domains.push(DomainSpec {
                name: name.clone(),
                source: ctx.input(&format!("domains.{name}"))?.to_path_buf(),
                split: config.split_for(name),
                options: SourceOptions {
                    text_field: settings
                        .text_field
                        .unwrap_or_else(|| config.text_field.clone()),
                    invalid_utf8: config.invalid_utf8,
                },
            });
        }
        let spec = TokenizeSpec {
            domains,
            tokenizer,
            seq_len: config.seq_len,
            seed: config.seed,
            max_tokens_per_domain: config.max_tokens_per_domain,
            bos_token: config.bos_token.clone(),
            eos_token: config.eos_token.clone(),
            batch_documents: crate::data::tokenize::DEFAULT_BATCH_DOCUMENTS,
        };
        let summary =
            tokenize(&spec, &ctx.out_dir, ctx.reporter, &ctx.cancel).map_err(stage_error)?;
        let metrics = serde_json::json!({
            "tokens": summary.tokens,
            "seconds": summary.seconds,
            "tokens_per_s": summary.tokens_per_s,
            "domains": summary.manifest.domains.iter().map(|domain| serde_json::json!({
                "name": domain.name,
                "train_tokens": domain.train_tokens,
                "eval_tokens": domain.eval_tokens,
                "train_documents": domain.train_documents,
                "eval_documents": domain.eval_documents,
            })).collect::<Vec<_>>(),
        });
        ctx.reporter.metrics(&metrics);
        let path = ctx.out_dir.join("metrics.json");
        std::fs::write(
            &path,
            serde_json::to_string_pretty(&metrics).map_err(anyhow::Error::from)? + "\n",
        )
        .with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }
}

/// Data errors that point at a recipe key become config/input errors so the runner can show the recipe line.
fn stage_error(error: DataError) -> StageError {
    match error {
        DataError::Config { key, message } => StageError::config(key, message),
        DataError::SpecialToken { key, message } => StageError::config(key, message),
        DataError::Tokenizer { .. } | DataError::VocabTooLarge { .. } => {
            StageError::input("tokenizer", error.to_string())
        }
        DataError::EmptyDomain { ref domain, .. } | DataError::TooFewTokens { ref domain, .. } => {
            StageError::input(format!("domains.{domain}"), error.to_string())
        }
        DataError::Cancelled => StageError::Cancelled,
        other => StageError::Other(other.into()),
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::data::TokenizedDataset;
    use crate::data::tokenize::tests::{documents, write_jsonl};
    use crate::stage::testing::StageRun;

    fn table(text: &str) -> toml::Table {
        text.parse().unwrap()
    }

    #[test]
    fn normalize_fills_defaults_and_keeps_domain_order() {
        let normalized = TokenizeStage
            .normalize(&table(
                "domains = { zeta = { path = \"z\" }, alpha = { stage = \"raw\", file = \"a.jsonl\" } }\n\
                 tokenizer = { train = { vocab_size = 512 } }\nseq_len = 64",
            ))
            .unwrap();
        assert_eq!(normalized["eval_fraction"].as_float(), Some(0.05));
        assert_eq!(normalized["text_field"].as_str(), Some("text"));
        assert_eq!(normalized["invalid_utf8"].as_str(), Some("error"));
        assert_eq!(
            normalized["tokenizer"]["train"]["min_frequency"].as_integer(),
            Some(2)
        );
        let order: Vec<&str> = normalized["domains"]
            .as_table()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(order, ["zeta", "alpha"]);
        assert_eq!(
            TokenizeStage.normalize(&normalized).unwrap(),
            normalized,
            "normalising is idempotent"
        );
    }

    #[test]
    fn config_errors_name_the_key() {
        let key_of = |text: &str| match TokenizeStage.normalize(&table(text)) {
            Err(StageError::Config { key, message }) => format!("{key}: {message}"),
            other => panic!("expected a config error, got {other:?}"),
        };
        let base = "domains = { web = { path = \"w\" } }\ntokenizer = { path = \"t.json\" }\nseq_len = 8\n";
        assert!(
            key_of(&format!("{base}eval_fraction = 0.1\neval_documents = 3"))
                .starts_with("eval_documents:")
        );
        assert!(
            key_of(&format!("{base}eval_fraction = 0.1\neval_sequences = 3"))
                .starts_with("eval_sequences:")
        );
        assert!(
            key_of(&format!(
                "{base}domain_settings = {{ web = {{ eval_documents = 2, eval_sequences = 3 }} }}"
            ))
            .starts_with("domain_settings.web:")
        );
        assert!(key_of(&format!("{base}eval_sequences = 0")).starts_with("eval_sequences:"));
        let message = key_of(&format!(
            "{base}domain_settings = {{ wbe = {{ text_field = \"x\" }} }}"
        ));
        assert!(message.contains("did you mean `web`"), "{message}");
        // Nothing held out can never work: refused before a byte is read.
        for (extra, key) in [
            ("eval_fraction = 0.0", "eval_fraction"),
            ("eval_documents = 0", "eval_documents"),
            (
                "domain_settings = { web = { eval_documents = 0 } }",
                "domain_settings.web",
            ),
        ] {
            let message = key_of(&format!("{base}{extra}"));
            assert!(
                message.starts_with(&format!("{key}:")) && message.contains("eval_fraction > 0"),
                "{message}"
            );
        }
        assert!(
            key_of("domains = { web = \"w\" }\ntokenizer = { path = \"t\" }\nseq_len = 8")
                .starts_with("domains.web:")
        );
        assert!(
            key_of("domains = { web = { path = \"w\" } }\ntokenizer = { train = { vocab = 5 } }\nseq_len = 8")
                .starts_with("tokenizer.train:")
        );
        assert!(key_of(&format!("{base}colour = 1")).contains("colour"));
    }

    #[test]
    fn runs_from_a_stage_context_and_reports_input_keys() {
        let root = tempfile::tempdir().unwrap();
        write_jsonl(&root.path().join("web.jsonl"), &documents(1, 40));
        write_jsonl(&root.path().join("code").join("c.jsonl"), &documents(2, 40));
        let config = TokenizeStage
            .normalize(&table(
                "domains = { web = { path = \"web.jsonl\" }, code = { path = \"code\" } }\n\
                 tokenizer = { train = { vocab_size = 300 } }\nseq_len = 8\neval_fraction = 0.2\n\
                 domain_settings = { code = { eval_documents = 4 } }",
            ))
            .unwrap();
        let run = StageRun::in_dir(root.path())
            .input("domains.web", &root.path().join("web.jsonl"))
            .input("domains.code", &root.path().join("code"));
        run.run(&TokenizeStage, &config).unwrap();
        let out_dir = &run.out_dir;
        let dataset = TokenizedDataset::open(out_dir).unwrap();
        assert_eq!(dataset.domains(), ["web", "code"]);
        assert_eq!(dataset.manifest().domains[1].eval_documents, 4);
        assert!(out_dir.join("metrics.json").is_file());

        // A domain too small for one sequence is reported against its input key.
        let small = TokenizeStage
            .normalize(&table(
                "domains = { web = { path = \"web.jsonl\" }, code = { path = \"code\" } }\n\
             tokenizer = { train = { vocab_size = 300 } }\nseq_len = 100000",
            ))
            .unwrap();
        let fresh = StageRun {
            out_dir: root.path().join("out2"),
            ..run
        };
        match fresh.run(&TokenizeStage, &small) {
            Err(StageError::Input { key, message }) => {
                assert_eq!(key, "domains.web");
                assert!(message.contains("fewer than one sequence"), "{message}");
            }
            other => panic!("expected an input error, got {other:?}"),
        }
    }
}
