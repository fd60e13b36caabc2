"""The request path's statements: the claim, the settlements, the keeping of an unreadable body,
a stage heard of and a signature seen, built once per store.

The claim is one atomic statement on SQLite and PostgreSQL: ``INSERT ... ON CONFLICT (task_id,
stage) DO UPDATE ... WHERE`` the existing row may be taken (released after an error, a lease run
out, remembered longer than the TTL). On other databases it is an ``INSERT`` and, on a unique
violation, a conditional ``UPDATE``, which the database also runs atomically. The unique key on
``(task_id, stage)`` decides; nothing is checked first and inserted after. An unreadable body is
kept the same way, by ``INSERT ... ON CONFLICT DO NOTHING`` (or an ``INSERT`` whose unique
violation says it is kept already). Recording a stage heard of on its task and remembering a
signature are one statement each as well, written beside their tables (:mod:`.tasks`,
:mod:`.signatures`) and built here with the others.

Apart from the store because these statements are what a provider waits on: each is built once
with bound parameters and run alone in autocommit, one round trip apiece, and this is the one
place that says what each of them writes. How they run (through SQLAlchemy, or on the driver:
:mod:`.driver`) is the store's choice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import sqlalchemy as sa

from ..base import DeliveryState
from .driver import DriverSQL
from .signatures import signature_statements
from .table import TAKEN, JSONText, dialect_insert, takeable
from .tasks import heard_statements


def rows(result: sa.CursorResult[Any]) -> int:
    """The rows a statement returned where it returns any (an upsert's ``RETURNING``), else
    those it changed."""
    if result.returns_rows:
        return len(result.all())
    return result.rowcount


@dataclass(frozen=True)
class Prebuilt:
    """One statement of the request path, as SQLAlchemy runs it and, on the extension's own
    engine, as its driver does."""

    clause: sa.UpdateBase
    #: The clause compiled for the driver, where the store runs it there.
    driver: DriverSQL | None


@dataclass(frozen=True)
class Statements:
    """The statements of the request path, built once per store with bound parameters.

    Building a statement anew per call cost more than running it (SQLAlchemy's coercions and
    cache key), so each is built here and executed with a parameter dictionary; each is one
    statement, run in autocommit: one round trip, no ``BEGIN`` and ``COMMIT`` around it.

    Running a prebuilt statement through SQLAlchemy still costs its cache key, execution context
    and result machinery, more CPU on the client than the database server spends on the same
    statement, and where the app, its database and its clients share the CPUs that counts. So
    on the extension's own engine each statement is also compiled for the driver
    (:class:`DriverSQL`); docs/benchmarks.md ("What the profiles showed") has what each path
    costs and what this one saved. A host's engine keeps SQLAlchemy's path: its events, echo and
    logging are the host's.
    """

    #: ``INSERT ... SELECT ... WHERE NOT EXISTS (the superseding stage, done) ON CONFLICT DO
    #: UPDATE ... WHERE takeable``: the stale check, the insert and the takeover in one atomic
    #: statement; ``None`` where the dialect has no such upsert.
    claim: Prebuilt | None
    #: Where there is no upsert, the claim is this insert and, on a unique violation, ``take``.
    insert: Prebuilt
    #: Takes a takeable row over (:func:`takeable`).
    take: Prebuilt
    #: Settles a claimed row: done, failed, or released.
    settle: Prebuilt
    #: ``INSERT ... ON CONFLICT DO NOTHING``: keeps an unreadable body unless its key is kept
    #: already; ``None`` where the dialect has no such insert (then it is ``insert``).
    keep: Prebuilt | None
    #: Records a stage heard of on the task's row, created if need be
    #: (:func:`.tasks.heard_statements`); ``None`` where the dialect has no upsert.
    heard: Prebuilt | None
    #: Where there is no upsert: the update of a kept task, then the insert of a new one.
    heard_again: Prebuilt
    heard_first: Prebuilt
    #: Remembers a signature with its body's digest, or says it goes with another
    #: (:func:`.signatures.signature_statements`); ``None`` where the dialect has no upsert.
    signature: Prebuilt | None
    #: Where there is no upsert: the insert, then on a unique violation the take.
    signature_first: Prebuilt
    signature_again: Prebuilt

    @classmethod
    def build(cls, tables: Tables, dialect: sa.Dialect, *, upsert: bool, drive: bool) -> Statements:
        """The statements for ``dialect``; ``drive`` compiles them for the driver as well."""
        table = tables.deliveries

        def prebuilt(clause: sa.UpdateBase) -> Prebuilt:
            driver = DriverSQL.compile(clause, dialect) if drive else None
            return Prebuilt(clause, driver)

        values = {
            column.name: sa.bindparam(
                column.name,
                type_=JSONText() if isinstance(column.type, sa.JSON) else column.type,
            )
            for column in table.c
            if column.name != "id"
        }
        claim = keep = None
        if upsert:
            superseded_by = sa.bindparam("superseded_by", type_=table.c.stage.type)
            forgotten_before = sa.bindparam("forgotten_before", type_=sa.DateTime())
            stale = sa.exists().where(
                table.c.task_id == values["task_id"],
                table.c.stage == superseded_by,
                table.c.state == DeliveryState.DONE.value,
                table.c.updated_at >= forgotten_before,
            )
            keeping = (
                dialect_insert(dialect.name, table)
                .values(values)
                .on_conflict_do_nothing(index_elements=[table.c.task_id, table.c.stage])
            )
            if dialect.insert_returning:
                # Said, or SQLAlchemy returns the id by itself and the row count is lost.
                keeping = keeping.returning(table.c.id)
            keep = prebuilt(keeping)
            insert = dialect_insert(dialect.name, table).from_select(
                list(values), sa.select(*values.values()).where(~stale)
            )
            taken = {name: insert.excluded[name] for name in TAKEN}
            upserting = insert.on_conflict_do_update(
                index_elements=[table.c.task_id, table.c.stage],
                set_={**taken, "attempts": table.c.attempts + 1},
                where=takeable(table),
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
            .where(*key, takeable(table))
            .values(attempts=table.c.attempts + 1, **{name: values[name] for name in TAKEN})
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
        heard, heard_again, heard_first = heard_statements(
            tables.tasks, dialect.name, upsert=upsert
        )
        signature, signature_first, signature_again = signature_statements(
            tables.signatures, dialect, upsert=upsert
        )
        return cls(
            claim=claim,
            insert=Prebuilt(sa.insert(table).values(values), None),
            take=Prebuilt(take, None),
            settle=prebuilt(settle),
            keep=keep,
            heard=None if heard is None else prebuilt(heard),
            heard_again=Prebuilt(heard_again, None),
            heard_first=Prebuilt(heard_first, None),
            signature=None if signature is None else prebuilt(signature),
            signature_first=Prebuilt(signature_first, None),
            signature_again=Prebuilt(signature_again, None),
        )


class Tables(NamedTuple):
    """The store's tables, known together (:meth:`.store.SQLAlchemyStore.tables`)."""

    deliveries: sa.Table
    tasks: sa.Table
    signatures: sa.Table
