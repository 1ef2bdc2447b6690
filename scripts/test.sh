#!/usr/bin/env bash
# The whole test suite on a fresh Debian 12 machine: installs every apt and pip dependency (idempotent),
# then runs pytest. Extra arguments go to pytest (e.g. scripts/test.sh tests/test_runner.py -x).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
exec .venv/bin/python -m pytest -ra "$@"
