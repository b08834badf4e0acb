#!/bin/sh
# VLM generation speed: `dg-bench vlm` against onnxruntime-genai's Python generator (scripts/bench_vlm_og.py)
# on the same genai-layout graphs, alternating in one run (docs/performance.md, "VLM"). Usage:
#   scripts/bench-vlm.sh [MODEL_DIR ...]     (make bench-vlm)
# Without MODEL_DIR it measures two packages of one random-weight Qwen2.5-VL (hidden 512, 8 layers, 94 MB):
#   target/vlm-bench          mobius-onnx graphs (`models/make_vlm.py --bench`), a growing cache
#   target/vlm-bench-builder  the same weights with the decoder from the onnxruntime-genai model builder
#                             (GroupQueryAttention, past_present_share_buffer; scripts/make_vlm_bench_builder.py)
# and builds each that is missing (about 30 s and 15 s; they need torch, transformers and mobius-onnx in VENV).
#
# Every round runs dg-bench and og once each, in alternating order, on the same image, prompt and
# max_new_tokens, greedy, with the same intra-op thread count on every session (dg-bench --threads N;
# og: session_options.intra_op_num_threads = N overlaid on its vision, embedding and decoder sessions),
# both on the same libonnxruntime (og is pointed at .ort/lib's through ORT_LIB_PATH). It fails unless both
# read the same prompt ids and produce the same new token ids.
# Settings come from the environment: VENV (/work/venv-vlm), THREADS (2), ROUNDS (8), RUNS (3, measured runs
# per contender and round), WARMUP (1), MAX_NEW_TOKENS (128), IMAGE (models/vlm-images/shapes_96x64.png),
# PROMPT (dg caption's default prompt), OUT (target/bench/vlm). With THREADS=1 it also compares the calling
# thread's CPU time per token: all of a token's work then runs on that thread, so that ratio is not disturbed by
# other work on a shared machine the way wall-clock tokens/s are.
set -eu
VENV=${VENV:-/work/venv-vlm}
THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-8}
RUNS=${RUNS:-3}
WARMUP=${WARMUP:-1}
MAX_NEW_TOKENS=${MAX_NEW_TOKENS:-128}
IMAGE=${IMAGE:-models/vlm-images/shapes_96x64.png}
OUT=${OUT:-target/bench/vlm}
BENCH=target/release/dg-bench
PY=$VENV/bin/python
ORT_LIB=${DG_ORT_DYLIB_PATH:-$PWD/.ort/lib/libonnxruntime.so.1.31.1}

if [ ! -x "$PY" ] || ! "$PY" -c 'import onnxruntime_genai, jinja2' 2>/dev/null; then
	cat >&2 <<EOF
bench-vlm: no Python with onnxruntime-genai at VENV=$VENV.
  This benchmark compares dg-bench with onnxruntime-genai's Python generator, and builds its model with
  models/make_vlm.py. Make a venv with the versions pinned in models/make_vlm.py's docstring (torch,
  transformers, mobius-onnx, onnxruntime, onnxruntime-genai, jinja2, ...) and point VENV at it:
    VENV=/path/to/venv make bench-vlm
EOF
	exit 2
fi
[ -x "$BENCH" ] || { echo "bench-vlm: $BENCH is missing: run make build first" >&2; exit 2; }
[ -f "$ORT_LIB" ] || { echo "bench-vlm: $ORT_LIB is missing: run make ort first" >&2; exit 2; }
export DG_ORT_DYLIB_PATH="$ORT_LIB"

if [ $# -eq 0 ]; then
	if [ ! -f target/vlm-bench/genai_config.json ]; then
		echo "bench-vlm: building target/vlm-bench (models/make_vlm.py --bench)"
		"$PY" models/make_vlm.py --bench target/vlm-bench
	fi
	if [ ! -f target/vlm-bench-builder/genai_config.json ]; then
		echo "bench-vlm: building target/vlm-bench-builder (scripts/make_vlm_bench_builder.py)"
		"$PY" scripts/make_vlm_bench_builder.py target/vlm-bench target/vlm-bench-builder
	fi
	set -- target/vlm-bench target/vlm-bench-builder
fi

# The prompt flag only when PROMPT is set (else both use dg caption's default prompt).
run_dg() { # MODEL JSON
	if [ -n "${PROMPT+x}" ]; then set -- "$@" --prompt "$PROMPT"; fi
	model=$1 json=$2
	shift 2
	$BENCH vlm --model "$model" --image "$IMAGE" --max-new-tokens "$MAX_NEW_TOKENS" --runs "$RUNS" \
		--warmup "$WARMUP" --threads "$THREADS" --json "$json" "$@" >/dev/null
}
run_og() { # MODEL JSON
	if [ -n "${PROMPT+x}" ]; then set -- "$@" --prompt "$PROMPT"; fi
	model=$1 json=$2
	shift 2
	# og prints provider notices (QNN, RyzenAI) on stderr at load; its errors still show on failure.
	ORT_LIB_PATH="$ORT_LIB" "$PY" scripts/bench_vlm_og.py --model "$model" --image "$IMAGE" \
		--max-new-tokens "$MAX_NEW_TOKENS" --runs "$RUNS" --warmup "$WARMUP" --threads "$THREADS" \
		--json "$json" "$@" 2>"$json.stderr" || { cat "$json.stderr" >&2; return 1; }
}

for model in "$@"; do
	name=$(basename "$model")
	dir=$OUT/$name
	rm -rf "$dir"
	mkdir -p "$dir"
	echo "bench-vlm: $model, $ROUNDS rounds of $RUNS runs (+$WARMUP warm-up) each, $THREADS intra-op threads, $(uptime | sed 's/.*load/load/')"
	round=1
	while [ "$round" -le "$ROUNDS" ]; do
		if [ $((round % 2)) -eq 1 ]; then
			run_dg "$model" "$dir/round$round-dg.json"
			run_og "$model" "$dir/round$round-og.json"
		else
			run_og "$model" "$dir/round$round-og.json"
			run_dg "$model" "$dir/round$round-dg.json"
		fi
		round=$((round + 1))
	done
done

"$PY" - "$OUT" "$ROUNDS" "$@" <<'PY'
import json, os, statistics, sys
out, rounds, models = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
summary, failed = {}, False
for model in models:
    name = os.path.basename(os.path.normpath(model))
    rows = []
    for r in range(1, rounds + 1):
        dg = json.load(open(f"{out}/{name}/round{r}-dg.json"))
        og = json.load(open(f"{out}/{name}/round{r}-og.json"))
        rows.append((dg, og))
    dg0, og0 = rows[0]
    problems = []
    if dg0["prompt_ids"] != og0["prompt_ids"]:
        problems.append(f"prompt ids differ: dg-bench {len(dg0['prompt_ids'])}, og {len(og0['prompt_ids'])} ids")
    for r, (dg, og) in enumerate(rows, 1):
        if dg["token_ids"] != og["token_ids"]:
            problems.append(f"round {r}: new token ids differ (dg-bench {dg['token_ids'][:8]}..., og {og['token_ids'][:8]}...)")
        if not dg["same_tokens_every_run"] or not og["same_tokens_every_run"]:
            problems.append(f"round {r}: greedy ids changed between runs")
    print(f"\n{model}: {dg0['prompt_tokens']} prompt tokens, {len(dg0['token_ids'])} new tokens, "
          f"{dg0['settings']['intra_threads']} intra-op threads, greedy; "
          + ("same prompt ids and new token ids on both" if not problems else "MISMATCH"))
    for p in problems:
        print(f"  {p}")
    failed |= bool(problems)
    print("round  dg tok/s  og tok/s  ratio   dg ttft ms  og ttft ms  ratio   dg rss MiB  og rss MiB")
    tps, ttft = [], []
    for r, (dg, og) in enumerate(rows, 1):
        a, b = dg["median"], og["median"]
        t_ratio = a["tokens_per_second"] / b["tokens_per_second"]
        f_ratio = a["ttft_ms"] / b["ttft_ms"]
        tps.append(t_ratio)
        ttft.append(f_ratio)
        print(f"{r:>5}  {a['tokens_per_second']:>8.1f}  {b['tokens_per_second']:>8.1f}  {t_ratio:>5.3f}   "
              f"{a['ttft_ms']:>10.1f}  {b['ttft_ms']:>10.1f}  {f_ratio:>5.3f}   {dg['peak_rss_mb']:>10.1f}  "
              f"{og['peak_rss_mb']:>10.1f}")
    med = lambda side, key: statistics.median(row[side]["median"][key] for row in rows)
    result = {
        "prompt_tokens": dg0["prompt_tokens"], "new_tokens": len(dg0["token_ids"]),
        "intra_threads": dg0["settings"]["intra_threads"], "rounds": rounds,
        "ids_equal": not problems,
        "dg": {"tokens_per_second": med(0, "tokens_per_second"), "ttft_ms": med(0, "ttft_ms"),
               "ms_per_token": med(0, "ms_per_token"),
               "peak_rss_mb": statistics.median(row[0]["peak_rss_mb"] for row in rows)},
        "og": {"tokens_per_second": med(1, "tokens_per_second"), "ttft_ms": med(1, "ttft_ms"),
               "ms_per_token": med(1, "ms_per_token"),
               "peak_rss_mb": statistics.median(row[1]["peak_rss_mb"] for row in rows),
               "rss_before_import_mb": statistics.median(row[1]["rss_before_import_mb"] for row in rows)},
        "tokens_per_second_ratio_per_round": tps, "ttft_ratio_per_round": ttft,
        "tokens_per_second_ratio": statistics.median(tps), "ttft_ratio": statistics.median(ttft),
    }
    # The best run of each side over the whole benchmark: the least disturbed by other work on a shared machine.
    best = lambda side, key, pick: pick(run[key] for row in rows for run in row[side]["runs"])
    result["best"] = {"dg_tokens_per_second": best(0, "tokens_per_second", max),
                      "og_tokens_per_second": best(1, "tokens_per_second", max),
                      "dg_ttft_ms": best(0, "ttft_ms", min), "og_ttft_ms": best(1, "ttft_ms", min)}
    b = result["best"]
    result["best"]["tokens_per_second_ratio"] = b["dg_tokens_per_second"] / b["og_tokens_per_second"]
    result["best"]["ttft_ratio"] = b["dg_ttft_ms"] / b["og_ttft_ms"]
    result["dg"]["cpu_ms_per_token"] = med(0, "cpu_ms_per_token")
    result["og"]["cpu_ms_per_token"] = med(1, "cpu_ms_per_token")
    cpu = [row[1]["median"]["cpu_ms_per_token"] / row[0]["median"]["cpu_ms_per_token"] for row in rows]
    result["cpu_ratio_per_round"] = cpu
    result["cpu_ratio"] = statistics.median(cpu)
    summary[name] = result
    print(f"median {result['dg']['tokens_per_second']:>8.1f}  {result['og']['tokens_per_second']:>8.1f}  "
          f"{result['tokens_per_second_ratio']:>5.3f}   {result['dg']['ttft_ms']:>10.1f}  "
          f"{result['og']['ttft_ms']:>10.1f}  {result['ttft_ratio']:>5.3f}")
    print(f"bench-vlm: {name}: tokens/s dg-bench / og {result['tokens_per_second_ratio']:.3f} (median of per-round "
          f"ratios; above 1 = dg-bench faster), time to first token dg-bench / og {result['ttft_ratio']:.3f} "
          f"(below 1 = dg-bench sooner)")
    print(f"bench-vlm: {name}: best run of each: {b['dg_tokens_per_second']:.1f} / {b['og_tokens_per_second']:.1f} "
          f"tokens/s = {b['tokens_per_second_ratio']:.3f}, first token {b['dg_ttft_ms']:.1f} / {b['og_ttft_ms']:.1f} ms "
          f"= {b['ttft_ratio']:.3f}; peak RSS dg-bench {result['dg']['peak_rss_mb']:.0f} MiB, og "
          f"{result['og']['peak_rss_mb']:.0f} MiB (the Python process; {result['og']['rss_before_import_mb']:.0f} MiB "
          f"before importing og)")
    if result["intra_threads"] == 1:
        # One intra-op thread: all of a token's work runs on the calling thread, so its CPU time measures
        # the work itself, unaffected by what else the machine runs (except through caches and memory).
        print(f"bench-vlm: {name}: calling thread's CPU per token dg-bench {result['dg']['cpu_ms_per_token']:.3f} ms, "
              f"og {result['og']['cpu_ms_per_token']:.3f} ms: og / dg-bench {result['cpu_ratio']:.3f} (median of "
              f"per-round ratios; the tokens/s ratio the work alone gives)")
json.dump(summary, open(f"{out}/summary.json", "w"), indent=2)
print(f"\nbench-vlm: reports in {out}/ (summary.json)")
sys.exit(1 if failed else 0)
PY
