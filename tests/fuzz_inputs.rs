//! Mutation fuzzing of every reader that takes a user's file: recipes (with `extends` and `[sweep]`),
//! GGUF packages, Hugging Face model folders (config.json + safetensors), eval task files (request
//! files and simple lines), user task files (MMLU/LogiQA style) and corpus JSONL.
//!
//! Each target starts from a valid fixture and applies a few hundred seeded mutations (bit flips,
//! truncations, a size field set to a huge number, deleted or duplicated ranges, inserted tokens).
//! Whatever the mutant, the reader must return (`Ok`, or an error that names the file); it must
//! not panic, and must not try to allocate what a corrupt size field claims (that would abort the
//! test process). The seeds are fixed, so a failure names a seed that reproduces it; `FUZZ_CASES`
//! raises the number of mutants per target for a longer run.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use sheared::eval::tasks::{TaskFormat, load_task};
use sheared::eval::templates::Template;
use sheared::eval::user_tasks::read_user_docs;
use sheared::model::gguf::{GgufFile, config_from_metadata, tokenizer_json};
use sheared::plan::Plan;
use sheared::recipe::{LoadOptions, load};
use sheared::stages::builtin;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Mutants per target (default 500; `FUZZ_CASES=5000` for a long run).
fn cases() -> u64 {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(500)
}

/// Seeds that found a bug in a longer run, replayed on every run (each is a regression test).
/// GGUF 2060 and 2961: a tensor's dims whose product overflowed u64 (`element_count` panicked).
const GGUF_REGRESSIONS: &[u64] = &[2060, 2961];

/// Tokens that parsers treat specially, for insertion.
const TOKENS: &[&[u8]] = &[
    b"\"",
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b"=",
    b"\n",
    b"\\",
    b"nan",
    b"inf",
    b"-1",
    b"0",
    b"99999999999999999999",
    b"1e308",
    b"\xff\xfe",
    b"\x00",
    b"[[",
    b"{ stage = \"x\" }",
    b"extends = \"nope.toml\"\n",
    b"[sweep]\n",
];

/// One mutation of `bytes`.
fn mutate(rng: &mut ChaCha8Rng, bytes: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    let len = out.len().max(1);
    match rng.random_range(0..6) {
        0 => {
            for _ in 0..rng.random_range(1..8) {
                let at = rng.random_range(0..len);
                if let Some(byte) = out.get_mut(at) {
                    *byte ^= 1 << rng.random_range(0..8);
                }
            }
        }
        1 => out.truncate(rng.random_range(0..len)),
        2 => {
            // A size or count field claiming far more than the file holds.
            let at = rng.random_range(0..len);
            let value: u64 = match rng.random_range(0..3) {
                0 => u64::MAX,
                1 => 1 << rng.random_range(20..63),
                _ => rng.random(),
            };
            for (offset, byte) in value.to_le_bytes().into_iter().enumerate() {
                if let Some(slot) = out.get_mut(at + offset) {
                    *slot = byte;
                }
            }
        }
        3 => {
            let start = rng.random_range(0..len);
            let end = (start + rng.random_range(1..64)).min(out.len());
            if start < end {
                out.drain(start..end);
            }
        }
        4 => {
            let start = rng.random_range(0..len);
            let end = (start + rng.random_range(1..128)).min(out.len());
            if start < end {
                let copy = out[start..end].to_vec();
                let at = rng.random_range(0..len).min(out.len());
                out.splice(at..at, copy);
            }
        }
        _ => {
            let token = TOKENS[rng.random_range(0..TOKENS.len())];
            let at = rng.random_range(0..len).min(out.len());
            out.splice(at..at, token.iter().copied());
        }
    }
    out
}

/// Runs `read` on `cases()` mutants of `original` written to `path` (restored afterwards);
/// `read` returns `Err(message)` for a rejected input. Panics are collected with their seeds, and
/// so are error messages that do not name `named` (the file, or its folder).
fn fuzz(
    target: &str,
    path: &Path,
    named: &str,
    read: &dyn Fn() -> Result<(), String>,
) -> (u64, u64) {
    fuzz_seeds(target, path, named, read, &[])
}

/// [`fuzz`] with `regressions` replayed besides the `0..cases()` seeds.
fn fuzz_seeds(
    target: &str,
    path: &Path,
    named: &str,
    read: &dyn Fn() -> Result<(), String>,
    regressions: &[u64],
) -> (u64, u64) {
    let original = std::fs::read(path).unwrap();
    let mut problems = Vec::new();
    let (mut accepted, mut rejected) = (0, 0);
    let total = cases() + regressions.len() as u64;
    for seed in (0..cases()).chain(regressions.iter().copied()) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mutant = mutate(&mut rng, &original);
        std::fs::write(path, &mutant).unwrap();
        match catch_unwind(AssertUnwindSafe(read)) {
            Ok(Ok(())) => accepted += 1,
            Ok(Err(message)) => {
                rejected += 1;
                if !message.contains(named) {
                    problems.push(format!(
                        "seed {seed}: the error does not name {named}: {message}"
                    ));
                }
            }
            Err(panic) => {
                let text = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                problems.push(format!("seed {seed}: panicked: {text}"));
            }
        }
    }
    std::fs::write(path, &original).unwrap();
    assert!(
        problems.is_empty(),
        "{target}: {} of {} mutants misbehaved:\n{}",
        problems.len(),
        total,
        problems.join("\n")
    );
    assert!(
        rejected > 0,
        "{target}: no mutant was rejected; is the reader reading?"
    );
    (accepted, rejected)
}

/// Copies `from` (a file or a folder) into `to`.
fn copy_tree(from: &Path, to: &Path) {
    if from.is_dir() {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            copy_tree(&entry.path(), &to.join(entry.file_name()));
        }
    } else {
        std::fs::copy(from, to).unwrap();
    }
}

#[test]
fn recipes_with_extends_and_sweeps() {
    let dir = tempfile::tempdir().unwrap();
    copy_tree(&repo().join("pipelines"), &dir.path().join("pipelines"));
    copy_tree(&repo().join("recipes"), &dir.path().join("recipes"));
    for recipe in ["tiny.toml", "tiny-ablations.toml"] {
        let path = dir.path().join("recipes").join(recipe);
        let read = || -> Result<(), String> {
            let recipes =
                load(&path, &LoadOptions::default(), &builtin()).map_err(|e| e.to_string())?;
            Plan::build(recipes, &builtin()).map_err(|e| format!("{recipe}: {e}"))?;
            Ok(())
        };
        // A plan error names the recipe through its stages; a load error names the file.
        fuzz(recipe, &path, ".toml", &read);
    }
}

#[test]
fn gguf_packages() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.gguf");
    std::fs::copy(repo().join("tests/fixtures/chain/tiny.gguf"), &path).unwrap();
    let read = || -> Result<(), String> {
        let gguf = GgufFile::open(&path).map_err(|e| e.to_string())?;
        config_from_metadata(&gguf).map_err(|e| e.to_string())?;
        for info in &gguf.tensors {
            gguf.tensor_f32(info).map_err(|e| e.to_string())?;
        }
        tokenizer_json(&gguf).map_err(|message| format!("{}: {message}", path.display()))?;
        Ok(())
    };
    fuzz_seeds("gguf", &path, "model.gguf", &read, GGUF_REGRESSIONS);
}

#[test]
fn hugging_face_model_folders() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    copy_tree(&repo().join("tests/fixtures/parity/mha_untied"), &model);
    let device = sheared::model::device::for_tests();
    let read = || -> Result<(), String> {
        sheared::model::load_hf(&model, &device)
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    for file in [
        "config.json",
        "model.safetensors.index.json",
        "model-00002-of-00003.safetensors",
    ] {
        fuzz(file, &model.join(file), "model", &read);
    }
}

#[test]
fn eval_task_files() {
    let dir = tempfile::tempdir().unwrap();
    for (fixture, format) in [
        ("lambada.jsonl", TaskFormat::Auto),
        ("simple.jsonl", TaskFormat::Simple),
    ] {
        let path = dir.path().join(fixture);
        std::fs::copy(repo().join("tests/fixtures/eval").join(fixture), &path).unwrap();
        let read = || -> Result<(), String> {
            load_task(&path, format, Some(50))
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        fuzz(fixture, &path, fixture, &read);
    }
    let path = dir.path().join("logiqa.jsonl");
    std::fs::copy(repo().join("tests/fixtures/eval/logiqa.jsonl"), &path).unwrap();
    let read = || -> Result<(), String> {
        read_user_docs(&path, Template::Logiqa)
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    fuzz("logiqa.jsonl", &path, "logiqa.jsonl", &read);
}

#[test]
fn corpus_jsonl() {
    use sheared::data::source::{DocumentReader, SourceOptions};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("web.jsonl");
    let text: String = std::fs::read_to_string(repo().join("data/sample/web.jsonl"))
        .unwrap()
        .lines()
        .take(20)
        .map(|line| format!("{line}\n"))
        .collect();
    std::fs::write(&path, text).unwrap();
    let read = || -> Result<(), String> {
        for document in DocumentReader::new(vec![path.clone()], SourceOptions::default()) {
            document.map_err(|e| e.to_string())?;
        }
        Ok(())
    };
    fuzz("web.jsonl", &path, "web.jsonl", &read);
}
