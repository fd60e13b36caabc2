"""Polling a family's record endpoint: the fallback when callbacks cannot reach the app.

A poll is turned into the very callback the provider would have posted: the family's
``read_record`` (:attr:`~.families.Family.read_record`) reads the record's answer into the body its
status stands for, and the family loads it into the same event a callback gives. The event then
takes the path every callback takes, :func:`~.dispatch.deliver` with the family's delivery, so
polling and callbacks share one deduplication: whichever reports a stage first fires it, and the
other is a duplicate.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from flask import Flask, current_app, has_app_context
from marshmallow import ValidationError

from .dispatch.job import POLL_SOURCE, SOURCE_HEADER, Outcome, deliver
from .families import MUSIC_NAME, Event, Family, Record
from .pool import backoff
from .provider import PollError, ProviderClient
from .state import get_state

#: The provider's recommended polling interval, in seconds.
DEFAULT_INTERVAL = 30.0

#: The longest wait between two polls when backing off after errors, in seconds.
MAX_BACKOFF = 300.0


class WatchTimeout(PollError):  # noqa: N818 - reads as what happened: the watch timed out
    """The task did not end within the time a watch was given."""


@dataclass(frozen=True, slots=True)
class PollResult:
    """What one poll found and did."""

    task_id: str
    #: The record's status, upper-cased (``PENDING``, ``SUCCESS``, ``1``, ...).
    status: str
    #: The event the status stands for (of the polled family's event class), or ``None`` when it
    #: stands for no stage yet.
    event: Event | None
    #: Whether the task will change no more, so polling it again is useless.
    final: bool
    #: How the event's delivery ended (``duplicate`` when a callback or poll already fired it).
    outcome: Outcome | None = None



def read_record(family: Family, answer: Mapping[str, Any], task_id: str) -> Record:
    """A record answer as the family's :class:`~.families.Record`; a :class:`PollError` says
    what is wrong with it."""
    assert family.read_record is not None  # checked by the caller, with a clear error
    try:
        record = family.read_record(answer)
    except ValidationError as exc:
        raise PollError(
            f"the provider's answer is not a usable {family.name} record: {exc.messages}"
        ) from None
    if record.task_id != task_id:
        raise PollError(f"the provider answered about task {record.task_id}, not {task_id}")
    return record


def pollable(app: Flask, family: str) -> Family:
    """The registered family called ``family``, if it has a record endpoint; ``LookupError``
    saying why otherwise."""
    kind = get_state(app).extension.families.named(family)
    if kind.record_path is None or kind.read_record is None:
        raise LookupError(f"The {family} family has no record endpoint to poll.")
    return kind


def fetch_record(
    kind: Family, task_id: str, client: ProviderClient
) -> tuple[Record, Event | None]:
    """The task's record at ``kind``'s record endpoint, and the event its body loads into
    (``None`` while the task has no result): what polling dispatches and a confirmation compares.

    Raises :class:`PollError` when the provider cannot be used or its record does not read.
    """
    record = read_record(kind, client.record_info(task_id, kind.record_path or ""), task_id)
    if record.body is None:
        return record, None
    try:
        return record, kind.load(record.body)
    except ValidationError as exc:
        raise PollError(
            f"the provider's {kind.name} record does not read as its callback: {exc.messages}"
        ) from None


def poll_task(
    app: Flask,
    task_id: str,
    *,
    family: str = MUSIC_NAME,
    client: ProviderClient | None = None,
) -> PollResult:
    """Fetch ``task_id`` from ``family``'s record endpoint once and dispatch its event, if new,
    through the callbacks' path.

    Raises :class:`PollError` when the provider cannot be used, ``ConfigurationError`` without an
    API key, ``LookupError`` for a family that cannot be polled, and ``StoreUnavailable`` when the
    store is down (nothing was dispatched then).
    """
    state = get_state(app)
    kind = pollable(app, family)
    if client is None:
        with ProviderClient.from_settings(state.settings) as own_client:
            record, event = fetch_record(kind, task_id, own_client)
    else:
        record, event = fetch_record(kind, task_id, client)
    result = PollResult(task_id=task_id, status=record.status, event=event, final=record.final)
    if event is None or record.body is None:
        return result
    delivery = kind.delivery(event, record.body, {SOURCE_HEADER: POLL_SOURCE})
    if has_app_context() and current_app._get_current_object() is app:  # type: ignore[attr-defined]
        outcome = deliver(app, state, kind, event, delivery)
    else:
        with app.app_context():
            outcome = deliver(app, state, kind, event, delivery)
    return dataclasses.replace(result, outcome=outcome)


def watch_task(
    app: Flask,
    task_id: str,
    *,
    family: str = MUSIC_NAME,
    interval: float = DEFAULT_INTERVAL,
    timeout: float = 3600.0,
    max_errors: int = 5,
    on_result: Callable[[PollResult], None] | None = None,
    on_retry: Callable[[PollError, float], None] | None = None,
) -> PollResult:
    """Poll every ``interval`` seconds until the task ends; return its last result.

    Errors that may pass (rate limits, maintenance, server errors, network) are retried with a
    doubling delay, never sooner than the provider's ``Retry-After``; after ``max_errors`` of them
    in a row, or any other error, the :class:`PollError` is raised. When ``timeout`` seconds pass
    first, the last error is raised if the last poll failed, else :class:`WatchTimeout`.
    """
    deadline = time.monotonic() + timeout
    errors = 0
    last: PollResult | None = None
    with ProviderClient.from_settings(get_state(app).settings) as client:
        while True:
            try:
                last = poll_task(app, task_id, family=family, client=client)
            except PollError as exc:
                errors += 1
                if not exc.retryable or errors >= max_errors:
                    raise
                delay = backoff(errors, max(interval, exc.retry_after or 0.0), MAX_BACKOFF)
                if time.monotonic() + delay > deadline:
                    raise
                if on_retry is not None:
                    on_retry(exc, delay)
            else:
                errors = 0
                if on_result is not None:
                    on_result(last)
                if last.final and last.outcome is not Outcome.RETRY:
                    return last  # a receiver error under ``retry`` is retried by the next poll
                delay = interval
                if time.monotonic() + delay > deadline:
                    raise WatchTimeout(
                        f"task {task_id} did not end within {timeout:g} s "
                        f"(last status: {last.status})"
                    )
            time.sleep(delay)
