"""What the tests of each callback family share: posting through the real endpoint and seeing
which signals fired, the music signals no other family may fire, record answers in every form
PROVIDER.md section 6 lists, and bodies with one value replaced by any JSON value."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from flask import Flask
from hypothesis import strategies as st
from marshmallow import ValidationError

from flask_musiccallback.events import FamilyEvent
from flask_musiccallback.families import Family
from flask_musiccallback.testing import record_signals

from .conftest import URL
from .payloads import json_values

#: The music family's stage signals: a callback of another family must never fire one.
MUSIC_SIGNALS = frozenset(
    {"text_generated", "first_track_generated", "all_tracks_generated", "task_failed"}
)

#: The endpoint of an app built with ``TOKEN=None``: no source check, so no body is kept.
OPEN_URL = "/music-callback"

#: A record's times in the three forms the provider sends them, all the same moment.
RECORD_TIMES = {
    "epoch-ms": 1753782854000,
    "iso-z": "2025-07-29T09:54:14Z",
    "plain": "2025-07-29 09:54:14",
}


@dataclass(frozen=True)
class Posted:
    """The endpoint's answer to one body and the signals sent meanwhile, in order."""

    status: int
    answer: dict[str, Any]
    signals: list[tuple[str, dict[str, Any]]]

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.signals]

    def events(self, name: str) -> list[Any]:
        """The events the signal ``name`` was sent with."""
        return [kwargs["event"] for sent, kwargs in self.signals if sent == name]


def post(app: Flask, body: Any, *, family: str | None = None, url: str = URL) -> Posted:
    """Post ``body`` to ``url``, with ``family=`` in the query as ``callback_url`` puts it."""
    if family is not None:
        url += ("&" if "?" in url else "?") + urlencode({"family": family})
    with record_signals(app) as recorded:
        response = app.test_client().post(url, json=body)
    return Posted(response.status_code, response.get_json(), list(recorded))


def assert_answered(posted: Posted) -> None:
    """Received, a duplicate, or refused as no callback without a receiver called: never an
    error of the server (the test client raises what the endpoint does not handle)."""
    assert posted.status in (200, 422)
    if posted.status == 422:
        assert posted.answer["reason"] == "invalid_payload"
        assert posted.names == ["callback_rejected"]
    else:
        assert posted.answer["status"] in ("received", "duplicate")


def assert_typed(event: FamilyEvent, family: Family) -> None:
    """What a host may rely on in any family's event, whatever arrived."""
    assert type(event).family == family.name
    assert isinstance(event.task_id, str)
    assert event.task_id
    assert event.stage in family.stages
    assert isinstance(event.code, int)
    assert isinstance(event.msg, str)
    assert event.ok == (event.code == 200 and event.stage != "failed")


def loads_or_refuses(family: Family, payload: Any) -> FamilyEvent | None:
    """The family's event, or ``None`` when its schema refuses ``payload`` with errors that a
    422 answer can carry; anything else raised fails the test."""
    try:
        event: FamilyEvent = family.load(payload)
    except ValidationError as exc:
        json.dumps(exc.messages)
        return None
    assert_typed(event, family)
    return event


@st.composite
def mutated(draw: st.DrawFn, bodies: list[dict[str, Any]]) -> dict[str, Any]:
    """One of ``bodies`` with one value, at any depth, replaced by any JSON value."""
    payload = copy.deepcopy(draw(st.sampled_from(bodies)))
    target: Any = payload
    while True:
        keys = list(target) if isinstance(target, dict) else list(range(len(target)))
        if not keys:
            break
        key = draw(st.sampled_from(keys))
        value = target[key]
        if isinstance(value, dict | list) and value and draw(st.booleans()):
            target = value
            continue
        target[key] = draw(json_values)
        break
    return payload


def record_answer(
    task_id: str,
    status: Any,
    *,
    status_key: str = "successFlag",
    response: Any = None,
    time: Any = RECORD_TIMES["epoch-ms"],
    error_code: Any = None,
    error_message: str | None = None,
    **data: Any,
) -> dict[str, Any]:
    """A record endpoint's answer ``{code, msg, data}`` as every family but music has it."""
    return {
        "code": 200,
        "msg": "success",
        "data": {
            "taskId": task_id,
            status_key: status,
            "response": response,
            "createTime": time,
            "completeTime": time,
            "errorCode": error_code,
            "errorMessage": error_message,
            **data,
        },
    }
