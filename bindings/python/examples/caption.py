#!/usr/bin/env python3
"""Runs a vision-language model: captions images, answers a question about them, or rewrites an
instruction into a better prompt for an image generator (prompt enhancement).

usage: python examples/caption.py [--model DIR] --image FILE [--image FILE ...] [--prompt TEXT]
                                  [--max-new-tokens N] [--temperature T --seed S] [--stream]
       python examples/caption.py [--model DIR] [--image FILE] --enhance STYLE --instruction TEXT

Needs only the diffgentor package: images are read by the library from their files (PNG, JPEG or
WebP). With Pillow or numpy installed, generate() also takes PIL images and arrays.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import diffgentor

MODELS = Path(__file__).resolve().parents[3] / "models"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(MODELS / "tiny-qwen2.5-vl"), help="VLM package directory")
    parser.add_argument("--image", action="append", default=[], help="image file; repeat for several")
    parser.add_argument("--prompt", help="question or instruction (default: the model's caption prompt)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy decoding")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stream", action="store_true", help="print tokens as they come")
    parser.add_argument("--enhance", metavar="STYLE", help="qwen_image_edit, flux2, glm_image or t2i")
    parser.add_argument("--instruction", default="", help="the instruction or prompt to enhance")
    args = parser.parse_args()

    def on_token(token: diffgentor.VlmToken) -> None:
        print(token.text, end="", file=sys.stderr, flush=True)  # returning False would cancel

    settings = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed,
                    on_token=on_token if args.stream else None)
    try:
        with diffgentor.Runtime() as runtime, diffgentor.Vlm(runtime, args.model) as vlm:
            print(f"{vlm.layout} model, context {vlm.context_length} tokens", file=sys.stderr)
            if args.enhance:
                # The style's system prompt, the image (if any), then the instruction.
                image = args.image[0] if args.image else None
                result = vlm.enhance(args.enhance, args.instruction, image, **settings)
            elif args.prompt is None:
                result = vlm.caption(args.image, **settings)  # the model's caption prompt
            else:
                result = vlm.generate(args.prompt, images=args.image, **settings)  # a question
    except diffgentor.Error as e:
        print(f"error {e.code.name} ({int(e.code)}): {e}", file=sys.stderr)
        return 1
    if args.stream:
        print(file=sys.stderr)
    if args.enhance:
        print(f"enhanced prompt: {result.enhanced_prompt!r}")
    else:
        print(f"answer: {result.text!r}")
    print(f"token ids: {result.token_ids}")
    t = result.timings
    print(f"{result.prompt_tokens} prompt tokens, {len(result.token_ids)} new, finish {result.finish_reason}, "
          f"first token after {t.first_token * 1000:.1f} ms, {t.tokens_per_second:.1f} tokens/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
