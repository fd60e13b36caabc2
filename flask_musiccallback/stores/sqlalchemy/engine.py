"""Where the store's connections come from: an engine of the extension's own, or the host's.

The extension's own engine (:func:`create_engine`) is tuned for the request path: it
autocommits, never waits longer than the store's timeout, and puts its own SQLite file in WAL
mode; it creates its tables
(:func:`create_tables`). A host's Flask-SQLAlchemy engine (:func:`host_engine`) is borrowed as it
is: its settings and its migrations are the host's.

Apart from the store because none of this is about deliveries: it is what a connection is, and
how the database behind it is set up, before the first statement runs.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError

from ...redact import redact_url
from ..base import StoreError, StoreUnavailable, unusable_url

if TYPE_CHECKING:
    from flask import Flask
    from flask_sqlalchemy import SQLAlchemy


def database_url(url: str) -> URL:
    """SQLAlchemy's reading of ``url``; a bad port is a ``ValueError`` that quotes it, and may
    quote a password whose host was left out, so both errors go through :func:`unusable_url`."""
    try:
        return make_url(url)
    except (ArgumentError, ValueError) as exc:
        raise unusable_url(url, exc, kind="database") from exc


def shown(url: URL) -> str:
    """``url`` for messages: SQLAlchemy hides the password in the authority, not in the query
    (``?password=``, which drivers read as well)."""
    return redact_url(url.render_as_string(hide_password=True))


def create_engine(url: URL | None, timeout: float, instance_path: str | None = None) -> Engine:
    """The extension's own engine, SQLite paths read as Flask-SQLAlchemy does.

    It autocommits: each statement of the request path stands alone, and
    :meth:`.store.SQLAlchemyStore._begin` opens a transaction for work that needs one.

    No wait on the database outlasts ``timeout``: for a connection of the pool, to connect
    (a connect timeout in the URL wins), for SQLite's lock, and on PostgreSQL for a statement
    (the server cancels one that waits on a lock, so that it is not done after the caller gave
    up). A server that does not answer at all is the watchdog's (:class:`~..watchdog.Watchdog`).
    """
    assert url is not None
    options: dict[str, Any] = {"pool_timeout": timeout}
    backend = url.get_backend_name()
    if backend == "sqlite":
        database = url.database or ""
        if database in ("", ":memory:") or url.query.get("mode") == "memory":
            raise StoreError(
                "An in-memory SQLite database is private to one connection and keeps nothing: "
                "use memory:// or a SQLite file."
            )
        if instance_path is not None and not os.path.isabs(database):
            url = url.set(database=os.path.join(instance_path, database))
        options["connect_args"] = {"timeout": timeout}
    elif backend in ("postgresql", "mysql", "mariadb"):
        if "connect_timeout" not in url.query:
            # Whole seconds, as libpq and the MySQL drivers count them.
            options["connect_args"] = {"connect_timeout": math.ceil(timeout)}
        if url.drivername == "postgresql" and _has_psycopg3_only():
            url = url.set(drivername="postgresql+psycopg")
    try:
        engine = sa.create_engine(url, isolation_level="AUTOCOMMIT", **options)
    except (ArgumentError, ImportError) as exc:
        raise StoreError(f"Cannot use the database {shown(url)}: {exc}") from exc
    if backend == "sqlite":
        sa.event.listen(engine, "connect", _write_ahead_log)
    elif backend == "postgresql":
        sa.event.listen(engine, "connect", _statement_timeout(timeout))
    return engine


#: Set in a connection's ``info`` when its statements are cancelled after the store's timeout.
STATEMENT_TIMEOUT = "musiccallback_statement_timeout"

#: Set in a connection's ``info`` when its SQLite file is in WAL mode and every commit syncs.
WRITE_AHEAD_LOG = "musiccallback_write_ahead_log"

#: Every commit on the extension's own SQLite file syncs, but a prune's (:func:`unsynced`).
SYNC_EVERY_COMMIT = "PRAGMA synchronous=FULL"


def _statement_timeout(timeout: float) -> Callable[[Any, Any], None]:
    """A ``connect`` listener giving each new PostgreSQL connection ``statement_timeout``."""
    milliseconds = math.ceil(timeout * 1000)

    def set_statement_timeout(dbapi_connection: Any, record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"SET statement_timeout = {milliseconds}")
        finally:
            cursor.close()
        # Kept by the session even where the driver opened a transaction for the SET.
        dbapi_connection.commit()
        record.info[STATEMENT_TIMEOUT] = True

    return set_statement_timeout


def _write_ahead_log(dbapi_connection: Any, record: Any) -> None:
    """WAL: readers never wait for the writer, and a commit costs one sync instead of two.

    Only for the extension's own SQLite file; a host's database keeps the journal it chose. An
    optimisation only: if another process holds the file while it is switched, it stays as it is.
    Every commit syncs (``synchronous=FULL``): a claim or a completion, once answered, outlives a
    crash of the machine.
    """
    import sqlite3

    cursor = dbapi_connection.cursor()
    try:
        mode = cursor.execute("PRAGMA journal_mode=WAL").fetchone()
        if mode is not None and str(mode[0]).lower() == "wal":
            cursor.execute(SYNC_EVERY_COMMIT)
            record.info[WRITE_AHEAD_LOG] = True
    except sqlite3.OperationalError:
        pass
    finally:
        cursor.close()


@contextmanager
def unsynced(connection: Connection) -> Iterator[None]:
    """Commits on ``connection`` skip the sync for the time of the block, on the extension's own
    SQLite file in WAL mode; elsewhere nothing changes.

    Such a commit holds the database's one write lock for a write to the log alone, not for a
    sync too. Only WAL keeps it whole through a crash of the machine: the log is replayed in
    order up to its last whole transaction, and every synced commit syncs the log written
    before it. So a crash may undo the unsynced commits since the log was last synced, never
    part of one, nor a synced commit.

    After the block, a checkpoint copies what was written into the database file (syncing the
    log first), outside the write lock. Left to SQLite, the copy falls to the first commit past
    ``wal_autocheckpoint`` pages of log, which during a prune is a claim's. It is skipped when it
    cannot be had (a reader still on older pages): a later commit does it. A connection that
    cannot sync every commit again is thrown away before the pool lends it to a claim.
    """
    if WRITE_AHEAD_LOG not in connection.connection.info or not _pragmas(
        connection, "PRAGMA synchronous=NORMAL"
    ):
        yield
        return
    try:
        yield
    finally:
        if not connection.invalidated:
            _pragmas(connection, "PRAGMA wal_checkpoint(PASSIVE)")
            if not _pragmas(connection, SYNC_EVERY_COMMIT):
                connection.invalidate()


def _pragmas(connection: Connection, *pragmas: str) -> bool:
    """Run SQLite ``pragmas`` between two transactions, on the driver's own connection:
    SQLAlchemy's would begin one, in which SQLite refuses to change ``synchronous``. Whether
    they all ran."""
    dbapi_connection = connection.connection.dbapi_connection
    if dbapi_connection is None:
        return False
    try:
        cursor = dbapi_connection.cursor()
        try:
            for pragma in pragmas:
                cursor.execute(pragma)
        finally:
            cursor.close()
    except connection.dialect.loaded_dbapi.Error:
        return False
    return True


def _has_psycopg3_only() -> bool:
    """``postgresql://`` means psycopg2 to SQLAlchemy; psycopg 3 serves when it alone is there."""
    import importlib.util

    return (
        importlib.util.find_spec("psycopg2") is None
        and importlib.util.find_spec("psycopg") is not None
    )


def create_tables(engine: Engine, *tables: sa.Table) -> None:
    """Create the tables that are missing; safe when several processes start on a fresh
    database, and on a database made before a table was added (the tasks table).

    Two processes may both see no table and both create it: the loser's error is harmless once
    the table is there, so it is checked again before giving up, on the same connection: a
    server that cannot be reached costs one connect timeout, not two.
    """
    if engine.url.get_backend_name() == "sqlite" and engine.url.database:
        os.makedirs(os.path.dirname(os.path.abspath(engine.url.database)), exist_ok=True)
    with engine.connect() as connection:
        for table in tables:
            try:
                table.create(connection, checkfirst=True)
                connection.commit()
            except DBAPIError:
                connection.rollback()
                if not sa.inspect(connection).has_table(table.name):
                    raise


def host_engine(db: SQLAlchemy, app: Flask | None, bind_key: str | None) -> Engine:
    """The engine Flask-SQLAlchemy keeps for ``app`` and the bind, borrowed, never disposed."""
    if app is None:
        raise StoreUnavailable("SQLAlchemyStore(db=...) is used before init_app(app).")
    with app.app_context():
        engines = db.engines
        if bind_key not in engines:
            raise StoreUnavailable(f"Flask-SQLAlchemy has no bind {bind_key!r}.")
        return engines[bind_key]
