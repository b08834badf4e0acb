"""Shared fixtures. The tests import the *installed* diffgentor package (pip install ./bindings/python)
and find the C library through DG_LIBRARY_PATH; run from a source checkout without it, they fall back
to the checkout's target/release and .ort/lib."""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Any, Dict, Iterator

import pytest

REPO = Path(__file__).resolve().parents[3]
MODELS = REPO / "models"
TINY = MODELS / "tiny-sd"
DIGITS = MODELS / "digits"
HEADER = REPO / "include" / "diffgentor.h"

if not os.environ.get("DG_LIBRARY_PATH") and (REPO / "target" / "release" / "libdiffgentor.so.0").exists():
    os.environ["DG_LIBRARY_PATH"] = str(REPO / "target" / "release")
if not os.environ.get("DG_ORT_DYLIB_PATH"):
    found = sorted(glob.glob(str(REPO / ".ort" / "lib" / "libonnxruntime.so.*")))
    if found:
        os.environ["DG_ORT_DYLIB_PATH"] = found[-1]

import diffgentor  # noqa: E402  (after the environment above)


def write_env_rgb(env: str, image: "diffgentor.RawImage") -> None:
    """Writes image's raw RGB to the file the environment variable env names, if set: test.sh
    compares it with the CLI's pixels for the same request (target/c-test/out/rust*.rgb)."""
    out = os.environ.get(env)
    if out:
        with open(out, "wb") as f:
            f.write(image.data)


@pytest.fixture(scope="session")
def runtime() -> Iterator[diffgentor.Runtime]:
    with diffgentor.Runtime() as rt:
        yield rt


@pytest.fixture(scope="session")
def tiny(runtime: diffgentor.Runtime) -> Iterator[diffgentor.Pipeline]:
    with runtime.load(TINY) as pipe:
        yield pipe


@pytest.fixture(scope="session")
def digits(runtime: diffgentor.Runtime) -> Iterator[diffgentor.Pipeline]:
    with runtime.load(DIGITS) as pipe:
        yield pipe


#: The shared "fox" request (bindings spec): everything else default (64x64, guidance 7.5).
FOX: Dict[str, Any] = dict(seed=42, steps=3, scheduler="euler")
FOX_PROMPT = "a red fox"
