"""The library's encoders and writers (output="png"/"jpeg" through dg_image_encode_* and
dg_buffer_*; save= through dg_image_write_*), runtime options by key (dg_runtime_options_set), and
image channels."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

import diffgentor
from diffgentor import ErrorCode, _images
from conftest import FOX, FOX_PROMPT, TINY


@pytest.fixture(scope="module")
def fox(tiny: diffgentor.Pipeline) -> diffgentor.RawImage:
    return tiny.generate(FOX_PROMPT, **FOX, output="raw")[0]


def test_png_output_is_the_library_encoding(tiny: diffgentor.Pipeline, fox: diffgentor.RawImage) -> None:
    images = tiny.generate(FOX_PROMPT, **FOX, output="png")
    assert images.seed == 42 and len(images) == 1
    png = images[0]
    assert isinstance(png, bytes) and png[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(io.BytesIO(png)) as img:
        assert img.format == "PNG" and img.mode == "RGB" and img.tobytes() == fox.data


def test_jpeg_output_and_quality(tiny: diffgentor.Pipeline, fox: diffgentor.RawImage) -> None:
    (high,) = tiny.generate(FOX_PROMPT, **FOX, output="jpeg", jpeg_quality=95)
    (low,) = tiny.generate(FOX_PROMPT, **FOX, output="jpeg", jpeg_quality=5)
    for jpeg in (high, low):
        assert jpeg[:3] == b"\xff\xd8\xff"
        with Image.open(io.BytesIO(jpeg)) as img:
            assert img.format == "JPEG" and img.size == (64, 64)
    assert len(low) < len(high)
    # Several images: each encoded (and each dg_buffer_t freed).
    assert len(tiny.generate(FOX_PROMPT, **{**FOX, "steps": 1}, num_images=3, output="jpeg")) == 3
    # 1..100, checked by the library (0, 101) or here (past a byte, which ctypes would wrap).
    for bad in (0, 101, 255, 300, -1):
        with pytest.raises(diffgentor.InvalidArgError, match="quality") as info:
            tiny.generate(FOX_PROMPT, **FOX, output="jpeg", jpeg_quality=bad)
        assert info.value.code is ErrorCode.INVALID_ARG
    with pytest.raises(TypeError, match="jpeg_quality"):
        tiny.generate(FOX_PROMPT, **FOX, jpeg_quality=9.5)  # type: ignore[call-overload]


def test_save_writes_png_and_jpeg_atomically(tiny: diffgentor.Pipeline, fox: diffgentor.RawImage,
                                             tmp_path: Path) -> None:
    png = tmp_path / "deep" / "er" / "fox.png"  # parent directories are created
    images = tiny.generate(FOX_PROMPT, **FOX, save=png, output="raw")
    assert images[0] == fox and images.paths == [str(png)]
    with Image.open(png) as img:
        assert img.format == "PNG" and img.tobytes() == fox.data
    jpg = tiny.generate(FOX_PROMPT, **FOX, save=str(tmp_path / "fox.JPG"), jpeg_quality=80, output="png")
    with Image.open(jpg.paths[0]) as img:
        assert img.format == "JPEG" and img.size == (64, 64)
    several = tiny.generate(FOX_PROMPT, seed=1, steps=1, num_images=2, save=tmp_path / "two.jpeg", output="raw")
    assert several.paths == [str(tmp_path / "two_00.jpeg"), str(tmp_path / "two_01.jpeg")]
    noext = tiny.generate(FOX_PROMPT, seed=1, steps=1, num_images=2, save=tmp_path / "n", output="raw")
    assert [Path(p).name for p in noext.paths] == ["n_00.png", "n_01.png"]
    assert tiny.generate(FOX_PROMPT, **FOX, output="raw").paths == []
    # No temporary files are left behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep", "fox.JPG", "n_00.png", "n_01.png",
                                                           "two_00.jpeg", "two_01.jpeg"]


def test_save_errors(tiny: diffgentor.Pipeline, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(diffgentor.IoError) as info:
        tiny.generate(FOX_PROMPT, **FOX, save=blocker / "fox.png", output="raw")
    assert info.value.code is ErrorCode.IO and int(info.value.code) == 3
    with pytest.raises(diffgentor.InvalidArgError, match="quality"):
        tiny.generate(FOX_PROMPT, **FOX, save=tmp_path / "q.jpg", jpeg_quality=0, output="raw")
    with pytest.raises(diffgentor.InvalidArgError, match="NUL"):
        tiny.generate(FOX_PROMPT, **FOX, save="a\0.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_runtime_options_by_key(fox: diffgentor.RawImage) -> None:
    options = {"sessions_per_graph": 2, "no_spinning": True, "intra_threads": 1, "optimized_graph_cache": "",
               "ort_library": None}  # None: left unset
    with diffgentor.Runtime(options=options) as rt, rt.load(TINY) as pipe:
        assert pipe.generate(FOX_PROMPT, **FOX, output="raw")[0] == fox
    with diffgentor.Runtime(options={"execution_provider": "CPU"}) as rt:
        assert rt.execution_provider == "CPU"


def test_runtime_option_errors() -> None:
    with pytest.raises(diffgentor.InvalidArgError, match="no_such_key") as info:
        diffgentor.Runtime(options={"no_such_key": "1"})
    assert info.value.code is ErrorCode.INVALID_ARG
    with pytest.raises(diffgentor.InvalidArgError, match="many") as info:
        diffgentor.Runtime(options={"sessions_per_graph": "many"})
    assert info.value.code is ErrorCode.INVALID_ARG
    with pytest.raises(diffgentor.InvalidArgError, match="quantum"):
        diffgentor.Runtime(options={"execution_provider": "quantum"})
    with pytest.raises(diffgentor.InvalidArgError, match="NUL"):
        diffgentor.Runtime(options={"optimization": "a\0"})
    with pytest.raises(TypeError, match="sessions_per_graph"):
        diffgentor.Runtime(options={"sessions_per_graph": [2]})
    with pytest.raises(TypeError, match="keys"):
        diffgentor.Runtime(options={2: "x"})  # type: ignore[dict-item]


def test_channels_other_than_rgb_are_refused() -> None:
    # dg_image_channels is 3 in ABI 0; a future library with other layouts must not be misread.
    with pytest.raises(diffgentor.UnsupportedError, match="4-channel") as info:
        _images.convert(1, 1, 4, 4, None, "raw")
    assert info.value.code is ErrorCode.UNSUPPORTED
