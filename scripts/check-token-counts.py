#!/usr/bin/env python3
"""Check a `tokenize` stage output against the Python `tokenizers` package.

For every domain, re-encodes each document of the source files with `tokenizers` and the output's own
tokenizer.json, as `BOS + encode(text, add_special_tokens=False) + EOS`, and checks that the train and eval shards
hold exactly those ids: every document appears, whole, in one split, in file order. Also compares token totals.

    pip install tokenizers numpy   # e.g. in a virtual environment
    python scripts/check-token-counts.py OUT_DIR --sources data/sample            # <domain>.jsonl per domain
    python scripts/check-token-counts.py OUT_DIR --source web=data/web --source code=data/code/*.jsonl

Exits 1 on any mismatch. Not for outputs made with `max_tokens_per_domain` (the cut document cannot match).
"""

import argparse
import glob
import gzip
import json
import os
import sys
from array import array

from tokenizers import Tokenizer


def files_of(source):
    if os.path.isdir(source):
        found = [os.path.join(d, f) for d, _, names in os.walk(source) for f in names]
    elif os.path.isfile(source):
        found = [source]
    else:
        found = glob.glob(source)
    accepted = (".jsonl", ".json", ".ndjson", ".txt")
    found = [f for f in found if f.lower().removesuffix(".gz").endswith(accepted)]
    if any(f.endswith(".zst") for f in found):
        sys.exit(f"{source}: .zst files need the zstandard package; decompress them first")
    return sorted(found)


def documents(source, text_field):
    for path in files_of(source):
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as file:
            if ".txt" in os.path.basename(path):
                text = file.read()
                if text:
                    yield text
                continue
            for line in file:
                if line.strip():
                    text = json.loads(line)[text_field]
                    if text:
                        yield text


def read_shard(path, dtype):
    values = array("H" if dtype == "u16" else "I")
    with open(path, "rb") as file:
        values.frombytes(file.read())
    if sys.byteorder != "little":
        values.byteswap()
    return values


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="the tokenize stage's output folder")
    parser.add_argument("--sources", help="folder with one <domain>.jsonl per domain")
    parser.add_argument("--source", action="append", default=[], help="DOMAIN=PATH (file, folder or glob)")
    parser.add_argument("--text-field", default="text")
    args = parser.parse_args()

    manifest = json.load(open(os.path.join(args.out, "manifest.json")))
    tokenizer = Tokenizer.from_file(os.path.join(args.out, "tokenizer.json"))
    sources = dict(item.split("=", 1) for item in args.source)
    bos, eos, failures = manifest["bos_id"], manifest["eos_id"], 0
    print(f"{'domain':<14} {'documents':>9} {'stage tokens':>13} {'python tokens':>13}  result")
    for domain in manifest["domains"]:
        name = domain["name"]
        source = sources.get(name) or (args.sources and os.path.join(args.sources, f"{name}.jsonl"))
        if not source:
            sys.exit(f"no source for domain {name}: pass --sources or --source {name}=PATH")
        texts = list(documents(source, args.text_field))
        encodings = tokenizer.encode_batch(texts, add_special_tokens=False)
        expected = [[bos, *encoding.ids, eos] for encoding in encodings]
        splits = {split: read_shard(os.path.join(args.out, split, f"{name}.bin"), manifest["dtype"]) for split in ("train", "eval")}
        cursor = {"train": 0, "eval": 0}
        problem = None
        for index, ids in enumerate(expected):
            for split in ("train", "eval"):
                shard, at = splits[split], cursor[split]
                if shard[at : at + len(ids)].tolist() == ids:
                    cursor[split] += len(ids)
                    break
            else:
                problem = f"document {index} ({texts[index][:40]!r}...) is in neither split as Python encodes it"
                break
        if problem is None:
            leftover = {split: len(splits[split]) - cursor[split] for split in splits}
            if any(leftover.values()):
                problem = f"shards hold tokens beyond the documents: {leftover}"
        stage_tokens = domain["train_tokens"] + domain["eval_tokens"]
        python_tokens = sum(len(ids) for ids in expected)
        if problem is None and stage_tokens != python_tokens:
            problem = "token totals differ"
        failures += problem is not None
        print(f"{name:<14} {len(texts):>9} {stage_tokens:>13} {python_tokens:>13}  {problem or 'identical ids'}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
