"""The memory store: claim semantics, bounds (TTL and entry count), thread safety."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timezone

import pytest

from flask_musiccallback import ClaimResult, Delivery, MemoryStore, StoreError


def delivery(task_id: str = "t", stage: str = "complete", later: str | None = None) -> Delivery:
    return Delivery(
        task_id=task_id,
        stage=stage,
        payload={},
        received_at=datetime.now(timezone.utc),
        superseded_by=later,
    )


def test_claim_then_complete_makes_redeliveries_duplicates() -> None:
    store = MemoryStore(ttl=60)
    first = delivery()
    assert store.claim(first) is ClaimResult.CLAIMED
    assert store.claim(delivery()) is ClaimResult.IN_PROGRESS
    store.complete(first)
    assert store.claim(delivery()) is ClaimResult.DUPLICATE


def test_release_lets_a_redelivery_claim_again() -> None:
    store = MemoryStore(ttl=60)
    first = delivery()
    store.claim(first)
    store.release(first, "receiver raised")
    assert store.claim(delivery()) is ClaimResult.CLAIMED


def test_fail_is_remembered_like_done() -> None:
    store = MemoryStore(ttl=60)
    first = delivery()
    store.claim(first)
    store.fail(first, "receiver raised")
    assert store.claim(delivery()) is ClaimResult.DUPLICATE


def test_superseded_stage_is_stale_only_once_the_later_stage_is_done() -> None:
    store = MemoryStore(ttl=60)
    complete = delivery(stage="complete")
    store.claim(complete)
    assert store.claim(delivery(stage="first", later="complete")) is ClaimResult.CLAIMED
    store.complete(complete)
    assert store.claim(delivery(stage="text", later="complete")) is ClaimResult.STALE


def test_entries_expire_after_the_ttl() -> None:
    store = MemoryStore(ttl=1)
    first = delivery()
    store.claim(first)
    store.complete(first)
    time.sleep(1.05)
    assert store.claim(delivery()) is ClaimResult.CLAIMED


def test_expired_entries_are_dropped_from_memory() -> None:
    store = MemoryStore(ttl=1)
    for index in range(100):
        store.claim(delivery(task_id=str(index)))
    time.sleep(1.05)
    store.claim(delivery(task_id="new"))
    assert len(store) == 1


def test_entry_count_is_bounded_dropping_the_oldest() -> None:
    store = MemoryStore(ttl=3600, max_entries=50)
    for index in range(1000):
        claimed = delivery(task_id=str(index))
        store.claim(claimed)
        store.complete(claimed)
    assert len(store) == 50
    assert store.claim(delivery(task_id="999")) is ClaimResult.DUPLICATE
    assert store.claim(delivery(task_id="0")) is ClaimResult.CLAIMED


def test_max_entries_comes_from_the_url() -> None:
    assert MemoryStore.from_url("memory://?max_entries=7", ttl=5).max_entries == 7
    with pytest.raises(StoreError):
        MemoryStore.from_url("memory://?max_entries=many", ttl=5)
    with pytest.raises(StoreError):
        MemoryStore(ttl=5, max_entries=0)


def test_concurrent_claims_of_one_key_grant_exactly_one() -> None:
    store = MemoryStore(ttl=60)
    barrier = threading.Barrier(16)
    results: list[ClaimResult] = []
    lock = threading.Lock()

    def claim() -> None:
        barrier.wait()
        result = store.claim(delivery(task_id="race"))
        with lock:
            results.append(result)

    threads = [threading.Thread(target=claim) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results.count(ClaimResult.CLAIMED) == 1
    assert results.count(ClaimResult.IN_PROGRESS) == 15


def test_tasks_are_forgotten_after_the_ttl() -> None:
    store = MemoryStore(ttl=1)
    store.expect("t", "music")
    time.sleep(1.05)
    assert store.task("t") is None


def test_tasks_are_bounded_dropping_the_least_recently_expected() -> None:
    store = MemoryStore(ttl=3600, max_entries=50)
    store.expect("first", "music")
    for index in range(1000):
        store.expect(str(index), "music")
        store.expect("first", "lyrics")
    assert store.task("0") is None
    assert store.task("999") is not None
    assert store.task("first") is not None, "expected again, it is the newest"


def test_deliveries_never_push_tasks_out() -> None:
    store = MemoryStore(ttl=3600, max_entries=10)
    store.expect("t", "wav")
    for index in range(100):
        store.claim(delivery(task_id=str(index)))
    task = store.task("t")
    assert task is not None
    assert task.family == "wav"
