"""The sweep: deliveries accepted and never finished are dispatched again without anybody asking.

A process that dies after answering 200 (a crash, a deploy, SIGKILL, the OOM killer) leaves its
deliveries ``pending`` in a persistent store. ``flask musiccallback replay --pending`` recovers
them by hand; the sweep does the same on its own, for those unchanged for
``MUSICCALLBACK_PENDING_SWEEP_AGE`` seconds whose claim is free: held by a process of this machine
that no longer runs, or past its lease. A claim held by a live process is never taken, and a job
whose delivery was swept meanwhile finds it taken and runs nothing (:meth:`Store.start`), so a
delivery reaches its receivers once.

Where it runs:

- ``sync`` and ``thread`` dispatch: a daemon thread of each process serving the app, started by the
  first request the process handles (never by ``init_app``, which must not need the store, and
  after a pre-forking server's fork), sweeping at once and then every :func:`interval` seconds;
  not in testing mode. Under ``thread`` the recovered deliveries run in the pool, with its
  retries; under ``sync`` in the sweeper thread.
- ``celery`` dispatch: the task ``flask_musiccallback.sweep_pending``, which every worker sends
  itself once when it starts and which a Celery beat schedule can run periodically; recovered
  deliveries are published to the workers again (:mod:`.celery`).
- anywhere: ``flask musiccallback replay --pending --older-than SECONDS`` from cron.

Under ``thread`` dispatch the same thread also reconciles (:mod:`..reconcile`): every round, at
most :data:`RECONCILE_BATCH` overdue tasks are polled, with any store, the memory store included
(whose tasks only this process sees). Under ``celery``, a beat task does it (:mod:`.celery`).
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from datetime import timedelta
from typing import TYPE_CHECKING

from ..config import Settings
from ..outage import Outage
from ..reconcile import reconcile
from ..state import get_state
from ..stores.base import Store, StoreError
from .replay import Replayed, ReplayResult, replay

if TYPE_CHECKING:
    from flask import Flask

logger = logging.getLogger("flask_musiccallback")

#: The most deliveries one sweep takes; the next sweep takes the rest.
SWEEP_BATCH = 100

#: The longest time between two sweeps of a process.
MAX_INTERVAL = 60.0


#: The most overdue tasks one round of the sweeper reconciles: at two provider requests a second,
#: ten seconds of its thread; the next round takes the rest.
RECONCILE_BATCH = 20

#: The shortest time between two rounds of the sweeper, whatever the ages configured.
MIN_INTERVAL = 1.0


def interval(age: float) -> float:
    """Seconds between two sweeps: a pending delivery is swept between ``age`` and about twice
    that (at most a minute more) after it last changed."""
    return min(age, MAX_INTERVAL)


def sweeper_interval(settings: Settings, store: Store) -> float | None:
    """Seconds between two rounds of the sweeper of an app's web processes, or ``None`` when it
    has nothing to do there: no pending deliveries to sweep (off, the memory store, ``celery``
    dispatch, where workers sweep) and no tasks to reconcile (off, or not ``thread`` dispatch)."""
    rounds = []
    age = settings.pending_sweep_age
    if age is not None and store.persistent and settings.dispatch != "celery":
        rounds.append(interval(age))
    if reconciles(settings):
        rounds.append(interval(settings.reconcile_after or 0.0))
    return max(MIN_INTERVAL, min(rounds)) if rounds else None


def reconciles(settings: Settings) -> bool:
    """Whether the sweeper reconciles: under ``thread`` dispatch, unless reconciliation is off."""
    return settings.dispatch == "thread" and settings.reconcile_after is not None


def sweep(app: Flask) -> list[ReplayResult]:
    """Dispatch again the pending deliveries of ``app`` the sweep may take; what was taken.

    Does nothing when ``MUSICCALLBACK_PENDING_SWEEP_AGE`` is off or the store keeps nothing.
    Raises :class:`~.stores.base.StoreError` when the store cannot be reached.
    """
    state = get_state(app)
    age = state.settings.pending_sweep_age
    if age is None or not state.store.persistent:
        return []
    results = replay(app, pending=True, older_than=timedelta(seconds=age), limit=SWEEP_BATCH)
    taken = [result for result in results if result.result is not Replayed.SKIPPED]
    if taken:
        logger.warning(
            "Dispatched %d pending deliveries again, unfinished for over %g s: %s",
            len(taken),
            age,
            ", ".join(f"{result.delivery_id} ({result.result.value})" for result in taken),
        )
    return taken


class Sweeper:
    """Sweeps one app, and reconciles its tasks under ``thread`` dispatch, in a daemon thread of
    each process that serves it.

    ``start`` is the app's ``before_request`` hook: after the first request of a process it costs
    one comparison. An app in testing mode (``TESTING``) starts no thread, as Flask-Mail sends no
    mail there: a thread polling the store behind a test's back makes tests flaky; tests call
    :func:`sweep` when they mean to. The thread holds the app weakly, so an app that is dropped
    stops its sweeper; :meth:`stop` stops it at once.
    """

    def __init__(self, app: Flask, every: float) -> None:
        self._app = weakref.ref(app)
        self.interval = every
        self._pid: int | None = None
        self._lock = threading.Lock()
        self._stopped = threading.Event()

    def start(self) -> None:
        """Start this process's sweeper thread unless it runs already."""
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()
            app = self._app()
            if app is None or app.testing:
                return
            self._stopped = threading.Event()
            thread = threading.Thread(
                target=self._run, args=(self._stopped,), name="musiccallback-sweeper", daemon=True
            )
            thread.start()

    def stop(self) -> None:
        """Stop the sweeper thread of this process after its current sweep."""
        self._stopped.set()

    def _run(self, stopped: threading.Event) -> None:
        outage = Outage()
        while not stopped.is_set():
            app = self._app()
            if app is None:
                return
            try:
                sweep(app)
                if reconciles(get_state(app).settings):
                    reconcile(app, limit=RECONCILE_BATCH)
            except StoreError as exc:
                if outage.failed():
                    logger.warning("The sweep cannot reach the callback store: %s", exc)
            except Exception:
                logger.exception("The sweep of pending deliveries failed")
            else:
                outage.recovered()
            del app
            stopped.wait(self.interval)
