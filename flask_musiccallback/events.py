"""The typed values a host application receives: ``Stage``, ``Track``, ``CallbackEvent``, and
``FamilyEvent``, the fields every family's event has in common.

They are frozen so that a receiver cannot change what the next receiver sees, and slotted because
one is built for every callback on the request path.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import ClassVar


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


#: The stage of every family's failure, the one stage all families share.
FAILED = Stage.FAILED.value


@dataclass(frozen=True, slots=True, kw_only=True)
class FamilyEvent:
    """What every family's event carries, whatever the task kind (API.md section 9).

    A family's event class subclasses it and adds its own typed fields; ``family`` is a class
    attribute, so an event says which family read it without a field to fill in. ``raw`` is the
    JSON body as received, unknown keys included, so that nothing the provider adds later is lost
    to the host. Keyword-only, so that a subclass may add fields without defaults.
    """

    #: The family's name (``"music"``, ``"lyrics"``, ...), also the prefix of its store keys.
    family: ClassVar[str]

    task_id: str
    #: ``"failed"`` for every family's failure; the success stages are the family's own.
    stage: str
    code: int
    msg: str
    raw: Mapping[str, object]
    received_at: datetime

    @property
    def ok(self) -> bool:
        """True when the provider reported success; ``code`` is the real signal, not the type."""
        return self.code == 200 and self.stage != FAILED


@dataclass(frozen=True, slots=True, kw_only=True)
class CallbackEvent(FamilyEvent):
    """One callback of the music generation family, validated.

    ``callback_type`` is kept exactly as sent, while ``stage`` is what the extension decided it
    means.
    """

    family: ClassVar[str] = "music"

    stage: Stage
    tracks: tuple[Track, ...]
    callback_type: str
    error: str | None
