"""The SQLAlchemy store's ties to its host: Flask-SQLAlchemy's ``db``, or an engine of its own."""

from __future__ import annotations

import dataclasses
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from flask_musiccallback import MusicCallback, StoreError
from flask_musiccallback.contract import unreadable_delivery
from flask_musiccallback.stores.base import ClaimResult, Delivery, utcnow
from flask_musiccallback.stores.sqlalchemy import DEFAULT_TABLE, SQLAlchemyStore, table_items
from flask_musiccallback.stores.sqlalchemy.signatures import signatures_table_name
from flask_musiccallback.stores.sqlalchemy.store import (
    SERVER_PRUNE_BATCH,
    SERVER_PRUNE_RATE,
    SQLITE_PRUNE_BATCH,
)
from flask_musiccallback.stores.sqlalchemy.tasks import DEFAULT_TASKS_TABLE, tasks_table_name
from flask_musiccallback.stores.tasks import VIA_POLL
from flask_musiccallback.testing import build_callback

from .backends import sqlite_url
from .conftest import URL, AppFactory
from .servers import PostgresServer

TABLE = DEFAULT_TABLE
TASKS = DEFAULT_TASKS_TABLE
SIGNATURES = "musiccallback_signatures"


def host_app(database_url: str, **config: Any) -> Flask:
    app = Flask(__name__)
    app.testing = True
    app.config.update(
        SQLALCHEMY_DATABASE_URI=database_url,
        MUSICCALLBACK_TOKEN="t0ken",
        MUSICCALLBACK_STORE="sqlalchemy://",
    )
    app.config.update(config)
    return app


def deliver(app: Flask, payload: dict[str, Any] | None = None) -> tuple[int, Any]:
    response = app.test_client().post(
        "/music-callback?token=t0ken", json=payload or build_callback("complete")
    )
    return response.status_code, response.get_json()


def tables(app: Flask, db: SQLAlchemy, bind: str | None = None) -> list[str]:
    with app.app_context():
        return sa.inspect(db.engines[bind]).get_table_names()


def test_the_table_joins_db_metadata_when_flask_sqlalchemy_comes_first(tmp_path: Path) -> None:
    app = host_app(sqlite_url(tmp_path))
    db = SQLAlchemy(app)
    MusicCallback(app)
    assert {TABLE, TASKS, SIGNATURES} <= set(db.metadata.tables)
    with app.app_context():
        db.create_all()
    assert {TABLE, TASKS, SIGNATURES} <= set(tables(app, db))
    assert deliver(app) == (200, {"status": "received"})


def test_the_table_joins_db_metadata_when_the_extension_comes_first(tmp_path: Path) -> None:
    app = host_app(sqlite_url(tmp_path))
    MusicCallback(app)
    db = SQLAlchemy(app)
    with app.app_context():
        assert {TABLE, TASKS, SIGNATURES} <= set(db.metadata.tables)
        db.create_all()
    assert {TABLE, TASKS, SIGNATURES} <= set(tables(app, db))
    assert deliver(app) == (200, {"status": "received"})


def test_a_bind_key_puts_the_table_in_that_binds_database(tmp_path: Path) -> None:
    app = host_app(
        sqlite_url(tmp_path, "main.db"),
        SQLALCHEMY_BINDS={"callbacks": sqlite_url(tmp_path, "callbacks.db")},
        MUSICCALLBACK_STORE="sqlalchemy://?bind=callbacks&table=received_callbacks",
    )
    db = SQLAlchemy(app)
    MusicCallback(app)
    assert "received_callbacks" in db.metadatas["callbacks"].tables
    with app.app_context():
        db.create_all()
    assert tables(app, db, "callbacks") == [
        "received_callbacks",
        "received_callbacks_signatures",
        "received_callbacks_tasks",
    ]
    assert tables(app, db) == []
    assert deliver(app) == (200, {"status": "received"})


def test_a_store_given_the_db_in_code_works_in_an_app_factory(tmp_path: Path) -> None:
    db = SQLAlchemy()
    music = MusicCallback(store=SQLAlchemyStore(db=db, ttl=3600))
    assert TABLE in db.metadata.tables

    app = host_app(sqlite_url(tmp_path))
    db.init_app(app)
    music.init_app(app)
    with app.app_context():
        db.create_all()
    assert deliver(app) == (200, {"status": "received"})


def factory_app(
    tmp_path: Path, name: str, music: MusicCallback, db: SQLAlchemy, *, extension_first: bool
) -> Flask:
    """An app of a factory on the SQLite file ``<name>.db``, both extensions set up in the order
    given and its tables created, as a host's ``create_app`` does."""
    app = host_app(sqlite_url(tmp_path, f"{name}.db"))
    for extension in (music, db) if extension_first else (db, music):
        extension.init_app(app)
    with app.app_context():
        db.create_all()
    return app


def task_ids_in(database: Path) -> list[str]:
    """The tasks whose deliveries an SQLite file keeps, read past the apps and the store."""
    engine = sa.create_engine(f"sqlite:///{database}")
    try:
        with engine.connect() as connection:
            return list(connection.scalars(sa.text(f"SELECT task_id FROM {TABLE}")))
    finally:
        engine.dispose()


def deliver_to_each(apps: dict[str, Flask], tmp_path: Path) -> None:
    """Deliver a task named after each app to it, and see it kept in that app's database only."""
    for name, app in apps.items():
        payload = build_callback("complete", task_id=name)
        assert deliver(app, payload) == (200, {"status": "received"})
    for name in apps:
        assert task_ids_in(tmp_path / f"{name}.db") == [name]


EXTENSION_ORDERS = pytest.mark.parametrize(
    "extension_first", [True, False], ids=["extension-first", "flask-sqlalchemy-first"]
)


@EXTENSION_ORDERS
@pytest.mark.parametrize("db_in_code", [False, True], ids=["app-db", "db-in-code"])
def test_one_store_object_keeps_each_factory_apps_deliveries_in_that_apps_database(
    tmp_path: Path, extension_first: bool, db_in_code: bool
) -> None:
    db = SQLAlchemy()
    store = SQLAlchemyStore(db=db, ttl=3600) if db_in_code else SQLAlchemyStore(ttl=3600)
    music = MusicCallback(store=store)
    apps = {
        name: factory_app(tmp_path, name, music, db, extension_first=extension_first)
        for name in ("one", "two")
    }
    deliver_to_each(apps, tmp_path)


@EXTENSION_ORDERS
def test_one_store_object_serves_apps_with_a_flask_sqlalchemy_each(
    tmp_path: Path, extension_first: bool
) -> None:
    music = MusicCallback(store=SQLAlchemyStore(ttl=3600))
    apps = {
        name: factory_app(tmp_path, name, music, SQLAlchemy(), extension_first=extension_first)
        for name in ("one", "two")
    }
    deliver_to_each(apps, tmp_path)


def test_a_claim_never_commits_or_rolls_back_the_host_session(postgresql_url: str) -> None:
    app = host_app(postgresql_url)
    db = SQLAlchemy(app)
    MusicCallback(app)

    class Note(db.Model):  # type: ignore[name-defined,misc]
        id = sa.Column(sa.Integer, primary_key=True)
        text = sa.Column(sa.String(50))

    with app.app_context():
        db.create_all()

    with app.test_request_context():
        db.session.add(Note(text="not committed"))
        db.session.flush()
        assert deliver(app) == (200, {"status": "received"})
        assert db.session.scalar(sa.select(sa.func.count()).select_from(Note)) == 1
        db.session.rollback()
        assert db.session.scalar(sa.select(sa.func.count()).select_from(Note)) == 0
    with app.app_context():
        db.engine.dispose()


def test_without_flask_sqlalchemy_the_endpoint_answers_503_and_logs_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = host_app(sqlite_url(tmp_path))
    MusicCallback(app)
    with caplog.at_level(logging.ERROR, "flask_musiccallback"):
        assert deliver(app) == (503, {"status": "retry"})
    assert "Flask-SQLAlchemy is not set up" in caplog.text


def test_a_missing_table_answers_503_until_the_host_creates_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = host_app(sqlite_url(tmp_path))
    db = SQLAlchemy(app)
    MusicCallback(app)
    payload = build_callback("complete")
    with caplog.at_level(logging.ERROR, "flask_musiccallback"):
        assert deliver(app, payload) == (503, {"status": "retry"})
    assert TABLE in caplog.text
    with app.app_context():
        db.create_all()
    assert deliver(app, payload) == (200, {"status": "received"})


def test_its_own_engine_creates_its_table_in_the_instance_folder_for_a_relative_path(
    tmp_path: Path,
) -> None:
    app = Flask(__name__, instance_path=str(tmp_path / "instance"))
    app.testing = True
    app.config.update(MUSICCALLBACK_TOKEN="t0ken", MUSICCALLBACK_STORE="sqlite:///cb.db?table=d")
    MusicCallback(app)
    assert deliver(app) == (200, {"status": "received"})
    database = tmp_path / "instance" / "cb.db"
    created = sa.inspect(sa.create_engine(f"sqlite:///{database}")).get_table_names()
    assert created == ["d", "d_signatures", "d_tasks"]


def test_an_in_memory_sqlite_database_is_refused_at_start_up(make_app: AppFactory) -> None:
    with pytest.raises(StoreError, match="in-memory SQLite"):
        make_app(STORE="sqlite://")


def test_a_bad_table_name_is_refused_at_start_up(make_app: AppFactory, tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="table name"):
        make_app(STORE=sqlite_url(tmp_path) + "?table=drop;table")


def test_a_postgresql_url_without_a_driver_uses_psycopg(
    make_app: AppFactory, postgresql_server: PostgresServer
) -> None:
    database = postgresql_server.create_database()
    url = postgresql_server.url(database).replace("postgresql+psycopg://", "postgresql://")
    app = make_app(STORE=url)
    response = app.test_client().post(URL, json=build_callback("complete"))
    assert response.status_code == 200


def test_stores_starting_together_on_a_fresh_database_create_the_table_once(
    postgresql_url: str,
) -> None:
    stores = [SQLAlchemyStore(postgresql_url, ttl=60) for _ in range(6)]
    barrier = threading.Barrier(len(stores))
    results: list[ClaimResult | BaseException] = []

    def first_claim(store: SQLAlchemyStore, index: int) -> None:
        payload = build_callback("complete", task_id=f"task-{index}")
        delivery = Delivery(f"task-{index}", "complete", payload, datetime.now(timezone.utc))
        barrier.wait()
        try:
            results.append(store.claim(delivery))
        except BaseException as exc:
            results.append(exc)

    threads = [
        threading.Thread(target=first_claim, args=(store, i)) for i, store in enumerate(stores)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    for store in stores:
        store.close()
    assert results == [ClaimResult.CLAIMED] * len(stores)


def test_the_tasks_and_signatures_tables_are_named_after_the_deliveries_table() -> None:
    assert tasks_table_name(DEFAULT_TABLE) == TASKS == "musiccallback_tasks"
    assert tasks_table_name("shop_deliveries") == "shop_tasks"
    assert tasks_table_name("received_callbacks") == "received_callbacks_tasks"
    assert signatures_table_name(DEFAULT_TABLE) == SIGNATURES
    assert signatures_table_name("shop_deliveries") == "shop_signatures"


def test_the_tasks_table_has_room_for_reconciliation_and_an_index_on_state_and_time(
    tmp_path: Path,
) -> None:
    store = SQLAlchemyStore(sqlite_url(tmp_path), ttl=60)
    store.expect("t", "music")
    store.close()
    inspector = sa.inspect(sa.create_engine(sqlite_url(tmp_path)))
    columns = {column["name"]: column for column in inspector.get_columns(TASKS)}
    assert list(columns) == [
        "task_id", "family", "state", "stages", "sources", "expected_at", "polls",
        "overdue_at", "next_poll_at", "owner", "lease_expires_at", "created_at", "updated_at",
    ]  # fmt: skip
    assert inspector.get_pk_constraint(TASKS)["constrained_columns"] == ["task_id"]
    nullable = {name for name, column in columns.items() if column["nullable"]}
    assert nullable == {
        "sources", "expected_at", "overdue_at", "next_poll_at", "owner", "lease_expires_at",
    }  # fmt: skip
    indexes = {tuple(index["column_names"]) for index in inspector.get_indexes(TASKS)}
    assert {("state", "updated_at", "task_id"), ("updated_at", "task_id")} <= indexes


def test_the_signatures_table_is_keyed_by_signature_with_an_index_for_pruning(
    tmp_path: Path,
) -> None:
    store = SQLAlchemyStore(sqlite_url(tmp_path), ttl=60)
    store.remember_signature("s", "digest", ttl=300)
    store.close()
    inspector = sa.inspect(sa.create_engine(sqlite_url(tmp_path)))
    columns = [column["name"] for column in inspector.get_columns(SIGNATURES)]
    assert columns == ["signature", "digest", "expires_at"]
    assert inspector.get_pk_constraint(SIGNATURES)["constrained_columns"] == ["signature"]
    indexes = {tuple(index["column_names"]) for index in inspector.get_indexes(SIGNATURES)}
    assert ("expires_at",) in indexes


def test_a_task_row_made_before_sources_existed_is_read_and_gets_them(tmp_path: Path) -> None:
    store = SQLAlchemyStore(sqlite_url(tmp_path), ttl=60)
    store.expect("t", "music")
    engine = sa.create_engine(sqlite_url(tmp_path))
    with engine.begin() as connection:  # as a migration adding the column leaves the row
        connection.execute(sa.update(store.tasks_table).values(sources=sa.null()))
    engine.dispose()
    before = store.task("t")
    store.record_stage("t", "music", "complete", at=utcnow(), via=VIA_POLL, final=None)
    after = store.task("t")
    store.close()
    assert before is not None
    assert dict(before.sources) == {}
    assert after is not None
    assert dict(after.sources) == {"complete": VIA_POLL}


def test_prune_deletes_the_signatures_whose_window_closed(tmp_path: Path) -> None:
    store = SQLAlchemyStore(sqlite_url(tmp_path), ttl=60)
    store.remember_signature("closed", "digest", ttl=0)
    store.remember_signature("open", "digest", ttl=300)
    assert store.prune(timedelta(days=1)) == 0, "no delivery was pruned"
    store.close()
    engine = sa.create_engine(sqlite_url(tmp_path))
    with engine.connect() as connection:
        kept = connection.execute(sa.select(store.tables.signatures.c.signature)).scalars().all()
    engine.dispose()
    assert kept == ["open"]


def test_a_prune_is_many_short_transactions_a_claim_can_slip_between(tmp_path: Path) -> None:
    """Each batch commits on its own, and a claim made while the prune rests between two batches
    is taken at once: the table's write lock is never held for the whole prune."""
    engine = sa.create_engine(sqlite_url(tmp_path))
    store = SQLAlchemyStore(engine=engine, ttl=60)
    store.prune_batch = 3
    for n in range(30):
        delivery = Delivery(f"t{n}", "complete", {}, datetime.now(timezone.utc))
        store.claim(delivery)
        store.complete(delivery)
    commits: list[float] = []
    claimed: list[tuple[ClaimResult, float]] = []
    late = Delivery("late", "complete", {}, datetime.now(timezone.utc))

    def claim() -> None:
        result = store.claim(late)
        claimed.append((result, time.monotonic()))

    worker = threading.Thread(target=claim)

    def on_commit(connection: Any) -> None:
        commits.append(time.monotonic())
        if len(commits) == 2:  # the signatures' batch, then the first of the deliveries'
            worker.start()  # it waits for the lock that batch still holds

    sa.event.listen(engine, "commit", on_commit)
    try:
        assert store.prune(timedelta(0)) == 30
    finally:
        sa.event.remove(engine, "commit", on_commit)
        worker.join(timeout=10)
    [(result, at)] = claimed
    assert result is ClaimResult.CLAIMED
    assert at < commits[-1], "the claim got in before the prune ended"
    assert len(commits) >= 12  # signatures, ten batches of deliveries, the claim
    assert [kept.task_id for kept in store.list()] == ["late"]
    store.close()


def test_a_database_made_before_the_tasks_table_gets_it_on_first_use(tmp_path: Path) -> None:
    engine = sa.create_engine(sqlite_url(tmp_path))
    sa.Table(TABLE, sa.MetaData(), *table_items(TABLE)).create(engine)
    engine.dispose()
    store = SQLAlchemyStore(sqlite_url(tmp_path), ttl=60)
    store.expect("t", "lyrics")
    task = store.task("t")
    store.close()
    assert task is not None
    assert task.family == "lyrics"


def expired(store: SQLAlchemyStore, count: int) -> None:
    """``count`` deliveries done, and old enough for ``prune(timedelta(0))``."""
    for n in range(count):
        delivery = Delivery(f"t{n}", "complete", build_callback("complete"), utcnow())
        store.claim(delivery)
        store.complete(delivery)
    time.sleep(0.01)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_prune_steps_through_few_rows_on_sqlite_and_a_batch_on_postgresql(
    request: pytest.FixtureRequest, tmp_path: Path, backend: str
) -> None:
    """SQLite has one write lock, which each step holds; PostgreSQL locks the rows deleted only,
    and its steps are held to a rate. Either way every expired row goes, in as many steps as it
    takes."""
    url = sqlite_url(tmp_path) if backend == "sqlite" else request.getfixturevalue("postgresql_url")
    store = SQLAlchemyStore(url, ttl=60)
    if backend == "sqlite":
        assert (store.prune_batch, store.prune_rate) == (SQLITE_PRUNE_BATCH, None)
    else:
        assert (store.prune_batch, store.prune_rate) == (SERVER_PRUNE_BATCH, SERVER_PRUNE_RATE)
    expired(store, 2 * SQLITE_PRUNE_BATCH + 3)
    assert store.prune(timedelta(0)) == 2 * SQLITE_PRUNE_BATCH + 3
    store.prune_batch, store.prune_rate = 4, None
    assert (store.prune_batch, store.prune_rate) == (4, None)
    with pytest.raises(ValueError, match="above 0"):
        store.prune_rate = 0
    assert store.list() == []
    store.close()


@dataclasses.dataclass
class Levels:
    """Every SQLite connection's ``synchronous`` as each ``DELETE`` runs, and as the pool lends
    it."""

    deleting: list[int] = dataclasses.field(default_factory=list)
    lent: list[int] = dataclasses.field(default_factory=list)


@pytest.fixture
def levels() -> Iterator[Levels]:
    seen = Levels()

    def before_execute(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if isinstance(cursor, sqlite3.Cursor) and statement.lstrip().upper().startswith("DELETE"):
            seen.deleting.append(cursor.connection.execute("PRAGMA synchronous").fetchone()[0])

    def checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        if isinstance(dbapi_connection, sqlite3.Connection):
            seen.lent.append(dbapi_connection.execute("PRAGMA synchronous").fetchone()[0])

    sa.event.listen(sa.engine.Engine, "before_cursor_execute", before_execute)
    sa.event.listen(sa.pool.Pool, "checkout", checkout)
    try:
        yield seen
    finally:
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", before_execute)
        sa.event.remove(sa.pool.Pool, "checkout", checkout)


FULL, NORMAL = 2, 1  # SQLite's synchronous


@pytest.mark.parametrize("own", [True, False], ids=["own file", "host engine"])
def test_a_prune_on_sqlite_commits_unsynced_and_lends_no_connection_so(
    tmp_path: Path, own: bool, levels: Levels
) -> None:
    """What a crash takes of a prune comes back expired, and the next prune deletes it again; a
    claim's commit must outlive the crash. So on the extension's own SQLite file the prune's
    steps alone skip the sync, and every connection the pool lends, before, between and after
    them, syncs. A host's SQLite is left as it is."""
    url = sqlite_url(tmp_path)
    engine = None if own else sa.create_engine(url)
    store = SQLAlchemyStore(url if own else None, engine=engine, ttl=60)
    store.prune_batch = 3
    expired(store, 10)
    levels.lent.clear()
    try:
        assert store.prune(timedelta(0)) == 10
        late = Delivery("late", "complete", {}, utcnow())
        assert store.claim(late) is ClaimResult.CLAIMED
        store.complete(late)
    finally:
        store.close()
    assert len(levels.deleting) == 4  # ten deliveries, three a step
    assert len(levels.lent) >= len(levels.deleting) + 2
    if own:
        assert set(levels.deleting) == {NORMAL}
        assert set(levels.lent) == {FULL}
    else:
        assert set(levels.deleting) == set(levels.lent)


def test_a_prune_step_that_fails_leaves_its_connection_synced(
    tmp_path: Path, levels: Levels
) -> None:
    store = SQLAlchemyStore(sqlite_url(tmp_path), ttl=60)
    expired(store, 3)

    def fail(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("DELETE"):
            raise sqlite3.OperationalError("disk I/O error")

    sa.event.listen(sa.engine.Engine, "before_cursor_execute", fail)
    try:
        with pytest.raises(StoreError, match="disk I/O error"):
            store.prune(timedelta(0))
    finally:
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", fail)
    try:
        late = Delivery("late", "complete", {}, utcnow())
        assert store.claim(late) is ClaimResult.CLAIMED
    finally:
        store.close()
    assert levels.deleting == [NORMAL]
    assert set(levels.lent) == {FULL}


def test_a_prune_on_sqlite_checkpoints_its_own_writes_so_no_claim_has_to(tmp_path: Path) -> None:
    """SQLite has the first commit past ``wal_autocheckpoint`` pages of log copy them into the
    database file; during a prune that would be a claim, paying for the prune's pages. The prune
    copies its own, outside the write lock: once it returns, the database file without its log
    has none of the pruned rows."""
    store = SQLAlchemyStore(sqlite_url(tmp_path), ttl=60)
    store.prune_batch = 3
    expired(store, 10)
    database = tmp_path / "callbacks.db"

    def rows_in_the_file_alone() -> int:
        copy = tmp_path / "file-alone.db"
        copy.write_bytes(database.read_bytes())  # not its -wal
        engine = sa.create_engine(sqlite_url(tmp_path, copy.name))
        with engine.connect() as connection:
            rows = connection.execute(sa.select(sa.func.count()).select_from(store.table))
            count: int = rows.scalar_one()
        engine.dispose()
        copy.unlink()
        return count

    checkpoint = sa.create_engine(sqlite_url(tmp_path))
    with checkpoint.connect() as connection:
        connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    checkpoint.dispose()
    assert rows_in_the_file_alone() == 10
    assert store.prune(timedelta(0)) == 10
    assert rows_in_the_file_alone() == 0
    store.close()


def test_the_listings_read_a_page_from_an_index_in_order_with_nothing_to_sort(
    postgresql_url: str,
) -> None:
    """Each index ends with the listing's tie-break: a page of a year's deliveries or tasks is
    read from the index, never sorted (an index on the time alone left PostgreSQL an incremental
    sort on the tie-break)."""
    engine = sa.create_engine(postgresql_url)
    store = SQLAlchemyStore(engine=engine, ttl=60)
    listings = {
        "list": lambda: store.list(limit=50),
        "list failed": lambda: store.list(status="failed", limit=50),
        "tasks": lambda: store.tasks(limit=50),
        "tasks open": lambda: store.tasks(state="open", limit=50),
    }
    store.expect("t", "music")  # creates the tables first
    sent: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, sql: str, parameters: Any, *rest: Any) -> None:
        if sql.lstrip().upper().startswith("SELECT"):
            sent.append((sql, parameters))

    try:
        plans = {}
        for name, listing in listings.items():
            sent.clear()
            sa.event.listen(engine, "before_cursor_execute", capture)
            listing()
            sa.event.remove(engine, "before_cursor_execute", capture)
            [(sql, parameters)] = sent
            with engine.connect() as connection:
                # A near-empty table is read whole by choice; what is asked is whether the
                # index can serve the page in order.
                connection.exec_driver_sql("SET enable_seqscan = off")
                plan = connection.exec_driver_sql("EXPLAIN " + sql, parameters).scalars().all()
            plans[name] = "\n".join(plan)
    finally:
        store.close()
        engine.dispose()
    for name, plan in plans.items():
        assert "Index" in plan, f"{name}:\n{plan}"
        assert "Sort" not in plan, f"{name}:\n{plan}"


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_expecting_a_task_is_one_upsert_statement(
    request: pytest.FixtureRequest, tmp_path: Path, backend: str
) -> None:
    url = sqlite_url(tmp_path) if backend == "sqlite" else request.getfixturevalue("postgresql_url")
    engine = sa.create_engine(url)
    store = SQLAlchemyStore(engine=engine, ttl=60)
    store.expect("t", "music")  # creates the tables first
    sent: list[str] = []
    sa.event.listen(
        engine, "before_cursor_execute", lambda conn, cursor, sql, *rest: sent.append(sql)
    )
    try:
        store.expect("t", "lyrics")
        task = store.task("t")
    finally:
        engine.dispose()
    assert task is not None
    assert task.family == "lyrics"
    [upsert, _select] = sent
    assert "ON CONFLICT (task_id) DO UPDATE" in upsert


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_an_unreadable_body_kept_on_the_driver_reads_back_as_one_kept_through_sqlalchemy(
    request: pytest.FixtureRequest, tmp_path: Path, backend: str
) -> None:
    url = sqlite_url(tmp_path) if backend == "sqlite" else request.getfixturevalue("postgresql_url")
    engine = sa.create_engine(url)
    on_driver = SQLAlchemyStore(url, ttl=3600, table_name="on_driver")
    through_sqlalchemy = SQLAlchemyStore(engine=engine, ttl=3600, table_name="through_sqlalchemy")
    body = unreadable_delivery(task_id="task-ü-🎵")
    try:
        for store in (on_driver, through_sqlalchemy):
            assert store.keep_unreadable(body, "data: Fehler ⚡")
            assert not store.keep_unreadable(body, "data: Fehler ⚡")
        stored = {
            table: _stored(engine, table) for table in ("on_driver", "through_sqlalchemy")
        }
    finally:
        on_driver.close()
        engine.dispose()
    assert stored["on_driver"] == stored["through_sqlalchemy"]
    assert json.loads(stored["on_driver"][1]) == body.payload


def test_its_own_sqlite_file_uses_write_ahead_logging(make_app: AppFactory, tmp_path: Path) -> None:
    app = make_app(STORE=sqlite_url(tmp_path))
    assert app.test_client().post(URL, json=build_callback("complete")).status_code == 200
    with sa.create_engine(sqlite_url(tmp_path)).connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


@pytest.mark.parametrize(
    "received_at",
    [
        datetime(2026, 11, 24, 9, 30, 15, 123456, tzinfo=timezone.utc),
        datetime(2026, 11, 24, 9, 30, 15, tzinfo=timezone.utc),
    ],
    ids=["microseconds", "whole-seconds"],
)
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_row_written_on_the_driver_reads_back_as_one_written_through_sqlalchemy(
    request: pytest.FixtureRequest, tmp_path: Path, backend: str, received_at: datetime
) -> None:
    """On its own engine the store runs the request path on the driver; on an engine it is
    given, through SQLAlchemy. Both write the same values, byte for byte."""
    url = sqlite_url(tmp_path) if backend == "sqlite" else request.getfixturevalue("postgresql_url")
    engine = sa.create_engine(url)
    on_driver = SQLAlchemyStore(url, ttl=3600, table_name="on_driver")
    through_sqlalchemy = SQLAlchemyStore(engine=engine, ttl=3600, table_name="through_sqlalchemy")
    task_id = "task-ü-🎵"
    payload = build_callback("complete", task_id=task_id, msg="Zoë's song 🎶 is done")
    # As a provider sends it: UTF-8, nothing escaped, not as json.dumps would write it.
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    headers = {"User-Agent": "Çlient/1 🎧"}
    delivery = Delivery(task_id, "complete", payload, received_at, headers, body=body)
    kept = []
    try:
        for store in (on_driver, through_sqlalchemy):
            assert store.claim(delivery) is ClaimResult.CLAIMED
            store.release(delivery, "Fehler im Empfänger ⚡")
            assert store.claim(delivery) is ClaimResult.CLAIMED  # taken over: written again
            store.complete(delivery)
            [row] = store.list()
            kept.append(row)
        stored = {
            table: _stored(engine, table) for table in ("on_driver", "through_sqlalchemy")
        }
    finally:
        on_driver.close()
        engine.dispose()
    written, expected = kept
    assert written.payload == payload
    assert written.headers == headers
    assert written.received_at == received_at
    assert written.last_error == "Fehler im Empfänger ⚡"
    assert (written.attempts, written.released) == (2, False)
    epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)
    assert dataclasses.replace(written, created_at=epoch, updated_at=epoch) == dataclasses.replace(
        expected, created_at=epoch, updated_at=epoch
    )
    assert stored["on_driver"] == stored["through_sqlalchemy"]
    assert json.loads(stored["on_driver"][1]) == payload


def _stored(engine: sa.Engine, table: str) -> tuple[Any, ...]:
    """A row's values as the database holds them; on SQLite, the types it keeps them as, and
    the length of the times it writes (the microseconds always)."""
    columns = "received_at, payload, headers, released, attempts, last_error"
    shapes = (
        ", typeof(received_at), typeof(released), typeof(payload), length(created_at), "
        "length(updated_at)"
        if engine.dialect.name == "sqlite"
        else ""
    )
    texts = ", ".join(f"CAST({column} AS TEXT)" for column in columns.split(", "))
    with engine.connect() as connection:
        return tuple(connection.exec_driver_sql(f"SELECT {texts}{shapes} FROM {table}").one())
