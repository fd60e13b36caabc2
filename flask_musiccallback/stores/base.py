"""The store contract every deduplication store fulfils.

The contract is *claim, then complete or release*: :meth:`Store.claim` atomically takes the key
``(task_id, stage)`` for one delivery, the receivers run, and then the delivery is marked done
(:meth:`Store.complete`), given back so a retry runs again (:meth:`Store.release`), or kept as
failed after an acknowledged receiver error (:meth:`Store.fail`). Marking before processing loses
an event when a receiver crashes; checking before inserting lets concurrent duplicates through.
Both are ruled out by doing the claim in one atomic step of the backend.

Every claim is held by an owner of its own (:attr:`Delivery.owner`: this process and a random
token), and every later step names it. So a step whose answer was lost on the way back (the
backend did it, the connection broke before saying so) is recognised as done by that same owner
when it is sent again, instead of being refused as somebody else's; and a step of an owner that
lost its claim (its lease ran out, a replay took the delivery over) changes nothing.

Besides deliveries, every store records the tasks the host submitted (:meth:`Store.expect`,
:mod:`.tasks`), and a persistent store keeps the authenticated bodies no callback family could
read (:meth:`PersistentStore.keep_unreadable`), so that they can be read again later.

A store class never imports the view: the endpoint, polling and replay all talk to it through this
interface only.

A backend's errors are translated in one place, as the ``limits`` library's storage base does:
a store names its backend's exception types (:attr:`Store.base_exceptions`), and every method of
the contract a store class defines is wrapped once, when the class is created, so that those
errors leave it as :class:`StoreUnavailable` (the endpoint answers 503 and the provider retries).
No method catches and re-raises them by hand. docs/store-contract.md is this contract for
someone writing a store of their own.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import json
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar
from urllib.parse import parse_qs

from ..redact import redact_url, redact_url_secrets
from .owners import claim_owner
from .tasks import TaskChange, TaskRecord, TaskState

if TYPE_CHECKING:
    from flask import Flask

_Method = TypeVar("_Method", bound=Callable[..., Any])

#: Seconds a processing claim is held before another process may take it over (persistent stores).
DEFAULT_LEASE = 300

#: Seconds a persistent store waits on its server, to connect and then for each answer, before the
#: delivery is answered 503 (``?timeout=SECONDS``). A hung server costs a delivery at most two
#: such waits (its claim, and its completion, which then waits in the write-back), well within the
#: 15 s the provider waits for an answer, or the 10 s some of its callbacks allow.
DEFAULT_TIMEOUT = 3.0

#: Deliveries a prune deletes per step (a transaction, a pipeline): a step holds no lock and
#: no memory for longer than a few thousand rows take, however many expired.
PRUNE_BATCH = 2000

#: The longest rest between two steps of a prune, in seconds (each rest is as long as the step
#: before it took, up to this: :func:`paced`).
PRUNE_REST = 0.1

#: The longest task id every store can key a delivery by (the SQL store's column holds 255).
MAX_TASK_ID_LENGTH = 255

#: The longest stage every store can key a delivery by (the SQL store's column holds 64).
MAX_STAGE_LENGTH = 64

#: How the stage of a kept unreadable body starts (:func:`unreadable_stage`).
UNREADABLE_PREFIX = "unreadable:"

#: How the stage of a media copy starts (:mod:`..archive.copies`): ``archive:`` and the key of
#: the event whose media it copies.
COPY_PREFIX = "archive:"

#: The longest error text a persistent store keeps with a delivery.
MAX_ERROR_LENGTH = 4000


class ClaimResult(str, enum.Enum):
    """What :meth:`Store.claim` decided; the non-claimed values are the ``reason`` of
    ``callback_duplicate``."""

    CLAIMED = "claimed"
    DUPLICATE = "duplicate"
    IN_PROGRESS = "in_progress"
    STALE = "stale"


@dataclass(frozen=True, slots=True)
class Delivery:
    """One accepted callback as the store sees it: its key, and what a persistent store keeps."""

    task_id: str
    stage: str
    payload: Mapping[str, Any]
    received_at: datetime
    #: The request headers worth keeping, secrets already redacted.
    headers: Mapping[str, str] = field(default_factory=dict)
    #: The stage of the same task whose processing makes this delivery stale (``complete`` for
    #: ``text`` and ``first``), or ``None``.
    superseded_by: str | None = None
    #: The JSON text ``payload`` was parsed from, when the caller has it (the request body).
    body: str | None = None
    #: Who holds, or is to hold, the delivery's claim: every step of the store names it.
    owner: str = field(default_factory=claim_owner)

    def payload_json(self) -> str:
        """The payload as JSON text, for a store that keeps it.

        The body as received when there is one: it is the payload, word for word, and writing it
        as it is spares serialising the payload again on the request path.
        """
        if self.body is not None:
            return self.body
        return json.dumps(self.payload, separators=(",", ":"), default=_plain_mapping)


def _plain_mapping(value: object) -> dict[str, Any]:
    """A read-only mapping (an event's ``raw``) as the dict JSON can write; nothing else is."""
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


@dataclass(frozen=True, slots=True)
class StoreHealth:
    """What :meth:`Store.check` found: how long the backend takes to answer, and whether what
    the store keeps its data in is there (``flask musiccallback doctor`` reports it)."""

    #: Seconds of one request to the backend and back; ``None`` for a store in this process.
    round_trip: float | None
    #: What the store found, in a few words: its tables, its keyspace.
    found: str
    #: What the store needs and did not find (a table), empty when it is ready.
    missing: tuple[str, ...] = ()
    #: Whether the store creates what is missing itself, at its first use.
    creates_missing: bool = False
    #: What works now but may lose or repeat deliveries later (an eviction policy).
    warnings: tuple[str, ...] = ()


class StoreError(Exception):
    """The store cannot be used as configured."""


class StoreUnavailable(StoreError):  # noqa: N818 - reads as a state: "the store is unavailable"
    """The backend cannot be reached; the endpoint answers 503 so that the provider retries."""

    def __init__(self, message: str, *, reached: bool = True) -> None:
        super().__init__(message)
        #: Whether the call may have reached the backend, and its answer been lost; ``False``
        #: when no connection could be had, so the backend did nothing.
        self.reached = reached


class NotReached(Exception):  # noqa: N818 - says what happened, as StoreUnavailable does
    """Raised by a store, ``from`` its backend's error, when nothing could be sent (no connection
    could be had): the boundary then says ``reached=False``, and no claim is given back later.

    Optional: any other backend error is taken as one that may have reached the backend, which
    costs a needless give-back at worst.
    """


#: The methods of the contract whose backend errors are translated at the boundary.
_BOUNDARY = frozenset(
    {"record_stage", "tasks", "overdue", "claim_task", "release_task", "remember_signature"}
    | {"claim", "start", "defer", "complete", "release", "fail", "expect", "task"}
    | {"list", "get", "prune", "reclaim", "pending", "keep_unreadable", "delete", "check"}
)


def _translated(method: _Method) -> _Method:
    """``method``, its store's backend errors leaving it as :class:`StoreUnavailable`.

    The ``except`` clauses are evaluated only when something was raised: a call that succeeds
    pays one frame and nothing else.
    """

    @functools.wraps(method)
    def translated(store: Store, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(store, *args, **kwargs)
        except NotReached as exc:
            cause = exc.__cause__ or exc
            raise store.unavailable(cause, reached=False) from cause
        except store.base_exceptions as exc:
            raise store.unavailable(exc) from exc

    return translated  # type: ignore[return-value]


class Store(ABC):
    """Deduplicates deliveries per ``(task_id, stage)`` for ``ttl`` seconds.

    Implementations must make :meth:`claim` atomic across every thread (and, for shared stores,
    every process) that uses the same backend.

    One store object passed in code (``MusicCallback(store=...)``) may serve every app of a
    factory, and it shares between them what its URL would share if each app configured it: a
    database URL or a Redis server is one backend, and one object serves every app. Where the
    store holds one app's own data (``memory://``, or ``sqlalchemy://``: the app's
    Flask-SQLAlchemy engine), the object serves the first app and :meth:`init_app` gives each
    other app a store of its own, as Flask-SQLAlchemy keeps an engine per app. The extension keeps
    the store :meth:`init_app` gives back in ``app.extensions["musiccallback"].store``, which lives
    and dies with the app: the request path reaches its own store with no lookup by app.
    """

    #: Whether deliveries survive a restart and can be listed and replayed: true of every
    #: :class:`PersistentStore` and of nothing else. Said by subclassing it, whose abstract methods
    #: are what keeping deliveries takes; a class setting it is refused. Read on the request path,
    #: where an attribute costs less than ``isinstance`` of an ABC.
    persistent: ClassVar[bool] = False

    #: Whether the backend is this process's memory, so that a write costs no round trip: work
    #: the request path may leave to the write-back thread (a task's stage,
    #: :meth:`record_stage`) is then done inline, and a host reads it at once. False unless a
    #: store says so; a store with a server must not.
    in_process: ClassVar[bool] = False

    def __init__(self, *, ttl: int) -> None:
        self.ttl = ttl

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "persistent" in vars(cls):
            raise TypeError(
                f"{cls.__name__} sets persistent: subclass PersistentStore instead, whose abstract "
                "methods are what a persistent store must do."
            )
        for name in _BOUNDARY.intersection(vars(cls)):
            method = vars(cls)[name]
            if not getattr(method, "__isabstractmethod__", False):
                setattr(cls, name, _translated(method))

    @property
    def base_exceptions(self) -> tuple[type[BaseException], ...]:
        """The backend's exception types, which leave every method of the contract as
        :class:`StoreUnavailable`; none for a store without a backend to lose."""
        return ()

    def describe(self) -> str:
        """The backend, for messages; never its password."""
        return type(self).__name__

    def unavailable(self, exc: BaseException, *, reached: bool = True) -> StoreUnavailable:
        """What a backend error becomes at the boundary: the backend and the error, in one line
        that is safe to log (override to leave out what the driver's message would leak)."""
        return StoreUnavailable(f"{self.describe()}: {type(exc).__name__}: {exc}", reached=reached)

    @classmethod
    def from_url(cls, url: str, *, ttl: int) -> Store:
        """Build the store from its ``MUSICCALLBACK_STORE`` URL; query arguments are options."""
        return cls(ttl=ttl)

    def init_app(self, app: Flask) -> Store:
        """The store that serves ``app``: this one, whose backend every app may share.

        Stores that hold an app's own data give another app a store of its own (see the class
        docstring). Must not connect to the backend: an app starts even when its store is down.
        """
        return self

    @abstractmethod
    def claim(self, delivery: Delivery, *, queued: bool = False) -> ClaimResult:
        """Take the delivery's key for ``delivery.owner``, or say why it must not be processed.

        ``queued`` records the claimed delivery as waiting (``pending``) rather than being
        processed: a dispatcher that runs receivers off the request path claims with it, then calls
        :meth:`start` when a worker picks the delivery up. A key already held by
        ``delivery.owner`` is ``CLAIMED``: it is this claim, sent again after its answer was lost.
        """

    @abstractmethod
    def start(self, delivery: Delivery, owner: str) -> bool:
        """Take a queued delivery held by ``delivery.owner`` for processing by ``owner`` now;
        ``False`` when it is not waiting for that claim any more.

        The ``pending`` delivery becomes ``processing``, held by ``owner`` with a fresh lease, in
        one atomic step; one already processing for ``owner`` is this start sent again, and one
        still processing for ``delivery.owner`` is the job's previous attempt, whose deferral
        waits for the store (:mod:`!flask_musiccallback.writeback`). A job
        whose delivery is not waiting for its claim (a replay or a redelivery after the lease took
        it over, or a copy of the same job that started first) must not run it: this is what
        keeps a delivery queued twice from reaching its receivers twice.
        """

    @abstractmethod
    def defer(self, delivery: Delivery, error: str, delay: float) -> None:
        """Record a failed attempt, by ``delivery.owner``, of an acknowledged delivery that runs
        again in ``delay`` seconds.

        Persistent stores count the attempt, keep the error, mark the delivery ``pending`` again,
        still held by ``delivery.owner``, and hold its claim for ``delay`` seconds plus a lease:
        a back-off longer than the lease never lets a redelivery or a replay take the delivery
        over while its retry waits.
        """

    @abstractmethod
    def complete(self, delivery: Delivery) -> None:
        """Mark a delivery held by ``delivery.owner`` processed: later deliveries are duplicates."""

    @abstractmethod
    def release(self, delivery: Delivery, error: str) -> None:
        """Give a delivery held by ``delivery.owner`` back (a receiver error, a claim abandoned
        on an error path), so that a redelivery runs it."""

    @abstractmethod
    def fail(self, delivery: Delivery, error: str) -> None:
        """Record that receivers failed on a delivery held by ``delivery.owner`` that was
        acknowledged anyway."""

    @abstractmethod
    def expect(self, task_id: str, family: str) -> None:
        """Record that the host submitted ``task_id`` as ``family``, in one atomic step.

        A new task is ``open``, expected now. Expected again, it takes the family given (the host
        knows best) and keeps the time it was first expected, its state and its stages: the host
        may call it on every submission's answer, retries included. Every store records tasks,
        the memory store too, because a callback whose body names no family is routed by them.
        """

    @abstractmethod
    def task(self, task_id: str) -> TaskRecord | None:
        """The task as recorded, or ``None`` when it never was (or was forgotten)."""

    @abstractmethod
    def record_stage(
        self,
        task_id: str,
        family: str,
        stage: str,
        *,
        at: datetime,
        via: str,
        final: TaskState | None,
    ) -> None:
        """Note that ``stage`` of the task arrived at ``at``, ``via`` a callback or a poll, in one
        atomic step.

        An unknown task is created (``open``, never expected, of ``family``): the first callback
        of a task the host did not register creates it. Each stage keeps the time and the way it
        first came. ``final`` (``complete`` or ``failed``) settles the task's state, whatever it
        was, ``lost`` included: a result found after all is a result. The task was heard of now.
        """

    @abstractmethod
    def tasks(
        self, *, state: TaskState | str | None = None, limit: int | None = 50
    ) -> Sequence[TaskRecord]:
        """Tasks, the most recently heard of first, of one ``state`` or all; ``limit`` ``None``
        lists them all."""

    @abstractmethod
    def overdue(
        self, heard_before: datetime, *, now: datetime, limit: int | None = None
    ) -> Sequence[TaskRecord]:
        """Open tasks last heard of no later than ``heard_before`` whose next poll is due at
        ``now`` and whose reconciliation claim is free, the longest silent first, at most
        ``limit``: what a reconciliation run looks at. :meth:`claim_task` decides, atomically."""

    @abstractmethod
    def claim_task(
        self, task_id: str, owner: str, *, lease: float, now: datetime
    ) -> TaskRecord | None:
        """Take an open task for reconciliation by ``owner`` for ``lease`` seconds, atomically:
        ``None`` when it is not open or another owner's lease still runs. Two processes
        reconciling at once so poll each task once."""

    @abstractmethod
    def release_task(
        self,
        task_id: str,
        owner: str,
        *,
        polled: bool = False,
        next_poll_at: datetime | None = None,
        overdue: bool = False,
        lost: bool = False,
    ) -> TaskChange:
        """Give back a task ``owner`` claimed, recording what reconciliation did, atomically.

        ``polled`` counts one poll; ``next_poll_at`` is when it may be polled again; ``overdue``
        notes it overdue unless it was already; ``lost`` makes an ``open`` task ``lost``. Nothing
        changes when ``owner`` no longer holds it. Says which of the two happened now, so that
        ``task_overdue`` and ``task_lost`` are each sent once.
        """

    @abstractmethod
    def remember_signature(self, signature: str, digest: str, *, ttl: float) -> bool:
        """Whether a signature may go with the body whose digest is ``digest``: true when it is
        new (it is then remembered with that digest for ``ttl`` seconds) or was seen with the
        same body, false when it came before with another body. Atomic: of two bodies racing
        under one signature, one wins. The provider signs the task id and a timestamp, not the
        body (PROVIDER.md section 5); this keeps one signature to one body."""

    def check(self) -> StoreHealth | None:
        """Ask the backend once, timed, and look for what the store keeps its data in, changing
        nothing: an operator runs it against a live deployment (``flask musiccallback doctor``).

        Optional: ``None`` says the store cannot check itself, which is reported as such rather
        than as healthy. Backend errors leave it as :class:`StoreUnavailable`, as from any
        method of the contract.
        """
        return None

    def close(self) -> None:  # noqa: B027 - optional hook, empty by design
        """Release connections; called when the host shuts the extension down."""


class DeliveryState(str, enum.Enum):
    """Where a kept delivery is in its life; persistent stores record it with each delivery."""

    #: Accepted and waiting for a worker (claimed with ``queued=True``).
    PENDING = "pending"
    #: Claimed by a process that is running its receivers.
    PROCESSING = "processing"
    #: Every receiver succeeded.
    DONE = "done"
    #: A receiver failed: released for a redelivery (``retry``) or acknowledged (``ack``).
    FAILED = "failed"
    #: An authenticated body no callback family could read, kept to be read again later
    #: (:meth:`PersistentStore.keep_unreadable`); it is never claimed, only read and deleted.
    UNREADABLE = "unreadable"

    def __str__(self) -> str:
        return self.value


#: The states each ``--status`` of ``flask musiccallback list`` stands for: "pending" is any
#: delivery accepted and not finished, whether it waits or is being processed.
STATUS_STATES: Mapping[str, tuple[DeliveryState, ...]] = {
    "pending": (DeliveryState.PENDING, DeliveryState.PROCESSING),
    "done": (DeliveryState.DONE,),
    "failed": (DeliveryState.FAILED,),
    "unreadable": (DeliveryState.UNREADABLE,),
}


def checked_rate(rate: float | None) -> float | None:
    """``rate``, rows a second a prune deletes at most, if it is one: a rate of nothing would
    never end."""
    if rate is not None and not rate > 0:
        raise ValueError(f"A prune's rate must be above 0 rows a second (None: no limit): {rate!r}")
    return rate


def paced(step: Callable[[], tuple[int, bool]], rate: float | None = None) -> int:
    """Run a prune's ``step`` (what it deleted, whether more may be left) until nothing is left;
    the total deleted.

    After each step the prune rests as long as the step took (at most :data:`PRUNE_REST`), so
    that a prune of short steps takes no more than half of what it shares with the claims
    arriving meanwhile: a SQLite database's one write lock, a Redis server's one thread, the
    machine's cores. A claim waiting on the step gets its turn, rather than racing a prune that
    takes it straight back.

    With a ``rate``, it rests longer where need be, so as to delete no more than ``rate`` rows
    a second: what a database must write for a prune grows with the rows, and its claims wait
    for those writes too (a commit waits for the log written before it), however short the
    steps.
    """
    checked_rate(rate)
    total = 0
    while True:
        started = time.monotonic()
        deleted, more = step()
        total += deleted
        if not more:
            return total
        took = time.monotonic() - started
        rest = min(took, PRUNE_REST)
        if rate is not None:
            rest = max(rest, deleted / rate - took)
        time.sleep(rest)


def unreadable_stage(body: bytes) -> str:
    """The stage that keys a kept unreadable body, with its task id (or a placeholder).

    Derived from the body alone, so that the provider's redelivery of the same body finds it
    kept already; a digest of 40 hex digits leaves the whole (51) within :data:`MAX_STAGE_LENGTH`.
    """
    return UNREADABLE_PREFIX + hashlib.blake2b(body, digest_size=20).hexdigest()


def copy_stage(stage_key: str) -> str:
    """The stage of the media copy of the event keyed ``stage_key`` (:mod:`..archive.copies`)."""
    return COPY_PREFIX + stage_key


def copied_stage(stage_key: str) -> str | None:
    """The key of the event whose media copy is keyed ``stage_key``, or ``None`` when it is no
    copy."""
    return stage_key[len(COPY_PREFIX) :] if stage_key.startswith(COPY_PREFIX) else None


@dataclass(frozen=True, slots=True)
class KeptDelivery:
    """A delivery as a persistent store keeps it, for listing, inspection and replay."""

    #: The store's identifier, as printed by ``flask musiccallback list``.
    id: str
    task_id: str
    stage: str
    state: DeliveryState
    #: The JSON body as received.
    payload: Mapping[str, Any]
    #: The request headers worth keeping, secrets redacted.
    headers: Mapping[str, str]
    #: Runs of its receivers made or waited for: the first, retries off the request path
    #: (:meth:`Store.defer`), redeliveries, replays.
    attempts: int
    last_error: str | None
    #: Whether a redelivery by the provider may claim it again (released after a receiver error
    #: under the ``retry`` policy); an acknowledged failure waits for a replay instead.
    released: bool
    #: Who holds the claim while pending or processing: ``hostname:pid/token``
    #: (:func:`~.owners.claim_owner`).
    owner: str | None
    #: When another process may take the claim over, while pending or processing.
    lease_expires_at: datetime | None
    received_at: datetime
    created_at: datetime
    updated_at: datetime

    @property
    def in_flight(self) -> bool:
        """Accepted and not finished: waiting, or held by a process."""
        return self.state in (DeliveryState.PENDING, DeliveryState.PROCESSING)

    def held(self) -> Delivery:
        """The delivery as its current owner settles it (after :meth:`PersistentStore.reclaim`)."""
        return Delivery(
            task_id=self.task_id,
            stage=self.stage,
            payload=self.payload,
            received_at=self.received_at,
            headers=self.headers,
            owner=self.owner or "",
        )

    def lease_expired(self, now: datetime | None = None) -> bool:
        """Whether the claim on an in-flight delivery may be taken over."""
        if self.lease_expires_at is None:
            return True
        return self.lease_expires_at <= (now or utcnow())


def utcnow() -> datetime:
    """The aware UTC time every store records."""
    return datetime.now(timezone.utc)


class PersistentStore(Store):
    """A store that keeps every accepted delivery, shared by every process using its backend.

    Besides deduplicating, it records each delivery's payload, headers and state, so that nothing
    acknowledged is lost: deliveries can be listed, shown, replayed and pruned (``flask
    musiccallback ...``).

    Each claim records its owner (:func:`~.owners.claim_owner`) and a lease of ``lease``
    seconds. A claim whose lease ran out belongs to a process presumed dead, and the next
    redelivery (or ``replay --pending``) takes it over, so a crash never blocks a task for good.
    Receivers that run longer than the lease may therefore run twice: keep the lease above the
    slowest receiver.
    """

    #: Deliveries :meth:`prune` deletes per step (:data:`!PRUNE_BATCH`).
    prune_batch: int = PRUNE_BATCH
    #: Deliveries :meth:`prune` deletes a second at most (:func:`!paced`); ``None``: paced by
    #: its steps' time alone.
    prune_rate: float | None = None

    def __init__(self, *, ttl: int, lease: int = DEFAULT_LEASE) -> None:
        super().__init__(ttl=ttl)
        if lease < 1:
            raise StoreError("The lease of a persistent store must be at least one second.")
        self.lease = lease

    @classmethod
    def from_url(cls, url: str, *, ttl: int) -> PersistentStore:
        """Build the store from its URL, reading the ``lease`` option every persistent store
        takes: a store that inherited :meth:`Store.from_url` would drop it without a word."""
        return cls(ttl=ttl, lease=lease_from_url(url))

    @abstractmethod
    def list(
        self, *, status: str | None = None, task_id: str | None = None, limit: int | None = 50
    ) -> Sequence[KeptDelivery]:
        """Kept deliveries, most recently changed first.

        ``status`` is ``pending``, ``done``, ``failed`` or ``unreadable`` (see
        :data:`STATUS_STATES`); ``limit`` ``None`` lists them all.
        """

    @abstractmethod
    def get(self, delivery_id: str) -> KeptDelivery | None:
        """One kept delivery by the id :meth:`list` shows, or ``None``."""

    @abstractmethod
    def pending(self, older_than: timedelta, limit: int | None = None) -> Sequence[KeptDelivery]:
        """Deliveries in flight (pending or processing) unchanged for ``older_than``, the longest
        unchanged first, at most ``limit``: those the sweep and ``replay --pending`` may take over.

        A query of its own, answered by the backend from an index: the sweep runs every minute in
        every process, and must not read every kept delivery to find the few left behind. Claims
        still held are included; :meth:`reclaim` decides, atomically, whether one may be taken.
        """

    @abstractmethod
    def prune(self, older_than: timedelta) -> int:
        """Delete deliveries unchanged for ``older_than``, except claims still held; say how many.

        Once pruned, a redelivery of the same task and stage is processed again (and an
        unreadable body kept again).
        """

    @abstractmethod
    def keep_unreadable(self, delivery: Delivery, error: str) -> bool:
        """Keep an authenticated body that no family could read, ``unreadable``, with ``error``
        (why it could not be read); ``False`` when its key is kept already.

        The caller keys it: ``delivery.task_id`` is the task id found in the body, or a
        placeholder, and ``delivery.stage`` is :func:`unreadable_stage` of the body. It is kept
        as a claim's delivery is (payload, headers, ``received_at``, one attempt) but held by
        nobody, with no lease, in one atomic step: a key kept already is left as it is, so the
        provider's redelivery of the same body keeps it once. Nothing takes it over (no claim,
        no sweep, no :meth:`reclaim`, even with ``force``): it is read again and then deleted
        (:meth:`delete`), or pruned like a finished delivery.
        """

    @abstractmethod
    def delete(self, delivery_id: str) -> bool:
        """Forget one kept delivery by the id :meth:`list` shows; ``False`` if there was none.

        For an unreadable body that now reads, once it was dispatched under its family's own key;
        as after :meth:`prune`, a redelivery of the deleted key is not a duplicate.
        """

    @abstractmethod
    def reclaim(
        self,
        delivery_id: str,
        *,
        force: bool = False,
        abandoned_by: str | None = None,
        queued: bool = False,
    ) -> KeptDelivery | None:
        """Claim a kept delivery again for a replay, atomically; ``None`` if it cannot be taken.

        A failed delivery can always be taken, an in-flight one once its lease ran out, or at once
        while its claim is still held by ``abandoned_by``, an owner known to be dead
        (:func:`~.owners.owner_is_dead`): the condition is checked in the same atomic step, so a
        claim that a live process took meanwhile is left alone. ``force`` takes any, done ones and
        live claims included, but never an unreadable body: no family's receivers can run it. The
        delivery is then processing (``pending`` with ``queued``, as after
        ``claim(queued=True)``), held by a new owner (:func:`~.owners.claim_owner`, the returned
        delivery's ``owner``) with one more attempt, and is settled with ``complete``,
        ``release`` or ``fail`` of :meth:`KeptDelivery.held` as after :meth:`Store.claim`.
        """


# Said here, once, for every subclass: Store.__init_subclass__ refuses a class that says it itself.
PersistentStore.persistent = True


def _url_option(url: str, name: str) -> str | None:
    values = parse_qs(url.partition("?")[2]).get(name)
    return values[-1] if values else None


def lease_from_url(url: str) -> int:
    """The ``lease`` option (seconds) every persistent store reads from its URL's query."""
    value = _url_option(url, "lease")
    if value is None:
        return DEFAULT_LEASE
    try:
        return int(value)
    except ValueError as exc:
        raise StoreError(f"lease must be a whole number of seconds: {redact_url(url)!r}") from exc


def unusable_url(url: str, exc: Exception, *, kind: str) -> StoreError:
    """The error for a URL its parser refused: the parser's words, without the password."""
    detail = redact_url_secrets(str(exc), url)
    return StoreError(f"Not a usable {kind} URL: {redact_url(url)!r} ({detail}).")


def timeout_from_url(url: str) -> float:
    """The ``timeout`` option (seconds, :data:`DEFAULT_TIMEOUT`) every persistent store reads
    from its URL's query."""
    value = _url_option(url, "timeout")
    return DEFAULT_TIMEOUT if value is None else check_timeout(value)


def check_timeout(value: float | str) -> float:
    """``value`` as a store's timeout: a finite number of seconds above zero."""
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds < math.inf:
        raise StoreError(f"A store's timeout must be a positive number of seconds, not {value!r}.")
    return seconds


def require_persistent(store: Store) -> PersistentStore:
    """The store, when it keeps deliveries; a :class:`StoreError` saying what to do otherwise."""
    if isinstance(store, PersistentStore):
        return store
    raise StoreError(
        f"This needs a persistent store, and {type(store).__name__} keeps nothing: set "
        "MUSICCALLBACK_STORE to sqlalchemy://, a database URL (sqlite:///callbacks.db, "
        "postgresql+psycopg://...) or redis://host:6379/0."
    )
