#!/usr/bin/env bash
# Runs the deterministic simulation of Halyard under faults (crate sim-tests, built with
# --cfg madsim in a target dir of its own). SIM_SEEDS seeds from SIM_SEED; a failure prints
# the command that replays its seed alone. Extra arguments go to `cargo test`.
#
#   scripts/sim.sh                               # 200 seeds
#   SIM_SEED=1000 SIM_SEEDS=10000 scripts/sim.sh # a soak
#   SIM_SEED=60 SIM_SEEDS=1 scripts/sim.sh       # replay one seed
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
ensure_cargo
run_simulation "$@"
