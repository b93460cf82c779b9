#!/usr/bin/env python3
"""SmolLM2-135M-Instruct: sheared's GGUF import vs transformers' own GGUF import, on a fixed text.

Usage: compare-smollm2.py SHEARED_BINARY GGUF_FILE WORK_DIR
  (GGUF_FILE from scripts/fetch-smollm2.sh; needs torch, transformers, gguf, accelerate)

1. `sheared convert GGUF_FILE WORK_DIR/sheared-hf`
2. transformers: AutoTokenizer / AutoModelForCausalLM.from_pretrained(dir, gguf_file=...) in f32
3. tokenise the fixed text with transformers' tokenizer and with sheared's tokenizer.json: ids must match
4. mean token loss of transformers (labels = input_ids) vs `sheared score --token-ids` and `--text`
Prints one JSON object with both losses. Not run in CI (98 MB model, minutes of CPU).
"""
import json
import os
import subprocess
import sys

import torch
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer

# Public domain (US Declaration of Independence, 1776).
TEXT = (
    "When in the Course of human events, it becomes necessary for one people to dissolve the political bands which "
    "have connected them with another, and to assume among the powers of the earth, the separate and equal station "
    "to which the Laws of Nature and of Nature's God entitle them, a decent respect to the opinions of mankind "
    "requires that they should declare the causes which impel them to the separation.\n\n"
    "We hold these truths to be self-evident, that all men are created equal, that they are endowed by their Creator "
    "with certain unalienable Rights, that among these are Life, Liberty and the pursuit of Happiness. That to secure "
    "these rights, Governments are instituted among Men, deriving their just powers from the consent of the governed, "
    "That whenever any Form of Government becomes destructive of these ends, it is the Right of the People to alter or "
    "to abolish it, and to institute new Government, laying its foundation on such principles and organizing its "
    "powers in such form, as to them shall seem most likely to effect their Safety and Happiness. In 1776, 56 "
    "delegates signed it; 13 colonies (12 voting) approved."
)


def main():
    binary, gguf_file, work = sys.argv[1], os.path.abspath(sys.argv[2]), os.path.abspath(sys.argv[3])
    os.makedirs(work, exist_ok=True)
    converted = os.path.join(work, "sheared-hf")
    subprocess.run([binary, "convert", gguf_file, converted], check=True)

    folder, name = os.path.dirname(gguf_file), os.path.basename(gguf_file)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    ids = tokenizer(TEXT, add_special_tokens=True)["input_ids"]
    ours = Tokenizer.from_file(os.path.join(converted, "tokenizer.json")).encode(TEXT, add_special_tokens=True).ids
    with torch.no_grad():
        transformers_loss = float(model(input_ids=torch.tensor([ids]), labels=torch.tensor([ids])).loss)

    ids_path = os.path.join(work, "ids.json")
    text_path = os.path.join(work, "text.txt")
    json.dump({"input_ids": [ids]}, open(ids_path, "w"))
    open(text_path, "w").write(TEXT)
    score = lambda *extra: json.loads(subprocess.run([binary, "score", converted, *extra, "--json"], check=True,
                                                     capture_output=True, text=True).stdout)
    by_ids = score("--token-ids", ids_path)
    by_text = score("--text", text_path, "--window", str(len(ours)))
    report = {
        "tokens": len(ids),
        "tokenizer_ids_equal": ids == ours,
        "transformers_gguf_mean_loss": transformers_loss,
        "sheared_mean_loss_token_ids": by_ids["mean_loss"],
        "sheared_mean_loss_text": by_text["mean_loss"],
        "absolute_difference": abs(by_ids["mean_loss"] - transformers_loss),
        "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__},
    }
    print(json.dumps(report, indent=2))
    sys.exit(0 if report["tokenizer_ids_equal"] and report["absolute_difference"] < 1e-4 else 1)


if __name__ == "__main__":
    main()
