//! [`StageMetrics`]: the typed reading of the `metrics.json` a stage writes into its output folder.
//!
//! Writers keep writing plain JSON (the bytes are part of the output's digest, and so of every
//! downstream cache key); readers go through this type so that the keys other code depends on are
//! named in one place instead of being indexed ad hoc in each reader.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Number, Value};

/// The file name every stage writes its final numbers to.
pub const METRICS_FILE: &str = "metrics.json";

/// A `metrics.json` that could not be read. Both variants name the file, so that a message about a
/// reference stage's or upstream stage's metrics says which folder to look at.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("reading {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not a JSON object of metrics: {source}", path.display())]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// The final numbers of one stage run, as written to `<out_dir>/metrics.json`. This is the contract
/// the [`Stage`](super::Stage) doc refers to: the typed fields are the keys code outside the writing
/// stage reads; every other key is kept, untouched, in [`extra`](Self::extra) (shown by
/// `sheared compare`'s raw views and by `sheared status`, depended on by no code).
///
/// **Who writes what** (today's writers; a `command` stage writes whatever its command writes):
/// - `tokenize`: `tokens`, `seconds`, `tokens_per_s`, and `domains` as a *list* of
///   `{name, train_tokens, eval_tokens, train_documents, eval_documents}` (not the per-name object
///   below, so it stays in `extra`).
/// - `convert`: the conversion summary: `config`, `tensors`, `parameters` (a number), `tensor_types`,
///   `tokenizer_skipped`.
/// - `consolidate`: `method`, the shape (`layers`, `hidden`, `heads`, `kv_heads`, `intermediate`,
///   `head_dim`), `parameters` (a number), `non_embedding_parameters`.
/// - `train`: `steps`, `tokens`, `final_loss`, `eval_loss_mean`,
///   `domains.<name>.{weight, tokens_seen, loss, reference_loss}` (`loss`: the final eval loss, when
///   there was an eval), `skipped_batches`, `resumed_from_step`, `parameters` (a number),
///   `non_embedding_parameters`, `tokens_per_s`, `outside_model_fraction`, `timing`.
/// - `prune`: `l0` writes no `metrics.json` (its numbers are in `metrics.jsonl`); the baselines
///   (`magnitude`, `random`) write `method`, `steps` = 0 and `tokens` = 0.
/// - `eval`: `domains.<name>.{loss, perplexity, stderr, sequences, tokens}`,
///   `tasks.<name>.{n, acc, acc_stderr, acc_norm, acc_norm_stderr, ...}` (multiple choice),
///   `tasks.<name>.{n, acc, acc_stderr, perplexity, ...}` (completions, LAMBADA) or
///   `tasks.<name>.{n, exact_match, exact_match_stderr, ...}` (generation),
///   `parameters.{total, non_embedding, embedding}`, `tokens_upstream`, `tokens_upstream_from`,
///   `eval`, `wall_seconds`, `device`.
///
/// **Who reads what.**
/// - [`tokens`](Self::tokens) (`tokens`, else `tokens_seen`, `train_tokens`, `tokens_total`): the
///   `eval` stage (what the model it scores was trained on, `tokens_upstream`) and `sheared compare`
///   (tokens of train/prune stages).
/// - `domains.<name>.loss`: dynamic batch loading's reference losses from `{ stage = .. }`, and
///   `sheared compare` (eval-like stages).
/// - `tasks.<name>.{acc, acc_norm, exact_match, perplexity}`, `parameters.{total, non_embedding}`, `tokens_upstream`:
///   `sheared compare` (eval-like stages).
///
/// Reading is lenient by design: a known key whose value has another shape than the one above (a
/// `null` from a NaN, tokenize's `domains` list, a command's own format) is not an error but stays
/// in `extra` as it was, because one odd stage must not hide the metrics of a whole comparison. So
/// the derived `Deserialize` (which would fail on the first odd value) is replaced by one that
/// takes each known key only when it fits.
///
/// Counts (`tokens`, `parameters`, `n`, ...) are kept as JSON [`Number`]s, rates and losses as
/// `f64`: a count written as `1234` then reads back as `1234`, not `1234.0`.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct StageMetrics {
    /// Tokens the stage processed (trained on, tokenized).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens: Option<Number>,
    /// Other spellings of [`tokens`](Self::tokens) that `command` stages use; see [`Self::tokens`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens_seen: Option<Number>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub train_tokens: Option<Number>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens_total: Option<Number>,
    /// What an `eval` stage found its model was trained on (sum over `tokens_from`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens_upstream: Option<Number>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens_per_s: Option<f64>,
    /// A count (train, consolidate, convert) or the eval stage's split counts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Parameters>,
    /// Written next to a `parameters` count (train, consolidate).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub non_embedding_parameters: Option<Number>,
    /// Per-domain numbers by domain name. `Some(empty)` (an eval without data) differs from `None`:
    /// `sheared compare` treats a `command` stage with a `domains` object as an evaluation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domains: Option<BTreeMap<String, DomainMetrics>>,
    /// Per-task scores by task name (eval, or lm-eval-harness through a `command` stage).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tasks: Option<BTreeMap<String, TaskMetrics>>,
    /// Every other key, as written.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `parameters`: train, consolidate and convert write the total as a number; eval writes the split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Parameters {
    Count(Number),
    Counts(ParameterCounts),
}

/// The eval stage's `parameters` object. Counts are kept as the JSON numbers they were written as
/// (integers), so that a read-and-write round trip gives back the same file; readers use
/// [`total`](Self::total) and [`non_embedding`](Self::non_embedding).
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct ParameterCounts {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total: Option<Number>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub non_embedding: Option<Number>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub embedding: Option<Number>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One entry of `domains`.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct DomainMetrics {
    /// Mean next-token eval loss on the domain (eval; train when it evaluated).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One entry of `tasks`: multiple-choice accuracies or a generation task's exact match.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct TaskMetrics {
    /// Questions scored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n: Option<Number>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acc: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acc_stderr: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acc_norm: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acc_norm_stderr: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exact_match: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exact_match_stderr: Option<f64>,
    /// A completion task's (LAMBADA's) perplexity over items.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub perplexity: Option<f64>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl StageMetrics {
    /// The `metrics.json` of an output folder, or `path` itself when it names a file (inputs may be
    /// `{ stage = .. }` folders or `{ path = "…/metrics.json" }` files).
    pub fn file_in(path: &Path) -> PathBuf {
        if path.is_dir() {
            path.join(METRICS_FILE)
        } else {
            path.to_path_buf()
        }
    }

    /// Reads and types the `metrics.json` at `path` (a file; see [`Self::file_in`]).
    pub fn read(path: &Path) -> Result<Self, MetricsError> {
        let text = std::fs::read_to_string(path).map_err(|source| MetricsError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| MetricsError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Types metrics already parsed (the store records them as JSON); `None` when not an object.
    pub fn from_value(value: &Value) -> Option<Self> {
        Self::deserialize(value).ok()
    }

    /// Tokens the stage reports: `tokens`, else `tokens_seen`, `train_tokens`, `tokens_total` (the
    /// spellings `command` stages use). An eval stage's `tokens_upstream` is not among them: it is
    /// what the *model* saw, not what the stage processed.
    pub fn tokens(&self) -> Option<f64> {
        [
            &self.tokens,
            &self.tokens_seen,
            &self.train_tokens,
            &self.tokens_total,
        ]
        .into_iter()
        .find_map(|count| count.as_ref().and_then(Number::as_f64))
    }

    /// `tokens_upstream` (eval) as a number.
    pub fn tokens_upstream(&self) -> Option<f64> {
        self.tokens_upstream.as_ref().and_then(Number::as_f64)
    }

    /// `domains.<domain>.loss`.
    pub fn domain_loss(&self, domain: &str) -> Option<f64> {
        self.domains.as_ref()?.get(domain)?.loss
    }

    /// The eval stage's `parameters.total` and `parameters.non_embedding` (a bare count has no split,
    /// and comparing it with an eval's count of another model would mislead).
    pub fn parameter_counts(&self) -> Option<&ParameterCounts> {
        match self.parameters.as_ref()? {
            Parameters::Counts(counts) => Some(counts),
            Parameters::Count(_) => None,
        }
    }
}

impl ParameterCounts {
    pub fn total(&self) -> Option<f64> {
        self.total.as_ref().and_then(Number::as_f64)
    }
    pub fn non_embedding(&self) -> Option<f64> {
        self.non_embedding.as_ref().and_then(Number::as_f64)
    }
}

/// The keys of one JSON object, taken out one by one as the typed fields claim them.
struct Fields(Map<String, Value>);

impl Fields {
    /// The value at `key` as a `T`, removed from the rest; `None` (and left in place) when absent or
    /// of another shape. `shift_remove` keeps the remaining keys in their written order.
    fn take<T: DeserializeOwned>(&mut self, key: &str) -> Option<T> {
        let typed = T::deserialize(self.0.get(key)?).ok()?;
        self.0.shift_remove(key);
        Some(typed)
    }

    fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Map::deserialize(deserializer).map(Fields)
    }
}

impl<'de> Deserialize<'de> for StageMetrics {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut fields = Fields::deserialize(deserializer)?;
        Ok(StageMetrics {
            tokens: fields.take("tokens"),
            tokens_seen: fields.take("tokens_seen"),
            train_tokens: fields.take("train_tokens"),
            tokens_total: fields.take("tokens_total"),
            tokens_upstream: fields.take("tokens_upstream"),
            seconds: fields.take("seconds"),
            tokens_per_s: fields.take("tokens_per_s"),
            parameters: fields.take("parameters"),
            non_embedding_parameters: fields.take("non_embedding_parameters"),
            domains: fields.take("domains"),
            tasks: fields.take("tasks"),
            extra: fields.0,
        })
    }
}

impl<'de> Deserialize<'de> for ParameterCounts {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut fields = Fields::deserialize(deserializer)?;
        Ok(ParameterCounts {
            total: fields.take("total"),
            non_embedding: fields.take("non_embedding"),
            embedding: fields.take("embedding"),
            extra: fields.0,
        })
    }
}

impl<'de> Deserialize<'de> for DomainMetrics {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut fields = Fields::deserialize(deserializer)?;
        Ok(DomainMetrics {
            loss: fields.take("loss"),
            extra: fields.0,
        })
    }
}

impl<'de> Deserialize<'de> for TaskMetrics {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut fields = Fields::deserialize(deserializer)?;
        Ok(TaskMetrics {
            n: fields.take("n"),
            acc: fields.take("acc"),
            acc_stderr: fields.take("acc_stderr"),
            acc_norm: fields.take("acc_norm"),
            acc_norm_stderr: fields.take("acc_norm_stderr"),
            exact_match: fields.take("exact_match"),
            exact_match_stderr: fields.take("exact_match_stderr"),
            perplexity: fields.take("perplexity"),
            extra: fields.0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the eval stage writes (its `json!` in `stages::eval`, values from a tiny-model run):
    /// a scored and a generated task, a `null` stderr, and keys no reader types.
    const EVAL: &str = r#"{
  "domains": {
    "web": {"loss": 6.93, "perplexity": 1022.3, "stderr": 0.012, "sequences": 4, "tokens": 64},
    "code": {"loss": 6.95, "perplexity": 1043.1, "stderr": null, "sequences": 3, "tokens": 48}
  },
  "tasks": {
    "arc": {"n": 2, "acc": 0.5, "acc_stderr": 0.5, "acc_norm": 0.0, "acc_norm_stderr": 0.0, "requests": 8,
            "questions_in_file": 3, "task": "arc_easy", "num_fewshot": 0, "limit": 2, "split": "test"},
    "squad": {"n": 3, "exact_match": 0.0, "exact_match_stderr": null, "max_gen_toks": 32}
  },
  "parameters": {"total": 99584, "non_embedding": 50432, "embedding": 49152},
  "tokens_upstream": 1234.0,
  "tokens_upstream_from": ["tokens_from.train"],
  "eval": {"seq_len": 16, "sequences_per_domain": 4},
  "wall_seconds": 0.8,
  "device": "cpu"
}"#;

    /// What the train stage writes (its `json!` in `stages::train`): `parameters` a bare count,
    /// per-domain weights and final eval losses, `null` rates.
    const TRAIN: &str = r#"{
  "steps": 6,
  "tokens": 1536,
  "final_loss": 6.9,
  "eval_loss_mean": 6.91,
  "domains": {
    "web": {"weight": 0.5, "tokens_seen": 768, "loss": 6.9, "reference_loss": 6.5},
    "code": {"weight": 0.5, "tokens_seen": 768, "loss": 6.92, "reference_loss": 6.6}
  },
  "skipped_batches": 0,
  "resumed_from_step": null,
  "parameters": 99584,
  "non_embedding_parameters": 50432,
  "tokens_per_s": null,
  "outside_model_fraction": 0.1,
  "timing": {"steps": 6, "steps_s": 0.0}
}"#;

    fn round_trip(text: &str) -> StageMetrics {
        let written: Value = serde_json::from_str(text).unwrap();
        let typed: StageMetrics = serde_json::from_str(text).unwrap();
        assert_eq!(serde_json::to_value(&typed).unwrap(), written);
        typed
    }

    #[test]
    fn an_eval_metrics_json_round_trips_with_its_typed_keys() {
        let metrics = round_trip(EVAL);
        assert_eq!(metrics.domain_loss("web"), Some(6.93));
        assert_eq!(metrics.domain_loss("code"), Some(6.95));
        assert_eq!(metrics.domain_loss("wiki"), None);
        // A null stderr is not a number: it stays with the domain's other keys.
        let code = &metrics.domains.as_ref().unwrap()["code"];
        assert_eq!(code.extra["stderr"], Value::Null);
        let tasks = metrics.tasks.as_ref().unwrap();
        assert_eq!(tasks["arc"].acc, Some(0.5));
        assert_eq!(tasks["arc"].acc_norm, Some(0.0));
        assert_eq!(tasks["arc"].n, Some(2.into()));
        assert_eq!(tasks["arc"].extra["task"], "arc_easy");
        assert_eq!(tasks["squad"].exact_match, Some(0.0));
        assert_eq!(tasks["squad"].acc, None);
        let counts = metrics.parameter_counts().unwrap();
        assert_eq!(counts.total(), Some(99584.0));
        assert_eq!(counts.non_embedding(), Some(50432.0));
        assert_eq!(metrics.tokens_upstream(), Some(1234.0));
        // What the model saw upstream is not what the eval stage processed.
        assert_eq!(metrics.tokens(), None);
        assert_eq!(metrics.extra["device"], "cpu");
    }

    #[test]
    fn a_train_metrics_json_round_trips_with_its_typed_keys() {
        let metrics = round_trip(TRAIN);
        assert_eq!(metrics.tokens(), Some(1536.0));
        assert_eq!(metrics.tokens, Some(1536.into()));
        assert_eq!(metrics.domain_loss("code"), Some(6.92));
        assert_eq!(metrics.parameters, Some(Parameters::Count(99584.into())));
        // A bare count has no split to compare with an eval's.
        assert!(metrics.parameter_counts().is_none());
        assert_eq!(metrics.non_embedding_parameters, Some(50432.into()));
        assert_eq!(metrics.tokens_per_s, None);
        assert_eq!(metrics.extra["tokens_per_s"], Value::Null);
        assert_eq!(metrics.extra["steps"], 6);
    }

    #[test]
    fn keys_of_another_shape_are_kept_untyped_and_in_order() {
        // tokenize writes `domains` as a list; a command stage may spell tokens differently.
        let text = r#"{"zeta": 1, "domains": [{"name": "web", "train_tokens": 10}], "tokens_seen": 7,
                       "alpha": {"nested": true}, "tokens": "many"}"#;
        let metrics = round_trip(text);
        assert!(metrics.domains.is_none());
        assert_eq!(metrics.tokens, None);
        assert_eq!(metrics.tokens(), Some(7.0));
        let kept: Vec<&str> = metrics.extra.keys().map(String::as_str).collect();
        assert_eq!(kept, ["zeta", "domains", "alpha", "tokens"]);
        assert_eq!(
            serde_json::to_value(&metrics).unwrap()["alpha"]["nested"],
            true
        );
    }

    #[test]
    fn read_names_the_file_it_could_not_use() {
        let dir = tempfile::tempdir().unwrap();
        let file = StageMetrics::file_in(dir.path());
        assert_eq!(file, dir.path().join(METRICS_FILE));

        let missing = StageMetrics::read(&file).unwrap_err();
        assert!(matches!(missing, MetricsError::Read { .. }), "{missing:?}");
        assert!(missing.to_string().contains(&file.display().to_string()));

        for text in ["{not json", "[1, 2]"] {
            std::fs::write(&file, text).unwrap();
            let error = StageMetrics::read(&file).unwrap_err();
            assert!(matches!(error, MetricsError::Parse { .. }), "{error:?}");
            assert!(
                error.to_string().contains(&file.display().to_string()),
                "{error}"
            );
        }

        std::fs::write(&file, TRAIN).unwrap();
        assert_eq!(StageMetrics::file_in(&file), file);
        assert_eq!(StageMetrics::read(&file).unwrap().tokens(), Some(1536.0));
    }
}
