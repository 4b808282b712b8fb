#!/usr/bin/env bash
# The rules engine's cost to the broker, side by side in one run: 1:1 QoS 1 traffic (100
# publishers, 100 subscribers, 100 topics, 256 B, max rate) on a node with no rules, then on a
# node with 100 rules of which 10 match every message (each republishing it to a topic nobody
# takes) and 90 match none; alternated, each on a fresh node. Then the republish action's
# throughput: one rule republishes every message of 100 publishers to the topics their 100
# subscribers take, so every delivered message went through the engine. Prints a Markdown
# table with how many messages the engine took and how many its full queue dropped.
# ROUNDS (default 2) alternations, DURATION (default 10) seconds each, RATE (default max)
# messages per second offered in all.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

# shellcheck source=bench/lib.sh
. bench/lib.sh
bench_prepare rules
duration="${DURATION:-10}"
rounds="${ROUNDS:-2}"

# Creates rules through the AWS API with boto3: `matching` rules on every benchmark topic,
# `idle` rules on topics nobody publishes, `republish` the rule that feeds the subscribers.
create_rules() {
    ".venv/bin/python" - "$work/data/credentials" "$http_port" "$1" <<'PY'
import configparser, sys, time
import boto3
credentials, port, kind = sys.argv[1], sys.argv[2], sys.argv[3]
profile = configparser.ConfigParser()
profile.read(credentials)
section = profile["halyard"]
iot = boto3.client("iot", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                   aws_access_key_id=section["aws_access_key_id"],
                   aws_secret_access_key=section["aws_secret_access_key"])
role = "arn:aws:iam::123456789012:role/rules"
def rule(name, sql, topic):
    iot.create_topic_rule(ruleName=name, topicRulePayload={
        "sql": sql, "awsIotSqlVersion": "2016-03-23",
        "actions": [{"republish": {"topic": topic, "roleArn": role, "qos": 1}}]})
if kind == "hundred":
    for n in range(10):
        rule(f"matching_{n}", "SELECT * FROM '+/+' WHERE startswith(topic(1), 'bench')", f"rules-out/{n}/m")
    for n in range(90):
        rule(f"idle_{n}", f"SELECT * FROM 'idle{n}/+' WHERE startswith(topic(1), 'bench')", f"rules-idle/{n}/m")
elif kind == "republish":
    rule("feed", "SELECT * FROM '+/+' WHERE startswith(topic(1), 'bench')", "fed/x/${topic(2)}")
time.sleep(1)  # every node's engine follows the store; one node here
PY
}

run() {
    "$bench" pubsub --port "$mqtt_port" --publishers 100 --subscribers 100 --topics 100 --qos 1 \
        --rate "${RATE:-max}" --duration "$duration" --json "$work/run.json" "$@" >/dev/null 2>"$work/run.log"
    curl -s "http://127.0.0.1:$admin_port/metrics" > "$work/metrics.txt"
    ".venv/bin/python" - "$work/run.json" "$work/metrics.txt" <<'PY'
import json, re, sys
r = json.load(open(sys.argv[1]))
l = r["latency"]
def total(pattern):
    return sum(float(line.split()[-1]) for line in open(sys.argv[2]) if re.match(pattern, line))
taken = total(r'halyard_tap_messages_total\{(?=.*outcome="accepted")(?=.*tap="rules")')
dropped = total(r'halyard_tap_messages_total\{(?=.*outcome="dropped")(?=.*tap="rules")')
print(f'{r["throughput_out"]:.0f} | {l["p50_ms"]:.2f} | {l["p99_ms"]:.2f} | {r["lost"]} | {taken:.0f} | {dropped:.0f}')
PY
}

echo "| run | rules | delivered msg/s | p50 ms | p99 ms | lost | the engine took | its tap dropped |"
echo "|---|---|---:|---:|---:|---:|---:|---:|"
for round in $(seq "$rounds"); do
    start_halyard
    echo "| $round | none | $(run) |"
    start_halyard
    create_rules hundred
    echo "| $round | 100, 10 matching | $(run) |"
    start_halyard
    create_rules republish
    echo "| $round | 1 republishing every message to the subscribers | $(run --subscribe-prefix fed/x) |"
done
