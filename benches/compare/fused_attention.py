#!/usr/bin/env python3
"""Fused-attention UNet export for CPU fp32, and what it is worth on diffgentor.

Steps (each one skipped when its output already exists, so the slow ones run once):

1. Copies a package (default /work/sd15-random, made by make_sd15_random.py) to --out (default
   /work/sd15-fused; outside the repository, never committed), hard-linking every file except the UNet.
2. Runs ONNX Runtime's transformer optimizer (`onnxruntime.transformers.optimizer --model_type unet`)
   on the UNet, with external data, keeping only the fusions that have CPU kernels: MultiHeadAttention
   (with separate Q/K/V), LayerNormalization, Gelu. GroupNorm, SkipGroupNorm, BiasSplitGelu, BiasAdd,
   packed QKV/KV and NhwcConv are CUDA-only contrib ops and stay disabled (with them the graph does not
   load on the CPU provider).
3. Counts the operators before and after, and compares both UNets' outputs on one random input with
   ONNX Runtime 1.31.1 (the version diffgentor loads).
4. Runs dg-bench on the original and the fused package, alternating round by round.

Run by hand in the venv that has onnx and onnxruntime (see compare.py), after `make build`:

    DG_ORT_DYLIB_PATH=$PWD/.ort/lib/libonnxruntime.so.1.31.1 /work/venv/bin/python \\
        benches/compare/fused_attention.py --rounds 3

--ort-python names a directory holding the onnxruntime 1.31.1 Python package for step 3
(pip install --target DIR onnxruntime==1.31.1); default /work/ort1311.
"""
import argparse
import collections
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

# Fusions without CPU kernels in ONNX Runtime 1.31 (com.microsoft ops registered for CUDA/ROCm only).
CUDA_ONLY = [
    "--disable_group_norm",
    "--disable_skip_group_norm",
    "--disable_bias_splitgelu",
    "--disable_bias_add",
    "--disable_packed_kv",
    "--disable_packed_qkv",
    "--disable_nhwc_conv",
]

COUNTED = [
    "MultiHeadAttention",
    "Attention",
    "GroupNorm",
    "LayerNormalization",
    "Gelu",
    "BiasGelu",
    "Softmax",
    "MatMul",
    "InstanceNormalization",
]

# onnxruntime 1.32's UNet attention fusion calls int() on a one-element array, which NumPy 2.4 refuses;
# this runs the optimizer's command line with that one function fixed (same logic, .item()).
OPTIMIZER = r"""
import sys, numpy as np
from onnxruntime.transformers import optimizer
import fusion_attention_unet as f  # the optimizer imports its modules top-level (it extends sys.path)

def get_num_heads(self, reshape_q, is_torch2=False):
    if is_torch2:
        parent = self.model.get_parent(reshape_q, 1)
        if parent and parent.op_type == "Concat" and len(parent.input) == 4:
            value = self.model.get_constant_value(parent.input[2])
            if isinstance(value, np.ndarray) and value.size == 1:
                return max(int(value.item()), 0)
        return 0
    value = self.model.get_constant_value(reshape_q.input[1])
    if isinstance(value, np.ndarray) and list(value.shape) == [4]:
        return max(int(value[2]), 0)
    return 0

f.FusionAttentionUnet.get_num_heads = get_num_heads
sys.argv[0] = "optimizer"
optimizer.main()
"""

# Step 3 runs in a child interpreter with onnxruntime 1.31.1 first on sys.path.
COMPARE = r"""
import sys, numpy as np, onnxruntime as ort
original, fused, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
rng = np.random.default_rng(0)
feeds = {
    "sample": rng.standard_normal((2, 4, size // 8, size // 8), dtype=np.float32),
    "timestep": np.array(500, dtype=np.float32),
    "encoder_hidden_states": rng.standard_normal((2, 77, 768), dtype=np.float32),
}
outs = []
for path in (original, fused):
    s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    want = {i.name: i.type for i in s.get_inputs()}
    f = dict(feeds)
    if "int64" in want.get("timestep", ""):
        f["timestep"] = f["timestep"].astype(np.int64)
    outs.append(s.run(None, f)[0])
diff = np.abs(outs[0] - outs[1])
print(f"onnxruntime {ort.__version__}: max |original - fused| = {diff.max():.3e}, "
      f"mean = {diff.mean():.3e}, max |original| = {np.abs(outs[0]).max():.3e}")
"""


def op_counts(path):
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return collections.Counter(n.op_type for n in model.graph.node)


def prepare(src, dst):
    if (dst / "model_index.json").exists():
        return
    print(f"copying {src} -> {dst} (hard links, UNet excluded)", flush=True)
    for item in src.rglob("*"):
        target = dst / item.relative_to(src)
        if item.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif item.parent.name != "unet" or item.suffix == ".json":
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(item, target)


def fuse(src_unet, dst_unet):
    if dst_unet.exists():
        return
    print("fusing the UNet (several minutes on 2 cores, ~10 GB of memory)", flush=True)
    tmp = dst_unet.with_name("model.tmp.onnx")
    cmd = [sys.executable, "-c", OPTIMIZER, "--input", str(src_unet),
           "--output", str(tmp), "--model_type", "unet", "--opt_level", "0",
           "--use_external_data_format", *CUDA_ONLY]
    print("python -m onnxruntime.transformers.optimizer " + " ".join(cmd[3:]), flush=True)
    subprocess.run(cmd, check=True)
    # The optimizer names the data file after its output; rename both so the package layout holds.
    import onnx

    model = onnx.load(str(tmp), load_external_data=True)
    onnx.save_model(model, str(dst_unet), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.onnx_data", size_threshold=1024)
    for leftover in dst_unet.parent.glob("model.tmp.onnx*"):
        leftover.unlink()


def bench(dg_bench, model, common):
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run([dg_bench, "--model", str(model), *common, "--json", out.name], check=True,
                       stdout=subprocess.DEVNULL)
        return json.load(open(out.name))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="/work/sd15-random")
    ap.add_argument("--out", default="/work/sd15-fused")
    ap.add_argument("--ort-python", default="/work/ort1311")
    ap.add_argument("--dg-bench", default="target/release/dg-bench")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", default="4")
    ap.add_argument("--requests", default="4")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", help="--threads for dg-bench (default: ONNX Runtime's)")
    a = ap.parse_args()
    src, dst = Path(a.model), Path(a.out)
    prepare(src, dst)
    fuse(src / "unet" / "model.onnx", dst / "unet" / "model.onnx")

    before, after = op_counts(src / "unet" / "model.onnx"), op_counts(dst / "unet" / "model.onnx")
    print("\n| operator | original | fused |\n|---|---|---|")
    for op in COUNTED + sorted(set(after) - set(before) - set(COUNTED)):
        if before[op] or after[op]:
            print(f"| {op} | {before[op]} | {after[op]} |")
    print(f"| (all nodes) | {sum(before.values())} | {sum(after.values())} |\n", flush=True)

    env = dict(os.environ, PYTHONPATH=a.ort_python)
    subprocess.run([sys.executable, "-c", COMPARE, str(src / "unet" / "model.onnx"),
                    str(dst / "unet" / "model.onnx"), str(a.size)], check=True, env=env)

    common = ["--size", f"{a.size}x{a.size}", "--steps", a.steps, "--requests", a.requests, "--warmup", "1"]
    if a.threads:
        common += ["--threads", a.threads]
    runs = {"original": [], "fused": []}
    for r in range(a.rounds):
        for name, model in (("original", src), ("fused", dst)):
            report = bench(a.dg_bench, model, common)
            runs[name].append(report)
            print(f"round {r + 1} {name}: {report['images_per_second']:.4f} images/s, "
                  f"step {report['stages_ms']['denoise_step']:.0f} ms, load {report['load_ms']:.0f} ms", flush=True)
    ratios = [f["images_per_second"] / o["images_per_second"] for o, f in zip(runs["original"], runs["fused"])]
    print(f"\n{a.size}x{a.size}, {a.steps} steps, {a.requests} requests x {a.rounds} rounds, {os.cpu_count()} CPUs\n")
    print("| UNet | images/s (median) | UNet step ms (median) | load ms (median) | peak RSS MiB |")
    print("|---|---|---|---|---|")
    for name, rs in runs.items():
        med = lambda f: statistics.median(f(r) for r in rs)
        print(f"| {name} | {med(lambda r: r['images_per_second']):.4f} | {med(lambda r: r['stages_ms']['denoise_step']):.0f} "
              f"| {med(lambda r: r['load_ms']):.0f} | {med(lambda r: r['peak_rss_mb']):.0f} |")
    print(f"\nfused / original throughput: median {statistics.median(ratios):.3f}x "
          f"(rounds {', '.join(f'{x:.3f}' for x in ratios)})")


if __name__ == "__main__":
    main()
