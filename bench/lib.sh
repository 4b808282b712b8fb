# Sourced by the benchmark scripts after scripts/lib.sh: the optimised build, a scratch
# directory cleaned up on exit, free loopback ports, and Halyard nodes on them.

# Installs what a benchmark needs (build packages plus any Debian packages given), builds the
# optimised node and load generator, and sets `halyard`, `bench`, `work` (a scratch directory
# named after $1, on the real disk since the store fsyncs its log) and `pids` (processes ended,
# and `work` removed, on exit).
bench_prepare() {
    local name="$1"
    shift
    ensure_apt_packages "${BUILD_PACKAGES[@]}" "$@"
    ensure_cargo
    ensure_test_venv
    local target="${CARGO_TARGET_DIR:-target}"
    [[ "$target" == /* ]] || target="$PWD/$target"
    cargo build --release -p halyard-node --bin halyard -p halyard-bench --bin halyard-bench
    halyard="$target/release/halyard"
    bench="$target/release/halyard-bench"
    work="$(mktemp -d "${TMPDIR:-/var/tmp}/halyard-$name.XXXXXX")"
    pids=()
    trap 'stop_all; rm -rf "$work"' EXIT
}

# Ends every process in `pids`.
stop_all() {
    local pid
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    pids=()
}

# A free loopback port, `tcp` (the default) or `udp`.
free_port() { ".venv/bin/python" -c 'import socket, sys; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if sys.argv[1] == "udp" else socket.SOCK_STREAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' "${1:-tcp}"; }

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

# Ends what runs and starts one fresh node with an empty store on free ports (`mqtt_port`,
# `http_port`, `admin_port`), so that no run pays for the flushes and snapshots of the one
# before; returns once it accepts MQTT and has written its credentials.
start_halyard() {
    stop_all
    rm -rf "$work/data"
    mqtt_port="$(free_port)"
    http_port="$(free_port)"
    admin_port="$(free_port)"
    HALYARD_LOG_LEVEL=warn "$halyard" serve --data-dir "$work/data" \
        --mqtt-listen "127.0.0.1:$mqtt_port" --http-listen "127.0.0.1:$http_port" \
        --admin-listen "127.0.0.1:$admin_port" --mqtts-listen 127.0.0.1:0 --tls-listen 127.0.0.1:0 --ws-listen 127.0.0.1:0 &
    pids+=($!)
    for _ in $(seq 100); do
        [[ -s "$work/data/credentials" ]] && (echo > "/dev/tcp/127.0.0.1/$mqtt_port") 2>/dev/null && return
        sleep 0.1
    done
    echo "halyard did not start" >&2
    exit 1
}
