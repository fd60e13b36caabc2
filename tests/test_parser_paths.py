"""The direct loading path and the marshmallow schema agree on every payload.

``load_callback`` skips marshmallow for payloads whose values already have their JSON types; the
schema stays the definition. These properties fail if the two ever disagree on what an event
holds, or on whether a payload is an error.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from marshmallow import ValidationError

from flask_musiccallback.schemas import (
    TRACK_ALIASES,
    TRACK_WIRE_KEYS,
    callback_schema,
    load_callback,
)

from .payloads import music_callbacks, mutated_callbacks

TRACK_KEYS = [*TRACK_WIRE_KEYS, *TRACK_ALIASES, "unknown_key"]

scalars = st.one_of(
    st.none(),
    st.just(""),
    st.booleans(),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.integers(min_value=0, max_value=4_000_000_000_000),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.sampled_from(["163.88", "1758044664461", "2025-01-01 00:00:00", "long", "1e400"]),
)
values = st.one_of(
    scalars,
    st.lists(scalars, max_size=2),
    st.dictionaries(st.text(max_size=3), scalars, max_size=2),
)
tracks = st.dictionaries(st.sampled_from(TRACK_KEYS), values, max_size=8)
track_lists = st.one_of(st.none(), st.lists(st.one_of(tracks, scalars), max_size=3))
data = st.fixed_dictionaries(
    {},
    optional={
        "callbackType": st.one_of(
            st.sampled_from(["text", "first", "complete", "error", "failed", "COMPLETE", "x"]),
            scalars,
        ),
        "task_id": st.one_of(st.sampled_from(["t1", ""]), scalars),
        "taskId": st.one_of(st.just("t2"), scalars),
        "data": track_lists,
        "error": st.one_of(st.just("boom"), scalars),
    },
)
envelopes = st.fixed_dictionaries(
    {},
    optional={
        "code": st.one_of(st.sampled_from([200, 400, 501]), scalars),
        "msg": st.one_of(st.just("ok"), scalars),
        "data": st.one_of(data, scalars),
        "task_id": st.one_of(st.just("top"), scalars),
        "extra": values,
    },
)


def outcome(load: Any, payload: dict[str, Any]) -> Any:
    try:
        event = load(payload)
    except ValidationError as error:
        return ("error", error.messages)
    return dataclasses.replace(event, received_at=None)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(envelopes)
def test_both_paths_agree_on_any_payload(payload: dict[str, Any]) -> None:
    assert outcome(load_callback, payload) == outcome(callback_schema.load, payload)


@settings(max_examples=300, deadline=None)
@given(music_callbacks() | mutated_callbacks())
def test_both_paths_agree_on_provider_shaped_callbacks(payload: dict[str, Any]) -> None:
    assert outcome(load_callback, payload) == outcome(callback_schema.load, payload)


def test_real_traffic_takes_the_direct_path() -> None:
    from flask_musiccallback.schemas import _fast_envelope
    from flask_musiccallback.testing import build_callback

    for stage in ("text", "first", "complete", "failed"):
        assert _fast_envelope(build_callback(stage, tracks=3)) is not None
