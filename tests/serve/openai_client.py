"""The official `openai` client against a `dg serve --model models/digits --api-key KEY
--concurrency 1 --queue-size 1`.

usage: openai_client.py BASE_URL KEY FIXTURES

FIXTURES holds digit.png (a 16x16 input), mask_rgba.png (OpenAI's kind: transparent where the
image is repainted) and what `dg` writes for the same request fields (seed 7, 5 steps):
generate.png (prompt "7"), edit.png (prompt "3", digit.png) and inpaint.png (prompt "3",
digit.png and the same mask as dg reads masks: white where repainted). Equal request fields
make equal PNG bytes, `parameters` text included.

Each check raises on failure; the script exits non-zero with the failed check's message.
"""
import base64
import json
import sys
import urllib.request
from pathlib import Path

import openai
from openai import OpenAI

BASE_URL, KEY, FIXTURES = sys.argv[1], sys.argv[2], Path(sys.argv[3])
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# The diffusion fields dg serve reads from extra fields (what `dg generate --seed 7 --steps 5`
# sets).
SEEDED = {"seed": 7, "steps": 5}

client = OpenAI(base_url=f"{BASE_URL}/v1", api_key=KEY, max_retries=0)


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def expect_png(data: bytes, what: str) -> None:
    assert data.startswith(PNG_SIGNATURE), f"{what}: not a PNG: {data[:16]!r}"


def expect_same(got: bytes, expected: str, what: str) -> None:
    expect_png(got, what)
    assert got == fixture(expected), f"{what}: differs from dg's {expected}"


def generate_b64_and_url() -> None:
    result = client.images.generate(
        model="digits", prompt="7", n=2, response_format="b64_json", extra_body={"steps": 4}
    )
    assert len(result.data) == 2, f"n=2 gave {len(result.data)} images"
    for item in result.data:
        expect_png(base64.b64decode(item.b64_json), "b64_json image")
    result = client.images.generate(
        model="digits", prompt="7", n=2, response_format="url", extra_body={"steps": 4}
    )
    assert len(result.data) == 2, f"n=2 gave {len(result.data)} images"
    for item in result.data:
        assert item.b64_json is None and item.url, f"expected a url: {item}"
        with urllib.request.urlopen(item.url) as response:
            assert response.headers["content-type"] == "image/png", response.headers
            expect_png(response.read(), f"the image at {item.url}")


def seeded_generation_equals_dg_generate() -> None:
    result = client.images.generate(model="digits", prompt="7", extra_body=SEEDED)
    expect_same(base64.b64decode(result.data[0].b64_json), "generate.png", "seeded generation")


def edits() -> None:
    one = client.images.edit(
        model="digits", image=("digit.png", fixture("digit.png"), "image/png"), prompt="3",
        extra_body=SEEDED,
    )
    expect_same(base64.b64decode(one.data[0].b64_json), "edit.png", "edit of one image")
    masked = client.images.edit(
        model="digits",
        image=("digit.png", fixture("digit.png"), "image/png"),
        mask=("mask.png", fixture("mask_rgba.png"), "image/png"),
        prompt="3",
        extra_body=SEEDED,
    )
    expect_same(base64.b64decode(masked.data[0].b64_json), "inpaint.png", "edit with a mask")
    try:
        client.images.edit(
            model="digits",
            image=[
                ("a.png", fixture("digit.png"), "image/png"),
                ("b.png", fixture("digit.png"), "image/png"),
            ],
            prompt="3",
            extra_body=SEEDED,
        )
    except openai.BadRequestError as e:
        assert e.param == "image", f"two images: param {e.param!r}, not image ({e})"
    else:
        raise AssertionError("two images for a one-image model were accepted")


def streaming() -> None:
    events = list(
        client.images.generate(model="digits", prompt="7", stream=True, extra_body=SEEDED)
    )
    types = [event.type for event in events]
    # No partial images yet: one completed event for the one image.
    assert types == ["image_generation.completed"], f"generation stream: {types}"
    expect_same(base64.b64decode(events[0].b64_json), "generate.png", "streamed generation")
    events = list(
        client.images.edit(
            model="digits", image=("digit.png", fixture("digit.png"), "image/png"), prompt="3",
            stream=True, extra_body=SEEDED,
        )
    )
    types = [event.type for event in events]
    assert types == ["image_edit.completed"], f"edit stream: {types}"
    expect_same(base64.b64decode(events[0].b64_json), "edit.png", "streamed edit")


def wrong_key() -> None:
    wrong = OpenAI(base_url=f"{BASE_URL}/v1", api_key=KEY + "-wrong", max_retries=0)
    try:
        wrong.images.generate(model="digits", prompt="7", extra_body={"steps": 4})
    except openai.AuthenticationError as e:
        assert e.code == "invalid_api_key", f"wrong key: code {e.code!r}"
    else:
        raise AssertionError("a wrong key was accepted")


def bad_size() -> None:
    try:
        client.images.generate(model="digits", prompt="7", size="17x16")
    except openai.BadRequestError as e:
        assert e.param == "size", f"bad size: param {e.param!r} ({e})"
        assert e.code == "invalid_size", f"bad size: code {e.code!r}"
    else:
        raise AssertionError("size 17x16 was accepted")


def post_json(path: str, body: dict) -> dict:
    request = urllib.request.Request(
        f"{BASE_URL}{path}",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json", "authorization": f"Bearer {KEY}"},
    )
    with urllib.request.urlopen(request) as response:
        return json.load(response)


def full_queue() -> None:
    # One worker and one queue slot: two slow jobs fill both whether or not the worker has
    # taken the first yet, so the next request finds the queue full.
    slow = {"prompt": "slow", "steps": 999, "n": 10}
    jobs = [post_json("/v1/jobs", slow)["id"] for _ in range(2)]
    try:
        client.images.generate(model="digits", prompt="7", extra_body={"steps": 4})
    except openai.RateLimitError as e:
        assert e.code == "queue_full", f"full queue: code {e.code!r}"
        assert int(e.response.headers["retry-after"]) >= 1, e.response.headers
    else:
        raise AssertionError("a request past a full queue was accepted")
    finally:
        for job in jobs:
            post_json(f"/v1/jobs/{job}/cancel", {})


CHECKS = [
    generate_b64_and_url,
    seeded_generation_equals_dg_generate,
    edits,
    streaming,
    wrong_key,
    bad_size,
    # Last: the cancelled slow jobs leave the queue only when the worker gets to them.
    full_queue,
]

if __name__ == "__main__":
    for check in CHECKS:
        try:
            check()
        except Exception as e:
            sys.exit(f"FAILED {check.__name__}: {type(e).__name__}: {e}")
        print(f"ok {check.__name__}")
