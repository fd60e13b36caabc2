"""Nothing acknowledged is lost: thread dispatch on persistent stores, replay, and the sweep.

Each test runs a real app with ``thread`` dispatch (or ``sync``, where said) on the persistent
store of the running parameter (SQLite, PostgreSQL, Redis, Flask-SQLAlchemy), or on the stores a
process that died can share (SQLite, PostgreSQL, Redis).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import Result
from flask import Flask

from flask_musiccallback import CallbackEvent, ConfigurationError, all_tracks_generated
from flask_musiccallback.dispatch.sweep import sweep
from flask_musiccallback.state import get_state
from flask_musiccallback.stores.base import DeliveryState, KeptDelivery
from flask_musiccallback.stores.owners import owner_process, process_owner
from flask_musiccallback.testing import build_callback

from .backends import (
    Backend,
    StoreApp,
    claim_in_a_process_that_dies,
    persistent_store,
    sqlite_url,
)
from .conftest import URL, AppFactory, thread_apps
from .test_persistent_stores import delivery_of, with_option


@pytest.fixture
def thread_app(persistent_app: StoreApp) -> Iterator[StoreApp]:
    """Apps with thread dispatch and a short back-off; their pools are shut down afterwards."""
    with thread_apps(persistent_app) as factory:
        yield factory


def post(app: Flask, payload: dict[str, Any]) -> tuple[int, Any]:
    response = app.test_client().post(URL, json=payload)
    return response.status_code, response.get_json()


def run(app: Flask, *args: str) -> Result:
    return app.test_cli_runner().invoke(args=["musiccallback", *args])


def wait_idle(app: Flask) -> None:
    assert get_state(app).dispatcher.wait_idle(timeout=10), "the pool did not settle in time"


def kept(app: Flask, task_id: str) -> KeptDelivery:
    [delivery] = persistent_store(app).list(task_id=task_id)
    return delivery


def test_a_delivery_is_recorded_pending_before_the_answer_and_settled_by_its_job(
    thread_app: StoreApp,
) -> None:
    app = thread_app(THREAD_POOL_SIZE=1)
    started, go_on = threading.Event(), threading.Event()

    def blocking(sender: Flask, event: CallbackEvent) -> None:
        if event.task_id == "running":
            started.set()
            go_on.wait(10)

    with all_tracks_generated.connected_to(blocking, sender=app):
        assert post(app, build_callback(task_id="running")) == (200, {"status": "received"})
        assert started.wait(5)
        assert post(app, build_callback(task_id="waiting")) == (200, {"status": "received"})
        running, waiting = kept(app, "running"), kept(app, "waiting")
        assert running.state is DeliveryState.PROCESSING
        assert waiting.state is DeliveryState.PENDING
        assert owner_process(waiting.owner) == owner_process(running.owner) == process_owner()
        assert waiting.owner != running.owner, "each claim has an owner of its own"
        assert waiting.payload["data"]["task_id"] == "waiting"
        go_on.set()
        wait_idle(app)
    assert {kept(app, task).state for task in ("running", "waiting")} == {DeliveryState.DONE}


def test_each_failed_attempt_is_recorded_and_shown(thread_app: StoreApp) -> None:
    app = thread_app(RETRY_ATTEMPTS=2, RETRY_BACKOFF=1.0)
    calls: list[int] = []

    def broken(sender: Flask, event: CallbackEvent) -> None:
        calls.append(1)
        raise RuntimeError(f"failure {len(calls)}")

    with all_tracks_generated.connected_to(broken, sender=app):
        post(app, build_callback(task_id="broken"))
        deadline = time.monotonic() + 5
        while kept(app, "broken").state is not DeliveryState.PENDING or not calls:
            assert time.monotonic() < deadline, "the failed attempt was not recorded"
            time.sleep(0.01)
        waiting = run(app, "show", kept(app, "broken").id).output
        wait_idle(app)
    assert "state:       pending" in waiting
    assert "attempts:    2" in waiting
    assert "last error:  RuntimeError: failure 1" in waiting

    final = kept(app, "broken")
    assert (final.state, final.attempts, final.last_error) == (
        DeliveryState.FAILED,
        2,
        "RuntimeError: failure 2",
    )
    assert len(calls) == 2


def test_a_back_off_longer_than_the_lease_keeps_the_delivery_from_being_taken_over(
    thread_app: StoreApp, persistent_backend: Backend
) -> None:
    # The back-off leaves seconds of margin past the lease: a slow machine changes nothing.
    app = thread_app(STORE=with_option(persistent_backend.url, "lease=1"), RETRY_BACKOFF=3)
    calls: list[float] = []
    failed = threading.Event()

    def fails_once(sender: Flask, event: CallbackEvent) -> None:
        calls.append(time.monotonic())
        if len(calls) == 1:
            failed.set()
            raise RuntimeError("downstream is down")

    payload = build_callback(task_id="backing-off")
    with all_tracks_generated.connected_to(fails_once, sender=app):
        post(app, payload)
        assert failed.wait(5)
        time.sleep(1.1)  # past the lease, inside the back-off
        assert post(app, payload) == (200, {"status": "duplicate"})
        replayed = run(app, "replay", "--pending")
        assert "skipped (pending, held by" in replayed.output
        wait_idle(app)
    assert len(calls) == 2
    assert calls[1] - calls[0] >= 3
    done = kept(app, "backing-off")
    assert (done.state, done.attempts) == (DeliveryState.DONE, 2)


def test_a_queued_job_whose_delivery_was_taken_over_runs_nothing(thread_app: StoreApp) -> None:
    app = thread_app(THREAD_POOL_SIZE=1)
    store = persistent_store(app)
    started, go_on = threading.Event(), threading.Event()
    calls: list[str] = []

    def blocking(sender: Flask, event: CallbackEvent) -> None:
        calls.append(event.task_id)
        if event.task_id == "running":
            started.set()
            go_on.wait(10)

    with all_tracks_generated.connected_to(blocking, sender=app):
        post(app, build_callback(task_id="running"))
        assert started.wait(5)
        post(app, build_callback(task_id="waiting"))
        # Another process replays the waiting delivery and finishes it first.
        taken = store.reclaim(kept(app, "waiting").id, force=True)
        assert taken is not None
        store.complete(taken.held())
        go_on.set()
        wait_idle(app)
    assert calls == ["running"]


def test_replay_under_thread_dispatch_runs_in_the_pool_and_waits_for_it(
    thread_app: StoreApp,
) -> None:
    app = thread_app(RETRY_ATTEMPTS=1)
    threads: list[str] = []

    def broken(sender: Flask, event: CallbackEvent) -> None:
        raise RuntimeError("down")

    with all_tracks_generated.connected_to(broken, sender=app):
        post(app, build_callback(task_id="again"))
        wait_idle(app)
    failed = kept(app, "again")
    assert failed.state is DeliveryState.FAILED

    def note(sender: Flask, event: CallbackEvent) -> None:
        time.sleep(0.2)
        threads.append(threading.current_thread().name)

    with all_tracks_generated.connected_to(note, sender=app):
        result = run(app, "replay", failed.id)
    assert result.exit_code == 0, result.output
    assert result.output == f"{failed.id}: done (attempt 2)\n"
    assert len(threads) == 1
    assert threads[0].startswith("musiccallback-")


# A process that died: replay --pending --older-than, and the sweep.


@pytest.fixture
def dead_store(shared_store_url: str) -> str:
    """A store URL (SQLite, PostgreSQL, Redis) holding one claim of a process that died."""
    claim_in_a_process_that_dies(shared_store_url, build_callback("complete", task_id="orphan"))
    return shared_store_url


def test_replay_pending_older_than_takes_only_deliveries_unchanged_that_long(
    make_app: AppFactory, dead_store: str
) -> None:
    app = make_app(STORE=dead_store, DISPATCH="thread")
    recent = run(app, "replay", "--pending", "--older-than", "60")
    assert (recent.exit_code, recent.output) == (0, "Nothing to replay.\n")
    time.sleep(0.05)
    old = run(app, "replay", "--pending", "--older-than", "0.01")
    assert old.exit_code == 0, old.output
    assert old.output.endswith(": done (attempt 2)\n")
    assert kept(app, "orphan").state is DeliveryState.DONE


def test_the_sweep_takes_pending_deliveries_past_the_age_and_leaves_live_claims(
    make_app: AppFactory, dead_store: str
) -> None:
    # Ages bound from below only (an hour, a sleep), so that a slow machine changes nothing.
    patient = make_app(STORE=dead_store, PENDING_SWEEP_AGE=3600)
    live = build_callback("complete", task_id="live")
    persistent_store(patient).claim(delivery_of(live), queued=True)
    assert sweep(patient) == [], "nothing has been pending for an hour"
    time.sleep(0.1)
    app = make_app(STORE=dead_store, PENDING_SWEEP_AGE=0.05)
    calls: list[str] = []
    with all_tracks_generated.connected_to(
        lambda sender, event: calls.append(event.task_id), sender=app
    ):
        [result] = sweep(app)
    assert result.result.value == "done"
    assert calls == ["orphan"]
    assert kept(app, "orphan").state is DeliveryState.DONE
    assert kept(app, "live").state is DeliveryState.PENDING


def test_a_process_sweeps_from_its_first_request_unless_testing(
    make_app: AppFactory, dead_store: str
) -> None:
    quiet = make_app(STORE=dead_store, PENDING_SWEEP_AGE=0.01)
    quiet.test_client().get("/")
    time.sleep(0.2)
    assert kept(quiet, "orphan").state is DeliveryState.PROCESSING, "no sweeper under testing"

    app = make_app(_testing=False, STORE=dead_store, DISPATCH="thread", PENDING_SWEEP_AGE=0.01)
    done = threading.Event()
    with all_tracks_generated.connected_to(lambda sender, event: done.set(), sender=app):
        assert app.test_client().get("/").status_code == 404
        assert done.wait(10), "the sweeper did not recover the delivery"
    state = get_state(app)
    assert state.sweeper is not None
    state.sweeper.stop()
    wait_idle(app)
    assert kept(app, "orphan").state is DeliveryState.DONE
    state.dispatcher.close(timeout=5)


@pytest.mark.parametrize(
    ("config", "why"),
    [
        ({"PENDING_SWEEP_AGE": None}, "off"),
        ({"PENDING_SWEEP_AGE": 0}, "off"),
        ({"STORE": "memory://"}, "nothing kept"),
        ({"DISPATCH": "celery"}, "workers sweep"),
    ],
)
def test_no_sweeper_in_the_web_process_when(
    make_app: AppFactory, tmp_path: Any, config: dict[str, Any], why: str
) -> None:
    config.setdefault("STORE", sqlite_url(tmp_path))
    assert get_state(make_app(**config)).sweeper is None, why


@pytest.mark.parametrize("value", [-1, "5m", True])
def test_a_bad_sweep_age_fails_at_start_up_naming_the_key(make_app: AppFactory, value: Any) -> None:
    with pytest.raises(ConfigurationError, match="MUSICCALLBACK_PENDING_SWEEP_AGE"):
        make_app(PENDING_SWEEP_AGE=value)
