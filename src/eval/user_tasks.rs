//! Multiple-choice tasks a user brings as JSONL (MMLU, LogiQA, or anything in their shape), one
//! question per line:
//!
//! ```json
//! {"question": "What is 2 + 2?", "choices": ["3", "4", "5", "6"], "answer": 1, "subject": "elementary_mathematics"}
//! {"context": "All cats purr. Tom is a cat.", "question": "Does Tom purr?", "choices": ["yes", "no"], "answer": 0}
//! ```
//!
//! `answer` is the index of the correct choice (from 0). `subject` (optional) groups questions the
//! way lm-eval's per-subject MMLU tasks are grouped: each subject gets its own description line and
//! its own shots. `context` is the passage of a LogiQA question (required by the `logiqa` template).
//! `id` (optional, any JSON) is echoed in predictions. Other keys are refused, so a typo is caught.
//!
//! Shots come from a second file in the same format when the recipe gives one (MMLU's `dev` split,
//! LogiQA's `train`), else from the evaluated file itself with the evaluated question left out.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use serde_json::{Value, json};

use super::EvalError;
use super::builtin::{DocsOptions, Splits, mmlu_description};
use super::fewshot::SamplerKind;
use super::prompt::{DocsSpec, PromptFormat, Prompted, prompt_docs};
use super::templates::Template;

/// One line of the format.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserLine {
    question: String,
    choices: Vec<String>,
    answer: usize,
    #[serde(default)]
    subject: Option<String>,
    #[serde(default)]
    context: Option<String>,
    #[serde(default)]
    id: Option<Value>,
}

/// Read and check a user task file; every document is returned as the JSON object the templates read.
pub fn read_user_docs(path: &Path, template: Template) -> Result<Vec<Value>, EvalError> {
    let text = std::fs::read_to_string(path).map_err(|source| EvalError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut docs = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let error = |message: String| EvalError::Line {
            path: path.to_path_buf(),
            line: index + 1,
            message,
        };
        let parsed: UserLine = serde_json::from_str(line).map_err(|e| {
            error(format!(
                "{e} (expected {{\"question\": \"..\", \"choices\": [\"..\", \"..\"], \"answer\": 0}} with optional \
                 \"subject\", \"context\", \"id\")"
            ))
        })?;
        if parsed.choices.len() < 2 {
            return Err(error(format!(
                "{} choice(s); a multiple-choice question needs at least 2",
                parsed.choices.len()
            )));
        }
        if parsed.answer >= parsed.choices.len() {
            return Err(error(format!(
                "answer is {} but there are only {} choices (answer counts from 0)",
                parsed.answer,
                parsed.choices.len()
            )));
        }
        if template == Template::Logiqa && parsed.context.is_none() {
            return Err(error(
                "the logiqa template needs `context` (the passage)".into(),
            ));
        }
        let mut doc = json!({"question": parsed.question, "choices": parsed.choices, "answer": parsed.answer});
        for (key, value) in [
            ("subject", parsed.subject.map(Value::String)),
            ("context", parsed.context.map(Value::String)),
            ("id", parsed.id),
        ] {
            if let Some(value) = value {
                doc[key] = value;
            }
        }
        docs.push(doc);
    }
    if docs.is_empty() {
        return Err(EvalError::File {
            path: path.to_path_buf(),
            message: "the file has no questions".into(),
        });
    }
    Ok(docs)
}

/// Documents grouped by `subject` (in name order; questions without one form the group `""`).
fn by_subject(docs: Vec<Value>) -> BTreeMap<String, Vec<Value>> {
    let mut groups: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for doc in docs {
        let subject = doc
            .get("subject")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        groups.entry(subject).or_default().push(doc);
    }
    groups
}

/// Prompts for a user task. MMLU-style (`mmlu` template) uses lm-eval's `first_n` sampler with a
/// shots file, as lm-eval's MMLU does with `dev`; otherwise the default sampler.
pub fn load_user_task(
    path: &Path,
    fewshot_path: Option<&Path>,
    template: Template,
    options: &DocsOptions,
) -> Result<(Vec<Prompted>, usize, Splits), EvalError> {
    let docs = read_user_docs(path, template)?;
    let docs_in_file = docs.len();
    let pool_groups = match fewshot_path {
        Some(pool) => Some(by_subject(read_user_docs(pool, template)?)),
        None => None,
    };
    let exclude = pool_groups.is_none();
    let sampler = if template == Template::Mmlu && !exclude {
        SamplerKind::FirstN
    } else {
        SamplerKind::Default
    };
    let mut prompts = Vec::new();
    for (subject, group) in by_subject(docs) {
        let pool: Vec<Value> = match &pool_groups {
            Some(groups) => groups.get(&subject).cloned().unwrap_or_default(),
            None => group.clone(),
        };
        let description = if template == Template::Mmlu && !subject.is_empty() {
            mmlu_description(&subject)
        } else {
            String::new()
        };
        let spec = DocsSpec {
            template,
            sampler,
            num_fewshot: options.num_fewshot,
            seed: options.seed,
            exclude_eval_doc: exclude,
            limit: options.limit,
        };
        let format = PromptFormat {
            description,
            ..PromptFormat::default()
        };
        let id_prefix = if subject.is_empty() {
            String::new()
        } else {
            format!("{subject}/")
        };
        let built = prompt_docs(&spec, &format, &group, &pool, &id_prefix).map_err(|error| {
            let which = if subject.is_empty() {
                String::new()
            } else {
                format!(" of subject {subject:?}")
            };
            EvalError::File {
                path: fewshot_path.unwrap_or(path).to_path_buf(),
                message: format!("question {}{which}: {}", error.index, error.message),
            }
        })?;
        prompts.extend(built);
    }
    let splits = Splits {
        eval: path.display().to_string(),
        fewshot: (options.num_fewshot > 0)
            .then(|| fewshot_path.unwrap_or(path).display().to_string()),
        exclude_eval_doc: exclude && options.num_fewshot > 0,
    };
    Ok((prompts, docs_in_file, splits))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(num_fewshot: usize) -> DocsOptions {
        DocsOptions::shots(num_fewshot)
    }

    #[test]
    fn mmlu_jsonl_with_dev_shots_per_subject() {
        let dir = tempfile::tempdir().unwrap();
        let test = dir.path().join("test.jsonl");
        let dev = dir.path().join("dev.jsonl");
        std::fs::write(
            &test,
            "{\"question\": \"2+2?\", \"choices\": [\"3\", \"4\"], \"answer\": 1, \"subject\": \"math\"}\n\n\
             {\"question\": \"Capital of France?\", \"choices\": [\"Paris\", \"Rome\"], \"answer\": 0, \"subject\": \"geo_graphy\"}\n",
        )
        .unwrap();
        std::fs::write(
            &dev,
            "{\"question\": \"1+1?\", \"choices\": [\"2\", \"3\"], \"answer\": 0, \"subject\": \"math\"}\n\
             {\"question\": \"Capital of Italy?\", \"choices\": [\"Oslo\", \"Rome\"], \"answer\": 1, \"subject\": \"geo_graphy\"}\n",
        )
        .unwrap();
        let (prompts, n, splits) =
            load_user_task(&test, Some(&dev), Template::Mmlu, &options(1)).unwrap();
        assert_eq!((n, splits.exclude_eval_doc), (2, false));
        let Prompted::Choice(first) = &prompts[0] else {
            panic!("expected choices")
        };
        // Groups in subject order: geo_graphy before math.
        assert_eq!(first.id, "geo_graphy/0");
        assert_eq!(
            first.choices[0].context,
            "The following are multiple choice questions (with answers) about geo graphy.\n\n\
             Capital of Italy?\nA. Oslo\nB. Rome\nAnswer: B\n\nCapital of France?\nA. Paris\nB. Rome\nAnswer:"
        );
        assert_eq!(first.choices[0].continuation, " A");
    }

    #[test]
    fn malformed_lines_name_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            (
                "{\"question\": \"q\", \"choices\": [\"a\", \"b\"], \"answer\": 2}",
                ":2: answer is 2",
            ),
            (
                "{\"question\": \"q\", \"choices\": [\"a\"], \"answer\": 0}",
                ":2: 1 choice(s)",
            ),
            (
                "{\"question\": \"q\", \"choice\": [\"a\", \"b\"], \"answer\": 0}",
                ":2: unknown field `choice`",
            ),
            (
                "{\"question\": \"q\", \"choices\": [\"a\", \"b\"], \"answer\": 0}",
                ":2: the logiqa template needs `context`",
            ),
            ("not json", ":2: expected"),
        ];
        for (index, (line, expected)) in cases.iter().enumerate() {
            let path = dir.path().join(format!("case{index}.jsonl"));
            let good = "{\"context\": \"p\", \"question\": \"q\", \"choices\": [\"a\", \"b\"], \"answer\": 0}";
            std::fs::write(&path, format!("{good}\n{line}\n")).unwrap();
            let message = read_user_docs(&path, Template::Logiqa)
                .unwrap_err()
                .to_string();
            assert!(
                message.contains(expected) && message.contains(&format!("case{index}.jsonl")),
                "{message}"
            );
        }
    }
}
