"""The music generation family: generate, extend, covers, instrumental and vocal additions,
replace section, sounds and mashup (PROVIDER.md section 2).

The first member of every extension's :class:`~.base.Families`, and so its default: a failure that
nothing else places is read as music, as the public contract says. Its stages are keyed bare, as
stores kept them before families. Its schema is :mod:`flask_musiccallback.schemas`, which
predates the families and which the music-only tools (the OpenAPI aliases, the fast loader) use.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields

from ..archive.media import Media, readable
from ..events import CallbackEvent, Stage
from ..schemas import callback_schema, load_callback
from ..signals import all_tracks_generated, first_track_generated, task_failed, text_generated
from .base import Family, Record, is_failure
from .envelope import SUCCESS_CODE, data_of
from .examples import SIMULATED_MEDIA_ORIGIN, envelope_example
from .records import failure_code, status_of

MUSIC_NAME = "music"


def is_music(body: Mapping[str, Any]) -> bool:
    """A ``callbackType``, with tracks or as a success: what only music callbacks (and lyrics,
    asked first) carry. A failure without tracks says nothing of its family: lyrics fail alike."""
    data = data_of(body)
    if not isinstance(data.get("callbackType"), str):
        return False
    tracks = data.get("data")
    return not is_failure(body) or (isinstance(tracks, list) and bool(tracks))


# Polling: the music family's record is its own (PROVIDER.md section 6): a ``status`` naming a
# stage, and the tracks under ``response.sunoData`` in camelCase.

#: Record statuses and the stage each one is the same as; absent statuses dispatch nothing.
STATUS_STAGES: Mapping[str, Stage] = MappingProxyType(
    {
        "TEXT_SUCCESS": Stage.TEXT,
        "FIRST_SUCCESS": Stage.FIRST,
        "SUCCESS": Stage.COMPLETE,
        "CREATE_TASK_FAILED": Stage.FAILED,
        "GENERATE_AUDIO_FAILED": Stage.FAILED,
        "SENSITIVE_WORD_ERROR": Stage.FAILED,
    }
)

CALLBACK_EXCEPTION = "CALLBACK_EXCEPTION"

#: The failure code of a failed status when the record has no ``errorCode``: the code the matching
#: callback carries (PROVIDER.md section 3).
FAILURE_CODES: Mapping[str, int] = MappingProxyType(
    {
        "CREATE_TASK_FAILED": 400,
        "GENERATE_AUDIO_FAILED": 501,
        "SENSITIVE_WORD_ERROR": 400,
        CALLBACK_EXCEPTION: 500,
    }
)


def _has_audio(track: Mapping[str, Any]) -> bool:
    return bool(track.get("audioUrl") or track.get("audio_url"))


def stage_for(status: str, tracks: list[dict[str, Any]]) -> Stage | None:
    """The stage a record stands for: by its status, or by its content for CALLBACK_EXCEPTION
    (tracks that all have audio are ``complete``, some audio ``first``, none ``text``, and no
    tracks at all a failure)."""
    if status != CALLBACK_EXCEPTION:
        return STATUS_STAGES.get(status)
    ready = [_has_audio(track) for track in tracks]
    if not ready:
        return Stage.FAILED
    if all(ready):
        return Stage.COMPLETE
    return Stage.FIRST if any(ready) else Stage.TEXT


class _RecordResponseSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    taskId = fields.String(load_default=None, allow_none=True)  # noqa: N815
    sunoData = fields.List(fields.Dict(), load_default=None, allow_none=True)  # noqa: N815


class _RecordDataSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    taskId = fields.String(load_default=None, allow_none=True)  # noqa: N815
    status = fields.Raw(required=True)
    response = fields.Nested(_RecordResponseSchema, load_default=None, allow_none=True)
    errorCode = fields.Raw(load_default=None, allow_none=True)  # noqa: N815
    errorMessage = fields.String(load_default=None, allow_none=True)  # noqa: N815


class RecordInfoSchema(Schema):
    """A music record ``{code, msg, data: {taskId, status, response: {sunoData}, ...}}``."""

    class Meta:
        unknown = EXCLUDE

    code = fields.Integer(required=True)
    msg = fields.String(load_default="", allow_none=True)
    data = fields.Nested(_RecordDataSchema, required=True)


record_info_schema = RecordInfoSchema()


def read_record(answer: Mapping[str, Any]) -> Record:
    """A music record as the callback its status stands for.

    One status names one stage: a ``SUCCESS`` record of a task whose ``text`` and ``first`` were
    never seen stands for ``complete`` only, as when the provider itself skips them. The record's
    other keys (``param``, ``operationType``, ...) are kept in the body's ``data``, so a store
    keeps (and replays) a body of the same shape as a callback's.
    """
    loaded = record_info_schema.load(answer)
    data: dict[str, Any] = loaded["data"]
    response: dict[str, Any] = data["response"] or {}
    task_id = data["taskId"] or response.get("taskId")
    if not task_id:
        raise ValidationError({"data": {"taskId": ["Missing task id."]}})
    status = status_of(data["status"])
    if status is None:
        raise ValidationError({"data": {"status": ["Missing status."]}})
    tracks: list[dict[str, Any]] = response.get("sunoData") or []
    stage = stage_for(status, tracks)
    if stage is None:
        return Record(task_id=task_id, status=status, body=None, final=False)
    failed = stage is Stage.FAILED
    message = data["errorMessage"]
    body_data = {key: value for key, value in answer["data"].items() if key != "response"}
    body_data.update(callbackType="error" if failed else stage.value, task_id=task_id)
    body_data["data"] = tracks
    if failed and message:
        body_data["error"] = message
    code = SUCCESS_CODE
    if failed:
        code = failure_code(data["errorCode"], FAILURE_CODES.get(status, 500))
    body = {
        "code": code,
        "msg": (message or status) if failed else (loaded["msg"] or status),
        "data": body_data,
    }
    return Record(
        task_id=task_id, status=status, body=body, final=failed or stage is Stage.COMPLETE
    )


# Examples: what real traffic looks like (epoch-millisecond ``createTime``, every track field),
# not the friendlier shape of the vendor docs.

_MESSAGES = {
    "text": "Text generation completed.",
    "first": "First track generation completed.",
    "complete": "All generated successfully.",
    "failed": "Audio generation failed.",
}

_TITLES = ("Neon Harbor", "Paper Satellites", "Slow Tide", "Copper Morning", "Glass Orchard")


def _track(task_id: str, index: int, stage: str, created_ms: int) -> dict[str, Any]:
    audio_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{task_id}/{index}"))
    cdn = SIMULATED_MEDIA_ORIGIN
    finished = stage == "complete" or (stage == "first" and index == 0)
    return {
        "id": audio_id,
        "audio_url": f"{cdn}/{audio_id}.mp3" if finished else "",
        "source_audio_url": f"{cdn}/source/{audio_id}.mp3" if finished else "",
        "stream_audio_url": f"{cdn}/stream/{audio_id}",
        "source_stream_audio_url": f"{cdn}/source/stream/{audio_id}",
        "image_url": f"{cdn}/image_{audio_id}.jpeg",
        "source_image_url": f"{cdn}/source/image_{audio_id}.jpeg",
        "prompt": "[Verse]\nLights on the water, engines in the rain\n[Chorus]\nHold on",
        "model_name": "chirp-v4",
        "title": _TITLES[index % len(_TITLES)],
        "tags": "synthwave, dreamy, female vocals",
        "createTime": created_ms + index,
        **({"duration": round(150.0 + 13.88 * index, 2)} if finished else {}),
    }


def example(
    stage: str,
    *,
    task_id: str,
    code: int | None = None,
    msg: str | None = None,
    reseller: str = "sunoapi",
    count: int = 2,
) -> dict[str, Any]:
    """A music callback for ``stage`` (``text``, ``first``, ``complete``, ``failed``, or any
    ``callbackType`` to send as it is), with ``count`` tracks where the stage has tracks.

    The text stage and failures carry no tracks, as on the wire; a failure is sent with
    ``callbackType: "error"`` and code 501, as real traffic has it. kie.ai and sunoapi.org spell
    music callbacks alike.
    """
    callback_type = "error" if stage == "failed" else stage
    failing = callback_type in ("error", "failed")
    created_ms = int(time.time() * 1000)
    body = envelope_example(
        "failed" if failing else stage,
        None,
        code=code,
        msg=msg,
        success=_MESSAGES.get(stage, "OK"),
        failure=_MESSAGES["failed"],
        failure_code=501,
    )
    with_tracks = stage in ("first", "complete") and body["code"] == SUCCESS_CODE
    tracks = [_track(task_id, i, stage, created_ms) for i in range(count)] if with_tracks else []
    body["data"] = {"callbackType": callback_type, "task_id": task_id, "data": tracks}
    return body


def media(event: CallbackEvent) -> tuple[Media, ...]:
    """Each track's audio and cover image, named after the track's title and id."""
    files: list[Media] = []
    for number, track in enumerate(event.tracks, start=1):
        name = readable(track.title, track.id, fallback=f"track-{number}")
        audio = track.audio_url or track.source_audio_url
        image = track.image_url or track.source_image_url
        if audio:
            files.append(Media(name, "mp3", url=audio))
        if image:
            files.append(Media(f"{name}-cover", "jpeg", url=image))
    return tuple(files)


MUSIC = Family(
    name=MUSIC_NAME,
    schema=callback_schema,
    load=load_callback,
    signals=MappingProxyType(
        {
            Stage.TEXT: text_generated,
            Stage.FIRST: first_track_generated,
            Stage.COMPLETE: all_tracks_generated,
            Stage.FAILED: task_failed,
        }
    ),
    detect=is_music,
    superseded_by=MappingProxyType({Stage.TEXT: Stage.COMPLETE, Stage.FIRST: Stage.COMPLETE}),
    bare_keys=True,
    ongoing=frozenset({Stage.TEXT.value, Stage.FIRST.value}),
    record_path="/api/v1/generate/record-info",
    read_record=read_record,
    example=example,
    media=media,
)
