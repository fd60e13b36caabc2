"""Settlements the store could not take when they were due, written as soon as it answers again.

A delivery's receivers ran, and then the store went away before it heard how that ended. Answering
503 would have the provider deliver again and the receivers run a second time; waiting would hold
the provider past its timeout. So the outcome is acknowledged, and the write (a completion, a
failure, a deferral, or the release of a claim the request gave up on) is kept here and retried
in the background until the store takes it. Every such write names the claim's owner, so one that
lands late changes nothing if the delivery was taken over meanwhile (its lease ran out, a replay).

Only a process that dies before the store is back loses them: its deliveries stay as their claim
left them, and the lease, the sweep or ``replay --pending`` runs them again, a second time at worst.

The writes wait in order in one queue and are retried by one job of a :class:`~.pool.Pool` of a
single thread: while the store is down, the whole queue waits one back-off, so a recovering store
is probed once per back-off rather than once per write.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from .pool import Pool, backoff
from .stores.base import Delivery, StoreUnavailable

logger = logging.getLogger("flask_musiccallback")

#: How many writes may wait; past it the oldest is dropped (and logged): its delivery then waits
#: for its lease, as after a crash.
MAX_WAITING = 100_000

#: Seconds before the first retry of a write, doubled at each failure up to :data:`MAX_DELAY`.
FIRST_DELAY = 0.5
MAX_DELAY = 30.0

Write = Callable[[], None]


def _describe(what: str, delivery: Delivery) -> str:
    return f"{what} of task {delivery.task_id} stage {delivery.stage}"


@dataclass(frozen=True, slots=True, eq=False)
class _Waiting:
    """A write waiting for the store: what it is, for the log, and the delivery it settles
    (``(task_id, stage)``), if it settles one, for :meth:`WriteBack.write_now`."""

    write: Write
    what: str
    key: tuple[str, str] | None


class WriteBack:
    """One app's store writes waiting for the store, written in the order they came."""

    def __init__(self) -> None:
        # One job drains the whole queue: what a stopped pool leaves is that job, every write in it.
        self._pool = Pool(1, 1, name="musiccallback-writeback", unit="rounds of the store writes")
        self._lock = threading.Lock()
        self._writes: deque[_Waiting] = deque()
        self._scheduled = False
        self._failures = 0
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self._writes)

    def write(self, write: Write, what: str, delivery: Delivery) -> None:
        """Run ``write`` now; when the store is unreachable, keep it and retry it later.

        ``what`` says which write of ``delivery`` it is, for the log.
        """
        try:
            write()
        except StoreUnavailable as exc:
            logger.warning(
                "Cannot record %s now; retrying in the background: %s",
                _describe(what, delivery),
                exc,
            )
            self.add(write, what, delivery)

    def add(self, write: Write, what: str, delivery: Delivery) -> None:
        """Keep ``write`` of ``delivery`` for the background, behind those already waiting."""
        self._keep(_Waiting(write, _describe(what, delivery), (delivery.task_id, delivery.stage)))

    def add_for_task(self, write: Write, what: str, task_id: str) -> None:
        """Keep ``write``, ``what`` of the task ``task_id`` rather than of one of its deliveries
        (registering a submitted task), for the background."""
        self._keep(_Waiting(write, f"{what} of task {task_id}", None))

    def _keep(self, entry: _Waiting) -> None:
        with self._lock:
            if self._pid != os.getpid():  # forked: the parent's drain job is not in this process
                self._pid = os.getpid()
                self._scheduled = False
            if len(self._writes) >= MAX_WAITING:
                dropped = self._writes.popleft()
                logger.error("Too many writes wait for the store; %s is dropped.", dropped.what)
            self._writes.append(entry)
            if self._scheduled:
                return
            self._scheduled = True
        if not self._pool.submit_later(0.0, self._drain):
            logger.error("The write-back has stopped; %s is left unwritten.", entry.what)

    def write_now(self, delivery: Delivery) -> bool:
        """Make, in this thread, the writes waiting for ``delivery``'s task and stage; whether
        there were any and the store took them all.

        For a redelivery that finds the delivery held by a claim this process gave up on: the
        store has just answered, so the release need not wait for the background's back-off,
        and the redelivery can claim the delivery at once.
        """
        if not self._writes:
            return False
        key = (delivery.task_id, delivery.stage)
        with self._lock:
            mine = [entry for entry in self._writes if entry.key == key]
        for entry in mine:
            try:
                entry.write()
            except StoreUnavailable:
                return False
            self._forget(entry)
        return bool(mine)

    def _forget(self, entry: _Waiting) -> None:
        with self._lock, contextlib.suppress(ValueError):  # written by write_now meanwhile
            self._writes.remove(entry)

    def _drain(self) -> None:
        while True:
            with self._lock:
                if not self._writes:
                    self._scheduled = False
                    return
                entry = self._writes[0]
            try:
                entry.write()
            except StoreUnavailable:
                self._failures += 1
                delay = backoff(self._failures, FIRST_DELAY, MAX_DELAY)
                if not self._pool.submit_later(delay, self._drain):
                    logger.error("%d writes for the store are left unwritten.", len(self))
                return
            except Exception:
                logger.exception("Writing %s failed for good; it is dropped.", entry.what)
            else:
                if self._failures:
                    logger.warning("The store took %s, written late.", entry.what)
            self._failures = 0
            self._forget(entry)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until every kept write is written; ``False`` when ``timeout`` passed first."""
        return self._pool.wait_idle(timeout)

    def close(self, timeout: float | None = None) -> bool:
        """Try the kept writes for at most ``timeout`` seconds more, then stop."""
        return self._pool.shutdown(timeout)
