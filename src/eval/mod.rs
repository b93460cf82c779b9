//! Evaluation: per-domain language-model loss and multiple-choice tasks scored by log-likelihood.
//!
//! Task scores follow lm-evaluation-harness exactly so that a number printed by sheared means what the
//! same number means in a paper:
//!
//! - every answer choice is a (context, continuation) *request*; the model's score for it is the summed
//!   log-probability of the continuation tokens given the context ([`encode_pair`] splits the text into
//!   tokens the way lm-eval's `_encode_pair` does, moving trailing context spaces into the continuation);
//! - `acc` picks the choice with the highest summed log-likelihood; `acc_norm` divides each summed
//!   log-likelihood by the length of the choice *in characters* (lm-eval's `completion_len`: the choice
//!   text without the `target_delimiter`, a single leading space) and picks the highest;
//! - `acc_stderr` is lm-eval's `mean_stderr`: sample standard deviation (n − 1) over √n, which for a
//!   0/1 metric is √(p(1−p)/(n−1)).
//!
//! [`tasks`] reads ready-made request files, [`builtin`] builds lm-eval's tasks from the Hugging Face
//! datasets themselves (templates in [`templates`], few-shot sampling in [`fewshot`] with Python's
//! generator in [`py_random`], prompt assembly in [`prompt`]), [`user_tasks`] reads tasks a user brings
//! (MMLU, LogiQA) as JSONL, [`scoring`] computes the metrics over any [`LogLikelihoodScorer`],
//! [`generate`] runs greedy generation tasks (NQ-open) scored by [`exact_match`], and [`domains`]
//! aggregates per-window losses into per-domain loss / perplexity with error bars.

pub mod builtin;
pub mod domains;
pub mod exact_match;
pub mod fewshot;
pub mod generate;
pub mod hf_arrow;
pub mod llama_generator;
pub mod llama_scorer;
pub mod prompt;
pub mod py_random;
pub mod scoring;
pub mod tasks;
pub mod templates;
pub mod user_tasks;

pub use builtin::{BUILTIN_TASKS, BuiltinTask, DocsOptions, Splits, builtin_task, load_builtin};
pub use domains::{DomainLoss, domain_loss};
pub use generate::{GenerationQuestion, GenerationResult, GenerationTask, evaluate_generation};
pub use llama_generator::LlamaGreedy;
pub use llama_scorer::LlamaScorer;
pub use prompt::Prompted;
pub use scoring::{
    ContinuationScore, LogLikelihoodScorer, QuestionScore, ScoreRequest, TaskResult, TextEncoder,
    encode_pair, evaluate_task, mean_stderr,
};
pub use tasks::{Choice, Question, Task, TaskFormat, load_task};
pub use templates::Template;
pub use user_tasks::load_user_task;

use std::path::PathBuf;

/// What can go wrong while reading task files or scoring them.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// The task file could not be opened or read.
    #[error("cannot read task file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// One line of a task file is malformed; `line` is 1-based.
    #[error("{path}:{line}: {message}")]
    Line {
        path: PathBuf,
        line: usize,
        message: String,
    },
    /// The file as a whole is inconsistent (missing choices, no questions, ...).
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    /// Tokenising a context or continuation failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The model (or whatever scores requests) failed.
    #[error("scoring: {0}")]
    Scorer(String),
}
