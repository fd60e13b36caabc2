"""A store that hangs instead of refusing: the provider still gets 503 retry before it gives up.

The servers are frozen with ``SIGSTOP``: they accept connections and acknowledge every packet, and
never answer. Every bound asserted here is the provider's own (it waits 15 s for an answer), never
a tighter one, so that a slow machine cannot fail these tests.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from flask_musiccallback import StoreError, all_tracks_generated
from flask_musiccallback.state import get_state
from flask_musiccallback.stores.base import DEFAULT_TIMEOUT, DeliveryState
from flask_musiccallback.stores.redis import RedisStore
from flask_musiccallback.stores.registry import store_from_url
from flask_musiccallback.stores.sqlalchemy import DEFAULT_TABLE, SQLAlchemyStore
from flask_musiccallback.testing import build_callback

from .backends import persistent_store, with_flask_sqlalchemy
from .conftest import AppFactory
from .servers import PostgresServer, RedisServer, start_postgresql, start_redis
from .test_store_down import RECEIVED, RETRY, post

#: Seconds the provider waits for an answer (PROVIDER.md, section 1).
PROVIDER_TIMEOUT = 15


@pytest.fixture(scope="module")
def own_postgresql() -> Iterator[PostgresServer]:
    """A server of this module's own: freezing it stalls no other test's database."""
    server = start_postgresql()
    try:
        yield server
    finally:
        server.remove()


@pytest.fixture(scope="module")
def own_redis() -> Iterator[RedisServer]:
    server = start_redis()
    try:
        yield server
    finally:
        server.remove()


@dataclass
class Hanging:
    """An app on a store whose server ``frozen()`` stops for the time of a block."""

    app: Flask
    frozen: Callable[[], contextlib.AbstractContextManager[None]]


@pytest.fixture(params=["own-engine", "flask-sqlalchemy", "redis"])
def hanging(request: pytest.FixtureRequest, make_app: AppFactory) -> Hanging:
    if request.param == "redis":
        redis_server: RedisServer = request.getfixturevalue("own_redis")
        return Hanging(make_app(STORE=redis_server.url()), redis_server.frozen)
    server: PostgresServer = request.getfixturevalue("own_postgresql")
    url = server.url(server.create_database())
    if request.param == "own-engine":
        return Hanging(make_app(STORE=url), server.frozen)
    app = make_app(STORE="sqlalchemy://")
    # What docs/stores.md asks of a host: a connect timeout on its engine.
    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = {"connect_args": {"connect_timeout": 3}}
    with_flask_sqlalchemy(url)(app)
    return Hanging(app, server.frozen)


def answer_within(app: Flask, payload: dict[str, Any]) -> tuple[tuple[int, Any] | None, float]:
    """The answer to one delivery and the seconds it took, or ``None`` if the provider would have
    given up waiting for it."""
    answers: list[tuple[tuple[int, Any], float]] = []

    def deliver() -> None:
        started = time.monotonic()
        answer = post(app, payload)
        answers.append((answer, time.monotonic() - started))

    thread = threading.Thread(target=deliver, daemon=True)
    thread.start()
    thread.join(PROVIDER_TIMEOUT)
    return answers[0] if answers else (None, math.inf)


def test_a_store_hanging_at_the_claim_is_answered_503_retry_in_time(hanging: Hanging) -> None:
    app = hanging.app
    assert post(app, build_callback("complete")) == RECEIVED  # connected, the table made
    with hanging.frozen():
        answer, took = answer_within(app, build_callback("complete"))
    assert answer == RETRY
    assert took < PROVIDER_TIMEOUT
    assert post(app, build_callback("complete")) == RECEIVED


def test_a_store_hanging_while_receivers_run_is_acknowledged_in_time_and_recorded_after(
    hanging: Hanging,
) -> None:
    """The completion gets no answer: the receivers ran, so the delivery is acknowledged in time
    (a 503 would run them again) and its completion written once the store answers again."""
    app = hanging.app
    assert post(app, build_callback("complete")) == RECEIVED
    payload = build_callback("complete")
    with contextlib.ExitStack() as thawing:

        def freeze(sender: Flask, **extra: Any) -> None:
            thawing.enter_context(hanging.frozen())

        with all_tracks_generated.connected_to(freeze, sender=app):
            answer, took = answer_within(app, payload)
    assert answer == RECEIVED
    assert took < PROVIDER_TIMEOUT
    assert get_state(app).write_back.wait_idle(60)
    assert post(app, payload) == (200, {"status": "duplicate"})


def lock_waiters(engine: sa.Engine) -> int:
    with engine.connect() as connection:
        waiting = connection.exec_driver_sql(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ).scalar_one()
        return int(waiting)


def test_a_claim_waiting_on_a_lock_is_given_up_by_the_server_too(
    make_app: AppFactory, postgresql_url: str
) -> None:
    """Else the claim would be taken once the lock goes, after the provider was told to retry."""

    def failing(sender: Flask, **extra: Any) -> None:
        raise RuntimeError("retry me")

    app = make_app(STORE=postgresql_url)
    payload = build_callback("complete")
    with all_tracks_generated.connected_to(failing, sender=app):
        assert post(app, payload) == RETRY  # released: the next delivery may take it
    observer = sa.create_engine(postgresql_url, poolclass=sa.pool.NullPool)
    try:
        with observer.connect() as holder:
            holder.exec_driver_sql(f"SELECT id FROM {DEFAULT_TABLE} FOR UPDATE")
            answer, took = answer_within(app, payload)
            assert answer == RETRY
            assert took < PROVIDER_TIMEOUT
            deadline = time.monotonic() + PROVIDER_TIMEOUT
            while lock_waiters(observer) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert lock_waiters(observer) == 0, "the server still runs the abandoned claim"
            holder.rollback()
        [kept] = persistent_store(app).list()
        assert (kept.state, kept.released, kept.attempts) == (DeliveryState.FAILED, True, 1)
        assert post(app, payload) == RECEIVED
    finally:
        observer.dispose()


def test_the_timeout_is_an_option_of_every_persistent_store_url(
    postgresql_url: str, redis_url: str
) -> None:
    for url in (postgresql_url, "sqlalchemy://"):
        default = store_from_url(url, ttl=60)
        chosen = store_from_url(f"{url}?timeout=2.5", ttl=60)
        assert isinstance(default, SQLAlchemyStore)
        assert isinstance(chosen, SQLAlchemyStore)
        assert (default.timeout, chosen.timeout) == (DEFAULT_TIMEOUT, 2.5)
    chosen = store_from_url(f"{redis_url}?timeout=2.5", ttl=60)
    assert isinstance(chosen, RedisStore)
    options = chosen.client.connection_pool.connection_kwargs
    assert (options["socket_connect_timeout"], options["socket_timeout"]) == (2.5, 2.5)


@pytest.mark.parametrize("timeout", ["0", "-1", "soon", "inf", "nan"])
def test_a_timeout_that_is_no_positive_number_of_seconds_is_refused(
    postgresql_url: str, timeout: str
) -> None:
    with pytest.raises(StoreError, match="timeout"):
        store_from_url(f"{postgresql_url}?timeout={timeout}", ttl=60)
