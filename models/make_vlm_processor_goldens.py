#!/usr/bin/env python
"""Write models/vlm-processor-goldens/: references for the pure-Rust VLM pieces in src/vlm/
(pil.rs, processor.rs, rope.rs, sampling.rs, template.rs), dumped from Pillow and transformers.
The Rust unit tests in those files read these files; CI never needs Python.

Run from the repository root:   /work/venv-vlm/bin/python models/make_vlm_processor_goldens.py
Pinned: transformers==5.23.0, pillow==13.0.0 (13 changed the resize pass order, see pil.rs),
torch==2.15.0 (CPU is enough), numpy, jinja2==3.1.6.
Deterministic (fixed seeds, no network; rerunning rewrites identical files), about 330 KB.

Output (all under models/vlm-processor-goldens/):
  src_*.png                   input images (RGB8, lossless)
  resize_*.png                Image.resize(src, (w, h), BILINEAR|BICUBIC) outputs; listed in
                              resize.json as {src, width, height, filter, out}
  qwen.json                   Qwen2VLImageProcessorPil (the slow, PIL-backed processor) cases:
                              {config, image, grid_thw, shape, pixel_values (.npy file)}
  qwen_*.npy                  float32 pixel_values [patches, 3*T*P*P]
  vit.json, vit_*.npy         ViTImageProcessorPil cases, pixel_values [1, 3, H, W]
  smart_resize.json           {height, width, factor, min_pixels, max_pixels, out | error}
  rope.json                   Qwen2_5_VLModel.get_rope_index on token sequences (tiny config) and
                              compute_3d_position_ids for decode steps
  sampling.json               logits after transformers' RepetitionPenaltyLogitsProcessor,
                              TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper (the
                              order generate applies them); -inf written as null
  templates/*.jinja           chat templates besides models/qwen2_vl_chat_template.jinja: strict
                              (Llama-2 style: raise_exception, .strip(), bos/eos), loop (loop
                              controls, filters, tojson) and json (tojson options, dict methods)
  templates.json              {template, conversation, messages, add_generation_prompt, bos_token,
                              eos_token, rendered | error}, rendered by transformers'
                              render_jinja_template (what processor.apply_chat_template calls)
"""

import json
import math
import os
import types

import numpy as np
import PIL
import torch
import transformers
from PIL import Image
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
    Qwen2VLImageProcessorPil,
    smart_resize,
)
from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil
from transformers.utils.chat_template_utils import render_jinja_template

PINNED = {"transformers": "5.23.0", "PIL": "13.0.0"}
OUT = os.path.join("models", "vlm-processor-goldens")
QWEN_TEMPLATE = os.path.join("models", "qwen2_vl_chat_template.jinja")

# Qwen2.5-VL special token ids (tokenizer_config.json of the released models).
VISION_START, VISION_END, IMAGE_PAD = 151652, 151653, 151655


def check_pins():
    versions = {"transformers": transformers.__version__, "PIL": PIL.__version__}
    for name, want in PINNED.items():
        if versions[name] != want:
            raise SystemExit(f"{name} {versions[name]} found, {want} pinned")


def make_image(width, height, seed):
    """Smooth gradients plus noise: resampling has edges and ramps to get right."""
    rng = np.random.RandomState(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    base = np.stack(
        [255 * x / max(width - 1, 1), 255 * y / max(height - 1, 1), 127 + 127 * np.sin((x + y) / 3.0)],
        axis=-1,
    )
    noisy = base + rng.normal(0, 40, size=base.shape)
    return Image.fromarray(np.clip(np.round(noisy), 0, 255).astype(np.uint8), mode="RGB")


def save_png(image, name):
    image.save(os.path.join(OUT, name), format="PNG")
    return name


def save_npy(array, name):
    np.save(os.path.join(OUT, name), np.ascontiguousarray(array, dtype=np.float32))
    return name


def resize_goldens():
    sources = {
        "src_a.png": make_image(37, 23, 1),
        "src_b.png": make_image(64, 48, 2),
    }
    for name, image in sources.items():
        save_png(image, name)
    # (source, width, height): up, down, one axis only, mixed, odd factors, and both sides of
    # Pillow 13's pass-order rule (vertical first when the height loses more than twice the
    # pixels the width loses): 40x16, 27x2, 30x5, 36x20, 60x10 go vertical first; 26x2, 36x21 not.
    sizes = [
        ("src_a.png", 40, 16),
        ("src_a.png", 27, 2),
        ("src_a.png", 26, 2),
        ("src_a.png", 30, 5),
        ("src_a.png", 36, 20),
        ("src_a.png", 36, 21),
        ("src_b.png", 60, 10),
        ("src_a.png", 80, 50),
        ("src_a.png", 15, 9),
        ("src_a.png", 37, 60),
        ("src_a.png", 100, 23),
        ("src_a.png", 20, 41),
        ("src_b.png", 13, 7),
        ("src_b.png", 64, 17),
        ("src_b.png", 1, 1),
    ]
    filters = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}
    cases = []
    for src, width, height in sizes:
        for fname, code in filters.items():
            out = sources[src].resize((width, height), resample=code)
            name = save_png(out, f"resize_{src[4]}_{width}x{height}_{fname}.png")
            cases.append({"src": src, "width": width, "height": height, "filter": fname, "out": name})
    write_json("resize.json", cases)


def qwen_goldens():
    configs = {
        # The released layout (patch 14, merge 2, T 2) with small pixel bounds to keep files small.
        "p14": {
            "min_pixels": 28 * 28,
            "max_pixels": 28 * 28 * 3,
            "patch_size": 14,
            "temporal_patch_size": 2,
            "merge_size": 2,
        },
        # A small patch to exercise bigger grids cheaply, bounds given as `size`, CLIP stats changed.
        "p4": {
            "size": {"shortest_edge": 16 * 16, "longest_edge": 40 * 32},
            "patch_size": 4,
            "temporal_patch_size": 2,
            "merge_size": 2,
            "image_mean": [0.5, 0.25, 0.125],
            "image_std": [0.2, 0.3, 0.7],
        },
    }
    images = {
        "src_q1.png": make_image(45, 61, 3),  # taller than wide
        "src_q2.png": make_image(100, 30, 4),  # wide
        "src_q3.png": make_image(20, 20, 5),  # square, upscaled to the minimum
    }
    for name, image in images.items():
        save_png(image, name)
    cases = []
    for cname, config in configs.items():
        processor = Qwen2VLImageProcessorPil(**config)
        for iname, image in images.items():
            out = processor(images=[image], return_tensors="np")
            pv, grid = out["pixel_values"], out["image_grid_thw"]
            npy = save_npy(pv, f"qwen_{cname}_{iname[4:6]}.npy")
            cases.append(
                {
                    "config": config,
                    "image": iname,
                    "grid_thw": grid[0].tolist(),
                    "shape": list(pv.shape),
                    "pixel_values": npy,
                }
            )
    write_json("qwen.json", cases)


def vit_goldens():
    image = Image.open(os.path.join(OUT, "src_a.png"))
    configs = {
        "bilinear": {"size": {"height": 24, "width": 20}, "resample": 2},
        "bicubic": {
            "size": {"height": 16, "width": 40},
            "resample": 3,
            "image_mean": [0.485, 0.456, 0.406],
            "image_std": [0.229, 0.224, 0.225],
        },
    }
    cases = []
    for cname, config in configs.items():
        pv = ViTImageProcessorPil(**config)(images=[image], return_tensors="np")["pixel_values"]
        npy = save_npy(pv, f"vit_{cname}.npy")
        cases.append({"config": config, "image": "src_a.png", "shape": list(pv.shape), "pixel_values": npy})
    write_json("vit.json", cases)


def smart_resize_goldens():
    rows = []
    inputs = [
        (224, 224, 28, 56 * 56, 28 * 28 * 1280),
        (1080, 1920, 28, 56 * 56, 28 * 28 * 1280),
        (4000, 3000, 28, 56 * 56, 28 * 28 * 1280),
        (42, 70, 28, 56 * 56, 28 * 28 * 1280),  # x.5 quotients: Python rounds half to even
        (98, 126, 28, 0, 28 * 28 * 1280),
        (14, 2800, 28, 56 * 56, 28 * 28 * 1280),
        (14, 14, 28, 56 * 56, 28 * 28 * 1280),
        (500, 333, 28, 3136, 12845056),
        (61, 45, 28, 28 * 28, 28 * 28 * 3),
        (30, 100, 28, 28 * 28, 28 * 28 * 3),
        (20, 20, 28, 28 * 28, 28 * 28 * 3),
        (15, 3001, 28, 56 * 56, 28 * 28 * 1280),  # aspect ratio over 200
        (3001, 15, 28, 56 * 56, 28 * 28 * 1280),
        (17, 3400, 28, 56 * 56, 28 * 28 * 1280),  # exactly 200: allowed
        (777, 555, 32, 32 * 32 * 4, 32 * 32 * 256),
    ]
    for h, w, factor, lo, hi in inputs:
        row = {"height": h, "width": w, "factor": factor, "min_pixels": lo, "max_pixels": hi}
        try:
            row["out"] = list(smart_resize(h, w, factor=factor, min_pixels=lo, max_pixels=hi))
        except ValueError as e:
            row["error"] = str(e)
        rows.append(row)
    write_json("smart_resize.json", rows)


def tiny_qwen25_vl():
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLModel

    torch.manual_seed(0)
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": 152064,
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "rope_scaling": {"type": "mrope", "mrope_section": [1, 1, 2]},
        },
        vision_config={
            "depth": 1,
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_heads": 2,
            "out_hidden_size": 16,
            "spatial_merge_size": 2,
            "fullatt_block_indexes": [0],
        },
        image_token_id=IMAGE_PAD,
        vision_start_token_id=VISION_START,
    )
    return Qwen2_5_VLModel(config).eval()


def image_tokens(grid, merge=2):
    return [VISION_START] + [IMAGE_PAD] * (grid[0] * grid[1] * grid[2] // merge**2) + [VISION_END]


def rope_goldens():
    model = tiny_qwen25_vl()
    text = lambda n, start: [100 + start + i for i in range(n)]  # noqa: E731
    g1, g2, g3 = [1, 4, 6], [1, 2, 8], [1, 6, 4]
    sequences = {
        "text_only": (text(7, 0), []),
        "one_image": (text(5, 0) + image_tokens(g1) + text(4, 10), [g1]),
        "two_images": (text(3, 0) + image_tokens(g2) + text(2, 20) + image_tokens(g3) + text(5, 30), [g2, g3]),
        "image_first": (image_tokens(g3) + text(3, 40), [g3]),
        "image_last": (text(2, 50) + image_tokens(g1), [g1]),
    }
    cases = []
    for name, (ids, grids) in sequences.items():
        input_ids = torch.tensor([ids], dtype=torch.long)
        mm_types = (input_ids == IMAGE_PAD).int()  # as Qwen2_5_VLProcessor builds mm_token_type_ids
        grid_t = torch.tensor(grids, dtype=torch.long) if grids else None
        with torch.no_grad():
            pos, delta = model.get_rope_index(input_ids, mm_token_type_ids=mm_types, image_grid_thw=grid_t)
        case = {
            "name": name,
            "input_ids": ids,
            "grids": grids,
            "position_ids": pos[:, 0, :].tolist(),
            "delta": int(delta.item()),
            "decode": decode_positions(model, ids, grids, delta),
        }
        cases.append(case)
    write_json(
        "rope.json",
        {"spatial_merge_size": 2, "image_token_id": IMAGE_PAD, "vision_start_token_id": VISION_START, "cases": cases},
    )


def decode_positions(model, ids, grids, delta):
    """compute_3d_position_ids for a few decode steps after the prompt (cache length faked)."""
    out = []
    model.rope_deltas = delta
    for past, new in [(len(ids), 1), (len(ids) + 5, 1), (len(ids), 3)]:
        cache = types.SimpleNamespace(get_seq_length=lambda past=past: past)
        embeds = torch.zeros(1, new, model.config.text_config.hidden_size)
        pos = model.compute_3d_position_ids(
            input_ids=torch.zeros(1, new, dtype=torch.long),
            image_grid_thw=torch.tensor(grids, dtype=torch.long) if grids else None,
            video_grid_thw=None,
            inputs_embeds=embeds,
            attention_mask=None,
            past_key_values=cache,
            mm_token_type_ids=torch.zeros(1, new, dtype=torch.int),
        )
        out.append({"past_len": past, "new_tokens": new, "position_ids": pos[:, 0, :].tolist()})
    return out


def sampling_goldens():
    from transformers.generation.logits_process import (
        LogitsProcessorList,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    rng = np.random.RandomState(3)
    previous = [3, 7, 7, 11, 0, 49]
    params = [
        {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "repetition_penalty": 1.3},
        {"temperature": 0.7, "top_k": 10, "top_p": 1.0, "repetition_penalty": 1.0},
        {"temperature": 1.0, "top_k": 0, "top_p": 0.8, "repetition_penalty": 1.0},
        {"temperature": 1.5, "top_k": 20, "top_p": 0.9, "repetition_penalty": 1.1},
        {"temperature": 0.3, "top_k": 0, "top_p": 0.5, "repetition_penalty": 0.8},
        {"temperature": 1.0, "top_k": 1, "top_p": 1.0, "repetition_penalty": 1.0},
    ]
    cases = []
    for p in params:
        # Rounded to 1/64 so ties at the top-k threshold happen (they are kept by transformers).
        logits = np.round(rng.normal(0, 3, size=50) * 64) / 64
        procs = LogitsProcessorList()
        if p["repetition_penalty"] != 1.0:
            procs.append(RepetitionPenaltyLogitsProcessor(p["repetition_penalty"]))
        if p["temperature"] != 1.0:
            procs.append(TemperatureLogitsWarper(p["temperature"]))
        if p["top_k"] != 0:
            procs.append(TopKLogitsWarper(top_k=p["top_k"], min_tokens_to_keep=1))
        if p["top_p"] < 1.0:
            procs.append(TopPLogitsWarper(top_p=p["top_p"], min_tokens_to_keep=1))
        scores = torch.tensor(logits, dtype=torch.float32)[None]
        out = procs(torch.tensor([previous]), scores.clone())[0]
        processed = [None if math.isinf(v) else v for v in out.tolist()]
        cases.append({"params": p, "previous": previous, "logits": logits.tolist(), "processed": processed})
    write_json("sampling.json", cases)


# A Llama-2/Mistral-style template: strict alternation via raise_exception, .strip(), bos/eos tokens.
STRICT_TEMPLATE = """{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}{% set loop_messages = messages[1:] %}{% else %}{% set system = none %}{% set loop_messages = messages %}{% endif %}
{% for message in loop_messages %}
    {% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
    {% endif %}
    {% set ns = namespace(text='') %}
    {% for part in message['content'] %}
        {% if part['type'] == 'image' %}
            {% set ns.text = ns.text + '[IMG]' %}
        {% elif part['type'] == 'text' %}
            {% set ns.text = ns.text + part['text'] %}
        {% endif %}
    {% endfor %}
    {% if message['role'] == 'user' %}
        {% if loop.first and system is not none %}
[INST] <<SYS>>
{{ system[0]['text'].strip() }}
<</SYS>>

{{ ns.text.strip() }} [/INST]
        {%- else %}
[INST] {{ ns.text.strip() }} [/INST]
        {%- endif %}
    {% elif message['role'] == 'assistant' %}
 {{ ns.text.strip() }}{{ eos_token }}
    {% else %}
        {{ raise_exception('Unknown role: ' + message['role']) }}
    {% endif %}
{% endfor %}
"""

# An Idefics/SmolVLM-style template: loop controls, tojson, title-cased roles, image counting.
LOOP_TEMPLATE = """<|begin_of_text|>{% for message in messages %}
{%- if message.role == 'system' and not loop.first %}{{ raise_exception('system must come first') }}{% endif -%}
{{ message['role'] | capitalize }}
{%- if message['content'][0]['type'] == 'image' %}:{% else %}: {% endif %}
{%- for line in message['content'] %}
{%- if line['type'] == 'image' %}<image>{% continue %}{% endif %}
{%- if line['text'] == '' %}{% break %}{% endif %}
{{- line['text'] -}}
{%- endfor -%}
<end_of_utterance>
{% endfor %}
{%- if add_generation_prompt %}Assistant:{% endif %}
{%- if messages | length > 3 %}
<|meta|>{{ messages[-1]['content'] | tojson }}
{% endif %}"""


# transformers' tojson (Python json.dumps) on messages and literals; dict literals use sort_keys
# because minijinja (without its preserve_order feature) sorts the keys of template-made maps.
JSON_TEMPLATE = """{{ messages | tojson }}
{{ messages[0] | tojson(indent=2) }}
{{ [1, 2.5, 1e-7, 1e20, 3.0, 0.1, none, true, false, 'a"b\\c\n\t\u00e9\u0001', -7] | tojson }}
{{ {'b': 1, 'a': [1, {}], 'c': []} | tojson(sort_keys=true) }}
{{ {'b': 1, 'a': [1, {}], 'c': []} | tojson(indent=1, sort_keys=true) }}
{{ messages | tojson(separators=(',', ':')) }}
{{ messages[-1]['content'] | tojson(ensure_ascii=true) }}
{% for message in messages %}{% for key, value in message.items() %}{{ key }}={{ value | length }};{% endfor %}{% endfor %}
{{ messages[0].get('role') }} {{ messages[0].get('missing', 'dflt') }} {{ 'A,B'.split(',') | tojson }}"""


def conversations():
    img, txt = {"type": "image"}, lambda s: {"type": "text", "text": s}  # noqa: E731
    return {
        "one_image": [{"role": "user", "content": [img, txt("Describe this image.")]}],
        "two_images": [{"role": "user", "content": [img, txt("Compare "), img, txt("these two  ")]}],
        "text_only": [{"role": "user", "content": [txt("  Write a haiku about rust. ")]}],
        "system": [
            {"role": "system", "content": [txt(" You are terse. ")]},
            {"role": "user", "content": [img, txt("What is it?")]},
        ],
        "multi_turn": [
            {"role": "system", "content": [txt("You caption images.")]},
            {"role": "user", "content": [img, txt("Caption it.")]},
            {"role": "assistant", "content": [txt("A red \"car\" <on> a road & a tree. ")]},
            {"role": "user", "content": [txt("Ünïcode: 日本 — and\nnewlines\t?")]},
        ],
        "bad_alternation": [
            {"role": "user", "content": [txt("one")]},
            {"role": "user", "content": [txt("two")]},
        ],
        "empty_text": [{"role": "user", "content": [img, txt(""), txt("after")]}],
    }


def template_goldens():
    os.makedirs(os.path.join(OUT, "templates"), exist_ok=True)
    templates = {"qwen2_vl": open(QWEN_TEMPLATE).read()}
    for name, source in [("strict", STRICT_TEMPLATE), ("loop", LOOP_TEMPLATE), ("json", JSON_TEMPLATE)]:
        with open(os.path.join(OUT, "templates", f"{name}.jinja"), "w") as f:
            f.write(source)
        templates[name] = source
    specials = {"bos_token": "<s>", "eos_token": "</s>"}
    cases = []
    for tname, source in templates.items():
        for cname, messages in conversations().items():
            if tname == "json" and cname not in ("multi_turn", "two_images"):
                continue
            for gen in (True, False):
                case = {"template": tname, "conversation": cname, "messages": messages, "add_generation_prompt": gen}
                case.update(specials)
                try:
                    case["rendered"] = render_jinja_template(
                        conversations=[messages], chat_template=source, add_generation_prompt=gen, **specials
                    )[0][0]
                except Exception as e:  # noqa: BLE001 - templates raise TemplateError
                    case["error"] = f"{type(e).__name__}: {e}"
                cases.append(case)
    write_json("templates.json", cases)


def write_json(name, value):
    with open(os.path.join(OUT, name), "w") as f:
        json.dump(value, f, indent=1, ensure_ascii=False)
        f.write("\n")


def main():
    check_pins()
    os.makedirs(OUT, exist_ok=True)
    resize_goldens()
    qwen_goldens()
    vit_goldens()
    smart_resize_goldens()
    rope_goldens()
    sampling_goldens()
    template_goldens()
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(OUT) for f in fs)
    print(f"wrote {OUT} ({total / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
