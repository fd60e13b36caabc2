"""The music video family: one MP4 made from a generated track.

A success carries the video's link at ``data.video_url``, as both resellers document it;
``videoUrl``, the spelling of the task's record, is read as the same field, since camelCase keys
have leaked into other families' callbacks. A failure carries the key set to ``null`` (PROVIDER.md
section 4); either spelling names the family.

The link is taken as any non-empty string, not checked to be a URL: one of the vendor's own
examples holds a placeholder there, and refusing what the provider calls a success would make it
retry, then drop the callback, over a check the host can make itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from marshmallow import fields, post_load

from ..archive.media import Media
from ..events import FamilyEvent
from ..signals import video_failed, video_generated
from .base import COMPLETE, Family, complete_or_failed
from .envelope import (
    DataSchema,
    EnvelopeSchema,
    Text,
    common_fields,
    first_value,
    keys_detector,
    outcome,
)
from .examples import example_from, media_url
from .records import record_reader, result_at, word_statuses

VIDEO_NAME = "video"

#: The keys a video link arrives under, any of which names the family.
VIDEO_KEYS = ("video_url", "videoUrl")


@dataclass(frozen=True, slots=True, kw_only=True)
class VideoEvent(FamilyEvent):
    """A music video's callback: ``video_url`` on success (any non-empty string the provider
    sent, not necessarily a URL), ``None`` on failure."""

    family: ClassVar[str] = VIDEO_NAME

    video_url: str | None


class VideoDataSchema(DataSchema):
    video_url = Text("The MP4 file's link; `null` on failure. Not checked to be a URL.")
    videoUrl = Text("The MP4 file's link, as the task's record spells it.")  # noqa: N815


class VideoSchema(EnvelopeSchema):
    """A music video callback, loaded into a :class:`VideoEvent`."""

    data = fields.Nested(VideoDataSchema, load_default=None, allow_none=True)

    @post_load(pass_original=True)
    def make_event(
        self, loaded: dict[str, Any], original: Mapping[str, Any], **kwargs: Any
    ) -> VideoEvent:
        data: dict[str, Any] = loaded["data"] or {}
        url = first_value(VIDEO_KEYS, data)
        stage = outcome(
            loaded["code"],
            has_result=url is not None,
            at="video_url",
            missing="A success without its video link.",
        )
        return VideoEvent(**common_fields(loaded, original, data, stage), video_url=url)


video_schema = VideoSchema()


#: A video link's key in ``data``, whatever its value.
is_video = keys_detector(*VIDEO_KEYS)


def _example_data(stage: str, task_id: str, reseller: str, count: int) -> dict[str, Any]:
    url = media_url(task_id, "mp4") if stage == COMPLETE else None
    return {"task_id": task_id, "video_url": url}


#: A music video callback; both resellers spell it alike (``data.task_id``, ``video_url``).
example = example_from(
    _example_data,
    success="MP4 generated successfully.",
    failure="Music video generation failed",
    failure_code=400,
    count=1,
)


def media(event: VideoEvent) -> tuple[Media, ...]:
    """The video."""
    return (Media("video", "mp4", url=event.video_url),) if event.video_url else ()


VIDEO = Family(
    name=VIDEO_NAME,
    schema=video_schema,
    load=video_schema.load,
    signals=complete_or_failed(video_generated, video_failed),
    detect=is_video,
    record_path="/api/v1/mp4/record-info",
    read_record=record_reader(
        word_statuses("GENERATE_MP4_FAILED"),
        result_at("videoUrl", what="video link", sent_as="video_url"),
        failure_data={"video_url": None},
    ),
    example=example,
    media=media,
)
