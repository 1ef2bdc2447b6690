"""Regenerate ``schema.json``: the field types and patch metadata of the kinds the fake serves.

The data comes from the Kubernetes OpenAPI definitions as packaged by the ``kubernetes-validate``
PyPI package (a test dependency). Only what the fake needs is kept: types, ``$ref``s, ``required``,
``format`` and the ``x-kubernetes-patch-*`` / ``x-kubernetes-list-*`` extensions; descriptions and
enums are dropped. Run from the repository root::

    .venv/bin/python -m agent.fakekube.gen_schema [--version 1.33.0] [--extra-version 1.37.0]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

ROOTS = [
    "io.k8s.api.core.v1.Node",
    "io.k8s.api.core.v1.Pod",
    "io.k8s.api.core.v1.Event",
    "io.k8s.api.core.v1.Namespace",
    "io.k8s.api.core.v1.ConfigMap",
    "io.k8s.api.coordination.v1.Lease",
    "io.k8s.api.events.v1.Event",
    "io.k8s.api.authentication.v1.TokenReview",
]
# Kinds that are newer than the base version: Dynamic Resource Allocation (ResourceSlice, ResourceClaim and
# DeviceTaintRule; DeviceTaintRule is resource.k8s.io/v1alpha3 in 1.33-1.35, also v1beta2 from 1.36 and v1 from
# 1.37), and the PodDisruptionBudget/Eviction pair of policy/v1. Taken from EXTRA_VERSION; a definition both
# versions have (ObjectMeta, ...) comes from the base version.
EXTRA_VERSION = "1.37.0"
EXTRA_ROOTS = [
    "io.k8s.api.resource.v1.ResourceSlice",
    "io.k8s.api.resource.v1beta2.ResourceSlice",
    "io.k8s.api.resource.v1.DeviceTaintRule",
    "io.k8s.api.resource.v1beta2.DeviceTaintRule",
    "io.k8s.api.resource.v1.ResourceClaim",
    "io.k8s.api.policy.v1.PodDisruptionBudget",
    "io.k8s.api.policy.v1.Eviction",
]

KEEP = {
    "$ref", "type", "properties", "additionalProperties", "items", "required", "format", "oneOf",
    "x-kubernetes-patch-strategy", "x-kubernetes-patch-merge-key", "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys", "x-kubernetes-preserve-unknown-fields", "x-kubernetes-int-or-string",
}


def _strip(node):
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "properties":
                out[key] = {name: _strip(sub) for name, sub in value.items()}
            elif key in KEEP:
                out[key] = _strip(value)
        if "$ref" in out:
            out["$ref"] = out["$ref"].rsplit("/", 1)[-1]
        return out
    if isinstance(node, list):
        return [_strip(v) for v in node]
    return node


def _refs(node, found):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                found.add(value.rsplit("/", 1)[-1])
            else:
                _refs(value, found)
    elif isinstance(node, list):
        for value in node:
            _refs(value, found)


def _load(version: str) -> dict:
    import kubernetes_validate  # noqa: PLC0415 - test dependency, only needed here

    base = os.path.join(os.path.dirname(kubernetes_validate.__file__), "kubernetes-json-schema",
                        f"v{version}-local", "_definitions.json")
    with open(base, encoding="utf-8") as fh:
        return json.load(fh)["$defs"]


def _closure(defs: dict, roots: list[str]) -> set[str]:
    wanted, todo = set(), list(roots)
    while todo:
        name = todo.pop()
        if name in wanted:
            continue
        wanted.add(name)
        found: set[str] = set()
        _refs(defs[name], found)
        todo.extend(found - wanted)
    return wanted


def generate(version: str, extra_version: str = EXTRA_VERSION) -> dict:
    defs = _load(version)
    out = {name: _strip(defs[name]) for name in _closure(defs, ROOTS)}
    extra = _load(extra_version)
    for name in _closure(extra, EXTRA_ROOTS):
        if name not in out:
            out[name] = _strip(defs[name] if name in defs else extra[name])
    return {"kubernetesVersion": version, "extraVersion": extra_version,
            "definitions": {name: out[name] for name in sorted(out)}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", default="1.33.0")
    parser.add_argument("--extra-version", default=EXTRA_VERSION)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "schema.json"))
    args = parser.parse_args(argv)
    data = generate(args.version, args.extra_version)
    with open(args.out, "w", encoding="utf-8") as fh:
        json.dump(data, fh, sort_keys=True, separators=(",", ":"))
        fh.write("\n")
    print(f"wrote {args.out}: {len(data['definitions'])} definitions", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
