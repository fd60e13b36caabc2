"""What the tests of the built-in families share (tests/test_family_*.py, test_poll_families.py):
a body posted through the real endpoint with the signals it sent, what every family's event must
be whatever arrived, how the endpoint may answer a broken body, and record answers in every form
PROVIDER.md section 6 lists.

Loaded as a pytest plugin by conftest.py, for the fixtures ``open_app`` and ``guarded_app``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import pytest
from flask import Flask
from marshmallow import ValidationError

from flask_musiccallback.events import FAILED, FamilyEvent
from flask_musiccallback.families import FAMILY_ARG, Family
from flask_musiccallback.testing import SIGNALS, record_signals

from .conftest import URL, build_app

#: The music family's stage signals: a callback of another family must never fire one.
MUSIC_SIGNALS = frozenset(
    {"text_generated", "first_track_generated", "all_tracks_generated", "task_failed"}
)

#: The endpoint of an app built with ``TOKEN=None``: no source check, so no body is kept.
OPEN_URL = "/music-callback"

#: A record's times in the forms the provider sends them, all the same moment.
RECORD_TIMES = {
    "epoch-ms": 1753782854000,
    "iso-z": "2025-07-29T09:54:14Z",
    "iso-z-ms": "2025-07-29T09:54:14.000Z",
    "plain": "2025-07-29 09:54:14",
}


#: Signals as ``record_signals`` records them: ``(name, kwargs)``, in the order sent.
Recorded = Sequence[tuple[str, dict[str, Any]]]


def names(signals: Recorded) -> list[str]:
    """The names of the signals sent, in order."""
    return [name for name, _ in signals]


def sent(signals: Recorded, name: str) -> list[dict[str, Any]]:
    """The keyword arguments of each sending of the signal ``name``."""
    return [kwargs for signal, kwargs in signals if signal == name]


def events(signals: Recorded, name: str) -> list[Any]:
    """The events the signal ``name`` was sent with."""
    return [kwargs["event"] for kwargs in sent(signals, name)]


@dataclass(frozen=True)
class Posted:
    """The endpoint's answer to one body and the signals sent meanwhile, in order."""

    status: int
    answer: dict[str, Any]
    signals: list[tuple[str, dict[str, Any]]]

    @property
    def names(self) -> list[str]:
        return names(self.signals)

    def sent(self, name: str) -> list[dict[str, Any]]:
        return sent(self.signals, name)

    def events(self, name: str) -> list[Any]:
        return events(self.signals, name)


def post(app: Flask, body: Any, *, family: str | None = None, url: str = URL) -> Posted:
    """Post ``body`` as the provider does (JSON, keys in the order given) to ``url``, with
    ``family=`` in the query as ``callback_url(family=...)`` puts it."""
    if family is not None:
        url += ("&" if "?" in url else "?") + urlencode({FAMILY_ARG: family})
    with record_signals(app) as recorded:
        response = app.test_client().post(
            url, data=json.dumps(body), content_type="application/json"
        )
    assert response.mimetype == "application/json"
    return Posted(response.status_code, response.get_json(), list(recorded))


def signal_name(family: Family, stage: str) -> str:
    """The public name of the signal ``family`` sends for ``stage``."""
    return next(name for name, signal in SIGNALS.items() if signal is family.signals[stage])


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


def assert_received_once(posted: Posted, family: Family, stage: str) -> Any:
    """A new delivery read by ``family`` as ``stage``: its signal sent once, after
    ``callback_received`` with the same event, and no music signal; returns the event."""
    assert (posted.status, posted.answer) == (200, {"status": "received"})
    [event] = posted.events(signal_name(family, stage))
    assert posted.events("callback_received") == [event]
    assert not MUSIC_SIGNALS & set(posted.names)
    assert_common(event, family)
    assert event.stage == stage
    return event


def assert_refused(posted: Posted, *path: str) -> None:
    """Refused with 422 as no callback, with no receiver called and an error at ``path`` in the
    answer's ``errors``."""
    assert posted.status == 422
    assert posted.answer["reason"] == "invalid_payload"
    assert posted.names == ["callback_rejected"]
    errors = posted.answer["errors"]
    for key in path:
        assert key in errors
        errors = errors[key]


def assert_kept(posted: Posted, family: Family) -> None:
    """Kept behind a source check as a body ``family`` tried and could not read, and none of the
    family's signals sent."""
    assert (posted.status, posted.answer) == (200, {"status": "kept"})
    assert [kwargs["family"] for kwargs in posted.sent("callback_unreadable")] == [family.name]
    assert not {signal_name(family, stage) for stage in family.stages} & set(posted.names)


def loads_or_refuses(family: Family, payload: Any) -> Any:
    """The family's event, checked with :func:`assert_common`, or ``None`` when its schema
    refuses ``payload`` with errors that a 422 answer can carry; anything else raised fails the
    test."""
    try:
        event = family.load(payload)
    except ValidationError as exc:
        messages = exc.messages
    else:
        assert_common(event, family)
        return event
    assert isinstance(messages, dict)
    json.dumps(messages)
    return None


def assert_never_a_server_error(
    open_app: Flask, guarded_app: Flask, payload: Any, family: Family
) -> None:
    """``payload`` posted with and without ``family=`` in the URL is answered, never an error of
    the server (the test client raises what the endpoint does not handle): an open endpoint
    reads it or refuses it as no callback; one behind a token reads it or keeps it."""
    for url_family in (None, family.name):
        posted = post(open_app, payload, family=url_family, url=OPEN_URL)
        if posted.status == 422:
            assert_refused(posted)
        else:
            assert posted.status == 200
            assert posted.answer["status"] in ("received", "duplicate")
        posted = post(guarded_app, payload, family=url_family)
        assert posted.status == 200
        assert posted.answer["status"] in ("received", "duplicate", "kept")


@pytest.fixture(scope="module")
def open_app() -> Flask:
    """An app with no source check: a body no family reads is refused, not kept."""
    return build_app(TOKEN=None)


@pytest.fixture(scope="module")
def guarded_app() -> Flask:
    """An app behind the test token: a body no family reads is kept."""
    return build_app()


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
    """A record endpoint's answer ``{code, msg, data}`` as every family but music has it: the
    status (a string or an integer) under ``status_key``, the result under ``response``, and
    ``data`` for what else a family's record holds."""
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
