"""``python -m diffgentor``: generate images from the command line through the binding."""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from . import Error, Progress, Runtime, __version__, library_path, library_version


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m diffgentor",
        description="Generate images with diffgentor (Python binding over libdiffgentor).",
        epilog="The library is found through DG_LIBRARY_PATH, the bundled copy, then the system "
        "loader; ONNX Runtime through --ort-library, DG_ORT_DYLIB_PATH, or the installed onnxruntime package.",
    )
    p.add_argument("model_dir", nargs="?", help="model package directory (optimum/diffusers ONNX layout)")
    p.add_argument("prompt", nargs="?", help="the prompt")
    p.add_argument("-o", "--output", default="out.png",
                   help="PNG to write, JPEG (quality 90) when it ends in .jpg/.jpeg (with several images: "
                   "NAME_00.png, NAME_01.png, ... like `dg generate`); default out.png")
    p.add_argument("--negative-prompt")
    p.add_argument("--steps", type=int)
    p.add_argument("--guidance-scale", type=float)
    p.add_argument("--width", type=int)
    p.add_argument("--height", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--num-images", type=int)
    p.add_argument("--scheduler")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any dg_params_set key, e.g. --set scheduler.timestep_spacing=trailing (repeatable)")
    p.add_argument("--execution-provider", "--ep", default="cpu")
    p.add_argument("--ort-library", help="path of libonnxruntime (default: DG_ORT_DYLIB_PATH, ...)")
    p.add_argument("--intra-threads", type=int)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    p.add_argument("--version", action="store_true", help="print the binding's and library's versions")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.version:
            print(f"diffgentor (python) {__version__}, libdiffgentor {library_version()} at {library_path()}")
            return 0
        if args.model_dir is None or args.prompt is None:
            _parser().error("model_dir and prompt are required")
        extra = {}
        for item in args.set:
            key, sep, value = item.partition("=")
            if not sep:
                _parser().error(f"--set needs KEY=VALUE, got {item!r}")
            extra[key] = value

        def on_progress(p: Progress) -> None:
            if not args.quiet:
                print(f"step {p.step}/{p.total} ({p.elapsed_seconds:.2f}s)", file=sys.stderr)

        with Runtime(args.execution_provider, args.ort_library, args.intra_threads) as rt, rt.load(args.model_dir) as pipe:
            images = pipe.generate(
                args.prompt, negative_prompt=args.negative_prompt, steps=args.steps,
                guidance_scale=args.guidance_scale, width=args.width, height=args.height,
                seed=args.seed, num_images=args.num_images, scheduler=args.scheduler,
                extra=extra, progress=on_progress, save=args.output, output="raw",
            )
        # Written by the library (dg_image_write_png/_jpeg), atomically, named like `dg generate`.
        for path, image in zip(images.paths, images):
            print(f"wrote {path} ({image.width}x{image.height}, seed {images.seed})")
        return 0
    except Error as e:
        print(f"error [{e.code.name} {int(e.code)}]: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
