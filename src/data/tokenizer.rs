//! The tokenizer of a `tokenize` stage: a Hugging Face `tokenizer.json` loaded from a file, or a
//! byte-level BPE trained on a corpus. The encode pipeline that uses it is [`super::tokenize`].

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use super::DataError;

/// Byte-level BPE training settings (`tokenizer = { train = { .. } }`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainTokenizer {
    pub vocab_size: usize,
    #[serde(default = "default_min_frequency")]
    pub min_frequency: u64,
    /// Text of each domain's train split fed to the trainer, at most (bytes); the rest is only encoded.
    #[serde(default = "default_training_bytes")]
    pub max_bytes_per_domain: u64,
}
fn default_min_frequency() -> u64 {
    2
}
fn default_training_bytes() -> u64 {
    100_000_000
}

#[derive(Debug, Clone)]
pub enum TokenizerSource {
    File(PathBuf),
    Train(TrainTokenizer),
}

pub(super) fn load_tokenizer(path: &Path) -> Result<(Tokenizer, Vec<u8>), DataError> {
    let bytes = std::fs::read(path).map_err(|error| DataError::Tokenizer {
        path: path.to_path_buf(),
        message: format!("cannot be read: {error}"),
    })?;
    let tokenizer = Tokenizer::from_bytes(&bytes).map_err(|error| DataError::Tokenizer {
        path: path.to_path_buf(),
        message: format!("does not parse as a Hugging Face tokenizer.json: {error}"),
    })?;
    Ok((tokenizer, bytes))
}

/// Trains a GPT-2 style byte-level BPE (no unknown tokens, exact round trip) with `<s>`/`</s>` specials and a
/// LLaMA-like `<s> $A` post-processor on `corpus`. Returns the tokenizer and its `tokenizer.json` bytes.
pub(super) fn train_bpe(
    settings: &TrainTokenizer,
    corpus: impl Iterator<Item = String> + Send,
) -> Result<(Tokenizer, Vec<u8>), DataError> {
    use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    use tokenizers::processors::template::TemplateProcessing;
    use tokenizers::{
        AddedToken, DecoderWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper,
    };

    let trained_path = PathBuf::from("<trained tokenizer>");
    let fail = |message: String| DataError::Tokenizer {
        path: trained_path.clone(),
        message,
    };
    let mut trainer = BpeTrainerBuilder::new()
        .show_progress(false)
        .vocab_size(settings.vocab_size)
        .min_frequency(settings.min_frequency)
        .special_tokens(vec![
            AddedToken::from("<s>", true),
            AddedToken::from("</s>", true),
        ])
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    let mut tokenizer = tokenizers::TokenizerBuilder::<
        BPE,
        NormalizerWrapper,
        PreTokenizerWrapper,
        PostProcessorWrapper,
        DecoderWrapper,
    >::new()
    .with_model(BPE::default())
    .with_pre_tokenizer(Some(ByteLevel::new(false, true, true).into()))
    .with_decoder(Some(ByteLevel::new(false, true, true).into()))
    .build()
    .map_err(|error| fail(error.to_string()))?;

    tokenizer
        .train(&mut trainer, corpus)
        .map_err(|error| fail(error.to_string()))?;
    let bos_id = tokenizer
        .token_to_id("<s>")
        .ok_or_else(|| fail("the trainer dropped <s>".into()))?;
    let template = TemplateProcessing::builder()
        .try_single("<s> $A")
        .and_then(|builder| builder.try_pair("<s>:0 $A:0 <s>:1 $B:1"))
        .map_err(|error| fail(error.to_string()))?
        .special_tokens(vec![("<s>", bos_id)])
        .build()
        .map_err(|error| fail(error.to_string()))?;
    tokenizer.with_post_processor(Some(template));
    let json = tokenizer
        .to_string(true)
        .map_err(|error| fail(error.to_string()))?;
    let loaded = Tokenizer::from_bytes(json.as_bytes()).map_err(|error| fail(error.to_string()))?;
    Ok((loaded, json.into_bytes()))
}
