"""How long the provider waits for an answer when receivers take seconds: sync, thread, celery.

Not a test, and never run by the suite. Run it by hand from the project root (about a minute;
``redis-server`` must be installed for the celery row):

    PYTHONPATH=. python benchmarks/dispatch_latency.py

Each mode serves a real app over a real socket (Werkzeug's threaded server on 127.0.0.1, in its own
process) whose receiver sleeps ``--receiver-seconds``; one client, then 16 concurrent ones, post
distinct callbacks, and the time from sending a request to reading its answer is measured. The
celery row runs a real prefork worker against a throw-away ``redis-server``. The thread row uses the
default pool of 4 threads with room for every request (``--thread-queue-size``); with the default
queue of 100 the answers past it are 503s, as fast.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
from flask import Flask
from werkzeug.serving import make_server

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from flask_musiccallback import MusicCallback, all_tracks_generated  # noqa: E402
from flask_musiccallback.simulate import build_callback  # noqa: E402
from tests.celery_host import celery_init_app  # noqa: E402
from tests.servers_redis import celery_worker, redis_server  # noqa: E402

TOKEN = "benchmark-token"  # noqa: S105


def create_app(
    mode: str, broker_url: str | None, receiver_seconds: float, thread_queue_size: int = 100
) -> Flask:
    app = Flask("dispatch_latency")
    app.config.update(
        MUSICCALLBACK_TOKEN=TOKEN,
        MUSICCALLBACK_DISPATCH=mode,
        MUSICCALLBACK_THREAD_QUEUE_SIZE=thread_queue_size,
        CELERY={"broker_url": broker_url, "task_ignore_result": True},
    )
    MusicCallback(app)
    if mode == "celery":
        celery_init_app(app)

    @all_tracks_generated.connect_via(app)
    def slow_receiver(sender: Flask, **extra: Any) -> None:
        time.sleep(receiver_seconds)

    return app


def measure(port: int, requests: int, concurrency: int) -> tuple[list[float], dict[int, int]]:
    """Post ``requests`` callbacks from ``concurrency`` clients; latencies in ms, and statuses."""
    url = f"http://127.0.0.1:{port}/music-callback?token={TOKEN}"
    limits = httpx.Limits(max_connections=concurrency)
    with httpx.Client(limits=limits, timeout=60) as client:

        def one(_: int) -> tuple[float, int]:
            body = build_callback("complete")
            start = time.perf_counter()
            status = client.post(url, json=body).status_code
            return (time.perf_counter() - start) * 1000, status

        with ThreadPoolExecutor(concurrency) as clients:
            results = list(clients.map(one, range(requests)))
    statuses: dict[int, int] = {}
    for _, status in results:
        statuses[status] = statuses.get(status, 0) + 1
    return [ms for ms, _ in results], statuses


def row(mode: str, concurrency: int, latencies: list[float], statuses: dict[int, int]) -> str:
    centiles = statistics.quantiles(latencies, n=100, method="inclusive")
    answers = ", ".join(f"{count}x{status}" for status, count in sorted(statuses.items()))
    return (
        f"| {mode} | {concurrency} | {len(latencies)} | {centiles[49]:.1f} | {centiles[98]:.1f} "
        f"| {answers} |"
    )


def serve(args: argparse.Namespace) -> None:
    """The web process: serve the app, print the port, run until killed."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no access log on the clock
    # The memory store is deliberate here (only the answer is measured): no warning about it.
    logging.getLogger("flask_musiccallback").setLevel(logging.ERROR)
    app = create_app(args.serve, args.broker, args.receiver_seconds, args.thread_queue_size)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    print(server.server_port, flush=True)
    server.serve_forever()


@contextmanager
def web_process(mode: str, broker: str | None, args: argparse.Namespace) -> Iterator[int]:
    """The app served by another process, so that the clients do not share its GIL."""
    command = [sys.executable, __file__, "--serve", mode]
    command += ["--receiver-seconds", str(args.receiver_seconds)]
    command += ["--thread-queue-size", str(args.thread_queue_size)]
    command += ["--broker", broker] if broker else []
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)}
    )
    try:
        assert process.stdout is not None
        yield int(process.stdout.readline())
    finally:
        process.kill()
        process.wait()


def run(mode: str, args: argparse.Namespace, stack: ExitStack) -> list[str]:
    broker = None
    if mode == "celery":
        broker = stack.enter_context(redis_server()) + "/0"
        log = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "worker.log"
        env = {"BENCH_BROKER": broker, "BENCH_RECEIVER_SECONDS": str(args.receiver_seconds)}
        stack.enter_context(
            celery_worker("benchmarks.dispatch_latency:celery_app", env, concurrency=2, log=log)
        )
    rows = []
    for concurrency in args.concurrency:
        with web_process(mode, broker, args) as port:
            requests = args.requests if mode != "sync" else max(10, 2 * concurrency)
            if mode != "sync":
                measure(port, concurrency, concurrency)  # warm up
            latencies, statuses = measure(port, requests, concurrency)
            rows.append(row(mode, concurrency, latencies, statuses))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", nargs="+", default=["sync", "thread", "celery"])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--receiver-seconds", type=float, default=2.0)
    parser.add_argument("--thread-queue-size", type=int, default=1000)
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--broker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args)
        return
    print(
        f"receivers sleep {args.receiver_seconds} s; {args.requests} requests per row "
        f"(for sync: twice the clients, at least 10); {os.cpu_count()} CPUs\n"
    )
    print("| dispatch | clients | requests | p50 ms | p99 ms | answers |")
    print("|---|---|---|---|---|---|")
    for mode in args.modes:
        with ExitStack() as stack:
            for line in run(mode, args, stack):
                print(line, flush=True)


if "BENCH_BROKER" in os.environ:  # imported by the benchmark's Celery worker
    flask_app = create_app(
        "celery", os.environ["BENCH_BROKER"], float(os.environ["BENCH_RECEIVER_SECONDS"])
    )
    celery_app = flask_app.extensions["celery"]

if __name__ == "__main__":
    main()
