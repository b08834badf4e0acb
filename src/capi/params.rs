//! Request parameters: typed setters plus one string-keyed setter for the long tail.
use std::ffi::c_char;

use super::{arg_mut, arg_str, boundary, dg_error_t, opt_str, out_param, write_out, FfiResult};
use crate::request::{check_stack, Plan};
use crate::{Error, Image, LoraUse, Request};

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
/// "num_images", "scheduler", "eta", "rng" ("torch" or "fast"), "strength",
/// "image_guidance_scale", "plan" (plan JSON), "max_sequence_length", "best_effort",
/// "aesthetic_score", "negative_aesthetic_score", "loras" (the request's whole LoRA stack,
/// "name:0.8;other:-0.4"; "" = no LoRA), "lora_prompt_tags" ("true": take A1111
/// `<lora:name:strength>` tags out of the prompt onto the stack), and "scheduler.<diffusers_key>"
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

/// Copies an image buffer for the image setters; NULL `pixels` means "none".
unsafe fn image_arg(
    pixels: *const u8,
    width: u32,
    height: u32,
    channels: u32,
    stride: usize,
) -> FfiResult<Option<Image>> {
    if pixels.is_null() {
        return Ok(None);
    }
    // Before the slice is made: an absurd size must never become a slice length.
    crate::image::check_dimensions(width, height)?;
    let rows = (height as usize).saturating_sub(1);
    let len = stride
        .checked_mul(rows)
        .and_then(|n| n.checked_add((width as usize).checked_mul(channels as usize)?))
        .ok_or_else(|| Error::InvalidArg("image buffer size overflows".into()))?;
    // SAFETY: the caller promises `pixels` holds `height` rows of `stride` bytes.
    let data = std::slice::from_raw_parts(pixels, len);
    Ok(Some(Image::from_raw(
        data, width, height, channels, stride,
    )?))
}

/// Sets the source image of img2img, inpainting and instruction editing (copied). `pixels` holds
/// `height` rows of `stride` bytes, each `width` pixels of `channels` bytes (1 grey, 3 RGB or 4
/// RGBA, alpha ignored). It must have the output size (a size left unset is taken from it).
/// NULL `pixels` clears it.
///
/// # Safety
/// `p` is NULL or live params; `pixels` is NULL or valid for reading `stride * (height - 1) +
/// width * channels` bytes.
#[no_mangle]
pub unsafe extern "C" fn dg_params_set_init_image(
    p: *mut dg_params_t,
    pixels: *const u8,
    width: u32,
    height: u32,
    channels: u32,
    stride: usize,
) -> *mut dg_error_t {
    with_params(p, |r| {
        r.init_image = image_arg(pixels, width, height, channels, stride)?;
        Ok(())
    })
}

/// Sets the inpainting mask (copied), laid out as in `dg_params_set_init_image` and of the same
/// size: pixels with luma >= 128 (white) are repainted, the rest kept. NULL `pixels` clears it.
///
/// # Safety
/// As `dg_params_set_init_image`.
#[no_mangle]
pub unsafe extern "C" fn dg_params_set_mask(
    p: *mut dg_params_t,
    pixels: *const u8,
    width: u32,
    height: u32,
    channels: u32,
    stride: usize,
) -> *mut dg_error_t {
    with_params(p, |r| {
        r.mask = image_arg(pixels, width, height, channels, stride)?;
        Ok(())
    })
}

/// Sets how much of the init image is re-noised, in (0, 1] (checked here); without it img2img
/// uses 0.8 and inpainting 1.0, as diffusers does.
///
/// # Safety
/// `p` is NULL or live params.
#[no_mangle]
pub unsafe extern "C" fn dg_params_set_strength(
    p: *mut dg_params_t,
    strength: f64,
) -> *mut dg_error_t {
    with_params(p, |r| {
        crate::request::check_strength(strength)?;
        r.strength = Some(strength);
        Ok(())
    })
}

/// Sets InstructPix2Pix's image guidance scale (default 1.5; used when >= 1 and the guidance
/// scale is > 1).
///
/// # Safety
/// `p` is NULL or live params.
#[no_mangle]
pub unsafe extern "C" fn dg_params_set_image_guidance_scale(
    p: *mut dg_params_t,
    scale: f32,
) -> *mut dg_error_t {
    with_params(p, |r| {
        r.image_guidance_scale = scale;
        Ok(())
    })
}

/// Sets a progressive plan from its JSON text (docs/editing.md), checked here; NULL clears it.
///
/// # Safety
/// `p` is NULL or live params; `json` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn dg_params_set_plan(
    p: *mut dg_params_t,
    json: *const c_char,
) -> *mut dg_error_t {
    with_params(p, |r| {
        r.plan = opt_str(json, "json")?.map(Plan::from_json).transpose()?;
        Ok(())
    })
}

/// Appends adapter `name` at `strength` to the request's LoRA stack (1.0 = as trained; negative
/// subtracts it; 0 feeds the base weights). The first call replaces the pipeline's default stack
/// for this request. A non-finite strength, an empty name, an adapter already in the stack and an
/// 11th adapter are `DG_ERROR_INVALID_ARG` here (the stack is then unchanged); a name no adapter of
/// the pipeline has is `DG_ERROR_INVALID_ARG` at generate time, listing the loaded ones.
/// The "loras" key of `dg_params_set` replaces the whole stack.
///
/// # Safety
/// `p` is NULL or live params; `name` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn dg_params_add_lora(
    p: *mut dg_params_t,
    name: *const c_char,
    strength: f32,
) -> *mut dg_error_t {
    with_params(p, |r| {
        let name = arg_str(name, "name")?;
        if name.is_empty() {
            return Err(Error::InvalidArg("the LoRA name must not be empty".into()).into());
        }
        let mut stack = r.loras.clone().unwrap_or_default();
        stack.push(LoraUse::new(name, strength));
        check_stack(&stack)?;
        r.loras = Some(stack);
        Ok(())
    })
}

/// Empties the request's LoRA stack: the request runs without any adapter, whatever the
/// pipeline's default stack (the base model's output, bit for bit). `dg_params_add_lora` then
/// starts a new stack.
///
/// # Safety
/// `p` is NULL or live params.
#[no_mangle]
pub unsafe extern "C" fn dg_params_clear_loras(p: *mut dg_params_t) -> *mut dg_error_t {
    with_params(p, |r| {
        r.loras = Some(Vec::new());
        Ok(())
    })
}
