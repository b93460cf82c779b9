//! Prompt assembly as lm-eval 0.4's `ConfigurableTask.fewshot_context` + `construct_requests` do it
//! for plain-text (non-chat) models, and the documents → questions step shared by every task built
//! from a dataset.
//!
//! A context is `description + Σ shots + query`, where each shot is
//! `question + target_delimiter + answer + fewshot_delimiter` and the query is the evaluated
//! document's question with nothing after it. The scored continuation is
//! `target_delimiter + choice` (multiple choice) or `target_delimiter + target` after each of the
//! per-choice contexts (WinoGrande); a generation task generates right after the query.

use serde_json::Value;

use super::fewshot::{Sampler, SamplerKind};
use super::generate::GenerationQuestion;
use super::tasks::{Choice, Question};
use super::templates::{Rendered, Template};

/// The task-level strings around the documents.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptFormat {
    /// Put once before the shots (lm-eval's `description`, e.g. MMLU's subject line).
    pub description: String,
    /// Between a question and its answer (lm-eval default `" "`).
    pub target_delimiter: String,
    /// After each shot's answer (lm-eval default `"\n\n"`; NQ-open uses `"\n"`).
    pub fewshot_delimiter: String,
}

impl Default for PromptFormat {
    fn default() -> Self {
        PromptFormat {
            description: String::new(),
            target_delimiter: " ".into(),
            fewshot_delimiter: "\n\n".into(),
        }
    }
}

/// `description + Σ (question + target_delimiter + answer + fewshot_delimiter)` over the shots.
pub fn fewshot_prefix(format: &PromptFormat, shots: &[Rendered]) -> String {
    let mut prefix = format.description.clone();
    for shot in shots {
        let (question, answer) = shot.shot();
        prefix.push_str(question);
        prefix.push_str(&format.target_delimiter);
        prefix.push_str(answer);
        prefix.push_str(&format.fewshot_delimiter);
    }
    prefix
}

/// One evaluated document with its prompt.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompted {
    Choice(Question),
    Generation(GenerationQuestion),
}

/// The requests of one document given its shots. For `acc_norm` each choice is measured as lm-eval
/// does, by `len(doc_to_choice(doc)[i])`: the choice text, or for WinoGrande the per-choice context
/// without the shots.
pub fn prompt(id: String, format: &PromptFormat, doc: &Rendered, shots: &[Rendered]) -> Prompted {
    let prefix = fewshot_prefix(format, shots);
    match doc {
        Rendered::MultipleChoice {
            text,
            choices,
            gold,
        } => Prompted::Choice(Question {
            id,
            choices: choices
                .iter()
                .map(|choice| Choice {
                    context: format!("{prefix}{text}"),
                    continuation: format!("{}{choice}", format.target_delimiter),
                    norm_chars: choice.chars().count(),
                })
                .collect(),
            gold: *gold,
            unconditional: None,
        }),
        Rendered::MultipleInput {
            contexts,
            target,
            gold,
        } => Prompted::Choice(Question {
            id,
            choices: contexts
                .iter()
                .map(|context| Choice {
                    context: format!("{prefix}{context}"),
                    continuation: format!("{}{target}", format.target_delimiter),
                    norm_chars: context.chars().count(),
                })
                .collect(),
            gold: *gold,
            unconditional: None,
        }),
        Rendered::Generation { text, answers } => Prompted::Generation(GenerationQuestion {
            id,
            context: format!("{prefix}{text}"),
            answers: answers.clone(),
        }),
    }
}

/// How a task turns documents into prompts.
#[derive(Debug, Clone)]
pub struct DocsSpec {
    pub template: Template,
    pub sampler: SamplerKind,
    pub num_fewshot: usize,
    pub seed: u64,
    /// Whether lm-eval would pass the evaluated document to the sampler (left out of the shots).
    pub exclude_eval_doc: bool,
    /// Evaluate only the first `limit` documents (lm-eval's `--limit`, per task).
    pub limit: Option<usize>,
}

/// A failure on one document: its position in the evaluated split and what is wrong.
#[derive(Debug, Clone, PartialEq)]
pub struct DocError {
    pub index: usize,
    pub message: String,
}

/// Prompts for the first `limit` documents of `docs` with shots from `pool` (one sampler, one
/// generator state, documents in order, as lm-eval builds a task's requests). `id_prefix` names the
/// group (an MMLU subject) in question ids.
pub fn prompt_docs(
    spec: &DocsSpec,
    format: &PromptFormat,
    docs: &[Value],
    pool: &[Value],
    id_prefix: &str,
) -> Result<Vec<Prompted>, DocError> {
    let rendered_pool: Vec<Option<Rendered>> = if spec.num_fewshot > 0 {
        pool.iter()
            .map(|doc| spec.template.render(doc).ok())
            .collect()
    } else {
        Vec::new()
    };
    let mut sampler = Sampler::new(pool, spec.sampler, spec.seed);
    let count = spec.limit.map_or(docs.len(), |limit| limit.min(docs.len()));
    let mut prompted = Vec::with_capacity(count);
    for (index, doc) in docs[..count].iter().enumerate() {
        let error = |message: String| DocError { index, message };
        let rendered = spec.template.render(doc).map_err(error)?;
        let eval_doc = spec.exclude_eval_doc.then_some(doc);
        let shots: Vec<Rendered> = sampler
            .sample(spec.num_fewshot, eval_doc)
            .map_err(error)?
            .into_iter()
            .map(|shot| {
                rendered_pool[shot].clone().ok_or_else(|| {
                    let problem = spec.template.render(&pool[shot]).err().unwrap_or_default();
                    error(format!("few-shot document {shot}: {problem}"))
                })
            })
            .collect::<Result<_, _>>()?;
        prompted.push(prompt(
            format!("{id_prefix}{index}"),
            format,
            &rendered,
            &shots,
        ));
    }
    Ok(prompted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn arc(question: &str, answers: [&str; 2], key: &str) -> Value {
        json!({"question": question, "answerKey": key,
               "choices": {"text": answers, "label": ["A", "B"]}})
    }

    #[test]
    fn two_shot_arc_prompt_is_lm_evals_string() {
        let pool = vec![
            arc("Which is hot?", ["fire", "ice"], "A"),
            arc("Which is wet?", ["sand", "water"], "B"),
            arc("Which is loud?", ["a drum", "a leaf"], "A"),
        ];
        let docs = vec![arc("Which is a gas?", ["rock", "steam"], "B")];
        let spec = DocsSpec {
            template: Template::Arc,
            sampler: SamplerKind::FirstN,
            num_fewshot: 2,
            seed: 1234,
            exclude_eval_doc: false,
            limit: None,
        };
        let prompted = prompt_docs(&spec, &PromptFormat::default(), &docs, &pool, "").unwrap();
        let Prompted::Choice(question) = &prompted[0] else {
            panic!("expected a multiple-choice question")
        };
        assert_eq!(
            question.choices[1].context,
            "Question: Which is hot?\nAnswer: fire\n\nQuestion: Which is wet?\nAnswer: water\n\n\
             Question: Which is a gas?\nAnswer:"
        );
        assert_eq!(question.choices[1].continuation, " steam");
        assert_eq!((question.gold, question.choices[1].norm_chars), (1, 5));
    }

    #[test]
    fn winogrande_shot_uses_the_gold_option_and_generation_uses_nq_delimiters() {
        let wino = |sentence: &str, answer: &str| json!({"sentence": sentence, "option1": "Ann", "option2": "Bob", "answer": answer});
        let pool = vec![wino("Ann thanked Bob because _ helped.", "2")];
        let docs = vec![wino("Ann paid Bob since _ owed money.", "1")];
        let spec = DocsSpec {
            template: Template::Winogrande,
            sampler: SamplerKind::Default,
            num_fewshot: 1,
            seed: 1234,
            exclude_eval_doc: false,
            limit: None,
        };
        let Prompted::Choice(question) =
            &prompt_docs(&spec, &PromptFormat::default(), &docs, &pool, "")
                .unwrap()
                .remove(0)
        else {
            panic!("expected choices")
        };
        assert_eq!(
            question.choices[1].context,
            "Ann thanked Bob because Bob helped.\n\nAnn paid Bob since Bob"
        );
        assert_eq!(question.choices[0].continuation, " owed money.");

        let nq = |q: &str, a: &str| json!({"question": q, "answer": [a, "alias"]});
        let format = PromptFormat {
            description: "Answer these questions:\n\n".into(),
            target_delimiter: " ".into(),
            fewshot_delimiter: "\n".into(),
        };
        let spec = DocsSpec {
            template: Template::NqOpen,
            sampler: SamplerKind::FirstN,
            num_fewshot: 1,
            seed: 1234,
            exclude_eval_doc: false,
            limit: Some(1),
        };
        let prompted = prompt_docs(
            &spec,
            &format,
            &[nq("who wrote hamlet", "Shakespeare"), nq("x", "y")],
            &[nq("capital of france", "Paris")],
            "",
        )
        .unwrap();
        assert_eq!(prompted.len(), 1);
        let Prompted::Generation(question) = &prompted[0] else {
            panic!("expected generation")
        };
        assert_eq!(
            question.context,
            "Answer these questions:\n\nQ: capital of france?\nA: Paris\nQ: who wrote hamlet?\nA:"
        );
        assert_eq!(question.answers, ["Shakespeare", "alias"]);
    }

    #[test]
    fn a_bad_document_is_named_by_position() {
        let docs = vec![
            json!({"goal": "g", "sol1": "a", "sol2": "b", "label": 0}),
            json!({"goal": "g"}),
        ];
        let spec = DocsSpec {
            template: Template::Piqa,
            sampler: SamplerKind::Default,
            num_fewshot: 0,
            seed: 1234,
            exclude_eval_doc: true,
            limit: None,
        };
        let error = prompt_docs(&spec, &PromptFormat::default(), &docs, &docs, "").unwrap_err();
        assert_eq!(error.index, 1);
        assert!(error.message.contains("sol1"), "{}", error.message);
    }
}
