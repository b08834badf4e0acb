"""onnxruntime-genai's Python generator on a genai-layout VLM package, measured like `dg-bench vlm`.

Run by scripts/bench-vlm.sh (docs/performance.md, "VLM"); by hand:

    ORT_LIB_PATH=.ort/lib/libonnxruntime.so.1.31.1 VENV/bin/python scripts/bench_vlm_og.py \
        --model DIR --image IMG --max-new-tokens 128 --runs 5 --warmup 1 --threads 2 [--json FILE]

Needs onnxruntime-genai (0.18.0 measured) and jinja2 in the Python that runs it.

What one run measures, to match `dg-bench vlm`:
- time to first token: from the multimodal processor call (og's image preprocessing and tokenizer) through
  og.Generator creation (og allocates the cache), set_inputs and the first generate_next_token, to the first
  id read back with get_next_tokens and streamed through the tokenizer stream. The image files are opened
  (og.Images.open) before the clock starts, as dg-bench decodes its images before it; the chat template is
  rendered once beforehand (dg-bench renders it inside its clock: microseconds).
- decode: from the first token to the last, each step generate_next_token + get_next_tokens + the tokenizer
  stream's decode of the id (dg-bench also detokenizes every token: its streaming callback gets text).
- greedy (do_sample false), max_length = prompt tokens + max_new_tokens, stopping at og's eos ids.
- intra-op threads: `--threads N` overlays session_options.intra_op_num_threads = N on the vision, embedding
  and decoder sessions (og.Config.overlay), as `dg-bench vlm --threads N` gives every session N threads.
- cpu_ms_per_token: the calling thread's CPU time (time.thread_time) per token after the first; at --threads 1
  ONNX Runtime runs every op on that thread, so it is all of a token's work, as in dg-bench.
- ORT_LIB_PATH chooses the libonnxruntime og loads (the script that calls this points it at .ort/lib's).

The prompt is the package's chat template rendered with jinja2 the way transformers' apply_chat_template
renders it (one user turn: the images, then the text; add_generation_prompt); the report carries og's
prompt ids so the caller can check they equal dg-bench's.
"""

import argparse
import json
import os
import statistics
import sys
import time

DEFAULT_CAPTION_PROMPT = ("Describe this image in one detailed paragraph: the subject, the setting, colours, "
                          "lighting and style.")


def peak_rss_mb():
    """VmHWM of this process in MiB (what dg-bench reports for itself)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def chat_template(model_dir):
    for name in ("chat_template.jinja",):
        path = os.path.join(model_dir, name)
        if os.path.isfile(path):
            return open(path).read()
    for name in ("chat_template.json", "tokenizer_config.json"):
        path = os.path.join(model_dir, name)
        if os.path.isfile(path):
            template = json.load(open(path)).get("chat_template")
            if template:
                return template
    sys.exit(f"bench_vlm_og: {model_dir} has no chat template")


def render(model_dir, prompt, n_images):
    """transformers' apply_chat_template: a sandboxed jinja2 environment with trim_blocks/lstrip_blocks."""
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise ValueError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.globals["raise_exception"] = raise_exception
    content = [{"type": "image"} for _ in range(n_images)]
    if prompt:
        content.append({"type": "text", "text": prompt})
    messages = [{"role": "user", "content": content}]
    return env.from_string(chat_template(model_dir)).render(messages=messages, add_generation_prompt=True)


def percentile(values, p):
    """Nearest rank, as dg-bench's report."""
    if not values:
        return 0.0
    values = sorted(values)
    rank = max(1, min(len(values), -(-len(values) * p // 100)))
    return values[int(rank) - 1]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--image", action="append", default=[])
    ap.add_argument("--prompt", default=None)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None, help="intra-op threads per session (default: og's)")
    ap.add_argument("--json", default=None, help="write the report here (else print it)")
    args = ap.parse_args()

    baseline_rss = rss_mb()
    import onnxruntime_genai as og

    prompt = DEFAULT_CAPTION_PROMPT if args.prompt is None else args.prompt
    rendered = render(args.model, prompt, len(args.image))

    t0 = time.perf_counter()
    config = og.Config(args.model)
    if args.threads is not None:
        options = {"session_options": {"intra_op_num_threads": args.threads}}
        config.overlay(json.dumps({"model": {"decoder": options, "vision": options, "embedding": options}}))
    model = og.Model(config)
    processor = model.create_multimodal_processor()
    tokenizer = og.Tokenizer(model)
    load_ms = (time.perf_counter() - t0) * 1e3
    python_rss = rss_mb()

    images = og.Images.open(*args.image) if args.image else None
    prompt_ids = [int(i) for i in processor(rendered, images=images)["input_ids"].as_numpy().ravel()]
    max_length = len(prompt_ids) + args.max_new_tokens

    def generate():
        images = og.Images.open(*args.image) if args.image else None
        stream = tokenizer.create_stream()
        arrivals, cpu = [], []
        ids = []
        started = time.perf_counter()
        inputs = processor(rendered, images=images)
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=max_length, do_sample=False)
        generator = og.Generator(model, params)
        generator.set_inputs(inputs)
        while not generator.is_done() and len(ids) < args.max_new_tokens:
            generator.generate_next_token()
            token = int(generator.get_next_tokens()[0])
            stream.decode(token)
            ids.append(token)
            arrivals.append(time.perf_counter())
            cpu.append(time.thread_time())
        total = time.perf_counter() - started
        del generator, params
        n = len(ids)
        decode = arrivals[-1] - arrivals[0]
        gaps = [1e3 * (b - a) for a, b in zip(arrivals, arrivals[1:])]
        run = {
            "new_tokens": n,
            "ttft_ms": 1e3 * (arrivals[0] - started),
            "decode_ms": 1e3 * decode,
            "tokens_per_second": (n - 1) / decode if n > 1 and decode > 0 else 0.0,
            "ms_per_token": 1e3 * decode / (n - 1) if n > 1 else 0.0,
            "inter_token_ms": {"p50": percentile(gaps, 50), "p90": percentile(gaps, 90),
                               "max": max(gaps, default=0.0)},
            "cpu_ms_per_token": 1e3 * (cpu[-1] - cpu[0]) / (n - 1) if n > 1 else 0.0,
            "total_ms": 1e3 * total,
        }
        return ids, run

    first_ids, same, runs = None, True, []
    for i in range(args.warmup + args.runs):
        ids, run = generate()
        if first_ids is None:
            first_ids = ids
        else:
            same &= ids == first_ids
        if i >= args.warmup:
            runs.append(run)

    def med(key):
        return statistics.median(r[key] for r in runs)

    report = {
        "settings": {"model": args.model, "images": args.image, "prompt": prompt,
                     "max_new_tokens": args.max_new_tokens, "runs": args.runs, "warmup": args.warmup,
                     "intra_threads": args.threads, "sampling": "greedy",
                     "onnxruntime_genai": og.__version__, "rendered": rendered},
        "load_ms": load_ms,
        "prompt_tokens": len(prompt_ids),
        "prompt_ids": prompt_ids,
        "token_ids": first_ids,
        "same_tokens_every_run": same,
        "peak_rss_mb": peak_rss_mb(),
        "rss_before_import_mb": baseline_rss,
        "rss_after_load_mb": python_rss,
        "median": {k: med(k) for k in ("new_tokens", "ttft_ms", "decode_ms", "tokens_per_second", "ms_per_token",
                                       "cpu_ms_per_token", "total_ms")},
        "runs": runs,
    }
    report["median"]["inter_token_p50_ms"] = statistics.median(r["inter_token_ms"]["p50"] for r in runs)
    text = json.dumps(report, indent=2) + "\n"
    if args.json:
        with open(args.json, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
