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

ensure_apt_packages "${BUILD_PACKAGES[@]}"
ensure_cargo
ensure_test_venv

target="${CARGO_TARGET_DIR:-target}"
[[ "$target" == /* ]] || target="$PWD/$target"
cargo build --release -p halyard-node --bin halyard -p halyard-bench --bin halyard-bench
halyard="$target/release/halyard"
bench="$target/release/halyard-bench"
duration="${DURATION:-30}"
rate="${RATE:-10000}"

# The store fsyncs its log: a directory on the real disk, not a tmpfs.
work="$(mktemp -d "${TMPDIR:-/var/tmp}/halyard-shadow.XXXXXX")"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { ".venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# A fresh node for every run, so that no run pays for the flushes and snapshots of the one
# before; within a run, they are part of the figures.
start_halyard() {
    [[ ${#pids[@]} -gt 0 ]] && { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; pids=(); }
    rm -rf "$work/data"
    mqtt_port="$(free_port)"
    http_port="$(free_port)"
    HALYARD_LOG_LEVEL=warn "$halyard" serve --data-dir "$work/data" \
        --mqtt-listen "127.0.0.1:$mqtt_port" --http-listen "127.0.0.1:$http_port" \
        --admin-listen 127.0.0.1:0 --mqtts-listen 127.0.0.1:0 --tls-listen 127.0.0.1:0 --ws-listen 127.0.0.1:0 &
    pids+=($!)
    for _ in $(seq 100); do
        [[ -s "$work/data/credentials" ]] && (echo > "/dev/tcp/127.0.0.1/$mqtt_port") 2>/dev/null && return
        sleep 0.1
    done
    echo "halyard did not start" >&2
    exit 1
}

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
