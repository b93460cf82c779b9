//! The `eval` stage through the real binary and the runner: tokenize a tiny two-domain corpus with the
//! tiny model's tokenizer, evaluate the model on its eval split and on two tasks, then change only the
//! task limit and check that tokenize is reused while eval reruns.

mod common;

use std::path::PathBuf;

use common::{eval_fixtures as fixtures, sheared_ok as sheared};

use serde_json::Value;

/// `(stage, event)` pairs of an NDJSON run.
fn events(ndjson: &str) -> Vec<(String, String)> {
    ndjson
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .map(|event| {
            (
                event["stage"].as_str().unwrap_or("").to_string(),
                event["event"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[test]
fn eval_stage_runs_through_the_runner_and_matches_lm_eval() {
    let project = tempfile::tempdir().unwrap();
    let dir = project.path();
    for (domain, words) in [
        (
            "web",
            "the people of the nation gather in the city to hear the news of the day",
        ),
        ("code", "fn main() { let x = 1; println!(\"{}\", x + 2); }"),
    ] {
        let lines: String = (0..12)
            .map(|i| {
                format!(
                    "{{\"text\": \"{} {i} {}\"}}\n",
                    words.replace('"', "\\\""),
                    words.replace('"', "\\\"")
                )
            })
            .collect();
        std::fs::write(dir.join(format!("{domain}.jsonl")), lines).unwrap();
    }
    let f = fixtures();
    let f = f.display();
    let recipe = format!(
        "name = \"eval-e2e\"\n\n\
         [stages.tokens]\nkind = \"tokenize\"\ndomains = {{ web = {{ path = \"web.jsonl\" }}, code = {{ path = \"code.jsonl\" }} }}\n\
         tokenizer = {{ path = \"{f}/tiny_model/tokenizer.json\" }}\nbos_token = \"<s>\"\neos_token = \"</s>\"\nseq_len = 16\neval_documents = 3\n\n\
         [stages.eval]\nkind = \"eval\"\nmodel = {{ path = \"{f}/tiny_model\" }}\ndata = {{ stage = \"tokens\" }}\nseq_len = 16\nsequences_per_domain = 4\n\
         tasks.arc = {{ source = {{ path = \"{f}/arc_easy/rc_0shot\" }}, limit = 3 }}\ntasks.simple = {{ path = \"{f}/simple.jsonl\" }}\n"
    );
    std::fs::write(dir.join("eval.toml"), recipe).unwrap();

    let first = events(&sheared(dir, &["run", "eval.toml", "--json"]));
    assert!(
        first.contains(&("eval".into(), "committed".into())),
        "{first:?}"
    );
    let out = PathBuf::from(sheared(dir, &["path", "eval.toml", "eval"]).trim());
    let metrics: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    for domain in ["web", "code"] {
        let loss = metrics["domains"][domain]["loss"].as_f64().unwrap();
        assert!(loss.is_finite() && loss > 0.0, "{domain}: {metrics}");
        assert!(metrics["domains"][domain]["tokens"].as_u64().unwrap() >= 16);
    }
    // The same three ARC questions lm-eval scored in tests/fixtures/eval/tiny_model/lm_eval_reference.json.
    let reference: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("tiny_model/lm_eval_reference.json")).unwrap(),
    )
    .unwrap();
    for task in ["arc", "simple"] {
        let expected = &reference["tasks"][if task == "arc" { "arc_easy" } else { "simple" }];
        assert_eq!(metrics["tasks"][task]["acc"], expected["acc"], "{task}");
        assert_eq!(
            metrics["tasks"][task]["acc_norm"], expected["acc_norm"],
            "{task}"
        );
        assert_eq!(metrics["tasks"][task]["n"], expected["n"], "{task}");
    }
    assert!(metrics["parameters"]["total"].as_u64().unwrap() > 0);

    // Stage logs stay at `info`: the tokenizers crate logs several trace lines per encoded text, and
    // an unfiltered stage log once grew to gigabytes during one eval and slowed it down.
    for entry in walk(&dir.join("cache/logs")) {
        let log = std::fs::read_to_string(&entry).unwrap();
        assert!(
            !log.contains("] TRACE ") && !log.contains("] DEBUG "),
            "{}: {} bytes, starts {}",
            entry.display(),
            log.len(),
            &log[..log.len().min(2000)]
        );
    }

    let second = events(&sheared(
        dir,
        &[
            "run",
            "eval.toml",
            "--json",
            "--set",
            "stages.eval.tasks.arc.limit=2",
        ],
    ));
    assert!(
        second.contains(&("tokens".into(), "cached".into())),
        "{second:?}"
    );
    assert!(
        second.contains(&("eval".into(), "committed".into())),
        "{second:?}"
    );
    let third = events(&sheared(
        dir,
        &[
            "run",
            "eval.toml",
            "--json",
            "--set",
            "stages.eval.tasks.arc.limit=2",
        ],
    ));
    assert!(
        third
            .iter()
            .all(|(_, event)| event != "committed" && event != "started"),
        "{third:?}"
    );
}
