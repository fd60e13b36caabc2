"""Running the receivers of an event, every one of them, whatever one of them raises.

Blinker stops at the first receiver that raises; a webhook receiver must not, or one broken
subscriber silently starves the others. :func:`send_isolated` calls every receiver, reports each
failure through ``receiver_failed`` and the log, and returns the failures so that the delivery's
job can apply ``MUSICCALLBACK_RECEIVER_ERRORS``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from inspect import iscoroutinefunction
from typing import TYPE_CHECKING, Any

from blinker import Signal

from .. import telemetry
from ..signals import callback_received, receiver_failed

if TYPE_CHECKING:
    from flask import Flask

    from ..families import Event, Family

logger = logging.getLogger("flask_musiccallback")


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
    telemetry.receivers_failed(family.name, str(event.stage), len(failures))
    return failures


def describe(failures: list[Exception]) -> str:
    """The error text a store keeps for a failed delivery."""
    return "; ".join(f"{type(exc).__qualname__}: {exc}" for exc in failures)
