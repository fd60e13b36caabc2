"""Requests per second of the extension's endpoint against a bare Flask JSON route.

One gunicorn (2 sync workers) serves the routes of ``benchmarks/app.py``; wrk drives them with
distinct task ids, the routes alternating in rounds within one run, and the ratio of their medians
to the bare route's is reported per store: the endpoint's, and for a store with a server that of
two trivial round trips to it (the least a claim and then a completion can cost).

    python -m benchmarks.http_ratio                      # memory store
    python -m benchmarks.http_ratio --store memory:// --store redis://127.0.0.1:6379/0
    python -m benchmarks.http_ratio --store redis://127.0.0.1:6379/0 --cpu

``--otel`` measures each store again with the OpenTelemetry SDK configured in the served app, once
per mode named (``metrics``, ``sampled``, ``all``; all three when none is; ``BENCH_OTEL``, see
``benchmarks/app.py``): what the extension's metrics and spans cost once a host records them.

``--cpu`` also says where each route's CPU goes, per request: the gunicorn workers, the store's
server (the ``redis-server`` or ``postgres`` processes of this machine) and wrk. On a machine whose
cores are all busy, requests per second follow the sum.

Needs gunicorn (the ``bench`` extra) and wrk (Debian's ``wrk``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from flask_musiccallback.simulate import build_callback
from flask_musiccallback.stores.registry import url_scheme

from .app import SDK_MODES, TOKEN

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


#: The processes of a store's server, by the name they run under.
SERVER_PROCESSES = {
    "redis": "redis-server",
    "rediss": "redis-server",
    "unix": "redis-server",
    "postgresql": "postgres",
}


def cpu_seconds(pids: list[int]) -> float:
    """User and system CPU the processes used so far, from ``/proc`` (Linux)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
                fields = stat.read().rpartition(")")[2].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def processes(named: str | None = None, parent: int | None = None) -> list[int]:
    """Pids of this machine's processes with that command name, or that parent."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as stat:
                text = stat.read()
        except OSError:
            continue
        command = text[text.index("(") + 1 : text.rindex(")")]
        ppid = int(text.rpartition(")")[2].split()[1])
        if (named is not None and command == named) or (parent is not None and ppid == parent):
            found.append(int(entry))
    return found


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
    if url_scheme(store) in SERVER_PROCESSES:
        measured.insert(1, ("round-trips", "/round-trips"))
    return measured


def measure(
    store: str, rounds: int, seconds: int, connections: int, tracks: int, otel: str = ""
) -> tuple[dict[str, float], dict[str, tuple[float, float, float]]]:
    """Median requests per second of each route of :func:`routes`, and its CPU per request.

    The CPU is the median over the rounds, in microseconds per request: the gunicorn workers,
    the store's server, wrk.
    """
    payload = json.dumps(build_callback("complete", task_id="TASK-ID", tracks=tracks))
    port = free_port()
    env = {**os.environ, "BENCH_STORE": store, "BENCH_OTEL": otel}
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
            workers = processes(parent=server.pid)
            command = SERVER_PROCESSES.get(url_scheme(store))
            servers = [] if command is None else processes(named=command)
            results: dict[str, list[float]] = {name: [] for name in scripts}
            cpu: dict[str, list[tuple[float, float, float]]] = {name: [] for name in scripts}
            for _ in range(rounds):
                for name in scripts:
                    before = (cpu_seconds(workers), cpu_seconds(servers), _children_cpu())
                    rate = wrk(port, scripts[name], seconds, connections)
                    after = (cpu_seconds(workers), cpu_seconds(servers), _children_cpu())
                    served = rate * seconds
                    results[name].append(rate)
                    workers_cpu, server_cpu, wrk_cpu = (
                        (b - a) / served * 1e6 for a, b in zip(before, after, strict=True)
                    )
                    cpu[name].append((workers_cpu, server_cpu, wrk_cpu))
    finally:
        server.terminate()
        server.wait(timeout=20)
    return (
        {name: statistics.median(values) for name, values in results.items()},
        {name: _median_each(values) for name, values in cpu.items()},
    )


def _children_cpu() -> float:
    """CPU of the finished child processes: the wrk runs."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _median_each(values: list[tuple[float, float, float]]) -> tuple[float, float, float]:
    workers, server, load = zip(*values, strict=True)
    return statistics.median(workers), statistics.median(server), statistics.median(load)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", action="append", help="MUSICCALLBACK_STORE URL (repeatable)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--tracks", type=int, default=2)
    parser.add_argument("--cpu", action="store_true", help="also CPU per request, per process")
    parser.add_argument(
        "--otel",
        nargs="*",
        choices=SDK_MODES,
        help="each store also with the OpenTelemetry SDK configured: these modes (default: all)",
    )
    parser.add_argument(
        "--without", default="", help="fast paths to turn off, comma-separated (benchmarks/app.py)"
    )
    args = parser.parse_args()
    os.environ["BENCH_WITHOUT"] = args.without
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed: apt-get install wrk")
    print(
        "| store | bare route req/s | two round trips req/s | endpoint req/s "
        "| ratio | two round trips' ratio |"
    )
    print("|---|---|---|---|---|---|")
    spent: list[str] = []
    modes = [""] if args.otel is None else ["", *(args.otel or SDK_MODES)]
    for store, otel in [(store, mode) for store in args.store or ["memory://"] for mode in modes]:
        row, cpu = measure(store, args.rounds, args.seconds, args.connections, args.tracks, otel)
        label = re.sub(r"//[^@/]*@", "//", store)
        label = f"{label}` + SDK ({otel})" if otel else f"{label}`"
        for name, (workers, server, load) in cpu.items():
            spent.append(
                f"| `{label} | {name} | {workers:.0f} | {server:.0f} | {load:.0f} "
                f"| {workers + server + load:.0f} | {row[name]:.0f} |"
            )
        bare, ext, trips = row["bare"], row["extension"], row.get("round-trips")
        floor = ("-", "-") if trips is None else (f"{trips:.0f}", f"{trips / bare:.2f}")
        print(
            f"| `{label} | {bare:.0f} | {floor[0]} | {ext:.0f} | {ext / bare:.2f} | {floor[1]} |",
            flush=True,
        )
    if args.cpu:
        print("\nCPU per request, µs (median of the rounds):\n")
        print("| store | route | gunicorn workers | store's server | wrk | total | req/s |")
        print("|---|---|---|---|---|---|---|")
        print("\n".join(spent))


if __name__ == "__main__":
    main()
