#!/usr/bin/env python
"""Build an SD 1.5-ARCHITECTURE pipeline with random weights and export it with optimum.

For benches/compare/compare.py: a package with SD 1.5's graph sizes (UNet ~860M params, CLIP-L
text encoder, SD VAE) so the comparison with optimum is made at realistic per-step costs. The
weights are random (seeded), so the images are noise; the timings are what matter.

Run by hand (never in CI), from anywhere:

    /work/venv/bin/python benches/compare/make_sd15_random.py [--out /work/sd15-random]

Needs the /work/venv venv (torch, diffusers 0.39.0, transformers, optimum-onnx 0.1.0 with its
`optimum-cli`). Writes ~4.3 GB of fp32 diffusers weights to a temporary dir (deleted afterwards
unless --keep-src), then `optimum-cli export onnx --task text-to-image` to --out (~4.3 GB, NOT
inside the repository). Takes a few minutes of CPU and ~10 GB RAM at peak.

Architecture (runwayml/stable-diffusion-v1-5 configs):
  unet          UNet2DConditionModel, block_out_channels (320, 640, 1280, 1280), layers_per_block 2,
                cross_attention_dim 768, attention_head_dim 8, sample_size 64
  text_encoder  CLIPTextModel: hidden 768, 12 layers, 12 heads, intermediate 3072, vocab 49408,
                max_position_embeddings 77, quick_gelu
  vae           AutoencoderKL, block_out_channels (128, 256, 512, 512), latent_channels 4
  scheduler     PNDMScheduler with SD 1.5's scheduler_config.json
  tokenizer     the full CLIP tokenizer from tests/data/clip-tokenizer
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
FULL_TOK = os.path.join(ROOT, "tests", "data", "clip-tokenizer")

sys.path.insert(0, os.path.join(ROOT, "models"))
from sd_configs import SD15_SCHEDULER  # noqa: E402  (the real SD 1.5 scheduler config, verbatim)


def build(tok_dir):
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        center_input_sample=False,
        flip_sin_to_cos=True,
        freq_shift=0,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
        downsample_padding=1,
        mid_block_scale_factor=1,
        act_fn="silu",
        norm_num_groups=32,
        norm_eps=1e-5,
        cross_attention_dim=768,
        attention_head_dim=8,
    )
    torch.manual_seed(1)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            max_position_embeddings=77,
            vocab_size=49408,
            hidden_act="quick_gelu",
            layer_norm_eps=1e-5,
            projection_dim=768,
            bos_token_id=0,
            eos_token_id=2,
            pad_token_id=1,
        )
    )
    torch.manual_seed(2)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        act_fn="silu",
        latent_channels=4,
        norm_num_groups=32,
        sample_size=512,
    )
    scheduler = PNDMScheduler.from_config(SD15_SCHEDULER)  # ignores keys PNDM no longer takes
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    n = lambda m: sum(p.numel() for p in m.parameters()) / 1e6
    print(f"params (M): unet {n(unet):.0f}, text_encoder {n(text_encoder):.0f}, vae {n(vae):.0f}", flush=True)
    return pipe


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="/work/sd15-random", help="export dir (keep it outside the repo)")
    ap.add_argument("--tokenizer", default=FULL_TOK)
    ap.add_argument("--src", default=None, help="where to save the diffusers pipeline (default: a temp dir)")
    ap.add_argument("--keep-src", action="store_true")
    ap.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    args = ap.parse_args()

    out = os.path.abspath(args.out)
    if out.startswith(ROOT + os.sep):
        sys.exit(f"refusing to write ~4 GB into the repository: {out}")
    if os.path.exists(out) and not args.force:
        sys.exit(f"{out} exists (use --force to overwrite)")
    free_gb = shutil.disk_usage(os.path.dirname(out) or "/").free / 2**30
    if free_gb < 15:
        sys.exit(f"only {free_gb:.1f} GiB free near {out}; need ~15 (src + ONNX)")

    t0 = time.time()
    src = args.src or tempfile.mkdtemp(prefix="sd15-random-src-")
    try:
        pipe = build(args.tokenizer)
        pipe.save_pretrained(src, safe_serialization=True)
        del pipe
        print(f"saved diffusers pipeline to {src} ({time.time() - t0:.0f}s)", flush=True)
        cli = os.path.join(os.path.dirname(sys.executable), "optimum-cli")
        t1 = time.time()
        if os.path.exists(out):
            shutil.rmtree(out)
        subprocess.run([cli, "export", "onnx", "--model", src, "--task", "text-to-image", out], check=True)
        with open(os.path.join(out, "scheduler", "scheduler_config.json"), "w") as f:
            json.dump(SD15_SCHEDULER, f, indent=2)
            f.write("\n")
        print(f"exported to {out} ({time.time() - t1:.0f}s export, {time.time() - t0:.0f}s total)", flush=True)
    finally:
        if not args.keep_src and args.src is None:
            shutil.rmtree(src, ignore_errors=True)
    total = 0
    for dirpath, _, files in os.walk(out):
        total += sum(os.path.getsize(os.path.join(dirpath, f)) for f in files)
    print(f"{out}: {total / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
