"""The deliveries table: its columns and keys, the rules read in its rows, a row read back.

Apart because the table is the one thing every other module of the store agrees on: the claim's
statements are written against it, the store queries it, and a host declares it in its own
Flask-SQLAlchemy metadata (:func:`host_table`) for its migrations to own. Its times are UTC
without a zone (:func:`naive`), as every dialect stores and compares them alike.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from ..base import (
    MAX_ERROR_LENGTH,
    MAX_STAGE_LENGTH,
    MAX_TASK_ID_LENGTH,
    DeliveryState,
    KeptDelivery,
)

if TYPE_CHECKING:
    from flask_sqlalchemy import SQLAlchemy

#: The table's name unless ``?table=`` says otherwise.
DEFAULT_TABLE = "musiccallback_deliveries"

_DELIVERIES = "_deliveries"


def companion_name(deliveries: str, kind: str) -> str:
    """The name of the table of ``kind`` (``tasks``, ``signatures``) that goes with the
    deliveries table ``deliveries``: ``<name>_<kind>``, ``<name>`` without a ``_deliveries``
    ending (``musiccallback_deliveries`` goes with ``musiccallback_tasks``,
    ``received_callbacks`` with ``received_callbacks_tasks``). Two apps that keep their
    deliveries apart in one database with ``?table=`` keep everything else apart as well."""
    return f"{deliveries.removesuffix(_DELIVERIES)}_{kind}"


#: The states of a claimed delivery not yet settled, and of a settled one.
IN_FLIGHT = (DeliveryState.PENDING.value, DeliveryState.PROCESSING.value)
FINISHED = (DeliveryState.DONE.value, DeliveryState.FAILED.value)


def table_items(name: str) -> list[sa.schema.SchemaItem]:
    """The columns, key and indexes of the deliveries table called ``name``."""
    return [
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
        sa.Column("task_id", sa.String(MAX_TASK_ID_LENGTH), nullable=False),
        sa.Column("stage", sa.String(MAX_STAGE_LENGTH), nullable=False),
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
        # Each ends with the listings' tie-break, so that a page is read from the index in order,
        # with nothing left to sort.
        sa.Index(f"ix_{name}_updated_at", "updated_at", "id"),
        sa.Index(f"ix_{name}_state_updated_at", "state", "updated_at", "id"),
    ]


class JSONText(sa.types.TypeDecorator[str]):
    """A JSON column's value given as the JSON text it already is, and written as it is.

    The claim writes the body as received (:meth:`~..base.Delivery.payload_json`): parsing it
    gave the payload, so serialising the payload again on the request path would be work done
    twice; a stage heard of is written as the JSON text the database's merge reads. Reading it
    back is the column's :class:`sqlalchemy.JSON` as ever.
    """

    impl = sa.JSON
    cache_ok = True

    def bind_processor(self, dialect: sa.Dialect) -> None:
        return None


def naive(moment: datetime) -> datetime:
    """UTC without a zone, the form every dialect stores and compares alike."""
    return moment.astimezone(timezone.utc).replace(tzinfo=None)


def aware(moment: datetime) -> datetime:
    """A time read from the table, in UTC again."""
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment


def naive_now() -> datetime:
    """Now, in the table's form (:func:`naive`)."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


#: What a takeover rewrites of the row it takes (``attempts`` is counted up besides).
TAKEN = (
    "state",
    "released",
    "owner",
    "lease_expires_at",
    "payload",
    "headers",
    "received_at",
    "updated_at",
)


def takeable(table: sa.Table) -> sa.ColumnElement[bool]:
    """A kept row a new claim may take: released after an error, its lease run out, or
    remembered longer than the TTL; ``:now`` and ``:forgotten_before`` are bound parameters."""
    now = sa.bindparam("now", type_=sa.DateTime())
    forgotten_before = sa.bindparam("forgotten_before", type_=sa.DateTime())
    return sa.or_(
        sa.and_(table.c.state == DeliveryState.FAILED.value, table.c.released),
        sa.and_(
            sa.or_(*(table.c.state == state for state in IN_FLIGHT)),
            table.c.lease_expires_at < now,
        ),
        table.c.updated_at < forgotten_before,
    )


def error_text(error: str) -> str:
    """A receiver's error as a text column keeps it: cut to length, and without NUL characters,
    which PostgreSQL's text refuses (a failure must never fail to be recorded)."""
    return error[:MAX_ERROR_LENGTH].replace("\x00", "\ufffd")


def fresh_and_done(row: Any, now: datetime, ttl: int) -> bool:
    """The stale rule's test on the superseding stage's row."""
    return bool(
        row.state == DeliveryState.DONE.value and row.updated_at >= now - timedelta(seconds=ttl)
    )


def kept(row: sa.Row[Any]) -> KeptDelivery:
    """A row as the contract reports it, its times in UTC again."""
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
        lease_expires_at=None if lease is None else aware(lease),
        received_at=aware(row.received_at),
        created_at=aware(row.created_at),
        updated_at=aware(row.updated_at),
    )


def host_table(
    db: SQLAlchemy,
    name: str,
    bind_key: str | None,
    items: Callable[[str], list[sa.schema.SchemaItem]] = table_items,
) -> sa.Table:
    """The table ``name`` (of ``items``) in ``db``'s metadata for the bind: the one already
    there, else a new one."""
    metadata = db.metadatas.get(bind_key)
    table = None if metadata is None else metadata.tables.get(name)
    if table is None:
        table = db.Table(name, *items(name), bind_key=bind_key)
    return table


def dialect_insert(dialect_name: str, table: sa.Table) -> Any:
    """The ``INSERT`` of a dialect with ``ON CONFLICT`` (SQLite's, PostgreSQL's)."""
    if dialect_name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table)
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table)
