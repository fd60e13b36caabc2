#!/usr/bin/env bash
# Installs what the test suite needs (Python packages; Debian's servers for the stores) and runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
# The Celery dispatch tests run a real redis-server (as broker).
if ! command -v redis-server >/dev/null && command -v apt-get >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
fi
# The example app's browser test drives Debian's headless Chromium (no browser download).
if ! { command -v chromium && command -v chromedriver; } >/dev/null && command -v apt-get >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
fi
python3 -m pip install --quiet --disable-pip-version-check -e ".[dev]"
exec python3 -m pytest -q "$@"
