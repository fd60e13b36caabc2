"""The typed values a host application receives: ``Stage``, ``Track`` and ``CallbackEvent``.

They are frozen so that a receiver cannot change what the next receiver sees, and slotted because
one is built for every callback on the request path.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime


class Stage(str, enum.Enum):
    """The stage of a music generation task that a callback reports.

    A ``str`` enum so that ``event.stage == "complete"`` reads naturally and stages can be used as
    store keys without conversion.
    """

    TEXT = "text"
    FIRST = "first"
    COMPLETE = "complete"
    FAILED = "failed"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class Track:
    """One generated track.

    Every field may be ``None``: the provider fills them in as the task progresses (the second track
    of a ``first`` callback usually has no ``audio_url`` and no ``duration`` yet).
    """

    id: str | None = None
    audio_url: str | None = None
    source_audio_url: str | None = None
    stream_audio_url: str | None = None
    source_stream_audio_url: str | None = None
    image_url: str | None = None
    source_image_url: str | None = None
    prompt: str | None = None
    model_name: str | None = None
    title: str | None = None
    tags: str | None = None
    created_at: datetime | None = None
    duration: float | None = None


@dataclass(frozen=True, slots=True)
class CallbackEvent:
    """One callback of the music generation family, validated.

    ``raw`` is the JSON body as received, unknown keys included, so that nothing the provider adds
    later is lost to the host; ``callback_type`` is kept exactly as sent for the same reason, while
    ``stage`` is what the extension decided it means.
    """

    task_id: str
    stage: Stage
    code: int
    msg: str
    tracks: tuple[Track, ...]
    callback_type: str
    error: str | None
    raw: Mapping[str, object]
    received_at: datetime

    @property
    def ok(self) -> bool:
        """True when the provider reported success; ``code`` is the real signal, not the type."""
        return self.code == 200 and self.stage is not Stage.FAILED
