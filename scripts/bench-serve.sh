#!/usr/bin/env bash
# Dynamic batching vs batch-size-1 serving, side by side on loopback, in one run.
#
#   scripts/bench-serve.sh [MODEL_DIR] [INPUT.jsonl]
#
# Starts `rewardrt serve` twice with identical settings except --max-batch-size (64 with a 2 ms wait, vs 1),
# runs `rewardrt load` against each at several concurrency levels, and prints both tables and the records/s
# ratio per level. Needs a release build (cargo build --release).
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-models/arith-rm}
input=${2:-examples/arith.jsonl}
bin=target/release/rewardrt
threads=${THREADS:-1}
requests=${REQUESTS:-2000}
concurrency=${CONCURRENCY:-1,4,16,64}
per_request=${RECORDS_PER_REQUEST:-4}
wait_ms=${WAIT_MS:-0}
tmp=$(mktemp -d)
# The servers start inside $(...) subshells, so they are not this shell's jobs: remember their pids.
trap 'kill $(cat "$tmp/pids" 2>/dev/null) 2>/dev/null || true; rm -rf "$tmp"' EXIT

start() { # name, extra args...
  local name=$1; shift
  "$bin" serve --model "$model" --port 0 --ep cpu --threads "$threads" --workers 1 "$@" >/dev/null 2>"$tmp/$name.log" &
  echo $! >>"$tmp/pids"
  for _ in $(seq 600); do
    url=$(grep -o 'http://[0-9.:]*' "$tmp/$name.log" | head -1 || true)
    if [ -n "$url" ] && curl -sf "$url/health" >/dev/null 2>&1; then echo "$url"; return; fi
    sleep 0.1
  done
  echo "server $name did not start:" >&2; cat "$tmp/$name.log" >&2; exit 1
}

dyn=$(start dynamic --max-batch-size 64 --max-wait-ms "$wait_ms")
one=$(start batch1 --max-batch-size 1)
# Levels interleave the two servers (alternating which goes first), so drift on a shared machine hits both.
i=0
for c in ${concurrency//,/ }; do
  for name in dynamic batch1; do
    if [ $((i % 2)) -eq 1 ]; then name=$([ "$name" = dynamic ] && echo batch1 || echo dynamic); fi
    url=$([ "$name" = dynamic ] && echo "$dyn" || echo "$one")
    "$bin" load --url "$url" --input "$input" --concurrency "$c" --requests "$requests" \
      --records-per-request "$per_request" --label "$name" --json "$tmp/$name-$c.json" >/dev/null
  done
  i=$((i + 1))
done
python3 - "$tmp" "$concurrency" "$per_request" "$requests" "$wait_ms" <<'PY'
import json, sys
tmp, levels, per_request, requests, wait = sys.argv[1], sys.argv[2].split(","), sys.argv[3], sys.argv[4], sys.argv[5]
print(f"{per_request} record(s) per request, {requests} requests per cell; dynamic = --max-batch-size 64 "
      f"--max-wait-ms {wait}, batch-1 = --max-batch-size 1")
print("| clients | dynamic records/s | p50 ms | p99 ms | batch-1 records/s | p50 ms | p99 ms | gain |")
print("|--------:|------------------:|-------:|-------:|------------------:|-------:|-------:|-----:|")
for c in levels:
    d, o = (json.load(open(f"{tmp}/{n}-{c}.json"))["levels"][0] for n in ("dynamic", "batch1"))
    print(f"| {c:>7} | {d['records_per_second']:>17.1f} | {d['p50_ms']:>6.2f} | {d['p99_ms']:>6.2f} | "
          f"{o['records_per_second']:>17.1f} | {o['p50_ms']:>6.2f} | {o['p99_ms']:>6.2f} | "
          f"{d['records_per_second'] / o['records_per_second']:.2f}x |")
PY
