//! [`LlamaGreedy`]: the next greedy token of a burn [`Llama`].
//!
//! Decoding keeps a key/value cache ([`KvCache`]): when the tokens asked about extend the tokens
//! of the previous call (the usual case: the previous tokens plus the token just generated), only
//! the new ones run through the model; otherwise (a new question, or a context left-truncated to
//! fit the window) the cache starts over. A continuation of `g` tokens after a context of `c` so
//! costs one forward pass of `c` tokens and `g − 1` of one token.

use burn::tensor::{Device, Int, Tensor, TensorData};

use super::EvalError;
use super::generate::NextToken;
use crate::model::Llama;
use crate::model::kv_cache::KvCache;
use crate::progress::CancelFlag;

pub struct LlamaGreedy<'a> {
    model: &'a Llama,
    device: Device,
    vocab_size: usize,
    cancel: Option<CancelFlag>,
    /// The tokens whose keys and values `cache` holds.
    cached_tokens: Vec<u32>,
    cache: KvCache,
}

impl<'a> LlamaGreedy<'a> {
    pub fn new(model: &'a Llama, device: Device) -> Self {
        LlamaGreedy {
            vocab_size: model.config().vocab_size,
            model,
            device,
            cancel: None,
            cached_tokens: Vec::new(),
            cache: KvCache::new(),
        }
    }
    /// Fail with "cancelled" at the next step once `cancel` is set.
    pub fn with_cancel(mut self, cancel: CancelFlag) -> Self {
        self.cancel = Some(cancel);
        self
    }
}

impl NextToken for LlamaGreedy<'_> {
    fn next_token(&mut self, tokens: &[u32]) -> Result<u32, EvalError> {
        if self.cancel.as_ref().is_some_and(CancelFlag::is_cancelled) {
            return Err(EvalError::Scorer("cancelled".into()));
        }
        if tokens.is_empty() {
            return Err(EvalError::Scorer(
                "generation needs at least one context token".into(),
            ));
        }
        if let Some(token) = tokens.iter().find(|&&t| t as usize >= self.vocab_size) {
            return Err(EvalError::Tokenizer(format!(
                "token id {token} is outside the model's vocabulary of {}: the tokenizer does not belong to this model",
                self.vocab_size
            )));
        }
        let reuse =
            self.cached_tokens.len() < tokens.len() && tokens.starts_with(&self.cached_tokens);
        if !reuse {
            self.cache = KvCache::new();
            self.cached_tokens.clear();
        }
        let new_tokens = &tokens[self.cached_tokens.len()..];
        let length = new_tokens.len();
        let input: Vec<i64> = new_tokens.iter().map(|&t| i64::from(t)).collect();
        let input = Tensor::<2, Int>::from_data(TensorData::new(input, [1, length]), &self.device); // [1, new]
        let last = self.model.forward_cached_last(input, &mut self.cache); // [1, 1, vocab]
        self.cached_tokens.extend_from_slice(new_tokens);
        let best = last
            .argmax(2)
            .into_data()
            .convert::<i64>()
            .try_to_vec::<i64>()
            .map_err(|error| EvalError::Scorer(format!("reading model output: {error:?}")))?;
        Ok(best[0] as u32)
    }
}
