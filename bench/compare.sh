#!/usr/bin/env bash
# Measures Halyard side by side with Mosquitto (and rumqttd where it builds) on this machine and
# writes the results into docs/benchmarks.md. Extra arguments go to `halyard-bench compare`
# (e.g. --quick, or --only fan-out).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

ensure_apt_packages "${BUILD_PACKAGES[@]}" mosquitto
ensure_cargo

target="${CARGO_TARGET_DIR:-target}"
[[ "$target" == /* ]] || target="$PWD/$target"
peers="${HALYARD_PEERS_DIR:-/var/cache/halyard-peers}"

peer_args=(--mosquitto "$(command -v mosquitto || echo /usr/sbin/mosquitto)")
if [[ ! -x "$peers/bin/rumqttd" ]]; then
    echo "Installing rumqttd into $peers"
    cargo install rumqttd --locked --root "$peers" || echo "rumqttd did not build: comparing with Mosquitto only"
fi
if [[ -x "$peers/bin/rumqttd" ]]; then
    peer_args+=(--rumqttd "$peers/bin/rumqttd")
fi

cargo build --release -p halyard-node --bin halyard -p halyard-bench --bin halyard-bench
exec "$target/release/halyard-bench" compare \
    --halyard "$target/release/halyard" \
    "${peer_args[@]}" \
    --command-line "bench/compare.sh${*:+ $*}" \
    "$@"
