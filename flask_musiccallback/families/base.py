"""The seam every callback family plugs into: :class:`Family`, and the :class:`Families` an
extension reads.

The provider calls back with one envelope shape for many task kinds (music, lyrics, WAV, stems,
MIDI, video, cover, voice). The pipeline knows none of them: it asks the extension's
:class:`Families` which family a callback belongs to (:meth:`Families.route`), loads it with
that family's schema, keys the delivery by ``(task_id, family, stage)``, and sends the signal that
family names for the event's stage. Supporting another kind means one module that builds a
:class:`Family` and a ``music.families.register(...)`` call, not a change to the endpoint,
polling, replay or workers (docs/families.md).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any, Protocol, cast

from blinker import Signal
from marshmallow import Schema, ValidationError

from ..archive.media import Media
from ..stores.base import (
    COPY_PREFIX,
    MAX_STAGE_LENGTH,
    MAX_TASK_ID_LENGTH,
    UNREADABLE_PREFIX,
    Delivery,
    Store,
    copy_stage,
)
from ..stores.owners import claim_owner
from ..stores.tasks import TaskState

#: The query argument of the callback URL that names the family (``callback_url(family=...)``).
FAMILY_ARG = "family"

#: The pseudo-header a body kept as unreadable records the ``family=`` of its callback URL under,
#: so that ``replay --unreadable`` routes it as the endpoint would have.
FAMILY_HEADER = "Callback-Family"

#: How store keys that are not a family's start: kept unreadable bodies, and media copies
#: (:mod:`..archive.copies`, which keys them so).
RESERVED_PREFIXES = frozenset({UNREADABLE_PREFIX, COPY_PREFIX})

#: The stage of every family's failure.
FAILED = "failed"

#: The stage of a task's result, as every family spells it (music's ``Stage.COMPLETE`` too).
COMPLETE = "complete"


class Event(Protocol):
    """What the pipeline needs of any family's event: a task id and a stage to deduplicate on.

    The built-in families' events subclass :class:`~flask_musiccallback.events.FamilyEvent`,
    which has these and the other common fields; a host's own family may use any frozen class.
    """

    @property
    def task_id(self) -> str: ...

    @property
    def stage(self) -> str: ...

    @property
    def received_at(self) -> datetime: ...


@dataclass(frozen=True, slots=True)
class Record:
    """A task record fetched from a family's record endpoint, read as the callback it stands for.

    Polling turns a record into the very body the provider would have posted, so the event it
    loads, and what a persistent store keeps, are the same as a callback's.
    """

    task_id: str
    #: The record's status, upper-cased as the provider spells it (``PENDING``, ``SUCCESS``, ``1``).
    status: str
    #: The callback body the status stands for, or ``None`` while the task has no result yet.
    body: Mapping[str, Any] | None
    #: Whether the task will change no more, so polling it again is useless.
    final: bool


class Example(Protocol):
    """Builds a realistic callback body of a family (the simulator, the testing kit, the docs).

    ``reseller`` is ``"sunoapi"`` or ``"kie"``: the two spell some keys differently, and a host
    must be able to try both. ``count`` is how many results (tracks, lyrics, images) a success
    carries, where a family has several.
    """

    def __call__(
        self,
        stage: str,
        *,
        task_id: str,
        code: int | None = None,
        msg: str | None = None,
        reseller: str = "sunoapi",
        count: int = 2,
    ) -> dict[str, Any]: ...


def complete_or_failed(complete: Signal, failed: Signal) -> Mapping[str, Signal]:
    """The :attr:`Family.signals` of a family whose task ends once, in a result or a failure:
    every built-in family but music (four stages) and voice (a phrase first)."""
    return MappingProxyType({COMPLETE: complete, FAILED: failed})


def _nothing(payload: Mapping[str, Any]) -> bool:
    return False


def _no_media(event: Any) -> Sequence[Media]:
    return ()


@dataclass(frozen=True)
class Family:
    """One kind of callback: how to recognise it, read it, poll it, and announce its stages."""

    #: A short name: ``event.family``, the ``family=`` of a callback URL, the prefix of store
    #: keys, and what a Celery message names (a worker looks the family up by it).
    name: str
    #: The schema that defines the family's payload (and its OpenAPI description).
    schema: Schema
    #: Loads a payload into the family's event; raises ``ValidationError``. Usually
    #: ``schema.load``; a family may put a faster path in front of it.
    load: Callable[[Mapping[str, Any]], Any]
    #: The signal sent for a new delivery of each stage; its keys are the family's stages.
    signals: Mapping[str, Signal]
    #: Whether a body's keys name this family beyond doubt. Only then is it read by its shape:
    #: a body no family's keys name (most failures) goes by what the receiver knows of its task
    #: (:meth:`Families.route`). The default names nothing: such a family is reached by URL or
    #: by ``expect`` only.
    detect: Callable[[Mapping[str, Any]], bool] = _nothing
    #: For a stage, the stage whose processing makes a later delivery of it stale.
    superseded_by: Mapping[str, str] = field(default_factory=dict)
    #: Whether the store keys stages bare (``complete``) instead of ``name:stage``. Only the music
    #: family does: its keys predate families, and stores written before must keep deduplicating.
    bare_keys: bool = False
    #: The path of the family's record endpoint, polled with ``?taskId=``; ``None``: not pollable.
    record_path: str | None = None
    #: Reads a record endpoint's answer (the whole ``{code, msg, data}``) into a :class:`Record`;
    #: raises ``ValidationError`` for an answer that is no usable record.
    read_record: Callable[[Mapping[str, Any]], Record] | None = None
    #: Builds realistic bodies of the family (:class:`Example`), for the simulator and tests.
    example: Example | None = None
    #: The success stages after which the task is still open (music's ``text`` and ``first``,
    #: voice's ``phrase``): the task view records them and reconciliation keeps waiting. Every
    #: other success stage completes the task (:meth:`task_state`).
    ongoing: frozenset[str] = frozenset()
    #: The files a success event of the family carries, for the media archive
    #: (``MUSICCALLBACK_ARCHIVE``, docs/archive.md); never asked about a failure. None by default.
    media: Callable[[Any], Sequence[Media]] = _no_media

    @property
    def stages(self) -> tuple[str, ...]:
        """The family's stages, successes first, as its signals name them."""
        return tuple(str(stage) for stage in self.signals)

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
            stage=self.store_stage(event.stage),
            payload=payload,
            received_at=event.received_at,
            headers=headers or {},
            superseded_by=None if later is None else self.store_stage(later),
            body=body,
            owner=claim_owner() if owner is None else owner,
        )

    def task_state(self, stage: str) -> TaskState | None:
        """What a new delivery of ``stage`` makes of its task: ``failed``, ``complete``, or
        ``None`` for a stage of :attr:`ongoing`, after which the task stays open."""
        if stage == FAILED:
            return TaskState.FAILED
        return None if str(stage) in self.ongoing else TaskState.COMPLETE

    def reload(self, payload: Mapping[str, Any], received_at: datetime) -> Event:
        """Load a payload handed over or kept (a Celery worker, ``replay``) as it first arrived.

        Loading sets ``received_at`` to now; this restores when the delivery was received.
        Raises ``ValidationError``.
        """
        event: Event = self.load(payload)
        return cast(Event, dataclasses.replace(cast(Any, event), received_at=received_at))

    def store_stage(self, stage: str) -> str:
        """The stage as the store keys it: ``name:stage``, or bare for :attr:`bare_keys`."""
        return str(stage) if self.bare_keys else f"{self.name}:{stage}"


class Families:
    """The callback families one extension reads.

    Kept on the extension object (``music.families``), not in the process, so that two
    extensions in one process (two services mounted together, tests) read different families,
    and so that registering happens where the extension is built, before any app exists. A
    Celery worker builds the same extension from the same module, so it finds a family by the
    name the web process published.

    The first family registered is the *default*: a failure that nothing else places is its (the
    music family, for every extension). Families are asked about a body's shape in the reverse
    order of registration, so a family a host registers is asked before the built-in ones.
    """

    def __init__(self, *families: Family) -> None:
        self._asked: tuple[Family, ...] = ()
        self._named: dict[str, Family] = {}
        for family in families:
            self.register(family)

    def register(self, family: Family) -> None:
        """Read ``family`` too, asking it before the families registered earlier.

        Raises ``ValueError`` for a name already taken, or a second family keying its stages
        bare: either would mix two families' deliveries in the store; and for a name or stages
        so long that a store could not key the family's media copies.
        """
        if family.name in self._named:
            raise ValueError(f"A callback family named {family.name!r} is registered already.")
        # Kept unreadable bodies are keyed ``unreadable:<digest>`` and media copies
        # ``archive:<key>``: no family may key its own so.
        if ":" in family.name or not family.name or f"{family.name}:" in RESERVED_PREFIXES:
            raise ValueError(
                "A family's name must be non-empty, have no ':' and be neither 'unreadable' "
                "nor 'archive'."
            )
        longest = max((copy_stage(family.store_stage(stage)) for stage in family.stages), key=len)
        if len(longest) > MAX_STAGE_LENGTH:
            raise ValueError(
                f"A family's stages are keyed up to {MAX_STAGE_LENGTH} characters, its media "
                f"copies' too: {longest!r} is longer; shorten the family's name or stages."
            )
        if family.bare_keys and any(other.bare_keys for other in self._asked):
            raise ValueError("Only one callback family may key its stages bare.")
        self._named[family.name] = family
        self._asked = (family, *self._asked)

    def named(self, name: str) -> Family:
        """The family called ``name``; ``LookupError`` when none is registered."""
        try:
            return self._named[name]
        except KeyError:
            raise LookupError(
                f"No callback family named {name!r} is registered on this extension."
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._named

    @property
    def default(self) -> Family:
        """The family a failure goes to when nothing else places it: the first registered."""
        return self._asked[-1]

    def by_shape(self, payload: Mapping[str, Any]) -> Family | None:
        """The first family whose keys the body has (:attr:`Family.detect`), or ``None``."""
        for family in self._asked:
            if family.detect(payload):
                return family
        return None

    def route(
        self,
        payload: Mapping[str, Any],
        *,
        named: str | None = None,
        expected: Callable[[], str | None] = lambda: None,
    ) -> Family | None:
        """The family that reads a callback, by what is known of it, surest first.

        1. ``named``: the family the host put in the callback URL. Raises ``LookupError`` for a
           name no family has.
        2. The body's keys, when they name a family beyond doubt (a WAV link, a stem, lyrics).
        3. ``expected()``: the family the task was registered with (``music.expect``). Asked only
           here, so that the store is read only for a body its keys do not place.
        4. A failure (a ``code`` other than 200) goes to :attr:`default`.

        ``None`` when nothing places the body: no family reads it.

        A registered task's family comes after the keys, not before as the public contract lists
        them: where a body's keys name a family, no registration can make another family read it,
        and reading the registration first would cost a persistent store a round trip for every
        callback instead of for the few that need it.
        """
        if named is not None:
            return self.named(named)
        family = self.by_shape(payload)
        if family is not None:
            return family
        name = expected()
        if name is not None and name in self._named:
            return self._named[name]
        if is_failure(payload):
            return self.default
        return None

    def read(
        self,
        payload: Mapping[str, Any],
        *,
        named: str | None = None,
        expected: Callable[[], str | None] = lambda: None,
    ) -> tuple[Family, Any]:
        """The family that reads ``payload`` (:meth:`route`), and its event.

        Raises :class:`Unreadable` when no family reads it, with the family that tried and its
        errors: a ``family=`` naming no family, a body nothing places, a schema's refusal, or a
        task id no store can key a delivery by.
        """
        try:
            family = self.route(payload, named=named, expected=expected)
        except LookupError as exc:
            raise Unreadable(None, {FAMILY_ARG: [str(exc)]}) from None
        if family is None:
            raise Unreadable(None, {"_schema": ["No callback family reads this body."]})
        try:
            event = family.load(payload)
        except ValidationError as exc:
            messages = exc.messages
            raise Unreadable(
                family, messages if isinstance(messages, dict) else {"_schema": messages}
            ) from None
        task_id = event.task_id
        if len(task_id) > MAX_TASK_ID_LENGTH or not task_id.isprintable():
            message = f"A task id is at most {MAX_TASK_ID_LENGTH} printable characters."
            raise Unreadable(family, {"task_id": [message]})
        return family, event

    def keyed(self, stage_key: str) -> Family:
        """The family whose deliveries the store keys as ``stage_key`` (a kept delivery's stage).

        ``LookupError`` when no registered family keys stages that way.
        """
        name, colon, _ = stage_key.partition(":")
        if colon:
            return self.named(name)
        for family in self._asked:
            if family.bare_keys:
                return family
        raise LookupError(f"No callback family keys its deliveries as {stage_key!r}.")

    def __iter__(self) -> Iterator[Family]:
        """The families, in the order a body's shape is asked about."""
        return iter(self._asked)


class Unreadable(Exception):  # noqa: N818 - names what the body is
    """No family reads a body: ``family`` is the one that tried (``None`` when none did), and
    ``errors`` says why, as marshmallow's messages do."""

    def __init__(self, family: Family | None, errors: dict[str, Any]) -> None:
        super().__init__(errors)
        self.family = family
        self.errors = errors


def registered_family(store: Store, task_id: str | None) -> Callable[[], str | None]:
    """What :meth:`Families.route` asks, last, of a body its keys do not place: the family the
    body's task (``task_id``, :func:`find_task_id`) was registered with (``music.expect``), read
    from ``store`` only when asked."""

    def expected() -> str | None:
        record = store.task(task_id) if task_id else None
        return None if record is None else record.family

    return expected


def is_failure(payload: Mapping[str, Any]) -> bool:
    """Whether the envelope's ``code`` says the task failed: a number, or numeric text, not 200."""
    code = payload.get("code")
    if isinstance(code, str):
        try:
            code = int(code.strip())
        except ValueError:
            return False
    return isinstance(code, int) and not isinstance(code, bool) and code != 200


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
