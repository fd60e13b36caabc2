"""The tasks table: one row per task the host submitted or heard of (:mod:`..tasks`), beside the
deliveries.

Named after the deliveries table (:func:`tasks_table_name`), and created, or declared in the
host's Flask-SQLAlchemy metadata, wherever the deliveries table is.

A row holds what the task view and reconciliation read and write (API.md section 10): the stages
heard of and how each came (JSON: each stage to the ISO 8601 UTC time it was first received, and
to ``callback`` or ``poll``), the polls made, when it was found overdue and when the next poll is
due, and a claim (owner, lease) for the process that polls it. Times are UTC without a zone, as
in the deliveries table (:func:`.table.naive`).

Recording a stage is one statement (:func:`heard_upsert`): the stages already kept are merged
with the new one by the database's own JSON function, the kept time winning, so that nothing is
read first and written after.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa

from ..base import MAX_TASK_ID_LENGTH
from ..tasks import MAX_FAMILY_LENGTH, TaskRecord, TaskState
from .table import DEFAULT_TABLE, JSONText, aware, companion_name, dialect_insert


def tasks_table_name(deliveries: str) -> str:
    """The tasks table that goes with the deliveries table ``deliveries``
    (:func:`.table.companion_name`)."""
    return companion_name(deliveries, "tasks")


#: The tasks table's name unless ``?table=`` names the deliveries table otherwise.
DEFAULT_TASKS_TABLE = tasks_table_name(DEFAULT_TABLE)


def task_items(name: str) -> list[sa.schema.SchemaItem]:
    """The columns, key and indexes of the tasks table called ``name``.

    ``(state, updated_at, task_id)`` serves reconciliation (open tasks, the longest silent first)
    and the task list by state; ``(updated_at, task_id)`` the list of every task, newest first.
    ``sources`` may be
    null: rows made before it existed have none.
    """
    return [
        sa.Column("task_id", sa.String(MAX_TASK_ID_LENGTH), primary_key=True),
        sa.Column("family", sa.String(MAX_FAMILY_LENGTH), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("stages", sa.JSON(), nullable=False),
        sa.Column("sources", sa.JSON(), nullable=True),
        sa.Column("expected_at", sa.DateTime(), nullable=True),
        sa.Column("polls", sa.Integer(), nullable=False, default=0),
        sa.Column("overdue_at", sa.DateTime(), nullable=True),
        sa.Column("next_poll_at", sa.DateTime(), nullable=True),
        sa.Column("owner", sa.String(255), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        # Each ends with the listings' tie-break, as the deliveries' do.
        sa.Index(f"ix_{name}_state_updated_at", "state", "updated_at", "task_id"),
        sa.Index(f"ix_{name}_updated_at", "updated_at", "task_id"),
    ]


def new_task(task_id: str, family: str, now: datetime) -> dict[str, Any]:
    """The row of a task expected ``now`` (naive UTC) and not heard of yet."""
    return {
        "task_id": task_id,
        "family": family,
        "state": TaskState.OPEN.value,
        "stages": {},
        "sources": {},
        "expected_at": now,
        "polls": 0,
        "created_at": now,
        "updated_at": now,
    }


def expected_again(table: sa.Table, new: Any) -> dict[str, Any]:
    """What expecting a task kept already changes, ``new`` being the values of its
    :func:`new_task` row (or the upsert's ``excluded``): the family, the time of the change, and
    the time it was expected if it never was (a task first heard of by a callback)."""
    return {
        "family": new["family"],
        "updated_at": new["updated_at"],
        "expected_at": sa.func.coalesce(table.c.expected_at, new["expected_at"]),
    }


def expect_upsert(table: sa.Table, dialect_name: str) -> Any:
    """``INSERT ... ON CONFLICT (task_id) DO UPDATE``: :func:`expected_again` on a task kept
    already, in one atomic statement; executed with :func:`new_task`'s values."""
    insert = dialect_insert(dialect_name, table)
    return insert.on_conflict_do_update(
        index_elements=[table.c.task_id], set_=expected_again(table, insert.excluded)
    )


# -- a stage heard of ---------------------------------------------------------------------------


def heard(
    task_id: str,
    family: str,
    stage: str,
    *,
    at: datetime,
    via: str,
    final: TaskState | None,
    now: datetime,
) -> dict[str, Any]:
    """The parameters of :func:`heard_statements`: a stage heard of ``now`` (naive UTC), and
    ``final``, the state it settles (``None``: it settles none).

    None is named after a column: an ``UPDATE`` run with a parameter of a column's name would
    set that column too.
    """
    return {
        "key_task_id": task_id,
        "new_family": family,
        "new_state": (final or TaskState.OPEN).value,
        "final": None if final is None else final.value,
        "new_stages": json.dumps({stage: at.astimezone(timezone.utc).isoformat()}),
        "new_sources": json.dumps({stage: via}),
        "now": now,
    }


def heard_statements(table: sa.Table, dialect_name: str, *, upsert: bool) -> tuple[Any, Any, Any]:
    """Recording a stage: ``(upsert, update, insert)``, each with bound parameters (:func:`heard`).

    The upsert (``INSERT ... ON CONFLICT (task_id) DO UPDATE``; ``None`` unless ``upsert``, which
    SQLite and PostgreSQL have) does it all in one statement. Elsewhere the update (of a task
    kept already, the usual case) comes first, then the insert when it changed no row, and the
    update again if a concurrent insert won: each is atomic, and the usual case is one statement
    too.
    """
    stages = sa.bindparam("new_stages", type_=JSONText())
    sources = sa.bindparam("new_sources", type_=JSONText())
    now = sa.bindparam("now", type_=sa.DateTime())
    task_id = sa.bindparam("key_task_id", type_=table.c.task_id.type)
    first = {
        "task_id": task_id,
        "family": sa.bindparam("new_family", type_=table.c.family.type),
        "state": sa.bindparam("new_state", type_=table.c.state.type),
        "stages": stages,
        "sources": sources,
        "polls": 0,
        "created_at": now,
        "updated_at": now,
    }
    again = {
        "stages": _keeping(dialect_name, table.c.stages, stages),
        "sources": _keeping(dialect_name, table.c.sources, sources),
        "state": sa.func.coalesce(sa.bindparam("final", type_=table.c.state.type), table.c.state),
        "updated_at": now,
    }
    update = sa.update(table).where(table.c.task_id == task_id).values(again)
    insert = sa.insert(table).values(first)
    if not upsert:
        return None, update, insert
    upserting = (
        dialect_insert(dialect_name, table)
        .values(first)
        .on_conflict_do_update(index_elements=[table.c.task_id], set_=again)
    )
    return upserting, update, insert


def _keeping(dialect_name: str, kept: sa.ColumnElement[Any], new: Any) -> Any:
    """The JSON object ``kept`` (null: none) with the keys of ``new`` it lacks: what is kept wins.

    Each database's own merge: PostgreSQL's ``jsonb ||``, SQLite's ``json_patch`` and MySQL's
    and MariaDB's ``JSON_MERGE_PATCH`` (the right-hand object's keys win in all three).
    """
    if dialect_name == "postgresql":
        from sqlalchemy.dialects.postgresql import JSONB

        empty = sa.cast(sa.literal_column("'{}'"), JSONB)
        merged = sa.cast(new, JSONB).op("||")(sa.func.coalesce(sa.cast(kept, JSONB), empty))
        return sa.cast(merged, sa.JSON)
    merge = sa.func.json_patch if dialect_name == "sqlite" else sa.func.json_merge_patch
    return merge(new, sa.func.coalesce(kept, sa.literal_column("'{}'")), type_=sa.JSON)


def task_record(row: sa.Row[Any]) -> TaskRecord:
    """A row as the contract reports it, its times in UTC again."""
    return TaskRecord(
        task_id=row.task_id,
        family=row.family,
        state=TaskState(row.state),
        stages={
            stage: aware(datetime.fromisoformat(moment))
            for stage, moment in (row.stages or {}).items()
        },
        expected_at=_aware(row.expected_at),
        updated_at=aware(row.updated_at),
        polls=row.polls,
        sources=dict(row.sources or {}),
        overdue_at=_aware(row.overdue_at),
        next_poll_at=_aware(row.next_poll_at),
    )


def _aware(moment: datetime | None) -> datetime | None:
    return None if moment is None else aware(moment)
