#!/usr/bin/env python3
"""Draws a handwritten digit with the models/digits package and writes it as a PNG.

usage: python examples/digits.py [--model DIR] [--digit N] [--seed N] [--output FILE]

Needs only the diffgentor package (no numpy or Pillow): the image comes back as a RawImage and
is written with its built-in PNG encoder.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import diffgentor

DEFAULT_MODEL = Path(__file__).resolve().parents[3] / "models" / "digits"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="model package (default: models/digits)")
    parser.add_argument("--digit", type=int, default=7, choices=range(10))
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--output", default="digit.png")
    args = parser.parse_args()

    def on_progress(p: diffgentor.Progress) -> None:
        print(f"step {p.step}/{p.total}", file=sys.stderr)

    try:
        with diffgentor.Runtime() as runtime, runtime.load(args.model) as pipeline:
            images = pipeline.generate(
                f"a handwritten digit {args.digit}",
                seed=args.seed,
                steps=20,
                guidance_scale=3.0,
                progress=on_progress,
                output="raw",
            )
    except diffgentor.Error as e:
        print(f"error {e.code.name} ({int(e.code)}): {e}", file=sys.stderr)
        return 1
    image = images[0]
    image.save_png(args.output)
    print(f"{image.width}x{image.height} RGB image, seed {images.seed}: wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
