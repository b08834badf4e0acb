"""Tiny random-weight Qwen2.5-VL test models, ONNX exports and numeric goldens for the VLM runtime.

Run by hand (outputs are committed; CI never runs this):

    /work/venv-vlm/bin/python models/make_vlm.py            # from the repository root
    /work/venv-vlm/bin/python models/make_vlm.py --bench /tmp/vlm-bench   # larger model for dg-bench vlm

Pinned versions (the venv used to produce the committed files):
    torch 2.15.0 (CPU), transformers 5.23.0, tokenizers 0.23.3, onnxruntime 1.31.1, onnxscript 0.7.2,
    onnx 1.23.2, mobius-onnx 0.1.0, onnxruntime-genai 0.18.0, pillow 13.0.0, numpy 2.4.6, safetensors 0.8.0.
    torchvision must NOT be installed: transformers then uses the PIL image processor
    (Qwen2VLImageProcessorPil, bicubic resize as PIL does it), which is what the Rust runtime reproduces.
    The script instantiates that PIL processor explicitly anyway.

Everything is deterministic: the tokenizer is trained single-threaded on a corpus generated here from a seeded
random.Random, the model weights are drawn from torch.Generator(seed 0) in parameter-name order, the test
images are drawn procedurally, the exporter subprocesses run with PYTHONHASHSEED=0. Two runs give identical bytes.

Outputs (under models/):
    vlm-images/*.png                 test images (96x64, 70x112 whose 70/28 = 2.5 tests round-half-to-even,
                                     80x80, 300x200 which exceeds max_pixels, and 10x10, smaller than one
                                     14-pixel patch, for an error test; transformers 5.23 itself scales it up)
    tiny-qwen2.5-vl/                 onnxruntime-genai layout built by mobius-onnx
                                     (`python -m mobius build --config HF_DIR OUT --runtime ort-genai`):
                                     vision/embedding/decoder graphs + genai_config.json + HF configs/tokenizer
    tiny-qwen2.5-vl-builder/         decoder from the onnxruntime-genai model builder
                                     (`python -m onnxruntime_genai.models.builder -i HF_DIR -o OUT -p fp32 -e cpu
                                     --extra_options exclude_embeds=true`, com.microsoft GroupQueryAttention),
                                     with mobius' vision and embedding graphs copied beside it
    tiny-qwen2.5-vl-tfjs/            transformers.js / onnx-community layout: onnx/vision_encoder.onnx and
                                     onnx/decoder_model_merged.onnx (mobius' graphs re-saved under these names
                                     with weights inline), onnx/embed_tokens.onnx (a one-node Gather graph over
                                     the token embedding written with onnx.helper, no image merge); configs at
                                     the folder root
    vlm-goldens.json                 cases: rendered prompt, input ids, grids, pixel checksums, M-RoPE position
                                     ids, greedy ids from transformers' generate, which layouts reproduced them

mobius' genai files are corrected for onnxruntime-genai (genai type qwen2_5_vl instead of the text sub-config's
qwen2_5_vl_text, the Qwen processor_config.json with PatchImage and our min/max pixels, eos ids, context length);
see fix_genai_config / og_processor_config and models/VLM-MODELS.md.

Every layout is run here with onnxruntime (a plain greedy loop written below) and compared with torch; the
mobius layout is also run through onnxruntime_genai (og.Model / og.MultiModalProcessor / og.Generator).
"""

import argparse
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import time

os.environ.setdefault("RAYON_NUM_THREADS", "1")  # deterministic tokenizer training

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
WORK = os.environ.get("VLM_WORK", "/tmp/make_vlm_work")

SPECIALS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]
# Qwen2's pre-tokenizer split regex (as in Qwen2's tokenizer.json).
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
REGULAR_VOCAB = 400
MIN_PIXELS = 56 * 56
MAX_PIXELS = 28 * 28 * 64
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def log(*a):
    print(*a, flush=True)


# --------------------------------------------------------------------------------------------- tokenizer
def corpus():
    r = random.Random(1234)
    colors = ["red", "green", "blue", "yellow", "orange", "purple", "pink", "white", "black", "gray", "brown",
              "cyan"]
    shapes = ["circle", "square", "triangle", "stripe", "line", "dot", "star", "ring", "rectangle", "cross"]
    places = ["on the left", "on the right", "at the top", "at the bottom", "in the middle", "in the corner",
              "near the edge", "behind the square"]
    bgs = ["background", "sky", "floor", "wall", "field", "table"]
    adjs = ["small", "large", "bright", "dark", "thin", "round", "soft", "sharp"]
    out = []
    for _ in range(300):
        k = r.randrange(6)
        c1, c2 = r.choice(colors), r.choice(colors)
        s1, s2 = r.choice(shapes), r.choice(shapes)
        if k == 0:
            out.append(f"A {r.choice(adjs)} {c1} {s1} {r.choice(places)} of a {c2} {r.choice(bgs)}.")
        elif k == 1:
            out.append(f"The image shows a {c1} {s1} and a {c2} {s2}.")
        elif k == 2:
            out.append(f"There are {r.randrange(2, 10)} {c1} {s1}s {r.choice(places)}.")
        elif k == 3:
            out.append(f"Describe this image. What is in the picture? Is the {s1} {c1}?")
        elif k == 4:
            out.append(f"This picture has a {c1} {r.choice(bgs)} with {r.choice(adjs)} {c2} {s2}s.")
        else:
            out.append(f"Yes, the {s1} is {c1}. No, it is not {c2}. It looks like a {r.choice(adjs)} photo.")
    out.append("You are a helpful assistant.\nuser\nassistant\nsystem\n")
    return out


def build_tokenizer(out_dir, chat_template, model_max_length=2048):
    from tokenizers import (AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers,
                            processors, trainers)
    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    trainer = trainers.BpeTrainer(vocab_size=REGULAR_VOCAB, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tok.train_from_iterator(corpus(), trainer)
    assert tok.get_vocab_size() == REGULAR_VOCAB, tok.get_vocab_size()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])
    ids = {s: tok.token_to_id(s) for s in SPECIALS}
    assert [ids[s] for s in SPECIALS] == list(range(REGULAR_VOCAB, REGULAR_VOCAB + len(SPECIALS))), ids
    os.makedirs(out_dir, exist_ok=True)
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    cfg = {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(ids[s]): {"content": s, "lstrip": False, "normalized": False, "rstrip": False,
                          "single_word": False, "special": True} for s in SPECIALS},
        "additional_special_tokens": SPECIALS[1:],
        "bos_token": None,
        "chat_template": chat_template,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "extra_special_tokens": {},
        "model_max_length": model_max_length,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    write_json(os.path.join(out_dir, "tokenizer_config.json"), cfg)
    write_json(os.path.join(out_dir, "chat_template.json"), {"chat_template": chat_template})
    return ids


def write_json(path, obj, indent=2):
    with open(path, "w") as f:
        json.dump(obj, f, indent=indent, ensure_ascii=False)
        f.write("\n")


# --------------------------------------------------------------------------------------------- model
def model_config(ids, bench=False):
    from transformers import Qwen2_5_VLConfig
    vocab = REGULAR_VOCAB + len(SPECIALS)
    if bench:
        text = dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=8, num_attention_heads=8,
                    num_key_value_heads=2, mrope_section=[8, 12, 12])
        vision = dict(depth=4, hidden_size=128, intermediate_size=256, num_heads=4, fullatt_block_indexes=[1, 3])
    else:
        text = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, mrope_section=[2, 3, 3])
        vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, fullatt_block_indexes=[1])
    head_dim = text["hidden_size"] // text["num_attention_heads"]
    assert sum(text["mrope_section"]) * 2 == head_dim
    return Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=vocab, hidden_size=text["hidden_size"], intermediate_size=text["intermediate_size"],
            num_hidden_layers=text["num_hidden_layers"], num_attention_heads=text["num_attention_heads"],
            num_key_value_heads=text["num_key_value_heads"], max_position_embeddings=2048, rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": text["mrope_section"]},
            bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
            use_sliding_window=False, max_window_layers=text["num_hidden_layers"]),
        vision_config=dict(
            depth=vision["depth"], hidden_size=vision["hidden_size"], intermediate_size=vision["intermediate_size"],
            num_heads=vision["num_heads"], out_hidden_size=text["hidden_size"], in_channels=3, patch_size=14,
            spatial_merge_size=2, temporal_patch_size=2, window_size=112, tokens_per_second=2,
            fullatt_block_indexes=vision["fullatt_block_indexes"], hidden_act="silu"),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=False)


def build_model(cfg, seed):
    """Random weights drawn in parameter-name order from one generator: matrices N(0, s), norm weights
    1 + N(0, 0.1), biases N(0, 0.05). s = 1/sqrt(fan_in) (lm_head 4/sqrt(fan_in)), much larger than HF's 0.02
    init, so that activations do not vanish and logits have clear top-1 margins."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(cfg).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if p.ndim == 1 and "norm" in name or name.endswith("ln_q.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif p.ndim == 1:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
            else:
                fan_in = int(np.prod(p.shape[1:])) if "embed_tokens" not in name else 16
                std = min(0.5, 1.0 / np.sqrt(fan_in))
                if name == "lm_head.weight":
                    std *= 4.0  # logits with std ~4: wide top-1/top-2 margins, robust greedy parity
                p.copy_(std * torch.randn(p.shape, generator=g))
    return model


def processor_files(out_dir):
    write_json(os.path.join(out_dir, "preprocessor_config.json"), {
        "do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
        "image_mean": CLIP_MEAN, "image_std": CLIP_STD,
        "image_processor_type": "Qwen2VLImageProcessor",
        "merge_size": 2, "min_pixels": MIN_PIXELS, "max_pixels": MAX_PIXELS, "patch_size": 14,
        "processor_class": "Qwen2_5_VLProcessor", "resample": 3, "rescale_factor": 1 / 255,
        "size": {"longest_edge": MAX_PIXELS, "shortest_edge": MIN_PIXELS}, "temporal_patch_size": 2,
    })


def make_processor(hf_dir):
    from transformers import AutoTokenizer, Qwen2_5_VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    cfg = json.load(open(os.path.join(hf_dir, "preprocessor_config.json")))
    ip = Qwen2VLImageProcessorPil(size=cfg["size"], image_mean=cfg["image_mean"], image_std=cfg["image_std"],
                                  patch_size=14, temporal_patch_size=2, merge_size=2)
    tok = AutoTokenizer.from_pretrained(hf_dir)
    chat = json.load(open(os.path.join(hf_dir, "chat_template.json")))["chat_template"]

    class ImageOnlyProcessor(Qwen2_5_VLProcessor):
        # The video processor needs torchvision, which is deliberately absent; images only.
        def check_argument_for_proper_class(self, argument_name, argument):
            if argument_name == "video_processor" and argument is None:
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

    return ImageOnlyProcessor(image_processor=ip, tokenizer=tok, video_processor=None, chat_template=chat)


# --------------------------------------------------------------------------------------------- images
IMAGES = {  # name: (width, height)
    "shapes_96x64.png": (96, 64),
    "tall_70x112.png": (70, 112),     # 70 / 28 = 2.5: Python's round() halves to even, so the width becomes 56
    "square_80x80.png": (80, 80),
    "wide_300x200.png": (300, 200),   # more than max_pixels: smart_resize scales it down to 252x168
    "tiny_10x10.png": (10, 10),       # smaller than one 14-pixel patch (smart_resize still makes it 56x56)
}


def draw_images(out_dir):
    from PIL import Image, ImageDraw
    os.makedirs(out_dir, exist_ok=True)
    for k, (name, (w, h)) in enumerate(sorted(IMAGES.items())):
        y, x = np.mgrid[0:h, 0:w].astype(np.float32)
        base = np.stack([
            255 * x / max(w - 1, 1),
            255 * y / max(h - 1, 1),
            127.5 + 127.5 * np.sin((x + 2 * y) / (5.0 + 3 * k)),
        ], axis=-1)
        rng = np.random.default_rng(100 + k)
        if w * h <= 96 * 112:  # a little noise on the small ones (keeps the large PNG small)
            base += rng.normal(0, 12, base.shape)
        img = Image.fromarray(np.clip(base, 0, 255).round().astype(np.uint8), "RGB")
        d = ImageDraw.Draw(img)
        d.ellipse([w * 0.15, h * 0.2, w * 0.55, h * 0.6], fill=(220, 40, 40), outline=(255, 255, 255))
        d.rectangle([w * 0.5, h * 0.55, w * 0.9, h * 0.9], fill=(30, 60, 200))
        d.line([0, h - 1, w - 1, 0], fill=(250, 220, 0), width=max(1, w // 40))
        img.save(os.path.join(out_dir, name), optimize=True)


# --------------------------------------------------------------------------------------------- M-RoPE
def rope_index(input_ids, grids, image_token_id, merge=2):
    """Our own get_rope_index (single sequence, images only), checked against transformers below."""
    ids = list(input_ids)
    t_pos, h_pos, w_pos = [], [], []
    pos, i, g = 0, 0, 0
    while i < len(ids):
        if ids[i] != image_token_id:
            t_pos.append(pos); h_pos.append(pos); w_pos.append(pos)
            pos += 1
            i += 1
            continue
        t, h, w = grids[g]
        g += 1
        hh, ww = h // merge, w // merge
        for ti in range(t):
            for r in range(hh):
                for c in range(ww):
                    t_pos.append(pos + ti); h_pos.append(pos + r); w_pos.append(pos + c)
        n = t * hh * ww
        assert ids[i:i + n] == [image_token_id] * n
        i += n
        pos += max(hh, ww)  # t == 1 for images
    pos_ids = np.array([t_pos, h_pos, w_pos], dtype=np.int64)
    delta = int(pos_ids.max()) + 1 - len(ids)
    return pos_ids, delta


# --------------------------------------------------------------------------------------------- onnxruntime
class OrtVLM:
    """A plain greedy loop over the three graphs, binding every input and output by name.
    merge_in_graph: the embedding graph takes (input_ids, image_features) and merges (genai layout);
    otherwise embed_tokens takes input_ids only and the host scatters features into <|image_pad|> slots."""

    def __init__(self, vision, embedding, decoder, merge_in_graph, image_token_id, head_dim):
        import onnxruntime as ort
        so = ort.SessionOptions()
        so.intra_op_num_threads = 2
        mk = lambda p: ort.InferenceSession(p, so, providers=["CPUExecutionProvider"])
        self.vision, self.embedding, self.decoder = mk(vision), mk(embedding), mk(decoder)
        self.merge = merge_in_graph
        self.image_token_id = image_token_id
        self.head_dim = head_dim
        self.dec_in = {i.name: i for i in self.decoder.get_inputs()}
        self.dec_out = [o.name for o in self.decoder.get_outputs()]
        self.hidden = self.embedding.get_outputs()[0].shape[-1]

    def image_features(self, pixel_values, grid):
        return self.vision.run(["image_features"], {"pixel_values": pixel_values.astype(np.float32),
                                                    "image_grid_thw": grid.astype(np.int64)})[0]

    def embed(self, ids, feats):
        ids = np.asarray(ids, dtype=np.int64).reshape(1, -1)
        if self.merge:
            return self.embedding.run(["inputs_embeds"], {"input_ids": ids, "image_features": feats})[0]
        e = self.embedding.run(["inputs_embeds"], {"input_ids": ids})[0]
        slots = ids[0] == self.image_token_id
        assert slots.sum() == feats.shape[0], (slots.sum(), feats.shape)
        e[0, slots] = feats
        return e

    def generate(self, input_ids, pixel_values, grid, pos_ids, delta, max_new, eos_ids):
        feats = (self.image_features(pixel_values, grid) if grid is not None
                 else np.zeros((0, self.hidden), np.float32))
        embeds = self.embed(input_ids, feats)
        feeds = {}
        for name, info in self.dec_in.items():
            if name.startswith("past_key_values."):
                nkv = info.shape[1]  # the builder leaves the head size symbolic ('kv_cache_dim')
                feeds[name] = np.zeros((1, nkv, 0, self.head_dim), np.float32)
        n = len(input_ids)
        pos = pos_ids.reshape(3, 1, n)
        out_ids, first_logits = [], None
        empty = np.zeros((0, self.hidden), np.float32)
        while len(out_ids) < max_new:
            feeds["inputs_embeds"] = embeds.astype(np.float32)
            feeds["attention_mask"] = np.ones((1, n), np.int64)
            feeds["position_ids"] = pos.astype(np.int64)
            res = dict(zip(self.dec_out, self.decoder.run(self.dec_out, feeds)))
            logits = res["logits"][0, -1]
            if first_logits is None:
                first_logits = logits.copy()
            tok = int(np.argmax(logits))
            out_ids.append(tok)
            if tok in eos_ids:
                break
            for name in res:
                if name.startswith("present."):
                    feeds["past_key_values." + name[len("present."):]] = res[name]
            embeds = self.embed([tok], empty)
            pos = np.full((3, 1, 1), n + delta, np.int64)
            n += 1
        return out_ids, feats, first_logits


def og_generate(folder, rendered, image_paths, max_new, input_len):
    import onnxruntime_genai as og
    model = og.Model(folder)
    proc = model.create_multimodal_processor()
    images = og.Images.open(*image_paths) if image_paths else None
    inputs = proc(rendered, images=images)
    got = {"input_ids": inputs["input_ids"].as_numpy().astype(np.int64).ravel().tolist()}
    if image_paths:
        got["pixel_values"] = inputs["pixel_values"].as_numpy()
        got["image_grid_thw"] = inputs["image_grid_thw"].as_numpy().tolist()
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=input_len + max_new, do_sample=False)
    gen = og.Generator(model, params)
    gen.set_inputs(inputs)
    out = []
    while not gen.is_done() and len(out) < max_new:
        gen.generate_next_token()
        out.append(int(gen.get_next_tokens()[0]))
    got["ids"] = out
    del gen, params, model
    return got


def print_io(path):
    import onnx
    import onnxruntime as ort
    s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    m = onnx.load(path, load_external_data=False)
    ops = sorted({(n.domain + "::" if n.domain else "") + n.op_type for n in m.graph.node})
    opsets = ", ".join(f"{o.domain or 'ai.onnx'} {o.version}" for o in m.opset_import)
    lines = [f"- `{os.path.relpath(path, HERE)}` (opset {opsets})"]
    for kind, items in (("in", s.get_inputs()), ("out", s.get_outputs())):
        for i in items:
            lines.append(f"  - {kind} `{i.name}` {i.type} {i.shape}")
    lines.append(f"  - ops: {', '.join(ops)}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- cases
CASES = [
    {"name": "image_96x64", "images": ["shapes_96x64.png"], "prompt": "Describe this image.", "max_new_tokens": 16},
    {"name": "image_70x112", "images": ["tall_70x112.png"], "prompt": "What is in the picture?",
     "max_new_tokens": 16},
    {"name": "image_80x80", "images": ["square_80x80.png"], "prompt": "Describe this image.", "max_new_tokens": 20},
    {"name": "image_300x200_max_pixels", "images": ["wide_300x200.png"], "prompt": "Describe this image.",
     "max_new_tokens": 12},
    {"name": "text_only", "images": [], "prompt": "Write a short caption for a photo of a red circle.",
     "max_new_tokens": 16},
    {"name": "two_images", "images": ["shapes_96x64.png", "square_80x80.png"],
     "prompt": "What is different between the two pictures?", "max_new_tokens": 16},
]


def messages(case):
    content = [{"type": "image"} for _ in case["images"]] + [{"type": "text", "text": case["prompt"]}]
    return [{"role": "user", "content": content}]


def sha256_f32(a):
    return hashlib.sha256(np.ascontiguousarray(a, dtype="<f4").tobytes()).hexdigest()


def pixel_summary(pv):
    pv = np.asarray(pv, np.float32)
    flat = pv.ravel()
    idx = sorted({0, 1, 1175, 1176, 5000 % flat.size, flat.size // 2, flat.size - 1})
    return {"shape": list(pv.shape), "sha256_f32le": sha256_f32(pv), "sum": float(flat.astype(np.float64).sum()),
            "abs_sum": float(np.abs(flat.astype(np.float64)).sum()),
            "samples": {str(i): float(flat[i]) for i in idx}, "row0_first8": [float(v) for v in flat[:8]]}


def reference(hf_dir, model, processor, ids, img_dir):
    """Run transformers on every case: processor, rope index, greedy generate, prefill logits, image features."""
    import torch
    from PIL import Image
    eos = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    out = []
    for case in CASES:
        imgs = [Image.open(os.path.join(img_dir, p)).convert("RGB") for p in case["images"]]
        rendered = processor.apply_chat_template(messages(case), add_generation_prompt=True, tokenize=False)
        inputs = processor(text=[rendered], images=imgs or None, return_tensors="pt")
        input_ids = inputs["input_ids"][0].tolist()
        grid = inputs["image_grid_thw"].tolist() if imgs else []
        pos_hf, delta_hf = model.model.get_rope_index(inputs["input_ids"], inputs["mm_token_type_ids"],
                                                      inputs.get("image_grid_thw"),
                                                      attention_mask=inputs["attention_mask"])
        pos, delta = rope_index(input_ids, grid, ids["<|image_pad|>"])
        assert np.array_equal(pos, pos_hf[:, 0].numpy()) and delta == int(delta_hf[0, 0]), case["name"]
        with torch.no_grad():
            gen = model.generate(**inputs, do_sample=False, max_new_tokens=case["max_new_tokens"],
                                 eos_token_id=eos, pad_token_id=ids["<|endoftext|>"], output_scores=True,
                                 return_dict_in_generate=True)
            new = gen.sequences[0, len(input_ids):].tolist()
            margins = []
            for sc in gen.scores:
                top = torch.topk(sc[0].float(), 2).values
                margins.append(float(top[0] - top[1]))
            logits = model(**inputs).logits[0, -1].numpy()
            feats = (model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"])
                     .pooler_output if imgs else None)
            if feats is not None:
                feats = torch.cat(list(feats), 0).numpy()
        rec = {
            "name": case["name"], "images": [f"vlm-images/{p}" for p in case["images"]], "prompt": case["prompt"],
            "max_new_tokens": case["max_new_tokens"], "rendered": rendered,
            "rendered_ids": processor.tokenizer(rendered)["input_ids"],  # one <|image_pad|> per image
            "input_ids": input_ids,
            "image_grid_thw": grid,
            "num_image_tokens": [t * h * w // 4 for t, h, w in grid],
            "pixel_values": pixel_summary(inputs["pixel_values"].numpy()) if imgs else None,
            "position_ids": pos.tolist(), "rope_delta": delta,
            "expected_ids": new, "expected_text": processor.tokenizer.decode(new, skip_special_tokens=True),
            "stopped_at_eos": bool(new and new[-1] in eos),
            "min_top2_logit_margin": min(margins),
        }
        out.append((rec, {"inputs": inputs, "logits": logits, "features": feats, "pos": pos, "delta": delta}))
        log(f"  {case['name']}: {len(input_ids)} prompt ids, grid {grid}, {len(new)} new ids {new}, "
            f"min margin {min(margins):.3f}, text {rec['expected_text']!r}")
    return out


# --------------------------------------------------------------------------------------------- packaging
HF_FILES = ["config.json", "generation_config.json", "preprocessor_config.json", "tokenizer.json",
            "tokenizer_config.json", "chat_template.json"]


def run(cmd):
    log("  $", " ".join(cmd))
    t0 = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONHASHSEED="0"))
    if r.returncode != 0:
        sys.stderr.write(r.stdout[-4000:] + r.stderr[-4000:])
        raise SystemExit(f"command failed: {cmd}")
    return time.time() - t0


def write_hf(hf_dir, ids, bench=False, seed=0):
    chat = open(os.path.join(HERE, "qwen2_vl_chat_template.jinja")).read()
    assert build_tokenizer(hf_dir, chat) == ids
    cfg = model_config(ids, bench)
    model = build_model(cfg, seed)
    model.save_pretrained(hf_dir)
    write_json(os.path.join(hf_dir, "generation_config.json"), {
        "bos_token_id": ids["<|endoftext|>"], "eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]],
        "pad_token_id": ids["<|endoftext|>"], "transformers_version": "5.23.0"})
    processor_files(hf_dir)


def og_processor_config():
    """onnxruntime-extensions image pipeline for onnxruntime-genai's Qwen2.5-VL processor (what mobius writes for
    Qwen-VL when it knows the model type), with our min/max pixels."""
    return {"processor": {"name": "qwen2_5_image_processor", "transforms": [
        {"operation": {"name": "decode_image", "type": "DecodeImage", "attrs": {"color_space": "RGB"}}},
        {"operation": {"name": "convert_to_rgb", "type": "ConvertRGB"}},
        {"operation": {"name": "resize", "type": "Resize", "attrs": {
            "height": 448, "width": 448, "smart_resize": 1, "min_pixels": MIN_PIXELS, "max_pixels": MAX_PIXELS,
            "patch_size": 14, "merge_size": 2}}},
        {"operation": {"name": "rescale", "type": "Rescale", "attrs": {"rescale_factor": 1 / 255}}},
        {"operation": {"name": "normalize", "type": "Normalize", "attrs": {
            "mean": CLIP_MEAN, "std": CLIP_STD, "qwen2_5_vl": 1}}},
        {"operation": {"name": "patch_image", "type": "PatchImage", "attrs": {
            "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2}}},
    ]}}


def fix_genai_config(path, ids, context_length, decoder_filename=None, vision_from=None):
    """mobius --config mode takes the text sub-config's model_type (qwen2_5_vl_text) for the genai type, which
    onnxruntime-genai rejects for a vision model; the builder writes no vision/embedding sections. Fix both."""
    g = json.load(open(path))
    m = g["model"]
    m["type"] = "qwen2_5_vl"
    m["context_length"] = context_length
    m["eos_token_id"] = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    m["bos_token_id"] = ids["<|endoftext|>"]
    m["pad_token_id"] = ids["<|endoftext|>"]
    if decoder_filename:
        m["decoder"]["filename"] = decoder_filename
    if vision_from:
        src = json.load(open(vision_from))["model"]
        m["vision"], m["embedding"] = src["vision"], src["embedding"]
    m["vision"].update({"config_filename": "processor_config.json", "spatial_merge_size": 2, "patch_size": 14,
                        "window_size": 112, "tokens_per_second": 2})
    m["image_token_id"] = ids["<|image_pad|>"]
    m["video_token_id"] = ids["<|video_pad|>"]
    m["vision_start_token_id"] = ids["<|vision_start|>"]
    g["search"].update({"do_sample": False, "top_k": 1, "max_length": context_length})
    write_json(path, g, indent=4)


def copy_hf_files(hf_dir, dst):
    for f in HF_FILES:
        shutil.copy(os.path.join(hf_dir, f), os.path.join(dst, f))


def build_mobius(hf_dir, raw, pkg, ids, context_length):
    shutil.rmtree(raw, ignore_errors=True)
    t = run([sys.executable, "-m", "mobius", "build", "--config", hf_dir, raw, "--runtime", "ort-genai"])
    shutil.rmtree(pkg, ignore_errors=True)
    os.makedirs(pkg)
    for sub in ("decoder", "vision_encoder", "embedding"):
        shutil.copytree(os.path.join(raw, sub), os.path.join(pkg, sub))
    shutil.copy(os.path.join(raw, "genai_config.json"), os.path.join(pkg, "genai_config.json"))
    fix_genai_config(os.path.join(pkg, "genai_config.json"), ids, context_length)
    write_json(os.path.join(pkg, "processor_config.json"), og_processor_config(), indent=4)
    copy_hf_files(hf_dir, pkg)
    return t


def build_builder(hf_dir, raw, pkg, mobius_pkg, ids, context_length):
    shutil.rmtree(raw, ignore_errors=True)
    t = run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", hf_dir, "-o", raw, "-p", "fp32",
             "-e", "cpu", "--extra_options", "exclude_embeds=true"])
    shutil.rmtree(pkg, ignore_errors=True)
    os.makedirs(os.path.join(pkg, "decoder"))
    for f in ("model.onnx", "model.onnx.data"):
        shutil.copy(os.path.join(raw, f), os.path.join(pkg, "decoder", f))
    for sub in ("vision_encoder", "embedding"):
        shutil.copytree(os.path.join(mobius_pkg, sub), os.path.join(pkg, sub))
    shutil.copy(os.path.join(raw, "genai_config.json"), os.path.join(pkg, "genai_config.json"))
    fix_genai_config(os.path.join(pkg, "genai_config.json"), ids, context_length, decoder_filename="decoder/model.onnx",
                     vision_from=os.path.join(mobius_pkg, "genai_config.json"))
    shutil.copy(os.path.join(mobius_pkg, "processor_config.json"), os.path.join(pkg, "processor_config.json"))
    copy_hf_files(hf_dir, pkg)
    return t


def build_tfjs(hf_dir, mobius_pkg, pkg, embed_weight):
    """transformers.js layout: mobius' vision and decoder graphs saved with their weights inline under the
    onnx-community names, plus a one-node Gather graph for embed_tokens (no image merge)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    shutil.rmtree(pkg, ignore_errors=True)
    os.makedirs(os.path.join(pkg, "onnx"))
    for src, dst in (("vision_encoder", "vision_encoder"), ("decoder", "decoder_model_merged")):
        m = onnx.load(os.path.join(mobius_pkg, src, "model.onnx"))
        onnx.save(m, os.path.join(pkg, "onnx", dst + ".onnx"), save_as_external_data=False)
    vocab, hidden = embed_weight.shape
    graph = helper.make_graph(
        [helper.make_node("Gather", ["embed_tokens.weight", "input_ids"], ["inputs_embeds"], axis=0)],
        "embed_tokens",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"])],
        [helper.make_tensor_value_info("inputs_embeds", TensorProto.FLOAT,
                                       ["batch_size", "sequence_length", hidden])],
        [numpy_helper.from_array(embed_weight.astype(np.float32), "embed_tokens.weight")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="make_vlm.py")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, os.path.join(pkg, "onnx", "embed_tokens.onnx"))
    copy_hf_files(hf_dir, pkg)


# --------------------------------------------------------------------------------------------- main
def versions():
    import onnx
    import onnxruntime
    import onnxruntime_genai
    import PIL
    import tokenizers
    import torch
    import transformers
    from importlib.metadata import version
    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__, "onnxruntime": onnxruntime.__version__,
            "onnxruntime-genai": onnxruntime_genai.__version__, "onnx": onnx.__version__,
            "mobius-onnx": version("mobius-onnx"), "onnxscript": version("onnxscript"), "pillow": PIL.__version__,
            "numpy": np.__version__}


def image_table(processor, img_dir):
    from PIL import Image
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize
    table = {}
    for name, (w, h) in sorted(IMAGES.items()):
        img = Image.open(os.path.join(img_dir, name)).convert("RGB")
        rh, rw = smart_resize(h, w, factor=28, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
        r = processor.image_processor(images=[img], return_tensors="np")
        grid = r["image_grid_thw"][0].tolist()
        resized = np.asarray(img.resize((rw, rh), Image.Resampling.BICUBIC))
        table[f"vlm-images/{name}"] = {
            "width": w, "height": h, "resized_height": rh, "resized_width": rw, "image_grid_thw": grid,
            "num_image_tokens": grid[0] * grid[1] * grid[2] // 4,
            "resized_rgb_sha256": hashlib.sha256(resized.tobytes()).hexdigest(),
            "pixel_values": pixel_summary(r["pixel_values"]),
        }
    table["vlm-images/tiny_10x10.png"]["note"] = (
        "transformers 5.23 accepts it: round(10/28)=0 falls below min_pixels, so smart_resize scales it up to "
        "56x56 (older qwen_vl_utils / transformers raised 'height or width must be larger than factor').")
    return table


def og_image_grids(folder, table):
    """What onnxruntime-genai's own preprocessing makes of each test image (its smart_resize rounds halves up)."""
    import onnxruntime_genai as og
    model = og.Model(folder)
    proc = model.create_multimodal_processor()
    prompt = "<|vision_start|><|image_pad|><|vision_end|>"
    for path, rec in table.items():
        try:
            inputs = proc(prompt, images=og.Images.open(os.path.join(HERE, path)))
            rec["onnxruntime_genai_image_grid_thw"] = inputs["image_grid_thw"].as_numpy().tolist()[0]
        except Exception as e:
            rec["onnxruntime_genai_image_grid_thw"] = f"error: {type(e).__name__}: {e}"
    return table


def check_layouts(refs, pkgs, ids, run_og, head_dim):
    eos = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    runners = {
        "tiny-qwen2.5-vl": OrtVLM(*(os.path.join(pkgs["tiny-qwen2.5-vl"], s, "model.onnx")
                                    for s in ("vision_encoder", "embedding", "decoder")), True,
                                  ids["<|image_pad|>"], head_dim),
        "tiny-qwen2.5-vl-builder": OrtVLM(*(os.path.join(pkgs["tiny-qwen2.5-vl-builder"], s, "model.onnx")
                                            for s in ("vision_encoder", "embedding", "decoder")), True,
                                          ids["<|image_pad|>"], head_dim),
        "tiny-qwen2.5-vl-tfjs": OrtVLM(*(os.path.join(pkgs["tiny-qwen2.5-vl-tfjs"], "onnx", s + ".onnx")
                                         for s in ("vision_encoder", "embed_tokens", "decoder_model_merged")),
                                       False, ids["<|image_pad|>"], head_dim),
    }
    failures, og_deviations = [], []
    for rec, ref in refs:
        rec["layouts_checked"] = []
        rec["numerics"] = {}
        inp = ref["inputs"]
        pv = inp["pixel_values"].numpy() if rec["images"] else None
        grid = inp["image_grid_thw"].numpy() if rec["images"] else None
        for name, r in runners.items():
            got, feats, logits = r.generate(rec["input_ids"], pv, grid, ref["pos"], ref["delta"],
                                            rec["max_new_tokens"], eos)
            num = {"prefill_logits_max_abs_diff": float(np.abs(logits - ref["logits"]).max())}
            if ref["features"] is not None:
                num["image_features_max_abs_diff"] = float(np.abs(feats - ref["features"]).max())
            rec["numerics"][f"{name} (onnxruntime)"] = num
            if got == rec["expected_ids"]:
                rec["layouts_checked"].append(f"{name} (onnxruntime)")
            else:
                failures.append(f"{rec['name']} {name} onnxruntime: {got}")
        if run_og:
            for name in ("tiny-qwen2.5-vl", "tiny-qwen2.5-vl-builder"):
                label = f"{name} (onnxruntime-genai)"
                try:
                    got = og_generate(pkgs[name], rec["rendered"],
                                      [os.path.join(HERE, p) for p in rec["images"]], rec["max_new_tokens"],
                                      len(rec["input_ids"]))
                except Exception as e:  # recorded, not fatal: og is a benchmark peer, not the reference
                    og_deviations.append(f"{rec['name']} {label}: {type(e).__name__}: {e}")
                    rec.setdefault("onnxruntime_genai", {})[name] = {"error": f"{type(e).__name__}: {e}"}
                    continue
                info = {"ids": got["ids"], "input_ids_equal": got["input_ids"] == rec["input_ids"]}
                if pv is not None:
                    info["image_grid_thw"] = got["image_grid_thw"]
                    info["pixel_values_shape"] = list(got["pixel_values"].shape)
                    if got["image_grid_thw"] == rec["image_grid_thw"]:
                        # og pads several images to the largest patch count: [num_images * max_patches, 1176]
                        counts = [t * h * w for t, h, w in rec["image_grid_thw"]]
                        ogpv = got["pixel_values"].reshape(len(counts), -1, pv.shape[-1])
                        hf = np.split(pv, np.cumsum(counts)[:-1])
                        info["pixel_values_max_abs_diff"] = max(
                            float(np.abs(ogpv[i, :c] - hf[i]).max()) for i, c in enumerate(counts))
                rec.setdefault("onnxruntime_genai", {})[name] = info
                if got["ids"] == rec["expected_ids"] and info["input_ids_equal"]:
                    rec["layouts_checked"].append(label)
                else:  # og is a benchmark peer with its own preprocessing: a deviation is recorded, not fatal
                    og_deviations.append(f"{rec['name']} {label}: {info}")
        log(f"  {rec['name']}: {rec['layouts_checked']}")
    for d in og_deviations:
        log("  onnxruntime-genai deviates: " + d)
    return failures


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bench", metavar="OUT_DIR", help="build the larger benchmark model into OUT_DIR instead")
    ap.add_argument("--no-og", action="store_true", help="skip the onnxruntime-genai runs")
    args = ap.parse_args()
    import torch
    torch.set_num_threads(2)
    ids = {s: REGULAR_VOCAB + i for i, s in enumerate(SPECIALS)}
    if args.bench:
        return bench(args.bench, ids)

    t_start = time.time()
    timings = {}
    img_dir = os.path.join(HERE, "vlm-images")
    draw_images(img_dir)
    hf_dir = os.path.join(WORK, "hf")
    shutil.rmtree(hf_dir, ignore_errors=True)
    t0 = time.time()
    write_hf(hf_dir, ids)
    timings["tokenizer_and_model_s"] = round(time.time() - t0, 2)

    from transformers import Qwen2_5_VLForConditionalGeneration
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(hf_dir).eval()
    processor = make_processor(hf_dir)
    log("reference (transformers):")
    t0 = time.time()
    refs = reference(hf_dir, model, processor, ids, img_dir)
    timings["reference_s"] = round(time.time() - t0, 2)

    pkgs = {n: os.path.join(HERE, n) for n in ("tiny-qwen2.5-vl", "tiny-qwen2.5-vl-builder", "tiny-qwen2.5-vl-tfjs")}
    ctx = model.config.text_config.max_position_embeddings
    timings["mobius_build_s"] = round(build_mobius(hf_dir, os.path.join(WORK, "mobius"), pkgs["tiny-qwen2.5-vl"],
                                                   ids, ctx), 2)
    timings["builder_build_s"] = round(build_builder(hf_dir, os.path.join(WORK, "builder"),
                                                     pkgs["tiny-qwen2.5-vl-builder"], pkgs["tiny-qwen2.5-vl"],
                                                     ids, ctx), 2)
    t0 = time.time()
    build_tfjs(hf_dir, pkgs["tiny-qwen2.5-vl"], pkgs["tiny-qwen2.5-vl-tfjs"],
               model.model.language_model.embed_tokens.weight.detach().numpy())
    timings["tfjs_build_s"] = round(time.time() - t0, 2)

    log("checking layouts:")
    t0 = time.time()
    failures = check_layouts(refs, pkgs, ids, not args.no_og,
                             model.config.text_config.hidden_size // model.config.text_config.num_attention_heads)
    timings["checks_s"] = round(time.time() - t0, 2)

    tc = model.config.text_config
    vc = model.config.vision_config
    goldens = {
        "generator": "models/make_vlm.py (run with /work/venv-vlm/bin/python; see its docstring)",
        "versions": versions(),
        "seed": 0,
        "packages": {
            "tiny-qwen2.5-vl": "onnxruntime-genai layout, all graphs from mobius-onnx",
            "tiny-qwen2.5-vl-builder": "onnxruntime-genai layout, decoder from onnxruntime_genai.models.builder "
                                       "(exclude_embeds=true), vision/embedding from mobius",
            "tiny-qwen2.5-vl-tfjs": "transformers.js layout (onnx/vision_encoder.onnx, onnx/embed_tokens.onnx, "
                                    "onnx/decoder_model_merged.onnx)",
        },
        "model": {"vocab_size": tc.vocab_size, "hidden_size": tc.hidden_size, "num_hidden_layers": tc.num_hidden_layers,
                  "num_attention_heads": tc.num_attention_heads, "num_key_value_heads": tc.num_key_value_heads,
                  "head_dim": tc.hidden_size // tc.num_attention_heads,
                  "mrope_section": tc.rope_parameters["mrope_section"], "rope_theta": tc.rope_parameters["rope_theta"],
                  "max_position_embeddings": tc.max_position_embeddings,
                  "vision": {"depth": vc.depth, "hidden_size": vc.hidden_size, "num_heads": vc.num_heads,
                             "patch_size": vc.patch_size, "spatial_merge_size": vc.spatial_merge_size,
                             "temporal_patch_size": vc.temporal_patch_size, "window_size": vc.window_size,
                             "fullatt_block_indexes": list(vc.fullatt_block_indexes),
                             "tokens_per_second": vc.tokens_per_second}},
        "special_tokens": ids,
        "eos_token_ids": [ids["<|im_end|>"], ids["<|endoftext|>"]],
        "pad_token_id": ids["<|endoftext|>"],
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
        "preprocessor": {"min_pixels": MIN_PIXELS, "max_pixels": MAX_PIXELS, "patch_size": 14, "merge_size": 2,
                         "temporal_patch_size": 2, "image_mean": CLIP_MEAN, "image_std": CLIP_STD,
                         "resample": "PIL bicubic", "rescale_factor": 1 / 255},
        "images": image_table(processor, img_dir),
        "cases": [rec for rec, _ in refs],
    }
    if not args.no_og:
        goldens["images"] = og_image_grids(pkgs["tiny-qwen2.5-vl"], goldens["images"])
    write_json(os.path.join(HERE, "vlm-goldens.json"), goldens)
    timings["total_s"] = round(time.time() - t_start, 2)
    log("timings:", json.dumps(timings))
    for p in pkgs.values():
        for root, _, files in sorted(os.walk(p)):
            for f in sorted(files):
                if f.endswith(".onnx"):
                    log(print_io(os.path.join(root, f)))
    if failures:
        log("MISMATCHES:")
        for f in failures:
            log("  " + f)
        sys.exit(1)
    log("all layouts reproduce transformers' greedy ids")


def bench(out_dir, ids):
    """A larger random Qwen2.5-VL (hidden 512, 8 layers) exported the mobius/genai way, for dg-bench vlm."""
    hf_dir = os.path.join(WORK, "bench-hf")
    shutil.rmtree(hf_dir, ignore_errors=True)
    t0 = time.time()
    write_hf(hf_dir, ids, bench=True)
    log(f"HF model written in {time.time() - t0:.1f}s")
    from transformers import Qwen2_5_VLConfig
    ctx = Qwen2_5_VLConfig.from_pretrained(hf_dir).text_config.max_position_embeddings
    t = build_mobius(hf_dir, os.path.join(WORK, "bench-mobius"), out_dir, ids, ctx)
    log(f"mobius export took {t:.1f}s -> {out_dir}")
    # Sanity: one image case, greedy ids from transformers == onnxruntime-genai on the exported folder.
    from transformers import Qwen2_5_VLForConditionalGeneration
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(hf_dir).eval()
    processor = make_processor(hf_dir)
    global CASES
    CASES = [dict(CASES[0], max_new_tokens=32)]
    rec, _ = reference(hf_dir, model, processor, ids, os.path.join(HERE, "vlm-images"))[0]
    got = og_generate(out_dir, rec["rendered"], [os.path.join(HERE, p) for p in rec["images"]],
                      rec["max_new_tokens"], len(rec["input_ids"]))
    log(f"onnxruntime-genai ids {'==' if got['ids'] == rec['expected_ids'] else '!='} transformers ids "
        f"({len(rec['expected_ids'])} tokens)")
    import onnxruntime_genai as og
    m = og.Model(out_dir)
    proc = m.create_multimodal_processor()
    inputs = proc(rec["rendered"], images=og.Images.open(os.path.join(HERE, rec["images"][0])))
    params = og.GeneratorParams(m)
    params.set_search_options(max_length=len(rec["input_ids"]) + 128, do_sample=False, min_length=len(rec["input_ids"]) + 128)
    gen = og.Generator(m, params)
    t0 = time.time()
    gen.set_inputs(inputs)
    gen.generate_next_token()
    t1 = time.time()
    n = 1
    while not gen.is_done():
        gen.generate_next_token()
        n += 1
    t2 = time.time()
    log(f"onnxruntime-genai on this machine: first token {1000 * (t1 - t0):.1f} ms, "
        f"{(n - 1) / (t2 - t1):.1f} tokens/s over {n - 1} further tokens")


if __name__ == "__main__":
    main()
