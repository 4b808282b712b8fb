#!/usr/bin/env bash
# Runs the whole test suite, as CI does: formatting, lints, the Rust tests, the Helm chart
# (lint, render, validate), the deterministic simulation (sim-tests, under madsim), then the
# end-to-end tests (tests/e2e) against the
# binary built with the `ci` profile (the release's optimisations plus debug assertions) with
# real MQTT clients. Stops at the first
# failing step and exits non-zero.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

current_step="setup"
trap 'rc=$?; if ((rc != 0)); then printf "\n==> FAILED: %s (exit code %d)\n" "$current_step" "$rc" >&2; fi' EXIT

step() {
    local title=$1
    shift
    current_step=$title
    printf '\n==> %s\n' "$title"
    printf '    $ %s\n' "$*"
    local started=$SECONDS
    "$@"
    printf '==> ok: %s (%ds)\n' "$title" "$((SECONDS - started))"
}

step "System packages" ensure_apt_packages "${BUILD_PACKAGES[@]}" mosquitto-clients postgresql
step "Rust toolchain" ensure_cargo
step "Python environment (.venv)" ensure_test_venv
step "Disk space for the build" prune_target_dirs
step "Formatting" cargo fmt --all --check
# One profile (ci) for the lints, the tests and the end-to-end binary, so that RocksDB and every
# other dependency are compiled once; building the tests builds the binary with them.
step "Lints" cargo clippy --workspace --all-targets --profile ci -- -D warnings
step "Build" cargo test --profile ci --workspace --no-run
step "Rust tests" cargo test --profile ci --workspace
step "Helm chart" bash scripts/helm-check.sh
step "Simulation (madsim, 200 seeds)" run_simulation
step "End-to-end tests" env HALYARD_BIN="$(halyard_bin ci)" .venv/bin/python -m pytest -q tests/e2e

current_step="done"
printf '\n==> All steps passed.\n'
