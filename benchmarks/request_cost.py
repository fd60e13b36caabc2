"""Microseconds per request, in-process: the bare route and the endpoint on each store.

    python -m benchmarks.request_cost --store memory:// --store redis://127.0.0.1:6379/0
    python -m benchmarks.request_cost --store postgresql+psycopg://... --profile

Calls the benchmark app's WSGI callable directly, one distinct task id per request, so the figures
hold no HTTP server and no load generator: what is left is Flask, the extension and the store's
round trips. Steadier than the HTTP ratio on a busy machine (the best of several batches is
kept), which makes it the tool to iterate with; ``--profile`` shows where one batch goes
(pyinstrument).
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from werkzeug.test import EnvironBuilder

from flask_musiccallback.simulate import build_callback

from .app import TOKEN, create_app


def environs(path: str, payload: dict[str, Any], count: int) -> list[dict[str, Any]]:
    """``count`` WSGI environs posting ``payload`` to ``path``, each with its own task id."""
    template = json.dumps(payload).replace("TASK-ID", "%s")
    prefix = uuid.uuid4().hex[:12]
    return [
        EnvironBuilder(
            path=path,
            method="POST",
            data=(template % f"{prefix}-{n}").encode(),
            content_type="application/json",
        ).get_environ()
        for n in range(count)
    ]


def run(app: Callable[..., Iterable[bytes]], batch: list[dict[str, Any]]) -> float:
    """Seconds per request over ``batch``; every answer must be a 200."""
    statuses: list[str] = []

    def start_response(status: str, headers: Any, exc_info: Any = None) -> None:
        statuses.append(status)

    started = time.perf_counter()
    for environ in batch:
        for _ in app(environ, start_response):
            pass
    elapsed = time.perf_counter() - started
    failed = [status for status in statuses if not status.startswith("200")]
    if failed:
        raise RuntimeError(f"{len(failed)} answers were not 200, e.g. {failed[0]}")
    return elapsed / len(batch)


def measure(store: str, requests: int, batches: int, profile: bool) -> dict[str, float]:
    app = create_app(store)
    payload = build_callback("complete", task_id="TASK-ID", tracks=2)
    paths = {"bare": "/bare", "extension": f"/music-callback?token={TOKEN}"}
    best = {name: float("inf") for name in paths}
    run(app, environs(paths["extension"], payload, 50))  # connect, create the table, warm up
    for _ in range(batches):
        for name, path in paths.items():
            best[name] = min(best[name], run(app, environs(path, payload, requests)))
    if profile:
        from pyinstrument import Profiler

        batch = environs(paths["extension"], payload, requests)
        with Profiler(interval=0.0002) as profiler:
            run(app, batch)
        profiler.print(show_all=False)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", action="append", help="MUSICCALLBACK_STORE URL (repeatable)")
    parser.add_argument("--requests", type=int, default=500, help="requests per batch")
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="profile one more batch")
    args = parser.parse_args()
    print("| store | bare route µs | endpoint µs | extension's own µs |")
    print("|---|---|---|---|")
    for store in args.store or ["memory://"]:
        best = measure(store, args.requests, args.batches, args.profile)
        bare, ext = best["bare"] * 1e6, best["extension"] * 1e6
        label = store.split("@")[-1] if "@" in store else store
        print(f"| `{label}` | {bare:.0f} | {ext:.0f} | {ext - bare:.0f} |", flush=True)


if __name__ == "__main__":
    main()
