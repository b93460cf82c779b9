//! [`LlamaScorer`]: log-likelihoods of continuations under a burn [`Llama`], as lm-eval computes them.

use burn::tensor::activation::log_softmax;
use std::collections::HashMap;

use burn::tensor::{Device, Int, Tensor, TensorData};

use super::EvalError;
use super::scoring::{ContinuationScore, LogLikelihoodScorer, ScoreRequest, argmax};
use crate::model::Llama;
use crate::model::kv_cache::KvCache;
use crate::progress::CancelFlag;

/// Scores requests the way lm-eval's `_loglikelihood_tokens` does: the model input is
/// `(context ++ continuation)[-(max_length + 1):][:-1]`, the score is the sum of log-softmax at the
/// continuation tokens and `is_greedy` says whether each of them is the argmax. Rows are sorted
/// longest first and packed into batches of at most `batch_tokens` padded tokens; right padding
/// cannot change a causal model's earlier positions, so batching does not change the numbers.
///
/// Requests that share a context of at least 64 tokens (the answer choices of a few-shot question)
/// run it once and score their continuations on its key/value cache: a 25-shot ARC question costs
/// one pass over its prompt instead of four. (lm-eval shares a context only between one-token
/// continuations, through its logits cache; the numbers are the same up to float rounding.)
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

/// One request ready for the model: the whole sequence left-truncated to `max_length + 1` tokens,
/// of which the last `continuation` are scored.
struct Row {
    index: usize,
    whole: Vec<u32>,
    continuation: usize,
}

impl Row {
    fn context(&self) -> &[u32] {
        &self.whole[..self.whole.len() - self.continuation]
    }
}

/// Contexts at least this long are run once for all the requests that share them (few-shot
/// prompts); shorter ones are packed into batches with everything else, which keeps the
/// matrices of zero-shot tasks large enough to be efficient.
const SHARED_CONTEXT_MIN_TOKENS: usize = 64;

impl LogLikelihoodScorer for LlamaScorer<'_> {
    fn score(&mut self, requests: &[ScoreRequest]) -> Result<Vec<ContinuationScore>, EvalError> {
        let mut rows: Vec<Row> = Vec::with_capacity(requests.len());
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
            rows.push(Row {
                index,
                whole,
                continuation,
            });
        }

        // Requests with the same long context (the choices of one few-shot question) share its forward pass.
        let mut by_context: HashMap<&[u32], Vec<usize>> = HashMap::new();
        for (position, row) in rows.iter().enumerate() {
            by_context.entry(row.context()).or_default().push(position);
        }
        let mut shared: Vec<Vec<usize>> = by_context
            .into_iter()
            .filter(|(context, members)| {
                members.len() > 1 && context.len() >= SHARED_CONTEXT_MIN_TOKENS
            })
            .map(|(_, members)| members)
            .collect();
        shared.sort(); // a fixed order (HashMap's is random): the first member's position
        let in_shared: std::collections::HashSet<usize> =
            shared.iter().flatten().copied().collect();
        let mut packed: Vec<&Row> = (0..rows.len())
            .filter(|position| !in_shared.contains(position))
            .map(|position| &rows[position])
            .collect();
        packed.sort_by_key(|row| (std::cmp::Reverse(row.whole.len()), row.index));

        let mut scores = vec![
            ContinuationScore {
                log_likelihood: 0.0,
                is_greedy: false
            };
            requests.len()
        ];
        let mut done = 0;
        let mut report = |count: usize| {
            done += count;
            if let Some(progress) = self.progress {
                progress(done, rows.len());
            }
        };
        for members in &shared {
            self.check_cancel()?;
            let members: Vec<&Row> = members.iter().map(|&position| &rows[position]).collect();
            for (row, score) in members.iter().zip(self.score_shared(&members)?) {
                scores[row.index] = score;
            }
            report(members.len());
        }
        let mut start = 0;
        while start < packed.len() {
            self.check_cancel()?;
            let length = packed[start].whole.len() - 1; // the longest input of this batch; the rest are right-padded
            let batch = (self.batch_tokens / length).clamp(1, packed.len() - start);
            let chunk = &packed[start..start + batch];
            for (row, score) in chunk.iter().zip(self.score_packed(chunk, length)?) {
                scores[row.index] = score;
            }
            start += batch;
            report(batch);
        }
        Ok(scores)
    }
}

impl LlamaScorer<'_> {
    fn check_cancel(&self) -> Result<(), EvalError> {
        if self.cancel.as_ref().is_some_and(CancelFlag::is_cancelled) {
            return Err(EvalError::Scorer("cancelled".into()));
        }
        Ok(())
    }

    /// One forward pass over `chunk`, right-padded to `length` input tokens. The LM head and the
    /// log-softmax run only at the last `scored` positions of each row (the longest continuation
    /// of the chunk): a zero-shot question's continuation is a few tokens of a prompt of dozens, and
    /// the head's `vocab`-wide rows are the costliest part of a position for a small model.
    fn score_packed(
        &self,
        chunk: &[&Row],
        length: usize,
    ) -> Result<Vec<ContinuationScore>, EvalError> {
        let batch = chunk.len();
        let scored = chunk.iter().map(|row| row.continuation).max().unwrap_or(1);
        let mut inputs = vec![0i64; batch * length];
        let mut targets = vec![0i64; batch * scored];
        let mut positions = vec![0i64; batch * scored];
        for (row, request) in chunk.iter().enumerate() {
            for (position, &token) in request.whole[..request.whole.len() - 1].iter().enumerate() {
                inputs[row * length + position] = i64::from(token);
            }
            // Input position p predicts whole[p + 1]; the row's last input position is whole.len() - 2.
            let end = request.whole.len() - 1; // one past the row's last input position
            for slot in 0..scored {
                let position = (end + slot).saturating_sub(scored); // earlier slots may repeat position 0
                positions[row * scored + slot] = position as i64;
                targets[row * scored + slot] = i64::from(request.whole[position + 1]);
            }
        }
        let inputs =
            Tensor::<2, Int>::from_data(TensorData::new(inputs, [batch, length]), &self.device); // [batch, seq]
        let hidden = self.model.hidden_states(inputs); // [batch, seq, hidden]
        let width = hidden.dims()[2];
        let index =
            Tensor::<2, Int>::from_data(TensorData::new(positions, [batch, scored]), &self.device)
                .unsqueeze_dim::<3>(2)
                .expand([batch, scored, width]); // [batch, scored, hidden]
        let last = hidden.gather(1, index); // [batch, scored, hidden]
        let log_probs = log_softmax(self.model.logits(last), 2); // [batch, scored, vocab]
        let (picked, greedy) = pick(log_probs, &targets, [batch, scored], &self.device)?;
        Ok(chunk
            .iter()
            .enumerate()
            .map(|(row, request)| {
                let end = (row + 1) * scored; // the row's slots end with its last input position
                let positions = end - request.continuation..end;
                ContinuationScore {
                    log_likelihood: picked[positions.clone()]
                        .iter()
                        .map(|&p| f64::from(p))
                        .sum(),
                    is_greedy: positions.into_iter().all(|p| greedy[p] == targets[p]),
                }
            })
            .collect())
    }

    /// Requests with one context: the context runs once (its last position predicts every
    /// continuation's first token), then the continuations' remaining tokens run as one batch on
    /// copies of its key/value cache. Equal to scoring each request alone up to float rounding.
    fn score_shared(&self, members: &[&Row]) -> Result<Vec<ContinuationScore>, EvalError> {
        let context = members[0].context();
        let ids = |tokens: Vec<i64>, shape: [usize; 2]| {
            Tensor::<2, Int>::from_data(TensorData::new(tokens, shape), &self.device)
        };
        let mut cache = KvCache::new();
        let context_ids = context.iter().map(|&t| i64::from(t)).collect();
        let last = self
            .model
            .forward_cached_last(ids(context_ids, [1, context.len()]), &mut cache); // [1, 1, vocab]
        let first_log_probs = host_f32(log_softmax(last, 2))?; // [vocab]
        let first_best = argmax(
            &first_log_probs
                .iter()
                .map(|&p| f64::from(p))
                .collect::<Vec<_>>(),
        );

        // Tokens 1.. of each continuation are predicted by its own earlier tokens.
        let length = members
            .iter()
            .map(|row| row.continuation)
            .max()
            .unwrap_or(1)
            - 1;
        let (picked, greedy, targets) = if length == 0 {
            (Vec::new(), Vec::new(), Vec::new())
        } else {
            let batch = members.len();
            let mut inputs = vec![0i64; batch * length];
            let mut targets = vec![0i64; batch * length];
            for (row, request) in members.iter().enumerate() {
                let continuation = &request.whole[request.whole.len() - request.continuation..];
                for (position, pair) in continuation.windows(2).enumerate() {
                    inputs[row * length + position] = i64::from(pair[0]);
                    targets[row * length + position] = i64::from(pair[1]);
                }
            }
            let mut branches = cache.repeat_batch(batch);
            let logits = self
                .model
                .forward_cached(ids(inputs, [batch, length]), &mut branches); // [batch, length, vocab]
            let (picked, greedy) = pick(
                log_softmax(logits, 2),
                &targets,
                [batch, length],
                &self.device,
            )?;
            (picked, greedy, targets)
        };
        Ok(members
            .iter()
            .enumerate()
            .map(|(row, request)| {
                let first = request.whole[request.whole.len() - request.continuation] as usize;
                let rest = row * length..row * length + request.continuation - 1;
                ContinuationScore {
                    log_likelihood: f64::from(first_log_probs[first])
                        + picked[rest.clone()]
                            .iter()
                            .map(|&p| f64::from(p))
                            .sum::<f64>(),
                    is_greedy: first_best == first
                        && rest.into_iter().all(|p| greedy[p] == targets[p]),
                }
            })
            .collect())
    }
}

/// Log-probabilities at `targets` and the argmax, per position, as host vectors (`[batch·seq]`).
fn pick(
    log_probs: Tensor<3>,
    targets: &[i64],
    [batch, length]: [usize; 2],
    device: &Device,
) -> Result<(Vec<f32>, Vec<i64>), EvalError> {
    let targets =
        Tensor::<2, Int>::from_data(TensorData::new(targets.to_vec(), [batch, length]), device); // [batch, seq]
    let greedy = host_i64(log_probs.clone().argmax(2))?; // [batch, seq, 1]
    let picked = host_f32(log_probs.gather(2, targets.unsqueeze_dim::<3>(2)))?; // [batch, seq, 1]
    Ok((picked, greedy))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::LlamaConfig;
    use crate::model::device;
    use crate::model::init::seeded_normal_init;

    /// A shared long context (run once, continuations on its cache) scores what each request
    /// scored alone in a packed batch scores.
    #[test]
    fn shared_context_equals_scoring_each_request_alone() {
        let device = device::for_tests();
        let mut config = LlamaConfig::new(53, 32, 48, 2, 4, 2);
        config.head_dim = 8;
        let model = seeded_normal_init(Llama::new(&config, &device), 11, 0.3);
        let context: Vec<u32> = (0..SHARED_CONTEXT_MIN_TOKENS as u32 + 6)
            .map(|i| (i * 7) % 53)
            .collect();
        let continuations: [&[u32]; 4] = [&[4], &[9, 2], &[30, 31, 32], &[4, 4]];
        let requests: Vec<ScoreRequest> = continuations
            .iter()
            .map(|c| ScoreRequest {
                context: context.clone(),
                continuation: c.to_vec(),
            })
            .collect();
        let mut scorer = LlamaScorer::new(&model, device.clone(), 512, 4096);
        let together = scorer.score(&requests).unwrap();
        for (request, shared) in requests.iter().zip(&together) {
            // Alone: a one-request call never shares (a group needs two members).
            let alone = scorer.score(std::slice::from_ref(request)).unwrap()[0];
            let difference = (alone.log_likelihood - shared.log_likelihood).abs();
            assert!(
                difference < 1e-4 * alone.log_likelihood.abs().max(1.0),
                "{alone:?} vs {shared:?}"
            );
            assert_eq!(alone.is_greedy, shared.is_greedy);
        }
        // The greedy continuation of the context is greedy when shared too.
        let mut greedy = crate::eval::llama_generator::LlamaGreedy::new(&model, device);
        let next = crate::eval::generate::NextToken::next_token(&mut greedy, &context).unwrap();
        let requests: Vec<ScoreRequest> = [next, (next + 1) % 53]
            .iter()
            .map(|&token| ScoreRequest {
                context: context.clone(),
                continuation: vec![token],
            })
            .collect();
        let scores = scorer.score(&requests).unwrap();
        assert_eq!((scores[0].is_greedy, scores[1].is_greedy), (true, false));
    }
}
