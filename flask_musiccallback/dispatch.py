"""Running the receivers of a delivery, and what a receiver error means for it.

Blinker stops at the first receiver that raises; a webhook receiver must not, or one broken
subscriber silently starves the others. :func:`send_isolated` calls every receiver, reports each
failure through ``receiver_failed`` and the log, and returns the failures so the caller can apply
``MUSICCALLBACK_RECEIVER_ERRORS``.

:func:`deliver` is the one path every source of events takes (the endpoint, polling, replay): claim
the delivery in the store, run the receivers, then complete, release or fail it.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from inspect import iscoroutinefunction
from typing import TYPE_CHECKING, Any

from blinker import Signal

from .signals import callback_duplicate, callback_received, receiver_failed
from .stores.base import ClaimResult, Delivery

if TYPE_CHECKING:
    from flask import Flask

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
    """Claim a delivery and process it once; raises ``StoreUnavailable`` when the store is down."""
    claim = state.store.claim(delivery)
    if claim is not ClaimResult.CLAIMED:
        send_isolated(callback_duplicate, app, event=event, reason=claim.value)
        return Outcome.DUPLICATE
    return state.dispatcher.dispatch(app, state, family, event, delivery)


def process(
    app: Flask, state: MusicCallbackState, family: Family, event: Event, delivery: Delivery
) -> Outcome:
    """Run the receivers of a claimed delivery and settle the claim by the error policy.

    Whatever escapes (``BaseException`` included) releases the claim, so a delivery is never left
    held by a request that no longer runs.
    """
    store = state.store
    settled = False
    try:
        failures = run_receivers(app, family, event)
        if not failures:
            store.complete(delivery.task_id, delivery.stage)
            settled = True
            return Outcome.RECEIVED
        error = describe(failures)
        if state.settings.receiver_errors == "retry":
            store.release(delivery.task_id, delivery.stage, error)
            settled = True
            return Outcome.RETRY
        store.fail(delivery.task_id, delivery.stage, error)
        settled = True
        return Outcome.RECEIVED
    finally:
        if not settled:
            store.release(delivery.task_id, delivery.stage, "interrupted")


class SyncDispatcher:
    """``MUSICCALLBACK_DISPATCH = "sync"``: receivers run inside the request, before the answer.

    The simplest and fastest mode when receivers are quick; the answer then tells the provider
    whether they succeeded, so under ``retry`` the provider's own retries re-run a failed delivery.
    """

    def dispatch(
        self,
        app: Flask,
        state: MusicCallbackState,
        family: Family,
        event: Event,
        delivery: Delivery,
    ) -> Outcome:
        return process(app, state, family, event, delivery)
