"""Scheduler configs of the real Stable Diffusion packages, verbatim, shared by the scripts that make
test packages (models/make_tiny.py, benches/compare/make_sd15_random.py)."""

# The real SD 1.5 scheduler config (runwayml/stable-diffusion-v1-5, scheduler/scheduler_config.json).
SD15_SCHEDULER = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}
# The SD 2 (768-v) scheduler config (stabilityai/stable-diffusion-2, scheduler/scheduler_config.json).
SD2_SCHEDULER = {
    "_class_name": "DDIMScheduler",
    "_diffusers_version": "0.8.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}
