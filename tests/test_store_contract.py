"""A store written outside the package passes the store contract through its documented entry.

:class:`DictStore` is what docs/store-contract.md asks of a third-party store, in a dictionary
behind a lock: the contract's tests run on it exactly as a MongoDB or DynamoDB store's author would
run them. The last test proves the entry catches a store that breaks the contract.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from datetime import datetime, timedelta

import pytest

from flask_musiccallback import (
    ClaimResult,
    Delivery,
    DeliveryState,
    KeptDelivery,
    PersistentStore,
    Store,
    StoreUnavailable,
)
from flask_musiccallback.contract import (
    PersistentStoreContract,
    StoreFactory,
    delivery,
    unreadable_delivery,
)
from flask_musiccallback.dispatch.replay import Replayed
from flask_musiccallback.dispatch.sweep import sweep
from flask_musiccallback.families import MUSIC
from flask_musiccallback.stores.base import STATUS_STATES, utcnow
from flask_musiccallback.stores.owners import claim_owner
from flask_musiccallback.stores.tasks import TaskChange, TaskRecord, TaskState
from flask_musiccallback.testing import build_callback

from .backends import child_env
from .conftest import AppFactory

_IN_FLIGHT = STATUS_STATES["pending"]


class DictStore(PersistentStore):
    """Every delivery and every task in a dictionary; each step of the contract one critical
    section."""

    def __init__(self, *, ttl: int, lease: int = 300) -> None:
        super().__init__(ttl=ttl, lease=lease)
        self._lock = threading.Lock()
        self._rows: dict[tuple[str, str], KeptDelivery] = {}
        self._tasks: dict[str, TaskRecord] = {}
        #: Who reconciles each task claimed, and until when.
        self._task_claims: dict[str, tuple[str, datetime]] = {}
        #: Each signature seen, to the digest of its body and when it is forgotten.
        self._signatures: dict[str, tuple[str, float]] = {}
        self._ids = itertools.count(1)

    # -- the claim and its settling ----------------------------------------------------------

    def claim(self, delivery: Delivery, *, queued: bool = False) -> ClaimResult:
        now = utcnow()
        with self._lock:
            row = self._live((delivery.task_id, delivery.stage), now)
            if row is not None and row.in_flight and row.owner == delivery.owner:
                return ClaimResult.CLAIMED
            later = self._live((delivery.task_id, delivery.superseded_by or ""), now)
            if later is not None and later.state is DeliveryState.DONE:
                return ClaimResult.STALE
            if row is not None and not self._takeable(row, now):
                finished = row.state in (DeliveryState.DONE, DeliveryState.FAILED)
                return ClaimResult.DUPLICATE if finished else ClaimResult.IN_PROGRESS
            state = DeliveryState.PENDING if queued else DeliveryState.PROCESSING
            self._rows[(delivery.task_id, delivery.stage)] = KeptDelivery(
                id=row.id if row else str(next(self._ids)),
                task_id=delivery.task_id,
                stage=delivery.stage,
                state=state,
                payload=delivery.payload,
                headers=delivery.headers,
                attempts=row.attempts + 1 if row else 1,
                last_error=row.last_error if row else None,
                released=False,
                owner=delivery.owner,
                lease_expires_at=now + timedelta(seconds=self.lease),
                received_at=delivery.received_at,
                created_at=row.created_at if row else now,
                updated_at=now,
            )
            return ClaimResult.CLAIMED

    def start(self, delivery: Delivery, owner: str) -> bool:
        with self._lock:
            row = self._rows.get((delivery.task_id, delivery.stage))
            if row is None or not row.in_flight or row.owner not in (delivery.owner, owner):
                return False
            self._change(row, state=DeliveryState.PROCESSING, owner=owner, hold=self.lease)
            return True

    def defer(self, delivery: Delivery, error: str, delay: float) -> None:
        with self._lock:
            row = self._held(delivery)
            if row is not None and row.state is DeliveryState.PROCESSING:
                self._change(
                    row,
                    state=DeliveryState.PENDING,
                    attempts=row.attempts + 1,
                    last_error=error,
                    hold=delay + self.lease,
                )

    def complete(self, delivery: Delivery) -> None:
        self._settle(delivery, DeliveryState.DONE, released=False, error=None)

    def release(self, delivery: Delivery, error: str) -> None:
        self._settle(delivery, DeliveryState.FAILED, released=True, error=error)

    def fail(self, delivery: Delivery, error: str) -> None:
        self._settle(delivery, DeliveryState.FAILED, released=False, error=error)

    def _settle(
        self, delivery: Delivery, state: DeliveryState, *, released: bool, error: str | None
    ) -> None:
        with self._lock:
            row = self._held(delivery)
            if row is not None:
                self._change(
                    row,
                    state=state,
                    released=released,
                    owner=None,
                    last_error=error or row.last_error,
                    hold=None,
                )

    def keep_unreadable(self, delivery: Delivery, error: str) -> bool:
        now = utcnow()
        with self._lock:
            key = (delivery.task_id, delivery.stage)
            if key in self._rows:
                return False
            self._rows[key] = KeptDelivery(
                id=str(next(self._ids)),
                task_id=delivery.task_id,
                stage=delivery.stage,
                state=DeliveryState.UNREADABLE,
                payload=delivery.payload,
                headers=delivery.headers,
                attempts=1,
                last_error=error,
                released=False,
                owner=None,
                lease_expires_at=None,
                received_at=delivery.received_at,
                created_at=now,
                updated_at=now,
            )
            return True

    # -- tasks -------------------------------------------------------------------------------

    def expect(self, task_id: str, family: str) -> None:
        now = utcnow()
        with self._lock:
            task = self._tasks.get(task_id)
            if task is None:
                task = TaskRecord(task_id, family, TaskState.OPEN, {}, now, now, 0)
            self._tasks[task_id] = replace(
                task, family=family, expected_at=task.expected_at or now, updated_at=now
            )

    def task(self, task_id: str) -> TaskRecord | None:
        with self._lock:
            return self._tasks.get(task_id)

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
        now = utcnow()
        with self._lock:
            task = self._tasks.get(task_id) or TaskRecord(
                task_id, family, TaskState.OPEN, {}, None, now, 0
            )
            self._tasks[task_id] = replace(
                task,
                state=final or task.state,
                stages={stage: at, **task.stages},
                sources={stage: via, **task.sources},
                updated_at=now,
            )

    def tasks(
        self, *, state: TaskState | str | None = None, limit: int | None = 50
    ) -> Sequence[TaskRecord]:
        with self._lock:
            found = [t for t in self._tasks.values() if state in (None, t.state)]
        return sorted(found, key=lambda task: task.updated_at, reverse=True)[:limit]

    def overdue(
        self, heard_before: datetime, *, now: datetime, limit: int | None = None
    ) -> Sequence[TaskRecord]:
        with self._lock:
            found = [
                task
                for task in self._tasks.values()
                if task.state is TaskState.OPEN
                and task.updated_at <= heard_before
                and (task.next_poll_at is None or task.next_poll_at <= now)
                and self._task_claims.get(task.task_id, ("", now))[1] <= now
            ]
        return sorted(found, key=lambda task: task.updated_at)[:limit]

    def claim_task(
        self, task_id: str, owner: str, *, lease: float, now: datetime
    ) -> TaskRecord | None:
        with self._lock:
            task = self._tasks.get(task_id)
            holder, until = self._task_claims.get(task_id, (owner, now))
            if (
                task is None
                or task.state is not TaskState.OPEN
                or (holder != owner and until > now)
            ):
                return None
            self._task_claims[task_id] = (owner, now + timedelta(seconds=lease))
            return task

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
        now = utcnow()
        with self._lock:
            task = self._tasks.get(task_id)
            if task is None or self._task_claims.get(task_id, ("", now))[0] != owner:
                return TaskChange()
            del self._task_claims[task_id]
            change = TaskChange(
                overdue=overdue and task.overdue_at is None,
                lost=lost and task.state is TaskState.OPEN,
            )
            self._tasks[task_id] = replace(
                task,
                polls=task.polls + polled,
                next_poll_at=next_poll_at,
                overdue_at=now if change.overdue else task.overdue_at,
                state=TaskState.LOST if change.lost else task.state,
                updated_at=now if polled or change.lost else task.updated_at,
            )
            return change

    def remember_signature(self, signature: str, digest: str, *, ttl: float) -> bool:
        now = time.monotonic()
        with self._lock:
            seen, until = self._signatures.get(signature, (digest, now))
            if until > now:
                return seen == digest
            self._signatures[signature] = (digest, now + ttl)
            return True

    # -- what the command line, replay and the sweep use --------------------------------------

    def list(
        self, *, status: str | None = None, task_id: str | None = None, limit: int | None = 50
    ) -> Sequence[KeptDelivery]:
        with self._lock:
            rows = sorted(self._rows.values(), key=lambda row: row.updated_at, reverse=True)
        states = STATUS_STATES[status] if status else tuple(DeliveryState)
        found = [r for r in rows if r.state in states and task_id in (None, r.task_id)]
        return found[:limit]

    def get(self, delivery_id: str) -> KeptDelivery | None:
        with self._lock:
            return self._by_id(delivery_id)

    def delete(self, delivery_id: str) -> bool:
        with self._lock:
            row = self._by_id(delivery_id)
            if row is None:
                return False
            del self._rows[(row.task_id, row.stage)]
            return True

    def pending(self, older_than: timedelta, limit: int | None = None) -> Sequence[KeptDelivery]:
        cutoff = utcnow() - older_than
        with self._lock:
            rows = [r for r in self._rows.values() if r.in_flight and r.updated_at <= cutoff]
        return sorted(rows, key=lambda row: row.updated_at)[:limit]

    def prune(self, older_than: timedelta) -> int:
        now = utcnow()
        with self._lock:
            old = [
                key
                for key, row in self._rows.items()
                if row.updated_at < now - older_than and not (row.in_flight and _leased(row, now))
            ]
            for key in old:
                del self._rows[key]
        return len(old)

    def reclaim(
        self,
        delivery_id: str,
        *,
        force: bool = False,
        abandoned_by: str | None = None,
        queued: bool = False,
    ) -> KeptDelivery | None:
        now = utcnow()
        with self._lock:
            row = self._by_id(delivery_id)
            if row is None or row.state is DeliveryState.UNREADABLE:
                return None
            free = not _leased(row, now) or (abandoned_by is not None and row.owner == abandoned_by)
            failed = row.state is DeliveryState.FAILED
            if not (force or failed or (row.in_flight and free)):
                return None
            state = DeliveryState.PENDING if queued else DeliveryState.PROCESSING
            return self._change(
                row,
                state=state,
                released=False,
                owner=claim_owner(),
                attempts=row.attempts + 1,
                hold=self.lease,
            )

    # -- under the lock ------------------------------------------------------------------------

    def _live(self, key: tuple[str, str], now: datetime) -> KeptDelivery | None:
        """The row of ``key`` unless it is forgotten (unchanged for longer than the TTL)."""
        row = self._rows.get(key)
        if row is None or row.updated_at < now - timedelta(seconds=self.ttl):
            return None
        return row

    def _by_id(self, delivery_id: str) -> KeptDelivery | None:
        return next((row for row in self._rows.values() if row.id == delivery_id), None)

    def _takeable(self, row: KeptDelivery, now: datetime) -> bool:
        released = row.state is DeliveryState.FAILED and row.released
        return released or (row.in_flight and not _leased(row, now))

    def _held(self, delivery: Delivery) -> KeptDelivery | None:
        row = self._rows.get((delivery.task_id, delivery.stage))
        return row if row is not None and row.owner == delivery.owner else None

    def _change(self, row: KeptDelivery, *, hold: float | None, **changes: object) -> KeptDelivery:
        now = utcnow()
        lease = None if hold is None else now + timedelta(seconds=hold)
        changed = replace(row, lease_expires_at=lease, updated_at=now, **changes)  # type: ignore[arg-type]
        self._rows[(row.task_id, row.stage)] = changed
        return changed


def _leased(row: KeptDelivery, now: datetime) -> bool:
    return row.lease_expires_at is not None and row.lease_expires_at > now


@pytest.fixture
def dict_stores() -> Iterator[list[Store]]:
    stores: list[Store] = []
    yield stores
    for store in stores:
        store.close()


class TestDictStore(PersistentStoreContract):
    """The whole contract, on a store of a third party's."""

    @pytest.fixture
    def make_store(self, dict_stores: list[Store]) -> StoreFactory:
        def make(*, ttl: int, lease: int = 300) -> Store:
            dict_stores.append(DictStore(ttl=ttl, lease=lease))
            return dict_stores[-1]

        return make


class OwnerBlindStore(DictStore):
    """Settles a claim whoever asks: a redelivery would finish another process's delivery."""

    def complete(self, delivery: Delivery) -> None:
        with self._lock:
            row = self._rows[(delivery.task_id, delivery.stage)]
        super().complete(replace(delivery, owner=row.owner or ""))


def test_the_contract_fails_a_store_that_ignores_the_claims_owner(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", child_env()["PYTHONPATH"])  # this checkout's tests package
    pytester.makepyfile(
        test_third_party="""
        import pytest
        from flask_musiccallback.contract import PersistentStoreContract
        from tests.test_store_contract import OwnerBlindStore

        class TestOwnerBlindStore(PersistentStoreContract):
            @pytest.fixture
            def make_store(self):
                return OwnerBlindStore
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert result.parseoutcomes()["failed"] == 1
    result.stdout.fnmatch_lines(["FAILED *::test_only_the_claims_owner_settles_it*"])


class DownStore(DictStore):
    """A store whose backend is gone: every call raises the backend's own error."""

    @property
    def base_exceptions(self) -> tuple[type[BaseException], ...]:
        return (ConnectionRefusedError,)

    def claim(self, delivery: Delivery, *, queued: bool = False) -> ClaimResult:
        raise ConnectionRefusedError(111, "Connection refused")


def test_a_backend_error_leaves_a_third_party_store_as_store_unavailable() -> None:
    with pytest.raises(StoreUnavailable, match="DownStore: ConnectionRefusedError") as raised:
        DownStore(ttl=60).claim(delivery())
    assert raised.value.reached
    assert isinstance(raised.value.__cause__, ConnectionRefusedError)


@pytest.mark.parametrize(
    ("method", "arguments"),
    [
        ("expect", ("task", "music")),
        ("task", ("task",)),
        ("keep_unreadable", (unreadable_delivery(), "unreadable")),
        ("delete", ("1",)),
    ],
)
def test_tasks_and_unreadable_bodies_leave_a_backend_error_as_store_unavailable(
    method: str, arguments: tuple[object, ...]
) -> None:
    def down(self: DictStore, *arguments: object) -> None:
        raise ConnectionRefusedError(111, "Connection refused")

    store_class = type("DownStore", (DownStore,), {method: down})
    with pytest.raises(StoreUnavailable, match="ConnectionRefusedError"):
        getattr(store_class(ttl=60), method)(*arguments)


def test_a_store_cannot_say_it_is_persistent_without_subclassing_persistent_store() -> None:
    with pytest.raises(TypeError, match="subclass PersistentStore"):

        class Pretending(DictStore):
            persistent = True


class CountingStore(DictStore):
    """Counts what the sweep asks of it."""

    def __init__(self) -> None:
        super().__init__(ttl=3600, lease=1)
        self.listed: list[str | None] = []

    def list(
        self, *, status: str | None = None, task_id: str | None = None, limit: int | None = 50
    ) -> Sequence[KeptDelivery]:
        self.listed.append(status)
        return super().list(status=status, task_id=task_id, limit=limit)


def test_the_sweep_asks_the_store_for_what_it_may_take_instead_of_listing_it_all(
    make_app: AppFactory,
) -> None:
    store = CountingStore()
    app = make_app(_store=store, PENDING_SWEEP_AGE=1)
    payload = build_callback("complete")
    store.claim(MUSIC.delivery(MUSIC.load(payload), payload), queued=True)
    time.sleep(1.2)  # its lease runs out: the claim is free for the sweep

    [swept] = sweep(app)

    assert swept.result is Replayed.DONE
    assert store.listed == []
