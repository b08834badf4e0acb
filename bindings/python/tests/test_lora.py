"""LoRA adapters through the binding, as tests/c/lora.c: the fox request with
models/lora/sd_a.safetensors at 0.8 (its raw RGB goes to DG_LORA_RGB, which test.sh compares with
the C test's pixels), the default stack, ``loras=[]``, unloading back to the base pixels, errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest

import diffgentor
from conftest import FOX, FOX_PROMPT, MODELS, TINY, write_env_rgb

LORAS = MODELS / "lora"


@pytest.fixture
def pipe(runtime: diffgentor.Runtime) -> Iterator[diffgentor.Pipeline]:
    """A pipeline of its own: adapters loaded here never reach the other tests' pipelines."""
    with runtime.load(TINY) as p:
        yield p


def fox(pipe: diffgentor.Pipeline, **kwargs: Any) -> diffgentor.RawImage:
    image: diffgentor.RawImage = pipe.generate(FOX_PROMPT, **FOX, output="raw", **kwargs)[0]
    return image


def test_load_generate_default_and_unload(pipe: diffgentor.Pipeline) -> None:
    base = fox(pipe)
    assert pipe.loras() == [] and pipe.default_loras() == []
    pipe.load_lora("a", LORAS / "sd_a.safetensors")
    pipe.load_lora("te", str(LORAS / "sd_te.safetensors"), allow_partial=True)
    a, te = pipe.loras()
    assert a == {"name": "a", "path": str(LORAS / "sd_a.safetensors"), "format": "diffusers",
                 "layers": {"unet": 40}, "unmatched": 0, "default_strength": None}
    assert te["name"] == "te" and te["layers"] == {"text_encoder": 20}
    assert fox(pipe) == base, "loaded but unused adapters changed the pixels"

    with_a = fox(pipe, loras=[("a", 0.8)])
    assert with_a != base
    write_env_rgb("DG_LORA_RGB", with_a)  # test.sh: compared with tests/c/lora.c's pixels
    assert fox(pipe, extra={"loras": "a:0.8"}) == with_a
    assert fox(pipe, loras=["a"]) == fox(pipe, loras=[("a", 1)]) != with_a
    assert fox(pipe, loras=[("a", 0.8), ("te", 1.0)]) not in (with_a, base)

    # The default stack: for requests without loras; loras=[] opts out.
    pipe.set_default_loras([("a", 0.8)])
    ((name, strength),) = pipe.default_loras()
    assert name == "a" and strength == pytest.approx(0.8)
    assert [x["default_strength"] for x in pipe.loras()] == [pytest.approx(0.8), None]
    assert fox(pipe) == with_a
    assert fox(pipe, loras=[]) == base
    pipe.set_default_loras([])
    assert fox(pipe) == base

    pipe.unload_lora("a")
    pipe.unload_lora("te")
    assert pipe.loras() == []
    assert fox(pipe) == base, "after unloading, not the base pixels"
    with pytest.raises(diffgentor.InvalidArgError, match="loaded: none"):
        fox(pipe, loras=[("a", 0.8)])


def test_errors(pipe: diffgentor.Pipeline, tmp_path: Path) -> None:
    with pytest.raises(diffgentor.IoError, match="no-such.safetensors"):
        pipe.load_lora("x", LORAS / "no-such.safetensors")
    not_lora = tmp_path / "image.safetensors"
    not_lora.write_bytes(b"\x89PNG\r\n\x1a\nnot a LoRA")
    with pytest.raises(diffgentor.InvalidArgError, match="image.safetensors"):
        pipe.load_lora("x", not_lora)
    with pytest.raises(diffgentor.InvalidArgError, match="bad name"):
        pipe.load_lora("bad name", LORAS / "sd_a.safetensors")
    with pytest.raises(diffgentor.InvalidArgError, match="NUL"):
        pipe.load_lora("a\0b", LORAS / "sd_a.safetensors")
    with pytest.raises(TypeError, match="allow_partial"):
        pipe.load_lora("a", LORAS / "sd_a.safetensors", allow_partial=1)  # type: ignore[arg-type]
    assert pipe.loras() == [], "failed loads left an adapter"

    pipe.load_lora("a", LORAS / "sd_a.safetensors")
    for strength in (float("nan"), float("inf")):
        with pytest.raises(diffgentor.InvalidArgError, match="finite"):
            fox(pipe, loras=[("a", strength)])
        with pytest.raises(diffgentor.InvalidArgError, match="finite"):
            pipe.set_default_loras([("a", strength)])
    with pytest.raises(diffgentor.InvalidArgError, match="twice"):
        fox(pipe, loras=["a", "a"])
    with pytest.raises(diffgentor.InvalidArgError, match="at most 10"):
        fox(pipe, loras=[f"l{i}" for i in range(11)])
    with pytest.raises(diffgentor.InvalidArgError, match="loaded: a"):
        fox(pipe, loras=["ghost"])
    with pytest.raises(diffgentor.InvalidArgError, match="ghost"):
        pipe.set_default_loras(["ghost"])
    with pytest.raises(diffgentor.InvalidArgError, match="a;b"):
        pipe.set_default_loras(["a;b"])
    with pytest.raises(TypeError, match="sequence"):
        fox(pipe, loras="a:0.8")
    with pytest.raises(TypeError, match="strength"):
        fox(pipe, loras=[("a", "high")])
    with pytest.raises(diffgentor.InvalidArgError, match="ghost"):
        pipe.unload_lora("ghost")
    assert pipe.default_loras() == [] and len(pipe.loras()) == 1

    pipe.close()
    with pytest.raises(diffgentor.NullArgError, match="closed"):
        pipe.load_lora("a", LORAS / "sd_a.safetensors")
    with pytest.raises(diffgentor.NullArgError, match="closed"):
        pipe.loras()


def test_remote_requests_refuse_a_stack() -> None:
    # A remote service has no adapters: a request naming a stack is refused before anything is sent.
    with diffgentor.Remote("openai", base_url="http://127.0.0.1:9/v1", api_key="sk-test") as remote:
        with pytest.raises(diffgentor.UnsupportedError, match="loras"):
            remote.generate("a red fox", loras=[("a", 0.8)], output="raw")
