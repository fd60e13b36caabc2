"""Property-based specification of the parser, over every payload shape of PROVIDER.md.

Lenient in what it accepts, strict in what it hands over: any shape the provider sends loads into
the event it describes, and anything else is a validation error (422) or not JSON (400), never an
exception of another kind, never a 5xx, and never a receiver called.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from typing import Any

import pytest
from flask import Flask
from hypothesis import given
from hypothesis import strategies as st
from marshmallow import ValidationError

from flask_musiccallback import CallbackEvent, Stage, Track
from flask_musiccallback.endpoint import MAX_DEPTH
from flask_musiccallback.schemas import CALLBACK_TYPES, TrackSchema, load_callback
from flask_musiccallback.testing import build_callback, record_signals

from .conftest import URL, build_app
from .payloads import (
    SPELLINGS,
    json_values,
    music_callbacks,
    mutated_callbacks,
    other_family_callbacks,
    tracks,
)

REJECTION_ONLY = {"callback_rejected"}


@pytest.fixture(scope="module")
def app() -> Flask:
    return build_app()


@pytest.fixture(scope="module")
def open_app() -> Flask:
    """No source check: a body no family reads is refused there, not kept."""
    return build_app(TOKEN=None)


def _value(track: dict[str, Any], name: str) -> Any:
    """What a track says about field ``name``, under whichever spelling it used."""
    for key in SPELLINGS.get(name, (name,)):
        if key in track:
            return None if track[key] == "" else track[key]
    return None


def _assert_typed(event: CallbackEvent) -> None:
    """What a host may rely on, whatever arrived."""
    assert isinstance(event.task_id, str)
    assert event.task_id
    assert isinstance(event.stage, Stage)
    assert isinstance(event.code, int)
    assert -(2**31) <= event.code < 2**31
    assert isinstance(event.msg, str)
    assert event.ok == (event.code == 200 and event.stage is not Stage.FAILED)
    for track in event.tracks:
        assert isinstance(track, Track)
        if track.created_at is not None:
            assert track.created_at.tzinfo is timezone.utc
        if track.duration is not None:
            assert isinstance(track.duration, float)
            assert math.isfinite(track.duration)
        for name in ("id", "audio_url", "title", "tags", "prompt", "model_name"):
            value = getattr(track, name)
            assert value is None or (isinstance(value, str) and value != "")


@given(music_callbacks())
def test_every_music_callback_loads_into_the_event_it_describes(payload: dict[str, Any]) -> None:
    event = load_callback(payload)
    data = payload["data"]
    callback_type = data["callbackType"]
    assert event.task_id == (data.get("task_id") or data.get("taskId"))
    assert event.stage is (
        Stage.FAILED if payload["code"] != 200 else CALLBACK_TYPES[callback_type.lower()]
    )
    assert event.callback_type == callback_type
    assert event.code == payload["code"]
    assert event.error == data.get("error")
    assert len(event.tracks) == len(data.get("data") or [])
    assert dict(event.raw) == payload
    _assert_typed(event)


@given(tracks())
def test_a_track_reads_every_spelling_and_blank_as_missing(track: dict[str, Any]) -> None:
    loaded: Track = TrackSchema().load(track)
    for name in SPELLINGS:
        if name == "createTime":
            continue
        assert getattr(loaded, name) == _value(track, name)
    duration = _value(track, "duration")
    assert loaded.duration == (None if duration is None else float(duration))
    created = _value(track, "createTime")
    if created is None:
        assert loaded.created_at is None
    else:
        assert loaded.created_at is not None
        assert loaded.created_at.tzinfo is timezone.utc
        if isinstance(created, int):
            assert loaded.created_at == datetime.fromtimestamp(created / 1000, tz=timezone.utc)


@given(mutated_callbacks())
def test_a_broken_value_anywhere_is_a_validation_error_or_a_typed_event(
    payload: dict[str, Any],
) -> None:
    try:
        event = load_callback(payload)
    except ValidationError as exc:
        messages = exc.messages
    else:
        _assert_typed(event)
        return
    assert isinstance(messages, dict)
    json.dumps(messages)  # the 422 body must serialise


@given(st.dictionaries(st.text(max_size=10), json_values, max_size=6))
def test_any_json_object_is_a_validation_error_or_a_typed_event(payload: dict[str, Any]) -> None:
    try:
        event = load_callback(payload)
    except ValidationError:
        return
    _assert_typed(event)


def _post(app: Flask, body: bytes) -> tuple[int, dict[str, Any], set[str]]:
    """Post ``body`` and return the status, the JSON answer and the signals sent meanwhile."""
    with record_signals(app) as recorded:
        response = app.test_client().post(URL, data=body, content_type="application/json")
    assert response.mimetype == "application/json"
    return response.status_code, response.get_json(), {name for name, _ in recorded}


@given(other_family_callbacks())
def test_other_families_are_answered_without_an_error(app: Flask, payload: dict[str, Any]) -> None:
    status, answer, signals = _post(app, json.dumps(payload).encode())
    assert (status, answer["status"]) in ((200, "received"), (200, "duplicate"), (200, "kept"))
    assert "callback_rejected" not in signals


@given(mutated_callbacks() | st.dictionaries(st.text(max_size=10), json_values, max_size=6))
def test_a_json_object_is_answered_200_or_422_and_a_refusal_calls_no_receiver(
    open_app: Flask, payload: dict[str, Any]
) -> None:
    status, answer, signals = _post(open_app, json.dumps(payload).encode())
    assert status in (200, 422)
    if status == 422:
        assert answer["status"] == "rejected"
        assert signals == REJECTION_ONLY
    else:
        assert answer["status"] in ("received", "duplicate")
        assert "callback_rejected" not in signals


@given(mutated_callbacks() | st.dictionaries(st.text(max_size=10), json_values, max_size=6))
def test_behind_a_token_a_json_object_is_received_or_kept_never_refused(
    app: Flask, payload: dict[str, Any]
) -> None:
    status, answer, signals = _post(app, json.dumps(payload).encode())
    assert status == 200
    if answer["status"] == "kept":
        assert signals == {"callback_unreadable"}
    else:
        assert answer["status"] in ("received", "duplicate")
        assert not signals & {"callback_rejected", "callback_unreadable"}


@given(json_values.filter(lambda value: not isinstance(value, dict)))
def test_json_that_is_not_an_object_is_invalid_json(app: Flask, value: Any) -> None:
    status, answer, signals = _post(app, json.dumps(value).encode())
    assert (status, answer) == (400, {"status": "rejected", "reason": "invalid_json"})
    assert signals == REJECTION_ONLY


@given(st.binary(max_size=512))
def test_any_bytes_are_answered_without_a_server_error(app: Flask, body: bytes) -> None:
    status, answer, signals = _post(app, body)
    assert status in (200, 400)
    if status != 200:
        assert signals == REJECTION_ONLY
        assert answer["status"] == "rejected"


# --- edges found by the properties above, kept as plain examples ---------------------------------


@pytest.mark.parametrize(
    ("code", "loads_as"), [(200, 200), (200.0, 200), ("200", 200), ("501", 501)]
)
def test_a_whole_code_is_read_as_a_number_or_a_string(code: Any, loads_as: int) -> None:
    payload = {"code": code, "data": {"callbackType": "complete", "task_id": "t"}}
    assert load_callback(payload).code == loads_as


@pytest.mark.parametrize("code", [200.5, "200.5", 2**31, -(2**31) - 1, 10**400, True, None])
def test_a_code_that_is_no_status_is_invalid(code: Any) -> None:
    with pytest.raises(ValidationError) as raised:
        load_callback({"code": code, "data": {"callbackType": "complete", "task_id": "t"}})
    assert "code" in raised.value.messages


def test_escaped_surrogate_pairs_are_text(app: Flask) -> None:
    body = b'{"code":200,"data":{"callbackType":"text","task_id":"emoji-\\ud83c\\udfb5"}}'
    status, answer, signals = _post(app, body)
    assert (status, answer["status"]) == (200, "received")
    assert "text_generated" in signals


@pytest.mark.parametrize(
    "body",
    [
        b'{"code":200,"data":{"callbackType":"text","task_id":"\\ud800"}}',
        '{"code":200,"data":{"callbackType":"text","task_id":"t"}}'.encode("utf-16"),
        b'{"code":200,"data":{"callbackType":"text","task_id":"\xed\xa0\x80"}}',
    ],
    ids=["lone-surrogate-escape", "utf-16", "encoded-surrogate"],
)
def test_json_that_is_not_valid_utf8_text_is_invalid_json(app: Flask, body: bytes) -> None:
    status, answer, signals = _post(app, body)
    assert (status, answer) == (400, {"status": "rejected", "reason": "invalid_json"})
    assert signals == REJECTION_ONLY


def test_a_utf8_byte_order_mark_is_tolerated(app: Flask) -> None:
    body = b'\xef\xbb\xbf{"code":200,"data":{"callbackType":"text","task_id":"bom"}}'
    assert _post(app, body)[0] == 200


@pytest.mark.parametrize("containers", ["lists", "objects", "both"])
@pytest.mark.parametrize(("depth", "status"), [(MAX_DEPTH, 200), (MAX_DEPTH + 1, 400), (5000, 400)])
def test_nesting_is_limited_so_that_any_reader_can_serialise_it_again(
    app: Flask, depth: int, status: int, containers: str
) -> None:
    kinds = {"lists": ["list"], "objects": ["object"], "both": ["list", "object"]}[containers]
    levels = [kinds[level % len(kinds)] for level in range(depth - 2)]  # the envelope and data
    nested = "".join("[" if kind == "list" else '{"a":' for kind in levels) + "1"
    nested += "".join("]" if kind == "list" else "}" for kind in reversed(levels))
    body = f'{{"code":200,"data":{{"callbackType":"text","task_id":"deep{depth}","x":{nested}}}}}'
    assert _post(app, body.encode())[0] == status


@pytest.mark.parametrize("field", ["duration", "createTime"])
def test_a_whole_number_no_float_holds_is_invalid_not_a_crash(field: str) -> None:
    payload = build_callback("complete")
    payload["data"]["data"][0][field] = 10**400
    with pytest.raises(ValidationError):
        load_callback(payload)
