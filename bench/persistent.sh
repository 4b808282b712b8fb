#!/usr/bin/env bash
# Persistent sessions beside clean ones, in one run (the release build): QoS 1, 1:1 pairs,
# 40-byte payloads, at the maximum rate. First one standalone Halyard node and Mosquitto (with
# `persistence true`), each with clean and with persistent subscribers; then three Halyard nodes
# of one cluster with the pairs spread over them (each pair on one node, and every message
# crossing to the next node). Prints a Markdown table. Everything shares the machine's cores.
#
#   PAIRS=4 DURATION=8 bench/persistent.sh
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

# shellcheck source=bench/lib.sh
. bench/lib.sh
bench_prepare persistent mosquitto
mosquitto="$(command -v mosquitto || echo /usr/sbin/mosquitto)"
duration="${DURATION:-8}"
pairs="${PAIRS:-4}"

# One row: broker, subscribers' sessions, placement, then the bench's target arguments.
run() {
    local broker="$1" sessions="$2" placement="$3"
    shift 3
    local extra=()
    [[ "$sessions" == persistent ]] && extra=(--persistent)
    "$bench" pubsub "$@" --publishers "$pairs" --subscribers "$pairs" --topics "$pairs" \
        --qos 1 --payload 40 --duration "$duration" --json "$work/result.json" "${extra[@]}" \
        >/dev/null 2>"$work/bench.log" || { cat "$work/bench.log" >&2; exit 1; }
    ".venv/bin/python" - "$broker" "$sessions" "$placement" "$work/result.json" <<'PY'
import json, sys
broker, sessions, placement, path = sys.argv[1:5]
r = json.load(open(path))
print(f"| {broker} | {sessions} | {placement} | {r['throughput_out']:,.0f} "
      f"| {r['latency']['p50_ms']:.2f} | {r['latency']['p99_ms']:.2f} | {r['lost']} |")
PY
}

echo "| broker | subscribers | placement | out msg/s | p50 ms | p99 ms | lost |"
echo "|---|---|---|---:|---:|---:|---:|"

port="$(free_port tcp)"
HALYARD_LOG_LEVEL=warn "$halyard" serve --data-dir "$work/single" --mqtt-listen "127.0.0.1:$port" \
    --admin-listen off --http-listen off --mqtts-listen off --tls-listen off --ws-listen off \
    >"$work/single.log" 2>&1 &
pids+=("$!")
wait_for_port "$port"
run halyard clean "one node" --port "$port"
run halyard persistent "one node" --port "$port"
stop_all

port="$(free_port tcp)"
mkdir -p "$work/mosquitto"
cat >"$work/mosquitto.conf" <<EOF
listener $port 127.0.0.1
allow_anonymous true
persistence true
persistence_location $work/mosquitto/
max_inflight_messages 0
max_queued_messages 100000
EOF
"$mosquitto" -c "$work/mosquitto.conf" >"$work/mosquitto.log" 2>&1 &
pids+=("$!")
wait_for_port "$port"
run mosquitto clean "one node" --port "$port"
run mosquitto persistent "one node" --port "$port"
stop_all

start_three_nodes
hosts="127.0.0.1:${mqtt[1]},127.0.0.1:${mqtt[2]},127.0.0.1:${mqtt[3]}"
for sessions in clean persistent; do
    run halyard "$sessions" "3 nodes, pairs spread" --hosts "$hosts"
    run halyard "$sessions" "3 nodes, each message crosses" --hosts "$hosts" --subscriber-offset 1
done
