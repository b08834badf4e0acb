//! Runtime options and the runtime: ONNX Runtime loaded with an execution provider.
use std::ffi::c_char;
use std::path::PathBuf;
use std::sync::Arc;

use super::{arg_mut, arg_str, boundary, dg_error_t, out_param, write_out, FfiResult};
use crate::runtime::TensorRtOptions;
use crate::{ExecutionProvider, Runtime, RuntimeOptions};

/// Options for `dg_runtime_new`: a builder. Not thread-safe: use one from one thread at a time.
/// `dg_runtime_new` copies it, so it may be freed (or reused) right after.
pub struct dg_runtime_options_t {
    options: RuntimeOptions,
    /// Applied when the execution provider is TensorRT, whichever setter was called first.
    tensorrt: TensorRtOptions,
}

impl dg_runtime_options_t {
    /// The options with the TensorRT knobs applied to a TensorRT provider.
    fn resolve(&self) -> RuntimeOptions {
        let mut options = self.options.clone();
        if let ExecutionProvider::TensorRt { options: trt, .. } = &mut options.execution_provider {
            *trt = self.tensorrt.clone();
        }
        options
    }
}

/// A loaded ONNX Runtime with its execution provider. Thread-safe: share one per process. Pipelines
/// keep it alive internally, so it may be freed before or after them.
pub struct dg_runtime_t {
    pub(crate) inner: Arc<Runtime>,
}

/// Creates default options in `*out`: CPU, ONNX Runtime found by the usual discovery
/// (DG_ORT_DYLIB_PATH, ...), no CPU fallback, ONNX Runtime's default thread count.
///
/// # Safety
/// `out` is NULL or valid for writing a pointer.
#[no_mangle]
pub unsafe extern "C" fn dg_runtime_options_new(
    out: *mut *mut dg_runtime_options_t,
) -> *mut dg_error_t {
    boundary(|| {
        let out = out_param(out, "out")?;
        write_out(
            out,
            dg_runtime_options_t {
                options: RuntimeOptions::default(),
                tensorrt: TensorRtOptions::default(),
            },
        )
    })
}

/// Frees options. NULL is a no-op.
///
/// # Safety
/// `opts` is NULL or came from `dg_runtime_options_new` and is freed at most once.
#[no_mangle]
pub unsafe extern "C" fn dg_runtime_options_free(opts: *mut dg_runtime_options_t) {
    super::free_handle(opts)
}

/// Runs a setter body on a checked options handle.
unsafe fn with_opts(
    opts: *mut dg_runtime_options_t,
    set: impl FnOnce(&mut dg_runtime_options_t) -> FfiResult,
) -> *mut dg_error_t {
    boundary(|| set(arg_mut(opts, "opts")?))
}

/// Uses the ONNX Runtime shared library at `path` (UTF-8) instead of the discovery order.
///
/// # Safety
/// `opts` is NULL or live options; `path` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn dg_runtime_options_set_ort_library(
    opts: *mut dg_runtime_options_t,
    path: *const c_char,
) -> *mut dg_error_t {
    with_opts(opts, |o| {
        o.options.ort_library = Some(PathBuf::from(arg_str(path, "path")?));
        Ok(())
    })
}

/// Chooses the execution provider: "cpu", "cuda", "cuda:ID", "tensorrt" or "tensorrt:ID"
/// (case-insensitive). Anything else is `DG_ERROR_INVALID_ARG`. Whether the provider is really
/// available is checked by `dg_runtime_new` (`DG_ERROR_EP_UNAVAILABLE`).
///
/// # Safety
/// `opts` is NULL or live options; `ep` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn dg_runtime_options_set_execution_provider(
    opts: *mut dg_runtime_options_t,
    ep: *const c_char,
) -> *mut dg_error_t {
    with_opts(opts, |o| {
        o.options.execution_provider = arg_str(ep, "ep")?.parse::<ExecutionProvider>()?;
        Ok(())
    })
}

/// Lets the runtime use the CPU when the chosen provider cannot be registered, instead of failing.
///
/// # Safety
/// `opts` is NULL or live options.
#[no_mangle]
pub unsafe extern "C" fn dg_runtime_options_set_allow_cpu_fallback(
    opts: *mut dg_runtime_options_t,
    allow: bool,
) -> *mut dg_error_t {
    with_opts(opts, |o| {
        o.options.allow_cpu_fallback = allow;
        Ok(())
    })
}

/// Intra-op threads per ONNX Runtime session; 0 = ONNX Runtime's default (one per physical core).
///
/// # Safety
/// `opts` is NULL or live options.
#[no_mangle]
pub unsafe extern "C" fn dg_runtime_options_set_intra_threads(
    opts: *mut dg_runtime_options_t,
    threads: u32,
) -> *mut dg_error_t {
    with_opts(opts, |o| {
        o.options.intra_threads = (threads > 0).then_some(threads as usize);
        Ok(())
    })
}

/// Lets TensorRT build fp16 engines where the graph allows (used only with the TensorRT provider).
///
/// # Safety
/// `opts` is NULL or live options.
#[no_mangle]
pub unsafe extern "C" fn dg_runtime_options_set_tensorrt_fp16(
    opts: *mut dg_runtime_options_t,
    fp16: bool,
) -> *mut dg_error_t {
    with_opts(opts, |o| {
        o.tensorrt.fp16 = fp16;
        Ok(())
    })
}

/// Directory (UTF-8) where TensorRT keeps serialized engines and its timing cache, so later loads
/// skip the engine build (used only with the TensorRT provider).
///
/// # Safety
/// `opts` is NULL or live options; `dir` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn dg_runtime_options_set_tensorrt_engine_cache(
    opts: *mut dg_runtime_options_t,
    dir: *const c_char,
) -> *mut dg_error_t {
    with_opts(opts, |o| {
        o.tensorrt.engine_cache_dir = Some(PathBuf::from(arg_str(dir, "dir")?));
        Ok(())
    })
}

/// Loads ONNX Runtime and checks the execution provider; `opts` NULL means defaults. The runtime
/// goes to `*out`; free it with `dg_runtime_free`. ONNX Runtime is loaded once per process: later
/// runtimes share the first library, and naming a different library file is `DG_ERROR_BACKEND`.
///
/// # Safety
/// `opts` is NULL or live options; `out` is NULL or valid for writing a pointer.
#[no_mangle]
pub unsafe extern "C" fn dg_runtime_new(
    opts: *const dg_runtime_options_t,
    out: *mut *mut dg_runtime_t,
) -> *mut dg_error_t {
    boundary(|| {
        let out = out_param(out, "out")?;
        let options = opts
            .as_ref()
            .map_or_else(RuntimeOptions::default, dg_runtime_options_t::resolve);
        let inner = Runtime::new(options)?;
        write_out(out, dg_runtime_t { inner })
    })
}

/// Releases the caller's reference to a runtime. Pipelines loaded on it keep it alive, so any free
/// order is fine. NULL is a no-op.
///
/// # Safety
/// `rt` is NULL or came from `dg_runtime_new` and is freed at most once, with no call using it.
#[no_mangle]
pub unsafe extern "C" fn dg_runtime_free(rt: *mut dg_runtime_t) {
    super::free_handle(rt)
}
