#!/usr/bin/env python
"""Make the tiny image-EDITING test packages and their diffusers goldens.

Run from the repository root:   /work/venv/bin/python models/make_edit.py [--only STEP ...]
Steps (default: models images goldens parity, in this order):
  models     build tiny diffusers pipelines (temp dir), export them with optimum to
             models/tiny-sd-inpaint (StableDiffusionInpaintPipeline, UNet in_channels 9, --task inpainting) and
             models/tiny-ip2p (StableDiffusionInstructPix2PixPipeline, UNet in_channels 8, exported as a
             StableDiffusionPipeline with --task text-to-image, then model_index.json _class_name set back),
             models/tiny-lcm, models/tiny-sdxl and models/tiny-sdxl-refiner (StableDiffusionXLImg2ImgPipeline
             without text_encoder / tokenizer, requires_aesthetics_score, --task image-to-image),
             prune, write README.md with graph I/O; check every graph against PyTorch on random inputs
  images     tests/golden/edit/*.png synthetic inputs (RGB8 gradients + shapes, L masks, white = repaint)
  goldens    tests/golden/edit/: PyTorch outputs of StableDiffusionImg2ImgPipeline (tiny-sd, tiny-sd2-v),
             StableDiffusionInpaintPipeline (tiny-sd-inpaint: 9-channel UNet; tiny-sd: 4-channel latent blend),
             StableDiffusionInstructPix2PixPipeline (tiny-ip2p), a 3-stage progressive plan
             (txt2img -> latent 2x upscale -> img2img -> latent 2x upscale -> img2img), LCM, SDXL and the
             SDXL refiner (kind sdxl_refiner_img2img) + manifest.json
  parity     run optimum's ORT pipelines (ORTStableDiffusionImg2ImgPipeline, ORTStableDiffusionInpaintPipeline,
             ORTStableDiffusionPipeline, and an ORTDiffusionPipeline subclass for InstructPix2Pix, which optimum
             lacks) on the exported graphs with the goldens' inputs; prints max abs latent difference per case
             (not written anywhere)
The flow-matching packages models/tiny-sd3 and models/tiny-flux are defined in make_flow.py ('models' here remakes
them too; --package selects); their goldens (kinds sd3_txt2img, sd3_img2img, flux_txt2img, flux_img2img) and ORT
parity (ORTStableDiffusion3Pipeline, ORTStableDiffusion3Img2ImgPipeline, ORTFluxPipeline and an ORTDiffusionPipeline
subclass for FluxImg2ImgPipeline, which optimum lacks) are part of the steps below.
The PyTorch pipelines are kept in a cache dir (default /tmp/diffgentor-edit-pt). tiny-sd and tiny-sd2-v are
rebuilt there with make_tiny.py's own builders (same seeds) and checked against the committed ONNX graphs
before any golden is made, so the goldens belong to the committed packages.

Pinned (same as make_tiny.py): torch==2.15.0 diffusers==0.39.0 transformers==4.57.6 optimum-onnx==0.1.0.

Exported graph I/O (observed, opset 18, all float32 unless noted; also in each package's README.md):
  tiny-sd-inpaint
    text_encoder/model.onnx  input_ids int64 [batch, sequence_length]
                             -> last_hidden_state [batch, sequence_length, 32], pooler_output [batch, 32]
    unet/model.onnx          sample [batch, 9, h, w] (= scaled-model-input latents 4 ++ mask 1 ++ masked-image
                             latents 4, concatenated in that order on dim 1), timestep float32 [] (0-d),
                             encoder_hidden_states [batch, sequence_length, 32] -> out_sample [batch, 4, h, w]
    vae_decoder/model.onnx   latent_sample [batch, 4, h, w] -> sample [batch, 3, 8h, 8w]   (no scaling inside)
    vae_encoder/model.onnx   sample [batch, 3, H, W] -> latent_parameters [batch, 8, H/8, W/8] (mean ++ logvar)
  tiny-ip2p: the same except
    unet/model.onnx          sample [batch, 8, h, w] (= scaled-model-input latents 4 ++ image latents 4)
  tiny-lcm: text hidden 16; unet also takes timestep_cond float32 [batch, 32] (guidance w-embedding):
    unet/model.onnx          sample [batch, 4, h, w], timestep float32 [], encoder_hidden_states [batch, seq, 16],
                             timestep_cond [batch, 32] -> out_sample [batch, 4, h, w]
  tiny-sdxl:
    text_encoder/model.onnx  input_ids int64 [batch, seq] -> last_hidden_state [batch, seq, 16],
                             pooler_output [batch, 16], hidden_states.0..2 [batch, seq, 16]
    text_encoder_2/model.onnx input_ids int64 [batch, seq] -> text_embeds [batch, 16] (optimum labels its dims
                             [batch_size, sequence_length]; the real shape is [batch, projection_dim 16]),
                             last_hidden_state [batch, seq, 16], hidden_states.0..2 [batch, seq, 16]
    unet/model.onnx          sample [batch, 4, h, w], timestep float32 [], encoder_hidden_states [batch, seq, 32]
                             (te hidden_states.1 ++ te2 hidden_states.1), text_embeds [batch, 16],
                             time_ids [batch, 6] -> out_sample [batch, 4, h, w]
    vae_decoder / vae_encoder as above (scaling factor 0.13025 applied outside)
  tiny-sdxl-refiner: no text_encoder / tokenizer; text_encoder_2 and the VAE have tiny-sdxl's weights:
    text_encoder_2/model.onnx as in tiny-sdxl
    unet/model.onnx          sample [batch, 4, h, w], timestep float32 [], encoder_hidden_states [batch, seq, 16]
                             (te2 hidden_states.1 alone), text_embeds [batch, 16],
                             time_ids [batch, 5] (orig h, orig w, crop top, crop left, aesthetic score)
                             -> out_sample [batch, 4, h, w]
"""

import argparse
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
from sd_configs import SD15_SCHEDULER  # noqa: E402

OUT_INPAINT = os.path.join(ROOT, "models", "tiny-sd-inpaint")
OUT_IP2P = os.path.join(ROOT, "models", "tiny-ip2p")
OUT_LCM = os.path.join(ROOT, "models", "tiny-lcm")
OUT_SDXL = os.path.join(ROOT, "models", "tiny-sdxl")
OUT_SDXL_REFINER = os.path.join(ROOT, "models", "tiny-sdxl-refiner")
GOLD = os.path.join(ROOT, "tests", "golden", "edit")
PKG = {
    "tiny-sd": mt.OUT_SD,
    "tiny-sd2-v": mt.OUT_SD2,
    "tiny-sd-inpaint": OUT_INPAINT,
    "tiny-ip2p": OUT_IP2P,
    "tiny-lcm": OUT_LCM,
    "tiny-sdxl": OUT_SDXL,
    "tiny-sdxl-refiner": OUT_SDXL_REFINER,
    "tiny-sd3": os.path.join(ROOT, "models", "tiny-sd3"),
    "tiny-flux": os.path.join(ROOT, "models", "tiny-flux"),
}
FLOW_KINDS = ("sd3_txt2img", "sd3_img2img", "flux_txt2img", "flux_img2img")


def _flow():
    import make_flow  # imported lazily: make_flow imports this module

    return make_flow


def _schedulers():
    return {**mt.SCHEDULERS, **_flow().SCHEDULERS}

# timbrooks/instruct-pix2pix scheduler/scheduler_config.json (keys it omits, e.g. timestep_spacing, take
# EulerAncestralDiscreteScheduler's defaults: timestep_spacing "linspace").
IP2P_SCHEDULER = {
    "_class_name": "EulerAncestralDiscreteScheduler",
    "_diffusers_version": "0.13.0.dev0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}

# SimianLuo/LCM_Dreamshaper_v7 scheduler/scheduler_config.json.
LCM_SCHEDULER = {
    "_class_name": "LCMScheduler",
    "_diffusers_version": "0.22.0.dev0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "clip_sample_range": 1.0,
    "dynamic_thresholding_ratio": 0.995,
    "num_train_timesteps": 1000,
    "original_inference_steps": 50,
    "prediction_type": "epsilon",
    "rescale_betas_zero_snr": False,
    "sample_max_value": 1.0,
    "set_alpha_to_one": True,
    "steps_offset": 1,
    "thresholding": False,
    "timestep_scaling": 10.0,
    "timestep_spacing": "leading",
    "trained_betas": None,
}
# stabilityai/stable-diffusion-xl-base-1.0 scheduler/scheduler_config.json.
SDXL_SCHEDULER = {
    "_class_name": "EulerDiscreteScheduler",
    "_diffusers_version": "0.19.0.dev0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "use_karras_sigmas": False,
}
# stabilityai/stable-diffusion-xl-refiner-1.0 scheduler/scheduler_config.json: the same keys and values as the
# base's (EulerDiscreteScheduler, diffusers 0.19.0.dev0, leading spacing, steps_offset 1).
SDXL_REFINER_SCHEDULER = dict(SDXL_SCHEDULER)

PROMPT = mt.PROMPT
NEG = mt.NEG
IP2P_PROMPT = "turn the sky into a sunset"


# --------------------------------------------------------------------------------------------
# model definitions (tiny: <= 1.5 MB per exported package)
# --------------------------------------------------------------------------------------------

def _text_encoder(seed, hidden=32, heads=4, act="quick_gelu", projection_dim=None):
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    cfg = CLIPTextConfig(
        vocab_size=1000,
        hidden_size=hidden,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=heads,
        max_position_embeddings=77,
        layer_norm_eps=1e-5,
        hidden_act=act,
        bos_token_id=998,
        eos_token_id=999,
        pad_token_id=999,
        **({"projection_dim": projection_dim} if projection_dim else {}),
    )
    return CLIPTextModelWithProjection(cfg) if projection_dim else CLIPTextModel(cfg)


def _vae(seed, channels=(8, 16, 16, 16), groups=8, scaling_factor=0.18215, **extra):
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=channels,  # 4 levels -> factor 8 like real SD
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=groups,
        sample_size=64,
        scaling_factor=scaling_factor,
        **extra,
    )


def _unet(seed, in_channels, channels=(16, 16), groups=8, cross_attention_dim=32, attention_head_dim=8,
          down=("DownBlock2D", "CrossAttnDownBlock2D"), up=("CrossAttnUpBlock2D", "UpBlock2D"), **extra):
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=8,  # latent 8x8 -> 64x64 image
        in_channels=in_channels,
        out_channels=4,
        block_out_channels=channels,
        layers_per_block=1,
        norm_num_groups=groups,
        down_block_types=down,
        up_block_types=up,
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=attention_head_dim,
        **extra,
    )


def _tok(toks, key="tokenizer"):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(toks[key])


def build_inpaint(toks):
    """SD 1.5-inpainting-style: 9-channel UNet, epsilon, PNDM (the SD 1.5 scheduler config), VAE factor 8."""
    from diffusers import PNDMScheduler, StableDiffusionInpaintPipeline

    return StableDiffusionInpaintPipeline(
        vae=_vae(10), text_encoder=_text_encoder(10), tokenizer=_tok(toks),
        unet=_unet(10, 9), scheduler=PNDMScheduler.from_config(dict(SD15_SCHEDULER)),
        safety_checker=None, feature_extractor=None, image_encoder=None, requires_safety_checker=False,
    )


def build_ip2p(toks):
    """InstructPix2Pix-style: 8-channel UNet, epsilon, EulerAncestral (the real instruct-pix2pix config)."""
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionInstructPix2PixPipeline

    return StableDiffusionInstructPix2PixPipeline(
        vae=_vae(20), text_encoder=_text_encoder(20), tokenizer=_tok(toks),
        unet=_unet(20, 8), scheduler=EulerAncestralDiscreteScheduler.from_config(dict(IP2P_SCHEDULER)),
        safety_checker=None, feature_extractor=None, image_encoder=None, requires_safety_checker=False,
    )


NO_ATTN_DOWN, NO_ATTN_UP = ("DownBlock2D", "DownBlock2D"), ("UpBlock2D", "UpBlock2D")


def build_lcm(toks):
    """LCM-distilled SD 1.5 style: UNet with time_cond_proj_dim 32 (guidance w-embedding), LCMScheduler."""
    from diffusers import LatentConsistencyModelPipeline, LCMScheduler

    return LatentConsistencyModelPipeline(
        vae=_vae(30, channels=(8, 8, 8, 8), groups=4, mid_block_add_attention=False),
        text_encoder=_text_encoder(30, hidden=16),
        tokenizer=_tok(toks),
        # cross-attention only in the mid block: at this size the graph's node overhead, not weights, dominates
        unet=_unet(30, 4, channels=(8, 16), groups=4, cross_attention_dim=16, down=NO_ATTN_DOWN, up=NO_ATTN_UP,
                   time_cond_proj_dim=32),
        scheduler=LCMScheduler.from_config(dict(LCM_SCHEDULER)),
        safety_checker=None, feature_extractor=None, image_encoder=None, requires_safety_checker=False,
    )


def _sdxl_vae():
    return _vae(40, channels=(8, 8, 8, 8), groups=4, scaling_factor=0.13025, force_upcast=True,
                mid_block_add_attention=False)


def _sdxl_text_encoder_2():
    return _text_encoder(41, hidden=16, act="gelu", projection_dim=16)


def build_sdxl(toks):
    """SDXL-base style: CLIPTextModel + CLIPTextModelWithProjection (penultimate hidden states concatenated,
    pooled text_embeds of encoder 2), UNet with addition_embed_type text_time, VAE scaling 0.13025, Euler."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    return StableDiffusionXLPipeline(
        vae=_sdxl_vae(),
        text_encoder=_text_encoder(40, hidden=16),
        text_encoder_2=_sdxl_text_encoder_2(),
        tokenizer=_tok(toks), tokenizer_2=_tok(toks, "tokenizer_2"),
        unet=_unet(40, 4, channels=(8, 16), groups=4, cross_attention_dim=32, attention_head_dim=(2, 4),
                   down=NO_ATTN_DOWN, up=NO_ATTN_UP,
                   use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
                   projection_class_embeddings_input_dim=6 * 8 + 16),
        scheduler=EulerDiscreteScheduler.from_config(dict(SDXL_SCHEDULER)),
        image_encoder=None, feature_extractor=None, force_zeros_for_empty_prompt=True, add_watermarker=False,
    )


def build_sdxl_refiner(toks):
    """SDXL-refiner style (stabilityai/stable-diffusion-xl-refiner-1.0): no text_encoder / tokenizer; the UNet's
    cross_attention_dim is text_encoder_2's hidden size and its text_time embedding takes 5 time ids (original
    size, crop top-left, aesthetic score): projection_class_embeddings_input_dim = 5 * 8 + 16.
    requires_aesthetics_score true, force_zeros_for_empty_prompt false (model_index of the real refiner).
    text_encoder_2 and the VAE are tiny-sdxl's (same builders and seeds, so the same weights), as the real
    refiner shares OpenCLIP ViT-bigG and the SDXL VAE with the base."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLImg2ImgPipeline

    return StableDiffusionXLImg2ImgPipeline(
        vae=_sdxl_vae(),
        text_encoder=None,
        text_encoder_2=_sdxl_text_encoder_2(),
        tokenizer=None, tokenizer_2=_tok(toks, "tokenizer_2"),
        unet=_unet(70, 4, channels=(8, 16), groups=4, cross_attention_dim=16, attention_head_dim=(2, 4),
                   down=NO_ATTN_DOWN, up=NO_ATTN_UP,
                   use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
                   projection_class_embeddings_input_dim=5 * 8 + 16),
        scheduler=EulerDiscreteScheduler.from_config(dict(SDXL_REFINER_SCHEDULER)),
        image_encoder=None, feature_extractor=None, requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=False, add_watermarker=False,
    )


NEW_MODELS = {
    # name: builder, out dir, optimum task, exported-as class (None: itself), scheduler config,
    #       tokenizer folders and their pad tokens
    "tiny-sd-inpaint": dict(builder=build_inpaint, out=OUT_INPAINT, task="inpainting", export_as=None,
                            sched=SD15_SCHEDULER, toks={"tokenizer": "<|endoftext|>"}),
    "tiny-ip2p": dict(builder=build_ip2p, out=OUT_IP2P, task="text-to-image", export_as="StableDiffusionPipeline",
                      sched=IP2P_SCHEDULER, toks={"tokenizer": "<|endoftext|>"}),
    "tiny-lcm": dict(builder=build_lcm, out=OUT_LCM, task="text-to-image", export_as=None,
                     sched=LCM_SCHEDULER, toks={"tokenizer": "<|endoftext|>"}),
    "tiny-sdxl": dict(builder=build_sdxl, out=OUT_SDXL, task="text-to-image", export_as=None,
                      sched=SDXL_SCHEDULER, toks={"tokenizer": "<|endoftext|>", "tokenizer_2": "!"}),
    "tiny-sdxl-refiner": dict(builder=build_sdxl_refiner, out=OUT_SDXL_REFINER, task="image-to-image",
                              export_as=None, sched=SDXL_REFINER_SCHEDULER, toks={"tokenizer_2": "!"}),
}

KEEP_FILES = set(mt.KEEP_FILES)
for _f in ("config.json", "model.onnx"):
    KEEP_FILES.add(f"text_encoder_2/{_f}")
for _f in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
    KEEP_FILES.add(f"tokenizer_2/{_f}")
COMPONENTS = ("text_encoder", "text_encoder_2", "unet", "vae_decoder", "vae_encoder")


def _set_class_name(d, name):
    fp = os.path.join(d, "model_index.json")
    with open(fp) as f:
        mi = json.load(f)
    mi["_class_name"] = name
    mt.write_json(fp, mi)


def export_package(name, src, out, m, tok_dirs, cache):
    """optimum-cli export of the saved pipeline `src`, pruned to KEEP_FILES, into `out`."""
    with open(os.path.join(src, "model_index.json")) as f:
        mi = json.load(f)
    class_name = mi["_class_name"]
    if m["export_as"]:
        alias = os.path.join(cache, f"_as-{name}")
        shutil.rmtree(alias, ignore_errors=True)
        shutil.copytree(src, alias)
        _set_class_name(alias, m["export_as"])
        src = alias
    tmp_out = os.path.join(cache, f"_onnx-{name}")
    shutil.rmtree(tmp_out, ignore_errors=True)
    cli = os.path.join(os.path.dirname(sys.executable), "optimum-cli")
    subprocess.run([cli, "export", "onnx", "--model", src, "--task", m["task"], tmp_out], check=True)
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    # a component saved as [null, null] (the refiner's text_encoder / tokenizer) is absent
    keep = {k for k in KEEP_FILES
            if k == "model_index.json"
            or (mi.get("vae" if k.startswith("vae_") else k.split("/")[0]) or [None])[0] is not None}
    for root, _, files in os.walk(tmp_out):
        for fn in files:
            rel = os.path.relpath(os.path.join(root, fn), tmp_out).replace(os.sep, "/")
            if rel in keep:
                dst = os.path.join(out, rel)
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                shutil.copyfile(os.path.join(root, fn), dst)
            else:
                print(f"[{name}] dropping {rel}")
    mt.write_json(os.path.join(out, "scheduler", "scheduler_config.json"), m["sched"])
    for key, tok_dir in tok_dirs.items():
        shutil.rmtree(os.path.join(out, key), ignore_errors=True)
        shutil.copytree(tok_dir, os.path.join(out, key))
    for rel in keep:
        if rel.endswith(".json") and not rel.startswith("tokenizer"):
            fp = os.path.join(out, rel)
            if os.path.exists(fp):
                with open(fp) as f:
                    j = json.load(f)
                if j.pop("_name_or_path", None) is not None:
                    mt.write_json(fp, j)
    _set_class_name(out, class_name)
    keep |= {"vae_encoder/config.json", "vae_encoder/model.onnx"}  # every package must have the encoder
    missing = [k for k in keep if not os.path.exists(os.path.join(out, k))]
    if missing:
        sys.exit(f"[{name}] export lacks {missing}")


README_NOTES = {
    "tiny-sd-inpaint": [
        "SD 1.x inpainting layout: the UNet's `sample` has 9 channels = the scheduler-scaled latents (4), the",
        "mask at latent resolution (1; 1 = repaint) and the VAE latents of the masked image (4, already multiplied",
        "by the scaling factor 0.18215), concatenated in that order. scheduler/scheduler_config.json is the real",
        "SD 1.5 config (PNDM) verbatim.",
    ],
    "tiny-ip2p": [
        "InstructPix2Pix layout: the UNet's `sample` has 8 channels = the scheduler-scaled latents (4) and the",
        "image latents (4: the VAE encoder's mean, NOT multiplied by the scaling factor; zeros for the",
        "unconditional-image batch). With classifier-free guidance the UNet batch is [text, uncond, uncond]",
        "prompts with [image, image, zeros] image latents. scheduler/scheduler_config.json is the real",
        "timbrooks/instruct-pix2pix config (EulerAncestralDiscreteScheduler; no timestep_spacing key, so the",
        "class default \"linspace\" applies).",
    ],
    "tiny-lcm": [
        "Latent Consistency Model layout (SimianLuo/LCM_Dreamshaper_v7 style): the UNet has `time_cond_proj_dim`",
        "32 and takes `timestep_cond` [batch, 32] = the guidance-scale embedding of w = guidance_scale - 1",
        "(LatentConsistencyModelPipeline.get_guidance_scale_embedding: w*1000, sinusoidal, [sin | cos], 16 each);",
        "there is no classifier-free-guidance batch. The scheduler is LCMScheduler (config of LCM_Dreamshaper_v7);",
        "the image is decoded from the scheduler's `denoised` output of the last step, not from `prev_sample`.",
        "VAE scaling factor 0.18215. The UNet has cross-attention only in its mid block and the VAE has no",
        "mid-block attention (size budget).",
    ],
    "tiny-sdxl": [
        "SDXL-base layout: two text encoders; the UNet's `encoder_hidden_states` is the concatenation (last dim)",
        "of `hidden_states.1` (the penultimate layer, hidden_states[-2]) of text_encoder (16) and of",
        "text_encoder_2 (16); `text_embeds` is text_encoder_2's pooled, projected `text_embeds` [batch, 16];",
        "`time_ids` [batch, 6] = (original_height, original_width, crop_top, crop_left, target_height,",
        "target_width) as float32. tokenizer pads with <|endoftext|>, tokenizer_2 with \"!\" (id 0) like the real",
        "SDXL. With force_zeros_for_empty_prompt (true here, as in SDXL base) and no negative prompt, the",
        "unconditional embeddings and pooled embeddings are zeros. VAE scaling factor 0.13025 (force_upcast true).",
        "optimum labels text_encoder_2's `text_embeds` dims [batch_size, sequence_length]; the real shape is",
        "[batch, 16]. hidden_states.0 is the embedding output, hidden_states.2 the last layer (before the final",
        "layer norm). The UNet has cross-attention only in its mid block and the VAE has no mid-block attention",
        "(size budget: at this scale the graphs' node overhead, not the weights, dominates the file size).",
        "scheduler/scheduler_config.json is stabilityai/stable-diffusion-xl-base-1.0's (EulerDiscreteScheduler,",
        "timestep_spacing leading, steps_offset 1).",
    ],
    "tiny-sdxl-refiner": [
        "SDXL-refiner layout (stabilityai/stable-diffusion-xl-refiner-1.0): model_index.json has `text_encoder` and",
        "`tokenizer` [null, null] (absent), `requires_aesthetics_score: true`, `force_zeros_for_empty_prompt:",
        "false`. text_encoder_2, tokenizer_2, the VAE graphs and the scheduler config are tiny-sdxl's (same",
        "weights; the files are byte-identical), as the real refiner shares them with the base. Only tokenizer_2",
        "(pads with \"!\", id 0, like the real SDXL) / text_encoder_2 encode, and they get `prompt` (prompt_2 is",
        "ignored when text_encoder is absent). The UNet's `encoder_hidden_states` [batch, 77, 16] is text_encoder_2's",
        "`hidden_states.1` (the penultimate layer, hidden_states[-2]) ALONE (no concatenation);",
        "`text_embeds` [batch, 16] is text_encoder_2's pooled, projected `text_embeds`; `time_ids` [batch, 5] =",
        "(original_height, original_width, crop_top, crop_left, aesthetic_score) as float32, i.e. the 8x latent",
        "size of the input image, 0, 0 and aesthetic_score (default 6.0) for the prompt rows,",
        "negative_aesthetic_score (default 2.5) for the negative rows (no target size). The UNet's",
        "`projection_class_embeddings_input_dim` is 5 * addition_time_embed_dim 8 + 16 = 56.",
        "With force_zeros_for_empty_prompt false, classifier-free guidance without a negative prompt ENCODES the",
        "empty string \"\" (bos, eos, then \"!\" padding) with text_encoder_2 for the unconditional embeddings and",
        "pooled embeddings (no zeros). VAE scaling factor 0.13025 (force_upcast true). optimum labels",
        "text_encoder_2's `text_embeds` dims [batch_size, sequence_length]; the real shape is [batch, 16].",
        "The UNet has cross-attention only in its mid block and the VAE has no mid-block attention (size budget).",
        "scheduler/scheduler_config.json is stabilityai/stable-diffusion-xl-refiner-1.0's (EulerDiscreteScheduler,",
        "timestep_spacing leading, steps_offset 1; the same as the base's).",
    ],
}


def write_readme(name, out):
    with open(os.path.join(out, "model_index.json")) as f:
        mi = json.load(f)
    m = NEW_MODELS[name]
    export_as = m["export_as"]
    lines = [
        f"# {name}",
        "",
        "Random-weight tiny package made by `models/make_edit.py` (do not edit by hand; rerun the script).",
        f"Exported with optimum-onnx 0.1.0 `--task {m['task']}` from a diffusers {mi.get('_class_name')} saved",
        f"with diffusers {mi.get('_diffusers_version')}"
        + (f" (exported under the class name {export_as}, which has the same components; model_index.json's"
           f" `_class_name` is set back to {mi.get('_class_name')})." if export_as else "."),
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
    lines += [""] + README_NOTES[name] + [
        "Keys the scheduler config omits take the scheduler class's defaults in diffusers.",
        "",
        "Tokenizers: the 1000-token truncated CLIP BPE (models/clip_tokenizer.py; bos 998, eos 999; pad = eos",
        "<|endoftext|> unless noted above).",
        "Goldens: tests/golden/edit/manifest.json.",
        "",
    ]
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write("\n".join(lines))


def check_graphs(pt, out, tag):
    """Random-input check of each exported graph against the PyTorch module it came from."""
    import numpy as np
    import onnxruntime as ort
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    def sess(comp):
        return ort.InferenceSession(os.path.join(out, comp, "model.onnx"), providers=["CPUExecutionProvider"])

    g = np.random.default_rng(0)
    worst = {}
    for comp in ("text_encoder", "text_encoder_2"):
        if not os.path.isdir(os.path.join(pt, comp)):
            continue
        with open(os.path.join(pt, comp, "config.json")) as f:
            arch = json.load(f)["architectures"][0]
        cls = CLIPTextModelWithProjection if arch == "CLIPTextModelWithProjection" else CLIPTextModel
        te = cls.from_pretrained(os.path.join(pt, comp)).eval()
        ids = g.integers(0, 1000, (2, 77)).astype(np.int64)
        with torch.no_grad():
            r = te(torch.from_numpy(ids), output_hidden_states=True)
        refs = {k: v.numpy() for k, v in r.items() if k != "hidden_states"}
        refs.update({f"hidden_states.{i}": h.numpy() for i, h in enumerate(r.hidden_states)})
        s = sess(comp)
        got = dict(zip([o.name for o in s.get_outputs()], s.run(None, {"input_ids": ids})))
        for k, v in got.items():
            worst[f"{comp}.{k}"] = float(np.abs(v - refs[k]).max())
    unet = UNet2DConditionModel.from_pretrained(os.path.join(pt, "unet")).eval()
    uc = unet.config
    feed = {
        "sample": g.standard_normal((2, uc.in_channels, 8, 12)).astype(np.float32),
        "timestep": np.array(501.0, dtype=np.float32),
        "encoder_hidden_states": g.standard_normal((2, 77, uc.cross_attention_dim)).astype(np.float32),
    }
    kw = {}
    if uc.time_cond_proj_dim:
        feed["timestep_cond"] = g.standard_normal((2, uc.time_cond_proj_dim)).astype(np.float32)
        kw["timestep_cond"] = torch.from_numpy(feed["timestep_cond"])
    if uc.addition_embed_type == "text_time":
        with open(os.path.join(pt, "model_index.json")) as f:
            aesthetic = json.load(f).get("requires_aesthetics_score", False)
        ids = [64, 96, 0, 0, 6.0] if aesthetic else [64, 96, 0, 0, 64, 96]
        n_txt = uc.projection_class_embeddings_input_dim - len(ids) * uc.addition_time_embed_dim
        feed["text_embeds"] = g.standard_normal((2, n_txt)).astype(np.float32)
        feed["time_ids"] = np.array([ids] * 2, dtype=np.float32)
        kw["added_cond_kwargs"] = {"text_embeds": torch.from_numpy(feed["text_embeds"]),
                                   "time_ids": torch.from_numpy(feed["time_ids"])}
    with torch.no_grad():
        ref = unet(torch.from_numpy(feed["sample"]), torch.from_numpy(feed["timestep"]),
                   encoder_hidden_states=torch.from_numpy(feed["encoder_hidden_states"]), **kw)[0].numpy()
    s = sess("unet")
    assert sorted(i.name for i in s.get_inputs()) == sorted(feed), [i.name for i in s.get_inputs()]
    worst["unet"] = float(np.abs(s.run(None, feed)[0] - ref).max())
    vae = AutoencoderKL.from_pretrained(os.path.join(pt, "vae")).eval()
    img = g.uniform(-1, 1, (1, 3, 64, 96)).astype(np.float32)
    lat = g.standard_normal((1, 4, 8, 12)).astype(np.float32)
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
    for name, m in NEW_MODELS.items():
        if names and name not in names:
            continue
        tok_dirs = {}
        for key, pad in m["toks"].items():
            tok_dirs[key] = os.path.join(cache, f"_{key}-{name}")
            shutil.rmtree(tok_dirs[key], ignore_errors=True)
            write_truncated(tok_dirs[key], vocab_size=1000, pad_token=pad)
        pipe = m["builder"](tok_dirs)
        d = os.path.join(cache, name)
        shutil.rmtree(d, ignore_errors=True)
        pipe.save_pretrained(d, safe_serialization=True)
        mt.write_json(os.path.join(d, "scheduler", "scheduler_config.json"), m["sched"])
        for key, tok_dir in tok_dirs.items():
            shutil.rmtree(os.path.join(d, key))
            shutil.copytree(tok_dir, os.path.join(d, key))
        export_package(name, d, m["out"], m, tok_dirs, cache)
        write_readme(name, m["out"])
        check_graphs(d, m["out"], name)


def base_pt(cache, name):
    """PyTorch copy of a committed package: the new ones come from 'models'; tiny-sd / tiny-sd2-v are rebuilt
    with make_tiny.py's builders (deterministic) and checked against the committed graphs."""
    d = os.path.join(cache, name)
    if name in NEW_MODELS or name in _flow().FLOW_MODELS:
        if not os.path.isdir(d):
            sys.exit(f"{d} missing: run the 'models' step first")
        return d
    if not os.path.isdir(d):
        builder, out, _, sched_cfg = mt.MODELS[name]
        tok = os.path.join(out, "tokenizer")
        pipe = builder(tok)
        tmp = d + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        pipe.save_pretrained(tmp, safe_serialization=True)
        mt.write_json(os.path.join(tmp, "scheduler", "scheduler_config.json"), sched_cfg)
        shutil.rmtree(os.path.join(tmp, "tokenizer"))
        shutil.copytree(tok, os.path.join(tmp, "tokenizer"))
        check_graphs(tmp, out, name)
        os.rename(tmp, d)
    return d


# --------------------------------------------------------------------------------------------
# input images
# --------------------------------------------------------------------------------------------

IMAGES = {
    # file: (kind, width, height)
    "image_64x64.png": ("image", 64, 64),
    "image_96x64.png": ("image", 96, 64),
    "mask_64x64.png": ("mask", 64, 64),
    "mask_96x64_soft.png": ("soft_mask", 96, 64),
}


def synth(kind, w, h):
    """Deterministic synthetic inputs: integer arithmetic and PIL's integer rasteriser only."""
    import numpy as np
    from PIL import Image, ImageDraw

    if kind == "image":
        x = np.arange(w, dtype=np.int64)[None, :]
        y = np.arange(h, dtype=np.int64)[:, None]
        r = (x * 255) // (w - 1) + 0 * y
        g = (y * 255) // (h - 1) + 0 * x
        b = ((x + y) * 255) // (w + h - 2)
        a = np.stack([r, g, 255 - b], axis=-1).astype(np.uint8)
        im = Image.fromarray(a, "RGB")
        d = ImageDraw.Draw(im)
        d.rectangle([w // 8, h // 6, w // 2, h // 2], fill=(230, 40, 40))
        d.ellipse([w // 2, h // 2 - 4, w - 5, h - 3], fill=(30, 200, 60))
        d.polygon([(w // 5, h - 4), (w // 3, h // 2 + 6), (w // 2 - 2, h - 6)], fill=(250, 250, 60))
        d.line([(0, h // 3), (w - 1, h // 4)], fill=(20, 20, 20), width=2)
        return im
    im = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(im)
    if kind == "mask":
        # edges not on the 8-pixel latent grid
        d.rectangle([19, 11, 44, 38], fill=255)
        d.ellipse([36, 34, 60, 58], fill=255)
        return im
    # soft mask: a white ellipse and a horizontal ramp band 0..255 (binarised at >= 128 by diffusers)
    d.ellipse([10, 6, 50, 40], fill=255)
    a = np.asarray(im).copy()
    ramp = (np.arange(w, dtype=np.int64) * 255) // (w - 1)
    a[44:60, :] = ramp[None, :].astype(np.uint8)
    return Image.fromarray(a, "L")


def make_images():
    os.makedirs(GOLD, exist_ok=True)
    for fn, (kind, w, h) in IMAGES.items():
        synth(kind, w, h).save(os.path.join(GOLD, fn))
        print(f"image {fn} {w}x{h}")


def load_image(fn):
    from PIL import Image

    im = Image.open(os.path.join(GOLD, fn))
    im.load()
    return im


# --------------------------------------------------------------------------------------------
# golden cases
# --------------------------------------------------------------------------------------------

PIPE_CLASS = {
    "img2img": "StableDiffusionImg2ImgPipeline",
    "inpaint": "StableDiffusionInpaintPipeline",
    "ip2p": "StableDiffusionInstructPix2PixPipeline",
    "txt2img": "StableDiffusionPipeline",
    "lcm": "LatentConsistencyModelPipeline",
    "sdxl_txt2img": "StableDiffusionXLPipeline",
    "sdxl_img2img": "StableDiffusionXLImg2ImgPipeline",
    "sdxl_refiner_img2img": "StableDiffusionXLImg2ImgPipeline",
    "sd3_txt2img": "StableDiffusion3Pipeline",
    "sd3_img2img": "StableDiffusion3Img2ImgPipeline",
    "flux_txt2img": "FluxPipeline",
    "flux_img2img": "FluxImg2ImgPipeline",
}
CALLBACK_TENSORS = {
    # kind: tensors the step-end callback reads (the first is the final-latents source)
    "lcm": ["denoised", "latents", "w_embedding"],
    "sdxl_txt2img": ["latents", "add_text_embeds", "add_time_ids"],
    "sdxl_img2img": ["latents", "add_text_embeds", "add_time_ids"],
    "sdxl_refiner_img2img": ["latents", "add_text_embeds", "add_time_ids", "prompt_embeds"],
}


def golden_cases():
    C = []
    scheds = _schedulers()

    def case(name, kind, model, sched, steps=8, guidance=7.5, seed=0, width=64, height=64, num_images=1,
             eta=0.0, prompt=PROMPT, neg=NEG, strength=None, image=None, mask=None, image_guidance=None,
             latents_in=None, stage=None, **extra):
        C.append(dict(name=name, kind=kind, model=model, pipeline=PIPE_CLASS[kind], scheduler=sched,
                      scheduler_overrides=scheds[sched][1], prompt=prompt, negative_prompt=neg, steps=steps,
                      guidance_scale=guidance, image_guidance_scale=image_guidance, strength=strength, seed=seed,
                      width=width, height=height, num_images=num_images, eta=eta, image=image, mask_image=mask,
                      image_latents_in=latents_in, progressive=stage, **extra))

    im64, im96 = "image_64x64.png", "image_96x64.png"
    m64, m96 = "mask_64x64.png", "mask_96x64_soft.png"
    # 1. img2img
    case("i2i_pndm_s075", "img2img", "tiny-sd", "pndm", steps=8, seed=400, strength=0.75, image=im64)
    case("i2i_euler_a_s05", "img2img", "tiny-sd", "euler_a", steps=10, seed=401, strength=0.5, image=im64)
    case("i2i_ddim_s1", "img2img", "tiny-sd", "ddim", steps=8, seed=402, strength=1.0, image=im64)
    case("i2i_dpmpp_2m_s03", "img2img", "tiny-sd", "dpmpp_2m", steps=10, seed=403, strength=0.3, image=im64)
    case("i2i_heun_s06", "img2img", "tiny-sd", "heun", steps=8, seed=404, strength=0.6, image=im64)
    case("i2i_euler_a_x2", "img2img", "tiny-sd", "euler_a", steps=8, seed=405, strength=0.6, image=im64,
         num_images=2)
    case("i2i_ddim_eta1_s08", "img2img", "tiny-sd", "ddim", steps=10, seed=406, strength=0.8, image=im64, eta=1.0)
    case("i2i_pndm_nocfg_s05", "img2img", "tiny-sd", "pndm", steps=8, seed=407, strength=0.5, image=im64,
         guidance=1.0, neg=None)
    case("i2i_sd2v_euler_96x64", "img2img", "tiny-sd2-v", "euler", steps=10, seed=408, strength=0.7, image=im96,
         width=96, height=64)
    # 2. inpaint, 9-channel UNet
    for sched, s0 in (("pndm", 500), ("euler_a", 502)):
        for i, strength in enumerate((1.0, 0.75)):
            tag = "s1" if strength == 1.0 else "s075"
            case(f"inpaint9_{sched}_{tag}", "inpaint", "tiny-sd-inpaint", sched, steps=8, seed=s0 + i,
                 strength=strength, image=im64, mask=m64)
    case("inpaint9_ddim_x2_96x64", "inpaint", "tiny-sd-inpaint", "ddim", steps=8, seed=504, strength=1.0,
         image=im96, mask=m96, width=96, height=64, num_images=2)
    # 3. inpaint, 4-channel UNet: latent blend
    for sched, s0 in (("ddim", 600), ("euler", 602)):
        for i, strength in enumerate((1.0, 0.6)):
            tag = "s1" if strength == 1.0 else "s06"
            case(f"blend_{sched}_{tag}", "inpaint", "tiny-sd", sched, steps=8, seed=s0 + i,
                 strength=strength, image=im64, mask=m64)
    case("blend_sd2v_euler_a_96x64_s08", "inpaint", "tiny-sd2-v", "euler_a", steps=8, seed=604, strength=0.8,
         image=im96, mask=m96, width=96, height=64)
    # 4. InstructPix2Pix
    ip = dict(prompt=IP2P_PROMPT, image=im64)
    case("ip2p_euler_a", "ip2p", "tiny-ip2p", "euler_a", steps=10, seed=700, image_guidance=1.5, **ip)
    case("ip2p_ddim", "ip2p", "tiny-ip2p", "ddim", steps=8, seed=701, image_guidance=1.5, **ip)
    case("ip2p_euler_a_nocfg", "ip2p", "tiny-ip2p", "euler_a", steps=8, seed=702, guidance=1.0, neg=None,
         image_guidance=1.5, **ip)
    case("ip2p_euler_a_igs08", "ip2p", "tiny-ip2p", "euler_a", steps=8, seed=703, guidance=7.5,
         image_guidance=0.8, **ip)
    case("ip2p_euler_x2_96x64", "ip2p", "tiny-ip2p", "euler", steps=8, seed=704, guidance=5.0, image_guidance=1.2,
         prompt=IP2P_PROMPT, image=im96, width=96, height=64, num_images=2)
    # 5. progressive: 176x224 txt2img -> 2x nearest-exact -> img2img -> 2x bilinear -> img2img
    case("prog_stage1", "txt2img", "tiny-sd", "euler_a", steps=6, seed=800, width=176, height=224,
         stage=dict(stage=1))
    case("prog_stage2", "img2img", "tiny-sd", "euler", steps=8, seed=801, guidance=3.0, strength=0.7,
         width=352, height=448, latents_in="prog_stage2.input_latents.npy",
         stage=dict(stage=2, input_from="prog_stage1",
                    upscale="torch.nn.functional.interpolate(latents, scale_factor=2, mode='nearest-exact')"))
    case("prog_stage3", "img2img", "tiny-sd", "dpmpp_2m", steps=8, seed=802, guidance=3.0, strength=0.6,
         width=704, height=896, latents_in="prog_stage3.input_latents.npy",
         stage=dict(stage=3, input_from="prog_stage2",
                    upscale="torch.nn.functional.interpolate(latents, scale_factor=2, mode='bilinear', "
                            "align_corners=False)"))
    # 6. LCM (w-embedding, no CFG batch) and SDXL
    case("lcm_4", "lcm", "tiny-lcm", "lcm", steps=4, guidance=8.0, seed=900, neg=None)
    case("lcm_4_x2_96x64", "lcm", "tiny-lcm", "lcm", steps=4, guidance=8.0, seed=901, neg=None, width=96, height=64,
         num_images=2)
    case("lcm_2_g2", "lcm", "tiny-lcm", "lcm", steps=2, guidance=2.0, seed=902, neg=None)
    case("sdxl_euler", "sdxl_txt2img", "tiny-sdxl", "euler", steps=8, guidance=5.0, seed=1000)
    case("sdxl_euler_noneg_96x64", "sdxl_txt2img", "tiny-sdxl", "euler", steps=8, guidance=5.0, seed=1001, neg=None,
         width=96, height=64)
    case("sdxl_euler_a_x2", "sdxl_txt2img", "tiny-sdxl", "euler_a", steps=8, guidance=5.0, seed=1002, num_images=2)
    case("sdxl_i2i_euler_s06", "sdxl_img2img", "tiny-sdxl", "euler", steps=10, guidance=5.0, seed=1003,
         strength=0.6, image=im64)
    # 7. SD3 and FLUX (flow matching; make_flow.py)
    _flow().cases(case, PROMPT, NEG)
    # 8. SDXL refiner (text_encoder_2 only, 5 time ids with the aesthetic score; force_zeros_for_empty_prompt false)
    rf = dict(aesthetic_score=6.0, negative_aesthetic_score=2.5)  # diffusers' defaults, passed explicitly
    case("refiner_euler_s03", "sdxl_refiner_img2img", "tiny-sdxl-refiner", "euler", steps=10, guidance=5.0,
         seed=1100, strength=0.3, image=im64, **rf)
    case("refiner_euler_a_noneg_x2_96x64", "sdxl_refiner_img2img", "tiny-sdxl-refiner", "euler_a", steps=10,
         guidance=5.0, seed=1101, strength=0.5, image=im96, neg=None, width=96, height=64, num_images=2, **rf)
    case("refiner_euler_aes7_neg2_s06", "sdxl_refiner_img2img", "tiny-sdxl-refiner", "euler", steps=8,
         guidance=5.0, seed=1102, strength=0.6, image=im64, aesthetic_score=7.0, negative_aesthetic_score=2.0)
    return C


PROG_UPSCALE = {
    2: dict(scale_factor=2, mode="nearest-exact"),
    3: dict(scale_factor=2, mode="bilinear", align_corners=False),
}


class RngLog:
    """Records every diffusers randn_tensor call (caller and shape) while active."""

    def __init__(self):
        self.calls = []

    def __enter__(self):
        import diffusers.utils.torch_utils as tu

        self.orig = tu.randn_tensor
        self.patched = []

        def wrapper(shape, *a, **k):
            f = sys._getframe(1)
            self.calls.append((f"{os.path.basename(f.f_code.co_filename)}:{f.f_code.co_name}", list(shape)))
            return self.orig(shape, *a, **k)

        for mod in list(sys.modules.values()):
            dct = getattr(mod, "__dict__", None)
            if dct is None or not getattr(mod, "__name__", "").startswith(("diffusers", "optimum")):
                continue
            if dct.get("randn_tensor") is self.orig:
                setattr(mod, "randn_tensor", wrapper)
                self.patched.append(mod)
        return self

    def __exit__(self, *exc):
        for mod in self.patched:
            setattr(mod, "randn_tensor", self.orig)

    def summary(self):
        out = []
        for who, shape in self.calls:
            if out and out[-1]["by"] == who and out[-1]["shape"] == shape:
                out[-1]["count"] += 1
            else:
                out.append({"by": who, "shape": shape, "count": 1})
        return out


class Capture:
    """Wraps a pipeline's prepare_* methods to keep their outputs (the pipeline's own tensors)."""

    def __init__(self, pipe):
        self.pipe = pipe
        self.t = {}
        for m in ("prepare_latents", "prepare_mask_latents", "prepare_image_latents"):
            if hasattr(type(pipe), m):
                setattr(pipe, m, self._wrap(m, getattr(type(pipe), m)))

    def _wrap(self, m, fn):
        def w(*a, **k):
            r = fn(self.pipe, *a, **k)
            self.t.setdefault(m, r)
            return r
        return w

    def close(self):
        for m in ("prepare_latents", "prepare_mask_latents", "prepare_image_latents"):
            self.pipe.__dict__.pop(m, None)


def run_case(pipe, c, output_type="pil", gold_dir=GOLD):
    """Run one case; returns (output, final latents, loop timesteps, rng draws, captured tensors)."""
    import numpy as np
    import torch

    if c["kind"] in FLOW_KINDS:
        return _flow().run_case(pipe, c, output_type, load_image, RngLog)
    steps_t = []
    captured = {}
    kind = c["kind"]
    names = CALLBACK_TENSORS.get(kind, ["latents"])

    def cb(p, i, t, kw):
        steps_t.append(float(t))
        captured["latents"] = kw[names[0]].detach().clone()
        for k in names[1:]:
            captured.setdefault(k, kw[k].detach().clone())
        return kw

    kwargs = dict(
        prompt=c["prompt"],
        num_inference_steps=c["steps"],
        guidance_scale=c["guidance_scale"],
        num_images_per_prompt=c["num_images"],
        generator=torch.Generator("cpu").manual_seed(c["seed"]),
        output_type=output_type,
        callback_on_step_end=cb,
        callback_on_step_end_tensor_inputs=names,
    )
    if kind != "lcm":  # LatentConsistencyModelPipeline has neither
        kwargs.update(negative_prompt=c["negative_prompt"], eta=c["eta"])
    if kind in ("txt2img", "lcm", "sdxl_txt2img"):
        kwargs.update(width=c["width"], height=c["height"])
    if kind in ("img2img", "inpaint", "sdxl_img2img", "sdxl_refiner_img2img"):
        kwargs["strength"] = c["strength"]
    if kind == "sdxl_refiner_img2img":
        kwargs.update(aesthetic_score=c["aesthetic_score"], negative_aesthetic_score=c["negative_aesthetic_score"])
    if c["image"]:
        kwargs["image"] = load_image(c["image"])
    if c["image_latents_in"]:
        kwargs["image"] = torch.from_numpy(np.load(os.path.join(gold_dir, c["image_latents_in"])))
    if kind == "inpaint":
        kwargs.update(mask_image=load_image(c["mask_image"]), width=c["width"], height=c["height"])
    if kind == "ip2p":
        kwargs["image_guidance_scale"] = c["image_guidance_scale"]
    cap = Capture(pipe)
    try:
        with torch.no_grad(), RngLog() as rng:
            out = pipe(**kwargs)
    finally:
        cap.close()
    cap.t.update({f"cb_{k}": captured[k] for k in names[1:]})
    return out, captured["latents"].float().numpy(), steps_t, rng.summary(), cap.t


def debug_tensors(c, t, uses_cfg):
    """The pipeline-internal tensors worth shipping (un-duplicated for CFG), name -> numpy float32."""
    n = c["num_images"]
    out = {}
    if "prepare_latents" in t:
        r = t["prepare_latents"]
        if isinstance(r, tuple):  # inpaint: (latents, noise[, image_latents])
            out["init_latents"] = r[0]
            if len(r) > 2:
                out["image_latents"] = r[2]
        else:
            out["init_latents"] = r
    if "prepare_mask_latents" in t:
        mask, mil = t["prepare_mask_latents"]
        out["mask_latents"] = mask[:n]
        out["masked_image_latents"] = mil[:n]
    if "prepare_image_latents" in t:
        out["image_latents"] = t["prepare_image_latents"][:n]
    for k, name in (("cb_w_embedding", "timestep_cond"), ("cb_add_text_embeds", "text_embeds"),
                    ("cb_add_time_ids", "time_ids"), ("cb_prompt_embeds", "encoder_hidden_states")):
        if k in t:
            out[name] = t[k]  # the full UNet-batch tensor (CFG order [uncond, cond] where CFG is on)
    return {k: v.detach().float().numpy() for k, v in out.items()}


def make_pipes(cache, factory):
    """factory(kind, model_name) -> pipeline; cached per (kind, model)."""
    pipes = {}

    def get(kind, model, variant=None):
        if (kind, model, variant) not in pipes:
            pipes[(kind, model, variant)] = factory(kind, model, variant)
        return pipes[(kind, model, variant)]
    return get


def variant(c):
    """'no-t5': the SD3 case runs without text_encoder_3 / tokenizer_3."""
    return "no-t5" if c.get("text_encoder_3") is False else None


def pt_factory(cache):
    import diffusers

    bases = {}

    def factory(kind, model, variant=None):
        if model not in bases:
            d = base_pt(cache, model)
            with open(os.path.join(d, "model_index.json")) as f:
                cls = getattr(diffusers, json.load(f)["_class_name"])
            bases[model] = cls.from_pretrained(d)
        base = bases[model]
        cls = getattr(diffusers, PIPE_CLASS[kind])
        extra = {"add_watermarker": False} if "XL" in cls.__name__ else {}
        comps = dict(base.components)
        if variant == "no-t5":
            comps.update(text_encoder_3=None, tokenizer_3=None)
        p = base if type(base) is cls and not variant else cls(**comps, **extra)
        p.set_progress_bar_config(disable=True)
        p._edit_base_sched = dict(base.scheduler.config)
        return p
    return factory


def set_scheduler(pipe, sched):
    import diffusers

    cls_name, over = _schedulers()[sched]
    pipe.scheduler = getattr(diffusers, cls_name).from_config(pipe._edit_base_sched, **over)


def uses_cfg(c):
    if c["kind"] in FLOW_KINDS:
        return _flow().uses_cfg(c)
    if c["kind"] == "lcm":
        return False
    if c["kind"] == "ip2p":
        return c["guidance_scale"] > 1.0 and c["image_guidance_scale"] >= 1.0
    return c["guidance_scale"] > 1.0


def make_goldens(cache):
    from importlib.metadata import version

    import numpy as np
    import torch

    os.makedirs(GOLD, exist_ok=True)
    for fn in os.listdir(GOLD):
        if fn.endswith((".npy", ".json")) or (fn.endswith(".png") and fn not in IMAGES):
            os.remove(os.path.join(GOLD, fn))
    for fn in IMAGES:
        if not os.path.exists(os.path.join(GOLD, fn)):
            sys.exit(f"{fn} missing: run the 'images' step first")
    get = make_pipes(cache, pt_factory(cache))
    manifest = []
    outputs = {}
    for c in golden_cases():
        pipe = get(c["kind"], c["model"], variant(c))
        set_scheduler(pipe, c["scheduler"])
        st = c["progressive"]
        if st and st["stage"] > 1:
            prev = torch.from_numpy(outputs[st["input_from"]])
            up = torch.nn.functional.interpolate(prev, **PROG_UPSCALE[st["stage"]])
            np.save(os.path.join(GOLD, c["image_latents_in"]), up.numpy().astype(np.float32))
        final = not st or st["stage"] == 3
        out, lat, ts, rng, t = run_case(pipe, c, output_type="pil" if final else "latent")
        if final and not st:
            set_scheduler(pipe, c["scheduler"])
            out2, lat2, ts2, rng2, _ = run_case(pipe, c, output_type="latent")
            d_cb = float(np.abs(out2.images.float().numpy() - lat).max())
            assert d_cb == 0.0, f"{c['name']}: callback latents differ from output_type=latent by {d_cb}"
            assert ts2 == ts and rng2 == rng
        if not final:
            assert float(np.abs(out.images.float().numpy() - lat).max()) == 0.0
        outputs[c["name"]] = lat
        pngs = []
        if final:
            for i, im in enumerate(out.images):
                fn = f"{c['name']}.png" if len(out.images) == 1 else f"{c['name']}.{i}.png"
                im.save(os.path.join(GOLD, fn))
                pngs.append(fn)
        lfn = f"{c['name']}.latents.npy"
        np.save(os.path.join(GOLD, lfn), lat.astype(np.float32))
        extra = {}
        info = {}
        if c["kind"] in FLOW_KINDS:
            tensors, info = _flow().debug_tensors(c, t)
            info["input_ids"] = _flow().input_ids(base_pt(cache, c["model"]), c)
        else:
            tensors = debug_tensors(c, t, uses_cfg(c))
        for k, v in tensors.items():
            fn = f"{c['name']}.{k}.npy"
            np.save(os.path.join(GOLD, fn), v.astype(np.float32))
            extra[k] = fn
        cfg = {k: v for k, v in dict(pipe.scheduler.config).items() if not k.startswith("_")}
        entry = dict(c)
        entry.update(
            scheduler_class=type(pipe.scheduler).__name__,
            scheduler_config=cfg,
            cfg=uses_cfg(c),
            scheduler_timesteps=[float(x) for x in pipe.scheduler.timesteps],
            timesteps=ts,
            unet_calls=len(ts),
            rng_draws=rng,
            png=pngs,
            latents=lfn,
            latents_shape=list(lat.shape),
            tensors=extra,
            **info,
        )
        manifest.append(entry)
        print(f"golden {c['name']:30s} {c['scheduler']:8s} t={ts[:3]}..({len(ts)}) latents {lat.shape} "
              f"[{lat.min():.3f}, {lat.max():.3f}] rng "
              f"{[(r['by'].split(':')[1], r['shape'], r['count']) for r in rng]}")
    mt.write_json(os.path.join(GOLD, "manifest.json"), {
        "description": DESCRIPTION + " " + _flow().DESCRIPTION + " " + REFINER_DESCRIPTION,
        "versions": {k: version(k) for k in mt.PINS},
        "inputs": {fn: {"kind": k, "width": w, "height": h} for fn, (k, w, h) in IMAGES.items()},
        "cases": manifest,
    })


DESCRIPTION = (
    "diffusers (PyTorch, CPU, float32) image-editing outputs for the tiny packages in models/. Common to all "
    "cases: generator=torch.Generator('cpu').manual_seed(seed), ONE generator shared by every draw of the call; "
    "scheduler = <scheduler_class>.from_config(<package scheduler_config.json as loaded>, **scheduler_overrides); "
    "pipeline = <pipeline>(**components of the package) with safety_checker None; "
    "prompt embeddings as in txt2img (tokenizer padding='max_length', 77 tokens; with CFG the UNet batch is "
    "[negative, positive], for ip2p [positive, negative, negative]); num_images_per_prompt = num_images. "
    "FILES: latents = the final latents of the denoising loop (the scaled latent space, i.e. BEFORE dividing by the "
    "VAE scaling_factor 0.18215; the png is vae_decode(latents / 0.18215) then (x/2+0.5).clamp(0,1), "
    "*255, round, uint8); tensors.init_latents = what prepare_latents returned (the latents entering the loop: "
    "noised image latents, or noise * init_noise_sigma); tensors.image_latents = for img2img/blend the VAE "
    "sample * 0.18215 (scaled), for ip2p the VAE encoder MEAN, UNSCALED (no 0.18215); tensors.mask_latents = the "
    "mask at latent resolution (0/1); tensors.masked_image_latents = VAE sample of the masked image * 0.18215; "
    "image_latents_in (progressive) = the 4-channel tensor passed as image= (already scaled latents, used as-is). "
    "timesteps = the t values of the denoising loop in order (one per UNet call); scheduler_timesteps = the "
    "scheduler's full schedule; rng_draws = every randn_tensor call in order (by = file:function), recorded "
    "while the golden ran. "
    "IMAGE PREPROCESSING (VaeImageProcessor.preprocess, image_processor.py:684-731): PIL RGB -> resize to "
    "(width,height) (a no-op copy here: sizes already match, multiples of 8) -> np.array(img).astype(float32)/255 "
    "-> 2*x-1 (float32; not x/127.5-1, which can differ by 1 ulp) -> NCHW. MASK (mask_processor: do_normalize "
    "False, do_binarize True, do_convert_grayscale True): PIL -> convert('L') -> /255 -> 0 where < 0.5 else 1 "
    "(i.e. pixel >= 128 is repaint); masked_image = image * (mask < 0.5); mask_latents = "
    "torch.nn.functional.interpolate(mask, size=(H/8, W/8)) default mode 'nearest' = pixel (8i, 8j) "
    "(pipeline_stable_diffusion_inpaint.py:771-773; masked_image at :1207). "
    "VAE ENCODE: latent_parameters = mean ++ logvar on dim 1; logvar clamped to [-30, 20]; "
    "sample = mean + exp(0.5*logvar) * randn(mean.shape) (autoencoders/vae.py:687-709). It is done ONCE on the "
    "batch-1 image and the result repeated to num_images. "
    "STRENGTH / TIMESTEP TRUNCATION (img2img and inpaint get_timesteps, pipeline_stable_diffusion_img2img.py:724-733): "
    "scheduler.set_timesteps(steps); init_timestep = min(int(steps*strength), steps) (Python float64 product, "
    "truncated: int(100*0.29) = 28); t_start = max(steps - init_timestep, 0); "
    "timesteps = scheduler.timesteps[t_start*scheduler.order:]; "
    "scheduler.set_begin_index(t_start*order) where the scheduler has it (Euler, Euler-a, Heun, DPM; not DDIM, "
    "not PNDM, whose schedule has steps+1 "
    "entries with skip_prk_steps so the slice keeps one extra leading entry; Heun has order 2 and 2*steps-1 "
    "entries). The image is noised at timesteps[0] (latent_timestep) with scheduler.add_noise: "
    "Euler/Euler-a/Heun x + sigma*noise with sigma = sigmas[begin_index]; DPM-Solver++ alpha_t*x + sigma_t*noise "
    "with sigma = sigmas[begin_index], alpha_t = 1/sqrt(sigma^2+1), sigma_t = sigma*alpha_t; "
    "DDIM/PNDM sqrt(acp[t])*x + sqrt(1-acp[t])*noise with t = timesteps[0]. img2img has no pure-noise shortcut: "
    "strength 1.0 still noises the image latents at timesteps[0] (inpaint does take the shortcut). "
    "RNG DRAW ORDER. txt2img: noise [n,4,h,w], then scheduler step draws. img2img "
    "(pipeline_stable_diffusion_img2img.py:735-797): [VAE sample of the image, shape [1,4,h,w]] -> add_noise "
    "noise [n,4,h,w] -> scheduler step draws (euler_a: one [n,4,h,w] per step; ddim with eta>0: one per step; "
    "others none). A 4-channel image= tensor skips preprocessing (image_processor.py:712-715) and the VAE "
    "(img2img.py:745-746): no encode draw, no scaling. inpaint (pipeline_stable_diffusion_inpaint.py:688-809, "
    "1158-1225): VAE sample of the image [1,4,h,w] ONLY IF strength < 1 or the UNet has 4 channels -> noise "
    "[n,4,h,w] (latents = noise*init_noise_sigma if strength == 1.0 exactly, else add_noise(image_latents, noise, "
    "timesteps[0])) -> VAE sample of the MASKED image [1,4,h,w] (always drawn, even for the 4-channel UNet that "
    "does not use it) -> scheduler step draws. 9-channel UNet input: cat([scale_model_input(latents), mask, "
    "masked_image_latents], dim=1) (:1274). 4-channel latent blend (:1296-1307) after every scheduler.step i: "
    "init = image_latents if "
    "i is the last step else scheduler.add_noise(image_latents, noise (the same noise tensor as above), "
    "timesteps[i+1]) (sigma schedulers: sigmas[step_index], already advanced to i+1); latents = (1-mask)*init + "
    "mask*latents. ip2p (pipeline_stable_diffusion_instruct_pix2pix.py:374-400, 425-447, 641, 862-901): "
    "image latents = VAE "
    "encoder MEAN (latent_dist.mode(), no draw, no scaling factor) -> noise [n,4,h,w] * init_noise_sigma -> "
    "scheduler step draws; no strength, the full schedule runs; CFG only if guidance_scale > 1 AND "
    "image_guidance_scale >= 1 (ip2p_euler_a_igs08 has guidance 7.5 but NO CFG); UNet batch "
    "[text, uncond, uncond] x [image_latents, image_latents, zeros]; noise = uncond + g*(text - image) + "
    "ig*(image - uncond) where (text, image, uncond) = out.chunk(3). "
    "PROGRESSIVE (prog_stage1..3): stage 1 StableDiffusionPipeline 176x224 output_type='latent'; stage k>1 "
    "image_latents_in = interpolate(previous stage's latents, upscale) (file given), passed as image= to "
    "StableDiffusionImg2ImgPipeline with output_type='latent' (stage 2) or decoded (stage 3); width/height are "
    "informative (8 * latent size). "
    "LCM (LatentConsistencyModelPipeline, pipeline_latent_consistency_text2img.py:848-909): no CFG batch and no "
    "negative prompt; tensors.timestep_cond = UNet input timestep_cond = get_guidance_scale_embedding(w = "
    "guidance_scale - 1, dim 32) (w*1000; emb = exp(arange(16) * -log(10000)/15); [sin(w*emb), cos(w*emb)]); "
    "RNG: noise [n,4,h,w] * init_noise_sigma, then one [n,4,h,w] draw in every LCMScheduler.step except the last "
    "(scheduling_lcm.py:618-619); the step returns (prev_sample, denoised) and latents = the LAST step's denoised "
    "(what is decoded), not prev_sample. "
    "SDXL (StableDiffusionXLPipeline / StableDiffusionXLImg2ImgPipeline): encoder_hidden_states = cat(te1 "
    "hidden_states[-2], te2 hidden_states[-2], dim=-1), text_embeds = te2 text_embeds (pooled, projected), time_ids "
    "= [height, width, 0, 0, height, width] (original size, crop top-left, target size; float32); "
    "tensors.text_embeds / tensors.time_ids are the full UNet-batch tensors [uncond..., cond...]; "
    "with negative_prompt None "
    "(force_zeros_for_empty_prompt) the uncond prompt embeddings AND pooled embeddings are zeros "
    "(pipeline_stable_diffusion_xl.py:422-425); RNG order as txt2img / img2img above; VAE scaling 0.13025."
)

REFINER_DESCRIPTION = (
    "SDXL REFINER (kind sdxl_refiner_img2img, StableDiffusionXLImg2ImgPipeline on tiny-sdxl-refiner: no text_encoder "
    "/ tokenizer, requires_aesthetics_score true, force_zeros_for_empty_prompt false; "
    "pipeline_stable_diffusion_xl_img2img.py): the pipeline is called with aesthetic_score and "
    "negative_aesthetic_score from the case (6.0 / 2.5 are diffusers' defaults). Only tokenizer_2 / text_encoder_2 "
    "run, on `prompt` (:387-399: the tokenizers list is [tokenizer_2], zipped with [prompt, prompt_2]); "
    "tensors.encoder_hidden_states = the UNet-batch prompt embeddings = text_encoder_2 hidden_states[-2] ALONE "
    "(:426-437), [negative..., positive...]; text_embeds = text_encoder_2 text_embeds (pooled, projected; :424-427); "
    "with negative_prompt None and CFG the negative prompt is \"\" ENCODED by text_encoder_2 (:440-495; "
    "force_zeros_for_empty_prompt false), not zeros. time_ids (_get_add_time_ids, :843-892, the "
    "requires_aesthetics_score branch :856-860, called at :1316) = "
    "[orig_h, orig_w, crop_top, crop_left, aesthetic_score] per positive row and [orig_h, orig_w, 0, 0, "
    "negative_aesthetic_score] per negative row (5 values, no target size; orig = 8 x the image latents' size, "
    ":1297-1301); tensors.time_ids rows are [negative x n, positive x n] (:1328-1334). "
    "Image latents, strength truncation and RNG order as SDXL img2img (VAE sample [1,4,h,w], add_noise noise "
    "[n,4,h,w], euler_a step draws); VAE scaling 0.13025."
)


# --------------------------------------------------------------------------------------------
# ONNX parity
# --------------------------------------------------------------------------------------------

def ort_factory():
    import diffusers
    from optimum.onnxruntime import (
        ORTLatentConsistencyModelPipeline,
        ORTStableDiffusionImg2ImgPipeline,
        ORTStableDiffusionInpaintPipeline,
        ORTStableDiffusionPipeline,
        ORTStableDiffusionXLImg2ImgPipeline,
        ORTStableDiffusionXLPipeline,
    )
    from optimum.onnxruntime.modeling_diffusion import ORTDiffusionPipeline

    class ORTStableDiffusionInstructPix2PixPipeline(ORTDiffusionPipeline,
                                                    diffusers.StableDiffusionInstructPix2PixPipeline):
        main_input_name = "prompt"
        auto_model_class = diffusers.StableDiffusionInstructPix2PixPipeline

    classes = {
        "txt2img": ORTStableDiffusionPipeline,
        "img2img": ORTStableDiffusionImg2ImgPipeline,
        "inpaint": ORTStableDiffusionInpaintPipeline,
        "ip2p": ORTStableDiffusionInstructPix2PixPipeline,
        "lcm": ORTLatentConsistencyModelPipeline,
        "sdxl_txt2img": ORTStableDiffusionXLPipeline,
        "sdxl_img2img": ORTStableDiffusionXLImg2ImgPipeline,
        "sdxl_refiner_img2img": ORTStableDiffusionXLImg2ImgPipeline,
        **_flow().ort_classes(),
    }

    def factory(kind, model, variant=None):
        d = PKG[model]
        if variant == "no-t5":
            d = _flow().package_without_t5(d, os.path.join(tempfile.gettempdir(), "diffgentor-edit-ort"))
        p = classes[kind].from_pretrained(d, provider="CPUExecutionProvider")
        p.set_progress_bar_config(disable=True)
        p._edit_base_sched = dict(p.scheduler.config)
        return p
    return factory


def parity():
    import numpy as np
    from PIL import Image

    with open(os.path.join(GOLD, "manifest.json")) as f:
        man = json.load(f)
    get = make_pipes(None, ort_factory())
    worst = 0.0
    for c in man["cases"]:
        pipe = get(c["kind"], c["model"], variant(c))
        set_scheduler(pipe, c["scheduler"])
        assert type(pipe.scheduler).__name__ == c["scheduler_class"]
        final = bool(c["png"])
        out, lat, ts, rng, _ = run_case(pipe, c, output_type="pil" if final else "latent")
        assert ts == c["timesteps"], f"{c['name']}: timesteps differ"
        assert rng == c["rng_draws"], f"{c['name']}: rng draws differ {rng}"
        ref = np.load(os.path.join(GOLD, c["latents"]))
        d = float(np.abs(lat - ref).max())
        pix = 0
        for im, fn in zip(out.images if final else [], c["png"]):
            a = np.asarray(im).astype(np.int32)
            b = np.asarray(Image.open(os.path.join(GOLD, fn))).astype(np.int32)
            pix = max(pix, int(np.abs(a - b).max()))
        worst = max(worst, d)
        print(f"parity {c['name']:30s} latents max abs {d:.3e} (max |ref| {np.abs(ref).max():.2f})"
              f"  png max level diff {pix if final else '-'}" + ("  <-- over 1e-3" if d >= 1e-3 else ""))
    print(f"parity worst latents max abs {worst:.3e}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", choices=["models", "images", "goldens", "parity"])
    ap.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "diffgentor-edit-pt"))
    ap.add_argument("--package", nargs="*", choices=list(NEW_MODELS) + ["tiny-sd3", "tiny-flux"],
                    help="with 'models': (re)make only these packages (default: all)")
    a = ap.parse_args()
    sys.modules.setdefault("make_edit", sys.modules[__name__])  # make_flow's `import make_edit` gets this module
    mt.check_versions("make_edit.py")
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    steps = a.only or ["models", "images", "goldens", "parity"]
    os.chdir(ROOT)
    if "models" in steps:
        if not a.package or set(a.package) & set(NEW_MODELS):
            make_models(a.cache, [n for n in a.package or NEW_MODELS if n in NEW_MODELS])
        if not a.package or set(a.package) & set(_flow().FLOW_MODELS):
            _flow().make_models(a.cache, [n for n in a.package or _flow().FLOW_MODELS if n in _flow().FLOW_MODELS])
    if "images" in steps:
        make_images()
    if "goldens" in steps:
        make_goldens(a.cache)
    if "parity" in steps:
        parity()


if __name__ == "__main__":
    main()
