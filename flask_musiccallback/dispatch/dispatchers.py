"""Where a job runs: in the request (``sync``), in a pool of this process (``thread``); the
Celery dispatcher, which needs Celery installed, is in :mod:`.celery`.

A dispatcher runs or queues jobs and nothing else: the claim is taken and given back by
:func:`~.job.deliver` and the replay, the delivery's states are moved by the job (:mod:`.job`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Protocol

from ..config import ConfigurationError
from ..outage import Outage
from ..pool import Pool
from .job import Job, NotQueued, process_acknowledged

if TYPE_CHECKING:
    from ..config import Settings
    from ..stores.base import Store

logger = logging.getLogger("flask_musiccallback")


class Dispatcher(Protocol):
    """Runs the receivers of a claimed delivery: in the request, in a pool, or in a worker."""

    #: Whether jobs are queued to run after the answer (deliveries claimed as ``pending`` and
    #: handed to :meth:`submit`), rather than run by the caller (:func:`~.job.process`).
    queued: bool

    def submit(self, job: Job) -> None:
        """Queue ``job`` to run after the answer; :exc:`~.job.NotQueued` when it cannot be now."""
        ...

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until the deliveries dispatched in this process are settled (tests, the CLI).

        ``False`` when ``timeout`` seconds passed first. Work handed to another process (Celery)
        is not waited for.
        """
        ...

    def close(self, timeout: float | None = None) -> bool:
        """Take no more deliveries and finish those accepted, within ``timeout`` seconds."""
        ...


def dispatcher_for(settings: Settings, store: Store) -> Dispatcher:
    """The dispatcher ``MUSICCALLBACK_DISPATCH`` names."""
    if settings.dispatch == "thread":
        return ThreadDispatcher(settings)
    if settings.dispatch == "celery":
        try:
            from .celery import CeleryDispatcher
        except ImportError as exc:
            raise ConfigurationError(
                "MUSICCALLBACK_DISPATCH='celery' needs Celery: "
                "pip install 'flask-musiccallback[celery]'."
            ) from exc
        if not store.persistent:
            logger.warning(
                "Celery dispatch with a %s: web and worker processes do not share it, so a "
                "delivery's outcome is not recorded where the endpoint deduplicates, and failed "
                "deliveries are not kept. Use a Redis or SQL store.",
                type(store).__name__,
            )
        return CeleryDispatcher(settings)
    return SyncDispatcher()


class SyncDispatcher:
    """``MUSICCALLBACK_DISPATCH = "sync"``: receivers run inside the request, before the answer.

    The simplest and fastest mode when receivers are quick; the answer then tells the provider
    whether they succeeded, so under ``retry`` the provider's own retries re-run a failed delivery.
    """

    queued = False

    def submit(self, job: Job) -> None:
        raise NotQueued("sync dispatch runs jobs in the request, it queues none")

    def wait_idle(self, timeout: float | None = None) -> bool:
        return True

    def close(self, timeout: float | None = None) -> bool:
        return True


class ThreadDispatcher:
    """``MUSICCALLBACK_DISPATCH = "thread"``: answer at once, run receivers in a bounded pool.

    For slow receivers in a single-machine deployment. Each delivery becomes a job of a
    :class:`~.pool.Pool` of ``MUSICCALLBACK_THREAD_POOL_SIZE`` threads, run inside an app context
    (there is no request context: the request was answered). When
    ``MUSICCALLBACK_THREAD_QUEUE_SIZE`` deliveries already wait, the job is refused, so that the
    endpoint answers 503 and the provider retries later instead of the process growing without
    bound. A failed attempt is queued again after its back-off, holding no thread meanwhile.
    A replayed delivery (:attr:`~.job.Job.replayed`) was accepted once already: like a retry, it
    does not count against the queue size, and is refused only once the pool has stopped.
    """

    queued = True

    def __init__(self, settings: Settings, pool: Pool | None = None) -> None:
        self.pool = pool or Pool(settings.thread_pool_size, settings.thread_queue_size)
        self._full = Outage()

    def submit(self, job: Job) -> None:
        def attempt() -> None:
            self._attempt(job)

        if job.replayed:
            if not self.pool.submit_later(0.0, attempt):
                raise NotQueued("the dispatch pool has stopped")
            return
        if self.pool.submit(attempt):
            self._full.recovered()
            return
        if self._full.failed():
            logger.warning(
                "The dispatch queue is full (%d deliveries waiting); answering 503 until it "
                "has room. Raise MUSICCALLBACK_THREAD_POOL_SIZE or use celery dispatch.",
                self.pool.waiting,
            )
        raise NotQueued("the dispatch queue was full")

    def _attempt(self, job: Job) -> None:
        with job.app.app_context():
            next_attempt = process_acknowledged(job)
        if next_attempt is None:
            return
        retry = next_attempt.job
        if not self.pool.submit_later(next_attempt.delay, lambda: self._attempt(retry)):
            logger.warning(
                "The dispatch pool has stopped; task %s stage %s is not retried here (a "
                "persistent store keeps it pending, for replay --pending or the sweep).",
                job.delivery.task_id,
                job.delivery.stage,
            )

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until every accepted delivery is settled, retries included."""
        return self.pool.wait_idle(timeout)

    def close(self, timeout: float | None = None) -> bool:
        """Stop taking deliveries and finish those accepted within ``timeout`` seconds."""
        return self.pool.shutdown(timeout)
