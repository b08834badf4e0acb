"""Output kinds: PIL images, numpy arrays, RawImage; the choice when output=None."""

from __future__ import annotations

import io
import sys

import numpy as np
import pytest
from PIL import Image

import diffgentor
from diffgentor import _images
from conftest import FOX, FOX_PROMPT


@pytest.fixture(scope="module")
def raw(tiny: diffgentor.Pipeline) -> diffgentor.RawImage:
    return tiny.generate(FOX_PROMPT, **FOX, output="raw")[0]


def test_numpy_output(tiny: diffgentor.Pipeline, raw: diffgentor.RawImage) -> None:
    (arr,) = tiny.generate(FOX_PROMPT, **FOX, output="numpy")
    assert isinstance(arr, np.ndarray) and arr.dtype == np.uint8 and arr.shape == (64, 64, 3)
    assert arr.flags.writeable and arr.flags.c_contiguous
    assert arr.tobytes() == raw.data
    assert np.array_equal(raw.to_numpy(), arr)


def test_pil_output(tiny: diffgentor.Pipeline, raw: diffgentor.RawImage) -> None:
    (img,) = tiny.generate(FOX_PROMPT, **FOX, output="pil")
    assert isinstance(img, Image.Image) and img.mode == "RGB" and img.size == (64, 64)
    assert img.tobytes() == raw.data
    assert raw.to_pil().tobytes() == raw.data


def test_default_output_prefers_pil_then_numpy_then_raw(
    tiny: diffgentor.Pipeline, raw: diffgentor.RawImage, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert isinstance(tiny.generate(FOX_PROMPT, **FOX)[0], Image.Image)
    monkeypatch.setattr(_images, "_has", lambda module: module == "numpy")
    assert isinstance(tiny.generate(FOX_PROMPT, **FOX)[0], np.ndarray)
    with pytest.raises(ImportError, match="Pillow"):
        tiny.generate(FOX_PROMPT, **FOX, output="pil")
    monkeypatch.setattr(_images, "_has", lambda module: False)
    assert tiny.generate(FOX_PROMPT, **FOX)[0] == raw
    with pytest.raises(ImportError, match="numpy"):
        tiny.generate(FOX_PROMPT, **FOX, output="numpy")


def test_bad_output_kind(tiny: diffgentor.Pipeline) -> None:
    with pytest.raises(ValueError, match="output"):
        tiny.generate(FOX_PROMPT, **FOX, output="gif")  # type: ignore[call-overload]


def test_raw_image_png(raw: diffgentor.RawImage, tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "fox.png"
    raw.save_png(path)
    with Image.open(path) as img:
        assert img.format == "PNG" and img.mode == "RGB" and img.tobytes() == raw.data
    with Image.open(io.BytesIO(raw.to_png())) as img:
        assert img.tobytes() == raw.data
    assert raw.size == (64, 64) and raw.channels == 3
    assert "64" in repr(raw)
    with pytest.raises(ValueError):
        diffgentor.RawImage(2, 2, b"\0" * 11)



def test_raw_image_save_writes_png_without_pillow(raw: diffgentor.RawImage, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setitem(sys.modules, "PIL", None)  # importing Pillow now fails
    raw.save(tmp_path / "fox.png")
    raw.save(str(tmp_path / "upper.PNG"))
    raw.save(tmp_path / "fox.data", format="png")
    monkeypatch.undo()
    for name in ("fox.png", "upper.PNG", "fox.data"):
        with Image.open(tmp_path / name) as img:
            assert img.format == "PNG" and img.tobytes() == raw.data
    # Other formats are refused, not written as PNG bytes under a misleading name.
    with pytest.raises(ValueError, match="PNG only"):
        raw.save(tmp_path / "fox.jpg")
    with pytest.raises(ValueError, match="PNG only"):
        raw.save(tmp_path / "other.png", format="JPEG")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fox.data", "fox.png", "upper.PNG"]
