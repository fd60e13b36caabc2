"""The store: claims, settlements and queries on the deliveries table, and how they are run.

It holds what the other modules of this package are for: the tables (:mod:`.table`, and
:mod:`.tasks` beside it), a connection to them (:mod:`.engine`), the request path's statements
(:mod:`.statements`), and runs those on SQLAlchemy or on the driver (:mod:`.driver`); every
retry and error translation is here, at the store's boundary.

On the request path the claim (stale check included) and the completion are one statement each,
built once and run in autocommit: one round trip apiece, each commit waiting for the disk.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qs

import sqlalchemy as sa
from flask import appcontext_pushed
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.pool import PoolProxiedConnection

from ..base import (
    DEFAULT_LEASE,
    DEFAULT_TIMEOUT,
    STATUS_STATES,
    ClaimResult,
    Delivery,
    DeliveryState,
    KeptDelivery,
    NotReached,
    PersistentStore,
    StoreError,
    StoreHealth,
    StoreUnavailable,
    check_timeout,
    checked_rate,
    lease_from_url,
    paced,
    timeout_from_url,
)
from ..owners import claim_owner
from ..tasks import TaskChange, TaskRecord, TaskState
from ..watchdog import Watchdog
from .engine import (
    STATEMENT_TIMEOUT,
    create_engine,
    create_tables,
    database_url,
    host_engine,
    shown,
    unsynced,
)
from .signatures import seen, signature_items, signatures_table_name
from .statements import Prebuilt, Statements, Tables, rows
from .table import (
    DEFAULT_TABLE,
    FINISHED,
    IN_FLIGHT,
    TAKEN,
    error_text,
    fresh_and_done,
    host_table,
    kept,
    naive,
    naive_now,
    table_items,
)
from .tasks import (
    expect_upsert,
    expected_again,
    heard,
    new_task,
    task_items,
    task_record,
    tasks_table_name,
)

if TYPE_CHECKING:
    from flask import Flask
    from flask_sqlalchemy import SQLAlchemy

T = TypeVar("T")

#: Keys bound to one ``DELETE`` of a prune's batch.
BOUND_KEYS = 500

#: Rows a prune deletes per step on SQLite. Each step holds the database's one write lock, and a
#: claim that meets it sleeps in SQLite's busy handler, whose tries come milliseconds apart: a
#: claim waits about as long for a step of ten rows as for one of a thousand. What the claims
#: feel is how often they meet a step, so the steps are short and the lock is theirs between
#: them. Each commits without a sync, and checkpoints after (:func:`.engine.unsynced`), so that
#: the lock is held for less, and no claim's commit copies the prune's pages.
SQLITE_PRUNE_BATCH = 10

#: Rows a prune deletes per step on a database server (PostgreSQL). It locks only the rows it
#: deletes, which no claim waits for; but a claim's commit waits until the log written before it
#: is flushed, the step's included, and short steps keep that wait short.
SERVER_PRUNE_BATCH = 200

#: Rows a prune deletes a second at most on a database server. What a claim's commit waits for
#: is the log's flush, and each row deleted adds to the log (the first change to a page after a
#: checkpoint writes the whole page): the rate holds the prune's share of the disk, not only of
#: the claims' time.
SERVER_PRUNE_RATE = 500.0

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class SQLAlchemyStore(PersistentStore):
    """Deliveries kept in one table, claimed atomically by its unique ``(task_id, stage)`` key;
    tasks and signatures in two more named after it (:mod:`.tasks`, :mod:`.signatures`).

    Pass ``url`` (or ``engine``) for a database of the extension's own, ``db`` for a
    Flask-SQLAlchemy extension object, or nothing to use the app's Flask-SQLAlchemy ``db`` (what
    ``sqlalchemy://`` means). With ``db`` or ``sqlalchemy://`` the tables are the host's to
    create.
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
        #: Seconds each call waits on the database (:data:`~..base.DEFAULT_TIMEOUT`).
        self.timeout = check_timeout(timeout)
        self._watchdog = Watchdog(self.timeout)
        if sum(source is not None for source in (url, engine, db)) > 1:
            raise StoreError("Give SQLAlchemyStore one of url, engine or db.")
        if not _NAME.match(table_name):
            raise StoreError(f"Not a usable table name: {table_name!r}.")
        self.table_name = table_name
        self.tasks_table_name = tasks_table_name(table_name)
        self.signatures_table_name = signatures_table_name(table_name)
        self.bind_key = bind_key
        self._url = database_url(url) if isinstance(url, str) else url
        self._engine = engine
        #: Whether the tables are the extension's to create (its own engine), not the host's.
        self.creates_table = db is None and (url is not None or engine is not None)
        #: The Flask-SQLAlchemy object given in code; ``None`` looks up each app's own.
        self._given_db = db
        self._db: SQLAlchemy | None = None
        self._app: Flask | None = None
        self._lock = threading.Lock()
        self._ready = False
        self._prune_batch: int | None = None
        self._prune_rate: float | None = None
        self._prune_rate_set = False
        #: Whether the engine autocommits: the extension's own does, a host's does not.
        self._autocommits = self._url is not None
        self._built: Statements | None = None
        self._tables: Tables | None = None
        if self.creates_table:
            metadata = sa.MetaData()
            self._tables = Tables(
                *(sa.Table(name, metadata, *items(name)) for name, items in self._table_items())
            )
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
        sa_url = database_url(url).difference_update_query(["table", "lease", "timeout"])
        return cls(sa_url, ttl=ttl, lease=lease, table_name=table_name, timeout=timeout)

    # -- binding -------------------------------------------------------------------------------

    def init_app(self, app: Flask) -> SQLAlchemyStore:
        """The store that serves ``app``, its database found without connecting to it.

        A database of the extension's own is one for every app, and this store serves them all.
        The app's Flask-SQLAlchemy database is the app's alone, even through one ``db`` object
        (which keeps an engine per app): this store serves the first app, and any other gets a
        new one alike, with its own engine and statements.

        With ``sqlalchemy://`` the tables join ``db.metadata`` now if Flask-SQLAlchemy is already
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
            self._engine = create_engine(self._url, self.timeout, app.instance_path)
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

    def _table_items(self) -> list[tuple[str, Callable[[str], list[sa.schema.SchemaItem]]]]:
        """Each table's name and items, in the order of :class:`~.statements.Tables`."""
        return [
            (self.table_name, table_items),
            (self.tasks_table_name, task_items),
            (self.signatures_table_name, signature_items),
        ]

    def _use_db(self, db: SQLAlchemy) -> None:
        """Put the tables in ``db``'s metadata for the bind, or reuse those already there."""
        self._tables = Tables(
            *(host_table(db, name, self.bind_key, items) for name, items in self._table_items())
        )
        self._db = db

    @property
    def table(self) -> sa.Table:
        """The deliveries table; with ``sqlalchemy://``, known once Flask-SQLAlchemy is found."""
        return self.tables.deliveries

    @property
    def tasks_table(self) -> sa.Table:
        """The tasks table, known when the deliveries table is."""
        return self.tables.tasks

    @property
    def tables(self) -> Tables:
        """Every table of the store, known together."""
        if self._tables is None:
            app = self._app
            if app is not None:
                self._find_db(app)
            if self._tables is None:
                raise StoreUnavailable(
                    "MUSICCALLBACK_STORE is sqlalchemy://, but Flask-SQLAlchemy is not set up on "
                    "this app: call db.init_app(app), or give a database URL instead."
                )
        return self._tables

    def _connectable(self) -> Engine:
        """The engine, created or looked up once, and the table ready on it."""
        if self._ready and self._engine is not None:
            return self._engine
        with self._lock:
            tables = self.tables
            engine = self._engine_unlocked()
            if self.creates_table and not self._ready:
                create_tables(engine, *tables)
            self._ready = True
            return engine

    def _engine_unlocked(self) -> Engine:
        """The engine, created or looked up once; its tables left as they are."""
        if self._engine is None:
            db = self._db
            self._engine = (
                create_engine(self._url, self.timeout)
                if db is None
                else host_engine(db, self._app, self.bind_key)
            )
        return self._engine

    def check(self) -> StoreHealth:
        """``SELECT 1`` timed on a connection already open, and the tables looked for.

        Tables missing are not created here, even on the extension's own engine, which creates
        them at its first use: a check changes nothing, and says so instead.
        """
        tables = self.tables
        with self._lock:
            engine = self._engine_unlocked()

        def look(connection: Connection) -> tuple[float, list[str]]:
            started = time.perf_counter()
            connection.exec_driver_sql("SELECT 1").scalar()
            round_trip = time.perf_counter() - started
            inspector = sa.inspect(connection)
            missing = [
                table.name
                for table in tables
                if not inspector.has_table(table.name, schema=table.schema)
            ]
            return round_trip, missing

        with self._begin(engine, autocommit=True, bounded=True) as connection:
            round_trip, missing = look(connection)
        names = [table.name for table in tables]
        found = [name for name in names if name not in missing]
        return StoreHealth(
            round_trip=round_trip,
            found=f"tables {', '.join(found)} present" if found else "no table of the store",
            missing=tuple(missing),
            creates_missing=self.creates_table,
        )

    def describe(self) -> str:
        """The database, for messages; never its password."""
        if self._engine is not None:
            return shown(self._engine.url)
        if self._url is not None:
            return shown(self._url)
        return "the app's Flask-SQLAlchemy database"

    def _run(
        self,
        work: Callable[[Connection], T],
        *,
        autocommit: bool = False,
        bounded: bool = True,
        synced: bool = True,
    ) -> T:
        """Run ``work`` in one transaction; :class:`~..base.NotReached` when no connection could
        be had.

        ``autocommit`` is for ``work`` of a single statement, which then is its own transaction:
        one round trip instead of three (``BEGIN``, the statement, ``COMMIT``).

        A pooled connection that the server dropped (a restart) is retried once on a fresh one,
        so that a database restart costs no 503. Work that outlives the store's timeout is cut
        off and not retried (:class:`~..watchdog.Watchdog`), unless it is not ``bounded``:
        listing and pruning, which may scan a large table and never run on the request path.
        Work not ``synced`` may be lost to a crash of the machine once committed (see
        :meth:`_begin`).
        """
        reached = False

        def attempt(engine: Engine) -> T:
            nonlocal reached
            with self._begin(engine, autocommit, bounded, synced) as connection:
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
        run on the driver (:class:`~.driver.DriverSQL`) raise as they are."""
        engine = self._engine
        if engine is None:
            return (SQLAlchemyError, OSError)
        return (SQLAlchemyError, OSError, engine.dialect.loaded_dbapi.Error)

    def unavailable(self, exc: BaseException, *, reached: bool = True) -> StoreUnavailable:
        """The driver's own words, without the SQL and its parameters (payloads)."""
        return StoreUnavailable(f"{self.describe()}: {_explain(exc)}", reached=reached)

    def _execute(
        self, pick: Callable[[Statements], Prebuilt | None], parameters: Mapping[str, Any]
    ) -> int | None:
        """Run one statement of the request path alone, in autocommit; the rows it returned,
        else the rows it changed; ``None`` where the dialect has no such statement.

        On the extension's own engine the driver runs it as SQL compiled once
        (:class:`~.driver.DriverSQL`); on a host's engine SQLAlchemy does, so that the host's engine
        events, echo and logging see it as they see their own.
        """
        if self._drives:

            def drive(connection: PoolProxiedConnection, dialect: sa.Dialect) -> int | None:
                statement = pick(self._statements(dialect))
                if statement is None:
                    return None
                assert statement.driver is not None
                return statement.driver.run(connection, parameters)

            return self._run_on_driver(drive)

        def execute(connection: Connection) -> int | None:
            statement = pick(self._statements(connection.dialect))
            if statement is None:
                return None
            return rows(connection.execute(statement.clause, parameters))

        return self._run(execute, autocommit=True)

    @property
    def _drives(self) -> bool:
        """Whether the request path runs on the driver: on the extension's own engine, where the
        claim is one upsert."""
        return self._url is not None and self._url.get_backend_name() in self.upsert_dialects

    @contextmanager
    def _begin(
        self, engine: Engine, autocommit: bool, bounded: bool, synced: bool = True
    ) -> Iterator[Connection]:
        """A connection in a transaction, or in autocommit; under the watchdog if ``bounded``.

        The extension's own engine autocommits (:func:`.engine.create_engine`), as the request path
        wants, and switches to the database's default isolation for a transaction; an engine of
        the host's is left as it is and switched to autocommit for the time of one statement.
        Either switch is undone when the connection goes back to the pool. Work that is not
        ``bounded`` lifts the ``statement_timeout`` of the extension's own PostgreSQL engine for
        its transaction.

        Work not ``synced`` commits without a sync where a sync would hold a lock the claims
        wait for: on the extension's own SQLite file, whose one write lock a commit holds through
        its sync (:func:`.engine.unsynced`). A crash of the machine may
        then undo it, never a claim: that suits the prune alone, whose deleted rows would come
        back expired, for the next prune to delete again. A database server's commit holds no
        lock a claim waits for, and syncs as ever.
        """
        with engine.connect() as connection, nullcontext() if synced else unsynced(connection):
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
                if not bounded and STATEMENT_TIMEOUT in connection.connection.info:
                    connection.exec_driver_sql("SET LOCAL statement_timeout = 0")
                yield connection

    def close(self) -> None:
        if self._engine is not None and self._db is None:
            self._engine.dispose()

    # -- the claim -----------------------------------------------------------------------------

    def claim(self, delivery: Delivery, *, queued: bool = False) -> ClaimResult:
        now = naive_now()
        parameters = {
            **_new_row(delivery, now),
            "state": (DeliveryState.PENDING if queued else DeliveryState.PROCESSING).value,
            "owner": delivery.owner,
            "lease_expires_at": now + timedelta(seconds=self.lease),
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
        if row is not None and row.state in IN_FLIGHT and row.owner == delivery.owner:
            return ClaimResult.CLAIMED
        later = rows.get(delivery.superseded_by or "")
        if later is not None and fresh_and_done(later, now, self.ttl):
            return ClaimResult.STALE
        if row is not None and row.state in FINISHED and not row.released:
            return ClaimResult.DUPLICATE
        return ClaimResult.IN_PROGRESS

    def keep_unreadable(self, delivery: Delivery, error: str) -> bool:
        """One ``INSERT ... ON CONFLICT DO NOTHING`` (:mod:`.statements`), on the request path's
        way: a row inserted is a body kept now, none is one kept already."""
        parameters = {
            **_new_row(delivery, naive_now()),
            "state": DeliveryState.UNREADABLE.value,
            "last_error": error_text(error),
        }
        inserted = self._execute(lambda statements: statements.keep, parameters)
        if inserted is not None:
            return inserted == 1
        try:
            self._execute(lambda statements: statements.insert, parameters)
        except IntegrityError:
            return False
        return True

    def _insert_or_take(self, parameters: Mapping[str, Any]) -> bool:
        """The claim for dialects without ``ON CONFLICT ... WHERE``: insert, else take over."""
        try:
            self._execute(lambda statements: statements.insert, parameters)
        except IntegrityError:
            pass
        else:
            return True
        # An UPDATE sets every column its parameters name: the takeover gets its own only.
        taking = {name: parameters[name] for name in (*TAKEN, "now", "forgotten_before")}
        taking.update(key_task_id=parameters["task_id"], key_stage=parameters["stage"])
        return self._execute(lambda statements: statements.take, taking) == 1

    def _done(self, task_id: str, stage: str, now: datetime) -> bool:
        """Whether that stage of the task was processed within the TTL (the stale rule)."""
        table = self.table
        statement = sa.select(table.c.state, table.c.updated_at).where(
            table.c.task_id == task_id, table.c.stage == stage
        )
        row = self._run(lambda c: c.execute(statement).first())
        return row is not None and fresh_and_done(row, now, self.ttl)

    def _statements(self, dialect: sa.Dialect) -> Statements:
        """The request path's statements, built on first use, when the dialect is known."""
        statements = self._built
        if statements is None:
            upsert = dialect.name in self.upsert_dialects
            statements = self._built = Statements.build(
                self.tables, dialect, upsert=upsert, drive=self._drives
            )
        return statements

    # -- settling ------------------------------------------------------------------------------

    def start(self, delivery: Delivery, owner: str) -> bool:
        now = naive_now()
        table = self.table
        return self._set(
            delivery,
            table.c.state.in_(IN_FLIGHT),
            table.c.owner.in_((delivery.owner, owner)),
            state=DeliveryState.PROCESSING.value,
            owner=owner,
            lease_expires_at=now + timedelta(seconds=self.lease),
            updated_at=now,
        )

    def defer(self, delivery: Delivery, error: str, delay: float) -> None:
        now = naive_now()
        table = self.table
        self._set(
            delivery,
            table.c.state == DeliveryState.PROCESSING.value,
            table.c.owner == delivery.owner,
            state=DeliveryState.PENDING.value,
            released=False,
            attempts=table.c.attempts + 1,
            last_error=error_text(error),
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
        """Record the outcome in one autocommitted statement, which waits for the disk as the
        claim's does: an answered delivery's outcome outlives a crash of the database.

        (Completions that skipped the wait bought nothing measurable on the benchmark, and cost
        a second run of receivers after a crash of the database; docs/benchmarks.md.)
        """
        parameters = {
            "key_task_id": delivery.task_id,
            "key_stage": delivery.stage,
            "key_owner": delivery.owner,
            "state": state.value,
            "released": released,
            "last_error": None if last_error is None else error_text(last_error),
            "updated_at": naive_now(),
        }
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

    # -- tasks ---------------------------------------------------------------------------------

    def expect(self, task_id: str, family: str) -> None:
        """One upsert on SQLite and PostgreSQL (:func:`.tasks.expect_upsert`); elsewhere an
        ``INSERT`` and, on a unique violation, the ``UPDATE`` the upsert would have done."""
        table = self.tasks_table
        values = new_task(task_id, family, naive_now())

        def upsert(connection: Connection) -> bool:
            dialect = connection.dialect.name
            if dialect not in self.upsert_dialects:
                return False
            connection.execute(expect_upsert(table, dialect), values)
            return True

        if self._run(upsert, autocommit=True):
            return
        try:
            self._run(lambda c: c.execute(sa.insert(table), values), autocommit=True)
        except IntegrityError:
            again = (
                sa.update(table)
                .where(table.c.task_id == task_id)
                .values(expected_again(table, values))
            )
            self._run(lambda c: c.execute(again), autocommit=True)

    def task(self, task_id: str) -> TaskRecord | None:
        table = self.tasks_table
        statement = sa.select(table).where(table.c.task_id == task_id)
        row = self._run(lambda c: c.execute(statement).first())
        return None if row is None else task_record(row)

    def record_stage(
        self,
        task_id: str,
        family: str,
        stage: str,
        *,
        at: datetime,
        via: str,
        final: TaskState | None,
    ) -> None:
        """One statement (:func:`.tasks.heard_statements`): the upsert where the dialect has
        one, run as the claim is; elsewhere the update of the kept task, and only for a task
        never heard of the insert (and the update again if a concurrent insert won)."""
        parameters = heard(task_id, family, stage, at=at, via=via, final=final, now=naive_now())
        if self._execute(lambda statements: statements.heard, parameters) is not None:
            return
        if self._execute(lambda statements: statements.heard_again, parameters) == 1:
            return
        try:
            self._execute(lambda statements: statements.heard_first, parameters)
        except IntegrityError:
            self._execute(lambda statements: statements.heard_again, parameters)

    def tasks(
        self, *, state: TaskState | str | None = None, limit: int | None = 50
    ) -> Sequence[TaskRecord]:
        """One query on the ``updated_at`` index, or the ``(state, updated_at)`` one."""
        table = self.tasks_table
        statement = sa.select(table).order_by(table.c.updated_at.desc(), table.c.task_id.desc())
        if state is not None:
            statement = statement.where(table.c.state == TaskState(state).value)
        return self._tasks_of(statement, limit)

    def overdue(
        self, heard_before: datetime, *, now: datetime, limit: int | None = None
    ) -> Sequence[TaskRecord]:
        """One query on the ``(state, updated_at)`` index, the longest silent first."""
        table = self.tasks_table
        moment = naive(now)
        statement = (
            sa.select(table)
            .where(
                table.c.state == TaskState.OPEN.value,
                table.c.updated_at <= naive(heard_before),
                sa.or_(table.c.next_poll_at.is_(None), table.c.next_poll_at <= moment),
                _task_free(table, moment),
            )
            .order_by(table.c.updated_at, table.c.task_id)
        )
        return self._tasks_of(statement, limit)

    def _tasks_of(self, statement: sa.Select[Any], limit: int | None) -> Sequence[TaskRecord]:
        """The tasks ``statement`` selects, at most ``limit``; never on the request path."""
        if limit is not None:
            statement = statement.limit(limit)
        rows = self._run(lambda c: c.execute(statement).all(), bounded=False)
        return [task_record(row) for row in rows]

    def claim_task(
        self, task_id: str, owner: str, *, lease: float, now: datetime
    ) -> TaskRecord | None:
        """One conditional ``UPDATE`` decides, as :meth:`reclaim` does; the row is read back in
        the same transaction."""
        table = self.tasks_table
        moment = naive(now)
        key = table.c.task_id == task_id
        statement = (
            sa.update(table)
            .where(
                key,
                table.c.state == TaskState.OPEN.value,
                sa.or_(table.c.owner.is_(None), table.c.owner == owner, _task_free(table, moment)),
            )
            .values(owner=owner, lease_expires_at=moment + timedelta(seconds=lease))
        )

        def take(connection: Connection) -> sa.Row[Any] | None:
            if connection.execute(statement).rowcount != 1:
                return None
            return connection.execute(sa.select(table).where(key)).first()

        row = self._run(take)
        return None if row is None else task_record(row)

    def release_task(
        self,
        task_id: str,
        owner: str,
        *,
        polled: bool = False,
        next_poll_at: datetime | None = None,
        overdue: bool = False,
        lost: bool = False,
    ) -> TaskChange:
        """Conditional ``UPDATE`` statements in one transaction, each on the owner's claim:
        overdue if it was not, lost if it was open (the row each changes says what happened
        now), then the release itself. An owner who no longer holds the task changes nothing."""
        table = self.tasks_table
        now = naive_now()
        held = (table.c.task_id == task_id, table.c.owner == owner)
        found_overdue = (
            sa.update(table).where(*held, table.c.overdue_at.is_(None)).values(overdue_at=now)
        )
        found_lost = (
            sa.update(table)
            .where(*held, table.c.state == TaskState.OPEN.value)
            .values(state=TaskState.LOST.value, updated_at=now)
        )
        released: dict[str, Any] = {
            "owner": None,
            "lease_expires_at": None,
            "next_poll_at": None if next_poll_at is None else naive(next_poll_at),
        }
        if polled:
            released.update(polls=table.c.polls + 1, updated_at=now)
        release = sa.update(table).where(*held).values(released)

        def change(connection: Connection) -> TaskChange:
            became_overdue = overdue and connection.execute(found_overdue).rowcount == 1
            became_lost = lost and connection.execute(found_lost).rowcount == 1
            connection.execute(release)
            return TaskChange(overdue=became_overdue, lost=became_lost)

        return self._run(change)

    def remember_signature(self, signature: str, digest: str, *, ttl: float) -> bool:
        """One statement (:func:`.signatures.signature_statements`): the upsert where the
        dialect has one, run as the claim is; elsewhere the insert, and on a unique violation the
        conditional take of the kept row."""
        parameters = seen(signature, digest, ttl=ttl, now=naive_now())
        taken = self._execute(lambda statements: statements.signature, parameters)
        if taken is not None:
            return taken == 1
        try:
            self._execute(lambda statements: statements.signature_first, parameters)
        except IntegrityError:
            return self._execute(lambda statements: statements.signature_again, parameters) == 1
        return True

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
            .where(table.c.state.in_(IN_FLIGHT), table.c.updated_at <= naive_now() - older_than)
            .order_by(table.c.updated_at, table.c.id)
        )
        return self._listed(statement, limit)

    def _listed(self, statement: sa.Select[Any], limit: int | None) -> Sequence[KeptDelivery]:
        """The deliveries ``statement`` selects, at most ``limit``; not bounded by the timeout,
        as it may scan a large table, never while the provider waits."""
        if limit is not None:
            statement = statement.limit(limit)
        rows = self._run(lambda c: c.execute(statement).all(), bounded=False)
        return [kept(row) for row in rows]

    def get(self, delivery_id: str) -> KeptDelivery | None:
        if not delivery_id.isdigit():
            return None
        table = self.table
        statement = sa.select(table).where(table.c.id == int(delivery_id))
        row = self._run(lambda c: c.execute(statement).first())
        return None if row is None else kept(row)

    def delete(self, delivery_id: str) -> bool:
        if not delivery_id.isdigit():
            return False
        table = self.table
        statement = sa.delete(table).where(table.c.id == int(delivery_id))
        deleted: int = self._run(lambda c: c.execute(statement).rowcount, autocommit=True)
        return deleted == 1

    @property
    def prune_batch(self) -> int:
        """Rows a prune deletes per step: :data:`SQLITE_PRUNE_BATCH` on SQLite, else
        :data:`SERVER_PRUNE_BATCH`, unless set."""
        if self._prune_batch is not None:
            return self._prune_batch
        return SQLITE_PRUNE_BATCH if self._on_sqlite() else SERVER_PRUNE_BATCH

    @prune_batch.setter
    def prune_batch(self, rows: int) -> None:
        self._prune_batch = rows

    @property
    def prune_rate(self) -> float | None:
        """Rows a prune deletes a second at most: none on SQLite, whose steps are paced by their
        time, else :data:`SERVER_PRUNE_RATE`, unless set (``None``: none)."""
        if self._prune_rate_set:
            return self._prune_rate
        return None if self._on_sqlite() else SERVER_PRUNE_RATE

    @prune_rate.setter
    def prune_rate(self, rows: float | None) -> None:
        self._prune_rate, self._prune_rate_set = checked_rate(rows), True

    def _on_sqlite(self) -> bool:
        """Whether the database is SQLite, read from the URL where there is one: no engine is
        made early."""
        if self._url is not None:
            return self._url.get_backend_name() == "sqlite"
        self.tables  # noqa: B018 - a host's database not set up yet is StoreUnavailable
        with self._lock:
            return self._engine_unlocked().dialect.name == "sqlite"

    def prune(self, older_than: timedelta) -> int:
        """Finished deliveries, and those no claim holds: unreadable bodies, abandoned claims;
        and every signature whose window closed (not counted: they are no deliveries).

        In batches of :attr:`prune_batch` rows, each its own transaction (:meth:`!_delete_batches`):
        one ``DELETE`` of a year's expired rows would hold the table's write lock (SQLite's, the
        whole database's) for as long as it takes, and every claim meanwhile would wait, then
        fail.
        """
        table = self.table
        now = naive_now()
        signatures = self.tables.signatures
        self._delete_batches(signatures, signatures.c.signature, signatures.c.expires_at < now)
        return self._delete_batches(
            table,
            table.c.id,
            sa.and_(
                table.c.updated_at < now - older_than,
                sa.or_(
                    table.c.state.in_(FINISHED),
                    table.c.lease_expires_at.is_(None),
                    table.c.lease_expires_at < now,
                ),
            ),
        )

    def _delete_batches(
        self, table: sa.Table, key: sa.Column[Any], condition: sa.ColumnElement[bool]
    ) -> int:
        """Delete the rows of ``table`` matching ``condition``, :attr:`prune_batch` at a time; how
        many.

        Each batch selects its keys and deletes them, the condition checked again (a row claimed
        in between stays), in one short transaction; the batches are :func:`~..base.paced`.
        """
        batch = self.prune_batch

        def one_batch(connection: Connection) -> tuple[int, int]:
            keys = connection.execute(sa.select(key).where(condition).limit(batch)).scalars().all()
            deleted = 0
            for start in range(0, len(keys), BOUND_KEYS):  # SQLite before 3.32 binds 999 at most
                chunk = keys[start : start + BOUND_KEYS]
                statement = sa.delete(table).where(key.in_(chunk), condition)
                deleted += connection.execute(statement).rowcount
            return len(keys), deleted

        def step() -> tuple[int, bool]:
            found, deleted = self._run(one_batch, bounded=False, synced=False)
            return deleted, found == batch

        return paced(step, self.prune_rate)

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
        now = naive_now()
        key = table.c.id == int(delivery_id)
        free = sa.or_(table.c.lease_expires_at.is_(None), table.c.lease_expires_at < now)
        if abandoned_by is not None:
            free = sa.or_(free, table.c.owner == abandoned_by)
        takeable: sa.ColumnElement[bool] = sa.or_(
            table.c.state == DeliveryState.FAILED.value,
            sa.and_(table.c.state.in_(IN_FLIGHT), free),
        )
        readable = table.c.state != DeliveryState.UNREADABLE.value
        state = DeliveryState.PENDING if queued else DeliveryState.PROCESSING
        statement = (
            sa.update(table)
            .where(key, readable if force else takeable)
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
        return None if row is None else kept(row)


def _new_row(delivery: Delivery, now: datetime) -> dict[str, Any]:
    """The columns of ``delivery``'s row as it is first kept, held by nobody yet."""
    return {
        "task_id": delivery.task_id,
        "stage": delivery.stage,
        "released": False,
        "attempts": 1,
        "last_error": None,
        "owner": None,
        "lease_expires_at": None,
        # JSON text, written as it is (:mod:`.statements`): the body as received.
        "payload": delivery.payload_json(),
        "headers": json.dumps(dict(delivery.headers)),
        "received_at": naive(delivery.received_at),
        "created_at": now,
        "updated_at": now,
    }


def _explain(exc: BaseException) -> str:
    """The driver's own words, first line only: no SQL and no parameters (payloads) in logs."""
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        exc = exc.orig
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def _task_free(table: sa.Table, now: datetime) -> sa.ColumnElement[bool]:
    """A task whose reconciliation claim is not held at ``now`` (naive UTC)."""
    return sa.or_(table.c.lease_expires_at.is_(None), table.c.lease_expires_at <= now)
