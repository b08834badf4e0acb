#!/usr/bin/env python
"""Make the tiny FLOW-MATCHING test packages (SD3, FLUX): models/tiny-sd3 and models/tiny-flux.

Run from the repository root:   /work/venv/bin/python models/make_flow.py [--only STEP ...]
Steps (default: models tokenizer):
  models     build tiny diffusers pipelines (temp dir), export them with optimum (--task text-to-image) to
             models/tiny-sd3 (StableDiffusion3Pipeline) and models/tiny-flux (FluxPipeline, guidance_embeds true),
             prune, write README.md with graph I/O; check every graph against PyTorch on random inputs
  tokenizer  tests/golden/tokenizer/t5_prompts.json: ids of the packages' T5 tokenizer (T5TokenizerFast from
             tokenizer.json) for make_tiny.py's prompt list
The goldens and the ORT parity check of these packages are part of make_edit.py (same manifest,
tests/golden/edit/manifest.json, kinds sd3_txt2img, sd3_img2img, flux_txt2img, flux_img2img):
    /work/venv/bin/python models/make_edit.py --only goldens parity
make_edit.py --only models also remakes these two packages (or --package tiny-sd3 tiny-flux).

The T5 tokenizer (tokenizer_3 of tiny-sd3, tokenizer_2 of tiny-flux) is a sentencepiece unigram model trained
here (1000 pieces: <pad> 0, </s> 1, <unk> 2; + 100 <extra_id_N> = 1100 ids like T5's 32000 + 100) on a corpus of
CLIP BPE words and make_tiny.py's prompts, with a small NFKC-subset normalization table (the real T5's nmt_nfkc
table alone would be 240 kB), converted to T5TokenizerFast (legacy, Metaspace prepend_scheme "always") and saved
with tokenizer.json.

Pinned (same as make_tiny.py): torch==2.15.0 diffusers==0.39.0 transformers==4.57.6 optimum-onnx==0.1.0.
"""

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import make_tiny as mt  # noqa: E402  (models/ is the script's dir)

OUT_SD3 = os.path.join(ROOT, "models", "tiny-sd3")
OUT_FLUX = os.path.join(ROOT, "models", "tiny-flux")
GOLD_T5 = os.path.join(ROOT, "tests", "golden", "tokenizer", "t5_prompts.json")

# stabilityai/stable-diffusion-3-medium-diffusers scheduler/scheduler_config.json (everything else takes
# FlowMatchEulerDiscreteScheduler's defaults: use_dynamic_shifting false, so sigmas are shifted by shift=3.0).
SD3_SCHEDULER = {
    "_class_name": "FlowMatchEulerDiscreteScheduler",
    "_diffusers_version": "0.29.0.dev0",
    "num_train_timesteps": 1000,
    "shift": 3.0,
}
# black-forest-labs/FLUX.1-dev scheduler/scheduler_config.json.
FLUX_SCHEDULER = {
    "_class_name": "FlowMatchEulerDiscreteScheduler",
    "_diffusers_version": "0.30.0.dev0",
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "max_image_seq_len": 4096,
    "max_shift": 1.15,
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
}

T5_EXTRA_IDS = 100
T5_PIECES = 1000
T5_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "spiece.model")
CLIP_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")


# --------------------------------------------------------------------------------------------
# T5 tokenizer
# --------------------------------------------------------------------------------------------

def _t5_corpus():
    """Deterministic training text: whole words of the CLIP BPE merges (in merge order) + the prompt list."""
    import clip_tokenizer as ct

    words = []
    for a, b in ct.read_merges(ct.FULL_N_MERGES):
        w = a + b
        if w.endswith("</w>"):
            w = w[:-4]
            if w.isascii() and w.isalpha() and len(w) > 1:
                words.append(w)
    words = words[:20000]
    lines = [" ".join(words[i:i + 12]) for i in range(0, len(words), 12)]
    lines += [p.replace("\n", " ").replace("\r", " ") for p in mt.tokenizer_prompts()]
    return lines


def _t5_normalization_rules():
    """A small subset of sentencepiece's nmt_nfkc: NFKC of Latin-1, general punctuation, ligatures and
    fullwidth ASCII; composition of decomposed Latin-1 letters; tab/newline/CR -> space; other C0 controls,
    DEL and ZERO WIDTH SPACE removed. Lines: source code points TAB target code points (hex)."""
    import unicodedata

    rules = {}
    for cp in (list(range(0xA0, 0x100)) + list(range(0x2000, 0x2070)) + list(range(0xFB00, 0xFB07))
               + list(range(0xFF01, 0xFF5F))):
        n = unicodedata.normalize("NFKC", chr(cp))
        if n != chr(cp):
            rules[(cp,)] = tuple(ord(c) for c in n)
    for cp in range(0xC0, 0x100):
        d = unicodedata.normalize("NFD", chr(cp))
        if len(d) > 1:
            rules[tuple(ord(c) for c in d)] = (cp,)
    for cp in (0x09, 0x0A, 0x0D):
        rules[(cp,)] = (0x20,)
    for cp in list(range(0x01, 0x09)) + [0x0B, 0x0C] + list(range(0x0E, 0x20)) + [0x7F, 0x200B]:
        rules[(cp,)] = ()
    return "".join(" ".join("%X" % c for c in s) + "\t" + " ".join("%X" % c for c in t) + "\n"
                   for s, t in sorted(rules.items()))


def write_t5_tokenizer(dst):
    """Train the unigram model and save a T5TokenizerFast folder (tokenizer.json + configs + spiece.model)."""
    import sentencepiece as spm
    from transformers import T5TokenizerFast

    work = tempfile.mkdtemp(prefix="t5tok-")
    try:
        rules = os.path.join(work, "rules.tsv")
        with open(rules, "w", encoding="utf-8") as f:
            f.write(_t5_normalization_rules())
        model = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(_t5_corpus()), model_writer=model, model_type="unigram",
            vocab_size=T5_PIECES, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
            pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>",
            character_coverage=1.0, num_threads=1, minloglevel=2, normalization_rule_tsv=rules)
        # the model records the rules file's (temporary) path: blank it so reruns are byte-identical
        from sentencepiece import sentencepiece_model_pb2

        proto = sentencepiece_model_pb2.ModelProto()
        proto.ParseFromString(model.getvalue())
        proto.normalizer_spec.normalization_rule_tsv = ""
        sp_path = os.path.join(work, "spiece.model")
        with open(sp_path, "wb") as f:
            f.write(proto.SerializeToString())
        # add_prefix_space=True: the converter's Metaspace prepend_scheme "always" (T5 legacy behaviour); with
        # None it would write "never" and differ from the slow tokenizer on the first word.
        tok = T5TokenizerFast(vocab_file=sp_path, extra_ids=T5_EXTRA_IDS, model_max_length=512,
                              add_prefix_space=True, legacy=True)
        shutil.rmtree(dst, ignore_errors=True)
        tok.save_pretrained(dst)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    # Without the key, T5TokenizerFast.from_pretrained loads tokenizer.json as is (with it, it would re-convert
    # spiece.model on every load; same result, checked below).
    fp = os.path.join(dst, "tokenizer_config.json")
    with open(fp) as f:
        cfg = json.load(f)
    cfg.pop("add_prefix_space", None)
    mt.write_json(fp, cfg)
    assert sorted(os.listdir(dst)) == sorted(T5_FILES), os.listdir(dst)
    check_t5_tokenizer(dst)
    return dst


def check_t5_tokenizer(d):
    """tokenizer.json (fast), the slow sentencepiece T5Tokenizer and raw sentencepiece must agree."""
    import sentencepiece as spm
    from transformers import T5Tokenizer, T5TokenizerFast

    fast = T5TokenizerFast.from_pretrained(d)
    slow = T5Tokenizer(os.path.join(d, "spiece.model"), extra_ids=T5_EXTRA_IDS, legacy=True)
    sp = spm.SentencePieceProcessor(model_file=os.path.join(d, "spiece.model"))
    assert len(fast) == T5_PIECES + T5_EXTRA_IDS
    bad = []
    for p in mt.tokenizer_prompts():
        a = fast(p).input_ids
        if not (a == slow(p).input_ids == sp.encode(p) + [1]):
            bad.append(p)
    if bad:
        sys.exit(f"T5 tokenizer: fast/slow/sentencepiece disagree on {bad}")


def t5_goldens(tok_dir):
    from importlib.metadata import version

    from transformers import T5TokenizerFast

    tok = T5TokenizerFast.from_pretrained(tok_dir)
    cases = []
    for p in mt.tokenizer_prompts() + ["<extra_id_0> sentinel", "a</s>b<pad>c<unk>", "\u2581lower one eighth"]:
        ids = tok(p).input_ids
        cases.append({
            "prompt": p,
            "ids": ids,
            "pieces": tok.convert_ids_to_tokens(ids),
            "max16": tok(p, padding="max_length", max_length=16, truncation=True).input_ids,
            "max64": tok(p, padding="max_length", max_length=64, truncation=True).input_ids,
        })
    doc = {
        "description": (
            "T5TokenizerFast.from_pretrained(models/tiny-sd3/tokenizer_3) (= models/tiny-flux/tokenizer_2, the same "
            "files) called as diffusers' SD3/FLUX pipelines call it: tokenizer(prompt, padding='max_length', "
            "max_length=N, truncation=True, add_special_tokens=True). ids = tokenizer(prompt).input_ids (no padding, "
            "no truncation; ends with </s>=1); max16 / max64 = padded with <pad>=0 / truncated to N-1 pieces + </s>. "
            "Vocabulary: 1000 unigram pieces (<pad> 0, </s> 1, <unk> 2) + <extra_id_0..99> = ids 1099..1000 "
            "(<extra_id_0> is 1099, as in T5). Special tokens in the text are matched as added tokens."
        ),
        "transformers_version": version("transformers"),
        "tokenizers_version": version("tokenizers"),
        "cases": cases,
    }
    os.makedirs(os.path.dirname(GOLD_T5), exist_ok=True)
    with open(GOLD_T5, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"T5 tokenizer goldens: {len(cases)} prompts -> {os.path.relpath(GOLD_T5, ROOT)}")


# --------------------------------------------------------------------------------------------
# model definitions (tiny: <= 0.9 MB per exported package)
# --------------------------------------------------------------------------------------------

def _t5(seed, d_model=16):
    import torch
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    return T5EncoderModel(T5Config(
        vocab_size=T5_PIECES + T5_EXTRA_IDS,
        d_model=d_model,
        d_kv=4,
        d_ff=24,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        feed_forward_proj="gated-gelu",  # T5 v1.1 (the SD3 / FLUX text encoder) style
        dropout_rate=0.0,
        layer_norm_epsilon=1e-6,
        is_encoder_decoder=False,
        use_cache=False,
        tie_word_embeddings=False,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    ))


def _flow_vae(seed, scaling_factor, shift_factor):
    """SD3/FLUX-style AutoencoderKL: 16 latent channels, no quant convs, shift + scaling factor, factor 8."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 8, 8, 8),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=16,
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=64,
        scaling_factor=scaling_factor,
        shift_factor=shift_factor,
        use_quant_conv=False,
        use_post_quant_conv=False,
        force_upcast=True,
        mid_block_add_attention=False,
    )


def _tok(toks, key):
    from transformers import CLIPTokenizer, T5TokenizerFast

    cls = T5TokenizerFast if os.path.exists(os.path.join(toks[key], "tokenizer.json")) else CLIPTokenizer
    return cls.from_pretrained(toks[key])


def build_sd3(toks):
    """SD3-medium style: CLIP-L-like (hidden 4) + CLIP-G-like (hidden 8) with projection, T5 (d_model 16),
    SD3Transformer2DModel (patch 2, 16 channels, 1 joint block), FlowMatchEuler shift 3.0, VAE 1.5305/0.0609."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    import make_edit as me

    torch.manual_seed(50)
    transformer = SD3Transformer2DModel(
        sample_size=8,  # latent 8x8 -> default image 64x64
        patch_size=2,
        in_channels=16,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=16,  # T5 d_model
        caption_projection_dim=16,  # = inner dim (heads * head dim)
        pooled_projection_dim=12,  # CLIP-L text_embeds 4 ++ CLIP-G text_embeds 8
        out_channels=16,
        pos_embed_max_size=16,  # up to 16 patches a side: 256x256 images
    )
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(dict(SD3_SCHEDULER)),
        vae=_flow_vae(50, scaling_factor=1.5305, shift_factor=0.0609),
        text_encoder=me._text_encoder(51, hidden=4, heads=2, projection_dim=4),
        tokenizer=_tok(toks, "tokenizer"),
        text_encoder_2=me._text_encoder(52, hidden=8, heads=2, act="gelu", projection_dim=8),
        tokenizer_2=_tok(toks, "tokenizer_2"),
        text_encoder_3=_t5(53),
        tokenizer_3=_tok(toks, "tokenizer_3"),
    )


def build_flux(toks):
    """FLUX.1-dev style: CLIPTextModel (hidden 8, pooled), T5 (d_model 16), FluxTransformer2DModel with
    guidance_embeds (1 double + 1 single block, 64 packed channels), dynamic-shift FlowMatchEuler, VAE 0.3611/0.1159."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    import make_edit as me

    torch.manual_seed(60)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,  # 16 latent channels x 2x2 packing
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=16,  # T5 d_model
        pooled_projection_dim=8,  # CLIP pooler_output
        guidance_embeds=True,
        axes_dims_rope=(2, 2, 4),  # sums to attention_head_dim (real: 16, 56, 56 for 128)
    )
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(dict(FLUX_SCHEDULER)),
        vae=_flow_vae(60, scaling_factor=0.3611, shift_factor=0.1159),
        text_encoder=me._text_encoder(61, hidden=8, heads=2),
        tokenizer=_tok(toks, "tokenizer"),
        text_encoder_2=_t5(62),
        tokenizer_2=_tok(toks, "tokenizer_2"),
        transformer=transformer,
    )


FLOW_MODELS = {
    # name: builder, out dir, scheduler config, tokenizer folders: CLIP pad token or "t5"
    "tiny-sd3": dict(builder=build_sd3, out=OUT_SD3, sched=SD3_SCHEDULER, task="text-to-image",
                     toks={"tokenizer": "<|endoftext|>", "tokenizer_2": "!", "tokenizer_3": "t5"}),
    "tiny-flux": dict(builder=build_flux, out=OUT_FLUX, sched=FLUX_SCHEDULER, task="text-to-image",
                      toks={"tokenizer": "<|endoftext|>", "tokenizer_2": "t5"}),
}
COMPONENTS = ("text_encoder", "text_encoder_2", "text_encoder_3", "transformer", "vae_decoder", "vae_encoder")


def keep_files(mi, toks):
    keep = {"model_index.json", "scheduler/scheduler_config.json"}
    for c in COMPONENTS:
        if ("vae" if c.startswith("vae_") else c) in mi:
            keep |= {f"{c}/config.json", f"{c}/model.onnx"}
    for key, pad in toks.items():
        keep |= {f"{key}/{f}" for f in (T5_FILES if pad == "t5" else CLIP_FILES)}
    return keep


def export_package(name, src, m, tok_dirs, cache):
    with open(os.path.join(src, "model_index.json")) as f:
        mi = json.load(f)
    out = m["out"]
    tmp_out = os.path.join(cache, f"_onnx-{name}")
    shutil.rmtree(tmp_out, ignore_errors=True)
    cli = os.path.join(os.path.dirname(sys.executable), "optimum-cli")
    subprocess.run([cli, "export", "onnx", "--model", src, "--task", m["task"], tmp_out], check=True)
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    keep = keep_files(mi, m["toks"])
    for root, _, files in os.walk(tmp_out):
        for fn in files:
            rel = os.path.relpath(os.path.join(root, fn), tmp_out).replace(os.sep, "/")
            if rel in keep and not rel.startswith("tokenizer"):
                dst = os.path.join(out, rel)
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                shutil.copyfile(os.path.join(root, fn), dst)
            elif not rel.startswith("tokenizer"):
                print(f"[{name}] dropping {rel}")
    mt.write_json(os.path.join(out, "scheduler", "scheduler_config.json"), m["sched"])
    for key, tok_dir in tok_dirs.items():
        shutil.copytree(tok_dir, os.path.join(out, key))
    for rel in keep:
        if rel.endswith(".json") and not rel.startswith("tokenizer"):
            fp = os.path.join(out, rel)
            if os.path.exists(fp):
                with open(fp) as f:
                    j = json.load(f)
                if j.pop("_name_or_path", None) is not None:
                    mt.write_json(fp, j)
    missing = [k for k in keep if not os.path.exists(os.path.join(out, k))]
    if missing:
        sys.exit(f"[{name}] export lacks {missing}")


README_NOTES = {
    "tiny-sd3": [
        "StableDiffusion3Pipeline layout (stabilityai/stable-diffusion-3-medium-diffusers style).",
        "",
        "- text_encoder (CLIP-L-like, CLIPTextModelWithProjection, hidden 4, 2 layers, quick_gelu) and",
        "  text_encoder_2 (CLIP-G-like, CLIPTextModelWithProjection, hidden 8, 2 layers, gelu): the prompt",
        "  embeddings use `hidden_states.1` (= hidden_states[-2], the penultimate layer, no final layer norm) of",
        "  both, and the pooled embeddings their projected `text_embeds`. tokenizer pads with <|endoftext|> (999),",
        "  tokenizer_2 with \"!\" (0); both 77 tokens (padding max_length, truncation).",
        "- text_encoder_3 (T5EncoderModel, d_model 16, 2 layers, gated-gelu like T5 v1.1): `last_hidden_state`.",
        "  tokenizer_3 is a T5TokenizerFast (tokenizer.json; see below), called with padding=\"max_length\",",
        "  max_length=max_sequence_length (diffusers 0.39 default 256; at most 512), truncation=True,",
        "  add_special_tokens=True: the pieces, </s> (1), then <pad> (0) up to max_sequence_length.",
        "- transformer `encoder_hidden_states` [batch, 77 + max_sequence_length, 16] = cat(pad(cat(te1 hs[-2] (4),",
        "  te2 hs[-2] (8), dim -1) with 4 zero columns to 16), T5 last_hidden_state (16), dim 1 (sequence));",
        "  `pooled_projections` [batch, 12] = cat(te1 text_embeds (4), te2 text_embeds (8), dim -1). Without",
        "  text_encoder_3 (a package lacking it, diffusers text_encoder_3=None) the T5 part is zeros",
        "  [batch, max_sequence_length, 16] (transformer joint_attention_dim).",
        "- transformer: SD3Transformer2DModel, patch 2, 16 latent channels, 1 joint block, 2 heads x 8,",
        "  pos_embed_max_size 16 (images up to 256x256; width and height multiples of 16); `timestep` [batch] is",
        "  the scheduler's t (sigma * 1000, NOT divided by 1000); `hidden_states` / `out_hidden_states` are",
        "  unpacked latents [batch, 16, h, w]. With CFG the batch is [negative, positive]; an empty or missing",
        "  negative prompt is ENCODED (\"\"), not zeroed.",
        "- VAE: 16 latent channels, no quant_conv/post_quant_conv (vae_encoder `latent_parameters` has 32",
        "  channels = mean 16 ++ logvar 16), scaling_factor 1.5305, shift_factor 0.0609 (SD3's):",
        "  encode: (sample - 0.0609) * 1.5305; decode input: latents / 1.5305 + 0.0609.",
        "- scheduler/scheduler_config.json is SD3-medium's (FlowMatchEulerDiscreteScheduler, shift 3.0, no",
        "  dynamic shifting). The shift is applied TWICE: __init__ shifts the 1000 training sigmas (float32), so",
        "  sigma_min = float32(3 * 0.001 / (1 + 2 * 0.001)) = 0.002994012; set_timesteps(steps) takes t =",
        "  linspace(1000, 1000 * sigma_min, steps) (float64), s = t / 1000, s' = 3 s / (1 + 2 s), sigmas =",
        "  float32(s') then a trailing 0, timesteps = sigmas * 1000. 8 steps: sigmas 1.0, 0.94754, 0.88279, 0.80084,",
        "  0.69379, 0.54805, 0.33797, 0.0089286, 0. Step: x += (sigma_next - sigma) * out_hidden_states (float32).",
        "- img2img (StableDiffusion3Img2ImgPipeline): init_timestep = min(steps * strength, steps) as a float,",
        "  t_start = int(steps - init_timestep) (8 steps, strength 0.6: t_start 3, 5 steps; SD 1.x's img2img",
        "  would run 4); latents = sigma * noise + (1 - sigma) * image_latents with sigma = sigmas[t_start] and",
        "  image_latents = (VAE sample - 0.0609) * 1.5305; RNG: the VAE sample draw, then the noise draw.",
    ],
    "tiny-flux": [
        "FluxPipeline layout (black-forest-labs/FLUX.1-dev style, guidance-distilled: the transformer has a",
        "`guidance` input).",
        "",
        "- text_encoder (CLIPTextModel, hidden 8, 2 layers, quick_gelu): only `pooler_output` is used",
        "  (transformer `pooled_projections` [batch, 8]); tokenizer pads with <|endoftext|>, 77 tokens.",
        "- text_encoder_2 (T5EncoderModel, d_model 16, 2 layers, gated-gelu): `last_hidden_state` is the",
        "  transformer's `encoder_hidden_states` [batch, max_sequence_length, 16]. tokenizer_2 is a T5TokenizerFast",
        "  (tokenizer.json; see below) called with padding=\"max_length\", max_length=max_sequence_length",
        "  (diffusers default 512), truncation=True.",
        "- transformer: FluxTransformer2DModel, patch 1, in_channels 64 (16 latent channels packed 2x2), 1 double +",
        "  1 single block, 2 heads x 8, axes_dims_rope (2, 2, 4), guidance_embeds true. `hidden_states` /",
        "  `out_hidden_states` [batch, (h/2)*(w/2), 64] packed latents (h, w = latent size); `timestep` [batch] =",
        "  t / 1000 in float32 with t = float32(sigma * 1000) (can differ from sigma by an ulp; the graph multiplies",
        "  by 1000); `guidance` [batch] = guidance_scale as is (the graph multiplies it by 1000 too); `txt_ids`",
        "  [max_sequence_length, 3] zeros; `img_ids` [(h/2)*(w/2), 3] rows (0, i, j) for packed row i, column j,",
        "  row-major (int64 in the graph; diffusers holds the same integers as floats). No classifier-free-guidance",
        "  batch (FluxPipeline's true_cfg_scale is not used by the goldens).",
        "- Packing: latents [b, 16, h, w] -> view(b, 16, h/2, 2, w/2, 2).permute(0, 2, 4, 1, 3, 5)",
        "  .reshape(b, (h/2)*(w/2), 64); unpacking is the inverse. Image sizes must be multiples of 16.",
        "  FluxImg2ImgPipeline resizes the input image to width x height, which default to 1024 (not the image's",
        "  size): pass them.",
        "- Schedule: sigmas = linspace(1, 1/steps, steps); mu = image_seq_len * m + b with m = (1.15 - 0.5) /",
        "  (4096 - 256), b = 0.5 - 256 m, image_seq_len = (h/2)*(w/2); sigma' = exp(mu) / (exp(mu) + 1/sigma - 1);",
        "  then a trailing 0; step: x += (sigma_next - sigma) * out_hidden_states.",
        "- VAE: 16 latent channels, no quant convs (vae_encoder `latent_parameters` has 32 channels), scaling_factor",
        "  0.3611, shift_factor 0.1159 (FLUX's): encode (sample - 0.1159) * 0.3611; decode latents / 0.3611 + 0.1159.",
        "- scheduler/scheduler_config.json is FLUX.1-dev's (use_dynamic_shifting true, base_shift 0.5, max_shift",
        "  1.15, base_image_seq_len 256, max_image_seq_len 4096; shift 3.0 unused).",
    ],
}

T5_README = [
    "T5 tokenizer (`{key}/`): a T5TokenizerFast saved with tokenizer.json (what the `tokenizers` crate loads),",
    "tokenizer_config.json, special_tokens_map.json and the sentencepiece spiece.model it was converted from.",
    "Unigram, 1000 pieces (<pad> 0, </s> 1, <unk> 2) + 100 <extra_id_N> added tokens (ids 1000..1099, <extra_id_0>",
    "= 1099), model_max_length 512, legacy T5 behaviour: normalizer Sequence[Precompiled (a small NFKC subset:",
    "Latin-1, general punctuation, ligatures, fullwidth ASCII; tab/newline -> space; C0 controls and U+200B",
    "removed), Strip right, Replace \" {2,}\" -> \"\u2581\"], pre_tokenizer Metaspace(\u2581, prepend_scheme",
    "\"always\", split), post_processor appends </s>. Ids for many prompts: tests/golden/tokenizer/t5_prompts.json.",
]


def write_readme(name, out):
    with open(os.path.join(out, "model_index.json")) as f:
        mi = json.load(f)
    m = FLOW_MODELS[name]
    t5_key = [k for k, v in m["toks"].items() if v == "t5"][0]
    lines = [
        f"# {name}",
        "",
        "Random-weight tiny package made by `models/make_flow.py` (do not edit by hand; rerun the script).",
        f"Exported with optimum-onnx 0.1.0 `--task {m['task']}` from a diffusers {mi.get('_class_name')} saved",
        f"with diffusers {mi.get('_diffusers_version')}.",
        "",
        "Graph I/O (as observed in the exported files):",
        "",
    ]
    for comp in COMPONENTS:
        fp = os.path.join(out, comp, "model.onnx")
        if not os.path.exists(fp):
            continue
        ins, outs, ops = mt.graph_signature(fp)
        lines.append(f"- `{comp}/model.onnx` (opset {ops}): inputs " + "; ".join(f"`{s}`" for s in ins)
                     + " -> outputs " + "; ".join(f"`{s}`" for s in outs))
    lines += [""]
    if name == "tiny-sd3":
        lines += [
            "optimum labels the dims of the CLIP-with-projection `text_embeds` [batch_size, sequence_length]; the",
            "real shape is [batch, projection_dim]. `hidden_states.0` is the embedding output, `hidden_states.N`",
            "(N = number of layers) the last layer before the final layer norm (`last_hidden_state` is after it).",
            "",
        ]
    lines += ["The transformer's `timestep` dim is named `step` by optimum; it is the batch size.", ""]
    lines += README_NOTES[name] + [
        "",
    ] + [ln.replace("{key}", t5_key) for ln in T5_README] + [
        "CLIP tokenizers: the 1000-token truncated CLIP BPE (models/clip_tokenizer.py; bos 998, eos 999).",
        "Goldens: tests/golden/edit/manifest.json (kinds " + (
            "sd3_txt2img, sd3_img2img)." if name == "tiny-sd3" else "flux_txt2img, flux_img2img)."),
        "",
    ]
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write("\n".join(lines))


def check_graphs(pt, out, tag):
    """Random-input check of each exported graph against the PyTorch module it came from."""
    import numpy as np
    import onnxruntime as ort
    import torch
    from diffusers import AutoencoderKL, FluxTransformer2DModel, SD3Transformer2DModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, T5EncoderModel

    def sess(comp):
        return ort.InferenceSession(os.path.join(out, comp, "model.onnx"), providers=["CPUExecutionProvider"])

    g = np.random.default_rng(0)
    worst = {}
    classes = {"CLIPTextModelWithProjection": CLIPTextModelWithProjection, "CLIPTextModel": CLIPTextModel,
               "T5EncoderModel": T5EncoderModel}
    for comp in ("text_encoder", "text_encoder_2", "text_encoder_3"):
        if not os.path.isdir(os.path.join(pt, comp)):
            continue
        with open(os.path.join(pt, comp, "config.json")) as f:
            arch = json.load(f)["architectures"][0]
        te = classes[arch].from_pretrained(os.path.join(pt, comp)).eval()
        n = 40 if arch == "T5EncoderModel" else 77
        ids = g.integers(0, te.config.vocab_size, (2, n)).astype(np.int64)
        with torch.no_grad():
            r = te(torch.from_numpy(ids), output_hidden_states=True)
        refs = {k: v.numpy() for k, v in r.items() if k != "hidden_states"}
        refs.update({f"hidden_states.{i}": h.numpy() for i, h in enumerate(r.hidden_states)})
        s = sess(comp)
        got = dict(zip([o.name for o in s.get_outputs()], s.run(None, {"input_ids": ids})))
        for k, v in got.items():
            worst[f"{comp}.{k}"] = float(np.abs(v - refs[k]).max())
    s = sess("transformer")
    types = {i.name: i.type for i in s.get_inputs()}
    if os.path.exists(os.path.join(pt, "transformer", "config.json")):
        with open(os.path.join(pt, "transformer", "config.json")) as f:
            tcls = json.load(f)["_class_name"]
    if tcls == "SD3Transformer2DModel":
        tr = SD3Transformer2DModel.from_pretrained(os.path.join(pt, "transformer")).eval()
        tc = tr.config
        feed = {
            "hidden_states": g.standard_normal((2, tc.in_channels, 8, 12)).astype(np.float32),
            "encoder_hidden_states": g.standard_normal((2, 77 + 40, tc.joint_attention_dim)).astype(np.float32),
            "pooled_projections": g.standard_normal((2, tc.pooled_projection_dim)).astype(np.float32),
            "timestep": np.array([500.0, 875.5], dtype=np.float32),
        }
        with torch.no_grad():
            ref = tr(**{k: torch.from_numpy(v) for k, v in feed.items()}, return_dict=False)[0].numpy()
    else:
        tr = FluxTransformer2DModel.from_pretrained(os.path.join(pt, "transformer")).eval()
        tc = tr.config
        hh, ww = 4, 6
        img_ids = np.zeros((hh, ww, 3))
        img_ids[..., 1] = np.arange(hh)[:, None]
        img_ids[..., 2] = np.arange(ww)[None, :]
        feed = {
            "hidden_states": g.standard_normal((2, hh * ww, tc.in_channels)).astype(np.float32),
            "encoder_hidden_states": g.standard_normal((2, 40, tc.joint_attention_dim)).astype(np.float32),
            "pooled_projections": g.standard_normal((2, tc.pooled_projection_dim)).astype(np.float32),
            "timestep": np.array([0.5, 0.8755], dtype=np.float32),
            "img_ids": img_ids.reshape(-1, 3),
            "txt_ids": np.zeros((40, 3)),
            "guidance": np.array([3.5, 3.5], dtype=np.float32),
        }
        with torch.no_grad():
            ref = tr(**{k: torch.from_numpy(v).float() for k, v in feed.items()}, return_dict=False)[0].numpy()
        for k in ("img_ids", "txt_ids"):
            feed[k] = feed[k].astype(np.int64 if types[k] == "tensor(int64)" else np.float32)
    assert sorted(types) == sorted(feed), sorted(types)
    worst["transformer"] = float(np.abs(s.run(None, feed)[0] - ref).max())
    vae = AutoencoderKL.from_pretrained(os.path.join(pt, "vae")).eval()
    img = g.uniform(-1, 1, (1, 3, 64, 96)).astype(np.float32)
    lat = g.standard_normal((1, vae.config.latent_channels, 8, 12)).astype(np.float32)
    with torch.no_grad():
        ref_e = vae.encode(torch.from_numpy(img)).latent_dist.parameters.numpy()
        ref_d = vae.decode(torch.from_numpy(lat))[0].numpy()
    worst["vae_encoder"] = float(np.abs(sess("vae_encoder").run(None, {"sample": img})[0] - ref_e).max())
    worst["vae_decoder"] = float(np.abs(sess("vae_decoder").run(None, {"latent_sample": lat})[0] - ref_d).max())
    print(f"[{tag}] graph vs PyTorch max abs: " + ", ".join(f"{k} {v:.2e}" for k, v in worst.items()))
    bad = {k: v for k, v in worst.items() if v > 1e-4}
    if bad:
        sys.exit(f"[{tag}] ONNX graphs do not match the PyTorch weights: {bad}")


def make_models(cache, names=None):
    from clip_tokenizer import write_truncated

    os.makedirs(cache, exist_ok=True)
    t5_dir = None
    for name, m in FLOW_MODELS.items():
        if names and name not in names:
            continue
        tok_dirs = {}
        for key, pad in m["toks"].items():
            tok_dirs[key] = os.path.join(cache, f"_{key}-{name}")
            shutil.rmtree(tok_dirs[key], ignore_errors=True)
            if pad == "t5":
                if t5_dir is None:
                    t5_dir = write_t5_tokenizer(os.path.join(cache, "_t5-tokenizer"))
                shutil.copytree(t5_dir, tok_dirs[key])
            else:
                write_truncated(tok_dirs[key], vocab_size=1000, pad_token=pad)
        pipe = m["builder"](tok_dirs)
        d = os.path.join(cache, name)
        shutil.rmtree(d, ignore_errors=True)
        pipe.save_pretrained(d, safe_serialization=True)
        mt.write_json(os.path.join(d, "scheduler", "scheduler_config.json"), m["sched"])
        for key, tok_dir in tok_dirs.items():
            shutil.rmtree(os.path.join(d, key))
            shutil.copytree(tok_dir, os.path.join(d, key))
        export_package(name, d, m, tok_dirs, cache)
        write_readme(name, m["out"])
        check_graphs(d, m["out"], name)
        size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(m["out"]) for f in fs)
        print(f"[{name}] {size} bytes")


# --------------------------------------------------------------------------------------------
# golden cases (run by make_edit.py)
# --------------------------------------------------------------------------------------------

KINDS = ("sd3_txt2img", "sd3_img2img", "flux_txt2img", "flux_img2img")
PIPE_CLASS = {
    "sd3_txt2img": "StableDiffusion3Pipeline",
    "sd3_img2img": "StableDiffusion3Img2ImgPipeline",
    "flux_txt2img": "FluxPipeline",
    "flux_img2img": "FluxImg2ImgPipeline",
}
SCHEDULERS = {"flow_euler": ("FlowMatchEulerDiscreteScheduler", {})}


def cases(case, prompt, neg):
    """Append the flow cases with make_edit's case(); extra keys: max_sequence_length, text_encoder_3."""
    im64, im96 = "image_64x64.png", "image_96x64.png"
    sd3 = dict(model="tiny-sd3", sched="flow_euler", steps=8, guidance=5.0)
    case("sd3_g5", "sd3_txt2img", seed=1100, max_sequence_length=256, text_encoder_3=True, **sd3)
    case("sd3_noneg", "sd3_txt2img", seed=1101, neg=None, max_sequence_length=256, text_encoder_3=True, **sd3)
    case("sd3_x2_128x80", "sd3_txt2img", seed=1102, num_images=2, width=128, height=80, max_sequence_length=64,
         text_encoder_3=True, **sd3)
    case("sd3_no_t5", "sd3_txt2img", seed=1103, max_sequence_length=256, text_encoder_3=False, **sd3)
    case("sd3_i2i_s06", "sd3_img2img", seed=1104, strength=0.6, image=im64, max_sequence_length=64,
         text_encoder_3=True, **sd3)
    case("sd3_i2i_96x64_s08_nocfg", "sd3_img2img", seed=1105, strength=0.8, image=im96, width=96, height=64,
         max_sequence_length=64, text_encoder_3=True, neg=None,
         **{**sd3, "guidance": 1.0, "steps": 6})
    flux = dict(model="tiny-flux", sched="flow_euler", guidance=3.5, neg=None)
    case("flux_g35", "flux_txt2img", seed=1200, steps=8, max_sequence_length=512, **flux)
    case("flux_128x80", "flux_txt2img", seed=1201, steps=6, width=128, height=80, max_sequence_length=64, **flux)
    case("flux_x2", "flux_txt2img", seed=1202, steps=6, num_images=2, max_sequence_length=64, **flux)
    case("flux_i2i_s06", "flux_img2img", seed=1203, steps=8, strength=0.6, image=im64, max_sequence_length=64,
         **flux)
    case("flux_i2i_96x64_s075", "flux_img2img", seed=1204, steps=6, strength=0.75, image=im96, width=96,
         height=64, max_sequence_length=64, **flux)


def uses_cfg(c):
    return c["kind"].startswith("sd3") and c["guidance_scale"] > 1.0


class FlowCapture:
    """Keeps what the pipeline computes: encode_prompt / prepare_latents outputs, the scheduler's
    set_timesteps kwargs (mu) and schedule, scale_noise inputs (img2img), every transformer call's inputs."""

    def __init__(self, pipe):
        import functools

        import torch

        self.pipe = pipe
        self.t = {"transformer_calls": []}
        for m in ("encode_prompt", "prepare_latents"):
            setattr(pipe, m, self._wrap(m, getattr(type(pipe), m)))
        sch = pipe.scheduler
        orig_set, orig_scale = type(sch).set_timesteps, type(sch).scale_noise

        @functools.wraps(orig_set)  # retrieve_timesteps inspects the signature for `sigmas`
        def set_timesteps(*a, **k):
            r = orig_set(sch, *a, **k)
            self.t["set_timesteps_kwargs"] = {kk: (float(v) if isinstance(v, float) else v) for kk, v in k.items()
                                              if kk in ("mu",)}
            self.t["sigmas_passed"] = None if k.get("sigmas") is None else [float(x) for x in k["sigmas"]]
            self.t["scheduler_sigmas"] = [float(x) for x in sch.sigmas]
            return r

        def scale_noise(sample, timestep, noise=None):
            r = orig_scale(sch, sample, timestep, noise)
            self.t.setdefault("scale_noise", (sample.detach().clone(), timestep.detach().clone(),
                                              noise.detach().clone(), r.detach().clone()))
            return r

        sch.set_timesteps = set_timesteps
        sch.scale_noise = scale_noise
        self.hook = None
        if isinstance(pipe.transformer, torch.nn.Module):
            def pre(mod, args, kwargs):
                self.t["transformer_calls"].append({k: (v.detach().clone() if torch.is_tensor(v) else v)
                                                    for k, v in kwargs.items()})
            self.hook = pipe.transformer.register_forward_pre_hook(pre, with_kwargs=True)

    def _wrap(self, m, fn):
        def w(*a, **k):
            r = fn(self.pipe, *a, **k)
            self.t.setdefault(m, r)
            return r
        return w

    def close(self):
        for m in ("encode_prompt", "prepare_latents"):
            self.pipe.__dict__.pop(m, None)
        for m in ("set_timesteps", "scale_noise"):
            self.pipe.scheduler.__dict__.pop(m, None)
        if self.hook is not None:
            self.hook.remove()


def run_case(pipe, c, output_type, load_image, rng_log):
    """Run one flow case; returns (output, final latents, loop timesteps, rng draws, captured tensors)."""
    import torch

    steps_t = []
    captured = {}

    def cb(p, i, t, kw):
        steps_t.append(float(t))
        captured["latents"] = kw["latents"].detach().clone()
        return kw

    kind = c["kind"]
    kwargs = dict(
        prompt=c["prompt"],
        num_inference_steps=c["steps"],
        guidance_scale=c["guidance_scale"],
        num_images_per_prompt=c["num_images"],
        generator=torch.Generator("cpu").manual_seed(c["seed"]),
        output_type=output_type,
        callback_on_step_end=cb,
        callback_on_step_end_tensor_inputs=["latents"],
        width=c["width"],
        height=c["height"],
        max_sequence_length=c["max_sequence_length"],
    )
    if kind.startswith("sd3"):
        kwargs["negative_prompt"] = c["negative_prompt"]
    if kind.endswith("img2img"):
        kwargs.update(strength=c["strength"], image=load_image(c["image"]))
    if kind.startswith("sd3"):
        # text_encoder_3 false: make_edit builds this pipeline without text_encoder_3 / tokenizer_3
        assert (pipe.text_encoder_3 is not None) == c["text_encoder_3"], c["name"]
    cap = FlowCapture(pipe)
    try:
        with torch.no_grad(), rng_log() as rng:
            out = pipe(**kwargs)
    finally:
        cap.close()
    cap.t["unpacked"] = None
    if kind.startswith("flux"):
        cap.t["unpacked"] = pipe._unpack_latents(captured["latents"], c["height"], c["width"], pipe.vae_scale_factor)
    return out, captured["latents"].float().numpy(), steps_t, rng.summary(), cap.t


def debug_tensors(c, t):
    """(tensors name -> numpy float32, extra manifest fields) of one flow case."""
    import torch

    kind = c["kind"]
    tensors, info = {}, {}
    calls = t["transformer_calls"]
    first = calls[0]
    tensors["prompt_embeds"] = first["encoder_hidden_states"]  # transformer input, full batch
    tensors["pooled_prompt_embeds"] = first["pooled_projections"]
    info["transformer_timestep"] = [float(k["timestep"].flatten()[0]) for k in calls]
    info["transformer_batch"] = int(first["hidden_states"].shape[0])
    info["mu"] = t.get("set_timesteps_kwargs", {}).get("mu")
    info["sigmas_passed"] = t.get("sigmas_passed")
    info["scheduler_sigmas"] = t["scheduler_sigmas"]
    pl = t["prepare_latents"]
    if kind.startswith("flux"):
        latents, img_ids = pl
        tensors["init_latents"] = latents  # packed
        tensors["img_ids"] = first["img_ids"]
        tensors["txt_ids"] = first["txt_ids"]
        tensors["guidance"] = first["guidance"]
        tensors["latents_unpacked"] = t["unpacked"]
        assert torch.equal(first["img_ids"], img_ids)
        info["image_seq_len"] = int(latents.shape[1])
        info["guidance"] = float(first["guidance"][0])
        info["latents_packed_shape"] = list(latents.shape)
        info["latents_unpacked_shape"] = list(t["unpacked"].shape)
    else:
        tensors["init_latents"] = pl
        pe = t["encode_prompt"]
        # the T5 part of the positive prompt embeddings (what text_encoder_3 produced, or zeros)
        tensors["t5_prompt_embeds"] = pe[0][:, 77:, :]
    if "scale_noise" in t:
        sample, timestep, noise, r = t["scale_noise"]
        tensors["image_latents"] = sample  # (vae sample - shift) * scale, repeated to num_images
        tensors["noise"] = noise
        info["scale_noise_timestep"] = float(timestep.flatten()[0])
    return {k: v.detach().float().numpy() for k, v in tensors.items()}, info


def input_ids(pipe_dir, c):
    """The token ids each tokenizer gives the prompt (and the SD3 negative prompt) in this case."""
    from transformers import CLIPTokenizer, T5TokenizerFast

    keys = (["tokenizer", "tokenizer_2"] + (["tokenizer_3"] if c["text_encoder_3"] else [])
            if c["kind"].startswith("sd3") else ["tokenizer", "tokenizer_2"])
    res = {}
    texts = {"prompt": c["prompt"]}
    if uses_cfg(c):
        texts["negative_prompt"] = c["negative_prompt"] or ""
    for key in keys:
        d = os.path.join(pipe_dir, key)
        if os.path.exists(os.path.join(d, "tokenizer.json")):
            tok, n = T5TokenizerFast.from_pretrained(d), c["max_sequence_length"]
        else:
            tok, n = CLIPTokenizer.from_pretrained(d), 77
        for what, text in texts.items():
            res.setdefault(what, {})[key] = tok(text, padding="max_length", max_length=n, truncation=True).input_ids
    return res


def ort_classes():
    import diffusers
    from optimum.onnxruntime import ORTFluxPipeline, ORTStableDiffusion3Img2ImgPipeline, ORTStableDiffusion3Pipeline
    from optimum.onnxruntime.modeling_diffusion import ORTDiffusionPipeline

    class ORTFluxImg2ImgPipeline(ORTDiffusionPipeline, diffusers.FluxImg2ImgPipeline):
        main_input_name = "image"
        auto_model_class = diffusers.FluxImg2ImgPipeline

    return {
        "sd3_txt2img": ORTStableDiffusion3Pipeline,
        "sd3_img2img": ORTStableDiffusion3Img2ImgPipeline,
        "flux_txt2img": ORTFluxPipeline,
        "flux_img2img": ORTFluxImg2ImgPipeline,
    }


def package_without_t5(src, cache):
    """A copy of the SD3 package without text_encoder_3 / tokenizer_3 (model_index entries null), as a user
    would have it; the ORT parity check loads it."""
    dst = os.path.join(cache, "tiny-sd3-no-t5")
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("text_encoder_3", "tokenizer_3"))
    fp = os.path.join(dst, "model_index.json")
    with open(fp) as f:
        mi = json.load(f)
    mi["text_encoder_3"] = [None, None]
    mi["tokenizer_3"] = [None, None]
    mt.write_json(fp, mi)
    return dst


DESCRIPTION = (
    "SD3 (StableDiffusion3Pipeline / StableDiffusion3Img2ImgPipeline, tiny-sd3) and FLUX (FluxPipeline / "
    "FluxImg2ImgPipeline, tiny-flux), kinds sd3_txt2img, sd3_img2img, flux_txt2img, flux_img2img; scheduler "
    "flow_euler = FlowMatchEulerDiscreteScheduler with the package's config; width/height and max_sequence_length "
    "(T5 tokens) are passed explicitly (FluxImg2ImgPipeline otherwise resizes the image to 1024x1024); "
    "text_encoder_3 false = the SD3 pipeline without text_encoder_3 / tokenizer_3 (the T5 part of the prompt "
    "embeddings is zeros). FLOW FILES: latents = the final latents of the loop (SD3 [n,16,h,w]; FLUX PACKED "
    "[n, (h/2)*(w/2), 64], = output_type='latent'), tensors.latents_unpacked (FLUX) = _unpack_latents(latents) "
    "[n,16,h,w]; the png is vae_decode(unpacked / scaling_factor + shift_factor) (SD3 1.5305 / 0.0609, FLUX "
    "0.3611 / 0.1159); tensors.prompt_embeds / pooled_prompt_embeds = the transformer's encoder_hidden_states / "
    "pooled_projections inputs (SD3 with CFG: [negative..., positive...]); tensors.t5_prompt_embeds (SD3) = the T5 "
    "rows of the positive prompt embeddings [n, max_sequence_length, 16]; tensors.init_latents = prepare_latents' "
    "output (FLUX packed); tensors.image_latents / noise (img2img) = scheduler.scale_noise's sample ((VAE sample - "
    "shift_factor) * scaling_factor) and noise; tensors.img_ids / txt_ids / guidance (FLUX) = the transformer "
    "inputs. Fields: transformer_timestep = the timestep value given to the transformer at each call (SD3: t, "
    "0..1000; FLUX: t/1000); scheduler_sigmas = scheduler.sigmas after set_timesteps (with the trailing 0); "
    "sigmas_passed = the sigmas the pipeline gave set_timesteps (FLUX: numpy linspace(1, 1/steps, steps); SD3: "
    "none); mu = the dynamic-shift mu (FLUX: calculate_shift(image_seq_len) = image_seq_len * m + b, m = "
    "(1.15-0.5)/(4096-256), b = 0.5 - m*256; SD3: none); input_ids = each tokenizer's ids for the prompt "
    "(and the negative prompt where CFG is on). SD3 conditioning (pipeline_stable_diffusion_3.py:289-342, 420-525): "
    "CLIP hidden_states[-2] of te1 (4) and te2 (8) concatenated (12), zero-padded on the last dim to the T5 "
    "width (16), then concatenated with the T5 last_hidden_state along the sequence: [n, 77 + msl, 16]; pooled = "
    "cat(te1 text_embeds, te2 text_embeds) [n, 12]; a missing negative prompt is encoded as \"\" (not zeros). "
    "SD3 schedule: FlowMatchEuler init shifts sigmas once (sigma_min = shift(1/1000)); set_timesteps(steps) "
    "takes timesteps = linspace(1000*sigma_max, 1000*sigma_min, steps), sigmas = timesteps/1000 and shifts them "
    "AGAIN: s' = 3s / (1 + 2s); timesteps = s' * 1000. FLUX: sigmas = linspace(1, 1/steps, steps) -> "
    "exp(mu) / (exp(mu) + (1/s - 1)), timesteps = sigmas * 1000. Step: x + (sigma_next - sigma) * model_output "
    "(in float32). IMG2IMG (both): init_timestep = min(steps * strength, steps) (a FLOAT here, unlike SD's "
    "int()), t_start = int(max(steps - init_timestep, 0)), timesteps = timesteps[t_start:], begin_index t_start; "
    "RNG order: VAE sample of the image [1,16,h,w] (latent_dist.sample: mean + exp(0.5*logvar) * randn) then "
    "noise [n,16,h,w] (FLUX: unpacked shape, packed after scale_noise); latents = sigma * noise + (1 - sigma) * "
    "image_latents with sigma = sigmas[t_start]. FLUX txt2img RNG: one [n,16,h,w] draw, then packed "
    "(view(n,16,h/2,2,w/2,2).permute(0,2,4,1,3,5).reshape(n,(h/2)*(w/2),64)); SD3 txt2img: one [n,16,h,w] draw."
)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", choices=["models", "tokenizer"])
    ap.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "diffgentor-edit-pt"))
    ap.add_argument("--package", nargs="*", choices=list(FLOW_MODELS))
    a = ap.parse_args()
    mt.check_versions("make_flow.py")
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    steps = a.only or ["models", "tokenizer"]
    os.chdir(ROOT)
    if "models" in steps:
        make_models(a.cache, a.package)
    if "tokenizer" in steps:
        t5_goldens(os.path.join(OUT_SD3, "tokenizer_3"))


if __name__ == "__main__":
    main()
