"""Tiny random-weight ViT + GPT-2 captioner (VisionEncoderDecoderModel) exported with optimum, plus goldens.

Run by hand (outputs are committed; CI never runs this), from the repository root:

    /work/venv-ved/bin/python models/make_vlm_captioner.py

Pinned versions: torch 2.15.0 (CPU), transformers 4.57.6, tokenizers 0.22.2, optimum 2.1.0, optimum-onnx 0.1.0,
onnx 1.23.2, onnxruntime 1.31.1, pillow 13.0.0, numpy 2.4.6 (optimum-onnx needs transformers < 4.58, hence a
venv of its own). torchvision is not installed, so the slow ViTImageProcessor (PIL resize) is the reference.

Deterministic: the byte-level BPE tokenizer is trained single-threaded on the corpus of models/make_vlm.py,
weights are drawn from torch.Generator(seed 0) in parameter-name order.

Outputs (under models/):
    tiny-vit-gpt2/                   `optimum-cli export onnx --task image-to-text-with-past` of the model:
                                     encoder_model.onnx, decoder_model_merged.onnx (the non-merged decoder
                                     graphs optimum also writes are deleted), config.json, generation_config.json,
                                     preprocessor_config.json, tokenizer.json, tokenizer_config.json,
                                     special_tokens_map.json
    vlm-captioner-goldens.json       greedy ids from transformers' generate for three models/vlm-images/ images,
                                     reproduced here by a plain onnxruntime loop over the two graphs
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time

os.environ.setdefault("RAYON_NUM_THREADS", "1")

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from make_vlm import corpus, pixel_summary, write_json  # noqa: E402  (stdlib + numpy only at import)

WORK = os.environ.get("VLM_WORK", "/tmp/make_vlm_work")
OUT = os.path.join(HERE, "tiny-vit-gpt2")
REGULAR_VOCAB = 400
EOT = "<|endoftext|>"
IMAGES = ["shapes_96x64.png", "tall_70x112.png", "square_80x80.png"]
MAX_NEW = 10


def log(*a):
    print(*a, flush=True)


def build_tokenizer(out_dir):
    """GPT-2 style byte-level BPE: ByteLevel pre-tokenizer with GPT-2's regex, <|endoftext|> appended last."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=REGULAR_VOCAB, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tok.train_from_iterator(corpus(), trainer)
    assert tok.get_vocab_size() == REGULAR_VOCAB
    tok.add_special_tokens([AddedToken(EOT, special=True, normalized=False)])
    eot = tok.token_to_id(EOT)
    assert eot == REGULAR_VOCAB
    os.makedirs(out_dir, exist_ok=True)
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    write_json(os.path.join(out_dir, "tokenizer_config.json"), {
        "add_bos_token": False, "add_prefix_space": False,
        "added_tokens_decoder": {str(eot): {"content": EOT, "lstrip": False, "normalized": False, "rstrip": False,
                                            "single_word": False, "special": True}},
        "bos_token": EOT, "clean_up_tokenization_spaces": False, "eos_token": EOT, "errors": "replace",
        "model_max_length": 64, "pad_token": EOT, "tokenizer_class": "GPT2Tokenizer", "unk_token": EOT})
    write_json(os.path.join(out_dir, "special_tokens_map.json"),
               {"bos_token": EOT, "eos_token": EOT, "pad_token": EOT, "unk_token": EOT})
    return eot


def build_model(eot, seed=0):
    import torch
    from transformers import GPT2Config, VisionEncoderDecoderConfig, VisionEncoderDecoderModel, ViTConfig
    enc = ViTConfig(image_size=32, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=2,
                    num_attention_heads=2, intermediate_size=64, hidden_act="gelu", layer_norm_eps=1e-12,
                    qkv_bias=True)
    dec = GPT2Config(vocab_size=eot + 1, n_positions=64, n_embd=32, n_layer=2, n_head=2, n_inner=64,
                     add_cross_attention=True, bos_token_id=eot, eos_token_id=eot, pad_token_id=eot,
                     decoder_start_token_id=eot, is_decoder=True)
    cfg = VisionEncoderDecoderConfig.from_encoder_decoder_configs(enc, dec)
    cfg.decoder_start_token_id = eot
    cfg.pad_token_id = eot
    cfg.eos_token_id = eot
    cfg.bos_token_id = eot
    torch.manual_seed(seed)
    model = VisionEncoderDecoderModel(cfg).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if p.ndim == 1 and ("ln" in name or "layernorm" in name):
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * torch.randn(p.shape, generator=g))
            elif p.ndim == 1:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
            elif "wte" in name or "wpe" in name:
                p.copy_(0.5 * torch.randn(p.shape, generator=g))  # tied LM head: logits with std ~3
            else:
                # large enough that the image changes the caption and greedy does not repeat one token
                p.copy_(0.4 * torch.randn(p.shape, generator=g))
    model.generation_config.decoder_start_token_id = eot
    model.generation_config.bos_token_id = eot
    model.generation_config.eos_token_id = eot
    model.generation_config.pad_token_id = eot
    return model


def preprocessor(out_dir):
    from transformers import ViTImageProcessor
    ip = ViTImageProcessor(do_resize=True, size={"height": 32, "width": 32}, resample=2, do_rescale=True,
                           rescale_factor=1 / 255, do_normalize=True, image_mean=[0.5, 0.5, 0.5],
                           image_std=[0.5, 0.5, 0.5])
    ip.save_pretrained(out_dir)
    return ip


class OrtCaptioner:
    """encoder_model.onnx once, then decoder_model_merged.onnx step by step (use_cache_branch false on the first
    step with empty past tensors, true afterwards), every input and output bound by name."""

    def __init__(self, folder, n_layer, n_head, head_dim):
        import onnxruntime as ort
        so = ort.SessionOptions()
        so.intra_op_num_threads = 2
        self.enc = ort.InferenceSession(os.path.join(folder, "encoder_model.onnx"), so,
                                        providers=["CPUExecutionProvider"])
        self.dec = ort.InferenceSession(os.path.join(folder, "decoder_model_merged.onnx"), so,
                                        providers=["CPUExecutionProvider"])
        self.dec_in = [i.name for i in self.dec.get_inputs()]
        self.dec_out = [o.name for o in self.dec.get_outputs()]
        self.n_layer, self.n_head, self.head_dim = n_layer, n_head, head_dim

    def generate(self, pixel_values, start, eos, max_new):
        hidden = self.enc.run(["last_hidden_state"], {"pixel_values": pixel_values.astype(np.float32)})[0]
        feeds = {"encoder_hidden_states": hidden, "use_cache_branch": np.array([False])}
        for name in self.dec_in:
            if name.startswith("past_key_values."):
                feeds[name] = np.zeros((1, self.n_head, 0, self.head_dim), np.float32)
        ids = [start]
        out = []
        first_logits = None
        while len(out) < max_new:
            feeds["input_ids"] = np.array([[ids[-1]]], np.int64)
            res = dict(zip(self.dec_out, self.dec.run(self.dec_out, {k: v for k, v in feeds.items()
                                                                     if k in self.dec_in})))
            logits = res["logits"][0, -1]
            if first_logits is None:
                first_logits = logits.copy()
            tok = int(np.argmax(logits))
            out.append(tok)
            ids.append(tok)
            if tok == eos:
                break
            for name, v in res.items():
                if name.startswith("present."):
                    feeds["past_key_values." + name[len("present."):]] = v
            feeds["use_cache_branch"] = np.array([True])
        return out, first_logits


def print_io(path):
    import onnx
    import onnxruntime as ort
    s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    m = onnx.load(path, load_external_data=False)
    opsets = ", ".join(f"{o.domain or 'ai.onnx'} {o.version}" for o in m.opset_import)
    lines = [f"- `{os.path.relpath(path, HERE)}` (opset {opsets})"]
    for kind, items in (("in", s.get_inputs()), ("out", s.get_outputs())):
        for i in items:
            lines.append(f"  - {kind} `{i.name}` {i.type} {i.shape}")
    return "\n".join(lines)


def main():
    import torch
    from PIL import Image
    from transformers import AutoTokenizer, VisionEncoderDecoderModel
    torch.set_num_threads(2)
    t_start = time.time()
    hf = os.path.join(WORK, "vit-gpt2-hf")
    shutil.rmtree(hf, ignore_errors=True)
    eot = build_tokenizer(hf)
    model = build_model(eot)
    model.save_pretrained(hf)
    model.generation_config.save_pretrained(hf)
    ip = preprocessor(hf)
    model = VisionEncoderDecoderModel.from_pretrained(hf).eval()
    tok = AutoTokenizer.from_pretrained(hf)
    t_model = time.time() - t_start

    cases = []
    for name in IMAGES:
        img = Image.open(os.path.join(HERE, "vlm-images", name)).convert("RGB")
        pv = ip(images=[img], return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            gen = model.generate(pixel_values=pv, do_sample=False, max_new_tokens=MAX_NEW, output_scores=True,
                                 return_dict_in_generate=True)
        seq = gen.sequences[0].tolist()
        assert seq[0] == eot
        new = seq[1:]
        margins = [float(torch.topk(s[0], 2).values.diff().abs()) for s in gen.scores]
        cases.append({"name": name.split(".")[0], "image": f"vlm-images/{name}", "max_new_tokens": MAX_NEW,
                      "pixel_values": pixel_summary(pv.numpy()), "expected_ids": new,
                      "expected_text": tok.decode(new, skip_special_tokens=True),
                      "stopped_at_eos": bool(new and new[-1] == eot), "min_top2_logit_margin": min(margins),
                      "_pv": pv.numpy()})
        log(f"  {name}: {new} {cases[-1]['expected_text']!r} min margin {min(margins):.3f}")

    t0 = time.time()
    raw = os.path.join(WORK, "vit-gpt2-onnx")
    shutil.rmtree(raw, ignore_errors=True)
    cmd = [os.path.join(os.path.dirname(sys.executable), "optimum-cli"), "export", "onnx", "-m", hf, "--task",
           "image-to-text-with-past", raw]
    log("  $", " ".join(cmd))
    # optimum's decoder merge names shared initializers in set order: fix the hash seed for identical bytes
    r = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONHASHSEED="0"))
    if r.returncode != 0:
        sys.stderr.write(r.stdout[-4000:] + r.stderr[-4000:])
        raise SystemExit("optimum export failed")
    t_export = time.time() - t0
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    for f in sorted(os.listdir(raw)):
        if f in ("decoder_model.onnx", "decoder_with_past_model.onnx"):
            continue  # the merged decoder covers both
        shutil.copy(os.path.join(raw, f), os.path.join(OUT, f))
    log("  package:", sorted(os.listdir(OUT)))

    dcfg = model.config.decoder
    runner = OrtCaptioner(OUT, dcfg.n_layer, dcfg.n_head, dcfg.n_embd // dcfg.n_head)
    failures = []
    for c in cases:
        pv = c.pop("_pv")
        got, _ = runner.generate(pv, eot, eot, c["max_new_tokens"])
        c["layouts_checked"] = ["tiny-vit-gpt2 (onnxruntime)"] if got == c["expected_ids"] else []
        if got != c["expected_ids"]:
            failures.append(f"{c['name']}: onnxruntime {got} != {c['expected_ids']}")
    from importlib.metadata import version
    goldens = {
        "generator": "models/make_vlm_captioner.py (run with /work/venv-ved/bin/python)",
        "versions": {p: version(p) for p in ("torch", "transformers", "tokenizers", "optimum", "optimum-onnx",
                                             "onnx", "onnxruntime", "pillow", "numpy")},
        "seed": 0,
        "package": "tiny-vit-gpt2",
        "decoder_start_token_id": eot, "eos_token_id": eot, "pad_token_id": eot, "bos_token_id": eot,
        "vocab_size": dcfg.vocab_size,
        "preprocessor": {"size": [32, 32], "resample": "PIL bilinear", "rescale_factor": 1 / 255,
                         "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]},
        "decoder": {"n_layer": dcfg.n_layer, "n_head": dcfg.n_head, "head_dim": dcfg.n_embd // dcfg.n_head,
                    "n_positions": dcfg.n_positions},
        "note": "expected_ids are the generated tokens after decoder_start_token_id (not included)",
        "cases": cases,
    }
    write_json(os.path.join(HERE, "vlm-captioner-goldens.json"), goldens)
    log(f"timings: model {t_model:.1f}s, optimum export {t_export:.1f}s, total {time.time() - t_start:.1f}s")
    for f in ("encoder_model.onnx", "decoder_model_merged.onnx"):
        log(print_io(os.path.join(OUT, f)))
    if failures:
        raise SystemExit("MISMATCHES:\n" + "\n".join(failures))
    log("onnxruntime reproduces transformers' greedy ids")


if __name__ == "__main__":
    main()
