//! Request parameters: typed setters plus one string-keyed setter for the long tail.
use std::ffi::c_char;

use super::{arg_mut, arg_str, boundary, dg_error_t, opt_str, out_param, write_out, FfiResult};
use crate::Request;

/// Parameters of one request: a builder. Not thread-safe: use one from one thread at a time (or
/// guard it). `dg_pipeline_generate` copies it, so it may be changed or freed once that call returns,
/// and reused for further requests.
pub struct dg_params_t {
    pub(crate) request: Request,
}

/// Creates parameters with diffusers' defaults in `*out`: empty prompt, 50 steps, guidance 7.5,
/// one image, the package's size and scheduler, torch-compatible noise and a random seed (reported
/// by `dg_images_seed`).
///
/// # Safety
/// `out` is NULL or valid for writing a pointer.
#[no_mangle]
pub unsafe extern "C" fn dg_params_new(out: *mut *mut dg_params_t) -> *mut dg_error_t {
    boundary(|| {
        let out = out_param(out, "out")?;
        write_out(
            out,
            dg_params_t {
                request: Request::default(),
            },
        )
    })
}

/// Frees parameters. NULL is a no-op.
///
/// # Safety
/// `p` is NULL or came from `dg_params_new` and is freed at most once.
#[no_mangle]
pub unsafe extern "C" fn dg_params_free(p: *mut dg_params_t) {
    super::free_handle(p)
}

/// Runs a setter body on a checked params handle.
unsafe fn with_params(
    p: *mut dg_params_t,
    set: impl FnOnce(&mut Request) -> FfiResult,
) -> *mut dg_error_t {
    boundary(|| set(&mut arg_mut(p, "p")?.request))
}

/// Sets the prompt (UTF-8).
///
/// # Safety
/// `p` is NULL or live params; `prompt` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn dg_params_set_prompt(
    p: *mut dg_params_t,
    prompt: *const c_char,
) -> *mut dg_error_t {
    with_params(p, |r| {
        r.prompt = arg_str(prompt, "prompt")?.to_string();
        Ok(())
    })
}

/// Sets the negative prompt (UTF-8); NULL clears it (the unconditional pass then uses "").
///
/// # Safety
/// `p` is NULL or live params; `negative_prompt` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn dg_params_set_negative_prompt(
    p: *mut dg_params_t,
    negative_prompt: *const c_char,
) -> *mut dg_error_t {
    with_params(p, |r| {
        r.negative_prompt = opt_str(negative_prompt, "negative_prompt")?.map(str::to_string);
        Ok(())
    })
}

/// Sets the number of denoising steps (checked at generate time: 1..=1000).
///
/// # Safety
/// `p` is NULL or live params.
#[no_mangle]
pub unsafe extern "C" fn dg_params_set_steps(p: *mut dg_params_t, steps: u32) -> *mut dg_error_t {
    with_params(p, |r| {
        r.steps = steps as usize;
        Ok(())
    })
}

/// Sets the classifier-free guidance scale; <= 1 disables the unconditional pass.
///
/// # Safety
/// `p` is NULL or live params.
#[no_mangle]
pub unsafe extern "C" fn dg_params_set_guidance_scale(
    p: *mut dg_params_t,
    scale: f32,
) -> *mut dg_error_t {
    with_params(p, |r| {
        r.guidance_scale = scale;
        Ok(())
    })
}

/// Sets the output size in pixels (checked at generate time: positive multiples of the package's
/// VAE factor, usually 8).
///
/// # Safety
/// `p` is NULL or live params.
#[no_mangle]
pub unsafe extern "C" fn dg_params_set_size(
    p: *mut dg_params_t,
    width: u32,
    height: u32,
) -> *mut dg_error_t {
    with_params(p, |r| {
        r.width = Some(width);
        r.height = Some(height);
        Ok(())
    })
}

/// Sets the seed, making the request reproducible.
///
/// # Safety
/// `p` is NULL or live params.
#[no_mangle]
pub unsafe extern "C" fn dg_params_set_seed(p: *mut dg_params_t, seed: u64) -> *mut dg_error_t {
    with_params(p, |r| {
        r.seed = Some(seed);
        Ok(())
    })
}

/// Sets how many images one request makes (checked at generate time: 1..=64).
///
/// # Safety
/// `p` is NULL or live params.
#[no_mangle]
pub unsafe extern "C" fn dg_params_set_num_images(p: *mut dg_params_t, n: u32) -> *mut dg_error_t {
    with_params(p, |r| {
        r.num_images = n as usize;
        Ok(())
    })
}

/// Sets the scheduler by diffgentor name ("euler", "ddim", ...) or diffusers class name
/// (checked at generate time).
///
/// # Safety
/// `p` is NULL or live params; `name` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn dg_params_set_scheduler(
    p: *mut dg_params_t,
    name: *const c_char,
) -> *mut dg_error_t {
    with_params(p, |r| {
        r.scheduler = Some(arg_str(name, "name")?.to_string());
        Ok(())
    })
}

/// Sets any parameter by string key and value, e.g. `dg_params_set(p, "guidance_scale", "7.5")`.
///
/// Keys: "prompt", "negative_prompt", "steps", "guidance_scale", "width", "height", "seed",
/// "num_images", "scheduler", "eta", "rng" ("torch" or "fast"), and "scheduler.<diffusers_key>"
/// (value parsed as JSON, else taken as a string) to override the package's scheduler_config.
/// An unknown key is `DG_ERROR_INVALID_ARG` naming the key; an unparsable value is
/// `DG_ERROR_INVALID_ARG` naming key and value. Checks that need the model happen at generate time.
///
/// # Safety
/// `p` is NULL or live params; `key` and `value` are NULL or NUL-terminated strings.
#[no_mangle]
pub unsafe extern "C" fn dg_params_set(
    p: *mut dg_params_t,
    key: *const c_char,
    value: *const c_char,
) -> *mut dg_error_t {
    with_params(p, |r| {
        let key = arg_str(key, "key")?;
        let value = arg_str(value, "value")?;
        Ok(r.set(key, value)?)
    })
}
