//! [`LlamaGreedy`]: the next greedy token of a burn [`Llama`].
//!
//! There is no key/value cache: every step runs the whole sequence through
//! [`Llama::forward`] and reads the last position, so a continuation of `g` tokens after a context of
//! `c` costs about `g` forward passes of `c + g` tokens. For NQ-open (answers of a few tokens, stopped
//! at the first newline, period or comma) that is a small multiple of one scoring pass; a cache would
//! have to live inside the model's attention and is left for later.

use burn::tensor::{Device, Int, Tensor, TensorData};

use super::EvalError;
use super::generate::NextToken;
use crate::model::Llama;
use crate::progress::CancelFlag;

pub struct LlamaGreedy<'a> {
    model: &'a Llama,
    device: Device,
    vocab_size: usize,
    cancel: Option<CancelFlag>,
}

impl<'a> LlamaGreedy<'a> {
    pub fn new(model: &'a Llama, device: Device) -> Self {
        LlamaGreedy {
            vocab_size: model.config().vocab_size,
            model,
            device,
            cancel: None,
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
        let length = tokens.len();
        let input: Vec<i64> = tokens.iter().map(|&t| i64::from(t)).collect();
        let input = Tensor::<2, Int>::from_data(TensorData::new(input, [1, length]), &self.device); // [1, seq]
        let logits = self.model.forward(input, None); // [1, seq, vocab]
        let last = logits.narrow(1, length - 1, 1); // [1, 1, vocab]
        let best = last
            .argmax(2)
            .into_data()
            .convert::<i64>()
            .try_to_vec::<i64>()
            .map_err(|error| EvalError::Scorer(format!("reading model output: {error:?}")))?;
        Ok(best[0] as u32)
    }
}
