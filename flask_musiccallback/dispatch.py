"""Running the receivers of a delivery, and what a receiver error means for it.

Blinker stops at the first receiver that raises; a webhook receiver must not, or one broken
subscriber silently starves the others. :func:`send_isolated` calls every receiver, reports each
failure through ``receiver_failed`` and the log, and returns the failures so the caller can apply
``MUSICCALLBACK_RECEIVER_ERRORS``.

:func:`deliver` is the one path new events take (the endpoint, polling): claim the delivery in the
store, hand it to the app's dispatcher, which runs the receivers and then completes, releases or
fails it: :class:`SyncDispatcher` in the request (:func:`process`), :class:`ThreadDispatcher` in a
bounded pool and the Celery dispatcher (``celery_dispatch``) in a worker, both after the answer
(:func:`process_acknowledged`, which retries with back-off). A replay (``replay``, the sweep) takes
a kept delivery with ``reclaim`` instead of ``claim`` and hands it to the same dispatcher.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from functools import partial
from inspect import iscoroutinefunction
from typing import TYPE_CHECKING, Any

from blinker import Signal

from .pool import Pool
from .signals import callback_duplicate, callback_received, receiver_failed
from .stores.base import ClaimResult, Delivery

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


def deliver(
    app: Flask, state: MusicCallbackState, family: Family, event: Event, delivery: Delivery
) -> Outcome:
    """Claim a delivery and process it once; raises ``StoreUnavailable`` when the store is down.

    A dispatcher that answers before the receivers run claims the delivery as ``pending``: with a
    persistent store it is then durably recorded before the answer, and stays pending, for
    ``replay --pending`` and the sweep, if the process dies before a worker finishes it.
    """
    dispatcher = state.dispatcher
    claim = state.store.claim(delivery, queued=dispatcher.queued)
    if claim is not ClaimResult.CLAIMED:
        send_isolated(callback_duplicate, app, event=event, reason=claim.value)
        return Outcome.DUPLICATE
    return dispatcher.dispatch(app, state, family, event, delivery)


def settle(
    app: Flask,
    state: MusicCallbackState,
    family: Family,
    event: Event,
    delivery: Delivery,
    on_failure: Callable[[str], Outcome],
) -> Outcome:
    """Run the receivers of a claimed delivery: complete it, or let ``on_failure(error)`` decide.

    Whatever escapes (``BaseException`` included) releases the claim, so a delivery is never left
    held by a request or a job that no longer runs.
    """
    store = state.store
    settled = False
    try:
        failures = run_receivers(app, family, event)
        if failures:
            outcome = on_failure(describe(failures))
        else:
            store.complete(delivery.task_id, delivery.stage)
            outcome = Outcome.RECEIVED
        settled = True
        return outcome
    finally:
        if not settled:
            store.release(delivery.task_id, delivery.stage, "interrupted")


def process(
    app: Flask, state: MusicCallbackState, family: Family, event: Event, delivery: Delivery
) -> Outcome:
    """Run the receivers of a claimed delivery in the request: ``MUSICCALLBACK_RECEIVER_ERRORS``
    says whether a failure is retried by the provider (release, 503) or acknowledged (fail, 200).
    """
    store = state.store

    def on_failure(error: str) -> Outcome:
        if state.settings.receiver_errors == "retry":
            store.release(delivery.task_id, delivery.stage, error)
            return Outcome.RETRY
        store.fail(delivery.task_id, delivery.stage, error)
        return Outcome.RECEIVED

    return settle(app, state, family, event, delivery, on_failure)


def process_acknowledged(
    app: Flask,
    state: MusicCallbackState,
    family: Family,
    event: Event,
    delivery: Delivery,
    attempt: int,
) -> float | None:
    """Run attempt number ``attempt`` of a delivery already answered 200 (``thread``, ``celery``).

    The job first takes the delivery from ``pending`` to ``processing`` (:meth:`Store.start`);
    when it is not pending any more, another job or a replay has it, and this one runs nothing.

    The provider will not retry it, so a receiver error is retried here: the result is the delay
    before the next attempt, or ``None`` once the delivery is settled (completed, or after
    ``MUSICCALLBACK_RETRY_ATTEMPTS`` attempts kept as failed for ``replay``) or not this job's.
    A failed attempt is recorded (:meth:`Store.defer`: the attempt, its error, ``pending`` again)
    and the claim stays held through the back-off, however long, so a redelivery meanwhile is
    ``in_progress``.
    """
    settings = state.settings
    store = state.store
    if not store.start(delivery.task_id, delivery.stage):
        logger.info(
            "Task %s stage %s is no longer waiting (a replay or another job has it); skipped.",
            delivery.task_id,
            delivery.stage,
        )
        return None
    retry_in: float | None = None

    def on_failure(error: str) -> Outcome:
        nonlocal retry_in
        if attempt < settings.retry_attempts:
            retry_in = settings.retry_delay(attempt)
            logger.warning(
                "Attempt %d of %d failed on task %s stage %s; retrying in %.1f s: %s",
                attempt,
                settings.retry_attempts,
                delivery.task_id,
                delivery.stage,
                retry_in,
                error,
            )
            store.defer(delivery.task_id, delivery.stage, error, retry_in)
        else:
            logger.error(
                "Giving up on task %s stage %s after %d attempts; kept as failed: %s",
                delivery.task_id,
                delivery.stage,
                attempt,
                error,
            )
            store.fail(delivery.task_id, delivery.stage, error)
        return Outcome.RECEIVED

    settle(app, state, family, event, delivery, on_failure)
    return retry_in


class SyncDispatcher:
    """``MUSICCALLBACK_DISPATCH = "sync"``: receivers run inside the request, before the answer.

    The simplest and fastest mode when receivers are quick; the answer then tells the provider
    whether they succeeded, so under ``retry`` the provider's own retries re-run a failed delivery.
    """

    queued = False

    def dispatch(
        self,
        app: Flask,
        state: MusicCallbackState,
        family: Family,
        event: Event,
        delivery: Delivery,
        *,
        replay: bool = False,
    ) -> Outcome:
        return process(app, state, family, event, delivery)

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
        self._full = False

    def dispatch(
        self,
        app: Flask,
        state: MusicCallbackState,
        family: Family,
        event: Event,
        delivery: Delivery,
        *,
        replay: bool = False,
    ) -> Outcome:
        job = partial(self._attempt, app, state, family, event, delivery, 1)
        if replay:
            # Refused only by a stopped pool: the delivery stays pending, held for a lease.
            return Outcome.RECEIVED if self.pool.submit_later(0.0, job) else Outcome.RETRY
        if self.pool.submit(job):
            self._full = False
            return Outcome.RECEIVED
        state.store.release(delivery.task_id, delivery.stage, "the dispatch queue was full")
        if not self._full:
            self._full = True
            logger.warning(
                "The dispatch queue is full (%d deliveries waiting); answering 503 until it "
                "has room. Raise MUSICCALLBACK_THREAD_POOL_SIZE or use celery dispatch.",
                self.pool.waiting,
            )
        return Outcome.RETRY

    def _attempt(
        self,
        app: Flask,
        state: MusicCallbackState,
        family: Family,
        event: Event,
        delivery: Delivery,
        attempt: int,
    ) -> None:
        with app.app_context():
            retry_in = process_acknowledged(app, state, family, event, delivery, attempt)
        if retry_in is None:
            return
        retry = partial(self._attempt, app, state, family, event, delivery, attempt + 1)
        if not self.pool.submit_later(retry_in, retry):
            logger.warning(
                "The dispatch pool has stopped; task %s stage %s is not retried here (a "
                "persistent store keeps it pending, for replay --pending or the sweep).",
                delivery.task_id,
                delivery.stage,
            )

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until every accepted delivery is settled, retries included."""
        return self.pool.wait_idle(timeout)

    def close(self, timeout: float | None = None) -> bool:
        """Stop taking deliveries and finish those accepted within ``timeout`` seconds."""
        return self.pool.shutdown(timeout)
