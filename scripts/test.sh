#!/usr/bin/env bash
# Runs the whole test suite, as CI does: formatting, lints, the Rust tests, the deterministic
# simulation (sim-tests, under madsim), then the end-to-end tests (tests/e2e) against the
# release binary with real MQTT clients. Stops at the first
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

setup_python() {
    # The certificate tests make CAs and CSRs with the openssl command line, as fleets do.
    if ! command -v openssl >/dev/null 2>&1; then
        ensure_apt_packages openssl
    fi
    # Debian's own python3 ships venv separately; pyenv and python.org builds include it.
    if ! command -v python3 >/dev/null 2>&1; then
        ensure_apt_packages python3 python3-venv
    elif ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
        ensure_apt_packages python3-venv
    fi
    # A venv whose interpreter was removed (e.g. a Python upgrade) is rebuilt rather than patched.
    if ! .venv/bin/python -c 'import sys' >/dev/null 2>&1; then
        rm -rf .venv
        python3 -m venv .venv
    fi
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -r tests/e2e/requirements.txt
}

step "System packages" ensure_apt_packages "${BUILD_PACKAGES[@]}" mosquitto-clients
step "Rust toolchain" ensure_cargo
step "Python environment (.venv)" setup_python
step "Disk space for the build" prune_target_dirs
step "Formatting" cargo fmt --all --check
step "Lints" cargo clippy --workspace --all-targets --release -- -D warnings
step "Build" cargo build --release -p halyard-node --bin halyard
step "Rust tests" cargo test --release --workspace
step "Simulation (madsim, 200 seeds)" run_simulation
step "End-to-end tests" env HALYARD_BIN="$(halyard_bin)" .venv/bin/python -m pytest -q tests/e2e

current_step="done"
printf '\n==> All steps passed.\n'
