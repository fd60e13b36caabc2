"""The parser accepts every shape of PROVIDER.md §2-3 and hands over strict, typed events."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest
from marshmallow import ValidationError

from flask_musiccallback import CallbackEvent, Stage, Track
from flask_musiccallback.schemas import load_callback
from flask_musiccallback.testing import build_callback


def envelope(data: Any, code: int = 200, msg: str = "ok") -> dict[str, Any]:
    return {"code": code, "msg": msg, "data": data}


def test_complete_callback_becomes_a_typed_event() -> None:
    payload = build_callback("complete", task_id="t-1", tracks=2)
    event = load_callback(payload)
    assert isinstance(event, CallbackEvent)
    assert event.task_id == "t-1"
    assert event.stage is Stage.COMPLETE
    assert event.code == 200
    assert event.ok is True
    assert event.callback_type == "complete"
    assert len(event.tracks) == 2
    assert all(isinstance(track, Track) for track in event.tracks)
    assert event.tracks[0].duration == 150.0
    assert event.received_at.tzinfo is not None


@pytest.mark.parametrize(
    ("callback_type", "stage"),
    [("text", Stage.TEXT), ("first", Stage.FIRST), ("complete", Stage.COMPLETE),
     ("error", Stage.FAILED), ("failed", Stage.FAILED)],
)
def test_every_callback_type_maps_to_its_stage(callback_type: str, stage: Stage) -> None:
    event = load_callback(envelope({"callbackType": callback_type, "task_id": "t", "data": []}))
    assert event.stage is stage
    assert event.callback_type == callback_type


def test_callback_type_is_read_case_insensitively_and_kept_as_sent() -> None:
    event = load_callback(envelope({"callbackType": "COMPLETE", "task_id": "t"}))
    assert event.stage is Stage.COMPLETE
    assert event.callback_type == "COMPLETE"


@pytest.mark.parametrize("code", [400, 401, 408, 413, 429, 451, 500, 501, 531, 999])
def test_any_code_but_200_is_a_failure_whatever_the_type_says(code: int) -> None:
    event = load_callback(envelope({"callbackType": "complete", "task_id": "t"}, code=code))
    assert event.stage is Stage.FAILED
    assert event.code == code
    assert event.ok is False


def test_failure_with_unknown_or_missing_type_is_still_a_failure() -> None:
    assert load_callback(envelope({"task_id": "t"}, code=500)).stage is Stage.FAILED
    event = load_callback(envelope({"callbackType": "weird", "task_id": "t"}, code=501))
    assert event.stage is Stage.FAILED
    assert event.callback_type == "weird"


def test_error_type_with_code_200_is_a_failure_that_is_not_ok() -> None:
    event = load_callback(envelope({"callbackType": "error", "task_id": "t"}))
    assert event.stage is Stage.FAILED
    assert event.ok is False


@pytest.mark.parametrize(
    "payload",
    [
        {"code": 200, "msg": "Text generation completed.",
         "data": {"callbackType": "text", "task_id": "2fac****9f72", "data": []}},
        {"code": 400, "msg": "Music generation failed",
         "data": {"callbackType": "error", "task_id": "2fac****9f72", "data": None}},
        {"code": 501, "msg": "Audio generation failed.",
         "data": {"callbackType": "error", "task_id": "2fac****9f72", "data": []}},
        {"code": 501, "msg": "Audio generation failed.",
         "data": {"callbackType": "error", "task_id": "2fac****9f72",
                  "error": "Generation failed due to technical issues"}},
    ],
)
def test_documented_examples_are_accepted(payload: dict[str, Any]) -> None:
    event = load_callback(payload)
    assert event.task_id == "2fac****9f72"
    assert event.tracks == ()


def test_failure_text_is_read_from_data_error() -> None:
    event = load_callback(
        envelope({"callbackType": "error", "task_id": "t", "error": "boom"}, code=501)
    )
    assert event.error == "boom"
    assert event.msg == "ok"


def test_task_id_may_come_as_task_id_camel_case() -> None:
    assert load_callback(envelope({"callbackType": "text", "taskId": "camel"})).task_id == "camel"


def test_real_first_callback_with_an_unfinished_second_track() -> None:
    payload = envelope(
        {
            "callbackType": "first",
            "task_id": "t",
            "data": [
                {"id": "a", "audio_url": "https://x/a.mp3", "createTime": 1758044664461,
                 "duration": 163.88, "title": "One"},
                {"id": "b", "audio_url": "", "stream_audio_url": "https://x/s/b",
                 "createTime": 1758044664461, "title": "Two"},
            ],
        }
    )
    first, second = load_callback(payload).tracks
    assert first.duration == 163.88
    assert first.created_at == datetime(2025, 9, 16, 17, 44, 24, 461000, tzinfo=timezone.utc)
    assert second.audio_url is None
    assert second.duration is None
    assert second.source_audio_url is None
    assert second.stream_audio_url == "https://x/s/b"


def test_camel_case_aliases_fill_the_same_fields() -> None:
    track = load_callback(
        envelope(
            {
                "callbackType": "complete",
                "task_id": "t",
                "data": [
                    {"audioUrl": "a", "sourceAudioUrl": "b", "streamAudioUrl": "c",
                     "sourceStreamAudioUrl": "d", "imageUrl": "e", "sourceImageUrl": "f",
                     "modelName": "chirp-v4"}
                ],
            }
        )
    ).tracks[0]
    assert (track.audio_url, track.source_audio_url, track.stream_audio_url) == ("a", "b", "c")
    assert (track.source_stream_audio_url, track.image_url, track.source_image_url) == (
        "d", "e", "f",
    )
    assert track.model_name == "chirp-v4"


def test_a_blank_alias_does_not_erase_a_value() -> None:
    track = load_callback(
        envelope(
            {"callbackType": "complete", "task_id": "t",
             "data": [{"audio_url": "https://x/a.mp3", "audioUrl": ""}]}
        )
    ).tracks[0]
    assert track.audio_url == "https://x/a.mp3"


def test_every_track_field_may_be_missing_null_or_blank() -> None:
    fields = ["id", "audio_url", "source_audio_url", "stream_audio_url",
              "source_stream_audio_url", "image_url", "source_image_url", "prompt",
              "model_name", "title", "tags", "createTime", "duration"]
    blank = dict.fromkeys(fields, "")
    null = dict.fromkeys(fields)
    event = load_callback(
        envelope({"callbackType": "first", "task_id": "t", "data": [{}, blank, null]})
    )
    assert event.tracks == (Track(), Track(), Track())


@pytest.mark.parametrize("tracks", [[], None, "absent"])
def test_track_list_may_be_empty_null_or_absent(tracks: Any) -> None:
    data: dict[str, Any] = {"callbackType": "error", "task_id": "t"}
    if tracks != "absent":
        data["data"] = tracks
    assert load_callback(envelope(data, code=501)).tracks == ()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1758044664461, datetime(2025, 9, 16, 17, 44, 24, 461000, tzinfo=timezone.utc)),
        ("1758044664461", datetime(2025, 9, 16, 17, 44, 24, 461000, tzinfo=timezone.utc)),
        ("2025-01-01 00:00:00", datetime(2025, 1, 1, tzinfo=timezone.utc)),
        ("2025-01-01T08:00:00+08:00", datetime(2025, 1, 1, tzinfo=timezone.utc)),
        ("2025-01-01T00:00:00Z", datetime(2025, 1, 1, tzinfo=timezone.utc)),
    ],
)
def test_create_time_is_an_aware_utc_datetime(value: Any, expected: datetime) -> None:
    track = load_callback(
        envelope({"callbackType": "complete", "task_id": "t", "data": [{"createTime": value}]})
    ).tracks[0]
    assert track.created_at == expected
    assert track.created_at is not None
    assert track.created_at.utcoffset() is not None
    assert track.created_at.utcoffset().total_seconds() == 0  # type: ignore[union-attr]


def test_numeric_string_duration_is_a_float() -> None:
    track = load_callback(
        envelope({"callbackType": "complete", "task_id": "t", "data": [{"duration": "163.88"}]})
    ).tracks[0]
    assert track.duration == 163.88


def test_unknown_keys_are_kept_in_raw_and_never_rejected() -> None:
    payload = build_callback("complete", task_id="t")
    payload["brand_new"] = {"nested": [1, 2]}
    payload["data"]["extra"] = "x"
    payload["data"]["data"][0]["lyrics_v2"] = "la la"
    event = load_callback(payload)
    assert event.raw["brand_new"] == {"nested": [1, 2]}
    assert event.raw["data"]["extra"] == "x"  # type: ignore[index]
    assert event.raw["data"]["data"][0]["lyrics_v2"] == "la la"  # type: ignore[index]


def test_event_and_tracks_are_immutable() -> None:
    event = load_callback(build_callback("complete"))
    with pytest.raises(AttributeError):
        event.task_id = "other"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        event.tracks[0].title = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        event.raw["code"] = 1  # type: ignore[index]


@pytest.mark.parametrize(
    ("payload", "error_path"),
    [
        (envelope({"callbackType": "complete"}), ("data", "task_id")),
        (envelope({"callbackType": "complete", "task_id": ""}), ("data", "task_id")),
        (envelope(None), ("data", "task_id")),
        (envelope({"task_id": "t"}), ("data", "callbackType")),
        (envelope({"task_id": "t", "callbackType": "halfway"}), ("data", "callbackType")),
        ({"msg": "no code", "data": {"task_id": "t", "callbackType": "text"}}, ("code",)),
        (envelope({"callbackType": "complete", "task_id": "t",
                   "data": [{"duration": "long"}]}), ("data", "data", 0, "duration")),
        (envelope({"callbackType": "complete", "task_id": "t",
                   "data": [{"createTime": "yesterday"}]}), ("data", "data", 0, "createTime")),
        (envelope({"callbackType": "complete", "task_id": "t",
                   "data": [{"createTime": True}]}), ("data", "data", 0, "createTime")),
        (envelope({"callbackType": "complete", "task_id": "t",
                   "data": [{"createTime": 10**30}]}), ("data", "data", 0, "createTime")),
        (envelope({"callbackType": "complete", "task_id": "t",
                   "data": [{"title": 12}]}), ("data", "data", 0, "title")),
        (envelope({"callbackType": "complete", "task_id": "t", "data": {"a": 1}}),
         ("data", "data")),
        (envelope({"callbackType": "complete", "task_id": "t", "data": ["x"]}),
         ("data", "data", 0)),
        (envelope({"callbackType": "complete", "task_id": 5}), ("data", "task_id")),
        ({"code": "two hundred", "data": {"task_id": "t", "callbackType": "text"}}, ("code",)),
        ({"code": 200, "data": "text"}, ("data",)),
    ],
)
def test_what_cannot_be_read_is_a_validation_error(
    payload: dict[str, Any], error_path: tuple[Any, ...]
) -> None:
    with pytest.raises(ValidationError) as caught:
        load_callback(payload)
    node: Any = caught.value.messages
    for key in error_path:
        assert key in node, (error_path, caught.value.messages)
        node = node[key]
