"""A store that cannot be reached: the app starts, serves the rest, asks the provider to retry."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from flask_musiccallback import all_tracks_generated, callback_received
from flask_musiccallback.state import get_state
from flask_musiccallback.stores.base import DEFAULT_TIMEOUT, DeliveryState
from flask_musiccallback.stores.sqlalchemy import DEFAULT_TABLE
from flask_musiccallback.testing import build_callback

from .backends import persistent_store, sqlite_url, with_flask_sqlalchemy
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
    """A refused connection is answered at once: never after a connect timeout, or a retry loop."""
    started = time.monotonic()
    assert post(down_app, build_callback("complete")) == RETRY
    assert time.monotonic() - started < DEFAULT_TIMEOUT


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


def sql_app(make_app: AppFactory, url: str, flask_sqlalchemy: bool) -> Flask:
    """An app on the database of ``url``: through an engine of the store's own, which runs the
    request path on the driver, or the host's Flask-SQLAlchemy one, which runs it through
    SQLAlchemy."""
    if not flask_sqlalchemy:
        return make_app(STORE=url)
    app = make_app(STORE="sqlalchemy://")
    with_flask_sqlalchemy(url)(app)
    return app


ENGINES = pytest.mark.parametrize(
    "flask_sqlalchemy", [False, True], ids=["own-engine", "flask-sqlalchemy"]
)


@ENGINES
def test_a_database_restart_costs_no_503(make_app: AppFactory, flask_sqlalchemy: bool) -> None:
    server = start_postgresql()
    try:
        app = sql_app(make_app, server.url(server.create_database()), flask_sqlalchemy)
        assert post(app, build_callback("complete")) == RECEIVED
        get_state(app).extension.wait_idle(10, app=app)  # its stage is on its task too
        server.stop()
        server.start()
        # The pooled connection died with the server; the store retries once on a new one.
        assert post(app, build_callback("complete")) == RECEIVED
    finally:
        server.remove()


@ENGINES
def test_a_database_gone_after_use_answers_503_until_it_is_back(
    make_app: AppFactory, flask_sqlalchemy: bool
) -> None:
    server = start_postgresql()
    try:
        app = sql_app(make_app, server.url(server.create_database()), flask_sqlalchemy)
        assert post(app, build_callback("complete")) == RECEIVED
        get_state(app).extension.wait_idle(10, app=app)  # its stage is on its task too
        server.stop()
        assert post(app, build_callback("complete")) == RETRY
        server.start()
        assert post(app, build_callback("complete")) == RECEIVED
    finally:
        server.remove()


def end_connections(url: str) -> int:
    """End every other connection to the database of ``url``, as a restart does; how many."""
    observer = sa.create_engine(url, poolclass=sa.pool.NullPool, isolation_level="AUTOCOMMIT")
    try:
        with observer.connect() as connection:
            others = connection.exec_driver_sql(
                "SELECT pid FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).scalars()
            ended = [
                connection.execute(sa.select(sa.func.pg_terminate_backend(pid, 10000))).scalar()
                for pid in others.all()
            ]
            return ended.count(True)
    finally:
        observer.dispose()


def deliver_two_at_once(app: Flask) -> None:
    """Two deliveries whose statements take their connections at the same moment, so that the
    store's pool keeps two."""
    together = threading.Barrier(2, timeout=10)
    answers: list[tuple[int, Any]] = []
    delivering: set[int] = set()

    def meet(*args: Any) -> None:
        # Only the two requests meet: the write-back's thread checks out too, to record stages.
        if threading.get_ident() in delivering:
            delivering.discard(threading.get_ident())
            together.wait()

    def deliver() -> None:
        delivering.add(threading.get_ident())
        answers.append(post(app, build_callback("complete")))

    sa.event.listen(sa.pool.Pool, "checkout", meet)
    try:
        threads = [threading.Thread(target=deliver) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    finally:
        sa.event.remove(sa.pool.Pool, "checkout", meet)
    assert answers == [RECEIVED, RECEIVED]


@ENGINES
def test_pooled_connections_the_server_ended_cost_no_503(
    make_app: AppFactory, postgresql_url: str, flask_sqlalchemy: bool
) -> None:
    """Each pooled connection is dead; the retry must not draw the next dead one."""
    app = sql_app(make_app, postgresql_url, flask_sqlalchemy)
    assert post(app, build_callback("complete")) == RECEIVED  # the table is there
    get_state(app).extension.wait_idle(10, app=app)
    deliver_two_at_once(app)
    get_state(app).extension.wait_idle(10, app=app)  # their stages are on their tasks too
    assert end_connections(postgresql_url) >= 2
    assert post(app, build_callback("complete")) == RECEIVED


@ENGINES
def test_a_connection_ended_while_receivers_run_costs_the_completion_nothing(
    make_app: AppFactory, postgresql_url: str, flask_sqlalchemy: bool
) -> None:
    app = sql_app(make_app, postgresql_url, flask_sqlalchemy)
    payload = build_callback("complete")

    def end(sender: Flask, **extra: Any) -> None:
        assert end_connections(postgresql_url) >= 1

    with all_tracks_generated.connected_to(end, sender=app):
        assert post(app, payload) == RECEIVED
    [kept] = persistent_store(app).list(task_id=payload["data"]["task_id"])
    assert kept.state is DeliveryState.DONE


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_database_error_answers_503_and_logs_no_statement_or_payload(
    request: pytest.FixtureRequest,
    make_app: AppFactory,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    backend: str,
) -> None:
    url = sqlite_url(tmp_path) if backend == "sqlite" else request.getfixturevalue("postgresql_url")
    app = make_app(STORE=url)
    assert post(app, build_callback("complete")) == RECEIVED
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.begin() as connection:
        connection.exec_driver_sql(f"DROP TABLE {DEFAULT_TABLE}")
    payload = build_callback("complete")
    with caplog.at_level(logging.WARNING, "flask_musiccallback"):
        assert post(app, payload) == RETRY
    [record] = caplog.records
    message = record.getMessage()
    assert DEFAULT_TABLE in message, "the driver's own words"
    assert "INSERT" not in message
    assert payload["data"]["task_id"] not in message


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
