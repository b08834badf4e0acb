#!/usr/bin/env python
"""Write tests/golden/rng/: torch.randn outputs for diffgentor's TorchGenerator tests.

Run from the repository root:   /work/venv/bin/python models/make_rng_goldens.py
Pinned: torch==2.15.0 (CPU wheel is enough), numpy. Must run on x86-64 with AVX2 for the
default ("avx2") cases; the "generic" cases are produced by a child process started with
ATEN_CPU_CAPABILITY=default, which makes torch use its non-AVX2 Box-Muller kernel.

Output:
  tests/golden/rng/values.bin     little-endian float32 values, cases back to back
  tests/golden/rng/manifest.json  one entry per case:
    name, seed (u64, decimal), kernel ("avx2" | "generic"),
    draws: list of shapes, each one torch.randn(shape, generator=g) on the same generator,
    total: number of values over all draws,
    stored: "full" (all values at offset) or "headtail" (first and last HEADTAIL values at
            offset, then offset + HEADTAIL), plus fnv1a64: FNV-1a 64 of all values' bytes (hex).
Offsets count float32 values, not bytes.
"""

import json
import os
import subprocess
import sys

import numpy as np
import torch

PINNED_TORCH = "2.15.0"
HEADTAIL = 64
OUT_DIR = os.path.join("tests", "golden", "rng")

SEEDS = [0, 1, 42, 2**32 + 5, 2**63 - 1, 2**64 - 1]
SIZES = [1, 3, 7, 15, 16, 17, 31, 32, 33, 100, 255, 256, 1000, 4 * 13 * 17]
LATENT_64 = [1, 4, 64, 64]


def cases():
    """(name, seed, kernel, draws, stored) for every golden case."""
    out = []
    for seed in SEEDS:
        for n in SIZES:
            out.append((f"s{seed}_n{n}", seed, "avx2", [[n]], "full"))
        big = "full" if seed == 42 else "headtail"
        out.append((f"s{seed}_latent64", seed, "avx2", [LATENT_64], big))
    out.append(("s0_odd_batch", 0, "avx2", [[2, 4, 63, 65], [1, 4, 13, 17]], "headtail"))
    out.append(("s1234_big", 1234, "avx2", [[4, 4, 96, 96]], "headtail"))
    # Diffusers order: initial latents, then per-step noise from the same generator.
    for seed in (0, 42):
        draws = [[1, 4, 8, 8], [1, 4, 8, 8], [2, 4, 8, 8]]
        out.append((f"s{seed}_sequence", seed, "avx2", draws, "full"))
    # Small draws share a cached Box-Muller value; a large draw in between must not touch it.
    small = [[3], [1], [20], [5], [2], [1], [16], [1]]
    out.append(("s7_small_cache", 7, "avx2", small, "full"))
    out.append(("s0_generic_n1000", 0, "generic", [[1000]], "full"))
    out.append(("s42_generic_n884", 42, "generic", [[4 * 13 * 17]], "full"))
    out.append(("s5_generic_latent64", 5, "generic", [LATENT_64], "headtail"))
    out.append(("s7_generic_small_cache", 7, "generic", small, "full"))
    return out


def draw(seed, draws):
    g = torch.Generator("cpu").manual_seed(seed)
    parts = [torch.randn(shape, generator=g, dtype=torch.float32).reshape(-1) for shape in draws]
    return torch.cat(parts).numpy().astype("<f4")


def fnv1a64(values):
    h = 0xCBF29CE484222325
    for b in values.astype("<f4").tobytes():
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def child_main():
    """In the ATEN_CPU_CAPABILITY=default child: draw the requested cases, print raw bytes."""
    requests = json.loads(sys.stdin.read())
    blobs = [draw(seed, draws).tobytes().hex() for seed, draws in requests]
    sys.stdout.write(json.dumps(blobs))


def generic_values(requests):
    env = dict(os.environ, ATEN_CPU_CAPABILITY="default")
    proc = subprocess.run(
        [sys.executable, __file__, "--child"],
        input=json.dumps(requests),
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return [np.frombuffer(bytes.fromhex(b), dtype="<f4") for b in json.loads(proc.stdout)]


def main():
    if torch.__version__.split("+")[0] != PINNED_TORCH:
        sys.exit(f"need torch=={PINNED_TORCH}, found {torch.__version__}")
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        sys.exit("the avx2 goldens need a CPU where torch runs its AVX2 kernels")
    all_cases = cases()
    generic = [(seed, draws) for _, seed, kernel, draws, _ in all_cases if kernel == "generic"]
    generic_out = iter(generic_values(generic))

    os.makedirs(OUT_DIR, exist_ok=True)
    chunks, manifest, offset = [], [], 0
    for name, seed, kernel, draws, stored in all_cases:
        values = next(generic_out) if kernel == "generic" else draw(seed, draws)
        entry = {
            "name": name,
            "seed": str(seed),
            "kernel": kernel,
            "draws": draws,
            "total": int(values.size),
            "stored": stored,
            "offset": offset,
            "fnv1a64": fnv1a64(values),
        }
        kept = values if stored == "full" else np.concatenate([values[:HEADTAIL], values[-HEADTAIL:]])
        chunks.append(kept)
        offset += kept.size
        manifest.append(entry)

    with open(os.path.join(OUT_DIR, "values.bin"), "wb") as f:
        f.write(np.concatenate(chunks).astype("<f4").tobytes())
    meta = {"torch_version": torch.__version__, "headtail": HEADTAIL, "cases": manifest}
    with open(os.path.join(OUT_DIR, "manifest.json"), "w") as f:
        # One case per line keeps diffs of regenerated goldens readable.
        head = json.dumps({k: v for k, v in meta.items() if k != "cases"})[:-1]
        rows = ",\n".join(json.dumps(entry) for entry in manifest)
        f.write(f'{head}, "cases": [\n{rows}\n]}}\n')
    print(f"wrote {len(manifest)} cases, {offset} values ({offset * 4} bytes) to {OUT_DIR}")


if __name__ == "__main__":
    if sys.argv[1:] == ["--child"]:
        child_main()
    else:
        main()
