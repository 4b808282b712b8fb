#!/usr/bin/env bash
# Jobs on one node: THINGS things (default 10,000) registered in one thing group, DEVICES of
# them (default 1,000) online over MQTT running the Device SDK's jobs sample flow
# (`halyard-bench jobs`: notify-next, start-next, update SUCCEEDED). JOBS jobs (default 5) over
# the group with no rollout limit: how long CreateJob takes and how long until every thing has
# the first job's execution; then the others, created at once, and executions completed per
# second end to end (from the first CreateJob to the last device's last SUCCEEDED) with the
# p50/p99 of the devices' start-next and update round trips. Then a job over the group rolled
# out at RATE (default 1,000) a minute: the rate achieved over a minute.
# Prints a Markdown table.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

# shellcheck source=bench/lib.sh
. bench/lib.sh
bench_prepare jobs
things="${THINGS:-10000}"
devices="${DEVICES:-1000}"
rate="${RATE:-1000}"
jobs="${JOBS:-5}"

start_halyard

api() {
    ".venv/bin/python" - "$work/data/credentials" "$http_port" "$@"
}

# The things and their group, registered concurrently as a fleet's provisioning would.
api "$things" <<'PY'
import configparser, sys, time
from concurrent.futures import ThreadPoolExecutor
import boto3
credentials, port, things = sys.argv[1], sys.argv[2], int(sys.argv[3])
profile = configparser.ConfigParser()
profile.read(credentials)
section = profile["halyard"]
def client():
    return boto3.client("iot", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                        aws_access_key_id=section["aws_access_key_id"],
                        aws_secret_access_key=section["aws_secret_access_key"])
client().create_thing_group(thingGroupName="fleet")
began = time.monotonic()
def register(chunk):
    iot = client()
    for n in chunk:
        iot.create_thing(thingName=f"dev-{n}")
        iot.add_thing_to_thing_group(thingGroupName="fleet", thingName=f"dev-{n}")
with ThreadPoolExecutor(16) as pool:
    list(pool.map(register, [range(i, things, 16) for i in range(16)]))
print(f"registered {things} things in {time.monotonic() - began:.1f} s", file=sys.stderr)
PY

"$bench" jobs --port "$mqtt_port" --devices "$devices" --thing-prefix dev- --executions "$jobs" \
    --duration 600 --ready-file "$work/ready" --json "$work/devices.json" >/dev/null 2>"$work/devices.log" &

pids+=("$!")
for _ in $(seq 600); do [[ -e "$work/ready" ]] && break; sleep 0.1; done
[[ -e "$work/ready" ]] || { cat "$work/devices.log" >&2; echo "the devices did not connect" >&2; exit 1; }

api "$things" "$rate" "$work/devices.json" "$jobs" <<'PY'
import configparser, json, os, sys, time
import boto3
credentials, port, things, rate, report, jobs = sys.argv[1:7]
things, rate, jobs = int(things), int(rate), int(jobs)
profile = configparser.ConfigParser()
profile.read(credentials)
section = profile["halyard"]
iot = boto3.client("iot", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                   aws_access_key_id=section["aws_access_key_id"],
                   aws_secret_access_key=section["aws_secret_access_key"])
group = "arn:aws:iot:us-east-1:000000000000:thinggroup/fleet"
def executions(job):
    details = iot.describe_job(jobId=job)["job"]["jobProcessDetails"]
    return sum(v for k, v in details.items() if k.startswith("numberOf"))

created_at = time.time()
began = time.monotonic()
iot.create_job(jobId="everyone-0", targets=[group], document=json.dumps({"operation": "install", "version": "2.0"}))
create_s = time.monotonic() - began
while executions("everyone-0") < things:
    time.sleep(0.05)
queued_s = time.monotonic() - began
for n in range(1, jobs):
    iot.create_job(jobId=f"everyone-{n}", targets=[group], document=json.dumps({"operation": "install", "n": n}))
# The devices write their report once each has done its execution.
while not (os.path.exists(report) and os.path.getsize(report) > 0):
    time.sleep(0.2)
time.sleep(0.2)
devices = json.load(open(report))
end_to_end = devices["completed"] / max(devices["last_completed_ms"] / 1000 - created_at, 1e-3)

iot.create_job(jobId="paced", targets=[group], document="{}",
               jobExecutionsRolloutConfig={"maximumPerMinute": rate})
time.sleep(10)
first, t0 = executions("paced"), time.monotonic()
time.sleep(60)
last, t1 = executions("paced"), time.monotonic()
achieved = (last - first) / (t1 - t0) * 60
iot.cancel_job(jobId="paced", force=True)

print("| measure | value |")
print("|---|---:|")
print(f"| CreateJob over a group of {things:,} things | {create_s * 1000:.0f} ms |")
print(f"| CreateJob until every thing has its execution | {queued_s:.2f} s ({things / queued_s:,.0f} executions/s) |")
print(f"| executions completed by {devices['devices']:,} devices ({jobs} jobs each), first CreateJob to last SUCCEEDED | {devices['completed']:,} at {end_to_end:,.0f}/s |")
print(f"| start-next round trip p50 / p99 | {devices['start_next']['p50_ms']:.2f} / {devices['start_next']['p99_ms']:.2f} ms |")
print(f"| update round trip p50 / p99 | {devices['update']['p50_ms']:.2f} / {devices['update']['p99_ms']:.2f} ms |")
print(f"| rollout at maximumPerMinute {rate:,}: achieved over a minute | {achieved:,.0f}/min ({(achieved - rate) / rate * 100:+.1f}%) |")
PY
