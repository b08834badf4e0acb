//! Runtime options and the runtime: ONNX Runtime loaded with an execution provider.
use std::ffi::c_char;
use std::path::PathBuf;
use std::sync::Arc;

use super::{arg_mut, arg_str, boundary, dg_error_t, out_param, write_out, FfiResult};
use crate::runtime::RuntimeConfig;
use crate::{ExecutionProvider, Runtime, RuntimeOptions};

/// Options for `dg_runtime_new`: a builder. Not thread-safe: use one from one thread at a time.
/// `dg_runtime_new` copies it, so it may be freed (or reused) right after.
pub struct dg_runtime_options_t {
    config: RuntimeConfig,
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
                config: RuntimeConfig::default(),
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
        o.config.options.ort_library = Some(PathBuf::from(arg_str(path, "path")?));
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
        o.config.options.execution_provider = arg_str(ep, "ep")?.parse::<ExecutionProvider>()?;
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
        o.config.options.allow_cpu_fallback = allow;
        Ok(())
    })
}

/// Intra-op threads per ONNX Runtime session; 0 = ONNX Runtime's default (one per physical core).
/// More than 1024 makes `dg_runtime_new` fail with `DG_ERROR_INVALID_ARG`.
///
/// # Safety
/// `opts` is NULL or live options.
#[no_mangle]
pub unsafe extern "C" fn dg_runtime_options_set_intra_threads(
    opts: *mut dg_runtime_options_t,
    threads: u32,
) -> *mut dg_error_t {
    with_opts(opts, |o| {
        o.config.options.intra_threads = (threads > 0).then_some(threads as usize);
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
        o.config.tensorrt.fp16 = fp16;
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
        o.config.tensorrt.engine_cache_dir = Some(PathBuf::from(arg_str(dir, "dir")?));
        Ok(())
    })
}

/// Sets any runtime option by string key and value, e.g.
/// `dg_runtime_options_set(opts, "sessions_per_graph", "2")`.
///
/// Keys: "ort_library" (path; "" clears it), "execution_provider" (as
/// `dg_runtime_options_set_execution_provider`), "allow_cpu_fallback" (boolean), "intra_threads"
/// (0 = ONNX Runtime's default, at most 1024), "optimization" ("disable", "basic", "extended",
/// "layout" or "all"), "no_spinning" (boolean: idle ONNX Runtime threads do not spin-wait), "sessions_per_graph"
/// (1 to 64: sessions per graph, so that many concurrent requests run a graph at once; each holds
/// its own copy of the weights), "optimized_graph_cache" (directory for ONNX Runtime's optimized
/// graphs; "" turns it off), "tensorrt_fp16" (boolean) and "tensorrt_engine_cache" (directory).
/// Booleans are true/false, 1/0, yes/no or on/off. An unknown key is `DG_ERROR_INVALID_ARG` listing
/// the keys; an unparsable value is `DG_ERROR_INVALID_ARG` naming key and value.
///
/// # Safety
/// `opts` is NULL or live options; `key` and `value` are NULL or NUL-terminated strings.
#[no_mangle]
pub unsafe extern "C" fn dg_runtime_options_set(
    opts: *mut dg_runtime_options_t,
    key: *const c_char,
    value: *const c_char,
) -> *mut dg_error_t {
    with_opts(opts, |o| {
        let key = arg_str(key, "key")?;
        let value = arg_str(value, "value")?;
        Ok(o.config.set(key, value)?)
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
            .map_or_else(RuntimeOptions::default, |o| o.config.resolve());
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

#[cfg(test)]
mod tests {
    use std::ffi::CString;
    use std::ptr;

    use super::*;
    use crate::capi::{dg_error_code, dg_error_code_t, dg_error_free, dg_error_message};
    use crate::runtime::{OptimizationLevel, TensorRtOptions};

    fn options() -> dg_runtime_options_t {
        dg_runtime_options_t {
            config: RuntimeConfig::default(),
        }
    }

    /// Calls `dg_runtime_options_set` and returns the error's code and message, if any.
    fn set(
        o: &mut dg_runtime_options_t,
        key: &[u8],
        value: &[u8],
    ) -> Option<(dg_error_code_t, String)> {
        let (key, value) = (CString::new(key).ok()?, CString::new(value).ok()?);
        // SAFETY: `o` is live and both strings are NUL-terminated.
        let err = unsafe { dg_runtime_options_set(o, key.as_ptr(), value.as_ptr()) };
        if err.is_null() {
            return None;
        }
        // SAFETY: a non-null error from the call above, freed once.
        unsafe {
            let message = std::ffi::CStr::from_ptr(dg_error_message(err))
                .to_string_lossy()
                .into_owned();
            let code = dg_error_code(err);
            dg_error_free(err);
            Some((code, message))
        }
    }

    #[test]
    fn every_key_sets_its_option() {
        let mut o = options();
        for (key, value) in [
            ("ort_library", "/opt/ort/libonnxruntime.so"),
            ("execution_provider", "tensorrt:1"),
            ("allow_cpu_fallback", "yes"),
            ("intra_threads", "3"),
            ("optimization", "extended"),
            ("no_spinning", "1"),
            ("sessions_per_graph", "4"),
            ("optimized_graph_cache", "/var/cache/dg"),
            ("tensorrt_fp16", "on"),
            ("tensorrt_engine_cache", "/var/cache/trt"),
        ] {
            assert_eq!(set(&mut o, key.as_bytes(), value.as_bytes()), None, "{key}");
        }
        let r = o.config.resolve();
        assert_eq!(
            r.ort_library,
            Some(PathBuf::from("/opt/ort/libonnxruntime.so"))
        );
        assert!(r.allow_cpu_fallback && r.no_spinning);
        assert_eq!(r.intra_threads, Some(3));
        assert_eq!(r.optimization, OptimizationLevel::Extended);
        assert_eq!(r.sessions_per_graph, 4);
        assert_eq!(
            r.optimized_graph_cache,
            Some(PathBuf::from("/var/cache/dg"))
        );
        assert_eq!(
            r.execution_provider,
            ExecutionProvider::TensorRt {
                device_id: 1,
                options: TensorRtOptions {
                    fp16: true,
                    engine_cache_dir: Some(PathBuf::from("/var/cache/trt")),
                },
            }
        );
        // 0 threads = ONNX Runtime's default; "" clears a path.
        assert_eq!(set(&mut o, b"intra_threads", b"0"), None);
        assert_eq!(set(&mut o, b"optimized_graph_cache", b""), None);
        let r = o.config.resolve();
        assert_eq!((r.intra_threads, r.optimized_graph_cache), (None, None));
    }

    #[test]
    fn bad_keys_and_values_are_invalid_arguments() {
        let mut o = options();
        let invalid = dg_error_code_t::DG_ERROR_INVALID_ARG;
        let (code, message) = set(&mut o, b"session_per_graph", b"2").expect("unknown key");
        assert_eq!(code, invalid);
        assert!(
            message.contains("session_per_graph") && message.contains("sessions_per_graph"),
            "{message}"
        );
        for (key, value) in [
            ("sessions_per_graph", "0"),
            ("sessions_per_graph", "-1"),
            ("intra_threads", "many"),
            ("no_spinning", "maybe"),
            ("optimization", "max"),
            ("execution_provider", "gpu"),
        ] {
            let (code, message) = set(&mut o, key.as_bytes(), value.as_bytes()).expect(key);
            assert_eq!(code, invalid, "{key}={value}: {message}");
            assert!(message.contains(value), "{key}={value}: {message}");
        }
        assert_eq!(
            o.config.resolve().sessions_per_graph,
            1,
            "a rejected value changes nothing"
        );

        let (code, message) = set(&mut o, b"no_spinning", b"tr\xffue").expect("bad UTF-8");
        assert_eq!(code, invalid);
        assert!(
            message.contains("`value`") && message.contains("offset 2"),
            "{message}"
        );

        // SAFETY: NULL handles and strings are checked before use.
        let err = unsafe { dg_runtime_options_set(ptr::null_mut(), c"k".as_ptr(), c"v".as_ptr()) };
        // SAFETY: a non-null error, freed once.
        unsafe {
            assert_eq!(dg_error_code(err), dg_error_code_t::DG_ERROR_NULL_ARG);
            dg_error_free(err);
        }
        let err = unsafe { dg_runtime_options_set(&mut o, c"k".as_ptr(), ptr::null()) };
        // SAFETY: as above.
        unsafe {
            assert_eq!(dg_error_code(err), dg_error_code_t::DG_ERROR_NULL_ARG);
            assert!(std::ffi::CStr::from_ptr(dg_error_message(err))
                .to_string_lossy()
                .contains("`value`"));
            dg_error_free(err);
        }
    }
}
