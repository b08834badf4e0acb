#!/usr/bin/env python3
"""Train the tiny `digits` Stable Diffusion package from scratch (CPU: ~7.5 minutes on 2 idle cores).

Data: scikit-learn's bundled 8x8 handwritten digits (1797 images, offline), bilinearly upsampled to
16x16, rendered as a dark digit on a white background, RGB.

Pipeline: a standard diffusers StableDiffusionPipeline
  * AutoencoderKL, block_out_channels (32, 64), 4 latent channels -> VAE factor 2 (8x8 latents)
  * UNet2DConditionModel, block_out_channels (32, 64), layers_per_block 1, cross-attention at the
    64-channel level, DDPM epsilon objective, EMA weights
  * CLIPTextModel (hidden 32) trained jointly with the UNet, on a truncated 1000-token CLIP BPE tokenizer
  * DDIMScheduler with the SD 1.5 settings (scaled_linear, clip_sample false)
Prompts: "a handwritten digit 7", "the number seven", "digit 7", "7", ...; 15% empty prompts (CFG).

Stages (each checkpointed under --work, so a rerun resumes after a crash):
  1. VAE  2. UNet + text encoder  3. save the diffusers pipeline  4. optimum ONNX export into the package dir
     (only the files needed at run time are kept).

Usage (from the repository root):
    /work/venv/bin/python models/digits/train.py [--work /tmp/digits-work] [--out models/digits]
"""

import argparse
import glob
import importlib.metadata
import json
import math
import os
import random
import shutil
import subprocess
import sys
import time

PINS = {"torch": "2.15.0", "diffusers": "0.39.0", "transformers": "4.57.6", "optimum-onnx": "0.1.0"}


def check_versions():
    bad = []
    for pkg, want in PINS.items():
        have = importlib.metadata.version(pkg)
        if have.split("+")[0] != want:
            bad.append(f"{pkg} {have} (want {want})")
    if bad:
        sys.exit("version pins not met: " + ", ".join(bad))


check_versions()

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from diffusers import (  # noqa: E402
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from sklearn.datasets import load_digits  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "models"))
from clip_tokenizer import write_truncated  # noqa: E402

SEED = 1234
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TEMPLATES = [
    "a handwritten digit {d}",
    "a handwritten digit {w}",
    "the number {w}",
    "the number {d}",
    "digit {d}",
    "{d}",
    "{w}",
    "the digit {d}",
    "a handwritten {w}",
    "a drawing of the number {d}",
]
# Everything the pipeline reads at run time (SD 1.5 DDIM settings, explicit so diffusers' class
# defaults such as clip_sample=True never apply).
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
    prediction_type="epsilon",
    timestep_spacing="leading",
)


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


def seed_all(s):
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


def digit_images():
    """(N,3,16,16) float in [-1,1] (white background = 1, ink = -1), labels (N,)."""
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0  # ink in [0,1]
    x = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False).clamp(0, 1)
    white = 1.0 - x
    img = (white * 2.0 - 1.0).repeat(1, 3, 1, 1)
    return img.contiguous(), torch.tensor(d.target, dtype=torch.long)


def make_vae():
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=16,
        mid_block_add_attention=False,
    )


def make_unet():
    # Cross-attention at the 64-channel (4x4) level is what makes the prompt steer the digit: with it
    # only at the 32-channel 8x8 level the model learned to ignore the text. No mid block and a
    # 64-wide time embedding keep the exported package under 6 MB.
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        mid_block_type=None,
        time_embedding_dim=64,
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
    )


def make_text_encoder(tok):
    cfg = CLIPTextConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=tok.model_max_length,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        hidden_act="quick_gelu",
    )
    return CLIPTextModel(cfg)


class EMA:
    def __init__(self, modules, decay):
        self.decay = decay
        self.params = [p for m in modules for p in m.parameters()]
        self.shadow = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self, step):
        d = min(self.decay, (1 + step) / (10 + step))
        for s, p in zip(self.shadow, self.params):
            s.mul_(d).add_(p.detach(), alpha=1 - d)

    @torch.no_grad()
    def copy_to(self):
        for s, p in zip(self.shadow, self.params):
            p.copy_(s)

    def state_dict(self):
        return {"decay": self.decay, "shadow": self.shadow}

    def load_state_dict(self, sd):
        self.decay = sd["decay"]
        for s, v in zip(self.shadow, sd["shadow"]):
            s.copy_(v)


def lr_at(step, total, base, warmup=100):
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


# ---------------------------------------------------------------- stage 1: VAE
def train_vae(a, images):
    path = os.path.join(a.work, "vae_final")
    if os.path.exists(os.path.join(path, "config.json")):
        log("VAE: using", path)
        return AutoencoderKL.from_pretrained(path)
    seed_all(SEED)
    vae = make_vae().to(a.device)
    opt = torch.optim.AdamW(vae.parameters(), lr=a.vae_lr, weight_decay=0.0)
    ck = os.path.join(a.work, "vae_ckpt.pt")
    start = 0
    gen = torch.Generator().manual_seed(SEED + 1)
    if os.path.exists(ck):
        sd = torch.load(ck, map_location="cpu", weights_only=False)
        vae.load_state_dict(sd["model"])
        opt.load_state_dict(sd["opt"])
        gen.set_state(sd["gen"])
        start = sd["step"]
        log("VAE: resumed at step", start)
    n = images.shape[0]
    t0 = time.time()
    vae.train()
    for step in range(start, a.vae_steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, a.vae_steps, a.vae_lr, warmup=30)
        idx = torch.randint(0, n, (a.batch,), generator=gen)
        x = images[idx].to(a.device)
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen).to(a.device)
        rec = vae.decode(z).sample
        l_rec = F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x)
        kl = post.kl().mean() / post.mean[0].numel()
        loss = l_rec + a.kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        if step % 25 == 0 or step == a.vae_steps - 1:
            log(f"VAE step {step} rec {l_rec.item():.5f} kl {kl.item():.3f} "
                f"({(time.time() - t0) / (step - start + 1):.3f} s/step)")
        if (step + 1) % 100 == 0:
            torch.save({"model": vae.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state(),
                        "step": step + 1}, ck)
    vae.eval()
    vae.to("cpu")
    with torch.no_grad():
        lat = torch.cat([vae.encode(images[i:i + 256]).latent_dist.mean for i in range(0, n, 256)])
        rec = torch.cat([vae.decode(lat[i:i + 256]).sample for i in range(0, n, 256)])
        mse = F.mse_loss(rec.clamp(-1, 1), images).item()
        post = vae.encode(images[:512]).latent_dist
        std = post.sample(generator=torch.Generator().manual_seed(0)).std().item()
    sf = 1.0 / std
    vae.register_to_config(scaling_factor=round(sf, 5))
    log(f"VAE done: recon mse (on [-1,1]) {mse:.5f}, latent std {std:.4f} -> scaling_factor {sf:.5f}")
    vae.save_pretrained(path)
    return vae


# ---------------------------------------------------------------- stage 2: UNet + text encoder
def prompt_table(tok):
    """ids[digit, template] -> (10, T, 77) LongTensor, plus the empty prompt's ids (77,)."""
    def enc(p):
        return tok(p, padding="max_length", max_length=tok.model_max_length, truncation=True,
                   return_tensors="pt").input_ids[0]
    ids = torch.stack([torch.stack([enc(t.format(d=d, w=WORDS[d])) for t in TEMPLATES]) for d in range(10)])
    return ids, enc("")


def train_unet(a, vae, images, labels, tok):
    path = os.path.join(a.work, "unet_final")
    if os.path.exists(os.path.join(path, "unet", "config.json")):
        log("UNet: using", path)
        return (UNet2DConditionModel.from_pretrained(os.path.join(path, "unet")),
                CLIPTextModel.from_pretrained(os.path.join(path, "text_encoder")))
    seed_all(SEED + 10)
    dev = a.device
    unet = make_unet().to(dev)
    te = make_text_encoder(tok).to(dev)
    params = list(unet.parameters()) + list(te.parameters())
    opt = torch.optim.AdamW(params, lr=a.unet_lr, weight_decay=1e-4)
    ema = EMA([unet, te], a.ema)
    sched = DDPMScheduler(**{k: v for k, v in SCHEDULER_CONFIG.items()
                             if k not in ("set_alpha_to_one", "timestep_spacing")})
    acp = sched.alphas_cumprod
    ids_table, empty_ids = prompt_table(tok)
    images = images.to(dev)
    vae = vae.to(dev)
    sf = vae.config.scaling_factor
    with torch.no_grad():
        post = [vae.encode(images[i:i + 256]).latent_dist for i in range(0, images.shape[0], 256)]
        lat_mean = torch.cat([p.mean for p in post])
        lat_std = torch.cat([p.std for p in post])
    vae.to("cpu")
    gen = torch.Generator().manual_seed(SEED + 2)
    ck = os.path.join(a.work, "unet_ckpt.pt")
    start = 0
    if os.path.exists(ck):
        sd = torch.load(ck, map_location="cpu", weights_only=False)
        unet.load_state_dict(sd["unet"])
        te.load_state_dict(sd["te"])
        opt.load_state_dict(sd["opt"])
        ema.load_state_dict(sd["ema"])
        gen.set_state(sd["gen"])
        start = sd["step"]
        log("UNet: resumed at step", start)
    n = images.shape[0]
    T = len(TEMPLATES)
    unet.train()
    te.train()
    t0 = time.time()
    run = None
    for step in range(start, a.unet_steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, a.unet_steps, a.unet_lr)
        idx = torch.randint(0, n, (a.batch,), generator=gen)
        z0 = (lat_mean[idx] + lat_std[idx] * torch.randn(lat_mean[idx].shape, generator=gen).to(dev)) * sf
        tmpl = torch.randint(0, T, (a.batch,), generator=gen)
        ids = ids_table[labels[idx], tmpl]
        drop = torch.rand(a.batch, generator=gen) < a.uncond
        ids = torch.where(drop[:, None], empty_ids[None, :], ids).to(dev)
        t = torch.randint(0, sched.config.num_train_timesteps, (a.batch,), generator=gen)
        eps = torch.randn(z0.shape, generator=gen).to(dev)
        ab = acp[t].view(-1, 1, 1, 1).to(dev)
        t = t.to(dev)
        zt = ab.sqrt() * z0 + (1 - ab).sqrt() * eps
        cond = te(ids)[0]
        pred = unet(zt, t, encoder_hidden_states=cond).sample
        loss = F.mse_loss(pred, eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema.update(step)
        run = loss.item() if run is None else 0.98 * run + 0.02 * loss.item()
        if step % 50 == 0 or step == a.unet_steps - 1:
            el = time.time() - t0
            sps = el / (step - start + 1)
            log(f"UNet step {step} loss {loss.item():.4f} avg {run:.4f} lr {opt.param_groups[0]['lr']:.2e} "
                f"({sps:.3f} s/step, eta {sps * (a.unet_steps - step - 1) / 60:.1f} min)")
        if (step + 1) % 250 == 0 and step + 1 < a.unet_steps:
            torch.save({"unet": unet.state_dict(), "te": te.state_dict(), "opt": opt.state_dict(),
                        "ema": ema.state_dict(), "gen": gen.get_state(), "step": step + 1}, ck + ".tmp")
            os.replace(ck + ".tmp", ck)
    ema.copy_to()
    unet.to("cpu")
    te.to("cpu")
    unet.eval()
    te.eval()
    unet.save_pretrained(os.path.join(path, "unet"))
    te.save_pretrained(os.path.join(path, "text_encoder"))
    log(f"UNet done in {(time.time() - t0) / 60:.1f} min (this run)")
    return unet, te


# ---------------------------------------------------------------- stage 3/4: pipeline + ONNX
KEEP = [
    "model_index.json",
    "scheduler/scheduler_config.json",
    "tokenizer/merges.txt",
    "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json",
    "text_encoder/config.json",
    "text_encoder/model.onnx",
    "unet/config.json",
    "unet/model.onnx",
    "vae_decoder/config.json",
    "vae_decoder/model.onnx",
    "vae_encoder/config.json",
    "vae_encoder/model.onnx",
]


def export(a, pipe_dir):
    onnx_dir = os.path.join(a.work, "onnx")
    shutil.rmtree(onnx_dir, ignore_errors=True)
    cli = os.path.join(os.path.dirname(sys.executable), "optimum-cli")
    subprocess.run([cli, "export", "onnx", "--model", pipe_dir, "--task", "text-to-image", onnx_dir], check=True)
    out = os.path.abspath(a.out)
    for sub in ["scheduler", "tokenizer", "text_encoder", "unet", "vae_decoder", "vae_encoder"]:
        shutil.rmtree(os.path.join(out, sub), ignore_errors=True)
    for rel in KEEP:
        src = os.path.join(onnx_dir, rel)
        dst = os.path.join(out, rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        if rel.endswith(".json"):
            # optimum records the temporary source path; it means nothing in the package.
            with open(src) as f:
                doc = json.load(f)
            doc.pop("_name_or_path", None)
            with open(dst, "w") as f:
                json.dump(doc, f, indent=2, sort_keys=True)
                f.write("\n")
        else:
            shutil.copyfile(src, dst)
    for extra in glob.glob(os.path.join(onnx_dir, "*", "*.onnx_data")):
        sys.exit(f"unexpected external data file {extra}")
    total = sum(os.path.getsize(os.path.join(out, r)) for r in KEEP)
    log(f"exported to {out}: {total / 1e6:.2f} MB")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/digits-work", help="checkpoints + diffusers pipeline (outside the repo)")
    ap.add_argument("--out", default=os.path.join(REPO, "models", "digits"), help="ONNX package directory")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="torch device for training (the package is made on cpu)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--vae-steps", type=int, default=600)
    ap.add_argument("--vae-lr", type=float, default=2e-3)
    ap.add_argument("--kl-weight", type=float, default=1e-3)
    ap.add_argument("--unet-steps", type=int, default=3500)
    ap.add_argument("--unet-lr", type=float, default=1.5e-3)
    ap.add_argument("--uncond", type=float, default=0.15, help="fraction of empty prompts (CFG)")
    ap.add_argument("--ema", type=float, default=0.998)
    ap.add_argument("--no-export", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    os.makedirs(a.work, exist_ok=True)
    t0 = time.time()
    tok_dir = os.path.join(a.work, "tokenizer")
    write_truncated(tok_dir, vocab_size=1000)
    tok = CLIPTokenizer.from_pretrained(tok_dir)
    images, labels = digit_images()
    vae = train_vae(a, images)
    vae.eval().requires_grad_(False)
    unet, te = train_unet(a, vae, images, labels, tok)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=te, tokenizer=tok, unet=unet,
        scheduler=DDIMScheduler(**SCHEDULER_CONFIG),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe_dir = os.path.join(a.work, "pipeline")
    pipe.save_pretrained(pipe_dir, safe_serialization=True)
    log("saved diffusers pipeline to", pipe_dir)
    log(f"training total {(time.time() - t0) / 60:.1f} min (this run)")
    if not a.no_export:
        export(a, pipe_dir)


if __name__ == "__main__":
    main()
