#!/usr/bin/env python3
"""Writes tests/golden/schedulers/*.json: reference scheduler runs from diffusers.

Pinned: diffusers==0.39.0, torch==2.15.0 (CPU), numpy 2.x. Deterministic (seeded torch
generator). Each case drives a scheduler the way a diffusers pipeline does, with a toy
"model" that both this script and tests/schedulers.rs evaluate identically in float32:

    model_output = 0.1 * scale_model_input(sample, t) + float32(0.05 * sin(t / 100))

Noise that a scheduler draws (randn_tensor) is recorded so the Rust test can replay it.

Usage: /work/venv/bin/python models/make_scheduler_goldens.py
"""

import json
import math
import os

import diffusers
import numpy as np
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    HeunDiscreteScheduler,
    LCMScheduler,
    PNDMScheduler,
)

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "golden", "schedulers")
SHAPE = [1, 4, 4, 4]

# The SD 1.5 scheduler_config.json (PNDM), minus the bookkeeping keys.
SD15 = {
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
}
SD3 = {"num_train_timesteps": 1000, "shift": 3.0}
FLUX = {
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "max_image_seq_len": 4096,
    "max_shift": 1.15,
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
}

CLASSES = {
    "ddim": DDIMScheduler,
    "pndm": PNDMScheduler,
    "euler": EulerDiscreteScheduler,
    "euler_a": EulerAncestralDiscreteScheduler,
    "dpmpp_2m": DPMSolverMultistepScheduler,
    "dpmpp_2m_karras": DPMSolverMultistepScheduler,
    "heun": HeunDiscreteScheduler,
    "lcm": LCMScheduler,
    "flow_match_euler": FlowMatchEulerDiscreteScheduler,
}

EPS = {}
VPRED = {"prediction_type": "v_prediction"}

# (case id, base config, overrides, steps, extra) per scheduler name.
CASES = {
    "ddim": [
        ("defaults_6", {}, EPS, 6, {}),
        ("eps_10", SD15, EPS, 10, {}),
        ("vpred_7", SD15, VPRED, 7, {}),
        ("trailing_5", SD15, {"timestep_spacing": "trailing"}, 5, {}),
        ("linspace_9", SD15, {"timestep_spacing": "linspace"}, 9, {}),
        ("eta_6", SD15, {"eta": 0.7}, 6, {}),
        ("clip_one_zsnr_4", SD15, {"clip_sample": True, "clip_sample_range": 0.8, "set_alpha_to_one": True,
                                   "rescale_betas_zero_snr": True, "timestep_spacing": "trailing",
                                   "prediction_type": "v_prediction"}, 4, {}),
        ("linear_sample_8", SD15, {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02,
                                   "prediction_type": "sample"}, 8, {}),
        ("cos_3", SD15, {"beta_schedule": "squaredcos_cap_v2"}, 3, {}),
    ],
    "pndm": [
        ("defaults_6", {}, EPS, 6, {}),
        ("eps_10", SD15, EPS, 10, {}),
        ("vpred_7", SD15, VPRED, 7, {}),
        ("trailing_5", SD15, {"timestep_spacing": "trailing"}, 5, {}),
        ("linspace_9", SD15, {"timestep_spacing": "linspace"}, 9, {}),
        ("prk_10", SD15, {"skip_prk_steps": False}, 10, {}),
        ("prk_vpred_5", SD15, {"skip_prk_steps": False, "prediction_type": "v_prediction"}, 5, {}),
    ],
    "euler": [
        ("defaults_6", {}, EPS, 6, {}),
        ("eps_10", SD15, EPS, 10, {}),
        ("vpred_7", SD15, VPRED, 7, {}),
        ("leading_9", SD15, {"timestep_spacing": "leading"}, 9, {}),
        ("trailing_5", SD15, {"timestep_spacing": "trailing"}, 5, {}),
        ("karras_8", SD15, {"use_karras_sigmas": True}, 8, {}),
        ("karras_vpred_25", SD15, {"use_karras_sigmas": True, "prediction_type": "v_prediction"}, 25, {}),
        ("sigma_min_sample_6", SD15, {"final_sigmas_type": "sigma_min", "prediction_type": "sample"}, 6, {}),
        ("zsnr_trailing_vpred_4", SD15, {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing",
                                         "prediction_type": "v_prediction"}, 4, {}),
    ],
    "euler_a": [
        ("defaults_6", {}, EPS, 6, {}),
        ("eps_10", SD15, EPS, 10, {}),
        ("vpred_7", SD15, VPRED, 7, {}),
        ("leading_9", SD15, {"timestep_spacing": "leading"}, 9, {}),
        ("trailing_5", SD15, {"timestep_spacing": "trailing"}, 5, {}),
    ],
    "dpmpp_2m": [
        ("defaults_6", {}, EPS, 6, {}),
        ("eps_10", SD15, EPS, 10, {}),
        ("vpred_7", SD15, VPRED, 7, {}),
        ("leading_9", SD15, {"timestep_spacing": "leading"}, 9, {}),
        ("trailing_5", SD15, {"timestep_spacing": "trailing"}, 5, {}),
        ("eps_20", SD15, EPS, 20, {}),
        ("order3_16", SD15, {"solver_order": 3}, 16, {}),
        ("order3_noluf_17", SD15, {"solver_order": 3, "lower_order_final": False,
                                   "final_sigmas_type": "sigma_min"}, 17, {}),
        ("heun_sample_6", SD15, {"solver_type": "heun", "prediction_type": "sample"}, 6, {}),
        ("sde_8", SD15, {"algorithm_type": "sde-dpmsolver++"}, 8, {}),
        ("lambda_clip_11", SD15, {"lambda_min_clipped": -5.1, "timestep_spacing": "trailing"}, 11, {}),
    ],
    "dpmpp_2m_karras": [
        ("defaults_6", {}, EPS, 6, {}),
        ("eps_10", SD15, EPS, 10, {}),
        ("vpred_7", SD15, VPRED, 7, {}),
        ("eps_25", SD15, EPS, 25, {}),
        ("linear_9", SD15, {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02}, 9, {}),
    ],
    "heun": [
        ("defaults_6", {}, EPS, 6, {}),
        ("eps_10", SD15, EPS, 10, {}),
        ("vpred_7", SD15, VPRED, 7, {}),
        ("karras_8", SD15, {"use_karras_sigmas": True}, 8, {}),
        ("leading_6", SD15, {"timestep_spacing": "leading"}, 6, {}),
        ("trailing_5_clip", SD15, {"timestep_spacing": "trailing", "clip_sample": True,
                                   "prediction_type": "sample"}, 5, {}),
    ],
    "lcm": [
        ("defaults_4", {}, EPS, 4, {}),
        ("eps_4", SD15, EPS, 4, {}),
        ("vpred_7", SD15, VPRED, 7, {}),
        ("eps_1", SD15, EPS, 1, {}),
        ("orig25_scale5_8", SD15, {"original_inference_steps": 25, "timestep_scaling": 5.0,
                                   "clip_sample": True}, 8, {}),
    ],
    "flow_match_euler": [
        ("defaults_6", {}, EPS, 6, {}),
        ("sd15cfg_10", SD15, EPS, 10, {}),
        ("shift1_7", {"num_train_timesteps": 1000, "shift": 1.0}, EPS, 7, {}),
        ("shift3_9", SD3, EPS, 9, {}),
        ("dyn_mu_8", FLUX, EPS, 8, {"mu": 0.8}),
        ("dyn_linear_mu_5", FLUX, {"time_shift_type": "linear"}, 5, {"mu": 1.7}),
        ("flux_sigmas_6", FLUX, EPS, 6, {"mu": 1.15, "flux_sigmas": True}),
        ("terminal_6", SD3, {"shift_terminal": 0.1}, 6, {}),
        ("stochastic_5", SD3, {"stochastic_sampling": True}, 5, {}),
        ("invert_4", SD3, {"invert_sigmas": True}, 4, {}),
    ],
}

_noise_log = []
_gen = torch.Generator().manual_seed(1234)


def _recording_randn(shape, generator=None, device=None, dtype=None, layout=None):
    t = torch.randn(tuple(shape), generator=_gen, dtype=torch.float32)
    _noise_log.append(t.clone())
    return t.to(dtype or torch.float32)


for mod in (
    "scheduling_ddim",
    "scheduling_lcm",
    "scheduling_euler_ancestral_discrete",
    "scheduling_euler_discrete",
    "scheduling_dpmsolver_multistep",
    "scheduling_flow_match_euler_discrete",
):
    setattr(getattr(diffusers.schedulers, mod), "randn_tensor", _recording_randn)


def f32list(t):
    arr = np.asarray(t.detach().numpy() if isinstance(t, torch.Tensor) else t, dtype=np.float32).reshape(-1)
    # str(np.float32) is the shortest decimal that round-trips to the same float32.
    return [float(str(v)) for v in arr]


def model(scaled, t):
    c = np.float32(0.05 * math.sin(float(t) / 100.0))
    return scaled * 0.1 + torch.tensor(c, dtype=torch.float32)


def make(name, cfg):
    cfg = dict(cfg)
    cfg.pop("eta", None)
    if name == "dpmpp_2m_karras":
        cfg["use_karras_sigmas"] = True
    return CLASSES[name].from_config(cfg)


def set_steps(sched, steps, extra):
    if extra.get("flux_sigmas"):
        sigmas = np.linspace(1.0, 1 / steps, steps)
        sched.set_timesteps(steps, sigmas=sigmas, mu=extra["mu"])
    elif "mu" in extra:
        sched.set_timesteps(steps, mu=extra["mu"])
    else:
        sched.set_timesteps(steps)


def run_case(name, cid, base, over, steps, extra):
    cfg = {**base, **over}
    eta = cfg.get("eta", 0.0)
    sched = make(name, cfg)
    set_steps(sched, steps, extra)
    timesteps = sched.timesteps.clone()
    n = len(timesteps)
    ins = getattr(sched, "init_noise_sigma", 1.0)
    x_t = torch.randn(SHAPE, generator=_gen, dtype=torch.float32)
    latents = x_t * ins
    _noise_log.clear()
    traj, scaled_at = [], {}
    mid = n // 2
    for i, t in enumerate(timesteps):
        if hasattr(sched, "scale_model_input"):
            scaled = sched.scale_model_input(latents, t)
        else:
            scaled = latents
        if i in (0, mid):
            scaled_at[i] = f32list(scaled)
        out = model(scaled, t)
        kwargs = {"eta": eta} if name == "ddim" else {}
        latents = sched.step(out, t, latents, **kwargs, return_dict=False)[0]
        traj.append(f32list(latents))
    noise = [f32list(t) for t in _noise_log]
    noise_shapes = [list(t.shape) for t in _noise_log]
    _noise_log.clear()

    # img2img-style add_noise at step index k on a fresh scheduler.
    k = min(1, n - 1)
    fresh = make(name, cfg)
    set_steps(fresh, steps, extra)
    if hasattr(fresh, "set_begin_index"):
        fresh.set_begin_index(k)
    orig = x_t
    nz = torch.flip(x_t.reshape(-1), [0]).reshape(SHAPE)
    tk = fresh.timesteps[k : k + 1].repeat(SHAPE[0])
    if name == "flow_match_euler":
        noised = fresh.scale_noise(orig, tk, nz)
    else:
        noised = fresh.add_noise(orig, nz, tk)

    ins_f = float(ins) if not isinstance(ins, torch.Tensor) else float(ins.item())
    return {
        "id": cid,
        "config": cfg,
        "steps": steps,
        "mu": extra.get("mu"),
        "flux_sigmas": bool(extra.get("flux_sigmas", False)),
        "shape": SHAPE,
        "timesteps": f32list(timesteps.float()),
        "init_noise_sigma": float(str(np.float32(ins_f))),
        "x_t": f32list(x_t),
        "scaled": [{"step_index": i, "values": v} for i, v in sorted(scaled_at.items())],
        "trajectory": traj,
        "noise_shapes": noise_shapes,
        "noise": noise,
        "add_noise": {"step_index": k, "values": f32list(noised)},
    }


def main():
    os.makedirs(OUT, exist_ok=True)
    for name, cases in CASES.items():
        doc = {
            "scheduler": name,
            "class": CLASSES[name].__name__,
            "diffusers": diffusers.__version__,
            "torch": torch.__version__,
            "cases": [run_case(name, *c) for c in cases],
        }
        path = os.path.join(OUT, f"{name}.json")
        with open(path, "w") as f:
            json.dump(doc, f, separators=(",", ":"))
            f.write("\n")
        print(path, os.path.getsize(path))


if __name__ == "__main__":
    main()
