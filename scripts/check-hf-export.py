#!/usr/bin/env python3
"""Load a model folder written by sheared with transformers and report what transformers says.

Usage: check-hf-export.py DIR [--trust-remote-code]
Prints every warning/log line transformers emits while loading (there should be none), the model
class, and, if DIR/reference.json exists ({"input_ids", "logits"} as written by the parity
fixtures), the max |logit difference| between transformers and the reference.
Exit status 1 if anything was logged or the logits differ by more than 1e-4.
"""
import io
import json
import logging
import os
import sys
import warnings

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer


def main():
    folder = sys.argv[1]
    trust = "--trust-remote-code" in sys.argv
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    transformers.logging.set_verbosity_warning()
    transformers.logging.add_handler(handler)
    transformers.logging.disable_progress_bar()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, trust_remote_code=trust)
        if os.path.exists(os.path.join(folder, "tokenizer.json")):
            AutoTokenizer.from_pretrained(folder)
    problems = [str(w.message) for w in caught] + [line for line in stream.getvalue().splitlines() if line.strip()]
    print("class:", type(model).__name__)
    for problem in problems:
        print("logged:", problem)
    failed = bool(problems)
    reference = os.path.join(folder, "reference.json")
    if os.path.exists(reference):
        data = json.load(open(reference))
        ids = torch.tensor(data["input_ids"])
        with torch.no_grad():
            logits = model(input_ids=ids).logits.flatten()
        difference = (logits - torch.tensor(data["logits"])).abs().max().item()
        print("max |logit difference| vs reference.json:", difference)
        failed |= difference > 1e-4
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
