#!/usr/bin/env bash
# Device connections per second over MQTT with TLS and a client certificate, Halyard's 8883
# listener and Mosquitto's side by side in one run: the same device certificate (issued by
# Halyard's CA, registered with a policy), the same server certificate, full handshakes and
# resumed ones. Extra arguments go to every `halyard-bench handshakes` run (e.g. --workers 16).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

# shellcheck source=bench/lib.sh
. bench/lib.sh
bench_prepare tls mosquitto
duration="${DURATION:-8}"

http_port="$(free_port)"
halyard_port="$(free_port)"
mosquitto_port="$(free_port)"

HALYARD_LOG_LEVEL=warn "$halyard" serve --data-dir "$work/data" \
    --mqtt-listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --tls-listen 127.0.0.1:0 --ws-listen 127.0.0.1:0 \
    --http-listen "127.0.0.1:$http_port" --mqtts-listen "127.0.0.1:$halyard_port" &
pids+=($!)
for _ in $(seq 100); do
    [[ -s "$work/data/credentials" && -s "$work/data/tls/server.pem" ]] && break
    sleep 0.1
done

aws_iot() {
    AWS_SHARED_CREDENTIALS_FILE="$work/data/credentials" ".venv/bin/aws" --profile halyard \
        --region us-east-1 --endpoint-url "http://127.0.0.1:$http_port" iot "$@"
}
cert_arn="$(aws_iot create-keys-and-certificate --set-as-active \
    --certificate-pem-outfile "$work/device.pem" --private-key-outfile "$work/device.key" \
    --query certificateArn --output text)"
aws_iot create-policy --policy-name bench --policy-document \
    '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iot:Connect","Resource":"arn:aws:iot:us-east-1:000000000000:client/bench-*"}]}' \
    > /dev/null
aws_iot attach-policy --policy-name bench --target "$cert_arn"

# Started as root, Mosquitto would switch to its own user, which cannot read the keys in $work.
cat > "$work/mosquitto.conf" <<EOF
user $(id -un)
listener $mosquitto_port 127.0.0.1
cafile $work/data/tls/ca.pem
certfile $work/data/tls/server.pem
keyfile $work/data/tls/server.key
require_certificate true
allow_anonymous true
persistence false
set_tcp_nodelay true
log_dest none
EOF
mosquitto -c "$work/mosquitto.conf" &
pids+=($!)
for _ in $(seq 50); do
    (echo > "/dev/tcp/127.0.0.1/$mosquitto_port") 2>/dev/null && break
    sleep 0.1
done

echo "| broker | handshakes | connections/s | p50 ms | p99 ms |"
echo "|---|---|---:|---:|---:|"
for resume in "" --resume; do
    for broker in Halyard Mosquitto; do
        port="$halyard_port"
        [[ "$broker" == Mosquitto ]] && port="$mosquitto_port"
        json="$work/result.json"
        "$bench" handshakes --port "$port" --ca "$work/data/tls/ca.pem" --cert "$work/device.pem" \
            --key "$work/device.key" --duration "$duration" --json "$json" $resume "$@" >/dev/null
        ".venv/bin/python" - "$json" "$broker" "${resume:+resumed}" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
kind = "resumed" if sys.argv[3] else "full"
assert r["refused"] == 0 and r["failed"] == 0, r
print(f"| {sys.argv[2]} | {kind} ({r['resumed']} of {r['connections']} resumed) | {r['per_second']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} |")
EOF
    done
done
