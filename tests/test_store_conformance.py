"""The guarantees every store gives (API.md §4, §6), run against each of them.

Each test builds a real app on the store of the running parameter (memory, SQLite, SQLite with
the portable claim, PostgreSQL, Redis, Flask-SQLAlchemy) and delivers callbacks to its endpoint.
The store contract's own tests (:mod:`flask_musiccallback.contract`) run on each store at the end,
through the same entry a store author points at a class of their own.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from flask_musiccallback import (
    Stage,
    all_tracks_generated,
    first_track_generated,
    task_failed,
    text_generated,
)
from flask_musiccallback.contract import PersistentStoreContract, StoreContract, StoreFactory
from flask_musiccallback.state import get_state
from flask_musiccallback.stores.base import Store
from flask_musiccallback.testing import build_callback, record_signals

from .backends import ALL, Backend, StoreApp, make_backend
from .backends import _factory as app_factory
from .conftest import URL, AppFactory
from .test_persistent_stores import with_option

RECEIVED = {"status": "received"}
DUPLICATE = {"status": "duplicate"}
RETRY = {"status": "retry"}


def post(app: Flask, payload: dict[str, Any]) -> tuple[int, Any]:
    response = app.test_client().post(URL, json=payload)
    return response.status_code, response.get_json()


def sent_names(recorded: list[tuple[str, dict[str, Any]]]) -> list[str]:
    return [name for name, _ in recorded]


def duplicate_reasons(recorded: list[tuple[str, dict[str, Any]]]) -> list[str]:
    return [kwargs["reason"] for name, kwargs in recorded if name == "callback_duplicate"]


@contextmanager
def failing_receiver(app: Flask, times: int = 1) -> Iterator[list[str]]:
    """``all_tracks_generated`` raises ``times`` times for ``app``, then succeeds."""
    calls: list[str] = []

    def receiver(sender: Flask, event: Any, **extra: Any) -> None:
        calls.append(event.task_id)
        if len(calls) <= times:
            raise RuntimeError("the disk is full")

    with all_tracks_generated.connected_to(receiver, sender=app):
        yield calls


def test_a_new_delivery_sends_its_signals_once(store_app: StoreApp) -> None:
    app = store_app()
    with record_signals(app) as recorded:
        assert post(app, build_callback("complete")) == (200, RECEIVED)
    assert sent_names(recorded) == ["callback_received", "all_tracks_generated"]


def test_a_redelivery_is_a_duplicate(store_app: StoreApp) -> None:
    app = store_app()
    payload = build_callback("complete")
    post(app, payload)
    with record_signals(app) as recorded:
        assert post(app, payload) == (200, DUPLICATE)
        assert post(app, payload) == (200, DUPLICATE)
    assert sent_names(recorded) == ["callback_duplicate", "callback_duplicate"]
    assert duplicate_reasons(recorded) == ["duplicate", "duplicate"]


def test_each_stage_and_each_task_is_its_own_delivery(store_app: StoreApp) -> None:
    app = store_app()
    with record_signals(app) as recorded:
        for task_id in ("task-a", "task-b"):
            for stage in ("text", "first", "complete"):
                assert post(app, build_callback(stage, task_id=task_id)) == (200, RECEIVED)
    stage_signals = [n for n in sent_names(recorded) if n != "callback_received"]
    assert stage_signals == ["text_generated", "first_track_generated", "all_tracks_generated"] * 2


def test_a_failure_is_dispatched_once(store_app: StoreApp) -> None:
    app = store_app()
    payload = build_callback("failed")
    calls: list[str] = []
    with task_failed.connected_to(lambda sender, event: calls.append(event.task_id), sender=app):
        assert post(app, payload) == (200, RECEIVED)
        assert post(app, payload) == (200, DUPLICATE)
    assert calls == [payload["data"]["task_id"]]


def test_text_and_first_after_complete_are_stale(store_app: StoreApp) -> None:
    app = store_app()
    post(app, build_callback("complete", task_id="late"))
    with record_signals(app) as recorded:
        assert post(app, build_callback("text", task_id="late")) == (200, DUPLICATE)
        assert post(app, build_callback("first", task_id="late")) == (200, DUPLICATE)
    assert duplicate_reasons(recorded) == ["stale", "stale"]


def test_text_of_another_task_is_not_stale(store_app: StoreApp) -> None:
    app = store_app()
    post(app, build_callback("complete", task_id="done-task"))
    assert post(app, build_callback("text", task_id="other-task")) == (200, RECEIVED)


def test_concurrent_deliveries_run_the_receivers_once(store_app: StoreApp) -> None:
    app = store_app()
    payload = build_callback("complete")
    runs: list[int] = []

    def slow_receiver(sender: Flask, event: Any, **extra: Any) -> None:
        runs.append(1)
        time.sleep(0.3)

    barrier = threading.Barrier(6)
    answers: list[tuple[int, Any]] = []

    def deliver() -> None:
        client = app.test_client()
        barrier.wait()
        response = client.post(URL, json=payload)
        answers.append((response.status_code, response.get_json()))

    with all_tracks_generated.connected_to(slow_receiver, sender=app), record_signals(app) as rec:
        threads = [threading.Thread(target=deliver) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    assert runs == [1]
    assert sorted(answers, key=str) == [(200, DUPLICATE)] * 5 + [(200, RECEIVED)]
    assert set(duplicate_reasons(rec)) <= {"in_progress", "duplicate"}
    assert "in_progress" in duplicate_reasons(rec)


def test_under_retry_a_receiver_error_answers_503_and_the_redelivery_runs(
    store_app: StoreApp,
) -> None:
    app = store_app(RECEIVER_ERRORS="retry")
    payload = build_callback("complete")
    with failing_receiver(app) as calls:
        assert post(app, payload) == (503, RETRY)
        assert post(app, payload) == (200, RECEIVED)
        assert post(app, payload) == (200, DUPLICATE)
    assert len(calls) == 2


def test_under_ack_a_receiver_error_answers_200_and_the_redelivery_is_a_duplicate(
    store_app: StoreApp,
) -> None:
    app = store_app(RECEIVER_ERRORS="ack")
    payload = build_callback("complete")
    with record_signals(app) as recorded, failing_receiver(app) as calls:
        assert post(app, payload) == (200, RECEIVED)
        assert post(app, payload) == (200, DUPLICATE)
    assert len(calls) == 1
    assert "receiver_failed" in sent_names(recorded)


def test_a_receiver_interrupted_by_a_base_exception_releases_the_delivery(
    store_app: StoreApp,
) -> None:
    app = store_app()
    payload = build_callback("text")
    calls: list[int] = []

    class Interrupted(BaseException):
        pass

    def receiver(sender: Flask, event: Any, **extra: Any) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise Interrupted

    with text_generated.connected_to(receiver, sender=app):
        with suppress(Interrupted):
            post(app, payload)
        assert post(app, payload) == (200, RECEIVED)
    assert calls == [1, 1]


def test_a_delivery_runs_again_once_the_ttl_has_passed(store_app: StoreApp) -> None:
    app = store_app(DEDUP_TTL=1)
    payload = build_callback("first")
    calls: list[str] = []
    with first_track_generated.connected_to(lambda s, event: calls.append(event.stage), sender=app):
        assert post(app, payload) == (200, RECEIVED)
        assert post(app, payload) == (200, DUPLICATE)
        time.sleep(1.2)
        assert post(app, payload) == (200, RECEIVED)
    assert calls == [Stage.FIRST, Stage.FIRST]


def test_two_apps_on_one_backend_share_what_they_remember(store_app: StoreApp) -> None:
    first, second = store_app(), store_app()
    payload = build_callback("complete")
    assert post(first, payload) == (200, RECEIVED)
    shared = get_state(first).store.persistent
    assert post(second, payload) == ((200, DUPLICATE) if shared else (200, RECEIVED))


# The store contract itself (flask_musiccallback.contract), through the entry a store author uses.

SHIPPED_PERSISTENT = [name for name in ALL if name != "memory"]


def built_store(
    request: pytest.FixtureRequest, make_app: AppFactory, backend: Backend
) -> StoreFactory:
    """``make_store`` of the contract for a shipped store: built as an app configures it."""

    def make(*, ttl: int, lease: int | None = None) -> Store:
        url = backend.url if lease is None else with_option(backend.url, f"lease={lease}")
        return get_state(app_factory(request, make_app, backend)(DEDUP_TTL=ttl, STORE=url)).store

    return make


class TestMemoryStoreContract(StoreContract):
    @pytest.fixture
    def make_store(
        self, request: pytest.FixtureRequest, make_app: AppFactory, tmp_path: Path
    ) -> StoreFactory:
        return built_store(request, make_app, make_backend("memory", request, tmp_path))


class TestPersistentStoreContract(PersistentStoreContract):
    @pytest.fixture(params=SHIPPED_PERSISTENT)
    def make_store(
        self, request: pytest.FixtureRequest, make_app: AppFactory, tmp_path: Path
    ) -> StoreFactory:
        return built_store(request, make_app, make_backend(request.param, request, tmp_path))
