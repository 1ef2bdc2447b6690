"""Regenerate ``schema.json``: the field types and patch metadata of the kinds the fake serves.

The data comes from the Kubernetes OpenAPI definitions as packaged by the ``kubernetes-validate``
PyPI package (a test dependency). Only what the fake needs is kept: types, ``$ref``s, ``required``,
``format`` and the ``x-kubernetes-patch-*`` / ``x-kubernetes-list-*`` extensions; descriptions and
enums are dropped. Run from the repository root::

    .venv/bin/python -m agent.fakekube.gen_schema [--version 1.33.0]
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


def generate(version: str) -> dict:
    import kubernetes_validate  # noqa: PLC0415 - test dependency, only needed here

    base = os.path.join(os.path.dirname(kubernetes_validate.__file__), "kubernetes-json-schema",
                        f"v{version}-local", "_definitions.json")
    with open(base, encoding="utf-8") as fh:
        defs = json.load(fh)["$defs"]
    wanted, todo = set(), list(ROOTS)
    while todo:
        name = todo.pop()
        if name in wanted:
            continue
        wanted.add(name)
        found: set[str] = set()
        _refs(defs[name], found)
        todo.extend(found - wanted)
    return {"kubernetesVersion": version,
            "definitions": {name: _strip(defs[name]) for name in sorted(wanted)}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", default="1.33.0")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "schema.json"))
    args = parser.parse_args(argv)
    data = generate(args.version)
    with open(args.out, "w", encoding="utf-8") as fh:
        json.dump(data, fh, sort_keys=True, separators=(",", ":"))
        fh.write("\n")
    print(f"wrote {args.out}: {len(data['definitions'])} definitions", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
