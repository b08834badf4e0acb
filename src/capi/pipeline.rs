//! Pipelines: a local model package or a remote image service behind one handle, generating
//! images with progress and cancellation.
use std::ffi::{c_char, c_void};
use std::path::Path;
use std::sync::Arc;

use super::{
    arg_mut, arg_ref, arg_str, boundary, dg_cancel_token_t, dg_error_t, dg_images_t, dg_params_t,
    dg_runtime_t, guard, out_param, write_out,
};
use crate::generators::{self, Generator, GeneratorOptions};
use crate::{Pipeline, Progress};

/// What draws the images: a model package loaded on a runtime (`dg_pipeline_load`) or a remote
/// service (`dg_pipeline_new_remote`). Thread-safe: many threads may call `dg_pipeline_generate`
/// on one pipeline at once (weights and connections are shared; each request has its own
/// scheduler and noise). Holds its runtime alive. Free it with `dg_pipeline_free` once no generate
/// on it is running.
pub struct dg_pipeline_t {
    // A local `Pipeline` owns an `Arc` of its runtime, which is what lets the runtime be freed first.
    pub(crate) inner: Arc<dyn Generator>,
}

/// Settings of a remote pipeline, by string key (`dg_generator_options_set`). A builder: use one
/// from one thread at a time; `dg_pipeline_new_remote` copies it.
pub struct dg_generator_options_t {
    options: GeneratorOptions,
}

/// Progress of a running request, passed to the progress callback after every denoising step.
/// Starts with its size so fields can be appended in later versions: read a field only if
/// `struct_size` covers it.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct dg_progress_t {
    /// `sizeof(dg_progress_t)` as the library was built.
    pub struct_size: u32,
    /// Denoising steps finished so far (1 after the first step).
    pub step: u32,
    /// Denoising steps in the request.
    pub total: u32,
    /// Seconds since the request started.
    pub elapsed_seconds: f64,
    /// The plan stage running (1-based; 1 without a plan). Check `struct_size` before reading.
    pub stage: u32,
    /// Stages in the request (1 without a plan).
    pub stages: u32,
}

impl From<&Progress> for dg_progress_t {
    fn from(p: &Progress) -> Self {
        dg_progress_t {
            struct_size: size_of::<dg_progress_t>() as u32,
            step: u32::try_from(p.step).unwrap_or(u32::MAX),
            total: u32::try_from(p.total).unwrap_or(u32::MAX),
            elapsed_seconds: p.elapsed.as_secs_f64(),
            stage: u32::try_from(p.stage).unwrap_or(u32::MAX),
            stages: u32::try_from(p.stages).unwrap_or(u32::MAX),
        }
    }
}

/// Progress callback: called on the generating thread after every denoising step (remote
/// pipelines: once per image received) with a
/// `progress` valid only during the call, and the `user_data` given to `dg_pipeline_generate`.
/// Return true to go on, false to cancel the request. It is never called after
/// `dg_pipeline_generate` returns. It must not unwind or longjmp out of the call.
pub type dg_progress_fn =
    Option<unsafe extern "C" fn(progress: *const dg_progress_t, user_data: *mut c_void) -> bool>;

/// Loads the model package in directory `model_dir` (UTF-8; optimum/diffusers ONNX layout) on
/// `rt`, building one ONNX Runtime session per component. The pipeline goes to `*out`.
///
/// # Safety
/// `rt` is NULL or a live runtime; `model_dir` is NULL or a NUL-terminated string; `out` is NULL
/// or valid for writing a pointer.
#[no_mangle]
pub unsafe extern "C" fn dg_pipeline_load(
    rt: *const dg_runtime_t,
    model_dir: *const c_char,
    out: *mut *mut dg_pipeline_t,
) -> *mut dg_error_t {
    boundary(|| {
        let rt = arg_ref(rt, "rt")?;
        let model_dir = arg_str(model_dir, "model_dir")?;
        let out = out_param(out, "out")?;
        let pipeline = Pipeline::load(rt.inner.clone(), Path::new(model_dir))?;
        write_out(
            out,
            dg_pipeline_t {
                inner: Arc::new(pipeline),
            },
        )
    })
}

/// Creates empty remote-pipeline options in `*out`.
///
/// # Safety
/// `out` is NULL or valid for writing a pointer.
#[no_mangle]
pub unsafe extern "C" fn dg_generator_options_new(
    out: *mut *mut dg_generator_options_t,
) -> *mut dg_error_t {
    boundary(|| {
        let out = out_param(out, "out")?;
        write_out(
            out,
            dg_generator_options_t {
                options: GeneratorOptions::new(),
            },
        )
    })
}

/// Sets a remote-pipeline option; an empty value removes it. Keys: "base_url", "api_key",
/// "model", "timeout_s", "max_retries", "max_in_flight", "pool_file" and each backend's own
/// (docs/backends.md); they are checked by `dg_pipeline_new_remote`. Options not set there come
/// from `DG_<BACKEND>_*` environment variables.
///
/// # Safety
/// `opts` is NULL or live options; `key` and `value` are NULL or NUL-terminated strings.
#[no_mangle]
pub unsafe extern "C" fn dg_generator_options_set(
    opts: *mut dg_generator_options_t,
    key: *const c_char,
    value: *const c_char,
) -> *mut dg_error_t {
    boundary(|| {
        let opts = arg_mut(opts, "opts")?;
        let (key, value) = (arg_str(key, "key")?, arg_str(value, "value")?);
        opts.options.set(key, value);
        Ok(())
    })
}

/// Frees options. NULL is a no-op.
///
/// # Safety
/// `opts` is NULL or came from `dg_generator_options_new` and is freed at most once.
#[no_mangle]
pub unsafe extern "C" fn dg_generator_options_free(opts: *mut dg_generator_options_t) {
    super::free_handle(opts)
}

/// Creates a pipeline that sends requests to a remote image service: `backend` is "openai"
/// (OpenAI Images or any compatible server) or "gemini"; `opts` (nullable) as
/// `dg_generator_options_set`. Nothing is sent until the first generate. Fields a service cannot
/// honour are `DG_ERROR_UNSUPPORTED` at generate time unless the params set "best_effort".
///
/// # Safety
/// `backend` is NULL or a NUL-terminated string; `opts` is NULL or live options; `out` is NULL or
/// valid for writing a pointer.
#[no_mangle]
pub unsafe extern "C" fn dg_pipeline_new_remote(
    backend: *const c_char,
    opts: *const dg_generator_options_t,
    out: *mut *mut dg_pipeline_t,
) -> *mut dg_error_t {
    boundary(|| {
        let backend = arg_str(backend, "backend")?;
        let out = out_param(out, "out")?;
        let default = GeneratorOptions::new();
        let options = opts.as_ref().map_or(&default, |o| &o.options);
        let inner = generators::remote(backend, options)?;
        write_out(out, dg_pipeline_t { inner })
    })
}

/// What draws this pipeline's images: "local", "openai" or "gemini", a static string; "" when `p`
/// is NULL.
///
/// # Safety
/// `p` is NULL or a live pipeline.
#[no_mangle]
pub unsafe extern "C" fn dg_pipeline_kind(p: *const dg_pipeline_t) -> *const c_char {
    guard(c"".as_ptr(), || {
        match p.as_ref().map(|p| p.inner.describe().kind) {
            Some("local") => c"local".as_ptr(),
            Some("openai") => c"openai".as_ptr(),
            Some("gemini") => c"gemini".as_ptr(),
            _ => c"".as_ptr(),
        }
    })
}

/// Frees a pipeline (and its runtime, if the runtime was already freed). NULL is a no-op. Must not
/// race with a `dg_pipeline_generate` on the same pipeline.
///
/// # Safety
/// `p` is NULL or came from `dg_pipeline_load`, is freed at most once, and no call is using it.
#[no_mangle]
pub unsafe extern "C" fn dg_pipeline_free(p: *mut dg_pipeline_t) {
    super::free_handle(p)
}

/// Runs one request (text-to-image, or an edit when the params carry an init image): `params` is copied at the start, so the caller may reuse it
/// afterwards. `progress` (nullable) is called after every denoising step with `user_data`;
/// returning false cancels. `cancel` (nullable) may be raised from any thread. A cancelled request
/// returns `DG_ERROR_CANCELLED`. The images go to `*out`; free them with `dg_images_free`.
/// Thread-safe: many threads may generate on one pipeline at once.
///
/// # Safety
/// `p`, `params` and `cancel` are NULL or live handles; `progress` is NULL or a function that can be
/// called with `user_data` from this thread; `out` is NULL or valid for writing a pointer.
#[no_mangle]
pub unsafe extern "C" fn dg_pipeline_generate(
    p: *const dg_pipeline_t,
    params: *const dg_params_t,
    progress: dg_progress_fn,
    user_data: *mut c_void,
    cancel: *const dg_cancel_token_t,
    out: *mut *mut dg_images_t,
) -> *mut dg_error_t {
    boundary(|| {
        let pipeline = arg_ref(p, "p")?;
        let mut request = arg_ref(params, "params")?.request.clone();
        let out = out_param(out, "out")?;
        request.cancel = cancel.as_ref().map(|c| c.token.clone());
        // The closure borrows nothing that outlives this call, so the callback cannot run later.
        let mut on_progress = |report: &Progress| match progress {
            Some(callback) => callback(&dg_progress_t::from(report), user_data),
            None => true,
        };
        let output = pipeline.inner.generate(&request, &mut on_progress)?;
        write_out(out, dg_images_t::new(output))
    })
}
