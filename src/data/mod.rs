//! Everything between raw text and a batch of token ids.
//!
//! - [`shard`]: the on-disk token stream format (raw little-endian `u16`/`u32`, memory-mapped).
//! - [`manifest`]: `manifest.json`, the description of a `tokenize` stage output.
//! - [`dataset`]: [`TokenizedDataset`], an opened `tokenize` output folder.
//! - [`mixture`]: [`DomainMixture`], the seeded per-sequence domain sampler used by `prune` and `train`
//!   (dynamic batch loading changes its weights between batches).
//! - [`eval`]: [`eval_windows`], fixed per-domain evaluation sequences.
//! - [`loading`]: loading policies (static, uniform, Sheared LLaMA's dynamic batch loading) and reference losses.
//! - [`source`]: reading documents (JSONL / `.txt`, plain or `.gz` / `.zst`) from files, folders and globs.
//! - [`tokenize`]: the streaming, parallel encode pipeline behind the `tokenize` stage.
//! - [`tokenizer`]: loading a `tokenizer.json`, or training a byte-level BPE.
//! - [`special`]: finding BOS/EOS in any HF `tokenizer.json`.
//!
//! Why not reuse the reference's MDS files: they store one fixed-length row per sample and the sampler's resume
//! state is a growing list of used ids. A flat token stream per domain plus a (cursor, epoch, RNG position) state
//! per domain keeps both the files and the resume state small, and lets `seq_len` change without re-tokenizing.

pub mod dataset;
pub mod eval;
pub mod loading;
pub mod manifest;
pub mod mixture;
pub mod shard;
pub mod source;
pub mod special;
pub mod tokenize;
pub mod tokenizer;

use std::path::PathBuf;

pub use dataset::TokenizedDataset;
pub use eval::{EvalWindows, eval_windows};
pub use manifest::{DomainManifest, Manifest};
pub use mixture::{
    Batch, CONSUMED_WINDOWS_FILE, ConsumedWindows, DomainMixture, Exhaustion, SamplerState,
};
pub use shard::{Shard, ShardWriter, TokenDtype};

/// Errors of the data layer. Each names the file, line, domain or key involved and, where it helps, what to do.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A config value (tokenize stage key or sampler argument) is invalid.
    #[error("`{key}`: {message}")]
    Config { key: String, message: String },
    /// `manifest.json` is missing, unreadable or inconsistent with the shards next to it.
    #[error("{path}: {message}")]
    Manifest { path: PathBuf, message: String },
    /// A shard's byte length does not fit its dtype, or a token id is out of range.
    #[error("{path}: {message}")]
    Shard { path: PathBuf, message: String },
    #[error(
        "{path}:{line}: not valid UTF-8 (first bad byte at byte {byte_offset} of the line); fix the file or set \
         `invalid_utf8 = \"replace\"` to replace bad bytes with U+FFFD and count them"
    )]
    InvalidUtf8 {
        path: PathBuf,
        line: u64,
        byte_offset: usize,
    },
    #[error("{path}:{line}: {message}")]
    BadJsonLine {
        path: PathBuf,
        line: u64,
        message: String,
    },
    /// A domain source matched no files, or its files hold no documents.
    #[error("domain `{domain}`: {message}")]
    EmptyDomain { domain: String, message: String },
    #[error(
        "domain `{domain}`: its {split} split has {tokens} tokens, fewer than one sequence of seq_len + 1 = {needed}; \
         add text to the domain, lower `seq_len`{hint}"
    )]
    TooFewTokens {
        domain: String,
        split: String,
        tokens: u64,
        needed: u64,
        hint: String,
    },
    #[error("tokenizer {path}: {message}")]
    Tokenizer { path: PathBuf, message: String },
    /// BOS/EOS could not be found, or an override names a token the vocabulary lacks.
    #[error("`{key}`: {message}")]
    SpecialToken { key: String, message: String },
    #[error(
        "vocabulary of {vocab_size} tokens does not fit in u32 token ids; use a tokenizer with at most 2^32 tokens"
    )]
    VocabTooLarge { vocab_size: u64 },
    #[error("unknown domain `{name}`; the dataset has {known}{suggestion}")]
    UnknownDomain {
        name: String,
        known: String,
        suggestion: String,
    },
    #[error("invalid mixture weights: {message}")]
    InvalidWeights { message: String },
    #[error(
        "domain `{domain}` ran out after {tokens_used} tokens ({windows} windows of {window_tokens} tokens, epoch \
         {epoch}) with exhaustion = \"error\"; add data to the domain, lower its weight or the number of steps, or \
         set exhaustion = \"wrap\" to start a reshuffled new epoch"
    )]
    DomainExhausted {
        domain: String,
        tokens_used: u64,
        windows: u64,
        window_tokens: u64,
        epoch: u64,
    },
    /// A saved sampler state does not belong to this dataset / sequence length.
    #[error("sampler state does not match: {message}")]
    StateMismatch { message: String },
    #[error("cancelled")]
    Cancelled,
}

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            source,
        }
    }
    pub(crate) fn config(key: impl Into<String>, message: impl Into<String>) -> Self {
        DataError::Config {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// "; did you mean `x`?" for the closest of `known` to `name`, or nothing when none is close: within a third of
/// its length in edits (transpositions count once), or a near-identical prefix for long names.
pub(crate) fn did_you_mean<'a>(name: &str, known: impl IntoIterator<Item = &'a str>) -> String {
    known
        .into_iter()
        .filter(|candidate| {
            strsim::damerau_levenshtein(name, candidate) <= (candidate.chars().count() / 3).max(1)
                || strsim::jaro_winkler(name, candidate) > 0.9
        })
        .min_by_key(|candidate| strsim::damerau_levenshtein(name, candidate))
        .map(|candidate| format!("; did you mean `{candidate}`?"))
        .unwrap_or_default()
}
