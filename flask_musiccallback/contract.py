"""The store contract as tests, for anyone writing a store: point them at your class.

Subclass :class:`StoreContract` (or :class:`PersistentStoreContract` for a store that keeps
deliveries) in a test module and give it a ``make_store`` fixture; pytest collects every test of
the contract on your class, as the extension's own suite does for its stores::

    import pytest
    from flask_musiccallback.contract import PersistentStoreContract

    class TestMongoStore(PersistentStoreContract):
        @pytest.fixture
        def make_store(self, mongo_url):
            stores = []

            def make(*, ttl, lease=300):
                stores.append(MongoStore(mongo_url, ttl=ttl, lease=lease))
                return stores[-1]

            yield make
            for store in stores:
                store.close()

``make_store(ttl=SECONDS)`` (and ``lease=SECONDS`` for a persistent store) builds a store on a
backend that is empty when the test starts. The tests call the store directly, as the extension
does, and never need Flask. docs/store-contract.md says what each method must do.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import pytest

from .stores.base import (
    MAX_STAGE_LENGTH,
    MAX_TASK_ID_LENGTH,
    UNREADABLE_PREFIX,
    ClaimResult,
    Delivery,
    DeliveryState,
    KeptDelivery,
    PersistentStore,
    Store,
    unreadable_stage,
    utcnow,
)
from .stores.tasks import VIA_CALLBACK, VIA_POLL, TaskChange, TaskRecord, TaskState

__all__ = [
    "PersistentStoreContract",
    "StoreContract",
    "StoreFactory",
    "delivery",
    "unreadable_delivery",
]

#: ``make_store(ttl=..., lease=...)``: a new store on an empty backend.
StoreFactory = Callable[..., Store]

#: The stage whose processing makes these stages stale (the extension's music family's rule).
_SUPERSEDED_BY = {"text": "complete", "first": "complete"}


def delivery(stage: str = "complete", *, task_id: str | None = None, owner: str = "a") -> Delivery:
    """A delivery of a task of its own (unless ``task_id`` is given), claimed by ``owner``."""
    task_id = task_id or f"contract-{uuid.uuid4().hex}"
    payload = {"code": 200, "msg": "ok", "data": {"callbackType": stage, "task_id": task_id}}
    return Delivery(
        task_id=task_id,
        stage=stage,
        payload=payload,
        received_at=utcnow(),
        headers={"User-Agent": "flask-musiccallback contract"},
        superseded_by=_SUPERSEDED_BY.get(stage),
        owner=owner,
    )


def unreadable_delivery(*, task_id: str | None = None, owner: str = "a") -> Delivery:
    """A body no family reads (of a task of its own unless ``task_id`` is given), keyed as the
    endpoint keys it for :meth:`PersistentStore.keep_unreadable`."""
    task_id = task_id or f"contract-{uuid.uuid4().hex}"
    payload = {"code": 200, "msg": "ok", "data": {"callbackType": "mystery", "task_id": task_id}}
    body = json.dumps(payload, separators=(",", ":"))
    return Delivery(
        task_id=task_id,
        stage=unreadable_stage(body.encode()),
        payload=payload,
        received_at=utcnow(),
        headers={"User-Agent": "flask-musiccallback contract"},
        body=body,
        owner=owner,
    )


def _longest_task_id() -> str:
    """A task id of its own, as long as every store must take, in characters that are not
    bytes."""
    return uuid.uuid4().hex.ljust(MAX_TASK_ID_LENGTH, "é")


#: How far a store's clock (its server's, for some) may be from this process's.
_CLOCK_SLACK = timedelta(seconds=60)


def _about_now(moment: datetime | None, before: datetime) -> bool:
    return moment is not None and before - _CLOCK_SLACK <= moment <= utcnow() + _CLOCK_SLACK


class StoreContract:
    """What every store does: claim atomically, then complete, release or fail, owner by owner.

    Not collected itself (its name does not start with ``Test``); a subclass that does is.
    """

    @pytest.fixture
    def make_store(self) -> StoreFactory:
        """Overridden by the subclass: see the module's docstring."""
        pytest.fail("Give your StoreContract subclass a make_store fixture (module docstring).")

    @pytest.fixture
    def store(self, make_store: StoreFactory) -> Store:
        return make_store(ttl=3600)

    def test_a_new_delivery_is_claimed_and_once_completed_is_a_duplicate(
        self, store: Store
    ) -> None:
        first = delivery()
        assert store.claim(first) is ClaimResult.CLAIMED
        store.complete(first)
        assert store.claim(replace(first, owner="b")) is ClaimResult.DUPLICATE

    def test_a_store_in_use_checks_ready_with_its_round_trip(self, store: Store) -> None:
        first = delivery()
        assert store.claim(first) is ClaimResult.CLAIMED
        health = store.check()
        if health is None:  # optional: the store cannot check itself
            return
        assert health.missing == ()
        assert health.round_trip is None or 0 <= health.round_trip < 60
        assert health.found

    def test_each_stage_and_each_task_is_a_key_of_its_own(self, store: Store) -> None:
        one = delivery("first")
        for other in (one, replace(one, stage="text"), delivery("first")):
            assert store.claim(other) is ClaimResult.CLAIMED

    def test_a_claim_sent_again_by_its_owner_is_its_own_and_anybody_elses_is_in_progress(
        self, store: Store
    ) -> None:
        claimed = delivery(owner="owner-a")
        assert store.claim(claimed) is ClaimResult.CLAIMED
        assert store.claim(claimed) is ClaimResult.CLAIMED, "the answer was lost; the same claim"
        assert store.claim(replace(claimed, owner="owner-b")) is ClaimResult.IN_PROGRESS

    def test_only_the_claims_owner_settles_it(self, store: Store) -> None:
        claimed = delivery(owner="owner-a")
        store.claim(claimed)

        store.complete(replace(claimed, owner="owner-b"))
        store.release(replace(claimed, owner="owner-b"), "not mine")
        assert store.claim(replace(claimed, owner="owner-c")) is ClaimResult.IN_PROGRESS
        store.complete(claimed)
        store.complete(claimed)  # sent again after a lost answer: no harm
        assert store.claim(replace(claimed, owner="owner-c")) is ClaimResult.DUPLICATE

    def test_a_released_delivery_is_claimed_again(self, store: Store) -> None:
        claimed = delivery()
        store.claim(claimed)
        store.release(claimed, "RuntimeError: the disk is full")
        assert store.claim(replace(claimed, owner="b")) is ClaimResult.CLAIMED

    def test_a_failed_delivery_is_a_duplicate(self, store: Store) -> None:
        claimed = delivery()
        store.claim(claimed)
        store.fail(claimed, "RuntimeError: the disk is full")
        assert store.claim(replace(claimed, owner="b")) is ClaimResult.DUPLICATE

    def test_text_and_first_after_a_processed_complete_are_stale(self, store: Store) -> None:
        complete = delivery("complete")
        text = delivery("text", task_id=complete.task_id)
        store.claim(complete)
        assert store.claim(text) is ClaimResult.CLAIMED, "complete is not processed yet"
        store.complete(complete)
        later = delivery("first", task_id=complete.task_id)
        assert store.claim(later) is ClaimResult.STALE
        assert store.claim(delivery("first")) is ClaimResult.CLAIMED, "another task"

    def test_concurrent_claims_of_one_delivery_claim_it_once(self, store: Store) -> None:
        claimed = delivery()
        barrier = threading.Barrier(8)
        results: list[ClaimResult] = []

        def claim(owner: str) -> None:
            barrier.wait()
            results.append(store.claim(replace(claimed, owner=owner)))

        threads = [threading.Thread(target=claim, args=(f"owner-{n}",)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert sorted(results) == [ClaimResult.CLAIMED] + [ClaimResult.IN_PROGRESS] * 7

    def test_a_queued_delivery_is_started_once_and_a_start_sent_again_is_its_own(
        self, store: Store
    ) -> None:
        queued = delivery(owner="web")
        store.claim(queued, queued=True)

        assert store.start(queued, "job-1")
        assert store.start(queued, "job-1"), "the answer was lost; it is the same start"
        assert not store.start(queued, "job-2"), "a copy of the job runs nothing"
        store.release(queued, "the web process is not the owner any more")
        assert store.claim(replace(queued, owner="redelivery")) is ClaimResult.IN_PROGRESS
        store.complete(replace(queued, owner="job-1"))
        assert store.claim(replace(queued, owner="redelivery")) is ClaimResult.DUPLICATE

    def test_the_next_attempt_starts_a_delivery_whose_deferral_is_not_written_yet(
        self, store: Store
    ) -> None:
        queued = delivery(owner="web")
        store.claim(queued, queued=True)
        assert store.start(queued, "attempt-1")

        # Attempt 1 failed while the store was away: its deferral waits, and attempt 2 is due.
        assert store.start(replace(queued, owner="attempt-1"), "attempt-2")
        store.defer(replace(queued, owner="attempt-1"), "written late", 1.0)
        assert not store.start(replace(queued, owner="attempt-1"), "copy"), "a copy runs nothing"
        store.complete(replace(queued, owner="attempt-2"))
        assert store.claim(replace(queued, owner="redelivery")) is ClaimResult.DUPLICATE

    def test_a_deferred_delivery_stays_held_by_its_owner_through_the_back_off(
        self, store: Store
    ) -> None:
        queued = delivery(owner="web")
        store.claim(queued, queued=True)
        store.start(queued, "job-1")
        running = replace(queued, owner="job-1")

        store.defer(running, "RuntimeError: the disk is full", 30.0)
        assert store.claim(replace(queued, owner="redelivery")) is ClaimResult.IN_PROGRESS
        store.complete(running)
        assert store.claim(replace(queued, owner="redelivery")) is ClaimResult.DUPLICATE

    def test_a_delivery_is_forgotten_once_the_ttl_has_passed(
        self, make_store: StoreFactory
    ) -> None:
        store = make_store(ttl=1)
        claimed = delivery()
        store.claim(claimed)
        store.complete(claimed)
        time.sleep(1.2)
        assert store.claim(replace(claimed, owner="b")) is ClaimResult.CLAIMED

    def test_an_expected_task_is_open_with_its_family_and_nothing_heard_of_yet(
        self, store: Store
    ) -> None:
        task_id, before = f"contract-{uuid.uuid4().hex}", utcnow()
        store.expect(task_id, "lyrics")
        task = store.task(task_id)
        assert task is not None
        assert (task.task_id, task.family, task.state) == (task_id, "lyrics", TaskState.OPEN)
        assert (dict(task.stages), task.polls) == ({}, 0)
        assert _about_now(task.expected_at, before), task.expected_at
        assert _about_now(task.updated_at, before), task.updated_at

    def test_a_task_expected_again_takes_the_new_family_and_keeps_when_it_was_expected(
        self, store: Store
    ) -> None:
        task_id = f"contract-{uuid.uuid4().hex}"
        store.expect(task_id, "music")
        first = store.task(task_id)
        time.sleep(0.01)
        store.expect(task_id, "wav")
        again = store.task(task_id)
        assert first is not None
        assert again is not None
        assert (again.family, again.state, again.polls) == ("wav", TaskState.OPEN, 0)
        assert again.expected_at == first.expected_at
        assert again.updated_at >= first.updated_at

    def test_a_task_never_expected_is_none(self, store: Store) -> None:
        store.expect(f"contract-{uuid.uuid4().hex}", "music")
        assert store.task(f"contract-{uuid.uuid4().hex}") is None

    def test_a_task_id_of_the_longest_length_is_expected(self, store: Store) -> None:
        task_id = _longest_task_id()
        store.expect(task_id, "stems")
        task = store.task(task_id)
        assert task is not None
        assert (task.task_id, task.family) == (task_id, "stems")
        assert store.task(task_id[:-1]) is None, "the whole id is the key"

    def test_a_stage_of_an_unknown_task_creates_it_open_and_never_expected(
        self, store: Store
    ) -> None:
        task_id, at, before = _task_id(), utcnow() - timedelta(seconds=5), utcnow()
        store.record_stage(task_id, "lyrics", "complete", at=at, via=VIA_CALLBACK, final=None)
        task = store.task(task_id)
        assert task is not None
        assert (task.family, task.state, task.expected_at, task.polls) == (
            "lyrics",
            TaskState.OPEN,
            None,
            0,
        )
        assert dict(task.stages) == {"complete": at}
        assert dict(task.sources) == {"complete": VIA_CALLBACK}
        assert (task.overdue_at, task.next_poll_at) == (None, None)
        assert _about_now(task.updated_at, before), "heard of now, not when the stage was sent"

    def test_each_stage_keeps_the_time_and_the_way_it_first_came(self, store: Store) -> None:
        task_id, first, later = _task_id(), utcnow() - timedelta(minutes=3), utcnow()
        store.expect(task_id, "music")
        store.record_stage(task_id, "music", "text", at=first, via=VIA_POLL, final=None)
        store.record_stage(task_id, "wav", "text", at=later, via=VIA_CALLBACK, final=None)
        store.record_stage(task_id, "music", "first", at=later, via=VIA_CALLBACK, final=None)
        task = store.task(task_id)
        assert task is not None
        assert dict(task.stages) == {"text": first, "first": later}
        assert dict(task.sources) == {"text": VIA_POLL, "first": VIA_CALLBACK}
        assert (task.family, task.state) == ("music", TaskState.OPEN), "the task's own family"
        assert task.expected_at is not None

    def test_a_final_stage_settles_the_state_whatever_it_was(self, store: Store) -> None:
        complete, failed, lost = _task_id(), _task_id(), _task_id()
        for task_id in (complete, failed, lost):
            store.expect(task_id, "music")
        _hear(store, complete, "complete", via=VIA_CALLBACK, final=TaskState.COMPLETE)
        _hear(store, failed, "failed", via=VIA_POLL, final=TaskState.FAILED)
        now = utcnow()
        assert store.claim_task(lost, "reconciler", lease=60, now=now) is not None
        assert store.release_task(lost, "reconciler", lost=True).lost
        assert _state(store, lost) is TaskState.LOST
        _hear(store, lost, "complete", via=VIA_CALLBACK, final=TaskState.COMPLETE)

        assert _state(store, complete) is TaskState.COMPLETE
        assert _state(store, failed) is TaskState.FAILED
        assert _state(store, lost) is TaskState.COMPLETE, "a result found after all is a result"

    def test_a_task_expected_after_its_first_callback_keeps_its_stages_and_state(
        self, store: Store
    ) -> None:
        task_id, at = _task_id(), utcnow()
        _hear(store, task_id, "complete", at=at, final=TaskState.COMPLETE)
        store.expect(task_id, "music")
        task = store.task(task_id)
        assert task is not None
        assert (task.state, dict(task.stages)) == (TaskState.COMPLETE, {"complete": at})
        assert task.expected_at is not None

    def test_tasks_are_listed_the_most_recently_heard_of_first_and_by_state(
        self, store: Store
    ) -> None:
        older, old, new = _task_id(), _task_id(), _task_id()
        for task_id in (older, old, new):
            store.expect(task_id, "music")
            time.sleep(0.01)
        _hear(store, older, "complete", via=VIA_CALLBACK, final=TaskState.COMPLETE)

        assert _ids(store.tasks()) == [older, new, old]
        assert _ids(store.tasks(limit=2)) == [older, new]
        assert _ids(store.tasks(limit=None)) == [older, new, old]
        assert _ids(store.tasks(state=TaskState.OPEN)) == [new, old]
        assert _ids(store.tasks(state="open", limit=1)) == [new]
        assert _ids(store.tasks(state="complete")) == [older]
        assert _ids(store.tasks(state=TaskState.LOST)) == []

    def test_overdue_are_open_tasks_heard_of_before_the_cutoff_longest_silent_first(
        self, store: Store
    ) -> None:
        oldest, old, settled, recent = _task_id(), _task_id(), _task_id(), _task_id()
        for task_id in (oldest, old, settled):
            store.expect(task_id, "music")
            time.sleep(0.01)
        _hear(store, settled, "complete", via=VIA_CALLBACK, final=TaskState.COMPLETE)
        time.sleep(0.01)
        store.expect(recent, "music")
        heard = store.task(settled)
        assert heard is not None
        cutoff, now = heard.updated_at, utcnow()

        assert _ids(store.overdue(cutoff, now=now)) == [oldest, old]
        assert _ids(store.overdue(cutoff, now=now, limit=1)) == [oldest]
        assert _ids(store.overdue(now + timedelta(days=1), now=now)) == [oldest, old, recent]
        assert _ids(store.overdue(now - timedelta(days=1), now=now)) == []

    def test_overdue_leaves_out_tasks_whose_next_poll_is_not_due_or_whose_claim_is_held(
        self, store: Store
    ) -> None:
        waiting, claimed, free = _task_id(), _task_id(), _task_id()
        for task_id in (waiting, claimed, free):
            store.expect(task_id, "music")
            time.sleep(0.01)
        now = utcnow()
        store.claim_task(waiting, "reconciler", lease=60, now=now)
        store.release_task(
            waiting, "reconciler", polled=True, next_poll_at=now + timedelta(hours=1)
        )
        store.claim_task(claimed, "reconciler", lease=60, now=now)
        cutoff = now + timedelta(days=1)

        assert _ids(store.overdue(cutoff, now=now)) == [free]
        assert _ids(store.overdue(cutoff, now=now + timedelta(seconds=61))) == [claimed, free]
        later = now + timedelta(hours=2)
        assert _ids(store.overdue(cutoff, now=later)) == [claimed, free, waiting], (
            "the poll was heard of after the others were expected"
        )

    def test_a_task_is_claimed_by_one_owner_until_its_lease_runs_out(self, store: Store) -> None:
        task_id, now = _task_id(), utcnow()
        store.expect(task_id, "lyrics")

        claimed = store.claim_task(task_id, "owner-a", lease=60, now=now)
        assert claimed is not None
        assert (claimed.task_id, claimed.family, claimed.state) == (
            task_id,
            "lyrics",
            TaskState.OPEN,
        )
        assert store.claim_task(task_id, "owner-b", lease=60, now=now) is None
        assert store.claim_task(task_id, "owner-b", lease=60, now=now + timedelta(seconds=59)) is (
            None
        )
        again = store.claim_task(task_id, "owner-a", lease=60, now=now)
        assert again is not None, "the owner's own claim, sent again after a lost answer"
        after = now + timedelta(seconds=61)
        assert store.claim_task(task_id, "owner-b", lease=60, now=after) is not None
        assert store.claim_task(task_id, "owner-a", lease=60, now=after) is None

    def test_only_open_tasks_are_claimed(self, store: Store) -> None:
        settled, now = _task_id(), utcnow()
        _hear(store, settled, "complete", at=now, final=TaskState.COMPLETE)
        assert store.claim_task(settled, "owner-a", lease=60, now=now) is None
        assert store.claim_task(_task_id(), "owner-a", lease=60, now=now) is None, "unknown"

    def test_concurrent_claims_of_one_task_claim_it_once(self, store: Store) -> None:
        task_id, now = _task_id(), utcnow()
        store.expect(task_id, "music")
        barrier = threading.Barrier(8)
        winners: list[str] = []

        def claim(owner: str) -> None:
            barrier.wait()
            if store.claim_task(task_id, owner, lease=60, now=now) is not None:
                winners.append(owner)

        threads = [threading.Thread(target=claim, args=(f"owner-{n}",)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert len(winners) == 1, winners

    def test_a_task_is_released_only_by_its_owner_with_the_polls_counted(
        self, store: Store
    ) -> None:
        task_id, now = _task_id(), utcnow()
        store.expect(task_id, "music")
        store.claim_task(task_id, "owner-a", lease=60, now=now)

        next_poll = now + timedelta(minutes=5)
        assert store.release_task(task_id, "owner-b", polled=True, lost=True) == TaskChange()
        assert store.claim_task(task_id, "owner-b", lease=60, now=now) is None, "still a's"
        assert store.release_task(task_id, "owner-a", polled=True, next_poll_at=next_poll) == (
            TaskChange()
        )
        assert store.release_task(task_id, "owner-a", polled=True) == TaskChange(), "sent again"
        task = store.task(task_id)
        assert task is not None
        assert (task.state, task.polls, task.next_poll_at) == (TaskState.OPEN, 1, next_poll)
        assert store.claim_task(task_id, "owner-b", lease=60, now=now) is not None, "free again"
        store.release_task(task_id, "owner-b", polled=True)
        assert _polls(store, task_id) == 2

    def test_a_task_is_found_overdue_once_and_lost_once(self, store: Store) -> None:
        task_id, now = _task_id(), utcnow()
        store.expect(task_id, "music")

        store.claim_task(task_id, "owner-a", lease=60, now=now)
        assert store.release_task(task_id, "owner-a", overdue=True) == TaskChange(overdue=True)
        first = store.task(task_id)
        assert first is not None
        assert _about_now(first.overdue_at, now)
        store.claim_task(task_id, "owner-b", lease=60, now=now)
        assert store.release_task(task_id, "owner-b", overdue=True) == TaskChange()
        store.claim_task(task_id, "owner-a", lease=60, now=now)
        assert store.release_task(task_id, "owner-a", overdue=True, lost=True) == TaskChange(
            lost=True
        )
        task = store.task(task_id)
        assert task is not None
        assert (task.state, task.overdue_at) == (TaskState.LOST, first.overdue_at)
        assert store.claim_task(task_id, "owner-b", lease=60, now=now) is None, "lost is settled"
        assert _ids(store.overdue(now + timedelta(days=1), now=now)) == []

    def test_a_signature_goes_with_one_body_until_it_is_forgotten(self, store: Store) -> None:
        kept, forgotten = f"signature-{uuid.uuid4().hex}", f"signature-{uuid.uuid4().hex}"
        assert store.remember_signature(kept, "digest-a", ttl=3600)
        assert store.remember_signature(kept, "digest-a", ttl=3600), "the same body again"
        assert not store.remember_signature(kept, "digest-b", ttl=3600), "another body"
        assert store.remember_signature(f"signature-{uuid.uuid4().hex}", "digest-b", ttl=3600)

        assert store.remember_signature(forgotten, "digest-a", ttl=1)
        time.sleep(1.2)
        assert store.remember_signature(forgotten, "digest-b", ttl=3600), "forgotten after ttl"
        assert not store.remember_signature(forgotten, "digest-a", ttl=3600), "now b's"
        assert not store.remember_signature(kept, "digest-b", ttl=3600), "the other is kept"

    def test_concurrent_bodies_under_one_signature_one_wins(self, store: Store) -> None:
        signature = f"signature-{uuid.uuid4().hex}"
        barrier = threading.Barrier(8)
        accepted: list[str] = []

        def remember(digest: str) -> None:
            barrier.wait()
            if store.remember_signature(signature, digest, ttl=3600):
                accepted.append(digest)

        threads = [threading.Thread(target=remember, args=(f"digest-{n}",)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert len(accepted) == 1, accepted


class PersistentStoreContract(StoreContract):
    """What a store that keeps deliveries does besides: keep, list, reclaim, find and prune."""

    @pytest.fixture
    def store(self, make_store: StoreFactory) -> PersistentStore:
        built = make_store(ttl=3600, lease=300)
        assert isinstance(built, PersistentStore), "a persistent store subclasses PersistentStore"
        return built

    @pytest.fixture
    def short_lease(self, make_store: StoreFactory) -> PersistentStore:
        built = make_store(ttl=3600, lease=1)
        assert isinstance(built, PersistentStore)
        return built

    def test_a_claim_is_kept_with_its_payload_headers_owner_and_lease(
        self, store: PersistentStore
    ) -> None:
        claimed = delivery(owner="owner-a")
        store.claim(claimed)
        kept = _kept(store, claimed)
        assert (kept.task_id, kept.stage) == (claimed.task_id, claimed.stage)
        assert kept.state is DeliveryState.PROCESSING
        assert kept.payload == claimed.payload
        assert dict(kept.headers) == dict(claimed.headers)
        assert (kept.attempts, kept.owner, kept.released) == (1, "owner-a", False)
        assert kept.lease_expires_at is not None
        assert kept.lease_expires_at > utcnow()
        assert store.get(kept.id) == kept

    def test_a_queued_claim_is_pending_until_a_worker_starts_it(
        self, store: PersistentStore
    ) -> None:
        queued = delivery(owner="web")
        store.claim(queued, queued=True)
        assert _kept(store, queued).state is DeliveryState.PENDING
        store.start(queued, "job-1")
        started = _kept(store, queued)
        assert (started.state, started.owner) == (DeliveryState.PROCESSING, "job-1")

    def test_each_outcome_is_kept_and_listed_by_its_status(self, store: PersistentStore) -> None:
        done, released, failed, running = delivery(), delivery(), delivery(), delivery()
        for claimed in (done, released, failed, running):
            store.claim(claimed)
        store.complete(done)
        store.release(released, "RuntimeError: try again")
        store.fail(failed, "RuntimeError: kept for a replay")

        assert _kept(store, done).state is DeliveryState.DONE
        assert _outcome(store, released) == (DeliveryState.FAILED, True, "RuntimeError: try again")
        assert _outcome(store, failed) == (
            DeliveryState.FAILED,
            False,
            "RuntimeError: kept for a replay",
        )
        assert _tasks(store.list(status="done")) == {done.task_id}
        assert _tasks(store.list(status="failed")) == {released.task_id, failed.task_id}
        assert _tasks(store.list(status="pending")) == {running.task_id}
        assert len(store.list(limit=2)) == 2
        assert [kept.task_id for kept in store.list()][:1] == [failed.task_id], "newest first"

    def test_a_deferred_attempt_is_counted_and_holds_the_claim_for_the_back_off(
        self, store: PersistentStore
    ) -> None:
        claimed = delivery(owner="job-1")
        store.claim(claimed)
        store.defer(claimed, "RuntimeError: the disk is full", 600.0)
        kept = _kept(store, claimed)
        assert (kept.state, kept.owner, kept.attempts) == (DeliveryState.PENDING, "job-1", 2)
        assert kept.last_error == "RuntimeError: the disk is full"
        assert kept.lease_expires_at is not None
        assert kept.lease_expires_at > utcnow() + timedelta(seconds=600)

    def test_a_failed_delivery_is_reclaimed_by_a_new_owner_who_settles_it(
        self, store: PersistentStore
    ) -> None:
        claimed = delivery(owner="owner-a")
        store.claim(claimed)
        store.fail(claimed, "RuntimeError: the disk is full")
        taken = store.reclaim(_kept(store, claimed).id)
        assert taken is not None
        assert (taken.state, taken.attempts) == (DeliveryState.PROCESSING, 2)
        assert taken.owner not in (None, "owner-a")
        store.complete(taken.held())
        assert _kept(store, claimed).state is DeliveryState.DONE

    def test_reclaim_leaves_done_deliveries_and_live_claims_unless_told(
        self, store: PersistentStore
    ) -> None:
        done, live = delivery(), delivery(owner="alive")
        store.claim(done)
        store.complete(done)
        store.claim(live)
        done_id, live_id = _kept(store, done).id, _kept(store, live).id

        assert store.reclaim(done_id) is None
        assert store.reclaim(live_id) is None
        assert store.reclaim(live_id, abandoned_by="somebody else") is None
        abandoned = store.reclaim(live_id, abandoned_by="alive", queued=True)
        assert abandoned is not None
        assert abandoned.state is DeliveryState.PENDING
        forced = store.reclaim(done_id, force=True)
        assert forced is not None
        assert forced.state is DeliveryState.PROCESSING

    def test_a_claim_whose_lease_ran_out_is_taken_over(self, short_lease: PersistentStore) -> None:
        claimed = delivery(owner="crashed")
        short_lease.claim(claimed)
        time.sleep(1.2)
        assert short_lease.claim(replace(claimed, owner="b")) is ClaimResult.CLAIMED
        taken = _kept(short_lease, claimed)
        assert (taken.owner, taken.attempts) == ("b", 2)

    def test_pending_finds_deliveries_in_flight_unchanged_that_long_longest_first(
        self, store: PersistentStore
    ) -> None:
        running, waiting, done = delivery(), delivery(), delivery()
        store.claim(running)
        store.claim(waiting, queued=True)
        store.claim(done)
        store.complete(done)
        time.sleep(1.1)
        store.claim(delivery())  # too recent

        found = store.pending(timedelta(seconds=1))
        assert [kept.task_id for kept in found] == [running.task_id, waiting.task_id]
        assert [kept.task_id for kept in store.pending(timedelta(0), 1)] == [running.task_id]
        assert len(store.pending(timedelta(0))) == 3
        assert store.pending(timedelta(hours=1)) == []

    def test_prune_deletes_finished_deliveries_and_never_a_held_claim(
        self, store: PersistentStore
    ) -> None:
        finished, held = delivery(), delivery()
        store.claim(finished)
        store.complete(finished)
        store.claim(held)
        finished_id = _kept(store, finished).id
        time.sleep(0.01)
        assert store.prune(timedelta(0)) == 1
        assert store.get(finished_id) is None
        assert _kept(store, held).state is DeliveryState.PROCESSING

    def test_an_unknown_id_is_neither_found_nor_reclaimed(self, store: PersistentStore) -> None:
        for unknown in ("no-such-delivery", "987654321"):
            assert store.get(unknown) is None
            assert store.reclaim(unknown, force=True) is None

    def test_an_unreadable_body_is_kept_held_by_nobody_with_its_error(
        self, store: PersistentStore
    ) -> None:
        body = unreadable_delivery()
        assert store.keep_unreadable(body, "data.callbackType: not a known stage")
        kept = _kept(store, body)
        assert (kept.task_id, kept.stage) == (body.task_id, body.stage)
        assert (kept.state, kept.attempts) == (DeliveryState.UNREADABLE, 1)
        assert kept.last_error == "data.callbackType: not a known stage"
        assert (kept.owner, kept.lease_expires_at, kept.released) == (None, None, False)
        assert kept.payload == body.payload
        assert dict(kept.headers) == dict(body.headers)
        assert store.get(kept.id) == kept

    def test_the_same_unreadable_body_again_is_kept_once_and_left_as_it_was(
        self, store: PersistentStore
    ) -> None:
        body = unreadable_delivery()
        assert store.keep_unreadable(body, "the first error")
        first = _kept(store, body)
        again = replace(body, owner="b", received_at=utcnow())
        assert not store.keep_unreadable(again, "another error")
        assert _kept(store, body) == first

    def test_unreadable_bodies_are_listed_by_their_status_and_no_other(
        self, store: PersistentStore
    ) -> None:
        body, done, running = unreadable_delivery(), delivery(), delivery()
        store.keep_unreadable(body, "unreadable")
        store.claim(done)
        store.complete(done)
        store.claim(running)
        assert _tasks(store.list(status="unreadable")) == {body.task_id}
        for status in ("pending", "done", "failed"):
            assert body.task_id not in _tasks(store.list(status=status)), status
        assert body.task_id in _tasks(store.list())

    def test_an_unreadable_body_is_never_pending_nor_reclaimed_even_by_force(
        self, store: PersistentStore
    ) -> None:
        body = unreadable_delivery()
        store.keep_unreadable(body, "unreadable")
        kept_id = _kept(store, body).id
        time.sleep(0.01)
        assert store.pending(timedelta(0)) == []
        assert store.reclaim(kept_id) is None
        assert store.reclaim(kept_id, abandoned_by="") is None
        assert store.reclaim(kept_id, force=True) is None
        assert store.reclaim(kept_id, force=True, queued=True) is None
        still = _kept(store, body)
        assert (still.state, still.attempts, still.owner) == (DeliveryState.UNREADABLE, 1, None)

    def test_keeping_an_unreadable_body_leaves_the_tasks_claims_alone(
        self, store: PersistentStore
    ) -> None:
        claimed = delivery(owner="owner-a")
        store.claim(claimed)
        body = unreadable_delivery(task_id=claimed.task_id)
        assert store.keep_unreadable(body, "unreadable")
        assert store.claim(replace(claimed, owner="owner-b")) is ClaimResult.IN_PROGRESS
        store.complete(claimed)
        assert store.claim(replace(claimed, owner="owner-b")) is ClaimResult.DUPLICATE
        other = delivery("failed", task_id=claimed.task_id)
        assert store.claim(other) is ClaimResult.CLAIMED
        states = {kept.stage: kept.state for kept in store.list(task_id=claimed.task_id)}
        assert states == {
            "complete": DeliveryState.DONE,
            "failed": DeliveryState.PROCESSING,
            body.stage: DeliveryState.UNREADABLE,
        }

    def test_an_unreadable_body_is_pruned_once_old(self, store: PersistentStore) -> None:
        body = unreadable_delivery()
        store.keep_unreadable(body, "unreadable")
        kept_id = _kept(store, body).id
        assert store.prune(timedelta(hours=1)) == 0
        time.sleep(0.01)
        assert store.prune(timedelta(0)) == 1
        assert store.get(kept_id) is None
        assert store.keep_unreadable(body, "unreadable"), "pruned, it is kept anew"

    def test_delete_forgets_one_kept_delivery_and_says_whether_there_was_one(
        self, store: PersistentStore
    ) -> None:
        body, done = unreadable_delivery(), delivery()
        store.keep_unreadable(body, "unreadable")
        store.claim(done)
        store.complete(done)
        kept_id = _kept(store, body).id

        assert store.delete(kept_id)
        assert store.get(kept_id) is None
        assert store.list(status="unreadable") == []
        assert not store.delete(kept_id), "deleted already"
        assert _kept(store, done).state is DeliveryState.DONE, "the others stay"
        assert store.keep_unreadable(body, "unreadable"), "deleted, it is kept anew"
        for unknown in ("no-such-delivery", "987654321"):
            assert not store.delete(unknown)

    def test_an_unreadable_body_of_the_longest_task_id_and_stage_is_kept(
        self, store: PersistentStore
    ) -> None:
        body = unreadable_delivery(task_id=_longest_task_id())
        assert len(body.stage) <= MAX_STAGE_LENGTH, "the endpoint's key fits"
        longest = replace(body, stage=body.stage.ljust(MAX_STAGE_LENGTH, "f"))
        for kept in (body, longest):
            assert store.keep_unreadable(kept, "unreadable")
            [found] = [k for k in store.list(task_id=kept.task_id) if k.stage == kept.stage]
            assert store.get(found.id) == found
            assert found.stage.startswith(UNREADABLE_PREFIX)


def _kept(store: PersistentStore, claimed: Delivery) -> KeptDelivery:
    [kept] = store.list(task_id=claimed.task_id)
    return kept


def _outcome(store: PersistentStore, claimed: Delivery) -> tuple[DeliveryState, bool, Any]:
    kept = _kept(store, claimed)
    return kept.state, kept.released, kept.last_error


def _tasks(listed: Iterable[KeptDelivery]) -> set[str]:
    return {kept.task_id for kept in listed}


def _task_id() -> str:
    return f"contract-{uuid.uuid4().hex}"


def _hear(
    store: Store,
    task_id: str,
    stage: str,
    *,
    at: datetime | None = None,
    via: str = VIA_CALLBACK,
    final: TaskState | None = None,
) -> None:
    """A stage of a music task heard of, as the endpoint and reconciliation record it."""
    store.record_stage(task_id, "music", stage, at=at or utcnow(), via=via, final=final)


def _state(store: Store, task_id: str) -> TaskState:
    task = store.task(task_id)
    assert task is not None
    return task.state


def _polls(store: Store, task_id: str) -> int:
    task = store.task(task_id)
    assert task is not None
    return task.polls


def _ids(tasks: Iterable[TaskRecord]) -> list[str]:
    return [task.task_id for task in tasks]
