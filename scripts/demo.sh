#!/usr/bin/env bash
# Sets up and starts the example app on http://127.0.0.1:5000 (PORT to change it): installs the
# project, creates the app's SQLite database, media archive folder and callback token in
# ./instance, records the port (simulated tasks' media are the server's own samples, which the
# archive fetches from it), and says how to send it a simulated task, or submit one with the
# page's form to the app's own fake provider, which calls it back (docs/example-app.md).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check -e ".[sqlalchemy,archive,otel,prometheus]"
port="${PORT:-5000}"
python3 -m flask --app example_app init --port "$port"
exec python3 -m flask --app example_app run --port "$port"
