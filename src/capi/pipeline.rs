//! Pipelines: loading a model package and generating images with progress and cancellation.
use std::ffi::{c_char, c_void};
use std::path::Path;
use std::sync::Arc;

use super::{
    arg_ref, arg_str, boundary, dg_cancel_token_t, dg_error_t, dg_images_t, dg_params_t,
    dg_runtime_t, out_param, write_out,
};
use crate::{Pipeline, Progress};

/// A model package loaded on a runtime. Thread-safe: many threads may call `dg_pipeline_generate`
/// on one pipeline at once (weights are shared; each request has its own scheduler and noise).
/// Holds its runtime alive. Free it with `dg_pipeline_free` once no generate on it is running.
pub struct dg_pipeline_t {
    // `Pipeline` owns an `Arc` of its runtime, which is what lets the runtime be freed first.
    inner: Arc<Pipeline>,
}

// Concurrent generate on one pipeline relies on this.
const _: fn() = || {
    fn thread_safe<T: Send + Sync>() {}
    thread_safe::<Pipeline>();
};

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
}

impl From<&Progress> for dg_progress_t {
    fn from(p: &Progress) -> Self {
        dg_progress_t {
            struct_size: size_of::<dg_progress_t>() as u32,
            step: u32::try_from(p.step).unwrap_or(u32::MAX),
            total: u32::try_from(p.total).unwrap_or(u32::MAX),
            elapsed_seconds: p.elapsed.as_secs_f64(),
        }
    }
}

/// Progress callback: called on the generating thread after every denoising step with a
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

/// Frees a pipeline (and its runtime, if the runtime was already freed). NULL is a no-op. Must not
/// race with a `dg_pipeline_generate` on the same pipeline.
///
/// # Safety
/// `p` is NULL or came from `dg_pipeline_load`, is freed at most once, and no call is using it.
#[no_mangle]
pub unsafe extern "C" fn dg_pipeline_free(p: *mut dg_pipeline_t) {
    super::free_handle(p)
}

/// Runs one text-to-image request: `params` is copied at the start, so the caller may reuse it
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
        let output = pipeline
            .inner
            .generate_with_progress(&request, &mut on_progress)?;
        write_out(out, dg_images_t::new(output.images, output.seed))
    })
}
