"""Editing through the binding: img2img (the same request as tests/c/edit.c's first case and
`dg edit`, whose pixels test.sh compares byte for byte), the same request plus a mask on an
inpainting package (tests/c/edit.c's and `dg edit --mask`'s), inpainting with a padded grey mask, plans,
image guidance, every input kind, and the errors of the editing parameters with their codes."""

from __future__ import annotations

import json
import math
from typing import Any, Dict, List

import numpy as np
import pytest
from PIL import Image

import diffgentor
from diffgentor import ErrorCode
from conftest import MODELS, REPO, write_env_rgb

SIZE = 64
INIT_PNG = REPO / "tests" / "golden" / "edit" / "image_64x64.png"
INIT_RGB = REPO / "target" / "c-test" / "out" / "edit-init.rgb"  # `make c-test`'s png2rgb of INIT_PNG
MASK_PNG = REPO / "tests" / "golden" / "edit" / "mask_64x64.png"  # grey (mode L)
#: tests/c/edit.c's edit_params: everything else default (guidance 7.5, the init image's size).
EDIT: Dict[str, Any] = dict(seed=5, steps=6, scheduler="euler_a", strength=0.5)
PROMPT = "a red fox"
PLAN = {"stages": [{"width": 64, "height": 64, "steps": 2},
                   {"width": 96, "height": 96, "steps": 2, "strength": 0.5}]}


@pytest.fixture(scope="module")
def init() -> diffgentor.RawImage:
    with Image.open(INIT_PNG) as im:
        rgb = im.convert("RGB")
        raw = diffgentor.RawImage(rgb.width, rgb.height, rgb.tobytes())
    if INIT_RGB.exists():  # the C test's input, decoded by its own PNG reader: the same pixels
        assert INIT_RGB.read_bytes() == raw.data
    assert raw.size == (SIZE, SIZE)
    return raw


@pytest.fixture(scope="module")
def img2img(tiny: diffgentor.Pipeline, init: diffgentor.RawImage) -> diffgentor.RawImage:
    (out,) = tiny.generate(PROMPT, **EDIT, image=init, output="raw")
    return out


def test_img2img_request_of_the_c_test(tiny: diffgentor.Pipeline, init: diffgentor.RawImage,
                                       img2img: diffgentor.RawImage) -> None:
    assert img2img.size == (SIZE, SIZE)  # the output takes the init image's size
    assert len(set(img2img.data)) > 16, "a flat image"
    assert img2img != init
    write_env_rgb("DG_EDIT_RGB", img2img)  # test.sh: OUT_DIR/python-edit.rgb, compared with rust-edit.rgb
    # Text-to-image with the same seed is another image; the same edit again is the same bytes.
    (t2i,) = tiny.generate(PROMPT, seed=5, steps=6, scheduler="euler_a", output="raw")
    assert t2i != img2img
    assert tiny.generate(PROMPT, **EDIT, image=init, output="raw")[0] == img2img
    # The strength is passed: another strength, another image (tiny-sd's random VAE reconstructs
    # nothing recognisable, so "closer to the source" cannot be checked here).
    (light,) = tiny.generate(PROMPT, **{**EDIT, "strength": 0.2}, image=init, output="raw")
    assert light != img2img and light.size == (SIZE, SIZE)


def test_every_input_kind_gives_the_same_pixels(tiny: diffgentor.Pipeline, init: diffgentor.RawImage,
                                                img2img: diffgentor.RawImage) -> None:
    arr = init.to_numpy()
    rgba = np.concatenate([arr, np.full((SIZE, SIZE, 1), 7, dtype=np.uint8)], axis=2)  # alpha ignored
    padded = np.zeros((SIZE, SIZE * 3 + 5), dtype=np.uint8)  # a row stride of 197 bytes
    padded[:, : SIZE * 3] = arr.reshape(SIZE, SIZE * 3)
    strided = padded[:, : SIZE * 3].reshape(SIZE, SIZE, 3)
    assert not strided.flags.c_contiguous
    inputs: List[diffgentor.ImageInput] = [arr, rgba, strided, np.asfortranarray(arr), init.to_pil(), init.to_pil().convert("RGBA"),
              init.to_pil().convert("P")]  # P: converted to RGB; its palette may lose colours
    for value in inputs[:-1]:
        assert tiny.generate(PROMPT, **EDIT, image=value, output="raw")[0] == img2img, type(value)
    assert tiny.generate(PROMPT, **EDIT, image=inputs[-1], output="raw")[0].size == (SIZE, SIZE)
    # A grey image (1 channel) works too.
    (grey,) = tiny.generate(PROMPT, **EDIT, image=init.to_pil().convert("L"), output="raw")
    assert grey.size == (SIZE, SIZE) and grey != img2img


def _mask(stride: int = SIZE) -> np.ndarray:
    full = np.full((SIZE, stride), 0xAB, dtype=np.uint8)  # padding bytes must be ignored
    full[:, :SIZE] = 0
    full[16:48, 16:48] = 255
    return full[:, :SIZE]


def test_inpainting(tiny: diffgentor.Pipeline, init: diffgentor.RawImage, img2img: diffgentor.RawImage) -> None:
    padded = _mask(SIZE + 7)  # tests/c/edit.c's mask: grey, 7 padding bytes a row
    assert padded.strides[0] == SIZE + 7
    (inpainted,) = tiny.generate(PROMPT, **EDIT, image=init, mask=padded, output="raw")
    assert inpainted.size == (SIZE, SIZE) and inpainted != img2img
    contiguous = np.ascontiguousarray(padded)
    for mask in (contiguous, Image.fromarray(contiguous, "L"), np.repeat(contiguous[:, :, None], 3, axis=2),
                 diffgentor.RawImage(SIZE, SIZE, np.repeat(contiguous[:, :, None], 3, axis=2).tobytes())):
        assert tiny.generate(PROMPT, **EDIT, image=init, mask=mask, output="raw")[0] == inpainted, type(mask)
    # The mask's content matters: an all-white mask repaints everything, another image again.
    (everything,) = tiny.generate(PROMPT, **EDIT, image=init, mask=np.full((SIZE, SIZE), 255, dtype=np.uint8),
                                  output="raw")
    assert everything not in (inpainted, img2img)


def test_inpainting_request_of_the_c_test(runtime: diffgentor.Runtime, init: diffgentor.RawImage,
                                          img2img: diffgentor.RawImage) -> None:
    """tests/c/edit.c's inpainting request: the img2img one plus MASK_PNG (a PIL grey image) on the
    inpainting package (9-channel UNet)."""
    with Image.open(MASK_PNG) as im:
        mask = im.copy()
    assert mask.mode == "L" and mask.size == (SIZE, SIZE)
    with runtime.load(MODELS / "tiny-sd-inpaint") as pipe:
        (inpainted,) = pipe.generate(PROMPT, **EDIT, image=init, mask=mask, output="raw")
    assert inpainted.size == (SIZE, SIZE) and inpainted != img2img
    write_env_rgb("DG_INPAINT_RGB", inpainted)  # test.sh: OUT_DIR/python-inpaint.rgb, compared with rust-inpaint.rgb


def test_plan_typed_matches_the_extra_key(tiny: diffgentor.Pipeline) -> None:
    (typed,) = tiny.generate(PROMPT, seed=1, plan=PLAN, output="raw")
    assert typed.size == (96, 96)  # the plan's last stage sets the size
    assert tiny.generate(PROMPT, seed=1, plan=json.dumps(PLAN), output="raw")[0] == typed
    assert tiny.generate(PROMPT, seed=1, extra={"plan": json.dumps(PLAN)}, output="raw")[0] == typed


def test_image_guidance_scale_is_passed(tiny: diffgentor.Pipeline, init: diffgentor.RawImage,
                                        img2img: diffgentor.RawImage) -> None:
    # tiny-sd is no InstructPix2Pix model: the value is accepted and checked, and does not change img2img.
    assert tiny.generate(PROMPT, **EDIT, image=init, image_guidance_scale=1.5, output="raw")[0] == img2img
    with pytest.raises(TypeError, match="image_guidance_scale"):
        tiny.generate(PROMPT, **EDIT, image=init, image_guidance_scale="1.5")  # type: ignore[call-overload]


def _expect(code: ErrorCode, needle: str, tiny: diffgentor.Pipeline, **kwargs: Any) -> None:
    with pytest.raises(diffgentor.Error, match=needle) as info:
        tiny.generate(PROMPT, output="raw", **{**EDIT, **kwargs})
    assert info.value.code is code, (info.value.code, str(info.value))


def test_editing_errors_carry_their_codes(tiny: diffgentor.Pipeline, init: diffgentor.RawImage) -> None:
    arr = init.to_numpy()
    inv = ErrorCode.INVALID_ARG
    # Setter errors (dg_params_set_init_image / _mask / _strength / _plan), as in tests/c/edit.c.
    _expect(inv, "channels must be 1, 3 or 4", tiny, image=np.zeros((SIZE, SIZE, 2), dtype=np.uint8))
    _expect(inv, "image width 0 is outside", tiny, image=np.zeros((SIZE, 0, 3), dtype=np.uint8))
    _expect(inv, r"strength must be in \(0, 1\]", tiny, image=init, strength=0.0)
    _expect(inv, r"strength must be in \(0, 1\]", tiny, image=init, strength=1.5)
    _expect(inv, "strength", tiny, image=init, strength=math.nan)
    _expect(inv, "between 1 and", tiny, plan={"stages": []})
    _expect(inv, "unknown field", tiny, plan='{"stages": [{"width": 64, "height": 64, "x": 1}]}')
    _expect(inv, "half", tiny, extra={"strength": "half"})
    # Checked at generate time: sizes against the request, a mask without an image.
    _expect(inv, "init image is 64x64 but the request is 128x64", tiny, image=init, width=128, height=64)
    _expect(inv, "a mask needs the image", tiny, mask=arr)
    _expect(inv, "mask", tiny, image=init, mask=np.zeros((32, 32), dtype=np.uint8))
    # Refused in Python before anything reaches the library.
    bad: Any
    for bad in ("image.png", b"\0" * 12, arr.astype(np.float32), np.zeros(12, dtype=np.uint8)):
        with pytest.raises(TypeError, match="image"):
            tiny.generate(PROMPT, image=bad)
    with pytest.raises(diffgentor.InvalidArgError, match="NUL"):
        tiny.generate(PROMPT, plan="{\0}")
