"""Requests per second of the extension's endpoint against a bare Flask JSON route.

One gunicorn (2 sync workers) serves the routes of ``benchmarks/app.py``; wrk drives them with
distinct task ids, the routes alternating in rounds within one run, and the ratio of their medians
to the bare route's is reported per store: the endpoint's, and for a store with a server that of
two trivial round trips to it (the least a claim and then a completion can cost).

    python -m benchmarks.http_ratio                      # memory store
    python -m benchmarks.http_ratio --store memory:// --store redis://127.0.0.1:6379/0

Needs gunicorn (the ``bench`` extra) and wrk (Debian's ``wrk``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from flask_musiccallback.testing import build_callback

from .app import TOKEN

LUA = """
local counter = 0
local prefix = tostring(math.random(1, 1000000000))
local template = [==[%s]==]
local path = "%s"
request = function()
  counter = counter + 1
  local body = template:gsub("TASK%%-ID", prefix .. "-" .. counter)
  return wrk.format("POST", path, {["Content-Type"] = "application/json"}, body)
end
init = function(args)
  math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16))
  prefix = tostring(math.random(1, 1000000000))
end
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"gunicorn did not listen on {port}")


def wrk(port: int, script: Path, seconds: int, connections: int) -> float:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-s", str(script),
         f"http://127.0.0.1:{port}"],
        check=True, capture_output=True, text=True,
    ).stdout
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"{errors.group(1)} failed answers during the run:\n{out}")
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not match:
        raise RuntimeError(out)
    return float(match.group(1))


def routes(store: str) -> list[tuple[str, str]]:
    """The routes measured for ``store``: the round-trip reference only where there is a server."""
    measured = [("bare", "/bare"), ("extension", f"/music-callback?token={TOKEN}")]
    if store.partition("://")[0].partition("+")[0] in ("postgresql", "redis", "rediss"):
        measured.insert(1, ("round-trips", "/round-trips"))
    return measured


def measure(
    store: str, rounds: int, seconds: int, connections: int, tracks: int
) -> dict[str, float]:
    """Median requests per second of each route of :func:`routes`."""
    payload = json.dumps(build_callback("complete", task_id="TASK-ID", tracks=tracks))
    port = free_port()
    env = {**os.environ, "BENCH_STORE": store}
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-w", "2", "-k", "sync", "-b", f"127.0.0.1:{port}",
         "--log-level", "warning", "benchmarks.app:app"],
        env=env,
    )
    try:
        wait_for(port)
        with tempfile.TemporaryDirectory() as folder:
            scripts = {}
            for name, path in routes(store):
                scripts[name] = Path(folder, f"{name}.lua")
                scripts[name].write_text(LUA % (payload, path))
            for name in scripts:  # warm-up
                wrk(port, scripts[name], 2, connections)
            results: dict[str, list[float]] = {name: [] for name in scripts}
            for _ in range(rounds):
                for name in scripts:
                    results[name].append(wrk(port, scripts[name], seconds, connections))
    finally:
        server.terminate()
        server.wait(timeout=20)
    return {name: statistics.median(values) for name, values in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", action="append", help="MUSICCALLBACK_STORE URL (repeatable)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--tracks", type=int, default=2)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed: apt-get install wrk")
    print(
        "| store | bare route req/s | two round trips req/s | endpoint req/s "
        "| ratio | two round trips' ratio |"
    )
    print("|---|---|---|---|---|---|")
    for store in args.store or ["memory://"]:
        row = measure(store, args.rounds, args.seconds, args.connections, args.tracks)
        label = re.sub(r"//[^@/]*@", "//", store)
        bare, ext, trips = row["bare"], row["extension"], row.get("round-trips")
        floor = ("-", "-") if trips is None else (f"{trips:.0f}", f"{trips / bare:.2f}")
        print(
            f"| `{label}` | {bare:.0f} | {floor[0]} | {ext:.0f} | {ext / bare:.2f} | {floor[1]} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
