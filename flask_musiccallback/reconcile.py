"""Reconciliation: noticing the tasks whose callbacks never came, and asking the provider.

The provider gives up on a callback about 21 minutes after its first failed attempt (PROVIDER.md
section 1): a receiver that was down longer, or a callback lost on the way, loses that result for
good unless the receiver asks. One run of :func:`reconcile`:

1. lists the open tasks silent for ``MUSICCALLBACK_RECONCILE_AFTER`` seconds whose next poll is
   due (:meth:`~.stores.base.Store.overdue`);
2. claims each for a lease (:meth:`~.stores.base.Store.claim_task`), so that two reconcilers
   running at once (two processes, cron and a worker) take each task once;
3. gives up on a task open ``MUSICCALLBACK_RECONCILE_GIVE_UP`` seconds after it was expected or
   first heard of: ``lost``, and ``task_lost`` once;
4. otherwise sends ``task_overdue`` the first time, then polls the task's family's record
   endpoint through :func:`~.poll.poll_task`, the callbacks' own deduplication: what the poll finds
   is dispatched once, and the late real callback is then a duplicate;
5. releases the task (:meth:`~.stores.base.Store.release_task`) with the poll counted and the
   time of its next poll, later and later (:func:`next_poll_at`).

It respects the provider: at most ``MUSICCALLBACK_RECONCILE_RATE`` requests a second per run, one
client for the run, and a run stops at the first sign of trouble on the provider's side (a rate
limit, maintenance, a server or network error, a refused API key), the task that met it pushed
back, never sooner than the provider's ``Retry-After``.

Without ``MUSICCALLBACK_API_KEY`` nothing is polled: tasks are still found overdue
(``task_overdue``) and given up (``task_lost``), and wait for their give-up in between.

A run never holds a request: it runs in the sweep's thread of web processes (``thread``
dispatch), a Celery beat task, or ``flask musiccallback reconcile`` from cron (docs/tasks.md).
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from . import telemetry
from .dispatch.job import POLL_SOURCE, SOURCE_HEADER, Outcome, record_stage
from .dispatch.receivers import send_isolated
from .pool import backoff
from .signals import task_lost, task_overdue
from .state import get_state
from .stores.base import utcnow
from .stores.owners import claim_owner
from .stores.tasks import TaskRecord, TaskState

if TYPE_CHECKING:
    from flask import Flask

    from .poll import PollResult
    from .provider import ProviderClient
    from .state import MusicCallbackState

logger = logging.getLogger("flask_musiccallback")

#: Seconds a reconciler holds a task it claimed: one poll (the client waits 20 s at most for an
#: answer) with room to spare. A reconciler that dies leaves the task to the next after it.
LEASE = 120.0

#: The shortest wait before a task is polled again, in seconds: the provider's recommended
#: polling interval, whatever ``MUSICCALLBACK_RECONCILE_AFTER`` says.
MIN_INTERVAL = 30.0

#: The longest wait between two polls of a task, in seconds: a task overdue for a day is asked
#: about every six hours, until it is given up.
MAX_INTERVAL = 6 * 3600.0

#: Provider answers that say nothing about the task but about the account or the address (the
#: API key refused, no such endpoint): asking about the next task would get the same.
ACCOUNT_ERRORS = frozenset({401, 403, 404})


class Reconciled(str, enum.Enum):
    """What a run did with one task."""

    #: Found overdue and not polled: no API key, or its family has no record endpoint.
    OVERDUE = "overdue"
    #: Asked about (:attr:`TaskReconciled.poll` says what was found, or ``error`` what failed).
    POLLED = "polled"
    #: Given up: ``lost`` now.
    LOST = "lost"
    #: Left alone: another reconciler holds it, it settled meanwhile, or the run stopped first.
    SKIPPED = "skipped"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class TaskReconciled:
    """One task of a run, and what the run did (or, in a dry run, would do) with it."""

    task_id: str
    family: str
    result: Reconciled
    #: Whether ``task_overdue`` was sent for it in this run (it was found overdue the first time).
    overdue: bool = False
    #: What the poll found, when it was polled and the provider answered.
    poll: PollResult | None = None
    #: Why it was not polled or skipped, or how its poll failed.
    error: str | None = None
    #: When it may be polled next.
    next_poll_at: datetime | None = None

    def describe(self, *, dry_run: bool = False) -> str:
        """One line for ``flask musiccallback reconcile``; in the conditional for a dry run."""
        words = [f"would be {self.result}" if dry_run else str(self.result)]
        if self.poll is not None:
            outcome = "" if self.poll.outcome is None else f", {self.poll.outcome.value}"
            stage = "" if self.poll.event is None else f" ({self.poll.event.stage}{outcome})"
            words.append(f"status {self.poll.status}{stage}")
        if self.error:
            words.append(self.error)
        if self.overdue:
            words.append("task_overdue " + ("would be sent" if dry_run else "sent"))
        if self.next_poll_at is not None:
            words.append(f"next poll {self.next_poll_at:%Y-%m-%d %H:%M:%S}")
        return f"{self.task_id} ({self.family}): " + "; ".join(words)


@dataclass(frozen=True, slots=True)
class Reconciliation:
    """What one run of :func:`reconcile` did."""

    tasks: list[TaskReconciled]
    dry_run: bool = False
    #: Why the run stopped before its last task, or did not run; ``None`` when it went through.
    stopped: str | None = None

    def count(self, result: Reconciled) -> int:
        return sum(task.result is result for task in self.tasks)


def reconcile(
    app: Flask, *, dry_run: bool = False, limit: int | None = None, now: datetime | None = None
) -> Reconciliation:
    """Find ``app``'s overdue tasks, poll them, give up on the oldest; what was done to each.

    ``dry_run`` claims nothing, polls nothing, sends nothing and changes nothing: it says what a
    run would do now. ``limit`` caps the tasks one run looks at (the longest silent first).
    ``now`` is the time the run takes for the present, the clock's by default: a test sees what a
    run an hour later does without waiting an hour.
    Returns at once, doing nothing, while another run of this process is under way for the app,
    or when ``MUSICCALLBACK_RECONCILE_AFTER`` is ``None``.

    Raises :class:`~.stores.base.StoreError` when the store cannot be reached; a task claimed
    then is left to its lease.
    """
    state = get_state(app)
    settings = state.settings
    after = settings.reconcile_after
    if after is None:
        return Reconciliation([], dry_run, "reconciliation is off (MUSICCALLBACK_RECONCILE_AFTER)")
    if not state.reconciling.acquire(blocking=False):
        return Reconciliation([], dry_run, "another run of this process is under way")
    clock = utcnow if now is None else lambda: now
    try:
        start = clock()
        due = state.store.overdue(start - timedelta(seconds=after), now=start, limit=limit)
        if dry_run:
            return Reconciliation([_foresee(state, task, start) for task in due], dry_run=True)
        with _client(state) as client:
            return _Run(app, state, client, clock).run(due)
    finally:
        state.reconciling.release()


def next_poll_at(
    polls: int, after: float, now: datetime, *, failed: bool = False, retry_after: float = 0.0
) -> datetime:
    """When a task polled ``polls`` times, the last just now, is polled again.

    The wait starts at ``after`` (never under :data:`MIN_INTERVAL`) and doubles with each poll up
    to :data:`MAX_INTERVAL`, so a task that stays silent costs the provider a few requests a day;
    a poll that ``failed`` waits one doubling more, and never less than the provider's
    ``retry_after``.
    """
    delay = backoff(polls + failed, max(after, MIN_INTERVAL), MAX_INTERVAL)
    return now + timedelta(seconds=max(delay, retry_after))


def give_up_at(task: TaskRecord, give_up: float) -> datetime:
    """When an open ``task`` is lost: ``give_up`` seconds after it was expected, or first heard
    of when it never was."""
    started = task.expected_at or min(task.stages.values(), default=task.updated_at)
    return started + timedelta(seconds=give_up)


#: Why a task that cannot be polled is only noted overdue.
NO_API_KEY = "no API key"


def _decide(lost_at: datetime, can_poll: bool, now: datetime) -> Reconciled:
    """What reconciliation does with a due, open task now: give it up when ``lost_at`` has
    come, poll it when it can, else note it overdue. One rule for runs and dry runs, so that a
    dry run never foresees what a run would not do."""
    if lost_at <= now:
        return Reconciled.LOST
    return Reconciled.POLLED if can_poll else Reconciled.OVERDUE


def _foresee(state: MusicCallbackState, task: TaskRecord, now: datetime) -> TaskReconciled:
    """What a run would do with ``task`` now, for a dry run."""
    lost_at = give_up_at(task, state.settings.reconcile_give_up)
    result = _decide(lost_at, state.settings.api_key is not None, now)
    error = NO_API_KEY if result is Reconciled.OVERDUE else None
    return TaskReconciled(task.task_id, task.family, result, task.overdue_at is None, error=error)


@contextmanager
def _client(state: MusicCallbackState) -> Iterator[ProviderClient | None]:
    """One client for the run's polls, or ``None`` without an API key (nothing is polled)."""
    if state.settings.api_key is None:
        yield None
        return
    from .provider import ProviderClient  # the HTTP client is loaded only by apps that poll

    with ProviderClient.from_settings(state.settings) as client:
        yield client


class _Run:
    """One run's claims, polls and signals, at the provider's pace."""

    def __init__(
        self,
        app: Flask,
        state: MusicCallbackState,
        client: ProviderClient | None,
        clock: Callable[[], datetime],
    ) -> None:
        self.app = app
        self.state = state
        self.client = client
        self.clock = clock
        self.owner = claim_owner()
        self._gap = 1.0 / state.settings.reconcile_rate
        self._last_request: float | None = None

    def run(self, due: Sequence[TaskRecord]) -> Reconciliation:
        done: list[TaskReconciled] = []
        stopped: str | None = None
        for task in due:
            if stopped is not None:
                done.append(_skipped(task, "the run stopped first"))
                continue
            outcome, stop = self.one(task)
            done.append(outcome)
            if stop is not None:
                stopped = stop
                logger.warning("Reconciliation stopped early: %s", stop)
        if done:
            logger.info("Reconciled %d tasks: %s", len(done), ", ".join(map(_brief, done)))
        return Reconciliation(done, stopped=stopped)

    def one(self, task: TaskRecord) -> tuple[TaskReconciled, str | None]:
        """Reconcile one task; with a reason to stop the run when the provider is in trouble."""
        store, settings = self.state.store, self.state.settings
        now = self.clock()
        claimed = store.claim_task(task.task_id, self.owner, lease=LEASE, now=now)
        if claimed is None:
            return _skipped(task, "another reconciler has it, or it settled"), None
        if not _due(claimed, settings.reconcile_after or 0.0, now):
            # Listed before another run polled it and let it go: the claim is free again, but
            # the task is not due. Given back as it was.
            store.release_task(task.task_id, self.owner, next_poll_at=claimed.next_poll_at)
            return _skipped(task, "another reconciler has just done it"), None
        overdue = claimed.overdue_at is None
        if overdue:
            # Before the poll dispatches what it finds, so a host hears "late" before "done".
            overdue_task = dataclasses.replace(claimed, overdue_at=now)
            send_isolated(task_overdue, self.app, task=overdue_task)
        lost_at = give_up_at(claimed, settings.reconcile_give_up)
        result = _decide(lost_at, self.client is not None, now)
        if result is Reconciled.LOST:
            return self._give_up(claimed, overdue, now), None
        if result is Reconciled.OVERDUE:
            return self._release(claimed, result, overdue, lost_at, NO_API_KEY), None
        return self._poll(claimed, overdue, lost_at)

    def _give_up(self, task: TaskRecord, overdue: bool, now: datetime) -> TaskReconciled:
        change = self.state.store.release_task(task.task_id, self.owner, overdue=True, lost=True)
        if not change.lost:
            return _skipped(task, "it settled meanwhile", overdue)
        lost = dataclasses.replace(
            task, state=TaskState.LOST, updated_at=now, overdue_at=task.overdue_at or now
        )
        send_isolated(task_lost, self.app, task=lost)
        telemetry.task_lost(task.family)
        return TaskReconciled(task.task_id, task.family, Reconciled.LOST, overdue)

    def _poll(
        self, task: TaskRecord, overdue: bool, lost_at: datetime
    ) -> tuple[TaskReconciled, str | None]:
        from .poll import poll_task
        from .provider import PollError

        after = self.state.settings.reconcile_after or 0.0
        self._pace()
        try:
            result = poll_task(self.app, task.task_id, family=task.family, client=self.client)
        except LookupError as exc:  # its family is gone, or has no record endpoint
            return self._release(task, Reconciled.OVERDUE, overdue, lost_at, str(exc)), None
        except PollError as exc:
            retry = next_poll_at(
                task.polls + 1, after, self.clock(), failed=True, retry_after=exc.retry_after or 0.0
            )
            done = self._release(task, Reconciled.POLLED, overdue, retry, str(exc), polled=True)
            stop = exc.retryable or exc.code in ACCOUNT_ERRORS
            return done, str(exc) if stop else None
        if result.outcome is Outcome.DUPLICATE and result.event is not None:
            # Dispatched before, yet the task is still open: the process that claimed the stage
            # died before its stage was recorded. Record it now, or the task would end lost.
            kind = self.state.extension.families.named(task.family)
            delivery = kind.delivery(result.event, {}, {SOURCE_HEADER: POLL_SOURCE})
            record_stage(self.state, kind, result.event, delivery)
        again = next_poll_at(task.polls + 1, after, self.clock())
        done = self._release(task, Reconciled.POLLED, overdue, again, None, polled=True)
        return dataclasses.replace(done, poll=result), None

    def _release(
        self,
        task: TaskRecord,
        result: Reconciled,
        overdue: bool,
        next_poll: datetime,
        error: str | None,
        *,
        polled: bool = False,
    ) -> TaskReconciled:
        """Give the task back, due again at ``next_poll`` or at its give-up, whichever is first."""
        lost_at = give_up_at(task, self.state.settings.reconcile_give_up)
        next_poll = min(next_poll, lost_at)
        self.state.store.release_task(
            task.task_id, self.owner, polled=polled, next_poll_at=next_poll, overdue=True
        )
        return TaskReconciled(task.task_id, task.family, result, overdue, None, error, next_poll)

    def _pace(self) -> None:
        """Wait until the next provider request keeps the run within its rate."""
        if self._last_request is not None:
            wait = self._last_request + self._gap - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        self._last_request = time.monotonic()


def _due(task: TaskRecord, after: float, now: datetime) -> bool:
    """Whether ``task`` is overdue and its next poll due at ``now``, as ``Store.overdue`` lists
    them: asked again of the claimed record, which another run may have changed since."""
    silent = task.updated_at <= now - timedelta(seconds=after)
    return silent and (task.next_poll_at is None or task.next_poll_at <= now)


def _skipped(task: TaskRecord, why: str, overdue: bool = False) -> TaskReconciled:
    return TaskReconciled(task.task_id, task.family, Reconciled.SKIPPED, overdue, error=why)


def _brief(task: TaskReconciled) -> str:
    return f"{task.task_id} {task.result}"
