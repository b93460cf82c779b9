//! Task scores of a tiny LLaMA match lm-evaluation-harness 0.4.13 on the same model, tokenizer and requests.
//!
//! The fixture (tests/fixtures/eval/tiny_model) and its `lm_eval_reference.json` come from
//! `scripts/reference/eval_fixture.py`, which runs lm-eval's own `HFLM.loglikelihood` with transformers.

use std::path::{Path, PathBuf};

use serde_json::Value;
use sheared::eval::{LlamaScorer, TaskFormat, evaluate_task, load_task};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/eval")
}

#[test]
fn log_likelihoods_and_accuracies_match_lm_eval_harness() {
    let model_dir = fixtures().join("tiny_model");
    let device = sheared::model::device::for_tests();
    let model = sheared::model::load_hf(&model_dir, &device).unwrap();
    let tokenizer = tokenizers::Tokenizer::from_file(model_dir.join("tokenizer.json")).unwrap();
    let reference: Value = serde_json::from_str(
        &std::fs::read_to_string(model_dir.join("lm_eval_reference.json")).unwrap(),
    )
    .unwrap();
    let prefix = model.config().bos_token_id;
    for (name, file) in [
        ("arc_easy", "arc_easy/rc_0shot"),
        ("winogrande", "winogrande/rc_0shot"),
        ("simple", "simple.jsonl"),
    ] {
        let task = load_task(&fixtures().join(file), TaskFormat::Auto, None).unwrap();
        let expected = &reference["tasks"][name];
        // A small token budget forces several batches with padding; a large one puts everything in one.
        for batch_tokens in [48, 100_000] {
            let mut scorer = LlamaScorer::new(&model, device.clone(), 256, batch_tokens);
            let (result, questions) =
                evaluate_task(&task, &tokenizer, &mut scorer, prefix, false).unwrap();
            let ours: Vec<f64> = questions
                .iter()
                .flat_map(|q| q.log_likelihoods.clone())
                .collect();
            let theirs: Vec<f64> = expected["requests"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["log_likelihood"].as_f64().unwrap())
                .collect();
            assert_eq!(ours.len(), theirs.len(), "{name}");
            for (index, (a, b)) in ours.iter().zip(&theirs).enumerate() {
                assert!(
                    (a - b).abs() < 1e-4 * b.abs().max(1.0),
                    "{name} request {index}: ours {a}, lm-eval {b}"
                );
            }
            let greedy: Vec<bool> = questions.iter().flat_map(|q| q.is_greedy.clone()).collect();
            let expected_greedy: Vec<bool> = expected["requests"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["is_greedy"].as_bool().unwrap())
                .collect();
            assert_eq!(greedy, expected_greedy, "{name}");
            assert_eq!(result.acc, expected["acc"].as_f64().unwrap(), "{name} acc");
            assert_eq!(
                result.acc_norm,
                expected["acc_norm"].as_f64(),
                "{name} acc_norm"
            );
            assert_eq!(result.n as u64, expected["n"].as_u64().unwrap());
        }
    }
}

#[test]
fn unconditional_twins_are_scored_on_request() {
    let model_dir = fixtures().join("tiny_model");
    let device = sheared::model::device::for_tests();
    let model = sheared::model::load_hf(&model_dir, &device).unwrap();
    let tokenizer = tokenizers::Tokenizer::from_file(model_dir.join("tokenizer.json")).unwrap();
    let task = load_task(
        &fixtures().join("arc_easy/rc_0shot"),
        TaskFormat::Auto,
        Some(2),
    )
    .unwrap();
    let mut scorer = LlamaScorer::new(&model, device, 256, 4096);
    let (result, questions) = evaluate_task(&task, &tokenizer, &mut scorer, Some(1), true).unwrap();
    assert_eq!((result.n, result.requests), (2, 16));
    assert!(result.acc_uncond.is_some() && questions.iter().all(|q| q.prediction_uncond.is_some()));
}
