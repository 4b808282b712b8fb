# Sourced by the benchmark scripts: free loopback ports, and a three-node Halyard cluster on
# them. Expects `halyard` (the binary), `work` (a scratch directory) and a `pids` array.

# A free loopback port, `tcp` or `udp`.
free_port() { ".venv/bin/python" -c 'import socket, sys; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if sys.argv[1] == "udp" else socket.SOCK_STREAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' "$1"; }

# Waits until something listens on loopback port $1 (30 s at most).
wait_for_port() {
    for _ in $(seq 300); do
        (echo > "/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on port $1" >&2
    return 1
}

# Starts nodes 1 to 3 of one cluster, QUIC between them, MQTT only; fills `mqtt` (node ->
# MQTT port) and returns once every node listens.
declare -A mqtt
start_three_nodes() {
    "$halyard" cluster-certs --out "$work/certs" --nodes 1,2,3 >/dev/null
    local -A peer
    local node
    for node in 1 2 3; do
        peer[$node]="$(free_port udp)"
        mqtt[$node]="$(free_port tcp)"
    done
    local members="1=127.0.0.1:${peer[1]},2=127.0.0.1:${peer[2]},3=127.0.0.1:${peer[3]}"
    for node in 1 2 3; do
        HALYARD_LOG_LEVEL=warn \
        HALYARD_CLUSTER__CA_CERT="$work/certs/ca.pem" \
        HALYARD_CLUSTER__CERT="$work/certs/node-$node.pem" \
        HALYARD_CLUSTER__KEY="$work/certs/node-$node.key" \
            "$halyard" serve --data-dir "$work/node-$node" --node-id "$node" \
            --peer-listen "127.0.0.1:${peer[$node]}" --initial-members "$members" \
            --mqtt-listen "127.0.0.1:${mqtt[$node]}" --admin-listen off --http-listen off \
            --mqtts-listen off --tls-listen off --ws-listen off >"$work/node-$node.log" 2>&1 &
        pids+=("$!")
    done
    for node in 1 2 3; do wait_for_port "${mqtt[$node]}"; done
}
