"""Generation through the binding: the shared fox request, parameters, progress reports."""

from __future__ import annotations

from typing import List

import diffgentor
from conftest import FOX, FOX_PROMPT, write_env_rgb


def test_fox_request(tiny: diffgentor.Pipeline) -> None:
    images = tiny.generate(FOX_PROMPT, **FOX, output="raw")
    assert isinstance(images, diffgentor.ImageList) and isinstance(images, list)
    assert len(images) == 1 and images.seed == 42
    assert images.metadata == {} and tiny.kind == "local"  # a local pipeline reports no metadata
    fox = images[0]
    assert (fox.width, fox.height) == (64, 64) and len(fox.data) == 64 * 64 * 3
    assert len(set(fox.data)) > 16, "a flat image"
    write_env_rgb("DG_FOX_RGB", fox)  # test.sh: OUT_DIR/python.rgb, compared with the C API's and the CLI's pixels
    # Same request again: byte for byte the same.
    assert tiny.generate(FOX_PROMPT, **FOX, output="raw")[0] == fox


def test_seed_changes_image_and_random_seed_is_reported(tiny: diffgentor.Pipeline) -> None:
    a = tiny.generate(FOX_PROMPT, seed=1, steps=2, output="raw")
    b = tiny.generate(FOX_PROMPT, seed=2, steps=2, output="raw")
    assert a[0] != b[0]
    drawn = tiny.generate(FOX_PROMPT, steps=2, output="raw")
    assert isinstance(drawn.seed, int) and 0 <= drawn.seed < 2**64
    again = tiny.generate(FOX_PROMPT, steps=2, seed=drawn.seed, output="raw")
    assert again[0] == drawn[0]


def test_progress_reports(tiny: diffgentor.Pipeline) -> None:
    seen: List[diffgentor.Progress] = []
    tiny.generate(FOX_PROMPT, **FOX, output="raw", progress=seen.append)  # returns None: go on
    assert [p.step for p in seen] == [1, 2, 3]
    assert all(p.total == 3 and (p.stage, p.stages) == (1, 1) for p in seen)
    elapsed = [p.elapsed_seconds for p in seen]
    assert elapsed == sorted(elapsed) and elapsed[0] >= 0.0
    assert "step=1" in repr(seen[0]) and "stages=1" in repr(seen[0])


def test_plan_progress_reports_stages(tiny: diffgentor.Pipeline) -> None:
    plan = ('{"stages": [{"width": 64, "height": 64, "steps": 2},'
            ' {"width": 96, "height": 96, "steps": 2, "strength": 0.5}]}')
    seen: List[diffgentor.Progress] = []
    (image,) = tiny.generate(FOX_PROMPT, seed=1, extra={"plan": plan}, output="raw", progress=seen.append)
    assert (image.width, image.height) == (96, 96)
    assert all(p.stages == 2 for p in seen)
    stages = [p.stage for p in seen]
    assert stages == sorted(stages) and stages[0] == 1 and stages[-1] == 2, stages
    assert [p.step for p in seen] == list(range(1, len(seen) + 1))


def test_best_effort_changes_nothing_locally(tiny: diffgentor.Pipeline) -> None:
    # A local pipeline honours every field, so there is nothing to leave out.
    exact = tiny.generate(FOX_PROMPT, **FOX, negative_prompt="blurry", output="raw")
    loose = tiny.generate(FOX_PROMPT, **FOX, negative_prompt="blurry", best_effort=True, output="raw")
    assert loose[0] == exact[0] and loose.metadata == {}


def test_typed_parameters(tiny: diffgentor.Pipeline) -> None:
    imgs = tiny.generate(
        FOX_PROMPT, negative_prompt="blurry", steps=2, guidance_scale=3, width=32, height=48,
        seed=7, num_images=2, scheduler="ddim", eta=0.5, output="raw",
    )
    assert len(imgs) == 2 and imgs.seed == 7
    assert all((im.width, im.height) == (32, 48) for im in imgs)
    assert imgs[0] != imgs[1]
    # width or height alone keeps the package's other dimension
    (w_only,) = tiny.generate(FOX_PROMPT, steps=1, seed=1, width=32, output="raw")
    assert (w_only.width, w_only.height) == (32, 64)
    (h_only,) = tiny.generate(FOX_PROMPT, steps=1, seed=1, height=16, output="raw")
    assert (h_only.width, h_only.height) == (64, 16)


def test_extra_keys_match_typed_and_typed_wins(tiny: diffgentor.Pipeline) -> None:
    typed = tiny.generate(FOX_PROMPT, **FOX, output="raw")
    via_extra = tiny.generate(
        "ignored", output="raw",
        extra={"prompt": "also ignored", "seed": "42", "steps": 3, "scheduler": "euler", "guidance_scale": 7.5},
    )
    # the positional prompt and typed arguments are applied after `extra`
    assert via_extra[0] != typed[0]
    same = tiny.generate(FOX_PROMPT, extra={"seed": "42", "steps": "3", "scheduler": "euler"}, output="raw")
    assert same[0] == typed[0]
    seen: List[int] = []
    tiny.generate(FOX_PROMPT, seed=1, steps=2, scheduler="euler", extra={"steps": "5"}, output="raw",
                  progress=lambda p: seen.append(p.total))
    assert seen == [2, 2]
    # the long tail: noise generator and scheduler-config overrides
    fast = tiny.generate(FOX_PROMPT, **FOX, extra={"rng": "fast"}, output="raw")
    assert fast[0] != typed[0]
    trailing = tiny.generate(FOX_PROMPT, **FOX, extra={"scheduler.timestep_spacing": "trailing"}, output="raw")
    assert trailing[0] != typed[0]


def test_digits_model(digits: diffgentor.Pipeline) -> None:
    (seven,) = digits.generate("a handwritten digit 7", seed=42, steps=20, guidance_scale=3.0, output="raw")
    assert (seven.width, seven.height) == (16, 16)
