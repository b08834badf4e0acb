#!/usr/bin/env python3
"""Check the `digits` package: generate every digit with the ONNX package (optimum's
ORTStableDiffusionPipeline) and with the PyTorch pipeline that train.py saved, at the package defaults
(50 steps, guidance 7.5, the package's DDIM scheduler) and at 20 steps / guidance 3, and classify
the 16x16 outputs with

  * an RBF SVM trained on scikit-learn's 8x8 digits (output downsampled 2x2 to 8x8, inverted to 0..16),
  * the logistic regression this script writes to tests/data/digits_classifier.json (16x16 gray input,
    gray = mean(R,G,B)/255 of the RGB8 image, row-major), which the Rust tests evaluate without Python.

Writes contact sheets (rows = digits 0..9, columns = seeds) to --sheets.

Usage (from the repository root):
    /work/venv/bin/python models/digits/verify.py [--pt /tmp/digits-work/pipeline] [--onnx models/digits]
"""

import argparse
import json
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.svm import SVC

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SPLIT_SEED = 0


def render16_u8():
    """sklearn digits rendered exactly as train.py renders them, as RGB8 (N,16,16,3), labels."""
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False).clamp(0, 1)
    white = (1.0 - x)[:, 0].numpy()
    u8 = np.round(white * 255).astype(np.uint8)
    return np.repeat(u8[..., None], 3, axis=-1), d.target


def gray16(rgb8):
    """(N,16,16,3) uint8 -> (N,256) float: mean of R,G,B / 255, row-major (what the Rust test computes)."""
    return (rgb8.astype(np.float64).mean(axis=-1) / 255.0).reshape(len(rgb8), -1)


def to8x8_ink(rgb8):
    """(N,16,16,3) uint8 -> (N,64) on sklearn's 0..16 ink scale."""
    g = rgb8.astype(np.float64).mean(axis=-1) / 255.0
    g = g.reshape(len(g), 8, 2, 8, 2).mean(axis=(2, 4))
    return ((1.0 - g) * 16.0).reshape(len(g), -1)


def fit_classifiers(json_out):
    d = load_digits()
    rgb, y = render16_u8()
    idx = np.arange(len(y))
    tr, te = train_test_split(idx, test_size=0.25, random_state=SPLIT_SEED, stratify=y)
    svm = SVC(gamma=0.001, C=10.0).fit(d.data[tr], y[tr])
    print(f"SVM (8x8): held-out acc on sklearn 8x8 {svm.score(d.data[te], y[te]):.4f}, "
          f"on 16x16 renders downsampled {svm.score(to8x8_ink(rgb[te]), y[te]):.4f}")
    svm = SVC(gamma=0.001, C=10.0).fit(d.data, y)  # final: all data

    X = gray16(rgb)
    Xa, ya = shifted(X[tr], y[tr])
    lr = LogisticRegression(C=1.0, max_iter=5000).fit(Xa, ya)
    held = lr.score(X[te], y[te])
    print(f"logreg (16x16 gray, +-1 px shifts): train acc {lr.score(X[tr], y[tr]):.4f}, held-out acc {held:.4f} ({len(te)} images)")
    W = lr.coef_.astype(np.float32)
    b = lr.intercept_.astype(np.float32)
    doc = {
        "description": "Multinomial logistic regression recognising handwritten digits 0-9 in the 16x16 output of "
                       "models/digits. predicted digit = argmax_k (weights[k] . x + bias[k]). Trained by "
                       "models/digits/verify.py on 75% of scikit-learn's 8x8 digits rendered like the training "
                       "data (bilinear upsample to 16x16, dark digit on white, RGB8) plus their +-1 pixel shifts; split "
                       "seed 0, stratified; L2, C=1.",
        "input": "16x16 gray mean(RGB)/255, row-major",
        "classes": list(range(10)),
        "heldout_accuracy": round(float(held), 4),
        "weights": [[float(f"{v:.6g}") for v in row] for row in W],
        "bias": [float(f"{v:.6g}") for v in b],
    }
    # the JSON (float32, 6 significant digits) must give the same labels as sklearn
    Wj, bj = np.array(doc["weights"]), np.array(doc["bias"])
    assert (np.argmax(X[te] @ Wj.T + bj, 1) == lr.predict(X[te])).mean() > 0.999
    if json_out:
        with open(json_out, "w") as f:
            json.dump(doc, f, separators=(",", ":"))
            f.write("\n")
        print("wrote", json_out, os.path.getsize(json_out), "bytes")

    def lr_json(rgb8):
        return np.argmax(gray16(rgb8) @ Wj.T + bj, 1)

    return svm, lr_json


def shifted(X, y):
    """X (N,256) gray images plus all their shifts by -1..1 pixels in x and y (white fill)."""
    g = X.reshape(-1, 16, 16)
    xs, ys = [], []
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            s = np.ones_like(g)
            s[:, max(dy, 0):16 + min(dy, 0), max(dx, 0):16 + min(dx, 0)] = \
                g[:, max(-dy, 0):16 + min(-dy, 0), max(-dx, 0):16 + min(-dx, 0)]
            xs.append(s.reshape(len(g), -1))
            ys.append(y)
    return np.concatenate(xs), np.concatenate(ys)


def sheet(imgs, path, scale=4):
    """imgs (10, S, 16, 16, 3) uint8 -> PNG grid with 1px gray gaps."""
    r, c = imgs.shape[:2]
    H = 16 * scale
    out = np.full((r * (H + 2), c * (H + 2), 3), 128, np.uint8)
    for i in range(r):
        for j in range(c):
            big = np.kron(imgs[i, j], np.ones((scale, scale, 1), np.uint8))
            out[i * (H + 2) + 1:i * (H + 2) + 1 + H, j * (H + 2) + 1:j * (H + 2) + 1 + H] = big
    Image.fromarray(out).save(path)


def generate(pipe, seeds, steps, guidance, template):
    """(10, S, 16, 16, 3) uint8; one batch of 10 prompts per seed."""
    out = []
    words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    prompts = [template.format(d=d, w=words[d]) for d in range(10)]
    for s in seeds:
        gens = [torch.Generator().manual_seed(s) for _ in range(10)]
        kw = {}
        if steps is not None:
            kw["num_inference_steps"] = steps
        if guidance is not None:
            kw["guidance_scale"] = guidance
        im = pipe(prompts, generator=gens, output_type="np", **kw).images  # (10,16,16,3) in [0,1]
        out.append(np.round(np.asarray(im) * 255).clip(0, 255).astype(np.uint8))
    return np.stack(out, axis=1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pt", default="/tmp/digits-work/pipeline")
    ap.add_argument("--onnx", default=os.path.join(REPO, "models", "digits"))
    ap.add_argument("--seeds", default="0,1,2,3,4,5,6,7")
    ap.add_argument("--sheets", default="/tmp/digits-sheets")
    ap.add_argument("--json", default=os.path.join(REPO, "tests", "data", "digits_classifier.json"))
    ap.add_argument("--no-json", action="store_true")
    ap.add_argument("--template", default="a handwritten digit {d}")
    ap.add_argument("--skip-pt", action="store_true")
    ap.add_argument("--tag", default="", help="prefix for the contact sheet names")
    a = ap.parse_args()
    torch.set_num_threads(2)
    os.makedirs(a.sheets, exist_ok=True)
    svm, lr_json = fit_classifiers(None if a.no_json else a.json)
    seeds = [int(s) for s in a.seeds.split(",")]
    pipes = {}
    from optimum.onnxruntime import ORTStableDiffusionPipeline

    pipes["onnx"] = ORTStableDiffusionPipeline.from_pretrained(a.onnx)
    if not a.skip_pt:
        from diffusers import StableDiffusionPipeline

        pipes["pt"] = StableDiffusionPipeline.from_pretrained(a.pt)
    for p in pipes.values():
        p.set_progress_bar_config(disable=True)
    print("scheduler:", type(pipes["onnx"].scheduler).__name__, dict(pipes["onnx"].scheduler.config))
    y = np.repeat(np.arange(10)[:, None], len(seeds), 1).reshape(-1)
    results = {}
    for setting, steps, g in [("defaults(50,7.5)", None, None), ("20steps_g3", 20, 3.0)]:
        for name, pipe in pipes.items():
            imgs = generate(pipe, seeds, steps, g, a.template)
            results[(setting, name)] = imgs
            flat = imgs.reshape(-1, 16, 16, 3)
            p_svm = svm.predict(to8x8_ink(flat))
            p_lr = lr_json(flat)
            path = os.path.join(a.sheets, f"{name}_{a.tag}{setting.replace('(', '_').replace(')', '').replace(',', '_')}.png")
            sheet(imgs, path)
            print(f"[{setting} {name}] SVM {np.mean(p_svm == y):.3f} ({(p_svm == y).sum()}/{len(y)})  "
                  f"logreg-json {np.mean(p_lr == y):.3f} ({(p_lr == y).sum()}/{len(y)})  sheet {path}")
            for d in range(10):
                m = y == d
                if (p_svm[m] != d).any() or (p_lr[m] != d).any():
                    print(f"    digit {d}: svm {p_svm[m].tolist()}  logreg {p_lr[m].tolist()}")
        if "pt" in pipes:
            diff = np.abs(results[(setting, "onnx")].astype(int) - results[(setting, "pt")].astype(int))
            print(f"[{setting}] ONNX vs PyTorch: max {diff.max()} levels, mean {diff.mean():.4f}")


if __name__ == "__main__":
    sys.exit(main())
