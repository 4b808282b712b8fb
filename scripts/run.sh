#!/usr/bin/env bash
# Builds Halyard and runs it in the foreground with its embedded default: one node, data in
# ./data, MQTT on 127.0.0.1:1883 and the admin HTTP endpoint on 127.0.0.1:9090.
# Arguments are passed to `halyard serve`, e.g. `./scripts/run.sh --mqtt-listen 0.0.0.0:1883`.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

ensure_apt_packages "${BUILD_PACKAGES[@]}"
ensure_cargo
cargo build --release -p halyard-node --bin halyard

exec "$(halyard_bin)" serve "$@"
