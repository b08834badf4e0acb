#!/usr/bin/env python3
"""Runs dg-bench over ONNX Runtime settings and prints a markdown table of ratios.

Every configuration runs `--rounds` times, interleaved (a, b, c, a, b, c, ...), so a noisy shared
machine affects all of them alike; the table reports medians and each throughput relative to the
first configuration of its group. Run by hand after `make build`:

    DG_ORT_DYLIB_PATH=$PWD/.ort/lib/libonnxruntime.so.1.31.1 python3 benches/sweep.py --model models/tiny-sd
    python3 benches/sweep.py --model /work/sd15-random --size 256x256 --steps 4 --requests 4 \
        --group sessions --group cache

`{cold}` in a configuration becomes a new, empty optimized-graph cache directory for every run;
`{warm}` one directory that a first, unmeasured run filled.
"""
import argparse
import json
import os
import shutil
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
    # 2 images in flight: two requests on two sessions per graph, on one, or one request of batch 2.
    "sessions": [
        ["--concurrency", "2", "--batch", "1", "--threads", "1", "--sessions", "2"],
        ["--concurrency", "2", "--batch", "1", "--threads", "1", "--sessions", "1"],
        ["--concurrency", "1", "--batch", "2"],
    ],
    "cache": [[], ["--optimized-cache", "{cold}"], ["--optimized-cache", "{warm}"]],
    "io binding": [["--unet-only"], ["--unet-only", "--io-binding"]],
}


def bench(dg_bench, model, common, extra, warm_dir):
    with tempfile.NamedTemporaryFile(suffix=".json") as out, tempfile.TemporaryDirectory() as cold:
        extra = [cold if x == "{cold}" else warm_dir if x == "{warm}" else x for x in extra]
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
    ap.add_argument("--warmup", default="2")
    ap.add_argument("--size", help="WxH (default: the package's)")
    ap.add_argument("--group", action="append", choices=sorted(GROUPS),
                    help="run only these groups (repeatable; default: all but sessions, cache, io binding)")
    a = ap.parse_args()
    common = ["--steps", a.steps, "--requests", a.requests, "--warmup", a.warmup]
    if a.size:
        common += ["--size", a.size]
    groups = a.group or ["graph optimisation", "threads and spinning", "2 images: concurrency vs batch"]
    print(f"model {a.model}, {a.size or 'default size'}, {a.steps} steps, {a.requests} requests x "
          f"{a.rounds} rounds, {os.cpu_count()} CPUs\n")
    print("| group | settings | images/s (median) | vs first | overhead ratio | p50 ms | step ms | load ms | peak RSS MiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    warm_dir = tempfile.mkdtemp(prefix="dg-sweep-cache-")
    try:
        if "cache" in groups:
            bench(a.dg_bench, a.model, common, ["--optimized-cache", warm_dir], warm_dir)
        for group in groups:
            configs = GROUPS[group]
            runs = {i: [] for i in range(len(configs))}
            for _ in range(a.rounds):
                for i, extra in enumerate(configs):
                    runs[i].append(bench(a.dg_bench, a.model, common, extra, warm_dir))
            base = statistics.median(r["images_per_second"] for r in runs[0])
            for i, extra in enumerate(configs):
                med = lambda f: statistics.median(f(r) for r in runs[i])
                ips = med(lambda r: r["images_per_second"])
                print(f"| {group} | `{' '.join(extra)}` | {ips:.2f} | {ips / base:.2f}x "
                      f"| {med(lambda r: r['overhead_ratio']):.3f} | {med(lambda r: r['latency_ms']['p50']):.1f} "
                      f"| {med(lambda r: r['stages_ms']['denoise_step']):.2f} | {med(lambda r: r['load_ms']):.0f} "
                      f"| {med(lambda r: r['peak_rss_mb']):.0f} |")
                sys.stdout.flush()
    finally:
        shutil.rmtree(warm_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
