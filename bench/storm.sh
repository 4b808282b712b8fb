#!/usr/bin/env bash
# A subscribe storm under load, Halyard beside Mosquitto in one run: 100 publisher/subscriber
# pairs at 10,000 QoS 1 messages/s, measured alone for DURATION seconds, then again while 100
# other clients add 100,000 subscriptions (half exact, half wildcard, 10 per SUBSCRIBE) spread
# over the phase. Each broker is started afresh. Prints a Markdown table; the figure that
# matters is the storm p99 over the quiet p99. Extra arguments go to every `halyard-bench storm`.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

# shellcheck source=bench/lib.sh
. bench/lib.sh
bench_prepare storm mosquitto
mosquitto="$(command -v mosquitto || echo /usr/sbin/mosquitto)"
duration="${DURATION:-10}"

echo "| broker | quiet msg/s out | quiet p50 ms | quiet p99 ms | storm msg/s out | storm p99 ms | subscriptions (s) | p99 storm/quiet | lost |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
for broker in halyard mosquitto; do
    stop_all
    rm -rf "$work/data"
    port="$(free_port)"
    if [[ "$broker" == halyard ]]; then
        HALYARD_LOG_LEVEL=warn "$halyard" serve --data-dir "$work/data" --mqtt-listen "127.0.0.1:$port" \
            --admin-listen off --http-listen off --mqtts-listen off --tls-listen off --ws-listen off \
            >"$work/broker.log" 2>&1 &
    else
        printf 'listener %s 127.0.0.1\nallow_anonymous true\nmax_inflight_messages 100\nmax_queued_messages 1000\n' \
            "$port" > "$work/mosquitto.conf"
        "$mosquitto" -c "$work/mosquitto.conf" >/dev/null 2>&1 &
    fi
    pids+=($!)
    wait_for_port "$port"
    json="$work/result.json"
    "$bench" storm --port "$port" --duration "$duration" --json "$json" "$@" >/dev/null 2>"$work/bench.log" \
        || { cat "$work/bench.log" >&2; exit 1; }
    ".venv/bin/python" - "$broker" "$json" <<'PY'
import json, sys
broker, path = sys.argv[1], sys.argv[2]
r = json.load(open(path))
q, s = r["quiet"], r["storm"]
print(f"| {broker} | {q['throughput_out']:,.0f} | {q['latency']['p50_ms']:.2f} | {q['latency']['p99_ms']:.2f} "
      f"| {s['throughput_out']:,.0f} | {s['latency']['p99_ms']:.2f} | {r['subscribed']:,} ({r['subscribe_secs']:.1f}) "
      f"| {r['p99_ratio']:.2f} | {q['lost'] + s['lost']} |")
PY
done
