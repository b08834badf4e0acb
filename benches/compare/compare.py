#!/usr/bin/env python
"""diffgentor (dg-bench) vs optimum's ORTStableDiffusionPipeline on the same ONNX package.

What it measures
  For one optimum-exported Stable Diffusion package (--model, e.g. models/tiny-sd), text-to-image with
  the package's own scheduler (tiny-sd / SD 1.5: PNDM), classifier-free guidance 7.5, batch 1,
  one request at a time, CPUExecutionProvider on both sides:
  * optimum  `optimum.onnxruntime.ORTStableDiffusionPipeline.from_pretrained(DIR)` in this process,
             `pipe(prompt, ..., output_type="pil")` (what a user calls; includes the PIL conversion;
             tqdm progress bar disabled). Every ONNX Runtime `InferenceSession.run` /
             `run_with_iobinding` call is wrapped to sum the time spent inside ONNX Runtime, and a
             few pipeline stages (encode_prompt, unet/vae_decoder forward, scheduler, postprocess)
             are timed to show where the non-ORT time goes.
  * dg       `target/release/dg-bench` as a subprocess with the same model, steps, size, guidance,
             prompt, requests, warmup (and --threads if given); its --json report.
  Both report: images/s (measured requests / wall time of the measured loop), p50 latency,
  ORT run time and end-to-end time per image, overhead ratio = end-to-end / ORT run time
  (1.00 = no time outside ONNX Runtime). Model load time is excluded on both sides.
  The two contenders are alternated round by round (optimum, dg, dg, optimum, optimum, dg, ...)
  so that load from other processes on the machine hits both alike; the report gives medians
  over rounds and the throughput ratio dg / optimum (median of the per-round ratios of adjacent
  runs, and ratio of the medians). Only ratios from the same run are meaningful.

How to run (by hand; never in CI). Nothing here assumes where things live on your machine: name
them with options or environment variables (a missing one is an error that says which):
  --venv VENV / DG_COMPARE_VENV     Python venv with optimum-onnx 0.1.0, optimum 2.1.0,
                                    diffusers 0.39.0, torch. The script re-runs itself with
                                    VENV/bin/python; without it, the interpreter running the script
                                    must have those packages.
  --model MODEL / DG_COMPARE_MODEL  the optimum-exported package, e.g. models/tiny-sd (required).
  --ort-python-path ORT_DIR / DG_COMPARE_ORT_PYTHON_PATH
                                    directory put first on sys.path for the Python onnxruntime,
                                    which must be 1.31.1 like diffgentor's .ort/lib (or
                                    --ort-version); without it, the venv's onnxruntime. Install it
                                    apart from the venv with
                                        VENV/bin/pip install --target ORT_DIR onnxruntime==1.31.1 --no-deps
  --ort-lib FILE / DG_ORT_DYLIB_PATH  libonnxruntime.so for dg-bench (default: the checkout's
                                    .ort/lib, from `make ort`).

    cargo build --release --bin dg-bench
    python3 benches/compare/compare.py --venv VENV --ort-python-path ORT_DIR \
        --model models/tiny-sd --steps 20 --size 64x64 --requests 10 --warmup 2 --rounds 3

    # SD 1.5-sized random-weight package made by benches/compare/make_sd15_random.py into SD15_DIR:
    python3 benches/compare/compare.py --venv VENV --ort-python-path ORT_DIR \
        --model SD15_DIR --steps 4 --size 256x256 --requests 2 --warmup 1 --rounds 2

Prints a markdown table and writes the JSON (default benches/compare/out/<model>-<W>x<H>-<steps>.json,
git-ignored).
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
DEFAULT_ORT_DYLIB = os.path.join(ROOT, ".ort", "lib", "libonnxruntime.so.1.31.1")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        description="dg-bench vs optimum ORTStableDiffusionPipeline",
        epilog="--venv, --model and --ort-python-path default to DG_COMPARE_VENV, DG_COMPARE_MODEL "
               "and DG_COMPARE_ORT_PYTHON_PATH; --model (or DG_COMPARE_MODEL) is required.")
    ap.add_argument("--venv", default=os.environ.get("DG_COMPARE_VENV") or None,
                    help="Python venv with optimum, diffusers and torch; the script re-runs itself with "
                         "its bin/python (default: $DG_COMPARE_VENV, else the running interpreter)")
    ap.add_argument("--model", default=os.environ.get("DG_COMPARE_MODEL") or None,
                    help="optimum-exported package directory, e.g. models/tiny-sd "
                         "(default: $DG_COMPARE_MODEL; required)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--size", default="64x64", help="WxH")
    ap.add_argument("--requests", type=int, default=10, help="measured requests per round")
    ap.add_argument("--warmup", type=int, default=2, help="unmeasured requests at the start of every round")
    ap.add_argument("--rounds", type=int, default=3, help="rounds per contender (alternated)")
    ap.add_argument("--guidance", type=float, default=7.5)
    ap.add_argument("--prompt", default="a photo of an astronaut riding a horse on mars")
    ap.add_argument("--threads", type=int, default=None,
                    help="intra-op threads per session on both sides (default: ONNX Runtime's choice)")
    ap.add_argument("--dg-bench", default=os.path.join(ROOT, "target", "release", "dg-bench"))
    ap.add_argument("--ort-lib", default=os.environ.get("DG_ORT_DYLIB_PATH") or DEFAULT_ORT_DYLIB,
                    help="libonnxruntime.so for dg-bench (default: $DG_ORT_DYLIB_PATH, else the "
                         "checkout's .ort/lib)")
    ap.add_argument("--ort-python-path", default=os.environ.get("DG_COMPARE_ORT_PYTHON_PATH", ""),
                    help="dir put first on sys.path to pick the Python onnxruntime "
                         "(default: $DG_COMPARE_ORT_PYTHON_PATH, else the venv's onnxruntime)")
    ap.add_argument("--ort-version", default="1.31.1",
                    help="required Python onnxruntime version ('' = any)")
    ap.add_argument("--profile", action="store_true",
                    help="after the rounds, cProfile one optimum request and print the top functions")
    ap.add_argument("--json", default=None, help="output JSON path")
    args = ap.parse_args(argv)
    if not args.model:
        ap.error("no model: pass --model DIR or set DG_COMPARE_MODEL "
                 "(an optimum-exported package, e.g. models/tiny-sd)")
    if not os.path.isdir(args.model):
        ap.error(f"--model {args.model}: no such directory")
    if args.venv and not os.path.isfile(venv_python(args.venv)):
        ap.error(f"--venv {args.venv}: {venv_python(args.venv)} does not exist "
                 "(DG_COMPARE_VENV / --venv must name a Python venv directory)")
    if args.ort_python_path and not os.path.isdir(args.ort_python_path):
        ap.error(f"--ort-python-path {args.ort_python_path}: no such directory "
                 "(see the docstring for how to install onnxruntime there)")
    if not os.path.isfile(args.ort_lib):
        ap.error(f"--ort-lib {args.ort_lib}: no such file "
                 f"(run `make ort` in {ROOT}, or set DG_ORT_DYLIB_PATH / --ort-lib)")
    return args


def venv_python(venv):
    return os.path.join(venv, "bin", "python")


def enter_venv(args):
    """Re-runs this script with the venv's interpreter unless it is already the one running."""
    if not args.venv or os.path.realpath(sys.prefix) == os.path.realpath(args.venv):
        return
    if os.environ.get("DG_COMPARE_REEXEC"):
        sys.exit(f"re-ran with {venv_python(args.venv)} but sys.prefix is {sys.prefix}, "
                 f"not {args.venv}: is --venv a venv?")
    python = venv_python(args.venv)
    env = dict(os.environ, DG_COMPARE_REEXEC="1")
    os.execve(python, [python, os.path.abspath(__file__)] + sys.argv[1:], env)


def check_python_deps(args):
    """A clear error, before anything runs, when the interpreter lacks what optimum needs."""
    missing = []
    for module in ("torch", "diffusers", "optimum.onnxruntime"):
        try:
            __import__(module)
        except ImportError as e:
            missing.append(f"{module} ({e})")
    if missing:
        where = f"the venv {args.venv}" if args.venv else f"this interpreter ({sys.executable})"
        sys.exit(f"{where} lacks {', '.join(missing)}; pass --venv DIR or set DG_COMPARE_VENV to a "
                 "venv with optimum-onnx 0.1.0, optimum 2.1.0, diffusers 0.39.0 and torch")


def setup_ort_python(args):
    if args.ort_python_path:
        if not os.path.isdir(args.ort_python_path):
            sys.exit(f"--ort-python-path {args.ort_python_path} does not exist (see the docstring)")
        sys.path.insert(0, args.ort_python_path)
    try:
        import onnxruntime
    except ImportError as e:
        sys.exit(f"no Python onnxruntime ({e}) in {args.ort_python_path or sys.executable}: pass "
                 "--ort-python-path DIR / DG_COMPARE_ORT_PYTHON_PATH, or --venv DIR / DG_COMPARE_VENV")

    if args.ort_version and onnxruntime.__version__ != args.ort_version:
        sys.exit(f"Python onnxruntime is {onnxruntime.__version__} ({onnxruntime.__file__}), "
                 f"want {args.ort_version}: pass --ort-python-path DIR (or set "
                 f"DG_COMPARE_ORT_PYTHON_PATH) to a directory holding onnxruntime=={args.ort_version}, "
                 f"or --ort-version '' to accept it")
    return onnxruntime


class Timers:
    """Accumulated seconds and call counts per name."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.secs = {}
        self.calls = {}

    def add(self, name, dt):
        self.secs[name] = self.secs.get(name, 0.0) + dt
        self.calls[name] = self.calls.get(name, 0) + 1

    def wrap(self, obj, attr, name):
        inner = getattr(obj, attr)
        clock = time.perf_counter
        add = self.add

        def timed(*a, **kw):
            t = clock()
            try:
                return inner(*a, **kw)
            finally:
                add(name, clock() - t)

        setattr(obj, attr, timed)


def load_optimum(args, ort):
    import torch  # noqa: F401  (import cost outside the measurement)
    from optimum.onnxruntime import ORTStableDiffusionPipeline

    so = ort.SessionOptions()  # defaults: ORT_ENABLE_ALL, like diffgentor
    if args.threads:
        so.intra_op_num_threads = args.threads
    t = time.perf_counter()
    pipe = ORTStableDiffusionPipeline.from_pretrained(
        args.model, provider="CPUExecutionProvider", session_options=so
    )
    load_ms = (time.perf_counter() - t) * 1e3
    pipe.set_progress_bar_config(disable=True)

    timers = Timers()
    for comp in ("text_encoder", "unet", "vae_decoder", "vae_encoder"):
        model = getattr(pipe, comp, None)
        if model is None:
            continue
        for meth in ("run", "run_with_iobinding"):
            timers.wrap(model.session, meth, f"ort:{comp}")
        timers.wrap(model, "forward", f"forward:{comp}")
    timers.wrap(pipe, "encode_prompt", "encode_prompt")
    timers.wrap(pipe.scheduler, "step", "scheduler.step")
    timers.wrap(pipe.scheduler, "scale_model_input", "scheduler.scale_model_input")
    timers.wrap(pipe.scheduler, "set_timesteps", "scheduler.set_timesteps")
    timers.wrap(pipe, "prepare_latents", "prepare_latents")
    timers.wrap(pipe.image_processor, "postprocess", "image_processor.postprocess")
    return pipe, timers, load_ms


def optimum_request(pipe, args, width, height, seed):
    import torch

    out = pipe(
        args.prompt,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        height=height,
        width=width,
        generator=torch.Generator("cpu").manual_seed(seed),
        output_type="pil",
    )
    return out.images


def run_optimum(pipe, timers, args, width, height):
    for i in range(args.warmup):
        optimum_request(pipe, args, width, height, i)
    timers.reset()
    latencies = []
    started = time.perf_counter()
    for i in range(args.requests):
        t = time.perf_counter()
        images = optimum_request(pipe, args, width, height, 1000 + i)
        latencies.append((time.perf_counter() - t) * 1e3)
        assert len(images) == 1 and images[0].size == (width, height), images
    wall = time.perf_counter() - started
    n = args.requests
    ort_ms = sum(v for k, v in timers.secs.items() if k.startswith("ort:")) * 1e3
    e2e_ms = sum(latencies)
    stages = {k: v * 1e3 / n for k, v in sorted(timers.secs.items())}
    calls = {k: v / n for k, v in sorted(timers.calls.items())}
    return {
        "images_per_second": n / wall,
        "latency_ms": {"p50": statistics.median(latencies), "max": max(latencies)},
        "latencies_ms": latencies,
        "ort_run_ms_total": ort_ms,
        "end_to_end_ms_total": e2e_ms,
        "overhead_ratio": e2e_ms / ort_ms if ort_ms else 0.0,
        "wall_ms": wall * 1e3,
        "stages_ms_per_image": stages,
        "calls_per_image": calls,
    }


def run_dg(args):
    fd, path = tempfile.mkstemp(prefix="dg-bench-", suffix=".json")
    os.close(fd)
    cmd = [
        args.dg_bench, "--model", args.model, "--ort-lib", args.ort_lib,
        "--steps", str(args.steps), "--size", args.size, "--batch", "1", "--concurrency", "1",
        "--requests", str(args.requests), "--warmup", str(args.warmup),
        "--guidance", str(args.guidance), "--prompt", args.prompt, "--json", path,
    ]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    env = dict(os.environ, DG_ORT_DYLIB_PATH=args.ort_lib)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            sys.exit(f"dg-bench failed ({proc.returncode}):\n{' '.join(cmd)}\n{proc.stderr}{proc.stdout}")
        with open(path) as f:
            report = json.load(f)
    finally:
        os.unlink(path)
    report["command"] = cmd
    return report


def med(rows, key):
    return statistics.median(r[key] for r in rows)


def summarize(rows, n):
    return {
        "images_per_second": med(rows, "images_per_second"),
        "p50_ms": statistics.median(r["latency_ms"]["p50"] for r in rows),
        "overhead_ratio": med(rows, "overhead_ratio"),
        "ort_ms_per_image": statistics.median(r["ort_run_ms_total"] / n for r in rows),
        "e2e_ms_per_image": statistics.median(r["end_to_end_ms_total"] / n for r in rows),
        "outside_ort_ms_per_image": statistics.median(
            (r["end_to_end_ms_total"] - r["ort_run_ms_total"]) / n for r in rows),
    }


def main():
    args = parse_args()
    enter_venv(args)
    args.model = os.path.abspath(args.model)
    w, h = (int(x) for x in args.size.lower().split("x"))
    if not os.path.isfile(args.dg_bench):
        sys.exit(f"{args.dg_bench} missing: cd {ROOT} && cargo build --release --bin dg-bench")
    ort = setup_ort_python(args)
    check_python_deps(args)
    import diffusers
    from importlib.metadata import version

    print(f"python onnxruntime {ort.__version__} ({os.path.dirname(ort.__file__)}); "
          f"dg-bench ORT dylib {args.ort_lib}", flush=True)
    pipe, timers, opt_load_ms = load_optimum(args, ort)
    print(f"optimum pipeline loaded in {opt_load_ms:.0f} ms; scheduler {type(pipe.scheduler).__name__}",
          flush=True)

    opt_rows, dg_rows, ratios = [], [], []
    for r in range(args.rounds):
        order = ("optimum", "dg") if r % 2 == 0 else ("dg", "optimum")
        got = {}
        for who in order:
            if who == "optimum":
                got[who] = run_optimum(pipe, timers, args, w, h)
            else:
                got[who] = run_dg(args)
            print(f"round {r + 1}/{args.rounds} {who:8s} {got[who]['images_per_second']:.3f} img/s, "
                  f"overhead {got[who]['overhead_ratio']:.3f}", flush=True)
        opt_rows.append(got["optimum"])
        dg_rows.append(got["dg"])
        ratios.append(got["dg"]["images_per_second"] / got["optimum"]["images_per_second"])

    profile_top = None
    if args.profile:
        import cProfile
        import io
        import pstats

        prof = cProfile.Profile()
        prof.enable()
        optimum_request(pipe, args, w, h, 7)
        prof.disable()
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(20)
        profile_top = buf.getvalue()

    n = args.requests
    s_opt, s_dg = summarize(opt_rows, n), summarize(dg_rows, n)
    ratio_of_medians = s_dg["images_per_second"] / s_opt["images_per_second"]
    median_ratio = statistics.median(ratios)

    lines = [
        f"model `{args.model}`, {w}x{h}, {args.steps} steps, scheduler {type(pipe.scheduler).__name__}, "
        f"guidance {args.guidance}, batch 1, {args.requests} requests + {args.warmup} warmup x "
        f"{args.rounds} rounds, threads {args.threads or 'ORT default'}, ORT {ort.__version__} (python) / "
        f"{os.path.basename(args.ort_lib)} (dg)",
        "",
        "| contender | images/s (median) | p50 ms | ORT run ms/img | end-to-end ms/img | outside ORT ms/img | overhead ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, s in (("optimum ORTStableDiffusionPipeline", s_opt), ("diffgentor dg-bench", s_dg)):
        lines.append(
            f"| {name} | {s['images_per_second']:.3f} | {s['p50_ms']:.1f} | {s['ort_ms_per_image']:.1f} | "
            f"{s['e2e_ms_per_image']:.1f} | {s['outside_ort_ms_per_image']:.1f} | {s['overhead_ratio']:.3f} |")
    lines += [
        "",
        f"throughput dg / optimum: median of per-round ratios **{median_ratio:.3f}x** "
        f"(rounds: {', '.join(f'{x:.3f}' for x in ratios)}); ratio of medians {ratio_of_medians:.3f}x",
        "",
        "optimum time per image by stage (median round, ms; forward = ORT run + tensor conversion):",
        "",
        "| stage | ms/img | calls/img |",
        "|---|---|---|",
    ]
    mid = sorted(opt_rows, key=lambda r: r["images_per_second"])[len(opt_rows) // 2]
    for k, v in mid["stages_ms_per_image"].items():
        lines.append(f"| {k} | {v:.2f} | {mid['calls_per_image'].get(k, 0):g} |")
    lines.append(f"| (end-to-end) | {mid['end_to_end_ms_total'] / n:.2f} | 1 |")
    lines += ["", "dg-bench stages_ms (median round): " + json.dumps(
        sorted(dg_rows, key=lambda r: r["images_per_second"])[len(dg_rows) // 2].get("stages_ms"))]
    table = "\n".join(lines)
    print()
    print(table)
    if profile_top:
        print("\ncProfile of one optimum request (top 20 by tottime):\n" + profile_top)

    out = args.json or os.path.join(
        HERE, "out", f"{os.path.basename(args.model.rstrip('/'))}-{w}x{h}-{args.steps}.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    result = {
        "settings": {
            "model": args.model, "width": w, "height": h, "steps": args.steps,
            "guidance_scale": args.guidance, "prompt": args.prompt, "requests": args.requests,
            "warmup": args.warmup, "rounds": args.rounds, "threads": args.threads,
            "scheduler": type(pipe.scheduler).__name__, "output_type": "pil",
        },
        "environment": {
            "python_onnxruntime": ort.__version__,
            "dg_ort_lib": args.ort_lib,
            "optimum_onnx": version("optimum-onnx"),
            "diffusers": diffusers.__version__,
            "cpu_count": os.cpu_count(),
            "machine": platform.machine(),
        },
        "optimum": {"load_ms": opt_load_ms, "summary": s_opt, "rounds": opt_rows},
        "dg": {"summary": s_dg, "rounds": dg_rows},
        "throughput_ratio_dg_over_optimum": {
            "median_of_round_ratios": median_ratio,
            "ratio_of_medians": ratio_of_medians,
            "per_round": ratios,
        },
        "table_markdown": table,
        "optimum_profile_top": profile_top,
    }
    with open(out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
