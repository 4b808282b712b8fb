"""Validates rendered Kubernetes manifests: every object of a Kubernetes kind against that
version's OpenAPI schema (kubernetes-validate, strict: unknown fields are errors), every
HalyardCluster against the CRD's schema, and the objects the operator makes for each
HalyardCluster (`halyard-operator render`) the same way. Exits non-zero on the first file with
a failure, naming the object and the problem.

usage: validate_manifests.py --crd CRD.yaml --operator BIN --kubernetes-version 1.33.0 FILE...
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

# Kinds of the Prometheus Operator and cert-manager, whose schemas are not part of
# Kubernetes': their shape is checked here as far as the chart and the operator depend on it.
EXTENSION_KINDS = {
    "PrometheusRule": lambda o: isinstance(o.get("spec", {}).get("groups"), list),
    "ServiceMonitor": lambda o: isinstance(o.get("spec", {}).get("endpoints"), list),
    # cert-manager's: a Secret to write, an issuer to ask, the names to certify.
    "Certificate": lambda o: bool(o.get("spec", {}).get("secretName"))
    and bool(o.get("spec", {}).get("issuerRef", {}).get("name"))
    and isinstance(o.get("spec", {}).get("dnsNames"), list),
}


def crd_schema(path: str) -> dict[str, Any]:
    with open(path) as f:
        crd = yaml.safe_load(f)
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    return version["schema"]["openAPIV3Schema"]


def name_of(obj: dict[str, Any]) -> str:
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


def validate(obj: dict[str, Any], schema: dict[str, Any], version: str) -> list[str]:
    kind = obj.get("kind", "")
    if kind == "HalyardCluster":
        validator = jsonschema.Draft7Validator(schema)
        return [f"{name_of(obj)}: {'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(obj)]
    if kind in EXTENSION_KINDS:
        return [] if EXTENSION_KINDS[kind](obj) else [f"{name_of(obj)}: not the expected shape"]
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as e:
        return [f"{name_of(obj)}: {'.'.join(map(str, e.path))}: {e.message}"]
    except kubernetes_validate.SchemaNotFoundError:
        return [f"{name_of(obj)}: no Kubernetes {version} schema for {obj.get('apiVersion')} {kind}"]
    return []


def rendered_by_operator(operator: str, cluster: dict[str, Any]) -> list[dict[str, Any]]:
    out = subprocess.run(
        [operator, "render"], input=json.dumps(cluster), capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise SystemExit(f"halyard-operator render failed for {name_of(cluster)}: {out.stderr}")
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--crd", required=True)
    parser.add_argument("--operator", required=True)
    parser.add_argument("--kubernetes-version", required=True)
    parser.add_argument("files", nargs="+")
    args = parser.parse_args()
    schema = crd_schema(args.crd)
    failures: list[str] = []
    for path in args.files:
        with open(path) as f:
            objects = [d for d in yaml.safe_load_all(f) if d]
        checked = 0
        for obj in objects:
            problems = validate(obj, schema, args.kubernetes_version)
            failures += problems
            checked += 1
            if obj.get("kind") == "HalyardCluster" and not problems:
                for owned in rendered_by_operator(args.operator, obj):
                    failures += validate(owned, schema, args.kubernetes_version)
                    checked += 1
        print(f"{path}: {checked} objects checked")
    for failure in failures:
        print(f"FAIL {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
