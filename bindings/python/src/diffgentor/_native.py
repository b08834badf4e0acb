"""Finding and loading libdiffgentor, and the ctypes prototypes of its C ABI (include/diffgentor.h).

The library is loaded lazily, on the first call that needs it (creating a Runtime or a CancelToken,
``diffgentor.library_version()``), so ``import diffgentor`` works without it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import importlib.util
import os
import re
import sys
import threading
from ctypes import (
    CFUNCTYPE,
    POINTER,
    Structure,
    c_bool,
    c_char_p,
    c_double,
    c_float,
    c_int,
    c_int64,
    c_size_t,
    c_uint8,
    c_uint32,
    c_uint64,
    c_void_p,
)
from typing import Any, Dict, List, Mapping, Optional, Tuple

from ._errors import ErrorCode, InvalidArgError, LibraryNotFoundError, error_from_code

#: The ABI (SONAME major version) this binding is written against: ``DG_VERSION_MAJOR``.
ABI_VERSION = 0

#: Environment variable naming the library file, or a directory that holds it.
LIBRARY_PATH_ENV = "DG_LIBRARY_PATH"

if sys.platform == "darwin":  # pragma: no cover - the library is built and tested on Linux
    LIBRARY_NAMES: Tuple[str, ...] = ("libdiffgentor.0.dylib", "libdiffgentor.dylib")
else:
    LIBRARY_NAMES = ("libdiffgentor.so.0", "libdiffgentor.so")

#: Where a packager may bundle the library inside the installed package.
BUNDLED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib")

#: Variables libdiffgentor itself reads for ONNX Runtime's path (src/runtime/library.rs), in order.
ORT_PATH_ENVS = ("DG_ORT_DYLIB_PATH", "ORT_DYLIB_PATH")

#: The file names libdiffgentor looks for next to itself and the executable (src/runtime/library.rs).
ORT_LIBRARY_NAMES = ("libonnxruntime.so.1.31.1", "libonnxruntime.so.1", "libonnxruntime.so")


class DgProgress(Structure):
    """``dg_progress_t``. The library reports its own ``struct_size``: a field past it (an older
    library) must not be read."""

    _fields_ = [
        ("struct_size", c_uint32),
        ("step", c_uint32),
        ("total", c_uint32),
        ("elapsed_seconds", c_double),
        ("stage", c_uint32),
        ("stages", c_uint32),
    ]


#: ``dg_progress_fn``: ``bool (*)(const dg_progress_t *, void *)``.
PROGRESS_FN = CFUNCTYPE(c_bool, POINTER(DgProgress), c_void_p)


class DgVlmToken(Structure):
    """``dg_vlm_token_t``. As for ``dg_progress_t``, a field past the library's ``struct_size`` must
    not be read. ``text`` is read with its length (it may hold NUL bytes), so it is a plain pointer."""

    _fields_ = [
        ("struct_size", c_uint32),
        ("index", c_uint32),
        ("token_id", c_int64),
        ("text", c_void_p),
        ("text_len", c_size_t),
    ]


#: ``dg_vlm_token_fn``: ``bool (*)(const dg_vlm_token_t *, void *)``.
VLM_TOKEN_FN = CFUNCTYPE(c_bool, POINTER(DgVlmToken), c_void_p)

_H = c_void_p  # every opaque handle, and dg_error_t * results
_OUT = POINTER(c_void_p)  # T **out

# name -> (restype, argtypes), in the header's order. tests/test_library.py checks that this covers
# every function include/diffgentor.h declares.
PROTOTYPES: Dict[str, Tuple[Any, List[Any]]] = {
    "dg_version": (c_char_p, []),
    "dg_abi_version": (c_uint32, []),
    "dg_error_code": (c_int, [_H]),
    "dg_error_message": (c_char_p, [_H]),
    "dg_error_free": (None, [_H]),
    "dg_runtime_options_new": (_H, [_OUT]),
    "dg_runtime_options_free": (None, [_H]),
    "dg_runtime_options_set_ort_library": (_H, [_H, c_char_p]),
    "dg_runtime_options_set_execution_provider": (_H, [_H, c_char_p]),
    "dg_runtime_options_set_allow_cpu_fallback": (_H, [_H, c_bool]),
    "dg_runtime_options_set_intra_threads": (_H, [_H, c_uint32]),
    "dg_runtime_options_set_tensorrt_fp16": (_H, [_H, c_bool]),
    "dg_runtime_options_set_tensorrt_engine_cache": (_H, [_H, c_char_p]),
    "dg_runtime_options_set": (_H, [_H, c_char_p, c_char_p]),
    "dg_runtime_new": (_H, [_H, _OUT]),
    "dg_runtime_free": (None, [_H]),
    "dg_params_new": (_H, [_OUT]),
    "dg_params_free": (None, [_H]),
    "dg_params_set_prompt": (_H, [_H, c_char_p]),
    "dg_params_set_negative_prompt": (_H, [_H, c_char_p]),
    "dg_params_set_steps": (_H, [_H, c_uint32]),
    "dg_params_set_guidance_scale": (_H, [_H, c_float]),
    "dg_params_set_size": (_H, [_H, c_uint32, c_uint32]),
    "dg_params_set_seed": (_H, [_H, c_uint64]),
    "dg_params_set_num_images": (_H, [_H, c_uint32]),
    "dg_params_set_scheduler": (_H, [_H, c_char_p]),
    "dg_params_set": (_H, [_H, c_char_p, c_char_p]),
    "dg_params_set_init_image": (_H, [_H, POINTER(c_uint8), c_uint32, c_uint32, c_uint32, c_size_t]),
    "dg_params_set_mask": (_H, [_H, POINTER(c_uint8), c_uint32, c_uint32, c_uint32, c_size_t]),
    "dg_params_set_strength": (_H, [_H, c_double]),
    "dg_params_set_image_guidance_scale": (_H, [_H, c_float]),
    "dg_params_set_plan": (_H, [_H, c_char_p]),
    "dg_params_add_lora": (_H, [_H, c_char_p, c_float]),
    "dg_params_clear_loras": (_H, [_H]),
    "dg_cancel_token_new": (_H, [_OUT]),
    "dg_cancel_token_cancel": (None, [_H]),
    "dg_cancel_token_free": (None, [_H]),
    "dg_pipeline_load": (_H, [_H, c_char_p, _OUT]),
    "dg_generator_options_new": (_H, [_OUT]),
    "dg_generator_options_set": (_H, [_H, c_char_p, c_char_p]),
    "dg_generator_options_free": (None, [_H]),
    "dg_pipeline_new_remote": (_H, [c_char_p, _H, _OUT]),
    "dg_pipeline_kind": (c_char_p, [_H]),
    "dg_pipeline_free": (None, [_H]),
    "dg_pipeline_generate": (_H, [_H, _H, PROGRESS_FN, c_void_p, _H, _OUT]),
    "dg_images_count": (c_size_t, [_H]),
    "dg_images_get": (_H, [_H, c_size_t]),
    "dg_images_seed": (c_uint64, [_H]),
    "dg_images_metadata": (c_char_p, [_H]),
    "dg_images_free": (None, [_H]),
    "dg_image_width": (c_uint32, [_H]),
    "dg_image_height": (c_uint32, [_H]),
    "dg_image_channels": (c_uint32, [_H]),
    "dg_image_stride": (c_size_t, [_H]),
    "dg_image_pixels": (POINTER(c_uint8), [_H]),
    "dg_image_write_png": (_H, [_H, c_char_p]),
    "dg_image_write_jpeg": (_H, [_H, c_char_p, c_uint8]),
    "dg_image_encode_png": (_H, [_H, _OUT]),
    "dg_image_encode_jpeg": (_H, [_H, c_uint8, _OUT]),
    "dg_buffer_data": (POINTER(c_uint8), [_H]),
    "dg_buffer_len": (c_size_t, [_H]),
    "dg_buffer_free": (None, [_H]),
    "dg_vlm_load": (_H, [_H, c_char_p, _OUT]),
    "dg_vlm_info": (c_char_p, [_H]),
    "dg_vlm_free": (None, [_H]),
    "dg_vlm_params_new": (_H, [_OUT]),
    "dg_vlm_params_new_enhance": (_H, [c_char_p, c_char_p, _OUT]),
    "dg_vlm_params_free": (None, [_H]),
    "dg_vlm_params_add_text": (_H, [_H, c_char_p, c_char_p]),
    "dg_vlm_params_add_image": (_H, [_H, c_char_p, POINTER(c_uint8), c_uint32, c_uint32, c_uint32, c_size_t]),
    "dg_vlm_params_add_image_encoded": (_H, [_H, c_char_p, POINTER(c_uint8), c_size_t]),
    "dg_vlm_params_add_image_file": (_H, [_H, c_char_p, c_char_p]),
    "dg_vlm_params_set": (_H, [_H, c_char_p, c_char_p]),
    "dg_vlm_generate": (_H, [_H, _H, VLM_TOKEN_FN, c_void_p, _H, _OUT]),
    # The text may hold NUL bytes: read as a pointer and a length (ctypes.string_at).
    "dg_vlm_result_text": (c_void_p, [_H, POINTER(c_size_t)]),
    "dg_vlm_result_token_ids": (POINTER(c_int64), [_H, POINTER(c_size_t)]),
    "dg_vlm_result_prompt_tokens": (c_size_t, [_H]),
    "dg_vlm_result_finish_reason": (c_char_p, [_H]),
    "dg_vlm_result_timings": (c_char_p, [_H]),
    "dg_vlm_result_enhanced_prompt": (c_char_p, [_H]),
    "dg_vlm_result_free": (None, [_H]),
    "dg_pipeline_lora_load": (_H, [_H, c_char_p, c_char_p, c_uint32]),
    "dg_pipeline_lora_unload": (_H, [_H, c_char_p]),
    # The JSON string is the caller's: read as a pointer (ctypes.string_at), freed with dg_string_free.
    "dg_pipeline_lora_list": (_H, [_H, _OUT]),
    "dg_pipeline_lora_set_default": (_H, [_H, c_char_p]),
    "dg_string_free": (None, [_H]),
}

#: ``DG_LORA_ALLOW_PARTIAL``: the flag of ``dg_pipeline_lora_load``.
LORA_ALLOW_PARTIAL = 1


def candidates(env_value: Optional[str], bundled_dir: str) -> List[Tuple[str, List[str]]]:
    """The discovery order as (where, [names to dlopen]) groups.

    ``DG_LIBRARY_PATH`` (a file, or a directory holding ``libdiffgentor.so.0``/``.so``), when set,
    is the only place searched: a wrong value is an error rather than a silent fallback to another
    build. Otherwise the copy bundled in the package's ``lib/`` directory, then the system loader
    (``LD_LIBRARY_PATH``, the ldconfig cache, ...).
    """
    if env_value:
        if os.path.isdir(env_value):
            names = [os.path.join(env_value, n) for n in LIBRARY_NAMES]
        else:
            names = [env_value]
        return [(f"{LIBRARY_PATH_ENV}={env_value}", names)]
    groups = [(f"bundled copy in {bundled_dir}", [os.path.join(bundled_dir, n) for n in LIBRARY_NAMES])]
    system = list(LIBRARY_NAMES[:1])
    found = ctypes.util.find_library("diffgentor")
    if found and found not in system:
        system.append(found)
    groups.append(("system loader (LD_LIBRARY_PATH, ldconfig cache)", system))
    return groups


def onnxruntime_package_library() -> Optional[str]:
    """libonnxruntime inside the installed ``onnxruntime`` PyPI package (``onnxruntime/capi/``, where
    its wheel keeps ``libonnxruntime.so.X.Y.Z``), or None. The package is located, never imported:
    importing it would pull in numpy and its own bindings for nothing."""
    try:
        spec = importlib.util.find_spec("onnxruntime")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    pattern = "libonnxruntime.*.dylib" if sys.platform == "darwin" else "libonnxruntime.so.*"
    for package_dir in spec.submodule_search_locations:
        found = []
        for path in glob.glob(os.path.join(package_dir, "capi", pattern)):
            # libonnxruntime.so.1.31.1 -> (1, 31, 1); libonnxruntime_providers_*.so is not matched.
            numbers = re.findall(r"\d+", os.path.basename(path)[len("libonnxruntime"):])
            if numbers and os.path.isfile(path):
                found.append((tuple(int(n) for n in numbers), path))
        if found:
            return max(found)[1]
    return None


def default_ort_library(library_file: str, environ: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """The ONNX Runtime the binding passes when the caller names none: the installed ``onnxruntime``
    package's copy (the platform wheel depends on it), but only where libdiffgentor's own discovery
    would otherwise fall through to the system loader. DG_ORT_DYLIB_PATH and ORT_DYLIB_PATH (even
    naming a missing file: that stays the library's error), and a copy next to libdiffgentor or
    the executable, keep precedence: None then leaves the choice to the library."""
    env = os.environ if environ is None else environ
    if any(env.get(name) for name in ORT_PATH_ENVS):
        return None
    dirs = [os.path.dirname(os.path.abspath(library_file)), os.path.dirname(os.path.realpath(sys.executable))]
    if any(os.path.isfile(os.path.join(d, n)) for d in dirs for n in ORT_LIBRARY_NAMES):
        return None
    return onnxruntime_package_library()


def _bind(lib: ctypes.CDLL) -> None:
    for name, (restype, argtypes) in PROTOTYPES.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes


def load(env_value: Optional[str], bundled_dir: str) -> Tuple[ctypes.CDLL, str]:
    """Loads the first working library in the discovery order; raises LibraryNotFoundError listing
    every place it looked and why each failed."""
    tried: List[str] = []
    for where, names in candidates(env_value, bundled_dir):
        for name in names:
            is_path = os.sep in name
            if is_path and not os.path.exists(name):
                tried.append(f"{name}: no such file ({where})")
                continue
            try:
                lib = ctypes.CDLL(name)  # CDLL: the GIL is released during every call
            except OSError as e:
                tried.append(f"{name}: {e} ({where})")
                continue
            try:
                _bind(lib)
            except AttributeError as e:
                tried.append(f"{name}: not a diffgentor library of this version: {e} ({where})")
                continue
            abi = lib.dg_abi_version()
            if abi != ABI_VERSION:
                tried.append(f"{name}: ABI {abi}, this binding needs ABI {ABI_VERSION} ({where})")
                continue
            return lib, _path_of(lib, name)
    raise LibraryNotFoundError(
        "libdiffgentor not found; set DG_LIBRARY_PATH to the library file or its directory "
        "(e.g. target/release after `make c-lib`). Looked in:\n  " + "\n  ".join(tried),
        tried,
    )


def _path_of(lib: ctypes.CDLL, name: str) -> str:
    """The file the loader actually opened (resolves sonames found through the system loader)."""
    if os.sep in name:
        return os.path.abspath(name)
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            for line in maps:
                path = line.rstrip("\n").split(None, 5)[-1]
                if os.path.basename(path).startswith("libdiffgentor."):
                    return path
    except OSError:  # pragma: no cover - no procfs
        pass
    return name  # pragma: no cover


_lock = threading.Lock()
_lib: Optional[ctypes.CDLL] = None
_lib_path: Optional[str] = None


def lib() -> ctypes.CDLL:
    """The loaded library (loading it on first use, once per process)."""
    global _lib, _lib_path
    if _lib is not None:
        return _lib
    with _lock:
        if _lib is None:
            loaded, path = load(os.environ.get(LIBRARY_PATH_ENV), BUNDLED_DIR)
            _lib_path = path
            _lib = loaded
    return _lib


def lib_path() -> str:
    lib()
    assert _lib_path is not None
    return _lib_path


def encode(value: Any, what: str) -> bytes:
    """A str or path as NUL-terminated UTF-8 for the C API; raises InvalidArgError (naming `what`)
    for an embedded NUL or text that is not encodable, TypeError for a non-string."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, bytes):
        raw = value
    elif isinstance(value, str):
        try:
            raw = value.encode("utf-8")
        except UnicodeEncodeError as e:
            raise InvalidArgError(f"{what} is not valid UTF-8: {e}", ErrorCode.INVALID_ARG) from None
    else:
        raise TypeError(f"{what} must be str, not {type(value).__name__}")
    if b"\0" in raw:
        raise InvalidArgError(f"{what} contains a NUL character", ErrorCode.INVALID_ARG)
    return raw


def check(err: Optional[int]) -> None:
    """Raises the Error for a ``dg_error_t *`` result (and frees it); None (NULL) is success."""
    if not err:
        return
    l = lib()
    try:
        code = l.dg_error_code(err)
        raw = l.dg_error_message(err) or b""
        message = raw.decode("utf-8", errors="replace")
    finally:
        l.dg_error_free(err)
    raise error_from_code(code, message)

