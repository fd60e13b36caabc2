"""The cover image family: the images the provider draws for a generated track (usually two).

A success carries their links as a list at ``data.images``, with the task id at ``data.taskId``;
both resellers document the same body. A failure (code 501 in the docs) carries ``images: null``
(PROVIDER.md section 4), so the key names the family whatever its value.

Blank or ``null`` entries of the list are left out rather than refused: the provider sends
blanks for "not there", and the other links of the callback are still the host's. An entry that
is not a string is refused, as a wrong type anywhere is.

The task's record answers ``successFlag`` as an integer: ``1`` for success, ``3`` for a failure
and ``0`` for pending. ``2`` is read as "not yet": sunoapi.org's record documentation calls it
"generating" for this family, where MIDI's calls it a failure, and a task read as failed too early
would stop being polled while it still runs. The spelled statuses that kie.ai's documentation
lists for this record are read too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from marshmallow import fields, post_load

from ..archive.media import Media
from ..events import FamilyEvent
from ..signals import cover_failed, cover_generated
from .base import COMPLETE, Family, complete_or_failed
from .envelope import DataSchema, EnvelopeSchema, Text, common_fields, keys_detector, outcome
from .examples import example_from, media_url
from .records import flag_statuses, record_reader, result_at, word_statuses

COVER_NAME = "cover"

#: The key the images arrive under, which names the family.
COVER_KEYS = ("images",)


@dataclass(frozen=True, slots=True, kw_only=True)
class CoverEvent(FamilyEvent):
    """A cover image callback: the images' links on success, none on failure."""

    family: ClassVar[str] = COVER_NAME

    images: tuple[str, ...]


class CoverDataSchema(DataSchema):
    images = fields.List(
        Text(),
        load_default=None,
        allow_none=True,
        metadata={"description": "The cover images' links; `null` on failure."},
    )


class CoverSchema(EnvelopeSchema):
    """A cover image callback, loaded into a :class:`CoverEvent`."""

    data = fields.Nested(CoverDataSchema, load_default=None, allow_none=True)

    @post_load(pass_original=True)
    def make_event(
        self, loaded: dict[str, Any], original: Mapping[str, Any], **kwargs: Any
    ) -> CoverEvent:
        data: dict[str, Any] = loaded["data"] or {}
        images = tuple(url for url in data.get("images") or () if url)
        stage = outcome(
            loaded["code"],
            has_result=bool(images),
            at="images",
            missing="A success without its images.",
        )
        return CoverEvent(**common_fields(loaded, original, data, stage), images=images)


cover_schema = CoverSchema()


#: The images' key in ``data``, whatever its value.
is_cover = keys_detector(*COVER_KEYS)


def _example_data(stage: str, task_id: str, reseller: str, count: int) -> dict[str, Any]:
    images = (
        [media_url(task_id, "png", f"cover-{index + 1}") for index in range(count)]
        if stage == COMPLETE
        else None
    )
    return {"taskId": task_id, "images": images}


#: A cover image callback with ``count`` images; both resellers spell it alike.
example = example_from(
    _example_data, success="success", failure="Cover generation failed", failure_code=501
)


def media(event: CoverEvent) -> tuple[Media, ...]:
    """Each cover image, numbered in the order sent."""
    return tuple(
        Media(f"cover-{number}", "png", url=url) for number, url in enumerate(event.images, 1)
    )


COVER = Family(
    name=COVER_NAME,
    schema=cover_schema,
    load=cover_schema.load,
    signals=complete_or_failed(cover_generated, cover_failed),
    detect=is_cover,
    record_path="/api/v1/suno/cover/record-info",
    read_record=record_reader(
        flag_statuses(failed=(3,), pending=(0, 2)) | word_statuses("GENERATE_COVER_FAILED"),
        result_at("images", what="cover images", response_only=True),
        failure_data={"images": None},
    ),
    example=example,
    media=media,
)
