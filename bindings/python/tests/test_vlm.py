"""Vision-language models through the binding (diffgentor.Vlm): greedy token ids equal transformers'
(models/vlm-goldens.json) whichever way the images arrive, the token callback sees every token and
cancels, bad keys and values raise InvalidArgError, prompt enhancement runs, threads share a model."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest

import diffgentor
from conftest import MODELS

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "caption.py"


def _goldens() -> Dict[str, Dict[str, Any]]:
    data = json.loads((MODELS / "vlm-goldens.json").read_text())
    return {case["name"]: case for case in data["cases"]}


GOLDENS = _goldens()


@pytest.fixture(scope="module")
def vlm(runtime: diffgentor.Runtime) -> Iterator[diffgentor.Vlm]:
    with diffgentor.Vlm(runtime, MODELS / "tiny-qwen2.5-vl") as model:
        yield model


def _images(case: Dict[str, Any]) -> List[Path]:
    return [MODELS / p for p in case["images"]]


def _check(case: Dict[str, Any], result: diffgentor.VlmResult) -> None:
    assert result.token_ids == case["expected_ids"], case["name"]
    assert result.text == case["expected_text"], case["name"]
    assert result.prompt_tokens == len(case["input_ids"])
    assert result.finish_reason == ("stop" if case["stopped_at_eos"] else "length")


def test_caption_equals_transformers(vlm: diffgentor.Vlm) -> None:
    assert vlm.layout == "onnxruntime-genai" and vlm.context_length >= 1024
    assert vlm.info["chat"] is True and sorted(vlm.info["eos_ids"]) == [400, 402]
    assert vlm.caption_prompt.startswith("Describe this image")
    case = GOLDENS["image_96x64"]
    result = vlm.generate(case["prompt"], images=_images(case), max_new_tokens=case["max_new_tokens"])
    _check(case, result)
    t = result.timings
    assert 0 <= t.first_token <= t.total and t.tokens_per_second > 0, t
    assert str(result) == result.text and "token_ids" in repr(result)
    # caption(): the same request with the prompt given; one image need not be in a list.
    again = vlm.caption(str(_images(case)[0]), prompt=case["prompt"], max_new_tokens=case["max_new_tokens"])
    assert again.token_ids == case["expected_ids"]


@pytest.mark.parametrize("kind", ["path", "bytes", "raw", "numpy", "pil", "messages"])
def test_two_images_equal_transformers(vlm: diffgentor.Vlm, kind: str) -> None:
    case = GOLDENS["two_images"]
    paths = _images(case)
    if kind == "path":
        images: List[Any] = [str(p) for p in paths]
    elif kind == "bytes":
        images = [p.read_bytes() for p in paths]
    else:
        pil = pytest.importorskip("PIL.Image")
        decoded = [pil.open(p).convert("RGB") for p in paths]
        if kind == "raw":
            images = [diffgentor.RawImage(im.width, im.height, im.tobytes()) for im in decoded]
        elif kind == "numpy":
            np = pytest.importorskip("numpy")
            images = [np.asarray(im) for im in decoded]
        else:
            images = decoded
    if kind == "messages":
        result = vlm.generate(messages=[{"role": "user", "content": [paths[0], paths[1].read_bytes(), case["prompt"]]}],
                              extra={"max_new_tokens": case["max_new_tokens"]})
    else:
        result = vlm.generate(case["prompt"], images, max_new_tokens=case["max_new_tokens"])
    _check(case, result)


def test_on_token_sees_every_token_and_cancels(vlm: diffgentor.Vlm) -> None:
    case = GOLDENS["text_only"]
    seen: List[diffgentor.VlmToken] = []
    result = vlm.generate(case["prompt"], max_new_tokens=case["max_new_tokens"], on_token=seen.append)
    _check(case, result)
    assert [t.id for t in seen] == case["expected_ids"]
    assert [t.index for t in seen] == list(range(1, len(seen) + 1))
    assert "".join(t.text for t in seen) == result.text

    calls: List[int] = []

    def stop_at_3(t: diffgentor.VlmToken) -> bool:
        calls.append(t.id)
        return len(calls) < 3

    with pytest.raises(diffgentor.CancelledError) as info:
        vlm.generate(case["prompt"], max_new_tokens=16, on_token=stop_at_3)
    assert info.value.code is diffgentor.ErrorCode.CANCELLED
    assert calls == case["expected_ids"][:3]

    # A token raised from inside the callback stops the request before the next token.
    with diffgentor.CancelToken() as token:
        calls.clear()

        def raise_token(t: diffgentor.VlmToken) -> None:
            calls.append(t.id)
            if t.index == 2:
                token.cancel()

        with pytest.raises(diffgentor.CancelledError):
            vlm.generate(case["prompt"], max_new_tokens=16, on_token=raise_token, cancel=token)
        assert len(calls) == 2

    # An exception inside the callback comes out of generate as it is.
    class Boom(Exception):
        pass

    def boom(t: diffgentor.VlmToken) -> None:
        if t.index == 2:
            raise Boom(t.id)

    with pytest.raises(Boom):
        vlm.generate(case["prompt"], max_new_tokens=16, on_token=boom)
    _check(case, vlm.generate(case["prompt"], max_new_tokens=case["max_new_tokens"]))


def test_bad_keys_values_and_requests(vlm: diffgentor.Vlm) -> None:
    with pytest.raises(diffgentor.InvalidArgError) as info:
        vlm.generate("hi", extra={"max_tokens": 8})
    assert "max_tokens" in str(info.value) and "max_new_tokens" in str(info.value)
    assert info.value.code is diffgentor.ErrorCode.INVALID_ARG
    cases: List[Tuple[Dict[str, Any], List[str]]] = [
        (dict(top_p=1.5), ["top_p", "1.5"]),
        (dict(temperature=-1.0), ["temperature"]),
        (dict(max_new_tokens=0), ["max_new_tokens"]),
        (dict(repetition_penalty=float("nan")), ["repetition_penalty"]),
        (dict(stop=[f"s{i}" for i in range(17)]), ["stop", "16"]),
        (dict(extra={"seed": "x"}), ["seed", "x"]),
    ]
    for kwargs, words in cases:
        with pytest.raises(diffgentor.InvalidArgError) as info:
            vlm.generate("hi", **kwargs)
        assert all(w in str(info.value) for w in words), (kwargs, str(info.value))
    with pytest.raises(diffgentor.InvalidArgError, match="message"):
        vlm.generate()
    with pytest.raises(diffgentor.InvalidArgError, match="14"):
        vlm.generate("what is this?", [MODELS / "vlm-images" / "tiny_10x10.png"])
    with pytest.raises(diffgentor.IoError, match="nowhere.png"):
        vlm.generate("hi", ["/nonexistent/nowhere.png"])
    with pytest.raises(diffgentor.InvalidArgError):
        vlm.generate("hi", [b"not an image"])
    with pytest.raises(diffgentor.InvalidArgError, match="NUL"):
        vlm.generate("a\0b")
    with pytest.raises(TypeError):
        vlm.generate("hi", [3.5])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        vlm.generate("hi", MODELS / "vlm-images" / "square_80x80.png")  # type: ignore[arg-type]  # not a list
    with pytest.raises(TypeError):
        vlm.generate(messages=[{"role": "user"}])
    with pytest.raises(diffgentor.InvalidArgError, match="seed"):  # refused before the library is called
        vlm.generate("hi", seed=-1)


def test_enhance(vlm: diffgentor.Vlm) -> None:
    image = MODELS / "vlm-images" / "square_80x80.png"
    with pytest.raises(diffgentor.InvalidArgError) as info:
        vlm.enhance("sdxl", "make it blue")
    assert "qwen_image_edit" in str(info.value)
    with pytest.raises(diffgentor.InvalidArgError):
        vlm.enhance("t2i", "   ")
    a = vlm.enhance("qwen_image_edit", "make the square blue", image, max_new_tokens=24, temperature=0.7, seed=3)
    b = vlm.enhance("qwen_image_edit", "make the square blue", image.read_bytes(), max_new_tokens=24,
                    temperature=0.7, seed=3)
    assert a.token_ids and a.token_ids == b.token_ids, "seeded sampling repeats"
    assert a.enhanced_prompt == b.enhanced_prompt == a.enhanced_prompt.strip()
    c = vlm.enhance("t2i", "a red fox", system="Rewrite the prompt.", max_new_tokens=8)
    assert len(c.token_ids) <= 8


def test_threads_share_one_model(runtime: diffgentor.Runtime) -> None:
    with diffgentor.Vlm(runtime, MODELS / "tiny-qwen2.5-vl-tfjs") as model:
        assert model.layout == "transformers.js"
        errors: List[BaseException] = []

        def work(case: Dict[str, Any]) -> None:
            try:
                _check(case, model.generate(case["prompt"], _images(case), max_new_tokens=case["max_new_tokens"]))
            except BaseException as e:  # noqa: B036 - reported below
                errors.append(e)

        threads = [threading.Thread(target=work, args=(case,)) for case in GOLDENS.values()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
    assert model.closed
    with pytest.raises(diffgentor.NullArgError):
        model.generate("hi")
    with pytest.raises((diffgentor.ModelError, diffgentor.IoError)):
        diffgentor.Vlm(runtime, "/nonexistent/model")


def test_the_example_answers_with_the_golden_tokens() -> None:
    case = GOLDENS["image_96x64"]
    run = subprocess.run([sys.executable, str(EXAMPLE), "--model", str(MODELS / "tiny-qwen2.5-vl"),
                          "--image", str(_images(case)[0]), "--prompt", case["prompt"],
                          "--max-new-tokens", str(case["max_new_tokens"]), "--stream"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert f"token ids: {case['expected_ids']}" in run.stdout, run.stdout
    run = subprocess.run([sys.executable, str(EXAMPLE), "--model", str(MODELS / "tiny-qwen2.5-vl"),
                          "--image", str(_images(case)[0]), "--enhance", "qwen_image_edit",
                          "--instruction", "make the circle blue"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "enhanced prompt: " in run.stdout, run.stderr
