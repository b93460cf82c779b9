//! Scoring multiple-choice questions by log-likelihood, as lm-evaluation-harness (0.4) does.
//!
//! The model side is a trait ([`LogLikelihoodScorer`]) so that the metric logic is tested without a
//! model and the same code scores a burn LLaMA, a fake in a test, or anything else.

use serde::Serialize;

use super::EvalError;
use super::tasks::{Choice, Question, Task};

/// Turns text into token ids without special tokens (lm-eval's `tok_encode` for causal models).
pub trait TextEncoder {
    fn encode(&self, text: &str) -> Result<Vec<u32>, EvalError>;
}

impl TextEncoder for tokenizers::Tokenizer {
    fn encode(&self, text: &str) -> Result<Vec<u32>, EvalError> {
        // `Tokenizer` derefs to `TokenizerImpl`, whose inherent `encode` this trait method would otherwise shadow.
        let encoding = std::ops::Deref::deref(self)
            .encode(text, false)
            .map_err(|error| EvalError::Tokenizer(error.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }
}

/// One (context, continuation) pair in tokens: the model is fed `context ++ continuation[..-1]` and
/// scored on predicting each continuation token.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ScoreRequest {
    pub context: Vec<u32>,
    pub continuation: Vec<u32>,
}

/// The model's verdict on one request.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ContinuationScore {
    /// Σ log p(continuation token | everything before it), natural log.
    pub log_likelihood: f64,
    /// Whether greedy decoding would have produced exactly the continuation.
    pub is_greedy: bool,
}

/// Anything that can score requests (a model). Implementations batch as they like and return one
/// score per request, in order.
pub trait LogLikelihoodScorer {
    fn score(&mut self, requests: &[ScoreRequest]) -> Result<Vec<ContinuationScore>, EvalError>;
}

/// Split `context + continuation` into tokens the way lm-eval's `_encode_pair` does.
///
/// Trailing whitespace of the context moves to the front of the continuation (so `"Answer: "` +
/// `"Paris"` is scored as `"Answer:"` + `" Paris"`); the joint text is encoded once and split after
/// as many tokens as the context alone encodes to, so merges across the boundary are the tokenizer's
/// own. An empty context is replaced by `prefix_token` (BOS, or EOS when there is no BOS — lm-eval's
/// `prefix_token_id`). lm-eval asserts on a context that encodes to no tokens; here it gets the prefix
/// token too.
pub fn encode_pair(
    encoder: &dyn TextEncoder,
    context: &str,
    continuation: &str,
    prefix_token: Option<u32>,
) -> Result<ScoreRequest, EvalError> {
    let prefix = || {
        prefix_token.map(|token| vec![token]).ok_or_else(|| {
            EvalError::Tokenizer(
                "an empty context needs a BOS or EOS token id in the model config to condition on"
                    .into(),
            )
        })
    };
    if context.is_empty() {
        return Ok(ScoreRequest {
            context: prefix()?,
            continuation: encoder.encode(continuation)?,
        });
    }
    let trimmed = context.trim_end();
    let (context, continuation) = if trimmed.len() < context.len() {
        (
            trimmed.to_string(),
            format!("{}{continuation}", &context[trimmed.len()..]),
        )
    } else {
        (context.to_string(), continuation.to_string())
    };
    let whole = encoder.encode(&format!("{context}{continuation}"))?;
    let context_tokens = encoder.encode(&context)?;
    let split = context_tokens.len().min(whole.len());
    let continuation_tokens = whole[split..].to_vec();
    let context_tokens = if context_tokens.is_empty() {
        prefix()?
    } else {
        context_tokens
    };
    Ok(ScoreRequest {
        context: context_tokens,
        continuation: continuation_tokens,
    })
}

/// Metrics of one task.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskResult {
    /// Questions scored.
    pub n: usize,
    /// Multiple choice: the share of questions whose gold choice has the highest log-likelihood.
    /// Completions: the share whose continuation greedy decoding reproduces exactly (lm-eval's
    /// `acc` of `lambada_openai`).
    pub acc: f64,
    pub acc_stderr: Option<f64>,
    /// Multiple choice only: as `acc` with log-likelihoods divided by each choice's length in characters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acc_norm: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acc_norm_stderr: Option<f64>,
    /// Completions only: exp(−mean log-likelihood of the continuations), lm-eval's `perplexity`
    /// (per item, not per token).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub perplexity: Option<f64>,
    /// PMI-style accuracy (argmax of conditional minus unconditional log-likelihood), only when the
    /// unconditional twins were scored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acc_uncond: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acc_uncond_stderr: Option<f64>,
    /// Requests (model evaluations) this took.
    pub requests: usize,
}

/// What the model said about one question (written to `predictions.jsonl` for inspection).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QuestionScore {
    pub id: String,
    pub gold: usize,
    pub log_likelihoods: Vec<f64>,
    pub is_greedy: Vec<bool>,
    pub prediction: usize,
    pub prediction_norm: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prediction_uncond: Option<usize>,
}

/// Score every question of `task`. With `unconditional`, questions that carry twins are also scored
/// for `acc_uncond` (only reported when every question has twins).
pub fn evaluate_task(
    task: &Task,
    encoder: &dyn TextEncoder,
    scorer: &mut dyn LogLikelihoodScorer,
    prefix_token: Option<u32>,
    unconditional: bool,
) -> Result<(TaskResult, Vec<QuestionScore>), EvalError> {
    let use_twins = unconditional
        && task
            .questions
            .iter()
            .all(|question| question.unconditional.is_some());
    let mut requests = Vec::new();
    let mut encode_all = |choices: &[Choice], question_id: &str| -> Result<(), EvalError> {
        for (index, choice) in choices.iter().enumerate() {
            let request =
                encode_pair(encoder, &choice.context, &choice.continuation, prefix_token)?;
            if request.continuation.is_empty() {
                return Err(EvalError::Tokenizer(format!(
                    "{}: question {question_id}, choice {index}: continuation {:?} encodes to no tokens",
                    task.path.display(),
                    choice.continuation
                )));
            }
            requests.push(request);
        }
        Ok(())
    };
    for question in &task.questions {
        encode_all(&question.choices, &question.id)?;
        if use_twins && let Some(twins) = &question.unconditional {
            encode_all(twins, &question.id)?;
        }
    }
    let scores = scorer.score(&requests)?;
    if scores.len() != requests.len() {
        return Err(EvalError::Scorer(format!(
            "{} scores for {} requests",
            scores.len(),
            requests.len()
        )));
    }

    let mut next = scores.iter();
    let mut per_question = Vec::with_capacity(task.questions.len());
    for question in &task.questions {
        let conditional: Vec<ContinuationScore> = next
            .by_ref()
            .take(question.choices.len())
            .copied()
            .collect();
        let log_likelihoods: Vec<f64> = conditional
            .iter()
            .map(|score| score.log_likelihood)
            .collect();
        let normalised: Vec<f64> = log_likelihoods
            .iter()
            .zip(&question.choices)
            .map(|(ll, choice)| ll / choice.norm_chars as f64)
            .collect();
        let prediction_uncond = if use_twins {
            let twins: Vec<f64> = next
                .by_ref()
                .take(question.choices.len())
                .map(|score| score.log_likelihood)
                .collect();
            let pointwise: Vec<f64> = log_likelihoods
                .iter()
                .zip(&twins)
                .map(|(c, u)| c - u)
                .collect();
            Some(argmax(&pointwise))
        } else {
            None
        };
        per_question.push(QuestionScore {
            id: question.id.clone(),
            gold: question.gold,
            prediction: argmax(&log_likelihoods),
            prediction_norm: argmax(&normalised),
            is_greedy: conditional.iter().map(|score| score.is_greedy).collect(),
            log_likelihoods,
            prediction_uncond,
        });
    }

    let hits = |pick: &dyn Fn(&QuestionScore) -> Option<usize>| -> Vec<f64> {
        per_question
            .iter()
            .filter_map(|q| pick(q).map(|p| if p == q.gold { 1.0 } else { 0.0 }))
            .collect()
    };
    let completion = task.questions.first().is_some_and(Question::is_completion);
    let acc = if completion {
        let greedy = |q: &QuestionScore| if q.is_greedy[0] { 1.0 } else { 0.0 };
        per_question.iter().map(greedy).collect()
    } else {
        hits(&|q| Some(q.prediction))
    };
    let acc_norm = (!completion).then(|| hits(&|q| Some(q.prediction_norm)));
    let perplexity = completion.then(|| {
        let log_likelihoods: Vec<f64> = per_question.iter().map(|q| q.log_likelihoods[0]).collect();
        (-mean(&log_likelihoods)).exp()
    });
    let acc_uncond = if use_twins {
        Some(hits(&|q| q.prediction_uncond))
    } else {
        None
    };
    let result = TaskResult {
        n: per_question.len(),
        acc: mean(&acc),
        acc_stderr: mean_stderr(&acc),
        acc_norm: acc_norm.as_deref().map(mean),
        acc_norm_stderr: acc_norm.as_deref().and_then(mean_stderr),
        perplexity,
        acc_uncond: acc_uncond.as_deref().map(mean),
        acc_uncond_stderr: acc_uncond.as_deref().and_then(mean_stderr),
        requests: requests.len(),
    };
    Ok((result, per_question))
}

/// numpy's `argmax`: the first maximum; a NaN counts as the maximum (first NaN wins).
pub(super) fn argmax(values: &[f64]) -> usize {
    let mut best = 0;
    for (index, value) in values.iter().enumerate().skip(1) {
        let current = values[best];
        if !current.is_nan() && (value.is_nan() || *value > current) {
            best = index;
        }
    }
    best
}

fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        f64::NAN
    } else {
        values.iter().sum::<f64>() / values.len() as f64
    }
}

/// lm-eval's `mean_stderr`: sample standard deviation (divisor n − 1) over √n; `None` below 2 values.
pub fn mean_stderr(values: &[f64]) -> Option<f64> {
    let n = values.len();
    if n < 2 {
        return None;
    }
    let mu = mean(values);
    let variance = values.iter().map(|x| (x - mu) * (x - mu)).sum::<f64>() / (n - 1) as f64;
    Some((variance / n as f64).sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::tasks::{Question, TaskFormat};
    use std::collections::HashMap;
    use std::path::PathBuf;

    /// A character-level "tokenizer" that merges a space with the following letter, so token
    /// boundaries depend on where the text is split (like BPE's "Ġword" tokens).
    struct SpaceMerging;
    impl TextEncoder for SpaceMerging {
        fn encode(&self, text: &str) -> Result<Vec<u32>, EvalError> {
            let mut tokens = Vec::new();
            let mut chars = text.chars().peekable();
            while let Some(c) = chars.next() {
                if c == ' '
                    && let Some(next) = chars.next_if(|n| *n != ' ')
                {
                    tokens.push(1000 + next as u32);
                    continue;
                }
                tokens.push(c as u32);
            }
            Ok(tokens)
        }
    }

    #[test]
    fn encode_pair_moves_trailing_context_spaces_into_the_continuation() {
        let plain = encode_pair(&SpaceMerging, "Answer:", " yes", None).unwrap();
        let spaced = encode_pair(&SpaceMerging, "Answer: ", "yes", None).unwrap();
        assert_eq!(plain, spaced);
        assert_eq!(
            plain.continuation,
            vec![1000 + 'y' as u32, 'e' as u32, 's' as u32]
        );
        assert_eq!(plain.context.len(), "Answer:".len());
    }

    #[test]
    fn encode_pair_uses_prefix_token_for_empty_context() {
        let request = encode_pair(&SpaceMerging, "", " a", Some(7)).unwrap();
        assert_eq!(request.context, vec![7]);
        assert!(encode_pair(&SpaceMerging, "", " a", None).is_err());
        let whitespace_only = encode_pair(&SpaceMerging, "  ", "a", Some(9)).unwrap();
        assert_eq!(whitespace_only.context, vec![9]);
    }

    /// Scores requests from a table keyed by the continuation's first token (the char after the space).
    struct TableScorer(HashMap<u32, f64>);
    impl LogLikelihoodScorer for TableScorer {
        fn score(
            &mut self,
            requests: &[ScoreRequest],
        ) -> Result<Vec<ContinuationScore>, EvalError> {
            Ok(requests
                .iter()
                .map(|r| ContinuationScore {
                    log_likelihood: self.0[&r.continuation[0]],
                    is_greedy: false,
                })
                .collect())
        }
    }

    fn choice(context: &str, text: &str) -> Choice {
        Choice {
            context: context.into(),
            continuation: format!(" {text}"),
            norm_chars: text.chars().count(),
        }
    }

    #[test]
    fn acc_and_acc_norm_follow_lm_eval() {
        // Question 1: "a" (1 char) has the best raw log-likelihood, "bbbbbbbbbb" (10 chars) the best per char.
        // Question 2: "c" best both ways. Gold: q1 → the long answer, q2 → "c".
        let q1 = Question {
            id: "q1".into(),
            choices: vec![choice("Q", "a"), choice("Q", "bbbbbbbbbb")],
            gold: 1,
            unconditional: Some(vec![
                choice("Answer:", "a"),
                choice("Answer:", "bbbbbbbbbb"),
            ]),
        };
        let q2 = Question {
            id: "q2".into(),
            choices: vec![choice("R", "c"), choice("R", "d")],
            gold: 0,
            unconditional: Some(vec![choice("Answer:", "c"), choice("Answer:", "d")]),
        };
        let task = Task {
            path: PathBuf::from("t"),
            format: TaskFormat::Simple,
            questions: vec![q1, q2],
            questions_in_file: 2,
        };
        let table: HashMap<u32, f64> = [('a', -2.0), ('b', -5.0), ('c', -1.0), ('d', -3.0)]
            .into_iter()
            .map(|(c, ll)| (1000 + c as u32, ll))
            .collect();
        let (result, per_question) = evaluate_task(
            &task,
            &SpaceMerging,
            &mut TableScorer(table.clone()),
            None,
            false,
        )
        .unwrap();
        assert_eq!(per_question[0].prediction, 0); // -2 > -5
        assert_eq!(per_question[0].prediction_norm, 1); // -2/1 < -5/10
        assert_eq!(
            (result.acc, result.acc_norm, result.n, result.requests),
            (0.5, Some(1.0), 2, 4)
        );
        // p = 0.5, n = 2: sample std = sqrt(0.5), stderr = sqrt(0.5)/sqrt(2) = 0.5
        assert!((result.acc_stderr.unwrap() - 0.5).abs() < 1e-12);
        assert_eq!(result.acc_norm_stderr, Some(0.0));
        assert_eq!(result.acc_uncond, None);

        // Twins score identically here, so conditional − unconditional is 0 everywhere and argmax picks choice 0.
        let (with_twins, per_question) =
            evaluate_task(&task, &SpaceMerging, &mut TableScorer(table), None, true).unwrap();
        assert_eq!(with_twins.requests, 8);
        assert_eq!(per_question[1].prediction_uncond, Some(0));
        assert_eq!(with_twins.acc_uncond, Some(0.5));
    }

    /// Scores every request with a fixed log-likelihood; greedy when the continuation starts with 'g'.
    struct GreedyWhenG(f64);
    impl LogLikelihoodScorer for GreedyWhenG {
        fn score(
            &mut self,
            requests: &[ScoreRequest],
        ) -> Result<Vec<ContinuationScore>, EvalError> {
            Ok(requests
                .iter()
                .map(|r| ContinuationScore {
                    log_likelihood: self.0,
                    is_greedy: r.continuation[0] == 1000 + 'g' as u32,
                })
                .collect())
        }
    }

    #[test]
    fn completions_score_greedy_accuracy_and_perplexity() {
        let completion = |id: &str, text: &str| Question {
            id: id.into(),
            choices: vec![choice("The end of the", text)],
            gold: 0,
            unconditional: None,
        };
        let task = Task {
            path: PathBuf::from("lambada"),
            format: TaskFormat::Requests,
            questions: vec![
                completion("0", "game"),
                completion("1", "road"),
                completion("2", "gate"),
            ],
            questions_in_file: 3,
        };
        let (result, per_question) =
            evaluate_task(&task, &SpaceMerging, &mut GreedyWhenG(-2.0), None, false).unwrap();
        // lm-eval's lambada: acc = mean(is_greedy); perplexity = exp(-mean(log-likelihood)).
        assert!((result.acc - 2.0 / 3.0).abs() < 1e-12);
        assert!((result.perplexity.unwrap() - 2f64.exp()).abs() < 1e-9);
        assert_eq!((result.acc_norm, result.acc_norm_stderr), (None, None));
        assert_eq!(per_question[1].is_greedy, vec![false]);
    }

    #[test]
    fn argmax_matches_numpy_on_ties_and_nan() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0]), 1);
        assert_eq!(argmax(&[1.0, f64::NAN, 5.0]), 1);
        assert_eq!(argmax(&[-1.0]), 0);
    }

    #[test]
    fn stderr_is_lm_eval_mean_stderr() {
        let hits = [1.0, 1.0, 1.0, 0.0];
        let p: f64 = 0.75;
        let expected = (p * (1.0 - p) / 3.0).sqrt();
        assert!((mean_stderr(&hits).unwrap() - expected).abs() < 1e-12);
        assert_eq!(mean_stderr(&[1.0]), None);
    }
}
