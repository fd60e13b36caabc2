"""Reconciliation (API.md section 10): tasks whose callbacks never came are found overdue, polled
through the callbacks' deduplication, and given up as lost; against the fake provider over real
HTTP, on every store."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from flask import Flask

from flask_musiccallback import TaskState, all_tracks_generated
from flask_musiccallback.reconcile import Reconciled, Reconciliation, reconcile
from flask_musiccallback.state import get_state
from flask_musiccallback.stores.base import utcnow
from flask_musiccallback.testing import CallbackClient, record_signals

from .backends import StoreApp
from .fake_provider import Answer, FakeProvider

API_KEY = "provider-api-key"

Recorded = list[tuple[str, dict[str, Any]]]


@pytest.fixture
def app(store_app: StoreApp, provider: FakeProvider) -> Flask:
    """Tasks are overdue as soon as they are silent, and lost after an hour."""
    return store_app(
        API_KEY=API_KEY, API_BASE_URL=provider.url, RECONCILE_AFTER=0, RECONCILE_GIVE_UP=3600
    )


@pytest.fixture
def recorded(app: Flask) -> Iterator[Recorded]:
    with record_signals(app) as signals:
        yield signals


def expect(app: Flask, *task_ids: str, family: str = "music") -> None:
    music = get_state(app).extension
    with app.app_context():
        for task_id in task_ids:
            music.expect(task_id, family=family)


def run(app: Flask, **options: Any) -> Reconciliation:
    """A reconciliation run, and then every store write it caused, made."""
    result = reconcile(app, **options)
    get_state(app).extension.wait_idle(10, app=app)
    return result


def task(app: Flask, task_id: str) -> Any:
    get_state(app).extension.wait_idle(10, app=app)
    with app.app_context():
        return get_state(app).extension.task(task_id)


def named(recorded: Recorded, *names: str) -> list[str]:
    return [name for name, _ in recorded if name in names]


SIGNALS = ("task_overdue", "task_lost", "all_tracks_generated", "text_generated")


def test_an_expected_task_without_callbacks_is_polled_once_and_dispatched_once(
    app: Flask, provider: FakeProvider, recorded: Recorded
) -> None:
    provider.statuses("t1", "SUCCESS")
    expect(app, "t1")

    first = run(app)
    again = run(app)

    assert [(done.task_id, done.result) for done in first.tasks] == [("t1", Reconciled.POLLED)]
    assert first.tasks[0].poll is not None
    assert first.tasks[0].poll.status == "SUCCESS"
    assert again.tasks == [], "a complete task is reconciled no more"
    assert [request["task_id"] for request in provider.requests] == ["t1"]
    assert named(recorded, *SIGNALS) == ["task_overdue", "all_tracks_generated"]
    overdue = recorded[0][1]["task"]
    assert (overdue.task_id, overdue.family, overdue.state) == ("t1", "music", TaskState.OPEN)
    done = task(app, "t1")
    assert (done.state, done.polls, done.sources) == (TaskState.COMPLETE, 1, {"complete": "poll"})
    assert done.overdue_at is not None


def test_the_late_real_callback_is_then_a_duplicate(
    app: Flask, provider: FakeProvider, recorded: Recorded
) -> None:
    provider.statuses("t1", "SUCCESS")
    expect(app, "t1")
    run(app)

    answer = CallbackClient(app).deliver("complete", task_id="t1")

    assert answer.json == {"status": "duplicate"}
    assert named(recorded, "all_tracks_generated") == ["all_tracks_generated"]
    assert task(app, "t1").sources == {"complete": "poll"}


def test_a_task_still_running_is_polled_again_only_after_its_back_off(
    app: Flask, provider: FakeProvider, recorded: Recorded
) -> None:
    provider.statuses("t1", "PENDING", "TEXT_SUCCESS", "SUCCESS")
    expect(app, "t1")

    first = run(app)
    at_once = run(app)
    waiting = task(app, "t1")
    later = run(app, now=utcnow() + timedelta(minutes=45))

    assert first.tasks[0].result is Reconciled.POLLED
    assert at_once.tasks == []
    assert waiting.next_poll_at is not None
    assert waiting.next_poll_at > utcnow()
    assert [done.poll.status for done in later.tasks if done.poll] == ["TEXT_SUCCESS"]
    assert named(recorded, *SIGNALS) == ["task_overdue", "text_generated"], "overdue once"
    polled = task(app, "t1")
    assert (polled.state, polled.polls) == (TaskState.OPEN, 2)
    assert polled.next_poll_at is not None
    assert polled.next_poll_at > waiting.next_poll_at


def test_past_the_give_up_an_open_task_is_lost_once_and_polled_no_more(
    store_app: StoreApp, provider: FakeProvider
) -> None:
    app = store_app(API_KEY=API_KEY, API_BASE_URL=provider.url, RECONCILE_AFTER=0)
    provider.statuses("t1", "PENDING")
    expect(app, "t1")
    with record_signals(app) as recorded:
        polled = run(app)
        lost = run(app, now=utcnow() + timedelta(days=2))
        after = run(app, now=utcnow() + timedelta(days=3))

    assert [done.result for done in polled.tasks] == [Reconciled.POLLED]
    assert [done.result for done in lost.tasks] == [Reconciled.LOST]
    assert after.tasks == []
    assert len(provider.requests) == 1, "a task given up is not polled"
    assert named(recorded, *SIGNALS) == ["task_overdue", "task_lost"]
    assert recorded[-1][1]["task"].state is TaskState.LOST
    assert task(app, "t1").state is TaskState.LOST


def test_a_task_silent_past_the_give_up_at_its_first_run_is_overdue_then_lost(
    store_app: StoreApp, provider: FakeProvider
) -> None:
    app = store_app(
        API_KEY=API_KEY, API_BASE_URL=provider.url, RECONCILE_AFTER=0, RECONCILE_GIVE_UP=0
    )
    expect(app, "t1")
    with record_signals(app) as recorded:
        result = run(app)

    assert [done.result for done in result.tasks] == [Reconciled.LOST]
    assert provider.requests == []
    assert named(recorded, *SIGNALS) == ["task_overdue", "task_lost"]


def test_a_result_found_after_the_give_up_still_settles_the_task(
    store_app: StoreApp, provider: FakeProvider
) -> None:
    app = store_app(
        API_KEY=API_KEY, API_BASE_URL=provider.url, RECONCILE_AFTER=0, RECONCILE_GIVE_UP=0
    )
    expect(app, "t1")
    run(app)

    CallbackClient(app).deliver("complete", task_id="t1")

    assert task(app, "t1").state is TaskState.COMPLETE


def test_a_dry_run_says_what_it_would_do_and_changes_nothing(
    app: Flask, provider: FakeProvider, recorded: Recorded
) -> None:
    provider.statuses("t1", "SUCCESS")
    expect(app, "t1")
    before = task(app, "t1")

    result = run(app, dry_run=True)

    assert result.dry_run
    assert [(done.task_id, done.result, done.overdue) for done in result.tasks] == [
        ("t1", Reconciled.POLLED, True)
    ]
    assert provider.requests == []
    assert recorded == []
    assert task(app, "t1") == before
    assert [done.task_id for done in run(app).tasks] == ["t1"], "the real run still finds it"


def test_a_rate_limit_backs_the_task_off_past_retry_after_and_stops_the_run(
    app: Flask, provider: FakeProvider, recorded: Recorded
) -> None:
    busy = {"code": 429, "msg": "Too many requests"}
    provider.script("t1", Answer(429, busy, {"Retry-After": "1200"}))
    provider.statuses("t2", "SUCCESS")
    expect(app, "t1")
    expect(app, "t2")
    started = utcnow()

    result = run(app)

    assert result.stopped is not None
    assert "429" in result.stopped
    assert [(done.task_id, done.result) for done in result.tasks] == [
        ("t1", Reconciled.POLLED),
        ("t2", Reconciled.SKIPPED),
    ]
    assert [request["task_id"] for request in provider.requests] == ["t1"], "nothing after it"
    backed_off = task(app, "t1")
    assert backed_off.next_poll_at is not None
    assert backed_off.next_poll_at >= started + timedelta(seconds=1200)
    assert backed_off.polls == 1
    assert named(recorded, "all_tracks_generated") == []


def test_a_server_error_backs_off_longer_than_a_poll_that_answered(
    app: Flask, provider: FakeProvider
) -> None:
    provider.script("t1", Answer(500, "<html>oops</html>"))
    provider.statuses("t2", "PENDING")
    expect(app, "t2")
    run(app)
    expect(app, "t1")

    result = run(app)

    assert result.stopped is not None
    answered, failed = task(app, "t2"), task(app, "t1")
    assert answered.next_poll_at is not None
    assert failed.next_poll_at is not None
    assert failed.next_poll_at - utcnow() > answered.next_poll_at - utcnow()


def test_an_answer_about_the_task_alone_does_not_stop_the_run(
    app: Flask, provider: FakeProvider
) -> None:
    provider.statuses("t2", "SUCCESS")  # t1 is unknown to the provider: code 400
    expect(app, "t1")
    expect(app, "t2")

    result = run(app)

    assert result.stopped is None
    assert [done.task_id for done in result.tasks] == ["t1", "t2"]
    assert result.tasks[0].error is not None
    assert "400" in result.tasks[0].error
    assert task(app, "t2").state is TaskState.COMPLETE


def test_without_an_api_key_tasks_are_still_found_overdue_and_lost(
    store_app: StoreApp, provider: FakeProvider
) -> None:
    app = store_app(API_BASE_URL=provider.url, RECONCILE_AFTER=0, RECONCILE_GIVE_UP=3600)
    expect(app, "t1")
    with record_signals(app) as recorded:
        overdue = run(app)
        again = run(app, now=utcnow() + timedelta(minutes=30))
        lost = run(app, now=utcnow() + timedelta(hours=2))

    assert [(done.result, done.error) for done in overdue.tasks] == [
        (Reconciled.OVERDUE, "no API key")
    ]
    assert again.tasks == [], "it waits for its give-up"
    assert [done.result for done in lost.tasks] == [Reconciled.LOST]
    assert provider.requests == []
    assert named(recorded, *SIGNALS) == ["task_overdue", "task_lost"]


def test_a_task_its_first_callback_created_is_reconciled_too(
    app: Flask, provider: FakeProvider, recorded: Recorded
) -> None:
    provider.statuses("t1", "SUCCESS")
    CallbackClient(app).deliver("text", task_id="t1")
    created = task(app, "t1")

    run(app)

    assert (created.family, created.state, created.expected_at) == ("music", TaskState.OPEN, None)
    assert named(recorded, *SIGNALS) == ["text_generated", "task_overdue", "all_tracks_generated"]
    done = task(app, "t1")
    assert done.state is TaskState.COMPLETE
    assert done.sources == {"text": "callback", "complete": "poll"}


def test_each_family_is_polled_at_its_own_record_endpoint(
    app: Flask, provider: FakeProvider
) -> None:
    expect(app, "w1", family="wav")

    run(app)

    assert provider.paths == ["/api/v1/wav/record-info"]


def test_a_second_run_of_the_same_process_meanwhile_does_nothing(
    app: Flask, provider: FakeProvider
) -> None:
    provider.statuses("t1", "SUCCESS")
    expect(app, "t1")
    inside, release = threading.Event(), threading.Event()
    second: list[Reconciliation] = []

    def hold(sender: Flask, **extra: Any) -> None:
        inside.set()
        release.wait(10)

    with all_tracks_generated.connected_to(hold, sender=app):
        first = threading.Thread(target=run, args=(app,))
        first.start()
        assert inside.wait(10)
        second.append(run(app))
        release.set()
        first.join(10)

    assert second[0].tasks == []
    assert second[0].stopped is not None
    assert len(provider.requests) == 1


def test_reconciliation_off_does_nothing(store_app: StoreApp, provider: FakeProvider) -> None:
    app = store_app(API_KEY=API_KEY, API_BASE_URL=provider.url, RECONCILE_AFTER=None)
    expect(app, "t1")

    result = run(app)

    assert result.tasks == []
    assert "MUSICCALLBACK_RECONCILE_AFTER" in (result.stopped or "")
    assert provider.requests == []


def test_two_reconcilers_on_a_shared_store_poll_each_task_once(
    make_app: Any, shared_store_url: str, provider: FakeProvider
) -> None:
    config = {
        "STORE": shared_store_url,
        "API_KEY": API_KEY,
        "API_BASE_URL": provider.url,
        "RECONCILE_AFTER": 0,
        "RECONCILE_RATE": 1000,
    }
    apps = [make_app(**config), make_app(**config)]
    task_ids = [f"t{number}" for number in range(20)]
    for task_id in task_ids:
        provider.statuses(task_id, "SUCCESS")
    expect(apps[0], *task_ids)
    dispatched: list[str] = []
    start = threading.Barrier(2)

    def reconciler(app: Flask) -> None:
        start.wait(10)
        run(app)

    receivers = [
        all_tracks_generated.connected_to(
            lambda sender, event: dispatched.append(event.task_id), sender=app
        )
        for app in apps
    ]
    with receivers[0], receivers[1]:
        threads = [threading.Thread(target=reconciler, args=(app,)) for app in apps]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)

    assert sorted(request["task_id"] for request in provider.requests) == sorted(task_ids)
    assert sorted(dispatched) == sorted(task_ids)
    for app in apps:
        get_state(app).store.close()


def test_a_bad_reconcile_setting_fails_at_start_up_naming_the_key(make_app: Any) -> None:
    from flask_musiccallback import ConfigurationError

    for key, value in [("RECONCILE_AFTER", -1), ("RECONCILE_GIVE_UP", "1d"), ("RECONCILE_RATE", 0)]:
        with pytest.raises(ConfigurationError, match=f"MUSICCALLBACK_{key}"):
            make_app(**{key: value})


def test_the_next_poll_doubles_from_the_reconcile_after_up_to_six_hours() -> None:
    from flask_musiccallback.reconcile import MAX_INTERVAL, next_poll_at

    now = datetime(2026, 1, 1)
    waits = [(next_poll_at(polls, 1800, now) - now).total_seconds() for polls in (1, 2, 3, 9)]

    assert waits == [1800, 3600, 7200, MAX_INTERVAL]
    failed = next_poll_at(1, 1800, now, failed=True, retry_after=60)
    assert (failed - now).total_seconds() == 3600


def test_under_thread_dispatch_the_sweep_of_web_processes_reconciles(
    store_app: StoreApp, provider: FakeProvider
) -> None:
    app = store_app(
        _testing=False,
        DISPATCH="thread",
        API_KEY=API_KEY,
        API_BASE_URL=provider.url,
        RECONCILE_AFTER=0,
        TOKEN="sweep-token",
    )
    provider.statuses("t1", "SUCCESS")
    expect(app, "t1")
    state = get_state(app)
    assert state.sweeper is not None
    done = threading.Event()
    try:
        with all_tracks_generated.connected_to(lambda sender, event: done.set(), sender=app):
            app.test_client().get("/")  # a process's first request starts its sweeper
            assert done.wait(10), "the sweeper did not reconcile the task"
    finally:
        state.sweeper.stop()
        state.extension.close(app, timeout=5)
    assert [request["task_id"] for request in provider.requests] == ["t1"]


@pytest.mark.parametrize(
    ("config", "sweeper"),
    [
        ({"DISPATCH": "thread"}, True),
        ({"DISPATCH": "thread", "RECONCILE_AFTER": None}, False),
        ({"DISPATCH": "sync"}, False),
    ],
)
def test_the_memory_store_has_a_sweeper_to_reconcile_under_thread_dispatch_only(
    make_app: Any, config: dict[str, Any], sweeper: bool
) -> None:
    app = make_app(**config)
    try:
        assert (get_state(app).sweeper is not None) is sweeper
    finally:
        get_state(app).dispatcher.close(timeout=5)
