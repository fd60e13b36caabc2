#!/usr/bin/env bash
# Installs the project and starts the example app on http://127.0.0.1:5000 (PORT to change it).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check -e .
port="${PORT:-5000}"
cat <<EOT

  The example app is starting on http://127.0.0.1:${port}/
  Send it a simulated task from another terminal, in this folder:

      flask --app example_app musiccallback simulate

EOT
exec python3 -m flask --app example_app run --port "$port"
