"""What a delivery costs a persistent store on the request path, counted and never timed.

A new delivery is one statement (one round trip, no ``BEGIN`` or ``COMMIT`` around it) to claim,
stale check included, and one to complete. The claim's commit waits for the disk; the
completion's does not, and leaves no connection behind that skips the wait for a later claim
(``SQLAlchemyStore._settle`` says why losing a completion in a crash loses no delivery).
Recording a stage on its task and remembering a signature are one statement (one script) each.

Statements are counted in the drivers (sqlite3, psycopg), where both ways the SQL store runs them
are seen: through SQLAlchemy on a host's engine, on a DBAPI cursor on its own.
"""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
import sqlalchemy as sa
from flask import Flask

from flask_musiccallback.state import get_state
from flask_musiccallback.stores.base import ClaimResult, Delivery, Store
from flask_musiccallback.stores.sqlalchemy import SQLAlchemyStore
from flask_musiccallback.stores.tasks import VIA_CALLBACK, VIA_POLL, TaskState
from flask_musiccallback.testing import build_callback

from .backends import sqlite_url, with_flask_sqlalchemy
from .conftest import URL, AppFactory
from .servers import PostgresServer, start_postgresql

RECEIVED = {"status": "received"}


@dataclass
class Statement:
    #: The statement's first word: ``INSERT``, ``UPDATE``, ``BEGIN``...
    sql: str
    #: Whether the connection ran it in autocommit: one round trip, no BEGIN and COMMIT.
    autocommit: bool
    #: SQLite's ``PRAGMA synchronous`` on the connection as the statement ran (2 is FULL).
    synchronous: int | None
    #: Whether the request's thread ran it: the endpoint's path, not the write-back's thread,
    #: which records each stage on its task afterwards.
    on_request: bool = True


def database_of(dbapi_connection: Any) -> str | None:
    """The SQLite file or PostgreSQL database a DBAPI connection is on."""
    if isinstance(dbapi_connection, sqlite3.Connection):
        return str(dbapi_connection.execute("PRAGMA database_list").fetchone()[2])
    return str(dbapi_connection.info.dbname)


@contextmanager
def checkouts(
    url: str, watch: Callable[[Any], None] = lambda connection: None
) -> Iterator[list[Any]]:
    """The DBAPI connections to the database of ``url`` taken from any pool meanwhile, each
    handed to ``watch`` on its first checkout."""
    database = sa.make_url(url).database
    taken: list[Any] = []

    def checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        if any(known is dbapi_connection for known in taken):
            return
        if database_of(dbapi_connection) == database:
            taken.append(dbapi_connection)
            watch(dbapi_connection)

    sa.event.listen(sa.pool.Pool, "checkout", checkout)
    try:
        yield taken
    finally:
        sa.event.remove(sa.pool.Pool, "checkout", checkout)


def autocommits(dbapi_connection: Any) -> bool:
    """psycopg says so in ``autocommit``; sqlite3 (before Python 3.12) by no isolation level."""
    if getattr(dbapi_connection, "autocommit", None) is True:
        return True
    return getattr(dbapi_connection, "isolation_level", "") is None


#: SQLite's names of the ``synchronous`` levels.
SYNCHRONOUS = {"OFF": 0, "NORMAL": 1, "FULL": 2, "EXTRA": 3}


def on_request() -> bool:
    """Whether the statement runs in the test's thread, where the test client runs the request."""
    return threading.current_thread() is threading.main_thread()


@contextmanager
def statements_run(url: str) -> Iterator[list[Statement]]:
    """Every statement run meanwhile on the database of ``url``, as its driver runs it.

    Counted in the driver, so that SQLAlchemy's executions and the store's own DBAPI cursors
    are seen alike: sqlite3 traces each statement it runs, its own ``BEGIN`` and ``COMMIT``
    included; psycopg's connections make their cursors from a recording class. SQLite's
    ``PRAGMA`` statements run no round trip: they are followed for the ``synchronous`` level
    they set, and not listed.
    """
    seen: list[Statement] = []
    undo: list[Callable[[], None]] = []

    def watch_sqlite(connection: sqlite3.Connection) -> None:
        level = [int(connection.execute("PRAGMA synchronous").fetchone()[0])]

        def trace(sql: str) -> None:
            setting = re.fullmatch(r"PRAGMA synchronous\s*=\s*(\w+)", sql.strip(), re.IGNORECASE)
            if setting is not None:
                value = setting[1].upper()
                level[0] = int(value) if value.isdigit() else SYNCHRONOUS[value]
            elif not sql.upper().startswith("PRAGMA"):
                seen.append(
                    Statement(
                        sql.split()[0].upper(), autocommits(connection), level[0], on_request()
                    )
                )

        connection.set_trace_callback(trace)
        undo.append(lambda: connection.set_trace_callback(None))

    def watch_psycopg(connection: psycopg.Connection[Any]) -> None:
        class Recording(psycopg.Cursor[Any]):
            def execute(self, query: Any, *args: Any, **kwargs: Any) -> Any:
                seen.append(
                    Statement(
                        str(query).split()[0].upper(), connection.autocommit, None, on_request()
                    )
                )
                return super().execute(query, *args, **kwargs)

        factory = connection.cursor_factory
        connection.cursor_factory = Recording
        undo.append(lambda: setattr(connection, "cursor_factory", factory))

    def watch(connection: Any) -> None:
        if isinstance(connection, sqlite3.Connection):
            watch_sqlite(connection)
        else:
            watch_psycopg(connection)

    try:
        with checkouts(url, watch):
            yield seen
    finally:
        for restore in undo:
            restore()


@pytest.fixture(params=["sqlite", "postgresql", "flask-sqlalchemy"])
def sql_app(request: pytest.FixtureRequest, make_app: AppFactory, tmp_path: Path) -> Flask:
    """An app on a SQL store, its own engine or the host's Flask-SQLAlchemy one; the database's
    URL in ``config["DATABASE_URL"]``."""
    if request.param == "postgresql":
        url: str = request.getfixturevalue("postgresql_url")
        app = make_app(STORE=url)
    else:
        url = sqlite_url(tmp_path)
        if request.param == "sqlite":
            app = make_app(STORE=url)
        else:
            app = make_app(STORE="sqlalchemy://")
            with_flask_sqlalchemy(url)(app)
    app.config["DATABASE_URL"] = url
    return app


def post(app: Flask, payload: dict[str, Any]) -> Any:
    response = app.test_client().post(URL, json=payload)
    assert response.status_code == 200
    return response.get_json()


@pytest.mark.parametrize("stage", ["complete", "first"])
def test_a_new_delivery_is_one_autocommitted_statement_to_claim_and_one_to_complete(
    sql_app: Flask, stage: str
) -> None:
    """For ``first`` the stale check (is the task's ``complete`` done?) is part of the claim."""
    app = sql_app
    post(app, build_callback("complete"))  # the table exists, the connection is made
    get_state(app).extension.wait_idle(app=app)
    with statements_run(app.config["DATABASE_URL"]) as seen:
        assert post(app, build_callback(stage)) == RECEIVED
        get_state(app).extension.wait_idle(app=app)
    request = [(s.sql, s.autocommit) for s in seen if s.on_request]
    assert request == [("INSERT", True), ("UPDATE", True)]
    # The task's stage is recorded off the request path, in one statement of its own.
    assert [(s.sql, s.autocommit) for s in seen if not s.on_request] == [("INSERT", True)]


def test_a_duplicate_costs_the_claim_and_one_read_of_why(sql_app: Flask) -> None:
    app = sql_app
    payload = build_callback("complete")
    post(app, payload)
    get_state(app).extension.wait_idle(10, app=app)
    with statements_run(app.config["DATABASE_URL"]) as seen:
        assert post(app, payload) == {"status": "duplicate"}
        get_state(app).extension.wait_idle(10, app=app)
    assert [s.sql for s in seen] == ["INSERT", "SELECT"]  # a duplicate records no stage


def test_on_its_own_sqlite_file_the_claim_and_the_completion_wait_for_the_disk(
    make_app: AppFactory, tmp_path: Path
) -> None:
    app = make_app(STORE=sqlite_url(tmp_path))
    post(app, build_callback("complete"))
    get_state(app).extension.wait_idle(app=app)
    with statements_run(sqlite_url(tmp_path)) as seen:
        post(app, build_callback("complete"))
        post(app, build_callback("complete"))
    full = 2
    assert [(s.sql, s.synchronous) for s in seen if s.sql != "PRAGMA" and s.on_request] == [
        ("INSERT", full),
        ("UPDATE", full),
        ("INSERT", full),
        ("UPDATE", full),
    ]


@pytest.fixture(scope="module")
def durable_postgresql() -> Iterator[PostgresServer]:
    """A PostgreSQL server whose commits wait for the disk, as in production."""
    server = start_postgresql(durable=True)
    try:
        yield server
    finally:
        server.remove()


@pytest.mark.parametrize("own_engine", [True, False], ids=["own-engine", "hosts-engine"])
def test_on_postgresql_a_claim_and_a_completion_each_sync_the_log(
    durable_postgresql: PostgresServer, own_engine: bool
) -> None:
    url = durable_postgresql.url(durable_postgresql.create_database())
    # A URL gives the store an engine of its own; an engine given is the host's.
    engine = None if own_engine else sa.create_engine(url)
    store = SQLAlchemyStore(None if engine else url, engine=engine, ttl=3600)
    observer = sa.create_engine(url, isolation_level="AUTOCOMMIT")

    def syncs(connections: list[Any]) -> int:
        for connection in connections:  # the store's: their backends publish their counters
            connection.execute("SELECT pg_stat_force_next_flush()")
            connection.commit()
        with observer.connect() as connection:
            return int(connection.exec_driver_sql("SELECT wal_sync FROM pg_stat_wal").scalar_one())

    deliveries = 20
    task_ids = [f"wal-{n}" for n in range(deliveries)]
    now = datetime.now(timezone.utc)
    try:
        with checkouts(url) as connections:
            store.claim(Delivery("warm-up", "complete", {}, now))
            before = syncs(connections)
            claims = [Delivery(task_id, "complete", {}, now) for task_id in task_ids]
            for delivery in claims:
                assert store.claim(delivery) is ClaimResult.CLAIMED
            claimed = syncs(connections)
            for delivery in claims:
                store.complete(delivery)
            completed = syncs(connections)
    finally:
        store.close()
        if engine is not None:
            engine.dispose()
        observer.dispose()
    assert claimed - before >= deliveries
    assert completed - claimed >= deliveries


def test_on_postgresql_the_request_paths_statements_are_prepared_by_the_server(
    make_app: AppFactory, postgresql_url: str
) -> None:
    """psycopg prepares a statement it runs often; the store's text never changes, so it does."""
    app = make_app(STORE=postgresql_url)
    with checkouts(postgresql_url) as connections:
        for _ in range(16):  # psycopg prepares a statement on its fifth run on a connection
            post(app, build_callback("complete"))
            get_state(app).extension.wait_idle(10, app=app)
    prepared = {
        statement.split()[0]
        for connection in connections  # the request's, and the write-back's recording stages
        for (statement,) in connection.execute(
            "SELECT statement FROM pg_prepared_statements"
        ).fetchall()
    }
    assert prepared == {"INSERT", "UPDATE"}


def redis_commands(redis_url: str, name: str, action: Callable[[], None]) -> list[str]:
    """The commands the client called ``name`` sent while ``action`` ran, each by its first word;
    the commands a script runs are not its client's round trips, and are left out."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    marker = f"end-{name}"
    seen: list[tuple[str, str]] = []
    with client.monitor() as monitor:
        action()
        client.echo(marker)
        for command in monitor.listen():
            if marker in command["command"]:
                break
            if command["client_type"] != "lua":
                seen.append((command["client_port"], command["command"].split()[0]))
    # Asked after the action: a connection the pool opened during it (two threads at once) is
    # the client's too, and stays open in the pool.
    ports = {c["addr"].rpartition(":")[2] for c in client.client_list() if c["name"] == name}
    client.close()
    # A new connection's handshake is the pool's, not the delivery's.
    handshake = {"HELLO", "CLIENT", "AUTH", "SELECT"}
    return [command for port, command in seen if port in ports and command not in handshake]


def test_on_redis_a_new_delivery_is_two_round_trips_and_one_after_the_answer(
    make_app: AppFactory, redis_url: str
) -> None:
    """The claim and the completion; the task's stage is a third script, run by the write-back's
    thread after the answer (the SQL tests above tell the threads apart)."""
    name = f"hot-path-{time.monotonic_ns()}"
    app = make_app(STORE=f"{redis_url}?client_name={name}")
    post(app, build_callback("complete"))
    get_state(app).extension.wait_idle(10, app=app)

    def deliver() -> None:
        assert post(app, build_callback("first")) == RECEIVED
        get_state(app).extension.wait_idle(10, app=app)

    assert redis_commands(redis_url, name, deliver) == ["EVALSHA", "EVALSHA", "EVALSHA"]


def hear_and_check(store: Store) -> None:
    """A stage of a task never heard of, one of a task kept, a signature new and one seen."""
    store.record_stage("new-task", "music", "text", at=NOW, via=VIA_CALLBACK, final=None)
    store.record_stage("new-task", "music", "complete", at=NOW, via=VIA_POLL, final=COMPLETE)
    assert store.remember_signature("signature", "digest-a", ttl=300)
    assert not store.remember_signature("signature", "digest-b", ttl=300)


NOW = datetime.now(timezone.utc)
COMPLETE = TaskState.COMPLETE


def test_recording_a_stage_and_remembering_a_signature_are_one_statement_each(
    sql_app: Flask,
) -> None:
    store = get_state(sql_app).store
    store.record_stage("warm-up", "music", "text", at=NOW, via=VIA_CALLBACK, final=None)
    with statements_run(sql_app.config["DATABASE_URL"]) as seen:
        hear_and_check(store)
    assert [(s.sql, s.autocommit) for s in seen] == [("INSERT", True)] * 4


def test_on_redis_recording_a_stage_and_remembering_a_signature_are_one_script_each(
    make_app: AppFactory, redis_url: str
) -> None:
    name = f"hot-path-{time.monotonic_ns()}"
    store = get_state(make_app(STORE=f"{redis_url}?client_name={name}")).store
    store.record_stage("warm-up", "music", "text", at=NOW, via=VIA_CALLBACK, final=None)
    store.remember_signature("warm-up", "digest", ttl=300)
    assert redis_commands(redis_url, name, lambda: hear_and_check(store)) == ["EVALSHA"] * 4


def test_the_hosts_engine_gets_its_connections_back_as_they_were(
    make_app: AppFactory, postgresql_url: str
) -> None:
    app = make_app(STORE="sqlalchemy://")
    with_flask_sqlalchemy(postgresql_url)(app)
    with statements_run(postgresql_url) as seen:
        assert post(app, build_callback("complete")) == RECEIVED
    # The request's own statements: the write-back's thread may record the stage meanwhile.
    on_request = [(s.sql, s.autocommit) for s in seen if s.on_request]
    assert on_request == [("INSERT", True), ("UPDATE", True)]
    db = app.extensions["sqlalchemy"]
    with app.app_context():
        with db.engine.connect() as connection:
            assert not autocommits(connection.connection.driver_connection)
        db.engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_off_the_request_path_a_delivery_is_three_autocommitted_statements_and_its_stage_one(
    request: pytest.FixtureRequest, make_app: AppFactory, tmp_path: Path, backend: str
) -> None:
    """The queued claim (the request's only one), the start by the worker, the completion; and
    the stage recorded on the task by the write-back's thread."""
    url = sqlite_url(tmp_path) if backend == "sqlite" else request.getfixturevalue("postgresql_url")
    app = make_app(STORE=url, DISPATCH="thread")
    dispatcher = get_state(app).dispatcher
    post(app, build_callback("complete"))
    assert dispatcher.wait_idle(10)
    assert get_state(app).extension.wait_idle(10, app=app)
    with statements_run(url) as seen:
        assert post(app, build_callback("complete")) == RECEIVED
        assert get_state(app).extension.wait_idle(10, app=app)
    dispatcher.close(10)
    assert [(s.sql, s.autocommit) for s in seen if s.on_request] == [("INSERT", True)]
    assert sorted((s.sql, s.autocommit) for s in seen) == [
        ("INSERT", True),
        ("INSERT", True),
        ("UPDATE", True),
        ("UPDATE", True),
    ]
