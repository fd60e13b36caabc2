"""What persistent stores keep (API.md §6), on SQLite, PostgreSQL, Redis and Flask-SQLAlchemy."""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask

from flask_musiccallback import Delivery, all_tracks_generated
from flask_musiccallback.families import MUSIC
from flask_musiccallback.stores.base import (
    MAX_TASK_ID_LENGTH,
    ClaimResult,
    DeliveryState,
    paced,
)
from flask_musiccallback.stores.owners import owner_process, process_owner
from flask_musiccallback.testing import build_callback, signature_headers

from .backends import Backend, StoreApp, persistent_store
from .conftest import URL

HMAC_KEY = "hmac-key-for-tests"


def post(app: Flask, payload: dict[str, Any], **headers: str) -> tuple[int, Any]:
    response = app.test_client().post(URL, json=payload, headers=headers)
    return response.status_code, response.get_json()


def delivery_of(payload: dict[str, Any]) -> Delivery:
    """The delivery the endpoint would hand the store for ``payload``."""
    return MUSIC.delivery(MUSIC.load(payload), payload)


def with_option(url: str, option: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}{option}"


def raising(sender: Flask, **extra: Any) -> None:
    raise RuntimeError("the disk is full")


def test_an_accepted_delivery_is_kept_with_its_payload_and_redacted_headers(
    persistent_app: StoreApp,
) -> None:
    app = persistent_app(HMAC_KEY=HMAC_KEY)
    payload = build_callback("complete", task_id="kept-1")
    headers = signature_headers("kept-1", HMAC_KEY)
    assert post(app, payload, **headers) == (200, {"status": "received"})

    [kept] = persistent_store(app).list()
    assert (kept.task_id, kept.stage, kept.state) == ("kept-1", "complete", DeliveryState.DONE)
    assert kept.payload == payload
    assert kept.attempts == 1
    assert kept.last_error is None
    assert kept.owner is None
    assert kept.headers["X-Webhook-Signature"] == "[redacted]"
    assert kept.headers["X-Webhook-Timestamp"] == headers["X-Webhook-Timestamp"]
    assert kept.headers["Content-Type"] == "application/json"
    assert HMAC_KEY not in repr(kept)
    assert kept.created_at <= kept.updated_at
    assert kept.received_at.tzinfo is not None


def test_a_receiver_error_under_retry_is_kept_as_failed_until_the_redelivery_succeeds(
    persistent_app: StoreApp,
) -> None:
    app = persistent_app(RECEIVER_ERRORS="retry")
    store = persistent_store(app)
    payload = build_callback("complete")
    with all_tracks_generated.connected_to(raising, sender=app):
        assert post(app, payload) == (503, {"status": "retry"})
    [kept] = store.list()
    assert kept.state is DeliveryState.FAILED
    assert kept.released
    assert kept.attempts == 1
    assert kept.last_error == "RuntimeError: the disk is full"

    assert post(app, payload) == (200, {"status": "received"})
    kept = store.get(kept.id)
    assert kept is not None
    assert (kept.state, kept.attempts, kept.released) == (DeliveryState.DONE, 2, False)


def test_a_receiver_error_under_ack_is_kept_as_failed_for_a_replay(
    persistent_app: StoreApp,
) -> None:
    app = persistent_app(RECEIVER_ERRORS="ack")
    store = persistent_store(app)
    payload = build_callback("complete")
    with all_tracks_generated.connected_to(raising, sender=app):
        assert post(app, payload) == (200, {"status": "received"})
    assert post(app, payload) == (200, {"status": "duplicate"})
    [kept] = store.list(status="failed")
    assert not kept.released
    assert kept.last_error == "RuntimeError: the disk is full"
    assert store.list(status="done") == []


def test_list_filters_by_status_and_task_and_shows_the_latest_change_first(
    persistent_app: StoreApp,
) -> None:
    app = persistent_app(RECEIVER_ERRORS="ack")
    store = persistent_store(app)
    post(app, build_callback("text", task_id="task-a"))
    with all_tracks_generated.connected_to(raising, sender=app):
        post(app, build_callback("complete", task_id="task-b"))
    post(app, build_callback("first", task_id="task-a"))

    assert [(k.task_id, k.stage) for k in store.list()] == [
        ("task-a", "first"),
        ("task-b", "complete"),
        ("task-a", "text"),
    ]
    assert [k.stage for k in store.list(task_id="task-a")] == ["first", "text"]
    assert [k.task_id for k in store.list(status="failed")] == ["task-b"]
    assert [k.stage for k in store.list(status="done", task_id="task-a")] == ["first", "text"]
    assert len(store.list(limit=2)) == 2
    assert len(store.list(limit=None)) == 3
    assert store.list(status="pending") == []


def test_a_delivery_being_processed_is_listed_as_pending_with_its_owner_and_lease(
    persistent_app: StoreApp,
) -> None:
    app = persistent_app()
    store = persistent_store(app)
    seen = []

    def look(sender: Flask, **extra: Any) -> None:
        seen.extend(store.list(status="pending"))

    with all_tracks_generated.connected_to(look, sender=app):
        post(app, build_callback("complete", task_id="busy"))
    [kept] = seen
    assert kept.state is DeliveryState.PROCESSING
    assert kept.owner is not None
    assert owner_process(kept.owner) == process_owner()
    assert not kept.lease_expired()
    assert store.list(status="pending") == []


def test_an_unknown_id_is_not_found(persistent_app: StoreApp) -> None:
    store = persistent_store(persistent_app())
    assert store.get("12345") is None
    assert store.get("no/such") is None
    assert store.reclaim("12345") is None


def test_a_claim_whose_lease_ran_out_is_taken_over_by_the_next_delivery(
    persistent_app: StoreApp, persistent_backend: Backend
) -> None:
    app = persistent_app(STORE=with_option(persistent_backend.url, "lease=1"))
    store = persistent_store(app)
    payload = build_callback("complete")
    # A process claims the delivery and dies before settling it.
    assert store.claim(delivery_of(payload)) is ClaimResult.CLAIMED

    assert post(app, payload) == (200, {"status": "duplicate"})
    time.sleep(1.1)
    assert post(app, payload) == (200, {"status": "received"})
    [kept] = store.list()
    assert (kept.state, kept.attempts) == (DeliveryState.DONE, 2)


def test_reclaim_takes_failed_and_abandoned_deliveries_and_the_rest_only_when_forced(
    persistent_app: StoreApp, persistent_backend: Backend
) -> None:
    app = persistent_app(STORE=with_option(persistent_backend.url, "lease=1"))
    store = persistent_store(app)
    done, failed, live = (delivery_of(build_callback("complete")) for _ in range(3))
    for delivery in (done, failed, live):
        store.claim(delivery)
    store.complete(done)
    store.fail(failed, "boom")
    ids = {k.task_id: k.id for k in store.list()}

    assert store.reclaim(ids[done.task_id]) is None
    assert store.reclaim(ids[live.task_id]) is None
    taken = store.reclaim(ids[failed.task_id])
    assert taken is not None
    assert (taken.state, taken.attempts, taken.last_error) == (DeliveryState.PROCESSING, 2, "boom")
    assert store.reclaim(ids[failed.task_id]) is None, "a reclaimed delivery is held"

    forced = store.reclaim(ids[done.task_id], force=True)
    assert forced is not None
    assert forced.state is DeliveryState.PROCESSING
    time.sleep(1.1)
    abandoned = store.reclaim(ids[live.task_id])
    assert abandoned is not None
    assert abandoned.attempts == 2


def test_prune_deletes_old_deliveries_but_keeps_claims_still_held(
    persistent_app: StoreApp,
) -> None:
    app = persistent_app()
    store = persistent_store(app)
    finished, held = (build_callback("complete") for _ in range(2))
    post(app, finished)
    store.claim(delivery_of(held))
    time.sleep(0.05)

    assert store.prune(timedelta(days=1)) == 0
    assert store.prune(timedelta(0)) == 1
    assert [k.task_id for k in store.list()] == [held["data"]["task_id"]]
    # Pruned, a delivery is forgotten: the provider's next delivery of it runs again.
    assert post(app, finished) == (200, {"status": "received"})


def test_prune_deletes_in_batches_stepping_over_held_claims(persistent_app: StoreApp) -> None:
    """Batches smaller than what expired, with held claims among the expired: every finished
    delivery goes, every held one stays, and the count is exact."""
    app = persistent_app()
    store = persistent_store(app)
    store.prune_batch = 3
    held = [build_callback("complete") for _ in range(4)]
    for payload in held:
        store.claim(delivery_of(payload))
    finished = [build_callback("complete") for _ in range(10)]
    for payload in finished:
        post(app, payload)
    time.sleep(0.05)

    assert store.prune(timedelta(0)) == 10
    left = {kept.task_id for kept in store.list(limit=None)}
    assert left == {payload["data"]["task_id"] for payload in held}
    assert store.prune(timedelta(0)) == 0


def test_a_prune_rests_between_its_steps_as_long_as_each_took() -> None:
    """What a prune shares with the claims (SQLite's write lock, Redis's one thread) is theirs at
    least half the time."""
    starts: list[float] = []
    ends: list[float] = []

    def step() -> tuple[int, bool]:
        starts.append(time.monotonic())
        time.sleep(0.02)
        ends.append(time.monotonic())
        return 2, len(starts) < 3

    assert paced(step) == 6
    assert len(starts) == 3
    for start, end, next_start in zip(starts, ends, starts[1:], strict=False):
        assert next_start - end >= end - start


def test_a_prune_with_a_rate_deletes_no_more_rows_a_second_than_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A database writes for each row deleted, and claims wait for those writes: a rate bounds
    them, however quick the steps. No rest follows the last step."""
    rests: list[float] = []
    monkeypatch.setattr(time, "sleep", rests.append)
    steps = iter([(50, True), (50, True), (20, True), (0, False)])

    assert paced(lambda: next(steps), rate=1000) == 120
    assert len(rests) == 3
    for rest, rows in zip(rests, (50, 50, 20), strict=True):
        assert rows / 1000 - 0.01 < rest <= rows / 1000  # less the step's own time

    with pytest.raises(ValueError, match="above 0"):
        paced(lambda: (0, False), rate=0)


def test_a_queued_claim_is_pending_until_a_worker_starts_it(persistent_app: StoreApp) -> None:
    app = persistent_app()
    store = persistent_store(app)
    delivery = delivery_of(build_callback("complete"))
    assert store.claim(delivery, queued=True) is ClaimResult.CLAIMED
    [kept] = store.list(status="pending")
    assert kept.state is DeliveryState.PENDING
    assert store.claim(replace(delivery, owner="redelivery")) is ClaimResult.IN_PROGRESS

    assert store.start(delivery, "job-1") is True
    [kept] = store.list(status="pending")
    assert (kept.state, kept.owner) == (DeliveryState.PROCESSING, "job-1")
    assert kept.attempts == 1
    assert store.start(delivery, "job-2") is False, "one job starts it"
    store.complete(replace(delivery, owner="job-1"))
    assert store.claim(delivery) is ClaimResult.DUPLICATE
    assert store.start(delivery, "job-3") is False


def test_a_job_does_not_start_a_delivery_a_replay_took_over(persistent_app: StoreApp) -> None:
    store = persistent_store(persistent_app())
    delivery = delivery_of(build_callback("complete"))
    store.claim(delivery, queued=True)
    [kept] = store.list()
    assert store.reclaim(kept.id, force=True) is not None
    assert store.start(delivery, "job") is False
    assert store.start(replace(delivery, task_id="no-such-task"), "job") is False


def test_a_deferred_attempt_is_counted_and_holds_the_claim_past_the_lease(
    persistent_app: StoreApp, persistent_backend: Backend
) -> None:
    app = persistent_app(STORE=with_option(persistent_backend.url, "lease=1"))
    store = persistent_store(app)
    delivery = delivery_of(build_callback("complete"))
    store.claim(delivery, queued=True)
    assert store.start(delivery, "attempt-1")
    store.defer(replace(delivery, owner="attempt-1"), "RuntimeError: down", 1.5)

    [kept] = store.list(status="pending")
    assert (kept.state, kept.attempts, kept.last_error) == (
        DeliveryState.PENDING,
        2,
        "RuntimeError: down",
    )
    assert kept.lease_expires_at is not None
    assert kept.lease_expires_at - kept.updated_at >= timedelta(seconds=2.4)
    time.sleep(1.1)  # past the lease, inside the back-off and a lease
    assert store.claim(delivery) is ClaimResult.IN_PROGRESS
    assert store.reclaim(kept.id) is None
    assert store.start(replace(delivery, owner="attempt-1"), "attempt-2"), "the retry starts it"
    store.fail(replace(delivery, owner="attempt-2"), "RuntimeError: still down")
    failed = store.get(kept.id)
    assert failed is not None
    assert (failed.state, failed.attempts, failed.last_error) == (
        DeliveryState.FAILED,
        2,
        "RuntimeError: still down",
    )


@pytest.mark.parametrize("lease", ["0", "soon"])
def test_a_bad_lease_fails_at_start_up(
    persistent_backend: Backend, make_app: Any, lease: str
) -> None:
    from flask_musiccallback import StoreError

    with pytest.raises(StoreError, match="lease"):
        make_app(STORE=with_option(persistent_backend.url, f"lease={lease}"))


def test_the_longest_task_id_is_kept_and_a_longer_one_is_not_a_callback(
    persistent_app: StoreApp,
) -> None:
    """A task id every store can key is accepted; one no store could is never a 503: refused
    (422) on an open endpoint, and behind a token kept as unreadable, filed under no task id."""
    app = persistent_app()
    longest = "é-" * 127 + "x"
    assert len(longest) == MAX_TASK_ID_LENGTH
    assert post(app, build_callback("complete", task_id=longest)) == (200, {"status": "received"})
    assert [kept.task_id for kept in persistent_store(app).list()] == [longest]
    unusable_ids = (longest + "x", "task\x00id", "task\nid")
    for unusable in unusable_ids:
        answer = post(app, build_callback("complete", task_id=unusable))
        assert answer == (200, {"status": "kept"})
    kept = persistent_store(app).list(status="unreadable")
    assert sorted(delivery.task_id for delivery in kept) == ["-"] * len(unusable_ids)
    open_app = persistent_app(TOKEN=None)
    for unusable in unusable_ids:
        status, refused = post(open_app, build_callback("complete", task_id=unusable))
        assert (status, refused["reason"]) == (422, "invalid_payload")
        assert list(refused["errors"]) == ["task_id"]


def test_any_error_text_of_a_receiver_is_kept(persistent_app: StoreApp) -> None:
    """Even one a text column would refuse as it is (a NUL): the failure is recorded, and 200."""
    app = persistent_app(RECEIVER_ERRORS="ack")

    def odd(sender: Flask, **extra: Any) -> None:
        raise ValueError("bytes b'\x00\xff' and ☃ " + "x" * 10_000)

    with all_tracks_generated.connected_to(odd, sender=app):
        assert post(app, build_callback("complete")) == (200, {"status": "received"})
    [kept] = persistent_store(app).list(status="failed")
    assert kept.last_error is not None
    assert kept.last_error.startswith("ValueError: bytes b'")
    assert "☃" in kept.last_error
    assert len(kept.last_error) <= 4000
