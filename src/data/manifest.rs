//! `manifest.json`: what a `tokenize` stage output holds, so readers never guess dtypes, special ids or domains.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{DataError, TokenDtype};

/// The format name written into every manifest; readers reject anything else.
pub const FORMAT: &str = "sheared-tokens";
/// Bumped when the layout of the folder or of the shards changes.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    pub format_version: u32,
    /// Width of the ids in every `.bin` file.
    pub dtype: TokenDtype,
    /// Vocabulary size including added tokens; every id is below it.
    pub vocab_size: u64,
    /// blake3 of the `tokenizer.json` bytes next to the manifest.
    pub tokenizer_blake3: String,
    pub bos_token: String,
    pub bos_id: u32,
    pub eos_token: String,
    pub eos_id: u32,
    /// The `seq_len` the stage checked every domain against (readers may use another).
    pub seq_len: u64,
    /// Seed of the train/eval split hash.
    pub seed: u64,
    /// Domains in recipe order; this order defines domain ids.
    pub domains: Vec<DomainManifest>,
}

/// Per-domain counts and where the text came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainManifest {
    pub name: String,
    /// Input files, as found (sorted).
    pub sources: Vec<String>,
    pub train_documents: u64,
    pub eval_documents: u64,
    /// Tokens in `train/<name>.bin` and `eval/<name>.bin` (BOS and EOS included).
    pub train_tokens: u64,
    pub eval_tokens: u64,
    /// Documents skipped because their text was empty.
    pub empty_documents: u64,
    /// Lines (JSONL) or files (`.txt`) whose invalid UTF-8 bytes were replaced by U+FFFD.
    pub invalid_utf8_replaced: u64,
    /// True when `max_tokens_per_domain` cut the train split short.
    pub train_truncated: bool,
    /// Tokens moved from the end of the train stream to the eval split because the document split
    /// (`eval_fraction`) held out less than one sequence (a domain of one or a few long documents).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub eval_from_train_tail_tokens: u64,
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

impl Manifest {
    pub fn load(path: &Path) -> Result<Self, DataError> {
        let text = std::fs::read_to_string(path).map_err(|error| DataError::io(path, error))?;
        let manifest: Manifest =
            serde_json::from_str(&text).map_err(|error| DataError::Manifest {
                path: path.to_path_buf(),
                message: format!("not a tokenize manifest: {error}"),
            })?;
        if manifest.format != FORMAT || manifest.format_version != FORMAT_VERSION {
            return Err(DataError::Manifest {
                path: path.to_path_buf(),
                message: format!(
                    "format {:?} version {} is not {FORMAT:?} version {FORMAT_VERSION}; re-run the tokenize stage",
                    manifest.format, manifest.format_version
                ),
            });
        }
        Ok(manifest)
    }

    pub fn save(&self, path: &Path) -> Result<(), DataError> {
        let text = serde_json::to_string_pretty(self).map_err(|error| DataError::Manifest {
            path: path.to_path_buf(),
            message: error.to_string(),
        })?;
        std::fs::write(path, text + "\n").map_err(|error| DataError::io(path, error))
    }
}
