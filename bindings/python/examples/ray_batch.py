#!/usr/bin/env python3
"""Batch synthesis on Ray Data: one request per row of a Parquet table, written as `dg t2i` writes it.

usage: python examples/ray_batch.py --input prompts.parquet --output-dir out --model models/digits
       [--address auto] [--num-gpus 1 | --num-cpus 1] [--actors N] [--steps N] [--guidance F]
       [--seed S] [--output-name-column COL] [--param-column KEY ...]

Each Ray actor loads one pipeline (one per GPU with --num-gpus 1, else one per --num-cpus slot) and
runs the rows Ray Data hands it with `map_batches`. Names follow the `dg t2i` rules
(docs/batch.md): `{index:06d}.png`, or the --output-name-column value as a path under the output
dir; a row's seed is its `seed` cell, else --seed plus the row index. Images are written atomically
(temp file, fsync, rename) and the driver appends each row's line to `manifest.jsonl` (one write and
an fsync) as its result arrives, so a crash loses only the rows in flight; at the end it rewrites the
file with one line per row, in input order. Rows already done (their latest line says ok, files
present) are skipped, so a rerun resumes.

Needs ray[data], pyarrow and the diffgentor package (and Pillow for `.jpg` names), with
DG_LIBRARY_PATH and DG_ORT_DYLIB_PATH set on every node (see bindings/python/README.md).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
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


def latest_lines(out: Path) -> Dict[int, str]:
    """The latest line about each row over the manifests in `out` (dg's rule: the highest
    `written_ns`, ties to the later line), as text."""
    latest: Dict[int, str] = {}
    stamps: Dict[int, int] = {}
    for manifest in sorted(out.glob("manifest*.jsonl")):
        for line in manifest.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
                index, stamp = entry["index"], entry.get("written_ns", 0)
            except (ValueError, KeyError, TypeError):
                continue  # a torn line
            if stamp >= stamps.get(index, 0):
                latest[index], stamps[index] = line, stamp
    return latest


def done_rows(out: Path) -> set:
    """Rows whose latest manifest line says ok and whose images are all on disk."""
    done = set()
    for index, line in latest_lines(out).items():
        e = json.loads(line)
        if e.get("status") == "ok" and e.get("outputs") and all((out / o).is_file() for o in e["outputs"]):
            done.add(index)
    return done


class Manifest:
    """manifest.jsonl, appended one durable line at a time, each stamped `written_ns` as dg does."""

    def __init__(self, path: Path) -> None:
        self.file = open(path, "a+b")
        self.last = 0
        # A line torn by a crash is ended, so the next one starts clean.
        if self.file.seek(0, os.SEEK_END) > 0:
            self.file.seek(-1, os.SEEK_END)
            if self.file.read(1) != b"\n":
                self.file.write(b"\n")

    def append(self, entry: Dict[str, Any]) -> None:
        self.last = max(time.time_ns(), self.last + 1)
        entry["written_ns"] = self.last
        self.file.write((json.dumps(entry, ensure_ascii=False) + "\n").encode("utf-8"))
        self.file.flush()
        os.fsync(self.file.fileno())

    def close(self) -> None:
        self.file.close()


def cell_value(value: Any) -> Any:
    """A --param-column cell as the request takes it: a whole float as an integer (pandas writes
    an integer column with nulls as floats, and `steps` refuses "7.0"), as `dg t2i` reads it."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, (str, int, float, bool)):
        return value
    return json.dumps(value)


def image_count(value: Any) -> int:
    """A row's number of images (its num_images column, else --num-images), checked before any
    name is made for it, as `dg t2i` does."""
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).strip().isdigit():
        raise ValueError(f"column `num_images` = {str(value)!r}: not a whole number")
    count = int(value)
    if not 1 <= count <= 64:
        raise ValueError(f"num_images must be between 1 and 64, got {count}")
    return count


def claim(claims: Dict[str, int], folders: Dict[str, int], index: int, outputs: List[str]) -> None:
    """Claims a row's files and the folders on their way, as `dg t2i` does: ValueError when another
    row writes the same file, or a file where this row needs a folder (or the other way round)."""
    for o in outputs:
        if o in claims:
            raise ValueError(f"output {o} is already written by row {claims[o]}: "
                             "two rows may not write the same file")
        if o in folders:
            raise ValueError(f"output {o} is a folder row {folders[o]} writes into: "
                             "a row may not write a file there")
        for folder in parent_folders(o):
            if folder in claims:
                raise ValueError(f"output {o} needs the folder {folder}, "
                                 f"which row {claims[folder]} writes as a file")
    for o in outputs:
        claims[o] = index
        for folder in parent_folders(o):
            folders.setdefault(folder, index)


def parent_folders(relative: str) -> List[str]:
    """`a/b/c.png` -> `a/b`, `a`."""
    return [str(p) for p in PurePosixPath(relative).parents if str(p) != "."]


def plan(args: argparse.Namespace) -> List[Dict[str, Any]]:
    """One item per row to run: its index, request and output names (or the reason it is refused).
    Names are claimed in input order, so of two rows naming one file the second is refused."""
    table = pq.read_table(args.input).to_pylist()
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    done = set() if args.overwrite else done_rows(out)
    claims: Dict[str, int] = {}
    folders: Dict[str, int] = {}
    items = []
    for index, row in enumerate(table):
        item: Dict[str, Any] = {"index": index, "error": None, "outputs": [], "request": {}}
        try:
            prompt = row.get("prompt")
            if prompt is None:
                raise ValueError("no prompt: column `prompt` is empty")
            seed = row.get("seed")
            seed = args.seed + index if seed is None and args.seed is not None else seed
            # The flags, then the row's columns over them (keyword arguments would win over extra).
            extra = dict(steps=args.steps, guidance_scale=args.guidance, num_images=args.num_images)
            extra.update((k, cell_value(row[k])) for k in args.param_column if row.get(k) not in (None, ""))
            extra["num_images"] = image_count(extra["num_images"])
            item["request"] = dict(prompt=prompt, negative_prompt=row.get("negative_prompt") or None,
                                   seed=None if seed is None else int(seed), extra=extra)
            name = row.get(args.output_name_column) if args.output_name_column else None
            if args.output_name_column and name in (None, ""):
                raise ValueError(f"output name column `{args.output_name_column}` is empty")
            outputs = output_names(index, name, extra["num_images"])
            claim(claims, folders, index, outputs)
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
                extra=request["extra"], output="raw")
            for image, name in zip(images, item["outputs"]):
                path = self.out / name
                if path.suffix.lower() in (".jpg", ".jpeg"):
                    buffer = io.BytesIO()
                    image.to_pil().save(buffer, format="JPEG", quality=95)
                    write_atomically(path, buffer.getvalue())
                else:
                    write_atomically(path, image.to_png())
        except (diffgentor.Error, OSError) as e:
            entry["error"] = str(e)
            return entry
        entry.update(status="ok", outputs=item["outputs"], seed=images.seed,
                     parameters=dict(prompt=request["prompt"], **request["extra"]))
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
    out = Path(args.output_dir)
    manifest_path = out / "manifest.jsonl"
    ok = failed = 0
    manifest = Manifest(manifest_path)
    ray.init(address=args.address, num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    try:
        if items:
            rows = ray.data.from_items(items).map_batches(
                Synthesizer, fn_constructor_args=(args,), concurrency=args.actors,
                num_gpus=args.num_gpus or None, num_cpus=args.cpus_per_actor, batch_size=args.batch_size)
            # Streamed: each row's line is durable as soon as its batch is back.
            for row in rows.iter_rows():
                entry = json.loads(row["line"])
                manifest.append(entry)
                ok, failed = (ok + 1, failed) if entry["status"] == "ok" else (ok, failed + 1)
    finally:
        manifest.close()
        ray.shutdown()
    # One line per row (the latest), in input order, as `dg manifest merge` leaves it.
    latest = latest_lines(out)
    manifest_text = "".join(line + "\n" for _, line in sorted(latest.items()))
    write_atomically(manifest_path, manifest_text.encode("utf-8"))
    print(f"ray_batch: {ok} ok, {failed} failed; manifest {manifest_path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
