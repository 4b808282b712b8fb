#!/usr/bin/env bash
# Fleet indexing on one node: THINGS things (default 1,000,000) registered over the HTTP API
# with three attributes each and a shadow each (`halyard-bench index load`), indexing off.
# Then indexing is turned on (REGISTRY_AND_SHADOW with connectivity): the build time (the
# node's halyard_index_build_seconds) and the node's resident memory before and after, per
# thing. Then `halyard-bench index measure`: ONLINE things (default 1,000) connect over MQTT;
# SearchIndex for a selective query (`attributes.model:X AND connectivity.connected:true`, 1 %
# of the fleet's models) and for a wide one, timed REPEAT times each; then registry writes at
# RATE per second (default 1,000) for 30 s, one in 20 followed from its acknowledgement until
# SearchIndex finds it. Prints a Markdown table.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

# shellcheck source=bench/lib.sh
. bench/lib.sh
bench_prepare index
things="${THINGS:-1000000}"
online="${ONLINE:-1000}"
rate="${RATE:-1000}"
repeat="${REPEAT:-200}"

start_halyard
node_pid="${pids[-1]}"
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$node_pid/status"; }
metric() { curl -s "http://127.0.0.1:$admin_port/metrics" | awk -v name="$1" '$1 == name { print $2 }'; }

"$bench" index load --port "$mqtt_port" --http-port "$http_port" --credentials "$work/data/credentials" \
    --things "$things" --json "$work/load.json" >/dev/null
before_kib="$(rss_kib)"

".venv/bin/python" - "$work/data/credentials" "$http_port" <<'PY'
import configparser, sys, time
import boto3
credentials, port = sys.argv[1:3]
profile = configparser.ConfigParser()
profile.read(credentials)
section = profile["halyard"]
iot = boto3.client("iot", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                   aws_access_key_id=section["aws_access_key_id"],
                   aws_secret_access_key=section["aws_secret_access_key"])
iot.update_indexing_configuration(thingIndexingConfiguration={
    "thingIndexingMode": "REGISTRY_AND_SHADOW", "thingConnectivityIndexingMode": "STATUS",
    "customFields": [{"name": "attributes.fw", "type": "Number"}]})
time.sleep(1)
while iot.describe_index(indexName="AWS_Things")["indexStatus"] != "ACTIVE":
    time.sleep(0.5)
PY
after_kib="$(rss_kib)"
build_s="$(metric halyard_index_build_seconds)"

"$bench" index measure --port "$mqtt_port" --http-port "$http_port" --credentials "$work/data/credentials" \
    --things "$things" --online "$online" --repeat "$repeat" --write-rate "$rate" \
    --json "$work/measure.json" >/dev/null

".venv/bin/python" - "$work/load.json" "$work/measure.json" "$before_kib" "$after_kib" "$build_s" <<'PY'
import json, sys
load, measure = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
before, after, build = int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
things = load["things"]
print("| measure | value |")
print("|---|---:|")
print(f"| registered {things:,} things and their shadows (HTTP, indexing off) | {load['seconds']:.0f} s ({load['requests_per_sec']:,.0f} requests/s, {load['failed']} failed) |")
print(f"| index build from the store (REGISTRY_AND_SHADOW, connectivity) | {build:.1f} s ({things / build:,.0f} things/s) |")
print(f"| node resident memory before / after indexing | {before / 1024:,.0f} / {after / 1024:,.0f} MiB ({(after - before) * 1024 / things:,.0f} bytes per thing) |")
s, w, lag = measure["selective"], measure["wide"], measure["lag"]
print(f"| SearchIndex `{measure['selective_query']}` ({measure['selective_matches']} found) p50 / p99 | {s['p50_ms']:.2f} / {s['p99_ms']:.2f} ms |")
print(f"| SearchIndex `{measure['wide_query']}` (first 100) p50 / p99 | {w['p50_ms']:.2f} / {w['p99_ms']:.2f} ms |")
print(f"| lag from an acknowledged UpdateThing to SearchIndex finding it, at {measure['write_rate']:,.0f} writes/s, p50 / p99 | {lag['p50_ms']:.1f} / {lag['p99_ms']:.1f} ms ({lag['samples']} samples) |")
PY
