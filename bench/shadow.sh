#!/usr/bin/env bash
# Device Shadow updates per second on one node: 100 devices, each updating its own shadow, over
# MQTT (publish to .../shadow/update, answer on .../update/accepted) and over the HTTP data
# plane (UpdateThingShadow signed with SigV4). Each protocol at the maximum rate (every answer
# starts the next request) and at a fixed offered rate, where the latency is the service's own
# rather than the queue the load generator builds. Prints a Markdown table.
# Extra arguments go to every `halyard-bench shadow` run (e.g. --devices 200).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

# shellcheck source=bench/lib.sh
. bench/lib.sh
bench_prepare shadow
duration="${DURATION:-30}"
rate="${RATE:-10000}"

echo "| protocol | devices x in flight | offered | updates/s | p50 ms | p99 ms | p99.9 ms | rejected |"
echo "|---|---|---:|---:|---:|---:|---:|---:|"
for via in mqtt http; do
    # MQTT devices pipeline up to AWS IoT's 10 requests; an HTTP device waits for each answer.
    inflight=10
    [[ "$via" == http ]] && inflight=1
    for offered in "$rate" max; do
        start_halyard
        json="$work/result.json"
        "$bench" shadow --via "$via" --port "$mqtt_port" --http-port "$http_port" \
            --credentials "$work/data/credentials" --devices 100 --inflight "$inflight" \
            --rate "$offered" --duration "$duration" --json "$json" "$@" >/dev/null 2>"$work/bench.log" \
            || { cat "$work/bench.log" >&2; exit 1; }
        ".venv/bin/python" - "$json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
offered = "max" if r["offered_rate"] is None else f"{r['offered_rate']:,.0f}/s"
l = r["latency"]
print(f"| {r['protocol'].upper()} | {r['devices']} x {r['inflight']} | {offered} | {r['updates_per_sec']:,.0f} "
      f"| {l['p50_ms']:.2f} | {l['p99_ms']:.2f} | {l['p999_ms']:.2f} | {r['rejected']} |")
PY
    done
done
