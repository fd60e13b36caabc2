"""Dispatching kept deliveries again: ``flask musiccallback replay``, the sweep, and any code.

A replay goes through the same path as a callback: the kept payload is loaded by its family, and
the app's dispatcher runs the receivers as it would for a new delivery: in this process under
``sync`` (:func:`~.dispatch.process`, the receiver error policy deciding), in this process's pool
under ``thread``, and by the Celery workers under ``celery`` (the delivery is published again),
both with back-off retries. Only the claim differs: instead of
:meth:`~.stores.base.Store.claim`, which would call a kept delivery a duplicate,
:meth:`~.stores.base.PersistentStore.reclaim` takes it, which is just as atomic, so two replays
of one delivery never both run it, and a job that finds its delivery taken runs nothing.

A media copy (:mod:`..archive.copies`) is kept as a delivery is, and replayed the same way, by
the archive's dispatcher (never in the request's thread): its files archived already are not
fetched again. A replayed delivery has its copy claimed as a new one has (a duplicate, and
nothing, when it was claimed already): a process that died between the two claims left none.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from marshmallow import ValidationError

from ..config import ConfigKeys
from ..families.base import FAMILY_HEADER, Unreadable, find_task_id, registered_family
from ..state import get_state
from ..stores.base import (
    DeliveryState,
    KeptDelivery,
    PersistentStore,
    copied_stage,
    require_persistent,
    utcnow,
)
from ..stores.owners import owner_is_dead
from .job import Job, NotQueued, Outcome, deliver, process

if TYPE_CHECKING:
    from flask import Flask

    from ..state import MusicCallbackState


class Replayed(str, enum.Enum):
    """How the replay of one delivery ended."""

    #: Every receiver succeeded; the delivery is done.
    DONE = "done"
    #: A receiver failed again; the delivery is failed, with the new error.
    FAILED = "failed"
    #: Handed to the dispatcher (the thread pool, the Celery workers), not settled yet.
    QUEUED = "queued"
    #: Not taken: finished already, or claimed by a process that is still alive.
    SKIPPED = "skipped"
    #: The store keeps no delivery by that id.
    NOT_FOUND = "not_found"
    #: The kept payload no longer loads; the delivery is marked failed with the reason.
    INVALID = "invalid"
    #: A body kept as unreadable that no family installed now reads either; it stays kept.
    UNREADABLE = "unreadable"


@dataclass(frozen=True, slots=True)
class ReplayResult:
    """The fate of one delivery in a replay, with a line of explanation for people."""

    delivery_id: str
    result: Replayed
    detail: str
    delivery: KeptDelivery | None = None


def replay(
    app: Flask,
    ids: Iterable[str] = (),
    *,
    failed: bool = False,
    pending: bool = False,
    unreadable: bool = False,
    force: bool = False,
    older_than: timedelta | None = None,
    limit: int | None = None,
    wait: bool = False,
) -> list[ReplayResult]:
    """Replay the deliveries named by ``ids``, every failed one, and/or every pending one.

    ``pending`` takes deliveries accepted and never finished whose claim is free: its lease ran
    out, or its owner was a process of this machine that no longer runs (taken at once). Those
    selected by ``failed`` and ``pending`` may be narrowed to the ones unchanged for
    ``older_than``, and to the ``limit`` oldest. ``force`` also takes finished deliveries and live
    claims (use it when you know better than the lease). Deliveries are dispatched oldest first,
    so a task's stages replay in the order they came.

    ``unreadable`` reads every body kept as unreadable again, with the families installed now
    (an id of one does the same): one that now reads is delivered as a new callback would be,
    deduplication included, and its unreadable copy deleted; the others stay kept.

    Under ``thread`` and ``celery`` dispatch the results are :attr:`Replayed.QUEUED`; ``wait``
    waits until this process's pool is idle (every job of it, not only these), and its media
    copies too, and reports how the deliveries it ran ended. Celery's workers are not waited for.
    """
    state = get_state(app)
    store = require_persistent(state.store)
    chosen: dict[str, KeptDelivery | None] = dict.fromkeys(ids)
    selections: list[Iterable[KeptDelivery]] = []
    if unreadable:
        selections.append(reversed(store.list(status="unreadable", limit=None)))
    if failed:
        cutoff = None if older_than is None else utcnow() - older_than
        oldest_first = reversed(store.list(status="failed", limit=None))
        selections.append(k for k in oldest_first if cutoff is None or k.updated_at <= cutoff)
    if pending:
        # Enough for ``limit`` new ones, should some be chosen already.
        wanted = None if limit is None else limit + len(chosen)
        selections.append(store.pending(older_than or timedelta(0), wanted))
    selected = 0
    for listed in itertools.chain.from_iterable(selections):
        if limit is not None and selected >= limit:
            break
        if listed.id not in chosen:
            chosen[listed.id] = listed
            selected += 1
    with app.app_context():
        results = [
            _replay_one(app, state, store, delivery_id, kept, force)
            for delivery_id, kept in chosen.items()
        ]
    if wait and (
        state.archive is not None or any(result.result is Replayed.QUEUED for result in results)
    ):
        state.extension.wait_idle(app=app)
        results = [_settled(store, result) for result in results]
    return results


def _replay_one(
    app: Flask,
    state: MusicCallbackState,
    store: PersistentStore,
    delivery_id: str,
    kept: KeptDelivery | None,
    force: bool,
) -> ReplayResult:
    kept = kept if kept is not None else store.get(delivery_id)
    if kept is None:
        return ReplayResult(delivery_id, Replayed.NOT_FOUND, "no such delivery")
    if kept.state is DeliveryState.UNREADABLE:
        return _reread(app, state, store, kept)
    dispatcher = state.dispatcher
    event_key = copied_stage(kept.stage)
    if event_key is not None:
        if state.archive is None:
            detail = f"a media copy, and {ConfigKeys.ARCHIVE} is not set here"
            return ReplayResult(delivery_id, Replayed.SKIPPED, detail, kept)
        dispatcher = state.archive.dispatcher
    dead = kept.owner if kept.in_flight and owner_is_dead(kept.owner) else None
    taken = store.reclaim(delivery_id, force=force, abandoned_by=dead, queued=dispatcher.queued)
    if taken is None:
        current = store.get(delivery_id) or kept
        why = f"{current.state}" + (f", held by {current.owner}" if current.in_flight else "")
        return ReplayResult(delivery_id, Replayed.SKIPPED, why + "; --force takes it", current)
    try:
        family = state.extension.families.keyed(event_key or taken.stage)
        event = family.reload(taken.payload, taken.received_at)
    except LookupError as exc:
        error = f"the kept delivery's family is not registered here: {exc}"
        store.fail(taken.held(), error)
        return ReplayResult(delivery_id, Replayed.INVALID, error, taken)
    except ValidationError as exc:
        error = f"the kept payload no longer loads: {exc.messages}"
        store.fail(taken.held(), error)
        return ReplayResult(delivery_id, Replayed.INVALID, error, taken)
    delivery = family.delivery(event, taken.payload, taken.headers, owner=taken.owner)
    job = Job(app, state, family, event, delivery, replayed=True)
    if state.archive is not None and event_key is not None:
        job = state.archive.job(job)
        delivery = job.delivery
    if (delivery.task_id, delivery.stage) != (taken.task_id, taken.stage):
        error = f"the kept payload is now read as {delivery.task_id}/{delivery.stage}"
        store.fail(taken.held(), error)
        return ReplayResult(delivery_id, Replayed.INVALID, error, taken)
    if state.archive is not None and event_key is None:
        # A copy its process never got to claim (it died just after the answer) is made now;
        # one claimed already is left to its own fate.
        state.archive.schedule(state, job)
    if not dispatcher.queued:
        process(job)
        return _settled(store, ReplayResult(delivery_id, Replayed.QUEUED, "", taken))
    try:
        dispatcher.submit(job)
    except NotQueued as exc:
        # Not given back: the provider will not send it again; it stays pending for the sweep.
        detail = f"not dispatched ({exc}); it stays pending, held for a lease"
        return ReplayResult(delivery_id, Replayed.FAILED, detail, taken)
    return ReplayResult(delivery_id, Replayed.QUEUED, f"attempt {taken.attempts}", taken)


def _reread(
    app: Flask, state: MusicCallbackState, store: PersistentStore, kept: KeptDelivery
) -> ReplayResult:
    """Read a body kept as unreadable again, routed as the endpoint routed it, and deliver it
    under its family's key if it reads now.

    Through :func:`~.job.deliver`, as a callback: the claim deduplicates it against what a poll
    or a later callback delivered meanwhile. Once the body has its own delivery (done, queued, a
    duplicate, or failed and kept for ``replay --failed``), the unreadable copy is deleted.
    """
    named = kept.headers.get(FAMILY_HEADER)
    try:
        expected = registered_family(state.store, find_task_id(kept.payload))
        family, _ = state.extension.families.read(kept.payload, named=named, expected=expected)
    except Unreadable as exc:
        detail = f"still no family reads it: {exc.errors}"
        return ReplayResult(kept.id, Replayed.UNREADABLE, detail, kept)
    event = family.reload(kept.payload, kept.received_at)
    delivery = family.delivery(event, kept.payload, kept.headers)
    outcome = deliver(app, state, family, event, delivery)
    store.delete(kept.id)
    read_as = f"read as {family.name} {event.stage}"
    if outcome is Outcome.DUPLICATE:
        return ReplayResult(kept.id, Replayed.SKIPPED, f"{read_as}: a duplicate", kept)
    if outcome is Outcome.RETRY:
        return ReplayResult(kept.id, Replayed.FAILED, f"{read_as}: a receiver failed", kept)
    if state.dispatcher.queued:
        return ReplayResult(kept.id, Replayed.QUEUED, read_as, kept)
    return ReplayResult(kept.id, Replayed.DONE, read_as, kept)


def _settled(store: PersistentStore, result: ReplayResult) -> ReplayResult:
    """A queued replay's result as the store now sees it: done, failed, or still queued."""
    if result.result is not Replayed.QUEUED or result.delivery is None:
        return result
    after = store.get(result.delivery_id) or result.delivery
    if after.state is DeliveryState.DONE:
        return ReplayResult(result.delivery_id, Replayed.DONE, f"attempt {after.attempts}", after)
    if after.state is DeliveryState.FAILED:
        detail = after.last_error or "receiver failed"
        return ReplayResult(result.delivery_id, Replayed.FAILED, detail, after)
    return ReplayResult(result.delivery_id, Replayed.QUEUED, f"attempt {after.attempts}", after)
