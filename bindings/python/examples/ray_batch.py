#!/usr/bin/env python3
"""Batch synthesis on Ray Data: one request per row of a Parquet table, written as `dg t2i` writes it.

usage: python examples/ray_batch.py --input prompts.parquet --output-dir out --model models/digits
       [--address auto] [--num-gpus 1 | --num-cpus 1] [--actors N] [--steps N] [--guidance F]
       [--seed S] [--output-name-column COL] [--param-column KEY ...]

Each Ray actor loads one pipeline (one per GPU with --num-gpus 1, else one per --num-cpus slot) and
runs the rows Ray Data hands it with `map_batches`. Names follow the `dg t2i` rules
(docs/batch.md): `{index:06d}.png`, or the --output-name-column value as a path under the output
dir; a row's seed is its `seed` cell, else --seed plus the row index. Images are written atomically
(temp file, fsync, rename) and the driver writes `manifest.jsonl`, one line per row; rows already
done (listed ok there, files present) are skipped, so a rerun resumes.

Needs ray[data], pyarrow and the diffgentor package (and Pillow for `.jpg` names), with
DG_LIBRARY_PATH and DG_ORT_DYLIB_PATH set on every node (see bindings/python/README.md).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
from pathlib import Path, PurePosixPath
from typing import Any, Dict, List, Optional

import pyarrow.parquet as pq
import ray

import diffgentor

KEPT_EXTENSIONS = {"png", "jpg", "jpeg"}


def output_names(index: int, name: Optional[str], count: int) -> List[str]:
    """The `dg t2i` names of a row's images, relative to the output dir; ValueError for a name
    that could leave it."""
    if name is None:
        stem, ext = f"{index:06d}", "png"
    else:
        if "\0" in name:
            raise ValueError(f"output name {name!r} contains a NUL byte")
        path = PurePosixPath(name)
        if path.is_absolute():
            raise ValueError(f"output name {name!r} is absolute: it must be a path relative to the output dir")
        if ".." in path.parts:
            raise ValueError(f"output name {name!r} contains `..`: it must stay inside the output dir")
        parts = [p for p in path.parts if p != "."]
        if not parts or name.endswith("/"):
            raise ValueError(f"output name {name!r} names no file")
        stem = "/".join(parts)
        suffix = PurePosixPath(parts[-1]).suffix[1:]
        ext = "png"
        if suffix.lower() in KEPT_EXTENSIONS:
            stem, ext = stem[: -len(suffix) - 1], suffix
    if count == 1:
        return [f"{stem}.{ext}"]
    return [f"{stem}_{sub:02d}.{ext}" for sub in range(count)]


def check_inside(root: Path, relative: str) -> None:
    """Refuses a name that resolves outside `root` through a symlink already on disk."""
    if not os.path.realpath(root / relative).startswith(os.path.realpath(root) + os.sep):
        raise ValueError(f"output {relative} resolves outside the output dir through a symlink")


def write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.ray.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def done_rows(out: Path) -> set:
    """Rows whose last manifest line says ok and whose images are all on disk."""
    last: Dict[int, Dict[str, Any]] = {}
    manifest = out / "manifest.jsonl"
    if manifest.exists():
        for line in manifest.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
                last[entry["index"]] = entry
            except (ValueError, KeyError):
                continue  # a torn line
    return {
        i for i, e in last.items()
        if e.get("status") == "ok" and e.get("outputs") and all((out / o).is_file() for o in e["outputs"])
    }


def plan(args: argparse.Namespace) -> List[Dict[str, Any]]:
    """One item per row to run: its index, request and output names (or the reason it is refused).
    Names are claimed in input order, so of two rows naming one file the second is refused."""
    table = pq.read_table(args.input).to_pylist()
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    done = set() if args.overwrite else done_rows(out)
    claims: Dict[str, int] = {}
    items = []
    for index, row in enumerate(table):
        item: Dict[str, Any] = {"index": index, "error": None, "outputs": [], "request": {}}
        try:
            prompt = row.get("prompt")
            if prompt is None:
                raise ValueError("no prompt: column `prompt` is empty")
            seed = row.get("seed")
            seed = args.seed + index if seed is None and args.seed is not None else seed
            extra = {k: str(row[k]) for k in args.param_column if row.get(k) not in (None, "")}
            item["request"] = dict(prompt=prompt, negative_prompt=row.get("negative_prompt") or None,
                                   seed=None if seed is None else int(seed), extra=extra)
            name = row.get(args.output_name_column) if args.output_name_column else None
            if args.output_name_column and name in (None, ""):
                raise ValueError(f"output name column `{args.output_name_column}` is empty")
            outputs = output_names(index, name, args.num_images)
            for o in outputs:
                if o in claims:
                    raise ValueError(f"output {o} is already written by row {claims[o]}: "
                                     "two rows may not write the same file")
            claims.update((o, index) for o in outputs)
            for o in outputs:
                check_inside(out, o)
            item["outputs"] = outputs
        except ValueError as e:
            item["error"] = str(e)
        if index not in done:
            # As JSON text, so Arrow blocks never have to infer one type for nulls and nested values.
            items.append({"index": index, "item": json.dumps(item)})
    return items


class Synthesizer:
    """A Ray actor: one pipeline, loaded once, runs every batch of rows it is given."""

    def __init__(self, args: argparse.Namespace) -> None:
        ep = "cuda" if args.num_gpus else "cpu"  # Ray sets CUDA_VISIBLE_DEVICES to the actor's GPU
        self.runtime = diffgentor.Runtime(execution_provider=ep)
        self.pipeline = self.runtime.load(args.model)
        self.args = args
        self.out = Path(args.output_dir)

    def __call__(self, batch: Dict[str, Any]) -> Dict[str, List[str]]:
        lines = [json.dumps(self.run(json.loads(item)), ensure_ascii=False) for item in batch["item"]]
        return {"line": lines}

    def run(self, item: Dict[str, Any]) -> Dict[str, Any]:
        entry = {"index": item["index"], "status": "error", "outputs": [], "backend": "local",
                 "model": Path(self.args.model).name}
        if item["error"]:
            entry["error"] = item["error"]
            return entry
        request = item["request"]
        try:
            images = self.pipeline.generate(
                request["prompt"], negative_prompt=request["negative_prompt"], seed=request["seed"],
                steps=self.args.steps, guidance_scale=self.args.guidance, num_images=self.args.num_images,
                extra=request["extra"], output="raw")
            for image, name in zip(images, item["outputs"]):
                path = self.out / name
                if path.suffix.lower() in (".jpg", ".jpeg"):
                    buffer = io.BytesIO()
                    image.to_pil().save(buffer, format="JPEG", quality=95)
                    write_atomically(path, buffer.getvalue())
                else:
                    write_atomically(path, image.to_png())
        except diffgentor.Error as e:
            entry["error"] = str(e)
            return entry
        entry.update(status="ok", outputs=item["outputs"], seed=images.seed,
                     parameters=dict(prompt=request["prompt"], steps=self.args.steps,
                                     guidance_scale=self.args.guidance))
        return entry


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True, help="Parquet table with a `prompt` column")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--model", required=True, help="model package directory, readable on every node")
    parser.add_argument("--address", default=None, help="Ray cluster address (`auto` on a cluster node)")
    parser.add_argument("--num-cpus", type=int, default=None, help="local Ray only: CPUs to start it with")
    parser.add_argument("--num-gpus", type=float, default=0, help="GPUs per actor (1: one pipeline per GPU)")
    parser.add_argument("--cpus-per-actor", type=float, default=1)
    parser.add_argument("--actors", type=int, default=1, help="how many pipelines run at once")
    parser.add_argument("--batch-size", type=int, default=4, help="rows per map_batches call")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--seed", type=int, default=None, help="rows without a seed get this plus their index")
    parser.add_argument("--num-images", type=int, default=1)
    parser.add_argument("--output-name-column", default=None)
    parser.add_argument("--param-column", action="append", default=[],
                        help="a column overriding the request key of its name per row, e.g. steps (repeatable)")
    parser.add_argument("--overwrite", action="store_true", help="run rows already done again")
    args = parser.parse_args()

    items = plan(args)
    ray.init(address=args.address, num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    try:
        lines: List[str] = []
        if items:
            rows = ray.data.from_items(items).map_batches(
                Synthesizer, fn_constructor_args=(args,), concurrency=args.actors,
                num_gpus=args.num_gpus or None, num_cpus=args.cpus_per_actor, batch_size=args.batch_size)
            lines = [r["line"] for r in rows.take_all()]
    finally:
        ray.shutdown()
    out = Path(args.output_dir)
    manifest = out / "manifest.jsonl"
    old = manifest.read_text(encoding="utf-8").splitlines() if manifest.exists() else []
    by_index = {}
    for line in old + lines:
        try:
            by_index[json.loads(line)["index"]] = line
        except (ValueError, KeyError):
            continue
    write_atomically(manifest, "".join(by_index[i] + "\n" for i in sorted(by_index)).encode())
    failed = sum(json.loads(line)["status"] != "ok" for line in lines)
    print(f"ray_batch: {len(lines) - failed} ok, {failed} failed; manifest {manifest}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
