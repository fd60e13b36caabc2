"""Answers lost between the store and the app, and a store gone while receivers run.

The store's server did the work and the connection broke before the app heard of it; or the
receivers ran and the store went away before it could record that. Neither may leave an
acknowledged delivery unprocessed, hold a claim nobody works on for a whole lease, or run the
receivers twice. The faults are real: a TCP proxy on 127.0.0.1 in front of real PostgreSQL and
Redis servers drops the connection instead of forwarding an answer, and real servers are stopped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask

from flask_musiccallback import all_tracks_generated
from flask_musiccallback.events import CallbackEvent
from flask_musiccallback.state import get_state
from flask_musiccallback.stores.base import DeliveryState
from flask_musiccallback.testing import build_callback

from .backends import persistent_store
from .conftest import URL, AppFactory, thread_apps
from .faults import LossyProxy
from .servers import PostgresServer, RedisServer, start_postgresql, start_redis

RECEIVED = (200, {"status": "received"})
DUPLICATE = (200, {"status": "duplicate"})
RETRY = (503, {"status": "retry"})

#: Seconds a test waits at most for background work; never a bound on how fast it must be.
PATIENCE = 60


@pytest.fixture(params=["postgresql", "redis"])
def proxied(request: pytest.FixtureRequest) -> Iterator[tuple[str, LossyProxy]]:
    """A store URL that reaches a real server through a :class:`LossyProxy`, and the proxy."""
    if request.param == "postgresql":
        server: PostgresServer = request.getfixturevalue("postgresql_server")
        database = server.create_database()
        proxy = LossyProxy(server.port)
        url = f"postgresql+psycopg://postgres@127.0.0.1:{proxy.port}/{database}"
    else:
        redis_server: RedisServer = request.getfixturevalue("redis_server")
        request.getfixturevalue("redis_url")  # empties the test database
        proxy = LossyProxy(redis_server.port)
        url = f"redis://127.0.0.1:{proxy.port}/9"
    try:
        yield url, proxy
    finally:
        proxy.close()


def post(app: Flask, payload: dict[str, Any]) -> tuple[int, Any]:
    response = app.test_client().post(URL, json=payload)
    return response.status_code, response.get_json()


def counting(app: Flask) -> tuple[list[str], Callable[..., None]]:
    calls: list[str] = []

    def receiver(sender: Flask, event: CallbackEvent, **extra: Any) -> None:
        calls.append(event.task_id)

    all_tracks_generated.connect(receiver, sender=app, weak=False)
    return calls, receiver


def kept_state(app: Flask, task_id: str) -> DeliveryState:
    [kept] = persistent_store(app).list(task_id=task_id)
    return kept.state


def warmed_up(app: Flask) -> Flask:
    """The app after one delivery: the store holds an open connection, as in production."""
    assert post(app, build_callback("complete")) == RECEIVED
    return app


def counted_delivery(app: Flask) -> tuple[Flask, list[str], dict[str, Any], str]:
    """The app warmed up, the task ids its receiver saw, and a new delivery with its task id."""
    calls, _ = counting(warmed_up(app))
    payload = build_callback("complete")
    return app, calls, payload, payload["data"]["task_id"]


def test_a_claim_whose_answer_was_lost_is_processed_once(
    make_app: AppFactory, proxied: tuple[str, LossyProxy]
) -> None:
    url, proxy = proxied
    app, calls, payload, task_id = counted_delivery(make_app(STORE=url))

    proxy.lose_answer(task_id)
    assert post(app, payload) == RECEIVED
    assert proxy.lost.is_set()
    assert post(app, payload) == DUPLICATE
    assert calls == [task_id]
    assert kept_state(app, task_id) is DeliveryState.DONE


def test_a_start_whose_answer_was_lost_still_runs_the_acknowledged_delivery(
    make_app: AppFactory, proxied: tuple[str, LossyProxy]
) -> None:
    url, proxy = proxied
    with thread_apps(make_app) as thread_app:
        app = warmed_up(thread_app(STORE=url))
        assert get_state(app).dispatcher.wait_idle(PATIENCE)
        calls, _ = counting(app)
        payload = build_callback("complete")
        task_id = payload["data"]["task_id"]

        proxy.lose_answer(task_id, occurrence=2)  # the claim's answer passes; the job's start's not
        assert post(app, payload) == RECEIVED
        assert get_state(app).dispatcher.wait_idle(PATIENCE)
    assert proxy.lost.is_set()
    assert calls == [task_id]
    assert kept_state(app, task_id) is DeliveryState.DONE


def test_a_claim_abandoned_while_the_store_was_away_is_given_back_once_it_is_back(
    make_app: AppFactory, proxied: tuple[str, LossyProxy]
) -> None:
    """The claim was taken, its answer lost, and the store then refused the app: the provider is
    asked to retry, and its retry must find the claim free, not held by this process for a lease.
    """
    url, proxy = proxied
    app, calls, payload, task_id = counted_delivery(make_app(STORE=url))

    proxy.lose_answer(task_id, refuse_after=True)
    assert post(app, payload) == RETRY
    assert proxy.lost.is_set()
    proxy.heal()
    assert get_state(app).write_back.wait_idle(PATIENCE)

    assert post(app, payload) == RECEIVED
    assert calls == [task_id]
    assert kept_state(app, task_id) is DeliveryState.DONE


@pytest.fixture(params=["postgresql", "redis"])
def own_server(request: pytest.FixtureRequest) -> Iterator[tuple[str, Any]]:
    """A server of this test's own, to stop and start again, and its store URL."""
    if request.param == "postgresql":
        postgresql = start_postgresql(durable=True)  # a claim outlives a stop, as in production
        try:
            yield postgresql.url(postgresql.create_database()), postgresql
        finally:
            postgresql.remove()
    else:
        redis_server = start_redis()
        try:
            yield redis_server.url(), redis_server
        finally:
            redis_server.remove()


@pytest.mark.parametrize("dispatch", ["sync", "thread"])
def test_receivers_that_ran_before_the_store_went_away_are_acknowledged_and_not_run_again(
    make_app: AppFactory, own_server: tuple[str, Any], dispatch: str
) -> None:
    """Answering 503 would have the provider deliver again and the receivers run twice: the
    outcome is acknowledged, and recorded once the store is back."""
    url, server = own_server
    with thread_apps(make_app) as factory:
        app = warmed_up(factory(STORE=url, DISPATCH=dispatch))
        assert get_state(app).dispatcher.wait_idle(PATIENCE)
        payload = build_callback("complete")
        task_id = payload["data"]["task_id"]
        calls: list[str] = []

        def stop_the_store(sender: Flask, event: CallbackEvent, **extra: Any) -> None:
            calls.append(event.task_id)
            # The task's stage, recorded by the write-back after the claim, is written first: only
            # the completion is left to wait for the store.
            assert get_state(app).write_back.wait_idle(PATIENCE)
            server.stop()

        with all_tracks_generated.connected_to(stop_the_store, sender=app):
            assert post(app, payload) == RECEIVED
            assert get_state(app).dispatcher.wait_idle(PATIENCE)
        assert calls == [task_id]
        assert len(get_state(app).write_back) == 1, "the completion waits for the store"
        server.start()
        assert get_state(app).write_back.wait_idle(PATIENCE)

        assert post(app, payload) == DUPLICATE
    assert calls == [task_id]


def test_the_providers_retry_finds_the_abandoned_claim_given_back_before_the_background_does(
    make_app: AppFactory, proxied: tuple[str, LossyProxy]
) -> None:
    """The store answers again while the background waits out its back-off: the retry that finds
    the claim still held by this process gives it back itself, rather than calling it in progress.
    """
    url, proxy = proxied
    app, calls, payload, task_id = counted_delivery(make_app(STORE=url))

    proxy.lose_answer(task_id, refuse_after=True)
    assert post(app, payload) == RETRY
    time.sleep(2)  # the background's tries fail meanwhile, and its back-off grows past a second
    proxy.heal()

    assert post(app, payload) == RECEIVED
    assert calls == [task_id]
