#!/usr/bin/env python
"""Make the tiny random-weight Stable Diffusion ONNX packages and their goldens.

Run from the repository root:   /work/venv/bin/python models/make_tiny.py [--only STEP ...]
Steps (default: all, in this order):
  models     build tiny diffusers pipelines (temp dir), export them with optimum to
             models/tiny-sd and models/tiny-sd2-v, prune, write README.md with graph I/O
  tokenizer  tests/golden/tokenizer/prompts.json (CLIPTokenizer ids for many prompts)
  goldens    tests/golden/pipelines/: PyTorch StableDiffusionPipeline outputs + manifest.json
  parity     run optimum's ORTStableDiffusionPipeline on the exported graphs and compare
             with the goldens (prints max abs latent difference per case; not written)
The PyTorch pipelines are kept in a cache dir (default /tmp/diffgentor-tiny-pt) so that
'goldens' can run after 'models'; 'models' always rebuilds them (fixed seeds, deterministic).

Pinned: torch==2.15.0 diffusers==0.39.0 transformers==4.57.6 optimum-onnx==0.1.0.

Exported graph I/O (observed, opset 18, all float32 unless noted; also in each package's README.md):
  text_encoder/model.onnx  input_ids int64 [batch, sequence_length]
                           -> last_hidden_state [batch, sequence_length, hidden], pooler_output [batch, hidden]
  unet/model.onnx          sample [batch, 4, h, w], timestep float32 [] (0-d scalar),
                           encoder_hidden_states [batch, sequence_length, hidden] -> out_sample [batch, 4, h, w]
  vae_decoder/model.onnx   latent_sample [batch, 4, h, w] -> sample [batch, 3, 8h, 8w]   (no scaling inside)
  vae_encoder/model.onnx   sample [batch, 3, H, W] -> latent_parameters [batch, 8, H/8, W/8] (mean ++ logvar)
"""

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile

PINS = {
    "torch": "2.15.0",
    "diffusers": "0.39.0",
    "transformers": "4.57.6",
    "optimum-onnx": "0.1.0",
}

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

OUT_SD = os.path.join(ROOT, "models", "tiny-sd")
OUT_SD2 = os.path.join(ROOT, "models", "tiny-sd2-v")
GOLD_TOK = os.path.join(ROOT, "tests", "golden", "tokenizer")
GOLD_PIPE = os.path.join(ROOT, "tests", "golden", "pipelines")
FULL_TOK = os.path.join(ROOT, "tests", "data", "clip-tokenizer")

from sd_configs import SD2_SCHEDULER, SD15_SCHEDULER  # noqa: E402  (models/ is the script's dir)


def check_versions(script="make_tiny.py"):
    """Exits unless the pinned versions are installed; the model scripts all share these pins."""
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
        sys.exit(f"{script} refuses to run with other versions:\n  " + "\n  ".join(bad))


# --------------------------------------------------------------------------------------------
# model definitions
# --------------------------------------------------------------------------------------------

def build_tiny_sd(tok_dir):
    """SD 1.5-style: epsilon, PNDM, VAE factor 8, text hidden 32, default image 64x64.
    UNet (16, 32) and VAE (8, 16, 16, 16) keep the exported package at ~2.2 MB (was 6 MB with (32, 64) and
    (16, 32, 32, 32))."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8,  # latent 8x8 -> 64x64 image
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32),
        layers_per_block=1,
        norm_num_groups=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
    )
    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=64,
        scaling_factor=0.18215,
    )
    torch.manual_seed(0)
    te = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=1000,
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=5,
            num_attention_heads=4,
            max_position_embeddings=77,
            layer_norm_eps=1e-5,
            hidden_act="quick_gelu",
            bos_token_id=998,
            eos_token_id=999,
            pad_token_id=999,
        )
    )
    tok = CLIPTokenizer.from_pretrained(tok_dir)
    sched = PNDMScheduler.from_config({k: v for k, v in SD15_SCHEDULER.items()})
    return StableDiffusionPipeline(
        vae=vae, text_encoder=te, tokenizer=tok, unet=unet, scheduler=sched,
        safety_checker=None, feature_extractor=None, image_encoder=None,
        requires_safety_checker=False,
    )


def build_tiny_sd2v(tok_dir):
    """SD 2.x-style (768-v): v_prediction, DDIM, linear projections, gelu text encoder, pad '!'."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(1)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32),
        layers_per_block=1,
        norm_num_groups=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=48,
        attention_head_dim=(2, 4),  # SD2 style: per-block number of heads
        use_linear_projection=True,
    )
    torch.manual_seed(1)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=64,
        scaling_factor=0.18215,
    )
    torch.manual_seed(1)
    te = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=1000,
            hidden_size=48,
            intermediate_size=64,
            num_hidden_layers=3,
            num_attention_heads=4,
            max_position_embeddings=77,
            layer_norm_eps=1e-5,
            hidden_act="gelu",
            bos_token_id=998,
            eos_token_id=999,
            pad_token_id=0,
        )
    )
    tok = CLIPTokenizer.from_pretrained(tok_dir)
    sched = DDIMScheduler.from_config(dict(SD2_SCHEDULER))
    return StableDiffusionPipeline(
        vae=vae, text_encoder=te, tokenizer=tok, unet=unet, scheduler=sched,
        safety_checker=None, feature_extractor=None, image_encoder=None,
        requires_safety_checker=False,
    )


MODELS = {
    # name: (builder, out dir, tokenizer pad, exact scheduler config)
    "tiny-sd": (build_tiny_sd, OUT_SD, "<|endoftext|>", SD15_SCHEDULER),
    "tiny-sd2-v": (build_tiny_sd2v, OUT_SD2, "!", SD2_SCHEDULER),
}

KEEP_FILES = {
    "model_index.json",
    "scheduler/scheduler_config.json",
    "tokenizer/vocab.json",
    "tokenizer/merges.txt",
    "tokenizer/tokenizer_config.json",
    "tokenizer/special_tokens_map.json",
}
for _c in ("text_encoder", "unet", "vae_decoder", "vae_encoder"):
    KEEP_FILES.add(f"{_c}/config.json")
    KEEP_FILES.add(f"{_c}/model.onnx")


def strict_json(obj):
    """JSON has no Infinity/NaN (diffusers' DPM config holds -inf): write them as strings."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    return obj


def write_json(path, obj, indent=2):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(strict_json(obj), f, indent=indent, ensure_ascii=False, allow_nan=False)
        f.write("\n")


def pt_dir(cache, name):
    return os.path.join(cache, name)


def graph_signature(path):
    import onnx
    from onnx import TensorProto

    m = onnx.load(path, load_external_data=False)

    def fmt(vi):
        t = vi.type.tensor_type
        dims = []
        for d in t.shape.dim:
            dims.append(d.dim_param if d.dim_param else str(d.dim_value))
        return f"{vi.name} {TensorProto.DataType.Name(t.elem_type).lower()} [{', '.join(dims)}]"

    ops = sorted({o.version for o in m.opset_import if o.domain in ("", "ai.onnx")})
    return [fmt(i) for i in m.graph.input], [fmt(o) for o in m.graph.output], ops


def make_models(cache):
    from clip_tokenizer import write_truncated

    shutil.rmtree(cache, ignore_errors=True)
    os.makedirs(cache)
    for name, (builder, out, pad, sched_cfg) in MODELS.items():
        tok_dir = os.path.join(cache, f"_tok-{name}")
        write_truncated(tok_dir, vocab_size=1000, pad_token=pad)
        pipe = builder(tok_dir)
        d = pt_dir(cache, name)
        pipe.save_pretrained(d, safe_serialization=True)
        # Ship the scheduler config exactly as the real package does (missing keys -> class defaults),
        # and the tokenizer folder exactly as clip_tokenizer writes it.
        write_json(os.path.join(d, "scheduler", "scheduler_config.json"), sched_cfg)
        shutil.rmtree(os.path.join(d, "tokenizer"))
        shutil.copytree(tok_dir, os.path.join(d, "tokenizer"))

        shutil.rmtree(out, ignore_errors=True)
        tmp_out = os.path.join(cache, f"_onnx-{name}")
        shutil.rmtree(tmp_out, ignore_errors=True)
        cli = os.path.join(os.path.dirname(sys.executable), "optimum-cli")
        subprocess.run([cli, "export", "onnx", "--model", d, "--task", "text-to-image", tmp_out], check=True)
        # prune everything that is not needed to run
        os.makedirs(out)
        for root, _, files in os.walk(tmp_out):
            for fn in files:
                rel = os.path.relpath(os.path.join(root, fn), tmp_out).replace(os.sep, "/")
                if rel in KEEP_FILES:
                    dst = os.path.join(out, rel)
                    os.makedirs(os.path.dirname(dst), exist_ok=True)
                    shutil.copyfile(os.path.join(root, fn), dst)
                else:
                    print(f"[{name}] dropping {rel}")
        write_json(os.path.join(out, "scheduler", "scheduler_config.json"), sched_cfg)
        shutil.rmtree(os.path.join(out, "tokenizer"), ignore_errors=True)
        shutil.copytree(tok_dir, os.path.join(out, "tokenizer"))
        # drop the temp-dir "_name_or_path" optimum/diffusers record, so reruns are byte-identical
        for rel in KEEP_FILES:
            if rel.endswith(".json") and not rel.startswith("tokenizer/"):
                fp = os.path.join(out, rel)
                if os.path.exists(fp):
                    with open(fp) as f:
                        j = json.load(f)
                    if j.pop("_name_or_path", None) is not None:
                        write_json(fp, j)
        missing = [k for k in KEEP_FILES if not os.path.exists(os.path.join(out, k))]
        if missing:
            sys.exit(f"[{name}] export lacks {missing}")
        write_readme(name, out)


def write_readme(name, out):
    with open(os.path.join(out, "model_index.json")) as f:
        mi = json.load(f)
    lines = [
        f"# {name}",
        "",
        "Random-weight tiny Stable Diffusion package made by `models/make_tiny.py` (do not edit by hand;",
        "rerun the script). Exported with optimum-onnx 0.1.0 `--task text-to-image` from a diffusers",
        f"{mi.get('_class_name')} saved with diffusers {mi.get('_diffusers_version')}.",
        "",
        "Graph I/O (as observed in the exported files):",
        "",
    ]
    for comp in ("text_encoder", "unet", "vae_decoder", "vae_encoder"):
        ins, outs, ops = graph_signature(os.path.join(out, comp, "model.onnx"))
        lines.append(f"- `{comp}/model.onnx` (opset {ops}): inputs " + "; ".join(f"`{s}`" for s in ins)
                     + " -> outputs " + "; ".join(f"`{s}`" for s in outs))
    lines += ["", "scheduler/scheduler_config.json is the real package's config verbatim (keys it omits take the",
              "scheduler class's defaults in diffusers).", ""]
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write("\n".join(lines))


# --------------------------------------------------------------------------------------------
# tokenizer goldens
# --------------------------------------------------------------------------------------------

def tokenizer_prompts():
    long1 = ("a breathtaking ultra detailed matte painting of an ancient castle on a cliff above a stormy sea, "
             "dramatic lighting, volumetric clouds, god rays, trending on artstation, octane render, 8k, "
             "highly detailed, intricate, elegant, sharp focus, illustration, concept art by greg rutkowski "
             "and alphonse mucha and artgerm, golden hour, cinematic composition, masterpiece, best quality")
    long2 = " ".join(["cat"] * 100)
    long3 = ", ".join(f"tag{i}" for i in range(60))
    return [
        "a photo of an astronaut riding a horse",
        "a photo of an astronaut riding a horse on mars",
        "",
        " ",
        "A",
        "a",
        "hello world",
        "Hello World",
        "HELLO WORLD",
        "hElLo WoRlD",
        "  leading and trailing spaces  ",
        "multiple    internal     spaces",
        "tabs\tand\ttabs",
        "new\nline\nseparated",
        "mixed \t\n whitespace \r\n here",
        "don't stop",
        "I'm here, you're there, it's fine, we've done, they'll go, he'd say",
        "DON'T SHOUT",
        "rock 'n' roll",
        "the cat's toy",
        "curly quotes \u2019don\u2019t\u2019 and \u201cquoted\u201d",
        "numbers 1 22 333 4444 55555 1234567890",
        "3.14159 and 2,000,000 and 1e-5",
        "8k uhd, 4k, 1080p",
        "year 1999 vs 2024",
        "punctuation!!! ??? ... ;;; ::: ---",
        "(masterpiece:1.2), [best quality], {detailed}",
        "a, b. c! d? e; f: g",
        "email@example.com http://www.example.com/path?q=1&x=2",
        "#hashtag @mention $money %percent ^caret *star",
        "under_score and hyphen-ated and slash/separated",
        "<b>bold</b> <i>italic</i>",
        "<div class=\"x\">html &amp; entities &lt;tag&gt;</div>",
        "fish &amp; chips",
        "&quot;quoted&quot; &#39;single&#39;",
        "caf\u00e9 na\u00efve r\u00e9sum\u00e9 fa\u00e7ade",
        "cafe\u0301 (decomposed accent)",
        "\u00c9COLE \u00dcBER \u00c5NGSTR\u00d6M",
        "stra\u00dfe gro\u00df",
        "\u00f1and\u00fa ma\u00f1ana",
        "\u6771\u4eac\u30bf\u30ef\u30fc",
        "\u4e00\u53ea\u732b\u5728\u6708\u7403\u4e0a",
        "\u732b cat \u72ac dog",
        "\ud55c\uad6d\uc5b4 \ud14d\uc2a4\ud2b8",
        "\u3053\u3093\u306b\u3061\u306f\u4e16\u754c",
        "\u041f\u0440\u0438\u0432\u0435\u0442 \u043c\u0438\u0440",
        "\u0393\u03b5\u03b9\u03ac \u03c3\u03bf\u03c5",
        "\u0645\u0631\u062d\u0628\u0627",
        "\u0928\u092e\u0938\u094d\u0924\u0947",
        "emoji \U0001f600\U0001f431\U0001f680",
        "\U0001f468\u200d\U0001f469\u200d\U0001f467 family",
        "thumbs \U0001f44d\U0001f3fd up",
        "\u2764\ufe0f love",
        "flags \U0001f1fa\U0001f1f8\U0001f1ef\U0001f1f5",
        "fullwidth \uff21\uff22\uff23 \uff11\uff12\uff13",
        "ligature \ufb01sh \ufb02ower",
        "em\u2014dash en\u2013dash \u2026 ellipsis",
        "non\u00a0breaking\u00a0space",
        "zero\u200bwidth\u200bspace",
        "control\u0007char\u0000null",
        "mojibake caf\u00c3\u00a9",
        "<|startoftext|>",
        "<|endoftext|>",
        "a photo <|endoftext|> of a dog",
        "!!!",
        "!",
        "a photo of a cat!",
        "supercalifragilisticexpialidocious antidisestablishmentarianism",
        "pneumonoultramicroscopicsilicovolcanoconiosis",
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "x" * 300,
        long1,
        long2,
        long3,
        "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
        "seventeen eighteen nineteen twenty twenty-one twenty-two twenty-three twenty-four twenty-five "
        "twenty-six twenty-seven twenty-eight twenty-nine thirty thirty-one thirty-two thirty-three",
        "a handwritten digit 7",
        "the number seven",
        "blurry, low quality, deformed, watermark, text",
    ]


def tokenizer_goldens(tiny_dirs):
    import importlib.util

    from transformers import CLIPTokenizer, CLIPTokenizerFast
    from transformers.models.bert.tokenization_bert import BasicTokenizer

    has_ftfy = importlib.util.find_spec("ftfy") is not None
    dirs = {"full": FULL_TOK, **tiny_dirs}
    slow, slow_noftfy, fast = {}, {}, {}
    for k, d in dirs.items():
        slow[k] = CLIPTokenizer.from_pretrained(d)
        t = CLIPTokenizer.from_pretrained(d)
        # the path transformers takes when ftfy is NOT installed
        t.fix_text = None
        t.nlp = BasicTokenizer(strip_accents=False, do_split_on_punc=False)
        slow_noftfy[k] = t
        fast[k] = CLIPTokenizerFast.from_pretrained(d, from_slow=True)
    assert slow["full"].fix_text is not None, "ftfy expected in this venv"

    def enc(t, p):
        return t(p, padding="max_length", max_length=77, truncation=True).input_ids

    cases, fast_diff, noftfy_diff = [], [], []
    for p in tokenizer_prompts():
        c = {"prompt": p}
        for k in dirs:
            ids = enc(slow[k], p)
            assert len(ids) == 77
            c[k] = ids
        for k in dirs:
            f = enc(fast[k], p)
            if f != c[k]:
                c[f"{k}_fast"] = f
                if p not in fast_diff:
                    fast_diff.append(p)
        for k in dirs:
            n = enc(slow_noftfy[k], p)
            if n != c[k]:
                c[f"{k}_no_ftfy"] = n
                if p not in noftfy_diff:
                    noftfy_diff.append(p)
        cases.append(c)
    from importlib.metadata import version

    doc = {
        "description": (
            "input_ids from transformers' slow CLIPTokenizer called as diffusers' StableDiffusionPipeline "
            "does: tokenizer(prompt, padding='max_length', max_length=77, truncation=True). "
            "Keys: full = tests/data/clip-tokenizer (49408 vocab, pad <|endoftext|>=49407), "
            "tiny-sd = models/tiny-sd/tokenizer (1000 vocab, bos 998, eos 999, pad <|endoftext|>=999), "
            "tiny-sd2-v = models/tiny-sd2-v/tokenizer (1000 vocab, pad '!'=0). "
            "Main ids took the ftfy path (text = whitespace_clean(ftfy.fix_text(text)).lower()). "
            "'<key>_fast' is present only where CLIPTokenizerFast (from_slow) differs; "
            "'<key>_no_ftfy' only where the slow tokenizer's non-ftfy path (BasicTokenizer(strip_accents=False, "
            "do_split_on_punc=False), used when ftfy is not installed) differs."
        ),
        "ftfy_installed": has_ftfy,
        "ftfy_version": version("ftfy") if has_ftfy else None,
        "slow_path": "ftfy" if has_ftfy else "basic_tokenizer",
        "transformers_version": version("transformers"),
        "tokenizers_version": version("tokenizers"),
        "fast_disagrees_on": fast_diff,
        "no_ftfy_disagrees_on": noftfy_diff,
        "cases": cases,
    }
    os.makedirs(GOLD_TOK, exist_ok=True)
    with open(os.path.join(GOLD_TOK, "prompts.json"), "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"tokenizer goldens: {len(cases)} prompts; fast differs on {len(fast_diff)}, "
          f"no-ftfy differs on {len(noftfy_diff)}")
    for p in fast_diff:
        print("  fast differs:", repr(p)[:100])
    for p in noftfy_diff:
        print("  no-ftfy differs:", repr(p)[:100])


# --------------------------------------------------------------------------------------------
# pipeline goldens
# --------------------------------------------------------------------------------------------

PROMPT = "a photo of an astronaut riding a horse on mars"
NEG = "blurry, low quality"

SCHEDULERS = {
    # short name: (class name, overrides)
    "ddim": ("DDIMScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {}),
    "dpmpp_2m_karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "heun": ("HeunDiscreteScheduler", {}),
    "lcm": ("LCMScheduler", {}),
}


def golden_cases():
    C = []

    def case(name, model, sched, steps=8, guidance=7.5, seed=0, width=64, height=64, num_images=1,
             eta=0.0, prompt=PROMPT, neg=NEG, latents_in=None):
        C.append(dict(name=name, model=model, scheduler=sched, scheduler_overrides=SCHEDULERS[sched][1]
                      if sched in SCHEDULERS else {}, prompt=prompt, negative_prompt=neg, steps=steps,
                      guidance_scale=guidance, seed=seed, width=width, height=height, num_images=num_images,
                      eta=eta, latents_in=latents_in))

    seed = 100
    for s in SCHEDULERS:
        case(f"sd_{s}", "tiny-sd", s, steps=4 if s == "lcm" else 8, seed=seed)
        seed += 1
    case("sd_ddim_eta1", "tiny-sd", "ddim", steps=8, eta=1.0, seed=200)
    case("sd_euler_a_x2", "tiny-sd", "euler_a", steps=8, num_images=2, seed=201)
    case("sd_pndm_nocfg", "tiny-sd", "pndm", steps=8, guidance=1.0, neg=None, seed=202)
    case("sd_euler_latents_in", "tiny-sd", "euler", steps=8, seed=203, latents_in="sd_euler_latents_in.input.npy")
    case("sd_pndm_96x64", "tiny-sd", "pndm", steps=6, seed=204, width=96, height=64)
    case("sd2v_ddim_96x64", "tiny-sd2-v", "ddim", steps=8, seed=300, width=96, height=64)
    case("sd2v_ddim_64x128", "tiny-sd2-v", "ddim", steps=8, seed=301, width=64, height=128)
    case("sd2v_euler_96x64", "tiny-sd2-v", "euler", steps=8, seed=302, width=96, height=64)
    case("sd2v_dpmpp_2m_64x128", "tiny-sd2-v", "dpmpp_2m", steps=8, seed=303, width=64, height=128)
    case("sd2v_euler_a_96x64", "tiny-sd2-v", "euler_a", steps=8, seed=304, width=96, height=64)
    return C


def set_scheduler(pipe, sched):
    import diffusers

    cls_name, over = SCHEDULERS[sched]
    cls = getattr(diffusers, cls_name)
    pipe.scheduler = cls.from_config(pipe.scheduler.config, **over)


def run_case(pipe, c, output_type="pil"):
    """Run one case; returns (output, final latents as numpy float32)."""
    import numpy as np
    import torch

    captured = {}

    def cb(p, i, t, kw):
        captured["latents"] = kw["latents"].detach().clone()
        return kw

    kwargs = dict(
        prompt=c["prompt"],
        negative_prompt=c["negative_prompt"],
        num_inference_steps=c["steps"],
        guidance_scale=c["guidance_scale"],
        width=c["width"],
        height=c["height"],
        num_images_per_prompt=c["num_images"],
        eta=c["eta"],
        generator=torch.Generator("cpu").manual_seed(c["seed"]),
        output_type=output_type,
        callback_on_step_end=cb,
        callback_on_step_end_tensor_inputs=["latents"],
    )
    if c["latents_in"]:
        lat = np.load(os.path.join(GOLD_PIPE, c["latents_in"]))
        kwargs["latents"] = torch.from_numpy(lat)
    with torch.no_grad():
        out = pipe(**kwargs)
    return out, captured["latents"].float().numpy()


def make_goldens(cache):
    from importlib.metadata import version

    import numpy as np
    from diffusers import StableDiffusionPipeline

    shutil.rmtree(GOLD_PIPE, ignore_errors=True)
    os.makedirs(GOLD_PIPE)
    pipes = {}
    base_cfg = {}
    for name in MODELS:
        d = pt_dir(cache, name)
        if not os.path.isdir(d):
            sys.exit(f"{d} missing: run the 'models' step first")
        pipes[name] = StableDiffusionPipeline.from_pretrained(d)
        pipes[name].set_progress_bar_config(disable=True)
        base_cfg[name] = pipes[name].scheduler
    manifest = []
    for c in golden_cases():
        pipe = pipes[c["model"]]
        pipe.scheduler = base_cfg[c["model"]]
        set_scheduler(pipe, c["scheduler"])
        if c["latents_in"]:
            f = 8
            g = np.random.default_rng(c["seed"])
            lat = g.standard_normal((c["num_images"], 4, c["height"] // f, c["width"] // f)).astype(np.float32)
            np.save(os.path.join(GOLD_PIPE, c["latents_in"]), lat)
        out, lat = run_case(pipe, c)
        # second run with output_type="latent" must give the same latents
        out2, lat2 = run_case(pipe, c, output_type="latent")
        d_cb = float(np.abs(out2.images.float().numpy() - lat).max())
        assert d_cb == 0.0, f"{c['name']}: callback latents differ from output_type=latent by {d_cb}"
        pngs = []
        for i, im in enumerate(out.images):
            fn = f"{c['name']}.png" if len(out.images) == 1 else f"{c['name']}.{i}.png"
            im.save(os.path.join(GOLD_PIPE, fn))
            pngs.append(fn)
        lfn = f"{c['name']}.latents.npy"
        np.save(os.path.join(GOLD_PIPE, lfn), lat.astype(np.float32))
        cfg = {k: v for k, v in dict(pipe.scheduler.config).items() if not k.startswith("_")}
        entry = dict(c)
        entry.update(
            scheduler_class=type(pipe.scheduler).__name__,
            scheduler_config=cfg,
            timesteps=[float(t) for t in pipe.scheduler.timesteps],
            png=pngs,
            latents=lfn,
            latents_shape=list(lat.shape),
        )
        manifest.append(entry)
        print(f"golden {c['name']}: latents {lat.shape} range [{lat.min():.3f}, {lat.max():.3f}]")
    write_json(os.path.join(GOLD_PIPE, "manifest.json"), {
        "description": (
            "diffusers StableDiffusionPipeline (PyTorch, CPU, float32) outputs for the tiny packages in models/; "
            "generator=torch.Generator('cpu').manual_seed(seed); scheduler = <scheduler_class>.from_config("
            "pipe.scheduler.config, **scheduler_overrides) where pipe.scheduler is the package's own; "
            "latents = final latents before VAE decode (divide by vae scaling_factor 0.18215 before the "
            "decoder); latents_in = explicit latents= passed to the pipeline (pre init_noise_sigma scaling); "
            "scheduler_config = the effective config after from_config (informative); timesteps = "
            "scheduler.timesteps after the run."
        ),
        "versions": {k: version(k) for k in PINS},
        "cases": manifest,
    })


# --------------------------------------------------------------------------------------------
# ONNX parity
# --------------------------------------------------------------------------------------------

def parity():
    import numpy as np
    from optimum.onnxruntime import ORTStableDiffusionPipeline
    from PIL import Image

    with open(os.path.join(GOLD_PIPE, "manifest.json")) as f:
        man = json.load(f)
    pipes = {}
    for name, (_, out, _, _) in MODELS.items():
        pipes[name] = ORTStableDiffusionPipeline.from_pretrained(out, provider="CPUExecutionProvider")
        pipes[name].set_progress_bar_config(disable=True)
    base = {k: p.scheduler for k, p in pipes.items()}
    worst = 0.0
    for c in man["cases"]:
        pipe = pipes[c["model"]]
        pipe.scheduler = base[c["model"]]
        set_scheduler(pipe, c["scheduler"])
        assert type(pipe.scheduler).__name__ == c["scheduler_class"]
        out, lat = run_case(pipe, c)
        ref = np.load(os.path.join(GOLD_PIPE, c["latents"]))
        d = float(np.abs(lat - ref).max())
        pix = 0
        for im, fn in zip(out.images, c["png"]):
            a = np.asarray(im).astype(np.int32)
            b = np.asarray(Image.open(os.path.join(GOLD_PIPE, fn))).astype(np.int32)
            pix = max(pix, int(np.abs(a - b).max()))
        worst = max(worst, d)
        print(f"parity {c['name']:24s} latents max abs {d:.3e}  png max level diff {pix}"
              + ("  <-- over 1e-3" if d >= 1e-3 else ""))
    print(f"parity worst latents max abs {worst:.3e}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", choices=["models", "tokenizer", "goldens", "parity"])
    ap.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "diffgentor-tiny-pt"))
    a = ap.parse_args()
    check_versions()
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    steps = a.only or ["models", "tokenizer", "goldens", "parity"]
    os.chdir(ROOT)
    if "models" in steps:
        make_models(a.cache)
    if "tokenizer" in steps:
        from clip_tokenizer import write_full

        write_full(FULL_TOK)
        tokenizer_goldens({"tiny-sd": os.path.join(OUT_SD, "tokenizer"),
                           "tiny-sd2-v": os.path.join(OUT_SD2, "tokenizer")})
    if "goldens" in steps:
        make_goldens(a.cache)
    if "parity" in steps:
        parity()


if __name__ == "__main__":
    main()
