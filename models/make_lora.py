#!/usr/bin/env python
"""Make tiny LoRA files for the tiny test packages and diffusers goldens that use them.

Run from the repository root (by hand; CI never runs this):
    /work/venv-ved/bin/python models/make_lora.py
It takes about a minute on CPU and (re)writes only:
    models/lora/*.safetensors, models/lora/README.md   the LoRA files and their description (with the numbers below)
    tests/golden/lora/                                 goldens (*.latents.npy, *.png) + manifest.json

Steps (all run, in this order):
  1. bases     rebuild the PyTorch pipelines of the committed packages models/tiny-sd, models/tiny-sdxl and
               models/tiny-flux with their own builders and seeds (make_tiny.py, make_edit.py, make_flow.py) in a
               temp dir, and check them against the committed ONNX graphs (the scripts' check_graphs: random inputs,
               max abs <= 1e-4) so the goldens belong to the committed packages.
  2. loras     make the LoRA weights (fixed seeds) and write them in several on-disk formats:
                 sd_a.safetensors          diffusers/PEFT (`unet.<path>.lora_A/lora_B.weight`, alpha in the header's
                                           `lora_adapter_metadata`), what StableDiffusionPipeline.save_lora_weights writes
                 sd_a_kohya.safetensors    the same weights, kohya/sd-scripts naming, `.alpha` 0-d tensors
                 sd_a_old.safetensors      the same weights, old diffusers attn-processor naming (no alpha: alpha/rank
                                           folded into `up`)
                 sd_b.safetensors          kohya LoCon: 3x3 resnet convs, 1x1 convs, Gemm-type and attention linears
                 sd_te.safetensors         text-encoder only, diffusers/PEFT naming with metadata
                 sd_te_kohya.safetensors   the same, kohya `lora_te_` naming
                 sdxl_a.safetensors        SDXL UNet, diffusers/PEFT naming with metadata
                 sdxl_a_kohya.safetensors  the same, kohya naming with the original (SGM) block names
                 flux_bfl.safetensors      FLUX, kohya/BFL naming with fused qkv and fused single-block linear1
                 flux_diffusers.safetensors  the same, as diffusers' kohya-flux converter turns it into diffusers naming
               and verify in diffusers that every twin gives the output of its reference file (max abs of the
               final latents), and that a merge by hand (W += strength * alpha/rank * up @ down) gives diffusers' result.
  3. goldens   run the diffusers pipelines with load_lora_weights(..., adapter_name=...) + set_adapters and write
               tests/golden/lora/; check fuse_lora == unfused run and unfuse_lora + disable_lora == base.
  4. readme    models/lora/README.md (files, formats, targets, rank/alpha, measured numbers).

Pinned (same as make_tiny.py, plus peft): torch==2.15.0 diffusers==0.39.0 transformers==4.57.6 optimum-onnx==0.1.0
peft==0.21.2. The script refuses to run with other versions. The venv used: /work/venv-ved (pip install
diffusers==0.39.0 peft==0.21.2 into a venv with the make_tiny.py pins).

Known limitation (diffusers 0.39.0): _convert_kohya_flux_lora_to_diffusers splits `single_blocks_N_linear1` with the
FLUX.1 sizes hard-coded (dims [3072, 3072, 3072, 12288]), so diffusers cannot load flux_bfl.safetensors for the tiny
FLUX (inner dim 16, mlp 64). The script verifies flux_bfl's double blocks and linear2 by loading them through
diffusers' converter, and its linear1 by running diffusers' converter on a copy zero-padded to the FLUX.1 sizes (then
cropped); flux_diffusers.safetensors is exactly that conversion. The output equivalence of the two files is checked
against a merge by hand of the fused BFL weights.
"""

import argparse
import copy
import json
import os
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import make_edit as me  # noqa: E402  (models/ is the script's dir)
import make_flow as mf  # noqa: E402
import make_tiny as mt  # noqa: E402

PINS = {**mt.PINS, "peft": "0.21.2"}
OUT = os.path.join(ROOT, "models", "lora")
GOLD = os.path.join(ROOT, "tests", "golden", "lora")
REL_OUT = "models/lora"

PROMPT = mt.PROMPT
NEG = mt.NEG

# Committed packages and how to rebuild their PyTorch pipelines.
PACKAGES = {
    "tiny-sd": dict(out=mt.OUT_SD, builder=lambda toks: mt.build_tiny_sd(toks["tokenizer"]),
                    toks=("tokenizer",), check=me.check_graphs, cls="StableDiffusionPipeline", denoiser="unet"),
    "tiny-sdxl": dict(out=me.OUT_SDXL, builder=me.build_sdxl, toks=("tokenizer", "tokenizer_2"),
                      check=me.check_graphs, cls="StableDiffusionXLPipeline", denoiser="unet"),
    "tiny-flux": dict(out=mf.OUT_FLUX, builder=mf.build_flux, toks=("tokenizer", "tokenizer_2"),
                      check=mf.check_graphs, cls="FluxPipeline", denoiser="transformer"),
}


def check_versions():
    from importlib.metadata import version

    bad = []
    for pkg, want in PINS.items():
        try:
            have = version(pkg)
        except Exception:
            have = None
        if have != want:
            bad.append(f"{pkg}: need {want}, have {have}")
    if bad:
        sys.exit("make_lora.py refuses to run with other versions:\n  " + "\n  ".join(bad))


# --------------------------------------------------------------------------------------------
# 1. base pipelines
# --------------------------------------------------------------------------------------------

def rebuild_bases(work):
    """Rebuilds each package's PyTorch pipeline (same builder, same seeds, the package's own tokenizer folders and
    scheduler config) under `work`, and exits unless it matches the committed ONNX graphs."""
    dirs = {}
    for name, p in PACKAGES.items():
        toks = {k: os.path.join(p["out"], k) for k in p["toks"]}
        pipe = p["builder"](toks)
        d = os.path.join(work, name)
        pipe.save_pretrained(d, safe_serialization=True)
        shutil.copyfile(os.path.join(p["out"], "scheduler", "scheduler_config.json"),
                        os.path.join(d, "scheduler", "scheduler_config.json"))
        for key, src in toks.items():
            shutil.rmtree(os.path.join(d, key))
            shutil.copytree(src, os.path.join(d, key))
        p["check"](d, p["out"], name)
        dirs[name] = d
    return dirs


class Bases:
    def __init__(self, dirs):
        self.dirs = dirs

    def load(self, model):
        """A fresh pipeline (no LoRA state carried between runs)."""
        import diffusers

        cls = getattr(diffusers, PACKAGES[model]["cls"])
        extra = {"add_watermarker": False} if "XL" in cls.__name__ else {}
        pipe = cls.from_pretrained(self.dirs[model], **extra)
        pipe.set_progress_bar_config(disable=True)
        return pipe


# --------------------------------------------------------------------------------------------
# 2. LoRA weights and their on-disk formats
# --------------------------------------------------------------------------------------------
# A LoRA here is dict(component, rank, alpha, weights={module path: (down [r, in(, kh, kw)], up [out, r(, 1, 1)])}).
# FLUX LoRAs are kept in BFL form: weights={bfl name: (down, up)} with up's rows covering all fused targets.

SD_A = dict(component="unet", rank=4, alpha=8.0, seed=11, up_scale=0.5,
            targets=["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2"])
SD_B = dict(component="unet", rank=4, alpha=2.0, seed=12, up_scale=1.0,
            targets=["conv1", "conv2", "conv_shortcut", "time_emb_proj", "proj_in", "proj_out",
                     "attn2.to_k", "attn2.to_v"])
SD_TE = dict(component="text_encoder", rank=4, alpha=16.0, seed=13, up_scale=0.5,
             targets=["q_proj", "k_proj", "v_proj", "out_proj"])
SDXL_A = dict(component="unet", rank=4, alpha=8.0, seed=14, up_scale=0.5,
              targets=["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out",
                       "conv1", "conv2"])
# BFL (kohya FLUX) module -> the diffusers modules its output rows are split into, in order.
FLUX_BFL_TARGETS = {
    "double_blocks_0_img_attn_qkv": ["transformer_blocks.0.attn.to_q", "transformer_blocks.0.attn.to_k",
                                     "transformer_blocks.0.attn.to_v"],
    "double_blocks_0_txt_attn_qkv": ["transformer_blocks.0.attn.add_q_proj", "transformer_blocks.0.attn.add_k_proj",
                                     "transformer_blocks.0.attn.add_v_proj"],
    "double_blocks_0_img_attn_proj": ["transformer_blocks.0.attn.to_out.0"],
    "double_blocks_0_txt_attn_proj": ["transformer_blocks.0.attn.to_add_out"],
    "double_blocks_0_img_mlp_0": ["transformer_blocks.0.ff.net.0.proj"],
    "double_blocks_0_img_mlp_2": ["transformer_blocks.0.ff.net.2"],
    "double_blocks_0_img_mod_lin": ["transformer_blocks.0.norm1.linear"],
    "single_blocks_0_linear1": ["single_transformer_blocks.0.attn.to_q", "single_transformer_blocks.0.attn.to_k",
                                "single_transformer_blocks.0.attn.to_v", "single_transformer_blocks.0.proj_mlp"],
    "single_blocks_0_linear2": ["single_transformer_blocks.0.proj_out"],
}
FLUX_A = dict(component="transformer", rank=4, alpha=2.0, seed=15, up_scale=8.0)
# diffusers' kohya-flux converter's hard-coded FLUX.1 split of single_blocks linear1 (q, k, v, mlp rows)
FLUX1_LINEAR1_DIMS = [3072, 3072, 3072, 12288]


def peft_lora(model, spec):
    """LoRA weights from peft's own LoRA layers: inject_adapter_in_model(LoraConfig(init_lora_weights=False)) into a
    copy of `model` (A and B both get nn.Linear/Conv2d default init; B is then multiplied by up_scale so the effect is
    visible but not saturating). Returns (lora, LoraConfig)."""
    import torch
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    m = copy.deepcopy(model)
    torch.manual_seed(spec["seed"])
    cfg = LoraConfig(r=spec["rank"], lora_alpha=spec["alpha"], target_modules=spec["targets"],
                     init_lora_weights=False)
    m = inject_adapter_in_model(cfg, m)
    sd = get_peft_model_state_dict(m)
    weights = {}
    for k in sorted(sd):
        if k.endswith(".lora_A.weight"):
            path = k[: -len(".lora_A.weight")]
            weights[path] = (sd[k].detach().clone().contiguous(),
                             (sd[path + ".lora_B.weight"].detach() * spec["up_scale"]).contiguous())
    return dict(component=spec["component"], rank=spec["rank"], alpha=float(spec["alpha"]), weights=weights), cfg


def flux_lora(transformer, spec):
    """FLUX LoRA in BFL form; A and B take nn.Linear's default init U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    import torch

    g = torch.Generator().manual_seed(spec["seed"])
    mods = dict(transformer.named_modules())
    r = spec["rank"]
    weights = {}
    for bfl, targets in FLUX_BFL_TARGETS.items():
        n_in = mods[targets[0]].in_features
        n_out = sum(mods[t].out_features for t in targets)
        down = (torch.rand(r, n_in, generator=g) * 2 - 1) / n_in ** 0.5
        up = (torch.rand(n_out, r, generator=g) * 2 - 1) / r ** 0.5 * spec["up_scale"]
        weights[bfl] = (down.contiguous(), up.contiguous())
    return dict(component="transformer", rank=r, alpha=float(spec["alpha"]), weights=weights)


def save(path, tensors, metadata=None):
    """Writes a .safetensors file with a canonical header (metadata and tensors in sorted order, data in that order)
    so that reruns give the same bytes; safetensors' own writer orders the metadata map arbitrarily."""
    import numpy as np

    header, blobs, off = {}, [], 0
    header["__metadata__"] = dict(sorted((metadata or {"format": "pt"}).items()))
    for k in sorted(tensors):
        a = tensors[k].detach().cpu().contiguous().numpy()
        assert a.dtype == np.float32, (k, a.dtype)
        b = a.astype("<f4").tobytes()
        header[k] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)  # the header is padded to 8 bytes, as safetensors does
    with open(path, "wb") as f:
        f.write(len(h).to_bytes(8, "little"))
        f.write(h)
        for b in blobs:
            f.write(b)


def peft_keys(lora, prefix):
    t = {}
    for path, (down, up) in lora["weights"].items():
        t[f"{prefix}{path}.lora_A.weight"] = down
        t[f"{prefix}{path}.lora_B.weight"] = up
    return t


def write_diffusers(fn, lora, cfg, pipe_cls):
    """What <Pipeline>.save_lora_weights writes, with the alpha kept: <component>_lora_adapter_metadata =
    LoraConfig.to_dict() (diffusers stores it as the header's `lora_adapter_metadata`, keys prefixed)."""
    comp = lora["component"]
    meta = cfg.to_dict()
    meta["target_modules"] = sorted(meta["target_modules"])  # a set: sorted so that reruns write the same bytes
    kw = {f"{comp}_lora_layers": peft_keys(lora, ""), f"{comp}_lora_adapter_metadata": meta}
    from safetensors import safe_open

    with tempfile.TemporaryDirectory() as tmp:
        pipe_cls.save_lora_weights(tmp, weight_name=fn, **kw)
        with safe_open(os.path.join(tmp, fn), "pt") as f:  # rewritten with a canonical header, same content
            save(os.path.join(OUT, fn), {k: f.get_tensor(k) for k in f.keys()}, f.metadata())


def kohya_name(prefix, path):
    return prefix + path.replace(".", "_")


def write_kohya(fn, lora, prefix, rename=None, network_module="networks.lora"):
    """kohya/sd-scripts: <prefix><path with . -> _>.lora_down.weight = A, .lora_up.weight = B, .alpha = the real
    alpha (0-d float32). Written by hand: diffusers' convert_state_dict_to_kohya writes alpha = rank."""
    import torch

    t = {}
    for path, (down, up) in lora["weights"].items():
        k = kohya_name(prefix, rename(path) if rename else path)
        assert k + ".lora_down.weight" not in t, k
        t[k + ".lora_down.weight"] = down
        t[k + ".lora_up.weight"] = up
        t[k + ".alpha"] = torch.tensor(lora["alpha"], dtype=torch.float32)
    save(os.path.join(OUT, fn), t, {"ss_network_module": network_module, "ss_network_dim": str(lora["rank"]),
                                    "ss_network_alpha": str(lora["alpha"])})
    return t


OLD_ATTN = {"to_q": "to_q_lora", "to_k": "to_k_lora", "to_v": "to_v_lora", "to_out.0": "to_out_lora"}


def write_old(fn, lora):
    """Old diffusers naming (LoRAAttnProcessor era): attention projections as
    unet.<attention path>.processor.<to_q|to_k|to_v|to_out>_lora.<down|up>.weight, other linears as
    unet.<path>.lora.<down|up>.weight. The format has no alpha (= rank), so alpha/rank is folded into up."""
    scale = lora["alpha"] / lora["rank"]
    t = {}
    for path, (down, up) in lora["weights"].items():
        head, _, last = path.rpartition(".")
        if last == "0" and head.endswith(".to_out"):
            head, last = head[: -len(".to_out")], "to_out.0"
        if last in OLD_ATTN:
            base = f"unet.{head}.processor.{OLD_ATTN[last]}"
        else:
            base = f"unet.{path}.lora"
        t[f"{base}.down.weight"] = down
        t[f"{base}.up.weight"] = (up * scale).contiguous()
    save(os.path.join(OUT, fn), t)


def sgm_path(path, layers_per_block):
    """diffusers UNet2DConditionModel module path -> the original SGM/LDM UNet path kohya uses for SDXL
    (input_blocks / middle_block / output_blocks; resnet conv1 = in_layers.2, conv2 = out_layers.3,
    time_emb_proj = emb_layers.1, conv_shortcut = skip_connection); the inverse of diffusers'
    _maybe_map_sgm_blocks_to_diffusers + _convert_unet_lora_key."""
    p = path.split(".")
    n = layers_per_block + 1
    if p[0] == "down_blocks":
        kind, rest = p[2], p[4:]
        head = f"input_blocks.{1 + int(p[1]) * n + int(p[3])}.{0 if kind == 'resnets' else 1}"
    elif p[0] == "mid_block":
        kind, rest = p[1], p[3:]
        head = {("resnets", "0"): "middle_block.0", ("attentions", "0"): "middle_block.1",
                ("resnets", "1"): "middle_block.2"}[(kind, p[2])]
    elif p[0] == "up_blocks":
        kind, rest = p[2], p[4:]
        head = f"output_blocks.{int(p[1]) * n + int(p[3])}.{0 if kind == 'resnets' else 1}"
    else:
        raise ValueError(f"no SGM name for {path}")
    if kind not in ("resnets", "attentions"):
        raise ValueError(f"no SGM mapping for {path} here (samplers are not mapped)")
    rest = ".".join(rest)
    if kind == "resnets":
        rest = {"conv1": "in_layers.2", "conv2": "out_layers.3", "time_emb_proj": "emb_layers.1",
                "conv_shortcut": "skip_connection"}[rest]
    return f"{head}.{rest}"


def flux_split_by_hand(lora, transformer):
    """BFL -> diffusers as diffusers' converter does it (non-sparse case): down * (alpha/rank) copied to every split
    target (the converter moves the scale to `up` only when alpha/rank < 0.5), up split by rows."""
    mods = dict(transformer.named_modules())
    scale = lora["alpha"] / lora["rank"]
    s_down, s_up = scale, 1.0
    while s_down * 2 < s_up:
        s_down *= 2
        s_up /= 2
    out = {}
    for bfl, (down, up) in lora["weights"].items():
        row = 0
        for t in FLUX_BFL_TARGETS[bfl]:
            n = mods[t].out_features
            out[f"transformer.{t}.lora_A.weight"] = down * s_down
            out[f"transformer.{t}.lora_B.weight"] = up[row: row + n] * s_up
            row += n
        assert row == up.shape[0]
    return out


def flux_convert_with_diffusers(bfl_tensors, lora, transformer):
    """diffusers' _convert_kohya_flux_lora_to_diffusers on flux_bfl; linear1 goes through it zero-padded to FLUX.1's
    hard-coded split sizes and is cropped back afterwards."""
    import torch
    from diffusers.loaders.lora_conversion_utils import _convert_kohya_flux_lora_to_diffusers

    mods = dict(transformer.named_modules())
    rest = {k: v.clone() for k, v in bfl_tensors.items() if "_linear1." not in k}
    conv = _convert_kohya_flux_lora_to_diffusers(rest)
    for bfl, targets in FLUX_BFL_TARGETS.items():
        if not bfl.endswith("_linear1"):
            continue
        down, up = lora["weights"][bfl]
        sizes = [mods[t].out_features for t in targets]
        padded = torch.zeros(sum(FLUX1_LINEAR1_DIMS), up.shape[1])
        row, prow = 0, 0
        for n, big in zip(sizes, FLUX1_LINEAR1_DIMS):
            padded[prow: prow + n] = up[row: row + n]
            row += n
            prow += big
        one = _convert_kohya_flux_lora_to_diffusers({
            f"lora_unet_{bfl}.lora_down.weight": down.clone(),
            f"lora_unet_{bfl}.lora_up.weight": padded,
            f"lora_unet_{bfl}.alpha": bfl_tensors[f"lora_unet_{bfl}.alpha"].clone(),
        })
        # the converter names the targets of single block N with N; rename to ours and crop
        n_idx = bfl.split("_")[2]
        for t, n in zip(targets, sizes):
            k = t.split(".", 2)[2]  # path inside single_transformer_blocks.N
            a = one.pop(f"transformer.single_transformer_blocks.{n_idx}.{k}.lora_A.weight")
            b = one.pop(f"transformer.single_transformer_blocks.{n_idx}.{k}.lora_B.weight")
            assert not b[n:].any(), "padding leaked into the split"
            conv[f"transformer.{t}.lora_A.weight"] = a.contiguous()
            conv[f"transformer.{t}.lora_B.weight"] = b[:n].contiguous()
        assert not one, sorted(one)
    return conv


def make_loras(bases):
    """Writes models/lora/*.safetensors; returns (loras by file, file descriptions)."""
    import diffusers

    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    sd = bases.load("tiny-sd")
    xl = bases.load("tiny-sdxl")
    fx = bases.load("tiny-flux")
    loras, files = {}, {}

    def describe(fn, lora, fmt, equivalent_to=None, **extra):
        loras[fn] = lora
        files[fn] = dict(format=fmt, component=lora["component"], rank=lora["rank"], alpha=lora["alpha"],
                         modules=len(lora["weights"]), equivalent_to=equivalent_to, **extra)

    # tiny-sd UNet attention + feed-forward LoRA, three formats
    a, cfg_a = peft_lora(sd.unet, SD_A)
    write_diffusers("sd_a.safetensors", a, cfg_a, diffusers.StableDiffusionPipeline)
    describe("sd_a.safetensors", a, "diffusers-peft", targets=SD_A["targets"])
    write_kohya("sd_a_kohya.safetensors", a, "lora_unet_")
    describe("sd_a_kohya.safetensors", a, "kohya", "sd_a.safetensors", targets=SD_A["targets"])
    write_old("sd_a_old.safetensors", a)
    describe("sd_a_old.safetensors", a, "diffusers-old", "sd_a.safetensors", targets=SD_A["targets"],
             note="no alpha in this format: up holds up * alpha/rank (= 2)")

    # tiny-sd UNet LoCon (convs) + linears, kohya only
    b, _ = peft_lora(sd.unet, SD_B)
    write_kohya("sd_b.safetensors", b, "lora_unet_", network_module="lycoris.kohya")
    describe("sd_b.safetensors", b, "kohya-locon", targets=SD_B["targets"])

    # tiny-sd text encoder LoRA
    te, cfg_te = peft_lora(sd.text_encoder, SD_TE)
    write_diffusers("sd_te.safetensors", te, cfg_te, diffusers.StableDiffusionPipeline)
    describe("sd_te.safetensors", te, "diffusers-peft", targets=SD_TE["targets"])
    write_kohya("sd_te_kohya.safetensors", te, "lora_te_")
    describe("sd_te_kohya.safetensors", te, "kohya", "sd_te.safetensors", targets=SD_TE["targets"])

    # tiny-sdxl UNet LoRA, diffusers naming and kohya SGM naming
    x, cfg_x = peft_lora(xl.unet, SDXL_A)
    write_diffusers("sdxl_a.safetensors", x, cfg_x, diffusers.StableDiffusionXLPipeline)
    describe("sdxl_a.safetensors", x, "diffusers-peft", targets=SDXL_A["targets"])
    lpb = xl.unet.config.layers_per_block
    write_kohya("sdxl_a_kohya.safetensors", x, "lora_unet_", rename=lambda p: sgm_path(p, lpb),
                network_module="lycoris.kohya")
    describe("sdxl_a_kohya.safetensors", x, "kohya-sgm", "sdxl_a.safetensors", targets=SDXL_A["targets"])

    # tiny-flux: BFL fused form, and diffusers naming as diffusers converts it
    f = flux_lora(fx.transformer, FLUX_A)
    bfl = write_kohya("flux_bfl.safetensors", f, "lora_unet_")
    describe("flux_bfl.safetensors", f, "kohya-flux", "flux_diffusers.safetensors",
             targets=list(FLUX_BFL_TARGETS))
    conv = flux_convert_with_diffusers(bfl, f, fx.transformer)
    by_hand = flux_split_by_hand(f, fx.transformer)
    assert sorted(conv) == sorted(by_hand), (sorted(conv), sorted(by_hand))
    split_diff = max(float((conv[k] - by_hand[k]).abs().max()) for k in conv)
    print(f"flux: diffusers' converter vs split by hand, max abs {split_diff:.2e} over {len(conv)} tensors")
    assert split_diff == 0.0
    save(os.path.join(OUT, "flux_diffusers.safetensors"), conv)
    fd = dict(component="transformer", rank=f["rank"], alpha=float(f["rank"]),
              weights={k[len("transformer."):-len(".lora_A.weight")]: (conv[k], conv[k.replace("lora_A", "lora_B")])
                       for k in conv if k.endswith(".lora_A.weight")})
    describe("flux_diffusers.safetensors", fd, "diffusers-peft",
             targets=[t for ts in FLUX_BFL_TARGETS.values() for t in ts],
             note="no metadata: alpha = rank; the BFL alpha/rank (0.5) is folded into lora_A, as diffusers does")
    return loras, files, f


# --------------------------------------------------------------------------------------------
# running pipelines
# --------------------------------------------------------------------------------------------

def run(pipe, c):
    """Runs one case; returns (PIL image, final latents as numpy (FLUX: packed), denoiser timesteps, latents
    unpacked (FLUX) or None)."""
    import torch

    captured, calls = {}, []

    def cb(p, i, t, kw):
        captured["latents"] = kw["latents"].detach().clone()
        return kw

    denoiser = getattr(pipe, PACKAGES[c["model"]]["denoiser"])
    hook = denoiser.register_forward_pre_hook(
        lambda m, a, k: calls.append(float((k.get("timestep") if "timestep" in k else a[1]).flatten()[0])),
        with_kwargs=True)
    kwargs = dict(prompt=c["prompt"], num_inference_steps=c["steps"], guidance_scale=c["guidance_scale"],
                  width=c["width"], height=c["height"], num_images_per_prompt=1,
                  generator=torch.Generator("cpu").manual_seed(c["seed"]), output_type="pil",
                  callback_on_step_end=cb, callback_on_step_end_tensor_inputs=["latents"])
    if c["kind"] == "flux_txt2img":
        kwargs["max_sequence_length"] = c["max_sequence_length"]
    else:
        kwargs["negative_prompt"] = c["negative_prompt"]
    try:
        with torch.no_grad():
            out = pipe(**kwargs)
    finally:
        hook.remove()
    lat = captured["latents"]
    unpacked = None
    if c["kind"] == "flux_txt2img":
        unpacked = pipe._unpack_latents(lat, c["height"], c["width"], pipe.vae_scale_factor).float().numpy()
    return out.images[0], lat.float().numpy(), calls, unpacked


def with_loras(bases, c, loras):
    """A fresh pipeline of the case's model with `loras` [(file, strength, adapter name)] loaded by diffusers."""
    pipe = bases.load(c["model"])
    for fn, _, name in loras:
        pipe.load_lora_weights(OUT, weight_name=fn, adapter_name=name)
    if loras:
        pipe.set_adapters([n for _, _, n in loras], [s for _, s, _ in loras])
    return pipe


def merged_by_hand(bases, c, stack):
    """A fresh pipeline with W += strength * alpha/rank * up @ down merged into the weights by hand (the math the
    Rust side implements); stack = [(lora, strength)]. FLUX BFL LoRAs are split by rows onto their targets."""
    import torch

    pipe = bases.load(c["model"])
    for lora, strength in stack:
        comp = getattr(pipe, lora["component"])
        mods = dict(comp.named_modules())
        s = strength * lora["alpha"] / lora["rank"]
        for name, (down, up) in lora["weights"].items():
            dw = (up.flatten(1).double() @ down.flatten(1).double()) * s
            targets = FLUX_BFL_TARGETS.get(name, [name])
            row = 0
            with torch.no_grad():
                for t in targets:
                    w = mods[t].weight
                    n = w.shape[0]
                    w += dw[row: row + n].reshape(w.shape).to(w.dtype)
                    row += n
            assert row == dw.shape[0], name
    return pipe


def pixel_diff(a, b):
    import numpy as np

    d = np.abs(np.asarray(a).astype(np.int32) - np.asarray(b).astype(np.int32))
    return int(d.max()), float(d.mean())


# --------------------------------------------------------------------------------------------
# 3. goldens
# --------------------------------------------------------------------------------------------

def lora_file(fn):
    return f"{REL_OUT}/{fn}"


def golden_cases():
    sd = dict(model="tiny-sd", kind="txt2img", pipeline="StableDiffusionPipeline", seed=700, steps=6,
              guidance_scale=7.5, negative_prompt=NEG, max_sequence_length=None)
    xl = dict(model="tiny-sdxl", kind="sdxl_txt2img", pipeline="StableDiffusionXLPipeline", seed=701, steps=6,
              guidance_scale=5.0, negative_prompt=NEG, max_sequence_length=None)
    fx = dict(model="tiny-flux", kind="flux_txt2img", pipeline="FluxPipeline", seed=702, steps=6,
              guidance_scale=3.5, negative_prompt=None, max_sequence_length=64)
    C = []

    def case(name, base, loras, common):
        C.append(dict(name=name, **common, prompt=PROMPT, width=64, height=64, num_images=1, eta=0.0,
                      scheduler=None, scheduler_overrides={}, base_case=base,
                      loras=[dict(file=lora_file(fn), strength=s, adapter_name=n) for fn, s, n in loras]))

    case("sd_base", None, [], sd)
    case("sd_a", "sd_base", [("sd_a.safetensors", 1.0, "a")], sd)
    case("sd_stack", "sd_base", [("sd_a.safetensors", 0.7, "a"), ("sd_b.safetensors", -0.4, "b")], sd)
    case("sd_te", "sd_base", [("sd_te.safetensors", 1.0, "te")], sd)
    case("sd_b_locon", "sd_base", [("sd_b.safetensors", 0.8, "b")], sd)
    case("sdxl_base", None, [], xl)
    case("sdxl_a", "sdxl_base", [("sdxl_a.safetensors", 1.0, "a")], xl)
    case("flux_base", None, [], fx)
    case("flux_a", "flux_base", [("flux_diffusers.safetensors", 1.0, "a")], fx)
    return C


def case_loras(c):
    return [(os.path.basename(l["file"]), l["strength"], l["adapter_name"]) for l in c["loras"]]


def make_goldens(bases, loras, files, flux_bfl):
    import numpy as np

    shutil.rmtree(GOLD, ignore_errors=True)
    os.makedirs(GOLD)
    manifest, results, images, latents = [], {}, {}, {}
    for c in golden_cases():
        pipe = with_loras(bases, c, case_loras(c))
        img, lat, ts, unpacked = run(pipe, c)
        sched = pipe.scheduler
        images[c["name"]], latents[c["name"]] = img, lat
        png, lfn = f"{c['name']}.png", f"{c['name']}.latents.npy"
        img.save(os.path.join(GOLD, png))
        np.save(os.path.join(GOLD, lfn), lat.astype(np.float32))
        entry = dict(c)
        tensors = {}
        if unpacked is not None:
            tensors["latents_unpacked"] = f"{c['name']}.latents_unpacked.npy"
            np.save(os.path.join(GOLD, tensors["latents_unpacked"]), unpacked.astype(np.float32))
        entry.update(scheduler_class=type(sched).__name__,
                     scheduler_config={k: v for k, v in dict(sched.config).items() if not k.startswith("_")},
                     timesteps=ts, unet_calls=len(ts), png=[png], latents=lfn, latents_shape=list(lat.shape),
                     tensors=tensors)
        r = {}
        if c["base_case"]:
            mx, mean = pixel_diff(img, images[c["base_case"]])
            r["pixels_vs_base"] = dict(max=mx, mean=round(mean, 3))
            r["latents_vs_base_max_abs"] = float(np.abs(lat - latents[c["base_case"]]).max())
            if mean < 5.0:
                print(f"WARNING {c['name']}: mean pixel difference from the base only {mean:.2f}")
            # the same stack merged into the weights by hand
            stack = [(flux_bfl if fn == "flux_diffusers.safetensors" else loras[fn], s) for fn, s, _ in case_loras(c)]
            _, hlat, _, _ = run(merged_by_hand(bases, c, stack), c)
            r["merged_by_hand_latents_max_abs"] = float(np.abs(hlat - lat).max())
        if c["name"] == "sd_stack":
            r.update(fuse_checks(pipe, c, lat, latents["sd_base"]))
        entry["checks"] = r
        results[c["name"]] = r
        manifest.append(entry)
        print(f"golden {c['name']:12s} {type(sched).__name__} calls {len(ts)} latents {tuple(lat.shape)} "
              + " ".join(f"{k}={v}" for k, v in r.items()))
    equivalence = check_equivalents(bases, files, latents, images)
    return manifest, results, equivalence


def fuse_checks(pipe, c, lat, base_lat):
    """fuse_lora(lora_scale=1.0) == the unfused run; unfuse_lora + disable_lora == the base."""
    import numpy as np

    names = [l["adapter_name"] for l in c["loras"]]
    pipe.fuse_lora(lora_scale=1.0, adapter_names=names)
    _, flat, _, _ = run(pipe, c)
    pipe.unfuse_lora()
    pipe.disable_lora()
    _, ulat, _, _ = run(pipe, c)
    return dict(fused_latents_max_abs=float(np.abs(flat - lat).max()),
                unfused_disabled_vs_base_latents_max_abs=float(np.abs(ulat - base_lat).max()))


def check_equivalents(bases, files, latents, images):
    """Each twin file, loaded by diffusers in place of its reference, in the first case that uses the reference."""
    import numpy as np

    out = {}
    cases = golden_cases()
    for fn, d in files.items():
        ref = d["equivalent_to"]
        if not ref or fn == "flux_bfl.safetensors":
            continue
        c = next(c for c in cases if any(os.path.basename(l["file"]) == ref for l in c["loras"]))
        loras = [(fn if f == ref else f, s, n) for f, s, n in case_loras(c)]
        img, lat, _, _ = run(with_loras(bases, c, loras), c)
        mx, mean = pixel_diff(img, images[c["name"]])
        out[lora_file(fn)] = dict(reference=lora_file(ref), case=c["name"],
                                  latents_max_abs=float(np.abs(lat - latents[c["name"]]).max()),
                                  pixels_max=mx, pixels_mean=round(mean, 4))
        print(f"equivalent {fn:26s} vs {ref:20s} in {c['name']}: latents max abs "
              f"{out[lora_file(fn)]['latents_max_abs']:.2e}, pixels max {mx}")
    # flux_bfl cannot be loaded by diffusers 0.39 at the tiny sizes (see the docstring): load its part without
    # single_blocks linear1 through diffusers' kohya converter and compare with the same part merged by hand.
    out[lora_file("flux_bfl.safetensors")] = check_flux_bfl(bases, latents, images)
    return out


def check_flux_bfl(bases, latents, images):
    import numpy as np
    from safetensors.torch import load_file

    c = next(c for c in golden_cases() if c["name"] == "flux_a")
    t = load_file(os.path.join(OUT, "flux_bfl.safetensors"))
    res = dict(reference=lora_file("flux_diffusers.safetensors"), case=c["name"])
    pipe = bases.load("tiny-flux")
    try:
        pipe.load_lora_weights(OUT, weight_name="flux_bfl.safetensors", adapter_name="a")
        res["diffusers_loads_whole_file"] = True
    except Exception as e:  # noqa: BLE001  (expected: the hard-coded FLUX.1 linear1 split)
        import traceback

        last = traceback.extract_tb(e.__traceback__)[-1]
        res["diffusers_loads_whole_file"] = False
        res["diffusers_error"] = (f"{type(e).__name__} {str(e)[:200]} at {os.path.basename(last.filename)}:"
                                  f"{last.lineno}: {last.line}")
    # the whole BFL file merged by hand (fused rows split onto the diffusers modules) vs the golden
    w_all = {}
    for k, v in t.items():
        if k.endswith(".lora_down.weight"):
            name = k[len("lora_unet_"): -len(".lora_down.weight")]
            w_all[name] = (v, t[f"lora_unet_{name}.lora_up.weight"])
    alpha = float(t["lora_unet_single_blocks_0_linear2.alpha"])
    assert all(float(v) == alpha for k, v in t.items() if k.endswith(".alpha"))
    whole = dict(component="transformer", rank=FLUX_A["rank"], alpha=alpha, weights=w_all)
    img_hand, lat_hand, _, _ = run(merged_by_hand(bases, c, [(whole, 1.0)]), c)
    res["merged_by_hand_vs_golden_latents_max_abs"] = float(np.abs(lat_hand - latents[c["name"]]).max())
    res["merged_by_hand_vs_golden_pixels_max"] = pixel_diff(img_hand, images[c["name"]])[0]
    part = {k: v for k, v in t.items() if "_linear1." not in k}
    pipe = bases.load("tiny-flux")
    pipe.load_lora_weights(part, adapter_name="a")
    _, lat_part, _, _ = run(pipe, c)
    w = {}
    for k, v in t.items():
        if "_linear1." in k or not k.endswith(".lora_down.weight"):
            continue
        name = k[len("lora_unet_"): -len(".lora_down.weight")]
        w[name] = (v, t[f"lora_unet_{name}.lora_up.weight"])
    lora = dict(component="transformer", rank=FLUX_A["rank"], alpha=alpha, weights=w)
    _, lat_hand, _, _ = run(merged_by_hand(bases, c, [(lora, 1.0)]), c)
    res["without_linear1_diffusers_vs_merged_by_hand_latents_max_abs"] = float(np.abs(lat_part - lat_hand).max())
    res["linear1"] = ("converted with diffusers' converter on a copy zero-padded to FLUX.1's split sizes, then "
                      "cropped: equals the row split by hand exactly (flux_diffusers.safetensors)")
    print(f"equivalent flux_bfl.safetensors merged by hand vs flux_a: latents max abs "
          f"{res['merged_by_hand_vs_golden_latents_max_abs']:.2e}, pixels max "
          f"{res['merged_by_hand_vs_golden_pixels_max']}; without linear1 in diffusers vs merged by hand: "
          f"{res['without_linear1_diffusers_vs_merged_by_hand_latents_max_abs']:.2e}; whole file loads in "
          f"diffusers: {res['diffusers_loads_whole_file']} {res.get('diffusers_error', '')}")
    return res


DESCRIPTION = (
    "diffusers (PyTorch, CPU, float32) text-to-image outputs with LoRAs, for models/tiny-sd, models/tiny-sdxl and "
    "models/tiny-flux, made by models/make_lora.py. Each case: a fresh pipeline of the package (from_pretrained), "
    "then for each entry of `loras` pipe.load_lora_weights(file, adapter_name=adapter_name), then "
    "pipe.set_adapters([adapter_name...], [strength...]) (no fuse), then pipe(prompt, negative_prompt (not FLUX), "
    "num_inference_steps=steps, guidance_scale, width, height, generator=torch.Generator('cpu').manual_seed(seed), "
    "max_sequence_length (FLUX)). scheduler null = the package's own scheduler and config (scheduler_class, "
    "scheduler_config informative). LoRA math (diffusers/PEFT): W' = W + sum_i strength_i * alpha_i / rank_i * "
    "up_i @ down_i (convs: flattened, up is 1x1); alpha from the diffusers header metadata "
    "(lora_adapter_metadata, '<component>.lora_alpha'), from kohya '.alpha' tensors, else = rank. "
    "latents = the final latents before the VAE (SD/SDXL [1,4,8,8]; FLUX PACKED [1,16,64], tensors.latents_unpacked "
    "[1,16,8,8]); png = the decoded image. timesteps = the timestep the denoiser got at each call (unet_calls of "
    "them; FLUX t/1000). base_case = the same request without LoRA; checks.pixels_vs_base = how much the LoRA changes "
    "the image; checks.merged_by_hand_latents_max_abs = the same LoRA stack merged into the weights by hand vs "
    "diffusers' unfused adapters; sd_stack also has fuse_lora == unfused and unfuse+disable == base. `equivalent`: "
    "files that hold the same LoRA in another format and must give the same output as the listed file in every case "
    "(measured in `equivalence_checks`). `files`: format, component, rank, alpha, module count of each LoRA file. "
    "flux_bfl.safetensors is the kohya/BFL (fused qkv, fused single-block linear1) form of flux_diffusers; "
    "diffusers 0.39 cannot load it at these sizes (see models/lora/README.md)."
)


def write_manifest(manifest, files, equivalence):
    from importlib.metadata import version

    try:
        ftfy = version("ftfy")  # CLIPTokenizer's path; PROMPT and NEG tokenize the same with and without it
    except Exception:
        ftfy = None
    equivalent = {}
    for fn, d in files.items():
        if d["equivalent_to"] and fn != "flux_bfl.safetensors":
            equivalent.setdefault(lora_file(d["equivalent_to"]), []).append(lora_file(fn))
    equivalent.setdefault(lora_file("flux_diffusers.safetensors"), []).append(lora_file("flux_bfl.safetensors"))
    mt.write_json(os.path.join(GOLD, "manifest.json"), {
        "description": DESCRIPTION,
        "versions": {**{k: version(k) for k in PINS}, "ftfy": ftfy},
        "files": {lora_file(fn): {**d, "equivalent_to": d["equivalent_to"] and lora_file(d["equivalent_to"]),
                                  "bytes": os.path.getsize(os.path.join(OUT, fn))} for fn, d in files.items()},
        "equivalent": equivalent,
        "equivalence_checks": equivalence,
        "cases": manifest,
    })


# --------------------------------------------------------------------------------------------
# 4. README
# --------------------------------------------------------------------------------------------

FORMAT_TEXT = {
    "diffusers-peft": "diffusers/PEFT: `<component>.<module path>.lora_A.weight` [r, in(, kh, kw)] / `.lora_B.weight` "
                      "[out, r(, 1, 1)]; alpha in the safetensors header `lora_adapter_metadata` (JSON, keys "
                      "`<component>.r`, `<component>.lora_alpha`, ...), absent = rank",
    "kohya": "kohya/sd-scripts: `lora_unet_`/`lora_te_` + module path with `.` -> `_`, `.lora_down.weight` = A, "
             "`.lora_up.weight` = B, `.alpha` = alpha (0-d float32)",
    "kohya-locon": "kohya LoCon: as kohya; conv layers have lora_down [r, in, kh, kw], lora_up [out, r, 1, 1]",
    "kohya-sgm": "kohya SDXL: as kohya (LoCon for convs) but with the original SGM UNet block names "
                 "(`input_blocks_N_M`, `middle_block_N`, `output_blocks_N_M`; resnet conv1 = `in_layers_2`, "
                 "conv2 = `out_layers_3`)",
    "kohya-flux": "kohya/BFL FLUX: `lora_unet_double_blocks_N_{img,txt}_attn_qkv` (fused q,k,v rows), "
                  "`..._{img,txt}_attn_proj`, `..._img_mlp_{0,2}`, `..._img_mod_lin`, "
                  "`lora_unet_single_blocks_N_linear1` (fused q,k,v,mlp rows), `..._linear2`; `.alpha`",
    "diffusers-old": "old diffusers: `unet.<attention path>.processor.{to_q,to_k,to_v,to_out}_lora.{down,up}.weight`, "
                     "other linears `unet.<path>.lora.{down,up}.weight`; no alpha (= rank)",
}


def write_readme(files, results, equivalence):
    lines = [
        "# Tiny LoRA files",
        "",
        "Made by `models/make_lora.py` (fixed seeds; do not edit by hand, rerun the script). Random rank-4 LoRAs for",
        "the tiny packages `models/tiny-sd`, `models/tiny-sdxl`, `models/tiny-flux`; goldens that use them are in",
        "`tests/golden/lora/` (manifest.json). Twins (same LoRA, another format) must give the same output.",
        "",
        "| file | bytes | format | component | rank | alpha | modules | same LoRA as | targets |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for fn, d in files.items():
        lines.append(f"| `{fn}` | {os.path.getsize(os.path.join(OUT, fn))} | {d['format']} | {d['component']} | "
                     f"{d['rank']} | {d['alpha']:g} | {d['modules']} | {d['equivalent_to'] or '-'} | "
                     f"{', '.join(d['targets'])} |")
    lines += ["", "Formats:", ""]
    for k, v in FORMAT_TEXT.items():
        lines.append(f"- {k}: {v}")
    lines += ["", "Notes:", ""]
    for fn, d in files.items():
        if d.get("note"):
            lines.append(f"- `{fn}`: {d['note']}")
    lines += [
        "- `sd_b.safetensors` (LoCon): resnet conv1/conv2 (3x3 convs), conv_shortcut and attention proj_in/proj_out "
        "(1x1 convs in this UNet), time_emb_proj (a Gemm in the ONNX graph) and attn2 to_k/to_v.",
        "- `sd_te*.safetensors`: text encoder only (CLIP q/k/v/out_proj of all 5 layers), no UNet part.",
        "- `sdxl_a*.safetensors`: tiny-sdxl has attention only in its mid block (its down/up blocks are DownBlock2D /",
        "  UpBlock2D), so the attention, ff and (linear) proj_in/proj_out targets are `middle_block_1`; the resnet",
        "  conv1/conv2 targets (LoCon) put keys in every `input_blocks_N_0`, `middle_block_{0,2}`, `output_blocks_N_0`",
        "  so the SGM block mapping is exercised (layers_per_block 1: input_blocks 1, 3 = down_blocks 0, 1;",
        "  output_blocks 0-3 = up_blocks.{0,1}.resnets.{0,1}). Downsamplers/upsamplers are not targeted.",
        "- `flux_bfl.safetensors`: diffusers 0.39.0's kohya-FLUX converter hard-codes FLUX.1's split of",
        "  `single_blocks_N_linear1` ([3072, 3072, 3072, 12288] rows), so diffusers cannot load this file for the tiny",
        "  FLUX (rows [16, 16, 16, 64]). Its other modules load through diffusers' converter (checked below); linear1",
        "  was converted by diffusers' converter on a copy zero-padded to the FLUX.1 sizes and cropped, which equals",
        "  the plain row split exactly. `flux_diffusers.safetensors` is that conversion: lora_A = down * alpha/rank",
        "  (copied to each of q, k, v(, mlp)), lora_B = the rows of up for that target; no metadata (alpha = rank).",
        "",
        "## Measured (diffusers, CPU float32; 64x64, 6 steps, package scheduler)",
        "",
        "| case | LoRAs | pixels vs base max / mean | latents vs base max abs | merged by hand vs diffusers (latents) |",
        "|---|---|---|---|---|",
    ]
    for c in golden_cases():
        r = results[c["name"]]
        if not c["base_case"]:
            continue
        lo = ", ".join(f"{os.path.basename(l['file'])} @ {l['strength']:g}" for l in c["loras"])
        lines.append(f"| {c['name']} | {lo} | {r['pixels_vs_base']['max']} / {r['pixels_vs_base']['mean']} | "
                     f"{r['latents_vs_base_max_abs']:.3f} | {r['merged_by_hand_latents_max_abs']:.1e} |")
    st = results["sd_stack"]
    lines += [
        "",
        f"sd_stack: fuse_lora(lora_scale=1.0) vs unfused: latents max abs {st['fused_latents_max_abs']:.1e}; "
        f"unfuse_lora + disable_lora vs sd_base: {st['unfused_disabled_vs_base_latents_max_abs']:.1e}.",
        "",
        "Twins loaded by diffusers in place of their reference file:",
        "",
        "| file | reference | case | latents max abs | pixels max |",
        "|---|---|---|---|---|",
    ]
    for fn, e in equivalence.items():
        if "latents_max_abs" in e:
            lines.append(f"| `{os.path.basename(fn)}` | `{os.path.basename(e['reference'])}` | {e['case']} | "
                         f"{e['latents_max_abs']:.1e} | {e['pixels_max']} |")
    fb = equivalence[lora_file("flux_bfl.safetensors")]
    lines += [
        f"| `flux_bfl.safetensors` (merged by hand, fused rows split) | `flux_diffusers.safetensors` | flux_a | "
        f"{fb['merged_by_hand_vs_golden_latents_max_abs']:.1e} | {fb['merged_by_hand_vs_golden_pixels_max']} |",
        "",
        f"flux_bfl.safetensors in diffusers: loads whole: {fb['diffusers_loads_whole_file']}"
        + (f" (`{fb['diffusers_error']}`)" if "diffusers_error" in fb else "")
        + "; without its linear1 keys, diffusers' kohya-flux conversion vs the same keys merged by hand: "
        f"latents max abs {fb['without_linear1_diffusers_vs_merged_by_hand_latents_max_abs']:.1e}.",
        "",
    ]
    with open(os.path.join(OUT, "README.md"), "w") as f:
        f.write("\n".join(lines))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.parse_args()
    check_versions()
    import warnings

    import torch
    from diffusers.utils import logging as diffusers_logging

    # loading a second adapter makes peft/diffusers warn about the first one's keys; the outputs are checked instead
    warnings.filterwarnings("ignore", message="Already found a `peft_config`")
    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()

    torch.manual_seed(0)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    os.chdir(ROOT)
    with tempfile.TemporaryDirectory(prefix="diffgentor-lora-") as work:
        bases = Bases(rebuild_bases(work))
        loras, files, flux_bfl = make_loras(bases)
        manifest, results, equivalence = make_goldens(bases, loras, files, flux_bfl)
        write_manifest(manifest, files, equivalence)
        write_readme(files, results, equivalence)
    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT))
    print(f"models/lora: {len(os.listdir(OUT))} files, {total} bytes")


if __name__ == "__main__":
    main()
