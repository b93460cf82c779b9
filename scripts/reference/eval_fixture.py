#!/usr/bin/env python3
"""Build the tiny model fixture for sheared's evaluation tests and score it with lm-evaluation-harness.

Writes tests/fixtures/eval/tiny_model/: a random LLaMA (vocab 300, hidden 16, 2 layers; HF transformers
format), a byte-level BPE tokenizer trained on the fixture questions (so that word-boundary merges like
"Ġcarbon" exist and context/continuation splitting matters), and `lm_eval_reference.json`: for every
request of the fixture tasks, the log-likelihood and is_greedy that lm-eval's HFLM computes, plus acc and
acc_norm per task computed the way lm-eval's `process_results` does (argmax of lls; argmax of
lls / len(choice) in characters).

Needs: torch + transformers (a virtual environment VENV) and lm-eval 0.4.13 on PYTHONPATH, e.g.
    pip download --no-deps lm-eval==0.4.13 accelerate==1.15.0 -d W; unpack both wheels into SITE
    PYTHONPATH=SITE VENV/bin/python scripts/reference/eval_fixture.py
"""
import gzip
import json
import os
import sys

import numpy as np
import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "eval")
OUT = os.path.join(FIXTURES, "tiny_model")


def read_requests(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_tasks():
    """(task name, [(doc id, gold, [(context, continuation, choice text)])]) in file order, twins skipped."""
    tasks = []
    for name, path in [
        ("arc_easy", "arc_easy/rc_0shot/requests.jsonl.gz"),
        ("winogrande", "winogrande/rc_0shot/requests.jsonl"),
    ]:
        docs = {}
        for line in read_requests(os.path.join(FIXTURES, path)):
            if line["doc_id"] >= 1_000_000:
                continue
            doc = docs.setdefault(line["doc_id"], {"gold": line["label"], "choices": {}})
            cont = line["request"]["continuation"]
            choices = line["doc"].get("choices")
            text = choices[line["idx"]] if choices else cont[1:] if cont.startswith(" ") else cont
            doc["choices"][line["idx"]] = (line["request"]["context"], cont, text)
        tasks.append((name, [(i, d["gold"], [d["choices"][k] for k in sorted(d["choices"])]) for i, d in docs.items()]))
    simple = []
    with open(os.path.join(FIXTURES, "simple.jsonl")) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            q = json.loads(line)
            delimiter = q.get("target_delimiter", " ")
            simple.append((number, q["gold"], [(q["context"], delimiter + c, c) for c in q["choices"]]))
    tasks.append(("simple", simple))
    return tasks


def build_tokenizer(texts):
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


def main():
    tasks = load_tasks()
    texts = [c + k for _, docs in tasks for _, _, choices in docs for c, k, _ in choices] * 3
    os.makedirs(OUT, exist_ok=True)
    tokenizer = build_tokenizer(texts)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<|endoftext|>")
    fast.save_pretrained(OUT)

    torch.manual_seed(1234)
    config = transformers.LlamaConfig(
        vocab_size=fast.vocab_size if len(fast) <= 300 else len(fast),
        hidden_size=16,
        intermediate_size=24,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=4,
        max_position_embeddings=256,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        initializer_range=0.5,  # far from uniform predictions, so argmax decisions are not ties
    )
    config.vocab_size = max(config.vocab_size, len(fast))
    model = transformers.LlamaForCausalLM(config).eval()
    model.save_pretrained(OUT, safe_serialization=True)

    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=OUT, device="cpu", dtype="float32", batch_size=4)
    reference = {"lm_eval_version": "0.4.13", "transformers_version": transformers.__version__, "tasks": {}}
    for name, docs in tasks:
        requests = [(c, k) for _, _, choices in docs for c, k, _ in choices]
        instances = [Instance(request_type="loglikelihood", doc={}, arguments=r, idx=i) for i, r in enumerate(requests)]
        results = lm.loglikelihood(instances, disable_tqdm=True)
        position = 0
        acc, acc_norm, per_request = [], [], []
        for doc_id, gold, choices in docs:
            lls = np.array([results[position + i][0] for i in range(len(choices))])
            lengths = np.array([float(len(text)) for _, _, text in choices])
            acc.append(1.0 if np.argmax(lls) == gold else 0.0)
            acc_norm.append(1.0 if np.argmax(lls / lengths) == gold else 0.0)
            for i, (context, continuation, _) in enumerate(choices):
                ll, greedy = results[position + i]
                per_request.append({"doc": str(doc_id), "choice": i, "context": context, "continuation": continuation,
                                    "log_likelihood": float(ll), "is_greedy": bool(greedy)})
            position += len(choices)
        reference["tasks"][name] = {"acc": float(np.mean(acc)), "acc_norm": float(np.mean(acc_norm)), "n": len(docs), "requests": per_request}
    with open(os.path.join(OUT, "lm_eval_reference.json"), "w") as f:
        json.dump(reference, f, indent=1)
    print(json.dumps({k: {m: v[m] for m in ("acc", "acc_norm", "n")} for k, v in reference["tasks"].items()}))


if __name__ == "__main__":
    sys.exit(main())
