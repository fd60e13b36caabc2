"""Hypothesis strategies for every payload shape PROVIDER.md describes, and for broken ones.

The music family is drawn field by field the way real traffic varies (missing, ``null``, ``""``,
camelCase spellings, epoch milliseconds or date strings, unknown extra keys); the other families
(lyrics, WAV, stems, MIDI, video, cover) arrive at the same endpoint and must never break it.
"""

from __future__ import annotations

import copy
import json
import string
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

from hypothesis import strategies as st

from flask_musiccallback.schemas import TRACK_ALIASES

CODES = (200, 400, 401, 408, 413, 429, 451, 500, 501, 531)
CALLBACK_TYPES = ("text", "first", "complete", "error", "failed")
TRACK_TEXT_FIELDS = (
    "id",
    "audio_url",
    "source_audio_url",
    "stream_audio_url",
    "source_stream_audio_url",
    "image_url",
    "source_image_url",
    "prompt",
    "model_name",
    "title",
    "tags",
)
#: Each field's spellings: its own name first, then the camelCase aliases seen on the wire.
SPELLINGS: dict[str, tuple[str, ...]] = {
    name: (name, *sorted(alias for alias, target in TRACK_ALIASES.items() if target == name))
    for name in (*TRACK_TEXT_FIELDS, "createTime")
}

#: Any JSON value, nested a little.
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)

#: Keys no schema reads, so that extra keys can be added anywhere without changing the meaning.
extra_keys = st.text(string.ascii_lowercase, min_size=3, max_size=10).map(lambda key: f"x_{key}")
extras = st.dictionaries(extra_keys, json_values, max_size=3)

task_ids = st.text(string.ascii_letters + string.digits + "*-_", min_size=1, max_size=40)
blank = st.sampled_from([None, ""])
urls = st.builds(
    lambda path: f"https://cdn.example.invalid/{path}", st.text(string.ascii_letters, max_size=12)
)
moments = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.none()
)
epoch_ms = moments.map(lambda moment: int(moment.replace(tzinfo=timezone.utc).timestamp() * 1000))
create_times = st.one_of(
    epoch_ms,
    epoch_ms.map(str),
    moments.map(lambda moment: moment.strftime("%Y-%m-%d %H:%M:%S")),
    moments.map(lambda moment: moment.isoformat() + "Z"),
    moments.map(lambda moment: moment.replace(tzinfo=timezone(timedelta(hours=8))).isoformat()),
)
durations = st.floats(min_value=0, max_value=36_000, allow_nan=False) | st.integers(0, 36_000)


@st.composite
def tracks(draw: st.DrawFn) -> dict[str, Any]:
    """One TRACK: each field missing, null, ``""`` or a value, under any of its spellings."""
    track: dict[str, Any] = {}
    for name in (*TRACK_TEXT_FIELDS, "createTime", "duration"):
        state = draw(st.sampled_from(["absent", "blank", "value"]))
        if state == "absent":
            continue
        key = draw(st.sampled_from(SPELLINGS.get(name, (name,))))
        if key in track:
            continue
        if state == "blank":
            track[key] = draw(blank)
        elif name == "createTime":
            track[key] = draw(create_times)
        elif name == "duration":
            track[key] = draw(durations | durations.map(str))
        elif name.endswith("_url"):
            track[key] = draw(urls)
        else:
            track[key] = draw(st.text(max_size=30).filter(bool))
    track.update(draw(extras))
    return track


@st.composite
def music_callbacks(draw: st.DrawFn) -> dict[str, Any]:
    """A music generation callback of any stage, shaped as either vendor sends it."""
    code = draw(st.sampled_from(CODES) | st.integers(-(2**31), 2**31 - 1))
    callback_type = draw(st.sampled_from(CALLBACK_TYPES))
    if draw(st.booleans()):
        callback_type = draw(st.sampled_from([callback_type.upper(), callback_type.title()]))
    data: dict[str, Any] = {"callbackType": callback_type}
    data[draw(st.sampled_from(["task_id", "taskId"]))] = draw(task_ids)
    tracks_state = draw(st.sampled_from(["list", "empty", "null", "absent"]))
    if tracks_state == "list":
        data["data"] = draw(st.lists(tracks(), max_size=3))
    elif tracks_state == "empty":
        data["data"] = []
    elif tracks_state == "null":
        data["data"] = None
    if callback_type.lower() in ("error", "failed") and draw(st.booleans()):
        data["error"] = draw(st.text(max_size=40))
    data.update(draw(extras))
    payload: dict[str, Any] = {"code": code, "msg": draw(st.text(max_size=40)), "data": data}
    payload.update(draw(extras))
    return payload


def _envelope(code: int, data: Any, **top: Any) -> dict[str, Any]:
    return {"code": code, "msg": "ok" if code == 200 else "failed", "data": data, **top}


@st.composite
def other_family_callbacks(draw: st.DrawFn) -> dict[str, Any]:
    """Lyrics, WAV, stem split, MIDI, video and cover callbacks, succeeding or failing."""
    task_id = draw(task_ids)
    ok = draw(st.booleans())
    code = 200 if ok else draw(st.sampled_from([400, 500, 501]))
    family = draw(st.sampled_from(["lyrics", "wav", "stems", "midi", "video", "cover"]))
    if family == "lyrics":
        key = draw(st.sampled_from(["taskId", "task_id"]))
        items = st.fixed_dictionaries(
            {"text": st.text(max_size=40), "title": st.text(max_size=20)},
            optional={
                "status": st.sampled_from(["complete", "failed"]),
                "errorMessage": st.text(max_size=20),
            },
        )
        data: Any = {key: task_id, "callbackType": "complete" if ok else "error"}
        data["data"] = draw(st.lists(items, max_size=2)) if ok else None
        return _envelope(code, data)
    if family == "wav":
        return _envelope(code, {"task_id": task_id, "audioWavUrl": draw(urls) if ok else None})
    if family == "stems":
        key = draw(st.sampled_from(["vocal_removal_info", "vocal_separation_info"]))
        names = ("instrumental_url", "vocal_url", "origin_url", "bass_url", "drums_url")
        info = {name: draw(urls) for name in names} if ok else None
        return _envelope(code, {"task_id": task_id, key: info})
    if family == "midi":
        number = st.floats(0, 600, allow_nan=False) | st.floats(0, 600, allow_nan=False).map(str)
        note = st.fixed_dictionaries(
            {
                "pitch": st.integers(0, 127),
                "start": number,
                "end": number,
                "velocity": st.integers(0, 127),
            }
        )
        instrument = st.fixed_dictionaries(
            {"name": st.text(max_size=10), "notes": st.lists(note, max_size=5)}
        )
        data = (
            {"state": "complete", "instruments": draw(st.lists(instrument, max_size=3))}
            if ok
            else None
        )
        return _envelope(code, data, task_id=task_id)
    if family == "video":
        return _envelope(code, {"task_id": task_id, "video_url": draw(urls) if ok else None})
    return _envelope(
        code, {"taskId": task_id, "images": draw(st.lists(urls, max_size=2)) if ok else None}
    )


@st.composite
def mutated(
    draw: st.DrawFn, bodies: Sequence[dict[str, Any]] | st.SearchStrategy[dict[str, Any]]
) -> dict[str, Any]:
    """One of ``bodies`` (or a body the strategy ``bodies`` draws) with the value of one key, at
    any depth, replaced by any JSON value: real traffic with one thing wrong, which every family's
    schema must refuse cleanly or read into a typed event."""
    source = bodies if isinstance(bodies, st.SearchStrategy) else st.sampled_from(bodies)
    payload = copy.deepcopy(draw(source))
    target: Any = payload
    while True:
        keys = list(target) if isinstance(target, dict) else list(range(len(target)))
        if not keys:
            return payload
        key = draw(st.sampled_from(keys))
        value = target[key]
        if isinstance(value, dict | list) and value and draw(st.booleans()):
            target = value
            continue
        target[key] = draw(json_values)
        return payload


def mutated_callbacks() -> st.SearchStrategy[dict[str, Any]]:
    """A real-looking music callback with one value, anywhere in it, replaced by any JSON value."""
    return mutated(music_callbacks())


def encode(payload: Any) -> bytes:
    return json.dumps(payload).encode()
