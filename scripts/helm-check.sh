#!/usr/bin/env bash
# Checks the Helm chart: `helm lint`, then `helm template` with the default values and with
# each file in helm/halyard/ci/, every rendered object (the CRD included) and every object the
# operator makes for a rendered HalyardCluster validated against the Kubernetes schemas.
# Needs the Python environment (.venv) and the operator binary of the `ci` profile.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

# The oldest Kubernetes the chart supports (Chart.yaml's kubeVersion), whose schemas are the
# strictest about fields added since.
KUBERNETES_VERSION=1.33.0
helm_binary="$(ensure_helm)"
# The chart's files/ link to the dashboards and rules in deploy/, which helm reports each time.
helm() {
    "$helm_binary" "$@" 2> >(grep -v 'found symbolic link in path' >&2)
}
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
helm version --short
helm lint --strict --kube-version "$KUBERNETES_VERSION" helm/halyard
for values in default helm/halyard/ci/*.yaml; do
    name="$(basename "$values" .yaml)"
    args=()
    [[ "$values" == default ]] || args=(--values "$values")
    helm lint --strict --kube-version "$KUBERNETES_VERSION" "${args[@]}" helm/halyard >/dev/null
    helm template halyard helm/halyard --namespace iot --include-crds \
        --kube-version "$KUBERNETES_VERSION" "${args[@]}" >"$out/$name.yaml" 2>"$out/$name.log" || {
        cat "$out/$name.log" >&2
        exit 1
    }
done
.venv/bin/python scripts/validate_manifests.py \
    --crd helm/halyard/crds/halyard.io_halyardclusters.yaml \
    --operator "${CARGO_TARGET_DIR:-target}/ci/halyard-operator" \
    --kubernetes-version "$KUBERNETES_VERSION" \
    "$out"/*.yaml
