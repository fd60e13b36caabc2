"""The lyrics family: lyrics written from a prompt, usually two variants per task.

What arrives (PROVIDER.md section 4) is the music envelope, ``callbackType`` included, over a
``data.data`` list of ``{text, title, status, errorMessage}`` (kie.ai spells the last
``error_message``), with the task id at ``data.taskId`` (sunoapi.org) or ``data.task_id`` (kie.ai).

Why it is read as it is:

- A body is lyrics when an item of ``data.data`` has a ``text``: ``callbackType`` alone is
  music's too, and no music track carries a ``text``. A failure with ``data.data: null`` names no
  family; only its callback URL or its registered task places it.
- ``code`` decides the stage, as for music: kie.ai sends ``callbackType: "complete"`` with code
  400 for a failure. ``callbackType`` ``error`` or ``failed`` with code 200 is a failure too.
- Each variant keeps its own ``status`` and ``error``: one may fail while another is written, and
  the task is still ``complete``; the host decides what a failed variant means to it.
- A success without its list is refused: there is nothing in it for the host.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from marshmallow import EXCLUDE, Schema, ValidationError, fields, post_load

from ..events import FamilyEvent, Stage
from ..schemas import CALLBACK_TYPES
from ..signals import lyrics_failed, lyrics_generated
from .base import COMPLETE, Family, complete_or_failed
from .envelope import DataSchema, EnvelopeSchema, Text, common_fields, data_of, outcome
from .examples import example_from, task_id_key
from .records import record_reader, word_statuses

LYRICS_NAME = "lyrics"


@dataclass(frozen=True, slots=True)
class Lyrics:
    """One variant of a task's lyrics; ``status`` is the variant's own (``complete``/``failed``),
    ``error`` why it failed. Every field is ``None`` when not sent or blank."""

    text: str | None
    title: str | None
    status: str | None
    error: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class LyricsEvent(FamilyEvent):
    """A lyrics task's callback: its variants on success, usually none on failure."""

    family: ClassVar[str] = LYRICS_NAME

    lyrics: tuple[Lyrics, ...]


class LyricsItemSchema(Schema):
    """One variant of ``data.data``, loaded into a :class:`Lyrics`."""

    class Meta:
        unknown = EXCLUDE

    text = Text("The lyrics, with section tags such as `[Verse]`.")
    title = Text("A title suggested for them.")
    status = Text("This variant's status: `complete` or `failed`.")
    errorMessage = Text('Why this variant failed (sunoapi.org); `""` when it did not.')  # noqa: N815
    error_message = Text("Why this variant failed, as kie.ai spells it.")

    @post_load
    def make_lyrics(self, loaded: dict[str, Any], **kwargs: Any) -> Lyrics:
        return Lyrics(
            text=loaded["text"],
            title=loaded["title"],
            status=loaded["status"],
            error=loaded["errorMessage"] or loaded["error_message"],
        )


class LyricsDataSchema(DataSchema):
    callbackType = Text(  # noqa: N815
        "`complete`, or `error` on failure; kie.ai may send `complete` with a failure's code."
    )
    data = fields.List(
        fields.Nested(LyricsItemSchema),
        load_default=None,
        allow_none=True,
        metadata={"description": "The variants written; `null` on failure."},
    )


class LyricsSchema(EnvelopeSchema):
    """A lyrics callback, loaded into a :class:`LyricsEvent`."""

    data = fields.Nested(LyricsDataSchema, load_default=None, allow_none=True)

    @post_load(pass_original=True)
    def make_event(
        self, loaded: dict[str, Any], original: Mapping[str, Any], **kwargs: Any
    ) -> LyricsEvent:
        data: dict[str, Any] = loaded["data"] or {}
        items: list[Lyrics] | None = data.get("data")
        callback_type = (data.get("callbackType") or "").lower()
        stage = outcome(
            loaded["code"],
            has_result=bool(items),
            at="data",
            missing="A success without its lyrics.",
            failed=CALLBACK_TYPES.get(callback_type) is Stage.FAILED,
        )
        return LyricsEvent(
            **common_fields(loaded, original, data, stage), lyrics=tuple(items or ())
        )


lyrics_schema = LyricsSchema()


def is_lyrics(body: Mapping[str, Any]) -> bool:
    """An item of ``data.data`` with a ``text``: what no music track has."""
    items = data_of(body).get("data")
    return isinstance(items, list) and any(
        isinstance(item, dict) and "text" in item for item in items
    )


def _success_data(response: Mapping[str, Any], data: Mapping[str, Any]) -> dict[str, Any]:
    items = response.get("data")
    if not isinstance(items, list) or not items:
        raise ValidationError("The record holds no lyrics.")
    return {"callbackType": COMPLETE, "data": items}


#: Titles and lyrics of simulated variants.
_TEXTS = (
    ("Neon Rain", "[Verse]\nCity lights on the river\n[Chorus]\nNeon rain, wash the night away"),
    ("Paper Boats", "[Verse]\nFolded letters on the water\n[Chorus]\nPaper boats, carry me home"),
    ("Last Train", "[Verse]\nPlatform nine, the clock is slow\n[Chorus]\nLast train, take me home"),
)


def _example_data(stage: str, task_id: str, reseller: str, count: int) -> dict[str, Any]:
    kie = reseller == "kie"
    error_key = "error_message" if kie else "errorMessage"
    items = None
    if stage == COMPLETE:
        items = [
            {"text": text, "title": title, "status": COMPLETE, error_key: ""}
            for title, text in (_TEXTS[index % len(_TEXTS)] for index in range(count))
        ]
    callback_type = COMPLETE if stage == COMPLETE or kie else "error"
    return {"callbackType": callback_type, task_id_key(reseller): task_id, "data": items}


#: A lyrics callback with ``count`` variants as each reseller sends it: kie.ai snake-cases the
#: task id and the variants' ``error_message``, and reports a failure with
#: ``callbackType: "complete"``.
example = example_from(
    _example_data,
    success="All generated successfully.",
    failure="Lyrics generation failed",
    failure_code=400,
)


LYRICS = Family(
    name=LYRICS_NAME,
    schema=lyrics_schema,
    load=lyrics_schema.load,
    signals=complete_or_failed(lyrics_generated, lyrics_failed),
    detect=is_lyrics,
    record_path="/api/v1/lyrics/record-info",
    read_record=record_reader(
        word_statuses("GENERATE_LYRICS_FAILED", "SENSITIVE_WORD_ERROR"),
        _success_data,
        failure_data={"callbackType": "error", "data": None},
    ),
    example=example,
)
