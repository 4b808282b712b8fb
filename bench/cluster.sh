#!/usr/bin/env bash
# Cross-node forwarding beside one node, in one run: three nodes of one cluster on loopback
# (the release build), then 100 publisher/subscriber pairs, QoS 1, 256-byte payloads, first
# with publishers and subscribers on node 1, then with publishers on node 1 and subscribers on
# node 2, so that every message crosses between nodes. Each at the maximum rate and at 10,000
# msg/s. Then fan-out: one publisher to 300 subscribers of one topic, QoS 1, at the maximum
# rate, first with every client on node 1, then with the subscribers spread over the three
# nodes. Prints Markdown tables. The nodes and the load generator share the machine's cores.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

# shellcheck source=bench/lib.sh
. bench/lib.sh
bench_prepare cluster
duration="${DURATION:-10}"

start_three_nodes

echo "| placement | offered | out msg/s | p50 ms | p99 ms | lost |"
echo "|---|---|---:|---:|---:|---:|"
for rate in max 10000; do
    for placement in "one node" "across nodes"; do
        extra=()
        [[ "$placement" == "across nodes" ]] && extra=(--subscriber-port "${mqtt[2]}")
        json="$work/result.json"
        "$bench" pubsub --port "${mqtt[1]}" --publishers 100 --subscribers 100 --topics 100 \
            --qos 1 --rate "$rate" --duration "$duration" --sources 4 --json "$json" "${extra[@]}" \
            >/dev/null 2>"$work/bench.log" || { cat "$work/bench.log" >&2; exit 1; }
        ".venv/bin/python" - "$placement" "$rate" "$json" <<'PY'
import json, sys
placement, rate, path = sys.argv[1], sys.argv[2], sys.argv[3]
r = json.load(open(path))
print(f"| {placement} | {rate} | {r['throughput_out']:,.0f} | {r['latency']['p50_ms']:.2f} "
      f"| {r['latency']['p99_ms']:.2f} | {r['lost']} |")
PY
    done
done

echo
echo "| fan-out 1 to 300 | out deliveries/s | p50 ms | p99 ms | lost |"
echo "|---|---:|---:|---:|---:|"
hosts="127.0.0.1:${mqtt[1]},127.0.0.1:${mqtt[2]},127.0.0.1:${mqtt[3]}"
for placement in "one node" "subscribers over 3 nodes"; do
    target=(--port "${mqtt[1]}")
    [[ "$placement" != "one node" ]] && target=(--hosts "$hosts")
    json="$work/result.json"
    "$bench" pubsub "${target[@]}" --publishers 1 --subscribers 300 --topics 1 --qos 1 \
        --rate max --duration "$duration" --sources 4 --json "$json" \
        >/dev/null 2>"$work/bench.log" || { cat "$work/bench.log" >&2; exit 1; }
    ".venv/bin/python" - "$placement" "$json" <<'PY'
import json, sys
placement, path = sys.argv[1], sys.argv[2]
r = json.load(open(path))
print(f"| {placement} | {r['throughput_out']:,.0f} | {r['latency']['p50_ms']:.2f} "
      f"| {r['latency']['p99_ms']:.2f} | {r['lost']} |")
PY
done
