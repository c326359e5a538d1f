"""Copy the Kubernetes JSON schemas that deploy/k8s/ uses into this repository.

    pip download --no-deps -d /tmp/kv kubernetes-validate==1.37.0
    python deploy/schemas/vendor.py /tmp/kv/kubernetes_validate-1.37.0-py3-none-any.whl

Reads the strict schemas (additionalProperties: false everywhere) of one
Kubernetes version from the kubernetes-validate wheel, keeps exactly the kinds
and API versions that the manifests under deploy/k8s/ declare, and prunes the
shared `_definitions.json` to the definitions those kinds reach. Writes
deploy/schemas/v<MINOR>/ and its SOURCE.json (wheel, sha256, kinds), so
tests/unit/test_deploy.py validates offline. Run it again after adding a kind.
It never fetches anything itself.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import zipfile
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
K8S = HERE.parent / "k8s"
KUBERNETES_VERSION = "1.32.0"


def schema_name(kind: str, api_version: str) -> str:
    """kubernetes-validate's file name: deployment-apps-v1.json, service-v1.json, ..."""
    group, _, version = api_version.rpartition("/")
    parts = [kind.lower(), group.split(".")[0], version] if group else [kind.lower(), version]
    return "-".join(parts) + ".json"


def manifest_kinds(root: Path = K8S) -> set[tuple[str, str]]:
    kinds = set()
    for path in sorted(root.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                kinds.add((doc["kind"], doc["apiVersion"]))
    return kinds


def refs(node: Any) -> set[str]:
    """Every '#/$defs/NAME' that a schema fragment points at."""
    if isinstance(node, dict):
        found = set()
        for k, v in node.items():
            if k == "$ref" and isinstance(v, str) and "#/$defs/" in v:
                found.add(v.split("#/$defs/", 1)[1])
            else:
                found |= refs(v)
        return found
    if isinstance(node, list):
        return set().union(*(refs(v) for v in node)) if node else set()
    return set()


def vendor(wheel: Path, out: Path) -> dict[str, Any]:
    prefix = f"kubernetes_validate/kubernetes-json-schema/v{KUBERNETES_VERSION}-local-strict/"
    out.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as zf:
        defs_doc = json.loads(zf.read(prefix + "_definitions.json"))
        kinds = {}
        for kind, api_version in sorted(manifest_kinds()):
            name = schema_name(kind, api_version)
            try:
                kinds[name] = json.loads(zf.read(prefix + name))
            except KeyError:
                sys.exit(f"no schema {name} for {kind} {api_version} in {wheel.name}")
    # The transitive closure of definitions reachable from the kinds we use.
    all_defs = defs_doc["$defs"]
    todo = set().union(*(refs(s) for s in kinds.values()))
    keep: set[str] = set()
    while todo:
        name = todo.pop()
        if name not in keep:
            keep.add(name)
            todo |= refs(all_defs[name]) - keep
    pruned = {**defs_doc, "$defs": {k: all_defs[k] for k in sorted(keep)}}
    for old in out.glob("*.json"):
        old.unlink()
    for name, schema in kinds.items():
        (out / name).write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
    (out / "_definitions.json").write_text(json.dumps(pruned, indent=1, sort_keys=True) + "\n")
    source = {
        "package": wheel.name,
        "sha256": hashlib.sha256(wheel.read_bytes()).hexdigest(),
        "schemas": f"v{KUBERNETES_VERSION}-local-strict",
        "kinds": sorted(kinds),
        "definitions_kept": len(keep),
        "definitions_in_package": len(all_defs),
    }
    (out.parent / f"SOURCE-v{KUBERNETES_VERSION.rsplit('.', 1)[0]}.json").write_text(
        json.dumps(source, indent=1) + "\n"
    )
    return source


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("wheel", type=Path, help="kubernetes_validate-*.whl (pip download --no-deps)")
    args = ap.parse_args()
    minor = KUBERNETES_VERSION.rsplit(".", 1)[0]
    source = vendor(args.wheel, HERE / f"v{minor}")
    print(json.dumps(source, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
