"""Dispatching kept deliveries again: ``flask musiccallback replay`` and any code that needs it.

A replay goes through the same path as a callback: the kept payload is loaded by its family, and
:func:`~.dispatch.process` runs the receivers and settles the delivery by the receiver
error policy. Only the claim differs: instead of :meth:`~.stores.base.Store.claim`, which would
call a kept delivery a duplicate, :meth:`~.stores.base.PersistentStore.reclaim` takes it, which
is just as atomic, so two replays of one delivery never both run it.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from marshmallow import ValidationError

from .dispatch import Outcome, process
from .families import family_for
from .state import get_state
from .stores.base import KeptDelivery, PersistentStore, owner_is_dead, require_persistent

if TYPE_CHECKING:
    from flask import Flask


class Replayed(str, enum.Enum):
    """How the replay of one delivery ended."""

    #: Every receiver succeeded; the delivery is done.
    DONE = "done"
    #: A receiver failed again; the delivery is failed, with the new error.
    FAILED = "failed"
    #: Not taken: finished already, or claimed by a process that is still alive.
    SKIPPED = "skipped"
    #: The store keeps no delivery by that id.
    NOT_FOUND = "not_found"
    #: The kept payload no longer loads; the delivery is marked failed with the reason.
    INVALID = "invalid"


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
    force: bool = False,
) -> list[ReplayResult]:
    """Replay the deliveries named by ``ids``, every failed one, and/or every pending one.

    ``pending`` takes deliveries accepted and never finished whose claim is free: its lease ran
    out, or its owner was a process of this machine that no longer runs. ``force`` also takes
    finished deliveries and live claims (use it when you know better than the lease). Deliveries
    run oldest first, so a task's stages replay in the order they came.
    """
    state = get_state(app)
    store = require_persistent(state.store)
    chosen: dict[str, KeptDelivery | None] = dict.fromkeys(ids)
    for status, wanted in (("failed", failed), ("pending", pending)):
        if wanted:
            for listed in reversed(store.list(status=status, limit=None)):
                chosen.setdefault(listed.id, listed)
    results = []
    with app.app_context():
        for delivery_id, kept in chosen.items():
            results.append(_replay_one(app, store, delivery_id, kept, force))
    return results


def _replay_one(
    app: Flask,
    store: PersistentStore,
    delivery_id: str,
    kept: KeptDelivery | None,
    force: bool,
) -> ReplayResult:
    kept = kept if kept is not None else store.get(delivery_id)
    if kept is None:
        return ReplayResult(delivery_id, Replayed.NOT_FOUND, "no such delivery")
    taken = store.reclaim(delivery_id, force=force or owner_is_dead(kept.owner))
    if taken is None:
        current = store.get(delivery_id) or kept
        why = f"{current.state}" + (f", held by {current.owner}" if current.in_flight else "")
        return ReplayResult(delivery_id, Replayed.SKIPPED, why + "; --force takes it", current)
    family = family_for(taken.payload)
    try:
        event = family.load(taken.payload)
    except ValidationError as exc:
        error = f"the kept payload no longer loads: {exc.messages}"
        store.fail(taken.task_id, taken.stage, error)
        return ReplayResult(delivery_id, Replayed.INVALID, error, taken)
    if dataclasses.is_dataclass(event) and not isinstance(event, type):
        event = dataclasses.replace(event, received_at=taken.received_at)
    delivery = family.delivery(event, taken.payload, taken.headers)
    if (delivery.task_id, delivery.stage) != (taken.task_id, taken.stage):
        error = f"the kept payload is now read as {delivery.task_id}/{delivery.stage}"
        store.fail(taken.task_id, taken.stage, error)
        return ReplayResult(delivery_id, Replayed.INVALID, error, taken)
    state = get_state(app)
    outcome = process(app, state, family, event, delivery)
    after = store.get(delivery_id) or taken
    if outcome is Outcome.RECEIVED and after.state == "done":
        return ReplayResult(delivery_id, Replayed.DONE, f"attempt {taken.attempts}", after)
    return ReplayResult(delivery_id, Replayed.FAILED, after.last_error or "receiver failed", after)
