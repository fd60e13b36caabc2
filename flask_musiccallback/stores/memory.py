"""The default store: a bounded, thread-safe dictionary in this process.

It deduplicates across the threads of one process and nothing else: two gunicorn workers, two
machines or a restart each start with an empty memory. Use it for development, tests and single
process deployments; use a persistent store (SQLAlchemy, Redis) anywhere else.

Memory stays bounded by two limits: entries expire ``ttl`` seconds after their last change, and the
oldest entries are dropped once there are more than ``max_entries``. Entries sit in an
:class:`~collections.OrderedDict` in the order of their last change, which with one TTL is also the
order in which they expire, so both limits are enforced by popping from the front: O(1) per claim.

Tasks (:meth:`MemoryStore.expect`) are remembered the same way, in a dictionary of their own with
the same two limits: a burst of deliveries never pushes out the tasks that route them.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Protocol, TypeVar
from urllib.parse import parse_qs, urlsplit

from ..redact import redact_url
from .base import ClaimResult, Delivery, Store, StoreError, StoreHealth, utcnow
from .tasks import TaskChange, TaskRecord, TaskState

if TYPE_CHECKING:
    from flask import Flask

#: How many deliveries the memory store remembers unless ``memory://?max_entries=N`` says otherwise.
DEFAULT_MAX_ENTRIES = 100_000

_Key = tuple[str, str]
_K = TypeVar("_K")
_V = TypeVar("_V", bound="_Expiring")


class MemoryStore(Store):
    """Per process, per app, bounded by ``ttl`` and ``max_entries``.

    With the ``ack`` policy a receiver failure is reported (``receiver_failed``, the log) but not
    kept: there is nothing here to replay after a restart. Tasks are forgotten ``ttl`` seconds
    after they were last expected, and beyond ``max_entries`` of them the oldest go first.
    """

    in_process = True

    def __init__(self, *, ttl: int, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        super().__init__(ttl=ttl)
        if max_entries < 1:
            raise StoreError("memory:// needs max_entries of at least 1.")
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._entries: OrderedDict[_Key, _Entry] = OrderedDict()
        self._tasks: OrderedDict[str, _Task] = OrderedDict()
        self._signatures: OrderedDict[str, _Signature] = OrderedDict()
        self._serves_an_app = False

    @classmethod
    def from_url(cls, url: str, *, ttl: int) -> MemoryStore:
        query = parse_qs(urlsplit(url).query)
        try:
            max_entries = int(query.get("max_entries", [DEFAULT_MAX_ENTRIES])[-1])
        except ValueError as exc:
            raise StoreError(
                f"memory:// max_entries must be a whole number: {redact_url(url)!r}"
            ) from exc
        return cls(ttl=ttl, max_entries=max_entries)

    def init_app(self, app: Flask) -> MemoryStore:
        """This store for the first app, a new one alike for any other.

        ``memory://`` is per app: shared, one app's delivery would make another's a duplicate.
        """
        if self._serves_an_app:
            return type(self)(ttl=self.ttl, max_entries=self.max_entries).init_app(app)
        self._serves_an_app = True
        return self

    def check(self) -> StoreHealth:
        """Always ready: a dictionary of this process, with no server to reach or table to
        create."""
        return StoreHealth(
            round_trip=None,
            found=f"this process's memory, {len(self)} of at most {self.max_entries} deliveries",
        )

    def __len__(self) -> int:
        return len(self._entries)

    def claim(self, delivery: Delivery, *, queued: bool = False) -> ClaimResult:
        key = (delivery.task_id, delivery.stage)
        now = time.monotonic()
        entries = self._entries
        with self._lock:
            _evict(entries, now)
            entry = entries.get(key)
            if entry is not None:
                if entry.done:
                    return ClaimResult.DUPLICATE
                return (
                    ClaimResult.CLAIMED
                    if entry.owner == delivery.owner
                    else ClaimResult.IN_PROGRESS
                )
            if delivery.superseded_by is not None:
                later = entries.get((delivery.task_id, delivery.superseded_by))
                if later is not None and later.done:
                    return ClaimResult.STALE
            entries[key] = _Entry(False, now + self.ttl, delivery.owner)
            self._bound(entries)
            return ClaimResult.CLAIMED

    def start(self, delivery: Delivery, owner: str) -> bool:
        with self._lock:
            entry = self._held(delivery, delivery.owner, owner)
            if entry is None:
                return False
            entry.owner = owner
            return True

    def defer(self, delivery: Delivery, error: str, delay: float) -> None:
        """Nothing to record: the claim stays held by its owner through the back-off."""

    def complete(self, delivery: Delivery) -> None:
        self._finish(delivery)

    def fail(self, delivery: Delivery, error: str) -> None:
        self._finish(delivery)

    def release(self, delivery: Delivery, error: str) -> None:
        with self._lock:
            if self._held(delivery, delivery.owner) is not None:
                del self._entries[(delivery.task_id, delivery.stage)]

    def _finish(self, delivery: Delivery) -> None:
        key = (delivery.task_id, delivery.stage)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry.owner != delivery.owner:
                return  # settled already, or taken over: not this claim's to settle
            self._entries[key] = _Entry(True, time.monotonic() + self.ttl, None)
            self._entries.move_to_end(key)

    def expect(self, task_id: str, family: str) -> None:
        now = time.monotonic()
        with self._lock:
            tasks = self._tasks
            _evict(tasks, now)
            moment = utcnow()
            task = tasks.get(task_id)
            if task is None:
                tasks[task_id] = _Task(family, now + self.ttl, moment, moment)
                self._bound(tasks)
                return
            task.family, task.expires_at, task.updated_at = family, now + self.ttl, moment
            task.expected_at = task.expected_at or moment
            tasks.move_to_end(task_id)

    def task(self, task_id: str) -> TaskRecord | None:
        with self._lock:
            task = self._tasks.get(task_id)
            if task is None or task.expires_at <= time.monotonic():
                return None
            return self._record(task_id, task)

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
        now = time.monotonic()
        with self._lock:
            tasks = self._tasks
            _evict(tasks, now)
            task = tasks.get(task_id)
            if task is None:
                task = tasks[task_id] = _Task(family, now + self.ttl, None, at)
                self._bound(tasks)
            if stage not in task.stages:
                task.stages[stage] = at
                task.sources[stage] = via
            if final is not None:
                task.state = final
            task.expires_at, task.updated_at = now + self.ttl, utcnow()
            tasks.move_to_end(task_id)

    def tasks(
        self, *, state: TaskState | str | None = None, limit: int | None = 50
    ) -> list[TaskRecord]:
        with self._lock:
            records = [
                self._record(task_id, task)
                for task_id, task in self._tasks.items()
                if task.expires_at > time.monotonic() and (state is None or task.state == state)
            ]
        records.sort(key=lambda record: record.updated_at, reverse=True)
        return records if limit is None else records[:limit]

    def overdue(
        self, heard_before: datetime, *, now: datetime, limit: int | None = None
    ) -> list[TaskRecord]:
        with self._lock:
            due = [
                self._record(task_id, task)
                for task_id, task in self._tasks.items()
                if task.state is TaskState.OPEN
                and task.updated_at <= heard_before
                and (task.next_poll_at is None or task.next_poll_at <= now)
                and (task.lease_expires_at is None or task.lease_expires_at <= now)
            ]
        due.sort(key=lambda record: record.updated_at)
        return due if limit is None else due[:limit]

    def claim_task(
        self, task_id: str, owner: str, *, lease: float, now: datetime
    ) -> TaskRecord | None:
        with self._lock:
            task = self._tasks.get(task_id)
            if task is None or task.state is not TaskState.OPEN:
                return None
            if task.owner not in (None, owner) and (
                task.lease_expires_at is not None and task.lease_expires_at > now
            ):
                return None
            task.owner, task.lease_expires_at = owner, now + timedelta(seconds=lease)
            return self._record(task_id, task)

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
        with self._lock:
            task = self._tasks.get(task_id)
            if task is None or task.owner != owner:
                return TaskChange()
            task.owner = task.lease_expires_at = None
            task.polls += polled
            task.next_poll_at = next_poll_at
            became_overdue = overdue and task.overdue_at is None
            if became_overdue:
                task.overdue_at = utcnow()
            became_lost = lost and task.state is TaskState.OPEN
            if became_lost:
                task.state = TaskState.LOST
            if polled or became_lost:
                task.updated_at = utcnow()
            return TaskChange(overdue=became_overdue, lost=became_lost)

    def remember_signature(self, signature: str, digest: str, *, ttl: float) -> bool:
        now = time.monotonic()
        with self._lock:
            signatures = self._signatures
            _evict(signatures, now)
            seen = signatures.get(signature)
            # Each ttl of its own: one still in the dictionary may be expired, behind a longer one.
            if seen is not None and seen.expires_at > now:
                return seen.digest == digest
            signatures.pop(signature, None)
            signatures[signature] = _Signature(digest, now + ttl)
            self._bound(signatures)
            return True

    @staticmethod
    def _record(task_id: str, task: _Task) -> TaskRecord:
        return TaskRecord(
            task_id=task_id,
            family=task.family,
            state=task.state,
            stages=dict(task.stages),
            expected_at=task.expected_at,
            updated_at=task.updated_at,
            polls=task.polls,
            sources=dict(task.sources),
            overdue_at=task.overdue_at,
            next_poll_at=task.next_poll_at,
        )

    def _bound(self, entries: OrderedDict[_K, _V]) -> None:
        """Drop the oldest entry past ``max_entries``; called with the lock, after one insert."""
        if len(entries) > self.max_entries:
            entries.popitem(last=False)

    def _held(self, delivery: Delivery, *owners: str) -> _Entry | None:
        """The delivery's entry while one of ``owners`` holds its claim; called with the lock."""
        entry = self._entries.get((delivery.task_id, delivery.stage))
        if entry is None or entry.done or entry.owner not in owners:
            return None
        return entry


class _Expiring(Protocol):
    expires_at: float


def _evict(entries: OrderedDict[_K, _V], now: float) -> None:
    """Drop expired entries; they sit at the front because every change moves to the end."""
    while entries:
        key, entry = next(iter(entries.items()))
        if entry.expires_at > now:
            return
        del entries[key]


@dataclass(slots=True)
class _Entry:
    """What the store remembers of a delivery."""

    #: Settled (completed or failed): later deliveries are duplicates.
    done: bool
    #: When it is forgotten, on the monotonic clock.
    expires_at: float
    #: Who holds the claim while it is not settled.
    owner: str | None


@dataclass(slots=True)
class _Task:
    """What the store remembers of a task (:class:`~.tasks.TaskRecord`)."""

    family: str
    #: When it is forgotten, on the monotonic clock.
    expires_at: float
    expected_at: datetime | None
    updated_at: datetime
    state: TaskState = TaskState.OPEN
    stages: dict[str, datetime] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    polls: int = 0
    overdue_at: datetime | None = None
    next_poll_at: datetime | None = None
    #: Who reconciles it now, and until when (:meth:`MemoryStore.claim_task`).
    owner: str | None = None
    lease_expires_at: datetime | None = None


@dataclass(slots=True)
class _Signature:
    """A signature seen, with the digest of the body it came with (``remember_signature``)."""

    digest: str
    #: When it is forgotten, on the monotonic clock.
    expires_at: float
