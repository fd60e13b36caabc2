#!/usr/bin/env bash
# Checks the package `pip install` would get, as PyPI and a host would see it:
#
# - `python -m build` makes an sdist, and a wheel from that sdist;
# - `twine check --strict` accepts their metadata (what PyPI would render, or refuse);
# - the wheel installed with no extras into a fresh virtual environment imports, runs
#   `flask musiccallback --help` on a tiny app, and receives a callback on the memory store;
# - each extra installs on its own into a fresh environment and does what it is for
#   (scripts/check_installed.py has a check for each; an extra without one fails).
#
# Fresh means fresh: nothing of the development install can hide a missing dependency. The
# environments are made in parallel and share pip's cache; everything lands in a temporary
# directory that is removed at the end. Run from anywhere; PYTHON picks the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
python="${PYTHON:-python3}"
started=$SECONDS

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PIP_ROOT_USER_ACTION=ignore

echo "Building the sdist and the wheel"
if ! "$python" -m build --outdir "$work/dist" . >"$work/build.log" 2>&1; then
  cat "$work/build.log"
  exit 1
fi
"$python" -m twine check --strict "$work"/dist/*
wheels=("$work"/dist/*.whl)
[ "${#wheels[@]}" -eq 1 ] || { echo "Expected one wheel, got: ${wheels[*]}"; exit 1; }
wheel="${wheels[0]}"

# A fresh environment named $1, with $2 (the wheel, with or without an extra) installed.
install() {
  "$python" -m venv "$work/$1" && "$work/$1/bin/python" -m pip install --quiet "$2"
}

# The wheel alone: the package, the CLI through the flask.commands entry point, a callback.
check_base() {
  install base "$wheel" || return 1
  mkdir "$work/host"
  printf '%s\n' \
    'from flask import Flask' \
    'from flask_musiccallback import MusicCallback' \
    '' \
    'app = Flask(__name__)' \
    'app.config["MUSICCALLBACK_TOKEN"] = "check-package-token"' \
    'MusicCallback(app)' >"$work/host/hostapp.py"
  local help
  help="$(cd "$work/host" && FLASK_APP=hostapp "$work/base/bin/flask" musiccallback --help)" \
    || return 1
  [[ "$help" == *simulate* ]] || { echo "flask musiccallback --help lists no simulate"; return 1; }
  (cd "$work" && "$work/base/bin/python" "$root/scripts/check_installed.py")
}

# The extras a host installs, from the wheel's own metadata; dev, bench and docs are this
# repository's.
extras=($("$python" -c '
import sys, zipfile
from email.parser import Parser
wheel = zipfile.ZipFile(sys.argv[1])
(name,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
metadata = Parser().parsestr(wheel.read(name).decode())
print(*sorted(set(metadata.get_all("Provides-Extra", [])) - {"dev", "bench", "docs"}))
' "$wheel"))
[ "${#extras[@]}" -gt 0 ] || { echo "No extras found in the wheel's metadata"; exit 1; }

check_extra() {
  install "extra-$1" "$wheel[$1]" || return 1
  (cd "$work" && "$work/extra-$1/bin/python" "$root/scripts/check_installed.py" "$1")
}

echo "Installing the wheel alone, and with each extra: ${extras[*]}"
declare -A pids
check_base >"$work/base.log" 2>&1 &
pids[base]=$!
for extra in "${extras[@]}"; do
  check_extra "$extra" >"$work/extra-$extra.log" 2>&1 &
  pids[$extra]=$!
done

failed=()
for name in base "${extras[@]}"; do
  log="$work/base.log"
  [ "$name" = base ] || log="$work/extra-$name.log"
  if wait "${pids[$name]}"; then
    tail -n 1 "$log"
  else
    failed+=("$name")
    echo "--- $name failed:"
    cat "$log"
  fi
done

if [ "${#failed[@]}" -gt 0 ]; then
  echo "Package checks failed: ${failed[*]} ($((SECONDS - started)) s)"
  exit 1
fi
echo "Package checks passed: $(basename "$wheel"), the sdist, and ${#extras[@]} extras" \
  "in $((SECONDS - started)) s"
