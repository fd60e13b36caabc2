"""The relational store: SQLite, PostgreSQL, MySQL/MariaDB through SQLAlchemy.

Two ways to point it at a database:

``sqlalchemy://`` (options ``?bind=KEY&table=NAME&lease=SECONDS&timeout=SECONDS``)
    The host app's Flask-SQLAlchemy ``db``. The extension's table joins ``db.metadata`` (or the
    bind's metadata), so ``db.create_all()``, Flask-Migrate and Alembic see it and the host's
    migrations own it. Only ``db``'s engine is borrowed, never its session: a claim commits on its
    own connection and never commits, or rolls back, the host's unit of work.

any SQLAlchemy URL (``sqlite:///callbacks.db``, ``postgresql+psycopg://...``;
``?table=&lease=&timeout=``)
    An engine of the extension's own, which creates its table on first use if it is missing.
    Relative SQLite paths are read from the app's instance folder, as Flask-SQLAlchemy does.

The claim is one atomic statement on SQLite and PostgreSQL: ``INSERT ... ON CONFLICT (task_id,
stage) DO UPDATE ... WHERE`` the existing row may be taken (released after an error, a lease run
out, remembered longer than the TTL). On other databases it is an ``INSERT`` and, on a unique
violation, a conditional ``UPDATE``, which the database also runs atomically. The unique key on
``(task_id, stage)`` decides; nothing is checked first and inserted after.

On the request path the claim (stale check included) and the completion are one statement each,
built once and run in autocommit: one round trip apiece. Only the claim's commit waits for the
disk (:meth:`SQLAlchemyStore._settle` says why that loses no delivery).

On the extension's own engine those statements go to the driver as SQL text compiled once, on a
pooled DBAPI connection: SQLAlchemy's work per execution (cache key, execution context, result)
was a third of the store's CPU on the client (docs/benchmarks.md has the figures). A host's
engine runs them through SQLAlchemy, so that its events and echo see them.
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qs

import sqlalchemy as sa
from flask import appcontext_pushed
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.pool import PoolProxiedConnection
from sqlalchemy.sql.compiler import SQLCompiler

from ...redact import redact_url
from ..base import (
    DEFAULT_LEASE,
    DEFAULT_TIMEOUT,
    MAX_ERROR_LENGTH,
    MAX_TASK_ID_LENGTH,
    STATUS_STATES,
    ClaimResult,
    Delivery,
    DeliveryState,
    KeptDelivery,
    NotReached,
    PersistentStore,
    StoreError,
    StoreUnavailable,
    check_timeout,
    lease_from_url,
    timeout_from_url,
    unusable_url,
)
from ..owners import claim_owner
from ..watchdog import Watchdog

if TYPE_CHECKING:
    from flask import Flask
    from flask_sqlalchemy import SQLAlchemy

T = TypeVar("T")

#: The table's name unless ``?table=`` says otherwise.
DEFAULT_TABLE = "musiccallback_deliveries"

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_IN_FLIGHT = (DeliveryState.PENDING.value, DeliveryState.PROCESSING.value)
_FINISHED = (DeliveryState.DONE.value, DeliveryState.FAILED.value)


def table_items(name: str) -> list[sa.schema.SchemaItem]:
    """The columns, key and indexes of the deliveries table called ``name``."""
    return [
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
        sa.Column("task_id", sa.String(MAX_TASK_ID_LENGTH), nullable=False),
        sa.Column("stage", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("released", sa.Boolean(), nullable=False, default=False),
        sa.Column("attempts", sa.Integer(), nullable=False, default=1),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("owner", sa.String(255), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(), nullable=True),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("headers", sa.JSON(), nullable=False),
        sa.Column("received_at", sa.DateTime(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("task_id", "stage", name=f"uq_{name}_task_stage"),
        sa.Index(f"ix_{name}_updated_at", "updated_at"),
        sa.Index(f"ix_{name}_state_updated_at", "state", "updated_at"),
    ]


def _naive(moment: datetime) -> datetime:
    """UTC without a zone, the form every dialect stores and compares alike."""
    return moment.astimezone(timezone.utc).replace(tzinfo=None)


def _aware(moment: datetime) -> datetime:
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class SQLAlchemyStore(PersistentStore):
    """Deliveries kept in one table, claimed atomically by its unique ``(task_id, stage)`` key.

    Pass ``url`` (or ``engine``) for a database of the extension's own, ``db`` for a
    Flask-SQLAlchemy extension object, or nothing to use the app's Flask-SQLAlchemy ``db`` (what
    ``sqlalchemy://`` means). With ``db`` or ``sqlalchemy://`` the table is the host's to create.
    """

    #: Dialects whose claim is one ``INSERT ... ON CONFLICT DO UPDATE ... WHERE``; others insert,
    #: then take the row over with a conditional ``UPDATE``.
    upsert_dialects: tuple[str, ...] = ("sqlite", "postgresql")

    def __init__(
        self,
        url: str | URL | None = None,
        *,
        ttl: int,
        lease: int = DEFAULT_LEASE,
        engine: Engine | None = None,
        db: SQLAlchemy | None = None,
        bind_key: str | None = None,
        table_name: str = DEFAULT_TABLE,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        super().__init__(ttl=ttl, lease=lease)
        #: Seconds each call waits on the database (:data:`~.base.DEFAULT_TIMEOUT`).
        self.timeout = check_timeout(timeout)
        self._watchdog = Watchdog(self.timeout)
        if sum(source is not None for source in (url, engine, db)) > 1:
            raise StoreError("Give SQLAlchemyStore one of url, engine or db.")
        if not _NAME.match(table_name):
            raise StoreError(f"Not a usable table name: {table_name!r}.")
        self.table_name = table_name
        self.bind_key = bind_key
        self._url = _database_url(url) if isinstance(url, str) else url
        self._engine = engine
        #: Whether the table is the extension's to create (its own engine), not the host's.
        self.creates_table = db is None and (url is not None or engine is not None)
        #: The Flask-SQLAlchemy object given in code; ``None`` looks up each app's own.
        self._given_db = db
        self._db: SQLAlchemy | None = None
        self._app: Flask | None = None
        self._lock = threading.Lock()
        self._ready = False
        #: Whether the engine autocommits: the extension's own does, a host's does not.
        self._autocommits = self._url is not None
        self._built: _Statements | None = None
        self._table: sa.Table | None = None
        if self.creates_table:
            self._table = sa.Table(table_name, sa.MetaData(), *table_items(table_name))
        if db is not None:
            self._use_db(db)

    @classmethod
    def from_url(cls, url: str, *, ttl: int) -> SQLAlchemyStore:
        lease = lease_from_url(url)
        timeout = timeout_from_url(url)
        query = parse_qs(url.partition("?")[2])
        table_name = query.get("table", [DEFAULT_TABLE])[-1]
        if url.partition("://")[0].lower() == "sqlalchemy":
            unknown = set(query) - {"bind", "table", "lease", "timeout"}
            if unknown:
                raise StoreError(
                    f"sqlalchemy:// takes bind, table, lease and timeout, not {unknown}."
                )
            bind_key = query.get("bind", [None])[-1]
            return cls(
                ttl=ttl, lease=lease, bind_key=bind_key, table_name=table_name, timeout=timeout
            )
        sa_url = _database_url(url).difference_update_query(["table", "lease", "timeout"])
        return cls(sa_url, ttl=ttl, lease=lease, table_name=table_name, timeout=timeout)

    # -- binding -------------------------------------------------------------------------------

    def init_app(self, app: Flask) -> SQLAlchemyStore:
        """The store that serves ``app``, its database found without connecting to it.

        A database of the extension's own is one for every app, and this store serves them all.
        The app's Flask-SQLAlchemy database is the app's alone, even through one ``db`` object
        (which keeps an engine per app): this store serves the first app, and any other gets a
        new one alike, with its own engine and statements.

        With ``sqlalchemy://`` the table joins ``db.metadata`` now if Flask-SQLAlchemy is already
        set up on the app, or else when the app's first context is pushed, which comes before
        any ``db.create_all()``, migration command or request: either extension may be
        initialised first.
        """
        if self._app is not None and not self.creates_table:
            return type(self)(
                ttl=self.ttl,
                lease=self.lease,
                db=self._given_db,
                bind_key=self.bind_key,
                table_name=self.table_name,
                timeout=self.timeout,
            ).init_app(app)
        self._app = app
        if self._url is not None and self._engine is None:
            self._engine = _create_engine(self._url, self.timeout, app.instance_path)
        if self.creates_table or self._db is not None:
            return self
        db = app.extensions.get("sqlalchemy")
        if db is not None:
            self._use_db(db)
        else:
            appcontext_pushed.connect(self._find_db, sender=app)
        return self

    def _find_db(self, app: Flask, **extra: Any) -> None:
        db = app.extensions.get("sqlalchemy")
        if db is not None and self._db is None:
            self._use_db(db)
        if self._db is not None:
            appcontext_pushed.disconnect(self._find_db, sender=app)

    def _use_db(self, db: SQLAlchemy) -> None:
        """Put the table in ``db``'s metadata for the bind, or reuse the one already there."""
        metadata = db.metadatas.get(self.bind_key)
        table = None if metadata is None else metadata.tables.get(self.table_name)
        if table is None:
            table = db.Table(self.table_name, *table_items(self.table_name), bind_key=self.bind_key)
        self._table = table
        self._db = db

    @property
    def table(self) -> sa.Table:
        """The deliveries table; with ``sqlalchemy://``, known once Flask-SQLAlchemy is found."""
        if self._table is None:
            app = self._app
            if app is not None:
                self._find_db(app)
            if self._table is None:
                raise StoreUnavailable(
                    "MUSICCALLBACK_STORE is sqlalchemy://, but Flask-SQLAlchemy is not set up on "
                    "this app: call db.init_app(app), or give a database URL instead."
                )
        return self._table

    def _connectable(self) -> Engine:
        """The engine, created or looked up once, and the table ready on it."""
        if self._ready and self._engine is not None:
            return self._engine
        with self._lock:
            table = self.table
            if self._engine is None:
                borrowed = self._db is not None
                self._engine = (
                    self._borrowed_engine() if borrowed else _create_engine(self._url, self.timeout)
                )
            if self.creates_table and not self._ready:
                _create_table(self._engine, table)
            self._ready = True
            return self._engine

    def _borrowed_engine(self) -> Engine:
        assert self._db is not None
        app = self._app
        if app is None:
            raise StoreUnavailable("SQLAlchemyStore(db=...) is used before init_app(app).")
        with app.app_context():
            engines = self._db.engines
            if self.bind_key not in engines:
                raise StoreUnavailable(f"Flask-SQLAlchemy has no bind {self.bind_key!r}.")
            return engines[self.bind_key]

    def describe(self) -> str:
        """The database, for messages; never its password."""
        if self._engine is not None:
            return _shown(self._engine.url)
        if self._url is not None:
            return _shown(self._url)
        return "the app's Flask-SQLAlchemy database"

    def _run(
        self, work: Callable[[Connection], T], *, autocommit: bool = False, bounded: bool = True
    ) -> T:
        """Run ``work`` in one transaction; :class:`~.base.NotReached` when no connection could
        be had.

        ``autocommit`` is for ``work`` of a single statement, which then is its own transaction:
        one round trip instead of three (``BEGIN``, the statement, ``COMMIT``).

        A pooled connection that the server dropped (a restart) is retried once on a fresh one,
        so that a database restart costs no 503. Work that outlives the store's timeout is cut
        off and not retried (:class:`~.watchdog.Watchdog`), unless it is not ``bounded``:
        listing and pruning, which may scan a large table and never run on the request path.
        """
        reached = False

        def attempt(engine: Engine) -> T:
            nonlocal reached
            with self._begin(engine, autocommit, bounded) as connection:
                reached = True
                return work(connection)

        try:
            engine = self._connectable()
            try:
                return attempt(engine)
            except DBAPIError as exc:
                if not exc.connection_invalidated:
                    raise
            return attempt(engine)
        except (SQLAlchemyError, OSError) as exc:
            if reached:
                raise
            raise NotReached from exc

    def _run_on_driver(
        self, work: Callable[[PoolProxiedConnection, sa.Dialect], T], *, retried: bool = False
    ) -> T:
        """Run ``work`` on a pooled DBAPI connection of the extension's own engine, which
        autocommits; the same failures as :meth:`_run`.

        A connection the server dropped is thrown away and ``work`` runs once more on a new one.
        A restart ends every pooled connection at once, so the pool is replaced as well, as
        SQLAlchemy itself invalidates the pool on a disconnect: the retry must not draw another
        dead one. Work that outlives the store's timeout is cut off, and its connection thrown
        away, but not retried: the server is not gone, it does not answer.
        """
        try:
            engine = self._connectable()
            connection = engine.raw_connection()
        except self.base_exceptions as exc:
            if retried:
                raise
            raise NotReached from exc
        dialect = engine.dialect
        watch = self._watchdog.watch(connection.dbapi_connection)
        try:
            with watch:
                return work(connection, dialect)
        except dialect.loaded_dbapi.Error as exc:
            if retried or not dialect.is_disconnect(exc, connection, None):
                raise
            connection.invalidate(exc)
        finally:
            if watch.fired:
                connection.invalidate()
            elif connection.is_valid:
                connection.close()
        engine.dispose()
        return self._run_on_driver(work, retried=True)

    @property
    def base_exceptions(self) -> tuple[type[BaseException], ...]:
        """SQLAlchemy's errors, the network's, and those of the driver, which the statements
        run on the driver (:class:`_DriverSQL`) raise as they are."""
        engine = self._engine
        if engine is None:
            return (SQLAlchemyError, OSError)
        return (SQLAlchemyError, OSError, engine.dialect.loaded_dbapi.Error)

    def unavailable(self, exc: BaseException, *, reached: bool = True) -> StoreUnavailable:
        """The driver's own words, without the SQL and its parameters (payloads)."""
        return StoreUnavailable(f"{self.describe()}: {_explain(exc)}", reached=reached)

    def _execute(
        self, pick: Callable[[_Statements], _Prebuilt | None], parameters: Mapping[str, Any]
    ) -> int | None:
        """Run one statement of the request path alone, in autocommit; the rows it returned,
        else the rows it changed; ``None`` where the dialect has no such statement.

        On the extension's own engine the driver runs it as SQL compiled once
        (:class:`_DriverSQL`); on a host's engine SQLAlchemy does, so that the host's engine
        events, echo and logging see it as they see their own.
        """
        if self._drives:

            def drive(connection: PoolProxiedConnection, dialect: sa.Dialect) -> int | None:
                statement = pick(self._statements(dialect))
                if statement is None:
                    return None
                assert statement.driver is not None
                with _unsynced(connection) if statement.unsynced else nullcontext():
                    return statement.driver.run(connection, parameters)

            return self._run_on_driver(drive)

        def execute(connection: Connection) -> int | None:
            statement = pick(self._statements(connection.dialect))
            if statement is None:
                return None
            with _unsynced(connection.connection) if statement.unsynced else nullcontext():
                return _rows(connection.execute(statement.clause, parameters))

        return self._run(execute, autocommit=True)

    @property
    def _drives(self) -> bool:
        """Whether the request path runs on the driver: on the extension's own engine, where the
        claim is one upsert."""
        return self._url is not None and self._url.get_backend_name() in self.upsert_dialects

    @contextmanager
    def _begin(self, engine: Engine, autocommit: bool, bounded: bool) -> Iterator[Connection]:
        """A connection in a transaction, or in autocommit; under the watchdog if ``bounded``.

        The extension's own engine autocommits (:func:`_create_engine`), as the request path
        wants, and switches to the database's default isolation for a transaction; an engine of
        the host's is left as it is and switched to autocommit for the time of one statement.
        Either switch is undone when the connection goes back to the pool. Work that is not
        ``bounded`` lifts the ``statement_timeout`` of the extension's own PostgreSQL engine for
        its transaction.
        """
        with engine.connect() as connection:
            if autocommit != self._autocommits:
                level = "AUTOCOMMIT" if autocommit else connection.default_isolation_level
                connection.execution_options(isolation_level=level)
            if bounded:
                watch: AbstractContextManager[object] = self._watchdog.watch(
                    connection.connection.dbapi_connection
                )
            else:
                watch = nullcontext()
            with watch, connection.begin():
                if not bounded and _STATEMENT_TIMEOUT in connection.connection.info:
                    connection.exec_driver_sql("SET LOCAL statement_timeout = 0")
                yield connection

    def close(self) -> None:
        if self._engine is not None and self._db is None:
            self._engine.dispose()

    # -- the claim -----------------------------------------------------------------------------

    def claim(self, delivery: Delivery, *, queued: bool = False) -> ClaimResult:
        now = _now()
        parameters = {
            "task_id": delivery.task_id,
            "stage": delivery.stage,
            "state": (DeliveryState.PENDING if queued else DeliveryState.PROCESSING).value,
            "released": False,
            "attempts": 1,
            "last_error": None,
            "owner": delivery.owner,
            "lease_expires_at": now + timedelta(seconds=self.lease),
            # JSON text, written as it is (:class:`_JSONText`): the body as received.
            "payload": delivery.payload_json(),
            "headers": json.dumps(dict(delivery.headers)),
            "received_at": _naive(delivery.received_at),
            "created_at": now,
            "updated_at": now,
            "superseded_by": delivery.superseded_by,
            "now": now,
            "forgotten_before": now - timedelta(seconds=self.ttl),
        }
        rows = self._execute(lambda statements: statements.claim, parameters)
        if rows is not None:
            claimed = rows == 1
        else:
            if delivery.superseded_by is not None and self._done(
                delivery.task_id, delivery.superseded_by, now
            ):
                return ClaimResult.STALE
            claimed = self._insert_or_take(parameters)
        if claimed:
            return ClaimResult.CLAIMED
        return self._refusal(delivery, now)

    def _refusal(self, delivery: Delivery, now: datetime) -> ClaimResult:
        """Why a claim was refused, read after the fact: off the hot path, so one more query.

        A row already held by the delivery's owner is this very claim, whose first answer was
        lost (the statement ran, the connection broke) and which was sent again.
        """
        table = self.table
        stages = [delivery.stage]
        if delivery.superseded_by is not None:
            stages.append(delivery.superseded_by)
        statement = sa.select(
            table.c.stage, table.c.state, table.c.released, table.c.owner, table.c.updated_at
        ).where(table.c.task_id == delivery.task_id, table.c.stage.in_(stages))
        rows = {row.stage: row for row in self._run(lambda c: c.execute(statement).all())}
        row = rows.get(delivery.stage)
        if row is not None and row.state in _IN_FLIGHT and row.owner == delivery.owner:
            return ClaimResult.CLAIMED
        later = rows.get(delivery.superseded_by or "")
        if later is not None and _fresh_and_done(later, now, self.ttl):
            return ClaimResult.STALE
        if row is not None and row.state in _FINISHED and not row.released:
            return ClaimResult.DUPLICATE
        return ClaimResult.IN_PROGRESS

    def _insert_or_take(self, parameters: Mapping[str, Any]) -> bool:
        """The claim for dialects without ``ON CONFLICT ... WHERE``: insert, else take over."""
        try:
            self._execute(lambda statements: statements.insert, parameters)
        except IntegrityError:
            pass
        else:
            return True
        # An UPDATE sets every column its parameters name: the takeover gets its own only.
        taking = {name: parameters[name] for name in (*_TAKEN, "now", "forgotten_before")}
        taking.update(key_task_id=parameters["task_id"], key_stage=parameters["stage"])
        return self._execute(lambda statements: statements.take, taking) == 1

    def _done(self, task_id: str, stage: str, now: datetime) -> bool:
        """Whether that stage of the task was processed within the TTL (the stale rule)."""
        table = self.table
        statement = sa.select(table.c.state, table.c.updated_at).where(
            table.c.task_id == task_id, table.c.stage == stage
        )
        row = self._run(lambda c: c.execute(statement).first())
        return row is not None and _fresh_and_done(row, now, self.ttl)

    def _statements(self, dialect: sa.Dialect) -> _Statements:
        """The request path's statements, built on first use, when the dialect is known."""
        statements = self._built
        if statements is None:
            upsert = dialect.name in self.upsert_dialects
            statements = self._built = _Statements.build(
                self.table, dialect, upsert=upsert, drive=self._drives
            )
        return statements

    # -- settling ------------------------------------------------------------------------------

    def start(self, delivery: Delivery, owner: str) -> bool:
        now = _now()
        table = self.table
        return self._set(
            delivery,
            sa.or_(
                sa.and_(
                    table.c.state == DeliveryState.PENDING.value, table.c.owner == delivery.owner
                ),
                sa.and_(table.c.state == DeliveryState.PROCESSING.value, table.c.owner == owner),
            ),
            state=DeliveryState.PROCESSING.value,
            owner=owner,
            lease_expires_at=now + timedelta(seconds=self.lease),
            updated_at=now,
        )

    def defer(self, delivery: Delivery, error: str, delay: float) -> None:
        now = _now()
        table = self.table
        self._set(
            delivery,
            table.c.state == DeliveryState.PROCESSING.value,
            table.c.owner == delivery.owner,
            state=DeliveryState.PENDING.value,
            released=False,
            attempts=table.c.attempts + 1,
            last_error=_error_text(error),
            lease_expires_at=now + timedelta(seconds=delay + self.lease),
            updated_at=now,
        )

    def complete(self, delivery: Delivery) -> None:
        self._settle(delivery, DeliveryState.DONE, released=False)

    def release(self, delivery: Delivery, error: str) -> None:
        self._settle(delivery, DeliveryState.FAILED, released=True, last_error=error)

    def fail(self, delivery: Delivery, error: str) -> None:
        self._settle(delivery, DeliveryState.FAILED, released=False, last_error=error)

    def _settle(
        self,
        delivery: Delivery,
        state: DeliveryState,
        *,
        released: bool,
        last_error: str | None = None,
    ) -> None:
        """Record the outcome in one autocommitted statement.

        A completion commits without waiting for the disk (:attr:`_Statements.complete`,
        :func:`_unsynced`). A crash of the database may then lose it, never the claim before it:
        the claim's commit waits for the disk, and so does every later claim, which carries the
        log, completions included, up to itself. A lost completion leaves the delivery as its
        claim left it, held under a lease; once the lease runs out a redelivery or ``replay
        --pending`` runs it again. The worst case is a second dispatch, never a lost delivery.
        A failure is kept durably: it may be the only trace of an error.
        """
        parameters = {
            "key_task_id": delivery.task_id,
            "key_stage": delivery.stage,
            "key_owner": delivery.owner,
            "state": state.value,
            "released": released,
            "last_error": None if last_error is None else _error_text(last_error),
            "updated_at": _now(),
        }
        if state is DeliveryState.DONE:
            self._execute(lambda statements: statements.complete, parameters)
        else:
            self._execute(lambda statements: statements.settle, parameters)

    def _set(self, delivery: Delivery, *conditions: sa.ColumnElement[bool], **values: Any) -> bool:
        """Update the delivery's row if ``conditions`` hold, in one round trip; whether it did."""
        table = self.table
        statement = (
            sa.update(table)
            .where(
                table.c.task_id == delivery.task_id, table.c.stage == delivery.stage, *conditions
            )
            .values(**values)
        )
        rowcount: int = self._run(lambda c: c.execute(statement).rowcount, autocommit=True)
        return rowcount == 1

    # -- what the command line and replay use --------------------------------------------------

    def list(
        self, *, status: str | None = None, task_id: str | None = None, limit: int | None = 50
    ) -> Sequence[KeptDelivery]:
        table = self.table
        statement = sa.select(table).order_by(table.c.updated_at.desc(), table.c.id.desc())
        if status is not None:
            statement = statement.where(table.c.state.in_([s.value for s in STATUS_STATES[status]]))
        if task_id is not None:
            statement = statement.where(table.c.task_id == task_id)
        return self._listed(statement, limit)

    def pending(self, older_than: timedelta, limit: int | None = None) -> Sequence[KeptDelivery]:
        """One query on the ``(state, updated_at)`` index, the longest unchanged first."""
        table = self.table
        statement = (
            sa.select(table)
            .where(table.c.state.in_(_IN_FLIGHT), table.c.updated_at <= _now() - older_than)
            .order_by(table.c.updated_at, table.c.id)
        )
        return self._listed(statement, limit)

    def _listed(self, statement: sa.Select[Any], limit: int | None) -> Sequence[KeptDelivery]:
        """The deliveries ``statement`` selects, at most ``limit``; not bounded by the timeout,
        as it may scan a large table, never while the provider waits."""
        if limit is not None:
            statement = statement.limit(limit)
        rows = self._run(lambda c: c.execute(statement).all(), bounded=False)
        return [_kept(row) for row in rows]

    def get(self, delivery_id: str) -> KeptDelivery | None:
        if not delivery_id.isdigit():
            return None
        table = self.table
        statement = sa.select(table).where(table.c.id == int(delivery_id))
        row = self._run(lambda c: c.execute(statement).first())
        return None if row is None else _kept(row)

    def prune(self, older_than: timedelta) -> int:
        table = self.table
        now = _now()
        statement = sa.delete(table).where(
            table.c.updated_at < now - older_than,
            sa.or_(
                table.c.state.in_(_FINISHED),
                table.c.lease_expires_at.is_(None),
                table.c.lease_expires_at < now,
            ),
        )
        deleted: int = self._run(lambda c: c.execute(statement).rowcount, bounded=False)
        return deleted

    def reclaim(
        self,
        delivery_id: str,
        *,
        force: bool = False,
        abandoned_by: str | None = None,
        queued: bool = False,
    ) -> KeptDelivery | None:
        if not delivery_id.isdigit():
            return None
        table = self.table
        now = _now()
        key = table.c.id == int(delivery_id)
        free = sa.or_(table.c.lease_expires_at.is_(None), table.c.lease_expires_at < now)
        if abandoned_by is not None:
            free = sa.or_(free, table.c.owner == abandoned_by)
        takeable: sa.ColumnElement[bool] = sa.or_(
            table.c.state == DeliveryState.FAILED.value,
            sa.and_(table.c.state.in_(_IN_FLIGHT), free),
        )
        state = DeliveryState.PENDING if queued else DeliveryState.PROCESSING
        statement = (
            sa.update(table)
            .where(key, sa.true() if force else takeable)
            .values(
                state=state.value,
                released=False,
                attempts=table.c.attempts + 1,
                owner=claim_owner(),
                lease_expires_at=now + timedelta(seconds=self.lease),
                updated_at=now,
            )
        )

        def take(connection: Connection) -> sa.Row[Any] | None:
            if connection.execute(statement).rowcount != 1:
                return None
            return connection.execute(sa.select(table).where(key)).first()

        row = self._run(take)
        return None if row is None else _kept(row)


#: What a takeover rewrites of the row it takes (``attempts`` is counted up besides).
_TAKEN = (
    "state",
    "released",
    "owner",
    "lease_expires_at",
    "payload",
    "headers",
    "received_at",
    "updated_at",
)


def _takeable(table: sa.Table) -> sa.ColumnElement[bool]:
    """A kept row a new claim may take: released after an error, its lease run out, or
    remembered longer than the TTL; ``:now`` and ``:forgotten_before`` are bound parameters."""
    now = sa.bindparam("now", type_=sa.DateTime())
    forgotten_before = sa.bindparam("forgotten_before", type_=sa.DateTime())
    return sa.or_(
        sa.and_(table.c.state == DeliveryState.FAILED.value, table.c.released),
        sa.and_(
            sa.or_(*(table.c.state == state for state in _IN_FLIGHT)),
            table.c.lease_expires_at < now,
        ),
        table.c.updated_at < forgotten_before,
    )


def _error_text(error: str) -> str:
    """A receiver's error as a text column keeps it: cut to length, and without NUL characters,
    which PostgreSQL's text refuses (a failure must never fail to be recorded)."""
    return error[:MAX_ERROR_LENGTH].replace("\x00", "\ufffd")


def _fresh_and_done(row: Any, now: datetime, ttl: int) -> bool:
    """The stale rule's test on the superseding stage's row."""
    return bool(
        row.state == DeliveryState.DONE.value and row.updated_at >= now - timedelta(seconds=ttl)
    )


def _rows(result: sa.CursorResult[Any]) -> int:
    """The rows a statement returned where it returns any (an upsert's ``RETURNING``), else
    those it changed."""
    if result.returns_rows:
        return len(result.all())
    return result.rowcount


class _JSONText(sa.types.TypeDecorator[str]):
    """A JSON column's value given as the JSON text it already is, and written as it is.

    The claim writes the body as received (:meth:`Delivery.payload_json`): parsing it gave the
    payload, so serialising the payload again on the request path would be work done twice.
    Reading it back is the column's :class:`sqlalchemy.JSON` as ever.
    """

    impl = sa.JSON
    cache_ok = True

    def bind_processor(self, dialect: sa.Dialect) -> None:
        return None


@dataclass(frozen=True)
class _Prebuilt:
    """One statement of the request path, as SQLAlchemy runs it and, on the extension's own
    engine, as its driver does."""

    clause: sa.UpdateBase
    #: The clause compiled for the driver, where the store runs it there.
    driver: _DriverSQL | None
    #: Whether its commit skips the wait for the disk (a completion; :func:`_unsynced`).
    unsynced: bool = False


@dataclass(frozen=True)
class _Statements:
    """The statements of the request path, built once per store with bound parameters.

    Building a statement anew per call cost more than running it (SQLAlchemy's coercions and
    cache key), so each is built here and executed with a parameter dictionary; each is one
    statement, run in autocommit: one round trip, no ``BEGIN`` and ``COMMIT`` around it.

    Running a prebuilt statement through SQLAlchemy still costs its cache key, execution context
    and result machinery, more CPU on the client than the database server spends on the same
    statement, and where the app, its database and its clients share the CPUs that counts. So
    on the extension's own engine each statement is also compiled for the driver
    (:class:`_DriverSQL`); docs/benchmarks.md ("What the profiles showed") has what each path
    costs and what this one saved. A host's engine keeps SQLAlchemy's path: its events, echo and
    logging are the host's.
    """

    #: ``INSERT ... SELECT ... WHERE NOT EXISTS (the superseding stage, done) ON CONFLICT DO
    #: UPDATE ... WHERE takeable``: the stale check, the insert and the takeover in one atomic
    #: statement; ``None`` where the dialect has no such upsert.
    claim: _Prebuilt | None
    #: Where there is no upsert, the claim is this insert and, on a unique violation, ``take``.
    insert: _Prebuilt
    #: Takes a takeable row over (:func:`_takeable`).
    take: _Prebuilt
    #: Settles a claimed row as failed or released.
    settle: _Prebuilt
    #: ``settle`` for completions, whose commit does not wait for the disk.
    complete: _Prebuilt

    @classmethod
    def build(
        cls, table: sa.Table, dialect: sa.Dialect, *, upsert: bool, drive: bool
    ) -> _Statements:
        """The statements for ``dialect``; ``drive`` compiles them for the driver as well."""

        def prebuilt(clause: sa.UpdateBase, unsynced: bool = False) -> _Prebuilt:
            driver = _DriverSQL.compile(clause, dialect) if drive else None
            return _Prebuilt(clause, driver, unsynced)

        values = {
            column.name: sa.bindparam(
                column.name,
                type_=_JSONText() if isinstance(column.type, sa.JSON) else column.type,
            )
            for column in table.c
            if column.name != "id"
        }
        claim = None
        if upsert:
            superseded_by = sa.bindparam("superseded_by", type_=table.c.stage.type)
            forgotten_before = sa.bindparam("forgotten_before", type_=sa.DateTime())
            stale = sa.exists().where(
                table.c.task_id == values["task_id"],
                table.c.stage == superseded_by,
                table.c.state == DeliveryState.DONE.value,
                table.c.updated_at >= forgotten_before,
            )
            insert = _dialect_insert(dialect.name, table).from_select(
                list(values), sa.select(*values.values()).where(~stale)
            )
            taken = {name: insert.excluded[name] for name in _TAKEN}
            upserting = insert.on_conflict_do_update(
                index_elements=[table.c.task_id, table.c.stage],
                set_={**taken, "attempts": table.c.attempts + 1},
                where=_takeable(table),
            )
            if dialect.insert_returning:
                # A row comes back when inserted or taken over, none when the WHERE kept it.
                upserting = upserting.returning(table.c.id)
            claim = prebuilt(upserting)
        key = (
            table.c.task_id == sa.bindparam("key_task_id", type_=table.c.task_id.type),
            table.c.stage == sa.bindparam("key_stage", type_=table.c.stage.type),
        )
        take = (
            sa.update(table)
            .where(*key, _takeable(table))
            .values(attempts=table.c.attempts + 1, **{name: values[name] for name in _TAKEN})
        )
        # Only the claim's owner settles it: a settlement sent again after a lost answer, or by an
        # owner whose claim was taken over meanwhile, changes nothing.
        owned = table.c.owner == sa.bindparam("key_owner", type_=table.c.owner.type)
        settle = (
            sa.update(table)
            .where(*key, owned)
            .values(
                state=sa.bindparam("state", type_=table.c.state.type),
                released=sa.bindparam("released", type_=table.c.released.type),
                last_error=sa.func.coalesce(
                    sa.bindparam("last_error", type_=table.c.last_error.type),
                    table.c.last_error,
                ),
                owner=sa.null(),
                lease_expires_at=sa.null(),
                updated_at=sa.bindparam("updated_at", type_=table.c.updated_at.type),
            )
        )
        complete = settle
        if dialect.name == "postgresql":
            # One transaction's setting, taken in the statement itself (an InitPlan, run once):
            # the commit of this statement alone stops waiting for the WAL to reach the disk.
            asynchronous = sa.select(sa.func.set_config("synchronous_commit", "off", sa.true()))
            complete = settle.where(asynchronous.scalar_subquery() == "off")
        return cls(
            claim=claim,
            insert=_Prebuilt(sa.insert(table).values(values), None),
            take=_Prebuilt(take, None),
            settle=prebuilt(settle),
            complete=prebuilt(complete, unsynced=True),
        )


@dataclass(frozen=True)
class _DriverSQL:
    """A statement as its driver takes it, compiled once: running it costs the driver's work
    and no more.

    Everything comes from SQLAlchemy's compiler for the dialect: the text (with the bind casts
    it renders), the parameters' order for a positional paramstyle, each parameter's bind
    processor (a ``DateTime`` on SQLite becomes SQLAlchemy's text) and the statement's own
    constants. What is written is what ``Connection.execute`` would write, and the text is the
    same on every run, as psycopg's automatic server-side prepare wants.
    """

    sql: str
    #: Whether the paramstyle is positional (``?``), else named (``%(name)s``).
    positional: bool
    #: The driver's name of each parameter, in the order of :attr:`binds`.
    keys: tuple[str, ...]
    #: Per parameter: the name of its value, or ``None`` for a constant of the statement; the
    #: constant, processed; the value's bind processor.
    binds: tuple[tuple[str | None, Any, Callable[[Any], Any] | None], ...]

    @classmethod
    def compile(cls, clause: sa.UpdateBase, dialect: sa.Dialect) -> _DriverSQL:
        compiled = clause.compile(dialect=dialect)
        assert isinstance(compiled, SQLCompiler)
        named = {name: bind for bind, name in compiled.bind_names.items()}
        order = (compiled.positiontup or []) if compiled.positional else list(named)
        keys: list[str] = []
        binds: list[tuple[str | None, Any, Callable[[Any], Any] | None]] = []
        for name in order:
            bind = named[name]
            process = bind.type.dialect_impl(dialect).bind_processor(dialect)
            keys.append(compiled.escaped_bind_names.get(name, name))
            if bind.required:
                binds.append((name, None, process))
            else:
                constant = bind.effective_value
                binds.append((None, constant if process is None else process(constant), None))
        return cls(compiled.string, compiled.positional, tuple(keys), tuple(binds))

    def parameters(self, values: Mapping[str, Any]) -> Sequence[Any] | dict[str, Any]:
        """The parameters in the driver's paramstyle, each as its bind processor makes it."""
        laid_out = []
        for name, constant, process in self.binds:
            value = constant if name is None else values[name]
            laid_out.append(value if process is None else process(value))
        if self.positional:
            return laid_out
        return dict(zip(self.keys, laid_out, strict=True))

    def run(self, connection: PoolProxiedConnection, values: Mapping[str, Any]) -> int:
        """The rows the statement returned, else those it changed (as :func:`_rows`)."""
        cursor = connection.cursor()
        try:
            cursor.execute(self.sql, self.parameters(values))
            if cursor.description is not None:
                return len(cursor.fetchall())
            return cursor.rowcount
        finally:
            cursor.close()


def _dialect_insert(dialect_name: str, table: sa.Table) -> Any:
    if dialect_name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table)
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table)


def _kept(row: sa.Row[Any]) -> KeptDelivery:
    lease = row.lease_expires_at
    return KeptDelivery(
        id=str(row.id),
        task_id=row.task_id,
        stage=row.stage,
        state=DeliveryState(row.state),
        payload=row.payload,
        headers=row.headers or {},
        attempts=row.attempts,
        last_error=row.last_error,
        released=bool(row.released),
        owner=row.owner,
        lease_expires_at=None if lease is None else _aware(lease),
        received_at=_aware(row.received_at),
        created_at=_aware(row.created_at),
        updated_at=_aware(row.updated_at),
    )


def _database_url(url: str) -> URL:
    """SQLAlchemy's reading of ``url``; a bad port is a ``ValueError`` that quotes it, and may
    quote a password whose host was left out, so both errors go through :func:`unusable_url`."""
    try:
        return make_url(url)
    except (ArgumentError, ValueError) as exc:
        raise unusable_url(url, exc, kind="database") from exc


def _shown(url: URL) -> str:
    """``url`` for messages: SQLAlchemy hides the password in the authority, not in the query
    (``?password=``, which drivers read as well)."""
    return redact_url(url.render_as_string(hide_password=True))


def _create_engine(url: URL | None, timeout: float, instance_path: str | None = None) -> Engine:
    """The extension's own engine, SQLite paths read as Flask-SQLAlchemy does.

    It autocommits: each statement of the request path stands alone, and
    :meth:`SQLAlchemyStore._begin` opens a transaction for work that needs one.

    No wait on the database outlasts ``timeout``: for a connection of the pool, to connect
    (a connect timeout in the URL wins), for SQLite's lock, and on PostgreSQL for a statement
    (the server cancels one that waits on a lock, so that it is not done after the caller gave
    up). A server that does not answer at all is the watchdog's (:class:`~.watchdog.Watchdog`).
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
        raise StoreError(f"Cannot use the database {_shown(url)}: {exc}") from exc
    if backend == "sqlite":
        sa.event.listen(engine, "connect", _write_ahead_log)
    elif backend == "postgresql":
        sa.event.listen(engine, "connect", _statement_timeout(timeout))
    return engine


#: Set in a connection's ``info`` when its statements are cancelled after the store's timeout.
_STATEMENT_TIMEOUT = "musiccallback_statement_timeout"


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
        record.info[_STATEMENT_TIMEOUT] = True

    return set_statement_timeout


#: Set in a connection's ``info`` when the extension's own SQLite file is in WAL mode.
_WAL = "musiccallback_wal"


def _write_ahead_log(dbapi_connection: Any, record: Any) -> None:
    """WAL: readers never wait for the writer, and a commit costs one sync instead of two.

    Only for the extension's own SQLite file; a host's database keeps the journal it chose. An
    optimisation only: if another process holds the file while it is switched, it stays as it is.
    Every commit syncs (``synchronous=FULL``) unless :func:`_unsynced` says otherwise.
    """
    import sqlite3

    cursor = dbapi_connection.cursor()
    try:
        mode = cursor.execute("PRAGMA journal_mode=WAL").fetchone()
        if mode is not None and str(mode[0]).lower() == "wal":
            cursor.execute("PRAGMA synchronous=FULL")
            record.info[_WAL] = True
    except sqlite3.OperationalError:
        pass
    finally:
        cursor.close()


@contextmanager
def _unsynced(connection: PoolProxiedConnection) -> Iterator[None]:
    """Commits on ``connection`` stop waiting for the disk, on the extension's own SQLite file.

    In WAL mode a commit without a sync survives a crash of the application, not one of the
    machine; the next synced commit syncs the log up to itself. Only for the time of the block:
    a claim must always wait for the disk. (PostgreSQL's completion says so in its statement.)
    """
    if not connection.info.get(_WAL):
        yield
        return
    sqlite = connection.driver_connection
    assert sqlite is not None
    sqlite.execute("PRAGMA synchronous=NORMAL")
    try:
        yield
    finally:
        sqlite.execute("PRAGMA synchronous=FULL")


def _has_psycopg3_only() -> bool:
    """``postgresql://`` means psycopg2 to SQLAlchemy; psycopg 3 serves when it alone is there."""
    import importlib.util

    return (
        importlib.util.find_spec("psycopg2") is None
        and importlib.util.find_spec("psycopg") is not None
    )


def _create_table(engine: Engine, table: sa.Table) -> None:
    """Create the table if missing; safe when several processes start on a fresh database.

    Two processes may both see no table and both create it: the loser's error is harmless once
    the table is there, so it is checked again before giving up, on the same connection: a
    server that cannot be reached costs one connect timeout, not two.
    """
    if engine.url.get_backend_name() == "sqlite" and engine.url.database:
        os.makedirs(os.path.dirname(os.path.abspath(engine.url.database)), exist_ok=True)
    with engine.connect() as connection:
        try:
            table.create(connection, checkfirst=True)
            connection.commit()
        except DBAPIError:
            connection.rollback()
            if not sa.inspect(connection).has_table(table.name):
                raise


def _explain(exc: BaseException) -> str:
    """The driver's own words, first line only: no SQL and no parameters (payloads) in logs."""
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        exc = exc.orig
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
