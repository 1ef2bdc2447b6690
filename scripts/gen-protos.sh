#!/usr/bin/env bash
# Generates Python stubs for every proto/**/*.proto into agent/_proto/ with grpcio-tools (pinned beside the
# protobuf runtime by pip). CI runs it and fails on a diff: proto/ is the one source of truth for the wire.
# Generated modules import each other as `agent._proto.<path>`, so the package works wherever it is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
out=$(realpath -m "${OUT:-agent/_proto}")
case "$PY" in */*) PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")";; esac  # absolute, venv kept
rm -rf "$out"
mkdir -p "$out"
mapfile -t protos < <(cd proto && find . -name '*.proto' | sed 's|^\./||' | sort)
if [ ${#protos[@]} -eq 0 ]; then echo "no protos"; exit 0; fi
(cd proto && "$PY" -m grpc_tools.protoc -I. --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
   "${protos[@]}")
# Make packages, and rewrite absolute imports of sibling protos ("from containerd.events import x_pb2")
# to live under agent._proto.
find "$out" -type d -exec sh -c 'touch "$1/__init__.py"' _ {} \;
tops=$(cd proto && find . -mindepth 1 -maxdepth 1 -type d | sed 's|^\./||' | paste -sd'|' -)
if [ -n "$tops" ]; then
  find "$out" -name '*.py' -o -name '*.pyi' | xargs sed -i -E \
    -e "s/^from (${tops})([. ])/from agent._proto.\1\2/" \
    -e "s/^import (${tops})\.([a-zA-Z0-9_.]+)_pb2 as/import agent._proto.\1.\2_pb2 as/"
fi
echo "generated $(find "$out" -name '*_pb2.py' | wc -l) modules into $out"
