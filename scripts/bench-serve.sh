#!/bin/sh
# Throughput through `dg serve` over loopback against dg-bench on the same pipeline and settings
# (docs/performance.md, "dg serve"): dg-bench runs the requests in process, then the same dg-bench
# sends them to a dg serve through its OpenAI backend. Usage:
#   scripts/bench-serve.sh [MODEL_DIR] [OUT_DIR]     (make bench-serve)
# Settings come from the environment: STEPS (20), CONCURRENCY (8), REQUESTS (40), WARMUP (4).
set -eu
MODEL=${1:-models/tiny-sd}
OUT=${2:-target/bench/serve}
STEPS=${STEPS:-20}
CONCURRENCY=${CONCURRENCY:-8}
REQUESTS=${REQUESTS:-40}
WARMUP=${WARMUP:-4}
DG=target/release/dg
BENCH=target/release/dg-bench
mkdir -p "$OUT"
common="--steps $STEPS --concurrency $CONCURRENCY --requests $REQUESTS --warmup $WARMUP"

echo "bench-serve: dg-bench in process ($MODEL, $STEPS steps, concurrency $CONCURRENCY)"
# shellcheck disable=SC2086
$BENCH --model "$MODEL" $common --json "$OUT/in-process.json"

# The server runs as many generations at once as dg-bench did, on one pipeline. Its address is
# read from a fresh stdout file (a stale one from an earlier run would name another port).
rm -f "$OUT/serve.stdout"
$DG serve --model "$MODEL" --port 0 --concurrency "$CONCURRENCY" --queue-size 1024 \
	>"$OUT/serve.stdout" 2>"$OUT/serve.log" &
server=$!
trap 'kill $server 2>/dev/null' EXIT
for _ in $(seq 1 600); do
	url=$(sed -n 's/^listening on //p' "$OUT/serve.stdout" 2>/dev/null)
	[ -n "$url" ] && break
	sleep 0.1
done
[ -n "$url" ] || { echo "bench-serve: dg serve did not start (see $OUT/serve.log)"; exit 1; }

echo "bench-serve: dg-bench through dg serve at $url"
# diffusion_fields sends the steps and guidance, so the server runs the same settings; the client
# keeps as many calls in flight as dg-bench runs requests.
# shellcheck disable=SC2086
DG_OPENAI_API_KEY=unused DG_OPENAI_DIFFUSION_FIELDS=true DG_OPENAI_MAX_IN_FLIGHT=$CONCURRENCY \
	$BENCH --backend openai --endpoint "$url/v1" --remote-model "$(basename "$MODEL")" $common \
	--json "$OUT/through-serve.json"
kill -TERM $server
wait $server || { echo "bench-serve: dg serve did not exit 0"; exit 1; }
trap - EXIT

python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
local = json.load(open(f"{out}/in-process.json"))
served = json.load(open(f"{out}/through-serve.json"))
ratio = served["images_per_second"] / local["images_per_second"]
for name, r in (("in process", local), ("through dg serve", served)):
    l = r["latency_ms"]
    print(f"{name:>17}: {r['images_per_second']:.3f} images/s, p50 {l['p50']:.1f} ms, p99 {l['p99']:.1f} ms")
print(f"bench-serve: throughput ratio (serve / in process) {ratio:.3f}")
json.dump({"in_process": local, "through_serve": served, "ratio": ratio},
          open(f"{out}/summary.json", "w"), indent=2)
PY
