#!/usr/bin/env bash
# Installs what the test suite needs (Python packages; Debian's servers for the stores) and runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check -e ".[dev]"
exec python3 -m pytest -q "$@"
