"""Marshmallow schemas that turn a music generation callback, as it really arrives, into an event.

Lenient in what they accept (camelCase aliases, ``""`` for "not ready", ``null`` or absent track
lists, epoch milliseconds or date-time strings), strict in what they hand over: a value that cannot
be read as its field's type is a validation error, which the endpoint answers with 422.

The schema instances are built once, at import, and shared: marshmallow schemas are safe to reuse
across threads for ``load`` and building one costs more than a whole callback.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from datetime import datetime, timezone
from types import MappingProxyType
from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields, post_load, pre_load, validate

from .events import CallbackEvent, Stage, Track

#: camelCase spellings seen leaking into callbacks, mapped to the field they stand for.
TRACK_ALIASES: Mapping[str, str] = MappingProxyType(
    {
        "audioUrl": "audio_url",
        "sourceAudioUrl": "source_audio_url",
        "streamAudioUrl": "stream_audio_url",
        "sourceStreamAudioUrl": "source_stream_audio_url",
        "imageUrl": "image_url",
        "sourceImageUrl": "source_image_url",
        "modelName": "model_name",
        "create_time": "createTime",
        "created_at": "createTime",
        "createdAt": "createTime",
    }
)

#: ``callbackType`` values (lower-cased) and the stage each one means when ``code`` is 200.
CALLBACK_TYPES: Mapping[str, Stage] = MappingProxyType(
    {
        "text": Stage.TEXT,
        "first": Stage.FIRST,
        "complete": Stage.COMPLETE,
        "error": Stage.FAILED,
        "failed": Stage.FAILED,
    }
)


class Timestamp(fields.Field):  # type: ignore[type-arg]
    """A creation time sent as epoch milliseconds (real traffic) or a date-time string (the docs).

    Always loads an aware UTC datetime; a string that names no zone is read as UTC, which is what
    the provider means by it.
    """

    default_error_messages = {  # noqa: RUF012 - marshmallow merges it per class
        "invalid": "Not a valid epoch-milliseconds time or date-time string."
    }

    def _deserialize(
        self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any
    ) -> datetime:
        if isinstance(value, bool):
            raise self.make_error("invalid")
        if isinstance(value, str):
            text = value.strip()
            try:
                value = float(text)
            except ValueError:
                return self._from_text(text)
        if isinstance(value, int | float):
            return self._from_epoch_ms(value)
        raise self.make_error("invalid")

    def _from_epoch_ms(self, value: float) -> datetime:
        try:
            if not math.isfinite(value):
                raise ValueError
            return datetime.fromtimestamp(value / 1000, tz=timezone.utc)
        except (OverflowError, ValueError, OSError) as exc:
            raise self.make_error("invalid") from exc

    def _from_text(self, text: str) -> datetime:
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            moment = datetime.fromisoformat(text)
        except ValueError as exc:
            raise self.make_error("invalid") from exc
        if moment.tzinfo is None:
            return moment.replace(tzinfo=timezone.utc)
        return moment.astimezone(timezone.utc)


class StatusCode(fields.Integer):
    """The envelope's ``code``: a whole number in a 32-bit range, sent as a number or a string.

    ``200.5`` must not become a success by truncation, and a code of four hundred digits is no
    status a store or a host could keep.
    """

    #: The range every SQL integer column and every host's ``int`` holds.
    BOUNDS = validate.Range(min=-(2**31), max=2**31 - 1)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(validate=self.BOUNDS, **kwargs)

    def _validated(self, value: Any) -> int:
        code = super()._validated(value)
        if isinstance(value, float) and value != code:
            raise self.make_error("invalid", input=value)
        return code


def _text(description: str | None = None) -> fields.String:
    metadata = {"description": description} if description else {}
    return fields.String(load_default=None, allow_none=True, metadata=metadata)


class TrackSchema(Schema):
    """One TRACK object; every field optional, ``""`` read as "not there yet"."""

    class Meta:
        unknown = EXCLUDE

    id = _text("Audio id.")
    audio_url = _text("MP3 download link; empty until the track is finished.")
    source_audio_url = _text("Upstream audio link.")
    stream_audio_url = _text("Streaming link, available before `audio_url`.")
    source_stream_audio_url = _text("Upstream streaming link.")
    image_url = _text("Cover image link.")
    source_image_url = _text("Upstream cover image link.")
    prompt = _text("Prompt or lyrics used.")
    model_name = _text("Model, e.g. `chirp-v4`.")
    title = _text()
    tags = _text("Comma-separated style tags.")
    created_at = Timestamp(
        data_key="createTime",
        load_default=None,
        allow_none=True,
        metadata={"description": "Epoch milliseconds, or a date-time string (UTC if no zone)."},
    )
    duration = fields.Float(
        load_default=None,
        allow_none=True,
        metadata={"description": "Seconds; numeric strings are accepted too."},
    )

    @pre_load
    def normalise(self, data: Any, **kwargs: Any) -> Any:
        """Fold camelCase aliases into their field and blank strings into ``None``."""
        if not isinstance(data, dict):
            return data  # marshmallow reports the wrong type itself
        return self.normalise_keys(data)

    @staticmethod
    def normalise_keys(data: Mapping[str, Any]) -> dict[str, Any]:
        """The track with aliases folded and ``""`` as ``None``; an alias never blanks a value."""
        out: dict[str, Any] = {}
        for key, value in data.items():
            key = TRACK_ALIASES.get(key, key)
            if value == "" and isinstance(value, str):
                value = None
            if value is None and out.get(key) is not None:
                continue
            out[key] = value
        return out

    @post_load
    def make_track(self, data: dict[str, Any], **kwargs: Any) -> Track:
        return Track(**data)


class TaskDataSchema(Schema):
    """The ``data`` object of the envelope: stage, task id, tracks, failure text."""

    class Meta:
        unknown = EXCLUDE

    callbackType = _text(  # noqa: N815
        "`text`, `first`, `complete`, or `error`/`failed` (any case). Required with code 200; "
        "with any other code the callback is a failure whatever it says."
    )
    task_id = _text("The task id returned at submission.")
    taskId = _text("The task id, as some payloads spell it.")  # noqa: N815
    data = fields.List(
        fields.Nested(TrackSchema),
        load_default=None,
        allow_none=True,
        metadata={"description": "The tracks; `[]`, `null` or absent at the text stage."},
    )
    error = _text("Why the task failed, on some failures.")


class CallbackSchema(Schema):
    """The whole callback envelope ``{code, msg, data}``, loaded into a :class:`CallbackEvent`."""

    class Meta:
        unknown = EXCLUDE

    code = StatusCode(
        required=True,
        metadata={"description": "200 is success; any other code is a failure."},
    )
    msg = fields.String(load_default="", allow_none=True, metadata={"description": "Status text."})
    data = fields.Nested(TaskDataSchema, load_default=None, allow_none=True)
    task_id = _text("The task id, where the MIDI family puts it.")
    taskId = _text("The task id, top-level spelling.")  # noqa: N815

    @post_load(pass_original=True)
    def make_event(
        self, loaded: dict[str, Any], original: Mapping[str, Any], **kwargs: Any
    ) -> CallbackEvent:
        return _event(loaded, original)


def _event(loaded: dict[str, Any], original: Mapping[str, Any]) -> CallbackEvent:
    """Decide the stage and build the event from a loaded envelope (both loaders end here)."""
    data: dict[str, Any] = loaded["data"] or {}
    task_id = data.get("task_id") or data.get("taskId") or loaded["task_id"] or loaded["taskId"]
    if not task_id:
        raise ValidationError({"data": {"task_id": ["Missing task id."]}})
    code: int = loaded["code"]
    callback_type: str = data.get("callbackType") or ""
    stage = CALLBACK_TYPES.get(callback_type.lower())
    if code != 200:
        stage = Stage.FAILED
    elif stage is None:
        message = "Unknown callbackType." if callback_type else "Missing callbackType."
        raise ValidationError({"data": {"callbackType": [message]}})
    tracks = data.get("data") or ()
    return CallbackEvent(
        task_id=task_id,
        stage=stage,
        code=code,
        msg=loaded["msg"] or "",
        tracks=tuple(tracks),
        callback_type=callback_type,
        error=data.get("error"),
        raw=MappingProxyType(original) if isinstance(original, dict) else original,
        received_at=datetime.now(timezone.utc),
    )


#: The one shared instance the endpoint, polling and replay load callbacks with.
callback_schema = CallbackSchema()


def load_callback(payload: Mapping[str, Any]) -> CallbackEvent:
    """Validate one music callback body; raises :class:`marshmallow.ValidationError`.

    Well-formed traffic, with every value already of its field's JSON type, takes a direct path
    that builds the same event several times faster than a full schema load. Anything else
    (numeric strings, date-time strings, wrong types, missing parts) goes through
    :data:`callback_schema`, which stays the one definition of what is accepted and of every error
    message; the test suite checks that both paths agree on every shape it generates.
    """
    loaded = _fast_envelope(payload)
    if loaded is None:
        event: CallbackEvent = callback_schema.load(payload)
        return event
    return _event(loaded, payload)


#: The largest whole number a float holds without overflowing (its value is rounded, as the
#: schema's ``Float`` rounds it).
_MAX_FLOAT_INT = int(sys.float_info.max)
_MAX_EPOCH_MS = 253402300799999  # 9999-12-31T23:59:59.999Z, the last moment datetime can hold
_TEXT, _TIME, _NUMBER = range(3)


def _wire_fields() -> dict[str, tuple[str, int]]:
    """Every key a track may carry (aliases too), to its attribute and kind, from the schema."""
    kinds: dict[str, tuple[str, int]] = {}
    for name, field in TrackSchema().fields.items():
        if isinstance(field, fields.String):
            kind = _TEXT
        else:
            kind = _TIME if isinstance(field, Timestamp) else _NUMBER
        kinds[field.data_key or name] = (name, kind)
    for alias, key in TRACK_ALIASES.items():
        kinds[alias] = kinds[key]
    return kinds


_WIRE_FIELDS = _wire_fields()

#: The keys a track carries on the wire, as the provider spells them (aliases excluded).
TRACK_WIRE_KEYS = tuple(field.data_key or name for name, field in TrackSchema().fields.items())


_CODE_MIN, _CODE_MAX = StatusCode.BOUNDS.min, StatusCode.BOUNDS.max


def _optional_text(value: Any) -> bool:
    return value is None or type(value) is str


def _fast_envelope(payload: Mapping[str, Any]) -> dict[str, Any] | None:
    """The envelope loaded without marshmallow, or ``None`` when the schema must decide."""
    code = payload.get("code")
    msg = payload.get("msg")
    data = payload.get("data")
    if type(code) is not int or not _CODE_MIN <= code <= _CODE_MAX:
        return None
    if not _optional_text(msg) or type(data) is not dict:
        return None
    top_task_id = payload.get("task_id")
    top_task_id_camel = payload.get("taskId")
    if not (_optional_text(top_task_id) and _optional_text(top_task_id_camel)):
        return None
    loaded_data: dict[str, Any] = {}
    for key in ("callbackType", "task_id", "taskId", "error"):
        value = data.get(key)
        if not _optional_text(value):
            return None
        loaded_data[key] = value
    items = data.get("data")
    if items is None:
        loaded_data["data"] = None
    elif type(items) is list:
        tracks = []
        for item in items:
            track = _fast_track(item)
            if track is None:
                return None
            tracks.append(track)
        loaded_data["data"] = tracks
    else:
        return None
    return {
        "code": code,
        "msg": msg,
        "data": loaded_data,
        "task_id": top_task_id,
        "taskId": top_task_id_camel,
    }


def _fast_track(item: Any) -> Track | None:
    """A track whose values all have their JSON type already, as ``TrackSchema`` would load it."""
    if type(item) is not dict:
        return None
    values: dict[str, Any] = {}
    for key, value in item.items():
        known = _WIRE_FIELDS.get(key)
        if known is None or value is None or value == "":
            continue  # unknown, or "not there yet": a blank never overwrites a value
        name, kind = known
        if kind == _TEXT:
            if type(value) is not str:
                return None
            values[name] = value
        elif kind == _TIME:
            if type(value) is not int or not 0 <= value <= _MAX_EPOCH_MS:
                return None
            values[name] = datetime.fromtimestamp(value / 1000, tz=timezone.utc)
        elif type(value) is float and math.isfinite(value):
            values[name] = value
        elif type(value) is int and -_MAX_FLOAT_INT <= value <= _MAX_FLOAT_INT:
            values[name] = float(value)
        else:
            return None  # a whole number no float holds is the schema's error to report
    return Track(**values)
