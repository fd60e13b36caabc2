"""Callback families: which schema reads a payload, and which signal each of its stages sends.

The provider calls back with one envelope shape for many task kinds (music, lyrics, WAV, stems,
MIDI, video, cover). The pipeline knows none of them: it asks :func:`family_for` which family a
payload belongs to, loads it with that family's schema, and dispatches the signal that family names
for the event's stage. Supporting another kind later means one new module that builds a
:class:`Family` and calls :func:`register_family`, not a change to the endpoint.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any, Protocol, cast

from blinker import Signal
from marshmallow import Schema

from .events import Stage
from .schemas import callback_schema, load_callback
from .signals import all_tracks_generated, first_track_generated, task_failed, text_generated
from .stores.base import Delivery, claim_owner


class Event(Protocol):
    """What the pipeline needs of any family's event: a task id and a stage to deduplicate on."""

    @property
    def task_id(self) -> str: ...

    @property
    def stage(self) -> str: ...

    @property
    def received_at(self) -> datetime: ...


@dataclass(frozen=True)
class Family:
    """One kind of callback: how to recognise it, read it, and announce each of its stages."""

    #: A short name, used in logs and as a prefix of store keys for families other than music.
    name: str
    #: The schema that defines the family's payload (and its OpenAPI description).
    schema: Schema
    #: Loads a payload into the family's event; raises ``ValidationError``. Usually
    #: ``schema.load``; a family may put a faster path in front of it.
    load: Callable[[Mapping[str, Any]], Any]
    #: The signal sent for a new delivery of each stage.
    signals: Mapping[str, Signal]
    #: Whether a payload belongs to this family; the music family, last, takes whatever is left.
    detect: Callable[[Mapping[str, Any]], bool] = field(default=lambda payload: True)
    #: For a stage, the stage whose processing makes a later delivery of it stale.
    superseded_by: Mapping[str, str] = field(default_factory=dict)

    def delivery(
        self,
        event: Event,
        payload: Mapping[str, Any],
        headers: Mapping[str, str] | None = None,
        *,
        body: str | None = None,
        owner: str | None = None,
    ) -> Delivery:
        """What the store is handed for an event of this family; ``body`` is the payload's text,
        ``owner`` the claim's owner when the delivery was claimed already (a replay, a worker).

        Music stages are keyed bare (``complete``), other families' as ``family:stage``, so that a
        lyrics ``complete`` never deduplicates a music ``complete`` of the same task id.
        """
        later = self.superseded_by.get(event.stage)
        return Delivery(
            task_id=event.task_id,
            stage=self._store_stage(event.stage),
            payload=payload,
            received_at=event.received_at,
            headers=headers or {},
            superseded_by=None if later is None else self._store_stage(later),
            body=body,
            owner=claim_owner() if owner is None else owner,
        )

    def reload(self, payload: Mapping[str, Any], received_at: datetime) -> Event:
        """Load a payload handed over or kept (a Celery worker, ``replay``) as it first arrived.

        Loading sets ``received_at`` to now; this restores when the delivery was received.
        Raises ``ValidationError``.
        """
        event: Event = self.load(payload)
        return cast(Event, dataclasses.replace(cast(Any, event), received_at=received_at))

    def _store_stage(self, stage: str) -> str:
        return str(stage) if self.name == MUSIC_NAME else f"{self.name}:{stage}"


MUSIC_NAME = "music"

#: The music generation family: generate, extend, covers, instrumental and vocal additions.
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
    superseded_by=MappingProxyType({Stage.TEXT: Stage.COMPLETE, Stage.FIRST: Stage.COMPLETE}),
)

_families: list[Family] = [MUSIC]


def register_family(family: Family) -> None:
    """Recognise another callback family, checked before the music family (the catch-all)."""
    _families.insert(len(_families) - 1, family)


def family_named(name: str) -> Family:
    """The registered family called ``name``, to read a delivery handed over by name."""
    for family in _families:
        if family.name == name:
            return family
    raise LookupError(f"No callback family named {name!r} is registered in this process.")


def unregister_family(family: Family) -> None:
    """Stop recognising a family registered with :func:`register_family` (the music one stays)."""
    if family is not MUSIC and family in _families:
        _families.remove(family)


def family_for(payload: Mapping[str, Any]) -> Family:
    """The family whose ``detect`` accepts the payload; music when no other does."""
    for family in _families:
        if family.detect(payload):
            return family
    return MUSIC


def find_task_id(payload: Mapping[str, Any]) -> str | None:
    """The task id, wherever a family puts it, read before validation (for HMAC signatures)."""
    data = payload.get("data")
    if isinstance(data, dict):
        for key in ("task_id", "taskId"):
            value = data.get(key)
            if isinstance(value, str) and value:
                return value
    for key in ("task_id", "taskId"):
        value = payload.get(key)
        if isinstance(value, str) and value:
            return value
    return None
