"""What the tests of the built-in families share (tests/test_family_*.py): a body posted through
the real endpoint with the signals it sent, what every family's event must be whatever arrived,
and the family's own bodies with one value, anywhere, replaced by any JSON value."""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from typing import Any

from flask import Flask
from hypothesis import strategies as st

from flask_musiccallback.events import FAILED, FamilyEvent
from flask_musiccallback.families import Family
from flask_musiccallback.testing import SIGNALS, record_signals

from .conftest import URL
from .payloads import json_values

#: The music family's stage signals: a host subscribed to them never sees another family.
MUSIC_SIGNALS = frozenset(
    {"text_generated", "first_track_generated", "all_tracks_generated", "task_failed"}
)

#: The endpoint's route with no token, for an app with no source check configured.
OPEN_URL = "/music-callback"

Recorded = list[tuple[str, dict[str, Any]]]


def post(app: Flask, body: Any, url: str = URL) -> tuple[int, Any, Recorded]:
    """Post ``body`` as JSON; the status, the JSON answer and the signals sent meanwhile."""
    with record_signals(app) as recorded:
        response = app.test_client().post(
            url, data=json.dumps(body), content_type="application/json"
        )
    assert response.mimetype == "application/json"
    return response.status_code, response.get_json(), list(recorded)


def sent(recorded: Recorded, name: str) -> list[Any]:
    """The events ``name`` was sent with."""
    return [kwargs["event"] for signal, kwargs in recorded if signal == name]


def names(recorded: Recorded) -> set[str]:
    return {signal for signal, _ in recorded}


def signal_name(family: Family, stage: str) -> str:
    """The public name of the signal ``family`` sends for ``stage``."""
    return next(name for name, signal in SIGNALS.items() if signal is family.signals[stage])


def assert_received_once(
    answer: tuple[int, Any, Recorded], family: Family, stage: str
) -> FamilyEvent:
    """A new delivery read by ``family`` as ``stage``: its signal sent once, no music signal;
    returns the event."""
    status, body, recorded = answer
    assert (status, body) == (200, {"status": "received"})
    events = sent(recorded, signal_name(family, stage))
    assert len(events) == 1
    event = events[0]
    assert sent(recorded, "callback_received") == [event]
    assert not names(recorded) & MUSIC_SIGNALS
    assert_common(event, family)
    assert event.stage == stage
    return event


def assert_common(event: Any, family: Family) -> None:
    """The common fields, typed as every family's event has them, whatever arrived."""
    assert isinstance(event, FamilyEvent)
    assert event.family == family.name
    assert isinstance(event.task_id, str)
    assert event.task_id
    assert event.stage in family.stages
    assert isinstance(event.code, int)
    assert not isinstance(event.code, bool)
    assert isinstance(event.msg, str)
    assert event.ok == (event.code == 200 and event.stage != FAILED)
    assert event.received_at.tzinfo is not None


@st.composite
def substituted(draw: st.DrawFn, bodies: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One of ``bodies`` with the value of one key, at any depth, replaced by any JSON value."""
    body = copy.deepcopy(draw(st.sampled_from(bodies)))
    target: Any = body
    while True:
        keys = list(target) if isinstance(target, dict) else list(range(len(target)))
        if not keys:
            return body
        key = draw(st.sampled_from(keys))
        value = target[key]
        if isinstance(value, dict | list) and value and draw(st.booleans()):
            target = value
            continue
        target[key] = draw(json_values)
        return body
