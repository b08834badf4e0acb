#!/usr/bin/env python
"""Write random-weight LoRA files for a real-sized exported package, for `dg-bench lora`.

The tiny test LoRAs (models/make_lora.py) are too small to time; this writes LoRAs shaped like the
ones people train for SD 1.5 onto any optimum-exported package, by reading the module paths from the
ONNX node names. The weights are random (seeded), so images are noise; timings are what matter.

Run by hand (never in CI), with a venv that has numpy, onnx and safetensors:

    python benches/lora/make_random_loras.py --model /work/sd15-random --out /work/sd15-loras

Writes (diffusers/PEFT naming, alpha in `lora_adapter_metadata` as diffusers saves it):
  attn.safetensors      rank 16: every attention to_q/to_k/to_v/to_out.0 of the UNet
  attn_ff.safetensors   rank 32: the same plus the feed-forward layers (ff.net.0.proj, ff.net.2)
  te.safetensors        rank 8: the UNet's attention plus the text encoder's q/k/v/out_proj
"""
import argparse
import json
import os

import numpy as np
import onnx
from safetensors.numpy import save_file


def linears(path, suffixes):
    """module path -> (out, in) for MatMul nodes whose path ends with one of `suffixes`."""
    model = onnx.load(path, load_external_data=False)
    inits = {i.name: list(i.dims) for i in model.graph.initializer}
    found = {}
    for node in model.graph.node:
        if node.op_type != "MatMul" or len(node.input) < 2 or node.input[1] not in inits:
            continue
        scope = node.name.strip("/").rsplit("/", 1)[0].replace("/", ".")
        if scope.endswith(suffixes):
            d_in, d_out = inits[node.input[1]]
            found[scope] = (d_out, d_in)
    return found


def lora(rng, prefix, modules, rank):
    tensors = {}
    for module, (d_out, d_in) in sorted(modules.items()):
        tensors[f"{prefix}.{module}.lora_A.weight"] = (rng.standard_normal((rank, d_in)) / np.sqrt(d_in)).astype(np.float32)
        tensors[f"{prefix}.{module}.lora_B.weight"] = (rng.standard_normal((d_out, rank)) * 0.01).astype(np.float32)
    return tensors


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    rng = np.random.default_rng(0)
    unet = os.path.join(a.model, "unet", "model.onnx")
    attn = linears(unet, ("to_q", "to_k", "to_v", "to_out.0"))
    ff = linears(unet, ("ff.net.0.proj", "ff.net.2"))
    te = linears(os.path.join(a.model, "text_encoder", "model.onnx"), ("q_proj", "k_proj", "v_proj", "out_proj"))
    files = {
        "attn": ({"unet": (attn, 16)}),
        "attn_ff": ({"unet": ({**attn, **ff}, 32)}),
        "te": ({"unet": (attn, 8), "text_encoder": (te, 8)}),
    }
    for name, parts in files.items():
        tensors, meta = {}, {}
        for prefix, (modules, rank) in parts.items():
            tensors.update(lora(rng, prefix, modules, rank))
            meta[f"{prefix}.r"] = rank
            meta[f"{prefix}.lora_alpha"] = rank
        save_file(tensors, os.path.join(a.out, f"{name}.safetensors"),
                  metadata={"format": "pt", "lora_adapter_metadata": json.dumps(meta)})
        print(name, {p: len(m) for p, (m, _) in parts.items()}, "modules")


if __name__ == "__main__":
    main()
