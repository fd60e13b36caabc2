"""A store that cannot be reached: the app starts, serves the rest, asks the provider to retry."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from flask_musiccallback import all_tracks_generated, callback_received
from flask_musiccallback.testing import build_callback

from .backends import sqlite_url, with_flask_sqlalchemy
from .conftest import URL, AppFactory
from .servers import free_port, start_postgresql, start_redis

RETRY = (503, {"status": "retry"})
RECEIVED = (200, {"status": "received"})


def down_postgresql(tmp_path: Path) -> tuple[str, Callable[[Flask], None] | None]:
    return f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/gone", None


def down_redis(tmp_path: Path) -> tuple[str, Callable[[Flask], None] | None]:
    return f"redis://127.0.0.1:{free_port()}/0", None


def down_flask_sqlalchemy(tmp_path: Path) -> tuple[str, Callable[[Flask], None] | None]:
    database = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/gone"

    def prepare(app: Flask) -> None:
        from flask_sqlalchemy import SQLAlchemy

        app.config["SQLALCHEMY_DATABASE_URI"] = database
        SQLAlchemy(app)  # db.create_all() would fail: the database is down

    return "sqlalchemy://", prepare


def unwritable_sqlite(tmp_path: Path) -> tuple[str, Callable[[Flask], None] | None]:
    (tmp_path / "a-file").write_text("not a directory")
    return sqlite_url(tmp_path / "a-file"), None


DOWN = {
    "postgresql": down_postgresql,
    "redis": down_redis,
    "flask-sqlalchemy": down_flask_sqlalchemy,
    "sqlite": unwritable_sqlite,
}


@pytest.fixture(params=sorted(DOWN))
def down_app(request: pytest.FixtureRequest, make_app: AppFactory, tmp_path: Path) -> Flask:
    """An app whose store is down from the start; ``init_app`` must not notice."""
    url, prepare = DOWN[request.param](tmp_path)
    app = make_app(STORE=url)
    if prepare is not None:
        prepare(app)

    @app.get("/health")
    def health() -> str:
        return "ok"

    return app


def post(app: Flask, payload: dict[str, Any]) -> tuple[int, Any]:
    response = app.test_client().post(URL, json=payload)
    return response.status_code, response.get_json()


def test_a_callback_answers_503_retry_and_calls_no_receiver(down_app: Flask) -> None:
    calls: list[Any] = []
    with callback_received.connected_to(lambda sender, **kw: calls.append(kw), sender=down_app):
        assert post(down_app, build_callback("complete")) == RETRY
    assert calls == []


def test_the_cause_is_logged_once_not_per_request(
    down_app: Flask, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, "flask_musiccallback"):
        for _ in range(3):
            assert post(down_app, build_callback("complete")) == RETRY
    [record] = caplog.records
    assert record.levelno == logging.ERROR
    assert "unreachable" in record.getMessage()
    assert "[SQL:" not in record.getMessage(), "no statement or payload in the log"


def test_a_down_store_answers_fast(down_app: Flask) -> None:
    started = time.monotonic()
    assert post(down_app, build_callback("complete")) == RETRY
    assert time.monotonic() - started < 2


def test_the_app_keeps_serving_everything_else(down_app: Flask) -> None:
    post(down_app, build_callback("complete"))
    assert down_app.test_client().get("/health").data == b"ok"
    response = down_app.test_client().post(URL, data=b"not json")
    assert response.status_code == 400


def test_redis_coming_back_is_noticed_and_served(
    make_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    server = start_redis()
    try:
        app = make_app(STORE=server.url())
        payload = build_callback("complete")
        server.stop()
        with caplog.at_level(logging.WARNING, "flask_musiccallback"):
            assert post(app, payload) == RETRY
            server.start()
            assert post(app, payload) == RECEIVED
        assert "reachable again" in caplog.text
    finally:
        server.remove()


@pytest.mark.parametrize("flask_sqlalchemy", [False, True], ids=["own-engine", "flask-sqlalchemy"])
def test_a_database_restart_costs_no_503(make_app: AppFactory, flask_sqlalchemy: bool) -> None:
    server = start_postgresql()
    try:
        url = server.url(server.create_database())
        if flask_sqlalchemy:
            app = make_app(STORE="sqlalchemy://")
            with_flask_sqlalchemy(url)(app)
        else:
            app = make_app(STORE=url)
        assert post(app, build_callback("complete")) == RECEIVED
        server.stop()
        server.start()
        # The pooled connection died with the server; the store retries once on a new one.
        assert post(app, build_callback("complete")) == RECEIVED
    finally:
        server.remove()


def test_a_redis_restart_costs_no_503(make_app: AppFactory) -> None:
    server = start_redis()
    try:
        app = make_app(STORE=server.url())
        assert post(app, build_callback("complete")) == RECEIVED
        server.stop()
        server.start()
        assert post(app, build_callback("complete")) == RECEIVED
    finally:
        server.remove()


def test_a_store_failing_while_receivers_run_answers_503_so_the_provider_retries(
    make_app: AppFactory,
) -> None:
    """The outcome cannot be recorded, so it is not confirmed: at least once, not lost."""
    server = start_redis()
    try:
        app = make_app(STORE=server.url())

        def kill_store(sender: Flask, **extra: Any) -> None:
            server.stop()

        with all_tracks_generated.connected_to(kill_store, sender=app):
            assert post(app, build_callback("complete")) == RETRY
    finally:
        server.remove()
