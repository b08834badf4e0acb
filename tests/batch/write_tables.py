"""Writes the batch tests' input tables with the writers users have: pandas and pyarrow.

usage: write_tables.py DIR

- prompts.parquet (pyarrow): unicode, an empty prompt, a null prompt, a nullable int64 seed, a
  per-row `steps` override, a list column and a large_string column (extra fields, ignored).
- prompts.csv (pandas to_csv): the same rows; pandas writes the null prompt as an empty cell.
- prompts.jsonl: the same rows, one JSON object per line, with extra nested fields.
- large.parquet (pyarrow): the prompt column itself a large_string.
- edit.parquet (pyarrow): source images as a list column (relative paths), masks, bad rows.
- ray.parquet (pyarrow): the Ray example's rows, with an output-name column, a duplicate name, and
  per-row steps and num_images as floats with nulls (as pandas writes integer columns with nulls).
"""

import json
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)

prompts = ["a handwritten digit 0", "ein handgeschriebenes Ziffer 1 ✓ — 数字", "", None, "digit 4", "digit 5"]
seeds = [10, None, 12, 13, 14, 15]
steps = [None, "3", None, None, "many", None]
table = pa.table(
    {
        "prompt": pa.array(prompts, pa.string()),
        "seed": pa.array(seeds, pa.int64()),
        "steps": pa.array(steps, pa.string()),
        "tags": pa.array([["a", "b"], [], None, ["c"], ["d"], ["e"]], pa.list_(pa.string())),
        "note": pa.array(["x" * 70000, "n", None, "", "n", "n"], pa.large_string()),
    }
)
pq.write_table(table, out / "prompts.parquet")
table.to_pandas().drop(columns=["tags", "note"]).to_csv(out / "prompts.csv", index=False)
with open(out / "prompts.jsonl", "w", encoding="utf-8") as f:
    for i, (p, s, n) in enumerate(zip(prompts, seeds, steps)):
        row = {"prompt": p, "seed": s, "extra": {"nested": [i, "x"]}, "id": f"r{i}"}
        if n is not None:
            row["steps"] = n
        f.write(json.dumps(row, ensure_ascii=False) + "\n")
        if i == 2:
            f.write("\n")  # a blank line is skipped, not a row

pq.write_table(
    pa.table({"prompt": pa.array(["digit 7", "digit 8"], pa.large_string()), "seed": [7, 8]}),
    out / "large.parquet",
)

pq.write_table(
    pa.table(
        {
            "prompt": ["make it bold", "missing image", "unreadable", "bad mask", "two images", "masked"],
            "image": pa.array(
                [["src.png"], ["nope.png"], ["garbage.png"], ["src.png"], ["src.png", "src.png"], ["src.png"]],
                pa.list_(pa.string()),
            ),
            "mask": pa.array([None, None, None, "small_mask.png", None, "mask.png"], pa.string()),
            "seed": pa.array([1, 2, 3, 4, 5, 6], pa.int64()),
        }
    ),
    out / "edit.parquet",
)

# The Ray example's input: a null seed (--seed plus the index), an output-name column, and
# overrides of steps and num_images.
pq.write_table(
    pa.table(
        {
            "prompt": ["a handwritten digit 1", "a handwritten digit 2", "a handwritten digit 3", "digit 4"],
            "seed": pa.array([5, None, 7, 8], pa.int64()),
            "name": ["a/one", "b/two.png", "three", "a/one"],
            "steps": pa.array([3.0, None, None, 4.0], pa.float64()),
            "num_images": pa.array([None, None, 2.0, None], pa.float64()),
        }
    ),
    out / "ray.parquet",
)
