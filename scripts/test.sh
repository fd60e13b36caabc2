#!/usr/bin/env bash
# Installs what the test suite needs (Python packages; Debian's servers for the stores) and runs it.
#
# The store tests start their own PostgreSQL and Redis servers from Debian's packages (see
# tests/servers.py), the Celery dispatch tests a redis-server as broker, and the example app's
# browser test Debian's headless Chromium (no browser download); with CI=true a test that finds
# them missing fails instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=()
command -v redis-server >/dev/null 2>&1 || packages+=(redis-server)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || packages+=(postgresql)
{ command -v chromium && command -v chromedriver; } >/dev/null 2>&1 || packages+=(chromium chromium-driver)
if [ "${#packages[@]}" -gt 0 ] && command -v apt-get >/dev/null; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "Installing ${packages[*]} (Debian packages) for the tests"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${packages[@]}" >/dev/null
fi

python3 -m pip install --quiet --disable-pip-version-check -e ".[dev]"
# Four processes, each test file in one of them (its module fixtures, a Celery worker or a
# server, start once): most tests wait on sockets, servers and back-offs rather than on the CPU,
# so four overlap well even on two cores. Pass -n 0 to run in this process (a debugger, -x).
exec python3 -m pytest -q -n 4 --dist loadfile "$@"
