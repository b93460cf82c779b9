//! End-to-end tests of the `prune` and `consolidate` stages on a tiny corpus and model.

use std::path::Path;

use burn::tensor::{Device, Int, Tensor, TensorData};

use super::fixtures::{fixture, run_stage, run_stage_with};
use super::{PruneStage, read_final_masks};
use crate::model::hf::testing::f32_values;
use crate::model::load_hf;
use crate::model::precision::Precision;
use crate::model::slice::consolidate;
use crate::progress::testing::CancelAtStep;
use crate::stage::{CancelFlag, NullReporter, Settings, StageError};
use crate::stages::consolidate::ConsolidateStage;

fn prune_table(method: &str, steps: usize) -> String {
    format!(
        "model = {{ path = \"m\" }}\ndata = {{ stage = \"tok\" }}\nmethod = \"{method}\"\nsteps = {steps}\nbatch_size = 2\n\
         seq_len = 8\neval_every = 2\neval_batches = 1\ncheckpoint_every = 2\nmask_lr = 0.5\nlambda_lr = 0.5\n\
         loading = {{ policy = \"dynamic\", reference = {{ web = 2.0, code = 4.0 }} }}\n\
         target = {{ layers = 1, hidden = 8, heads = 2, intermediate = 12 }}\n"
    )
}

fn ids(vocab: usize, device: &Device) -> Tensor<2, Int> {
    let values: Vec<i64> = (0..12).map(|i| ((i * 5 + 1) % vocab) as i64).collect();
    Tensor::from_data(TensorData::new(values, [2, 6]), device)
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

#[test]
fn l0_prune_reaches_the_exact_target_and_consolidates_equivalently() {
    let fx = fixture();
    let out = fx.root.path().join("pruned");
    let scratch = fx.root.path().join("scratch");
    let inputs = [("model", fx.model.as_path()), ("data", fx.data.as_path())];
    run_stage(
        &PruneStage,
        &prune_table("l0", 4),
        &inputs,
        &out,
        &scratch,
        &NullReporter,
        CancelFlag::default(),
    )
    .unwrap();

    let (masks, report) = read_final_masks(&out).unwrap();
    assert_eq!(report.final_shape, report.target);
    assert_scores_rank_the_kept_units(&report, "l0");
    assert!(report.scores["head"].score.starts_with("z_loga"));
    // The weights trained together with the masks.
    assert!(read(&out.join("model.safetensors")) != read(&fx.model.join("model.safetensors")));
    assert_eq!(
        (
            report.target.layers,
            report.target.hidden,
            report.target.heads,
            report.target.intermediate
        ),
        (1, 8, 2, 12)
    );
    assert!(report.expected_parameters.is_some());
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = metrics
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines.iter().filter(|l| l.get("lm_loss").is_some()).count(),
        4
    );
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.get("eval_loss").is_some())
            .count(),
        2
    );
    for key in [
        "loss",
        "lagrangian",
        "expected_sparsity",
        "target_sparsity",
        "expected_parameters",
        "lr",
        "domain_weights",
        "tokens_per_s",
    ] {
        assert!(lines[0].get(key).is_some(), "metrics lack `{key}`");
    }
    // Dynamic loading moved the weights after the first evaluation (step 2) and logged the update.
    let weights_at = |index: usize| {
        lines
            .iter()
            .filter(|l| l.get("lm_loss").is_some())
            .nth(index)
            .unwrap()["domain_weights"]
            .clone()
    };
    assert_eq!(weights_at(0), weights_at(1));
    assert_ne!(weights_at(1), weights_at(2));
    assert!(lines.iter().any(|l| l.get("loading_update").is_some()));
    // Lagrangian warm-up: the target starts at 0 and rises.
    assert_eq!(lines[0]["target_sparsity"]["hidden"], 0.0);

    // The pruned model, masked in eval mode, equals the consolidated model.
    assert_dense_equals_masked(&fx, &out, &masks, "l0");

    // The consolidate stage writes exactly the target shape, tokenizer included.
    let dense_dir = fx.root.path().join("dense");
    run_stage(
        &ConsolidateStage,
        "model = { stage = \"prune\" }",
        &[("model", out.as_path())],
        &dense_dir,
        &fx.root.path().join("scratch2"),
        &NullReporter,
        CancelFlag::default(),
    )
    .unwrap();
    let config = crate::model::LlamaConfig::load(&dense_dir.join("config.json")).unwrap();
    assert_eq!(
        (
            config.num_hidden_layers,
            config.hidden_size,
            config.num_attention_heads,
            config.intermediate_size,
            config.head_dim
        ),
        (1, 8, 2, 12, 4)
    );
    assert!(config.layer_widths.is_none());
    assert!(dense_dir.join("tokenizer.json").is_file());
}

#[test]
fn killed_and_resumed_prune_ends_bit_identical() {
    killed_and_resumed_prune_ends_bit_identical_in(Precision::Fp32);
}

/// In bf16 the weights, masks and Lagrange multipliers stay fp32, so resuming is exact as well.
#[test]
fn killed_and_resumed_bf16_prune_ends_bit_identical() {
    killed_and_resumed_prune_ends_bit_identical_in(Precision::Bf16);
}

fn killed_and_resumed_prune_ends_bit_identical_in(precision: Precision) {
    killed_and_resumed_run_ends_bit_identical(precision, &prune_table("l0", 5));
}

/// With gradient accumulation the resumed run also redraws the same micro-batches and mask noise.
#[test]
fn killed_and_resumed_prune_with_grad_accum_ends_bit_identical() {
    let table = prune_table("l0", 5).replace("batch_size = 2", "batch_size = 4\ngrad_accum = 2");
    assert!(table.contains("grad_accum = 2"));
    killed_and_resumed_run_ends_bit_identical(Precision::Fp32, &table);
}

fn killed_and_resumed_run_ends_bit_identical(precision: Precision, table: &str) {
    let settings = Settings {
        precision,
        ..Settings::for_tests()
    };
    let fx = fixture();
    let inputs = [("model", fx.model.as_path()), ("data", fx.data.as_path())];
    let straight = fx.root.path().join("straight");
    run_stage_with(
        &settings,
        &PruneStage,
        table,
        &inputs,
        &straight,
        &fx.root.path().join("s1"),
        &NullReporter,
        CancelFlag::default(),
    )
    .unwrap();

    let resumed = fx.root.path().join("resumed");
    let scratch = fx.root.path().join("s2");
    let cancel = CancelFlag::default();
    let killer = CancelAtStep::new(3, &cancel);
    let first = run_stage_with(
        &settings,
        &PruneStage,
        table,
        &inputs,
        &resumed,
        &scratch,
        &killer,
        cancel,
    );
    assert!(matches!(first, Err(StageError::Cancelled)), "{first:?}");
    assert!(scratch.join("checkpoints").join("step-000000002").is_dir());
    std::fs::remove_dir_all(&resumed).unwrap();
    run_stage_with(
        &settings,
        &PruneStage,
        table,
        &inputs,
        &resumed,
        &scratch,
        &NullReporter,
        CancelFlag::default(),
    )
    .unwrap();

    for file in ["model.safetensors", "masks.safetensors"] {
        assert!(
            read(&straight.join(file)) == read(&resumed.join(file)),
            "{file} differs after resume"
        );
    }
    let strip = |path: &Path| -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| {
                let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                v.as_object_mut().unwrap().remove("tokens_per_s");
                v
            })
            .collect()
    };
    assert_eq!(
        strip(&straight.join("metrics.jsonl")),
        strip(&resumed.join("metrics.jsonl"))
    );
}

#[test]
fn baselines_go_straight_to_consolidation() {
    let fx = fixture();
    for method in ["magnitude", "random"] {
        let out = fx.root.path().join(method);
        let inputs = [("model", fx.model.as_path())];
        let table = format!(
            "model = {{ path = \"m\" }}\nmethod = \"{method}\"\ntarget = {{ layers = 1, hidden = 12, heads = 1, intermediate = 10 }}\n"
        );
        run_stage(
            &PruneStage,
            &table,
            &inputs,
            &out,
            &fx.root.path().join("s"),
            &NullReporter,
            CancelFlag::default(),
        )
        .unwrap();
        let metrics: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap())
                .unwrap();
        assert_eq!(
            (metrics["tokens"].as_u64(), metrics["method"].as_str()),
            (Some(0), Some(method))
        );
        let dense = fx.root.path().join(format!("{method}-dense"));
        run_stage(
            &ConsolidateStage,
            "model = { stage = \"p\" }",
            &[("model", out.as_path())],
            &dense,
            &fx.root.path().join("s"),
            &NullReporter,
            CancelFlag::default(),
        )
        .unwrap();
        let config = crate::model::LlamaConfig::load(&dense.join("config.json")).unwrap();
        assert_eq!(
            (
                config.num_hidden_layers,
                config.hidden_size,
                config.num_attention_heads,
                config.intermediate_size
            ),
            (1, 12, 1, 10)
        );
        // Kept values are 1: the dense weights are a sub-matrix of the source.
        let (masks, report) = read_final_masks(&out).unwrap();
        assert_scores_rank_the_kept_units(&report, method);
        assert!(masks.hidden.unwrap().iter().all(|&v| v == 0.0 || v == 1.0));
    }
}

/// `layer-drop` keeps whole layers (the first, or those of highest block influence on the data),
/// prunes the other dimensions by magnitude to the target, and the dense model computes what the
/// masked one computes.
#[test]
fn layer_drop_keeps_whole_layers_and_consolidates_equivalently() {
    let fx = fixture();
    let target = "target = { layers = 1, hidden = 12, heads = 1, intermediate = 10 }\n";
    for (name, extra) in [
        ("top", String::new()),
        (
            "influence",
            "drop_layers_by = \"block_influence\"\ndata = { stage = \"tok\" }\nbatch_size = 2\nseq_len = 8\n\
             calibration_batches = 2\n"
                .to_string(),
        ),
    ] {
        let table = format!("model = {{ path = \"m\" }}\nmethod = \"layer-drop\"\n{target}{extra}");
        let masks = prune_dense_equals_masked(&fx, &table, &format!("layer-drop-{name}"));
        let layers = masks.layer.clone().unwrap();
        assert_eq!(layers.iter().filter(|&&kept| kept == 1.0).count(), 1);
        if name == "top" {
            assert_eq!(layers, [1.0, 0.0], "the top layer goes first");
        }
    }

    // Bad combinations are refused before compute, naming the key.
    assert_refused(
        &fx,
        &[
            (
                format!(
                    "model = {{ path = \"m\" }}\nmethod = \"layer-drop\"\ndrop_layers_by = \"block_influence\"\n{target}"
                ),
                "data",
            ),
            (
                format!(
                    "model = {{ path = \"m\" }}\nmethod = \"magnitude\"\ndrop_layers_by = \"block_influence\"\n{target}"
                ),
                "drop_layers_by",
            ),
        ],
    );
}

#[test]
fn a_target_larger_than_the_source_fails_before_compute() {
    let fx = fixture();
    let out = fx.root.path().join("big");
    let table = prune_table("l0", 4).replace("hidden = 8", "hidden = 64");
    let inputs = [("model", fx.model.as_path()), ("data", fx.data.as_path())];
    let error = run_stage(
        &PruneStage,
        &table,
        &inputs,
        &out,
        &fx.root.path().join("s"),
        &NullReporter,
        CancelFlag::default(),
    )
    .unwrap_err();
    match error {
        StageError::Config { key, message } => {
            assert_eq!(key, "target.hidden");
            assert!(message.contains("larger than the source"), "{message}");
        }
        other => panic!("{other}"),
    }
    assert!(!out.join("model.safetensors").exists());
}

#[test]
fn previews_predict_the_consolidated_model_exactly() {
    use crate::stage::{PreviewInput, PreviewInputs, Stage};
    let fx = fixture();
    let table: toml::Table = "model = { path = \"m\" }\nmethod = \"magnitude\"\n\
         target = { layers = 1, hidden = 12, heads = 1, intermediate = 10 }\n"
        .parse()
        .unwrap();
    let config = PruneStage.normalize(&table).unwrap();
    fn with_path<'a>(key: &str, path: &'a Path) -> PreviewInputs<'a> {
        PreviewInputs {
            precision: Precision::Fp32,
            inputs: [(
                key.to_string(),
                PreviewInput {
                    path: Some(path),
                    upstream: None,
                },
            )]
            .into(),
        }
    }
    let prune_preview = PruneStage.preview(&config, &with_path("model", &fx.model));
    assert_eq!(
        prune_preview.parameters["source"],
        fx.config.parameter_counts().total
    );

    let out = fx.root.path().join("pruned");
    run_stage(
        &PruneStage,
        &toml::to_string(&table).unwrap(),
        &[("model", fx.model.as_path())],
        &out,
        &fx.root.path().join("s"),
        &NullReporter,
        CancelFlag::default(),
    )
    .unwrap();
    let dense = fx.root.path().join("dense");
    run_stage(
        &ConsolidateStage,
        "model = { stage = \"p\" }",
        &[("model", out.as_path())],
        &dense,
        &fx.root.path().join("s2"),
        &NullReporter,
        CancelFlag::default(),
    )
    .unwrap();
    let written = crate::model::LlamaConfig::load(&dense.join("config.json")).unwrap();
    assert_eq!(
        prune_preview.parameters["target"],
        written.parameter_counts().total
    );
    assert_eq!(prune_preview.consolidated_config.as_ref(), Some(&written));

    // Consolidate's preview: from the prune stage's preview before it runs, from its output after.
    let consolidate_config = ConsolidateStage
        .normalize(&"model = { stage = \"p\" }".parse().unwrap())
        .unwrap();
    let before = PreviewInputs {
        precision: Precision::Fp32,
        inputs: [(
            "model".to_string(),
            PreviewInput {
                path: None,
                upstream: Some(&prune_preview),
            },
        )]
        .into(),
    };
    let after = with_path("model", &out);
    for inputs in [before, after] {
        let preview = ConsolidateStage.preview(&consolidate_config, &inputs);
        assert_eq!(
            preview.parameters["model"],
            written.parameter_counts().total
        );
        assert_eq!(preview.model_config.as_ref(), Some(&written));
    }
}

#[test]
fn a_source_other_than_expect_source_fails_before_compute() {
    let fx = fixture();
    let out = fx.root.path().join("wrong");
    let hidden = fx.config.hidden_size;
    let table = format!(
        "{}expect_source = {{ hidden_size = {}, num_hidden_layers = {} }}\n",
        prune_table("l0", 4),
        hidden * 2,
        fx.config.num_hidden_layers
    );
    let inputs = [("model", fx.model.as_path()), ("data", fx.data.as_path())];
    let error = run_stage(
        &PruneStage,
        &table,
        &inputs,
        &out,
        &fx.root.path().join("s"),
        &NullReporter,
        CancelFlag::default(),
    )
    .unwrap_err();
    match error {
        StageError::Config { key, message } => {
            assert_eq!(key, "expect_source.hidden_size");
            assert!(
                message.contains(&format!("hidden_size = {hidden}"))
                    && message.contains(&(hidden * 2).to_string()),
                "{message}"
            );
        }
        other => panic!("{other}"),
    }
    assert!(!out.join("model.safetensors").exists());

    // The matching expectation passes.
    let matching = format!(
        "{}expect_source = {{ hidden_size = {hidden}, num_hidden_layers = {}, tie_word_embeddings = {} }}\n",
        prune_table("l0", 1),
        fx.config.num_hidden_layers,
        fx.config.tie_word_embeddings
    );
    run_stage(
        &PruneStage,
        &matching,
        &inputs,
        &out,
        &fx.root.path().join("s3"),
        &NullReporter,
        CancelFlag::default(),
    )
    .unwrap();
}

/// Activation checkpointing changes memory, not the pruning: the same losses, weights, mask logits
/// and Lagrange multipliers as the plain run (up to float summation order), with micro-batches.
#[test]
fn activation_checkpointing_prunes_the_same_way() {
    let fx = fixture();
    let inputs = [("model", fx.model.as_path()), ("data", fx.data.as_path())];
    let base = prune_table("l0", 4).replace("batch_size = 2\n", "batch_size = 2\ngrad_accum = 2\n");
    let mut outputs = Vec::new();
    for (name, extra) in [
        ("plain", ""),
        ("checkpointed", "activation_checkpointing = true\n"),
    ] {
        let out = fx.root.path().join(name);
        run_stage(
            &PruneStage,
            &format!("{base}{extra}"),
            &inputs,
            &out,
            &fx.root.path().join(format!("{name}-scratch")),
            &NullReporter,
            CancelFlag::default(),
        )
        .unwrap();
        let lm_losses: Vec<f64> = std::fs::read_to_string(out.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .filter_map(|line| {
                let record: serde_json::Value = serde_json::from_str(line).unwrap();
                record["lm_loss"].as_f64()
            })
            .collect();
        outputs.push((
            lm_losses,
            f32_values(&out.join("model.safetensors")),
            f32_values(&out.join("masks.safetensors")),
        ));
    }
    let (plain, checkpointed) = (&outputs[0], &outputs[1]);
    assert_eq!(plain.0.len(), 4, "{:?}", plain.0);
    for (a, b) in plain.0.iter().zip(&checkpointed.0) {
        assert!(
            (a - b).abs() < 1e-5 * a.abs(),
            "lm_loss {:?} vs {:?}",
            plain.0,
            checkpointed.0
        );
    }
    for (what, a, b) in [
        ("weights", &plain.1, &checkpointed.1),
        ("masks", &plain.2, &checkpointed.2),
    ] {
        assert_eq!(a.len(), b.len());
        let difference = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(difference < 1e-4, "{what} differ by up to {difference}");
    }
}

/// `taylor` scores units by `|w · ∂loss/∂w|` on calibration batches of the stage's data, reaches the
/// exact target, and the dense model computes what the masked one computes; without data, or with
/// `batch_size` not a multiple of `grad_accum`, it is refused before compute.
#[test]
fn taylor_reaches_the_target_and_consolidates_equivalently() {
    let fx = fixture();
    let target = "target = { layers = 1, hidden = 12, heads = 1, intermediate = 10 }\n";
    let table = format!(
        "model = {{ path = \"m\" }}\nmethod = \"taylor\"\ndata = {{ stage = \"tok\" }}\nbatch_size = 4\n\
         grad_accum = 2\nseq_len = 8\ncalibration_batches = 2\n{target}"
    );
    prune_dense_equals_masked(&fx, &table, "taylor");
    let metrics: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fx.root.path().join("taylor/metrics.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(metrics["method"], "taylor");

    assert_refused(
        &fx,
        &[
            (
                format!("model = {{ path = \"m\" }}\nmethod = \"taylor\"\n{target}"),
                "data",
            ),
            (
                format!(
                    "model = {{ path = \"m\" }}\nmethod = \"taylor\"\ndata = {{ stage = \"tok\" }}\nbatch_size = 3\n\
                     grad_accum = 2\n{target}"
                ),
                "grad_accum",
            ),
            (
                format!(
                    "model = {{ path = \"m\" }}\nmethod = \"magnitude\"\ncalibration_batches = 2\n{target}"
                ),
                "calibration_batches",
            ),
        ],
    );
}

/// Runs a one-shot prune with `table` into `root/out_name`, checks that it reached its target and
/// that the consolidated dense model computes what the masked one computes (1e-4); its masks.
fn prune_dense_equals_masked(
    fx: &super::fixtures::Fixture,
    table: &str,
    out_name: &str,
) -> crate::model::l0::HostMasks {
    let out = fx.root.path().join(out_name);
    let inputs = [("model", fx.model.as_path()), ("data", fx.data.as_path())];
    run_stage(
        &PruneStage,
        table,
        &inputs,
        &out,
        &fx.root.path().join("s"),
        &NullReporter,
        CancelFlag::default(),
    )
    .unwrap();
    let (masks, report) = read_final_masks(&out).unwrap();
    assert_eq!(report.final_shape, report.target, "{out_name}");
    // pruning.json names the kept units: as many per row as it counts, the mask's nonzero entries.
    for (module, counts) in &report.final_kept {
        let rows = &report.kept_indices[module];
        let lengths: Vec<usize> = rows.iter().map(Vec::len).collect();
        assert_eq!(&lengths, counts, "{out_name}: {module}");
    }
    let layers = masks.layer.as_ref().unwrap();
    let kept_layers: Vec<usize> = (0..layers.len()).filter(|&i| layers[i] != 0.0).collect();
    assert_eq!(report.kept_indices["layer"], [kept_layers], "{out_name}");
    assert_scores_rank_the_kept_units(&report, out_name);
    assert_dense_equals_masked(fx, &out, &masks, out_name);
    masks
}

/// `pruning.json` scores every unit of every pruned module, says what the score is, and each
/// row's kept units are exactly its highest scores.
fn assert_scores_rank_the_kept_units(report: &super::outputs::PruningReport, label: &str) {
    assert_eq!(
        report.scores.keys().collect::<Vec<_>>(),
        report.kept_indices.keys().collect::<Vec<_>>(),
        "{label}"
    );
    for (module, kept_rows) in &report.kept_indices {
        let scores = &report.scores[module];
        assert!(!scores.score.is_empty(), "{label}: {module}");
        assert_eq!(scores.rows.len(), kept_rows.len(), "{label}: {module}");
        for (row, kept) in scores.rows.iter().zip(kept_rows) {
            let top = super::heuristics::keep_top(row, kept.len());
            let top: Vec<usize> = (0..top.len()).filter(|&i| top[i] != 0.0).collect();
            assert_eq!(&top, kept, "{label}: {module} scores {row:?}");
        }
    }
}

/// The prune output in `out`, masked in eval mode, computes what its consolidated model computes
/// (1e-4).
fn assert_dense_equals_masked(
    fx: &super::fixtures::Fixture,
    out: &Path,
    masks: &crate::model::l0::HostMasks,
    label: &str,
) {
    let device = crate::model::device::for_tests();
    let full = load_hf(out, &device).unwrap();
    let masked = full.forward(
        ids(fx.config.vocab_size, &device),
        Some(&masks.to_masks(&device)),
    );
    let dense = consolidate(&full, masks).unwrap();
    let plain = dense.forward(ids(fx.config.vocab_size, &device), None);
    let difference: f32 = (masked - plain).abs().max().into_scalar();
    assert!(difference < 1e-4, "{label}: {difference}");
}

/// Each `(table, key)` is refused before compute with a config error naming `key`.
fn assert_refused(fx: &super::fixtures::Fixture, cases: &[(String, &str)]) {
    let inputs = [("model", fx.model.as_path()), ("data", fx.data.as_path())];
    for (table, key) in cases {
        let error = run_stage(
            &PruneStage,
            table,
            &inputs,
            &fx.root.path().join("refused"),
            &fx.root.path().join("s"),
            &NullReporter,
            CancelFlag::default(),
        )
        .unwrap_err();
        match error {
            StageError::Config { key: got, .. } => assert_eq!(got, *key, "{table}"),
            other => panic!("{other}"),
        }
    }
}
