#!/usr/bin/env bash
# A provisioning storm on one node: DEVICES devices (default 1,000) sharing one claim
# certificate provision at once over mTLS (`halyard-bench provision`): connect with the claim,
# CreateKeysAndCertificate, RegisterThing with a fleet template (a thing in a group, the
# certificate activated, a policy by document), connect again with the new identity. Run once
# with RSA 2048 keys (AWS's, the default) and once with EC P-256 (`provisioning.key_algorithm`),
# each on a fresh node whose key pool (POOL, default 16) is full. Prints a Markdown table.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

# shellcheck source=bench/lib.sh
. bench/lib.sh
bench_prepare provision
devices="${DEVICES:-1000}"
pool="${POOL:-16}"

storm() {
    local algorithm="$1"
    stop_all
    rm -rf "$work/data"
    local http_port mqtts_port
    http_port="$(free_port)"
    mqtts_port="$(free_port)"
    HALYARD_LOG_LEVEL=warn HALYARD_PROVISIONING__KEY_ALGORITHM="$algorithm" \
        HALYARD_PROVISIONING__KEY_POOL="$pool" "$halyard" serve --data-dir "$work/data" \
        --mqtt-listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --tls-listen 127.0.0.1:0 --ws-listen 127.0.0.1:0 \
        --http-listen "127.0.0.1:$http_port" --mqtts-listen "127.0.0.1:$mqtts_port" &
    pids+=($!)
    for _ in $(seq 100); do
        [[ -s "$work/data/credentials" && -s "$work/data/tls/server.pem" ]] && break
        sleep 0.1
    done
    ".venv/bin/python" - "$work/data/credentials" "$http_port" "$work" <<'PY'
import configparser, json, sys
import boto3
credentials, port, work = sys.argv[1:4]
profile = configparser.ConfigParser()
profile.read(credentials)
section = profile["halyard"]
iot = boto3.client("iot", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                   aws_access_key_id=section["aws_access_key_id"],
                   aws_secret_access_key=section["aws_secret_access_key"])
arn = "arn:aws:iot:us-east-1:000000000000"
thing = "${iot:Connection.Thing.ThingName}"
device_policy = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": "iot:Connect", "Resource": f"{arn}:client/{thing}"},
    {"Effect": "Allow", "Action": ["iot:Publish", "iot:Receive"], "Resource": f"{arn}:topic/things/{thing}/*"}]}
template = {
    "Parameters": {"SerialNumber": {"Type": "String"}},
    "Resources": {
        "thing": {"Type": "AWS::IoT::Thing", "Properties": {
            "ThingName": {"Fn::Join": ["", ["meter_", {"Ref": "SerialNumber"}]]},
            "AttributePayload": {"serial": {"Ref": "SerialNumber"}}, "ThingGroups": ["meters"]}},
        "certificate": {"Type": "AWS::IoT::Certificate", "Properties": {
            "CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}, "Status": "ACTIVE"}},
        "policy": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyDocument": device_policy}},
    },
}
iot.create_thing_group(thingGroupName="meters")
iot.create_provisioning_template(templateName="meters", templateBody=json.dumps(template), enabled=True,
                                 provisioningRoleArn="arn:aws:iam::000000000000:role/provisioning")
claim = iot.create_keys_and_certificate(setAsActive=True)
open(f"{work}/claim.pem", "w").write(claim["certificatePem"])
open(f"{work}/claim.key", "w").write(claim["keyPair"]["PrivateKey"])
iot.create_policy(policyName="claim", policyDocument=json.dumps({"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": "iot:Connect", "Resource": "*"},
    {"Effect": "Allow", "Action": ["iot:Publish", "iot:Receive"], "Resource": [
        f"{arn}:topic/$aws/certificates/create/*", f"{arn}:topic/$aws/provisioning-templates/meters/provision/*"]},
    {"Effect": "Allow", "Action": "iot:Subscribe", "Resource": [
        f"{arn}:topicfilter/$aws/certificates/create/*",
        f"{arn}:topicfilter/$aws/provisioning-templates/meters/provision/*"]}]}))
iot.attach_policy(policyName="claim", target=claim["certificateArn"])
PY
    # The pool fills in the background after the start; the storm begins with it full.
    sleep $(( pool / 4 + 2 ))
    "$bench" provision --port "$mqtts_port" --ca "$work/data/tls/ca.pem" \
        --cert "$work/claim.pem" --key "$work/claim.key" --template meters \
        --devices "$devices" --json "$work/$algorithm.json" >/dev/null 2>"$work/$algorithm.log" \
        || { cat "$work/$algorithm.log" >&2; exit 1; }
}

storm rsa-2048
storm ec-p256
stop_all

".venv/bin/python" - "$work/rsa-2048.json" "$work/ec-p256.json" <<'PY'
import json, sys
print("| device keys | provisioned | devices/s | per device p50 / p99 | CreateKeysAndCertificate p50 / p99 | RegisterThing p50 / p99 | claim connect p99 | new identity connect p99 |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for name, path in (("RSA 2048 (default)", sys.argv[1]), ("EC P-256", sys.argv[2])):
    r = json.load(open(path))
    print(f"| {name} | {r['provisioned']:,} of {r['devices']:,} | {r['per_second']:,.1f} "
          f"| {r['device']['p50_ms']:,.0f} / {r['device']['p99_ms']:,.0f} ms "
          f"| {r['create_keys']['p50_ms']:,.0f} / {r['create_keys']['p99_ms']:,.0f} ms "
          f"| {r['register_thing']['p50_ms']:,.0f} / {r['register_thing']['p99_ms']:,.0f} ms "
          f"| {r['connect_claim']['p99_ms']:,.0f} ms | {r['connect_new']['p99_ms']:,.0f} ms |")
PY
