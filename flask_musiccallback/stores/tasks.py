"""Tasks as a store records them: which family a task was submitted as, and how far it got.

Apart from the deliveries because a task outlives them and is keyed differently: by its task id
alone, across every family and stage. ``music.expect`` records one when the host submits it, so
that a callback whose body does not say its family is routed to the one it was submitted as; the
task view and reconciliation (API.md section 10) read the same record, which is why it already
holds the stages seen, the polls made and the state.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

#: The longest family name a store keeps with a task (the SQL store's column holds 64).
MAX_FAMILY_LENGTH = 64


class TaskState(str, enum.Enum):
    """Where a task is: still awaited, or settled one way or the other."""

    #: Expected, or some stage heard of, and no final one yet.
    OPEN = "open"
    #: Its final stage arrived.
    COMPLETE = "complete"
    #: The provider reported it failed.
    FAILED = "failed"
    #: Still open long after anything was heard of it: reconciliation gave up on it.
    LOST = "lost"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class TaskRecord:
    """One task as a store keeps it (:meth:`~.base.Store.task`)."""

    task_id: str
    #: The callback family it was submitted as (``music``, ``lyrics``, ...).
    family: str
    state: TaskState
    #: Each stage heard of, to the time it was first received (UTC).
    stages: Mapping[str, datetime]
    #: When the host said it submitted the task (``expect``), or ``None`` if it never did.
    expected_at: datetime | None
    updated_at: datetime
    #: How many times reconciliation asked the provider about it.
    polls: int
    #: How each stage came: ``"callback"`` or ``"poll"`` (the keys of :attr:`stages`).
    sources: Mapping[str, str] = field(default_factory=dict)
    #: When reconciliation first found it overdue (``task_overdue`` was sent), or ``None``.
    overdue_at: datetime | None = None
    #: When reconciliation may poll it next, or ``None``: as soon as it is overdue.
    next_poll_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class TaskChange:
    """What :meth:`~.base.Store.release_task` changed, so that each signal fires once."""

    #: The task was found overdue now, for the first time: send ``task_overdue``.
    overdue: bool = False
    #: The task became ``lost`` now: send ``task_lost``.
    lost: bool = False


#: How a stage of a task came (:attr:`TaskRecord.sources`).
VIA_CALLBACK = "callback"
VIA_POLL = "poll"
