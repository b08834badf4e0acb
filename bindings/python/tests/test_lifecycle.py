"""Resources: context managers, idempotent close(), the finalizer safety net."""

from __future__ import annotations

import gc

import pytest

import diffgentor
from conftest import FOX_PROMPT, TINY


def test_context_managers_close_handles() -> None:
    with diffgentor.Runtime(intra_threads=1) as rt:
        with rt.load(TINY) as pipe:
            assert not pipe.closed and not rt.closed
            assert "tiny-sd" in repr(pipe) and "cpu" in repr(rt)
            assert len(pipe.generate(FOX_PROMPT, seed=1, steps=1, output="raw")) == 1
        assert pipe.closed and pipe._handle._ptr == 0
        assert "closed" in repr(pipe)
        pipe.close()  # idempotent
        with pytest.raises(diffgentor.NullArgError, match="Pipeline is closed"):
            pipe.generate(FOX_PROMPT)
    assert rt.closed and rt._handle._ptr == 0
    rt.close()
    with pytest.raises(diffgentor.NullArgError, match="Runtime is closed"):
        rt.load(TINY)


def test_pipeline_outlives_its_runtime() -> None:
    rt = diffgentor.Runtime()
    pipe = diffgentor.Pipeline(rt, TINY)
    rt.close()
    assert len(pipe.generate(FOX_PROMPT, seed=1, steps=1, output="raw")) == 1
    pipe.close()


def test_finalizer_frees_forgotten_objects() -> None:
    rt = diffgentor.Runtime()
    pipe = rt.load(TINY)
    token = diffgentor.CancelToken()
    finalizers = [rt._finalizer, pipe._finalizer, token._finalizer]
    assert all(f.alive for f in finalizers)
    del rt, pipe, token
    gc.collect()
    assert not any(f.alive for f in finalizers)


def test_exception_inside_with_still_closes() -> None:
    with pytest.raises(RuntimeError):
        with diffgentor.Runtime() as rt, rt.load(TINY) as pipe:
            raise RuntimeError("boom")
    assert pipe.closed and rt.closed


def test_wrong_types() -> None:
    with pytest.raises(TypeError):
        diffgentor.Pipeline("not a runtime", TINY)  # type: ignore[arg-type]
    with diffgentor.Runtime() as rt, rt.load(TINY) as pipe:
        with pytest.raises(TypeError):
            pipe.generate(FOX_PROMPT, cancel=object())  # type: ignore[call-overload]
        with pytest.raises(TypeError):
            pipe.generate(FOX_PROMPT, progress=42)  # type: ignore[call-overload]
