"""The seam every callback family plugs into: :class:`Family`, and the :class:`Families` an
extension reads.

The provider calls back with one envelope shape for many task kinds (music, lyrics, WAV, stems,
MIDI, video, cover, voice). The pipeline knows none of them: it asks the extension's
:class:`Families` which family a payload belongs to, loads it with that family's schema, keys the
delivery by ``(task_id, family, stage)``, and sends the signal that family names for the event's
stage. Supporting another kind means one module that builds a :class:`Family` and a
``music.families.register(...)`` call, not a change to the endpoint, polling, replay or workers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, cast

from blinker import Signal
from marshmallow import Schema, ValidationError

from ..stores.base import Delivery
from ..stores.owners import claim_owner


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

    #: A short name: in logs, in Celery messages (a worker looks the family up by it), and as a
    #: prefix of store keys.
    name: str
    #: The schema that defines the family's payload (and its OpenAPI description).
    schema: Schema
    #: Loads a payload into the family's event; raises ``ValidationError``. Usually
    #: ``schema.load``; a family may put a faster path in front of it.
    load: Callable[[Mapping[str, Any]], Any]
    #: The signal sent for a new delivery of each stage.
    signals: Mapping[str, Signal]
    #: Whether a payload belongs to this family. Families registered later are asked first, so
    #: a family that accepts every payload (the music one) is the catch-all when registered first.
    detect: Callable[[Mapping[str, Any]], bool] = field(default=lambda payload: True)
    #: For a stage, the stage whose processing makes a later delivery of it stale.
    superseded_by: Mapping[str, str] = field(default_factory=dict)
    #: Whether the store keys stages bare (``complete``) instead of ``name:stage``. Only the music
    #: family does: its keys predate families, and stores written before must keep deduplicating.
    bare_keys: bool = False

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

        The stage is keyed with the family's name, so that a lyrics ``complete`` never
        deduplicates a music ``complete`` of the same task id.
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
        return str(stage) if self.bare_keys else f"{self.name}:{stage}"


class Families:
    """The callback families one extension reads, in the order they are asked about a payload.

    Kept on the extension object (``music.families``), not in the process, so that two
    extensions in one process (two services mounted together, tests) read different families,
    and so that registering happens where the extension is built, before any app exists. A
    Celery worker builds the same extension from the same module, so it finds a family by the
    name the web process published.
    """

    def __init__(self, *families: Family) -> None:
        self._asked: tuple[Family, ...] = ()
        self._named: dict[str, Family] = {}
        for family in families:
            self.register(family)

    def register(self, family: Family) -> None:
        """Read ``family`` too, asking it before the families registered earlier.

        Raises ``ValueError`` for a name already taken, or a second family keying its stages
        bare: either would mix two families' deliveries in the store.
        """
        if family.name in self._named:
            raise ValueError(f"A callback family named {family.name!r} is registered already.")
        if family.bare_keys and any(other.bare_keys for other in self._asked):
            raise ValueError("Only one callback family may key its stages bare.")
        self._named[family.name] = family
        self._asked = (family, *self._asked)

    def named(self, name: str) -> Family:
        """The family called ``name``, to read a delivery handed over by name (a worker)."""
        try:
            return self._named[name]
        except KeyError:
            raise LookupError(
                f"No callback family named {name!r} is registered on this extension."
            ) from None

    def reading(self, payload: Mapping[str, Any]) -> Family:
        """The first family whose ``detect`` accepts the payload; ``ValidationError`` if none."""
        for family in self._asked:
            if family.detect(payload):
                return family
        raise ValidationError("No callback family reads this payload.")

    def __iter__(self) -> Iterator[Family]:
        return iter(self._asked)


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
