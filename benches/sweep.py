#!/usr/bin/env python3
"""Runs dg-bench over ONNX Runtime settings and prints a markdown table of ratios.

Every configuration runs `--rounds` times, interleaved (a, b, c, a, b, c, ...), so a noisy shared
machine affects all of them alike; the table reports medians and each throughput relative to the
first configuration of its group. Run by hand after `make build`:

    DG_ORT_DYLIB_PATH=$PWD/.ort/lib/libonnxruntime.so.1.31.1 python3 benches/sweep.py --model models/tiny-sd
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

GROUPS = {
    "graph optimisation": [["--opt-level", level] for level in ("all", "disable", "basic", "extended", "layout")],
    "threads and spinning": [[], ["--no-spinning"], ["--threads", "1"], ["--threads", "2", "--no-spinning"]],
    "2 images: concurrency vs batch": [
        ["--concurrency", "1", "--batch", "2"],
        ["--concurrency", "2", "--batch", "1"],
        ["--concurrency", "2", "--batch", "1", "--threads", "1"],
    ],
}


def bench(dg_bench, model, common, extra):
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        cmd = [dg_bench, "--model", model, *common, *extra, "--json", out.name]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        return json.load(open(out.name))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--dg-bench", default="target/release/dg-bench")
    ap.add_argument("--steps", default="20")
    ap.add_argument("--requests", default="10")
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    common = ["--steps", a.steps, "--requests", a.requests, "--warmup", "2"]
    print(f"model {a.model}, {a.steps} steps, {a.requests} requests x {a.rounds} rounds, "
          f"{os.cpu_count()} CPUs\n")
    print("| group | settings | images/s (median) | vs first | overhead ratio | p50 ms |")
    print("|---|---|---|---|---|---|")
    for group, configs in GROUPS.items():
        runs = {i: [] for i in range(len(configs))}
        for _ in range(a.rounds):
            for i, extra in enumerate(configs):
                runs[i].append(bench(a.dg_bench, a.model, common, extra))
        base = statistics.median(r["images_per_second"] for r in runs[0])
        for i, extra in enumerate(configs):
            ips = statistics.median(r["images_per_second"] for r in runs[i])
            overhead = statistics.median(r["overhead_ratio"] for r in runs[i])
            p50 = statistics.median(r["latency_ms"]["p50"] for r in runs[i])
            print(f"| {group} | `{' '.join(extra)}` | {ips:.2f} | {ips / base:.2f}x | {overhead:.3f} | {p50:.1f} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
