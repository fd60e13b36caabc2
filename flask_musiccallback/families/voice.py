"""The Suno voice family: a custom voice made from the user's own recording, in two steps.

First the provider writes a phrase for the user to record (``validateInfo``, status
``wait_validating``); then, from that recording, it makes the voice (``voiceId``, status
``success``). Both steps call back with one flat body, ``{taskId, voiceId or validateInfo,
status, errorCode, errorMessage}``, spelled alike by both resellers (PROVIDER.md section 4), so
one family reads both and tells them apart by ``status``: the phrase is the stage ``phrase``
(``voice_phrase_ready``), the voice ``complete`` (``voice_generated``). A failure
(``voice_failed``) is any code but 200, or a status that says so: ``fail``,
``processing_validate_fail``, or another ending in ``fail`` or ``failed``, the form of every
failure the provider names. Any other status with code 200 is refused rather than guessed at (an
authenticated body is kept, to be read again once the status is known).

``voiceId`` or ``validateInfo`` names the family, and so does a ``status`` string next to an
``errorCode``: a failure may send both ids blank, but it still has those two.

The task can be polled at two record endpoints: ``/api/v1/voice/record-info`` for the voice and
``/api/v1/voice/validate-info`` for the phrase (:data:`VALIDATE_INFO_PATH`). Both answer that same
flat body under ``data``, with the same statuses, so the one :func:`read_record` reads either
answer; the family polls the first, the path a registered task is polled at. A phrase read from a
record is not final: the same task goes on to ``success`` or ``fail`` once the user's recording
is in, so polling goes on too (the phrase itself is dispatched once).
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar

from marshmallow import ValidationError, fields, post_load

from ..events import FamilyEvent
from ..schemas import StatusCode
from ..signals import voice_failed, voice_generated, voice_phrase_ready
from .base import COMPLETE, FAILED, Family, Record
from .envelope import (
    SUCCESS_CODE,
    DataSchema,
    EnvelopeSchema,
    Text,
    common_fields,
    data_of,
    has_any,
)
from .examples import example_from
from .records import record_reader

VOICE_NAME = "voice"
PHRASE = "phrase"

#: The record endpoint of the validation phrase; :func:`read_record` reads its answers too.
VALIDATE_INFO_PATH = "/api/v1/voice/validate-info"

#: The keys of a step's result, either of which names the family.
VOICE_KEYS = ("voiceId", "validateInfo")

#: The statuses of a step done, lower-cased, and the stage each one is.
DONE: Mapping[str, str] = MappingProxyType({"wait_validating": PHRASE, "success": COMPLETE})

#: The endings of every failed status, named or still to come.
FAILURE_ENDINGS = ("fail", "failed")

#: The statuses the docs name, lower-cased: those not in :data:`DONE` and not failures are
#: "not yet".
NAMED_STATUSES = (
    "wait_processing",
    "processing_validate",
    "processing_validate_fail",
    "wait_validating",
    "success",
    "fail",
)


def stage_of(status: str) -> str | None:
    """The stage a status reports, in any case; ``None`` for "not yet" or a status not known."""
    key = status.strip().lower()
    if key.endswith(FAILURE_ENDINGS):
        return FAILED
    return DONE.get(key)


@dataclass(frozen=True, slots=True, kw_only=True)
class VoiceEvent(FamilyEvent):
    """A Suno voice callback: the phrase to record (``validate_info``), the voice made
    (``voice_id``), or a failure with its ``error_code`` and ``error``; ``status`` as sent."""

    family: ClassVar[str] = VOICE_NAME

    voice_id: str | None
    validate_info: str | None
    status: str | None
    error_code: int | None
    error: str | None


class VoiceDataSchema(DataSchema):
    voiceId = Text("The custom voice's id, at status `success`.")  # noqa: N815
    validateInfo = Text("The phrase for the user to record, at `wait_validating`.")  # noqa: N815
    status = Text("The task's status, as sent: `wait_validating`, `success`, `fail`, ...")
    errorCode = StatusCode(  # noqa: N815
        load_default=None,
        allow_none=True,
        metadata={"description": "The failure's code; `0` or `null` when nothing failed."},
    )
    errorMessage = Text("What failed; blank when nothing did.")  # noqa: N815


def _stage(code: int, data: Mapping[str, Any]) -> str:
    """The stage of a loaded body; ``ValidationError`` for a success it cannot place or that
    lacks its step's result."""
    if code != SUCCESS_CODE:
        return FAILED
    status = data.get("status")
    stage = None if status is None else stage_of(status)
    if stage is None:
        raise ValidationError({"data": {"status": ["Not a status a voice callback reports."]}})
    if stage == PHRASE and not data.get("validateInfo"):
        raise ValidationError({"data": {"validateInfo": ["A phrase without its text."]}})
    if stage == COMPLETE and not data.get("voiceId"):
        raise ValidationError({"data": {"voiceId": ["A voice without its id."]}})
    return stage


class VoiceSchema(EnvelopeSchema):
    """A Suno voice callback, loaded into a :class:`VoiceEvent`."""

    data = fields.Nested(VoiceDataSchema, load_default=None, allow_none=True)

    @post_load(pass_original=True)
    def make_event(
        self, loaded: dict[str, Any], original: Mapping[str, Any], **kwargs: Any
    ) -> VoiceEvent:
        data: dict[str, Any] = loaded["data"] or {}
        return VoiceEvent(
            **common_fields(loaded, original, data, _stage(loaded["code"], data)),
            voice_id=data.get("voiceId"),
            validate_info=data.get("validateInfo"),
            status=data.get("status"),
            error_code=data.get("errorCode"),
            error=data.get("errorMessage"),
        )


voice_schema = VoiceSchema()


def is_voice(body: Mapping[str, Any]) -> bool:
    """A step's result key in ``data``, or a ``status`` string with an ``errorCode``."""
    data = data_of(body)
    return has_any(data, VOICE_KEYS) or (
        isinstance(data.get("status"), str) and "errorCode" in data
    )


class _RecordStatuses(Mapping[str, str | None]):
    """A record's statuses (upper-cased by the reader) read by :func:`stage_of`, so that polling
    places a status as the callback does; a status with no stage is missing, which the reader
    takes as "not yet"."""

    def __getitem__(self, status: str) -> str | None:
        stage = stage_of(status)
        if stage is None:
            raise KeyError(status)
        return stage

    def __iter__(self) -> Iterator[str]:
        return (status.upper() for status in NAMED_STATUSES if stage_of(status) is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)


#: The keys of a record's ``data`` that are also the callback's.
_CALLBACK_KEYS = ("status", *VOICE_KEYS, "errorCode", "errorMessage")


def _callback_data(response: Mapping[str, Any], data: Mapping[str, Any]) -> dict[str, Any]:
    return {key: data[key] for key in _CALLBACK_KEYS if key in data}


_read_record = record_reader(_RecordStatuses(), _callback_data)


def read_record(answer: Mapping[str, Any]) -> Record:
    """Read an answer of either record endpoint (``record-info`` or ``validate-info``).

    The record is the callback's own body, so a failure keeps its status, code and message as
    sent, beside the code and message the shared reader gives every failure; and a phrase is not
    final, since the task goes on once the user's recording is in.
    """
    record = _read_record(answer)
    if record.body is None:
        return record
    data = {**record.body["data"], **_callback_data({}, answer["data"])}
    return dataclasses.replace(
        record, body={**record.body, "data": data}, final=stage_of(record.status) != PHRASE
    )


#: The status each stage's example is sent with.
_EXAMPLE_STATUSES: Mapping[str, str] = MappingProxyType(
    {PHRASE: "wait_validating", COMPLETE: "success", FAILED: "fail"}
)


def _example_data(stage: str, task_id: str, reseller: str, count: int) -> dict[str, Any]:
    if stage not in _EXAMPLE_STATUSES:
        raise ValueError(f"The voice family has no stage {stage!r}.")
    failed = stage == FAILED
    if stage == PHRASE:
        result = {"validateInfo": "Neon rain on an empty street, sing it slow."}
    else:
        voice_id = f"voice_{uuid.uuid5(uuid.NAMESPACE_URL, task_id).hex[:12]}"
        result = {"voiceId": "" if failed else voice_id}
    return {
        "taskId": task_id,
        **result,
        "status": _EXAMPLE_STATUSES[stage],
        "errorCode": 500 if failed else 0,
        "errorMessage": "Verification audio did not match the validation phrase" if failed else "",
    }


#: A Suno voice callback for a stage (``phrase``, ``complete`` or ``failed``), shaped like the
#: vendor's examples; both resellers spell it alike. ``ValueError`` for another stage.
example = example_from(
    _example_data,
    success="success",
    failure="Voice generation failed",
    failure_code=400,
    count=1,
)


VOICE = Family(
    name=VOICE_NAME,
    schema=voice_schema,
    load=voice_schema.load,
    signals=MappingProxyType(
        {PHRASE: voice_phrase_ready, COMPLETE: voice_generated, FAILED: voice_failed}
    ),
    detect=is_voice,
    superseded_by=MappingProxyType({PHRASE: COMPLETE}),
    ongoing=frozenset({PHRASE}),
    record_path="/api/v1/voice/record-info",
    read_record=read_record,
    example=example,
)
