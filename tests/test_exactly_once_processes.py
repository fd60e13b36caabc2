"""Exactly once across OS processes: what several gunicorn workers on one store must give.

Four processes each serve the app over real HTTP on their own port, all on one shared store (a
SQLite file, a PostgreSQL database, a Redis server) that none of them has touched yet. The same
callback is posted to all four at the same moment; its receiver must run once in all.
"""

from __future__ import annotations

import http.client
import json
import multiprocessing
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask

from flask_musiccallback import MusicCallback, all_tracks_generated
from flask_musiccallback.stores.base import DeliveryState
from flask_musiccallback.stores.owners import owner_is_dead
from flask_musiccallback.testing import build_callback, record_signals

from .backends import claim_in_a_process_that_dies
from .conftest import TOKEN, URL, AppFactory

WORKERS = 4
ROUNDS = 5


def serve(store_url: str, ports: Any, runs: Any, stop: Any) -> None:
    """One worker process: the app on a real HTTP server, reporting each receiver run."""
    from werkzeug.serving import make_server

    app = Flask("worker")
    app.config.update(MUSICCALLBACK_TOKEN=TOKEN, MUSICCALLBACK_STORE=store_url)
    MusicCallback(app)

    def receiver(sender: Flask, event: Any, **extra: Any) -> None:
        runs.put((os.getpid(), event.task_id))
        time.sleep(0.2)  # long enough for the other deliveries to arrive while it runs

    all_tracks_generated.connect(receiver, sender=app, weak=False)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    ports.put(server.server_port)
    stop.wait(120)
    server.shutdown()


@pytest.fixture
def workers(shared_store_url: str) -> Iterator[tuple[list[int], Any]]:
    """Start ``WORKERS`` processes serving one app on the shared store: their ports, and the queue
    where they report receiver runs."""
    context = multiprocessing.get_context("spawn")
    ports, runs, stop = context.Queue(), context.Queue(), context.Event()
    processes = [
        context.Process(target=serve, args=(shared_store_url, ports, runs, stop), daemon=True)
        for _ in range(WORKERS)
    ]
    for process in processes:
        process.start()
    try:
        yield [ports.get(timeout=60) for _ in processes], runs
    finally:
        stop.set()
        for process in processes:
            process.join(10)
            if process.is_alive():
                process.terminate()
                process.join(5)


def post(port: int, payload: dict[str, Any]) -> tuple[int, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        body = json.dumps(payload)
        connection.request("POST", URL, body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def post_at_once(ports: list[int], payload: dict[str, Any]) -> list[tuple[int, Any]]:
    """Post ``payload`` to every port from as many threads released together."""
    barrier = threading.Barrier(len(ports))
    answers: list[tuple[int, Any]] = []

    def deliver(port: int) -> None:
        barrier.wait()
        answers.append(post(port, payload))

    threads = [threading.Thread(target=deliver, args=(port,)) for port in ports]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return answers


def test_the_same_callback_to_four_processes_at_once_runs_its_receivers_once(
    workers: tuple[list[int], Any],
) -> None:
    ports, runs = workers
    expected = [(200, {"status": "duplicate"})] * (WORKERS - 1) + [(200, {"status": "received"})]
    for round_number in range(ROUNDS):
        payload = build_callback("complete", task_id=f"task-{round_number}")
        answers = post_at_once(ports, payload)
        assert sorted(answers, key=str) == expected, f"round {round_number}"

    # Each run was reported before its answer; the queue's feeder may still be delivering them.
    reported = [runs.get(timeout=30) for _ in range(ROUNDS)]
    time.sleep(0.2)
    assert runs.empty(), "a receiver ran twice"
    assert sorted(task for _, task in reported) == [f"task-{n}" for n in range(ROUNDS)]


def test_replay_pending_takes_over_the_claim_of_a_process_that_died(
    make_app: AppFactory, shared_store_url: str
) -> None:
    app = make_app(STORE=shared_store_url)
    payload = build_callback("complete")
    claim_in_a_process_that_dies(shared_store_url, payload)
    response = app.test_client().post(URL, json=payload)
    assert response.get_json() == {"status": "duplicate"}, "the claim is held until taken over"

    with record_signals(app) as recorded:
        result = app.test_cli_runner().invoke(args=["musiccallback", "replay", "--pending"])
    assert result.exit_code == 0, result.output
    assert ": done (attempt 2)" in result.output
    assert [name for name, _ in recorded] == ["callback_received", "all_tracks_generated"]
    [kept] = app.extensions["musiccallback"].store.list()
    assert kept.state is DeliveryState.DONE


def test_reclaim_takes_a_claim_at_once_only_while_its_dead_owner_still_holds_it(
    make_app: AppFactory, shared_store_url: str
) -> None:
    store = make_app(STORE=shared_store_url).extensions["musiccallback"].store
    claim_in_a_process_that_dies(shared_store_url, build_callback("complete"))
    [kept] = store.list()
    assert owner_is_dead(kept.owner)
    assert store.reclaim(kept.id) is None, "the lease has not run out"
    assert store.reclaim(kept.id, abandoned_by="elsewhere:1") is None, "held by another owner"

    taken = store.reclaim(kept.id, abandoned_by=kept.owner, queued=True)
    assert taken is not None
    assert (taken.state, taken.attempts) == (DeliveryState.PENDING, 2)
    assert taken.owner != kept.owner
    assert store.reclaim(kept.id, abandoned_by=kept.owner) is None, "held by a live process now"
