"""The tasks table: one row per task the host submitted (:mod:`..tasks`), beside the deliveries.

Named after the deliveries table (:func:`tasks_table_name`): two apps that keep their deliveries
apart in one database with ``?table=`` keep their tasks apart as well, with no option more. It is
created, or declared in the host's Flask-SQLAlchemy metadata, wherever the deliveries table is.

Its columns already hold what the task view and reconciliation read and write (API.md section
10), so that those come without a migration of their own: the stages heard of (JSON, each stage
to the ISO 8601 UTC time it was first received), the polls made and when the next one is due,
and a claim (owner, lease) for the process that polls it. Times are UTC without a zone, as in the
deliveries table (:func:`.table.naive`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa

from ..base import MAX_TASK_ID_LENGTH
from ..tasks import MAX_FAMILY_LENGTH, TaskRecord, TaskState
from .statements import dialect_insert
from .table import DEFAULT_TABLE, aware

_DELIVERIES = "_deliveries"


def tasks_table_name(deliveries: str) -> str:
    """The tasks table that goes with the deliveries table ``deliveries``: ``<name>_tasks``,
    ``<name>`` without a ``_deliveries`` ending (``musiccallback_deliveries`` goes with
    ``musiccallback_tasks``, ``received_callbacks`` with ``received_callbacks_tasks``)."""
    return deliveries.removesuffix(_DELIVERIES) + "_tasks"


#: The tasks table's name unless ``?table=`` names the deliveries table otherwise.
DEFAULT_TASKS_TABLE = tasks_table_name(DEFAULT_TABLE)


def task_items(name: str) -> list[sa.schema.SchemaItem]:
    """The columns, key and index of the tasks table called ``name``."""
    return [
        sa.Column("task_id", sa.String(MAX_TASK_ID_LENGTH), primary_key=True),
        sa.Column("family", sa.String(MAX_FAMILY_LENGTH), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("stages", sa.JSON(), nullable=False),
        sa.Column("expected_at", sa.DateTime(), nullable=True),
        sa.Column("polls", sa.Integer(), nullable=False, default=0),
        sa.Column("next_poll_at", sa.DateTime(), nullable=True),
        sa.Column("owner", sa.String(255), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Index(f"ix_{name}_state_updated_at", "state", "updated_at"),
    ]


def new_task(task_id: str, family: str, now: datetime) -> dict[str, Any]:
    """The row of a task expected ``now`` (naive UTC) and not heard of yet."""
    return {
        "task_id": task_id,
        "family": family,
        "state": TaskState.OPEN.value,
        "stages": {},
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
        expected_at=None if row.expected_at is None else aware(row.expected_at),
        updated_at=aware(row.updated_at),
        polls=row.polls,
    )
