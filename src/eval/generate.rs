//! Greedy generation tasks (NQ-open) scored by exact match, as lm-eval 0.4's `generate_until` with
//! its Hugging Face model (`HFLM.generate_until`) runs them:
//!
//! - the context is encoded *with* the tokenizer's special tokens (HF's default, so a LLaMA
//!   tokenizer puts BOS first) and left-truncated to `max_length − max_gen_toks` tokens;
//! - tokens are picked greedily (argmax) until one of the `until` strings appears in the decoded
//!   continuation, the model emits an end-of-sequence token, or `max_gen_toks` tokens are made
//!   (lm-eval also adds the EOS text to `until`; stopping on the token id covers it);
//! - the continuation is decoded without special tokens and cut before the first occurrence of each
//!   `until` string in turn (`postprocess_generated_text`), then scored by [`super::exact_match`].

use serde::Serialize;

use super::EvalError;
use super::exact_match::matches_any;
use super::scoring::mean_stderr;

/// One question of a generation task: the full prompt and the accepted answers.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationQuestion {
    pub id: String,
    pub context: String,
    pub answers: Vec<String>,
}

/// A generation task ready to run.
#[derive(Debug, Clone)]
pub struct GenerationTask {
    pub questions: Vec<GenerationQuestion>,
    /// Stop strings (lm-eval's `generation_kwargs.until`).
    pub until: Vec<String>,
    /// Most tokens generated per question (lm-eval's `max_gen_toks`, default 256).
    pub max_gen_toks: usize,
}

/// Text ↔ tokens for generation.
pub trait TextCodec {
    /// Encode a prompt with the tokenizer's special tokens (BOS for LLaMA tokenizers).
    fn encode_prompt(&self, text: &str) -> Result<Vec<u32>, EvalError>;
    /// Decode generated tokens, skipping special tokens.
    fn decode(&self, tokens: &[u32]) -> Result<String, EvalError>;
}

impl TextCodec for tokenizers::Tokenizer {
    fn encode_prompt(&self, text: &str) -> Result<Vec<u32>, EvalError> {
        let encoding = std::ops::Deref::deref(self)
            .encode(text, true)
            .map_err(|error| EvalError::Tokenizer(error.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }
    fn decode(&self, tokens: &[u32]) -> Result<String, EvalError> {
        std::ops::Deref::deref(self)
            .decode(tokens, true)
            .map_err(|error| EvalError::Tokenizer(error.to_string()))
    }
}

/// A model that names its most likely next token after `tokens` (greedy decoding).
pub trait NextToken {
    fn next_token(&mut self, tokens: &[u32]) -> Result<u32, EvalError>;
}

/// Limits of one generation.
#[derive(Debug, Clone)]
pub struct GenerationLimits<'a> {
    pub until: &'a [String],
    pub eos_tokens: &'a [u32],
    pub max_gen_toks: usize,
    /// The model's context window (lm-eval's `max_length`).
    pub max_length: usize,
}

/// Cut `text` before the first occurrence of each stop string in turn (`s.split(term)[0]`).
pub fn cut_at_stops(text: &str, until: &[String]) -> String {
    let mut text = text.to_string();
    for stop in until.iter().filter(|stop| !stop.is_empty()) {
        if let Some(position) = text.find(stop.as_str()) {
            text.truncate(position);
        }
    }
    text
}

/// Greedy continuation of `context` (already encoded), cut at the stop strings.
pub fn generate(
    model: &mut dyn NextToken,
    codec: &dyn TextCodec,
    context: &[u32],
    limits: &GenerationLimits<'_>,
) -> Result<String, EvalError> {
    let keep = limits.max_length.saturating_sub(limits.max_gen_toks).max(1);
    let mut tokens: Vec<u32> = context[context.len().saturating_sub(keep)..].to_vec();
    let start = tokens.len();
    for _ in 0..limits.max_gen_toks {
        let next = model.next_token(&tokens)?;
        if limits.eos_tokens.contains(&next) {
            break;
        }
        tokens.push(next);
        let text = codec.decode(&tokens[start..])?;
        if limits
            .until
            .iter()
            .any(|stop| !stop.is_empty() && text.contains(stop.as_str()))
        {
            break;
        }
    }
    Ok(cut_at_stops(&codec.decode(&tokens[start..])?, limits.until))
}

/// Metrics of a generation task.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GenerationResult {
    pub n: usize,
    pub exact_match: f64,
    pub exact_match_stderr: Option<f64>,
}

/// What the model generated for one question (written to `predictions/<task>.jsonl`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GenerationScore {
    pub id: String,
    pub generated: String,
    pub answers: Vec<String>,
    pub exact_match: bool,
}

/// Generate an answer to every question and score them. `progress` is told (done, total).
pub fn evaluate_generation(
    task: &GenerationTask,
    codec: &dyn TextCodec,
    model: &mut dyn NextToken,
    eos_tokens: &[u32],
    max_length: usize,
    progress: &dyn Fn(usize, usize),
) -> Result<(GenerationResult, Vec<GenerationScore>), EvalError> {
    let limits = GenerationLimits {
        until: &task.until,
        eos_tokens,
        max_gen_toks: task.max_gen_toks,
        max_length,
    };
    let mut scores = Vec::with_capacity(task.questions.len());
    for (done, question) in task.questions.iter().enumerate() {
        let context = codec.encode_prompt(&question.context)?;
        let generated = generate(model, codec, &context, &limits)?;
        scores.push(GenerationScore {
            id: question.id.clone(),
            exact_match: matches_any(&generated, &question.answers),
            generated,
            answers: question.answers.clone(),
        });
        progress(done + 1, task.questions.len());
    }
    let hits: Vec<f64> = scores
        .iter()
        .map(|score| f64::from(u8::from(score.exact_match)))
        .collect();
    let result = GenerationResult {
        n: hits.len(),
        exact_match: if hits.is_empty() {
            f64::NAN
        } else {
            hits.iter().sum::<f64>() / hits.len() as f64
        },
        exact_match_stderr: mean_stderr(&hits),
    };
    Ok((result, scores))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One token per character (ids = code points); token 0 is a special end token that decodes to "".
    struct Chars;
    impl TextCodec for Chars {
        fn encode_prompt(&self, text: &str) -> Result<Vec<u32>, EvalError> {
            Ok(std::iter::once(1)
                .chain(text.chars().map(|c| c as u32))
                .collect())
        }
        fn decode(&self, tokens: &[u32]) -> Result<String, EvalError> {
            Ok(tokens
                .iter()
                .filter(|&&t| t > 1)
                .map(|&t| char::from_u32(t).unwrap())
                .collect())
        }
    }

    /// Answers with a scripted string after the prompt, then the end token.
    struct Scripted {
        answer: Vec<u32>,
        seen_lengths: Vec<usize>,
    }
    impl NextToken for Scripted {
        fn next_token(&mut self, tokens: &[u32]) -> Result<u32, EvalError> {
            self.seen_lengths.push(tokens.len());
            let step = self.seen_lengths.len() - 1;
            Ok(self.answer.get(step).copied().unwrap_or(0))
        }
    }

    fn scripted(text: &str) -> Scripted {
        Scripted {
            answer: text.chars().map(|c| c as u32).collect(),
            seen_lengths: Vec::new(),
        }
    }

    #[test]
    fn stops_at_until_and_cuts_before_it() {
        let until: Vec<String> = ["\n", ".", ","].map(String::from).to_vec();
        let limits = GenerationLimits {
            until: &until,
            eos_tokens: &[0],
            max_gen_toks: 50,
            max_length: 100,
        };
        let mut model = scripted(" Paris, France.\nQ:");
        let text = generate(&mut model, &Chars, &[1, 65], &limits).unwrap();
        assert_eq!(text, " Paris");
        // It stopped right after the comma: 7 tokens generated.
        assert_eq!(model.seen_lengths.len(), 7);

        // EOS ends generation; max_gen_toks caps it; the context is left-truncated to max_length − max_gen_toks.
        let mut model = scripted(" yes");
        assert_eq!(generate(&mut model, &Chars, &[1], &limits).unwrap(), " yes");
        let short = GenerationLimits {
            max_gen_toks: 2,
            max_length: 5,
            ..limits
        };
        let mut model = scripted(" abc");
        assert_eq!(
            generate(&mut model, &Chars, &[1, 2, 3, 4, 5, 6], &short).unwrap(),
            " a"
        );
        assert_eq!(model.seen_lengths, [3, 4]);
    }

    #[test]
    fn exact_match_over_questions() {
        let task = GenerationTask {
            questions: vec![
                GenerationQuestion {
                    id: "0".into(),
                    context: "Q: capital of France?\nA:".into(),
                    answers: vec!["paris".into()],
                },
                GenerationQuestion {
                    id: "1".into(),
                    context: "Q: 2+2?\nA:".into(),
                    answers: vec!["four".into(), "4".into()],
                },
            ],
            until: vec!["\n".into()],
            max_gen_toks: 10,
        };
        // Always " Paris" then a newline, whatever the prompt.
        struct Paris(usize);
        impl NextToken for Paris {
            fn next_token(&mut self, _tokens: &[u32]) -> Result<u32, EvalError> {
                let answer: Vec<u32> = " Paris\n".chars().map(|c| c as u32).collect();
                let token = answer[self.0 % answer.len()];
                self.0 += 1;
                Ok(token)
            }
        }
        let (result, scores) =
            evaluate_generation(&task, &Chars, &mut Paris(0), &[0], 64, &|_, _| {}).unwrap();
        assert_eq!(scores[0].generated, " Paris");
        assert!(scores[0].exact_match && !scores[1].exact_match);
        assert_eq!((result.n, result.exact_match), (2, 0.5));
        assert!((result.exact_match_stderr.unwrap() - 0.5).abs() < 1e-12);
    }
}
