"""Errors: one exception class per DG_ERROR_* code, each carrying the numeric code."""

from __future__ import annotations

import pickle
import re
from typing import Any, Dict

import pytest

import diffgentor
from diffgentor import ErrorCode
from conftest import FOX, FOX_PROMPT, HEADER, MODELS

CLASSES = {
    ErrorCode.NULL_ARG: diffgentor.NullArgError,
    ErrorCode.INVALID_ARG: diffgentor.InvalidArgError,
    ErrorCode.IO: diffgentor.IoError,
    ErrorCode.MODEL: diffgentor.ModelError,
    ErrorCode.UNSUPPORTED: diffgentor.UnsupportedError,
    ErrorCode.EP_UNAVAILABLE: diffgentor.EpUnavailableError,
    ErrorCode.CANCELLED: diffgentor.CancelledError,
    ErrorCode.BACKEND: diffgentor.BackendError,
    ErrorCode.PANIC: diffgentor.PanicError,
    ErrorCode.REMOTE: diffgentor.RemoteError,
    ErrorCode.RATE_LIMITED: diffgentor.RateLimitedError,
    ErrorCode.TIMEOUT: diffgentor.RemoteTimeoutError,
    ErrorCode.REFUSED: diffgentor.RefusedError,
}


def test_error_codes_mirror_the_header() -> None:
    if not HEADER.exists():
        pytest.skip("include/diffgentor.h not in this checkout")
    found = dict(re.findall(r"DG_ERROR_([A-Z_]+) = (\d+),", HEADER.read_text()))
    assert found, "no dg_error_code_t values found in the header"
    assert {name: int(value) for name, value in found.items()} == {c.name: c.value for c in ErrorCode}


@pytest.mark.parametrize("code", list(CLASSES))
def test_class_per_code(code: ErrorCode) -> None:
    from diffgentor._errors import error_from_code

    err = error_from_code(int(code), "boom")
    assert type(err) is CLASSES[code] and isinstance(err, diffgentor.Error)
    assert err.code is code and str(err) == "boom" and err.message == "boom"
    assert code.name in repr(err)
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is type(err) and again.code is code and again.message == "boom"


def test_unknown_code_from_a_newer_library() -> None:
    from diffgentor._errors import error_from_code

    err = error_from_code(42, "new")
    assert type(err) is diffgentor.Error and "42" in str(err)


def test_missing_model_is_model_error(runtime: diffgentor.Runtime, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(diffgentor.ModelError) as info:
        runtime.load(tmp_path / "no-such-model")
    assert info.value.code is ErrorCode.MODEL and int(info.value.code) == 4
    assert "no-such-model" in str(info.value)
    with pytest.raises(diffgentor.ModelError):
        diffgentor.Pipeline(runtime, MODELS)  # a directory, but no model_index.json


def test_unknown_extra_key_names_it(tiny: diffgentor.Pipeline) -> None:
    with pytest.raises(diffgentor.InvalidArgError, match="no_such_key") as info:
        tiny.generate(FOX_PROMPT, **FOX, extra={"no_such_key": "1"})
    assert info.value.code == ErrorCode.INVALID_ARG
    with pytest.raises(diffgentor.InvalidArgError, match="steps"):
        tiny.generate(FOX_PROMPT, extra={"steps": "many"})


def test_cuda_on_cpu_onnxruntime(runtime: diffgentor.Runtime) -> None:
    try:
        with diffgentor.Runtime("cuda"):
            pytest.skip("this ONNX Runtime has CUDA: nothing to check")
    except diffgentor.EpUnavailableError as e:
        assert e.code is ErrorCode.EP_UNAVAILABLE and int(e.code) == 6
        assert "cuda" in str(e).lower()
    # allow_cpu_fallback turns the same request into a working CPU runtime
    with diffgentor.Runtime("cuda", allow_cpu_fallback=True) as rt, rt.load(MODELS / "tiny-sd") as pipe:
        assert len(pipe.generate(FOX_PROMPT, seed=1, steps=1, output="raw")) == 1


def test_unknown_execution_provider(runtime: diffgentor.Runtime) -> None:
    with pytest.raises(diffgentor.InvalidArgError):
        diffgentor.Runtime("quantum")


def test_second_onnxruntime_library_is_backend_error(runtime: diffgentor.Runtime, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(diffgentor.BackendError) as info:
        diffgentor.Runtime(ort_library=tmp_path / "libonnxruntime.so")
    assert info.value.code == ErrorCode.BACKEND


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        (dict(width=65), "65"),
        (dict(width=64, height=60), "60"),
        (dict(steps=0), "steps"),
        (dict(steps=1001), "steps"),
        (dict(num_images=0), "images"),
        (dict(scheduler="no-such-scheduler"), "no-such-scheduler"),
        (dict(steps=-1), "steps"),  # checked in Python: ctypes would wrap it to 2**32 - 1
        (dict(seed=-5), "seed"),
        (dict(seed=2**64), "seed"),
    ],
)
def test_invalid_request_values(tiny: diffgentor.Pipeline, kwargs: Dict[str, Any], needle: str) -> None:
    args = {**FOX, **kwargs}
    with pytest.raises(diffgentor.InvalidArgError, match=needle) as info:
        tiny.generate(FOX_PROMPT, **args)
    assert info.value.code == ErrorCode.INVALID_ARG


def test_strings_the_c_api_cannot_take(tiny: diffgentor.Pipeline) -> None:
    with pytest.raises(diffgentor.InvalidArgError, match="NUL"):
        tiny.generate("a red\0fox", **FOX)
    with pytest.raises(diffgentor.InvalidArgError, match="UTF-8"):
        tiny.generate("a lone surrogate \ud800", **FOX)
    with pytest.raises(TypeError):
        tiny.generate(42, **FOX)  # type: ignore[call-overload]
    with pytest.raises(TypeError):
        tiny.generate(FOX_PROMPT, steps=2.5)  # type: ignore[call-overload]
    with pytest.raises(TypeError):
        tiny.generate(FOX_PROMPT, extra={"steps": [3]})


def test_unicode_prompt_works(tiny: diffgentor.Pipeline) -> None:
    assert len(tiny.generate("ein rotér Fuchs 🦊", seed=1, steps=1, output="raw")) == 1
