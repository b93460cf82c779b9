//! [`LlamaScorer`]: log-likelihoods of continuations under a burn [`Llama`], as lm-eval computes them.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};

use super::EvalError;
use super::scoring::{ContinuationScore, LogLikelihoodScorer, ScoreRequest};
use crate::model::Llama;
use crate::progress::CancelFlag;

/// Scores requests the way lm-eval's `_loglikelihood_tokens` does: the model input is
/// `(context ++ continuation)[-(max_length + 1):][:-1]`, the score is the sum of log-softmax at the
/// continuation tokens and `is_greedy` says whether each of them is the argmax. Rows are sorted
/// longest first and packed into batches of at most `batch_tokens` padded tokens; right padding
/// cannot change a causal model's earlier positions, so batching does not change the numbers.
pub struct LlamaScorer<'a> {
    model: &'a Llama,
    device: Device,
    max_length: usize,
    batch_tokens: usize,
    vocab_size: usize,
    cancel: Option<CancelFlag>,
    progress: Option<&'a dyn Fn(usize, usize)>,
}

impl<'a> LlamaScorer<'a> {
    /// `max_length`: longest model input (the model's context window); `batch_tokens`: padded tokens
    /// per forward pass.
    pub fn new(model: &'a Llama, device: Device, max_length: usize, batch_tokens: usize) -> Self {
        let vocab_size = model.config().vocab_size;
        LlamaScorer {
            model,
            device,
            max_length: max_length.max(1),
            batch_tokens: batch_tokens.max(1),
            vocab_size,
            cancel: None,
            progress: None,
        }
    }
    /// Stop between batches when `cancel` is set (the scorer then fails with "cancelled").
    pub fn with_cancel(mut self, cancel: CancelFlag) -> Self {
        self.cancel = Some(cancel);
        self
    }
    /// Called with (requests done, requests total) after every batch.
    pub fn with_progress(mut self, progress: &'a dyn Fn(usize, usize)) -> Self {
        self.progress = Some(progress);
        self
    }
}

/// Host copies of model outputs.
fn host_f32(tensor: Tensor<3>) -> Result<Vec<f32>, EvalError> {
    tensor
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .map_err(|error| EvalError::Scorer(format!("reading model output: {error:?}")))
}
fn host_i64(tensor: Tensor<3, Int>) -> Result<Vec<i64>, EvalError> {
    tensor
        .into_data()
        .convert::<i64>()
        .try_to_vec::<i64>()
        .map_err(|error| EvalError::Scorer(format!("reading model output: {error:?}")))
}

impl LogLikelihoodScorer for LlamaScorer<'_> {
    fn score(&mut self, requests: &[ScoreRequest]) -> Result<Vec<ContinuationScore>, EvalError> {
        // (request index, whole sequence left-truncated to max_length + 1, continuation tokens within it)
        let mut rows: Vec<(usize, Vec<u32>, usize)> = Vec::with_capacity(requests.len());
        for (index, request) in requests.iter().enumerate() {
            let mut whole: Vec<u32> = request
                .context
                .iter()
                .chain(&request.continuation)
                .copied()
                .collect();
            if whole.len() < 2 || request.continuation.is_empty() {
                return Err(EvalError::Scorer(format!(
                    "request {index} needs a context token and a continuation token"
                )));
            }
            if let Some(token) = whole
                .iter()
                .find(|&&token| token as usize >= self.vocab_size)
            {
                return Err(EvalError::Tokenizer(format!(
                    "token id {token} is outside the model's vocabulary of {}: the tokenizer does not belong to this model",
                    self.vocab_size
                )));
            }
            if whole.len() > self.max_length + 1 {
                whole.drain(..whole.len() - (self.max_length + 1));
            }
            let continuation = request.continuation.len().min(whole.len() - 1);
            rows.push((index, whole, continuation));
        }
        rows.sort_by_key(|(index, whole, _)| (std::cmp::Reverse(whole.len()), *index));

        let mut scores = vec![
            ContinuationScore {
                log_likelihood: 0.0,
                is_greedy: false
            };
            requests.len()
        ];
        let mut start = 0;
        while start < rows.len() {
            if self.cancel.as_ref().is_some_and(CancelFlag::is_cancelled) {
                return Err(EvalError::Scorer("cancelled".into()));
            }
            let length = rows[start].1.len() - 1; // the longest input of this batch; the rest are right-padded
            let batch = (self.batch_tokens / length).clamp(1, rows.len() - start);
            let chunk = &rows[start..start + batch];
            let mut inputs = vec![0i64; batch * length];
            let mut targets = vec![0i64; batch * length];
            for (row, (_, whole, _)) in chunk.iter().enumerate() {
                for (position, pair) in whole.windows(2).enumerate() {
                    inputs[row * length + position] = i64::from(pair[0]);
                    targets[row * length + position] = i64::from(pair[1]);
                }
            }
            let inputs =
                Tensor::<2, Int>::from_data(TensorData::new(inputs, [batch, length]), &self.device); // [batch, seq]
            let targets_tensor = Tensor::<2, Int>::from_data(
                TensorData::new(targets.clone(), [batch, length]),
                &self.device,
            ); // [batch, seq]
            let log_probs = log_softmax(self.model.forward(inputs, None), 2); // [batch, seq, vocab]
            let greedy = host_i64(log_probs.clone().argmax(2))?; // [batch, seq, 1]
            let picked = host_f32(log_probs.gather(2, targets_tensor.unsqueeze_dim::<3>(2)))?; // [batch, seq, 1]
            for (row, (index, whole, continuation)) in chunk.iter().enumerate() {
                let end = row * length + whole.len() - 1; // one past the last real position of this row
                let positions = end - continuation..end;
                let log_likelihood = picked[positions.clone()]
                    .iter()
                    .map(|&p| f64::from(p))
                    .sum();
                let is_greedy = positions.into_iter().all(|p| greedy[p] == targets[p]);
                scores[*index] = ContinuationScore {
                    log_likelihood,
                    is_greedy,
                };
            }
            start += batch;
            if let Some(progress) = self.progress {
                progress(start, rows.len());
            }
        }
        Ok(scores)
    }
}
