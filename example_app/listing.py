"""The tasks on the page: what the receivers recorded of each, beside the extension's task view.

The two answer different questions. The app's tables hold what the callbacks said (stages,
tracks, results); the extension's task view (``music.task``, API.md section 10) holds where the
task stands for the provider: ``open``, ``complete``, ``failed`` or ``lost``, whether
reconciliation found it overdue, and whether each stage came by callback or by poll. A task the
host submitted and never heard of again is only in the second, so the page lists both: an
overdue or lost task with no callback at all is exactly the one a host must see.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

from flask import current_app

from flask_musiccallback.state import get_state
from flask_musiccallback.stores.base import StoreError
from flask_musiccallback.stores.tasks import TaskRecord, TaskState

from .models import Task, db, naive_utc

#: What the page calls each state of the task view; ``overdue`` is an open task that
#: reconciliation found silent for too long.
STATE_NAMES = {
    "open": "Open",
    "overdue": "Overdue",
    "complete": "Complete",
    "failed": "Failed",
    "lost": "Lost",
}


@dataclass(frozen=True)
class TaskRow:
    """One task on the page."""

    #: The app's record of it; for a task only the extension knows of, an unsaved one with no
    #: stage.
    task: Task
    #: The extension's task view, or ``None`` when it forgot the task (past its retention).
    record: TaskRecord | None

    @property
    def state(self) -> str | None:
        """``open``, ``overdue``, ``complete``, ``failed`` or ``lost``; ``None`` when unknown."""
        if self.record is None:
            return None
        if self.record.state is TaskState.OPEN and self.record.overdue_at is not None:
            return "overdue"
        return str(self.record.state)

    @property
    def families(self) -> list[str]:
        """The families its callbacks came from, or the one it was submitted as."""
        if self.task.families or self.record is None:
            return self.task.families
        return [self.record.family]

    def via(self, stage: str) -> str | None:
        """How ``stage`` came: ``"callback"`` or ``"poll"`` (``None``: the view does not say)."""
        return None if self.record is None else self.record.sources.get(stage)

    @property
    def in_progress(self) -> bool:
        """Whether the page should keep watching it: a lost task will not change by itself."""
        return self.state != "lost" and self.task.in_progress

    @property
    def version(self) -> str:
        """Changes whenever the task or its view does: what the page's script compares."""
        record = self.record
        seen = None
        if record is not None:
            sources = sorted(record.sources.items())
            seen = (record.state.value, record.overdue_at, record.polls, sources)
        return hashlib.sha256(f"{self.task.version}|{seen!r}".encode()).hexdigest()[:20]


def recent_rows(limit: int) -> list[TaskRow]:
    """The ``limit`` tasks first heard of last, from the app's tables and the task view.

    ``music.task(task_id)`` reads one task's view; the store behind it also lists the tasks it
    heard of last, which is how a task submitted and never called back gets on the page. A store
    that cannot be reached leaves the states out, not the page.
    """
    kept = list(
        db.session.scalars(db.select(Task).order_by(Task.created_at.desc()).limit(limit)).all()
    )
    store = get_state(current_app).store
    try:
        records = {record.task_id: record for record in store.tasks(limit=limit)}
        rows = [TaskRow(task, records.pop(task.id, None) or store.task(task.id)) for task in kept]
    except StoreError:  # a Redis store down, say: the page still shows what the app has
        current_app.logger.warning("The task view is unavailable", exc_info=True)
        return [TaskRow(task, None) for task in kept]
    if records:
        older = db.session.scalars(db.select(Task).where(Task.id.in_(records))).all()
        rows += [TaskRow(task, records.pop(task.id)) for task in older]
        rows += [TaskRow(_unheard(record), record) for record in records.values()]
    rows.sort(key=lambda row: row.task.created_at, reverse=True)
    return rows[:limit]


def _unheard(record: TaskRecord) -> Task:
    """A task the app has no record of: expected, and no callback of it handled yet."""
    first: datetime = record.expected_at or min(record.stages.values(), default=record.updated_at)
    return Task(id=record.task_id, created_at=naive_utc(first), updated_at=naive_utc(first))


def list_version(rows: list[TaskRow]) -> str:
    """Changes whenever any task on the page does: the tag the page's refreshes are compared
    with."""
    tags = "|".join(f"{row.task.id}:{row.version}" for row in rows)
    return hashlib.sha256(tags.encode()).hexdigest()[:20]
