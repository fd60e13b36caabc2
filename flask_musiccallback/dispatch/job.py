"""Running the receivers of a delivery, and what a receiver error means for it.

Blinker stops at the first receiver that raises; a webhook receiver must not, or one broken
subscriber silently starves the others. :func:`send_isolated` calls every receiver, reports each
failure through ``receiver_failed`` and the log, and returns the failures so the caller can apply
``MUSICCALLBACK_RECEIVER_ERRORS``.

:func:`deliver` is the one path new events take (the endpoint, polling): claim the delivery in the
store, make it a :class:`Job`, and hand that to the app's dispatcher, which runs the receivers and
then completes, releases or fails it: :class:`SyncDispatcher` in the request (:func:`process`),
:class:`ThreadDispatcher` in a bounded pool and the Celery dispatcher (``celery_dispatch``) in a
worker, both after the answer (:func:`process_acknowledged`, which retries with back-off). A
replay (``replay``, the sweep) takes a kept delivery with ``reclaim`` instead of ``claim`` and
hands its job to the same dispatcher.

A job's writes to the store name the owner of its claim (:attr:`Delivery.owner`), and go through
the app's :class:`~.writeback.WriteBack`: when the store cannot be reached just then, the outcome
stands (the receivers are not run again for it) and the write is made once the store is back.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass
from inspect import iscoroutinefunction
from typing import TYPE_CHECKING, Any

from blinker import Signal

from .outage import Outage
from .pool import Pool
from .signals import callback_duplicate, callback_received, receiver_failed
from .stores.base import ClaimResult, Delivery, StoreUnavailable
from .stores.owners import claim_owner

if TYPE_CHECKING:
    from flask import Flask

    from .config import Settings
    from .families import Event, Family
    from .state import MusicCallbackState

logger = logging.getLogger("flask_musiccallback")


class Outcome(str, enum.Enum):
    """How a delivery ended, which is also what the endpoint answers."""

    RECEIVED = "received"
    DUPLICATE = "duplicate"
    RETRY = "retry"


def receiver_name(receiver: Callable[..., Any]) -> str:
    """``module.qualname`` of a receiver, the name ``receiver_failed`` and the log report."""
    module = getattr(receiver, "__module__", None) or "?"
    name = getattr(receiver, "__qualname__", None) or type(receiver).__qualname__
    return f"{module}.{name}"


def send_isolated(
    signal: Signal,
    app: Flask,
    on_error: Callable[[Callable[..., Any], Exception], None] | None = None,
    **kwargs: Any,
) -> list[Exception]:
    """Send ``signal`` for ``app``, running every receiver even when one raises.

    Coroutine receivers run through ``app.ensure_sync``, as Flask runs async views.
    """
    if signal.is_muted or not signal.receivers:
        return []
    failures: list[Exception] = []
    for receiver in signal.receivers_for(app):
        try:
            if iscoroutinefunction(receiver):
                app.ensure_sync(receiver)(app, **kwargs)
            else:
                receiver(app, **kwargs)
        except Exception as exc:
            failures.append(exc)
            if on_error is not None:
                on_error(receiver, exc)
            else:
                logger.exception("Receiver %s raised", receiver_name(receiver))
    return failures


def run_receivers(app: Flask, family: Family, event: Event) -> list[Exception]:
    """Send ``callback_received`` and then the event's stage signal; return what raised."""

    def report(receiver: Callable[..., Any], exc: Exception) -> None:
        name = receiver_name(receiver)
        logger.error(
            "Receiver %s failed on task %s stage %s",
            name,
            event.task_id,
            event.stage,
            exc_info=exc,
        )
        send_isolated(receiver_failed, app, event=event, receiver=name, exception=exc)

    failures = send_isolated(callback_received, app, report, event=event)
    failures += send_isolated(family.signals[event.stage], app, report, event=event)
    return failures


def describe(failures: list[Exception]) -> str:
    """The error text a store keeps for a failed delivery."""
    return "; ".join(f"{type(exc).__qualname__}: {exc}" for exc in failures)


@dataclass(frozen=True, slots=True)
class Job:
    """A claimed delivery on its way to its receivers: what came, for which app, and under
    whose claim (``delivery.owner``); the one thing every dispatcher runs."""

    app: Flask
    state: MusicCallbackState
    family: Family
    event: Event
    delivery: Delivery
    #: Which run of the receivers this is; off the request path, retries count up.
    attempt: int = 1
    #: Off the request path: the owner the job holds the claim as once it starts
    #: (:meth:`~.stores.base.Store.start`), chosen once so that a start sent again is known.
    runner: str | None = None

    def complete(self) -> None:
        self._write("the completion", lambda: self.state.store.complete(self.delivery))

    def release(self, error: str) -> None:
        self._write("the release", lambda: self.state.store.release(self.delivery, error))

    def fail(self, error: str) -> None:
        self._write("the failure", lambda: self.state.store.fail(self.delivery, error))

    def defer(self, error: str, delay: float) -> None:
        self._write(
            "the failed attempt", lambda: self.state.store.defer(self.delivery, error, delay)
        )

    def _write(self, what: str, write: Callable[[], None]) -> None:
        self.state.write_back.write(write, what, self.delivery)


@dataclass(frozen=True, slots=True)
class NextAttempt:
    """A job to run again after ``delay`` seconds (off the request path)."""

    delay: float
    job: Job


def deliver(
    app: Flask, state: MusicCallbackState, family: Family, event: Event, delivery: Delivery
) -> Outcome:
    """Claim a delivery and process it once; raises ``StoreUnavailable`` when the store is down.

    A dispatcher that answers before the receivers run claims the delivery as ``pending``: with a
    persistent store it is then durably recorded before the answer, and stays pending, for
    ``replay --pending`` and the sweep, if the process dies before a worker finishes it.

    A claim whose answer never came may still have been taken: it is given back as soon as the
    store answers again, so that the provider's retry finds it free rather than held for a lease.
    """
    dispatcher = state.dispatcher
    try:
        claim = state.store.claim(delivery, queued=dispatcher.queued)
    except StoreUnavailable as exc:
        if exc.reached:
            state.write_back.add(
                lambda: state.store.release(delivery, "the store did not answer the claim"),
                "the release of an unanswered claim",
                delivery,
            )
        raise
    if claim is not ClaimResult.CLAIMED:
        send_isolated(callback_duplicate, app, event=event, reason=claim.value)
        return Outcome.DUPLICATE
    return dispatcher.dispatch(Job(app, state, family, event, delivery))


def settle(job: Job, on_failure: Callable[[str], Outcome]) -> Outcome:
    """Run the receivers of a claimed delivery: complete it, or let ``on_failure(error)`` decide.

    Whatever escapes (``BaseException`` included) releases the claim, so a delivery is never left
    held by a request or a job that no longer runs.
    """
    settled = False
    try:
        failures = run_receivers(job.app, job.family, job.event)
        if failures:
            outcome = on_failure(describe(failures))
        else:
            job.complete()
            outcome = Outcome.RECEIVED
        settled = True
        return outcome
    finally:
        if not settled:
            job.release("interrupted")


def process(job: Job) -> Outcome:
    """Run the receivers of a claimed delivery in the request: ``MUSICCALLBACK_RECEIVER_ERRORS``
    says whether a failure is retried by the provider (release, 503) or acknowledged (fail, 200).
    """

    def on_failure(error: str) -> Outcome:
        if job.state.settings.receiver_errors == "retry":
            job.release(error)
            return Outcome.RETRY
        job.fail(error)
        return Outcome.RECEIVED

    return settle(job, on_failure)


def process_acknowledged(job: Job) -> NextAttempt | None:
    """Run an attempt of a delivery already answered 200 (``thread``, ``celery``); what to run
    next, if anything.

    The job first takes the delivery from ``pending`` to ``processing`` (:meth:`Store.start`) as
    its :attr:`Job.runner`; when it is not waiting for the job's claim any more, another job or a
    replay has it, and this one runs nothing. A store that cannot be reached then is asked again
    after a back-off, by the same runner.

    The provider will not retry it, so a receiver error is retried here, after the next attempt's
    delay, until ``MUSICCALLBACK_RETRY_ATTEMPTS`` attempts were made; then it is kept as failed,
    for ``replay``. A failed attempt is recorded (:meth:`Store.defer`: the attempt, its error,
    ``pending`` again) and the claim stays held through the back-off, however long, so a
    redelivery meanwhile is ``in_progress``.
    """
    settings = job.state.settings
    delivery = job.delivery
    runner = job.runner or claim_owner()
    try:
        started = job.state.store.start(delivery, runner)
    except StoreUnavailable as exc:
        delay = settings.retry_delay(job.attempt)
        logger.warning(
            "Cannot start task %s stage %s: %s; trying again in %.1f s.",
            delivery.task_id,
            delivery.stage,
            exc,
            delay,
        )
        return NextAttempt(delay, dataclasses.replace(job, runner=runner))
    if not started:
        logger.info(
            "Task %s stage %s is no longer waiting (a replay or another job has it); skipped.",
            delivery.task_id,
            delivery.stage,
        )
        return None
    running = dataclasses.replace(
        job, delivery=dataclasses.replace(delivery, owner=runner), runner=None
    )
    next_attempt: NextAttempt | None = None

    def on_failure(error: str) -> Outcome:
        nonlocal next_attempt
        attempt = job.attempt
        if attempt < settings.retry_attempts:
            delay = settings.retry_delay(attempt)
            logger.warning(
                "Attempt %d of %d failed on task %s stage %s; retrying in %.1f s: %s",
                attempt,
                settings.retry_attempts,
                delivery.task_id,
                delivery.stage,
                delay,
                error,
            )
            running.defer(error, delay)
            next_attempt = NextAttempt(delay, dataclasses.replace(running, attempt=attempt + 1))
        else:
            logger.error(
                "Giving up on task %s stage %s after %d attempts; kept as failed: %s",
                delivery.task_id,
                delivery.stage,
                attempt,
                error,
            )
            running.fail(error)
        return Outcome.RECEIVED

    settle(running, on_failure)
    return next_attempt


class SyncDispatcher:
    """``MUSICCALLBACK_DISPATCH = "sync"``: receivers run inside the request, before the answer.

    The simplest and fastest mode when receivers are quick; the answer then tells the provider
    whether they succeeded, so under ``retry`` the provider's own retries re-run a failed delivery.
    """

    queued = False

    def dispatch(self, job: Job, *, replay: bool = False) -> Outcome:
        return process(job)

    def wait_idle(self, timeout: float | None = None) -> bool:
        return True

    def close(self, timeout: float | None = None) -> bool:
        return True


class ThreadDispatcher:
    """``MUSICCALLBACK_DISPATCH = "thread"``: answer at once, run receivers in a bounded pool.

    For slow receivers in a single-machine deployment. Each delivery becomes a job of a
    :class:`~.pool.Pool` of ``MUSICCALLBACK_THREAD_POOL_SIZE`` threads, run inside an app context
    (there is no request context: the request was answered). When
    ``MUSICCALLBACK_THREAD_QUEUE_SIZE`` deliveries already wait, the claim is released and the
    endpoint answers 503, so the provider retries later instead of the process growing without
    bound. A failed attempt is queued again after its back-off, holding no thread meanwhile.
    A replayed delivery (``replay=True``) was accepted once already: like a retry, it does not
    count against the queue size, and is refused only once the pool has stopped.
    """

    queued = True

    def __init__(self, settings: Settings) -> None:
        self.pool = Pool(settings.thread_pool_size, settings.thread_queue_size)
        self._full = Outage()

    def dispatch(self, job: Job, *, replay: bool = False) -> Outcome:
        def attempt() -> None:
            self._attempt(job)

        if replay:
            # Refused only by a stopped pool: the delivery stays pending, held for a lease.
            return Outcome.RECEIVED if self.pool.submit_later(0.0, attempt) else Outcome.RETRY
        if self.pool.submit(attempt):
            self._full.recovered()
            return Outcome.RECEIVED
        job.release("the dispatch queue was full")
        if self._full.failed():
            logger.warning(
                "The dispatch queue is full (%d deliveries waiting); answering 503 until it "
                "has room. Raise MUSICCALLBACK_THREAD_POOL_SIZE or use celery dispatch.",
                self.pool.waiting,
            )
        return Outcome.RETRY

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
