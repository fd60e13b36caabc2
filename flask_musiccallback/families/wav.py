"""The WAV conversion family: one lossless file made from a generated track.

A success carries the file's link, which sunoapi.org spells ``audioWavUrl``, kie.ai's Chinese
docs ``audio_wav_url``, and one integrator saw under ``response.audioWavUrl`` (PROVIDER.md
section 4); a failure carries the key set to ``null``. Any of the spellings names the family.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from marshmallow import EXCLUDE, Schema, fields, post_load

from ..archive.media import Media
from ..events import FamilyEvent
from ..signals import wav_converted, wav_failed
from .base import COMPLETE, Family, complete_or_failed
from .envelope import (
    DataSchema,
    EnvelopeSchema,
    Text,
    common_fields,
    data_of,
    first_value,
    has_any,
    outcome,
)
from .examples import example_from, media_url, task_id_key
from .records import record_reader, result_at, word_statuses

WAV_NAME = "wav"

#: The keys a WAV link arrives under, any of which names the family.
WAV_KEYS = ("audioWavUrl", "audio_wav_url")


@dataclass(frozen=True, slots=True, kw_only=True)
class WavEvent(FamilyEvent):
    """A WAV conversion's callback: ``wav_url`` on success, ``None`` on failure."""

    family: ClassVar[str] = WAV_NAME

    wav_url: str | None


class _WavResponseSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    audioWavUrl = Text("The WAV link, where one integrator saw it.")  # noqa: N815


class WavDataSchema(DataSchema):
    audioWavUrl = Text("The WAV file's link (sunoapi.org); `null` on failure.")  # noqa: N815
    audio_wav_url = Text("The WAV file's link, as kie.ai's Chinese docs spell it.")
    response = fields.Nested(_WavResponseSchema, load_default=None, allow_none=True)


class WavSchema(EnvelopeSchema):
    """A WAV conversion callback, loaded into a :class:`WavEvent`."""

    data = fields.Nested(WavDataSchema, load_default=None, allow_none=True)

    @post_load(pass_original=True)
    def make_event(
        self, loaded: dict[str, Any], original: Mapping[str, Any], **kwargs: Any
    ) -> WavEvent:
        data: dict[str, Any] = loaded["data"] or {}
        url = first_value(WAV_KEYS, data, data.get("response") or {})
        stage = outcome(
            loaded["code"],
            has_result=url is not None,
            at="audioWavUrl",
            missing="A success without its WAV link.",
        )
        return WavEvent(**common_fields(loaded, original, data, stage), wav_url=url)


wav_schema = WavSchema()


def is_wav(body: Mapping[str, Any]) -> bool:
    """A WAV link's key, at ``data`` or at ``data.response``."""
    data = data_of(body)
    if has_any(data, WAV_KEYS):
        return True
    response = data.get("response")
    return isinstance(response, dict) and "audioWavUrl" in response


def _example_data(stage: str, task_id: str, reseller: str, count: int) -> dict[str, Any]:
    key = "audio_wav_url" if reseller == "kie" else "audioWavUrl"
    url = media_url(task_id, "wav") if stage == COMPLETE else None
    return {task_id_key(reseller): task_id, key: url}


#: A WAV callback as each reseller sends it.
example = example_from(
    _example_data, success="success", failure="Internal Error - Please try again later", count=1
)


def media(event: WavEvent) -> tuple[Media, ...]:
    """The WAV file."""
    return (Media("audio", "wav", url=event.wav_url),) if event.wav_url else ()


WAV = Family(
    name=WAV_NAME,
    schema=wav_schema,
    load=wav_schema.load,
    signals=complete_or_failed(wav_converted, wav_failed),
    detect=is_wav,
    record_path="/api/v1/wav/record-info",
    read_record=record_reader(
        word_statuses("GENERATE_WAV_FAILED"),
        result_at("audioWavUrl", what="WAV link"),
        failure_data={"audioWavUrl": None},
    ),
    example=example,
    media=media,
)
